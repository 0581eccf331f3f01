"""Run the real timm / mmpretrain on converted files; run with the libs venv's python (EFFNET_LIBS_PYTHON).

This process must never import TensorFlow (torchvision segfaults after it), so it imports
nothing of the test suite and only reads the files it is given. Prints one JSON object.

    libs_check.py keys VARIANT...
        {"timm": {variant: [[key, shape], ...]}, "mmpretrain": {...}}: the state_dict keys and
        shapes of timm.create_model("tf_efficientnet_*") and mmpretrain.get_model(zoo name),
        built on the meta device (no weights allocated)
    libs_check.py logits --jobs JOBS.json --inputs X.npz --out Y.npz
        JOBS.json: [{"library": "timm"|"mmpretrain"|"mmpretrain-get_model", "model": NAME,
        "num_classes": N, "file": PATH}, ...]; each job loads its file strictly into a fresh
        model NAME (timm model name or mmpretrain zoo name; mmpretrain .pth files through
        mmengine.runner.load_checkpoint(strict=True); "mmpretrain-get_model" through
        get_model(NAME, pretrained=PATH)), runs it on X.npz["x"] and saves the logits as
        Y.npz[str(index)]; a job that fails reports {"ok": false, "error": ...}
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
import warnings

import numpy as np
import torch

warnings.filterwarnings("ignore")

# our variant -> timm model / an mmpretrain zoo name with that arch (any flavor: same model)
TIMM = {**{f"b{n}": f"tf_efficientnet_b{n}" for n in range(9)}, "l2": "tf_efficientnet_l2",
        "l2-475": "tf_efficientnet_l2"}
MMPRETRAIN_ARCH = {**{f"b{n}": f"b{n}" for n in range(9)}, "l2": "l2", "l2-475": "l2"}


@contextlib.contextmanager
def _params_on_meta():
    """Every nn.Parameter registered inside goes to the meta device (keys and shapes only)."""
    orig = torch.nn.Module.register_parameter

    def register(self, name, param):
        if param is not None and param.device.type != "meta":
            param = torch.nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
        orig(self, name, param)

    torch.nn.Module.register_parameter = register
    try:
        yield
    finally:
        torch.nn.Module.register_parameter = orig


def _mm_zoo_name(arch: str) -> str:
    from mmpretrain import list_models

    names = sorted(list_models(f"efficientnet-{arch}_*"))
    if not names:
        raise SystemExit(f"mmpretrain has no zoo model for arch {arch}")
    return names[0]


def keys(variants):
    import timm
    from mmpretrain import get_model

    out = {"timm": {}, "mmpretrain": {}}
    seen = {}  # model name -> its list (l2 and l2-475 are one model)
    for v in variants:
        if TIMM[v] not in seen:
            with torch.device("meta"):
                m = timm.create_model(TIMM[v], pretrained=False)
            seen[TIMM[v]] = [[k, list(t.shape)] for k, t in m.state_dict().items()]
        out["timm"][v] = seen[TIMM[v]]
        name = _mm_zoo_name(MMPRETRAIN_ARCH[v])
        if name not in seen:
            with _params_on_meta():
                m = get_model(name, pretrained=False)
            seen[name] = [[k, list(t.shape)] for k, t in m.state_dict().items()]
        out["mmpretrain"][v] = seen[name]
    return out


def _timm_model(name, num_classes, path):
    """timm model ``name`` with the file's weights, loaded strictly.

    Built on the meta device and filled with ``assign=True`` (no random init of the large
    models); strict loading still refuses any missing/unexpected key or shape mismatch.
    """
    import timm
    from safetensors.torch import load_file

    with torch.device("meta"):
        model = timm.create_model(name, pretrained=False, num_classes=num_classes)
    sd = load_file(path) if path.endswith(".safetensors") else torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(sd, strict=True, assign=True)
    left = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.device.type == "meta"]
    if left:
        raise RuntimeError(f"tensors not loaded: {left[:5]}")
    return model, {}


def _mm_model(name, num_classes, path):
    """mmpretrain zoo model ``name`` with the file's weights, loaded strictly.

    safetensors: load_state_dict(strict=True); .pth: mmengine.runner.load_checkpoint(strict=True),
    the reader of get_model(name, pretrained=path).
    """
    from mmpretrain import get_model

    kw = {} if num_classes == 1000 else {"head": dict(num_classes=num_classes)}
    model = get_model(name, pretrained=False, **kw)
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        model.load_state_dict(load_file(path), strict=True)
        return model, {}
    from mmengine.runner import load_checkpoint

    ckpt = load_checkpoint(model, path, map_location="cpu", strict=True)
    return model, {"top_keys": sorted(ckpt), "meta_layout": ckpt.get("meta", {}).get("layout")}


def _mm_get_model(name, num_classes, path):
    """What mmpretrain's users call: get_model(name, pretrained=path) (non-strict there: checked by logits)."""
    from mmpretrain import get_model

    kw = {} if num_classes == 1000 else {"head": dict(num_classes=num_classes)}
    return get_model(name, pretrained=path, **kw), {}


BUILDERS = {"timm": _timm_model, "mmpretrain": _mm_model, "mmpretrain-get_model": _mm_get_model}


def run(jobs_file, inputs, out):
    """Run every job of ``jobs_file`` (a JSON list of {library, model, num_classes, file}) on inputs["x"].

    Logits go to ``out`` under the job's index; a job that fails (a strict load refusing the
    file) reports its error instead and the others still run.
    """
    x = torch.from_numpy(np.load(inputs)["x"])
    results, logits = [], {}
    for i, job in enumerate(json.load(open(jobs_file))):
        try:
            model, info = BUILDERS[job["library"]](job["model"], int(job.get("num_classes", 1000)), job["file"])
            model.eval()
            with torch.no_grad():
                y = model(x, mode="tensor") if job["library"].startswith("mmpretrain") else model(x)
            logits[str(i)] = y.numpy()
            results.append({"ok": True, **info})
        except Exception as e:  # reported to the test, which decides
            results.append({"ok": False, "error": f"{type(e).__name__}: {e}"})
    np.savez(out, **logits)
    return {"results": results, "torch": torch.__version__}


def main(argv=None):
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    k = sub.add_parser("keys")
    k.add_argument("variants", nargs="+")
    g = sub.add_parser("logits")
    g.add_argument("--jobs", required=True)
    g.add_argument("--inputs", required=True)
    g.add_argument("--out", required=True)
    args = p.parse_args(argv)
    out = keys(args.variants) if args.cmd == "keys" else run(args.jobs, args.inputs, args.out)
    sys.stdout.write(json.dumps(out) + "\n")


if __name__ == "__main__":
    main()
