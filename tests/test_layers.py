"""Layer numerics against TensorFlow's own ops: 'SAME' padding at any size, depthwise, dense, BN."""
import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from converter.reorder import tf_to_torch, torch_to_tf
from converter.mappings.kinds import CONV, DENSE, DWCONV
from converter.layers import kernel_form
from converter.layers import BatchNorm2dTF, Conv2dSame

tf = pytest.importorskip("tensorflow")


def _rel(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.mark.parametrize("size", [7, 8, 15, 16, 33, 224, 225, 475])
@pytest.mark.parametrize("k,s", [(3, 1), (3, 2), (5, 1), (5, 2), (1, 1)])
def test_conv_same_padding_matches_tensorflow(size, k, s):
    rng = np.random.default_rng(size * 10 + k + s)
    x = rng.standard_normal((1, size, size, 3)).astype(np.float32)
    w = rng.standard_normal((k, k, 3, 4)).astype(np.float32)
    ref = tf.nn.conv2d(x, w, strides=s, padding="SAME").numpy()
    conv = Conv2dSame(3, 4, k, s)
    with torch.no_grad():
        conv.weight.copy_(torch.from_numpy(tf_to_torch(w, CONV)))
        got = conv(torch.from_numpy(x).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).numpy()
    assert got.shape == ref.shape
    assert _rel(got, ref) < 1e-5


def test_conv_same_padding_non_square():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 31, 48, 3)).astype(np.float32)
    w = rng.standard_normal((5, 5, 3, 2)).astype(np.float32)
    ref = tf.nn.conv2d(x, w, strides=2, padding="SAME").numpy()
    conv = Conv2dSame(3, 2, 5, 2)
    with torch.no_grad():
        conv.weight.copy_(torch.from_numpy(tf_to_torch(w, CONV)))
        got = conv(torch.from_numpy(x).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).numpy()
    assert _rel(got, ref) < 1e-5


@pytest.mark.parametrize("size,k,s", [(16, 3, 2), (17, 5, 2), (12, 5, 1)])
@pytest.mark.parametrize("mult", [1, 2])
def test_depthwise_matches_tensorflow(size, k, s, mult):
    rng = np.random.default_rng(size + k)
    c = 6
    x = rng.standard_normal((2, size, size, c)).astype(np.float32)
    w = rng.standard_normal((k, k, c, mult)).astype(np.float32)
    ref = tf.nn.depthwise_conv2d(x, w, strides=[1, s, s, 1], padding="SAME").numpy()
    conv = Conv2dSame(c, c * mult, k, s, groups=c)
    with torch.no_grad():
        conv.weight.copy_(torch.from_numpy(tf_to_torch(w, DWCONV)))
        got = conv(torch.from_numpy(x).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).numpy()
    assert _rel(got, ref) < 1e-5
    np.testing.assert_array_equal(torch_to_tf(tf_to_torch(w, DWCONV), DWCONV, mult), w)


def test_dense_layout():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((3, 8)).astype(np.float32)
    w = rng.standard_normal((8, 5)).astype(np.float32)
    lin = torch.nn.Linear(8, 5, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.from_numpy(tf_to_torch(w, DENSE)))
        got = lin(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, x @ w, rtol=1e-5, atol=1e-5)


def test_batchnorm_is_tensorflow_inference_bn():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 4, 4, 6)).astype(np.float32)
    g, b = rng.uniform(0.5, 1.5, 6).astype(np.float32), rng.standard_normal(6).astype(np.float32)
    m, v = rng.standard_normal(6).astype(np.float32), rng.uniform(1e-4, 1e-2, 6).astype(np.float32)
    ref = tf.nn.batch_normalization(x, m, v, b, g, 1e-3).numpy()
    bn = BatchNorm2dTF(6, eps=1e-3).eval()
    bn.load_state_dict({"weight": torch.tensor(g), "bias": torch.tensor(b),
                        "running_mean": torch.tensor(m), "running_var": torch.tensor(v)})
    with torch.no_grad():
        got = bn(torch.from_numpy(x).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).numpy()
    assert _rel(got, ref) < 1e-6
    # with the PyTorch default eps the small variances make a visible difference
    bn.eps = 1e-5
    with torch.no_grad():
        wrong = bn(torch.from_numpy(x).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).numpy()
    assert _rel(wrong, ref) > 1e-3
    assert "num_batches_tracked" not in bn.state_dict()


@pytest.mark.parametrize("h,w", [(16, 16), (17, 16), (224, 225), (15, 15), (8, 9)])
@pytest.mark.parametrize("k,s,depthwise", [(3, 2, True), (5, 2, True), (3, 2, False), (1, 2, False),
                                           (3, 1, True), (4, 1, False), (2, 2, False)])
def test_pad_into_kernel_matches_pad_path_and_tensorflow(h, w, k, s, depthwise):
    """The kernel form (zero row/col in the kernel, symmetric conv padding) vs the F.pad path and TF."""
    rng = np.random.default_rng(h * 100 + w + k * 7 + s)
    c = 4
    x = rng.standard_normal((2, h, w, c)).astype(np.float32)
    conv = Conv2dSame(c, c if depthwise else 3, k, s, groups=c if depthwise else 1).double()
    with torch.no_grad():
        conv.weight.normal_()
    folded = copy.deepcopy(conv)
    folded.pad_into_kernel = True
    xt = torch.from_numpy(x).permute(0, 3, 1, 2).double()
    for size in ((h, w), (-1, -1)):  # static (frozen) and dynamic padding
        conv.set_input_size(*size)
        folded.set_input_size(*size)
        with torch.no_grad():
            a, b = conv(xt), folded(xt)
        assert a.shape == b.shape
        assert _rel(b.numpy(), a.numpy()) < 1e-14  # float64: the same sums up to summation order
    wt = conv.weight.detach().float()
    if depthwise:
        ref = tf.nn.depthwise_conv2d(x, wt.permute(2, 3, 0, 1).numpy(), strides=[1, s, s, 1], padding="SAME")
    else:
        ref = tf.nn.conv2d(x, wt.permute(2, 3, 1, 0).numpy(), strides=s, padding="SAME")
    folded.float()
    with torch.no_grad():
        got = folded(xt.float()).permute(0, 2, 3, 1).numpy()
    assert got.shape == ref.shape and _rel(got, ref.numpy()) < 1e-5


@pytest.mark.parametrize("extra", [[0, 1, 0, 1], [1, 0, 0, 1], [0, 1, 1, 0], [1, 0, 1, 0], [0, 0, 0, 1], [2, 0, 0, 3]])
@pytest.mark.parametrize("stride", [1, 2, 3])
def test_kernel_form_against_explicit_pad(extra, stride):
    """kernel_form on every side combination, by F.conv2d of the F.pad-ed input (float64)."""
    g = torch.Generator().manual_seed(sum(extra) * 10 + stride)
    x = torch.randn(1, 3, 13, 12, generator=g, dtype=torch.float64)
    wgt = torch.randn(5, 3, 3, 3, generator=g, dtype=torch.float64)
    padding = [1, 0]
    ref = F.conv2d(F.pad(x, extra), wgt, None, stride, padding)
    kpad, kpadding = kernel_form(padding, extra)
    got = F.conv2d(x, F.pad(wgt, kpad), None, stride, kpadding)
    assert got.shape == ref.shape
    assert torch.allclose(got, ref, rtol=0, atol=1e-12)


def test_pad_into_kernel_keeps_weight_and_state_dict():
    conv = Conv2dSame(3, 8, 3, 2)
    conv.set_input_size(224, 224)
    before = {k: v.clone() for k, v in conv.state_dict().items()}
    conv.pad_into_kernel = True
    with torch.no_grad():
        conv(torch.randn(1, 3, 224, 224))
    assert conv.weight.shape == (8, 3, 3, 3)
    assert sorted(conv.state_dict()) == sorted(before)
    assert all(torch.equal(conv.state_dict()[k], v) for k, v in before.items())


@pytest.mark.parametrize("kind,shape", [(CONV, (1, 1, 300, 517)), (CONV, (1, 1, 7, 3)), (DWCONV, (5, 5, 613, 1)),
                                        (DWCONV, (3, 3, 40, 2)), (DENSE, (1281, 1001)), (CONV, (3, 3, 70, 300))])
def test_tf_to_torch_tiled_equals_plain_transpose(kind, shape):
    """The tiled re-layout (tiles not dividing the shapes) vs numpy's own transpose, value for value."""
    a = np.random.default_rng(sum(shape)).standard_normal(shape).astype(np.float32)
    got = tf_to_torch(a, kind)
    if kind == CONV:
        ref = a.transpose(3, 2, 0, 1)
    elif kind == DWCONV:
        ref = a.transpose(2, 3, 0, 1).reshape(shape[2] * shape[3], 1, shape[0], shape[1])
    else:
        ref = a.T
    assert got.flags.c_contiguous and got.shape == ref.shape
    np.testing.assert_array_equal(got, ref)
