"""Reinforcement learning with a verifiable reward: GRPO and expert iteration (chapter 9).

The model writes answers, a program scores them (here ``verse.reward``: does the line scan?),
and the model is pushed towards the answers that scored above their group's average.

**Rollouts.** ``rollout`` samples ``G`` answers to one chat prompt, one token at a time with
the KV cache (chapter 7), until each writes ``<|end|>`` or runs out of room. An answer that
never ends gets reward 0: it is not an answer. Two silent failures of RL code are turned into
errors here: a prompt that is not a chat prompt (``<|user|>...<|assistant|>``: without it the
model continues the user's text and never answers) and a batch in which no answer ended
(every reward would be 0 and nothing would be learned).

**GRPO** (Shao et al., 2024, DeepSeekMath) is PPO without the value network: the baseline of
an answer is the mean reward of the other answers to the same prompt, and the advantage is
``A_i = (r_i - mean(r)) / (std(r) + eps)``, shared by every token of answer ``i``. The loss is
PPO's clipped surrogate per token, ``-min(ratio * A, clip(ratio, 1 - e, 1 + e) * A)`` with
``ratio = pi(token) / pi_old(token)``, plus an optional penalty ``kl_coef * KL(pi || pi_ref)``
estimated per token by ``exp(d) - d - 1`` with ``d = log pi_ref - log pi`` (Schulman's "k3",
never negative), averaged over each answer's tokens, then over the answers. The KL leash
acts only on the answers the policy samples; ``replay_rows`` (windows of the pretraining text,
``chat.pretraining_rows``) add ``replay_coef`` times the language-model loss on a few of them
to every update, as InstructGPT's "PPO-ptx" did, to keep the model's text where it was.

**Expert iteration** is the simpler baseline: sample, keep the best answer of each group if it
is good enough, fine-tune on the kept answers as on data (SFT), repeat.

Scope: one answer per prompt row, no padding inside a group (the ``G`` copies of a prompt have
one length); the policy is updated once per batch of rollouts, so ``pi_old`` is the policy
that sampled (the ratio starts at 1 and the clip acts only with several updates per batch).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .chat import ASSISTANT, END, USER, finetune, pad_batch, sft_targets
from .gpt import KVCache
from .preference import token_logprobs

__all__ = ["group_advantages", "grpo_loss", "check_chat_prompt", "Rollout", "rollout",
           "distinct_ngrams", "RLHistory", "grpo_train", "expert_iteration"]


def group_advantages(rewards: torch.Tensor, eps: float = 1e-4, scale: bool = True) -> torch.Tensor:
    """GRPO's advantages for ``rewards`` (P, G), P prompts with G answers each: each reward
    minus its group's mean, divided by the group's standard deviation (the sample one,
    n - 1, as ``trl``) plus ``eps`` when ``scale``. A group whose answers all scored alike has
    advantages 0: it teaches nothing."""
    if not isinstance(rewards, torch.Tensor) or rewards.dim() != 2 or rewards.shape[1] < 2:
        raise ValueError("rewards must be a (P, G) tensor with G >= 2 answers per prompt, got "
                         f"{tuple(rewards.shape) if isinstance(rewards, torch.Tensor) else type(rewards).__name__}")
    centred = rewards - rewards.mean(dim=1, keepdim=True)
    if not scale:
        return centred
    return centred / (rewards.std(dim=1, keepdim=True) + eps)


def grpo_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
              clip_eps: float = 0.2, ref_logp: torch.Tensor | None = None, kl_coef: float = 0.0) -> torch.Tensor:
    """GRPO's loss from per-token log-probabilities (N, T) of the answers' tokens under the
    policy (``logp``, with gradients), the policy that sampled them (``old_logp``) and, for the
    KL penalty, the reference (``ref_logp``); ``advantages`` (N,); ``mask`` (N, T) 1 on the
    answers' tokens. Per token ``-min(ratio A, clip(ratio) A) + kl_coef k3``, averaged over
    each answer's tokens, then over answers."""
    if logp.shape != old_logp.shape or logp.shape != mask.shape or logp.dim() != 2:
        raise ValueError(f"logp, old_logp and mask must be (N, T) of one shape, got {tuple(logp.shape)}, "
                         f"{tuple(old_logp.shape)} and {tuple(mask.shape)}")
    if advantages.shape != logp.shape[:1]:
        raise ValueError(f"advantages must be (N,) = {tuple(logp.shape[:1])}, got {tuple(advantages.shape)}")
    if not (isinstance(clip_eps, (int, float)) and 0 < clip_eps < 1):
        raise ValueError(f"clip_eps must be a number in (0, 1), got {clip_eps!r}")
    if kl_coef and ref_logp is None:
        raise ValueError("kl_coef > 0 needs ref_logp, the reference model's log-probabilities")
    ratio = torch.exp(logp - old_logp.detach())  # (N, T)
    A = advantages.detach()[:, None]  # (N, 1)
    per_token = -torch.minimum(ratio * A, ratio.clamp(1 - clip_eps, 1 + clip_eps) * A)
    if kl_coef:
        d = ref_logp.detach() - logp
        per_token = per_token + kl_coef * (torch.exp(d) - d - 1)
    mask = mask.to(per_token.dtype)
    return ((per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1)).mean()


def check_chat_prompt(ids, tokenizer) -> None:
    """Raise a ValueError unless ``ids`` is a chat prompt: ``<|user|>`` first, ``<|assistant|>``
    last (``encode_chat(tok, messages, add_generation_prompt=True)`` makes one)."""
    sp = tokenizer.special_tokens
    if USER not in sp or ASSISTANT not in sp or END not in sp:
        raise ValueError("the tokenizer lacks the chat tokens; build it with chat.chat_tokenizer(base)")
    ids = list(ids)
    if not ids or ids[0] != sp[USER] or ids[-1] != sp[ASSISTANT]:
        raise ValueError("the prompt is not a chat prompt (<|user|> ... <|assistant|>): the model would continue "
                         "the user's text instead of answering, and no answer would end; build prompts with "
                         "chat.encode_chat(tokenizer, messages, add_generation_prompt=True)")


@dataclass
class Rollout:
    """``G`` sampled answers to one prompt: ``ids`` (G, T) prompt + answer, right-padded;
    ``mask`` (G, T) 1 on answer tokens (``<|end|>`` included); ``ended`` (G,) whether each
    answer wrote ``<|end|>``; ``texts`` the answers decoded, without ``<|end|>``."""

    ids: torch.Tensor
    mask: torch.Tensor
    ended: torch.Tensor
    texts: list[str]


@torch.no_grad()
def rollout(model, tokenizer, prompt_ids, G: int, max_new_tokens: int, temperature: float = 1.0,
            generator: torch.Generator | None = None) -> Rollout:
    """Sample ``G`` answers to the chat prompt ``prompt_ids`` with the KV cache (one forward
    pass of one token per step), each stopped at its ``<|end|>``, at ``max_new_tokens`` or at
    the model's block size. Sampling draws on the CPU with ``generator``."""
    check_chat_prompt(prompt_ids, tokenizer)
    if isinstance(G, bool) or not isinstance(G, int) or G < 1:
        raise ValueError(f"G must be an integer >= 1, got {G!r}")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be an integer >= 1, got {max_new_tokens!r}")
    if not (isinstance(temperature, (int, float)) and temperature > 0):
        raise ValueError(f"temperature must be a number > 0, got {temperature!r}")
    block = model.get_block_size()
    P = len(prompt_ids)
    if P >= block:
        raise ValueError(f"the prompt has {P} tokens, no room to answer in the model's block of {block}")
    steps = min(max_new_tokens, block - P)
    end_id = tokenizer.special_tokens[END]
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        cache = KVCache()
        x = torch.tensor([list(prompt_ids)] * G, device=device)  # (G, P)
        out = torch.empty((G, 0), dtype=torch.long)
        done = torch.zeros(G, dtype=torch.bool)
        for _ in range(steps):
            logits, _ = model(x, cache=cache)  # (G, T, V)
            probs = F.softmax(logits[:, -1].float().cpu() / temperature, dim=-1)  # (G, V)
            nxt = torch.multinomial(probs, 1, generator=generator)[:, 0]  # (G,)
            nxt[done] = end_id  # finished rows only pad (masked out below)
            out = torch.cat([out, nxt[:, None]], dim=1)
            done |= nxt == end_id
            if bool(done.all()):
                break
            x = nxt[:, None].to(device)
    finally:
        model.train(was_training)
    rows, texts = [], []
    for g in range(G):
        answer = out[g].tolist()
        if end_id in answer:
            answer = answer[:answer.index(end_id) + 1]
        texts.append(tokenizer.decode([t for t in answer if t != end_id]))
        rows.append((list(prompt_ids) + answer, [0] * P + [1] * len(answer)))
    ids, mask = pad_batch(rows, end_id)
    return Rollout(ids, mask, done.clone(), texts)


def distinct_ngrams(texts: list[str], n: int = 2) -> float:
    """Distinct word n-grams over all n-grams in ``texts`` (Li et al., 2016's distinct-n): near
    1 for varied answers, near 0 when a model repeats itself (mode collapse)."""
    grams = [tuple(t.split()[i:i + n]) for t in texts for i in range(max(0, len(t.split()) - n + 1))]
    return len(set(grams)) / len(grams) if grams else 0.0


@dataclass
class RLHistory:
    """What an RL run measured: per step the mean reward of the sampled answers, the share
    that ended, and the mean KL to the reference (k3, per token); the wall time."""

    reward: list[float] = field(default_factory=list)
    ended: list[float] = field(default_factory=list)
    kl: list[float] = field(default_factory=list)
    seconds: float = 0.0


def _check_ended(ended: list[bool]) -> None:
    if not any(ended):
        raise RuntimeError("no sampled answer wrote <|end|> in the first batch, so every reward is 0 and nothing "
                           "can be learned: is the model fine-tuned on the chat format (SFT first), and is "
                           "max_new_tokens long enough for an answer?")


def grpo_train(policy, ref, tokenizer, prompts: list[list[int]], reward_fn, *, steps: int, G: int = 8,
               prompts_per_step: int = 2, lr: float = 1e-4, clip_eps: float = 0.2, kl_coef: float = 0.0,
               updates_per_batch: int = 1, max_new_tokens: int = 24, temperature: float = 1.0, params=None,
               replay_rows: list[tuple[list[int], list[int]]] | None = None, replay_coef: float = 1.0,
               replay_batch: int = 8, max_seconds: float | None = None, seed: int = 0,
               progress: bool = True, desc: str = "GRPO") -> RLHistory:
    """Train ``policy`` with GRPO on chat prompts (token ids ending in ``<|assistant|>``):
    each step samples ``G`` answers to ``prompts_per_step`` prompts, scores each answer's text
    with ``reward_fn`` (0 for an answer that never ended), and takes ``updates_per_batch``
    AdamW steps on the GRPO loss. ``ref`` (frozen) is needed only for ``kl_coef > 0`` and for
    the KL that the history records. ``params``: what trains (default: every parameter that
    requires a gradient, e.g. LoRA's). ``replay_rows``: ``(ids, mask)`` rows of text to keep
    (``chat.pretraining_rows``); each update adds ``replay_coef`` times the loss of
    ``replay_batch`` of them. Stops after ``steps`` or ``max_seconds``."""
    for p in prompts:
        check_chat_prompt(p, tokenizer)
    if replay_rows is not None and not replay_rows:
        raise ValueError("replay_rows is empty: pass None for no replay, or rows from chat.pretraining_rows")
    if not (isinstance(replay_coef, (int, float)) and replay_coef >= 0):
        raise ValueError(f"replay_coef must be a number >= 0, got {replay_coef!r}")
    params = [p for p in policy.parameters() if p.requires_grad] if params is None else list(params)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(seed)
    hist = RLHistory()
    pad = tokenizer.special_tokens[END]
    device = next(policy.parameters()).device
    start = time.perf_counter()
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=steps, desc=desc, unit="step")
    for step in range(steps):
        if max_seconds is not None and time.perf_counter() - start > max_seconds:
            break
        picks = torch.randint(len(prompts), (prompts_per_step,), generator=gen).tolist()
        rolls = [rollout(policy, tokenizer, prompts[i], G, max_new_tokens, temperature, gen) for i in picks]
        if step == 0:
            _check_ended([e for ro in rolls for e in ro.ended.tolist()])
        rewards = torch.tensor([[reward_fn(t) if e else 0.0 for t, e in zip(ro.texts, ro.ended.tolist())]
                                for ro in rolls])  # (P, G)
        adv = group_advantages(rewards).reshape(-1)  # (P*G,)
        ids = [ro.ids for ro in rolls]
        T = max(x.shape[1] for x in ids)
        ids = torch.cat([F.pad(x, (0, T - x.shape[1]), value=pad) for x in ids])  # (P*G, T)
        mask = torch.cat([F.pad(ro.mask, (0, T - ro.mask.shape[1])) for ro in rolls])[:, 1:]  # (P*G, T-1)
        ids, mask = ids.to(device), mask.to(device)
        with torch.no_grad():
            old = token_logprobs(policy, ids)
            refl = token_logprobs(ref, ids) if ref is not None else None
        for _ in range(updates_per_batch):
            logp = token_logprobs(policy, ids)
            loss = grpo_loss(logp, old, adv.to(device), mask, clip_eps, refl, kl_coef)
            if replay_rows:
                pick = torch.randint(len(replay_rows), (min(replay_batch, len(replay_rows)),), generator=gen).tolist()
                x, y = sft_targets(*pad_batch([replay_rows[i] for i in pick], pad))
                loss = loss + replay_coef * policy(x.to(device), y.to(device))[1]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
        hist.reward.append(rewards.mean().item())
        hist.ended.append(torch.cat([ro.ended for ro in rolls]).float().mean().item())
        if refl is not None:
            d = (refl - old) * mask
            hist.kl.append(((torch.exp(d) - d - 1) * mask).sum().item() / max(1, mask.sum().item()))
        if bar is not None:
            bar.update(1)
            bar.set_postfix(reward=f"{hist.reward[-1]:.2f}")
    if bar is not None:
        bar.close()
    hist.seconds = time.perf_counter() - start
    return hist


def expert_iteration(policy, tokenizer, prompts: list[list[int]], reward_fn, *, rounds: int, G: int = 8,
                     prompts_per_round: int = 16, threshold: float = 1.0, sft_steps: int = 20, batch_size: int = 16,
                     lr: float = 1e-4, max_new_tokens: int = 24, temperature: float = 1.0, params=None,
                     max_seconds: float | None = None, seed: int = 0, progress: bool = True) -> RLHistory:
    """Expert iteration: each round samples ``G`` answers to ``prompts_per_round`` prompts,
    keeps each group's best answer when its reward is at least ``threshold``, and takes
    ``sft_steps`` AdamW steps of SFT on the kept (prompt, answer) pairs. History per round."""
    for p in prompts:
        check_chat_prompt(p, tokenizer)
    gen = torch.Generator().manual_seed(seed)
    hist = RLHistory()
    start = time.perf_counter()
    rng = range(rounds)
    if progress:
        from tqdm.auto import tqdm
        rng = tqdm(rng, desc="expert iteration", unit="round")
    pad = tokenizer.special_tokens[END]
    for r in rng:
        if max_seconds is not None and time.perf_counter() - start > max_seconds:
            break
        picks = torch.randint(len(prompts), (prompts_per_round,), generator=gen).tolist()
        kept, rewards, ended = [], [], []
        for i in picks:
            ro = rollout(policy, tokenizer, prompts[i], G, max_new_tokens, temperature, gen)
            scores = [reward_fn(t) if e else 0.0 for t, e in zip(ro.texts, ro.ended.tolist())]
            rewards += scores
            ended += ro.ended.tolist()
            best = max(range(G), key=lambda g: scores[g])
            if scores[best] >= threshold:
                answer = ro.ids[best][ro.mask[best].bool()].tolist()
                kept.append((list(prompts[i]) + answer, [0] * len(prompts[i]) + [1] * len(answer)))
        if r == 0:
            _check_ended(ended)
        hist.reward.append(sum(rewards) / len(rewards))
        hist.ended.append(sum(ended) / len(ended))
        if kept:  # fine-tune on the kept answers as on data, a fresh optimizer each round
            finetune(policy, kept, steps=sft_steps, pad_id=pad, batch_size=batch_size, lr=lr, params=params,
                     warmup=0, seed=seed + r, progress=False)
    hist.seconds = time.perf_counter() - start
    return hist
