"""Question 1: FILE's tensors mapped back to the official variables, each classified against the checkpoint.

Every table entry of (variant, layout) names one official variable and FILE's key for it; FILE's
tensor is laid back out in TensorFlow's order (converter.reorder.torch_to_tf, the inverse of the
conversion's re-ordering) and compared with the checkpoint's EMA twin and raw variable.

Equality is bitwise (on float32; a float16/bfloat16 file is upcast first, exactly). Every
layout's re-ordering (converter/reorder.py) is a transpose/reshape: it moves elements without
arithmetic, so an exact port holds the official float32 values bit for bit, in any layout; any
arithmetic on the way (a cast through float16, a BN fold, a rescale) is a real difference and
shows as "neither" with its relative difference ||file - twin|| / ||twin|| (to the nearer twin).
A tensor equal to both twins (a variable the EMA never moved) counts as EMA, and so does one equal to
the raw variable of a checkpoint that has no EMA twin for it (the official eval restores the EMA
twins where they exist: tensorflow/tpu efficientnet utils.py ``get_ema_vars``/``restore_model`` at 7dc921f).
"""
from __future__ import annotations

from typing import Dict, List, Sequence

import numpy as np

from ..convert import EMA_SUFFIX, skip_reason
from ..errors import ConversionError
from ..mapping import Entry, is_classifier
from ..mappings.kinds import DWCONV
from ..reorder import torch_to_tf
from ..tfref.taps import rel_error  # (no TensorFlow import: the taps module imports it lazily)

CLASSES = ("ema", "raw", "neither", "missing")


def entry_to_official(e: Entry, value: np.ndarray, tf_layout: bool) -> np.ndarray:
    """FILE's tensor for one table entry ``e`` (any layout) in TensorFlow's layout (``tf_layout``: it already is,
    a Keras file), by reorder.torch_to_tf as mapping.to_official does for a whole native state_dict."""
    if tf_layout:
        return value
    multiplier = int(e.tf_shape[3]) if e.kind == DWCONV and len(e.tf_shape) == 4 else 1
    return torch_to_tf(value, e.kind, multiplier=multiplier, kernel=e.kernel)


def classify(reader, entries: Sequence[Entry], tensors: Dict[str, np.ndarray], tf_layout: bool = False,
             key_of=None) -> Dict[str, object]:
    """The weights report: counts per class over the official tensors the table maps, one row per
    tensor, FILE's extra keys, and which copy dominates.

    ``reader``: the checkpoint (names/read). ``key_of(entry)``: FILE's key for an entry (default
    ``entry.key``; a Keras file: the official name).
    """
    key_of = key_of or (lambda e: e.key)
    names = set(reader.names())
    rows: List[Dict[str, object]] = []
    counts = {c: 0 for c in CLASSES}
    used = set()
    for e in entries:
        if e.const is not None:
            used.add(key_of(e))
            continue
        key = key_of(e)
        row: Dict[str, object] = {"official": e.tf_name, "key": key}
        if key not in tensors:
            row["class"] = "missing"
        else:
            used.add(key)
            value = np.asarray(tensors[key])
            if not np.issubdtype(value.dtype, np.floating):
                row.update({"class": "neither", "note": f"dtype {value.dtype}"})
            else:
                row["dtype"] = str(value.dtype)
                row.update(_compare(reader, names, e, entry_to_official(e, value.astype(np.float32), tf_layout)))
        counts[row["class"]] += 1
        rows.append(row)
    extras = sorted(k for k in tensors if k not in used)
    copy = "ema" if counts["ema"] >= counts["raw"] else "raw"
    return {"counts": counts, "rows": rows, "extras": extras, "copy": copy,
            "exact": counts["ema"] == len(rows) and not extras}


def _compare(reader, names, e: Entry, got: np.ndarray) -> Dict[str, object]:
    twins = {}
    for cls, name in (("ema", e.tf_name + EMA_SUFFIX), ("raw", e.tf_name)):
        if name in names:
            ref = np.asarray(reader.read(name)).astype(np.float32)
            if is_classifier(e) and ref.shape != got.shape and ref.shape[-1] == got.shape[-1] + 1:
                ref = ref[..., 1:]  # the file dropped the background class (output 0)
            twins[cls] = ref
    if not twins:
        return {"class": "neither", "note": "the checkpoint has no such variable"}
    if "ema" not in twins:  # no EMA twin (a checkpoint saved without them): its raw value is what the official eval
        twins = {"ema": twins["raw"]}  # uses, so equal to it counts as the official (EMA) value
    rels = {}
    for cls, ref in twins.items():
        if ref.shape != got.shape:
            rels[cls] = float("inf")
            continue
        if np.array_equal(ref, got):
            return {"class": cls, **({"raw_equals_ema": True} if cls == "ema" and "raw" in twins
                                    and np.array_equal(twins["raw"], got) else {})}
        rels[cls] = rel_error(got, ref)
    nearer = min(rels, key=rels.get)
    if not np.isfinite(rels[nearer]):
        return {"class": "neither", "note": f"shape {list(got.shape)}, the checkpoint's {list(twins[nearer].shape)}"}
    return {"class": "neither", "rel_diff": rels[nearer], "nearer": nearer}


def checkpoint_extras(reader, entries: Sequence[Entry]) -> List[str]:
    """Official model variables the table does not map (nothing for a full table)."""
    mapped = {n for e in entries if e.tf_name for n in (e.tf_name, e.tf_name + EMA_SUFFIX)}
    return sorted(n for n in reader.names() if n not in mapped and not skip_reason(n))


def summary_line(w: Dict[str, object]) -> str:
    c = w["counts"]
    total = sum(c.values())
    worst = [r for r in w["rows"] if r["class"] == "neither" and "rel_diff" in r]
    med = ""
    if worst:
        med = f"; neither: median rel diff {float(np.median([r['rel_diff'] for r in worst])):.3g}"
    return (f"weights: {total} official tensors: {c['ema']} EMA, {c['raw']} raw, {c['neither']} neither, "
            f"{c['missing']} missing; {len(w['extras'])} extra in the file{med}: {reading(w)}")


def reading(w: Dict[str, object]) -> str:
    """What the counts say, in words."""
    c = w["counts"]
    total = max(sum(c.values()), 1)
    if c["ema"] == total:
        return "the official EMA weights, bit for bit" + ("; but the file has more" if w["extras"] else "")
    if c["raw"] == total:
        return "the raw variables, not the EMA weights the official eval uses"
    if c["neither"] >= 0.5 * total:
        return "not this checkpoint's weights (another checkpoint, or altered)"
    parts = [f"{c[k]} {k}" for k in ("raw", "neither", "missing") if c[k]]
    return "mostly the EMA weights, except " + ", ".join(parts)


def in_native(official_state: Dict[str, object], spec, entries: Sequence[Entry], tensors: Dict[str, np.ndarray],
              tf_layout: bool = False, key_of=None) -> Dict[str, object]:
    """The official model's state_dict (converter.model) with every tensor FILE has in its place: what the
    file's weights compute in the official architecture (their effect on the logits, apart from the model)."""
    import torch

    from ..mapping import expand
    from ..reorder import tf_to_torch

    key_of = key_of or (lambda e: e.key)
    native = {e.tf_name: e for e in expand(spec) if e.tf_name}
    out = dict(official_state)
    for e in entries:
        n = native.get(e.tf_name)
        if not e.tf_name or n is None or key_of(e) not in tensors:
            continue
        value = entry_to_official(e, np.asarray(tensors[key_of(e)], np.float32), tf_layout)
        if is_classifier(e) and value.shape[-1] + 1 == n.tf_shape[-1]:  # the file dropped the background class
            first = torch_to_tf(official_state[n.key].numpy(), n.kind)[..., :1]
            value = np.concatenate([first, value], axis=-1)
        if tuple(value.shape) != tuple(n.tf_shape):
            continue
        out[n.key] = torch.from_numpy(tf_to_torch(value, n.kind, n.kernel).copy())
    return out


def official_arrays(reader, entries: Sequence[Entry], tensors: Dict[str, np.ndarray], tf_layout: bool = False,
                    key_of=None) -> Dict[str, np.ndarray]:
    """Official name -> TF-layout array: FILE's tensor where it has one of the right shape (a dropped
    background class put back from the checkpoint), else the checkpoint's EMA twin (or raw variable):
    the file's weights as an official checkpoint, for the TensorFlow reference."""
    key_of = key_of or (lambda e: e.key)
    names = set(reader.names())
    out = {}
    for e in entries:
        if not e.tf_name:
            continue
        src = e.tf_name + EMA_SUFFIX if e.tf_name + EMA_SUFFIX in names else e.tf_name
        ck = np.asarray(reader.read(src)).astype(np.float32)
        value = None
        if key_of(e) in tensors and np.issubdtype(np.asarray(tensors[key_of(e)]).dtype, np.floating):
            try:
                value = entry_to_official(e, np.asarray(tensors[key_of(e)], np.float32), tf_layout)
            except ConversionError:
                value = None
            if value is not None and is_classifier(e) and value.shape[-1] + 1 == ck.shape[-1]:
                value = np.concatenate([ck[..., :1], value], axis=-1)
        out[e.tf_name] = value if value is not None and value.shape == ck.shape else ck
    return out
