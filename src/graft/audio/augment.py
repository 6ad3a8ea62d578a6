"""Making a synthetic clip sound recorded: a level, a place in the 2 s window, a room, and noise.

Every function takes a seeded ``numpy`` generator, so a clip made twice is the same clip. Noise is
synthesised (white, pink, brown, babble of other clips) or read from distractor sound files (Debian's
``sound-icons`` and ``alsa-utils`` sounds, where installed).
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from graft.audio.signal import SAMPLE_RATE, AudioProblem, load_16k, resample

DISTRACTOR_FOLDERS = ("/usr/share/sounds/sound-icons", "/usr/share/sounds/alsa")


def coloured_noise(length: int, rng: np.random.Generator, colour: str) -> np.ndarray:
    """White, pink (1/f) or brown (1/f^2) noise, unit RMS."""
    white = rng.standard_normal(length)
    if colour != "white":
        spectrum = np.fft.rfft(white)
        frequency = np.fft.rfftfreq(length)
        frequency[0] = frequency[1]
        spectrum /= frequency ** (0.5 if colour == "pink" else 1.0)
        white = np.fft.irfft(spectrum, n=length)
    return (white / (np.sqrt(np.mean(white**2)) + 1e-12)).astype(np.float32)


@functools.lru_cache(maxsize=1)
def distractor_sounds() -> tuple[np.ndarray, ...]:
    """The short sound files in the distractor folders present here (beeps, chimes, speech test tones)."""
    found = []
    for folder in DISTRACTOR_FOLDERS:
        for path in sorted(Path(folder).glob("*.wav")) if Path(folder).is_dir() else []:
            try:
                samples = load_16k(path)
            except AudioProblem:
                continue
            if np.abs(samples).max() > 0:
                found.append((samples / np.abs(samples).max()).astype(np.float32))
    return tuple(found)


def background(length: int, rng: np.random.Generator) -> np.ndarray:
    """Noise a detector must ignore: coloured noise, with a distractor sound in it half the time; unit RMS."""
    noise = coloured_noise(length, rng, str(rng.choice(["white", "pink", "brown"])))
    sounds = distractor_sounds()
    if sounds and rng.random() < 0.5:
        sound = sounds[int(rng.integers(len(sounds)))][:length]
        start = int(rng.integers(0, length - len(sound) + 1))
        noise[start : start + len(sound)] += 3 * sound / (np.sqrt(np.mean(sound**2)) + 1e-12)
    return (noise / (np.sqrt(np.mean(noise**2)) + 1e-12)).astype(np.float32)


def room(samples: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``samples`` in a synthetic room: an impulse response of exponentially decaying noise (RT60 0.15-0.8 s)
    with the direct sound first, at the same peak level."""
    rt60 = rng.uniform(0.15, 0.8)
    length = int(rt60 * SAMPLE_RATE)
    t = np.arange(length) / SAMPLE_RATE
    response = rng.standard_normal(length) * np.exp(-6.9 * t / rt60) * rng.uniform(0.1, 0.5)
    response[0] = 1.0
    from scipy.signal import fftconvolve

    wet = fftconvolve(samples, response)[: len(samples)]
    peak = np.abs(wet).max()
    return (wet * (np.abs(samples).max() / peak) if peak > 0 else wet).astype(np.float32)


def place(speech: np.ndarray, length: int, rng: np.random.Generator, end: tuple[float, float]) -> np.ndarray:
    """``speech`` in a window of ``length`` samples, ending between ``end`` seconds before the window's end
    (a stream's detector sees a word just after it ends); cut from the front if it is too long."""
    out = np.zeros(length, dtype=np.float32)
    gap = int(rng.uniform(*end) * SAMPLE_RATE)
    stop = length - gap
    speech = speech[-stop:] if len(speech) > stop else speech
    out[stop - len(speech) : stop] = speech
    return out


def speed_perturb(samples: np.ndarray, factor: float) -> np.ndarray:
    """``samples`` played ``factor`` times as fast: shorter by that factor, pitch and formants higher by it (speech
    recognition's speed perturbation, Ko et al. 2015), so that one synthetic voice also stands for speakers with
    a shorter or longer vocal tract."""
    if factor == 1.0:
        return samples
    return resample(samples, int(round(SAMPLE_RATE * factor)))


def recorded(
    speech: np.ndarray, length: int, rng: np.random.Generator, end: tuple[float, float] = (0.05, 0.4)
) -> np.ndarray:
    """A clip of ``length`` samples: ``speech`` placed in the window, through a room half the time, at a
    level from -30 to -3 dBFS peak, over background noise at 5 to 30 dB SNR (one clip in ten clean)."""
    clip = place(np.asarray(speech, dtype=np.float32), length, rng, end)
    if rng.random() < 0.5:
        clip = room(clip, rng)
    peak = np.abs(clip).max()
    if peak > 0:
        clip = clip / peak * 10 ** (rng.uniform(-30, -3) / 20)
    if rng.random() < 0.9:
        voiced = clip[np.abs(clip) > 0.05 * np.abs(clip).max()] if peak > 0 else clip
        power = np.sqrt(np.mean(voiced**2)) if len(voiced) else 1e-3
        clip = clip + background(length, rng) * power / 10 ** (rng.uniform(5, 30) / 20)
    return np.clip(clip, -1, 1).astype(np.float32)


def noise_clip(length: int, rng: np.random.Generator) -> np.ndarray:
    """A clip of background alone, at -50 to -10 dBFS RMS."""
    return np.clip(background(length, rng) * 10 ** (rng.uniform(-50, -10) / 20), -1, 1).astype(np.float32)
