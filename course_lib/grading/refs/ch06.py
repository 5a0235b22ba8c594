"""Exercise 6: expected values from torch (F.scaled_dot_product_attention, nn.MultiheadAttention,
F.layer_norm, nn.TransformerEncoderLayer) and course_lib (split, merge, the sinusoids); Part 2's mask
written out by its rule, and its attention run on each sequence alone with torch; the hidden cases.

The hidden cases keep every fixed input of the old hidden tests (drawn with the same torch
generators) and add random ones drawn with the grading seed's ``rng``. The attention, layer
norm and block references run in float64 and are rounded once to the inputs' dtype, so a
float32 result is judged against the exact answer (torch's own float32 kernels can be off by
more than the tolerance on peaked scores).
"""

import math

import numpy as np
import torch
import torch.nn.functional as F

from course_lib import attention as _attn
from course_lib import transformer as _tf
from course_lib.grading import compare
from course_lib.grading.cases.ch06 import TINY, block_state, causal, decoder_qkv, mha_state, padding, random_qkv
from course_lib.grading.verdict import Ref

# ---------------------------------------------------------------------------- float64 references
def _up(value):
    if isinstance(value, torch.Tensor) and value.dtype.is_floating_point:
        return value.double()
    if isinstance(value, dict):
        return {k: _up(v) for k, v in value.items()}
    return value


def in_float64(reference):
    """The reference computed in float64 on float64 copies of the inputs, returned in the first input's dtype:
    the exact answer rounded once, so a float32 result is judged by its own rounding alone."""
    def expected(x, *args):
        return reference(_up(x), *(_up(a) for a in args)).to(x.dtype)
    return expected


# ---------------------------------------------------------------------------- random inputs from rng


def _dtype(rng):
    return torch.float64 if rng.random() < 0.5 else torch.float32


def _randn(rng, shape, dtype, scale=1.0):
    return torch.from_numpy(rng.standard_normal(tuple(shape)) * scale).to(dtype)


def _random_bool_mask(rng, shape):
    """A random bool mask (..., T, S) in which every query may attend to at least one key."""
    mask = rng.random(shape) < 0.6
    keep = rng.integers(0, shape[-1], size=shape[:-1])  # one key per query always kept
    np.put_along_axis(mask, keep[..., None], True, axis=-1)
    return torch.from_numpy(mask)


def _random_mask(rng, T, S, dtype, lead=()):
    kind = rng.integers(0, 3)
    if kind == 0:
        return None
    if kind == 1:
        return _random_bool_mask(rng, (*lead, T, S))
    mask = _randn(rng, (*lead, T, S), dtype, scale=2.0)
    return mask.masked_fill(~_random_bool_mask(rng, (*lead, T, S)), float("-inf"))


# ---------------------------------------------------------------------------- Part 1: attention
def _attention_expected(q, k, v, mask):
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def _attention_cases(rng):
    cases = {"a bool mask the other way round": (*TINY, torch.tensor([[True, False]]))}
    q, k, v = random_qkv((3,), T=5, S=5, hs=4, hv=4, seed=1, dtype=torch.float64)
    cases["float64 stays float64, a causal mask"] = (q, k, v, causal(5))
    q, k, v = random_qkv((2, 3), T=4, S=7, hs=6, hv=5, seed=2, dtype=torch.float64)
    cases["cross-attention (T != S, hv != hs), a padding mask over 3 heads"] = (q, k, v, padding([7, 3]))
    cases["cross-attention, a padding mask with max_len"] = (q, k, v, padding([2, 5], S=7))
    q, k, v = random_qkv((2, 2), T=6, S=6, hs=4, hv=4, seed=3)
    cases["padding and causal masks together"] = (q, k, v, padding([6, 2]) & causal(6))
    g = torch.Generator().manual_seed(4)
    q, k, v = random_qkv((2,), T=5, S=3, hs=4, hv=2, seed=4, dtype=torch.float64)
    cases["an additive float mask"] = (q, k, v, torch.randn(5, 3, generator=g, dtype=torch.float64) * 2)
    causal_float = torch.zeros(5, 5, dtype=torch.float64).masked_fill(~causal(5), float("-inf"))
    q, k, v = random_qkv((2,), T=5, S=5, hs=4, hv=3, seed=5, dtype=torch.float64)
    cases["-inf entries in a float mask"] = (q, k, v, causal_float)
    cases["three leading dimensions, a random bool mask"] = (
        *random_qkv((2, 3, 2), T=4, S=5, hs=4, hv=3, seed=6),
        (torch.rand(4, 5, generator=g) < 0.5) | torch.eye(4, 5, dtype=torch.bool))
    cases["no leading dimension: scale by hs, not hv"] = (*random_qkv((), T=3, S=4, hs=16, hv=2, seed=7), None)
    cases["one key: weight 1"] = (*random_qkv((4,), T=1, S=1, hs=3, hv=3, seed=8), None)
    cases["peaked scores, a causal mask"] = (*random_qkv((2,), T=6, S=6, hs=8, hv=8, seed=9, scale=6.0), causal(6))
    for i in range(2):
        dtype = _dtype(rng)
        lead = tuple(int(n) for n in rng.integers(1, 4, size=rng.integers(0, 3)))
        T, S, hs, hv = (int(n) for n in rng.integers(1, 7, size=4))
        q, k, v = (_randn(rng, (*lead, *shape), dtype) for shape in [(T, hs), (S, hs), (S, hv)])
        cases[f"random shapes and mask {i + 1}"] = (q, k, v, _random_mask(rng, T, S, dtype))
    return cases


# ---------------------------------------------------------------------------- Part 2: a decoder's mask and attention
def _mask_expected(lengths, T):
    """(B, 1, T, T) bool by the rule itself: query t of sequence b may attend to key s iff s <= t < lengths[b]."""
    n = lengths.tolist()
    return torch.tensor([[[[s <= t < n[b] for s in range(T)] for t in range(T)]] for b in range(len(n))],
                        dtype=torch.bool).reshape(len(n), 1, T, T)


def _mask_cases(rng):
    cases = {
        "no padding: the causal mask for every sequence": (torch.tensor([4, 4]), 4),
        "one sequence of one position": (torch.tensor([1]), 1),
        "one empty sequence of one position": (torch.tensor([0]), 1),
        "every sequence empty": (torch.tensor([0, 0, 0]), 3),
        "a batch of one, T = 6": (torch.tensor([4]), 6),
        "B = T: which axis is which": (torch.tensor([3, 1, 2]), 3),
        "lengths 1 to 6, T = 7": (torch.tensor([1, 2, 3, 4, 5, 6]), 7),
    }
    for i in range(4):
        B, T = int(rng.integers(1, 7)), int(rng.integers(1, 9))
        cases[f"random lengths {i + 1}"] = (torch.from_numpy(rng.integers(0, T + 1, size=B)), T)
    return cases


def _decoder_expected(q, k, v, lengths, grad_out=None):
    """Each sequence alone: causal attention (torch's, in float64) over its first lengths[b] positions, zeros
    at the padded queries; with grad_out also the gradients of (out * grad_out).sum() for q, k and v."""
    dtype = q.dtype
    q, k, v = (t.double().requires_grad_() for t in (q, k, v))
    B, nh, T, hv = v.shape
    rows = []
    for b, n in enumerate(lengths.tolist()):
        alone = F.scaled_dot_product_attention(q[b, :, :n], k[b, :, :n], v[b, :, :n], is_causal=True) if n else \
            v.new_zeros(nh, 0, hv)  # (nh, n, hv)
        rows.append(torch.cat([alone, v.new_zeros(nh, T - n, hv)], dim=1))  # padded queries: 0
    out = torch.stack(rows)  # (B, nh, T, hv)
    if grad_out is None:
        return out.detach().to(dtype)
    if out.requires_grad:  # not when every sequence is empty: then every gradient is 0
        (out * grad_out.double()).sum().backward()
    grads = (torch.zeros_like(t) if t.grad is None else t.grad for t in (q, k, v))
    return tuple(t.detach().to(dtype) for t in (out, *grads))


def _padded_rows(value, lengths):
    """The numbers of a (B, nh, T, hv) result at the padded queries t >= lengths[b]."""
    B, nh, T, hv = value.shape
    return [x for i, x in enumerate(value.values) if (i // hv) % T >= lengths[i // (nh * T * hv)]]


def _decoder_compare(result, expected, args):
    """The output (padded queries exactly 0), then the gradients where asked for; rtol 1e-5, atol 1e-5."""
    lengths = args[3].values
    with_grads = type(expected) is tuple
    if with_grads and (type(result) is not tuple or len(result) != 4):
        return compare.same(result, expected)
    out, want = (result[0], expected[0]) if with_grads else (result, expected)
    mismatch = compare.same(out, want, 1e-5, 1e-5, "the output")
    if mismatch:
        return mismatch
    padded = _padded_rows(out, lengths)
    if any(x != 0 for x in padded):
        return compare.Mismatch("value", f"the output: the padded queries must give exactly 0, got {padded[:8]}")
    if with_grads:
        for name, r, e in zip(("q", "k", "v"), result[1:], expected[1:]):
            mismatch = compare.same(r, e, 1e-5, 1e-5, f"the gradient for {name}")
            if mismatch:
                return mismatch
    return None


def _decoder_cases(rng):
    cases = {
        "float64, lengths 6, 1, 4": decoder_qkv(B=3, nh=2, T=6, hs=4, hv=4, lengths=[6, 1, 4], seed=2,
                                                dtype=torch.float64),
        "no padding: causal attention": decoder_qkv(B=2, nh=3, T=5, hs=2, hv=2, lengths=[5, 5], seed=3),
        "one position, an empty sequence": decoder_qkv(B=1, nh=1, T=1, hs=3, hv=2, lengths=[0], seed=4),
        "every sequence empty, the gradients": decoder_qkv(B=2, nh=2, T=3, hs=2, hv=2, lengths=[0, 0], seed=5,
                                                           grad=True),
        "hv != hs, 3 heads, lengths 1 to 4": decoder_qkv(B=4, nh=3, T=4, hs=6, hv=2, lengths=[1, 4, 2, 3], seed=6),
        "peaked scores": decoder_qkv(B=2, nh=2, T=6, hs=8, hv=4, lengths=[6, 3], seed=7, scale=4.0),
        "the gradients, float64, lengths 5, 0, 3": decoder_qkv(B=3, nh=2, T=5, hs=4, hv=3, lengths=[5, 0, 3],
                                                               seed=8, dtype=torch.float64, grad=True),
        "the gradients, one position each": decoder_qkv(B=3, nh=1, T=4, hs=2, hv=2, lengths=[1, 1, 1], seed=9,
                                                        grad=True),
        "the gradients, peaked scores, float64": decoder_qkv(B=2, nh=2, T=5, hs=8, hv=4, lengths=[5, 2], seed=10,
                                                             dtype=torch.float64, scale=4.0, grad=True),
    }
    for i in range(4):
        dtype = _dtype(rng)
        B, nh, T, hs, hv = (int(n) for n in rng.integers(1, 6, size=5))
        lengths = [int(n) for n in rng.integers(0, T + 1, size=B)]
        g = torch.Generator().manual_seed(int(rng.integers(2 ** 31)))
        q, k, v = (torch.randn(B, nh, T, d, generator=g, dtype=dtype) for d in (hs, hs, hv))
        grad = (torch.randn(B, nh, T, hv, generator=g, dtype=dtype),) if i % 2 else ()
        cases[f"random sizes and lengths {i + 1}" + (", the gradients" if grad else "")] = (
            q, k, v, torch.tensor(lengths), *grad)
    return cases


# ---------------------------------------------------------------------------- Part 3: split and merge
def _split_expected(x, n_heads):
    return _attn.MultiHeadAttention(x.shape[-1], n_heads).split_heads(x).clone()


def _split_cases(rng):
    g = torch.Generator().manual_seed(1)
    cases = {
        "float64 stays float64": (torch.randn(2, 7, 6, generator=g, dtype=torch.float64), 3),
        "one head": (torch.randn(2, 4, 8, generator=g), 1),
        "head size 1": (torch.randn(2, 3, 5, generator=g), 5),
        "one sequence of one position": (torch.randn(1, 1, 16, generator=g), 4),
        "8 heads": (torch.randn(4, 9, 32, generator=g), 8),
    }
    for i in range(2):
        B, T, nh, hs = (int(n) for n in rng.integers(1, 6, size=4))
        cases[f"random shape {i + 1}"] = (_randn(rng, (B, T, nh * hs), _dtype(rng)), nh)
    return cases


def _merge_expected(x, non_contiguous=False):
    B, nh, T, hs = x.shape
    return _attn.MultiHeadAttention(nh * hs, nh).merge_heads(x).clone()


def _merge_cases(rng):
    g = torch.Generator().manual_seed(1)
    cases = {
        "float64 stays float64": (torch.randn(2, 3, 7, 2, generator=g, dtype=torch.float64),),
        "one head": (torch.randn(2, 1, 4, 8, generator=g),),
        "head size 1": (torch.randn(2, 5, 3, 1, generator=g),),
        "one sequence of one position": (torch.randn(1, 4, 1, 4, generator=g),),
    }
    x = torch.randn(4, 9, 32, generator=g)
    cases["merge undoes split"] = (x.view(4, 9, 8, 4).transpose(1, 2).contiguous(),)
    cases["a non-contiguous input"] = (torch.randn(2, 6, 3, 4, generator=g).transpose(1, 2).contiguous(), True)
    for i in range(2):
        B, nh, T, hs = (int(n) for n in rng.integers(1, 6, size=4))
        cases[f"random shape {i + 1}"] = (_randn(rng, (B, nh, T, hs), _dtype(rng)),)
    return cases


# ---------------------------------------------------------------------------- Part 4: multi-head attention
def _torch_mask(mask, B, nh, T, dtype):
    """Ours (bool True = may attend, or float added), broadcastable to (B, nh, T, T), as
    nn.MultiheadAttention takes it: (B * nh, T, T), bool True = may NOT attend."""
    if mask is None:
        return None
    m = mask.expand(B, nh, T, T).reshape(B * nh, T, T)
    return ~m if m.dtype == torch.bool else m.to(dtype)


def _mha_expected(x, state, n_heads, mask):
    """The same weights in torch.nn.MultiheadAttention."""
    B, T, C = x.shape
    bias = "q_proj.bias" in state
    # dropout 0 in training mode: the same numbers as eval, by torch's ordinary path (eval's fast path gives
    # NaN with a float (B * nh, T, T) mask in torch 2.13's TransformerEncoderLayer)
    ref = torch.nn.MultiheadAttention(C, n_heads, bias=bias, batch_first=True, dtype=x.dtype).train()
    with torch.no_grad():
        ref.in_proj_weight.copy_(torch.cat([state[f"{p}_proj.weight"] for p in "qkv"]))
        ref.out_proj.weight.copy_(state["out_proj.weight"])
        if bias:
            ref.in_proj_bias.copy_(torch.cat([state[f"{p}_proj.bias"] for p in "qkv"]))
            ref.out_proj.bias.copy_(state["out_proj.bias"])
        return ref(x, x, x, attn_mask=_torch_mask(mask, B, n_heads, T, x.dtype), need_weights=False)[0].clone()


def _mha_cases(rng):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 6, 12, generator=g, dtype=torch.float64)
    state = mha_state(12, 3, seed=1, dtype=torch.float64)
    cases = {
        "float64 stays float64, a causal mask": (x, state, 3, causal(6)),
        "a padding mask": (x, state, 3, padding([6, 2, 4])),
        "padding and causal masks together": (x, state, 3, padding([1, 6, 3]) & causal(6)),
        "one head: hs = C": (x, mha_state(12, 1, seed=2, dtype=torch.float64), 1, causal(6)),
        "head size 1": (x, mha_state(12, 12, seed=3, dtype=torch.float64), 12, None),
        "no biases": (x, mha_state(12, 4, seed=4, dtype=torch.float64, bias=False), 4, causal(6)),
        "one sequence of one position": (torch.randn(1, 1, 8, generator=g), mha_state(8, 2, seed=5), 2, None),
    }
    x = torch.randn(2, 7, 16, generator=g)
    state = mha_state(16, 4, seed=6)
    cases["a float mask, added to every head's scores"] = (x, state, 4, torch.randn(7, 7, generator=g))
    cases["4 heads, no mask"] = (x, state, 4, None)
    for i in range(2):
        dtype = _dtype(rng)
        B, T, nh, hs = (int(n) for n in rng.integers(1, 6, size=4))
        state = {name: _randn(rng, value.shape, dtype, scale=1 / math.sqrt(nh * hs))
                 for name, value in mha_state(nh * hs, nh, seed=0, bias=bool(rng.random() < 0.8)).items()}
        mask = _random_mask(rng, T, T, dtype, lead=(B, 1) if rng.random() < 0.5 else ())
        cases[f"random sizes, weights and mask {i + 1}"] = (_randn(rng, (B, T, nh * hs), dtype), state, nh, mask)
    return cases


# ---------------------------------------------------------------------------- Part 5: the sinusoids
def _pe_expected(max_len, d_model, rows=None):
    table = _tf.SinusoidalPositionalEncoding(d_model, max_len).pe.clone()
    return table if rows is None else (tuple(table.shape), table[rows])


def _rows(rng, max_len, count=16):
    """The first and last rows and some between (a long table is too much data to hand back whole)."""
    picked = rng.choice(np.arange(1, max_len - 1), size=count - 2, replace=False)
    return [0, *sorted(int(r) for r in picked), max_len - 1]


def _pe_cases(rng):
    cases = {
        "one position, one column": (1, 1),
        "one position": (1, 6),
        "odd d_model: the last column is a sine": (10, 7),
        "d_model = 3": (5, 3),
        "one pair of columns": (100, 2),
        "a long table, d_model = 64 (some rows)": (512, 64, _rows(rng, 512)),
        "a long table, odd d_model (some rows)": (300, 33, _rows(rng, 300)),
    }
    for i in range(2):
        cases[f"random size {i + 1}"] = (int(rng.integers(1, 41)), int(rng.integers(1, 25)))
    return cases


# ---------------------------------------------------------------------------- Part 6: layer norm
def _ln_expected(x, weight, bias, eps):
    return F.layer_norm(x, (x.shape[-1],), weight, bias, eps)


def _ln_compare(result, expected, args):
    """rtol 1e-5, atol 1e-5; 2e-4 where x is large (a mean near 100: float32 rounding of x is about 3e-5,
    while the variance as mean(x^2) - mean^2 is off by more than 1e-3)."""
    x = args[0]
    large = bool(x.values) and max(abs(v) for v in x.values) > 10
    return compare.same(result, expected, rtol=1e-5, atol=2e-4 if large else 1e-5)


def _ln_inputs(shape, seed, dtype=torch.float32, scale=1.0, shift=0.0, eps=1e-5):
    g = torch.Generator().manual_seed(seed)
    C = shape[-1]
    return (torch.randn(*shape, generator=g, dtype=dtype) * scale + shift, torch.randn(C, generator=g, dtype=dtype),
            torch.randn(C, generator=g, dtype=dtype), eps)


def _ln_cases(rng):
    cases = {
        "two vectors, weight and bias": (torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 6.0]]),
                                         torch.tensor([1.0, 2.0, 3.0]), torch.tensor([0.0, 0.0, 1.0]), 1e-5),
        "float64 stays float64": _ln_inputs((3, 4, 6), seed=1, dtype=torch.float64),
        "a variance below eps: eps inside the root": _ln_inputs((4, 16), seed=2, scale=1e-3),
        "a large mean": _ln_inputs((2, 3, 32), seed=3, shift=100.0),
        "three leading dimensions": _ln_inputs((2, 2, 3, 5), seed=4),
        "one vector": _ln_inputs((7,), seed=5),
        "C = 1: y = bias": _ln_inputs((3, 1), seed=6),
        "eps = 0.1": _ln_inputs((4, 10), seed=7, eps=0.1),
        "float64, a batch of 2": _ln_inputs((2, 6, 12), seed=8, dtype=torch.float64),
    }
    for i in range(2):
        dtype = _dtype(rng)
        shape = tuple(int(n) for n in rng.integers(1, 6, size=rng.integers(1, 4)))
        C = shape[-1]
        cases[f"random shape, weight, bias and eps {i + 1}"] = (
            _randn(rng, shape, dtype, scale=float(rng.uniform(0.1, 3))), _randn(rng, (C,), dtype),
            _randn(rng, (C,), dtype), float(rng.choice([1e-5, 1e-3, 0.1])))
    return cases


# ---------------------------------------------------------------------------- Part 7: the pre-LN block
def _block_expected(x, state, n_heads, mask):
    """The same weights in torch.nn.TransformerEncoderLayer(norm_first=True)."""
    B, T, C = x.shape
    d_ff = state["ffn.fc1.weight"].shape[0]
    ref = torch.nn.TransformerEncoderLayer(C, n_heads, d_ff, dropout=0.0, batch_first=True, norm_first=True,
                                           dtype=x.dtype).train()  # dropout 0; see _mha_expected
    with torch.no_grad():
        ref.self_attn.in_proj_weight.copy_(torch.cat([state[f"self_attn.{p}_proj.weight"] for p in "qkv"]))
        ref.self_attn.in_proj_bias.copy_(torch.cat([state[f"self_attn.{p}_proj.bias"] for p in "qkv"]))
        for theirs, ours in [(ref.self_attn.out_proj, "self_attn.out_proj"), (ref.linear1, "ffn.fc1"),
                             (ref.linear2, "ffn.fc2"), (ref.norm1, "ln1"), (ref.norm2, "ln2")]:
            theirs.weight.copy_(state[f"{ours}.weight"])
            theirs.bias.copy_(state[f"{ours}.bias"])
        return ref(x, src_mask=_torch_mask(mask, B, n_heads, T, x.dtype)).clone()


def _block_cases(rng):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(3, 6, 12, generator=g, dtype=torch.float64)
    state = block_state(12, 20, seed=2, dtype=torch.float64)
    cases = {
        "float64 stays float64, no mask": (x, state, 3, None),
        "float64, 3 heads, a causal mask": (x, state, 3, causal(6)),
        "an encoder's padding mask": (x, state, 3, padding([6, 2, 4])),
        "one head, d_ff < C": (x, block_state(12, 7, seed=3, dtype=torch.float64), 1, causal(6)),
        "one sequence of one position": (torch.randn(1, 1, 4, generator=g), block_state(4, 8, seed=4), 2, None),
        "4 heads, larger inputs, a causal mask": (torch.randn(2, 9, 16, generator=g) * 3, block_state(16, 64, seed=5),
                                                   4, causal(9)),
    }
    for i in range(2):
        dtype = _dtype(rng)
        B, T, nh, hs = (int(n) for n in rng.integers(1, 5, size=4))
        d_ff = int(rng.integers(1, 33))
        state = {name: _randn(rng, value.shape, dtype, scale=0.5)
                 for name, value in block_state(nh * hs, d_ff, seed=0).items()}
        mask = _random_mask(rng, T, T, dtype, lead=(B, 1) if rng.random() < 0.5 else ())
        cases[f"random sizes, weights and mask {i + 1}"] = (_randn(rng, (B, T, nh * hs), dtype), state, nh, mask)
    return cases


REFS = {
    "attention": Ref(in_float64(_attention_expected), hidden=_attention_cases, rtol=1e-5, atol=1e-5),
    "decoder_mask": Ref(_mask_expected, hidden=_mask_cases),
    "decoder_self_attention": Ref(_decoder_expected, hidden=_decoder_cases, compare=_decoder_compare),
    "split_heads": Ref(_split_expected, hidden=_split_cases, rtol=0, atol=0),
    "merge_heads": Ref(_merge_expected, hidden=_merge_cases, rtol=0, atol=0),
    "multi_head_attention": Ref(in_float64(_mha_expected), hidden=_mha_cases, rtol=1e-5, atol=1e-5),
    "sinusoidal_encoding": Ref(_pe_expected, hidden=_pe_cases, rtol=0, atol=1e-4),
    "layer_norm": Ref(in_float64(_ln_expected), hidden=_ln_cases, compare=_ln_compare),
    "pre_ln_block": Ref(in_float64(_block_expected), hidden=_block_cases, rtol=1e-5, atol=1e-5),
}
