"""TensorFlow reference of the EfficientNet (V1) block kinds: MBConv, fused (EdgeTPU), CondConv.

Mirrors tensorflow/tpu models/official/efficientnet/efficientnet_model.py (MBConvBlock,
MBConvBlockWithoutDepthwise) and condconv/condconv_layers.py in eval mode, by official names.
TensorFlow is imported lazily (converter.tfref.ops); nothing here imports torch.
"""
from __future__ import annotations

import re
from typing import Dict, Iterable, Tuple

from ...arch import KIND_CONDCONV, Block
from ...errors import ConversionError
from ...family import DROPPED, HEAD_1X1, LAST_BLOCK, LOGITS, POOLED
from ...keras_names import counter_name, match_counters
from ...tfref.ops import (BN_NAME, BlockNames, BlockRef, Kernels, ModelRef, conv, depthwise_conv, se_gate, tf)


def se_names(spec, block: Block) -> Tuple:
    p = f"{spec.scope}/blocks_{block.index}"
    return (f"{p}/se/conv2d", f"{p}/se/conv2d_1") if block.se_channels else (None, None)


def mbconv_names(spec, block: Block) -> BlockNames:
    """efficientnet_model.MBConvBlock._build: conv2d, BN, depthwise_conv2d, BN_1, se/..., conv2d_1, BN_2
    (without expand conv: depthwise_conv2d, BN, se/..., conv2d, BN_1)."""
    p = f"{spec.scope}/blocks_{block.index}"
    se_reduce, se_expand = se_names(spec, block)
    if block.has_expand:
        return BlockNames(expand=f"{p}/conv2d", bn0=f"{p}/{BN_NAME}", depthwise=f"{p}/depthwise_conv2d",
                          bn1=f"{p}/{BN_NAME}_1", se_reduce=se_reduce, se_expand=se_expand,
                          project=f"{p}/conv2d_1", bn2=f"{p}/{BN_NAME}_2")
    return BlockNames(expand=None, bn0=None, depthwise=f"{p}/depthwise_conv2d", bn1=f"{p}/{BN_NAME}",
                      se_reduce=se_reduce, se_expand=se_expand, project=f"{p}/conv2d", bn2=f"{p}/{BN_NAME}_1")


def _fused_names(spec, block: Block) -> BlockNames:
    # efficientnet_model.MBConvBlockWithoutDepthwise._build: conv2d (kxk expand), BN, conv2d_1, BN_1
    p = f"{spec.scope}/blocks_{block.index}"
    if block.has_expand:
        return BlockNames(expand=f"{p}/conv2d", bn0=f"{p}/{BN_NAME}", depthwise=None, bn1=None,
                          se_reduce=None, se_expand=None, project=f"{p}/conv2d_1", bn2=f"{p}/{BN_NAME}_1")
    return BlockNames(expand=None, bn0=None, depthwise=None, bn1=None, se_reduce=None, se_expand=None,
                      project=f"{p}/conv2d", bn2=f"{p}/{BN_NAME}")


def _condconv_names(spec, block: Block) -> BlockNames:
    # MBConvBlock._build with condconv: CondConv2D fused (no variables: unused), expand,
    # project per block, one DepthwiseCondConv2D; Keras counts them over the whole model
    p = f"{spec.scope}/blocks_{block.index}"
    se_reduce, se_expand = se_names(spec, block)
    k = sum(1 for b in spec.blocks()[:block.index] if b.kind == KIND_CONDCONV)
    m = f"{spec.scope}/model/blocks_{block.index}"
    bn = [f"{p}/{BN_NAME}", f"{p}/{BN_NAME}_1", f"{p}/{BN_NAME}_2"]
    if not block.has_expand:
        bn = [None] + bn[:2]
    return BlockNames(
        expand=f"{m}/{counter_name('cond_conv2d', 3 * k + 1)}" if block.has_expand else None,
        bn0=bn[0], depthwise=f"{m}/{counter_name('depthwise_cond_conv2d', k)}", bn1=bn[1],
        se_reduce=se_reduce, se_expand=se_expand,
        project=f"{m}/{counter_name('cond_conv2d', 3 * k + 2)}", bn2=bn[2], routing=f"{p}/dense")


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


def mbconv_kernels(b: Block, n: BlockNames) -> Kernels:
    k = b.kernel_size
    out: Kernels = {}
    if n.expand:
        out["expand"] = (f"{n.expand}/kernel", (1, 1, b.in_channels, b.mid_channels))
    out["depthwise"] = (f"{n.depthwise}/depthwise_kernel", (k, k, b.mid_channels, 1))
    out["project"] = (f"{n.project}/kernel", (1, 1, b.mid_channels, b.out_channels))
    return out


def _fused_call(b: Block, n: BlockNames, kv: Kernels, x, w, bn, act, endpoint):
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
        x = act(bn(n.bn0, conv(x, w(kv["expand"][0]), expand_stride)))
    elif expand_stride != 1:
        raise ConversionError(f"blocks_{b.index}: a strided fused block without expand conv")
    endpoint("expansion_output", x)  # MBConvBlockWithoutDepthwise.call: after the expand conv's act (or the input)
    return bn(n.bn2, conv(x, w(kv["project"][0]), project_stride))


def _mbconv_body(b: Block, n: BlockNames, x, w, bn, act, conv_role, endpoint):
    # efficientnet_model.MBConvBlock.call: [expand conv, BN, act], depthwise, BN, act, [SE], project, BN
    if n.expand:
        x = act(bn(n.bn0, conv_role(x, "expand", 1)))
    x = act(bn(n.bn1, conv_role(x, "depthwise", b.stride)))
    if n.se_reduce:
        x = se_gate(x, n, w, act)
    endpoint("expansion_output", x)  # self.endpoints = {'expansion_output': x}, after the SE
    return bn(n.bn2, conv_role(x, "project", 1))


def mbconv_call(b: Block, n: BlockNames, kv: Kernels, x, w, bn, act, endpoint):
    def conv_role(t, role, stride):
        return (depthwise_conv if role == "depthwise" else conv)(t, w(kv[role][0]), stride)

    return _mbconv_body(b, n, x, w, bn, act, conv_role, endpoint)


def _condconv(x, routing, experts, kernel_shape, stride: int, depthwise: bool):
    """condconv_layers.CondConv2D / DepthwiseCondConv2D.call: kernels = routing @ experts, then
    one convolution per example with its own kernel reshaped to ``kernel_shape``."""
    t = tf()
    kernels = t.matmul(routing, experts)
    outs = []
    for i in range(int(x.shape[0])):
        kernel = t.reshape(kernels[i], kernel_shape)
        outs.append((depthwise_conv if depthwise else conv)(x[i:i + 1], kernel, stride))
    return t.concat(outs, axis=0)


def _per_example_shapes(b: Block) -> Dict[str, Tuple[int, int, int, int]]:
    k = b.kernel_size
    return {"expand": (1, 1, b.in_channels, b.mid_channels), "depthwise": (k, k, b.mid_channels, 1),
            "project": (1, 1, b.mid_channels, b.out_channels)}


def _condconv_call(b: Block, n: BlockNames, kv: Kernels, x, w, bn, act, endpoint):
    # MBConvBlock.call with condconv: GlobalAveragePooling2D of the block input -> Dense(sigmoid)
    t = tf()
    pooled = t.reduce_mean(x, [1, 2])
    routing = t.sigmoid(t.matmul(pooled, w(f"{n.routing}/kernel")) + w(f"{n.routing}/bias"))
    per_example = _per_example_shapes(b)

    def conv_role(x_, role, stride):
        return _condconv(x_, routing, w(kv[role][0]), per_example[role], stride, role == "depthwise")

    return _mbconv_body(b, n, x, w, bn, act, conv_role, endpoint)


def condconv_kernel_shapes(spec) -> Dict[str, Tuple[int, int, int, int]]:
    """{condconv kernel variable: its per-example kernel shape (kh, kw, in, out)} (condconv_layers:
    depthwise kernels are (kh, kw, channels, 1))."""
    out: Dict[str, Tuple[int, int, int, int]] = {}
    for b in spec.blocks():
        if b.kind == KIND_CONDCONV:
            kv = _condconv_kernels(b, _condconv_names(spec, b))
            shapes = _per_example_shapes(b)
            out.update({kv[role][0]: shapes[role] for role in kv})
    return out


# condconv_layers kernels in a checkpoint: scope/[model/]blocks_N/[depthwise_]cond_conv2d[_M]/VAR
_CC_PATTERN = re.compile(r"^(?P<scope>.+?)/(?:model/)?blocks_(?P<i>\d+)/(?:depthwise_)?cond_conv2d(?:_(?P<n>\d+))?/"
                         r"(?P<var>(?:depthwise_)?condconv_kernel)$")


def condconv_aliases(spec, wanted: Iterable[str], available: Iterable[str]) -> Dict[str, str]:
    """{name in ``variables(spec)``: the checkpoint's own name} for the CondConv kernels (of ``wanted``).

    The released checkpoints' exact kernel names could not be checked (shared/reference/README.md):
    they may or may not carry the ``model/`` element, and their counters depend on how the
    official code created its layers. So within each block the checkpoint's kernels of one
    kind (``condconv_kernel`` / ``depthwise_condconv_kernel``) are taken in counter order
    (expand before project) and must pair up one to one with the expected ones; anything else
    raises ConversionError (keras_names.match_counters). Names not found at all are left alone
    (reported when read).
    """
    wanted = [name for b in spec.blocks() if b.kind == KIND_CONDCONV
              for name, _ in _condconv_kernels(b, _condconv_names(spec, b)).values()]
    return match_counters(wanted, available, _CC_PATTERN, key=lambda m: (m["scope"], int(m["i"]), m["var"]),
                          describe=lambda k: (f"{k[0]}/blocks_{k[1]}", k[2]))


# every block's own endpoints (MBConvBlock.call, MBConvBlockWithoutDepthwise.call at tensorflow/tpu 7dc921f)
_ENDPOINTS = ("expansion_output",)
MBCONV = BlockRef(mbconv_names, mbconv_call, kernels=mbconv_kernels, endpoints=_ENDPOINTS)
FUSED = BlockRef(_fused_names, _fused_call, kernels=_fused_kernels, endpoints=_ENDPOINTS)
CONDCONV = BlockRef(_condconv_names, _condconv_call, kernels=_condconv_kernels, endpoints=_ENDPOINTS)
# efficientnet_model.Model.call (7dc921f): 'features' (last block), 'head_1x1' (head conv, BN, act),
# 'pooled_features' (the pool), 'global_pool' (after dropout), 'head' (after the dense layer)
MODEL = ModelRef(aliases=condconv_aliases, kernel_shapes=condconv_kernel_shapes,
                 head_endpoints=(("features", LAST_BLOCK), ("head_1x1", HEAD_1X1), ("pooled_features", POOLED),
                                 ("global_pool", DROPPED), ("head", LOGITS)))
