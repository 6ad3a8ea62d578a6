"""Sound as a modality: folders of clips train, predict and evaluate through the same pipeline as images,
on the pretrained speech embedding (frozen ONNX stages, cached) or a log-mel CNN from scratch; graft
check names every unusable file and why."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from dataclasses import replace as dataclass_replace
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
    # one ONNX file from samples to probabilities: the package's graphs, graft's windowing and the head
    result = graft.export(tmp_path / "run", tmp_path / "model.onnx")
    assert result["parity"]["passed"] and result["parity"]["max_abs_diff"] < 1e-4
    assert_onnx_file_answers_like_the_run(tmp_path / "model.onnx", trained, [up, down])


def assert_onnx_file_answers_like_the_run(file: Path, trained, clips: list[Path]) -> None:
    """The exported file, given the samples its metadata describes, gives the run's probabilities."""
    import onnxruntime

    from graft.audio.backbones import AudioPreprocessing

    session = onnxruntime.InferenceSession(str(file), providers=["CPUExecutionProvider"])
    metadata = session.get_modelmeta().custom_metadata_map
    assert metadata["modality"] == "audio" and json.loads(metadata["labels"])["probabilities"] == trained.classes
    preprocessing = AudioPreprocessing.from_dict(json.loads(metadata["preprocessing"]))
    samples = np.stack([preprocessing.load(str(clip)) for clip in clips]).astype(np.float32)
    (probabilities,) = session.run(None, {"input": samples})
    expected = [[answer["probs"][label] for label in trained.classes] for answer in trained.predict(clips)]
    assert np.allclose(probabilities, expected, atol=1e-4)


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
    # exported: the log-mel graph, then the convolutions torch's exporter writes; in int8 the log-mel front
    # stays float (quantising a spectrogram's log loses quiet frames) while the learnt layers are quantised
    result = graft.export(tmp_path / "cnn", tmp_path / "cnn.onnx", int8=True, max_drop=100)
    assert result["parity"]["passed"] and result["int8"]["int8"]["bytes"] < result["int8"]["fp32"]["bytes"]
    import onnx

    nodes = onnx.load(str(tmp_path / "cnn.onnx")).graph.node
    dequantised = {output for node in nodes if node.op_type == "DequantizeLinear" for output in node.output}
    reads_int8 = {
        node.name.split("/")[0]
        for node in nodes
        if node.op_type in ("Conv", "MatMul", "Gemm") and dequantised & {*node.input}
    }
    assert reads_int8 == {"head"}
    clip = write_clip(tmp_path / "new" / "up.wav", tone(0.8, True, 999))
    graft.export(tmp_path / "cnn", tmp_path / "cnn32.onnx")
    assert_onnx_file_answers_like_the_run(tmp_path / "cnn32.onnx", graft.load(tmp_path / "cnn"), [clip])


speaks = pytest.mark.skipif(
    __import__("shutil").which("espeak-ng") is None, reason="the wake-word tests speak through espeak-ng"
)


def test_streaming_scores_equal_the_scores_of_the_same_windows_cut_as_clips(sound_folder, tmp_path):
    from graft.audio.stream import Detector

    graft.train(sound_folder, tmp_path / "run", epochs=3, quiet=True, seed=0)
    trained = graft.load(tmp_path / "run")
    detector = Detector.from_run(trained, wake_label="up", threshold=0.5)
    stream = np.concatenate([tone(0.8, True, 5), np.zeros(RATE), tone(0.8, False, 6), np.zeros(RATE // 2)])
    times, scores = detector.scores(stream.astype(np.float32))
    assert len(scores) and np.allclose(np.diff(times), 0.08)
    # score k reads the 2 s window starting at k x 80 ms (its last 10 ms frame hop unused)
    last = (len(stream) - 2 * RATE) // 1280
    for index in (0, last // 2, last):
        clip = write_clip(tmp_path / f"window{index}.wav", stream[index * 1280 : index * 1280 + 2 * RATE])
        (answer,) = trained.predict([str(clip)])
        assert answer["probs"]["up"] == pytest.approx(float(scores[index]), abs=2e-3)


@speaks
def test_a_wake_word_from_a_phrase_alone_end_to_end_and_listen_finds_it(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from graft.audio.wakeword import WakewordSettings, train_wakeword
    from graft.cli import app

    monkeypatch.setenv("GRAFT_CACHE_DIR", str(tmp_path / "cache"))
    settings = WakewordSettings(
        "hey graft",
        positives=40,
        negatives=60,
        eval_minutes=1.0,
        stream_minutes=1.0,
        test_positives=10,
        epochs=5,
        hold_out="espeak-ng:en-gb-scotland,flite,hibari",
    )
    result = train_wakeword(settings, tmp_path / "run", quiet=True)
    assert result["clips"] == {"wake": 40, "other": 60} and result["refit"]["stream_windows"] > 300
    assert result["voices"]["test_positives_from_held_out_voices"]
    assert 0 < result["threshold"] < 1 and result["streams"]["positives"] == 10
    assert result["recall_by_voice"] and set(result["recall_by_voice"]) <= {
        "espeak-ng:en-gb-scotland",
        "flite:slt",
        "flite:kal",
        "flite:kal16",
        "flite:awb",
        "flite:rms",
        "hibari:heart",
    }
    assert result["streams"]["negative_hours"] == pytest.approx(1 / 60, rel=0.01)
    # the threshold is chosen on a validation stream as long as the test's
    assert result["streams"]["validation_hours"] == pytest.approx(1 / 60, rel=0.01)
    saved = json.loads((tmp_path / "run" / "wakeword.json").read_text())
    assert saved["threshold"] == result["threshold"] and saved["curve"]
    from graft.audio.stream import SMOOTH_STEPS, SMOOTH_STEPS_BEFORE, Detector

    # the run keeps the smoothing its threshold was chosen with; a run from before it was recorded, the old one
    assert saved["smooth"] == SMOOTH_STEPS == Detector.from_run(graft.load(tmp_path / "run")).smooth
    del saved["smooth"]
    (tmp_path / "run" / "wakeword.json").write_text(json.dumps(saved))
    assert Detector.from_run(graft.load(tmp_path / "run")).smooth == SMOOTH_STEPS_BEFORE
    saved["smooth"] = SMOOTH_STEPS
    (tmp_path / "run" / "wakeword.json").write_text(json.dumps(saved))
    assert (tmp_path / "run" / "wakeword_curve.png").stat().st_size > 1000
    # a second phrase reuses the cached negatives that do not depend on it
    before = set((tmp_path / "cache" / "wakeword" / "clips").iterdir())
    train_wakeword(
        WakewordSettings(**{**settings.__dict__, "phrase": "hello toaster"}), tmp_path / "second", quiet=True
    )
    made = set((tmp_path / "cache" / "wakeword" / "clips").iterdir()) - before
    assert len(made) == 40 + 15  # the phrase's clips and its confusables; sentences and noise reused
    # listen: the phrase said twice in a recording, found at threshold 0.01 at least near where it was said
    from graft.audio.voices import Voice

    voice = Voice("espeak-ng", "en-us+m3")
    speech = voice.speak("hey graft")
    recording = np.concatenate([np.zeros(RATE), speech, np.zeros(2 * RATE), speech, np.zeros(RATE)])
    path = write_clip(tmp_path / "recording.wav", recording)
    run = CliRunner().invoke(app, ["listen", str(tmp_path / "run"), str(path), "--json"])
    answer = json.loads(run.stdout)
    assert run.exit_code == 0 and answer["seconds"] == pytest.approx(len(recording) / RATE, abs=0.01)
    assert answer["realtime_factor"] > 1 and isinstance(answer["detections"], list)
    refused = CliRunner().invoke(app, ["listen", str(tmp_path / "run"), "--mic"])
    assert refused.exit_code != 0 and "microphone" in refused.output


def test_detections_are_smoothed_and_one_per_refractory_period():
    from graft.audio.stream import Detector

    detector = Detector(model=None, wake_index=1, threshold=0.5, smooth=3, refractory=1.5)
    times = np.arange(60) * 0.08
    scores = np.zeros(60)
    scores[10] = 0.99  # one spike: its 3-step mean (0.33) stays under the threshold
    scores[20:26] = 0.9  # a phrase: fires once, although the score stays high for six steps
    scores[30:34] = 0.9  # 0.8 s later: inside the refractory period, ignored
    scores[50:54] = 0.9  # 2.4 s after the first detection: fires again
    found = detector.detections(times, scores)
    assert [d["time"] for d in found] == [pytest.approx(times[21]), pytest.approx(times[51])]  # 2 of 3 steps high
    assert detector.detections(times, scores, threshold=0.95) == []


def test_a_users_recordings_join_the_positives_weighted_and_each_copy_differs(tmp_path, monkeypatch):
    from graft.audio.voices import Voice
    from graft.audio.wakeword import WakewordSettings, make_clips, training_recipes
    from graft.errors import DataError

    monkeypatch.setenv("GRAFT_CACHE_DIR", str(tmp_path / "cache"))
    for i in range(3):
        write_clip(tmp_path / "mine" / f"take{i}.wav", tone(0.7, True, 40 + i))
    write_clip(tmp_path / "mine" / "silent.wav", np.zeros(RATE))
    settings = WakewordSettings("hey graft", positives=20, negatives=20, recordings=str(tmp_path / "mine"))
    recipes = training_recipes(settings, [Voice("espeak-ng", "en-us+m1")])
    recorded = [recipe for recipe in recipes["wake"] if recipe.kind == "recording"]
    assert len(recipes["wake"]) == 20 + 3 * 5 and len(recorded) == 15  # the silent take is not used
    assert {Path(recipe.voice).name for recipe in recorded} == {"take0.wav", "take1.wav", "take2.wav"}
    copies = [soundfile.read(path)[0] for path in make_clips([r for r in recorded if r.voice.endswith("take0.wav")])]
    assert len(copies) == 5 and all(len(copy) == 2 * RATE for copy in copies)
    assert not np.allclose(copies[0], copies[1])  # placed, reverberated and mixed differently
    (tmp_path / "none").mkdir()
    write_clip(tmp_path / "none" / "silent.wav", np.zeros(RATE))
    with pytest.raises(DataError, match="holds no usable sound file"):
        training_recipes(WakewordSettings("hey graft", recordings=str(tmp_path / "none")), [Voice("flite", "kal")])


def test_speaker_warp_plays_training_speech_faster_or_slower_and_spares_noise_and_recordings(tmp_path, monkeypatch):
    """--speaker-warp: each synthetic training clip of speech (the phrase and the speech it must ignore alike) is
    played 1 +- w times as fast, pitch and formants with it; noise and the user's recordings are not warped, the
    evaluation streams never are, and a clip without a warp keeps the cached file it had before warps existed."""
    from graft.audio.augment import speed_perturb
    from graft.audio.voices import Voice
    from graft.audio.wakeword import RECIPE_VERSION, Recipe, WakewordSettings, render, training_recipes

    monkeypatch.setenv("GRAFT_CACHE_DIR", str(tmp_path / "cache"))
    times = np.arange(RATE) / RATE
    warped = speed_perturb(np.sin(2 * np.pi * 200 * times).astype(np.float32), 1.1)
    assert len(warped) == pytest.approx(RATE / 1.1, abs=2)
    assert np.argmax(np.abs(np.fft.rfft(warped))) * RATE / len(warped) == pytest.approx(220, abs=2)
    write_clip(tmp_path / "mine" / "take.wav", tone(0.7, True, 40))
    voices = [Voice("espeak-ng", "en-us+m1")]
    options = dict(positives=40, negatives=40, recordings=str(tmp_path / "mine"))
    plain = training_recipes(WakewordSettings("hey graft", **options), voices)
    assert {recipe.warp for recipes in plain.values() for recipe in recipes} == {1.0}
    recipes = training_recipes(WakewordSettings("hey graft", speaker_warp=0.12, **options), voices)
    speech = [r for label in ("wake", "other") for r in recipes[label] if r.kind == "speech"]
    assert len(speech) == 40 + 32 and all(0.88 <= r.warp <= 1.12 for r in speech)
    assert len({r.warp for r in speech}) > 30
    assert all(r.warp == 1.0 for label in ("wake", "other") for r in recipes[label] if r.kind != "speech")
    # the same clips otherwise: voice, text, speed and pitch as without the warp
    assert [dataclass_replace(r, warp=1.0) for r in recipes["wake"]] == plain["wake"]
    clean, faster = (render(dataclass_replace(recipes["wake"][0], warp=w)) for w in (1.0, 1.1))
    assert len(clean) == len(faster) == 2 * RATE and not np.allclose(clean, faster)
    key = Recipe("speech", "hey graft", "espeak-ng:en-us+m1")
    assert key.path() != dataclass_replace(key, warp=1.05).path()
    assert key.path().name == "{}.wav".format(
        hashlib.sha256(
            json.dumps(
                {"v": RECIPE_VERSION, **{k: v for k, v in asdict(key).items() if k != "warp"}}, sort_keys=True
            ).encode()
        ).hexdigest()[:24]
    )
    with pytest.raises(ConfigError, match="--speaker-warp must be from 0 to 0.3"):
        WakewordSettings("hey graft", speaker_warp=0.5).validate()
