"""Layout 'native' for MnasNet and MixNet: our ``converter.model.EfficientNet`` built from their specs.

The official layer names carry graph-wide Keras counters (converter/families/mnasnet/arch.py ``layers``: the
names a fresh graph gives, checked against the official builders' variable lists in
tests/test_mnasnet.py); converter.mapping resolves a checkpoint's own counters by block and by
order. So the rows here name ROLES, not layers: the family gives each role's official layer(s)
(``Family.roles`` for the stem and head, the kinds' ``fields`` for a block: converter/families/mnasnet/arch.py
``model_roles``, ``block_roles``); a role with one layer per group (GroupedConv2D / MixConv,
MixNet) repeats its row per group, ``{g}`` being the group.

Row: (role, module path, layer kind, TF kernel shape in symbols). Symbols: in, mid, out, se, k
(a block; per group: the group's in/out channels and kernel), stem, head, last, classes.
"""
from .kinds import BN, CONV, CONV_BIAS, DENSE, DWCONV
from .layout import Layout

LAYOUT = Layout("native", families=("mnasnet", "mixnet"), native=True)

STEM = (
    ("stem",      "stem.conv",   CONV,  (3, 3, 3, "stem")),
    ("stem_bn",   "stem.bn",     BN,    ("stem",)),
)

# MnasBlock (mnasnet_model.py, block kind mnasblock) == model.MBConv with ReLU; roles without a
# layer in a block (no expand conv, no SE) are skipped
BLOCK_MNAS = (
    ("expand",    "blocks.{i}.expand_conv",  CONV,      (1, 1, "in", "mid")),
    ("bn0",       "blocks.{i}.bn0",          BN,        ("mid",)),
    ("depthwise", "blocks.{i}.dw_conv",      DWCONV,    ("k", "k", "mid", 1)),
    ("bn1",       "blocks.{i}.bn1",          BN,        ("mid",)),
    ("se_reduce", "blocks.{i}.se.reduce",    CONV_BIAS, (1, 1, "mid", "se")),
    ("se_expand", "blocks.{i}.se.expand",    CONV_BIAS, (1, 1, "se", "mid")),
    ("project",   "blocks.{i}.project_conv", CONV,      (1, 1, "mid", "out")),
    ("bn2",       "blocks.{i}.bn2",          BN,        ("out",)),
)

# MixnetBlock (mixnet/mixnet_model.py, block kind mixconv) == model.MixConvBlock: grouped layers are ModuleLists
BLOCK_MIXCONV = (
    ("expand",    "blocks.{i}.expand_conv.convs.{g}",  CONV,      (1, 1, "in", "mid")),
    ("bn0",       "blocks.{i}.bn0",                    BN,        ("mid",)),
    ("depthwise", "blocks.{i}.dw_conv.convs.{g}",      DWCONV,    ("k", "k", "mid", 1)),
    ("bn1",       "blocks.{i}.bn1",                    BN,        ("mid",)),
    ("se_reduce", "blocks.{i}.se.reduce",              CONV_BIAS, (1, 1, "mid", "se")),
    ("se_expand", "blocks.{i}.se.expand",              CONV_BIAS, (1, 1, "se", "mid")),
    ("project",   "blocks.{i}.project_conv.convs.{g}", CONV,      (1, 1, "mid", "out")),
    ("bn2",       "blocks.{i}.bn2",                    BN,        ("out",)),
)

HEAD = (
    ("head",      "head.conv",   CONV,  (1, 1, "last", "head")),
    ("head_bn",   "head.bn",     BN,    ("head",)),
    ("dense",     "classifier",  DENSE, ("head", "classes")),
)

BLOCK_MNAS_EXPAND = BLOCK_MNAS_NO_EXPAND = BLOCK_MNAS
BLOCK_MIXCONV_EXPAND = BLOCK_MIXCONV_NO_EXPAND = BLOCK_MIXCONV
