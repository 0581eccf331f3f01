"""Static padding, BN folding and channels_last: same numbers as the plain model, every architecture.

The per-layer tests take each Conv2dSame of every architecture (built on the meta device, so
even L2 costs nothing), find the input size it really sees by a shape-only forward pass, and
check the frozen padding on a small real tensor of that size: static == dynamic bit for bit,
and both equal TensorFlow's own 'SAME' convolution.
"""
import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from converter.families.efficientnet.arch import ARCHS
from converter.registry import get_arch
from converter.errors import ConversionError
from converter.fast import (FUSE_MAX_REL_ERROR, fold_pads, fuse_bn, inplace_activations, prepare_for_inference,
                            same_convs, set_input_size)
from converter.mapping import expand
from converter.layers import BatchNorm2dTF, Conv2dSame
from converter.model import build_model

tf = pytest.importorskip("tensorflow")


def rel(a, b) -> float:
    a, b = torch.as_tensor(a).double(), torch.as_tensor(b).double()
    return float((a - b).norm() / b.norm())


def sizes_for(variant: str):
    """The native size, the odd 475 and one more (odd, not a multiple of anything)."""
    native = get_arch(variant).resolution
    return [native, 475, 301 if native != 301 else 333]


def observed_input_sizes(model, h, w):
    """{conv name: (H, W) it receives}, by a forward pass on the meta device (shapes only)."""
    seen = {}
    hooks = [m.register_forward_pre_hook(lambda mod, args, name=name: seen.__setitem__(name, tuple(args[0].shape[-2:])))
             for name, m in same_convs(model)]
    try:
        with torch.no_grad():
            model(torch.empty(1, 3, h, w, device="meta"))
    finally:
        for hk in hooks:
            hk.remove()
    return seen


def tf_same_conv(x: torch.Tensor, conv: Conv2dSame) -> np.ndarray:
    """TensorFlow's conv2d / depthwise_conv2d with padding='SAME' (NCHW in, NCHW out)."""
    xt = x.permute(0, 2, 3, 1).numpy()
    s = conv.stride[0]
    if conv.groups == 1:
        w = conv.weight.detach().permute(2, 3, 1, 0).numpy()  # OIHW -> HWIO
        y = tf.nn.conv2d(xt, w, strides=s, padding="SAME").numpy()
    else:
        w = conv.weight.detach().permute(2, 3, 0, 1).numpy()  # (C, 1, k, k) -> (k, k, C, 1)
        y = tf.nn.depthwise_conv2d(xt, w, strides=[1, s, s, 1], padding="SAME").numpy()
    return y.transpose(0, 3, 1, 2)


def spec_input_sizes(variant: str, h: int, w: int):
    """The input size of each SAME conv in model order, from the architecture table alone."""
    sizes, cur = [(h, w)], (-(-h // 2), -(-w // 2))  # the stem: 3x3 stride 2
    for b in get_arch(variant).blocks():
        sizes += [cur] if b.has_expand else []  # 1x1 expand conv (kxk in fused blocks)
        if b.kind == "fused":  # EdgeTPU: no depthwise conv; the kxk expand conv strides (default),
            strided = (-(-cur[0] // b.stride), -(-cur[1] // b.stride))  # or the 1x1 project conv ("project")
            if b.has_expand and b.fused_stride == "expand":
                cur = strided
            sizes.append(cur)  # the project conv
            cur = strided
            continue
        sizes.append(cur)  # the depthwise conv
        cur = (-(-cur[0] // b.stride), -(-cur[1] // b.stride))
        sizes.append(cur)  # the project conv
    return sizes + [cur]  # the head conv


CHECKED = {}  # (kernel, stride, depthwise, input size) already checked against TensorFlow


@pytest.mark.parametrize("variant", list(ARCHS))
def test_static_padding_every_layer_every_architecture(variant):
    with torch.device("meta"):
        meta = build_model(variant)
    checked = CHECKED
    for size in sizes_for(variant):
        h, w = size, size + 2 if size == 475 else size  # one non-square case per architecture
        set_input_size(meta, h, w)
        convs = same_convs(meta)
        expected = spec_input_sizes(variant, h, w)
        assert [c.static_hw for _, c in convs] == expected, (variant, size)
        if size == 475:  # what the layers really receive, by a shape-only forward pass
            seen = observed_input_sizes(meta, h, w)
            assert [seen[name] for name, _ in convs] == expected
        for name, conv in convs:
            key = (conv.kernel_size[0], conv.stride[0], conv.groups > 1, conv.static_hw)
            if key in checked:
                continue
            k, s, depthwise, (ih, iw) = key
            c = 2
            small = Conv2dSame(c, c if depthwise else 3, k, s, groups=c if depthwise else 1)
            small.set_input_size(ih, iw)
            assert (small.static_padding, small.static_extra) == (conv.static_padding, conv.static_extra)
            torch.manual_seed(ih * 7 + k)
            x = torch.randn(1, c, ih, iw)
            with torch.no_grad():
                static = small(x)
                dynamic_conv = copy.deepcopy(small)
                dynamic_conv.set_input_size(-1, -1)
                dynamic = dynamic_conv(x)
            assert torch.equal(static, dynamic), key
            with torch.no_grad():
                folded = copy.deepcopy(small)
                folded.pad_into_kernel = True  # the extra pixel as zero taps of the kernel
                in_kernel = folded(x)
                in_kernel64 = folded.double()(x.double())
                by_pad64 = copy.deepcopy(small).double()(x.double())
            ref = tf_same_conv(x, small)
            assert static.shape == ref.shape and rel(static, ref) < 1e-5, key
            assert in_kernel.shape == ref.shape and rel(in_kernel, ref) < 1e-5, key
            assert rel(in_kernel64, by_pad64) < 1e-14, key
            checked[key] = True
    assert any(k[1] == 2 for k in checked) and any(k[2] for k in checked)


def test_asymmetric_padding_split():
    """224 px, 3x3 stride 2 (the stem): TF pads 0 before, 1 after: nothing symmetric, one pixel by F.pad."""
    conv = Conv2dSame(3, 4, 3, 2)
    conv.set_input_size(224, 224)
    assert conv.static_padding == [0, 0] and conv.static_extra == [0, 1, 0, 1]
    conv.set_input_size(225, 224)  # odd: symmetric 1 on rows, still 0/1 on columns
    assert conv.static_padding == [1, 0] and conv.static_extra == [0, 1, 0, 0]
    conv5 = Conv2dSame(3, 3, 5, 2, groups=3)
    conv5.set_input_size(112, 113)  # totals 3 (1/2) and 4 (2/2)
    assert conv5.static_padding == [1, 2] and conv5.static_extra == [0, 0, 0, 1]


def calibrated(variant: str, size: int, seed: int = 0):
    """A random-weight model whose BN statistics are those of a random batch, gamma/beta perturbed."""
    torch.manual_seed(seed)
    model = build_model(variant)
    model.set_training_config(survival_prob=1.0)  # calibration below: batch statistics, no drop-connect
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, BatchNorm2dTF):
                m.momentum = 1.0
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0.0, 0.2)
        model.train()(torch.randn(2, 3, 128, 128))
    model.eval()
    with torch.no_grad():
        logits = model(torch.randn(2, 3, size, size))
        model.classifier.weight.mul_(3.0 / float(logits.std()))
    return model


@pytest.fixture(scope="module")
def b0():
    return calibrated("b0", 224)


@pytest.mark.parametrize("variant", ["b0", "b1"])
def test_whole_model_static_equals_dynamic(variant, b0):
    model = b0 if variant == "b0" else calibrated("b1", 240)
    dynamic = set_input_size(copy.deepcopy(model), None)
    assert all(c.static_hw == (-1, -1) for _, c in same_convs(dynamic))
    sizes = sizes_for(variant) if variant == "b0" else [475]
    for size in sizes:
        x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(size))
        with torch.no_grad():
            a = model(x)  # frozen for the native size: other sizes take the fallback
            b = dynamic(x)
        assert torch.equal(a, b), size
        assert float(a.std()) > 0.1  # real logits, not a collapsed network
        if size != model.spec.resolution:
            static = set_input_size(copy.deepcopy(model), size)
            with torch.no_grad():
                assert torch.equal(static(x), a), size


def test_build_model_freezes_native_size_and_keeps_keys():
    model = build_model("b0")
    assert model.input_size == (224, 224)
    stem = model.stem.conv
    assert stem.static_hw == (224, 224) and stem.static_extra == [0, 1, 0, 1]
    # the state_dict holds exactly the mapping table's keys: static padding adds no entry
    assert sorted(model.state_dict()) == sorted(e.key for e in expand("b0"))
    model.set_input_size(300)
    assert sorted(model.state_dict()) == sorted(e.key for e in expand("b0"))


def test_set_input_size_rejects_bad_sizes():
    model = build_model("b0")
    for bad in (0, -3, 2.5, "224", (1, 2, 3, 4)):
        with pytest.raises(ConversionError):
            model.set_input_size(bad)
    assert model.input_size == (224, 224)


def test_fuse_bn_matches_unfused(b0):
    x = torch.randn(2, 3, 160, 160, generator=torch.Generator().manual_seed(3))
    fused = copy.deepcopy(b0).fuse_bn()
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
    n_bn = sum(isinstance(m, BatchNorm2dTF) for m in b0.modules())
    assert sum(isinstance(m, Conv2dSame) and m.bias is not None for m in fused.modules()) == n_bn
    with torch.no_grad():
        ref, got = b0(x), fused(x)
    assert rel(got, ref) < FUSE_MAX_REL_ERROR
    assert torch.equal(got.argmax(1), ref.argmax(1))
    # the folding itself is exact: in float64 the two agree to rounding of float64
    x64 = x[:1, :, :96, :96].double()
    with torch.no_grad():
        ref64 = copy.deepcopy(b0).double()(x64)
        fused64 = fuse_bn(copy.deepcopy(b0).double())(x64)
    assert rel(fused64, ref64) < 1e-12
    # folding twice is a no-op
    again = copy.deepcopy(fused).fuse_bn()
    with torch.no_grad():
        assert torch.equal(again(x), got)


def test_fuse_bn_by_hand_one_layer():
    """conv -> BN folded vs F.conv2d then F.batch_norm computed directly."""
    block = build_model("b0").stem
    with torch.no_grad():
        block.bn.running_mean.normal_()
        block.bn.running_var.uniform_(0.1, 3.0)
        block.bn.weight.normal_()
        block.bn.bias.normal_()
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        ref = F.silu(F.batch_norm(F.conv2d(F.pad(x, (0, 1, 0, 1)), block.conv.weight, None, 2),
                                  block.bn.running_mean, block.bn.running_var, block.bn.weight, block.bn.bias,
                                  False, 0.0, 1e-3))
        fuse_bn(block)
        got = block(x)
    assert isinstance(block.bn, torch.nn.Identity)
    assert rel(got, ref) < 1e-6


def test_channels_last_equal(b0):
    x = torch.randn(2, 3, 160, 160, generator=torch.Generator().manual_seed(4))
    fused = fuse_bn(copy.deepcopy(b0))
    cl = copy.deepcopy(fused).to(memory_format=torch.channels_last)
    assert cl.stem.conv.weight.is_contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        ref = fused(x)
        a = cl(x.contiguous(memory_format=torch.channels_last))
        b = cl(x)  # an NCHW input works too
    assert rel(a, ref) < 1e-5 and rel(b, ref) < 1e-5  # float32 rounding of another summation order
    assert torch.equal(a.argmax(1), ref.argmax(1))


def test_prepare_for_inference(b0):
    x = torch.randn(2, 3, 256, 256, generator=torch.Generator().manual_seed(5))
    fast = prepare_for_inference(copy.deepcopy(b0), input_size=(3, 256, 256))
    assert fast.input_size == (256, 256) and fast.bn_fused and not fast.training
    assert fast.stem.conv.weight.is_contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        ref = b0(x)
        got = fast(x.contiguous(memory_format=torch.channels_last))
    assert rel(got, ref) < FUSE_MAX_REL_ERROR


def test_fast_path_folds_pads_and_activations_exactly(b0):
    """prepare_for_inference (pads in the kernels, in-place activations) vs the same model with F.pad
    and fresh activations: the same numbers at the frozen size and at even/odd dynamic sizes."""
    fast = prepare_for_inference(copy.deepcopy(b0))
    folded = [n for n, c in same_convs(fast) if c.pad_into_kernel]
    # the depthwise stride-2 convs and the stem (3 input channels) take the kernel form
    assert "stem.conv" in folded and "blocks.1.dw_conv" in folded and "blocks.3.dw_conv" in folded
    assert all(m.inplace for m in fast.modules() if isinstance(m, torch.nn.SiLU))
    plain = inplace_activations(fold_pads(copy.deepcopy(fast), False), False)
    assert not any(c.pad_into_kernel for _, c in same_convs(plain))
    for size in (224, 256, 225):
        x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(size))
        x = x.contiguous(memory_format=torch.channels_last)
        keep = x.clone()
        with torch.no_grad():
            got, ref, unfused = fast(x), plain(x), b0(x)
        assert torch.equal(x, keep)  # the in-place activations leave the input alone
        assert rel(got, ref) < 1e-6, size  # float32 summation order only
        assert rel(got, unfused) < FUSE_MAX_REL_ERROR, size
        assert torch.equal(got.argmax(1), unfused.argmax(1))
    # TorchScript (convert-effnet export --torchscript) compiles the kernel form too
    scripted = torch.jit.script(fast)
    with torch.no_grad():
        assert rel(scripted(x), got) < 1e-6


def test_fold_pads_policy_dense_convs():
    """A dense 3x3 stride-2 conv with many input channels keeps the F.pad (its kernel form costs more)."""
    model = build_model("v2-s")
    fold_pads(model)
    by_name = dict(same_convs(model))
    wide = [c for c in by_name.values() if c.groups == 1 and c.stride[0] == 2 and c.in_channels >= 48
            and c.kernel_size[0] == 3]
    assert wide and not any(c.pad_into_kernel for c in wide)
    assert by_name["stem.conv"].pad_into_kernel


@pytest.mark.parametrize("precision,dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_in_precision_runs_the_model_in_that_dtype(b0, precision, dtype):
    """in_precision: the convolutions really run in the low precision (their outputs have its dtype),
    the logits come back as float32, close to the float32 ones (bf16 keeps 8 mantissa bits,
    fp16 11), and the model is float32 and hook-free afterwards."""
    from converter.fast import in_precision

    model = copy.deepcopy(b0)
    x = torch.randn(2, 3, 128, 128, generator=torch.Generator().manual_seed(7))
    seen = []
    hook = model.stem.conv.register_forward_hook(lambda m, a, out: seen.append(out.dtype))
    with torch.no_grad():
        ref = model(x)
        with in_precision(model, precision, "cpu") as how:
            low = model(x)
        after = model(x)
    hook.remove()
    assert how == "autocast" and seen == [torch.float32, dtype, torch.float32]
    assert low.dtype == torch.float32
    err = rel(low, ref)
    assert 1e-5 < err < (0.1 if dtype is torch.bfloat16 else 0.02), err  # not float32, not broken
    assert torch.equal(after, ref) and next(model.parameters()).dtype == torch.float32
    assert not model._forward_hooks and not model._forward_pre_hooks
    with pytest.raises(ConversionError):
        with in_precision(model, "int8"):
            pass


def test_in_precision_cast_where_no_autocast(b0, monkeypatch):
    """A device without autocast: the model and input are cast, and cast back after."""
    from converter.fast import in_precision

    model = copy.deepcopy(b0)
    x = torch.randn(1, 3, 96, 96, generator=torch.Generator().manual_seed(8))
    monkeypatch.setattr(torch.amp, "is_autocast_available", lambda dev: False)
    seen = []
    model.head.conv.register_forward_hook(lambda m, a, out: seen.append(out.dtype))
    with torch.no_grad():
        ref = model(x)
        with in_precision(model, "bf16") as how:
            low = model(x)
            assert model.classifier.weight.dtype == torch.bfloat16
    assert how == "cast" and seen == [torch.float32, torch.bfloat16] and low.dtype == torch.float32
    assert 1e-5 < rel(low, ref) < 0.1
    assert model.classifier.weight.dtype == torch.float32


def test_verify_dtype_reports_bf16_against_official_float32(tmp_path, capsys):
    """verify --dtype bf16: the float32 verdict as before, plus the bf16 model's deviation from the
    official (TensorFlow float32) logits, in the summary and the JSON report; checked against the
    dumped TensorFlow logits and the model run under autocast here."""
    import json

    from helpers import make_checkpoint

    from converter import load_model
    from converter.cli import main
    from converter.verify import report_path_for, verification_images
    from converter.registry import preprocessing_of

    prefix = make_checkpoint(tmp_path, "b0", calibration_resolution=224)
    assert main(["--variant", "b0", "--flavor", "aa", "--checkpoint", str(prefix), "--output-dir", str(tmp_path),
                 "--quiet"]) == 0
    weights = tmp_path / "efficientnet-b0_aa.safetensors"
    dump = tmp_path / "logits.npz"
    capsys.readouterr()
    rc = main(["verify", "--weights", str(weights), "--checkpoint", str(prefix), "--device", "cpu",
               "--num-images", "3", "--dtype", "bf16", "--dump-logits", str(dump), "--quiet"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "bf16 (autocast) vs the official float32 logits: rel error" in out
    report = json.loads(report_path_for(weights).read_text())
    low = report["low_precision"]
    assert low["dtype"] == "bf16" and low["how"] == "autocast" and report["passed"]
    # independent: the same images through the model under torch.autocast, against TF's dumped logits
    model = load_model(weights)
    cfg = model.pretrained_cfg
    images = verification_images(224, cfg["mean"], cfg["std"], 3, [], cfg.get("crop_pct"), preprocessing_of(cfg))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        mine = model(torch.from_numpy(images.transpose(0, 3, 1, 2).copy())).float().numpy()
    tf32 = np.load(dump)["tf"]
    expected = float(np.linalg.norm(mine - tf32) / np.linalg.norm(tf32))
    assert low["rel_error"] == pytest.approx(expected, rel=1e-3)
    assert low["rel_error"] > 100 * report["rel_error"]  # bf16's 8 bits, far above float32's error
    assert low["top1_agreement"] == pytest.approx(float(np.mean(mine.argmax(1) == tf32.argmax(1))))
