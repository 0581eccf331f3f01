"""Metadata stored inside converted files (safetensors ``__metadata__``; ``.pth`` attribute, or ``meta`` of mmengine's form)."""
from __future__ import annotations

import json
from typing import Dict, Tuple

# keys whose values are JSON (lists, numbers, booleans); every other key is a plain string
JSON_KEYS = ("input_size", "mean", "std", "crop_pct", "ema", "num_classes", "training", "labels")
REQUIRED = ("variant", "flavor", "input_size", "mean", "std", "crop_pct", "interpolation", "ema",
            "source", "source_sha256", "converter_version", "num_classes", "layout")
PTH_ATTRIBUTE = "effnet_metadata"  # attribute of the saved OrderedDict; survives weights_only loads


def encode(cfg: Dict[str, object]) -> Dict[str, str]:
    """Metadata as safetensors wants it: str -> str."""
    return {k: json.dumps(v) if k in JSON_KEYS else str(v) for k, v in cfg.items()}


def decode(meta: Dict[str, str]) -> Dict[str, object]:
    """The inverse of :func:`encode` (mean/std come back as lists)."""
    return {k: json.loads(v) if k in JSON_KEYS else v for k, v in meta.items()}


def pth_unpack(obj) -> Tuple[Dict[str, object], Dict[str, str]]:
    """(state_dict, encoded metadata or {}) of a loaded ``.pth`` in either form a layout writes
    (mappings/layout.py ``Layout.pth_payload``)."""
    if isinstance(obj, dict) and set(obj) == {"meta", "state_dict"} and isinstance(obj["meta"], dict):
        return obj["state_dict"], obj["meta"]
    return obj, (getattr(obj, PTH_ATTRIBUTE, None) or {})
