"""Exercise 3 (neural language models): the graded parts and their visible cases.

Part 3 (``bigram_grad``) may call the student's ``softmax`` of Part 1 by name. So that a
bug in Part 1 costs Part 1 only, its call lends the notebook torch's softmax under that
name for the time of the call and puts the student's back after (torch's softmax is
switched off in Parts 1 and 2, so the lent one is no shortcut there). The call also fails
the case if ``bigram_grad`` changed W.
"""

import math

import torch

from course_lib.grading.kernel import Part, lend

SOFTMAX_FAMILY = tuple((owner, f"{prefix}{name}") for owner, prefix in (("torch", ""), ("torch", "Tensor."),
                                                                         ("torch.special", ""))
                       for name in ("softmax", "log_softmax", "logsumexp"))
CROSS_ENTROPY_BUILT_INS = SOFTMAX_FAMILY + (("torch", "_C._nn.cross_entropy_loss"),)  # F.cross_entropy calls it
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
    }, switched_off=SOFTMAX_FAMILY,
        why="torch's softmax, log_softmax and logsumexp are switched off in this test: write softmax yourself"),
    "cross_entropy": Part("test_cross_entropy", "cross_entropy", {
        "uniform over 4 classes costs ln 4": (torch.zeros(1, 4), torch.tensor([2])),
        "[1000, 0] with target 1 costs 1000": (torch.tensor([[1000.0, 0.0]]), torch.tensor([1])),
        "random (6, 5) float32": (_CE_LOGITS, _CE_TARGETS),
    }, switched_off=CROSS_ENTROPY_BUILT_INS,
        why="torch's softmax, log_softmax, logsumexp and cross_entropy are switched off: "
            "write the cross-entropy yourself"),
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
    "negative_sampling_loss": Part("test_negative_sampling_loss", "negative_sampling_loss", {
        "zero vectors give (1 + K) ln 2": (torch.zeros(3, 4), torch.zeros(3, 4), torch.zeros(3, 2, 4)),
        "dot products of -300 give 600": (torch.tensor([[10.0]]), torch.tensor([[-30.0]]), torch.tensor([[[30.0]]])),
        "random: B = 4, K = 3, C = 5": random_vectors(B=4, K=3, C=5, seed=0),
    }, switched_off=STABLE_BUILT_INS,
        why="logsigmoid, softplus, logaddexp and binary_cross_entropy_with_logits are switched off: "
            "write -log σ yourself"),
}
