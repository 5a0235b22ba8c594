"""Counting n-gram language models with smoothing (chapter 1).

An n-gram model predicts each token from the n-1 tokens before it (the Markov
assumption) using counts from a training corpus:

    P_MLE(w | v) = C(v w) / C(v .)            e.g. C("the cat") / C("the ...")

where C(v .) counts the occurrences of the context v followed by any token. Smoothing
moves probability mass to unseen n-grams: ``"mle"`` (none), ``"laplace"`` / ``"add_k"``,
``"interpolated"`` (Jelinek-Mercer) and ``"kneser_ney"`` (interpolated Kneser-Ney,
Kneser & Ney 1995; Chen & Goodman 1998), with one discount or the count-dependent
discounts of modified Kneser-Ney.

Sentences are padded as nltk.lm does (``pad_both_ends``): n-1 ``<s>`` before and n-1
``</s>`` after, so MLE and Laplace agree with ``nltk.lm.MLE`` / ``nltk.lm.Laplace``
(tests/test_ngram.py). A sentence is any sequence of string tokens; a plain ``str`` is a
sequence of characters, so ``NGramLM(5).fit(["to be", "or not"])`` is a character model.

    >>> lm = NGramLM(2, smoothing="mle").fit([["a", "b", "a"], ["b", "a"]])
    >>> lm.prob("a", ["b"])   # C(b a) / C(b .) = 2 / 2
    1.0
    >>> lm.prob("b", ["a"])   # C(a b) / C(a .) = 1 / 3
    0.3333333333333333

How it stays fast: every k-gram gets an integer id; the key of a k-gram is
``id(its first k-1 tokens) * V + last token``, so all counting is ``np.unique`` over
integer arrays and all scoring is ``np.searchsorted`` (table look-ups, no Python loop
over tokens). A whole test set is scored at once by ``logprobs``.

Scope: no pruning, no on-disk format, no class-based or cache models; the book explains
what the counts are, the code keeps them in arrays.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np

__all__ = ["NGramLM", "BOS", "EOS", "UNK", "SMOOTHINGS", "pad_sentence", "bits_per_char"]

BOS, EOS, UNK = "<s>", "</s>", "<unk>"
SMOOTHINGS = ("mle", "laplace", "add_k", "interpolated", "kneser_ney")
_BOS_ID, _EOS_ID, _UNK_ID = 0, 1, 2


def pad_sentence(sentence: Sequence[str], order: int) -> list[str]:
    """Pad with ``order - 1`` start and end symbols, as ``nltk.lm.preprocessing.pad_both_ends``.

    >>> pad_sentence(["a", "b"], 3)
    ['<s>', '<s>', 'a', 'b', '</s>', '</s>']
    """
    return [BOS] * (order - 1) + list(sentence) + [EOS] * (order - 1)


def _check_sentences(sentences) -> list[Sequence[str]]:
    if isinstance(sentences, str):
        raise TypeError(
            "expected a list of sentences (each a str of characters or a list of tokens), "
            "got one str; wrap it in a list: [text]"
        )
    try:
        sentences = list(sentences)
    except TypeError:
        raise TypeError(f"expected an iterable of sentences, got {type(sentences).__name__}") from None
    for i, s in enumerate(sentences):
        if isinstance(s, str):
            continue
        if not isinstance(s, Sequence) or any(not isinstance(t, str) for t in s):
            raise TypeError(
                f"sentence {i} must be a str or a sequence of str tokens, got {type(s).__name__}"
                + (f" containing {type(next(t for t in s if not isinstance(t, str))).__name__}"
                   if isinstance(s, Sequence) else "")
            )
    return sentences


def _check_discount(discount, scale) -> None:
    if isinstance(discount, str):
        if discount != "modified":
            raise ValueError(f"discount must be a float in (0, 1] or 'modified', got {discount!r}")
    elif isinstance(discount, bool) or not isinstance(discount, (int, float)) or not 0 < discount <= 1:
        raise ValueError(f"a single Kneser-Ney discount must be a number in (0, 1], got {discount!r}")
    if not (isinstance(scale, (int, float)) and 0 < scale < math.inf):
        raise ValueError(f"discount_scale must be a positive number, got {scale!r}")
    if scale != 1.0 and discount != "modified":
        raise ValueError("discount_scale applies to discount='modified' only")


class NGramLM:
    """An n-gram language model over string tokens (words or characters).

    Args:
        order: n, the number of tokens in an n-gram (1 = unigram).
        smoothing: one of ``SMOOTHINGS``.
        k: the pseudo-count of add-k smoothing (``"laplace"`` is k=1).
        lam: weight of the higher order in Jelinek-Mercer interpolation,
            P_k = lam * P_MLE,k + (1 - lam) * P_(k-1).
        discount: Kneser-Ney discount; a float D in (0, 1] for every order, or
            ``"modified"`` for the count-dependent discounts D1, D2, D3+ of modified
            Kneser-Ney, estimated per order from counts of counts (Chen & Goodman 1998).
        discount_scale: multiplies the estimated modified discounts (each clipped to
            D1 <= 1, D2 <= 2, D3+ <= 3), a single knob to tune on validation data;
            ``set_discount`` changes it without counting again.
        min_count: tokens seen fewer times in training become ``<unk>``.

    ``vocab`` lists the tokens the model knows: ``<s>``, ``</s>``, ``<unk>``, then the
    training tokens, sorted. Add-k divides by ``len(vocab)`` as nltk.lm does; for a unigram
    model nltk pads nothing, so its vocabulary has two entries fewer than ours.
    """

    def __init__(self, order: int, smoothing: str = "kneser_ney", *, k: float = 1.0,
                 lam: float = 0.7, discount: float | str = 0.75, discount_scale: float = 1.0,
                 min_count: int = 1):
        if isinstance(order, bool) or not isinstance(order, (int, np.integer)) or order < 1:
            raise ValueError(f"order must be an integer >= 1, got {order!r}")
        if smoothing not in SMOOTHINGS:
            raise ValueError(f"unknown smoothing {smoothing!r}; expected one of {SMOOTHINGS}")
        if smoothing == "laplace":
            k = 1.0
        if not k > 0:
            raise ValueError(f"add-k needs k > 0, got {k}")
        if not 0 < lam <= 1:
            raise ValueError(f"lam must be in (0, 1], got {lam}")
        _check_discount(discount, discount_scale)
        if not isinstance(min_count, (int, np.integer)) or min_count < 1:
            raise ValueError(f"min_count must be an integer >= 1, got {min_count!r}")
        self.order = int(order)
        self.smoothing = smoothing
        self.k, self.lam, self.min_count = float(k), float(lam), int(min_count)
        self.discount, self.discount_scale = discount, float(discount_scale)
        self.vocab: list[str] | None = None  # id -> token; <s>, </s>, <unk> first
        self._fitted = False

    def __repr__(self) -> str:
        extra = {"laplace": "", "add_k": f", k={self.k}", "interpolated": f", lam={self.lam}",
                 "kneser_ney": f", discount={self.discount!r}"
                 + (f", discount_scale={self.discount_scale}" if self.discount_scale != 1 else ""),
                 "mle": ""}[self.smoothing]
        size = f", |V|={len(self.vocab)}" if self._fitted else ", unfitted"
        return f"NGramLM(order={self.order}, smoothing={self.smoothing!r}{extra}{size})"

    # ------------------------------------------------------------------ fitting
    def fit(self, sentences: Iterable[Sequence[str]], vocab: Iterable[str] | None = None) -> NGramLM:
        """Count every k-gram (k = 1..n) of the padded training sentences; returns self.

        ``vocab``: the tokens the model knows, given instead of those seen ``min_count``
        times (which then does not apply); training tokens outside it count as ``<unk>``.
        Models fitted on different texts with one ``vocab`` give probabilities over the
        same tokens, as a Naive Bayes classifier needs (one model per class).
        """
        sentences = _check_sentences(sentences)
        n = self.order
        total_tokens = sum(len(s) for s in sentences)
        if total_tokens == 0:
            raise ValueError("cannot fit an n-gram model on an empty corpus (no tokens)")

        # vocabulary: <s>, </s>, <unk>, then every token seen >= min_count times (or vocab), sorted
        if vocab is None:
            counts: dict[str, int] = {}
            for s in sentences:
                for t in s:
                    counts[t] = counts.get(t, 0) + 1
            kept = sorted(t for t, c in counts.items() if c >= self.min_count and t not in (BOS, EOS, UNK))
        else:
            if isinstance(vocab, str):
                raise TypeError("vocab must be a collection of str tokens, got one str; for characters pass "
                                "set(text)")
            vocab = list(vocab)
            bad = next((t for t in vocab if not isinstance(t, str)), None)
            if bad is not None:
                raise TypeError(f"vocab must hold str tokens, found a {type(bad).__name__}")
            kept = sorted(set(vocab) - {BOS, EOS, UNK})
        self.vocab = [BOS, EOS, UNK] + kept
        self._index = {t: i for i, t in enumerate(self.vocab)}
        V = len(self.vocab)
        # predictable tokens: every vocabulary entry but <s>
        self._n_predictable = V - 1

        x, offset = self._encode(sentences)
        predicted = offset >= n - 1  # positions whose token is predicted (not a <s> pad)
        self._keys: list[np.ndarray] = [np.zeros(1, dtype=np.int64)]  # order 0: one empty context
        self._count: list[np.ndarray] = [np.array([predicted.sum()], dtype=np.float64)]
        self._cont: list[np.ndarray | None] = [None] * (n + 1)  # continuation counts N1+(. g)
        gid_prev = np.zeros(len(x), dtype=np.int64)  # id of the (k-1)-gram ending at each position
        pos = np.flatnonzero(predicted)
        for k in range(1, n + 1):
            inside = offset >= k - 1  # the k-gram ending here lies inside its padded sentence
            prefix = np.zeros(len(x), dtype=np.int64)
            prefix[1:] = gid_prev[:-1]
            keys = prefix * V + x  # (k-1)-gram id * V + token
            uniq, inv = np.unique(keys[inside], return_inverse=True)
            gid = np.full(len(x), -1, dtype=np.int64)
            gid[inside] = inv
            self._keys.append(uniq)
            self._count.append(np.bincount(gid[pos], minlength=len(uniq)).astype(np.float64))
            if k > 1:
                # N1+(. g) of each (k-1)-gram g: how many distinct tokens precede it, i.e.
                # how many distinct k-grams end with it. gid_prev at a position is the
                # (k-1)-gram ending there, the suffix of the k-gram ending there.
                first = np.full(len(uniq), -1, dtype=np.int64)
                first[gid[pos][::-1]] = pos[::-1]  # one occurrence of each k-gram seen
                seen = np.flatnonzero(first >= 0)
                suffix = gid_prev[first[seen]]
                self._cont[k - 1] = np.bincount(suffix, minlength=len(self._keys[k - 1])).astype(np.float64)
            gid_prev = gid
        self._cont[n] = self._count[n]  # the highest order uses raw counts
        self._build_tables()
        self._fitted = True
        return self

    def _encode(self, sentences) -> tuple[np.ndarray, np.ndarray]:
        """Token ids of all padded sentences, concatenated, and each position's offset
        inside its padded sentence."""
        n = self.order
        ids, offsets = [], []
        for s in sentences:
            body = self._lookup(s)
            ids.append(np.concatenate([np.full(n - 1, _BOS_ID), body, np.full(n - 1, _EOS_ID)]))
            offsets.append(np.arange(len(body) + 2 * (n - 1)))
        if not ids:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
        return np.concatenate(ids).astype(np.int64), np.concatenate(offsets).astype(np.int64)

    def _lookup(self, tokens: Sequence[str]) -> np.ndarray:
        index = self._index
        if isinstance(tokens, str) and len(tokens) > 10_000:
            # characters of a long text: map through the code points (fast for whole plays)
            codes = np.frombuffer(tokens.encode("utf-32-le"), dtype=np.uint32)
            uniq, inv = np.unique(codes, return_inverse=True)
            table = np.array([index.get(chr(c), _UNK_ID) for c in uniq], dtype=np.int64)
            return table[inv]
        return np.fromiter((index.get(t, _UNK_ID) for t in tokens), dtype=np.int64, count=len(tokens))

    # ------------------------------------------------------------------ tables
    def _build_tables(self) -> None:
        """Per order, the probability parts that scoring only has to look up."""
        n, V = self.order, len(self.vocab)
        self._ctx_total, self._gamma, self._head = [None], [None], [None]
        self.discounts: list[tuple[float, float, float] | None] = [None]
        for k in range(1, n + 1):
            kn = self.smoothing == "kneser_ney"
            c = self._cont[k] if kn else self._count[k]
            ctx = self._keys[k] // V  # the (k-1)-gram id of each k-gram
            n_ctx = len(self._keys[k - 1])
            total = np.bincount(ctx, weights=c, minlength=n_ctx)
            self._ctx_total.append(total)
            if kn:
                D = self._discounts_for(c)
                self.discounts.append(D)
                d_of = np.select([c == 0, c == 1, c == 2], [0.0, D[0], D[1]], D[2])
                with np.errstate(divide="ignore", invalid="ignore"):
                    head = np.where(total[ctx] > 0, (c - d_of) / total[ctx], 0.0)
                    mass = np.bincount(ctx, weights=d_of, minlength=n_ctx)  # sum_w D(c(v w))
                    gamma = np.where(total > 0, mass / total, 1.0)
                self._head.append(head)
                self._gamma.append(gamma)
            else:
                self.discounts.append(None)
                self._head.append(None)
                self._gamma.append(None)

    def _discounts_for(self, c: np.ndarray) -> tuple[float, float, float]:
        if self.discount != "modified":
            d = float(self.discount)
            return d, d, d
        n1, n2, n3, n4 = (float(np.sum(c == i)) for i in (1, 2, 3, 4))
        if min(n1, n2, n3, n4) == 0:  # too little data for the estimate: one discount
            return 0.75, 0.75, 0.75
        y = n1 / (n1 + 2 * n2)
        d1, d2, d3 = 1 - 2 * y * n2 / n1, 2 - 3 * y * n3 / n2, 3 - 4 * y * n4 / n3
        s = self.discount_scale
        return tuple(float(np.clip(d * s, 0.0, m)) for d, m in ((d1, 1), (d2, 2), (d3, 3)))

    def set_discount(self, discount: float | str, discount_scale: float = 1.0) -> NGramLM:
        """Change the Kneser-Ney discounts of a fitted model without counting again
        (fast: only the probability tables are rebuilt); returns self."""
        self._require_fitted()
        if self.smoothing != "kneser_ney":
            raise ValueError(f"set_discount applies to kneser_ney models, not {self.smoothing!r}")
        _check_discount(discount, discount_scale)
        self.discount, self.discount_scale = discount, float(discount_scale)
        self._build_tables()
        return self

    # ------------------------------------------------------------------ scoring
    def _require_fitted(self) -> None:
        if not self._fitted:
            raise RuntimeError("this NGramLM is not fitted yet: call .fit(sentences) first")

    def _find(self, k: int, keys: np.ndarray) -> np.ndarray:
        """Index of each key in the sorted k-gram table, or -1 where absent."""
        table = self._keys[k]
        idx = np.searchsorted(table, keys)
        idx = np.minimum(idx, len(table) - 1)
        return np.where(table[idx] == keys, idx, -1)

    def _gram_ids(self, x: np.ndarray) -> list[np.ndarray]:
        """For a token-id array, the id of the j-gram ending at each position, for
        j = 0..n-1 (-1 where that j-gram was never seen in training)."""
        out = [np.zeros(len(x), dtype=np.int64)]
        for j in range(1, self.order):
            if j == 1:
                prev = np.zeros(len(x), dtype=np.int64)  # the empty (0-gram) prefix
            else:
                prev = np.full(len(x), -1, dtype=np.int64)
                prev[1:] = out[-1][:-1]  # the (j-1)-gram ending one position earlier
            out.append(self._grams_after(j, prev, x))
        return out

    def _grams_after(self, k: int, cid: np.ndarray, tokens: np.ndarray) -> np.ndarray:
        """Ids of the k-grams (context id ``cid`` (N,), then ``tokens`` (N,)), -1 if unseen."""
        ok = cid >= 0
        gid = np.full(len(tokens), -1, dtype=np.int64)
        gid[ok] = self._find(k, cid[ok] * len(self.vocab) + tokens[ok])
        return gid

    def _prob_ids(self, ctx_ids: list[np.ndarray], tokens: np.ndarray) -> np.ndarray:
        """P(token | context) for N queries: ``ctx_ids[j]`` (N,) holds the id of each
        query's context suffix of length j (-1 if unseen), ``tokens`` (N,) the token ids."""
        n, V = self.order, len(self.vocab)
        if self.smoothing in ("mle", "laplace", "add_k"):
            cid = ctx_ids[n - 1]
            ok = cid >= 0
            count = np.zeros(len(tokens))
            total = np.zeros(len(tokens))
            gid = self._grams_after(n, cid, tokens)
            count[gid >= 0] = self._count[n][gid[gid >= 0]]
            total[ok] = self._ctx_total[n][cid[ok]]
            if self.smoothing == "mle":
                with np.errstate(divide="ignore", invalid="ignore"):
                    return np.where(total > 0, count / np.where(total > 0, total, 1), 0.0)
            return (count + self.k) / (total + self.k * V)
        # interpolated models: start from the uniform distribution over predictable tokens
        p = np.full(len(tokens), 1.0 / self._n_predictable)
        p[tokens == _BOS_ID] = 0.0
        for k in range(1, n + 1):
            cid = ctx_ids[k - 1]
            ok = cid >= 0
            gid = self._grams_after(k, cid, tokens)
            hit = gid >= 0
            if self.smoothing == "kneser_ney":
                gamma = np.ones(len(tokens))
                gamma[ok] = self._gamma[k][cid[ok]]
                head = np.zeros(len(tokens))
                head[hit] = self._head[k][gid[hit]]
                p = head + gamma * p
            else:  # Jelinek-Mercer
                total = np.zeros(len(tokens))
                total[ok] = self._ctx_total[k][cid[ok]]
                count = np.zeros(len(tokens))
                count[hit] = self._count[k][gid[hit]]
                seen = total > 0
                mle = np.where(seen, count / np.where(seen, total, 1), 0.0)
                p = np.where(seen, self.lam * mle + (1 - self.lam) * p, p)
        return p

    def _context_ids(self, context: Sequence[str] | None, size: int) -> list[np.ndarray]:
        """Context-suffix ids of one context (a sequence of tokens; a str is a sequence
        of characters), left-padded with <s>, broadcast to ``size`` queries."""
        want = self.order - 1
        context = [] if context is None else list(context)
        if any(not isinstance(t, str) for t in context):
            raise TypeError("context must be a sequence of str tokens (a str is a sequence of characters)")
        if len(context) > want:
            raise ValueError(
                f"a {self.order}-gram model takes a context of at most {want} tokens "
                f"(shorter ones are padded with {BOS}), got {len(context)}: {context!r}"
            )
        ids = np.concatenate([np.full(want - len(context), _BOS_ID), self._lookup(context)]).astype(np.int64)
        # the j-gram ending at the last context token, for every j
        grams = self._gram_ids(ids) if want else [np.zeros(1, dtype=np.int64)]
        last = [g[-1:] if len(g) else np.zeros(1, dtype=np.int64) for g in grams]
        return [np.broadcast_to(g, (size,)) for g in last]

    def prob(self, token: str, context: Sequence[str] | None = None) -> float:
        """P(token | context). A context shorter than n-1 tokens is padded on the left
        with ``<s>`` (the start of a sentence); unknown tokens are ``<unk>``."""
        self._require_fitted()
        if not isinstance(token, str):
            raise TypeError(f"token must be a str, got {type(token).__name__}")
        return float(self._prob_ids(self._context_ids(context, 1), self._lookup([token]))[0])

    def logprob(self, token: str, context: Sequence[str] | None = None) -> float:
        """Natural log of ``prob`` (``-inf`` for probability 0)."""
        p = self.prob(token, context)
        return math.log(p) if p > 0 else -math.inf

    def distribution(self, context: Sequence[str] | None = None) -> np.ndarray:
        """P(w | context) for every w in ``vocab`` (in vocab order); sums to 1 for
        ``"kneser_ney"``, ``"interpolated"`` and seen contexts of ``"mle"``."""
        self._require_fitted()
        V = len(self.vocab)
        return self._prob_ids(self._context_ids(context, V), np.arange(V, dtype=np.int64))

    def num_parameters(self) -> int:
        """Numbers the model stores: one count per distinct k-gram, k = 1..n (the size
        the course ladder reports for a count-based model)."""
        self._require_fitted()
        return int(sum(int(np.count_nonzero(c)) for c in self._count[1:]))

    def count(self, ngram: Sequence[str]) -> int:
        """How often the k-gram (k <= n, as a tuple of tokens) ends at a predicted
        position of the padded training data. ``count(("the", "cat"))`` is C(the cat);
        for a character model ``count("th")`` works too (a str is a sequence of characters)."""
        self._require_fitted()
        ngram = list(ngram)
        if not 1 <= len(ngram) <= self.order:
            raise ValueError(f"expected an n-gram of 1 to {self.order} tokens, got {len(ngram)}")
        ids = self._lookup(ngram)
        gid = np.zeros(1, dtype=np.int64)
        V = len(self.vocab)
        for k, t in enumerate(ids, start=1):
            gid = self._find(k, gid * V + t)
            if gid[0] < 0:
                return 0
        return int(self._count[len(ids)][gid[0]])

    def logprobs(self, sentences: Iterable[Sequence[str]]) -> np.ndarray:
        """Natural-log probability of every predicted token of the padded sentences
        (each real token and the n-1 ``</s>``), in order, scored in one vectorized pass."""
        self._require_fitted()
        sentences = _check_sentences(sentences)
        x, offset = self._encode(sentences)
        n = self.order
        pos = np.flatnonzero(offset >= n - 1)
        if len(pos) == 0:
            raise ValueError("nothing to score: no sentences given")
        # the context suffix of length j of the token at p is the j-gram ending at p - 1
        ctx_ids = [g[pos - 1] for g in self._gram_ids(x)]
        with np.errstate(divide="ignore"):
            return np.log(self._prob_ids(ctx_ids, x[pos]))

    def cross_entropy(self, sentences: Iterable[Sequence[str]]) -> float:
        """Average negative log2-probability per predicted token, in bits."""
        return float(-np.mean(self.logprobs(sentences)) / math.log(2))

    def perplexity(self, sentences: Iterable[Sequence[str]]) -> float:
        """2 ** cross-entropy over all predicted tokens (as ``nltk.lm``'s ``perplexity``
        over the padded n-grams of the sentences)."""
        return float(2.0 ** self.cross_entropy(sentences))

    def generate(self, max_tokens: int = 100, context: Sequence[str] | None = None,
                 seed: int | None = 0, stop_at_end: bool = True) -> list[str]:
        """Sample up to ``max_tokens`` tokens after ``context`` (seeded, reproducible).

        Stops early at ``</s>`` when ``stop_at_end``; ``<s>`` is never sampled.
        """
        self._require_fitted()
        if not isinstance(max_tokens, (int, np.integer)) or max_tokens < 0:
            raise ValueError(f"max_tokens must be an integer >= 0, got {max_tokens!r}")
        rng = np.random.default_rng(seed)
        want = self.order - 1
        history = list(context) if context is not None else []
        out: list[str] = []
        for _ in range(max_tokens):
            ctx = history[-want:] if want else []
            p = self.distribution(ctx).copy()
            p[_BOS_ID] = 0.0
            s = p.sum()
            if not s > 0:
                raise RuntimeError(f"the model gives no probability to any token after {ctx!r}")
            i = int(rng.choice(len(p), p=p / s))
            if i == _EOS_ID and stop_at_end:
                break
            token = self.vocab[i]
            out.append(token)
            history.append(token)
        return out


def bits_per_char(model: NGramLM, texts: Iterable[str]) -> float:
    """Bits per character of a character-level model on whole texts (e.g. the test plays).

    Each text is one sequence, its start padded with ``<s>``; the sum of -log2 P over its
    characters is divided by the number of characters (the ``</s>`` predictions after the
    end are not characters and are left out). This is the course ladder's metric.
    """
    texts = list(texts)
    if not texts or any(not isinstance(t, str) for t in texts):
        raise TypeError("expected a non-empty list of str texts")
    total_bits, total_chars = 0.0, 0
    for t in texts:
        lp = model.logprobs([t])[: len(t)]  # drop the n-1 </s> predictions
        total_bits += float(-lp.sum()) / math.log(2)
        total_chars += len(t)
    if total_chars == 0:
        raise ValueError("the texts hold no characters")
    return total_bits / total_chars
