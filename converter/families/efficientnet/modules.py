"""The PyTorch modules of EfficientNet's own block kinds: fused (EdgeTPU) and CondConv, in eval mode.

Mirrors tensorflow/tpu models/official/efficientnet/efficientnet_model.py
(MBConvBlockWithoutDepthwise, MBConvBlock with condconv) and condconv/condconv_layers.py; the
``mbconv`` kind's module is converter.blocks.MBConv.
"""
from __future__ import annotations

from typing import List, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ...arch import Block
from ...blocks import MBConv, SqueezeExcite, drop_connect, make_activation
from ...layers import BatchNorm2dTF, Conv2dSame


class FusedMBConv(nn.Module):
    """A fused MBConv block in eval mode: a regular kxk expand conv -> BN -> act -> [SE] -> the 1x1
    project conv -> BN, no depthwise conv.

    efficientnet_model.MBConvBlockWithoutDepthwise (EdgeTPU ``c1`` blocks, kind ``fused``; no SE):
    the block's stride on the expand conv (``b.fused_stride == "expand"``: tensorflow/tpu since
    32572cb, 2020-12-27, and at HEAD 7dc921f) or on the project conv (``"project"``: the 2019
    code, 631fb4c); without expansion only the project conv (strided under "project").
    EfficientNetV2's FusedMBConvBlock is this block with ``KXK_ALONE`` (its package's subclass).
    """

    BN_FUSION = (("expand_conv", "bn0"), ("project_conv", "bn1"))
    ENDPOINTS = ("expansion_output",)  # the block's own endpoints (forward_with_endpoints)
    # without expansion: False, the 1x1 project conv alone (EdgeTPU); True, [SE] -> one kxk conv
    # carrying the stride -> BN -> act (effnetv2_model.FusedMBConvBlock: "add act if no expansion")
    KXK_ALONE = False

    def __init__(self, b: Block, eps: float, act: str):
        super().__init__()
        self.residual = b.residual
        self.survival_prob = 1.0  # drop-connect in training (converter/training.py); 1: none
        self.kxk_alone = self.KXK_ALONE
        self.has_expand = b.has_expand
        self.fused_stride = b.fused_stride
        if b.has_expand:
            self.expand_conv = Conv2dSame(b.in_channels, b.mid_channels, b.kernel_size, b.expand_stride)
            self.bn0 = BatchNorm2dTF(b.mid_channels, eps)
            self.project_conv = Conv2dSame(b.mid_channels, b.out_channels, 1, b.project_stride)
        elif self.kxk_alone:
            self.project_conv = Conv2dSame(b.in_channels, b.out_channels, b.kernel_size, b.stride)
        else:
            self.project_conv = Conv2dSame(b.mid_channels, b.out_channels, 1, b.stride)
        self.se = SqueezeExcite(b.mid_channels, b.se_channels, act) if b.se_channels else None
        self.bn1 = BatchNorm2dTF(b.out_channels, eps)
        self.act = make_activation(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with_endpoints(x)[0]

    @staticmethod
    def endpoint_dims(b: Block) -> List[Tuple[int, int]]:
        """(channels, stride from the block's input) of each of ENDPOINTS: the expand conv's output
        (strided where it carries the stride), else the block input."""
        return [(b.mid_channels, b.expand_stride)] if b.has_expand else [(b.in_channels, 1)]

    def forward_with_endpoints(self, x: torch.Tensor) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        """(output, [expansion_output]): MBConvBlockWithoutDepthwise.call (tensorflow/tpu 7dc921f) and
        effnetv2_model.FusedMBConvBlock.call (google/automl 6a54c87) take ``expansion_output`` after
        the expand conv's act, before the SE (the block input without expansion)."""
        # hasattr, not a bool attribute: TorchScript folds hasattr on a module at compile time and
        # compiles only the branch that exists (a bool attribute would compile both: no bn0)
        y = x
        if hasattr(self, "expand_conv"):
            y = self.act(self.bn0(self.expand_conv(y)))
        expansion = y
        if self.se is not None:
            y = self.se(y)
        y = self.bn1(self.project_conv(y))
        if not hasattr(self, "expand_conv") and self.kxk_alone:
            y = self.act(y)
        if self.residual:
            y = drop_connect(y, self.survival_prob, self.training) + x
        return y, [expansion]


class CondConv2dSame(Conv2dSame):
    """condconv_layers.CondConv2D / DepthwiseCondConv2D with TF 'SAME' padding.

    ``weight`` is the official ``[experts, kh*kw*(in/groups)*out]`` kernel, flattened in TF order
    (kh, kw, in, out), kept as is. Per example: kernel = routing_weights @ weight, reshaped;
    the whole batch runs as one grouped convolution (one group per example), which computes
    exactly what a loop over examples computes. ``groups == in == out``: the depthwise form.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, experts: int,
                 stride: int = 1, groups: int = 1):
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, groups=groups)
        kh, kw = self.kernel_size
        self.experts = experts
        self.weight = nn.Parameter(torch.empty(experts, kh * kw * (in_channels // groups) * out_channels))
        nn.init.normal_(self.weight, std=0.02)

    def forward(self, x: torch.Tensor, routing: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        if x.shape[-2] == self.static_hw[0] and x.shape[-1] == self.static_hw[1]:
            padding, extra, has_extra = self.static_padding, self.static_extra, self.static_has_extra
        else:
            padding, extra = self.same_pads(x.shape[-2], x.shape[-1])
            has_extra = any(v != 0 for v in extra)
        if has_extra:
            x = F.pad(x, extra)
        n, c, h, w = x.shape
        kh, kw = self.kernel_size
        cin_g, cout = self.in_channels // self.groups, self.out_channels
        kernels = torch.matmul(routing, self.weight)  # [N, kh*kw*cin_g*cout], TF order
        kernels = kernels.reshape(n, kh, kw, cin_g, cout).permute(0, 4, 3, 1, 2)
        kernels = kernels.reshape(n * cout, cin_g, kh, kw)
        y = F.conv2d(x.reshape(1, n * c, h, w), kernels, None, self.stride, padding, self.dilation,
                     self.groups * n)
        return y.reshape(n, cout, y.shape[-2], y.shape[-1])


class CondConvMBConv(nn.Module):
    """efficientnet_model.MBConvBlock with ``condconv`` (CondConv ``cc`` blocks) in eval mode.

    Routing (shared by the block's conditional convs): global average pool of the block input
    -> dense (with bias) -> sigmoid, one weight per expert and example. Expand, depthwise and
    project convs are conditional; BNs and SE as in MBConv.
    """

    BN_FUSION = ()  # per-example kernels: nothing folded
    ENDPOINTS = ("expansion_output",)  # the block's own endpoints (forward_with_endpoints)

    def __init__(self, b: Block, eps: float, act: str):
        super().__init__()
        self.residual = b.residual
        self.survival_prob = 1.0  # drop-connect in training (converter/training.py); 1: none
        self.routing = nn.Linear(b.in_channels, b.experts)
        if b.has_expand:
            self.expand_conv = CondConv2dSame(b.in_channels, b.mid_channels, 1, b.experts)
            self.bn0 = BatchNorm2dTF(b.mid_channels, eps)
        self.dw_conv = CondConv2dSame(b.mid_channels, b.mid_channels, b.kernel_size, b.experts,
                                      b.stride, groups=b.mid_channels)
        self.bn1 = BatchNorm2dTF(b.mid_channels, eps)
        self.se = SqueezeExcite(b.mid_channels, b.se_channels, act) if b.se_channels else None
        self.project_conv = CondConv2dSame(b.mid_channels, b.out_channels, 1, b.experts)
        self.bn2 = BatchNorm2dTF(b.out_channels, eps)
        self.act = make_activation(act)

    def routing_weights(self, x: torch.Tensor) -> torch.Tensor:
        """[N, experts]: sigmoid(dense(mean over H, W of the block input))."""
        return torch.sigmoid(self.routing(x.mean((2, 3))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with_endpoints(x)[0]

    endpoint_dims = staticmethod(MBConv.endpoint_dims)

    def forward_with_endpoints(self, x: torch.Tensor) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        """(output, [expansion_output]): as MBConv's, the tensor the project conv takes (after SE)."""
        r = self.routing_weights(x)
        y = x
        if hasattr(self, "expand_conv"):
            y = self.act(self.bn0(self.expand_conv(y, r)))
        y = self.act(self.bn1(self.dw_conv(y, r)))
        if self.se is not None:
            y = self.se(y)
        expansion = y
        y = self.bn2(self.project_conv(y, r))
        if self.residual:
            y = drop_connect(y, self.survival_prob, self.training) + x
        return y, [expansion]
