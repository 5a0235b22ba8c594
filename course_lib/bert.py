"""BERT: the Transformer encoder, masked language modelling and a classifier on [CLS] (chapter 8).

GPT (chapter 7) reads left to right: position t attends to positions 0..t, so it can
generate. BERT (Devlin et al. 2019, "BERT: Pre-training of Deep Bidirectional Transformers
for Language Understanding") keeps chapter 6's encoder instead: **every position attends to
every position**, left and right. It cannot generate text left to right; it is trained to
fill in blanks, and its vectors are then fine-tuned for a task. This module makes BERT's
choices, and ``from_hf`` loads ``transformers``' ``BertModel``, ``BertForMaskedLM`` and
``BertForSequenceClassification`` exactly (tests compare the outputs):

- the input is ``[CLS] sentence A [SEP] sentence B [SEP]``; the embedding of a token is the
  sum of three learned tables, **token + position + segment** (``token_type_ids``: 0 for
  ``[CLS]``, A and its ``[SEP]``; 1 for B and its ``[SEP]``), then LayerNorm and dropout;
- **post-LN** blocks, as in the original Transformer (Vaswani et al. 2017), two residual
  lines each: ``x = LN(x + MHA(x))``, then ``x = LN(x + FFN(x))`` with
  ``FFN(x) = W2 GELU(W1 x)`` (exact GELU, x * Phi(x), written with erf);
- an ``attention_mask`` (B, T), 1 for real tokens and 0 for padding: no query attends to a
  padded key, so a padded batch gives each sequence the outputs it has alone;
- **masked language modelling** (``mask_tokens``, ``BertForMaskedLM``): 15% of the
  positions are chosen; of those, 80% are replaced by ``[MASK]``, 10% by a random token and
  10% are left as they are; the model predicts the original token at the chosen positions
  only (``mlm_loss``). The model never sees ``[MASK]`` after pre-training, so it must not
  learn that only ``[MASK]`` positions matter: the random and unchanged 20% make it keep a
  good vector for every position;
- the output layer of the MLM head is the token embedding (weight tying, as GPT's);
- a **classifier on [CLS]** (``BertForSequenceClassification``): the first position's
  vector through the "pooler" (Linear, tanh) and one Linear layer to the classes.

    >>> _ = torch.manual_seed(0)
    >>> config = BertConfig(vocab_size=20, block_size=16, n_layer=2, n_head=2, n_embd=16)
    >>> mlm = BertForMaskedLM(config).eval()
    >>> ids = torch.tensor([[1, 5, 6, 7, 2, 0]])            # [CLS] a b c [SEP] [PAD] (say)
    >>> logits, loss = mlm(ids, attention_mask=torch.tensor([[1, 1, 1, 1, 1, 0]]))
    >>> tuple(logits.shape), loss is None                   # no labels, no loss
    ((1, 6, 20), True)
    >>> mlm.head.decoder.weight is mlm.bert.embeddings.tok.weight   # tied
    True

Scope: no next-sentence prediction (RoBERTa, Liu et al. 2019, found it unnecessary; the
segments stay, so ``[CLS] A [SEP] B [SEP]`` inputs work), no relative positions, no
cross-attention or decoder mode, no whole-word masking. ``forward`` computes the MLM logits
at every position, as transformers' does; ``masked_loss``, for training, only at the chosen
ones. Labels mark the positions to skip with -1 (the course's convention; transformers
uses -100). Pre-training and fine-tuning on the course corpus: ``course_lib.bert_train``;
``BertConfig(norm_first=True)`` gives pre-LN blocks, which chapter 8's recipe may use.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .gpt import hf_source
from .neural_lm import _check_idx, _check_targets
from .train import _check_positive_int

__all__ = ["BertConfig", "BertEmbeddings", "BertSelfAttention", "BertLayer", "BertModel", "MLMHead",
           "BertForMaskedLM", "BertForSequenceClassification", "pair_inputs", "mask_tokens", "mlm_loss",
           "attention_maps", "ACTIVATIONS", "BERT_BASE", "BERT_PAPER"]

# the activations of the feed-forward layer, by name; transformers' names map to these in from_hf
ACTIVATIONS = {
    "gelu": F.gelu,  # exact: x * Phi(x), Phi the normal CDF (BERT's)
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),  # GPT-2's approximation
    "relu": F.relu,
}
_HF_ACTIVATIONS = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "relu": "relu"}

# BERT-base and figures from its paper (Devlin et al. 2019), for pages to compute with rather than quote
BERT_BASE = dict(vocab_size=30522, block_size=512, n_layer=12, n_head=12, n_embd=768)  # BertConfig(**BERT_BASE)
BERT_PAPER = dict(
    pretrain_words={"BooksCorpus": 800_000_000, "English Wikipedia": 2_500_000_000},  # section 3.1
    finetune_lrs=(5e-5, 4e-5, 3e-5, 2e-5), finetune_epochs=(2, 3, 4), finetune_batch_sizes=(16, 32),  # appendix A.3
    mask_prob=0.15, mask_split=(0.8, 0.1, 0.1),  # section 3.1: chosen; [MASK], random, unchanged
)


# ---------------------------------------------------------------------------- config
@dataclass
class BertConfig:
    vocab_size: int  # V: the tokenizer's vocabulary, special tokens included (BERT: 30522 WordPieces)
    block_size: int  # the longest input, the rows of the position table (BERT: 512)
    n_layer: int  # encoder blocks (BERT-base: 12)
    n_head: int  # nh: attention heads, each of size hs = n_embd // n_head (BERT-base: 12)
    n_embd: int  # C: the width of the residual stream (BERT-base: 768)
    n_inner: int | None = None  # the feed-forward layer's width; None: 4 * n_embd (BERT-base: 3072)
    type_vocab_size: int = 2  # segments: 0 for [CLS] A [SEP], 1 for B [SEP]
    dropout: float = 0.1  # on the embeddings and on each sublayer's output (BERT: 0.1)
    attn_dropout: float = 0.1  # on the attention weights (BERT: 0.1)
    layer_norm_eps: float = 1e-12  # BERT's (GPT-2's is 1e-5)
    activation: str = "gelu"  # the feed-forward non-linearity, a key of ACTIVATIONS
    norm_first: bool = False  # False: BERT's post-LN blocks; True: pre-LN blocks and a final LayerNorm (GPT-2's)

    def __post_init__(self):
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd", "type_vocab_size"):
            _check_positive_int(f"BertConfig.{name}", getattr(self, name))
        if self.n_inner is None:
            self.n_inner = 4 * self.n_embd
        _check_positive_int("BertConfig.n_inner", self.n_inner)
        if self.n_embd % self.n_head:
            fits = self.n_head * max(1, self.n_embd // self.n_head)
            raise ValueError(f"n_embd={self.n_embd} is not divisible by n_head={self.n_head}: each head gets "
                             f"n_embd // n_head numbers (e.g. n_embd={fits})")
        for name in ("dropout", "attn_dropout"):
            p = getattr(self, name)
            if isinstance(p, bool) or not (isinstance(p, (int, float)) and 0 <= p < 1):
                raise ValueError(f"BertConfig.{name} must be a probability in [0, 1), got {p!r}")
        if not (isinstance(self.layer_norm_eps, (int, float)) and self.layer_norm_eps > 0):
            raise ValueError(f"BertConfig.layer_norm_eps must be a number > 0, got {self.layer_norm_eps!r}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"BertConfig.activation must be one of {sorted(ACTIVATIONS)}, got {self.activation!r}")
        if not isinstance(self.norm_first, bool):
            raise ValueError(f"BertConfig.norm_first must be True or False, got {self.norm_first!r}")

    @classmethod
    def from_hf(cls, hf_config) -> BertConfig:
        """The ``BertConfig`` of a ``transformers.BertConfig``; an error for what ours cannot compute.

        max_position_embeddings -> block_size, num_hidden_layers -> n_layer,
        num_attention_heads -> n_head, hidden_size -> n_embd, intermediate_size -> n_inner,
        hidden_dropout_prob -> dropout, attention_probs_dropout_prob -> attn_dropout,
        hidden_act -> activation. Absolute positions only, an encoder (not ``is_decoder``).
        """
        if getattr(hf_config, "model_type", None) != "bert":
            raise TypeError(f"expected a transformers BertConfig, got {type(hf_config).__name__}")
        c = hf_config
        act = c.hidden_act if isinstance(c.hidden_act, str) else None
        unsupported = {
            f"hidden_act one of {sorted(_HF_ACTIVATIONS)} (got {c.hidden_act!r})": act in _HF_ACTIVATIONS,
            "position_embedding_type 'absolute'": getattr(c, "position_embedding_type", "absolute") == "absolute",
            "is_decoder False": not getattr(c, "is_decoder", False),
            "add_cross_attention False": not getattr(c, "add_cross_attention", False),
        }
        failed = [rule for rule, ok in unsupported.items() if not ok]
        if failed:
            raise ValueError("this BertConfig has what BertModel does not compute; expected " + "; ".join(failed))
        return cls(vocab_size=c.vocab_size, block_size=c.max_position_embeddings, n_layer=c.num_hidden_layers,
                   n_head=c.num_attention_heads, n_embd=c.hidden_size, n_inner=c.intermediate_size,
                   type_vocab_size=c.type_vocab_size, dropout=float(c.hidden_dropout_prob),
                   attn_dropout=float(c.attention_probs_dropout_prob), layer_norm_eps=float(c.layer_norm_eps),
                   activation=_HF_ACTIVATIONS[act])


def _check_config(config) -> BertConfig:
    if not isinstance(config, BertConfig):
        raise TypeError(f"expected a BertConfig, got {type(config).__name__}")
    return config


def _init_weights(module: nn.Module) -> None:
    """BERT's initialisation: every Linear and Embedding weight N(0, 0.02), biases 0,
    LayerNorm gains 1 and biases 0."""
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


# ---------------------------------------------------------------------------- inputs
def _check_inputs(input_ids, token_type_ids, attention_mask, config: BertConfig) -> torch.Tensor | None:
    """Validate the three inputs of a BERT; return the attention mask as (B, 1, 1, T) bools,
    True where a key may be attended to (None: every key)."""
    _check_idx(input_ids, config.vocab_size, "input_ids")
    B, T = input_ids.shape
    if T > config.block_size:
        raise ValueError(f"expected input_ids of shape (B, T) with T <= block_size={config.block_size}, got "
                         f"{tuple(input_ids.shape)}: cut the sequences to {config.block_size} tokens")
    if token_type_ids is not None:
        if not isinstance(token_type_ids, torch.Tensor) or token_type_ids.shape != input_ids.shape:
            shape = tuple(token_type_ids.shape) if isinstance(token_type_ids, torch.Tensor) else \
                type(token_type_ids).__name__
            raise ValueError(f"expected token_type_ids of shape (B, T) = {(B, T)} like input_ids, got {shape}")
        if token_type_ids.dtype.is_floating_point or token_type_ids.dtype.is_complex or \
                token_type_ids.dtype == torch.bool:
            raise TypeError(f"expected token_type_ids to hold integer segment ids, got dtype {token_type_ids.dtype}")
        if token_type_ids.numel() and (token_type_ids.min() < 0 or token_type_ids.max() >= config.type_vocab_size):
            raise ValueError(f"token_type_ids hold segment ids from {token_type_ids.min().item()} to "
                             f"{token_type_ids.max().item()}; type_vocab_size={config.type_vocab_size} allows "
                             f"0..{config.type_vocab_size - 1} (0 for [CLS] A [SEP], 1 for B [SEP])")
    if attention_mask is None:
        return None
    if not isinstance(attention_mask, torch.Tensor) or attention_mask.shape != input_ids.shape:
        shape = tuple(attention_mask.shape) if isinstance(attention_mask, torch.Tensor) else \
            type(attention_mask).__name__
        raise ValueError(f"expected attention_mask of shape (B, T) = {(B, T)} like input_ids (1 for a token, "
                         f"0 for padding), got {shape}")
    if not ((attention_mask == 0) | (attention_mask == 1)).all():
        raise ValueError("attention_mask must hold 1 for a real token and 0 for padding, nothing else")
    keep = attention_mask.bool()  # (B, T)
    if not keep.any(dim=1).all():
        raise ValueError("a row of attention_mask is all 0: every sequence needs at least one real token "
                         "(its [CLS])")
    return keep[:, None, None, :]  # (B, 1, 1, T): the same keys hidden from every head and query


# ---------------------------------------------------------------------------- the encoder
class BertEmbeddings(nn.Module):
    """token + position + segment, then LayerNorm and dropout: (B, T) ids -> (B, T, C).

    ``tok`` (V, C), ``pos`` (block_size, C) learned positions (not chapter 6's sinusoids),
    ``seg`` (type_vocab_size, C). ``token_type_ids`` None means segment 0 everywhere.

        x[b, t] = LN(tok[input_ids[b, t]] + pos[t] + seg[token_type_ids[b, t]])
    """

    def __init__(self, config: BertConfig):
        super().__init__()
        c = _check_config(config)
        self.tok = nn.Embedding(c.vocab_size, c.n_embd)  # (V, C)
        self.pos = nn.Embedding(c.block_size, c.n_embd)  # (block_size, C)
        self.seg = nn.Embedding(c.type_vocab_size, c.n_embd)  # (type_vocab_size, C)
        self.ln = nn.LayerNorm(c.n_embd, eps=c.layer_norm_eps)
        self.drop = nn.Dropout(c.dropout)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        B, T = input_ids.shape
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)  # one segment: A
        pos = torch.arange(T, device=input_ids.device)  # (T,)
        x = self.tok(input_ids.long()) + self.pos(pos) + self.seg(token_type_ids.long())  # (B,T,C)+(T,C)+(B,T,C)
        return self.drop(self.ln(x))


class BertSelfAttention(nn.Module):
    """Bidirectional multi-head self-attention with separate ``query``, ``key``, ``value``
    (C -> C each) and the output projection ``proj``: ``forward(x (B, T, C), mask) -> (B, T, C)``.

    No causal mask: query t attends to every key s whose ``mask`` entry is True (all of them
    without a mask), softmax(q k^T / sqrt(hs)) v per head, computed by
    ``F.scaled_dot_product_attention`` (chapter 6 writes it out).
    """

    def __init__(self, config: BertConfig):
        super().__init__()
        c = _check_config(config)
        self.n_head, self.attn_dropout = c.n_head, c.attn_dropout
        self.query = nn.Linear(c.n_embd, c.n_embd)  # W^Q (C, C), all heads side by side
        self.key = nn.Linear(c.n_embd, c.n_embd)  # W^K
        self.value = nn.Linear(c.n_embd, c.n_embd)  # W^V
        self.proj = nn.Linear(c.n_embd, c.n_embd)  # W^O

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        B, T, C = x.shape
        nh, hs = self.n_head, C // self.n_head
        q = self.query(x).view(B, T, nh, hs).transpose(1, 2)  # (B, T, C) -> (B, nh, T, hs)
        k = self.key(x).view(B, T, nh, hs).transpose(1, 2)  # (B, nh, T, hs)
        v = self.value(x).view(B, T, nh, hs).transpose(1, 2)  # (B, nh, T, hs)
        p = self.attn_dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)  # (B, nh, T, hs)
        y = y.transpose(1, 2).reshape(B, T, C)  # (B, nh, T, hs) -> (B, T, nh, hs) -> (B, T, C)
        return self.proj(y)


class BertLayer(nn.Module):
    """An encoder block, (B, T, C) -> (B, T, C), with ``FFN(x) = fc2(act(fc1(x)))`` (C -> n_inner -> C).

    Post-LN (BERT's, ``norm_first=False``): ``x = ln_1(x + MHA(x))``, then ``x = ln_2(x + FFN(x))``.
    Pre-LN (``norm_first=True``, GPT-2's; Xiong et al. 2020): ``x = x + MHA(ln_1(x))``, then
    ``x = x + FFN(ln_2(x))``: the residual stream is never normalised, so the gradient reaches
    the lower blocks undamped and a high learning rate is safe (chapter 6 measures both).
    Dropout acts on each sublayer's output before it is added to the residual stream.
    """

    def __init__(self, config: BertConfig):
        super().__init__()
        c = _check_config(config)
        self.attn = BertSelfAttention(c)
        self.ln_1 = nn.LayerNorm(c.n_embd, eps=c.layer_norm_eps)
        self.fc1 = nn.Linear(c.n_embd, c.n_inner)  # (n_inner, C)
        self.fc2 = nn.Linear(c.n_inner, c.n_embd)  # (C, n_inner)
        self.ln_2 = nn.LayerNorm(c.n_embd, eps=c.layer_norm_eps)
        self.drop = nn.Dropout(c.dropout)
        self.act = ACTIVATIONS[c.activation]
        self.norm_first = c.norm_first

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if self.norm_first:
            x = x + self.drop(self.attn(self.ln_1(x), mask))
            x = x + self.drop(self.fc2(self.act(self.fc1(self.ln_2(x)))))
            return x
        x = self.ln_1(x + self.drop(self.attn(x, mask)))
        x = self.ln_2(x + self.drop(self.fc2(self.act(self.fc1(x)))))
        return x

    def attention_input(self, x: torch.Tensor) -> torch.Tensor:
        """What the attention sublayer reads: ``x`` (post-LN) or ``ln_1(x)`` (pre-LN)."""
        return self.ln_1(x) if self.norm_first else x


class BertModel(nn.Module):
    """The encoder: ``forward(input_ids (B, T), token_type_ids=None, attention_mask=None)
    -> (hidden (B, T, C), pooled (B, C) or None)``.

    ``hidden[:, t]`` is position t's vector after the last block, computed from the whole
    sequence (left and right). ``pooled = tanh(pooler(hidden[:, 0]))``, the ``[CLS]``
    position through the pooler, exists when the model has one (``pooler=True``; BERT's
    masked-LM model has none). ``attention_mask``: 1 for tokens, 0 for padding (keys hidden
    from every query); None: no padding. With ``norm_first`` the last block's output goes
    through a final LayerNorm ``ln_f`` (pre-LN blocks leave the stream unnormalised).
    """

    def __init__(self, config: BertConfig, pooler: bool = True):
        super().__init__()
        c = self.config = _check_config(config)
        if not isinstance(pooler, bool):
            raise ValueError(f"pooler must be True or False, got {pooler!r}")
        self.embeddings = BertEmbeddings(c)
        self.layers = nn.ModuleList([BertLayer(c) for _ in range(c.n_layer)])
        self.ln_f = nn.LayerNorm(c.n_embd, eps=c.layer_norm_eps) if c.norm_first else None
        self.pooler = nn.Linear(c.n_embd, c.n_embd) if pooler else None  # (C, C), then tanh
        self.apply(_init_weights)

    def get_block_size(self) -> int:
        return self.config.block_size

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None):
        mask = _check_inputs(input_ids, token_type_ids, attention_mask, self.config)  # (B, 1, 1, T) or None
        x = self.embeddings(input_ids, token_type_ids)  # (B, T, C)
        for layer in self.layers:
            x = layer(x, mask)
        if self.ln_f is not None:
            x = self.ln_f(x)  # pre-LN: normalise the stream once, at the end
        pooled = torch.tanh(self.pooler(x[:, 0])) if self.pooler is not None else None  # (B, C) from [CLS]
        return x, pooled

    @classmethod
    def from_hf(cls, source, config: BertConfig | None = None) -> BertModel:
        """A BertModel with the weights of a ``transformers.BertModel`` (copied; dtype and
        device kept), or its state dict with ``config``. Given a ``BertForMaskedLM`` or
        ``BertForSequenceClassification``, its encoder ``.bert`` is loaded. The pooler is
        there if the source has one."""
        if isinstance(source, nn.Module) and isinstance(getattr(source, "bert", None), nn.Module):
            source = source.bert
        state, config, training = hf_source(source, config, BertConfig, "bert", "BertModel")
        state = _rename_hf(state, prefix="")
        return _load(cls(config, pooler="pooler.weight" in state), state, training)


def attention_maps(model: nn.Module, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None = None,
                   attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """The attention weights of every layer and head: (n_layer, B, nh, T, T), row t of a map
    the weights query t puts on the keys (each row sums to 1; padded keys get 0).

    ``model``: a ``BertModel``, ``BertForMaskedLM`` or ``BertForSequenceClassification``.
    The forward pass never forms these weights (``F.scaled_dot_product_attention`` fuses
    them away), so they are recomputed here from each layer's input, as in chapter 6:
    softmax(q k^T / sqrt(hs)) per head. Call it in eval mode: then they are exactly the
    weights the forward pass uses (in training mode dropout would change the layers'
    outputs). No gradients.

        maps = attention_maps(mlm.eval(), ids)      # ids (1, T)
        maps[3, 0, 2]                               # layer 3, head 2: a (T, T) matrix
    """
    bert = model if isinstance(model, BertModel) else getattr(model, "bert", None)
    if not isinstance(bert, BertModel):
        raise TypeError(f"expected a BertModel, BertForMaskedLM or BertForSequenceClassification, got "
                        f"{type(model).__name__}")
    mask = _check_inputs(input_ids, token_type_ids, attention_mask, bert.config)  # (B, 1, 1, T) or None
    maps = []
    with torch.no_grad():
        x = bert.embeddings(input_ids, token_type_ids)  # (B, T, C)
        for layer in bert.layers:
            attn, a = layer.attn, layer.attention_input(x)  # a: what the attention reads (B, T, C)
            B, T, C = a.shape
            nh, hs = attn.n_head, C // attn.n_head
            q = attn.query(a).view(B, T, nh, hs).transpose(1, 2)  # (B, T, C) -> (B, nh, T, hs)
            k = attn.key(a).view(B, T, nh, hs).transpose(1, 2)  # (B, nh, T, hs)
            scores = q @ k.transpose(-2, -1) / math.sqrt(hs)  # (B, nh, T, T)
            if mask is not None:
                scores = scores.masked_fill(~mask, float("-inf"))  # padded keys: weight 0
            maps.append(torch.softmax(scores.float(), dim=-1).to(x.dtype))
            x = layer(x, mask)
    return torch.stack(maps)  # (n_layer, B, nh, T, T)


def pair_inputs(ids_a, ids_b, cls_id: int, sep_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's input for one sentence or a pair: ``(input_ids, token_type_ids)``, both (T,) int64.

    ``[CLS] a [SEP]`` with segments all 0 when ``ids_b`` is None; ``[CLS] a [SEP] b [SEP]``
    with 0 up to the first ``[SEP]`` included and 1 after. ``ids_a``, ``ids_b``: token ids
    (a list or a 1-D tensor).

        a = [7, 8], b = [9], [CLS] = 1, [SEP] = 2  ->  [1, 7, 8, 2, 9, 2], segments [0, 0, 0, 0, 1, 1]
    """
    parts = []
    for name, ids in [("ids_a", ids_a), ("ids_b", ids_b)] if ids_b is not None else [("ids_a", ids_a)]:
        t = ids if isinstance(ids, torch.Tensor) else torch.tensor(list(ids), dtype=torch.long)
        if t.dim() != 1 or t.dtype.is_floating_point or t.dtype == torch.bool:
            raise ValueError(f"expected {name} as a list or 1-D tensor of token ids, got {tuple(t.shape)} {t.dtype}")
        parts.append(t.long().cpu())
    cls, sep = torch.tensor([cls_id]), torch.tensor([sep_id])
    a = torch.cat([cls, parts[0], sep])  # [CLS] a [SEP]
    if len(parts) == 1:
        return a, torch.zeros_like(a)
    b = torch.cat([parts[1], sep])  # b [SEP]
    return torch.cat([a, b]), torch.cat([torch.zeros_like(a), torch.ones_like(b)])


# ---------------------------------------------------------------------------- masked language modelling
def mask_tokens(input_ids: torch.Tensor, vocab_size: int, mask_id: int, special_ids: Iterable[int] = (),
                mask_prob: float = 0.15, mask_frac: float = 0.8, random_frac: float = 0.1,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's masking: ``(inputs, labels)`` for a batch of ``input_ids`` (any shape).

    1. Each position whose token is not special is **chosen** with probability
       ``mask_prob`` (0.15), independently; special tokens (``special_ids``: ``[CLS]``,
       ``[SEP]``, ``[PAD]``, ... and ``mask_id`` itself) are never chosen.
    2. A chosen position becomes ``[MASK]`` with probability ``mask_frac`` (0.8), a random
       token with probability ``random_frac`` (0.1), drawn uniformly from the tokens that
       are not special (it may be the original), and stays as it is otherwise (0.1).
    3. ``labels`` hold the original token at the chosen positions and -1 elsewhere: the loss
       is computed at the chosen positions only (``mlm_loss``).

    Randomness: three draws of the input's shape, in this order, from ``generator`` (a CPU
    ``torch.Generator``; the global one if None): ``u = torch.rand`` (chosen where
    ``u < mask_prob``), ``w = torch.rand`` (``[MASK]`` where ``w < mask_frac``, random where
    ``mask_frac <= w < mask_frac + random_frac``), and the random tokens
    ``torch.randint(n_ordinary)`` indexing the ordinary ids in increasing order.

        input_ids [[CLS] to be or not [SEP]], position of "be" chosen and w < 0.8:
        inputs    [[CLS] to [MASK] or not [SEP]],  labels [-1 -1 be -1 -1 -1]
    """
    _check_positive_int("vocab_size", vocab_size)
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() == 0:
        raise TypeError(f"expected input_ids as a torch tensor of token ids, e.g. (B, T), got "
                        f"{type(input_ids).__name__ if not isinstance(input_ids, torch.Tensor) else 'a scalar'}")
    if input_ids.dtype.is_floating_point or input_ids.dtype.is_complex or input_ids.dtype == torch.bool:
        raise TypeError(f"expected input_ids to hold integer token ids, got dtype {input_ids.dtype}")
    if input_ids.numel() and (input_ids.min() < 0 or input_ids.max() >= vocab_size):
        raise ValueError(f"input_ids hold ids from {input_ids.min().item()} to {input_ids.max().item()}; "
                         f"the vocabulary has ids 0..{vocab_size - 1}")
    special = {_check_id("mask_id", mask_id, vocab_size)}
    for i in special_ids:
        special.add(_check_id("a special id", i, vocab_size))
    for name, p in [("mask_prob", mask_prob), ("mask_frac", mask_frac), ("random_frac", random_frac)]:
        if isinstance(p, bool) or not (isinstance(p, (int, float)) and 0 <= p <= 1):
            raise ValueError(f"{name} must be a probability in [0, 1], got {p!r}")
    if mask_frac + random_frac > 1 + 1e-12:
        raise ValueError(f"mask_frac + random_frac must be <= 1 (the rest is left unchanged), got "
                         f"{mask_frac} + {random_frac}")
    ordinary = torch.tensor([i for i in range(vocab_size) if i not in special], dtype=torch.long)  # (n_ordinary,)
    if len(ordinary) == 0 and random_frac > 0:
        raise ValueError("every id is special: there is no ordinary token to draw a random replacement from")
    ids = input_ids.long().cpu()
    is_special = torch.isin(ids, torch.tensor(sorted(special)))  # never chosen
    u = torch.rand(ids.shape, generator=generator)
    chosen = (u < mask_prob) & ~is_special
    w = torch.rand(ids.shape, generator=generator)
    to_mask = chosen & (w < mask_frac)
    to_random = chosen & (w >= mask_frac) & (w < mask_frac + random_frac)
    draws = torch.randint(max(len(ordinary), 1), ids.shape, generator=generator)
    inputs = ids.clone()
    inputs[to_mask] = mask_id
    if to_random.any():
        inputs[to_random] = ordinary[draws[to_random]]
    labels = torch.where(chosen, ids, torch.full_like(ids, -1))
    return inputs.to(input_ids.device), labels.to(input_ids.device)


def _check_id(name: str, i, vocab_size: int) -> int:
    if isinstance(i, bool) or not isinstance(i, int) and not hasattr(i, "__index__"):
        raise TypeError(f"{name} must be a token id (an int), got {type(i).__name__}")
    if not 0 <= int(i) < vocab_size:
        raise ValueError(f"{name} {int(i)} is not a token id of a vocabulary of {vocab_size} (0..{vocab_size - 1})")
    return int(i)


def mlm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The mean cross-entropy at the chosen positions: ``logits`` (B, T, V), ``labels`` (B, T)
    with the original token where a position was chosen and -1 elsewhere.

    The mean is over the chosen positions only (about 15% of them), not over all B * T:
    the other positions have nothing to predict. A batch without a chosen position has
    loss 0 (and zero gradients), not nan.

        logits at 2 positions, labels [-1, 3]: loss = -log softmax(logits[1])[3]
    """
    if not isinstance(logits, torch.Tensor) or logits.dim() != 3 or not logits.dtype.is_floating_point:
        got = f"{tuple(logits.shape)} {logits.dtype}" if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(f"expected logits as a float tensor of shape (B, T, V), got {got}")
    B, T, V = logits.shape
    _check_targets(labels, (B, T), V, name="labels", hint=" (transformers' -100 is -1 here)")
    chosen = labels != -1  # (B, T)
    if not chosen.any():
        return logits.sum() * 0.0  # nothing to predict: 0, with a graph
    return F.cross_entropy(logits[chosen], labels[chosen].long())  # (N, V) against (N,)


class MLMHead(nn.Module):
    """The masked-LM head: ``decoder(ln(act(dense(h))))``, (B, T, C) -> (B, T, V).

    ``decoder`` is a Linear (C -> V) whose weight is the token embedding (tied by
    ``BertForMaskedLM``) and whose bias is the head's own (V,)."""

    def __init__(self, config: BertConfig):
        super().__init__()
        c = _check_config(config)
        self.dense = nn.Linear(c.n_embd, c.n_embd)  # (C, C)
        self.act = ACTIVATIONS[c.activation]
        self.ln = nn.LayerNorm(c.n_embd, eps=c.layer_norm_eps)
        self.decoder = nn.Linear(c.n_embd, c.vocab_size)  # (V, C), tied to the token embedding; bias (V,)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.ln(self.act(self.dense(h))))  # (B, T, C) -> (B, T, V)


class BertForMaskedLM(nn.Module):
    """BERT with its masked-LM head: ``forward(input_ids, token_type_ids=None,
    attention_mask=None, labels=None) -> (logits (B, T, V), loss)``.

    ``logits[:, t]`` scores every token for position t given the whole (masked) input;
    ``loss`` is ``mlm_loss(logits, labels)``, None without labels (BERT does not guess
    which positions you masked). It is a masked LM, not a generator: it fills blanks.
    """

    def __init__(self, config: BertConfig):
        super().__init__()
        c = self.config = _check_config(config)
        self.bert = BertModel(c, pooler=False)
        self.head = MLMHead(c)
        self.head.apply(_init_weights)
        self.head.decoder.weight = self.bert.embeddings.tok.weight  # weight tying: one (V, C) Parameter

    def get_block_size(self) -> int:
        return self.config.block_size

    def num_parameters(self) -> int:
        """All parameters, the tied matrix once."""
        return sum(p.numel() for p in self.parameters())

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, labels: torch.Tensor | None = None):
        h, _ = self.bert(input_ids, token_type_ids, attention_mask)  # (B, T, C)
        logits = self.head(h)  # (B, T, V)
        return logits, (None if labels is None else mlm_loss(logits, labels))

    def masked_loss(self, input_ids: torch.Tensor, labels: torch.Tensor, token_type_ids: torch.Tensor | None = None,
                    attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``forward(...)[1]`` computed faster for training: the head (the (C, V) matmul, a
        fifth of a small model's work) runs at the chosen positions only, whose logits are
        the only ones the loss reads. Same value, up to rounding."""
        h, _ = self.bert(input_ids, token_type_ids, attention_mask)  # (B, T, C)
        if not isinstance(labels, torch.Tensor) or labels.shape != input_ids.shape:
            shape = tuple(labels.shape) if isinstance(labels, torch.Tensor) else type(labels).__name__
            raise ValueError(f"expected labels of shape (B, T) = {tuple(input_ids.shape)} like input_ids, got {shape}")
        chosen = labels != -1  # (B, T)
        logits = self.head(h[chosen])  # (N, C) -> (N, V), N chosen positions
        return mlm_loss(logits[None], labels[chosen][None])  # as one sequence of N positions

    @classmethod
    def from_hf(cls, source, config: BertConfig | None = None) -> BertForMaskedLM:
        """A BertForMaskedLM with the weights of a ``transformers.BertForMaskedLM`` (copied;
        dtype and device kept), or its state dict with ``config``. The decoder must be tied
        to the word embeddings (transformers' default)."""
        state, config, training = hf_source(source, config, BertConfig, "bert", "BertForMaskedLM")
        state = _rename_hf(state, prefix="bert.")
        decoder = state.pop("head.decoder.weight", None)
        tok = state.get("bert.embeddings.tok.weight")
        if decoder is not None and tok is not None and not torch.equal(decoder, tok):
            raise ValueError("cls.predictions.decoder.weight differs from the word embeddings: BertForMaskedLM "
                             "ties them, this model does not (tie_word_embeddings=False)")
        bias = state.pop("head.bias", None)  # transformers keeps the decoder's bias twice, tied
        if bias is not None:
            state.setdefault("head.decoder.bias", bias)
        return _load(cls(config), state, training, skip=("head.decoder.weight",))


class BertForSequenceClassification(nn.Module):
    """BERT with a classifier on ``[CLS]``: ``forward(input_ids, token_type_ids=None,
    attention_mask=None, labels=None) -> (logits (B, n_classes), loss)``.

    ``logits = classifier(dropout(tanh(pooler(hidden[:, 0]))))``: the first position's
    vector, which attends to the whole sequence, summarises it. ``loss`` is the mean
    cross-entropy against ``labels`` (B,) of class ids, None without labels.
    """

    def __init__(self, config: BertConfig, n_classes: int, classifier_dropout: float | None = None):
        super().__init__()
        c = self.config = _check_config(config)
        self.n_classes = _check_positive_int("n_classes", n_classes)
        p = c.dropout if classifier_dropout is None else classifier_dropout
        if isinstance(p, bool) or not (isinstance(p, (int, float)) and 0 <= p < 1):
            raise ValueError(f"classifier_dropout must be None or a probability in [0, 1), got {p!r}")
        self.bert = BertModel(c, pooler=True)
        self.drop = nn.Dropout(p)
        self.classifier = nn.Linear(c.n_embd, n_classes)  # (n_classes, C)
        self.classifier.apply(_init_weights)

    def get_block_size(self) -> int:
        return self.config.block_size

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, labels: torch.Tensor | None = None):
        _, pooled = self.bert(input_ids, token_type_ids, attention_mask)  # (B, C)
        logits = self.classifier(self.drop(pooled))  # (B, n_classes)
        if labels is None:
            return logits, None
        B = input_ids.shape[0]
        if not isinstance(labels, torch.Tensor) or labels.shape != (B,):
            shape = tuple(labels.shape) if isinstance(labels, torch.Tensor) else type(labels).__name__
            raise ValueError(f"expected labels of shape (B,) = {(B,)}, one class id per sequence, got {shape}")
        if labels.dtype.is_floating_point or labels.dtype == torch.bool or \
                (labels.numel() and (labels.min() < 0 or labels.max() >= self.n_classes)):
            raise ValueError(f"labels must be class ids 0..{self.n_classes - 1}, got {labels.tolist()[:8]}")
        return logits, F.cross_entropy(logits, labels.long())

    @classmethod
    def from_encoder(cls, encoder: nn.Module, n_classes: int, classifier_dropout: float | None = None,
                     ) -> BertForSequenceClassification:
        """A classifier whose encoder starts from a pre-trained one (fine-tuning): the weights of
        ``encoder`` (a ``BertForMaskedLM`` or a ``BertModel``) are copied; the pooler (if the
        encoder has none) and the classifier are new, initialised as BERT's."""
        bert = encoder.bert if isinstance(encoder, BertForMaskedLM) else encoder
        if not isinstance(bert, BertModel):
            raise TypeError(f"expected a BertForMaskedLM or a BertModel, got {type(encoder).__name__}")
        model = cls(bert.config, n_classes, classifier_dropout)
        p = next(bert.parameters())
        model = model.to(device=p.device, dtype=p.dtype)
        missing, unexpected = model.bert.load_state_dict(bert.state_dict(), strict=False)
        if unexpected or any(not key.startswith("pooler.") for key in missing):
            raise ValueError(f"the encoder does not fit: missing {missing}, unexpected {unexpected}")
        return model

    @classmethod
    def from_hf(cls, source, config: BertConfig | None = None,
                n_classes: int | None = None) -> BertForSequenceClassification:
        """A classifier with the weights of a ``transformers.BertForSequenceClassification``
        (single-label; copied, dtype and device kept), or its state dict with ``config``
        (``n_classes`` is then read from ``classifier.weight``). transformers' classifier
        dropout (``classifier_dropout``, by default the hidden dropout) is kept."""
        dropout = None
        if isinstance(source, nn.Module):
            hf = getattr(source, "config", None)
            if getattr(hf, "problem_type", None) not in (None, "single_label_classification"):
                raise ValueError(f"problem_type={hf.problem_type!r}: only single-label classification is computed")
            dropout = getattr(hf, "classifier_dropout", None)
        state, config, training = hf_source(source, config, BertConfig, "bert", "BertForSequenceClassification")
        state = _rename_hf(state, prefix="bert.")
        if "classifier.weight" not in state:
            raise ValueError("the state_dict has no classifier.weight: not a BertForSequenceClassification")
        found = state["classifier.weight"].shape[0]
        if n_classes is not None and n_classes != found:
            raise ValueError(f"n_classes={n_classes} but the classifier has {found} outputs; leave n_classes out")
        return _load(cls(config, found, None if dropout is None else float(dropout)), state, training)


# ---------------------------------------------------------------------------- loading transformers' weights
# transformers' names -> ours, applied in order (after the prefix "bert." is handled)
_HF_RENAMES = [
    (r"embeddings\.word_embeddings\.", "embeddings.tok."),
    (r"embeddings\.position_embeddings\.", "embeddings.pos."),
    (r"embeddings\.token_type_embeddings\.", "embeddings.seg."),
    (r"embeddings\.LayerNorm\.", "embeddings.ln."),
    (r"encoder\.layer\.(\d+)\.attention\.self\.(query|key|value)\.", r"layers.\1.attn.\2."),
    (r"encoder\.layer\.(\d+)\.attention\.output\.dense\.", r"layers.\1.attn.proj."),
    (r"encoder\.layer\.(\d+)\.attention\.output\.LayerNorm\.", r"layers.\1.ln_1."),
    (r"encoder\.layer\.(\d+)\.intermediate\.dense\.", r"layers.\1.fc1."),
    (r"encoder\.layer\.(\d+)\.output\.dense\.", r"layers.\1.fc2."),
    (r"encoder\.layer\.(\d+)\.output\.LayerNorm\.", r"layers.\1.ln_2."),
    (r"pooler\.dense\.", "pooler."),
    (r"cls\.predictions\.transform\.dense\.", "head.dense."),
    (r"cls\.predictions\.transform\.LayerNorm\.", "head.ln."),
    (r"cls\.predictions\.decoder\.", "head.decoder."),
    (r"cls\.predictions\.bias$", "head.bias"),
]
_HF_SKIP = re.compile(r"(position_ids|token_type_ids)$")  # buffers, not weights (older versions save them)


def _rename_hf(state: dict, prefix: str) -> dict:
    """transformers' keys -> ours; the encoder's keys start with ``prefix`` in a model with a head."""
    out = {}
    for key, value in state.items():
        if _HF_SKIP.search(key):
            continue
        inner, head = key, ""
        if prefix and key.startswith(prefix):
            inner, head = key[len(prefix):], prefix
        for pattern, repl in _HF_RENAMES:
            inner = re.sub(pattern, repl, inner)
        out[head + inner] = value
    return out


def _load(model: nn.Module, state: dict, training: bool, skip: tuple[str, ...] = ()) -> nn.Module:
    """Copy ``state`` (our key names) into ``model`` after checking keys and shapes; dtype and
    device follow the state's tensors."""
    any_tensor = next(iter(state.values()), None)
    if any_tensor is not None:
        model = model.to(device=any_tensor.device, dtype=any_tensor.dtype)
    ours = {key: value for key, value in model.state_dict().items() if key not in skip}
    missing, unexpected = sorted(set(ours) - set(state)), sorted(set(state) - set(ours))
    if missing or unexpected:
        raise ValueError(f"the state_dict does not fit {type(model).__name__}({model.config}): missing keys "
                         f"{missing[:6]}, unexpected keys {unexpected[:6]}")
    for key, target in ours.items():
        if state[key].shape != target.shape:
            raise ValueError(f"{key}: expected shape {tuple(target.shape)} for {model.config}, got "
                             f"{tuple(state[key].shape)}")
    with torch.no_grad():
        for key, target in ours.items():
            target.copy_(state[key])
    return model.train(training)


if __name__ == "__main__":  # python -m course_lib.bert pretrain ...: the command line of bert_cli
    from course_lib.bert_cli import main

    main()
