"""Exercise 3: expected values and the hidden cases.

softmax and cross_entropy: torch's own (``torch.softmax``, ``F.cross_entropy``), as the old
tests used. bigram_grad: ``W.grad`` after ``loss.backward()`` on the chapter's ``BigramNet``;
mlp_forward: the chapter's ``MLPLanguageModel`` holding the same weights;
negative_sampling_loss: ``course_lib.embeddings.negative_sampling_loss`` (course_lib's
references, as the old tests used). Hidden inputs are drawn with the grading seed's numpy
generator.

train_lm is graded by what the returned parameters do, not by their values: loaded into the
chapter's ``MLPLanguageModel`` of the case's sizes, they must predict held-out text (the
first 30,000 characters of each validation play for the visible cases, of each test play
for the hidden ones; every character with ``context`` characters before it in its play) at
no more than ``TARGET_BPC`` bits per character. Measured for the budget of the cases (80
steps; MLP k = 3, C = 8, H = 64 and the hidden cases' sizes; 40,000 training characters of
four plays), on the validation plays (the test plays give the same within 0.04):

    untrained (the seeded initial weights)                    5.2 bits per character
    the output bias set to the characters' frequencies        4.4 (a model that ignores the context)
    counted bigram, add-0.1                                   3.58
    20 steps of AdamW, lr 2e-2                                3.69 - 3.78
    80 steps of AdamW, lr 1e-3 (the optimizer's default)      4.13 - 4.26
    80 steps of AdamW, lr 3e-3                                3.70 - 3.82
    80 steps of AdamW, lr 1e-2                                3.41 - 3.47
    80 steps of AdamW, lr 2e-2, 32 windows of 32 characters   3.30 - 3.34 (the solution; test plays 3.31 - 3.38)
    80 steps of AdamW, lr 3e-2                                3.28 - 3.33

The solution trains a case in 0.6 s, measured on a 2-core machine loaded about five times
over (one thread); an idle CPU is faster. So the target, 3.5, needs a loop that learns to use the context within
the budget, with a learning rate near the valley of the chapter's sweep; the solution
clears it by 0.12 or more on every case.
"""

import functools
import math

import torch
import torch.nn.functional as F

from course_lib import data
from course_lib.embeddings import negative_sampling_loss as _reference_loss
from course_lib.grading import compare
from course_lib.grading.cases.ch03 import STEPS, TINY_MLP, encode, mlp_config, training_text
from course_lib.grading.plain import Tensor, to_torch
from course_lib.grading.verdict import Ref
from course_lib.neural_lm import BigramNet, MLPConfig, MLPLanguageModel

TARGET_BPC = 3.5  # bits per character on held-out text, at most; the exercise states it
HELD_OUT_CHARS = 30_000  # characters scored of each held-out play
FLOATS = ("torch.float32", "torch.float64", "torch.float16", "torch.bfloat16")  # loaded into the float32 model


def _randn(rng, *shape, dtype=torch.float32, scale=1.0):
    return torch.tensor(rng.standard_normal(shape) * scale, dtype=dtype)


def _randint(rng, high, *shape):
    return torch.tensor(rng.integers(0, high, size=shape), dtype=torch.long)


def _dtype(rng):
    return torch.float64 if rng.random() < 0.5 else torch.float32


def _short(dtype):
    return str(dtype).removeprefix("torch.")


# ---------------------------------------------------------------- Part 1
def _softmax_expected(logits):
    return torch.softmax(logits, dim=-1)


def _softmax_cases(rng):
    cases = {
        "float64 stays float64": (_randn(rng, 3, 7, dtype=torch.float64, scale=50),),
        "two leading dimensions": (_randn(rng, 2, 3, 4),),
        "extreme logits": (_randn(rng, 6, 9, scale=1000),),
        "huge logits, a tie at the maximum": (torch.tensor([[3.0e4, -3.0e4, 0.0, 3.0e4]]),),
        "all logits equal and very negative": (torch.full((2, 6), -1.0e3),),
        "one class": (_randn(rng, 5, 1),),
    }
    for i in range(3):
        shape = tuple(int(n) for n in rng.integers(1, 7, size=int(rng.integers(1, 4))))
        dtype = _dtype(rng)
        cases[f"random shape {i + 1} ({len(shape)} dims, {_short(dtype)})"] = (
            _randn(rng, *shape, dtype=dtype, scale=float(rng.choice([1.0, 10.0, 100.0]))),)
    return cases


# ---------------------------------------------------------------- Part 2
def _cross_entropy_expected(logits, targets):
    return F.cross_entropy(logits, targets)


def _cross_entropy_cases(rng):
    cases = {
        "float64 stays float64": (_randn(rng, 8, 11, dtype=torch.float64), _randint(rng, 11, 8)),
        "extreme logits": (_randn(rng, 16, 3, scale=1000), _randint(rng, 3, 16)),
        "huge logits of both signs": (torch.tensor([[1.0e4, -1.0e4], [-1.0e4, 1.0e4]]), torch.tensor([0, 0])),
        "every e^x underflows": (torch.tensor([[-1000.0, -1000.0, -3000.0]]), torch.tensor([2])),
        "one class": (_randn(rng, 3, 1), torch.zeros(3, dtype=torch.long)),
        "a batch of 64 over 27 classes": (_randn(rng, 64, 27, scale=3), _randint(rng, 27, 64)),
    }
    for i in range(2):
        n, v, dtype = int(rng.integers(1, 20)), int(rng.integers(2, 30)), _dtype(rng)
        cases[f"random batch {i + 1} ({_short(dtype)})"] = (_randn(rng, n, v, dtype=dtype, scale=5),
                                                            _randint(rng, v, n))
    return cases


# ---------------------------------------------------------------- Part 3
def _bigram_grad_expected(W, idx, targets):
    model = BigramNet(W.shape[0]).to(W.dtype)
    with torch.no_grad():
        model.W.copy_(W)
    _, loss = model(idx[None, :], targets[None, :])  # (1, N): one sequence of N pairs
    loss.backward()
    return model.W.grad.detach().clone()


def _bigram_grad_cases(rng):
    cases = {
        "a larger vocabulary, many pairs": (_randn(rng, 27, 27), _randint(rng, 27, 200), _randint(rng, 27, 200)),
        "float64 stays float64": (_randn(rng, 6, 6, dtype=torch.float64), _randint(rng, 6, 10), _randint(rng, 6, 10)),
        "one row used by every example": (_randn(rng, 4, 4), torch.full((7,), 2), _randint(rng, 4, 7)),
        "saturated rows": (_randn(rng, 8, 8, scale=1000), _randint(rng, 8, 12), _randint(rng, 8, 12)),
        "a single example": (_randn(rng, 3, 3), torch.tensor([1]), torch.tensor([2])),
    }
    for i in range(2):
        v, n, dtype = int(rng.integers(2, 12)), int(rng.integers(1, 30)), _dtype(rng)
        cases[f"random {i + 1} ({_short(dtype)})"] = (_randn(rng, v, v, dtype=dtype), _randint(rng, v, n),
                                                        _randint(rng, v, n))
    return cases


# ---------------------------------------------------------------- Part 4
def _mlp_expected(idx, emb, W1, b1, W2, b2):
    (V, C), k = emb.shape, idx.shape[1]
    model = MLPLanguageModel(MLPConfig(vocab_size=V, context=k, n_embd=C, n_hidden=W1.shape[1])).to(emb.dtype)
    with torch.no_grad():
        model.wte.weight[:V] = emb  # row V (padding) is never looked up at the last position
        model.hidden.weight.copy_(W1.T)  # nn.Linear stores (out, in)
        model.hidden.bias.copy_(b1)
        model.lm_head.weight.copy_(W2.T)
        model.lm_head.bias.copy_(b2)
        logits, _ = model(idx)  # (B, k, V): position t sees k-1-t paddings, then idx[:, :t+1]
    return logits[:, -1].clone()  # (B, V): the whole window, no padding


def _weights(rng, V, k, C, H, dtype=torch.float32, scale=1.0):
    return tuple(_randn(rng, *shape, dtype=dtype, scale=scale) for shape in [(V, C), (k * C, H), (H,), (H, V), (V,)])


def _mlp_cases(rng):
    cases = {
        "the worked example's weights, another window": (torch.tensor([[1, 0]]), *TINY_MLP),
        "a larger batch and model": (_randint(rng, 27, 32, 3), *_weights(rng, V=27, k=3, C=10, H=64)),
        "float64 stays float64": (_randint(rng, 7, 4, 5), *_weights(rng, V=7, k=5, C=3, H=6, dtype=torch.float64)),
        "k = 1": (_randint(rng, 5, 6, 1), *_weights(rng, V=5, k=1, C=2, H=3)),
        "one window, saturated hidden units": (torch.tensor([[2, 2, 2, 0]]),
                                               *_weights(rng, V=3, k=4, C=2, H=5, scale=3.0)),
    }
    for i in range(2):
        V, k, C, H, B = (int(n) for n in rng.integers(1, 9, size=5))
        V, dtype = V + 1, _dtype(rng)
        cases[f"random sizes {i + 1} ({_short(dtype)})"] = (_randint(rng, V, B, k), *_weights(rng, V, k, C, H, dtype))
    return cases


# ---------------------------------------------------------------- Part 5
def _loss_expected(center, context, negatives):
    return _reference_loss(center, context, negatives)


def _vectors(rng, B, K, C, scale=1.0, dtype=torch.float32):
    return tuple(_randn(rng, *shape, dtype=dtype, scale=scale) for shape in [(B, C), (B, C), (B, K, C)])


def _loss_cases(rng):
    cases = {
        "a confident, correct pair": (torch.tensor([[10.0]]), torch.tensor([[30.0]]), torch.tensor([[[-30.0]]])),
        "dot products in the hundreds": _vectors(rng, B=8, K=5, C=16, scale=10.0),
        "float64 stays float64": _vectors(rng, B=6, K=2, C=3, dtype=torch.float64),
        "one pair, one noise word": _vectors(rng, B=1, K=1, C=7),
        "small vectors, K = 15": _vectors(rng, B=32, K=15, C=8, scale=0.1),
    }
    for i in range(2):
        B, K, C = (int(n) for n in rng.integers(1, 10, size=3))
        dtype = _dtype(rng)
        cases[f"random sizes {i + 1} ({_short(dtype)})"] = _vectors(rng, B, K, C, scale=float(rng.choice([1.0, 20.0])),
                                                                    dtype=dtype)
    return cases


# ---------------------------------------------------------------- Part 5
@functools.lru_cache(maxsize=None)
def held_out_ids(split):
    """The first HELD_OUT_CHARS ids of each play of ``split`` ("valid" or "test")."""
    return tuple(encode(p.text)[:HELD_OUT_CHARS] for p in data.load_split(split))


def held_out_bits(sizes, params, split):
    """Bits per character of the MLP of ``sizes`` holding ``params`` (name -> tensor) on the held-out
    plays: every character with ``context`` characters before it in its play, scored from them."""
    model = MLPLanguageModel(mlp_config(sizes))
    model.load_state_dict(params)
    model.eval()
    k, nats, count = sizes["context"], 0.0, 0
    with torch.no_grad():
        for ids in held_out_ids(split):
            windows = ids.unfold(0, k + 1, 1)  # (N, k + 1): k characters, then the one to predict
            for chunk in windows.split(8192):
                logits, _ = model(chunk[:, :-1])  # (n, k, V): the last position has the whole window
                nats += F.cross_entropy(logits[:, -1].double(), chunk[:, -1], reduction="sum").item()
                count += len(chunk)
    return nats / count / math.log(2)


def _train_expected(sizes, train_ids, steps, seed, held_out):
    return TARGET_BPC


def _train_compare(result, expected, args):
    """The returned parameters, loaded into the reference MLP, predict held-out text at <= the target."""
    sizes, held_out = args[0], args[4]
    shapes = {name: tuple(p.shape) for name, p in MLPLanguageModel(mlp_config(sizes)).state_dict().items()}
    if type(result) is not dict:
        return compare.Mismatch("type", "train_lm should return the trained model's state_dict(), a dict of "
                                        f"tensors; got {compare._kind(result)}")
    if set(result) != set(shapes):
        return compare.Mismatch("keys", f"expected the model's parameters {sorted(shapes)}, "
                                        f"got {sorted(map(str, result))[:10]}")
    params = {}
    for name, shape in shapes.items():
        value = result[name]
        if not isinstance(value, Tensor) or value.dtype not in FLOATS:
            return compare.Mismatch("type", f"{name}: expected a float tensor, got {compare._kind(value)}")
        if value.shape != shape:
            return compare.Mismatch("shape", f"{name}: expected shape {shape}, got {value.shape}")
        if not all(math.isfinite(v) for v in value.values):
            return compare.Mismatch("value", f"{name} holds nan or inf: the training diverged")
        params[name] = to_torch(value)
    bits = held_out_bits(sizes, params, held_out)
    if not bits <= expected:
        plays = {"valid": "validation", "test": "test"}.get(held_out, held_out)
        return compare.Mismatch("value", f"the trained model predicts the held-out text (the {plays} plays) at "
                                         f"{bits:.3f} bits per character; the target is at most {expected:g}")
    return None


def _train_cases(rng):
    """Other training plays, slices, seeds and sizes; scored on the test plays."""
    cases = {}
    for sizes in ({"context": 4, "n_embd": 8, "n_hidden": 48}, {"context": 3, "n_embd": 10, "n_hidden": 64}):
        play = int(rng.integers(3, 30))
        start = int(rng.integers(0, 20_000))
        seed = int(rng.integers(2 ** 31))
        cases[f"another play and seed, k = {sizes['context']}, H = {sizes['n_hidden']}"] = (
            sizes, training_text(play, start), STEPS, seed, "test")
    return cases


REFS = {
    "softmax": Ref(_softmax_expected, hidden=_softmax_cases, rtol=1e-5, atol=1e-6),
    "cross_entropy": Ref(_cross_entropy_expected, hidden=_cross_entropy_cases, rtol=1e-5, atol=1e-6),
    "bigram_grad": Ref(_bigram_grad_expected, hidden=_bigram_grad_cases, rtol=1e-5, atol=1e-6),
    "mlp_forward": Ref(_mlp_expected, hidden=_mlp_cases, rtol=1e-5, atol=1e-5),
    "train_lm": Ref(_train_expected, hidden=_train_cases, compare=_train_compare),
    "negative_sampling_loss": Ref(_loss_expected, hidden=_loss_cases, rtol=1e-5, atol=1e-6),
}
