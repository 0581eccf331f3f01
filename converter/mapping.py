"""Expand a layout's mapping table over an architecture's decoded blocks."""
from __future__ import annotations

import functools
import importlib
import pkgutil
import re
from dataclasses import dataclass, replace
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from .arch import (FUSED_STRIDE_EXPAND, KIND_CONDCONV, KIND_FUSED, KIND_MBCONV, ArchSpec,
                   Block, get_arch)
from .arch_v2 import FUSED_V2
from .errors import ConversionError
from .keras_names import match_counters
from .reorder import torch_shape
from .mappings.kinds import CONSTANTS, DENSE, FLATTENED, VARIABLES

# official variable names that hold a kernel (the row's whole shape)
KERNEL_VARIABLES = ("kernel", "depthwise_kernel", "condconv_kernel", "depthwise_condconv_kernel")



@dataclass(frozen=True)
class Entry:
    """One official variable and the state_dict tensor it becomes."""

    tf_name: str  # e.g. efficientnet-b0/blocks_1/conv2d/kernel
    key: str  # e.g. blocks.1.expand_conv.weight
    kind: str  # kind of the target module (mappings/kinds.py)
    tf_shape: Tuple[int, ...]
    shape: Tuple[int, ...]  # PyTorch shape
    # a tensor not read from the checkpoint (kinds.CONSTANTS, e.g. BN num_batches_tracked):
    # its value and dtype; tf_name is "" and it consumes no checkpoint variable
    const: Optional[int] = None
    dtype: str = "float32"
    # CondConv (kinds.FLATTENED): each expert's kernel shape (kh, kw, in, out) within tf_shape
    # [experts, kh*kw*in*out]; () otherwise
    kernel: Tuple[int, ...] = ()


@functools.lru_cache(maxsize=None)
def _declared() -> Tuple[Tuple[object, object], ...]:
    """(layout, table module) of every table file in converter.mappings that declares a ``LAYOUT``
    (mappings/layout.py ``Layout``), native first, then by name."""
    package = importlib.import_module(f"{__package__}.mappings")
    found = []
    for info in pkgutil.iter_modules(package.__path__):
        module = importlib.import_module(f"{package.__name__}.{info.name}")
        layout = getattr(module, "LAYOUT", None)
        if layout is not None:
            found.append((layout, module))
    keys = [(lay.name, fam) for lay, _ in found for fam in (lay.families or (None,))]
    if len(keys) != len(set(keys)):  # two table files declaring one layout for one family
        raise RuntimeError(f"layouts declared twice: {sorted({k for k in keys if keys.count(k) > 1}, key=str)}")
    return tuple(sorted(found, key=lambda lm: (not lm[0].native, lm[0].name, lm[0].families)))


def layouts() -> Dict[str, object]:
    """Layout name -> its ``Layout`` (the declaration for EfficientNet's names): the --layout choices."""
    out: Dict[str, object] = {}
    for layout, _ in _declared():
        if layout.name not in out or not layout.families:
            out[layout.name] = layout
    return out


def _find(layout: str, spec: Optional[ArchSpec] = None):
    """(Layout, table module) of ``layout`` for ``spec``'s family (its own table where it has one)."""
    declared = _declared()
    if layout not in {lay.name for lay, _ in declared}:
        raise ConversionError(f"unknown layout {layout!r}; known: {', '.join(layouts())}")
    family = getattr(spec, "family", None)
    own = {fam for lay, _ in declared for fam in lay.families}
    for lay, module in declared:
        if lay.name == layout and (family in lay.families if family in own else not lay.families):
            return lay, module
    if family in own:
        have = ", ".join(lay.name for lay, _ in declared if family in lay.families)
        raise ConversionError(f"layout {layout} has no model for variant {spec.name} ({family} layouts: "
                              f"{have}); use --layout native")
    raise ConversionError(f"layout {layout} has no model for variant {getattr(spec, 'name', '?')}; use --layout native")


def get_layout(layout: str, spec: Optional[ArchSpec] = None):
    """The ``Layout`` named ``layout`` (mappings/layout.py), for ``spec``'s family when it has its own table."""
    return _find(layout, spec)[0]


def load_table(layout: str, spec: Optional[ArchSpec] = None):
    """The table module of a layout (``native``...), for ``spec``'s family when it has its own."""
    return _find(layout, spec)[1]


def __getattr__(name: str):
    """``LAYOUTS`` (layout name -> table module name) and ``FAMILY_TABLES`` ((family, layout) -> table
    module name), read from the declarations."""
    if name == "LAYOUTS":
        return {lay.name: module.__name__.rpartition(".")[2] for lay, module in _declared() if not lay.families}
    if name == "FAMILY_TABLES":
        return {(fam, lay.name): module.__name__.rpartition(".")[2]
                for lay, module in _declared() for fam in lay.families}
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _resolve(shape: Sequence[Union[int, str]], dims: Dict[str, int]) -> Tuple[int, ...]:
    return tuple(d if isinstance(d, int) else dims[d] for d in shape)


def _rows(rows, scope: str, fmt: Dict[str, int], dims: Dict[str, int]) -> List[Entry]:
    out = []
    for layer, module, kind, shape in rows:
        if "se" in shape and not dims.get("se"):
            continue  # no squeeze-excitation in this block
        tf_kernel = _resolve(shape, dims)
        kernel: Tuple[int, ...] = ()
        if kind in FLATTENED:  # row shape (experts, kh, kw, in, out); the variable [experts, kh*kw*in*out]
            kernel = tf_kernel[1:]
            tf_kernel = (tf_kernel[0], int(np.prod(kernel)))
        for tf_var, torch_var in VARIABLES[kind]:
            tf_shape = tf_kernel if tf_var in KERNEL_VARIABLES else (tf_kernel[-1] if tf_var == "bias" else tf_kernel[0],)
            out.append(Entry(
                tf_name=f"{scope}/{layer.format(**fmt)}/{tf_var}",
                key=f"{module.format(**fmt)}.{torch_var}",
                kind=kind,
                tf_shape=tf_shape,
                shape=torch_shape(kind, tf_shape),
                kernel=kernel if tf_var in KERNEL_VARIABLES else (),
            ))
        for torch_var, value, dtype in CONSTANTS.get(kind, ()):
            out.append(Entry(tf_name="", key=f"{module.format(**fmt)}.{torch_var}", kind=kind,
                             tf_shape=(), shape=(), const=value, dtype=dtype))
    return out


def block_dims(b: Block) -> Dict[str, int]:
    k = b.kernel_size
    return {"in": b.in_channels, "mid": b.mid_channels, "out": b.out_channels,
            "se": b.se_channels, "k": k, "experts": b.experts}


def is_classifier(e: Entry) -> bool:
    """The classifier's variables (``scope/head/dense/...``), not a CondConv routing dense."""
    return e.kind == DENSE and ("/head/" in e.tf_name or "/mnas_head/" in e.tf_name)


def _keras_name(base: str, n: int) -> str:
    """Keras' unique layer names: base, base_1, base_2, ..."""
    return base if n == 0 else f"{base}_{n}"


# block kind (arch.BLOCK_KINDS) -> the table's rule sets (with, without expand conv) and what to call it
KIND_ROWS = {
    KIND_MBCONV: ("BLOCK_EXPAND", "BLOCK_NO_EXPAND", "MBConv"),
    KIND_FUSED: ("BLOCK_FUSED_EXPAND", "BLOCK_FUSED_NO_EXPAND", "fused (EdgeTPU)"),
    KIND_CONDCONV: ("BLOCK_CONDCONV_EXPAND", "BLOCK_CONDCONV_NO_EXPAND", "CondConv"),
    FUSED_V2: ("BLOCK_FUSED_V2_EXPAND", "BLOCK_FUSED_V2_NO_EXPAND", "fused (EfficientNetV2)"),
}


def _block_rows(table, b: Block):
    """The rule set of one block: by its kind (KIND_ROWS), with or without expand conv."""
    try:
        expand_rows, plain_rows, what = KIND_ROWS[b.kind]
    except KeyError:
        raise RuntimeError(f"block kind {b.kind!r} has no rule sets in converter.mapping.KIND_ROWS") from None
    name = expand_rows if b.has_expand else plain_rows
    rows = getattr(table, name, None)
    if rows is None:
        raise ConversionError(f"layout {getattr(table, 'LAYOUT', table.__name__)} has no rules for "
                              f"{what} blocks ({name}); use --layout native")
    return rows


# condconv_layers kernels in a checkpoint: [scope/][model/]blocks_N/LAYER[_n]/VARIABLE
_CONDCONV_NAME = re.compile(
    r"^(?P<scope>[^/]+)/(?:model/)?blocks_(?P<i>\d+)/"
    r"(?P<base>depthwise_cond_conv2d|cond_conv2d)(?:_(?P<n>\d+))?/"
    r"(?P<var>depthwise_condconv_kernel|condconv_kernel)$")


def resolve_condconv_names(entries: List[Entry], names: Sequence[str]) -> List[Entry]:
    """``entries`` with each CondConv kernel's name replaced by the checkpoint's own.

    The kernels' names carry model-wide Keras counters and, built with tf_keras, an extra
    ``model/`` element (shared/reference/README.md, CondConv naming caveat); both forms are
    accepted. Within a block, conditional kernels are matched by their order (the counter):
    expand before project; the depthwise one alone. A block whose checkpoint kernels do not
    pair up one to one raises ConversionError; a block without any is left to the missing-variable check.
    """
    targets = [e.tf_name for e in entries if e.kind in FLATTENED]
    if not targets:
        return entries
    rename = match_counters(targets, names, _CONDCONV_NAME, key=lambda m: (m["scope"], int(m["i"]), m["var"]),
                            describe=lambda k: (f"{k[0]}/blocks_{k[1]}", k[2]),
                            suffix=": not an official CondConv checkpoint of this variant")
    return [replace(e, tf_name=rename.get(e.tf_name, e.tf_name)) for e in entries]


def resolve_names(spec: ArchSpec, entries: List[Entry], names: Sequence[str]) -> List[Entry]:
    """``entries`` with the names that carry Keras counters replaced by the checkpoint's own:
    CondConv kernels (``resolve_condconv_names``) and, for MnasNet/MixNet, every Keras layer
    (converter.mnasnet.keras_aliases: by block and by order, with or without the model element)."""
    entries = resolve_condconv_names(entries, names)
    if spec.family not in ("mnasnet", "mixnet"):
        return entries
    from .mnasnet import keras_aliases

    rename = keras_aliases([e.tf_name for e in entries if e.tf_name], names)
    return [replace(e, tf_name=rename.get(e.tf_name, e.tf_name)) for e in entries]


def expand(variant: Union[str, ArchSpec], layout: str = "native") -> List[Entry]:
    """Every (official variable -> state_dict key) of ``variant`` in ``layout``, in model order."""
    spec = variant if isinstance(variant, ArchSpec) else get_arch(variant)
    table = load_table(layout, spec)
    check_variant(spec, layout)
    if hasattr(table, "model_rows"):  # rows already resolved per layer (mappings/mnasnet.py)
        entries = [e for rows, dims in table.model_rows(spec) for e in _rows(rows, spec.scope, {}, dims)]
        if len({e.key for e in entries}) != len(entries):  # a table bug, not user input
            raise RuntimeError(f"mapping table {layout} maps two variables to one key")
        return entries
    blocks = spec.blocks()
    model_dims = {"stem": spec.stem_channels, "head": spec.head_channels,
                  "last": blocks[-1].out_channels, "classes": spec.num_classes}
    groups = stride_groups(blocks, per_stage=getattr(spec, "groups_per_stage", False))
    model_fmt = {"head_group": max(groups.values(), default=(0, 0))[0] + 1}
    entries = _rows(table.STEM, spec.scope, model_fmt, model_dims)
    cc = 0  # CondConv blocks so far: the Keras layer counters are model-wide
    for b in blocks:
        rows = _block_rows(table, b)
        fmt = {"i": b.index, "stage": b.stage, "j": b.index_in_stage,
               "group": groups[b.index][0], "group_j": groups[b.index][1]}
        if b.condconv:
            # efficientnet_model.MBConvBlock._build creates three CondConv2D per block (fused,
            # expand, project; only expand and project get variables) and one depthwise
            fmt.update(cce=_keras_name("cond_conv2d", 3 * cc + 1), ccp=_keras_name("cond_conv2d", 3 * cc + 2),
                       ccd=_keras_name("depthwise_cond_conv2d", cc))
            cc += 1
        entries += _rows(rows, spec.scope, fmt, block_dims(b))
    entries += _rows(table.HEAD, spec.scope, model_fmt, model_dims)
    keys = [e.key for e in entries]
    if len(set(keys)) != len(keys):  # a table bug, not user input
        raise RuntimeError(f"mapping table {layout} maps two variables to one key")
    return entries


def library_model(spec: ArchSpec, layout: str) -> str:
    """The name of ``spec``'s model in ``layout``'s library (``Layout.library_model``)."""
    return get_layout(layout, spec).library_model(spec)


def check_variant(spec: ArchSpec, layout: str) -> None:
    """Refuse (ConversionError) a variant that ``layout``'s library has no model for (``Layout.check_variant``)."""
    get_layout(layout, spec).check_variant(spec)


def stride_groups(blocks: Sequence[Block], per_stage: bool = False) -> Dict[int, Tuple[int, int]]:
    """Block index -> (group, index in group): format fields ``group`` and ``group_j``.

    Groups are numbered from 1 (0 is the stem): a new group starts at the first stage and at
    every later stage whose first block has stride > 1; a stage starting with stride 1 joins
    the group before it. (mmpretrain's EfficientNet ``model_scaling`` groups its
    ``backbone.layers`` this way; ``head_group``, the model-level field, is the number of groups + 1.)
    ``per_stage``: every stage is a group (mmpretrain's EfficientNetV2 backbone, one layer per
    block string: ArchSpec ``groups_per_stage``).
    """
    out: Dict[int, Tuple[int, int]] = {}
    group, j = 0, 0
    for b in blocks:
        if b.index_in_stage == 0 and (group == 0 or b.stride != 1 or per_stage):
            group, j = group + 1, 0
        out[b.index] = (group, j)
        j += 1
    return out


def to_native(state_dict: Dict[str, object], spec: ArchSpec, layout: str) -> Dict[str, object]:
    """A ``layout`` state_dict re-keyed for the native model (``Layout.to_native``)."""
    return get_layout(layout, spec).to_native(state_dict, spec)


def output_stem(name: str, layout: str) -> str:
    """File name stem of a conversion (``Layout.output_stem``); an unknown layout: ConversionError."""
    return get_layout(layout).output_stem(name)


def library_fused_stride(layout: str) -> Optional[str]:
    """Where ``layout``'s library model strides a fused block (arch.FUSED_STRIDES), None: as the spec says."""
    return get_layout(layout).library_fused_stride()


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
        if b.fused and b.stride > 1 and size_here % 2 == 0:
            return False
        size_here = -(-size_here // b.stride)
    return True


def layout_caveat(spec: ArchSpec, layout: str) -> Optional[str]:
    """One line on where ``layout``'s library computes differently from ``spec``, or None (``Layout.caveat``)."""
    return get_layout(layout).caveat(spec)
