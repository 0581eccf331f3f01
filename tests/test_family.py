"""The rest of the family: Lite0-4, EdgeTPU S/M/L, CondConv b0-4e / b0-8e / b0-8e-depth.

Architecture and parameter counts against shared/reference/family.csv, the mapping tables
against the official inventories (name for name, shape for shape), parity of the converted
PyTorch model against the TensorFlow reference on generated official-layout checkpoints for
all 11, negative tests (ReLU for ReLU6, softmax routing, a kernel mixed up between examples,
missing / unexpected CondConv kernels) and the CLI (convert, --drop-background, download, verify,
predict).
"""
import copy
import csv
import json

import numpy as np
import pytest
import torch

from converter import load_model
from converter.families.efficientnet.arch import ARCHS, CONDCONV_BLOCKS, EDGETPU_BLOCKS
from converter.arch import ArchSpec, BlockArgs
from converter.registry import count_params, get_arch
from converter.cli import main
from converter.errors import ConversionError
from converter.mapping import expand, resolve_condconv_names
from converter.families.efficientnet.modules import CondConvMBConv, FusedMBConv
from converter.model import build_model
from converter.families.efficientnet.checkpoints import FAMILY_MEAN, FAMILY_STD
from converter.registry import find_checkpoint

tf = pytest.importorskip("tensorflow")

from converter.synthetic import calibration_images  # noqa: E402
from converter.tfref import reference  # noqa: E402
from converter.tfref.generate import generate_checkpoint, write_checkpoint  # noqa: E402
from converter.verify import MAX_REL_ERROR, compare, judge  # noqa: E402
from helpers import BucketServer  # noqa: E402

FAMILY = [k for k, v in ARCHS.items() if v.family != "efficientnet"]
# variant: test resolution (small for CI; 99 is odd: TF's asymmetric SAME padding)
PARITY_RES = {
    "lite0": 128, "lite1": 96, "lite2": 96, "lite3": 96, "lite4": 96,
    "edgetpu-s": 128, "edgetpu-m": 96, "edgetpu-l": 99,
    "condconv-b0-4e": 96, "condconv-b0-8e": 96, "condconv-b0-8e-depth": 96,
}
N_IMAGES = 2
FULL_MODE = ("lite0", "edgetpu-s", "condconv-b0-4e")  # raw + EMA + slots; the rest EMA-only


def _family_rows(reference_dir):
    with open(reference_dir / "family.csv") as f:
        return {r["model"]: r for r in csv.DictReader(f)}


# ---- architecture, registry -----------------------------------------------------------------

def test_family_registry_equals_family_csv(reference_dir):
    rows = _family_rows(reference_dir)
    assert sorted(get_arch(m).name for m in rows) == sorted(FAMILY)
    for model, r in rows.items():
        spec = get_arch(model)
        assert spec.scope == model
        assert (spec.width, spec.depth, spec.resolution, spec.dropout) == (
            float(r["width"]), float(r["depth"]), int(r["resolution"]), float(r["dropout"]))
        assert spec.family == r["family"] and spec.num_classes == int(r["classes"])
        assert round(count_params(spec) / 1e6, 2) == float(r["params_m"]), model
        ckpt = find_checkpoint(spec.name)  # one checkpoint each: no flavor needed
        assert ckpt.url == r["url"] and ckpt.top1 == float(r["top1"]) and ckpt.params_m == float(r["params_m"])
        assert find_checkpoint(model, "standard") == ckpt
        cfg = ckpt.pretrained_cfg()
        assert np.allclose(np.array(cfg["mean"]) * 255, float(r["mean_rgb"]))
        assert np.allclose(np.array(cfg["std"]) * 255, float(r["std_rgb"]))
        assert cfg["input_size"] == [3, int(r["resolution"]), int(r["resolution"])]


def test_family_architecture_rules():
    # Lite: relu6, no SE, stem 32 / head 1280 at every width, first and last stage not repeated more
    for v in ("lite0", "lite2", "lite4"):
        spec = get_arch(v)
        blocks = spec.blocks()
        assert spec.activation == "relu6" and spec.stem_channels == 32 and spec.head_channels == 1280
        assert all(b.se_channels == 0 and b.kind == "mbconv" and not b.experts for b in blocks)
        assert sum(b.stage == 0 for b in blocks) == 1 and sum(b.stage == 6 for b in blocks) == 1
    assert get_arch("lite4").blocks()[0].in_channels == 32 and get_arch("lite4").blocks()[0].out_channels == 24
    # EdgeTPU: relu, fused blocks in the first three stages only, 1001 classes
    for v in ("edgetpu-s", "edgetpu-m", "edgetpu-l"):
        spec = get_arch(v)
        assert spec.activation == "relu" and spec.num_classes == 1001
        assert all((b.kind == "fused") == (b.stage < 3) and b.se_channels == 0 for b in spec.blocks())
        assert not spec.blocks()[0].residual  # noskip
    b0 = get_arch("edgetpu-s").blocks()[0]
    assert (b0.in_channels, b0.mid_channels, b0.out_channels) == (32, 96, 24)  # stem 32 -> i24 * e4
    # CondConv: the last three stages, experts as named, SE kept, swish
    for v, e in (("condconv-b0-4e", 4), ("condconv-b0-8e", 8), ("condconv-b0-8e-depth", 8)):
        spec = get_arch(v)
        assert spec.activation == "swish"
        assert all((b.experts == e) == (b.stage >= 4) and b.se_channels > 0 for b in spec.blocks())
    assert len(get_arch("condconv-b0-8e-depth").blocks()) == 23


@pytest.mark.parametrize("code", EDGETPU_BLOCKS + CONDCONV_BLOCKS)
def test_family_block_codes_round_trip(code):
    args = BlockArgs.decode(code)
    assert BlockArgs.decode(args.encode()) == args
    assert args.encode() == code
    assert (args.conv_type == 1) == ("_c1" in code) and args.condconv == code.endswith("_cc")


def test_unsupported_block_codes_are_refused():
    for code in ("r1_k3_s11_e4_i24_o24_c2", "r1_k3_s11_e4_i24_o24_f1", "r1_k3_s11_e4_i24_o24_p1"):
        spec = ArchSpec(name="x", width=1.0, depth=1.0, resolution=64, dropout=0.0, scope="x",
                        block_strings=(code,))
        with pytest.raises(ConversionError, match="not supported|unknown conv type"):
            spec.blocks()


# ---- mapping tables -------------------------------------------------------------------------

@pytest.mark.parametrize("variant", FAMILY)
def test_family_table_equals_official_inventory(variant, reference_dir):
    spec = get_arch(variant)
    inventory = json.loads((reference_dir / "inventory" / f"{spec.scope}.json").read_text())
    expected = [(n, tuple(s)) for n, s in inventory]
    got = [(e.tf_name, e.tf_shape) for e in expand(variant)]
    assert got == expected  # name for name, shape for shape, in the official creation order
    # the TF reference's own variable list agrees too
    assert [(n, tuple(s)) for n, s in reference.variables(spec)] == expected


# table keys/shapes == the module's state_dict: tests/test_mapping.py, over every ARCHS entry (the family too)


def test_family_rule_sets():
    e = {x.key: x.tf_name for x in expand("edgetpu-s")}
    assert e["blocks.0.expand_conv.weight"] == "efficientnet-edgetpu-S/blocks_0/conv2d/kernel"
    assert e["blocks.0.project_conv.weight"] == "efficientnet-edgetpu-S/blocks_0/conv2d_1/kernel"
    assert e["blocks.0.bn1.running_var"] == "efficientnet-edgetpu-S/blocks_0/tpu_batch_normalization_1/moving_variance"
    assert e["blocks.10.dw_conv.weight"] == "efficientnet-edgetpu-S/blocks_10/depthwise_conv2d/depthwise_kernel"
    c = {x.key: x for x in expand("condconv-b0-4e")}
    assert c["blocks.8.routing.weight"].tf_name == "efficientnet-condconv-b0-4e/blocks_8/dense/kernel"
    assert c["blocks.8.routing.weight"].shape == (4, 80)
    assert c["blocks.15.project_conv.weight"].tf_name == (
        "efficientnet-condconv-b0-4e/model/blocks_15/cond_conv2d_23/condconv_kernel")
    assert c["blocks.15.project_conv.weight"].shape == (4, 1152 * 320)
    assert c["classifier.weight"].shape == (1000, 1280)


def _cc_names(scope, plain=False, counters=None):
    """Checkpoint-style names of the b0-4e kernels of blocks 8 and 9 (+ EMA twins)."""
    m = "" if plain else "model/"
    counters = counters or {8: (1, 0, 2), 9: (4, 1, 5)}
    out = []
    for i, (e, d, p) in counters.items():
        for layer, var in ((f"cond_conv2d_{e}" if e else "cond_conv2d", "condconv_kernel"),
                           (f"depthwise_cond_conv2d_{d}" if d else "depthwise_cond_conv2d", "depthwise_condconv_kernel"),
                           (f"cond_conv2d_{p}", "condconv_kernel")):
            out += [f"{scope}/{m}blocks_{i}/{layer}/{var}", f"{scope}/{m}blocks_{i}/{layer}/{var}/ExponentialMovingAverage"]
    return out


def test_condconv_names_matched_by_block_and_order():
    spec = get_arch("condconv-b0-4e")
    entries = expand(spec)
    for names, expand8, project9 in (
            (_cc_names(spec.scope), "model/blocks_8/cond_conv2d_1/", "model/blocks_9/cond_conv2d_5/"),
            (_cc_names(spec.scope, plain=True), "/blocks_8/cond_conv2d_1/", "/blocks_9/cond_conv2d_5/"),
            # other counters (layers created in another order / number): order within the block decides
            (_cc_names(spec.scope, plain=True, counters={8: (0, 0, 1), 9: (2, 1, 3)}),
             "/blocks_8/cond_conv2d/", "/blocks_9/cond_conv2d_3/")):
        got = {e.key: e.tf_name for e in resolve_condconv_names(entries, names)}
        assert expand8 in got["blocks.8.expand_conv.weight"]
        assert project9 in got["blocks.9.project_conv.weight"]
        # the reference resolves independently to the same names
        aliases = reference.aliases(spec, names)
        assert got["blocks.9.project_conv.weight"] == aliases[
            f"{reference.block_names(spec, spec.blocks()[9]).project}/condconv_kernel"]
    extra = _cc_names(spec.scope) + [f"{spec.scope}/blocks_8/cond_conv2d_77/condconv_kernel"]
    with pytest.raises(ConversionError, match=r"blocks_8: expected 2 condconv_kernel variable\(s\), the checkpoint has 3"):
        resolve_condconv_names(entries, extra)
    with pytest.raises(ConversionError, match="blocks_8"):
        reference.aliases(spec, extra)
    both = _cc_names(spec.scope) + _cc_names(spec.scope, plain=True)
    with pytest.raises(ConversionError, match="the checkpoint has 4"):
        resolve_condconv_names(entries, both)


# ---- module ---------------------------------------------------------------------------------

def test_condconv_batch_equals_one_by_one():
    torch.manual_seed(0)
    model = build_model("condconv-b0-4e").eval()
    x = torch.randn(3, 3, 48, 48)
    with torch.no_grad():
        batch = model(x)
        single = torch.cat([model(x[i:i + 1]) for i in range(3)])
    assert torch.equal(batch, single) or torch.allclose(batch, single, rtol=1e-5, atol=1e-6)
    assert isinstance(model.blocks[8], CondConvMBConv) and isinstance(build_model("edgetpu-s").blocks[0], FusedMBConv)


@pytest.mark.parametrize("variant,res", [("condconv-b0-4e", 224), ("edgetpu-s", 224)])
def test_static_padding_equals_dynamic(variant, res):
    """At the native size the padding is frozen (set_input_size): same numbers as the dynamic path."""
    torch.manual_seed(1)
    model = build_model(variant).eval()
    assert model.spec.resolution == res
    x = torch.randn(1, 3, res, res)
    with torch.no_grad():
        frozen = model(x)
        model.set_input_size(None)
        dynamic = model(x)
    assert torch.equal(frozen, dynamic)


# ---- parity against the TensorFlow reference --------------------------------------------------

_CKPTS = {}


def _checkpoint(root, variant, form="model"):
    key = (variant, form)
    if key not in _CKPTS:
        prefix = root / f"{variant}-{form}" / "model.ckpt"
        mode = "full" if variant in FULL_MODE else "ema-only"
        generate_checkpoint(variant, str(prefix), mode=mode, calibration_resolution=PARITY_RES[variant],
                            calibration_images=N_IMAGES, mean=FAMILY_MEAN, std=FAMILY_STD,
                            slots=variant == "lite0", condconv_form=form)
        _CKPTS[key] = prefix
    return _CKPTS[key]


def _convert(prefix, variant, out, *extra, layout="native", fmt="safetensors"):
    """Convert with the CLI; the path of the file written."""
    from converter.mapping import output_stem

    args = ["--variant", variant, "--checkpoint", str(prefix), "--output-dir", str(out), "--quiet", "--force",
            "--layout", layout, "--format", fmt]
    assert main(args + list(extra)) == 0
    return out / f"{output_stem(find_checkpoint(variant).name, layout)}.{fmt}"


def _images(variant):
    return calibration_images(PARITY_RES[variant], N_IMAGES, FAMILY_MEAN, FAMILY_STD)


def _tf_logits(prefix, variant, images, batch_size=None):
    spec = get_arch(variant)
    return reference.forward(spec, reference.read_checkpoint_getter(str(prefix)), images,
                             batch_size=batch_size, device="cpu")


def _torch_logits(model, images):
    with torch.no_grad():
        return model(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()).numpy()


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("family")


@pytest.fixture(scope="module")
def converted(root):
    """variant -> (checkpoint prefix, converted model, TF logits on the test images)."""
    cache = {}

    def get(variant, form="model"):
        if (variant, form) not in cache:
            prefix = _checkpoint(root, variant, form)
            weights = _convert(prefix, variant, root / f"out-{variant}-{form}")
            tf_logits = _tf_logits(prefix, variant, _images(variant), batch_size=N_IMAGES)
            cache[variant, form] = (prefix, load_model(weights), tf_logits)
        return cache[variant, form]
    return get


@pytest.mark.parametrize("variant", FAMILY)
def test_family_parity(variant, converted):
    prefix, model, tf_logits = converted(variant)
    assert model.pretrained_cfg["variant"] == variant
    assert np.allclose(np.array(model.pretrained_cfg["mean"]) * 255, 127)
    pt = _torch_logits(model, _images(variant))  # all images in one batch
    m = compare(tf_logits, pt)
    print(variant, m)
    assert judge(m) == [] and m["rel_error"] <= MAX_REL_ERROR and m["top1_agreement"] == 1.0
    assert tf_logits.shape == (N_IMAGES, get_arch(variant).num_classes)
    assert np.std(tf_logits) > 0.05  # logits with real spread


@pytest.mark.parametrize("variant", ["condconv-b0-4e", "edgetpu-s"])
def test_converted_values_equal_checkpoint(variant, converted, root):
    """Every tensor is its official EMA variable, re-laid by an independent rule per name."""
    from safetensors.numpy import load_file

    prefix, _, _ = converted(variant)
    r = tf.train.load_checkpoint(str(prefix))
    out = load_file(str(_converted_weights(variant)))
    entries = expand(variant)
    assert sorted(out) == sorted(e.key for e in entries)
    for e in entries:
        v = r.get_tensor(e.tf_name + "/ExponentialMovingAverage")
        if e.tf_name.endswith("condconv_kernel"):
            want = v  # [experts, kh*kw*in*out] as is
        elif v.ndim == 4 and e.tf_name.endswith("depthwise_kernel"):
            want = v.transpose(2, 3, 0, 1)
        elif v.ndim == 4:
            want = v.transpose(3, 2, 0, 1)
        else:
            want = v.T if v.ndim == 2 else v
        np.testing.assert_array_equal(out[e.key], want, err_msg=e.key)


def test_condconv_plain_names_parity(converted):
    """The kernels named without the tf_keras model/ element convert and match too."""
    prefix, model, tf_logits = converted("condconv-b0-8e", form="plain")
    names = set(tf.train.load_checkpoint(str(prefix)).get_variable_to_shape_map())
    assert "efficientnet-condconv-b0-8e/blocks_8/cond_conv2d_1/condconv_kernel/ExponentialMovingAverage" in names
    assert not any("/model/" in n for n in names)
    m = compare(tf_logits, _torch_logits(model, _images("condconv-b0-8e")))
    assert judge(m) == [], m


def test_condconv_batch_one_and_batch_many_exact(converted):
    prefix, model, tf_all = converted("condconv-b0-4e")  # TF: both images in one batch
    images = _images("condconv-b0-4e")
    tf_one = _tf_logits(prefix, "condconv-b0-4e", images, batch_size=1)
    pt_one = np.concatenate([_torch_logits(model, images[i:i + 1]) for i in range(N_IMAGES)])
    pt_all = _torch_logits(model, images)
    for tf_l, pt_l in ((tf_one, pt_one), (tf_all, pt_all), (tf_one, pt_all)):
        m = compare(tf_l, pt_l)
        assert judge(m) == [], m
    # the routing really differs between the images (or a batch mix-up could not show)
    block = model.blocks[8]
    seen = {}
    hook = block.register_forward_hook(lambda mod, inp, out: seen.update(x=inp[0]))  # returns None
    try:
        _torch_logits(model, images)
    finally:
        hook.remove()
    with torch.no_grad():
        r = block.routing_weights(seen["x"])
    assert float((r[0] - r[1]).abs().max()) > 0.05


def test_fails_with_relu_instead_of_relu6(converted):
    prefix, model, tf_logits = converted("lite0")
    images = _images("lite0")
    broken = copy.deepcopy(model)
    for mod in list(broken.modules()):
        for name, child in mod.named_children():
            if isinstance(child, torch.nn.ReLU6):
                setattr(mod, name, torch.nn.ReLU())
    m = compare(tf_logits, _torch_logits(broken, images))
    assert judge(m) != [] and m["rel_error"] > 1e-2


def test_fails_with_softmax_routing(converted, monkeypatch):
    prefix, model, tf_logits = converted("condconv-b0-4e")
    monkeypatch.setattr(CondConvMBConv, "routing_weights",
                        lambda self, x: torch.softmax(self.routing(x.mean((2, 3))), dim=1))
    m = compare(tf_logits, _torch_logits(model, _images("condconv-b0-4e")))
    assert judge(m) != [] and m["rel_error"] > MAX_REL_ERROR


def test_fails_with_routing_shared_across_the_batch(converted, monkeypatch):
    """Every example with the first one's routing: fine at batch 1, caught at batch 2."""
    prefix, model, tf_logits = converted("condconv-b0-4e")
    original = CondConvMBConv.routing_weights
    monkeypatch.setattr(CondConvMBConv, "routing_weights",
                        lambda self, x: original(self, x)[:1].expand(x.shape[0], -1))
    images = _images("condconv-b0-4e")
    assert judge(compare(tf_logits[:1], _torch_logits(model, images[:1]))) == []
    m = compare(tf_logits, _torch_logits(model, images))
    assert judge(m) != [] and m["rel_error"] > MAX_REL_ERROR


def _rewrite(prefix, out_prefix, drop=(), add=()):
    reader = tf.train.load_checkpoint(str(prefix))
    names = [n for n in reader.get_variable_to_shape_map() if n not in drop]
    tensors = [(n, reader.get_tensor(n)) for n in sorted(names)]
    tensors += [(n, reader.get_tensor(src)) for n, src in add]
    out_prefix.parent.mkdir(parents=True, exist_ok=True)
    write_checkpoint(str(out_prefix), tensors)
    return out_prefix


def test_condconv_missing_or_unexpected_kernel_is_one_line_error(root, tmp_path, capsys):
    prefix = _checkpoint(root, "condconv-b0-4e")
    kernel = "efficientnet-condconv-b0-4e/model/blocks_9/cond_conv2d_5/condconv_kernel"
    missing = _rewrite(prefix, tmp_path / "missing" / "model.ckpt", drop=(kernel, kernel + "/ExponentialMovingAverage",
                                                                        kernel + "/RMSProp", kernel + "/RMSProp_1"))
    extra_name = "efficientnet-condconv-b0-4e/blocks_9/cond_conv2d_40/condconv_kernel"
    extra = _rewrite(prefix, tmp_path / "extra" / "model.ckpt", add=((extra_name, kernel),))
    for ckpt, pattern in ((missing, "blocks_9: expected 2 condconv_kernel variable(s), the checkpoint has 1"),
                          (extra, "blocks_9: expected 2 condconv_kernel variable(s), the checkpoint has 3")):
        rc = main(["--variant", "condconv-b0-4e", "--checkpoint", str(ckpt), "--output-dir", str(tmp_path / "o"),
                   "--quiet"])
        err = capsys.readouterr().err.strip()
        assert rc != 0 and pattern in err and len(err.splitlines()) == 1, err
    # a block with none of its kernels: reported as missing variables
    gone = [f"efficientnet-condconv-b0-4e/model/blocks_10/{layer}" for layer in (
        "cond_conv2d_7/condconv_kernel", "depthwise_cond_conv2d_2/depthwise_condconv_kernel",
        "cond_conv2d_8/condconv_kernel")]
    gone = [g + s for g in gone for s in ("", "/ExponentialMovingAverage", "/RMSProp", "/RMSProp_1")]
    none = _rewrite(prefix, tmp_path / "none" / "model.ckpt", drop=gone)
    rc = main(["--variant", "condconv-b0-4e", "--checkpoint", str(none), "--output-dir", str(tmp_path / "o"), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert rc != 0 and "3 missing" in err and "blocks_10" in err and len(err.splitlines()) == 1, err


# ---- CLI: convert one per family, download, verify, predict ------------------------------------

def test_cli_list_shows_the_family(capsys):
    assert main(["--list"]) == 0
    out = capsys.readouterr().out
    for v in FAMILY:
        assert find_checkpoint(v).name in out
    assert "lite/efficientnet-lite0.tar.gz" in out and "condconv/efficientnet-condconv-b0-8e-depth.tar.gz" in out


def test_cli_edgetpu_drop_background_and_verify(converted, root, tmp_path):
    from safetensors import safe_open
    from safetensors.numpy import load_file

    prefix, model, tf_logits = converted("edgetpu-s")
    weights = _convert(prefix, "edgetpu-s", tmp_path, "--drop-background")
    dropped = load_model(weights)
    assert dropped.pretrained_cfg["num_classes"] == 1000 and model.pretrained_cfg["num_classes"] == 1001
    full = load_file(str(_converted_weights("edgetpu-s")))
    d = load_file(str(weights))
    assert np.array_equal(d["classifier.weight"], full["classifier.weight"][1:])
    assert np.array_equal(d["classifier.bias"], full["classifier.bias"][1:])
    assert all(np.array_equal(d[k], full[k]) for k in d if not k.startswith("classifier"))
    with safe_open(str(weights), framework="np") as f:
        assert json.loads(f.metadata()["mean"])[0] * 255 == pytest.approx(127)
    m = compare(tf_logits[:, 1:], _torch_logits(dropped, _images("edgetpu-s")))
    assert judge(m) == []
    # the verification stage itself: `convert-effnet verify`, TensorFlow in its own process
    rc = main(["verify", "--weights", str(weights), "--checkpoint", str(prefix), "--device", "cpu",
               "--num-images", str(N_IMAGES), "--resolution", str(PARITY_RES["edgetpu-s"])])
    assert rc == 0
    report = json.loads(weights.with_name("efficientnet-edgetpu-s_standard.verify.json").read_text())
    assert report["passed"] and report["rel_error"] <= MAX_REL_ERROR and report["images"] == N_IMAGES


def test_cli_variant_from_the_checkpoint_scope(converted, tmp_path, capsys):
    prefix, _, _ = converted("condconv-b0-4e")
    assert main(["--checkpoint", str(prefix), "--output-dir", str(tmp_path), "--quiet"]) == 0
    assert (tmp_path / "efficientnet-condconv-b0-4e_standard.safetensors").is_file()
    assert "variant condconv-b0-4e (from the checkpoint's scope)" in capsys.readouterr().err
    rc = main(["--variant", "condconv-b0-8e", "--checkpoint", str(prefix), "--output-dir", str(tmp_path), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert rc != 0 and "pass --variant condconv-b0-4e" in err and len(err.splitlines()) == 1, err


def test_cli_download_lite0_from_official_path(root, tmp_path, monkeypatch):
    from converter.tfref.generate import make_tarball

    prefix = _checkpoint(root, "lite0")
    bucket = tmp_path / "bucket"
    (bucket / "efficientnet" / "lite").mkdir(parents=True)  # below the bucket root, as officially
    make_tarball(str(prefix), str(bucket / "efficientnet" / "lite" / "efficientnet-lite0.tar.gz"), "efficientnet-lite0")
    with BucketServer(bucket) as server:
        monkeypatch.setenv("EFFNET_BASE_URL", server.url)
        monkeypatch.setenv("EFFNET_CACHE", str(tmp_path / "cache"))
        assert main(["--variant", "lite0", "--output-dir", str(tmp_path / "out"), "--quiet"]) == 0
        assert server.hits == ["/efficientnet/lite/efficientnet-lite0.tar.gz"]
    model = load_model(tmp_path / "out" / "efficientnet-lite0_standard.safetensors")
    assert model.pretrained_cfg["source"].endswith("/lite/efficientnet-lite0.tar.gz")


def test_predict_uses_the_family_preprocessing(converted, tmp_path, capsys):
    from converter.preprocess import preprocess_batch

    _, model, _ = converted("edgetpu-s")
    weights = _converted_weights("edgetpu-s")
    rng = np.random.default_rng(3)
    img = np.clip(rng.normal(128, 60, (150, 170, 3)), 0, 255).astype(np.uint8)
    path = tmp_path / "img.jpg"
    path.write_bytes(tf.io.encode_jpeg(img).numpy())
    cfg = dict(model.pretrained_cfg)
    x = preprocess_batch([str(path)], cfg, mode="official")
    raw = preprocess_batch([str(path)], dict(cfg, mean=[0.0] * 3, std=[1 / 255] * 3), mode="official")
    assert np.allclose(x, (raw - 127.0) / 128.0, atol=1e-5)  # (x - 127) / 128 on the 0-255 scale
    assert main(["predict", str(path), "--weights", str(weights), "--json", "--device", "cpu", "--top-k", "3"]) == 0
    result = json.loads(capsys.readouterr().out)
    with torch.no_grad():
        logits = model(torch.from_numpy(x))[0, 1:]  # ImageNet's 1000 indices after the background
    assert result[0]["top"][0]["index"] == int(logits.argmax())


def _converted_weights(variant):
    for (v, form), prefix in _CKPTS.items():
        if v == variant:
            return prefix.parent.parent / f"out-{variant}-{form}" / f"{find_checkpoint(variant).name}.safetensors"
    raise AssertionError(f"no converted {variant}")


# ---- library layouts: timm for all 11, mmpretrain for EdgeTPU S/M ----------------------------

# the library models (independent of converter/mappings)
TIMM_MODEL = {**{f"lite{n}": f"tf_efficientnet_lite{n}" for n in range(5)},
              "edgetpu-s": "tf_efficientnet_es", "edgetpu-m": "tf_efficientnet_em", "edgetpu-l": "tf_efficientnet_el",
              "condconv-b0-4e": "tf_efficientnet_cc_b0_4e", "condconv-b0-8e": "tf_efficientnet_cc_b0_8e",
              "condconv-b0-8e-depth": "tf_efficientnet_cc_b1_8e"}
MM_ARCH = {"edgetpu-s": "es", "edgetpu-m": "em"}
# the libraries' EdgeResidual strides the fused block's 3x3 expand conv, as the official block does
# since tensorflow/tpu 32572cb (the default): exact at every size, the even ones included (EdgeTPU
# S and M at 128 and 96 px; L at 99, whose stem gives 50). The 2019 placement (--fused-stride
# project: the 1x1 project conv) samples the same pixels only where the strided fused blocks see
# odd inputs, i.e. (stem stride 2, fused blocks at strides 4 and 8) sizes 8k+1 and 8k+2; 97 is one,
# 96 is not (tests/test_edgetpu_stride.py checks the placements against the TensorFlow reference)
LIB_RES = dict(PARITY_RES)
EVEN_RES, ODD_RES = 96, 97
LIB_MAX_REL_ERROR = 1e-5


def _seeded_images(res, n, seed):
    from converter.synthetic import normalize, synthetic_images

    return normalize(synthetic_images(res, n, seed=seed), FAMILY_MEAN, FAMILY_STD)


def _nchw(images):
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2))


def test_fused_stride_exact_sizes():
    from converter.arch import fused_stride_exact
    from converter.mapping import library_fused_stride

    assert library_fused_stride("timm") == library_fused_stride("mmpretrain") == "expand"
    assert library_fused_stride("native") is None  # our module computes the placement the file says
    spec = get_arch("edgetpu-s")
    assert all(fused_stride_exact(spec, s, "expand") for s in range(90, 140))  # the default: every size
    old = spec.with_fused_stride("project")
    assert [s for s in range(90, 140) if fused_stride_exact(old, s, "expand")] == [
        s for s in range(90, 140) if s % 8 in (1, 2)]
    assert all(fused_stride_exact(old, s, "project") for s in range(90, 140))
    assert all(fused_stride_exact(get_arch(v).with_fused_stride("project"), 224)
               for v in ("lite0", "condconv-b0-4e", "b0"))  # no fused blocks


def test_family_tables_equal_library_state_dicts():
    """Every family table against timm's (and mmpretrain's EdgeTPU) real state_dict: keys, shapes, order."""
    from helpers import libs

    lib = json.loads(libs("keys", *FAMILY).stdout.strip().splitlines()[-1])
    assert sorted(lib["timm"]) == sorted(FAMILY)
    for v in FAMILY:
        assert [(e.key, e.shape) for e in expand(v, "timm")] == [(k, tuple(s)) for k, s in lib["timm"][v]], v
    for v in MM_ARCH:
        assert [(e.key, e.shape) for e in expand(v, "mmpretrain")] == [(k, tuple(s)) for k, s in lib["mmpretrain"][v]]
    # why edgetpu-l is refused for mmpretrain: its el's first block is 120 wide, the official one 128
    ours = {e.key: e.shape for e in expand("edgetpu-l", "timm")}
    el = {k: tuple(s) for k, s in lib["mmpretrain"]["edgetpu-l"]}
    assert el["backbone.layers.1.0.conv1.conv.weight"] == (120, 40, 3, 3)
    assert ours["blocks.0.0.conv_exp.weight"] == (128, 40, 3, 3)
    with pytest.raises(ConversionError, match="edgetpu-l: mmpretrain's arch el"):
        expand("edgetpu-l", "mmpretrain")


def test_timm_condconv_kernels_in_timm_order():
    """timm's CondConv2d rows are each expert's OIHW kernel flattened: an independent re-lay of the TF variable."""
    from converter.reorder import relayout, tf_to_torch, torch_to_tf
    from converter.mappings.kinds import CONDCONV, CONDCONV_OIHW, DWCONDCONV, DWCONDCONV_OIHW

    rng = np.random.default_rng(0)
    for kind, native, kernel in ((CONDCONV_OIHW, CONDCONV, (1, 1, 6, 10)), (DWCONDCONV_OIHW, DWCONDCONV, (5, 5, 7, 1)),
                                 (CONDCONV_OIHW, CONDCONV, (3, 3, 4, 5))):
        tf_var = rng.standard_normal((4, int(np.prod(kernel)))).astype(np.float32)
        kh, kw, cin, cout = kernel
        want = np.stack([
            (w.reshape(kernel).transpose(2, 3, 0, 1).reshape(cin * cout, 1, kh, kw) if kind == DWCONDCONV_OIHW
             else w.reshape(kernel).transpose(3, 2, 0, 1)).reshape(-1) for w in tf_var])
        got = tf_to_torch(tf_var, kind, kernel)
        np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(torch_to_tf(got, kind, kernel=kernel), tf_var)
        np.testing.assert_array_equal(relayout(got, kind, native, kernel), tf_var)  # native keeps TF order
    with pytest.raises(ConversionError, match="does not hold kernels"):
        tf_to_torch(np.zeros((4, 10), np.float32), CONDCONV_OIHW, (1, 1, 3, 3))


@pytest.fixture(scope="module")
def lib_converted(converted, root):
    """variant -> {layout: converted file} for timm (all) and mmpretrain (EdgeTPU S/M)."""
    out = {}
    for v in FAMILY:
        prefix = converted(v)[0]
        d = root / f"lib-{v}"
        out[v] = {"timm": _convert(prefix, v, d, layout="timm")}
        if v in MM_ARCH:
            out[v]["mmpretrain"] = _convert(prefix, v, d, layout="mmpretrain", fmt="pth")
        assert all(f.is_file() for f in out[v].values()), out[v]
    return out


def test_family_libraries_load_strictly_same_logits(converted, lib_converted, root, tmp_path, monkeypatch):
    """timm (all 11) and mmpretrain (EdgeTPU S/M) load the files strictly and give the official logits.

    CondConv with a batch of 2 (per-example routing) and of 1; EdgeTPU (default placement) at even
    sizes too. Files converted with the 2019 placement (--fused-stride project), documented caveat:
    the libraries give that placement's logits at 97 px, not at 96 (the weights are the same).
    """
    from helpers import lib_logits

    import converter.mappings.timm as timm_table

    jobs, refs = [], []

    def add(lib, model, classes, f, images, ref, what):
        x = tmp_path / f"x{len(jobs)}.npz"
        np.savez(x, x=_nchw(images))
        jobs.append((lib, model, classes, f, x))
        refs.append((ref, what))

    for v in FAMILY:
        _, model, _ = converted(v)
        images = calibration_images(LIB_RES[v], N_IMAGES, FAMILY_MEAN, FAMILY_STD)
        # EdgeTPU: the library layouts drop the background class by default (their models have 1000)
        ref = _torch_logits(model, images)[:, -1000:]
        classes = 1000
        for layout, f in lib_converted[v].items():
            # our own loader maps the file back to the native model: the same logits, bit for bit (EdgeTPU: up
            # to the rounding of a 1000- instead of a 1001-wide classifier matmul)
            got = _torch_logits(load_model(f), images)
            if got.shape[1] == model.spec.num_classes:
                np.testing.assert_array_equal(got, ref)
            else:
                np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)
            if layout == "timm":
                add("timm", TIMM_MODEL[v], classes, f, images, ref, f"timm {v}")
            else:
                add("mmpretrain", f"arch:{MM_ARCH[v]}", classes, f, images, ref, f"mmpretrain {v}")
                # what its users call: get_model(the arch's config, pretrained=file)
                add("mmpretrain-get_model", f"arch:{MM_ARCH[v]}", classes, f, images, ref, f"mmpretrain get_model {v}")
    _, cc_model, _ = converted("condconv-b0-4e")
    # one of the calibration images: on an image the BN statistics were not calibrated for, these random
    # weights give logits of std ~100, where float32 rounding alone (timm's weights loaded with
    # assign=True, other memory alignment) moved them by 8e-4
    one = _images("condconv-b0-4e")[1:]
    add("timm", TIMM_MODEL["condconv-b0-4e"], 1000, lib_converted["condconv-b0-4e"]["timm"], one,
        _torch_logits(cc_model, one), "timm condconv-b0-4e batch 1")
    # the 2019 placement: the libraries equal it at 97 px, where its strided fused blocks see odd inputs
    prefix_es = converted("edgetpu-s")[0]
    old_files = {"timm": _convert(prefix_es, "edgetpu-s", tmp_path / "2019", "--fused-stride", "project", layout="timm"),
                 "mmpretrain": _convert(prefix_es, "edgetpu-s", tmp_path / "2019", "--fused-stride", "project",
                                        layout="mmpretrain", fmt="pth")}
    old_model = load_model(old_files["timm"])  # mapped back to the native model, with the file's placement
    assert old_model.blocks[1].project_conv.stride == (2, 2) and old_model.blocks[1].expand_conv.stride == (1, 1)
    odd = calibration_images(ODD_RES, N_IMAGES, FAMILY_MEAN, FAMILY_STD)
    even = calibration_images(EVEN_RES, N_IMAGES, FAMILY_MEAN, FAMILY_STD)
    for layout, f in old_files.items():
        name = TIMM_MODEL["edgetpu-s"] if layout == "timm" else "arch:es"
        add(layout, name, 1000, f, odd, _torch_logits(old_model, odd), f"{layout} edgetpu-s 2019 placement at {ODD_RES}")
    exact = len(jobs)
    # the caveat: at an even size the libraries do not compute the 2019 placement
    for layout, f in old_files.items():
        name = TIMM_MODEL["edgetpu-s"] if layout == "timm" else "arch:es"
        add(layout, name, 1000, f, even, _torch_logits(old_model, even), f"{layout} edgetpu-s 2019 placement at {EVEN_RES}")
    # negative: timm's CondConv kernels left in TF order (the native kind) load strictly, compute wrong
    from converter.mappings.kinds import CONDCONV, DWCONDCONV

    monkeypatch.setattr(timm_table, "BLOCK_CONDCONV_EXPAND", tuple(
        r[:2] + ({"condconv_oihw": CONDCONV, "dwcondconv_oihw": DWCONDCONV}.get(r[2], r[2]),) + r[3:]
        for r in timm_table.BLOCK_CONDCONV_EXPAND))
    wrong = _convert(converted("condconv-b0-4e")[0], "condconv-b0-4e", tmp_path / "wrong", layout="timm")
    monkeypatch.undo()
    images = calibration_images(LIB_RES["condconv-b0-4e"], N_IMAGES, FAMILY_MEAN, FAMILY_STD)
    add("timm", TIMM_MODEL["condconv-b0-4e"], 1000, wrong, images, _torch_logits(cc_model, images),
        "timm condconv-b0-4e, kernels in TF order")

    logits, info = lib_logits(tmp_path, jobs)
    assert all(r["ok"] for r in info), [(j[:2], r) for j, r in zip(jobs, info) if not r["ok"]]
    for i, (ref, what) in enumerate(refs):
        got = logits[str(i)]
        assert got.shape == ref.shape, what
        rel = float(np.linalg.norm(got - ref) / np.linalg.norm(ref))
        print(f"{what}: relative error {rel:.2e} vs the native model")
        if i < exact:
            assert rel <= LIB_MAX_REL_ERROR and (got.argmax(1) == ref.argmax(1)).all(), (what, rel)
        else:
            assert rel > 1e-3, (what, rel)  # the caveat holds; the TF-order kernels are wrong


def test_edgetpu_libraries_exact_against_tensorflow(converted, lib_converted, root, tmp_path):
    """The official logits themselves (the TensorFlow reference, default placement) from timm's
    tf_efficientnet_es and mmpretrain's es at an even size (128 px: strided fused blocks see 64 and 32)."""
    from helpers import lib_logits

    prefix, _, _ = converted("edgetpu-s")
    res = PARITY_RES["edgetpu-s"]
    assert res % 2 == 0
    images = _seeded_images(res, N_IMAGES, seed=3)
    tf_logits = reference.forward(get_arch("edgetpu-s"), reference.read_checkpoint_getter(str(prefix)), images,
                                  batch_size=N_IMAGES, device="cpu")
    x = tmp_path / "x.npz"
    np.savez(x, x=_nchw(images))
    logits, info = lib_logits(tmp_path, [("timm", "tf_efficientnet_es", 1000, lib_converted["edgetpu-s"]["timm"], x),
                                         ("mmpretrain", "arch:es", 1000, lib_converted["edgetpu-s"]["mmpretrain"], x)])
    assert all(r["ok"] for r in info), info
    for i, what in enumerate(("timm tf_efficientnet_es", "mmpretrain es")):
        m = compare(tf_logits[:, 1:], logits[str(i)])
        print(f"{what} vs TensorFlow at {res}:", m)
        assert judge(m) == [] and m["rel_error"] <= LIB_MAX_REL_ERROR and m["top1_agreement"] == 1.0


def test_cli_timm_edgetpu_caveat_and_verify(converted, tmp_path, capsys):
    """--layout timm for EdgeTPU: no caveat with the default placement (timm computes it); with
    --fused-stride project one warning line (also in the metadata); --verify passes either way."""
    from converter.loading import read_weights

    prefix, _, _ = converted("edgetpu-s")
    f = tmp_path / "efficientnet-edgetpu-s_standard.timm.safetensors"
    for extra in ([], ["--fused-stride", "project"]):
        capsys.readouterr()
        rc = main(["--variant", "edgetpu-s", "--checkpoint", str(prefix), "--output-dir", str(tmp_path), "--quiet",
                   "--layout", "timm", "--verify", "--device", "cpu", "--num-images", str(N_IMAGES),
                   "--resolution", str(PARITY_RES["edgetpu-s"]), "--force"] + extra)
        err = capsys.readouterr().err
        assert rc == 0, err
        warn = [line for line in err.splitlines() if line.startswith("warning:")]
        _, meta = read_weights(f)
        assert meta["layout"] == "timm" and meta["fused_stride"] == ("project" if extra else "expand")
        assert json.loads(f.with_name("efficientnet-edgetpu-s_standard.timm.verify.json").read_text())["passed"]
        if not extra:
            assert warn == [] and "layout_caveat" not in meta, err
            continue
        assert len(warn) == 1 and "tf_efficientnet_es strides its fused blocks' kxk expand conv, this file's " \
            "--fused-stride project the 1x1 project conv" in warn[0], err
        assert "217, 218, 225, 226; not 224" in warn[0]
        assert meta["layout_caveat"] == warn[0][len("warning: "):]
    # no caveat where the library computes as the official model
    assert main(["--variant", "lite0", "--checkpoint", str(converted("lite0")[0]), "--output-dir", str(tmp_path),
                 "--quiet", "--layout", "timm"]) == 0
    assert "warning:" not in capsys.readouterr().err
    assert "layout_caveat" not in read_weights(tmp_path / "efficientnet-lite0_standard.timm.safetensors")[1]


def test_library_layouts_background_class(converted, tmp_path, capsys):
    """EdgeTPU in timm: by default the background class goes (timm's tf_efficientnet_em has 1000 classes, one
    note line says so); --keep-background keeps 1001 (timm model built with num_classes=1001)."""
    from converter.loading import read_weights
    from helpers import lib_logits

    prefix, model, _ = converted("edgetpu-m")
    capsys.readouterr()
    default = _convert(prefix, "edgetpu-m", tmp_path / "default", layout="timm")
    err = capsys.readouterr().err
    notes = [line for line in err.splitlines() if line.startswith("note:")]
    assert notes == ["note: timm's tf_efficientnet_em has ImageNet's 1000 classes: the checkpoint's background class "
                     "(output 0) is dropped; --keep-background keeps all 1001"], err
    kept = _convert(prefix, "edgetpu-m", tmp_path / "kept", "--keep-background", layout="timm")
    assert "note:" not in capsys.readouterr().err
    assert read_weights(default)[1]["num_classes"] == 1000 and read_weights(default)[1]["background_dropped"] == "true"
    assert read_weights(kept)[1]["num_classes"] == 1001 and "background_dropped" not in read_weights(kept)[1]
    # native keeps it unless asked; both flags together are refused
    native = _convert(prefix, "edgetpu-m", tmp_path / "native")
    assert read_weights(native)[1]["num_classes"] == 1001
    with pytest.raises(SystemExit):
        main(["--variant", "edgetpu-m", "--checkpoint", str(prefix), "--drop-background", "--keep-background"])
    images = calibration_images(LIB_RES["edgetpu-m"], N_IMAGES, FAMILY_MEAN, FAMILY_STD)
    x = tmp_path / "x.npz"
    np.savez(x, x=_nchw(images))
    logits, info = lib_logits(tmp_path, [("timm", "tf_efficientnet_em", 1000, default, x),
                                         ("timm", "tf_efficientnet_em", 1001, kept, x)])
    assert all(r["ok"] for r in info), info
    ref = _torch_logits(model, images)
    for got, want in ((logits["0"], ref[:, 1:]), (logits["1"], ref)):
        rel = float(np.linalg.norm(got - want) / np.linalg.norm(want))
        assert got.shape == want.shape and rel <= LIB_MAX_REL_ERROR, rel
