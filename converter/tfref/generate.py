"""Write random-weight checkpoints in the official EfficientNet layout, with TensorFlow.

The real checkpoints cannot be downloaded here, so tests make their own with the same names,
shapes, dtypes and extras (shared/reference/README.md):

- mode ``full``: raw variables, ``NAME/ExponentialMovingAverage`` twins for every trainable
  variable and every BN moving_mean / moving_variance (with clearly different values),
  RMSProp slots ``NAME/RMSProp`` / ``NAME/RMSProp_1`` for trainable variables, ``global_step``;
- ``ema-only``: only the EMA twins (+ ``global_step``), like the NoisyStudent L2 release;
- ``raw-only``: only the raw names (+ ``global_step``).

The "good" value set (the one a correct converter must read) is the EMA set, or the raw set in
``raw-only`` mode. With ``calibration_resolution`` its BN moving statistics are calibrated on
synthetic images (``reference.calibrate``) so that logits stay sane ("Known hazards"); in mode
``full`` the raw set is then calibrated for the raw weights too (a sane network of its own whose
BN statistics still differ a lot from the EMA ones). Random weights stay sane only on the
calibration images themselves (``synthetic.calibration_images``): other images, noise and
checkerboards above all, can give logits in the hundreds or millions at low resolutions.

Command line::

    python -m converter.tfref.generate --variant b0 --out DIR/model.ckpt [--mode full|ema-only|raw-only]
        [--seed N] [--calibrate-res R] [--calibrate-images N] [--num-classes N] [--no-slots]
        [--advprop-norm] [--condconv-names model|plain] [--tarball PATH [--folder-name NAME]]

Lite, EdgeTPU and CondConv checkpoints are calibrated on (x - 127) / 128 inputs, EdgeTPU ones
get 1001 classes; CondConv kernels are named in the inventory's form (``model/`` element) or,
with ``--condconv-names plain``, without it.

prints a one-line JSON summary.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import re
import sys
import tarfile
import time
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np

from ..arch import ArchSpec
from ..errors import ConversionError, first_line
from ..registry import family_of, get_arch, variants_help
from ..synthetic import ADVPROP_MEAN, ADVPROP_STD, IMAGENET_MEAN, IMAGENET_STD
from ..synthetic import calibration_images as _synthetic_calibration_images
from . import reference
from .reference import EMA_SUFFIX, is_moving_stat

MODES = ("full", "ema-only", "raw-only")
# tf.compat.v1.train.RMSPropOptimizer slot names as they appear in the released checkpoints
SLOT_SUFFIXES = ("RMSProp", "RMSProp_1")
GLOBAL_STEP = 218_949  # arbitrary: the value is never used, only the variable's presence
DATA_SUFFIX = ".data-00000-of-00001"  # single-shard tensor bundle, as in the releases
_ALIGN = 64  # bytes; aligned arrays are fed to TensorFlow without a copy
# Gamma of the last BN of every residual block's branch is scaled by this (U(0.5, 1.5) * 0.2 =
# U(0.1, 0.3)), so residual blocks start near identity. Random deep nets are chaotic otherwise:
# measured on l2 at 160 px (4 calibration images), float32 vs float64 of the same graph differ
# by rel 1.1e-3 at scale 1 and 6.6e-6 at 0.2; logits on images other than the calibration
# ones: std 1167 at scale 1, 4.9 at 0.2. 1.0 gives plain U(0.5, 1.5) everywhere.
RESIDUAL_GAMMA_SCALE = 0.2
# ReLU6 models (Lite): gammas of the BNs that feed an activation are scaled by this, so that
# the clipping at 6 is active on a fair share of the activations (with U(0.5, 1.5) and
# calibrated statistics almost nothing reaches 6, and ReLU would pass for ReLU6)
RELU6_GAMMA_SCALE = 4.0
# CondConv routing dense kernels: U(-s/sqrt(in), s/sqrt(in)) (see _init_value)
ROUTING_NAME = re.compile(r"/blocks_\d+/dense/kernel$")
ROUTING_INIT_SCALE = 4.0
# How generated checkpoints name the CondConv kernels (shared/reference/README.md caveat):
# "model": scope/model/blocks_N/cond_conv2d_M/... (the inventory, tf_keras); "plain": without model/
CONDCONV_FORMS = ("model", "plain")


def plan(spec: ArchSpec) -> List[Tuple[str, Tuple[int, ...]]]:
    """Ordered ``[(official name, TF shape)]`` of the model variables that generation writes."""
    return reference.variables(spec)


def _aligned_empty(shape: Sequence[int], dtype=np.float32) -> np.ndarray:
    dtype = np.dtype(dtype)
    n = int(np.prod(shape, dtype=np.int64)) if len(shape) else 1
    buf = np.empty(n * dtype.itemsize + _ALIGN, dtype=np.uint8)
    off = (-buf.ctypes.data) % _ALIGN
    return buf[off:off + n * dtype.itemsize].view(dtype).reshape(tuple(shape))


def _aligned_copy(a: np.ndarray) -> np.ndarray:
    out = _aligned_empty(a.shape, a.dtype)
    out[...] = a
    return out


def _init_value(name: str, shape: Tuple[int, ...], rng: np.random.Generator,
                condconv_shape: Optional[Tuple[int, int, int, int]] = None) -> np.ndarray:
    a = _aligned_empty(shape)
    leaf = name.rsplit("/", 1)[-1]
    if leaf in ("condconv_kernel", "depthwise_condconv_kernel") and condconv_shape and len(shape) == 2:
        # condconv_layers.get_condconv_initializer: conv_kernel_initializer per expert,
        # N(0, sqrt(2 / fan_out)) with the per-example kernel's fan_out = kh * kw * out
        kh, kw, _, out = condconv_shape
        rng.standard_normal(out=a, dtype=np.float32)
        a *= np.float32(np.sqrt(2.0 / (kh * kw * out)))
    elif leaf == "kernel" and len(shape) == 2 and ROUTING_NAME.search(name):
        # CondConv routing dense: wider than dense_kernel_initializer so that the routing
        # weights differ clearly between images (a kernel mixed up between examples shows)
        r = np.float32(ROUTING_INIT_SCALE / np.sqrt(shape[0]))
        rng.random(out=a, dtype=np.float32)
        a *= 2 * r
        a -= r
    elif leaf in ("kernel", "depthwise_kernel") and len(shape) == 4:
        # efficientnet_model.conv_kernel_initializer (also the depthwise initializer):
        # N(0, sqrt(2 / fan_out)), fan_out = kh * kw * shape[3]
        kh, kw, _, out = shape
        rng.standard_normal(out=a, dtype=np.float32)
        a *= np.float32(np.sqrt(2.0 / (kh * kw * out)))
    elif leaf == "kernel" and len(shape) == 2:
        # efficientnet_model.dense_kernel_initializer: U(-1/sqrt(out), 1/sqrt(out))
        r = np.float32(1.0 / np.sqrt(shape[1]))
        rng.random(out=a, dtype=np.float32)
        a *= 2 * r
        a -= r
    elif leaf == "gamma":
        rng.random(out=a, dtype=np.float32)
        a += np.float32(0.5)
    elif leaf in ("beta", "bias"):
        rng.standard_normal(out=a, dtype=np.float32)
        a *= np.float32(0.1)
    elif leaf == "moving_mean":
        a[...] = 0.0
    elif leaf == "moving_variance":
        a[...] = 1.0
    else:
        raise ConversionError(f"no initializer for variable {name!r}")
    return a


def make_weights(spec: ArchSpec, seed: int = 0, calibration_resolution: Optional[int] = None,
                 calibration_images: int = 8, mean: Sequence[float] = IMAGENET_MEAN,
                 std: Sequence[float] = IMAGENET_STD,
                 residual_scale: float = RESIDUAL_GAMMA_SCALE) -> Dict[str, np.ndarray]:
    """The "good" value set ``{name: float32 array}`` of ``plan(spec)``.

    Deterministic in ``seed``. Without calibration the BN statistics are mean 0 / variance 1;
    with ``calibration_resolution`` they are ``reference.calibrate`` on
    ``synthetic.calibration_images(res, calibration_images, mean, std)`` (synthetic images of
    seed ``CALIBRATION_SEED``); logits are safest on exactly those images. The residual branches'
    last BN gammas are scaled by ``residual_scale`` (see ``RESIDUAL_GAMMA_SCALE``).
    """
    return _make_weights(spec, seed, calibration_resolution, calibration_images, mean, std, residual_scale)[0]


def _calibration_images(resolution: int, n: int, mean, std) -> np.ndarray:
    if int(resolution) != resolution or resolution < 8:
        raise ConversionError(f"calibration resolution must be an integer >= 8, got {resolution!r}")
    return _synthetic_calibration_images(int(resolution), n, mean, std)


def residual_branch_gammas(spec: ArchSpec) -> List[str]:
    """Names of the gammas of the last BN of every residual block (scaled by ``residual_scale``)."""
    return [f"{reference.block_names(spec, b).bn2}/gamma" for b in spec.blocks() if b.residual]


def activation_gammas(spec: ArchSpec) -> List[str]:
    """Names of the gammas of every BN followed by the activation (all but the project BNs)."""
    project = {reference.block_names(spec, b).bn2 for b in spec.blocks()}
    return [f"{p}/gamma" for p in reference.bn_layers(spec) if p not in project]


def _make_weights(spec, seed, calibration_resolution, calibration_images, mean, std,
                  residual_scale=RESIDUAL_GAMMA_SCALE):
    if not 0 < residual_scale <= 1:
        raise ConversionError(f"residual scale must be in (0, 1], got {residual_scale!r}")
    rng = np.random.default_rng([int(seed), 0])
    cc_shapes = reference.kernel_shapes(spec)
    values = {name: _init_value(name, shape, rng, cc_shapes.get(name)) for name, shape in plan(spec)}
    for name in residual_branch_gammas(spec):
        values[name] *= np.float32(residual_scale)
    if spec.activation == "relu6":
        for name in activation_gammas(spec):
            values[name] *= np.float32(RELU6_GAMMA_SCALE)
    logit_std = None
    if calibration_resolution is not None:
        images = _calibration_images(calibration_resolution, calibration_images, mean, std)
        logit_std = _calibrate_into(spec, values, images)
    return values, logit_std


def _calibrate_into(spec: ArchSpec, values: Dict[str, np.ndarray], images: np.ndarray) -> float:
    """Replace the BN statistics in ``values`` by calibrated ones; returns the logits' std."""
    stats, logits = reference.calibrate_with_logits(spec, values.__getitem__, images, device="cpu")
    for name, value in stats.items():
        values[name] = _aligned_copy(value)
    return float(np.std(logits))


def _raw_set(spec: ArchSpec, good: Dict[str, np.ndarray], seed: int,
             calibration: Optional[np.ndarray]) -> Tuple[Dict[str, np.ndarray], Optional[float]]:
    """The raw (non-EMA) values of mode "full": every variable clearly different from ``good``.

    Trainable variables are ``good`` plus noise of half their RMS. BN statistics: when the good
    set is calibrated, they are calibrated the same way for the raw weights (so the raw network
    is sane too, yet EMA weights with raw statistics are far off); otherwise the means are
    shifted by about one standard deviation and the variances scaled by 0.3x..3x.
    """
    rng = np.random.default_rng([int(seed), 1])
    raw: Dict[str, np.ndarray] = {}
    for name, _ in plan(spec):
        if not is_moving_stat(name):
            raw[name] = _perturbed(name, good[name], good, rng)
    if calibration is not None:
        return raw, _calibrate_into(spec, raw, calibration)
    for name, _ in plan(spec):
        if is_moving_stat(name):
            raw[name] = _perturbed(name, good[name], good, rng)
    return raw, None


def _perturbed(name: str, good: np.ndarray, values: Dict[str, np.ndarray],
               rng: np.random.Generator) -> np.ndarray:
    """A raw (non-EMA) value clearly different from the good one."""
    a = _aligned_empty(good.shape)
    if name.endswith("/moving_mean"):
        # shifted by about one standard deviation of the channel
        var = values[name[: -len("moving_mean")] + "moving_variance"]
        rng.standard_normal(out=a, dtype=np.float32)
        a *= np.sqrt(np.maximum(var, 0.0) + 1e-6, dtype=np.float32)
        a += good
    elif name.endswith("/moving_variance"):
        # scaled by 0.3x .. 3x (log-uniform)
        rng.random(out=a, dtype=np.float32)
        a *= np.float32(np.log(10.0))
        a += np.float32(np.log(0.3))
        np.exp(a, out=a)
        a *= good
    else:
        flat = good.reshape(-1)
        rms = float(np.sqrt(np.dot(flat, flat) / max(flat.size, 1))) or 1.0
        rng.standard_normal(out=a, dtype=np.float32)
        a *= np.float32(0.5 * rms)
        a += good
    return a


def _slot(kind: str, shape: Tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    a = _aligned_empty(shape)
    if kind == "RMSProp":  # mean square: positive
        rng.random(out=a, dtype=np.float32)
        a *= np.float32(1e-2)
    else:  # momentum
        rng.standard_normal(out=a, dtype=np.float32)
        a *= np.float32(1e-4)
    return a


def write_checkpoint(prefix: str, tensors: Iterable[Tuple[str, np.ndarray]]) -> None:
    """Write ``(name, array)`` pairs with tf.raw_ops.SaveV2 as ``prefix.index`` + one data file.

    Runs SaveV2 in a graph fed with the arrays (64-byte aligned arrays are not copied).
    """
    tf = reference._tf()
    items = list(tensors)
    names = [n for n, _ in items]
    if len(set(names)) != len(names):
        raise ConversionError("write_checkpoint: duplicate tensor names")
    graph = tf.Graph()
    with graph.as_default():
        placeholders = [tf.compat.v1.placeholder(tf.as_dtype(a.dtype), a.shape) for _, a in items]
        save = tf.raw_ops.SaveV2(prefix=tf.constant(str(prefix)), tensor_names=names,
                                 shape_and_slices=[""] * len(items), tensors=placeholders)
    config = tf.compat.v1.ConfigProto(device_count={"GPU": 0})
    with tf.compat.v1.Session(graph=graph, config=config) as sess:
        sess.run(save, feed_dict={p: a for p, (_, a) in zip(placeholders, items)})


def checkpoint_entries(spec: ArchSpec, good: Dict[str, np.ndarray], raw: Optional[Dict[str, np.ndarray]] = None,
                       mode: str = "full", slots: bool = False, seed: int = 0,
                       condconv_form: str = "model") -> List[Tuple[str, np.ndarray]]:
    """The ``(name, array)`` pairs of an official-layout checkpoint of ``plan(spec)`` (without
    ``global_step``), in ``mode`` (``MODES``): ``good`` are the EMA values (mode "full": ``raw`` the
    raw variables, popped from it as used), ``slots`` the RMSProp slots of mode "full" (seeded by ``seed``)."""
    slot_rng = np.random.default_rng([int(seed), 2])
    entries: List[Tuple[str, np.ndarray]] = []
    for name, shape in plan(spec):
        orig = name
        value = good[name]
        if condconv_form == "plain" and name.endswith("condconv_kernel"):
            name = name.replace(f"{spec.scope}/model/", f"{spec.scope}/", 1)
        if mode == "full":
            entries.append((name, raw.pop(orig)))
            entries.append((f"{name}/{EMA_SUFFIX}", value))
            if slots and not is_moving_stat(name):
                entries.extend((f"{name}/{k}", _slot(k, shape, slot_rng)) for k in SLOT_SUFFIXES)
        elif mode == "ema-only":
            entries.append((f"{name}/{EMA_SUFFIX}", value))
        else:
            entries.append((name, value))
    return entries


def write_official_checkpoint(prefix: str, spec: ArchSpec, values: Dict[str, np.ndarray],
                              global_step: int = 0) -> int:
    """The way back (convert-effnet export --tf-checkpoint): ``values`` ({official name: TF-layout
    array} of every variable of ``plan(spec)``) written as a released checkpoint holds them, each as the
    variable and as its ``ExponentialMovingAverage`` twin (BN moving statistics too; the same values),
    plus ``global_step``; no optimizer slots. ``prefix.index``/``.data-00000-of-00001`` and the
    ``checkpoint`` file beside it. Returns the number of tensors."""
    names = [n for n, _ in plan(spec)]
    missing, unexpected = [n for n in names if n not in values], sorted(set(values) - set(names))
    if missing or unexpected:
        raise ConversionError(f"not the variables of {spec.name}: {len(missing)} missing "
                              f"({', '.join(missing[:3])}), {len(unexpected)} unexpected ({', '.join(unexpected[:3])})")
    entries = checkpoint_entries(spec, values, dict(values), "full", slots=False)
    entries.append(("global_step", np.array(int(global_step), dtype=np.int64)))
    write_checkpoint(prefix, entries)
    _write_checkpoint_file(prefix)
    return len(entries)


def _write_checkpoint_file(prefix: str) -> str:
    folder, base = os.path.split(os.path.abspath(prefix))
    path = os.path.join(folder, "checkpoint")
    with open(path, "w") as f:
        f.write(f'model_checkpoint_path: "{base}"\nall_model_checkpoint_paths: "{base}"\n')
    return path


def generate_checkpoint(variant: Union[str, ArchSpec], prefix: str, mode: str = "full", seed: int = 0,
                        calibration_resolution: Optional[int] = None, calibration_images: int = 8,
                        num_classes: Optional[int] = None, slots: bool = True,
                        mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                        residual_scale: float = RESIDUAL_GAMMA_SCALE, condconv_form: str = "model") -> dict:
    """Write an official-layout checkpoint for ``variant`` at ``prefix`` and return a summary dict.

    ``slots`` (RMSProp slots) only apply to mode "full". ``global_step`` is written in every mode.
    ``mean``/``std``: the normalization of the calibration images. ``residual_scale``: see
    ``RESIDUAL_GAMMA_SCALE``. ``condconv_form``: how CondConv kernels are named
    (``CONDCONV_FORMS``).
    """
    if condconv_form not in CONDCONV_FORMS:
        raise ConversionError(f"unknown condconv name form {condconv_form!r}; known: {', '.join(CONDCONV_FORMS)}")
    t0 = time.perf_counter()
    if mode not in MODES:
        raise ConversionError(f"unknown mode {mode!r}; known: {', '.join(MODES)}")
    if num_classes is None:  # the architecture's own (1000; 1001 for EdgeTPU)
        num_classes = (variant if isinstance(variant, ArchSpec) else get_arch(variant)).num_classes
    if int(num_classes) != num_classes or num_classes < 1:
        raise ConversionError(f"num_classes must be a positive integer, got {num_classes!r}")
    if int(calibration_images) != calibration_images or calibration_images < 1:
        raise ConversionError(f"calibration_images must be a positive integer, got {calibration_images!r}")
    if calibration_resolution is not None and (
            int(calibration_resolution) != calibration_resolution or calibration_resolution < 8):
        raise ConversionError(f"calibration resolution must be an integer >= 8, got {calibration_resolution!r}")
    prefix = str(prefix)
    if not os.path.basename(prefix) or os.path.isdir(prefix):
        raise ConversionError(f"prefix {prefix!r} must be a file prefix such as DIR/model.ckpt, not a folder")
    spec = variant if isinstance(variant, ArchSpec) else get_arch(variant)
    spec = spec.with_classes(int(num_classes))
    os.makedirs(os.path.dirname(os.path.abspath(prefix)), exist_ok=True)

    good, logit_std = _make_weights(spec, seed, calibration_resolution, calibration_images, mean, std,
                                    residual_scale)
    raw: Dict[str, np.ndarray] = {}
    raw_logit_std = None
    if mode == "full":
        calibration = (None if calibration_resolution is None else
                       _calibration_images(calibration_resolution, calibration_images, mean, std))
        raw, raw_logit_std = _raw_set(spec, good, seed, calibration)
    entries = checkpoint_entries(spec, good, raw, mode, slots, seed, condconv_form)
    params = sum(good[name].size for name, _ in plan(spec) if not is_moving_stat(name))
    del good
    entries.append(("global_step", np.array(GLOBAL_STEP, dtype=np.int64)))
    n_tensors = len(entries)
    write_checkpoint(prefix, entries)
    del entries
    _write_checkpoint_file(prefix)
    data = prefix + DATA_SUFFIX
    return {
        "variant": spec.name, "scope": spec.scope, "prefix": prefix, "mode": mode, "seed": int(seed),
        "num_classes": spec.num_classes, "params": int(params), "tensors": n_tensors,
        "bytes": os.path.getsize(data) if os.path.exists(data) else None,
        "slots": bool(slots and mode == "full"),
        "calibration_resolution": calibration_resolution,
        "calibration_images": calibration_images if calibration_resolution is not None else None,
        "calibration_logit_std": logit_std,
        "raw_calibration_logit_std": raw_logit_std,
        "mean": list(mean), "std": list(std), "residual_scale": residual_scale,
        "seconds": round(time.perf_counter() - t0, 3),
    }


def make_tarball(prefix: str, tar_path: str, folder_name: str, compresslevel: int = 1) -> str:
    """Pack ``prefix`` as an official-style ``.tar.gz``: ``folder_name/model.ckpt.{index,data-*}``
    plus ``folder_name/checkpoint``; returns ``tar_path``."""
    if not folder_name or "/" in folder_name or "\\" in folder_name or folder_name in (".", ".."):
        raise ConversionError(f"folder name {folder_name!r} must be one plain path element")
    prefix = str(prefix)
    folder = os.path.dirname(os.path.abspath(prefix))
    base = os.path.basename(prefix)
    index = prefix + ".index"
    shards = sorted(f for f in os.listdir(folder) if f.startswith(base + ".data-")) if os.path.isdir(folder) else []
    if not os.path.isfile(index) or not shards:
        raise ConversionError(f"no checkpoint at {prefix!r} (need {base}.index and {base}.data-*)")
    text = b'model_checkpoint_path: "model.ckpt"\nall_model_checkpoint_paths: "model.ckpt"\n'
    with tarfile.open(tar_path, "w:gz", compresslevel=compresslevel) as tar:
        d = tarfile.TarInfo(folder_name)
        d.type, d.mode, d.mtime = tarfile.DIRTYPE, 0o755, int(time.time())
        tar.addfile(d)
        tar.add(index, arcname=f"{folder_name}/model.ckpt.index", recursive=False)
        for shard in shards:
            tar.add(os.path.join(folder, shard),
                    arcname=f"{folder_name}/model.ckpt{shard[len(base):]}", recursive=False)
        info = tarfile.TarInfo(f"{folder_name}/checkpoint")
        info.size, info.mode, info.mtime = len(text), 0o644, int(time.time())
        tar.addfile(info, io.BytesIO(text))
    return str(tar_path)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m converter.tfref.generate",
                                description="Write a random-weight checkpoint in the official EfficientNet layout.")
    p.add_argument("--variant", required=True, help=variants_help())
    p.add_argument("--out", required=True, help="checkpoint prefix, e.g. DIR/model.ckpt")
    p.add_argument("--mode", choices=MODES, default="full")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--calibrate-res", type=int, default=None,
                   help="calibrate the BN statistics on synthetic images of this size")
    p.add_argument("--calibrate-images", type=int, default=8)
    p.add_argument("--num-classes", type=int, default=None, help="default: the architecture's (1001: EdgeTPU)")
    p.add_argument("--no-slots", action="store_true", help="no RMSProp slots (mode full)")
    p.add_argument("--advprop-norm", action="store_true",
                   help="calibrate on x*2/255-1 inputs (AdvProp) instead of ImageNet mean/std")
    p.add_argument("--residual-scale", type=float, default=RESIDUAL_GAMMA_SCALE,
                   help="scale of the residual branches' last BN gamma (1: plain U(0.5, 1.5))")
    p.add_argument("--condconv-names", choices=CONDCONV_FORMS, default="model",
                   help="CondConv kernel names: with the tf_keras model/ element (default) or without")
    p.add_argument("--fused-stride", choices=("expand", "project"), default="expand",
                   help="EdgeTPU: calibrate with the fused blocks strided on the kxk expand conv (default, the current "
                        "official code) or on the 1x1 project conv (the 2019 code)")
    p.add_argument("--tarball", default=None, help="also pack the checkpoint into this .tar.gz")
    p.add_argument("--folder-name", default=None, help="folder inside the tarball (default: from --tarball)")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    """CLI entry point; prints one JSON line, returns the exit code (0 ok, 2 bad input)."""
    args = _parser().parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    mean, std = (ADVPROP_MEAN, ADVPROP_STD) if args.advprop_norm else (IMAGENET_MEAN, IMAGENET_STD)
    try:
        spec = get_arch(args.variant)
        own = family_of(spec).synthetic_norm.get(spec.family)  # e.g. Lite's (x - 127) / 128
        if not args.advprop_norm and own:
            mean, std = own
    except ConversionError as e:
        print(f"error: {first_line(e)}", file=sys.stderr)
        return e.exit_code
    try:
        variant = get_arch(args.variant).with_fused_stride(args.fused_stride)
        info = generate_checkpoint(variant, args.out, mode=args.mode, seed=args.seed,
                                   calibration_resolution=args.calibrate_res,
                                   calibration_images=args.calibrate_images,
                                   num_classes=args.num_classes, slots=not args.no_slots,
                                   mean=mean, std=std, residual_scale=args.residual_scale,
                                   condconv_form=args.condconv_names)
        if args.tarball:
            folder = args.folder_name or os.path.basename(args.tarball).split(".tar")[0]
            info["tarball"] = make_tarball(args.out, args.tarball, folder)
    except ConversionError as e:
        print(f"error: {first_line(e)}", file=sys.stderr)
        return e.exit_code
    except OSError as e:
        print(f"error: {first_line(e)}", file=sys.stderr)
        return 2
    except Exception as e:
        tf = sys.modules.get("tensorflow")
        if tf is not None and isinstance(e, tf.errors.OpError):
            print(f"error: TensorFlow: {first_line(e)}", file=sys.stderr)
            return 2
        raise
    print(json.dumps(info))
    return 0


if __name__ == "__main__":
    sys.exit(main())
