"""``convert-effnet audit``'s pieces that need neither TensorFlow nor a library: the layout and variant
found from keys alone, the declared preprocessing of each library read into one form and every
difference from the official eval named (tests/test_audit.py runs the whole audit)."""
from __future__ import annotations

import numpy as np
import pytest

from converter.audit import prep as P
from converter.audit.files import AuditedFile, candidates
from converter.audit.model import _is_strided, tap_plan
from converter.mapping import expand
from converter.registry import find_checkpoint, get_arch


def _file(variant: str, layout: str, drop=(), classes=None) -> AuditedFile:
    tensors = {}
    for e in expand(variant, layout):
        if e.key in drop:
            continue
        shape = e.shape
        if classes is not None and e.tf_name.endswith(("head/dense/kernel", "head/dense/bias")):
            shape = (classes,) + tuple(shape[1:])
        tensors[e.key] = np.zeros(shape, np.int64 if e.const is not None else np.float32)
    return AuditedFile(path=None, tensors=tensors)


@pytest.mark.parametrize("layout,variant", [("timm", "b3"), ("mmpretrain", "b0"), ("transformers", "b5"),
                                            ("native", "lite2"), ("timm", "edgetpu-s"), ("mmpretrain", "v2-s")])
def test_layout_and_variant_from_keys(layout, variant):
    got = {(c.layout, get_arch(c.variant).arch_name) for c in candidates(_file(variant, layout))}
    assert got == {(layout, get_arch(variant).arch_name)}


def test_without_num_batches_tracked_and_other_classes():
    """The seed's converter writes no num_batches_tracked; a 1001-class file drops to 1000: both still fit."""
    af = _file("b0", "mmpretrain", drop={e.key for e in expand("b0", "mmpretrain") if e.const is not None})
    assert [(c.layout, c.variant) for c in candidates(af)] == [("mmpretrain", "b0")]
    af = _file("edgetpu-s", "timm", classes=1000)
    assert [(c.layout, c.num_classes) for c in candidates(af)] == [("timm", 1000)]
    af = _file("b0", "timm", drop={"conv_stem.weight"})
    assert candidates(af) == []


def test_tap_plan_stage_modules():
    """The stages' library modules from the tables: timm's stem is its BatchNormAct2d, mmpretrain's and
    transformers' their stem modules; blocks by their paths."""
    spec = get_arch("b0")
    for layout, stem, block9, pooled in (("timm", "bn1", "blocks.4.1", "classifier"),
                                         ("mmpretrain", "backbone.layers.0", "backbone.layers.4.4", "head.fc"),
                                         ("transformers", "efficientnet.embeddings", "efficientnet.encoder.blocks.9",
                                          "classifier"), ("native", "stem", "blocks.9", "classifier")):
        plan = {(name, kind): module for _, name, kind, module, _ in tap_plan(spec, expand(spec, layout))}
        assert plan[("efficientnet-b0/stem", "stage")] == stem
        assert plan[("efficientnet-b0/blocks_9", "stage")] == block9
        assert plan[("efficientnet-b0/head/pooled", "stage")] == pooled


def test_strided_conv_rows():
    spec = get_arch("b0")  # blocks_1: expand + stride 2 (its depthwise conv strides); blocks_2 stride 1
    assert _is_strided(spec, {"kind": "conv", "official": "efficientnet-b0/stem/conv2d", "stage": "efficientnet-b0/stem"})
    assert _is_strided(spec, {"kind": "conv", "official": "efficientnet-b0/blocks_1/depthwise_conv2d",
                              "stage": "efficientnet-b0/blocks_1"})
    assert not _is_strided(spec, {"kind": "conv", "official": "efficientnet-b0/blocks_1/conv2d",
                                  "stage": "efficientnet-b0/blocks_1"})
    assert not _is_strided(spec, {"kind": "conv", "official": "efficientnet-b0/blocks_2/depthwise_conv2d",
                                  "stage": "efficientnet-b0/blocks_2"})


def _official(flavor="aa", variant="b0"):
    return P.official(find_checkpoint(variant, flavor))


def test_transformers_hub_processor_differences():
    """A processor as the hub's google/efficientnet-b0 declares it: squashed to 224 x 224 without a crop, nearest
    resampling, its own std: each named; include_top squares the std."""
    off = _official()
    proc = {"do_resize": True, "size": {"height": 224, "width": 224}, "resample": 0, "do_center_crop": False,
            "crop_size": {"height": 289, "width": 289}, "do_rescale": True, "rescale_factor": 1 / 255,
            "do_normalize": True, "image_mean": [0.485, 0.456, 0.406], "image_std": [0.47853944, 0.4732864, 0.47434163],
            "include_top": False}
    dec = P.declared("transformers", {"declared": {"source": "t", "processor": proc}}, None, off)
    fields = {d["field"]: d for d in P.differences(off, dec)}
    assert {f for f, d in fields.items() if d["counts"]} == {"crop_pct", "crop_mode", "interpolation", "std"}
    assert fields["crop_pct"]["what"] == "a dropped crop" and fields["interpolation"]["declared"] == "nearest"
    proc.update(include_top=True, image_std=[0.229, 0.224, 0.225], size={"shortest_edge": 256}, do_center_crop=True,
                crop_size={"height": 224, "width": 224}, resample=3)
    dec = P.declared("transformers", {"declared": {"source": "t", "processor": proc}}, None, off)
    fields = {d["field"]: d for d in P.differences(off, dec) if d["counts"]}
    assert set(fields) == {"std"} and np.allclose(fields["std"]["declared"], np.square(off["std"]))


def test_mmpretrain_and_timm_declarations():
    off = _official("advprop")  # AdvProp: mean = std = 0.5
    dp = {"mean": [123.675, 116.28, 103.53], "std": [58.395, 57.12, 57.375], "to_rgb": False}
    pipe = [{"type": "LoadImageFromFile"}, {"type": "ResizeEdge", "scale": 256, "edge": "short", "interpolation": "bicubic"},
            {"type": "CenterCrop", "crop_size": 224}, {"type": "PackInputs"}]
    dec = P.declared("mmpretrain", {"declared": {"source": "m", "data_preprocessor": dp, "pipeline": pipe}}, None, off)
    fields = {d["field"] for d in P.differences(off, dec) if d["counts"]}
    assert fields == {"mean", "std", "channels"}  # ImageNet's mean/std for AdvProp, BGR
    data = {"input_size": (3, 240, 240), "crop_pct": 0.882, "crop_mode": "center", "interpolation": "bicubic",
            "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}
    off1 = _official("aa", "b1")  # 240 / 272 = 0.88235: timm's 0.882 is the same fraction to its 3 decimals
    dec = P.declared("timm", {"declared": {"source": "t", "data_config": data}}, None, off1)
    diffs = P.differences(off1, dec)
    assert not [d for d in diffs if d["counts"]] and [d["field"] for d in diffs] == ["resize"]
    dec = P.declared("timm", {"declared": {"source": "t", "data_config": dict(data, input_size=(3, 256, 256),
                                                                               crop_mode="squash")}}, None, off1)
    assert {d["field"] for d in P.differences(off1, dec) if d["counts"]} == {"resolution", "crop_mode"}


def test_tap_comparison_criterion_and_heads():
    """A tap within 20 x float32's own error (at least 1e-5) passes, beyond it diverges (the first one named);
    logits of a head with other classes (fine-tuned) are not compared, a dropped background class is."""
    from converter.audit.model import compare

    ref = np.linspace(1, 2, 12, dtype=np.float32).reshape(1, 2, 2, 3)
    taps = [dict(name="s/stem", kind="stage", noise=1e-6, array=ref, tensors=[]),
            dict(name="logits", kind="logits", noise=1e-6, array=np.arange(1001, dtype=np.float32)[None], tensors=[])]
    plan = [("t0", "s/stem", "stage", "bn1", "out")]
    ok = compare(taps, plan, {"b/t0": ref * (1 + 1e-5), "b/logits": np.arange(1, 1001, dtype=np.float32)[None]}, "b")
    assert ok["exact"] and ok["rows"][0]["tolerance"] == pytest.approx(2e-5)
    bad = compare(taps, plan, {"b/t0": ref * (1 + 1e-4), "b/logits": np.zeros((1, 10), np.float32)}, "b")
    assert bad["first"]["official"] == "s/stem" and bad["first"]["module"] == "bn1"
    assert bad["rows"][1]["ok"] and "10 classes" in bad["rows"][1]["note"]
