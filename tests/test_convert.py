"""End-to-end conversion through the CLI on generated official-layout checkpoints."""
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from converter import load_model
from converter.families.efficientnet.arch import ARCHS
from converter.cli import main
from converter.mapping import expand
from helpers import BucketServer, load_checkpoint, make_checkpoint, torch_layout, write_checkpoint


EMA = "/ExponentialMovingAverage"


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("ckpts")


def _source_values(prefix, names):
    r = load_checkpoint(str(prefix))
    return {n: r.get_tensor(n) for n in names}


def _check_values(out_file, prefix, variant, use_ema=True):
    """Every output tensor equals its official variable (EMA twin) in PyTorch layout."""
    r = load_checkpoint(str(prefix))
    have = set(r.get_variable_to_shape_map())
    entries = expand(variant)
    with safe_open(str(out_file), framework="np") as f:
        assert sorted(f.keys()) == sorted(e.key for e in entries)
        for e in entries:
            src = e.tf_name + EMA if use_ema and e.tf_name + EMA in have else e.tf_name
            np.testing.assert_array_equal(f.get_tensor(e.key), torch_layout(e.tf_name, r.get_tensor(src)), err_msg=e.key)


# the main family; Lite, EdgeTPU and CondConv convert in tests/test_family.py
VARIANTS = [v for v in ARCHS if v != "l2-475" and ARCHS[v].family == "efficientnet"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_convert_every_variant(variant, root, tmp_path, capsys):
    big = variant in ("b7", "b8", "l2")
    mode = "ema-only" if variant == "l2" else "full"
    prefix = make_checkpoint(root, variant, mode=mode, slots=not big)
    flavor = {"b8": "advprop", "l2": "noisystudent"}.get(variant, "aa")
    rc = main(["--variant", variant, "--flavor", flavor, "--checkpoint", str(prefix),
               "--output-dir", str(tmp_path), "--quiet"])
    assert rc == 0, capsys.readouterr().err
    out = tmp_path / f"efficientnet-{variant}_{flavor}.safetensors"
    _check_values(out, prefix, variant)
    with safe_open(str(out), framework="np") as f:
        meta = f.metadata()
    assert meta["variant"] == variant and meta["flavor"] == flavor and meta["ema"] == "true"
    if variant == "l2":  # the 475 px release converts from the same layout
        rc = main(["--variant", "l2-475", "--checkpoint", str(prefix), "--output-dir", str(tmp_path), "--quiet"])
        assert rc == 0
        with safe_open(str(tmp_path / "efficientnet-l2-475_noisystudent.safetensors"), framework="np") as f:
            assert json.loads(f.metadata()["input_size"]) == [3, 475, 475]


def test_metadata_and_both_formats(root, tmp_path):
    prefix = make_checkpoint(root, "b0")
    rc = main(["--variant", "b0", "--flavor", "advprop", "--checkpoint", str(prefix.parent),
               "--output-dir", str(tmp_path), "--format", "both", "--quiet"])
    assert rc == 0
    st, pth = tmp_path / "efficientnet-b0_advprop.safetensors", tmp_path / "efficientnet-b0_advprop.pth"
    sd = torch.load(pth, weights_only=True)
    with safe_open(str(st), framework="pt") as f:
        assert sorted(sd) == sorted(f.keys())
        for k in f.keys():
            assert torch.equal(sd[k], f.get_tensor(k))
        meta = f.metadata()
    assert set(meta) >= {"variant", "flavor", "input_size", "mean", "std", "crop_pct", "interpolation", "ema",
                         "source", "source_sha256", "converter_version"}
    assert json.loads(meta["mean"]) == [0.5, 0.5, 0.5] and json.loads(meta["std"]) == [0.5, 0.5, 0.5]
    assert json.loads(meta["input_size"]) == [3, 224, 224]
    assert abs(json.loads(meta["crop_pct"]) - 0.875) < 1e-12 and meta["interpolation"] == "bicubic"
    # sha256 of the .index then the data shard(s), hashed beside the conversion and patched in
    files = [Path(str(prefix) + ".index")] + sorted(prefix.parent.glob(prefix.name + ".data-*"))
    assert meta["source_sha256"] == hashlib.sha256(b"".join(f.read_bytes() for f in files)).hexdigest()
    for path in (st, pth):
        assert load_model(path).pretrained_cfg["source_sha256"] == meta["source_sha256"]
    for path in (st, pth):
        m = load_model(path)
        assert not m.training
        assert m.pretrained_cfg["mean"] == [0.5, 0.5, 0.5] and m.pretrained_cfg["variant"] == "b0"
        assert m.pretrained_cfg["flavor"] == "advprop" and m.pretrained_cfg["ema"] is True
        w = m.state_dict()["blocks.1.expand_conv.weight"].numpy()
        ema = _source_values(prefix, ["efficientnet-b0/blocks_1/conv2d/kernel" + EMA])
        np.testing.assert_array_equal(w, ema["efficientnet-b0/blocks_1/conv2d/kernel" + EMA].transpose(3, 2, 0, 1))


def test_no_ema_takes_raw_values(root, tmp_path):
    prefix = make_checkpoint(root, "b0")
    assert main(["--variant", "b0", "--flavor", "aa", "--checkpoint", str(prefix), "--output-dir", str(tmp_path),
                 "--no-ema", "--quiet"]) == 0
    out = tmp_path / "efficientnet-b0_aa.safetensors"
    _check_values(out, prefix, "b0", use_ema=False)
    with safe_open(str(out), framework="np") as f:
        assert f.metadata()["ema"] == "false"
        # raw and EMA really differ, so this test can tell them apart
        r = load_checkpoint(str(prefix))
        name = "efficientnet-b0/head/tpu_batch_normalization/moving_mean"
        assert not np.array_equal(r.get_tensor(name), r.get_tensor(name + EMA))


def test_ema_only_and_raw_only(root, tmp_path, capsys):
    ema_only = make_checkpoint(root, "b0", mode="ema-only")
    assert main(["--variant", "b0", "--flavor", "aa", "--checkpoint", str(ema_only), "--output-dir", str(tmp_path / "a"), "--quiet"]) == 0
    _check_values(tmp_path / "a" / "efficientnet-b0_aa.safetensors", ema_only, "b0")
    rc = main(["--variant", "b0", "--flavor", "aa", "--checkpoint", str(ema_only), "--output-dir", str(tmp_path / "b"), "--no-ema", "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and "only EMA" in err and not (tmp_path / "b" / "efficientnet-b0_aa.safetensors").exists()
    raw_only = make_checkpoint(root, "b0", mode="raw-only")
    assert main(["--variant", "b0", "--flavor", "aa", "--checkpoint", str(raw_only), "--output-dir", str(tmp_path / "c"), "--quiet"]) == 0
    assert "no ExponentialMovingAverage twins" in capsys.readouterr().err
    out = tmp_path / "c" / "efficientnet-b0_aa.safetensors"
    _check_values(out, raw_only, "b0", use_ema=False)
    with safe_open(str(out), framework="np") as f:
        assert f.metadata()["ema"] == "false"


def _err_line(capsys, warnings_allowed=False):
    err = capsys.readouterr().err.strip().splitlines()
    assert not any("Traceback" in l for l in err), err
    errors = [l for l in err if l.startswith("convert-effnet: error: ")]
    assert len(errors) == 1 and err[-1] == errors[0], err  # one error line, last
    if not warnings_allowed:
        assert len(err) == 1, err
    return errors[0]


def test_wrong_variant_names_the_scope(root, tmp_path, capsys):
    prefix = make_checkpoint(root, "b0")
    rc = main(["--variant", "b1", "--flavor", "aa", "--checkpoint", str(prefix), "--output-dir", str(tmp_path)])
    line = _err_line(capsys)
    assert rc == 2 and "scope is efficientnet-b0" in line and "--variant b0" in line
    assert list(tmp_path.iterdir()) == []


def test_missing_file(tmp_path, capsys):
    rc = main(["--variant", "b0", "--flavor", "aa", "--checkpoint", str(tmp_path / "nope"), "--output-dir", str(tmp_path)])
    assert rc == 2 and "nope" in _err_line(capsys)


def test_truncated_data_file(root, tmp_path, capsys):
    prefix = make_checkpoint(root, "b0")
    bad = tmp_path / "bad"
    shutil.copytree(prefix.parent, bad)
    data = bad / "model.ckpt.data-00000-of-00001"
    with open(data, "r+b") as f:
        f.truncate(data.stat().st_size // 2)
    out = tmp_path / "out"
    rc = main(["--variant", "b0", "--flavor", "aa", "--checkpoint", str(bad), "--output-dir", str(out)])
    line = _err_line(capsys)
    assert rc == 2 and ("truncated" in line or "corrupt" in line)
    assert not out.exists() or list(out.iterdir()) == []  # nothing half written, no temp files


def _rewrite(prefix, dest, edit):
    """Copy a checkpoint with edit(dict name->value) applied (written by TensorFlow)."""
    r = load_checkpoint(str(prefix))
    values = {n: r.get_tensor(n) for n in r.get_variable_to_shape_map()}
    edit(values)
    dest.mkdir(parents=True)
    return write_checkpoint(dest / "model.ckpt", values)


def test_nonfinite_weights_refused_unless_allowed(root, tmp_path, capsys):
    name = "efficientnet-b0/head/conv2d/kernel" + EMA

    def poison(v):
        v[name] = v[name].copy()
        v[name][0, 0, 0, 0] = np.nan

    bad = _rewrite(make_checkpoint(root, "b0"), tmp_path / "nan", poison)
    out = tmp_path / "out"
    rc = main(["--variant", "b0", "--flavor", "aa", "--checkpoint", str(bad), "--output-dir", str(out)])
    line = _err_line(capsys)
    assert rc == 2 and "non-finite" in line and "--allow-nonfinite" in line
    assert list(out.iterdir()) == []  # the failure came mid-stream: no partial file, no temp file
    assert main(["--variant", "b0", "--flavor", "aa", "--checkpoint", str(bad), "--output-dir", str(out),
                 "--allow-nonfinite", "--quiet"]) == 0
    with safe_open(str(out / "efficientnet-b0_aa.safetensors"), framework="np") as f:
        assert np.isnan(f.get_tensor("head.conv.weight")[0, 0, 0, 0])


def test_unexpected_missing_and_misshaped_variables_listed(root, tmp_path, capsys):
    def edit(v):
        v["efficientnet-b0/blocks_3/extra_layer/kernel"] = np.zeros(3, np.float32)
        for n in [n for n in v if n.startswith("efficientnet-b0/blocks_2/se/conv2d_1/bias")]:
            del v[n]
        for n in [n for n in v if n.startswith("efficientnet-b0/head/dense/bias")]:
            v[n] = np.zeros(7, np.float32)

    bad = _rewrite(make_checkpoint(root, "b0"), tmp_path / "bad", edit)
    rc = main(["--variant", "b0", "--flavor", "aa", "--checkpoint", str(bad), "--output-dir", str(tmp_path / "o")])
    line = _err_line(capsys)
    assert rc == 2
    assert "1 missing (efficientnet-b0/blocks_2/se/conv2d_1/bias)" in line
    assert "1 unexpected (efficientnet-b0/blocks_3/extra_layer/kernel)" in line
    assert "efficientnet-b0/head/dense/bias is [7] not [1000]" in line


def test_existing_output_kept_unless_force(root, tmp_path, capsys):
    prefix = make_checkpoint(root, "b0")
    out = tmp_path / "efficientnet-b0_aa.safetensors"
    out.write_bytes(b"precious")
    rc = main(["--variant", "b0", "--flavor", "aa", "--checkpoint", str(prefix), "--output-dir", str(tmp_path)])
    assert rc == 2 and "--force" in _err_line(capsys)
    assert out.read_bytes() == b"precious"
    assert main(["--variant", "b0", "--flavor", "aa", "--checkpoint", str(prefix), "--output-dir", str(tmp_path),
                 "--force", "--quiet"]) == 0
    _check_values(out, prefix, "b0")


def test_official_tarball_input(root, tmp_path):
    from converter.tfref.generate import make_tarball

    prefix = make_checkpoint(root, "b0")
    tarball = tmp_path / "efficientnet-b0.tar.gz"
    make_tarball(str(prefix), str(tarball), "noisy_student_efficientnet-b0")
    out = tmp_path / "out"
    env_cache = os.environ.get("EFFNET_CACHE")
    os.environ["EFFNET_CACHE"] = str(tmp_path / "cache")
    try:
        assert main(["--variant", "b0", "--flavor", "noisystudent", "--checkpoint", str(tarball),
                     "--output-dir", str(out), "--quiet"]) == 0
    finally:
        if env_cache is None:
            os.environ.pop("EFFNET_CACHE")
        else:
            os.environ["EFFNET_CACHE"] = env_cache
    out_file = out / "efficientnet-b0_noisystudent.safetensors"
    _check_values(out_file, prefix, "b0")
    import hashlib

    with safe_open(str(out_file), framework="np") as f:
        assert f.metadata()["source_sha256"] == hashlib.sha256(tarball.read_bytes()).hexdigest()


def test_flavor_required_with_checkpoint(root, tmp_path, capsys):
    prefix = make_checkpoint(root, "b0")
    rc = main(["--variant", "b0", "--checkpoint", str(prefix), "--output-dir", str(tmp_path)])
    assert rc == 2 and "--flavor is required" in _err_line(capsys)


def test_list_and_module_entry_point():
    proc = subprocess.run([sys.executable, "-m", "converter", "--list"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    rows = [l for l in lines if l.startswith("efficientnet-")]
    assert len(rows) == 35 + 11  # + Lite, EdgeTPU, CondConv (tests/test_family.py)
    b4 = next(l for l in rows if l.startswith("efficientnet-b4_advprop "))
    assert "19.34" in b4 and "380" in b4 and " 83.3 " in b4 and "advprop/efficientnet-b4.tar.gz" in b4
    assert "efficientnet-b4_3rdparty_8xb32-aa-advprop_in1k" in b4  # the zoo name (tests/test_list.py)


def test_debug_shows_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "converter", "--variant", "b0", "--flavor", "aa", "--checkpoint",
                           str(tmp_path / "nope"), "--debug"], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "Traceback" in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "converter", "--variant", "b0", "--flavor", "aa", "--checkpoint",
                           str(tmp_path / "nope")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


@pytest.fixture
def mirror(tmp_path, monkeypatch):
    """A real HTTP server on 127.0.0.1 serving a folder laid out like the official bucket."""
    root = tmp_path / "bucket"
    root.mkdir()
    with BucketServer(root) as server:
        monkeypatch.setenv("EFFNET_BASE_URL", server.url)
        monkeypatch.setenv("EFFNET_CACHE", str(tmp_path / "cache"))
        yield root, server.hits


def test_download_convert_and_cache_reuse(root, mirror, tmp_path, capsys):
    import hashlib

    from converter.tfref.generate import make_tarball

    bucket, hits = mirror
    prefix = make_checkpoint(root, "b0")
    tarball = bucket / "efficientnet" / "advprop" / "efficientnet-b0.tar.gz"  # below the bucket root
    tarball.parent.mkdir(parents=True)
    make_tarball(str(prefix), str(tarball), "efficientnet-b0")
    assert main(["--variant", "b0", "--flavor", "advprop", "--output-dir", str(tmp_path / "o1"), "--quiet"]) == 0
    assert hits == ["/efficientnet/advprop/efficientnet-b0.tar.gz"]
    out = tmp_path / "o1" / "efficientnet-b0_advprop.safetensors"
    _check_values(out, prefix, "b0")
    with safe_open(str(out), framework="np") as f:
        meta = f.metadata()
    assert meta["source"].endswith("/advprop/efficientnet-b0.tar.gz")
    assert meta["source_sha256"] == hashlib.sha256(tarball.read_bytes()).hexdigest()
    # a second conversion takes the cached tarball
    assert main(["--variant", "b0", "--flavor", "ap", "--output-dir", str(tmp_path / "o2"), "--quiet"]) == 0
    assert len(hits) == 1
    # --sha256 pins the tarball: a wrong pin is refused, nothing written
    rc = main(["--variant", "b0", "--flavor", "advprop", "--output-dir", str(tmp_path / "o3"), "--sha256", "0" * 64])
    assert rc == 2 and "sha256" in _err_line(capsys, warnings_allowed=True)
    assert not (tmp_path / "o3" / "efficientnet-b0_advprop.safetensors").exists()


def test_download_404_and_offline_are_one_line(mirror, tmp_path, capsys, monkeypatch):
    rc = main(["--variant", "b1", "--flavor", "aa", "--output-dir", str(tmp_path)])
    line = _err_line(capsys)
    assert rc == 2 and "404" in line
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    monkeypatch.setenv("EFFNET_BASE_URL", f"http://127.0.0.1:{port}/")
    monkeypatch.setattr("converter.sources.RETRY_BASE_DELAY", 0.01)
    rc = main(["--variant", "b1", "--flavor", "aa", "--output-dir", str(tmp_path)])
    line = _err_line(capsys, warnings_allowed=True)  # retry notices come first
    assert rc == 2 and ("offline" in line or "cannot reach" in line) and "--checkpoint" in line
    assert list(tmp_path.glob("*.safetensors")) == []


def test_own_checkpoint_other_class_count(root, tmp_path, capsys):
    prefix = make_checkpoint(root, "b0", num_classes=10, slots=False)
    assert main(["--variant", "b0", "--flavor", "aa", "--checkpoint", str(prefix), "--output-dir", str(tmp_path)]) == 0
    assert "10 classes" in capsys.readouterr().out
    out = tmp_path / "efficientnet-b0_aa.safetensors"
    m = load_model(out)
    assert m.pretrained_cfg["num_classes"] == 10
    assert m(torch.zeros(1, 3, 64, 64)).shape == (1, 10)
    r = load_checkpoint(str(prefix))
    k = r.get_tensor("efficientnet-b0/head/dense/kernel" + EMA)
    np.testing.assert_array_equal(m.classifier.weight.detach().numpy(), k.T)
    rc = main(["--variant", "b0", "--flavor", "aa", "--checkpoint", str(prefix), "--output-dir", str(tmp_path / "x"),
               "--num-classes", "1000"])
    assert rc == 2 and "--num-classes 1000 but the checkpoint's classifier has 10 classes" in _err_line(capsys)


def test_drop_background_class(root, tmp_path, capsys):
    prefix = make_checkpoint(root, "b0", num_classes=1001, slots=False)
    assert main(["--variant", "b0", "--flavor", "aa", "--checkpoint", str(prefix), "--output-dir", str(tmp_path / "keep"),
                 "--quiet"]) == 0
    keep = load_model(tmp_path / "keep" / "efficientnet-b0_aa.safetensors")
    assert keep.pretrained_cfg["num_classes"] == 1001
    assert main(["--variant", "b0", "--flavor", "aa", "--checkpoint", str(prefix), "--output-dir", str(tmp_path / "drop"),
                 "--drop-background", "--num-classes", "1000", "--quiet"]) == 0
    drop = load_model(tmp_path / "drop" / "efficientnet-b0_aa.safetensors")
    assert drop.pretrained_cfg["num_classes"] == 1000
    r = load_checkpoint(str(prefix))
    k = r.get_tensor("efficientnet-b0/head/dense/kernel" + EMA)
    b = r.get_tensor("efficientnet-b0/head/dense/bias" + EMA)
    np.testing.assert_array_equal(drop.classifier.weight.detach().numpy(), k[:, 1:].T)
    np.testing.assert_array_equal(drop.classifier.bias.detach().numpy(), b[1:])
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        np.testing.assert_allclose(drop(x).numpy(), keep(x).numpy()[:, 1:], rtol=1e-5, atol=1e-5)
    # a 1000-class checkpoint has no background class to drop
    capsys.readouterr()
    rc = main(["--variant", "b0", "--flavor", "aa", "--checkpoint", str(make_checkpoint(root, "b0")),
               "--output-dir", str(tmp_path / "bad"), "--drop-background"])
    assert rc == 2 and "background class" in _err_line(capsys)


def test_variant_inferred_from_scope(root, tmp_path, capsys):
    prefix = make_checkpoint(root, "b3", mode="ema-only", slots=False)
    assert main(["--flavor", "aa", "--checkpoint", str(prefix), "--output-dir", str(tmp_path), "--quiet"]) == 0
    assert "variant b3 (from the checkpoint's scope)" in capsys.readouterr().err
    _check_values(tmp_path / "efficientnet-b3_aa.safetensors", prefix, "b3")


def test_infer_variant_rules():
    from converter.cli import infer_variant
    from converter.errors import ConversionError

    class Names:
        def __init__(self, names):
            self._n = names

        def names(self):
            return self._n

    assert infer_variant(Names(["global_step", "efficientnet-b5/stem/conv2d/kernel"])) == "b5"
    with pytest.raises(ConversionError, match="fits --variant l2 and l2-475"):
        infer_variant(Names(["efficientnet-l2/stem/conv2d/kernel"]))
    with pytest.raises(ConversionError, match="no known EfficientNet"):
        infer_variant(Names(["resnet50/conv1/kernel"]))
    with pytest.raises(ConversionError, match="scopes"):
        infer_variant(Names(["efficientnet-b0/a", "efficientnet-b1/b"]))


def test_safetensors_conversion_imports_neither_torch_nor_tensorflow(root, tmp_path):
    """The default path is numpy-only: the own bundle reader and the streaming writer."""
    prefix = make_checkpoint(root, "b0")
    code = (
        "import sys\n"
        "from converter.cli import main\n"
        f"rc = main(['--variant', 'b0', '--flavor', 'aa', '--checkpoint', {str(prefix)!r}, '--output-dir', {str(tmp_path)!r}, '--quiet'])\n"
        "print(rc, 'torch' in sys.modules, 'tensorflow' in sys.modules)\n"
    )
    repo = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          cwd=str(repo), env=dict(os.environ, PYTHONPATH=str(repo)))
    assert proc.stdout.split()[-3:] == ["0", "False", "False"], proc.stdout + proc.stderr
    _check_values(tmp_path / "efficientnet-b0_aa.safetensors", prefix, "b0")
