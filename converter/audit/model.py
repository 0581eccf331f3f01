"""Question 2: the library's own model with FILE's weights against the TensorFlow reference, stage by stage.

The taps are ``verify --trace``'s (converter/tfref/taps.py: every batch norm's input, i.e. the conv
feeding it, and output, the stem's and every block's output, the pooled features, the logits),
mapped onto the library's modules through the layout's table: a BN's module is its row's module
path, a stage's module the common parent of its rows' modules (timm's stem, whose conv and BN have
no parent of their own: its last module, the BatchNormAct2d). The library runs in its own
interpreter (converter/audit/driver.py), TensorFlow in its own process; a tap diverges by the
criterion of ``--trace`` (converter/verify/trace.py: ``NOISE_FACTOR`` x float32's own error there,
at least ``FLOOR``; the logits at least verification's ``MAX_REL_ERROR``).

The diagnosis runs the library's model again with one thing set as the official model has it
(every strided conv padded as TF 'SAME'; every BN's epsilon the official one): a variant that
computes the official logits where the model as built does not names the cause, and the model's
own attributes (its strided convs' padding, its BN epsilons, its activations) say it in words.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..errors import ConversionError
from ..mapping import Entry, is_classifier
from ..mappings.kinds import BN, BN_TRACKED
from ..tfref.taps import BN_IN, BN_OUT, LOGITS, STAGE, rel_error
from ..verify import MAX_REL_ERROR
from ..verify.criteria import NOISE_FACTOR
from ..verify.trace import FLOOR

LIBS_ENV = "EFFNET_LIBS_PYTHON"  # the interpreter that has the libraries (tests/libs_check.py's)
DRIVER = Path(__file__).with_name("driver.py")
# the library each layout's model comes from (converter/audit/driver.py builds it)
LIBRARIES = {"timm": "timm", "mmpretrain": "mmpretrain", "transformers": "transformers",
             "efficientnet_pytorch": "efficientnet_pytorch"}
# the model-class / zoo-name default per layout where the table's own name is not the library's model
# (Layout.library_model gives timm's model name and mmpretrain's arch)
VARIANTS = {"base": [], "same": ["same"], "eps": ["eps"], "act": ["act"], "same+eps": ["same", "eps"]}
# official activation (ArchSpec.activation) -> the names the libraries give it
ACTIVATIONS = {"swish": ("SiLU", "Swish", "MemoryEfficientSwish", "silu", "swish", "SiLUActivation"),
               "relu": ("ReLU", "relu"), "relu6": ("ReLU6", "relu6")}


def _parent(paths: Sequence[str]) -> str:
    parts = [p.split(".") for p in paths]
    common = []
    for xs in zip(*parts):
        if len(set(xs)) != 1:
            break
        common.append(xs[0])
    return ".".join(common)


def tap_plan(spec, entries: Sequence[Entry]) -> List[Tuple[str, str, str, str]]:
    """[(tap id, official tap name, kind, library module path, how)] for every TF tap the table maps."""
    scope = spec.scope
    plan = []
    stages: Dict[str, List[str]] = {}
    order: List[str] = []
    for e in entries:
        if not e.tf_name:
            continue
        module = e.key.rsplit(".", 1)[0]
        m = re.search(r"/blocks_(\d+)/", e.tf_name)
        stage = f"{scope}/blocks_{m.group(1)}" if m else f"{scope}/stem" if "/stem/" in e.tf_name else None
        if stage is not None:
            if stage not in stages:
                stages[stage], _ = [], order.append(stage)
            if module not in stages[stage]:
                stages[stage].append(module)
        if e.kind in (BN, BN_TRACKED) and e.tf_name.endswith("/gamma"):
            layer = e.tf_name[:-len("/gamma")]
            plan.append((layer, BN_IN, module, "in"))
            plan.append((layer, BN_OUT, module, "bn_out"))
        if is_classifier(e) and e.tf_name.endswith("/kernel"):
            plan.append((f"{scope}/head/pooled", STAGE, module, "in"))
    for stage in order:
        mods = stages[stage]
        parent = _parent(mods)
        if parent and parent not in ("blocks", "efficientnet"):
            plan.append((stage, STAGE, parent, "out"))
        else:  # no module of its own (timm's stem: its BatchNormAct2d; efficientnet_pytorch's: a bare BN, skipped)
            plan.append((stage, STAGE, mods[-1], "stage_bn"))
    return [(f"t{i}", name, kind, module, how) for i, (name, kind, module, how) in enumerate(plan)]


def libs_python(explicit: Optional[str], library: str) -> str:
    """The interpreter that runs the library: ``--libs-python``, $EFFNET_LIBS_PYTHON, else this one
    when it has the library (ConversionError naming what to do otherwise)."""
    exe = explicit or os.environ.get(LIBS_ENV)
    if exe:
        if not os.access(exe, os.X_OK):
            raise ConversionError(f"--libs-python {exe}: not an executable interpreter")
        return exe
    import importlib.util

    if importlib.util.find_spec(library) is None:
        raise ConversionError(f"the audit of this layout runs {library}'s own model: install {library} here, or name "
                              f"an interpreter that has it with --libs-python (or ${LIBS_ENV})")
    return sys.executable


def run_driver(python: str, job: Dict[str, object], arrays: Dict[str, np.ndarray]) -> Tuple[Dict, Dict]:
    """(info, arrays) of one run of converter/audit/driver.py in ``python``."""
    with tempfile.TemporaryDirectory(prefix="effnet-audit-") as tmp:
        inputs, out, job_file = Path(tmp) / "in.npz", Path(tmp) / "out.npz", Path(tmp) / "job.json"
        np.savez(inputs, **{k: np.ascontiguousarray(v.transpose(0, 3, 1, 2)) for k, v in arrays.items()})
        job_file.write_text(json.dumps(dict(job, inputs=str(inputs), out=str(out))))
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        env["CUDA_VISIBLE_DEVICES"] = env.get("CUDA_VISIBLE_DEVICES", "")
        proc = subprocess.run([python, str(DRIVER), str(job_file)], capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            lines = [l for l in proc.stderr.strip().splitlines() if l.strip()]
            raise ConversionError(f"the library's model could not be built or run with the file: "
                                  f"{lines[-1] if lines else f'exit status {proc.returncode}'}")
        info = json.loads(proc.stdout.strip().splitlines()[-1])
        with np.load(out) as z:
            return info, {k: z[k] for k in z.files}


_WRITE = """
import sys
import numpy as np
from converter.tfref.generate import write_checkpoint
with np.load(sys.argv[1]) as z:
    write_checkpoint(sys.argv[2], [(n, z[n]) for n in z.files])
"""


def write_tf_checkpoint(arrays: Dict[str, np.ndarray], folder: Path) -> str:
    """``arrays`` (official names) as a TensorFlow checkpoint in ``folder`` (TensorFlow's SaveV2, in its
    own process); returns the prefix."""
    from ..verify import _tf_env, require_tensorflow

    require_tensorflow()
    npz, prefix = Path(folder) / "weights.npz", Path(folder) / "file.ckpt"
    np.savez(npz, **arrays)
    proc = subprocess.run([sys.executable, "-c", _WRITE, str(npz), str(prefix)], capture_output=True, text=True,
                          env=_tf_env("cpu"))
    npz.unlink()
    if proc.returncode != 0:
        lines = [l for l in proc.stderr.strip().splitlines() if l.strip()]
        raise ConversionError(f"writing the file's weights as a TensorFlow checkpoint failed: {lines[-1] if lines else ''}")
    return str(prefix)


def native_run(model, plan, arrays: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """The taps of converter.model itself (``--layout native``), in this process (no library)."""
    import torch

    from . import driver

    out = {}
    model.eval()
    for iname, x in arrays.items():
        got = {}
        handles, _ = driver._hooks(model, [(t, m, h) for t, _, _, m, h in plan], lambda t, a: got.__setitem__(t, a))
        try:
            with torch.inference_mode():
                y = model(torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))))
        finally:
            for h in handles:
                h.remove()
        out[f"base/{iname}/logits"] = y.numpy()
        out.update({f"base/{iname}/{t}": a for t, a in got.items()})
    return out


def layer_modules(entries: Sequence[Entry]) -> Dict[str, str]:
    """Official layer -> the library module that holds it (from the table)."""
    return {e.tf_name.rsplit("/", 1)[0]: e.key.rsplit(".", 1)[0] for e in entries if e.tf_name}


def _conv_of(tensors: Sequence[str]) -> List[str]:
    """The conv layer(s) feeding a BN, from the variables created since the previous BN (as verify --trace)."""
    if not tensors:
        return []
    leaf = tensors[-1].rsplit("/", 1)[-1]
    return list(dict.fromkeys(t.rsplit("/", 1)[0] for t in tensors if t.rsplit("/", 1)[-1] == leaf and "/se/" not in t))


def compare(tf_taps: Sequence[Dict[str, object]], plan, got: Dict[str, np.ndarray], prefix: str,
            max_rel_error: float = MAX_REL_ERROR, modules: Optional[Dict[str, str]] = None) -> Dict[str, object]:
    """Rows in the TF pass's order (official name, kind, library module, rel error, tolerance, ok) and the
    first diverging one; ``got``: the library's arrays under ``{prefix}/{tap id}``. A BN's input stands for
    the conv feeding it: named by that conv's official layer and (``modules``) its library module."""
    by_name = {(name, kind): (tid, module) for tid, name, kind, module, _ in plan}
    how_of = {name: how for _, name, kind, _, how in plan if kind == STAGE}
    modules = modules or {}
    rows, first = [], None
    for t in tf_taps:
        name, kind = t["name"], t["kind"]
        if kind == LOGITS:
            tid, module = "logits", "(output)"
        elif (name, kind) in by_name:
            tid, module = by_name[(name, kind)]
        else:
            continue
        arr = got.get(f"{prefix}/{tid}")
        ref = np.asarray(t["array"])
        tol = max(NOISE_FACTOR * float(t["noise"]), FLOOR)
        if kind == LOGITS:
            tol = max(tol, max_rel_error)
        note = ""
        if arr is None and kind == STAGE and how_of.get(name) == "stage_bn":
            continue  # a stage without a module of its own that outputs it: its convs and BNs are compared
        if arr is None:
            rel, note = float("inf"), "the library's model never ran this module"
        else:
            arr = np.asarray(arr)[:ref.shape[0]]
            if kind == LOGITS and arr.shape != ref.shape and arr.shape[-1] == ref.shape[-1] - 1:
                ref = ref[:, 1:]  # the file's classifier dropped the background class
            rel = rel_error(arr, ref) if arr.shape == ref.shape else float("inf")
            if arr.shape != ref.shape:
                note = f"shapes differ: TensorFlow {list(ref.shape)}, library {list(arr.shape)}"
                if kind == LOGITS and arr.shape[0] == ref.shape[0]:  # a head of its own (fine-tuned): the weights say so
                    rel, note = 0.0, (f"not compared: the file's classifier has {arr.shape[-1]} classes, the "
                                      f"checkpoint's {ref.shape[-1]} (see the weights)")
        if kind == BN_IN:  # the conv feeding the BN
            convs = _conv_of(t.get("tensors") or [])
            if convs:
                name = " + ".join(convs)
                module = " + ".join(modules.get(c, "?") for c in convs)
        row = dict(official=name, kind="conv" if kind == BN_IN else "batch norm" if kind == BN_OUT else kind,
                   module=module, rel_error=rel, tolerance=tol, ok=bool(rel <= tol),
                   stage=name if kind == STAGE else "logits", note=note)
        rows.append(row)
        if first is None and not row["ok"]:
            first = row
    nxt = "head"  # a BN tap belongs to the stage whose output comes next (the head's: the pooled features)
    for row in reversed(rows):
        if row["kind"] == STAGE:
            nxt = row["official"] if not row["official"].endswith("/head/pooled") else row["official"].rsplit("/", 1)[0]
        elif row["kind"] != LOGITS:
            row["stage"] = nxt
    return {"rows": rows, "first": first, "exact": first is None}


def diagnose(spec, runs: Dict[str, Dict[str, object]], info: Dict[str, object]) -> List[Dict[str, object]]:
    """What the divergence of the library's model is (the reference holds the file's own weights: the
    weights are question 1), where recognisable: [{cause, evidence, confirmed}]."""
    base = runs["base"]
    if base["exact"]:
        return []
    out = []
    first = base["first"]
    desc = info.get("model", {}) if info else {}
    fixed = {k for k, v in runs.items() if k != "base" and v["exact"]}
    # the smallest set of official settings that makes the library's model exact
    cure = next((VARIANTS[k] for k in ("same", "eps", "act", "same+eps") if k in fixed), None)
    eps_set = {float(k) for k in desc.get("bn_eps", {})}
    convs = desc.get("strided_convs", {})
    symmetric = {p: c for p, c in convs.items() if isinstance(c["padding"], list) and any(c["padding"])}
    strided_first = _is_strided(spec, first)
    together = " (together with the official BN epsilon)" if cure == ["same", "eps"] else ""
    if (cure and "same" in cure) or (symmetric and strided_first):
        shown = ", ".join(f"{p} (k{c['kernel'][0]} s{c['stride'][0]} padding {c['padding'][0]})"
                          for p, c in list(symmetric.items())[:3])
        where = (f"the first divergence is the strided conv {first['official']} (module {first['module']})"
                 if strided_first else f"the first divergence is at {first['official']}")
        out.append({"cause": "padding", "confirmed": bool(cure and "same" in cure),
                    "evidence": f"{where}; the library pads its strided convs symmetrically"
                                f"{' (' + shown + ')' if shown else ''} where TF 'SAME' pads the bottom/right more"
                                + (f"; with TF 'SAME' padding{together} the library's model computes the official "
                                   "logits" if cure and "same" in cure else "")})
    if (cure and "eps" in cure) or (eps_set and eps_set != {float(spec.bn_eps)}):
        out.append({"cause": "bn_epsilon", "confirmed": bool(cure and "eps" in cure),
                    "evidence": f"the library's batch norms use eps {', '.join(f'{e:g}' for e in sorted(eps_set))} "
                                f"where the official model uses {spec.bn_eps:g}"
                                + (f"; with the official epsilon{' (and TF SAME padding)' if together else ''} the "
                                   "library's model computes the official logits" if cure and "eps" in cure else "")})
    acts = set(desc.get("activations", {}))
    want = set(ACTIVATIONS.get(spec.activation, ()))
    if (cure and "act" in cure) or (acts and want and not acts & want):
        out.append({"cause": "activation", "confirmed": bool(cure and "act" in cure),
                    "evidence": f"the library's model uses {', '.join(sorted(acts)) or 'other activations'} where the "
                                f"official model uses {spec.activation}"
                                + ("; with the official activation it computes the official logits"
                                   if cure and "act" in cure else "")})
    if getattr(spec, "family", "") and any(getattr(b, "experts", 0) for b in spec.blocks()) and not out:
        out.append({"cause": "routing", "confirmed": False,
                    "evidence": "a CondConv model diverges with exact weights: its routing (sigmoid of the pooled "
                                "input's dense) or its per-example kernels compute differently"})
    if not out:
        out.append({"cause": "unrecognised", "confirmed": False,
                    "evidence": f"first divergence at {first['official']} ({first['kind']}, module {first['module']})"})
    return out


def _is_strided(spec, row) -> bool:
    """Whether a diverging tap is the output of a strided conv (a BN's input: the conv feeding it)."""
    from ..registry import kind_of

    if row["kind"] != "conv":
        return False
    stage = row.get("stage", "")
    if stage.endswith("/stem"):
        return True
    m = re.search(r"/blocks_(\d+)$", stage)
    if not m:
        return False
    block = spec.blocks()[int(m.group(1))]
    conv = row["official"].split(" + ")[0].rsplit("/", 1)[-1]
    if "depthwise" in conv:
        return block.stride > 1
    fused = "fused" in kind_of(block).name
    return block.stride > 1 and fused and conv == "conv2d"
