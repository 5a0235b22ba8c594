"""Pre-training a mini-BERT on the plays and fine-tuning it on the genre task (chapter 8).

``course_lib.bert`` holds the model, ``course_lib.train`` the one training loop and its
recipe, ``course_lib.genre`` the task; this module joins them:

- the tokenizer: chapter 2's byte-level BPE trained on the training plays with BERT's four
  special tokens ``SPECIAL_TOKENS`` (``[PAD] [CLS] [SEP] [MASK]``), which it never splits
  and never merges into other tokens (``train_tokenizer``, ``Specials``);
- **pre-training** (``pretrain_mlm``): random windows of the training plays' dialogue
  (``corpus_text``, speaker names removed as in the genre passages), each read as
  ``[CLS] window [SEP]`` and masked by ``bert.mask_tokens`` (``mlm_batch``); the loss is the
  masked-LM loss. The recipe is chapter 7's: ``configure_optimizer`` (AdamW, decay on the
  Linear matrices only; betas 0.9, 0.999 as BERT), a warm-up then either a cosine
  (``warmup_cosine``) or the full rate held until a final linear decay
  (``warmup_stable_decay``), gradient clipping, all in ``train._fit``, the loop every
  chapter trains with. ``pretrain_causal`` pre-trains chapter 7's GPT on the same windows
  with the same settings, the next token as the target: the decoder to compare with;
- **measuring a masked LM**: ``evaluate_mlm`` (loss and accuracy at the masked positions of
  fixed windows), ``fill_blanks`` (blanks with a chosen context on each side: both sides
  against the left side alone), ``unigram_blanks`` (the same blanks guessed from token
  frequencies, the plateau a masked LM sits on before it reads its context) and
  ``neighbour_attention`` (how much each head reads the tokens beside the query); the
  pre-training records the last two at each evaluation (``MLMHistory``);
- **fine-tuning** (``finetune_classifier``): a ``BertForSequenceClassification`` whose
  encoder starts from the pre-trained one (``BertForSequenceClassification.from_encoder``),
  or a ``gpt.GPTForSequenceClassification``, trained on ``[CLS] passage [SEP]`` inputs
  padded to one length (``encode_texts``) in shuffled mini-batches, measured on the
  validation passages by loss, accuracy and macro-F1; ``predict_classes`` labels a set.

Files, the command line ``python -m course_lib.bert pretrain`` and the checkpoints the
course ships: ``course_lib.bert_cli``.

Scope: one process, no next-sentence task; windows cross the boundaries between plays as chapter 3's do.
"""

from __future__ import annotations

import functools
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from .bert import BertForMaskedLM, BertForSequenceClassification, attention_maps, mask_tokens
from .data import load_split
from .genre import dialogue, scores
from .gpt import GPT, GPTForSequenceClassification
from .runtime import pick_device
from .tokenizers import BPETokenizer
from .train import (CHECKPOINT_NAME, History, _check_positive_int, _check_settings, _check_tokens, _Checkpoint,
                    _eval_mode, _fit, _model_device, configure_optimizer, get_batch, resolve_precision, train,
                    warmup_cosine, warmup_stable_decay)

__all__ = ["SPECIAL_TOKENS", "Specials", "train_tokenizer", "corpus_text", "mlm_batch", "evaluate_mlm",
           "neighbour_attention", "fill_blanks", "unigram_blanks", "MLMHistory", "pretrain_mlm", "pretrain_causal",
           "encode_texts", "ClassifierHistory", "finetune_classifier", "predict_classes"]

SPECIAL_TOKENS = ("[PAD]", "[CLS]", "[SEP]", "[MASK]")


# ---------------------------------------------------------------------------- tokens
@dataclass(frozen=True)
class Specials:
    """The ids of BERT's special tokens in a tokenizer: ``pad``, ``cls``, ``sep``, ``mask``."""

    pad: int
    cls: int
    sep: int
    mask: int

    @classmethod
    def of(cls, tokenizer: BPETokenizer) -> Specials:
        table = getattr(tokenizer, "special_tokens", None)
        if not isinstance(table, dict) or any(s not in table for s in SPECIAL_TOKENS):
            have = sorted(table) if isinstance(table, dict) else "none"
            raise ValueError(f"the tokenizer lacks BERT's special tokens {SPECIAL_TOKENS} (it has {have}): "
                             "train it with train_tokenizer, or BPETokenizer.train(..., special_tokens=SPECIAL_TOKENS)")
        return cls(*(table[s] for s in SPECIAL_TOKENS))

    @property
    def ids(self) -> tuple[int, ...]:
        return (self.pad, self.cls, self.sep, self.mask)


def train_tokenizer(text: str, vocab_size: int) -> BPETokenizer:
    """Chapter 2's byte-level BPE with ``SPECIAL_TOKENS``, the last four ids of ``vocab_size``."""
    return BPETokenizer.train(text, vocab_size, special_tokens=SPECIAL_TOKENS)


def corpus_text(split: str, max_chars: int | None = None) -> str:
    """The dialogue of the plays of ``split`` (``genre.dialogue``: no speaker names), joined
    by a blank line; ``max_chars`` keeps the first characters of each play."""
    return "\n\n".join(dialogue(p.text)[:max_chars] for p in load_split(split))


# ---------------------------------------------------------------------------- pre-training
def _framed_windows(ids: torch.Tensor, block_size: int, batch_size: int, specials: Specials,
                    generator: torch.Generator | None) -> torch.Tensor:
    """``batch_size`` random windows of ``ids``, each ``[CLS]`` + ``block_size - 2`` tokens + ``[SEP]``: (B, T)."""
    x, _ = get_batch(ids, block_size - 2, batch_size, generator)  # (B, T - 2)
    B = x.shape[0]
    return torch.cat([torch.full((B, 1), specials.cls), x, torch.full((B, 1), specials.sep)], dim=1)  # (B, T)


def mlm_batch(ids: torch.Tensor, block_size: int, batch_size: int, specials: Specials, vocab_size: int,
              generator: torch.Generator | None = None, device="cpu",
              mask_prob: float = 0.15) -> tuple[torch.Tensor, torch.Tensor]:
    """``batch_size`` masked windows of the 1-D token sequence ``ids``: ``(inputs, labels)``, (B, T).

    Each row is ``[CLS]`` + a random window of ``block_size - 2`` tokens + ``[SEP]``, masked
    by ``mask_tokens`` (``[CLS]``, ``[SEP]``, ``[PAD]`` and ``[MASK]`` never chosen); labels
    are the original tokens at the chosen positions, -1 elsewhere. The windows and the masks
    are drawn from ``generator``, in that order.
    """
    if block_size < 3:
        raise ValueError(f"block_size must be >= 3 ([CLS], a token, [SEP]), got {block_size!r}")
    x = _framed_windows(ids, block_size, batch_size, specials, generator)  # (B, T)
    inputs, labels = mask_tokens(x, vocab_size, specials.mask, specials.ids, mask_prob, generator=generator)
    return inputs.to(device), labels.to(device)


def evaluate_mlm(model: BertForMaskedLM, ids, specials: Specials, block_size: int | None = None,
                 batch_size: int = 32, n_batches: int = 10, seed: int = 0,
                 mask_only: bool = False) -> tuple[float, float]:
    """``(loss, accuracy)`` at the masked positions of ``n_batches`` fixed batches of ``ids``.

    The windows and masks come from ``seed``, so two calls measure the same positions. The
    loss is the mean cross-entropy (nats) over all chosen positions, the accuracy the share
    of them whose likeliest token is the original. ``mask_only=True`` counts only the chosen
    positions that show ``[MASK]``: there the input says nothing of the token, so a model
    that ignores the context can do no better than the token frequencies (at the positions
    left unchanged it can copy the visible token). No gradients; the mode is restored.
    """
    if not isinstance(model, BertForMaskedLM):
        raise TypeError(f"expected a BertForMaskedLM, got {type(model).__name__}")
    block_size = model.config.block_size if block_size is None else block_size
    _check_positive_int("n_batches", n_batches)
    ids = _check_tokens("ids", ids, block_size - 1)
    generator = torch.Generator().manual_seed(seed)
    device = _model_device(model)
    total, right, count = 0.0, 0, 0
    with _eval_mode(model):
        for _ in range(n_batches):
            inputs, labels = mlm_batch(ids, block_size, batch_size, specials, model.config.vocab_size, generator,
                                       device)
            logits, _ = model(inputs)  # (B, T, V)
            chosen = labels != -1  # (B, T)
            if mask_only:
                chosen &= inputs == specials.mask
            picked, truth = logits[chosen].float(), labels[chosen]  # (N, V), (N,)
            total += torch.nn.functional.cross_entropy(picked, truth, reduction="sum").item()
            right += int((picked.argmax(dim=-1) == truth).sum())
            count += int(chosen.sum())
    if count == 0:
        raise ValueError("no position was masked in the evaluation batches: give more or longer windows")
    return total / count, right / count


def neighbour_attention(model, ids, specials: Specials, block_size: int | None = None, n_windows: int = 16,
                        seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(prev, next)``, each (n_layer, nh): the mean attention weight each head puts on the
    token just before (``prev``) and just after (``next``) the query.

    Measured on ``n_windows`` fixed windows ``[CLS] window [SEP]`` of ``ids`` (no masking;
    drawn from ``seed``), over the queries at the window's tokens (not ``[CLS]``, ``[SEP]``).
    A head that spreads its weight evenly over T keys gives about 1 / T to each; a head that
    reads its left neighbour gives ``prev`` near 1. The model's mode is restored.
    """
    bert = getattr(model, "bert", model)
    block_size = bert.config.block_size if block_size is None else block_size
    _check_positive_int("n_windows", n_windows)
    if block_size < 4:
        raise ValueError(f"block_size must be >= 4 ([CLS], two tokens, [SEP]), got {block_size!r}")
    ids = _check_tokens("ids", ids, block_size - 1)
    x = _framed_windows(ids, block_size, n_windows, specials, torch.Generator().manual_seed(seed))  # (B, T)
    T = x.shape[1]
    with _eval_mode(model):
        maps = attention_maps(model, x.to(_model_device(model))).float()  # (L, B, nh, T, T)
    # query t's weight on key t - 1 is maps[..., t, t - 1]: the diagonal below the main one
    prev = torch.diagonal(maps, offset=-1, dim1=-2, dim2=-1)[..., : T - 2]  # queries 1..T-2: (L, B, nh, T-2)
    nxt = torch.diagonal(maps, offset=1, dim1=-2, dim2=-1)[..., 1:]  # queries 1..T-2: (L, B, nh, T-2)
    return prev.mean(dim=(1, 3)).cpu(), nxt.mean(dim=(1, 3)).cpu()  # (L, nh) each


def fill_blanks(model: BertForMaskedLM, ids, positions: Sequence[int], specials: Specials, left: int, right: int,
                batch_size: int = 64) -> tuple[float, float]:
    """``(loss, accuracy)`` of predicting ``ids[p]`` for each ``p`` in ``positions`` from the
    ``left`` tokens before it and the ``right`` tokens after it.

    Each blank is read as ``[CLS] ids[p-left:p] [MASK] ids[p+1:p+1+right] [SEP]`` and
    scored at the ``[MASK]``: the loss is the mean cross-entropy (nats) of the original
    token, the accuracy the share of blanks whose likeliest token is the original.
    ``right=0`` gives the model only what a left-to-right generator would have. No
    gradients; the mode is restored.
    """
    if not isinstance(model, BertForMaskedLM):
        raise TypeError(f"expected a BertForMaskedLM, got {type(model).__name__}")
    for name, value in [("left", left), ("right", right)]:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
    if left + right + 3 > model.config.block_size:
        raise ValueError(f"left + right + 3 = {left + right + 3} tokens do not fit the model's "
                         f"block_size={model.config.block_size}")
    ids = torch.as_tensor(ids).long().cpu()
    positions = [int(p) for p in positions]
    if not positions:
        raise ValueError("no positions to fill")
    bad = [p for p in positions if not left <= p < len(ids) - right]
    if bad:
        raise ValueError(f"positions must leave {left} tokens before and {right} after them in ids of length "
                         f"{len(ids)}; got {bad[:5]}")
    device = _model_device(model)
    cls, mask, sep = (torch.tensor([i]) for i in (specials.cls, specials.mask, specials.sep))
    total, correct = 0.0, 0
    with _eval_mode(model):
        for i in range(0, len(positions), batch_size):
            ps = positions[i:i + batch_size]
            x = torch.stack([torch.cat([cls, ids[p - left:p], mask, ids[p + 1:p + 1 + right], sep]) for p in ps])
            logits = model(x.to(device))[0][:, 1 + left].float().cpu()  # (B, V) at the blank
            target = ids[ps]  # (B,)
            total += torch.nn.functional.cross_entropy(logits, target, reduction="sum").item()
            correct += int((logits.argmax(dim=-1) == target).sum())
    return total / len(positions), correct / len(positions)


def unigram_blanks(train_ids, ids, positions: Sequence[int], vocab_size: int) -> tuple[float, float]:
    """``(loss, accuracy)`` at the same blanks for a model that ignores the context: the
    token frequencies of ``train_ids`` (add-one smoothed over ``vocab_size``) as the
    prediction, and always the most frequent training token as the guess. A masked LM on
    its unigram plateau scores about this."""
    counts = torch.bincount(torch.as_tensor(train_ids).long().cpu(), minlength=vocab_size).double() + 1.0
    logp = counts.log() - counts.sum().log()  # (V,)
    target = torch.as_tensor(ids).long().cpu()[[int(p) for p in positions]]
    return float(-logp[target].mean()), float((target == counts.argmax()).double().mean())


@dataclass
class MLMHistory(History):
    """``History`` plus, at each evaluation on the validation windows: the masked-token
    accuracy, the loss and accuracy at the positions that show ``[MASK]`` (``mask_loss``,
    ``mask_accuracy``) and each head's mean attention to its neighbours
    (``neighbour_attention``: nested lists [layer][head]). ``tokens_seen`` counts the masked
    positions predicted."""

    valid_accuracy: list[float] = field(default_factory=list)
    mask_loss: list[float] = field(default_factory=list)
    mask_accuracy: list[float] = field(default_factory=list)
    attention_prev: list[list[list[float]]] = field(default_factory=list)
    attention_next: list[list[list[float]]] = field(default_factory=list)

    def neighbour_peak(self) -> list[float]:
        """At each evaluation, the largest mean weight any head puts on a neighbour (either side)."""
        return [max(max(max(row) for row in p), max(max(row) for row in n))
                for p, n in zip(self.attention_prev, self.attention_next)]


def _schedule(steps: int, warmup_steps: int, decay_steps: int | None, lr: float, min_lr: float):
    """The factor on ``lr`` at each step: ``warmup_cosine`` to ``min_lr``, or with ``decay_steps``
    ``warmup_stable_decay``; its settings are checked here, before any work."""
    if decay_steps is None:
        schedule = functools.partial(warmup_cosine, warmup_steps=warmup_steps, total_steps=steps, min_lr=min_lr / lr)
    else:
        schedule = functools.partial(warmup_stable_decay, warmup_steps=warmup_steps, total_steps=steps,
                                     decay_steps=decay_steps, min_lr=min_lr / lr)
    schedule(0)
    return schedule


def pretrain_mlm(model: BertForMaskedLM, train_ids, valid_ids=None, *, specials: Specials, steps: int,
                 batch_size: int = 32, block_size: int | None = None, lr: float = 1e-3, min_lr: float = 1e-4,
                 warmup_steps: int | None = None, decay_steps: int | None = None, weight_decay: float = 0.01,
                 grad_clip: float | None = 1.0, mask_prob: float = 0.15, eval_every: int = 200,
                 eval_batches: int = 10, device=None, seed: int = 1337, max_seconds: float | None = None,
                 progress: bool = True, precision: str = "fp32", checkpoint_dir=None,
                 checkpoint_every: int | None = None, resume: bool = True) -> MLMHistory:
    """Pre-train ``model`` by masked language modelling on the 1-D token sequence ``train_ids``.

    Each step: ``mlm_batch`` (windows of ``block_size`` tokens, the model's by default), the
    MLM loss, a step of AdamW (``configure_optimizer``, betas 0.9, 0.999) at
    ``lr * warmup_cosine(step)`` (warm-up ``warmup_steps``, default ``min(100, steps // 10)``;
    cosine down to ``min_lr``) or, given ``decay_steps``, ``lr * warmup_stable_decay(step)``
    (the full rate held, then a linear decay to ``min_lr`` over the last ``decay_steps``),
    gradients clipped to ``grad_clip``. At step 0, every ``eval_every`` steps and at the end
    ``evaluate_mlm`` measures the training and validation windows (train_loss, valid_loss,
    valid_accuracy) and ``neighbour_attention`` each head's attention to its neighbours on
    the validation windows. ``max_seconds`` stops
    early (the schedule still runs to ``steps``). Seeded: the same seed and settings give
    the same run on the CPU.

    ``checkpoint_dir``, ``checkpoint_every`` and ``resume`` work as in ``train``: a run
    interrupted and started again with the same settings goes on from its last checkpoint
    and gives the losses of one that was not interrupted (the windows and the masks come
    from one generator, whose state is saved). batch_size, block_size, mask_prob and
    seed must match the saved run's.
    """
    if not isinstance(model, BertForMaskedLM):
        raise TypeError(f"expected a BertForMaskedLM, got {type(model).__name__}")
    block_size = model.config.block_size if block_size is None else block_size
    _check_settings([("steps", steps), ("batch_size", batch_size), ("block_size", block_size),
                     ("eval_every", eval_every), ("eval_batches", eval_batches)]
                    + ([] if checkpoint_every is None else [("checkpoint_every", checkpoint_every)]),
                    [("lr", lr), ("grad_clip", grad_clip), ("max_seconds", max_seconds)], weight_decay)
    if block_size > model.config.block_size or block_size < 3:
        raise ValueError(f"block_size must lie in 3..{model.config.block_size} (the model's), got {block_size}")
    warmup_steps = min(100, steps // 10) if warmup_steps is None else warmup_steps
    if not (isinstance(min_lr, (int, float)) and 0 <= min_lr <= lr):
        raise ValueError(f"expected 0 <= min_lr <= lr, got min_lr={min_lr!r}, lr={lr!r}")
    train_ids = _check_tokens("train_ids", train_ids, block_size - 1)
    valid_ids = None if valid_ids is None else _check_tokens("valid_ids", valid_ids, block_size - 1)
    device = pick_device() if device is None else device
    precision = resolve_precision(precision, device)  # "auto": bf16 or fp16 on a GPU, fp32 on the CPU
    vocab_size = model.config.vocab_size
    optimizer = configure_optimizer(model, lr, weight_decay, betas=(0.9, 0.999))
    schedule = _schedule(steps, warmup_steps, decay_steps, lr, min_lr)
    batches = torch.Generator().manual_seed(seed)
    history = MLMHistory()
    checkpoint = None
    if checkpoint_dir is not None:
        run = dict(batch_size=batch_size, block_size=block_size, mask_prob=mask_prob, seed=seed, precision=precision)
        checkpoint = _Checkpoint(os.path.join(checkpoint_dir, CHECKPOINT_NAME), checkpoint_every, resume, batches, run)

    def next_batch():
        return mlm_batch(train_ids, block_size, batch_size, specials, vocab_size, batches, device, mask_prob)

    def forward(inputs, labels):
        return model.masked_loss(inputs, labels)  # the head at the chosen positions only

    def measure(step: int) -> bool:
        history.steps.append(step)
        history.train_loss.append(evaluate_mlm(model, train_ids, specials, block_size, batch_size, eval_batches,
                                               seed=seed + 1)[0])
        if valid_ids is not None:
            loss, acc = evaluate_mlm(model, valid_ids, specials, block_size, batch_size, eval_batches, seed=seed + 1)
            history.valid_loss.append(loss)
            history.valid_accuracy.append(acc)
            loss, acc = evaluate_mlm(model, valid_ids, specials, block_size, batch_size, eval_batches, seed=seed + 1,
                                     mask_only=True)
            history.mask_loss.append(loss)
            history.mask_accuracy.append(acc)
            if block_size >= 4:
                prev, nxt = neighbour_attention(model, valid_ids, specials, block_size, seed=seed + 2)
                history.attention_prev.append(prev.tolist())
                history.attention_next.append(nxt.tolist())
        return False

    return _fit(model, None, None, steps=steps, window=block_size, batch_size=batch_size, next_batch=next_batch,
                forward=forward, lr=lr, weight_decay=weight_decay, optimizer=optimizer, lr_schedule=schedule,
                grad_clip=grad_clip, clip=torch.nn.utils.clip_grad_norm_, eval_every=eval_every,
                eval_batches=eval_batches, device=device, seed=seed, max_seconds=max_seconds, progress=progress,
                desc="pre-training BERT", measure=measure, history=history, precision=precision,
                checkpoint=checkpoint)


def pretrain_causal(model: GPT, train_ids, valid_ids=None, *, steps: int, batch_size: int = 32, lr: float = 1e-3,
                    min_lr: float = 1e-4, warmup_steps: int | None = None, decay_steps: int | None = None,
                    weight_decay: float = 0.01, grad_clip: float | None = 1.0, eval_every: int = 200,
                    eval_batches: int = 10, device=None, seed: int = 1337, max_seconds: float | None = None,
                    progress: bool = True, checkpoint_dir=None, checkpoint_every: int | None = None,
                    resume: bool = True) -> History:
    """Pre-train chapter 7's ``GPT`` on ``train_ids`` as ``pretrain_mlm`` pre-trains a BERT: the
    same optimizer (AdamW, betas 0.9, 0.999), schedule and clipping, windows of the model's
    ``block_size`` tokens, but the next token as the target at every position (``train``).
    With the same settings the two models see the same number of windows of the same text,
    so their fine-tuned classifiers compare encoder and decoder at equal pre-training."""
    if not isinstance(model, GPT):
        raise TypeError(f"expected a GPT, got {type(model).__name__}")
    _check_settings([("steps", steps)], [("lr", lr)], weight_decay)
    warmup_steps = min(100, steps // 10) if warmup_steps is None else warmup_steps
    if not (isinstance(min_lr, (int, float)) and 0 <= min_lr <= lr):
        raise ValueError(f"expected 0 <= min_lr <= lr, got min_lr={min_lr!r}, lr={lr!r}")
    schedule = _schedule(steps, warmup_steps, decay_steps, lr, min_lr)
    optimizer = configure_optimizer(model, lr, weight_decay, betas=(0.9, 0.999))
    return train(model, _check_tokens("train_ids", train_ids, model.config.block_size),
                 None if valid_ids is None else _check_tokens("valid_ids", valid_ids, model.config.block_size),
                 steps=steps, batch_size=batch_size, lr=lr, weight_decay=weight_decay, optimizer=optimizer,
                 lr_schedule=schedule, eval_every=eval_every, eval_batches=eval_batches, grad_clip=grad_clip,
                 device=device, seed=seed, max_seconds=max_seconds, progress=progress,
                 checkpoint_dir=checkpoint_dir, checkpoint_every=checkpoint_every, resume=resume)


# ---------------------------------------------------------------------------- fine-tuning
def encode_texts(texts: Sequence[str], tokenizer: BPETokenizer, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask)``, both (N, T): each text as ``[CLS] tokens [SEP]``, cut to
    ``block_size`` tokens (the end of a longer text is dropped) and padded with ``[PAD]`` to
    the longest row, T <= ``block_size``; the mask is 1 on the tokens, 0 on the padding.

        ["to be", "or"] -> [[CLS] to be [SEP]], [[CLS] or [SEP] [PAD]]; masks [1 1 1 1], [1 1 1 0]
    """
    if isinstance(texts, str):
        raise TypeError("expected a list of texts, got one str; wrap it in a list: [text]")
    texts = list(texts)
    if not texts:
        raise ValueError("no texts to encode")
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 3:
        raise ValueError(f"block_size must be an integer >= 3 ([CLS], a token, [SEP]), got {block_size!r}")
    sp = Specials.of(tokenizer)
    rows = [[sp.cls] + tokenizer.encode(t)[:block_size - 2] + [sp.sep] for t in texts]
    T = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), T), sp.pad, dtype=torch.long)  # (N, T)
    attention_mask = torch.zeros((len(rows), T), dtype=torch.long)  # (N, T)
    for i, r in enumerate(rows):
        input_ids[i, :len(r)] = torch.tensor(r)
        attention_mask[i, :len(r)] = 1
    return input_ids, attention_mask


def _check_set(name: str, data) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if not (isinstance(data, (tuple, list)) and len(data) == 3 and all(isinstance(t, torch.Tensor) for t in data)):
        raise TypeError(f"expected {name} as a tuple (input_ids (N, T), attention_mask (N, T), labels (N,)) of "
                        "tensors, e.g. (*encode_texts(texts, tokenizer, T), torch.tensor(labels))")
    ids, mask, labels = data
    if ids.dim() != 2 or mask.shape != ids.shape or labels.shape != (ids.shape[0],) or len(labels) == 0:
        raise ValueError(f"{name}: expected input_ids (N, T), attention_mask (N, T) and labels (N,) with N >= 1, "
                         f"got {tuple(ids.shape)}, {tuple(mask.shape)}, {tuple(labels.shape)}")
    return ids, mask, labels.long()


@dataclass
class ClassifierHistory(History):
    """``History`` plus accuracy and macro-F1 on the validation set at each evaluation;
    ``tokens_seen`` counts the passages seen."""

    valid_accuracy: list[float] = field(default_factory=list)
    valid_macro_f1: list[float] = field(default_factory=list)


def predict_classes(model: BertForSequenceClassification, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                    batch_size: int = 64) -> torch.Tensor:
    """The likeliest class of each row, (N,) int64 on the CPU, in batches, in eval mode."""
    _check_positive_int("batch_size", batch_size)
    device = _model_device(model)
    out = []
    with _eval_mode(model):
        for i in range(0, len(input_ids), batch_size):
            ids, mask = input_ids[i:i + batch_size], attention_mask[i:i + batch_size]
            T = int(mask.sum(dim=1).max())  # drop the columns that are padding in every row of this batch
            logits, _ = model(ids[:, :T].to(device), attention_mask=mask[:, :T].to(device))  # (B, n_classes)
            out.append(logits.argmax(dim=-1).cpu())
    return torch.cat(out)


def _mean_loss(model, data, batch_size: int) -> float:
    ids, mask, labels = data
    device = _model_device(model)
    total = 0.0
    with _eval_mode(model):
        for i in range(0, len(ids), batch_size):
            _, loss = model(ids[i:i + batch_size].to(device), attention_mask=mask[i:i + batch_size].to(device),
                            labels=labels[i:i + batch_size].to(device))
            total += loss.item() * len(ids[i:i + batch_size])
    return total / len(ids)


def finetune_classifier(model: BertForSequenceClassification, train_set, valid_set=None, *, steps: int,
                        batch_size: int = 32, lr: float = 1e-4, weight_decay: float = 0.01,
                        warmup_steps: int | None = None, grad_clip: float | None = 1.0, eval_every: int = 100,
                        eval_size: int = 1000, device=None, seed: int = 1337, max_seconds: float | None = None,
                        progress: bool = True, precision: str = "fp32") -> ClassifierHistory:
    """Fine-tune ``model`` on ``train_set = (input_ids, attention_mask, labels)``; return its history.

    Shuffled mini-batches (a new order each epoch), the classifier's cross-entropy, AdamW
    (``configure_optimizer``, betas 0.9, 0.999) with a warm-up of ``warmup_steps`` (default
    ``steps // 10``) and a cosine decay to 0, gradients clipped to ``grad_clip``: BERT's
    fine-tuning, a small learning rate for a few epochs, every weight trained. At step 0,
    every ``eval_every`` steps and at the end: the mean loss on the first ``eval_size``
    training examples and on ``valid_set`` (up to ``eval_size`` of them), its accuracy
    and macro-F1 (``genre.scores``).
    """
    if not isinstance(model, (BertForSequenceClassification, GPTForSequenceClassification)):
        raise TypeError(f"expected a BertForSequenceClassification or GPTForSequenceClassification, got "
                        f"{type(model).__name__}")
    _check_settings([("steps", steps), ("batch_size", batch_size), ("eval_every", eval_every),
                     ("eval_size", eval_size)], [("lr", lr), ("grad_clip", grad_clip), ("max_seconds", max_seconds)],
                    weight_decay)
    train_set = _check_set("train_set", train_set)
    valid_set = None if valid_set is None else tuple(t[:eval_size] for t in _check_set("valid_set", valid_set))
    for name, data in [("train_set", train_set), ("valid_set", valid_set)]:
        if data is not None and (data[2].min() < 0 or data[2].max() >= model.n_classes):
            raise ValueError(f"{name}: labels must be class ids 0..{model.n_classes - 1}")
    warmup_steps = steps // 10 if warmup_steps is None else warmup_steps
    device = pick_device() if device is None else device
    precision = resolve_precision(precision, device)  # "auto": bf16 or fp16 on a GPU, fp32 on the CPU
    optimizer = configure_optimizer(model, lr, weight_decay, betas=(0.9, 0.999))
    schedule = functools.partial(warmup_cosine, warmup_steps=warmup_steps, total_steps=steps)
    rng = random.Random(seed)
    order: list[int] = []
    history = ClassifierHistory()
    head = tuple(t[:eval_size] for t in train_set)

    def next_batch():
        nonlocal order
        if len(order) < batch_size:  # a new epoch: a new order of the examples
            order = list(range(len(train_set[0])))
            rng.shuffle(order)
        idx, order = torch.tensor(order[:batch_size]), order[batch_size:]
        ids, mask, labels = (t[idx] for t in train_set)
        T = int(mask.sum(dim=1).max())  # no column of padding only
        return (ids[:, :T].to(device), mask[:, :T].to(device)), labels.to(device)

    def forward(x, labels):
        return model(x[0], attention_mask=x[1], labels=labels)[1]

    def measure(step: int) -> bool:
        history.steps.append(step)
        history.train_loss.append(_mean_loss(model, head, 64))
        if valid_set is not None:
            history.valid_loss.append(_mean_loss(model, valid_set, 64))
            predicted = predict_classes(model, valid_set[0], valid_set[1])
            s = scores(valid_set[2].tolist(), predicted.tolist(), labels=list(range(model.n_classes)))
            history.valid_accuracy.append(s["accuracy"])
            history.valid_macro_f1.append(s["macro_f1"])
        return False

    return _fit(model, None, None, steps=steps, window=1, batch_size=batch_size, next_batch=next_batch,
                forward=forward, lr=lr, weight_decay=weight_decay, optimizer=optimizer, lr_schedule=schedule,
                grad_clip=grad_clip, clip=torch.nn.utils.clip_grad_norm_, eval_every=eval_every, eval_batches=1,
                device=device, seed=seed, max_seconds=max_seconds, progress=progress,
                desc=f"fine-tuning {'BERT' if isinstance(model, BertForSequenceClassification) else 'GPT'}",
                measure=measure, history=history, precision=precision)
