"""verify --trace (converter/verify/trace.py, converter/tfref/taps.py): tap-by-tap comparison with the reference.

Correct conversions (b0 through the CLI, Lite / EdgeTPU / CondConv through the API) pass at every
tap; files corrupted on purpose (one BN's moving variance, one depthwise kernel flipped, one BN's
epsilon) fail, and the trace names exactly that block and layer, in the table and in the JSON.
The TensorFlow side runs in its own process, as in use. Small inputs (64 px, 2 images).
"""
import json

import numpy as np
import pytest
import torch

from converter import load_model
from converter.registry import get_arch
from converter.cli import main
from converter.families.efficientnet.checkpoints import FAMILY_MEAN, FAMILY_STD
from converter.checkpoint import IMAGENET_MEAN, IMAGENET_STD

pytest.importorskip("tensorflow")

from converter.verify import trace as T
from converter.tfref.generate import generate_checkpoint  # noqa: E402
from converter.verify import plan_verification, reference_logits, verify_model  # noqa: E402

RES, N = 64, 2
SCOPE = "efficientnet-b0"


@pytest.fixture(scope="module")
def b0(tmp_path_factory):
    """(checkpoint prefix, converted file, TF taps of the verification images) of a b0 at 64 px."""
    root = tmp_path_factory.mktemp("trace-b0")
    prefix = root / "ckpt" / "model.ckpt"
    generate_checkpoint("b0", str(prefix), mode="ema-only", calibration_resolution=RES, calibration_images=N,
                        mean=list(IMAGENET_MEAN), std=list(IMAGENET_STD))
    # convert + verify --trace in one run (convert-effnet --verify --trace): a correct file passes
    rc = main(["--variant", "b0", "--flavor", "aa", "--checkpoint", str(prefix), "--output-dir", str(root / "out"),
               "--quiet", "--verify", "--trace", "--device", "cpu", "--num-images", str(N),
               "--resolution", str(RES)])
    weights = root / "out" / "efficientnet-b0_aa.safetensors"
    report = json.loads((root / "out" / "efficientnet-b0_aa.verify.json").read_text())
    assert rc == 0, report.get("failures")
    return prefix, weights, report


def _images(model):
    return plan_verification(model.pretrained_cfg, RES, N, (), "cpu").images


@pytest.fixture(scope="module")
def b0_taps(b0):
    """The reference's taps of the verification images (its own process, as verify runs it)."""
    prefix, weights, _ = b0
    tracer = T.Tracer(n_images=N)
    reference_logits(str(prefix), "b0", _images(load_model(weights)), 1000, "cpu", extra_args=tracer.reference_args(),
                     module=tracer.MODULE)
    return tracer.taps()


def _corrupt(weights, tmp_path, key, how):
    """A copy of ``weights`` with one tensor changed (metadata kept)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(weights), "pt") as f:
        meta, sd = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    sd[key] = how(sd[key]).contiguous()
    out = tmp_path / weights.name
    save_file(sd, str(out), metadata=meta)
    return out


def _stage_rows(trace):
    return [r for r in trace["rows"] if r["kind"] == "stage"]


def test_correct_b0_passes_every_tap_and_report_has_the_table(b0):
    _, _, report = b0
    trace = report["trace"]
    assert report["passed"] and trace["passed"] and trace["first_divergence"] is None and trace["images"] == N
    stages = [r["official"] for r in _stage_rows(trace)]
    assert stages == [f"{SCOPE}/stem"] + [f"{SCOPE}/blocks_{i}" for i in range(16)] + [f"{SCOPE}/head/pooled"]
    assert [r["module"] for r in _stage_rows(trace)][:3] == ["stem", "blocks.0", "blocks.1"]
    assert trace["rows"][-1]["kind"] == "logits"
    # nothing diverged: no conv / BN rows in the table
    assert all(r["kind"] in ("stage", "logits") for r in trace["rows"])
    for r in trace["rows"]:
        assert r["ok"] and 0 < r["rel_error"] <= r["tolerance"], r
    # tolerances follow float32's own error, which grows with depth
    tols = [r["tolerance"] for r in _stage_rows(trace)]
    assert tols[-1] > 5 * tols[0]


def test_corrupted_bn_variance_is_named_by_the_cli(b0, tmp_path, capsys):
    prefix, weights, _ = b0
    bad = _corrupt(weights, tmp_path, "blocks.3.bn1.running_var", lambda t: t * 4)
    rc = main(["verify", "--weights", str(bad), "--checkpoint", str(prefix), "--device", "cpu", "--num-images", str(N),
               "--resolution", str(RES), "--trace", "--quiet"])
    out = capsys.readouterr()
    assert rc == 3
    report = json.loads((tmp_path / "efficientnet-b0_aa.verify.json").read_text())
    trace = report["trace"]
    first = trace["first_divergence"]
    assert (first["kind"], first["official"], first["module"]) == (
        "bn_out", f"{SCOPE}/blocks_3/tpu_batch_normalization_1", "blocks.3.bn1")
    assert f"{SCOPE}/blocks_3/tpu_batch_normalization_1/moving_variance" in first["tensors"]
    assert "blocks.3.bn1.running_var" in first["state_keys"]
    # the stages before pass, block 3 fails; conv / BN taps shown for block 3 only, the one before the BN passing
    stages = {r["official"]: r["ok"] for r in _stage_rows(trace)}
    assert all(stages[f"{SCOPE}/blocks_{i}"] for i in range(3)) and not stages[f"{SCOPE}/blocks_3"]
    inner = [r for r in trace["rows"] if r["kind"] in ("bn_in", "bn_out")]
    assert inner and all("/blocks_3/" in r["official"] for r in inner)
    assert [r["ok"] for r in inner][:4] == [True, True, True, False]
    assert any("trace: first divergence" in f and "blocks_3/tpu_batch_normalization_1" in f for f in report["failures"])
    assert "FIRST DIVERGENCE" in out.out and "blocks.3.bn1" in out.out
    # the summary line counts the images that agree at top-1 (issue 18 point 2)
    agree = sum(r["top1_tf"] == r["top1_torch"] for r in report["per_image"])
    assert f"top-1 agreement {agree}/{N} images" in out.out
    assert "blocks_3/tpu_batch_normalization_1" in out.err


def test_corrupted_depthwise_kernel_names_the_conv(b0, b0_taps, tmp_path):
    _, weights, _ = b0
    bad = load_model(_corrupt(weights, tmp_path, "blocks.5.dw_conv.weight", lambda t: t.flip(-1)))
    rep = T.compare_taps(b0_taps, T.torch_taps(bad, _images(bad)), list(bad.state_dict()), 1e-4)
    trace = T.summarize(dict(rep, images=N))
    first = trace["first_divergence"]
    assert (first["kind"], first["official"], first["module"]) == (
        "bn_in", f"{SCOPE}/blocks_5/depthwise_conv2d", "blocks.5.dw_conv")
    assert first["tensors"] == [f"{SCOPE}/blocks_5/depthwise_conv2d/depthwise_kernel"]
    assert first["state_keys"] == ["blocks.5.dw_conv.weight"]
    assert "blocks_5: conv" in trace["failure"]


def test_small_error_in_one_bn_is_located(b0, b0_taps):
    """PyTorch's default BN epsilon (1e-5 for TensorFlow's 1e-3) in one batch norm: a 1e-3 relative
    error at that BN's output (the logits only say "1e-2 off"), named at that very BN."""
    _, weights, _ = b0
    model = load_model(weights)
    model.blocks[2].bn0.eps = 1e-5
    rep = T.compare_taps(b0_taps, T.torch_taps(model, _images(model)), list(model.state_dict()), 1e-4)
    first = rep["first_divergence"]
    assert (first["official"], first["module"]) == (f"{SCOPE}/blocks_2/tpu_batch_normalization", "blocks.2.bn0")


def test_structure_mismatch_is_reported(b0, b0_taps):
    """A model whose layers do not pair up with the reference's (a BN missing): the first row where
    they differ, named, instead of a comparison of unrelated tensors."""
    _, weights, _ = b0
    model = load_model(weights)
    pt = [t for t in T.torch_taps(model, _images(model)) if t["module"] != "blocks.4.bn1"]
    rep = T.compare_taps(b0_taps, pt, list(model.state_dict()), 1e-4)
    first = rep["first_divergence"]
    assert (first["kind"], first["official"], first["module"]) == ("structure", f"{SCOPE}/blocks_4", "blocks.4")
    assert "TensorFlow has 3 batch norm(s)" in first["note"] and "PyTorch 2" in first["note"]
    assert not rep["passed"] and all(r["ok"] for r in rep["rows"][:-1])  # the stages before pair up and pass
    assert "first divergence in efficientnet-b0/blocks_4" in T.summarize(dict(rep, images=N))["failure"]


def test_trace_needs_verify_and_all_forwards_it(tmp_path):
    from converter import batch
    from converter.cli import _convert_parser
    from converter.registry import find_checkpoint

    assert main(["--variant", "b0", "--flavor", "aa", "--trace", "--quiet"]) == 2
    args = _convert_parser().parse_args(["--all", "--trace", "--output-dir", str(tmp_path)])
    assert "--trace" in batch.child_command(find_checkpoint("b0", "aa"), args, tmp_path, force=False)
    args = _convert_parser().parse_args(["--all", "--output-dir", str(tmp_path)])
    assert "--trace" not in batch.child_command(find_checkpoint("b0", "aa"), args, tmp_path, force=False)


# variant: (convert-effnet options, normalization of its metadata: the BN calibration's)
FAMILIES = {
    "lite0": ([], FAMILY_MEAN, FAMILY_STD),
    "edgetpu-s": ([], FAMILY_MEAN, FAMILY_STD),
    "condconv-b0-4e": ([], FAMILY_MEAN, FAMILY_STD),
    "v2-b0": (["--flavor", "1k"], IMAGENET_MEAN, IMAGENET_STD),
    "mixnet-s": ([], IMAGENET_MEAN, IMAGENET_STD),
}


# MixNet's grouped convs: under make parity (-m slow), to keep CI short; the others in every run
@pytest.mark.parametrize("variant", [pytest.param(v, marks=pytest.mark.slow) if v == "mixnet-s" else v
                                     for v in FAMILIES])
def test_family_correct_conversion_passes_trace(variant, tmp_path):
    """Every family has taps (from its block structure, no table of its own) and passes."""
    extra, mean, std = FAMILIES[variant]
    prefix = tmp_path / "ckpt" / "model.ckpt"
    generate_checkpoint(get_arch(variant), str(prefix), mode="ema-only", calibration_resolution=RES,
                        calibration_images=N, mean=list(mean), std=list(std))
    assert main(["--variant", variant, *extra, "--checkpoint", str(prefix), "--output-dir", str(tmp_path),
                 "--quiet"]) == 0
    model = load_model(next(tmp_path.glob("*.safetensors")))
    report = verify_model(model, str(prefix), model.pretrained_cfg, resolution=RES, n_images=N, device="cpu",
                          trace=True)
    trace = report.trace
    assert trace["passed"] and report.passed, report.failures
    spec = get_arch(variant)
    stages = _stage_rows(trace)
    assert [r["official"] for r in stages] == [f"{spec.scope}/stem"] + \
        [f"{spec.scope}/blocks_{b.index}" for b in spec.blocks()] + [f"{spec.scope}/head/pooled"]
    assert max(r["rel_error"] / r["tolerance"] for r in trace["rows"]) < 1


def test_tensors_between_taps_follow_creation_order():
    """tfref.taps.tap_tensors: the conv feeding a BN (with the SE before a project conv, the routing
    before a CondConv expand conv), a BN's four variables, the classifier for the logits."""
    from converter.tfref.taps import BN_IN, BN_OUT, LOGITS, tap_tensors

    spec = get_arch("condconv-b0-4e")
    s = spec.scope
    b = next(b for b in spec.blocks() if b.kind == "condconv" and b.has_expand and b.se_channels)
    p = f"{s}/blocks_{b.index}"
    taps = [(f"{p}/tpu_batch_normalization", BN_IN, None), (f"{p}/tpu_batch_normalization_2", BN_IN, None),
            (f"{p}/tpu_batch_normalization", BN_OUT, None), ("logits", LOGITS, None)]
    first, project, bn, logits = tap_tensors(spec, taps)
    assert first[0] == f"{p}/dense/kernel" and first[-1].endswith("/condconv_kernel") and len(first) == 3
    assert project[0] == f"{p}/se/conv2d/kernel" and project[-1].endswith("/condconv_kernel")
    assert bn == [f"{p}/tpu_batch_normalization/{v}" for v in ("gamma", "beta", "moving_mean", "moving_variance")]
    assert logits == [f"{s}/head/dense/kernel", f"{s}/head/dense/bias"]
