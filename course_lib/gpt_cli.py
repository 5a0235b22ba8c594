"""The command line of chapter 7's GPT: train it on the course corpus, sample from it.

``course_lib.gpt`` holds the model and ``course_lib.train`` the recipe; this module joins
them to the corpus (``course_lib.data``) and a tokenizer (``course_lib.tokenizers``), as
nanoGPT's ``train.py`` and ``sample.py`` do::

    python -m course_lib.gpt train --tokenizer char --out runs/char --max-steps 2000
    python -m course_lib.gpt train --out runs/char --max-steps 4000 --resume   # go on to step 4000
    python -m course_lib.gpt sample --ckpt runs/char --prompt "ROMEO:" --max-new-tokens 300
    torchrun --nproc_per_node=2 -m course_lib.gpt train --out runs/ddp ...      # data parallel

``train`` writes into ``--out``: ``config.json`` (the ``GPTConfig``, the tokenizer's kind
and the run's settings), ``tokenizer.json`` (the vocabulary or the BPE merges; JSON, no
pickle) and ``checkpoint.pt`` (``course_lib.train.save_checkpoint``, read back with
``weights_only=True``). It trains on the training plays and ends by printing the
validation loss and bits per character, estimated on the fixed validation windows of
``train`` (loss / ln 2 * tokens / characters of the validation text).

Resuming (``--resume``) takes every setting from ``config.json``; a model or tokenizer flag
given again must agree with it, the run settings (``--max-steps``, ``--lr``, ...) may change.
The tokenizer is read from the folder, not trained again.

Under ``torchrun`` (``WORLD_SIZE`` > 1 in the environment) ``train`` sets up
``torch.distributed`` (NCCL on CUDA, one GPU per process by ``LOCAL_RANK``; Gloo on the
CPU) and trains with ``train(distributed=True)``: ``--batch-size`` is per process, so the
global batch is ``batch_size * WORLD_SIZE`` windows, and the run equals one process with
that batch size. Process 0 alone writes files and prints.

Scope: the course corpus only, with its fixed split by play (``--max-chars`` keeps the first
characters of each split, ``--fast`` 20,000 of them); one process per device; no
evaluation on the test plays (the course ladder does that).
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import sys
from dataclasses import asdict
from pathlib import Path

import torch

from .data import split_text
from .gpt import GPT, GPTConfig
from .runtime import pick_device, seed_everything
from .tokenizers import BPETokenizer, CharTokenizer
from .train import CHECKPOINT_NAME, configure_optimizer, load_checkpoint, train, warmup_cosine

__all__ = ["main", "build_parser", "TOKENIZERS", "CONFIG_NAME", "TOKENIZER_NAME"]

CONFIG_NAME, TOKENIZER_NAME = "config.json", "tokenizer.json"
TOKENIZERS = {"char": CharTokenizer, "bpe": BPETokenizer}
FAST_CHARS = 20_000  # --fast: the first characters of each split
MODEL_KEYS = ("n_layer", "n_head", "n_embd", "block_size", "dropout", "tokenizer", "vocab_size")
DEFAULTS = dict(tokenizer="char", vocab_size=512, n_layer=4, n_head=4, n_embd=128, block_size=128, dropout=0.0,
                batch_size=32, max_steps=2000, lr=1e-3, min_lr=1e-4, warmup=None, weight_decay=0.1,
                grad_clip=1.0, accumulate=1, precision="auto", eval_every=200, eval_batches=20,
                checkpoint_every=500, seed=1337, max_chars=None)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m course_lib.gpt",
                                     description="Train chapter 7's GPT on Shakespeare's plays, or sample from it.")
    sub = parser.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a GPT into a folder (resumable)")
    t.add_argument("--out", required=True, help="folder for config.json, tokenizer.json and checkpoint.pt")
    t.add_argument("--resume", action="store_true", help="go on from the checkpoint in --out, with its settings")
    t.add_argument("--tokenizer", choices=sorted(TOKENIZERS), help="characters or byte-level BPE (default char)")
    t.add_argument("--vocab-size", type=int, help="BPE only: vocabulary size, >= 256 (default 512)")
    t.add_argument("--n-layer", type=int, help="blocks (default 4)")
    t.add_argument("--n-head", type=int, help="attention heads (default 4)")
    t.add_argument("--n-embd", type=int, help="width of the residual stream, a multiple of --n-head (default 128)")
    t.add_argument("--block-size", type=int, help="context length in tokens (default 128)")
    t.add_argument("--dropout", type=float, help="dropout probability (default 0)")
    t.add_argument("--batch-size", type=int, help="windows per step and per process (default 32)")
    t.add_argument("--max-steps", type=int, help="optimizer steps in all, a resumed run's included (default 2000)")
    t.add_argument("--lr", type=float, help="peak learning rate (default 1e-3)")
    t.add_argument("--min-lr", type=float, help="learning rate at the end of the cosine decay (default 1e-4)")
    t.add_argument("--warmup", type=int, help="warm-up steps (default min(100, max_steps // 10))")
    t.add_argument("--weight-decay", type=float, help="AdamW decay of the matrices (default 0.1)")
    t.add_argument("--grad-clip", type=float, help="clip the gradient norm to this (default 1.0)")
    t.add_argument("--accumulate", type=int, help="micro-batches per step (default 1)")
    t.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"], help="default auto: by device")
    t.add_argument("--compile", action="store_true", help="train through torch.compile (pays on a GPU)")
    t.add_argument("--eval-every", type=int, help="steps between loss evaluations (default 200)")
    t.add_argument("--eval-batches", type=int, help="batches per evaluation (default 20)")
    t.add_argument("--checkpoint-every", type=int, help="steps between checkpoints (default 500)")
    t.add_argument("--seed", type=int, help="seed of the weights and batches (default 1337)")
    t.add_argument("--device", help="cpu, cuda, mps (default: the best there is; under torchrun cuda:LOCAL_RANK)")
    t.add_argument("--max-seconds", type=float, help="stop after this much training time (one process only)")
    t.add_argument("--max-chars", type=int, help="keep the first characters of each split (quick runs)")
    t.add_argument("--fast", action="store_true", help=f"a quick run: --max-chars {FAST_CHARS} unless given")
    t.add_argument("--quiet", action="store_true", help="no progress bar")

    s = sub.add_parser("sample", help="print a sample of a trained GPT")
    s.add_argument("--ckpt", required=True, help="a folder written by train")
    s.add_argument("--prompt", default="\n", help="text to continue (default a newline)")
    s.add_argument("--max-new-tokens", type=int, default=500, help="tokens to generate (default 500)")
    s.add_argument("--temperature", type=float, default=1.0, help="> 0; lower is more conservative (default 1)")
    s.add_argument("--top-k", type=int, help="sample among the k likeliest tokens only")
    s.add_argument("--top-p", type=float, help="sample among the likeliest tokens holding probability p")
    s.add_argument("--seed", type=int, default=1337, help="seed of the sample (default 1337)")
    s.add_argument("--device", help="cpu, cuda, mps (default: the best there is)")
    return parser


def main(argv=None) -> None:
    """Run the command line on ``argv`` (default ``sys.argv[1:]``); errors exit with a message."""
    args = build_parser().parse_args(argv)
    if args.command == "train":
        run_train(args)
    else:
        run_sample(args)


def _fail(message: str):
    raise SystemExit(f"error: {message}")


# ---------------------------------------------------------------------------- train
def _settings(args, out: Path) -> dict:
    """The run's settings: the defaults, those saved in ``out`` when resuming, then the flags given."""
    given = {key: value for key, value in vars(args).items() if key in DEFAULTS and value is not None}
    if args.fast and "max_chars" not in given:
        given["max_chars"] = FAST_CHARS
    checkpoint = out / CHECKPOINT_NAME
    if not args.resume:
        if checkpoint.exists():
            _fail(f"{out} already holds a checkpoint: pass --resume to go on from it, or choose another --out")
        return {**DEFAULTS, **given}
    if not out.is_dir():
        _fail(f"--resume: the folder {out} does not exist")
    if not checkpoint.exists() or not (out / CONFIG_NAME).exists():
        _fail(f"--resume: {out} holds no {CHECKPOINT_NAME} and {CONFIG_NAME} to resume from; "
              "train without --resume first")
    saved = json.loads((out / CONFIG_NAME).read_text(encoding="utf-8"))["settings"]
    differ = {key: (saved.get(key), given[key]) for key in MODEL_KEYS if key in given and given[key] != saved.get(key)}
    if differ:
        _fail(f"--resume: the model in {out} was trained with other settings; saved vs given: "
              + ", ".join(f"{key} {a!r} vs {b!r}" for key, (a, b) in differ.items())
              + " (leave these flags out to keep the saved ones)")
    return {**DEFAULTS, **saved, **given}


def _distributed(device_flag) -> tuple[int, int, str]:
    """``(world_size, rank, device)``; under torchrun the process group is set up here."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 1, 0, device_flag or pick_device()
    import torch.distributed as dist

    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = device_flag or ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda"):
        device = f"cuda:{local}"
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return world, dist.get_rank(), device


def run_train(args) -> None:
    out = Path(args.out)
    cfg = _settings(args, out)
    if cfg["max_chars"] is not None and cfg["max_chars"] <= cfg["block_size"]:
        _fail(f"--max-chars {cfg['max_chars']} leaves no window of --block-size {cfg['block_size']}: give more")
    steps = cfg["max_steps"]
    warmup = min(100, steps // 10) if cfg["warmup"] is None else cfg["warmup"]
    if not 0 <= warmup <= steps:
        _fail(f"--warmup {warmup} must lie in 0..--max-steps {steps}")
    if not 0 <= cfg["min_lr"] <= cfg["lr"]:
        _fail(f"expected 0 <= --min-lr <= --lr, got {cfg['min_lr']} and {cfg['lr']}")
    train_text, valid_text = split_text("train"), split_text("valid")
    if cfg["max_chars"] is not None:
        train_text, valid_text = train_text[:cfg["max_chars"]], valid_text[:cfg["max_chars"]]
    world, rank, device = _distributed(args.device)
    try:
        if args.resume:
            tokenizer = TOKENIZERS[cfg["tokenizer"]].load(out / TOKENIZER_NAME)
        elif cfg["tokenizer"] == "bpe":
            tokenizer = BPETokenizer.train(train_text, cfg["vocab_size"])
        else:
            tokenizer = CharTokenizer().fit(train_text)
        if cfg["tokenizer"] == "char":
            cfg["vocab_size"] = tokenizer.vocab_size
        model_config = GPTConfig(vocab_size=tokenizer.vocab_size, block_size=cfg["block_size"],
                                 n_layer=cfg["n_layer"], n_head=cfg["n_head"], n_embd=cfg["n_embd"],
                                 dropout=cfg["dropout"])
        if rank == 0:
            out.mkdir(parents=True, exist_ok=True)
            tokenizer.save(out / TOKENIZER_NAME)
            config = {"model": asdict(model_config), "tokenizer": cfg["tokenizer"], "settings": cfg}
            (out / CONFIG_NAME).write_text(json.dumps(config, indent=1), encoding="utf-8")
        train_ids = torch.tensor(tokenizer.encode(train_text))
        valid_ids = torch.tensor(tokenizer.encode(valid_text))
        seed_everything(cfg["seed"])
        model = GPT(model_config)
        optimizer = configure_optimizer(model, cfg["lr"], cfg["weight_decay"])
        schedule = functools.partial(warmup_cosine, warmup_steps=warmup, total_steps=steps,
                                     min_lr=cfg["min_lr"] / cfg["lr"])
        try:
            history = train(model, train_ids, valid_ids, steps=steps, batch_size=cfg["batch_size"],
                            optimizer=optimizer, lr_schedule=schedule, eval_every=cfg["eval_every"],
                            eval_batches=cfg["eval_batches"], grad_clip=cfg["grad_clip"], device=device,
                            seed=cfg["seed"], max_seconds=args.max_seconds,
                            progress=rank == 0 and not args.quiet, accumulate=cfg["accumulate"],
                            precision=cfg["precision"], checkpoint_dir=str(out),
                            checkpoint_every=cfg["checkpoint_every"], resume=args.resume, distributed=world > 1,
                            compile=args.compile)
        except ValueError as err:
            _fail(str(err))
        if rank == 0:
            loss = history.valid_loss[-1]
            bpc = loss / math.log(2) * len(valid_ids) / len(valid_text)
            print(f"step {history.steps[-1]}: validation loss {loss:.4f} nats/token, {bpc:.4f} bits/char "
                  f"({cfg['tokenizer']} tokenizer, V={tokenizer.vocab_size}, {world} process(es)); saved in {out}")
    finally:
        if world > 1:
            torch.distributed.destroy_process_group()


# ---------------------------------------------------------------------------- sample
def load_run(folder, device="cpu") -> tuple[GPT, CharTokenizer | BPETokenizer]:
    """The trained model (in eval mode, on ``device``) and tokenizer of a ``train`` folder."""
    folder = Path(folder)
    if not folder.is_dir():
        _fail(f"--ckpt: the folder {folder} does not exist")
    missing = [name for name in (CONFIG_NAME, TOKENIZER_NAME, CHECKPOINT_NAME) if not (folder / name).exists()]
    if missing:
        _fail(f"--ckpt: {folder} lacks {', '.join(missing)}; it is not a folder written by train")
    config = json.loads((folder / CONFIG_NAME).read_text(encoding="utf-8"))
    if config.get("tokenizer") not in TOKENIZERS:
        _fail(f"{folder / CONFIG_NAME}: unknown tokenizer {config.get('tokenizer')!r}; expected one of "
              f"{sorted(TOKENIZERS)}")
    tokenizer = TOKENIZERS[config["tokenizer"]].load(folder / TOKENIZER_NAME)
    model = GPT(GPTConfig(**config["model"]))
    load_checkpoint(folder / CHECKPOINT_NAME, model, restore_rng=False)  # weights_only: nothing is unpickled
    return model.to(device).eval(), tokenizer


def run_sample(args) -> None:
    model, tokenizer = load_run(args.ckpt, args.device or pick_device())
    ids = tokenizer.encode(args.prompt)
    if not ids:
        _fail("--prompt is empty: give at least one character to continue")
    try:
        out = model.generate(torch.tensor([ids]), args.max_new_tokens, temperature=args.temperature,
                             top_k=args.top_k, top_p=args.top_p,
                             generator=torch.Generator().manual_seed(args.seed))  # (1, T + new)
    except ValueError as err:
        _fail(str(err))
    sys.stdout.write(tokenizer.decode(out[0].tolist()) + "\n")
