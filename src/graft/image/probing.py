"""One cheap look at target images through a pretrained backbone, without any source images.

A single pass (``inference_mode``, small batches, a seeded per-class subsample) collects three kinds
of evidence about how far the target domain is from the backbone's source domain (ImageNet):

* the pretrained ImageNet head's confidence and entropy on the target images;
* BatchNorm statistic drift, stage by stage: the target's per-channel activation mean/variance at
  each BatchNorm input against the running statistics stored in the pretrained layer (the source's),
  as a Gaussian KL divergence; a profile over depth;
* pooled features after every stage, for LogME (``graft.core.transferability``) at several depths.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from graft.core.advisor import Probe
from graft.image.backbones import Backbone, split_into_stages
from graft.image.decoded import ImageDataset


@dataclass
class _ChannelMoments:
    """Running per-channel sums of a BatchNorm layer's input, in float64."""

    layer: nn.modules.batchnorm._BatchNorm
    total: torch.Tensor | None = None
    total_sq: torch.Tensor | None = None
    count: int = 0

    def add(self, x: torch.Tensor) -> None:
        x = x.detach().double()
        dims = [0] + list(range(2, x.dim()))
        total, total_sq = x.sum(dims), (x * x).sum(dims)
        self.total = total if self.total is None else self.total + total
        self.total_sq = total_sq if self.total_sq is None else self.total_sq + total_sq
        self.count += x.numel() // x.shape[1]

    def kl_to_source(self) -> float:
        """Mean over channels of KL(target || source) between 1-D Gaussians (source = running stats)."""
        mean = self.total / self.count
        var = (self.total_sq / self.count - mean * mean).clamp_min(0) + self.layer.eps
        source_mean = self.layer.running_mean.double()
        source_var = self.layer.running_var.double() + self.layer.eps
        kl = 0.5 * (torch.log(source_var / var) + (var + (mean - source_mean) ** 2) / source_var - 1)
        return float(kl.mean())


def _source_classifier(model: nn.Module) -> nn.Module | None:
    """The pretrained classifier if the model still has one (timm models keep it as ``get_classifier``)."""
    getter = getattr(model, "get_classifier", None)
    classifier = getter() if getter is not None else None
    if classifier is None or isinstance(classifier, nn.Identity) or getattr(model, "num_classes", 0) < 2:
        return None
    return classifier


def probe(backbone: Backbone, items: list[tuple[str, int]], batch_size: int = 16, num_workers: int = 0) -> Probe:
    """Run ``items`` (path, label) once through ``backbone``; collect features, BN drift and head outputs."""
    model = backbone.model.eval()
    stages = split_into_stages(model)
    result = Probe(stage_names=list(stages), labels=np.array([label for _, label in items]))
    moments: dict[str, list[_ChannelMoments]] = {}
    hooks = []
    for name, stage in stages.items():
        moments[name] = []
        for module in stage.modules():
            if (
                isinstance(module, nn.modules.batchnorm._BatchNorm)
                and module.track_running_stats
                and module.running_mean is not None
            ):
                record = _ChannelMoments(module)
                moments[name].append(record)
                hooks.append(module.register_forward_pre_hook(lambda _m, inputs, record=record: record.add(inputs[0])))
    loader = torch.utils.data.DataLoader(
        ImageDataset(items, backbone.preprocessing.eval_transform()), batch_size=batch_size, num_workers=num_workers
    )
    classifier = _source_classifier(model)
    pooled: dict[str, list[np.ndarray]] = {name: [] for name in stages}
    max_probs, entropies = [], []
    try:
        with torch.inference_mode():
            for inputs, _ in loader:
                x = inputs
                for name, stage in stages.items():
                    x = stage(x)
                    pooled[name].append((x.mean((2, 3)) if x.dim() == 4 else x).float().numpy())
                if classifier is not None and x.dim() == 4:
                    probabilities = torch.softmax(model.forward_head(x), dim=1)
                    max_probs.append(probabilities.max(1).values.numpy())
                    entropy = -(probabilities * probabilities.clamp_min(1e-12).log()).sum(1) / math.log(
                        probabilities.shape[1]
                    )
                    entropies.append(entropy.numpy())
    finally:
        for hook in hooks:
            hook.remove()
    result.features = {name: np.concatenate(chunks) for name, chunks in pooled.items()}
    result.bn_shift = {
        name: float(np.mean([m.kl_to_source() for m in records])) for name, records in moments.items() if records
    }
    if max_probs:
        result.head_max_prob = np.concatenate(max_probs)
        result.head_entropy = np.concatenate(entropies)
    return result
