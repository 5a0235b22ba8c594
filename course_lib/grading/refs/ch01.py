"""Exercise 1: expected values from nltk.lm and independent formulas; the hidden cases.

Part 4, interpolated Kneser-Ney, follows the chapter's formula. nltk's
``KneserNeyInterpolated`` agrees with it at the bigram order (the discounted raw counts
and gamma(u) = D N1+(u .) / c(u)) but not at the lowest order: nltk's unigram is the
continuation probability N1+(. w) / N1+(. .), neither discounted nor mixed with the
uniform distribution, so it gives an unseen word 0. The reference takes nltk's alpha and
gamma for the bigram order and the lowest order from the chapter's formula, written out
here (``_kn_unigram``); each answer is also checked against ``course_lib.ngram.NGramLM``,
the library the chapter checks its own formula against.
"""

import math
from collections import Counter

import numpy as np
from nltk.lm import MLE, KneserNeyInterpolated, Laplace, Lidstone
from nltk.lm.preprocessing import padded_everygram_pipeline

from course_lib.grading import compare
from course_lib.grading.cases.ch01 import BOS, CHARS, EOS, TINY, counts, kn_case, vocabulary
from course_lib.grading.verdict import Raises, Ref
from course_lib.ngram import NGramLM, bits_per_char


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


# ---------------------------------------------------------------- Part 4: Kneser-Ney
def _kn_unigram(sentences, discount):
    """The chapter's lowest order: discounted continuation counts N1+(. w) over N1+(. .),
    plus the freed mass spread uniformly over every entry of the vocabulary but <s>."""
    types = {g for s in sentences for p in [[BOS, *s, EOS]] for g in zip(p, p[1:])}  # distinct bigrams
    continuation = Counter(w for _, w in types)  # N1+(. w)
    size = len({t for s in sentences for t in s}) + 3  # the tokens, <s>, </s>, <unk>
    freed = discount * len(continuation) / len(types)

    def p(word):
        if word == BOS:
            return 0.0
        return max(continuation[word] - discount, 0) / len(types) + freed / (size - 1)
    return p


def _kn_model(sentences, discount):
    """P_KN(word | (v,)): nltk's bigram order on the chapter's lowest order."""
    train, vocab = padded_everygram_pipeline(2, [list(s) for s in sentences])
    nltk_kn = KneserNeyInterpolated(2, discount=discount)
    nltk_kn.fit(train, vocab)
    unigram = _kn_unigram(sentences, discount)
    check = NGramLM(2, "kneser_ney", discount=discount).fit([list(s) for s in sentences])

    def p(word, context):
        (v,) = context
        ctx = nltk_kn.vocab.lookup((v,))
        if nltk_kn.counts[ctx]:
            alpha, gamma = nltk_kn.estimator.alpha_gamma(nltk_kn.vocab.lookup(word), ctx)
        else:  # a context never seen: all weight on the lower order
            alpha, gamma = 0.0, 1.0
        prob = float(alpha + gamma * unigram(word))
        assert math.isclose(prob, check.prob(word, [v]), rel_tol=1e-9, abs_tol=1e-15), (word, context)
        return prob
    return p, check


def _kn_expected(kind, counts_, what, discount, size, sentences):
    assert counts_ == counts(sentences, 2) and size == len(vocabulary(sentences)), "the case's counts and |V|"
    p, check = _kn_model(sentences, discount)
    if kind == "one":
        word, context = what
        return p(word, tuple(context))
    if kind == "every token":
        context, tokens = what
        assert sorted(tokens) == sorted(vocabulary(sentences)), "every entry of the vocabulary"
        probs = [p(w, tuple(context)) for w in tokens]
        assert math.isclose(sum(probs), 1.0, rel_tol=1e-12)
        return probs
    bits = -sum(math.log2(p(c, (b,))) for b, c in zip([BOS, *what], what)) / len(what)
    assert math.isclose(bits, bits_per_char(check, [what]), rel_tol=1e-9)
    return bits


def _kn_compare(result, expected, args):
    kind = args[0]
    if kind == "one":
        return compare.same(result, expected, rtol=1e-9, atol=1e-12)
    n = len(expected) if kind == "every token" else len(args[2])
    if type(result) is not list or len(result) != n or any(type(x) is not float for x in result):
        return compare.same(result, expected if kind == "every token" else [0.0] * n, what="the probabilities")
    if kind == "every token":
        total = math.fsum(result)
        if not math.isclose(total, 1.0, rel_tol=1e-9):
            return compare.Mismatch("sum over the vocabulary",
                                    f"the probabilities of the {n} entries of the vocabulary sum to {total!r}, not 1")
        return compare.same(result, expected, rtol=1e-9, atol=1e-12, what="the probabilities")
    if any(not 0 < x <= 1 for x in result):
        bad = next(i for i, x in enumerate(result) if not 0 < x <= 1)
        return compare.Mismatch("probability", f"character {bad} ({args[2][bad]!r}) got probability "
                                               f"{result[bad]!r}, not one in (0, 1]")
    bits = -math.fsum(math.log2(x) for x in result) / n
    if not compare.close(bits, expected, 1e-9, 1e-12):
        return compare.Mismatch("bits per character", f"bits per character: expected {expected!r}, got {bits!r}")
    return None


HAMLET = ["Who's there?", "Nay, answer me: stand, and unfold yourself.", "Long live the king!", "Bernardo?",
          "He.", "You come most carefully upon your hour.", "'Tis now struck twelve; get thee to bed, Francisco."]


def _some_tokens(rng):
    while True:  # drawn again, rarely, if every sentence came out empty
        sentences = _random_sentences(rng, count=6)
        if any(sentences):
            return sentences


def _kn_cases(rng):
    words = [*TINY, ["sleep", "or", "dream"], ["be"], []]  # an empty sentence adds (<s>, </s>)
    d = [round(float(x), 2) for x in rng.uniform(0.05, 1.0, size=8)]
    cases = {
        "D = 0.1, a seen pair": kn_case("one", TINY, ("be", ("to",)), 0.1),
        "D = 1, a seen pair whose count is 1": kn_case("one", TINY, ("not", ("or",)), 1.0),
        "a seen context, an unseen pair": kn_case("one", TINY, ("sleep", ("be",)), 0.5),
        "a word never seen": kn_case("one", TINY, ("dream", ("to",)), 0.75),
        "a word never seen after an unseen context": kn_case("one", TINY, ("dream", ("dream",)), 0.75),
        "P(</s> | be)": kn_case("one", TINY, (EOS, ("be",)), d[0]),
        "after <s>": kn_case("one", words, ("sleep", (BOS,)), d[1]),
        "</s> as the context (never followed)": kn_case("one", words, ("to", (EOS,)), d[2]),
        "<s> is never predicted": kn_case("one", words, (BOS, ("to",)), d[3]),
        "every token after a seen context": kn_case("every token", words, (("or",), vocabulary(words)), d[4]),
        "every token after an unseen context": kn_case("every token", words, (("dream!",), vocabulary(words)),
                                                       d[5]),
        "every character after 'a', D = 0.9": kn_case("every token", CHARS, (("a",), vocabulary(CHARS)), 0.9),
        "bits per character, a passage with an unseen character": kn_case("passage", CHARS, "cab, dab, bad",
                                                                          d[6]),
        "bits per character of a line of Hamlet": kn_case("passage", HAMLET, "Stand, ho! Who is there?", d[7]),
    }
    for i in range(3):
        sentences = _some_tokens(rng)
        tokens = vocabulary(sentences)
        word, context = str(rng.choice(tokens + ["f"])), (str(rng.choice(tokens[1:] + ["f"])),)
        D = round(float(rng.uniform(0.05, 1.0)), 2)
        cases[f"random sentences {i + 1}"] = kn_case("one", sentences, (word, context), D)
    sentences = _some_tokens(rng)
    cases["random sentences, every token after a random context"] = kn_case(
        "every token", sentences, ((str(rng.choice(list("abcdef"))),), vocabulary(sentences)),
        round(float(rng.uniform(0.05, 1.0)), 2))
    return cases


REFS = {
    "count_ngrams": Ref(counts, hidden=_count_cases),
    "mle_prob": Ref(_mle_expected, hidden=_mle_cases, rtol=1e-9, atol=1e-12),
    "add_k_prob": Ref(_add_k_expected, hidden=_add_k_cases, rtol=1e-9, atol=1e-12),
    "kn_bigram_prob": Ref(_kn_expected, hidden=_kn_cases, compare=_kn_compare),
    "perplexity": Ref(_perplexity_expected, hidden=_perplexity_cases, rtol=1e-9, atol=1e-12),
    "sample_next": Ref(_sample_expected, hidden=_sample_cases),
}
