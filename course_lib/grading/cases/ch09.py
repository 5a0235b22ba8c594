"""Exercise 9 (post-training): the graded parts and their visible cases.

The parts do not build on one another: each is handed its inputs as data, never a model.

- ``assistant_mask``: the token ids of a chat (a list of ints, as ``course_lib.chat.encode_chat``
  returns them) and the ids of the three chat tokens. The chats of the visible cases are
  encoded here with the chapter's tokenizer (the shipped BPE with the chat tokens added,
  ``chat_ids``), once, when this module is imported; nothing of course_lib runs while the
  student's code does.
- ``lora_forward`` and ``lora_merge``: the tensors of a linear layer and its LoRA matrices
  (A (r, in), B (out, r)) and alpha, never a ``course_lib.lora.LoRALinear``.
- ``dpo_loss``: four (B,) tensors of summed log-probabilities and beta; the policy's two carry
  gradients, as in training, and a flag asks for their gradients (``_dpo``).
- ``group_advantages``: a (P, G) tensor of rewards, with or without eps and scale.
- ``lora_from_delta``: a weight update ΔW, r and alpha. The factors are not unique (any
  invertible r x r matrix can move between them), so the call hands out what they fix: their
  shapes and the update they make, ``(alpha / r) B A`` (``_factors``).
"""

from __future__ import annotations

import functools

import torch

from course_lib.grading.kernel import Part


# ---------------------------------------------------------------- Part 1: assistant_mask
@functools.lru_cache(maxsize=1)
def chapter_tokenizer():
    """The chapter's tokenizer: the shipped BPE with the chat tokens added (``chat.chat_tokenizer``)."""
    from course_lib import bert_cli, chat

    return chat.chat_tokenizer(bert_cli.load_shipped("cpu", kind="gpt")[1])


def chat_ids(turns, generation_prompt=False) -> list[int]:
    """The ids of a chat in the chapter's format, its messages alternating user, assistant, ...
    (``turns``: their texts), as ``course_lib.chat.encode_chat`` writes them with the chapter's
    tokenizer."""
    from course_lib import chat

    messages = [{"role": "user" if i % 2 == 0 else "assistant", "content": t} for i, t in enumerate(turns)]
    return chat.encode_chat(chapter_tokenizer(), messages, add_generation_prompt=generation_prompt)[0]


def chat_token_ids() -> tuple[int, int, int]:
    """(user_id, assistant_id, end_id) of the chapter's tokenizer."""
    from course_lib.chat import ASSISTANT, END, USER

    sp = chapter_tokenizer().special_tokens
    return sp[USER], sp[ASSISTANT], sp[END]


def _mask_visible():
    user, assistant, end = chat_token_ids()
    two_turns = chat_ids(["HAMLET: Who's there?\nReply as BERNARDO.", "Long live the king!",
                          "Last word of: Stand, and unfold yourself.", "yourself"])
    prompt = chat_ids(["How many words: Not a mouse stirring.", "4", "Genre of: The rest is silence."],
                      generation_prompt=True)
    return {
        "hand-worked example: one exchange": ([user, 40, 41, 42, assistant, 50, 51, end], user, assistant, end),
        "two exchanges in the chapter's format": (two_turns, user, assistant, end),
        "a prompt for the next answer: the chat ends with <|assistant|>": (prompt, user, assistant, end),
    }


# ---------------------------------------------------------------- Parts 2 and 3: lora_forward, lora_merge
def lora_case(n_in, n_out, r, seed, batch=(4,), dtype=torch.float64, bias=True, zero_B=False):
    """(x, weight, bias, A, B) of a random layer: x (*batch, in), weight (out, in), bias (out,) or
    None, A (r, in), B (out, r) (zeros with ``zero_B``, LoRA's start), all seeded."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*batch, n_in, generator=g, dtype=dtype)
    weight = torch.randn(n_out, n_in, generator=g, dtype=dtype) / n_in ** 0.5
    b = torch.randn(n_out, generator=g, dtype=dtype) if bias else None
    A = torch.randn(r, n_in, generator=g, dtype=dtype) / n_in ** 0.5
    B = torch.zeros(n_out, r, dtype=dtype) if zero_B else torch.randn(n_out, r, generator=g, dtype=dtype)
    return x, weight, b, A, B


def _tiny_lora():
    """in = out = 2, r = 1: W the identity, b = [0, 1], A = [[1, 1]], B = [[1], [0]]."""
    return (torch.tensor([[1.0, 2.0]]), torch.eye(2), torch.tensor([0.0, 1.0]), torch.tensor([[1.0, 1.0]]),
            torch.tensor([[1.0], [0.0]]))


def _forward_visible():
    x, w, b, A, B = _tiny_lora()
    x0, w0, b0, A0, B0 = lora_case(8, 4, 2, 0, dtype=torch.float32, zero_B=True)
    x1, w1, b1, A1, B1 = lora_case(16, 8, 4, 1, batch=(2, 5), dtype=torch.float32)
    return {
        "hand-worked example: in = out = 2, r = 1, alpha = 2": (x, w, b, A, B, 2.0),
        "B = 0, LoRA's start: the pretrained layer exactly": (x0, w0, b0, A0, B0, 16.0),
        "a batch (2, 5, 16) through a 16 -> 8 layer, r = 4, alpha = 8": (x1, w1, b1, A1, B1, 8.0),
    }


def _merge_visible():
    _, w, _, A, B = _tiny_lora()
    _, w0, _, A0, B0 = lora_case(8, 4, 2, 0, dtype=torch.float32, zero_B=True)
    _, w1, _, A1, B1 = lora_case(16, 8, 4, 1, dtype=torch.float32)
    return {
        "hand-worked example: in = out = 2, r = 1, alpha = 2": (w, A, B, 2.0),
        "B = 0: the weight unchanged": (w0, A0, B0, 16.0),
        "a 16 -> 8 layer, r = 4, alpha = 8": (w1, A1, B1, 8.0),
    }


# ---------------------------------------------------------------- Part 4: dpo_loss
def logp_case(n, seed, dtype=torch.float32, margin=None):
    """(policy_chosen, policy_rejected, ref_chosen, ref_rejected): n summed log-probabilities of
    answers of 5-30 tokens (-2 nats a token or so), the policy a little off the reference; with
    ``margin``, the policy's chosen answers are that much more likely relative to the reference
    than its rejected ones (beta times it is the loss's argument)."""
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(5, 30, (2, n), generator=g).to(dtype)
    ref = -tokens * (1.5 + torch.rand(2, n, generator=g, dtype=dtype))
    policy = ref + torch.randn(2, n, generator=g, dtype=dtype)
    if margin is not None:
        policy[0] = ref[0] + margin / 2
        policy[1] = ref[1] - margin / 2
    return policy[0].clone(), policy[1].clone(), ref[0].clone(), ref[1].clone()


def _dpo(ns, policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta, grad):
    """dpo_loss on these log-probabilities, the policy's two with gradients (as in training);
    with ``grad``, the gradients of the loss with respect to them as well."""
    pc, pr = policy_chosen.clone().requires_grad_(True), policy_rejected.clone().requires_grad_(True)
    result = ns["dpo_loss"](pc, pr, ref_chosen.clone(), ref_rejected.clone(), beta)
    if not grad or type(result) is not tuple or len(result) != 3 or type(result[0]) is not torch.Tensor:
        return result
    result[0].backward()
    return (*result, pc.grad, pr.grad)


def _dpo_visible():
    z = torch.zeros(3)
    return {
        "hand-worked example: policy = reference, loss ln 2": (z, z, z, z, 0.1, False),
        "a batch of 8, beta = 0.1": (*logp_case(8, 0), 0.1, False),
        "a large margin against the chosen answers (beta x margin = -120): no inf":
            (*logp_case(4, 1, margin=-1200.0), 0.1, False),
    }


# ---------------------------------------------------------------- Part 5: group_advantages
def _advantages_visible():
    return {
        "hand-worked example: one group of 4 answers, rewards 1, 0, 0, 1": (torch.tensor([[1.0, 0.0, 0.0, 1.0]]),),
        "a group whose answers all scored alike: advantages 0, not nan":
            (torch.tensor([[0.5, 0.5, 0.5, 0.5], [0.0, 1.0, 0.0, 0.0]]),),
        "scale=False: the rewards minus their group's mean":
            (torch.tensor([[0.2, 0.9, 0.4], [1.0, 0.0, 0.5]]), 1e-4, False),
    }


# ---------------------------------------------------------------- Part 6: lora_from_delta
def decaying_delta(n_out, n_in, seed, decay=0.7, rank=None, dtype=torch.float32):
    """An update ΔW (out, in) = U diag(s) Vᵀ with random orthonormal U and V (seeded) and singular
    values s_i = 3 decay^i (well apart, as a fine-tuning update's fall off), the first ``rank``
    of them only if given."""
    g = torch.Generator().manual_seed(seed)
    k = min(n_out, n_in)
    U, _ = torch.linalg.qr(torch.randn(n_out, k, generator=g, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(n_in, k, generator=g, dtype=torch.float64))
    s = 3.0 * decay ** torch.arange(k, dtype=torch.float64)
    if rank is not None:
        s[rank:] = 0.0
    return ((U * s) @ V.T).to(dtype)


def _factors(ns, delta, r, alpha):
    """(A's shape, B's shape, (alpha / r) B A): what lora_from_delta's factors are and make; what
    it returned as it is where that is not a pair of 2-D tensors."""
    result = ns["lora_from_delta"](delta.clone(), r, alpha)
    if type(result) is not tuple or len(result) != 2 or any(type(t) is not torch.Tensor for t in result):
        return result
    A, B = result
    if A.dim() != 2 or B.dim() != 2 or A.shape[0] != B.shape[1]:
        return tuple(A.shape), tuple(B.shape), None
    return tuple(A.shape), tuple(B.shape), (alpha / r) * (B.detach() @ A.detach())


def _delta_visible():
    return {
        "hand-worked example: diag(3, 2, 1), r = 1, alpha = 1": (torch.diag(torch.tensor([3.0, 2.0, 1.0])), 1, 1.0),
        "a 12 x 8 update, r = 3, alpha = 6": (decaying_delta(12, 8, 0), 3, 6.0),
        "r = 8, the full rank of an 8 x 12 update: ΔW itself": (decaying_delta(8, 12, 1), 8, 16.0),
    }


PARTS = {
    "assistant_mask": Part("test_assistant_mask", "assistant_mask", _mask_visible()),
    "lora_forward": Part("test_lora_forward", "lora_forward", _forward_visible()),
    "lora_merge": Part("test_lora_merge", "lora_merge", _merge_visible()),
    "dpo_loss": Part("test_dpo_loss", "dpo_loss", _dpo_visible(), call=_dpo),
    "group_advantages": Part("test_group_advantages", "group_advantages", _advantages_visible()),
    "lora_from_delta": Part("test_lora_from_delta", "lora_from_delta", _delta_visible(), call=_factors),
}
