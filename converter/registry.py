"""What the families offer, found by walking converter.families: architectures, kinds, checkpoints.

Every family package declares ``FAMILY`` (converter/family.py). The rest of the toolkit asks here:
``get_arch``, ``kind_of`` (the one lookup of a block's kind), ``family_of``, the cost of a model
(``count_params``, ``count_macs``) and the checkpoints (``all_checkpoints``, ``find_checkpoint``,
``list_lines``). Adding a family = one new package under converter/families/ (or a folder on
``$EFFNET_FAMILIES_PATH``) + its tests; nothing here names one.
"""
from __future__ import annotations

import functools
import importlib
import pkgutil
from typing import Dict, List, Optional, Tuple

from .arch import BN_MOMENTUM_TF, macs_with, params_with
from .checkpoint import DEFAULT_PREPROCESSING, Preprocessing, decimals
from .errors import ConversionError
from .family import Family, Kind, Training


@functools.lru_cache(maxsize=None)
def families() -> Tuple[Family, ...]:
    """Every family declared under converter.families, EfficientNet (V1) first, then by name."""
    package = importlib.import_module(f"{__package__}.families")
    found = []
    for info in pkgutil.iter_modules(package.__path__):
        module = importlib.import_module(f"{package.__name__}.{info.name}")
        family = getattr(module, "FAMILY", None)
        if isinstance(family, Family):
            found.append(family)
    found.sort(key=lambda f: (f.name != "efficientnet", f.name))
    names = [k.name for f in found for k in f.kinds]
    labels = [label for f in found for label in f.labels]
    if len(names) != len(set(names)) or len(labels) != len(set(labels)):  # a family bug, not user input
        raise RuntimeError(f"block kinds or family labels declared twice: "
                           f"{sorted({n for n in names + labels if (names + labels).count(n) > 1})}")
    return tuple(found)


@functools.lru_cache(maxsize=None)
def _kinds() -> Dict[str, Kind]:
    return {k.name: k for f in families() for k in f.kinds}


def kinds() -> Dict[str, Kind]:
    """Kind name -> its ``Kind``, over every family."""
    return dict(_kinds())


def kind_of(block) -> Kind:
    """The ``Kind`` of ``block`` (a kind no family declares is a bug in a family package)."""
    try:
        return _kinds()[block.kind]
    except KeyError:
        raise RuntimeError(f"block kind {block.kind!r} is declared by no family (converter/families/)") from None


def family_of(spec) -> Family:
    """The family whose architectures ``spec`` is one of (by ``spec.family``)."""
    for f in families():
        if spec.family in f.labels:
            return f
    raise RuntimeError(f"architecture family {spec.family!r} is declared by no family (converter/families/)")


def training_of(spec, flavor: Optional[str] = None) -> Training:
    """The official training settings of ``spec`` as its family declares them (``Family.training``)
    for a checkpoint of ``flavor``; a family that declares none: TensorFlow's efficientnet_builder
    batch norm (momentum 0.99, biased moving variance), the architecture's eps and dropout, no drop-connect."""
    family = family_of(spec)
    if family.training is not None:
        return family.training(spec, flavor)
    return Training(bn_momentum=BN_MOMENTUM_TF, bn_eps=float(spec.bn_eps), bessel=False, survival_prob=None,
                    drop_rate=float(spec.dropout), source=f"family {family.name!r} declares no training settings")


def variant_names() -> List[str]:
    """Every variant name of every family (each architecture followed by its releases)."""
    return [n for f in families() for n in f.variant_names()]


def variants_help() -> str:
    """The --variant help: each family's variant names."""
    return ", ".join(f.variants_help for f in families())


def get_arch(variant: str):
    """Look up an architecture by name (``b0``, ``efficientnet-b0``, ``efficientnetv2-s``, ``l2-475``...)."""
    key = str(variant).lower().strip().replace("_", "-")
    for f in families():
        for official, ours in f.name_prefixes.items():
            if key.startswith(official):
                key = ours + key[len(official):]
    for f in families():
        spec = f.lookup(key)
        if spec is not None:
            return spec
    raise ConversionError(f"unknown variant {variant!r}; known: {', '.join(variant_names())}")


def architecture_name(variant: str) -> str:
    """The architecture of a variant name (``l2`` for its 475 px release; else the name itself)."""
    try:
        spec = get_arch(variant)
    except ConversionError:
        return variant
    return spec.arch_name


def count_params(spec) -> int:
    """Parameters of the inference model (BN moving statistics not counted), every block by its kind's cost."""
    return params_with(spec, lambda b: kind_of(b).params(b))


def count_macs(spec, resolution: Optional[int] = None) -> int:
    """Multiply-adds of one forward pass (convs, SE, routing and the classifier), as the paper counts FLOPs."""
    return macs_with(spec, lambda b, size: kind_of(b).macs(b, size), resolution)


# --------------------------------------------------------------------------- checkpoints


def preprocessing_of(cfg) -> Preprocessing:
    """The eval pipeline a pretrained_cfg names (``cfg["preprocessing"]``, declared by its family);
    none named: EfficientNet's (tensorflow/tpu efficientnet preprocessing.py)."""
    name = cfg.get("preprocessing")
    for f in families():
        if name in f.preprocessing:
            return f.preprocessing[name]
    return DEFAULT_PREPROCESSING


def all_checkpoints() -> list:
    """Every family's released checkpoints (``--list``, ``--all --only``), EfficientNet's first."""
    return [c for f in families() for c in f.checkpoints()]


def find_by_name(name: str):
    """The checkpoint ``--list`` shows under ``name`` (its name or its zoo name, any case), or None."""
    key = name.strip().lower()
    for c in all_checkpoints():
        if key == c.name.lower() or (c.zoo_name and key == c.zoo_name.lower()):
            return c
    return None


def find_checkpoint(variant: Optional[str] = None, flavor: Optional[str] = None):
    """The checkpoint of (variant, flavor); ``flavor`` may also be any name ``--list`` shows
    (``efficientnet-b0_aa``, a zoo name, ``efficientnetv2-s-21k``), ``variant`` then optional."""
    if flavor:
        c = find_by_name(flavor)
        if c is not None:
            if variant and get_arch(variant).name != c.variant:
                raise ConversionError(f"--flavor {flavor} is a {c.variant} checkpoint but --variant is {variant}")
            return c
    if not variant:
        raise ConversionError("--variant is required (e.g. --variant b4), or give a zoo model name as --flavor")
    arch = get_arch(variant)
    for f in families():
        hit = f.finder(arch, flavor)
        if hit is not None:
            return hit
    raise ConversionError(f"no official checkpoint of {arch.name}; see --list")


def _pct(x: Optional[float]) -> str:
    return "-" if x is None else f"{x:.{max(1, decimals(x))}f}"


LIST_HEADER = ("name", "zoo name", "params(M)", "GFLOPs", "res", "top1", "top1(zoo)", "url")
LIST_NOTES = (
    "name or zoo name: either one is a valid --flavor (then --variant may be left out).",
    "top1: the published ImageNet top-1 % (the official READMEs: tensorflow/tpu models/official/efficientnet and "
    "its lite/, edgetpu/, condconv/ ...; '-': none published).",
    "top1(zoo): the OpenMMLab model zoo's own figure for its conversion, shown where it differs from the published "
    "one beyond rounding (e.g. NoisyStudent b0: zoo 77.63, published 78.8).",
    "GFLOPs: multiply-adds of one image at the native resolution, computed from the architecture.",
)


def list_lines(checkpoints=None) -> List[str]:
    """The ``--list`` table (aligned columns, LIST_HEADER) and its notes, one string per line."""
    rows = [LIST_HEADER]
    for c in all_checkpoints() if checkpoints is None else checkpoints:
        rows.append((c.name, c.zoo_name or "-", f"{count_params(c.arch) / 1e6:.2f}", f"{count_macs(c.arch) / 1e9:.2f}",
                     str(c.resolution), _pct(c.top1), f"{c.zoo_top1:.2f}" if c.zoo_top1_differs else "", c.url))
    widths = [max(len(r[i]) for r in rows) for i in range(len(LIST_HEADER))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in rows]
    return lines + list(LIST_NOTES)
