"""EfficientNet (V1), Lite, EdgeTPU and CondConv architectures: the registry table and the releases.

tensorflow/tpu models/official/efficientnet (efficientnet_builder.efficientnet_params), lite/,
edgetpu/, condconv/ builders at 7dc921f; their blocks are built by converter.arch.ArchSpec (the
efficientnet_builder data model every family extends). The fused and CondConv kinds' cost.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple

from ...arch import ArchSpec, Block, down, mbconv_macs, mbconv_params
from ...errors import ConversionError


def _spec(name: str, width: float, depth: float, res: int, dropout: float, scope: Optional[str] = None) -> ArchSpec:
    return ArchSpec(name=name, width=width, depth=depth, resolution=res, dropout=dropout,
                    scope=scope or f"efficientnet-{name}")


# tensorflow/tpu lite/efficientnet_lite_builder.efficientnet_lite: the base blocks (their se0.25
# is ignored: use_se=False), relu6, fix_head_stem, local_pooling
def _lite(name: str, width: float, depth: float, res: int, dropout: float) -> ArchSpec:
    return ArchSpec(name=name, width=width, depth=depth, resolution=res, dropout=dropout,
                    scope=f"efficientnet-{name}", activation="relu6", use_se=False,
                    fix_head_stem=True, local_pooling=True, family="lite")


# tensorflow/tpu edgetpu/efficientnet_edgetpu_builder.efficientnet_edgetpu: blocks_args
EDGETPU_BLOCKS = (
    "r1_k3_s11_e4_i24_o24_c1_noskip",
    "r2_k3_s22_e8_i24_o32_c1",
    "r4_k3_s22_e8_i32_o48_c1",
    "r5_k5_s22_e8_i48_o96",
    "r4_k5_s11_e8_i96_o144",
    "r2_k5_s22_e8_i144_o192",
)


# efficientnet_edgetpu: relu, use_se=False, local_pooling, num_classes=1001 (background + 1000)
def _edgetpu(size: str, width: float, depth: float, res: int, dropout: float) -> ArchSpec:
    return ArchSpec(name=f"edgetpu-{size.lower()}", width=width, depth=depth, resolution=res,
                    dropout=dropout, scope=f"efficientnet-edgetpu-{size}", block_strings=EDGETPU_BLOCKS,
                    activation="relu", use_se=False, local_pooling=True, num_classes=1001,
                    family="edgetpu")


# tensorflow/tpu condconv/efficientnet_condconv_builder.efficientnet_condconv: blocks_args
CONDCONV_BLOCKS = (
    "r1_k3_s11_e1_i32_o16_se0.25",
    "r2_k3_s22_e6_i16_o24_se0.25",
    "r2_k5_s22_e6_i24_o40_se0.25",
    "r3_k3_s22_e6_i40_o80_se0.25",
    "r3_k5_s11_e6_i80_o112_se0.25_cc",
    "r4_k5_s22_e6_i112_o192_se0.25_cc",
    "r1_k3_s11_e6_i192_o320_se0.25_cc",
)


# efficientnet_condconv: swish, SE, condconv_num_experts
def _condconv(name: str, width: float, depth: float, res: int, dropout: float, experts: int) -> ArchSpec:
    return ArchSpec(name=name, width=width, depth=depth, resolution=res, dropout=dropout,
                    scope=f"efficientnet-{name}", block_strings=CONDCONV_BLOCKS,
                    condconv_experts=experts, family="condconv")


# tensorflow/tpu efficientnet_builder.efficientnet_params:
# (width_coefficient, depth_coefficient, resolution, dropout_rate)
ARCHS: Dict[str, ArchSpec] = {
    s.name: s
    for s in (
        _spec("b0", 1.0, 1.0, 224, 0.2),
        _spec("b1", 1.0, 1.1, 240, 0.2),
        _spec("b2", 1.1, 1.2, 260, 0.3),
        _spec("b3", 1.2, 1.4, 300, 0.3),
        _spec("b4", 1.4, 1.8, 380, 0.4),
        _spec("b5", 1.6, 2.2, 456, 0.4),
        _spec("b6", 1.8, 2.6, 528, 0.5),
        _spec("b7", 2.0, 3.1, 600, 0.5),
        _spec("b8", 2.2, 3.6, 672, 0.5),
        _spec("l2", 4.3, 5.3, 800, 0.5),  # its NoisyStudent checkpoint at 475 px too: RELEASES
        # lite/efficientnet_lite_builder.efficientnet_lite_params
        _lite("lite0", 1.0, 1.0, 224, 0.2),
        _lite("lite1", 1.0, 1.1, 240, 0.2),
        _lite("lite2", 1.1, 1.2, 260, 0.3),
        _lite("lite3", 1.2, 1.4, 280, 0.3),
        _lite("lite4", 1.4, 1.8, 300, 0.3),
        # edgetpu/efficientnet_edgetpu_builder.efficientnet_edgetpu_params
        _edgetpu("S", 1.0, 1.0, 224, 0.2),
        _edgetpu("M", 1.0, 1.1, 240, 0.2),
        _edgetpu("L", 1.2, 1.4, 300, 0.3),
        # condconv/efficientnet_condconv_builder.efficientnet_condconv_params
        # (width, depth, resolution, dropout, condconv_num_experts)
        _condconv("condconv-b0-4e", 1.0, 1.0, 224, 0.25, 4),
        _condconv("condconv-b0-8e", 1.0, 1.0, 224, 0.25, 8),
        _condconv("condconv-b0-8e-depth", 1.0, 1.1, 224, 0.25, 8),
    )
}

# variants of the main family (the ones with several released flavors), each architecture followed
# by its checkpoints' releases at other resolutions (register_release)
MAIN_FAMILY: List[str] = [k for k, v in ARCHS.items() if v.family == "efficientnet"]

# Checkpoints released at another resolution than their architecture's: variant name ->
# (architecture, resolution). The resolution belongs to the checkpoint: checkpoints.py
# registers these from its rows; ``lookup`` gives the architecture at that resolution, named so.
RELEASES: Dict[str, Tuple[str, int]] = {}


def release_name(arch_name: str, resolution: int) -> str:
    """The variant name of ``arch_name``'s checkpoint released at ``resolution`` (not its own)."""
    return f"{arch_name}-{int(resolution)}"


def register_release(arch_name: str, resolution: int) -> str:
    """Register ``arch_name``'s checkpoint released at ``resolution``; returns its variant name."""
    if arch_name not in ARCHS:
        raise ConversionError(f"unknown architecture {arch_name!r} for a release at {resolution} px")
    name = release_name(arch_name, resolution)
    RELEASES[name] = (arch_name, int(resolution))
    if arch_name in MAIN_FAMILY and name not in MAIN_FAMILY:
        MAIN_FAMILY.insert(MAIN_FAMILY.index(arch_name) + 1, name)
    return name


def lookup(key: str) -> Optional[ArchSpec]:
    """The architecture (or release, RELEASES) of a normalised name (``b0``, ``l2-475``), or None."""
    if key in RELEASES:
        base, resolution = RELEASES[key]
        return ARCHS[base].at_resolution(resolution, name=key)
    return ARCHS.get(key)


# the --variant help of the EfficientNet (V1) family: its architectures, each group followed by
# its checkpoints' releases at other resolutions (RELEASES)
_HELP_GROUPS = ("b0..b8", "l2", "lite0..lite4", "edgetpu-s/m/l", "condconv-b0-4e/-8e/-8e-depth")


def variants_help() -> str:
    """``b0..b8, l2, <l2's releases>, lite0..lite4, ...``: the family's variant names for a --help line."""
    out: List[str] = []
    for group in _HELP_GROUPS:
        out.append(group)
        out.extend(r for r, (base, _) in RELEASES.items() if base == group)
    return ", ".join(out)


def variant_names() -> List[str]:
    """The family's variant names: each architecture followed by its releases at other resolutions."""
    out: List[str] = []
    for name in ARCHS:
        out.append(name)
        out.extend(r for r, (base, _) in RELEASES.items() if base == name)
    return out


def condconv_params(b: Block) -> int:
    return b.in_channels * b.experts + b.experts + mbconv_params(b)  # + the routing dense


def condconv_macs(b: Block, size: int) -> Tuple[int, int]:
    macs, size = mbconv_macs(b, size)
    return macs + b.in_channels * b.experts, size  # + the routing dense


def fused_params(b: Block) -> int:
    n = b.kernel_size ** 2 * b.in_channels * b.mid_channels + 2 * b.mid_channels if b.has_expand else 0
    return n + b.mid_channels * b.out_channels + 2 * b.out_channels


def fused_macs(b: Block, size: int) -> Tuple[int, int]:
    macs = 0
    if b.has_expand:
        size = down(size, b.expand_stride)
        macs += size * size * b.kernel_size ** 2 * b.in_channels * b.mid_channels
    size = down(size, b.stride if not b.has_expand else b.project_stride)
    return macs + size * size * b.mid_channels * b.out_channels, size
