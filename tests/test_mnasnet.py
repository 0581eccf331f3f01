"""MnasNet and MixNet (tensorflow/tpu 7dc921f models/official/mnasnet): architecture, names,
conversion, parity, preprocessing.

Evidence from the official code itself (tests/data/official_mnasnet.py, run with tf_keras on the
official sources): its variable lists for the 9 released architectures
(mnasnet_official_variables.json.gz) and its logits on checkpoints that generate_checkpoint
writes deterministically (mnasnet_official_logits.npz; cases in tests/mnasnet_cases.py).
Parity runs at small input sizes (CI); negative tests: symmetric padding, group remainder in the
last group, bicubic instead of bilinear resize, a checkpoint with one conv too many.
"""
import copy
import gzip
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from converter import load_model
from converter.registry import count_macs, count_params, get_arch
from converter.cli import main
from converter.errors import ConversionError
from converter.mapping import expand, resolve_names
from converter.families.mnasnet.arch import MIXNET_M_BLOCKS, MIXNET_S_BLOCKS, MNAS_ARCHS, MNASNET_A1_BLOCKS, MNASNET_SMALL_BLOCKS, MixBlock, MixBlockArgs, keras_aliases, split_channels
from converter.layers import Conv2dSame
from converter.model import EfficientNet, build_model
from converter.families.mnasnet.modules import GroupedConv2dSame
from converter.checkpoint import IMAGENET_MEAN, IMAGENET_STD
from converter.registry import find_checkpoint
from converter.families.mnasnet.checkpoints import CHECKPOINTS_MNAS, MNAS_TABLE
from mnasnet_cases import CASES, N_IMAGES, SEED, case_spec

tf = pytest.importorskip("tensorflow")

from converter.convert import iter_tensors, select  # noqa: E402
from converter.sources.readers import open_reader  # noqa: E402
from converter.synthetic import calibration_images  # noqa: E402
from converter.tfref import reference  # noqa: E402
from converter.tfref.generate import generate_checkpoint, write_checkpoint  # noqa: E402
from converter.verify import MAX_REL_ERROR, compare, judge  # noqa: E402

DATA = Path(__file__).resolve().parent / "data"
OFFICIAL_VARIABLES = json.loads(gzip.decompress((DATA / "mnasnet_official_variables.json.gz").read_bytes()))
CASE_RES = dict(CASES)
# CI parity of every architecture: the official-logit cases plus mixnet-m / -l (small, one odd size)
PARITY_RES = {**CASE_RES, "mixnet-m": 57, "mixnet-l": 64}


# ----------------------------------------------------------------------------- architecture


@pytest.mark.parametrize("code", MNASNET_A1_BLOCKS + MNASNET_SMALL_BLOCKS)
def test_mnasnet_block_codes_round_trip(code):
    args = MixBlockArgs.decode(code, mixnet=False)
    assert args.encode(mixnet=False) == code
    assert args.expand_kernels == args.project_kernels == (1,) and len(args.dw_kernels) == 1


@pytest.mark.parametrize("code", MIXNET_S_BLOCKS + MIXNET_M_BLOCKS)
def test_mixnet_block_codes_round_trip(code):
    args = MixBlockArgs.decode(code, mixnet=True)
    assert args.encode(mixnet=True) == code
    assert args.swish == code.endswith("_sw")


def test_mixnet_decoder_reads_kernel_lists_and_groups():
    a = MixBlockArgs.decode("r2_k3.5.7.9_a1.1_p1.1_s11_e3_i120_o120_se0.5_sw", mixnet=True)
    assert (a.num_repeat, a.dw_kernels, a.expand_kernels, a.project_kernels) == (2, (3, 5, 7, 9), (1, 1), (1, 1))
    assert (a.strides, a.expand_ratio, a.input_filters, a.output_filters, a.se_ratio) == ((1, 1), 3, 120, 120, 0.5)
    assert a.swish and a.id_skip and not a.dilated
    for bad, mixnet, why in (("r1_k3_s11_e1_i16_o16", True, r"missing option\(s\) \['a', 'p'\]"),
                             ("r1_k3_a1_p1_s11_e1_i16_o16_zz", True, "unknown"),
                             ("r1_k3_a1_p1_s11_e1_i16_o16", False, "unknown"),
                             ("r1_k3.5_s11_e1_i16_o16", False, "one kernel size")):
        with pytest.raises(ConversionError, match=why):
            MixBlockArgs.decode(bad, mixnet=mixnet)


def test_split_channels_puts_the_remainder_first():
    # custom_layers._split_channels
    assert split_channels(80, 3) == [28, 26, 26]
    assert split_channels(16, 3) == [6, 5, 5]
    assert split_channels(96, 2) == [48, 48]
    assert split_channels(7, 1) == [7]


def test_registry_names_and_widths():
    assert len(MNAS_ARCHS) == 25 + 1 + 3
    assert get_arch("mnasnet-a1_d0.75_i160") is get_arch("MNASNET-A1_D0.75_I160")
    spec = get_arch("mnasnet-a1_d0.75_i160")
    assert (spec.name, spec.width, spec.resolution, spec.scope) == ("mnasnet-a1_d0.75_i160", 0.75, 160, "mnasnet-a1")
    # round_filters as mnasnet_model.round_filters: stem scaled, head fixed at 1280 (MixNet: 1536)
    assert [get_arch(v).stem_channels for v in ("mnasnet-a1_d1.4", "mnasnet-a1", "mnasnet-a1_d0.5",
                                                "mnasnet-a1_d0.35", "mnasnet-small")] == [48, 32, 16, 16, 8]
    assert {get_arch(v).head_channels for v in ("mnasnet-a1_d1.4", "mnasnet-a1_d0.35", "mnasnet-small")} == {1280}
    assert [(get_arch(v).stem_channels, get_arch(v).head_channels) for v in ("mixnet-s", "mixnet-m", "mixnet-l")] == \
        [(16, 1536), (24, 1536), (32, 1536)]
    # mnasnet-small's first block runs its depthwise conv on the 8 stem channels (block string i16)
    b0 = get_arch("mnasnet-small").blocks()[0]
    assert (b0.in_channels, b0.mid_channels, b0.out_channels, b0.residual) == (8, 8, 8, False)
    # SE width from the block input filters: mnasnet-a1 block 3 (i24, e3, se0.25) -> 6
    assert get_arch("mnasnet-a1").blocks()[3].se_channels == 6
    b = get_arch("mixnet-s").blocks()[1]
    assert isinstance(b, MixBlock) and (b.expand_groups, b.project_groups, b.swish) == (2, 2, False)
    assert get_arch("mixnet-s").blocks()[13].dw_kernels == (3, 5, 7, 9, 11)


@pytest.mark.parametrize("variant", sorted(OFFICIAL_VARIABLES))
def test_variables_equal_the_official_builders(variant):
    """Names (fresh-graph Keras counters), shapes and creation order == the official code's."""
    spec = get_arch(variant)
    official = [(n, tuple(s)) for n, s in OFFICIAL_VARIABLES[variant]]
    assert reference.variables(spec) == official
    # the native table: every official variable once, each into the module's tensor of its shape
    entries = expand(spec)
    assert sorted((e.tf_name, e.tf_shape) for e in entries) == sorted(official)
    with torch.device("meta"):
        sd = build_model(variant).state_dict()
    assert [(e.key, e.shape) for e in entries] == [(k, tuple(v.shape)) for k, v in sd.items()]
    # parameters as the official builder has them (BN moving statistics not counted)
    assert count_params(spec) == sum(int(np.prod(s)) for n, s in official if "moving_" not in n)


def test_parameter_counts_and_madds_match_the_readmes():
    for c in CHECKPOINTS_MNAS:
        if c.family == "mnasnet" and c.variant != "mnasnet-small":
            top1, top5, params, madds = MNAS_TABLE[(c.arch.width, c.resolution)]
            assert round(count_params(c.arch) / 1e6, 1) == params, c.name
            # the README's multiply-adds are 0.6-2.5 % above this count (what else it counts is not said)
            assert 0.97 < count_macs(c.arch) / 1e6 / madds < 1.0, c.name
    assert round(count_params(get_arch("mnasnet-a1")) / 1e6, 1) == 3.9
    assert round(count_macs(get_arch("mnasnet-a1")) / 1e6) == 312  # README: "3.9M parameters and 312M"
    assert round(count_params(get_arch("mnasnet-small")) / 1e6, 1) == 2.0
    assert round(count_macs(get_arch("mnasnet-small")) / 1e6) == 68


def test_zoo_entries_urls_and_preprocessing():
    assert len(CHECKPOINTS_MNAS) == 29
    base = "https://storage.googleapis.com/cloud-tpu-checkpoints/"
    assert find_checkpoint("mnasnet-a1").url == base + "mnasnet/mnasnet-a1.tgz"
    assert find_checkpoint("mnasnet-a1_d1.4").url == base + "mnasnet/mnasnet-a1-140.tgz"
    assert find_checkpoint(None, "mnasnet-a1-035").variant == "mnasnet-a1_d0.35"
    grid = find_checkpoint("mnasnet-a1_d0.5_i128")
    assert (grid.url, grid.resolution, grid.top1) == (base + "mnasnet/mnasnet-a1_d0.5_i128.tgz", 128, 60.8)
    assert find_checkpoint("mixnet-l", "standard").url == base + "mixnet/mixnet-l.tar.gz"
    cfg = grid.pretrained_cfg()
    assert (cfg["interpolation"], cfg["preprocessing"], cfg["crop_pct"]) == ("bilinear", "mnasnet", 128 / 160)
    assert cfg["mean"] == list(IMAGENET_MEAN) and cfg["std"] == list(IMAGENET_STD)
    with pytest.raises(ConversionError, match="released once"):
        find_checkpoint("mixnet-s", "advprop")


def test_cli_list_shows_them(capsys):
    assert main(["--list"]) == 0
    out = capsys.readouterr().out
    for c in CHECKPOINTS_MNAS:
        assert c.name in out and c.url in out


# ----------------------------------------------------------------------------- names


def _fake_names(spec, counter_shift=0, model_element=True):
    """The official names of ``spec`` with Keras counters shifted and the model element kept or dropped."""
    import re

    out = []
    for name, _ in reference.variables(spec):
        if not model_element:
            name = name.replace("/mnas_net_model/", "/").replace("/mixnet_model/", "/")

        def shift(m):
            n = int(m.group(2) or 0) + counter_shift
            return f"/{m.group(1)}_{n}/" if n else f"/{m.group(1)}/"
        out.append(re.sub(r"/(conv2d|depthwise_conv2d)(?:_(\d+))?/", shift, name))
    return out


@pytest.mark.parametrize("variant", ["mixnet-s", "mnasnet-a1"])
def test_keras_counters_resolved_by_block_and_order(variant):
    spec = get_arch(variant)
    entries = expand(spec)
    for shift, element in ((0, True), (37, True), (5, False)):
        names = _fake_names(spec, shift, element)
        got = resolve_names(spec, entries, [n + "/ExponentialMovingAverage" for n in names] + names)
        assert sorted(e.tf_name for e in got) == sorted(names)
        # same layer order within each block: the k-th conv of a block maps to the k-th name
        assert [e.key for e in got] == [e.key for e in entries]
    by_key = {e.key: e.tf_name for e in resolve_names(spec, entries, _fake_names(spec, 37))}
    if variant == "mixnet-s":
        assert by_key["blocks.1.expand_conv.convs.1.weight"] == "mixnet-s/mixnet_model/blocks_1/conv2d_39/kernel"
        assert by_key["stem.conv.weight"] == "mixnet-s/mixnet_model/stem/conv2d_115/kernel"


def test_keras_counters_one_conv_too_many_is_refused():
    spec = get_arch("mixnet-s")
    names = _fake_names(spec) + ["mixnet-s/mixnet_model/blocks_3/conv2d_999/kernel"]
    with pytest.raises(ConversionError, match=r"mixnet-s/blocks_3/: expected 2 conv2d/kernel .* has 3"):
        keras_aliases([n for n, _ in reference.variables(spec)], names)


# ----------------------------------------------------------------------------- parity


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("mnasnet")


_CKPTS = {}


def _checkpoint(root, name):
    """generate_checkpoint as tests/data/official_mnasnet.py ran it (EMA-only, seed 0); the first
    MnasNet and MixNet case in mode full (raw + EMA + slots)."""
    if name not in _CKPTS:
        prefix = root / name / "model.ckpt"
        mode = "full" if name in ("mixnet-s", "mnasnet-a1") else "ema-only"
        generate_checkpoint(case_spec(name), str(prefix), mode=mode, seed=SEED, calibration_resolution=PARITY_RES[name],
                            calibration_images=N_IMAGES, slots=mode == "full")
        _CKPTS[name] = prefix
    return _CKPTS[name]


def _images(name):
    return calibration_images(PARITY_RES[name], N_IMAGES, IMAGENET_MEAN, IMAGENET_STD)


def _torch_logits(model, images):
    with torch.no_grad():
        return model(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()).numpy()


def _load(prefix, spec) -> EfficientNet:
    """The converted model through the library API (select + iter_tensors), for any spec."""
    reader = open_reader(str(prefix))
    model = EfficientNet(spec).eval()
    model.load_state_dict(dict((k, torch.from_numpy(v)) for k, v in iter_tensors(reader, select(reader, spec))))
    return model


@pytest.fixture(scope="module")
def converted(root):
    """name -> (prefix, converted model, TF reference logits on the test images)."""
    cache = {}

    def get(name):
        if name not in cache:
            prefix = _checkpoint(root, name)
            spec = case_spec(name)
            if name != "mixnet-uneven":  # a released architecture: through the CLI
                out = root / f"out-{name}"
                assert main(["--variant", name, "--checkpoint", str(prefix), "--output-dir", str(out),
                             "--quiet", "--force"]) == 0
                model = load_model(out / f"{find_checkpoint(name).name}.safetensors")
            else:
                model = _load(prefix, spec)
            tf_logits = reference.forward(spec, reference.read_checkpoint_getter(str(prefix)), _images(name),
                                          device="cpu")
            cache[name] = (prefix, model, tf_logits)
        return cache[name]
    return get


@pytest.mark.parametrize("name", sorted(PARITY_RES))
def test_parity_with_the_reference(name, converted):
    prefix, model, tf_logits = converted(name)
    m = compare(tf_logits, _torch_logits(model, _images(name)))
    print(name, m)
    assert judge(m) == [] and m["rel_error"] <= MAX_REL_ERROR and m["top1_agreement"] == 1.0
    assert np.std(tf_logits) > 0.05


@pytest.mark.parametrize("name", [c for c, _ in CASES])
def test_equal_to_the_official_code(name, converted):
    """The official code's logits on the same generated checkpoint (tests/data/official_mnasnet.py)."""
    with np.load(DATA / "mnasnet_official_logits.npz") as z:
        official = z[name]
    _, model, tf_logits = converted(name)
    for ours in (tf_logits, _torch_logits(model, _images(name))):
        m = compare(official, ours)
        assert judge(m) == [] and m["rel_error"] <= MAX_REL_ERROR, (name, m)


def test_static_padding_and_batch_of_one_equal(converted):
    _, model, _ = converted("mixnet-uneven")
    images = _images("mixnet-uneven")
    dynamic = _torch_logits(model, images)
    fast = copy.deepcopy(model).set_input_size(images.shape[1])
    # every group of a strided MixConv sees the block input size (not the previous group's output)
    for m in fast.modules():
        if isinstance(m, GroupedConv2dSame) and m.convs[0].stride[0] == 2:
            assert len({c.static_hw for c in m.convs}) == 1
    np.testing.assert_allclose(_torch_logits(fast, images), dynamic, rtol=0, atol=1e-6)
    np.testing.assert_allclose(_torch_logits(model, images[:1]), dynamic[:1], rtol=1e-5, atol=1e-6)
    # BN folding: stem/head and MnasNet blocks fold, MixConv blocks keep their BNs (grouped convs)
    for name in ("mixnet-uneven", "mnasnet-a1"):
        _, model, tf_logits = converted(name)
        fused = copy.deepcopy(model).fuse_bn()
        assert isinstance(fused.stem.bn, torch.nn.Identity)
        m = compare(tf_logits, _torch_logits(fused, _images(name)))
        assert judge(m) == [] and m["rel_error"] <= MAX_REL_ERROR, (name, m)


def test_fails_with_symmetric_padding(converted, monkeypatch):
    """PyTorch-style symmetric padding instead of TF 'SAME' (extra pixel bottom/right)."""
    _, model, tf_logits = converted("mnasnet-a1")

    def symmetric(self, h, w):
        p = [(k - 1) // 2 for k in self.kernel_size]
        return p, [0, 0, 0, 0]
    monkeypatch.setattr(Conv2dSame, "same_pads", symmetric)
    broken = copy.deepcopy(model).set_input_size(None)
    m = compare(tf_logits, _torch_logits(broken, _images("mnasnet-a1")))
    assert judge(m) != [] and m["rel_error"] > 1e-2


def test_fails_with_the_remainder_in_the_last_group(converted, monkeypatch, root):
    """Groups split with the remainder last: the tables no longer fit the official shapes."""
    prefix, _, _ = converted("mixnet-uneven")
    import converter.families.mnasnet.arch as M

    monkeypatch.setattr(M, "split_channels", lambda total, groups: [total // groups] * (groups - 1)
                        + [total - total // groups * (groups - 1)])
    with pytest.raises(ConversionError, match="wrong shape"):
        _load(prefix, case_spec("mixnet-uneven"))


def test_fails_with_relu_in_swish_blocks(converted):
    _, model, tf_logits = converted("mixnet-uneven")
    broken = copy.deepcopy(model)
    for mod in broken.modules():
        for name, child in mod.named_children():
            if isinstance(child, torch.nn.SiLU):
                setattr(mod, name, torch.nn.ReLU())
    m = compare(tf_logits, _torch_logits(broken, _images("mixnet-uneven")))
    assert judge(m) != [] and m["rel_error"] > 1e-3


def test_plain_names_and_shifted_counters_convert_the_same(converted, root, tmp_path):
    """A checkpoint whose convs lack the model element and carry other counters: same tensors."""
    prefix, model, _ = converted("mixnet-s")
    r = tf.train.load_checkpoint(str(prefix))
    spec = get_arch("mixnet-s")
    rename = dict(zip((n for n, _ in reference.variables(spec)), _fake_names(spec, 11, model_element=False)))
    values = {}
    for n in r.get_variable_to_shape_map():
        base, _, rest = n.partition("/ExponentialMovingAverage")
        for suffix in ("/RMSProp_1", "/RMSProp"):
            if base.endswith(suffix):
                base, rest = base[: -len(suffix)], suffix
                break
        else:
            rest = "/ExponentialMovingAverage" if n.endswith("/ExponentialMovingAverage") else ""
        values[rename.get(base, base) + rest] = r.get_tensor(n)
    plain = tmp_path / "model.ckpt"
    write_checkpoint(str(plain), sorted(values.items()))
    assert main(["--variant", "mixnet-s", "--checkpoint", str(plain), "--output-dir", str(tmp_path), "--quiet"]) == 0
    other = load_model(tmp_path / "mixnet-s.safetensors")
    for k, v in model.state_dict().items():
        assert torch.equal(v, other.state_dict()[k]), k


def test_grid_variant_converts_with_its_resolution(converted, tmp_path):
    """mnasnet-a1_d0.35_i96: the d0.35 weights, evaluated at 96 px (input size and crop in the metadata)."""
    prefix, model, _ = converted("mnasnet-a1_d0.35")
    assert main(["--flavor", "mnasnet-a1_d0.35_i96", "--checkpoint", str(prefix), "--output-dir", str(tmp_path),
                 "--quiet"]) == 0  # the official file name alone names the variant
    grid = load_model(tmp_path / "mnasnet-a1_d0.35_i96.safetensors")
    assert grid.pretrained_cfg["input_size"] == [3, 96, 96] and grid.pretrained_cfg["crop_pct"] == 96 / 128
    for k, v in model.state_dict().items():
        assert torch.equal(v, grid.state_dict()[k])


def test_download_from_the_official_paths(converted, tmp_path, monkeypatch):
    """No --checkpoint: cloud-tpu-checkpoints/mnasnet/NAME.tgz and .../mixnet/NAME.tar.gz (below $EFFNET_BASE_URL)."""
    from converter.tfref.generate import make_tarball
    from helpers import BucketServer

    bucket = tmp_path / "bucket"
    for name, rel in (("mnasnet-small", "mnasnet/mnasnet-small.tgz"), ("mixnet-s", "mixnet/mixnet-s.tar.gz")):
        (bucket / rel).parent.mkdir(parents=True, exist_ok=True)
        make_tarball(str(converted(name)[0]), str(bucket / rel), name)
    with BucketServer(bucket) as server:
        monkeypatch.setenv("EFFNET_BASE_URL", server.url)
        monkeypatch.setenv("EFFNET_CACHE", str(tmp_path / "cache"))
        assert main(["--flavor", "mixnet-s", "--output-dir", str(tmp_path / "out"), "--quiet"]) == 0
        assert main(["--variant", "mnasnet-small", "--output-dir", str(tmp_path / "out"), "--quiet"]) == 0
        assert server.hits == ["/mixnet/mixnet-s.tar.gz", "/mnasnet/mnasnet-small.tgz"]
    for name in ("mixnet-s", "mnasnet-small"):
        model = load_model(tmp_path / "out" / f"{name}.safetensors")
        for k, v in converted(name)[1].state_dict().items():
            assert torch.equal(v, model.state_dict()[k])


def test_make_mnas_names_every_checkpoint():
    import re
    import shutil
    import subprocess

    if shutil.which("make") is None:
        pytest.fail("make is needed")
    proc = subprocess.run(["make", "-n", "-s", "-C", str(Path(__file__).resolve().parents[1]), "mnas",
                           "OUT=zoo-dry-run"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    got = re.findall(r"--flavor (\S+) --output-dir zoo-dry-run --verify", proc.stdout)
    assert sorted(got) == sorted(c.name for c in CHECKPOINTS_MNAS)
    assert all(find_checkpoint(None, name).name == name for name in got)


def test_wrong_scope_is_one_line_error(converted, tmp_path, capsys):
    prefix, _, _ = converted("mixnet-s")
    assert main(["--variant", "mixnet-m", "--checkpoint", str(prefix), "--output-dir", str(tmp_path)]) != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "mixnet-s" in err and "mixnet-m" in err
    assert not list(tmp_path.iterdir())


# ----------------------------------------------------------------------------- preprocessing


@pytest.mark.parametrize("in_h,in_w,out", [(200, 300, 224), (97, 131, 64), (500, 375, 192), (33, 20, 96),
                                           (224, 224, 224), (1, 5, 7), (640, 480, 160)])
def test_resize_bilinear_legacy_bit_exact(in_h, in_w, out):
    """numpy == tf.compat.v1.image.resize (what mnasnet preprocessing.py calls: BILINEAR, no half pixel)."""
    from converter.preprocess import resize_bilinear_legacy

    img = np.random.default_rng(in_h * 1000 + in_w).integers(0, 256, (in_h, in_w, 3), dtype=np.uint8)
    ours = resize_bilinear_legacy(img, out)
    np.testing.assert_array_equal(ours, tf.compat.v1.image.resize([img], [out, out])[0].numpy())
    np.testing.assert_array_equal(ours, tf.compat.v1.image.resize_bilinear([img], [out, out])[0].numpy())
    if (in_h, in_w) != (out, out):  # TF2's half-pixel bilinear is another function
        assert not np.array_equal(ours, tf.image.resize(img, [out, out]).numpy())


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    from test_preprocess import _photos

    root = tmp_path_factory.mktemp("mnas-photos")
    paths = {}
    for name, data in _photos().items():
        paths[name] = root / f"{name}.jpg"
        paths[name].write_bytes(data)
    return paths


def test_official_pipeline_bilinear_matches_tensorflow(photos):
    """The metadata's preprocessing ("mnasnet") picks the bilinear path; == TF's ops of the official code."""
    from converter import preprocess as P
    from converter.tfref.preprocess import preprocess_bytes

    for variant in ("mnasnet-a1", "mnasnet-a1_d1.0_i96", "mixnet-l"):
        cfg = find_checkpoint(variant).pretrained_cfg()
        res = cfg["input_size"][-1]
        assert P.cfg_resize(cfg) == "bilinear"
        for name, path in photos.items():
            data = path.read_bytes()
            ours = P.preprocess_raw(path, res, crop_pct=cfg["crop_pct"], resize="bilinear")
            # TF's legacy bilinear resize of our crop window (decode_and_crop_jpeg's window, its side columns
            # redone as libjpeg-turbo's cropped decode does: test_preprocess.py): bit for bit
            image = P.decode(data)
            oh, ow, size = P.crop_window(image.shape[0], image.shape[1], res, cfg["crop_pct"])
            window = P._crop_edges_as_tf(data, P._jpeg_markers(data), image, oh, ow, size)
            np.testing.assert_array_equal(ours, tf.compat.v1.image.resize(window[None], [res, res])[0].numpy())
            # the official decode_and_crop_jpeg: at most single edge pixels with clipped chroma differ; with
            # the bilinear legacy taps they reach the first/last output columns only
            official = preprocess_bytes(data, res, cfg["crop_pct"], resize="bilinear")
            assert np.abs(ours - official).mean() <= 0.002
            cols = np.nonzero(np.abs(ours - official).max(axis=(0, 2)))[0]
            assert set(cols.tolist()) <= {0, res - 1}, (variant, name, cols)
            assert np.abs(ours - official)[:, 1:-1].max() == 0
            # normalized as the metadata says, with the bilinear resize
            x = P.preprocess(path, cfg)
            np.testing.assert_allclose(x, P.normalize(ours, cfg["mean"], cfg["std"]).transpose(2, 0, 1), rtol=0, atol=0)


def test_fails_with_bicubic_instead_of_bilinear(photos):
    from converter import preprocess as P
    from converter.tfref.preprocess import preprocess_bytes

    cfg = find_checkpoint("mnasnet-a1").pretrained_cfg()
    diffs = []
    for name, path in photos.items():
        official = preprocess_bytes(path.read_bytes(), 224, cfg["crop_pct"], resize="bilinear")
        bicubic = P.preprocess_raw(path, 224, crop_pct=cfg["crop_pct"], resize="bicubic")
        diffs.append(np.abs(bicubic - official).mean())
    # levels, far above the 0.01 edge-column allowance; a crop of exactly twice the size (astronaut, 448 ->
    # 224) samples whole pixels with either kernel and is the one photo where they agree
    assert sum(d > 0.3 for d in diffs) >= len(diffs) - 1, diffs


def test_cli_verify_with_photos_uses_bilinear(converted, photos, tmp_path, monkeypatch):
    """--verify with synthetic images and photos: TF preprocesses the photos as the official code
    (bilinear legacy resize), the TF reference runs by the official names, the model agrees."""
    import converter.verify as V

    seen = []
    original = V.tf_preprocess
    monkeypatch.setattr(V, "tf_preprocess", lambda *a, **k: seen.append(a[5:] + tuple(k.values())) or original(*a, **k))
    prefix, _, _ = converted("mixnet-s")
    files = [str(photos["astronaut_512x512"]), str(photos["coffee_399x597_odd"])]
    assert main(["--variant", "mixnet-s", "--checkpoint", str(prefix), "--output-dir", str(tmp_path), "--quiet",
                 "--verify", "--resolution", "64", "--num-images", "2", "--images", *files]) == 0
    assert len(seen) == 1 and seen[0][0].resize == "bilinear"  # the pipeline: its resize


def test_predict_uses_the_bilinear_preprocessing(converted, photos, root, capsys):
    """predict: the metadata's preprocessing (bilinear legacy resize, ImageNet mean/std), its top-1."""
    from converter.preprocess import normalize, preprocess_batch, preprocess_raw

    _, model, _ = converted("mixnet-s")
    weights = root / "out-mixnet-s" / "mixnet-s.safetensors"
    path = str(photos["coffee_399x597_odd"])
    cfg = dict(model.pretrained_cfg)
    x = preprocess_batch([path], cfg)
    bilinear = normalize(preprocess_raw(path, 224, crop_pct=cfg["crop_pct"], resize="bilinear"), cfg["mean"], cfg["std"])
    np.testing.assert_array_equal(x[0], bilinear.transpose(2, 0, 1))
    capsys.readouterr()  # what the conversion printed
    assert main(["predict", path, "--weights", str(weights), "--json", "--device", "cpu", "--top-k", "3"]) == 0
    result = json.loads(capsys.readouterr().out)
    with torch.no_grad():
        logits = model(torch.from_numpy(x))[0]
    assert result[0]["top"][0]["index"] == int(logits.argmax())


# ----------------------------------------------------------------------------- timm


TIMM_VARIANTS = ("mixnet-s", "mixnet-m", "mixnet-l", "mnasnet-a1", "mnasnet-a1_d1.4", "mnasnet-a1_d0.75",
                 "mnasnet-a1_d0.5")


def test_timm_table_equals_timm_state_dicts():
    """Our timm table == timm's own state_dict (keys, order, shapes) of tf_mixnet_* / semnasnet_*."""
    from helpers import libs

    lib = json.loads(libs("keys", *TIMM_VARIANTS).stdout.strip().splitlines()[-1])
    for v in TIMM_VARIANTS:
        assert [(e.key, e.shape) for e in expand(v, "timm")] == [(k, tuple(s)) for k, s in lib["timm"][v]], v


def test_timm_refusals_are_one_line(converted, tmp_path, capsys):
    prefix, _, _ = converted("mnasnet-small")
    for v, why in (("mnasnet-small", "adds a residual to its first block"),
                   ("mnasnet-a1_d0.35_i96", "depth multiplier 0.35")):
        assert main(["--variant", v, "--checkpoint", str(prefix), "--output-dir", str(tmp_path), "--layout",
                     "timm"]) != 0
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and why in err and "--layout native" in err
    assert main(["--variant", "mixnet-s", "--checkpoint", str(prefix), "--output-dir", str(tmp_path), "--layout",
                 "mmpretrain"]) != 0
    assert "mixnet layouts: native, timm" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_timm_models_load_strictly_and_give_the_official_logits(converted, tmp_path):
    """The real timm (.venv-libs): --layout timm files load strictly into tf_mixnet_* / semnasnet_*
    (pad_type='same', bn_eps=1e-3) and reproduce the TensorFlow reference."""
    from converter.mapping import library_model
    from helpers import lib_logits

    jobs, refs = [], []
    for name in ("mixnet-s", "mixnet-m", "mixnet-l", "mnasnet-a1"):
        prefix, _, tf_logits = converted(name)
        out = tmp_path / name
        assert main(["--variant", name, "--checkpoint", str(prefix), "--output-dir", str(out), "--quiet",
                     "--layout", "timm"]) == 0
        x = tmp_path / f"{name}.npz"
        np.savez(x, x=_images(name).transpose(0, 3, 1, 2).copy())
        jobs.append(("timm", library_model(get_arch(name), "timm"), 1000, out / f"{name}.timm.safetensors", x))
        refs.append(tf_logits)
    logits, info = lib_logits(tmp_path, jobs)
    for i, ((_, model, *_), ref) in enumerate(zip(jobs, refs)):
        assert info[i]["ok"], info[i]
        m = compare(ref, logits[str(i)])
        print(model, m)
        assert judge(m) == [] and m["rel_error"] <= MAX_REL_ERROR, (model, m)


# ----------------------------------------------------------------------------- full size (make parity / -m slow)


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["mixnet-l", "mnasnet-a1_d1.4", "mnasnet-small"])
def test_full_size_parity(variant, tmp_path):
    """At the native 224 px: converted model vs the TensorFlow reference (and the float64 reference)."""
    spec = get_arch(variant)
    prefix = tmp_path / "model.ckpt"
    generate_checkpoint(variant, str(prefix), mode="full", calibration_resolution=spec.resolution, calibration_images=4)
    out = tmp_path / "out"
    assert main(["--variant", variant, "--checkpoint", str(prefix), "--output-dir", str(out), "--quiet"]) == 0
    model = load_model(out / f"{find_checkpoint(variant).name}.safetensors")
    images = calibration_images(spec.resolution, 4, IMAGENET_MEAN, IMAGENET_STD)
    get = reference.read_checkpoint_getter(str(prefix))
    tf32 = reference.forward(spec, get, images, device="cpu")
    tf64 = reference.forward(spec, get, images, device="cpu", dtype=np.float64)
    m, floor = compare(tf32, _torch_logits(model, images)), compare(tf64, tf32)
    print(variant, m, "float32 noise floor (TF f32 vs f64):", floor["rel_error"])
    assert judge(m) == [] and m["rel_error"] <= MAX_REL_ERROR and m["top1_agreement"] == 1.0


def test_export_onnx_and_torchscript(converted, root, tmp_path):
    """MixConv / grouped convs export (split + per-group conv + concat); the export checks its own numbers."""
    weights = root / "out-mixnet-s" / "mixnet-s.safetensors"
    converted("mixnet-s")
    assert main(["export", "--weights", str(weights), "--onnx", str(tmp_path / "m.onnx"), "--torchscript",
                 str(tmp_path / "m.pt"), "--resolution", "65", "--quiet"]) == 0
    scripted = torch.jit.load(str(tmp_path / "m.pt"))
    model = load_model(weights)
    x = torch.from_numpy(_images("mixnet-s")).permute(0, 3, 1, 2).contiguous()  # 64 px: its dynamic path
    with torch.no_grad():
        m = compare(model(x).numpy(), scripted(x).numpy())  # BN folded in the export: float rounding only
    assert judge(m) == [] and m["rel_error"] <= MAX_REL_ERROR, m
