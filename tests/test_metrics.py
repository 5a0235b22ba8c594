"""course_lib.metrics against sacrebleu (BLEU, 13a tokens) and rouge-score (ROUGE-N, ROUGE-L);
hand-worked BLEU pieces and confusion matrices; bad input."""

import doctest
import math

import numpy as np
import pytest
import sacrebleu
from hypothesis import given, settings
from hypothesis import strategies as st
from rouge_score import rouge_scorer
from sacrebleu.metrics import BLEU
from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a

from course_lib import metrics
from course_lib.metrics import (
    accuracy,
    brevity_penalty,
    closest_ref_length,
    confusion_matrix,
    corpus_bleu,
    lcs_length,
    modified_precision,
    ngram_counts,
    perplexity,
    precision_recall_f1,
    rouge_l,
    rouge_n,
    sentence_bleu,
    tokenize_13a,
    tokenize_rouge,
)

TOL = 1e-6
SCORER = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rouge3", "rougeL"], use_stemmer=False)


def to_streams(references):
    """Our layout (references[i] = the reference(s) of hypothesis i) -> sacrebleu's reference
    streams (streams[j][i] = the j-th reference of hypothesis i, None where it has fewer)."""
    refs = [[r] if isinstance(r, str) else list(r) for r in references]
    width = max(len(r) for r in refs)
    return [[r[j] if j < len(r) else None for r in refs] for j in range(width)]


def sacre_corpus(hyps, refs, **kw):
    return sacrebleu.corpus_bleu(hyps, to_streams(refs), **kw).score


# ----------------------------------------------------------------------------- BLEU

# (hypothesis, reference or references): each exercises one part of BLEU or of 13a
SENTENCES = [
    ("the cat sat on the mat", "the cat sat on the mat"),                     # identical
    ("dogs bark loudly at night", "the cat sat on the mat"),                  # disjoint
    ("the cat sat on a mat", "the cat sat on the mat"),                       # partial overlap
    ("the the the the the the the", "the cat is on the mat"),                 # clipping
    ("the the the the the the the", ["the cat is on the mat", "there is a cat on the mat"]),
    ("on the mat the cat sat", "the cat sat on the mat"),                     # same words, other order
    ("the cat", "the cat sat on the mat"),                                    # short: brevity penalty, no 3-grams
    ("the cat sat", "the cat sat on the mat"),                                # short, no 4-grams
    ("the cat sat on", "the cat sat on the mat"),                             # short, one 4-gram
    ("the cat sat on the mat and then it slept all day long", "the cat sat on the mat"),  # long
    ("It's 3.5 km, isn't it?", "It is 3.5 km, is it not?"),                   # 13a: apostrophes, decimals
    ("It's 3.5 km, isn't it?", "It's 3.5km, isn't it ?"),
    ('He said "yes" (twice).', "He said: &quot;yes&quot; (twice)."),          # quotes, entities
    ("R&amp;D costs 1,000 - 2,000 $ &lt;b&gt;", "R&D costs 1,000-2,000 $ <b>"),  # entities, numbers
    ("a well-known state-of-the-art model, e.g. GPT-2.", "a well known state of the art model e.g. GPT 2"),
    ("pages 10-20 and 3.14.15 or .5 and 5.", "pages 10 - 20 and 3.14.15 or 0.5 and 5 ."),
    ("line one-\nline two\nthree <skipped> four", "line oneline two three four"),   # joined lines
    ("a state-of-the-\n", "a state-of-the"),                                  # trailing hyphen-newline kept
    ("x &amp;quot;y&amp;quot; &amp;lt;", 'x "y" <'),                          # entities decoded once, in order
    ("The Cat Sat", "the cat sat"),                                           # case is kept
    ("naïve café – Zürich “quoted”", "naïve café - Zürich \"quoted\""),        # non-ASCII left alone
    ("", "the cat sat on the mat"),                                           # empty hypothesis: 0
    ("the cat sat on the mat", ""),                                           # empty reference
    ("", ""),
    ("   ", "the cat"),                                                       # whitespace only
    ("the cat sat on the mat .", "the cat sat on the mat."),                  # pre-tokenized hypothesis
    ("a b c d e", ["a b c", "a b c d e f g"]),                                # closest reference length
    ("a b c d e", ["a b c d e f g", "a b c"]),                                # tie 3 vs 7: shorter wins
    ("a b c d", ["x y z", "a b c d e", "p"]),
]
CORPORA = [
    (["the cat sat on the mat", "a dog barked", "it rained all day"],
     ["the cat sat on the mat", "the dog barked", "it was raining the whole day"]),
    (["the cat sat on the mat", "a dog barked"],                             # two references each
     [["the cat sat on the mat", "a cat sat on a mat"], ["a dog barked loudly", "the dog barked"]]),
    (["the cat sat on the mat", "a dog barked", "hello"],                    # ragged: 2, 1 and 3 refs
     [["the cat sat on the mat", "a cat sat on a mat"], "the dog barked", ["hi", "hello there", "hello"]]),
    (["the cat", "a dog", "hi"], ["the cat sat", "a dog ran", "hi"]),        # no 3-grams anywhere
    (["", "the cat sat on the mat"], ["something", "the cat sat on the mat"]),
    (["one two three four five"] * 3, ["one two three four five six", "one two", "five four three two one"]),
]


@pytest.mark.parametrize("text", sorted({t for h, r in SENTENCES for t in [h, *([r] if isinstance(r, str) else r)]}))
def test_tokenize_13a_equals_sacrebleu(text):
    assert tokenize_13a(text) == Tokenizer13a()(text.rstrip()).split()


@given(st.text(alphabet="ab9 .,-'\"&;<>qut\n()?", max_size=40))
@settings(max_examples=100, deadline=None)
def test_tokenize_13a_equals_sacrebleu_on_random_text(text):
    text = text.replace("q", "&quot;").replace("u", "&amp;")  # plant entities now and then
    assert tokenize_13a(text) == Tokenizer13a()(text.rstrip()).split()


@pytest.mark.parametrize("hyp, refs", SENTENCES)
def test_corpus_bleu_of_one_sentence_equals_sacrebleu(hyp, refs):
    ours = corpus_bleu([hyp], [refs])
    assert isinstance(ours, float)
    assert ours == pytest.approx(sacre_corpus([hyp], [refs]), abs=TOL)


@pytest.mark.parametrize("hyp, refs", SENTENCES)
def test_sentence_bleu_equals_sacrebleu(hyp, refs):
    expected = sacrebleu.sentence_bleu(hyp, [refs] if isinstance(refs, str) else refs).score
    assert sentence_bleu(hyp, refs) == pytest.approx(expected, abs=TOL)


@pytest.mark.parametrize("hyps, refs", CORPORA)
def test_corpus_bleu_equals_sacrebleu(hyps, refs):
    assert corpus_bleu(hyps, refs) == pytest.approx(sacre_corpus(hyps, refs), abs=TOL)
    assert corpus_bleu(hyps, refs, effective_order=True) == pytest.approx(
        sacre_corpus(hyps, refs, use_effective_order=True), abs=TOL)


@pytest.mark.parametrize("max_order", [1, 2, 3, 5])
@pytest.mark.parametrize("hyps, refs", CORPORA[:3])
def test_corpus_bleu_other_max_orders_equal_sacrebleu(hyps, refs, max_order):
    expected = BLEU(max_ngram_order=max_order).corpus_score(hyps, to_streams(refs)).score
    assert corpus_bleu(hyps, refs, max_order=max_order) == pytest.approx(expected, abs=TOL)


def test_corpus_bleu_is_not_the_mean_of_sentence_bleus():
    hyps, refs = CORPORA[0]
    mean = sum(corpus_bleu([h], [r]) for h, r in zip(hyps, refs)) / len(hyps)
    assert abs(corpus_bleu(hyps, refs) - mean) > 1.0


WORDS = ["the", "cat", "sat", "on", "mat", "a", "dog", "The", "it's", "3.5", ",", ".", "&amp;", "1-2", "mat."]
sentence = st.lists(st.sampled_from(WORDS), min_size=0, max_size=10).map(" ".join)
references = st.one_of(sentence, st.lists(sentence, min_size=1, max_size=3))


@given(st.lists(st.tuples(sentence, references), min_size=1, max_size=5))
@settings(max_examples=100, deadline=None)
def test_bleu_equals_sacrebleu_on_random_corpora(pairs):
    hyps, refs = [h for h, _ in pairs], [r for _, r in pairs]
    assert corpus_bleu(hyps, refs) == pytest.approx(sacre_corpus(hyps, refs), abs=TOL)
    h, r = pairs[0]
    expected = sacrebleu.sentence_bleu(h, [r] if isinstance(r, str) else r).score
    assert sentence_bleu(h, r) == pytest.approx(expected, abs=TOL)


def test_modified_precision_paper_example():
    hyp = "the the the the the the the".split()
    assert modified_precision(hyp, ["the cat is on the mat".split()], 1) == (2, 7)
    # clipped by the reference that holds "the" most often
    assert modified_precision(hyp, ["the cat is on the mat".split(), "there is a cat on the mat".split()], 1) == (2, 7)
    assert modified_precision(hyp, ["the cat is on the mat".split()], 2) == (0, 6)
    # without clipping, the unigram precision would be 7/7


def test_ngram_counts_and_clipping_by_hand():
    assert ngram_counts(["a", "b", "a", "b"], 2) == {("a", "b"): 2, ("b", "a"): 1}
    assert ngram_counts(["a", "b"], 3) == {}
    assert modified_precision("a b a b".split(), ["a b c".split(), "b a x".split()], 2) == (2, 3)


@pytest.mark.parametrize("hyp_len, ref_len, expected", [
    (6, 6, 1.0),
    (8, 6, 1.0),                      # longer than the reference: no penalty
    (2, 3, math.exp(1 - 3 / 2)),      # 0.6065...
    (5, 10, math.exp(-1)),
    (0, 4, 0.0),                      # empty hypothesis
    (0, 0, 1.0),
])
def test_brevity_penalty_by_hand(hyp_len, ref_len, expected):
    assert brevity_penalty(hyp_len, ref_len) == pytest.approx(expected, abs=1e-15)


def test_closest_reference_length_prefers_the_shorter_on_a_tie():
    assert closest_ref_length(5, [3, 7]) == 3
    assert closest_ref_length(5, [7, 3]) == 3
    assert closest_ref_length(5, [6, 4, 9]) == 4
    assert closest_ref_length(5, [9, 5]) == 5


def test_bleu_by_hand():
    # "the cat sat on a mat" vs "the cat sat on the mat": p1 = 5/6, p2 = 3/5, p3 = 2/4, p4 = 1/3, BP = 1
    expected = 100 * (5 / 6 * 3 / 5 * 2 / 4 * 1 / 3) ** 0.25
    assert corpus_bleu(["the cat sat on a mat"], ["the cat sat on the mat"]) == pytest.approx(expected, abs=1e-12)
    # "the cat sat and a mat": p1 = 4/6, p2 = 2/5, p3 = 1/4, no 4-gram match: exp smoothing counts p4 as 1/(2*3)
    assert corpus_bleu(["the cat sat and a mat"], ["the cat sat on the mat"]) == pytest.approx(
        100 * (4 / 6 * 2 / 5 * 1 / 4 * 1 / (2 * 3)) ** 0.25, abs=1e-12)
    # two orders without a match: the first counts as 1/(2 * total), the second as 1/(4 * total)
    assert corpus_bleu(["the cat a dog on mat"], ["the cat sat"]) == pytest.approx(
        100 * (2 / 6 * 1 / 5 * 1 / (2 * 4) * 1 / (4 * 3)) ** 0.25, abs=1e-12)
    assert corpus_bleu(["x y z w"], ["a b c d"]) == 0.0  # not one match: 0, smoothing or not


def test_empty_strings_are_valid_texts():
    assert corpus_bleu([""], ["the cat"]) == 0.0
    assert sentence_bleu("", "the cat") == 0.0
    assert rouge_n("", "the cat", 1) == {"precision": 0.0, "recall": 0.0, "f1": 0.0}
    assert rouge_l("the cat", "") == {"precision": 0.0, "recall": 0.0, "f1": 0.0}


# ----------------------------------------------------------------------------- ROUGE

ROUGE_PAIRS = [
    ("the cat sat on the mat", "the cat sat on the mat"),
    ("the cat sat", "the cat sat on the mat"),
    ("the cat sat on the mat and slept", "the cat sat on the mat"),
    ("the mat sat on a cat", "the cat sat on the mat"),
    ("dogs bark", "the cat sat on the mat"),
    ("the the the the", "the cat the mat"),
    ("The CAT, sat; on-the mat!!", "the cat sat on the mat"),
    ("It's 3.5 km, isn't it?", "it is 3.5 km is it not"),
    ("naïve café Zürich 2nd", "naive cafe zurich 2nd"),
    ("police killed the gunman", "the gunman killed police"),
    ("", "the cat"),
    ("the cat", ""),
    ("", ""),
    ("!!! ...", "the cat"),
]


@pytest.mark.parametrize("text", sorted({t for pair in ROUGE_PAIRS for t in pair}))
def test_tokenize_rouge_equals_rouge_score(text):
    from rouge_score.tokenize import tokenize
    assert tokenize_rouge(text) == tokenize(text, None)


def assert_same_scores(ours, ref):
    assert set(ours) == {"precision", "recall", "f1"}
    assert ours["precision"] == pytest.approx(ref.precision, abs=TOL)
    assert ours["recall"] == pytest.approx(ref.recall, abs=TOL)
    assert ours["f1"] == pytest.approx(ref.fmeasure, abs=TOL)


@pytest.mark.parametrize("hyp, ref", ROUGE_PAIRS)
def test_rouge_equals_rouge_score(hyp, ref):
    expected = SCORER.score(ref, hyp)  # rouge-score takes (target, prediction)
    for n in (1, 2, 3):
        assert_same_scores(rouge_n(hyp, ref, n), expected[f"rouge{n}"])
    assert_same_scores(rouge_l(hyp, ref), expected["rougeL"])


@given(sentence, sentence)
@settings(max_examples=100, deadline=None)
def test_rouge_equals_rouge_score_on_random_sentences(hyp, ref):
    expected = SCORER.score(ref, hyp)
    for n in (1, 2, 3):
        assert_same_scores(rouge_n(hyp, ref, n), expected[f"rouge{n}"])
    assert_same_scores(rouge_l(hyp, ref), expected["rougeL"])


def test_rouge_by_hand():
    # hypothesis 3 words, reference 6, all 3 found: precision 1, recall 1/2
    assert rouge_n("the cat sat", "the cat sat on the mat", 1) == pytest.approx(
        {"precision": 1.0, "recall": 0.5, "f1": 2 / 3})
    # same words, other order: ROUGE-1 is perfect, ROUGE-L is not
    assert rouge_n("on the mat the cat sat", "the cat sat on the mat", 1)["f1"] == 1.0
    assert lcs_length("on the mat the cat sat".split(), "the cat sat on the mat".split()) == 3
    assert rouge_l("on the mat the cat sat", "the cat sat on the mat")["f1"] == pytest.approx(0.5)
    assert lcs_length([], ["a"]) == 0
    assert lcs_length(list("ABCBDAB"), list("BDCABA")) == 4  # the textbook example (BCBA)


# ----------------------------------------------------------------------------- classification

# 10 examples, 4 positive: TP = 2, FN = 2, FP = 1, TN = 5
Y_TRUE = [1, 1, 1, 1, 0, 0, 0, 0, 0, 0]
Y_PRED = [1, 1, 0, 0, 1, 0, 0, 0, 0, 0]


def test_binary_scores_by_hand_and_recall_is_not_specificity():
    cm = confusion_matrix(Y_TRUE, Y_PRED)
    assert cm.dtype == np.int64 and cm.shape == (2, 2)
    assert cm.tolist() == [[5, 1], [2, 2]]  # [[TN, FP], [FN, TP]]
    (tn, fp), (fn, tp) = cm.tolist()
    scores = precision_recall_f1(Y_TRUE, Y_PRED)
    assert scores == pytest.approx({"precision": 2 / 3, "recall": 2 / 4, "f1": 4 / 7})
    assert scores["precision"] == tp / (tp + fp)
    assert scores["recall"] == tp / (tp + fn)   # actual positives found
    specificity = tn / (tn + fp)                # actual negatives found: 5/6, another number
    assert specificity == pytest.approx(5 / 6)
    assert scores["recall"] != pytest.approx(specificity)
    assert accuracy(Y_TRUE, Y_PRED) == pytest.approx(0.7)
    # the other class as positive: precision 5/7, recall 5/6 (= specificity of class 1)
    assert precision_recall_f1(Y_TRUE, Y_PRED, pos_label=0) == pytest.approx(
        {"precision": 5 / 7, "recall": 5 / 6, "f1": 10 / 13})


def test_zero_division_is_zero():
    assert precision_recall_f1([1, 0, 1], [0, 0, 0]) == {"precision": 0.0, "recall": 0.0, "f1": 0.0}
    assert precision_recall_f1([0, 0], [0, 0]) == {"precision": 0.0, "recall": 0.0, "f1": 0.0}  # no positives
    assert precision_recall_f1([0, 1], [1, 1]) == pytest.approx({"precision": 0.5, "recall": 1.0, "f1": 2 / 3})


# 3 classes: bird TP0 FP0 FN1; cat TP1 FP2 FN1; dog TP2 FP1 FN1
MC_TRUE = ["cat", "cat", "dog", "dog", "dog", "bird"]
MC_PRED = ["cat", "dog", "dog", "dog", "cat", "cat"]


def test_multiclass_scores_by_hand():
    assert confusion_matrix(MC_TRUE, MC_PRED).tolist() == [[0, 1, 0], [0, 1, 1], [0, 1, 2]]  # bird, cat, dog
    assert confusion_matrix(MC_TRUE, MC_PRED, labels=["dog", "cat"]).tolist() == [[2, 1], [1, 1]]
    macro = precision_recall_f1(MC_TRUE, MC_PRED, average="macro")
    assert macro == pytest.approx({"precision": (0 + 1 / 3 + 2 / 3) / 3,
                                   "recall": (0 + 1 / 2 + 2 / 3) / 3,
                                   "f1": (0 + 2 / 5 + 2 / 3) / 3})
    micro = precision_recall_f1(MC_TRUE, MC_PRED, average="micro")
    assert micro == pytest.approx({"precision": 0.5, "recall": 0.5, "f1": 0.5})
    assert accuracy(MC_TRUE, MC_PRED) == 0.5
    assert precision_recall_f1(["ham", "spam", "spam"], ["spam", "spam", "ham"], pos_label="spam") == pytest.approx(
        {"precision": 0.5, "recall": 0.5, "f1": 0.5})


@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 3)), min_size=1, max_size=30))
@settings(max_examples=100, deadline=None)
def test_classification_scores_agree_with_the_confusion_matrix(pairs):
    y_true, y_pred = np.array([t for t, _ in pairs]), np.array([p for _, p in pairs])
    cm = confusion_matrix(y_true, y_pred)
    labels = sorted(set(y_true.tolist()) | set(y_pred.tolist()))
    assert cm.sum() == len(pairs)
    assert accuracy(y_true, y_pred) == pytest.approx(np.trace(cm) / len(pairs))
    micro = precision_recall_f1(y_true, y_pred, average="micro")
    assert micro == pytest.approx({k: accuracy(y_true, y_pred) for k in ("precision", "recall", "f1")})
    per_class = []
    for i, c in enumerate(labels):
        tp, col, row = cm[i, i], cm[:, i].sum(), cm[i, :].sum()
        p, r = (tp / col if col else 0.0), (tp / row if row else 0.0)
        per_class.append((p, r, 2 * p * r / (p + r) if p + r else 0.0))
        binary = precision_recall_f1(y_true == c, y_pred == c, pos_label=True)
        assert binary == pytest.approx({"precision": p, "recall": r, "f1": per_class[-1][2]})
    macro = precision_recall_f1(y_true, y_pred, average="macro")
    assert macro == pytest.approx(dict(zip(("precision", "recall", "f1"), np.mean(per_class, axis=0))))


# ----------------------------------------------------------------------------- perplexity

def test_perplexity():
    assert perplexity(100 * math.log(50), 100) == pytest.approx(50)  # uniform over 50 tokens
    assert perplexity(0.0, 7) == 1.0                                  # certain of every token
    bits_per_token = 2.5
    assert perplexity(10 * bits_per_token * math.log(2), 10) == pytest.approx(2 ** bits_per_token)


def test_docstring_examples():
    result = doctest.testmod(metrics)
    assert result.attempted > 10 and result.failed == 0


# ----------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("call, error, match", [
    (lambda: corpus_bleu([], []), ValueError, "hypotheses is empty"),
    (lambda: corpus_bleu(["a", "b"], ["a"]), ValueError, "got 1 reference entries for 2 hypotheses"),
    (lambda: corpus_bleu(["a b"], [["a b"], ["a c"]]), ValueError, "transpose"),
    (lambda: corpus_bleu("the cat", ["the cat"]), TypeError, r"pass \[text\]"),
    (lambda: corpus_bleu(["a", 3], ["a", "b"]), TypeError, r"hypotheses\[1\] must be a str"),
    (lambda: corpus_bleu(["a"], "a"), TypeError, "one entry per hypothesis"),
    (lambda: corpus_bleu(["a"], [[]]), ValueError, r"references\[0\] is empty"),
    (lambda: corpus_bleu(["a"], [["a", None]]), TypeError, r"references\[0\] must be a str or a list of str"),
    (lambda: corpus_bleu(["a"], ["a"], max_order=0), ValueError, "max_order must be an integer >= 1"),
    (lambda: sentence_bleu(["a"], "a"), TypeError, "hypothesis must be a str"),
    (lambda: ngram_counts(["a"], 0), ValueError, "n must be an integer >= 1"),
    (lambda: ngram_counts("a b", 1), TypeError, "list of str tokens"),
    (lambda: modified_precision(["a"], ["a", "b"], 1), TypeError, r"pass \[ref_tokens\]"),
    (lambda: modified_precision(["a"], [], 1), TypeError, "non-empty list of references"),
    (lambda: brevity_penalty(-1, 3), ValueError, "hyp_len must be an integer >= 0"),
    (lambda: closest_ref_length(3, []), ValueError, "at least one reference"),
    (lambda: rouge_n("a", "a", 0), ValueError, "n must be an integer >= 1"),
    (lambda: rouge_n("a", ["a"], 1), TypeError, "reference must be a str"),
    (lambda: rouge_l(None, "a"), TypeError, "hypothesis must be a str"),
    (lambda: accuracy([], []), ValueError, "empty"),
    (lambda: accuracy([1, 0], [1]), ValueError, "same length, got 2 and 1"),
    (lambda: accuracy("0101", "0110"), TypeError, "got one str"),
    (lambda: accuracy([[1], [0]], [1, 0]), TypeError, "one label"),
    (lambda: precision_recall_f1([1, 0], [1, 0], average="weighted"), ValueError, "average must be one of"),
    (lambda: precision_recall_f1([0, 1, 2], [0, 1, 1]), ValueError, "use average='macro' or 'micro'"),
    (lambda: precision_recall_f1(["a", "b"], ["a", "b"]), ValueError, "pos_label=1 is not one of the labels"),
    (lambda: confusion_matrix([1], [1], labels=[1, 1]), ValueError, "without repeats"),
    (lambda: confusion_matrix(np.zeros((2, 2)), np.zeros((2, 2))), ValueError, "must be 1-D"),
    (lambda: perplexity(10.0, 0), ValueError, "n_tokens must be an integer >= 1"),
    (lambda: perplexity(-1.0, 5), ValueError, "total_nll must be a finite sum"),
    (lambda: perplexity("x", 5), TypeError, "total_nll must be a number"),
])
def test_bad_input_is_a_clear_error(call, error, match):
    with pytest.raises(error, match=match):
        call()
