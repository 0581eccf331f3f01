"""The conversion pipeline: reader -> copy selection -> mapping table -> layout -> atomic writer."""
from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from . import __version__
from .arch import ArchSpec
from .errors import ConversionError, check_space, disk_full_as_error, listing
from .reorder import tf_to_torch
from .mapping import Entry, expand, get_layout, is_classifier, layout_caveat, resolve_names
from .metadata import encode
from .sources.readers import CheckpointReader
from .pipeline import Deferred, SyncingWriter, patch_header, prefetch
from .writer import STALE_TEMP_AGE_S, AtomicFile, publish, remove_stale_temps, write_safetensors

log = logging.getLogger("converter")

# tf.train.ExponentialMovingAverage names its shadow variables NAME/ExponentialMovingAverage
EMA_SUFFIX = "/ExponentialMovingAverage"

# Variables a released checkpoint holds that are not part of the model: skipped by rule, by name.
SKIP_RULES: Tuple[Tuple[str, "re.Pattern[str]"], ...] = (
    ("training step counter", re.compile(r"^global_step$")),
    # tf.train.RMSPropOptimizer slots (official trainer), and the other TF1 optimizers' slots
    ("optimizer slot", re.compile(r"/(RMSProp|RMSProp_1|Momentum|Adam|Adam_1)$")),
    ("optimizer state", re.compile(r"^(beta1_power|beta2_power)$")),
)

FORMATS = ("safetensors", "pth")
PREFETCH_DEPTH = 2  # tensors read and re-laid ahead of the writer (memory: a few tensors)


def skip_reason(name: str) -> Optional[str]:
    """Why a checkpoint variable is deliberately not converted, or None."""
    for reason, pattern in SKIP_RULES:
        if pattern.search(name):
            return reason
    return None


@dataclass
class Selection:
    """Which checkpoint variable feeds each state_dict tensor."""

    spec: ArchSpec  # the checkpoint's architecture (its classifier included)
    pairs: List[Tuple[Entry, str]]
    ema: bool  # EMA twins were used (for every variable that has one)
    warnings: List[str] = field(default_factory=list)
    skipped: Dict[str, int] = field(default_factory=dict)
    constants: List[Entry] = field(default_factory=list)  # tensors not read from the checkpoint (kinds.CONSTANTS)


def checkpoint_scopes(reader: CheckpointReader) -> List[str]:
    """The top-level scopes of the model variables (skip rules applied), e.g. ['efficientnet-b3']."""
    return sorted({n.split("/", 1)[0] for n in reader.names() if not skip_reason(n)})


def checkpoint_num_classes(reader: CheckpointReader, spec: ArchSpec) -> Optional[int]:
    """Number of classes from the classifier's kernel in the checkpoint (None when absent)."""
    names = set(reader.names())
    for e in expand(spec):
        if is_classifier(e) and len(e.tf_shape) == 2:
            for name in (e.tf_name + EMA_SUFFIX, e.tf_name):
                if name in names:
                    return int(reader.shape(name)[-1])
    return None


def _model_variables(reader: CheckpointReader) -> Tuple[List[str], Dict[str, int]]:
    """Step 1: the checkpoint's model variables, and how many were skipped by each SKIP_RULES reason."""
    skipped: Dict[str, int] = {}
    model_names = []
    for n in reader.names():
        reason = skip_reason(n)
        if reason:
            skipped[reason] = skipped.get(reason, 0) + 1
        else:
            model_names.append(n)
    if not model_names:
        raise ConversionError(f"checkpoint {reader.prefix} holds no model variables")
    return model_names, skipped


def _check_scope_and_classes(reader: CheckpointReader, spec: ArchSpec, model_names: List[str]) -> None:
    """Step 2: the checkpoint is of ``spec``'s model (scope) and has its number of classes."""
    scopes = sorted({n.split("/", 1)[0] for n in model_names})
    if spec.scope not in scopes:
        got = scopes[0] if len(scopes) == 1 else "{" + ", ".join(scopes) + "}"
        hint = ""
        if len(scopes) == 1 and scopes[0].startswith("efficientnet-"):
            hint = f": pass --variant {scopes[0][len('efficientnet-'):]}"
        raise ConversionError(
            f"the checkpoint's scope is {got} but --variant {spec.name} expects {spec.scope}{hint}")
    classes = checkpoint_num_classes(reader, spec)
    if classes is not None and classes != spec.num_classes:
        raise ConversionError(
            f"the checkpoint's classifier has {classes} classes but the model was asked for {spec.num_classes}"
            " (use --num-classes to match, or leave it out)")


@dataclass
class _Match:
    pairs: List[Tuple[Entry, str]] = field(default_factory=list)
    missing: List[str] = field(default_factory=list)
    shape_errors: List[str] = field(default_factory=list)
    no_twin: List[str] = field(default_factory=list)
    no_raw: List[str] = field(default_factory=list)
    consumed: set = field(default_factory=set)


def _match(reader: CheckpointReader, entries: Sequence[Entry], use_ema: bool) -> _Match:
    """Step 3: each table entry's source variable (its EMA twin or the raw one), and every problem met."""
    name_set = set(reader.names())
    m = _Match()
    for e in entries:
        if e.const is not None:
            continue
        raw, twin = e.tf_name, e.tf_name + EMA_SUFFIX
        has_raw, has_twin = raw in name_set, twin in name_set
        m.consumed.update(n for n in (raw, twin) if n in name_set)
        if not (has_raw or has_twin):
            m.missing.append(raw)
            continue
        for n in (raw, twin):
            if n in name_set and tuple(reader.shape(n)) != e.tf_shape:
                m.shape_errors.append(f"{n} is {list(reader.shape(n))} not {list(e.tf_shape)}")
        if use_ema:
            src = twin if has_twin else raw
            if not has_twin:
                m.no_twin.append(raw)
        else:
            src = raw if has_raw else None
            if not has_raw:
                m.no_raw.append(raw)
        if src is not None:
            m.pairs.append((e, src))
    return m


def _check_totality(reader: CheckpointReader, spec: ArchSpec, m: _Match, model_names: List[str]) -> None:
    """Step 4: one error listing every missing, unexpected and mis-shaped variable; float dtypes only."""
    unexpected = [n for n in model_names if n not in m.consumed]
    problems = []
    if m.missing:
        problems.append(f"{len(m.missing)} missing ({listing(m.missing)})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected ({listing(unexpected)})")
    if m.shape_errors:
        problems.append(f"{len(m.shape_errors)} with a wrong shape ({listing(m.shape_errors)})")
    if problems:
        raise ConversionError(
            f"checkpoint {reader.prefix} does not match the {spec.name} model ({spec.scope}): " + "; ".join(problems))
    if m.no_raw:
        raise ConversionError(
            f"--no-ema: the checkpoint holds only EMA weights for {len(m.no_raw)} variables "
            f"({listing(m.no_raw)}); convert without --no-ema")
    for e, src in m.pairs:
        dt = reader.dtype(src)
        if not np.issubdtype(dt, np.floating) and dt.name != "bfloat16":
            raise ConversionError(f"{src} has dtype {dt}, expected a floating-point tensor")


def _ema_warnings(m: _Match, use_ema: bool) -> Tuple[bool, List[str]]:
    """Step 5: whether EMA weights were used, and the warnings for variables without a twin."""
    warnings = []
    ema_used = use_ema and len(m.no_twin) < len(m.pairs)
    if use_ema and len(m.no_twin) == len(m.pairs):
        warnings.append("the checkpoint has no ExponentialMovingAverage twins: converting the raw weights "
                        "(the official evaluation uses EMA weights; accuracy may be lower)")
    elif use_ema and m.no_twin:
        warnings.append(f"{len(m.no_twin)} variables have no EMA twin, their raw values are used: {listing(m.no_twin)}")
    return ema_used, warnings


def select(reader: CheckpointReader, spec: ArchSpec, layout: str = "native", use_ema: bool = True) -> Selection:
    """Match every checkpoint variable to the model, or raise one error listing all problems.

    EMA twins are taken for every variable that has one (BN moving statistics included);
    optimizer slots and global_step are skipped by SKIP_RULES; anything else left over, any
    missing variable and any shape mismatch is an error.
    """
    model_names, skipped = _model_variables(reader)
    _check_scope_and_classes(reader, spec, model_names)
    entries = resolve_names(spec, expand(spec, layout), reader.names())  # Keras counters (CondConv, MnasNet/MixNet)
    m = _match(reader, entries, use_ema)
    _check_totality(reader, spec, m, model_names)
    ema_used, warnings = _ema_warnings(m, use_ema)
    constants = [e for e in entries if e.const is not None]  # consume no checkpoint variable
    return Selection(spec=spec, pairs=m.pairs, ema=ema_used, warnings=warnings, skipped=skipped, constants=constants)


def output_shapes(selection: Selection, drop_background: bool = False) -> List[Tuple[str, Tuple[int, ...]]]:
    """(key, PyTorch shape) of every output tensor, in write order."""
    out = []
    for e, _ in selection.pairs:
        shape = e.shape
        if drop_background and is_classifier(e):
            shape = (shape[0] - 1,) + tuple(shape[1:])
        out.append((e.key, shape))
    out += [(e.key, e.shape) for e in selection.constants]
    return out


def output_specs(selection: Selection, drop_background: bool = False) -> List[Tuple[str, Tuple[int, ...], np.dtype]]:
    """(key, PyTorch shape, dtype) of every output tensor, in write order."""
    dtypes = {e.key: e.dtype for e in selection.constants}
    return [(k, shape, np.dtype(dtypes.get(k, "float32"))) for k, shape in output_shapes(selection, drop_background)]


def iter_tensors(reader: CheckpointReader, selection: Selection, allow_nonfinite: bool = False,
                 progress=None, drop_background: bool = False) -> Iterator[Tuple[str, np.ndarray]]:
    """Yield (key, float32 tensor in PyTorch layout), reading one checkpoint variable at a time.

    ``drop_background``: the classifier loses output 0 (the background class of 1001-class
    checkpoints), giving ImageNet's 1000 indices.
    """
    for (e, src), (_, shape) in zip(selection.pairs, output_shapes(selection, drop_background)):
        value = reader.read(src)
        if value.dtype != np.float32:
            value = value.astype(np.float32)
        if not allow_nonfinite and not np.isfinite(value).all():
            bad = int((~np.isfinite(value)).sum())
            raise ConversionError(
                f"{src} holds {bad} non-finite values (NaN/inf): refusing to convert; "
                "pass --allow-nonfinite to convert anyway")
        if drop_background and is_classifier(e):
            value = value[..., 1:]  # TF layout: the class axis is last for kernel and bias
        out = tf_to_torch(value, e.kind, e.kernel)
        if out.shape != shape:  # the layout rule and the table disagree: a bug, not user input
            raise RuntimeError(f"{src}: layout gave {out.shape}, table expects {shape}")
        if progress is not None:
            progress.update(1)
        yield e.key, out
    for e in selection.constants:
        yield e.key, np.array(e.const, dtype=e.dtype)


# torch.save's zip archive beyond the tensor bytes: per tensor a local header, a central-directory
# entry and 64-byte alignment (~200 B with the names), plus the pickle and the metadata (~64 kB)
PTH_OVERHEAD_PER_TENSOR = 256
PTH_OVERHEAD = 64 * 1024


def output_bytes(specs: Sequence[Tuple[str, Tuple[int, ...], np.dtype]], suffixes: Sequence[str]) -> int:
    """An upper estimate of the bytes the files with ``suffixes`` (.safetensors/.pth) take on disk."""
    data = sum(int(np.prod(shape, dtype=np.int64)) * np.dtype(dt).itemsize for _, shape, dt in specs)
    total = 0
    for suffix in suffixes:
        if suffix == ".safetensors":  # JSON header: ~100 bytes a tensor, plus the metadata
            total += data + 128 * len(specs) + 16 * 1024
        else:
            total += data + PTH_OVERHEAD_PER_TENSOR * len(specs) + PTH_OVERHEAD
    return total


def output_paths(output_dir: Path, stem: str, fmt: str) -> List[Path]:
    """The files a conversion writes: ``{stem}.safetensors`` and/or ``{stem}.pth``."""
    if fmt not in FORMATS + ("both",):
        raise ConversionError(f"unknown --format {fmt!r}; use safetensors, pth or both")
    kinds = FORMATS if fmt == "both" else (fmt,)
    return [Path(output_dir) / f"{stem}.{k}" for k in kinds]


@dataclass
class Result:
    outputs: List[Path]
    selection: Selection
    metadata: Dict[str, object]
    seconds: float
    # commit=False: the written files under their temp names (AtomicFile), in ``outputs`` order;
    # the caller commits or discards them
    pending: List[AtomicFile] = field(default_factory=list)


def convert(reader: CheckpointReader, spec: ArchSpec, cfg: Dict[str, object], outputs: Sequence[Path],
            layout: str = "native", use_ema: bool = True, force: bool = False,
            allow_nonfinite: bool = False, progress: bool = False, drop_background: bool = False,
            commit: bool = True) -> Result:
    """Convert ``reader``'s checkpoint for ``spec`` into ``outputs`` (.safetensors and/or .pth).

    ``cfg`` is the metadata to store (variant, flavor, preprocessing, source...). Files appear
    only when everything succeeded; an existing output is kept unless ``force``.
    ``spec.num_classes`` is the checkpoint's; with ``drop_background`` the output has one fewer.
    ``commit=False``: the files stay under their temp names, fsynced (``Result.pending``), for the
    caller to check and then commit or discard (``--verify``: final names only after the check).
    """
    t0 = time.perf_counter()
    outputs = [Path(p) for p in outputs]
    for p in outputs:
        if p.exists() and not force:
            raise ConversionError(f"{p} exists; pass --force to overwrite it")
        if p.suffix not in (".safetensors", ".pth"):
            raise ConversionError(f"cannot write {p}: the extension must be .safetensors or .pth")
    if drop_background and spec.num_classes != 1001:
        raise ConversionError(
            f"--drop-background needs a classifier with a background class (1001 outputs); this one has {spec.num_classes}")
    selection = select(reader, spec, layout=layout, use_ema=use_ema)
    for w in selection.warnings:
        log.warning("warning: %s", w)
    meta = dict(cfg)
    meta.update(ema=selection.ema, num_classes=spec.num_classes - (1 if drop_background else 0), layout=layout,
                converter_version=__version__)
    if drop_background:
        meta["background_dropped"] = "true"
    if spec.has_strided_fused:  # EdgeTPU: which conv strides (arch.FUSED_STRIDES); load_model and verify follow it
        meta["fused_stride"] = spec.fused_stride
    caveat = layout_caveat(spec, layout)
    if caveat:  # the library's model computes differently from the official one (mapping.layout_caveat)
        log.warning("warning: %s", caveat)
        meta["layout_caveat"] = caveat
    # values computed beside the conversion (the source's sha256): placeholders now, patched at the end
    deferred = {k: v for k, v in meta.items() if isinstance(v, Deferred)}
    encoded = encode({k: (v.placeholder if k in deferred else v) for k, v in meta.items()})
    order = getattr(reader, "read_order", None)
    if order is not None:  # a sequential source (a .tar.gz stream): read in its order
        rank = {name: i for i, name in enumerate(order([src for _, src in selection.pairs]))}
        selection = replace(selection, pairs=sorted(selection.pairs, key=lambda p: rank[p[1]]))

    for p in outputs:  # temp files of writers killed earlier (dead PIDs, old enough)
        remove_stale_temps(p, min_age_s=STALE_TEMP_AGE_S)
    folder = outputs[0].parent if outputs else Path(".")
    needed = output_bytes(output_specs(selection, drop_background), [p.suffix for p in outputs])
    if folder.is_dir():  # a folder still to be made: AtomicFile.create says what is wrong with it
        check_space(folder, needed)  # a disk too full: one line before anything is written
    files = [AtomicFile(p) for p in outputs]
    bar = _progress_bar(len(selection.pairs), spec.name) if progress else None
    tensors = None
    keep = False
    try:
        # no room met while writing: the same one line (free space counted without our partial files)
        with disk_full_as_error(folder, needed, cleanup=lambda: [f.discard() for f in files]):
            for f in files:  # a folder that refuses the file: one error naming the folder
                f.create()
            # reading + re-laying runs a few tensors ahead of the writer, in its own thread
            tensors = prefetch(iter_tensors(reader, selection, allow_nonfinite, bar, drop_background),
                               depth=PREFETCH_DEPTH)
            st = [f for f in files if f.path.suffix == ".safetensors"]
            pth = [f for f in files if f.path.suffix == ".pth"]
            if st:
                specs = output_specs(selection, drop_background)
                with open(st[0].tmp, "wb") as fh:
                    out = SyncingWriter(fh)
                    try:
                        head = write_safetensors(out, specs, tensors, encoded)
                        out.finish()
                    except BaseException:
                        out.abandon()
                        raise
            if deferred:
                for k, d in deferred.items():
                    meta[k] = d.result()
                if st:
                    patch_header(st[0].tmp, head, [(k, d.placeholder, meta[k]) for k, d in deferred.items()])
                encoded = encode(meta)
            if pth:
                _write_pth(pth[0].tmp, st[0].tmp if st else None, tensors if not st else None, encoded)
            if commit:  # without force, a name another run took meanwhile is not replaced
                publish(files, replace=force)
            else:
                for f in files:
                    f.sync()
                keep = True
    finally:
        if tensors is not None:
            tensors.close()
        if bar is not None:
            bar.close()
        if not keep:
            for f in files:
                f.discard()
    return Result(outputs=outputs, selection=selection, metadata=meta, seconds=time.perf_counter() - t0,
                  pending=files if keep else [])


def _write_pth(tmp: Path, safetensors_file: Optional[Path], tensors, encoded: Dict[str, str]) -> None:
    import collections

    import torch

    sd = collections.OrderedDict()
    if safetensors_file is not None:
        from safetensors import safe_open

        with safe_open(str(safetensors_file), framework="pt") as f:
            for k in f.keys():
                sd[k] = f.get_tensor(k)
    else:
        for k, arr in tensors:
            sd[k] = torch.from_numpy(arr)
    with open(tmp, "wb") as fh:  # closed here even when torch.save fails (a full disk: the space comes back)
        torch.save(get_layout(encoded.get("layout", "native")).pth_payload(sd, encoded), fh)


def _progress_bar(total: int, name: str):
    from tqdm import tqdm

    # disable=None: no bar when stderr is not a terminal (logs, CI)
    return tqdm(total=total, desc=f"converting {name}", unit="tensor", leave=False, disable=None)
