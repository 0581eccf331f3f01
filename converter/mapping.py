"""Expand a layout's mapping table over an architecture's decoded blocks."""
from __future__ import annotations

import functools
import importlib
import pkgutil
import re
from dataclasses import dataclass, replace
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from .arch import ArchSpec, Block
from .errors import ConversionError, listing
from .keras_names import match_counters
from .mappings.kinds import CONSTANTS, DENSE, DWCONV, FLATTENED, VARIABLES
from .registry import family_of, get_arch, kind_of
from .reorder import torch_shape, torch_to_tf

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
    for lay, _ in found:  # what a layout's name decides must not depend on the family
        first = next(x for x, _ in found if x.name == lay.name)
        if lay.form() != first.form():
            raise RuntimeError(f"layout {lay.name}: its declarations differ in {lay.form()} vs {first.form()}")
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


def folder_writer_of(path):
    """The writer (``Layout.folder_writer``) of a converted folder on disk: the folder layout whose
    weights file it holds (ConversionError when none does)."""
    error = None
    for lay in layouts().values():
        if lay.file_form == "folder":
            writer = lay.folder_writer()
            try:
                writer.folder_weights(path)
                return writer
            except ConversionError as e:
                error = error or e
    raise error or ConversionError(f"{path} is a folder, not converted weights")


def get_layout(layout: str, spec: Optional[ArchSpec] = None):
    """The ``Layout`` named ``layout`` (mappings/layout.py) for ``spec``'s family. Without ``spec``: a
    declaration of that name for what the name alone decides (``Layout.form``: file or folder, its
    writer, the ``.pth`` form, the file name), which every family's declaration shares (checked)."""
    if spec is None:
        if layout not in layouts():
            raise ConversionError(f"unknown layout {layout!r}; known: {', '.join(layouts())}")
        return layouts()[layout]
    return _find(layout, spec)[0]


def load_table(layout: str, spec: Optional[ArchSpec] = None):
    """The table module of a layout (``native``...), for ``spec``'s family when it has its own."""
    return _find(layout, spec)[1]


def _resolve(shape: Sequence[Union[int, str]], dims: Dict[str, int]) -> Tuple[int, ...]:
    return tuple(d if isinstance(d, int) else dims[d] for d in shape)


def _rows(rows, scope: str, fmt: Dict[str, object], dims: Dict[str, int]) -> List[Entry]:
    """The entries of ``rows``. A row's layer is a format string over ``fmt``, or a role: a key of
    ``fmt`` whose value is the layer, None (no such layer here: skipped) or ``[(layer, dims), ...]``
    (one layer per group; the module path's ``{g}`` is the group, ``{G}`` ``.g`` or "" for one)."""
    out = []
    for layer, module, kind, shape in rows:
        if "se" in shape and not dims.get("se"):
            continue  # no squeeze-excitation in this block
        if layer in fmt:
            role = fmt[layer]
            if role is None:
                continue
            groups = role if isinstance(role, list) else [(role, {})]
            for g, (name, group_dims) in enumerate(groups):
                path = module.format(g=g, G="" if len(groups) == 1 else f".{g}", **fmt)
                out += _entries(f"{scope}/{name}", path, kind, shape, {**dims, **group_dims})
        else:
            out += _entries(f"{scope}/{layer.format(**fmt)}", module.format(**fmt), kind, shape, dims)
    return out


def _entries(tf_layer: str, path: str, kind: str, shape, dims: Dict[str, int]) -> List[Entry]:
    tf_kernel = _resolve(shape, dims)
    kernel: Tuple[int, ...] = ()
    if kind in FLATTENED:  # row shape (experts, kh, kw, in, out); the variable [experts, kh*kw*in*out]
        kernel = tf_kernel[1:]
        tf_kernel = (tf_kernel[0], int(np.prod(kernel)))
    out = []
    for tf_var, torch_var in VARIABLES[kind]:
        tf_shape = tf_kernel if tf_var in KERNEL_VARIABLES else (tf_kernel[-1] if tf_var == "bias" else tf_kernel[0],)
        out.append(Entry(tf_name=f"{tf_layer}/{tf_var}", key=f"{path}.{torch_var}", kind=kind, tf_shape=tf_shape,
                         shape=torch_shape(kind, tf_shape), kernel=kernel if tf_var in KERNEL_VARIABLES else ()))
    for torch_var, value, dtype in CONSTANTS.get(kind, ()):
        out.append(Entry(tf_name="", key=f"{path}.{torch_var}", kind=kind, tf_shape=(), shape=(), const=value,
                         dtype=dtype))
    return out


def block_dims(b: Block) -> Dict[str, int]:
    k = b.kernel_size
    return {"in": b.in_channels, "mid": b.mid_channels, "out": b.out_channels,
            "se": b.se_channels, "k": k, "experts": b.experts}


def is_classifier(e: Entry) -> bool:
    """The classifier's variables (``scope/head/dense/...``), not a CondConv routing dense."""
    return e.kind == DENSE and ("/head/" in e.tf_name or "/mnas_head/" in e.tf_name)


def _block_rows(table, layout, b: Block):
    """The rule set of one block: its kind's rows in the layout's table (with or without an expand
    conv), else the ones its family brings for that layout."""
    kind = kind_of(b)
    name = kind.rows[0] if b.has_expand else kind.rows[1]
    rows = getattr(table, name, None) if name else None
    if rows is None and layout.name in kind.rows_by_layout:
        rows = kind.rows_by_layout[layout.name][0 if b.has_expand else 1]
    if rows is None:
        raise ConversionError(f"layout {layout} has no rules for {kind.what} blocks ({name or kind.name}); "
                              "use --layout native")
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
    CondConv kernels (``resolve_condconv_names``) and every name the family's reference matches
    (``ModelRef.aliases``: MnasNet/MixNet's Keras layers, by block and by order)."""
    from .tfref.ops import ModelRef  # (no TensorFlow: the family's names only)

    entries = resolve_condconv_names(entries, names)
    ref = family_of(spec).reference()
    if ref.aliases is ModelRef.aliases:
        return entries
    rename = ref.aliases(spec, [e.tf_name for e in entries if e.tf_name], names)
    return [replace(e, tf_name=rename.get(e.tf_name, e.tf_name)) for e in entries]


def expand(variant: Union[str, ArchSpec], layout: str = "native") -> List[Entry]:
    """Every (official variable -> state_dict key) of ``variant`` in ``layout``, in model order.

    Stem and head rows come from the table (their roles named by the family, ``Family.roles``),
    each block's from its kind (``_block_rows``) with the format fields of its place, of its kind
    (``Kind.fields``: CondConv's counters, MnasNet's layers) and of the layout (``Layout.fields``).
    """
    spec = variant if isinstance(variant, ArchSpec) else get_arch(variant)
    lay, table = _find(layout, spec)
    lay.check_variant(spec)
    family = family_of(spec)
    blocks = spec.blocks()
    model_dims = {"stem": spec.stem_channels, "head": spec.head_channels,
                  "last": blocks[-1].out_channels, "classes": spec.num_classes}
    groups = stride_groups(blocks, per_stage=family.groups_per_stage)
    model_fmt = {"head_group": max(groups.values(), default=(0, 0))[0] + 1, **(family.roles(spec) if family.roles else {})}
    entries = _rows(table.STEM, spec.scope, model_fmt, model_dims)
    by_kind: Dict[str, Dict[int, Dict[str, object]]] = {}
    own = lay.fields(spec) if lay.fields else {}
    for b in blocks:
        kind = kind_of(b)
        fmt = {"i": b.index, "stage": b.stage, "j": b.index_in_stage,
               "group": groups[b.index][0], "group_j": groups[b.index][1]}
        if kind.fields:
            if kind.name not in by_kind:
                by_kind[kind.name] = kind.fields(spec)
            fmt.update(by_kind[kind.name][b.index])
        fmt.update(own.get(b.index, {}))
        entries += _rows(_block_rows(table, lay, b), spec.scope, fmt, block_dims(b))
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
    block string: ``Family.groups_per_stage``).
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
    """A ``layout`` state_dict re-keyed for the native model (constants such as num_batches_tracked dropped).

    Both tables name the same official variables; a tensor moves as is where both kinds lay it
    out the same way and is re-laid otherwise (timm's CondConv kernels). Raises ConversionError
    when the keys are not exactly this layout's.
    """
    from .reorder import relayout, same_layout

    if get_layout(layout, spec).native:
        return dict(state_dict)
    entries = expand(spec, layout)
    want = {e.key for e in entries}
    missing, unexpected = sorted(want - set(state_dict)), sorted(set(state_dict) - want)
    if missing or unexpected:
        raise ConversionError(f"the weights do not fit the {layout} layout of {spec.name}: "
                              f"{len(missing)} missing, {len(unexpected)} unexpected keys "
                              f"({', '.join((missing + unexpected)[:3])})")
    native = {e.tf_name: e for e in expand(spec, "native")}
    out = {}
    for e in entries:
        if e.const is not None:
            continue
        n, t = native[e.tf_name], state_dict[e.key]
        if not same_layout(e.kind, n.kind):
            import torch

            t = torch.from_numpy(relayout(t.detach().cpu().numpy(), e.kind, n.kind, e.kernel))
        out[n.key] = t
    return out


def to_official(state_dict: Dict[str, object], spec: ArchSpec) -> Dict[str, np.ndarray]:
    """The way back: a native ``state_dict`` as ``{official variable name: TF-layout float32 array}``,
    in the official creation order, by the native table read in reverse (reorder.torch_to_tf).

    Total: every official variable of ``spec`` (the names tfref.generate writes), nothing else;
    missing or unexpected tensors, or a tensor of another shape, are one ConversionError listing them.
    """
    entries = expand(spec, "native")
    want = {e.key for e in entries}
    consts = {e.key for e in entries if e.const is not None}
    missing = sorted(want - consts - set(state_dict))
    unexpected = sorted(set(state_dict) - want)
    wrong = [f"{e.key} {list(state_dict[e.key].shape)} (expected {list(e.shape)})" for e in entries
             if e.const is None and e.key in state_dict and tuple(state_dict[e.key].shape) != tuple(e.shape)]
    if missing or unexpected or wrong:
        parts = ([f"{len(missing)} missing ({listing(missing)})"] if missing else []) + \
                ([f"{len(unexpected)} unexpected ({listing(unexpected)})"] if unexpected else []) + \
                ([f"{len(wrong)} of another shape ({listing(wrong)})"] if wrong else [])
        raise ConversionError(f"the weights do not hold the {spec.name} model's official variables: {'; '.join(parts)}")
    out: Dict[str, np.ndarray] = {}
    for e in entries:
        if e.const is not None:
            continue
        t = state_dict[e.key]
        a = t.detach().cpu().float().numpy() if hasattr(t, "detach") else np.asarray(t, dtype=np.float32)
        a = torch_to_tf(np.asarray(a, dtype=np.float32), e.kind, multiplier=e.tf_shape[-1] if e.kind == DWCONV else 1,
                        kernel=e.kernel)
        if a.shape != tuple(e.tf_shape):  # a table bug, not user input
            raise RuntimeError(f"{e.key} re-laid as {list(a.shape)}, the official {e.tf_name} is {list(e.tf_shape)}")
        out[e.tf_name] = a
    return out


def output_stem(name: str, layout: str) -> str:
    """File name stem of a conversion (``Layout.output_stem``); an unknown layout: ConversionError."""
    return get_layout(layout).output_stem(name)


def library_fused_stride(layout: str, spec: Optional[ArchSpec] = None) -> Optional[str]:
    """Where ``layout``'s library model (of ``spec``) strides a fused block (arch.FUSED_STRIDES), None: as the spec says."""
    return get_layout(layout, spec).library_fused_stride()


def layout_caveat(spec: ArchSpec, layout: str) -> Optional[str]:
    """One line on where ``layout``'s library computes differently from ``spec``, or None (``Layout.caveat``)."""
    return get_layout(layout, spec).caveat(spec)
