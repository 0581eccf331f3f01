"""Architectures as data: the efficientnet_builder data model every family builds on.

``ArchSpec`` (efficientnet_builder.GlobalParams + the block strings; its ``blocks()`` is
efficientnet_model.Model._build's, other families override it), ``Block`` (one built block, its
``kind`` naming what computes, maps and costs it: converter.family.Kind), the block-string
tokenizer, TF 'SAME' padding and the cost of a model given its blocks' costs. Mirrors
tensorflow/tpu models/official/efficientnet (efficientnet_builder.py, efficientnet_model.py).
The families' own architectures live in their packages (converter/families/*/arch.py); nothing
here imports torch or TensorFlow.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace
from typing import Callable, Dict, List, Optional, Tuple

from .errors import ConversionError

BN_EPS_TF = 1e-3  # tensorflow/tpu efficientnet_builder: batch_norm_epsilon=1e-3
BN_MOMENTUM_TF = 0.99  # tensorflow/tpu efficientnet_builder: batch_norm_momentum=0.99
DEPTH_DIVISOR = 8  # tensorflow/tpu efficientnet_builder: depth_divisor=8

# Which conv of a fused block (efficientnet_model.MBConvBlockWithoutDepthwise, EdgeTPU ``c1``)
# carries the block's stride. tensorflow/tpu 631fb4c (2019-07-19, the EdgeTPU release): the 1x1
# project conv ("project"); since 32572cb (2020-12-27, "Fix issue #660") and still at HEAD
# 7dc921f: the kxk expand conv ("expand", the default, as timm's and mmpretrain's EdgeResidual).
FUSED_STRIDE_EXPAND = "expand"
FUSED_STRIDE_PROJECT = "project"
FUSED_STRIDES = (FUSED_STRIDE_EXPAND, FUSED_STRIDE_PROJECT)
FUSED_STRIDE_DEFAULT = FUSED_STRIDE_EXPAND

# The block kinds ArchSpec.blocks builds (Block.kind); converter/families/efficientnet/ declares
# them with all their parts (cost, module, table rows, TF reference)
KIND_MBCONV = "mbconv"  # efficientnet_model.MBConvBlock
KIND_FUSED = "fused"  # efficientnet_model.MBConvBlockWithoutDepthwise (EdgeTPU ``c1``)
KIND_CONDCONV = "condconv"  # efficientnet_model.MBConvBlock with condconv (``cc``)

# tensorflow/tpu efficientnet_builder.efficientnet(): _DEFAULT_BLOCKS_ARGS
BASE_BLOCKS = (
    "r1_k3_s11_e1_i32_o16_se0.25",
    "r2_k3_s22_e6_i16_o24_se0.25",
    "r2_k5_s22_e6_i24_o40_se0.25",
    "r3_k3_s22_e6_i40_o80_se0.25",
    "r3_k5_s11_e6_i80_o112_se0.25",
    "r4_k5_s22_e6_i112_o192_se0.25",
    "r1_k3_s11_e6_i192_o320_se0.25",
)
STEM_FILTERS = 32  # efficientnet_model.Model._build: round_filters(32, ...)
HEAD_FILTERS = 1280  # efficientnet_model.Model._build: round_filters(1280, ...)


_BLOCK_TOKEN = re.compile(r"^([a-z]+)(\d.*)$")
REQUIRED_OPTIONS = ("r", "k", "s", "e", "i", "o")  # every family's decoder: repeats, kernel, strides, expand, in, out


def split_block_code(code: str, options_known, flags_known=(), required=REQUIRED_OPTIONS,
                     what: str = "block string") -> Tuple[Dict[str, str], set]:
    """The options (``k3`` -> ``{"k": "3"}``) and flags (``noskip``) of an official block string.

    The one tokenizer of every family's BlockDecoder (tensorflow/tpu efficientnet_builder,
    mnasnet_models, mixnet_builder; google/automl effnetv2_model): unknown or missing options
    are one ConversionError.
    """
    options: Dict[str, str] = {}
    flags = set()
    for op in code.split("_"):
        m = _BLOCK_TOKEN.match(op)
        if m:
            options[m.group(1)] = m.group(2)
        elif op:
            flags.add(op)
    unknown = sorted((set(options) - set(options_known)) | (flags - set(flags_known)))
    if unknown:
        raise ConversionError(f"{what} {code!r}: unknown option(s) {unknown}")
    missing = [k for k in required if k not in options]
    if missing:
        raise ConversionError(f"{what} {code!r}: missing option(s) {missing}")
    return options, flags


@dataclass(frozen=True)
class BlockArgs:
    """One official block string, decoded (efficientnet_builder.BlockDecoder)."""

    num_repeat: int
    kernel_size: int
    strides: Tuple[int, int]
    expand_ratio: int
    input_filters: int
    output_filters: int
    se_ratio: Optional[float] = None
    id_skip: bool = True
    conv_type: int = 0
    fused_conv: int = 0
    super_pixel: int = 0
    condconv: bool = False

    @classmethod
    def decode(cls, code: str) -> "BlockArgs":
        """Decode an official block string such as ``r2_k3_s22_e6_i16_o24_se0.25``."""
        options, flags = split_block_code(code, ("r", "k", "s", "e", "i", "o", "se", "c", "f", "p"), ("noskip", "cc"))
        if len(options["s"]) != 2:
            raise ConversionError(f"block string {code!r}: strides must be a pair of digits")
        return cls(
            num_repeat=int(options["r"]),
            kernel_size=int(options["k"]),
            strides=(int(options["s"][0]), int(options["s"][1])),
            expand_ratio=int(options["e"]),
            input_filters=int(options["i"]),
            output_filters=int(options["o"]),
            se_ratio=float(options["se"]) if "se" in options else None,
            id_skip="noskip" not in flags,
            conv_type=int(options.get("c", 0)),
            fused_conv=int(options.get("f", 0)),
            super_pixel=int(options.get("p", 0)),
            condconv="cc" in flags,
        )

    def encode(self) -> str:
        """Encode back to the official string (the short form, defaults left out)."""
        parts = [
            f"r{self.num_repeat}",
            f"k{self.kernel_size}",
            f"s{self.strides[0]}{self.strides[1]}",
            f"e{self.expand_ratio}",
            f"i{self.input_filters}",
            f"o{self.output_filters}",
        ]
        if self.conv_type:
            parts.append(f"c{self.conv_type}")
        if self.fused_conv:
            parts.append(f"f{self.fused_conv}")
        if self.super_pixel:
            parts.append(f"p{self.super_pixel}")
        if self.se_ratio is not None:
            parts.append(f"se{self.se_ratio:g}")
        if not self.id_skip:
            parts.append("noskip")
        if self.condconv:
            parts.append("cc")
        return "_".join(parts)


@dataclass(frozen=True)
class Block:
    """One block of a built model, channels and repeats already scaled."""

    index: int  # global index: TF scope blocks_{index}
    stage: int  # which of the block strings it came from
    index_in_stage: int
    kernel_size: int
    stride: int
    expand_ratio: int
    in_channels: int
    mid_channels: int  # after the expand conv (== in_channels when there is none)
    out_channels: int
    se_channels: int  # 0: no squeeze-excitation
    residual: bool
    # condconv_layers: number of experts of the block's conditional convs (``cc``), 0: none
    experts: int = 0
    # fused blocks (kind ``fused``, efficientnet_model.MBConvBlockWithoutDepthwise, block string
    # ``c1``: a regular kxk expand conv, no depthwise conv, no SE, then the 1x1 project conv):
    # which of the two carries the stride (FUSED_STRIDES)
    fused_stride: str = FUSED_STRIDE_DEFAULT
    # the block's kind (converter.family.Kind, declared by its family): what computes it, maps it
    # and costs it in every layer
    kind: str = KIND_MBCONV

    @property
    def has_expand(self) -> bool:
        return self.expand_ratio != 1

    @property
    def expand_stride(self) -> int:
        """Stride of a fused block's kxk expand conv."""
        return self.stride if self.fused_stride == FUSED_STRIDE_EXPAND else 1

    @property
    def project_stride(self) -> int:
        """Stride of a fused block's 1x1 project conv."""
        return self.stride if self.fused_stride == FUSED_STRIDE_PROJECT else 1


@dataclass(frozen=True)
class ArchSpec:
    """One architecture: efficientnet_builder.efficientnet_params plus the block list."""

    name: str  # variant name: the registry's ("b0") or a checkpoint's release at another resolution (RELEASES)
    width: float
    depth: float
    resolution: int
    dropout: float
    scope: str  # TensorFlow variable scope, e.g. "efficientnet-b0"
    block_strings: Tuple[str, ...] = BASE_BLOCKS
    stem_filters: int = STEM_FILTERS
    head_filters: int = HEAD_FILTERS
    activation: str = "swish"
    bn_eps: float = BN_EPS_TF
    num_classes: int = 1000
    use_se: bool = True  # GlobalParams.use_se (False: Lite, EdgeTPU)
    fix_head_stem: bool = False  # GlobalParams.fix_head_stem (Lite): stem/head and first/last repeats unscaled
    local_pooling: bool = False  # GlobalParams.local_pooling (Lite, EdgeTPU): head pooled by avg_pool
    condconv_experts: int = 0  # GlobalParams.condconv_num_experts (CondConv)
    family: str = "efficientnet"  # efficientnet, lite, edgetpu, condconv
    fused_stride: str = FUSED_STRIDE_DEFAULT  # fused blocks: the conv carrying the stride (FUSED_STRIDES)
    # a release at another resolution (``at_resolution`` under its own name): its architecture's name
    base: str = field(default="", compare=False)

    @property
    def arch_name(self) -> str:
        """The architecture's registry name (``l2`` for the L2 released at 475 px; else ``name``)."""
        return self.base or self.name

    def at_resolution(self, resolution: int, name: Optional[str] = None) -> "ArchSpec":
        """This architecture evaluated at ``resolution``: under ``name`` (a release of its own,
        ``l2-475``, ``mnasnet-a1_d1.0_i192``) or under its own name (V2's 21k checkpoints at 224)."""
        if name is None or name == self.name:
            return replace(self, resolution=int(resolution))
        return replace(self, resolution=int(resolution), name=name, base=self.arch_name)

    def round_filters(self, filters: int) -> int:
        """efficientnet_builder.round_filters (min_depth None, depth_divisor 8)."""
        multiplier = self.width
        if not multiplier:
            return filters
        filters *= multiplier
        new_filters = max(DEPTH_DIVISOR, int(filters + DEPTH_DIVISOR / 2) // DEPTH_DIVISOR * DEPTH_DIVISOR)
        if new_filters < 0.9 * filters:  # never round down by more than 10%
            new_filters += DEPTH_DIVISOR
        return int(new_filters)

    def round_repeats(self, repeats: int) -> int:
        """efficientnet_builder.round_repeats."""
        if not self.depth:
            return repeats
        return int(math.ceil(self.depth * repeats))

    @property
    def stem_channels(self) -> int:
        # efficientnet_model.Model._build: round_filters(32, gp, self._fix_head_stem)
        return self.stem_filters if self.fix_head_stem else self.round_filters(self.stem_filters)

    @property
    def head_channels(self) -> int:
        return self.head_filters if self.fix_head_stem else self.round_filters(self.head_filters)

    def blocks(self) -> List[Block]:
        """Expand the block strings as efficientnet_model.Model._build does.

        ``in_channels`` is what actually arrives (the stem or the previous block), while the
        expanded width, SE width and residual test use the block string's (rounded) input
        filters, as the official blocks do: they differ for EdgeTPU's first block (stem 32,
        ``i24``) and Lite's (fixed stem 32, ``i32`` scaled by width). Without an expand conv
        the depthwise conv runs on the actual input channels.
        """
        out: List[Block] = []
        prev = self.stem_channels
        n_stages = len(self.block_strings)
        for stage, code in enumerate(self.block_strings):
            args = BlockArgs.decode(code)
            if args.super_pixel or args.fused_conv:
                raise ConversionError(
                    f"block string {code!r}: super-pixel / fused_conv blocks are not supported")
            if args.conv_type not in (0, 1):
                raise ConversionError(f"block string {code!r}: unknown conv type c{args.conv_type}")
            in_ch = self.round_filters(args.input_filters)
            out_ch = self.round_filters(args.output_filters)
            if self.fix_head_stem and stage in (0, n_stages - 1):
                repeats = args.num_repeat  # efficientnet_model.Model._build with fix_head_stem
            else:
                repeats = self.round_repeats(args.num_repeat)
            fused = args.conv_type == 1
            experts = self.condconv_experts if args.condconv else 0
            if args.condconv and not experts:
                raise ConversionError(f"block string {code!r}: CondConv block but the model has no experts")
            if fused and args.condconv:
                raise ConversionError(f"block string {code!r}: fused CondConv blocks are not supported")
            if self.fused_stride not in FUSED_STRIDES:
                raise ConversionError(f"unknown fused-block stride placement {self.fused_stride!r}; "
                                      f"use {' or '.join(FUSED_STRIDES)}")
            if (fused and args.expand_ratio == 1 and args.strides[0] > 1
                    and self.fused_stride == FUSED_STRIDE_EXPAND):
                # MBConvBlockWithoutDepthwise since 32572cb: only the expand conv strides
                raise ConversionError(f"block string {code!r}: a strided fused block without expand conv "
                                      "has no strided conv in the official code; not supported")
            for j in range(repeats):
                stride = args.strides[0] if j == 0 else 1
                args_in = in_ch if j == 0 else out_ch
                mid = args_in * args.expand_ratio if args.expand_ratio != 1 else prev
                has_se = (self.use_se and not fused and args.se_ratio is not None
                          and 0 < args.se_ratio <= 1)
                se = max(1, int(args_in * args.se_ratio)) if has_se else 0
                out.append(
                    Block(
                        index=len(out),
                        stage=stage,
                        index_in_stage=j,
                        kernel_size=args.kernel_size,
                        stride=stride,
                        expand_ratio=args.expand_ratio,
                        in_channels=prev,
                        mid_channels=mid,
                        out_channels=out_ch,
                        se_channels=se,
                        residual=args.id_skip and stride == 1 and args_in == out_ch,
                        experts=experts,
                        fused_stride=self.fused_stride,
                        kind=KIND_FUSED if fused else KIND_CONDCONV if experts else KIND_MBCONV,
                    )
                )
                prev = out_ch
        return out

    def with_classes(self, num_classes: int) -> "ArchSpec":
        return replace(self, num_classes=num_classes)

    @property
    def official_override_params(self) -> Dict[str, object]:
        """What the official builder takes beside ``model_name`` (its scope) to build this model: its
        ``override_params`` (efficientnet_builder.build_model and the other families' builders)."""
        return {"num_classes": int(self.num_classes)}

    @property
    def has_strided_fused(self) -> bool:
        """Whether some fused block strides (where ``fused_stride`` changes the computation)."""
        return any(b.kind == KIND_FUSED and b.stride > 1 for b in self.blocks())

    def with_fused_stride(self, placement: Optional[str]) -> "ArchSpec":
        """This architecture with its fused blocks strided on ``placement`` (None: the default)."""
        placement = FUSED_STRIDE_DEFAULT if placement is None else str(placement).strip().lower()
        if placement not in FUSED_STRIDES:
            raise ConversionError(f"unknown fused-block stride placement {placement!r}; "
                                  f"use {' or '.join(FUSED_STRIDES)}")
        return self if placement == self.fused_stride else replace(self, fused_stride=placement)


def down(size: int, stride: int) -> int:
    """Output size of a TF 'SAME' conv: ceil(size / stride)."""
    return -(-size // stride)


def mbconv_params(b: Block) -> int:
    """Parameters of an MBConv block (CondConv kernels once per expert)."""
    e = b.experts or 1
    n = 0
    if b.has_expand:
        n += e * b.in_channels * b.mid_channels + 2 * b.mid_channels
    n += e * b.kernel_size ** 2 * b.mid_channels + 2 * b.mid_channels
    if b.se_channels:
        n += b.mid_channels * b.se_channels + b.se_channels
        n += b.se_channels * b.mid_channels + b.mid_channels
    return n + e * b.mid_channels * b.out_channels + 2 * b.out_channels


def mbconv_macs(b: Block, size: int) -> Tuple[int, int]:
    """(multiply-adds, output size) of an MBConv block for a square input of ``size``."""
    macs = size * size * b.in_channels * b.mid_channels if b.has_expand else 0
    size = down(size, b.stride)
    macs += size * size * b.kernel_size ** 2 * b.mid_channels
    if b.se_channels:
        macs += 2 * b.mid_channels * b.se_channels
    return macs + size * size * b.mid_channels * b.out_channels, size


def params_with(spec: ArchSpec, block_params: Callable[[Block], int]) -> int:
    """Parameters of the inference model (BN moving statistics not counted): stem, every block by
    ``block_params`` (its kind's cost), head, classifier (converter.registry.count_params)."""
    n = 3 * 3 * 3 * spec.stem_channels + 2 * spec.stem_channels
    blocks = spec.blocks()
    n += sum(block_params(b) for b in blocks)
    n += blocks[-1].out_channels * spec.head_channels + 2 * spec.head_channels
    return n + spec.head_channels * spec.num_classes + spec.num_classes


def macs_with(spec: ArchSpec, block_macs: Callable[[Block, int], Tuple[int, int]],
              resolution: Optional[int] = None) -> int:
    """Multiply-adds of one forward pass, every block by ``block_macs`` (converter.registry.count_macs)."""
    size = down(resolution or spec.resolution, 2)
    macs = size * size * 3 * 3 * 3 * spec.stem_channels
    blocks = spec.blocks()
    for b in blocks:
        cost, size = block_macs(b, size)
        macs += cost
    macs += size * size * blocks[-1].out_channels * spec.head_channels
    return macs + spec.head_channels * spec.num_classes


def same_padding(size: int, kernel: int, stride: int) -> Tuple[int, int]:
    """TensorFlow 'SAME' padding (before, after) along one axis for an input of ``size``.

    out = ceil(size / stride); total = max((out - 1) * stride + kernel - size, 0);
    the odd pixel goes after (bottom/right), as tf.nn.conv2d does.
    """
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def fused_stride_exact(spec: ArchSpec, size: int, placement: str = FUSED_STRIDE_EXPAND) -> bool:
    """Whether fused blocks strided on ``placement`` compute what ``spec``'s (``spec.fused_stride``) do at input ``size``.

    The same placement: at every size. Otherwise (the stride on the kxk expand conv vs on the
    1x1 project conv), with TF 'SAME' padding a stride-2 kxk conv over an odd input centres its
    outputs on the even pixels, as a stride-1 kxk conv + stride-2 1x1 conv does; over an even
    input the kxk conv is padded only at the end and centres them on the odd pixels instead.
    """
    if placement == spec.fused_stride:
        return True
    size_here = -(-size // 2)  # after the stem's stride-2 conv
    for b in spec.blocks():
        if b.kind == KIND_FUSED and b.stride > 1 and size_here % 2 == 0:
            return False
        size_here = -(-size_here // b.stride)
    return True
