"""Scaled dot-product attention and multi-head attention (chapter 6).

Chapter 5's attention let a decoder RNN look back at the encoder's states, one query per
step, and the recurrence still carried everything else. Vaswani et al. (2017), "Attention
Is All You Need", keep only the attention: every position of a sequence is a query at once,

    Attention(Q, K, V) = softmax(Q K^T / sqrt(d_k)) V          Q (T, d_k), K (S, d_k), V (S, d_v)

row t of the (T, S) weights being softmax over **all** S keys for query t (so one key alone
always gets weight 1), and several heads attend in parallel, each in a subspace of its own:

    head_i = Attention(X_q W_i^Q, X_k W_i^K, X_v W_i^V)        MultiHead = concat(head_1..head_h) W^O

with a head size d_k = d_model / h (per head, not the full width), so h heads cost about
what one full-width head would.

**Masks** follow ``torch.nn.functional.scaled_dot_product_attention``: a boolean mask is
True where a query **may attend** to a key; a float mask is **added** to the scores (0 to
keep, -inf to remove). Either broadcasts against the scores (..., T, S):

- ``causal_mask(T)``, (T, T): query t sees keys 0..t, for a decoder or a language model;
- ``padding_mask(lengths)``, (B, 1, 1, S): the real keys of each sequence, for every head
  and every query; ``padding_mask(lengths) & causal_mask(T)`` is both, (B, 1, T, T).

Careful: ``nn.MultiheadAttention``'s boolean ``attn_mask`` and ``key_padding_mask`` mean
the opposite (True = may **not** attend); ``~mask`` converts. A query whose keys are all
masked gets weights 0 and output 0, as recent PyTorch versions give (older ones gave 0/0 = NaN).

    >>> q = k = v = torch.eye(2)[None]                  # (B=1, T=2, hs=2)
    >>> out, w = scaled_dot_product_attention(q, k, v, mask=causal_mask(2), return_weights=True)
    >>> w[0].tolist()[0]                                # the first query sees the first key only
    [1.0, 0.0]

Scope: one attention kernel written out (no flash attention, no key-value cache), the
projections as four ``nn.Linear`` with PyTorch's default initialisation; ``from_torch``
reads an ``nn.MultiheadAttention`` whose keys and values have the model's width.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["scaled_dot_product_attention", "causal_mask", "padding_mask", "MultiHeadAttention"]


def _shape(x) -> str:
    return str(tuple(x.shape)) if isinstance(x, torch.Tensor) else type(x).__name__


def _check_mask(mask, scores_shape: torch.Size, expected: str) -> None:
    """``mask`` must be a bool or float tensor that broadcasts to the scores' shape without growing it."""
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"expected mask as a torch tensor (bool: True = may attend; float: added to the scores), "
                        f"got {type(mask).__name__}")
    if mask.dtype != torch.bool and not mask.dtype.is_floating_point:
        raise TypeError(f"expected a bool mask (True = may attend) or a float mask (added to the scores), "
                        f"got dtype {mask.dtype}")
    try:
        fits = torch.broadcast_shapes(mask.shape, scores_shape) == scores_shape
    except RuntimeError:
        fits = False
    if not fits:
        raise ValueError(f"expected mask broadcastable to {expected} = {tuple(scores_shape)}, got {tuple(mask.shape)}; "
                         "causal_mask(T) is (T, T), padding_mask(lengths) is (B, 1, 1, S)")


def scaled_dot_product_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None,
                                 dropout_p: float = 0.0, scale: float | None = None, return_weights: bool = False):
    """softmax(q k^T / sqrt(hs) + mask) v over the last two dimensions; the leading ones broadcast.

    ``q`` (..., T, hs), ``k`` (..., S, hs), ``v`` (..., S, hv) -> output (..., T, hv), and
    with ``return_weights=True`` also the weights (..., T, S), each row summing to 1 over the
    keys it may attend to (before dropout). ``mask``: bool (True = may attend) or float
    (added to the scores), broadcastable to (..., T, S). ``scale`` replaces 1 / sqrt(hs);
    ``dropout_p`` drops weights (training only: pass 0 in evaluation).
    Equal to ``F.scaled_dot_product_attention(q, k, v, attn_mask=mask)``.

        one query, two keys with scores 0 and 0: weights [0.5, 0.5]; one key: weight [1.0]
    """
    for name, x in [("q", q), ("k", k), ("v", v)]:
        if not isinstance(x, torch.Tensor) or x.dim() < 2:
            raise ValueError(f"expected {name} as a tensor of shape (..., length, size), got {_shape(x)}")
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"q and k must have the same last size hs, got q {tuple(q.shape)} and k {tuple(k.shape)}")
    if k.shape[-2] != v.shape[-2]:
        raise ValueError(f"k and v must have the same length S, got k {tuple(k.shape)} and v {tuple(v.shape)}")
    if not 0 <= dropout_p < 1:
        raise ValueError(f"dropout_p must be a probability in [0, 1), got {dropout_p!r}")
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = (q @ k.transpose(-2, -1)) * scale  # (..., T, hs) @ (..., hs, S) -> (..., T, S)
    if mask is not None:
        _check_mask(mask, scores.shape, "the scores' (..., T, S)")
        if mask.dtype == torch.bool:
            scores = scores.masked_fill(~mask, float("-inf"))  # exp(-inf) = 0: a masked key gets weight exactly 0
        else:
            scores = scores + mask
    # A row with every key masked would be softmax of -infs, 0/0: give it weights 0 (so output 0) instead.
    dead = scores.amax(dim=-1, keepdim=True) == float("-inf")  # (..., T, 1)
    weights = F.softmax(scores.masked_fill(dead, 0.0), dim=-1).masked_fill(dead, 0.0)  # (..., T, S)
    dropped = F.dropout(weights, dropout_p) if dropout_p > 0 else weights
    out = dropped @ v  # (..., T, S) @ (..., S, hv) -> (..., T, hv)
    return (out, weights) if return_weights else out


def causal_mask(T: int, device=None) -> torch.Tensor:
    """(T, T) bool, True on and below the diagonal: query t may attend to keys 0..t.

        causal_mask(3) -> [[True, False, False], [True, True, False], [True, True, True]]
    """
    if isinstance(T, bool) or not isinstance(T, int) or T <= 0:
        raise ValueError(f"T must be an integer > 0, got {T!r}")
    return torch.ones(T, T, dtype=torch.bool, device=device).tril()  # (T, T)


def padding_mask(lengths: torch.Tensor, max_len: int | None = None) -> torch.Tensor:
    """(B, 1, 1, S) bool, True at the real keys of each right-padded sequence; S = ``max_len`` or max(lengths).

    The two 1s broadcast over the heads and the queries of scores (B, nh, T, S): key s of
    sequence b is hidden from every head and every query when s >= lengths[b]. A (B, S)
    mask would broadcast its B against T instead, silently when B == T; add the two axes.

        padding_mask(torch.tensor([2, 3]))[:, 0, 0] -> [[True, True, False], [True, True, True]]
    """
    if not isinstance(lengths, torch.Tensor) or lengths.dim() != 1:
        raise ValueError(f"expected lengths of shape (B,), one length per sequence, got {_shape(lengths)}")
    if lengths.dtype.is_floating_point or lengths.dtype == torch.bool:
        raise TypeError(f"expected lengths to hold integers, got dtype {lengths.dtype}")
    if max_len is None:
        S = int(lengths.max()) if len(lengths) else 0
    elif isinstance(max_len, bool) or not isinstance(max_len, int) or max_len < 0:
        raise ValueError(f"max_len must be an integer >= 0 or None (the longest length), got {max_len!r}")
    else:
        S = max_len
    if len(lengths) and (lengths.min() < 0 or lengths.max() > S):
        raise ValueError(f"lengths must be in 0..max_len = 0..{S}, got {lengths.min().item()}..{lengths.max().item()}")
    real = torch.arange(S, device=lengths.device)[None, :] < lengths[:, None]  # (B, S)
    return real[:, None, None, :]  # (B, 1, 1, S)


class MultiHeadAttention(nn.Module):
    """``n_heads`` heads of scaled dot-product attention over (B, T, C) inputs, C = ``d_model``.

    ``mha(query (B, T, C), key (B, S, C) = query, value (B, S, C) = key, mask=None)`` -> (B, T, C);
    key and value default to the query (self-attention); a cross-attention passes the
    encoder's output as key (and so value). ``mask`` as in ``scaled_dot_product_attention``,
    broadcastable to (B, nh, T, S). With ``need_weights=True`` the result is ``(out, weights)``,
    weights (B, nh, T, S) per head. ``keep_weights = True`` also keeps the last weights in
    ``last_weights`` (detached), for plots of a model's attention.

    Each head has hs = C // nh numbers per query, key and value; the projections are done
    for all heads at once by (C, C) matrices and the result split into heads.
    """

    def __init__(self, d_model: int, n_heads: int, dropout: float = 0.0, bias: bool = True):
        super().__init__()
        for name, value in [("d_model", d_model), ("n_heads", n_heads)]:
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be an integer > 0, got {value!r}")
        if d_model % n_heads:
            raise ValueError(f"d_model={d_model} is not divisible by n_heads={n_heads}: each head gets "
                             f"d_model // n_heads numbers (e.g. d_model={n_heads * max(1, d_model // n_heads)})")
        if not (isinstance(dropout, (int, float)) and 0 <= dropout < 1):
            raise ValueError(f"dropout must be a probability in [0, 1), got {dropout!r}")
        self.d_model, self.n_heads, self.head_size, self.dropout = d_model, n_heads, d_model // n_heads, dropout
        self.q_proj = nn.Linear(d_model, d_model, bias=bias)  # W^Q (C, C): every head's queries side by side
        self.k_proj = nn.Linear(d_model, d_model, bias=bias)  # W^K (C, C)
        self.v_proj = nn.Linear(d_model, d_model, bias=bias)  # W^V (C, C)
        self.out_proj = nn.Linear(d_model, d_model, bias=bias)  # W^O (C, C)
        self.keep_weights = False
        self.last_weights: torch.Tensor | None = None

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, n_heads={self.n_heads}, head_size={self.head_size}, dropout={self.dropout}"

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, C) -> (B, nh, T, hs): head i gets the numbers i*hs .. (i+1)*hs - 1 of each vector."""
        B, T, C = x.shape
        x = x.view(B, T, self.n_heads, self.head_size)  # (B, T, nh, hs)
        return x.transpose(1, 2)  # (B, nh, T, hs)

    def merge_heads(self, x: torch.Tensor) -> torch.Tensor:
        """(B, nh, T, hs) -> (B, T, C): the heads' outputs side by side again (concat)."""
        B, nh, T, hs = x.shape
        x = x.transpose(1, 2)  # (B, T, nh, hs)
        return x.reshape(B, T, nh * hs)  # (B, T, C)

    def _check_inputs(self, query, key, value) -> None:
        C = self.d_model
        for name, x in [("query", query), ("key", key), ("value", value)]:
            if not isinstance(x, torch.Tensor) or x.dim() != 3 or x.shape[-1] != C:
                raise ValueError(f"expected {name} of shape (B, length, d_model={C}), got {_shape(x)}")
        if not query.shape[0] == key.shape[0] == value.shape[0]:
            raise ValueError(f"query, key and value must have the same batch size B, got {tuple(query.shape)}, "
                             f"{tuple(key.shape)} and {tuple(value.shape)}")
        if key.shape[1] != value.shape[1]:
            raise ValueError(f"key and value must have the same length S, got {tuple(key.shape)} and "
                             f"{tuple(value.shape)}")

    def forward(self, query: torch.Tensor, key: torch.Tensor | None = None, value: torch.Tensor | None = None,
                mask: torch.Tensor | None = None, need_weights: bool = False):
        key = query if key is None else key
        value = key if value is None else value
        self._check_inputs(query, key, value)
        B, T, S = query.shape[0], query.shape[1], key.shape[1]
        if mask is not None:
            _check_mask(mask, torch.Size((B, self.n_heads, T, S)), "(B, nh, T, S)")
        q = self.split_heads(self.q_proj(query))  # (B, nh, T, hs)
        k = self.split_heads(self.k_proj(key))  # (B, nh, S, hs)
        v = self.split_heads(self.v_proj(value))  # (B, nh, S, hs)
        p = self.dropout if self.training else 0.0
        heads, weights = scaled_dot_product_attention(q, k, v, mask, dropout_p=p, return_weights=True)  # (B, nh, T, hs)
        out = self.out_proj(self.merge_heads(heads))  # (B, T, C)
        if self.keep_weights:
            self.last_weights = weights.detach()
        return (out, weights) if need_weights else out

    @classmethod
    def from_torch(cls, module: nn.MultiheadAttention) -> MultiHeadAttention:
        """A ``MultiHeadAttention`` with the weights of ``module`` (copied, dtype and device kept).

        ``nn.MultiheadAttention`` keeps W^Q, W^K, W^V stacked in ``in_proj_weight`` (3C, C)
        (and their biases in ``in_proj_bias`` (3C,)): rows 0..C-1 are W^Q, then W^K, then
        W^V; ``out_proj`` is W^O. Our module is batch first: for a ``batch_first=False``
        module, pass inputs as ``x.transpose(0, 1)`` (T, B, C) -> (B, T, C). Its boolean
        masks are True where attention is **not** allowed: ours is ``~attn_mask``.
        """
        if not isinstance(module, nn.MultiheadAttention):
            raise TypeError(f"expected an nn.MultiheadAttention, got {type(module).__name__}")
        if not module._qkv_same_embed_dim:
            raise ValueError(f"kdim={module.kdim} and vdim={module.vdim} must equal embed_dim={module.embed_dim}: "
                             "this module projects keys and values from the model's width")
        if module.bias_k is not None or module.add_zero_attn:
            raise ValueError("add_bias_kv and add_zero_attn are not supported: they add a key the sequence does not "
                             "have")
        bias = module.in_proj_bias is not None
        w = module.in_proj_weight
        ours = cls(module.embed_dim, module.num_heads, dropout=module.dropout, bias=bias).to(w.device, w.dtype)
        C = module.embed_dim
        with torch.no_grad():
            for i, proj in enumerate([ours.q_proj, ours.k_proj, ours.v_proj]):
                proj.weight.copy_(w[i * C:(i + 1) * C])  # (C, C) rows of the stacked (3C, C)
                if bias:
                    proj.bias.copy_(module.in_proj_bias[i * C:(i + 1) * C])
            ours.out_proj.weight.copy_(module.out_proj.weight)
            if bias:
                ours.out_proj.bias.copy_(module.out_proj.bias)
        return ours
