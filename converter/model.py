"""The PyTorch EfficientNet that computes what the official TensorFlow graph computes.

Mirrors tensorflow/tpu models/official/efficientnet/efficientnet_model.py in eval mode:
TensorFlow 'SAME' padding computed from the actual input size (any size, odd ones included),
batch norm with epsilon 1e-3, swish, squeeze-excitation on the expanded channels.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple, Union

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

    The symmetric part of the padding goes into the convolution itself; the extra pixel
    (bottom/right, as tf.nn.conv2d pads) goes through one F.pad.

    Static padding: :meth:`set_input_size` computes both parts once for a known input size;
    an input of that size then takes them as constants (no shape arithmetic per call, nothing
    computed at run time in an exported graph); any other size takes the dynamic path, which
    splits the padding the same way, so both give identical numbers.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 groups: int = 1, bias: bool = False):
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=0,
                         groups=groups, bias=bias)
        # plain attributes (not buffers): the state_dict keys stay those of the mapping tables
        self.static_hw: Tuple[int, int] = (-1, -1)  # the frozen input size; (-1, -1): none
        self.static_padding: List[int] = [0, 0]  # symmetric part (rows, cols), into the conv
        self.static_extra: List[int] = [0, 0, 0, 0]  # the rest (left, right, top, bottom), one F.pad
        self.static_has_extra: bool = False

    def same_pads(self, h: int, w: int) -> Tuple[List[int], List[int]]:
        """TF 'SAME' padding for an ``h`` x ``w`` input: ([rows, cols] into the conv, [l, r, t, b] by F.pad)."""
        top, bottom = same_padding(h, self.kernel_size[0], self.stride[0])
        left, right = same_padding(w, self.kernel_size[1], self.stride[1])
        ph, pw = min(top, bottom), min(left, right)
        return [ph, pw], [left - pw, right - pw, top - ph, bottom - ph]

    def set_input_size(self, h: int, w: int) -> Tuple[int, int]:
        """Freeze the padding for an ``h`` x ``w`` input (-1, -1: none); returns the output size."""
        if h < 0 or w < 0:
            self.static_hw, self.static_padding = (-1, -1), [0, 0]
            self.static_extra, self.static_has_extra = [0, 0, 0, 0], False
            return (-1, -1)
        padding, extra = self.same_pads(h, w)
        self.static_hw, self.static_padding, self.static_extra = (int(h), int(w)), padding, extra
        self.static_has_extra = any(v != 0 for v in extra)
        return (-(-h // self.stride[0]), -(-w // self.stride[1]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2] == self.static_hw[0] and x.shape[-1] == self.static_hw[1]:
            padding, extra, has_extra = self.static_padding, self.static_extra, self.static_has_extra
        else:
            padding, extra = self.same_pads(x.shape[-2], x.shape[-1])
            has_extra = extra[0] != 0 or extra[1] != 0 or extra[2] != 0 or extra[3] != 0
        if has_extra:
            x = F.pad(x, extra)
        return F.conv2d(x, self.weight, self.bias, self.stride, padding, self.dilation, self.groups)


def make_activation(name: str) -> nn.Module:
    """The activation of an architecture: 'swish' (tf.nn.swish == SiLU), 'relu', 'relu6'."""
    table = {"swish": nn.SiLU, "relu": nn.ReLU, "relu6": nn.ReLU6}
    return table[name]()


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


class FusedMBConv(nn.Module):
    """efficientnet_model.MBConvBlockWithoutDepthwise (EdgeTPU ``c1`` blocks) in eval mode.

    A regular kxk expand conv (stride 1) -> BN -> act, then the 1x1 project conv carrying the
    block's stride -> BN; no depthwise conv, no SE. Without expansion only the project conv.
    """

    BN_FUSION = (("expand_conv", "bn0"), ("project_conv", "bn1"))

    def __init__(self, b: Block, eps: float, act: str):
        super().__init__()
        self.residual = b.residual
        if b.has_expand:
            self.expand_conv = Conv2dSame(b.in_channels, b.mid_channels, b.kernel_size, 1)
            self.bn0 = BatchNorm2dTF(b.mid_channels, eps)
        self.project_conv = Conv2dSame(b.mid_channels, b.out_channels, 1, b.stride)
        self.bn1 = BatchNorm2dTF(b.out_channels, eps)
        self.act = make_activation(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        if hasattr(self, "expand_conv"):
            y = self.act(self.bn0(self.expand_conv(y)))
        y = self.bn1(self.project_conv(y))
        if self.residual:
            y = y + x
        return y


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

    def __init__(self, b: Block, eps: float, act: str):
        super().__init__()
        self.residual = b.residual
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
        r = self.routing_weights(x)
        y = x
        if hasattr(self, "expand_conv"):
            y = self.act(self.bn0(self.expand_conv(y, r)))
        y = self.act(self.bn1(self.dw_conv(y, r)))
        if self.se is not None:
            y = self.se(y)
        y = self.bn2(self.project_conv(y, r))
        if self.residual:
            y = y + x
        return y


def make_block(b: Block, eps: float, act: str) -> nn.Module:
    """The module of one block: MBConv, FusedMBConv (EdgeTPU ``c1``) or CondConvMBConv (``cc``)."""
    if b.fused:
        return FusedMBConv(b, eps, act)
    if b.condconv:
        return CondConvMBConv(b, eps, act)
    return MBConv(b, eps, act)


class EfficientNet(nn.Module):
    """EfficientNet built from an ArchSpec; state_dict keys follow mappings/efficientnet.py."""

    def __init__(self, spec: ArchSpec):
        super().__init__()
        self.spec = spec
        act, eps = spec.activation, spec.bn_eps
        blocks = spec.blocks()
        self.stem = ConvBNAct(3, spec.stem_channels, 3, 2, eps, act)
        self.blocks = nn.Sequential(*[make_block(b, eps, act) for b in blocks])
        self.head = ConvBNAct(blocks[-1].out_channels, spec.head_channels, 1, 1, eps, act)
        self.dropout = nn.Dropout(spec.dropout)
        self.classifier = nn.Linear(spec.head_channels, spec.num_classes)
        self.pretrained_cfg: Dict[str, object] = {}
        self.set_input_size(spec.resolution)  # static padding at the native size; others stay dynamic

    def set_input_size(self, h: Optional[int], w: Optional[int] = None) -> "EfficientNet":
        """Freeze every Conv2dSame's padding for ``h`` x ``w`` inputs (``w`` defaults to ``h``).

        Other sizes still work (the dynamic path, identical numbers). ``None`` unfreezes all.
        """
        from .fast import set_input_size

        return set_input_size(self, h, w)

    def fuse_bn(self) -> "EfficientNet":
        """Fold each batch norm into the conv before it (float64, then cast back); returns the model."""
        from .fast import fuse_bn

        return fuse_bn(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.forward_features(x).mean((2, 3))
        return self.classifier(self.dropout(x))


def build_model(variant: Union[str, ArchSpec], num_classes: Optional[int] = None) -> EfficientNet:
    """An EfficientNet for ``variant`` (``b0``..``b8``, ``l2``, ``l2-475``, ``lite0``..``lite4``,
    ``edgetpu-s/m/l``, ``condconv-b0-4e``...) with random weights.

    ``num_classes``: default the architecture's own (1000; 1001 for EdgeTPU).
    """
    spec = variant if isinstance(variant, ArchSpec) else get_arch(variant)
    if num_classes is not None and num_classes != spec.num_classes:
        spec = spec.with_classes(num_classes)
    return EfficientNet(spec)
