"""Exercise 3 (neural language models): the graded parts and their visible cases.

Part 3 (``bigram_grad``) may call the student's ``softmax`` of Part 1 by name. So that a
bug in Part 1 costs Part 1 only, its call lends the notebook torch's softmax under that
name for the time of the call and puts the student's back after (torch's softmax is
switched off in Parts 1 and 2, so the lent one is no shortcut there). The call also fails
the case if ``bigram_grad`` changed W.

Part 5 (``train_lm``) trains. Its cases are plain numbers and text: the MLP's sizes, the
ids of a training text (a slice of a training play, lowercased and read with ``ALPHABET``),
a step budget and a seed. The call builds the chapter's ``MLPLanguageModel`` from them
(seeded, so its initial weights are the case's), lets the student's loop train it, and
hands out the parameters the loop returned; the grader loads them into its own copy of the
model and measures bits per character on held-out plays the loop never saw
(``course_lib.grading.refs.ch03``). The model's code is exempt from the guard for the
call (the student calls it; it is not the graded work), and the call counts how often a
gradient reaches the model's parameters: more than the budget fails the case.
"""

import math
from collections.abc import Mapping

import torch

from course_lib import data
from course_lib import neural_lm as _nlm
from course_lib.grading.kernel import Part, lend

# the softmax and log-sum-exp family, wherever torch has a form of it: torch.softmax, torch._softmax (what
# it calls), x.softmax(...), torch.special.softmax, ...; torch.logaddexp(2) reduce a row pairwise
SOFTMAX_NAMES = ("softmax", "log_softmax", "logsumexp", "_softmax", "_log_softmax", "logaddexp", "logaddexp2")
SOFTMAX_FAMILY = tuple((module, f"{prefix}{name}")
                       for module, owner, prefix in (("torch", torch, ""), ("torch", torch.Tensor, "Tensor."),
                                                     ("torch.special", torch.special, ""))
                       for name in SOFTMAX_NAMES if hasattr(owner, name))
CROSS_ENTROPY_BUILT_INS = SOFTMAX_FAMILY + (("torch", "_C._nn.cross_entropy_loss"),)  # F.cross_entropy calls it
SOFTMAX_WHY = ("torch's softmax, log_softmax, logsumexp and logaddexp (and their private and method forms) are "
               "switched off in this test")
AUTOGRAD = (("torch", "Tensor.backward"), ("torch.autograd", "backward"), ("torch.autograd", "grad"))
STABLE_BUILT_INS = (("torch.nn.functional", "logsigmoid"), ("torch", "_C._nn.log_sigmoid"),
                    ("torch.nn.functional", "softplus"), ("torch", "_C._nn.softplus"),
                    ("torch", "logaddexp"), ("torch", "Tensor.logaddexp"),
                    ("torch", "binary_cross_entropy_with_logits"),
                    ("torch.nn.functional", "binary_cross_entropy_with_logits"))


def _lent_softmax(logits):
    return torch.softmax(logits, dim=-1)


def _bigram_grad(ns, W, idx, targets):
    before = W.clone()
    with lend(ns, softmax=_lent_softmax), torch.no_grad():
        result = ns["bigram_grad"](W, idx, targets)
    if not torch.equal(W, before):
        raise AssertionError("bigram_grad changed W: return a new tensor and leave W as it was")
    return result


def _generator(seed):
    return torch.Generator().manual_seed(seed)


def random_weights(V, k, C, H, seed, dtype=torch.float32, scale=1.0):
    """emb (V, C), W1 (k*C, H), b1 (H,), W2 (H, V), b2 (V,), seeded."""
    g = _generator(seed)
    return tuple(torch.randn(*shape, generator=g, dtype=dtype) * scale
                 for shape in [(V, C), (k * C, H), (H,), (H, V), (V,)])


def random_vectors(B, K, C, seed, scale=1.0, dtype=torch.float32):
    """center (B, C), context (B, C), negatives (B, K, C), seeded."""
    g = _generator(seed)
    return tuple(torch.randn(*shape, generator=g, dtype=dtype) * scale for shape in [(B, C), (B, C), (B, K, C)])


# the worked example of Part 4: x = [1, -1], h = tanh(0.5), logits = [h, -h]
TINY_MLP = (torch.tensor([[1.0], [-1.0]]), torch.tensor([[0.5], [0.0]]), torch.tensor([0.0]),
            torch.tensor([[1.0, -1.0]]), torch.tensor([0.0, 0.0]))

# ---------------------------------------------------------------- Part 5: a training loop
ALPHABET = "\n !',-.:;?abcdefghijklmnopqrstuvwxyz"  # the text is lowercased; other characters are dropped
TRAIN_CHARS = 40_000  # characters of training text per case
STEPS = 80  # the step budget: gradient computations per case
MLP_SIZES = {"context": 3, "n_embd": 8, "n_hidden": 64}


def encode(text):
    """The ids (1-D long tensor) of ``text``, lowercased, in ``ALPHABET``; other characters dropped."""
    index = {c: i for i, c in enumerate(ALPHABET)}
    return torch.tensor([index[c] for c in text.lower() if c in index], dtype=torch.long)


def training_text(play, start, length=TRAIN_CHARS):
    """``length`` ids of training play number ``play`` (in ``data.load_split("train")``) from id ``start`` on."""
    ids = encode(data.load_split("train")[play].text)
    if start + length > len(ids):
        raise ValueError(f"training play {play} has {len(ids)} characters, fewer than {start} + {length}")
    return ids[start:start + length].clone()


def mlp_config(sizes):
    """The case's MLPConfig: the vocabulary is ALPHABET, the sizes come from the case."""
    return _nlm.MLPConfig(vocab_size=len(ALPHABET), **sizes)


def _train_lm(ns, sizes, train_ids, steps, seed, held_out):
    """train_lm(model, train_ids, steps, seed) on a fresh MLP built from the case's sizes and seed; the
    parameters it returned, as a dict. ``held_out`` (the plays the grader scores) is not handed over."""
    torch.manual_seed(seed)
    model = _nlm.MLPLanguageModel(mlp_config(sizes))
    computed = {name: 0 for name, _ in model.named_parameters()}

    def counter(name):
        def count(grad):
            computed[name] += 1
        return count

    hooks = [p.register_hook(counter(name)) for name, p in model.named_parameters()]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model: one thread is fastest, and much faster on a busy machine
    try:
        returned = ns["train_lm"](model, train_ids.clone(), steps, seed)
    finally:
        torch.set_num_threads(threads)
        for hook in hooks:
            hook.remove()
    most = max(computed.values())
    if most > steps:
        raise AssertionError(f"train_lm computed the gradient {most} times; the budget is {steps} steps "
                             "(one backward pass per step)")
    if isinstance(returned, Mapping) and type(returned) is not dict:  # model.state_dict() is an OrderedDict
        returned = dict(returned.items())
    return returned


def _train_lm_exempt():
    """What the call and the student's loop run in course_lib: the model, its config and its loss."""
    return (_nlm.MLPLanguageModel, _nlm.MLPConfig, _nlm._check_idx, _nlm._check_targets, _nlm._loss)


_g = _generator(0)
_CE_LOGITS = torch.randn(6, 5, generator=_g)
_CE_TARGETS = torch.randint(0, 5, (6,), generator=_g)
_MLP_IDX = torch.randint(0, 6, (5, 3), generator=_generator(0))

PARTS = {
    "softmax": Part("test_softmax", "softmax", {
        "[0, ln 3] gives [1/4, 3/4]": (torch.tensor([[0.0, math.log(3.0)]]),),
        "equal huge logits give equal probabilities": (torch.tensor([[1000.0, 1000.0]]),),
        "logits of +-1000 (no overflow, no nan)": (torch.tensor([[1000.0, 0.0], [-1000.0, 0.0]]),),
        "random (4, 5) float32": (torch.randn(4, 5, generator=_generator(0)),),
    }, switched_off=SOFTMAX_FAMILY, why=f"{SOFTMAX_WHY}: write softmax yourself"),
    "cross_entropy": Part("test_cross_entropy", "cross_entropy", {
        "uniform over 4 classes costs ln 4": (torch.zeros(1, 4), torch.tensor([2])),
        "[1000, 0] with target 1 costs 1000": (torch.tensor([[1000.0, 0.0]]), torch.tensor([1])),
        "random (6, 5) float32": (_CE_LOGITS, _CE_TARGETS),
    }, switched_off=CROSS_ENTROPY_BUILT_INS,
        why=f"{SOFTMAX_WHY}, and so is cross_entropy: write the cross-entropy yourself"),
    "bigram_grad": Part("test_bigram_grad", "bigram_grad", {
        "the worked example: both examples use row 0": (torch.zeros(2, 2), torch.tensor([0, 0]), torch.tensor([1, 1])),
        "V = 5, repeated ids": (torch.randn(5, 5, generator=_generator(0)), torch.tensor([0, 3, 1, 3, 4, 3]),
                                torch.tensor([3, 1, 4, 1, 0, 3])),
    }, call=_bigram_grad, switched_off=AUTOGRAD,
        why="autograd is switched off in this test: compute the gradient by hand"),
    "mlp_forward": Part("test_mlp_forward", "mlp_forward", {
        "the worked example: V = 2, k = 2, C = 1, H = 1": (torch.tensor([[0, 1]]), *TINY_MLP),
        "random weights: B = 5, k = 3, C = 4, H = 8, V = 6": (_MLP_IDX, *random_weights(V=6, k=3, C=4, H=8, seed=0)),
    }),
    "train_lm": Part("test_train_lm", "train_lm", {
        "A Midsummer Night's Dream, the first 40,000 characters": (MLP_SIZES, training_text(0, 0), STEPS, 0, "valid"),
    }, call=_train_lm, exempt=_train_lm_exempt),
    "negative_sampling_loss": Part("test_negative_sampling_loss", "negative_sampling_loss", {
        "zero vectors give (1 + K) ln 2": (torch.zeros(3, 4), torch.zeros(3, 4), torch.zeros(3, 2, 4)),
        "dot products of -300 give 600": (torch.tensor([[10.0]]), torch.tensor([[-30.0]]), torch.tensor([[[30.0]]])),
        "random: B = 4, K = 3, C = 5": random_vectors(B=4, K=3, C=5, seed=0),
    }, switched_off=STABLE_BUILT_INS,
        why="logsigmoid, softplus, logaddexp and binary_cross_entropy_with_logits are switched off: "
            "write -log σ yourself"),
}
