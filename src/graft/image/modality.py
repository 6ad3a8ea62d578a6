"""Images as a modality (:class:`graft.core.modality.Modality`): timm backbones with offline weights,
folders of class folders, seeded augmentation, and the frozen pass in worker processes."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from graft.core.config import DEFAULT_BACKBONE
from graft.core.dataset import Dataset
from graft.core.modality import ModalityDefaults
from graft.image.backbones import Backbone, create_backbone
from graft.image.data import collect_image_paths, scan_folder, scan_for_evaluation
from graft.image.decoded import ImageDataset
from graft.image.frozen_pass import frozen_pass
from graft.image.model import wrap_backbone
from graft.image.preprocessing import AUGMENTATION_RECIPE, Preprocessing


class ImageModality(ModalityDefaults):
    name = "image"
    augmentation_recipe = AUGMENTATION_RECIPE
    frozen_libraries = ("torch", "timm", "pillow")  # the stages are timm's; Pillow decodes and resizes
    default_backbone = DEFAULT_BACKBONE

    def claims(self, data: str | None, backbone: str) -> bool:
        return True  # the first modality: whatever no more specific one claims

    def load_backbone(self, name: str, *, weights: str | None = None, pretrained: bool = True) -> Backbone:
        return create_backbone(name, weights=weights, pretrained=pretrained)

    def transfer_model(
        self, backbone: nn.Module, make_head: Callable[[int], nn.Module], input_size: int | None
    ) -> nn.Module:
        return wrap_backbone(backbone, make_head, input_size)

    def preprocessing(self, saved: dict[str, Any]) -> Preprocessing:
        return Preprocessing.from_dict(saved)

    def with_input_size(self, preprocessing: Preprocessing, size: int) -> Preprocessing:
        return dataclasses.replace(preprocessing, input_size=size)

    def example_input(self, preprocessing: Preprocessing, batch: int = 1) -> torch.Tensor:
        return torch.zeros(batch, 3, preprocessing.input_size, preprocessing.input_size)

    def scan(self, location: str, *, valid_fraction: float, seed: int) -> Dataset:
        return scan_folder(unpacked(location), valid_fraction=valid_fraction, seed=seed)

    def scan_for_evaluation(self, location: str, classes: Sequence[str]):
        return scan_for_evaluation(unpacked(location), classes)

    def expand(self, inputs: Sequence[str]) -> list[str]:
        return collect_image_paths(inputs)

    def unreadable(self, paths: Sequence[str], remember: bool = False) -> dict[str, str]:
        from graft.image.checking import inspect_files
        from graft.image.data import IMAGE_EXTENSIONS

        verdicts = inspect_files(list(paths), IMAGE_EXTENSIONS, remember=remember)
        return {verdict.path: verdict.reason for verdict in verdicts if not verdict.usable}

    def examples(
        self,
        items,
        preprocessing: Preprocessing,
        *,
        augment: bool,
        seed: int | None = None,
        keys: Sequence[int] | None = None,
    ) -> torch.utils.data.Dataset:
        if augment:
            return ImageDataset(items, preprocessing.train_transform(), seed=seed, image_keys=keys)
        return ImageDataset(items, preprocessing.eval_transform())

    def frozen_pass(
        self,
        model,
        items,
        stop: int,
        preprocessing: Preprocessing,
        *,
        round_,
        seed,
        keys,
        workers,
        device,
        progress,
        description: str,
    ) -> Iterator[np.ndarray]:
        return frozen_pass(
            model,
            items,
            stop,
            preprocessing,
            round_=round_,
            seed=seed,
            keys=keys,
            workers=workers,
            device=device,
            progress=progress,
            description=description,
        )

    def inference_form(self, model: nn.Module, example: torch.Tensor) -> nn.Module:
        """BatchNorm folded into the convolutions (a quarter of Lite0's forward pass)."""
        from graft.image.backbones.folding import fold_batchnorm

        return fold_batchnorm(model, example)[0]

    def export_form(self, model: nn.Module, example: torch.Tensor) -> nn.Module:
        """The inference form with the static padding as explicit pads: the graph ONNX Runtime runs fastest
        and int8 quantisation handles well (each activation fuses into its convolution)."""
        from graft.image.backbones.static_padding import with_explicit_padding

        return with_explicit_padding(self.inference_form(model, example))

    def pass_notes(self) -> dict[str, Any] | None:
        from graft.image import frozen_pass as image_pass

        taken = dict(image_pass.notes)
        image_pass.notes.clear()
        return taken or None

    def thumbnail(self, path: str) -> str | None:
        import base64
        import io

        from graft.image.data import load_image

        try:
            image = load_image(path)
        except Exception:  # the report shows the file name instead
            return None
        image.thumbnail((128, 128))
        buffer = io.BytesIO()
        image.convert("RGB").save(buffer, format="JPEG", quality=80)
        return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")

    def probe(self, loaded: Backbone, items, batch_size: int = 16):
        from graft.image.probing import probe

        return probe(loaded, items, batch_size=batch_size)


def unpacked(location: str) -> str:
    """``location`` itself, or for arrays (``.npz``, IDX files) the image folders unpacked from them."""
    from graft.image.arrays import as_image_folder, is_array_data

    return str(as_image_folder(location)) if is_array_data(location) else location


IMAGE = ImageModality()
