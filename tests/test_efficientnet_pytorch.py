"""``--layout efficientnet_pytorch``: files lukemelas' ``EfficientNet.from_name`` (efficientnet_pytorch
0.7.1) loads strictly, num_batches_tracked included, with TensorFlow's logits.

The library runs in the libs environment (EFFNET_LIBS_PYTHON, tests/libs_check.py: it imports only
torch, but lives there with the other libraries); its logits are compared here with the TensorFlow
reference (converter/tfref/reference.py) on generated official-layout checkpoints.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from converter.registry import get_arch
from converter.cli import main
from converter.errors import ConversionError
from converter.loading import read_weights
from converter.mapping import expand
from converter.mappings.kinds import BN_TRACKED
from converter.synthetic import normalize, synthetic_images
from converter.tfref import reference
from helpers import lib_logits, libs, libs_python, make_checkpoint

LAYOUT = "efficientnet_pytorch"
MAIN_FAMILY = ["b0", "b1", "b2", "b3", "b4", "b5", "b6", "b7", "b8", "l2", "l2-475"]
# its model names, stated here apart from the table (efficientnet_pytorch/model.py VALID_MODELS)
EP_MODEL = {**{f"b{n}": f"efficientnet-b{n}" for n in range(9)}, "l2": "efficientnet-l2",
            "l2-475": "efficientnet-l2"}
# the families its package cannot build: refused in one line before the checkpoint is looked at
REFUSED = ["lite0", "edgetpu-s", "condconv-b0-4e", "v2-s", "mnasnet-a1", "mixnet-s"]
RES = 64
# against TensorFlow in float64: at most this many times TensorFlow float32's own error (the float32 floor)
FLOOR_FACTOR = 3


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("efficientnet_pytorch")


def _convert(prefix, variant, flavor, out_dir, fmt="both", layout=LAYOUT):
    args = ["--variant", variant, "--checkpoint", str(prefix), "--output-dir", str(out_dir), "--format", fmt,
            "--quiet", "--force", "--layout", layout]
    if flavor:
        args += ["--flavor", flavor]
    assert main(args) == 0


def _inputs(path: Path, meta, res=RES, n=2, seed=1):
    """Synthetic images normalized as the file's metadata says: (NHWC, NCHW .npz path)."""
    x = normalize(synthetic_images(res, n, seed=seed), meta["mean"], meta["std"])
    np.savez(path, x=x.transpose(0, 3, 1, 2).copy())
    return x, path


def _rel(got, ref):
    return float(np.linalg.norm(got - ref) / np.linalg.norm(ref))


def _tf_logits(spec, prefix, x):
    """TensorFlow's logits in float64 (the truth here) and the float32 reference's own relative error to them."""
    get = reference.read_checkpoint_getter(str(prefix))
    ref64 = reference.forward(spec, get, x, device="cpu", dtype=np.float64)
    return ref64, _rel(reference.forward(spec, get, x, device="cpu"), ref64)


def _assert_float32_floor(got, ref64, floor, what):
    """``got`` (float32) is as close to TensorFlow's float64 logits as TensorFlow's own float32 ones are."""
    rel = _rel(got, ref64)
    print(f"{what}: relative error {rel:.2e} vs TensorFlow float64 (TF float32: {floor:.2e})")  # pytest -s
    assert rel <= FLOOR_FACTOR * floor + 1e-7 and (got.argmax(1) == ref64.argmax(1)).all(), (what, rel, floor)


# ---- the table against the real library's state_dicts (no conversion) ----

def test_table_keys_and_shapes_equal_library_for_every_v1_architecture():
    """B0-B8, L2 and L2-475: the table's keys, shapes and order are those of EfficientNet.from_name."""
    lib = json.loads(libs("keys", *MAIN_FAMILY).stdout.strip().splitlines()[-1])[LAYOUT]
    assert sorted(lib) == sorted(MAIN_FAMILY)
    for v in MAIN_FAMILY:
        want = [(k, tuple(s)) for k, s in lib[v]]
        got = [(e.key, e.shape) for e in expand(v, LAYOUT)]
        assert got == want, (v, sorted(set(got) ^ set(want))[:5])


def test_table_reads_the_native_variables_and_tracks_every_bn():
    for variant in ("b0", "b3", "l2"):
        native = sorted((e.tf_name, e.tf_shape, e.shape) for e in expand(variant))
        entries = expand(variant, LAYOUT)
        assert sorted((e.tf_name, e.tf_shape, e.shape) for e in entries if e.const is None) == native
        bns = {e.key.rsplit(".", 1)[0] for e in entries if e.kind == BN_TRACKED}
        consts = [e for e in entries if e.const is not None]
        assert sorted(e.key for e in consts) == sorted(b + ".num_batches_tracked" for b in bns)
        assert all(e.const == 0 and e.dtype == "int64" for e in consts)


def test_families_it_cannot_build_are_refused_in_one_line(tmp_path, capsys):
    for v in REFUSED:
        with pytest.raises(ConversionError, match=f"layout {LAYOUT} has no model for variant {v}"):
            expand(v, LAYOUT)
        # the checkpoint does not exist: refused before anything is read (V2 asks for its flavor first)
        flavor = ["--flavor", "1k"] if v.startswith("v2-") else []
        rc = main(["--variant", v, *flavor, "--checkpoint", str(tmp_path / "missing" / "model.ckpt"),
                   "--output-dir", str(tmp_path), "--layout", LAYOUT, "--quiet"])
        err = capsys.readouterr().err.strip()
        assert rc == 2 and "\n" not in err, err
        assert f"layout {LAYOUT} has no model for variant {v}" in err and "use --layout native" in err, err
    assert not list(tmp_path.iterdir())


# ---- conversions loaded by the real library, against TensorFlow ----

# variant, flavor, classes, make_checkpoint keyword arguments (b0 and b2 as tests/test_layouts.py's:
# one generated checkpoint each in a session's store)
CASES = [
    ("b0", "aa", 1000, {}),
    ("b2", "advprop", 10, {"num_classes": 10, "flavor": "advprop"}),  # AdvProp: x * 2/255 - 1
    ("b3", "noisystudent", 1000, {}),
]


@pytest.mark.parametrize("variant,flavor,classes,kw", CASES, ids=[c[0] for c in CASES])
def test_library_loads_strictly_tf_logits(root, tmp_path, variant, flavor, classes, kw):
    """.pth and .safetensors in EfficientNet.from_name(image_size=RES): strict load, TensorFlow's logits."""
    libs_python()
    prefix = make_checkpoint(root, variant, calibration_resolution=RES, **kw)
    _convert(prefix, variant, flavor, tmp_path)
    name = f"efficientnet-{variant}_{flavor}.{LAYOUT}"
    files = [tmp_path / f"{name}.safetensors", tmp_path / f"{name}.pth"]
    metas = []
    for f in files:
        sd, meta = read_weights(f)
        metas.append(meta)
        got = (meta["layout"], meta["variant"], meta["flavor"], meta["num_classes"])
        assert got == (LAYOUT, variant, flavor, classes)
        assert sd["_bn0.num_batches_tracked"].dtype == torch.int64 and "_fc.weight" in sd
    assert isinstance(torch.load(files[1], weights_only=True), dict)  # a plain state_dict
    meta = metas[0]
    if flavor == "advprop":  # [-1, 1] input: x / 255 * 2 - 1
        assert list(meta["mean"]) == list(meta["std"]) == [0.5, 0.5, 0.5]
    else:
        assert np.allclose(meta["mean"], (0.485, 0.456, 0.406)) and np.allclose(meta["std"], (0.229, 0.224, 0.225))
    x, x_path = _inputs(tmp_path / "x.npz", meta)
    spec = get_arch(variant).with_classes(classes)
    ref, floor = _tf_logits(spec, prefix, x)
    assert ref.shape == (2, classes) and np.isfinite(ref).all()

    model = EP_MODEL[variant]
    jobs = [(LAYOUT, model, classes, f, x_path, {"image_size": RES}) for f in files]
    jobs.append((LAYOUT, model, classes, files[0], x_path))  # built for its own size (b0 224, b2 260, b3 300)
    logits, info = lib_logits(tmp_path, jobs)
    assert all(r["ok"] for r in info), info
    for i, f in enumerate(files):
        _assert_float32_floor(logits[str(i)], ref, floor, f.name)
    # static 'SAME' pads: exact at RES without image_size= only where every strided conv sees inputs of the
    # same parity at both sizes (224 -> 112, 56, 28, 14 and 64 -> 32, 16, 8, 4: all even); b2 (65 px at its
    # third strided conv) and b3 (75, 19) are padded for odd inputs there
    assert info[2]["image_size"] == get_arch(variant).resolution
    if variant == "b0":
        _assert_float32_floor(logits["2"], ref, floor, "b0 built for 224 px")
    else:
        assert _rel(logits["2"], ref) > 1e-3


def test_l2_475_needs_image_size(root, tmp_path):
    """The 475 px NoisyStudent L2 (EMA-only): from_name("efficientnet-l2", image_size=...) gives TensorFlow's
    logits; the default (pads for 800 px) does not at an odd size."""
    libs_python()
    prefix = make_checkpoint(root, "l2", mode="ema-only", slots=False)  # as tests/test_layouts.py's
    _convert(prefix, "l2-475", None, tmp_path, fmt="safetensors")
    f = tmp_path / f"efficientnet-l2-475_noisystudent.{LAYOUT}.safetensors"
    meta = read_weights(f)[1]
    assert meta["variant"] == "l2-475" and list(meta["input_size"]) == [3, 475, 475]
    res = 33  # odd like 475; 800 is even: the stem pads differ
    x, x_path = _inputs(tmp_path / "x.npz", meta, res=res, n=1)
    ref, floor = _tf_logits(get_arch("l2-475"), prefix, x)
    logits, info = lib_logits(tmp_path, [(LAYOUT, "efficientnet-l2", 1000, f, x_path, {"image_size": res}),
                                         (LAYOUT, "efficientnet-l2", 1000, f, x_path)])
    assert all(r["ok"] for r in info), info
    _assert_float32_floor(logits["0"], ref, floor, f"l2-475 at {res} px")
    assert info[1]["image_size"] == 800 and _rel(logits["1"], ref) > 1e-3


def test_wrong_row_breaks_the_library_logits(root, tmp_path, monkeypatch):
    """_bn0 <-> _bn1 of the expanded blocks: same keys and shapes, the strict load passes, the logits do not."""
    libs_python()
    import converter.mappings.efficientnet_pytorch as table

    rows = list(table.BLOCK_EXPAND)
    a, b = (next(i for i, r in enumerate(rows) if r[1].endswith(s)) for s in ("._bn0", "._bn1"))
    rows[a], rows[b] = (rows[a][0], rows[b][1]) + rows[a][2:], (rows[b][0], rows[a][1]) + rows[b][2:]
    monkeypatch.setattr(table, "BLOCK_EXPAND", tuple(rows))
    prefix = make_checkpoint(root, "b0", calibration_resolution=RES)
    _convert(prefix, "b0", "aa", tmp_path, fmt="safetensors")
    f = tmp_path / f"efficientnet-b0_aa.{LAYOUT}.safetensors"
    x, x_path = _inputs(tmp_path / "x.npz", read_weights(f)[1])
    ref = _tf_logits(get_arch("b0"), prefix, x)[0]
    logits, info = lib_logits(tmp_path, [(LAYOUT, "efficientnet-b0", 1000, f, x_path, {"image_size": RES})])
    assert info[0]["ok"], info
    assert _rel(logits["0"], ref) > 1e-2


# ---- verify (--trace) and predict on these files, through the layout's declaration ----

def test_verify_and_trace(root, tmp_path, capsys):
    prefix = make_checkpoint(root, "b2", calibration_resolution=RES, num_classes=10, flavor="advprop")
    _convert(prefix, "b2", "advprop", tmp_path, fmt="pth")
    weights = tmp_path / f"efficientnet-b2_advprop.{LAYOUT}.pth"
    capsys.readouterr()
    rc = main(["verify", "--weights", str(weights), "--checkpoint", str(prefix), "--resolution", str(RES),
               "--num-images", "2", "--device", "cpu", "--trace"])
    out = capsys.readouterr()
    assert rc == 0, out.err
    report = json.loads((tmp_path / f"efficientnet-b2_advprop.{LAYOUT}.verify.json").read_text())
    assert report["passed"] and report["rel_error"] <= 1e-4
    rows = report["trace"]["rows"]
    assert rows and all(r["ok"] for r in rows) and report["trace"]["first_divergence"] is None


def test_predict_matches_the_library(root, tmp_path, capsys):
    """predict on the file (its metadata's preprocessing) ranks as efficientnet_pytorch's own model does."""
    libs_python()
    from PIL import Image

    from converter.preprocess import preprocess_batch

    prefix = make_checkpoint(root, "b2", calibration_resolution=RES, num_classes=10, flavor="advprop")
    _convert(prefix, "b2", "advprop", tmp_path, fmt="safetensors")
    weights = tmp_path / f"efficientnet-b2_advprop.{LAYOUT}.safetensors"
    rng = np.random.default_rng(5)
    img = tmp_path / "img.png"
    Image.fromarray(np.clip(rng.normal(128, 60, (150, 170, 3)), 0, 255).astype(np.uint8)).save(img)
    cfg = read_weights(weights)[1]
    x = preprocess_batch([str(img)], cfg, mode="official")
    raw = preprocess_batch([str(img)], dict(cfg, mean=[0.0] * 3, std=[1 / 255] * 3), mode="official")
    assert x.shape == (1, 3, 260, 260) and np.allclose(x, raw / 127.5 - 1, atol=1e-5)  # AdvProp's [-1, 1]
    np.savez(tmp_path / "x.npz", x=x)
    # at its own 260 px, from_name's default pads are TF 'SAME'
    logits, info = lib_logits(tmp_path, [(LAYOUT, "efficientnet-b2", 10, weights, tmp_path / "x.npz")])
    assert info[0]["ok"], info
    capsys.readouterr()
    assert main(["predict", str(img), "--weights", str(weights), "--json", "--device", "cpu", "--top-k", "3"]) == 0
    top = json.loads(capsys.readouterr().out)[0]["top"]
    want = np.argsort(-logits["0"][0])[:3]
    assert [t["index"] for t in top] == [int(i) for i in want]
    # the probabilities as log-probabilities (a random network's tail ones underflow float32); off its
    # calibration images its logits reach ~1e3, so float32's noise is ~1e-4 of them
    log_p = torch.log_softmax(torch.from_numpy(logits["0"][0].astype(np.float64)), 0).numpy()[want]
    np.testing.assert_allclose(np.log([t["prob"] for t in top]), log_p, rtol=2e-4, atol=1e-6)
