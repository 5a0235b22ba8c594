"""Scoring speed of course_lib.ngram against nltk.lm on the course corpus (word level).

Both libraries fit a word trigram model on the training plays; the test plays are scored.
nltk.lm scores one n-gram per call (``lm.score(word, context)``, pure Python), so its time
is taken per call on a fixed, seeded sample of test trigrams. course_lib scores a whole
test set in one vectorized pass (``NGramLM.logprobs``), so its time is that pass divided
by the number of tokens scored. The ratio of the two is the speed-up per scored token;
the target is course_lib at least 1000x faster.

The same run checks that the two libraries compute the same thing where they should:
MLE and Laplace perplexities must agree to a relative difference below 1e-9.

Data: one sentence per non-empty line of each play, tokens by ``nltk.wordpunct_tokenize``;
sentences are padded with two ``<s>`` and two ``</s>`` (nltk's ``pad_both_ends``).

    python benchmarks/bench_ngram.py               # the full corpus
    python benchmarks/bench_ngram.py --quick       # a few plays, for a smoke test

Scope: timings only, printed; nothing is written to disk and nothing is asserted about
speed. A failed perplexity check raises AssertionError (exit status 1).
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import random
import sys
import time

import nltk
import numpy as np
from nltk.lm import MLE, KneserNeyInterpolated, Laplace
from nltk.lm.preprocessing import pad_both_ends, padded_everygram_pipeline
from nltk.util import ngrams

import course_lib
from course_lib.data import load_split
from course_lib.ngram import NGramLM

ORDER = 3
TARGET_SPEEDUP = 1000.0
RELATIVE_TOLERANCE = 1e-9


def sentences_of(plays) -> list[list[str]]:
    """One sentence per non-empty line of each play, tokenized by ``wordpunct_tokenize``.

    A line such as ``"Who's there?"`` becomes ``['Who', "'", 's', 'there', '?']``.
    """
    out = []
    for play in plays:
        for line in play.text.splitlines():
            if line.strip():
                out.append(nltk.wordpunct_tokenize(line))
    return out


def padded_ngrams(sentences, order: int = ORDER) -> list[tuple[str, ...]]:
    """Every n-gram of the padded sentences: one per scored token (as nltk's perplexity)."""
    return [g for s in sentences for g in ngrams(pad_both_ends(s, n=order), order)]


def relative_difference(a: float, b: float) -> float:
    """|a - b| / max(|a|, |b|); 0 when both are equal (including both infinite)."""
    if a == b:
        return 0.0
    if not (math.isfinite(a) and math.isfinite(b)):
        return math.inf
    return abs(a - b) / max(abs(a), abs(b))


def check_same(name: str, theirs: float, ours: float,
               tolerance: float = RELATIVE_TOLERANCE) -> float:
    """Print both values and raise AssertionError if they differ by more than ``tolerance``
    (relative); returns the relative difference."""
    diff = relative_difference(theirs, ours)
    verdict = "same" if diff < tolerance else "DIFFERENT"
    print(f"  {name:<40} nltk {theirs:.12g}   course_lib {ours:.12g}   "
          f"relative difference {diff:.2e} ({verdict})")
    if not diff < tolerance:
        raise AssertionError(
            f"{name}: nltk gives {theirs!r}, course_lib {ours!r}; "
            f"relative difference {diff:.3e} is not below {tolerance:g}"
        )
    return diff


def describe_machine() -> str:
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        usable = os.cpu_count()
    return (
        f"machine: {platform.machine()} {platform.system()}, {os.cpu_count()} cores "
        f"({usable} usable); python {platform.python_version()}, numpy {np.__version__}, "
        f"nltk {nltk.__version__}, course_lib {course_lib.__version__}"
    )


def timed(fn):
    """(result, seconds) of one call of ``fn``."""
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="train on 3 training plays and test on 1 test play (a smoke test)")
    parser.add_argument("--nltk-sample", type=int, default=None,
                        help="test trigrams that nltk scores one call at a time "
                             "(default 200; 20 with --quick)")
    parser.add_argument("--repeats", type=int, default=5,
                        help="course_lib timings take the best of this many runs (default 5)")
    parser.add_argument("--seed", type=int, default=1337, help="seed of the trigram sample")
    args = parser.parse_args(argv)
    if args.nltk_sample is None:
        args.nltk_sample = 20 if args.quick else 200
    if args.nltk_sample < 1 or args.repeats < 1:
        parser.error("--nltk-sample and --repeats must be at least 1")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    print(describe_machine())

    train_plays, test_plays = load_split("train"), load_split("test")
    if args.quick:
        train_plays, test_plays = train_plays[:3], test_plays[:1]
    train, test = sentences_of(train_plays), sentences_of(test_plays)
    plural = "s" if len(test_plays) > 1 else ""
    print(f"data: {len(train_plays)} train plays, {len(train):,} sentences, "
          f"{sum(map(len, train)):,} tokens; {len(test_plays)} test play{plural} "
          f"({', '.join(p.name for p in test_plays)}), {len(test):,} sentences, "
          f"{sum(map(len, test)):,} tokens")

    # ---------------------------------------------------------------- fitting
    print(f"\nfitting word {ORDER}-gram models on the train sentences")
    nltk_kn = KneserNeyInterpolated(ORDER)
    _, seconds = timed(lambda: nltk_kn.fit(*padded_everygram_pipeline(ORDER, train)))
    discount = nltk_kn.estimator.discount
    print(f"  nltk KneserNeyInterpolated({ORDER}) fit: {seconds:.1f} s "
          f"(vocabulary {len(nltk_kn.vocab):,} with <s>, </s>, <UNK>; discount {discount})")
    ours_kn, seconds = timed(lambda: NGramLM(ORDER, "kneser_ney", discount=discount).fit(train))
    print(f"  course_lib NGramLM({ORDER}, 'kneser_ney', discount={discount}) fit: {seconds:.2f} s "
          f"(vocabulary {len(ours_kn.vocab):,} with <s>, </s>, <unk>)")

    # ---------------------------------------------------------------- scoring speed
    test_grams = padded_ngrams(test)
    sample = random.Random(args.seed).sample(test_grams, min(args.nltk_sample, len(test_grams)))
    print(f"\nscoring speed ({len(test_grams):,} scored test tokens: each real token and "
          f"{ORDER - 1} </s> per sentence)")
    nltk_scores, seconds = timed(lambda: [nltk_kn.score(g[-1], g[:-1]) for g in sample])
    nltk_per_score = seconds / len(sample)
    print(f"  nltk lm.score(word, context), {len(sample)} seeded test trigrams: "
          f"{nltk_per_score * 1e3:.2f} ms/score")
    if not all(0.0 <= p <= 1.0 for p in nltk_scores):  # nltk's KN gives 0 to unknown words
        raise AssertionError("nltk gave a score outside [0, 1] on the sample")

    _, seconds = timed(lambda: [ours_kn.prob(g[-1], g[:-1]) for g in sample])
    print(f"  course_lib prob(word, context), the same trigrams one call at a time: "
          f"{seconds / len(sample) * 1e6:.1f} us/score")

    best = math.inf
    for _ in range(args.repeats):
        logprobs, seconds = timed(lambda: ours_kn.logprobs(test))
        best = min(best, seconds)
    if len(logprobs) != len(test_grams) or not np.all(np.isfinite(logprobs)):
        raise AssertionError("course_lib did not give one finite log-probability per scored token")
    ours_per_token = best / len(logprobs)
    print(f"  course_lib logprobs(test sentences), all {len(logprobs):,} tokens in one pass: "
          f"best of {args.repeats} {best * 1e3:.1f} ms, {ours_per_token * 1e6:.3f} us/token")

    ratio = nltk_per_score / ours_per_token
    met = "met" if ratio >= TARGET_SPEEDUP else "NOT met"
    print(f"  speed ratio (nltk time per score / course_lib time per token): {ratio:,.0f}x "
          f"(target >= {TARGET_SPEEDUP:,.0f}x: {met})")

    # ---------------------------------------------------------------- same numbers
    # MLE and Laplace read the counts of the same fit (nltk's models take a vocabulary
    # and a counter). Unknown test words are "<UNK>" in nltk and "<unk>" in course_lib;
    # both have count 0 and the same vocabulary size, so the scores are like-for-like.
    print("\nperplexity check (relative difference must be below "
          f"{RELATIVE_TOLERANCE:g})")
    nltk_mle = MLE(ORDER, vocabulary=nltk_kn.vocab, counter=nltk_kn.counts)
    nltk_laplace = Laplace(ORDER, vocabulary=nltk_kn.vocab, counter=nltk_kn.counts)
    ours_mle, ours_laplace = NGramLM(ORDER, "mle").fit(train), NGramLM(ORDER, "laplace").fit(train)
    if len(nltk_kn.vocab) != len(ours_mle.vocab):
        raise AssertionError(f"vocabulary sizes differ: nltk {len(nltk_kn.vocab)}, "
                             f"course_lib {len(ours_mle.vocab)}")
    train_grams = padded_ngrams(train)
    check_same(f"MLE, train sentences ({len(train_grams):,} tokens)",
               nltk_mle.perplexity(train_grams), ours_mle.perplexity(train))
    check_same("MLE, test sentences (unseen trigrams)",
               nltk_mle.perplexity(test_grams), ours_mle.perplexity(test))
    check_same(f"Laplace, test sentences ({len(test_grams):,} tokens)",
               nltk_laplace.perplexity(test_grams), ours_laplace.perplexity(test))
    print("  all perplexities agree")
    return 0


if __name__ == "__main__":
    sys.exit(main())
