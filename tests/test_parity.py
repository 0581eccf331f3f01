"""Parity: TensorFlow on generated official-layout checkpoints vs PyTorch on the converted weights.

Every architecture is checked; the largest at a smaller input in CI, full size under
``make parity`` (marked slow). Negative tests prove the stage catches broken conversions.
"""
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.numpy import load_file, save_file
from safetensors import safe_open

from converter import load_model
from converter.cli import main
from converter.layers import BatchNorm2dTF, Conv2dSame
from converter.verify import MAX_REL_ERROR, verify_file, verify_model
from helpers import BucketServer, make_checkpoint

pytest.importorskip("tensorflow")

FLAVOR = {"b8": "advprop", "l2": "noisystudent", "l2-475": "noisystudent"}

# variant: (test resolution, synthetic images); native where CI time allows
CI_PARITY = {
    "b0": (224, 8), "b1": (240, 4), "b2": (260, 4), "b3": (300, 4), "b4": (380, 2),
    "b5": (456, 2), "b6": (528, 1), "b7": (600, 1), "b8": (336, 2),
    "l2": (128, 2), "l2-475": (475, 1),
}
FULL_PARITY = {"b8": (672, 2), "l2": (800, 1)}


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("parity")


def _convert_and_verify(root, tmp_path, variant, res, n):
    base = "l2" if variant == "l2-475" else variant
    mode = "ema-only" if base == "l2" else "full"
    # BN statistics calibrated on the images the verification feeds (the synthetic set of
    # CALIBRATION_SEED; shared/reference: known hazards): its first max(2, n) images
    prefix = make_checkpoint(root, base, mode=mode, calibration_resolution=res, slots=base in ("b0", "b1"),
                             calibration_images=max(2, n), flavor=FLAVOR.get(variant, "aa"))
    flavor = FLAVOR.get(variant, "aa")
    args = ["--variant", variant, "--checkpoint", str(prefix), "--output-dir", str(tmp_path), "--quiet"]
    if variant not in FLAVOR:
        args += ["--flavor", flavor]
    assert main(args) == 0
    weights = tmp_path / f"efficientnet-{variant}_{flavor}.safetensors"
    report = verify_file(weights, str(prefix), resolution=res, n_images=n, device="cpu")
    return prefix, weights, report


PARITY_CASES = [pytest.param(v, res, n, id=v) for v, (res, n) in CI_PARITY.items()] + [
    pytest.param(v, res, n, id=f"{v}-full", marks=pytest.mark.slow) for v, (res, n) in FULL_PARITY.items()]


@pytest.mark.parametrize("variant,res,n", PARITY_CASES)
def test_parity_every_architecture(variant, res, n, root, tmp_path):
    _, weights, report = _convert_and_verify(root, tmp_path, variant, res, n)
    print(report.summary())
    assert report.passed, report.failures
    assert report.rel_error <= MAX_REL_ERROR and report.top1_agreement == 1.0
    assert report.resolution == res and report.images == n
    assert report.logit_std > 0.05  # logits with real spread: a collapsed model would prove nothing
    saved = json.loads((tmp_path / weights.name.replace(".safetensors", ".verify.json")).read_text())
    assert saved["passed"] is True and saved["rel_error"] == report.rel_error


# ---- the CLI and negative tests on b0 -------------------------------------------------------

@pytest.fixture(scope="module")
def b0(root, tmp_path_factory):
    prefix = make_checkpoint(root, "b0", calibration_resolution=224)
    out = tmp_path_factory.mktemp("b0out")
    assert main(["--variant", "b0", "--flavor", "aa", "--checkpoint", str(prefix), "--output-dir", str(out), "--quiet"]) == 0
    return prefix, out / "efficientnet-b0_aa.safetensors"


def test_verify_subcommand_report_and_dump(b0, tmp_path, capsys):
    prefix, weights = b0
    dump = tmp_path / "logits.npz"
    rc = main(["verify", "--weights", str(weights), "--checkpoint", str(prefix.parent), "--device", "cpu",
               "--num-images", "4", "--dump-logits", str(dump)])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "PASS" in out and "rel error" in out and "img/s" in out and "top-5 agreement" in out
    with np.load(dump) as z:
        tf_l, pt_l = z["tf"], z["torch"]
    assert tf_l.shape == pt_l.shape == (4, 1000)
    rel = np.linalg.norm(pt_l - tf_l) / np.linalg.norm(tf_l)
    assert rel < 1e-4 and (tf_l.argmax(1) == pt_l.argmax(1)).all()
    report = json.loads(weights.with_name("efficientnet-b0_aa.verify.json").read_text())
    assert abs(report["rel_error"] - rel) < 1e-9 and report["tf_images_per_s"] > 0


def test_convert_with_verify_flag(root, tmp_path, capsys):
    prefix = make_checkpoint(root, "b0", calibration_resolution=224)
    rc = main(["--variant", "b0", "--flavor", "aa", "--checkpoint", str(prefix), "--output-dir", str(tmp_path),
               "--verify", "--num-images", "2", "--device", "cpu", "--quiet"])
    assert rc == 0 and "PASS" in capsys.readouterr().out
    assert (tmp_path / "efficientnet-b0_aa.verify.json").is_file()


def test_fails_on_raw_instead_of_ema(root, tmp_path, capsys):
    """Raw weights in a file whose metadata says EMA (the reference reads what the metadata says)."""
    prefix = make_checkpoint(root, "b0", calibration_resolution=224)
    assert main(["--variant", "b0", "--flavor", "aa", "--checkpoint", str(prefix), "--output-dir", str(tmp_path),
                 "--no-ema", "--quiet"]) == 0
    weights = tmp_path / "efficientnet-b0_aa.safetensors"
    with safe_open(str(weights), framework="np") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    save_file(tensors, str(weights), metadata=dict(meta, ema="true"))
    rc = main(["verify", "--weights", str(weights), "--checkpoint", str(prefix),
               "--device", "cpu", "--num-images", "4"])
    captured = capsys.readouterr()
    assert rc == 3 and "FAIL" in captured.out
    assert "verification failed: conversion error (float64 on both sides)" in captured.err


def test_fails_on_ema_weights_with_raw_bn_statistics(b0, root, tmp_path):
    prefix, weights = b0
    raw_dir = tmp_path / "raw"
    assert main(["--variant", "b0", "--flavor", "aa", "--checkpoint", str(prefix), "--output-dir", str(raw_dir),
                 "--no-ema", "--quiet"]) == 0
    ema, raw = load_file(str(weights)), load_file(str(raw_dir / "efficientnet-b0_aa.safetensors"))
    mixed = {k: (raw[k] if k.endswith(("running_mean", "running_var")) else v) for k, v in ema.items()}
    with safe_open(str(weights), framework="np") as f:
        meta = f.metadata()
    broken = tmp_path / "mixed.safetensors"
    save_file(mixed, str(broken), metadata=meta)
    report = verify_file(broken, str(prefix), n_images=4, device="cpu")
    assert not report.passed and report.rel_error > 1e-2


def test_fails_on_pytorch_bn_eps(b0):
    prefix, weights = b0
    model = load_model(weights)
    for m in model.modules():
        if isinstance(m, BatchNorm2dTF):
            m.eps = 1e-5
    report = verify_model(model, str(prefix), model.pretrained_cfg, n_images=4, device="cpu")
    assert not report.passed and report.rel_error > MAX_REL_ERROR


def test_fails_on_symmetric_padding(b0, monkeypatch):
    prefix, weights = b0
    model = load_model(weights)

    def symmetric(self, x):
        return F.conv2d(x, self.weight, self.bias, self.stride, self.kernel_size[0] // 2, 1, self.groups)

    monkeypatch.setattr(Conv2dSame, "forward", symmetric)
    report = verify_model(model, str(prefix), model.pretrained_cfg, n_images=4, device="cpu")
    assert not report.passed and report.rel_error > MAX_REL_ERROR


def test_verify_own_images(b0, tmp_path):
    """--images: the user's photos go through the official TF preprocessing to both sides."""
    import tensorflow as tf

    prefix, weights = b0
    rng = np.random.default_rng(5)
    files = []
    for i, (h, w) in enumerate([(300, 451), (257, 256)]):
        img = np.clip(rng.normal(128, 60, (h, w, 3)), 0, 255).astype(np.uint8)
        path = tmp_path / f"img{i}.jpg"
        path.write_bytes(tf.io.encode_jpeg(img).numpy())
        files.append(str(path))
    report = verify_file(weights, str(prefix), n_images=2, image_files=files, device="cpu")
    assert report.images == 4 and report.passed


def test_make_all_converts_and_verifies_in_parallel(root, tmp_path):
    """`make -j2 all` on a subset of the zoo, downloading from a mirror on 127.0.0.1."""
    import os
    import shutil
    import subprocess
    from pathlib import Path

    from converter.tfref.generate import make_tarball

    if shutil.which("make") is None or shutil.which("convert-effnet") is None:
        pytest.fail("make and an installed convert-effnet are needed (make install)")
    bucket = tmp_path / "bucket"
    for flavor, rel in (("aa", "efficientnet/ckptsaug/efficientnet-b0.tar.gz"),
                        ("advprop", "efficientnet/advprop/efficientnet-b0.tar.gz")):
        prefix = make_checkpoint(root, "b0", calibration_resolution=224, flavor=flavor)
        (bucket / rel).parent.mkdir(parents=True, exist_ok=True)
        make_tarball(str(prefix), str(bucket / rel), "efficientnet-b0")
    with BucketServer(bucket) as server:
        out = tmp_path / "zoo"
        env = dict(os.environ, EFFNET_BASE_URL=server.url,
                   EFFNET_CACHE=str(tmp_path / "cache"), TF_CPP_MIN_LOG_LEVEL="3")
        repo = Path(__file__).resolve().parents[1]
        cmd = ["make", "-s", "-C", str(repo), "-j2", "all", f"OUT={out}",
               "ZOO=efficientnet-b0_aa efficientnet-b0_advprop", "VERIFY_ARGS=--num-images 2 --device cpu"]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        for name in ("efficientnet-b0_aa", "efficientnet-b0_advprop"):
            assert json.loads((out / f"{name}.verify.json").read_text())["passed"] is True
            assert (out / f"{name}.safetensors").is_file()
        # nothing to do the second time
        proc = subprocess.run(cmd + ["--question"], env=env, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0


def test_makefile_targets_name_every_checkpoint():
    """`make all` covers the 33 zoo checkpoints, `make family` the 11 others, each as --variant/--flavor."""
    import re
    import shutil
    import subprocess
    from pathlib import Path

    from converter.registry import get_arch
    from converter.families.efficientnet.checkpoints import CHECKPOINTS

    if shutil.which("make") is None:
        pytest.fail("make is needed")
    repo = Path(__file__).resolve().parents[1]
    for target, want in (("all", [c for c in CHECKPOINTS if c.zoo_name]),
                         ("family", [c for c in CHECKPOINTS if get_arch(c.variant).family != "efficientnet"])):
        proc = subprocess.run(["make", "-n", "-s", "-C", str(repo), target, "OUT=zoo-dry-run"],
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        got = re.findall(r"(?:convert-effnet|-m converter) --variant (\S+) --flavor (\S+)", proc.stdout)
        assert sorted(got) == sorted((c.variant, c.flavor) for c in want), target
    assert len([c for c in CHECKPOINTS if c.zoo_name]) == 33


def test_verify_after_drop_background(root, tmp_path):
    prefix = make_checkpoint(root, "b0", calibration_resolution=224, num_classes=1001, slots=False)
    assert main(["--variant", "b0", "--flavor", "aa", "--checkpoint", str(prefix), "--output-dir", str(tmp_path),
                 "--drop-background", "--quiet"]) == 0
    report = verify_file(tmp_path / "efficientnet-b0_aa.safetensors", str(prefix), n_images=2, device="cpu")
    assert report.passed and report.rel_error < 1e-4
