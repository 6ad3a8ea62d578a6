"""Images decoded and transformed on access: the torch dataset a DataLoader (or the frozen pass) draws from."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from graft.core.reproducibility import item_seed, seeded
from graft.image.data import load_image


def label_of(label):
    """A class index as it is; one label per task as a float32 row (NaN = missing), collated to (batch, tasks)."""
    return label if isinstance(label, int) else torch.tensor(label, dtype=torch.float32)


class ImageDataset(torch.utils.data.Dataset):
    """(path, label) pairs decoded and transformed on access, for a torch DataLoader. A label is a class
    index, or a list of one value per task (multi-task runs).

    Indexed by position, or by ``(round, position)`` keys from an
    :class:`~graft.core.reproducibility.EpochSampler`: with a ``seed``, the random transform of an image
    is then seeded from ``(seed, round, image key)`` (round = epoch, or the number of a cached view),
    so the same key gives the same pixels in any process. ``image_keys`` default to positions; pass
    content hashes to make a view depend on the image rather than on where it sits in a list.
    """

    def __init__(
        self,
        items: Sequence[tuple[str, int]],
        transform: Callable,
        seed: int | None = None,
        image_keys: Sequence[int] | None = None,
    ):
        self.items = list(items)
        self.transform = transform
        self.seed = seed
        self.image_keys = list(range(len(self.items))) if image_keys is None else list(image_keys)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, key):
        round_, index = key if isinstance(key, tuple) else (0, key)
        path, label = self.items[index]
        image = load_image(path)
        label = label_of(label)
        if self.seed is None:
            return self.transform(image), label
        with seeded(item_seed(self.seed, round_, self.image_keys[index])):
            return self.transform(image), label


class PredecodedImages(torch.utils.data.Dataset):
    """An :class:`ImageDataset` of clean views whose images, where a start-up child decoded them already
    (:mod:`graft.image.predecode`), come from there: the same uint8 pixels, without decoding them again."""

    def __init__(self, images: ImageDataset, predecoded):
        self.images = images
        self.predecoded = predecoded
        self.items = images.items

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key):
        index = key[1] if isinstance(key, tuple) else key
        pixels = self.predecoded.pixels_of(self.items[index][0])
        if pixels is None:
            return self.images[key]
        return torch.from_numpy(pixels), label_of(self.items[index][1])
