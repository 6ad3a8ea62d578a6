"""Sound as a modality (:class:`graft.core.modality.Modality`): folders of clips, the pretrained speech
embedding (frozen, ONNX) or a log-mel CNN from scratch, and the frozen pass."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from graft.audio.backbones import (
    LOG_MEL_CNN,
    ONNX_ONLY,
    SPEECH_EMBEDDING,
    AudioPreprocessing,
    SpeechBackbone,
    is_audio_backbone,
    load_speech_backbone,
)
from graft.audio.data import collect_sound_paths, is_audio_data, scan_for_evaluation, scan_sounds
from graft.core.modality import FLOAT_ONLY, ModalityDefaults
from graft.core.model import TransferModel
from graft.errors import ConfigError


class AudioModality(ModalityDefaults):
    name = "audio"
    augmentation_recipe = None  # clips are augmented when made (graft wakeword), not per epoch
    frozen_libraries = ("onnxruntime", "soundfile", "numpy")  # the embedding is ONNX; soundfile decodes
    default_backbone = SPEECH_EMBEDDING
    refuses = {
        "augment": "sound clips are augmented when they are made (graft wakeword mixes noise, reverberation, gain)",
        "views": "sound clips have no augmented views",
        "image_size": "is for images; a clip is a 2 s window at 16 kHz",
    }

    def refuse(self, config: Any) -> None:
        backbone = config.backbone or self.default_backbone
        if backbone in ONNX_ONLY and not config.pretrained:
            raise ConfigError(
                f"--from-scratch does not apply to the {backbone} backbone: it is a pretrained ONNX graph",
                hint=f"--backbone {LOG_MEL_CNN} learns from log-mel features from scratch",
            )
        if backbone in ONNX_ONLY and config.mode not in ("extract", None):
            raise ConfigError(
                f"--mode {config.mode} does not apply to the {backbone} backbone: it is a frozen ONNX graph, which "
                "graft runs but cannot train",
                hint=f"--mode extract (a new head on its features), or --backbone {LOG_MEL_CNN} to train from scratch",
            )

    def defaults(self, mode: str) -> dict[str, Any]:
        """The head on 16 x 96 embeddings learns fast (openWakeWord trains its head in a few epochs)."""
        return {"lr": 1e-3, "epochs": 30}

    def claims(self, data: str | None, backbone: str | None) -> bool:
        return is_audio_backbone(backbone) or (backbone is None and is_audio_data(data))

    def load_backbone(self, name: str, *, weights: str | None = None, pretrained: bool = True) -> SpeechBackbone:
        return load_speech_backbone(name, weights=weights, pretrained=pretrained)

    def transfer_model(
        self, backbone: nn.Module, make_head: Callable[[int], nn.Module], input_size: int | None
    ) -> TransferModel:
        features = backbone.num_features
        return TransferModel(backbone.stages, make_head(features), features, pool=backbone.pool)

    def preprocessing(self, saved: dict[str, Any]) -> AudioPreprocessing:
        return AudioPreprocessing.from_dict(saved)

    def with_input_size(self, preprocessing: AudioPreprocessing, size: int) -> AudioPreprocessing:
        return preprocessing  # refused before (image_size): never reached by a user

    def example_input(self, preprocessing: AudioPreprocessing, batch: int = 1) -> torch.Tensor:
        return torch.zeros(batch, preprocessing.samples)

    def scan(self, location: str, *, valid_fraction: float, seed: int, columns=(None, None)):
        return scan_sounds(location, valid_fraction=valid_fraction, seed=seed)

    def scan_for_evaluation(self, location: str, classes: Sequence[str]):
        return scan_for_evaluation(location, classes)

    def expand(self, inputs: Sequence[str]) -> list[str]:
        return collect_sound_paths(inputs)

    def unreadable(self, paths: Sequence[str], remember: bool = False) -> dict[str, str]:
        from graft.audio.signal import inspect_files

        return {verdict.path: verdict.reason for verdict in inspect_files(paths) if not verdict.usable}

    def examples(self, items, preprocessing: AudioPreprocessing, *, augment: bool, seed=None, keys=None) -> Clips:
        if augment:
            raise ValueError("audio has no per-epoch augmentation")  # refused earlier (refuses)
        return Clips(items, preprocessing)

    def frozen_pass(
        self, model, items, stop: int, preprocessing, *, round_, seed, keys, workers, device, progress, description
    ):
        from graft.audio.frozen_pass import frozen_pass

        return frozen_pass(model, items, stop, preprocessing, progress=progress, description=description)

    def onnx_graph(self, model, example, names, export):
        """The run's ONNX stages (the package's graphs, converted to the exporter's opset, with graft's glue)
        chained with the torch stages after them, which torch's exporter writes."""
        import onnx

        from graft.audio.backbones import OnnxStage
        from graft.audio.onnx_glue import chain

        front, inputs, features = [], [], example
        for stage in model.model.stages.values():
            if not isinstance(stage, OnnxStage):
                break
            front.append(stage)
            inputs.append(features)
            with torch.no_grad():
                features = stage(features)
        tail = onnx.load_from_string(export(model.from_stage(len(front)), features, names))
        opset = next(entry.version for entry in tail.opset_import if entry.domain in ("", "ai.onnx"))
        pieces = [stage.onnx_model(given, opset) for stage, given in zip(front, inputs)]
        prefixes = [f"{'' if stage.int8 else FLOAT_ONLY}s{index}/" for index, stage in enumerate(front)]
        return chain([*pieces, tail], [*prefixes, "head/"], input_name="input").SerializeToString()

    def probe(self, loaded, items, batch_size: int = 16):
        raise ConfigError("--mode auto does not measure speech backbones yet", hint="use --mode extract")


AUDIO = AudioModality()


class Clips(torch.utils.data.Dataset):
    """``(samples, label)`` per sound file: the preprocessing's fixed window of mono 16 kHz samples."""

    def __init__(self, items, preprocessing: AudioPreprocessing):
        self.items, self.preprocessing = list(items), preprocessing

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        path, label = self.items[index]
        return torch.from_numpy(self.preprocessing.load(path)), label
