"""course_lib.rnn: cells and layers against torch.nn (float64, loaded state dicts, outputs,
final states and gradients), clipping against torch.nn.utils.clip_grad_norm_, the TBPTT
layout on a hand-checked stream, state carrying and detaching in the loop, chunked
scoring and cached sampling against course_lib.train's uncached versions, the
vanishing-gradient measure against a hand-worked chain rule; bad input."""

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from course_lib.rnn import (GRU, LSTM, RNN, UNBOUNDED_CONTEXT, GRUCell, LSTMCell, RNNCell, RNNConfig,
                            RNNLanguageModel, clip_grad_norm, detach_state, gradient_norms_through_time,
                            tbptt_batches, train_tbptt)
from course_lib.neural_lm import MLPConfig, MLPLanguageModel
from course_lib.train import bits_per_char, evaluate, generate, sequence_logprobs, train

V, D, H, B, T = 7, 5, 4, 3, 6  # vocabulary, input size (torch's I), hidden size, batch, time
TOL = dict(rtol=0, atol=1e-9)  # float64 against torch: only rounding differs

CELLS = {"rnn": (RNNCell, nn.RNNCell), "lstm": (LSTMCell, nn.LSTMCell), "gru": (GRUCell, nn.GRUCell)}
LAYERS = {"rnn": (RNN, nn.RNN), "lstm": (LSTM, nn.LSTM), "gru": (GRU, nn.GRU)}
KINDS = ["rnn", "relu", "lstm", "gru"]  # "relu": the Elman cell with nonlinearity="relu"


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: torch on one thread (conftest.py)


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def make_pair(table, kind, seed=0, **kwargs):
    """(ours, torch's), float64, with torch's parameters loaded into ours."""
    mode = "rnn" if kind == "relu" else kind
    if table is LAYERS:
        kwargs.setdefault("batch_first", True)  # torch's default is time first
    if kind in ("rnn", "relu"):
        kwargs["nonlinearity"] = "relu" if kind == "relu" else "tanh"
    ours_cls, torch_cls = table[mode]
    torch.manual_seed(seed)
    theirs = torch_cls(D, H, **kwargs).double()
    ours = ours_cls(D, H, **kwargs).double()
    ours.load_state_dict(theirs.state_dict())  # strict: same names, same shapes
    return ours, theirs


def make_lm(cell="lstm", layers=1, seed=0, dtype=torch.float64, **kwargs):
    torch.manual_seed(seed)
    return RNNLanguageModel(RNNConfig(vocab_size=V, cell=cell, n_embd=D, hidden_size=H, num_layers=layers,
                                      **kwargs)).to(dtype)


def state_of(kind, shape, seed):
    return (randn(*shape, seed=seed), randn(*shape, seed=seed + 1)) if kind == "lstm" else randn(*shape, seed=seed)


def assert_states_close(a, b):
    for x, y in zip(a if isinstance(a, tuple) else (a,), b if isinstance(b, tuple) else (b,), strict=True):
        torch.testing.assert_close(x, y, **TOL)


# ---------------------------------------------------------------------------- cells
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("kind", KINDS)
def test_cell_matches_torch(kind, bias):
    ours, theirs = make_pair(CELLS, kind, bias=bias)
    assert [(k, v.shape) for k, v in ours.state_dict().items()] == \
        [(k, v.shape) for k, v in theirs.state_dict().items()]
    x = randn(B, D, seed=1)
    h = state_of(kind, (B, H), seed=2)
    for args in [(x,), (x, h)]:  # no state (zeros) and a given one
        assert_states_close(ours(*args), theirs(*args))
    assert_states_close(ours(x[0], None), theirs(x[0]))  # unbatched (I,) -> (H,)
    unbatched_h = tuple(s[0] for s in h) if kind == "lstm" else h[0]
    assert_states_close(ours(x[0], unbatched_h), theirs(x[0], unbatched_h))
    # the gradients of every parameter agree too
    for module in (ours, theirs):
        out = module(x, h)
        (out[0] + 2 * out[1] if kind == "lstm" else out).pow(2).sum().backward()
    for (name, p), q in zip(ours.named_parameters(), theirs.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, **TOL, msg=name)


@pytest.mark.parametrize("kind", ["rnn", "lstm", "gru"])
def test_same_seed_same_initialisation_as_torch(kind):
    torch.manual_seed(3)
    theirs_cell, theirs_layers = CELLS[kind][1](D, H), LAYERS[kind][1](D, H, num_layers=2)
    torch.manual_seed(3)
    ours_cell, ours_layers = CELLS[kind][0](D, H), LAYERS[kind][0](D, H, num_layers=2)
    for ours, theirs in [(ours_cell, theirs_cell), (ours_layers, theirs_layers)]:
        assert ours.state_dict().keys() == theirs.state_dict().keys()
        for key, value in theirs.state_dict().items():
            torch.testing.assert_close(ours.state_dict()[key], value, rtol=0, atol=0)
        assert max(p.abs().max().item() for p in ours.parameters()) <= 1 / math.sqrt(H)


# ---------------------------------------------------------------------------- layers
@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("kind", KINDS)
def test_layers_match_torch(kind, num_layers, bias, batch_first):
    ours, theirs = make_pair(LAYERS, kind, num_layers=num_layers, bias=bias, batch_first=batch_first)
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    assert "weight_ih_l0" in ours.state_dict() and (f"weight_hh_l{num_layers - 1}" in ours.state_dict())
    x = randn(B, T, D, seed=1) if batch_first else randn(T, B, D, seed=1)
    h0 = state_of(kind, (num_layers, B, H), seed=2)
    for args in [(x,), (x, h0)]:
        (out, h_n), (out_t, h_n_t) = ours(*args), theirs(*args)
        assert out.shape == ((B, T, H) if batch_first else (T, B, H)) and out.dtype == torch.float64
        torch.testing.assert_close(out, out_t, **TOL)
        assert_states_close(h_n, h_n_t)
    # backpropagation through time: the same gradients for every weight and the input
    xs = [x.clone().requires_grad_(True) for _ in range(2)]
    for module, xi in zip((ours, theirs), xs):
        out, h_n = module(xi, h0)
        (out.pow(2).sum() + (h_n[1] if kind == "lstm" else h_n).sum()).backward()
    torch.testing.assert_close(xs[0].grad, xs[1].grad, **TOL)
    for (name, p), q in zip(ours.named_parameters(), theirs.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, **TOL, msg=name)


def test_dropout_acts_between_layers_in_training_only():
    ours, theirs = make_pair(LAYERS, "gru", num_layers=2, dropout=0.5)
    x = randn(B, T, D, seed=1)
    ours.eval()
    theirs.eval()
    torch.testing.assert_close(ours(x)[0], theirs(x)[0], **TOL)
    ours.train()
    torch.manual_seed(0)
    assert not torch.allclose(ours(x)[0], theirs(x)[0])


# ---------------------------------------------------------------------------- the language model
@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_model_contract_and_loss(cell):
    model = make_lm(cell, layers=2, dtype=torch.float32)
    idx = torch.randint(V, (B, T), generator=torch.Generator().manual_seed(0))
    targets = idx.roll(-1, dims=1)
    targets[0, :2] = -1
    logits, loss = model(idx, targets)
    assert logits.shape == (B, T, V) and logits.dtype == torch.float32 and loss.dim() == 0
    keep = targets >= 0
    torch.testing.assert_close(loss, F.cross_entropy(logits[keep], targets[keep]))
    assert model(idx)[1] is None
    assert model.get_block_size() == UNBOUNDED_CONTEXT
    assert model.num_parameters() == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_chunks_with_carried_state_equal_one_pass_and_state_matters(cell):
    model = make_lm(cell, layers=2)
    idx = torch.randint(V, (B, 9), generator=torch.Generator().manual_seed(1))
    full, state_full = model.forward_with_state(idx)
    first, state = model.forward_with_state(idx[:, :4])
    second, state = model.forward_with_state(idx[:, 4:], state)
    torch.testing.assert_close(torch.cat([first, second], dim=1), full, **TOL)
    assert_states_close(state, state_full)
    fresh, _ = model.forward_with_state(idx[:, 4:])  # the same tokens from a zero state
    assert (fresh - second).abs().max() > 1e-3
    torch.testing.assert_close(model(idx[:, 4:], state=model.forward_with_state(idx[:, :4])[1])[0], second, **TOL)


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_fused_model_gives_the_same_logits(cell):
    ours = make_lm(cell, layers=2)
    fused = make_lm(cell, layers=2, fused=True)
    fused.load_state_dict(ours.state_dict())
    assert isinstance(fused.rnn, nn.RNNBase) and not isinstance(ours.rnn, nn.RNNBase)
    idx = torch.randint(V, (B, T), generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(fused(idx)[0], ours(idx)[0], **TOL)


@pytest.mark.parametrize("chunk_size", [1, 5, 40])
def test_chunked_scoring_equals_one_pass(chunk_size):
    model = make_lm("gru", layers=2)
    ids = torch.randint(V, (23,), generator=torch.Generator().manual_seed(3))
    chunked = model.sequence_logprobs(ids, start_id=0, chunk_size=chunk_size)
    assert chunked.shape == (23,) and chunked.dtype == torch.float64
    one_pass = sequence_logprobs(model, ids, start_id=0)  # block size unbounded: one window
    torch.testing.assert_close(chunked, one_pass, **TOL)
    logits, _ = model(torch.cat([torch.tensor([0]), ids[:-1]])[None])  # by hand
    by_hand = F.log_softmax(logits[0], dim=-1)[torch.arange(23), ids]
    torch.testing.assert_close(chunked, by_hand, **TOL)
    bpc = bits_per_char(model, [ids[:10], ids[10:]], start_id=0)
    expected = -(model.sequence_logprobs(ids[:10], 0).sum() + model.sequence_logprobs(ids[10:], 0).sum())
    assert bpc == pytest.approx(expected.item() / math.log(2) / 23, rel=1e-12)


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("chunk_size", [3, 50])
def test_texts_side_by_side_equal_each_text_alone(cell, chunk_size):
    model = make_lm(cell, layers=2, seed=6)
    gen = torch.Generator().manual_seed(7)
    texts = [torch.randint(V, (n,), generator=gen) for n in (17, 4, 30, 1)]  # unequal lengths: padding
    together = model.texts_logprobs(texts, start_id=2, chunk_size=chunk_size)
    assert [t.shape for t in together] == [(17,), (4,), (30,), (1,)]
    for ids, lp in zip(texts, together):
        torch.testing.assert_close(lp, sequence_logprobs(model, ids, start_id=2), **TOL)  # the generic path
    total = -sum(lp.sum() for lp in together).item() / math.log(2) / sum(len(t) for t in texts)
    assert bits_per_char(model, texts, start_id=2) == pytest.approx(total, rel=1e-12)
    assert model.texts_logprobs([], start_id=2) == []
    with pytest.raises(ValueError, match="start_id"):
        model.texts_logprobs(texts, start_id=V)


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_cached_generate_equals_uncached(cell):
    model = make_lm(cell, layers=2, seed=4)
    prompt = torch.tensor([[1, 2, 3], [4, 5, 6]])
    greedy = model.generate(prompt, 12, top_k=1)
    assert greedy.shape == (2, 15) and torch.equal(greedy[:, :3], prompt)
    assert torch.equal(greedy, generate(model, prompt, 12, top_k=1))
    sampled = model.generate(prompt, 12, temperature=0.8, generator=torch.Generator().manual_seed(5))
    expected = generate(model, prompt, 12, temperature=0.8, generator=torch.Generator().manual_seed(5))
    assert torch.equal(sampled, expected)
    assert torch.equal(model.generate(prompt, 0), prompt)


# ---------------------------------------------------------------------------- truncated BPTT
def test_tbptt_batches_layout():
    chunks = [(x.tolist(), y.tolist()) for x, y in tbptt_batches(torch.arange(21), batch_size=2, bptt=4)]
    # 21 tokens, 2 streams of 10 (token 20 dropped): 0..9 and 10..19, 9 inputs each
    assert chunks == [
        ([[0, 1, 2, 3], [10, 11, 12, 13]], [[1, 2, 3, 4], [11, 12, 13, 14]]),
        ([[4, 5, 6, 7], [14, 15, 16, 17]], [[5, 6, 7, 8], [15, 16, 17, 18]]),
        ([[8], [18]], [[9], [19]]),
    ]
    exact = [x.tolist() for x, _ in tbptt_batches(torch.arange(9), batch_size=1, bptt=4)]
    assert exact == [[[0, 1, 2, 3]], [[4, 5, 6, 7]]]  # 8 inputs: two full chunks, nothing shorter


def test_detached_state_cuts_the_graph():
    model = make_lm("lstm")
    x, y = torch.tensor([[1, 2, 3, 4]]), torch.tensor([[2, 3, 4, 5]])
    logits, state = model.forward_with_state(x)
    F.cross_entropy(logits[0], y[0]).backward()
    with pytest.raises(RuntimeError, match="backward through the graph a second time"):
        logits, _ = model.forward_with_state(y, state)  # not detached: backward runs into chunk 1
        F.cross_entropy(logits[0], y[0]).backward()
    state = detach_state(state)
    assert all(s.grad_fn is None and not s.requires_grad for s in state)
    model.zero_grad()
    logits, _ = model.forward_with_state(y, state)
    F.cross_entropy(logits[0], y[0]).backward()
    with_state = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()  # the same numbers as a fresh leaf: no trace of chunk 1's graph is left
    logits, _ = model.forward_with_state(y, tuple(s.clone() for s in state))
    F.cross_entropy(logits[0], y[0]).backward()
    for a, b in zip(with_state, (p.grad for p in model.parameters()), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


class Spy(nn.Module):
    """Records the state handed to every call of forward_with_state and the one returned."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.calls = inner, []

    def get_block_size(self):
        return self.inner.get_block_size()

    def forward(self, idx, targets=None):
        return self.inner(idx, targets)

    def forward_with_state(self, idx, state=None):
        logits, new = self.inner.forward_with_state(idx, state)
        if self.training:
            self.calls.append((idx.clone(), state, new))
        return logits, new


def test_train_tbptt_carries_the_state_detached_and_resets_each_epoch():
    data = torch.arange(21) % V  # 2 streams, 3 chunks per epoch (as in the layout test)
    spy = Spy(make_lm("gru", dtype=torch.float32))
    history = train_tbptt(spy, data, steps=7, batch_size=2, bptt=4, eval_every=100, eval_batches=1,
                          device="cpu", progress=False)
    assert len(spy.calls) == 7 and history.tokens_seen == 2 * (4 + 4 + 1) * 2 + 2 * 4
    expected_x = [x for x, _ in tbptt_batches(data, 2, 4)] * 3
    for i, (x, given, _) in enumerate(spy.calls):
        assert torch.equal(x, expected_x[i])
        if i % 3 == 0:  # the first chunk of an epoch starts from zeros
            assert given is None
        else:  # the state the chunk before returned, with the same numbers and no graph
            prev = spy.calls[i - 1][2]
            assert given.grad_fn is None and prev.grad_fn is not None
            torch.testing.assert_close(given, prev, rtol=0, atol=0)


def test_train_tbptt_learns_and_fills_history():
    data = torch.tensor([0, 1, 2, 3, 4, 5, 6, 1, 3, 5] * 30)
    model = make_lm("lstm", dtype=torch.float32)
    history = train_tbptt(model, data, data[:100], epochs=4, batch_size=4, bptt=8, lr=2e-2, eval_every=20,
                          eval_batches=2, device="cpu", progress=False)
    assert history.steps[0] == 0 and history.steps[-1] == len(history.step_losses) == 4 * 10
    assert len(history.train_loss) == len(history.valid_loss) == len(history.steps)
    assert history.valid_loss[-1] < 0.5 * history.valid_loss[0]
    assert not history.diverged and history.seconds > 0
    assert model.training  # the mode is restored


def test_train_and_evaluate_ask_the_rnn_for_a_block_size():
    """The RNN sees the whole past: no window length to default to, so a clear error, not a
    window of UNBOUNDED_CONTEXT tokens; with an explicit block_size both run."""
    model, data = make_lm(dtype=torch.float32), torch.arange(50) % V
    for call in (lambda: train(model, data, steps=1, progress=False), lambda: evaluate(model, data)):
        with pytest.raises(ValueError, match=r"RNNLanguageModel sees the whole past .* pass block_size"):
            call()
    history = train(model, data, steps=2, block_size=8, batch_size=2, eval_batches=1, device="cpu", progress=False)
    assert history.steps == [0, 2] and math.isfinite(evaluate(model, data, block_size=8, n_batches=2))


# ---------------------------------------------------------------------------- gradients
@pytest.mark.parametrize("max_norm", [0.5, 1e3])  # clipped, and left alone
def test_clip_grad_norm_matches_torch(max_norm):
    params = [[nn.Parameter(randn(3, 4, seed=s)) for s in range(3)] for _ in range(2)]
    for group in params:
        for p, seed in zip(group[:2], (5, 6)):  # the third has no gradient
            p.grad = randn(*p.shape, seed=seed)
    total = clip_grad_norm(params[0], max_norm)
    expected = torch.nn.utils.clip_grad_norm_(params[1], max_norm)
    torch.testing.assert_close(total, expected, **TOL)
    for ours, theirs in zip(params[0][:2], params[1][:2]):
        torch.testing.assert_close(ours.grad, theirs.grad, **TOL)
    assert params[0][2].grad is None
    if max_norm < 1:
        assert math.sqrt(sum(p.grad.pow(2).sum().item() for p in params[0][:2])) == pytest.approx(max_norm, rel=1e-5)


def test_clip_grad_norm_worked_example():
    p = nn.Parameter(torch.zeros(2))
    p.grad = torch.tensor([3.0, 4.0])
    assert clip_grad_norm(p, 1.0).item() == 5.0
    torch.testing.assert_close(p.grad, torch.tensor([0.6, 0.8]))


def test_gradient_norms_hand_worked_for_one_unit():
    """h_t = tanh(a x_t + w h_{t-1}): dh_T/dx_t = a (1 - h_t²) prod_{s>t} w (1 - h_s²)."""
    cell = RNNCell(1, 1, bias=False).double()
    a, w = 0.9, 0.7
    with torch.no_grad():
        cell.weight_ih.fill_(a)
        cell.weight_hh.fill_(w)
    xs = [0.5, -1.0, 2.0, 0.3]
    hs, h = [], 0.0
    for x in xs:
        h = math.tanh(a * x + w * h)
        hs.append(h)
    expected = []
    for t in range(len(xs)):
        d = a * (1 - hs[t] ** 2)
        for s in range(t + 1, len(xs)):
            d *= w * (1 - hs[s] ** 2)
        expected.append(abs(d))
    norms = gradient_norms_through_time(cell, torch.tensor(xs, dtype=torch.float64)[None, :, None])
    torch.testing.assert_close(norms, torch.tensor(expected, dtype=torch.float64), **TOL)


def test_gradient_norms_against_torch_jacobian():
    ours, theirs = make_pair(CELLS, "lstm")
    x = randn(B, 8, D, seed=7)
    full = torch.autograd.functional.jacobian(lambda z: run_torch_lstm(theirs, z), x)  # (B, T, I)
    expected = full.norm(dim=(0, 2))
    torch.testing.assert_close(gradient_norms_through_time(ours, x), expected, **TOL)
    layers = nn.LSTM(D, H).double()  # time first: gradient_norms_through_time reads x as (B, T, I) all the same
    for name, p in theirs.named_parameters():
        getattr(layers, name + "_l0").data.copy_(p.data)
    torch.testing.assert_close(gradient_norms_through_time(layers, x), expected, **TOL)
    model = make_lm("rnn")
    idx = torch.randint(V, (2, 30), generator=torch.Generator().manual_seed(8))
    norms = gradient_norms_through_time(model, idx)
    assert norms.shape == (30,) and norms[-1] > 0 and model.training


def run_torch_lstm(cell, x):
    state = None
    for t in range(x.shape[1]):
        state = cell(x[:, t], state)
    return state[0].sum()


# ---------------------------------------------------------------------------- bad input
def test_errors_teach():
    layers = LSTM(10, 16, num_layers=2)
    with pytest.raises(ValueError, match=r"expected x of shape \(B, T, 10\), got \(4, 7, 12\)"):
        layers(torch.randn(4, 7, 12))
    with pytest.raises(ValueError, match=r"expected x of shape \(T, B, 10\), got \(4, 7\)"):
        GRU(10, 16, batch_first=False)(torch.randn(4, 7))
    with pytest.raises(ValueError, match=r"expected h0 of shape \(num_layers, B, H\) = \(2, 4, 16\), got \(1, 4, 16\)"):
        layers(torch.randn(4, 7, 10), (torch.zeros(1, 4, 16), torch.zeros(2, 4, 16)))
    with pytest.raises(TypeError, match=r"expected the LSTM state as a tuple \(h0, c0\)"):
        layers(torch.randn(4, 7, 10), torch.zeros(2, 4, 16))
    with pytest.raises(ValueError, match=r"expected x of shape \(B, 10\) or \(10,\), got \(4, 12\)"):
        RNNCell(10, 16)(torch.randn(4, 12))
    with pytest.raises(ValueError, match=r"expected h of shape \(B, H\) = \(4, 16\), got \(3, 16\)"):
        GRUCell(10, 16)(torch.randn(4, 10), torch.zeros(3, 16))
    with pytest.raises(TypeError, match="token ids go through an embedding first"):
        RNN(10, 16)(torch.zeros(4, 7, 10, dtype=torch.long))
    with pytest.raises(ValueError, match="unknown cell 'transformer'; expected one of 'rnn', 'lstm', 'gru'"):
        RNNConfig(vocab_size=V, cell="transformer")
    with pytest.raises(ValueError, match="unknown nonlinearity 'sigmoid'"):
        RNNCell(10, 16, nonlinearity="sigmoid")
    with pytest.raises(ValueError, match="dropout must be a probability"):
        RNNConfig(vocab_size=V, dropout=1.5)
    with pytest.raises(ValueError, match=r"idx holds ids from 0 to 9; the vocabulary has ids 0..6"):
        make_lm()(torch.tensor([[0, 9]]))
    with pytest.raises(ValueError, match="need 8"):
        tbptt_batches(torch.arange(7), batch_size=4, bptt=2)
    with pytest.raises(TypeError, match="needs a stateful model with forward_with_state"):
        train_tbptt(MLPLanguageModel(MLPConfig(vocab_size=V)), torch.arange(50) % V, steps=1)
    with pytest.raises(ValueError, match="give steps or epochs"):
        train_tbptt(make_lm(), torch.arange(50) % V, steps=1, epochs=1)
    with pytest.raises(ValueError, match="weight_decay must be a number >= 0"):
        train_tbptt(make_lm(), torch.arange(50) % V, steps=1, weight_decay=-0.1)
    with pytest.raises(ValueError, match="max_norm must be a finite number > 0"):
        clip_grad_norm([], 0.0)
