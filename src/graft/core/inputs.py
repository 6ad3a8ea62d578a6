"""What the trainable part of a model is fed: examples, or cached activations of the frozen part.

With a freeze plan whose first stages are frozen, everything before the freeze boundary is the
same function every epoch. :func:`build_inputs` then runs those stages once per example (and once
per augmented view: ``views`` of them, drawn once) with the modality's frozen pass, stores the
activations (:mod:`graft.core.cache`) and feeds the loop those rows with ``start`` = the boundary.
Each epoch an example is shown one of its views, chosen from ``(seed, epoch, example)``. With
``cache=False`` (or nothing frozen) examples go through the whole network every epoch, freshly
augmented: the classic loop. Nothing here knows what an example is (:mod:`graft.core.modality`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from graft.core.cache import (
    ActivationKey,
    ActivationStore,
    CachedRows,
    cache_limit,
    cached_rows,
    library_versions,
    prune_cache,
    resolve_cache_dir,
    weights_digest,
)
from graft.core.dataset import Dataset
from graft.core.distributed import SINGLE, Processes
from graft.core.model import TransferModel
from graft.core.reproducibility import EpochSampler, item_seed, worker_init
from graft.errors import ConfigError
from graft.perf import usable_cores

if TYPE_CHECKING:
    from graft.core.modality import Modality


def default_workers() -> int:
    """Image-decoding worker processes for loops that run the model in the main process. With two
    cores or fewer the model's threads already keep every core busy and workers only add copying and
    contention (measured: the frozen pass over the sign-language digits took 84 s in-process against
    96 s with two workers), so decoding stays in the main process; larger machines decode on the
    cores the model leaves."""
    cores = usable_cores()
    return 0 if cores <= 2 else min(4, cores - 2)


def make_loader(
    dataset: torch.utils.data.Dataset,
    batch_size: int | None,
    workers: int = 0,
    sampler: torch.utils.data.Sampler | None = None,
    collate_fn=None,
    batch_sampler: torch.utils.data.Sampler | None = None,
    pin_memory: bool = False,
) -> torch.utils.data.DataLoader:
    """A DataLoader that never draws from torch's global generator (a DataLoader otherwise takes a
    seed from it each epoch, so merely iterating a loader would change the dropout masks).
    ``batch_size=None``: ``sampler`` yields whole batches of keys and the dataset returns whole batches.
    ``batch_sampler``: yields the keys of each batch, read one by one and collated (``batch_size`` unused).
    ``pin_memory``: batches land in page-locked memory, for copies to a GPU that overlap its work."""
    batching = {"batch_sampler": batch_sampler} if batch_sampler is not None else {"batch_size": batch_size}
    return torch.utils.data.DataLoader(
        dataset,
        **batching,
        sampler=sampler,
        num_workers=workers,
        persistent_workers=workers > 0,
        worker_init_fn=worker_init,
        prefetch_factor=4 if workers > 0 else None,
        generator=torch.Generator(),
        collate_fn=collate_fn,
        pin_memory=pin_memory,
    )


def content_key(digest: str) -> int:
    """An example's identity for seeding its augmentation: the first 64 bits of its file's sha256."""
    return int(digest[:16], 16)


def as_targets(labels: Sequence) -> torch.Tensor:
    """Labels as one tensor: class indices (int64) for one task, rows of float32 (NaN = missing) for several."""
    return torch.as_tensor(list(labels), dtype=None if not labels or isinstance(labels[0], int) else torch.float32)


def whole_batches(batch):
    """Datasets that return whole batches need no collating. (The frozen pass's activations travel from
    the workers as numpy arrays, pickled through the pipe: a torch tensor would go through a
    shared-memory file per batch, which cost the parent ~2 ms of CPU a batch.)"""
    return batch


class CachedViews(torch.utils.data.Dataset):
    """Training rows from cached views, a whole batch per read: keys ``(epoch, index)`` (from an
    :class:`~graft.core.reproducibility.EpochSampler` with a ``batch_size``) pick one of each image's views.
    A batch is one gather per view, not a read, a stack and a collate per row."""

    def __init__(self, views: Sequence[CachedRows], labels: Sequence, seed: int, image_keys: Sequence[int]):
        self.views = list(views)
        self.labels = as_targets(labels)
        self.seed = seed
        self.image_keys = list(image_keys)

    def __len__(self) -> int:
        return len(self.labels)

    def view_of(self, epoch: int, index: int) -> int:
        return 0 if len(self.views) == 1 else item_seed(self.seed, epoch, self.image_keys[index]) % len(self.views)

    def __getitem__(self, keys: Sequence[tuple[int, int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows and labels of the batch ``keys``."""
        indices = [index for _, index in keys]
        labels = self.labels[indices]
        if len(self.views) == 1:
            return self.views[0].rows(indices), labels
        chosen = np.array([self.view_of(epoch, index) for epoch, index in keys])
        batch = None
        for view in np.unique(chosen):
            positions = np.flatnonzero(chosen == view)
            rows = self.views[view].rows([indices[p] for p in positions])
            if batch is None:
                batch = rows.new_empty((len(keys), *rows.shape[1:]))
            batch[positions] = rows
        return batch, labels


def cached_loader(
    views: Sequence[CachedRows],
    items: Sequence[tuple[str, Any]],
    seed: int,
    image_keys: Sequence[int],
    batch_size: int,
    shuffle: bool,
    processes: Processes = SINGLE,
    pin_memory: bool = False,
) -> torch.utils.data.DataLoader:
    """A loader of whole batches of cached rows, in the batches (and per-epoch order, with ``shuffle``)
    a per-row DataLoader of ``batch_size`` over an :class:`EpochSampler` gives (each process's share of them
    with ``processes``)."""
    return make_loader(
        CachedViews(views, [label for _, label in items], seed, image_keys),
        None,
        sampler=EpochSampler(len(items), seed, shuffle=shuffle, batch_size=batch_size, processes=processes),
        collate_fn=whole_batches,
        pin_memory=pin_memory,
    )


def frozen_key(
    modality: Modality, model: TransferModel, stop: int, architecture: str, preprocessing: Any
) -> dict[str, Any]:
    """The parts of an :class:`~graft.core.cache.ActivationKey` shared by every view: what the frozen stages are
    and what computes them (``modality``'s libraries; the pooling when the rows are pooled features)."""
    pooled = stop >= len(model.stages)
    return dict(
        architecture=architecture,
        weights=weights_digest(list(model.stages.values())[:stop]),
        preprocessing=preprocessing.to_dict(),
        stop=stop,
        computed_by={
            **library_versions(modality.frozen_libraries),
            "pool": type(model.pool).__qualname__ if pooled else None,
        },
    )


def frozen_rows(
    modality: Modality,
    model: TransferModel,
    items: Sequence[tuple[str, Any]],
    digests: Sequence[str],
    preprocessing: Any,
    *,
    base: dict[str, Any],
    view: str = "clean",
    root: str | os.PathLike,
    workers: int | None = None,
    seed: int | None = None,
    round_: int | None = None,
    keys: Sequence[int] | None = None,
    progress=None,
    description: str = "frozen stages",
    device: torch.device | None = None,
    source: str | None = None,
    processes: Processes = SINGLE,
) -> CachedRows:
    """Activations of stages ``[0, base["stop"])`` for ``items`` through the cache, computing only what is
    missing with ``modality``'s frozen pass: the clean view, or augmented view number ``round_`` (seeded
    per example with ``seed`` and ``keys``). ``workers``: processes of the frozen pass (default: the modality's)."""

    def compute(positions: list[int]):
        return modality.frozen_pass(
            model,
            [items[p] for p in positions],
            base["stop"],
            preprocessing,
            round_=round_,
            seed=seed,
            keys=None if keys is None else [keys[p] for p in positions],
            workers=workers,
            device=device,
            progress=progress,
            description=description,
        )

    return cached_rows(
        ActivationStore(root, ActivationKey(**base, view=view)), digests, compute, source=source, processes=processes
    )


def _require_cache_space(
    root, model, stop, modality, preprocessing, device, base, splits, dataset, seed, views
) -> None:
    """Refuse before the frozen pass when the cache's disk cannot hold the rows still to compute (one
    example through the frozen stages gives a row's size), instead of failing after some views."""
    import shutil

    wanted = [(items, "clean") for name, items in splits.items() if name != "train"]
    wanted += [
        (splits["train"], f"augmented:{v}:seed{seed}:{modality.augmentation_recipe}") for v in range(1, views + 1)
    ] or [(splits["train"], "clean")]
    rows = sum(
        len(
            ActivationStore(root, ActivationKey(**base, view=view)).missing([dataset.digest(path) for path, _ in items])
        )
        for items, view in wanted
    )
    if not rows:  # every row cached (a re-run): no example needs to go through the network to size one
        return
    with torch.inference_mode():
        example = modality.example_input(preprocessing)
        example = example.to(device) if isinstance(example, torch.Tensor) and device is not None else example
        row = model.prefix(stop).eval()(example)
    row_bytes = int(np.prod(row.shape[1:])) * 4
    needed, free = rows * row_bytes, shutil.disk_usage(root).free
    if needed > free:
        raise ConfigError(
            f"the activation cache folder '{root}' has {free / 1e6:.0f} MB free; this run's frozen pass needs about "
            f"{needed / 1e6:.0f} MB ({rows} rows of {row_bytes / 1e3:.0f} kB)",
            hint="free some space (graft cache --prune), pass --cache-dir DIR on a larger disk, fewer --views, "
            "or --no-cache",
        )


@dataclass
class Inputs:
    """Loaders for the loop and what they carry."""

    train: torch.utils.data.DataLoader
    evaluation: dict[str, torch.utils.data.DataLoader]  # "valid", and "test" when there is one
    start: int  # the stage the loaders' tensors enter the model at (0: images)
    description: dict[str, Any]


def build_inputs(
    modality: Modality,
    model: TransferModel,
    dataset: Dataset,
    preprocessing: Any,
    *,
    architecture: str,
    trainable_from: int,
    augment: bool,
    views: int,
    seed: int,
    batch_size: int,
    workers: int | None,
    cache: bool,
    cache_dir: str | os.PathLike | None,
    progress=None,
    device: torch.device | None = None,
    processes: Processes = SINGLE,
) -> Inputs:
    """Loaders for training, validation and test under a freeze plan starting to train at ``trainable_from``.

    ``workers``: decoding processes of the uncached loop and processes of the frozen pass (default:
    :func:`default_workers` and the modality's). ``device``: where ``model`` lives (the frozen pass runs there).
    ``processes``: a run over several (:mod:`graft.core.distributed`): the frozen pass is shared between them
    and each trains on its share of every batch; validation and test are whole on every process.
    """
    splits = {name: dataset.split(name) for name in ("train", "valid", "test") if dataset.split(name)}
    pin = device is not None and device.type == "cuda"  # page-locked batches: copies to the GPU overlap its work
    keys = {name: [content_key(dataset.digest(path)) for path, _ in items] for name, items in splits.items()}
    if not cache or trainable_from == 0:
        workers = default_workers() if workers is None else workers
        examples = modality.examples(splits["train"], preprocessing, augment=augment, seed=seed, keys=keys["train"])
        if processes.distributed:
            train = make_loader(
                examples,
                None,
                workers,
                batch_sampler=EpochSampler(len(splits["train"]), seed, batch_size=batch_size, processes=processes),
                pin_memory=pin,
            )
        else:
            train = make_loader(examples, batch_size, workers, EpochSampler(len(splits["train"]), seed), pin_memory=pin)
        evaluation = {
            name: make_loader(
                modality.examples(items, preprocessing, augment=False), batch_size, workers, pin_memory=pin
            )
            for name, items in splits.items()
            if name != "train"
        }
        return Inputs(
            train, evaluation, 0, {"cached": False, "augment": augment, "views": "fresh every epoch" if augment else 0}
        )

    root = resolve_cache_dir(cache_dir)
    base = frozen_key(modality, model, trainable_from, architecture, preprocessing)
    used: set[str] = set()

    def rows(
        items: list[tuple[str, int]], item_keys: list[int], view: str, round_: int | None, description: str
    ) -> CachedRows:
        used.add(ActivationKey(**base, view=view).namespace())
        return frozen_rows(
            modality,
            model,
            items,
            [dataset.digest(path) for path, _ in items],
            preprocessing,
            base=base,
            view=view,
            root=root,
            workers=workers,
            seed=seed,
            round_=round_,
            keys=item_keys,
            progress=progress,
            description=description,
            device=device,
            source=str(dataset.root),
            processes=processes,
        )

    views_wanted = views if augment and views > 0 else 0
    _require_cache_space(
        root, model, trainable_from, modality, preprocessing, device, base, splits, dataset, seed, views_wanted
    )
    clean = [name for name in splits if name != "train" or not (augment and views > 0)]
    if len(clean) > 1:  # every split's clean view in one frozen pass: its worker processes start once, not per split
        union: dict[str, tuple[tuple[str, int], int]] = {}
        for name in clean:
            for item, key in zip(splits[name], keys[name]):
                union.setdefault(dataset.digest(item[0]), (item, key))
        rows([item for item, _ in union.values()], [key for _, key in union.values()], "clean", None, "frozen stages")
    if augment and views > 0:
        train_views = [
            rows(
                splits["train"],
                keys["train"],
                f"augmented:{v}:seed{seed}:{modality.augmentation_recipe}",
                v,
                f"frozen stages, train view {v}/{views}",
            )
            for v in range(1, views + 1)
        ]
    else:
        train_views = [rows(splits["train"], keys["train"], "clean", None, "frozen stages, train")]
    train = cached_loader(
        train_views, splits["train"], seed, keys["train"], batch_size, shuffle=True, processes=processes, pin_memory=pin
    )
    evaluation = {}
    for name, items in splits.items():
        if name != "train":
            cached = rows(items, keys[name], "clean", None, f"frozen stages, {name}")
            evaluation[name] = cached_loader(
                [cached], items, seed, keys[name], batch_size, shuffle=False, pin_memory=pin
            )
    shape = train_views[0].row_shape
    if processes.is_main:
        prune_cache(root, max_bytes=cache_limit(), keep=used)  # the cache stays bounded; this run's rows stay
    return Inputs(
        train,
        evaluation,
        trainable_from,
        {
            "cached": True,
            "cache_dir": str(root),
            "augment": augment and views > 0,
            "views": views if augment else 0,
            "activation_shape": list(shape),
            "start_stage": model.stage_names[trainable_from]
            if trainable_from < len(model.stages)
            else "pooled features",
        },
    )
