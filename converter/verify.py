"""Verification stage: TensorFlow on the original checkpoint vs PyTorch on the converted weights.

The TensorFlow side (converter/tfref/reference.py) runs in its own process: it reads the
checkpoint by its official names and computes with TensorFlow's own ops, sharing nothing with
the PyTorch module or the mapping tables beyond the architecture table. Keeping the two
frameworks in separate processes also avoids the TensorFlow/torchvision import-order crash.
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

from .checkpoint import DEFAULT_PREPROCESSING
from .errors import ConversionError, VerificationError

log = logging.getLogger("converter")

# Pass criteria (issue 3): a correct float32 port reaches ~1e-5
MAX_REL_ERROR = 1e-4
DEFAULT_IMAGES = 8
from .synthetic import CALIBRATION_SEED

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
    trace: Optional[Dict[str, object]] = None  # --trace: the tap table (converter/trace.py)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    def summary(self) -> str:
        if self.trace is not None:  # --trace: the tap table, then the summary line
            from .trace import format_table

            return format_table(self.trace) + "\n" + self._summary_line()
        return self._summary_line()

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
        return (f"parity {self.variant}_{self.flavor} at {self.resolution} px on {self.images} images: "
                f"max |diff| {self.max_abs_diff:.3g}, rel error {self.rel_error:.3g}{worst}, "
                f"top-1 agreement {self._top1_agree()}/{self.images} images ({self.top1_agreement:.0%}), "
                f"top-5 agreement {self.top5_agreement:.0%}, "
                f"TF {self.tf_images_per_s:.1f} img/s ({self.device_tf}), "
                f"PyTorch {self.torch_images_per_s:.1f} img/s ({self.device_torch}): "
                + ("PASS" if self.passed else "FAIL (" + "; ".join(self.failures) + ")"))


def compare(tf_logits: np.ndarray, torch_logits: np.ndarray) -> Dict[str, float]:
    """Max abs difference, relative error ||torch - tf|| / ||tf||, top-1/top-5 agreement."""
    a = np.asarray(tf_logits, dtype=np.float64)
    b = np.asarray(torch_logits, dtype=np.float64)
    if a.shape != b.shape:
        raise VerificationError(f"logit shapes differ: TensorFlow {a.shape}, PyTorch {b.shape}")
    diff = b - a
    k = min(5, a.shape[1])
    top5_a = np.argsort(-a, axis=1)[:, :k]
    top5_b = np.argsort(-b, axis=1)[:, :k]
    return {
        "max_abs_diff": float(np.abs(diff).max()) if diff.size else 0.0,
        "rel_error": float(np.linalg.norm(diff) / max(np.linalg.norm(a), 1e-30)),
        "top1_agreement": float(np.mean(top5_a[:, 0] == top5_b[:, 0])),
        "top5_agreement": float(np.mean([set(x) == set(y) for x, y in zip(top5_a, top5_b)])),
        "logit_std": float(a.std()),
    }


def per_image(tf_logits: np.ndarray, torch_logits: np.ndarray, names: Sequence[str]) -> List[Dict[str, object]]:
    """Each image's relative error, max abs difference and top-1 of both sides, in input order."""
    a = np.asarray(tf_logits, dtype=np.float64)
    b = np.asarray(torch_logits, dtype=np.float64)
    rows = []
    for name, x, y in zip(names, a, b):
        rel = float(np.linalg.norm(y - x) / max(np.linalg.norm(x), 1e-30))
        rows.append({"image": str(name), "rel_error": rel if np.isfinite(rel) else float("inf"),
                     "max_abs_diff": float(np.abs(y - x).max()) if x.size else 0.0,
                     "top1_tf": int(x.argmax()), "top1_torch": int(y.argmax())})
    return rows


def worst_images(rows: Sequence[Dict[str, object]], n: int = WORST_SHOWN) -> List[str]:
    """Names of the ``n`` images with the largest relative error, worst first."""
    return [str(r["image"]) for r in sorted(rows, key=lambda r: -float(r["rel_error"]))[:n]]


def judge(metrics: Dict[str, float], max_rel_error: float = MAX_REL_ERROR,
          rows: Sequence[Dict[str, object]] = ()) -> List[str]:
    """The failed checks (empty when the conversion passes); with ``rows``, naming the images."""
    failures = []
    if not np.isfinite(metrics["rel_error"]) or metrics["rel_error"] > max_rel_error:
        over = [r for r in rows if not float(r["rel_error"]) <= max_rel_error]
        where = f" ({len(over)} of {len(rows)} images over it, worst {', '.join(worst_images(over))})" if over else ""
        failures.append(f"relative error {metrics['rel_error']:.3g} > {max_rel_error:g}{where}")
    if metrics["top1_agreement"] < 1.0:
        differ = [str(r["image"]) for r in rows if r["top1_tf"] != r["top1_torch"]]
        shown = ", ".join(differ[:WORST_SHOWN]) + (f" and {len(differ) - WORST_SHOWN} more" if len(differ) > WORST_SHOWN else "")
        where = f": {shown}" if differ else ""
        failures.append(f"top-1 differs on {1 - metrics['top1_agreement']:.0%} of the images{where}")
    return failures


def verification_images(resolution: int, mean: Sequence[float], std: Sequence[float],
                        n: int = DEFAULT_IMAGES, files: Sequence[str] = (), crop_pct: Optional[float] = None,
                        pipeline=DEFAULT_PREPROCESSING) -> np.ndarray:
    """The fixed synthetic set at ``resolution`` (plus the user's files), normalized, NHWC float32."""
    from .synthetic import normalize, synthetic_images

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
    from .synthetic import image_kinds

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
    trace: bool = False  # --trace: also compare every stage (converter/trace.py)


def check_image_file(path: str) -> None:
    """One line naming the file when it is missing, unreadable, or not an image TensorFlow decodes."""
    from .preprocess import decode

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
    from .writer import check_writable_folder

    path = Path(path)
    if path.is_dir():
        raise ConversionError(f"--dump-logits {path} is a folder; name a file (e.g. logits.npz)")
    if not path.parent.is_dir():
        raise ConversionError(f"--dump-logits {path}: folder {path.parent} does not exist")
    check_writable_folder(path.parent, "--dump-logits folder")


def check_options(resolution: Optional[int] = None, n_images: int = DEFAULT_IMAGES, image_files: Sequence[str] = (),
                  device: str = "auto", dump_logits: Optional[Path] = None, max_rel_error: float = MAX_REL_ERROR,
                  native: Optional[int] = None) -> str:
    """Check the verification options that need no model (one line for the first bad one); returns
    the resolved device. Also what ``--all`` checks before its first checkpoint."""
    require_tensorflow()
    if not (isinstance(max_rel_error, (int, float)) and math.isfinite(max_rel_error) and max_rel_error > 0):
        raise ConversionError(f"--max-rel-error must be a positive number, got {max_rel_error}")
    if n_images is None or n_images < 0:
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


def plan_verification(cfg: Dict[str, object], resolution: Optional[int] = None, n_images: int = DEFAULT_IMAGES,
                      image_files: Sequence[str] = (), device: str = "auto", dump_logits: Optional[Path] = None,
                      max_rel_error: float = MAX_REL_ERROR, progress: bool = False, trace: bool = False) -> VerifyPlan:
    """Check every verification option and compute the images (``cfg``: the metadata the weights
    have or will have). Runs before a conversion with ``--verify``, so that a bad option stops it
    before anything is written."""
    native = int(cfg["input_size"][-1])
    dev = check_options(resolution, n_images, image_files, device, dump_logits, max_rel_error, native)
    res = int(resolution or native)
    dump = Path(dump_logits) if dump_logits is not None else None
    if image_files and progress:
        log.info("verify: preprocessing %d image(s) with TensorFlow (official eval pipeline)", len(image_files))
    from .registry import preprocessing_of

    images = verification_images(res, cfg["mean"], cfg["std"], n_images, image_files, cfg.get("crop_pct"),
                                 preprocessing_of(cfg))
    return VerifyPlan(images=images, names=image_names(res, n_images, image_files), resolution=res, device=dev,
                      dump_logits=dump, max_rel_error=float(max_rel_error), trace=bool(trace))


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
                     module: str = REFERENCE_MODULE) -> Tuple[np.ndarray, float, str]:
    """(logits, seconds of forward, device) of the TensorFlow reference on ``images``.

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
        _run_tf(module, args + list(extra_args), device)  # module: converter.tfref.taps with --trace
        with np.load(out) as z:
            return z["logits"], float(z["seconds"]), str(z["device"])


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


def torch_logits(model, images: np.ndarray, device: str = "cpu", batch_size: int = 8) -> Tuple[np.ndarray, float]:
    """(logits, seconds of forward) of the PyTorch model on NHWC ``images``."""
    import torch

    model = model.eval().to(device)
    outs = []
    seconds = 0.0
    with torch.inference_mode():
        if len(images) > 1 or device == "cuda":
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
            outs.append(y.float().cpu().numpy())
    return np.concatenate(outs), seconds


def verify_model(model, prefix: str, cfg: Dict[str, object], resolution: Optional[int] = None,
                 n_images: int = DEFAULT_IMAGES, image_files: Sequence[str] = (), device: str = "auto",
                 dump_logits: Optional[Path] = None, max_rel_error: float = MAX_REL_ERROR,
                 use_ema_reference: bool = True, plan: Optional[VerifyPlan] = None,
                 progress: bool = False, trace: bool = False) -> ParityReport:
    """Run TensorFlow on ``prefix`` and ``model`` on the same images; return the parity report.

    ``cfg`` is the converted file's metadata (variant, flavor, mean, std, input_size...).
    ``plan``: the checked options and images (:func:`plan_verification`); made from the
    keyword arguments when not given. ``progress``: one line per stage (log, INFO).
    """
    if plan is None:
        plan = plan_verification(cfg, resolution, n_images, image_files, device, dump_logits, max_rel_error,
                                 progress, trace)
    dev, res, images = plan.device, plan.resolution, plan.images
    num_classes = int(cfg.get("num_classes", 1000))
    dropped = str(cfg.get("background_dropped", "")).lower() == "true"
    if progress:
        log.info("verify: TensorFlow reference on %d images at %d px (%s)", len(images), res, dev)
    tracer = None
    if plan.trace:  # converter/trace.py: the reference process also writes its taps
        from .trace import Tracer

        tracer = Tracer()
    tf_out, tf_s, tf_dev = reference_logits(prefix, str(cfg["variant"]), images, num_classes + dropped, dev,
                                            use_ema_reference,
                                            fused_stride=cfg.get("fused_stride"),
                                            extra_args=tracer.reference_args() if tracer else (),
                                            module=tracer.MODULE if tracer else REFERENCE_MODULE)
    if dropped:  # the converted classifier lost the background class (output 0)
        tf_out = tf_out[:, 1:]
    if progress:
        log.info("verify: PyTorch on the same %d images (%s)", len(images), dev)
    pt_out, pt_s = torch_logits(model, images, dev)
    if plan.dump_logits is not None:
        write_dump(plan.dump_logits, tf_out, pt_out)
    m = compare(tf_out, pt_out)
    rows = per_image(tf_out, pt_out, plan.names)
    failures = judge(m, plan.max_rel_error, rows)
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
        checkpoint=str(prefix), per_image=rows, worst=worst_images(rows), **m)


def write_dump(path: Path, tf_out: np.ndarray, pt_out: np.ndarray) -> None:
    """--dump-logits: both logit arrays (keys tf, torch), written atomically under exactly ``path``."""
    from .writer import AtomicFile

    f = AtomicFile(Path(path))
    try:
        f.create()
        with open(f.tmp, "wb") as fh:
            np.savez(fh, tf=tf_out, torch=pt_out)
        f.commit()
    finally:
        f.discard()


def write_report(report: ParityReport, path: Path, commit: bool = True):
    """The JSON report, atomically at ``path``; ``commit=False`` returns the pending AtomicFile."""
    from .writer import AtomicFile

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
        from .mapping import folder_writer_of

        return weights / folder_writer_of(weights).REPORT_NAME
    return weights.with_name(weights.name.rsplit(".", 1)[0] + ".verify.json")


def checked_report(weights: Path, prefix: str, record_as: Optional[Path] = None, **kwargs) -> ParityReport:
    """Verify ``weights`` against ``prefix``; the report names ``record_as`` (default ``weights``:
    where the checked bytes will live) and the sha256 of the bytes checked. Writes nothing but
    ``--dump-logits``."""
    from .loading import load_model
    from .pipeline import Deferred, sha256_files

    weights = Path(weights)
    if weights.is_dir():  # a folder layout's output (--layout transformers): its weights file
        from .mapping import folder_writer_of

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
        from .mapping import folder_writer_of

        folder_writer_of(Path(weights)).add_verification(Path(weights), report)
    return report
