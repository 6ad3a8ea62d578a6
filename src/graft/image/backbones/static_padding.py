"""TensorFlow "same" padding made static for a fixed input size (an exact speed-up).

timm's ``tf_*`` models pad their stride-2 convolutions the TensorFlow way, computing the padding
from the input's size on every call (``Conv2dSame``). graft always feeds one input size, so the
padding is known in advance: each such layer becomes a plain convolution with that padding. Same
parameters, same names, the same windows; outputs agree up to float rounding (the convolution
kernel the CPU picks, and so its order of summation, can depend on the padding).

TensorFlow pads stride-2 layers unevenly (one more zero on the right and bottom). Rather than an
``F.pad`` copy of the input (the largest tensors of the network: 17% of EfficientNet-Lite0's time on
one thread), the convolution pads evenly by ``left + k * stride`` on both sides, which only shifts
the window grid by ``k`` whole outputs, and the first ``k`` rows and columns of its output are
dropped: every kept window sees exactly the input and zeros TensorFlow's would.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from graft.image.backbones.folding import replace_submodule


class StaticPadConv2d(nn.Conv2d):
    """A convolution with a fixed (left, right, top, bottom) zero padding for inputs of ``input_hw``
    (other sizes fall back to computing the "same" padding, so the layer is never wrong)."""

    def __init__(self, source: nn.Conv2d, pad: tuple[int, int, int, int], input_hw: tuple[int, int]):
        left, right, top, bottom = pad
        # Outputs to drop at the start of each axis, then the even padding that shifts the grid by them.
        skip = tuple(
            math.ceil((after - before) / stride)
            for before, after, stride in ((top, bottom, source.stride[0]), (left, right, source.stride[1]))
        )
        padding = tuple(before + dropped * stride for before, dropped, stride in zip((top, left), skip, source.stride))
        super().__init__(
            source.in_channels,
            source.out_channels,
            source.kernel_size,
            source.stride,
            padding,
            source.dilation,
            source.groups,
            source.bias is not None,
        )
        self.skip = skip
        self.pad = tuple(pad)
        self.weight = source.weight
        self.bias = source.bias
        self.input_hw = tuple(input_hw)
        self.output_hw = tuple(math.ceil(size / stride) for size, stride in zip(self.input_hw, source.stride))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) != self.input_hw:
            from timm.layers import conv2d_same

            return conv2d_same(x, self.weight, self.bias, self.stride, (0, 0), self.dilation, self.groups)
        y = super().forward(x)
        if self.skip == (0, 0):
            return y
        (skip_h, skip_w), (height, width) = self.skip, self.output_hw
        return y[:, :, skip_h : skip_h + height, skip_w : skip_w + width]


def with_explicit_padding(model: nn.Module) -> nn.Module:
    """A copy of ``model`` in which every :class:`StaticPadConv2d` is a zero padding followed by an unpadded
    convolution (the same windows, so the same numbers up to rounding). For export: ONNX Runtime fuses the
    padding into the convolution (ONNX convolutions take uneven pads), where the cropped output of the fast
    form would leave a Slice between each convolution and its activation, which int8 quantisation handles
    badly (the activation cannot be fused into the convolution's output range)."""
    import copy

    result = copy.deepcopy(model)
    for name, module in list(result.named_modules()):
        if not isinstance(module, StaticPadConv2d):
            continue
        conv = nn.Conv2d(
            module.in_channels,
            module.out_channels,
            module.kernel_size,
            module.stride,
            0,
            module.dilation,
            module.groups,
            module.bias is not None,
        )
        conv.weight, conv.bias = module.weight, module.bias
        replace_submodule(result, name, nn.Sequential(nn.ZeroPad2d(module.pad), conv))
    return result


def _same_padding(size: int, kernel: int, stride: int, dilation: int) -> int:
    return max((math.ceil(size / stride) - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)


def make_padding_static(model: nn.Module, input_size: int) -> int:
    """Replace every ``Conv2dSame`` in ``model`` (in place) by a :class:`StaticPadConv2d` for square
    inputs of ``input_size``; returns how many were replaced."""
    from timm.layers import Conv2dSame

    sizes: dict[str, tuple[int, int]] = {}
    hooks = [
        module.register_forward_pre_hook(
            lambda module, args, name=name: sizes.__setitem__(name, tuple(args[0].shape[-2:]))
        )
        for name, module in model.named_modules()
        if isinstance(module, Conv2dSame)
    ]
    if not hooks:
        return 0
    try:
        was_training = model.training
        with torch.no_grad():
            model.eval()(torch.zeros(1, 3, input_size, input_size))
        model.train(was_training)
    finally:
        for hook in hooks:
            hook.remove()
    for name, (height, width) in sizes.items():
        conv = model.get_submodule(name)
        pad_h = _same_padding(height, conv.kernel_size[0], conv.stride[0], conv.dilation[0])
        pad_w = _same_padding(width, conv.kernel_size[1], conv.stride[1], conv.dilation[1])
        replace_submodule(
            model,
            name,
            StaticPadConv2d(conv, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2), (height, width)),
        )
    return len(sizes)
