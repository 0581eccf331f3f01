"""The block modules every family's network is made of: activations, conv-BN-act, squeeze-excitation, MBConv.

Mirrors tensorflow/tpu models/official/efficientnet/efficientnet_model.py (MBConvBlock) in eval
mode; the families' own block modules (converter/families/*/modules.py) build on these.
"""
from __future__ import annotations

from typing import List, Tuple

import torch
from torch import nn

from .arch import Block
from .layers import BatchNorm2dTF, Conv2dSame


def make_activation(name: str) -> nn.Module:
    """The activation of an architecture: 'swish' (tf.nn.swish == SiLU), 'relu', 'relu6'."""
    table = {"swish": nn.SiLU, "relu": nn.ReLU, "relu6": nn.ReLU6}
    return table[name]()


def drop_connect(x: torch.Tensor, survival_prob: float, training: bool) -> torch.Tensor:
    """A residual branch dropped per example (stochastic depth) in training; identity otherwise.

    tensorflow/tpu efficientnet utils.drop_connect (7dc921f; google/automl efficientnetv2's alike):
    ``floor(survival_prob + uniform[0, 1))`` per example, the kept ones divided by ``survival_prob``.
    """
    if not training or survival_prob >= 1.0:
        return x
    keep = torch.floor(survival_prob + torch.rand([x.shape[0], 1, 1, 1], dtype=x.dtype, device=x.device))
    return x / survival_prob * keep


class ConvBNAct(nn.Module):
    """Conv (SAME) -> BN -> activation: the stem and the head conv."""

    BN_FUSION = (("conv", "bn"),)  # (conv, the BN applied right after it): what fuse_bn may fold

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, eps: float, act: str):
        super().__init__()
        self.conv = Conv2dSame(cin, cout, kernel, stride)
        self.bn = BatchNorm2dTF(cout, eps)
        self.act = make_activation(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class SqueezeExcite(nn.Module):
    """efficientnet_model.MBConvBlock._call_se: mean -> 1x1 conv -> act -> 1x1 conv -> sigmoid gate."""

    def __init__(self, channels: int, reduced: int, act: str):
        super().__init__()
        self.reduce = nn.Conv2d(channels, reduced, 1, bias=True)
        self.expand = nn.Conv2d(reduced, channels, 1, bias=True)
        self.act = make_activation(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean((2, 3), keepdim=True)
        s = self.expand(self.act(self.reduce(s)))
        return x * torch.sigmoid(s)


class MBConv(nn.Module):
    """efficientnet_model.MBConvBlock in eval mode (drop-connect is identity at inference)."""

    BN_FUSION = (("expand_conv", "bn0"), ("dw_conv", "bn1"), ("project_conv", "bn2"))
    # the block's own endpoints (efficientnet_model.MBConvBlock.endpoints at tensorflow/tpu 7dc921f;
    # effnetv2_model's, MnasBlock's, MixnetBlock's alike), as forward_with_endpoints returns them
    ENDPOINTS = ("expansion_output",)

    def __init__(self, b: Block, eps: float, act: str):
        super().__init__()
        self.residual = b.residual
        self.survival_prob = 1.0  # drop-connect in training (converter/training.py); 1: none
        if b.has_expand:
            self.expand_conv = Conv2dSame(b.in_channels, b.mid_channels, 1)
            self.bn0 = BatchNorm2dTF(b.mid_channels, eps)
        self.dw_conv = Conv2dSame(b.mid_channels, b.mid_channels, b.kernel_size, b.stride,
                                  groups=b.mid_channels)
        self.bn1 = BatchNorm2dTF(b.mid_channels, eps)
        self.se = SqueezeExcite(b.mid_channels, b.se_channels, act) if b.se_channels else None
        self.project_conv = Conv2dSame(b.mid_channels, b.out_channels, 1)
        self.bn2 = BatchNorm2dTF(b.out_channels, eps)
        self.act = make_activation(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with_endpoints(x)[0]

    @staticmethod
    def endpoint_dims(b: Block) -> List[Tuple[int, int]]:
        """(channels, stride from the block's input) of each of ENDPOINTS."""
        return [(b.mid_channels, b.stride)]

    def forward_with_endpoints(self, x: torch.Tensor) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        """(the block's output, [its ENDPOINTS]): MBConvBlock.call's ``expansion_output`` is the
        tensor the project conv takes (after the depthwise conv, BN, act and SE)."""
        y = x
        if hasattr(self, "expand_conv"):
            y = self.act(self.bn0(self.expand_conv(y)))
        y = self.act(self.bn1(self.dw_conv(y)))
        if self.se is not None:
            y = self.se(y)
        expansion = y
        y = self.bn2(self.project_conv(y))
        if self.residual:
            y = drop_connect(y, self.survival_prob, self.training) + x
        return y, [expansion]
