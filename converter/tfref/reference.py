"""TensorFlow reference forward pass of the official EfficientNet, reading official variable names.

This mirrors tensorflow/tpu models/official/efficientnet/efficientnet_model.py in eval mode
(``training=False``: BN uses its moving statistics, no dropout, no drop-connect), computing with
plain TensorFlow ops on NHWC float32 tensors. It does not use Keras layers nor anything of the
PyTorch side: the variables are read one by one, by their official names, through a
``get(name) -> np.ndarray`` callable (a dict's ``__getitem__``, or ``read_checkpoint_getter``).

TensorFlow is imported lazily so that the CLI can hide the GPUs (``--device cpu``) before it
loads. Command line (run as a subprocess by the rest of the project)::

    python -m converter.tfref.reference --checkpoint PREFIX --variant b0 \\
        --images IN.npz --out OUT.npz [--no-ema] [--num-classes N] \\
        [--device cpu|cuda|auto] [--batch-size N] [--dtype float32|float64] [--float64] \\
        [--fused-stride expand|project]

IN.npz holds ``images`` (normalized NHWC float32); OUT.npz gets ``logits`` (float32, or float64
with ``--dtype float64``: the same graph without float32 rounding, to measure the noise floor),
``seconds`` (the forward passes only, weights already loaded) and ``device``; with ``--float64``
also ``logits64`` and ``seconds64``: the same images through the same graph in float64 (weights
and images cast up exactly), what verification's verdict compares (converter/verify.py).
Errors in the user's input print one line on stderr and exit with code 2.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
import time
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from ..arch import (FUSED_STRIDE_DEFAULT, FUSED_STRIDES, KIND_CONDCONV, KIND_FUSED, KIND_MBCONV, ArchSpec, Block,
                    get_arch, variants_help)
from ..errors import ConversionError
from ..keras_names import match_counters
from .families import FAMILIES  # families with their own names and blocks (converter/tfref/mnasnet.py)
from ..arch import KIND_FUSED_V2 as FUSED_V2  # google/automl efficientnetv2 FusedMBConvBlock

Getter = Callable[[str], np.ndarray]
Trace = Callable[[str, np.ndarray], None]

EMA_SUFFIX = "ExponentialMovingAverage"  # tf.train.ExponentialMovingAverage slot name
BN_PARAMS = ("gamma", "beta", "moving_mean", "moving_variance")  # tf.layers.BatchNormalization
BN_NAME = "tpu_batch_normalization"  # tensorflow/tpu efficientnet utils.TpuBatchNormalization
DEFAULT_MEMORY_BUDGET = 4 << 30  # bytes of activations per batch used to pick the batch size
MAX_AUTO_BATCH = 64

_TF = None



def _tf():
    """Import TensorFlow once; the reference computes in strict float32 (no TF32 on GPUs)."""
    global _TF
    if _TF is None:
        from .tfimport import import_tensorflow

        tf = import_tensorflow()

        # Ampere+ GPUs would otherwise run convs/matmuls in TF32 (10-bit mantissa).
        tf.config.experimental.enable_tensor_float_32_execution(False)
        _TF = tf
    return _TF


# --------------------------------------------------------------------------- names


@dataclass(frozen=True)
class BlockNames:
    """Official variable-scope prefixes of one block (``scope/blocks_N/...``).

    The layers are named in creation order (efficientnet_model.MBConvBlock._build):
    with an expand conv the convs are conv2d (expand), conv2d_1 (project) and the BNs
    tpu_batch_normalization{,_1,_2}; without one (expand ratio 1) conv2d is the project conv
    and the BNs are tpu_batch_normalization{,_1}. Fused blocks (MBConvBlockWithoutDepthwise,
    EdgeTPU): conv2d (kxk expand), conv2d_1 (1x1 project), BNs tpu_batch_normalization{,_1};
    ``depthwise``/``bn1`` are None and ``bn2`` is the project's BN. CondConv blocks: ``routing``
    is the sigmoid dense, and expand/depthwise/project name the conditional layers
    (``model/blocks_N/cond_conv2d_M``, ``.../depthwise_cond_conv2d_M``: Keras counters over the
    whole model, see ``condconv_aliases`` for checkpoints that name them otherwise).
    """

    expand: Optional[str]
    bn0: Optional[str]
    depthwise: Optional[str]
    bn1: Optional[str]
    se_reduce: Optional[str]
    se_expand: Optional[str]
    project: str
    bn2: str
    routing: Optional[str] = None


def _counter_name(base: str, n: int) -> str:
    return base if n == 0 else f"{base}_{n}"


def _fused_v2_names(spec: ArchSpec, block: Block) -> BlockNames:
    # google/automl efficientnetv2 effnetv2_model.FusedMBConvBlock._build: conv2d (kxk expand,
    # strided), BN, se/..., conv2d_1 (1x1 project), BN_1; expand ratio 1: se/..., conv2d
    # (the strided kxk conv), BN. ``bn2`` is the last conv's BN.
    p = f"{spec.scope}/blocks_{block.index}"
    se_names = (f"{p}/se/conv2d", f"{p}/se/conv2d_1") if block.se_channels else (None, None)
    if block.has_expand:
        return BlockNames(expand=f"{p}/conv2d", bn0=f"{p}/{BN_NAME}", depthwise=None, bn1=None,
                          se_reduce=se_names[0], se_expand=se_names[1],
                          project=f"{p}/conv2d_1", bn2=f"{p}/{BN_NAME}_1")
    return BlockNames(expand=None, bn0=None, depthwise=None, bn1=None, se_reduce=se_names[0],
                      se_expand=se_names[1], project=f"{p}/conv2d", bn2=f"{p}/{BN_NAME}")


def _fused_names(spec: ArchSpec, block: Block) -> BlockNames:
    # efficientnet_model.MBConvBlockWithoutDepthwise._build: conv2d (kxk expand), BN, conv2d_1, BN_1
    p = f"{spec.scope}/blocks_{block.index}"
    if block.has_expand:
        return BlockNames(expand=f"{p}/conv2d", bn0=f"{p}/{BN_NAME}", depthwise=None, bn1=None,
                          se_reduce=None, se_expand=None, project=f"{p}/conv2d_1", bn2=f"{p}/{BN_NAME}_1")
    return BlockNames(expand=None, bn0=None, depthwise=None, bn1=None, se_reduce=None, se_expand=None,
                      project=f"{p}/conv2d", bn2=f"{p}/{BN_NAME}")


def _se_names(spec: ArchSpec, block: Block) -> Tuple[Optional[str], Optional[str]]:
    p = f"{spec.scope}/blocks_{block.index}"
    return (f"{p}/se/conv2d", f"{p}/se/conv2d_1") if block.se_channels else (None, None)


def _condconv_names(spec: ArchSpec, block: Block) -> BlockNames:
    # MBConvBlock._build with condconv: CondConv2D fused (no variables: unused), expand,
    # project per block, one DepthwiseCondConv2D; Keras counts them over the whole model
    p = f"{spec.scope}/blocks_{block.index}"
    se_reduce, se_expand = _se_names(spec, block)
    k = sum(1 for b in spec.blocks()[:block.index] if b.condconv)
    m = f"{spec.scope}/model/blocks_{block.index}"
    bn = [f"{p}/{BN_NAME}", f"{p}/{BN_NAME}_1", f"{p}/{BN_NAME}_2"]
    if not block.has_expand:
        bn = [None] + bn[:2]
    return BlockNames(
        expand=f"{m}/{_counter_name('cond_conv2d', 3 * k + 1)}" if block.has_expand else None,
        bn0=bn[0], depthwise=f"{m}/{_counter_name('depthwise_cond_conv2d', k)}", bn1=bn[1],
        se_reduce=se_reduce, se_expand=se_expand,
        project=f"{m}/{_counter_name('cond_conv2d', 3 * k + 2)}", bn2=bn[2], routing=f"{p}/dense")


def _mbconv_names(spec: ArchSpec, block: Block) -> BlockNames:
    # efficientnet_model.MBConvBlock._build: conv2d, BN, depthwise_conv2d, BN_1, se/..., conv2d_1, BN_2
    # (without expand conv: depthwise_conv2d, BN, se/..., conv2d, BN_1)
    p = f"{spec.scope}/blocks_{block.index}"
    se_reduce, se_expand = _se_names(spec, block)
    if block.has_expand:
        return BlockNames(
            expand=f"{p}/conv2d", bn0=f"{p}/{BN_NAME}",
            depthwise=f"{p}/depthwise_conv2d", bn1=f"{p}/{BN_NAME}_1",
            se_reduce=se_reduce, se_expand=se_expand,
            project=f"{p}/conv2d_1", bn2=f"{p}/{BN_NAME}_2")
    return BlockNames(
        expand=None, bn0=None,
        depthwise=f"{p}/depthwise_conv2d", bn1=f"{p}/{BN_NAME}",
        se_reduce=se_reduce, se_expand=se_expand,
        project=f"{p}/conv2d", bn2=f"{p}/{BN_NAME}_1")


def block_names(spec: ArchSpec, block: Block) -> BlockNames:
    """Official name prefixes of ``block`` in ``spec``."""
    return block_ref(block).names(spec, block)


Kernels = Dict[str, Tuple[str, Tuple[int, ...]]]  # {role: (variable name, TF shape)}


def _fused_v2_kernels(b: Block, n: BlockNames) -> Kernels:
    k = b.kernel_size
    if n.expand:
        return {"expand": (f"{n.expand}/kernel", (k, k, b.in_channels, b.mid_channels)),
                "project": (f"{n.project}/kernel", (1, 1, b.mid_channels, b.out_channels))}
    return {"project": (f"{n.project}/kernel", (k, k, b.in_channels, b.out_channels))}


def _fused_kernels(b: Block, n: BlockNames) -> Kernels:
    k = b.kernel_size
    out: Kernels = {}
    if n.expand:
        out["expand"] = (f"{n.expand}/kernel", (k, k, b.in_channels, b.mid_channels))
    out["project"] = (f"{n.project}/kernel", (1, 1, b.mid_channels, b.out_channels))
    return out


def _condconv_kernels(b: Block, n: BlockNames) -> Kernels:
    k, e = b.kernel_size, b.experts
    out: Kernels = {}
    if n.expand:
        out["expand"] = (f"{n.expand}/condconv_kernel", (e, b.in_channels * b.mid_channels))
    out["depthwise"] = (f"{n.depthwise}/depthwise_condconv_kernel", (e, k * k * b.mid_channels))
    out["project"] = (f"{n.project}/condconv_kernel", (e, b.mid_channels * b.out_channels))
    return out


def _mbconv_kernels(b: Block, n: BlockNames) -> Kernels:
    k = b.kernel_size
    out: Kernels = {}
    if n.expand:
        out["expand"] = (f"{n.expand}/kernel", (1, 1, b.in_channels, b.mid_channels))
    out["depthwise"] = (f"{n.depthwise}/depthwise_kernel", (k, k, b.mid_channels, 1))
    out["project"] = (f"{n.project}/kernel", (1, 1, b.mid_channels, b.out_channels))
    return out


def _kernel_vars(b: Block, n: BlockNames) -> Kernels:
    """{role: (variable name, TF shape)} of the block's expand / depthwise / project kernels."""
    return block_ref(b).kernels(b, n)


def condconv_kernel_shapes(spec: ArchSpec) -> Dict[str, Tuple[int, int, int, int]]:
    """{condconv kernel variable: its per-example kernel shape (kh, kw, in, out)} (condconv_layers:
    depthwise kernels are (kh, kw, channels, 1))."""
    out: Dict[str, Tuple[int, int, int, int]] = {}
    for b in spec.blocks():
        if b.condconv:
            kv = _kernel_vars(b, block_names(spec, b))
            if "expand" in kv:
                out[kv["expand"][0]] = (1, 1, b.in_channels, b.mid_channels)
            out[kv["depthwise"][0]] = (b.kernel_size, b.kernel_size, b.mid_channels, 1)
            out[kv["project"][0]] = (1, 1, b.mid_channels, b.out_channels)
    return out


def variables(spec: ArchSpec) -> List[Tuple[str, Tuple[int, ...]]]:
    """The model's variables ``[(official name, TF shape)]`` in the official creation order.

    CondConv kernels appear in the tf_keras form of the names (``scope/model/blocks_N/...``).
    """
    if spec.family in FAMILIES:
        return FAMILIES[spec.family].variables(spec)
    out: List[Tuple[str, Tuple[int, ...]]] = []

    def bn(prefix: str, c: int) -> None:
        out.extend((f"{prefix}/{p}", (c,)) for p in BN_PARAMS)

    s = spec.scope
    stem = spec.stem_channels
    out.append((f"{s}/stem/conv2d/kernel", (3, 3, 3, stem)))
    bn(f"{s}/stem/{BN_NAME}", stem)
    blocks = spec.blocks()
    for b in blocks:
        n = block_names(spec, b)
        kv = _kernel_vars(b, n)
        if n.routing:
            out.append((f"{n.routing}/kernel", (b.in_channels, b.experts)))
            out.append((f"{n.routing}/bias", (b.experts,)))
        if n.expand:
            out.append(kv["expand"])
            bn(n.bn0, b.mid_channels)
        if n.depthwise:
            out.append(kv["depthwise"])
            bn(n.bn1, b.mid_channels)
        if n.se_reduce:
            out.append((f"{n.se_reduce}/kernel", (1, 1, b.mid_channels, b.se_channels)))
            out.append((f"{n.se_reduce}/bias", (b.se_channels,)))
            out.append((f"{n.se_expand}/kernel", (1, 1, b.se_channels, b.mid_channels)))
            out.append((f"{n.se_expand}/bias", (b.mid_channels,)))
        out.append(kv["project"])
        bn(n.bn2, b.out_channels)
    head = spec.head_channels
    out.append((f"{s}/head/conv2d/kernel", (1, 1, blocks[-1].out_channels, head)))
    bn(f"{s}/head/{BN_NAME}", head)
    out.append((f"{s}/head/dense/kernel", (head, spec.num_classes)))
    out.append((f"{s}/head/dense/bias", (spec.num_classes,)))
    return out


# condconv_layers kernels in a checkpoint: scope/[model/]blocks_N/[depthwise_]cond_conv2d[_M]/VAR
_CC_PATTERN = re.compile(r"^(?P<scope>.+?)/(?:model/)?blocks_(?P<i>\d+)/(?:depthwise_)?cond_conv2d(?:_(?P<n>\d+))?/"
                         r"(?P<var>(?:depthwise_)?condconv_kernel)$")


def condconv_aliases(spec: ArchSpec, available: Iterable[str]) -> Dict[str, str]:
    """{name in ``variables(spec)``: the checkpoint's own name} for the CondConv kernels.

    The released checkpoints' exact kernel names could not be checked (shared/reference/README.md):
    they may or may not carry the ``model/`` element, and their counters depend on how the
    official code created its layers. So within each block the checkpoint's kernels of one
    kind (``condconv_kernel`` / ``depthwise_condconv_kernel``) are taken in counter order
    (expand before project) and must pair up one to one with the expected ones; anything else
    raises ConversionError (keras_names.match_counters). Names not found at all are left alone
    (reported when read).
    """
    wanted = [name for b in spec.blocks() if b.condconv
              for name, _ in _kernel_vars(b, block_names(spec, b)).values()]
    return match_counters(wanted, available, _CC_PATTERN, key=lambda m: (m["scope"], int(m["i"]), m["var"]),
                          describe=lambda k: (f"{k[0]}/blocks_{k[1]}", k[2]))


def bn_layers(spec: ArchSpec) -> List[str]:
    """Name prefixes of every batch norm, in the order the forward pass meets them."""
    if spec.family in FAMILIES:
        return FAMILIES[spec.family].bn_layers(spec)
    s = spec.scope
    out = [f"{s}/stem/{BN_NAME}"]
    for b in spec.blocks():
        n = block_names(spec, b)
        out.extend(x for x in (n.bn0, n.bn1, n.bn2) if x)
    out.append(f"{s}/head/{BN_NAME}")
    return out


def is_moving_stat(name: str) -> bool:
    """True for BN ``moving_mean`` / ``moving_variance`` (non-trainable) variables."""
    return name.endswith("/moving_mean") or name.endswith("/moving_variance")


# --------------------------------------------------------------------------- weights


class CheckpointGetter:
    """``get(name)`` over a TensorFlow checkpoint, preferring ``NAME/ExponentialMovingAverage``.

    With ``use_ema`` every variable, BN moving statistics included, is read from its EMA twin
    when the checkpoint has one (as the official eval driver restores them), else from NAME.
    Without ``use_ema`` only NAME is read.
    """

    def __init__(self, prefix: str, use_ema: bool = True):
        tf = _tf()
        try:
            self.reader = tf.train.load_checkpoint(str(prefix))
        except (tf.errors.OpError, ValueError) as e:
            raise ConversionError(f"cannot read TensorFlow checkpoint {prefix!r}: {_one_line(e)}") from None
        self.prefix = str(prefix)
        self.use_ema = use_ema
        self.shapes: Dict[str, List[int]] = self.reader.get_variable_to_shape_map()

    def key(self, name: str) -> str:
        """The checkpoint key that ``get(name)`` reads."""
        if self.use_ema and f"{name}/{EMA_SUFFIX}" in self.shapes:
            return f"{name}/{EMA_SUFFIX}"
        if name in self.shapes:
            return name
        scopes = sorted({k.split("/", 1)[0] for k in self.shapes if "/" in k})
        if not self.use_ema and f"{name}/{EMA_SUFFIX}" in self.shapes:
            raise ConversionError(
                f"checkpoint {self.prefix!r} has no raw variable {name!r}, only its EMA twin "
                f"(an EMA-only release): read it with EMA (drop --no-ema)")
        what = f"{name!r} nor {name + '/' + EMA_SUFFIX!r}" if self.use_ema else repr(name)
        raise ConversionError(
            f"checkpoint {self.prefix!r} has no variable {what}; its top-level scopes are "
            f"{', '.join(scopes) or '(none)'}: wrong variant?")

    def has(self, name: str) -> bool:
        """Whether ``get(name)`` would find something."""
        return (self.use_ema and f"{name}/{EMA_SUFFIX}" in self.shapes) or name in self.shapes

    def shape(self, name: str) -> Tuple[int, ...]:
        """Shape of what ``get(name)`` would return, without reading the data."""
        return tuple(self.shapes[self.key(name)])

    def __call__(self, name: str) -> np.ndarray:
        return self.reader.get_tensor(self.key(name))


def read_checkpoint_getter(prefix: str, use_ema: bool = True) -> CheckpointGetter:
    """A ``get(name)`` reading a checkpoint with tf.train.load_checkpoint (EMA twins first)."""
    return CheckpointGetter(prefix, use_ema=use_ema)


def _fetch(get: Getter, name: str, shape: Tuple[int, ...]) -> np.ndarray:
    try:
        value = get(name)
    except KeyError:
        raise ConversionError(f"no value for variable {name!r}") from None
    arr = np.asarray(value)
    if tuple(arr.shape) != tuple(shape):
        raise ConversionError(
            f"variable {name!r} has shape {list(arr.shape)}, expected {list(shape)}: "
            f"wrong variant or number of classes?")
    if not np.issubdtype(arr.dtype, np.floating):
        raise ConversionError(f"variable {name!r} has dtype {arr.dtype}, expected a float type")
    return arr.astype(np.float32, copy=False)


class LoadedWeights:
    """All variables of one model as TensorFlow tensors on one device (see ``load_weights``)."""

    def __init__(self, spec: ArchSpec, tensors: Dict[str, object], device: str, dtype=np.float32):
        self.spec = spec
        self.tensors = tensors
        self.device = device
        self.dtype = np.dtype(dtype)

    def __call__(self, name: str):
        return self.tensors[name]


def _device_name(device: Optional[str]) -> str:
    tf = _tf()
    if device in (None, "auto"):
        return "/GPU:0" if tf.config.list_logical_devices("GPU") else "/CPU:0"
    if device == "cpu":
        return "/CPU:0"
    if device in ("cuda", "gpu"):
        if not tf.config.list_logical_devices("GPU"):
            raise ConversionError("device 'cuda' asked for, but TensorFlow sees no GPU")
        return "/GPU:0"
    return device


def _check_dtype(dtype) -> np.dtype:
    dt = np.dtype(dtype)
    if dt not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise ConversionError(f"dtype must be float32 or float64, got {dt}")
    return dt


def load_weights(spec: ArchSpec, get: Getter, device: Optional[str] = None,
                 dtype=np.float32) -> LoadedWeights:
    """Read and shape-check every variable of ``spec`` through ``get`` and place it on ``device``.

    ``dtype``: float32 (the reference) or float64 (to separate float32 rounding from real
    differences in tests).
    """
    tf = _tf()
    dt = _check_dtype(dtype)
    dev = _device_name(device)
    tensors: Dict[str, object] = {}
    # a checkpoint's own CondConv kernel names (either form) for the ones variables() lists
    aliases = condconv_aliases(spec, get.shapes) if isinstance(getattr(get, "shapes", None), dict) else {}
    if spec.family in FAMILIES and isinstance(getattr(get, "shapes", None), dict):
        aliases = FAMILIES[spec.family].aliases(spec, get.shapes)  # Keras counters as the checkpoint has them
    with tf.device(dev):
        for name, shape in variables(spec):
            value = _fetch(get, aliases.get(name, name), shape)
            tensors[name] = tf.identity(tf.convert_to_tensor(value.astype(dt, copy=False)))
    return LoadedWeights(spec, tensors, dev, dt)


# --------------------------------------------------------------------------- forward


def _conv(x, kernel, stride: int):
    tf = _tf()
    return tf.nn.conv2d(x, kernel, strides=[1, stride, stride, 1], padding="SAME")


def _swish(x):
    tf = _tf()
    return x * tf.sigmoid(x)  # tf.nn.swish, the official relu_fn default


def _activation(name: str):
    """GlobalParams.relu_fn: tf.nn.swish (default, CondConv), tf.nn.relu (EdgeTPU), tf.nn.relu6 (Lite)."""
    tf = _tf()
    if name == "swish":
        return _swish
    if name == "relu":
        return tf.nn.relu
    if name == "relu6":
        return tf.nn.relu6
    raise ConversionError(f"unknown activation {name!r}")


def _bn_inference(x, gamma, beta, mean, var, eps: float):
    # utils.TpuBatchNormalization is a Keras BatchNormalization with fused=False: in inference
    # it calls tf.nn.batch_normalization(x, moving_mean, moving_variance, beta, gamma, eps).
    tf = _tf()
    return tf.nn.batch_normalization(x, mean, var, beta, gamma, eps)


def _condconv(x, routing, experts, kernel_shape, stride: int, depthwise: bool):
    """condconv_layers.CondConv2D / DepthwiseCondConv2D.call: kernels = routing @ experts, then
    one convolution per example with its own kernel reshaped to ``kernel_shape``."""
    tf = _tf()
    kernels = tf.matmul(routing, experts)
    outs = []
    for i in range(int(x.shape[0])):
        kernel = tf.reshape(kernels[i], kernel_shape)
        xi = x[i:i + 1]
        if depthwise:
            outs.append(tf.nn.depthwise_conv2d(xi, kernel, strides=[1, stride, stride, 1], padding="SAME"))
        else:
            outs.append(tf.nn.conv2d(xi, kernel, strides=[1, stride, stride, 1], padding="SAME"))
    return tf.concat(outs, axis=0)


def _se_gate(x, n: BlockNames, w: Callable[[str], object], act):
    """Squeeze-excitation (MBConvBlock._call_se; V2's SE layer): mean -> conv+bias -> act ->
    conv+bias -> sigmoid, times ``x``."""
    tf = _tf()
    se = tf.reduce_mean(x, [1, 2], keepdims=True)
    se = tf.nn.bias_add(_conv(se, w(f"{n.se_reduce}/kernel"), 1), w(f"{n.se_reduce}/bias"))
    se = act(se)
    se = tf.nn.bias_add(_conv(se, w(f"{n.se_expand}/kernel"), 1), w(f"{n.se_expand}/bias"))
    return tf.sigmoid(se) * x


def _fused_v2_call(b: Block, n: BlockNames, kv: Kernels, x, w, bn, act):
    # effnetv2_model.FusedMBConvBlock.call: the kxk expand conv carries the stride, then
    # act, [SE], the 1x1 project conv + BN; without expansion one strided kxk conv + BN + act
    if n.expand:
        x = act(bn(n.bn0, _conv(x, w(kv["expand"][0]), b.stride)))
    if n.se_reduce:
        x = _se_gate(x, n, w, act)
    x = bn(n.bn2, _conv(x, w(kv["project"][0]), 1 if n.expand else b.stride))
    return x if n.expand else act(x)  # "add act if no expansion"


def _fused_call(b: Block, n: BlockNames, kv: Kernels, x, w, bn, act):
    # efficientnet_model.MBConvBlockWithoutDepthwise._build/call: the stride on the kxk
    # expand conv (tensorflow/tpu since 32572cb, 2020-12-27; HEAD 7dc921f) or, with
    # spec.fused_stride "project", on the 1x1 project conv (631fb4c, 2019-07-19)
    if b.fused_stride == "expand":
        expand_stride, project_stride = b.stride, 1
    elif b.fused_stride == "project":
        expand_stride, project_stride = 1, b.stride
    else:
        raise ConversionError(f"unknown fused-block stride placement {b.fused_stride!r}")
    if n.expand:
        x = act(bn(n.bn0, _conv(x, w(kv["expand"][0]), expand_stride)))
    elif expand_stride != 1:
        raise ConversionError(f"blocks_{b.index}: a strided fused block without expand conv")
    return bn(n.bn2, _conv(x, w(kv["project"][0]), project_stride))


def _mbconv_body(b: Block, n: BlockNames, x, w, bn, act, conv):
    # efficientnet_model.MBConvBlock.call: [expand conv, BN, act], depthwise, BN, act, [SE], project, BN
    if n.expand:
        x = act(bn(n.bn0, conv(x, "expand", 1)))
    x = act(bn(n.bn1, conv(x, "depthwise", b.stride)))
    if n.se_reduce:
        x = _se_gate(x, n, w, act)
    return bn(n.bn2, conv(x, "project", 1))


def _mbconv_call(b: Block, n: BlockNames, kv: Kernels, x, w, bn, act):
    tf = _tf()

    def conv(t, role, stride):
        if role == "depthwise":
            return tf.nn.depthwise_conv2d(t, w(kv[role][0]), strides=[1, stride, stride, 1], padding="SAME")
        return _conv(t, w(kv[role][0]), stride)

    return _mbconv_body(b, n, x, w, bn, act, conv)


def _condconv_call(b: Block, n: BlockNames, kv: Kernels, x, w, bn, act):
    # MBConvBlock.call with condconv: GlobalAveragePooling2D of the block input -> Dense(sigmoid)
    tf = _tf()
    pooled = tf.reduce_mean(x, [1, 2])
    routing = tf.sigmoid(tf.matmul(pooled, w(f"{n.routing}/kernel")) + w(f"{n.routing}/bias"))
    k = b.kernel_size
    per_example = {"expand": (1, 1, b.in_channels, b.mid_channels), "depthwise": (k, k, b.mid_channels, 1),
                   "project": (1, 1, b.mid_channels, b.out_channels)}  # condconv_kernel_shapes

    def conv(t, role, stride):
        return _condconv(t, routing, w(kv[role][0]), per_example[role], stride, role == "depthwise")

    return _mbconv_body(b, n, x, w, bn, act, conv)


@dataclass(frozen=True)
class BlockRef:
    """The TF reference of one block kind (arch.BLOCK_KINDS): official names, kernels, eval computation."""

    names: Callable[[ArchSpec, Block], BlockNames]
    kernels: Callable[[Block, BlockNames], Kernels]
    call: Callable  # (block, names, kernels, x, w, bn, act) -> the block's output before the residual


BLOCK_REFS: Dict[str, BlockRef] = {
    KIND_MBCONV: BlockRef(_mbconv_names, _mbconv_kernels, _mbconv_call),
    KIND_FUSED: BlockRef(_fused_names, _fused_kernels, _fused_call),
    KIND_CONDCONV: BlockRef(_condconv_names, _condconv_kernels, _condconv_call),
    FUSED_V2: BlockRef(_fused_v2_names, _fused_v2_kernels, _fused_v2_call),
}


def block_ref(b: Block) -> BlockRef:
    """The reference entry of ``b``'s kind (families with their own reference: tfref.families)."""
    try:
        return BLOCK_REFS[b.kind]
    except KeyError:
        raise RuntimeError(f"block kind {b.kind!r} has no TF reference in converter.tfref.reference.BLOCK_REFS") from None


def _walk(spec: ArchSpec, w: Callable[[str], object], x, bn: Callable[[str, object], object],
          trace: Optional[Trace] = None):
    """One eval-mode pass; ``w(name)`` gives a variable, ``bn(prefix, x)`` applies one BN."""
    if spec.family in FAMILIES:
        return FAMILIES[spec.family].walk(spec, w, x, bn, trace)
    tf = _tf()
    s = spec.scope
    act = _activation(spec.activation)

    def emit(name: str, t) -> None:
        if trace is not None:
            trace(name, t.numpy())

    x = _conv(x, w(f"{s}/stem/conv2d/kernel"), 2)
    x = act(bn(f"{s}/stem/{BN_NAME}", x))
    emit(f"{s}/stem", x)
    for b in spec.blocks():
        n = block_names(spec, b)
        kv = _kernel_vars(b, n)
        inputs = x
        x = block_ref(b).call(b, n, kv, x, w, bn, act)
        if b.residual:
            x = x + inputs
        emit(f"{s}/blocks_{b.index}", x)
    x = _conv(x, w(f"{s}/head/conv2d/kernel"), 1)
    x = act(bn(f"{s}/head/{BN_NAME}", x))
    if spec.local_pooling:
        # efficientnet_model.Model.call with local_pooling: avg_pool over the whole map, squeeze
        x = tf.nn.avg_pool(x, ksize=[1, int(x.shape[1]), int(x.shape[2]), 1], strides=[1, 1, 1, 1],
                           padding="VALID")
        x = tf.squeeze(x, [1, 2])
    else:
        x = tf.reduce_mean(x, [1, 2])  # GlobalAveragePooling2D
    emit(f"{s}/head/pooled", x)
    return tf.matmul(x, w(f"{s}/head/dense/kernel")) + w(f"{s}/head/dense/bias")


def _check_images(images: np.ndarray) -> np.ndarray:
    x = np.asarray(images)
    if x.ndim != 4 or x.shape[-1] != 3:
        raise ConversionError(f"images must be NHWC with 3 channels, got shape {list(x.shape)}")
    if x.shape[0] < 1 or x.shape[1] < 1 or x.shape[2] < 1:
        raise ConversionError(f"images must not be empty, got shape {list(x.shape)}")
    if not np.issubdtype(x.dtype, np.floating):
        raise ConversionError(f"images must be normalized floats, got dtype {x.dtype} (apply mean/std first)")
    x = x.astype(np.float32, copy=False)
    if not np.all(np.isfinite(x)):
        raise ConversionError("images contain NaN or infinite values")
    return x


def auto_batch_size(spec: ArchSpec, height: int, width: int,
                    budget_bytes: int = DEFAULT_MEMORY_BUDGET, itemsize: int = 4) -> int:
    """Images per batch so that the largest live activations of one block fit ``budget_bytes``
    (``itemsize``: bytes per value, 8 in float64)."""
    def down(n: int, s: int) -> int:
        return -(-n // s)

    h, w = down(height, 2), down(width, 2)
    peak = 3 * height * width + 2 * spec.stem_channels * h * w
    for b in spec.blocks():
        ho, wo = down(h, b.stride), down(w, b.stride)
        live = b.in_channels * h * w + 2 * b.mid_channels * h * w + 2 * b.mid_channels * ho * wo
        peak = max(peak, live)
        h, w = ho, wo
    peak = max(peak, 3 * spec.head_channels * h * w)
    return int(max(1, min(MAX_AUTO_BATCH, budget_bytes // (int(itemsize) * peak))))


def forward(spec: ArchSpec, get, images_nhwc: np.ndarray, batch_size: Optional[int] = None,
            device: Optional[str] = None, trace: Optional[Trace] = None, dtype=np.float32) -> np.ndarray:
    """Eval-mode logits [N, num_classes] of normalized NHWC ``images_nhwc``.

    ``get``: ``get(name) -> np.ndarray`` by official name, or a ``LoadedWeights``.
    ``batch_size``: images per pass (default: ``auto_batch_size``). ``device``: "cpu", "cuda",
    "auto" (default) or a TF device string. ``trace(name, array)``, if given, receives every
    BN's input (under the BN's name prefix), the stem and block outputs (``scope/stem``,
    ``scope/blocks_N``) and the pooled features (``scope/head/pooled``), batch by batch.
    ``dtype``: float32 (the reference computation) or float64 (tests only); with
    ``LoadedWeights`` the weights' dtype wins.
    """
    tf = _tf()
    images = _check_images(images_nhwc)
    weights = get if isinstance(get, LoadedWeights) else load_weights(spec, get, device, dtype)
    images = images.astype(weights.dtype, copy=False)
    if batch_size is None:
        batch_size = auto_batch_size(spec, images.shape[1], images.shape[2], itemsize=weights.dtype.itemsize)
    if int(batch_size) != batch_size or batch_size < 1:
        raise ConversionError(f"batch size must be a positive integer, got {batch_size!r}")
    batch_size = int(batch_size)
    eps = spec.bn_eps

    def bn(prefix: str, x):
        if trace is not None:
            trace(prefix, x.numpy())
        return _bn_inference(x, weights(f"{prefix}/gamma"), weights(f"{prefix}/beta"),
                             weights(f"{prefix}/moving_mean"), weights(f"{prefix}/moving_variance"), eps)

    out = []
    with tf.device(weights.device):
        for i in range(0, images.shape[0], batch_size):
            x = tf.identity(tf.convert_to_tensor(images[i:i + batch_size]))
            out.append(_walk(spec, weights, x, bn, trace).numpy())
    return np.concatenate(out, axis=0).astype(weights.dtype, copy=False)


def calibrate_with_logits(spec: ArchSpec, get: Getter, images_nhwc: np.ndarray,
                          device: Optional[str] = None) -> Tuple[Dict[str, np.ndarray], np.ndarray]:
    """``calibrate`` that also returns the logits of the calibrated pass."""
    tf = _tf()
    images = _check_images(images_nhwc)
    dev = _device_name(device)
    shapes = dict(variables(spec))
    eps = spec.bn_eps
    stats: Dict[str, np.ndarray] = {}

    def w(name: str):
        # converted on use and dropped after: no second copy of a large model's weights
        return tf.identity(tf.convert_to_tensor(_fetch(get, name, shapes[name])))

    def bn(prefix: str, x):
        mean, var = tf.nn.moments(x, axes=[0, 1, 2])  # biased variance over N, H, W
        stats[f"{prefix}/moving_mean"] = mean.numpy().astype(np.float32)
        stats[f"{prefix}/moving_variance"] = var.numpy().astype(np.float32)
        return _bn_inference(x, w(f"{prefix}/gamma"), w(f"{prefix}/beta"), mean, var, eps)

    with tf.device(dev):
        x = tf.identity(tf.convert_to_tensor(images))
        logits = _walk(spec, w, x, bn).numpy()
    return stats, logits


def calibrate(spec: ArchSpec, get: Getter, images_nhwc: np.ndarray,
              device: Optional[str] = None) -> Dict[str, np.ndarray]:
    """BN moving statistics calibrated on ``images_nhwc`` (all images in one batch).

    Walks the network in order; at every BN the moving mean / variance become the batch mean
    and biased variance (over N, H, W) of that BN's own input, which is then normalized with
    them. Returns ``{".../moving_mean": ..., ".../moving_variance": ...}`` for every BN
    (float32). Only the trainable variables are read through ``get``.
    """
    return calibrate_with_logits(spec, get, images_nhwc, device)[0]


# --------------------------------------------------------------------------- CLI


def _one_line(e: BaseException) -> str:
    text = getattr(e, "message", None) or str(e) or type(e).__name__
    lines = [ln.strip() for ln in str(text).splitlines() if ln.strip()]
    return lines[0] if lines else type(e).__name__


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m converter.tfref.reference",
        description="TensorFlow reference logits of an official-layout EfficientNet checkpoint.")
    p.add_argument("--checkpoint", required=True, help="checkpoint prefix (DIR/model.ckpt) or folder")
    p.add_argument("--variant", required=True, help=variants_help())
    p.add_argument("--images", required=True, help=".npz with key 'images' (normalized NHWC float32)")
    p.add_argument("--out", required=True, help=".npz to write: logits, seconds, device")
    p.add_argument("--no-ema", action="store_true", help="read raw variables, not the EMA twins")
    p.add_argument("--num-classes", type=int, default=None,
                   help="classes of the head (default: from the dense kernel's shape)")
    p.add_argument("--device", choices=("cpu", "cuda", "auto"), default="auto")
    p.add_argument("--batch-size", type=int, default=None, help="images per pass (default: auto)")
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32",
                   help="float32: the reference; float64: the same graph without float32 rounding")
    p.add_argument("--float64", action="store_true",
                   help="also the float64 logits of the same graph (logits64, seconds64), after the float32 ones")
    p.add_argument("--fused-stride", choices=FUSED_STRIDES, default=FUSED_STRIDE_DEFAULT,
                   help="EdgeTPU fused blocks: the stride on the kxk expand conv (default; tensorflow/tpu since "
                        "32572cb, 2020-12-27) or on the 1x1 project conv (the 2019 code, 631fb4c)")
    return p


def _load_images(path: str) -> np.ndarray:
    try:
        with np.load(path, allow_pickle=False) as data:
            if "images" not in data.files:
                raise ConversionError(f"{path}: no key 'images' (keys: {', '.join(data.files) or 'none'})")
            return _check_images(data["images"])
    except (OSError, ValueError) as e:
        raise ConversionError(f"cannot read images from {path!r}: {_one_line(e)}") from None


def _run_cli(args: argparse.Namespace, after: Optional[Callable] = None) -> int:
    tf = _tf()
    gpus = tf.config.list_physical_devices("GPU")
    if args.device == "cuda" and not gpus:
        raise ConversionError("--device cuda: TensorFlow sees no GPU (or was built without CUDA)")
    for gpu in gpus:
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError:
            pass
    device = "/GPU:0" if gpus and args.device != "cpu" else "/CPU:0"
    if args.batch_size is not None and args.batch_size < 1:
        raise ConversionError(f"--batch-size must be >= 1, got {args.batch_size}")

    spec = get_arch(args.variant).with_fused_stride(args.fused_stride)
    images = _load_images(args.images)
    get = read_checkpoint_getter(args.checkpoint, use_ema=not args.no_ema)
    dense_name = f"{spec.scope}/head/dense/kernel"
    if spec.family in FAMILIES:
        dense_name = f"{FAMILIES[spec.family].classifier(spec)}/kernel"
        dense_name = FAMILIES[spec.family].aliases(spec, get.shapes).get(dense_name, dense_name)
    dense = get.shape(dense_name)
    if len(dense) != 2:
        raise ConversionError(f"head/dense/kernel has shape {list(dense)}, expected [in, classes]")
    if args.num_classes is not None and args.num_classes != dense[1]:
        raise ConversionError(
            f"--num-classes {args.num_classes} but the checkpoint's dense kernel has {dense[1]} classes")
    spec = spec.with_classes(int(dense[1]))
    weights = load_weights(spec, get, device, dtype=np.dtype(args.dtype))
    if after is not None:  # converter/tfref/taps.py (verify --trace): the intermediate tensors too
        after(spec, get, weights, images, device)
    t0 = time.perf_counter()
    logits = forward(spec, weights, images, batch_size=args.batch_size)
    seconds = time.perf_counter() - t0
    extra = {}
    if args.float64:  # the float32 weights go first: one copy of the model at a time
        del weights
        weights = load_weights(spec, get, device, dtype=np.float64)
        t0 = time.perf_counter()
        extra["logits64"] = forward(spec, weights, images, batch_size=args.batch_size)
        extra["seconds64"] = np.float64(time.perf_counter() - t0)
    del get, weights
    out_dir = os.path.dirname(os.path.abspath(args.out))
    if not os.path.isdir(out_dir):
        raise ConversionError(f"output folder {out_dir!r} does not exist")
    with open(args.out, "wb") as f:  # exactly this path (np.savez would append .npz)
        np.savez(f, logits=logits, seconds=np.float64(seconds), device=np.array(device), **extra)
    return 0


def main(argv: Optional[Sequence[str]] = None, after: Optional[Callable] = None) -> int:
    """CLI entry point; returns the exit code (0 ok, 2 bad input). ``after(spec, get, weights, images,
    device)``: run once the weights are loaded (converter/tfref/taps.py's entry point)."""
    args = _parser().parse_args(argv)
    if args.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = "-1"  # before TensorFlow is imported
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        return _run_cli(args, after)
    except ConversionError as e:
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return e.exit_code
    except Exception as e:  # TensorFlow errors caused by the input (corrupt files, bad shapes)
        tf = sys.modules.get("tensorflow")
        if tf is not None and isinstance(e, tf.errors.OpError):
            print(f"error: TensorFlow: {_one_line(e)}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
