"""Backbone use: the official endpoints (``model.endpoints``) of every family (converter/endpoints.py).

The expected keys are derived here from the block list by the official rule, written out again
(tensorflow/tpu 7dc921f efficientnet_model.Model.call, mnasnet_model.MnasNetModel.call,
mixnet_model.MixnetModel.call; google/automl 6a54c87 effnetv2_model.EffNetV2Model.call):
``stem``; per block ``block_{i}``, ``reduction_{k}`` when it is the last block or the next has
stride > 1, then ``block_{i}/expansion_output`` and ``reduction_{k}/expansion_output``; then each
family's own head keys. The tensors are compared with the TensorFlow reference's (its own process,
plain TF ops; the heavy tests) within float32's floor; the backbone module (``load_model(path,
endpoints=...)``) is checked for its outputs, ``feature_info``, TorchScript and ONNX export.
"""
import io
import json

import numpy as np
import pytest
import torch

from converter import ConversionError, build_model, load_model
from converter.checkpoint import IMAGENET_MEAN, IMAGENET_STD
from converter.families.efficientnet.checkpoints import FAMILY_MEAN, FAMILY_STD
from converter.endpoints import endpoint_names
from converter.registry import get_arch

RES, N = 64, 2  # the TensorFlow comparisons
SMALL = 32  # the PyTorch-only tests (random weights): 1x1 maps at stride 32
# one architecture of every family / block kind
VARIANTS = ["b0", "lite0", "edgetpu-s", "condconv-b0-4e", "v2-b0", "mnasnet-a1", "mixnet-s"]
# each family's keys after the blocks, as its official Model.call sets them
HEAD_KEYS = {
    "efficientnet": ["features", "head_1x1", "pooled_features", "global_pool", "head"],  # V1, Lite, EdgeTPU, CondConv
    "efficientnet_v2": ["features", "head_1x1", "pooled_features", "head"],  # Head.call: no global_pool
    "mnasnet": ["global_pool", "head"],  # MnasNetModel / MixnetModel: global_pool = the last block
}
FAMILY_OF = {"b0": "efficientnet", "lite0": "efficientnet", "edgetpu-s": "efficientnet",
             "condconv-b0-4e": "efficientnet", "v2-b0": "efficientnet_v2", "mnasnet-a1": "mnasnet",
             "mixnet-s": "mnasnet"}


def expected_keys(variant):
    """The official dict's keys, by the official rule over the block strides."""
    blocks = get_arch(variant).blocks()
    keys, k = ["stem"], 0
    for i, b in enumerate(blocks):
        red = i == len(blocks) - 1 or blocks[i + 1].stride > 1
        k += red
        names = [f"block_{i}"] + ([f"reduction_{k}"] if red else [])
        keys += names + [f"{n}/expansion_output" for n in names]
    return keys + HEAD_KEYS[FAMILY_OF[variant]]


def _x(h=SMALL, w=SMALL, n=N, seed=0):
    return torch.from_numpy(np.random.default_rng(seed).standard_normal((n, 3, h, w)).astype(np.float32))


@pytest.fixture(scope="module", params=VARIANTS)
def model(request):
    torch.manual_seed(0)
    return build_model(request.param).eval()


def test_official_keys_in_order(model):
    variant = model.spec.name
    want = expected_keys(variant)
    assert endpoint_names(model.spec) == want
    with torch.no_grad():
        e = model.forward_endpoints(_x())
    assert list(e) == want
    # reductions: 5 of them (strides 2..32), each a block's output; every map NCHW
    assert [k for k in want if k.startswith("reduction_") and "/" not in k] == [f"reduction_{k}" for k in range(1, 6)]
    assert all(t.shape[0] == N for t in e.values())


def test_endpoints_are_the_forward_pass(model):
    """The endpoints come from the modules forward runs: the logits, the head conv, the blocks."""
    x = _x()
    with torch.no_grad():
        e = model.forward_endpoints(x)
        logits = model(x)
        stem = model.stem(x)
        blocks = [stem]
        for b in model.blocks:
            blocks.append(b(blocks[-1]))
        head = model.head(blocks[-1])
    assert torch.equal(e["stem"], stem)
    for i in range(len(model.blocks)):
        assert torch.equal(e[f"block_{i}"], blocks[i + 1])
    last = HEAD_KEYS[FAMILY_OF[model.spec.name]]
    if "head_1x1" in last:
        assert torch.equal(e["head_1x1"], head)
        pooled = e["pooled_features"]
        assert pooled.shape == ((N, head.shape[1], 1, 1) if model.spec.local_pooling else (N, head.shape[1]))
        assert torch.allclose(pooled.flatten(1), head.mean((2, 3)))
        assert torch.equal(e["features"], blocks[-1])
    if FAMILY_OF[model.spec.name] == "efficientnet_v2":
        assert torch.equal(e["head"], e["pooled_features"])  # V2: 'head' is the pool after dropout
    else:
        assert torch.equal(e["head"], logits)
    if FAMILY_OF[model.spec.name] == "mnasnet":
        assert torch.equal(e["global_pool"], blocks[-1])


@pytest.mark.parametrize("size", [(SMALL, SMALL), (37, 29)])
def test_feature_info_channels_and_strides(model, size):
    names = endpoint_names(model.spec)
    f = model.features(names)
    with torch.no_grad():
        outs = f(_x(*size))
    assert f.endpoints == names and [i["name"] for i in f.feature_info] == names
    for t, info in zip(outs, f.feature_info):
        assert t.shape[1] == info["num_chs"], info
        if info["reduction"] is None:
            assert t.dim() == 2 or t.shape[2:] == (1, 1)
        else:
            assert tuple(t.shape[2:]) == (-(-size[0] // info["reduction"]), -(-size[1] // info["reduction"])), info
    info = model.features("reductions").feature_info
    assert info.reduction() == [2, 4, 8, 16, 32] and info.names() == [f"reduction_{k}" for k in range(1, 6)]


def test_backbone_computes_only_what_it_needs(model):
    e = endpoint_names(model.spec)
    blocks = [n for n in e if n.startswith("block_") and "/" not in n]
    f = model.features(["reduction_2", "stem", "reduction_3/expansion_output"])
    red3 = next(i for i, n in enumerate(e) if n == "reduction_3")  # block_i precedes reduction_k
    assert len(f.blocks) == int(e[red3 - 1].split("_")[1]) + 1 < len(blocks)
    assert not hasattr(f, "head") and not hasattr(f, "classifier")
    x = _x()
    with torch.no_grad():
        full = model.forward_endpoints(x)
        got = f(x)
    for name, t in zip(f.endpoints, got):
        assert torch.equal(t, full[name])


def test_unknown_repeated_or_no_endpoint_is_one_line(model):
    for bad, says in ((["reduction_9"], "unknown endpoint(s) 'reduction_9'"), (["stem", "stem"], "named twice"),
                      ([], "none named"), ("block_1/expansion", "unknown endpoint")):
        with pytest.raises(ConversionError) as e:
            model.features(bad)
        msg = str(e.value)
        assert says in msg and "\n" not in msg
    with pytest.raises(ConversionError) as e:
        model.features(["features_x"])
    assert "stem, block_0.." in str(e.value) and "reduction_1..reduction_5" in str(e.value)


def test_a_block_overriding_forward_below_its_endpoints_is_refused():
    """A block class whose forward is not its forward_with_endpoints' would hand out another computation."""
    from converter.blocks import MBConv
    from converter.endpoints import block_endpoints
    from converter.families.mnasnet.modules import MixConvBlock

    class Doubled(MBConv):
        def forward(self, x):
            return 2 * super().forward(x)

    with pytest.raises(RuntimeError, match="forward_with_endpoints"):
        block_endpoints(Doubled)
    assert block_endpoints(MBConv) == block_endpoints(MixConvBlock) == ("expansion_output",)


def test_backbone_fuse_bn_and_static_padding():
    """The backbone's fuse_bn / set_input_size act on the model's modules (shared): same maps."""
    torch.manual_seed(0)
    model = build_model("b0").eval()
    x = _x()
    f = model.features("reductions")
    with torch.no_grad():
        want = f(x)
        got = f.set_input_size(SMALL).fuse_bn()(x)
    assert hasattr(model.blocks[1], "bn0") and isinstance(model.blocks[1].bn0, torch.nn.Identity)
    for a, b in zip(want, got):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-4)


def test_torchscript_backbone_loads_back_and_matches(model):
    """Scripted (not traced): saved, loaded back, same maps at the native size and at an odd one."""
    f = model.features("reductions")
    buf = io.BytesIO()
    torch.jit.save(torch.jit.script(f), buf)
    loaded = torch.jit.load(io.BytesIO(buf.getvalue()))
    for size in ((SMALL, SMALL), (41, 35)):
        x = _x(*size)
        with torch.no_grad():
            want, got = f(x), loaded(x)
        assert len(got) == 5
        for a, b in zip(want, got):
            assert a.shape == b.shape and torch.allclose(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("variant", ["b0", "mixnet-s"])
def test_onnx_backbone_runs_in_onnx_runtime(variant):
    """torch.onnx.export (the torch.export-based exporter, as converter.export uses it) of the
    backbone: one output per endpoint, ONNX Runtime's maps equal PyTorch's."""
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    torch.manual_seed(0)
    f = build_model(variant).eval().features(["reduction_2", "reduction_4/expansion_output", "reduction_5"])
    f.set_input_size(SMALL)
    x = _x(n=1)
    names = [n.replace("/", "_") for n in f.endpoints]
    program = torch.onnx.export(f, (x,), None, input_names=["images"], output_names=names, dynamo=True,
                                external_data=False, optimize=True, verbose=False)
    proto = program.model_proto
    onnx.checker.check_model(proto, full_check=True)
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    got = sess.run(names, {"images": x.numpy()})
    with torch.no_grad():
        want = f(x)
    for a, b, info in zip(want, got, f.feature_info):
        assert b.shape == tuple(a.shape) and b.shape[1] == info["num_chs"]
        np.testing.assert_allclose(b, a.numpy(), rtol=1e-4, atol=1e-4)


def test_reference_endpoint_images_must_be_positive(capsys):
    from converter.tfref.endpoints import main

    assert main(["--endpoints", "out.npz", "--endpoint-images", "0", "--checkpoint", "c", "--variant", "b0",
                 "--images", "i.npz", "--out", "o.npz"]) == 2
    assert capsys.readouterr().err.strip() == "error: --endpoint-images must be at least 1, got 0"


# ---- against the TensorFlow reference (heavy: generated checkpoints, the reference's own process) ----

# convert-effnet options of each variant's conversion
CONVERT = {"b0": ["--flavor", "aa"], "v2-b0": ["--flavor", "1k"]}


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """variant -> (converted file, verification images (NHWC), the reference's endpoints of them); the
    checkpoint generated with BN statistics of 2 images at 64 px normalised as the conversion's
    metadata says; once per module."""
    pytest.importorskip("tensorflow")
    from converter.cli import main
    from converter.tfref.generate import generate_checkpoint
    from converter.verify import plan_verification
    from converter.verify.endpoints import reference_endpoints

    done = {}

    def get(variant):
        if variant not in done:
            root = tmp_path_factory.mktemp(f"endpoints-{variant}")
            prefix = root / "ckpt" / "model.ckpt"
            mean, std = (FAMILY_MEAN, FAMILY_STD) if variant in ("lite0", "edgetpu-s", "condconv-b0-4e") \
                else (IMAGENET_MEAN, IMAGENET_STD)
            generate_checkpoint(get_arch(variant), str(prefix), mode="ema-only", calibration_resolution=RES,
                                calibration_images=N, mean=list(mean), std=list(std))
            out = root / "out"
            assert main(["--variant", variant, *CONVERT.get(variant, []), "--checkpoint", str(prefix),
                         "--output-dir", str(out), "--quiet"]) == 0
            weights = next(out.glob("*.safetensors"))
            cfg = load_model(weights).pretrained_cfg
            images = plan_verification(cfg, RES, N, (), "cpu").images
            done[variant] = (weights, images, reference_endpoints(str(prefix), variant, images, cfg["num_classes"]))
        return done[variant]

    return get


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_endpoint_equals_the_tensorflow_reference(variant, converted):
    from converter.verify.endpoints import compare_endpoints

    weights, images, ref = converted(variant)
    model = load_model(weights)
    assert list(ref) == expected_keys(variant)  # the reference's own walk, the official rule
    rows = compare_endpoints(model, ref, images)
    bad = [r for r in rows if not r["ok"]]
    assert not bad, bad[:3]
    # measured: 1.1-1.4x the float32 floor at worst (a deep block's expansion_output); bound at 5x
    assert all(r["rel_error"] <= 5 * max(r["noise"], 2e-6) for r in rows), max(rows, key=lambda r: r["rel_error"])
    # the backbone of a converted file: the reductions, as the reference has them
    backbone = load_model(weights, endpoints="reductions")
    assert not backbone.training and not any(m.training for m in backbone.modules())  # eval, as load_model's model
    x = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
    with torch.no_grad():
        maps = backbone(x)
    assert backbone.endpoints == [f"reduction_{k}" for k in range(1, 6)]
    for name, t, info in zip(backbone.endpoints, maps, backbone.feature_info):
        want, noise = ref[name]
        assert t.shape[1] == info["num_chs"]
        err = float(np.linalg.norm(t.numpy() - want) / np.linalg.norm(want))
        assert err <= max(20 * noise, 1e-5), (name, err, noise)


def test_a_wrong_expansion_output_fails_against_the_reference(converted):
    """The comparison can fail: a model whose block 1 hands out its SE input instead of the SE output
    (expansion_output taken before the SE) differs from the reference at exactly those keys."""
    from converter.verify.endpoints import compare_endpoints

    weights, images, ref = converted("b0")
    model = load_model(weights)
    block = model.blocks[1]
    se = block.se
    block.se = None  # the block itself now skips the SE: its output and everything after differ too
    rows = {r["name"]: r for r in compare_endpoints(model, ref, images)}
    block.se = se
    assert rows["block_0"]["ok"] and rows["block_0/expansion_output"]["ok"]
    assert not rows["block_1/expansion_output"]["ok"] and not rows["block_1"]["ok"] and not rows["head"]["ok"]
    json.dumps(list(rows.values()))  # plain numbers: the rows are reportable
