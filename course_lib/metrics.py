"""Evaluation metrics: BLEU, ROUGE, classification scores and perplexity (chapter 5).

Chapters 1-4 measured a language model by its held-out log-likelihood (perplexity, bits
per character). This chapter adds the metrics used when a model's *output text* or
*labels* are scored instead:

- **BLEU** (Papineni et al. 2002) for machine translation: clipped n-gram precision of a
  hypothesis against one or more references, n = 1..4, combined by a geometric mean and
  multiplied by a brevity penalty. It is a *corpus* metric: counts are summed over all
  sentences before the ratios are taken. ``corpus_bleu`` equals ``sacrebleu.corpus_bleu``
  (Post 2018) with its defaults: the ``13a`` tokenizer of mteval-v13a, "exp" smoothing,
  case kept, no effective order (tests/test_metrics.py).
- **ROUGE** (Lin 2004) for summarization: n-gram overlap (ROUGE-N) or longest common
  subsequence (ROUGE-L) between a summary and a reference, reported as precision, recall
  and F1. ``rouge_n`` and ``rouge_l`` equal Google's ``rouge-score`` package
  (``RougeScorer([...], use_stemmer=False)``).
- **Classification**: ``accuracy``, ``confusion_matrix`` and ``precision_recall_f1``.
- **Perplexity** from a total negative log-likelihood in nats.

Correct definitions, since popular write-ups often get them wrong:

    precision = TP / (TP + FP)   of what was predicted positive, the share that is positive
    recall    = TP / (TP + FN)   of all actual positives, the share that was found
    F1        = 2 P R / (P + R) = 2 TP / (2 TP + FP + FN)

Recall is *not* TN / (TN + FP): that is specificity, the share of actual negatives
predicted negative. ROUGE is a summarization metric and BLEU a translation metric; both
count surface overlap, so a correct paraphrase with other words scores low and a fluent
but wrong sentence that reuses the reference's words scores high. Neither is a measure of
a language model itself, which is judged by held-out log-likelihood and by task metrics.

Conventions:

- A ratio whose denominator is 0 is 0 (scikit-learn's ``zero_division=0``): a classifier
  that never predicts the positive class has precision 0, not an error.
- An empty *string* is a valid text: an empty hypothesis scores BLEU 0 (as sacrebleu) and
  ROUGE 0 (as rouge-score). An empty *list* of hypotheses or labels has no score and is a
  ``ValueError``.

Scope: BLEU only with the 13a tokenizer and exp smoothing (sacrebleu's other tokenizers,
smoothing methods, lowercasing, signatures and bootstrap intervals are left out); ROUGE
without stemming and without ROUGE-Lsum; no chrF, METEOR, BERTScore. The code is written
for reading: plain Counters and a dynamic-programming table, fast enough for a chapter.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Hashable, Sequence

import numpy as np

__all__ = [
    "tokenize_13a", "ngram_counts", "modified_precision", "closest_ref_length", "brevity_penalty",
    "corpus_bleu", "sentence_bleu",
    "tokenize_rouge", "lcs_length", "rouge_n", "rouge_l",
    "accuracy", "confusion_matrix", "precision_recall_f1", "AVERAGES", "perplexity",
]

AVERAGES = ("binary", "macro", "micro")


# ----------------------------------------------------------------------------- checks

def _check_order(name: str, n) -> None:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"{name} must be an integer >= 1 (1 = unigrams), got {n!r}")


def _check_text(name: str, text) -> None:
    if not isinstance(text, str):
        raise TypeError(f"{name} must be a str, got {type(text).__name__}")


def _check_tokens(name: str, tokens) -> None:
    if isinstance(tokens, str) or not isinstance(tokens, Sequence):
        raise TypeError(f"{name} must be a list of str tokens (e.g. text.split()), got {type(tokens).__name__}")
    bad = next((t for t in tokens if not isinstance(t, str)), None)
    if bad is not None:
        raise TypeError(f"{name} must hold str tokens, found a {type(bad).__name__}")


# ----------------------------------------------------------------------------- BLEU

# mteval-v13a's tokenization (the NIST script used by WMT), step by step.
_SGML_ENTITIES = (("&quot;", '"'), ("&amp;", "&"), ("&lt;", "<"), ("&gt;", ">"))  # in this order
_RULES_13A = (
    # every ASCII symbol except ' - . , gets spaces around it; the ranges of the original
    # script are {|}~  [\]^_`  space!"#$%&  ()*+  :;<=>?@  and /
    (re.compile(r"([\{-\~\[-\` -\&\(-\+\:-\@\/])"), r" \1 "),
    (re.compile(r"([^0-9])([\.,])"), r"\1 \2 "),  # . and , split off unless after a digit
    (re.compile(r"([\.,])([^0-9])"), r" \1 \2"),  # ... or unless before a digit: 3.5 and 1,000 stay
    (re.compile(r"([0-9])(-)"), r"\1 \2 "),       # a dash after a digit: 1-2 -> 1 - 2
)


def tokenize_13a(text: str) -> list[str]:
    """Split ``text`` into tokens as mteval-v13a (sacrebleu's default ``13a`` tokenizer).

    Trailing whitespace is stripped first (as sacrebleu does), ``<skipped>`` tags and
    end-of-line hyphens are removed, lines are joined, the SGML entities ``&quot; &amp;
    &lt; &gt;`` are decoded, then punctuation is split off; apostrophes and hyphens inside
    words stay, and so do the point and comma inside numbers.

    >>> tokenize_13a("It's 3.5 km, isn't it?")
    ["It's", '3.5', 'km', ',', "isn't", 'it', '?']
    >>> tokenize_13a("R&amp;D costs 1-2 %.")
    ['R', '&', 'D', 'costs', '1', '-', '2', '%', '.']
    """
    _check_text("text", text)
    line = text.rstrip().replace("<skipped>", "").replace("-\n", "").replace("\n", " ")
    for entity, char in _SGML_ENTITIES:
        line = line.replace(entity, char)
    line = f" {line} "
    for pattern, replacement in _RULES_13A:
        line = pattern.sub(replacement, line)
    return line.split()


def ngram_counts(tokens: Sequence[str], n: int) -> Counter:
    """Count the n-grams (as tuples) of a token list.

    >>> ngram_counts(["a", "b", "a", "b"], 2)
    Counter({('a', 'b'): 2, ('b', 'a'): 1})
    """
    _check_tokens("tokens", tokens)
    _check_order("n", n)
    return Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))


def modified_precision(hyp_tokens: Sequence[str], refs_tokens: Sequence[Sequence[str]], n: int) -> tuple[int, int]:
    """Clipped n-gram matches and n-gram total of one hypothesis (Papineni et al. 2002, 2.1).

    Each hypothesis n-gram counts at most as often as it appears in the one reference
    that holds it most often. The precision is ``matches / total``; BLEU sums both over
    the corpus before dividing. The paper's example, 7 times "the" against a reference
    with 2:

    >>> modified_precision("the the the the the the the".split(), ["the cat is on the mat".split()], 1)
    (2, 7)
    """
    _check_tokens("hyp_tokens", hyp_tokens)
    if isinstance(refs_tokens, str) or not isinstance(refs_tokens, Sequence) or not refs_tokens:
        raise TypeError("refs_tokens must be a non-empty list of references, each a list of str tokens")
    if isinstance(refs_tokens[0], str):
        raise TypeError("refs_tokens must be a list of references, each a list of tokens; "
                        "for one reference pass [ref_tokens]")
    for r in refs_tokens:
        _check_tokens("each reference", r)
    hyp = ngram_counts(hyp_tokens, n)
    max_ref: Counter = Counter()
    for r in refs_tokens:
        max_ref |= ngram_counts(r, n)  # | keeps the larger count of each n-gram
    matches = sum(min(count, max_ref[g]) for g, count in hyp.items())
    return matches, sum(hyp.values())


def closest_ref_length(hyp_len: int, ref_lens: Sequence[int]) -> int:
    """The reference length closest to the hypothesis length; a tie goes to the shorter.

    >>> closest_ref_length(5, [3, 7, 9])   # 3 and 7 are both 2 away
    3
    """
    if not ref_lens:
        raise ValueError("ref_lens is empty: every hypothesis needs at least one reference")
    return min(ref_lens, key=lambda r: (abs(hyp_len - r), r))


def brevity_penalty(hyp_len: int, ref_len: int) -> float:
    """BP = 1 if c > r else exp(1 - r / c), c the hypothesis length, r the reference length.

    Precision alone rewards saying little; the penalty makes short output pay. An empty
    hypothesis (c = 0) gets 0.

    >>> brevity_penalty(10, 8), round(brevity_penalty(2, 3), 4)   # exp(1 - 3/2)
    (1.0, 0.6065)
    """
    for name, v in (("hyp_len", hyp_len), ("ref_len", ref_len)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
            raise ValueError(f"{name} must be an integer >= 0 (a number of tokens), got {v!r}")
    if hyp_len >= ref_len:
        return 1.0
    return math.exp(1 - ref_len / hyp_len) if hyp_len > 0 else 0.0


def _bleu_from_stats(matches, totals, hyp_len, ref_len, effective_order) -> float:
    """BLEU on the 0-100 scale from corpus sums, with sacrebleu's "exp" smoothing."""
    if not any(matches):
        return 0.0
    precisions, halvings = [], 0
    for m, t in zip(matches, totals):
        if t == 0:  # no hypothesis this long: the order is dropped (effective) or scores 0
            if effective_order:
                break
            return 0.0
        if m == 0:  # exp smoothing: the k-th order without a match gets 1 / (2^k * total)
            halvings += 1
            precisions.append(1.0 / (2 ** halvings * t))
        else:
            precisions.append(m / t)
    log_mean = sum(math.log(p) for p in precisions) / len(precisions)
    return 100.0 * brevity_penalty(hyp_len, ref_len) * math.exp(log_mean)


def _references_per_hypothesis(references, n_hyps: int) -> list[list[str]]:
    if isinstance(references, str) or not isinstance(references, Sequence):
        raise TypeError("references must be a list with one entry per hypothesis "
                        f"(a str or a list of str), got {type(references).__name__}")
    if len(references) != n_hyps:
        raise ValueError(
            f"got {len(references)} reference entries for {n_hyps} hypotheses; references[i] holds the "
            "reference(s) of hypotheses[i] (sacrebleu's layout is the transpose: a list of reference streams)")
    out = []
    for i, refs in enumerate(references):
        refs = [refs] if isinstance(refs, str) else refs
        if not isinstance(refs, Sequence) or any(not isinstance(r, str) for r in refs):
            raise TypeError(f"references[{i}] must be a str or a list of str, got {type(refs).__name__}")
        if not refs:
            raise ValueError(f"references[{i}] is empty: every hypothesis needs at least one reference")
        out.append(list(refs))
    return out


def corpus_bleu(hypotheses: Sequence[str], references: Sequence[str | Sequence[str]], max_order: int = 4,
                effective_order: bool = False) -> float:
    """Corpus BLEU on the 0-100 scale, equal to ``sacrebleu.corpus_bleu(hypotheses, streams).score``.

    ``references[i]`` is the reference of ``hypotheses[i]`` (a str) or its references (a
    list of str; hypotheses may have different numbers of them). sacrebleu takes the
    transpose, a list of reference *streams* each as long as the corpus, with ``None``
    where a hypothesis has fewer references:
    ``streams = [[r[j] if j < len(r) else None for r in refs] for j in range(max(map(len, refs)))]``.

    Per sentence: 13a tokens, clipped n-gram matches and totals for n = 1..max_order, and
    the closest reference length. Over the corpus: the sums give p_n = matches_n / total_n
    and BLEU = BP(sum of hypothesis lengths, sum of closest reference lengths) * exp(mean
    of log p_n). An order with no match gets sacrebleu's "exp" smoothing (the k-th such
    order counts as 1 / (2^k * total_n)); a corpus without a single match scores 0, as does
    one with no n-gram of some order unless ``effective_order`` drops those orders.

    >>> corpus_bleu(["the cat sat on the mat"], ["the cat sat on the mat"])
    100.0
    >>> round(corpus_bleu(["the cat sat on a mat"], ["the cat sat on the mat"]), 2)
    53.73
    >>> round(corpus_bleu(["the cat sat on a mat"], [["the cat sat on the mat", "the dog sat on a rug"]]), 2)
    66.87
    """
    if isinstance(hypotheses, str) or not isinstance(hypotheses, Sequence):
        raise TypeError(f"hypotheses must be a list of str; for one sentence pass [text], "
                        f"got {type(hypotheses).__name__}")
    if len(hypotheses) == 0:
        raise ValueError("hypotheses is empty: BLEU of an empty corpus is undefined")
    for i, h in enumerate(hypotheses):
        _check_text(f"hypotheses[{i}]", h)
    _check_order("max_order", max_order)
    refs_per_hyp = _references_per_hypothesis(references, len(hypotheses))

    matches, totals = [0] * max_order, [0] * max_order
    hyp_len = ref_len = 0
    for hyp, refs in zip(hypotheses, refs_per_hyp):
        hyp_tokens = tokenize_13a(hyp)
        refs_tokens = [tokenize_13a(r) for r in refs]
        hyp_len += len(hyp_tokens)
        ref_len += closest_ref_length(len(hyp_tokens), [len(r) for r in refs_tokens])
        for n in range(1, max_order + 1):
            m, t = modified_precision(hyp_tokens, refs_tokens, n)
            matches[n - 1] += m
            totals[n - 1] += t
    return _bleu_from_stats(matches, totals, hyp_len, ref_len, effective_order)


def sentence_bleu(hypothesis: str, references: str | Sequence[str], max_order: int = 4,
                  effective_order: bool = True) -> float:
    """BLEU of one sentence, equal to ``sacrebleu.sentence_bleu(hypothesis, references).score``.

    As in sacrebleu, ``effective_order`` is on here: orders longer than the hypothesis are
    left out of the mean, so a two-word hypothesis can score above 0. BLEU was designed
    for corpora; a single sentence gives a noisy number.

    >>> round(sentence_bleu("the cat", "the cat sat"), 2)   # BP = exp(1 - 3/2), p1 = p2 = 1
    60.65
    """
    _check_text("hypothesis", hypothesis)
    return corpus_bleu([hypothesis], [references], max_order=max_order, effective_order=effective_order)


# ----------------------------------------------------------------------------- ROUGE

_ALNUM = re.compile(r"[a-z0-9]+")


def tokenize_rouge(text: str) -> list[str]:
    """rouge-score's default tokens: lowercase, every non-``[a-z0-9]`` character is a separator.

    >>> tokenize_rouge("The cat's 2nd mat-rug!")
    ['the', 'cat', 's', '2nd', 'mat', 'rug']
    """
    _check_text("text", text)
    return _ALNUM.findall(text.lower())


def _prf(overlap: int, hyp_count: int, ref_count: int) -> dict[str, float]:
    precision = overlap / hyp_count if hyp_count else 0.0
    recall = overlap / ref_count if ref_count else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


def rouge_n(hypothesis: str, reference: str, n: int) -> dict[str, float]:
    """ROUGE-N (Lin 2004): n-gram overlap of a summary with a reference.

    overlap = sum over n-grams of min(count in hypothesis, count in reference);
    precision = overlap / hypothesis n-grams, recall = overlap / reference n-grams (the
    score ROUGE was first defined by), F1 their harmonic mean. Equals rouge-score's
    ``RougeScorer([f"rouge{n}"]).score(reference, hypothesis)``: note that rouge-score
    takes the reference (its "target") first.

    >>> rouge_n("the cat sat", "the cat sat on the mat", 1)["recall"]   # 3 of 6 reference words
    0.5
    """
    _check_text("hypothesis", hypothesis)
    _check_text("reference", reference)
    _check_order("n", n)
    hyp = ngram_counts(tokenize_rouge(hypothesis), n)
    ref = ngram_counts(tokenize_rouge(reference), n)
    overlap = sum((hyp & ref).values())  # & keeps the smaller count of each n-gram
    return _prf(overlap, sum(hyp.values()), sum(ref.values()))


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence (in order, gaps allowed), by dynamic programming.

    >>> lcs_length("the cat sat on the mat".split(), "the mat sat on a cat".split())   # the sat on
    3
    """
    _check_tokens("a", a)
    _check_tokens("b", b)
    prev = [0] * (len(b) + 1)  # prev[j] = LCS of a[:i-1] and b[:j]
    for x in a:
        cur = [0]
        for j, y in enumerate(b, start=1):
            cur.append(prev[j - 1] + 1 if x == y else max(prev[j], cur[j - 1]))
        prev = cur
    return prev[-1]


def rouge_l(hypothesis: str, reference: str) -> dict[str, float]:
    """ROUGE-L (Lin 2004), sentence level: P = LCS / hypothesis length, R = LCS / reference length.

    Word order counts without requiring consecutive matches. Equals rouge-score's
    ``"rougeL"`` (not ``"rougeLsum"``, which splits summaries into sentences).

    >>> rouge_l("the mat sat on a cat", "the cat sat on the mat")["f1"]
    0.5
    """
    _check_text("hypothesis", hypothesis)
    _check_text("reference", reference)
    hyp, ref = tokenize_rouge(hypothesis), tokenize_rouge(reference)
    return _prf(lcs_length(hyp, ref), len(hyp), len(ref))


# ----------------------------------------------------------------------------- classification

def _labels(name: str, y) -> list:
    if isinstance(y, str):
        raise TypeError(f"{name} must be a list of labels, got one str; for characters as labels pass list(text)")
    if isinstance(y, np.ndarray):
        if y.ndim != 1:
            raise ValueError(f"{name} must be 1-D (one label per example), got shape {y.shape}")
        return y.tolist()
    try:
        y = list(y)
    except TypeError:
        raise TypeError(f"{name} must be a sequence of labels, got {type(y).__name__}") from None
    for v in y:
        if not isinstance(v, Hashable):
            raise TypeError(f"{name} must hold one label (int, str, ...) per example, found a {type(v).__name__}")
    return y


def _pair(y_true, y_pred) -> tuple[list, list]:
    y_true, y_pred = _labels("y_true", y_true), _labels("y_pred", y_pred)
    if len(y_true) != len(y_pred):
        raise ValueError(f"y_true and y_pred must have the same length, got {len(y_true)} and {len(y_pred)}")
    if not y_true:
        raise ValueError("y_true and y_pred are empty: the score of no examples is undefined")
    return y_true, y_pred


def _sorted_labels(*ys) -> list:
    present = set().union(*ys)
    try:
        return sorted(present)
    except TypeError:
        raise TypeError(f"labels of different kinds cannot be ordered: {present!r}") from None


def accuracy(y_true, y_pred) -> float:
    """Share of examples whose predicted label equals the true one.

    >>> accuracy([1, 0, 1, 1], [1, 1, 1, 0])
    0.5
    """
    y_true, y_pred = _pair(y_true, y_pred)
    return sum(t == p for t, p in zip(y_true, y_pred)) / len(y_true)


def confusion_matrix(y_true, y_pred, labels=None) -> np.ndarray:
    """Counts C[i, j] of examples with true label ``labels[i]`` predicted as ``labels[j]``.

    Rows are the truth, columns the prediction (scikit-learn's layout). ``labels`` defaults
    to the sorted labels present; given, it orders the rows and columns, and examples with
    a label outside it are left out. For binary labels [0, 1]: ``[[TN, FP], [FN, TP]]``.

    >>> confusion_matrix([1, 0, 1, 1], [1, 1, 1, 0]).tolist()
    [[0, 1], [1, 2]]
    """
    y_true, y_pred = _pair(y_true, y_pred)
    if labels is None:
        labels = _sorted_labels(y_true, y_pred)
    else:
        labels = _labels("labels", labels)
        if not labels or len(set(labels)) != len(labels):
            raise ValueError(f"labels must be a non-empty list without repeats, got {labels!r}")
    index = {label: i for i, label in enumerate(labels)}
    cm = np.zeros((len(labels), len(labels)), dtype=np.int64)
    for t, p in zip(y_true, y_pred):
        if t in index and p in index:
            cm[index[t], index[p]] += 1
    return cm


def precision_recall_f1(y_true, y_pred, average: str = "binary", pos_label=1) -> dict[str, float]:
    """Precision TP/(TP+FP), recall TP/(TP+FN) and F1 = 2TP/(2TP+FP+FN); 0/0 counts as 0.

    ``average``:

    - ``"binary"``: the class ``pos_label`` against the rest (at most two labels present);
    - ``"macro"``: each class in turn is positive; the unweighted mean of the per-class
      precisions, recalls and F1s (so macro F1 is not the F1 of macro P and R);
    - ``"micro"``: TP, FP, FN summed over the classes first; with one label per example
      every error is one FP and one FN, so micro P = R = F1 = accuracy.

    ``pos_label`` is used by ``"binary"`` only. The conventions are scikit-learn's
    (``precision_recall_fscore_support`` with ``zero_division=0``).

    >>> precision_recall_f1([1, 1, 1, 0, 0], [1, 0, 0, 1, 0])   # TP=1, FP=1, FN=2
    {'precision': 0.5, 'recall': 0.3333333333333333, 'f1': 0.4}
    """
    if average not in AVERAGES:
        raise ValueError(f"average must be one of {AVERAGES}, got {average!r}")
    y_true, y_pred = _pair(y_true, y_pred)
    labels = _sorted_labels(y_true, y_pred)
    if average == "binary":
        if len(labels) > 2:
            raise ValueError(f"average='binary' needs at most two labels, found {len(labels)}: {labels!r}; "
                             "use average='macro' or 'micro'")
        if pos_label not in labels and len(labels) == 2:
            raise ValueError(f"pos_label={pos_label!r} is not one of the labels {labels!r}")
        classes = [pos_label]
    else:
        classes = labels
    counts = []  # (TP, FP, FN) per class
    for c in classes:
        tp = sum(t == c and p == c for t, p in zip(y_true, y_pred))
        fp = sum(t != c and p == c for t, p in zip(y_true, y_pred))
        fn = sum(t == c and p != c for t, p in zip(y_true, y_pred))
        counts.append((tp, fp, fn))
    if average == "micro":
        counts = [tuple(map(sum, zip(*counts)))]
    scores = [_prf(tp, tp + fp, tp + fn) for tp, fp, fn in counts]
    return {k: sum(s[k] for s in scores) / len(scores) for k in ("precision", "recall", "f1")}


# ----------------------------------------------------------------------------- perplexity

def perplexity(total_nll: float, n_tokens: int) -> float:
    """exp(total_nll / n_tokens): the perplexity of a model on ``n_tokens`` predicted tokens.

    ``total_nll`` is the summed negative log-likelihood in **nats** (natural log), e.g. a
    mean cross-entropy loss times the number of tokens. In bits per token,
    b = total_nll / (n_tokens ln 2) and perplexity = 2^b. A uniform guess over V tokens
    has perplexity V. Per-token perplexity depends on what a token is: compare models with
    different tokenizers in bits per character instead.

    >>> round(perplexity(4 * math.log(10), 4), 6)   # uniform over 10 tokens
    10.0
    """
    if isinstance(n_tokens, bool) or not isinstance(n_tokens, (int, np.integer)) or n_tokens < 1:
        raise ValueError(f"n_tokens must be an integer >= 1 (the number of predicted tokens), got {n_tokens!r}")
    try:
        total_nll = float(total_nll)
    except (TypeError, ValueError):
        raise TypeError(f"total_nll must be a number (nats), got {type(total_nll).__name__}") from None
    if not math.isfinite(total_nll) or total_nll < 0:
        raise ValueError(f"total_nll must be a finite sum of -log P >= 0 in nats, got {total_nll!r}")
    return math.exp(total_nll / n_tokens)
