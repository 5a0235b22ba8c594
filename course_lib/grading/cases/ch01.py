"""Exercise 1 (counting n-gram models): the graded parts and their visible cases.

Parts 2 and 3 are handed n-gram counts made here with nltk (an independent library), not
by the student's Part 1, so a bug in Part 1 costs Part 1 only. The sentences ride along
as the last argument, for the grader's reference; the call leaves them out.
"""

from collections import Counter

from nltk.lm.preprocessing import pad_both_ends
from nltk.util import ngrams

from course_lib.grading.kernel import Part

TINY = [["to", "be", "or", "not", "to", "be"], ["to", "sleep"]]


def counts(sentences, n):
    """All n-grams of the padded sentences, counted by nltk."""
    return dict(Counter(g for s in sentences for g in ngrams(pad_both_ends(list(s), n), n)))


def _without_sentences(function):
    return lambda ns, *args: ns[function](*args[:-1])


def _each_u(ns, distribution, us):
    return [ns["sample_next"](distribution, u) for u in us]


PARTS = {
    "count_ngrams": Part("test_count_ngrams", "count_ngrams", {
        "the hand-worked example": ([["a", "b", "a"]], 2),
        "bigrams of a sentence": ([["to", "be", "or", "not", "to", "be"]], 2),
    }),
    "mle_prob": Part("test_mle_prob", "mle_prob", {
        "P(be | to) = 2/3": (counts(TINY, 2), "be", ("to",), TINY),
        "a seen context, an unseen pair": (counts(TINY, 2), "sleep", ("be",), TINY),
    }, call=_without_sentences("mle_prob")),
    "add_k_prob": Part("test_add_k_prob", "add_k_prob", {
        "Laplace, P(be | to)": (counts(TINY, 2), "be", ("to",), 1, 8, TINY),
        "Laplace, an unseen pair": (counts(TINY, 2), "sleep", ("be",), 1, 8, TINY),
    }, call=_without_sentences("add_k_prob")),
    "perplexity": Part("test_perplexity", "perplexity", {
        "uniform over 4": ([0.25, 0.25, 0.25, 0.25],),
        "2 ** ((1 + 3) / 2)": ([0.5, 0.125],),
        "a zero probability": ([0.5, 0.0],),
    }),
    "sample_next": Part("test_sample_next", "sample_next", {
        "u at and between the edges": ({"c": 0.2, "a": 0.5, "b": 0.3}, [0.0, 0.49, 0.5, 0.6, 0.79, 0.8, 0.999]),
    }, call=_each_u),
}
