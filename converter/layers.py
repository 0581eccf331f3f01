"""The two layers every family's module is built from: TF-'SAME' convolution and TF batch norm.

Kept apart from converter.model so that converter.fast (padding freeze, BN folding) can use
them without importing the model (one direction: model -> fast -> layers).
"""
from __future__ import annotations

from typing import List, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .arch import BN_MOMENTUM_TF, same_padding


class BatchNorm2dTF(nn.BatchNorm2d):
    """BatchNorm with TensorFlow's defaults (eps 1e-3) and no ``num_batches_tracked`` buffer.

    TensorFlow checkpoints have no counter to fill it with, so the state_dict holds exactly
    the four tensors of tf.layers.BatchNormalization.

    Eval mode: F.batch_norm with the moving statistics. Train mode as TensorFlow's layer trains
    (the family's settings, converter/training.py): the batch is normalised with its mean and
    biased variance over N, H, W, and the moving statistics move as Keras' _assign_moving_average
    moves them, ``moving -= (moving - batch) * (1 - tf_momentum)`` (``self.momentum`` is
    ``1 - tf_momentum``), the variance taking the biased batch variance (non-fused layer:
    tf.nn.moments) or, with ``bessel``, the unbiased one (TF's fused batch norm: n / (n - 1)).
    """

    def __init__(self, num_features: int, eps: float):
        super().__init__(num_features, eps=eps, momentum=1.0 - BN_MOMENTUM_TF)
        self.register_buffer("num_batches_tracked", None)
        self.bessel: bool = False  # moving variance from the unbiased batch variance (TF fused BN)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:  # nn.BatchNorm2d's eval computation
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)
        mean = x.mean((0, 2, 3))
        var = (x - mean[None, :, None, None]).square().mean((0, 2, 3))
        moving_mean, moving_var, momentum = self.running_mean, self.running_var, self.momentum
        if moving_mean is not None and moving_var is not None and momentum is not None:
            with torch.no_grad():
                n = x.numel() // max(x.shape[1], 1)
                batch_var = var * (n / (n - 1)) if self.bessel and n > 1 else var
                moving_mean.sub_((moving_mean - mean.detach().to(moving_mean.dtype)) * momentum)
                moving_var.sub_((moving_var - batch_var.detach().to(moving_var.dtype)) * momentum)
        # tf.nn.batch_normalization's form: x * inv + (beta - mean * inv), inv = rsqrt(var + eps) * gamma
        inv = torch.rsqrt(var + self.eps)
        if self.weight is not None:
            inv = inv * self.weight
        shift = -mean * inv
        if self.bias is not None:
            shift = shift + self.bias
        return x * inv[None, :, None, None] + shift[None, :, None, None]

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # _NormBase would insert a num_batches_tracked entry for old-format state_dicts;
        # this module has no such buffer, so load the four tensors only.
        nn.Module._load_from_state_dict(self, state_dict, prefix, *args, **kwargs)


class Conv2dSame(nn.Conv2d):
    """nn.Conv2d with TensorFlow 'SAME' padding for whatever input size arrives.

    The symmetric part of the padding goes into the convolution itself; the extra pixel
    (bottom/right, as tf.nn.conv2d pads) goes through one F.pad.

    Static padding: :meth:`set_input_size` computes both parts once for a known input size;
    an input of that size then takes them as constants (no shape arithmetic per call, nothing
    computed at run time in an exported graph); any other size takes the dynamic path, which
    splits the padding the same way, so both give identical numbers.

    ``pad_into_kernel = True`` (set by converter.fast.fold_pads) computes the same convolution
    without padding the activation: the kernel gets the extra pixel as a zero row/column on the
    opposite side and the convolution pads symmetrically by the larger amount (see
    :func:`kernel_form`). The weight, its shape and the state_dict are unchanged; the zero-padded
    kernel is made from it per call (a few hundred floats).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 groups: int = 1, bias: bool = False):
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=0,
                         groups=groups, bias=bias)
        # plain attributes (not buffers): the state_dict keys stay those of the mapping tables
        self.static_hw: Tuple[int, int] = (-1, -1)  # the frozen input size; (-1, -1): none
        self.static_padding: List[int] = [0, 0]  # symmetric part (rows, cols), into the conv
        self.static_extra: List[int] = [0, 0, 0, 0]  # the rest (left, right, top, bottom), one F.pad
        self.static_has_extra: bool = False
        self.pad_into_kernel: bool = False  # the extra pixel as a zero row/col of the kernel, not an F.pad

    def same_pads(self, h: int, w: int) -> Tuple[List[int], List[int]]:
        """TF 'SAME' padding for an ``h`` x ``w`` input: ([rows, cols] into the conv, [l, r, t, b] by F.pad)."""
        top, bottom = same_padding(h, self.kernel_size[0], self.stride[0])
        left, right = same_padding(w, self.kernel_size[1], self.stride[1])
        ph, pw = min(top, bottom), min(left, right)
        return [ph, pw], [left - pw, right - pw, top - ph, bottom - ph]

    def set_input_size(self, h: int, w: int) -> Tuple[int, int]:
        """Freeze the padding for an ``h`` x ``w`` input (-1, -1: none); returns the output size."""
        if h < 0 or w < 0:
            self.static_hw, self.static_padding = (-1, -1), [0, 0]
            self.static_extra, self.static_has_extra = [0, 0, 0, 0], False
            return (-1, -1)
        padding, extra = self.same_pads(h, w)
        self.static_hw, self.static_padding, self.static_extra = (int(h), int(w)), padding, extra
        self.static_has_extra = any(v != 0 for v in extra)
        return (-(-h // self.stride[0]), -(-w // self.stride[1]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2] == self.static_hw[0] and x.shape[-1] == self.static_hw[1]:
            padding, extra, has_extra = self.static_padding, self.static_extra, self.static_has_extra
        else:
            padding, extra = self.same_pads(x.shape[-2], x.shape[-1])
            has_extra = extra[0] != 0 or extra[1] != 0 or extra[2] != 0 or extra[3] != 0
        weight = self.weight
        if has_extra:
            if self.pad_into_kernel:
                kpad, padding = kernel_form(padding, extra)
                weight = F.pad(weight, kpad)
            else:
                x = F.pad(x, extra)
        return F.conv2d(x, weight, self.bias, self.stride, padding, self.dilation, self.groups)


def kernel_form(padding: List[int], extra: List[int]) -> Tuple[List[int], List[int]]:
    """conv(F.pad(x, extra), w, padding=p) as conv(x, F.pad(w, kernel_pad), padding=p'): (kernel_pad, p').

    ``extra`` is [left, right, top, bottom] with at most one side of each dimension non-zero
    (as :meth:`Conv2dSame.same_pads` makes it). Per dimension with extra (lo, hi): the input is
    padded by p + lo + hi on both sides and the kernel gets ``hi`` zero taps in front and ``lo``
    behind. Window i of stride s then starts at s*i - p - hi and its live taps at s*i - p - lo,
    where those of the padded original start; the output keeps floor((H + 2p + lo + hi - k) / s) + 1
    rows. Exact in arithmetic: the same products are summed, plus zeros.
    """
    left, right, top, bottom = extra[0], extra[1], extra[2], extra[3]
    return [right, left, bottom, top], [padding[0] + top + bottom, padding[1] + left + right]
