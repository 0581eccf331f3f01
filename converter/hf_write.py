"""Writes the ``--layout transformers`` folder (converter/hf.py says what goes in it and why).

``config.json`` with ImageNet's labels, the weights through converter.convert into a hidden
temporary folder, the error of the library's padding measured where it is not exact, the
processor config and the model card; then one rename puts the folder in place. Only the CLI
imports this module (it needs converter.predict's class list and converter.loading), so that
loading, verify and predict can import converter.hf without a cycle.
"""
from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from . import hf
from .arch import BN_MOMENTUM_TF, DEPTH_DIVISOR, ArchSpec
from .errors import ConversionError
from .hf import (CARD_NAME, CONFIG_NAME, DROP_CONNECT_RATE, ERROR_KEY, LAYOUT, MEASURE_IMAGES, MODEL_CLASS,
                 PROCESSOR_NAME, TRANSFORMERS_VERSION, WEIGHTS_NAME, PaddingPlan, padding_plan)
# the folder writer's protocol (mappings/layout.py ``Layout.writer``): beside folder_converter and
# commit_folder below, reading a folder and its report
from .hf import REPORT_NAME, add_verification, folder_weights  # noqa: F401,E402

log = logging.getLogger("converter")

_ERROR_PLACEHOLDER = "?" * 8  # f"{error:.2e}": the header is written before the error is measured


def _write_json(path: Path, doc: Dict[str, object]) -> None:
    path.write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _fsync_tree(folder: Path) -> None:
    for p in list(folder.iterdir()) + [folder]:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def id2label(num_classes: int) -> Dict[str, str]:
    """ImageNet's class names (converter/data/imagenet_classes.txt, predict's list) for 1000 or 1001
    (background first) classes; ``LABEL_i`` (transformers' default names) otherwise."""
    from .predict import imagenet_classes

    names = [lemmas for _, lemmas in imagenet_classes()]
    if num_classes == len(names) + 1:
        names = ["background"] + names
    if num_classes != len(names):
        names = [f"LABEL_{i}" for i in range(num_classes)]
    return {str(i): n for i, n in enumerate(names)}


def hf_config(spec: ArchSpec, plan: PaddingPlan, num_classes: int, extra: Dict[str, object]) -> Dict[str, object]:
    """config.json: ``EfficientNetConfig`` of ``spec`` padded for ``plan``, with ImageNet labels.

    ``batch_norm_momentum`` is PyTorch's (the weight of the new batch: 1 - TF's decay 0.99) for
    fine-tuning; transformers' expand-conv BN ignores it (PyTorch's default 0.1). ``extra`` goes
    under ``effnet_convert`` (transformers keeps unknown config keys as attributes).
    """
    args = hf.stage_args(spec)
    labels = id2label(num_classes)
    label2id: Dict[str, int] = {}
    for i, name in labels.items():
        label2id.setdefault(name, int(i))  # ImageNet names two classes "crane" (bird, machine): the first index
    return {
        "architectures": [MODEL_CLASS],
        "model_type": "efficientnet",
        "num_channels": 3,
        "image_size": plan.resolution,
        "width_coefficient": spec.width,
        "depth_coefficient": spec.depth,
        "depth_divisor": DEPTH_DIVISOR,
        "kernel_sizes": [a.kernel_size for a in args],
        "in_channels": [a.input_filters for a in args],
        "out_channels": [a.output_filters for a in args],
        "depthwise_padding": list(plan.depthwise_padding),
        "strides": [a.strides[0] for a in args],
        "num_block_repeats": [a.num_repeat for a in args],
        "expand_ratios": [a.expand_ratio for a in args],
        "squeeze_expansion_ratio": args[0].se_ratio,
        "hidden_act": "swish",
        "hidden_dim": spec.head_channels,
        "pooling_type": "mean",
        "initializer_range": 0.02,
        "batch_norm_eps": spec.bn_eps,
        "batch_norm_momentum": round(1.0 - BN_MOMENTUM_TF, 6),
        "dropout_rate": spec.dropout,
        "drop_connect_rate": DROP_CONNECT_RATE,
        "id2label": labels,
        "label2id": label2id,
        "dtype": "float32",
        "transformers_version": TRANSFORMERS_VERSION,
        "effnet_convert": extra,
    }


def folder_outputs(output_dir: Path, stem: str, fmt: str) -> List[Path]:
    """The folder a transformers conversion writes (``--format`` must be safetensors)."""
    if fmt != "safetensors":
        raise ConversionError(f"--layout {LAYOUT} writes a folder with {WEIGHTS_NAME} (what from_pretrained "
                              f"loads); --format {fmt} is not available for it")
    return [Path(output_dir) / stem]


def commit_folder(tmp: Path, folder: Path) -> None:
    """Put the complete ``tmp`` folder at ``folder`` by rename; an existing one is replaced whole."""
    _fsync_tree(tmp)
    if folder.exists() or folder.is_symlink():
        if not folder.is_dir() or folder.is_symlink():
            raise ConversionError(f"{folder} exists and is not a folder; remove it")
        old = folder.with_name(f".{folder.name}.old-{os.getpid()}-{secrets.token_hex(4)}")
        os.rename(folder, old)
        try:
            os.rename(tmp, folder)
        except BaseException:
            os.rename(old, folder)
            raise
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, folder)


def emulate_library_padding(model, plan: PaddingPlan):
    """The native ``model`` padded as transformers pads at ``plan.resolution`` (its strided convs
    frozen to the library's padding and feature sizes); returns ``model``.

    Everything else in the two models is the same computation (stride-1 convs pad symmetrically
    in both), so this gives transformers' logits without transformers (checked against the real
    library in tests/test_transformers.py).
    """
    convs = [model.stem.conv] + [model.blocks[c.block].dw_conv for c in plan.convs[1:]]
    for conv, c in zip(convs, plan.convs):
        before, after = c.pad_library
        conv.static_hw = (c.size_library, c.size_library)
        conv.static_padding = [before, before]
        conv.static_extra = [0, after - before, 0, after - before]
        conv.static_has_extra = after != before
    return model


def measure_library_error(weights: Path, plan: PaddingPlan, n: int = MEASURE_IMAGES) -> Tuple[float, float]:
    """(relative error, top-1 agreement) of transformers' padding vs the official one on ``weights``.

    ``n`` synthetic images (converter.synthetic, normalized as the metadata says) at
    ``plan.resolution``, through the native model and through it padded as the library pads.
    """
    import numpy as np
    import torch

    from .loading import load_model
    from .synthetic import normalize, synthetic_images

    model = load_model(weights)
    cfg = model.pretrained_cfg
    x = normalize(synthetic_images(plan.resolution, n, seed=0), cfg["mean"], cfg["std"]).transpose(0, 3, 1, 2)
    x = torch.from_numpy(np.ascontiguousarray(x))
    with torch.inference_mode():
        ref = model(x).double().numpy()
        got = emulate_library_padding(model, plan)(x).double().numpy()
    rel = float(np.linalg.norm(got - ref) / max(np.linalg.norm(ref), 1e-30))
    return rel, float(np.mean(got.argmax(1) == ref.argmax(1)))


def _patch_error(weights: Path, value: str) -> None:
    """Write the measured error into the placeholder of the weights' header."""
    import struct

    from .pipeline import patch_header

    with open(weights, "rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        header = struct.pack("<Q", size) + f.read(size)
    patch_header(weights, header, [(ERROR_KEY, _ERROR_PLACEHOLDER, value.ljust(len(_ERROR_PLACEHOLDER)))])


def convert_folder(convert, reader, spec: ArchSpec, cfg: Dict[str, object], outputs: Sequence[Path],
                   resolution: Optional[int] = None, force: bool = False, **kwargs):
    """Convert into a transformers folder (``outputs[0]``) with ``convert`` (converter.convert.convert,
    which gets ``kwargs``); returns its Result, naming the folder.

    ``resolution``: the input size the config is padded for (default: the checkpoint's).
    """
    from .checkpoint import official_crop

    kwargs.pop("layout", None)
    kwargs.pop("commit", None)  # the folder is committed whole, by commit_folder
    folder = Path(outputs[0])
    if (folder.exists() or folder.is_symlink()) and not force:
        raise ConversionError(f"{folder} exists; pass --force to overwrite it")
    if (folder.exists() and not folder.is_dir()) or folder.is_symlink():
        raise ConversionError(f"{folder} exists and is not a folder; remove it")
    native_res = int(cfg["input_size"][-1])
    res = native_res if resolution is None else resolution
    plan = padding_plan(spec, res)
    cfg = dict(cfg)
    if res != native_res:  # the official eval at another size: its crop rule at that size
        cfg.update(input_size=[3, res, res], crop_pct=official_crop(res))
    caveat = plan.caveat()
    if caveat:
        cfg.update(layout_caveat=caveat, **{ERROR_KEY: _ERROR_PLACEHOLDER})
    cfg["depthwise_padding"] = ",".join(map(str, plan.depthwise_padding))
    cfg["format"] = "pt"  # what transformers 4.x checks in a safetensors header
    hf.stage_args(spec)  # an inexpressible architecture: before anything is written
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    tmp.mkdir()
    try:
        result = convert(reader, spec, cfg, [tmp / WEIGHTS_NAME], layout=LAYOUT, force=True, **kwargs)
        meta = dict(result.metadata)
        if caveat:
            rel, top1 = measure_library_error(tmp / WEIGHTS_NAME, plan)
            meta[ERROR_KEY] = f"{rel:.2e}"
            _patch_error(tmp / WEIGHTS_NAME, meta[ERROR_KEY])
            log.warning("warning: %s (measured: relative error %s, top-1 agreement %.0f%% on %d synthetic images)",
                        caveat, meta[ERROR_KEY], 100 * top1, MEASURE_IMAGES)
        extra = {k: meta[k] for k in ("variant", "flavor", "ema", "source", "source_sha256", "converter_version",
                                      "layout_caveat", ERROR_KEY, "background_dropped") if k in meta}
        extra.update(resolution=res, exact=plan.exact)
        _write_json(tmp / CONFIG_NAME, hf_config(spec, plan, int(meta["num_classes"]), extra))
        processor = hf.processor_config(res, meta["mean"], meta["std"], float(meta["crop_pct"]),
                                     str(meta.get("interpolation", "bicubic")))
        _write_json(tmp / PROCESSOR_NAME, processor)
        (tmp / CARD_NAME).write_text(hf.model_card(meta, plan, processor), encoding="utf-8")
        commit_folder(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return replace(result, outputs=[folder], metadata=meta)


def folder_converter(convert, resolution: Optional[int] = None):
    """(convert, output_paths) for the CLI: the folder's counterparts of converter.convert's
    (``convert``: converter.convert.convert, passed in to keep this module off the CLI's import cycle)."""
    import functools

    return functools.partial(convert_folder, convert, resolution=resolution), folder_outputs
