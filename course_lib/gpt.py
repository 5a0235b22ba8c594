"""GPT: the decoder-only Transformer of GPT-2, its key-value cache and its sampling (chapter 7).

Chapter 6's ``TransformerLM`` already is a decoder-only language model. GPT-2 (Radford et
al. 2019, "Language Models are Unsupervised Multitask Learners") fixes a handful of its
choices, and this module makes them, with the parameter names of OpenAI's checkpoint (as
nanoGPT does), so that ``GPT.from_hf`` loads a ``transformers.GPT2LMHeadModel`` as it is:

- **pre-LN blocks** and a final LayerNorm ``ln_f``; **learned positions** ``wpe``;
- one fused projection ``c_attn`` (C -> 3C) for the queries, keys and values of all heads;
  attention computed by ``F.scaled_dot_product_attention(..., is_causal=True)``, which on a
  GPU runs a fused (flash) kernel that never stores the (T, T) weights;
- an MLP C -> 4C -> C with GELU in its tanh approximation (GPT-2's ``gelu_new``);
- **weight tying** (Press & Wolf 2017): the output layer ``lm_head`` is the token embedding
  ``wte``, the same (V, C) Parameter, so logits = h @ wte^T and V*C parameters are saved;
- **GPT-2's initialisation**: every weight N(0, 0.02), biases 0, and the two projections
  that write into the residual stream (both ``c_proj``) N(0, 0.02 / sqrt(2 n_layer)), so
  the stream's variance does not grow with depth (2 n_layer additions).

Each block is two residual lines, ``x = x + attn(ln_1(x))`` and ``x = x + mlp(ln_2(x))``.

Generation adds a **key-value cache** (``KVCache``). Without one, producing token t+1
feeds the whole prefix again, O(T) work per position and O(T^2) per token. But the keys
and values of earlier positions never change (causality), so they are kept per layer and
each step feeds only the newest token, whose query attends to the cached keys. Positions
are learned *absolute* embeddings, mixed into every cached key: once a sequence is longer
than ``block_size`` and its first token is dropped, every position shifts and the cache
is stale. ``generate`` then recomputes the cache from the last ``block_size`` tokens, at
every further step; so cached and uncached generation give the same tokens, the uncached
one (nanoGPT's) being the definition.

Prompts of different lengths share a batch by **left padding** (as ``transformers``'
``padding_side="left"``): ``attention_mask`` (B, P + T), True on real tokens, keeps every
query off the padding keys, and each row's positions count its real tokens only, so a
padded row computes what it computes alone and all rows end at the same column, where the
next token is read. ``course_lib.serve`` decodes a batch of requests this way.

Sampling filters the logits first: ``top_k_filter`` keeps the k likeliest tokens (Fan et
al. 2018), ``top_p_filter`` the smallest set whose probability reaches p ("nucleus
sampling", Holtzman et al. 2020); both equal ``transformers``' ``TopKLogitsWarper`` and
``TopPLogitsWarper`` (tests check it). ``temperature`` must be > 0; greedy decoding is
``top_k=1``, as in ``course_lib.train.generate``.

    >>> _ = torch.manual_seed(0)
    >>> model = GPT(GPTConfig(vocab_size=10, block_size=8, n_layer=2, n_head=2, n_embd=16))
    >>> logits, loss = model(torch.tensor([[1, 2, 3]]), torch.tensor([[2, 3, 4]]))
    >>> tuple(logits.shape), abs(loss.item() - math.log(10)) < 0.1   # at initialisation about uniform
    ((1, 3, 10), True)
    >>> model.lm_head.weight is model.transformer.wte.weight   # tied
    True

Scope: the model, its cache and its sampling. Its training recipe (AdamW with weight decay
on matrices only, warm-up and cosine decay, mixed precision) comes with the chapter;
padding on the left only (``attention_mask``; without one the rows of a batch have one
length), no rotary positions (chapter 6's ``apply_rotary``), no preallocated cache (ours
grows by ``torch.cat``, a copy per step, small beside the matmuls). ``lm_head`` has no
bias, as GPT-2's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .neural_lm import _check_idx, _loss
from .train import (_check_positive_int, _check_prompt, _check_sampling, _eval_mode, _model_device, _sample_next,
                    top_k_filter, top_p_filter)

__all__ = ["GPTConfig", "LayerNorm", "CausalSelfAttention", "MLP", "Block", "KVCache", "GPT",
           "GPTForSequenceClassification", "top_k_filter", "top_p_filter"]


# ---------------------------------------------------------------------------- config
@dataclass
class GPTConfig:
    vocab_size: int  # V: the tokenizer's vocabulary (GPT-2: 50257)
    block_size: int  # the longest context, the rows of the position table wpe (GPT-2: 1024)
    n_layer: int  # blocks (GPT-2 small: 12)
    n_head: int  # nh: attention heads, each of head size hs = n_embd // n_head (GPT-2 small: 12)
    n_embd: int  # C: the width of the residual stream (GPT-2 small: 768)
    dropout: float = 0.0  # on the embeddings, the attention weights and each sublayer's output (GPT-2: 0.1)
    bias: bool = True  # biases in the Linear layers and LayerNorms (GPT-2: True; False is a bit faster)

    def __post_init__(self):
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            _check_positive_int(f"GPTConfig.{name}", getattr(self, name))
        if self.n_embd % self.n_head:
            fits = self.n_head * max(1, self.n_embd // self.n_head)
            raise ValueError(f"n_embd={self.n_embd} is not divisible by n_head={self.n_head}: each head gets "
                             f"n_embd // n_head numbers (e.g. n_embd={fits})")
        if isinstance(self.dropout, bool) or not (isinstance(self.dropout, (int, float)) and 0 <= self.dropout < 1):
            raise ValueError(f"GPTConfig.dropout must be a probability in [0, 1), got {self.dropout!r}")
        if not isinstance(self.bias, bool):
            raise ValueError(f"GPTConfig.bias must be True or False, got {self.bias!r}")

    @classmethod
    def from_hf(cls, hf_config) -> GPTConfig:
        """The ``GPTConfig`` of a ``transformers.GPT2Config``; an error for what GPT cannot compute.

        n_positions -> block_size; GPT-2's three dropouts must be equal (one ``dropout`` here);
        the activation must be GELU's tanh form (``gelu_new``), the MLP 4 * n_embd wide, the
        LayerNorm eps 1e-5, attention scaled by 1 / sqrt(hs) and without cross-attention.
        """
        if getattr(hf_config, "model_type", None) != "gpt2":
            raise TypeError(f"expected a transformers GPT2Config, got {type(hf_config).__name__}")
        c = hf_config
        drops = {name: getattr(c, name) for name in ("embd_pdrop", "attn_pdrop", "resid_pdrop")}
        unsupported = {
            "activation_function in ('gelu_new', 'gelu_pytorch_tanh')":
                c.activation_function in ("gelu_new", "gelu_pytorch_tanh"),
            "n_inner None or 4 * n_embd": c.n_inner in (None, 4 * c.n_embd),
            "layer_norm_epsilon == 1e-5": c.layer_norm_epsilon == 1e-5,
            "scale_attn_weights True": c.scale_attn_weights,
            "scale_attn_by_inverse_layer_idx False": not c.scale_attn_by_inverse_layer_idx,
            "add_cross_attention False": not getattr(c, "add_cross_attention", False),
            "tie_word_embeddings True": getattr(c, "tie_word_embeddings", True),
            f"embd_pdrop == attn_pdrop == resid_pdrop (got {drops})": len(set(drops.values())) == 1,
        }
        failed = [rule for rule, ok in unsupported.items() if not ok]
        if failed:
            raise ValueError("this GPT2Config has what GPT does not compute; expected " + "; ".join(failed))
        return cls(vocab_size=c.vocab_size, block_size=c.n_positions, n_layer=c.n_layer, n_head=c.n_head,
                   n_embd=c.n_embd, dropout=float(c.resid_pdrop), bias=True)


def _check_config(config) -> GPTConfig:
    if not isinstance(config, GPTConfig):
        raise TypeError(f"expected a GPTConfig, got {type(config).__name__}")
    return config


def hf_source(source, config, config_class, model_type: str, expected: str):
    """``(state_dict, config, training)`` from a transformers model or from its state dict with ``config``.

    A model's own config is translated by ``config_class.from_hf`` (a ``config=`` given too must
    equal it); a state dict carries no config, so ``config`` is required. ``model_type`` is
    transformers' name ("gpt2", "bert"); ``expected`` names the class in error messages.
    """
    if isinstance(source, nn.Module):
        hf_config = getattr(source, "config", None)
        if getattr(hf_config, "model_type", None) != model_type:
            raise TypeError(f"expected a transformers {expected} (or its state_dict with config=), "
                            f"got {type(source).__name__}")
        from_model = config_class.from_hf(hf_config)
        if config is not None and config != from_model:
            raise ValueError(f"config={config} differs from the model's own {from_model}; leave config out")
        return dict(source.state_dict()), from_model, source.training
    if isinstance(source, dict):
        if config is None:
            raise ValueError(f"a state_dict does not say how many heads the model has: "
                             f"pass config={config_class.__name__}(...)")
        if not isinstance(config, config_class):
            raise TypeError(f"expected a {config_class.__name__}, got {type(config).__name__}")
        return dict(source), config, True
    raise TypeError(f"expected a transformers {expected} or its state_dict, got {type(source).__name__}")


# ---------------------------------------------------------------------------- the block
class LayerNorm(nn.Module):
    """Chapter 6's LayerNorm, (x - mean) / sqrt(var + eps) * weight + bias, computed by one
    ``F.layer_norm`` kernel, with the bias optional (``bias=False``: none, as nanoGPT allows)."""

    def __init__(self, n_embd: int, bias: bool = True, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(n_embd))  # (C,)
        self.bias = nn.Parameter(torch.zeros(n_embd)) if bias else None  # (C,)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, self.eps)  # (..., C)


class KVCache:
    """The keys and values of every layer for the positions read so far; ``len(cache)`` of them.

    ``update(layer, k, v)`` appends the new (B, nh, T, hs) keys and values of ``layer`` and
    returns all of them, (B, nh, P + T, hs), P the positions cached before. ``GPT.forward``
    with ``cache=`` places its tokens after those P positions.

        cache = KVCache(); model(prompt, cache=cache)   # len(cache) = prompt length
        model(next_token, cache=cache)                  # one position more, the prompt not re-read
    """

    def __init__(self):
        self.keys: list[torch.Tensor] = []  # one (B, nh, P, hs) per layer
        self.values: list[torch.Tensor] = []

    def __len__(self) -> int:
        return self.keys[0].shape[2] if self.keys else 0

    @property
    def batch_size(self) -> int | None:
        return self.keys[0].shape[0] if self.keys else None

    def crop(self, n: int) -> None:
        """Keep the first ``n`` positions and forget the rest (speculative decoding rolls back
        the rejected draft tokens this way)."""
        if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= len(self):
            raise ValueError(f"can keep 0 to {len(self)} cached positions, got {n!r}")
        self.keys = [k[:, :, :n] for k in self.keys]
        self.values = [v[:, :, :n] for v in self.values]

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if layer == len(self.keys):  # the first tokens this layer sees
            self.keys.append(k)
            self.values.append(v)
        else:
            self.keys[layer] = torch.cat([self.keys[layer], k], dim=2)  # (B, nh, P + T, hs)
            self.values[layer] = torch.cat([self.values[layer], v], dim=2)
        return self.keys[layer], self.values[layer]


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with one fused projection ``c_attn`` (C -> 3C) and ``c_proj``.

    ``forward(x (B, T, C), cache=None, attention_mask=None) -> (B, T, C)``. ``c_attn`` computes
    [q | k | v] for all heads in one matmul (chapter 6's three projections stacked). With a
    ``cache`` holding P positions, the T new queries attend to the P + T keys, query t to keys
    0..P+t; ``layer``, the block's index, names this layer's entry in the cache.
    ``attention_mask`` (B, P + T), True on real tokens, takes the padding keys away from every
    query as well; a padding query keeps its own key, so its row of weights is never empty
    (no NaN), and no real query reads what it computes.
    """

    def __init__(self, config: GPTConfig, layer: int = 0):
        super().__init__()
        c = _check_config(config)
        self.n_head, self.n_embd, self.dropout, self.layer = c.n_head, c.n_embd, c.dropout, layer
        self.c_attn = nn.Linear(c.n_embd, 3 * c.n_embd, bias=c.bias)  # (3C, C): W^Q, W^K, W^V stacked
        self.c_proj = nn.Linear(c.n_embd, c.n_embd, bias=c.bias)  # W^O (C, C), writes into the residual stream
        self.resid_dropout = nn.Dropout(c.dropout)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None,
                attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        B, T, C = x.shape
        nh, hs = self.n_head, C // self.n_head
        q, k, v = self.c_attn(x).split(C, dim=2)  # (B, T, 3C) -> three (B, T, C)
        q = q.view(B, T, nh, hs).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, nh, hs).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, nh, hs).transpose(1, 2)  # (B, nh, T, hs)
        if cache is not None:
            k, v = cache.update(self.layer, k, v)  # (B, nh, P + T, hs): the cached keys and these
        P = k.shape[2] - T  # positions before the new ones
        p = self.dropout if self.training else 0.0
        if attention_mask is not None:  # left padding: causal and real keys, or the query's own key
            keys = torch.arange(P + T, device=x.device)  # (P + T,)
            causal = keys[None, :] <= keys[P:, None]  # (T, P + T): query t sits at P + t
            own = keys[None, :] == keys[P:, None]  # (T, P + T)
            mask = (causal & attention_mask[:, None, None, :]) | own  # (B, 1, T, P + T), broadcast over heads
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)  # (B, nh, T, hs)
        elif P == 0:  # the usual case: the causal mask, which fused kernels build themselves
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)  # (B, nh, T, hs)
        elif T == 1:  # one new token: its query may see every key
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=p)
        else:  # new query t sits at position P + t: it sees keys 0..P+t (is_causal would align at the top left)
            mask = torch.ones(T, P + T, dtype=torch.bool, device=x.device).tril(diagonal=P)  # (T, P + T)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        y = y.transpose(1, 2).reshape(B, T, C)  # (B, nh, T, hs) -> (B, T, nh, hs) -> (B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    """C -> 4C -> C with GELU between: ``c_proj(gelu(c_fc(x)))``, the same at every position.

    GELU(x) = x * Phi(x); GPT-2 uses the tanh approximation
    0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), ``F.gelu(x, approximate="tanh")``.
    """

    def __init__(self, config: GPTConfig):
        super().__init__()
        c = _check_config(config)
        self.c_fc = nn.Linear(c.n_embd, 4 * c.n_embd, bias=c.bias)  # (4C, C)
        self.c_proj = nn.Linear(4 * c.n_embd, c.n_embd, bias=c.bias)  # (C, 4C), writes into the residual stream
        self.dropout = nn.Dropout(c.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.gelu(self.c_fc(x), approximate="tanh")  # (B, T, C) -> (B, T, 4C)
        return self.dropout(self.c_proj(h))  # (B, T, 4C) -> (B, T, C)


class Block(nn.Module):
    """A pre-LN block: ``x = x + attn(ln_1(x))``, then ``x = x + mlp(ln_2(x))``; (B, T, C) -> (B, T, C)."""

    def __init__(self, config: GPTConfig, layer: int = 0):
        super().__init__()
        c = _check_config(config)
        self.ln_1 = LayerNorm(c.n_embd, bias=c.bias)
        self.attn = CausalSelfAttention(c, layer)
        self.ln_2 = LayerNorm(c.n_embd, bias=c.bias)
        self.mlp = MLP(c)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None,
                attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), cache, attention_mask)
        x = x + self.mlp(self.ln_2(x))
        return x


# ---------------------------------------------------------------------------- the model
class GPT(nn.Module):
    """GPT-2's language model: ``forward(idx (B, T), targets=None, cache=None) -> (logits (B, T, V), loss)``.

    T <= ``block_size``; ``logits[:, t]`` scores the token after ``idx[:, :t+1]``; ``loss``
    is the mean cross-entropy over the positions where ``targets != -1``, None without
    targets (the course's contract, ``course_lib.train`` trains it). With a ``KVCache``
    holding P positions, ``idx`` continues them: its tokens sit at positions P..P+T-1
    (P + T <= ``block_size``) and the logits are those of the new positions.
    ``attention_mask`` (B, P + T), True on real tokens, lets rows be padded on the left: row
    b's tokens then sit at positions 0, 1, ... counted over its real tokens, and its logits
    are those of the row alone (the logits at padding are meaningless).
    """

    def __init__(self, config: GPTConfig):
        super().__init__()
        c = self.config = _check_config(config)
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(c.vocab_size, c.n_embd),  # (V, C) token embeddings
            wpe=nn.Embedding(c.block_size, c.n_embd),  # (block_size, C) learned positions
            drop=nn.Dropout(c.dropout),
            h=nn.ModuleList([Block(c, layer) for layer in range(c.n_layer)]),
            ln_f=LayerNorm(c.n_embd, bias=c.bias),
        ))
        self.lm_head = nn.Linear(c.n_embd, c.vocab_size, bias=False)  # (V, C)
        self.transformer.wte.weight = self.lm_head.weight  # weight tying: one (V, C) Parameter, two uses
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):  # the residual projections: 2 per block add into the stream
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * c.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def get_block_size(self) -> int:
        return self.config.block_size

    def num_parameters(self, non_embedding: bool = False) -> int:
        """All parameters (the tied matrix once); ``non_embedding=True``: without ``wte`` and
        ``wpe``, the N of Kaplan et al. (2020), about 12 * n_layer * n_embd^2. (nanoGPT
        subtracts ``wpe`` only, counting the tied ``wte`` as the output layer.)"""
        n = sum(p.numel() for p in self.parameters())  # parameters() yields a shared Parameter once
        if non_embedding:
            n -= self.transformer.wte.weight.numel() + self.transformer.wpe.weight.numel()
        return n

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, cache: KVCache | None = None,
                attention_mask: torch.Tensor | None = None):
        x = self.hidden_states(idx, cache, attention_mask)
        logits = self.lm_head(self.transformer.ln_f(x))  # (B, T, C) @ (C, V) -> (B, T, V)
        return logits, _loss(logits, targets, self.config.vocab_size)

    def hidden_states(self, idx: torch.Tensor, cache: KVCache | None = None,
                      attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The last block's outputs (B, T, C) for ``idx`` (B, T), before the final LayerNorm
        (``forward`` and the sequence classifier read them).

        With ``attention_mask`` (B, P + T) the positions are counted per row over its real
        tokens, ``cumsum(mask) - 1``: mask [[0, 0, 1, 1], [1, 1, 1, 1]] -> positions
        [[0, 0, 0, 1], [0, 1, 2, 3]]; it is those, not P + T, that must stay below ``block_size``.
        """
        c = self.config
        _check_idx(idx, c.vocab_size)
        B, T = idx.shape
        P = 0
        if cache is not None:
            if not isinstance(cache, KVCache):
                raise TypeError(f"expected cache as a KVCache, got {type(cache).__name__}")
            P = len(cache)
            if cache.batch_size not in (None, B):
                raise ValueError(f"the cache holds {cache.batch_size} sequences but idx has B={B}: "
                                 "a cache continues the batch it was filled with")
        if attention_mask is not None:
            return self._padded_hidden_states(idx, cache, attention_mask, P)
        if P + T > c.block_size:
            where = f"the cache holds P={P} positions and idx adds T={T}, " if cache is not None else ""
            raise ValueError(f"expected idx of shape (B, T) with {'P + ' if cache is not None else ''}T <= "
                             f"block_size={c.block_size}, got {tuple(idx.shape)}; {where}keep the last "
                             f"{c.block_size} tokens at most (generate crops the context)")
        pos = torch.arange(P, P + T, device=idx.device)  # (T,) the positions of the new tokens
        x = self.transformer.wte(idx.long()) + self.transformer.wpe(pos)  # (B, T, C) + (T, C)
        x = self.transformer.drop(x)
        for block in self.transformer.h:
            x = block(x, cache)
        return x

    def _padded_hidden_states(self, idx: torch.Tensor, cache: KVCache | None, attention_mask: torch.Tensor,
                              P: int) -> torch.Tensor:
        """``hidden_states`` of left-padded rows: positions per row, the mask passed to every block."""
        B, T = idx.shape
        if not isinstance(attention_mask, torch.Tensor) or tuple(attention_mask.shape) != (B, P + T):
            got = tuple(attention_mask.shape) if isinstance(attention_mask, torch.Tensor) else type(attention_mask)
            raise ValueError(f"expected attention_mask of shape (B, P + T) = ({B}, {P + T}): the cached P={P} "
                             f"positions and the T={T} new ones, True on real tokens; got {got}")
        mask = attention_mask.to(device=idx.device, dtype=torch.bool)  # (B, P + T)
        pos = (mask.long().cumsum(dim=1) - 1).clamp(min=0)[:, P:]  # (B, T) each row counts its real tokens
        if pos.max().item() >= self.config.block_size:
            raise ValueError(f"a row of the batch reaches position {pos.max().item()}, past the position table "
                             f"(block_size={self.config.block_size}): keep each row's real tokens to at most "
                             f"{self.config.block_size}")
        x = self.transformer.wte(idx.long()) + self.transformer.wpe(pos)  # (B, T, C) + (B, T, C)
        x = self.transformer.drop(x)
        for block in self.transformer.h:
            x = block(x, cache, mask)
        return x

    def generate(self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
                 top_p: float | None = None, use_cache: bool = True,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """Continue each row of ``idx`` (B, T) by ``max_new_tokens`` sampled tokens; (B, T + new).

        Each token is drawn from softmax(logits / temperature), filtered by ``top_k_filter``
        then ``top_p_filter`` (that order, as ``transformers``), given the last
        ``block_size`` tokens. ``temperature`` must be > 0; ``top_k=1`` is greedy decoding.
        Sampling runs on the CPU with ``generator``, so a seed gives the same tokens on every
        device. ``use_cache=True`` feeds one token per step to a ``KVCache``; once the
        sequence outgrows ``block_size`` the cache is rebuilt from the last ``block_size``
        tokens at each step (positions shift), so the tokens equal ``use_cache=False``'s.
        The model is in eval mode inside; its mode is restored after.
        """
        _check_prompt(idx)
        _check_sampling(max_new_tokens, temperature, top_k, top_p)
        if not isinstance(use_cache, bool):
            raise ValueError(f"use_cache must be True or False, got {use_cache!r}")
        block_size = self.config.block_size
        idx = idx.long().to(_model_device(self))
        cache = None
        with _eval_mode(self):
            for _ in range(max_new_tokens):
                if cache is not None and len(cache) < block_size:
                    logits, _ = self(idx[:, -1:], cache=cache)  # (B, 1, V): the newest token, the rest cached
                else:  # the first step, no cache, or positions that shifted: read the context again
                    cache = KVCache() if use_cache else None
                    logits, _ = self(idx[:, -block_size:], cache=cache)  # (B, T, V)
                nxt = _sample_next(logits, temperature, top_k, generator, top_p)  # (B, 1)
                idx = torch.cat([idx, nxt.to(idx.device)], dim=1)  # (B, T + 1)
        return idx

    @classmethod
    def from_hf(cls, source, config: GPTConfig | None = None) -> GPT:
        """A GPT with the weights of a ``transformers`` GPT-2 (copied; dtype and device kept).

        ``source``: a ``GPT2LMHeadModel`` (or ``GPT2Model``), whose config gives the
        ``GPTConfig`` (``GPTConfig.from_hf``); or the state dict of one, with ``config``.
        The keys are ours already (``transformer.h.0.attn.c_attn.weight``, ...); the one
        difference is that GPT-2's ``Conv1D`` stores a weight as (in, out), the transpose of
        ``nn.Linear``'s (out, in), so ``c_attn``, ``c_proj`` and ``c_fc`` weights are
        transposed. The causal-mask buffers of older versions (``attn.bias``,
        ``attn.masked_bias``) are skipped; ``lm_head.weight`` must equal ``wte`` (tied).

            GPT.from_hf(GPT2LMHeadModel(GPT2Config(...)))   # or GPT.from_hf(state_dict, config=...)
        """
        state, config, training = hf_source(source, config, GPTConfig, "gpt2", "GPT2LMHeadModel")
        if state and not any(key.startswith("transformer.") for key in state):  # a GPT2Model: no prefix
            state = {f"transformer.{key}": value for key, value in state.items()}
        state = {key: value for key, value in state.items()
                 if not key.endswith((".attn.bias", ".attn.masked_bias"))}  # mask buffers, not parameters
        head = state.pop("lm_head.weight", None)
        wte = state.get("transformer.wte.weight")
        if head is not None and wte is not None and not torch.equal(head, wte):
            raise ValueError("lm_head.weight differs from transformer.wte.weight: GPT ties them, this model does not")
        any_tensor = next(iter(state.values()), None)
        model = cls(config)
        if any_tensor is not None:
            model = model.to(device=any_tensor.device, dtype=any_tensor.dtype)
        ours = {key: value for key, value in model.state_dict().items() if key != "lm_head.weight"}
        missing, unexpected = sorted(set(ours) - set(state)), sorted(set(state) - set(ours))
        if missing or unexpected:
            raise ValueError(f"the state_dict does not fit {config}: missing keys {missing[:6]}, "
                             f"unexpected keys {unexpected[:6]}")
        transposed = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
        values = {key: state[key].t() if key.endswith(transposed) else state[key]  # Conv1D (in, out) -> (out, in)
                  for key in ours}
        for key, target in ours.items():
            if values[key].shape != target.shape:
                raise ValueError(f"{key}: expected shape {tuple(target.shape)} for {config}, got "
                                 f"{tuple(values[key].shape)}")
        with torch.no_grad():
            for key, target in ours.items():
                target.copy_(values[key])
        return model.train(training)


if __name__ == "__main__":  # python -m course_lib.gpt train|sample ...: the command line of gpt_cli
    from course_lib.gpt_cli import main

    main()


class GPTForSequenceClassification(nn.Module):
    """A GPT with a classifier on its **last** position: ``forward(input_ids (B, T),
    attention_mask=None, labels=None) -> (logits (B, n_classes), loss)``.

    A decoder's position t has read tokens 0..t only, so the one vector that has read the
    whole text is the last real token's (Radford et al. 2018, GPT-1's classifier; Raschka,
    "Build a Large Language Model from Scratch", chapter 6). Rows are padded on the right
    (``attention_mask`` 1 on tokens, 0 on padding): the causal mask keeps the padding out of
    every real position, and row b is read at its last token, ``attention_mask[b].sum() - 1``.
    ``logits = classifier(ln_f(h_last))``; ``loss`` the cross-entropy against ``labels``.
    Its interface is ``BertForSequenceClassification``'s, so the same fine-tuning loop
    (``course_lib.bert_train.finetune_classifier``) trains both.
    """

    def __init__(self, gpt: GPT, n_classes: int):
        super().__init__()
        if not isinstance(gpt, GPT):
            raise TypeError(f"expected a GPT, got {type(gpt).__name__}")
        _check_positive_int("n_classes", n_classes)
        self.gpt, self.config, self.n_classes = gpt, gpt.config, n_classes
        self.classifier = nn.Linear(gpt.config.n_embd, n_classes)  # (n_classes, C)
        nn.init.normal_(self.classifier.weight, mean=0.0, std=0.02)
        nn.init.zeros_(self.classifier.bias)

    def get_block_size(self) -> int:
        return self.config.block_size

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, labels: torch.Tensor | None = None):
        if token_type_ids is not None:
            raise ValueError("a GPT has no segments: pass token_type_ids=None")
        _check_idx(input_ids, self.config.vocab_size)
        B, T = input_ids.shape
        if T > self.config.block_size:
            raise ValueError(f"expected input_ids of shape (B, T) with T <= block_size={self.config.block_size}, "
                             f"got {tuple(input_ids.shape)}")
        if attention_mask is None:
            last = torch.full((B,), T - 1, device=input_ids.device)
        else:
            if attention_mask.shape != input_ids.shape:
                raise ValueError(f"expected attention_mask of shape {tuple(input_ids.shape)}, got "
                                 f"{tuple(attention_mask.shape)}")
            last = attention_mask.long().sum(dim=1) - 1  # (B,) the last real token of each row
            if (last < 0).any():
                raise ValueError("every row needs at least one token (attention_mask all 0 in a row)")
        x = self.gpt.hidden_states(input_ids)  # (B, T, C)
        h = self.gpt.transformer.ln_f(x[torch.arange(B, device=x.device), last])  # (B, C) at each row's last token
        logits = self.classifier(h)  # (B, n_classes)
        loss = None if labels is None else F.cross_entropy(logits.float(), labels.long())
        return logits, loss
