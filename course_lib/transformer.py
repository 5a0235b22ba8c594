"""The Transformer: positions, layer norm, blocks, the encoder-decoder and a decoder-only LM (chapter 6).

Chapter 5's encoder-decoder read and wrote with RNNs and used attention as a look-up
into the source. Vaswani et al. (2017), "Attention Is All You Need", drop the recurrence:
each layer is attention (``course_lib.attention``) plus a position-wise feed-forward
network, each wrapped in a residual connection and a layer normalisation,

    post-LN (the original):   x = LN(x + MHA(x))          x = LN(x + FFN(x))
    pre-LN (GPT-2 on):        x = x + MHA(LN(x))          x = x + FFN(LN(x))

with FFN(x) = W_2 ReLU(W_1 x + b_1) + b_2 (the non-linearity between the two linear maps).
Pre-LN keeps an unnormalised residual path from the input to the output, so it trains
without a learning-rate warm-up; it needs one more LN at the end of the stack.

Attention does not see order: permuting the inputs of an encoder permutes its outputs
(test_transformer.py checks it). Order enters through **positional encodings** added to
the token embeddings: fixed sinusoids (Vaswani et al.), a learned vector per position
(GPT), or, as an extension, rotations of the queries and keys (``apply_rotary``, RoPE, Su
et al. 2021), whose scores depend only on the distance between positions.

- ``Transformer``: encoder (``EncoderBlock``: self-attention, FFN) and decoder
  (``DecoderBlock``: masked self-attention, cross-attention to the encoder's output, FFN),
  for sequence-to-sequence tasks; ``forward``, ``greedy_decode`` and ``beam_search`` are
  called as chapter 5's ``Seq2Seq``, so ``course_lib.seq2seq.train_seq2seq``,
  ``translate`` and ``exact_match`` serve it as they are.
- ``TransformerLM``: the decoder alone, without cross-attention (an ``EncoderBlock`` with a
  causal mask), keeping the course's contract ``forward(idx, targets=None) -> (logits,
  loss)`` and ``get_block_size()``.

    >>> config = TransformerConfig(vocab_size=5, d_model=8, n_heads=2, d_ff=16, n_layers=1, max_len=6)
    >>> logits, loss = TransformerLM(config)(torch.tensor([[0, 3, 4]]), torch.tensor([[3, 4, 1]]))
    >>> tuple(logits.shape), loss.dim()
    ((1, 3, 5), 0)

Scope: PyTorch's default initialisation; token embeddings start at N(0, 1), the scale of
the sinusoids, so they are not multiplied by sqrt(d_model) (Vaswani et al. do, with
embeddings tied to the output layer, which are not tied here); no key-value cache
(decoding re-reads the prefix at each step); no label smoothing; rotary embeddings are a
function with its test, not an option of the models.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .attention import MultiHeadAttention, causal_mask, padding_mask
from .neural_lm import _check_idx, _loss
from .train import _check_positive_int, _eval_mode

__all__ = ["SinusoidalPositionalEncoding", "LearnedPositionalEmbedding", "apply_rotary", "LayerNorm", "FeedForward",
           "TransformerConfig", "EncoderBlock", "DecoderBlock", "Encoder", "Decoder", "Transformer", "TransformerLM"]

_POSITIONAL = ("sinusoidal", "learned", "none")
_ACTIVATIONS = {"relu": F.relu, "gelu": F.gelu}


# ---------------------------------------------------------------------------- positions
def _check_sequence(x, d_model: int, max_len: int) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 3 or x.shape[-1] != d_model:
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"expected x of shape (B, T, d_model={d_model}), got {got}")
    if x.shape[1] > max_len:
        raise ValueError(f"a sequence of length T={x.shape[1]} is longer than max_len={max_len}, the positions "
                         "this encoding has; build it with a larger max_len")


class SinusoidalPositionalEncoding(nn.Module):
    """Vaswani et al. (2017): PE[pos, 2i] = sin(pos / 10000^(2i/d)), PE[pos, 2i+1] = cos(pos / 10000^(2i/d)).

    ``forward(x (B, T, C)) -> x + PE[:T]``; the table ``pe`` (max_len, C) is fixed, not
    learned. Each pair of columns is a rotation turning at its own speed, from 1 radian per
    position (i = 0) to 1/10000; so PE[pos + k] is a fixed linear map of PE[pos], the same
    for every pos, and no two positions within max_len get the same vector.

        PE[0] = [sin 0, cos 0, sin 0, cos 0, ...] = [0, 1, 0, 1, ...]
    """

    def __init__(self, d_model: int, max_len: int):
        super().__init__()
        _check_positive_int("d_model", d_model)
        _check_positive_int("max_len", max_len)
        self.d_model, self.max_len = d_model, max_len
        pos = torch.arange(max_len, dtype=torch.float64)[:, None]  # (L, 1)
        two_i = torch.arange(0, d_model, 2, dtype=torch.float64)  # (ceil(C/2),) the even columns 2i
        angle = pos / 10000 ** (two_i / d_model)  # (L, ceil(C/2))
        pe = torch.zeros(max_len, d_model, dtype=torch.float64)  # (L, C)
        pe[:, 0::2] = torch.sin(angle)
        pe[:, 1::2] = torch.cos(angle[:, :d_model // 2])  # an odd d_model has one sine more than cosines
        self.register_buffer("pe", pe.float(), persistent=False)  # computed again on load, not stored

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, max_len={self.max_len}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_sequence(x, self.d_model, self.max_len)
        return x + self.pe[:x.shape[1]].to(x.dtype)  # (B, T, C) + (T, C)


class LearnedPositionalEmbedding(nn.Module):
    """One learned vector per position (GPT, Radford et al. 2018): ``forward(x (B, T, C)) -> x + W[:T]``.

    ``weight`` (max_len, C) starts at N(0, 1) like ``nn.Embedding``; a position never seen
    in training keeps its random vector, so unlike the sinusoids it cannot extrapolate.
    """

    def __init__(self, max_len: int, d_model: int):
        super().__init__()
        _check_positive_int("max_len", max_len)
        _check_positive_int("d_model", d_model)
        self.d_model, self.max_len = d_model, max_len
        self.weight = nn.Parameter(torch.randn(max_len, d_model))  # (L, C)

    def extra_repr(self) -> str:
        return f"max_len={self.max_len}, d_model={self.d_model}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_sequence(x, self.d_model, self.max_len)
        return x + self.weight[:x.shape[1]]  # (B, T, C) + (T, C)


def apply_rotary(x: torch.Tensor, positions: torch.Tensor, base: float = 10000.0) -> torch.Tensor:
    """Rotary position embedding (RoPE, Su et al. 2021, RoFormer): rotate each pair (x[2i], x[2i+1]).

    ``x`` (..., T, hs) with hs even, ``positions`` (T,): the pair i of the vector at
    position m turns by the angle m * base^(-2i/hs). Applied to queries and keys (not to
    values), q_m . k_n = (R_m q) . (R_n k) = q . R_(n-m) k depends on the positions only
    through n - m: attention sees relative positions. Lengths are kept: a rotation.

        apply_rotary(x, torch.tensor([0, ...])) leaves position 0 as it is.
    """
    if not isinstance(x, torch.Tensor) or x.dim() < 2 or x.shape[-1] % 2:
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"expected x of shape (..., T, hs) with an even hs (the numbers are rotated in pairs), "
                         f"got {got}")
    T, hs = x.shape[-2:]
    if not isinstance(positions, torch.Tensor) or positions.shape != (T,):
        got = tuple(positions.shape) if isinstance(positions, torch.Tensor) else type(positions).__name__
        raise ValueError(f"expected positions of shape (T,) = ({T},), one position per row of x, got {got}")
    inv_freq = base ** (-torch.arange(0, hs, 2, dtype=torch.float64, device=x.device) / hs)  # (hs/2,)
    angle = positions.to(x.device, torch.float64)[:, None] * inv_freq[None, :]  # (T, hs/2)
    cos, sin = angle.cos().to(x.dtype), angle.sin().to(x.dtype)  # (T, hs/2) each
    x1, x2 = x[..., 0::2], x[..., 1::2]  # (..., T, hs/2): the first and second number of each pair
    rotated = torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)  # (..., T, hs/2, 2)
    return rotated.flatten(-2)  # (..., T, hs/2, 2) -> (..., T, hs), pairs back in place


# ---------------------------------------------------------------------------- the two sublayers' helpers
class LayerNorm(nn.Module):
    """Ba, Kiros & Hinton (2016): normalise each vector over its C numbers, then scale and shift.

        y = (x - mean) / sqrt(var + eps) * weight + bias      mean, var over the last dimension

    ``var`` is the biased variance (divided by C, not C - 1), as ``nn.LayerNorm`` computes
    it; ``weight`` starts at 1 and ``bias`` at 0, and the state dict has the same keys, so
    ``LayerNorm(C).load_state_dict(nn.LayerNorm(C).state_dict())`` works both ways.

        [1, 2, 3] -> [-1.2247, 0, 1.2247]    (mean 2, var 2/3)
    """

    def __init__(self, d_model: int, eps: float = 1e-5):
        super().__init__()
        _check_positive_int("d_model", d_model)
        self.d_model, self.eps = d_model, eps
        self.weight = nn.Parameter(torch.ones(d_model))  # (C,) the gain
        self.bias = nn.Parameter(torch.zeros(d_model))  # (C,)

    def extra_repr(self) -> str:
        return f"{self.d_model}, eps={self.eps}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.dim() == 0 or x.shape[-1] != self.d_model:
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"expected x of shape (..., {self.d_model}), got {got}")
        mean = x.mean(dim=-1, keepdim=True)  # (..., 1)
        var = ((x - mean) ** 2).mean(dim=-1, keepdim=True)  # (..., 1) biased: divided by C
        return (x - mean) / torch.sqrt(var + self.eps) * self.weight + self.bias  # (..., C)


class FeedForward(nn.Module):
    """The position-wise network: FFN(x) = fc2(act(fc1(x))), C -> d_ff -> C, the same at every position.

    The non-linearity sits **between** the two linear maps (a ReLU after fc2 would cut the
    residual update's negative half). ``dropout`` acts on the hidden units, as in
    ``nn.TransformerEncoderLayer``.
    """

    def __init__(self, d_model: int, d_ff: int, dropout: float = 0.0, activation: str = "relu"):
        super().__init__()
        _check_positive_int("d_model", d_model)
        _check_positive_int("d_ff", d_ff)
        if activation not in _ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; expected 'relu' or 'gelu'")
        self.activation = activation
        self.fc1 = nn.Linear(d_model, d_ff)  # W_1 (d_ff, C), b_1
        self.fc2 = nn.Linear(d_ff, d_model)  # W_2 (C, d_ff), b_2
        self.dropout = nn.Dropout(dropout)

    def extra_repr(self) -> str:
        return f"activation={self.activation!r}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = _ACTIVATIONS[self.activation]
        return self.fc2(self.dropout(act(self.fc1(x))))  # (B, T, C) -> (B, T, d_ff) -> (B, T, C)


# ---------------------------------------------------------------------------- config and blocks
@dataclass
class TransformerConfig:
    vocab_size: int  # V: target ids, the decoder's (and TransformerLM's) vocabulary
    src_vocab_size: int | None = None  # the encoder's vocabulary; None: the same as vocab_size
    d_model: int = 64  # C: the width of every position's vector
    n_heads: int = 4  # nh: attention heads, each of head size hs = d_model // n_heads
    d_ff: int = 256  # hidden width of the feed-forward network (4 * d_model in Vaswani et al.)
    n_layers: int = 2  # blocks in the encoder and in the decoder (TransformerLM: its blocks)
    max_len: int = 128  # the longest sequence; TransformerLM's block size
    dropout: float = 0.0  # on embeddings, attention weights, FFN hidden units, every sublayer's output
    norm_first: bool = True  # pre-LN x + f(LN(x)); False: post-LN LN(x + f(x)), the original
    positional: str = "sinusoidal"  # "sinusoidal", "learned" or "none" (attention alone sees no order)
    activation: str = "relu"  # the FFN's non-linearity: "relu" or "gelu"
    bias: bool = True  # biases in the attention projections

    def __post_init__(self):
        for name in ("vocab_size", "d_model", "n_heads", "d_ff", "n_layers", "max_len"):
            _check_positive_int(f"TransformerConfig.{name}", getattr(self, name))
        if self.src_vocab_size is not None:
            _check_positive_int("TransformerConfig.src_vocab_size", self.src_vocab_size)
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}: each head gets "
                             "d_model // n_heads numbers")
        if not (isinstance(self.dropout, (int, float)) and 0 <= self.dropout < 1):
            raise ValueError(f"TransformerConfig.dropout must be a probability in [0, 1), got {self.dropout!r}")
        if self.positional not in _POSITIONAL:
            raise ValueError(f"unknown positional {self.positional!r}; expected 'sinusoidal', 'learned' or 'none'")
        if self.activation not in _ACTIVATIONS:
            raise ValueError(f"unknown activation {self.activation!r}; expected 'relu' or 'gelu'")


def _check_config(config) -> TransformerConfig:
    if not isinstance(config, TransformerConfig):
        raise TypeError(f"expected a TransformerConfig, got {type(config).__name__}")
    return config


class EncoderBlock(nn.Module):
    """Self-attention then the FFN, each inside a residual connection with a LayerNorm.

    ``forward(x (B, T, C), mask=None) -> (B, T, C)``; ``mask`` True = may attend,
    broadcastable to (B, nh, T, T): ``padding_mask`` for an encoder, ``causal_mask`` for a
    decoder-only LM. Dropout acts on each sublayer's output before it is added.
    """

    def __init__(self, config: TransformerConfig):
        super().__init__()
        c = _check_config(config)
        self.norm_first = c.norm_first
        self.ln1 = LayerNorm(c.d_model)
        self.self_attn = MultiHeadAttention(c.d_model, c.n_heads, c.dropout, c.bias)
        self.ln2 = LayerNorm(c.d_model)
        self.ffn = FeedForward(c.d_model, c.d_ff, c.dropout, c.activation)
        self.drop = nn.Dropout(c.dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if self.norm_first:  # pre-LN
            x = x + self.drop(self.self_attn(self.ln1(x), mask=mask))
            x = x + self.drop(self.ffn(self.ln2(x)))
        else:  # post-LN (Vaswani et al. 2017)
            x = self.ln1(x + self.drop(self.self_attn(x, mask=mask)))
            x = self.ln2(x + self.drop(self.ffn(x)))
        return x  # (B, T, C)


class DecoderBlock(nn.Module):
    """Masked self-attention, cross-attention to the encoder's output, the FFN; three residual lines.

    ``forward(x (B, T, C), memory (B, S, C), tgt_mask=None, memory_mask=None) -> (B, T, C)``:
    ``tgt_mask`` broadcastable to (B, nh, T, T), usually ``causal_mask(T)``; ``memory_mask``
    to (B, nh, T, S), usually ``padding_mask(src_lengths)``. The queries of the
    cross-attention come from the decoder, its keys and values from ``memory``.
    """

    def __init__(self, config: TransformerConfig):
        super().__init__()
        c = _check_config(config)
        self.norm_first = c.norm_first
        self.ln1 = LayerNorm(c.d_model)
        self.self_attn = MultiHeadAttention(c.d_model, c.n_heads, c.dropout, c.bias)
        self.ln2 = LayerNorm(c.d_model)
        self.cross_attn = MultiHeadAttention(c.d_model, c.n_heads, c.dropout, c.bias)
        self.ln3 = LayerNorm(c.d_model)
        self.ffn = FeedForward(c.d_model, c.d_ff, c.dropout, c.activation)
        self.drop = nn.Dropout(c.dropout)

    def forward(self, x: torch.Tensor, memory: torch.Tensor, tgt_mask: torch.Tensor | None = None,
                memory_mask: torch.Tensor | None = None) -> torch.Tensor:
        if self.norm_first:  # pre-LN; memory comes normalised from the encoder's final LN
            x = x + self.drop(self.self_attn(self.ln1(x), mask=tgt_mask))
            x = x + self.drop(self.cross_attn(self.ln2(x), memory, mask=memory_mask))
            x = x + self.drop(self.ffn(self.ln3(x)))
        else:  # post-LN (Vaswani et al. 2017)
            x = self.ln1(x + self.drop(self.self_attn(x, mask=tgt_mask)))
            x = self.ln2(x + self.drop(self.cross_attn(x, memory, mask=memory_mask)))
            x = self.ln3(x + self.drop(self.ffn(x)))
        return x  # (B, T, C)


def _positional(c: TransformerConfig) -> nn.Module:
    if c.positional == "sinusoidal":
        return SinusoidalPositionalEncoding(c.d_model, c.max_len)
    if c.positional == "learned":
        return LearnedPositionalEmbedding(c.max_len, c.d_model)
    return nn.Identity()  # "none"


def _check_length(name: str, ids: torch.Tensor, max_len: int) -> None:
    if ids.shape[1] > max_len:
        raise ValueError(f"expected {name} of shape (B, T) with T <= max_len={max_len}, got {tuple(ids.shape)}")


class _Stack(nn.Module):
    """Token embeddings, positions, dropout, ``n_layers`` blocks and (pre-LN) a final LayerNorm."""

    def __init__(self, config: TransformerConfig, vocab_size: int, block: type[nn.Module]):
        super().__init__()
        c = self.config = _check_config(config)
        self.vocab_size = vocab_size
        self.wte = nn.Embedding(vocab_size, c.d_model)  # (V, C)
        self.pos = _positional(c)
        self.drop = nn.Dropout(c.dropout)
        self.blocks = nn.ModuleList([block(c) for _ in range(c.n_layers)])
        self.ln_f = LayerNorm(c.d_model) if c.norm_first else nn.Identity()  # post-LN ends normalised already

    def embed(self, ids: torch.Tensor, name: str) -> torch.Tensor:
        _check_idx(ids, self.vocab_size, name)
        _check_length(name, ids, self.config.max_len)
        return self.drop(self.pos(self.wte(ids.long())))  # (B, T, C)


class Encoder(_Stack):
    """``forward(src (B, S), mask=None) -> memory (B, S, C)``; ``mask`` usually ``padding_mask(src_lengths)``."""

    def __init__(self, config: TransformerConfig, vocab_size: int | None = None):
        super().__init__(config, vocab_size or config.src_vocab_size or config.vocab_size, EncoderBlock)

    def forward(self, src: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = self.embed(src, "src")  # (B, S, C)
        for block in self.blocks:
            x = block(x, mask)
        return self.ln_f(x)


class Decoder(_Stack):
    """``forward(tgt_in (B, T), memory (B, S, C), memory_mask=None) -> (B, T, C)``, causal: position t
    sees ``tgt_in[:, :t+1]`` and the whole source. Right padding of ``tgt_in`` needs no mask:
    the real positions come first and never see it."""

    def __init__(self, config: TransformerConfig, vocab_size: int | None = None):
        super().__init__(config, vocab_size or config.vocab_size, DecoderBlock)

    def forward(self, tgt_in: torch.Tensor, memory: torch.Tensor, memory_mask: torch.Tensor | None = None):
        x = self.embed(tgt_in, "tgt_in")  # (B, T, C)
        mask = causal_mask(x.shape[1], device=x.device)  # (T, T)
        for block in self.blocks:
            x = block(x, memory, mask, memory_mask)
        return self.ln_f(x)


# ---------------------------------------------------------------------------- the models
def _source_mask(src: torch.Tensor, src_lengths) -> torch.Tensor | None:
    """(B, 1, 1, S) True at real source tokens, or None when ``src_lengths`` is None (no padding)."""
    if src_lengths is None:
        return None
    B, S = src.shape
    if not isinstance(src_lengths, torch.Tensor) or src_lengths.shape != (B,):
        got = tuple(src_lengths.shape) if isinstance(src_lengths, torch.Tensor) else type(src_lengths).__name__
        raise ValueError(f"expected src_lengths of shape (B,) = ({B},), one length per source, got {got}")
    if B and not src_lengths.dtype.is_floating_point and (src_lengths.min() < 1 or src_lengths.max() > S):
        raise ValueError(f"src_lengths must be in 1..S = 1..{S} (every source has a real token), got "
                         f"{src_lengths.min().item()}..{src_lengths.max().item()}")
    return padding_mask(src_lengths.to(src.device), max_len=S)  # (B, 1, 1, S)


class Transformer(nn.Module):
    """The encoder-decoder Transformer of Vaswani et al. (2017), called like chapter 5's ``Seq2Seq``.

    ``forward(src (B, S), src_lengths (B,) or None, tgt_in (B, T), tgt_out=None) -> (logits
    (B, T, V), loss)``: ``logits[:, t]`` scores the token after ``tgt_in[:, :t+1]``, and
    ``loss`` is the mean cross-entropy over the positions where ``tgt_out != -1`` (padding
    is -1 in ``translation_data.collate``), None without ``tgt_out``. Sources are padded on
    the right; ``src_lengths`` None means no padding.
    """

    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.config = _check_config(config)
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size)  # (V, C)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def encode(self, src: torch.Tensor, src_lengths: torch.Tensor | None = None):
        """``-> (memory (B, S, C), src_mask (B, 1, 1, S) or None)``."""
        _check_idx(src, self.encoder.vocab_size, "src")
        src_mask = _source_mask(src, src_lengths)
        return self.encoder(src, src_mask), src_mask

    def decode(self, tgt_in: torch.Tensor, memory: torch.Tensor, src_mask: torch.Tensor | None = None):
        """``-> logits (B, T, V)`` of the target given the encoder's output."""
        return self.lm_head(self.decoder(tgt_in, memory, src_mask))  # (B, T, C) -> (B, T, V)

    def forward(self, src, src_lengths, tgt_in, tgt_out=None):
        memory, src_mask = self.encode(src, src_lengths)  # (B, S, C)
        _check_idx(tgt_in, self.config.vocab_size, "tgt_in")
        if tgt_in.shape[0] != src.shape[0]:
            raise ValueError(f"src and tgt_in must have the same batch size B, got {tuple(src.shape)} and "
                             f"{tuple(tgt_in.shape)}")
        logits = self.decode(tgt_in.to(memory.device), memory, src_mask)  # (B, T, V)
        return logits, _loss(logits, tgt_out, self.config.vocab_size)

    def _check_max_len(self, max_len) -> int:
        _check_positive_int("max_len", max_len)
        if max_len > self.config.max_len:
            raise ValueError(f"max_len={max_len} is more than the decoder's max_len={self.config.max_len} positions")
        return max_len

    def greedy_decode(self, src, src_lengths, max_len: int, bos_id: int = 1, eos_id: int = 2):
        """The likeliest token at every step, for a batch, the decoder re-reading its prefix.

        Returns ``(tokens, attention)``: ``tokens[b]`` the ids of example b without the final
        ``eos_id`` (at most ``max_len`` ids when none came), ``attention`` (B, T, S) the last
        decoder layer's cross-attention, averaged over heads, of each step that ran (row t
        produced output token t; zeros after ``eos_id``), as ``Seq2Seq.greedy_decode``.
        The defaults of ``bos_id`` and ``eos_id`` are ``translation_data.CharVocab``'s.
        """
        self._check_max_len(max_len)
        cross = self.decoder.blocks[-1].cross_attn
        with _eval_mode(self):
            memory, src_mask = self.encode(src, src_lengths)
            B, device = memory.shape[0], memory.device
            ys = torch.full((B, 1), bos_id, dtype=torch.long, device=device)  # (B, 1): <s>
            done = torch.zeros(B, dtype=torch.bool, device=device)  # (B,)
            cross.keep_weights = True
            try:
                for _ in range(max_len):
                    y = self.decode(ys, memory, src_mask)[:, -1].argmax(dim=-1)  # (B, t, V) -> (B,)
                    y = torch.where(done, eos_id, y)
                    ys = torch.cat([ys, y[:, None]], dim=1)  # (B, t + 1)
                    done = done | (y == eos_id)
                    if done.all():
                        break
                weights = cross.last_weights.mean(dim=1)  # (B, nh, T, S) -> (B, T, S), from the last step's prefix
            finally:
                cross.keep_weights, cross.last_weights = False, None
        out = ys[:, 1:]  # (B, T)
        ended = torch.cumsum(out == eos_id, dim=1) - (out == eos_id).long() > 0  # (B, T): after an eos_id
        weights = weights.masked_fill(ended[:, :, None], 0.0)
        tokens = [row[:row.index(eos_id)] if eos_id in row else row for row in out.tolist()]
        return tokens, weights

    def beam_search(self, src, src_lengths, beam_size: int, max_len: int, length_penalty: float = 0.6,
                    bos_id: int = 1, eos_id: int = 2):
        """Chapter 5's beam search (``course_lib.seq2seq.beam_search``) for each example:
        a list of (tokens, score); a beam's state is its prefix of tokens."""
        from .seq2seq import beam_search

        _check_positive_int("beam_size", beam_size)
        self._check_max_len(max_len)
        results = []
        with _eval_mode(self):
            memory, src_mask = self.encode(src, src_lengths)
            for b in range(memory.shape[0]):
                mem_b = memory[b:b + 1]  # (1, S, C)
                mask_b = None if src_mask is None else src_mask[b:b + 1]  # (1, 1, 1, S)

                def step(y, prefix, mem_b=mem_b, mask_b=mask_b):
                    prefix = torch.cat([prefix, y[:, None]], dim=1)  # (K, t + 1)
                    K = prefix.shape[0]  # the beams, as a batch
                    logits = self.decode(prefix, mem_b.expand(K, -1, -1),
                                         None if mask_b is None else mask_b.expand(K, -1, -1, -1))[:, -1]  # (K, V)
                    return F.log_softmax(logits.float(), dim=-1), prefix

                empty = torch.zeros(1, 0, dtype=torch.long, device=memory.device)  # (1, 0): nothing before <s>
                results.append(beam_search(step, empty, beam_size, max_len, bos_id, eos_id, length_penalty,
                                           reorder=lambda prefix, index: prefix[index]))
        return results


class TransformerLM(nn.Module):
    """A decoder-only Transformer language model (GPT's layout): blocks of causal self-attention and FFN.

    ``forward(idx (B, T), targets=None) -> (logits (B, T, V), loss)``, T <= ``max_len``;
    ``logits[:, t]`` depends on ``idx[:, :t+1]`` only (the causal mask), ``targets == -1``
    are skipped in the loss. ``get_block_size()`` is ``config.max_len``.
    """

    def __init__(self, config: TransformerConfig):
        super().__init__()
        c = self.config = _check_config(config)
        self.wte = nn.Embedding(c.vocab_size, c.d_model)  # (V, C)
        self.pos = _positional(c)
        self.drop = nn.Dropout(c.dropout)
        self.blocks = nn.ModuleList([EncoderBlock(c) for _ in range(c.n_layers)])  # no cross-attention
        self.ln_f = LayerNorm(c.d_model) if c.norm_first else nn.Identity()
        self.lm_head = nn.Linear(c.d_model, c.vocab_size)  # (V, C)

    def get_block_size(self) -> int:
        return self.config.max_len

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        V = self.config.vocab_size
        _check_idx(idx, V)
        B, T = idx.shape
        if T > self.config.max_len:
            raise ValueError(f"expected idx of shape (B, T) with T <= block_size={self.config.max_len}, "
                             f"got {tuple(idx.shape)}")
        x = self.drop(self.pos(self.wte(idx.long())))  # (B, T, C)
        mask = causal_mask(T, device=idx.device)  # (T, T)
        for block in self.blocks:
            x = block(x, mask)
        logits = self.lm_head(self.ln_f(x))  # (B, T, V)
        return logits, _loss(logits, targets, V)
