"""Recurrent language models: RNN, LSTM and GRU, trained by truncated backpropagation
through time (chapter 4).

Chapter 3's MLP sees a fixed window of k tokens; whatever came before it is lost. A
recurrent network keeps a state instead, updated by the same cell at every step,

    h_t = cell(x_t, h_{t-1})          logits_t = W_out h_t + b_out

so h_t can carry the whole past, however long, in H numbers. What this module adds:

- ``RNNCell``, ``LSTMCell``, ``GRUCell``: one step, written from the equations, with the
  parameters, initialisation and call of ``torch.nn.RNNCell`` / ``LSTMCell`` / ``GRUCell``,
  so ``ours.load_state_dict(theirs.state_dict())`` works and gives the same numbers;
- ``RNN``, ``LSTM``, ``GRU``: stacked layers run over a sequence, the same for
  ``torch.nn.RNN`` / ``LSTM`` / ``GRU`` (``weight_ih_l0`` ...), with ``batch_first=True``;
- ``RNNLanguageModel`` (``RNNConfig``): embedding, recurrent layers, output layer, keeping
  the course contract ``forward(idx, targets) -> (logits, loss)``, plus
  ``forward_with_state(idx, state) -> (logits, state)`` to carry the state across calls;
- ``tbptt_batches`` / ``train_tbptt``: truncated backpropagation through time, the text
  cut into ``batch_size`` streams read ``bptt`` tokens at a time, the state carried from
  one chunk to the next but detached, so gradients stop at the chunk's start;
- ``clip_grad_norm``: clipping by global norm, the usual cure for exploding gradients;
- ``gradient_norms_through_time``: ||dL/dx_t|| for each step t, the vanishing-gradient plot.

    >>> chunks = tbptt_batches(torch.arange(10), batch_size=2, bptt=3)  # streams 0..4 and 5..9
    >>> [(x.tolist(), y.tolist()) for x, y in chunks]
    [([[0, 1, 2], [5, 6, 7]], [[1, 2, 3], [6, 7, 8]]), ([[3], [8]], [[4], [9]])]

Sources: Elman (1990), "Finding Structure in Time" (the simple recurrent network);
Hochreiter & Schmidhuber (1997), "Long Short-Term Memory", with the forget gate of Gers,
Schmidhuber & Cummins (2000), "Learning to Forget", as torch has it; Cho et al. (2014),
"Learning Phrase Representations using RNN Encoder-Decoder for Statistical Machine
Translation" (the GRU); Williams & Peng (1990) for truncated BPTT; Pascanu, Mikolov &
Bengio (2013), "On the difficulty of training recurrent neural networks" (vanishing and
exploding gradients, clipping by norm); Zaremba, Sutskever & Vinyals (2014), "Recurrent
Neural Network Regularization" (dropout on the non-recurrent connections only, and the
streams-of-text batching).

Design: the state is an argument and a return value, never stored in the model, so a
caller sees where it flows (``logits, state = model.forward_with_state(idx, state)``). The
RNN sees the whole past, so its ``get_block_size()`` is ``UNBOUNDED_CONTEXT`` and
``course_lib.train.sequence_logprobs`` scores a text in one pass; the model's own
``sequence_logprobs`` gives the same numbers in chunks, the state carried between them.

Scope: one direction (no bidirectional layers), no ``proj_size``, no packed sequences of
unequal lengths, sequence inputs always batched (B, T, I). The time loop is plain Python,
slow but readable; ``RNNConfig(fused=True)`` runs torch's kernels on the same parameters
when speed matters. Clipping is by the L2 norm only.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .neural_lm import _check_idx, _loss
from .runtime import pick_device
from .train import (UNBOUNDED_CONTEXT, History, _check_model, _check_positive_int, _check_sampling, _check_settings,
                    _check_tokens, _eval_mode, _fit, _model_device, _sample_next)

__all__ = ["rnn_step", "lstm_step", "gru_step", "RNNCell", "LSTMCell", "GRUCell", "RNN", "LSTM", "GRU",
           "RNNConfig", "RNNLanguageModel", "UNBOUNDED_CONTEXT", "detach_state", "tbptt_batches", "train_tbptt",
           "clip_grad_norm", "gradient_norms_through_time"]

_GATES = {"rnn": 1, "lstm": 4, "gru": 3}  # blocks of H rows in weight_ih / weight_hh


# ---------------------------------------------------------------------------- one step
# gi = W_ih x + b_ih is computed by the caller (for a whole sequence at once in a layer);
# the rest of each equation is here. Weights are laid out as torch's: (G*H, I) and (G*H, H).
def _affine(x, w, b):
    return x @ w.T if b is None else x @ w.T + b


def rnn_step(gi, h, w_hh, b_hh, nonlinearity="tanh"):
    """Elman (1990): h' = tanh(W_ih x + b_ih + W_hh h + b_hh) (or relu)."""
    a = gi + _affine(h, w_hh, b_hh)  # (B, H)
    return torch.tanh(a) if nonlinearity == "tanh" else torch.relu(a)


def lstm_step(gi, state, w_hh, b_hh):
    """Hochreiter & Schmidhuber (1997) with a forget gate; gates in torch's order i, f, g, o."""
    h, c = state
    gi_, gf, gg, go = (gi + _affine(h, w_hh, b_hh)).chunk(4, dim=-1)  # (B, 4H) -> 4 x (B, H)
    i = torch.sigmoid(gi_)  # input gate   i = σ(W_ii x + b_ii + W_hi h + b_hi)
    f = torch.sigmoid(gf)  # forget gate  f = σ(W_if x + b_if + W_hf h + b_hf)
    g = torch.tanh(gg)  # candidate    g = tanh(W_ig x + b_ig + W_hg h + b_hg)
    o = torch.sigmoid(go)  # output gate  o = σ(W_io x + b_io + W_ho h + b_ho)
    c = f * c + i * g  # c' = f ⊙ c + i ⊙ g: the memory is updated by addition
    h = o * torch.tanh(c)  # h' = o ⊙ tanh(c')
    return h, c


def gru_step(gi, h, w_hh, b_hh):
    """Cho et al. (2014) as torch and cuDNN compute it, gates in the order r, z, n. The paper
    resets h before the product, tanh(W_in x + W_hn (r ⊙ h)); torch resets the product."""
    i_r, i_z, i_n = gi.chunk(3, dim=-1)  # (B, 3H) -> 3 x (B, H)
    h_r, h_z, h_n = _affine(h, w_hh, b_hh).chunk(3, dim=-1)  # (B, 3H) -> 3 x (B, H)
    r = torch.sigmoid(i_r + h_r)  # reset gate   r = σ(W_ir x + b_ir + W_hr h + b_hr)
    z = torch.sigmoid(i_z + h_z)  # update gate  z = σ(W_iz x + b_iz + W_hz h + b_hz)
    n = torch.tanh(i_n + r * h_n)  # candidate    n = tanh(W_in x + b_in + r ⊙ (W_hn h + b_hn))
    return (1 - z) * n + z * h  # h' = (1 - z) ⊙ n + z ⊙ h


def _fmt(shape) -> str:
    """(4, 7, 12) -> "(4, 7, 12)"; (10,) -> "(10,)"."""
    return str(tuple(shape)).replace("'", "")


class _Recurrent(nn.Module):
    """What cells and layers share: the mode, the size checks, one step."""

    def _setup(self, mode: str, input_size, hidden_size, bias, nonlinearity):
        _check_positive_int("input_size", input_size)
        _check_positive_int("hidden_size", hidden_size)
        if not isinstance(bias, bool):
            raise TypeError(f"bias must be True or False, got {bias!r}")
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"unknown nonlinearity {nonlinearity!r}; expected 'tanh' or 'relu'")
        self.mode, self.input_size, self.hidden_size = mode, input_size, hidden_size
        self.bias, self.nonlinearity = bias, nonlinearity

    def _add_weights(self, suffix: str, input_size: int) -> None:
        G, H = _GATES[self.mode], self.hidden_size
        self.register_parameter("weight_ih" + suffix, nn.Parameter(torch.empty(G * H, input_size)))  # (G*H, I)
        self.register_parameter("weight_hh" + suffix, nn.Parameter(torch.empty(G * H, H)))  # (G*H, H)
        for name in ("bias_ih", "bias_hh"):  # (G*H,) each; absent without bias, as in torch
            self.register_parameter(name + suffix, nn.Parameter(torch.empty(G * H)) if self.bias else None)

    def reset_parameters(self) -> None:
        """Every parameter uniform in ±1/sqrt(H), torch's initialisation, in torch's order."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)

    def _step(self, gi, state, w_hh, b_hh):
        if self.mode == "lstm":
            return lstm_step(gi, state, w_hh, b_hh)
        if self.mode == "gru":
            return gru_step(gi, state, w_hh, b_hh)
        return rnn_step(gi, state, w_hh, b_hh, self.nonlinearity)

    def _check_x(self, x, shapes: list[tuple], dims: list[int]) -> None:
        expected = " or ".join(_fmt(s) for s in shapes)
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"expected x as a torch tensor of shape {expected}, got {type(x).__name__}")
        if x.dim() not in dims or x.shape[-1] != self.input_size:
            raise ValueError(f"expected x of shape {expected}, got {_fmt(x.shape)}")
        if not x.dtype.is_floating_point:
            raise TypeError(f"expected x to hold floats, got dtype {x.dtype}; token ids go through an embedding first")

    def _states(self, hx, x, shape: tuple, what: str, suffix: str = "") -> tuple:
        """``hx`` as a tuple of tensors of ``shape`` ((h, c) for the LSTM), zeros if None."""
        names = ("h" + suffix, "c" + suffix) if self.mode == "lstm" else ("h" + suffix,)
        if hx is None:
            return tuple(x.new_zeros(shape) for _ in names)
        if self.mode == "lstm" and (not isinstance(hx, (tuple, list)) or len(hx) != 2):
            raise TypeError(f"expected the LSTM state as a tuple {_fmt(names)}, got {type(hx).__name__}")
        hx = tuple(hx) if self.mode == "lstm" else (hx,)
        for name, t in zip(names, hx):
            if not isinstance(t, torch.Tensor) or t.shape != shape:
                got = _fmt(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
                raise ValueError(f"expected {name} of shape {what} = {_fmt(shape)}, got {got}")
        return hx

    def extra_repr(self) -> str:
        return f"{self.input_size}, {self.hidden_size}, bias={self.bias}"


# ---------------------------------------------------------------------------- cells
class _Cell(_Recurrent):
    """One step of ``rnn_step`` / ``lstm_step`` / ``gru_step`` with the cell's own weights."""

    def __init__(self, mode, input_size, hidden_size, bias=True, nonlinearity="tanh"):
        super().__init__()
        self._setup(mode, input_size, hidden_size, bias, nonlinearity)
        self._add_weights("", input_size)
        self.reset_parameters()

    def forward(self, x, hx=None):
        """x (B, I) or unbatched (I,); hx (B, H) ((h, c) for the LSTM), zeros if None."""
        n_in, H = self.input_size, self.hidden_size
        self._check_x(x, [("B", n_in), (n_in,)], [1, 2])
        unbatched = x.dim() == 1
        x = x[None] if unbatched else x  # (B, I)
        shape = (H,) if unbatched else (x.shape[0], H)
        hx = self._states(hx, x, shape, "(H,)" if unbatched else "(B, H)")
        hx = tuple(t[None] if unbatched else t for t in hx)  # (B, H) each
        gi = _affine(x, self.weight_ih, self.bias_ih)  # (B, G*H)
        out = self._step(gi, hx if self.mode == "lstm" else hx[0], self.weight_hh, self.bias_hh)
        if unbatched:
            return tuple(t[0] for t in out) if self.mode == "lstm" else out[0]
        return out


class RNNCell(_Cell):
    """Elman's cell: ``h' = tanh(W_ih x + b_ih + W_hh h + b_hh)``; as ``torch.nn.RNNCell``."""

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, nonlinearity: str = "tanh"):
        super().__init__("rnn", input_size, hidden_size, bias, nonlinearity)


class LSTMCell(_Cell):
    """The LSTM cell, called ``h, c = cell(x, (h, c))``; as ``torch.nn.LSTMCell``."""

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True):
        super().__init__("lstm", input_size, hidden_size, bias)


class GRUCell(_Cell):
    """The GRU cell: ``h' = (1 - z) ⊙ n + z ⊙ h``; as ``torch.nn.GRUCell``."""

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True):
        super().__init__("gru", input_size, hidden_size, bias)


# ---------------------------------------------------------------------------- layers
class _Layers(_Recurrent):
    def __init__(self, mode, input_size, hidden_size, num_layers=1, bias=True, batch_first=True, dropout=0.0,
                 nonlinearity="tanh"):
        super().__init__()
        self._setup(mode, input_size, hidden_size, bias, nonlinearity)
        self.num_layers = _check_positive_int("num_layers", num_layers)
        if not (isinstance(dropout, (int, float)) and 0 <= dropout < 1):
            raise ValueError(f"dropout must be a probability in [0, 1), got {dropout!r}")
        self.batch_first, self.dropout = bool(batch_first), float(dropout)
        for k in range(num_layers):  # weight_ih_l0, weight_hh_l0, bias_ih_l0, bias_hh_l0, then _l1 ...
            self._add_weights(f"_l{k}", input_size if k == 0 else hidden_size)
        self.reset_parameters()

    def forward(self, x, hx=None):
        """x (B, T, I) ((T, B, I) if not batch_first) -> (output (B, T, H), h_n (num_layers, B, H)).

        ``output`` holds the top layer's h_t at every step; ``h_n`` every layer's last h.
        The LSTM takes and returns the pair ``(h, c)``. ``hx`` None starts from zeros.
        """
        L, n_in, H = self.num_layers, self.input_size, self.hidden_size
        self._check_x(x, [("B", "T", n_in) if self.batch_first else ("T", "B", n_in)], [3])
        x = x if self.batch_first else x.transpose(0, 1)  # (B, T, I)
        B, T, _ = x.shape
        if T == 0:
            raise ValueError(f"expected x of shape (B, T, {n_in}) with T >= 1, got {_fmt(x.shape)}")
        hx = self._states(hx, x, (L, B, H), "(num_layers, B, H)", suffix="0")
        out, finals = x, []
        for k in range(L):
            w_ih, w_hh, b_ih, b_hh = (getattr(self, f"{n}_l{k}") for n in
                                      ("weight_ih", "weight_hh", "bias_ih", "bias_hh"))
            gi = _affine(out, w_ih, b_ih)  # (B, T, G*H): the inputs' part of every step at once
            state = tuple(t[k] for t in hx) if self.mode == "lstm" else hx[0][k]  # (B, H)
            hs = []
            for t in range(T):
                state = self._step(gi[:, t], state, w_hh, b_hh)
                hs.append(state[0] if self.mode == "lstm" else state)
            out = torch.stack(hs, dim=1)  # (B, T, H)
            if k < L - 1:  # between layers only, as torch
                out = F.dropout(out, self.dropout, self.training)
            finals.append(state)
        if self.mode == "lstm":
            h_n = (torch.stack([s[0] for s in finals]), torch.stack([s[1] for s in finals]))  # (L, B, H) each
        else:
            h_n = torch.stack(finals)  # (L, B, H)
        return (out if self.batch_first else out.transpose(0, 1)), h_n

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, num_layers={self.num_layers}, batch_first={self.batch_first}, "
                f"dropout={self.dropout}")


class RNN(_Layers):
    """Stacked Elman layers over a sequence; parameters and results as ``torch.nn.RNN``."""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = True, dropout: float = 0.0, nonlinearity: str = "tanh"):
        super().__init__("rnn", input_size, hidden_size, num_layers, bias, batch_first, dropout, nonlinearity)


class LSTM(_Layers):
    """Stacked LSTM layers, ``output, (h_n, c_n) = lstm(x, (h0, c0))``; as ``torch.nn.LSTM``."""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = True, dropout: float = 0.0):
        super().__init__("lstm", input_size, hidden_size, num_layers, bias, batch_first, dropout)


class GRU(_Layers):
    """Stacked GRU layers over a sequence; parameters and results as ``torch.nn.GRU``."""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = True, dropout: float = 0.0):
        super().__init__("gru", input_size, hidden_size, num_layers, bias, batch_first, dropout)


_LAYERS = {"rnn": (RNN, nn.RNN), "lstm": (LSTM, nn.LSTM), "gru": (GRU, nn.GRU)}


def detach_state(state):
    """The same numbers cut from the graph: a backward pass through them stops here."""
    if state is None:
        return None
    return tuple(s.detach() for s in state) if isinstance(state, tuple) else state.detach()


# ---------------------------------------------------------------------------- the language model
@dataclass
class RNNConfig:
    vocab_size: int  # V: number of distinct tokens
    cell: str = "lstm"  # "rnn" (Elman), "lstm" or "gru"
    n_embd: int = 32  # C: size of a token's embedding, the input of the first layer
    hidden_size: int = 128  # H: size of each layer's state h_t
    num_layers: int = 1  # stacked layers; layer k + 1 reads the h_t of layer k
    dropout: float = 0.0  # on the non-recurrent connections: embeddings, between layers, before the head
    fused: bool = False  # run torch.nn.RNN/LSTM/GRU instead: the same parameters and numbers, faster

    def __post_init__(self):
        if self.cell not in _LAYERS:
            raise ValueError(f"unknown cell {self.cell!r}; expected one of {', '.join(map(repr, _LAYERS))}")
        for name in ("vocab_size", "n_embd", "hidden_size", "num_layers"):
            _check_positive_int(f"RNNConfig.{name}", getattr(self, name))
        if not (isinstance(self.dropout, (int, float)) and 0 <= self.dropout < 1):
            raise ValueError(f"RNNConfig.dropout must be a probability in [0, 1), got {self.dropout!r}")


class RNNLanguageModel(nn.Module):
    """Embedding, recurrent layers, output layer: ``logits_t = W_out h_t + b_out``.

    The state is passed explicitly, never stored in the model:
    ``logits, state = model.forward_with_state(idx, state)`` continues from ``state``
    (None: zeros) and returns the state after the last token, to hand to the next call
    (``detach_state`` it first when training). ``forward(idx, targets, state=None)`` is
    the course contract on top of it. Reading a text in chunks with the state carried
    gives exactly the logits of one pass over the whole text.

    The model sees the whole past, so ``get_block_size()`` is ``UNBOUNDED_CONTEXT``:
    ``course_lib.train.sequence_logprobs`` and ``bits_per_char`` then read each text in one
    pass, and ``course_lib.train.generate`` feeds the whole sequence at every step. The
    methods ``sequence_logprobs`` (in chunks) and ``generate`` (one step per token) give the
    same results with the state carried. ``train`` and ``evaluate`` need an explicit
    ``block_size`` (windows starting from a zero state); ``train_tbptt`` is this model's loop.
    """

    def __init__(self, config: RNNConfig):
        super().__init__()
        if not isinstance(config, RNNConfig):
            raise TypeError(f"expected an RNNConfig, got {type(config).__name__}")
        self.config = config
        V, C, H = config.vocab_size, config.n_embd, config.hidden_size
        layers = _LAYERS[config.cell][1 if config.fused else 0]
        self.wte = nn.Embedding(V, C)  # (V, C) token embeddings
        between = config.dropout if config.num_layers > 1 else 0.0  # torch warns about dropout with one layer
        self.rnn = layers(C, H, config.num_layers, batch_first=True, dropout=between)
        self.lm_head = nn.Linear(H, V)  # W_out (V, H), b_out (V,)

    def get_block_size(self) -> int:
        return UNBOUNDED_CONTEXT

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward_with_state(self, idx: torch.Tensor, state=None):
        """(B, T) ids and the state before them -> logits (B, T, V) and the state after them."""
        _check_idx(idx, self.config.vocab_size)
        p = self.config.dropout
        x = F.dropout(self.wte(idx.long()), p, self.training)  # (B, T, C)
        out, state = self.rnn(x, state)  # (B, T, H); state (L, B, H), or a pair for the LSTM
        logits = self.lm_head(F.dropout(out, p, self.training))  # (B, T, V)
        return logits, state

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, state=None):
        logits, _ = self.forward_with_state(idx, state)
        return logits, _loss(logits, targets, self.config.vocab_size)

    def sequence_logprobs(self, ids, start_id: int, chunk_size: int = 1024, device=None) -> torch.Tensor:
        """ln P of every token of ``ids`` after one ``start_id``, float64 (N,), read in chunks.

        The same numbers as ``course_lib.train.sequence_logprobs`` (one pass over the
        text), in memory that grows with ``chunk_size`` instead of the text's length.
        """
        return self.texts_logprobs([ids], start_id, chunk_size, device)[0]

    def texts_logprobs(self, texts_ids, start_id: int, chunk_size: int = 1024, device=None) -> list[torch.Tensor]:
        """``sequence_logprobs`` of several texts at once, read side by side as one batch.

        A recurrent network reads a text step by step, so one long text keeps the machine
        busy with one small matrix product per step; the texts of a split (the three test
        plays) are read together, each a row of the batch, the shorter ones padded at the
        end. Padding comes after a text's last token, so it changes none of its numbers.
        ``course_lib.train.bits_per_char`` uses this method when a model has it.
        """
        texts = []
        for ids in texts_ids:
            ids = torch.tensor(ids, dtype=torch.long if len(ids) == 0 else None) if isinstance(ids, (list, tuple)) \
                else ids
            texts.append(_check_tokens("ids", ids))
        if isinstance(start_id, bool) or not isinstance(start_id, int) or not 0 <= start_id < self.config.vocab_size:
            raise ValueError(f"start_id must be a token id in 0..{self.config.vocab_size - 1}, got {start_id!r}")
        _check_positive_int("chunk_size", chunk_size)
        if not texts:
            return []
        device = _model_device(self) if device is None else device
        lengths = [len(t) for t in texts]
        n = max(lengths)
        targets = torch.full((len(texts), n), start_id, dtype=torch.long)  # (B, N) padded after each text's end
        for b, t in enumerate(texts):
            targets[b, :len(t)] = t
        inputs = torch.cat([torch.full((len(texts), 1), start_id), targets[:, :-1]], dim=1)  # (B, N) shifted right
        out, state = torch.empty(len(texts), n, dtype=torch.float64), None
        with _eval_mode(self):
            for i in range(0, n, chunk_size):
                logits, state = self.forward_with_state(inputs[:, i:i + chunk_size].to(device), state)  # (B, T, V)
                logp = F.log_softmax(logits.double(), dim=-1)  # (B, T, V)
                out[:, i:i + chunk_size] = logp.gather(-1, targets[:, i:i + chunk_size, None].to(device))[..., 0].cpu()
        return [out[b, :length] for b, length in enumerate(lengths)]

    def generate(self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """``course_lib.train.generate`` with the state carried: the prompt is read once,
        then each new token costs one step instead of a pass over everything so far.
        Same arguments, same sampling (on the CPU with ``generator``), same tokens."""
        _check_idx(idx, self.config.vocab_size)
        _check_sampling(max_new_tokens, temperature, top_k)
        idx = idx.long().to(_model_device(self))
        with _eval_mode(self):
            logits, state = self.forward_with_state(idx)  # (B, T, V): the prompt, once
            for i in range(max_new_tokens):
                nxt = _sample_next(logits, temperature, top_k, generator).to(idx.device)  # (B, 1)
                idx = torch.cat([idx, nxt], dim=1)  # (B, T + 1)
                if i < max_new_tokens - 1:
                    logits, state = self.forward_with_state(nxt, state)  # (B, 1, V): one step
        return idx


# ---------------------------------------------------------------------------- truncated BPTT
def tbptt_batches(data, batch_size: int, bptt: int, device="cpu") -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Consecutive chunks (x, y) of ``batch_size`` contiguous streams of ``data``.

    The 1-D ``data`` is cut into ``batch_size`` streams of ``n = len(data) // batch_size``
    tokens (the remainder is dropped); row b of every chunk continues row b of the chunk
    before, so a state carried from chunk to chunk has read everything before it in its
    stream. x is (B, bptt), the last chunk possibly shorter; ``y[:, t]`` follows ``x[:, t]``.
    """
    _check_positive_int("batch_size", batch_size)
    _check_positive_int("bptt", bptt)
    data = _check_tokens("data", data)
    n = len(data) // batch_size
    if n < 2:
        raise ValueError(f"data holds {len(data)} tokens: too few for batch_size={batch_size} streams of at "
                         f"least 2 tokens (an input and its target); need {2 * batch_size}")
    streams = data[:n * batch_size].view(batch_size, n).to(device)  # (B, n) row b: tokens b*n .. b*n + n - 1

    def chunks():
        for i in range(0, n - 1, bptt):
            T = min(bptt, n - 1 - i)
            yield streams[:, i:i + T], streams[:, i + 1:i + 1 + T]  # (B, T) each

    return chunks()


def train_tbptt(model, train_data, valid_data=None, *, steps: int | None = None, epochs: float | None = None,
                batch_size: int = 32, bptt: int = 64, lr: float = 1e-3, weight_decay: float = 0.0,
                optimizer: torch.optim.Optimizer | None = None, lr_schedule: Callable[[int], float] | None = None,
                grad_clip: float | None = 1.0, eval_every: int = 100, eval_batches: int = 20, device=None,
                seed: int = 1337, max_seconds: float | None = None, progress: bool = True) -> History:
    """Train a stateful model by truncated backpropagation through time; return its ``History``.

    The chunks of ``tbptt_batches(train_data, batch_size, bptt)`` are read in order; the
    state left by one chunk starts the next, detached, so each backward pass covers
    ``bptt`` steps while the forward pass carries the whole stream. Each pass over the data
    (an epoch) starts again from a zero state. Give ``steps`` or ``epochs``. Otherwise as
    ``course_lib.train.train``, whose loop it runs on these chunks (AdamW, ``lr_schedule``,
    ``max_seconds``, divergence), with ``grad_clip`` by ``clip_grad_norm`` on by default.
    The train and validation losses are measured as ``train``'s are, by ``evaluate`` on
    fixed windows of ``bptt`` tokens read from a zero state; ``bits_per_char`` measures
    whole texts.
    """
    _check_model(model)
    if not callable(getattr(model, "forward_with_state", None)):
        raise TypeError("train_tbptt needs a stateful model with forward_with_state(idx, state) -> (logits, state), "
                        f"such as RNNLanguageModel; got {type(model).__name__} (course_lib.train.train trains it)")
    if (steps is None) == (epochs is None):
        raise ValueError(f"give steps or epochs (one of them), got steps={steps!r}, epochs={epochs!r}")
    _check_settings([("batch_size", batch_size), ("bptt", bptt), ("eval_every", eval_every),
                     ("eval_batches", eval_batches)] + ([("steps", steps)] if steps is not None else []),
                    [("epochs", epochs), ("lr", lr), ("grad_clip", grad_clip), ("max_seconds", max_seconds)],
                    weight_decay)
    train_data = _check_tokens("train_data", train_data, max(2 * batch_size, bptt + 1))
    valid_data = None if valid_data is None else _check_tokens("valid_data", valid_data, bptt + 1)
    if steps is None:
        steps = max(1, math.ceil(epochs * math.ceil((len(train_data) // batch_size - 1) / bptt)))
    device = pick_device() if device is None else device
    state, chunks = None, iter(())

    def next_batch():
        nonlocal state, chunks
        batch = next(chunks, None)
        if batch is None:  # a new epoch: from the start of every stream, from a zero state
            state, chunks = None, tbptt_batches(train_data, batch_size, bptt, device)
            batch = next(chunks)
        return batch  # (B, T) each

    def forward(x, y):
        nonlocal state
        logits, state = model.forward_with_state(x, state)  # (B, T, V)
        state = detach_state(state)  # the next chunk starts here; its gradients stop here
        return _loss(logits, y, logits.shape[-1])

    return _fit(model, train_data, valid_data, steps=steps, window=bptt, batch_size=batch_size,
                next_batch=next_batch, forward=forward, lr=lr, weight_decay=weight_decay, optimizer=optimizer,
                lr_schedule=lr_schedule, grad_clip=grad_clip, clip=clip_grad_norm, eval_every=eval_every,
                eval_batches=eval_batches, device=device, seed=seed, max_seconds=max_seconds,
                progress=progress, desc="training (TBPTT)")


# ---------------------------------------------------------------------------- gradients
def clip_grad_norm(parameters, max_norm: float) -> torch.Tensor:
    """Scale all gradients together so that their global L2 norm is at most ``max_norm``.

    total = sqrt(sum over every gradient entry of g²); if total > max_norm, every g
    becomes g * max_norm / (total + 1e-6): the direction is kept, only the step shrinks
    (Pascanu et al. 2013). Returns ``total`` before clipping, as ``torch.nn.utils.clip_grad_norm_``.

        grads (3, 4) -> total 5; clip_grad_norm(params, 1.0) -> tensor(5.), grads ~(0.6, 0.8)
    """
    if not (isinstance(max_norm, (int, float)) and math.isfinite(max_norm) and max_norm > 0):
        raise ValueError(f"max_norm must be a finite number > 0, got {max_norm!r}")
    params = [parameters] if isinstance(parameters, torch.Tensor) else list(parameters)
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.tensor(0.0)
    total = torch.stack([g.norm() for g in grads]).norm()  # sqrt(sum_p ||g_p||²)
    coef = max_norm / (total + 1e-6)
    if coef < 1:
        for g in grads:
            g.mul_(coef.to(g.device, g.dtype))
    return total


def gradient_norms_through_time(module, x) -> torch.Tensor:
    """||dL/dx_t|| for t = 0..T-1, with L the sum of the last state h_{T-1}: how much the input
    at step t still moves the state at the end. (T,), the norm over the batch and features.

    ``module``: a cell (ours or torch's; run step by step over x (B, T, I)), layers (ours
    or ``torch.nn.RNN``/``LSTM``/``GRU``, x (B, T, I) whatever their ``batch_first``), or an
    ``RNNLanguageModel`` with x the (B, T) token ids (the embeddings are the x_t, the top
    layer's state is h). A vanilla RNN's norms shrink geometrically as t moves back from
    T-1; an LSTM's much less (Pascanu et al. 2013; Hochreiter & Schmidhuber 1997).
    """
    cells = (_Cell, nn.RNNCellBase)
    if not isinstance(module, cells + (_Layers, nn.RNNBase, RNNLanguageModel)):
        raise TypeError(f"expected a recurrent cell, layers or an RNNLanguageModel, got {type(module).__name__}")
    top, was_training = module, module.training
    top.eval()  # no dropout
    try:
        with torch.enable_grad():
            if isinstance(module, RNNLanguageModel):
                _check_idx(x, module.config.vocab_size, "x")
                module, x = module.rnn, module.wte(x.long())  # (B, T, C)
            if not isinstance(x, torch.Tensor) or x.dim() != 3:
                shape = _fmt(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
                raise ValueError(f"expected x of shape (B, T, I), got {shape}")
            x = x.detach().requires_grad_(True)  # (B, T, I): the leaves x_t
            if isinstance(module, cells):
                state = None
                for t in range(x.shape[1]):
                    state = module(x[:, t], state)
                h = state[0] if isinstance(state, tuple) else state  # (B, H)
            else:
                out, _ = module(x if module.batch_first else x.transpose(0, 1))
                h = out[:, -1] if module.batch_first else out[-1]  # (B, H)
            (grad,) = torch.autograd.grad(h.sum(), x)  # (B, T, I)
    finally:
        top.train(was_training)
    return grad.norm(dim=(0, 2))  # (T,)
