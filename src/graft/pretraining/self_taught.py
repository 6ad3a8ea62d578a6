"""Self-taught learning (Raina et al., 2007, in the course notes): learn features from *unlabelled*
images, possibly of other classes than the target's, then train a classifier on few labels of the target
(``graft train TARGET --backbone RUN``).

The objective is a **denoising autoencoder**: the network's stages encode a corrupted image (a quarter of
its pixels masked, Gaussian noise on the rest) and a small decoder of transposed convolutions must give
back the clean one. Chosen over a contrastive objective (SimCLR-style) because it needs no augmentation
recipe that encodes what "the same image" means, works with small batches, and is what the notes
describe; on a 2-core CPU contrastive learning's large batches and many views are out of reach.

It runs on the core loop (:func:`graft.core.fit.fit`): the autoencoder is a
:class:`graft.core.model.TransferModel` whose "head" is the decoder and whose output is each image's
reconstruction error, and :class:`Reconstruction` is its objective. The run folder holds the stages under
the same names as a classifier run's, so it is a backbone like one.
"""

from __future__ import annotations

import math
import time
from datetime import datetime, timezone
from typing import Any

import numpy as np
import torch
from torch import nn

from graft.core.model import TransferModel
from graft.core.objectives import Objective

KIND = "self-taught"
MASKED, NOISE = 0.25, 0.3


class DenoisingAutoencoder(TransferModel):
    """Stages (the encoder) and a decoder; ``forward`` gives each image's reconstruction error (mean
    squared, in normalised pixel units): of a corrupted copy while training, of the image itself otherwise."""

    def __init__(self, stages, decoder: nn.Module, layout=None):
        super().__init__(stages, decoder, 0, pool=nn.Identity(), layout=layout)

    def forward(self, x: torch.Tensor, start: int = 0) -> torch.Tensor:
        seen = corrupt(x) if self.training else x
        rebuilt = self.head(self.forward_stages(seen))
        return ((rebuilt - x) ** 2).flatten(1).mean(1)


def corrupt(x: torch.Tensor) -> torch.Tensor:
    keep = (torch.rand(x.shape[0], 1, *x.shape[2:], device=x.device) >= MASKED).to(x.dtype)
    return x * keep + NOISE * torch.randn_like(x) * keep


def decoder_for(channels: int, size: int, feature_size: int, out_channels: int = 3) -> nn.Sequential:
    """Transposed convolutions doubling the resolution from ``feature_size`` back to ``size`` (halving the
    channels, at least 16), then a 3x3 convolution to the image's channels."""
    layers: list[nn.Module] = []
    steps = max(0, round(math.log2(size / feature_size)))
    for _ in range(steps):
        nxt = max(16, channels // 2)
        layers += [nn.ConvTranspose2d(channels, nxt, 2, stride=2), nn.BatchNorm2d(nxt), nn.ReLU(inplace=True)]
        channels = nxt
    layers += [nn.Conv2d(channels, out_channels, 3, padding=1)]
    return nn.Sequential(*layers)


class Reconstruction(Objective):
    """The mean reconstruction error; the best epoch has the lowest validation error."""

    def loss(self, outputs, targets, model):
        return outputs.mean()

    def validate(self, outputs, targets, model) -> dict[str, Any]:
        error = float(np.mean(outputs))
        return {"valid_loss": error, "valid_score": -error}

    def status(self, record: dict[str, Any]) -> str:
        return f"valid reconstruction error {record['valid_loss']:.4f}"


def self_taught(
    data: str,
    out: str,
    *,
    arch: str,
    epochs: int,
    lr: float,
    batch_size: int,
    image_size: int | None,
    seed: int,
    deterministic: bool,
    device: str,
    num_workers: int | None,
    quiet: bool,
    overwrite: bool,
) -> dict[str, Any]:
    """Train a denoising autoencoder on ``data``'s images (their labels, if any, unused) into ``out``."""
    from graft import __version__
    from graft.console import progress, stderr
    from graft.core.callbacks import ProgressBars
    from graft.core.fit import fit
    from graft.core.freeze import FreezePlan
    from graft.core.inputs import default_workers, make_loader
    from graft.core.plots import pyplot, save_figure
    from graft.core.reproducibility import EpochSampler, seed_everything
    from graft.core.run_files import CONFIG, HISTORY, LEARNING_CURVE, METRICS
    from graft.core.runs import RunFolder, SaveEveryEpoch
    from graft.core.runtime import Runtime
    from graft.image.backbones import create_backbone
    from graft.image.modality import IMAGE
    from graft.image.model import channels_last, wrap_backbone

    began = time.perf_counter()
    runtime = Runtime.create(device)
    dataset = IMAGE.scan(data, valid_fraction=0.1, seed=seed)
    seed_everything(seed, deterministic)
    loaded = create_backbone(arch, pretrained=False)
    preprocessing = loaded.preprocessing
    if image_size is not None:
        preprocessing = IMAGE.with_input_size(preprocessing, image_size)
    size = preprocessing.input_size
    encoder = wrap_backbone(loaded.model, lambda features: nn.Identity(), size)
    with torch.no_grad():
        encoder.eval()
        shape = encoder.forward_stages(IMAGE.example_input(preprocessing)).shape
    model = DenoisingAutoencoder(encoder.stages, decoder_for(shape[1], size, shape[-1]), layout=channels_last)
    model = model.to(memory_format=torch.channels_last).to(runtime.device)
    objective = Reconstruction().to(runtime.device)
    plan = FreezePlan(stages=tuple(model.stage_names), trainable_from=0, lr=lr, backbone_lr_mult=1.0)
    run = RunFolder(out)
    run.claim(overwrite)
    try:
        workers = default_workers() if num_workers is None else num_workers
        items = dataset.split("train")
        examples = IMAGE.examples(items, preprocessing, augment=False)
        train = make_loader(examples, batch_size, workers, EpochSampler(len(items), seed))
        valid = make_loader(IMAGE.examples(dataset.split("valid"), preprocessing, augment=False), batch_size, workers)

        def plot(history: list[dict]) -> None:
            figure, axis = pyplot().subplots(figsize=(6, 3.8), layout="constrained")
            axis.plot(
                [r["epoch"] for r in history], [r["train_loss"] for r in history], "o-", label="train (corrupted)"
            )
            axis.plot([r["epoch"] for r in history], [r["valid_loss"] for r in history], "o-", label="valid (clean)")
            axis.set_xlabel("epoch")
            axis.set_ylabel("reconstruction error")
            axis.legend()
            save_figure(figure, run / LEARNING_CURVE)

        with progress(quiet) as bars:
            state = fit(
                model,
                objective,
                plan,
                train,
                valid,
                epochs=epochs,
                patience=epochs,
                callbacks=[ProgressBars(bars), SaveEveryEpoch(run, plot)],
                runtime=runtime,
            )
        plot(state.history)
        run.write_json(HISTORY, state.history)
        seconds = time.perf_counter() - began
        metrics = {
            "valid_reconstruction_error": state.history[state.best_epoch - 1]["valid_loss"],
            "best_epoch": state.best_epoch,
            "epochs_run": len(state.history),
            "seconds": seconds,
        }
        run.write_json(METRICS, metrics)
        (run / "checkpoint.safetensors").unlink(missing_ok=True)
        run.write_json(
            CONFIG,
            {
                "kind": KIND,
                "modality": "image",
                "graft_version": __version__,
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "data": {"root": data, "counts": {k: len(v) for k, v in dataset.splits.items()}, "labels": "unused"},
                "backbone": {"name": arch, "architecture": loaded.report.architecture},
                "preprocessing": preprocessing.to_dict(),
                "objective": {"name": "denoising autoencoder", "masked": MASKED, "noise": NOISE},
                "hyperparameters": {"epochs": epochs, "lr": lr, "batch_size": batch_size, "seed": seed},
            },
        )
    except BaseException:
        run.abandon()
        raise
    finally:
        run.release()
    if not quiet:
        stderr.print(
            f"[green]done[/] in {seconds:.1f}s: reconstruction error {metrics['valid_reconstruction_error']:.4f} "
            f"(best epoch {state.best_epoch}); a backbone now: graft train TARGET --backbone {run.path}"
        )
    return {"run": str(run.path), "kind": KIND, "backbone": arch, **metrics}


class FeaturesOnly:
    """The run kind of a self-taught run: features without a classifier, a source for other runs only."""

    name = KIND

    def load_trained(self, folder, config):
        from graft.errors import RunFolderError

        raise RunFolderError(
            f"'{folder}' is a self-taught run: it learned features without labels and predicts nothing",
            hint=f"use it as a backbone: graft train TARGET --backbone {folder}",
        )


FEATURES_ONLY = FeaturesOnly()
