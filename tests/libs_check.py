"""Run the real timm / mmpretrain on converted files; run with the libs venv's python (EFFNET_LIBS_PYTHON).

This process must never import TensorFlow (torchvision segfaults after it), so it imports
nothing of the test suite and only reads the files it is given. Prints one JSON object.

    libs_check.py keys VARIANT...
        {"timm": {variant: [[key, shape], ...]}, "mmpretrain": {...}}: the state_dict keys and
        shapes of timm.create_model("tf_efficientnet_*") and mmpretrain.get_model(zoo name),
        built on the meta device (no weights allocated); a variant a library has no model for
        is left out of that library's dict; "efficientnet_pytorch": EfficientNet.from_name(name)
    libs_check.py logits --jobs JOBS.json --inputs X.npz --out Y.npz
        JOBS.json: [{"library": "timm"|"mmpretrain"|"mmpretrain-get_model", "model": NAME,
        "num_classes": N, "file": PATH[, "inputs": X2.npz]}, ...]; each job loads its file strictly into a fresh
        model NAME (timm model name or mmpretrain zoo name; mmpretrain .pth files through
        mmengine.runner.load_checkpoint(strict=True); "mmpretrain-get_model" through
        get_model(NAME, pretrained=PATH)), runs it on X.npz["x"] (or its own inputs) and saves the logits as
        Y.npz[str(index)]; a job that fails reports {"ok": false, "error": ...}
        "efficientnet_pytorch": EfficientNet.from_name(NAME, num_classes=N, **job["kwargs"]) (image_size=...),
        loaded with load_state_dict(strict=True)
        "transformers": FILE is a --layout transformers folder, loaded by
        EfficientNetForImageClassification.from_pretrained (refused unless its loading info is empty)
    libs_check.py hf-keys DIR...
        {DIR: [[key, shape], ...]}: the state_dict of EfficientNetForImageClassification built from
        DIR/config.json on the meta device
    libs_check.py hf-processor --folders DIR... --images IMG... --out Y.npz
        AutoImageProcessor.from_pretrained(DIR) and EfficientNetImageProcessorPil.from_pretrained(DIR)
        on the image files (opened with PIL, RGB); pixel_values of folder k, image i as
        Y.npz["k/auto/i"] and Y.npz["k/pil/i"]; prints the classes AutoImageProcessor chose
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
        "l2-475": "tf_efficientnet_l2",
        **{f"lite{n}": f"tf_efficientnet_lite{n}" for n in range(5)},
        "edgetpu-s": "tf_efficientnet_es", "edgetpu-m": "tf_efficientnet_em", "edgetpu-l": "tf_efficientnet_el",
        "condconv-b0-4e": "tf_efficientnet_cc_b0_4e", "condconv-b0-8e": "tf_efficientnet_cc_b0_8e",
        "condconv-b0-8e-depth": "tf_efficientnet_cc_b1_8e",
        **{f"v2-{n}": f"tf_efficientnetv2_{n}" for n in ("b0", "b1", "b2", "b3", "s", "m", "l", "xl")},
        "mixnet-s": "tf_mixnet_s", "mixnet-m": "tf_mixnet_m", "mixnet-l": "tf_mixnet_l",
        "mnasnet-a1": "semnasnet_100", "mnasnet-a1_d1.4": "semnasnet_140", "mnasnet-a1_d0.75": "semnasnet_075",
        "mnasnet-a1_d0.5": "semnasnet_050"}
# timm models that equal the official ones only when built like this (TF 'SAME' padding, BN eps 1e-3)
TIMM_KWARGS = {m: {"pad_type": "same", "bn_eps": 1e-3}
               for m in ("semnasnet_050", "semnasnet_075", "semnasnet_100", "semnasnet_140")}
MMPRETRAIN_ARCH = {**{f"b{n}": f"b{n}" for n in range(9)}, "l2": "l2", "l2-475": "l2",
                   "edgetpu-s": "es", "edgetpu-m": "em", "edgetpu-l": "el",
                   **{f"v2-{n}": f"v2-{n}" for n in ("b0", "b1", "b2", "b3", "s", "m", "l", "xl")}}
# our variant -> efficientnet_pytorch's model name (its VALID_MODELS)
EFFICIENTNET_PYTORCH = {**{f"b{n}": f"efficientnet-b{n}" for n in range(9)}, "l2": "efficientnet-l2",
                        "l2-475": "efficientnet-l2"}
# the official EdgeTPU checkpoints classify 1001 classes (index 0: background; family.csv)
CLASSES = {"edgetpu-s": 1001, "edgetpu-m": 1001, "edgetpu-l": 1001}


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


# mmpretrain archs without a zoo model: the model of its config
# configs/_base_/models/efficientnet_es.py / _em.py (el by analogy; its head is 1280 * 1.2 wide)
MM_CONFIG_ONLY = {"es": 1280, "em": 1280, "el": 1536}


def _mm_zoo_name(arch: str):
    """A model mmpretrain.get_model builds for ``arch``: a zoo name, or (EdgeTPU) a Config like its config files."""
    if arch in MM_CONFIG_ONLY:
        from mmengine.config import Config

        return Config(dict(model=dict(
            type="ImageClassifier",
            backbone=dict(type="EfficientNet", arch=arch, act_cfg=dict(type="ReLU")),
            neck=dict(type="GlobalAveragePooling"),
            head=dict(type="LinearClsHead", num_classes=1000, in_channels=MM_CONFIG_ONLY[arch],
                      loss=dict(type="CrossEntropyLoss", loss_weight=1.0), topk=(1, 5)))))
    from mmpretrain import list_models

    # EfficientNetV2 archs (v2-s...): its zoo names are efficientnetv2-s_*
    names = sorted(list_models(f"efficientnetv2-{arch[3:]}_*" if arch.startswith("v2-") else f"efficientnet-{arch}_*"),
                   key=lambda n: (arch.startswith("v2-") and not n.endswith("in1k"), n))  # V2: a 1000-class model first
    if not names:
        raise SystemExit(f"mmpretrain has no zoo model for arch {arch}")
    return names[0]


def keys(variants):
    import timm
    from efficientnet_pytorch import EfficientNet
    from mmpretrain import get_model

    out = {"timm": {}, "mmpretrain": {}, "efficientnet_pytorch": {}}
    seen = {}  # model name -> its list (l2 and l2-475 are one model)
    for v in variants:
        classes = CLASSES.get(v, 1000)
        if v in TIMM:
            if (TIMM[v], classes) not in seen:
                with torch.device("meta"):
                    m = timm.create_model(TIMM[v], pretrained=False, num_classes=classes,
                                          **TIMM_KWARGS.get(TIMM[v], {}))
                seen[TIMM[v], classes] = [[k, list(t.shape)] for k, t in m.state_dict().items()]
            out["timm"][v] = seen[TIMM[v], classes]
        if v in MMPRETRAIN_ARCH:
            name = _mm_zoo_name(MMPRETRAIN_ARCH[v])
            key = (MMPRETRAIN_ARCH[v], classes)
            if key not in seen:
                kw = {} if classes == 1000 else {"head": dict(num_classes=classes)}
                with _params_on_meta():
                    m = get_model(name, pretrained=False, **kw)
                seen[key] = [[k, list(t.shape)] for k, t in m.state_dict().items()]
            out["mmpretrain"][v] = seen[key]
        if v in EFFICIENTNET_PYTORCH:
            key = (EFFICIENTNET_PYTORCH[v], classes)
            if key not in seen:
                with torch.device("meta"):
                    m = EfficientNet.from_name(key[0], num_classes=classes)
                seen[key] = [[k, list(t.shape)] for k, t in m.state_dict().items()]
            out["efficientnet_pytorch"][v] = seen[key]
    return out


def _timm_model(name, num_classes, path):
    """timm model ``name`` with the file's weights, loaded strictly.

    Built on the meta device and filled with ``assign=True`` (no random init of the large
    models); strict loading still refuses any missing/unexpected key or shape mismatch.
    """
    import timm
    from safetensors.torch import load_file

    with torch.device("meta"):
        model = timm.create_model(name, pretrained=False, num_classes=num_classes, **TIMM_KWARGS.get(name, {}))
    sd = load_file(path) if path.endswith(".safetensors") else torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(sd, strict=True, assign=True)
    left = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.device.type == "meta"]
    if left:
        raise RuntimeError(f"tensors not loaded: {left[:5]}")
    return model, {}


def _ep_model(name, num_classes, path, **kwargs):
    """efficientnet_pytorch's EfficientNet.from_name(name, num_classes=..., **kwargs) (image_size=: its
    static 'SAME' pads) with the file's weights, loaded strictly (built on the meta device, as timm's)."""
    from efficientnet_pytorch import EfficientNet
    from safetensors.torch import load_file

    with torch.device("meta"):
        model = EfficientNet.from_name(name, num_classes=num_classes, **kwargs)
    sd = load_file(path) if path.endswith(".safetensors") else torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(sd, strict=True, assign=True)
    left = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.device.type == "meta"]
    if left:
        raise RuntimeError(f"tensors not loaded: {left[:5]}")
    return model, {"image_size": model._global_params.image_size}


def _mm_name(name):
    """A zoo name, or ``arch:ARCH`` for the model of mmpretrain's config of that arch (EdgeTPU)."""
    return _mm_zoo_name(name[5:]) if name.startswith("arch:") else name


def _mm_model(name, num_classes, path):
    """mmpretrain zoo model ``name`` (or ``arch:ARCH``) with the file's weights, loaded strictly.

    safetensors: load_state_dict(strict=True); .pth: mmengine.runner.load_checkpoint(strict=True),
    the reader of get_model(name, pretrained=path).
    """
    from mmpretrain import get_model

    kw = {} if num_classes == 1000 else {"head": dict(num_classes=num_classes)}
    model = get_model(_mm_name(name), pretrained=False, **kw)
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
    return get_model(_mm_name(name), pretrained=path, **kw), {}


def _hf_model(name, num_classes, path):
    """transformers' model ``name`` from the folder ``path`` (from_pretrained), loaded without any
    missing, unexpected or mismatched key."""
    import transformers

    cls = getattr(transformers, name)
    model, loading = cls.from_pretrained(path, output_loading_info=True)
    problems = {k: sorted(map(str, v)) for k, v in loading.items() if v}
    if problems:
        raise RuntimeError(f"from_pretrained({path}): {problems}")
    if model.config.num_labels != num_classes:
        raise RuntimeError(f"{model.config.num_labels} labels, expected {num_classes}")
    c = model.config
    return model, {"id2label_0": c.id2label[0], "num_labels": c.num_labels,
                   "depthwise_padding": list(c.depthwise_padding), "image_size": c.image_size,
                   "effnet_convert": getattr(c, "effnet_convert", None), "transformers": transformers.__version__}


def hf_keys(dirs):
    """{dir: [[key, shape], ...]} of EfficientNetForImageClassification built from dir/config.json."""
    from transformers import EfficientNetConfig, EfficientNetForImageClassification

    out = {}
    for d in dirs:
        with torch.device("meta"):
            m = EfficientNetForImageClassification(EfficientNetConfig.from_pretrained(d))
        out[d] = [[k, list(t.shape)] for k, t in m.state_dict().items()]
    return out


def hf_processor(folders, images, out):
    """pixel_values of each image file through each folder's image processor, both backends."""
    from PIL import Image
    from transformers import AutoImageProcessor, EfficientNetImageProcessorPil

    rgb = []
    for f in images:
        with Image.open(f) as im:
            rgb.append(im.convert("RGB"))
    arrays, classes = {}, []
    for k, folder in enumerate(folders):
        procs = {"auto": AutoImageProcessor.from_pretrained(folder),
                 "pil": EfficientNetImageProcessorPil.from_pretrained(folder)}
        classes.append(type(procs["auto"]).__name__)
        for name, proc in procs.items():
            for i, im in enumerate(rgb):
                arrays[f"{k}/{name}/{i}"] = proc(im, return_tensors="np")["pixel_values"][0]
    np.savez(out, **arrays)
    return {"classes": classes}


BUILDERS = {"timm": _timm_model, "mmpretrain": _mm_model, "mmpretrain-get_model": _mm_get_model,
            "transformers": _hf_model, "efficientnet_pytorch": _ep_model}


def run(jobs_file, inputs, out):
    """Run every job of ``jobs_file`` (a JSON list of {library, model, num_classes, file}) on inputs["x"].

    Logits go to ``out`` under the job's index; a job that fails (a strict load refusing the
    file) reports its error instead and the others still run.
    """
    x_default = torch.from_numpy(np.load(inputs)["x"])
    results, logits = [], {}
    for i, job in enumerate(json.load(open(jobs_file))):
        x = torch.from_numpy(np.load(job["inputs"])["x"]) if job.get("inputs") else x_default
        try:
            model, info = BUILDERS[job["library"]](job["model"], int(job.get("num_classes", 1000)), job["file"],
                                                   **job.get("kwargs", {}))
            model.eval()
            with torch.no_grad():
                y = model(x, mode="tensor") if job["library"].startswith("mmpretrain") else model(x)
                y = getattr(y, "logits", y)  # transformers: an ImageClassifierOutput
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
    h = sub.add_parser("hf-keys")
    h.add_argument("dirs", nargs="+")
    hp = sub.add_parser("hf-processor")
    hp.add_argument("--folders", nargs="+", required=True)
    hp.add_argument("--images", nargs="+", required=True)
    hp.add_argument("--out", required=True)
    args = p.parse_args(argv)
    if args.cmd == "hf-keys":
        out = hf_keys(args.dirs)
    elif args.cmd == "hf-processor":
        out = hf_processor(args.folders, args.images, args.out)
    else:
        out = keys(args.variants) if args.cmd == "keys" else run(args.jobs, args.inputs, args.out)
    sys.stdout.write(json.dumps(out) + "\n")


if __name__ == "__main__":
    main()
