"""Verification stage: TensorFlow on the original checkpoint vs PyTorch on the converted weights.

The TensorFlow side (converter/tfref/reference.py) runs in its own process: it reads the
checkpoint by its official names and computes with TensorFlow's own ops, sharing nothing with
the PyTorch module or the mapping tables beyond the architecture table. Keeping the two
frameworks in separate processes also avoids the TensorFlow/torchvision import-order crash.
The reference reads the same copy of the weights the file holds (metadata ``ema``: the EMA twins,
else the raw variables).

The verdict (:func:`judge`) separates conversion errors from float32 rounding. Both sides also
run in float64 (weights and images cast up exactly): a correct conversion agrees there to
~1e-10 whatever the input, a wrong one (raw for EMA weights, one tensor off, symmetric padding)
by 1e-4 and more, so the float64 comparison is held to ``MAX_REL_ERROR_F64``. The float32
comparison (what the converted file gives in use) is held to ``--max-rel-error``, raised to
``NOISE_FACTOR`` times float32's own error on these images (TensorFlow float32 against
TensorFlow float64, the "float32 floor"): on inputs that blow activations up (a checkpoint
calibrated on photos, fed checkerboards) float32 itself is off by 0.1 and more.
"""
from __future__ import annotations

import json
import logging
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..checkpoint import DEFAULT_PREPROCESSING
from ..errors import ConversionError, VerificationError

log = logging.getLogger("converter")

# Pass criteria. float32 (issue 3): a correct float32 port reaches ~1e-5 on sane inputs; the
# criterion is raised to NOISE_FACTOR x float32's own error where that is larger (issue 25)
MAX_REL_ERROR = 1e-4
# float32's own error x NOISE_FACTOR (criteria.py): also the per-tap factor of verify --trace (trace.py)
from .criteria import NOISE_FACTOR  # noqa: E402
# float64 on both sides: correct conversions measured 1e-16..7e-10 (7e-10: b1 on checkerboards
# where float32 itself is off by 0.2); wrong ones 1e-4..1. Raised, like the float32 criterion, to
# NOISE_FACTOR x float32's floor scaled to float64's precision (2**-29: the ratio of the two
# epsilons) where that is larger (float32 off by more than 2.7: never seen), never above
# MAX_F64_TOLERANCE (also where float32 overflowed: a non-finite floor)
MAX_REL_ERROR_F64 = 1e-7
MAX_F64_TOLERANCE = 1e-6
EPS_RATIO = float(np.finfo(np.float64).eps / np.finfo(np.float32).eps)
DEFAULT_IMAGES = 8
from ..synthetic import CALIBRATION_SEED

# The fixed synthetic set: generated test checkpoints are BN-calibrated on these very images
# (shared/reference known hazards); for real checkpoints any fixed set does.
VERIFY_SEED = CALIBRATION_SEED
# --resolution: below 32 px the five stride-2 stages leave a 1x1 map; above 2048 px one image of
# L2 alone needs tens of GB
MIN_RESOLUTION, MAX_RESOLUTION = 32, 2048
WORST_SHOWN = 3  # images named in the summary, worst first
# formats TensorFlow's decode_image reads (tf 2.21: "One of JPEG, JPEG XL, PNG, GIF, BMP, WebP");
# sniffed by signature before anything is converted
TF_IMAGE_SIGNATURES = ((b"\xff\xd8\xff", "JPEG"), (b"\x89PNG\r\n\x1a\n", "PNG"), (b"GIF87a", "GIF"),
                       (b"GIF89a", "GIF"), (b"BM", "BMP"))


@dataclass
class ParityReport:
    """What the verification measured, as written to the JSON report."""

    variant: str
    flavor: str
    resolution: int
    images: int
    device_torch: str
    device_tf: str
    max_abs_diff: float
    rel_error: float
    top1_agreement: float
    top5_agreement: float
    tf_images_per_s: float
    torch_images_per_s: float
    logit_std: float
    passed: bool
    failures: List[str] = field(default_factory=list)
    weights: str = ""
    checkpoint: str = ""
    weights_sha256: str = ""  # of the file that was checked (the bytes now under ``weights``)
    # one row per image: image, rel_error, max_abs_diff, top1_tf, top1_torch; worst first in ``worst``
    per_image: List[Dict[str, object]] = field(default_factory=list)
    worst: List[str] = field(default_factory=list)
    trace: Optional[Dict[str, object]] = None  # --trace: the tap table (converter/verify/trace.py)
    # issue 25: the copy of the weights both sides hold ("EMA" or "raw", metadata ``ema``), the
    # float64 comparison and float32's own error, the criteria applied (see judge)
    reference_weights: str = "EMA"
    rel_error_f64: Optional[float] = None
    max_abs_diff_f64: Optional[float] = None
    top1_agreement_f64: Optional[float] = None
    float32_floor: Optional[float] = None
    max_rel_error: float = MAX_REL_ERROR
    tolerance: Optional[float] = None
    tolerance_f64: Optional[float] = None
    float64_seconds: Optional[float] = None  # both float64 passes (TensorFlow + PyTorch), forward only
    # --dtype bf16/fp16 (issue 27): the model in that precision vs the official float32 logits
    # (low_precision_figures); reported, not part of the verdict
    low_precision: Optional[Dict[str, object]] = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    def summary(self) -> str:
        if self.trace is not None:  # --trace: the tap table, then the summary line
            from .trace import format_table

            return format_table(self.trace) + "\n" + self._summary_line() + self._low_precision_line()
        return self._summary_line() + self._low_precision_line()

    def _low_precision_line(self) -> str:
        lp = self.low_precision
        if not lp:
            return ""
        return (f"\n{lp['dtype']} ({lp['how']}) vs the official float32 logits: rel error {lp['rel_error']:.3g}, "
                f"max |diff| {lp['max_abs_diff']:.3g}, top-1 agreement {lp['top1_agreement']:.0%}, "
                f"top-5 agreement {lp['top5_agreement']:.0%}, PyTorch {lp['images_per_s']:.1f} img/s")

    def _top1_agree(self) -> int:
        """How many images have the same top-1 on both sides."""
        if self.per_image:
            return sum(1 for r in self.per_image if r["top1_tf"] == r["top1_torch"])
        return int(round(self.top1_agreement * self.images))

    def _summary_line(self) -> str:
        worst = ""
        if self.per_image:
            rows = {r["image"]: r for r in self.per_image}
            worst = "; worst: " + ", ".join(f"{name} {rows[name]['rel_error']:.2g}" for name in self.worst)
        f64 = ""
        if self.rel_error_f64 is not None:
            f64 = (f" (tolerance {self.tolerance:.3g}: TensorFlow's own float32 error here {self.float32_floor:.3g}); "
                   f"float64 on both sides (the conversion): rel error {self.rel_error_f64:.3g} "
                   f"(tolerance {self.tolerance_f64:.3g})")
        return (f"parity {self.variant}_{self.flavor} ({self.reference_weights} weights) at {self.resolution} px on "
                f"{self.images} images: float32: max |diff| {self.max_abs_diff:.3g}, rel error {self.rel_error:.3g}"
                f"{f64}{worst}, top-1 agreement {self._top1_agree()}/{self.images} images ({self.top1_agreement:.0%}), "
                f"top-5 agreement {self.top5_agreement:.0%}, "
                f"TF {self.tf_images_per_s:.1f} img/s ({self.device_tf}), "
                f"PyTorch {self.torch_images_per_s:.1f} img/s ({self.device_torch}): "
                + ("PASS" if self.passed else "FAIL (" + "; ".join(self.failures) + ")"))


def _rel(got: np.ndarray, ref: np.ndarray) -> float:
    """||got - ref|| / ||ref|| (inf where not finite)."""
    with np.errstate(invalid="ignore", over="ignore"):
        rel = float(np.linalg.norm(got - ref) / max(np.linalg.norm(ref), 1e-30))
    return rel if np.isfinite(rel) else float("inf")


def _pair(a, b, what: str) -> Tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise VerificationError(f"{what}logit shapes differ: TensorFlow {a.shape}, PyTorch {b.shape}")
    return a, b


def compare(tf_logits: np.ndarray, torch_logits: np.ndarray, tf64: Optional[np.ndarray] = None,
            torch64: Optional[np.ndarray] = None) -> Dict[str, float]:
    """Max abs difference, relative error ||torch - tf|| / ||tf||, top-1/top-5 agreement of the
    float32 logits; with ``tf64`` (the reference's float64 logits of the same images) also
    ``float32_floor`` (||tf - tf64|| / ||tf64||: float32's own error); with ``torch64`` too, the
    float64 comparison (``rel_error_f64``, ``max_abs_diff_f64``, ``top1_agreement_f64``). Any
    reference/candidate pair works (export: PyTorch as the reference of an exported graph)."""
    a, b = _pair(tf_logits, torch_logits, "")
    diff = b - a
    k = min(5, a.shape[1])
    top5_a = np.argsort(-a, axis=1)[:, :k]
    top5_b = np.argsort(-b, axis=1)[:, :k]
    out = {
        "max_abs_diff": float(np.abs(diff).max()) if diff.size else 0.0,
        "rel_error": _rel(b, a),
        "top1_agreement": float(np.mean(top5_a[:, 0] == top5_b[:, 0])),
        "top5_agreement": float(np.mean([set(x) == set(y) for x, y in zip(top5_a, top5_b)])),
        "logit_std": float(a.std()),
    }
    if tf64 is not None:
        a64, _ = _pair(tf64, a, "float32 / float64 ")
        out["float32_floor"] = _rel(a, a64)
        if torch64 is not None:
            _, b64 = _pair(a64, torch64, "float64 ")
            out.update(rel_error_f64=_rel(b64, a64), max_abs_diff_f64=float(np.abs(b64 - a64).max()) if a64.size else 0.0,
                       top1_agreement_f64=float(np.mean(a64.argmax(1) == b64.argmax(1))))
    return out


def per_image(tf_logits: np.ndarray, torch_logits: np.ndarray, names: Sequence[str],
              tf64: Optional[np.ndarray] = None, torch64: Optional[np.ndarray] = None) -> List[Dict[str, object]]:
    """Each image's relative error, max abs difference and top-1 of both sides, in input order;
    with the float64 logits also its float32 floor and float64 relative error (see compare)."""
    a = np.asarray(tf_logits, dtype=np.float64)
    b = np.asarray(torch_logits, dtype=np.float64)
    rows = []
    for i, (name, x, y) in enumerate(zip(names, a, b)):
        row = {"image": str(name), "rel_error": _rel(y, x),
               "max_abs_diff": float(np.abs(y - x).max()) if x.size else 0.0,
               "top1_tf": int(x.argmax()), "top1_torch": int(y.argmax())}
        if tf64 is not None:
            x64 = np.asarray(tf64[i], dtype=np.float64)
            row["float32_floor"] = _rel(x, x64)
            if torch64 is not None:
                y64 = np.asarray(torch64[i], dtype=np.float64)
                row.update(rel_error_f64=_rel(y64, x64), top1_f64_tf=int(x64.argmax()), top1_f64_torch=int(y64.argmax()))
        rows.append(row)
    return rows


def worst_images(rows: Sequence[Dict[str, object]], n: int = WORST_SHOWN) -> List[str]:
    """Names of the ``n`` images with the largest relative error, worst first."""
    return [str(r["image"]) for r in sorted(rows, key=lambda r: -float(r["rel_error"]))[:n]]


def tolerances(metrics: Dict[str, float], max_rel_error: float = MAX_REL_ERROR) -> Tuple[float, float]:
    """(float32 criterion, float64 criterion) for comparisons whose float32 floor is
    ``metrics["float32_floor"]`` (absent: 0): ``max_rel_error`` and ``MAX_REL_ERROR_F64``, each
    raised to ``NOISE_FACTOR`` times float32's own error (scaled by ``EPS_RATIO`` for float64, at
    most ``MAX_F64_TOLERANCE``)."""
    floor = float(metrics.get("float32_floor") or 0.0)
    floor = floor if np.isfinite(floor) else float("inf")
    return (max(max_rel_error, NOISE_FACTOR * floor),
            min(max(MAX_REL_ERROR_F64, NOISE_FACTOR * floor * EPS_RATIO), MAX_F64_TOLERANCE))


def _over(rows: Sequence[Dict[str, object]], key: str, tol) -> str:
    over = [r for r in rows if key in r and not float(r[key]) <= tol(r)]
    if not over:
        return ""
    worst = [str(r["image"]) for r in sorted(over, key=lambda r: -float(r[key]))[:WORST_SHOWN]]
    return f" ({len(over)} of {len(rows)} images over it, worst {', '.join(worst)})"


def _top1(rows: Sequence[Dict[str, object]], agreement: float, a: str, b: str, what: str) -> List[str]:
    if agreement >= 1.0:
        return []
    differ = [str(r["image"]) for r in rows if a in r and r[a] != r[b]]
    shown = ", ".join(differ[:WORST_SHOWN]) + (f" and {len(differ) - WORST_SHOWN} more" if len(differ) > WORST_SHOWN else "")
    return [f"top-1 differs{what} on {1 - agreement:.0%} of the images" + (f": {shown}" if differ else "")]


def judge(metrics: Dict[str, float], max_rel_error: float = MAX_REL_ERROR,
          rows: Sequence[Dict[str, object]] = ()) -> List[str]:
    """The verdict: the failed checks (empty when the conversion passes); with ``rows`` (per_image),
    naming the images. ``metrics``: what :func:`compare` returns.

    - float32 relative error <= :func:`tolerances`' first: ``max_rel_error``, or ``NOISE_FACTOR``
      times the float32 floor where that is larger (only ``max_rel_error`` without a floor);
    - with the float64 comparison: its relative error <= the second, and the same top-1 in float64;
    - without it: the same top-1 in float32, unless float32's own error raised the criterion (then
      float32 rounding decides near ties, and nothing finer is measured).
    """
    failures = []
    tol32, tol64 = tolerances(metrics, max_rel_error)
    has_floor = "float32_floor" in metrics
    if "rel_error_f64" in metrics and not metrics["rel_error_f64"] <= tol64:
        where = _over(rows, "rel_error_f64", lambda r: tolerances(r, max_rel_error)[1])
        failures.append(f"conversion error (float64 on both sides) {metrics['rel_error_f64']:.3g} > {tol64:.3g}{where}")
    if not metrics["rel_error"] <= tol32:
        where = _over(rows, "rel_error", lambda r: tolerances(r if has_floor else {}, max_rel_error)[0])
        floor = (f" (max of {max_rel_error:g} and {NOISE_FACTOR:g} x float32's own error {metrics['float32_floor']:.3g})"
                 if has_floor else "")
        failures.append(f"{'float32 ' if has_floor else ''}relative error {metrics['rel_error']:.3g} > {tol32:.3g}"
                        f"{floor}{where}")
    if "top1_agreement_f64" in metrics:
        failures += _top1(rows, metrics["top1_agreement_f64"], "top1_f64_tf", "top1_f64_torch", " (float64)")
    elif tol32 <= max_rel_error:
        failures += _top1(rows, metrics["top1_agreement"], "top1_tf", "top1_torch", "")
    return failures


def verification_images(resolution: int, mean: Sequence[float], std: Sequence[float],
                        n: int = DEFAULT_IMAGES, files: Sequence[str] = (), crop_pct: Optional[float] = None,
                        pipeline=DEFAULT_PREPROCESSING) -> np.ndarray:
    """The fixed synthetic set at ``resolution`` (plus the user's files), normalized, NHWC float32."""
    from ..synthetic import normalize, synthetic_images

    parts = []
    if n:
        parts.append(normalize(synthetic_images(resolution, n, seed=VERIFY_SEED), mean, std))
    if files:
        parts.append(tf_preprocess(files, resolution, mean, std, crop_pct, pipeline))
    if not parts:
        raise ConversionError("no images to verify on: use --num-images > 0 or --images")
    return np.concatenate(parts).astype(np.float32)


def image_names(resolution: int, n: int, files: Sequence[str] = ()) -> List[str]:
    """How the report names the images of :func:`verification_images`: ``synthetic-3 (blobs)``, then the files."""
    from ..synthetic import image_kinds

    return [f"synthetic-{i} ({kind})" for i, kind in enumerate(image_kinds(resolution, n) if n else [])] + \
        [str(f) for f in files]


@dataclass
class VerifyPlan:
    """Everything the verification needs, checked and computed before anything is converted."""

    images: np.ndarray  # NHWC float32, normalized
    names: List[str]
    resolution: int
    device: str  # resolved: cpu or cuda
    dump_logits: Optional[Path]
    max_rel_error: float
    trace: bool = False  # --trace: also compare every stage (converter/verify/trace.py)
    dtype: str = "float32"  # --dtype bf16/fp16: also run the model in that precision (not in the verdict)


def check_image_file(path: str) -> None:
    """One line naming the file when it is missing, unreadable, or not an image TensorFlow decodes."""
    from ..preprocess import decode

    p = Path(path)
    if not p.exists():
        raise ConversionError(f"--images {path}: no such file")
    if not p.is_file():
        raise ConversionError(f"--images {path}: not a file")
    try:
        with open(p, "rb") as fh:
            head = fh.read(16)
    except OSError as e:
        raise ConversionError(f"--images {path}: cannot read it: {e.strerror or e}") from None
    kind = next((k for sig, k in TF_IMAGE_SIGNATURES if head.startswith(sig)), None)
    if kind is None and head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        kind = "WebP"
    if kind is None:
        what = "empty" if not head else "not an image TensorFlow decodes"
        raise ConversionError(f"--images {path}: {what} (expected JPEG, PNG, GIF, BMP or WebP)")
    try:  # the decoder predict uses (libjpeg-turbo / Pillow): a truncated or corrupt file fails here
        decode(p)
    except ConversionError:
        raise ConversionError(f"--images {path}: cannot decode this {kind} file (truncated or corrupt?)") from None


def check_dump_path(path: Path) -> None:
    """--dump-logits names a file in an existing, writable folder."""
    from ..writer import check_writable_folder

    path = Path(path)
    if path.is_dir():
        raise ConversionError(f"--dump-logits {path} is a folder; name a file (e.g. logits.npz)")
    if not path.parent.is_dir():
        raise ConversionError(f"--dump-logits {path}: folder {path.parent} does not exist")
    check_writable_folder(path.parent, "--dump-logits folder")


def num_images(n_images: Optional[int], image_files: Sequence[str] = ()) -> int:
    """Synthetic images to verify on: ``n_images``, or when not given ``DEFAULT_IMAGES`` without
    ``--images`` and none with them (the user's images alone)."""
    if n_images is None:
        return 0 if image_files else DEFAULT_IMAGES
    return n_images


def check_options(resolution: Optional[int] = None, n_images: Optional[int] = None, image_files: Sequence[str] = (),
                  device: str = "auto", dump_logits: Optional[Path] = None, max_rel_error: float = MAX_REL_ERROR,
                  native: Optional[int] = None) -> str:
    """Check the verification options that need no model (one line for the first bad one); returns
    the resolved device. Also what ``--all`` checks before its first checkpoint."""
    require_tensorflow()
    if not (isinstance(max_rel_error, (int, float)) and math.isfinite(max_rel_error) and max_rel_error > 0):
        raise ConversionError(f"--max-rel-error must be a positive number, got {max_rel_error}")
    n_images = num_images(n_images, image_files)
    if n_images < 0:
        raise ConversionError(f"--num-images must be 0 or more, got {n_images}")
    if not n_images and not image_files:
        raise ConversionError("no images to verify on: use --num-images > 0 or --images")
    if resolution is not None and not MIN_RESOLUTION <= resolution <= MAX_RESOLUTION:
        native_note = f" (the model's native resolution is {native})" if native else ""
        raise ConversionError(f"--resolution {resolution}: use {MIN_RESOLUTION}..{MAX_RESOLUTION} px{native_note}")
    dev = resolve_device(device)
    if dump_logits is not None:
        check_dump_path(Path(dump_logits))
    for f in image_files:
        check_image_file(f)
    return dev


def plan_verification(cfg: Dict[str, object], resolution: Optional[int] = None, n_images: Optional[int] = None,
                      image_files: Sequence[str] = (), device: str = "auto", dump_logits: Optional[Path] = None,
                      max_rel_error: float = MAX_REL_ERROR, progress: bool = False, trace: bool = False,
                      dtype: str = "float32") -> VerifyPlan:
    """Check every verification option and compute the images (``cfg``: the metadata the weights
    have or will have). Runs before a conversion with ``--verify``, so that a bad option stops it
    before anything is written."""
    native = int(cfg["input_size"][-1])
    dev = check_options(resolution, n_images, image_files, device, dump_logits, max_rel_error, native)
    from ..fast import PRECISIONS

    if dtype not in PRECISIONS:
        raise ConversionError(f"--dtype {dtype!r}: use one of {', '.join(PRECISIONS)}")
    n_images = num_images(n_images, image_files)
    res = int(resolution or native)
    dump = Path(dump_logits) if dump_logits is not None else None
    if image_files and progress:
        log.info("verify: preprocessing %d image(s) with TensorFlow (official eval pipeline)", len(image_files))
    from ..registry import preprocessing_of

    images = verification_images(res, cfg["mean"], cfg["std"], n_images, image_files, cfg.get("crop_pct"),
                                 preprocessing_of(cfg))
    return VerifyPlan(images=images, names=image_names(res, n_images, image_files), resolution=res, device=dev,
                      dump_logits=dump, max_rel_error=float(max_rel_error), trace=bool(trace), dtype=dtype)


def _tf_env(device: str) -> Dict[str, str]:
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = "-1"
    return env


def require_tensorflow() -> None:
    """One clear line when the verification stage's TensorFlow is not installed."""
    import importlib.util

    if importlib.util.find_spec("tensorflow") is None:
        raise ConversionError("the verification stage needs TensorFlow: pip install 'effnet-convert[verify]' "
                              "(or pip install tensorflow-cpu); conversion itself does not")


def _run_tf(module: str, args: List[str], device: str, timeout: Optional[float] = None) -> None:
    require_tensorflow()
    cmd = [sys.executable, "-m", module] + args
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_tf_env(device), timeout=timeout)
    if proc.returncode != 0:
        lines = [l for l in proc.stderr.strip().splitlines() if l.strip()]
        last = lines[-1] if lines else f"exit status {proc.returncode}"
        m = re.match(r"cannot read image (.+?): ", last)  # converter.tfref.preprocess: TF's decoder refused it
        if m:
            raise ConversionError(f"--images {m.group(1)}: TensorFlow cannot decode this image (corrupt, or a "
                                  "format variant its decoder lacks)")
        raise ConversionError(f"TensorFlow reference failed: {last}")


def tf_preprocess(files: Sequence[str], resolution: int, mean: Sequence[float], std: Sequence[float],
                  crop_pct: Optional[float] = None, pipeline=DEFAULT_PREPROCESSING) -> np.ndarray:
    """The official eval preprocessing of image files, run by TensorFlow in its own process
    (``pipeline``: the checkpoint's, converter.checkpoint.Preprocessing)."""
    for f in files:
        check_image_file(f)
    with tempfile.TemporaryDirectory(prefix="effnet-pre-") as tmp:
        out = Path(tmp) / "images.npz"
        args = ["--resolution", str(resolution), "--out", str(out),
                "--mean", *map(str, mean), "--std", *map(str, std)]
        if crop_pct is not None:
            args += ["--crop-pct", repr(float(crop_pct))]
        if pipeline.resize != "bicubic":
            args += ["--resize", pipeline.resize]
        if pipeline.v2:  # EfficientNetV2's own eval
            args += ["--preprocessing", pipeline.v2]
        _run_tf("converter.tfref.preprocess", args + ["--files", *map(str, files)], "cpu")
        with np.load(out) as z:
            return z["images"]


REFERENCE_MODULE = "converter.tfref.reference"  # the TensorFlow reference's command line


def reference_logits(prefix: str, variant: str, images: np.ndarray, num_classes: Optional[int] = None,
                     device: str = "cpu", use_ema: bool = True,
                     fused_stride: Optional[str] = None,
                     extra_args: Sequence[str] = (),
                     module: str = REFERENCE_MODULE, float64: bool = False):
    """(logits, seconds of forward, device) of the TensorFlow reference on ``images``; with
    ``float64``, (logits, seconds, device, float64 logits, their seconds): the same graph in float64.

    ``use_ema``: read the EMA twins (as the official eval does), else the raw variables.

    ``fused_stride``: EdgeTPU fused blocks' stride placement (arch.FUSED_STRIDES; None: the default).
    ``module``, ``extra_args``: another entry point over the reference's command line and its own
    options (verify --trace: converter.tfref.taps, trace.Tracer.reference_args).
    """
    with tempfile.TemporaryDirectory(prefix="effnet-verify-") as tmp:
        inp, out = Path(tmp) / "in.npz", Path(tmp) / "out.npz"
        np.savez(inp, images=images)
        args = ["--checkpoint", str(prefix), "--variant", variant, "--images", str(inp), "--out", str(out),
                "--device", device]
        if num_classes is not None:
            args += ["--num-classes", str(num_classes)]
        if not use_ema:
            args.append("--no-ema")
        if fused_stride is not None:
            args += ["--fused-stride", str(fused_stride)]
        if float64:
            args.append("--float64")
        _run_tf(module, args + list(extra_args), device)  # module: converter.tfref.taps with --trace
        with np.load(out) as z:
            got = (z["logits"], float(z["seconds"]), str(z["device"]))
            return got + (z["logits64"], float(z["seconds64"])) if float64 else got


def resolve_device(device: str) -> str:
    """'auto' -> 'cuda' when PyTorch sees a GPU, else 'cpu'; on CUDA, strict float32 math."""
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ConversionError("--device cuda: PyTorch sees no GPU; use --device cpu or auto")
    if device not in ("cpu", "cuda"):
        raise ConversionError(f"unknown --device {device!r}; use auto, cpu or cuda")
    if device == "cuda":
        # cuDNN convolutions default to TF32 (10-bit mantissa) on Ampere and later GPUs: ~1e-3
        # relative error, visible in the logits; the official eval computes in float32
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    return device


def torch_logits(model, images: np.ndarray, device: str = "cpu", batch_size: int = 8,
                 float64: bool = False) -> Tuple[np.ndarray, float]:
    """(logits, seconds of forward) of the PyTorch model on NHWC ``images``; with ``float64`` the
    model and images are cast up for the pass (exactly) and the model is back in float32 after it."""
    import torch

    if float64:
        try:
            model.to(torch.float64)
            with float64_grouped_convs():
                return _torch_logits(model, images.astype(np.float64), device, batch_size, warm_up=False)
        finally:
            model.to(torch.float32)
    return _torch_logits(model, images, device, batch_size)


def grouped_conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups: int = 1):
    """``F.conv2d`` with ``groups`` > 1 as a sum over the kernel's taps of strided slices times
    weights (one einsum per tap): exact in float64 and fast, where PyTorch's CPU float64
    convolution loops over the groups (a depthwise conv: one slow conv per channel, minutes for
    one b0 image at 224 px)."""
    import torch
    import torch.nn.functional as F
    from torch.nn.modules.utils import _pair

    (sh, sw), (ph, pw), (dh, dw) = _pair(stride), _pair(padding), _pair(dilation)
    if ph or pw:
        x = F.pad(x, (pw, pw, ph, ph))
    n, cin, h, w = x.shape
    cout, cin_g, kh, kw = weight.shape
    ho, wo = (h - dh * (kh - 1) - 1) // sh + 1, (w - dw * (kw - 1) - 1) // sw + 1
    xg = x.reshape(n, groups, cin_g, h, w)
    wg = weight.reshape(groups, cout // groups, cin_g, kh, kw)
    out = x.new_zeros((n, groups, cout // groups, ho, wo))
    for i in range(kh):
        for j in range(kw):
            xs = xg[..., i * dh:i * dh + sh * (ho - 1) + 1:sh, j * dw:j * dw + sw * (wo - 1) + 1:sw]
            if cin_g == 1:  # depthwise (channel multiplier cout // groups)
                out += xs * wg[None, :, :, 0, i, j, None, None]
            else:
                out += torch.einsum("ngchw,goc->ngohw", xs, wg[..., i, j])
    out = out.reshape(n, cout, ho, wo)
    return out if bias is None else out + bias.reshape(1, -1, 1, 1)


class float64_grouped_convs:
    """Within: ``torch.nn.functional.conv2d`` of float64 tensors with groups > 1 (depthwise,
    MixNet's grouped and CondConv's per-example convs) goes through :func:`grouped_conv2d`."""

    def __enter__(self):
        import torch.nn.functional as F

        self._f, real = F, F.conv2d
        self._real = real

        def conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
            if groups == 1 or x.dtype != weight.dtype or str(x.dtype) != "torch.float64" or isinstance(padding, str):
                return real(x, weight, bias, stride, padding, dilation, groups)
            return grouped_conv2d(x, weight, bias, stride, padding, dilation, groups)

        F.conv2d = conv2d
        return self

    def __exit__(self, *exc):
        self._f.conv2d = self._real
        return False


def _torch_logits(model, images: np.ndarray, device: str, batch_size: int, warm_up: bool = True):
    import torch

    model = model.eval().to(device)
    outs = []
    seconds = 0.0
    with torch.inference_mode():
        if warm_up and (len(images) > 1 or device == "cuda"):
            # one untimed image first: kernel selection and allocator warm-up are not throughput
            model(torch.from_numpy(np.ascontiguousarray(images[:1].transpose(0, 3, 1, 2))).to(device))
        for i in range(0, len(images), batch_size):
            x = torch.from_numpy(np.ascontiguousarray(images[i:i + batch_size].transpose(0, 3, 1, 2))).to(device)
            if device == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            y = model(x)
            if device == "cuda":
                torch.cuda.synchronize()
            seconds += time.perf_counter() - t0
            outs.append(y.cpu().numpy())
    return np.concatenate(outs), seconds


def holds_ema(cfg: Dict[str, object]) -> bool:
    """Whether converted weights hold the EMA twins (metadata ``ema``, recorded by every conversion:
    false after --no-ema, or when the checkpoint has no twins); absent, as the official eval: EMA."""
    ema = cfg.get("ema", True)
    return ema if isinstance(ema, bool) else str(ema).strip().lower() not in ("false", "0", "no", "")


def verify_model(model, prefix: str, cfg: Dict[str, object], resolution: Optional[int] = None,
                 n_images: Optional[int] = None, image_files: Sequence[str] = (), device: str = "auto",
                 dump_logits: Optional[Path] = None, max_rel_error: float = MAX_REL_ERROR,
                 use_ema_reference: Optional[bool] = None, plan: Optional[VerifyPlan] = None,
                 progress: bool = False, trace: bool = False, dtype: str = "float32") -> ParityReport:
    """Run TensorFlow on ``prefix`` and ``model`` on the same images, in float32 and float64; return
    the parity report (verdict: :func:`judge`).

    ``cfg`` is the converted file's metadata (variant, flavor, mean, std, input_size...).
    ``use_ema_reference``: which copy the reference reads (default: the one the file holds, :func:`holds_ema`).
    ``plan``: the checked options and images (:func:`plan_verification`); made from the
    keyword arguments when not given. ``progress``: one line per stage (log, INFO).
    """
    if plan is None:
        plan = plan_verification(cfg, resolution, n_images, image_files, device, dump_logits, max_rel_error,
                                 progress, trace, dtype)
    dev, res, images = plan.device, plan.resolution, plan.images
    num_classes = int(cfg.get("num_classes", 1000))
    dropped = str(cfg.get("background_dropped", "")).lower() == "true"
    ema = holds_ema(cfg) if use_ema_reference is None else bool(use_ema_reference)
    if progress:
        log.info("verify: TensorFlow reference on %d images at %d px (%s), float32 and float64", len(images), res, dev)
    tracer = None
    if plan.trace:  # converter/verify/trace.py: the reference process also writes its taps
        from .trace import Tracer

        tracer = Tracer()
    tf_out, tf_s, tf_dev, tf64, tf64_s = reference_logits(
        prefix, str(cfg["variant"]), images, num_classes + dropped, dev, ema, fused_stride=cfg.get("fused_stride"),
        extra_args=tracer.reference_args() if tracer else (), module=tracer.MODULE if tracer else REFERENCE_MODULE,
        float64=True)
    if dropped:  # the converted classifier lost the background class (output 0)
        tf_out, tf64 = tf_out[:, 1:], tf64[:, 1:]
    if progress:
        log.info("verify: PyTorch on the same %d images (%s), float32 and float64", len(images), dev)
    pt_out, pt_s = torch_logits(model, images, dev)
    pt64, pt64_s = torch_logits(model, images, dev, float64=True)
    low = None
    if plan.dtype != "float32":
        if progress:
            log.info("verify: PyTorch in %s on the same %d images", plan.dtype, len(images))
        low = low_precision_figures(model, images, dev, plan.dtype, tf_out)
    if plan.dump_logits is not None:
        write_dump(plan.dump_logits, tf_out, pt_out, tf64, pt64)
    m = compare(tf_out, pt_out, tf64, pt64)
    rows = per_image(tf_out, pt_out, plan.names, tf64, pt64)
    failures = judge(m, plan.max_rel_error, rows)
    tol32, tol64 = tolerances(m, plan.max_rel_error)
    traced = None
    if tracer is not None:  # the same images (the first few) tap by tap
        if progress:
            log.info("verify: comparing every stage of both models (%d images)", tracer.n_images)
        traced = tracer.report(model, cfg, images, dev, plan.max_rel_error)
        if traced["failure"]:
            failures.append(traced["failure"])
    n = len(images)
    return ParityReport(trace=traced,
        variant=str(cfg["variant"]), flavor=str(cfg.get("flavor", "")), resolution=res, images=n,
        device_torch=dev, device_tf=tf_dev, tf_images_per_s=n / max(tf_s, 1e-9),
        torch_images_per_s=n / max(pt_s, 1e-9), passed=not failures, failures=failures,
        checkpoint=str(prefix), per_image=rows, worst=worst_images(rows), reference_weights="EMA" if ema else "raw",
        max_rel_error=plan.max_rel_error, tolerance=tol32, tolerance_f64=tol64, float64_seconds=tf64_s + pt64_s,
        low_precision=low, **m)


def low_precision_figures(model, images: np.ndarray, device: str, dtype: str, official: np.ndarray) -> Dict[str, object]:
    """--dtype: ``model`` run in ``dtype`` (converter.fast.in_precision: autocast where the device has
    it) against the official float32 logits of the same images (:func:`compare`), and its speed."""
    from ..fast import in_precision

    with in_precision(model, dtype, device) as how:
        out, seconds = torch_logits(model, images, device)
    m = compare(official, out)
    return dict(dtype=dtype, how=how, rel_error=m["rel_error"], max_abs_diff=m["max_abs_diff"],
                top1_agreement=m["top1_agreement"], top5_agreement=m["top5_agreement"],
                images_per_s=len(images) / max(seconds, 1e-9))


def write_dump(path: Path, tf_out: np.ndarray, pt_out: np.ndarray, tf64: Optional[np.ndarray] = None,
               pt64: Optional[np.ndarray] = None) -> None:
    """--dump-logits: both logit arrays (keys tf, torch; float64 ones: tf64, torch64), written
    atomically under exactly ``path``."""
    from ..writer import AtomicFile

    f = AtomicFile(Path(path))
    try:
        f.create()
        with open(f.tmp, "wb") as fh:
            np.savez(fh, tf=tf_out, torch=pt_out, **({} if tf64 is None else {"tf64": tf64, "torch64": pt64}))
        f.commit()
    finally:
        f.discard()


def write_report(report: ParityReport, path: Path, commit: bool = True):
    """The JSON report, atomically at ``path``; ``commit=False`` returns the pending AtomicFile."""
    from ..writer import AtomicFile

    f = AtomicFile(Path(path))
    try:
        f.create()
        f.tmp.write_text(report.to_json() + "\n")
        if not commit:
            f.sync()
            return f
        f.commit()
    except BaseException:
        f.discard()
        raise
    return None


def report_path_for(weights: Path) -> Path:
    """Where the JSON report goes: beside the weights, ``NAME.verify.json``."""
    weights = Path(weights)
    if weights.is_dir():  # a folder layout's output (--layout transformers): inside it, as its writer names it
        from ..mapping import folder_writer_of

        return weights / folder_writer_of(weights).REPORT_NAME
    return weights.with_name(weights.name.rsplit(".", 1)[0] + ".verify.json")


def checked_report(weights: Path, prefix: str, record_as: Optional[Path] = None, **kwargs) -> ParityReport:
    """Verify ``weights`` against ``prefix``; the report names ``record_as`` (default ``weights``:
    where the checked bytes will live) and the sha256 of the bytes checked. Writes nothing but
    ``--dump-logits``."""
    from ..loading import load_model
    from ..pipeline import Deferred, sha256_files

    weights = Path(weights)
    if weights.is_dir():  # a folder layout's output (--layout transformers): its weights file
        from ..mapping import folder_writer_of

        target = folder_writer_of(weights).folder_weights(weights)
    else:
        target = weights
    digest = Deferred.run(sha256_files, [target])  # beside the verification
    model = load_model(weights)
    report = verify_model(model, prefix, model.pretrained_cfg, **kwargs)
    report.weights = str(record_as if record_as is not None else weights)
    report.weights_sha256 = digest.result()
    return report


def verify_file(weights: Path, prefix: str, **kwargs) -> ParityReport:
    """Verify a converted file against its checkpoint; writes the JSON report beside it."""
    report = checked_report(weights, prefix, **kwargs)
    write_report(report, report_path_for(weights))
    if Path(weights).is_dir():  # the folder's model card gets the figures
        from ..mapping import folder_writer_of

        folder_writer_of(Path(weights)).add_verification(Path(weights), report)
    return report
