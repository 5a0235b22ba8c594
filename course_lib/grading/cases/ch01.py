"""Exercise 1 (counting n-gram models): the graded parts and their visible cases.

Parts 2, 3 and 4 are handed n-gram counts made here with nltk (an independent library),
not by the student's Part 1, so a bug in Part 1 costs Part 1 only. The sentences ride
along as the last argument, for the grader's reference; the call leaves them out.

Part 4 (``kn_bigram_prob``) has three kinds of case, named by the first argument:
``"one"`` asks for one probability; ``"every token"`` for the probability of every entry
of the vocabulary after one context (the grader checks that they sum to one and match);
``"passage"`` for the probability of each character of a passage after the one before it
(``<s>`` before the first), from which the grader computes the bits per character.
"""

from collections import Counter

from nltk.lm.preprocessing import pad_both_ends
from nltk.util import ngrams

from course_lib.grading.kernel import Part

BOS, EOS = "<s>", "</s>"
TINY = [["to", "be", "or", "not", "to", "be"], ["to", "sleep"]]
CHARS = ["abracadabra", "cadabra", "dab"]


def counts(sentences, n):
    """All n-grams of the padded sentences, counted by nltk."""
    return dict(Counter(g for s in sentences for g in ngrams(pad_both_ends(list(s), n), n)))


def vocab_size(sentences):
    """|V| as nltk.lm and the exercise count it: the tokens, <s>, </s> and <unk>."""
    return len({t for s in sentences for t in s}) + 3


def vocabulary(sentences):
    """Every entry of the vocabulary: <s>, </s>, a token never seen (standing for <unk>), the tokens."""
    return [BOS, EOS, "<unk>", *sorted({t for s in sentences for t in s})]


def _without_sentences(function):
    return lambda ns, *args: ns[function](*args[:-1])


def _each_u(ns, distribution, us):
    return [ns["sample_next"](distribution, u) for u in us]


def _kn(ns, kind, counts_, what, discount, size, sentences):
    kn_bigram_prob = ns["kn_bigram_prob"]
    if kind == "one":
        word, context = what
        return kn_bigram_prob(counts_, word, context, discount, size)
    if kind == "every token":
        context, tokens = what
        return [kn_bigram_prob(counts_, w, context, discount, size) for w in tokens]
    if kind == "passage":  # each character after the one before it, <s> before the first
        return [kn_bigram_prob(counts_, c, (b,), discount, size) for b, c in zip([BOS, *what], what)]
    raise ValueError(f"unknown kind of case {kind!r}")


def kn_case(kind, sentences, what, discount):
    """The arguments of a Part 4 case: the bigram counts and |V| of ``sentences``."""
    return (kind, counts(sentences, 2), what, discount, vocab_size(sentences), sentences)


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
    "kn_bigram_prob": Part("test_kn_bigram_prob", "kn_bigram_prob", {
        "P(be | to), D = 0.75": kn_case("one", TINY, ("be", ("to",)), 0.75),
        "P(be | dream): an unseen context passes everything down": kn_case("one", TINY, ("be", ("dream",)), 0.75),
        "every token after 'to' (sums to one)": kn_case("every token", TINY, (("to",), vocabulary(TINY)), 0.75),
        "bits per character of 'a bad cab'": kn_case("passage", CHARS, "a bad cab", 0.75),
    }, call=_kn),
    "perplexity": Part("test_perplexity", "perplexity", {
        "uniform over 4": ([0.25, 0.25, 0.25, 0.25],),
        "2 ** ((1 + 3) / 2)": ([0.5, 0.125],),
        "a zero probability": ([0.5, 0.0],),
    }),
    "sample_next": Part("test_sample_next", "sample_next", {
        "u at and between the edges": ({"c": 0.2, "a": 0.5, "b": 0.3}, [0.0, 0.49, 0.5, 0.6, 0.79, 0.8, 0.999]),
    }, call=_each_u),
}
