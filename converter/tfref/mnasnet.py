"""TensorFlow reference of MnasNet and MixNet (eval mode), by official variable names.

Mirrors tensorflow/tpu 7dc921f models/official/mnasnet: mnasnet_model.MnasBlock.call /
MnasNetModel.call and mixnet/mixnet_model.MixnetBlock.call / MixnetModel.call, with
mixnet/custom_layers.GroupedConv2D / MixConv (tf.split of the channels with the remainder in
the first group, one conv per group, tf.concat) -- plain TF ops, 'SAME' padding, BN eps 1e-3.
converter.tfref.reference dispatches here (converter/tfref/families.py ``FAMILIES``, filled when
converter/tfref/__init__.py imports this module).
"""
from __future__ import annotations

import sys
from typing import Callable, Dict, Iterable, List, Optional, Tuple

from ..arch import ArchSpec, Block
from ..mnasnet import MIXNET, MNASNET, MixBlock, keras_aliases, layers, split_channels
from .families import FAMILIES
from .tfimport import import_tensorflow

BN_PARAMS = ("gamma", "beta", "moving_mean", "moving_variance")  # tf.layers.BatchNormalization


def _groups(b: Block) -> Tuple[List[int], List[int], List[int], List[int], List[int], Tuple[int, ...]]:
    if isinstance(b, MixBlock):
        s = b.splits()
        return s["expand_in"], s["expand_out"], s["dw"], s["project_in"], s["project_out"], b.dw_kernels
    return [b.in_channels], [b.mid_channels], [b.mid_channels], [b.mid_channels], [b.out_channels], (b.kernel_size,)


def variables(spec: ArchSpec) -> List[Tuple[str, Tuple[int, ...]]]:
    """``[(official name, TF shape)]`` in the official creation order (a fresh graph's counters)."""
    s, L = spec.scope, layers(spec)
    out: List[Tuple[str, Tuple[int, ...]]] = []

    def bn(prefix: str, c: int) -> None:
        out.extend((f"{s}/{prefix}/{p}", (c,)) for p in BN_PARAMS)

    out.append((f"{s}/{L.stem}/kernel", (3, 3, 3, spec.stem_channels)))
    bn(L.stem_bn, spec.stem_channels)
    for b, n in zip(spec.blocks(), L.blocks):
        e_in, e_out, dw, p_in, p_out, ks = _groups(b)
        if n.expand:
            out.extend((f"{s}/{name}/kernel", (1, 1, i, o)) for name, i, o in zip(n.expand, e_in, e_out))
            bn(n.bn0, b.mid_channels)
        out.extend((f"{s}/{name}/depthwise_kernel", (k, k, c, 1)) for name, k, c in zip(n.depthwise, ks, dw))
        bn(n.bn1, b.mid_channels)
        if n.se_reduce:
            out += [(f"{s}/{n.se_reduce}/kernel", (1, 1, b.mid_channels, b.se_channels)),
                    (f"{s}/{n.se_reduce}/bias", (b.se_channels,)),
                    (f"{s}/{n.se_expand}/kernel", (1, 1, b.se_channels, b.mid_channels)),
                    (f"{s}/{n.se_expand}/bias", (b.mid_channels,))]
        out.extend((f"{s}/{name}/kernel", (1, 1, i, o)) for name, i, o in zip(n.project, p_in, p_out))
        bn(n.bn2, b.out_channels)
    last = spec.blocks()[-1].out_channels
    out.append((f"{s}/{L.head}/kernel", (1, 1, last, spec.head_channels)))
    bn(L.head_bn, spec.head_channels)
    out += [(f"{s}/{L.dense}/kernel", (spec.head_channels, spec.num_classes)),
            (f"{s}/{L.dense}/bias", (spec.num_classes,))]
    return out


def bn_layers(spec: ArchSpec) -> List[str]:
    """Every BN's name prefix in the order the forward pass meets them."""
    s, L = spec.scope, layers(spec)
    out = [f"{s}/{L.stem_bn}"]
    for n in L.blocks:
        out.extend(f"{s}/{x}" for x in (n.bn0, n.bn1, n.bn2) if x)
    return out + [f"{s}/{L.head_bn}"]


def residual_bns(spec: ArchSpec) -> List[str]:
    """Name prefixes of the last BN of every residual block."""
    return [f"{spec.scope}/{n.bn2}" for b, n in zip(spec.blocks(), layers(spec).blocks) if b.residual]


def project_bns(spec: ArchSpec) -> List[str]:
    """Name prefixes of every block's project BN (no activation after it)."""
    return [f"{spec.scope}/{n.bn2}" for n in layers(spec).blocks]


def classifier(spec: ArchSpec) -> str:
    """The dense layer's name prefix (``scope/mnas_net_model/mnas_head/dense``)."""
    return f"{spec.scope}/{layers(spec).dense}"


def aliases(spec: ArchSpec, available: Iterable[str]) -> Dict[str, str]:
    """{name in ``variables(spec)``: the checkpoint's own name} (mnasnet.keras_aliases)."""
    return keras_aliases((n for n, _ in variables(spec)), available)


def _split_apply(x, names: Tuple[str, ...], w, op):
    """custom_layers.GroupedConv2D / MixConv.__call__: one layer alone, else split, apply, concat."""
    tf = import_tensorflow()
    if len(names) == 1:
        return op(x, w(names[0]))
    splits = split_channels(int(x.shape[-1]), len(names))
    parts = tf.split(x, splits, axis=-1)
    return tf.concat([op(p, w(n)) for p, n in zip(parts, names)], axis=-1)


def walk(spec: ArchSpec, w: Callable[[str], object], x, bn: Callable[[str, object], object],
         trace: Optional[Callable] = None):
    """One eval-mode pass (reference._walk's contract): MnasNetModel.call / MixnetModel.call."""
    tf = import_tensorflow()  # (reference._tf set it up: strict float32)
    s, L = spec.scope, layers(spec)
    relu = tf.nn.relu

    def swish(t):
        return t * tf.sigmoid(t)  # tf.nn.swish  # stem and head: tf.nn.relu in both families

    def emit(name: str, t) -> None:
        if trace is not None:
            trace(name, t.numpy())

    def act_of(b: Block):
        return swish if isinstance(b, MixBlock) and b.swish else relu

    def conv1(stride: int):
        return lambda t, k: tf.nn.conv2d(t, k, strides=[1, stride, stride, 1], padding="SAME")

    def dwconv(stride: int):
        return lambda t, k: tf.nn.depthwise_conv2d(t, k, strides=[1, stride, stride, 1], padding="SAME")

    x = relu(bn(f"{s}/{L.stem_bn}", conv1(2)(x, w(f"{s}/{L.stem}/kernel"))))
    emit(f"{s}/stem", x)
    for b, n in zip(spec.blocks(), L.blocks):
        act = act_of(b)
        inputs = x
        if n.expand:
            x = act(bn(f"{s}/{n.bn0}", _split_apply(x, tuple(f"{s}/{e}/kernel" for e in n.expand), w, conv1(1))))
        x = act(bn(f"{s}/{n.bn1}", _split_apply(x, tuple(f"{s}/{d}/depthwise_kernel" for d in n.depthwise), w,
                                                 dwconv(b.stride))))
        if n.se_reduce:
            se = tf.reduce_mean(x, [1, 2], keepdims=True)
            se = tf.nn.bias_add(conv1(1)(se, w(f"{s}/{n.se_reduce}/kernel")), w(f"{s}/{n.se_reduce}/bias"))
            se = tf.nn.bias_add(conv1(1)(act(se), w(f"{s}/{n.se_expand}/kernel")), w(f"{s}/{n.se_expand}/bias"))
            x = tf.sigmoid(se) * x
        x = bn(f"{s}/{n.bn2}", _split_apply(x, tuple(f"{s}/{p}/kernel" for p in n.project), w, conv1(1)))
        if b.residual:
            x = x + inputs
        emit(f"{s}/blocks_{b.index}", x)
    x = relu(bn(f"{s}/{L.head_bn}", conv1(1)(x, w(f"{s}/{L.head}/kernel"))))
    x = tf.reduce_mean(x, [1, 2])  # GlobalAveragePooling2D
    emit(f"{s}/head/pooled", x)
    return tf.matmul(x, w(f"{classifier(spec)}/kernel")) + w(f"{classifier(spec)}/bias")


FAMILIES[MNASNET] = FAMILIES[MIXNET] = sys.modules[__name__]
