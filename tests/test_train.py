"""course_lib.train: batches, evaluation, the training loop and its History, sampling,
and exact sequence scoring against a slow position-by-position loop; bad input. Chapter 7's
recipe: the optimizer's parameter groups, warm-up and cosine decay against the formula,
gradient accumulation against one large batch, autocast, and checkpoints (an interrupted
and resumed run against an uninterrupted one, weights_only loading, atomic writes)."""

import copy
import functools
import math
import os
import random
import warnings

import matplotlib
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import numpy as np

from course_lib.gpt import GPT, GPTConfig
from course_lib.neural_lm import BigramNet, MLPConfig, MLPLanguageModel
from course_lib.train import (CHECKPOINT_NAME, History, bits_per_char, configure_optimizer, evaluate, generate,
                              get_batch, load_checkpoint, lr_sweep, resolve_precision, save_checkpoint,
                              sequence_logprobs, train, warmup_cosine)

matplotlib.use("Agg")

V = 7


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: torch on one thread (conftest.py)


def make_mlp(k=3, seed=0, vocab_size=V):
    torch.manual_seed(seed)
    return MLPLanguageModel(MLPConfig(vocab_size=vocab_size, context=k, n_embd=4, n_hidden=16))


def random_bigram(seed=0):
    model = BigramNet(V)
    with torch.no_grad():
        model.W.copy_(torch.randn(V, V, generator=torch.Generator().manual_seed(seed)))
    return model


def random_ids(n, seed=0):
    return torch.randint(V, (n,), generator=torch.Generator().manual_seed(seed))


REPEAT = torch.tensor([0, 1, 2, 3, 4, 5, 6, 1, 3, 5] * 40)  # a repetitive sequence, 400 tokens


class Strict(nn.Module):
    """Wraps a model and refuses inputs longer than its block size, as a Transformer does."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def get_block_size(self):
        return self.inner.get_block_size()

    def forward(self, idx, targets=None):
        assert idx.shape[1] <= self.get_block_size(), f"got T={idx.shape[1]}"
        return self.inner(idx, targets)


class ContextProbe(nn.Module):
    """No parameters; at offset o of its input it gives token 0 the logit min(o + 1, block)
    and token 1 the logit 0: the score of a 0 tells how much context the position saw."""

    def __init__(self, block):
        super().__init__()
        self.block = block

    def get_block_size(self):
        return self.block

    def forward(self, idx, targets=None):
        B, T = idx.shape
        logits = torch.zeros(B, T, 2)
        logits[..., 0] = torch.clamp(torch.arange(T) + 1, max=self.block).float()
        return logits, None


# ---------------------------------------------------------------------------- get_batch
def test_get_batch_windows_and_shift():
    data = torch.arange(50) % V
    g = torch.Generator().manual_seed(0)
    x, y = get_batch(data, block_size=8, batch_size=5, generator=g)
    assert x.shape == y.shape == (5, 8) and x.dtype == y.dtype == torch.int64
    positions = torch.arange(50)
    for row_x, row_y in zip(*get_batch(positions, 8, 5, torch.Generator().manual_seed(0))):
        start = row_x[0].item()
        assert row_x.tolist() == list(range(start, start + 8))  # a contiguous window
        assert row_y.tolist() == list(range(start + 1, start + 9))  # shifted by one
    assert torch.equal(x, get_batch(data, 8, 5, torch.Generator().manual_seed(0))[0])  # seeded
    x, y = get_batch(positions[:9], 8, 3)  # the only window there is
    assert x.tolist() == [list(range(8))] * 3 and y.tolist() == [list(range(1, 9))] * 3


@pytest.mark.parametrize("data, block, batch, error, match", [
    (torch.zeros(2, 10, dtype=torch.long), 4, 2, ValueError, r"shape \(N,\).*got \(2, 10\)"),
    (torch.zeros(10), 4, 2, TypeError, r"integer token ids, got dtype torch.float32"),
    ([1, 2, 3, 4, 5, 6], 2, 2, TypeError, r"1-D torch tensor of token ids"),
    (torch.arange(4), 4, 2, ValueError, r"holds 4 tokens; a window of block_size=4 needs at least 5"),
    (torch.arange(0), 1, 1, ValueError, r"holds 0 tokens"),
    (torch.arange(10), 0, 2, ValueError, r"block_size must be an integer > 0"),
    (torch.arange(10), 2, -1, ValueError, r"batch_size must be an integer > 0"),
])
def test_get_batch_bad_input(data, block, batch, error, match):
    with pytest.raises(error, match=match):
        get_batch(data, block, batch)


# ---------------------------------------------------------------------------- evaluate
def test_evaluate_is_the_mean_loss_of_seeded_batches_without_grad():
    model = make_mlp()
    model.train()
    got = evaluate(model, REPEAT, block_size=12, batch_size=4, n_batches=5, seed=3)
    g = torch.Generator().manual_seed(3)
    losses = []
    for _ in range(5):
        x, y = get_batch(REPEAT, 12, 4, g)
        logits, _ = model(x, y)
        losses.append(F.cross_entropy(logits.reshape(-1, V), y.reshape(-1)).item())
    assert got == pytest.approx(sum(losses) / 5, rel=1e-6)
    assert got == evaluate(model, REPEAT, 12, 4, 5, seed=3)  # the same batches again
    assert got != evaluate(model, REPEAT, 12, 4, 5, seed=4)
    assert model.training  # mode restored
    assert all(p.grad is None for p in model.parameters())


# ---------------------------------------------------------------------------- scoring
def slow_logprobs(model, ids, start_id):
    """Token j given exactly its min(j + 1, block) previous tokens (the start token first)."""
    seq = [start_id] + ids.tolist()
    block = model.get_block_size()
    out = []
    with torch.no_grad():
        for j in range(len(ids)):
            context = torch.tensor([seq[max(0, j + 1 - block): j + 1]])
            logits, _ = model(context)
            out.append(F.log_softmax(logits[0, -1].double(), dim=-1)[ids[j]].item())
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize("make", [lambda: make_mlp(k=1), lambda: make_mlp(k=3), lambda: make_mlp(k=5),
                                  random_bigram], ids=["mlp1", "mlp3", "mlp5", "bigram"])
@pytest.mark.parametrize("n", [1, 2, 4, 23])
@pytest.mark.parametrize("window, batch_size", [(None, 64), (None, 2), (8, 3), (100, 1)])
def test_sequence_logprobs_equal_slow_loop(make, n, window, batch_size):
    model = make()
    ids = random_ids(n, seed=n)
    if window is not None and window < model.get_block_size():
        window = model.get_block_size()
    got = sequence_logprobs(model, ids, start_id=2, batch_size=batch_size, window=window)
    assert got.shape == (n,) and got.dtype == torch.float64
    torch.testing.assert_close(got, slow_logprobs(model, ids, 2), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("block", [1, 2, 5])
@pytest.mark.parametrize("n", [1, 4, 5, 6, 17])
@pytest.mark.parametrize("extra", [0, 1, 7])
def test_every_token_is_scored_once_with_its_full_context(block, n, extra):
    """The probe's score of token j reveals the context it saw: it must be min(j + 1, block)."""
    probe = ContextProbe(block)
    got = sequence_logprobs(probe, [0] * n, start_id=1, window=block + extra, batch_size=3)
    seen = torch.clamp(torch.arange(n) + 1, max=block).double()
    expected = -torch.log1p(torch.exp(-seen))  # log softmax([c, 0])[0]
    torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("block, context", [(b, c) for b in (1, 2, 5, 8) for c in (1, 2, 4, 8) if c <= b])
@pytest.mark.parametrize("n", [1, 5, 17, 40])
@pytest.mark.parametrize("extra", [0, 3])
def test_a_shorter_context_scores_every_token_once_with_at_least_that_context(block, n, extra, context):
    probe = ContextProbe(block)
    got = sequence_logprobs(probe, [0] * n, start_id=1, window=block + extra, context=context, batch_size=3)
    assert got.shape == (n,)
    seen = -torch.log(torch.expm1(-got))  # invert log softmax([c, 0])[0] = -log(1 + e^-c)
    torch.testing.assert_close(seen, seen.round(), atol=1e-6, rtol=0)
    j = torch.arange(n).double()
    assert (seen <= torch.clamp(j + 1, max=block) + 1e-6).all()  # never more than exists or fits
    assert (seen >= torch.clamp(j + 1, max=context) - 1e-6).all()  # never less than asked
    if context == block:
        torch.testing.assert_close(got, sequence_logprobs(probe, [0] * n, start_id=1, window=block + extra))


def test_a_shorter_context_reads_a_gpt_text_in_fewer_windows():
    model = make_gpt()  # block 8
    ids = random_ids(60)
    calls = []
    model.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[0]))
    full = sequence_logprobs(model, ids, start_id=0, batch_size=1)
    n_full, calls[:] = len(calls), []
    half = sequence_logprobs(model, ids, start_id=0, batch_size=1, context=4)
    assert n_full == 60 - 8 + 1 and len(calls) == math.ceil((60 - 8) / 5) + 1  # windows of 8, 5 new positions each
    torch.testing.assert_close(full[:8], half[:8])  # the first window is the same
    with pytest.raises(ValueError, match=r"context=9 is longer than the model's block_size=8"):
        sequence_logprobs(model, ids, start_id=0, context=9)
    assert bits_per_char(model, [ids], 0, context=8) == pytest.approx(-full.sum().item() / math.log(2) / 60)


def test_sequence_logprobs_default_window_fits_the_block_and_restores_mode():
    model = Strict(make_mlp(k=3))
    model.train()
    ids = random_ids(30)
    got = sequence_logprobs(model, ids, start_id=0)
    torch.testing.assert_close(got, slow_logprobs(model.inner, ids, 0), rtol=1e-5, atol=1e-6)
    assert model.training and model.inner.training


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(ids=[]), ValueError, r"ids holds 0 tokens"),
    (dict(ids=torch.zeros(2, 3, dtype=torch.long)), ValueError, r"shape \(N,\)"),
    (dict(ids=torch.tensor([0.5, 1.0])), TypeError, r"integer token ids"),
    (dict(start_id=-1), ValueError, r"start_id must be a token id"),
    (dict(window=2), ValueError, r"window=2 is shorter than the model's block_size=3"),
    (dict(batch_size=0), ValueError, r"batch_size must be an integer > 0"),
])
def test_sequence_logprobs_bad_input(kwargs, error, match):
    args = dict(ids=[1, 2, 3], start_id=0) | kwargs
    with pytest.raises(error, match=match):
        sequence_logprobs(make_mlp(k=3), **args)


def test_bits_per_char_of_a_uniform_model_is_log2_v():
    model = BigramNet(V)  # W = 0: every row uniform
    texts = [random_ids(40, 1), random_ids(3, 2), [4]]
    assert bits_per_char(model, texts, start_id=0) == pytest.approx(math.log2(V))
    # a subword model's caller gives the number of characters: twice as many, half the bits each
    assert bits_per_char(model, texts, start_id=0, n_chars=2 * 44) == pytest.approx(math.log2(V) / 2)


def test_bits_per_char_sums_over_texts():
    model = make_mlp(k=2)
    texts = [random_ids(15, 1), random_ids(0, 9), random_ids(6, 2)]  # an empty text adds nothing
    nats = sum(-slow_logprobs(model, t, 3).sum().item() for t in texts if len(t))
    assert bits_per_char(model, texts, start_id=3, window=10) == pytest.approx(nats / math.log(2) / 21, rel=1e-6)


@pytest.mark.parametrize("texts, kwargs, error, match", [
    ([], {}, ValueError, r"texts_ids is empty"),
    ([[], []], {}, ValueError, r"the texts hold no tokens"),
    (torch.tensor([1, 2, 3]), {}, TypeError, r"for a single text pass \[ids\]"),
    ([1, 2, 3], {}, TypeError, r"for a single text pass \[ids\]"),
    ([[1, 2, 3]], dict(n_chars=0), ValueError, r"n_chars must be the number of characters"),
])
def test_bits_per_char_bad_input(texts, kwargs, error, match):
    with pytest.raises(error, match=match):
        bits_per_char(BigramNet(V), texts, start_id=0, **kwargs)


# ---------------------------------------------------------------------------- train
def run(model=None, **kwargs):
    args = dict(steps=60, batch_size=8, block_size=16, lr=3e-2, eval_every=20, eval_batches=3,
                progress=False, device="cpu") | kwargs
    return train(model if model is not None else make_mlp(), REPEAT, **args)


def test_train_reduces_the_loss_and_keeps_a_history():
    model = make_mlp()
    history = run(model, valid_data=REPEAT[:100])
    assert isinstance(history, History)
    assert history.steps == [0, 20, 40, 60]
    assert len(history.train_loss) == len(history.valid_loss) == 4
    assert len(history.step_losses) == 60
    assert history.tokens_seen == 60 * 8 * 16
    assert history.seconds > 0 and not history.diverged
    assert history.train_loss[0] == pytest.approx(math.log(V), abs=0.3)  # near uniform at the start
    assert history.train_loss[-1] < 0.3 * history.train_loss[0]
    assert history.best_valid == min(history.valid_loss)
    assert history.train_loss[-1] == pytest.approx(evaluate(model, REPEAT, 16, 8, 3, seed=1338), rel=1e-6)


def test_train_is_deterministic_for_a_seed():
    a, b = run(make_mlp(seed=0), seed=5), run(make_mlp(seed=0), seed=5)
    assert a.step_losses == b.step_losses and a.train_loss == b.train_loss
    c = run(make_mlp(seed=0), seed=6)
    assert c.step_losses != a.step_losses


def test_train_stops_at_the_time_budget():
    history = run(steps=10**6, max_seconds=0.3, eval_every=10**5)
    done = len(history.step_losses)
    assert 0 < done < 10**6
    assert history.seconds >= 0.3
    assert history.steps == [0, done]  # evaluated at the end all the same
    assert history.tokens_seen == done * 8 * 16


def test_block_size_defaults_to_the_models():
    history = run(make_mlp(k=3), steps=2, block_size=None)
    assert history.tokens_seen == 2 * 8 * 3


def test_lr_schedule_multiplies_the_learning_rate():
    model = make_mlp()
    before = [p.detach().clone() for p in model.parameters()]
    seen = []
    run(model, steps=5, lr_schedule=lambda step: seen.append(step) or 0.0)
    assert seen == [0, 1, 2, 3, 4]
    assert all(torch.equal(p, q) for p, q in zip(before, model.parameters()))  # lr 0: nothing moved


def test_grad_clip_bounds_the_step():
    model = make_mlp()
    before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    run(model, steps=1, optimizer=opt, grad_clip=1e-3)
    after = torch.cat([p.detach().flatten() for p in model.parameters()])
    assert 0 < (after - before).norm() <= 1e-3 * (1 + 1e-5)


def test_a_diverging_run_stops_with_a_warning():
    class Exploding(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.ones(()))

        def get_block_size(self):
            return 2

        def forward(self, idx, targets=None):
            logits = torch.zeros(*idx.shape, V) * self.w
            return logits, self.w * float("inf")

    with pytest.warns(RuntimeWarning, match="training stopped"):
        history = run(Exploding())
    assert history.diverged and len(history.step_losses) == 1 and history.steps == [0]


def test_train_restores_the_mode_and_weight_decay_shrinks_weights():
    model = make_mlp()
    model.eval()
    run(model, steps=3)
    assert not model.training
    small = make_mlp(seed=1)
    run(small, steps=40, weight_decay=5.0, lr=1e-2)
    large = make_mlp(seed=1)
    run(large, steps=40, lr=1e-2)
    assert small.hidden.weight.norm() < large.hidden.weight.norm()


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(steps=0), ValueError, r"steps must be an integer > 0, got 0"),
    (dict(steps=2.5), ValueError, r"steps must be an integer > 0"),
    (dict(batch_size=0), ValueError, r"batch_size must be an integer > 0"),
    (dict(eval_every=0), ValueError, r"eval_every must be an integer > 0"),
    (dict(lr=-1.0), ValueError, r"lr must be a finite number > 0"),
    (dict(max_seconds=0), ValueError, r"max_seconds must be a finite number > 0"),
    (dict(grad_clip=float("nan")), ValueError, r"grad_clip must be a finite number > 0"),
    (dict(weight_decay=-0.1), ValueError, r"weight_decay must be a number >= 0"),
    (dict(block_size=500), ValueError, r"train_data holds 400 tokens; at least 501"),
    (dict(valid_data=torch.arange(5)), ValueError, r"valid_data holds 5 tokens; at least 17"),
    (dict(valid_data=[1, 2, 3]), TypeError, r"valid_data as a 1-D torch tensor"),
])
def test_train_bad_input(kwargs, error, match):
    with pytest.raises(error, match=match):
        run(**kwargs)


def test_train_rejects_what_is_not_a_language_model():
    with pytest.raises(TypeError, match=r"get_block_size\(\)"):
        train(nn.Linear(2, 2), REPEAT, steps=1, progress=False)
    with pytest.raises(TypeError, match=r"train_data as a 1-D torch tensor"):
        train(make_mlp(), REPEAT.tolist(), steps=1, progress=False)


def test_history_plot_labels_its_axes():
    history = run(valid_data=REPEAT[:100], steps=20, eval_every=10)
    ax = history.plot(title="MLP on a repetitive sequence")
    assert ax.get_xlabel() == "step" and ax.get_ylabel() == "loss (nats per token)"
    assert ax.get_title() == "MLP on a repetitive sequence"
    assert [line.get_label() for line in ax.get_lines()] == ["training batch", "train", "validation"]
    assert list(ax.get_lines()[1].get_xdata()) == [0, 10, 20]
    matplotlib.pyplot.close(ax.figure)


def test_best_valid_without_validation_data_says_so():
    with pytest.raises(ValueError, match="pass valid_data"):
        _ = History(steps=[0], train_loss=[1.0]).best_valid


def test_progress_bar_shows_the_loss(capsys):
    run(steps=3, progress=True)
    err = capsys.readouterr().err
    assert "training" in err and "loss=" in err


# ---------------------------------------------------------------------------- lr_sweep
def test_lr_sweep_runs_each_rate_from_the_same_start():
    kwargs = dict(batch_size=8, block_size=16, device="cpu")
    losses = lr_sweep(lambda: make_mlp(seed=0), REPEAT, [1e-5, 3e-2], steps=40, **kwargs)
    assert list(losses) == [1e-5, 3e-2]
    assert losses[3e-2] < losses[1e-5] - 0.5
    again = lr_sweep(lambda: make_mlp(seed=0), REPEAT, [3e-2], steps=40, **kwargs)
    assert again[3e-2] == losses[3e-2]
    with_valid = lr_sweep(lambda: make_mlp(seed=0), REPEAT, [3e-2], steps=40, valid_data=REPEAT[:50], **kwargs)
    assert with_valid[3e-2] != losses[3e-2]  # the validation loss, not the training loss
    with pytest.raises(ValueError, match="lrs is empty"):
        lr_sweep(make_mlp, REPEAT, [], steps=1)


# ---------------------------------------------------------------------------- generate
def test_generate_follows_a_deterministic_bigram():
    model = BigramNet(V)
    with torch.no_grad():
        model.W.fill_(-30.0)
        model.W[torch.arange(V), (torch.arange(V) + 1) % V] = 30.0  # v -> v + 1 almost surely
    out = generate(model, torch.tensor([[0], [5]]), max_new_tokens=8, generator=torch.Generator().manual_seed(0))
    assert out.tolist() == [[i % V for i in range(9)], [(5 + i) % V for i in range(9)]]


def test_generate_greedy_crops_the_context_and_is_seeded():
    model = Strict(make_mlp(k=3))
    prompt = torch.tensor([[1, 2, 3, 4, 5]])
    out = generate(model, prompt, max_new_tokens=6, top_k=1)
    assert out.shape == (1, 11) and torch.equal(out[:, :5], prompt)
    expected = prompt.clone()
    with torch.no_grad():
        for _ in range(6):
            logits, _ = model.inner(expected[:, -3:])
            expected = torch.cat([expected, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(out, expected)
    a = generate(model, prompt.repeat(4, 1), 20, temperature=2.0, generator=torch.Generator().manual_seed(1))
    b = generate(model, prompt.repeat(4, 1), 20, temperature=2.0, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and a.max() < V
    assert torch.equal(generate(model, prompt, 0), prompt)


def test_generate_top_k_keeps_the_k_likeliest():
    model = random_bigram(3)
    out = generate(model, torch.zeros(200, 1, dtype=torch.long), 1, top_k=2,
                   generator=torch.Generator().manual_seed(0))
    allowed = set(model.W[0].topk(2).indices.tolist())
    assert set(out[:, 1].tolist()) == allowed


@pytest.mark.parametrize("idx, kwargs, match", [
    (torch.tensor([1, 2]), {}, r"expected idx of shape \(B, T\).*got \(2,\)"),
    (torch.zeros(1, 0, dtype=torch.long), {}, r"no tokens to continue"),
    (torch.tensor([[1]]), dict(temperature=0.0), r"temperature must be a finite number > 0"),
    (torch.tensor([[1]]), dict(top_k=0), r"top_k must be an integer > 0"),
    (torch.tensor([[1]]), dict(max_new_tokens=-1), r"max_new_tokens must be an integer >= 0"),
])
def test_generate_bad_input(idx, kwargs, match):
    args = dict(max_new_tokens=3) | kwargs
    with pytest.raises(ValueError, match=match):
        generate(make_mlp(), idx, **args)


def test_no_warning_on_a_normal_run():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        history = run(steps=5)
    assert not history.diverged


# ---------------------------------------------------------------------------- chapter 7's recipe
def make_gpt(seed=0, dropout=0.0):
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=V, block_size=8, n_layer=2, n_head=2, n_embd=8, dropout=dropout))


def by_identity(params):
    return {id(p) for p in params}


def test_configure_optimizer_decays_only_linear_matrices_of_a_gpt():
    model = make_gpt()
    opt = configure_optimizer(model, lr=1e-3, weight_decay=0.1)
    assert isinstance(opt, torch.optim.AdamW)
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert decay["betas"] == (0.9, 0.95) and decay["eps"] == 1e-8 and decay["lr"] == 1e-3
    names = {id(p): n for n, p in model.named_parameters()}  # the tied Parameter appears once
    expected = {n for n in names.values()
                if n.endswith(("c_attn.weight", "c_proj.weight", "c_fc.weight"))}
    assert len(expected) == 4 * 2  # four matrices per block
    assert {names[id(p)] for p in decay["params"]} == expected
    assert id(model.lm_head.weight) in by_identity(no_decay["params"])  # tied to wte: an embedding
    assert id(model.transformer.wpe.weight) in by_identity(no_decay["params"])
    assert all(p.dim() == 1 for p in no_decay["params"] if id(p) not in by_identity(
        [model.transformer.wte.weight, model.transformer.wpe.weight]))  # the rest: biases and gains
    every = decay["params"] + no_decay["params"]
    assert len(every) == len(by_identity(every)) == len(list(model.parameters()))  # each once


def test_configure_optimizer_on_the_chapter_3_mlp():
    model = make_mlp()
    decay, no_decay = configure_optimizer(model, lr=1e-2, weight_decay=0.5, betas=(0.8, 0.9), eps=1e-6).param_groups
    assert by_identity(decay["params"]) == by_identity([model.hidden.weight, model.lm_head.weight])
    assert by_identity(no_decay["params"]) == by_identity([model.wte.weight, model.hidden.bias, model.lm_head.bias])
    assert decay["betas"] == (0.8, 0.9) and decay["eps"] == 1e-6


def test_configure_optimizer_bad_input():
    with pytest.raises(ValueError, match=r"weight_decay must be a number >= 0"):
        configure_optimizer(make_mlp(), lr=1e-3, weight_decay=-1)
    with pytest.raises(TypeError, match=r"expected a torch.nn.Module"):
        configure_optimizer([torch.zeros(2)], lr=1e-3, weight_decay=0.1)


def cosine_reference(step, warmup, total, max_lr, min_lr):
    """The schedule written out independently: linear ramp, half a cosine, a floor."""
    if step < warmup:
        return max_lr * (step + 1) / (warmup + 1)
    if step >= total:
        return min_lr
    progress = (step - warmup) / (total - warmup)
    return min_lr + (max_lr - min_lr) * (math.cos(math.pi * progress) + 1) / 2


@pytest.mark.parametrize("warmup, total, max_lr, min_lr", [(10, 100, 6e-4, 6e-5), (0, 5, 1.0, 0.0),
                                                           (3, 3, 1.0, 0.1), (1, 2, 2.0, 2.0)])
def test_warmup_cosine_follows_the_formula(warmup, total, max_lr, min_lr):
    for step in range(total + 3):
        assert warmup_cosine(step, warmup, total, max_lr, min_lr) == pytest.approx(
            cosine_reference(step, warmup, total, max_lr, min_lr), rel=1e-12, abs=1e-15)


def test_warmup_cosine_at_its_key_steps():
    lr = functools.partial(warmup_cosine, warmup_steps=10, total_steps=110, max_lr=1.0, min_lr=0.1)
    assert lr(0) == pytest.approx(1 / 11)  # small but not 0: the first step already learns
    assert lr(9) == pytest.approx(10 / 11)
    assert lr(10) == 1.0  # the peak at the end of the warm-up
    assert lr(60) == pytest.approx(0.55)  # half way: the mean of max and min
    assert lr(110) == lr(1000) == 0.1
    assert [warmup_cosine(s, 1, 3) for s in range(4)] == pytest.approx([0.5, 1, 0.5, 0])  # the docstring's
    values = [lr(s) for s in range(120)]
    assert all(a < b for a, b in zip(values[:10], values[1:11]))  # rises
    assert all(a >= b for a, b in zip(values[10:], values[11:]))  # then never rises


@pytest.mark.parametrize("args, match", [
    ((-1, 1, 5), r"step must be an integer >= 0"),
    ((0, 6, 5), r"warmup_steps=6 is longer than total_steps=5"),
    ((0, 1, 0), r"total_steps must be an integer > 0"),
    ((0, 1, 5, 0.1, 0.2), r"expected 0 <= min_lr <= max_lr"),
])
def test_warmup_cosine_bad_input(args, match):
    with pytest.raises(ValueError, match=match):
        warmup_cosine(*args)


def test_warmup_cosine_as_the_lr_schedule_of_train():
    model = make_mlp()
    opt = configure_optimizer(model, lr=1e-2, weight_decay=0.1)
    run(model, steps=7, optimizer=opt,
        lr_schedule=functools.partial(warmup_cosine, warmup_steps=2, total_steps=7, min_lr=0.1))
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([1e-2 * warmup_cosine(6, 2, 7, 1.0, 0.1)] * 2)


def test_accumulation_equals_one_large_batch():
    """float64, so that summing two half-batch gradients equals the full batch's to rounding."""
    big, small, half = make_mlp().double(), make_mlp().double(), make_mlp().double()
    a = run(big, steps=6, batch_size=8, grad_clip=0.5, weight_decay=0.1)
    b = run(small, steps=6, batch_size=4, accumulate=2, grad_clip=0.5, weight_decay=0.1)
    for p, q in zip(big.parameters(), small.parameters()):
        torch.testing.assert_close(q, p, rtol=1e-10, atol=1e-12)
    assert b.step_losses == pytest.approx(a.step_losses, rel=1e-10)
    assert b.tokens_seen == a.tokens_seen == 6 * 8 * 16
    run(half, steps=6, batch_size=4, grad_clip=0.5, weight_decay=0.1)  # half the batch, no accumulation
    assert not torch.allclose(half.hidden.weight, big.hidden.weight)


def test_precision_is_chosen_by_device_and_checked():
    assert resolve_precision("auto", "cpu") == "fp32"
    assert resolve_precision("fp32", "cpu") == "fp32"
    assert resolve_precision("bf16", "cpu") == "bf16"
    with pytest.raises(ValueError, match=r"precision='fp16' needs a CUDA GPU"):
        resolve_precision("fp16", "cpu")
    with pytest.raises(ValueError, match=r"precision must be one of 'auto', 'fp32', 'bf16', 'fp16', got 'fp8'"):
        resolve_precision("fp8", "cpu")
    with pytest.raises(ValueError, match=r"needs a CUDA GPU"):
        run(precision="fp16")


class DtypeProbe(nn.Module):
    """An embedding and a Linear layer; records the dtype its Linear layer computed in."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.wte, self.head, self.seen = nn.Embedding(V, 8), nn.Linear(8, V), set()

    def get_block_size(self):
        return 16

    def forward(self, idx, targets=None):
        logits = self.head(self.wte(idx))  # (B, T, V)
        self.seen.add(logits.dtype)
        return logits, F.cross_entropy(logits.view(-1, V), targets.view(-1))


@pytest.mark.skipif(not hasattr(torch, "autocast"), reason="torch without autocast")
def test_bf16_autocast_on_the_cpu_is_close_to_fp32():
    fp32, bf16 = DtypeProbe(), DtypeProbe()
    a = run(fp32, steps=3, eval_every=3)
    b = run(bf16, steps=3, eval_every=3, precision="bf16")
    assert fp32.seen == {torch.float32}
    assert torch.bfloat16 in bf16.seen  # the training steps ran under autocast
    assert bf16.head.weight.dtype == torch.float32  # the weights themselves stay fp32
    assert all(math.isfinite(x) for x in b.step_losses)
    assert b.step_losses == pytest.approx(a.step_losses, abs=0.05)
    gpt32, gpt16 = make_gpt(), make_gpt()
    c = run(gpt32, steps=3, block_size=8, eval_every=3)
    d = run(gpt16, steps=3, block_size=8, eval_every=3, precision="bf16")
    assert d.step_losses == pytest.approx(c.step_losses, abs=0.05)


@pytest.mark.parametrize("grad_clip", [None, 1e-3])
def test_the_history_records_each_step_gradient_norm_before_clipping(grad_clip):
    model = make_gpt()
    start = copy.deepcopy(model)
    history = run(model, steps=4, block_size=8, eval_every=4, grad_clip=grad_clip)
    assert len(history.grad_norms) == len(history.step_losses) == 4
    # the first step's norm, by hand: the same batch through the same starting weights
    x, y = get_batch(REPEAT, 8, 8, torch.Generator().manual_seed(1337))
    _, loss = start(x, y)
    loss.backward()
    expected = torch.cat([p.grad.flatten() for p in start.parameters()]).norm().item()
    assert history.grad_norms[0] == pytest.approx(expected, rel=1e-5)
    assert min(history.grad_norms) > 1e-3  # so clipping at 1e-3 really clipped, and the record is from before


def test_compile_trains_the_same_model_through_generated_kernels(monkeypatch):
    compiled = []
    real = torch.compile

    def spy(model, **kwargs):  # the eager backend: the same graph capture, without the C++ compiler's wait
        compiled.append(model)
        return real(model, backend="eager", **kwargs)

    monkeypatch.setattr(torch, "compile", spy)
    eager_model, compiled_model = make_gpt(), make_gpt()
    a = run(eager_model, steps=3, block_size=8, eval_every=3)
    b = run(compiled_model, steps=3, block_size=8, eval_every=3, compile=True)
    assert compiled == [compiled_model]  # train compiled the model it was given, once
    assert b.step_losses == pytest.approx(a.step_losses, abs=1e-5)
    assert all(torch.allclose(p, q, atol=1e-5) for p, q in zip(eager_model.parameters(), compiled_model.parameters()))
    assert not any(k.startswith("_orig_mod") for k in compiled_model.state_dict())  # checkpoints keep our names
    with pytest.raises(ValueError, match="compile must be True or False"):
        run(make_gpt(), steps=1, block_size=8, compile="yes")


# ---------------------------------------------------------------------------- checkpoints
def recipe_run(model, steps, **kwargs):
    """A GPT with dropout (the global torch generator matters), the optimizer of
    configure_optimizer, warm-up and cosine decay, clipping and accumulation."""
    opt = configure_optimizer(model, lr=1e-2, weight_decay=0.1)
    schedule = functools.partial(warmup_cosine, warmup_steps=2, total_steps=12, min_lr=0.1)
    return run(model, steps=steps, batch_size=2, accumulate=2, block_size=8, eval_every=4, optimizer=opt,
               lr_schedule=schedule, grad_clip=1.0, valid_data=REPEAT[:50], **kwargs)


def same_run(a, b, model_a, model_b):
    assert a.steps == b.steps
    assert a.train_loss == b.train_loss and a.valid_loss == b.valid_loss  # exactly, on the CPU
    assert a.step_losses == b.step_losses and a.tokens_seen == b.tokens_seen
    assert all(torch.equal(p, q) for p, q in zip(model_a.parameters(), model_b.parameters()))


@pytest.mark.parametrize("interrupt_at", [4, 6])  # on the eval grid, and off it
def test_an_interrupted_run_resumes_exactly(tmp_path, interrupt_at):
    whole = make_gpt(dropout=0.2)
    expected = recipe_run(whole, 12)
    first = recipe_run(make_gpt(dropout=0.2), interrupt_at, checkpoint_dir=tmp_path)
    assert first.steps[-1] == interrupt_at  # the run ends measured all the same
    resumed_model = make_gpt(seed=99, dropout=0.2)  # other weights: the checkpoint replaces them
    random.random(), np.random.rand(), torch.rand(3)  # and the generators move on in between
    resumed = recipe_run(resumed_model, 12, checkpoint_dir=tmp_path)
    same_run(expected, resumed, whole, resumed_model)
    assert load_checkpoint(tmp_path / CHECKPOINT_NAME, make_gpt())["step"] == 12
    assert not [f for f in os.listdir(tmp_path) if f != CHECKPOINT_NAME]  # no temporary files left


class Crash(Exception):
    pass


def test_a_crashed_run_resumes_from_its_last_periodic_checkpoint(tmp_path):
    whole = make_gpt(dropout=0.2)
    expected = recipe_run(whole, 12)
    crashing = make_gpt(dropout=0.2)
    forward, calls = crashing.forward, []

    def crash_in_step_8(idx, targets=None):  # 2 micro-batches per step, evaluations in eval mode
        calls.append(crashing.training)
        if sum(calls) > 2 * 7:
            raise Crash
        return forward(idx, targets)

    crashing.forward = crash_in_step_8
    with pytest.raises(Crash):
        recipe_run(crashing, 12, checkpoint_dir=tmp_path, checkpoint_every=3)
    assert load_checkpoint(tmp_path / CHECKPOINT_NAME, make_gpt(), restore_rng=False)["step"] == 6
    resumed_model = make_gpt(seed=5, dropout=0.2)
    resumed = recipe_run(resumed_model, 12, checkpoint_dir=tmp_path, checkpoint_every=3)
    same_run(expected, resumed, whole, resumed_model)


def test_resume_refuses_other_settings_and_resume_false_starts_again(tmp_path):
    run(steps=4, checkpoint_dir=tmp_path)
    with pytest.raises(ValueError, match=r"saved by a run with .*batch_size.: 8"):
        run(steps=8, batch_size=4, checkpoint_dir=tmp_path)
    again = run(steps=4, checkpoint_dir=tmp_path, resume=False, eval_every=2)
    assert again.steps == [0, 2, 4] and len(again.step_losses) == 4
    done = run(steps=4, checkpoint_dir=tmp_path)  # already there: nothing left to train
    assert done.steps == [0, 2, 4] and len(done.step_losses) == 4


def test_a_checkpoint_restores_every_generator(tmp_path):
    model = make_mlp()
    opt = torch.optim.AdamW(model.parameters())
    history = History(steps=[0], train_loss=[1.5])
    save_checkpoint(tmp_path / "c.pt", model, opt, 3, history, extra={"note": "x", "t": torch.ones(2)})
    draws = random.random(), float(np.random.rand()), torch.rand(1).item()
    other = make_mlp(seed=1)
    saved = load_checkpoint(tmp_path / "c.pt", other, torch.optim.AdamW(other.parameters()))
    assert (random.random(), float(np.random.rand()), torch.rand(1).item()) == draws
    assert saved["step"] == 3 and saved["history"] == history and saved["extra"]["note"] == "x"
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), other.parameters()))


def test_a_checkpoint_with_other_objects_is_refused(tmp_path):
    model = make_mlp()
    opt = torch.optim.AdamW(model.parameters())
    save_checkpoint(tmp_path / "c.pt", model, opt, 1, History())
    state = torch.load(tmp_path / "c.pt", weights_only=True)
    state["history"] = History()  # a class of ours: not on weights_only's allowlist
    torch.save(state, tmp_path / "c.pt")
    with pytest.raises(ValueError, match=r"refused \(weights_only=True\)"):
        load_checkpoint(tmp_path / "c.pt", model, opt)


def test_a_half_written_checkpoint_never_replaces_a_good_one(tmp_path, monkeypatch):
    model = make_mlp()
    opt = torch.optim.AdamW(model.parameters())
    save_checkpoint(tmp_path / "c.pt", model, opt, 1, History(steps=[1]))
    good = (tmp_path / "c.pt").read_bytes()

    def dies_while_writing(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", dies_while_writing)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(tmp_path / "c.pt", model, opt, 2, History(steps=[2]))
    assert (tmp_path / "c.pt").read_bytes() == good
    assert os.listdir(tmp_path) == ["c.pt"]  # the temporary file is removed
    assert load_checkpoint(tmp_path / "c.pt", model, opt)["step"] == 1
