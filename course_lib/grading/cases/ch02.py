"""Exercise 2 (byte-pair encoding): the graded parts and their visible cases.

Parts 3 (``train``) and 4 (``encode``) call the student's ``pair_counts`` and ``merge``
by name. So that a bug in Part 1 or 2 costs that part only, their calls lend the notebook
working ``pair_counts`` and ``merge`` for the time of the call and put the student's back
after. course_lib has no such functions to lend (``BPETokenizer`` does it all inline), so
they are written here; they refuse to run outside a lending call (``ReferenceUsed``, as
for course_lib itself), so they are no shortcut for Parts 1 and 2.

``train``'s cases carry the text its word counts came from as the last argument, for the
grader's reference (``BPETokenizer.train``); the call leaves it out.

Part 5 (``encode_special``) calls the student's ``encode`` by name for the text between
special tokens: its call lends a working ``encode`` (and ``merge``) the same way.
"""

from collections import Counter
from contextlib import contextmanager

import regex

from course_lib.grading.guard import ReferenceUsed, _error
from course_lib.grading.kernel import Part, lend

GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


def word_counts(text):
    """As in the notebook: {tuple of byte ids: frequency} of GPT-2's pre-tokens."""
    return dict(Counter(tuple(w.encode("utf-8")) for w in regex.findall(GPT2_PATTERN, text)))


_lending = []  # non-empty only while a later part's call runs with the lent helpers


def _lent_pair_counts(words):
    if not _lending:
        raise _error()
    counts = {}
    for word, freq in words.items():
        for pair in zip(word, word[1:]):
            counts[pair] = counts.get(pair, 0) + freq
    return counts


def _lent_merge(word, pair, new_id):
    if not _lending:
        raise _error()
    out, i = [], 0
    while i < len(word):
        if i + 1 < len(word) and (word[i], word[i + 1]) == pair:
            out.append(new_id)
            i += 2
        else:
            out.append(word[i])
            i += 1
    return tuple(out)


def _lent_encode(text, merges):
    if not _lending:
        raise _error()
    rank = {tuple(pair): k for k, pair in enumerate(merges)}
    ids_out = []
    for piece in regex.findall(GPT2_PATTERN, text):
        ids = tuple(piece.encode("utf-8"))
        while len(ids) >= 2:
            found = [rank[p] for p in zip(ids, ids[1:]) if p in rank]
            if not found:
                break
            k = min(found)
            ids = _lent_merge(ids, tuple(merges[k]), 256 + k)
        ids_out.extend(ids)
    return ids_out


@contextmanager
def _lend(ns, **helpers):
    """``kernel.lend``, with the lent helpers switched on for the time."""
    _lending.append(True)
    try:
        with lend(ns, **helpers):
            yield
    finally:
        _lending.pop()


def _train(ns, words, num_merges, text):
    with _lend(ns, pair_counts=_lent_pair_counts, merge=_lent_merge):
        return ns["train"](words, num_merges)


def _encode(ns, text, merges):
    with _lend(ns, merge=_lent_merge):
        return ns["encode"](text, merges)


def _encode_special(ns, text, merges, special_tokens):
    with _lend(ns, encode=_lent_encode, merge=_lent_merge):
        return ns["encode_special"](text, merges, special_tokens)


LOW = "low low lower"
LOW_MERGES = [(111, 119), (108, 256)]  # o + w -> 256, l + 256 -> 257 ("low")

PARTS = {
    "pair_counts": Part("test_pair_counts", "pair_counts", {
        "the example: {(1, 2, 3): 2, (2, 3): 1}": ({(1, 2, 3): 2, (2, 3): 1},),
    }),
    "merge": Part("test_merge", "merge", {
        "overlapping occurrences, left to right": ((1, 1, 1, 2), (1, 1), 256),
        "two occurrences": ((1, 2, 1, 2), (1, 2), 300),
    }),
    "train": Part("test_train", "train", {
        "'low low lower', 2 merges: (o, w) wins the tie, then (l, 256)": (word_counts(LOW), 2, LOW),
    }, call=_train),
    "encode": Part("test_encode", "encode", {
        "'low' with the merges [(111, 119), (108, 256)]": ("low", [(111, 119), (108, 256)]),
        "'lower low' with the merges of 'low low lower'": ("lower low", [(111, 119), (108, 256)]),
    }, call=_encode),
    "encode_special": Part("test_encode_special", "encode_special", {
        "'low<|endoftext|>lower low': the special token whole, id 258": (
            "low<|endoftext|>lower low", LOW_MERGES, ["<|endoftext|>"]),
        "spaces around a special token stay with their own side": (
            "low <|endoftext|> low", LOW_MERGES, ["<|endoftext|>"]),
        "'\\n' and '\\n\\n' as special tokens: the longer wins, ids in the order given": (
            "low\n\nlower\nlow", LOW_MERGES, ["\n", "\n\n"]),
    }, call=_encode_special),
}

__all__ = ["PARTS", "word_counts", "GPT2_PATTERN", "ReferenceUsed"]
