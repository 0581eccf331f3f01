"""The one place that decides tensor layout: TensorFlow variable -> PyTorch tensor and back.

Decided by the kind of the target module (mappings/kinds.py) and the tensor's rank/shape,
never by name substrings.
"""
from __future__ import annotations

from typing import Sequence, Tuple

import numpy as np

from .errors import ConversionError
from .mappings.kinds import CONDCONV, CONV, CONV_BIAS, DENSE, DWCONDCONV, DWCONV


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
    if kind in (CONDCONV, DWCONDCONV) and len(tf_shape) == 2:
        return tf_shape  # [experts, flattened kernel], kept in TF order
    raise ConversionError(f"no layout rule for a {kind} variable of shape {list(tf_shape)}")


def tf_to_torch(array: np.ndarray, kind: str) -> np.ndarray:
    """Re-lay a TF variable for a PyTorch module of ``kind`` (conv HWIO->OIHW, depthwise, dense)."""
    if array.ndim == 1:
        out = array
    elif kind in (CONV, CONV_BIAS) and array.ndim == 4:
        out = array.transpose(3, 2, 0, 1)
    elif kind == DWCONV and array.ndim == 4:
        kh, kw, c, m = array.shape
        # TF depthwise output channel c*m + j comes from input channel c with multiplier j
        out = array.transpose(2, 3, 0, 1).reshape(c * m, 1, kh, kw)
    elif kind == DENSE and array.ndim == 2:
        out = array.T
    elif kind in (CONDCONV, DWCONDCONV) and array.ndim == 2:
        out = array  # [experts, flattened kernel], kept in TF order
    else:
        raise ConversionError(f"no layout rule for a {kind} variable of shape {list(array.shape)}")
    return np.ascontiguousarray(out)


def torch_to_tf(array: np.ndarray, kind: str, multiplier: int = 1) -> np.ndarray:
    """The inverse of :func:`tf_to_torch` (for writing TF-layout tensors from PyTorch ones)."""
    if array.ndim == 1:
        out = array
    elif kind in (CONV, CONV_BIAS) and array.ndim == 4:
        out = array.transpose(2, 3, 1, 0)
    elif kind == DWCONV and array.ndim == 4:
        cm, _, kh, kw = array.shape
        out = array.reshape(cm // multiplier, multiplier, kh, kw).transpose(2, 3, 0, 1)
    elif kind == DENSE and array.ndim == 2:
        out = array.T
    elif kind in (CONDCONV, DWCONDCONV) and array.ndim == 2:
        out = array
    else:
        raise ConversionError(f"no layout rule for a {kind} tensor of shape {list(array.shape)}")
    return np.ascontiguousarray(out)
