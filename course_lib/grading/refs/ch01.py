"""Exercise 1: expected values from nltk.lm and independent formulas; the hidden cases."""

import math

import numpy as np
from nltk.lm import MLE, Laplace, Lidstone
from nltk.lm.preprocessing import padded_everygram_pipeline

from course_lib.grading.cases.ch01 import TINY, counts
from course_lib.grading.verdict import Raises, Ref

CHARS = ["abracadabra", "cadabra", "dab"]


def _nltk(model, n, sentences):
    train, vocab = padded_everygram_pipeline(n, [list(s) for s in sentences])
    model.fit(train, vocab)
    return model


def _random_sentences(rng, words="abcde", count=4, longest=6):
    return [[str(w) for w in rng.choice(list(words), size=int(rng.integers(0, longest + 1)))] for _ in range(count)]


def _count_cases(rng):
    cases = {f"{n}-grams of three sentences": ([*TINY, ["be"]], n) for n in (1, 2, 3, 4)}
    cases["str sentences (characters)"] = (["abracadabra", "cadabra"], 3)
    cases["an empty sentence keeps its padding"] = ([[]], 2)
    cases["an empty corpus"] = ([], 3)
    for i in range(3):
        cases[f"random sentences {i + 1}"] = (_random_sentences(rng), int(rng.integers(1, 5)))
    return cases


def _mle_cases(rng):
    cases = {"an unseen context": (counts(TINY, 2), "be", ("dream",), TINY)}
    for n, word, context in [(3, "or", ("to", "be")), (3, "</s>", ("to", "be")), (3, "to", ("<s>", "<s>")),
                             (1, "to", ()), (2, "not", ("or",)), (4, "be", ("or", "not", "to"))]:
        cases[f"{n}-grams, {word} after {' '.join(context) or 'nothing'}"] = (counts(TINY, n), word, context, TINY)
    for context in [("a", "b"), ("<s>", "<s>"), ("d", "a")]:
        word = str(rng.choice(list("abcdr")))
        cases[f"characters, {word} after {''.join(context)}"] = (counts(CHARS, 3), word, context, CHARS)
    return cases


def _mle_expected(counts_, word, context, sentences):
    n = len(context) + 1
    return float(_nltk(MLE(n), n, sentences).score(word, list(context)))


def _add_k_cases(rng):
    cases = {}
    for n, word, context in [(3, "or", ("to", "be")), (3, "sleep", ("<s>", "to")), (2, "be", ("dream",)),
                             (4, "to", ("be", "or", "not"))]:
        vocab = len(_nltk(Laplace(n), n, TINY).vocab)
        name = f"Laplace, {n}-grams, {word} after {' '.join(context)}"
        cases[name] = (counts(TINY, n), word, context, 1, vocab, TINY)
    vocab = len(_nltk(Laplace(2), 2, CHARS).vocab)
    for context in [("a",), ("r",), ("z",)]:
        word = str(rng.choice(list("abcdr")))
        name = f"k = 0.25, characters, {word} after {context[0]}"
        cases[name] = (counts(CHARS, 2), word, context, 0.25, vocab, CHARS)
    return cases


def _add_k_expected(counts_, word, context, k, vocab_size, sentences):
    n = len(context) + 1
    model = _nltk(Laplace(n) if k == 1 else Lidstone(k, n), n, sentences)
    assert len(model.vocab) == vocab_size, "the case's vocabulary size is nltk's"
    return float(model.score(word, list(context)))


def _perplexity_expected(probs):
    if not probs:
        return Raises("ValueError")
    if any(p == 0 for p in probs):
        return math.inf
    return float(2 ** (-float(np.mean(np.log2(np.asarray(probs, dtype=np.float64))))))


def _perplexity_cases(rng):
    return {
        "one token at p = 1": ([1.0],),
        "an empty list raises ValueError": ([],),
        "a Laplace bigram model's probabilities": ([float(p) for p in rng.uniform(0.01, 0.6, size=12)],),
        "tiny probabilities": ([1e-300, 1e-200, 0.5],),
    }


def _sample_expected(distribution, us):
    tokens = sorted(distribution)
    running = np.cumsum([distribution[t] for t in tokens])  # summed left to right, as a loop does
    return [tokens[min(int(np.searchsorted(running, u, side="right")), len(tokens) - 1)] for u in us]


def _sample_cases(rng):
    return {
        "300 random draws": ({"c": 0.2, "a": 0.5, "b": 0.3}, [float(u) for u in rng.random(300)]),
        "u above the final total gives the last token": ({"x": 0.3, "y": 0.3, "z": 0.3999999}, [0.9999999999]),
        "many tokens": ({w: 1 / 26 for w in "zyxwvutsrqponmlkjihgfedcba"}, [float(u) for u in rng.random(100)]),
    }


REFS = {
    "count_ngrams": Ref(counts, hidden=_count_cases),
    "mle_prob": Ref(_mle_expected, hidden=_mle_cases, rtol=1e-9, atol=1e-12),
    "add_k_prob": Ref(_add_k_expected, hidden=_add_k_cases, rtol=1e-9, atol=1e-12),
    "perplexity": Ref(_perplexity_expected, hidden=_perplexity_cases, rtol=1e-9, atol=1e-12),
    "sample_next": Ref(_sample_expected, hidden=_sample_cases),
}
