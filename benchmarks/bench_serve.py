"""Throughput of course_lib.serve: the shipped GPT over loopback HTTP, batching on and off.

Two servers (``course_lib.serve.start_server``) serve the same model on 127.0.0.1, one
decoding up to ``--max-batch`` requests together (batching on), one a request at a time
(``max_batch=1``, batching off). ``course_lib.serve.load_test`` sends each of them greedy
requests of ``--new-tokens`` new tokens from 1 client, then from ``--clients`` concurrent
clients, ``--requests`` requests per client, the prompts taking turns (of different lengths,
so batches are padded). Every request must come back whole; a failed or lost one makes the
exit status 1.

Timing: one untimed warm-up load per server, then ``--rounds`` rounds, each running the
four settings (1 or N clients, batching off or on) in turn. The table gives per setting the
median over the rounds of tokens/s (new tokens of all clients together over wall-clock
time), p50 and p95 latency over all its requests (from sending a request to its answer's
last byte, queueing and HTTP included) and the mean number of requests per batch the server
formed; then, per number of clients, the ratio batched / unbatched of tokens/s. Nothing is
asserted about speed. With one client there is nothing to batch (the batched server only
waits ``--max-wait-ms`` for company that never comes); with N clients the batch spreads
each forward pass over N requests.

Clients and servers share this one Python process: client threads, HTTP threads and the
model's worker take turns on the interpreter, so the figures are a lower bound on what a
server alone on the machine would do.

    python benchmarks/bench_serve.py                 # 1 and 8 clients, 8 requests each, 32 new tokens
    python benchmarks/bench_serve.py --clients 16 --max-batch 16 --rounds 5
    python benchmarks/bench_serve.py --quick         # a smoke test: seconds
"""

from __future__ import annotations

import argparse
import statistics
import sys

import torch

from course_lib import bert_cli
from course_lib.serve import load_test, percentile, start_server

PROMPTS = ["ROMEO:", "To be, or not to be, that is the question:", "O", "Now is the winter of our discontent"]


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients of the many-clients setting")
    parser.add_argument("--requests", type=int, default=8, help="requests per client per round")
    parser.add_argument("--new-tokens", type=int, default=32, help="max_new_tokens of each request (greedy)")
    parser.add_argument("--max-batch", type=int, default=8, help="the batched server's max_batch")
    parser.add_argument("--max-wait-ms", type=float, default=10.0, help="how long a batch waits for more requests")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds; each runs every setting once")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--quick", action="store_true",
                        help="smoke test: 4 clients, 2 requests each, 8 new tokens, 1 round")
    args = parser.parse_args(argv)
    if args.quick:
        args.clients, args.requests, args.new_tokens, args.rounds = 4, 2, 8, 1
    for name in ("clients", "requests", "new_tokens", "rounds", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.max_batch < 2:
        parser.error(f"--max-batch must be >= 2 (the unbatched server is max_batch 1), got {args.max_batch}")
    if args.max_wait_ms < 0:
        parser.error(f"--max-wait-ms must be >= 0, got {args.max_wait_ms}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    model, tokenizer = bert_cli.load_shipped(args.device, kind="gpt")
    lengths = [len(tokenizer.encode(p)) for p in PROMPTS]
    block = model.get_block_size()
    if max(lengths) + args.new_tokens > block:
        print(f"--new-tokens {args.new_tokens} does not fit: the longest prompt has {max(lengths)} tokens, "
              f"the block {block}")
        return 2
    settings = [(c, b) for c in sorted({1, args.clients}) for b in (1, args.max_batch)]
    print(f"torch {torch.__version__}, python {sys.version.split()[0]}, device {args.device}, "
          f"threads {torch.get_num_threads()}")
    print(f"model: the shipped GPT, {model.num_parameters():,} parameters, block {block}, "
          f"vocab {model.config.vocab_size}")
    print(f"load: greedy, {args.new_tokens} new tokens per request, {len(PROMPTS)} prompts of {min(lengths)} to "
          f"{max(lengths)} tokens, {args.requests} requests per client, {args.rounds} round"
          f"{'s' if args.rounds > 1 else ''} (medians), "
          f"max_wait_ms {args.max_wait_ms:g}")

    servers = {b: start_server(model, tokenizer, max_batch=b, max_wait_ms=args.max_wait_ms)
               for b in (1, args.max_batch)}
    runs = {s: [] for s in settings}
    try:
        for server in servers.values():  # warm-up: the first forward passes of each batch shape cost more
            load_test(server.url, clients=args.clients, requests_per_client=1, prompts=PROMPTS,
                      max_new_tokens=args.new_tokens)
        for _ in range(args.rounds):
            for clients, b in settings:
                runs[clients, b].append(load_test(servers[b].url, clients=clients, requests_per_client=args.requests,
                                                  prompts=PROMPTS, max_new_tokens=args.new_tokens))
    finally:
        for server in servers.values():
            server.close()

    print(f"{'clients':>7} {'batching':<14} {'tokens/s':>10} {'p50 ms':>8} {'p95 ms':>8} {'mean batch':>10} "
          f"{'requests':>8} {'failed':>6} {'lost':>4}")
    tok_s, bad = {}, 0
    for clients, b in settings:
        reports = runs[clients, b]
        latencies = []
        for r in reports:
            latencies += r.latencies_ms
        tok_s[clients, b] = statistics.median(r.tokens_per_second for r in reports)
        failed, lost = sum(r.failed for r in reports), sum(r.lost for r in reports)
        bad += failed + lost
        label = f"on (max {b})" if b > 1 else "off (max 1)"
        print(f"{clients:>7} {label:<14} {tok_s[clients, b]:>10,.0f} {percentile(latencies, 50):>8.1f} "
              f"{percentile(latencies, 95):>8.1f} {statistics.mean(r.mean_batch_size for r in reports):>10.2f} "
              f"{sum(r.requests for r in reports):>8} {failed:>6} {lost:>4}")
        for r in reports:
            for error in r.errors:
                print(f"  error: {error}")
    for clients in sorted({1, args.clients}):
        ratio = tok_s[clients, args.max_batch] / tok_s[clients, 1]
        print(f"ratio batched / unbatched (tokens/s), {clients} client{'s' if clients > 1 else ''}: {ratio:.2f}x")
    if bad:
        print(f"{bad} requests failed or were lost")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
