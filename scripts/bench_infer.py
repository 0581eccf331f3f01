#!/usr/bin/env python3
"""Inference speed of the converted model next to timm and mmpretrain, same threads, same run.

Runs in the environment that has timm (and mmpretrain): ``.venv-libs/bin/python
scripts/bench_infer.py``. For each variant and batch size it times, interleaved over several
rounds (medians reported, with the spread, since the machine may be shared):

- ours: eager as loaded (static padding at the native size, BN separate), the same with
  channels_last, BN folded (``model.fuse_bn()``) NCHW, ``prepare_for_inference`` (BN folded,
  the stride-2 extra pixel folded into the kernels, activations in place, channels_last), the
  same with the pads as F.pad copies (what the kernel form saves) and with the padding left
  dynamic, ``torch.compile`` of the prepared model, and the static ONNX export in ONNX Runtime;
- timm's TF-padding model (``tf_efficientnet_bN``, ``tf_efficientnetv2_s``,
  ``tf_efficientnet_lite0``: 'SAME' computed per call), its symmetric-padding twin
  (``efficientnet_bN``...: the limit for asymmetric pads) and mmpretrain's EfficientNet
  (B0-B8: TF-style adaptive padding), all channels_last.

Every model gets random weights with batch-norm statistics calibrated on a random batch (so
activations have realistic magnitudes, no denormals), and ours are checked against the plain
float32 eager model before being timed. ``--device cuda`` times on the GPU and adds fp16/bf16
logit parity against float32 (``--parity-only`` for the parity figures alone).
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List

# Threads that wait sleep instead of spinning (libgomp reads this when torch loads it): on a
# shared machine spinning threads of 2-thread runs fight the other load and every torch side
# slows down several-fold; ONNX Runtime gets the same (allow_spinning 0). Set it to override.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from converter.registry import get_arch  # noqa: E402
from converter.fast import fold_pads, fuse_bn, prepare_for_inference, set_input_size  # noqa: E402
from converter.model import build_model  # noqa: E402

CL = torch.channels_last


def timm_names(variant: str):
    """timm's (TF-padding, symmetric-padding) models of ``variant``: b0 -> tf_efficientnet_b0, efficientnet_b0."""
    name = variant.replace("v2-", "v2_")
    base = f"efficientnet{name}" if name.startswith("v2") else f"efficientnet_{name}"
    return f"tf_{base}", base


def calibrate(model: torch.nn.Module, size: int, device: str, seed: int = 0) -> torch.nn.Module:
    """BN running statistics := those of one random batch (train-mode pass), then eval."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(4, 3, size, size, generator=g).to(device)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in bns]
    for m in bns:
        m.momentum = 1.0
    with torch.no_grad():
        model.eval()
        for m in bns:  # batch statistics only: no drop-connect or dropout while calibrating
            m.train()
        model(x)
    for m, mom in zip(bns, saved):
        m.momentum = mom
    return model.eval()


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().cpu(), b.double().cpu()
    return float((a - b).norm() / b.norm())


class Runner:
    """One timed configuration: ``fn(x)`` on an input prepared by ``prep``."""

    def __init__(self, name: str, fn: Callable, prep: Callable = lambda x: x, note: str = ""):
        self.name, self.fn, self.prep, self.note = name, fn, prep, note
        self.rates: Dict[int, List[float]] = {}


def time_once(r: Runner, x, batch: int, min_seconds: float, sync: Callable) -> float:
    n, t0 = 0, time.perf_counter()
    with torch.inference_mode():
        while True:
            r.fn(x)
            sync()
            n += 1
            el = time.perf_counter() - t0
            if el >= min_seconds and n >= (2 if batch < 8 else 1):
                return n * batch / el


def onnx_runner(model: torch.nn.Module, size: int, batch: int, threads: int, tmp: Path, device: str):
    """Static ONNX export of ``model`` (fused) at ``batch`` run in ONNX Runtime."""
    import onnxruntime as ort

    from converter.export import _onnx_export

    path = tmp / f"m_{size}_{batch}.onnx"
    m = copy.deepcopy(model).float().cpu().to(memory_format=torch.contiguous_format)
    _onnx_export(m, torch.randn(batch, 3, size, size), path, dynamic_batch=False, opset=17)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    if os.environ.get("OMP_WAIT_POLICY", "").upper() == "PASSIVE":
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    providers = ["CUDAExecutionProvider"] if device == "cuda" else ["CPUExecutionProvider"]
    sess = ort.InferenceSession(str(path), opts, providers=providers)

    def fn(x):
        return torch.from_numpy(sess.run(["logits"], {"images": x})[0])

    return fn


def build_runners(variant: str, batch: int, args, tmp: Path, log) -> tuple:
    """(runners, reference logits check results) for one variant and batch size."""
    dev = args.device
    size = get_arch(variant).resolution
    torch.manual_seed(0)
    base = calibrate(build_model(variant).to(dev), size, dev)  # static pads at the native size
    x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(1)).to(dev)
    with torch.inference_mode():
        ref = base(x)
    runners, checks = [], {}

    core = ("ours fused channels_last", "ours compiled", "ours ONNX")

    def add(name, model, cl, note=""):
        if args.core and name.startswith("ours") and not name.startswith(core):
            return
        if args.core and ("BN folded" in name or "dynamic" in name):
            return
        prep = (lambda t: t.contiguous(memory_format=CL)) if cl else (lambda t: t.contiguous())
        r = Runner(name, model, prep, note)
        with torch.inference_mode():
            out = model(prep(x))
        if name.startswith("ours"):
            checks[name] = rel(out, ref)
        runners.append(r)

    add("ours eager", base, False, "as loaded: static pads, BN separate, NCHW")
    add("ours eager channels_last", copy.deepcopy(base).to(memory_format=CL), True)
    add("ours fused", fuse_bn(copy.deepcopy(base)), False)
    fast = prepare_for_inference(copy.deepcopy(base))
    add("ours fused channels_last", fast, True, "prepare_for_inference defaults: pads in the kernels")
    add("ours fused channels_last, F.pad", fold_pads(copy.deepcopy(fast), False), True,
        "the stride-2 extra pixel by F.pad")
    add("ours fused channels_last, dynamic pads", set_input_size(copy.deepcopy(fast), None), True)
    if "compile" not in args.skip and (not args.compile_at or f"{variant}:{batch}" in args.compile_at):
        t0 = time.perf_counter()
        comp = torch.compile(copy.deepcopy(fast), dynamic=False)
        with torch.inference_mode():
            comp(x.contiguous(memory_format=CL))
        log(f"  compiled {variant} batch {batch} in {time.perf_counter() - t0:.0f} s")
        add("ours compiled (fused, channels_last)", comp, True)
    if "onnx" not in args.skip:
        try:
            fn = onnx_runner(fuse_bn(copy.deepcopy(base)), size, batch, args.threads, tmp, dev)
            r = Runner("ours ONNX Runtime (static, fused)", fn, lambda t: t.cpu().numpy())
            checks[r.name] = rel(fn(x.cpu().numpy()), ref)
            runners.append(r)
        except Exception as e:  # report, keep benchmarking
            log(f"  ONNX Runtime skipped: {type(e).__name__}: {str(e).splitlines()[0][:200]}")
    if "timm" not in args.skip:
        try:
            import timm

            tf_name, sym_name = timm_names(variant)
            for name in (tf_name, sym_name):
                m = calibrate(timm.create_model(name, pretrained=False).to(dev), size, dev)
                add(f"timm {name} channels_last", m.to(memory_format=CL), True)
            m = calibrate(timm.create_model(tf_name, pretrained=False).to(dev), size, dev)
            with torch.inference_mode():
                before = m(x)
                m = _timm_fold(m).to(memory_format=CL)
                checks_timm = rel(m(x.contiguous(memory_format=CL)), before)
            log(f"  timm {tf_name} folded vs unfolded: relative error {checks_timm:.1e}")
            add(f"timm {tf_name} BN folded, channels_last", m, True)
        except Exception as e:
            log(f"  timm skipped: {type(e).__name__}: {str(e).splitlines()[0][:200]}")
    if "mmpretrain" not in args.skip and variant[0] == "b":
        try:
            m = mmpretrain_model(variant)
            m = calibrate(m.to(dev), size, dev)
            add("mmpretrain EfficientNet channels_last", m.to(memory_format=CL), True)
        except Exception as e:
            log(f"  mmpretrain skipped: {type(e).__name__}: {str(e).splitlines()[0][:200]}")
    for r in runners:
        r.x = r.prep(x)
    return runners, checks


# timm's EfficientNet modules: which conv each BatchNormAct2d follows (timm/models/_efficientnet_blocks.py)
TIMM_BN_PAIRS = {
    "EfficientNet": (("conv_stem", "bn1"), ("conv_head", "bn2")),
    "DepthwiseSeparableConv": (("conv_dw", "bn1"), ("conv_pw", "bn2")),
    "InvertedResidual": (("conv_pw", "bn1"), ("conv_dw", "bn2"), ("conv_pwl", "bn3")),
    "EdgeResidual": (("conv_exp", "bn1"), ("conv_pwl", "bn2")),  # V2's fused blocks
}


def _timm_fold(model):
    """Fold timm's batch norms into their convs (its BatchNormAct2d keeps the activation, BN made identity)."""
    with torch.no_grad():
        for m in model.modules():
            for ca, ba in TIMM_BN_PAIRS.get(type(m).__name__, ()):
                conv, bn = getattr(m, ca), getattr(m, ba)
                scale = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
                conv.weight.copy_((conv.weight.double() * scale.reshape(-1, 1, 1, 1)).float())
                conv.bias = torch.nn.Parameter((bn.bias.double() - bn.running_mean.double() * scale).float())
                bn.running_mean.zero_()
                bn.running_var.fill_(1.0 - bn.eps)  # normalization becomes the identity
                bn.weight.fill_(1.0)
                bn.bias.zero_()
    return model


def mmpretrain_model(variant: str):
    """mmpretrain's EfficientNet classifier (random weights) in its TF-padding configuration."""
    with contextlib.redirect_stdout(io.StringIO()):
        from mmpretrain import get_model

        return get_model(f"efficientnet-{variant}_3rdparty_8xb32_in1k", pretrained=False)


def parity(variants, device: str, log) -> Dict[str, Dict[str, float]]:
    """fp16/bf16 logits (and the fused channels_last model in each) vs float32, relative error."""
    out = {}
    for v in variants:
        size = get_arch(v).resolution
        torch.manual_seed(0)
        base = calibrate(build_model(v).to(device), size, device)
        x = torch.randn(4, 3, size, size, generator=torch.Generator().manual_seed(1)).to(device)
        with torch.inference_mode():
            ref = base(x).double()
            row = {}
            for dt in (torch.float16, torch.bfloat16):
                if device == "cpu" and dt is torch.float16:
                    continue
                m = prepare_for_inference(copy.deepcopy(base)).to(dt)
                got = m(x.to(dt).contiguous(memory_format=CL)).double()
                row[str(dt).replace("torch.", "")] = rel(got, ref)
                row[f"{str(dt).replace('torch.', '')} top1 agree"] = float((got.argmax(1) == ref.argmax(1)).double().mean())
            fast = prepare_for_inference(copy.deepcopy(base))
            row["float32 fused channels_last"] = rel(fast(x.contiguous(memory_format=CL)), ref)
        out[v] = row
        log(f"parity {v} ({device}): " + ", ".join(f"{k} {val:.2e}" for k, val in row.items()))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variants", nargs="+", default=["b0", "v2-s", "lite0"])
    p.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 32])
    p.add_argument("--threads", type=int, default=2, help="torch and ONNX Runtime threads (default 2)")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds, median reported")
    p.add_argument("--min-seconds", type=float, default=1.0, help="per measurement (at least 2 calls)")
    p.add_argument("--skip", nargs="*", default=[], choices=("compile", "onnx", "timm", "mmpretrain"))
    p.add_argument("--compile-at", nargs="*", default=[], metavar="VARIANT:BATCH",
                   help="torch.compile only these (e.g. b0:1; default all): on 2 busy cores a compile takes minutes")
    p.add_argument("--core", action="store_true",
                   help="time only prepare_for_inference (pads in the kernels and by F.pad), its compiled "
                        "and ONNX forms and timm's two models (the issue 27 comparison; faster on busy cores)")
    p.add_argument("--parity-only", action="store_true", help="only the fp16/bf16 vs float32 parity figures")
    p.add_argument("--json", help="write all figures here")
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    if args.device == "cuda":
        if not torch.cuda.is_available():
            print("bench_infer: --device cuda but no CUDA device is visible", file=sys.stderr)
            return 2
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cudnn.benchmark = True

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    def sync():
        if args.device == "cuda":
            torch.cuda.synchronize()

    info = {"python": platform.python_version(), "torch": torch.__version__, "threads": args.threads,
            "device": args.device, "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "loadavg_start": os.getloadavg(), "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY")}
    for mod in ("timm", "onnxruntime", "mmpretrain"):
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                info[mod] = __import__(mod).__version__
        except Exception as e:
            info[mod] = f"not importable ({type(e).__name__})"
    if args.device == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
    log(json.dumps(info))
    result = {"info": info, "rows": [], "parity": {}}
    if args.device == "cuda" or args.parity_only:
        result["parity"] = parity(args.variants, args.device, log)
    if args.parity_only:
        print(json.dumps(result["parity"], indent=1))
        return 0

    with tempfile.TemporaryDirectory() as tmp:
        for v in args.variants:
            for b in args.batch_sizes:
                log(f"{v} batch {b}: building")
                runners, checks = build_runners(v, b, args, Path(tmp), log)
                bad = {k: e for k, e in checks.items() if not e <= 1e-4}
                if bad:
                    log(f"  PARITY FAILURE vs eager float32: {bad}")
                with torch.inference_mode():  # warm-up
                    for r in runners:
                        for _ in range(2 if b == 1 else 1):
                            r.fn(r.x)
                for rnd in range(args.rounds):
                    for r in (runners if rnd % 2 == 0 else runners[::-1]):
                        r.rates.setdefault(b, []).append(time_once(r, r.x, b, args.min_seconds, sync))
                for r in runners:
                    rates = r.rates[b]
                    row = {"variant": v, "batch": b, "model": r.name, "img_s": statistics.median(rates),
                           "best": max(rates), "min": min(rates), "rounds": rates,
                           "rel_err_vs_eager": checks.get(r.name), "note": r.note}
                    result["rows"].append(row)
                    log(f"  {r.name:55s} median {row['img_s']:8.2f} img/s, best {row['best']:.2f}, "
                        f"worst {row['min']:.2f}")
    info["loadavg_end"] = os.getloadavg()
    print(markdown(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


def markdown(result) -> str:
    """The README table: images/s, best round (median) per model, variant and batch size.

    The ratios use the best round: on a shared machine it is the one least disturbed by the
    other load (the timeit rule: take the minimum time).
    """
    rows = result["rows"]
    cols = sorted({(r["variant"], r["batch"]) for r in rows}, key=lambda t: (t[0], t[1]))
    names = list(dict.fromkeys(r["model"] for r in rows))
    get = {(r["model"], r["variant"], r["batch"]): r["best"] for r in rows}
    med = {(r["model"], r["variant"], r["batch"]): r["img_s"] for r in rows}
    lines = ["| model | " + " | ".join(f"{v} batch {b}" for v, b in cols) + " |",
             "|---|" + "---:|" * len(cols)]
    for n in names:
        cells = [f"{get[(n, v, b)]:.1f} ({med[(n, v, b)]:.1f})" if (n, v, b) in get else "-" for v, b in cols]
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    lines.append("")
    for v, b in cols:
        g = {n: get.get((n, v, b)) for n in names}
        best = g.get("ours fused channels_last")
        tf_name, sym_name = timm_names(v)
        tf = g.get(f"timm {tf_name} channels_last")
        sym = g.get(f"timm {sym_name} channels_last")
        if best and tf and sym:
            lines.append(f"{v} batch {b}: prepare_for_inference = {best / tf:.2f}x timm {tf_name}, "
                         f"{best / sym:.2f}x timm {sym_name} (symmetric pads)")
        for alt in ("ours fused channels_last, F.pad", "ours compiled (fused, channels_last)",
                    "ours ONNX Runtime (static, fused)"):
            if g.get(alt) and sym:
                lines.append(f"{v} batch {b}: {alt} = {g[alt] / sym:.2f}x timm {sym_name}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
