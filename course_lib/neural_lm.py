"""Neural language models: a bigram net and a multilayer perceptron (chapter 3).

Chapter 1 counted: P(w | v) = C(v w) / C(v .). Here the probabilities are computed by a
function with parameters, softmax(logits), and the parameters are learned by gradient
descent on the cross-entropy (``course_lib.train``). Two steps:

- ``BigramNet``: one weight matrix W (V, V) whose row v holds the logits of the token after
  v. Trained to the minimum of the cross-entropy, softmax(W[v]) is the counted bigram row
  of chapter 1 (``count_bigram_logprobs``), and an L2 penalty on W plays the role of
  smoothing: it pulls rows seen rarely toward uniform.
- ``MLPLanguageModel``: the model of Bengio et al. (2003), "A Neural Probabilistic
  Language Model", as in Karpathy's makemore: embed each of the k previous tokens, join
  the k embeddings, one tanh hidden layer, one output layer. Tokens that are alike get
  embeddings that are alike, so what is learned about one context carries to similar ones,
  which counts cannot do.

Both keep the contract of every model in the course: ``forward(idx, targets=None) ->
(logits, loss)`` with idx (B, T) and logits (B, T, V), and ``get_block_size()``.

    >>> model = BigramNet(vocab_size=3)      # W starts at zero: every row is uniform
    >>> logits, loss = model(torch.tensor([[0, 2]]), torch.tensor([[2, 1]]))
    >>> tuple(logits.shape), round(loss.item(), 4)   # ln 3 nats per token
    ((1, 2, 3), 1.0986)

Scope: no direct input-to-output connections (Bengio's optional ones) and no batch norm;
the initialisation is PyTorch's default. Dropout on the hidden layer is optional and off by
default (``MLPConfig.dropout``): chapter 3 uses it to show what it does against
overfitting, and with ``dropout=0`` the model computes, and draws random numbers, exactly
as without it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["BigramNet", "MLPConfig", "MLPLanguageModel", "count_bigram_logprobs"]


def _check_idx(idx, vocab_size: int, name: str = "idx") -> None:
    """``idx`` must be a (B, T) integer tensor of ids 0..vocab_size-1 with T >= 1."""
    if not isinstance(idx, torch.Tensor):
        raise TypeError(f"expected {name} as a torch tensor of shape (B, T), got {type(idx).__name__}")
    if idx.dim() != 2:
        raise ValueError(f"expected {name} of shape (B, T), got {tuple(idx.shape)}; one sequence is {name}[None, :]")
    if idx.dtype.is_floating_point or idx.dtype.is_complex or idx.dtype == torch.bool:
        raise TypeError(f"expected {name} to hold integer token ids, got dtype {idx.dtype}")
    if idx.shape[1] == 0:
        raise ValueError(f"expected {name} of shape (B, T) with T >= 1, got {tuple(idx.shape)}")
    if idx.numel() and (idx.min() < 0 or idx.max() >= vocab_size):
        raise ValueError(f"{name} holds ids from {idx.min().item()} to {idx.max().item()}; "
                         f"the vocabulary has ids 0..{vocab_size - 1}")


def _check_targets(targets, shape: tuple, vocab_size: int, name: str = "targets", hint: str = "") -> None:
    """An error unless ``targets`` is an integer tensor of ``shape`` holding ids in 0..V-1 or -1 (skip)."""
    if not isinstance(targets, torch.Tensor) or tuple(targets.shape) != shape:
        got = tuple(targets.shape) if isinstance(targets, torch.Tensor) else type(targets).__name__
        raise ValueError(f"expected {name} of shape (B, T) = {shape}, got {got}")
    if targets.dtype.is_floating_point or targets.dtype.is_complex or targets.dtype == torch.bool:
        raise TypeError(f"expected {name} to hold integer token ids, got dtype {targets.dtype}")
    if targets.numel() and (targets.min() < -1 or targets.max() >= vocab_size):
        raise ValueError(f"{name} hold ids from {targets.min().item()} to {targets.max().item()}; expected "
                         f"0..{vocab_size - 1}, or -1 for a position to ignore{hint}")


def _loss(logits: torch.Tensor, targets, vocab_size: int) -> torch.Tensor | None:
    """Mean cross-entropy of (B, T, V) logits against (B, T) targets; -1 marks a target to skip."""
    if targets is None:
        return None
    _check_targets(targets, tuple(logits.shape[:2]), vocab_size)
    B, T, V = logits.shape
    return F.cross_entropy(logits.view(B * T, V), targets.reshape(B * T).long(), ignore_index=-1)  # (B*T, V)


def count_bigram_logprobs(ids, vocab_size: int, alpha: float = 0.0) -> torch.Tensor:
    """Chapter 1's counted bigram model as a (V, V) float64 matrix of ln P(next | prev).

    P(w | v) = (C(v w) + alpha) / (C(v .) + alpha V), counting the neighbouring pairs of
    the 1-D sequence ``ids``: ``alpha=0`` is the maximum-likelihood estimate, ``alpha=1``
    Laplace smoothing. A context never seen gets a uniform row (0/0 has no better answer;
    it is also the row that a BigramNet started at zero keeps, since no gradient reaches it).

        >>> count_bigram_logprobs([0, 1, 0, 0], 2).exp()   # pairs 01, 10, 00
        tensor([[0.5000, 0.5000],
                [1.0000, 0.0000]], dtype=torch.float64)
    """
    if not isinstance(ids, torch.Tensor):
        ids = torch.tensor(ids, dtype=torch.long if len(ids) == 0 else None)  # [] is not float
    if ids.dim() != 1 or ids.dtype.is_floating_point or ids.dtype == torch.bool:
        raise ValueError(f"expected ids as a 1-D sequence of token ids, got shape {tuple(ids.shape)}, "
                         f"dtype {ids.dtype}")
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size <= 0:
        raise ValueError(f"vocab_size must be an integer > 0, got {vocab_size!r}")
    if not (isinstance(alpha, (int, float)) and alpha >= 0):
        raise ValueError(f"alpha must be a number >= 0, got {alpha!r}")
    if len(ids) and (ids.min() < 0 or ids.max() >= vocab_size):
        raise ValueError(f"ids run from {ids.min().item()} to {ids.max().item()}; expected 0..{vocab_size - 1}")
    ids = ids.long()
    counts = torch.zeros(vocab_size * vocab_size, dtype=torch.float64)
    counts.index_add_(0, ids[:-1] * vocab_size + ids[1:], torch.ones(max(len(ids) - 1, 0), dtype=torch.float64))
    counts = counts.view(vocab_size, vocab_size) + alpha  # (V, V)
    totals = counts.sum(dim=1, keepdim=True)  # (V, 1)
    probs = torch.where(totals > 0, counts / totals.clamp_min(1e-300), 1.0 / vocab_size)  # (V, V)
    return probs.log()


class BigramNet(nn.Module):
    """The bigram model as a net: ``logits = W[idx]``, one learned row of V logits per token.

    Indexing a row is the same as multiplying a one-hot vector by W:
    ``W[idx] == F.one_hot(idx, V).float() @ W``. W starts at zero (uniform predictions);
    with no other parameter, the best W gives softmax(W[v]) = C(v w) / C(v .), the counts.
    """

    def __init__(self, vocab_size: int):
        super().__init__()
        if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size <= 0:
            raise ValueError(f"vocab_size must be an integer > 0, got {vocab_size!r}")
        self.vocab_size = vocab_size
        self.W = nn.Parameter(torch.zeros(vocab_size, vocab_size))  # (V, V) row v: logits after token v

    def get_block_size(self) -> int:
        return 1

    def num_parameters(self) -> int:
        return self.W.numel()

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        _check_idx(idx, self.vocab_size)
        logits = self.W[idx]  # (B, T, V)
        return logits, _loss(logits, targets, self.vocab_size)


@dataclass
class MLPConfig:
    vocab_size: int  # V: number of distinct tokens
    context: int = 3  # k: how many previous tokens the model sees
    n_embd: int = 10  # C: size of one token's embedding
    n_hidden: int = 200  # H: units in the tanh hidden layer
    dropout: float = 0.0  # p: in training, each hidden unit is zeroed with probability p (0: no dropout)

    def __post_init__(self):
        for name in ("vocab_size", "context", "n_embd", "n_hidden"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"MLPConfig.{name} must be an integer > 0, got {value!r}")
        p = self.dropout
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p < 1:
            raise ValueError(f"MLPConfig.dropout must be a number in [0, 1), the probability of zeroing a "
                             f"hidden unit in training (0 for none), got {p!r}")


class MLPLanguageModel(nn.Module):
    """Bengio et al. (2003): the next token from the embeddings of the k tokens before it.

    For each position t: take idx[t-k+1], ..., idx[t] (oldest first; before the start of
    the sequence, the padding id V, which has an embedding row of its own), look up their
    embeddings, join them into one vector of k*C numbers, then

        h = tanh(x @ W1 + b1)        (k*C) -> H
        logits = h @ W2 + b2         H -> V

    Every position of idx (B, T) is scored in one pass, so a window of T tokens gives T
    training examples. ``MLPLanguageModel(MLPConfig(vocab_size=27))`` is makemore's model.

    With ``config.dropout = p > 0``, in training mode (``model.train()``) each unit of h is
    zeroed with probability p and the others are scaled by 1 / (1 - p) (``nn.Dropout``,
    Srivastava et al. 2014), so that h keeps its expected value; in ``model.eval()`` h
    passes unchanged. With p = 0 there is no dropout layer at all.
    """

    def __init__(self, config: MLPConfig):
        super().__init__()
        if not isinstance(config, MLPConfig):
            raise TypeError(f"expected an MLPConfig, got {type(config).__name__}")
        self.config = config
        V, k, C, H = config.vocab_size, config.context, config.n_embd, config.n_hidden
        self.pad_id = V  # the token "before the start", never predicted
        self.wte = nn.Embedding(V + 1, C)  # (V + 1, C) token embeddings, the last row for padding
        self.hidden = nn.Linear(k * C, H)  # W1 (H, k*C), b1 (H,)
        self.lm_head = nn.Linear(H, V)  # W2 (V, H), b2 (V,)
        # only when asked for: with p = 0 the model has no dropout layer and draws no random numbers
        self.drop = nn.Dropout(config.dropout) if config.dropout > 0 else None

    def get_block_size(self) -> int:
        return self.config.context

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        V, k = self.config.vocab_size, self.config.context
        _check_idx(idx, V)
        B, T = idx.shape
        pad = torch.full((B, k - 1), self.pad_id, dtype=torch.long, device=idx.device)  # (B, k-1)
        padded = torch.cat([pad, idx.long()], dim=1)  # (B, T+k-1)
        contexts = padded.unfold(1, k, 1)  # (B, T, k): contexts[:, t] = idx[:, t-k+1 .. t]
        emb = self.wte(contexts)  # (B, T, k, C)
        x = emb.view(B, T, k * self.config.n_embd)  # (B, T, k*C) the k embeddings side by side
        h = torch.tanh(self.hidden(x))  # (B, T, H)
        if self.drop is not None:
            h = self.drop(h)  # (B, T, H) in training: units zeroed with probability p, the rest scaled by 1/(1-p)
        logits = self.lm_head(h)  # (B, T, V)
        return logits, _loss(logits, targets, V)
