"""Exercise 4: expected values from torch.nn's cells and torch.nn.utils.clip_grad_norm_ (and
course_lib's tbptt_batches, as the old tests had); the hidden cases.

rnn_bptt: autograd in float64 through ``torch.nn.RNNCell`` run step by step (its ``bias_ih``
holding b, ``bias_hh`` zero), each state kept with ``retain_grad`` so that its ``.grad`` is
the whole dL/dh_t (every path through the later steps); the loss is
``sum_t (out_grads[:, t] * h_t).sum()``. Compared within 1e-6 (relative) and 1e-12 (absolute: the norms
of a vanishing gradient are tiny, and each is compared relatively down to there)."""

import numpy as np
import torch

import course_lib.rnn as ours
from course_lib.grading.cases.ch04 import BPTT_TINY, bptt_inputs, cell_shapes, random_tensors
from course_lib.grading.verdict import Ref


def _cell(cell_class, W_ih, W_hh, b_ih, b_hh):
    """torch.nn's cell with these weights (its layout is the exercise's)."""
    cell = cell_class(W_ih.shape[1], W_hh.shape[1]).to(W_ih.dtype)
    with torch.no_grad():
        for name, w in [("weight_ih", W_ih), ("weight_hh", W_hh), ("bias_ih", b_ih), ("bias_hh", b_hh)]:
            getattr(cell, name).copy_(w)
    return cell


def _rnn_expected(x, h, W_ih, W_hh, b_ih, b_hh):
    with torch.no_grad():
        return _cell(torch.nn.RNNCell, W_ih, W_hh, b_ih, b_hh)(x, h).clone()


def _lstm_expected(x, h, c, W_ih, W_hh, b_ih, b_hh):
    with torch.no_grad():
        h_new, c_new = _cell(torch.nn.LSTMCell, W_ih, W_hh, b_ih, b_hh)(x, (h, c))
    return h_new.clone(), c_new.clone()


def _gru_expected(x, h, W_ih, W_hh, b_ih, b_hh):
    with torch.no_grad():
        return _cell(torch.nn.GRUCell, W_ih, W_hh, b_ih, b_hh)(x, h).clone()


def _random_shape_cases(rng, gates, with_c=False):
    """Two cases of random shapes and values (one float32, one float64), drawn from the grading seed."""
    cases = {}
    for k, dtype in enumerate((np.float32, np.float64)):
        B, n_in, H = (int(v) for v in rng.integers(1, 9, size=3))
        scale = float(rng.uniform(0.5, 3.0))
        cases[f"random shapes {k + 1} ({np.dtype(dtype).name})"] = tuple(
            torch.from_numpy((rng.standard_normal(shape) * scale).astype(dtype))
            for shape in cell_shapes(B, n_in, H, gates, with_c))
    return cases


def _cell_cases(gates, with_c=False):
    """The old hidden tests' fixed cases, then random ones."""
    def hidden(rng):
        def shapes(B, n_in, H):
            return cell_shapes(B, n_in, H, gates, with_c)

        cases = {
            "float64 stays float64": random_tensors(shapes(8, 6, 16), seed=1, dtype=torch.float64),
            "one unit, batch of 1": random_tensors(shapes(1, 1, 1), seed=2),
            "saturated units": random_tensors(shapes(5, 7, 3), seed=3, scale=4.0 if gates == 1 else 5.0),
            "input size differs from hidden size": random_tensors(shapes(3, 10, 4) if gates == 1 else shapes(3, 2, 8),
                                                                  seed=4),
            "float64, batch of 6": random_tensors(shapes(6, 4, 9), seed=5, dtype=torch.float64),
        }
        zero = list(random_tensors(shapes(2, 3, 5), seed=6))
        zero[1] = torch.zeros(2, 5)
        if with_c:
            zero[2] = torch.zeros(2, 5)
        cases["the first step of a sequence (zero state)"] = tuple(zero)
        cases.update(_random_shape_cases(rng, gates, with_c))
        return cases
    return hidden


def _bptt_expected(xs, h0, W_ih, W_hh, b, out_grads):
    """({"W_ih", "W_hh", "b", "h0"}: dL/d each, (T,) the norm of dL/dh_t at every step), by autograd."""
    T, (H, n_in) = xs.shape[1], W_ih.shape
    cell = torch.nn.RNNCell(n_in, H).to(torch.float64)
    with torch.no_grad():
        cell.weight_ih.copy_(W_ih)
        cell.weight_hh.copy_(W_hh)
        cell.bias_ih.copy_(b)
        cell.bias_hh.zero_()
    cell.bias_hh.requires_grad_(False)
    h0 = h0.clone().requires_grad_(True)
    with torch.enable_grad():
        h, states = h0, []
        for step in range(T):
            h = cell(xs[:, step], h)
            h.retain_grad()
            states.append(h)
        loss = sum((out_grads[:, step] * states[step]).sum() for step in range(T))
        loss.backward()
    grads = {"W_ih": cell.weight_ih.grad, "W_hh": cell.weight_hh.grad, "b": cell.bias_ih.grad, "h0": h0.grad}
    norms = torch.stack([torch.linalg.vector_norm(state.grad) for state in states])
    return {k: v.detach().clone() for k, v in grads.items()}, norms.detach().clone()


def _bptt_cases(rng):
    def seed():
        return int(rng.integers(2 ** 31))

    cases = {
        "the worked example's weights, a gradient at both steps": (*BPTT_TINY[:5], torch.tensor([[[0.5], [-1.0]]],
                                                                                             dtype=torch.float64)),
        "one step (T = 1)": bptt_inputs(4, 1, 3, 5, seed()),
        "a zero initial state": bptt_inputs(3, 7, 2, 4, seed(), zero_h0=True),
        "saturated units (weights x 4)": bptt_inputs(2, 12, 5, 6, seed(), scale=4.0),
        "input size larger than the state": bptt_inputs(2, 9, 10, 3, seed()),
        "one sequence, one unit": bptt_inputs(1, 8, 1, 1, seed()),
        "100 steps, a gradient into the last state only": bptt_inputs(3, 100, 4, 16, seed(), last_only=True),
        "50 steps, all weights x 4 (saturated units)": bptt_inputs(2, 50, 3, 8, seed(), scale=4.0, last_only=True),
    }
    for k in range(2):
        B, T, n_in, H = (int(v) for v in rng.integers(1, 9, size=4))
        cases[f"random sizes {k + 1}"] = bptt_inputs(B, T + 1, n_in, H, seed(), scale=float(rng.uniform(0.5, 3.0)))
    return cases


def _tbptt_expected(data, batch_size, bptt):
    """course_lib's chunks, in data's dtype (course_lib reads the ids as int64)."""
    return [(x.to(data.dtype).clone(), y.to(data.dtype).clone()) for x, y in ours.tbptt_batches(data, batch_size, bptt)]


def _tbptt_cases(rng):
    g = torch.Generator().manual_seed(1)
    cases = {
        "remainder 1, chunks of 2 and 1": (torch.arange(17), 4, 2),
        "a long text, 7 streams": (torch.randint(0, 65, (1000,), generator=g), 7, 16),
        "exactly one full chunk": (torch.randint(0, 65, (25,), generator=g), 4, 5),
        "three full chunks, none shorter": (torch.randint(0, 65, (41,), generator=g), 4, 3),
        "one stream": (torch.randint(0, 65, (30,), generator=g), 1, 7),
        "one chunk of one step": (torch.randint(0, 65, (12,), generator=g), 6, 4),
        "bptt longer than a stream": (torch.randint(0, 65, (50,), generator=g), 3, 100),
        "one step per chunk": (torch.randint(0, 65, (20,), generator=g), 2, 1),
    }
    for k, dtype in enumerate((np.int64, np.int32)):
        B = int(rng.integers(1, 8))
        length = int(rng.integers(2 * B, 2 * B + 120))
        cases[f"random text {k + 1} ({np.dtype(dtype).name})"] = (
            torch.from_numpy(rng.integers(0, 100, size=length).astype(dtype)), B, int(rng.integers(1, 12)))
    return cases


def _clip_expected(grads, max_norm):
    """The gradients, put in the .grad of parameters, clipped in place by torch."""
    params = [torch.nn.Parameter(torch.zeros_like(g)) for g in grads]
    for p, g in zip(params, grads):
        p.grad = g.clone()
    total = torch.nn.utils.clip_grad_norm_(params, max_norm)
    return [p.grad.detach().clone() for p in params], total.detach().clone()


def _clip_cases(rng):
    t = torch.tensor
    cases = {
        "a 2-d gradient, norm 5 clipped to 2.5": ([t([3.0, 0.0]), t([[0.0], [4.0]])], 2.5),
        "float64 stays float64, clipped": (list(random_tensors([(5, 7), (7,), (3, 5)], seed=1, dtype=torch.float64)),
                                           0.5),
        "float64 stays float64, not clipped": (list(random_tensors([(5, 7), (7,), (3, 5)], seed=1,
                                                                   dtype=torch.float64)), 50.0),
        "one exploding tensor": (list(random_tensors([(10, 10)], seed=2, scale=1e3)), 1.0),
        "many small tensors, a tiny max_norm": (list(random_tensors([(4,)] * 12, seed=3)), 1e-3),
        "all zero: nothing changes": ([torch.zeros(3, 3), torch.zeros(2)], 1.0),
        "two tensors, clipped to 2": (list(random_tensors([(8, 4), (16,)], seed=4, scale=3.0)), 2.0),
        "tiny float64 gradients": (list(random_tensors([(2, 3), (6,), (1,)], seed=5, dtype=torch.float64,
                                                       scale=0.01)), 1.0),
    }
    for k, dtype in enumerate((np.float32, np.float64)):
        shapes = [tuple(int(n) for n in rng.integers(1, 6, size=int(rng.integers(1, 4))))
                  for _ in range(int(rng.integers(1, 6)))]
        grads = [torch.from_numpy((rng.standard_normal(s) * rng.uniform(0.1, 5.0)).astype(dtype)) for s in shapes]
        total = float(np.sqrt(sum(float((g.double() ** 2).sum()) for g in grads)))
        max_norm = float(total * rng.choice([0.3, 2.0]))  # clipped or not, never near the edge
        cases[f"random gradients {k + 1} ({np.dtype(dtype).name})"] = (grads, max_norm)
    return cases


REFS = {
    "rnn_step": Ref(_rnn_expected, hidden=_cell_cases(1), rtol=1e-5, atol=1e-5),
    "rnn_bptt": Ref(_bptt_expected, hidden=_bptt_cases, rtol=1e-6, atol=1e-12),
    "lstm_step": Ref(_lstm_expected, hidden=_cell_cases(4, with_c=True), rtol=1e-5, atol=1e-5),
    "tbptt_batches": Ref(_tbptt_expected, hidden=_tbptt_cases, rtol=0.0, atol=0.0),
    "clip_grad_norm": Ref(_clip_expected, hidden=_clip_cases, rtol=1e-5, atol=1e-6),
    "gru_step": Ref(_gru_expected, hidden=_cell_cases(3), rtol=1e-5, atol=1e-5),
}
