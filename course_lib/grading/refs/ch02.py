"""Exercise 2: expected values and the hidden cases.

pair_counts and merge: independent one-liners here (a Counter over zip, a skip-scan).
train, encode and encode_special: the course's ``BPETokenizer`` (the reference the old
tests used), its merges of byte strings turned into pairs of ids. Every case keeps the vocabulary's byte
strings distinct, so ids and byte strings name the same tokens.
"""

from collections import Counter

from course_lib.grading.cases.ch02 import word_counts
from course_lib.grading.verdict import Ref
from course_lib.tokenizers import BPETokenizer


# ---------------------------------------------------------------- Part 1
def _pairs_expected(words):
    total = Counter()
    for word, freq in words.items():
        for pair in zip(word, word[1:]):
            total[pair] += freq
    return dict(total)


def _random_words(rng, alphabet, count, longest):
    words = {}
    for _ in range(count):
        word = tuple(int(a) for a in rng.choice(alphabet, size=int(rng.integers(0, longest + 1))))
        words[word] = int(rng.integers(1, 6))
    return words


def _pairs_cases(rng):
    cases = {
        "word counts of a sentence": (word_counts("low lower lowest newer wider"),),
        "a one-id word and an empty word": ({(5,): 3, (): 1},),
        "one id repeated (overlapping pairs)": ({(7, 7, 7, 7): 2},),
        "no words": ({},),
    }
    for i in range(3):
        cases[f"random words {i + 1}"] = (_random_words(rng, [1, 2, 3, 97, 255], 6, 8),)
    return cases


# ---------------------------------------------------------------- Part 2
def _merge_expected(word, pair, new_id):
    out, skip = [], False
    for i, x in enumerate(word):
        if skip:
            skip = False
        elif tuple(word[i:i + 2]) == tuple(pair):
            out.append(new_id)
            skip = True
        else:
            out.append(x)
    return tuple(out)


def _merge_cases(rng):
    cases = {
        "the pair does not occur (reversed)": ((3, 4), (4, 3), 256),
        "an empty word": ((), (1, 2), 256),
        "three in a row": ((9, 9, 9), (9, 9), 257),
        "the pair at the end": ((1, 2, 3), (2, 3), 260),
    }
    for i in range(4):
        word = tuple(int(a) for a in rng.choice([1, 2, 3], size=int(rng.integers(0, 13))))
        pair = tuple(int(a) for a in rng.choice([1, 2, 3], size=2))
        cases[f"random word {i + 1}"] = (word, pair, int(rng.integers(256, 300)))
    return cases


# ---------------------------------------------------------------- Parts 3 and 4
def _vocab_of(byte_merges):
    vocab = [bytes([i]) for i in range(256)]
    vocab += [a + b for a, b in byte_merges]
    return vocab


def _distinct(vocab) -> bool:
    return len(set(vocab)) == len(vocab)


def _id_merges(text, n):
    """The reference's first n merges learned from text, as pairs of ids."""
    tok = BPETokenizer.train(text, 256 + n)
    vocab = _vocab_of(tok.merges)
    assert _distinct(vocab), "a case whose vocabulary repeats a byte string"
    ids = {b: i for i, b in enumerate(vocab)}
    return [(ids[a], ids[b]) for a, b in tok.merges]


def _train_expected(words, num_merges, text):
    assert words == word_counts(text), "the case's word counts are its text's"
    return _id_merges(text, num_merges)


def _random_text(rng, letters, words):
    return " ".join("".join(rng.choice(list(letters), size=int(rng.integers(1, 7)))) for _ in range(words))


def _random_train_text(rng, letters="abcd", words=12, most=15):
    while True:  # drawn again, rarely, if two merges would make the same byte string
        text, n = _random_text(rng, letters, words), int(rng.integers(3, most + 1))
        if _distinct(_vocab_of(BPETokenizer.train(text, 256 + n).merges)):
            return text, n


def _train_cases(rng):
    cases = {}
    for name, text, n in [("12 merges of six words", "low lower lowest newer wider newest", 12),
                          ("one letter repeated", "aaaa aaa aa", 5),
                          ("multi-byte characters", "naïve café 東京 東京 😀😀", 10),
                          ("more merges asked than pairs left (stops early)", "ab", 50)]:
        cases[name] = (word_counts(text), n, text)
    for i in range(3):
        text, n = _random_train_text(rng, "abcd" if i < 2 else "abé ")
        cases[f"random text {i + 1}"] = (word_counts(text), n, text)
    return cases


def _encode_expected(text, merges):
    byte_merges, vocab = [], [bytes([i]) for i in range(256)]
    for a, b in merges:
        byte_merges.append((vocab[a], vocab[b]))
        vocab.append(vocab[a] + vocab[b])
    assert _distinct(vocab), "a case whose vocabulary repeats a byte string"
    return BPETokenizer(byte_merges).encode(text)


def _encode_cases(rng):
    cases = {}
    for name, train_text, n, text in [
            ("a sentence with words seen and unseen", "low lower lowest newer wider newest", 12,
             "the lowest newer wider, slower"),
            ("one letter repeated", "aaaa aaa aa", 5, "aaaaaaa a"),
            ("multi-byte characters, one never seen", "naïve café 東京 東京", 10, "東京 café 😀"),
            ("an empty text", "abc", 3, "")]:
        cases[name] = (text, _id_merges(train_text, n))
    for i in range(3):
        train_text, n = _random_train_text(rng)
        cases[f"random text {i + 1}"] = (_random_text(rng, "abcde!", 8), _id_merges(train_text, n))
    return cases


# ---------------------------------------------------------------- Part 5
def _byte_merges(merges):
    byte_merges, vocab = [], [bytes([i]) for i in range(256)]
    for a, b in merges:
        byte_merges.append((vocab[a], vocab[b]))
        vocab.append(vocab[a] + vocab[b])
    assert _distinct(vocab), "a case whose vocabulary repeats a byte string"
    return byte_merges


def _special_expected(text, merges, special_tokens):
    assert len(set(special_tokens)) == len(special_tokens), "distinct special tokens"
    return BPETokenizer(_byte_merges(merges), special_tokens).encode(text)


EOT = "<|endoftext|>"


def _special_cases(rng):
    low = _id_merges("low low low lower lowest newer newer wider", 8)
    cases = {
        "no special tokens: the same as encode": ("lowest newer<|endoftext|>", low, []),
        "a text without any special token": ("the lower wider", low, [EOT]),
        "an empty text": ("", low, [EOT]),
        "only special tokens, adjacent": (EOT * 3, low, [EOT]),
        "at the start and at the end": (EOT + "newer lower" + EOT, low, [EOT]),
        "inside a word: no merge crosses it": ("lo" + EOT + "wer", low, [EOT]),
        "almost a special token is ordinary text": ("low<|endoftext| <|endoftext>" + EOT[:-1], low, [EOT]),
        "regex metacharacters: [MASK] is not a character class": ("the [MASK] sat, MASK [MAS", low, ["[MASK]"]),
        "regex metacharacters: a|b and .* are literal": ("a|b is not a or b; .* is not all", low, ["a|b", ".*"]),
        "three special tokens: ids in the order given": ("<|b|>low<|a|> <|c|>lower<|b|>", low,
                                                         ["<|b|>", "<|a|>", "<|c|>"]),
        "one special token starts another: the longest that matches": ("<|a|><|a|>b<|a|>", low,
                                                                        ["<|a|>", "<|a|>b"]),
        "leftmost first, then longest": ("xabcd abcd", low, ["bcd", "ab"]),
        "multi-byte special token and text": ("naïve 🔚 café🔚東京", _id_merges("naïve café 東京 東京", 10), ["🔚"]),
        "no merges at all": ("low" + EOT + "low", [], [EOT]),
    }
    for i in range(3):
        train_text, n = _random_train_text(rng)
        specials = [EOT, "<|pad|>"][: 1 + i % 2]
        pieces = [_random_text(rng, "abcde!", 2) if rng.random() < 0.6 else str(rng.choice(specials))
                  for _ in range(8)]
        cases[f"random text {i + 1}"] = ("".join(pieces), _id_merges(train_text, n), specials)
    return cases


REFS = {
    "pair_counts": Ref(_pairs_expected, hidden=_pairs_cases),
    "merge": Ref(_merge_expected, hidden=_merge_cases),
    "train": Ref(_train_expected, hidden=_train_cases),
    "encode": Ref(_encode_expected, hidden=_encode_cases),
    "encode_special": Ref(_special_expected, hidden=_special_cases),
}
