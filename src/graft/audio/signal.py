"""Sound files as the speech embedding wants them: mono float32 at 16 kHz, and why a file cannot be used.

Files are read with soundfile (WAV, FLAC, OGG); other rates are resampled (polyphase, scipy) and
stereo is averaged. What ``graft check`` reports per file: unreadable, empty, too short, silent,
clipped, and a sample rate other than 16 kHz (a warning: resampled).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from graft.fileio import sha256_file
from graft.image.checking import Verdict

SAMPLE_RATE = 16_000
AUDIO_EXTENSIONS = {".wav", ".flac", ".ogg"}
MIN_SECONDS = 0.2  # shorter than this holds no word
SILENT_RMS = 1e-4  # -80 dBFS: digital silence, or a microphone that was off
CLIPPED_FRACTION = 0.01  # more than 1% of samples at full scale: the recording was overdriven


class AudioProblem(Exception):
    """Why one sound file cannot be used (the text goes into ``skipped[].reason``)."""


def resample(samples: np.ndarray, rate: int, target: int = SAMPLE_RATE) -> np.ndarray:
    """``samples`` at ``rate`` Hz as ``target`` Hz (polyphase filtering)."""
    if rate == target:
        return samples.astype(np.float32, copy=False)
    from scipy.signal import resample_poly

    ratio = Fraction(target, rate).limit_denominator(1000)
    return resample_poly(samples, ratio.numerator, ratio.denominator).astype(np.float32)


def read_audio(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """The file's samples as mono float32 in [-1, 1] and its own sample rate; :class:`AudioProblem` if unreadable."""
    import soundfile

    try:
        samples, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    except (RuntimeError, soundfile.LibsndfileError, ValueError) as error:
        raise AudioProblem(f"not a sound file soundfile can read ({str(error).splitlines()[0][:120]})") from None
    except OSError as error:
        raise AudioProblem(f"cannot be read ({error.strerror or error})") from None
    return samples.mean(axis=1), int(rate)


def load_16k(path: str | os.PathLike) -> np.ndarray:
    """The file as mono float32 samples at 16 kHz."""
    samples, rate = read_audio(path)
    return resample(samples, rate)


@dataclass
class AudioVerdict(Verdict):
    """The outcome of inspecting one sound file, with its length."""

    seconds: float = 0.0


def inspect_audio(path: str | os.PathLike) -> AudioVerdict:
    """Whether ``path`` is a usable recording, and what is odd about it."""
    verdict = AudioVerdict(str(path))
    if os.path.splitext(str(path))[1].lower() not in AUDIO_EXTENSIONS:
        verdict.reason = f"not a sound file (extension; graft reads {', '.join(sorted(AUDIO_EXTENSIONS))})"
        return verdict
    try:
        samples, rate = read_audio(path)
    except AudioProblem as problem:
        verdict.reason = str(problem)
        return verdict
    verdict.seconds = len(samples) / rate if rate else 0.0
    if len(samples) == 0:
        verdict.reason = "empty: no samples"
    elif verdict.seconds < MIN_SECONDS:
        verdict.reason = f"too short: {verdict.seconds:.2f} s (at least {MIN_SECONDS} s)"
    elif float(np.sqrt(np.mean(samples.astype(np.float64) ** 2))) < SILENT_RMS:
        verdict.reason = "silent: no signal above -80 dBFS"
    if verdict.reason is not None:
        return verdict
    clipped = float(np.mean(np.abs(samples) >= 0.999))
    if clipped > CLIPPED_FRACTION:
        verdict.warnings.append(f"clipped: {clipped:.1%} of samples at full scale (the recording was overdriven)")
    if rate != SAMPLE_RATE:
        verdict.warnings.append(f"sample rate {rate} Hz, resampled to {SAMPLE_RATE} Hz")
    verdict.sha256 = sha256_file(path)
    return verdict


def inspect_files(paths) -> list[AudioVerdict]:
    """Inspect many files, in input order."""
    return [inspect_audio(path) for path in paths]


def fixed_window(samples: np.ndarray, length: int) -> np.ndarray:
    """``samples`` as exactly ``length`` samples: a shorter clip is padded with silence *before* it (the
    sound ends where the window ends, as in a stream when the detector fires); from a longer one, the
    ``length`` samples with the most energy (searched in 0.1 s steps)."""
    if len(samples) == length:
        return samples.astype(np.float32, copy=False)
    if len(samples) < length:
        out = np.zeros(length, dtype=np.float32)
        out[length - len(samples) :] = samples
        return out
    step = SAMPLE_RATE // 10
    energy = np.concatenate([[0.0], np.cumsum(samples.astype(np.float64) ** 2)])
    starts = np.arange(0, len(samples) - length + 1, step)
    best = int(starts[np.argmax(energy[starts + length] - energy[starts])])
    return samples[best : best + length].astype(np.float32)
