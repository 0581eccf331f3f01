"""``--layout timm`` / ``--layout mmpretrain``: outputs the real libraries load strictly, same logits.

The libraries run in their own environment (EFFNET_LIBS_PYTHON, `make libs-env`: torchvision
segfaults in a process that imported TensorFlow) through tests/libs_check.py; the logits they
compute are compared here with our native model loaded from the native output.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from converter.families.efficientnet.arch import ARCHS
from converter.registry import get_arch
from converter.cli import main
from converter.convert import select
from converter.errors import ConversionError
from converter.loading import load_model, read_weights
from converter.mapping import expand, layouts, stride_groups, to_native
from converter.mappings.kinds import BN, BN_TRACKED
from helpers import lib_logits, libs, libs_python, make_checkpoint

MAIN_FAMILY = ["b0", "b1", "b2", "b3", "b4", "b5", "b6", "b7", "b8", "l2", "l2-475"]
LIB_LAYOUTS = ("timm", "mmpretrain")
MAX_REL_ERROR = 1e-5
RES = 64  # input size of the logits checks (any size works: TF 'SAME' padding in all three models)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("layouts")


@pytest.fixture(scope="module")
def lib_keys():
    """{library: {variant: [[key, shape], ...]}} of the real models, every variant, computed once."""
    p = libs("keys", *MAIN_FAMILY)
    return json.loads(p.stdout.strip().splitlines()[-1])


# ---- the tables against the real libraries' state_dicts (no conversion) ----

@pytest.mark.parametrize("layout", LIB_LAYOUTS)
@pytest.mark.parametrize("variant", MAIN_FAMILY)
def test_table_keys_and_shapes_equal_library(lib_keys, layout, variant):
    want = [(k, tuple(s)) for k, s in lib_keys[layout][variant]]
    got = [(e.key, e.shape) for e in expand(variant, layout)]
    assert set(got) == set(want), (sorted(set(got) - set(want))[:5], sorted(set(want) - set(got))[:5])
    assert got == want  # the libraries' own state_dict order, too


def test_tables_name_the_same_official_variables():
    """Every layout reads exactly the native layout's variables, each once, with the same TF shape."""
    for variant in ("b0", "b3", "l2"):
        native = sorted((e.tf_name, e.tf_shape, e.shape) for e in expand(variant))
        for layout in LIB_LAYOUTS:
            entries = expand(variant, layout)
            real = sorted((e.tf_name, e.tf_shape, e.shape) for e in entries if e.const is None)
            assert real == native
            consts = [e for e in entries if e.const is not None]
            # one num_batches_tracked per BN layer, int64 scalar 0, read from nothing
            bns = {e.key.rsplit(".", 1)[0] for e in entries if e.kind == BN_TRACKED}
            assert sorted(e.key for e in consts) == sorted(b + ".num_batches_tracked" for b in bns)
            assert all(e.tf_name == "" and e.shape == () and e.const == 0 and e.dtype == "int64" for e in consts)
        assert not any(e.kind == BN_TRACKED or e.const is not None for e in expand(variant))
        assert any(e.kind == BN for e in expand(variant))


def test_stride_groups_are_mmpretrains_layers():
    """b0: stages 3+4 and 5+6 share a group (their second stage starts with stride 1); the head is layers.6."""
    blocks = get_arch("b0").blocks()
    g = stride_groups(blocks)
    by_stage = {}
    for b in blocks:
        by_stage.setdefault(b.stage, []).append(g[b.index])
    assert [s[0][0] for _, s in sorted(by_stage.items())] == [1, 2, 3, 4, 4, 5, 5]
    assert by_stage[4][0] == (4, 3) and by_stage[6][0] == (5, 4)  # continues counting within the group
    assert "backbone.layers.6.conv.weight" in {e.key for e in expand("b0", "mmpretrain")}


def test_unknown_layout_is_one_line_error(root, tmp_path, capsys):
    prefix = make_checkpoint(root, "b0", calibration_resolution=RES)
    rc = main(["--variant", "b0", "--flavor", "aa", "--checkpoint", str(prefix), "--output-dir", str(tmp_path),
               "--layout", "keras", "--quiet"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err
    assert "unknown layout 'keras'" in err and "timm" in err and "mmpretrain" in err
    assert not list(tmp_path.iterdir())
    with pytest.raises(ConversionError, match="unknown layout"):
        expand("b0", "tf_efficientnet")


def test_variant_without_library_model_is_one_line_error(tmp_path, capsys):
    """timm has every variant; mmpretrain lacks Lite and CondConv, and its el does not hold EdgeTPU-L's weights."""
    for v in ARCHS:
        expand(v, "timm")
    lacking = [v for v in ARCHS if v.startswith(("lite", "condconv"))]
    for v in lacking:
        with pytest.raises(ConversionError, match=f"layout mmpretrain has no model for variant {v} "):
            expand(v, "mmpretrain")
    with pytest.raises(ConversionError, match="variant edgetpu-l: mmpretrain's arch el gives the first block 120 "
                                              "channels .* 128"):
        expand("edgetpu-l", "mmpretrain")
    for v in ("lite0", "edgetpu-l"):  # refused before the checkpoint is even looked at
        rc = main(["--variant", v, "--checkpoint", str(tmp_path / "model.ckpt"), "--output-dir", str(tmp_path),
                   "--layout", "mmpretrain", "--quiet"])
        err = capsys.readouterr().err.strip()
        assert rc == 2 and "\n" not in err and f"layout mmpretrain has no model for variant {v}" in err, err
    assert not list(tmp_path.iterdir())


class _DictReader:
    """A CheckpointReader over a dict (for the totality checks)."""

    prefix = "dict"

    def __init__(self, arrays):
        self.arrays = arrays

    def names(self):
        return list(self.arrays)

    def shape(self, name):
        return self.arrays[name].shape

    def dtype(self, name):
        return self.arrays[name].dtype

    def read(self, name):
        return self.arrays[name]


@pytest.mark.parametrize("layout", LIB_LAYOUTS)
def test_totality_kept_with_constants(layout):
    """num_batches_tracked reads nothing, and a missing or an extra variable is still an error."""
    spec = get_arch("b0")
    full = {e.tf_name: np.zeros(e.tf_shape, np.float32) for e in expand(spec)}
    full["global_step"] = np.zeros((), np.int64)
    sel = select(_DictReader(full), spec, layout=layout)
    assert len(sel.pairs) == len(full) - 1 and sorted(s for _, s in sel.pairs) == sorted(set(full) - {"global_step"})
    assert len(sel.constants) == sum(1 for e in expand(spec) if e.tf_name.endswith("/moving_mean"))
    name = next(n for n in full if n.endswith("blocks_3/tpu_batch_normalization/moving_mean"))
    with pytest.raises(ConversionError, match=r"1 missing \(.*blocks_3/tpu_batch_normalization/moving_mean"):
        select(_DictReader({k: v for k, v in full.items() if k != name}), spec, layout=layout)
    extra = dict(full, **{"efficientnet-b0/head/tpu_batch_normalization/num_batches_tracked": np.zeros((), np.int64)})
    with pytest.raises(ConversionError, match="1 unexpected"):
        select(_DictReader(extra), spec, layout=layout)


# ---- conversions loaded by the real libraries ----

def _convert(prefix, variant, flavor, out_dir, layout, fmt="both", extra=()):
    args = ["--variant", variant, "--checkpoint", str(prefix), "--output-dir", str(out_dir), "--format", fmt,
            "--quiet", "--force", *extra]
    if flavor:
        args += ["--flavor", flavor]
    if layout != "native":
        args += ["--layout", layout]
    rc = main(args)
    assert rc == 0
    return out_dir


def _inputs(tmp_path, native_file, n=2, res=RES, seed=1):
    """Synthetic images normalized as the file's metadata says (the calibration's distribution), NCHW."""
    from converter.synthetic import normalize, synthetic_images

    cfg = read_weights(native_file)[1]
    x = normalize(synthetic_images(res, n, seed=seed), cfg["mean"], cfg["std"]).transpose(0, 3, 1, 2).copy()
    path = tmp_path / "inputs.npz"
    np.savez(path, x=x)
    return x, path


def _native_logits(path, x):
    model = load_model(path)
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


def _lib_logits(tmp_path, jobs, x_path):
    """Run ``jobs`` ([library, model name, classes, file]) on ``x_path`` in the libs venv."""
    return lib_logits(tmp_path, [(*job, x_path) for job in jobs])


def _assert_same(got, ref, what):
    rel = float(np.linalg.norm(got - ref) / np.linalg.norm(ref))
    assert rel <= MAX_REL_ERROR, f"{what}: relative error {rel:.2e}"
    assert (got.argmax(1) == ref.argmax(1)).all(), what
    print(f"{what}: relative error {rel:.2e} vs the native model")  # the measured parity (pytest -s)
    return rel


CASES = [  # variant, flavor, classes, mmpretrain zoo name (get_model): b0 with 1000 classes, b2 with 10 (fine-tuned)
    ("b0", "aa", 1000, "efficientnet-b0_3rdparty_8xb32-aa_in1k"),
    ("b2", "advprop", 10, "efficientnet-b2_3rdparty_8xb32-aa-advprop_in1k"),
]


@pytest.mark.parametrize("variant,flavor,classes,zoo", CASES, ids=[c[0] for c in CASES])
def test_library_loads_strictly_same_logits(root, tmp_path, variant, flavor, classes, zoo):
    libs_python()
    prefix = make_checkpoint(root, variant, calibration_resolution=RES, num_classes=classes, flavor=flavor)
    name = f"efficientnet-{variant}_{flavor}"
    _convert(prefix, variant, flavor, tmp_path, "native", fmt="safetensors")
    x, x_path = _inputs(tmp_path, tmp_path / f"{name}.safetensors")
    ref = _native_logits(tmp_path / f"{name}.safetensors", x)
    assert ref.shape == (2, classes) and np.isfinite(ref).all()
    jobs = []
    for layout in LIB_LAYOUTS:
        _convert(prefix, variant, flavor, tmp_path, layout)
        files = [tmp_path / f"{name}.{layout}.safetensors", tmp_path / f"{name}.{layout}.pth"]
        for f in files:
            sd, meta = read_weights(f)
            assert meta["layout"] == layout and meta["variant"] == variant and meta["flavor"] == flavor
            assert sd[next(k for k in sd if k.endswith("num_batches_tracked"))].dtype == torch.int64
            # our own loader maps it back to the native model: the same logits, bit for bit
            with torch.no_grad():
                np.testing.assert_array_equal(load_model(f)(torch.from_numpy(x)).numpy(), ref)
            jobs.append((layout, f"tf_efficientnet_{variant}" if layout == "timm" else zoo, classes, f))
    jobs.append(("mmpretrain-get_model", zoo, classes, tmp_path / f"{name}.mmpretrain.pth"))
    assert sorted(torch.load(tmp_path / f"{name}.mmpretrain.pth", weights_only=True)) == ["meta", "state_dict"]
    assert "conv_stem.weight" in torch.load(tmp_path / f"{name}.timm.pth", weights_only=True)  # a plain state_dict

    logits, info = _lib_logits(tmp_path, jobs, x_path)
    assert all(r["ok"] for r in info), info
    for i, (lib, _, _, f) in enumerate(jobs):
        _assert_same(logits[str(i)], ref, f"{lib} {f.name}")
    # mmengine's checkpoint form, as load_checkpoint reads it
    assert info[3]["top_keys"] == ["meta", "state_dict"] and info[3]["meta_layout"] == "mmpretrain"


def test_l2_475_timm(root, tmp_path):
    """The largest model (NoisyStudent L2, EMA-only), 475 px release name, in timm's tf_efficientnet_l2."""
    libs_python()
    prefix = make_checkpoint(root, "l2", mode="ema-only", slots=False)
    _convert(prefix, "l2-475", None, tmp_path, "timm", fmt="safetensors")
    timm_file = tmp_path / "efficientnet-l2-475_noisystudent.timm.safetensors"
    x, x_path = _inputs(tmp_path, timm_file, n=1, res=32)
    # the reference: our native model, its keys from the native table (mapped through the official names)
    ref = _native_logits(timm_file, x)
    logits, info = _lib_logits(tmp_path, [("timm", "tf_efficientnet_l2", 1000, timm_file)], x_path)
    assert info[0]["ok"], info
    _assert_same(logits["0"], ref, "timm l2-475")


# ---- a wrong table row is caught by the libraries ----

def _swap_rows(rows, a, b):
    rows = list(rows)
    ia = next(i for i, r in enumerate(rows) if r[1].endswith(a))
    ib = next(i for i, r in enumerate(rows) if r[1].endswith(b))
    ra, rb = rows[ia], rows[ib]
    rows[ia], rows[ib] = (ra[0], rb[1]) + ra[2:], (rb[0], ra[1]) + rb[2:]
    return tuple(rows)


def test_wrong_row_fails_logits_or_strict_load(root, tmp_path, monkeypatch):
    libs_python()
    import converter.mappings.timm as table

    prefix = make_checkpoint(root, "b0", calibration_resolution=RES)
    _convert(prefix, "b0", "aa", tmp_path, "native", fmt="safetensors")
    x, x_path = _inputs(tmp_path, tmp_path / "efficientnet-b0_aa.safetensors")
    ref = _native_logits(tmp_path / "efficientnet-b0_aa.safetensors", x)

    # bn1 <-> bn2 of the expanded blocks: same keys and shapes, so strict loading passes; the logits do not
    swapped, misnamed = tmp_path / "swapped", tmp_path / "misnamed"
    monkeypatch.setattr(table, "BLOCK_EXPAND", _swap_rows(table.BLOCK_EXPAND, ".bn1", ".bn2"))
    _convert(prefix, "b0", "aa", swapped, "timm", fmt="safetensors")
    monkeypatch.undo()
    # a misnamed module: the strict load itself refuses the file
    monkeypatch.setattr(table, "HEAD", tuple((r[0], "conv_final") + r[2:] if r[1] == "conv_head" else r
                                             for r in table.HEAD))
    _convert(prefix, "b0", "aa", misnamed, "timm", fmt="safetensors")
    name = "efficientnet-b0_aa.timm.safetensors"
    logits, info = _lib_logits(tmp_path, [("timm", "tf_efficientnet_b0", 1000, swapped / name),
                                          ("timm", "tf_efficientnet_b0", 1000, misnamed / name)], x_path)
    assert info[0]["ok"]
    rel = float(np.linalg.norm(logits["0"] - ref) / np.linalg.norm(ref))
    assert rel > 1e-2, rel
    assert not info[1]["ok"] and "1" not in logits
    err = info[1]["error"]
    assert "Missing key(s)" in err and "conv_head.weight" in err and "conv_final.weight" in err, err


# ---- verify and the CLI on library layouts ----

def test_verify_maps_timm_output_back(root, tmp_path, capsys):
    """`convert-effnet verify` on a timm-layout file: re-keyed to the native model, checked against TensorFlow."""
    prefix = make_checkpoint(root, "b0", calibration_resolution=RES)
    _convert(prefix, "b0", "aa", tmp_path, "timm", fmt="safetensors")
    weights = tmp_path / "efficientnet-b0_aa.timm.safetensors"
    capsys.readouterr()
    rc = main(["verify", "--weights", str(weights), "--checkpoint", str(prefix), "--resolution", str(RES),
               "--num-images", "2", "--device", "cpu"])
    out = capsys.readouterr()
    assert rc == 0, out.err
    report = json.loads((tmp_path / "efficientnet-b0_aa.timm.verify.json").read_text())
    assert report["passed"] and report["rel_error"] <= 1e-4


def test_to_native_refuses_foreign_keys():
    spec = get_arch("b0")
    sd = {e.key: torch.zeros(e.shape) for e in expand(spec, "timm")}
    assert set(to_native(sd, spec, "timm")) == {e.key for e in expand(spec)}
    sd["extra.weight"] = torch.zeros(1)
    with pytest.raises(ConversionError, match="1 unexpected"):
        to_native(sd, spec, "timm")
    with pytest.raises(ConversionError, match="missing"):
        to_native({e.key: torch.zeros(e.shape) for e in expand(spec, "timm")}, spec, "mmpretrain")


def test_all_refuses_library_layout(capsys):
    rc = main(["--all", "--layout", "timm", "--output-dir", "unused"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err and "--all writes the native layout" in err


def test_layouts_registered():
    assert set(layouts()) >= {"native", "timm", "mmpretrain"}

