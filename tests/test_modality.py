"""The modality seam: a new kind of input plugs in by registering one object, with no edit to the core.

The toy modality here learns from folders of ``.npy`` vectors with a small pretrained-looking MLP; it
trains, caches its frozen pass, resumes, loads, predicts and evaluates through the same pipeline as
images."""

import json
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import graft
from graft.core.dataset import Dataset
from graft.core.inputs import make_loader
from graft.core.modality import MODALITIES, ModalityDefaults, register_modality
from graft.core.model import TransferModel


@dataclass(frozen=True)
class VectorPreprocessing:
    scale: float = 1.0

    def to_dict(self):
        return {"scale": self.scale}


@dataclass
class VectorReport:
    architecture: str = "toy-mlp"

    def to_dict(self):
        return {"architecture": self.architecture, "source": "generated"}


@dataclass
class VectorBackbone:
    model: nn.Module
    preprocessing: VectorPreprocessing
    report: VectorReport


class Vectors(torch.utils.data.Dataset):
    def __init__(self, items, preprocessing):
        self.items, self.preprocessing = list(items), preprocessing

    def __len__(self):
        return len(self.items)

    def __getitem__(self, key):
        _, index = key if isinstance(key, tuple) else (0, key)
        path, label = self.items[index]
        vector = torch.from_numpy(np.load(path)).float() * self.preprocessing.scale
        return vector, (label if isinstance(label, int) else torch.tensor(label, dtype=torch.float32))


class VectorModality(ModalityDefaults):
    name = "vector"
    augmentation_recipe = "none"

    def claims(self, data, backbone):
        return backbone == "toy-mlp"

    def load_backbone(self, name, *, weights=None, pretrained=True):
        torch.manual_seed(123)  # "pretrained": the same weights every time
        model = nn.Sequential(
            OrderedDict(
                first=nn.Sequential(nn.Linear(4, 16), nn.ReLU()), second=nn.Sequential(nn.Linear(16, 16), nn.ReLU())
            )
        )
        return VectorBackbone(model, VectorPreprocessing(), VectorReport())

    def transfer_model(self, backbone, make_head, input_size):
        return TransferModel(OrderedDict((name, stage) for name, stage in backbone.named_children()), make_head(16), 16)

    def preprocessing(self, saved):
        return VectorPreprocessing(**saved)

    def with_input_size(self, preprocessing, size):
        raise AssertionError("not used")

    def example_input(self, preprocessing, batch=1):
        return torch.zeros(batch, 4)

    def scan(self, location, *, valid_fraction, seed):
        root = Path(location)
        classes = sorted(p.name for p in root.iterdir() if p.is_dir())
        items = sorted((str(f), classes.index(f.parent.name)) for f in root.glob("*/*.npy"))
        valid = items[::4]
        return Dataset(
            root=str(root),
            layout="vectors",
            classes=classes,
            splits={"train": [i for i in items if i not in valid], "valid": valid},
        )

    def scan_for_evaluation(self, location, classes):
        dataset = self.scan(location, valid_fraction=0.2, seed=0)
        return dataset.split("train") + dataset.split("valid"), [], str(location)

    def expand(self, inputs):
        return sorted(
            str(f) for item in inputs for f in (Path(item).rglob("*.npy") if Path(item).is_dir() else [Path(item)])
        )

    def examples(self, items, preprocessing, *, augment, seed=None, keys=None):
        return Vectors(items, preprocessing)

    def frozen_pass(
        self, model, items, stop, preprocessing, *, round_, seed, keys, workers, device, progress, description
    ):
        prefix = model.prefix(stop).eval()
        for inputs, _ in make_loader(Vectors(items, preprocessing), 8):
            with torch.inference_mode():
                yield prefix(inputs).numpy()

    def unreadable(self, paths):
        return {}

    def thumbnail(self, path):
        return None

    def probe(self, loaded, items, batch_size=16):
        raise AssertionError("not used")


VECTOR = VectorModality()


@pytest.fixture
def vectors(tmp_path):
    rng = np.random.default_rng(0)
    for label, centre in (("low", -1.0), ("high", 1.0)):
        for i in range(12):
            (tmp_path / "vectors" / label).mkdir(parents=True, exist_ok=True)
            np.save(
                tmp_path / "vectors" / label / f"{i}.npy", (centre + 0.3 * rng.standard_normal(4)).astype(np.float32)
            )
    return tmp_path / "vectors"


@pytest.fixture
def registered():
    register_modality("vector", "tests.test_modality:VECTOR")
    yield
    MODALITIES.unregister("vector")


def test_a_registered_modality_trains_caches_loads_and_predicts_through_the_core(vectors, tmp_path, registered):
    summary = graft.train(
        vectors,
        tmp_path / "run",
        backbone="toy-mlp",
        mode="finetune",
        unfreeze=1,
        augment=False,
        epochs=3,
        lr=3e-2,
        batch_size=4,
        quiet=True,
        num_workers=0,
        cache_dir=tmp_path / "cache",
    )
    assert summary["kind"] == "classifier" and summary["cached"] and summary["valid_accuracy"] == 1.0
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["modality"] == "vector" and config["preprocessing"] == {"scale": 1.0}
    assert list(
        (tmp_path / "cache").rglob("chunk-*.npy")
    )  # the frozen first stage ran once, through the activation cache
    trained = graft.load(tmp_path / "run")
    predictions = trained.predict([vectors / "high"])
    assert {p["label"] for p in predictions} == {"high"} and set(predictions[0]) == {"vector", "label", "prob", "probs"}
    assert graft.evaluate(tmp_path / "run")["accuracy"] == 1.0
    assert trained.example_input().shape == (1, 4)


def test_a_run_of_an_unregistered_modality_is_a_clear_error(vectors, tmp_path, registered):
    graft.train(
        vectors, tmp_path / "run", backbone="toy-mlp", epochs=1, batch_size=4, quiet=True, num_workers=0, cache=False
    )
    MODALITIES.unregister("vector")
    try:
        with pytest.raises(graft.RunFolderError, match="the run was trained with unknown modality .vector."):
            graft.load(tmp_path / "run")
    finally:
        register_modality("vector", "tests.test_modality:VECTOR")
