"""Preference tuning with DPO: learning from pairs of answers, one preferred (chapter 9).

RLHF (Ouyang et al., 2022) first fits a reward model r(x, y) to human preferences with the
Bradley-Terry model, P(y_w preferred to y_l) = sigmoid(r(x, y_w) - r(x, y_l)), then tunes the
policy to maximize r while a KL penalty of strength beta keeps it near a reference model
pi_ref. That KL-regularized objective has a closed-form optimum,
pi*(y|x) ∝ pi_ref(y|x) exp(r(x, y) / beta), so r(x, y) = beta log(pi*(y|x) / pi_ref(y|x)) +
beta log Z(x). Put that r into the Bradley-Terry likelihood: Z(x) cancels in the difference,
and what is left is a loss on the policy itself (Rafailov et al., 2023, DPO)::

    loss = -log sigmoid( beta * [ (log pi(y_w|x) - log pi_ref(y_w|x)) - (log pi(y_l|x) - log pi_ref(y_l|x)) ] )

No reward model and no sampling: two forward passes per pair (policy and frozen reference).
``beta * (log pi - log pi_ref)`` is the *implicit reward* of an answer; the pair is ranked
right when the chosen answer's is higher (the preference accuracy).

    >>> z = torch.zeros(3)
    >>> round(dpo_loss(z, z, z, z, beta=0.1)[0].item(), 6)   # policy = reference: -log sigmoid(0) = ln 2
    0.693147

Scope: the sigmoid (original) DPO loss without label smoothing; log-probabilities summed
over the answer's tokens (``answer_logprobs``), as ``trl``'s default. The tests compare the
loss and the implicit rewards with ``trl``'s.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["token_logprobs", "answer_logprobs", "dpo_loss", "preference_accuracy"]


def token_logprobs(model, ids: torch.Tensor) -> torch.Tensor:
    """ln P(ids[:, t+1] | ids[:, :t+1]) at every position: ``ids`` (B, T) -> (B, T - 1), float32."""
    if not isinstance(ids, torch.Tensor) or ids.dim() != 2 or ids.shape[1] < 2:
        raise ValueError("ids must be a (B, T) tensor with T >= 2")
    logits, _ = model(ids[:, :-1])  # (B, T-1, V): logits[:, t] scores ids[:, t+1]
    return F.log_softmax(logits.float(), dim=-1).gather(-1, ids[:, 1:, None].long())[..., 0]


def answer_logprobs(model, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sum of ln P(token | earlier tokens) over the tokens where ``mask`` is 1, per row:
    ``ids`` and ``mask`` (B, T) (from ``chat.encode_chat`` and ``chat.pad_batch``) -> (B,).
    The first token is never scored (nothing precedes it)."""
    if not isinstance(mask, torch.Tensor) or ids.shape != mask.shape:
        raise ValueError("ids and mask must both be (B, T) tensors of one shape")
    logp = token_logprobs(model, ids)  # (B, T-1)
    return (logp * mask[:, 1:].to(logp.dtype)).sum(-1)


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
             ref_rejected: torch.Tensor, beta: float = 0.1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(loss, chosen_rewards, rejected_rewards)``: the mean DPO loss over the batch and each
    answer's implicit reward ``beta * (log pi - log pi_ref)`` (detached), from (B,) summed
    log-probabilities of the chosen and rejected answers under the policy and the reference."""
    if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not beta > 0:
        raise ValueError(f"beta must be a number > 0, got {beta!r}")
    shapes = {tuple(t.shape) for t in (policy_chosen, policy_rejected, ref_chosen, ref_rejected)}
    if len(shapes) != 1 or len(next(iter(shapes))) != 1:
        raise ValueError(f"expected four log-probability tensors of one shape (B,), got shapes {sorted(shapes)}")
    chosen = policy_chosen - ref_chosen  # (B,) log pi/pi_ref of the preferred answer
    rejected = policy_rejected - ref_rejected
    loss = -F.logsigmoid(beta * (chosen - rejected)).mean()
    return loss, beta * chosen.detach(), beta * rejected.detach()


def preference_accuracy(chosen_scores: torch.Tensor, rejected_scores: torch.Tensor) -> float:
    """Share of pairs in which the chosen answer scores strictly higher than the rejected one."""
    if chosen_scores.shape != rejected_scores.shape or chosen_scores.numel() == 0:
        raise ValueError("expected two non-empty score tensors of the same shape")
    return (chosen_scores > rejected_scores).float().mean().item()
