"""Exercise 4 (recurrent networks): the graded parts and their visible cases.

The five parts are independent (none is handed another's output), so a bug in one costs
that part only. Each case's inputs are tensors made here (seeded torch generators) or
literals; the expected values are computed by the grader with torch.nn's cells and
``torch.nn.utils.clip_grad_norm_``.
"""

import math

import torch

from course_lib.grading.kernel import Part


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
