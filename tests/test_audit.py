"""``convert-effnet audit``: exact ports audit as exact; each known way a port goes wrong is named.

Real parts: generated official-layout checkpoints (TensorFlow), this toolkit's own outputs and
files written the way other converters write them, the real timm / mmpretrain / transformers in
their environment ($EFFNET_LIBS_PYTHON, converter/audit/driver.py), the TensorFlow reference in its
own process. Small: B0 at 64 px, one synthetic image for the model check.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from converter.cli import main
from converter.mapping import expand
from helpers import libs_python, load_checkpoint, make_checkpoint, torch_layout

RES = "64"  # the model check's input size (every strided conv sees an even input: TF 'SAME' = (0, 1))


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("audit")


@pytest.fixture(scope="module")
def ck(root):
    return make_checkpoint(root, "b0", calibration_resolution=64)


@pytest.fixture(scope="module")
def other_ck(root):
    return make_checkpoint(root, "b0", calibration_resolution=64, seed=1)


def _convert(ck, out: Path, layout: str, *extra: str) -> Path:
    assert main(["--variant", "b0", "--flavor", "aa", "--checkpoint", str(ck), "--layout", layout,
                 "--output-dir", str(out), "--quiet", *extra]) == 0
    return next(p for p in sorted(out.iterdir()) if not p.name.endswith(".json"))


@pytest.fixture(scope="module")
def outputs(root, ck):
    return {lay: _convert(ck, root / lay, lay) for lay in ("native", "timm", "mmpretrain", "transformers")}


def audit(capsys, tmp_path, *argv, code=None):
    """Run the audit; (exit status, JSON report, stdout lines)."""
    out = tmp_path / f"audit-{len(list(tmp_path.iterdir()))}.json"
    rc = main(["audit", *map(str, argv), "--json", str(out)])
    lines = capsys.readouterr().out.strip().splitlines()
    if code is not None:
        assert rc == code, "\n".join(lines)
    return rc, (json.loads(out.read_text()) if out.exists() else None), lines


def total(report):
    return sum(report["weights"].values())


# ---- exact ports ----

@pytest.mark.parametrize("layout", ["native", "timm", "mmpretrain", "transformers"])
def test_own_outputs_audit_as_exact(ck, outputs, layout, tmp_path, capsys, monkeypatch):
    """Our own outputs: every official tensor its EMA twin, the library's model within float32 noise of the
    TF reference at every stage, the declared preprocessing the official eval's; exit 0."""
    if layout != "native":
        monkeypatch.setenv("EFFNET_LIBS_PYTHON", libs_python())
    rc, r, lines = audit(capsys, tmp_path, "--checkpoint", ck, "--weights", outputs[layout], "--resolution", RES,
                         "--num-images", "1", code=0)
    assert r["verdict"] == "exact" and lines[-1].startswith("verdict: EXACT")
    assert r["layout"] == layout and r["variant"] == "b0"  # found from the keys
    assert r["weights"] == {"ema": 311, "raw": 0, "neither": 0, "missing": 0} and not r["weights_extras"]
    assert r["first_divergence"] is None and r["model"]["exact"] is True
    stages = [row["official"] for row in r["model"]["rows"] if row["kind"] == "stage"]
    assert stages[0] == "efficientnet-b0/stem" and "efficientnet-b0/blocks_15" in stages  # every stage compared
    assert all(row["ok"] for row in r["model"]["rows"])
    assert not [d for d in r["preprocessing"] if d["counts"]]
    assert r["provenance"]["same"] is True  # the metadata names this very checkpoint (sha256)


# ---- weights ----

def _naive_state_dict(ck, layout: str, ema: bool, consts: bool = True):
    """What a naive converter writes: the table's keys filled straight from the checkpoint by name (raw
    variables unless ``ema``), re-laid by the independent rules of helpers.torch_layout; no metadata;
    without ``consts`` no num_batches_tracked (the seed's converter copies the variables alone)."""
    reader = load_checkpoint(ck)
    sd = {}
    for e in expand("b0", layout):
        if e.const is not None:
            if consts:
                sd[e.key] = torch.tensor(e.const)
            continue
        name = e.tf_name + ("/ExponentialMovingAverage" if ema else "")
        sd[e.key] = torch.from_numpy(np.ascontiguousarray(torch_layout(e.tf_name, reader.get_tensor(name))))
    return sd


def test_seed_converter_like_raw_weights(ck, tmp_path, capsys, monkeypatch):
    """An mmpretrain state_dict as the seed's tools/model_converters/efficientnet_to_mmpretrain.py writes it
    (torch.save of the raw variables under mmpretrain's keys, no num_batches_tracked, no metadata): every tensor "raw",
    the layout found from its keys, the model exact against the reference on the raw weights; exit 3."""
    monkeypatch.setenv("EFFNET_LIBS_PYTHON", libs_python())
    f = tmp_path / "efficientnet-b0_seed.pth"
    torch.save(_naive_state_dict(ck, "mmpretrain", ema=False, consts=False), f)
    rc, r, lines = audit(capsys, tmp_path, "--checkpoint", ck, "--weights", f, "--flavor", "aa", "--resolution", RES,
                         "--num-images", "1", code=3)
    assert r["layout"] == "mmpretrain" and r["verdict"] == "differs"
    assert r["weights"] == {"ema": 0, "raw": 311, "neither": 0, "missing": 0}
    assert r["model"]["exact"] is True and r["model"]["reference_weights"] == "raw"
    assert r["weights_effect"]["rel_logit_change"] > 1e-3  # raw for EMA changes the logits
    assert "311 raw" in "\n".join(lines)


def test_weights_of_another_checkpoint_are_neither(ck, other_ck, root, tmp_path, capsys, monkeypatch):
    """A file converted from another checkpoint: "neither" everywhere, each with its relative difference;
    the library's model itself is exact (the reference computes with the file's own weights)."""
    monkeypatch.setenv("EFFNET_LIBS_PYTHON", libs_python())
    f = _convert(other_ck, root / "other", "timm")
    rc, r, lines = audit(capsys, tmp_path, "--checkpoint", ck, "--weights", f, "--resolution", RES, "--num-images",
                         "1", code=3)
    assert r["weights"]["neither"] >= 0.95 * total(r) and r["weights"]["ema"] + r["weights"]["raw"] <= 0.05 * total(r)
    rows = [x for x in r["weights_rows"] if x["class"] == "neither"]
    assert all(x["rel_diff"] > 1e-3 for x in rows)
    assert r["model"]["exact"] is True and r["model"]["reference_weights"] == "the file's own"
    assert r["first_divergence"] is None
    assert r["provenance"]["same"] is False and "not this checkpoint" in "\n".join(lines)


def test_weights_table_classifies_each_tensor(ck, outputs, tmp_path):
    """Weights alone (no TF, no library): a raw copy, one changed tensor, a missing and an extra key."""
    from converter.audit.files import read_file
    from converter.audit.weights import classify
    from converter.mapping import resolve_names
    from converter.registry import get_arch
    from converter.sources import Source

    af = read_file(outputs["timm"])
    src = Source.open(ck)
    try:
        spec = get_arch("b0")
        entries = resolve_names(spec, expand(spec, "timm"), src.reader.names())
        t = dict(af.tensors)
        raw = src.reader.read("efficientnet-b0/stem/conv2d/kernel")
        t["conv_stem.weight"] = np.ascontiguousarray(raw.transpose(3, 2, 0, 1))
        t["bn1.weight"] = t["bn1.weight"] * np.float32(1.0 + 2 ** -20)  # one ulp-ish change
        del t["classifier.bias"]
        t["extra.weight"] = np.zeros(3, np.float32)
        w = classify(src.reader, entries, t)
    finally:
        src.close()
    by = {x["official"]: x for x in w["rows"]}
    assert by["efficientnet-b0/stem/conv2d/kernel"]["class"] == "raw"
    assert by["efficientnet-b0/stem/tpu_batch_normalization/gamma"]["class"] == "neither"
    assert 0 < by["efficientnet-b0/stem/tpu_batch_normalization/gamma"]["rel_diff"] < 1e-5
    assert by["efficientnet-b0/head/dense/bias"]["class"] == "missing"
    assert w["extras"] == ["extra.weight"]
    assert w["counts"] == {"ema": 308, "raw": 1, "neither": 1, "missing": 1}


# ---- the model ----

def test_symmetric_padding_named_at_the_stem_conv(ck, outputs, tmp_path, capsys, monkeypatch):
    """timm's tf_efficientnet_b0 built with symmetric padding (pad_type '', as timm's efficientnet_b0): the
    first divergence is the stem's strided conv, diagnosed as padding and confirmed by TF 'SAME'."""
    monkeypatch.setenv("EFFNET_LIBS_PYTHON", libs_python())
    rc, r, lines = audit(capsys, tmp_path, "--checkpoint", ck, "--weights", outputs["timm"], "--model-kwargs",
                         '{"pad_type": ""}', "--resolution", RES, "--num-images", "1", code=3)
    fd = r["first_divergence"]
    assert "stem" in fd["official"] and fd["layer"] == "efficientnet-b0/stem/conv2d" and fd["module"] == "conv_stem"
    causes = {d["cause"]: d for d in r["diagnosis"]}
    assert set(causes) == {"padding"} and causes["padding"]["confirmed"]
    assert r["weights"]["ema"] == total(r)
    assert any("diagnosis: padding (confirmed)" in line for line in lines)


def test_efficientnet_b0_padding_and_epsilon(ck, outputs, tmp_path, capsys, monkeypatch):
    """timm's efficientnet_b0 (symmetric padding and BN eps 1e-5) with the official weights: both named,
    confirmed together."""
    monkeypatch.setenv("EFFNET_LIBS_PYTHON", libs_python())
    rc, r, lines = audit(capsys, tmp_path, "--checkpoint", ck, "--weights", outputs["timm"], "--model",
                         "efficientnet_b0", "--resolution", RES, "--num-images", "1", code=3)
    causes = {d["cause"]: d for d in r["diagnosis"]}
    assert set(causes) == {"padding", "bn_epsilon"} and all(d["confirmed"] for d in causes.values())
    assert r["model"]["variants"]["same+eps"]["exact"] and not r["model"]["variants"]["same"]["exact"]


def test_wrong_activation_named(ck, outputs, tmp_path, capsys, monkeypatch):
    """ReLU where the official model has swish: the stem's output (after its activation) diverges first, its
    batch norm before it does not; diagnosed as the activation, confirmed by the official one."""
    monkeypatch.setenv("EFFNET_LIBS_PYTHON", libs_python())
    rc, r, lines = audit(capsys, tmp_path, "--checkpoint", ck, "--weights", outputs["timm"], "--model-kwargs",
                         '{"act_layer": "relu"}', "--resolution", RES, "--num-images", "1", code=3)
    fd = r["first_divergence"]
    assert fd["kind"] == "stage" and fd["official"] == "efficientnet-b0/stem"
    assert [row["ok"] for row in r["model"]["rows"][:2]] == [True, True]  # the stem's conv and BN are exact
    assert {d["cause"] for d in r["diagnosis"]} == {"activation"} and r["diagnosis"][0]["confirmed"]


def test_wrong_epsilon_and_preprocessing_differences_timm(ck, outputs, tmp_path, capsys, monkeypatch):
    """BN eps 1e-5: the stem's batch norm diverges first, diagnosed as epsilon; a pretrained_cfg with a
    dropped crop, bilinear resizing and other mean/std: each named with its effect on the logits, measured on
    the user's photo (--images: also the model check's input, through TensorFlow's official preprocessing)."""
    from PIL import Image

    from converter.synthetic import synthetic_images

    monkeypatch.setenv("EFFNET_LIBS_PYTHON", libs_python())
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"crop_pct": 1.0, "interpolation": "bilinear", "mean": [0.5] * 3, "std": [0.5] * 3}))
    photo = tmp_path / "photo.jpg"
    Image.fromarray(synthetic_images(300, 4, seed=3)[3][:240].astype(np.uint8)).save(photo, quality=90)
    rc, r, lines = audit(capsys, tmp_path, "--checkpoint", ck, "--weights", outputs["timm"], "--model-kwargs",
                         '{"bn_eps": 1e-5}', "--pretrained-cfg", cfg, "--resolution", RES, "--images", photo, code=3)
    assert r["model"]["images"] == [str(photo)] and r["preprocessing_figures"]["images"] == [str(photo)]
    fd = r["first_divergence"]
    assert fd["kind"] == "batch norm" and "stem" in fd["official"] and fd["module"] == "bn1"
    causes = {d["cause"]: d for d in r["diagnosis"]}
    assert set(causes) == {"bn_epsilon"} and causes["bn_epsilon"]["confirmed"]
    diffs = {d["field"]: d for d in r["preprocessing"] if d["counts"]}
    assert set(diffs) == {"crop_pct", "interpolation", "mean", "std"}
    assert diffs["crop_pct"]["declared"] == 1.0 and diffs["interpolation"]["declared"] == "bilinear"
    for d in diffs.values():
        assert d["effect"]["rel_logit_change"] > 0
    assert r["preprocessing_figures"]["whole_pipeline"]["rel_logit_change"] > diffs["interpolation"]["effect"][
        "rel_logit_change"]


def test_transformers_std_twice_and_epsilon(ck, outputs, tmp_path, capsys, monkeypatch):
    """A transformers folder whose processor has include_top on (the std applied twice) and whose config
    says batch_norm_eps 1e-5: both named."""
    import shutil

    monkeypatch.setenv("EFFNET_LIBS_PYTHON", libs_python())
    folder = tmp_path / "hf"
    shutil.copytree(outputs["transformers"], folder)
    for name, change in (("preprocessor_config.json", {"include_top": True}), ("config.json", {"batch_norm_eps": 1e-5})):
        p = folder / name
        p.write_text(json.dumps({**json.loads(p.read_text()), **change}))
    rc, r, lines = audit(capsys, tmp_path, "--checkpoint", ck, "--weights", folder, "--resolution", RES,
                         "--num-images", "1", code=3)
    diffs = {d["field"]: d for d in r["preprocessing"] if d["counts"]}
    assert set(diffs) == {"std"} and "twice" in diffs["std"]["what"]
    assert np.allclose(diffs["std"]["declared"], np.square([0.229, 0.224, 0.225]), rtol=1e-6)
    assert {d["cause"] for d in r["diagnosis"]} == {"bn_epsilon"}


# ---- bad input ----

def test_bad_input_is_one_line_exit_2(ck, outputs, tmp_path, capsys):
    for argv, expect in (
            (["--weights", tmp_path / "nope.pth"], "no such file"),
            (["--weights", ck.parent / "model.ckpt.index"], "cannot read"),
            (["--weights", outputs["timm"], "--layout", "mmpretrain"], "fit no layout"),
            (["--weights", outputs["timm"], "--resolution", "8"], "--resolution 8"),
            (["--weights", outputs["timm"], "--json", tmp_path / "no" / "r.json"], "does not exist"),
    ):
        rc = main(["audit", "--checkpoint", str(ck), *map(str, argv)])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1 and expect in err[0], err


def test_keras_h5_with_the_official_weights(ck, tmp_path, capsys):
    """A keras.applications EfficientNetB0 .h5 holding the checkpoint's EMA weights (its Normalization the
    ImageNet one, as keras.applications' weights='imagenet' stores it): weights exact under the official
    names, preprocessing the official eval's; the model check is not run (no PyTorch library)."""
    import keras
    from keras.src.legacy.saving import legacy_h5_format
    import h5py

    from converter.checkpoint import IMAGENET_MEAN
    from converter.sources.keras import IMAGENET_STDDEV_RGB, KerasH5Reader

    model = keras.applications.EfficientNetB0(weights=None, input_shape=(64, 64, 3), classifier_activation=None)
    first = tmp_path / "blank.h5"
    with h5py.File(first, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, model)
    reader = KerasH5Reader(first)
    official = {reader.keras_name(n): n for n in reader.names()}
    reader.close()
    values = load_checkpoint(ck)
    set_ = 0
    for layer in model.layers:
        if type(layer).__name__ == "Normalization":
            ws = layer.get_weights()
            layer.set_weights([np.float32(IMAGENET_MEAN), np.float32(IMAGENET_STDDEV_RGB), ws[2]])
            layer.finalize_state()
            continue
        for w in layer.weights:
            name = official.get(f"{layer.name}/{w.name}")
            if name is not None:
                w.assign(values.get_tensor(name + "/ExponentialMovingAverage"))
                set_ += 1
    assert set_ == 311
    f = tmp_path / "efficientnet_b0.h5"
    with h5py.File(f, "w") as h:
        legacy_h5_format.save_weights_to_hdf5_group(h, model)
    rc, r, lines = audit(capsys, tmp_path, "--checkpoint", ck, "--weights", f, "--flavor", "aa", code=0)
    assert r["layout"] == "keras" and r["weights"] == {"ema": 311, "raw": 0, "neither": 0, "missing": 0}
    assert r["model"]["exact"] is None and "not run" in "\n".join(lines)
    assert not [d for d in r["preprocessing"] if d["counts"]]


def test_checkpoint_without_ema_twins(ck, tmp_path):
    """A checkpoint saved without EMA twins: its raw variables are what the official eval restores, so a
    file holding them is the official weights ("ema"), not "raw"."""
    from converter.audit.files import read_file
    from converter.audit.weights import classify
    from converter.mapping import resolve_names
    from converter.registry import get_arch
    from converter.sources import Source
    from helpers import write_checkpoint

    values = load_checkpoint(ck)
    names = [n for n in values.get_variable_to_shape_map() if "ExponentialMovingAverage" not in n
             and "/RMSProp" not in n]
    plain = write_checkpoint(tmp_path / "plain" / "model.ckpt", {n: values.get_tensor(n) for n in names})
    f = _convert(plain, tmp_path / "out", "timm")
    src = Source.open(plain)
    try:
        spec = get_arch("b0")
        w = classify(src.reader, resolve_names(spec, expand(spec, "timm"), src.reader.names()), read_file(f).tensors)
    finally:
        src.close()
    assert w["counts"] == {"ema": 311, "raw": 0, "neither": 0, "missing": 0}


def test_efficientnet_pytorch_output(ck, root, tmp_path, capsys, monkeypatch):
    """--layout efficientnet_pytorch: EfficientNet.from_name's model (its static 'SAME' pads for the check's
    size) exact tap by tap; its stem (a bare BN, swish applied functionally) compared by its conv and BN taps;
    no preprocessing declared: not checked, said."""
    monkeypatch.setenv("EFFNET_LIBS_PYTHON", libs_python())
    f = _convert(ck, root / "ep", "efficientnet_pytorch")
    rc, r, lines = audit(capsys, tmp_path, "--checkpoint", ck, "--weights", f, "--resolution", RES, "--num-images", "1",
                         code=0)
    assert r["layout"] == "efficientnet_pytorch" and r["model"]["exact"] is True
    rows = r["model"]["rows"]
    assert [x["module"] for x in rows[:2]] == ["_conv_stem", "_bn0"] and all(x["ok"] for x in rows)
    assert "efficientnet-b0/blocks_15" in [x["official"] for x in rows]
    assert r["exact"]["preprocessing"] is None and "preprocessing: not checked" in "\n".join(lines)
