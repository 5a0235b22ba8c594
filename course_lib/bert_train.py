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
  Linear matrices only; betas 0.9, 0.999 as BERT), ``warmup_cosine`` (BERT decayed linearly;
  the course keeps one schedule), gradient clipping, all in ``train._fit``, the loop every
  chapter trains with. It is measured by ``evaluate_mlm``: the loss and the accuracy at the
  masked positions of fixed windows with fixed masks;
- **fine-tuning** (``finetune_classifier``): a ``BertForSequenceClassification`` whose
  encoder starts from the pre-trained one (``BertForSequenceClassification.from_encoder``),
  trained on ``[CLS] passage [SEP]`` inputs padded to one length (``encode_texts``) in
  shuffled mini-batches, measured on the validation passages by loss, accuracy and
  macro-F1; ``predict_classes`` labels a set;
- files: ``save_pretrained`` / ``load_pretrained`` write and read a folder with
  ``config.json``, ``tokenizer.json`` and the weights, as ``model.safetensors``
  (``safetensors``, no code in the file) or, where that package is missing, a plain state
  dict ``model.pt`` read back with ``torch.load(weights_only=True)``.

The command line pre-trains and saves the course's small checkpoint::

    python -m course_lib.bert pretrain --out runs/bert                  # the defaults below
    python -m course_lib.bert pretrain --out runs/quick --fast          # a check in seconds
    python -m course_lib.bert pretrain --out runs/bert --resume         # after an interruption

While it trains, the folder holds ``tokenizer.json``, ``pretrain_run.json`` (the settings)
and ``checkpoint.pt`` (``train.save_checkpoint``, every ``--checkpoint-every`` steps):
``--resume`` goes on from there with the saved settings and ends as the uninterrupted run
would have. The checkpoint is removed once the model is saved.

**The shipped checkpoint.** The course ships one such folder inside the package,
``SHIPPED_DIR`` (``course_lib/pretrained/bert_mini``, package data, so ``pip install``
from the repository brings it), written by
``python -m course_lib.bert pretrain --out course_lib/pretrained/bert_mini`` with the
architecture of ``DEFAULTS`` (``SHIPPED_ARCHITECTURE``: BPE of 2048 tokens, 128 positions,
4 layers, 4 heads, width 128). ``load_shipped`` reads it (or the folder named by the
environment variable ``COURSE_BERT_DIR``, to try another checkpoint), and
``pretrained_record`` returns what its run recorded (steps, losses, time, device), so that
a chapter reports the checkpoint's own figures.

Scope: one process, no next-sentence task; windows cross the boundaries between plays as chapter 3's do.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from .bert import BertConfig, BertForMaskedLM, BertForSequenceClassification, mask_tokens
from .data import load_split
from .genre import dialogue, scores
from .runtime import describe_device, pick_device, seed_everything
from .tokenizers import BPETokenizer
from .train import (CHECKPOINT_NAME, History, _check_positive_int, _check_settings, _check_tokens, _Checkpoint,
                    _eval_mode, _fit, _model_device, configure_optimizer, get_batch, resolve_precision, warmup_cosine)

__all__ = ["SPECIAL_TOKENS", "Specials", "train_tokenizer", "corpus_text", "mlm_batch", "evaluate_mlm",
           "MLMHistory", "pretrain_mlm", "encode_texts", "ClassifierHistory", "finetune_classifier",
           "predict_classes", "save_pretrained", "load_pretrained", "pretrained_record", "SHIPPED_DIR",
           "SHIPPED_ARCHITECTURE", "BERT_DIR_ENV", "shipped_dir", "load_shipped", "main", "CONFIG_NAME",
           "TOKENIZER_NAME"]

SPECIAL_TOKENS = ("[PAD]", "[CLS]", "[SEP]", "[MASK]")
CONFIG_NAME, TOKENIZER_NAME = "config.json", "tokenizer.json"
WEIGHTS_NAMES = ("model.safetensors", "model.pt")  # the first where safetensors is installed
_TIED = ("head.decoder.weight",)  # stored once, as the token embedding


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
    x, _ = get_batch(ids, block_size - 2, batch_size, generator)  # (B, T - 2)
    B = x.shape[0]
    x = torch.cat([torch.full((B, 1), specials.cls), x, torch.full((B, 1), specials.sep)], dim=1)  # (B, T)
    inputs, labels = mask_tokens(x, vocab_size, specials.mask, specials.ids, mask_prob, generator=generator)
    return inputs.to(device), labels.to(device)


def evaluate_mlm(model: BertForMaskedLM, ids, specials: Specials, block_size: int | None = None,
                 batch_size: int = 32, n_batches: int = 10, seed: int = 0) -> tuple[float, float]:
    """``(loss, accuracy)`` at the masked positions of ``n_batches`` fixed batches of ``ids``.

    The windows and masks come from ``seed``, so two calls measure the same positions. The
    loss is the mean cross-entropy (nats) over all chosen positions, the accuracy the share
    of them whose likeliest token is the original. No gradients; the mode is restored.
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
            picked, truth = logits[chosen].float(), labels[chosen]  # (N, V), (N,)
            total += torch.nn.functional.cross_entropy(picked, truth, reduction="sum").item()
            right += int((picked.argmax(dim=-1) == truth).sum())
            count += int(chosen.sum())
    if count == 0:
        raise ValueError("no position was masked in the evaluation batches: give more or longer windows")
    return total / count, right / count


@dataclass
class MLMHistory(History):
    """``History`` plus the masked-token accuracy on the validation windows at each evaluation.
    ``tokens_seen`` counts the masked positions predicted."""

    valid_accuracy: list[float] = field(default_factory=list)


def pretrain_mlm(model: BertForMaskedLM, train_ids, valid_ids=None, *, specials: Specials, steps: int,
                 batch_size: int = 32, block_size: int | None = None, lr: float = 1e-3, min_lr: float = 1e-4,
                 warmup_steps: int | None = None, weight_decay: float = 0.01, grad_clip: float | None = 1.0,
                 mask_prob: float = 0.15, eval_every: int = 200, eval_batches: int = 10, device=None,
                 seed: int = 1337, max_seconds: float | None = None, progress: bool = True,
                 precision: str = "fp32", checkpoint_dir=None, checkpoint_every: int | None = None,
                 resume: bool = True) -> MLMHistory:
    """Pre-train ``model`` by masked language modelling on the 1-D token sequence ``train_ids``.

    Each step: ``mlm_batch`` (windows of ``block_size`` tokens, the model's by default), the
    MLM loss, a step of AdamW (``configure_optimizer``, betas 0.9, 0.999) at
    ``lr * warmup_cosine(step)`` (warm-up ``warmup_steps``, default ``min(100, steps // 10)``;
    cosine down to ``min_lr``), gradients clipped to ``grad_clip``. At step 0, every
    ``eval_every`` steps and at the end ``evaluate_mlm`` measures the training and
    validation windows (train_loss, valid_loss, valid_accuracy). ``max_seconds`` stops
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
    schedule = functools.partial(warmup_cosine, warmup_steps=warmup_steps, total_steps=steps, min_lr=min_lr / lr)
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
        return False

    return _fit(model, None, None, steps=steps, window=block_size, batch_size=batch_size, next_batch=next_batch,
                forward=forward, lr=lr, weight_decay=weight_decay, optimizer=optimizer, lr_schedule=schedule,
                grad_clip=grad_clip, clip=torch.nn.utils.clip_grad_norm_, eval_every=eval_every,
                eval_batches=eval_batches, device=device, seed=seed, max_seconds=max_seconds, progress=progress,
                desc="pre-training BERT", measure=measure, history=history, precision=precision,
                checkpoint=checkpoint)


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
    if not isinstance(model, BertForSequenceClassification):
        raise TypeError(f"expected a BertForSequenceClassification, got {type(model).__name__}")
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
                device=device, seed=seed, max_seconds=max_seconds, progress=progress, desc="fine-tuning BERT",
                measure=measure, history=history, precision=precision)


# ---------------------------------------------------------------------------- files
_KINDS = {"BertForMaskedLM": BertForMaskedLM, "BertForSequenceClassification": BertForSequenceClassification}


def _safetensors():
    try:
        import safetensors.torch as st
    except ImportError:
        return None
    return st


def save_pretrained(folder, model, tokenizer: BPETokenizer, extra: dict | None = None) -> Path:
    """Write ``model`` (a ``BertForMaskedLM`` or ``BertForSequenceClassification``) and its
    tokenizer into ``folder``; return the weights' path.

    ``config.json`` holds the ``BertConfig``, the kind of model (and ``n_classes``) and
    ``extra`` (JSON: settings, measurements); ``tokenizer.json`` the BPE merges. The weights
    go to ``model.safetensors`` if ``safetensors`` is installed, else to ``model.pt``, a plain
    dict of tensors; the tied output matrix is stored once. Neither format runs code when read.
    """
    kind = type(model).__name__
    if kind not in _KINDS:
        raise TypeError(f"expected a BertForMaskedLM or a BertForSequenceClassification, got {kind}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    meta = {"kind": kind, "model": asdict(model.config), "extra": extra or {}}
    if kind == "BertForSequenceClassification":
        meta["n_classes"] = model.n_classes
    (folder / CONFIG_NAME).write_text(json.dumps(meta, indent=1), encoding="utf-8")
    tokenizer.save(folder / TOKENIZER_NAME)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items() if k not in _TIED}
    st = _safetensors()
    for name in WEIGHTS_NAMES:  # a folder holds one weights file
        (folder / name).unlink(missing_ok=True)
    if st is not None:
        path = folder / WEIGHTS_NAMES[0]
        st.save_file(state, str(path), metadata={"format": "pt", "kind": kind})
    else:
        path = folder / WEIGHTS_NAMES[1]
        torch.save(state, path)
    return path


def load_pretrained(folder, device="cpu"):
    """``(model, tokenizer)`` from a ``save_pretrained`` folder; the model on ``device``, in eval mode."""
    folder = Path(folder)
    if not (folder / CONFIG_NAME).exists() or not (folder / TOKENIZER_NAME).exists():
        raise FileNotFoundError(f"{folder} holds no {CONFIG_NAME} and {TOKENIZER_NAME}: not a folder written by "
                                "save_pretrained (python -m course_lib.bert pretrain --out FOLDER writes one)")
    meta = json.loads((folder / CONFIG_NAME).read_text(encoding="utf-8"))
    if meta.get("kind") not in _KINDS:
        raise ValueError(f"{folder / CONFIG_NAME}: unknown kind of model {meta.get('kind')!r}")
    config = BertConfig(**meta["model"])
    model = (_KINDS[meta["kind"]](config, meta["n_classes"]) if meta["kind"] == "BertForSequenceClassification"
             else _KINDS[meta["kind"]](config))
    if (folder / WEIGHTS_NAMES[0]).exists():
        st = _safetensors()
        if st is None:
            raise ModuleNotFoundError(f"{folder / WEIGHTS_NAMES[0]} needs the package safetensors: pip install "
                                      "safetensors")
        state = st.load_file(str(folder / WEIGHTS_NAMES[0]))
    elif (folder / WEIGHTS_NAMES[1]).exists():
        state = torch.load(folder / WEIGHTS_NAMES[1], map_location="cpu", weights_only=True)
    else:
        raise FileNotFoundError(f"{folder} holds no weights ({' or '.join(WEIGHTS_NAMES)})")
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or set(missing) - set(_TIED):
        raise ValueError(f"the weights in {folder} do not fit {meta['kind']}({config}): missing "
                         f"{sorted(set(missing) - set(_TIED))[:6]}, unexpected {sorted(unexpected)[:6]}")
    return model.to(device).eval(), BPETokenizer.load(folder / TOKENIZER_NAME)


def pretrained_record(folder) -> dict:
    """What the run that wrote ``folder`` recorded (``config.json``'s ``extra``): for a folder of
    the command line, ``settings``, the evaluation ``steps`` with ``train_loss``, ``valid_loss``
    (MLM loss, nats) and ``valid_accuracy``, ``train_seconds``, ``device``, ``parameters``, ..."""
    path = Path(folder) / CONFIG_NAME
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: not a folder written by save_pretrained")
    return json.loads(path.read_text(encoding="utf-8")).get("extra", {})


# ---------------------------------------------------------------------------- the shipped checkpoint
SHIPPED_DIR = Path(__file__).resolve().parent / "pretrained" / "bert_mini"  # package data
BERT_DIR_ENV = "COURSE_BERT_DIR"  # names another folder to use instead (e.g. a checkpoint of your own)
SHIPPED_COMMAND = "python -m course_lib.bert pretrain --out course_lib/pretrained/bert_mini"


def shipped_dir() -> Path:
    """The folder of the course's pre-trained BERT: ``$COURSE_BERT_DIR`` if set, else ``SHIPPED_DIR``."""
    return Path(os.environ.get(BERT_DIR_ENV) or SHIPPED_DIR)


def load_shipped(device="cpu"):
    """``(model, tokenizer)``: the course's pre-trained ``BertForMaskedLM`` (``shipped_dir()``) and
    its BPE, the model on ``device`` in eval mode. A missing folder is an error that says how
    to get one."""
    folder = shipped_dir()
    if not any((folder / name).exists() for name in WEIGHTS_NAMES) or not (folder / CONFIG_NAME).exists():
        where = (f"${BERT_DIR_ENV} = {folder}" if os.environ.get(BERT_DIR_ENV)
                 else f"{folder}, where course_lib ships it")
        raise FileNotFoundError(
            f"the course's pre-trained BERT is missing: no {CONFIG_NAME} and model.safetensors in {where}. "
            "Reinstall course_lib from the course's repository (the checkpoint is package data), or pre-train "
            f"one in a clone of the course with `{SHIPPED_COMMAND}` (minutes to an hour on a CPU), or point "
            f"${BERT_DIR_ENV} at a folder written by `python -m course_lib.bert pretrain --out FOLDER`.")
    model, tokenizer = load_pretrained(folder, device)
    if not isinstance(model, BertForMaskedLM):
        raise ValueError(f"{folder} holds a {type(model).__name__}, not the pre-trained BertForMaskedLM")
    return model, tokenizer


# ---------------------------------------------------------------------------- command line
DEFAULTS = dict(vocab_size=2048, block_size=128, n_layer=4, n_head=4, n_embd=128, dropout=0.1, batch_size=32,
                max_steps=2000, lr=1e-3, min_lr=1e-4, warmup=None, weight_decay=0.01, grad_clip=1.0,
                eval_every=250, eval_batches=10, seed=1337, max_chars=None, checkpoint_every=250)
RUN_NAME = "pretrain_run.json"  # the settings of an unfinished run, next to its checkpoint.pt
FAST_CHARS = 5_000  # --fast: the first characters of each play
# the shipped checkpoint's model (tests/test_bert_shipped.py checks it): DEFAULTS' architecture
SHIPPED_ARCHITECTURE = {k: DEFAULTS[k] for k in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd")}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m course_lib.bert",
                                     description="Pre-train chapter 8's mini-BERT on Shakespeare's plays.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pretrain", help="pre-train a BERT by masked language modelling and save it into a folder")
    p.add_argument("--out", required=True, help="folder for config.json, tokenizer.json and the weights")
    p.add_argument("--force", action="store_true", help="overwrite a folder that already holds a model "
                   "(or start an unfinished run again)")
    p.add_argument("--resume", action="store_true", help=f"go on from the {CHECKPOINT_NAME} of an unfinished run "
                   "in --out, with its settings")
    p.add_argument("--checkpoint-every", type=int, help=f"steps between checkpoints in --out, removed once the "
                   f"model is saved (default {DEFAULTS['checkpoint_every']})")
    p.add_argument("--vocab-size", type=int, help=f"BPE vocabulary, 4 special tokens included "
                   f"(default {DEFAULTS['vocab_size']})")
    p.add_argument("--block-size", type=int, help=f"tokens per window, [CLS] and [SEP] included "
                   f"(default {DEFAULTS['block_size']})")
    p.add_argument("--n-layer", type=int, help=f"encoder blocks (default {DEFAULTS['n_layer']})")
    p.add_argument("--n-head", type=int, help=f"attention heads (default {DEFAULTS['n_head']})")
    p.add_argument("--n-embd", type=int, help=f"width, a multiple of --n-head (default {DEFAULTS['n_embd']})")
    p.add_argument("--dropout", type=float, help=f"dropout probability (default {DEFAULTS['dropout']})")
    p.add_argument("--batch-size", type=int, help=f"windows per step (default {DEFAULTS['batch_size']})")
    p.add_argument("--max-steps", type=int, help=f"optimizer steps (default {DEFAULTS['max_steps']})")
    p.add_argument("--lr", type=float, help=f"peak learning rate (default {DEFAULTS['lr']})")
    p.add_argument("--min-lr", type=float, help=f"learning rate at the end (default {DEFAULTS['min_lr']})")
    p.add_argument("--warmup", type=int, help="warm-up steps (default min(100, max_steps // 10))")
    p.add_argument("--weight-decay", type=float, help=f"AdamW decay of the matrices (default "
                   f"{DEFAULTS['weight_decay']})")
    p.add_argument("--grad-clip", type=float, help=f"clip the gradient norm (default {DEFAULTS['grad_clip']})")
    p.add_argument("--eval-every", type=int, help=f"steps between evaluations (default {DEFAULTS['eval_every']})")
    p.add_argument("--eval-batches", type=int, help=f"batches per evaluation (default {DEFAULTS['eval_batches']})")
    p.add_argument("--seed", type=int, help=f"seed of the weights, windows and masks (default {DEFAULTS['seed']})")
    p.add_argument("--max-chars", type=int, help="keep the first characters of each play (quick runs)")
    p.add_argument("--fast", action="store_true", help=f"a quick check: --max-chars {FAST_CHARS}, 20 steps, "
                   "vocabulary 300, unless given")
    p.add_argument("--max-seconds", type=float, help="stop after this much training time")
    p.add_argument("--device", help="cpu, cuda, mps (default: the best there is)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def _settings(args, out: Path) -> dict:
    """The run's settings: the defaults and the flags given; resuming, the unfinished run's (which
    the flags given must agree with)."""
    given = {k: v for k, v in vars(args).items() if k in DEFAULTS and v is not None}
    if args.fast:
        for key, value in [("max_chars", FAST_CHARS), ("max_steps", 20), ("vocab_size", 300), ("eval_every", 10),
                           ("eval_batches", 2)]:
            given.setdefault(key, value)
    unfinished = (out / CHECKPOINT_NAME).exists()
    if not args.resume:
        if unfinished and not args.force:
            raise SystemExit(f"error: {out} holds an unfinished run ({CHECKPOINT_NAME}): pass --resume to go on "
                             "from it, --force to start again, or choose another --out")
        return {**DEFAULTS, **given}
    if not unfinished or not (out / RUN_NAME).exists() or not (out / TOKENIZER_NAME).exists():
        raise SystemExit(f"error: --resume: {out} holds no unfinished run ({CHECKPOINT_NAME}, {RUN_NAME} and "
                         f"{TOKENIZER_NAME}); a finished run removes its checkpoint")
    saved = json.loads((out / RUN_NAME).read_text(encoding="utf-8"))
    differ = {k: (saved.get(k), v) for k, v in given.items() if v != saved.get(k)}
    if differ:
        raise SystemExit(f"error: --resume: the run in {out} has other settings; saved vs given: "
                         + ", ".join(f"--{k.replace('_', '-')} {a!r} vs {b!r}" for k, (a, b) in differ.items())
                         + " (leave these flags out)")
    return saved


def main(argv=None) -> None:
    """Run the command line on ``argv`` (default ``sys.argv[1:]``); errors exit with a message."""
    args = build_parser().parse_args(argv)
    out = Path(args.out)
    cfg = _settings(args, out)  # first: an unfinished run's folder holds a model too, after --max-seconds
    if any((out / name).exists() for name in WEIGHTS_NAMES) and not (args.force or args.resume):
        raise SystemExit(f"error: {out} already holds a model: pass --force to overwrite it, or choose another --out")
    try:
        steps = cfg["max_steps"]
        warmup = min(100, steps // 10) if cfg["warmup"] is None else cfg["warmup"]
        model_config = BertConfig(vocab_size=cfg["vocab_size"], block_size=cfg["block_size"],
                                  n_layer=cfg["n_layer"], n_head=cfg["n_head"], n_embd=cfg["n_embd"],
                                  dropout=cfg["dropout"], attn_dropout=cfg["dropout"])
        warmup_cosine(0, warmup, steps)  # checks the schedule's settings before any work
        start = time.perf_counter()
        train_text, valid_text = corpus_text("train", cfg["max_chars"]), corpus_text("valid", cfg["max_chars"])
        if args.resume:
            tokenizer = BPETokenizer.load(out / TOKENIZER_NAME)
        else:
            tokenizer = train_tokenizer(train_text, cfg["vocab_size"])
            out.mkdir(parents=True, exist_ok=True)
            tokenizer.save(out / TOKENIZER_NAME)
            (out / RUN_NAME).write_text(json.dumps(cfg, indent=1), encoding="utf-8")
        train_ids, valid_ids = torch.tensor(tokenizer.encode(train_text)), torch.tensor(tokenizer.encode(valid_text))
        prepared = time.perf_counter() - start
        seed_everything(cfg["seed"])
        model = BertForMaskedLM(model_config)
        history = pretrain_mlm(model, train_ids, valid_ids, specials=Specials.of(tokenizer), steps=steps,
                               batch_size=cfg["batch_size"], lr=cfg["lr"], min_lr=cfg["min_lr"], warmup_steps=warmup,
                               weight_decay=cfg["weight_decay"], grad_clip=cfg["grad_clip"],
                               eval_every=cfg["eval_every"], eval_batches=cfg["eval_batches"],
                               device=args.device or pick_device(), seed=cfg["seed"], max_seconds=args.max_seconds,
                               progress=not args.quiet, checkpoint_dir=out, checkpoint_every=cfg["checkpoint_every"],
                               resume=args.resume)
    except ValueError as err:
        raise SystemExit(f"error: {err}") from None
    record = {"settings": cfg, "argv": list(sys.argv[1:] if argv is None else argv),
              "device": describe_device(args.device or pick_device()), "torch": torch.__version__,
              "steps": history.steps, "train_loss": history.train_loss,
              "valid_loss": history.valid_loss, "valid_accuracy": history.valid_accuracy,
              "train_seconds": history.seconds, "prepare_seconds": prepared, "masked_tokens_seen": history.tokens_seen,
              "train_tokens": len(train_ids), "parameters": model.num_parameters()}
    path = save_pretrained(out, model.cpu(), tokenizer, extra=record)
    finished = history.steps[-1] == steps
    if finished:  # the checkpoint (with the optimizer's state) is no longer needed
        for name in (CHECKPOINT_NAME, RUN_NAME):
            (out / name).unlink(missing_ok=True)
    size = path.stat().st_size / 2**20
    print(f"step {history.steps[-1]}: validation MLM loss {history.valid_loss[0]:.3f} -> {history.valid_loss[-1]:.3f} "
          f"nats (masked-token accuracy {history.valid_accuracy[-1]:.3f}); {model.num_parameters() / 1e6:.2f}M "
          f"parameters, {size:.1f} MiB in {path}; {history.seconds:.0f} s of training "
          f"(+{prepared:.0f} s for the tokenizer)")
    if not math.isfinite(history.valid_loss[-1]) or history.diverged:
        raise SystemExit("error: the loss diverged: try a lower --lr")
    if not finished:
        print(f"stopped at step {history.steps[-1]} of {steps}: `python -m course_lib.bert pretrain --out {out} "
              f"--resume` goes on from {out / CHECKPOINT_NAME}")


if __name__ == "__main__":
    main()
