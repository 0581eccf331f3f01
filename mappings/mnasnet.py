"""Layout 'native' for MnasNet and MixNet: our ``converter.model.EfficientNet`` built from their specs.

The official layer names carry graph-wide Keras counters (converter/mnasnet.py ``layers``: the
names a fresh graph gives, checked against the official builders' variable lists in
tests/test_mnasnet.py); converter.mapping resolves a checkpoint's own counters by block and by
order. So the rows here name ROLES of a block, not layers: each role's official layer(s) come
from ``layers(spec)``; a role with one layer per group (GroupedConv2D / MixConv, MixNet) repeats
its row per group, ``{g}`` being the group.

Row: (role, module path, layer kind, TF kernel shape in symbols). Symbols: in, mid, out, se, k
(a block; per group: the group's in/out channels and kernel), stem, head, last, classes.
"""
from __future__ import annotations

from typing import Callable, Dict, List, Tuple

from ..mnasnet import MixBlock, layers
from .kinds import BN, CONV, CONV_BIAS, DENSE, DWCONV
from .layout import Layout

LAYOUT = Layout("native", families=("mnasnet", "mixnet"), native=True)

STEM = (
    ("stem",      "stem.conv",   CONV,  (3, 3, 3, "stem")),
    ("stem_bn",   "stem.bn",     BN,    ("stem",)),
)

# MnasBlock (mnasnet_model.py) == model.MBConv with ReLU; roles without a layer in a block
# (no expand conv, no SE) are skipped
BLOCK = (
    ("expand",    "blocks.{i}.expand_conv",  CONV,      (1, 1, "in", "mid")),
    ("bn0",       "blocks.{i}.bn0",          BN,        ("mid",)),
    ("depthwise", "blocks.{i}.dw_conv",      DWCONV,    ("k", "k", "mid", 1)),
    ("bn1",       "blocks.{i}.bn1",          BN,        ("mid",)),
    ("se_reduce", "blocks.{i}.se.reduce",    CONV_BIAS, (1, 1, "mid", "se")),
    ("se_expand", "blocks.{i}.se.expand",    CONV_BIAS, (1, 1, "se", "mid")),
    ("project",   "blocks.{i}.project_conv", CONV,      (1, 1, "mid", "out")),
    ("bn2",       "blocks.{i}.bn2",          BN,        ("out",)),
)

# MixnetBlock (mixnet/mixnet_model.py) == model.MixConvBlock: grouped layers are ModuleLists
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

Rows = Tuple[Tuple[str, str, str, Tuple], ...]


def role_rows(spec, stem: Rows, block_rows: Callable[[object], Rows], head: Rows,
              fmt: Callable[[object, object], Dict[str, int]] = lambda spec, b: {}) -> List[Tuple[Rows, Dict[str, int]]]:
    """``[(rows, dims)]`` with each row's role replaced by its official layer: what
    converter.mapping.expand turns into entries. ``block_rows(block)``: the rule set of a block;
    ``fmt(spec, block)``: a layout's extra module-path fields (timm's stage/index). In a module
    path ``{g}`` is the group, ``{G}`` the group as a ``.g`` suffix ("" for a layer of one group)."""
    L = layers(spec)
    blocks = spec.blocks()
    model_dims = {"stem": spec.stem_channels, "head": spec.head_channels,
                  "last": blocks[-1].out_channels, "classes": spec.num_classes}
    model_layers = {"stem": L.stem, "stem_bn": L.stem_bn, "head": L.head, "head_bn": L.head_bn,
                    "dense": L.dense}
    out = [(tuple((model_layers[r], m, k, s) for r, m, k, s in stem), model_dims)]
    for b, n in zip(blocks, L.blocks):
        mix = isinstance(b, MixBlock)
        splits = b.splits() if mix else {}
        per_group = {
            "expand": [(n.expand[g], {"in": i, "mid": o}) for g, (i, o) in
                       enumerate(zip(splits["expand_in"], splits["expand_out"]))] if mix and n.expand else
                      [(x, {}) for x in n.expand],
            "depthwise": [(n.depthwise[g], {"mid": c, "k": k}) for g, (c, k) in
                          enumerate(zip(splits["dw"], b.dw_kernels))] if mix else [(n.depthwise[0], {})],
            "project": [(n.project[g], {"mid": i, "out": o}) for g, (i, o) in
                        enumerate(zip(splits["project_in"], splits["project_out"]))] if mix else
                       [(n.project[0], {})],
        }
        single = {"bn0": n.bn0, "bn1": n.bn1, "se_reduce": n.se_reduce, "se_expand": n.se_expand, "bn2": n.bn2}
        dims = {"in": b.in_channels, "mid": b.mid_channels, "out": b.out_channels, "se": b.se_channels,
                "k": b.kernel_size}
        extra = {"i": b.index, **fmt(spec, b)}
        for role, module, kind, shape in block_rows(b):
            if role in per_group:
                layers_ = per_group[role]
                for g, (layer, group_dims) in enumerate(layers_):
                    path = module.format(g=g, G="" if len(layers_) == 1 else f".{g}", **extra)
                    out.append((((layer, path, kind, shape),), {**dims, **group_dims}))
            elif single[role]:
                out.append((((single[role], module.format(**extra), kind, shape),), dims))
    out.append((tuple((model_layers[r], m, k, s) for r, m, k, s in head), model_dims))
    return out


def model_rows(spec) -> List[Tuple[Rows, Dict[str, int]]]:
    """This layout's rows over ``spec`` (see ``role_rows``)."""
    return role_rows(spec, STEM, lambda b: BLOCK_MIXCONV if isinstance(b, MixBlock) else BLOCK, HEAD)
