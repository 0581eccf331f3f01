"""EfficientNetV2 (google/automl efficientnetv2 @ 6a54c87): architecture, tables, parity, zoo, CLI.

Parity: generated official-layout checkpoints (BN statistics calibrated) against the TensorFlow
reference for all eight architectures at small inputs; M at half, L and XL at a quarter of their width
(same blocks, names and counters; full width behind ``-m slow``). Negative tests: the stride on
the 1x1 project conv, V1's round_filters, symmetric padding must all fail.
"""
import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from converter.arch import ArchSpec
from converter.registry import count_params, get_arch
from converter.families.efficientnet_v2.arch import FUSED_V2, OFFICIAL_KERAS_PARAMS, V2_ARCHS, BlockArgsV2, round_filters_v2
from converter.cli import main
from converter.errors import ConversionError
from converter.mapping import expand
from converter.layers import Conv2dSame
from converter.families.efficientnet_v2.modules import FusedMBConvV2
from converter.model import build_model
from converter.registry import all_checkpoints, find_checkpoint
from converter.families.efficientnet_v2.checkpoints import CHECKPOINTS_V2, FT_MEAN, FT_STD, V2_MEAN, V2_STD

tf = pytest.importorskip("tensorflow")

from converter.synthetic import calibration_images  # noqa: E402
from converter.tfref import reference  # noqa: E402
from converter.tfref.generate import generate_checkpoint, make_tarball  # noqa: E402
from converter.verify import MAX_REL_ERROR, compare, judge  # noqa: E402

# variant -> (test resolution, width for CI: None = the real one). 64 is even (TF's asymmetric
# SAME padding at every stride-2 layer), 65/67 odd.
PARITY = {"v2-b0": (64, None), "v2-b1": (65, None), "v2-b2": (64, None), "v2-b3": (67, None),
          "v2-s": (64, None), "v2-m": (48, 0.5), "v2-l": (48, 0.25), "v2-xl": (48, 0.25)}
N_IMAGES = 2


# ---- architecture ---------------------------------------------------------------------------

def test_block_strings_round_trip_as_written():
    for spec in V2_ARCHS.values():
        for code in spec.block_strings:
            assert BlockArgsV2.decode(code).encode() == code
    a = BlockArgsV2.decode("r2_k3_s2_e4_i24_o48_c1")
    assert (a.num_repeat, a.kernel_size, a.strides, a.expand_ratio, a.input_filters, a.output_filters,
            a.se_ratio, a.conv_type) == (2, 3, 2, 4, 24, 48, None, 1)
    for bad in ("r1_k3_s1_e1_i32", "r1_k3_s1_e1_i32_o16_c2", "r1_k3_s1_e1_i32_o16_x5"):
        with pytest.raises(ConversionError):
            BlockArgsV2.decode(bad)


def count_weights_keras(spec: ArchSpec) -> int:
    """What Keras' ``model.count_params()`` reports (effnetv2_model_test.py): the trainable parameters
    plus every BN's moving mean and variance (2 per channel)."""
    n = spec.stem_channels + spec.head_channels
    for b in spec.blocks():
        n += (b.mid_channels if b.has_expand else 0) + (0 if b.kind == FUSED_V2 else b.mid_channels) + b.out_channels
    return count_params(spec) + 2 * n


def test_parameter_counts_equal_official():
    """effnetv2_model_test.py counts every Keras weight (BN moving statistics included)."""
    for name, spec in V2_ARCHS.items():
        assert count_weights_keras(spec) == OFFICIAL_KERAS_PARAMS[name], name
    # trainable parameters, as mmpretrain's metafile lists them for its converted models
    assert count_params(get_arch("v2-s")) == 21458488 and count_params(get_arch("v2-xl")) == 208119808
    assert count_params(get_arch("v2-s").with_classes(21843)) == 48158371
    # FLOPs (multiply-adds) at the eval size against the README table: B0 0.72B, S 8.4B
    from converter.registry import count_macs

    assert round(count_macs(get_arch("v2-b0")) / 1e9, 2) == 0.72 and round(count_macs(get_arch("v2-s")) / 1e9, 1) == 8.4


def test_round_filters_without_v1_rule():
    # B3 (width 1.2): first stage 16 * 1.2 = 19.2 -> 16 in V2; V1's 10 % rule would make it 24
    assert round_filters_v2(16, 1.2) == 16
    assert ArchSpec(name="x", width=1.2, depth=1, resolution=1, dropout=0, scope="x").round_filters(16) == 24
    b3 = get_arch("v2-b3")
    assert b3.blocks()[0].out_channels == 16 and b3.stem_channels == 40 and b3.head_channels == 1536


def test_architecture_rules():
    s = get_arch("efficientnetv2-s")
    assert s.name == "v2-s" and s.scope == "efficientnetv2-s" and s.resolution == 384 and s.bn_eps == 1e-3
    blocks = s.blocks()
    assert s.stem_channels == 24 and len(blocks) == 2 + 4 + 4 + 6 + 9 + 15
    assert all(b.residual for b in blocks[:2])  # stage 0 keeps its residual (V1's does not)
    assert all((b.kind == FUSED_V2) == (b.stage < 3) for b in blocks)
    assert all(b.se_channels == (max(1, int((b.in_channels if b.index_in_stage == 0 else b.out_channels) * 0.25))
                                 if b.stage >= 3 else 0) for b in blocks)
    assert [b.stride for b in blocks if b.index_in_stage == 0] == [1, 2, 2, 2, 1, 2]
    assert blocks[2].in_channels == 24 and blocks[2].mid_channels == 96 and blocks[2].out_channels == 48


def test_tables_equal_module_and_reference_variables():
    for name in V2_ARCHS:
        spec = get_arch(name)
        entries = expand(spec)
        with torch.device("meta"):
            sd = build_model(spec).state_dict()
        assert [e.key for e in entries] == list(sd), name
        assert all(tuple(sd[e.key].shape) == e.shape for e in entries), name
        ref = reference.variables(spec)
        want = [(n, s) for n, s in ref]
        got = [(e.tf_name, e.tf_shape) for e in entries]
        assert sorted(got) == sorted(want), name  # every official variable, nothing else
    names = [e.tf_name for e in expand("v2-b0")]
    assert "efficientnetv2-b0/blocks_0/conv2d/kernel" in names  # e1 fused: one kxk conv
    assert "efficientnetv2-b0/blocks_1/conv2d_1/kernel" in names  # fused: 1x1 project
    assert "efficientnetv2-b0/blocks_5/se/conv2d_1/bias" in names


# ---- parity -----------------------------------------------------------------------------------

def _spec(variant):
    res, width = PARITY[variant]
    spec = get_arch(variant)
    return replace(spec, width=width) if width else spec


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("v2")


@pytest.fixture(scope="module")
def converted(root):
    """variant -> (spec, prefix, PyTorch model with the converted weights, TF logits, images)."""
    from converter.convert import convert
    from converter.sources.readers import open_reader

    cache = {}
    tf64 = {}

    def get(variant):
        if variant not in cache:
            spec = _spec(variant)
            res = PARITY[variant][0]
            prefix = root / variant / "model.ckpt"
            generate_checkpoint(spec, str(prefix), mode="full" if variant == "v2-b0" else "ema-only",
                                calibration_resolution=res, calibration_images=N_IMAGES, mean=V2_MEAN, std=V2_STD,
                                slots=False)
            out = root / f"{variant}.safetensors"
            cfg = dict(find_checkpoint(variant, "21k-ft1k").pretrained_cfg())
            convert(open_reader(str(prefix)), spec, cfg, [out], force=True, progress=False)
            images = calibration_images(res, N_IMAGES, V2_MEAN, V2_STD)
            get = reference.read_checkpoint_getter(str(prefix))
            tf_logits = reference.forward(spec, get, images, device="cpu")
            tf64[variant] = reference.forward(spec, get, images, device="cpu", dtype=np.float64)
            from safetensors.torch import load_file

            model = build_model(spec)
            model.load_state_dict(load_file(str(out)))  # strict: every key, nothing else
            cache[variant] = (spec, prefix, model.eval(), tf_logits, images)
        return cache[variant]
    get.tf64 = tf64
    return get


def _torch(model, images):
    with torch.no_grad():
        return model(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()).numpy()


@pytest.mark.parametrize("variant", list(PARITY))
def test_v2_parity(variant, converted):
    """float64 on both sides: equal to ~1e-12 (the semantics); float32: within the random deep
    network's own float32 noise (TF float32 vs TF float64, 1e-4 for M/L/XL at 64 px)."""
    spec, _, model, tf_logits, images = converted(variant)
    _assert_parity(model, images, tf_logits, converted.tf64[variant], variant)


def _assert_parity(model, images, tf_logits, tf64, what):
    with torch.no_grad():
        pt64 = model.double()(torch.from_numpy(images.astype(np.float64)).permute(0, 3, 1, 2).contiguous()).numpy()
    model.float()
    exact = compare(tf64, pt64)
    assert exact["rel_error"] < 1e-9, exact
    noise = compare(tf64, tf_logits)["rel_error"]
    m = compare(tf_logits, _torch(model, images))
    print(what, m, "float32 noise floor", noise)
    assert m["rel_error"] <= 2 * noise + 1e-5 and m["top1_agreement"] == 1.0
    if noise < 2e-5:  # the shallow ones: the project's float32 criterion as is
        assert judge(m) == []
    assert np.std(tf_logits) > 0.05


def _restride_project(model):
    """The stride moved from the kxk expand conv to the 1x1 project conv (EdgeTPU's 2019 placement)."""
    moved = 0
    for blk in model.blocks:
        if isinstance(blk, FusedMBConvV2) and blk.has_expand and blk.expand_conv.stride[0] == 2:
            blk.expand_conv.stride, blk.project_conv.stride = (1, 1), (2, 2)
            moved += 1
    model.set_input_size(None)
    return moved


def test_fails_with_stride_on_the_project_conv(converted):
    spec, _, model, tf_logits, images = converted("v2-b0")  # 64 px: even inputs at the strided fused blocks
    bad = build_model(spec)
    bad.load_state_dict(model.state_dict())
    assert _restride_project(bad.eval()) == 2
    assert judge(compare(tf_logits, _torch(bad, images)))


def test_fails_with_symmetric_padding(converted, monkeypatch):
    spec, _, model, tf_logits, images = converted("v2-s")

    def symmetric(self, x):
        k = self.kernel_size[0]
        return torch.nn.functional.conv2d(x, self.weight, self.bias, self.stride, k // 2, 1, self.groups)

    monkeypatch.setattr(Conv2dSame, "forward", symmetric)
    assert judge(compare(tf_logits, _torch(model, images)))


def test_fails_with_v1_round_filters(converted):
    """B3 with V1's rounding (10 % rule): other channel counts, the checkpoint does not fit."""
    from converter.convert import select
    from converter.sources.readers import open_reader

    _, prefix, _, _, _ = converted("v2-b3")

    class V1Rounding(type(get_arch("v2-b3"))):
        def round_filters(self, filters):
            return ArchSpec.round_filters(self, filters)

    from dataclasses import fields

    spec = V1Rounding(**{f.name: getattr(get_arch("v2-b3"), f.name) for f in fields(get_arch("v2-b3"))})
    assert [b.out_channels for b in spec.blocks()] != [b.out_channels for b in get_arch("v2-b3").blocks()]
    with pytest.raises(ConversionError, match="wrong shape|missing"):
        select(open_reader(str(prefix)), spec)


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["v2-m", "v2-l", "v2-xl"])
def test_v2_parity_full_width(variant, tmp_path):
    spec = get_arch(variant)
    prefix = tmp_path / "model.ckpt"
    generate_checkpoint(spec, str(prefix), mode="ema-only", calibration_resolution=64, calibration_images=2,
                        mean=V2_MEAN, std=V2_STD)
    assert main(["--variant", variant, "--flavor", "21k-ft1k", "--checkpoint", str(prefix), "--output-dir",
                 str(tmp_path), "--quiet"]) == 0
    images = calibration_images(64, 2, V2_MEAN, V2_STD)
    from converter.loading import load_model

    model = load_model(tmp_path / f"efficientnetv2-{variant[3:]}-21k-ft1k.safetensors")
    get = reference.read_checkpoint_getter(str(prefix))
    tf_logits = reference.forward(spec, get, images, device="cpu")
    tf64 = reference.forward(spec, get, images, device="cpu", dtype=np.float64)
    _assert_parity(model, images, tf_logits, tf64, variant)


# ---- zoo and CLI ------------------------------------------------------------------------------

def test_zoo_has_the_23_official_checkpoints():
    assert len(CHECKPOINTS_V2) == 23 and all(c in all_checkpoints() for c in CHECKPOINTS_V2)
    names = {c.name for c in CHECKPOINTS_V2}
    assert "efficientnetv2-xl" not in names and "efficientnetv2-xl-21k-ft1k" in names
    c = find_checkpoint("v2-s", "21k-ft1k")
    assert c.url == "https://storage.googleapis.com/cloud-tpu-checkpoints/efficientnet/v2/efficientnetv2-s-21k-ft1k.tgz"
    assert (c.resolution, c.preprocessing, c.top1, c.mean, c.crop_pct) == (384, "v2-ft", 84.9, FT_MEAN, 1.0)
    assert find_checkpoint(None, "efficientnetv2-s-21k-ft1k") is c
    assert find_checkpoint(None, "efficientnetv2-s_in21k-pre_3rdparty_in1k") is c
    assert find_checkpoint("efficientnetv2-s", "imagenet21k-ft1k") is c
    k21 = find_checkpoint("v2-b0", "21k")
    assert (k21.resolution, k21.num_classes, k21.preprocessing, k21.crop_pct) == (224, 21843, "v2", 224 / 256)
    assert find_checkpoint("v2-b0", "1k").preprocessing == "v1" and find_checkpoint("v2-m", "1k").crop_pct == 1.0
    assert find_checkpoint("v2-m", "1k").mean == V2_MEAN and find_checkpoint("v2-m", "1k").std == V2_STD
    with pytest.raises(ConversionError, match="no official 1k checkpoint of v2-xl"):
        find_checkpoint("v2-xl", "1k")
    with pytest.raises(ConversionError, match="--flavor is required for v2-s"):
        find_checkpoint("v2-s", None)
    with pytest.raises(ConversionError, match="is a v2-s checkpoint but --variant is v2-m"):
        find_checkpoint("v2-m", "efficientnetv2-s-21k")


def test_cli_list_shows_v2(capsys):
    assert main(["--list"]) == 0
    out = capsys.readouterr().out
    for c in CHECKPOINTS_V2:
        assert c.name in out and c.url in out
    line = next(l for l in out.splitlines() if l.startswith("efficientnetv2-s-21k-ft1k "))
    assert " 21.46 " in line and " 384 " in line and " 84.9" in line


@pytest.fixture(scope="module")
def b0_21k(root):
    """A V2-B0 21k checkpoint (21843 classes; raw, EMA, RMSProp slots), calibrated at 64 px."""
    prefix = root / "b0-21k" / "model.ckpt"
    generate_checkpoint(get_arch("v2-b0"), str(prefix), mode="full", calibration_resolution=64, calibration_images=2,
                        mean=V2_MEAN, std=V2_STD, num_classes=21843, slots=True)
    return prefix


def test_cli_converts_21k_tgz_stream_and_verifies(b0_21k, tmp_path, capsys):
    """A 21k checkpoint (21843 classes) packed as the official .tgz, read as a stream; then verify."""
    prefix = b0_21k
    tgz = make_tarball(str(prefix), str(tmp_path / "efficientnetv2-b0-21k.tgz"), "efficientnetv2-b0-21k")
    assert main(["--flavor", "efficientnetv2-b0-21k", "--checkpoint", tgz, "--output-dir", str(tmp_path),
                 "--quiet"]) == 0
    out = tmp_path / "efficientnetv2-b0-21k.safetensors"
    from converter.loading import load_model

    model = load_model(out)
    cfg = model.pretrained_cfg
    assert (cfg["variant"], cfg["flavor"], int(cfg["num_classes"]), cfg["preprocessing"]) == ("v2-b0", "21k", 21843, "v2")
    assert list(cfg["input_size"]) == [3, 224, 224]
    photo = _v2_photos(tmp_path)["chelsea_451x300_portrait"]
    rc = main(["verify", "--weights", str(out), "--checkpoint", str(prefix), "--resolution", "64",
               "--num-images", "2", "--device", "cpu", "--images", str(photo)])  # + a photo, V2's own preprocessing
    text = capsys.readouterr().out
    assert rc == 0, text
    report = json.loads((tmp_path / "efficientnetv2-b0-21k.verify.json").read_text())
    assert report["passed"] and report["rel_error"] <= MAX_REL_ERROR

    # predict: the checkpoint's own preprocessing (v2: crop below 320, bilinear, (x-128)/128),
    # 21k class names, sigmoid scores
    from converter.predict import imagenet21k_classes
    from converter.tfref.preprocess import preprocess_bytes_v2

    assert main(["predict", str(photo), "--weights", str(out), "--json", "--top-k", "3", "--device", "cpu"]) == 0
    top = json.loads(capsys.readouterr().out)[0]["top"]
    x = preprocess_bytes_v2(photo.read_bytes(), 224, "v2")
    with torch.no_grad():
        logits = model(torch.from_numpy(x[None]).permute(0, 3, 1, 2).contiguous())[0].double()
    want = torch.sigmoid(logits).topk(3)
    assert [t["index"] for t in top] == want.indices.tolist()
    assert np.allclose([t["prob"] for t in top], want.values.numpy(), rtol=1e-6)
    assert top[0]["synset"] == imagenet21k_classes()[top[0]["index"]][0] and top[0]["name"]


def test_cli_wrong_flavor_for_the_checkpoint_is_one_line_error(converted, tmp_path, capsys):
    _, prefix, _, _, _ = converted("v2-b0")  # 1000 classes
    rc = main(["--variant", "v2-b1", "--flavor", "1k", "--checkpoint", str(prefix), "--output-dir", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "efficientnetv2-b0" in err
    assert not list(tmp_path.iterdir())


# ---- preprocessing (google/automl efficientnetv2 preprocessing.py / preprocess_legacy.py) ------

def _v2_photos(tmp_path):
    import io

    import skimage.data
    from PIL import Image

    out = {}
    for name, arr in (("astronaut_512x512", skimage.data.astronaut()),
                      ("coffee_399x597_odd", skimage.data.coffee()[:399, :597]),
                      ("chelsea_451x300_portrait", skimage.data.chelsea().transpose(1, 0, 2)),
                      ("camera_gray_511x384", skimage.data.camera()[:511, :384])):
        buf = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(arr)).save(buf, format="JPEG", quality=90)
        out[name] = tmp_path / f"{name}.jpg"
        out[name].write_bytes(buf.getvalue())
    png = tmp_path / "rocket.png"
    Image.fromarray(skimage.data.rocket()[:301, :333]).save(png)
    out["rocket_301x333_png"] = png
    return out


@pytest.mark.parametrize("flavor_variant", [("v2-s", "1k"), ("v2-b0", "21k"), ("v2-b1", "21k-ft1k"),
                                            ("v2-s", "21k-ft1k")])
def test_v2_preprocessing_bit_exact_with_tensorflow(flavor_variant, tmp_path):
    """Our numpy pipeline equals the official TF ops bit for bit (decode, crop below 320, tf.image.resize)."""
    from converter.preprocess import preprocess
    from converter.tfref.preprocess import preprocess_bytes_v2

    variant, flavor = flavor_variant
    c = find_checkpoint(variant, flavor)
    cfg = c.pretrained_cfg()
    for name, path in _v2_photos(tmp_path).items():
        want = preprocess_bytes_v2(path.read_bytes(), c.resolution, c.preprocessing)
        got = preprocess(path, cfg).transpose(1, 2, 0)
        assert want.shape == got.shape == (c.resolution, c.resolution, 3)
        np.testing.assert_array_equal(got, want, err_msg=f"{c.name} {name}")


def test_v2_wrong_preprocessing_differs(tmp_path):
    """The kinds are not interchangeable: the V1 path, (x-128)/128 for a 21k-ft1k checkpoint, the V1
    crop offsets (+1) and the legacy (non half-pixel) bilinear all give other inputs."""
    from converter import preprocess as P
    from converter.tfref.preprocess import preprocess_bytes_v2

    path = _v2_photos(tmp_path)["coffee_399x597_odd"]
    data = path.read_bytes()
    ft = preprocess_bytes_v2(data, 240, "v2-ft")
    v2 = preprocess_bytes_v2(data, 240, "v2")
    v1 = P.preprocess(path, find_checkpoint("v2-b1", "1k").pretrained_cfg()).transpose(1, 2, 0)
    assert np.abs(ft - v2).mean() > 0.01 and np.abs(v1 - v2).mean() > 0.05
    path = _v2_photos(tmp_path)["camera_gray_511x384"]  # 511 - 336 is odd: the offsets differ
    data = path.read_bytes()
    image = P.decode(path)
    oh, ow, size = P.crop_window_v2(*image.shape[:2], 224)
    v1_off = P.crop_window(*image.shape[:2], 224)
    assert (oh, ow, size) != v1_off and size == v1_off[2]  # same size, offsets (h - c) // 2 vs (h - c + 1) // 2
    ref = preprocess_bytes_v2(data, 224, "v2")
    shifted = P.resize_bilinear_half_pixel(image[v1_off[0]:v1_off[0] + size, v1_off[1]:v1_off[1] + size], 224)
    assert np.abs((shifted - 128) / 128 - ref).max() > 0.01
    legacy = P.resize_bilinear_legacy(image[oh:oh + size, ow:ow + size], 224)
    assert np.abs((legacy - 128) / 128 - ref).mean() > 0.005


def test_v2_preprocessing_differences_measured(tmp_path, capsys):
    """README table: how far the other plausible pipelines land from the official one (0-255 levels)."""
    from converter import preprocess as P
    from converter.tfref.preprocess import preprocess_bytes_v2
    from PIL import Image

    rows = {}
    for name, path in _v2_photos(tmp_path).items():
        data = path.read_bytes()
        ref = preprocess_bytes_v2(data, 384, "v2-ft") * 127.5 + 127.5  # 0-255 scale
        with Image.open(path) as im:
            pil = np.asarray(im.convert("RGB").resize((384, 384), Image.BICUBIC), np.float32)
            pil_bl = np.asarray(im.convert("RGB").resize((384, 384), Image.BILINEAR), np.float32)
        rows[name] = (float(np.abs(pil - ref).mean()), float(np.abs(pil_bl - ref).mean()))
    print(json.dumps(rows))
    assert all(a > 0 and b > 0 for a, b in rows.values())


def test_make_v2_and_batch_take_the_family():
    import subprocess
    from pathlib import Path

    from converter.batch import select_checkpoints

    repo = Path(__file__).resolve().parents[1]
    out = subprocess.run(["make", "-n", "v2", "OUT=zoo-v2"], cwd=repo, capture_output=True, text=True, check=True).stdout
    lines = [l for l in out.splitlines() if " --flavor efficientnetv2-" in l]
    assert len(lines) == 23
    for c in CHECKPOINTS_V2:
        assert f" --flavor {c.name} --output-dir zoo-v2 --verify" in out
        assert find_checkpoint(None, c.name) is c
    assert [c.name for c in select_checkpoints(["efficientnetv2-*"])] == [c.name for c in CHECKPOINTS_V2]
    assert [c.name for c in select_checkpoints(["efficientnetv2-s_3rdparty_in21k"])] == ["efficientnetv2-s-21k"]


# ---- library layouts: the real timm and mmpretrain (tests/libs_check.py in .venv-libs) ------------

def test_v2_tables_equal_library_state_dicts():
    from helpers import libs

    lib = json.loads(libs("keys", *V2_ARCHS).stdout.strip().splitlines()[-1])
    for layout in ("timm", "mmpretrain"):
        for v in V2_ARCHS:
            want = [(k, tuple(sh)) for k, sh in lib[layout][v]]
            got = [(e.key, e.shape) for e in expand(v, layout)]
            assert got == want, (layout, v, sorted(set(got) ^ set(want))[:5])


def test_v2_libraries_load_strictly_same_logits(converted, b0_21k, tmp_path):
    """Converted with --layout timm / mmpretrain, loaded strictly by the real libraries: their logits
    equal the TensorFlow reference's (1k, 21k-ft1k and a 21843-class 21k head)."""
    from converter.mapping import library_model, output_stem
    from converter.families.efficientnet_v2.checkpoints import MMPRETRAIN_NAMES
    from helpers import lib_logits

    cases = [("v2-b0", converted("v2-b0")[1], "1k", 64), ("v2-s", converted("v2-s")[1], "21k-ft1k", 64),
             ("v2-b0", b0_21k, "21k", 64)]
    jobs, want = [], []
    for variant, prefix, flavor, res in cases:
        c = find_checkpoint(variant, flavor)
        images = calibration_images(res, N_IMAGES, V2_MEAN, V2_STD)
        x = tmp_path / f"{c.name}-x.npz"
        np.savez(x, x=images.transpose(0, 3, 1, 2))
        tf_logits = reference.forward(get_arch(variant).with_classes(c.num_classes),
                                      reference.read_checkpoint_getter(str(prefix)), images, device="cpu")
        for layout in ("timm", "mmpretrain"):
            out = tmp_path / layout
            assert main(["--variant", variant, "--flavor", flavor, "--checkpoint", str(prefix), "--output-dir",
                         str(out), "--layout", layout, "--quiet"]) == 0
            name = (library_model(get_arch(variant), layout) if layout == "timm"
                    else MMPRETRAIN_NAMES.get((variant[3:], "1k")) or MMPRETRAIN_NAMES[(variant[3:], flavor)])
            jobs.append((layout, name, c.num_classes, out / f"{output_stem(c.name, layout)}.safetensors", x))
            want.append(tf_logits)
    logits, info = lib_logits(tmp_path, jobs)
    for i, (job, tf_logits) in enumerate(zip(jobs, want)):
        assert info[i]["ok"], (job, info[i])
        m = compare(tf_logits, logits[str(i)])
        assert judge(m) == [], (job[:3], m)


# ---- keras.applications EfficientNetV2 files as input (tests/test_keras.py's Keras helpers) ------

@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # Keras 3 under numpy 2
@pytest.mark.parametrize("variant,keras_name,res", [("v2-b0", "EfficientNetV2B0", 64), ("v2-s", "EfficientNetV2S", 64)])
def test_keras_v2_files_convert_to_keras_logits(tmp_path, variant, keras_name, res):
    """A real keras.applications EfficientNetV2 (random weights, BN calibrated by Keras) saved by
    Keras as .weights.h5 and legacy .h5: converted (variant inferred), our module on the same raw
    images normalized with the metadata's mean/std gives Keras's logits."""
    import keras
    from test_keras import assert_parity, calibrate, convert_file, eval_images, randomize, save_all, torch_logits

    from converter.loading import read_weights

    model = getattr(keras.applications, keras_name)(weights=None, input_shape=(res, res, 3),
                                                    classifier_activation=None)
    randomize(model, seed=3)
    images = eval_images(res)
    from converter.synthetic import synthetic_images

    calibrate(model, np.concatenate([images, synthetic_images(res, 26, seed=1)]))
    theirs = np.asarray(model(images, training=False), dtype=np.float64)
    assert theirs.std() > 0.1
    files = save_all(model, tmp_path / "k", keras_name.lower())
    for fmt in ("keras3", "legacy"):
        out = convert_file(files[fmt], tmp_path / fmt)
        assert out.name == f"keras-efficientnet{variant}.safetensors"
        _, meta = read_weights(out)
        assert meta["variant"] == variant and meta["flavor"] == "keras"
        assert meta["preprocessing"] == ("v1" if variant.startswith("v2-b") else "v2")
        assert_parity(torch_logits(out, images), theirs, f"{variant} {fmt}")
