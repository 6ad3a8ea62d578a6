"""The image frozen pass: decode, normalise and run the frozen stages, whole batches at a time, with
BatchNorm folded into the convolutions. On the CPU each worker process (one single-threaded process per
core) decodes and runs its own batches; on a GPU worker processes decode into pinned memory and this
process runs large batches on the GPU. On a CPU the frozen part runs on ONNX Runtime where that passes the
export's parity gate (:mod:`graft.image.onnx_pass`). The activation cache (:func:`graft.core.inputs.frozen_rows`)
stores what it returns."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch

from graft.console import progress_task
from graft.core.inputs import make_loader, whole_batches
from graft.core.model import TransferModel
from graft.core.reproducibility import EpochSampler
from graft.image import predecode
from graft.image.backbones.folding import fold_batchnorm
from graft.image.decoded import ImageDataset
from graft.image.onnx_pass import ORT_BATCH, OnnxPass, onnx_pass
from graft.image.preprocessing import Preprocessing
from graft.perf import usable_cores

# Images per call of the frozen part's forward pass, in each worker process. From 16 images on, torch runs
# 1x1 convolutions on one thread through oneDNN instead of its slower native path (folded
# EfficientNet-Lite0: 12.8 ms an image at 8, 11.4 at 16); the cost is ~100 MB more per worker.
FORWARD_BATCH = 16
# Images the ONNX Runtime form of the frozen part is checked on against torch before a pass uses it.
PARITY_EXAMPLES = 8
# What the last pass did its own way (images decoded during start-up, the runtime), for the run's metrics.
notes: dict[str, Any] = {}
# Worker processes of the frozen pass, at most: each holds its own activations.
MAX_FORWARD_WORKERS = 8
# Images per forward call on a GPU: large enough that kernel launches are not what a batch waits on, small
# enough for any GPU's memory at 224 px. Decoding (on the CPU) is then the pace-setter, so every core but
# the one feeding the GPU decodes.
GPU_FORWARD_BATCH = 128


def forward_workers() -> int:
    """Worker processes for the frozen pass, one per core, each decoding its own batches and running
    the frozen stages on one thread. Whole batches in parallel beat one batch split over threads:
    an EfficientNet's many small layers leave threads waiting on each other (two single-threaded
    processes: 142 img/s; one process with two threads: 132), and the decoding of one worker overlaps
    the other's forward pass instead of stalling both cores. One thread each, because GNU OpenMP
    deadlocks in a forked child that asks for more threads after its parent used them."""
    cores = usable_cores()
    return 0 if cores < 2 else min(cores, MAX_FORWARD_WORKERS)


class FrozenForward(torch.utils.data.Dataset):
    """The frozen pass as a dataset: a list of image keys in, the activations of stages ``[0, stop)``
    for those images out (pooled features when ``stop`` is past the last stage). A DataLoader over
    it runs whole batches, decoding included, in its worker processes. ``pixels`` gives uint8 images
    (a transform with ``normalize=False``), normalised a batch at a time by ``preprocessing``. The
    stages run as a copy with BatchNorm folded into the convolutions (:mod:`graft.image.backbones.folding`);
    ``model`` is untouched."""

    def __init__(
        self,
        model: TransferModel,
        pixels: ImageDataset,
        stop: int,
        preprocessing: Preprocessing,
        device: torch.device | None = None,
        threads: int = 1,
    ):
        self.pixels = pixels
        self.preprocessing = preprocessing
        self.device = torch.device("cpu") if device is None else device
        self.frozen, self.folded = model.prefix(stop).eval(), 0
        self.onnx: OnnxPass | None = None
        self.runtime = {"runtime": "torch"}
        if len(pixels):
            wanted = PARITY_EXAMPLES if self.device.type == "cpu" else 1  # folding needs one; the gate, a few
            examples = self.inputs(list(range(min(len(pixels), wanted)))).to(self.device)
            self.frozen, self.folded = fold_batchnorm(self.frozen, examples[:1])
            if self.device.type == "cpu":
                self.onnx, self.runtime = onnx_pass(self.frozen, examples, threads, images=len(pixels))
        self.batch_size = FORWARD_BATCH if self.onnx is None else ORT_BATCH

    def __len__(self) -> int:
        return len(self.pixels)

    def inputs(self, keys: Sequence) -> torch.Tensor:
        """The normalised batch of images ``keys``."""
        return self.preprocessing.normalize_batch(pixel_batch(self.pixels, keys))

    def run(self, pixels: torch.Tensor) -> np.ndarray:
        """The activations of a batch of uint8 images (N, C, H, W), on any device."""
        inputs = self.preprocessing.normalize_batch(pixels.to(self.device, non_blocking=True))
        if self.onnx is not None:
            return self.onnx.run(inputs.numpy())
        with torch.inference_mode():
            return self.frozen(inputs).float().cpu().contiguous().numpy()

    def __getitem__(self, keys: Sequence) -> np.ndarray:
        return self.run(pixel_batch(self.pixels, keys))


def pixel_batch(pixels: ImageDataset, keys: Sequence) -> torch.Tensor:
    """The uint8 images ``keys`` of ``pixels`` as one (N, C, H, W) tensor."""
    images = [pixels[key][0] for key in keys]
    if images[0].dtype != torch.uint8:
        raise TypeError(f"the frozen pass takes uint8 pixels (a transform with normalize=False), got {images[0].dtype}")
    return torch.stack(images)


class PixelBatches(torch.utils.data.Dataset):
    """Whole batches of decoded uint8 images, for worker processes that only decode (the GPU path)."""

    def __init__(self, pixels: ImageDataset):
        self.pixels = pixels

    def __len__(self) -> int:
        return len(self.pixels)

    def __getitem__(self, keys: Sequence) -> torch.Tensor:
        return pixel_batch(self.pixels, keys)


def forward_batches(
    model: TransferModel,
    pixels: ImageDataset,
    stop: int,
    preprocessing: Preprocessing,
    *,
    workers: int,
    sampler: torch.utils.data.Sampler | None = None,
    progress=None,
    description: str = "frozen stages",
    device: torch.device | None = None,
) -> Iterator[np.ndarray]:
    """Activations of stages ``[0, stop)`` of ``model`` for ``pixels`` (uint8 images, see :class:`FrozenForward`;
    in ``sampler``'s order), batch by batch, computed by ``workers`` processes of one thread each (0: in
    this process, on torch's threads). On a CUDA ``device`` the workers only decode and the stages run
    in this process on the GPU (a forked worker cannot use CUDA): see :func:`decode_there_run_here`."""
    order = sampler if sampler is not None else range(len(pixels))
    forward = FrozenForward(
        model, pixels, stop, preprocessing, device, threads=1 if workers else torch.get_num_threads()
    )
    notes["runtime"] = forward.runtime
    if forward.device.type == "cuda":
        batches = decode_there_run_here(forward, order, decode_workers(), GPU_FORWARD_BATCH)
    else:
        keys = torch.utils.data.BatchSampler(order, forward.batch_size, drop_last=False)
        batches = drained(make_loader(forward, None, workers, keys, collate_fn=whole_batches))
    with progress_task(progress, description, len(pixels)) as advance:
        try:
            for outputs in batches:
                yield outputs
                advance(len(outputs))
        finally:
            batches.close()


def drained(loader: torch.utils.data.DataLoader, each=None) -> Iterator:
    """``loader``'s batches (through ``each``), its worker processes shut down when the iteration ends,
    on an error too: they must never outlive the pass (or graft)."""
    batches = iter(loader)
    try:
        for batch in batches:
            yield batch if each is None else each(batch)
    finally:
        shutdown = getattr(batches, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()


def decode_workers() -> int:
    """Decoding processes when the frozen stages run on a GPU: every core but the one feeding it."""
    return min(max(usable_cores() - 1, 1), MAX_FORWARD_WORKERS)


def decode_there_run_here(forward: FrozenForward, order, workers: int, batch_size: int) -> Iterator[np.ndarray]:
    """Activations of ``forward``'s images in ``order``: ``workers`` processes decode batches of
    ``batch_size`` (into pinned memory for a GPU, so the copy overlaps the next batch) and this process
    runs ``forward`` on them."""
    keys = torch.utils.data.BatchSampler(order, batch_size, drop_last=False)
    pin = forward.device.type == "cuda"
    loader = make_loader(PixelBatches(forward.pixels), None, workers, keys, collate_fn=whole_batches, pin_memory=pin)
    return drained(loader, forward.run)


def frozen_pass(
    model: TransferModel,
    items: Sequence[tuple[str, Any]],
    stop: int,
    preprocessing: Preprocessing,
    *,
    round_: int | None,
    seed: int | None,
    keys: Sequence[int] | None,
    workers: int | None,
    device: torch.device | None,
    progress: Any,
    description: str,
) -> Iterator[np.ndarray]:
    """Activations of stages ``[0, stop)`` for the images ``items`` in order: the clean view
    (``preprocessing.eval_transform``), or augmented view number ``round_`` (``train_transform``,
    seeded per image from ``(seed, round_, key)``). ``workers``: processes (default :func:`forward_workers`).
    Clean views that the start-up child decoded already (:mod:`graft.image.predecode`) are taken from it."""
    workers = forward_workers() if workers is None else workers
    transform = (
        preprocessing.eval_transform(normalize=False)
        if round_ is None
        else preprocessing.train_transform(normalize=False)
    )
    subset = ImageDataset(list(items), transform, seed=None if round_ is None else seed, image_keys=keys)
    predecoded = predecode.running()
    if predecoded is not None and round_ is None:
        predecoded.stop()  # from here the pass's own workers decode what the child did not reach
        notes["decoded_ahead"] = predecoded.describe()
        if predecoded.matches(preprocessing):
            subset = predecoded.serving(subset)
    sampler = None
    if round_ is not None:
        sampler = EpochSampler(len(subset), seed, shuffle=False)
        sampler.set_epoch(round_)
    return forward_batches(
        model,
        subset,
        stop,
        preprocessing,
        workers=workers,
        sampler=sampler,
        progress=progress,
        description=description,
        device=device,
    )
