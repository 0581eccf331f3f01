"""What every family's TensorFlow reference is built from: TF ops, names, the block and model contracts.

The family packages' reference modules (converter/families/<name>/reference.py) build their
kinds' ``BlockRef`` and their ``ModelRef`` from this; converter.tfref.reference walks a model with
them. TensorFlow is imported lazily (``tf()``), and nothing here imports torch or the registry.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

from ..errors import ConversionError

BN_PARAMS = ("gamma", "beta", "moving_mean", "moving_variance")  # tf.layers.BatchNormalization
BN_NAME = "tpu_batch_normalization"  # tensorflow/tpu efficientnet utils.TpuBatchNormalization

Variables = List[Tuple[str, Tuple[int, ...]]]  # [(official name, TF shape)]
Kernels = Dict[str, Tuple[str, Tuple[int, ...]]]  # {role: (variable name, TF shape)}

_TF = None


def tf():
    """Import TensorFlow once; the reference computes in strict float32 (no TF32 on GPUs)."""
    global _TF
    if _TF is None:
        from .tfimport import import_tensorflow

        t = import_tensorflow()
        # Ampere+ GPUs would otherwise run convs/matmuls in TF32 (10-bit mantissa).
        t.config.experimental.enable_tensor_float_32_execution(False)
        _TF = t
    return _TF


def conv(x, kernel, stride: int):
    return tf().nn.conv2d(x, kernel, strides=[1, stride, stride, 1], padding="SAME")


def depthwise_conv(x, kernel, stride: int):
    return tf().nn.depthwise_conv2d(x, kernel, strides=[1, stride, stride, 1], padding="SAME")


def swish(x):
    return x * tf().sigmoid(x)  # tf.nn.swish, the official relu_fn default


def activation(name: str):
    """GlobalParams.relu_fn: tf.nn.swish (default, CondConv), tf.nn.relu (EdgeTPU), tf.nn.relu6 (Lite)."""
    if name == "swish":
        return swish
    if name == "relu":
        return tf().nn.relu
    if name == "relu6":
        return tf().nn.relu6
    raise ConversionError(f"unknown activation {name!r}")


def bn_inference(x, gamma, beta, mean, var, eps: float):
    # utils.TpuBatchNormalization is a Keras BatchNormalization with fused=False: in inference
    # it calls tf.nn.batch_normalization(x, moving_mean, moving_variance, beta, gamma, eps).
    return tf().nn.batch_normalization(x, mean, var, beta, gamma, eps)


def bn_variables(prefix: str, channels: int) -> Variables:
    """A batch norm's four variables under ``prefix``."""
    return [(f"{prefix}/{p}", (channels,)) for p in BN_PARAMS]


@dataclass(frozen=True)
class BlockNames:
    """Official variable-scope prefixes of one block (``scope/blocks_N/...``): what the generic
    code reads of any kind's names is ``bn0``, ``bn1``, ``bn2`` (None: no such BN), the project
    BN being ``bn2``. ``routing``: a CondConv block's routing dense."""

    expand: Optional[str]
    bn0: Optional[str]
    depthwise: Optional[str]
    bn1: Optional[str]
    se_reduce: Optional[str]
    se_expand: Optional[str]
    project: str
    bn2: str
    routing: Optional[str] = None


def se_gate(x, n, w: Callable[[str], object], act):
    """Squeeze-excitation (MBConvBlock._call_se; V2's SE layer; MnasBlock's): mean -> conv+bias ->
    act -> conv+bias -> sigmoid, times ``x``."""
    t = tf()
    se = t.reduce_mean(x, [1, 2], keepdims=True)
    se = t.nn.bias_add(conv(se, w(f"{n.se_reduce}/kernel"), 1), w(f"{n.se_reduce}/bias"))
    se = act(se)
    se = t.nn.bias_add(conv(se, w(f"{n.se_expand}/kernel"), 1), w(f"{n.se_expand}/bias"))
    return t.sigmoid(se) * x


def se_variables(b, n) -> Variables:
    """The SE layer's variables (none when the block has no SE)."""
    if not n.se_reduce:
        return []
    return [(f"{n.se_reduce}/kernel", (1, 1, b.mid_channels, b.se_channels)), (f"{n.se_reduce}/bias", (b.se_channels,)),
            (f"{n.se_expand}/kernel", (1, 1, b.se_channels, b.mid_channels)), (f"{n.se_expand}/bias", (b.mid_channels,))]


def kernel_variables(b, n: BlockNames, kv: Kernels) -> Variables:
    """A block's variables in the official creation order from its names and kernels: [routing],
    [expand, BN], [depthwise, BN], [SE], project, BN."""
    out: Variables = []
    if n.routing:
        out += [(f"{n.routing}/kernel", (b.in_channels, b.experts)), (f"{n.routing}/bias", (b.experts,))]
    if n.expand:
        out.append(kv["expand"])
        out += bn_variables(n.bn0, b.mid_channels)
    if n.depthwise:
        out.append(kv["depthwise"])
        out += bn_variables(n.bn1, b.mid_channels)
    out += se_variables(b, n)
    out.append(kv["project"])
    return out + bn_variables(n.bn2, b.out_channels)


@dataclass(frozen=True)
class BlockRef:
    """The TF reference of one block kind: official names, variables, eval-mode computation.

    ``names(spec, block)``: the block's names (anything with ``bn0``/``bn1``/``bn2``);
    ``kernels(block, names)``: {role: (variable, shape)} when the variables follow
    ``kernel_variables`` (else ``variables(spec, block, names)``); ``call(block, names, kernels,
    x, w, bn, act)``: the block's output before the residual. ``endpoints``: the official block's
    own endpoints (its ``self.endpoints`` keys, e.g. ``expansion_output``); where there are any,
    ``call`` also takes ``endpoint=``, a ``(name, tensor)`` callable it gives each of them to.
    """

    names: Callable
    call: Callable
    kernels: Optional[Callable] = None
    variables: Optional[Callable] = None
    endpoints: Tuple[str, ...] = ()

    def block_variables(self, spec, b, n) -> Variables:
        return self.variables(spec, b, n) if self.variables else kernel_variables(b, n, self.kernels(b, n))

    def run(self, b, n, x, w, bn, act, endpoint: Optional[Callable] = None):
        kv = self.kernels(b, n) if self.kernels else None
        if self.endpoints:
            return self.call(b, n, kv, x, w, bn, act, endpoint=endpoint or (lambda name, t: None))
        return self.call(b, n, kv, x, w, bn, act)


@dataclass(frozen=True)
class ModelNames:
    """Official name prefixes of a model's stem, head and classifier (scope included)."""

    stem: str
    stem_bn: str
    head: str
    head_bn: str
    dense: str


def scoped_model_names(spec) -> ModelNames:
    """efficientnet_model.Model's names (also effnetv2_model's): ``scope/stem/conv2d``, ``scope/head/dense``..."""
    s = spec.scope
    return ModelNames(f"{s}/stem/conv2d", f"{s}/stem/{BN_NAME}", f"{s}/head/conv2d", f"{s}/head/{BN_NAME}",
                      f"{s}/head/dense")


def no_aliases(spec, wanted, available) -> Dict[str, str]:
    return {}


@dataclass(frozen=True)
class ModelRef:
    """The model-level TF reference of a family: its names, and how a checkpoint's own names are
    matched where they carry Keras counters (``aliases(spec, wanted, available) -> {ours: theirs}``
    for our names ``wanted`` and the checkpoint's ``available``);
    ``kernel_shapes(spec)``: {variable: per-example kernel shape} of routed (CondConv) kernels;
    ``head_endpoints``: the official model's endpoints after its blocks, in its dict's order:
    (key, one of converter.family.HEAD_TENSORS), as the family's official Model.call sets them."""

    names: Callable[[object], ModelNames] = scoped_model_names
    aliases: Callable[[object, object, object], Dict[str, str]] = no_aliases
    kernel_shapes: Callable[[object], Dict[str, Tuple[int, ...]]] = lambda spec: {}
    head_endpoints: Tuple[Tuple[str, str], ...] = ()
