"""Speculative decoding: a cheap draft model proposes k tokens, the target model checks them
all in one forward pass, and a rejection rule keeps the output exactly the target's.

For each drafted token d, drawn from the draft's q, the target's p (computed for all k
positions at once) accepts it with probability min(1, p(d) / q(d)). At the first rejection
the token is drawn from the residual max(p - q, 0), normalised, and the rest of the draft is
dropped; if all k pass, one more token comes free from the target's last distribution. Each
token then follows p exactly (Leviathan et al., 2023; Chen et al., 2023), and greedy decoding
(``temperature=0``: accept d when it is the target's argmax) returns the target's own greedy
text. The gain is wall-clock: one target pass yields between 1 and k + 1 tokens.

A draft is any object with ``probs(ids) -> (V,)``, the next-token distribution given the
token ids so far: ``GPTDraft`` (a small GPT, with its own KV cache) or ``NGramDraft``
(chapter 1's n-gram model over the target's token ids).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .gpt import KVCache
from .ngram import NGramLM

__all__ = ["GPTDraft", "NGramDraft", "SpecStats", "speculative_generate", "accept_or_resample", "expected_speedup"]


class GPTDraft:
    """A GPT as a draft: ``probs(ids)`` reuses a KV cache for the longest prefix it has seen
    (drafting appends one token at a time; after a rejection the cache is cropped back)."""

    def __init__(self, model):
        self.model = model.eval()
        self.block = model.get_block_size()
        self.cache, self.ids = KVCache(), []

    @torch.no_grad()
    def probs(self, ids: list[int]) -> torch.Tensor:
        ids = list(ids)
        if len(ids) > self.block:  # beyond the block the positions shift: no cache
            self.cache, self.ids = KVCache(), []
            logits, _ = self.model(torch.tensor([ids[-self.block:]], device=_device(self.model)))
            return F.softmax(logits[0, -1].float().cpu(), dim=-1)
        same = 0
        for a, b in zip(self.ids, ids[:-1]):  # keep at least the last token to feed
            if a != b:
                break
            same += 1
        self.cache.crop(min(same, len(self.cache)))
        new = ids[len(self.cache):]
        logits, _ = self.model(torch.tensor([new], device=_device(self.model)), cache=self.cache)
        self.ids = ids
        return F.softmax(logits[0, -1].float().cpu(), dim=-1)


class NGramDraft:
    """Chapter 1's ``NGramLM`` fitted on token ids written as strings (``str(id)``) as a draft
    for a model over ``vocab_size`` ids. Its distribution is spread over the target's ids;
    mass on ``<s>``, ``</s>`` and ``<unk>`` is dropped and the rest renormalised."""

    MEMO = 20_000

    def __init__(self, ngram: NGramLM, vocab_size: int):
        if not isinstance(ngram, NGramLM) or ngram.vocab is None:
            raise ValueError("expected a fitted NGramLM")
        self.ngram, self.vocab_size = ngram, vocab_size
        pos, ids = [], []
        for i, tok in enumerate(ngram.vocab):
            if tok.isdigit() and int(tok) < vocab_size:
                pos.append(i)
                ids.append(int(tok))
        if not ids:
            raise ValueError("the n-gram model knows none of the ids 0..vocab_size-1 (fit it on str(id) tokens)")
        self._pos, self._ids = np.array(pos), torch.tensor(ids)
        self._memo: dict[tuple[str, ...], torch.Tensor] = {}  # context -> distribution, most recent last

    @classmethod
    def fit(cls, sequences: list[list[int]], vocab_size: int, order: int = 4, **kwargs) -> NGramDraft:
        """Fit an interpolated Kneser-Ney ``order``-gram model on id sequences."""
        ngram = NGramLM(order, "kneser_ney", **kwargs).fit([[str(i) for i in s] for s in sequences])
        return cls(ngram, vocab_size)

    def probs(self, ids: list[int]) -> torch.Tensor:
        """The next-id distribution after ``ids``; the last ``MEMO`` contexts are remembered
        (a count-based model's distribution for a context never changes)."""
        want = self.ngram.order - 1
        context = tuple(str(i) for i in list(ids)[len(ids) - want:]) if want else ()
        if context in self._memo:
            return self._memo[context]
        dist = self.ngram.distribution(list(context))
        out = torch.zeros(self.vocab_size, dtype=torch.float32)
        out[self._ids] = torch.from_numpy(np.asarray(dist[self._pos], dtype=np.float32))
        total = out.sum()
        out = out / total if total > 0 else torch.full((self.vocab_size,), 1.0 / self.vocab_size)
        if len(self._memo) >= self.MEMO:
            self._memo.pop(next(iter(self._memo)))  # the oldest
        self._memo[context] = out
        return out


@dataclass
class SpecStats:
    """What a speculative run did: ``rounds`` target passes, ``proposed`` and ``accepted``
    draft tokens, ``new_tokens`` written."""
    rounds: int = 0
    proposed: int = 0
    accepted: int = 0
    new_tokens: int = 0

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.proposed if self.proposed else 0.0

    @property
    def tokens_per_pass(self) -> float:
        return self.new_tokens / self.rounds if self.rounds else 0.0


def accept_or_resample(p: torch.Tensor, q: torch.Tensor, drafted: list[int], u: torch.Tensor,
                       generator: torch.Generator | None = None) -> tuple[int, int]:
    """The rejection rule for one round. ``p`` (k+1, V): the target's distributions after
    the context and after each drafted token; ``q`` (k, V): the draft's; ``drafted``: the k
    tokens; ``u`` (k,): uniform draws. Returns (n accepted, the next token): the n first
    drafted tokens pass while u_j < p_j(d_j) / q_j(d_j); the next token comes from
    norm(max(p_n - q_n, 0)) after a rejection, from p_k when all pass."""
    k = len(drafted)
    for j, d in enumerate(drafted):
        if not u[j] * q[j, d] < p[j, d]:  # u < p/q, without dividing (q(d) > 0: d was drawn from q)
            residual = (p[j] - q[j]).clamp(min=0)
            total = residual.sum()
            dist = residual / total if total > 0 else p[j]
            return j, int(torch.multinomial(dist, 1, generator=generator))
    return k, int(torch.multinomial(p[k], 1, generator=generator))


def speculative_generate(target, draft, prompt, max_new_tokens: int, k: int = 4, temperature: float = 1.0,
                         generator: torch.Generator | None = None) -> tuple[list[int], SpecStats]:
    """Continue ``prompt`` (a list of ids, or a (T,) or (1, T) tensor) by ``max_new_tokens``
    tokens of ``target`` (a GPT), drafting ``k`` at a time with ``draft``. ``temperature=0``
    is greedy decoding. Returns (prompt + new ids, ``SpecStats``). The target keeps a KV
    cache, cropped after each rejection; prompt + new tokens must fit in its block.
    Sampling (the draft's, the uniforms and the resampling) runs on the CPU with ``generator``.
    """
    ids = _prompt_list(prompt)
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be an integer >= 1, got {k!r}")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be an integer >= 1, got {max_new_tokens!r}")
    if not (isinstance(temperature, (int, float)) and temperature >= 0):
        raise ValueError(f"temperature must be a number >= 0 (0: greedy), got {temperature!r}")
    block = target.get_block_size()
    if len(ids) + max_new_tokens > block:
        raise ValueError(f"prompt ({len(ids)} tokens) + max_new_tokens ({max_new_tokens}) exceed the target's "
                         f"block of {block}")
    greedy = temperature == 0
    device = _device(target)
    stats = SpecStats()
    was_training = target.training
    target.eval()
    try:
        with torch.no_grad():
            cache = KVCache()
            if len(ids) > 1:
                target(torch.tensor([ids[:-1]], device=device), cache=cache)  # every position but the last
            end = len(ids) + max_new_tokens
            while len(ids) < end:
                kk = min(k, end - len(ids) - 1)  # a round writes at most kk + 1 tokens
                drafted, qs, context = [], [], list(ids)
                for _ in range(kk):
                    q = draft.probs(context)  # (V,)
                    d = int(q.argmax()) if greedy else int(torch.multinomial(q, 1, generator=generator))
                    drafted.append(d)
                    qs.append(q)
                    context.append(d)
                logits, _ = target(torch.tensor([[ids[-1]] + drafted], device=device), cache=cache)  # (1, kk+1, V)
                logits = logits[0].float().cpu()
                if greedy:
                    best = logits.argmax(dim=-1).tolist()  # (kk+1,)
                    n = 0
                    while n < kk and drafted[n] == best[n]:
                        n += 1
                    nxt = best[n]
                else:
                    p = F.softmax(logits / temperature, dim=-1)  # (kk+1, V)
                    q = torch.stack(qs) if qs else torch.empty(0, p.shape[1])
                    u = torch.rand(kk, generator=generator)
                    n, nxt = accept_or_resample(p, q, drafted, u, generator)
                ids += drafted[:n] + [nxt]
                cache.crop(len(ids) - 1)
                stats.rounds += 1
                stats.proposed += kk
                stats.accepted += n
                stats.new_tokens += n + 1
    finally:
        target.train(was_training)
    return ids, stats


def expected_speedup(alpha: float, k: int, cost_ratio: float) -> float:
    """Leviathan et al.'s expected wall-clock speed-up: a pass yields (1 - alpha^(k+1)) /
    (1 - alpha) tokens on average, if each drafted token is accepted with probability
    ``alpha`` independently, and costs k * c + 1 target passes, c = ``cost_ratio`` = the time
    of one draft token / the time of one target pass."""
    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha must be in [0, 1], got {alpha!r}")
    tokens = k + 1 if alpha == 1 else (1 - alpha ** (k + 1)) / (1 - alpha)
    return tokens / (k * cost_ratio + 1)


def _prompt_list(prompt) -> list[int]:
    if isinstance(prompt, torch.Tensor):
        if prompt.dim() == 2 and prompt.shape[0] == 1:
            prompt = prompt[0]
        if prompt.dim() != 1:
            raise ValueError(f"speculative decoding continues one sequence: expected a (T,) or (1, T) prompt, "
                             f"got {tuple(prompt.shape)}")
        prompt = prompt.tolist()
    ids = [int(i) for i in prompt]
    if not ids:
        raise ValueError("the prompt is empty: give at least one token")
    return ids


def _device(model) -> torch.device:
    return next(model.parameters()).device
