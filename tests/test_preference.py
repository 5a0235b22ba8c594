"""course_lib.preference: dpo_loss against trl's DPOTrainer loss (its own code, run on the same
summed log-probabilities), the implicit rewards, the loss's gradient by autograd against the
closed form, answer_logprobs against a direct sum over the assistant's tokens, and bad input."""

import doctest
import os
import types
from collections import defaultdict

import pytest
import torch
import torch.nn.functional as F

os.environ["HF_HUB_OFFLINE"] = "1"

from course_lib import preference  # noqa: E402
from course_lib.gpt import GPT, GPTConfig  # noqa: E402
from course_lib.preference import answer_logprobs, dpo_loss, preference_accuracy, token_logprobs  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


def test_module_examples():
    assert doctest.testmod(preference).failed == 0


def trl_dpo(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta):
    """trl's DPOTrainer._compute_loss, run on a stand-in for the trainer whose model returns
    per-token log-probabilities that sum to the given sequence log-probabilities (one answer
    token each), with precomputed reference log-probabilities. Returns (loss, metrics)."""
    trl_dpo_module = pytest.importorskip("trl.trainer.dpo_trainer")
    B = policy_chosen.shape[0]
    logps = torch.cat([policy_chosen, policy_rejected])[:, None]  # (2B, 1): one completion token each

    class Model(torch.nn.Module):
        def forward(self, **kw):
            n = kw["input_ids"].shape[0]
            return types.SimpleNamespace(log_probs=logps, entropy=torch.zeros(n, 1),
                                         mean_logits=torch.zeros(n, 1), is_top1=torch.zeros(n, 1, dtype=torch.bool))

    identity = types.SimpleNamespace(device="cpu", gather_for_metrics=lambda t: t, gather=lambda t: t)
    trainer = types.SimpleNamespace(
        model=Model().eval(), accelerator=identity, aux_loss_enabled=False, ld_alpha=None, precompute_ref_logps=True,
        f_divergence_type="reverse_kl", loss_types=["sigmoid"], loss_weights=[1.0], beta=beta, label_smoothing=0.0,
        use_weighting=False, _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
        _total_train_tokens=0, _tp_size=1)
    inputs = {"input_ids": torch.zeros(2 * B, 2, dtype=torch.long), "attention_mask": torch.ones(2 * B, 2),
              "completion_mask": torch.tensor([[0, 1]] * (2 * B)),
              "ref_chosen_logps": ref_chosen, "ref_rejected_logps": ref_rejected}
    loss = trl_dpo_module.DPOTrainer._compute_loss(trainer, trainer.model, inputs, return_outputs=False)
    return loss, trainer._metrics["eval"]


@pytest.mark.parametrize("beta", [0.1, 0.5, 2.0])
def test_loss_and_rewards_equal_trl(beta):
    g = torch.Generator().manual_seed(0)
    pc, pr, rc, rr = (-20 * torch.rand(16, generator=g, dtype=torch.float64) for _ in range(4))
    loss, chosen_rewards, rejected_rewards = dpo_loss(pc, pr, rc, rr, beta=beta)
    theirs, metrics = trl_dpo(pc, pr, rc, rr, beta)
    if isinstance(theirs, tuple):
        theirs = theirs[0]
    assert loss.item() == pytest.approx(theirs.item(), rel=1e-12, abs=1e-12)
    assert chosen_rewards.mean().item() == pytest.approx(metrics["rewards/chosen"][-1], rel=1e-12)
    assert rejected_rewards.mean().item() == pytest.approx(metrics["rewards/rejected"][-1], rel=1e-12)
    accuracy = preference_accuracy(chosen_rewards, rejected_rewards)
    assert accuracy == pytest.approx(metrics["rewards/accuracies"][-1])
    assert 0 < accuracy < 1  # the draw ranks some pairs each way, so the check can tell them apart


def test_gradient_is_the_closed_form():
    # d loss / d log pi(y_w) = -beta * sigmoid(-beta * margin) / B, and the opposite for y_l
    g = torch.Generator().manual_seed(1)
    pc, pr = (torch.randn(5, generator=g, dtype=torch.float64).requires_grad_() for _ in range(2))
    rc, rr = (torch.randn(5, generator=g, dtype=torch.float64) for _ in range(2))
    beta = 0.3
    loss, _, _ = dpo_loss(pc, pr, rc, rr, beta)
    loss.backward()
    margin = (pc - rc) - (pr - rr)
    expected = -beta * torch.sigmoid(-beta * margin.detach()) / 5
    assert torch.allclose(pc.grad, expected) and torch.allclose(pr.grad, -expected)


def test_answer_logprobs_sums_the_masked_tokens():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=11, block_size=8, n_layer=1, n_head=1, n_embd=8)).eval()
    ids = torch.randint(11, (2, 6))
    mask = torch.tensor([[0, 0, 0, 1, 1, 0], [0, 1, 1, 1, 1, 1]])
    logits, _ = model(ids)
    logp = F.log_softmax(logits, -1)
    expected = torch.stack([sum(logp[b, t - 1, ids[b, t]] for t in range(1, 6) if mask[b, t]) for b in range(2)])
    assert torch.allclose(answer_logprobs(model, ids, mask), expected, atol=1e-6)
    assert token_logprobs(model, ids).shape == (2, 5)


def test_bad_input():
    z = torch.zeros(3)
    with pytest.raises(ValueError, match="beta must be"):
        dpo_loss(z, z, z, z, beta=0)
    with pytest.raises(ValueError, match="one shape"):
        dpo_loss(z, z, z, torch.zeros(4))
    with pytest.raises(ValueError, match="same shape"):
        preference_accuracy(z, torch.zeros(2))
    with pytest.raises(ValueError, match="T >= 2"):
        token_logprobs(None, torch.zeros(2, 1, dtype=torch.long))
