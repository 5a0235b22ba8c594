"""Exercise 7: expected values from torch (nn.MultiheadAttention, F.scaled_dot_product_attention,
torch.topk, transformers' top-p algorithm) and course_lib's schedule; the hidden cases."""

import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from course_lib.train import warmup_cosine
from course_lib.grading.verdict import Ref

F32, F64 = torch.float32, torch.float64
INF = float("inf")


def _normal(rng, shape, dtype=F32, scale=1.0):
    return torch.from_numpy(rng.standard_normal(shape) * scale).to(dtype)


def _weights(rng, C, dtype=F32, bias=True):
    shapes = {"c_attn.weight": (3 * C, C), "c_attn.bias": (3 * C,), "c_proj.weight": (C, C), "c_proj.bias": (C,)}
    return {name: _normal(rng, shape, dtype, 1 / math.sqrt(C))
            for name, shape in shapes.items() if bias or name.endswith("weight")}


# Part 1: the same weights in torch.nn.MultiheadAttention, causal

def _mha(x, n_head, w):
    """Causal self-attention of x (B, T, C) by torch.nn.MultiheadAttention (its bool mask: True = may not attend)."""
    T, C = x.shape[1], x.shape[2]
    bias = "c_attn.bias" in w
    ref = nn.MultiheadAttention(C, n_head, bias=bias, batch_first=True, dtype=x.dtype).eval()
    with torch.no_grad():
        ref.in_proj_weight.copy_(w["c_attn.weight"])  # (3C, C): W^Q, W^K, W^V stacked, as in c_attn
        ref.out_proj.weight.copy_(w["c_proj.weight"])
        if bias:
            ref.in_proj_bias.copy_(w["c_attn.bias"])
            ref.out_proj.bias.copy_(w["c_proj.bias"])
        future = torch.ones(T, T, dtype=torch.bool).triu(diagonal=1)  # (T, T) True where s > t
        return ref(x, x, x, attn_mask=future, need_weights=False)[0].clone()


def _attention_cases(rng):
    x = _normal(rng, (3, 7, 12), F64)
    cases = {
        "float64: B=3, T=7, C=12, 3 heads": (x, 3, _weights(rng, 12, F64)),
        "one head: hs = C": (x, 1, _weights(rng, 12, F64)),
        "12 heads: hs = 1": (x, 12, _weights(rng, 12, F64)),
        "no biases (GPTConfig(bias=False))": (x, 4, _weights(rng, 12, F64, bias=False)),
        "B = T = 1: a token sees only itself": (_normal(rng, (1, 1, 8)), 2, _weights(rng, 8)),
    }
    x, w = _normal(rng, (2, 10, 16)), _weights(rng, 16)
    cases["B=2, T=10, C=16, 4 heads"] = (x, 4, w)
    cases["the first 6 positions of that sequence: the later ones do not count"] = (x[:, :6].clone(), 4, w)
    cases["peaked attention weights"] = (x * 4, 4, w)
    for i in range(2):
        nh, hs = int(rng.integers(1, 5)), int(rng.integers(1, 7))
        dtype = F64 if rng.random() < 0.5 else F32
        shape = (int(rng.integers(1, 4)), int(rng.integers(1, 10)), nh * hs)
        cases[f"random shape and weights {i + 1}"] = (_normal(rng, shape, dtype), nh, _weights(rng, nh * hs, dtype))
    return cases


# Part 2: course_lib's schedule (the formula of nanoGPT's get_lr)

def _schedule_expected(warmup_steps, total_steps, rates, steps):
    return {step: float(warmup_cosine(step, warmup_steps, total_steps, *rates)) for step in steps}


def _schedule_cases(rng):
    cases = {
        "no warm-up: step 0 is already at the maximum": (0, 5, (1.0, 0.0), list(range(8))),
        "no warm-up: the first and the last step": (0, 5, (1.0, 0.0), [0, 5]),
        "warm-up to the end, then the floor: no cosine at all": (5, 5, (3e-4, 3e-5), list(range(9))),
        "warm-up to the end: its last step and the floor": (5, 5, (3e-4, 3e-5), [4, 5]),
        "total 1": (1, 1, (0.5, 0.1), list(range(4))),
        "no warm-up, total 1": (0, 1, (2.0, 0.0), list(range(3))),
        "min_lr = max_lr: flat after the warm-up": (3, 20, (1.0, 1.0), list(range(25))),
        "a longer schedule, every 7th step": (10, 110, (1e-3, 0.0), list(range(0, 130, 7))),
        "GPT-3's scale: 2000 warm-up steps of 600000": (2000, 600000, (6e-4, 6e-5),
                                                         [0, 1, 999, 1999, 2000, 2001, 100000, 301000, 599999,
                                                          600000, 10 ** 6]),
        "halfway through the decay": (100, 1000, (1.0, 0.1), [550]),
        "the defaults, no warm-up": (0, 10, (), [7]),
    }
    for i in range(2):
        warmup = int(rng.integers(0, 50))
        total = max(1, warmup + int(rng.integers(0, 300)))
        max_lr = float(rng.uniform(1e-4, 1e-2))
        rates = (max_lr, float(max_lr * rng.uniform(0, 1)))
        steps = sorted({int(s) for s in rng.integers(0, total + 30, size=20)} | {warmup, total})
        cases[f"a random schedule {i + 1}"] = (warmup, total, rates, steps)
    return cases


# Part 3: torch.topk (transformers' TopKLogitsWarper)

def _top_k_expected(logits, k):
    kth = torch.topk(logits, min(k, logits.shape[-1]), dim=-1).values[..., -1:]  # (..., 1)
    return logits.masked_fill(logits < kth, -INF)


def _top_k_cases(rng):
    t = torch.tensor
    cases = {
        "k = V keeps everything": (t([1.0, 3.0, 2.0]), 3),
        "k > V keeps everything too": (t([1.0, 3.0, 2.0]), 10),
        "three tied for first, k = 2": (t([[0.5, 2.0, 2.0, 2.0, 1.0]]), 2),
        "row by row": (t([[1.0, 3.0, 2.0], [5.0, 4.0, 6.0]]), 2),
        "two leading dimensions, float64": (_normal(rng, (2, 3, 50), F64), 5),
        "greedy: k = 1": (_normal(rng, (6, 65)), 1),
        "many ties": (torch.from_numpy(rng.integers(0, 4, (5, 12))).float(), 3),
        "a long row": (_normal(rng, (1000,)), 50),
    }
    x = _normal(rng, (3, 20))
    x[:, :5] = -INF
    cases["already filtered: -inf entries"] = (x, 4)
    cases["the k-th largest is -inf: everything stays"] = (x, 18)
    cases["random logits (4, 30)"] = (_normal(rng, (4, 30)), 7)
    for i in range(2):
        shape = tuple(int(n) for n in rng.integers(1, 6, size=int(rng.integers(0, 3)))) + (int(rng.integers(2, 40)),)
        dtype = F64 if rng.random() < 0.5 else F32
        cases[f"random shape and k {i + 1}"] = (_normal(rng, shape, dtype, 2.0), int(rng.integers(1, shape[-1] + 3)))
    return cases


# Part 4: transformers' TopPLogitsWarper, written out in torch for any number of leading dimensions

def _top_p_expected(logits, p):
    V = logits.shape[-1]
    scores = logits.reshape(-1, V)
    sorted_logits, sorted_indices = torch.sort(scores, descending=False)
    cumulative_probs = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    sorted_indices_to_remove = cumulative_probs <= (1 - p)
    sorted_indices_to_remove[..., -1:] = False
    indices_to_remove = sorted_indices_to_remove.scatter(1, sorted_indices, sorted_indices_to_remove)
    return scores.masked_fill(indices_to_remove, -INF).reshape(logits.shape)


def _clear(logits, p, margin=1e-4):
    """p is away from every cumulative sum but the last (rounding alone would decide there)."""
    if p >= 1:
        return True
    probs = torch.softmax(logits.double(), dim=-1).sort(dim=-1).values.cumsum(dim=-1)[..., :-1]
    return bool(((probs - (1 - p)).abs() > margin).all())


def _clear_logits(rng, shape, p, dtype=F32, scale=1.0, then=None):
    for _ in range(100):
        x = _normal(rng, shape, dtype, scale)
        if then is not None:
            x = then(x)
        if _clear(x, p):
            return x
    raise RuntimeError(f"no logits {shape} clear of p={p}")


def _top_p_cases(rng):
    probs = torch.tensor([0.5, 0.3, 0.2]).log()
    cases = {
        "probabilities [0.5, 0.3, 0.2], a small p: the likeliest stays": (probs, 0.1),
        "the same probabilities in another order": (probs[[2, 0, 1]], 0.7),
        "two leading dimensions, float64": (_clear_logits(rng, (2, 3, 40), 0.8, F64, 3.0), 0.8),
        "(8, 65) rows, p = 0.95": (_clear_logits(rng, (8, 65), 0.95), 0.95),
        "peaked rows: often one token or two": (_clear_logits(rng, (8, 65), 0.5, scale=5.0), 0.5),
        "nearly flat rows": (_clear_logits(rng, (5, 100), 0.3, scale=0.1), 0.3),
        "a long row": (_clear_logits(rng, (1000,), 0.9), 0.9),
        "after top-k, as generate filters: -inf entries stay -inf":
            (_clear_logits(rng, (4, 30), 0.8, then=lambda x: _top_k_expected(x, 10)), 0.8),
    }
    x = _normal(rng, (4, 30))
    cases["a tiny p: the likeliest token only"] = (x, 1e-6)
    cases["p so small that 1 - p rounds to 1 in float32"] = (x, 1e-9)
    cases["p so small that 1 - p rounds to 1, three probabilities"] = (probs, 1e-9)
    cases["p = 1 keeps everything"] = (x, 1.0)
    cases["random logits (4, 30)"] = (_clear_logits(rng, (4, 30), 0.85), 0.85)
    for i in range(2):
        shape = tuple(int(n) for n in rng.integers(1, 5, size=int(rng.integers(0, 3)))) + (int(rng.integers(2, 60)),)
        dtype = F64 if rng.random() < 0.5 else F32
        p = float(np.round(rng.uniform(0.05, 0.99), 3))
        cases[f"random shape and p {i + 1}"] = (_clear_logits(rng, shape, p, dtype, 2.0), p)
    return cases


# Part 5: F.linear and F.scaled_dot_product_attention on the cache; nn.MultiheadAttention token by token

def _project(x, n_head, w):
    """q, k, v of x (B, T, C), each (B, nh, T, hs)."""
    B, T, C = x.shape
    qkv = F.linear(x, w["c_attn.weight"], w.get("c_attn.bias"))
    return [z.reshape(B, T, n_head, C // n_head).transpose(1, 2).contiguous() for z in qkv.split(C, dim=2)]


def _step_expected(x, n_head, w, cache_k=None, cache_v=None):
    B, T, C = x.shape
    if cache_k is None:  # token by token: the causal forward at each position, and the keys and values so far
        full = _mha(x, n_head, w)
        _, k, v = _project(x, n_head, w)
        return [(full[:, t:t + 1], k[:, :, :t + 1], v[:, :, :t + 1]) for t in range(T)]
    q, k, v = _project(x, n_head, w)
    keys, values = torch.cat([cache_k, k], dim=2), torch.cat([cache_v, v], dim=2)
    y = F.scaled_dot_product_attention(q, keys, values)  # (B, nh, 1, hs): the newest sees every position
    y = F.linear(y.transpose(1, 2).reshape(B, T, C), w["c_proj.weight"], w.get("c_proj.bias"))
    return (y, keys, values)


def _after(x, P, n_head, w):
    """The case of x's token P after its first P tokens cached (a real prefix's keys and values)."""
    _, k, v = _project(x[:, :P], n_head, w)
    return (x[:, P:P + 1].clone(), n_head, w, k, v)


def _step_cases(rng):
    cases = {"the first token: an empty cache": _after(_normal(rng, (2, 6, 8)), 0, 2, _weights(rng, 8))}
    x = _normal(rng, (3, 9, 12), F64)
    w = _weights(rng, 12, F64)
    cases["float64: 8 cached positions, 3 heads"] = _after(x, 8, 3, w)
    cases["one cached position"] = _after(x, 1, 3, w)
    cases["one head: hs = C"] = _after(x, 4, 1, _weights(rng, 12, F64))
    cases["12 heads: hs = 1"] = _after(x, 4, 12, _weights(rng, 12, F64))
    cases["no biases (GPTConfig(bias=False))"] = _after(x, 6, 4, _weights(rng, 12, F64, bias=False))
    cases["peaked attention weights"] = _after(_normal(rng, (1, 4, 8), scale=4.0), 3, 2, _weights(rng, 8))
    cases["7 tokens one at a time from an empty cache, each step fed the last one's keys and values"] = \
        (_normal(rng, (2, 7, 8)), 2, _weights(rng, 8))
    for i in range(2):
        nh, hs = int(rng.integers(1, 5)), int(rng.integers(1, 7))
        dtype = F64 if rng.random() < 0.5 else F32
        P = int(rng.integers(0, 9))
        x = _normal(rng, (int(rng.integers(1, 4)), P + 1, nh * hs), dtype)
        cases[f"random shape, weights and prefix {i + 1}"] = _after(x, P, nh, _weights(rng, nh * hs, dtype))
    return cases


REFS = {
    "causal_self_attention": Ref(_mha, hidden=_attention_cases, rtol=1e-5, atol=1e-5),
    "warmup_cosine": Ref(_schedule_expected, hidden=_schedule_cases, rtol=1e-9, atol=1e-12),
    "top_k_filter": Ref(_top_k_expected, hidden=_top_k_cases, rtol=0, atol=0),
    "top_p_filter": Ref(_top_p_expected, hidden=_top_p_cases, rtol=0, atol=0),
    "kv_cache_step": Ref(_step_expected, hidden=_step_cases, rtol=1e-5, atol=1e-5),
}
