"""EfficientNetV2 architectures as data: block strings, scaling, blocks (no torch, no TensorFlow).

Everything here mirrors google/automl ``efficientnetv2/`` at 6a54c87 (2025-03-01):
effnetv2_configs.py (block strings, ``efficientnetv2_params``, BlockDecoder), effnetv2_model.py
(round_filters, round_repeats, MBConvBlock, FusedMBConvBlock, Stem, Head, EffNetV2Model._build)
and hparams.py (``base_config``: feature_size 1280, bn_epsilon 1e-3, depth_divisor 8,
min_depth 8, act_fn silu): the eight architectures (``v2-b0`` .. ``v2-xl``, also found as
``efficientnetv2-s`` ...) and the ``fused_v2`` block kind's data and cost; the family package
(converter/families/efficientnet_v2/) declares them.

Differences from V1 that matter for the weights and the numbers:
- block strings use a one-digit stride (``s2``) and ``c1`` marks a FusedMBConvBlock;
- round_filters has no 10 % round-up rule (``max(min_depth, int(f + 4) // 8 * 8)``);
- the stem has ``round_filters(first block's input filters)`` channels; every block whose stride
  is 1 and input == output filters is residual (stage 0 included: no ``noskip`` in V2);
- FusedMBConvBlock: the stride sits on the kxk expand conv, then a 1x1 project conv without
  activation; with expand ratio 1 one kxk conv carries the stride and is followed by BN *and* the
  activation; SE (none in the released configs) on the expanded channels.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

from ...arch import KIND_MBCONV, ArchSpec, Block, mbconv_macs, mbconv_params, split_block_code
from ...errors import ConversionError

FAMILY = "efficientnetv2"  # ArchSpec.family
FUSED_V2 = "fused_v2"  # block kind: effnetv2_model.FusedMBConvBlock
MBCONV = KIND_MBCONV  # effnetv2_model.MBConvBlock: the V1 MBConv computation and names

FEATURE_SIZE = 1280  # hparams.base_config.model.feature_size
BN_EPS = 1e-3  # hparams.base_config.model.bn_epsilon
DEPTH_DIVISOR = 8  # hparams.base_config.model.depth_divisor
MIN_DEPTH = 8  # hparams.base_config.model.min_depth
ACTIVATION = "swish"  # hparams act_fn='silu' (tf.nn.silu == tf.nn.swish): converter.model's name for it

# effnetv2_configs.py, verbatim
V2_BASE_BLOCK = (  # B0-B3
    "r1_k3_s1_e1_i32_o16_c1",
    "r2_k3_s2_e4_i16_o32_c1",
    "r2_k3_s2_e4_i32_o48_c1",
    "r3_k3_s2_e4_i48_o96_se0.25",
    "r5_k3_s1_e6_i96_o112_se0.25",
    "r8_k3_s2_e6_i112_o192_se0.25",
)
V2_S_BLOCK = (
    "r2_k3_s1_e1_i24_o24_c1",
    "r4_k3_s2_e4_i24_o48_c1",
    "r4_k3_s2_e4_i48_o64_c1",
    "r6_k3_s2_e4_i64_o128_se0.25",
    "r9_k3_s1_e6_i128_o160_se0.25",
    "r15_k3_s2_e6_i160_o256_se0.25",
)
V2_M_BLOCK = (
    "r3_k3_s1_e1_i24_o24_c1",
    "r5_k3_s2_e4_i24_o48_c1",
    "r5_k3_s2_e4_i48_o80_c1",
    "r7_k3_s2_e4_i80_o160_se0.25",
    "r14_k3_s1_e6_i160_o176_se0.25",
    "r18_k3_s2_e6_i176_o304_se0.25",
    "r5_k3_s1_e6_i304_o512_se0.25",
)
V2_L_BLOCK = (
    "r4_k3_s1_e1_i32_o32_c1",
    "r7_k3_s2_e4_i32_o64_c1",
    "r7_k3_s2_e4_i64_o96_c1",
    "r10_k3_s2_e4_i96_o192_se0.25",
    "r19_k3_s1_e6_i192_o224_se0.25",
    "r25_k3_s2_e6_i224_o384_se0.25",
    "r7_k3_s1_e6_i384_o640_se0.25",
)
V2_XL_BLOCK = (
    "r4_k3_s1_e1_i32_o32_c1",
    "r8_k3_s2_e4_i32_o64_c1",
    "r8_k3_s2_e4_i64_o96_c1",
    "r16_k3_s2_e4_i96_o192_se0.25",
    "r24_k3_s1_e6_i192_o256_se0.25",
    "r32_k3_s2_e6_i256_o512_se0.25",
    "r8_k3_s1_e6_i512_o640_se0.25",
)


@dataclass(frozen=True)
class BlockArgsV2:
    """One V2 block string, decoded as effnetv2_configs.BlockDecoder._decode_block_string does."""

    num_repeat: int
    kernel_size: int
    strides: int
    expand_ratio: int
    input_filters: int
    output_filters: int
    se_ratio: Optional[float] = None
    conv_type: int = 0  # 0: MBConvBlock, 1: FusedMBConvBlock

    _KNOWN = ("r", "k", "s", "e", "i", "o", "se", "c")

    @classmethod
    def decode(cls, code: str) -> "BlockArgsV2":
        """Decode ``r2_k3_s2_e4_i24_o48_c1`` (V2's one-digit stride; ``c1``: fused)."""
        options, _ = split_block_code(code, cls._KNOWN, what="V2 block string")
        try:
            args = cls(num_repeat=int(options["r"]), kernel_size=int(options["k"]), strides=int(options["s"]),
                       expand_ratio=int(options["e"]), input_filters=int(options["i"]),
                       output_filters=int(options["o"]),
                       se_ratio=float(options["se"]) if "se" in options else None,
                       conv_type=int(options.get("c", 0)))
        except ValueError:
            raise ConversionError(f"V2 block string {code!r}: a value is not a number") from None
        if args.conv_type not in (0, 1):
            raise ConversionError(f"V2 block string {code!r}: unknown conv type c{args.conv_type} "
                                  "(effnetv2_model knows 0: MBConv, 1: FusedMBConv)")
        if args.num_repeat < 1:
            raise ConversionError(f"V2 block string {code!r}: num_repeat must be > 0")
        return args

    def encode(self) -> str:
        """The string as effnetv2_configs.py writes its blocks (``c1`` only for fused, ``se`` last)."""
        parts = [f"r{self.num_repeat}", f"k{self.kernel_size}", f"s{self.strides}", f"e{self.expand_ratio}",
                 f"i{self.input_filters}", f"o{self.output_filters}"]
        if self.conv_type:
            parts.append(f"c{self.conv_type}")
        if self.se_ratio is not None:
            parts.append(f"se{self.se_ratio:g}")
        return "_".join(parts)


def round_filters_v2(filters: int, width: float) -> int:
    """effnetv2_model.round_filters: no 10 % rule (V1 has one), min_depth 8."""
    if not width:
        return filters
    f = filters * width
    return int(max(MIN_DEPTH, int(f + DEPTH_DIVISOR / 2) // DEPTH_DIVISOR * DEPTH_DIVISOR))


def round_repeats_v2(repeats: int, depth: float) -> int:
    """effnetv2_model.round_repeats."""
    if not depth:
        return repeats
    return int(math.ceil(depth * repeats))


@dataclass(frozen=True)
class ArchSpecV2(ArchSpec):
    """One EfficientNetV2 architecture (effnetv2_configs.efficientnetv2_params)."""

    train_size: int = 0  # efficientnetv2_params train_size (the eval size is ``resolution``)

    def round_filters(self, filters: int) -> int:
        return round_filters_v2(filters, self.width)

    def round_repeats(self, repeats: int) -> int:
        return round_repeats_v2(repeats, self.depth)

    def decoded(self) -> List[BlockArgsV2]:
        return [BlockArgsV2.decode(c) for c in self.block_strings]

    @property
    def stem_channels(self) -> int:
        # effnetv2_model.Stem: round_filters(blocks_args[0].input_filters)
        return self.round_filters(self.decoded()[0].input_filters)

    @property
    def head_channels(self) -> int:
        # effnetv2_model.Head: round_filters(feature_size or 1280)
        return self.round_filters(self.head_filters)

    def blocks(self) -> List[Block]:
        """EffNetV2Model._build: first block of a stage with the stage's stride and input filters,
        the repeats with stride 1 and input = output filters; residual when stride 1 and
        input == output filters (MBConvBlock.residual)."""
        out: List[Block] = []
        prev = self.stem_channels
        for stage, args in enumerate(self.decoded()):
            in_ch, out_ch = self.round_filters(args.input_filters), self.round_filters(args.output_filters)
            fused = args.conv_type == 1
            for j in range(self.round_repeats(args.num_repeat)):
                stride = args.strides if j == 0 else 1
                args_in = in_ch if j == 0 else out_ch
                if args_in != prev:
                    raise ConversionError(f"V2 block string {args.encode()!r}: input filters {args_in} do not "
                                          f"match the {prev} channels arriving from the previous layer")
                has_se = args.se_ratio is not None and 0 < args.se_ratio <= 1
                out.append(Block(
                    index=len(out), stage=stage, index_in_stage=j, kernel_size=args.kernel_size,
                    stride=stride, expand_ratio=args.expand_ratio, in_channels=prev,
                    # MBConvBlock/FusedMBConvBlock: filters = input_filters * expand_ratio
                    mid_channels=args_in * args.expand_ratio, out_channels=out_ch,
                    se_channels=max(1, int(args_in * args.se_ratio)) if has_se else 0,
                    residual=stride == 1 and args_in == out_ch,
                    kind=FUSED_V2 if fused else MBCONV))
                prev = out_ch
        return out


def fused_v2_params(b: Block) -> int:
    n = 0
    k2 = b.kernel_size ** 2
    if b.has_expand:
        n += k2 * b.in_channels * b.mid_channels + 2 * b.mid_channels
        if b.se_channels:
            n += b.mid_channels * b.se_channels + b.se_channels + b.se_channels * b.mid_channels + b.mid_channels
        return n + b.mid_channels * b.out_channels + 2 * b.out_channels
    if b.se_channels:
        n += b.in_channels * b.se_channels + b.se_channels + b.se_channels * b.in_channels + b.in_channels
    return n + k2 * b.in_channels * b.out_channels + 2 * b.out_channels


def fused_v2_macs(b: Block, size: int) -> Tuple[int, int]:
    k2 = b.kernel_size ** 2
    out = -(-size // b.stride)
    if b.has_expand:
        macs = out * out * k2 * b.in_channels * b.mid_channels + out * out * b.mid_channels * b.out_channels
    else:
        macs = out * out * k2 * b.in_channels * b.out_channels
    if b.se_channels:
        macs += 2 * b.mid_channels * b.se_channels
    return macs, out


# block kind -> (parameters, multiply-adds) of one block (the family declares its kinds with them)
COST = {MBCONV: (mbconv_params, mbconv_macs), FUSED_V2: (fused_v2_params, fused_v2_macs)}


# effnetv2_model_test.py test_effnetv2: model.count_params() with 1000 classes
OFFICIAL_KERAS_PARAMS = {
    "v2-b0": 7200312, "v2-b1": 8212124, "v2-b2": 10178374, "v2-b3": 14467622,
    "v2-s": 21612360, "v2-m": 54431388, "v2-l": 119027848, "v2-xl": 208896832,
}


def _v2(size: str, blocks: Tuple[str, ...], width: float, depth: float, train: int, res: int,
        dropout: float) -> ArchSpecV2:
    return ArchSpecV2(name=f"v2-{size}", width=width, depth=depth, resolution=res, dropout=dropout,
                      scope=f"efficientnetv2-{size}", block_strings=blocks, stem_filters=0,
                      head_filters=FEATURE_SIZE, activation=ACTIVATION, bn_eps=BN_EPS, family=FAMILY,
                      train_size=train)


# effnetv2_configs.efficientnetv2_params:
# (block, width, depth, train_size, eval_size, dropout, randaug, mixup, aug)
V2_ARCHS: Dict[str, ArchSpecV2] = {
    s.name: s
    for s in (
        _v2("b0", V2_BASE_BLOCK, 1.0, 1.0, 192, 224, 0.2),
        _v2("b1", V2_BASE_BLOCK, 1.0, 1.1, 192, 240, 0.2),
        _v2("b2", V2_BASE_BLOCK, 1.1, 1.2, 208, 260, 0.3),
        _v2("b3", V2_BASE_BLOCK, 1.2, 1.4, 240, 300, 0.3),
        _v2("s", V2_S_BLOCK, 1.0, 1.0, 300, 384, 0.2),
        _v2("m", V2_M_BLOCK, 1.0, 1.0, 384, 480, 0.3),
        _v2("l", V2_L_BLOCK, 1.0, 1.0, 384, 480, 0.4),
        _v2("xl", V2_XL_BLOCK, 1.0, 1.0, 384, 512, 0.4),
    )
}
