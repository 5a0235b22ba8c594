"""course_lib.lora against peft's LoRA on the course GPT: the initialization rule (B = 0,
A ~ U(-1/sqrt(in), 1/sqrt(in)) as nn.Linear), the scaling alpha / r, the forward pass with the
same A and B within 1e-6 (float32) and 1e-12 (float64), the merged weights, the count of
trainable parameters; that only the LoRA matrices get gradients, that merging changes no
output and removes every LoRALinear, and bad input."""

import doctest
import math
import os

import pytest
import torch
from torch import nn

os.environ["HF_HUB_OFFLINE"] = "1"

from course_lib import lora  # noqa: E402
from course_lib.gpt import GPT, GPTConfig  # noqa: E402
from course_lib.lora import LoRALinear, apply_lora, count_trainable, lora_parameters, merge, train_token_rows  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

TARGETS = ("c_attn", "c_proj", "c_fc")


def tiny_gpt(seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    model = GPT(GPTConfig(vocab_size=31, block_size=16, n_layer=2, n_head=2, n_embd=16)).to(dtype).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return model


def peft_twin(model, r, alpha):
    """A deep copy of ``model`` with peft's LoRA injected into the same layers."""
    import copy

    peft = pytest.importorskip("peft")
    twin = copy.deepcopy(model)
    config = peft.LoraConfig(r=r, lora_alpha=alpha, target_modules=list(TARGETS), lora_dropout=0.0)
    return peft.inject_adapter_in_model(config, twin), peft


def peft_layers(model, peft):
    return {name: m for name, m in model.named_modules() if isinstance(m, peft.tuners.lora.LoraLayer)}


def test_module_examples():
    assert doctest.testmod(lora).failed == 0


def test_initialization_rule_and_scaling_match_peft():
    torch.manual_seed(0)
    ours = LoRALinear(nn.Linear(512, 96), r=64, alpha=32)
    base = tiny_gpt()
    twin, peft = peft_twin(base, r=64, alpha=32)
    theirs = peft_layers(twin, peft)
    assert theirs, "peft wrapped no layer"
    for layer in theirs.values():
        assert torch.count_nonzero(layer.lora_B["default"].weight) == 0
        assert layer.scaling["default"] == pytest.approx(32 / 64)
    assert torch.count_nonzero(ours.lora_B) == 0 and ours.scaling == pytest.approx(32 / 64)
    bound = 1 / math.sqrt(512)
    assert ours.lora_A.abs().max() <= bound
    assert ours.lora_A.abs().max() > 0.99 * bound  # uniform over the whole interval, not a narrower one
    assert ours.lora_A.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.03)  # U(-b, b) has std b / sqrt(3)
    # peft draws A the same way: a layer of the same shape has the same spread
    lin = nn.Module()
    lin.lin = nn.Linear(512, 96)
    lin = peft.inject_adapter_in_model(peft.LoraConfig(r=64, lora_alpha=32, target_modules=["lin"]), lin)
    A = lin.lin.lora_A["default"].weight
    assert A.abs().max() <= bound and A.std().item() == pytest.approx(ours.lora_A.std().item(), rel=0.05)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-6), (torch.float64, 1e-12)])
def test_forward_and_merge_equal_peft_with_the_same_matrices(dtype, tol):
    r, alpha = 4, 8
    model = tiny_gpt(dtype=dtype)
    twin, peft = peft_twin(model, r, alpha)
    wrapped = apply_lora(model, TARGETS, r=r, alpha=alpha)
    theirs = peft_layers(twin, peft)
    assert sorted(wrapped) == sorted(theirs)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name in wrapped:
            ours = model.get_submodule(name)
            ours.lora_B.copy_(0.1 * torch.randn(ours.lora_B.shape, generator=gen, dtype=dtype))  # off zero
            theirs[name].lora_A["default"].weight.copy_(ours.lora_A)
            theirs[name].lora_B["default"].weight.copy_(ours.lora_B)
    idx = torch.randint(31, (3, 16), generator=gen)
    ours_logits, _ = model(idx)
    theirs_logits, _ = twin(idx)
    assert (ours_logits - theirs_logits).abs().max().item() <= tol * max(1.0, ours_logits.abs().max().item())
    assert not torch.allclose(ours_logits, tiny_gpt(dtype=dtype)(idx)[0])  # the update is not zero
    for name in wrapped:
        delta_theirs = theirs[name].get_delta_weight("default")
        assert torch.allclose(model.get_submodule(name).delta_weight(), delta_theirs, atol=tol, rtol=0)
    merge(model)
    for layer in theirs.values():
        layer.merge()
    ours_state = dict(model.named_parameters())
    for name in wrapped:
        merged_theirs = theirs[name].get_base_layer().weight
        assert torch.allclose(ours_state[name + ".weight"], merged_theirs, atol=tol, rtol=0)
    assert torch.allclose(model(idx)[0], ours_logits, atol=10 * tol, rtol=0)  # merging changes no output


def test_only_lora_matrices_train_and_counts_match_peft():
    model = tiny_gpt()
    twin, peft = peft_twin(model, r=2, alpha=4)
    apply_lora(model, TARGETS, r=2, alpha=4)
    trainable, total = count_trainable(model)
    # peft leaves the rest trainable; freeze it as apply_lora does, then count its LoRA matrices
    theirs = sum(p.numel() for n, p in twin.named_parameters() if "lora_" in n)
    assert trainable == theirs == sum(p.numel() for p in lora_parameters(model))
    n_embd, L = 16, 2
    assert trainable == L * (2 * (n_embd + 3 * n_embd) + 2 * (n_embd + n_embd) + 2 * (n_embd + 4 * n_embd)
                             + 2 * (4 * n_embd + n_embd))  # r * (in + out) per layer, r = 2
    assert total == tiny_gpt().num_parameters() + trainable
    idx = torch.randint(31, (2, 8))
    _, loss = model(idx, idx)
    loss.backward()
    for name, p in model.named_parameters():
        assert (p.grad is not None) == ("lora_" in name), name


def test_merge_leaves_plain_linears():
    model = tiny_gpt()
    apply_lora(model, "c_fc", r=2)
    assert sum(isinstance(m, LoRALinear) for m in model.modules()) == 2
    merge(model)
    assert not any(isinstance(m, LoRALinear) for m in model.modules())
    assert all(isinstance(b.mlp.c_fc, nn.Linear) for b in model.transformer.h)


def test_token_rows_train_alone_with_their_full_gradient():
    import copy

    model = tiny_gpt()
    free = copy.deepcopy(model)  # every weight trainable: the gradient the chosen rows should get
    apply_lora(model, TARGETS, r=2, alpha=4)
    before = model.transformer.wte.weight.detach().clone()
    assert train_token_rows(model.transformer.wte, [29, 30, 29]) == 2 * 16
    idx = torch.randint(31, (4, 12), generator=torch.Generator().manual_seed(1))
    _, loss = model(idx, idx)
    loss.backward()
    _, loss_free = free(idx, idx)
    loss_free.backward()
    grad = model.transformer.wte.weight.grad
    assert torch.equal(grad[:29], torch.zeros_like(grad[:29]))
    torch.testing.assert_close(grad[29:], free.transformer.wte.weight.grad[29:])  # LoRA's B = 0: the same model
    torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.0).step()
    after = model.transformer.wte.weight.detach()
    assert torch.equal(after[:29], before[:29])
    assert (after[29:] != before[29:]).all()
    assert model.lm_head.weight is model.transformer.wte.weight  # the tied output rows moved with them
    with pytest.raises(ValueError, match="token ids in"):
        train_token_rows(nn.Embedding(4, 2), [4])
    with pytest.raises(ValueError, match="rows is empty"):
        train_token_rows(nn.Embedding(4, 2), [])
    with pytest.raises(TypeError, match="nn.Embedding"):
        train_token_rows(model, [1])


def test_bad_input():
    with pytest.raises(TypeError, match="nn.Linear"):
        LoRALinear(nn.Conv1d(2, 2, 1))
    with pytest.raises(ValueError, match="r must be"):
        LoRALinear(nn.Linear(2, 2), r=0)
    with pytest.raises(ValueError, match="alpha must be"):
        LoRALinear(nn.Linear(2, 2), alpha=0)
    with pytest.raises(ValueError, match="no nn.Linear named"):
        apply_lora(tiny_gpt(), "q_proj")
    with pytest.raises(TypeError, match="nn.Module"):
        merge("model")
