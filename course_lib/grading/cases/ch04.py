"""Exercise 4 (recurrent networks): the graded parts and their visible cases.

The six parts are independent (none is handed another's output), so a bug in one costs
that part only. Each case's inputs are tensors made here (seeded torch generators) or
literals; the expected values are computed by the grader with torch.nn's cells, autograd
and ``torch.nn.utils.clip_grad_norm_``.

``rnn_bptt`` (backpropagation through time by hand) may run the forward pass with the
student's ``rnn_step`` of Part 1: its call lends the notebook a correct step under that
name for the time of the call (written here with torch.tanh, not course_lib), so a bug in
Part 1 costs Part 1 only. Autograd is switched off while it runs, and the call fails the
case if the inputs were changed.
"""

import math

import torch

from course_lib.grading.kernel import Part, lend


def random_tensors(shapes, seed, dtype=torch.float32, scale=1.0):
    """Standard normal tensors of the given shapes (times ``scale``), from a seeded torch generator."""
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(*shape, generator=g, dtype=dtype) * scale for shape in shapes)


def cell_shapes(B, n_in, H, gates=1, with_c=False):
    """x (B, I), h (B, H)[, c (B, H)], W_ih (gH, I), W_hh (gH, H), b_ih (gH,), b_hh (gH,), with I = n_in."""
    return [(B, n_in), (B, H), *([(B, H)] if with_c else []), (gates * H, n_in), (gates * H, H), (gates * H,),
            (gates * H,)]


def _built_ins(names):
    return tuple((module, f"{prefix}{name}") for module, prefix in (("torch", ""), ("torch", "_VF."))
                 for name in names)


RNN_BUILT_INS = _built_ins(("rnn_tanh_cell", "rnn_tanh"))
LSTM_BUILT_INS = _built_ins(("lstm_cell", "lstm"))
GRU_BUILT_INS = _built_ins(("gru_cell", "gru"))
CLIP_BUILT_INS = tuple((module, name) for module in ("torch.nn.utils", "torch.nn.utils.clip_grad")
                       for name in ("clip_grad_norm_", "clip_grad_norm", "get_total_norm", "clip_grads_with_norm_",
                                    "_get_total_norm", "_clip_grads_with_norm_")
                       if hasattr(__import__(module, fromlist=["_"]), name))


def _clip_unchanged(ns, grads, max_norm):
    """clip_grad_norm(grads, max_norm), which must leave its inputs as they were."""
    before = [g.clone() for g in grads]
    result = ns["clip_grad_norm"](grads, max_norm)
    for k, (g, b) in enumerate(zip(grads, before)):
        if not (g.shape == b.shape and torch.equal(g, b)):
            raise AssertionError(f"clip_grad_norm changed input gradient {k}: return new tensors, "
                                 "leave the inputs as they were")
    return result


AUTOGRAD = (("torch", "Tensor.backward"), ("torch.autograd", "backward"), ("torch.autograd", "grad"))


def _lent_rnn_step(x, h, W_ih, W_hh, b_ih, b_hh):
    return torch.tanh(x @ W_ih.T + b_ih + h @ W_hh.T + b_hh)


def _bptt_unchanged(ns, xs, h0, W_ih, W_hh, b, out_grads):
    """rnn_bptt on the case, with a correct rnn_step lent; it must leave its inputs as they were."""
    inputs = (xs, h0, W_ih, W_hh, b, out_grads)
    before = [a.clone() for a in inputs]
    with lend(ns, rnn_step=_lent_rnn_step):
        value = ns["rnn_bptt"](*inputs)
    names = ("xs", "h0", "W_ih", "W_hh", "b", "out_grads")
    for name, a, was in zip(names, inputs, before):
        if not (a.shape == was.shape and torch.equal(a, was)):
            raise AssertionError(f"rnn_bptt changed its input {name}: leave the inputs as they were")
    return value


def bptt_inputs(B, T, n_in, H, seed, scale=1.0, last_only=False, zero_h0=False):
    """xs (B, T, I), h0 (B, H), W_ih (H, I), W_hh (H, H), b (H,), out_grads (B, T, H), float64, seeded.
    Weights as torch.nn.RNN draws them (uniform within 1/sqrt(H)) times ``scale``; ``last_only``: the loss
    sends a gradient into the last state only."""
    g = torch.Generator().manual_seed(seed)
    bound = scale / math.sqrt(H)

    def uniform(*shape):
        return (torch.rand(*shape, generator=g, dtype=torch.float64) * 2 - 1) * bound

    xs = torch.randn(B, T, n_in, generator=g, dtype=torch.float64)
    h0 = torch.zeros(B, H, dtype=torch.float64) if zero_h0 else torch.randn(B, H, generator=g, dtype=torch.float64)
    W_ih, W_hh, b = uniform(H, n_in), uniform(H, H), uniform(H)
    out_grads = torch.randn(B, T, H, generator=g, dtype=torch.float64)
    if last_only:
        out_grads[:, :-1] = 0.0
    return xs, h0, W_ih, W_hh, b, out_grads


# the worked example of Part 2: one unit, h_1 = h_2 = 1/2, a gradient into h_2 only
_X1 = math.log(3.0) / 2  # tanh(x_1) = 1/2
BPTT_TINY = tuple(torch.tensor(v, dtype=torch.float64) for v in (
    [[[_X1], [_X1 - 1.0]]], [[0.0]], [[1.0]], [[2.0]], [0.0], [[[0.0], [1.0]]]))

LN3 = math.log(3.0)
t = torch.tensor

PARTS = {
    "rnn_step": Part("test_rnn_step", "rnn_step", {
        # [tanh(0.5 + 1), tanh(-0.5 + 0.5)]
        "the hand-worked example": (t([[0.5]]), t([[0.0, 1.0]]), t([[1.0], [-1.0]]), t([[0.0, 1.0], [0.0, 0.0]]),
                                    t([0.0, 0.5]), t([0.0, 0.0])),
        "batch of 4, I = 3, H = 5": random_tensors(cell_shapes(4, 3, 5), seed=0),
    }, switched_off=RNN_BUILT_INS,
        why="torch's RNN kernels are switched off in this test: write the step yourself"),
    "rnn_bptt": Part("test_rnn_bptt", "rnn_bptt", {
        # h = [1/2, 1/2]; d = [1.5, 1], dh0 = 2.25, dW_hh = 0.375, db = 1.875, dW_ih = 1.125 x_1 + 0.75 x_2
        "the hand-worked example: T = 2, one unit": BPTT_TINY,
        "B = 3, T = 6, I = 4, H = 5, a gradient at every step": bptt_inputs(3, 6, 4, 5, seed=0),
        "50 steps, a gradient into the last state only": bptt_inputs(2, 50, 3, 8, seed=1, last_only=True),
    }, call=_bptt_unchanged, switched_off=AUTOGRAD,
        why="autograd is switched off in this test: backpropagate through time by hand"),
    "lstm_step": Part("test_lstm_step", "lstm_step", {
        # i = 0.75, f = 0.25, g = 0.5, o = 0.75 -> c' = 0.875, h' = 0.75 tanh(0.875)
        "the hand-worked example": (t([[1.0]]), t([[1.0]]), t([[2.0]]), torch.zeros(4, 1), torch.zeros(4, 1),
                                    t([LN3, -LN3, LN3 / 2, LN3]), torch.zeros(4)),
        "batch of 4, I = 3, H = 5": random_tensors(cell_shapes(4, 3, 5, gates=4, with_c=True), seed=0),
    }, switched_off=LSTM_BUILT_INS,
        why="torch's LSTM kernels are switched off in this test: write the cell's equations yourself"),
    "tbptt_batches": Part("test_tbptt_batches", "tbptt_batches", {
        "2 streams of 5, bptt 3": (torch.arange(10), 2, 3),
        "3 streams of 3, two tokens dropped": (torch.arange(11), 3, 2),
        "103 random tokens, 4 streams, bptt 5": (
            torch.randint(0, 50, (103,), generator=torch.Generator().manual_seed(0)), 4, 5),
    }),
    "clip_grad_norm": Part("test_clip_grad_norm", "clip_grad_norm", {
        "norm 5 clipped to 1": ([t([3.0]), t([4.0])], 1.0),
        "norm 5 under max_norm 10": ([t([3.0]), t([4.0])], 10.0),
        "three tensors, clipped": (list(random_tensors([(3, 4), (4,), (2, 2, 3)], seed=0)), 1.0),
        "three tensors, not clipped": (list(random_tensors([(3, 4), (4,), (2, 2, 3)], seed=0)), 100.0),
    }, call=_clip_unchanged, switched_off=CLIP_BUILT_INS,
        why="torch's gradient clipping is switched off in this test: compute the global norm and scale yourself"),
    "gru_step": Part("test_gru_step", "gru_step", {
        # r = 0.5, z = 0.25, n = tanh(0.5 ln 3) = 0.5 -> h' = 0.75 * 0.5 + 0.25 * 2
        "the hand-worked example": (t([[1.0]]), t([[2.0]]), torch.zeros(3, 1), torch.zeros(3, 1),
                                    t([0.0, -LN3, 0.0]), t([0.0, 0.0, LN3])),
        "batch of 4, I = 3, H = 5": random_tensors(cell_shapes(4, 3, 5, gates=3), seed=0),
    }, switched_off=GRU_BUILT_INS,
        why="torch's GRU kernels are switched off in this test: write the cell's equations yourself"),
}
