"""EdgeTPU fused blocks: which conv carries the stride, in every part of the project.

tensorflow/tpu efficientnet_model.MBConvBlockWithoutDepthwise put the block's stride on the 1x1
project conv when EdgeTPU was released (631fb4c, 2019-07-19) and has put it on the kxk expand
conv since 32572cb (2020-12-27, "Fix issue #660"; still so at HEAD 7dc921f). The current
placement ("expand") is the default of the module, the TensorFlow reference, load_model and
verify; the 2019 one is ``--fused-stride project``, stored in the metadata. The two sample the
same pixels only where every strided fused block sees an odd input (sizes 8k+1, 8k+2), so the
checks run at an even size (96), where a placement mixed up anywhere moves the logits by ~O(1).
Library layouts (timm/mmpretrain, exact for the default): tests/test_family.py.
"""
import json

import numpy as np
import pytest
import torch

from converter import load_model
from converter.arch import FUSED_STRIDE_DEFAULT, FUSED_STRIDES, ArchSpec
from converter.families.efficientnet.arch import EDGETPU_BLOCKS
from converter.registry import count_params, get_arch
from converter.cli import main
from converter.errors import ConversionError
from converter.families.efficientnet.modules import FusedMBConv
from converter.model import build_model
from converter.families.efficientnet.checkpoints import FAMILY_MEAN, FAMILY_STD

EDGETPU = ("edgetpu-s", "edgetpu-m", "edgetpu-l")
EVEN, ODD = 96, 97  # 96: strided fused blocks see even inputs (48, 24); 97 = 8k+1: odd ones (49, 25)
N = 2
VARIANT = "edgetpu-s"


# ---- architecture and module (no TensorFlow) --------------------------------------------------

def test_default_is_the_current_official_placement():
    assert FUSED_STRIDE_DEFAULT == "expand" and set(FUSED_STRIDES) == {"expand", "project"}
    for v in EDGETPU:
        spec = get_arch(v)
        assert spec.fused_stride == "expand" and spec.has_strided_fused
        assert get_arch(v).with_fused_stride(None) == spec  # None: the default
        assert count_params(spec.with_fused_stride("project")) == count_params(spec)  # same weights
    for v in ("b0", "lite0", "condconv-b0-4e"):
        assert not get_arch(v).has_strided_fused
    with pytest.raises(ConversionError, match="unknown fused-block stride placement 'sideways'"):
        get_arch(VARIANT).with_fused_stride("sideways")


@pytest.mark.parametrize("variant", EDGETPU)
@pytest.mark.parametrize("placement", FUSED_STRIDES)
def test_module_strides_the_named_conv(variant, placement):
    """Every fused block: the stride sits on exactly the conv the placement names; other blocks unchanged."""
    spec = get_arch(variant).with_fused_stride(placement)
    with torch.device("meta"):
        model = build_model(spec)
        default = build_model(variant)
    strided = 0
    for b, m, d in zip(spec.blocks(), model.blocks, default.blocks):
        if b.kind != "fused":
            assert not isinstance(m, FusedMBConv) and m.dw_conv.stride == (b.stride, b.stride)
            continue
        assert isinstance(m, FusedMBConv) and m.fused_stride == placement and b.has_expand
        s = (b.stride, b.stride)
        want = {"expand": (s, (1, 1)), "project": ((1, 1), s)}[placement]
        assert (m.expand_conv.stride, m.project_conv.stride) == want, (b.index, placement)
        assert (d.expand_conv.stride, d.project_conv.stride) == (s, (1, 1))  # build_model(variant): the default
        assert m.expand_conv.kernel_size == (3, 3)  # official: kernel_size=[3, 3] (every c1 block string is k3)
        strided += b.stride > 1
    assert strided == 2  # r2_k3_s22 and r4_k3_s22: the second and third stages start strided


def test_strided_fused_block_without_expand_conv_refused():
    """Since 32572cb only the expand conv strides: an e1 strided fused block would not downsample at all."""
    spec = ArchSpec(name="x", width=1.0, depth=1.0, resolution=64, dropout=0.0, scope="x",
                    block_strings=("r1_k3_s22_e1_i32_o16_c1",), use_se=False)
    with pytest.raises(ConversionError, match="strided fused block without expand conv"):
        spec.blocks()
    assert spec.with_fused_stride("project").blocks()[0].project_stride == 2  # the 2019 code strides its 1x1 conv
    assert EDGETPU_BLOCKS[0].startswith("r1_k3_s11_e4")  # the released models have none


def test_placements_agree_only_where_strided_fused_blocks_see_odd_inputs():
    """Same weights in both placements: equal at 97 px (8k+1), far apart at 96 px. This is why the
    parity tests below run at an even size."""
    from converter.arch import fused_stride_exact

    torch.manual_seed(0)
    new = build_model(VARIANT).eval()
    old = build_model(get_arch(VARIANT).with_fused_stride("project")).eval()
    old.load_state_dict(new.state_dict(), strict=True)
    spec_old = get_arch(VARIANT).with_fused_stride("project")
    for size, same in ((ODD, True), (EVEN, False), (225, True), (224, False)):
        assert fused_stride_exact(spec_old, size) == same and fused_stride_exact(get_arch(VARIANT), size)
        x = torch.randn(N, 3, size, size, generator=torch.Generator().manual_seed(size))
        with torch.no_grad():  # the three fused stages (random BN statistics would flatten the logits)
            a, b = new.blocks[:7](new.stem(x)), old.blocks[:7](old.stem(x))
        assert a.shape == b.shape == (N, 48, -(-size // 8), -(-size // 8))
        rel = float((a - b).norm() / b.norm())
        assert (rel < 1e-5) if same else (rel > 0.05), (size, rel)


# ---- against the TensorFlow reference ---------------------------------------------------------

tf = pytest.importorskip("tensorflow")

from converter.synthetic import calibration_images  # noqa: E402
from converter.tfref import reference  # noqa: E402
from converter.tfref.generate import generate_checkpoint  # noqa: E402
from converter.verify import compare, judge  # noqa: E402

PARITY_MAX_REL_ERROR = 1e-5  # a correct float32 port; a misplaced stride is ~0.5


def _images(size=EVEN, n=N):
    return calibration_images(size, n, FAMILY_MEAN, FAMILY_STD)


def _torch(model, images):
    with torch.no_grad():
        return model(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()).numpy()


@pytest.fixture(scope="module")
def stride_case(tmp_path_factory):
    """placement -> (checkpoint calibrated under that placement at 96 px, converted file, its TF logits)."""
    root = tmp_path_factory.mktemp("edgetpu-stride")
    out = {}
    for p in FUSED_STRIDES:
        spec = get_arch(VARIANT).with_fused_stride(p)
        prefix = root / p / "model.ckpt"
        generate_checkpoint(spec, str(prefix), mode="ema-only", calibration_resolution=EVEN, calibration_images=N,
                            mean=FAMILY_MEAN, std=FAMILY_STD)
        extra = [] if p == FUSED_STRIDE_DEFAULT else ["--fused-stride", p]
        assert main(["--variant", VARIANT, "--checkpoint", str(prefix), "--output-dir", str(root / f"out-{p}"),
                     "--quiet"] + extra) == 0
        weights = root / f"out-{p}" / "efficientnet-edgetpu-s_standard.safetensors"
        tf_logits = reference.forward(spec, reference.read_checkpoint_getter(str(prefix)), _images(),
                                      batch_size=N, device="cpu")
        out[p] = (prefix, weights, tf_logits)
    return out


@pytest.mark.parametrize("placement", FUSED_STRIDES)
def test_converted_model_equals_reference_of_its_placement(stride_case, placement):
    prefix, weights, tf_logits = stride_case[placement]
    model = load_model(weights)
    assert model.pretrained_cfg["fused_stride"] == placement  # recorded, and load_model follows it
    assert model.spec.fused_stride == placement and model.blocks[1].fused_stride == placement
    m = compare(tf_logits, _torch(model, _images()))
    print(placement, m)
    assert judge(m) == [] and m["rel_error"] <= PARITY_MAX_REL_ERROR and np.std(tf_logits) > 0.05


@pytest.mark.parametrize("placement", FUSED_STRIDES)
def test_wrong_placement_fails_against_the_reference(stride_case, placement):
    """The same weights computed with the other placement: far off the reference, so a module or
    reference that put the stride elsewhere cannot pass the parity test above."""
    prefix, weights, tf_logits = stride_case[placement]
    other = next(p for p in FUSED_STRIDES if p != placement)
    right = load_model(weights)
    wrong = build_model(get_arch(VARIANT).with_fused_stride(other))
    wrong.load_state_dict(right.state_dict(), strict=True)
    m = compare(tf_logits, _torch(wrong.eval(), _images()))
    print(f"{other} placement vs the {placement} reference at {EVEN} px:", m)
    assert judge(m) != [] and m["rel_error"] > 0.1
    # and the reference computed with the other placement differs from this model as much
    tf_other = reference.forward(get_arch(VARIANT).with_fused_stride(other),
                                 reference.read_checkpoint_getter(str(prefix)), _images(), batch_size=N, device="cpu")
    assert compare(tf_other, _torch(right, _images()))["rel_error"] > 0.1


def test_reference_cli_and_verify_follow_the_metadata(stride_case, tmp_path, capsys):
    """The 2019 file verifies (TensorFlow run with --fused-stride project, from its metadata); the reference
    CLI's default is the current placement and its option the 2019 one."""
    prefix, weights, tf_logits = stride_case["project"]
    rc = main(["verify", "--weights", str(weights), "--checkpoint", str(prefix), "--device", "cpu",
               "--num-images", str(N), "--resolution", str(EVEN)])
    assert rc == 0, capsys.readouterr().err
    report = json.loads(weights.with_name("efficientnet-edgetpu-s_standard.verify.json").read_text())
    assert report["passed"] and report["rel_error"] <= PARITY_MAX_REL_ERROR
    # the reference CLI (what verify runs, here in this process): default = expand, --fused-stride project
    np.savez(tmp_path / "in.npz", images=_images())
    got = {}
    for extra in ([], ["--fused-stride", "project"]):
        out = tmp_path / f"out{len(extra)}.npz"
        assert reference.main(["--checkpoint", str(prefix), "--variant", VARIANT, "--images", str(tmp_path / "in.npz"),
                               "--out", str(out), "--batch-size", str(N)] + extra) == 0
        with np.load(out) as z:
            got[tuple(extra)] = z["logits"]
    old, default = got[("--fused-stride", "project")], got[()]
    np.testing.assert_allclose(old, tf_logits, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(default, reference.forward(get_arch(VARIANT), reference.read_checkpoint_getter(
        str(prefix)), _images(), batch_size=N, device="cpu"), rtol=1e-5, atol=1e-5)
    assert compare(old, default)["rel_error"] > 0.1


def test_cli_fused_stride_option(stride_case, tmp_path, capsys):
    prefix = stride_case["expand"][0]
    capsys.readouterr()
    for argv, expect in (
            (["--variant", "b0", "--flavor", "aa", "--checkpoint", str(prefix), "--fused-stride", "project"],
             "--fused-stride applies to models with strided fused blocks (edgetpu-s/m/l); b0 has none"),
            (["--all", "--fused-stride", "project"], "--all converts with the default --fused-stride")):
        rc = main(argv + ["--output-dir", str(tmp_path / "o"), "--quiet"])
        err = capsys.readouterr().err.strip()
        assert rc == 2 and expect in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "o").exists()
    with pytest.raises(SystemExit):
        main(["--variant", VARIANT, "--checkpoint", str(prefix), "--fused-stride", "kxk"])
    # the explicit default is the default: same metadata as no option
    assert main(["--variant", VARIANT, "--checkpoint", str(prefix), "--output-dir", str(tmp_path / "e"), "--quiet",
                 "--fused-stride", "expand"]) == 0
    assert load_model(tmp_path / "e" / "efficientnet-edgetpu-s_standard.safetensors").pretrained_cfg[
        "fused_stride"] == "expand"
    # a file without the key (written before the option existed) loads with the default
    from safetensors.numpy import load_file, save_file

    from converter.loading import read_weights
    from converter.metadata import encode

    src = tmp_path / "e" / "efficientnet-edgetpu-s_standard.safetensors"
    meta = {k: v for k, v in encode(read_weights(src)[1]).items() if k != "fused_stride"}
    old_file = tmp_path / "old.safetensors"
    save_file(load_file(str(src)), str(old_file), metadata=meta)
    assert load_model(old_file).blocks[1].expand_conv.stride == (2, 2)
