"""Expand a layout's mapping table over an architecture's decoded blocks."""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple, Union

from .arch import ArchSpec, Block, get_arch
from .errors import ConversionError
from .layout import torch_shape
from .mappings.kinds import VARIABLES

# layout name -> table module under converter.mappings
LAYOUTS = {"native": "efficientnet"}


@dataclass(frozen=True)
class Entry:
    """One official variable and the state_dict tensor it becomes."""

    tf_name: str  # e.g. efficientnet-b0/blocks_1/conv2d/kernel
    key: str  # e.g. blocks.1.expand_conv.weight
    kind: str  # kind of the target module (mappings/kinds.py)
    tf_shape: Tuple[int, ...]
    shape: Tuple[int, ...]  # PyTorch shape


def load_table(layout: str):
    """The table module of a layout (``native``...)."""
    if layout not in LAYOUTS:
        raise ConversionError(f"unknown layout {layout!r}; known: {', '.join(LAYOUTS)}")
    return importlib.import_module(f"converter.mappings.{LAYOUTS[layout]}")


def _resolve(shape: Sequence[Union[int, str]], dims: Dict[str, int]) -> Tuple[int, ...]:
    return tuple(d if isinstance(d, int) else dims[d] for d in shape)


def _rows(rows, scope: str, fmt: Dict[str, int], dims: Dict[str, int]) -> List[Entry]:
    out = []
    for layer, module, kind, shape in rows:
        if "se" in shape and not dims.get("se"):
            continue  # no squeeze-excitation in this block
        tf_kernel = _resolve(shape, dims)
        for tf_var, torch_var in VARIABLES[kind]:
            tf_shape = tf_kernel if tf_var in ("kernel", "depthwise_kernel") else (tf_kernel[-1] if tf_var == "bias" else tf_kernel[0],)
            out.append(Entry(
                tf_name=f"{scope}/{layer.format(**fmt)}/{tf_var}",
                key=f"{module.format(**fmt)}.{torch_var}",
                kind=kind,
                tf_shape=tf_shape,
                shape=torch_shape(kind, tf_shape),
            ))
    return out


def block_dims(b: Block) -> Dict[str, int]:
    return {"in": b.in_channels, "mid": b.mid_channels, "out": b.out_channels,
            "se": b.se_channels, "k": b.kernel_size}


def expand(variant: Union[str, ArchSpec], layout: str = "native") -> List[Entry]:
    """Every (official variable -> state_dict key) of ``variant`` in ``layout``, in model order."""
    spec = variant if isinstance(variant, ArchSpec) else get_arch(variant)
    table = load_table(layout)
    blocks = spec.blocks()
    model_dims = {"stem": spec.stem_channels, "head": spec.head_channels,
                  "last": blocks[-1].out_channels, "classes": spec.num_classes}
    entries = _rows(table.STEM, spec.scope, {}, model_dims)
    for b in blocks:
        rows = table.BLOCK_EXPAND if b.has_expand else table.BLOCK_NO_EXPAND
        fmt = {"i": b.index, "stage": b.stage, "j": b.index_in_stage}
        entries += _rows(rows, spec.scope, fmt, block_dims(b))
    entries += _rows(table.HEAD, spec.scope, {}, model_dims)
    keys = [e.key for e in entries]
    if len(set(keys)) != len(keys):  # a table bug, not user input
        raise RuntimeError(f"mapping table {layout} maps two variables to one key")
    return entries
