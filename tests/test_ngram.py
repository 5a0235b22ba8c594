"""course_lib.ngram against nltk.lm (MLE, Laplace) and against a slow reference
Kneser-Ney (tests/reference_kn.py); normalization; bad input."""

import itertools
import math
import random

import numpy as np
import pytest
from nltk.lm import MLE, KneserNeyInterpolated, Laplace
from nltk.lm.preprocessing import pad_both_ends, padded_everygram_pipeline
from nltk.util import ngrams

from course_lib.ngram import BOS, EOS, UNK, NGramLM, bits_per_char, pad_sentence
from reference_kn import SlowKneserNey

WORDS_TRAIN = [
    "the cat sat on the mat".split(),
    "the dog sat on the log".split(),
    "a cat and a dog".split(),
    "the cat saw the dog".split(),
]
WORDS_TEST = ["the cat sat on the log".split(), "a bird sat".split(), "dog".split()]
CHARS_TRAIN = ["abracadabra", "abba", "cadabra", "dab"]
CHARS_TEST = ["abrac", "bad", "xyz"]


def nltk_model(cls, order, sentences):
    train, vocab = padded_everygram_pipeline(order, sentences)
    lm = cls(order)
    lm.fit(train, vocab)
    return lm


def to_nltk(lm, tokens):
    return [t if t in lm.vocab else "<UNK>" for t in tokens]


def test_pad_sentence_matches_nltk():
    for n in (1, 2, 3, 5):
        assert pad_sentence(["a", "b"], n) == list(pad_both_ends(["a", "b"], n))


@pytest.mark.parametrize("order", [1, 2, 3, 4])
@pytest.mark.parametrize("data", ["words", "chars"])
def test_mle_probabilities_and_perplexity_equal_nltk(order, data):
    train, test = (WORDS_TRAIN, WORDS_TEST) if data == "words" else (CHARS_TRAIN, CHARS_TEST)
    train = [list(s) for s in train]
    ours = NGramLM(order, "mle").fit(train)
    ref = nltk_model(MLE, order, train)
    for sent in train + [list(s) for s in test]:
        for g in ngrams(pad_both_ends(sent, order), order):
            expected = ref.score(*to_nltk(ref, [g[-1]]), to_nltk(ref, g[:-1]))
            assert ours.prob(g[-1], list(g[:-1])) == pytest.approx(expected, abs=1e-12)
    train_ngrams = [g for s in train for g in ngrams(pad_both_ends(s, order), order)]
    assert ours.perplexity(train) == pytest.approx(ref.perplexity(train_ngrams), rel=1e-12)


@pytest.mark.parametrize("order", [2, 3, 4])
@pytest.mark.parametrize("data", ["words", "chars"])
def test_laplace_probabilities_and_perplexity_equal_nltk(order, data):
    # order >= 2: with order 1 nltk pads nothing, so its vocabulary lacks <s> and </s>
    train, test = (WORDS_TRAIN, WORDS_TEST) if data == "words" else (CHARS_TRAIN, CHARS_TEST)
    train, test = [list(s) for s in train], [list(s) for s in test]
    ours = NGramLM(order, "laplace").fit(train)
    ref = nltk_model(Laplace, order, train)
    assert len(ours.vocab) == len(ref.vocab)
    for sent in train + test:
        for g in ngrams(pad_both_ends(sent, order), order):
            expected = ref.score(*to_nltk(ref, [g[-1]]), to_nltk(ref, g[:-1]))
            assert ours.prob(g[-1], list(g[:-1])) == pytest.approx(expected, abs=1e-12)
    test_ngrams = [tuple(to_nltk(ref, g)) for s in test for g in ngrams(pad_both_ends(s, order), order)]
    assert ours.perplexity(test) == pytest.approx(ref.perplexity(test_ngrams), rel=1e-12)


def test_add_k_formula():
    lm = NGramLM(2, "add_k", k=0.1).fit(WORDS_TRAIN)
    V = len(lm.vocab)
    c_pair, c_ctx = lm.count(("the", "cat")), sum(lm.count(("the", w)) for w in lm.vocab)
    assert (c_pair, c_ctx) == (2, 6)  # the cat, the mat, the dog, the log, the cat, the dog
    assert lm.prob("cat", ["the"]) == pytest.approx((2 + 0.1) / (6 + 0.1 * V), abs=1e-15)


def random_corpus(rng, alphabet):
    sents = ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 25))) for _ in range(rng.randint(1, 6))]
    return [list(s) for s in sents]


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("order", [1, 2, 3, 4])
@pytest.mark.parametrize("discount", [0.75, 0.3, "modified"])
def test_kneser_ney_equals_slow_reference(seed, order, discount):
    rng = random.Random(seed)
    alphabet = "abcdef"[: rng.randint(2, 6)]
    train = random_corpus(rng, alphabet)
    lm = NGramLM(order, "kneser_ney", discount=discount).fit(train)
    ref = SlowKneserNey(order, train, lm.discounts)
    symbols = list(alphabet) + ["z"]  # z is never seen: <unk>
    for ctx_len in range(order):
        for ctx in itertools.product(symbols, repeat=ctx_len):
            full = [BOS] * (order - 1 - ctx_len) + [c if c in alphabet else UNK for c in ctx]
            for w in symbols + [EOS]:
                expected = ref.prob(w if w in alphabet or w == EOS else UNK, full)
                assert lm.prob(w, list(ctx)) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("order", [3, 2, 1])
def test_modified_discounts_follow_chen_goodman(order):
    """D1, D2, D3+ from the counts of counts of each order: raw counts at the highest
    order (3), continuation counts N1+(. g) below it."""
    from course_lib.data import load_split

    train = [list(load_split("valid")[0].text[:20000])]
    lm = NGramLM(3, "kneser_ney", discount="modified").fit(train)
    ref = SlowKneserNey(3, train, lm.discounts)
    table = ref.raw if order == 3 else ref.cont
    counts = np.array([c for g, c in table.items() if len(g) == order])
    n1, n2, n3, n4 = (np.sum(counts == i) for i in (1, 2, 3, 4))
    y = n1 / (n1 + 2 * n2)
    expected = (1 - 2 * y * n2 / n1, 2 - 3 * y * n3 / n2, 3 - 4 * y * n4 / n3)
    assert lm.discounts[order] == pytest.approx(expected)
    assert len(set(lm.discounts[order])) == 3  # really count-dependent


@pytest.mark.parametrize("smoothing,kwargs", [
    ("kneser_ney", {}), ("kneser_ney", {"discount": "modified"}), ("kneser_ney", {"discount": 1.0}),
    ("interpolated", {}), ("interpolated", {"lam": 1.0}),
])
@pytest.mark.parametrize("order", [1, 2, 3, 5])
def test_interpolated_models_are_distributions(smoothing, kwargs, order):
    lm = NGramLM(order, smoothing, **kwargs).fit(WORDS_TRAIN)
    contexts = [[], ["the"], ["the", "cat"], ["zebra", "unseen"], ["<s>", "<s>"], ["on", "the", "mat", "."]]
    for ctx in contexts:
        ctx = ctx[-(order - 1):] if order > 1 else []
        p = lm.distribution(ctx)
        assert p.shape == (len(lm.vocab),)
        assert p[lm.vocab.index(BOS)] == 0.0
        assert np.all(p >= 0)
        assert abs(p.sum() - 1.0) < 1e-9


def test_nltk_kneser_ney_is_not_normalized_but_ours_is():
    """The lesson of chapter 1: nltk's KneserNeyInterpolated after <s> <s> does not sum to 1."""
    train = [list("abracadabra"), list("cadabra")]
    ref = nltk_model(KneserNeyInterpolated, 3, train)
    ours = NGramLM(3, "kneser_ney").fit(train)
    words = sorted(set("abracadabra")) + [EOS]
    nltk_sum = sum(ref.score(w, ["<s>", "<s>"]) for w in words + ["<UNK>"])
    ours_sum = float(ours.distribution(["<s>", "<s>"]).sum())
    assert abs(nltk_sum - 1.0) > 1e-3
    assert abs(ours_sum - 1.0) < 1e-9


def test_logprobs_vectorized_equals_one_at_a_time():
    for order in (1, 2, 3, 4):
        lm = NGramLM(order, "kneser_ney", discount="modified").fit(CHARS_TRAIN)
        lp = lm.logprobs(CHARS_TEST)
        slow = [lm.logprob(g[-1], list(g[:-1])) for s in CHARS_TEST for g in ngrams(pad_both_ends(s, order), order)]
        assert lp.dtype == np.float64 and lp.shape == (len(slow),)
        np.testing.assert_allclose(lp, slow, rtol=1e-12)


def test_long_text_fast_path_equals_token_list():
    text = ("to be, or not to be: that is the question. " * 400) + "é€😀"
    lm_str = NGramLM(4, "kneser_ney").fit([text])
    lm_list = NGramLM(4, "kneser_ney").fit([list(text)])
    assert lm_str.vocab == lm_list.vocab
    np.testing.assert_array_equal(lm_str.logprobs([text]), lm_list.logprobs([list(text)]))


def test_bits_per_char_matches_hand_sum():
    lm = NGramLM(3, "kneser_ney").fit(CHARS_TRAIN)
    texts = ["abracadabra", "cab"]
    bits = 0.0
    for t in texts:
        for i, ch in enumerate(t):
            bits -= math.log2(lm.prob(ch, list(t[max(0, i - 2): i])))
    assert bits_per_char(lm, texts) == pytest.approx(bits / sum(map(len, texts)), rel=1e-12)


def test_min_count_maps_rare_tokens_to_unk():
    lm = NGramLM(2, "mle", min_count=2).fit(WORDS_TRAIN)
    assert "mat" not in lm.vocab and "cat" in lm.vocab
    assert lm.vocab[:3] == [BOS, EOS, UNK]
    assert lm.count((UNK,)) == sum(1 for s in WORDS_TRAIN for w in s if w in {"mat", "log", "and", "saw"})
    assert lm.prob("mat", ["the"]) == lm.prob("anything-unseen", ["the"]) == lm.prob(UNK, ["the"])


def test_generate_is_seeded_and_uses_the_model():
    lm = NGramLM(3, "mle").fit(WORDS_TRAIN)
    a, b = lm.generate(20, seed=3), lm.generate(20, seed=3)
    assert a == b and len(a) >= 1 and all(isinstance(t, str) for t in a)
    assert BOS not in a and EOS not in a
    padded = [BOS, BOS] + a
    for i in range(2, len(padded)):  # an MLE model only produces trigrams it has seen
        assert lm.count(tuple(padded[i - 2: i + 1])) > 0
    lm_c = NGramLM(5, "kneser_ney").fit(["the quick brown fox jumps over the lazy dog"] * 3)
    assert len(lm_c.generate(50, context="the q", seed=0, stop_at_end=False)) == 50


def test_set_discount_equals_a_fresh_fit():
    for scale in (0.8, 1.3):
        refit = NGramLM(3, "kneser_ney", discount="modified", discount_scale=scale).fit(CHARS_TRAIN * 5)
        reused = NGramLM(3, "kneser_ney").fit(CHARS_TRAIN * 5).set_discount("modified", scale)
        assert reused.discounts == refit.discounts
        np.testing.assert_array_equal(reused.logprobs(CHARS_TEST), refit.logprobs(CHARS_TEST))
        assert abs(reused.distribution(["a", "b"]).sum() - 1) < 1e-9


def test_discount_scale_scales_and_clips():
    from course_lib.data import load_split

    train = [load_split("valid")[0].text[:20000]]
    base = NGramLM(3, "kneser_ney", discount="modified").fit(train)
    scaled = NGramLM(3, "kneser_ney", discount="modified").fit(train).set_discount("modified", 1.5)
    for k in (1, 2, 3):
        for d, d_scaled, cap in zip(base.discounts[k], scaled.discounts[k], (1, 2, 3), strict=True):
            assert d_scaled == pytest.approx(min(1.5 * d, cap))
    with pytest.raises(ValueError, match="kneser_ney"):
        NGramLM(2, "mle").fit(train).set_discount(0.5)


@pytest.mark.parametrize("bad,err", [
    (dict(order=0), ValueError), (dict(order=2.5), ValueError), (dict(order=True), ValueError),
    (dict(order=2, smoothing="witten_bell"), ValueError), (dict(order=2, smoothing="add_k", k=0), ValueError),
    (dict(order=2, discount=1.5), ValueError), (dict(order=2, discount="big"), ValueError),
    (dict(order=2, min_count=0), ValueError), (dict(order=2, smoothing="interpolated", lam=0), ValueError),
    (dict(order=2, discount="modified", discount_scale=0), ValueError),
    (dict(order=2, discount=0.5, discount_scale=1.2), ValueError),
])
def test_bad_constructor_arguments(bad, err):
    with pytest.raises(err):
        NGramLM(**bad)


def test_bad_input_gives_clear_errors():
    lm = NGramLM(3)
    with pytest.raises(RuntimeError, match="not fitted"):
        lm.prob("a", ["b"])
    with pytest.raises(RuntimeError, match="not fitted"):
        lm.perplexity(["ab"])
    with pytest.raises(ValueError, match="empty corpus"):
        NGramLM(2).fit([])
    with pytest.raises(ValueError, match="empty corpus"):
        NGramLM(2).fit(["", []])
    with pytest.raises(TypeError, match="wrap it in a list"):
        NGramLM(2).fit("a single string")
    with pytest.raises(TypeError, match="sentence 1"):
        NGramLM(2).fit([["a"], [1, 2]])
    lm.fit(WORDS_TRAIN)
    with pytest.raises(ValueError, match="at most 2 tokens"):
        lm.prob("cat", ["on", "the", "big"])
    with pytest.raises(TypeError):
        lm.prob(3, ["the"])
    with pytest.raises(ValueError, match="nothing to score"):
        lm.logprobs([])


def test_real_corpus_character_model_is_sane():
    from course_lib.data import load_split

    train = [p.text for p in load_split("train")[:3]]
    valid = [load_split("valid")[0].text[:20000]]
    bpcs = {n: bits_per_char(NGramLM(n, "kneser_ney").fit(train), valid) for n in (1, 3, 5)}
    # a unigram over ~70 characters needs ~4.5 bits; context helps a lot
    assert 4.0 < bpcs[1] < 5.0
    assert bpcs[5] < bpcs[3] < bpcs[1]


def test_num_parameters_counts_distinct_ngrams():
    lm = NGramLM(2, "mle").fit([["a", "b", "a"]])
    # unigrams a, b, </s>; bigrams (<s> a), (a b), (b a), (a </s>)
    assert lm.num_parameters() == 3 + 4
