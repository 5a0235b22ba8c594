"""Exercise 7 (GPT): the graded parts and their visible cases.

No part builds on another one's code. Parts 1 and 5 are handed an attention layer: an
``nn.Module`` cannot cross as data, so a case carries its weights (a dict of tensors) and
``n_head``, and the call builds a ``course_lib.gpt.CausalSelfAttention`` from them without
running course_lib code (``forward`` stays the reference, which the guard switches off).
Part 5's caches are given as data (random ones here, a real prefix's on the grader side),
so it never depends on Part 1. The calls that take tensors check that the inputs were left
unchanged, as the old tests did.
"""

import math

import torch
import torch.nn as nn

from course_lib.gpt import CausalSelfAttention
from course_lib.grading.kernel import Part

ATTENTION_BUILT_INS = (
    ("torch.nn.functional", "scaled_dot_product_attention"),
    ("torch", "_C._nn.scaled_dot_product_attention"),
    ("torch.nn.functional", "multi_head_attention_forward"),
    ("torch.nn", "MultiheadAttention.forward"),
) + tuple(("torch", name) for name in dir(torch) if "scaled_dot_product" in name or "multi_head_attention" in name)
ATTENTION_WHY = "torch's attention kernels are switched off in this test: write the attention yourself"

try:  # transformers (preinstalled on Colab) has the filters as classes
    from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper  # noqa: F401

    TOP_K_WARPER = (("transformers.generation.logits_process", "TopKLogitsWarper.__call__"),)
    TOP_P_WARPER = (("transformers.generation.logits_process", "TopPLogitsWarper.__call__"),)
except Exception:  # noqa: BLE001 - absent or broken: nothing to switch off
    TOP_K_WARPER = TOP_P_WARPER = ()


def random_weights(C, seed, dtype=torch.float32, bias=True):
    """The weights of an attention layer of width C, every one random (seeded), as a dict of tensors."""
    g = torch.Generator().manual_seed(seed)
    shapes = {"c_attn.weight": (3 * C, C), "c_attn.bias": (3 * C,), "c_proj.weight": (C, C), "c_proj.bias": (C,)}
    return {name: torch.randn(shape, generator=g, dtype=dtype) / math.sqrt(C)
            for name, shape in shapes.items() if bias or name.endswith("weight")}


def identity_weights():
    """Part 1's hand-worked layer: C = 2, c_attn three identities stacked (q = k = v = x), c_proj the identity."""
    return {"c_attn.weight": torch.cat([torch.eye(2)] * 3), "c_attn.bias": torch.zeros(6),
            "c_proj.weight": torch.eye(2), "c_proj.bias": torch.zeros(2)}


def build_attn(n_head, weights):
    """A course_lib CausalSelfAttention holding ``weights``, built without running course_lib code."""
    C = weights["c_proj.weight"].shape[0]
    dtype = weights["c_proj.weight"].dtype
    bias = "c_attn.bias" in weights
    attn = CausalSelfAttention.__new__(CausalSelfAttention)
    nn.Module.__init__(attn)
    attn.n_head, attn.n_embd, attn.dropout, attn.layer = n_head, C, 0.0, 0
    attn.c_attn = nn.Linear(C, 3 * C, bias=bias, dtype=dtype)
    attn.c_proj = nn.Linear(C, C, bias=bias, dtype=dtype)
    attn.resid_dropout = nn.Dropout(0.0)
    with torch.no_grad():
        for name, value in weights.items():
            layer, kind = name.split(".")
            getattr(getattr(attn, layer), kind).copy_(value)
    return attn.eval()


def _unchanged(what, *pairs):
    for name, (tensor, before) in zip(what, pairs):
        if not torch.equal(tensor, before):
            raise AssertionError(f"it changed its input {name}: return new tensors and leave the inputs as they were "
                                 "(masked_fill and torch.cat, not masked_fill_ or writes into the input)")


def _attention(ns, x, n_head, weights):
    attn = build_attn(n_head, weights)
    with torch.no_grad():
        return ns["causal_self_attention"](x.clone(), attn)


def _schedule(ns, warmup_steps, total_steps, rates, steps):
    """{step: warmup_cosine at that step}; ``rates`` is (max_lr, min_lr), or () for the defaults."""
    return {step: ns["warmup_cosine"](step, warmup_steps, total_steps, *rates) for step in steps}


def _filter(function):
    def call(ns, logits, setting):
        before = logits.clone()
        result = ns[function](logits, setting)
        _unchanged(["logits"], (logits, before))
        return result
    return call


def _kv_step(ns, x, n_head, weights, cache_k=None, cache_v=None):
    """One step on a given cache; or, without one, x (B, T, C) fed token by token from an empty cache, each
    step handed the keys and values the previous one returned: the list of the T steps' (y, keys, values)."""
    attn = build_attn(n_head, weights)
    step = ns["kv_cache_step"]
    with torch.no_grad():
        if cache_k is not None:
            before = cache_k.clone(), cache_v.clone()
            result = step(x.clone(), attn, cache_k, cache_v)
            _unchanged(["cache_k", "cache_v"], (cache_k, before[0]), (cache_v, before[1]))
            return result
        B, T, C = x.shape
        keys = values = torch.zeros(B, n_head, 0, C // n_head, dtype=x.dtype)
        steps = []
        for t in range(T):
            result = step(x[:, t:t + 1].clone(), attn, keys, values)
            if type(result) is not tuple or len(result) != 3:
                raise TypeError(f"step {t}: expected a tuple (y, keys, values), got {type(result).__name__}")
            steps.append(result)
            keys, values = result[1], result[2]
        return steps


_g = torch.Generator().manual_seed(0)
_X = torch.randn(2, 5, 8, generator=_g)
_LOGITS = torch.randn(4, 10, generator=torch.Generator().manual_seed(0))
_PROBS = torch.tensor([0.5, 0.3, 0.2]).log()
_NEW = torch.randn(2, 1, 8, generator=_g)
_CACHE_K, _CACHE_V = torch.randn(2, 2, 5, 4, generator=_g), torch.randn(2, 2, 5, 4, generator=_g)
_t = torch.tensor

PARTS = {
    "causal_self_attention": Part("test_causal_self_attention", "causal_self_attention", {
        "the hand-worked example (q = k = v = x, one head)": (_t([[[1.0, 0.0], [0.0, 1.0]]]), 1, identity_weights()),
        "random weights: B=2, T=5, C=8, 2 heads": (_X, 2, random_weights(8, seed=0)),
    }, call=_attention, switched_off=ATTENTION_BUILT_INS, why=ATTENTION_WHY),
    "warmup_cosine": Part("test_warmup_cosine", "warmup_cosine", {
        "hand-worked: warm-up 1, total 3, steps 0 to 4": (1, 3, (1.0, 0.0), [0, 1, 2, 3, 4]),
        "hand-worked: warm-up 4, total 10, from 6e-4 to 6e-5": (4, 10, (6e-4, 6e-5), [0, 3, 4, 7, 10, 11]),
        "warm-up 4, total 10, steps 0 to 13": (4, 10, (6e-4, 6e-5), list(range(14))),
        "the defaults max_lr=1.0, min_lr=0.0: warmup_cosine(2, 1, 3)": (1, 3, (), [2]),
    }, call=_schedule),
    "top_k_filter": Part("test_top_k_filter", "top_k_filter", {
        "the two largest of three": (_t([1.0, 3.0, 2.0]), 2),
        "k = 1 keeps both entries tied for first": (_t([[1.0, 2.0, 2.0, 0.5]]), 1),
        "random logits (4, 10), k = 3": (_LOGITS, 3),
    }, call=_filter("top_k_filter"), switched_off=(("torch", "topk"), ("torch", "Tensor.topk")) + TOP_K_WARPER,
        why="torch.topk is switched off in this test: find the k-th largest with torch.sort"),
    "top_p_filter": Part("test_top_p_filter", "top_p_filter", {
        "probabilities [0.5, 0.3, 0.2], p = 0.7": (_PROBS, 0.7),
        "probabilities [0.5, 0.3, 0.2], p = 0.4": (_PROBS, 0.4),
        "probabilities [0.5, 0.3, 0.2], p = 1 keeps all": (_PROBS, 1.0),
        "random logits (4, 10), p = 0.9": (_LOGITS * 2, 0.9),
    }, call=_filter("top_p_filter"), switched_off=TOP_K_WARPER + TOP_P_WARPER,
        why="transformers' filters are switched off in this test: write the filter yourself"),
    "kv_cache_step": Part("test_kv_cache_step", "kv_cache_step", {
        "the hand-worked example: [1, 0] cached, the new token [0, 1]":
            (_t([[[0.0, 1.0]]]), 1, identity_weights(), _t([[[[1.0, 0.0]]]]), _t([[[[1.0, 0.0]]]])),
        "random weights: B=2, C=8, 2 heads, 5 cached positions":
            (_NEW, 2, random_weights(8, seed=0), _CACHE_K, _CACHE_V),
    }, call=_kv_step, switched_off=ATTENTION_BUILT_INS, why=ATTENTION_WHY),
}
