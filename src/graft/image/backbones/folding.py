"""BatchNorm folded into the convolution before it, for stages that only ever run frozen.

A frozen BatchNorm in eval mode is a fixed per-channel scale and shift, so it can be multiplied into
the weights of the convolution that feeds it (what ONNX Runtime and TensorRT do when they load a
model). On EfficientNet-Lite0 this removes a quarter of a single-threaded forward pass (py-spy: 24%
of a worker's time was ``batch_norm``). The result equals the unfolded network up to float rounding
(~1e-6 relative), not to the bit, so folded copies are used only where graft computes cached
activations, never in a model that is trained or saved.

Which pairs are folded is decided by watching one forward pass, not from the module tree: a
convolution is folded into a BatchNorm only when that BatchNorm's input is exactly the tensor the
convolution returned, and the folded copy must reproduce the original's output, else the original
is kept.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

# Largest difference allowed between folded and original outputs, relative to the largest output.
TOLERANCE = 1e-4


def _conv_batchnorm_pairs(module: nn.Module, example: torch.Tensor) -> list[tuple[str, str]]:
    """(convolution, BatchNorm) module names where the BatchNorm consumed the convolution's output directly."""
    outputs: dict[str, list[torch.Tensor]] = {}
    inputs: dict[str, list[torch.Tensor]] = {}
    hooks = []
    for name, child in module.named_modules():
        if isinstance(child, nn.Conv2d):
            hooks.append(
                child.register_forward_hook(
                    lambda _m, _args, output, name=name: outputs.setdefault(name, []).append(output)
                )
            )
        elif isinstance(child, nn.BatchNorm2d):
            hooks.append(
                child.register_forward_pre_hook(lambda _m, args, name=name: inputs.setdefault(name, []).append(args[0]))
            )
    try:
        with torch.no_grad():
            module(example)
    finally:
        for hook in hooks:
            hook.remove()
    # the tensors themselves are kept above, so `is` cannot match a freed tensor's recycled id
    producers = {id(tensors[0]): name for name, tensors in outputs.items() if len(tensors) == 1}
    return [
        (producers[id(tensors[0])], name)
        for name, tensors in inputs.items()
        if len(tensors) == 1 and id(tensors[0]) in producers and outputs[producers[id(tensors[0])]][0] is tensors[0]
    ]


def _after_normalization(batchnorm: nn.BatchNorm2d) -> nn.Module:
    """What a BatchNorm does after normalising (timm's BatchNormAct2d: dropout, then activation)."""
    rest = [
        part
        for part in (getattr(batchnorm, "drop", None), getattr(batchnorm, "act", None))
        if isinstance(part, nn.Module) and not isinstance(part, nn.Identity)
    ]
    return rest[0] if len(rest) == 1 else nn.Sequential(*rest) if rest else nn.Identity()


def fold_batchnorm(module: nn.Module, example: torch.Tensor) -> tuple[nn.Module, int]:
    """An eval-mode copy of ``module`` with BatchNorms folded into the convolutions feeding them, and how
    many were folded; ``module`` itself is not changed. ``example``: an input of the size it will see.
    ``module`` returns a tensor or a tuple of them."""
    original = module.eval()
    folded = copy.deepcopy(original)
    count = 0
    for conv_name, batchnorm_name in _conv_batchnorm_pairs(folded, example):
        conv, batchnorm = folded.get_submodule(conv_name), folded.get_submodule(batchnorm_name)
        if (
            batchnorm.running_mean is None or batchnorm.running_var is None
        ):  # normalises by batch statistics: not a constant
            continue
        replace_submodule(folded, conv_name, fuse_conv_bn_eval(conv, batchnorm))
        replace_submodule(folded, batchnorm_name, _after_normalization(batchnorm))
        count += 1
    with torch.no_grad():
        expected, actual = original(example), folded(example)
    pairs = zip(expected, actual) if isinstance(expected, tuple) else [(expected, actual)]
    if not all(_same_output(want, have) for want, have in pairs):
        return original, 0
    return folded, count


def _same_output(expected: torch.Tensor, actual: torch.Tensor) -> bool:
    return expected.shape == actual.shape and bool(
        (expected - actual).abs().max() <= TOLERANCE * max(float(expected.abs().max()), 1.0)
    )


def replace_submodule(root: nn.Module, name: str, replacement: nn.Module) -> None:
    """Put ``replacement`` where the submodule called ``name`` (dotted) is in ``root``."""
    parent_name, _, attribute = name.rpartition(".")
    setattr(root.get_submodule(parent_name) if parent_name else root, attribute, replacement)
