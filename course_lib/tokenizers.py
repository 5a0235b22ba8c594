"""Tokenizers: characters, words, and byte-level BPE as in GPT-2 (chapter 2).

Chapter 1 cut text into characters or words by hand; here the cut becomes an object with
``encode`` / ``decode`` and a vocabulary, and byte-pair encoding (Sennrich et al. 2016;
byte-level as in GPT-2, Radford et al. 2019) learns the cut from data:

    >>> tok = BPETokenizer.train("low lower lowest", vocab_size=258)
    >>> tok.merges   # "lo" and "ow" tie at 3; the greater pair of byte strings wins
    [(b'o', b'w'), (b'l', b'ow')]
    >>> tok.decode(tok.encode("slow 😀")) # bytes underneath: any string encodes
    'slow 😀'

BPE training, step by step: pre-tokenize the text with GPT-2's regular expression (a
merge never crosses a pre-token boundary), start from the 256 byte values, then repeat:
merge the most frequent adjacent pair into a new token. Ties go to the lexicographically
greatest pair of byte strings, so training is deterministic. Pair counts are computed
once and then updated only for the words that contain the merged pair.

Scope: no normalization (NFC etc.) and no regex other than GPT-2's; the special tokens
are matched literally and are never split or trained on.
"""

from __future__ import annotations

import codecs
import json
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path

import regex

__all__ = ["GPT2_PATTERN", "CharTokenizer", "WordTokenizer", "BPETokenizer"]

# GPT-2's pre-tokenizer: contractions, letters, numbers, other symbols, whitespace.
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
_PRETOKENIZE = regex.compile(GPT2_PATTERN)
UNK = "<unk>"


def _texts(text_or_texts) -> list[str]:
    if isinstance(text_or_texts, str):
        return [text_or_texts]
    texts = list(text_or_texts)
    if any(not isinstance(t, str) for t in texts):
        raise TypeError("expected a str or a list of str")
    return texts


def _check_str(text) -> str:
    if not isinstance(text, str):
        raise TypeError(f"expected text as a str, got {type(text).__name__}")
    return text


def _check_ids(ids, size: int) -> list[int]:
    ids = list(ids)
    for i in ids:
        if isinstance(i, bool) or not isinstance(i, int) and not hasattr(i, "__index__"):
            raise TypeError(f"token ids must be integers, got {type(i).__name__}")
        if not 0 <= int(i) < size:
            raise ValueError(f"unknown token id {int(i)}: the vocabulary has ids 0..{size - 1}")
    return [int(i) for i in ids]


class _VocabTokenizer:
    """Shared by the character and word tokenizers: a list vocabulary with ``<unk>`` = 0."""

    kind = ""

    def __init__(self, vocab: list[str] | None = None):
        self.vocab: list[str] = list(vocab) if vocab is not None else []
        self._index = {t: i for i, t in enumerate(self.vocab)}

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def _tokens(self, text: str) -> list[str]:
        raise NotImplementedError

    def fit(self, texts, min_freq: int = 1):
        """Vocabulary: ``<unk>``, then every token seen at least ``min_freq`` times, sorted."""
        if not isinstance(min_freq, int) or min_freq < 1:
            raise ValueError(f"min_freq must be an integer >= 1, got {min_freq!r}")
        counts = Counter(t for text in _texts(texts) for t in self._tokens(text))
        if not counts:
            raise ValueError("cannot fit a tokenizer on empty text")
        self.vocab = [UNK] + sorted(t for t, c in counts.items() if c >= min_freq and t != UNK)
        self._index = {t: i for i, t in enumerate(self.vocab)}
        return self

    def encode(self, text: str) -> list[int]:
        if not self.vocab:
            raise RuntimeError("this tokenizer is not fitted yet: call .fit(texts) first")
        return [self._index.get(t, 0) for t in self._tokens(_check_str(text))]

    def save(self, path) -> None:
        Path(path).write_text(json.dumps({"type": self.kind, "vocab": self.vocab}, ensure_ascii=False, indent=1),
                              encoding="utf-8")

    @classmethod
    def load(cls, path):
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        if data.get("type") != cls.kind:
            raise ValueError(f"{path} holds a {data.get('type')!r} tokenizer, not {cls.kind!r}")
        return cls(data["vocab"])


class CharTokenizer(_VocabTokenizer):
    """One token per character; ``decode(encode(s)) == s`` for characters seen in fit."""

    kind = "char"

    def _tokens(self, text: str) -> list[str]:
        return list(text)

    def decode(self, ids) -> str:
        return "".join(self.vocab[i] for i in _check_ids(ids, len(self.vocab)))


class WordTokenizer(_VocabTokenizer):
    """Words and punctuation runs by ``nltk.wordpunct_tokenize`` (no downloaded data).

    Lossy: whitespace is dropped, so ``decode`` joins tokens with single spaces.
    """

    kind = "word"

    def _tokens(self, text: str) -> list[str]:
        from nltk.tokenize import wordpunct_tokenize

        return wordpunct_tokenize(text)

    def decode(self, ids) -> str:
        return " ".join(self.vocab[i] for i in _check_ids(ids, len(self.vocab)))


def _escape(b: bytes) -> str:
    """Readable, reversible text for a byte string: b'th\\xe4' -> 'th\\\\xe4'."""
    return codecs.escape_encode(b)[0].decode("ascii")


def _unescape(s: str) -> bytes:
    return codecs.escape_decode(s.encode("ascii"))[0]


class BPETokenizer:
    """Byte-level byte-pair encoding. Ids 0-255 are the bytes, then one id per merge in
    the order learned, then the special tokens."""

    def __init__(self, merges: list[tuple[bytes, bytes]], special_tokens: Iterable[str] = ()):
        self.vocab: dict[int, bytes] = {i: bytes([i]) for i in range(256)}
        self.merges: list[tuple[bytes, bytes]] = []
        ids = {v: k for k, v in self.vocab.items()}
        self._ranks: dict[tuple[int, int], int] = {}  # (id, id) -> id of the merged token
        for a, b in merges:
            if a not in ids or b not in ids:
                raise ValueError(f"merge {(a, b)!r} uses a token that no earlier merge made")
            new = len(self.vocab)
            self.vocab[new] = a + b
            ids.setdefault(a + b, new)
            self._ranks[ids[a], ids[b]] = new
            self.merges.append((a, b))
        self._pairs = {n: p for p, n in self._ranks.items()}  # id of a merged token -> its pair
        self.special_tokens: dict[str, int] = {}
        for s in special_tokens:
            if not isinstance(s, str) or not s:
                raise ValueError(f"special tokens must be non-empty str, got {s!r}")
            if s not in self.special_tokens:
                self.special_tokens[s] = len(self.vocab)
                self.vocab[len(self.vocab)] = s.encode("utf-8")
        self._special_ids = {i: s for s, i in self.special_tokens.items()}
        self._split = (regex.compile("(" + "|".join(regex.escape(s) for s in sorted(self.special_tokens,
                                                                                     key=len, reverse=True)) + ")")
                       if self.special_tokens else None)
        self._cache: dict[str, list[int]] = {}

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    # ------------------------------------------------------------------ training
    @classmethod
    def train(cls, text: str, vocab_size: int, special_tokens: Iterable[str] = (),
              on_merge: Callable[[dict[tuple[bytes, bytes], int], tuple[bytes, bytes]], None] | None = None,
              ) -> BPETokenizer:
        """Learn ``vocab_size - 256 - len(special_tokens)`` merges from ``text``.

        ``on_merge(counts, best)``, if given, is called before each merge with every pair's
        current count (as byte strings) and the pair chosen, to show the steps of training:

        >>> steps = []
        >>> _ = BPETokenizer.train("aaab", 257, on_merge=lambda counts, best: steps.append((counts, best)))
        >>> steps
        [({(b'a', b'a'): 2, (b'a', b'b'): 1}, (b'a', b'a'))]
        """
        _check_str(text)
        special_tokens = list(dict.fromkeys(special_tokens))
        if not isinstance(vocab_size, int) or vocab_size < 256 + len(special_tokens):
            raise ValueError(
                f"vocab_size must be an integer >= 256 + {len(special_tokens)} special tokens "
                f"= {256 + len(special_tokens)}, got {vocab_size!r}"
            )
        # count pre-tokens once; special tokens are cut out and never trained on
        chunks = cls([], special_tokens)._split_special(text)
        word_counts = Counter(w for chunk, special in chunks if not special for w in _PRETOKENIZE.findall(chunk))
        words = [list(w.encode("utf-8")) for w in word_counts]
        freqs = list(word_counts.values())
        vocab = {i: bytes([i]) for i in range(256)}

        pair_counts: Counter = Counter()
        where: dict[tuple[int, int], set[int]] = {}  # pair -> words that (may) contain it
        for w, (word, f) in enumerate(zip(words, freqs, strict=True)):
            for pair in zip(word, word[1:]):
                pair_counts[pair] += f
                where.setdefault(pair, set()).add(w)

        merges = []
        for new in range(256, vocab_size - len(special_tokens)):
            if not pair_counts:
                break  # nothing left to merge: every pre-token is a single token
            top = max(pair_counts.values())
            best = max((p for p, c in pair_counts.items() if c == top), key=lambda p: (vocab[p[0]], vocab[p[1]]))
            if on_merge is not None:
                counts = {(vocab[a], vocab[b]): c for (a, b), c in pair_counts.items()}
                on_merge(counts, (vocab[best[0]], vocab[best[1]]))
            vocab[new] = vocab[best[0]] + vocab[best[1]]
            merges.append((vocab[best[0]], vocab[best[1]]))
            for w in where.pop(best):
                word, f = words[w], freqs[w]
                if len(word) < 2:
                    continue
                for pair in zip(word, word[1:]):  # take the word's pairs out...
                    pair_counts[pair] -= f
                    if pair_counts[pair] == 0:
                        del pair_counts[pair]
                merged, i = [], 0
                while i < len(word):
                    if i + 1 < len(word) and word[i] == best[0] and word[i + 1] == best[1]:
                        merged.append(new)
                        i += 2
                    else:
                        merged.append(word[i])
                        i += 1
                words[w] = merged
                for pair in zip(merged, merged[1:]):  # ...and put the new ones in
                    pair_counts[pair] += f
                    where.setdefault(pair, set()).add(w)
        return cls(merges, special_tokens)

    # ------------------------------------------------------------------ encoding
    def _split_special(self, text: str) -> list[tuple[str, bool]]:
        if self._split is None:
            return [(text, False)] if text else []
        return [(part, i % 2 == 1) for i, part in enumerate(self._split.split(text)) if part]

    def _encode_word(self, word: str) -> list[int]:
        ids = list(word.encode("utf-8"))
        ranks = self._ranks
        while len(ids) >= 2:
            # the pair learned earliest (lowest new id) is merged first, as in training
            new = min((ranks.get(p, 1 << 62) for p in zip(ids, ids[1:])))
            if new == 1 << 62:
                break
            a, b = self._pairs[new]
            out, i = [], 0
            while i < len(ids):
                if i + 1 < len(ids) and ids[i] == a and ids[i + 1] == b:
                    out.append(new)
                    i += 2
                else:
                    out.append(ids[i])
                    i += 1
            ids = out
        return ids

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``; special tokens map to their ids, never split."""
        _check_str(text)
        out: list[int] = []
        cache = self._cache
        for chunk, special in self._split_special(text):
            if special:
                out.append(self.special_tokens[chunk])
                continue
            for word in _PRETOKENIZE.findall(chunk):
                ids = cache.get(word)
                if ids is None:
                    ids = cache[word] = self._encode_word(word)
                out.extend(ids)
        return out

    def decode(self, ids) -> str:
        """The text of ``ids`` (bytes joined, then UTF-8; a cut inside a character shows as U+FFFD)."""
        ids = _check_ids(ids, len(self.vocab))
        return b"".join(self.vocab[i] for i in ids).decode("utf-8", errors="replace")

    # ------------------------------------------------------------------ files
    def save(self, path) -> None:
        """A readable JSON file: merges as escaped byte strings, in order."""
        data = {"type": "bpe", "pattern": GPT2_PATTERN, "special_tokens": list(self.special_tokens),
                "merges": [[_escape(a), _escape(b)] for a, b in self.merges]}
        Path(path).write_text(json.dumps(data, ensure_ascii=False, indent=1), encoding="utf-8")

    @classmethod
    def load(cls, path) -> BPETokenizer:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        if data.get("type") != "bpe" or data.get("pattern") != GPT2_PATTERN:
            raise ValueError(f"{path} is not a byte-level BPE tokenizer file of this course")
        return cls([(_unescape(a), _unescape(b)) for a, b in data["merges"]], data["special_tokens"])
