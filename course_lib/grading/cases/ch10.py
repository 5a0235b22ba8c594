"""Exercise 10 (making a model small and fast): the graded parts and their visible cases.

The parts are handed their inputs as data (float32 matrices, distributions, logits), never a
model. Two functions are graded together in Parts 1 and 2, each case calling one of them:

- ``quantize`` with ``dequantize``: a case is ``(w, bits, None, None)`` for ``quantize(w, bits)``
  or ``(None, None, q, scale)`` for ``dequantize(q, scale)`` on integers and scales of its own,
  so that no case's input holds the answer of another (``_absmax``).
- ``quantize_int4`` with ``unpack_int4``: ``(w, group_size, None)`` or ``(None, None, packed)``
  (``_int4``); every byte value 0..255 in a visible case.
- ``verify_draft``: p, q, the drafted tokens and the uniforms; it returns the distribution the
  next token is drawn from rather than a token, so the test is exact (nothing random).
- ``distillation_loss``: the logits, targets, temperature and alpha; the student's logits carry
  gradients, as in training, and a flag asks for their gradient too (``_distill``).
- ``quantize_with_outliers``: w, bits, n_outliers and the checks the grader makes on the result
  (``checks``: for the grader; the call does not pass them on).

No cascades: while Parts 2 and 5 run, the notebook's ``quantize`` is the course's
(``compress.quantize``, per row with these arguments), so a mistake in Part 1 costs Part 1 only.
"""

from __future__ import annotations

import math

import torch

from course_lib import compress as _compress
from course_lib.grading.kernel import Part, lend

# torch's own quantizers would do Parts 1, 2 and 5 (``torch.quantize_per_channel(w, scale, 0, 0,
# torch.qint8).int_repr()``); its KL divergence, Part 4's soft term
QUANTIZER_BUILT_INS = tuple(("torch", name) for name in (
    "quantize_per_channel", "quantize_per_tensor", "quantize_per_tensor_dynamic", "fake_quantize_per_channel_affine",
    "fake_quantize_per_tensor_affine", "_fake_quantize_learnable_per_channel_affine",
    "_fake_quantize_learnable_per_tensor_affine", "_fake_quantize_per_tensor_affine_cachemask_tensor_qparams",
    "_make_per_channel_quantized_tensor", "_make_per_tensor_quantized_tensor", "fbgemm_linear_quantize_weight",
    "dequantize") if hasattr(torch, name)) + (("torch", "Tensor.dequantize"),)
QUANTIZER_WHY = "torch's quantizers are switched off in this test: write the quantization yourself"
KL_BUILT_INS = (("torch.nn.functional", "kl_div"), ("torch", "kl_div"), ("torch.nn", "KLDivLoss.forward"))
KL_WHY = ("torch's KL divergence (F.kl_div, nn.KLDivLoss) is switched off in this test: write the KL divergence "
          "yourself (F.log_softmax and F.cross_entropy are fine)")


def _lent_quantize():
    """What the lent ``quantize`` runs in course_lib."""
    return (_compress.quantize, _compress._check_bits, _compress._check_weight)


# ---------------------------------------------------------------- Part 1: quantize, dequantize
def weights(n_out, n_in, seed, spread=None):
    """A float32 (out, in) matrix of N(0, 1) numbers, seeded; with ``spread`` (lo, hi), row i
    scaled by a size from lo to hi (geometric), so that rows differ by orders of magnitude."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n_out, n_in, generator=g)
    if spread is not None:
        w = w * torch.logspace(math.log10(spread[0]), math.log10(spread[1]), n_out)[:, None]
    return w


def int_matrix(n_out, n_in, qmax, seed):
    """(q int8 (out, in) in [-qmax, qmax], scale float32 (out, 1) > 0), seeded: dequantize's input."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randint(-qmax, qmax + 1, (n_out, n_in), generator=g).to(torch.int8)
    return q, torch.rand(n_out, 1, generator=g) * 0.1 + 1e-3


def _absmax(ns, w, bits, q, scale):
    """quantize(w, bits), or dequantize(q, scale) where the case gives no w."""
    if w is None:
        return ns["dequantize"](q.clone(), scale.clone())
    return ns["quantize"](w.clone(), bits)


def _absmax_visible():
    q, scale = int_matrix(3, 5, 127, 0)
    return {
        "hand-worked example: bits = 4, a row and a row of zeros":
            (torch.tensor([[1.4, -0.6, 0.25, 0.0], [0.0, 0.0, 0.0, 0.0]]), 4, None, None),
        "halves round to the even neighbour: bits = 3, scale 1":
            (torch.tensor([[3.0, 1.5, -0.5, 2.5, -2.5, 0.5]]), 3, None, None),
        "a 6 x 16 matrix, bits = 8": (weights(6, 16, 0), 8, None, None),
        "dequantize: a 3 x 5 matrix of int8 and its scales": (None, None, q, scale),
    }


# ---------------------------------------------------------------- Part 2: quantize_int4, unpack_int4
def all_bytes() -> torch.Tensor:
    """uint8 (16, 16): every byte value 0..255 once."""
    return torch.arange(256).reshape(16, 16).to(torch.uint8)


def _int4(ns, w, group_size, packed):
    """quantize_int4(w, group_size) with the course's quantize lent, or unpack_int4(packed)."""
    if w is None:
        return ns["unpack_int4"](packed.clone())
    with lend(ns, quantize=_compress.quantize):
        return ns["quantize_int4"](w.clone(), group_size)


def _int4_visible():
    return {
        "hand-worked example: one row of 4, groups of 2": (torch.tensor([[0.7, -0.1, 0.0, -1.4]]), 2, None),
        "a 4 x 16 matrix in groups of 8": (weights(4, 16, 1), 8, None),
        "one group per row (group_size = in)": (weights(3, 8, 2), 8, None),
        "unpack_int4: every byte 0..255": (None, None, all_bytes()),
    }


# ---------------------------------------------------------------- Part 3: verify_draft
def draft_case(k, V, seed, reject_at=None, dtype=torch.float32):
    """(p (k+1, V), q (k, V), drafted (k ints drawn from q), u (k,)), seeded. ``reject_at`` = n
    makes the uniforms accept the first n drafted tokens and reject token n (drafted where
    q > p, so that it can be rejected); n = k accepts them all; None draws u at random."""
    g = torch.Generator().manual_seed(seed)
    p = torch.softmax(1.5 * torch.randn(k + 1, V, generator=g, dtype=torch.float64), dim=-1).to(dtype)
    q = torch.softmax(1.5 * torch.randn(k, V, generator=g, dtype=torch.float64), dim=-1).to(dtype)
    drafted, u = [], torch.rand(k, generator=g, dtype=torch.float64)
    for j in range(k):
        if reject_at is not None and j == reject_at:
            over = (q[j] > p[j]).to(torch.float64) * q[j].double()  # the draft's tokens it overrates
            d = int(torch.multinomial(over, 1, generator=g))
            u[j] = (float(p[j, d] / q[j, d]) + 1) / 2  # above p/q: rejected
        else:
            d = int(torch.multinomial(q[j].double(), 1, generator=g))
            if reject_at is not None and j < reject_at:
                u[j] = 0.5 * min(1.0, float(p[j, d] / q[j, d]))  # below p/q: accepted
        drafted.append(d)
    return p, q, drafted, u.to(dtype)


def _tiny_p_q():
    return torch.tensor([[0.5, 0.5, 0.0], [0.2, 0.3, 0.5]]), torch.tensor([[0.25, 0.25, 0.5]])


def _verify_visible():
    p, q = _tiny_p_q()
    return {
        "hand-worked example with a rejection (the drafted token has p = 0)": (p, q, [2], torch.tensor([0.3])),
        "hand-worked example: p / q = 2, accepted, the next token from p's last row": (p, q, [0],
                                                                                       torch.tensor([0.99])),
        "k = 4, V = 6, rejected at the third drafted token": draft_case(4, 6, 0, reject_at=2),
    }


# ---------------------------------------------------------------- Part 4: distillation_loss
def logits_case(shape, V, seed, scale=1.0, ignored=0, targets=True):
    """(student_logits, teacher_logits, targets or None): float32 (*shape, V) N(0, scale^2)
    logits, the teacher's a noisy copy of the student's, and int64 targets (*shape) with the
    first ``ignored`` of them -1, all seeded."""
    g = torch.Generator().manual_seed(seed)
    s = scale * torch.randn(*shape, V, generator=g)
    t = s + scale * torch.randn(*shape, V, generator=g)
    if not targets:
        return s, t, None
    y = torch.randint(0, V, shape, generator=g)
    y.view(-1)[:ignored] = -1
    return s, t, y


def _distill(ns, student_logits, teacher_logits, targets, temperature, alpha, grad):
    """distillation_loss with the student's logits requiring a gradient (as in training); with
    ``grad``, (loss, the gradient of the loss with respect to the student's logits)."""
    s = student_logits.clone().requires_grad_(True)
    loss = ns["distillation_loss"](s, teacher_logits.clone(), None if targets is None else targets.clone(),
                                   temperature, alpha)
    if type(loss) is not torch.Tensor:
        return loss
    if not grad:
        return loss.detach()
    if loss.dim() == 0 and loss.requires_grad:
        loss.backward()
    return loss.detach(), torch.zeros_like(s) if s.grad is None else s.grad


def _distill_visible():
    one = torch.tensor([[0.0, 0.0]]), torch.tensor([[2 * math.log(3.0), 0.0]])
    return {
        "hand-worked example: V = 2, T = 2, alpha = 1, no targets: 4 KL = 0.5232": (*one, None, 2.0, 1.0, False),
        "hand-worked example with alpha = 0.5 and target 0: 0.6082": (*one, torch.tensor([0]), 2.0, 0.5, False),
        "a batch (2, 5, 11), T = 2.5, alpha = 0.3, a target -1, and the gradient":
            (*logits_case((2, 5), 11, 0, ignored=1), 2.5, 0.3, True),
    }


# ---------------------------------------------------------------- Part 5: quantize_with_outliers
def outlier_weights(n_out, n_in, n_huge, seed, size=0.02, factor=50.0):
    """float32 (out, in): N(0, size^2) weights with ``n_huge`` weights per row at random columns
    made ``factor`` times larger (signs random), as trained transformers have a few; seeded."""
    g = torch.Generator().manual_seed(seed)
    w = size * torch.randn(n_out, n_in, generator=g)
    if n_huge:
        cols = torch.rand(n_out, n_in, generator=g).argsort(dim=1)[:, :n_huge]  # (out, n_huge) distinct
        sign = torch.where(torch.rand(n_out, n_huge, generator=g) < 0.5, -1.0, 1.0)
        huge = factor * size * sign * (2 + torch.rand(n_out, n_huge, generator=g))
        w.scatter_(1, cols, huge)
    return w


def _outliers(ns, w, bits, n_outliers, checks):
    """quantize_with_outliers(w, bits, n_outliers), with the course's quantize lent; ``checks``
    say what the grader checks and are not passed on."""
    with lend(ns, quantize=_compress.quantize):
        return ns["quantize_with_outliers"](w.clone(), bits, n_outliers)


def _outliers_visible():
    return {
        "hand-worked example: one row, bits = 4, one outlier":
            (torch.tensor([[0.2, -12.0, 0.7, -0.1]]), 4, 1, ("exact",)),
        "n_outliers = 0: plain per-row quantization, bits = 8": (weights(8, 16, 3), 8, 0, ("exact",)),
        "2 huge weights per row of a 16 x 64 matrix, bits = 4, 2 outliers: exact, and the error far below plain "
        "quantization's": (outlier_weights(16, 64, 2, 0), 4, 2, ("exact", "error")),
    }


PARTS = {
    "quantize": Part("test_quantize", "quantize", _absmax_visible(), call=_absmax,
                     switched_off=QUANTIZER_BUILT_INS, why=QUANTIZER_WHY),
    "quantize_int4": Part("test_quantize_int4", "quantize_int4", _int4_visible(), call=_int4,
                          exempt=_lent_quantize, switched_off=QUANTIZER_BUILT_INS, why=QUANTIZER_WHY),
    "verify_draft": Part("test_verify_draft", "verify_draft", _verify_visible()),
    "distillation_loss": Part("test_distillation_loss", "distillation_loss", _distill_visible(), call=_distill,
                              switched_off=KL_BUILT_INS, why=KL_WHY),
    "quantize_with_outliers": Part("test_quantize_with_outliers", "quantize_with_outliers", _outliers_visible(),
                                   call=_outliers, exempt=_lent_quantize, switched_off=QUANTIZER_BUILT_INS,
                                   why=QUANTIZER_WHY),
}
