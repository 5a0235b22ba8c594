"""course_lib.memory: the parameter count against GPT.num_parameters and GPT-2 small's known
124,439,808; the activation formula against the bytes autograd actually saves, exactly, for
several shapes; the KV cache formula against a filled cache; AdamW's state against the
optimizer's own tensors."""

import pytest
import torch

from course_lib.gpt import GPT, GPTConfig
from course_lib.memory import (GPT2_SIZES, activation_bytes, kv_cache_bytes, kv_cache_measured_bytes,
                               parameter_count, peak_training_rss, saved_bytes, training_bytes)

pytestmark = pytest.mark.usefixtures("one_thread")

SHAPES = [dict(B=2, T=16, C=32, L=1, nh=2, V=50), dict(B=4, T=32, C=64, L=2, nh=4, V=100),
          dict(B=3, T=24, C=48, L=3, nh=6, V=77, bias=False)]


def build(s):
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=s["V"], block_size=s["T"], n_layer=s["L"], n_head=s["nh"], n_embd=s["C"],
                         bias=s.get("bias", True)))


@pytest.mark.parametrize("s", SHAPES)
def test_parameter_count(s):
    model = build(s)
    assert parameter_count(model.config) == model.num_parameters()


def test_gpt2_small_has_124m_parameters():
    c = GPTConfig(vocab_size=50257, block_size=1024, **GPT2_SIZES["gpt2"])
    assert parameter_count(c) == 124_439_808


@pytest.mark.parametrize("s", SHAPES)
def test_activation_formula_equals_what_autograd_saves(s):
    model = build(s)
    x, y = (torch.randint(0, s["V"], (s["B"], s["T"])) for _ in range(2))
    assert saved_bytes(model, x, y) == activation_bytes(model.config, s["B"], s["T"])


def test_kv_cache_formula():
    model = build(SHAPES[1]).eval()
    x = torch.randint(0, 100, (4, 20))
    assert kv_cache_measured_bytes(model, x) == kv_cache_bytes(model.config, 4, 20)


def test_adamw_state_is_two_numbers_per_parameter():
    model = build(SHAPES[0])
    opt = torch.optim.AdamW(model.parameters())
    x = torch.randint(0, 50, (2, 16))
    model(x, x)[1].backward()
    opt.step()
    moments = sum(t.numel() * t.element_size() for st in opt.state.values() for k, t in st.items() if k != "step")
    mem = training_bytes(model.config, 2, 16)
    assert moments == mem["optimizer"]
    assert sum(p.grad.numel() * 4 for p in model.parameters()) == mem["gradients"]
    assert mem["total"] == mem["weights"] + mem["gradients"] + mem["optimizer"] + mem["activations"]
    with pytest.raises(ValueError, match="block size"):
        activation_bytes(model.config, 1, 17)
    with pytest.raises(TypeError, match="GPTConfig"):
        parameter_count({"n_embd": 3})


def test_peak_training_rss_is_at_least_the_formulas_state():
    c = GPTConfig(vocab_size=4000, block_size=64, n_layer=4, n_head=4, n_embd=256)
    peak = peak_training_rss(c, 4, 64)
    mem = training_bytes(c, 4, 64)
    assert 0.9 * mem["total"] < peak < 4 * mem["total"]
