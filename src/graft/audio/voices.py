"""Offline text-to-speech voices: what ``graft wakeword`` speaks its phrase and its negatives with.

Three engines, each used only when present: ``espeak-ng`` (Debian package: English accents x voice
variants, any speed and pitch), ``flite`` (Debian package: six voices, speed and pitch) and ``hibari``
(PyPI ``hibari-tts``: one natural American voice, speed). A :class:`Voice` names one engine, voice and
accent; :meth:`Voice.speak` gives mono float32 at 16 kHz for a text at a speed and pitch.
"""

from __future__ import annotations

import functools
import importlib.util
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from graft.audio.signal import SAMPLE_RATE, read_audio, resample

ESPEAK_ACCENTS = (
    "en-us",
    "en-gb",
    "en-gb-scotland",
    "en-gb-x-rp",
    "en-gb-x-gbclan",
    "en-gb-x-gbcwmd",
    "en-029",
    "en-us-nyc",
)
ESPEAK_VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5", "klatt", "klatt4")
FLITE_VOICES = ("kal", "kal16", "awb", "rms", "slt")
SYNTHESIS_SECONDS = 20  # a voice that takes longer for one phrase is stuck


@dataclass(frozen=True, order=True)
class Voice:
    engine: str  # "espeak-ng", "flite" or "hibari"
    name: str  # espeak-ng: "<accent>+<variant>"; flite: its voice; hibari: its voice

    @property
    def key(self) -> str:
        return f"{self.engine}:{self.name}"

    def speak(self, text: str, speed: float = 1.0, pitch: float = 1.0, seed: int = 0) -> np.ndarray:
        """``text`` spoken at ``speed`` (1: the engine's normal rate) and ``pitch`` (1: the voice's own), as
        mono float32 at 16 kHz."""
        if self.engine == "hibari":
            audio = _hibari()(text, speed=float(np.clip(speed, 0.5, 2.0)), seed=seed)
            return resample(np.asarray(audio, dtype=np.float32), 24_000)
        with tempfile.TemporaryDirectory() as folder:
            out = Path(folder) / "speech.wav"
            if self.engine == "espeak-ng":
                words_per_minute = str(int(175 * speed))
                command = ["espeak-ng", "-v", self.name, "-s", words_per_minute, "-p", str(int(50 * pitch)), "-w"]
                command += [str(out), text]
            else:
                command = ["flite", "-voice", self.name, "-t", text, "-o", str(out)]
                command += [
                    "--setf",
                    f"duration_stretch={1 / speed:.3f}",
                    "--setf",
                    f"int_f0_target_mean={110 * pitch:.0f}",
                ]
            subprocess.run(command, check=True, capture_output=True, timeout=SYNTHESIS_SECONDS)
            samples, rate = read_audio(out)
        return resample(samples, rate, SAMPLE_RATE)


@functools.lru_cache(maxsize=1)
def _hibari():
    from hibari import Hibari

    return Hibari(threads=1)


def available_voices() -> list[Voice]:
    """Every voice of the engines installed here."""
    voices: list[Voice] = []
    if shutil.which("espeak-ng"):
        voices += [
            Voice("espeak-ng", f"{accent}+{variant}") for accent in ESPEAK_ACCENTS for variant in ESPEAK_VARIANTS
        ]
    if shutil.which("flite"):
        voices += [Voice("flite", name) for name in FLITE_VOICES]
    if importlib.util.find_spec("hibari") is not None:
        voices.append(Voice("hibari", "heart"))
    return voices


def parse_voices(names: str | None) -> set[str]:
    """Voice keys or engine names from ``a,b`` (``flite:slt``, ``hibari``, ``espeak-ng:en-029+f2``)."""
    return {part.strip() for part in (names or "").split(",") if part.strip()}


def matches(voice: Voice, chosen: set[str]) -> bool:
    """Whether ``voice`` is one of ``chosen``: its key, its engine, or its espeak-ng accent (``espeak-ng:en-029``)."""
    accent = f"{voice.engine}:{voice.name.split('+')[0]}"
    return voice.key in chosen or voice.engine in chosen or accent in chosen
