"""Sampling from a language model: temperature, top-k and top-p (chapter 3, top-p in chapter 7).

A model gives a distribution over the next token; a decoding rule turns it into text.
``generate`` appends one sampled token at a time to each row of a prompt, given the last
``model.get_block_size()`` tokens. ``top_k_filter`` and ``top_p_filter`` cut a row of
logits down to its likeliest tokens (transformers' ``TopKLogitsWarper`` and
``TopPLogitsWarper``); ``_sample_next`` is the one step the RNN and GPT ``generate``
methods share, so every model of the course samples the same way.

    top_k_filter(torch.tensor([1.0, 3.0, 2.0]), 2) -> [-inf, 3.0, 2.0]

Scope: ancestral sampling and greedy decoding (``top_k=1``); beam search belongs to
chapter 5's translation models (``course_lib.seq2seq``), the key-value cache to GPT.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .checks import _check_model, _check_positive_int, _eval_mode, _model_device

__all__ = ["generate", "top_k_filter", "top_p_filter"]


def generate(model, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
             generator: torch.Generator | None = None) -> torch.Tensor:
    """Continue each row of ``idx`` (B, T) by ``max_new_tokens`` sampled tokens; (B, T + new).

    Each new token is drawn from softmax(logits / temperature) at the last position, given
    the last ``model.get_block_size()`` tokens; ``top_k`` keeps only the k likeliest tokens
    (``top_k=1`` is greedy decoding). Sampling happens on the CPU with ``generator`` (a CPU
    ``torch.Generator``), so a seed gives the same text on every device.
    """
    block_size = _check_model(model)
    _check_prompt(idx)
    _check_sampling(max_new_tokens, temperature, top_k)
    device = _model_device(model)
    idx = idx.long().to(device)
    with _eval_mode(model):
        for _ in range(max_new_tokens):
            logits, _ = model(idx[:, -block_size:])  # (B, T, V)
            nxt = _sample_next(logits, temperature, top_k, generator)  # (B, 1)
            idx = torch.cat([idx, nxt.to(device)], dim=1)  # (B, T + 1)
    return idx


def _check_prompt(idx) -> None:
    """The prompt of a ``generate``: token ids of shape (B, T), T >= 1."""
    if not isinstance(idx, torch.Tensor) or idx.dim() != 2 or idx.dtype.is_floating_point or idx.dtype == torch.bool:
        shape = tuple(idx.shape) if isinstance(idx, torch.Tensor) else type(idx).__name__
        raise ValueError(f"expected idx of shape (B, T) holding token ids, got {shape}; "
                         "one prompt is idx[None, :]")
    if idx.shape[1] == 0:
        raise ValueError("idx has no tokens to continue: start from at least one token (e.g. the start token)")


def _check_sampling(max_new_tokens, temperature, top_k, top_p=None) -> None:
    """The sampling arguments of ``generate`` (and ``RNNLanguageModel.generate``, ``GPT.generate``)."""
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be an integer >= 0, got {max_new_tokens!r}")
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    if top_k is not None:
        _check_positive_int("top_k", top_k)
    if top_p is not None:
        _check_top_p(top_p)


def _sample_next(logits: torch.Tensor, temperature: float, top_k: int | None,
                 generator: torch.Generator | None, top_p: float | None = None) -> torch.Tensor:
    """One token per row drawn from the last position of ``logits`` (B, T, V); (B, 1) on the CPU.

    The distribution is softmax(logits / temperature), filtered by ``top_k_filter`` then
    ``top_p_filter`` (that order, as ``transformers``; None skips a filter); it is sampled
    on the CPU with ``generator``, so a seed gives the same tokens on every device.
    ``top_k=1`` is greedy: logits [[[0.1, 2.0, -1.0]]] -> [[1]].
    """
    logits = logits[:, -1, :].float().cpu() / temperature  # (B, V)
    if top_k is not None:
        logits = top_k_filter(logits, top_k)
    if top_p is not None:
        logits = top_p_filter(logits, top_p)
    probs = F.softmax(logits, dim=-1)  # (B, V)
    return torch.multinomial(probs, 1, generator=generator)  # (B, 1)


def _check_logits(logits) -> None:
    if not isinstance(logits, torch.Tensor) or logits.dim() == 0 or not logits.dtype.is_floating_point:
        got = f"{tuple(logits.shape)} {logits.dtype}" if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(f"expected logits as a float tensor of shape (..., V), got {got}")


def _check_top_p(p) -> float:
    if isinstance(p, bool) or not (isinstance(p, (int, float)) and 0 < p <= 1):
        raise ValueError(f"top_p must be a probability in (0, 1] (1 keeps every token), got {p!r}")
    return p


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """``logits`` (..., V) with all but the k largest of each row set to -inf (ties with the
    k-th largest are kept); k >= V keeps everything. ``TopKLogitsWarper(k)`` of transformers.

        top_k_filter(torch.tensor([1.0, 3.0, 2.0]), 2) -> [-inf, 3.0, 2.0]
    """
    _check_logits(logits)
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be an integer >= 1 (k=1 keeps the likeliest token only), got {k!r}")
    k = min(k, logits.shape[-1])
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]  # (..., 1) the k-th largest of each row
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """``logits`` (..., V) keeping, per row, the smallest set of likeliest tokens whose
    probability reaches ``p``, the rest set to -inf ("nucleus sampling", Holtzman et al. 2020).

    As ``TopPLogitsWarper(p)`` of transformers: sort the probabilities in ascending order
    and remove the tokens whose cumulative probability is <= 1 - p; the likeliest token
    always stays. Probabilities [0.5, 0.3, 0.2]: p=0.4 keeps the first token, p=0.7 the
    first two (0.8 >= 0.7; ascending sums 0.2, 0.5, 1.0 against 1 - p = 0.3), p=1 all.
    """
    _check_logits(logits)
    _check_top_p(p)
    sorted_logits, order = torch.sort(logits, dim=-1, descending=False)  # (..., V) ascending
    cumulative = sorted_logits.float().softmax(dim=-1).cumsum(dim=-1)  # (..., V) mass of the unlikeliest tokens
    remove = cumulative <= 1 - p  # (..., V) in sorted order
    remove[..., -1] = False  # keep the likeliest token whatever p
    remove = remove.scatter(-1, order, remove)  # back to the vocabulary's order
    return logits.masked_fill(remove, float("-inf"))

