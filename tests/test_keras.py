"""Keras input: keras.applications EfficientNet files, written by Keras itself, converted and
compared against that Keras model's own logits.

Every model here is a real ``keras.applications.EfficientNetBn`` (the installed Keras 3), given
random weights with BN statistics calibrated by Keras on the test images (random statistics blow
activations up and make the comparison meaningless), saved by Keras in each format it writes,
converted with the CLI, loaded into our module and run on the same raw 0-255 images, which the
module gets normalized with the mean/std the converter put into the metadata.
"""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from converter.cli import main
from converter.synthetic import image_kinds, normalize, synthetic_images

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # Keras 3 under numpy 2

MAX_REL_ERROR = 1e-4
N_IMAGES = 6


# --------------------------------------------------------------------------- Keras side


def _keras():
    import keras  # TensorFlow's Keras 3 (the pytest process already imports TensorFlow)

    return keras


def build_keras(variant: str, res: int, **kw):
    """keras.applications.EfficientNet{variant} returning logits, at ``res`` px."""
    fn = getattr(_keras().applications, f"EfficientNet{variant.upper()}")
    kw.setdefault("weights", None)
    if kw.get("include_top", True):
        kw.setdefault("classifier_activation", None)
    return fn(input_shape=(res, res, 3), **kw)


def randomize(model, seed: int, norm_mean=None, norm_variance=None) -> None:
    """He-initialised kernels, modest gammas/betas, small biases; the Normalization layer set."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        cls = type(layer).__name__
        ws = layer.get_weights()
        if not ws:
            continue
        if cls == "Normalization":
            if norm_mean is not None:
                layer.set_weights([np.float32(norm_mean), np.float32(norm_variance), ws[2]])
                layer.finalize_state()  # the layer computes with copies made from its variables
        elif cls in ("Conv2D", "DepthwiseConv2D", "Dense"):
            k = ws[0]
            fan_in = k.shape[0] * k.shape[1] if cls == "DepthwiseConv2D" else int(np.prod(k.shape[:-1]))
            new = [rng.normal(0, math.sqrt(2.0 / fan_in), k.shape).astype(np.float32)]
            new += [rng.normal(0, 0.1, b.shape).astype(np.float32) for b in ws[1:]]
            layer.set_weights(new)
        elif cls == "BatchNormalization":
            c = ws[0].shape
            layer.set_weights([rng.uniform(0.5, 1.2, c).astype(np.float32), rng.normal(0, 0.2, c).astype(np.float32),
                               np.zeros(c, np.float32), np.ones(c, np.float32)])
        else:
            raise AssertionError(f"unexpected weighted layer {layer.name} ({cls})")


def calibrate(model, images: np.ndarray) -> None:
    """BN moving statistics := the batch statistics of ``images`` (Keras's own training pass)."""
    bns = [l for l in model.layers if type(l).__name__ == "BatchNormalization"]
    drops = [l for l in model.layers if type(l).__name__ == "Dropout"]
    saved = [(l, l.momentum) for l in bns] + [(l, l.rate) for l in drops]
    for l in bns:
        l.momentum = 0.0
    for l in drops:
        l.rate = 0.0  # the head dropout and every block's drop-connect
    model(images, training=True)
    for l, v in saved:
        if type(l).__name__ == "BatchNormalization":
            l.momentum = v
        else:
            l.rate = v
    # centre the classifier on these images: bias = -W^T mean(pooled features), so that the logits
    # differ from image to image instead of sharing one offset (every argmax the same class)
    names = [l.name for l in model.layers]
    if "predictions" in names:
        pooled = _keras().Model(model.inputs, model.get_layer("avg_pool").output)
        feats = np.asarray(pooled(images, training=False), dtype=np.float64)
        dense = model.get_layer("predictions")
        kernel, _ = dense.get_weights()
        dense.set_weights([kernel, (-feats.mean(0) @ kernel.astype(np.float64)).astype(np.float32)])


def eval_images(res: int) -> np.ndarray:
    """Gradients, checkerboards, blobs, flat colours (converter.synthetic), without uniform noise.

    With random weights at these small sizes a pure-noise image is ill-conditioned: float32 and
    float64 runs of the same module differ by ~5e-5 on it (Keras and we both show that error),
    so it cannot tell a good port from a bad one; the other kinds sit at ~1e-6.
    """
    kinds = image_kinds(res, N_IMAGES + 2)
    images = synthetic_images(res, N_IMAGES + 2, seed=2)
    return images[[i for i, k in enumerate(kinds) if k != "noise"][:N_IMAGES]]


def keras_logits(model, images: np.ndarray) -> np.ndarray:
    return np.asarray(model(images, training=False), dtype=np.float64)


def save_all(model, folder: Path, stem: str) -> dict:
    """The model's weights in every format Keras writes: {format: path}."""
    from keras.src.legacy.saving import legacy_h5_format

    folder.mkdir(parents=True, exist_ok=True)
    out = {"keras3": folder / f"{stem}.weights.h5", "legacy": folder / f"{stem}.h5",
           "full": folder / f"{stem}_model.h5"}
    model.save_weights(str(out["keras3"]))  # Keras 3: layers/<class>/vars/0..n
    with h5py.File(out["legacy"], "w") as f:  # legacy HDF5 weights (Keras 2 save_weights, the downloads)
        legacy_h5_format.save_weights_to_hdf5_group(f, model)
    model.save(str(out["full"]))  # a full model: the legacy layout below model_weights/
    return out


def as_keras2_names(src: Path, dst: Path) -> Path:
    """A copy of a legacy file with Keras 2's weight names (``kernel:0``, ``depthwise_kernel:0``).

    A replica made with h5py (no Keras 2 here): Keras 2 (tf.keras) writes the same layout with
    these names (checked once by hand with tf-keras 2.21).
    """
    shutil.copyfile(src, dst)
    with h5py.File(dst, "r+") as f:
        for lname in [n.decode() if isinstance(n, bytes) else n for n in f.attrs["layer_names"]]:
            g = f[lname]
            names = [n.decode() if isinstance(n, bytes) else n for n in g.attrs["weight_names"]]
            new = []
            for n in names:
                layer, var = n.rsplit("/", 1)
                var = "depthwise_kernel" if lname.endswith("_dwconv") and var == "kernel" else var
                m = f"{layer}/{var}:0"
                g.move(n, m)
                new.append(m)
            g.attrs["weight_names"] = np.array([s.encode() for s in new])
    return dst


def without_layer_names(src: Path, dst: Path) -> Path:
    """A Keras 3 .weights.h5 without the ``name`` attributes (older Keras 3 versions write none)."""
    shutil.copyfile(src, dst)
    with h5py.File(dst, "r+") as f:
        for key in f["layers"]:
            v = f["layers"][key].get("vars")
            if v is not None and "name" in v.attrs:
                del v.attrs["name"]
    return dst


# --------------------------------------------------------------------------- our side


def convert_file(path: Path, out_dir: Path, *extra: str) -> Path:
    rc = main(["--checkpoint", str(path), "--output-dir", str(out_dir), "--quiet", *extra])
    assert rc == 0
    files = list(out_dir.glob("*.safetensors"))
    assert len(files) == 1
    return files[0]


def torch_logits(weights: Path, images: np.ndarray, std_override=None) -> np.ndarray:
    import torch

    from converter.loading import load_model

    model = load_model(weights)
    cfg = model.pretrained_cfg
    x = normalize(images, cfg["mean"], std_override if std_override is not None else cfg["std"])
    with torch.no_grad():
        return model(torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))).double().numpy()


def rel_error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def assert_parity(ours: np.ndarray, theirs: np.ndarray, label: str) -> float:
    err = rel_error(ours, theirs)
    print(f"{label}: rel error {err:.2e}, logit std {theirs.std():.3g}")
    assert err <= MAX_REL_ERROR, f"{label}: rel error {err:.3g}"
    assert (ours.argmax(1) == theirs.argmax(1)).all(), label
    return err


# (variant, resolution, formats): b1 at 72 px meets odd feature maps (9 -> 5 -> 3 px), where
# Keras pads stride-2 convs with ZeroPadding2D(correct_pad) and the module with TF 'SAME'
CASES = [
    ("b0", 64, ("keras3", "legacy", "full", "keras2-names", "keras3-unnamed")),
    ("b3", 64, ("keras3", "legacy", "full")),
    ("b1", 72, ("legacy",)),
]
# a plausible Normalization adapted on photos (std = sqrt(variance) = 0.27, 0.25, 0.26)
NORM_MEAN = (0.47, 0.45, 0.41)
NORM_VARIANCE = (0.0729, 0.0625, 0.0676)


@pytest.fixture(scope="module")
def keras_cases(tmp_path_factory):
    """Per case: the Keras model's logits, its files, the images."""
    root = tmp_path_factory.mktemp("keras")
    out = {}
    for i, (variant, res, formats) in enumerate(CASES):
        model = build_keras(variant, res)
        randomize(model, seed=10 + i, norm_mean=NORM_MEAN, norm_variance=NORM_VARIANCE)
        images = eval_images(res)
        calibrate(model, np.concatenate([images, synthetic_images(res, 26, seed=1)]))
        files = save_all(model, root / variant, f"efficientnet{variant}")
        if "keras2-names" in formats:
            files["keras2-names"] = as_keras2_names(files["legacy"], root / variant / "keras2.h5")
        if "keras3-unnamed" in formats:
            files["keras3-unnamed"] = without_layer_names(files["keras3"], root / variant / "unnamed.weights.h5")
        out[variant] = {"logits": keras_logits(model, images), "images": images, "files": files,
                        "formats": formats, "root": root / variant}
    return out


@pytest.mark.parametrize("variant,res,formats", CASES, ids=[c[0] for c in CASES])
def test_keras_files_convert_to_keras_logits(keras_cases, tmp_path, variant, res, formats):
    case = keras_cases[variant]
    assert case["logits"].std() > 0.1 and len(set(case["logits"].argmax(1))) > 1  # a meaningful comparison
    errors = {}
    for fmt in formats:
        out = convert_file(case["files"][fmt], tmp_path / fmt)
        assert out.name == f"keras-efficientnet{variant}.safetensors"
        from converter.loading import read_weights

        _, meta = read_weights(out)
        assert meta["variant"] == variant and meta["flavor"] == "keras" and meta["num_classes"] == 1000
        assert meta["ema"] is False and meta["input_size"] == [3, get_res(variant), get_res(variant)]
        np.testing.assert_allclose(meta["mean"], NORM_MEAN, rtol=1e-6)
        np.testing.assert_allclose(meta["std"], np.sqrt(NORM_VARIANCE), rtol=1e-6)
        assert meta["keras_normalization"] == "sqrt(variance)"
        errors[fmt] = assert_parity(torch_logits(out, case["images"]), case["logits"], f"{variant} {fmt}")
    print(f"{variant} at {res} px: " + ", ".join(f"{k} {v:.1e}" for k, v in errors.items()))


def get_res(variant: str) -> int:
    from converter.registry import get_arch

    return get_arch(variant).resolution


def test_reader_names_are_the_official_inventory(keras_cases, reference_dir):
    """Every Keras variable lands on its official name and shape (shared/reference inventories)."""
    from converter.sources.keras import KerasH5Reader

    for variant in ("b0", "b3"):
        inventory = json.loads((reference_dir / "inventory" / f"efficientnet-{variant}.json").read_text())
        expected = {n: tuple(s) for n, s in inventory}
        for fmt in keras_cases[variant]["formats"]:
            r = KerasH5Reader(keras_cases[variant]["files"][fmt])
            try:
                assert r.spec.name == variant
                assert {n: r.shape(n) for n in r.names()} == expected, (variant, fmt)
                # spot checks of the translation, value for value
                from converter.registry import get_arch

                i = [b.index for b in get_arch(variant).blocks() if b.stage == 1][0]  # block2a: 1 in b0, 2 in b3
                name = f"efficientnet-{variant}/blocks_{i}/conv2d/kernel"
                assert r.keras_name(name) == "block2a_expand_conv/kernel"
                with h5py.File(keras_cases[variant]["files"]["legacy"]) as f:
                    np.testing.assert_array_equal(r.read(name), f["block2a_expand_conv/block2a_expand_conv/kernel"][()])
                    np.testing.assert_array_equal(r.read(f"efficientnet-{variant}/head/dense/bias"),
                                                  f["predictions/predictions/bias"][()])
                    np.testing.assert_array_equal(
                        r.read(f"efficientnet-{variant}/blocks_0/tpu_batch_normalization/moving_variance"),
                        f["block1a_bn/block1a_bn/moving_variance"][()])
            finally:
                r.close()


def test_imagenet_normalization_quirk(tmp_path, monkeypatch):
    """A model built as keras.applications builds it for weights='imagenet' (its real code path).

    keras' get_file is pointed at a legacy file written here (no download) whose Normalization
    holds the ImageNet mean and, as the real ImageNet files do, the std as the variance; Keras
    then adds its Rescaling(1/sqrt(std)) and loads the file. The Keras model is BN-calibrated,
    saved again and converted: the metadata must say std = 0.229, 0.224, 0.225 (not their
    square roots) and the logits must match. Keras allows only the native 224 px here.
    """
    import keras.src.applications.efficientnet as keff
    from keras.src.legacy.saving import legacy_h5_format

    from converter.sources.keras import IMAGENET_STDDEV_RGB
    from converter.checkpoint import IMAGENET_MEAN

    seed_model = build_keras("b0", 224)
    randomize(seed_model, seed=3, norm_mean=IMAGENET_MEAN, norm_variance=IMAGENET_STDDEV_RGB)
    seeded = tmp_path / "efficientnetb0.h5"
    with h5py.File(seeded, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, seed_model)
    monkeypatch.setattr(keff.file_utils, "get_file", lambda *a, **k: str(seeded))
    model = build_keras("b0", 224, weights="imagenet")
    assert sum(type(l).__name__ == "Rescaling" for l in model.layers) == 2  # Keras's imagenet extra
    images = eval_images(224)[:4]
    calibrate(model, np.concatenate([images, synthetic_images(224, 4, seed=1)]))
    theirs = keras_logits(model, images)
    saved = tmp_path / "imagenet_calibrated.h5"
    with h5py.File(saved, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, model)

    out = convert_file(saved, tmp_path / "out")
    from converter.loading import read_weights

    _, meta = read_weights(out)
    assert meta["std"] == list(IMAGENET_STDDEV_RGB)
    np.testing.assert_allclose(meta["mean"], IMAGENET_MEAN, rtol=1e-6)
    assert meta["keras_normalization"].startswith("imagenet")
    assert_parity(torch_logits(out, images), theirs, "b0 imagenet quirk")
    # the plain rule (std = sqrt(variance)) would preprocess differently: the quirk matters here
    wrong = torch_logits(out, images, std_override=np.sqrt(IMAGENET_STDDEV_RGB))
    assert rel_error(wrong, theirs) > 100 * MAX_REL_ERROR


# --------------------------------------------------------------------------- refusals


def _refused(capsys, argv, out_dir: Path, *expect: str) -> str:
    capsys.readouterr()  # only what this run prints
    rc = main(argv + ["--output-dir", str(out_dir), "--quiet"])
    err = capsys.readouterr().err
    lines = [l for l in err.strip().splitlines() if l.startswith("convert-effnet")]
    assert rc != 0, err
    assert len(lines) == 1 and lines[0].startswith("convert-effnet: error:"), err
    assert "Traceback" not in err
    for e in expect:
        assert e in lines[0], lines[0]
    assert not out_dir.exists() or not any(out_dir.iterdir())  # nothing written
    return lines[0]


def test_missing_and_unknown_layers_are_listed(keras_cases, tmp_path, capsys):
    src = keras_cases["b0"]["files"]["legacy"]
    missing = tmp_path / "missing.h5"
    shutil.copyfile(src, missing)
    with h5py.File(missing, "r+") as f:
        names = [n.decode() if isinstance(n, bytes) else n for n in f.attrs["layer_names"]]
        f.attrs["layer_names"] = np.array([n.encode() for n in names if n != "block2a_expand_conv"])
        del f["block2a_expand_conv"]
    _refused(capsys, ["--checkpoint", str(missing), "--variant", "b0"], tmp_path / "o1", "1 missing", "block2a_expand_conv")
    _refused(capsys, ["--checkpoint", str(missing)], tmp_path / "o2", "block2a_expand_conv")  # variant inferred

    extra = tmp_path / "extra.h5"
    shutil.copyfile(src, extra)
    with h5py.File(extra, "r+") as f:
        names = [n if isinstance(n, bytes) else n.encode() for n in f.attrs["layer_names"]]
        f.attrs["layer_names"] = np.array(names + [b"my_dense"])
        g = f.create_group("my_dense")
        g.attrs["weight_names"] = np.array([b"my_dense/kernel"])
        g["my_dense/kernel"] = np.zeros((1280, 5), np.float32)
    _refused(capsys, ["--checkpoint", str(extra)], tmp_path / "o3", "1 unknown", "my_dense")

    keras3 = tmp_path / "missing.weights.h5"  # the Keras 3 format: same check
    shutil.copyfile(keras_cases["b0"]["files"]["keras3"], keras3)
    with h5py.File(keras3, "r+") as f:
        key = [k for k in f["layers"] if "vars" in f["layers"][k]
               and f["layers"][k]["vars"].attrs.get("name") == "block7a_project_bn"][0]
        del f["layers"][key]
    _refused(capsys, ["--checkpoint", str(keras3)], tmp_path / "o4", "block7a_project_bn")


def test_wrong_shape_is_listed(keras_cases, tmp_path, capsys):
    bad = tmp_path / "shape.h5"
    shutil.copyfile(keras_cases["b0"]["files"]["legacy"], bad)
    with h5py.File(bad, "r+") as f:
        del f["block3b_se_reduce/block3b_se_reduce/kernel"]
        f["block3b_se_reduce/block3b_se_reduce/kernel"] = np.zeros((1, 1, 240, 11), np.float32)
    _refused(capsys, ["--checkpoint", str(bad), "--variant", "b0"], tmp_path / "o",
             "block3b_se_reduce/kernel is [1, 1, 240, 11] not [1, 1, 240, 10]")


def test_corrupt_and_truncated_files(keras_cases, tmp_path, capsys):
    data = keras_cases["b0"]["files"]["legacy"].read_bytes()
    trunc = tmp_path / "truncated.h5"
    trunc.write_bytes(data[: len(data) // 2])
    _refused(capsys, ["--checkpoint", str(trunc)], tmp_path / "o1", str(trunc))
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"not an hdf5 file at all" * 100)
    _refused(capsys, ["--checkpoint", str(junk)], tmp_path / "o2", "cannot read", "as a Keras HDF5 file")
    # an HDF5 file that is no Keras file
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["x"] = np.zeros(3)
    _refused(capsys, ["--checkpoint", str(other)], tmp_path / "o3", "no Keras weights file")
    # a Keras 3 file cut short by a few KB (its last tensors' bytes)
    damaged = tmp_path / "damaged.weights.h5"
    src = keras_cases["b0"]["files"]["keras3"].read_bytes()
    damaged.write_bytes(src[: len(src) - 4096])
    _refused(capsys, ["--checkpoint", str(damaged)], tmp_path / "o4", str(damaged))


def test_variant_contradicting_the_file(keras_cases, tmp_path, capsys):
    line = _refused(capsys, ["--checkpoint", str(keras_cases["b3"]["files"]["keras3"]), "--variant", "b0"],
                    tmp_path / "o", "--variant b0", "EfficientNetB3", "pass --variant b3")
    assert "40" in line  # the stem channels it found
    _refused(capsys, ["--checkpoint", str(keras_cases["b0"]["files"]["legacy"]), "--variant", "b8"],
             tmp_path / "o2", "EfficientNetB0-B7")


def test_include_top_false_is_refused(tmp_path, capsys):
    model = build_keras("b0", 64, include_top=False)
    files = save_all(model, tmp_path / "notop", "efficientnetb0_notop")
    for fmt in ("keras3", "legacy"):
        _refused(capsys, ["--checkpoint", str(files[fmt])], tmp_path / f"o_{fmt}", "include_top=False")


def test_keras_options_refused_and_verify_subcommand(keras_cases, tmp_path, capsys):
    f = str(keras_cases["b0"]["files"]["legacy"])
    capsys.readouterr()
    _refused(capsys, ["--checkpoint", f, "--flavor", "aa"], tmp_path / "o1", "--flavor")
    _refused(capsys, ["--checkpoint", f, "--num-classes", "10"], tmp_path / "o2", "--num-classes 10")
    rc = main(["verify", "--weights", str(tmp_path / "w.safetensors"), "--checkpoint", f])
    err = capsys.readouterr().err
    assert rc != 0 and "is a Keras HDF5 file" in err and "Traceback" not in err


def test_open_reader_and_hdf5_signature(keras_cases, tmp_path):
    """open_reader takes a Keras file; a Keras file without the .h5 extension is found by its signature."""
    from converter.sources.keras import KerasH5Reader, is_keras_file
    from converter.sources.readers import open_reader

    plain = tmp_path / "weights_without_extension"
    shutil.copyfile(keras_cases["b0"]["files"]["keras3"], plain)
    assert is_keras_file(plain) and not is_keras_file(tmp_path / "nothing.h5")
    r = open_reader(str(plain))
    assert isinstance(r, KerasH5Reader) and r.spec.name == "b0" and r.format == "keras3-weights-h5"
    r.close()
    out = convert_file(plain, tmp_path / "out", "--variant", "b0")
    assert out.name == "keras-efficientnetb0.safetensors"


_NO_TF = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("tensorflow", "keras", "tf_keras", "torch"):
            raise ImportError(f"{name} is blocked in this test")
sys.meta_path.insert(0, Block())
from converter.cli import main
rc = main(sys.argv[1:])
assert not {"tensorflow", "keras", "torch"} & set(sys.modules), sorted(sys.modules)
sys.exit(rc)
"""


def test_conversion_needs_neither_tensorflow_nor_keras(keras_cases, tmp_path):
    """A process where importing tensorflow, keras or torch fails converts the file to the same tensors."""
    import subprocess
    import sys

    from safetensors import safe_open

    src = keras_cases["b0"]["files"]["keras3"]
    proc = subprocess.run([sys.executable, "-c", _NO_TF, "--checkpoint", str(src), "--output-dir",
                           str(tmp_path / "a"), "--quiet"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    ref = convert_file(src, tmp_path / "b")
    with safe_open(str(tmp_path / "a" / ref.name), "np") as a, safe_open(str(ref), "np") as b:
        assert sorted(a.keys()) == sorted(b.keys()) and a.metadata() == b.metadata()
        for k in a.keys():
            np.testing.assert_array_equal(a.get_tensor(k), b.get_tensor(k))


def test_keras_file_into_timm(keras_cases, tmp_path):
    """--layout timm: the Keras weights run in the real timm (its tf_efficientnet_b0) to Keras's logits.

    timm runs in its own environment (EFFNET_LIBS_PYTHON, through tests/libs_check.py), as in
    tests/test_layouts.py: torchvision crashes in a process that imported TensorFlow.
    """
    import os
    import subprocess

    exe = os.environ.get("EFFNET_LIBS_PYTHON")
    if not exe:
        pytest.skip("EFFNET_LIBS_PYTHON is not set (make libs-env builds .venv-libs with timm; make test sets it)")
    from safetensors import safe_open

    from converter.metadata import decode

    case = keras_cases["b0"]
    rc = main(["--checkpoint", str(case["files"]["legacy"]), "--layout", "timm", "--output-dir",
               str(tmp_path / "out"), "--quiet"])
    assert rc == 0
    out = tmp_path / "out" / "keras-efficientnetb0.timm.safetensors"
    with safe_open(str(out), "np") as f:
        meta = decode(f.metadata())
    x = normalize(case["images"], meta["mean"], meta["std"]).transpose(0, 3, 1, 2)
    np.savez(tmp_path / "x.npz", x=np.ascontiguousarray(x, dtype=np.float32))
    (tmp_path / "jobs.json").write_text(json.dumps(
        [{"library": "timm", "model": "tf_efficientnet_b0", "num_classes": 1000, "file": str(out)}]))
    p = subprocess.run([exe, str(Path(__file__).with_name("libs_check.py")), "logits", "--jobs",
                        str(tmp_path / "jobs.json"), "--inputs", str(tmp_path / "x.npz"), "--out",
                        str(tmp_path / "y.npz")], capture_output=True, text=True, timeout=600,
                       env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert p.returncode == 0, p.stderr[-3000:]
    info = json.loads(p.stdout.strip().splitlines()[-1])["results"][0]
    assert info["ok"], info
    assert_parity(np.load(tmp_path / "y.npz")["0"].astype(np.float64), case["logits"], "b0 keras -> timm")
