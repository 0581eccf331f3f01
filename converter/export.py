"""``convert-effnet export``: a converted file as ONNX or TorchScript, checked after export.

The exported model has its TF 'SAME' padding frozen for the export size (static padding, see
converter.fast), batch norm folded into the convs and, for ONNX, a fully static graph: the pad
amounts are constants and no node computes a shape at run time (``--dynamic-batch`` leaves only
the batch dimension free). Every output is checked before it gets its name: ONNX with
onnx.checker and ONNX Runtime, TorchScript by loading it back; the logits must agree with the
PyTorch model's within ``MAX_REL_ERROR``. A failed check leaves no file behind.
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
from typing import Dict, List, Sequence

import numpy as np
import torch

from . import interrupts
from .errors import ConversionError, first_line
from .synthetic import IMAGENET_MEAN, IMAGENET_STD, normalize, synthetic_images
from .writer import AtomicFile

log = logging.getLogger("converter")

MAX_REL_ERROR = 1e-4  # ||exported - torch|| / ||torch|| on the check batch
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


def _onnx_export(model: torch.nn.Module, x: torch.Tensor, path: Path, dynamic_batch: bool, opset: int) -> None:
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
            torch.onnx.export(model, (x,), str(path), **kwargs)


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


def export_onnx(model: torch.nn.Module, out: Path, input_size, batch_size: int = 1,
                dynamic_batch: bool = False, opset: int = DEFAULT_OPSET, fuse: bool = True) -> Dict[str, object]:
    """Write ``model`` as ONNX to ``out`` (atomically) after checking it; returns the check figures.

    Checks: onnx.checker; a static graph (constant pads; no shape computation; with
    ``dynamic_batch`` only the batch dimension free); ONNX Runtime logits within
    ``MAX_REL_ERROR`` of the PyTorch model's (at two batch sizes with ``dynamic_batch``).
    """
    try:
        import onnx
        import onnxruntime as ort
        import onnxscript  # noqa: F401  (the torch.export-based exporter)
    except ImportError as e:
        raise ConversionError(f"ONNX export needs onnx, onnxscript and onnxruntime ({e.name} is missing): "
                              "pip install 'effnet-convert[export]'") from None
    ref_model = model.eval()
    m = export_model(model, input_size, fuse=fuse)
    mean, std = _norm(model)
    x = check_inputs(batch_size, input_size, mean, std)
    f = AtomicFile(Path(out))
    try:
        f.create()
        log.info("export: ONNX export (torch.export, opset %d)", opset)
        try:
            _onnx_export(m, x, f.tmp, dynamic_batch, opset)
        except Exception as e:
            interrupts.check()  # torch.export wraps a Ctrl-C in its own error
            msg = re.sub(r"\x1b\[[0-9;]*m", "", str(e)).strip().splitlines() or [""]
            raise ConversionError(f"ONNX export failed: {type(e).__name__}: {msg[0][:200]}") from None
        interrupts.check()
        log.info("export: checking the ONNX file (onnx.checker, static graph, ONNX Runtime vs PyTorch)")
        proto = onnx.load(str(f.tmp))
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
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        sess = ort.InferenceSession(str(f.tmp), opts, providers=["CPUExecutionProvider"])
        batches = [x] + ([check_inputs(batch_size + 2, input_size, mean, std, first=batch_size)]
                         if dynamic_batch else [])
        errors = _check_logits(ref_model, batches, lambda xb: sess.run(["logits"], {"images": xb.numpy()})[0],
                               "ONNX Runtime")
        f.commit()
    finally:
        f.discard()
    return {"path": str(out), "format": "onnx", "rel_error": max(errors), "batches": [int(b.shape[0]) for b in batches],
            "input_size": list(input_size), "dynamic_batch": dynamic_batch, "opset": opset, "fused": fuse}


def _check_logits(ref_model: torch.nn.Module, batches, run, what: str) -> List[float]:
    """Relative error of ``run(batch)`` against the PyTorch model per batch; raises past ``MAX_REL_ERROR``."""
    errors = []
    for xb in batches:
        with torch.no_grad():
            ref = ref_model(xb.to(next(ref_model.parameters()).device)).float().cpu().numpy()
            got = run(xb)
        if got.shape != ref.shape:
            raise ConversionError(f"{what} gives logits of shape {got.shape}, PyTorch {ref.shape}")
        errors.append(rel_error(got, ref))
    if max(errors) > MAX_REL_ERROR or not np.isfinite(max(errors)):
        raise ConversionError(f"{what} logits differ from PyTorch's: relative error {max(errors):.2e} "
                              f"> {MAX_REL_ERROR:g}; nothing written")
    return errors


def export_torchscript(model: torch.nn.Module, out: Path, input_size, batch_size: int = 1,
                       fuse: bool = True) -> Dict[str, object]:
    """Write ``model`` as TorchScript to ``out`` (atomically) after checking it; returns the check figures.

    Scripted (not traced), so the static padding's fallback stays in: other input sizes and
    batch sizes compute the right numbers. Checked by loading the file back: logits within
    ``MAX_REL_ERROR`` of the PyTorch model's at the export size and at an odd size.
    """
    ref_model = model.eval()
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
    f = AtomicFile(Path(out))
    try:
        f.create()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.jit's deprecation notices
            torch.jit.save(scripted, str(f.tmp))
            loaded = torch.jit.load(str(f.tmp), map_location="cpu")
        log.info("export: checking the TorchScript file (loaded back, vs PyTorch at %dx%d and an odd size)",
                 *input_size)
        odd = (input_size[0] + 1) | 1, (input_size[1] + 1) | 1
        mean, std = _norm(model)
        batches = [check_inputs(batch_size, input_size, mean, std),
                   check_inputs(batch_size + 1, odd, mean, std, first=batch_size)]
        errors = _check_logits(ref_model, batches, lambda xb: loaded(xb).numpy(), "TorchScript")
        f.commit()
    finally:
        f.discard()
    return {"path": str(out), "format": "torchscript", "rel_error": max(errors), "input_size": list(input_size),
            "fused": fuse}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="convert-effnet export",
        description="Export a converted file as ONNX (static shapes, checked with onnx.checker and ONNX Runtime) "
                    "and/or TorchScript (checked by loading it back).")
    p.add_argument("--weights", required=True, help="the converted .safetensors or .pth")
    p.add_argument("--onnx", metavar="OUT.onnx", help="write an ONNX model here")
    p.add_argument("--torchscript", metavar="OUT.pt", help="write a TorchScript model here")
    p.add_argument("--resolution", type=int, help="input size (default: the model's native resolution)")
    p.add_argument("--batch-size", type=int, default=1, help="batch size of the static ONNX graph (default 1)")
    p.add_argument("--dynamic-batch", action="store_true", help="ONNX: leave the batch dimension free")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default {DEFAULT_OPSET})")
    p.add_argument("--no-fuse", action="store_true", help="keep the batch norms as separate ops")
    p.add_argument("--force", action="store_true", help="overwrite existing outputs")
    p.add_argument("--quiet", action="store_true", help="no stage lines on stderr")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    return p


def run_export(args: argparse.Namespace) -> int:
    """Export as ``args`` say; prints one line per file written; 0 on success."""
    if not args.onnx and not args.torchscript:
        raise ConversionError("nothing to export: pass --onnx OUT.onnx and/or --torchscript OUT.pt")
    if args.batch_size < 1:
        raise ConversionError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.resolution is not None and args.resolution < 8:
        raise ConversionError(f"--resolution must be at least 8, got {args.resolution}")
    if not 13 <= args.opset <= 23:
        raise ConversionError(f"--opset {args.opset} is not supported; use 13..23 (default {DEFAULT_OPSET})")
    outs = [Path(o) for o in (args.onnx, args.torchscript) if o]
    if len(outs) == 2 and outs[0].resolve() == outs[1].resolve():
        raise ConversionError("--onnx and --torchscript name the same file")
    for o in outs:
        if o.exists() and not args.force:
            raise ConversionError(f"{o} exists; pass --force to overwrite it")
        if not o.parent.is_dir():
            raise ConversionError(f"{o.parent}: no such folder")
    level = log.level
    if args.quiet:  # no stage lines
        log.setLevel(logging.WARNING)
    try:
        return _run_export(args, outs)
    finally:
        log.setLevel(level)


def _run_export(args: argparse.Namespace, outs: List[Path]) -> int:
    from .loading import load_model

    model = load_model(args.weights)
    res = args.resolution or int(model.pretrained_cfg.get("input_size", [3, model.spec.resolution])[-1])
    size = (res, res)
    fuse = not args.no_fuse
    if args.onnx:
        r = export_onnx(model, Path(args.onnx), size, batch_size=args.batch_size,
                        dynamic_batch=args.dynamic_batch, opset=args.opset, fuse=fuse)
        batch = "dynamic batch" if args.dynamic_batch else f"batch {args.batch_size}"
        print(f"wrote {args.onnx} (ONNX opset {args.opset}, {batch}, {res}x{res}; "
              f"onnx.checker ok; ONNX Runtime vs PyTorch relative error {r['rel_error']:.1e})")
    if args.torchscript:
        r = export_torchscript(model, Path(args.torchscript), size, batch_size=args.batch_size, fuse=fuse)
        print(f"wrote {args.torchscript} (TorchScript, static padding at {res}x{res}, other sizes dynamic; "
              f"relative error {r['rel_error']:.1e})")
    return 0


def main(argv: Sequence[str]) -> int:
    """``convert-effnet export ...`` (``argv`` without the subcommand name)."""
    return run_export(_parser().parse_args(list(argv)))
