"""MnasNet and MixNet as data: block strings, builders, official variable names.

Mirrors tensorflow/tpu models/official/mnasnet at 7dc921f846c9e4071f3884b768a7ddf521272a49:
mnasnet_models.py (MnasNetDecoder, mnasnet_a1, mnasnet_small), mnasnet_model.py (MnasBlock,
MnasNetModel, round_filters), mixnet/mixnet_builder.py (MixnetDecoder, mixnet_s/m/l),
mixnet/mixnet_model.py (MixnetBlock, MixnetModel), mixnet/custom_layers.py (GroupedConv2D,
MixConv, _split_channels): the architectures, their block kinds' data and cost, the official
names; the family package (converter/families/mnasnet/) declares them. Nothing here imports
torch or TensorFlow.

Differences from EfficientNet that the numbers depend on: ReLU everywhere in MnasNet (SE
included); MixNet stem/head ReLU, swish in ``sw`` blocks and their SE; the head conv is NOT
scaled by the width (1280 MnasNet, 1536 MixNet ``feature_size``); the stem is; SE reduce width
``max(1, int(block input filters * se_ratio))``; MixNet depthwise kernels of several sizes and
grouped 1x1 convs, channels split equally with the remainder in the FIRST group.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Tuple

from ...arch import REQUIRED_OPTIONS, ArchSpec, Block, mbconv_macs, mbconv_params, split_block_code
from ...errors import ConversionError
from ...keras_names import counter_name, match_counters

MNASBLOCK = "mnasblock"  # block kind: mnasnet_model.MnasBlock (MBConv's computation, ReLU, Keras counters)
MIXCONV = "mixconv"  # block kind: mixnet_model.MixnetBlock
MNASNET, MIXNET = "mnasnet", "mixnet"  # ArchSpec.family
# mnasnet_models.mnasnet_a1/_small, mixnet_builder.mixnet_s/_m: batch_norm_epsilon=1e-3,
# depth_divisor=8, min_depth=None (round_filters as efficientnet_builder's)
BN_EPS = 1e-3
MNAS_HEAD = 1280  # mnasnet_model.MnasNetModel._build: Conv2D(filters=1280), not scaled
MIX_HEAD = 1536  # mixnet_builder: feature_size=1536, MixnetModel._build uses it unscaled
# preprocessing.py (7dc921f; since 867cc97, 2019-07-06): tf.image.resize (tf.compat.v1: BILINEAR,
# align_corners=False, half_pixel_centers=False) after the centre crop; before: resize_bicubic
INTERPOLATION = "bilinear"


def split_channels(total: int, groups: int) -> List[int]:
    """custom_layers._split_channels: equal parts, the remainder added to the FIRST one."""
    split = [total // groups for _ in range(groups)]
    split[0] += total - sum(split)
    return split


@dataclass(frozen=True)
class MixBlockArgs:
    """One official block string, decoded by MixnetDecoder (``mixnet``) or MnasNetDecoder."""

    num_repeat: int
    dw_kernels: Tuple[int, ...]
    expand_kernels: Tuple[int, ...]
    project_kernels: Tuple[int, ...]
    strides: Tuple[int, int]
    expand_ratio: int
    input_filters: int
    output_filters: int
    se_ratio: Optional[float] = None
    id_skip: bool = True
    swish: bool = False
    dilated: bool = False

    @classmethod
    def decode(cls, code: str, mixnet: bool) -> "MixBlockArgs":
        """``r1_k3.5.7_a1.1_p1.1_s22_e6_i40_o80_se0.25_sw`` (MixNet) or ``r2_k3_s22_e6_i16_o24_se0.25``."""
        options, flags = split_block_code(
            code, REQUIRED_OPTIONS + ("se",) + (("a", "p") if mixnet else ()),
            ("noskip",) + (("sw", "dilated") if mixnet else ()),
            required=REQUIRED_OPTIONS + (("a", "p") if mixnet else ()))
        if len(options["s"]) != 2:
            raise ConversionError(f"block string {code!r}: strides must be a pair of digits")

        def ksize(key: str) -> Tuple[int, ...]:
            if not mixnet and "." in options[key]:
                raise ConversionError(f"block string {code!r}: MnasNet blocks have one kernel size")
            try:
                return tuple(int(k) for k in options[key].split("."))
            except ValueError:
                raise ConversionError(f"block string {code!r}: bad kernel sizes {options[key]!r}") from None

        return cls(
            num_repeat=int(options["r"]), dw_kernels=ksize("k"),
            expand_kernels=ksize("a") if mixnet else (1,), project_kernels=ksize("p") if mixnet else (1,),
            strides=(int(options["s"][0]), int(options["s"][1])), expand_ratio=int(options["e"]),
            input_filters=int(options["i"]), output_filters=int(options["o"]),
            se_ratio=float(options["se"]) if "se" in options else None,
            id_skip="noskip" not in flags, swish="sw" in flags, dilated="dilated" in flags)

    def encode(self, mixnet: bool) -> str:
        """The official string (MixnetDecoder._encode_block_string order: r k a p s e i o se noskip sw)."""
        ks = ".".join(str(k) for k in self.dw_kernels)
        parts = [f"r{self.num_repeat}", f"k{ks}"]
        if mixnet:
            parts += ["a" + ".".join(map(str, self.expand_kernels)), "p" + ".".join(map(str, self.project_kernels))]
        parts += [f"s{self.strides[0]}{self.strides[1]}", f"e{self.expand_ratio}",
                  f"i{self.input_filters}", f"o{self.output_filters}"]
        if self.se_ratio is not None and 0 < self.se_ratio <= 1:
            parts.append(f"se{self.se_ratio:g}")
        if not self.id_skip:
            parts.append("noskip")
        if self.swish:
            parts.append("sw")
        if self.dilated:
            parts.append("dilated")
        return "_".join(parts)


@dataclass(frozen=True)
class MixBlock(Block):
    """A MixnetBlock: ``kernel_size`` is the first depthwise kernel; the rest describe the groups."""

    dw_kernels: Tuple[int, ...] = ()
    expand_groups: int = 1  # GroupedConv2D 1x1 convs of the expand phase (``a1.1``: 2)
    project_groups: int = 1
    swish: bool = False  # ``sw``: swish in the block and its SE, ReLU otherwise

    def splits(self) -> Dict[str, List[int]]:
        """Channel splits (custom_layers.GroupedConv2D / MixConv): each group's in/out channels."""
        return {
            "expand_in": split_channels(self.in_channels, self.expand_groups),
            "expand_out": split_channels(self.mid_channels, self.expand_groups),
            "dw": split_channels(self.mid_channels, len(self.dw_kernels)),
            "project_in": split_channels(self.mid_channels, self.project_groups),
            "project_out": split_channels(self.out_channels, self.project_groups),
        }

    @property
    def activation(self) -> str:
        return "swish" if self.swish else "relu"


@dataclass(frozen=True)
class MnasSpec(ArchSpec):
    """A MnasNet or MixNet (family ``mnasnet`` / ``mixnet``); ``width`` is the depth multiplier."""

    model_name: str = ""  # the tf.variable_scope of build_mnasnet_model / build_model ("mnasnet-a1")

    @property
    def mixnet(self) -> bool:
        return self.family == MIXNET

    @property
    def head_channels(self) -> int:
        return self.head_filters  # not scaled (see MNAS_HEAD, MIX_HEAD)

    @property
    def official_override_params(self) -> Dict[str, object]:
        """MnasNet-A1's other widths share the scope ``mnasnet-a1``: the builder needs their
        ``depth_multiplier`` (tensorflow/tpu 7dc921f mnasnet/mnasnet_main.py, override_params
        ``depth_multiplier`` -> mnasnet_models.mnasnet_a1(depth_multiplier)); MixNet-L's 1.3 is its
        name's (mixnet_builder.mixnet_l), not an override."""
        params = dict(super().official_override_params)
        if not self.mixnet and self.width != 1.0:
            params["depth_multiplier"] = self.width
        return params

    @property
    def stem_channels(self) -> int:
        return self.round_filters(self.stem_filters)  # round_filters(stem_size, global_params)

    def decoded(self) -> List[MixBlockArgs]:
        return [MixBlockArgs.decode(c, self.mixnet) for c in self.block_strings]

    def blocks(self) -> List[Block]:
        """MnasNetModel._build / MixnetModel._build: scaled input/output filters, first block of a
        stage with its stride, repeats with stride 1 and input = output filters; the block's
        expanded width ``input_filters * expand_ratio`` (without expansion: what arrives)."""
        out: List[Block] = []
        prev = self.stem_channels
        for stage, args in enumerate(self.decoded()):
            if args.dilated:
                raise ConversionError(f"block string {args.encode(self.mixnet)!r}: dilated MixConv is not supported")
            if args.strides[0] != args.strides[1]:
                raise ConversionError(f"block string {args.encode(self.mixnet)!r}: unequal strides not supported")
            in_ch, out_ch = self.round_filters(args.input_filters), self.round_filters(args.output_filters)
            for j in range(args.num_repeat):
                stride = args.strides[0] if j == 0 else 1
                args_in = in_ch if j == 0 else out_ch
                has_se = args.se_ratio is not None and 0 < args.se_ratio <= 1
                mid = args_in * args.expand_ratio if args.expand_ratio != 1 else prev
                if has_se and mid != args_in * args.expand_ratio:
                    raise ConversionError(f"block string {args.encode(self.mixnet)!r}: SE without expansion "
                                          f"on {prev} channels where the block expects {args_in}")
                common = dict(
                    index=len(out), stage=stage, index_in_stage=j, kernel_size=args.dw_kernels[0],
                    stride=stride, expand_ratio=args.expand_ratio, in_channels=prev, mid_channels=mid,
                    out_channels=out_ch, se_channels=max(1, int(args_in * args.se_ratio)) if has_se else 0,
                    residual=args.id_skip and stride == 1 and args_in == out_ch)
                if self.mixnet:
                    out.append(MixBlock(kind=MIXCONV, dw_kernels=args.dw_kernels,
                                        expand_groups=len(args.expand_kernels),
                                        project_groups=len(args.project_kernels), swish=args.swish, **common))
                else:
                    out.append(Block(kind=MNASBLOCK, **common))  # MnasBlock == MBConvBlock with ReLU
                prev = out_ch
        return out


def mix_params(b: Block) -> int:
    assert isinstance(b, MixBlock)
    s = b.splits()
    n = 0
    if b.has_expand:
        n += sum(i * o for i, o in zip(s["expand_in"], s["expand_out"])) + 2 * b.mid_channels
    n += sum(k * k * c for k, c in zip(b.dw_kernels, s["dw"])) + 2 * b.mid_channels
    if b.se_channels:
        n += b.mid_channels * b.se_channels + b.se_channels + b.se_channels * b.mid_channels + b.mid_channels
    return n + sum(i * o for i, o in zip(s["project_in"], s["project_out"])) + 2 * b.out_channels


def mix_macs(b: Block, size: int) -> Tuple[int, int]:
    assert isinstance(b, MixBlock)
    s = b.splits()
    macs = 0
    if b.has_expand:
        macs += size * size * sum(i * o for i, o in zip(s["expand_in"], s["expand_out"]))
    size = -(-size // b.stride)
    macs += size * size * sum(k * k * c for k, c in zip(b.dw_kernels, s["dw"]))
    if b.se_channels:
        macs += 2 * b.mid_channels * b.se_channels
    macs += size * size * sum(i * o for i, o in zip(s["project_in"], s["project_out"]))
    return macs, size


# block kind -> (parameters, multiply-adds) of one block; MnasBlock costs what MBConvBlock costs
COST = {MNASBLOCK: (mbconv_params, mbconv_macs), MIXCONV: (mix_params, mix_macs)}


# mnasnet_models.mnasnet_a1 / mnasnet_small: blocks_args
MNASNET_A1_BLOCKS = (
    "r1_k3_s11_e1_i32_o16_noskip", "r2_k3_s22_e6_i16_o24",
    "r3_k5_s22_e3_i24_o40_se0.25", "r4_k3_s22_e6_i40_o80",
    "r2_k3_s11_e6_i80_o112_se0.25", "r3_k5_s22_e6_i112_o160_se0.25",
    "r1_k3_s11_e6_i160_o320",
)
MNASNET_SMALL_BLOCKS = (
    "r1_k3_s11_e1_i16_o8", "r1_k3_s22_e3_i8_o16",
    "r2_k3_s22_e6_i16_o16", "r4_k5_s22_e6_i16_o32_se0.25",
    "r3_k3_s11_e6_i32_o32_se0.25", "r3_k5_s22_e6_i32_o88_se0.25",
    "r1_k3_s11_e6_i88_o144",
)
# mixnet_builder.mixnet_s / mixnet_m (mixnet_l: mixnet_m with depth_multiplier 1.3)
MIXNET_S_BLOCKS = (
    "r1_k3_a1_p1_s11_e1_i16_o16",
    "r1_k3_a1.1_p1.1_s22_e6_i16_o24",
    "r1_k3_a1.1_p1.1_s11_e3_i24_o24",
    "r1_k3.5.7_a1_p1_s22_e6_i24_o40_se0.5_sw",
    "r3_k3.5_a1.1_p1.1_s11_e6_i40_o40_se0.5_sw",
    "r1_k3.5.7_a1_p1.1_s22_e6_i40_o80_se0.25_sw",
    "r2_k3.5_a1_p1.1_s11_e6_i80_o80_se0.25_sw",
    "r1_k3.5.7_a1.1_p1.1_s11_e6_i80_o120_se0.5_sw",
    "r2_k3.5.7.9_a1.1_p1.1_s11_e3_i120_o120_se0.5_sw",
    "r1_k3.5.7.9.11_a1_p1_s22_e6_i120_o200_se0.5_sw",
    "r2_k3.5.7.9_a1_p1.1_s11_e6_i200_o200_se0.5_sw",
)
MIXNET_M_BLOCKS = (
    "r1_k3_a1_p1_s11_e1_i24_o24",
    "r1_k3.5.7_a1.1_p1.1_s22_e6_i24_o32",
    "r1_k3_a1.1_p1.1_s11_e3_i32_o32",
    "r1_k3.5.7.9_a1_p1_s22_e6_i32_o40_se0.5_sw",
    "r3_k3.5_a1.1_p1.1_s11_e6_i40_o40_se0.5_sw",
    "r1_k3.5.7_a1_p1_s22_e6_i40_o80_se0.25_sw",
    "r3_k3.5.7.9_a1.1_p1.1_s11_e6_i80_o80_se0.25_sw",
    "r1_k3_a1_p1_s11_e6_i80_o120_se0.5_sw",
    "r3_k3.5.7.9_a1.1_p1.1_s11_e3_i120_o120_se0.5_sw",
    "r1_k3.5.7.9_a1_p1_s22_e6_i120_o200_se0.5_sw",
    "r3_k3.5.7.9_a1_p1.1_s11_e6_i200_o200_se0.5_sw",
)


def _mnas(name: str, model: str, blocks: Tuple[str, ...], stem: int, width: float, res: int,
          dropout: float) -> MnasSpec:
    # depth_multiplier None (width 1.0) and 1.0 round the same (round_filters returns filters *
    # 1.0 rounded to 8; every official width is a multiple of 8)
    return MnasSpec(name=name, width=width, depth=1.0, resolution=res, dropout=dropout, scope=model,
                    block_strings=blocks, stem_filters=stem, head_filters=MNAS_HEAD, activation="relu",
                    bn_eps=BN_EPS, family=MNASNET, model_name=model)


def _mix(name: str, blocks: Tuple[str, ...], stem: int, width: float, dropout: float) -> MnasSpec:
    return MnasSpec(name=name, width=width, depth=1.0, resolution=224, dropout=dropout, scope=name,
                    block_strings=blocks, stem_filters=stem, head_filters=MIX_HEAD, activation="relu",
                    bn_eps=BN_EPS, family=MIXNET, model_name=name)


# README.md (mnasnet): depth multipliers 1.4 / 1.0 / 0.75 / 0.5 / 0.35 at 224 px, and each of them
# at 192 / 160 / 128 / 96 px (``mnasnet-a1_dD_iR``: the same architecture evaluated at R)
A1_WIDTHS = (1.4, 1.0, 0.75, 0.5, 0.35)
GRID_RESOLUTIONS = (192, 160, 128, 96)


def width_tag(width: float) -> str:
    """The README's ``d`` tag: 1.4 -> "1.4", 1.0 -> "1.0", 0.75 -> "0.75"."""
    return f"{width:.1f}" if width in (1.0, 1.4) else f"{width:g}"


def _registry() -> Dict[str, MnasSpec]:
    specs: List[MnasSpec] = []
    for w in A1_WIDTHS:
        base = _mnas("mnasnet-a1" if w == 1.0 else f"mnasnet-a1_d{width_tag(w)}", "mnasnet-a1",
                     MNASNET_A1_BLOCKS, 32, w, 224, 0.2)
        specs.append(base)
        specs += [base.at_resolution(r, f"mnasnet-a1_d{width_tag(w)}_i{r}") for r in GRID_RESOLUTIONS]
    specs.append(_mnas("mnasnet-small", "mnasnet-small", MNASNET_SMALL_BLOCKS, 8, 1.0, 224, 0.0))
    specs.append(_mix("mixnet-s", MIXNET_S_BLOCKS, 16, 1.0, 0.2))
    specs.append(_mix("mixnet-m", MIXNET_M_BLOCKS, 24, 1.0, 0.25))
    specs.append(_mix("mixnet-l", MIXNET_M_BLOCKS, 24, 1.3, 0.25))  # mixnet_l: mixnet_m(1.3)
    return {registry_key(s.name): s for s in specs}


def registry_key(name: str) -> str:
    """How converter.registry.get_arch normalises a name (lower case, ``_`` -> ``-``)."""
    return name.lower().strip().replace("_", "-")


MNAS_ARCHS: Dict[str, MnasSpec] = _registry()
# --------------------------------------------------------------------------- official names

MODEL_ELEMENT = {MNASNET: "mnas_net_model", MIXNET: "mixnet_model"}  # tf.keras.Model name scope
STEM_SCOPE = {MNASNET: "mnas_stem", MIXNET: "stem"}
BLOCK_SCOPE = {MNASNET: "mnas_blocks_{i}", MIXNET: "blocks_{i}"}
HEAD_SCOPE = {MNASNET: "mnas_head", MIXNET: "head"}
BN_LAYER = "batch_normalization"  # tf.layers.BatchNormalization, uniquified per variable scope


@dataclass(frozen=True)
class BlockLayers:
    """Official layer paths of one block (below the model scope, e.g. ``mnas_net_model/mnas_blocks_3/conv2d_5``).

    Keras layers (convs) sit under the tf.keras.Model's name scope (``MODEL_ELEMENT``) and carry
    graph-wide counters in creation order; the tf.layers batch norms sit outside it, counted per
    variable scope. Lists: one entry per group (GroupedConv2D / MixConv: one Keras layer per group).
    """

    expand: Tuple[str, ...]
    bn0: Optional[str]
    depthwise: Tuple[str, ...]
    bn1: str
    se_reduce: Optional[str]
    se_expand: Optional[str]
    project: Tuple[str, ...]
    bn2: str


@dataclass(frozen=True)
class ModelLayers:
    stem: str
    stem_bn: str
    blocks: Tuple[BlockLayers, ...]
    head: str
    head_bn: str
    dense: str


def layers(spec: MnasSpec) -> ModelLayers:
    """Official layer paths of the whole model as a fresh graph names them (the inventory form).

    Creation order (MnasNetModel._build / MixnetModel._build): every block (MnasBlock/MixnetBlock
    ._build: expand conv(s), depthwise conv(s), SE reduce, SE expand, project conv(s)), then the
    stem conv, the head conv, the dense. Checkpoints whose counters differ are matched by
    ``keras_aliases``.
    """
    fam = spec.family
    model = MODEL_ELEMENT[fam]
    conv = dw = 0
    blocks: List[BlockLayers] = []
    for b in spec.blocks():
        p = BLOCK_SCOPE[fam].format(i=b.index)
        eg = b.expand_groups if isinstance(b, MixBlock) else 1
        pg = b.project_groups if isinstance(b, MixBlock) else 1
        ng = len(b.dw_kernels) if isinstance(b, MixBlock) else 1
        expand: Tuple[str, ...] = ()
        if b.has_expand:
            expand = tuple(f"{model}/{p}/{counter_name('conv2d', conv + g)}" for g in range(eg))
            conv += eg
        depthwise = tuple(f"{model}/{p}/{counter_name('depthwise_conv2d', dw + g)}" for g in range(ng))
        dw += ng
        se_reduce = se_expand = None
        if b.se_channels:
            se_reduce, se_expand = (f"{model}/{p}/se/{counter_name('conv2d', conv + g)}" for g in range(2))
            conv += 2
        project = tuple(f"{model}/{p}/{counter_name('conv2d', conv + g)}" for g in range(pg))
        conv += pg
        bns = [f"{p}/{counter_name(BN_LAYER, n)}" for n in range(3)]
        if not b.has_expand:
            bns = [None] + bns[:2]
        blocks.append(BlockLayers(expand, bns[0], depthwise, bns[1], se_reduce, se_expand, project, bns[2]))
    stem, head = STEM_SCOPE[fam], HEAD_SCOPE[fam]
    return ModelLayers(
        stem=f"{model}/{stem}/{counter_name('conv2d', conv)}", stem_bn=f"{stem}/{BN_LAYER}",
        blocks=tuple(blocks), head=f"{model}/{head}/{counter_name('conv2d', conv + 1)}",
        head_bn=f"{head}/{BN_LAYER}", dense=f"{model}/{head}/dense")


# Keras layer variables in a checkpoint: SCOPE/[MODEL_ELEMENT/]PATH/BASE[_N]/VARIABLE
_KERAS_NAME = re.compile(
    r"^(?P<scope>[^/]+)/(?:(?:mnas_net_model|mixnet_model)/)?(?P<path>(?:[^/]+/)*?)"
    r"(?P<base>conv2d|depthwise_conv2d|dense)(?:_(?P<n>\d+))?/(?P<var>kernel|bias|depthwise_kernel)$")


def keras_aliases(wanted: Iterable[str], available: Iterable[str]) -> Dict[str, str]:
    """{wanted name: the checkpoint's own name} for Keras layer variables of MnasNet/MixNet.

    Convs carry graph-wide Keras counters and may sit under the model's name scope
    (``mnas_net_model/``, ``mixnet_model/``) or not: within one place (scope, block path, layer
    type, variable) they pair by counter order (keras_names.match_counters); otherwise
    ConversionError.
    """
    return match_counters(wanted, available, _KERAS_NAME, key=lambda m: (m["scope"], m["path"], m["base"], m["var"]),
                          describe=lambda k: (f"{k[0]}/{k[1]}", f"{k[2]}/{k[3]}"),
                          suffix=": not an official checkpoint of this variant")


def model_roles(spec: MnasSpec) -> Dict[str, str]:
    """The stem/head roles of a mapping table's rows -> their official layers (``layers``)."""
    L = layers(spec)
    return {"stem": L.stem, "stem_bn": L.stem_bn, "head": L.head, "head_bn": L.head_bn, "dense": L.dense}


def block_roles(spec: MnasSpec) -> Dict[int, Dict[str, object]]:
    """{block index: {role: its official layer(s)}} for a mapping table's rows (converter.mapping):
    a role of one layer maps to it (None: not in this block), a role with one layer per group
    (expand, depthwise, project) to ``[(layer, the group's dims), ...]``."""
    out: Dict[int, Dict[str, object]] = {}
    for b, n in zip(spec.blocks(), layers(spec).blocks):
        if isinstance(b, MixBlock):
            s = b.splits()
            expand = [(x, {"in": i, "mid": o}) for x, i, o in zip(n.expand, s["expand_in"], s["expand_out"])]
            depthwise = [(x, {"mid": c, "k": k}) for x, c, k in zip(n.depthwise, s["dw"], b.dw_kernels)]
            project = [(x, {"mid": i, "out": o}) for x, i, o in zip(n.project, s["project_in"], s["project_out"])]
        else:
            expand, depthwise, project = [(x, {}) for x in n.expand], [(n.depthwise[0], {})], [(n.project[0], {})]
        out[b.index] = {"expand": expand, "bn0": n.bn0, "depthwise": depthwise, "bn1": n.bn1,
                        "se_reduce": n.se_reduce, "se_expand": n.se_expand, "project": project, "bn2": n.bn2}
    return out
