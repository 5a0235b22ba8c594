"""The training loop, evaluation and sampling that every neural chapter uses (chapter 3).

Chapter 1 estimated probabilities by counting; from chapter 3 on, a model's parameters are
learned by gradient descent on the cross-entropy. Every model keeps one contract
(makemore, nanoGPT)::

    logits, loss = model(idx, targets)   # idx, targets: (B, T) token ids; logits: (B, T, V)
    model.get_block_size()               # how many previous tokens the model can see

where ``logits[:, t]`` scores the token that follows ``idx[:, t]`` and ``loss`` is the mean
cross-entropy in nats per token (``targets == -1`` are ignored). A model that sees the whole
past (chapter 4's RNN) returns ``UNBOUNDED_CONTEXT`` as its block size. So this module is
written once for the bigram net, the MLP, the RNN and the Transformers:

- ``get_batch``: random windows of a token sequence, targets shifted by one;
- ``train``: AdamW steps with an optional learning-rate schedule, gradient clipping and a
  time budget (the chapters compare models at equal training time), returning a ``History``
  (``course_lib.history``; chapter 4's ``train_tbptt`` runs the same loop on batches of its own);
- ``evaluate``: mean loss over a fixed set of random batches;
- ``sequence_logprobs`` / ``bits_per_char``: the exact log-probability of every token of a
  text, preceded by one start token like chapter 1's ``<s>`` (the course ladder's metric);
- ``generate``: sampling, with temperature and top-k (``top_k_filter``; ``top_p_filter``
  joins it for GPT in chapter 7), written in ``course_lib.sampling`` and importable from here;
- ``lr_sweep``: short runs at several learning rates.

Chapter 7 adds GPT's training recipe to the same loop (GPT-2, GPT-3; nanoGPT's ``train.py``):

- ``configure_optimizer``: AdamW (betas 0.9, 0.95, GPT-3's) with weight decay on the matrices
  of the Linear layers only (minGPT's split; nanoGPT also decays the embeddings). Decay
  regularises the maps that mix features; pulling a LayerNorm gain or a bias to 0 only
  switches features off, and an embedding row is updated only when its token occurs, so
  decay would shrink rare tokens most.
- ``warmup_cosine``: a linear warm-up, then a cosine decay to a floor. At the start Adam's
  second-moment estimates rest on a few gradients and the weights are random, so full
  steps are unstable; later, a smaller step settles into the minimum the large steps
  found. It plugs into ``train``'s ``lr_schedule``. ``warmup_stable_decay`` holds the
  full rate until a final linear decay (chapter 8's BERT needs it to leave a plateau).
- clipping the gradient norm (``grad_clip``, chapter 4), so one unlucky batch cannot throw
  the weights far;
- gradient accumulation (``accumulate``): the gradient of a large batch, summed over
  micro-batches that fit in memory, each loss divided by their number;
- mixed precision (``precision``, ``resolve_precision``): the matmuls in bf16 (or fp16 with
  a gradient scaler that keeps small gradients from underflowing), the weights and the
  optimizer in fp32; about twice the speed and half the activation memory on a GPU;
- checkpoints (``save_checkpoint``, ``load_checkpoint`` from ``course_lib.checkpoint``,
  ``train(checkpoint_dir=...)``): a long run survives an interruption; with the
  generators' states saved too, a resumed run gives exactly the losses of an
  uninterrupted one on the CPU;
- ``torch.compile`` (``compile=True``): the same steps through generated, fused kernels.

    >>> data = torch.tensor([0, 1, 2, 3, 4, 5])
    >>> x, y = get_batch(data, block_size=3, batch_size=1, generator=torch.Generator().manual_seed(0))
    >>> x.tolist(), y.tolist()   # y is x moved one step to the right
    ([[2, 3, 4]], [[3, 4, 5]])

Data parallelism (``train(distributed=True)``, launched by ``torchrun``; the command line
``python -m course_lib.gpt train`` sets it up): every process holds a copy of the model,
wrapped in ``DistributedDataParallel``, and reads its own slice of each batch; the backward
pass averages the gradients over the processes, so every copy takes the same step. With
``batch_size`` B per process and W processes, a step sees W * B windows and equals, up to
rounding, the step of one process with ``batch_size=W * B`` (tests check it).

Scope: one loop for every chapter; data parallelism over whole model copies only (no
sharded weights or optimizer states, no ``no_sync`` to skip the all-reduce between
accumulated micro-batches). Every addition of
chapter 7 is off by default (``precision="fp32"``, ``accumulate=1``, no checkpoints), so
the earlier chapters run exactly as before; ``"auto"`` picks the precision by device.
Evaluation stays in fp32 and uncompiled. A checkpoint keeps one file, the latest; the
schedule is a function of the step, so it has no state to save.
"""

from __future__ import annotations

import math
import os
import time
import warnings
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .checkpoint import CHECKPOINT_NAME, load_checkpoint, save_checkpoint
from .checks import (_check_model, _check_positive_int, _check_settings, _check_tokens, _eval_mode,  # noqa: F401
                     _model_device)
from .history import History
from .runtime import autocast_dtype, pick_device, seed_everything
from .sampling import (_check_prompt, _check_sampling, _sample_next, generate, top_k_filter,  # noqa: F401
                       top_p_filter)

__all__ = ["History", "get_batch", "evaluate", "train", "lr_sweep", "generate",
           "sequence_logprobs", "bits_per_char", "UNBOUNDED_CONTEXT", "configure_optimizer",
           "warmup_cosine", "warmup_stable_decay", "resolve_precision", "save_checkpoint", "load_checkpoint",
           "CHECKPOINT_NAME",
           "top_k_filter", "top_p_filter"]

UNBOUNDED_CONTEXT = 2**62  # get_block_size() of a model that can see the whole past (the RNN)


def _window(model, block_size) -> int:
    """``block_size``, or by default ``model.get_block_size()``: the length T of the windows
    that ``train`` and ``evaluate`` read, each from the model's initial state."""
    model_block = _check_model(model)
    if block_size is not None:
        return block_size
    if model_block >= UNBOUNDED_CONTEXT:
        raise ValueError(f"{type(model).__name__} sees the whole past (get_block_size() is UNBOUNDED_CONTEXT), "
                         "so there is no window length to default to: pass block_size, the length T of the "
                         "windows, each read from a zero state (e.g. block_size=64); course_lib.rnn.train_tbptt "
                         "trains such a model on whole streams")
    return model_block


# ---------------------------------------------------------------------------- batches
def get_batch(data, block_size: int, batch_size: int, generator: torch.Generator | None = None,
              device="cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """``batch_size`` random windows of ``block_size`` tokens from the 1-D tensor ``data``.

    Returns ``(x, y)``, both (B, T) int64 with ``y[:, t] == data[i + t + 1]`` when
    ``x[:, t] == data[i + t]``: every position of a window is one training example.
    ``generator`` (a CPU ``torch.Generator``) makes the choice of windows reproducible.
    """
    _check_positive_int("block_size", block_size)
    _check_positive_int("batch_size", batch_size)
    data = _check_tokens("data", data)
    if len(data) < block_size + 1:
        raise ValueError(f"data holds {len(data)} tokens; a window of block_size={block_size} "
                         f"needs at least {block_size + 1} (the inputs and one more target)")
    starts = torch.randint(len(data) - block_size, (batch_size,), generator=generator)  # (B,)
    offsets = starts[:, None] + torch.arange(block_size)  # (B, T)
    x, y = data[offsets], data[offsets + 1]  # (B, T) each
    return x.to(device), y.to(device)


def evaluate(model, data, block_size: int | None = None, batch_size: int = 32, n_batches: int = 20,
             seed: int = 0, generator: torch.Generator | None = None, device=None) -> float:
    """Mean loss (nats per token) over ``n_batches`` random batches of ``data``.

    The batches are fixed by ``seed`` (or drawn from ``generator``), so two calls with the
    same seed measure the same tokens. No gradients; the model's train/eval mode is restored.
    ``block_size`` defaults to ``model.get_block_size()``; a model that sees the whole past
    (``UNBOUNDED_CONTEXT``, the RNN) has no default and needs an explicit ``block_size``.
    """
    block_size = _window(model, block_size)
    _check_positive_int("n_batches", n_batches)
    device = _model_device(model) if device is None else device
    generator = generator if generator is not None else torch.Generator().manual_seed(seed)
    total = 0.0
    with _eval_mode(model):
        for _ in range(n_batches):
            x, y = get_batch(data, block_size, batch_size, generator, device)
            _, loss = model(x, y)
            total += loss.item()
    return total / n_batches



# ---------------------------------------------------------------------------- the recipe (chapter 7)
def configure_optimizer(model: torch.nn.Module, lr: float, weight_decay: float, betas=(0.9, 0.95),
                        eps: float = 1e-8) -> torch.optim.AdamW:
    """AdamW with two parameter groups: ``weight_decay`` on the matrices of the Linear
    layers only; none on biases, normalisation gains and embeddings. That split is minGPT's
    convention; nanoGPT decays every parameter of two or more dimensions, embeddings included,
    and the GPT-2 paper says nothing about decay (GPT-3's uses 0.1).

    Decay pulls every weight towards 0. That regularises a matrix that mixes features, but a
    LayerNorm gain pulled to 0 switches its features off and a bias has no scale to shrink;
    an embedding row is updated only when its token occurs, so decay would shrink rare
    tokens most. A Parameter used twice (GPT's ``lm_head`` tied to the embedding ``wte``)
    is counted once, as an embedding. ``param_groups[0]`` decays, ``param_groups[1]`` not::

        GPT(n_layer=1): decay c_attn.weight, c_proj.weight, c_fc.weight, mlp.c_proj.weight;
                        no decay wte (= lm_head), wpe, ln_1, ln_2, ln_f, every bias
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"expected a torch.nn.Module, got {type(model).__name__}")
    _check_settings([], [("lr", lr)], weight_decay)
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    decay, no_decay = [], []
    for p in model.parameters():  # parameters() yields a shared (tied) Parameter once
        if p.requires_grad:
            (decay if p.dim() >= 2 and id(p) not in embeddings else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), eps=eps)


def _check_schedule(step, warmup_steps, total_steps, min_lr, max_lr, decay_steps: int = 0) -> None:
    """The settings of a learning-rate schedule, checked with a message that says what was expected."""
    for name, value in [("step", step), ("warmup_steps", warmup_steps), ("decay_steps", decay_steps)]:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
    _check_positive_int("total_steps", total_steps)
    if warmup_steps + decay_steps > total_steps:
        what = f"warmup_steps={warmup_steps}" + (f" + decay_steps={decay_steps}" if decay_steps else "")
        raise ValueError(f"{what} is longer than total_steps={total_steps}")
    if not (isinstance(min_lr, (int, float)) and isinstance(max_lr, (int, float)) and 0 <= min_lr <= max_lr):
        raise ValueError(f"expected 0 <= min_lr <= max_lr, got min_lr={min_lr!r}, max_lr={max_lr!r}")


def warmup_cosine(step: int, warmup_steps: int, total_steps: int, max_lr: float = 1.0,
                  min_lr: float = 0.0) -> float:
    """The learning rate at ``step`` (0-based): a linear warm-up to ``max_lr`` over
    ``warmup_steps`` steps, then a cosine decay to ``min_lr`` at ``total_steps``, and
    ``min_lr`` after (GPT-3, Brown et al. 2020; nanoGPT's ``get_lr``)::

        step < warmup:          max_lr * (step + 1) / (warmup + 1)
        warmup <= step < total: min_lr + (max_lr - min_lr) * (1 + cos(pi * r)) / 2
                                with r = (step - warmup) / (total - warmup), from 0 to 1
        step >= total:          min_lr

    With the defaults it is a factor for ``train``'s ``lr_schedule``, which multiplies
    ``lr`` by it: ``lr_schedule=functools.partial(warmup_cosine, warmup_steps=100,
    total_steps=steps, min_lr=0.1)``. Warm-up 1, total 3: steps 0, 1, 2, 3 give 0.5, 1,
    0.5, 0.
    """
    _check_schedule(step, warmup_steps, total_steps, min_lr, max_lr)
    if step < warmup_steps:
        return max_lr * (step + 1) / (warmup_steps + 1)
    if step >= total_steps:
        return min_lr
    r = (step - warmup_steps) / (total_steps - warmup_steps)  # from 0 to 1
    return min_lr + (max_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * r))


def warmup_stable_decay(step: int, warmup_steps: int, total_steps: int, decay_steps: int, max_lr: float = 1.0,
                        min_lr: float = 0.0) -> float:
    """The learning rate at ``step`` (0-based): a linear warm-up to ``max_lr`` over
    ``warmup_steps``, then ``max_lr`` held, then a linear decay to ``min_lr`` over the last
    ``decay_steps`` steps before ``total_steps``, and ``min_lr`` after ("warm-up, stable,
    decay": Hu et al. 2024, MiniCPM). Unlike a cosine it keeps the full rate until the
    end is near, which matters for a model that must first leave a plateau::

        step < warmup:                      max_lr * (step + 1) / (warmup + 1)
        warmup <= step < total - decay:     max_lr
        total - decay <= step < total:      max_lr - (max_lr - min_lr) * (step - (total - decay) + 1) / decay
        step >= total:                      min_lr

    Warm-up 1, total 4, decay 2: steps 0..4 give 0.5, 1, 0.5, 0, 0.
    """
    _check_schedule(step, warmup_steps, total_steps, min_lr, max_lr, decay_steps)
    if step < warmup_steps:
        return max_lr * (step + 1) / (warmup_steps + 1)
    if step >= total_steps:
        return min_lr
    start = total_steps - decay_steps
    if step < start:
        return max_lr
    return max_lr - (max_lr - min_lr) * (step - start + 1) / decay_steps


PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_precision(precision: str, device) -> str:
    """The precision that ``train`` runs in on ``device``: ``"fp32"``, ``"bf16"`` or ``"fp16"``.

    ``"auto"`` picks by device (``runtime.autocast_dtype``): bf16 on a GPU that has it, fp16
    (with a gradient scaler) on an older GPU such as the T4, fp32 on the CPU and MPS. bf16
    is also allowed on the CPU (autocast), fp16 only on a CUDA GPU.
    """
    device_type = torch.device(device).type
    if precision == "auto":
        dtype = autocast_dtype(device_type)
        return next(name for name, d in PRECISIONS.items() if d == dtype)
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of 'auto', 'fp32', 'bf16', 'fp16', got {precision!r}")
    if precision == "fp16" and device_type != "cuda":
        raise ValueError(f"precision='fp16' needs a CUDA GPU (a gradient scaler keeps its small gradients "
                         f"from underflowing); on {device_type} use 'fp32' or 'bf16'")
    if precision == "bf16" and device_type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError("this GPU has no bf16: use precision='fp16' (with a gradient scaler) or 'fp32'")
    if precision == "bf16" and device_type not in ("cuda", "cpu"):
        raise ValueError(f"precision='bf16' runs on CUDA or the CPU, not on {device_type}: use 'fp32'")
    return precision



# ---------------------------------------------------------------------------- training
def train(model, train_data, valid_data=None, *, steps: int, batch_size: int = 32, block_size: int | None = None,
          lr: float = 1e-3, weight_decay: float = 0.0, optimizer: torch.optim.Optimizer | None = None,
          lr_schedule: Callable[[int], float] | None = None, eval_every: int = 100, eval_batches: int = 20,
          grad_clip: float | None = None, device=None, seed: int = 1337, max_seconds: float | None = None,
          progress: bool = True, accumulate: int = 1, precision: str = "fp32", checkpoint_dir=None,
          checkpoint_every: int | None = None, resume: bool = True, distributed: bool = False,
          compile: bool = False) -> History:
    """Train ``model`` on random windows of ``train_data``; return its ``History``.

    One step: a batch from ``get_batch``, ``loss.backward()``, optional gradient clipping to
    norm ``grad_clip``, one optimizer step (by default AdamW with ``lr`` and decoupled
    ``weight_decay`` on every parameter; both are unused when an ``optimizer`` is given).
    ``lr_schedule(step)`` multiplies the base learning rate at each step (0-based). Train and
    validation losses are evaluated on fixed batches at step 0, every ``eval_every`` steps
    and at the end.

    ``block_size`` is the length T of the training windows; it defaults to
    ``model.get_block_size()``, the longest input a Transformer accepts. Models with a fixed
    context (the bigram net, the MLP) accept longer windows and each position still uses its
    own context, so a longer T gives more examples per window. A model that sees the whole
    past (``UNBOUNDED_CONTEXT``, the RNN) has no default: pass ``block_size``, or train it
    with ``course_lib.rnn.train_tbptt``.

    ``max_seconds`` stops training once the training steps have taken that long, so that
    models can be compared at equal time. Training is seeded by ``seed`` (batches and any
    dropout); initialise the model after ``seed_everything`` for a fully repeatable run.
    A loss that is not finite stops training with a warning (``History.diverged``).

    Chapter 7's recipe (see the module docstring) adds, each off by default:

    - ``accumulate``: micro-batches per optimizer step. Each step draws ``accumulate *
      batch_size`` windows, cut into ``accumulate`` micro-batches of ``batch_size``, and
      adds up their gradients, each loss divided by ``accumulate``: the step of one batch
      of ``accumulate * batch_size`` windows in the memory of one of ``batch_size``.
    - ``precision``: ``"fp32"``, ``"bf16"`` (autocast, on CUDA or the CPU), ``"fp16"``
      (autocast and a gradient scaler, CUDA only) or ``"auto"`` (by device, see
      ``resolve_precision``). The evaluations stay in fp32.
    - ``checkpoint_dir``: a folder where ``CHECKPOINT_NAME`` is saved every
      ``checkpoint_every`` steps (if given) and at the end. With ``resume`` a run whose
      folder holds a checkpoint goes on from it, to ``steps`` in all: on the CPU an
      interrupted and resumed run gives exactly the losses and weights of one that was not.
      The checkpoint records batch_size, block_size, accumulate, seed and precision;
      resuming with others is refused.
    - ``distributed``: data parallelism in a process group that the caller has set up
      (``torch.distributed.init_process_group``; every process calls ``train`` alike, on its
      own ``device``). ``batch_size`` is per process: each step draws the W * B windows of
      one process with ``batch_size=W * B`` (the same seed on every process) and process r
      takes windows r*B..(r+1)*B-1; ``DistributedDataParallel`` averages the gradients. The
      recorded losses are those of the whole batch (the evaluations use W * B windows), so
      the ``History`` equals that single process's; ``tokens_seen`` counts one process's
      tokens. Only process 0 writes checkpoints; every process reads them to resume.
      ``max_seconds`` is refused: the processes' clocks would stop them at different steps.
    - ``compile``: run the training forward and backward through ``torch.compile(model)``,
      which fuses operations into generated kernels (Triton on a GPU, C++ on the CPU). The
      first steps wait for the compiler (tens of seconds); it pays on a GPU in long runs.
      The evaluations, the checkpoints and the returned model stay uncompiled.
    """
    block_size = _window(model, block_size)
    _check_settings([("steps", steps), ("batch_size", batch_size), ("block_size", block_size),
                     ("eval_every", eval_every), ("eval_batches", eval_batches), ("accumulate", accumulate)]
                    + ([] if checkpoint_every is None else [("checkpoint_every", checkpoint_every)]),
                    [("lr", lr), ("grad_clip", grad_clip), ("max_seconds", max_seconds)], weight_decay)
    train_data = _check_tokens("train_data", train_data, block_size + 1)
    valid_data = None if valid_data is None else _check_tokens("valid_data", valid_data, block_size + 1)
    device = pick_device() if device is None else device
    precision = resolve_precision(precision, device)
    batches = torch.Generator().manual_seed(seed)
    if not isinstance(compile, bool):
        raise ValueError(f"compile must be True or False, got {compile!r}")
    world, rank, net = 1, 0, model
    if compile:
        net = torch.compile(model)  # shares model's parameters: the optimizer and checkpoints see no difference
    if distributed:
        world, rank, net = _data_parallel(net, device, max_seconds)
    run = dict(batch_size=batch_size, block_size=block_size, accumulate=accumulate, seed=seed, precision=precision)
    if world > 1:
        run["world_size"] = world

    def micro_batches():
        while True:  # one draw per optimizer step, so the generator's state is whole between steps
            x, y = get_batch(train_data, block_size, accumulate * world * batch_size, batches, device)  # (aWB, T)
            for xm, ym in zip(x.split(world * batch_size), y.split(world * batch_size)):  # (WB, T) each
                yield xm[rank * batch_size:(rank + 1) * batch_size], ym[rank * batch_size:(rank + 1) * batch_size]

    stream = micro_batches()
    checkpoint = None
    if checkpoint_dir is not None:
        checkpoint = _Checkpoint(os.path.join(checkpoint_dir, CHECKPOINT_NAME), checkpoint_every, resume,
                                 batches, run, write=rank == 0)

    def forward(x, y):
        _, loss = net(x, y)  # through DistributedDataParallel when distributed: backward averages the gradients
        if loss is None or loss.dim() != 0:
            raise TypeError("model(idx, targets) must return (logits, loss) with loss a scalar tensor")
        if world > 1:  # record the whole batch's loss (every process then agrees on divergence too)
            mean = loss.detach().clone()
            torch.distributed.all_reduce(mean)
            loss = loss + (mean / world - loss.detach())  # value: the mean over processes; gradient: this one's
        return loss

    return _fit(model, train_data, valid_data, steps=steps, window=block_size, batch_size=world * batch_size,
                next_batch=lambda: next(stream), forward=forward, lr=lr, weight_decay=weight_decay,
                optimizer=optimizer, lr_schedule=lr_schedule, grad_clip=grad_clip,
                clip=torch.nn.utils.clip_grad_norm_, eval_every=eval_every, eval_batches=eval_batches,
                device=device, seed=seed, max_seconds=max_seconds, progress=progress, desc="training",
                accumulate=accumulate, precision=precision, checkpoint=checkpoint)


def _data_parallel(model, device, max_seconds):
    """``(world_size, rank, model wrapped in DistributedDataParallel)`` for ``train(distributed=True)``."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError("distributed=True needs a process group: launch with torchrun and call "
                           "torch.distributed.init_process_group first (python -m course_lib.gpt train does)")
    if max_seconds is not None:
        raise ValueError("max_seconds is refused with distributed=True: each process's clock would stop it at "
                         "another step and the others would wait forever; give steps instead")
    device = torch.device(device)
    model.to(device)  # DistributedDataParallel copies process 0's weights to the others on the device
    ids = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else None
    return dist.get_world_size(), dist.get_rank(), DistributedDataParallel(model, device_ids=ids)


@dataclass
class _Checkpoint:
    """Where and how often ``_fit`` saves, and what else a resumed run must restore."""

    path: str
    every: int | None  # steps between saves (None: only at the end)
    resume: bool  # go on from the file at path if there is one
    sampler: torch.Generator  # the generator that draws the batches
    run: dict  # settings a resumed run must share with the saved one
    write: bool = True  # False on the processes other than 0 of a distributed run


def _fit(model, train_data, valid_data, *, steps: int, window: int, batch_size: int,
         next_batch: Callable[[], tuple[torch.Tensor, torch.Tensor]],
         forward: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], lr, weight_decay, optimizer,
         lr_schedule, grad_clip, clip, eval_every: int, eval_batches: int, device, seed: int, max_seconds,
         progress: bool, desc: str, measure: Callable[[int], bool] | None = None,
         history: History | None = None, accumulate: int = 1, precision: str = "fp32",
         checkpoint: _Checkpoint | None = None) -> History:
    """The one training loop of the course, run by ``train`` and ``course_lib.rnn.train_tbptt``.

    They differ only in their batches: ``next_batch()`` gives the next (x, y), each (B, T)
    on ``device``, and ``forward(x, y)`` its mean loss, a scalar (a stateful model carries
    its state from one call to the next there). Everything else is here, once: seeding, the
    optimizer, the learning-rate schedule, clipping by ``clip(parameters, grad_clip)``,
    divergence, the progress bar, the time budget, and the losses on ``eval_batches`` fixed
    windows of ``window`` tokens at step 0, every ``eval_every`` steps and at the end. A
    model with other data (chapter 5's sentence pairs) passes its own ``measure(step)``,
    which appends to its ``history`` and returns True to stop training early.

    Chapter 7 adds, here once: ``accumulate`` calls of ``next_batch()`` per optimizer step,
    their gradients summed (each loss divided by ``accumulate``); autocast in ``precision``
    with a gradient scaler for fp16; and, with a ``checkpoint``, saving and resuming.
    """
    seed_everything(seed)
    model.to(device)
    if optimizer is None:
        optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    base_lrs = [group["lr"] for group in optimizer.param_groups]
    history = History() if history is None else history
    was_training = model.training
    device_type, dtype = torch.device(device).type, PRECISIONS[precision]
    scaler = torch.amp.GradScaler("cuda") if precision == "fp16" else None
    step = saved_at = 0
    resumed = checkpoint is not None and checkpoint.resume and os.path.exists(checkpoint.path)
    if resumed:
        saved = load_checkpoint(checkpoint.path, model, optimizer, scaler, history=history)  # fills history
        if saved["extra"].get("run") != checkpoint.run:
            raise ValueError(f"{checkpoint.path} was saved by a run with {saved['extra'].get('run')}, not "
                             f"{checkpoint.run}: pass the same settings, resume=False, or another checkpoint_dir")
        checkpoint.sampler.set_state(saved["extra"]["sampler"])
        step = saved_at = saved["step"]

    def save() -> None:
        nonlocal saved_at
        if checkpoint.write:
            save_checkpoint(checkpoint.path, model, optimizer, step, history, scaler=scaler,
                            extra={"run": checkpoint.run, "sampler": checkpoint.sampler.get_state()})
        saved_at = step

    def measure_windows(step: int) -> bool:
        history.steps.append(step)
        for data, losses in [(train_data, history.train_loss), (valid_data, history.valid_loss)]:
            if data is not None:  # the same batches at every evaluation: seed + 1
                losses.append(evaluate(model, data, window, batch_size, eval_batches, seed=seed + 1,
                                       device=device))
        return False

    measure = measure_windows if measure is None else measure
    stop = False if resumed else measure(0)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=steps, initial=min(step, steps), desc=desc, unit="step")
    while step < steps and not stop and not history.diverged:
        start = time.perf_counter()
        if lr_schedule is not None:
            for group, base in zip(optimizer.param_groups, base_lrs):
                group["lr"] = base * lr_schedule(step)
        model.train()
        optimizer.zero_grad(set_to_none=True)
        total, tokens = 0.0, 0
        for _ in range(accumulate):
            x, y = next_batch()  # (B, T) each
            with torch.autocast(device_type, dtype=dtype) if dtype is not None else nullcontext():
                loss = forward(x, y)
            total += loss.item()
            if not math.isfinite(total):
                break
            loss = loss / accumulate  # the mean over the micro-batches (x / 1 is x exactly)
            (loss if scaler is None else scaler.scale(loss)).backward()
            tokens += int((y != -1).sum())  # the targets predicted; -1 marks padding
        history.step_losses.append(total / accumulate)
        if not math.isfinite(history.step_losses[-1]):
            history.diverged = True
            warnings.warn(f"the loss is {history.step_losses[-1]} at step {step}: training stopped "
                          "(try a lower learning rate)", RuntimeWarning, stacklevel=3)
        else:
            if scaler is not None:
                scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
            if grad_clip is not None:
                norm = clip(model.parameters(), grad_clip)  # the norm before clipping
            else:
                norm = torch.nn.utils.get_total_norm([p.grad for p in model.parameters() if p.grad is not None])
            history.grad_norms.append(float(norm))
            if scaler is None:
                optimizer.step()
            else:
                scaler.step(optimizer)  # skipped if the fp16 gradients overflowed
                scaler.update()
            step += 1
            history.tokens_seen += tokens
        history.seconds += time.perf_counter() - start
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{history.step_losses[-1]:.4f}", refresh=False)
        out_of_time = max_seconds is not None and history.seconds >= max_seconds
        if step % eval_every == 0 and step < steps and not out_of_time and not history.diverged:
            stop = measure(step)
        if (checkpoint is not None and checkpoint.every is not None and step % checkpoint.every == 0
                and step < steps and not out_of_time and not history.diverged):
            save()
        if out_of_time:
            break
    if bar is not None:
        bar.close()
    if checkpoint is not None and not history.diverged:
        # a measurement on the eval_every grid belongs to the run; the one that closes a run
        # off the grid does not, so it is taken after saving: a resumed run then records
        # exactly the measurements of an uninterrupted one
        if step % eval_every == 0 and history.steps[-1] != step:
            measure(step)
        if saved_at != step or not os.path.exists(checkpoint.path):
            save()
    if history.steps[-1] != step:
        measure(step)
    model.train(was_training)
    return history


def lr_sweep(make_model: Callable[[], torch.nn.Module], train_data, lrs: Sequence[float], steps: int,
             valid_data=None, seed: int = 1337, **train_kwargs) -> dict[float, float]:
    """Final loss after ``steps`` steps at each learning rate, every run from the same seed.

    ``make_model()`` builds a fresh model (called after seeding, so every run starts from
    the same weights). The loss is the final validation loss if ``valid_data`` is given,
    else the final training loss; a run that diverged scores ``inf``. ``train_kwargs`` go
    to ``train`` (batch_size, block_size, device, ...). For example::

        losses = lr_sweep(lambda: MLPLanguageModel(config), data, [1e-3, 1e-2, 1e-1], steps=200)
        best_lr = min(losses, key=losses.get)
    """
    lrs = list(lrs)
    if not lrs:
        raise ValueError("lrs is empty: give at least one learning rate")
    train_kwargs.setdefault("progress", False)
    train_kwargs.setdefault("eval_every", steps)
    results = {}
    for lr in lrs:
        seed_everything(seed)
        history = train(make_model(), train_data, valid_data, steps=steps, lr=lr, seed=seed, **train_kwargs)
        final = history.valid_loss[-1] if valid_data is not None else history.train_loss[-1]
        results[lr] = final if not history.diverged and math.isfinite(final) else math.inf
    return results



# ---------------------------------------------------------------------------- scoring texts
def sequence_logprobs(model, ids, start_id: int, batch_size: int = 64, device=None,
                      window: int | None = None, context: int | None = None) -> torch.Tensor:
    """Natural-log probability of every token of the 1-D sequence ``ids``, float64, shape (N,).

    The sequence is preceded by one ``start_id`` token, so ``ids[0]`` is predicted from the
    start token alone (chapter 1 padded with ``<s>`` the same way) and ``ids[j]`` from
    ``min(j + 1, block_size)`` real tokens: no position is scored with a context cut short.

    The model reads overlapping windows of ``window`` tokens (default
    ``model.get_block_size()``, which every model accepts). The first window scores all its
    positions; each later one only its last ``window - block_size + 1`` positions, those
    that see a full context. Models that accept inputs longer than their block size (the
    bigram net and the MLP) are much faster with a long window; the result is the same.

        sequence [s, a, b, c, d] (s = start), block_size = window = 2:
        windows  [s a] -> P(a|s), P(b|s a);  [a b] -> P(c|a b);  [b c] -> P(d|b c)

    A Transformer accepts no longer window, so by default every window after the first
    scores one position: N forward passes of ``block_size`` tokens. ``context`` trades
    exactness for speed: each later window scores every position that sees at least
    ``context`` tokens (1 <= context <= block_size; the default is block_size). With
    ``context = block_size // 2`` a GPT reads the text about twice instead of
    ``block_size`` times, and each token is scored from between ``context`` and
    ``block_size`` previous tokens (Hugging Face's "strided" perplexity).
    """
    block_size = _check_model(model)
    if isinstance(ids, (list, tuple)):
        ids = torch.tensor(ids, dtype=torch.long if len(ids) == 0 else None)
    ids = _check_tokens("ids", ids)
    if isinstance(start_id, bool) or not isinstance(start_id, int) or start_id < 0:
        raise ValueError(f"start_id must be a token id (an integer >= 0), got {start_id!r}")
    _check_positive_int("batch_size", batch_size)
    window = block_size if window is None else _check_positive_int("window", window)
    if window < block_size:
        raise ValueError(f"window={window} is shorter than the model's block_size={block_size}: "
                         "positions would be scored with a context cut short")
    context = block_size if context is None else _check_positive_int("context", context)
    if context > block_size:
        raise ValueError(f"context={context} is longer than the model's block_size={block_size}")
    n = len(ids)
    inputs = torch.cat([torch.tensor([start_id]), ids[:-1]])  # (N,) token j is predicted after inputs[j]
    length = min(window, n)
    # windows as (first position, first position scored): the first scores everything
    spans = [(0, 0)]
    stride = length - min(context, length) + 1  # the positions of a window that see >= context tokens
    pos = length
    while pos < n:
        end = min(pos + stride, n)
        spans.append((end - length, pos))
        pos = end
    starts = torch.tensor([s for s, _ in spans])  # (W,)
    offsets = starts[:, None] + torch.arange(length)  # (W, T)
    scored = offsets >= torch.tensor([p for _, p in spans])[:, None]  # (W, T) each position once
    device = _model_device(model) if device is None else device
    out = torch.empty(n, dtype=torch.float64)
    with _eval_mode(model):
        for i in range(0, len(spans), batch_size):
            off, mask = offsets[i:i + batch_size], scored[i:i + batch_size]  # (B, T)
            logits, _ = model(inputs[off].to(device))  # (B, T, V)
            logp = F.log_softmax(logits.double(), dim=-1)  # (B, T, V)
            logp = logp.gather(-1, ids[off].to(device)[..., None])[..., 0].cpu()  # (B, T)
            out[off[mask]] = logp[mask]
    return out


def bits_per_char(model, texts_ids, start_id: int, n_chars: int | None = None, batch_size: int = 64,
                  device=None, window: int | None = None, context: int | None = None) -> float:
    """Bits per character of ``model`` on whole texts (the course ladder's metric).

    ``texts_ids`` is a list of 1-D token sequences (one per play); each is scored by
    ``sequence_logprobs`` after one ``start_id`` token (or, for a model with a
    ``texts_logprobs`` method such as the RNN's, by that method, all texts in one batch).
    The result is the sum of -log2 P over all tokens divided by ``n_chars``, the number
    of characters of the texts: by default the number of tokens (right for character
    models); a subword model's caller passes the texts' total length in characters, so
    models with any tokenizer compare. ``window`` and ``context`` go to ``sequence_logprobs``.

    A uniform model over V tokens scores log2(V) bits per character.
    """
    if isinstance(texts_ids, torch.Tensor) or (isinstance(texts_ids, (list, tuple)) and texts_ids
                                                and isinstance(texts_ids[0], int)):
        raise TypeError("expected a list of token sequences, one per text; for a single text pass [ids]")
    texts_ids = list(texts_ids)
    if not texts_ids:
        raise ValueError("texts_ids is empty: give at least one text")
    total_nats, n_tokens = 0.0, 0
    texts_ids = [ids for ids in texts_ids if len(ids) > 0]  # an empty text has no characters to predict
    if hasattr(model, "texts_logprobs"):  # a recurrent model reads the texts side by side, exactly
        logprobs = model.texts_logprobs(texts_ids, start_id, device=device)
    else:
        logprobs = [sequence_logprobs(model, ids, start_id, batch_size, device, window, context) for ids in texts_ids]
    for ids, lp in zip(texts_ids, logprobs, strict=True):
        total_nats -= lp.sum().item()
        n_tokens += len(ids)
    if n_tokens == 0:
        raise ValueError("the texts hold no tokens")
    n_chars = n_tokens if n_chars is None else n_chars
    if isinstance(n_chars, bool) or not isinstance(n_chars, int) or n_chars <= 0:
        raise ValueError(f"n_chars must be the number of characters of the texts, an integer > 0, got {n_chars!r}")
    return total_nats / math.log(2) / n_chars
