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

import math
import random
import re
import time
from dataclasses import dataclass, field

import torch

from .data import load_split
from .genre import play_genre
from .gpt import GPT, GPTConfig
from .preference import answer_logprobs
from .tokenizers import BPETokenizer
from .train import warmup_cosine

__all__ = ["USER", "ASSISTANT", "END", "CHAT_TOKENS", "render", "chat_tokenizer", "extend_vocab", "encode_chat",
           "sft_targets", "Exchange", "speeches", "exchanges", "reply_messages", "Instruction", "TASKS",
           "instructions", "pad_batch", "FinetuneHistory", "finetune", "answer_bits_per_char", "greedy_answer",
           "exact_match", "pretraining_rows"]

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


def pretraining_rows(tokenizer: BPETokenizer, texts: list[str], n: int, length: int,
                     seed: int = 0) -> list[tuple[list[int], list[int]]]:
    """``n`` windows of ``length`` tokens cut at random from ``texts``, as ``(ids, mask)`` rows
    for ``finetune`` with every token trained (mask all 1): text of the kind the model was
    pretrained on, mixed into fine-tuning so that it does not forget it ("replay"). Each
    text is encoded once; a window never crosses from one text into the next."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be an integer >= 1, got {n!r}")
    if isinstance(length, bool) or not isinstance(length, int) or length < 2:
        raise ValueError(f"length must be an integer >= 2 (a token and its target), got {length!r}")
    encoded = [tokenizer.encode(t) for t in texts]
    encoded = [ids for ids in encoded if len(ids) >= length]
    if not encoded:
        raise ValueError(f"no text is {length} tokens long: nothing to cut windows from")
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        ids = rng.choice(encoded)
        start = rng.randrange(len(ids) - length + 1)
        rows.append((ids[start:start + length], [1] * length))
    return rows


# ---------------------------------------------------------------------------- training and measuring
@dataclass
class FinetuneHistory:
    """What ``finetune`` measured: the loss of every step, the steps taken and the wall time."""

    loss: list[float] = field(default_factory=list)
    steps: int = 0
    seconds: float = 0.0


def finetune(model, rows: list[tuple[list[int], list[int]]], *, steps: int, pad_id: int, batch_size: int = 32,
             lr: float = 1e-3, params=None, max_seconds: float | None = None, warmup: int | None = None,
             seed: int = 0, progress: bool = True, desc: str = "SFT") -> FinetuneHistory:
    """Supervised fine-tuning: AdamW on the loss of the masked tokens of ``rows`` (``(ids, mask)``
    pairs from ``encode_chat``), batches drawn at random, the learning rate warmed up over
    ``warmup`` steps (default 5%) then decayed by a cosine to 10% at ``steps``. ``params``: what
    trains (default every parameter that requires a gradient, e.g. LoRA's only). Stops after
    ``steps`` or ``max_seconds``; the model is left in eval mode."""
    if not rows:
        raise ValueError("rows is empty: nothing to fine-tune on")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    params = [p for p in model.parameters() if p.requires_grad] if params is None else list(params)
    if not params:
        raise ValueError("no parameter to train: every parameter is frozen")
    warmup = max(1, steps // 20) if warmup is None else warmup
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0, betas=(0.9, 0.95))
    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(seed)
    hist = FinetuneHistory()
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=steps, desc=desc, unit="step")
    model.train()
    start = time.perf_counter()
    for step in range(steps):
        if max_seconds is not None and time.perf_counter() - start > max_seconds:
            break
        for group in opt.param_groups:
            group["lr"] = lr * warmup_cosine(step, min(warmup, steps), steps, min_lr=0.1)
        pick = torch.randint(len(rows), (min(batch_size, len(rows)),), generator=gen).tolist()
        x, y = sft_targets(*pad_batch([rows[i] for i in pick], pad_id))
        _, loss = model(x.to(device), y.to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        hist.loss.append(loss.item())
        hist.steps += 1
        if bar is not None:
            bar.update(1)
            if step % 20 == 0:
                bar.set_postfix(loss=f"{hist.loss[-1]:.3f}")
    if bar is not None:
        bar.close()
    hist.seconds = time.perf_counter() - start
    model.eval()
    return hist


@torch.no_grad()
def answer_bits_per_char(model, pairs: list[tuple[list[int], list[int]]], n_chars: int, batch_size: int = 64) -> float:
    """Bits per character of answers given their prompts: ``pairs`` of (prompt ids, answer ids),
    each scored token by token after its prompt; the total -log2 P of the answers' tokens
    divided by ``n_chars``, the answers' length in characters. Pairs longer than the model's
    block are an error (crop or drop them first)."""
    block = model.get_block_size()
    too_long = [i for i, (p, a) in enumerate(pairs) if len(p) + len(a) > block]
    if too_long:
        raise ValueError(f"{len(too_long)} pairs are longer than the block of {block} tokens (first: pair "
                         f"{too_long[0]}); drop them before scoring")
    if n_chars <= 0:
        raise ValueError(f"n_chars must be > 0, got {n_chars!r}")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    nats = 0.0
    for i in range(0, len(pairs), batch_size):
        rows = [(p + a, [0] * len(p) + [1] * len(a)) for p, a in pairs[i:i + batch_size]]
        ids, mask = pad_batch(rows, 0)
        nats -= answer_logprobs(model, ids.to(device), mask.to(device)).double().sum().item()
    model.train(was_training)
    return nats / math.log(2) / n_chars


@torch.no_grad()
def greedy_answer(model, tokenizer: BPETokenizer, prompt_ids: list[int], max_new_tokens: int = 16,
                  stop: str | None = None) -> str:
    """The greedy continuation of ``prompt_ids`` (``model.generate`` with ``top_k=1``: the most
    probable token at each step, with the KV cache), decoded and cut before ``stop``: by default
    ``<|end|>`` for a tokenizer with chat tokens, else a line break."""
    stop = (END if END in tokenizer.special_tokens else "\n") if stop is None else stop
    block = model.get_block_size()
    steps = min(max_new_tokens, block - len(prompt_ids))
    if steps < 1:
        raise ValueError(f"the prompt has {len(prompt_ids)} tokens: no room to answer in a block of {block}")
    device = next(model.parameters()).device
    out = model.generate(torch.tensor([prompt_ids], device=device), steps, top_k=1)[0, len(prompt_ids):].tolist()
    end_id = tokenizer.special_tokens.get(stop)
    if end_id is not None:
        return tokenizer.decode(out[:out.index(end_id)] if end_id in out else out)
    return tokenizer.decode(out).split(stop)[0]


def exact_match(answers: list[str], expected: list[str]) -> float:
    """Share of answers equal to the expected ones, after stripping spaces at the ends."""
    if len(answers) != len(expected) or not answers:
        raise ValueError("expected two non-empty lists of the same length")
    return sum(a.strip() == e.strip() for a, e in zip(answers, expected)) / len(answers)
