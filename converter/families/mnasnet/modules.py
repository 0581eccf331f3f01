"""The PyTorch module of MixNet's block (kind ``mixconv``) in eval mode; MnasNet's blocks are converter.blocks.MBConv."""
from __future__ import annotations

from typing import List, Tuple

import torch
from torch import nn

from ...arch import Block
from ...blocks import MBConv, SqueezeExcite, make_activation
from ...layers import BatchNorm2dTF, Conv2dSame
from .arch import MixBlock


class GroupedConv2dSame(nn.Module):
    """tensorflow/tpu mnasnet/mixnet/custom_layers.GroupedConv2D and MixConv (depthwise=True).

    The input channels are split in equal parts with the remainder in the FIRST group
    (``_split_channels``), each part goes through its own Conv2dSame (its own kernel size,
    same stride), the outputs are concatenated; one group is just that conv. Groups after the
    first are marked ``parallel`` (they see the same input size: converter.fast.set_input_size).
    """

    def __init__(self, in_splits: List[int], out_splits: List[int], kernels: Tuple[int, ...], stride: int = 1,
                 depthwise: bool = False):
        super().__init__()
        self.splits = [int(c) for c in in_splits]
        self.convs = nn.ModuleList()
        for g, (cin, cout, k) in enumerate(zip(in_splits, out_splits, kernels)):
            conv = Conv2dSame(cin, cout, k, stride, groups=cin if depthwise else 1)
            conv.parallel = g > 0
            self.convs.append(conv)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if len(self.convs) == 1:
            return self.convs[0](x)
        parts = torch.split(x, self.splits, dim=1)
        outs = []
        for g, conv in enumerate(self.convs):  # (TorchScript iterates a ModuleList this way)
            outs.append(conv(parts[g]))
        return torch.cat(outs, dim=1)


class MixConvBlock(MBConv):
    """tensorflow/tpu mnasnet/mixnet/mixnet_model.MixnetBlock (block kind ``mixconv``) in eval mode.

    Grouped 1x1 expand conv -> BN -> act, MixConv depthwise (kernel sizes per group) -> BN -> act,
    SE (act inside), grouped 1x1 project conv -> BN, residual. act: swish in ``sw`` blocks, else
    ReLU (the model's ``act`` is the stem/head one and is not used here). Runs MBConv's forward.
    """

    BN_FUSION = ()  # grouped convs: their BNs are not folded

    def __init__(self, b: Block, eps: float, act: str):
        nn.Module.__init__(self)  # MBConv's layers are built here, grouped
        assert isinstance(b, MixBlock)
        s = b.splits()
        self.residual = b.residual
        self.survival_prob = 1.0  # drop-connect in training (converter/training.py); 1: none
        if b.has_expand:
            self.expand_conv = GroupedConv2dSame(s["expand_in"], s["expand_out"], (1,) * b.expand_groups)
            self.bn0 = BatchNorm2dTF(b.mid_channels, eps)
        self.dw_conv = GroupedConv2dSame(s["dw"], s["dw"], b.dw_kernels, b.stride, depthwise=True)
        self.bn1 = BatchNorm2dTF(b.mid_channels, eps)
        self.se = SqueezeExcite(b.mid_channels, b.se_channels, b.activation) if b.se_channels else None
        self.project_conv = GroupedConv2dSame(s["project_in"], s["project_out"], (1,) * b.project_groups)
        self.bn2 = BatchNorm2dTF(b.out_channels, eps)
        self.act = make_activation(b.activation)
