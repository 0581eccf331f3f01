"""TensorFlow reference of MnasNet and MixNet (eval mode), by official variable names.

Mirrors tensorflow/tpu 7dc921f models/official/mnasnet: mnasnet_model.MnasBlock.call /
MnasNetModel.call and mixnet/mixnet_model.MixnetBlock.call / MixnetModel.call, with
mixnet/custom_layers.GroupedConv2D / MixConv (tf.split of the channels with the remainder in
the first group, one conv per group, tf.concat) -- plain TF ops, 'SAME' padding, BN eps 1e-3.
The kinds ``mnasblock`` and ``mixconv`` (``BLOCK``) and the model's names (``MODEL``), as the
family declares them; converter.tfref.reference walks the model.
"""
from __future__ import annotations

import functools
from typing import Dict, Iterable, List, Tuple

from ...arch import Block
from ...family import LAST_BLOCK, LOGITS
from ...tfref.ops import BlockRef, ModelNames, ModelRef, Variables, bn_variables, conv, depthwise_conv, se_gate, swish, tf
from .arch import BlockLayers, MixBlock, keras_aliases, layers, split_channels


@functools.lru_cache(maxsize=16)
def _scoped(spec) -> Tuple[ModelNames, Tuple[BlockLayers, ...]]:
    """The official layer paths of ``layers(spec)`` with the scope in front."""
    s, L = spec.scope, layers(spec)

    def sc(x):
        return None if x is None else tuple(f"{s}/{y}" for y in x) if isinstance(x, tuple) else f"{s}/{x}"

    blocks = tuple(BlockLayers(*(sc(getattr(n, f)) for f in BlockLayers.__dataclass_fields__)) for n in L.blocks)
    return ModelNames(sc(L.stem), sc(L.stem_bn), sc(L.head), sc(L.head_bn), sc(L.dense)), blocks


def _groups(b: Block) -> Tuple[List[int], List[int], List[int], List[int], List[int], Tuple[int, ...]]:
    if isinstance(b, MixBlock):
        s = b.splits()
        return s["expand_in"], s["expand_out"], s["dw"], s["project_in"], s["project_out"], b.dw_kernels
    return [b.in_channels], [b.mid_channels], [b.mid_channels], [b.mid_channels], [b.out_channels], (b.kernel_size,)


def _names(spec, b: Block) -> BlockLayers:
    return _scoped(spec)[1][b.index]


def _variables(spec, b: Block, n: BlockLayers) -> Variables:
    """The block's variables in the official creation order (a fresh graph's counters)."""
    e_in, e_out, dw, p_in, p_out, ks = _groups(b)
    out: Variables = []
    if n.expand:
        out += [(f"{name}/kernel", (1, 1, i, o)) for name, i, o in zip(n.expand, e_in, e_out)]
        out += bn_variables(n.bn0, b.mid_channels)
    out += [(f"{name}/depthwise_kernel", (k, k, c, 1)) for name, k, c in zip(n.depthwise, ks, dw)]
    out += bn_variables(n.bn1, b.mid_channels)
    if n.se_reduce:
        out += [(f"{n.se_reduce}/kernel", (1, 1, b.mid_channels, b.se_channels)), (f"{n.se_reduce}/bias", (b.se_channels,)),
                (f"{n.se_expand}/kernel", (1, 1, b.se_channels, b.mid_channels)), (f"{n.se_expand}/bias", (b.mid_channels,))]
    out += [(f"{name}/kernel", (1, 1, i, o)) for name, i, o in zip(n.project, p_in, p_out)]
    return out + bn_variables(n.bn2, b.out_channels)


def _split_apply(x, names: Tuple[str, ...], w, op):
    """custom_layers.GroupedConv2D / MixConv.__call__: one layer alone, else split, apply, concat."""
    if len(names) == 1:
        return op(x, w(names[0]))
    splits = split_channels(int(x.shape[-1]), len(names))
    parts = tf().split(x, splits, axis=-1)
    return tf().concat([op(p, w(n)) for p, n in zip(parts, names)], axis=-1)


def _call(b: Block, n: BlockLayers, kv, x, w, bn, act, endpoint):
    """MnasBlock.call / MixnetBlock.call: ReLU, or swish in MixNet's ``sw`` blocks (their SE too)."""
    act = swish if isinstance(b, MixBlock) and b.swish else tf().nn.relu
    if n.expand:
        x = act(bn(n.bn0, _split_apply(x, tuple(f"{e}/kernel" for e in n.expand), w, lambda t, k: conv(t, k, 1))))
    x = act(bn(n.bn1, _split_apply(x, tuple(f"{d}/depthwise_kernel" for d in n.depthwise), w,
                                    lambda t, k: depthwise_conv(t, k, b.stride))))
    if n.se_reduce:
        x = se_gate(x, n, w, act)
    endpoint("expansion_output", x)  # self.endpoints = {'expansion_output': x}, after the SE
    return bn(n.bn2, _split_apply(x, tuple(f"{p}/kernel" for p in n.project), w, lambda t, k: conv(t, k, 1)))


def _model_names(spec) -> ModelNames:
    return _scoped(spec)[0]


def _aliases(spec, wanted: Iterable[str], available: Iterable[str]) -> Dict[str, str]:
    """{our name: the checkpoint's own name} for the Keras layers (mnasnet.keras_aliases)."""
    return keras_aliases(wanted, available)


BLOCK = BlockRef(_names, _call, variables=_variables, endpoints=("expansion_output",))
# MnasNetModel.call / MixnetModel.call: 'global_pool' is the last block's output, 'head' the logits
MODEL = ModelRef(names=_model_names, aliases=_aliases, head_endpoints=(("global_pool", LAST_BLOCK), ("head", LOGITS)))
