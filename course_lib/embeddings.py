"""Word embeddings: skip-gram with negative sampling, as in word2vec (chapter 3).

Chapter 1's n-gram models treat every word as an atom: "king" and "queen" share nothing,
so a count learned for one never helps the other. Chapter 3 gives each word a vector, and
skip-gram (Mikolov et al. 2013a, "Efficient Estimation of Word Representations in Vector
Space"; 2013b, "Distributed Representations of Words and Phrases and their
Compositionality") learns those vectors by asking each word to predict its neighbours.
Words used in similar contexts end up with similar vectors, which a neural language
model then reuses as its first layer.

The recipe, one step per function below:

1. ``Vocab.build``: count the words, keep those seen at least ``min_count`` times.
2. ``keep_probability``: drop frequent words at random (subsampling), which both speeds
   training up and stops "the" and "," from dominating every window.
3. ``skipgram_pairs``: every word predicts the words up to ``b`` positions away, with
   ``b`` drawn in ``1..window`` per word, so near neighbours count more than far ones.
4. ``negative_sampling_loss``: instead of a softmax over the whole vocabulary, tell the
   true context word apart from ``K`` noise words drawn from ``noise_distribution``
   (unigram counts to the power 0.75).
5. ``train_word2vec``: minibatches of pairs, the ``SkipGram`` module, SparseAdam.

    >>> w2v = train_word2vec(sentences, dim=100, window=5)    # doctest: +SKIP
    >>> w2v.most_similar("king", k=3)                          # doctest: +SKIP

Scope: skip-gram only (no CBOW), negative sampling only (no hierarchical softmax), no
phrase detection, no subword units (fastText); sized for a CPU and about a million
tokens. Training differs from the word2vec C code in one deliberate way: minibatches with
SparseAdam (Kingma & Ba 2015) and a linearly decaying learning rate replace one SGD step
per pair; large batches are what make PyTorch fast, and Adam, unlike plain SGD, does not
need its step size retuned when a frequent word appears many times in one batch.
Skip-gram is not a language model of the ladder (it scores no text), so ``SkipGram``
returns a loss rather than the ``(logits, loss)`` pair of the chapter's models.
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    "Vocab",
    "keep_probability",
    "subsample_sentences",
    "noise_distribution",
    "skipgram_pairs",
    "negative_sampling_loss",
    "SkipGramConfig",
    "SkipGram",
    "Word2Vec",
    "train_word2vec",
    "project_2d",
]


def _check_int(name: str, value, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


def _check_sentences(sentences) -> list:
    if isinstance(sentences, str):
        raise TypeError("expected a list of tokenized sentences (lists of words), got one str; "
                        "tokenize first, e.g. [wordpunct_tokenize(s) for s in texts]")
    sentences = list(sentences)
    for s in sentences:
        if isinstance(s, str):
            raise TypeError(f"each sentence must be a list of word tokens, got the str {s[:30]!r}; "
                            "tokenize it first, e.g. wordpunct_tokenize(text)")
    return sentences


# ---------------------------------------------------------------------------- vocabulary
class Vocab:
    """Words kept for training, most frequent first (ties in alphabetical order).

    >>> v = Vocab.build([["a", "b", "a"], ["c", "a", "b"]], min_count=2)
    >>> v.words, v.counts.tolist(), v.index["b"]
    (['a', 'b'], [3, 2], 1)
    """

    def __init__(self, words: list[str], counts, min_count: int = 1, lowercase: bool = False):
        self.words = list(words)
        self.counts = np.asarray(counts, dtype=np.int64)  # (V,)
        if len(self.words) != len(self.counts):
            raise ValueError(f"got {len(self.words)} words but {len(self.counts)} counts")
        self.index = {w: i for i, w in enumerate(self.words)}
        if len(self.index) != len(self.words):
            raise ValueError("the vocabulary lists a word twice")
        self.min_count = min_count
        self.lowercase = lowercase

    @classmethod
    def build(cls, sentences, min_count: int = 5, lowercase: bool = False) -> Vocab:
        """Count the tokens of ``sentences`` (lists of str) and keep those seen ``min_count`` times."""
        min_count = _check_int("min_count", min_count, 1)
        counter: Counter = Counter()
        for s in _check_sentences(sentences):
            counter.update([t.lower() for t in s] if lowercase else s)
        bad = next((t for t in counter if not isinstance(t, str)), None)
        if bad is not None:
            raise TypeError(f"word tokens must be str, got {type(bad).__name__} {bad!r}")
        if not counter:
            raise ValueError("empty corpus: the sentences hold no word tokens")
        kept = sorted(((w, c) for w, c in counter.items() if c >= min_count), key=lambda wc: (-wc[1], wc[0]))
        if len(kept) < 2:
            raise ValueError(f"only {len(kept)} word(s) occur at least min_count={min_count} times "
                             f"({sum(counter.values())} tokens in all); need at least 2: lower min_count")
        return cls([w for w, _ in kept], [c for _, c in kept], min_count, lowercase)

    def __len__(self) -> int:
        return len(self.words)

    def __contains__(self, word) -> bool:
        return self._norm(word) in self.index

    def _norm(self, word):
        return word.lower() if self.lowercase and isinstance(word, str) else word

    def id(self, word: str) -> int:
        """The id of ``word``; a ``KeyError`` naming the word if it was not kept."""
        try:
            return self.index[self._norm(word)]
        except (KeyError, TypeError):
            raise KeyError(f"{word!r} is not in the vocabulary ({len(self)} words seen at least "
                           f"min_count={self.min_count} times)") from None

    def encode(self, sentences) -> list[np.ndarray]:
        """Each sentence as an int64 array of ids; words outside the vocabulary are dropped
        (as in word2vec), so ``[["a", "zzz", "b"]] -> [array([0, 1])]``."""
        index = self.index
        out = []
        for s in _check_sentences(sentences):
            words = (t.lower() for t in s) if self.lowercase else s
            out.append(np.fromiter((index[t] for t in words if t in index), dtype=np.int64))
        return out


# ------------------------------------------------------------ subsampling and the noise
def keep_probability(counts, t: float) -> np.ndarray:
    """Probability of keeping each occurrence of a word, Mikolov et al. 2013b, eq. 5:

        P(keep w) = min(1, sqrt(t / f(w))),   f(w) = count(w) / total count

    e.g. counts ``[900, 90, 10]`` (total 1000) with ``t = 0.01``: ``f = [0.9, 0.09, 0.01]``,
    keep ``[sqrt(1/90), sqrt(1/9), 1] = [0.105, 0.333, 1.0]``. Words rarer than ``t`` are
    always kept. (The word2vec C code uses a slightly gentler variant, sqrt(t/f) + t/f.)
    """
    counts = np.asarray(counts, dtype=np.float64)
    if counts.ndim != 1 or counts.size == 0 or (counts <= 0).any():
        raise ValueError("expected a non-empty 1-D array of positive counts")
    if not t > 0:
        raise ValueError(f"the subsampling threshold t must be > 0, got {t!r}")
    f = counts / counts.sum()
    return np.minimum(1.0, np.sqrt(t / f))


def subsample_sentences(sentences: list[np.ndarray], keep: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
    """Drop each word occurrence with probability ``1 - keep[id]``, before windows are cut."""
    return [s[rng.random(len(s)) < keep[s]] for s in sentences]


def noise_distribution(counts, power: float = 0.75) -> np.ndarray:
    """Where negative words are drawn from: ``counts ** 0.75``, normalised (Mikolov et al.
    2013b). The power flattens the unigram distribution: counts ``[16, 1]`` give
    ``[8, 1] / 9`` instead of ``[16, 1] / 17``, so rare words are drawn more often."""
    counts = np.asarray(counts, dtype=np.float64)
    if counts.ndim != 1 or counts.size == 0 or (counts < 0).any() or counts.sum() <= 0:
        raise ValueError("expected a non-empty 1-D array of non-negative counts, not all zero")
    p = counts ** power
    return p / p.sum()


# ---------------------------------------------------------------------- training pairs
def skipgram_pairs(sentences, window: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """All (center, context) pairs of ``sentences`` (lists or arrays of ids), never across
    a sentence boundary. As in word2vec, each center position draws its own window size
    ``b`` uniformly in ``1..window`` and pairs with the words at most ``b`` positions away,
    so a neighbour at distance d is used with probability (window - d + 1) / window.

    With ``window=1`` every ``b`` is 1, so each word pairs with its direct neighbours:

        >>> c, o = skipgram_pairs([[7, 8, 9], [5]], window=1, rng=np.random.default_rng(0))
        >>> list(zip(c.tolist(), o.tolist()))
        [(7, 8), (8, 7), (8, 9), (9, 8)]

    Pairs come ordered by center position, then by context position. Returns two int64
    arrays of the same length P.
    """
    window = _check_int("window", window, 1)
    arrays = [np.asarray(s, dtype=np.int64).reshape(-1) for s in sentences]
    lengths = np.array([len(a) for a in arrays], dtype=np.int64)
    if lengths.sum() == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    flat = np.concatenate(arrays)  # (N,) all ids, sentence after sentence
    sent = np.repeat(np.arange(len(arrays)), lengths)  # (N,) which sentence each id is in
    n = len(flat)
    b = rng.integers(1, window + 1, size=n)  # (N,) window size drawn for each center
    offsets = np.concatenate([np.arange(-window, 0), np.arange(1, window + 1)])  # (2W,)
    pos = np.arange(n)[:, None] + offsets[None, :]  # (N, 2W) context positions
    ok = (np.abs(offsets)[None, :] <= b[:, None]) & (pos >= 0) & (pos < n)
    ok &= sent[np.clip(pos, 0, n - 1)] == sent[:, None]  # same sentence only
    centers = np.broadcast_to(flat[:, None], pos.shape)[ok]  # row-major: by center, then offset
    contexts = flat[pos[ok]]
    return centers, contexts


# ------------------------------------------------------------------------------- loss
def negative_sampling_loss(center_vecs: torch.Tensor, context_vecs: torch.Tensor,
                           negative_vecs: torch.Tensor) -> torch.Tensor:
    """Skip-gram negative-sampling loss (Mikolov et al. 2013b, eq. 4), averaged over the batch:

        loss = mean_b [ -log σ(u_o · v_c) - Σ_k log σ(-u_k · v_c) ]

    ``v_c`` = ``center_vecs`` (B, C): input vectors of the center words; ``u_o`` =
    ``context_vecs`` (B, C): output vectors of the true context words; ``u_k`` =
    ``negative_vecs`` (B, K, C): output vectors of K noise words per pair. The first term
    pulls a center towards its real neighbour, the second pushes it away from the noise.
    ``F.logsigmoid`` computes log σ(x) without overflow for large |x|.

    Example: with all vectors zero every score is 0 and σ(0) = 1/2, so the loss is
    (1 + K) log 2 for K negatives.
    """
    for name, x, dims in (("center_vecs", center_vecs, 2), ("context_vecs", context_vecs, 2),
                          ("negative_vecs", negative_vecs, 3)):
        if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() != dims:
            got = f"{tuple(x.shape)} {x.dtype}" if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"expected {name} as a float tensor with {dims} dims, got {got}")
    B, C = center_vecs.shape
    if context_vecs.shape != (B, C) or negative_vecs.shape[0] != B or negative_vecs.shape[2] != C or B == 0:
        raise ValueError(f"expected center_vecs (B, C), context_vecs (B, C), negative_vecs (B, K, C) "
                         f"with B >= 1, got {tuple(center_vecs.shape)}, {tuple(context_vecs.shape)}, "
                         f"{tuple(negative_vecs.shape)}")
    pos = (center_vecs * context_vecs).sum(-1)  # (B,) u_o · v_c
    neg = torch.bmm(negative_vecs, center_vecs.unsqueeze(-1)).squeeze(-1)  # (B, K, C) @ (B, C, 1) -> (B, K)
    loss = -F.logsigmoid(pos) - F.logsigmoid(-neg).sum(-1)  # (B,)
    return loss.mean()


# ------------------------------------------------------------------------------ model
@dataclass
class SkipGramConfig:
    vocab_size: int  # V: one row per vocabulary word in each table
    dim: int = 100  # C: size of a word vector


class SkipGram(nn.Module):
    """Two tables: ``inp`` holds v_w, a word's vector as a center (the embedding kept in
    the end); ``out`` holds u_w, its vector as a context. Initialised as word2vec does:
    ``inp`` uniform in [-0.5/C, 0.5/C], ``out`` zeros. Sparse gradients: a step only
    touches the rows of the words in the batch."""

    def __init__(self, config: SkipGramConfig, generator: torch.Generator | None = None):
        super().__init__()
        _check_int("vocab_size", config.vocab_size, 1)
        _check_int("dim", config.dim, 1)
        self.config = config
        self.inp = nn.Embedding(config.vocab_size, config.dim, sparse=True)
        self.out = nn.Embedding(config.vocab_size, config.dim, sparse=True)
        with torch.no_grad():
            self.inp.weight.uniform_(-0.5 / config.dim, 0.5 / config.dim, generator=generator)
            self.out.weight.zero_()

    def forward(self, center: torch.Tensor, context: torch.Tensor, negatives: torch.Tensor) -> torch.Tensor:
        """``center`` (B,), ``context`` (B,), ``negatives`` (B, K) word ids -> scalar loss."""
        if center.dim() != 1 or context.shape != center.shape or negatives.dim() != 2 \
                or negatives.shape[0] != center.shape[0]:
            raise ValueError(f"expected center (B,), context (B,), negatives (B, K), got "
                             f"{tuple(center.shape)}, {tuple(context.shape)}, {tuple(negatives.shape)}")
        return negative_sampling_loss(self.inp(center), self.out(context), self.out(negatives))


# -------------------------------------------------------------------- fitted vectors
class Word2Vec:
    """Trained word vectors: the vocabulary and the input vectors, each scaled to length 1
    so that a dot product is a cosine similarity."""

    def __init__(self, vocab: Vocab, vectors: torch.Tensor, loss_history=(), settings: dict | None = None,
                 normalized: bool = False):
        vectors = torch.as_tensor(vectors, dtype=torch.float32).detach().cpu()
        if vectors.dim() != 2 or vectors.shape[0] != len(vocab):
            raise ValueError(f"expected vectors of shape (V, C) with V = {len(vocab)}, got {tuple(vectors.shape)}")
        self.vocab = vocab
        if not normalized:  # a saved file holds unit rows already; scaling again could move the last bit
            vectors = vectors / vectors.norm(dim=1, keepdim=True).clamp_min(1e-12)
        self.vectors = vectors  # (V, C) unit rows
        self.loss_history = [float(x) for x in loss_history]  # mean loss of each training step
        self.settings = dict(settings or {})

    def __len__(self) -> int:
        return len(self.vocab)

    def __contains__(self, word) -> bool:
        return word in self.vocab

    def __repr__(self) -> str:
        return f"Word2Vec(words={len(self.vocab)}, dim={self.vectors.shape[1]})"

    def vector(self, word: str) -> torch.Tensor:
        """The unit-length vector (C,) of ``word``."""
        return self.vectors[self.vocab.id(word)]

    def similarity(self, a: str, b: str) -> float:
        """Cosine similarity of two words, in [-1, 1]."""
        return float(self.vector(a) @ self.vector(b))

    def _nearest(self, query: torch.Tensor, exclude: set[int], k: int) -> list[tuple[str, float]]:
        k = _check_int("k", k, 1)
        sims = self.vectors @ (query / query.norm().clamp_min(1e-12))  # (V,)
        sims[list(exclude)] = -math.inf
        top = torch.topk(sims, min(k, len(self) - len(exclude)))
        return [(self.vocab.words[i], float(s)) for s, i in zip(top.values.tolist(), top.indices.tolist())]

    def most_similar(self, word: str, k: int = 10) -> list[tuple[str, float]]:
        """The ``k`` words with the highest cosine to ``word`` (itself excluded), best first."""
        i = self.vocab.id(word)
        return self._nearest(self.vectors[i], {i}, k)

    def analogy(self, a: str, b: str, c: str, k: int = 1) -> list[tuple[str, float]]:
        """``a`` is to ``b`` as ``c`` is to ?: the words nearest to v_b - v_a + v_c (3CosAdd,
        Mikolov et al. 2013c), the three query words excluded. king : queen :: man : woman."""
        ia, ib, ic = (self.vocab.id(w) for w in (a, b, c))
        return self._nearest(self.vectors[ib] - self.vectors[ia] + self.vectors[ic], {ia, ib, ic}, k)

    def save(self, path) -> None:
        """One ``.npz`` file: the vectors (float32), the words and counts, settings as JSON.
        No pickle: ``load`` reads it with ``allow_pickle=False``."""
        meta = {"min_count": self.vocab.min_count, "lowercase": self.vocab.lowercase, "settings": self.settings,
                "loss_history": self.loss_history}
        with open(path, "wb") as f:
            np.savez(f, vectors=self.vectors.numpy(), words=np.array(self.vocab.words, dtype=str),
                     counts=self.vocab.counts, meta=np.array(json.dumps(meta)))

    @classmethod
    def load(cls, path) -> Word2Vec:
        with np.load(Path(path), allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            vocab = Vocab(z["words"].tolist(), z["counts"], meta["min_count"], meta["lowercase"])
            return cls(vocab, torch.from_numpy(z["vectors"]), meta["loss_history"], meta["settings"], normalized=True)


# --------------------------------------------------------------------------- training
def train_word2vec(sentences, dim: int = 100, window: int = 5, negatives: int = 5, min_count: int = 5,
                   epochs: int = 5, batch_size: int = 4096, lr: float = 0.01, subsample: float | None = 1e-3,
                   lowercase: bool = False, seed: int = 1337, device: str = "cpu",
                   max_seconds: float | None = None, progress: bool = True) -> Word2Vec:
    """Train skip-gram with negative sampling on ``sentences`` (lists of word tokens).

    Each epoch subsamples the corpus anew (threshold ``subsample``; ``None`` or 0 keeps
    every word), cuts (center, context) pairs with a dynamic ``window``, shuffles them and
    takes steps of ``batch_size`` pairs, each with ``negatives`` noise words per pair.
    SparseAdam's learning rate decays linearly from ``lr`` to ``lr / 1000`` over the planned
    steps. ``max_seconds`` stops early (the vectors learned so far are kept). All randomness
    comes from ``seed``: on the CPU two runs give identical vectors.
    """
    dim = _check_int("dim", dim, 1)
    window = _check_int("window", window, 1)
    negatives = _check_int("negatives", negatives, 1)
    epochs = _check_int("epochs", epochs, 1)
    batch_size = _check_int("batch_size", batch_size, 1)
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr!r}")
    if subsample is not None and subsample < 0:
        raise ValueError(f"subsample must be None, 0 (off) or a threshold > 0 such as 1e-3, got {subsample!r}")
    if max_seconds is not None and not max_seconds > 0:
        raise ValueError(f"max_seconds must be None or > 0, got {max_seconds!r}")

    vocab = Vocab.build(sentences, min_count=min_count, lowercase=lowercase)
    ids = [s for s in vocab.encode(sentences) if len(s) > 1]
    if not ids:
        raise ValueError("no (center, context) pairs: every sentence has fewer than 2 vocabulary words")
    keep = keep_probability(vocab.counts, subsample) if subsample else np.ones(len(vocab))
    noise_cdf = np.cumsum(noise_distribution(vocab.counts))  # (V,) draw = searchsorted(cdf, uniform)
    noise_cdf[-1] = 1.0 + 1e-9  # so no uniform draw falls past the last word

    rng = np.random.default_rng(seed)
    model = SkipGram(SkipGramConfig(len(vocab), dim), torch.Generator().manual_seed(seed)).to(device)
    optimizer = torch.optim.SparseAdam(model.parameters(), lr=lr)

    start, step, total_steps, history, stopped = time.perf_counter(), 0, None, [], False
    bar = None
    for epoch in range(epochs):
        centers, contexts = skipgram_pairs(subsample_sentences(ids, keep, rng) if subsample else ids, window, rng)
        order = rng.permutation(len(centers))
        centers, contexts = torch.from_numpy(centers[order]), torch.from_numpy(contexts[order])  # (P,), (P,)
        if total_steps is None:  # planned from the first epoch; later epochs differ by a little
            total_steps = max(1, epochs * math.ceil(len(centers) / batch_size))
            if progress:
                from tqdm.auto import tqdm

                bar = tqdm(total=total_steps, desc="word2vec", unit="step")
        for lo in range(0, len(centers), batch_size):
            for group in optimizer.param_groups:
                group["lr"] = lr * max(1e-3, 1 - step / total_steps)
            c = centers[lo:lo + batch_size].to(device)  # (B,)
            o = contexts[lo:lo + batch_size].to(device)  # (B,)
            neg = np.searchsorted(noise_cdf, rng.random((len(c), negatives)), side="right")  # (B, K)
            loss = model(c, o, torch.from_numpy(neg).to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            history.append(loss.item())
            step += 1
            if bar is not None:
                bar.update(1)
                if step % 50 == 0:
                    bar.set_postfix(epoch=epoch + 1, loss=f"{history[-1]:.3f}")
            if max_seconds is not None and time.perf_counter() - start > max_seconds:
                stopped = True
                break
        if stopped:
            break
    if bar is not None:
        bar.close()
    settings = dict(dim=dim, window=window, negatives=negatives, min_count=min_count, epochs=epochs,
                    batch_size=batch_size, lr=lr, subsample=subsample, seed=seed, steps=step,
                    seconds=round(time.perf_counter() - start, 2), stopped_early=stopped)
    return Word2Vec(vocab, model.inp.weight.detach(), history, settings)


# ------------------------------------------------------------------------------- plots
def project_2d(vectors) -> torch.Tensor:
    """Principal component analysis to 2-D, for a scatter plot of word vectors.

    Centre the rows of ``vectors`` (N, C), take the SVD ``X = U S V^T`` and return the
    coordinates on the first two principal directions, ``X V[:, :2] = U[:, :2] S[:2]``,
    as a float tensor (N, 2). Each axis's sign is fixed so its largest-magnitude
    coordinate is positive (an SVD's signs are arbitrary). Needs N >= 2 and C >= 2.
    """
    x = torch.as_tensor(np.asarray(vectors) if not isinstance(vectors, torch.Tensor) else vectors)
    if x.dim() != 2 or x.shape[0] < 2 or x.shape[1] < 2:
        raise ValueError(f"expected vectors of shape (N, C) with N >= 2 and C >= 2, got {tuple(x.shape)}")
    x = x.detach().cpu().to(torch.float64)
    x = x - x.mean(dim=0, keepdim=True)  # (N, C) centred
    _, _, vh = torch.linalg.svd(x, full_matrices=False)  # vh: (min(N, C), C)
    xy = x @ vh[:2].T  # (N, C) @ (C, 2) -> (N, 2)
    signs = torch.sign(xy.gather(0, xy.abs().argmax(dim=0, keepdim=True)))  # (1, 2)
    return (xy * torch.where(signs == 0, 1.0, signs)).float()
