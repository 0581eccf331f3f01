"""The PyTorch EfficientNet that computes what the official TensorFlow graph computes.

Mirrors tensorflow/tpu models/official/efficientnet/efficientnet_model.py in eval mode:
TensorFlow 'SAME' padding computed from the actual input size (any size, odd ones included),
batch norm with epsilon 1e-3, swish, squeeze-excitation on the expanded channels.
"""
from __future__ import annotations

from typing import Dict, Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from .arch import BN_MOMENTUM_TF, ArchSpec, Block, get_arch, same_padding


class BatchNorm2dTF(nn.BatchNorm2d):
    """BatchNorm with TensorFlow's defaults (eps 1e-3) and no ``num_batches_tracked`` buffer.

    TensorFlow checkpoints have no counter to fill it with, so the state_dict holds exactly
    the four tensors of tf.layers.BatchNormalization.
    """

    def __init__(self, num_features: int, eps: float):
        super().__init__(num_features, eps=eps, momentum=1.0 - BN_MOMENTUM_TF)
        self.register_buffer("num_batches_tracked", None)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # _NormBase would insert a num_batches_tracked entry for old-format state_dicts;
        # this module has no such buffer, so load the four tensors only.
        nn.Module._load_from_state_dict(self, state_dict, prefix, *args, **kwargs)


class Conv2dSame(nn.Conv2d):
    """nn.Conv2d with TensorFlow 'SAME' padding for whatever input size arrives.

    Where the padding is symmetric it goes into the convolution itself; otherwise the extra
    pixel goes bottom/right through one F.pad, exactly as tf.nn.conv2d pads.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 groups: int = 1, bias: bool = False):
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=0,
                         groups=groups, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kh, kw = self.kernel_size
        sh, sw = self.stride
        top, bottom = same_padding(x.shape[-2], kh, sh)
        left, right = same_padding(x.shape[-1], kw, sw)
        if top == bottom and left == right:
            return F.conv2d(x, self.weight, self.bias, self.stride, (top, left), 1, self.groups)
        x = F.pad(x, (left, right, top, bottom))
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, 1, self.groups)


def make_activation(name: str) -> nn.Module:
    """The activation of an architecture: 'swish' (tf.nn.swish == SiLU), 'relu', 'relu6'."""
    table = {"swish": nn.SiLU, "relu": nn.ReLU, "relu6": nn.ReLU6}
    return table[name]()


class ConvBNAct(nn.Module):
    """Conv (SAME) -> BN -> activation: the stem and the head conv."""

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

    def __init__(self, b: Block, eps: float, act: str):
        super().__init__()
        self.residual = b.residual
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
        y = x
        if hasattr(self, "expand_conv"):
            y = self.act(self.bn0(self.expand_conv(y)))
        y = self.act(self.bn1(self.dw_conv(y)))
        if self.se is not None:
            y = self.se(y)
        y = self.bn2(self.project_conv(y))
        if self.residual:
            y = y + x
        return y


class EfficientNet(nn.Module):
    """EfficientNet built from an ArchSpec; state_dict keys follow mappings/efficientnet.py."""

    def __init__(self, spec: ArchSpec):
        super().__init__()
        self.spec = spec
        act, eps = spec.activation, spec.bn_eps
        blocks = spec.blocks()
        self.stem = ConvBNAct(3, spec.stem_channels, 3, 2, eps, act)
        self.blocks = nn.Sequential(*[MBConv(b, eps, act) for b in blocks])
        self.head = ConvBNAct(blocks[-1].out_channels, spec.head_channels, 1, 1, eps, act)
        self.dropout = nn.Dropout(spec.dropout)
        self.classifier = nn.Linear(spec.head_channels, spec.num_classes)
        self.pretrained_cfg: Dict[str, object] = {}

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.forward_features(x).mean((2, 3))
        return self.classifier(self.dropout(x))


def build_model(variant: Union[str, ArchSpec], num_classes: Optional[int] = 1000) -> EfficientNet:
    """An EfficientNet for ``variant`` (``b0``..``b8``, ``l2``, ``l2-475``) with random weights."""
    spec = variant if isinstance(variant, ArchSpec) else get_arch(variant)
    if num_classes is not None and num_classes != spec.num_classes:
        spec = spec.with_classes(num_classes)
    return EfficientNet(spec)
