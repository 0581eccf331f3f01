"""Tensor re-ordering, the one place that decides it: TensorFlow variable -> PyTorch tensor and back.

Decided by the kind of the target module (mappings/kinds.py) and the tensor's rank/shape,
never by name substrings. CondConv variables ([experts, kh*kw*in*out]) also need the unflattened
per-expert kernel shape ``kernel`` = (kh, kw, in, out) (depthwise: (kh, kw, c, multiplier)).
"""
from __future__ import annotations

from typing import Sequence, Tuple

import numpy as np

from .errors import ConversionError
from .mappings.kinds import (BN, BN_TRACKED, CONDCONV, CONDCONV_OIHW, CONV, CONV_BIAS, DENSE, DWCONDCONV,
                             DWCONDCONV_OIHW, DWCONV)

# kind -> the rule that lays its tensors out; kinds with one rule hold identical tensors
_RULE = {CONV: "oihw", CONV_BIAS: "oihw", DWCONV: "depthwise", DENSE: "dense", BN: "vector", BN_TRACKED: "vector",
         CONDCONV: "experts_tf", DWCONDCONV: "experts_tf",
         CONDCONV_OIHW: "experts_oihw", DWCONDCONV_OIHW: "experts_dw_oihw"}


def torch_shape(kind: str, tf_shape: Sequence[int]) -> Tuple[int, ...]:
    """Shape of the PyTorch tensor for a TF variable of ``tf_shape`` in a module of ``kind``."""
    tf_shape = tuple(int(d) for d in tf_shape)
    if len(tf_shape) == 1:
        return tf_shape
    if kind in (CONV, CONV_BIAS) and len(tf_shape) == 4:
        kh, kw, cin, cout = tf_shape
        return (cout, cin, kh, kw)
    if kind == DWCONV and len(tf_shape) == 4:
        kh, kw, c, m = tf_shape
        return (c * m, 1, kh, kw)
    if kind == DENSE and len(tf_shape) == 2:
        cin, cout = tf_shape
        return (cout, cin)
    if _RULE.get(kind, "").startswith("experts") and len(tf_shape) == 2:
        return tf_shape  # [experts, flattened kernel]: only the order within a row changes
    raise ConversionError(f"no layout rule for a {kind} variable of shape {list(tf_shape)}")


def _kernel(array: np.ndarray, kernel: Sequence[int]) -> Tuple[int, int, int, int]:
    """``kernel`` as (kh, kw, in, out), checked to fill a row of the [experts, kh*kw*in*out] ``array``."""
    if len(kernel) != 4 or array.shape[1] != int(np.prod(kernel)):
        raise ConversionError(f"a CondConv variable of shape {list(array.shape)} does not hold kernels "
                              f"of shape {list(kernel)}")
    kh, kw, cin, cout = (int(d) for d in kernel)
    return kh, kw, cin, cout


# transpose2d tiles (rows x columns of the source): each tile's reads and writes stay within a few
# pages and cache lines; numpy's plain strided copy of a large transpose is 2-5x slower (L2's 1x1
# kernels and classifier: measured 0.2-0.7 GB/s plain, 0.3-3.5 GB/s tiled, 2 cores)
TRANSPOSE_TILE = (256, 64)


def transpose2d(a: np.ndarray) -> np.ndarray:
    """``np.ascontiguousarray(a.T)`` of a 2-d array, copied tile by tile (the same values)."""
    rows, cols = a.shape
    out = np.empty((cols, rows), dtype=a.dtype)
    ti, to = TRANSPOSE_TILE
    for i in range(0, rows, ti):
        for o in range(0, cols, to):
            out[o:o + to, i:i + ti] = a[i:i + ti, o:o + to].T
    return out


def tf_to_torch(array: np.ndarray, kind: str, kernel: Sequence[int] = ()) -> np.ndarray:
    """Re-lay a TF variable for a PyTorch module of ``kind`` (conv HWIO->OIHW, depthwise, dense)."""
    rule = _RULE.get(kind)
    if array.ndim == 1:
        out = array
    elif rule == "oihw" and array.ndim == 4 and array.shape[:2] == (1, 1):  # 1x1: (I, O) -> (O, I)
        kh, kw, cin, cout = array.shape
        return transpose2d(array.reshape(cin, cout)).reshape(cout, cin, 1, 1)
    elif rule == "depthwise" and array.ndim == 4:  # (kh*kw, c*m) -> (c*m, kh*kw): output c*m + j is (c, j)
        kh, kw, c, m = array.shape
        return transpose2d(array.reshape(kh * kw, c * m)).reshape(c * m, 1, kh, kw)
    elif rule == "dense" and array.ndim == 2:
        return transpose2d(array)
    elif rule == "oihw" and array.ndim == 4:
        out = array.transpose(3, 2, 0, 1)
    elif rule == "depthwise" and array.ndim == 4:
        kh, kw, c, m = array.shape
        # TF depthwise output channel c*m + j comes from input channel c with multiplier j
        out = array.transpose(2, 3, 0, 1).reshape(c * m, 1, kh, kw)
    elif rule == "dense" and array.ndim == 2:
        out = array.T
    elif rule == "experts_tf" and array.ndim == 2:
        out = array  # [experts, flattened kernel], kept in TF order (converter/families/efficientnet/modules.py CondConv2dSame)
    elif rule == "experts_oihw" and array.ndim == 2:  # per expert HWIO -> OIHW, flattened again
        out = array.reshape(-1, *_kernel(array, kernel)).transpose(0, 4, 3, 1, 2).reshape(array.shape)
    elif rule == "experts_dw_oihw" and array.ndim == 2:  # per expert (kh, kw, c, m) -> (c*m, 1, kh, kw)
        out = array.reshape(-1, *_kernel(array, kernel)).transpose(0, 3, 4, 1, 2).reshape(array.shape)
    else:
        raise ConversionError(f"no layout rule for a {kind} variable of shape {list(array.shape)}")
    return np.ascontiguousarray(out)


def torch_to_tf(array: np.ndarray, kind: str, multiplier: int = 1, kernel: Sequence[int] = ()) -> np.ndarray:
    """The inverse of :func:`tf_to_torch` (for writing TF-layout tensors from PyTorch ones)."""
    rule = _RULE.get(kind)
    if array.ndim == 1:
        out = array
    elif rule == "oihw" and array.ndim == 4:
        out = array.transpose(2, 3, 1, 0)
    elif rule == "depthwise" and array.ndim == 4:
        cm, _, kh, kw = array.shape
        out = array.reshape(cm // multiplier, multiplier, kh, kw).transpose(2, 3, 0, 1)
    elif rule == "dense" and array.ndim == 2:
        out = array.T
    elif rule == "experts_tf" and array.ndim == 2:
        out = array
    elif rule == "experts_oihw" and array.ndim == 2:
        kh, kw, cin, cout = _kernel(array, kernel)
        out = array.reshape(-1, cout, cin, kh, kw).transpose(0, 3, 4, 2, 1).reshape(array.shape)
    elif rule == "experts_dw_oihw" and array.ndim == 2:
        kh, kw, c, m = _kernel(array, kernel)
        out = array.reshape(-1, c, m, kh, kw).transpose(0, 3, 4, 1, 2).reshape(array.shape)
    else:
        raise ConversionError(f"no layout rule for a {kind} tensor of shape {list(array.shape)}")
    return np.ascontiguousarray(out)


def same_layout(kind_a: str, kind_b: str) -> bool:
    """Whether modules of the two kinds hold one TF variable as the same tensor."""
    return _RULE.get(kind_a, kind_a) == _RULE.get(kind_b, kind_b)


def relayout(array: np.ndarray, src_kind: str, dst_kind: str, kernel: Sequence[int] = ()) -> np.ndarray:
    """A tensor laid out for a ``src_kind`` module, laid out for a ``dst_kind`` module instead."""
    if same_layout(src_kind, dst_kind):
        return array
    return tf_to_torch(torch_to_tf(array, src_kind, kernel=kernel), dst_kind, kernel=kernel)
