"""Training speed of course_lib.gpt.GPT against transformers.GPT2LMHeadModel, same shape.

Both models get the same configuration, the same weights (``GPT.from_hf`` copies the
transformers model's), the same optimizer (``course_lib.train.configure_optimizer``: AdamW,
betas 0.9/0.95, decay 0.1 on the Linear matrices) and the same seeded batches of random
token ids. A timed step is a whole training step: forward with the loss, backward, AdamW
step. Each side is called the way its library is meant to be used: ours as
``model(idx, targets)``, transformers' as ``model(input_ids=x, labels=x, use_cache=False)``
(it shifts the labels itself), with its default attention implementation unless
``--hf-attn`` names one; the output says which it used. Before timing, one forward of
both on the same batch must give the same logits (float32), so the two sides compute
the same function.

Timing: warm-up steps on each side, then ``--rounds`` rounds of ``--steps`` steps per side,
the two sides alternating in the same process (the side that goes first alternates too),
so that noise on the machine affects both alike. The table gives each side's median over
the rounds (tokens/s = batch * block / seconds per step) and the ratio of the medians,
ours / theirs; the target is >= 1.0x on the course shape on a CPU. Nothing is asserted
about speed.

    python benchmarks/bench_gpt.py                    # the course shape on the CPU, 2 threads
    python benchmarks/bench_gpt.py --threads 4 --rounds 9
    python benchmarks/bench_gpt.py --quick            # a tiny shape, 1 thread (a smoke test)
    python benchmarks/bench_gpt.py --device cuda --preset gpt2-124m --bf16 --compile --peak-tflops 989

Shapes (``--preset``): ``course`` is vocab 65, block 256, 4 layers, 4 heads, 128 dims,
batch 16 (the chapter's character-level model); ``gpt2-124m`` is GPT-2 small (vocab 50257,
block 1024, 12 layers, 12 heads, 768 dims, batch 8); ``tiny`` is the smoke-test shape.

On a GPU (``--device cuda``) the table adds each side's model FLOP/s and, given the
accelerator's peak in ``--peak-tflops`` (a number from its datasheet for the dtype used;
the script has no built-in value and prints no MFU without one), its model FLOPs
utilization. The FLOPs of a token are counted as PaLM's appendix B (Chowdhery et al. 2022)
and nanoGPT's ``estimate_mfu``: 6 N for the matmuls of forward and backward, N the
parameters without the position table (the tied ``wte`` counts once, as the output layer),
plus 12 * n_layer * n_embd * T for attention's scores and weighted sum (counted in full,
though causal attention could skip half). ``--bf16`` runs both sides under
``torch.autocast(dtype=torch.bfloat16)``; ``--compile`` wraps both in ``torch.compile``.
The CUDA path was written without a GPU to run it on: on a CPU only the default float32
eager path has been run.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time

import torch

from course_lib.gpt import GPT, GPTConfig
from course_lib.train import configure_optimizer

PRESETS = {  # GPTConfig fields and the batch size of each shape
    "course": dict(vocab_size=65, block_size=256, n_layer=4, n_head=4, n_embd=128, batch_size=16),
    "gpt2-124m": dict(vocab_size=50257, block_size=1024, n_layer=12, n_head=12, n_embd=768, batch_size=8),
    "tiny": dict(vocab_size=65, block_size=32, n_layer=2, n_head=2, n_embd=32, batch_size=4),
}
TARGET_RATIO = 1.0
LOGITS_ATOL = 1e-4  # float32: the two sides order a few sums differently, nothing more


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="course", help="model shape and batch size")
    parser.add_argument("--batch-size", type=int, help="sequences per step (default: the preset's)")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (CPU)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--bf16", action="store_true", help="autocast both sides to bfloat16")
    parser.add_argument("--compile", action="store_true", help="torch.compile both models")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per side first")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds; each times both sides")
    parser.add_argument("--steps", type=int, default=5, help="training steps per side per round")
    parser.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate, both sides")
    parser.add_argument("--hf-attn", help="transformers attn_implementation (default: the library's default)")
    parser.add_argument("--peak-tflops", type=float,
                        help="the device's peak TFLOP/s for the dtype used, for MFU (no default)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights and the batches")
    parser.add_argument("--quick", action="store_true",
                        help="smoke test: --preset tiny, 1 thread, 1 warm-up step, 2 rounds of 2 steps")
    args = parser.parse_args(argv)
    if args.quick:
        args.preset, args.threads, args.warmup, args.rounds, args.steps = "tiny", 1, 1, 2, 2
    for name in ("threads", "rounds", "steps"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.batch_size is not None and args.batch_size < 1:
        parser.error(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.warmup < 0:
        parser.error(f"--warmup must be >= 0, got {args.warmup}")
    if args.peak_tflops is not None and not args.peak_tflops > 0:
        parser.error(f"--peak-tflops must be > 0, got {args.peak_tflops}")
    return args


def flops_per_token(config: GPTConfig, n_params: int) -> int:
    """Training FLOPs per token: 6 N + 12 * n_layer * n_embd * T (forward and backward).

    ``n_params`` is N, the parameters without the position table. For a 1-layer model with
    C=4, T=8 and N=100: 6*100 + 12*1*4*8 = 984.
    """
    return 6 * n_params + 12 * config.n_layer * config.n_embd * config.block_size


def build_models(config: GPTConfig, hf_attn: str | None, seed: int, device: torch.device):
    """transformers' GPT2LMHeadModel at ``config`` (seeded init) and our GPT with its weights."""
    import transformers
    from transformers import GPT2Config, GPT2LMHeadModel

    transformers.logging.set_verbosity_error()  # quiet its notice that GPT2LMHeadModel names no loss type
    kwargs = {} if hf_attn is None else {"attn_implementation": hf_attn}
    hf_config = GPT2Config(vocab_size=config.vocab_size, n_positions=config.block_size, n_layer=config.n_layer,
                           n_head=config.n_head, n_embd=config.n_embd, resid_pdrop=0.0, embd_pdrop=0.0,
                           attn_pdrop=0.0, bos_token_id=config.vocab_size - 1, eos_token_id=config.vocab_size - 1,
                           **kwargs)  # GPT-2's token 50256 lies past a small vocabulary
    torch.manual_seed(seed)
    theirs = GPT2LMHeadModel(hf_config).to(device).train()
    ours = GPT.from_hf(theirs).train()
    assert ours.config == config, f"GPT.from_hf gave {ours.config}, expected {config}"
    return ours, theirs


def check_same_logits(ours, theirs, idx: torch.Tensor) -> float:
    """Max |logits difference| of the two models on one batch; AssertionError above LOGITS_ATOL."""
    with torch.no_grad():
        a, _ = ours(idx)
        b = theirs(input_ids=idx, use_cache=False).logits
    diff = (a - b).abs().max().item()
    assert diff <= LOGITS_ATOL, f"the models differ: max |logits difference| {diff:.2e} > {LOGITS_ATOL:.0e}"
    return diff


def make_step(model, ours: bool, optimizer, autocast):
    """One training step on batch (x, y): forward with the loss, backward, AdamW step."""
    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        with autocast():
            if ours:
                _, loss = model(x, y)
            else:
                loss = model(input_ids=x, labels=x, use_cache=False).loss  # labels shifted inside
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return step


def run_steps(step, batches, n: int, start: int, sync) -> float:
    """Seconds per step over n steps, starting at batch ``start`` of the pool."""
    sync()
    t0 = time.perf_counter()
    for i in range(start, start + n):
        step(*batches[i % len(batches)])
    sync()
    return (time.perf_counter() - t0) / n


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        import transformers
    except ImportError:
        print("transformers is not installed: pip install 'transformers>=4.40' (a test-only dependency)")
        return 2
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("--device cuda: torch sees no CUDA device here")
        return 2
    torch.set_num_threads(args.threads)
    preset = dict(PRESETS[args.preset])
    B = args.batch_size or preset.pop("batch_size")
    preset.pop("batch_size", None)
    config = GPTConfig(**preset, dropout=0.0, bias=True)
    T = config.block_size

    ours, theirs = build_models(config, args.hf_attn, args.seed, device)
    attn = getattr(theirs.config, "_attn_implementation", None) or "unknown"
    gen = torch.Generator().manual_seed(args.seed)
    batches = []
    for _ in range(4):  # a pool of batches; both sides see the same ones in the same order
        data = torch.randint(config.vocab_size, (B, T + 1), generator=gen)
        batches.append((data[:, :T].to(device), data[:, 1:].to(device)))  # (B, T) inputs, (B, T) targets
    diff = check_same_logits(ours, theirs, batches[0][0])

    n_params = ours.num_parameters() - ours.transformer.wpe.weight.numel()
    fpt = flops_per_token(config, n_params)
    dtype = "bfloat16 autocast" if args.bf16 else "float32"
    if args.bf16:
        def autocast():
            return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    else:
        autocast = contextlib.nullcontext
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    models = {"ours": ours, "theirs": theirs}
    if args.compile:
        models = {side: torch.compile(m) for side, m in models.items()}
    steps = {side: make_step(models[side], side == "ours", configure_optimizer(m, args.lr, 0.1), autocast)
             for side, m in (("ours", ours), ("theirs", theirs))}
    names = {"ours": "course_lib GPT", "theirs": "transformers GPT2LMHeadModel"}

    print(f"torch {torch.__version__}, transformers {transformers.__version__}, python {sys.version.split()[0]}")
    print(f"device {device}" + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "")
          + f", threads {torch.get_num_threads()}, {dtype}, {'torch.compile' if args.compile else 'eager'}")
    print(f"shape ({args.preset}): vocab {config.vocab_size}, block {T}, {config.n_layer} layers, "
          f"{config.n_head} heads, {config.n_embd} dims, batch {B} ({B * T:,} tokens/step), "
          f"{ours.num_parameters():,} parameters")
    print(f"transformers attention implementation: {attn}"
          + (" (its default)" if args.hf_attn is None else " (--hf-attn)"))
    print(f"same weights, same batch: max |logits difference| {diff:.1e} (<= {LOGITS_ATOL:.0e})")
    print(f"timing: {args.warmup} warm-up steps per side, then {args.rounds} rounds of {args.steps} steps "
          f"per side, alternating; medians over the rounds")

    order = ["ours", "theirs"]
    for side in order:
        if args.warmup:
            run_steps(steps[side], batches, args.warmup, 0, sync)
    seconds = {side: [] for side in order}
    for r in range(args.rounds):
        for side in (order if r % 2 == 0 else order[::-1]):
            seconds[side].append(run_steps(steps[side], batches, args.steps, args.warmup + r * args.steps, sync))

    per_step = {side: statistics.median(s) for side, s in seconds.items()}
    tok_s = {side: B * T / s for side, s in per_step.items()}
    gpu = device.type == "cuda"
    header = f"{'side':<30} {'tokens/s':>12} {'ms/step':>10}"
    if gpu:
        header += f" {'TFLOP/s':>9}" + (f" {'MFU':>7}" if args.peak_tflops else "")
    print(header)
    for side in order:
        row = f"{names[side]:<30} {tok_s[side]:>12,.0f} {per_step[side] * 1e3:>10.1f}"
        if gpu:
            tflops = fpt * tok_s[side] / 1e12
            row += f" {tflops:>9.1f}" + (f" {tflops / args.peak_tflops:>7.1%}" if args.peak_tflops else "")
        print(row)
    if gpu:
        print(f"model FLOPs per token 6N + 12 L C T = {fpt:,} (N = {n_params:,})"
              + ("" if args.peak_tflops else "; pass --peak-tflops for MFU"))
    ratio = tok_s["ours"] / tok_s["theirs"]
    rounds = [t / o for o, t in zip(seconds["ours"], seconds["theirs"])]
    verdict = "met" if ratio >= TARGET_RATIO else "NOT met"
    print(f"ratio course_lib / transformers (tokens/s): {ratio:.2f}x (target >= {TARGET_RATIO:.1f}x: {verdict}); "
          f"per round {min(rounds):.2f}x to {max(rounds):.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
