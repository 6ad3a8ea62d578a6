"""``graft wakeword "hey graft" --out RUN``: a wake-word detector from a phrase alone, offline.

1. **Clips** (2 s, 16 kHz): the phrase spoken by every training voice (:mod:`graft.audio.voices`) at
   random speed and pitch; negatives that matter (confusable phrases and parts of the phrase, everyday
   sentences, speech-like word strings; :mod:`graft.audio.phrases`) and background noise; each made to
   sound recorded (:mod:`graft.audio.augment`). Every clip is a file in graft's cache, named by its
   recipe, so a second phrase reuses every negative that does not depend on the phrase.
2. **Training**: ``graft train`` on the clips (``wake`` / ``other``), extract mode on the speech embedding
   (cached activations) with an MLP head; a user's own recordings of the phrase join the positives.
3. **Threshold**: on a validation stream of negatives as long as the test's (training voices, sentences
   training never used), the lowest threshold whose false accepts per hour stay within ``--target-fa``.
4. **Evaluation** on held-out streams: positives from voices never used in training (``--hold-out``),
   spaced by other speech and noise; an hour (``--eval-minutes``) of speech-like negatives and noise.
   Recall, false rejects and false accepts per hour, and the recall-vs-false-accepts curve.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from graft.audio.augment import noise_clip, recorded, speed_perturb
from graft.audio.phrases import confusable_phrases, sentences, words_of
from graft.audio.signal import SAMPLE_RATE, inspect_files, load_16k
from graft.audio.voices import Voice, available_voices, matches, parse_voices
from graft.errors import ConfigError, DataError

RECIPE_VERSION = 1  # bump when the way a clip is made changes: old cached clips are then not reused
WINDOW = 2 * SAMPLE_RATE
WAKE, OTHER = "wake", "other"
DEFAULT_HOLD_OUT = "hibari,flite:slt,espeak-ng:en-gb-scotland"
HIT_BEFORE, HIT_AFTER = 0.5, 1.5  # a detection this close to a positive's end (s) counts as hitting it
_hibari_lock = threading.Lock()  # one hibari synthesis at a time (its session is shared)


@dataclass(frozen=True)
class WakewordSettings:
    phrase: str
    positives: int = 1500
    negatives: int = 3000
    target_fa_per_hour: float = 0.5
    hold_out: str = DEFAULT_HOLD_OUT  # voices kept for evaluation only ("none": train on every voice)
    recordings: str | None = None  # a folder of the user's own recordings of the phrase
    recordings_weight: int = 5  # each recording is used this many times, differently augmented
    eval_minutes: float = 60.0
    # training negatives cut from a stream of this many minutes: "hey graft" at <= 1 false accept an hour,
    # 30 minutes gave 32.5% recall, 90 gave 84.5%, 180 gave 92.5% on the test hour (counted on 3 hours of
    # negatives: about 70% with 3-step smoothing, 78% with 5); 360 did no better and needs 8.5 GB (BENCHMARKS.md
    # section 9)
    stream_minutes: float = 180.0
    test_positives: int = 200
    epochs: int = 30
    seed: int = 0
    speaker_warp: float = 0.0  # training speech played 1 +- this times as fast (pitch and formants with it)

    def validate(self) -> None:
        words_of(self.phrase)
        for name, low, high in (
            ("positives", 20, 100_000),
            ("negatives", 20, 200_000),
            ("test_positives", 10, 10_000),
            ("recordings_weight", 1, 100),
            ("epochs", 1, 1_000),
        ):
            if not low <= getattr(self, name) <= high:
                raise ConfigError(
                    f"--{name.replace('_', '-')} must be from {low} to {high:,}; got {getattr(self, name)}"
                )
        if not 0 < self.target_fa_per_hour <= 100:
            raise ConfigError(f"--target-fa must be above 0 and at most 100 per hour; got {self.target_fa_per_hour}")
        for name in ("eval_minutes", "stream_minutes"):
            if not 1 <= getattr(self, name) <= 600:
                raise ConfigError(f"--{name.replace('_', '-')} must be from 1 to 600; got {getattr(self, name)}")
        if not 0 <= self.speaker_warp <= 0.3:
            raise ConfigError(f"--speaker-warp must be from 0 to 0.3; got {self.speaker_warp}")
        if self.recordings is not None and not Path(self.recordings).is_dir():
            raise ConfigError(f"--recordings '{self.recordings}' is not a folder", hint="a folder of WAV/FLAC files")


def split_voices(hold_out: str) -> tuple[list[Voice], list[Voice]]:
    """The voices here, as (training, held out)."""
    voices = available_voices()
    if not voices:
        raise ConfigError(
            "no text-to-speech voice is installed",
            hint="apt-get install espeak-ng flite, or pip install hibari-tts",
        )
    chosen = set() if hold_out.strip().lower() == "none" else parse_voices(hold_out)
    held = [voice for voice in voices if matches(voice, chosen)]
    training = [voice for voice in voices if not matches(voice, chosen)]
    if not training:
        raise ConfigError(f"--hold-out {hold_out} leaves no voice to train with", hint="--hold-out none")
    return training, held


# ---------------------------------------------------------------------------------------------- clips


def clip_folder() -> Path:
    from graft.core.cache import default_cache_dir

    return default_cache_dir() / "wakeword" / "clips"


@dataclass(frozen=True)
class Recipe:
    """How one clip is made; its hash names the clip's file."""

    kind: str  # "speech", "noise" or "recording"
    text: str = ""
    voice: str = ""  # Voice.key, or a recording's path
    speed: float = 1.0
    pitch: float = 1.0
    seed: int = 0
    end: tuple[float, float] = (0.05, 0.4)
    before: str = ""  # other speech said before the clip's speech, in the same voice
    warp: float = 1.0  # the speech played this many times as fast (augment.speed_perturb)

    def path(self) -> Path:
        fields = asdict(self)
        if self.warp == 1.0:  # clips made before warps existed keep their names
            del fields["warp"]
        key = json.dumps({"v": RECIPE_VERSION, **fields}, sort_keys=True)
        return clip_folder() / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.wav"


def speech_recipes(texts: list[str], voices: list[Voice], seed: int, end=(0.05, 0.4)) -> list[Recipe]:
    rng = np.random.default_rng(seed)
    return [
        Recipe(
            "speech",
            text,
            voices[int(rng.integers(len(voices)))].key,
            round(float(rng.uniform(0.8, 1.25)), 2),
            round(float(rng.uniform(0.8, 1.2)), 2),
            int(rng.integers(2**31)),
            end,
        )
        for text in texts
    ]


def speak(recipe: Recipe) -> np.ndarray:
    engine, _, name = recipe.voice.partition(":")
    with _hibari_lock if engine == "hibari" else contextlib.nullcontext():
        return Voice(engine, name).speak(recipe.text, recipe.speed, recipe.pitch, seed=recipe.seed)


def render(recipe: Recipe, length: int = WINDOW) -> np.ndarray:
    rng = np.random.default_rng(recipe.seed)
    if recipe.kind == "noise":
        return noise_clip(length, rng)
    source = trim(load_16k(recipe.voice) if recipe.kind == "recording" else speak(recipe))
    if recipe.before:  # the end of other speech by the same voice, then a pause, as in a stream
        context = trim(speak(Recipe("speech", recipe.before, recipe.voice, recipe.speed, recipe.pitch, recipe.seed)))
        context = context[-int(rng.uniform(0.3, 1.2) * SAMPLE_RATE) :]
        pause = np.zeros(int(rng.uniform(0.1, 0.6) * SAMPLE_RATE), dtype=np.float32)
        source = np.concatenate([context, pause, source])
    return recorded(speed_perturb(source, recipe.warp), length, rng, recipe.end)


def trim(samples: np.ndarray, floor: float = 0.01) -> np.ndarray:
    """``samples`` without the silence before and after the sound."""
    loud = np.flatnonzero(np.abs(samples) > floor * max(np.abs(samples).max(), 1e-6))
    return samples[loud[0] : loud[-1] + 1] if len(loud) else samples


def in_parallel(function: Callable[[Any], Any], items: list, progress: Any, description: str) -> list:
    """``function`` of each item, in order, on 4 threads (speech engines are subprocesses or release the GIL),
    with a progress bar."""
    from graft.console import progress_task

    with progress_task(progress, description, len(items)) as advance, ThreadPoolExecutor(4) as pool:
        out = []
        for result in pool.map(function, items):
            out.append(result)
            advance(1)
    return out


def make_clips(recipes: list[Recipe], progress: Any = None, description: str = "clips") -> list[str]:
    """The clip file of each recipe, made (in parallel) where not already in the cache."""
    import soundfile

    from graft.fileio import atomic_write_bytes

    def make(recipe: Recipe) -> str:
        path = recipe.path()
        if not path.is_file():
            buffer = io.BytesIO()
            soundfile.write(buffer, render(recipe), SAMPLE_RATE, subtype="PCM_16", format="WAV")
            atomic_write_bytes(path, buffer.getvalue())
        return str(path)

    return in_parallel(make, recipes, progress, description)


def training_recipes(settings: WakewordSettings, voices: list[Voice]) -> dict[str, list[Recipe]]:
    """The training clips' recipes, by class. Negatives: 25% confusable phrases, 55% sentences and
    speech-like strings, 20% noise."""
    seed = settings.seed
    positives = speech_recipes([settings.phrase] * settings.positives, voices, seed)
    # half of them after the end of other speech and a pause: in a stream, a window holds what came before
    context = sentences(settings.positives // 2, 3000 + seed, settings.phrase, held_out=False)
    positives = [
        dataclasses.replace(recipe, before=context[index // 2]) if index % 2 else recipe
        for index, recipe in enumerate(positives)
    ]
    confusable = int(settings.negatives * 0.25)
    noise = int(settings.negatives * 0.2)
    spoken = settings.negatives - confusable - noise
    rng = np.random.default_rng(seed + 3)
    others = speech_recipes(confusable_phrases(settings.phrase, confusable, seed + 1), voices, seed + 2)
    # sentences end anywhere in the window: the detector must not fire on any part of one
    others += speech_recipes(
        sentences(spoken, 1000 + seed, settings.phrase, held_out=False), voices, 2000 + seed, (0.0, 1.5)
    )
    if settings.speaker_warp:  # the same spread of warps for the phrase and for the speech it must ignore
        warps = np.random.default_rng(seed + 4)
        low, high = 1 - settings.speaker_warp, 1 + settings.speaker_warp

        def warped(recipes: list[Recipe]) -> list[Recipe]:
            return [dataclasses.replace(r, warp=round(float(warps.uniform(low, high)), 3)) for r in recipes]

        positives, others = warped(positives), warped(others)
    others += [Recipe("noise", seed=int(rng.integers(2**31))) for _ in range(noise)]
    if settings.recordings is not None:
        recordings = [verdict.path for verdict in inspect_files(_sound_files(settings.recordings)) if verdict.usable]
        if not recordings:
            raise DataError(f"--recordings '{settings.recordings}' holds no usable sound file", hint="graft check it")
        positives += [
            Recipe("recording", voice=path, seed=int(rng.integers(2**31)))
            for path in recordings
            for _ in range(settings.recordings_weight)
        ]
    return {WAKE: positives, OTHER: others}


def _sound_files(folder: str) -> list[str]:
    from graft.audio.data import collect_sound_paths

    return collect_sound_paths([folder])


def training_folder(clips: dict[str, list[str]]) -> Path:
    """A folder of class folders linking to the cached clips (what ``graft train`` reads)."""
    key = hashlib.sha256(json.dumps({c: sorted(paths) for c, paths in clips.items()}).encode()).hexdigest()[:16]
    folder = clip_folder().parent / "sets" / key
    complete = folder.with_name(f"{key}.complete")
    if not complete.is_file():
        for label, paths in clips.items():
            (folder / label).mkdir(parents=True, exist_ok=True)
            for index, path in enumerate(paths):
                link = folder / label / f"{index:06d}.wav"
                if not link.exists():
                    link.symlink_to(path)
        complete.write_text("")
    return folder


# -------------------------------------------------------------------------------------------- streams


@dataclass
class Stream:
    """A long recording made of clips, with where each wake phrase in it ends."""

    samples: np.ndarray
    wake_ends: list[float] = field(default_factory=list)
    wake_voices: list[str] = field(default_factory=list)  # the voice that said each phrase

    @property
    def hours(self) -> float:
        return len(self.samples) / SAMPLE_RATE / 3600


def negative_stream(
    minutes: float,
    voices: list[Voice],
    phrase: str,
    seed: int,
    progress: Any = None,
    description: str = "stream",
    held_out: bool = True,
) -> Stream:
    """``minutes`` of sentences and speech-like strings spoken by ``voices``, with stretches of noise between
    them; ``held_out``: sentences training never uses."""
    rng = np.random.default_rng(seed)
    count = int(minutes * 60 / 3.0) + 1
    texts = sentences(count, seed, phrase, held_out=held_out)
    recipes = speech_recipes(texts, voices, seed + 1)
    segments = _segments(recipes, rng, progress, description)
    samples = np.concatenate(segments)[: int(minutes * 60 * SAMPLE_RATE)]
    return Stream(samples)


def positive_stream(
    settings: WakewordSettings, voices: list[Voice], seed: int, progress: Any = None, description: str = "stream"
) -> Stream:
    """The phrase ``test_positives`` times by ``voices``, each after 2-4 s of other speech or noise and a pause
    of 0.1-0.6 s."""
    rng = np.random.default_rng(seed)
    wake = speech_recipes([settings.phrase] * settings.test_positives, voices, seed + 1, end=(0.0, 0.0))
    fillers = speech_recipes(
        sentences(settings.test_positives, seed + 2, settings.phrase, held_out=True), voices, seed + 3
    )
    pieces, wake_ends, position = [], [], 0
    for filler, positive in zip(
        _segments(fillers, rng, progress, description + " (between)"),
        _segments(wake, rng, progress, description + " (phrases)", gap=(0.1, 0.6), before=True),
    ):
        filler = filler[: int(rng.uniform(2, 4) * SAMPLE_RATE)]
        pieces += [filler, positive]
        position += len(filler) + len(positive)
        wake_ends.append(position / SAMPLE_RATE)
    pieces.append(np.zeros(SAMPLE_RATE, dtype=np.float32))
    return Stream(np.concatenate(pieces), wake_ends, [recipe.voice for recipe in wake])


def _segments(
    recipes: list[Recipe], rng, progress, description: str, gap=(0.3, 2.0), before: bool = False
) -> list[np.ndarray]:
    """Each recipe's speech made to sound recorded, with ``gap`` seconds of its noise after it (``before``:
    before it, as a pause before a wake phrase)."""

    def one(item):
        recipe, pause = item
        speech = trim(speak(recipe))
        end = (0.0, 0.0) if before else (pause, pause)
        return recorded(speech, len(speech) + int(pause * SAMPLE_RATE), np.random.default_rng(recipe.seed), end)

    pauses = rng.uniform(*gap, size=len(recipes))
    return in_parallel(one, list(zip(recipes, pauses)), progress, description)


def false_accepts(detector, times, scores, threshold: float) -> int:
    return len(detector.detections(times, scores, threshold))


def hit_each(detector, stream: Stream, times, scores, threshold: float) -> list[bool]:
    """Whether each phrase in ``stream`` was detected (a detection from 0.5 s before to 1.5 s after its end)."""
    found = [d["time"] for d in detector.detections(times, scores, threshold)]
    return [any(end - HIT_BEFORE <= t <= end + HIT_AFTER for t in found) for end in stream.wake_ends]


def hits(detector, stream: Stream, times, scores, threshold: float) -> int:
    return sum(hit_each(detector, stream, times, scores, threshold))


def recall_by_voice(detector, stream: Stream, times, scores, threshold: float) -> dict[str, float]:
    """Recall per engine and accent (``espeak-ng:en-gb-scotland``, ``flite:slt``): which voices it misses."""
    groups: dict[str, list[bool]] = {}
    for voice, hit in zip(stream.wake_voices, hit_each(detector, stream, times, scores, threshold)):
        groups.setdefault(voice.split("+")[0], []).append(hit)
    return {group: float(np.mean(found)) for group, found in sorted(groups.items())}


def choose_threshold(detector, times, scores, hours: float, target: float) -> float:
    """The lowest threshold at which the validation stream's false accepts per hour are at most ``target``."""
    candidates = np.unique(np.round(np.concatenate([np.linspace(0.05, 0.99, 95), [0.995, 0.999]]), 4))
    for threshold in candidates:
        if false_accepts(detector, times, scores, threshold) / hours <= target:
            return float(threshold)
    return float(candidates[-1])


# ------------------------------------------------------------------------------ more negatives, cheaply


def stream_negatives(detector, stream: Stream, every: int = 2) -> np.ndarray:
    """Head inputs of every ``every``-th 2 s window of a negative stream: consecutive windows share 15 of
    their 16 embeddings, so a stream gives ~12 windows a second for the price of one embedding each."""
    from graft.audio.stream import window_features

    return window_features(detector.embeddings(stream.samples), every)


def refit_head(out: Path, negatives: np.ndarray, settings: WakewordSettings) -> dict[str, Any]:
    """The run's head trained again, from where ``graft train`` left it, on the clips (read from the
    activation cache ``graft train`` filled) and ``negatives`` (stream windows); the run's weights are
    replaced. Positives are repeated to balance the classes; a seeded tenth of every source validates."""
    import torch

    from graft.api import load
    from graft.core.cache import resolve_cache_dir
    from graft.core.fit import fit
    from graft.core.inputs import frozen_key, frozen_rows
    from graft.core.objectives import Classification
    from graft.core.run_files import MANIFEST
    from graft.core.runs import RunFolder, load_plan
    from graft.fileio import read_json

    trained = load(out)
    model, stop = trained.model, len(trained.model.stages)
    manifest = read_json(out / MANIFEST)
    items = [tuple(item) for split in manifest["splits"].values() for item in split]
    rows = frozen_rows(
        trained.modality,
        model,
        items,
        [manifest["sha256"][path] for path, _ in items],
        trained.preprocessing,
        base=frozen_key(
            trained.modality, model, stop, trained.config["backbone"]["architecture"], trained.preprocessing
        ),
        root=resolve_cache_dir(None),
    ).materialize()
    labels = np.array([label for _, label in items])
    wake = trained.classes.index(WAKE)
    features = np.concatenate([rows.numpy(), negatives])
    targets = np.concatenate([labels, np.full(len(negatives), 1 - wake)])
    rng = np.random.default_rng(settings.seed)
    held = rng.random(len(targets)) < 0.1
    train_index = np.flatnonzero(~held)
    positives = train_index[targets[train_index] == wake]
    repeat = max(1, int(round((len(train_index) - len(positives)) / max(1, len(positives)))) - 1)
    train_index = np.concatenate([train_index, np.repeat(positives, repeat)])

    def loader(index, shuffle):
        data = torch.utils.data.TensorDataset(torch.from_numpy(features[index]), torch.from_numpy(targets[index]))
        return torch.utils.data.DataLoader(
            data, batch_size=256, shuffle=shuffle, generator=torch.Generator().manual_seed(settings.seed)
        )

    torch.manual_seed(settings.seed)
    state = fit(
        model,
        Classification(),
        load_plan(out),
        loader(train_index, True),
        loader(np.flatnonzero(held), False),
        epochs=settings.epochs,
        start=stop,
    )
    RunFolder(out).write_weights({name: tensor.contiguous() for name, tensor in model.state_dict().items()})
    best = state.best_record if state.history else {}
    return {
        "rows": int(len(targets)),
        "stream_windows": int(len(negatives)),
        "positives_repeated": repeat,
        "valid_accuracy": best.get("valid_accuracy"),
    }


# --------------------------------------------------------------------------------------------- the job


def train_wakeword(
    settings: WakewordSettings, out: str | os.PathLike, *, quiet: bool = False, overwrite: bool = False
) -> dict[str, Any]:
    """Generate, train, choose the threshold, evaluate; returns the ``graft wakeword --json`` summary."""
    import graft
    from graft.audio.stream import Detector
    from graft.console import progress as make_progress
    from graft.fileio import atomic_write_json

    settings.validate()
    began = time.perf_counter()
    training_voices, held_voices = split_voices(settings.hold_out)
    test_voices = held_voices or training_voices
    timings: dict[str, float] = {}
    with make_progress(quiet) as progress:
        recipes = training_recipes(settings, training_voices)
        clips = {
            label: make_clips(items, progress, f"{label} clips ({len(items)})") for label, items in recipes.items()
        }
        timings["clips"] = time.perf_counter() - began
        data = training_folder(clips)
    summary = graft.train(
        data,
        out,
        mode="extract",
        head="mlp",
        epochs=settings.epochs,
        seed=settings.seed,
        quiet=quiet,
        overwrite=overwrite,
    )
    timings["train"] = time.perf_counter() - began - timings["clips"]
    detector = Detector.from_run(graft.load(out), wake_label=WAKE, threshold=0.5)
    with make_progress(quiet) as progress:
        mark = time.perf_counter()
        extra = negative_stream(
            settings.stream_minutes,
            training_voices,
            settings.phrase,
            40_000 + settings.seed,
            progress,
            "training stream",
            held_out=False,
        )
    refit = refit_head(Path(out), stream_negatives(detector, extra), settings)
    detector = Detector.from_run(graft.load(out), wake_label=WAKE, threshold=0.5)
    timings["refit"] = time.perf_counter() - mark
    with make_progress(quiet) as progress:
        mark = time.perf_counter()
        validation = negative_stream(
            settings.eval_minutes,  # at <= 1 false accept an hour, 20 minutes held 0 or 1: too few to choose by
            training_voices,
            settings.phrase,
            50_000 + settings.seed,
            progress,
            "validation stream",
        )
        negatives = negative_stream(
            settings.eval_minutes,
            test_voices + training_voices,
            settings.phrase,
            60_000 + settings.seed,
            progress,
            "test stream",
        )
        positives = positive_stream(settings, test_voices, 70_000 + settings.seed, progress, "held-out phrases")
        timings["streams"] = time.perf_counter() - mark
    mark = time.perf_counter()
    scored = {
        name: detector.scores(stream.samples)
        for name, stream in (("validation", validation), ("negatives", negatives), ("positives", positives))
    }
    timings["scoring"] = time.perf_counter() - mark
    audio_seconds = sum(len(s.samples) for s in (validation, negatives, positives)) / SAMPLE_RATE
    threshold = choose_threshold(detector, *scored["validation"], validation.hours, settings.target_fa_per_hour)
    curve = []
    for value in sorted({*np.round(np.linspace(0.1, 0.99, 90), 3), threshold}):
        accepts = false_accepts(detector, *scored["negatives"], value) / negatives.hours
        recall = hits(detector, positives, *scored["positives"], value) / len(positives.wake_ends)
        curve.append({"threshold": float(value), "recall": recall, "fa_per_hour": accepts})
    chosen = next(point for point in curve if point["threshold"] == threshold)
    at_one = max((p["recall"] for p in curve if p["fa_per_hour"] <= 1.0), default=0.0)
    result = {
        "run": str(out),
        "phrase": settings.phrase,
        "threshold": threshold,
        "smooth": detector.smooth,
        "recall": chosen["recall"],
        "false_reject_rate": 1 - chosen["recall"],
        "fa_per_hour": chosen["fa_per_hour"],
        "best_recall_at_1_fa_per_hour": at_one,
        "recall_by_voice": recall_by_voice(detector, positives, *scored["positives"], threshold),
        "target_fa_per_hour": settings.target_fa_per_hour,
        "valid_accuracy": summary.get("valid_accuracy"),
        "refit": refit,
        "clips": {label: len(paths) for label, paths in clips.items()},
        "voices": {
            "training": len(training_voices),
            "held_out": [voice.key for voice in held_voices],
            "test_positives_from_held_out_voices": bool(held_voices),
        },
        "streams": {
            "validation_hours": validation.hours,
            "negative_hours": negatives.hours,
            "positives": len(positives.wake_ends),
            "realtime_factor": audio_seconds / timings["scoring"] if timings["scoring"] else None,
        },
        "seconds": {**timings, "total": time.perf_counter() - began},
        "settings": asdict(settings),
    }
    atomic_write_json(Path(out) / "wakeword.json", {**result, "wake_label": WAKE, "curve": curve})
    _plot_curve(curve, chosen, Path(out) / "wakeword_curve.png", settings.phrase)
    return result


def _plot_curve(curve: list[dict], chosen: dict, path: Path, phrase: str) -> None:
    from graft.core.plots import pyplot, save_figure

    figure, axes = pyplot().subplots(figsize=(5, 3.5))
    axes.plot([p["fa_per_hour"] for p in curve], [p["recall"] for p in curve], marker=".", linewidth=1)
    axes.scatter(
        [chosen["fa_per_hour"]], [chosen["recall"]], color="red", zorder=3, label=f"threshold {chosen['threshold']:.3f}"
    )
    axes.set_xscale("symlog", linthresh=0.1)
    axes.set_xlabel("false accepts per hour (held-out stream)")
    axes.set_ylabel("recall (held-out voices)")
    axes.set_title(f'"{phrase}"')
    axes.grid(alpha=0.3)
    axes.legend(loc="lower right")
    save_figure(figure, path)
