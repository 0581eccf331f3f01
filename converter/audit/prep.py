"""Question 3: the library's declared preprocessing against the official eval of the flavor.

The declared pipeline (timm ``pretrained_cfg``, transformers ``preprocessor_config.json``, mmpretrain's
``data_preprocessor`` and test pipeline, effnet-convert metadata, a Keras file's Normalization layer)
is read into one form: resolution, crop fraction, crop rule, interpolation, mean/std (0-1 scale, as
the model finally sees them: transformers' ``include_top`` divides by the std twice), channel order,
and who resizes. Each field that differs from the official eval (converter.checkpoint: the flavor's
row; converter/preprocess.py runs it) is listed with its measured effect: the official pipeline with
that one field as declared, through the official model (converter.model with the checkpoint's EMA
weights: exact by this project's verification), against the official pipeline, on the same images
(relative logit change, top-1 changes). The library's whole pipeline, run by the library itself
(converter/audit/driver.py), is measured the same way.

Who resizes (Pillow's or OpenCV's antialiased filters instead of TensorFlow's legacy kernel) and
resize-then-crop where the official eval crops then resizes, at the same fraction, are listed as
implementation differences: measured, reported, not part of the verdict (no PyTorch pipeline
reproduces TensorFlow's legacy resize; converter/preprocess.py does, for this project's own files).
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from ..errors import ConversionError

# fields compared; the declared value within these of the official one counts as equal
# (timm writes crop fractions and means with 3 decimals: 0.882 for B1's 240 / 272)
FIELD_TOL = 1e-3
PIL_RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}
OFFICIAL_IMPL = "TensorFlow legacy resize (converter/preprocess.py)"
SYNTHETIC_SIZES = ((300, 400), (360, 270), (320, 320))  # (h, w) of the synthetic photos-to-be
SMOOTH_KINDS = ("linear-gradient", "blobs", "radial-gradient")


def official(ckpt, resolution: Optional[int] = None) -> Dict[str, object]:
    """The flavor's official eval in the common form."""
    from ..registry import preprocessing_of

    cfg = ckpt.pretrained_cfg()
    pipe = preprocessing_of(cfg)
    res = int(resolution or ckpt.resolution)
    crop = ckpt.crop_pct if resolution is None else (ckpt.crop if ckpt.crop is not None else res / (res + 32))
    return {"resolution": res, "crop_pct": float(crop), "crop_mode": "crop-then-resize",
            "interpolation": pipe.resize if not pipe.v2 else "bilinear", "mean": [float(x) for x in ckpt.mean],
            "std": [float(x) for x in ckpt.std], "channels": "RGB", "resize": OFFICIAL_IMPL,
            "v2": pipe.v2, "cfg": cfg}


def declared(layout: str, info: Dict[str, object], af, off: Dict[str, object]) -> Dict[str, object]:
    """The declared pipeline in the common form (``info``: the driver's report, None for native/keras)."""
    if layout == "native":
        meta = af.meta
        if not meta:
            return dict(off, source="none declared (no effnet-convert metadata): assumed the official eval")
        res = int(meta["input_size"][-1])
        return {"resolution": res, "crop_pct": float(meta.get("crop_pct") or res / (res + 32)),
                "crop_mode": "crop-then-resize", "interpolation": str(meta.get("interpolation", "bicubic")),
                "mean": list(meta["mean"]), "std": list(meta["std"]), "channels": "RGB", "resize": OFFICIAL_IMPL,
                "source": "effnet-convert metadata (converter.preprocess runs it)"}
    if layout == "keras":
        pre = af.keras_preprocessing
        return dict(off, mean=list(pre.get("mean", off["mean"])), std=list(pre.get("std", off["std"])),
                    source=f"the file's Normalization layer ({pre.get('keras_normalization', 'constants')}); "
                           "resizing is the caller's")
    d = info["declared"]
    if layout == "efficientnet_pytorch":
        raise ConversionError("efficientnet_pytorch declares no preprocessing (its README's is the user's code)")
    if layout == "timm":
        c = d["data_config"]
        res = int(c["input_size"][-1])
        mode = c.get("crop_mode", "center")
        return {"resolution": res, "crop_pct": float(c.get("crop_pct", 1.0)),
                "crop_mode": {"center": "resize-then-crop", "squash": "squash", "border": "resize-then-pad"}.get(
                    mode, mode), "interpolation": str(c.get("interpolation")), "mean": list(c["mean"]),
                "std": list(c["std"]), "channels": "RGB", "resize": "Pillow (timm transforms)",
                "source": d["source"]}
    if layout == "transformers":
        p = d["processor"]
        if p is None:
            raise ConversionError("the folder has no preprocessor_config.json (no preprocessing declared)")
        size, crop = p.get("size") or {}, p.get("crop_size") or {}
        do_crop = bool(p.get("do_center_crop"))
        res = int((crop if do_crop else size).get("height") or (crop if do_crop else size).get("shortest_edge") or 0)
        if "shortest_edge" in size:
            mode, frac = "resize-then-crop", res / float(size["shortest_edge"]) if do_crop else 1.0
        else:
            mode = "squash"
            frac = res / float(size.get("height") or res) if do_crop else 1.0
        scale = float(p.get("rescale_factor") or 1.0) * 255.0 if p.get("do_rescale") else 255.0
        mean = np.asarray(p.get("image_mean") or [0, 0, 0], float)
        std = np.asarray(p.get("image_std") or [1, 1, 1], float)
        if not p.get("do_normalize"):
            mean, std = np.zeros(3), np.ones(3)
        offset = -1.0 if p.get("rescale_offset") else 0.0
        # x * scale/255 (+ offset), then (x - mean) / std, then / std again with include_top:
        # the model sees (x/255 - m') / s' with s' = std [* std] / scale, m' = (mean - offset) / scale
        s = std * (std if p.get("include_top") else 1.0) / scale
        m = (mean - offset) / scale
        return {"resolution": res, "crop_pct": float(frac), "crop_mode": mode,
                "interpolation": PIL_RESAMPLE.get(int(3 if p.get("resample") is None else p["resample"]),
                                                  str(p.get("resample"))),
                "mean": m.tolist(), "std": s.tolist(), "channels": "RGB", "resize": "Pillow (EfficientNetImageProcessor)",
                "source": d["source"] + (" (include_top: the std applied twice)" if p.get("include_top") else "")}
    if layout == "mmpretrain":
        dp = d["data_preprocessor"]
        if not d["pipeline"] or not dp.get("mean"):
            raise ConversionError("the mmpretrain model declares no test pipeline or data_preprocessor (built from its "
                                  "arch, not a zoo config)")
        res, frac, mode, interp = off["resolution"], 1.0, "none", "bilinear"
        for step in d["pipeline"]:
            t = step.get("type")
            if t == "EfficientNetCenterCrop":
                res = int(step["crop_size"])
                frac = res / (res + float(step.get("crop_padding", 32)))
                mode, interp = "crop-then-resize", str(step.get("interpolation", "bicubic"))
            elif t in ("ResizeEdge",):
                edge = float(step.get("scale"))
                interp = str(step.get("interpolation", "bilinear"))
                mode, frac = "resize-then-crop", None
            elif t == "CenterCrop" and mode == "resize-then-crop":
                res = int(step["crop_size"] if np.isscalar(step["crop_size"]) else step["crop_size"][0])
                frac = res / edge
            elif t == "Resize":
                scale = step.get("scale")
                res = int(scale if np.isscalar(scale) else scale[0])
                mode, interp = "squash", str(step.get("interpolation", "bilinear"))
        return {"resolution": res, "crop_pct": float(frac or 1.0), "crop_mode": mode, "interpolation": interp,
                "mean": [float(x) / 255 for x in dp["mean"]], "std": [float(x) / 255 for x in dp["std"]],
                "channels": "RGB" if dp.get("to_rgb") else "BGR", "resize": "OpenCV (mmcv imresize)",
                "source": d["source"]}
    raise ConversionError(f"no declared preprocessing is known for layout {layout}")


def differences(off: Dict[str, object], dec: Dict[str, object]) -> List[Dict[str, object]]:
    """Each field where the declared pipeline differs from the official eval (``counts``: in the verdict)."""
    out = []

    def add(field, counts=True, **kw):
        out.append(dict(field=field, official=off.get(field), declared=dec.get(field), counts=counts, **kw))

    if dec["resolution"] != off["resolution"]:
        add("resolution")
    if abs(dec["crop_pct"] - off["crop_pct"]) > FIELD_TOL:
        add("crop_pct", what="a dropped crop" if dec["crop_pct"] >= 0.999 else "another crop fraction")
    if dec["crop_mode"] == "squash":
        add("crop_mode", what="the image squashed to a square (aspect ratio not kept)")
    if dec["interpolation"] != off["interpolation"]:
        add("interpolation")
    if np.max(np.abs(np.subtract(dec["mean"], off["mean"]))) > FIELD_TOL:
        add("mean")
    if np.max(np.abs(np.subtract(dec["std"], off["std"]))) > FIELD_TOL:
        add("std", what=("the std applied twice" if "twice" in str(dec.get("source")) else "another std"))
    if dec["channels"] != off["channels"]:
        add("channels", what="BGR fed to a model trained on RGB")
    if dec["resize"] != off["resize"] or dec["crop_mode"] not in (off["crop_mode"], "squash", "none"):
        then = "resized, then cropped: the official eval crops, then resizes" if dec["crop_mode"] == "resize-then-crop" else ""
        add("resize", counts=False, what=then)
    return out


def synthetic_files(folder: Path) -> List[str]:
    """A few deterministic non-square PNG 'photos' when no --images: the smooth synthetic kinds (gradients,
    blobs: noise and checkerboards alias under any resize, so every resize difference would look huge)."""
    from PIL import Image

    from ..synthetic import image_kinds, synthetic_images

    size = max(max(s) for s in SYNTHETIC_SIZES)
    kinds = image_kinds(size, 8)
    imgs = synthetic_images(size, 8, seed=7)
    smooth = [i for i, k in enumerate(kinds) if k in SMOOTH_KINDS]
    files = []
    for n, ((h, w), i) in enumerate(zip(SYNTHETIC_SIZES, smooth)):
        f = folder / f"synthetic-{n}-{kinds[i]}.png"
        Image.fromarray(np.clip(imgs[i][:h, :w], 0, 255).round().astype(np.uint8)).save(f)
        files.append(str(f))
    return files


def _official_batch(files: Sequence[str], off: Dict[str, object], **change) -> np.ndarray:
    """NCHW arrays of the official pipeline on ``files`` with ``change`` (a field set as declared)."""
    from ..preprocess import _decode_named, _read, normalize, preprocess, preprocess_raw, resize_legacy

    cfg = dict(off["cfg"])
    res = int(change.get("resolution", off["resolution"]))
    cfg["input_size"] = [3, res, res]
    if "resolution" in change and "crop_pct" not in change:
        cfg["crop_pct"] = off["crop_pct"]
    if "crop_pct" in change:
        cfg["crop_pct"] = change["crop_pct"]
    mean, std = change.get("mean", off["mean"]), change.get("std", off["std"])
    out = []
    if off.get("v2") and change:
        raise ConversionError("a single field of EfficientNetV2's own eval is not measured (see the whole pipeline's "
                              "effect)")
    for f in files:
        if off.get("v2"):
            out.append(preprocess(f, cfg))
            continue
        if change.get("crop_mode") == "squash":
            data, name = _read(f)
            raw = resize_legacy(_decode_named(data, name), (res, res), cfg.get("interpolation", "bicubic")
                                if cfg.get("interpolation") in ("bicubic", "bilinear") else "bicubic")
        else:
            interp = change.get("interpolation", off["interpolation"])
            if interp not in ("bicubic", "bilinear"):
                raise ConversionError(f"interpolation {interp} is not measured")
            raw = preprocess_raw(f, res, "pil" if change.get("resize") else "official", cfg.get("crop_pct"), interp)
        if change.get("channels") == "BGR":
            raw = raw[..., ::-1]
        out.append(normalize(raw, mean, std).transpose(2, 0, 1))
    return np.stack(out).astype(np.float32)


def effect(logits0: np.ndarray, logits: np.ndarray) -> Dict[str, object]:
    a, b = np.asarray(logits0, np.float64), np.asarray(logits, np.float64)
    return {"rel_logit_change": float(np.linalg.norm(b - a) / max(np.linalg.norm(a), 1e-30)),
            "max_abs_logit_change": float(np.abs(b - a).max()),
            "top1_changed": int((a.argmax(1) != b.argmax(1)).sum()), "images": int(len(a))}


def measure(model, files: Sequence[str], off: Dict[str, object], diffs: List[Dict[str, object]],
            library_arrays: Optional[np.ndarray]) -> Dict[str, object]:
    """Each difference's effect on the official model's logits (in place, ``effect``), and the whole
    declared pipeline's (``library_arrays``: the library's own output on ``files``)."""
    import torch

    def run(x):
        with torch.inference_mode():
            return model(torch.from_numpy(np.ascontiguousarray(x))).numpy()

    base = run(_official_batch(files, off))
    for d in diffs:
        field = d["field"]
        change = {field: d["declared"]}
        try:
            d["effect"] = effect(base, run(_official_batch(files, off, **change)))
        except ConversionError as e:
            d["effect"] = None
            d["note"] = str(e)
    whole = None
    if library_arrays is not None and len(library_arrays):
        whole = effect(base, run(library_arrays))
    return {"whole_pipeline": whole, "images": list(map(str, files))}
