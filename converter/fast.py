"""Fast inference for converted models: static padding, batch norm folding, channels_last, compile.

The model computes what the official TensorFlow graph computes at any input size; these
functions only change how: TF 'SAME' padding frozen per layer for a known input size
(:func:`set_input_size`), each batch norm folded into the conv before it (:func:`fuse_bn`),
NHWC memory (channels_last) and optionally ``torch.compile``. :func:`prepare_for_inference`
applies the combination measured fastest (see README, "Fast inference and export").
"""
from __future__ import annotations

import contextlib
from typing import Dict, Iterator, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from .errors import ConversionError
from .layers import Conv2dSame

# logits of the fused model vs the unfused one: ||fused - unfused|| / ||unfused|| stays below this
FUSE_MAX_REL_ERROR = 1e-5


def _size_pair(h, w=None) -> Tuple[int, int]:
    if isinstance(h, (tuple, list)):
        if w is not None or len(h) not in (2, 3):
            raise ConversionError(f"input size {h!r}: give H, (H, W) or (C, H, W)")
        h, w = h[-2], h[-1]
    w = h if w is None else w
    for v in (h, w):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ConversionError(f"input size {h!r} x {w!r}: height and width must be positive integers")
    return int(h), int(w)


def same_convs(model: nn.Module):
    """The Conv2dSame layers of ``model`` in registration (= execution) order."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, Conv2dSame)]


def set_input_size(model: nn.Module, h: Optional[int], w: Optional[int] = None) -> nn.Module:
    """Freeze each Conv2dSame's TF 'SAME' padding for ``h`` x ``w`` inputs; returns ``model``.

    The layers form a chain (each conv's output size is ceil(input / stride), the next
    conv's input), walked in registration order. ``h=None`` unfreezes every layer. A layer
    that meets another size at run time takes the dynamic path: same numbers, only slower.
    """
    convs = same_convs(model)
    if h is None:
        for _, conv in convs:
            conv.set_input_size(-1, -1)
        model.input_size = None
        return model
    size = _size_pair(h, w)
    group_input = size
    for _, conv in convs:
        # a conv ``parallel`` to the one before (a group of GroupedConv2dSame, converter/families/mnasnet/modules.py) sees its input
        group_input = group_input if getattr(conv, "parallel", False) else size
        size = conv.set_input_size(*group_input)
    model.input_size = _size_pair(h, w)
    return model


@torch.no_grad()
def _fold(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    """conv <- bn(conv(x)) with the running statistics, computed in float64 then cast back."""
    dtype = conv.weight.dtype
    w = conv.weight.double()
    var, mean = bn.running_var.double(), bn.running_mean.double()
    gamma = bn.weight.double() if bn.weight is not None else torch.ones_like(var)
    beta = bn.bias.double() if bn.bias is not None else torch.zeros_like(var)
    scale = gamma / torch.sqrt(var + bn.eps)
    b = conv.bias.double() if conv.bias is not None else torch.zeros_like(var)
    conv.weight.copy_((w * scale.reshape(-1, 1, 1, 1)).to(dtype))
    conv.bias = nn.Parameter(((b - mean) * scale + beta).to(dtype=dtype, device=conv.weight.device),
                             requires_grad=conv.weight.requires_grad)


def fuse_bn(model: nn.Module) -> nn.Module:
    """Fold every batch norm into the conv before it; returns ``model`` in eval mode.

    Which pairs may be folded is declared by each block class (``BN_FUSION`` in its own
    class body, never inherited); a folded BN becomes ``nn.Identity``. The result is an
    inference model: the folding uses the BN running statistics.
    """
    model.eval()
    for module in list(model.modules()):
        for conv_name, bn_name in vars(type(module)).get("BN_FUSION", ()):
            conv, bn = getattr(module, conv_name, None), getattr(module, bn_name, None)
            if not isinstance(conv, nn.Conv2d) or not isinstance(bn, nn.BatchNorm2d):
                continue  # absent in this block (no expand conv) or folded already
            if conv.out_channels != bn.num_features:
                raise ConversionError(f"cannot fold {bn_name} into {conv_name}: "
                                      f"{conv.out_channels} vs {bn.num_features} channels")
            _fold(conv, bn)
            setattr(module, bn_name, nn.Identity())
    model.bn_fused = True
    return model


# fold_pads: the kernel form (one zero row and column more in the kernel) costs
# 0.25 * out_channels * in_channels_per_group * (2k + 1) / in_channels extra multiply-adds per
# input element, the F.pad one copy of it. Measured (2 threads, channels_last, batch 1 and 32):
# depthwise (1.75) and the 3->24 stem (42) gain, 24->96 3x3 (168) breaks even, 48->192 3x3 (336)
# loses 30 %: the kernel form is taken up to this many extra multiply-adds per element.
PAD_FOLD_MAX_MACS = 192


def _kernel_form_pays(conv: Conv2dSame) -> bool:
    kh, kw = conv.kernel_size
    extra = 0.25 * conv.out_channels * (conv.in_channels // conv.groups) * (kh + kw + 1) / conv.in_channels
    return extra <= PAD_FOLD_MAX_MACS


def fold_pads(model: nn.Module, on: bool = True) -> nn.Module:
    """Conv2dSame layers compute their extra TF 'SAME' pixel in the kernel, not by padding the input.

    The stride-2 layers of an even-sized input pad (0, 1): one F.pad copy of the whole
    activation each (on CPU the copy costs more than a depthwise conv). A folded conv pads its
    (tiny) kernel with a zero row/column instead and its input symmetrically
    (:func:`converter.layers.kernel_form`): the same sums. Taken where it pays (depthwise and
    few-input-channel convs, PAD_FOLD_MAX_MACS); ``on=False`` restores the F.pad everywhere.
    """
    for _, conv in same_convs(model):
        conv.pad_into_kernel = bool(on) and _kernel_form_pays(conv)
    return model


def inplace_activations(model: nn.Module, on: bool = True) -> nn.Module:
    """Activations (SiLU, ReLU, ReLU6) overwrite their input, a fresh conv/BN output in every
    block: no new tensor per activation (on CPU half the activation's time). Inference only:
    autograd cannot differentiate through the overwritten inputs.
    """
    for m in model.modules():
        if isinstance(m, (nn.SiLU, nn.ReLU, nn.ReLU6)):
            m.inplace = bool(on)
    return model


def prepare_for_inference(model: nn.Module, input_size: Union[None, int, Sequence[int]] = None,
                          fuse: bool = True, channels_last: bool = True, compile: bool = False,
                          device: Union[None, str, torch.device] = None, pads_in_kernel: bool = True):
    """The fastest exact eager model (measured, see README): static pads folded into the kernels
    (:func:`fold_pads`), BN folded, activations in place (:func:`inplace_activations`), channels_last.

    ``input_size``: H, (H, W) or (C, H, W) to freeze the padding for (default: keep what the
    model has, its native resolution after build_model/load_model). ``compile=True`` returns
    ``torch.compile(model)`` (same numbers up to float rounding; worth it only for long runs).
    Feed channels_last inputs too (``x.to(memory_format=torch.channels_last)``) for the
    full gain; NCHW inputs give the same numbers.
    """
    model.eval()
    if device is not None:
        model.to(device)
    if input_size is not None:
        set_input_size(model, input_size)
    if fuse and not getattr(model, "bn_fused", False):
        fuse_bn(model)
    fold_pads(model, pads_in_kernel)
    inplace_activations(model)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    if compile:
        return torch.compile(model)
    return model


# --dtype of verify and evaluate: the precision the converted model runs in
PRECISIONS: Dict[str, Optional[torch.dtype]] = {"float32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@contextlib.contextmanager
def in_precision(model: nn.Module, precision: str, device: Union[str, torch.device] = "cpu") -> Iterator[str]:
    """Run ``model`` in ``precision`` ('float32', 'bf16', 'fp16') inside the block; yields how.

    'autocast': torch.autocast on the device (convolutions, matmuls in the low precision, the
    ops autocast keeps in float32 stay there: what mixed-precision inference runs); 'cast': the
    model and its input cast to the dtype (devices without autocast); 'float32': nothing. The
    logits come out as float32 either way; the model is as before after the block.
    """
    if precision not in PRECISIONS:
        raise ConversionError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")
    dtype = PRECISIONS[precision]
    if dtype is None:
        yield "float32"
        return
    dev_type = torch.device(device).type
    to_float = model.register_forward_hook(lambda mod, args, out: out.float())
    try:
        if torch.amp.is_autocast_available(dev_type):
            with torch.autocast(dev_type, dtype=dtype):
                yield "autocast"
            return
        before = next(model.parameters()).dtype
        cast_in = model.register_forward_pre_hook(lambda mod, args: tuple(
            a.to(dtype) if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args))
        model.to(dtype)
        try:
            yield "cast"
        finally:
            cast_in.remove()
            model.to(before)
    finally:
        to_float.remove()
