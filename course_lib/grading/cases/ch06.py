"""Exercise 6 (the Transformer from scratch): the graded parts and their visible cases.

A module cannot cross as data: Part 4's ``MultiHeadAttention`` and Part 7's pre-LN
``EncoderBlock`` travel as a state dict (a dict of tensors) and a number of heads, and
the call builds the course_lib module from them (its constructor is exempt from the
guard; its forward, ``split_heads``, ``merge_heads`` and the block's ``ln1(x)``,
``ffn(x)``, ``block(x)`` are not, except where they are the earlier parts' reference, see
below). Inputs arrive as fresh contiguous tensors: the one case of a non-contiguous input
(``merge_heads``) is made so by its call.

Part 2b (``decoder_self_attention``) is graded on its output and, in the cases that pass a
tensor ``grad_out``, on the gradients of ``(out * grad_out).sum()`` for q, k and v as well:
the call backpropagates and returns ``(out, dq, dk, dv)``.

No cascades: while Part 2b runs, the notebook's ``decoder_mask`` is the course's (built
from ``causal_mask`` and ``padding_mask``) and ``attention`` is switched off (the part is
written out in full); while Part 4 runs, ``attention``, ``split_heads`` and
``merge_heads`` are course_lib's; while Part 7 runs, those and ``layer_norm`` and
``multi_head_attention`` are; the student's own are put back after each call. A bug in an
earlier part costs that part only.

This module holds no expected value and no reference of the part it grades.
"""

import math
from types import SimpleNamespace

import torch
import torch.nn.functional as F

from course_lib import attention as _attn
from course_lib import transformer as _tf
from course_lib.grading.kernel import Part, lend

# ---------------------------------------------------------------------------- what is switched off
ATTENTION_BUILT_INS = (("torch.nn.functional", "scaled_dot_product_attention"),
                       ("torch", "_C._nn.scaled_dot_product_attention"),
                       ("torch.nn.functional", "multi_head_attention_forward")) + \
    tuple(("torch", name) for name in dir(torch) if "scaled_dot_product" in name or "multi_head_attention" in name)
MHA_BUILT_INS = ATTENTION_BUILT_INS + (("torch.nn", "MultiheadAttention.forward"),)
NORM_BUILT_INS = tuple((module, name) for module, owner in (("torch", torch), ("torch.nn.functional", F))
                       for name in ("layer_norm", "native_layer_norm", "rms_norm", "group_norm", "native_group_norm",
                                    "instance_norm", "batch_norm", "native_batch_norm")
                       if hasattr(owner, name)) + (("torch.nn", "LayerNorm.forward"),)
BLOCK_BUILT_INS = MHA_BUILT_INS + NORM_BUILT_INS + (("torch.nn", "TransformerEncoderLayer.forward"),) + \
    tuple(("torch", name) for name in dir(torch) if name.startswith("_transformer_encoder_layer"))


# ---------------------------------------------------------------------------- inputs (plain torch)
def causal(T):
    """(T, T) bool, True on and below the diagonal: True = may attend."""
    return torch.ones(T, T, dtype=torch.bool).tril()


def padding(lengths, S=None):
    """(B, 1, 1, S) bool, True at the real keys of each sequence."""
    S = max(lengths) if S is None else S
    return (torch.arange(S)[None, :] < torch.tensor(lengths)[:, None])[:, None, None, :]


def random_qkv(lead, T, S, hs, hv, seed, dtype=torch.float32, scale=1.0):
    """q (*lead, T, hs), k (*lead, S, hs), v (*lead, S, hv), seeded."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*lead, *shape, generator=g, dtype=dtype) * scale for shape in [(T, hs), (S, hs), (S, hv)]]


def mha_state(C, nh, seed, dtype=torch.float32, bias=True):
    """The state dict of a MultiHeadAttention(C, nh) with every weight and bias random (seeded)."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
        state[f"{proj}.weight"] = torch.randn(C, C, generator=g, dtype=dtype) / math.sqrt(C)
        if bias:
            state[f"{proj}.bias"] = torch.randn(C, generator=g, dtype=dtype) / math.sqrt(C)
    return state


def block_state(C, d_ff, seed, dtype=torch.float32):
    """The state dict of a pre-LN EncoderBlock with every parameter random (the LayerNorms' too), seeded."""
    g = torch.Generator().manual_seed(seed)
    shapes = [("ln1.weight", (C,)), ("ln1.bias", (C,))]
    shapes += [(f"self_attn.{p}.{w}", (C, C) if w == "weight" else (C,))
               for p in ("q_proj", "k_proj", "v_proj", "out_proj") for w in ("weight", "bias")]
    shapes += [("ln2.weight", (C,)), ("ln2.bias", (C,)), ("ffn.fc1.weight", (d_ff, C)), ("ffn.fc1.bias", (d_ff,)),
               ("ffn.fc2.weight", (C, d_ff)), ("ffn.fc2.bias", (C,))]
    return {name: torch.randn(shape, generator=g, dtype=dtype) * 0.5 for name, shape in shapes}


# ---------------------------------------------------------------------------- modules built from plain data
def build_mha(state, n_heads):
    """A course_lib MultiHeadAttention with these weights (dtype and bias from the state dict)."""
    w = state["q_proj.weight"]
    mha = _attn.MultiHeadAttention(w.shape[0], n_heads, bias="q_proj.bias" in state).to(w.dtype)
    mha.load_state_dict(state)
    return mha.eval()


def build_block(state, n_heads):
    """A pre-LN course_lib EncoderBlock (ReLU, no dropout) with these weights."""
    C, d_ff = state["ln1.weight"].shape[0], state["ffn.fc1.weight"].shape[0]
    config = _tf.TransformerConfig(vocab_size=2, d_model=C, n_heads=n_heads, d_ff=d_ff, dropout=0.0, norm_first=True)
    block = _tf.EncoderBlock(config).to(state["ln1.weight"].dtype)
    block.load_state_dict(state)
    return block.eval()


def _constructors():
    return (_attn.MultiHeadAttention.__init__, _tf.TransformerConfig.__init__, _tf.TransformerConfig.__post_init__,
            _tf._check_config, _tf._check_positive_int, _tf.EncoderBlock.__init__, _tf.LayerNorm.__init__,
            _tf.FeedForward.__init__)


# ---------------------------------------------------------------------------- the earlier parts' references
def _split_heads(x, n_heads):
    return _attn.MultiHeadAttention.split_heads(SimpleNamespace(n_heads=n_heads, head_size=x.shape[-1] // n_heads), x)


def _merge_heads(x):
    return _attn.MultiHeadAttention.merge_heads(None, x)


def _layer_norm(x, weight, bias, eps=1e-5):
    return _tf.LayerNorm.forward(SimpleNamespace(d_model=weight.shape[-1], eps=eps, weight=weight, bias=bias), x)


def _multi_head_attention(x, mha, mask=None):
    return mha(x, mask=mask)


def _attention_refs():
    return (_attn.scaled_dot_product_attention, _attn._check_mask, _attn._shape)


def _decoder_mask(lengths, T):
    """Part 2a's mask, lent while Part 2b runs: (B, 1, T, T) bool, True where s <= t < lengths[b]."""
    real = _attn.padding_mask(lengths, max_len=T)  # (B, 1, 1, T): the real keys
    return _attn.causal_mask(T) & real & real.transpose(-1, -2)  # no future key, no padded key or query


def _decoder_mask_refs():
    return (_attn.causal_mask, _attn.padding_mask, _attn._shape)


def _no_attention(*args, **kwargs):
    raise AssertionError("attention (Part 1) is switched off in this test: write this part's attention out in full")


# ---------------------------------------------------------------------------- the calls
def _merge(ns, x, non_contiguous=False):
    if non_contiguous:  # the same numbers, laid out as a transpose leaves them
        x = x.transpose(1, 2).contiguous().transpose(1, 2)
    return ns["merge_heads"](x)


def _decoder_attention(ns, q, k, v, lengths, grad_out=None):
    """decoder_self_attention's output; with ``grad_out`` also the gradients of (out * grad_out).sum()
    for q, k and v: (out, dq, dk, dv)."""
    with lend(ns, decoder_mask=_decoder_mask, attention=_no_attention):
        if grad_out is None:
            with torch.no_grad():
                return ns["decoder_self_attention"](q, k, v, lengths)
        q, k, v = (t.clone().requires_grad_() for t in (q, k, v))
        out = ns["decoder_self_attention"](q, k, v, lengths)
        if isinstance(out, torch.Tensor) and out.requires_grad:  # an output of zeros alone may have no graph
            (out * grad_out).sum().backward()
        return (out.detach() if isinstance(out, torch.Tensor) else out,
                *(torch.zeros_like(t) if t.grad is None else t.grad for t in (q, k, v)))


def _mha(ns, x, state, n_heads, mask):
    mha = build_mha(state, n_heads)
    with lend(ns, attention=_attn.scaled_dot_product_attention, split_heads=_split_heads,
                      merge_heads=_merge_heads), torch.no_grad():
        return ns["multi_head_attention"](x, mha, mask)


def _mha_exempt():
    return _constructors() + _attention_refs() + (_attn.MultiHeadAttention.split_heads,
                                                  _attn.MultiHeadAttention.merge_heads)


def _pe(ns, max_len, d_model, rows=None):
    """The table, or for a long one its shape and some of its rows (the whole would be too much data)."""
    table = ns["sinusoidal_encoding"](max_len, d_model)
    return table if rows is None else (tuple(table.shape), table[rows])


def _block(ns, x, state, n_heads, mask):
    block = build_block(state, n_heads)
    with lend(ns, attention=_attn.scaled_dot_product_attention, split_heads=_split_heads,
                      merge_heads=_merge_heads, multi_head_attention=_multi_head_attention,
                      layer_norm=_layer_norm), torch.no_grad():
        return ns["pre_ln_block"](x, block, mask)


def _block_exempt():
    # the whole MultiHeadAttention (block.self_attn(h) is the injected multi_head_attention) and LayerNorm's
    # forward (block.ln1(x) is the injected layer_norm); not the block's forward nor the FFN's
    return _constructors() + _attention_refs() + (_attn.MultiHeadAttention, _tf.LayerNorm.forward)


def decoder_qkv(B, nh, T, hs, hv, lengths, seed, dtype=torch.float32, scale=1.0, grad=False):
    """q, k (B, nh, T, hs), v (B, nh, T, hv), lengths (B,), seeded; with ``grad`` a random grad_out
    (B, nh, T, hv) too. The padded positions hold large numbers: they must not count."""
    q, k, v = random_qkv((B, nh), T=T, S=T, hs=hs, hv=hv, seed=seed, dtype=dtype, scale=scale)
    lengths = torch.tensor(lengths)
    padded = ~(torch.arange(T)[None, :] < lengths[:, None])[:, None, :, None]  # (B, 1, T, 1)
    q, k, v = (t.masked_fill(padded, 30.0) for t in (q, k, v))
    if not grad:
        return q, k, v, lengths
    return q, k, v, lengths, torch.randn(B, nh, T, hv, generator=torch.Generator().manual_seed(seed + 1000),
                                         dtype=dtype)


# ---------------------------------------------------------------------------- visible cases
LN3 = math.log(3.0)
TINY = (torch.tensor([[2 * LN3, 0.0, 0.0, 0.0]]), torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]]),
        torch.tensor([[4.0], [8.0]]))


def _identity_mha():
    """C = 2, one head, every projection the identity with zero biases."""
    return {f"{p}.{w}": torch.eye(2) if w == "weight" else torch.zeros(2)
            for p in ("q_proj", "k_proj", "v_proj", "out_proj") for w in ("weight", "bias")}


def _silent_block():
    """A block whose two sublayers end in zeros (out_proj and fc2): it adds nothing."""
    state = block_state(8, 16, seed=0)
    for name in ("self_attn.out_proj.weight", "self_attn.out_proj.bias", "ffn.fc2.weight", "ffn.fc2.bias"):
        state[name] = torch.zeros_like(state[name])
    return state


_X_MHA = torch.randn(2, 5, 8, generator=torch.Generator().manual_seed(0))
_X_BLOCK = torch.randn(2, 4, 8, generator=torch.Generator().manual_seed(0))
_LN_G = torch.Generator().manual_seed(0)
_LN_X = torch.randn(2, 5, 8, generator=_LN_G)
_LN_W, _LN_B = torch.randn(8, generator=_LN_G), torch.randn(8, generator=_LN_G)

PARTS = {
    "attention": Part("test_attention", "attention", {
        "the hand-worked example: [[5.0]]": (*TINY, None),
        "a bool mask, True = may attend: [[8.0]]": (*TINY, torch.tensor([[False, True]])),
        "a float mask is added: [[6.0]]": (*TINY, torch.tensor([[0.0, LN3]])),
        "random q, k, v, batch of 2, no mask": (*random_qkv((2,), T=4, S=4, hs=8, hv=8, seed=0), None),
        "random q, k, v, batch of 2, a causal mask": (*random_qkv((2,), T=4, S=4, hs=8, hv=8, seed=0), causal(4)),
    }, switched_off=ATTENTION_BUILT_INS,
        why="torch's attention kernels are switched off in this test: write the attention yourself"),
    "decoder_mask": Part("test_decoder_mask", "decoder_mask", {
        "the hand-worked example: lengths 3, 1 and T = 3": (torch.tensor([3, 1]), 3),
        "T longer than every sequence, an empty sequence": (torch.tensor([4, 0, 2]), 5),
    }),
    "decoder_self_attention": Part("test_decoder_self_attention", "decoder_self_attention", {
        "the hand-worked example: all scores 0, lengths 3, 1": (
            torch.zeros(2, 1, 3, 1), torch.zeros(2, 1, 3, 1),
            torch.tensor([[[[1.0], [2.0], [4.0]]], [[[8.0], [16.0], [32.0]]]]), torch.tensor([3, 1])),
        "2 heads, lengths 5, 3, 0": decoder_qkv(B=3, nh=2, T=5, hs=4, hv=3, lengths=[5, 3, 0], seed=0),
        "the gradients too: lengths 4, 2": decoder_qkv(B=2, nh=2, T=4, hs=4, hv=4, lengths=[4, 2], seed=1,
                                                        grad=True),
    }, call=_decoder_attention, exempt=_decoder_mask_refs, switched_off=ATTENTION_BUILT_INS,
        why="torch's attention kernels are switched off in this test: write the attention yourself"),
    "split_heads": Part("test_split_heads", "split_heads", {
        "the hand-worked example": (torch.arange(8.0).view(1, 2, 4), 2),
        "3 sequences of 5, C = 12 into 4 heads": (torch.randn(3, 5, 12, generator=torch.Generator().manual_seed(0)), 4),
    }),
    "merge_heads": Part("test_merge_heads", "merge_heads", {
        "the hand-worked example": (torch.tensor([[[[0.0, 1.0], [4.0, 5.0]], [[2.0, 3.0], [6.0, 7.0]]]]),),
        "3 sequences, 4 heads of 5 x 2": (torch.randn(3, 4, 5, 2, generator=torch.Generator().manual_seed(0)),),
    }, call=_merge),
    "multi_head_attention": Part("test_multi_head_attention", "multi_head_attention", {
        "the hand-worked example: identity projections, causal": (torch.tensor([[[1.0, 0.0], [0.0, 1.0]]]),
                                                                    _identity_mha(), 1, causal(2)),
        "random weights, 2 heads, no mask": (_X_MHA, mha_state(8, 2, seed=0), 2, None),
        "random weights, 2 heads, a causal mask": (_X_MHA, mha_state(8, 2, seed=0), 2, causal(5)),
    }, call=_mha, exempt=_mha_exempt, switched_off=MHA_BUILT_INS,
        why="torch's multi-head attention and attention kernels are switched off in this test: use your "
            "split_heads, attention and merge_heads"),
    "sinusoidal_encoding": Part("test_sinusoidal_encoding", "sinusoidal_encoding", {
        "the hand-worked example: d_model = 4": (2, 4),
        "50 positions, d_model = 16": (50, 16),
    }, call=_pe),
    "layer_norm": Part("test_layer_norm", "layer_norm", {
        "the hand-worked example, eps = 0": (torch.tensor([1.0, 2.0, 3.0]), torch.ones(3), torch.zeros(3), 0.0),
        "random x (2, 5, 8), weight and bias": (_LN_X, _LN_W, _LN_B, 1e-5),
    }, switched_off=NORM_BUILT_INS,
        why="torch's normalisation layers are switched off in this test: write the layer norm yourself"),
    "pre_ln_block": Part("test_pre_ln_block", "pre_ln_block", {
        "sublayers ending in zeros: the identity": (_X_BLOCK, _silent_block(), 2, None),
        "random weights, no mask": (_X_BLOCK, block_state(8, 16, seed=1), 2, None),
        "random weights, a causal mask": (_X_BLOCK, block_state(8, 16, seed=1), 2, causal(4)),
        "float64, a causal mask": (_X_BLOCK.double(), block_state(8, 16, seed=1, dtype=torch.float64), 2, causal(4)),
    }, call=_block, exempt=_block_exempt, switched_off=BLOCK_BUILT_INS,
        why="torch's Transformer layers, attention and normalisation are switched off in this test: use your "
            "layer_norm and multi_head_attention"),
}
