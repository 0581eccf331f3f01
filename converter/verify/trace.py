"""``verify --trace``: where a conversion goes wrong, tap by tap.

The TensorFlow reference (converter/tfref/taps.py, in its own process) and the converted PyTorch
model run the same images with taps at every stage: each batch norm's input (what the conv
before it computed) and output, the stem's and each block's output, the pooled features, the
logits. Both sides record taps in the order the forward pass meets them, so they pair up by
position, for every family alike: the PyTorch side hooks the model's ``stem``, ``blocks[i]``
and ``classifier`` modules and every ``BatchNorm2d``; the TensorFlow side traces the reference's
own walk (BN names, ``scope/blocks_N``).

Tolerance per tap: float32 rounding grows with depth and is amplified where a BN divides by a
small variance; the reference measures it on the very same model and images (its float32 pass
against a float64 pass), and a tap fails when the PyTorch error exceeds ``NOISE_FACTOR`` times
that (never below ``FLOOR``); at the logits, never below verification's own criterion
(``max_rel_error``). Where float32 alone is off by more than that criterion (a deep model on
inputs that blow activations up), the table says so at every tap.

The table printed shows the stem, every block, the head and the logits; inside the first
diverging block, each conv and batch norm. The first failing tap names the official layer, the
PyTorch module and the tensors of that layer (official variable names and state_dict keys).
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..errors import ConversionError
from ..tfref.taps import BN_IN, BN_OUT, LOGITS, STAGE, rel_error  # the TensorFlow side's tap kinds (no TF import)

TRACE_IMAGES = 2  # images traced: every tap of every traced image is held in memory on both sides
# A correct port's error at a tap stays within a few times float32's own error there (both are
# float32 computations with different summation orders); a wrong tensor is orders of magnitude off.
# The same factor as the verdict on the logits (converter.verify).
from .criteria import NOISE_FACTOR  # noqa: E402
FLOOR = 1e-5  # relative error always accepted (a tap whose float64 error happens to be tiny)


def torch_taps(model, images: np.ndarray, device: str = "cpu") -> List[Dict[str, object]]:
    """The PyTorch model's taps of NHWC ``images`` (one batch), in forward order: dicts with
    kind, module (path), array (NHWC float32) and, for a BN input, ``feeders``: the modules with
    parameters that ran since the previous BN (the conv feeding it, and SE / routing before it)."""
    import torch
    from torch import nn

    for need in ("stem", "blocks", "classifier"):
        if not isinstance(getattr(model, need, None), nn.Module):
            raise ConversionError(f"--trace: the model has no '{need}' module (taps follow stem/blocks/classifier)")
    taps: List[Dict[str, object]] = []
    ran: List[str] = []  # parameterized non-BN modules since the last BN
    handles = []

    def arr(t) -> np.ndarray:
        a = t.detach().float().cpu().numpy()
        return a.transpose(0, 2, 3, 1) if a.ndim == 4 else a

    def add(kind: str, path: str, t, **extra) -> None:
        taps.append(dict(kind=kind, module=path, array=arr(t), **extra))

    stages = {model.stem: "stem"}
    stages.update({blk: f"blocks.{i}" for i, blk in enumerate(model.blocks)})
    for path, m in model.named_modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            def pre(mod, inp, path=path):
                add(BN_IN, path, inp[0], feeders=list(ran))
                ran.clear()

            def post(mod, inp, out, path=path):
                add(BN_OUT, path, out)
            handles += [m.register_forward_pre_hook(pre), m.register_forward_hook(post)]
        elif m in stages:
            handles.append(m.register_forward_hook(lambda mod, inp, out, path=stages[m]: add(STAGE, path, out)))
        elif m is model.classifier:
            handles.append(m.register_forward_pre_hook(lambda mod, inp: add(STAGE, "classifier (input)", inp[0])))
        elif any(True for _ in m.parameters(recurse=False)):
            handles.append(m.register_forward_hook(lambda mod, inp, out, path=path: ran.append(path)))
    try:
        model = model.eval().to(device)
        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))).to(device)
            add(LOGITS, "(output)", model(x))
    finally:
        for h in handles:
            h.remove()
    return taps


def load_reference_taps(path: Path) -> List[Dict[str, object]]:
    """The taps file the reference wrote (``--trace``; converter/tfref/taps.py)."""
    with np.load(path) as z:
        return [dict(kind=str(k), name=str(n), tensors=[t for t in str(v).split("|") if t], noise=float(e),
                     array=z[f"t{i}"])
                for i, (n, k, v, e) in enumerate(zip(z["names"], z["kinds"], z["tensors"], z["noise"]))]


class Tracer:
    """One verification's trace: the reference process that computes the logits also writes its
    taps of the first ``n_images`` (``reference_args``); ``report`` compares them with the model's."""

    MODULE = "converter.tfref.taps"  # the reference's command line, writing the taps too

    def __init__(self, n_images: int = TRACE_IMAGES):
        self._tmp = tempfile.TemporaryDirectory(prefix="effnet-trace-")
        self.path = Path(self._tmp.name) / "taps.npz"
        self.n_images = max(1, int(n_images))

    def reference_args(self) -> List[str]:
        return ["--trace", str(self.path), "--trace-images", str(self.n_images)]

    def taps(self) -> List[Dict[str, object]]:
        """The taps the reference wrote (read once: the folder goes)."""
        try:
            return load_reference_taps(self.path)
        finally:
            self._tmp.cleanup()

    def report(self, model, cfg: Dict[str, object], images: np.ndarray, device: str,
               max_rel_error: float) -> Dict[str, object]:
        tf = self.taps()
        images = np.ascontiguousarray(images[:self.n_images])
        dropped = str(cfg.get("background_dropped", "")).lower() == "true"
        report = compare_taps(tf, torch_taps(model, images, device), list(model.state_dict()), max_rel_error, dropped)
        report["images"] = len(images)
        return summarize(report)


def _label(kind: str, official: str, module: str, tensors: Sequence[str], feeders: Sequence[str]) -> Tuple[str, str]:
    """(official layer, module) a tap stands for: a BN input stands for the conv feeding it."""
    if kind == BN_IN:
        # the conv feeding the BN is the last layer created before it (an SE or CondConv routing
        # layer before it is listed among the tap's tensors), or the groups of a grouped conv
        # (MixNet): the last variables of the same kind
        kind = tensors[-1].rsplit("/", 1)[-1] if tensors else ""
        conv = [t for t in tensors if t.rsplit("/", 1)[-1] == kind and "/se/" not in t]
        layers = list(dict.fromkeys(t.rsplit("/", 1)[0] for t in conv))
        mods = [f for f in feeders if f.rsplit(".", 1)[0] == feeders[-1].rsplit(".", 1)[0]] if feeders else []
        mod = (mods[0].rsplit(".", 2)[0] if len(mods) > 1 and mods[0].rsplit(".", 2)[1] == "convs" else
               " + ".join(mods)) if mods else module + " (input)"
        return (" + ".join(layers) if layers else official + " (input)"), mod
    if kind == LOGITS and tensors:  # the classifier
        return tensors[-1].rsplit("/", 1)[0], "classifier"
    return official, module


def _segments(taps: Sequence[Dict[str, object]]) -> List[List[Dict[str, object]]]:
    """The taps cut into stages: each ends with its stage (or logits) tap."""
    out: List[List[Dict[str, object]]] = [[]]
    for t in taps:
        out[-1].append(t)
        if t["kind"] in (STAGE, LOGITS):
            out.append([])
    return [seg for seg in out if seg]


def _structure(tf: Sequence[Dict[str, object]], pt: Sequence[Dict[str, object]]) -> Tuple[int, Optional[Dict]]:
    """(taps that pair up, None) when both models meet the same kinds of taps stage by stage; else
    (where the first stage that differs starts, what the report says about it)."""
    start = 0
    a_segs, b_segs = _segments(tf), _segments(pt)
    for k in range(max(len(a_segs), len(b_segs))):
        a = a_segs[k] if k < len(a_segs) else []
        b = b_segs[k] if k < len(b_segs) else []
        if [t["kind"] for t in a] != [t["kind"] for t in b]:
            bns_a = [t["name"] for t in a if t["kind"] == BN_IN]
            bns_b = [t["module"] for t in b if t["kind"] == BN_IN]
            note = (f"the two models' layers differ in this stage: TensorFlow has {len(bns_a)} batch norm(s) "
                    f"({', '.join(n.rsplit('/', 2)[-1] for n in bns_a) or 'none'}), PyTorch {len(bns_b)} "
                    f"({', '.join(bns_b) or 'none'})")
            return start, dict(official=a[-1]["name"] if a else "(nothing)", module=b[-1]["module"] if b else "(nothing)",
                               note=note)
        start += len(a)
    return start, None


def compare_taps(tf: Sequence[Dict[str, object]], pt: Sequence[Dict[str, object]], state_keys: Sequence[str],
                 max_rel_error: float, background_dropped: bool = False) -> Dict[str, object]:
    """Pair the taps by position and judge each; returns the trace report (rows, first divergence)."""
    rows: List[Dict[str, object]] = []
    first = None
    limit, mismatch = _structure(tf, pt)
    for i in range(limit):
        a, b = tf[i], pt[i]
        ref, got = np.asarray(a["array"]), np.asarray(b["array"])
        if a["kind"] == LOGITS and background_dropped:
            ref = ref[:, 1:]  # the converted classifier lost the background class (output 0)
        official, module = _label(a["kind"], a["name"], b["module"], a["tensors"], b.get("feeders", ()))
        tol = max(NOISE_FACTOR * float(a["noise"]), FLOOR)
        if a["kind"] == LOGITS:  # at least the verification's own criterion
            tol = max(tol, max_rel_error)
        note = ""
        if ref.shape != got.shape:
            rel, note = float("inf"), f"shapes differ: TensorFlow {list(ref.shape)}, PyTorch {list(got.shape)}"
        else:
            rel = rel_error(got, ref)
        ok = rel <= tol
        mods = [b["module"]] if a["kind"] == BN_OUT else list(b.get("feeders", ())) if a["kind"] == BN_IN else \
            ["classifier"] if a["kind"] == LOGITS else []
        keys = [k for k in state_keys if any(k.startswith(m + ".") for m in mods)]
        rows.append(dict(index=i, kind=a["kind"], official=official, module=module, rel_error=rel,
                         noise=float(a["noise"]), tolerance=tol, ok=ok, shape=list(ref.shape),
                         tensors=list(a["tensors"]), state_keys=keys, note=note))
        if not ok and first is None:
            first = len(rows) - 1
    if mismatch is not None:
        rows.append(dict(index=limit, kind="structure", rel_error=float("inf"), noise=0.0, tolerance=0.0, ok=False,
                         shape=[], tensors=[], state_keys=[], **mismatch))
        first = first if first is not None else len(rows) - 1
    return {"rows": rows, "first_divergence": rows[first] if first is not None else None, "passed": first is None}


def _stage_of(rows: Sequence[Dict[str, object]], i: int) -> Tuple[int, int]:
    """(start, end) indexes of the stage holding row ``i``: the rows after the previous stage tap, up
    to and including the next stage (or logits) tap."""
    start = i
    while start > 0 and rows[start - 1]["kind"] not in (STAGE, LOGITS):
        start -= 1
    end = i
    while end < len(rows) - 1 and rows[end]["kind"] not in (STAGE, LOGITS, "structure"):
        end += 1
    return start, end


def _compact(names: Sequence[str]) -> str:
    """``a/b/{gamma, beta}, a/c/kernel``: variable names grouped by layer."""
    layers: Dict[str, List[str]] = {}
    for n in names:
        layer, _, leaf = n.rpartition("/")
        layers.setdefault(layer, []).append(leaf)
    return ", ".join(f"{k}/{v[0]}" if len(v) == 1 else f"{k}/{{{', '.join(v)}}}" for k, v in layers.items())


def summarize(report: Dict[str, object]) -> Dict[str, object]:
    """The report as the JSON carries it: every stage tap, and inside the first diverging stage
    every conv and BN tap; plus ``first_divergence`` (None when all taps pass) and ``failure``."""
    rows = report["rows"]
    first = report["first_divergence"]
    keep = {i for i, r in enumerate(rows) if r["kind"] in (STAGE, LOGITS, "structure")}
    failure = None
    if first is not None:
        i = rows.index(first)
        s, e = _stage_of(rows, i)
        keep.update(range(s, e + 1))
        stage = rows[e]["official"] if rows[e]["kind"] in (STAGE, "structure") else "the head"
        what = {BN_IN: "conv", BN_OUT: "batch norm", STAGE: "output", LOGITS: "logits"}.get(first["kind"], "layers")
        tensors = _compact(first.get("tensors") or []) or "none of its own (activation / residual / pooling)"
        if first["kind"] == "structure":
            failure = f"trace: first divergence in {stage} (module {first['module']}): {first['note']}"
        else:
            failure = (f"trace: first divergence in {stage}: {what} {first['official']} (module {first['module']}), "
                       f"rel error {first['rel_error']:.3g} > {first['tolerance']:.3g}; its tensors: {tensors}")
            if first.get("note"):
                failure += f" ({first['note']})"
    return {"images": report.get("images"), "passed": first is None, "first_divergence": first, "failure": failure,
            "noise_factor": NOISE_FACTOR, "floor": FLOOR,
            "rows": [rows[i] for i in sorted(keep)]}


def format_table(trace: Dict[str, object]) -> str:
    """The trace table, one tap a line, then the verdict."""
    rows = trace["rows"]
    w1 = min(90, max([len("official layer")] + [len(str(r["official"])) for r in rows]))
    w2 = min(40, max([len("module")] + [len(str(r["module"])) for r in rows]))
    lines = [f"trace on {trace['images']} image(s): relative error per tap (tolerance: {trace['noise_factor']:g} x "
             f"float32's own error there, at least {trace['floor']:g}; logits: at least the verification criterion)",
             f"{'tap':>4}  {'kind':<9} {'official layer':<{w1}} {'module':<{w2}} {'rel error':>10} {'tolerance':>10}"]
    for r in rows:
        flag = "" if r["ok"] else "  <-- FIRST DIVERGENCE" if r == trace["first_divergence"] else "  over"
        lines.append(f"{r['index']:>4}  {r['kind']:<9} {str(r['official'])[:w1]:<{w1}} {str(r['module'])[:w2]:<{w2}} "
                     f"{r['rel_error']:>10.3g} {r['tolerance']:>10.3g}{flag}")
    lines.append(trace["failure"] or "trace: every tap within its tolerance")
    return "\n".join(lines)
