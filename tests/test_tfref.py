"""Tests of the TensorFlow side: synthetic images, checkpoint generator, reference forward pass.

The reference forward is checked against a plain numpy implementation written here (its own
SAME padding, its own variable naming), the generator against the official inventories in
shared/reference/inventory.
"""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import json
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from converter.registry import get_arch
from converter.errors import ConversionError
from converter.synthetic import (ADVPROP_MEAN, ADVPROP_STD, CALIBRATION_SEED, IMAGENET_MEAN, IMAGENET_STD,
                                 calibration_images, image_kinds, normalize, synthetic_images)
from converter.tfref import generate as G
from converter.tfref import reference as R

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(__file__).resolve().parents[2] / "shared/reference"
EMA = "ExponentialMovingAverage"
CAL_RES = 96  # calibration resolution of the b0 test checkpoints
SEED = 7
VARIANTS = ["b0", "b1", "b2", "b3", "b4", "b5", "b6", "b7", "b8", "l2"]


def _env():
    env = dict(os.environ)
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _inventory(variant):
    data = json.loads((SHARED / "inventory" / f"efficientnet-{variant}.json").read_text())
    return [(name, tuple(shape)) for name, shape in data]


def _calibration_images():
    return calibration_images(CAL_RES, 8)


def _rel(a, b):
    return float(np.max(np.abs(np.asarray(a, np.float64) - b)) / np.max(np.abs(b)))


# ----------------------------------------------------------------------------- synthetic images


def test_synthetic_images_are_deterministic_and_of_distinct_kinds():
    a = synthetic_images(40, 8, seed=3)
    assert a.shape == (8, 40, 40, 3) and a.dtype == np.float32
    assert a.min() >= 0.0 and a.max() <= 255.0
    np.testing.assert_array_equal(a, synthetic_images(40, 8, seed=3))
    np.testing.assert_array_equal(a[:3], synthetic_images(40, 3, seed=3))  # image i ignores n
    assert not np.array_equal(a, synthetic_images(40, 8, seed=4))
    kinds = image_kinds(40, 8)
    assert len(set(kinds)) == 8
    img = {k: a[i].astype(np.float64) for i, k in enumerate(kinds)}
    assert img["flat"].std(axis=(0, 1)).max() == 0.0
    assert img["noise"].std() > 50
    # period-1 checkerboard: every horizontal neighbour differs strongly
    assert np.abs(np.diff(img["checkerboard-1"], axis=1)).min() > 100
    # smooth kinds: small neighbour steps, large overall range
    for k in ("linear-gradient", "radial-gradient", "blobs"):
        assert np.abs(np.diff(img[k], axis=1)).max() < 40 and np.ptp(img[k]) > 40, k
    # n > 8 cycles through the kinds again
    assert image_kinds(40, 10)[8:] == kinds[:2]


def test_normalize_imagenet_and_advprop():
    x = np.array([[[[0.0, 127.5, 255.0]]]], dtype=np.float32)
    got = normalize(x, IMAGENET_MEAN, IMAGENET_STD)
    want = (np.array([0.0, 0.5, 1.0]) - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    np.testing.assert_allclose(got.reshape(3), want, rtol=1e-6)
    assert got.dtype == np.float32
    imgs = synthetic_images(16, 4)
    np.testing.assert_allclose(normalize(imgs, ADVPROP_MEAN, ADVPROP_STD), imgs * 2 / 255 - 1, atol=1e-6)
    with pytest.raises(ConversionError):
        normalize(imgs, (0.5, 0.5), (0.5, 0.5, 0.5))
    with pytest.raises(ConversionError):
        synthetic_images(1)
    np.testing.assert_array_equal(calibration_images(24, 3, ADVPROP_MEAN, ADVPROP_STD),
                                  normalize(synthetic_images(24, 3, seed=CALIBRATION_SEED), ADVPROP_MEAN, ADVPROP_STD))


# ----------------------------------------------------------------------------- names and shapes


@pytest.mark.parametrize("variant", VARIANTS)
def test_plan_equals_official_inventory(variant):
    got = G.plan(get_arch(variant))
    want = _inventory(variant)
    assert set(got) == set(want)
    assert got == want  # same creation order as the official builder, too


def test_plan_of_l2_475_and_other_class_counts():
    assert G.plan(get_arch("l2-475")) == _inventory("l2")
    spec = get_arch("b0")
    p10 = dict(G.plan(spec.with_classes(10)))
    p1000 = dict(G.plan(spec))
    assert p10["efficientnet-b0/head/dense/kernel"] == (1280, 10)
    assert p10["efficientnet-b0/head/dense/bias"] == (10,)
    def trunk(p):
        return {k: v for k, v in p.items() if "/dense/" not in k}

    assert trunk(p10) == trunk(p1000)
    assert len(R.bn_layers(spec)) == sum(n.endswith("/gamma") for n in p1000) == 49


# ----------------------------------------------------------------------------- generated checkpoints


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpts")
    out = {}
    for mode in G.MODES:
        prefix = str(root / mode / "model.ckpt")
        info = G.generate_checkpoint("b0", prefix, mode=mode, seed=SEED, calibration_resolution=CAL_RES)
        out[mode] = (prefix, info)
    return out


def _load(prefix):
    reader = tf.train.load_checkpoint(prefix)
    return reader, reader.get_variable_to_shape_map(), reader.get_variable_to_dtype_map()


def test_full_checkpoint_layout(ckpts):
    prefix, info = ckpts["full"]
    reader, shapes, dtypes = _load(prefix)
    plan = G.plan(get_arch("b0"))
    trainable = [n for n, _ in plan if not R.is_moving_stat(n)]
    want = {n: s for n, s in plan}
    want.update({f"{n}/{EMA}": s for n, s in plan})  # EMA twins for every variable, stats included
    want.update({f"{n}/RMSProp": dict(plan)[n] for n in trainable})
    want.update({f"{n}/RMSProp_1": dict(plan)[n] for n in trainable})
    want["global_step"] = ()
    assert {k: tuple(v) for k, v in shapes.items()} == want
    assert dtypes.pop("global_step") == tf.int64
    assert set(dtypes.values()) == {tf.float32}
    assert info["tensors"] == len(want) and info["params"] == 5288548
    assert os.path.getsize(prefix + ".data-00000-of-00001") == info["bytes"] > 4 * 5288548 * 4
    text = (Path(prefix).parent / "checkpoint").read_text()
    assert 'model_checkpoint_path: "model.ckpt"' in text
    assert np.all(reader.get_tensor(f"{trainable[0]}/RMSProp") >= 0)


def test_full_checkpoint_raw_values_differ_from_ema(ckpts):
    reader, _, _ = _load(ckpts["full"][0])
    log_ratios = []
    for name, _ in G.plan(get_arch("b0")):
        raw, ema = reader.get_tensor(name), reader.get_tensor(f"{name}/{EMA}")
        assert not np.allclose(raw, ema, rtol=1e-2, atol=1e-4), name
        if name.endswith("moving_variance"):
            assert np.all(raw > 0) and np.all(ema > 0)
            lr = np.abs(np.log(raw / ema))
            assert lr.max() > 0.2, name  # every BN has channels whose variance moved by > 20%
            log_ratios.append(lr)
    assert np.median(np.concatenate(log_ratios)) > 0.1


def test_ema_only_and_raw_only_hold_the_same_good_values(ckpts):
    full, _, _ = _load(ckpts["full"][0])
    ema_only, shapes, dtypes = _load(ckpts["ema-only"][0])
    raw_only, shapes_raw, _ = _load(ckpts["raw-only"][0])
    plan = G.plan(get_arch("b0"))
    assert {k: tuple(v) for k, v in shapes.items()} == {**{f"{n}/{EMA}": s for n, s in plan}, "global_step": ()}
    assert dtypes["global_step"] == tf.int64
    assert {k: tuple(v) for k, v in shapes_raw.items()} == {**dict(plan), "global_step": ()}
    for name, _ in plan:
        good = full.get_tensor(f"{name}/{EMA}")
        np.testing.assert_allclose(ema_only.get_tensor(f"{name}/{EMA}"), good, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(raw_only.get_tensor(name), good, rtol=1e-5, atol=1e-7)


def test_uncalibrated_no_slots_checkpoint(tmp_path):
    prefix = str(tmp_path / "model.ckpt")
    info = G.generate_checkpoint("b0", prefix, mode="full", seed=1, slots=False, num_classes=10)
    reader, shapes, _ = _load(prefix)
    assert not [k for k in shapes if "RMSProp" in k]
    assert tuple(shapes["efficientnet-b0/head/dense/kernel"]) == (1280, 10)
    assert info["calibration_logit_std"] is None and not info["slots"]
    mm = "efficientnet-b0/blocks_3/tpu_batch_normalization/moving_mean"
    mv = "efficientnet-b0/blocks_3/tpu_batch_normalization/moving_variance"
    np.testing.assert_array_equal(reader.get_tensor(f"{mm}/{EMA}"), 0.0)
    np.testing.assert_array_equal(reader.get_tensor(f"{mv}/{EMA}"), 1.0)
    ratio = reader.get_tensor(mv)
    assert ratio.min() >= 0.3 - 1e-6 and ratio.max() <= 3.0 + 1e-6 and ratio.std() > 0.3
    assert np.abs(reader.get_tensor(mm)).mean() > 0.3
    # the official initializers' scales
    k = reader.get_tensor("efficientnet-b0/blocks_1/conv2d/kernel/" + EMA)  # [1, 1, 16, 96]
    assert abs(k.std() - np.sqrt(2.0 / 96)) < 0.1 * np.sqrt(2.0 / 96)
    d = reader.get_tensor("efficientnet-b0/head/dense/kernel/" + EMA)
    assert np.abs(d).max() <= 1 / np.sqrt(10) and np.abs(d).max() > 0.9 / np.sqrt(10)
    g = reader.get_tensor("efficientnet-b0/head/tpu_batch_normalization/gamma/" + EMA)
    assert g.min() >= 0.5 and g.max() <= 1.5


def test_generator_rejects_bad_arguments(tmp_path):
    with pytest.raises(ConversionError):
        G.generate_checkpoint("b0", str(tmp_path / "m.ckpt"), mode="ema")
    with pytest.raises(ConversionError):
        G.generate_checkpoint("b9", str(tmp_path / "m.ckpt"))
    with pytest.raises(ConversionError):
        G.generate_checkpoint("b0", str(tmp_path))  # a folder, not a prefix
    with pytest.raises(ConversionError):
        G.make_tarball(str(tmp_path / "missing.ckpt"), str(tmp_path / "x.tar.gz"), "f")


def test_make_tarball_official_layout(ckpts, tmp_path):
    prefix = ckpts["raw-only"][0]
    tar_path = G.make_tarball(prefix, str(tmp_path / "efficientnet-b0.tar.gz"), "efficientnet-b0")
    with tarfile.open(tar_path, "r:gz") as tar:
        names = sorted(tar.getnames())
        assert names == ["efficientnet-b0", "efficientnet-b0/checkpoint",
                         "efficientnet-b0/model.ckpt.data-00000-of-00001", "efficientnet-b0/model.ckpt.index"]
        tar.extractall(tmp_path / "x", filter="data")
    restored = tf.train.load_checkpoint(str(tmp_path / "x/efficientnet-b0"))  # via the checkpoint file
    original = tf.train.load_checkpoint(prefix)
    name = "efficientnet-b0/blocks_5/depthwise_conv2d/depthwise_kernel"
    np.testing.assert_array_equal(restored.get_tensor(name), original.get_tensor(name))


# ----------------------------------------------------------------------------- checkpoint getter


def test_checkpoint_getter_prefers_ema(ckpts):
    prefix = ckpts["full"][0]
    reader = tf.train.load_checkpoint(prefix)
    name = "efficientnet-b0/stem/tpu_batch_normalization/moving_variance"
    ema = R.read_checkpoint_getter(prefix)
    raw = R.read_checkpoint_getter(prefix, use_ema=False)
    np.testing.assert_array_equal(ema(name), reader.get_tensor(f"{name}/{EMA}"))
    np.testing.assert_array_equal(raw(name), reader.get_tensor(name))
    assert ema.key(name) == f"{name}/{EMA}" and raw.key(name) == name
    assert R.read_checkpoint_getter(ckpts["raw-only"][0])(name).shape == (32,)  # falls back to NAME
    with pytest.raises(ConversionError, match="EMA"):
        R.read_checkpoint_getter(ckpts["ema-only"][0], use_ema=False)(name)
    with pytest.raises(ConversionError, match="efficientnet-b0"):
        ema("efficientnet-b1/stem/conv2d/kernel")
    with pytest.raises(ConversionError):
        R.read_checkpoint_getter(str(Path(prefix).parent / "nothing.ckpt"))


# ----------------------------------------------------------------------------- calibration


def test_calibrated_checkpoint_gives_sane_image_dependent_logits(ckpts):
    spec = get_arch("b0")
    get = R.read_checkpoint_getter(ckpts["full"][0])
    fresh = normalize(synthetic_images(CAL_RES, 8, seed=0), IMAGENET_MEAN, IMAGENET_STD)
    for images in (_calibration_images(), fresh):
        logits = R.forward(spec, get, images)
        assert logits.shape == (8, 1000) and logits.dtype == np.float32
        assert np.all(np.isfinite(logits)) and logits.std() < 50
        assert logits.std(axis=0).mean() > 0.05  # depends on the image
    # the generator's report is the std of exactly these logits, after the round trip to disk
    np.testing.assert_allclose(R.forward(spec, get, _calibration_images()).std(),
                               ckpts["full"][1]["calibration_logit_std"], rtol=1e-5)
    # without calibration the features collapse: every image gets the same logits
    flat = G.make_weights(spec, seed=SEED)
    same = R.forward(spec, flat.__getitem__, _calibration_images())
    assert same.std(axis=0).mean() < 1e-2 * R.forward(spec, get, _calibration_images()).std(axis=0).mean()


@pytest.mark.parametrize("use_ema", [True, False])
def test_calibrated_bn_inputs_are_standardized(ckpts, use_ema):
    spec = get_arch("b0")
    get = R.read_checkpoint_getter(ckpts["full"][0], use_ema=use_ema)
    seen = {}

    def trace(name, x):
        seen[name] = x

    R.forward(spec, get, _calibration_images(), trace=trace)
    bns = [n for n in seen if n.split("/")[-1].startswith("tpu_batch_normalization")]
    assert bns == R.bn_layers(spec) and len(bns) == 49
    for name in bns:
        x = seen[name].astype(np.float64)
        mm, mv = get(f"{name}/moving_mean"), get(f"{name}/moving_variance")
        z = (x - mm) / np.sqrt(mv + spec.bn_eps)
        assert np.abs(z.mean(axis=(0, 1, 2))).max() < 2e-3, name
        np.testing.assert_allclose(z.var(axis=(0, 1, 2)), mv / (mv + spec.bn_eps), rtol=2e-3, err_msg=name)


def test_ema_weights_with_raw_stats_give_very_different_logits(ckpts):
    spec = get_arch("b0")
    prefix = ckpts["full"][0]
    ema, raw = R.read_checkpoint_getter(prefix), R.read_checkpoint_getter(prefix, use_ema=False)

    def mixed(name):
        return raw(name) if R.is_moving_stat(name) else ema(name)

    images = _calibration_images()
    good = R.forward(spec, ema, images)
    assert _rel(R.forward(spec, raw, images), good) > 0.5
    assert _rel(R.forward(spec, mixed, images), good) > 0.5


# ----------------------------------------------------------------------------- numpy reference


def _np_same(size, k, s):
    """TF 'SAME': out = ceil(size / s); the odd padding pixel goes after."""
    out = -(-size // s)
    total = max((out - 1) * s + k - size, 0)
    return total // 2, total - total // 2, out


def _np_conv(x, w, s, depthwise=False):
    n, h, wd, _ = x.shape
    kh, kw = w.shape[:2]
    pt, pb, oh = _np_same(h, kh, s)
    pl, pr, ow = _np_same(wd, kw, s)
    xp = np.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
    out = np.zeros((n, oh, ow, w.shape[2] if depthwise else w.shape[3]))
    for i in range(kh):
        for j in range(kw):
            patch = xp[:, i:i + s * (oh - 1) + 1:s, j:j + s * (ow - 1) + 1:s, :]
            out += patch * w[i, j, :, 0] if depthwise else patch @ w[i, j]
    return out


def _np_forward(spec, params, x):
    """EfficientNet eval forward in float64 numpy, naming the variables independently."""
    p = {k: np.asarray(v, np.float64) for k, v in params.items()}
    s = spec.scope
    sigmoid = lambda t: 0.5 * (1.0 + np.tanh(0.5 * t))  # noqa: E731  (no overflow)
    swish = lambda t: t * sigmoid(t)  # noqa: E731

    def bn(prefix, t):
        return (t - p[prefix + "/moving_mean"]) / np.sqrt(p[prefix + "/moving_variance"] + 1e-3) \
            * p[prefix + "/gamma"] + p[prefix + "/beta"]

    x = swish(bn(f"{s}/stem/tpu_batch_normalization", _np_conv(x.astype(np.float64), p[f"{s}/stem/conv2d/kernel"], 2)))
    for b in spec.blocks():
        pre = f"{s}/blocks_{b.index}/"
        bns = [pre + "tpu_batch_normalization" + sfx for sfx in ("", "_1", "_2")]
        inp = x
        if b.expand_ratio != 1:
            x = swish(bn(bns.pop(0), _np_conv(x, p[pre + "conv2d/kernel"], 1)))
            project = pre + "conv2d_1/kernel"
        else:
            project = pre + "conv2d/kernel"
        x = swish(bn(bns.pop(0), _np_conv(x, p[pre + "depthwise_conv2d/depthwise_kernel"], b.stride, True)))
        sq = x.mean(axis=(1, 2))
        sq = swish(sq @ p[pre + "se/conv2d/kernel"][0, 0] + p[pre + "se/conv2d/bias"])
        sq = sq @ p[pre + "se/conv2d_1/kernel"][0, 0] + p[pre + "se/conv2d_1/bias"]
        x = x * sigmoid(sq)[:, None, None, :]
        x = bn(bns.pop(0), _np_conv(x, p[project], 1))
        if b.stride == 1 and b.in_channels == b.out_channels:
            x = x + inp
    x = swish(bn(f"{s}/head/tpu_batch_normalization", _np_conv(x, p[f"{s}/head/conv2d/kernel"], 1)))
    return x.mean(axis=(1, 2)) @ p[f"{s}/head/dense/kernel"] + p[f"{s}/head/dense/bias"]


def test_np_same_padding_matches_tensorflow_docs():
    assert _np_same(224, 3, 2) == (0, 1, 112)  # even input: extra pixel bottom/right
    assert _np_same(225, 3, 2) == (1, 1, 113)
    assert _np_same(2, 5, 2) == (1, 2, 1)
    assert _np_same(7, 5, 1) == (2, 2, 7)


@pytest.mark.parametrize("hw,classes", [((32, 32), 1000), ((33, 45), 10)])
def test_reference_forward_matches_numpy(hw, classes):
    spec = get_arch("b0").with_classes(classes)
    params = G.make_weights(spec, seed=3, calibration_resolution=64)
    images = normalize(synthetic_images(max(hw), 8, seed=11)[:, :hw[0], :hw[1]], IMAGENET_MEAN, IMAGENET_STD)
    want = _np_forward(spec, params, images)
    assert np.abs(want).max() > 0.1
    # the reference's precision, float32 (measured rel ~3e-6 here)
    got = R.forward(spec, params.__getitem__, images)
    assert got.shape == (8, classes) and got.dtype == np.float32
    assert _rel(got, want) < 1e-5
    # the same graph in float64: a structural difference (padding, naming, SE, residuals, BN)
    # would show far above rounding
    got64 = R.forward(spec, params.__getitem__, images, dtype=np.float64)
    assert got64.dtype == np.float64 and _rel(got64, want) < 1e-10
    np.testing.assert_allclose(R.forward(spec, params.__getitem__, images, batch_size=3), got,
                               rtol=1e-5, atol=1e-5 * np.abs(got).max())


def test_residual_scaling_keeps_float32_rounding_small():
    """Random deep nets amplify float32 rounding; near-identity residual blocks keep it small."""
    spec = get_arch("b0")
    default = G.make_weights(spec, seed=SEED, calibration_resolution=64)
    plain = G.make_weights(spec, seed=SEED, calibration_resolution=64, residual_scale=1.0)
    scaled = set(G.residual_branch_gammas(spec))
    assert len(scaled) == sum(b.residual for b in spec.blocks()) == 9
    for name in scaled:
        np.testing.assert_allclose(default[name], plain[name] * np.float32(0.2), rtol=1e-6)
        assert default[name].min() >= 0.1 and default[name].max() <= 0.3
    np.testing.assert_array_equal(default["efficientnet-b0/blocks_1/conv2d/kernel"],
                                  plain["efficientnet-b0/blocks_1/conv2d/kernel"])

    def f32_vs_f64(params, images):
        return _rel(R.forward(spec, params.__getitem__, images),
                    R.forward(spec, params.__getitem__, images, dtype=np.float64))

    cal, fresh = calibration_images(64, 8), normalize(synthetic_images(64, 8, seed=0), IMAGENET_MEAN, IMAGENET_STD)
    assert f32_vs_f64(default, cal) < 4e-5 and f32_vs_f64(default, fresh) < 4e-5  # measured 1.1e-5, 4.3e-6
    assert f32_vs_f64(plain, cal) > 2 * f32_vs_f64(default, cal)  # measured 1.0e-4
    assert R.forward(spec, default.__getitem__, fresh).std() < 10  # measured 3.6 (32.9 unscaled)


def test_forward_rejects_bad_input():
    spec = get_arch("b0")
    params = G.make_weights(spec, seed=0)
    with pytest.raises(ConversionError, match="dtype"):
        R.forward(spec, params.__getitem__, np.zeros((1, 32, 32, 3), np.uint8))
    with pytest.raises(ConversionError, match="NHWC"):
        R.forward(spec, params.__getitem__, np.zeros((1, 3, 32, 32), np.float32))
    with pytest.raises(ConversionError, match="shape"):
        wrong = {**params, "efficientnet-b0/blocks_3/conv2d_1/kernel": np.zeros((1, 1, 144, 41), np.float32)}
        R.forward(spec, wrong.__getitem__, np.zeros((1, 32, 32, 3), np.float32))
    with pytest.raises(ConversionError, match="no value"):
        R.forward(spec, {}.__getitem__, np.zeros((1, 32, 32, 3), np.float32))


def test_auto_batch_size_bounds_memory():
    small = R.auto_batch_size(get_arch("b0"), 224, 224)
    big = R.auto_batch_size(get_arch("l2"), 800, 800)
    assert small == R.MAX_AUTO_BATCH and 1 <= big <= 8
    assert R.auto_batch_size(get_arch("b7"), 600, 600) < R.auto_batch_size(get_arch("b7"), 300, 300)


# ----------------------------------------------------------------------------- command lines


def test_generate_cli_writes_checkpoint_and_tarball(tmp_path):
    out = tmp_path / "ck" / "model.ckpt"
    tar_path = tmp_path / "noisy_student_efficientnet-b0.tar.gz"
    r = subprocess.run([sys.executable, "-m", "converter.tfref.generate", "--variant", "b0", "--out", str(out),
                        "--mode", "ema-only", "--seed", "5", "--num-classes", "10", "--calibrate-res", "32",
                        "--advprop-norm", "--tarball", str(tar_path)],
                       capture_output=True, text=True, cwd=REPO, env=_env(), timeout=300)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 1
    info = json.loads(lines[0])
    assert info["mode"] == "ema-only" and info["num_classes"] == 10 and info["mean"] == [0.5, 0.5, 0.5]
    assert info["tensors"] == len(G.plan(get_arch("b0"))) + 1
    shapes = tf.train.load_checkpoint(str(out)).get_variable_to_shape_map()
    assert shapes["efficientnet-b0/head/dense/kernel/" + EMA] == [1280, 10]
    assert not [k for k in shapes if k != "global_step" and not k.endswith(EMA)]
    with tarfile.open(tar_path) as tar:
        assert "noisy_student_efficientnet-b0/model.ckpt.index" in tar.getnames()
    # the stored statistics are the AdvProp-normalized calibration's
    images = calibration_images(32, 8, ADVPROP_MEAN, ADVPROP_STD)
    stats = R.calibrate(get_arch("b0").with_classes(10), R.read_checkpoint_getter(str(out)), images)
    name = "efficientnet-b0/blocks_9/tpu_batch_normalization_2/moving_variance"
    np.testing.assert_allclose(tf.train.load_checkpoint(str(out)).get_tensor(f"{name}/{EMA}"), stats[name], rtol=1e-4)


def test_reference_cli_matches_in_process_forward(ckpts, tmp_path):
    spec = get_arch("b0")
    prefix = ckpts["full"][0]
    images = _calibration_images()[:5]
    np.savez(tmp_path / "in.npz", images=images)
    for flag, use_ema, dtype in (([], True, np.float32), (["--no-ema", "--dtype", "float64"], False, np.float64)):
        out = tmp_path / f"out{len(flag)}.npz"
        r = subprocess.run([sys.executable, "-m", "converter.tfref.reference", "--checkpoint", prefix,
                            "--variant", "b0", "--images", str(tmp_path / "in.npz"), "--out", str(out),
                            "--device", "cpu", "--batch-size", "2", *flag],
                           capture_output=True, text=True, cwd=REPO, env=_env(), timeout=300)
        assert r.returncode == 0, r.stderr
        with np.load(out) as data:
            logits, seconds = data["logits"], float(data["seconds"])
            assert str(data["device"]) == "/CPU:0"
        # same batches as the CLI: float32 results depend on the batch composition
        want = R.forward(spec, R.read_checkpoint_getter(prefix, use_ema=use_ema), images, batch_size=2, dtype=dtype)
        assert logits.shape == (5, 1000) and logits.dtype == dtype and seconds > 0
        np.testing.assert_allclose(logits, want, rtol=1e-6, atol=1e-6 * np.abs(want).max())


def test_reference_cli_reports_input_errors_in_one_line(ckpts, tmp_path):
    np.savez(tmp_path / "in.npz", images=_calibration_images()[:1])
    r = subprocess.run([sys.executable, "-m", "converter.tfref.reference", "--checkpoint", ckpts["full"][0],
                        "--variant", "b1", "--images", str(tmp_path / "in.npz"), "--out", str(tmp_path / "o.npz"),
                        "--device", "cpu"],
                       capture_output=True, text=True, cwd=REPO, env=_env(), timeout=300)
    assert r.returncode == 2
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "efficientnet-b0" in err[0]
    assert not (tmp_path / "o.npz").exists()


# ----------------------------------------------------------------------------- independence


def test_tfref_shares_only_arch_errors_synthetic_and_imports_tensorflow_lazily():
    import ast

    files = sorted((REPO / "converter" / "tfref").glob("*.py")) + [REPO / "converter" / "synthetic.py"]
    # converter.keras_names: matching names with Keras counters; converter.registry: the families'
    # architectures and references (converter/families/*/reference.py, whose modules no file here
    # imports by name); converter.checkpoint: CROP_PADDING; converter.family: the names of the head
    # endpoints (all pure Python: no torch, nothing of the mapping)
    allowed = {"converter.arch", "converter.errors", "converter.synthetic", "converter.tfref",
               "converter.keras_names", "converter.registry", "converter.checkpoint", "converter.family"}
    for path in files:
        package = "converter" if path.name == "synthetic.py" else "converter.tfref"
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = package.split(".")[:len(package.split(".")) - node.level + 1] if node.level else []
                names = [".".join(base + ([node.module] if node.module else []))]
            else:
                continue
            for name in names:
                assert name.split(".")[0] not in ("torch", "torchvision"), (path, name)
                if name.startswith("converter") and not name.startswith("converter.tfref."):
                    assert name in allowed, (path, name)
    # importing the modules loads neither framework: the CLI can hide GPUs before TF starts
    code = ("import sys, converter.synthetic, converter.tfref.reference, converter.tfref.generate; "
            "print(sorted(m for m in ('tensorflow', 'torch') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, env=_env(), timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stderr
