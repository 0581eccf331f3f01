"""``convert-effnet export``: a converted file as ONNX or TorchScript, checked after export.

The exported model has its TF 'SAME' padding frozen for the export size (static padding, see
converter.fast), batch norm folded into the convs and, for ONNX, a fully static graph: the pad
amounts are constants and no node computes a shape at run time (``--dynamic-batch`` leaves only
the batch dimension free). Every output is built and checked in memory before anything is written:
ONNX with onnx.checker and ONNX Runtime, TorchScript by loading it back. Their float32 logits are
compared with the PyTorch model's in float64 and judged against the float32 floor of the same input
(the PyTorch model's own float32 distance to float64, :func:`check_logits`), on synthetic images or
the user's ``--images``. One command writes all of its outputs or none: temp files, published
together at the end; a failed check, a full disk or Ctrl-C leaves nothing behind.

The way back (``--tf-checkpoint``, ``--saved-model``, ``--tflite``, ``--tflite-int8``): the weights under
their official names (mapping.to_official), handed to TensorFlow's process (converter/tfref/export.py:
the official checkpoint, then tensorflow/tpu export_model.py's graph, restore, SavedModel and TFLite),
whose outputs come back loaded and run, judged here against the PyTorch model (:func:`build_tf_outputs`).
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import io
import logging
import re
import warnings
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from . import interrupts
from .arch import FUSED_STRIDE_EXPAND
from .errors import ConversionError, check_space, disk_full_as_error, first_line
from .synthetic import IMAGENET_MEAN, IMAGENET_STD, normalize, synthetic_images
from .writer import AtomicFile, claimed, publish

log = logging.getLogger("converter")

# ||exported - torch|| / ||torch|| on the check images, raised to verify.NOISE_FACTOR x their float32
# floor where that is larger (check_logits)
MAX_REL_ERROR = 1e-4
DEFAULT_OPSET = 17
# ONNX ops that compute shapes or sizes at run time: none may appear in a static export
SHAPE_OPS = frozenset({"Shape", "Size", "ConstantOfShape", "Range", "NonZero", "If", "Loop"})


def rel_error(got: np.ndarray, ref: np.ndarray) -> float:
    """||got - ref|| / ||ref|| in float64."""
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    return float(np.linalg.norm(got - ref) / max(np.linalg.norm(ref), 1e-30))


def check_inputs(batch: int, size, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                 first: int = 0) -> torch.Tensor:
    """NCHW images ``first .. first + batch - 1`` of the verification's synthetic set (converter.verify:
    the same kinds and seed), at ``size`` (H, W), normalized with ``mean``/``std`` as the model's inputs are.

    Images, not Gaussian noise: weights whose BN statistics fit images amplify the rounding of
    the BN folding on noise (4e-4 relative on a checkpoint calibrated on images).
    """
    from .verify import VERIFY_SEED

    h, w = int(size[0]), int(size[1])
    images = synthetic_images(max(h, w), first + batch, seed=VERIFY_SEED)[first:, :h, :w]
    x = normalize(images, mean, std).transpose(0, 3, 1, 2)
    return torch.from_numpy(np.ascontiguousarray(x))


def _norm(model: torch.nn.Module):
    """(mean, std) of the model's inputs, from its metadata (ImageNet's when it has none)."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return tuple(cfg.get("mean", IMAGENET_MEAN)), tuple(cfg.get("std", IMAGENET_STD))


def static_graph_problems(onnx_model) -> List[str]:
    """What in an ONNX graph is computed from shapes at run time (empty: fully static)."""
    graph = onnx_model.graph
    constants = {init.name for init in graph.initializer}
    constants |= {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    problems = sorted({f"{n.op_type} node" for n in graph.node if n.op_type in SHAPE_OPS})
    for n in graph.node:
        if n.op_type == "Pad" and (len(n.input) < 2 or n.input[1] not in constants):
            problems.append(f"Pad node {n.name or n.output[0]} with run-time pads")
    for value in list(graph.input) + list(graph.output):
        dims = value.type.tensor_type.shape.dim
        if any(not d.HasField("dim_value") for d in dims):
            problems.append(f"{value.name} has a free dimension")
    return problems


def export_model(model: torch.nn.Module, input_size, fuse: bool = True) -> torch.nn.Module:
    """A copy of ``model`` ready to export: eval, padding frozen for ``input_size``, BN folded."""
    from .fast import fuse_bn, set_input_size

    m = copy.deepcopy(model).eval().float()
    set_input_size(m, *input_size)
    if fuse:
        fuse_bn(m)
    return m


def _onnx_export(model: torch.nn.Module, x: torch.Tensor, dynamic_batch: bool, opset: int) -> bytes:
    """The serialized ONNX model (built in memory; nothing is written here)."""
    # the torch.export-based exporter (onnxscript): with the padding frozen, its optimizer folds
    # each F.pad into the Conv's own (asymmetric) pads attribute; the legacy TorchScript-based
    # exporter builds the pads from ConstantOfShape/Concat at run time instead
    kwargs = dict(input_names=["images"], output_names=["logits"], opset_version=opset,
                  dynamo=True, external_data=False, optimize=True, verbose=False)
    if dynamic_batch:
        kwargs["dynamic_shapes"] = ({0: torch.export.Dim("batch")},)
    with warnings.catch_warnings(), _quiet_loggers(), contextlib.redirect_stdout(io.StringIO()), \
            contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")  # its optimizer prints each pass: kept off our output
        with torch.no_grad():
            program = torch.onnx.export(model, (x,), None, **kwargs)
        return program.model_proto.SerializeToString()


@contextlib.contextmanager
def _quiet_loggers():
    """Silence the exporter's progress messages (it logs each stage at INFO)."""
    names = ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript", "onnx_ir")
    levels = [(logging.getLogger(n), logging.getLogger(n).level) for n in names]
    for lg, _ in levels:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in levels:
            lg.setLevel(level)


class Reference:
    """The PyTorch model's logits (float32 and float64) on check batches, each computed once per
    command: the ONNX and the TorchScript check share them (float64 convolutions are slow on CPU)."""

    def __init__(self, model: torch.nn.Module):
        self.model = model.eval()
        self._m64: Optional[torch.nn.Module] = None
        self._done: Dict[Tuple, Tuple[np.ndarray, np.ndarray]] = {}

    def logits(self, xb: torch.Tensor) -> Tuple[np.ndarray, np.ndarray]:
        """(float32 logits, float64 logits) of the model on ``xb``, both as float64 arrays."""
        key = (tuple(xb.shape), hash(xb.numpy().tobytes()))
        if key not in self._done:
            device = next(self.model.parameters()).device
            if self._m64 is None:
                self._m64 = copy.deepcopy(self.model).double()
            with torch.no_grad():
                r32 = self.model(xb.to(device)).double().cpu().numpy()
                r64 = self._m64(xb.to(device).double()).cpu().numpy()
            self._done[key] = (r32, r64)
        return self._done[key]


def check_logits(ref: Reference, batches: Sequence[torch.Tensor], run, what: str,
                 rows: Optional[Sequence[int]] = None, names: Optional[Sequence[str]] = None) -> Dict[str, object]:
    """Judge ``run(batch)`` (the exported graph, float32) against the PyTorch model with verify's verdict.

    The PyTorch model is the reference (float32 and float64, :class:`Reference`): the exported
    logits must be within ``MAX_REL_ERROR`` of its float32 logits, raised to ``NOISE_FACTOR`` x the
    float32 floor of these inputs (PyTorch float32 against float64: what float32 itself does to
    them) where that is larger (converter.verify.judge). Out-of-distribution inputs (checkerboards
    on photo-calibrated weights) then do not fail a correct graph; a wrong one stays orders of
    magnitude above. ``rows``: how many leading rows of each batch are real images (the rest pads
    a static batch); ``names``: the images' names. Returns the figures; raises on a failed verdict.
    """
    r32s, r64s, gots = [], [], []
    for b, xb in enumerate(batches):
        r32, r64 = ref.logits(xb)
        with torch.no_grad():
            got = np.asarray(run(xb), dtype=np.float64)
        if got.shape != r32.shape:
            raise ConversionError(f"{what} gives logits of shape {got.shape}, PyTorch {r32.shape}")
        n = got.shape[0] if rows is None else rows[b]
        r32s.append(r32[:n])
        r64s.append(r64[:n])
        gots.append(got[:n])
    r32, r64, got = np.concatenate(r32s), np.concatenate(r64s), np.concatenate(gots)
    names = list(names) if names is not None else [f"check image {i + 1}" for i in range(len(got))]
    return _verdict(f"{what} logits", r32, got, r64, names)


def _verdict(what: str, r32: np.ndarray, got: np.ndarray, r64: np.ndarray, names: Sequence[str]) -> Dict[str, object]:
    """verify's verdict on ``got`` against the PyTorch model's float32/float64 ``r32``/``r64``: the
    figures, or a ConversionError naming ``what`` and the failures."""
    from .verify import compare, judge, per_image, tolerances

    metrics = compare(r32, got, r64)
    failures = judge(metrics, MAX_REL_ERROR, per_image(r32, got, names, r64))
    if failures:
        raise ConversionError(f"{what} differ from PyTorch's: {'; '.join(failures)}; nothing written")
    return {"rel_error": float(metrics["rel_error"]), "floor": float(metrics["float32_floor"]),
            "tolerance": float(tolerances(metrics, MAX_REL_ERROR)[0]), "images": len(got)}


def image_batches(x: torch.Tensor, batch_size: int) -> Tuple[List[torch.Tensor], List[int]]:
    """``x`` in batches of exactly ``batch_size`` (a static graph's batch; the last one padded with
    copies of the first image) and how many rows of each are real."""
    batches, rows = [], []
    for start in range(0, x.shape[0], batch_size):
        xb = x[start:start + batch_size]
        rows.append(int(xb.shape[0]))
        if xb.shape[0] < batch_size:
            xb = torch.cat([xb, x[:1].expand(batch_size - xb.shape[0], *x.shape[1:])])
        batches.append(xb.contiguous())
    return batches, rows


def photo_inputs(model: torch.nn.Module, files: Sequence[str], size) -> torch.Tensor:
    """NCHW float32 inputs from the user's image files, preprocessed as the model's metadata says
    (converter.preprocess, official mode) at ``size``."""
    from .preprocess import preprocess_batch

    if size[0] != size[1]:
        raise ConversionError(f"--images needs a square input size, got {size[0]}x{size[1]}")
    cfg = dict(getattr(model, "pretrained_cfg", None) or {}, input_size=[3, int(size[0]), int(size[1])])
    return torch.from_numpy(np.ascontiguousarray(preprocess_batch(list(files), cfg)))


def _require_onnx() -> None:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401  (the torch.export-based exporter)
    except ImportError as e:
        raise ConversionError(f"ONNX export needs onnx, onnxscript and onnxruntime ({e.name} is missing): "
                              "pip install 'effnet-convert[export]'") from None


def build_onnx(model: torch.nn.Module, input_size, batch_size: int = 1, dynamic_batch: bool = False,
               opset: int = DEFAULT_OPSET, fuse: bool = True, images: Optional[torch.Tensor] = None,
               names: Sequence[str] = (), reference: Optional[Reference] = None) -> Tuple[bytes, Dict[str, object]]:
    """``model`` as a checked ONNX model in memory: (its bytes, the check figures). Nothing is written.

    Checks: onnx.checker; a static graph (constant pads; no shape computation; with
    ``dynamic_batch`` only the batch dimension free); ONNX Runtime logits judged by
    :func:`check_logits` on ``images`` (NCHW, at ``input_size``, named ``names``; default: synthetic
    images; with ``dynamic_batch`` also a second batch size).
    """
    _require_onnx()
    import onnx
    import onnxruntime as ort

    ref = reference or Reference(model)
    m = export_model(model, input_size, fuse=fuse)
    mean, std = _norm(model)
    x = check_inputs(batch_size, input_size, mean, std)
    log.info("export: ONNX export (torch.export, opset %d)", opset)
    try:
        data = _onnx_export(m, x, dynamic_batch, opset)
    except Exception as e:
        interrupts.check()  # torch.export wraps a Ctrl-C in its own error
        msg = re.sub(r"\x1b\[[0-9;]*m", "", str(e)).strip().splitlines() or [""]
        raise ConversionError(f"ONNX export failed: {type(e).__name__}: {msg[0][:200]}") from None
    interrupts.check()
    log.info("export: checking the ONNX model (onnx.checker, static graph, ONNX Runtime vs PyTorch)")
    proto = onnx.load_from_string(data)
    try:
        onnx.checker.check_model(proto, full_check=True)
    except Exception as e:
        raise ConversionError(f"the exported ONNX model fails onnx.checker: {first_line(e, limit=200)}") from None
    # with a free batch, shape ops may serve the batch alone (CondConv's per-example kernels)
    problems = [p for p in static_graph_problems(proto)
                if not (dynamic_batch and (p.endswith("has a free dimension") or p.endswith(" node")))]
    if problems:
        raise ConversionError(f"the exported ONNX graph is not static: {', '.join(problems)}")
    if dynamic_batch:
        free = [(v.name, i) for v in list(proto.graph.input) + list(proto.graph.output)
                for i, d in enumerate(v.type.tensor_type.shape.dim) if not d.HasField("dim_value")]
        if free != [("images", 0), ("logits", 0)]:
            raise ConversionError(f"the exported ONNX graph has free dimensions {free}, expected the batch only")
    del proto
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
    if images is not None:
        batches, rows = ([images], [int(images.shape[0])]) if dynamic_batch else image_batches(images, batch_size)
    else:
        batches = [x] + ([check_inputs(batch_size + 2, input_size, mean, std, first=batch_size)]
                         if dynamic_batch else [])
        rows = [int(b.shape[0]) for b in batches]
        names = [f"synthetic-{i}" for i in range(sum(rows))]
    figures = check_logits(ref, batches, lambda xb: sess.run(["logits"], {"images": xb.numpy()})[0],
                           "ONNX Runtime", rows, names)
    interrupts.check()
    return data, dict(figures, format="onnx", input_size=list(input_size), dynamic_batch=dynamic_batch,
                      opset=opset, fused=fuse, batches=[int(b.shape[0]) for b in batches])


def build_torchscript(model: torch.nn.Module, input_size, batch_size: int = 1, fuse: bool = True,
                      images: Optional[torch.Tensor] = None, names: Sequence[str] = (),
                      reference: Optional[Reference] = None) -> Tuple[bytes, Dict[str, object]]:
    """``model`` as a checked TorchScript file in memory: (its bytes, the check figures). Nothing is written.

    Scripted (not traced), so the static padding's fallback stays in: other input sizes and
    batch sizes compute the right numbers. Checked by loading the bytes back: :func:`check_logits`
    on ``images`` (default: synthetic images) at the export size, and on synthetic images at an odd size.
    """
    ref = reference or Reference(model)
    m = export_model(model, input_size, fuse=fuse)
    log.info("export: TorchScript (torch.jit.script)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            scripted = torch.jit.script(m)
    except Exception as e:
        interrupts.check()
        raise ConversionError(f"TorchScript export failed: {type(e).__name__}: "
                              f"{first_line(e, limit=200)}") from None
    # saved to memory: torch.jit.save aborts the process (SIGABRT) when a file write fails
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit's deprecation notices
        torch.jit.save(scripted, buf)
        data = buf.getvalue()
        loaded = torch.jit.load(io.BytesIO(data), map_location="cpu")
    log.info("export: checking the TorchScript model (loaded back, vs PyTorch at %dx%d and an odd size)",
             *input_size)
    odd = (input_size[0] + 1) | 1, (input_size[1] + 1) | 1
    mean, std = _norm(model)
    first = images if images is not None else check_inputs(batch_size, input_size, mean, std)
    names = list(names) if images is not None else [f"synthetic-{i}" for i in range(batch_size)]
    names += [f"synthetic-{batch_size + i} at {odd[0]}x{odd[1]}" for i in range(batch_size + 1)]
    batches = [first, check_inputs(batch_size + 1, odd, mean, std, first=batch_size)]
    figures = check_logits(ref, batches, lambda xb: loaded(xb).numpy(), "TorchScript", names=names)
    interrupts.check()
    return data, dict(figures, format="torchscript", input_size=list(input_size), fused=fuse)


def write_outputs(outputs: Sequence[Tuple[Path, bytes, str]], replace: bool = True, extra: Sequence = ()) -> None:
    """Write every ``(path, data, what)`` or none: temp files beside each path (the space checked
    first), published together (writer.publish) only when all are written; a full disk is one line
    naming the folder and the space (errors.disk_full), exit 2. ``replace=False``: a name that
    another run took meanwhile is refused and nothing is published. ``extra``: outputs already written
    under temp names (writer.AtomicFile / AtomicFolder: the TensorFlow ones), published with them."""
    if not outputs:
        publish(list(extra), replace=replace)
        return
    need: Dict[Path, int] = {}
    for path, data, _ in outputs:
        folder = Path(path).parent
        need[folder] = need.get(folder, 0) + len(data)
    what = outputs[0][2] if len(outputs) == 1 else "the export"
    for folder, n in need.items():
        check_space(folder, n, what)
    files = [AtomicFile(Path(path)) for path, _, _ in outputs]
    try:
        for f, (path, data, w) in zip(files, outputs):
            folder = Path(path).parent
            f.create()
            with disk_full_as_error(folder, need[folder], what, cleanup=lambda: [g.discard() for g in files]):
                with open(f.tmp, "wb") as fh:
                    fh.write(data)
                f.sync()
            interrupts.check()
        publish(files + list(extra), replace=replace)
    finally:
        for f in files:
            f.discard()


def export_onnx(model: torch.nn.Module, out: Path, input_size, batch_size: int = 1,
                dynamic_batch: bool = False, opset: int = DEFAULT_OPSET, fuse: bool = True,
                images: Optional[torch.Tensor] = None) -> Dict[str, object]:
    """Write ``model`` as ONNX to ``out`` (atomically) after :func:`build_onnx` checked it; returns the figures."""
    data, figures = build_onnx(model, input_size, batch_size, dynamic_batch, opset, fuse, images)
    write_outputs([(Path(out), data, "the ONNX model")])
    return dict(figures, path=str(out))


def export_torchscript(model: torch.nn.Module, out: Path, input_size, batch_size: int = 1,
                       fuse: bool = True, images: Optional[torch.Tensor] = None) -> Dict[str, object]:
    """Write ``model`` as TorchScript to ``out`` (atomically) after :func:`build_torchscript` checked it."""
    data, figures = build_torchscript(model, input_size, batch_size, fuse, images)
    write_outputs([(Path(out), data, "the TorchScript model")])
    return dict(figures, path=str(out))


# --- the way back: official TensorFlow checkpoint, SavedModel, TFLite -------------------------------
# TensorFlow's half is converter/tfref/export.py, run in its own process (TensorFlow and torchvision
# must not share one); this half maps the weights back, judges what it loaded back, publishes.
TF_EXPORT_MODULE = "converter.tfref.export"
TF_OUTPUTS = (("tf_checkpoint", "--tf-checkpoint"), ("saved_model", "--saved-model"), ("tflite", "--tflite"),
              ("tflite_int8", "--tflite-int8"))
TF_CHECK_IMAGES = 4  # synthetic check images of the TensorFlow outputs (batch 1 each, as the official graph)
SIDECAR_SUFFIX = ".json"  # OUT.tflite -> OUT.tflite.json: the preprocessing beside the file


def require_tensorflow_export(flags: Sequence[str]) -> None:
    """One line when TensorFlow, which the TensorFlow outputs are built and checked with, is missing."""
    import importlib.util

    if importlib.util.find_spec("tensorflow") is None:
        raise ConversionError(f"{', '.join(flags)} need TensorFlow: pip install 'effnet-convert[verify]' (the "
                              "verification's extra; or pip install tensorflow-cpu); ONNX and TorchScript do not")


def calibration_files(items: Sequence[str]) -> List[str]:
    """The image files of ``--calibration-images`` (files, or folders: their images by name), checked."""
    from .predict import IMAGE_EXTENSIONS, images_under
    from .verify import check_image_file

    files: List[str] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            found = [str(f) for f in images_under(p, recursive=False)]  # as predict takes a folder's images
            if not found:
                raise ConversionError(f"--calibration-images {p}: no images in this folder "
                                      f"({', '.join(sorted(IMAGE_EXTENSIONS))})")
            files += found
        else:
            files.append(str(p))
    for f in files:
        check_image_file(f)
    return files


def _softmax(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, np.float64)
    e = np.exp(a - a.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


# probabilities below this are compared as this: a float32 softmax flushes its smallest values to 0 before
# float32's smallest normal (TensorFlow's gave 0 for a float64 1.7e-38); above it, float32 holds them to 1e-7
PROB_FLOOR = 1e-30


def _log_probabilities(p: np.ndarray) -> np.ndarray:
    """log p in float64, p clipped at ``PROB_FLOOR`` (continuous: a small error in p stays small in log p)."""
    return np.log(np.maximum(np.asarray(p, np.float64), PROB_FLOOR))


def check_probabilities(ref: Reference, x: torch.Tensor, probs: np.ndarray, what: str,
                        names: Sequence[str]) -> Dict[str, object]:
    """Judge softmax outputs (the official export's output) as :func:`check_logits` judges logits: their
    logarithms (the logits less their log-sum-exp: the same scale as the logits, and every class counts,
    not only the likely ones) against the PyTorch model's log-softmax, within the float32 floor of the
    same images; raises on a failed verdict."""
    r32, r64 = ref.logits(x)
    p32, p64 = _log_probabilities(_softmax(r32)), _log_probabilities(_softmax(r64))
    got = np.asarray(probs, np.float64)
    if got.shape != p32.shape:
        raise ConversionError(f"{what} gives outputs of shape {got.shape}, PyTorch {p32.shape}")
    return _verdict(f"{what} probabilities", p32, _log_probabilities(got), p64, names)


def int8_agreement(float_probs: np.ndarray, int8_probs: np.ndarray) -> Dict[str, float]:
    """How the int8 model's (dequantized) probabilities agree with the float model's: top-1, max and mean |p - q|."""
    a, b = np.asarray(float_probs, np.float64), np.asarray(int8_probs, np.float64)
    d = np.abs(a - b)
    return {"top1_agreement": float(np.mean(a.argmax(1) == b.argmax(1))), "max_prob_error": float(d.max()),
            "mean_prob_error": float(d.mean()), "images": int(a.shape[0])}


def tf_sidecar(model: torch.nn.Module, res: int) -> Dict[str, object]:
    """What the TensorFlow outputs take and give, and the preprocessing (stored beside each of them)."""
    cfg = dict(getattr(model, "pretrained_cfg", None) or {})
    mean, std = _norm(model)
    keep = ("variant", "flavor", "official_name", "num_classes", "crop_pct", "interpolation", "preprocessing",
            "fused_stride", "background_dropped", "layout", "source_sha256")
    return {
        "model_name": model.spec.scope,  # the official builders' model_name (its variable scope)
        "override_params": model.spec.official_override_params,  # and what else they need to build it
        **{k: cfg[k] for k in keep if k in cfg},
        "input": {"name": "input", "tensor": "images:0", "shape": [1, res, res, 3], "dtype": "float32",
                  "layout": "NHWC, RGB", "normalization": "(x / 255 - mean) / std, x the 0-255 image",
                  "mean": list(mean), "std": list(std),
                  "mean_255": [m * 255.0 for m in mean], "std_255": [s * 255.0 for s in std]},
        "output": {"name": "output", "what": f"softmax over the {int(model.spec.num_classes)} classes",
                   "logits_tensor": "logits:0", **_labels(cfg, int(model.spec.num_classes))},
        "exported_by": "convert-effnet export (effnet-convert)",
    }


def _labels(cfg: Dict[str, object], classes: int) -> Dict[str, object]:
    """The outputs' class names: the file's own (``labels`` of a fine-tuned file, converter/training.py;
    an empty list: unnamed), else ImageNet's for a head of ImageNet's size (1001: "background" first)."""
    from .predict import IMAGENET_CLASSES, imagenet_classes

    own = cfg.get("labels")
    if isinstance(own, (list, tuple)) and len(own) == classes:
        return {"labels": [str(x) for x in own], "labels_source": "the file's metadata"}
    if own is not None or classes not in (IMAGENET_CLASSES, IMAGENET_CLASSES + 1):
        return {}
    names = [lemmas.split(",")[0] for _, lemmas in imagenet_classes()]
    return {"labels": (["background"] if classes == IMAGENET_CLASSES + 1 else []) + names,
            "labels_source": "ImageNet-1k (the head has its size; a head fine-tuned on other classes of that size "
                             "has other labels)"}


def _relay(proc, tail: List[str]) -> None:
    """Stage lines of the TensorFlow process on our log; the rest of its stderr kept for an error."""
    for line in proc.stderr:
        line = line.rstrip("\n")
        if line.startswith("progress: "):
            log.info("export: %s", line[len("progress: "):])
        elif line.strip():
            tail.append(line)
            del tail[:-40]


def run_tf_export(job: Dict[str, object], work: Path) -> Dict[str, np.ndarray]:
    """Run converter/tfref/export.py on ``job`` in its own process; its results. Ctrl-C or an error stop it
    before anything is discarded."""
    import json
    import subprocess
    import sys

    from .verify import _tf_env

    path = work / "job.json"
    path.write_text(json.dumps(job), encoding="utf-8")
    tail: List[str] = []
    proc = subprocess.Popen([sys.executable, "-m", TF_EXPORT_MODULE, str(path)], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=_tf_env("cpu"))
    try:
        _relay(proc, tail)
        rc = proc.wait()
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    interrupts.check()
    if rc != 0:
        errors = [l for l in tail if l.startswith("error: ")]
        last = errors[-1][len("error: "):] if errors else (tail[-1] if tail else f"exit status {rc}")
        raise ConversionError(f"TensorFlow export failed: {last}; nothing written")
    with np.load(job["out"]) as z:
        return {k: z[k] for k in z.files}


def build_tf_outputs(model: torch.nn.Module, args: argparse.Namespace, res: int, photos: Optional[torch.Tensor],
                     photo_names: Sequence[str], ref: Reference, calibration: Sequence[str]):
    """The TensorFlow outputs ``args`` ask for, written to temp names and checked: (the AtomicFile /
    AtomicFolder objects to publish, the ``wrote`` lines). The caller discards them on failure."""
    import tempfile

    from .mapping import to_official
    from .registry import preprocessing_of
    from .verify import tf_preprocess
    from .writer import AtomicFolder

    cfg = dict(model.pretrained_cfg)
    spec = model.spec
    mean, std = _norm(model)
    if photos is not None:
        x, names = photos, list(photo_names)
    else:
        x, names = check_inputs(TF_CHECK_IMAGES, (res, res), mean, std), \
            [f"synthetic-{i}" for i in range(TF_CHECK_IMAGES)]
    on = f"{len(names)} --images" if photos is not None else f"{len(names)} synthetic images"
    log.info("export: the weights under their official TensorFlow names (%s)", spec.scope)
    values = to_official(model.state_dict(), spec)
    sidecar = tf_sidecar(model, res)
    outputs, sidecars, files = {}, {}, []
    for key, _ in TF_OUTPUTS:
        target = getattr(args, key)
        if target:
            f = AtomicFolder(Path(target)) if key in ("tf_checkpoint", "saved_model") else AtomicFile(Path(target))
            outputs[key] = f
            files.append(f)
            if key in ("tflite", "tflite_int8"):
                sidecars[key] = AtomicFile(Path(target + SIDECAR_SUFFIX))
                files.append(sidecars[key])
    # the work folder (the weights handed to TensorFlow, its results) sits beside the first output
    nbytes = sum(a.nbytes for a in values.values())
    first = files[0].path.parent
    need: Dict[Path, int] = {first: nbytes}
    for key, factor in (("tf_checkpoint", 2.0), ("saved_model", 1.0), ("tflite", 1.0), ("tflite_int8", 0.3)):
        if key in outputs:  # the checkpoint holds each value twice (variable and EMA twin)
            folder = outputs[key].path.parent
            need[folder] = need.get(folder, 0) + int(nbytes * factor) + (1 << 20)
    for folder, n in need.items():
        check_space(folder, n, "the export")
    if spec.has_strided_fused and spec.fused_stride != FUSED_STRIDE_EXPAND:
        log.warning("note: this file's fused blocks stride on their %s conv (the 2019 code, tensorflow/tpu 631fb4c): "
                    "the official builder at its head (32572cb and later) strides the expand conv and computes "
                    "other numbers from these outputs without an error; build them with the 2019 code",
                    spec.fused_stride)
    if cfg.get("background_dropped"):
        log.warning("note: this file's background class was dropped at conversion: the TensorFlow outputs have "
                    "%d classes (the official builder's default is 1001: build it with num_classes=%d)",
                    spec.num_classes, spec.num_classes)
    try:
        with tempfile.TemporaryDirectory(prefix=".effnet-export-", dir=first) as tmp:
            work = Path(tmp)
            for f in files:
                f.create()
            np.savez(work / "variables.npz", **values)
            del values
            np.savez(work / "images.npz", images=np.ascontiguousarray(x.numpy().transpose(0, 2, 3, 1)))
            job = {"variant": cfg["variant"], "fused_stride": cfg.get("fused_stride"), "num_classes": spec.num_classes,
                   "resolution": res, "variables": str(work / "variables.npz"), "images": str(work / "images.npz"),
                   "out": str(work / "out.npz"), "sidecar": sidecar, "global_step": 0}
            for key, f in outputs.items():
                job[key] = str(f.tmp)
            for key, f in sidecars.items():
                job[f"{key}_sidecar"] = str(f.tmp)
            if calibration:
                log.info("export: preprocessing %d calibration image(s) with TensorFlow (the official eval pipeline)",
                         len(calibration))
                cal = tf_preprocess(calibration, res, mean, std, cfg.get("crop_pct"), preprocessing_of(cfg))
                np.savez(work / "calibration.npz", images=cal)
                job["calibration"] = str(work / "calibration.npz")
                if photos is not None:  # agreement on the user's --images, else on the calibration images
                    agree = photos
                    np.savez(work / "agreement.npz", images=np.ascontiguousarray(photos.numpy().transpose(0, 2, 3, 1)))
                else:
                    agree = torch.from_numpy(np.ascontiguousarray(cal.transpose(0, 3, 1, 2)))
                    np.savez(work / "agreement.npz", images=cal)
                job["agreement"] = str(work / "agreement.npz")
            results = run_tf_export(job, work)
        lines = []
        r = check_logits(ref, [x], lambda xb: results["logits_checkpoint"],
                         "the official graph restored (EMA) from the written checkpoint", names=names)
        if "tf_checkpoint" in outputs:
            lines.append(f"wrote {args.tf_checkpoint}/ (TensorFlow checkpoint model.ckpt of {spec.scope}: "
                         f"{int(results['checkpoint_tensors'])} tensors, the variables and their ExponentialMovingAverage "
                         f"twins, global_step; the official graph restored with EMA vs PyTorch on {on}: {_figures(r)})")
        if "saved_model" in outputs:
            r = check_logits(ref, [x], lambda xb: results["logits_saved_model"], "the SavedModel's logits", names=names)
            p = check_probabilities(ref, x, results["probs_saved_model"], "the SavedModel (serving_default)", names)
            lines.append(f"wrote {args.saved_model}/ (SavedModel, serve / serving_default: input [1,{res},{res},3] "
                         f"normalized NHWC float32 -> output softmax; loaded back vs PyTorch on {on}: logits {_figures(r)}; "
                         f"log-softmax relative error {p['rel_error']:.1e}, tolerance {p['tolerance']:.1e})")
        if "tflite" in outputs:
            p = check_probabilities(ref, x, results["probs_tflite"], "the TFLite model", names)
            lines.append(f"wrote {args.tflite} (TFLite float32: input [1,{res},{res},3] normalized NHWC -> softmax; "
                         f"tf.lite.Interpreter vs PyTorch on {on}: log-softmax {_figures(p)}; preprocessing in "
                         f"{args.tflite}{SIDECAR_SUFFIX})")
        if "tflite_int8" in outputs:
            r32, _ = ref.logits(agree)
            a = int8_agreement(_softmax(r32), results["probs_int8"])
            what = "--images" if photos is not None else "calibration images"
            lines.append(f"wrote {args.tflite_int8} (TFLite full-integer, uint8 input and output, calibrated on "
                         f"{len(calibration)} image(s); vs the float PyTorch model on {a['images']} {what}: top-1 "
                         f"agreement {a['top1_agreement']:.1%}, probability error max {a['max_prob_error']:.3f}, "
                         f"mean {a['mean_prob_error']:.1e}; quantization in {args.tflite_int8}{SIDECAR_SUFFIX})")
    except BaseException:
        for f in files:
            f.discard()
        raise
    return files, lines


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="convert-effnet export",
        description="Export a converted file as ONNX (static shapes, checked with onnx.checker and ONNX Runtime), "
                    "TorchScript (checked by loading it back) and/or back to TensorFlow: the official checkpoint, a "
                    "SavedModel, TFLite float or full-integer (each loaded back and checked against PyTorch). "
                    "All outputs are written, or none.")
    p.add_argument("--weights", required=True, help="the converted .safetensors or .pth")
    p.add_argument("--onnx", metavar="OUT.onnx", help="write an ONNX model here")
    p.add_argument("--torchscript", metavar="OUT.pt", help="write a TorchScript model here")
    p.add_argument("--resolution", type=int, help="input size (default: the model's native resolution)")
    p.add_argument("--batch-size", type=int, default=1, help="batch size of the static ONNX graph (default 1)")
    p.add_argument("--dynamic-batch", action="store_true", help="ONNX: leave the batch dimension free")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default {DEFAULT_OPSET})")
    p.add_argument("--no-fuse", action="store_true", help="keep the batch norms as separate ops")
    p.add_argument("--images", nargs="+", metavar="IMAGE",
                   help="check the exported model on these images (preprocessed as the file's metadata says) "
                        "instead of synthetic ones")
    tf = p.add_argument_group(
        "the way back to TensorFlow (needs TensorFlow: the verify extra; built and restored the official way, "
        "tensorflow/tpu efficientnet/export_model.py)")
    tf.add_argument("--tf-checkpoint", metavar="OUT_DIR",
                    help="write the official TensorFlow checkpoint here (OUT_DIR/model.ckpt.*, checkpoint): the "
                         "family's official variable names, each also as its ExponentialMovingAverage twin, global_step")
    tf.add_argument("--saved-model", metavar="OUT_DIR",
                    help="write a SavedModel here (tag serve, signature serving_default): input 'input' = the "
                         "NORMALIZED image, float32 [1, H, W, 3] NHWC RGB; output 'output' = softmax")
    tf.add_argument("--tflite", metavar="OUT.tflite",
                    help="write a float32 TFLite model: normalized NHWC float32 [1, H, W, 3] in, softmax out "
                         "(the preprocessing in OUT.tflite.json)")
    tf.add_argument("--tflite-int8", metavar="OUT.tflite",
                    help="write a post-training full-integer TFLite model (uint8 input = the quantized normalized "
                         "image, uint8 softmax out; scale and zero point in OUT.tflite.json); needs "
                         "--calibration-images")
    tf.add_argument("--calibration-images", nargs="+", metavar="IMG|DIR",
                    help="--tflite-int8's representative dataset: image files or folders of them, preprocessed "
                         "with the official eval pipeline of the file's flavor")
    p.add_argument("--force", action="store_true", help="overwrite existing outputs")
    p.add_argument("--quiet", action="store_true", help="no stage lines on stderr")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    return p


def run_export(args: argparse.Namespace) -> int:
    """Export as ``args`` say: every output, or none; then one line per file written; 0 on success."""
    tf_flags = [flag for key, flag in TF_OUTPUTS if getattr(args, key)]
    if not args.onnx and not args.torchscript and not tf_flags:
        raise ConversionError("nothing to export: pass --onnx OUT.onnx, --torchscript OUT.pt, --tf-checkpoint DIR, "
                              "--saved-model DIR, --tflite OUT.tflite and/or --tflite-int8 OUT.tflite")
    if args.tflite_int8 and not args.calibration_images:
        raise ConversionError("--tflite-int8 needs --calibration-images IMG...|DIR: the full-integer quantization is "
                              "calibrated on images (a few hundred eval images of the task are typical)")
    if args.calibration_images and not args.tflite_int8:
        raise ConversionError("--calibration-images is for --tflite-int8 only")
    if tf_flags:
        require_tensorflow_export(tf_flags)
    if args.batch_size < 1:
        raise ConversionError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.resolution is not None and args.resolution < 8:
        raise ConversionError(f"--resolution must be at least 8, got {args.resolution}")
    if not 13 <= args.opset <= 23:
        raise ConversionError(f"--opset {args.opset} is not supported; use 13..23 (default {DEFAULT_OPSET})")
    named = [(flag, Path(getattr(args, key))) for key, flag in (("onnx", "--onnx"), ("torchscript", "--torchscript"))
             + TF_OUTPUTS if getattr(args, key)]
    named += [(f"{flag}'s preprocessing", Path(getattr(args, key) + SIDECAR_SUFFIX))
              for key, flag in TF_OUTPUTS if key in ("tflite", "tflite_int8") and getattr(args, key)]
    for i, (flag, o) in enumerate(named):
        for other, o2 in named[:i]:
            if o.resolve() == o2.resolve():
                raise ConversionError(f"{other} and {flag} name the same path {o}")
    outs = [o for _, o in named]
    for o in outs:
        if o.exists() and not args.force:
            raise ConversionError(f"{o} exists; pass --force to overwrite it")
        if not o.parent.is_dir():
            raise ConversionError(f"{o.parent}: no such folder")
    if args.onnx:
        _require_onnx()  # before the TorchScript work, not after it
    if args.images:
        from .verify import check_image_file

        for f in args.images:
            check_image_file(f)
    args.calibration_files = calibration_files(args.calibration_images) if args.calibration_images else []
    level = log.level
    if args.quiet:  # no stage lines
        log.setLevel(logging.WARNING)
    try:
        with claimed(outs, force=args.force):  # another run on these names is refused while this one runs
            return _run_export(args)
    finally:
        log.setLevel(level)


def _figures(r: Dict[str, object]) -> str:
    return (f"relative error {r['rel_error']:.1e}, tolerance {r['tolerance']:.1e} "
            f"(float32 floor of these images {r['floor']:.1e})")


def _run_export(args: argparse.Namespace) -> int:
    from .loading import load_model

    model = load_model(args.weights)
    res = args.resolution or int(model.pretrained_cfg.get("input_size", [3, model.spec.resolution])[-1])
    size = (res, res)
    fuse = not args.no_fuse
    images = photo_inputs(model, args.images, size) if args.images else None
    on = f"{len(args.images)} --images" if images is not None else "synthetic images"
    outputs, lines, ref = [], [], Reference(model)
    if args.onnx:
        data, r = build_onnx(model, size, batch_size=args.batch_size, dynamic_batch=args.dynamic_batch,
                             opset=args.opset, fuse=fuse, images=images, names=args.images or (),
                             reference=ref)
        batch = "dynamic batch" if args.dynamic_batch else f"batch {args.batch_size}"
        outputs.append((Path(args.onnx), data, "the ONNX model"))
        lines.append(f"wrote {args.onnx} (ONNX opset {args.opset}, {batch}, {res}x{res}; onnx.checker ok; "
                     f"ONNX Runtime vs PyTorch on {on}: {_figures(r)})")
    if args.torchscript:
        data, r = build_torchscript(model, size, batch_size=args.batch_size, fuse=fuse, images=images,
                                    names=args.images or (), reference=ref)
        outputs.append((Path(args.torchscript), data, "the TorchScript model"))
        lines.append(f"wrote {args.torchscript} (TorchScript, static padding at {res}x{res}, other sizes dynamic; "
                     f"vs PyTorch on {on} and an odd size: {_figures(r)})")
    extra = []
    try:
        if any(getattr(args, key) for key, _ in TF_OUTPUTS):
            extra, tf_lines = build_tf_outputs(model, args, res, images, args.images or (), ref,
                                               args.calibration_files)
            lines += tf_lines
        write_outputs(outputs, replace=args.force, extra=extra)
    finally:
        for f in extra:
            f.discard()
    for line in lines:
        print(line)
    return 0


def main(argv: Sequence[str]) -> int:
    """``convert-effnet export ...`` (``argv`` without the subcommand name)."""
    return run_export(_parser().parse_args(list(argv)))
