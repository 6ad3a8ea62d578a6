"""BatchNorm over the whole batch when one batch is split between several processes: torch's SyncBatchNorm, which
runs only on GPUs, for gloo on the CPU too (and nccl).

A BatchNorm layer that trains normalises with its batch's mean and variance; split between ranks, each would
use its share's, and the run would train another model than one process does. :func:`whole_batch_norms`
(called where the DDP wrapper is built, :meth:`graft.core.distributed.Processes.wrap`) turns each BatchNorm
layer of a registered class into its whole-batch subclass, which sums the per-channel count, sum and sum of
squares over the ranks. Plain ``nn.BatchNorm1d/2d/3d`` are registered here; a modality registers its backbone
library's own kinds (the image modality: timm's BatchNormAct2d).
"""

from __future__ import annotations

import torch
from torch import nn


def whole_batch_normalise(layer: nn.modules.batchnorm._BatchNorm, x: torch.Tensor) -> torch.Tensor | None:
    """``layer``'s normalisation of ``x`` (affine included) with the statistics of the whole batch, every rank's
    share of it, as one process would compute them; None where the layer's own forward is right (evaluation,
    no autograd, as in a statistics pass on one rank, or one process). Each channel's count, sum and sum of
    squares are summed over the ranks in one all_reduce that is differentiable: each rank's rows also get the
    gradient through the other ranks' losses. torch's SyncBatchNorm does this on GPUs only; this runs on gloo."""
    if not (layer.training and torch.is_grad_enabled() and _world() > 1):
        return None
    channels, dims = x.shape[1], [0, *range(2, x.dim())]
    rows = x.float()
    count = rows.new_full((1,), rows.numel() / channels)
    totals = _SumOverRanks.apply(torch.cat([rows.sum(dims), (rows * rows).sum(dims), count]))
    n = totals[-1]
    mean = totals[:channels] / n
    var = totals[channels : 2 * channels] / n - mean * mean
    if layer.track_running_stats and layer.running_mean is not None:
        with torch.no_grad():
            layer.num_batches_tracked.add_(1)
            factor = 1.0 / float(layer.num_batches_tracked) if layer.momentum is None else layer.momentum
            layer.running_mean.lerp_(mean.to(layer.running_mean.dtype), factor)
            layer.running_var.lerp_((var * n / (n - 1)).to(layer.running_var.dtype), factor)
    shape = (1, channels) + (1,) * (x.dim() - 2)
    out = (rows - mean.view(shape)) * torch.rsqrt(var.view(shape) + layer.eps)
    if layer.weight is not None:
        out = out * layer.weight.view(shape) + layer.bias.view(shape)
    return out.to(x.dtype)


class WholeBatchStatistics:
    """Mixed into a BatchNorm class: training over several ranks, it normalises with the whole batch's
    statistics (:func:`whole_batch_normalise`), then does what the class does after normalising."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        normalised = whole_batch_normalise(self, x)
        return super().forward(x) if normalised is None else self.after_normalising(normalised)

    def after_normalising(self, x: torch.Tensor) -> torch.Tensor:
        return x


class WholeBatchNorm1d(WholeBatchStatistics, nn.BatchNorm1d):
    pass


class WholeBatchNorm2d(WholeBatchStatistics, nn.BatchNorm2d):
    pass


class WholeBatchNorm3d(WholeBatchStatistics, nn.BatchNorm3d):
    pass


_WHOLE_BATCH: dict[type, type] = {
    nn.BatchNorm1d: WholeBatchNorm1d,
    nn.BatchNorm2d: WholeBatchNorm2d,
    nn.BatchNorm3d: WholeBatchNorm3d,
}


def register_whole_batch_norm(layer: type, whole: type) -> None:
    """Say which subclass of ``layer`` (a BatchNorm class that does more than normalise, such as timm's
    BatchNormAct2d) normalises with the whole batch's statistics: :func:`whole_batch_norms` then converts it."""
    _WHOLE_BATCH[layer] = whole


def whole_batch_norms(model: nn.Module) -> None:
    """Make ``model``'s BatchNorm layers of a registered class normalise with the whole batch's statistics
    over the ranks. Each layer is turned into its registered subclass in place (its class changes, nothing
    else): parameters, buffers and every reference to the layer stay what they were, so DDP, the optimizer
    and the checkpoint see the same model. A BatchNorm class nobody registered normalises each rank's share."""
    for layer in model.modules():
        whole = _WHOLE_BATCH.get(type(layer))
        if whole is not None:
            layer.__class__ = whole


def _world() -> int:
    return torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1


class _SumOverRanks(torch.autograd.Function):
    """all_reduce (sum) whose gradient is the sum over the ranks of theirs: every rank's loss depends on the sum.
    (torch.distributed.nn.functional.all_reduce does the same and is deprecated in this torch.)"""

    @staticmethod
    def forward(ctx, values: torch.Tensor) -> torch.Tensor:
        summed = values.contiguous().clone()
        torch.distributed.all_reduce(summed)
        return summed

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        summed = grad.contiguous().clone()
        torch.distributed.all_reduce(summed)
        return summed
