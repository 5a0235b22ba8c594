"""Exercise 10: expected values, the hidden cases and the comparisons.

The library is the reference:

- quantize, dequantize: ``course_lib.compress.quantize`` and ``dequantize`` (tested against
  ``torch.quantize_per_channel`` in tests/test_compress.py).
- quantize_int4, unpack_int4: ``compress.quantize(w, 4, group_size)`` and ``compress.pack_int4``;
  ``compress.unpack_int4``.
- verify_draft: the rule of ``course_lib.speculative.accept_or_resample`` with the distribution
  it samples from returned instead of a token (``_verify_expected``); on every case the rule
  must give the library's number of accepted tokens and, for three seeds, the library's token
  from ``torch.multinomial`` on that distribution, or building the expected values fails. The
  cases with a rejection weigh twice the others (``VERIFY_WEIGHTS``): a rule that accepts every
  token earns little.
- distillation_loss: ``compress.distillation_loss`` (tested against ``torch.nn.KLDivLoss`` plus
  ``F.cross_entropy``) and its autograd gradient.
- quantize_with_outliers: ``torch.topk`` of the magnitudes and ``compress.quantize`` of the rest
  (``_outliers_reference``); the result is judged by what it rebuilds (``_outliers_compare``).

Rounding: ``q = round(w / scale)`` is judged exactly, except where w / scale lies within a hair
of a half (1e-5, not exactly on it), where a quotient computed in another order (``w * (qmax /
max|w|)``) may round the other way; there either neighbour passes (``near_halves``). Exact halves
(the cases built with power-of-two scales) must round to the even neighbour.
"""

from __future__ import annotations

import torch

from course_lib import compress, speculative
from course_lib.grading import compare, plain
from course_lib.grading.cases.ch10 import draft_case, int_matrix, logits_case, outlier_weights, weights
from course_lib.grading.compare import Mismatch
from course_lib.grading.verdict import Ref

NEAR = 1e-5  # how close to a half a quotient may be for either rounding to pass


def near_halves(w: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """bool (out, in): where w / scale (scale (out, in) or broadcastable) is within NEAR (relative)
    of k + 1/2 without being exactly on it, in float64."""
    x = (w.double() / scale.double()).abs()
    frac = x - x.floor()
    return ((frac - 0.5).abs() < NEAR * x.clamp(min=1)) & (frac != 0.5)


def _tensors(value, specs, what="the result"):
    """``value`` as torch tensors if it is a tuple of tensors with the dtypes and shapes of
    ``specs`` [(name, dtype, shape)], else the Mismatch that says why not."""
    names = ", ".join(name for name, _, _ in specs)
    if type(value) is not tuple or len(value) != len(specs):
        got = f"a tuple of {len(value)} items" if type(value) is tuple else compare._kind(value)
        return Mismatch("type", f"{what}: expected a tuple ({names}), got {got}")
    out = []
    for item, (name, dtype, shape) in zip(value, specs):
        if not isinstance(item, plain.Tensor):
            return Mismatch("type", f"{name}: expected a tensor of {dtype}, got {compare._kind(item)}")
        if item.dtype != dtype:
            return Mismatch("dtype", f"{name}: expected dtype {dtype}, got {item.dtype}")
        if item.shape != tuple(shape):
            return Mismatch("shape", f"{name}: expected shape {tuple(shape)}, got {item.shape}")
        out.append(plain.to_torch(item))
    return out


def _bad_q(q, q_ref, near):
    """The first position (a tuple) where q differs from q_ref beyond what ``near`` allows, or None."""
    diff = (q.long() - q_ref.long()).abs()
    bad = (diff > 1) | ((diff == 1) & ~near)
    return tuple(int(n) for n in bad.nonzero()[0]) if bad.any() else None


def _compare_q(q, q_ref, near, w, scale):
    """None if q equals q_ref, up to one step where the quotient is near a half."""
    i = _bad_q(q, q_ref, near)
    if i is None:
        return None
    return Mismatch("value", f"q at {i}: expected {int(q_ref[i])}, got {int(q[i])} (w = {float(w[i])!r}, "
                             f"w / scale = {float(w[i]) / float(scale[i]):.6f})")


def _named(names, rtol, atol):
    """``compare.same`` within rtol / atol, each item of a tuple result called by its name in ``names``."""
    def same(value, expected, args):
        if type(expected) is not tuple:
            return compare.same(value, expected, rtol, atol, names[0])
        if type(value) is not tuple or len(value) != len(expected):
            return compare.same(value, expected, rtol, atol, f"the result ({', '.join(names)})")
        for v, e, name in zip(value, expected, names):
            mismatch = compare.same(v, e, rtol, atol, name)
            if mismatch:
                return mismatch
        return None
    return same


def _scale_mismatch(scale, scale_ref, what="scale"):
    return compare.same(plain.decode(plain.encode(scale)), plain.decode(plain.encode(scale_ref)), 1e-6, 0.0, what)


# ---------------------------------------------------------------- Part 1: quantize, dequantize
def _absmax_expected(w, bits, q, scale):
    if w is None:
        return compress.dequantize(q, scale)
    return compress.quantize(w, bits)


def _absmax_compare(value, expected, args):
    w, bits, _, _ = plain.to_torch(args)
    if w is None:
        return compare.same(value, expected, 1e-6, 1e-8, "dequantize(q, scale)")
    q_ref, scale_ref = plain.to_torch(expected)
    got = _tensors(value, [("q", "torch.int8", w.shape), ("scale", "torch.float32", (w.shape[0], 1))])
    if isinstance(got, Mismatch):
        return got
    q, scale = got
    return _scale_mismatch(scale, scale_ref) or _compare_q(q, q_ref, near_halves(w, scale_ref), w,
                                                           scale_ref.expand_as(w))


def _absmax_cases(rng):
    zero_rows = weights(6, 10, 5)
    zero_rows[[1, 4]] = 0.0
    negative = weights(4, 12, 6).abs()
    negative[torch.arange(4), torch.tensor([0, 5, 7, 11])] = -5.0  # each row's largest magnitude negative
    one_each = torch.zeros(5, 8)
    one_each[torch.arange(5), torch.tensor([0, 3, 3, 7, 1])] = torch.tensor([0.3, -2.0, 1e-3, 40.0, -0.5])
    ties = torch.tensor([[63.5, 0.25, 0.75, -1.25, -62.5, 2.5, 0.5, -0.5],  # scale 0.5: halves at bits = 8
                         [-63.5, 31.75, -31.25, 1.75, 0.0, 0.25, -0.75, 3.25]])
    cases = {
        "bits = 2: q in {-1, 0, 1}": (weights(5, 12, 10), 2, None, None),
        "bits = 3": (weights(5, 12, 11), 3, None, None),
        "bits = 5": (weights(6, 20, 12), 5, None, None),
        "bits = 6": (weights(6, 20, 13), 6, None, None),
        "bits = 7": (weights(6, 20, 14), 7, None, None),
        "a tall matrix (40 x 3), bits = 8": (weights(40, 3, 15), 8, None, None),
        "a 1 x 1 matrix": (torch.tensor([[-0.37]]), 8, None, None),
        "one row of 64, bits = 4": (weights(1, 64, 16), 4, None, None),
        "rows of zeros among others: scale 1, q 0": (zero_rows, 8, None, None),
        "a matrix of zeros, bits = 2": (torch.zeros(3, 4), 2, None, None),
        "each row's largest magnitude is negative": (negative, 4, None, None),
        "one nonzero weight per row": (one_each, 3, None, None),
        "halves round to the even neighbour at bits = 8 (scale 0.5)": (ties, 8, None, None),
        "rows of sizes from 1e-4 to 1e4": (weights(9, 16, 17, spread=(1e-4, 1e4)), 8, None, None),
        "dequantize: 4 bits": (None, None, *int_matrix(4, 6, 7, 18)),
        "dequantize: a scale of 1 on a row of zeros": (None, None, torch.zeros(2, 3, dtype=torch.int8),
                                                       torch.tensor([[1.0], [0.05]])),
        "dequantize: a 1 x 1 matrix": (None, None, torch.tensor([[-127]], dtype=torch.int8), torch.tensor([[0.5]])),
        "dequantize: a 10 x 20 matrix": (None, None, *int_matrix(10, 20, 127, 19)),
    }
    for i in range(2):
        n_out, n_in, bits = int(rng.integers(1, 33)), int(rng.integers(1, 65)), int(rng.integers(2, 9))
        cases[f"random sizes and bits {i + 1}"] = (weights(n_out, n_in, int(rng.integers(2 ** 31))), bits, None, None)
    return cases


# ---------------------------------------------------------------- Part 2: quantize_int4, unpack_int4
def _int4_expected(w, group_size, packed):
    if w is None:
        return compress.unpack_int4(packed)
    q, scale = compress.quantize(w, 4, group_size)
    return compress.pack_int4(q), scale


def _int4_compare(value, expected, args):
    w, group_size, _ = plain.to_torch(args)
    if w is None:
        return compare.same(value, expected, what="unpack_int4(packed)")
    packed_ref, scale_ref = plain.to_torch(expected)
    n_out, n_in = w.shape
    got = _tensors(value, [("packed", "torch.uint8", (n_out, n_in // 2)),
                           ("scale", "torch.float32", (n_out, n_in // group_size))])
    if isinstance(got, Mismatch):
        return got
    packed, scale = got
    mismatch = _scale_mismatch(scale, scale_ref)
    if mismatch:
        return mismatch
    per_weight = scale_ref.repeat_interleave(group_size, dim=1)  # (out, in)
    q, q_ref = compress.unpack_int4(packed), compress.unpack_int4(packed_ref)
    bad = _bad_q(q, q_ref, near_halves(w, per_weight))
    if bad is None:
        return None
    i, b = bad[0], bad[1] // 2
    return Mismatch("value", f"packed at ({i}, {b}), weights {2 * b} and {2 * b + 1} of row {i} (w = "
                             f"{w[i, 2 * b:2 * b + 2].tolist()}, scale {float(per_weight[i, 2 * b])!r}): expected byte "
                             f"{int(packed_ref[i, b])}, the q {q_ref[i, 2 * b:2 * b + 2].tolist()}; got "
                             f"{int(packed[i, b])}, which stands for {q[i, 2 * b:2 * b + 2].tolist()} (weight 2j in "
                             f"the low nibble, each stored as q + 8)")


def _int4_cases(rng):
    zero_group = weights(3, 16, 21)
    zero_group[1, 4:8] = 0.0
    negative = weights(2, 8, 22).abs()
    negative[0, 1], negative[1, 6] = -9.0, -4.0
    ties = torch.tensor([[7.0, 2.5, -0.5, 1.5, 0.5, 3.5, -6.5, -2.5]])  # scale 1 in each group of 4 with a 7
    ties[0, 4] = -7.0
    cases = {
        "groups of 2": (weights(4, 12, 23), 2, None),
        "groups of 32 in an 8 x 128 matrix": (weights(8, 128, 24), 32, None),
        "groups of 1: every weight its own scale": (weights(2, 6, 25), 1, None),
        "a group of zeros inside a row: scale 1": (zero_group, 4, None),
        "negative largest magnitudes: q = -7, stored 1": (negative, 4, None),
        "halves round to the even neighbour (scale 1)": (ties, 4, None),
        "a 1 x 2 matrix": (torch.tensor([[0.3, -0.1]]), 2, None),
        "rows of sizes from 1e-3 to 1e3": (weights(7, 16, 26, spread=(1e-3, 1e3)), 8, None),
        "unpack_int4: one byte": (None, None, torch.tensor([[0x18]], dtype=torch.uint8)),
        "unpack_int4: random bytes (5, 12)": (None, None, torch.randint(0, 256, (5, 12), dtype=torch.uint8,
                                                                        generator=torch.Generator().manual_seed(27))),
    }
    for i in range(2):
        group = int(rng.choice([2, 4, 8, 16]))
        n_out, n_in = int(rng.integers(1, 17)), group * int(rng.integers(1, 5))
        cases[f"random sizes and groups {i + 1}"] = (weights(n_out, n_in, int(rng.integers(2 ** 31))), group, None)
    return cases


# ---------------------------------------------------------------- Part 3: verify_draft
def _verify_expected(p, q, drafted, u):
    """(n accepted, the distribution of the next token), checked against accept_or_resample."""
    n, dist = len(drafted), p[len(drafted)].clone()
    for j, d in enumerate(drafted):
        if not u[j] * q[j, d] < p[j, d]:
            residual = (p[j] - q[j]).clamp(min=0)
            total = residual.sum()
            n, dist = j, (residual / total if total > 0 else p[j].clone())
            break
    for seed in range(3):
        lib = speculative.accept_or_resample(p, q, drafted, u, torch.Generator().manual_seed(seed))
        mine = (n, int(torch.multinomial(dist, 1, generator=torch.Generator().manual_seed(seed))))
        if lib != mine:
            raise RuntimeError(f"the reference rule disagrees with course_lib.speculative.accept_or_resample: "
                               f"{mine} against {lib}")
    return n, dist


def _verify_cases(rng):
    p, q = _tiny_p_q_cases()
    same = torch.softmax(torch.randn(4, 7, generator=torch.Generator().manual_seed(30)), dim=-1)
    zero_p, zq, zd, zu = draft_case(3, 5, 31, reject_at=3)
    zero_p = zero_p.clone()
    zero_p[1, zd[1]] = 0.0  # the target never writes the second drafted token
    zero_p[1] /= zero_p[1].sum()
    zu[1] = 0.0
    cases = {
        "nothing drafted (k = 0): the next token from p's first row":
            (torch.softmax(torch.randn(1, 5, generator=torch.Generator().manual_seed(32)), dim=-1),
             torch.zeros(0, 5), [], torch.zeros(0)),
        "k = 1, rejected": draft_case(1, 8, 33, reject_at=0),
        "k = 1, accepted": draft_case(1, 8, 34, reject_at=1),
        "all 5 drafted tokens accepted": draft_case(5, 10, 35, reject_at=5),
        "rejected at the first of 4": draft_case(4, 10, 36, reject_at=0),
        "rejected at the last of 4": draft_case(4, 10, 37, reject_at=3),
        "a token the target gives p = 0 is rejected even with u = 0": (zero_p, zq, zd, zu),
        "q(d) = p(d): accepted at u = 0.999": (p, q, [1], torch.tensor([0.999])),
        "p = q everywhere: all accepted": (same, same[:3].clone(), [0, 3, 6], torch.tensor([0.9, 0.99, 0.5])),
        "a vocabulary of 200, k = 3, rejected at the second": draft_case(3, 200, 38, reject_at=1),
        "float64, rejected at the third of 4": draft_case(4, 12, 39, reject_at=2, dtype=torch.float64),
        "float64, all accepted": draft_case(2, 12, 40, reject_at=2, dtype=torch.float64),
    }
    for i in range(2):
        k, V = int(rng.integers(1, 8)), int(rng.integers(2, 50))
        cases[f"random k, V and uniforms {i + 1}"] = draft_case(k, V, int(rng.integers(2 ** 31)))
    return cases


# the rejections carry the rule's residual: they weigh twice what a case where every drafted token passes does
VERIFY_WEIGHTS = {name: 2 for name in (
    "hand-worked example with a rejection (the drafted token has p = 0)",
    "k = 4, V = 6, rejected at the third drafted token", "k = 1, rejected", "rejected at the first of 4",
    "rejected at the last of 4", "a token the target gives p = 0 is rejected even with u = 0",
    "a vocabulary of 200, k = 3, rejected at the second",
    "float64, rejected at the third of 4")}


def _tiny_p_q_cases():
    """p and q with q(1) = p(1) in the first row."""
    return torch.tensor([[0.1, 0.4, 0.5], [0.3, 0.3, 0.4]]), torch.tensor([[0.5, 0.4, 0.1]])


# ---------------------------------------------------------------- Part 4: distillation_loss
def _distill_expected(student_logits, teacher_logits, targets, temperature, alpha, grad):
    s = student_logits.clone().requires_grad_(True)
    loss = compress.distillation_loss(s, teacher_logits, targets, temperature, alpha)
    if not grad:
        return loss.detach()
    loss.backward()
    return loss.detach(), s.grad


def _distill_cases(rng):
    cases = {
        "alpha = 1 with no targets, (4, 6, 13)": (*logits_case((4, 6), 13, 40, targets=False), 2.0, 1.0, False),
        "alpha = 1 with no targets, the gradient": (*logits_case((2, 3), 9, 41, targets=False), 3.0, 1.0, True),
        "alpha = 0: the cross-entropy alone": (*logits_case((3, 4), 10, 42), 2.0, 0.0, False),
        "T = 1": (*logits_case((2, 7), 12, 43), 1.0, 0.5, False),
        "T = 4, the gradient": (*logits_case((2, 4), 12, 44), 4.0, 0.5, True),
        "T = 0.5": (*logits_case((3, 3), 8, 45), 0.5, 0.7, False),
        "logits (N, V), 2-D": (*logits_case((10,), 16, 46), 2.0, 0.5, False),
        "several targets -1, skipped": (*logits_case((4, 5), 9, 47, ignored=7), 2.0, 0.4, True),
        "large logits (size 100): no inf or nan": (*logits_case((3, 4), 20, 48, scale=100.0), 1.0, 0.5, False),
        "large logits, alpha = 1, T = 2, the gradient":
            (*logits_case((2, 4), 20, 49, scale=100.0, targets=False), 2.0, 1.0, True),
    }
    same = logits_case((2, 3), 7, 50)[0]
    cases["the student equal to the teacher, alpha = 1: 0"] = (same, same.clone(), None, 2.0, 1.0, False)
    for i in range(2):
        shape = tuple(int(n) for n in rng.integers(1, 6, size=int(rng.integers(1, 3))))
        V = int(rng.integers(2, 40))
        n = 1
        for d in shape:
            n *= d
        cases[f"random sizes, T and alpha {i + 1}" + (", the gradient" if i else "")] = (
            *logits_case(shape, V, int(rng.integers(2 ** 31)), ignored=int(rng.integers(0, n))),
            float(rng.uniform(0.5, 5.0)), float(rng.uniform(0.0, 0.95)), bool(i))
    return cases


# ---------------------------------------------------------------- Part 5: quantize_with_outliers
def _outliers_reference(w, bits, n_outliers):
    """(q, scale, cols, values): the n_outliers largest magnitudes of each row kept, the rest
    (outliers set to 0) quantized per row by compress.quantize."""
    cols = w.abs().topk(n_outliers, dim=1).indices  # (out, n)
    rest = w.clone().scatter_(1, cols, 0.0)
    q, scale = compress.quantize(rest, bits)
    return q, scale, cols, w.gather(1, cols)


def rebuild(q, scale, cols, values):
    """The matrix a result stands for: q * scale, with the kept weights added back."""
    return (q.float() * scale).scatter_add(1, cols, values)


def _outliers_expected(w, bits, n_outliers, checks):
    q, scale, cols, values = _outliers_reference(w, bits, n_outliers)
    w_hat = rebuild(q, scale, cols, values)
    out = {"rebuilt": w_hat, "scale": scale,
           "largest": values.abs().sort(dim=1, descending=True).values,  # (out, n) the magnitudes to keep
           "max_error": None, "plain_error": None}
    if "error" in checks:
        ours = float((w_hat - w).norm())
        plain_error = float((compress.fake_quantize(w, bits) - w).norm())
        limit = (ours * plain_error) ** 0.5  # the geometric mean of the two
        if not ours < limit / 2:  # a case where the design is not far better than plain quantization proves nothing
            raise RuntimeError(f"outliers kept: error {ours:.3g} against {plain_error:.3g} for plain quantization")
        out["max_error"], out["plain_error"] = limit, plain_error
    return out


def _outliers_compare(value, expected, args):
    w, bits, n, checks = plain.to_torch(args)
    exp = plain.to_torch(expected)
    n_out, n_in = w.shape
    got = _tensors(value, [("q", "torch.int8", (n_out, n_in)), ("scale", "torch.float32", (n_out, 1)),
                           ("cols", "torch.int64", (n_out, n)), ("values", "torch.float32", (n_out, n))])
    if isinstance(got, Mismatch):
        return got
    q, scale, cols, values = got
    qmax = 2 ** (bits - 1) - 1
    if n:
        if cols.min() < 0 or cols.max() >= n_in:
            return Mismatch("value", f"cols: expected columns in 0..{n_in - 1}, got {int(cols.min())}.."
                                     f"{int(cols.max())}")
        for i in range(n_out):
            if len(set(cols[i].tolist())) != n:
                return Mismatch("value", f"cols of row {i}: a column kept twice, {sorted(cols[i].tolist())}")
        kept = w.gather(1, cols)
        if not torch.equal(values, kept):
            i = tuple(int(x) for x in (values != kept).nonzero()[0])
            return Mismatch("value", f"values at {i}: expected w's weight at column {int(cols[i])} exactly, "
                                     f"{float(kept[i])!r}, got {float(values[i])!r}")
        largest = kept.abs().sort(dim=1, descending=True).values
        if not torch.equal(largest, exp["largest"]):
            i = int((largest != exp["largest"]).any(dim=1).nonzero()[0])
            return Mismatch("value", f"row {i}: the kept weights are not its {n} largest in magnitude: kept "
                                     f"magnitudes {largest[i].tolist()}, largest {exp['largest'][i].tolist()}")
        if (q.gather(1, cols) != 0).any():
            i = int((q.gather(1, cols) != 0).any(dim=1).nonzero()[0])
            return Mismatch("value", f"q of row {i}: expected 0 at the kept weights' columns (they are added back "
                                     f"when the matrix is rebuilt), got {q[i].gather(0, cols[i]).tolist()}")
    if q.min() < -qmax or q.max() > qmax:
        return Mismatch("value", f"q: expected values in [-{qmax}, {qmax}], got [{int(q.min())}, {int(q.max())}]")
    w_hat = rebuild(q, scale, cols, values)
    if "exact" in checks:
        mismatch = _scale_mismatch(scale, exp["scale"])
        if mismatch:
            return mismatch
        step = exp["scale"].expand_as(w)
        near = near_halves(w, step)
        if n:
            near.scatter_(1, cols, False)
        gap = (w_hat - exp["rebuilt"]).abs()
        allowed = 2e-6 * exp["rebuilt"].abs() + 1e-30 + torch.where(near, step * (1 + 1e-5), torch.zeros_like(step))
        if (gap > allowed).any():
            i = tuple(int(x) for x in (gap > allowed).nonzero()[0])
            return Mismatch("value", f"the rebuilt matrix q * scale (+ the kept weights) at {i}: expected "
                                     f"{float(exp['rebuilt'][i])!r}, got {float(w_hat[i])!r} (w = {float(w[i])!r})")
    if "error" in checks:
        error = float((w_hat - w).norm())
        if not error <= exp["max_error"]:
            return Mismatch("value", f"the error ||rebuilt - w|| is {error:.4g}: expected it far below plain "
                                     f"quantization's {exp['plain_error']:.4g}, at most {exp['max_error']:.4g}")
    return None


def _outliers_cases(rng):
    lone = outlier_weights(6, 16, 2, 60)
    keep = lone.abs().topk(2, dim=1).indices
    lone = torch.zeros_like(lone).scatter_(1, keep, lone.gather(1, keep))  # nothing but the outliers
    tied = torch.tensor([[5.0, -5.0, 1.0, 2.0, -0.5, 0.25], [0.1, 3.0, -3.0, 3.0, 0.2, -0.3]])
    negative = outlier_weights(8, 32, 3, 61)
    negative = torch.where(negative.abs() > 0.5, -negative.abs(), negative)
    cases = {
        "3 huge weights per row, bits = 8, 3 outliers: the error far below plain quantization's":
            (outlier_weights(32, 128, 3, 62), 8, 3, ("error",)),
        "4 huge weights per row, bits = 4, 4 outliers: the error": (outlier_weights(24, 96, 4, 63), 4, 4, ("error",)),
        "4 huge weights per row, bits = 4, 4 outliers: exact": (outlier_weights(12, 48, 4, 64), 4, 4, ("exact",)),
        "1 huge weight per row, bits = 3, 1 outlier": (outlier_weights(10, 40, 1, 65), 3, 1, ("exact",)),
        "more outliers kept (5) than huge weights (2)": (outlier_weights(8, 32, 2, 66), 8, 5, ("exact",)),
        "n_outliers = in: every weight kept, q 0, scale 1": (weights(3, 6, 67), 4, 6, ("exact",)),
        "nothing left but zeros once the outliers are out: scale 1": (lone, 8, 2, ("exact",)),
        "ties among the largest magnitudes: either may be kept": (tied, 4, 1, ("exact",)),
        "negative outliers": (negative, 4, 3, ("exact",)),
        "bits = 2, 2 outliers": (outlier_weights(8, 24, 2, 68), 2, 2, ("exact",)),
        "n_outliers = 0, bits = 4: plain per-row quantization": (outlier_weights(8, 32, 1, 69), 4, 0, ("exact",)),
        "a 1 x 1 matrix, 1 outlier": (torch.tensor([[-3.5]]), 8, 1, ("exact",)),
    }
    for i in range(2):
        n_out, n_in = int(rng.integers(1, 24)), int(rng.integers(8, 80))
        n_huge = int(rng.integers(0, 4))
        cases[f"random sizes, bits and outliers {i + 1}"] = (
            outlier_weights(n_out, n_in, n_huge, int(rng.integers(2 ** 31))), int(rng.integers(2, 9)),
            int(rng.integers(0, n_huge + 3)), ("exact",))
    return cases


REFS = {
    "quantize": Ref(_absmax_expected, hidden=_absmax_cases, compare=_absmax_compare),
    "quantize_int4": Ref(_int4_expected, hidden=_int4_cases, compare=_int4_compare),
    "verify_draft": Ref(_verify_expected, hidden=_verify_cases, compare=_named(("n", "dist"), 1e-5, 1e-7),
                        weights=VERIFY_WEIGHTS),
    "distillation_loss": Ref(_distill_expected, hidden=_distill_cases,
                             compare=_named(("the loss", "the gradient with respect to student_logits"), 1e-5, 1e-6)),
    "quantize_with_outliers": Ref(_outliers_expected, hidden=_outliers_cases, compare=_outliers_compare),
}
