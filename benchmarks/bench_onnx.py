"""Inference speed of the shipped GPT in PyTorch against the same GPT exported to ONNX and run
by onnxruntime (course_lib.export), on the CPU, same thread count.

The course's pretrained GPT (``bert_cli.load_shipped(kind="gpt")``: vocabulary 516, block
64, 3 layers, 4 heads, 128 dims) is exported by ``export_onnx`` to a temporary file and
loaded by ``OnnxGPT``. Two tasks, each timed on both sides:

- **forward**: the logits of one batch of seeded random ids, B=32, T=64 (one full block):
  ``model(idx)`` under ``torch.no_grad()`` against ``OnnxGPT.logits``;
- **generate**: B=1, greedy, 56 new tokens after an 8-token prompt (the sequence ends at
  the block size), no key-value cache on either side: ``model.generate(..., top_k=1,
  use_cache=False)`` against ``OnnxGPT.generate(..., top_k=1)``; each step reads the whole
  context again.

For each thread count of ``--threads`` (``torch.set_num_threads`` on one side,
onnxruntime's intra-op threads on the other), warm-up runs on each side, then
``--repeats`` repeats, the two sides alternating (the side that goes first alternates
too) so that noise on the machine affects both alike; the table gives each side's median
and the ratio of the medians, PyTorch / onnxruntime (above 1: onnxruntime is faster).
Before timing, the two sides' logits on the batch are compared (max |difference|) and the
greedy tokens must be the same. The ONNX file's size is printed beside the size of
PyTorch's state dict (``torch.save``). Nothing is asserted about speed.

    python benchmarks/bench_onnx.py                  # threads 2 and 1, 15 repeats
    python benchmarks/bench_onnx.py --threads 4 --repeats 31
    python benchmarks/bench_onnx.py --quick          # B=4, T=16, 8 new tokens, 1 thread (a smoke test)
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from course_lib import bert_cli
from course_lib.export import ONNX_INSTALL, ONNXRUNTIME_INSTALL, OnnxGPT, export_onnx

PROMPT_TEXT = "JULIET:\nO Romeo, Romeo! wherefore art thou Romeo?\nDeny thy father and refuse thy name;\n"
LOGITS_ATOL = 1e-4  # float32: the two runtimes order a few sums differently, nothing more


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[2, 1],
                        help="thread counts to time, each for both sides")
    parser.add_argument("--batch-size", type=int, default=32, help="B of the forward pass")
    parser.add_argument("--seq-len", type=int, help="T of the forward pass (default: the block size)")
    parser.add_argument("--prompt-len", type=int, default=8, help="prompt tokens before generating")
    parser.add_argument("--new-tokens", type=int, default=56, help="greedy tokens generated, B=1")
    parser.add_argument("--warmup", type=int, default=2, help="untimed runs per side and task first")
    parser.add_argument("--repeats", type=int, default=15, help="timed repeats per side and task")
    parser.add_argument("--seed", type=int, default=0, help="seed of the forward batch's ids")
    parser.add_argument("--quick", action="store_true",
                        help="smoke test: B=4, T=16, 8 new tokens, 1 thread, 1 warm-up run, 2 repeats")
    args = parser.parse_args(argv)
    if args.quick:
        args.threads, args.batch_size, args.seq_len, args.new_tokens = [1], 4, 16, 8
        args.warmup, args.repeats = 1, 2
    for name in ("batch_size", "prompt_len", "new_tokens", "repeats"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.seq_len is not None and args.seq_len < 1:
        parser.error(f"--seq-len must be >= 1, got {args.seq_len}")
    if min(args.threads) < 1:
        parser.error(f"--threads must all be >= 1, got {args.threads}")
    if args.warmup < 0:
        parser.error(f"--warmup must be >= 0, got {args.warmup}")
    return args


def state_dict_bytes(model) -> int:
    """The bytes ``torch.save(model.state_dict())`` writes (the tied matrix once: one storage)."""
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getbuffer().nbytes


def seconds(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def time_both(sides: dict, warmup: int, repeats: int) -> dict:
    """Each side's median seconds over ``repeats`` calls, the sides alternating, after warm-up."""
    order = list(sides)
    for fn in sides.values():
        for _ in range(warmup):
            fn()
    times = {side: [] for side in order}
    for r in range(repeats):
        for side in (order if r % 2 == 0 else order[::-1]):
            times[side].append(seconds(sides[side]))
    return {side: statistics.median(t) for side, t in times.items()}


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        import onnx
        import onnxruntime
    except ImportError:
        print(f"this benchmark needs onnx, onnxscript and onnxruntime: {ONNX_INSTALL} and {ONNXRUNTIME_INSTALL}")
        return 2
    model, tok = bert_cli.load_shipped("cpu", kind="gpt")
    c = model.config
    T = c.block_size if args.seq_len is None else args.seq_len
    if T > c.block_size:
        print(f"--seq-len {T} is longer than the model's block size {c.block_size}")
        return 2
    prompt = torch.tensor([tok.encode(PROMPT_TEXT)[:args.prompt_len]])  # (1, prompt_len)
    if prompt.shape[1] < args.prompt_len:
        print(f"the prompt text has {prompt.shape[1]} tokens, fewer than --prompt-len {args.prompt_len}")
        return 2
    idx = torch.randint(c.vocab_size, (args.batch_size, T), generator=torch.Generator().manual_seed(args.seed))
    ids = idx.numpy()

    print(f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__}, onnx {onnx.__version__}, "
          f"python {sys.version.split()[0]}")
    print(f"model: the shipped GPT, {model.num_parameters():,} parameters (vocab {c.vocab_size}, block "
          f"{c.block_size}, {c.n_layer} layers, {c.n_head} heads, {c.n_embd} dims), float32, CPU")
    with tempfile.TemporaryDirectory() as folder:
        t0 = time.perf_counter()
        path = export_onnx(model, Path(folder) / "gpt.onnx")
        export_s = time.perf_counter() - t0
        onnx_bytes = path.stat().st_size
        torch_bytes = state_dict_bytes(model)
        print(f"export: {export_s:.1f} s; ONNX file {onnx_bytes:,} bytes, PyTorch state dict {torch_bytes:,} bytes "
              f"(ratio {onnx_bytes / torch_bytes:.2f}x)")
        sessions = {n: OnnxGPT(path, threads=n) for n in args.threads}  # the file is read here, then not needed

    gpt = sessions[args.threads[0]]
    with torch.no_grad():
        reference = model(idx)[0].numpy()
    diff = float(np.abs(gpt.logits(ids) - reference).max())
    verdict = "ok" if diff <= LOGITS_ATOL else "TOO LARGE"
    print(f"same batch (B={args.batch_size}, T={T}): max |logits difference| {diff:.1e} "
          f"(<= {LOGITS_ATOL:.0e}: {verdict})")
    ours = gpt.generate(prompt, args.new_tokens, top_k=1)
    theirs = model.generate(prompt, args.new_tokens, top_k=1, use_cache=False)
    same = torch.equal(ours, theirs)
    print(f"greedy generation of {args.new_tokens} tokens: {'the same tokens' if same else 'DIFFERENT tokens'} "
          f"on both sides")
    print(f"timing: warm-up runs per side {args.warmup}, then {args.repeats} repeats per side, alternating; medians")

    tasks = {
        f"forward B={args.batch_size} T={T}": (
            lambda: model(idx), lambda gpt: (lambda: gpt.logits(ids))),
        f"generate B=1 {args.new_tokens} tokens": (
            lambda: model.generate(prompt, args.new_tokens, top_k=1, use_cache=False),
            lambda gpt: (lambda: gpt.generate(prompt, args.new_tokens, top_k=1))),
    }
    print(f"{'task':<28} {'threads':>7} {'PyTorch ms':>11} {'onnxruntime ms':>15} {'PyTorch / onnxruntime':>22}")
    before = torch.get_num_threads()
    try:
        for n in args.threads:
            torch.set_num_threads(n)
            for task, (torch_fn, make_ort_fn) in tasks.items():
                with torch.no_grad():
                    median = time_both({"torch": torch_fn, "ort": make_ort_fn(sessions[n])},
                                       args.warmup, args.repeats)
                ratio = median["torch"] / median["ort"]
                print(f"{task:<28} {n:>7} {median['torch'] * 1e3:>11.2f} {median['ort'] * 1e3:>15.2f} "
                      f"{ratio:>21.2f}x")
    finally:
        torch.set_num_threads(before)
    return 0 if same and diff <= LOGITS_ATOL else 1


if __name__ == "__main__":
    sys.exit(main())
