"""Encoder-decoder models with attention, greedy and beam-search decoding (chapter 5).

Chapter 4's RNN continued one sequence. Here a source sequence x_1..x_S is mapped to a
target y_1..y_T of another length (Sutskever, Vinyals & Le 2014; Cho et al. 2014): an
**encoder** RNN reads the source, a **decoder** RNN writes the target one token at a time,
starting from the encoder's final state,

    h_s = enc(x_s, h_{s-1})       s_t = dec([y_{t-1}; c_t], s_{t-1})       logits_t = W_out [s_t; c_t]

Without attention c_t is absent and everything the decoder knows of the source passes
through the H numbers of h_S: the **bottleneck**, which long sources overflow. **Attention**
(Bahdanau, Cho & Bengio 2015) lets each decoder step look back at every h_s: a score
e_ts = score(s_{t-1}, h_s), weights a_t = softmax(e_t) over the real source positions, and
the context c_t = sum_s a_ts h_s. Two scores:

- ``AdditiveAttention``: e = v^T tanh(W_q q + W_k k) (Bahdanau et al. 2015);
- ``DotAttention``: e = q . k, optionally divided by sqrt(H) (Luong, Pham & Manning 2015, "dot").

Both are used at the same place (Bahdanau's order: the query is the decoder state before
the step, and the context joins the step's input and the output layer), so the two models
differ only by the score. Luong et al. query with the state after the step and add an
"attentional" layer; their "general" score q^T W k is one matrix away from ``DotAttention``.

Training uses **teacher forcing**: the decoder reads the true y_{t-1}, so all T losses come
from one pass. At test time it reads its own guesses, which it never saw in training:
**exposure bias**, whose errors compound. ``greedy_decode`` takes the likeliest token at
every step; ``beam_search`` keeps the ``beam_size`` best prefixes instead, and ranks finished
sequences by log P(Y) / lp(Y) with the length penalty of Wu et al. (2016),

    lp(Y) = ((5 + |Y|) / 6) ** alpha       (|Y| counts the tokens, </s> included)

alpha = 0 ranks by log P(Y) alone, which favours short outputs (every token lowers log P);
a larger alpha divides a long output's log P by more, and so favours long outputs. The
default is alpha = 0.6.

    src_vocab, tgt_vocab = date_vocabs()                     # course_lib.translation_data
    src, src_lengths, tgt_in, tgt_out = collate(pairs, src_vocab, tgt_vocab)
    model = Seq2Seq(Seq2SeqConfig(len(src_vocab), len(tgt_vocab), attention="additive", fused=True))
    logits, loss = model(src, src_lengths, tgt_in, tgt_out)  # logits (B, T, V)
    tokens, attention = model.greedy_decode(src, src_lengths, max_len=11)  # attention (B, T, S)
    [(best, score), ...] = model.beam_search(src, src_lengths, beam_size=4, max_len=11)  # one per example

Padding: sources are padded on the right; ``src_lengths`` says where each ends. The encoder
stops each sequence at its last real token (its final state is taken there), attention
gives padded positions a weight of exactly 0, and targets padded with -1 are left out of
the loss, so an example's numbers never depend on the rest of its batch.

Scope: one direction (no bidirectional encoder), the same cell, size and number of layers
in the encoder and decoder (so the decoder starts from the encoder's state as it is), no
reversal of the source (Sutskever et al.'s trick), no scheduled sampling, no input
feeding; beam search runs one example at a time, its beams batched, correctness first.
``Seq2SeqConfig(fused=True)`` runs torch's GRU/LSTM kernels on the same parameters as
chapter 4's layers (``course_lib.rnn``), as ``RNNConfig(fused=True)`` does.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from .neural_lm import _check_idx, _loss
from .rnn import GRU, LSTM
from .runtime import pick_device
from .train import History, _check_positive_int, _check_settings, _eval_mode, _fit, _model_device
from .translation_data import collate

__all__ = ["Seq2SeqConfig", "Encoder", "AdditiveAttention", "DotAttention", "Decoder", "Seq2Seq",
           "length_normalized", "beam_search", "Seq2SeqHistory", "train_seq2seq", "translate", "exact_match"]

_CELLS = {"gru": (GRU, nn.GRU), "lstm": (LSTM, nn.LSTM)}  # (chapter 4's layer, torch's fused one)
_ATTENTIONS = (None, "additive", "dot")


@dataclass
class Seq2SeqConfig:
    src_vocab: int  # V_src: number of source token ids (specials included)
    tgt_vocab: int  # V: number of target token ids (specials included)
    n_embd: int = 32  # C: size of a token's embedding, in the encoder and the decoder
    hidden_size: int = 128  # H: state size of every layer, encoder and decoder
    cell: str = "gru"  # "gru" or "lstm"
    attention: str | None = "additive"  # None (the bottleneck), "additive" (Bahdanau) or "dot" (Luong)
    attn_dim: int | None = None  # A: the additive score's hidden size; None means H
    num_layers: int = 1  # stacked layers in the encoder and in the decoder
    dropout: float = 0.0  # on embeddings, between layers and before the output layer
    fused: bool = False  # torch.nn.GRU/LSTM on the same parameters: the same numbers, faster
    bos_id: int = 1  # <s>: the decoder's first input (translation_data.CharVocab's numbering)
    eos_id: int = 2  # </s>: the decoder's last output

    def __post_init__(self):
        if self.cell not in _CELLS:
            raise ValueError(f"unknown cell {self.cell!r}; expected 'gru' or 'lstm'")
        if self.attention not in _ATTENTIONS:
            raise ValueError(f"unknown attention {self.attention!r}; expected None, 'additive' or 'dot'")
        for name in ("src_vocab", "tgt_vocab", "n_embd", "hidden_size", "num_layers"):
            _check_positive_int(f"Seq2SeqConfig.{name}", getattr(self, name))
        if self.attn_dim is not None:
            _check_positive_int("Seq2SeqConfig.attn_dim", self.attn_dim)
        if not (isinstance(self.dropout, (int, float)) and 0 <= self.dropout < 1):
            raise ValueError(f"Seq2SeqConfig.dropout must be a probability in [0, 1), got {self.dropout!r}")
        for name in ("bos_id", "eos_id"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < self.tgt_vocab:
                raise ValueError(f"Seq2SeqConfig.{name} must be a target id in 0..{self.tgt_vocab - 1}, got {value!r}")


def _layers(config: Seq2SeqConfig, input_size: int) -> nn.Module:
    layer = _CELLS[config.cell][1 if config.fused else 0]
    between = config.dropout if config.num_layers > 1 else 0.0  # torch warns about dropout with one layer
    return layer(input_size, config.hidden_size, config.num_layers, batch_first=True, dropout=between)


def _top(state) -> torch.Tensor:
    """The top layer's h (B, H) of a GRU state (L, B, H) or an LSTM pair."""
    return state[0][-1] if isinstance(state, tuple) else state[-1]


def _check_lengths(src: torch.Tensor, src_lengths) -> torch.Tensor:
    B, S = src.shape
    if not isinstance(src_lengths, torch.Tensor) or src_lengths.shape != (B,):
        got = tuple(src_lengths.shape) if isinstance(src_lengths, torch.Tensor) else type(src_lengths).__name__
        raise ValueError(f"expected src_lengths of shape (B,) = ({B},), one length per source, got {got}")
    if src_lengths.dtype.is_floating_point or src_lengths.dtype == torch.bool:
        raise TypeError(f"expected src_lengths to hold integers, got dtype {src_lengths.dtype}")
    if B and (src_lengths.min() < 1 or src_lengths.max() > S):
        raise ValueError(f"src_lengths must be in 1..S = 1..{S} (every source has at least one real token and "
                         f"no more than the padded width), got {src_lengths.min().item()}..{src_lengths.max().item()}")
    return src_lengths.long()


# ---------------------------------------------------------------------------- encoder
class Encoder(nn.Module):
    """Embedding and recurrent layers over right-padded sources.

    ``forward(src (B, S), src_lengths (B,)) -> (outputs (B, S, H), state, mask (B, S))``:
    ``outputs[b, s]`` is the top layer's h_s (zeros at padded positions), ``state`` every
    layer's state after the **last real token** of each source ((L, B, H), a pair for the
    LSTM), ``mask`` is True at real tokens. A padded position never changes a state: the
    fused layers read packed sequences (``pack_padded_sequence``); chapter 4's layers are
    stepped one position at a time and keep the old state where the source has ended.
    """

    def __init__(self, config: Seq2SeqConfig):
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.src_vocab, config.n_embd)  # (V_src, C)
        self.rnn = _layers(config, config.n_embd)

    def forward(self, src: torch.Tensor, src_lengths: torch.Tensor):
        _check_idx(src, self.config.src_vocab, "src")
        lengths = _check_lengths(src, src_lengths)
        B, S = src.shape
        mask = torch.arange(S, device=src.device)[None, :] < lengths[:, None].to(src.device)  # (B, S)
        x = F.dropout(self.wte(src.long()), self.config.dropout, self.training)  # (B, S, C)
        if self.config.fused:
            packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
            out, state = self.rnn(packed)
            out, _ = pad_packed_sequence(out, batch_first=True, total_length=S)  # (B, S, H), zeros at padding
            return out, state, mask
        outs, state = [], None
        for t in range(S):
            out, new = self.rnn(x[:, t:t + 1], state)  # (B, 1, H)
            keep = mask[:, t, None]  # (B, 1): has source b not ended yet?
            outs.append(out[:, 0] * keep)  # (B, H)
            if state is None:  # t = 0: every source has a first token
                state = new
            elif isinstance(new, tuple):  # (h, c), each (L, B, H)
                state = tuple(torch.where(keep[None], n, s) for n, s in zip(new, state))
            else:
                state = torch.where(keep[None], new, state)  # (L, B, H)
        return torch.stack(outs, dim=1), state, mask  # (B, S, H)


# ---------------------------------------------------------------------------- attention
def _check_attention_inputs(query, keys, mask, query_dim: int, key_dim: int) -> None:
    if not isinstance(keys, torch.Tensor) or keys.dim() != 3 or keys.shape[-1] != key_dim:
        got = tuple(keys.shape) if isinstance(keys, torch.Tensor) else type(keys).__name__
        raise ValueError(f"expected keys of shape (B, S, {key_dim}), got {got}")
    B, S, _ = keys.shape
    if not isinstance(query, torch.Tensor) or query.shape != (B, query_dim):
        got = tuple(query.shape) if isinstance(query, torch.Tensor) else type(query).__name__
        raise ValueError(f"expected query of shape (B, {query_dim}) = ({B}, {query_dim}), got {got}")
    if not isinstance(mask, torch.Tensor) or mask.shape != (B, S):
        got = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise ValueError(f"expected mask of shape (B, S) = ({B}, {S}) like keys, got {got}")
    if mask.dtype != torch.bool:
        raise TypeError(f"expected a bool mask (True = real token), got dtype {mask.dtype}")
    if not mask.any(dim=1).all():
        raise ValueError("a row of mask is all False: every source needs at least one real token to attend to")


def _attend(scores: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor):
    """Masked softmax of scores (B, S), then the weighted sum of keys (B, S, H)."""
    scores = scores.masked_fill(~mask, float("-inf"))  # exp(-inf) = 0: padding gets weight exactly 0
    weights = F.softmax(scores, dim=-1)  # (B, S), each row sums to 1 over the real tokens
    context = torch.bmm(weights[:, None, :], keys)[:, 0]  # (B, 1, S) @ (B, S, H) -> (B, H)
    return context, weights


class AdditiveAttention(nn.Module):
    """Bahdanau et al. (2015): e_s = v^T tanh(W_q q + W_k k_s), a = softmax(e), c = sum_s a_s k_s.

    ``forward(query (B, Dq), keys (B, S, Dk), mask (B, S)) -> (context (B, Dk), weights (B, S))``;
    ``mask`` is True at real tokens, and the other positions get weight exactly 0. W_k k
    does not depend on the query: a decoder computes it once per source
    (``project_keys``) and passes it as ``projected_keys`` at every step.
    """

    def __init__(self, query_dim: int, key_dim: int, attn_dim: int):
        super().__init__()
        for name, value in [("query_dim", query_dim), ("key_dim", key_dim), ("attn_dim", attn_dim)]:
            _check_positive_int(name, value)
        self.query_dim, self.key_dim = query_dim, key_dim
        self.W_q = nn.Linear(query_dim, attn_dim, bias=False)  # (A, Dq)
        self.W_k = nn.Linear(key_dim, attn_dim, bias=False)  # (A, Dk)
        self.v = nn.Linear(attn_dim, 1, bias=False)  # (1, A)

    def project_keys(self, keys: torch.Tensor) -> torch.Tensor:
        return self.W_k(keys)  # (B, S, A)

    def forward(self, query, keys, mask, projected_keys: torch.Tensor | None = None):
        _check_attention_inputs(query, keys, mask, self.query_dim, self.key_dim)
        pk = self.project_keys(keys) if projected_keys is None else projected_keys  # (B, S, A)
        scores = self.v(torch.tanh(self.W_q(query)[:, None, :] + pk))[..., 0]  # (B, 1, A) + (B, S, A) -> (B, S)
        return _attend(scores, keys, mask)


class DotAttention(nn.Module):
    """Luong et al. (2015), "dot": e_s = q . k_s (divided by sqrt(H) if ``scaled``); no parameters.

    Same call as ``AdditiveAttention`` (``projected_keys`` is ignored: there is nothing to
    project); the query and the keys must have the same size H.
    """

    def __init__(self, scaled: bool = False):
        super().__init__()
        self.scaled = bool(scaled)

    def forward(self, query, keys, mask, projected_keys=None):
        if not isinstance(keys, torch.Tensor) or keys.dim() != 3:
            got = tuple(keys.shape) if isinstance(keys, torch.Tensor) else type(keys).__name__
            raise ValueError(f"expected keys of shape (B, S, H), got {got}")
        H = keys.shape[-1]
        _check_attention_inputs(query, keys, mask, H, H)
        scores = torch.bmm(keys, query[:, :, None])[..., 0]  # (B, S, H) @ (B, H, 1) -> (B, S)
        if self.scaled:
            scores = scores / math.sqrt(H)
        return _attend(scores, keys, mask)

    def extra_repr(self) -> str:
        return f"scaled={self.scaled}"


# ---------------------------------------------------------------------------- decoder
class Decoder(nn.Module):
    """One target token at a time: ``step(y_prev (B,), state, encoder_outputs (B, S, H), mask (B, S))
    -> (logits (B, V), state, attention weights (B, S) or None)``.

    With attention, the query is the top layer's state before the step; the context joins
    the embedding of y_prev as the layers' input and the new state as the output layer's.
    ``forward`` runs the steps over a whole target (teacher forcing).
    """

    def __init__(self, config: Seq2SeqConfig):
        super().__init__()
        self.config = config
        C, H, V = config.n_embd, config.hidden_size, config.tgt_vocab
        self.wte = nn.Embedding(V, C)  # (V, C)
        if config.attention == "additive":
            self.attention = AdditiveAttention(H, H, config.attn_dim or H)
        elif config.attention == "dot":
            self.attention = DotAttention()
        else:
            self.attention = None
        extra = 0 if self.attention is None else H  # the context c_t, (B, H)
        self.rnn = _layers(config, C + extra)
        self.lm_head = nn.Linear(H + extra, V)  # W_out (V, H [+ H]), b_out (V,)

    def project_keys(self, encoder_outputs: torch.Tensor) -> torch.Tensor | None:
        """What every step would recompute from the source alone (additive attention's W_k h_s)."""
        return self.attention.project_keys(encoder_outputs) if isinstance(self.attention, AdditiveAttention) else None

    def step(self, y_prev: torch.Tensor, state, encoder_outputs: torch.Tensor, mask: torch.Tensor,
             projected_keys: torch.Tensor | None = None):
        if not isinstance(y_prev, torch.Tensor) or y_prev.dim() != 1:
            got = tuple(y_prev.shape) if isinstance(y_prev, torch.Tensor) else type(y_prev).__name__
            raise ValueError(f"expected y_prev of shape (B,), one previous token per sequence, got {got}")
        p = self.config.dropout
        x = F.dropout(self.wte(y_prev.long()), p, self.training)  # (B, C)
        weights = None
        if self.attention is not None:
            context, weights = self.attention(_top(state), encoder_outputs, mask, projected_keys)  # (B, H), (B, S)
            x = torch.cat([x, context], dim=-1)  # (B, C + H)
        out, state = self.rnn(x[:, None, :], state)  # (B, 1, H)
        out = out[:, 0]  # (B, H)
        if self.attention is not None:
            out = torch.cat([out, context], dim=-1)  # (B, 2H)
        logits = self.lm_head(F.dropout(out, p, self.training))  # (B, V)
        return logits, state, weights

    def forward(self, tgt_in: torch.Tensor, state, encoder_outputs: torch.Tensor, mask: torch.Tensor):
        """Teacher forcing: ``tgt_in`` (B, T) -> logits (B, T, V), final state, weights (B, T, S) or None.

        Without attention the layers read the whole target in one call; with it, step by step.
        """
        if self.attention is None:
            x = F.dropout(self.wte(tgt_in.long()), self.config.dropout, self.training)  # (B, T, C)
            out, state = self.rnn(x, state)  # (B, T, H)
            return self.lm_head(F.dropout(out, self.config.dropout, self.training)), state, None
        pk = self.project_keys(encoder_outputs)
        logits, weights = [], []
        for t in range(tgt_in.shape[1]):
            lt, state, wt = self.step(tgt_in[:, t], state, encoder_outputs, mask, pk)
            logits.append(lt)
            weights.append(wt)
        return torch.stack(logits, dim=1), state, torch.stack(weights, dim=1)  # (B, T, V), (B, T, S)


# ---------------------------------------------------------------------------- the model
class Seq2Seq(nn.Module):
    """Encoder, decoder, and the decoding strategies; see the module's docstring.

    ``forward(src (B, S), src_lengths (B,), tgt_in (B, T), tgt_out=None) -> (logits (B, T, V), loss)``,
    the course contract with a source: ``loss`` is the mean cross-entropy (nats per token)
    over the positions where ``tgt_out != -1``, None without ``tgt_out``.
    """

    def __init__(self, config: Seq2SeqConfig):
        super().__init__()
        if not isinstance(config, Seq2SeqConfig):
            raise TypeError(f"expected a Seq2SeqConfig, got {type(config).__name__}")
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(self, src, src_lengths, tgt_in, tgt_out=None):
        _check_idx(tgt_in, self.config.tgt_vocab, "tgt_in")
        if tgt_in.shape[0] != getattr(src, "shape", (None,))[0]:
            raise ValueError(f"src and tgt_in must have the same batch size B, got {tuple(src.shape)} and "
                             f"{tuple(tgt_in.shape)}")
        enc, state, mask = self.encoder(src, src_lengths)  # (B, S, H), (L, B, H), (B, S)
        logits, _, _ = self.decoder(tgt_in.to(enc.device), state, enc, mask)  # (B, T, V)
        return logits, _loss(logits, tgt_out, self.config.tgt_vocab)

    def greedy_decode(self, src, src_lengths, max_len: int):
        """The likeliest token at every step, for a batch.

        Returns ``(tokens, attention)``: ``tokens[b]`` the ids of example b without the final
        ``</s>`` (at most ``max_len`` ids when no ``</s>`` came), ``attention`` (B, T, S)
        the weights of each step that ran (T <= max_len; row t produced output token t, the
        ``</s>`` included; zeros after it), or None for a model without attention.
        """
        _check_positive_int("max_len", max_len)
        c = self.config
        with _eval_mode(self):
            enc, state, mask = self.encoder(src, src_lengths)
            B, device = enc.shape[0], enc.device
            pk = self.decoder.project_keys(enc)
            y = torch.full((B,), c.bos_id, dtype=torch.long, device=device)  # (B,)
            done = torch.zeros(B, dtype=torch.bool, device=device)  # (B,)
            outs, weights = [], []
            for _ in range(max_len):
                logits, state, w = self.decoder.step(y, state, enc, mask, pk)  # (B, V), (B, S)
                y = logits.argmax(dim=-1)  # (B,)
                if w is not None:
                    weights.append(w * ~done[:, None])  # sequences already ended attend to nothing
                outs.append(torch.where(done, c.eos_id, y))
                done = done | (y == c.eos_id)
                if done.all():
                    break
        ids = torch.stack(outs, dim=1).tolist()  # (B, T)
        tokens = [row[:row.index(c.eos_id)] if c.eos_id in row else row for row in ids]
        return tokens, (torch.stack(weights, dim=1) if weights else None)  # (B, T, S)

    def beam_search(self, src, src_lengths, beam_size: int, max_len: int, length_penalty: float = 0.6):
        """Beam search for each example: a list of (tokens, score), one per example.

        ``tokens`` exclude ``</s>``; ``score`` is ``length_normalized(log P(tokens + </s>),
        len(tokens) + 1, length_penalty)`` (for an output cut at ``max_len`` without ``</s>``,
        log P and the length of the ``max_len`` tokens). ``beam_size=1`` is greedy decoding.
        """
        _check_positive_int("beam_size", beam_size)
        _check_positive_int("max_len", max_len)
        results = []
        with _eval_mode(self):
            enc, state, mask = self.encoder(src, src_lengths)
            pk = self.decoder.project_keys(enc)
            for b in range(enc.shape[0]):
                enc_b, mask_b = enc[b:b + 1], mask[b:b + 1]  # (1, S, H), (1, S)
                pk_b = None if pk is None else pk[b:b + 1]

                def step(y, st, enc_b=enc_b, mask_b=mask_b, pk_b=pk_b):
                    K = y.shape[0]  # the beams, as a batch
                    logits, st, _ = self.decoder.step(y, st, enc_b.expand(K, -1, -1), mask_b.expand(K, -1),
                                                      None if pk_b is None else pk_b.expand(K, -1, -1))
                    return F.log_softmax(logits.double(), dim=-1), st  # (K, V), in float64 like the sums

                st_b = tuple(s[:, b:b + 1] for s in state) if isinstance(state, tuple) else state[:, b:b + 1]
                results.append(beam_search(step, st_b, beam_size, max_len, self.config.bos_id, self.config.eos_id,
                                           length_penalty))
        return results


# ---------------------------------------------------------------------------- beam search
def length_normalized(log_prob: float, length: int, alpha: float) -> float:
    """Wu et al. (2016): log_prob / ((5 + length) / 6) ** alpha; alpha = 0 leaves log_prob as it is.

        length_normalized(-2.0, 1, 1.0) -> -2.0;  length_normalized(-4.0, 7, 1.0) -> -2.0
    """
    return log_prob / ((5 + length) / 6) ** alpha


def _reorder(state, index: torch.Tensor):
    """Rows ``index`` of a state laid out (L, K, H), or of each tensor of a pair (the LSTM)."""
    return tuple(s[:, index] for s in state) if isinstance(state, tuple) else state[:, index]


def beam_search(step, state, beam_size: int, max_len: int, bos_id: int, eos_id: int, length_penalty: float = 0.6,
                reorder=_reorder) -> tuple[list[int], float]:
    """The best sequence found for one source by a beam of ``beam_size``; ``(tokens, score)``.

    ``step(y_prev (K,), state) -> (log_probs (K, V), state)`` advances K prefixes by one
    token; ``reorder(state, index (K',))`` keeps the rows ``index`` of a state (by default
    dimension 1 of a (L, K, H) state or of each tensor of a pair). At every step each live
    prefix is extended by every token; those candidates and the finished sequences kept so
    far are ranked together by ``length_normalized(log P, length, length_penalty)``, and the
    best ``beam_size`` are kept; a candidate ending in ``</s>`` is finished. The search stops
    when every kept sequence is finished or after ``max_len`` tokens. With ``beam_size=1``
    the best candidate is always the likeliest next token: greedy decoding.
    """
    _check_positive_int("beam_size", beam_size)
    _check_positive_int("max_len", max_len)
    done: list[tuple[list[int], float, float]] = []  # finished: (tokens with </s>, log P, score)
    alive_tokens: list[list[int]] = [[]]  # the live prefixes
    alive_logp = torch.zeros(1, dtype=torch.float64)  # (K,)
    y = torch.full((1,), bos_id, dtype=torch.long)
    for t in range(1, max_len + 1):
        log_probs, state = step(y, state)  # (K, V)
        logp = alive_logp[:, None] + log_probs.detach().double().cpu()  # (K, V): log P of every extension
        V = logp.shape[1]
        top = torch.topk(logp.view(-1), min(beam_size, logp.numel()))  # the best of each length t are enough
        cands = [(length_normalized(lp, t, length_penalty), lp, "new", i)
                 for lp, i in zip(top.values.tolist(), top.indices.tolist())]
        cands += [(score, lp, "done", j) for j, (_, lp, score) in enumerate(done)]
        cands.sort(key=lambda c: -c[0])  # stable: among equal scores, the earlier candidate first
        kept = cands[:beam_size]
        new_done, parents, new_tokens, new_logp = [], [], [], []
        for score, lp, kind, i in kept:
            if kind == "done":
                new_done.append(done[i])
                continue
            parent, token = divmod(i, V)
            tokens = alive_tokens[parent] + [token]
            if token == eos_id:
                new_done.append((tokens, lp, score))
            else:
                parents.append(parent)
                new_tokens.append(tokens)
                new_logp.append(lp)
        done = new_done
        if not parents:
            break
        index = torch.tensor(parents, dtype=torch.long)
        state = reorder(state, index.to(log_probs.device))
        alive_tokens, alive_logp = new_tokens, torch.tensor(new_logp, dtype=torch.float64)
        y = torch.tensor([toks[-1] for toks in new_tokens], dtype=torch.long, device=log_probs.device)
    else:  # max_len reached: live prefixes compete as they are
        done += [(toks, lp, length_normalized(lp, len(toks), length_penalty))
                 for toks, lp in zip(alive_tokens, alive_logp.tolist())]
    tokens, _, score = max(done, key=lambda d: d[2])
    return (tokens[:-1] if tokens and tokens[-1] == eos_id else tokens), score


# ---------------------------------------------------------------------------- training and evaluation
@dataclass
class Seq2SeqHistory(History):
    """``History`` plus the exact-match accuracy on the validation pairs at each evaluation."""

    valid_accuracy: list[float] = field(default_factory=list)  # fraction of outputs equal to the target


def _batches(pairs, batch_size: int, src_vocab, tgt_vocab, device):
    for i in range(0, len(pairs), batch_size):
        yield tuple(t.to(device) for t in collate(pairs[i:i + batch_size], src_vocab, tgt_vocab))


def _mean_loss(model, pairs, src_vocab, tgt_vocab, batch_size: int, device) -> float:
    """Mean cross-entropy per target token (</s> included) over all of ``pairs``."""
    total, count = 0.0, 0
    with _eval_mode(model):
        for src, lengths, tgt_in, tgt_out in _batches(pairs, batch_size, src_vocab, tgt_vocab, device):
            logits, _ = model(src, lengths, tgt_in)  # (B, T, V)
            total += F.cross_entropy(logits.flatten(0, 1), tgt_out.flatten(), ignore_index=-1,
                                     reduction="sum").item()
            count += (tgt_out != -1).sum().item()
    return total / count


def translate(model: Seq2Seq, sources, src_vocab, tgt_vocab, max_len: int = 32, beam_size: int = 1,
              length_penalty: float = 0.6, batch_size: int = 256) -> list[str]:
    """Decode each source string to a target string: greedy (``beam_size=1``) or by beam search."""
    sources = list(sources)
    device = _model_device(model)
    out = []
    for i in range(0, len(sources), batch_size):
        chunk = [(s, "") for s in sources[i:i + batch_size]]
        src, lengths, _, _ = (t.to(device) for t in collate(chunk, src_vocab, tgt_vocab))
        if beam_size == 1:
            tokens, _ = model.greedy_decode(src, lengths, max_len)
        else:
            tokens = [toks for toks, _ in model.beam_search(src, lengths, beam_size, max_len, length_penalty)]
        out += [tgt_vocab.decode(toks) for toks in tokens]
    return out


def exact_match(model: Seq2Seq, pairs, src_vocab, tgt_vocab, beam_size: int = 1, batch_size: int = 256) -> float:
    """Fraction of ``pairs`` whose decoded source equals the target exactly (greedy by default).

    Decoding stops after the longest target's length + 1 tokens: room for ``</s>``, and an
    output longer than every target is wrong anyway.
    """
    pairs = list(pairs)
    if not pairs:
        raise ValueError("pairs is empty: give at least one (source, target) pair")
    max_len = max(len(t) for _, t in pairs) + 1
    outputs = translate(model, [s for s, _ in pairs], src_vocab, tgt_vocab, max_len, beam_size,
                        batch_size=batch_size)
    return sum(o == t for o, (_, t) in zip(outputs, pairs)) / len(pairs)


def train_seq2seq(model: Seq2Seq, train_pairs, src_vocab, tgt_vocab, valid_pairs=None, *, steps: int,
                  batch_size: int = 64, lr: float = 3e-3, weight_decay: float = 0.0, grad_clip: float | None = 1.0,
                  eval_every: int = 200, eval_size: int = 1000, target_accuracy: float | None = None,
                  device=None, seed: int = 1337, max_seconds: float | None = None,
                  progress: bool = True) -> Seq2SeqHistory:
    """Train ``model`` by teacher forcing on shuffled batches of (source, target) strings.

    AdamW at ``lr``, gradients clipped to norm ``grad_clip``. At step 0, every ``eval_every``
    steps and at the end: the mean loss on the first ``eval_size`` training pairs and on
    ``valid_pairs`` (up to ``eval_size`` of them), and the exact-match accuracy of greedy
    decoding on those validation pairs. ``target_accuracy`` stops training at the first
    evaluation that reaches it; ``max_seconds`` once the training steps (evaluation not
    counted, as in ``course_lib.train``) have taken that long.
    """
    _check_settings([("steps", steps), ("batch_size", batch_size), ("eval_every", eval_every),
                     ("eval_size", eval_size)],
                    [("lr", lr), ("grad_clip", grad_clip), ("max_seconds", max_seconds)], weight_decay)
    if target_accuracy is not None and not 0 < target_accuracy <= 1:
        raise ValueError(f"target_accuracy must be in (0, 1], got {target_accuracy!r}")
    train_pairs = list(train_pairs)
    if not train_pairs:
        raise ValueError("train_pairs is empty")
    valid_pairs = None if valid_pairs is None else list(valid_pairs)[:eval_size]
    device = pick_device() if device is None else device
    rng = random.Random(seed)
    history = Seq2SeqHistory()

    def measure(step: int) -> bool:
        """Evaluate; True if the target accuracy is reached."""
        history.steps.append(step)
        history.train_loss.append(_mean_loss(model, train_pairs[:eval_size], src_vocab, tgt_vocab, 256, device))
        if valid_pairs is None:
            return False
        history.valid_loss.append(_mean_loss(model, valid_pairs, src_vocab, tgt_vocab, 256, device))
        history.valid_accuracy.append(exact_match(model, valid_pairs, src_vocab, tgt_vocab))
        return target_accuracy is not None and history.valid_accuracy[-1] >= target_accuracy

    order = []

    def next_batch():
        nonlocal order
        if len(order) < batch_size:  # a new epoch: a new order of the pairs
            order = list(range(len(train_pairs)))
            rng.shuffle(order)
        idx, order = order[:batch_size], order[batch_size:]
        src, lengths, tgt_in, tgt_out = (t.to(device) for t in collate([train_pairs[i] for i in idx],
                                                                          src_vocab, tgt_vocab))
        return (src, lengths, tgt_in), tgt_out

    def forward(x, tgt_out):
        return model(*x, tgt_out)[1]

    return _fit(model, None, None, steps=steps, window=1, batch_size=batch_size, next_batch=next_batch,
                forward=forward, lr=lr, weight_decay=weight_decay, optimizer=None, lr_schedule=None,
                grad_clip=grad_clip, clip=torch.nn.utils.clip_grad_norm_, eval_every=eval_every, eval_batches=1,
                device=device, seed=seed, max_seconds=max_seconds, progress=progress, desc="training seq2seq",
                measure=measure, history=history)
