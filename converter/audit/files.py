"""The file being audited, whoever wrote it: its raw tensors, its metadata (if any), its layout and variant.

Read without requiring effnet-convert metadata: a state_dict ``.pth``/``.bin``/``.pt`` (plain, or
wrapped as ``{"state_dict": ...}`` / ``{"model": ...}``, DDP's ``module.`` prefix dropped), a
``.safetensors`` file, a folder holding one (a transformers folder, a timm hub folder with its
``config.json``), or a keras.applications ``.h5`` (converter.sources.keras presents it under the
official names, TF layout: layout ``keras``). The layout and variant are found by expanding every
layout's table (converter.mapping) for every registered variant and keeping the ones whose key set
and shapes are the file's (the classifier's class count aside).
"""
from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

from ..errors import ConversionError, first_line

KERAS = "keras"  # the layout name of a keras.applications .h5 (official names, TF layout)
FOLDER_WEIGHTS = ("model.safetensors", "pytorch_model.bin", "model.pth", "pytorch_model.pth")
WRAPPERS = ("state_dict", "model", "model_state_dict", "module")  # training checkpoints' state_dict keys


@dataclass
class AuditedFile:
    """What the audit reads from FILE."""

    path: Path
    tensors: Dict[str, np.ndarray]  # key -> array (torch layout; keras: official name -> TF layout)
    meta: Dict[str, object] = field(default_factory=dict)  # effnet-convert metadata (decoded), if any
    config: Dict[str, object] = field(default_factory=dict)  # a folder's config.json (transformers / timm hub)
    processor: Dict[str, object] = field(default_factory=dict)  # preprocessor_config.json (transformers)
    form: str = ""  # what it was read as: safetensors, pth, mmengine, folder, keras
    keras_preprocessing: Dict[str, object] = field(default_factory=dict)  # a Keras file's Normalization
    keras_variant: Optional[str] = None


def _to_numpy(t) -> np.ndarray:
    import torch

    if isinstance(t, torch.Tensor):
        t = t.detach().cpu()
        if t.dtype == torch.bfloat16:  # no numpy bfloat16: upcast (exact)
            t = t.float()
        return t.numpy()
    return np.asarray(t)


def _unwrap(obj) -> Tuple[Dict[str, object], Dict[str, str], str]:
    """(state_dict, encoded effnet-convert metadata, form) of a loaded ``.pth``."""
    from ..metadata import pth_unpack

    sd, meta = pth_unpack(obj)
    form = "mmengine" if sd is not obj else "pth"
    if isinstance(sd, dict):
        for key in WRAPPERS:
            if key in sd and isinstance(sd[key], dict) and not _is_tensor(sd[key]):
                inner = sd[key]
                if isinstance(sd.get("meta"), dict):
                    meta = meta or {k: v for k, v in sd["meta"].items() if isinstance(v, str)}
                sd, form = inner, f"pth ({{'{key}': ...}})"
                break
    if not isinstance(sd, dict) or not sd:
        raise ConversionError("it holds no state_dict (a dict of tensors)")
    return sd, meta, form


def _is_tensor(x) -> bool:
    return hasattr(x, "shape") and hasattr(x, "dtype")


def _read_pth(path: Path):
    import torch

    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:
        raise ConversionError(f"cannot read {path} as a PyTorch checkpoint: {first_line(e)[:200]}") from None
    try:
        return _unwrap(obj)
    except ConversionError as e:
        raise ConversionError(f"{path}: {e}") from None


def _read_safetensors(path: Path):
    from safetensors.numpy import load_file

    from ..writer import read_safetensors_metadata

    try:
        sd = load_file(str(path))
    except Exception as e:
        raise ConversionError(f"cannot read {path} as safetensors: {first_line(e)[:200]}") from None
    return sd, read_safetensors_metadata(path) or {}, "safetensors"


def _json(path: Path) -> Dict[str, object]:
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError) as e:
        raise ConversionError(f"cannot read {path}: {first_line(e)}") from None


def read_file(path) -> AuditedFile:
    """FILE's tensors and whatever it says about itself (ConversionError: one line)."""
    from ..metadata import REQUIRED, decode

    path = Path(path)
    if not path.exists():
        raise ConversionError(f"--weights {path}: no such file or folder")
    config: Dict[str, object] = {}
    processor: Dict[str, object] = {}
    weights = path
    if path.is_dir():
        found = [path / n for n in FOLDER_WEIGHTS if (path / n).is_file()]
        if not found:
            raise ConversionError(f"--weights {path}: a folder without {' or '.join(FOLDER_WEIGHTS)} "
                                  "(a transformers or timm hub folder holds one)")
        weights = found[0]
        config, processor = _json(path / "config.json"), _json(path / "preprocessor_config.json")
    else:
        config = _json(path.with_name("config.json")) if path.name in FOLDER_WEIGHTS else {}
    from ..sources.keras import is_keras_file

    if is_keras_file(weights):
        return _read_keras(weights)
    with open(weights, "rb") as fh:
        head = fh.read(16)
    from ..loading import _safetensors_like

    if weights.suffix == ".safetensors" or _safetensors_like(head, weights.stat().st_size):
        sd, meta, form = _read_safetensors(weights)
    else:
        sd, meta, form = _read_pth(weights)
    if path.is_dir():
        form = f"folder ({weights.name})"
    tensors = {}
    prefix = "module." if all(str(k).startswith("module.") for k in sd) else ""
    for k, v in sd.items():
        if _is_tensor(v):
            tensors[str(k)[len(prefix):]] = _to_numpy(v)
    if not tensors:
        raise ConversionError(f"--weights {path}: no tensors in it")
    meta = meta or {}
    decoded = decode(meta) if all(k in meta for k in REQUIRED) else {}
    return AuditedFile(path=path, tensors=tensors, meta=decoded, config=config, processor=processor, form=form)


def _read_keras(path: Path) -> AuditedFile:
    from ..sources.keras import KerasH5Reader

    reader = KerasH5Reader(path)
    try:
        tensors = {n: np.asarray(reader.read(n)) for n in reader.names()}
        variant = reader.spec.name if getattr(reader, "spec", None) is not None else None
        pre = dict(reader.preprocessing())
    finally:
        reader.close()
    return AuditedFile(path=path, tensors=tensors, form=KERAS, keras_preprocessing=pre, keras_variant=variant)


# --------------------------------------------------------------------------- layout and variant


@dataclass(frozen=True)
class Candidate:
    layout: str
    variant: str
    num_classes: int


@functools.lru_cache(maxsize=None)
def _expanded(variant: str, layout: str):
    """converter.mapping.expand, once per (variant, layout) in a process (every table is tried)."""
    from ..mapping import expand

    return tuple(expand(variant, layout))


def candidates(af: AuditedFile, layouts: Optional[List[str]] = None,
               variants: Optional[List[str]] = None) -> List[Candidate]:
    """Every (layout, variant) whose table expands to exactly FILE's keys and shapes (the classifier's
    class count taken from FILE). ``layouts``/``variants``: only these."""
    from ..mapping import is_classifier
    from ..mapping import layouts as all_layouts
    from ..registry import get_arch, variant_names

    if af.form == KERAS:
        names = [KERAS]
    else:
        names = [n for n in (layouts or list(all_layouts())) if n != KERAS]
    have = {k: tuple(v.shape) for k, v in af.tensors.items()}
    out = []
    for lay in names:
        table_layout = "native" if lay == KERAS else lay
        for v in variants or variant_names():
            try:
                spec = get_arch(v)
                entries = _expanded(v, table_layout)
            except ConversionError:
                continue
            keys = {(e.tf_name if lay == KERAS else e.key): e for e in entries if not (lay == KERAS and e.const is not None)}
            # a buffer the table writes as a constant (BN num_batches_tracked) may be absent: converters that
            # copy the checkpoint's variables alone (the seed's efficientnet_to_mmpretrain.py) leave it out
            optional = {k for k, e in keys.items() if e.const is not None}
            if not (set(keys) - optional <= set(have) <= set(keys)):
                continue
            classes = None
            ok = True
            for k, e in keys.items():
                want = e.tf_shape if lay == KERAS else e.shape
                if e.const is not None:
                    continue
                if is_classifier(e):
                    ax = -1 if lay == KERAS else 0
                    if tuple(np.delete(have[k], ax if ax >= 0 else len(have[k]) - 1)) != \
                            tuple(np.delete(want, ax if ax >= 0 else len(want) - 1)):
                        ok = False
                        break
                    classes = have[k][ax]
                elif have[k] != tuple(want):
                    ok = False
                    break
            if ok:
                out.append(Candidate(lay, v, int(classes or spec.num_classes)))
    return out
