"""Files, the command line and the shipped checkpoints of chapter 8's BERT.

``course_lib.bert_train`` pre-trains and fine-tunes; this module saves, loads and runs it:

- files: ``save_pretrained`` / ``load_pretrained`` write and read a folder with
  ``config.json`` (the model's config, its kind and what the run recorded),
  ``tokenizer.json`` and the weights, as ``model.safetensors`` (``safetensors``, no code in
  the file) or, where that package is missing, a plain state dict ``model.pt`` read back
  with ``torch.load(weights_only=True)``;
- the command line, which pre-trains and saves the course's small checkpoints::

    python -m course_lib.bert pretrain --out runs/bert                  # the defaults below
    python -m course_lib.bert pretrain --out runs/quick --fast          # a check in seconds
    python -m course_lib.bert pretrain --out runs/bert --resume         # after an interruption
    python -m course_lib.bert pretrain --out runs/gpt --objective causal  # a GPT, same windows

  While it trains, the folder holds ``tokenizer.json``, ``pretrain_run.json`` (the
  settings) and ``checkpoint.pt`` (``train.save_checkpoint``, every ``--checkpoint-every``
  steps): ``--resume`` goes on from there with the saved settings and ends as the
  uninterrupted run would have. The checkpoint is removed once the model is saved.

**The shipped checkpoints.** The course ships two such folders inside the package
(package data, so ``pip install`` from the repository brings them): ``SHIPPED_DIR``
(``course_lib/pretrained/bert_mini``), written by ``SHIPPED_COMMAND`` with the defaults
(``DEFAULTS``; the architecture ``SHIPPED_ARCHITECTURE``), and ``SHIPPED_GPT_DIR``
(``course_lib/pretrained/gpt_mini``), the same command with ``--objective causal``: a GPT
pre-trained on the same windows, chapter 8's decoder to compare with. ``load_shipped``
reads either (or the folder named by the environment variable ``COURSE_BERT_DIR`` or
``COURSE_GPT_DIR``, to try another checkpoint), and ``pretrained_record`` returns what a run recorded (steps,
losses, attention, time, device), so that a chapter reports the checkpoint's own figures.
``course_lib/pretrained/records/`` keeps the record of an earlier checkpoint that never
left the plateau of masked-LM training (chapter 8 draws it).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

from .bert import BertConfig, BertForMaskedLM, BertForSequenceClassification
from .bert_train import Specials, corpus_text, pretrain_causal, pretrain_mlm, train_tokenizer
from .gpt import GPT, GPTConfig
from .runtime import describe_device, pick_device, seed_everything
from .tokenizers import BPETokenizer
from .train import CHECKPOINT_NAME, warmup_cosine, warmup_stable_decay

__all__ = ["save_pretrained", "load_pretrained", "pretrained_record", "SHIPPED_DIR", "SHIPPED_GPT_DIR",
           "SHIPPED_ARCHITECTURE", "SHIPPED_COMMAND", "SHIPPED_GPT_COMMAND", "BERT_DIR_ENV", "GPT_DIR_ENV",
           "shipped_dir", "load_shipped", "DEFAULTS", "schedule_steps",
           "build_parser", "main", "CONFIG_NAME", "TOKENIZER_NAME", "WEIGHTS_NAMES"]

CONFIG_NAME, TOKENIZER_NAME = "config.json", "tokenizer.json"
WEIGHTS_NAMES = ("model.safetensors", "model.pt")  # the first where safetensors is installed
_TIED = ("head.decoder.weight", "lm_head.weight")  # stored once, as the token embedding


# ---------------------------------------------------------------------------- files
_KINDS = {"BertForMaskedLM": BertForMaskedLM, "BertForSequenceClassification": BertForSequenceClassification,
          "GPT": GPT}  # a GPT pretrained like the BERT, on the same windows (--objective causal)


def _safetensors():
    try:
        import safetensors.torch as st
    except ImportError:
        return None
    return st


def save_pretrained(folder, model, tokenizer: BPETokenizer, extra: dict | None = None) -> Path:
    """Write ``model`` (a ``BertForMaskedLM``, ``BertForSequenceClassification`` or ``GPT``) and
    its tokenizer into ``folder``; return the weights' path.

    ``config.json`` holds the model's config (``BertConfig`` or ``GPTConfig``), the kind of model
    (and ``n_classes``) and
    ``extra`` (JSON: settings, measurements); ``tokenizer.json`` the BPE merges. The weights
    go to ``model.safetensors`` if ``safetensors`` is installed, else to ``model.pt``, a plain
    dict of tensors; the tied output matrix is stored once. Neither format runs code when read.
    """
    kind = type(model).__name__
    if kind not in _KINDS:
        raise TypeError(f"expected a BertForMaskedLM, a BertForSequenceClassification or a GPT, got {kind}")
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
    config = (GPTConfig if meta["kind"] == "GPT" else BertConfig)(**meta["model"])
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
# the GPT pre-trained on the same windows with the same settings (chapter 8's decoder baseline)
SHIPPED_GPT_DIR = SHIPPED_DIR.parent / "gpt_mini"
SHIPPED_GPT_COMMAND = SHIPPED_COMMAND.replace("bert_mini", "gpt_mini") + " --objective causal"
GPT_DIR_ENV = "COURSE_GPT_DIR"
_KIND_NAMES = ("bert", "gpt")


def _shipped(kind: str) -> tuple:
    """(environment variable, folder, command, model class) of a shipped checkpoint, read when called."""
    if kind not in _KIND_NAMES:
        raise ValueError(f"kind must be one of {list(_KIND_NAMES)}, got {kind!r}")
    if kind == "bert":
        return BERT_DIR_ENV, SHIPPED_DIR, SHIPPED_COMMAND, BertForMaskedLM
    return GPT_DIR_ENV, SHIPPED_GPT_DIR, SHIPPED_GPT_COMMAND, GPT


def shipped_dir(kind: str = "bert") -> Path:
    """The folder of the course's pre-trained BERT (``kind="bert"``: ``$COURSE_BERT_DIR`` if set,
    else ``SHIPPED_DIR``) or GPT (``kind="gpt"``: ``$COURSE_GPT_DIR``, else ``SHIPPED_GPT_DIR``)."""
    env, folder, _, _ = _shipped(kind)
    return Path(os.environ.get(env) or folder)


def load_shipped(device="cpu", kind: str = "bert"):
    """``(model, tokenizer)``: the course's pre-trained ``BertForMaskedLM`` (``kind="bert"``) or
    ``GPT`` (``kind="gpt"``) from ``shipped_dir(kind)``, and its BPE, the model on ``device`` in
    eval mode. A missing folder is an error that says how to get one."""
    folder = shipped_dir(kind)
    env, _, command, expected = _shipped(kind)
    if not any((folder / name).exists() for name in WEIGHTS_NAMES) or not (folder / CONFIG_NAME).exists():
        where = f"${env} = {folder}" if os.environ.get(env) else f"{folder}, where course_lib ships it"
        raise FileNotFoundError(
            f"the course's pre-trained {kind.upper()} is missing: no {CONFIG_NAME} and model.safetensors in {where}. "
            "Reinstall course_lib from the course's repository (the checkpoint is package data), or pre-train "
            f"one in a clone of the course with `{command}` (minutes to an hour on a CPU), or point "
            f"${env} at a folder written by `python -m course_lib.bert pretrain --out FOLDER`.")
    model, tokenizer = load_pretrained(folder, device)
    if not isinstance(model, expected):
        raise ValueError(f"{folder} holds a {type(model).__name__}, not the pre-trained {expected.__name__}")
    return model, tokenizer


# ---------------------------------------------------------------------------- command line
DEFAULTS = dict(objective="mlm", vocab_size=516, block_size=64, n_layer=3, n_head=4, n_embd=128, norm_first=False,
                dropout=0.0, batch_size=64, mask_prob=0.3, max_steps=2500, lr=2e-3, min_lr=2e-4, schedule="wsd",
                warmup=None, decay_steps=None, weight_decay=0.01, grad_clip=1.0, eval_every=100, eval_batches=10,
                seed=1337, max_chars=None, checkpoint_every=250)
RUN_NAME = "pretrain_run.json"  # the settings of an unfinished run, next to its checkpoint.pt
FAST_CHARS = 5_000  # --fast: the first characters of each play
# the shipped checkpoint's model (tests/test_bert_shipped.py checks it): DEFAULTS' architecture
SHIPPED_ARCHITECTURE = {k: DEFAULTS[k] for k in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd")}


def schedule_steps(settings: dict) -> tuple[int, int | None]:
    """``(warmup_steps, decay_steps)`` of a run's settings, the defaults resolved: the warm-up
    ``min(100, max_steps // 10)``; for the "wsd" schedule the decay ``max_steps // 5``; None
    for a cosine (a record without ``schedule`` is a cosine unless it gave ``decay_steps``)."""
    steps = settings["max_steps"]
    warmup = min(100, steps // 10) if settings.get("warmup") is None else settings["warmup"]
    if settings.get("schedule", "cosine" if settings.get("decay_steps") is None else "wsd") != "wsd":
        return warmup, None
    return warmup, steps // 5 if settings.get("decay_steps") is None else settings["decay_steps"]


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
    p.add_argument("--objective", choices=["mlm", "causal"], help="mlm: a BertForMaskedLM filling blanks; causal: "
                   "a GPT (chapter 7) predicting the next token, on the same windows, tokenizer and settings "
                   f"(default {DEFAULTS['objective']})")
    p.add_argument("--vocab-size", type=int, help=f"BPE vocabulary, 4 special tokens included "
                   f"(default {DEFAULTS['vocab_size']})")
    p.add_argument("--block-size", type=int, help=f"tokens per window, [CLS] and [SEP] included "
                   f"(default {DEFAULTS['block_size']})")
    p.add_argument("--n-layer", type=int, help=f"encoder blocks (default {DEFAULTS['n_layer']})")
    p.add_argument("--n-head", type=int, help=f"attention heads (default {DEFAULTS['n_head']})")
    p.add_argument("--n-embd", type=int, help=f"width, a multiple of --n-head (default {DEFAULTS['n_embd']})")
    p.add_argument("--norm-first", action=argparse.BooleanOptionalAction, help="pre-LN blocks and a final "
                   f"LayerNorm; --no-norm-first: BERT's post-LN (default {DEFAULTS['norm_first']})")
    p.add_argument("--dropout", type=float, help=f"dropout probability (default {DEFAULTS['dropout']})")
    p.add_argument("--mask-prob", type=float, help=f"share of the tokens chosen for prediction "
                   f"(default {DEFAULTS['mask_prob']})")
    p.add_argument("--batch-size", type=int, help=f"windows per step (default {DEFAULTS['batch_size']})")
    p.add_argument("--max-steps", type=int, help=f"optimizer steps (default {DEFAULTS['max_steps']})")
    p.add_argument("--lr", type=float, help=f"peak learning rate (default {DEFAULTS['lr']})")
    p.add_argument("--min-lr", type=float, help=f"learning rate at the end (default {DEFAULTS['min_lr']})")
    p.add_argument("--warmup", type=int, help="warm-up steps (default min(100, max_steps // 10))")
    p.add_argument("--schedule", choices=["wsd", "cosine"], help="after the warm-up, wsd holds the peak rate, then "
                   "decays it linearly to --min-lr over the last --decay-steps (warm-up, stable, decay); cosine "
                   f"decays it from the start (default {DEFAULTS['schedule']})")
    p.add_argument("--decay-steps", type=int, help="wsd only: the steps of the final decay (default max_steps // 5)")
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
        warmup, decay = schedule_steps(cfg)
        causal = cfg.get("objective", "mlm") == "causal"
        arch = dict(vocab_size=cfg["vocab_size"], block_size=cfg["block_size"], n_layer=cfg["n_layer"],
                    n_head=cfg["n_head"], n_embd=cfg["n_embd"], dropout=cfg["dropout"])
        model_config = (GPTConfig(**arch) if causal else
                        BertConfig(**arch, attn_dropout=cfg["dropout"], norm_first=bool(cfg.get("norm_first", False))))
        if decay is None:  # checks the schedule's settings before any work
            warmup_cosine(0, warmup, steps)
        else:
            warmup_stable_decay(0, warmup, steps, decay)
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
        if causal:
            model = GPT(model_config)
            history = pretrain_causal(model, train_ids, valid_ids, steps=steps, batch_size=cfg["batch_size"],
                                      lr=cfg["lr"], min_lr=cfg["min_lr"], warmup_steps=warmup, decay_steps=decay,
                                      weight_decay=cfg["weight_decay"], grad_clip=cfg["grad_clip"],
                                      eval_every=cfg["eval_every"], eval_batches=cfg["eval_batches"],
                                      device=args.device or pick_device(), seed=cfg["seed"],
                                      max_seconds=args.max_seconds, progress=not args.quiet, checkpoint_dir=out,
                                      checkpoint_every=cfg["checkpoint_every"], resume=args.resume)
        else:
            model = BertForMaskedLM(model_config)
            history = pretrain_mlm(model, train_ids, valid_ids, specials=Specials.of(tokenizer), steps=steps,
                                   batch_size=cfg["batch_size"], lr=cfg["lr"], min_lr=cfg["min_lr"],
                                   warmup_steps=warmup, decay_steps=decay, mask_prob=cfg.get("mask_prob", 0.15),
                                   weight_decay=cfg["weight_decay"], grad_clip=cfg["grad_clip"],
                                   eval_every=cfg["eval_every"], eval_batches=cfg["eval_batches"],
                                   device=args.device or pick_device(), seed=cfg["seed"], max_seconds=args.max_seconds,
                                   progress=not args.quiet, checkpoint_dir=out,
                                   checkpoint_every=cfg["checkpoint_every"], resume=args.resume)
    except ValueError as err:
        raise SystemExit(f"error: {err}") from None
    record = {"settings": cfg, "argv": list(sys.argv[1:] if argv is None else argv),
              "device": describe_device(args.device or pick_device()), "torch": torch.__version__,
              "steps": history.steps, "train_loss": history.train_loss,
              "valid_loss": history.valid_loss, **({} if causal else {
                  "valid_accuracy": history.valid_accuracy, "mask_loss": history.mask_loss,
                  "mask_accuracy": history.mask_accuracy, "attention_prev": history.attention_prev,
                  "attention_next": history.attention_next}),
              "train_seconds": history.seconds, "prepare_seconds": prepared,
              ("tokens_seen" if causal else "masked_tokens_seen"): history.tokens_seen,
              "train_tokens": len(train_ids), "parameters": model.num_parameters()}
    path = save_pretrained(out, model.cpu(), tokenizer, extra=record)
    finished = history.steps[-1] == steps
    if finished:  # the checkpoint (with the optimizer's state) is no longer needed
        for name in (CHECKPOINT_NAME, RUN_NAME):
            (out / name).unlink(missing_ok=True)
    size = path.stat().st_size / 2**20
    measured = ("next-token loss" if causal else "MLM loss")
    accuracy = "" if causal else f" (masked-token accuracy {history.valid_accuracy[-1]:.3f})"
    print(f"step {history.steps[-1]}: validation {measured} {history.valid_loss[0]:.3f} -> "
          f"{history.valid_loss[-1]:.3f} nats{accuracy}; {model.num_parameters() / 1e6:.2f}M "
          f"parameters, {size:.1f} MiB in {path}; {history.seconds:.0f} s of training "
          f"(+{prepared:.0f} s for the tokenizer)")
    if not math.isfinite(history.valid_loss[-1]) or history.diverged:
        raise SystemExit("error: the loss diverged: try a lower --lr")
    if not finished:
        print(f"stopped at step {history.steps[-1]} of {steps}: `python -m course_lib.bert pretrain --out {out} "
              f"--resume` goes on from {out / CHECKPOINT_NAME}")


if __name__ == "__main__":
    main()
