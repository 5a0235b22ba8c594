"""Speed of the shipped GPT made small or fast (course_lib.compress, course_lib.speculative)
against the plain float32 model, on the CPU: both sides and their ratio.

- **quantized**: ``quantize_model`` int8 per row and int4 in groups of 32 (weights stored as
  integers, dequantized in ``forward``) and PyTorch's dynamic int8 (``quantize_dynamic``),
  each against float32: greedy generation of ``--new-tokens`` tokens (batch 1, KV cache)
  and one forward pass over a batch of ``--batch-size`` windows of the block.
- **speculative**: ``speculative_generate`` with a 4-gram draft (chapter 1's Kneser-Ney
  model over the BPE ids of the training plays) at k = 2, 4, 8, greedy, against
  ``GPT.generate(top_k=1)``; the tokens must be the same.

Each pair is timed in turns (warm-up runs first; the side that goes first alternates), the
table gives each side's median and the ratio float32 / other (above 1: the other side is
faster). Nothing is asserted about speed.

    python benchmarks/bench_compress.py              # 15 repeats
    python benchmarks/bench_compress.py --quick      # a smoke test: few repeats, few tokens
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
import warnings

import torch
import torch.nn as nn

from course_lib import bert_cli
from course_lib.compress import quantize_model
from course_lib.data import load_split
from course_lib.genre import dialogue
from course_lib.speculative import NGramDraft, speculative_generate

PROMPT_TEXT = "JULIET:\nO Romeo, Romeo!"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--batch-size", type=int, default=32, help="B of the forward pass")
    parser.add_argument("--new-tokens", type=int, help="greedy tokens generated (default: up to the block)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed runs per side first")
    parser.add_argument("--repeats", type=int, default=15, help="timed repeats per side")
    parser.add_argument("--train-chars", type=int, help="characters of the training plays the 4-gram counts")
    parser.add_argument("--quick", action="store_true", help="a smoke test: 2 repeats, 8 tokens, a small 4-gram")
    args = parser.parse_args(argv)
    if args.quick:
        args.batch_size, args.new_tokens, args.warmup, args.repeats = 4, 8, 1, 2
        args.train_chars = args.train_chars or 50_000
    for name in ("threads", "batch_size", "repeats"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.warmup < 0:
        parser.error("--warmup must be >= 0")
    if args.new_tokens is not None and args.new_tokens < 1:
        parser.error("--new-tokens must be >= 1")
    return args


def time_both(fns: dict, warmup: int, repeats: int) -> dict:
    """Median seconds of each of two functions, timed in turns; the first to run alternates."""
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    times = {name: [] for name in names}
    for i in range(repeats):
        for name in (names if i % 2 == 0 else names[::-1]):
            t0 = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(t) for name, t in times.items()}


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    model, tok = bert_cli.load_shipped("cpu", kind="gpt")
    prompt = tok.encode(PROMPT_TEXT)
    block = model.get_block_size()
    n_new = args.new_tokens or block - len(prompt)
    if len(prompt) + n_new > block:
        sys.exit(f"prompt ({len(prompt)} tokens) + --new-tokens ({n_new}) exceed the block of {block}")
    x = torch.tensor([prompt])
    g = torch.Generator().manual_seed(0)
    batch = torch.randint(0, model.config.vocab_size, (args.batch_size, block), generator=g)
    print(f"torch {torch.__version__}, python {sys.version.split()[0]}, threads {args.threads}")
    print(f"model: the shipped GPT, {model.num_parameters():,} parameters (vocab {model.config.vocab_size}, "
          f"block {block}); {n_new} greedy tokens after a {len(prompt)}-token prompt; forward B={args.batch_size}")
    with warnings.catch_warnings():  # torch.ao.quantization is deprecated in favour of torchao
        warnings.simplefilter("ignore")
        torch_int8 = torch.ao.quantization.quantize_dynamic(
            copy.deepcopy(model), {n for n, m in model.named_modules() if isinstance(m, nn.Linear) and n != "lm_head"},
            dtype=torch.qint8)
    others = {"int8 (QuantLinear)": quantize_model(model, 8), "int4 g32 (QuantLinear)": quantize_model(model, 4, 32),
              "int8 (PyTorch dynamic)": torch_int8}
    print(f"{'task':<32} {'float32 ms':>11} {'other ms':>11} {'float32 / other':>16}")
    with torch.no_grad():
        for name, m in others.items():
            for task, f32, other in [(f"generate, {name}", lambda: model.generate(x, n_new, top_k=1),
                                      lambda m=m: m.generate(x, n_new, top_k=1)),
                                     (f"forward, {name}", lambda: model(batch), lambda m=m: m(batch))]:
                t = time_both({"float32": f32, "other": other}, args.warmup, args.repeats)
                print(f"{task:<32} {1000 * t['float32']:>11.2f} {1000 * t['other']:>11.2f} "
                      f"{t['float32'] / t['other']:>15.2f}x")
    text = "\n\n".join(dialogue(p.text) for p in load_split("train"))
    ids = tok.encode(text[:args.train_chars] if args.train_chars else text)
    draft = NGramDraft.fit([ids], model.config.vocab_size, order=4)
    want = model.generate(x, n_new, top_k=1)[0].tolist()
    print(f"{'speculative, 4-gram draft':<32} {'plain ms':>11} {'spec. ms':>11} {'plain / spec.':>16} "
          f"{'acceptance':>11} {'same tokens':>12}")
    for k in (2, 4, 8):
        out = {}

        def spec(k=k, out=out):
            out["ids"], out["stats"] = speculative_generate(model, draft, prompt, n_new, k=k, temperature=0)

        t = time_both({"plain": lambda: model.generate(x, n_new, top_k=1), "spec": spec}, args.warmup, args.repeats)
        same = "yes" if out["ids"] == want else "NO"
        print(f"{f'k={k}':<32} {1000 * t['plain']:>11.2f} {1000 * t['spec']:>11.2f} "
              f"{t['plain'] / t['spec']:>15.2f}x {out['stats'].acceptance_rate:>11.2f} {same:>12}")


if __name__ == "__main__":
    main()
