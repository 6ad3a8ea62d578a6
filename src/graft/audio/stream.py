"""Streaming wake-word detection over a long recording: ``graft listen RUN FILE.wav``.

The log-mel frames of the whole recording are computed once (in chunks; a frame depends only on its
own 40 ms, so they equal the frames of any 2 s window cut from it), one speech embedding every 80 ms,
and the run's head scores every 2 s window of 16 embeddings: a score every 80 ms. A detection is a
moment the score, averaged over ``smooth`` steps, reaches the threshold; after one, the detector is
deaf for ``refractory`` seconds (one utterance, one detection).

Five steps (0.4 s): a phrase holds the score up while its end crosses the window, a false accept is mostly a
brief spike. On three "hey graft" runs counted on 2.3-3 hours of negatives, recall at <= 1 false accept an hour
went from 72.0 / 71.0 / 69.0% with three steps to 78.0 / 74.5 / 76.5% (BENCHMARKS.md section 9).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from graft.audio.backbones import (
    EMBEDDING_FRAMES,
    EMBEDDING_SIZE,
    EMBEDDING_STRIDE,
    EMBEDDINGS_PER_WINDOW,
    SPEECH_EMBEDDING,
    embedding_starts,
)
from graft.audio.signal import SAMPLE_RATE
from graft.errors import ConfigError

HOP = 160  # samples between log-mel frames (10 ms)
FRAME = 640  # samples one log-mel frame reads
CHUNK_FRAMES = 6000  # one minute of frames per log-mel call
EMBEDDING_BATCH = 256
SMOOTH_STEPS = 5
SMOOTH_STEPS_BEFORE = 3  # what runs whose wakeword.json does not say were given their threshold with


@dataclass
class Detector:
    """A trained wake-word run's frozen stages and head, scoring a stream."""

    model: Any  # TransferModel: stages melspectrogram, embedding; pooled by flattening
    wake_index: int
    threshold: float
    smooth: int = SMOOTH_STEPS
    refractory: float = 1.5

    @classmethod
    def from_run(cls, trained, wake_label: str | None = None, threshold: float | None = None) -> Detector:
        """The detector of a run trained on the speech embedding; its wake class, threshold and smoothing come
        from ``wakeword.json`` when ``graft wakeword`` wrote the run."""
        from pathlib import Path

        from graft.fileio import read_json

        if trained.config["backbone"]["name"] != SPEECH_EMBEDDING or trained.modality.name != "audio":
            raise ConfigError(
                f"'{trained.path}' is not a run on the speech embedding; graft listen needs one",
                hint='train one with graft wakeword "your phrase" --out RUN',
            )
        settings_file = Path(trained.path) / "wakeword.json"
        settings = read_json(settings_file) if settings_file.is_file() else {}
        label = wake_label or settings.get("wake_label", "wake")
        if label not in trained.classes:
            raise ConfigError(f"the run has no class '{label}'", hint=f"its classes: {', '.join(trained.classes)}")
        chosen = settings.get("threshold", 0.5) if threshold is None else threshold
        if not 0 < chosen < 1:
            raise ConfigError(f"--threshold must be between 0 and 1; got {chosen}")
        smooth = settings.get("smooth", SMOOTH_STEPS_BEFORE if settings else SMOOTH_STEPS)
        return cls(trained.model.eval(), trained.classes.index(label), float(chosen), smooth=int(smooth))

    def embeddings(self, samples: np.ndarray) -> np.ndarray:
        """One speech embedding every 80 ms of mono 16 kHz ``samples``: ``(count, 96)``."""
        mel_stage, embedding_stage = self.model.stages["melspectrogram"], self.model.stages["embedding"]
        frames = []
        step = CHUNK_FRAMES * HOP
        for start in range(0, max(1, len(samples) - FRAME + HOP), step):
            piece = samples[start : start + step + FRAME - HOP]
            if len(piece) < FRAME:
                break
            frames.append(mel_stage(torch.from_numpy(np.ascontiguousarray(piece[None], dtype=np.float32)))[0].numpy())
        starts = embedding_starts(sum(len(chunk) for chunk in frames))
        if len(starts) == 0:
            return np.zeros((0, EMBEDDING_SIZE), dtype=np.float32)
        mel = np.concatenate(frames)
        batches = np.array_split(starts, -(-len(starts) // EMBEDDING_BATCH))
        return np.concatenate([embedding_stage.embed(mel, batch) for batch in batches])

    def scores(self, samples: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Times (s, at each window's end) and wake scores, one every 80 ms, for mono 16 kHz ``samples``."""
        features = window_features(self.embeddings(samples))
        if len(features) == 0:
            return np.zeros(0), np.zeros(0)
        with torch.inference_mode():
            scores = torch.softmax(self.model.head(torch.from_numpy(features)), dim=1)[:, self.wake_index].numpy()
        # window k reads frames [8k, 8k + 196): it ends at sample (8k + 195) x 160 + 640
        last_frame = np.arange(len(scores)) * EMBEDDING_STRIDE + (EMBEDDINGS_PER_WINDOW - 1) * EMBEDDING_STRIDE
        ends = (last_frame + EMBEDDING_FRAMES - 1) * HOP + FRAME
        return ends / SAMPLE_RATE, scores

    def detections(self, times: np.ndarray, scores: np.ndarray, threshold: float | None = None) -> list[dict]:
        """The moments the smoothed score reaches ``threshold`` (the detector's own by default), at most one
        per ``refractory`` seconds: ``{"time", "score"}``."""
        threshold = self.threshold if threshold is None else threshold
        smoothed = smooth(scores, self.smooth)
        found, deaf_until = [], -np.inf
        for index in np.flatnonzero(smoothed >= threshold):
            if times[index] >= deaf_until:
                found.append({"time": round(float(times[index]), 2), "score": round(float(smoothed[index]), 4)})
                deaf_until = times[index] + self.refractory
        return found


def window_features(embeddings: np.ndarray, every: int = 1) -> np.ndarray:
    """The flattened 16 x 96 features of every ``every``-th window of 16 consecutive embeddings (what the
    head reads, as :class:`graft.audio.backbones.SpeechNetwork` pools a clip)."""
    if len(embeddings) < EMBEDDINGS_PER_WINDOW:
        return np.zeros((0, EMBEDDINGS_PER_WINDOW * EMBEDDING_SIZE), dtype=np.float32)
    windows = np.lib.stride_tricks.sliding_window_view(embeddings, EMBEDDINGS_PER_WINDOW, axis=0)[::every]
    return np.ascontiguousarray(windows.transpose(0, 2, 1)).reshape(len(windows), -1).astype(np.float32)


def smooth(scores: np.ndarray, steps: int) -> np.ndarray:
    """The mean of each score and the ``steps - 1`` before it."""
    if steps <= 1 or len(scores) == 0:
        return scores
    total = np.cumsum(np.concatenate([np.zeros(steps), scores]))
    return (total[steps:] - total[:-steps]) / steps


def listen(run, path: str, threshold: float | None = None) -> dict[str, Any]:
    """Detections in the sound file ``path`` by the wake-word ``run``, with how fast it went."""
    import time

    from graft.api import load
    from graft.audio.signal import load_16k

    detector = Detector.from_run(load(run), threshold=threshold)
    samples = load_16k(path)
    began = time.perf_counter()
    times, scores = detector.scores(samples)
    found = detector.detections(times, scores)
    seconds = time.perf_counter() - began
    duration = len(samples) / SAMPLE_RATE
    return {
        "file": str(path),
        "seconds": round(duration, 2),
        "threshold": detector.threshold,
        "detections": found,
        "realtime_factor": round(duration / seconds, 1) if seconds > 0 else None,
    }


def require_microphone() -> None:
    """Microphone input needs a capture device and a library to read it; refuse plainly where there is none."""
    import importlib.util
    from pathlib import Path

    devices = Path("/proc/asound/pcm")
    capture = devices.is_file() and "capture" in devices.read_text(errors="replace")
    if importlib.util.find_spec("sounddevice") is None or not capture:
        raise ConfigError(
            "no microphone here: " + ("no capture device" if not capture else "the sounddevice package is missing"),
            hint="record to a file and run graft listen RUN FILE.wav",
        )
    raise ConfigError("--mic is not available in this version of graft", hint="graft listen RUN FILE.wav")
