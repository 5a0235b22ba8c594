"""Exercise 9: expected values and the hidden cases.

The library is the reference:

- assistant_mask: ``course_lib.chat.encode_chat``'s mask. The expected value is read back from
  the ids by the rule encode_chat writes (``_mask_expected``); every hidden chat is encoded by
  encode_chat itself (cut short, padded by ``chat.pad_batch``, its chat tokens moved), and the
  rule must give encode_chat's own mask on it, or building the cases fails (``_chat_case``).
- lora_forward and lora_merge: a ``course_lib.lora.LoRALinear`` holding the case's tensors,
  its forward and ``lora.merge``.
- dpo_loss: ``course_lib.preference.dpo_loss`` and its autograd gradients.
- group_advantages: ``course_lib.rl.group_advantages``.
- lora_from_delta: the truncated SVD (Eckart and Young, 1936: the best rank-r approximation in
  the Frobenius and spectral norms, unique when the r-th and (r+1)-th singular values differ,
  as they do in every case), put into a ``LoRALinear`` as A and B; the expected update is its
  ``delta_weight()``, ``(alpha / r) B A``. The cases' singular values are well apart.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from course_lib import chat, preference, rl
from course_lib.grading.cases.ch09 import chapter_tokenizer, chat_ids, chat_token_ids, decaying_delta, logp_case, \
    lora_case
from course_lib.grading.verdict import Ref
from course_lib.lora import LoRALinear, merge

LINES = [
    "HAMLET: Who's there?\nReply as BERNARDO.", "Long live the king!", "Nay, answer me: stand, and unfold yourself.",
    "Last word of: Thou art a scholar; speak to it, Horatio.", "Horatio", "How many words: Peace, break thee off.",
    "4", "Genre of: If music be the food of love, play on; Give me excess of it.", "comedy",
    "ROMEO: But, soft! what light through yonder window breaks?\nReply as JULIET.", "Ay me!", "",
    "Who spoke first?", "O, that this too too solid flesh would melt,", "The lady doth protest too much, methinks.",
]


# ---------------------------------------------------------------- Part 1: assistant_mask
def _mask_expected(ids, user_id, assistant_id, end_id):
    """encode_chat's mask, read from the ids: 1 from the token after an <|assistant|> up to and
    including the <|end|> that closes the reply, 0 on the role tokens, the user's tokens and
    anything after an <|end|> until the next role token (padding)."""
    mask, answering = [], False
    for t in ids:
        if t == user_id or t == assistant_id:
            mask.append(0)
            answering = t == assistant_id
        elif answering:
            mask.append(1)
            answering = t != end_id
        else:
            mask.append(0)
    return mask


def _chat_case(turns, generation_prompt=False, cut=None, pad=0, move=False):
    """(ids, user_id, assistant_id, end_id) of a chat encoded by ``chat.encode_chat``, then cut to
    its first ``cut`` tokens (a block), or right-padded with <|end|> by ``chat.pad_batch`` to
    ``pad`` more tokens, or with its chat tokens moved to the ids 0, 1, 2 (``move``); checked
    against encode_chat's own mask."""
    user, assistant, end = chat_token_ids()
    messages = [{"role": "user" if i % 2 == 0 else "assistant", "content": t} for i, t in enumerate(turns)]
    ids, mask = chat.encode_chat(chapter_tokenizer(), messages, add_generation_prompt=generation_prompt)
    assert ids == chat_ids(turns, generation_prompt)
    if cut is not None:
        ids, mask = ids[:cut], mask[:cut]
    if pad:
        longer = ids + [0] * pad
        padded, padded_mask = chat.pad_batch([(ids, mask), (longer, [0] * len(longer))], end)
        ids, mask = padded[0].tolist(), padded_mask[0].tolist()
    if move:  # the chat tokens become 0, 1, 2; every other id moves up by 3
        table = {user: 0, assistant: 1, end: 2}
        ids = [table.get(t, t + 3) for t in ids]
        user, assistant, end = 0, 1, 2
    if _mask_expected(ids, user, assistant, end) != mask:
        raise RuntimeError(f"the reference rule disagrees with course_lib.chat.encode_chat's mask on {turns!r}")
    return ids, user, assistant, end


def _mask_cases(rng):
    cases = {
        "no answer yet: a user message alone": _chat_case(LINES[:1]),
        "a user message and the prompt for the answer": _chat_case(LINES[5:6], generation_prompt=True),
        "three exchanges": _chat_case(LINES[:6]),
        "a reply cut off before its <|end|> (the chat cut to a block)": _chat_case(LINES[:2], cut=-4),
        "cut just after <|assistant|>": _chat_case(LINES[3:5], cut=len(chat_ids(LINES[3:4])) + 1),
        "cut inside the second user message": _chat_case(LINES[:4], cut=len(chat_ids(LINES[:2])) + 5),
        "an empty reply: only its <|end|>": _chat_case([LINES[12], LINES[11]]),
        "an empty user message": _chat_case([LINES[11], LINES[1]]),
        "padded with <|end|> after the last reply (pad_batch with the chapter's pad id)":
            _chat_case(LINES[9:11], pad=6),
        "padded with <|end|> after a user message": _chat_case(LINES[:3], pad=4),
        "padded with <|end|> after three exchanges": _chat_case(LINES[3:9], pad=9),
        "the chat tokens at the ids 0, 1, 2": _chat_case(LINES[2:6], move=True),
        "five exchanges": _chat_case(LINES[:10]),
    }
    for i in range(2):
        n = int(rng.integers(1, 8))
        turns = [LINES[int(j)] for j in rng.integers(0, len(LINES), size=n)]
        full = len(chat_ids(turns, generation_prompt=n % 2 == 1))
        cut = int(rng.integers(1, full + 1)) if i == 1 else None
        cases[f"a random chat {i + 1}"] = _chat_case(turns, generation_prompt=n % 2 == 1, cut=cut)
    return cases


# ---------------------------------------------------------------- Parts 2 and 3: lora_forward, lora_merge
def _layer(weight, bias, A, B, alpha):
    """A course_lib LoRALinear holding these tensors."""
    n_out, n_in = weight.shape
    base = nn.Linear(n_in, n_out, bias=bias is not None, dtype=weight.dtype)
    layer = LoRALinear(base, r=A.shape[0], alpha=alpha)
    with torch.no_grad():
        base.weight.copy_(weight)
        if bias is not None:
            base.bias.copy_(bias)
        layer.lora_A.copy_(A)
        layer.lora_B.copy_(B)
    return layer.eval()


def _forward_expected(x, weight, bias, A, B, alpha):
    with torch.no_grad():
        return _layer(weight, bias, A, B, alpha)(x)


def _merge_expected(weight, A, B, alpha):
    model = merge(nn.Sequential(_layer(weight, None, A, B, alpha)))
    return model[0].weight.detach().clone()


def _lora_cases(rng, with_x):
    f64 = torch.float64
    cases = {
        "float64": lora_case(24, 12, 4, 10, dtype=f64),
        "no bias": lora_case(16, 8, 4, 11, bias=False, dtype=torch.float32),
        "r = 1": lora_case(16, 16, 1, 12, dtype=f64),
        "r = in: a 6 -> 20 layer with r = 6": lora_case(6, 20, 6, 13, dtype=f64),
        "alpha = r: no scaling": lora_case(12, 12, 8, 14, dtype=f64),
        "alpha = 2.5, not an integer": lora_case(12, 10, 4, 15, dtype=f64),
        "alpha = 32 (an int), r = 8": lora_case(20, 30, 8, 16, dtype=f64),
        "x of one vector (in,)": lora_case(10, 6, 2, 17, batch=(), dtype=f64),
        "x of (B, T, in) = (3, 7, 32), float32": lora_case(32, 16, 8, 18, batch=(3, 7), dtype=torch.float32),
    }
    alphas = {"alpha = r: no scaling": 8.0, "alpha = 2.5, not an integer": 2.5, "alpha = 32 (an int), r = 8": 32}
    out = {}
    for name, (x, w, b, A, B) in cases.items():
        alpha = alphas.get(name, 16.0)
        if with_x:
            out[name] = (x, w, b, A, B, alpha)
        elif name not in ("no bias", "x of one vector (in,)", "x of (B, T, in) = (3, 7, 32), float32"):
            out[name] = (w, A, B, alpha)
    for i in range(2):
        n_in, n_out = int(rng.integers(1, 40)), int(rng.integers(1, 40))
        r = int(rng.integers(1, min(n_in, n_out) + 1))
        dtype = [torch.float32, torch.float64][i]
        x, w, b, A, B = lora_case(n_in, n_out, r, int(rng.integers(2 ** 31)),
                                  batch=tuple(int(n) for n in rng.integers(1, 6, size=i + 1)), dtype=dtype,
                                  bias=bool(i))
        alpha = float(rng.uniform(0.5, 64))
        out[f"random sizes {i + 1}, {str(dtype).removeprefix('torch.')}"] = \
            (x, w, b, A, B, alpha) if with_x else (w, A, B, alpha)
    return out


# ---------------------------------------------------------------- Part 4: dpo_loss
def _dpo_expected(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta, grad):
    pc, pr = policy_chosen.clone().requires_grad_(True), policy_rejected.clone().requires_grad_(True)
    loss, chosen, rejected = preference.dpo_loss(pc, pr, ref_chosen, ref_rejected, beta)
    if not grad:
        return loss.detach(), chosen, rejected
    loss.backward()
    return loss.detach(), chosen, rejected, pc.grad, pr.grad


def _dpo_cases(rng):
    f64 = torch.float64
    cases = {
        "the gradient, a batch of 8, beta = 0.1": (*logp_case(8, 20), 0.1, True),
        "float64, beta = 0.5": (*logp_case(16, 21, f64), 0.5, False),
        "beta = 1": (*logp_case(8, 22), 1.0, False),
        "beta = 0.01": (*logp_case(8, 23), 0.01, False),
        "one pair": (*logp_case(1, 24), 0.1, False),
        "a large margin for the chosen answers (beta x margin = +150)": (*logp_case(4, 25, margin=1500.0), 0.1, False),
        "float64, beta x margin = -1000": (*logp_case(4, 26, f64, margin=-2000.0), 0.5, False),
        "the gradient at a large margin against the chosen answers: no nan":
            (*logp_case(4, 27, margin=-1500.0), 0.1, True),
        "the gradient in float64, beta = 0.3": (*logp_case(6, 28, f64), 0.3, True),
    }
    for i in range(2):
        n = int(rng.integers(1, 64))
        dtype = [torch.float32, torch.float64][i]
        cases[f"random batch {i + 1}, {str(dtype).removeprefix('torch.')}" + (", the gradient" if i else "")] = (
            *logp_case(n, int(rng.integers(2 ** 31)), dtype), float(rng.uniform(0.01, 2.0)), bool(i))
    return cases


# ---------------------------------------------------------------- Part 5: group_advantages
def _advantages_expected(rewards, eps=1e-4, scale=True):
    return rl.group_advantages(rewards, eps=eps, scale=scale)


def _advantages_cases(rng):
    g = torch.Generator().manual_seed(30)
    f64 = torch.float64
    verifier = (torch.rand(16, 8, generator=g) < 0.3).float()
    verifier[3] = 0.0  # a group where no answer scored
    verifier[7] = 1.0  # and one where every answer did
    cases = {
        "float64": (torch.rand(4, 6, generator=g, dtype=f64),),
        "G = 2": (torch.rand(5, 2, generator=g),),
        "16 prompts x 8 answers, rewards 0 or 1 (a verifier's)": (verifier,),
        "one prompt, 64 answers": (torch.rand(1, 64, generator=g),),
        "eps = 0.1": (torch.rand(3, 5, generator=g), 0.1, True),
        "eps = 0 on groups that differ": (torch.rand(3, 5, generator=g, dtype=f64), 0.0, True),
        "scale=False in float64": (torch.rand(4, 3, generator=g, dtype=f64), 1e-4, False),
        "negative rewards": (torch.randn(4, 8, generator=g) * 3 - 2,),
    }
    for i in range(2):
        P, G = int(rng.integers(1, 20)), int(rng.integers(2, 20))
        dtype = [torch.float32, torch.float64][i]
        gi = torch.Generator().manual_seed(int(rng.integers(2 ** 31)))
        cases[f"random rewards {i + 1}, {str(dtype).removeprefix('torch.')}"] = (
            torch.rand(P, G, generator=gi, dtype=dtype) * float(rng.uniform(0.1, 10)), float(rng.uniform(0, 0.01)),
            True)
    return cases


# ---------------------------------------------------------------- Part 6: lora_from_delta
def _delta_expected(delta, r, alpha):
    """((r, in), (out, r), (alpha / r) B A) for the truncated SVD's A and B in a LoRALinear."""
    n_out, n_in = delta.shape
    U, S, Vh = torch.linalg.svd(delta.double(), full_matrices=False)
    root = S[:r].sqrt()
    layer = LoRALinear(nn.Linear(n_in, n_out, dtype=torch.float64), r=r, alpha=alpha)
    with torch.no_grad():
        layer.lora_A.copy_(root[:, None] * Vh[:r] / layer.scaling)  # (r, in)
        layer.lora_B.copy_(U[:, :r] * root)  # (out, r)
        return (r, n_in), (n_out, r), layer.delta_weight().to(delta.dtype)


def _delta_cases(rng):
    g = torch.Generator().manual_seed(40)
    gaussian = torch.randn(20, 16, generator=g)
    s = torch.linalg.svdvals(gaussian)
    assert float(s[3] - s[4]) > 0.05 * float(s[0])  # r = 4 below: the best rank-4 approximation is unique
    cases = {
        "r = 1": (decaying_delta(10, 14, 41), 1, 16.0),
        "a tall update (40 x 6), r = 2": (decaying_delta(40, 6, 42), 2, 4.0),
        "a wide update (6 x 40), r = 5": (decaying_delta(6, 40, 43), 5, 10.0),
        "float64": (decaying_delta(16, 12, 44, dtype=torch.float64), 4, 8.0),
        "alpha = r: no scaling": (decaying_delta(12, 12, 45), 4, 4.0),
        "alpha = 1 with r = 8": (decaying_delta(16, 24, 46), 8, 1.0),
        "an update of rank 2, r = 4: recovered exactly": (decaying_delta(16, 16, 47, rank=2), 4, 8.0),
        "a Gaussian update, r = 4": (gaussian, 4, 8.0),
        "singular values falling slowly (0.95 a step)": (decaying_delta(24, 24, 48, decay=0.95), 6, 12.0),
    }
    for i in range(2):
        n_out, n_in = int(rng.integers(2, 48)), int(rng.integers(2, 48))
        r = int(rng.integers(1, min(n_out, n_in) + 1))
        dtype = [torch.float32, torch.float64][i]
        cases[f"random sizes {i + 1}, {str(dtype).removeprefix('torch.')}"] = (
            decaying_delta(n_out, n_in, int(rng.integers(2 ** 31)), decay=float(rng.uniform(0.5, 0.9)), dtype=dtype),
            r, float(rng.uniform(0.5, 64)))
    return cases


REFS = {
    "assistant_mask": Ref(_mask_expected, hidden=_mask_cases),
    "lora_forward": Ref(_forward_expected, hidden=lambda rng: _lora_cases(rng, True), rtol=1e-5, atol=1e-5),
    "lora_merge": Ref(_merge_expected, hidden=lambda rng: _lora_cases(rng, False), rtol=1e-5, atol=1e-5),
    "dpo_loss": Ref(_dpo_expected, hidden=_dpo_cases, rtol=1e-5, atol=1e-7),
    "group_advantages": Ref(_advantages_expected, hidden=_advantages_cases, rtol=1e-5, atol=1e-6),
    "lora_from_delta": Ref(_delta_expected, hidden=_delta_cases, rtol=1e-4, atol=1e-4),
}
