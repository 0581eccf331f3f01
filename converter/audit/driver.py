"""The library side of ``convert-effnet audit``: run in the library's environment, never with TensorFlow.

    python driver.py JOB.json

Executed as a script (no import of the converter package: the library's interpreter need not have
it; torchvision and TensorFlow in one process segfault). JOB.json:

    {"library": "timm"|"mmpretrain"|"transformers", "model": NAME, "num_classes": N, "file": PATH,
     "inputs": X.npz (arrays NCHW float32, one per input set), "taps": [[id, module path, how], ...],
     "variants": {"base": [], "same": ["same"], "eps": ["eps"], ...}, "bn_eps": 0.001,
     "images": [FILE, ...], "pretrained_cfg": {...} or null, "out": Y.npz}

It builds the library's own model (timm.create_model, mmpretrain.get_model, transformers
from_pretrained), loads FILE's tensors into it (non-strict: what is missing or unexpected is
reported), and for every model variant (``same``: every strided conv padded as TF 'SAME';
``eps``: every BN's epsilon set to ``bn_eps``; ``act``: every activation module the official ``activation``) runs every input set, recording the module outputs
the taps name (``out``: the module's output, ``in``: its input, ``bn_out``: a BN's own output,
before an activation timm's BatchNormAct2d applies). It also runs the library's declared
preprocessing on the image files. Writes Y.npz (``{variant}/{input}/{tap id}``, ``pre/{i}``) and
prints one JSON line: the load report, the declared preprocessing, the BN epsilons, activation
classes and the strided convs' padding.
"""
from __future__ import annotations

import json
import sys
import warnings

import numpy as np

warnings.filterwarnings("ignore")

WRAPPERS = ("state_dict", "model", "model_state_dict", "module")


def _state_dict(path):
    import os

    import torch

    if os.path.isdir(path):
        for name in ("model.safetensors", "pytorch_model.bin", "model.pth"):
            if os.path.isfile(os.path.join(path, name)):
                path = os.path.join(path, name)
                break
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path)
    sd = torch.load(path, map_location="cpu", weights_only=True)
    for key in WRAPPERS:
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
            break
    if all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd


def _load(model, sd):
    res = model.load_state_dict(sd, strict=False)
    return {"missing": sorted(res.missing_keys), "unexpected": sorted(res.unexpected_keys)}


def build(job):
    """(model, load report, declared preprocessing, preprocess(files) -> NCHW array, forward(model, x) -> logits)."""
    import torch

    lib, name, n = job["library"], job["model"], int(job.get("num_classes", 1000))
    if lib == "timm":
        import timm
        from timm.data import create_transform, resolve_data_config

        model = timm.create_model(name, pretrained=False, num_classes=n, **job.get("kwargs", {}))
        report = _load(model, _state_dict(job["file"]))
        cfg = dict(model.pretrained_cfg or {})
        cfg.update(job.get("pretrained_cfg") or {})
        model.pretrained_cfg = cfg
        data = resolve_data_config({}, model=model)
        declared = {"source": "timm pretrained_cfg", "pretrained_cfg": {k: cfg.get(k) for k in (
            "input_size", "crop_pct", "crop_mode", "interpolation", "mean", "std")}, "data_config": data}
        transform = create_transform(**data)

        def pre(files):
            from PIL import Image

            out = []
            for f in files:
                with Image.open(f) as im:
                    out.append(transform(im.convert("RGB")).numpy())
            return np.stack(out)
        return model, report, declared, pre, lambda m, x: m(x)
    if lib == "mmpretrain":
        from mmpretrain import get_model

        kw = {} if n == 1000 else {"head": dict(num_classes=n)}
        if name.startswith("arch:"):  # an arch without a zoo model (EdgeTPU es/em/el): its config file's model
            from mmengine.config import Config

            arch, head = name[5:].split(":")
            name = Config(dict(model=dict(
                type="ImageClassifier", backbone=dict(type="EfficientNet", arch=arch, act_cfg=dict(type="ReLU")),
                neck=dict(type="GlobalAveragePooling"),
                head=dict(type="LinearClsHead", num_classes=1000, in_channels=int(head),
                          loss=dict(type="CrossEntropyLoss", loss_weight=1.0), topk=(1, 5)))))
        model = get_model(name, pretrained=False, **kw)
        report = _load(model, _state_dict(job["file"]))
        config = model._config
        dp = dict(config.model.get("data_preprocessor") or config.get("data_preprocessor") or {})
        test = config.get("test_dataloader") or {}
        pipeline = list(config.get("test_pipeline") or test.get("dataset", {}).get("pipeline") or [])
        declared = {"source": "mmpretrain data_preprocessor / test pipeline",
                    "data_preprocessor": {k: dp.get(k) for k in ("mean", "std", "to_rgb")},
                    "pipeline": [dict(p) for p in pipeline]}

        def pre(files):
            import mmpretrain.datasets  # noqa: F401 (registers its transforms)
            from mmpretrain.registry import TRANSFORMS

            steps = [TRANSFORMS.build(dict(p)) for p in pipeline]
            out = []
            for f in files:
                data = dict(img_path=str(f))
                for step in steps:
                    data = step(data)
                batch = model.data_preprocessor({"inputs": [data["inputs"]], "data_samples": [data["data_samples"]]},
                                                False)
                out.append(batch["inputs"][0].float().numpy())
            return np.stack(out)
        return model, report, declared, pre, lambda m, x: m(x, mode="tensor")
    if lib == "transformers":
        import transformers
        from transformers import AutoImageProcessor

        cls = getattr(transformers, name)
        model, info = cls.from_pretrained(job["file"], output_loading_info=True)
        report = {"missing": sorted(map(str, info.get("missing_keys", []))),
                  "unexpected": sorted(map(str, info.get("unexpected_keys", []))),
                  "mismatched": sorted(map(str, info.get("mismatched_keys", [])))}
        try:
            proc = AutoImageProcessor.from_pretrained(job["file"])
        except Exception:  # a folder without preprocessor_config.json: nothing declared
            proc = None
        keys = ("do_resize", "size", "resample", "do_center_crop", "crop_size", "do_rescale", "rescale_factor",
                "rescale_offset", "do_normalize", "image_mean", "image_std", "include_top")
        declared = {"source": "transformers preprocessor_config.json",
                    "processor": None if proc is None else {k: _plain(getattr(proc, k, None)) for k in keys},
                    "class": type(proc).__name__}

        def pre(files):
            from PIL import Image

            out = []
            for f in files:
                with Image.open(f) as im:
                    out.append(np.asarray(proc(im.convert("RGB"), return_tensors="np")["pixel_values"][0]))
            return np.stack(out)
        return model, report, declared, pre, lambda m, x: m(x).logits
    if lib == "efficientnet_pytorch":
        from efficientnet_pytorch import EfficientNet

        # its 'SAME' pads are static, computed for image_size: the size of the check
        model = EfficientNet.from_name(name, num_classes=n, image_size=int(job.get("image_size") or 224))
        report = _load(model, _state_dict(job["file"]))
        declared = {"source": "efficientnet_pytorch (no preprocessing declared)"}

        def pre(files):
            raise RuntimeError("efficientnet_pytorch declares no preprocessing")
        return model, report, declared, pre, lambda m, x: m(x)
    raise SystemExit(f"unknown library {lib!r}")


def _plain(v):
    if hasattr(v, "__dataclass_fields__"):  # transformers' SizeDict
        v = {k: getattr(v, k) for k in v.__dataclass_fields__ if getattr(v, k) is not None}
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if hasattr(v, "value") and not isinstance(v, (int, float, str)):  # enums (PILImageResampling)
        return int(v.value)
    return v if isinstance(v, (int, float, str, bool, type(None))) else str(v)


def _same_pad(size, k, s, d):
    out = -(-size // s)
    total = max((out - 1) * s + (k - 1) * d + 1 - size, 0)
    return total // 2, total - total // 2


def _patch_same(model):
    """Every strided conv computed with TF 'SAME' padding: a conv with symmetric padding of its own
    pads like TF; a ZeroPad2d registered right before a strided conv pads as TF 'SAME' for it."""
    import torch.nn.functional as F
    from torch import nn

    patched = []

    def conv_same(m):
        def forward(x, m=m):
            kh, kw = m.kernel_size
            (t, b), (l, r) = (_same_pad(x.shape[-2], kh, m.stride[0], m.dilation[0]),
                              _same_pad(x.shape[-1], kw, m.stride[1], m.dilation[1]))
            return F.conv2d(F.pad(x, (l, r, t, b)), m.weight, m.bias, m.stride, 0, m.dilation, m.groups)
        m.forward = forward

    for parent_name, parent in model.named_modules():
        children = list(parent.named_children())
        for i, (name, m) in enumerate(children):
            if isinstance(m, nn.Conv2d) and max(m.stride) > 1 and isinstance(m.padding, tuple) and any(m.padding):
                conv_same(m)
                patched.append(f"{parent_name}.{name}".lstrip("."))
            elif isinstance(m, nn.ZeroPad2d) and i + 1 < len(children):
                conv = children[i + 1][1]
                if isinstance(conv, nn.Conv2d) and max(conv.stride) > 1:
                    def forward(x, conv=conv):
                        kh, kw = conv.kernel_size
                        (t, b), (l, r) = (_same_pad(x.shape[-2], kh, conv.stride[0], conv.dilation[0]),
                                          _same_pad(x.shape[-1], kw, conv.stride[1], conv.dilation[1]))
                        return F.pad(x, (l, r, t, b))
                    m.forward = forward
                    patched.append(f"{parent_name}.{name}".lstrip("."))
    return patched


def _patch_eps(model, eps):
    from torch import nn

    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eps = float(eps)


ACTIVATION_NAMES = ("SiLU", "Swish", "MemoryEfficientSwish", "SiLUActivation", "ReLU", "ReLU6", "Hardswish",
                    "HardSwish", "GELU", "Tanh", "ELU", "LeakyReLU", "Mish")  # not the SE gates (sigmoid)


def _is_activation(m):
    return type(m).__name__ in ACTIVATION_NAMES


def _patch_act(model, activation):
    """Every activation module replaced by the official one (``swish``, ``relu``, ``relu6``)."""
    from torch import nn

    make = {"swish": nn.SiLU, "relu": nn.ReLU, "relu6": nn.ReLU6}[activation]
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if _is_activation(child):
                setattr(parent, name, make())


def describe(model):
    """BN epsilons, activation classes, the strided convs and their padding."""
    from torch import nn

    eps, acts, convs = {}, {}, {}
    named = list(model.named_modules())
    for i, (path, m) in enumerate(named):
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            eps[repr(float(m.eps))] = eps.get(repr(float(m.eps)), 0) + 1
        elif _is_activation(m):
            acts[type(m).__name__] = acts.get(type(m).__name__, 0) + 1
        elif isinstance(m, nn.Conv2d) and max(m.stride) > 1:
            convs[path] = {"class": type(m).__name__, "kernel": list(m.kernel_size), "stride": list(m.stride),
                           "padding": m.padding if isinstance(m.padding, str) else list(m.padding)}
    for path, m in named:  # activation functions held as attributes (transformers' ACT2FN, timm's act_fn)
        fn = getattr(m, "act_fn", None) or getattr(m, "activation", None)
        if fn is not None and not isinstance(fn, nn.Module) and callable(fn):
            n = getattr(fn, "__name__", type(fn).__name__)
            acts[n] = acts.get(n, 0) + 1
    return {"bn_eps": eps, "activations": acts, "strided_convs": convs}


def _hooks(model, taps, record):
    from torch import nn

    modules = dict(model.named_modules())
    handles, missing = [], []

    def arr(t):
        t = t[0] if isinstance(t, (tuple, list)) else t
        t = getattr(t, "last_hidden_state", t)
        a = np.array(t.detach().float().cpu().numpy())  # a copy: an in-place activation runs after the hook
        return a.transpose(0, 2, 3, 1) if a.ndim == 4 else a.reshape(a.shape[0], -1)

    for tid, path, how in taps:
        m = modules.get(path)
        if m is None:
            missing.append(path)
            continue
        if how == "stage_bn" and not isinstance(getattr(m, "act", None), nn.Module):
            continue  # a bare BN ends the stem (its activation applied functionally): its BN taps stand for it
        if how == "in":
            handles.append(m.register_forward_pre_hook(lambda mod, inp, tid=tid: record(tid, arr(inp[0]))))
        elif how == "bn_out" and isinstance(getattr(m, "drop", None), nn.Module) and hasattr(m, "act"):
            handles.append(m.drop.register_forward_pre_hook(lambda mod, inp, tid=tid: record(tid, arr(inp[0]))))
        else:
            handles.append(m.register_forward_hook(lambda mod, inp, out, tid=tid: record(tid, arr(out))))
    return handles, missing


def main(argv=None):
    import torch

    job = json.load(open((argv or sys.argv[1:])[0]))
    torch.set_grad_enabled(False)
    model, report, declared, pre, forward = build(job)
    model.eval()
    info = {"load": report, "declared": declared, "model": describe(model), "torch": torch.__version__}
    out = {}
    with np.load(job["inputs"]) as z:
        inputs = {k: z[k] for k in z.files}
    variants = job.get("variants") or {"base": []}
    import copy

    pristine = copy.deepcopy(model)
    for vname, fixes in variants.items():
        model = copy.deepcopy(pristine)
        patched = []
        if "same" in fixes:
            patched += _patch_same(model)
        if "eps" in fixes:
            _patch_eps(model, job["bn_eps"])
        if "act" in fixes:
            _patch_act(model, job["activation"])
        info.setdefault("patched", {})[vname] = patched
        for iname, x in inputs.items():
            got = {}
            handles, missing = _hooks(model, job.get("taps", []), lambda tid, a: got.__setitem__(tid, a))
            try:
                y = forward(model, torch.from_numpy(np.ascontiguousarray(x)))
            finally:
                for h in handles:
                    h.remove()
            y = getattr(y, "logits", y)
            out[f"{vname}/{iname}/logits"] = y.float().numpy()
            for tid, a in got.items():
                out[f"{vname}/{iname}/{tid}"] = a
            info["missing_modules"] = missing
    if job.get("images"):
        try:
            out["pre/images"] = pre(job["images"]).astype(np.float32)
        except Exception as e:  # reported; the audit says the declared pipeline could not be run
            info["preprocess_error"] = f"{type(e).__name__}: {e}"
    np.savez(job["out"], **out)
    print(json.dumps(info, default=str))


if __name__ == "__main__":
    main()
