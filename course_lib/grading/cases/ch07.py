"""Exercise 7 (GPT): the graded parts and their visible cases.

No part builds on another one's code. A module cannot cross as data, so the calls build
what the graded code is handed from plain arguments:

- Part 1 (``gpt_logits``): a whole ``course_lib.gpt.GPT`` from its configuration (a dict of
  numbers) and a state dict, put together without running ``GPT``'s own code: the blocks,
  their layers and ``GPTConfig`` are exempt from the guard (the student calls the blocks),
  ``GPT.forward`` and ``GPT.hidden_states`` are not.
- Part 5 (``kv_cache_step``): an attention layer from its weights (a dict of tensors) and
  ``n_head``, built without running course_lib code (its ``forward`` stays the reference,
  which the guard switches off). The caches are given as data (random ones here, a real
  prefix's on the grader side). While it runs, the notebook's ``attention`` is chapter 6's
  ``course_lib.attention.scaled_dot_product_attention``, lent for the call: the part asks
  for the cache, not for the attention (Exercise 6 asks for that).
- Part 6 (``train_tiny_gpt``) trains. Its cases are plain numbers and text: the GPT's
  configuration, a slice of the training plays (``VOCAB`` turns it into ids), a seed and the
  held-out split the grader scores on. The call builds ``GPT(config)`` from the seed (its
  initial weights are the case's), lets the student's loop train it and hands out the state
  dict the loop returned, packed (``pack_state``: raw bytes, so that two cases fit in a test
  cell's output); the grader loads it into its own GPT of the same configuration and
  measures bits per character on held-out plays the loop never saw
  (``course_lib.grading.refs.ch07``). The model's code is exempt from the guard (the student
  calls it; it is not the graded work), ``warmup_cosine`` is course_lib's for the call, and
  the call counts every call of the model made with gradients on (a step) and the tokens it
  read: past the budget (``MAX_STEPS``, ``MAX_TOKENS``) the model refuses to run.

The calls that take tensors check that the inputs were left unchanged, as the old tests did.
"""

import base64
import math
from collections.abc import Mapping

import torch
import torch.nn as nn

from course_lib import attention as _attn
from course_lib import checks as _checks
from course_lib import data
from course_lib import gpt as _gpt
from course_lib import neural_lm as _nlm
from course_lib import train as _train
from course_lib.gpt import CausalSelfAttention
from course_lib.grading.kernel import Part, lend

ATTENTION_BUILT_INS = (
    ("torch.nn.functional", "scaled_dot_product_attention"),
    ("torch", "_C._nn.scaled_dot_product_attention"),
    ("torch.nn.functional", "multi_head_attention_forward"),
    ("torch.nn", "MultiheadAttention.forward"),
) + tuple(("torch", name) for name in dir(torch) if "scaled_dot_product" in name or "multi_head_attention" in name)
ATTENTION_WHY = ("torch's attention kernels are switched off in this test: call attention(q, k, v), chapter 6's, "
                 "lent by the test")

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
    """Part 5's hand-worked layer: C = 2, c_attn three identities stacked (q = k = v = x), c_proj the identity."""
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


# ---------------------------------------------------------------- Part 1: gpt_logits
def gpt_shapes(config):
    """name -> shape of the state dict of a course_lib GPT of ``config`` (a dict of numbers)."""
    V, T, L, C = config["vocab_size"], config["block_size"], config["n_layer"], config["n_embd"]
    bias = config.get("bias", True)
    shapes = {"transformer.wte.weight": (V, C), "transformer.wpe.weight": (T, C)}
    for i in range(L):
        block = {"ln_1.weight": (C,), "ln_1.bias": (C,), "attn.c_attn.weight": (3 * C, C), "attn.c_attn.bias": (3 * C,),
                 "attn.c_proj.weight": (C, C), "attn.c_proj.bias": (C,), "ln_2.weight": (C,), "ln_2.bias": (C,),
                 "mlp.c_fc.weight": (4 * C, C), "mlp.c_fc.bias": (4 * C,), "mlp.c_proj.weight": (C, 4 * C),
                 "mlp.c_proj.bias": (C,)}
        shapes.update({f"transformer.h.{i}.{k}": v for k, v in block.items() if bias or k.endswith("weight")})
    shapes["transformer.ln_f.weight"] = (C,)
    if bias:
        shapes["transformer.ln_f.bias"] = (C,)
    shapes["lm_head.weight"] = (V, C)
    return shapes


def gpt_state(config, seed, dtype=torch.float32, scale=1.0):
    """A state dict for a GPT of ``config``, every parameter random (seeded); the output layer is the token
    table (tied). LayerNorm gains near 1, matrices of the scale of 1 / sqrt(fan-in) (times ``scale``)."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for name, shape in gpt_shapes(config).items():
        if name == "lm_head.weight":
            state[name] = state["transformer.wte.weight"]
        elif ".ln_" in name and name.endswith("weight"):
            state[name] = 1 + 0.3 * torch.randn(shape, generator=g, dtype=dtype)
        elif name.endswith("bias"):
            state[name] = 0.3 * torch.randn(shape, generator=g, dtype=dtype)
        else:
            fan_in = shape[1] if name.startswith("transformer.h.") else 1
            state[name] = torch.randn(shape, generator=g, dtype=dtype) * scale / math.sqrt(fan_in)
    return state


def build_gpt(config, state):
    """A course_lib GPT of ``config`` holding ``state``, in eval mode, put together without running
    ``GPT.__init__`` (so that ``GPT``'s methods stay switched off): the tables, the blocks, ln_f, the
    tied output layer."""
    c = _gpt.GPTConfig(**config)
    dtype = state["transformer.wte.weight"].dtype
    model = _gpt.GPT.__new__(_gpt.GPT)
    nn.Module.__init__(model)
    model.config = c
    model.transformer = nn.ModuleDict(dict(
        wte=nn.Embedding(c.vocab_size, c.n_embd), wpe=nn.Embedding(c.block_size, c.n_embd), drop=nn.Dropout(0.0),
        h=nn.ModuleList([_gpt.Block(c, layer) for layer in range(c.n_layer)]), ln_f=_gpt.LayerNorm(c.n_embd, c.bias)))
    model.lm_head = nn.Linear(c.n_embd, c.vocab_size, bias=False)
    model.transformer.wte.weight = model.lm_head.weight  # tied, as in GPT
    model.to(dtype)
    with torch.no_grad():
        model.load_state_dict(state)
    return model.eval()


def _gpt_logits(ns, idx, config, state):
    model = build_gpt(config, state)
    before = idx.clone()
    with torch.no_grad():
        result = ns["gpt_logits"](idx, model)
    _unchanged(["idx"], (idx, before))
    return result


def _gpt_exempt():
    """What building the GPT and running its blocks take in course_lib (not GPT's own methods)."""
    return (_gpt.GPTConfig, _gpt.Block, _gpt.CausalSelfAttention, _gpt.MLP, _gpt.LayerNorm, _gpt._check_config,
            _checks._check_positive_int)


def _silent_blocks():
    """Part 1's hand-worked model: V = 3, T = 2, C = 2, one block whose two projections into the residual stream
    are zero (the block adds nothing), the final LayerNorm the plain one."""
    config = {"vocab_size": 3, "block_size": 2, "n_layer": 1, "n_head": 1, "n_embd": 2}
    state = gpt_state(config, seed=0)
    for name in ("transformer.h.0.attn.c_proj.weight", "transformer.h.0.attn.c_proj.bias",
                 "transformer.h.0.mlp.c_proj.weight", "transformer.h.0.mlp.c_proj.bias", "transformer.ln_f.bias"):
        state[name] = torch.zeros_like(state[name])
    state["transformer.ln_f.weight"] = torch.ones(2)
    state["transformer.wte.weight"] = state["lm_head.weight"] = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    state["transformer.wpe.weight"] = torch.tensor([[0.0, 0.0], [2.0, 0.0]])
    return config, state


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
    step handed the keys and values the previous one returned: the list of the T steps' (y, keys, values).
    The notebook's ``attention`` is chapter 6's reference for the time of the call."""
    attn = build_attn(n_head, weights)
    step = ns["kv_cache_step"]
    with torch.no_grad(), lend(ns, attention=_attn.scaled_dot_product_attention):
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


def _kv_exempt():
    """The lent attention and what it calls."""
    return (_attn.scaled_dot_product_attention, _attn._check_mask, _attn._shape)


# ---------------------------------------------------------------- Part 6: train_tiny_gpt
VOCAB = "\n !\"$&',-.0123456789:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz\u2014"  # the plays
TINY_GPT = {"vocab_size": len(VOCAB), "block_size": 32, "n_layer": 1, "n_head": 2, "n_embd": 32}
MAX_STEPS = 300  # calls of the model with gradients on
MAX_TOKENS = 300 * 64 * 32  # tokens those calls read: 300 steps of 64 windows of 32 characters
TRAIN_CHARS = 200_000  # characters of training text per case


def encode(text):
    """The ids (1-D long tensor) of ``text`` in ``VOCAB``."""
    index = {c: i for i, c in enumerate(VOCAB)}
    return torch.tensor([index[c] for c in text], dtype=torch.long)


def training_text(start, length=TRAIN_CHARS):
    """``length`` characters of the training plays (joined by a line break) from character ``start`` on."""
    text = "\n".join(p.text for p in data.load_split("train"))
    if start + length > len(text):
        raise ValueError(f"the training plays hold {len(text)} characters, fewer than {start} + {length}")
    return text[start:start + length]


class BudgetSpent(RuntimeError):
    pass


def _train_gpt(ns, config, text, seed, held_out):
    """train_tiny_gpt(model, train_ids, seed) on a fresh GPT built from the case's configuration and seed;
    the state dict it returned, as a dict. ``held_out`` (the plays the grader scores) is not handed over."""
    torch.manual_seed(seed)
    model = _gpt.GPT(_gpt.GPTConfig(**config))
    spent = {"steps": 0, "tokens": 0}

    def count(module, args):
        if torch.is_grad_enabled():
            spent["steps"] += 1
            spent["tokens"] += args[0].numel() if args and isinstance(args[0], torch.Tensor) else 0
            if spent["steps"] > MAX_STEPS or spent["tokens"] > MAX_TOKENS:
                raise BudgetSpent(f"the budget is spent: this is call {spent['steps']} of the model with gradients "
                                  f"on, and {spent['tokens']:,} tokens read; the budget is {MAX_STEPS} calls and "
                                  f"{MAX_TOKENS:,} tokens (a call under torch.no_grad() does not count)")

    hook = model.register_forward_pre_hook(count)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a model this small runs fastest on one thread (and threads spin on a busy machine)
    try:
        with lend(ns, warmup_cosine=_train.warmup_cosine):
            returned = ns["train_tiny_gpt"](model, encode(text), seed)
    finally:
        torch.set_num_threads(threads)
        hook.remove()
    if isinstance(returned, Mapping):  # model.state_dict(), an OrderedDict
        return pack_state(returned)
    return returned


def pack_state(state) -> dict:
    """A state dict as small plain data (a test cell keeps 256 KB of output; the numbers as JSON text would take
    about 400 KB): name -> [dtype, shape, the raw bytes in base64], or ["same", an earlier name] for a tensor
    held in the same memory as an earlier one (the output layer tied to the token table), or ["not a tensor",
    its type]."""
    out, kept = {}, {}
    for name, t in state.items():
        name = name if isinstance(name, str) else repr(name)
        if type(t) is not torch.Tensor and type(t) is not nn.Parameter:
            out[name] = ["not a tensor", type(t).__name__]
            continue
        # the same memory, not equal values (a comparison can be replaced by the code under test)
        where = (str(t.device), t.data_ptr(), str(t.dtype), tuple(t.shape), tuple(t.stride()))
        if where in kept:
            out[name] = ["same", kept[where]]
            continue
        kept[where] = name
        t = t.detach().cpu().contiguous()
        if t.dtype not in (torch.float32, torch.float64, torch.float16, torch.int64):
            out[name] = [str(t.dtype), list(t.shape), None]
        else:
            out[name] = [str(t.dtype), list(t.shape), base64.b64encode(t.numpy().tobytes()).decode("ascii")]
    return out


def _train_exempt():
    """What the call and the student's loop run in course_lib: the model, its config and its loss, and the
    lent schedule."""
    return _gpt_exempt() + (_gpt.GPT, _gpt.KVCache, _nlm._check_idx, _nlm._check_targets, _nlm._loss,
                            _train.warmup_cosine, _train._check_schedule)


_g = torch.Generator().manual_seed(0)
_X = torch.randn(2, 5, 8, generator=_g)  # drawn first, as before, so that the cases after it keep their values
_LOGITS = torch.randn(4, 10, generator=torch.Generator().manual_seed(0))
_PROBS = torch.tensor([0.5, 0.3, 0.2]).log()
_NEW = torch.randn(2, 1, 8, generator=_g)
_CACHE_K, _CACHE_V = torch.randn(2, 2, 5, 4, generator=_g), torch.randn(2, 2, 5, 4, generator=_g)
_t = torch.tensor
_G1 = {"vocab_size": 11, "block_size": 8, "n_layer": 1, "n_head": 2, "n_embd": 8}
_G2 = {"vocab_size": 11, "block_size": 6, "n_layer": 2, "n_head": 2, "n_embd": 8}

PARTS = {
    "gpt_logits": Part("test_gpt_logits", "gpt_logits", {
        "the hand-worked example: a block that adds nothing, V = 3, T = 2, C = 2":
            (torch.tensor([[1, 2]]), *_silent_blocks()),
        "one block, V = 11, C = 8, 2 heads: 2 sequences of 5":
            (torch.randint(11, (2, 5), generator=torch.Generator().manual_seed(0)), _G1, gpt_state(_G1, seed=0)),
        "two blocks, the whole block_size": (torch.randint(11, (3, 6), generator=torch.Generator().manual_seed(1)),
                                             _G2, gpt_state(_G2, seed=1)),
    }, call=_gpt_logits, exempt=_gpt_exempt),
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
    }, call=_kv_step, exempt=_kv_exempt, switched_off=ATTENTION_BUILT_INS, why=ATTENTION_WHY),
    "train_tiny_gpt": Part("test_train_tiny_gpt", "train_tiny_gpt", {
        f"the first {TRAIN_CHARS:,} characters of the training plays, seed 0": (TINY_GPT, training_text(0), 0, "valid"),
    }, call=_train_gpt, exempt=_train_exempt),
}
