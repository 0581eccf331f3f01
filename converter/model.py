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

from .arch import ArchSpec, Block
from .layers import BatchNorm2dTF, Conv2dSame
from .mnasnet import MixBlock
from .registry import get_arch, kind_of


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

    A regular kxk expand conv -> BN -> act, then the 1x1 project conv -> BN; no depthwise conv,
    no SE. The block's stride is on the expand conv (``b.fused_stride == "expand"``: tensorflow/tpu
    since 32572cb, 2020-12-27, and at HEAD 7dc921f) or on the project conv (``"project"``: the
    2019 code, 631fb4c). Without expansion only the project conv (strided under "project").
    """

    BN_FUSION = (("expand_conv", "bn0"), ("project_conv", "bn1"))

    def __init__(self, b: Block, eps: float, act: str):
        super().__init__()
        self.residual = b.residual
        self.fused_stride = b.fused_stride
        if b.has_expand:
            self.expand_conv = Conv2dSame(b.in_channels, b.mid_channels, b.kernel_size, b.expand_stride)
            self.bn0 = BatchNorm2dTF(b.mid_channels, eps)
        self.project_conv = Conv2dSame(b.mid_channels, b.out_channels, 1,
                                       b.project_stride if b.has_expand else b.stride)
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


class FusedMBConvV2(nn.Module):
    """google/automl efficientnetv2 effnetv2_model.FusedMBConvBlock (block kind ``fused_v2``) in eval mode.

    With expansion: kxk expand conv carrying the block's stride -> BN -> act -> [SE] -> 1x1
    project conv -> BN (no activation). Expand ratio 1: [SE] -> one kxk conv carrying the
    stride -> BN -> act ("add act if no expansion"). Residual when stride 1 and in == out.
    """

    BN_FUSION = (("expand_conv", "bn0"), ("project_conv", "bn1"))

    def __init__(self, b: Block, eps: float, act: str):
        super().__init__()
        self.residual = b.residual
        self.has_expand = b.has_expand
        if b.has_expand:
            self.expand_conv = Conv2dSame(b.in_channels, b.mid_channels, b.kernel_size, b.stride)
            self.bn0 = BatchNorm2dTF(b.mid_channels, eps)
        self.se = SqueezeExcite(b.mid_channels, b.se_channels, act) if b.se_channels else None
        if b.has_expand:
            self.project_conv = Conv2dSame(b.mid_channels, b.out_channels, 1, 1)
        else:
            self.project_conv = Conv2dSame(b.in_channels, b.out_channels, b.kernel_size, b.stride)
        self.bn1 = BatchNorm2dTF(b.out_channels, eps)
        self.act = make_activation(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # hasattr, not self.has_expand: TorchScript folds hasattr on a module at compile time and
        # compiles only the branch that exists (a bool attribute would compile both: no bn0)
        y = x
        if hasattr(self, "expand_conv"):
            y = self.act(self.bn0(self.expand_conv(y)))
        if self.se is not None:
            y = self.se(y)
        y = self.bn1(self.project_conv(y))
        if not hasattr(self, "expand_conv"):
            y = self.act(y)
        if self.residual:
            y = y + x
        return y


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
        if b.has_expand:
            self.expand_conv = GroupedConv2dSame(s["expand_in"], s["expand_out"], (1,) * b.expand_groups)
            self.bn0 = BatchNorm2dTF(b.mid_channels, eps)
        self.dw_conv = GroupedConv2dSame(s["dw"], s["dw"], b.dw_kernels, b.stride, depthwise=True)
        self.bn1 = BatchNorm2dTF(b.mid_channels, eps)
        self.se = SqueezeExcite(b.mid_channels, b.se_channels, b.activation) if b.se_channels else None
        self.project_conv = GroupedConv2dSame(s["project_in"], s["project_out"], (1,) * b.project_groups)
        self.bn2 = BatchNorm2dTF(b.out_channels, eps)
        self.act = make_activation(b.activation)


def make_block(b: Block, eps: float, act: str) -> nn.Module:
    """The module of one block, by its kind (converter.registry.kind_of: its family declares it)."""
    return kind_of(b).module()(b, eps, act)


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
        if not torch.jit.is_scripting() and not isinstance(x, torch.Tensor):
            x = self._as_input(x)  # e.g. the numpy batch of converter.preprocess.preprocess_batch
        x = self.forward_features(x).mean((2, 3))
        return self.classifier(self.dropout(x))

    @torch.jit.unused
    def _as_input(self, x) -> torch.Tensor:
        """An NCHW array (numpy, or anything torch.as_tensor takes) on the model's device, in its dtype."""
        w = self.classifier.weight
        return torch.as_tensor(x, dtype=w.dtype, device=w.device)


def build_model(variant: Union[str, ArchSpec], num_classes: Optional[int] = None) -> EfficientNet:
    """An EfficientNet for ``variant`` (``b0``..``b8``, ``l2`` and its 475 px release, ``lite0``..``lite4``,
    ``edgetpu-s/m/l``, ``condconv-b0-4e``...) with random weights.

    ``num_classes``: default the architecture's own (1000; 1001 for EdgeTPU).
    """
    spec = variant if isinstance(variant, ArchSpec) else get_arch(variant)
    if num_classes is not None and num_classes != spec.num_classes:
        spec = spec.with_classes(num_classes)
    return EfficientNet(spec)
