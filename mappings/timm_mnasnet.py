"""Layout 'timm' for MixNet and MnasNet-A1: timm's ``tf_mixnet_s/m/l`` and ``semnasnet_050/075/100/140``.

timm 1.0 (timm/models/efficientnet.py ``_gen_mixnet_s/_m``, ``_gen_mnasnet_a1``; blocks in
_efficientnet_blocks.py): ``tf_mixnet_*`` are built with 'same' padding and BN eps 1e-3 (BN_EPS_TF_DEFAULT);
the ``semnasnet_*`` models must be created with ``pad_type="same", bn_eps=1e-3`` to compute what
the official MnasNet computes (``timm.create_model("semnasnet_100", pad_type="same", bn_eps=1e-3)``;
``MODEL_KWARGS``). Their MixedConv2d splits channels as the official code (remainder in the first
group); a layer of several groups is a ModuleList (``conv_pw.0``, ``conv_pw.1``), of one group a
plain conv. SE: ``se.conv_reduce`` / ``se.conv_expand`` with the block's activation, reduced from
the block input. Rows name roles, resolved per layer by the family (mappings/mnasnet.py).
"""
from __future__ import annotations

from typing import Dict

from .kinds import BN_TRACKED, CONV, CONV_BIAS, DENSE, DWCONV
from .layout import Layout

VARIANTS = {"mixnet-s": "tf_mixnet_s", "mixnet-m": "tf_mixnet_m", "mixnet-l": "tf_mixnet_l",
            "mnasnet-a1": "semnasnet_100", "mnasnet-a1_d1.4": "semnasnet_140", "mnasnet-a1_d0.75": "semnasnet_075",
            "mnasnet-a1_d0.5": "semnasnet_050"}
# the grid: the same weights as the 224 px model of its depth multiplier, evaluated at another size
for _w, _model in (("1.4", "semnasnet_140"), ("1.0", "semnasnet_100"), ("0.75", "semnasnet_075"),
                   ("0.5", "semnasnet_050")):
    VARIANTS.update({f"mnasnet-a1_d{_w}_i{r}": _model for r in (192, 160, 128, 96)})
NOT_OFFICIAL = {
    "mnasnet-small": "timm's mnasnet_small adds a residual to its first block (8 -> 8 channels), the official "
                     "one has none (block string i16 != o8)",
    **{v: "timm has no MnasNet-A1 at depth multiplier 0.35" for v in
       ("mnasnet-a1_d0.35", *(f"mnasnet-a1_d0.35_i{r}" for r in (192, 160, 128, 96)))},
}

# timm's stages: how many official block strings each holds (its arch_def rows)
STAGE_STRINGS = {"mixnet": (1, 2, 2, 2, 2, 2), "mnasnet": (1, 1, 1, 1, 1, 1, 1)}

STEM = (
    ("stem",      "conv_stem",   CONV,       (3, 3, 3, "stem")),
    ("stem_bn",   "bn1",         BN_TRACKED, ("stem",)),
)
# InvertedResidual (expand conv present), for MnasBlock and MixnetBlock alike
BLOCK_MNAS_EXPAND = BLOCK_MIXCONV_EXPAND = (
    ("expand",    "blocks.{s}.{j}.conv_pw{G}",       CONV,       (1, 1, "in", "mid")),
    ("bn0",       "blocks.{s}.{j}.bn1",              BN_TRACKED, ("mid",)),
    ("depthwise", "blocks.{s}.{j}.conv_dw{G}",       DWCONV,     ("k", "k", "mid", 1)),
    ("bn1",       "blocks.{s}.{j}.bn2",              BN_TRACKED, ("mid",)),
    ("se_reduce", "blocks.{s}.{j}.se.conv_reduce",   CONV_BIAS,  (1, 1, "mid", "se")),
    ("se_expand", "blocks.{s}.{j}.se.conv_expand",   CONV_BIAS,  (1, 1, "se", "mid")),
    ("project",   "blocks.{s}.{j}.conv_pwl{G}",      CONV,       (1, 1, "mid", "out")),
    ("bn2",       "blocks.{s}.{j}.bn3",              BN_TRACKED, ("out",)),
)
# DepthwiseSeparableConv (expand ratio 1)
BLOCK_MNAS_NO_EXPAND = BLOCK_MIXCONV_NO_EXPAND = (
    ("depthwise", "blocks.{s}.{j}.conv_dw{G}",       DWCONV,     ("k", "k", "mid", 1)),
    ("bn1",       "blocks.{s}.{j}.bn1",              BN_TRACKED, ("mid",)),
    ("se_reduce", "blocks.{s}.{j}.se.conv_reduce",   CONV_BIAS,  (1, 1, "mid", "se")),
    ("se_expand", "blocks.{s}.{j}.se.conv_expand",   CONV_BIAS,  (1, 1, "se", "mid")),
    ("project",   "blocks.{s}.{j}.conv_pw{G}",       CONV,       (1, 1, "mid", "out")),
    ("bn2",       "blocks.{s}.{j}.bn2",              BN_TRACKED, ("out",)),
)
HEAD = (
    ("head",      "conv_head",   CONV,       (1, 1, "last", "head")),
    ("head_bn",   "bn2",         BN_TRACKED, ("head",)),
    ("dense",     "classifier",  DENSE,      ("head", "classes")),
)


def _stages(spec) -> Dict[int, Dict[str, int]]:
    """Block index -> {"s": its timm stage, "j": its index in it}: the module paths' fields."""
    per_stage = STAGE_STRINGS[spec.family]
    stage_of_string = [s for s, n in enumerate(per_stage) for _ in range(n)]
    if len(stage_of_string) != len(spec.block_strings):  # a table bug, not user input
        raise RuntimeError(f"timm stages of {spec.name}: {per_stage} do not cover {len(spec.block_strings)} strings")
    out, seen = {}, {}
    for b in spec.blocks():
        s = stage_of_string[b.stage]
        out[b.index] = {"s": s, "j": seen.get(s, 0)}
        seen[s] = seen.get(s, 0) + 1
    return out


LAYOUT = Layout("timm", families=("mnasnet", "mixnet"), variants=VARIANTS, not_official=NOT_OFFICIAL, fields=_stages)
