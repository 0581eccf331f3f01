"""TensorFlow reference of the EfficientNetV2 fused block (google/automl efficientnetv2 at 6a54c87,
effnetv2_model.FusedMBConvBlock) in eval mode, by official names. V2's MBConv blocks are V1's kind."""
from __future__ import annotations

from ...family import DROPPED, HEAD_1X1, LAST_BLOCK, POOLED
from ...tfref.ops import BN_NAME, BlockNames, BlockRef, Kernels, ModelRef, conv, se_gate


def _names(spec, block) -> BlockNames:
    # effnetv2_model.FusedMBConvBlock._build: conv2d (kxk expand, strided), BN, se/..., conv2d_1
    # (1x1 project), BN_1; expand ratio 1: se/..., conv2d (the strided kxk conv), BN. ``bn2`` is
    # the last conv's BN.
    p = f"{spec.scope}/blocks_{block.index}"
    se = (f"{p}/se/conv2d", f"{p}/se/conv2d_1") if block.se_channels else (None, None)
    if block.has_expand:
        return BlockNames(expand=f"{p}/conv2d", bn0=f"{p}/{BN_NAME}", depthwise=None, bn1=None,
                          se_reduce=se[0], se_expand=se[1], project=f"{p}/conv2d_1", bn2=f"{p}/{BN_NAME}_1")
    return BlockNames(expand=None, bn0=None, depthwise=None, bn1=None, se_reduce=se[0], se_expand=se[1],
                      project=f"{p}/conv2d", bn2=f"{p}/{BN_NAME}")


def _kernels(b, n: BlockNames) -> Kernels:
    k = b.kernel_size
    if n.expand:
        return {"expand": (f"{n.expand}/kernel", (k, k, b.in_channels, b.mid_channels)),
                "project": (f"{n.project}/kernel", (1, 1, b.mid_channels, b.out_channels))}
    return {"project": (f"{n.project}/kernel", (k, k, b.in_channels, b.out_channels))}


def _call(b, n: BlockNames, kv: Kernels, x, w, bn, act, endpoint):
    # effnetv2_model.FusedMBConvBlock.call: the kxk expand conv carries the stride, then
    # act, [SE], the 1x1 project conv + BN; without expansion one strided kxk conv + BN + act
    if n.expand:
        x = act(bn(n.bn0, conv(x, w(kv["expand"][0]), b.stride)))
    endpoint("expansion_output", x)  # FusedMBConvBlock.call: after the expansion (or the input), before the SE
    if n.se_reduce:
        x = se_gate(x, n, w, act)
    x = bn(n.bn2, conv(x, w(kv["project"][0]), 1 if n.expand else b.stride))
    return x if n.expand else act(x)  # "add act if no expansion"


FUSED_V2 = BlockRef(_names, _call, kernels=_kernels, endpoints=("expansion_output",))
# EffNetV2Model.call + Head.call (6a54c87): 'features' (last block), 'head_1x1', 'pooled_features', and
# 'head' the pool after dropout (no 'global_pool' without local pooling; the logits are no endpoint)
MODEL = ModelRef(head_endpoints=(("features", LAST_BLOCK), ("head_1x1", HEAD_1X1), ("pooled_features", POOLED),
                                 ("head", DROPPED)))
