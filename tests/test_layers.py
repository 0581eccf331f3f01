"""Layer numerics against TensorFlow's own ops: 'SAME' padding at any size, depthwise, dense, BN."""
import numpy as np
import pytest
import torch

from converter.reorder import tf_to_torch, torch_to_tf
from converter.mappings.kinds import CONV, DENSE, DWCONV
from converter.model import BatchNorm2dTF, Conv2dSame

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
