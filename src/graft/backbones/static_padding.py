"""TensorFlow "same" padding made static for a fixed input size (an exact speed-up).

timm's ``tf_*`` models pad their stride-2 convolutions the TensorFlow way, computing the padding
from the input's size on every call (``Conv2dSame``). graft always feeds one input size, so the
padding is known in advance: each such layer becomes a plain convolution with that padding (built
in when it is symmetric, one ``F.pad`` before it when not). Same parameters, same names, same
outputs to the bit.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


class StaticPadConv2d(nn.Conv2d):
    """A convolution with a fixed (left, right, top, bottom) zero padding for inputs of ``input_hw``
    (other sizes fall back to computing the "same" padding, so the layer is never wrong)."""

    def __init__(self, source: nn.Conv2d, pad: tuple[int, int, int, int], input_hw: tuple[int, int]):
        left, right, top, bottom = pad
        symmetric = left == right and top == bottom
        super().__init__(source.in_channels, source.out_channels, source.kernel_size, source.stride,
                         (top, left) if symmetric else 0, source.dilation, source.groups, source.bias is not None)
        self.weight = source.weight
        self.bias = source.bias
        self.pad = None if symmetric else pad
        self.input_hw = tuple(input_hw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) != self.input_hw:
            from timm.layers import conv2d_same

            return conv2d_same(x, self.weight, self.bias, self.stride, (0, 0), self.dilation, self.groups)
        return super().forward(x if self.pad is None else F.pad(x, self.pad))


def _same_padding(size: int, kernel: int, stride: int, dilation: int) -> int:
    return max((math.ceil(size / stride) - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)


def make_padding_static(model: nn.Module, input_size: int) -> int:
    """Replace every ``Conv2dSame`` in ``model`` (in place) by a :class:`StaticPadConv2d` for square
    inputs of ``input_size``; returns how many were replaced."""
    from timm.layers import Conv2dSame

    sizes: dict[str, tuple[int, int]] = {}
    hooks = [module.register_forward_pre_hook(lambda module, args, name=name: sizes.__setitem__(name, tuple(args[0].shape[-2:])))
             for name, module in model.named_modules() if isinstance(module, Conv2dSame)]
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
        parent_name, _, attribute = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        conv = getattr(parent, attribute)
        pad_h = _same_padding(height, conv.kernel_size[0], conv.stride[0], conv.dilation[0])
        pad_w = _same_padding(width, conv.kernel_size[1], conv.stride[1], conv.dilation[1])
        setattr(parent, attribute, StaticPadConv2d(conv, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2), (height, width)))
    return len(sizes)
