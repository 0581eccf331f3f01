"""The way back (issue 23): ``convert-effnet export --tf-checkpoint / --saved-model / --tflite / --tflite-int8``.

Round trip on generated official-layout checkpoints of every family with a TF reference: convert,
export the official checkpoint back, and compare it with the original one name for name, shape for
shape, dtype for dtype and value for value (bit for bit); the TF reference reading it with EMA gives
the original logits. MnasNet / MixNet: the OFFICIAL code's logits on these generated checkpoints
(tests/data/mnasnet_official_logits.npz) come back from the written checkpoint, the SavedModel and
the TFLite file. A fine-tuned file (weights changed, a 10-class head): its checkpoint holds its
tensors (checked by the independent layout rules of tests/helpers.py), SavedModel / TFLite / int8 are
loaded back here and compared with PyTorch. Refusals and failures: one line, nothing left behind.
"""
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from converter import cli, export, load_model
from converter.checkpoint import IMAGENET_MEAN, IMAGENET_STD
from converter.errors import ConversionError
from converter.mapping import expand, to_official
from converter.metadata import encode
from converter.model import build_model
from converter.registry import find_checkpoint, get_arch
from converter.reorder import tf_to_torch
from converter.synthetic import calibration_images
from converter.writer import AtomicFile, write_safetensors
from helpers import make_checkpoint, torch_layout

RES = 64
EMA = "ExponentialMovingAverage"
# (variant, flavor, classes): one of each family with a TF reference (MnasNet and MixNet round-trip in
# test_official_code_logits_come_back, against the official code's own logits)
FAMILIES = (("b0", "aa", 1000), ("lite0", None, 1000), ("edgetpu-s", None, 1001), ("condconv-b0-4e", None, 1000),
            ("v2-b0", "1k", 1000), ("mnasnet-a1", None, 1000), ("mixnet-s", None, 1000))
ROUND_TRIP = FAMILIES[:5]


def rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def softmax(a) -> np.ndarray:
    a = np.asarray(a, np.float64)
    e = np.exp(a - a.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def run_cli(capsys, *argv):
    rc = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def convert(capsys, root: Path, variant: str, flavor, **kw) -> Path:
    """A generated checkpoint of ``variant``, converted by the CLI (native safetensors)."""
    prefix = make_checkpoint(root, variant, **kw)
    out = root / f"conv-{variant}-{kw.get('mode', 'full')}"
    rc, _, err = run_cli(capsys, "--variant", variant, *(["--flavor", flavor] if flavor else []), "--checkpoint",
                         prefix, "--output-dir", out, "--quiet", "--force")
    assert rc == 0, err
    return out / f"{find_checkpoint(variant, flavor).name}.safetensors"


# ----------------------------------------------------------------------------- no TensorFlow needed


@pytest.mark.parametrize("variant", [f[0] for f in FAMILIES])
def test_to_official_inverts_the_conversion(variant):
    """Every official variable, in the generator's order and shapes; the forward re-ordering gives back each
    tensor bit for bit; a missing or misshapen tensor is one error naming it."""
    from converter.tfref.generate import plan

    spec = get_arch(variant)
    torch.manual_seed(0)
    sd = build_model(spec).state_dict()
    for t in sd.values():
        if t.dtype.is_floating_point:
            t.copy_(torch.randn_like(t))
    values = to_official(sd, spec)
    assert [(n, v.shape) for n, v in values.items()] == [(n, tuple(s)) for n, s in plan(spec)]
    assert all(v.dtype == np.float32 for v in values.values())
    for e in expand(spec, "native"):
        if e.const is None:
            np.testing.assert_array_equal(tf_to_torch(values[e.tf_name], e.kind, e.kernel), sd[e.key].numpy())
            if not e.tf_name.endswith("condconv_kernel"):  # [experts, flat kernel]: kept in TF order
                # and the independent statement of the layout rules (tests/helpers.py)
                np.testing.assert_array_equal(torch_layout(e.tf_name, values[e.tf_name]), sd[e.key].numpy())
            else:
                np.testing.assert_array_equal(values[e.tf_name], sd[e.key].numpy())
    key = next(k for k in sd if k.endswith("weight") and sd[k].ndim == 4)
    broken = dict(sd)
    del broken[key]
    with pytest.raises(ConversionError, match=f"1 missing \\({key}\\)"):
        to_official(broken, spec)
    broken[key] = sd[key][:1]
    with pytest.raises(ConversionError, match="of another shape"):
        to_official(broken, spec)


# ----------------------------------------------------------------------------- TensorFlow

tf = pytest.importorskip("tensorflow")

from converter.tfref import reference  # noqa: E402
from converter.tfref.generate import plan  # noqa: E402


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("tf-export")


def _var_maps(prefix):
    r = tf.train.load_checkpoint(str(prefix))
    return r, r.get_variable_to_shape_map(), r.get_variable_to_dtype_map()


@pytest.mark.parametrize("variant,flavor,classes", ROUND_TRIP)
def test_round_trip_every_family(root, capsys, variant, flavor, classes):
    """convert -> export --tf-checkpoint: the released layout, bit for bit the original EMA values; the
    TF reference (EMA on) gives the original checkpoint's logits, bit for bit, and PyTorch's."""
    prefix = make_checkpoint(root, variant, "full", calibration_resolution=RES, calibration_images=4,
                             num_classes=classes)
    weights = convert(capsys, root, variant, flavor, mode="full", calibration_resolution=RES,
                      calibration_images=4, num_classes=classes)
    out = root / f"ckpt-{variant}"
    rc, stdout, err = run_cli(capsys, "export", "--weights", weights, "--resolution", RES, "--tf-checkpoint", out)
    assert rc == 0, err
    assert stdout.startswith(f"wrote {out}/ (TensorFlow checkpoint") and "EMA vs PyTorch" in stdout
    assert "export: writing the TensorFlow checkpoint" in err  # progress lines
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint", "effnet-convert.json", "model.ckpt.data-00000-of-00001",
                                                     "model.ckpt.index"]
    assert tf.train.latest_checkpoint(str(out)) == str(out / "model.ckpt")
    assert not [p for p in root.iterdir() if p.name.startswith(".")]  # no temp, no claim left
    orig, orig_shapes, orig_dtypes = _var_maps(prefix)
    ours, shapes, dtypes = _var_maps(out / "model.ckpt")
    # what a released checkpoint holds, less the optimizer slots: the generator's names, shapes, dtypes
    want = {n: s for n, s in orig_shapes.items() if not n.endswith(("/RMSProp", "/RMSProp_1"))}
    assert shapes == want
    assert dtypes == {n: orig_dtypes[n] for n in want}
    spec = get_arch(variant).with_classes(classes)
    for name, _ in plan(spec):
        value = ours.get_tensor(f"{name}/{EMA}")
        assert value.tobytes() == orig.get_tensor(f"{name}/{EMA}").tobytes(), name
        assert value.tobytes() == ours.get_tensor(name).tobytes(), name
    assert ours.get_tensor("global_step").dtype == np.int64
    images = calibration_images(RES, 4, IMAGENET_MEAN, IMAGENET_STD)
    got = reference.forward(spec, reference.read_checkpoint_getter(str(out / "model.ckpt")), images, device="cpu")
    want_logits = reference.forward(spec, reference.read_checkpoint_getter(str(prefix)), images, device="cpu")
    np.testing.assert_array_equal(got, want_logits)
    model = load_model(weights)
    with torch.no_grad():
        pt = model(torch.from_numpy(images.transpose(0, 3, 1, 2).copy())).numpy()
    assert rel(pt, got) < 1e-4 and (pt.argmax(1) == got.argmax(1)).all()
    meta = json.loads((out / "effnet-convert.json").read_text())
    assert meta["model_name"] == spec.scope and meta["num_classes"] == classes
    labels = meta["output"]["labels"]
    assert len(labels) == classes and labels[1 if classes == 1001 else 0] == "tench"


@pytest.mark.parametrize("variant,flavor,layout", [("condconv-b0-4e", None, "timm"), ("b0", "aa", "transformers")])
def test_other_layouts_export_the_same_checkpoint(root, capsys, variant, flavor, layout):
    """A timm file (CondConv kernels re-laid per expert) and a transformers folder write the checkpoint
    the original is, bit for bit: the file is re-keyed to the native model first (mapping.to_native)."""
    prefix = make_checkpoint(root, variant, "full", calibration_resolution=RES, calibration_images=4)
    out = root / f"conv-{variant}-{layout}"
    rc, _, err = run_cli(capsys, "--variant", variant, *(["--flavor", flavor] if flavor else []), "--checkpoint",
                         prefix, "--output-dir", out, "--layout", layout, "--quiet", "--force")
    assert rc == 0, err
    (weights,) = [p for p in out.iterdir() if not p.name.startswith(".") and p.suffix != ".json"]
    ck = root / f"ckpt-{variant}-{layout}"
    rc, _, err = run_cli(capsys, "export", "--weights", weights, "--resolution", RES, "--tf-checkpoint", ck, "--quiet")
    assert rc == 0, err
    orig, ours = tf.train.load_checkpoint(str(prefix)), tf.train.load_checkpoint(str(ck / "model.ckpt"))
    for name, _ in plan(get_arch(variant)):
        assert ours.get_tensor(f"{name}/{EMA}").tobytes() == orig.get_tensor(f"{name}/{EMA}").tobytes(), name


def test_ctrl_c_stops_the_tensorflow_process(root, capsys, tmp_path):
    """SIGINT to a real export while TensorFlow works: exit 130, the TensorFlow process gone, nothing left."""
    import signal
    import sys
    import time

    weights = convert(capsys, root, "b0", "aa", mode="full", calibration_resolution=RES, calibration_images=4,
                      num_classes=1000)
    out = tmp_path / "out"
    out.mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "converter", "export", "--weights", str(weights), "--resolution",
                             str(RES), "--tf-checkpoint", str(out / "ck"), "--tflite", str(out / "m.tflite")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if "building the official graph" in line:  # the TensorFlow process is at work
            break
    time.sleep(1.0)
    children = [int(p) for p in subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True,
                                               text=True).stdout.split()]
    assert children, seen
    proc.send_signal(signal.SIGINT)  # the CLI alone: it must stop its TensorFlow process itself
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, "".join(seen) + err
    assert err.strip().splitlines()[-1] == "convert-effnet: interrupted"
    for pid in children:
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text().lower()
    assert list(out.iterdir()) == []


@pytest.mark.parametrize("name", ["mixnet-s", "mnasnet-a1"])
def test_official_code_logits_come_back(root, capsys, name):
    """The official tensorflow/tpu code's logits on these generated checkpoints (computed with the official
    sources: tests/data/official_mnasnet.py) come back from the exported checkpoint, SavedModel and TFLite."""
    from mnasnet_cases import N_IMAGES, SEED
    from test_mnasnet import DATA, PARITY_RES

    res = PARITY_RES[name]
    weights = convert(capsys, root, name, None, mode="ema-only", calibration_resolution=res,
                      calibration_images=N_IMAGES, seed=SEED)
    with np.load(DATA / "mnasnet_official_logits.npz") as z:
        official = z[name]
    images = calibration_images(res, N_IMAGES, IMAGENET_MEAN, IMAGENET_STD)
    ck, sm, lite = root / f"o-{name}", root / f"o-{name}-sm", root / f"o-{name}.tflite"
    rc, stdout, err = run_cli(capsys, "export", "--weights", weights, "--resolution", res, "--tf-checkpoint", ck,
                              "--saved-model", sm, "--tflite", lite, "--quiet")
    assert rc == 0, err
    assert stdout.count("wrote ") == 3 and err == ""
    spec = get_arch(name)
    # the round trip: the released layout (each variable and its EMA twin, global_step), bit for bit the original
    prefix = make_checkpoint(root, name, "ema-only", calibration_resolution=res, calibration_images=N_IMAGES,
                             seed=SEED)
    orig, ours = tf.train.load_checkpoint(str(prefix)), tf.train.load_checkpoint(str(ck / "model.ckpt"))
    names = [n for n, _ in plan(spec)]
    assert set(ours.get_variable_to_shape_map()) == {*names, *(f"{n}/{EMA}" for n in names), "global_step"}
    for n in names:
        assert ours.get_tensor(f"{n}/{EMA}").tobytes() == orig.get_tensor(f"{n}/{EMA}").tobytes() \
            == ours.get_tensor(n).tobytes(), n
    got = reference.forward(spec, reference.read_checkpoint_getter(str(ck / "model.ckpt")), images, device="cpu")
    assert rel(got, official) < 1e-5 and (got.argmax(1) == official.argmax(1)).all()
    loaded = tf.saved_model.load(str(sm))
    fn = loaded.signatures["serving_default"]
    assert list(fn.structured_input_signature[1]) == ["input"] and list(fn.structured_outputs) == ["output"]
    assert fn.structured_input_signature[1]["input"].shape.as_list() == [1, res, res, 3]
    probs = np.concatenate([fn(input=tf.constant(images[i:i + 1]))["output"].numpy() for i in range(N_IMAGES)])
    assert rel(probs, softmax(official)) < 1e-4 and np.allclose(probs.sum(1), 1, atol=1e-5)
    interp = tf.lite.Interpreter(model_path=str(lite))
    interp.allocate_tensors()
    inp, outp = interp.get_input_details()[0], interp.get_output_details()[0]
    assert inp["dtype"] == np.float32 and list(inp["shape"]) == [1, res, res, 3]
    lite_probs = []
    for i in range(N_IMAGES):
        interp.set_tensor(inp["index"], images[i:i + 1])
        interp.invoke()
        lite_probs.append(interp.get_tensor(outp["index"]))
    assert rel(np.concatenate(lite_probs), softmax(official)) < 1e-4
    side = json.loads(Path(str(lite) + ".json").read_text())
    assert side["input"]["shape"] == [1, res, res, 3] and side["input"]["mean"] == list(IMAGENET_MEAN)
    assert json.loads((sm / "assets.extra" / "effnet-convert.json").read_text())["model_name"] == spec.scope


def _calibration_pngs(folder: Path, n: int, size: int, mean, std) -> Path:
    """``n`` PNGs of the generator's calibration images (what the generated BN statistics fit), 0-255."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    x = calibration_images(size, n, mean, std) * np.asarray(std, np.float32) + np.asarray(mean, np.float32)
    for i, img in enumerate(np.clip(np.round(x * 255), 0, 255).astype(np.uint8)):
        Image.fromarray(img).save(folder / f"cal{i}.png")
    return folder


@pytest.fixture(scope="module")
def finetuned(root):
    """A converted Lite0 "fine-tuned" with the fine-tuning API (converter/training.py): every weight changed,
    the head replaced by a named 10-class one (reset_classifier), saved by save_model."""
    from converter.training import save_model

    prefix = make_checkpoint(root, "lite0", "full", calibration_resolution=RES, calibration_images=4)
    out = root / "ft"
    assert cli.main(["--variant", "lite0", "--checkpoint", str(prefix), "--output-dir", str(out), "--quiet",
                     "--force"]) == 0
    model = load_model(out / f"{find_checkpoint('lite0').name}.safetensors")
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if t.dtype.is_floating_point and not name.endswith(("running_mean", "running_var")):
                t.add_(0.02 * t.abs().mean() * torch.randn(t.shape, generator=g))
    model.reset_classifier(10, labels=[f"class-{i}" for i in range(10)])
    path = save_model(model, root / "lite0-ft10.safetensors", force=True)
    model = load_model(path)
    assert model.spec.num_classes == 10
    return path, model


def test_finetuned_file_every_output(root, capsys, finetuned):
    """Checkpoint (the file's own tensors, 10-class head), SavedModel, float TFLite and int8 TFLite of a
    fine-tuned file, each loaded back here; the int8 report's figures recomputed from the file."""
    from converter.verify import tf_preprocess

    path, model = finetuned
    cfg = model.pretrained_cfg
    cal = _calibration_pngs(root / "cal", 3, RES + 9, cfg["mean"], cfg["std"])
    d = root / "ft-out"
    d.mkdir()
    rc, stdout, err = run_cli(capsys, "export", "--weights", path, "--resolution", RES, "--tf-checkpoint", d / "ck",
                              "--saved-model", d / "sm", "--tflite", d / "f.tflite", "--tflite-int8", d / "q.tflite",
                              "--calibration-images", cal)
    assert rc == 0, err
    lines = stdout.strip().splitlines()
    assert len(lines) == 4 and all(l.startswith("wrote ") for l in lines)
    assert sorted(p.name for p in d.iterdir()) == ["ck", "f.tflite", "f.tflite.json", "q.tflite", "q.tflite.json", "sm"]
    spec = model.spec
    # the checkpoint holds the file's tensors (independent layout rules), head included
    r = tf.train.load_checkpoint(str(d / "ck" / "model.ckpt"))
    sd = model.state_dict()
    for e in expand(spec, "native"):
        if e.const is None:
            np.testing.assert_array_equal(torch_layout(e.tf_name, r.get_tensor(f"{e.tf_name}/{EMA}")), sd[e.key].numpy())
    assert r.get_variable_to_shape_map()[f"{spec.scope}/head/dense/kernel/{EMA}"] == [1280, 10]
    mean, std = cfg["mean"], cfg["std"]
    x = calibration_images(RES, 3, mean, std)
    with torch.no_grad():
        pt = model(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).double().numpy()
    got = reference.forward(spec, reference.read_checkpoint_getter(str(d / "ck" / "model.ckpt")), x, device="cpu")
    assert rel(got, pt) < 1e-4
    fn = tf.saved_model.load(str(d / "sm")).signatures["serving_default"]
    sm = np.concatenate([fn(input=tf.constant(x[i:i + 1]))["output"].numpy() for i in range(3)])
    assert rel(sm, softmax(pt)) < 1e-4

    def tflite(file, images):
        it = tf.lite.Interpreter(model_path=str(file))
        it.allocate_tensors()
        i, o = it.get_input_details()[0], it.get_output_details()[0]
        res = []
        for img in images:
            v = img[None]
            if i["dtype"] == np.uint8:
                s, z = i["quantization"]
                v = np.clip(np.round(v / s + z), 0, 255).astype(np.uint8)
            it.set_tensor(i["index"], v)
            it.invoke()
            y = it.get_tensor(o["index"])
            if o["dtype"] == np.uint8:
                s, z = o["quantization"]
                y = (y.astype(np.float64) - z) * s
            res.append(y)
        return np.concatenate(res), i, o

    fl, i, o = tflite(d / "f.tflite", x)
    assert i["dtype"] == np.float32 and o["dtype"] == np.float32 and list(o["shape"]) == [1, 10]
    assert rel(fl, softmax(pt)) < 1e-4
    cal_images = tf_preprocess(sorted(str(p) for p in cal.iterdir()), RES, mean, std, cfg["crop_pct"])
    q, i, o = tflite(d / "q.tflite", cal_images)
    assert i["dtype"] == np.uint8 and o["dtype"] == np.uint8
    side = json.loads((d / "q.tflite.json").read_text())
    assert side["input"]["quantization"] == {"scale": float(i["quantization"][0]), "zero_point": int(i["quantization"][1])}
    assert side["output"]["dtype"] == "uint8" and side["num_classes"] == 10
    assert side["output"]["labels"] == [f"class-{i}" for i in range(10)]  # the file's own, not ImageNet's
    with torch.no_grad():
        pq = softmax(model(torch.from_numpy(cal_images.transpose(0, 3, 1, 2).copy())).numpy())
    agree, err_max = float(np.mean(pq.argmax(1) == q.argmax(1))), float(np.abs(pq - q).max())
    assert f"top-1 agreement {agree:.1%}, probability error max {err_max:.3f}" in lines[3]
    # a quantized model, not a broken one: its outputs are probabilities, and on average within half the
    # distance of the uniform distribution to the float ones (random weights quantize coarsely: measured 0.04)
    assert np.allclose(q.sum(1), 1.0, atol=0.05)
    assert np.abs(pq - q).mean() < 0.5 * np.abs(pq - 0.1).mean()


@pytest.fixture()
def small_weights(tmp_path):
    """A converted-looking b0 file (refusals and failures: the TF process is never started)."""
    cfg = find_checkpoint("b0", "aa").pretrained_cfg()
    cfg.update(source="tests", source_sha256="0" * 64, ema=True, num_classes=1000, layout="native",
               converter_version="0")
    model = build_model("b0").eval()
    with torch.no_grad():  # logits of a trained model's spread (std ~3; the untrained features are ~0)
        model.classifier.bias.normal_(0.0, 3.0, generator=torch.Generator().manual_seed(0))
    sd = {k: v.numpy() for k, v in model.state_dict().items()}
    path = tmp_path / "w" / "b0.safetensors"
    path.parent.mkdir()
    f = AtomicFile(path)
    try:
        with open(f.tmp, "wb") as fh:
            write_safetensors(fh, [(k, v.shape, v.dtype) for k, v in sd.items()], sd.items(), encode(cfg))
        f.commit()
    finally:
        f.discard()
    return path


def test_int8_needs_calibration_images(small_weights, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    rc, stdout, err = run_cli(capsys, "export", "--weights", small_weights, "--tflite-int8", out / "q.tflite")
    assert rc == 2 and stdout == "" and len(err.strip().splitlines()) == 1
    assert "--tflite-int8 needs --calibration-images" in err
    empty = tmp_path / "empty"
    empty.mkdir()
    rc, _, err = run_cli(capsys, "export", "--weights", small_weights, "--tflite-int8", out / "q.tflite",
                         "--calibration-images", empty)
    assert rc == 2 and "no images in this folder" in err and len(err.strip().splitlines()) == 1
    assert list(out.iterdir()) == []


@pytest.mark.parametrize("exc,code", [(ConversionError("TensorFlow export failed: boom"), 2), (KeyboardInterrupt(), 130)])
def test_failure_or_ctrl_c_leaves_nothing(small_weights, tmp_path, capsys, monkeypatch, exc, code):
    """The TensorFlow process fails (or Ctrl-C) after writing into the temp outputs: no output, no temp."""
    def fake(job, work):
        for key in ("tf_checkpoint", "saved_model"):
            Path(job[key], "partial").write_text("x")
        Path(job["tflite"]).write_bytes(b"partial")
        raise exc

    monkeypatch.setattr(export, "run_tf_export", fake)
    out = tmp_path / "out"
    out.mkdir()
    rc, stdout, err = run_cli(capsys, "export", "--weights", small_weights, "--resolution", 32, "--tf-checkpoint",
                              out / "ck", "--saved-model", out / "sm", "--tflite", out / "m.tflite")
    assert rc == code and stdout == ""
    assert list(out.iterdir()) == []


@pytest.mark.parametrize("broken", [None, "logits_checkpoint", "logits_saved_model", "probs_saved_model", "probs_tflite"])
def test_verdicts_catch_a_wrong_output(small_weights, tmp_path, capsys, monkeypatch, broken):
    """The judging half alone (TensorFlow's process replaced by the PyTorch model's own float32 outputs):
    exact outputs are published; one output 1% off in its logits fails its check, and nothing is written."""
    def fake(job, work):
        model = load_model(small_weights)
        with np.load(job["images"]) as z:
            x = torch.from_numpy(z["images"].transpose(0, 3, 1, 2).copy())
        with torch.no_grad():
            logits = model(x).numpy()
        out = {"checkpoint_tensors": np.int64(1), "logits_checkpoint": logits, "logits_saved_model": logits,
               "probs_saved_model": softmax(logits).astype(np.float32), "probs_tflite": softmax(logits).astype(np.float32)}
        if broken:
            wrong = logits * np.float32(1.01)
            out[broken] = softmax(wrong).astype(np.float32) if broken.startswith("probs") else wrong
        for key in ("tf_checkpoint", "saved_model"):
            Path(job[key], "x").write_text("x")
        Path(job["tflite"]).write_bytes(b"x")
        return out

    monkeypatch.setattr(export, "run_tf_export", fake)
    out = tmp_path / "out"
    out.mkdir()
    rc, stdout, err = run_cli(capsys, "export", "--weights", small_weights, "--resolution", 32, "--tf-checkpoint",
                              out / "ck", "--saved-model", out / "sm", "--tflite", out / "m.tflite", "--quiet")
    if broken is None:
        assert rc == 0, err
        assert sorted(p.name for p in out.iterdir()) == ["ck", "m.tflite", "m.tflite.json", "sm"]
        assert "relative error 0.0e+00" in stdout
    else:
        assert rc == 2 and stdout == "" and len(err.strip().splitlines()) == 1
        assert "differ from PyTorch's" in err and "nothing written" in err
        assert list(out.iterdir()) == []


@pytest.mark.skipif(not os.environ.get("EFFNET_NOTF_PYTHON"), reason="EFFNET_NOTF_PYTHON unset (make test sets it)")
def test_without_tensorflow_one_line(small_weights, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    proc = subprocess.run([os.environ["EFFNET_NOTF_PYTHON"], "-m", "converter", "export", "--weights",
                           str(small_weights), "--tflite", str(out / "m.tflite")], capture_output=True, text=True,
                          timeout=300, env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert "pip install 'effnet-convert[verify]'" in lines[0] and "--tflite" in lines[0]
    assert list(out.iterdir()) == []


def test_sidecar_names_what_the_official_builder_needs():
    """effnet-convert.json's override_params: the classes always; MnasNet-A1's other widths (one scope,
    mnasnet-a1) their depth_multiplier (mnasnet_main.py -> mnasnet_models.mnasnet_a1(depth_multiplier));
    MixNet-L's 1.3 belongs to its name (mixnet_builder.mixnet_l), no override."""
    for name, expected in [("mnasnet-a1", {}), ("mnasnet-a1_d0.5", {"depth_multiplier": 0.5}),
                           ("mnasnet-a1_d0.35", {"depth_multiplier": 0.35}), ("mnasnet-a1_d1.4", {"depth_multiplier": 1.4}),
                           ("mixnet-l", {}), ("mixnet-s", {}), ("b0", {}), ("edgetpu-s", {})]:
        spec = get_arch(name)
        model = build_model(spec, num_classes=10)
        side = export.tf_sidecar(model, spec.resolution)
        assert side["override_params"] == {"num_classes": 10, **expected}, name
        assert side["model_name"] == ("mnasnet-a1" if name.startswith("mnasnet-a1") else spec.scope)
