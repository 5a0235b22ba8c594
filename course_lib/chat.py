"""From a pretrained GPT to an assistant: the chat format, its data and the SFT loss (chapter 9).

A pretrained model continues text; a chat model answers. The difference is learned from
examples written in one fixed format, a *chat template*: each message is opened by a special
token naming its role and the assistant's message is closed by one that says it is over::

    >>> render([{"role": "user", "content": "Who art thou?"}, {"role": "assistant", "content": "A friend."}])
    '<|user|>Who art thou?<|assistant|>A friend.<|end|>'
    >>> render([{"role": "user", "content": "Who art thou?"}], add_generation_prompt=True)
    '<|user|>Who art thou?<|assistant|>'

The special tokens are added to chapter 2's BPE (``chat_tokenizer``), which never splits
them, and to the model's embedding (``extend_vocab``). ``encode_chat`` returns the token ids
and a mask that is 1 on the tokens the assistant wrote (its text and the ``<|end|>`` that
stops it) and 0 elsewhere; supervised fine-tuning (SFT) scores only those
(``sft_targets``), so the model learns to answer, not to imitate the user.

The data are built from the plays, split by play as every chapter: ``exchanges`` pairs the
last line of a speech with the first line of the next speech ("reply as ..."), and
``instructions`` makes questions whose answers are checked exactly (who spoke first, the
last word of a line, how many words it has, the genre of its play).

Scope: single-turn chats that fit the model's block; the format is this course's own (every
chat model defines its own; ``transformers`` stores one per model as a Jinja template).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

import torch

from .data import load_split
from .genre import play_genre
from .gpt import GPT, GPTConfig
from .tokenizers import BPETokenizer

__all__ = ["USER", "ASSISTANT", "END", "CHAT_TOKENS", "render", "chat_tokenizer", "extend_vocab", "encode_chat",
           "sft_targets", "Exchange", "speeches", "exchanges", "reply_messages", "Instruction", "TASKS",
           "instructions", "pad_batch"]

USER, ASSISTANT, END = "<|user|>", "<|assistant|>", "<|end|>"
CHAT_TOKENS = (USER, ASSISTANT, END)
_ROLES = {"user": USER, "assistant": ASSISTANT}


def _check_messages(messages) -> list[dict]:
    if not isinstance(messages, (list, tuple)) or not messages:
        raise ValueError("messages must be a non-empty list of {'role': ..., 'content': ...} dicts")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or set(m) != {"role", "content"}:
            raise ValueError(f"message {i} must be a dict with the keys 'role' and 'content', got {m!r}")
        if m["role"] not in _ROLES:
            raise ValueError(f"message {i}: role must be 'user' or 'assistant', got {m['role']!r}")
        if not isinstance(m["content"], str):
            raise TypeError(f"message {i}: content must be a str, got {type(m['content']).__name__}")
        if any(t in m["content"] for t in CHAT_TOKENS):
            raise ValueError(f"message {i} contains a chat token {CHAT_TOKENS}: only the template may write them")
        expected = "user" if i % 2 == 0 else "assistant"
        if m["role"] != expected:
            raise ValueError(f"message {i} has role {m['role']!r}; messages alternate user, assistant, "
                             "user, ... starting with the user")
    return list(messages)


def render(messages, add_generation_prompt: bool = False) -> str:
    """The text of a chat: ``<|user|>`` before each user message, ``<|assistant|>`` before each
    assistant message and ``<|end|>`` after it. ``add_generation_prompt=True`` (the chat must
    end with a user message) appends ``<|assistant|>``: the model is asked to answer next."""
    messages = _check_messages(messages)
    parts = []
    for m in messages:
        parts.append(_ROLES[m["role"]] + m["content"] + (END if m["role"] == "assistant" else ""))
    if add_generation_prompt:
        if messages[-1]["role"] != "user":
            raise ValueError("add_generation_prompt=True needs a chat that ends with a user message")
        parts.append(ASSISTANT)
    return "".join(parts)


def chat_tokenizer(base: BPETokenizer) -> BPETokenizer:
    """``base`` with the chat tokens added as special tokens after its own: every existing id
    keeps its meaning, the three new ones come last (so ``extend_vocab`` can grow a model)."""
    if not isinstance(base, BPETokenizer):
        raise TypeError(f"expected a course_lib BPETokenizer, got {type(base).__name__}")
    specials = list(base.special_tokens)
    return BPETokenizer(base.merges, specials + [t for t in CHAT_TOKENS if t not in specials])


def extend_vocab(model: GPT, vocab_size: int) -> GPT:
    """A copy of ``model`` whose (tied) embedding has ``vocab_size`` rows: the old rows copied,
    each new row the mean of the old ones (a neutral start, the common practice). The
    returned model is a new ``GPT``; ``model`` is left unchanged."""
    if not isinstance(model, GPT):
        raise TypeError(f"expected a course_lib GPT, got {type(model).__name__}")
    old = model.config.vocab_size
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < old:
        raise ValueError(f"vocab_size must be an integer >= the model's {old}, got {vocab_size!r}")
    fields = {k: getattr(model.config, k) for k in ("block_size", "n_layer", "n_head", "n_embd", "dropout", "bias")}
    new = GPT(GPTConfig(vocab_size=vocab_size, **fields)).to(next(model.parameters()).device)
    state = model.state_dict()
    wte = state["transformer.wte.weight"]  # (V_old, C)
    grown = torch.cat([wte, wte.mean(0, keepdim=True).expand(vocab_size - old, -1)])  # (V_new, C)
    state["transformer.wte.weight"] = grown
    state["lm_head.weight"] = grown
    new.load_state_dict(state)
    return new


def encode_chat(tokenizer: BPETokenizer, messages, add_generation_prompt: bool = False) -> tuple[list[int], list[int]]:
    """``(ids, mask)`` of ``render(messages, add_generation_prompt)``: ``mask[i]`` is 1 where
    token ``i`` was written by the assistant (its content and its ``<|end|>``), 0 elsewhere
    (user text and every role token). The ids equal ``tokenizer.encode(render(...))``."""
    messages = _check_messages(messages)
    missing = [t for t in CHAT_TOKENS if t not in tokenizer.special_tokens]
    if missing:
        raise ValueError(f"the tokenizer lacks the chat tokens {missing}; build it with chat_tokenizer(base)")
    sp = tokenizer.special_tokens
    ids: list[int] = []
    mask: list[int] = []
    for m in messages:
        content = tokenizer.encode(m["content"])
        if m["role"] == "user":
            ids += [sp[USER], *content]
            mask += [0] * (1 + len(content))
        else:
            ids += [sp[ASSISTANT], *content, sp[END]]
            mask += [0] + [1] * (len(content) + 1)
    if add_generation_prompt:
        if messages[-1]["role"] != "user":
            raise ValueError("add_generation_prompt=True needs a chat that ends with a user message")
        ids.append(sp[ASSISTANT])
        mask.append(0)
    return ids, mask


def sft_targets(ids, mask) -> tuple[torch.Tensor, torch.Tensor]:
    """``(inputs, targets)`` for supervised fine-tuning from ``(B, T)`` (or ``(T,)``) ids and mask:
    ``inputs = ids[..., :-1]``, ``targets = ids[..., 1:]`` with -1 (the course's "skip") wherever
    the target token is not the assistant's. A GPT's loss on them is the SFT loss: the mean
    cross-entropy over the assistant's tokens only."""
    ids = torch.as_tensor(ids)
    mask = torch.as_tensor(mask)
    if ids.shape != mask.shape or ids.dim() not in (1, 2) or ids.shape[-1] < 2:
        raise ValueError(f"ids and mask must have the same shape (T,) or (B, T) with T >= 2, got "
                         f"{tuple(ids.shape)} and {tuple(mask.shape)}")
    if not bool(((mask == 0) | (mask == 1)).all()):
        raise ValueError("mask must hold only 0 and 1")
    targets = ids[..., 1:].clone()
    targets[mask[..., 1:] == 0] = -1
    return ids[..., :-1].long(), targets.long()


def pad_batch(rows: list[tuple[list[int], list[int]]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad ``(ids, mask)`` rows to one ``(B, T)`` pair of tensors; padding has mask 0, so
    it is never a target (a causal model never reads a later token, so it changes nothing else)."""
    if not rows:
        raise ValueError("rows is empty")
    T = max(len(ids) for ids, _ in rows)
    ids = torch.full((len(rows), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), T), dtype=torch.long)
    for i, (r, m) in enumerate(rows):
        if len(r) != len(m):
            raise ValueError(f"row {i}: ids and mask differ in length ({len(r)} and {len(m)})")
        ids[i, :len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, :len(m)] = torch.tensor(m, dtype=torch.long)
    return ids, mask


# ---------------------------------------------------------------------------- data from the plays
@dataclass(frozen=True)
class Exchange:
    """Two neighbouring speeches of a play: the last line of one, the first line of the next."""

    play: str
    speaker: str
    line: str
    reply_speaker: str
    reply: str


def speeches(text: str) -> list[tuple[str, list[str]]]:
    """``(speaker, lines)`` of each speech of a rendered play (``data.render_markdown``)."""
    out = []
    for block in text.split("\n\n"):
        lines = [x for x in block.split("\n") if x.strip()]
        if len(lines) >= 2 and lines[0].endswith(":"):
            out.append((lines[0][:-1].strip(), lines[1:]))
    return out


def exchanges(split: str, max_chars: int = 60) -> list[Exchange]:
    """Every pair of neighbouring speeches by two different speakers in the plays of ``split``
    whose two lines are at most ``max_chars`` characters each, in the plays' order."""
    out = []
    for play in load_split(split):
        sp = speeches(play.text)
        for (a, a_lines), (b, b_lines) in zip(sp, sp[1:]):
            line, reply = a_lines[-1].strip(), b_lines[0].strip()
            if a != b and 0 < len(line) <= max_chars and 0 < len(reply) <= max_chars:
                out.append(Exchange(play.name, a, line, b, reply))
    return out


def reply_messages(ex: Exchange, with_reply: bool = True) -> list[dict]:
    """The chat of one exchange: the user quotes a line and names who answers; the assistant
    answers with the real reply (``with_reply=False``: the user's message alone)."""
    user = {"role": "user", "content": f"{ex.speaker}: {ex.line}\nReply as {ex.reply_speaker}."}
    return [user, {"role": "assistant", "content": ex.reply}] if with_reply else [user]


@dataclass(frozen=True)
class Instruction:
    """A question whose answer is checked exactly; ``task`` is one of ``TASKS``."""

    task: str
    play: str
    prompt: str
    answer: str

    def messages(self, with_answer: bool = True) -> list[dict]:
        user = {"role": "user", "content": self.prompt}
        return [user, {"role": "assistant", "content": self.answer}] if with_answer else [user]


TASKS = ("first_speaker", "last_word", "word_count", "genre")
_WORD = re.compile(r"[A-Za-z][A-Za-z']*")


def _task(task: str, play, sp, i: int) -> Instruction | None:
    (a, a_lines), (b, b_lines) = sp[i], sp[i + 1]
    line = a_lines[-1].strip()
    words = _WORD.findall(line)
    if task == "first_speaker":
        first, second = a_lines[-1].strip(), b_lines[0].strip()
        if a == b or len(first) > 40 or len(second) > 40:
            return None
        return Instruction(task, play.name, f"{a}: {first}\n{b}: {second}\nWho spoke first?", a)
    if task == "last_word":
        if not words or len(line) > 60:
            return None
        return Instruction(task, play.name, f"Last word of: {line}", words[-1])
    if task == "word_count":
        if not 1 <= len(words) <= 9 or len(line) > 60:
            return None
        return Instruction(task, play.name, f"How many words: {line}", str(len(words)))
    # genre: two lines of the play, the genre of the whole play (chapter 8's classes)
    lines = " ".join(x.strip() for x in a_lines[-2:])
    if len(lines) > 100 or len(lines) < 30:
        return None
    return Instruction(task, play.name, f"Genre of: {lines}", play_genre(play))


def instructions(split: str, per_task: int | None = None, seed: int = 0) -> list[Instruction]:
    """Checkable questions about the plays of ``split``, ``per_task`` of each task at most
    (drawn at random with ``seed``; None: all), shuffled. Every answer can be verified from
    the text alone, so exact match is the score."""
    if per_task is not None and (isinstance(per_task, bool) or not isinstance(per_task, int) or per_task < 1):
        raise ValueError(f"per_task must be an integer >= 1 or None, got {per_task!r}")
    rng = random.Random(seed)
    out = []
    for task in TASKS:
        found = []
        for play in load_split(split):
            sp = speeches(play.text)
            for i in range(len(sp) - 1):
                item = _task(task, play, sp, i)
                if item is not None:
                    found.append(item)
        if per_task is not None and len(found) > per_task:
            found = rng.sample(found, per_task)
        out += found
    rng.shuffle(out)
    return out
