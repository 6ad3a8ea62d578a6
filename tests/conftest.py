"""Shared fixtures: generated image folders (tiny, learnable) and the path to the real datasets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

SHARED_DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets"
TINY_BACKBONE = "test_efficientnet"  # timm's 0.36M-parameter EfficientNet, random weights


def make_image(path: Path, colour: tuple[int, int, int], seed: int, size: int = 48) -> Path:
    """A noisy image dominated by ``colour``: classes are separable, images differ."""
    rng = np.random.default_rng(seed)
    pixels = np.clip(np.array(colour, dtype=np.float32) + rng.normal(0, 25, (size, size, 3)), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}


@pytest.fixture
def class_folder(tmp_path) -> Path:
    """DATA/<class>/*.png with 3 classes x 10 images."""
    root = tmp_path / "data"
    for index, (name, colour) in enumerate(COLOURS.items()):
        for i in range(10):
            make_image(root / name / f"{name}_{i}.png", colour, seed=index * 100 + i)
    return root


@pytest.fixture
def split_folder(tmp_path) -> Path:
    """DATA/{train,valid,test}/<class>/*.png with 3 classes."""
    root = tmp_path / "split"
    for split, count in (("train", 8), ("valid", 3), ("test", 3)):
        for index, (name, colour) in enumerate(COLOURS.items()):
            for i in range(count):
                make_image(root / split / name / f"{i}.png", colour, seed=hash((split, index, i)) % 10_000)
    return root


@pytest.fixture(autouse=True)
def _private_activation_cache(tmp_path_factory, monkeypatch):
    """Tests never read or fill the user's ~/.cache/graft."""
    monkeypatch.setenv("GRAFT_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "activation-cache"))
