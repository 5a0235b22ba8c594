"""Serving the course's GPT over HTTP: a request queue and batched decoding (after chapter 7).

Chapter 7's ``GPT.generate`` continues one batch of prompts that all have one length.
A server meets requests one at a time, at any moment, with prompts of any length. This
module answers them with the standard library's ``http.server.ThreadingHTTPServer``:

- each request is read and checked in its own thread, then put in a bounded **queue**;
- one **worker** thread owns the model. It takes up to ``max_batch`` waiting requests
  (once the first has come it waits at most ``max_wait_ms`` for more) and decodes them
  together with ``decode_batch``: one forward pass of the batch per new token, a ``KVCache``;
- prompts of different lengths are **padded on the left** (``GPT.forward``'s
  ``attention_mask``): every row's newest token sits in the last column, and each row
  computes what it computes alone;
- rows finish independently (each has its own ``max_new_tokens``): a finished row is
  answered at once and leaves the batch, its cached keys and values with it;
- each row samples with its own ``torch.Generator``, so a seed gives the same text alone
  or in a batch: ``GPT.generate(prompt, n, temperature, generator=torch.Generator().manual_seed(seed))``'s
  text. Temperature 0 is greedy decoding, ``GPT.generate(prompt, n, top_k=1)``.

Why batch: a forward pass of 8 rows costs little more than one of 1 row, because at this
size decoding spends its time reading the weights and in per-pass overhead, not in
arithmetic; so tokens per second grow with the batch while each request waits a little.
``load_test`` measures it over real HTTP, ``benchmarks/bench_serve.py`` runs it.

    server = start_server(model, tokenizer)           # port 0: a free port; server.url
    POST server.url + "/generate"  {"prompt": "ROMEO:", "max_new_tokens": 8, "temperature": 0}
      -> {"text": "...", "tokens": 8, "seconds": ...}
    GET server.url + "/health"     -> {"status": "ok", "model": {...}, "stats": {...}}
    python -m course_lib.serve --port 8000            # the shipped GPT; --model FOLDER for another

With ``"stream": true`` the answer comes as it is decoded: HTTP/1.1 chunked transfer
encoding, one JSON line per new token, ``{"token": " I"}``, then ``{"done": true, "tokens":
n, "text": ...}``. A token that ends inside a UTF-8 character streams as "" until the
character is whole; the final ``text`` is the decoded whole. An error after the stream has
begun comes as a last line ``{"error": ...}`` (the status, 200, was sent with the first).
An HTTP/1.0 client gets the same lines unframed, the connection closing at the end.

What this is not: one process on one machine, batches formed once (a request that arrives
while a batch decodes waits for it to end), no authentication, TLS or rate limits. Serving
engines such as vLLM, TGI and llama.cpp add continuous batching (rows join and leave at
every step), a paged KV cache (Kwon et al. 2023), quantized kernels and several GPUs.
"""

from __future__ import annotations

import argparse
import json
import math
import queue
import signal
import threading
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import torch

from .checks import _check_model, _check_positive_int, _eval_mode, _model_device
from .gpt import KVCache
from .sampling import _sample_next

__all__ = ["decode_batch", "check_request", "start_server", "Server", "load_test", "LoadTestReport", "percentile",
           "main"]

FIELDS = {"prompt": "str", "max_new_tokens": "int >= 1", "temperature": "number >= 0 (0: greedy)",
          "seed": "int >= 0", "stream": "true or false"}  # what POST /generate accepts
ROUTES = {"/health": "GET", "/generate": "POST"}
_DRAIN_LIMIT = 1 << 20  # a too-large body up to this size is read and dropped, so the client sees the 413


# ---------------------------------------------------------------------------- decoding a batch
def decode_batch(model, prompts: list[list[int]], max_new_tokens: list[int], temperatures: list[float],
                 generators: list[torch.Generator | None] | None = None, on_token=None) -> list[list[int]]:
    """The new tokens of each prompt, decoded together: one forward pass of the batch per step.

    ``prompts``: B lists of token ids, lengths free (padded on the left, with
    ``attention_mask``); per row, ``max_new_tokens`` (>= 1), a temperature (0: greedy, the
    argmax) and a CPU ``torch.Generator`` that draws that row's samples. ``on_token(row,
    token)`` is called for each new token; returning False ends that row (its client left).
    A row that ends leaves the batch, and the columns of padding no remaining row needs
    are cut off the cache. ``decode_batch(model, [[5, 2, 7], [4]], [2, 3], [0, 0])`` gives
    the same two lists as ``model.generate`` with ``top_k=1`` on each prompt alone.
    """
    block_size = _check_model(model)
    B = len(prompts)
    generators = [None] * B if generators is None else list(generators)
    if not B or not len(max_new_tokens) == len(temperatures) == len(generators) == B:
        raise ValueError(f"expected one max_new_tokens, temperature and generator per prompt (B={B}), got "
                         f"{len(max_new_tokens)}, {len(temperatures)} and {len(generators)}")
    for p, n in zip(prompts, max_new_tokens):
        _check_positive_int("max_new_tokens", n)
        if not p or len(p) + n > block_size:
            raise ValueError(f"expected a prompt of 1 to block_size - max_new_tokens = {block_size - n} tokens, "
                             f"got {len(p)}")
    device = _model_device(model)
    L = max(len(p) for p in prompts)
    idx = torch.zeros(B, L, dtype=torch.long)  # (B, L) left-padded with token 0, never attended to
    mask = torch.zeros(B, L, dtype=torch.bool)  # (B, L) True on real tokens
    for b, p in enumerate(prompts):
        idx[b, L - len(p):] = torch.tensor(p)
        mask[b, L - len(p):] = True
    idx, mask = idx.to(device), mask.to(device)
    out: list[list[int]] = [[] for _ in range(B)]
    rows = list(range(B))  # the prompt each row of the batch holds
    cache = KVCache()
    with _eval_mode(model):
        logits, _ = model(idx, cache=cache, attention_mask=mask)  # (B, L, V)
        while True:
            last = logits[:, -1].float()  # (B, V) the next token's logits, every row
            greedy = last.argmax(dim=-1).tolist()
            keep = []
            for i, r in enumerate(rows):
                t = temperatures[r]
                token = greedy[i] if t == 0 else _sample_next(last[i:i + 1, None], t, None, generators[r]).item()
                out[r].append(token)
                going = on_token is None or on_token(r, token) is not False
                if going and len(out[r]) < max_new_tokens[r]:
                    keep.append(i)
            if not keep:
                return out
            if len(keep) < len(rows):  # finished rows leave, with their keys and values
                mask = mask[keep]
                start = int(mask.any(dim=0).long().argmax())  # the first column a remaining row uses
                mask = mask[:, start:]
                cache.keys = [k[keep, :, start:] for k in cache.keys]  # (B', nh, P', hs)
                cache.values = [v[keep, :, start:] for v in cache.values]
            rows = [rows[i] for i in keep]
            new = torch.tensor([[out[r][-1]] for r in rows], device=device)  # (B', 1)
            mask = torch.cat([mask, torch.ones(len(rows), 1, dtype=torch.bool, device=device)], dim=1)
            logits, _ = model(new, cache=cache, attention_mask=mask)  # (B', 1, V)


# ---------------------------------------------------------------------------- requests
def check_request(payload, tokenizer, block_size: int, max_new_tokens_limit: int) -> dict:
    """The settings of a POST /generate body, checked: a dict with the prompt's token ``ids``
    and ``max_new_tokens`` (default 32, or the limit if lower), ``temperature`` (default 1),
    ``seed`` (None: a random one) and ``stream`` (default false). A ValueError says what was
    wrong: ``{"prompt": ""}`` -> "prompt is empty: ..."."""
    if not isinstance(payload, dict):
        raise ValueError(f"expected a JSON object with fields {sorted(FIELDS)}, got {type(payload).__name__}")
    unknown = sorted(set(payload) - set(FIELDS))
    if unknown:
        known = ", ".join(f"{k} ({v})" for k, v in FIELDS.items())
        raise ValueError(f"unknown fields {unknown}; the fields are {known}")
    if "prompt" not in payload:
        raise ValueError("missing field 'prompt': the text to continue")
    prompt = payload["prompt"]
    if not isinstance(prompt, str):
        raise ValueError(f"prompt must be a string, got {type(prompt).__name__}")
    if not prompt:
        raise ValueError("prompt is empty: give at least one character to continue")
    n = payload.get("max_new_tokens", min(32, max_new_tokens_limit))
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= max_new_tokens_limit:
        raise ValueError(f"max_new_tokens must be an integer from 1 to {max_new_tokens_limit}, got {n!r}")
    t = payload.get("temperature", 1.0)
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or t < 0:
        raise ValueError(f"temperature must be a finite number >= 0 (0: greedy), got {t!r}")
    seed = payload.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63):
        raise ValueError(f"seed must be an integer from 0 to 2**63 - 1, got {seed!r}")
    stream = payload.get("stream", False)
    if not isinstance(stream, bool):
        raise ValueError(f"stream must be true or false, got {stream!r}")
    try:
        ids = list(tokenizer.encode(prompt))
    except (ValueError, KeyError) as e:
        raise ValueError(f"the tokenizer cannot encode the prompt: {e}") from None
    if not ids:
        raise ValueError("the prompt encodes to no tokens: give some text to continue")
    if len(ids) + n > block_size:
        raise ValueError(f"the prompt has {len(ids)} tokens and max_new_tokens={n}: {len(ids)} + {n} > "
                         f"block_size={block_size}; shorten the prompt to {max(block_size - n, 0)} tokens or "
                         f"ask for at most {max(block_size - len(ids), 0)} new tokens")
    return dict(ids=ids, max_new_tokens=n, temperature=float(t), seed=seed, stream=stream)


class _Job:
    """One request in the queue. The worker appends its new ``tokens`` and answers through
    ``events``: ("token", id) for each (a stream's only: a thread woken per token slows the
    worker), then ("done", None), or ("error", (status, message))."""

    def __init__(self, ids, max_new_tokens, temperature, seed, stream):
        self.ids, self.max_new_tokens, self.temperature, self.stream = ids, max_new_tokens, temperature, stream
        self.generator = torch.Generator()  # this request's own draws, whatever else is in its batch
        if seed is None:
            self.generator.seed()  # a random seed
        else:
            self.generator.manual_seed(seed)
        self.events: queue.Queue = queue.Queue()
        self.tokens: list[int] = []  # the new tokens so far
        self.cancelled = False  # the client left
        self.start = time.perf_counter()


class _Worker(threading.Thread):
    """The one thread that runs the model: forms batches from the queue and decodes them."""

    def __init__(self, model, max_batch: int, max_wait_ms: float, max_queue: int):
        super().__init__(name="course_lib.serve worker", daemon=True)
        self.model, self.max_batch, self.max_wait = model, max_batch, max_wait_ms / 1000
        self.jobs: queue.Queue = queue.Queue(maxsize=max_queue)
        self.stopping = threading.Event()
        self.lock = threading.Lock()
        self.counts = dict(requests=0, batches=0, max_batch_size=0, tokens=0, steps=0, rejected=0, errors=0)

    def submit(self, job: _Job) -> bool:
        try:
            self.jobs.put_nowait(job)
            return True
        except queue.Full:
            with self.lock:
                self.counts["rejected"] += 1
            return False

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                batch = [self.jobs.get(timeout=0.05)]
            except queue.Empty:
                continue
            deadline = time.monotonic() + self.max_wait
            while len(batch) < self.max_batch:
                try:
                    batch.append(self.jobs.get(timeout=max(deadline - time.monotonic(), 0)))
                except queue.Empty:
                    break
            batch = [job for job in batch if not job.cancelled]
            if batch:
                self.decode(batch)
        while True:  # stopped: answer what still waits
            try:
                self.jobs.get_nowait().events.put(("error", (503, "the server is shutting down")))
            except queue.Empty:
                break

    def decode(self, batch: list[_Job]) -> None:
        """Decode one batch and answer its jobs. The counters move before a client hears back,
        so a /health read after an answer counts that answer's batch."""
        with self.lock:
            c = self.counts
            c["requests"] += len(batch)
            c["batches"] += 1
            c["max_batch_size"] = max(c["max_batch_size"], len(batch))
        steps = [0]  # the batch's decoding steps so far

        def on_token(row: int, token: int) -> bool:
            job = batch[row]
            job.tokens.append(token)
            with self.lock:
                c["tokens"] += 1
                if len(job.tokens) > steps[0]:  # the first row to get its k-th token starts step k
                    steps[0] += 1
                    c["steps"] += 1
            if job.stream:
                job.events.put(("token", token))
            if len(job.tokens) == job.max_new_tokens:
                job.events.put(("done", None))
            return not (job.cancelled or self.stopping.is_set())

        failure = None
        try:
            decode_batch(self.model, [j.ids for j in batch], [j.max_new_tokens for j in batch],
                         [j.temperature for j in batch], [j.generator for j in batch], on_token)
        except Exception as e:  # noqa: BLE001 - a failed batch is answered with an error; the server goes on
            failure = (500, f"generation failed: {type(e).__name__}: {e}")
            with self.lock:
                c["errors"] += 1
        for job in batch:
            if len(job.tokens) < job.max_new_tokens:
                job.events.put(("error", failure or (503, "the server is shutting down")))

    def stats(self) -> dict:
        with self.lock:
            c = dict(self.counts)
        c["mean_batch_size"] = c["requests"] / c["batches"] if c["batches"] else 0.0
        c["mean_rows_per_step"] = c["tokens"] / c["steps"] if c["steps"] else 0.0
        c["queued"] = self.jobs.qsize()
        return c


# ---------------------------------------------------------------------------- HTTP
class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # chunked transfer encoding for the streams
    server_version = "course_lib.serve"
    timeout = 30  # seconds a client may take to send its request
    disable_nagle_algorithm = True  # TCP_NODELAY: a small answer leaves at once, not after the client's delayed ACK

    def log_message(self, format, *args) -> None:
        if self.server.app.log:
            super().log_message(format, *args)

    def _route(self) -> None:
        method = self.command  # GET, POST, ...
        try:
            path = self.path.split("?", 1)[0]
            if path not in ROUTES:
                return self._error(404, f"no such path {path!r}: GET /health or POST /generate")
            if method != ROUTES[path]:
                return self._error(405, f"{path} takes {ROUTES[path]}, not {method}", Allow=ROUTES[path])
            if path == "/health":
                return self._json(200, self.server.app.health())
            self._generate()
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            self.close_connection = True
        except Exception as e:  # noqa: BLE001 - an answer, not a dead thread
            self._error(500, f"{type(e).__name__}: {e}")

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _route  # a wrong method gets 405, not the library's 501

    def _json(self, status: int, obj: dict, **headers) -> None:
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in headers.items():
            self.send_header(name.replace("_", "-"), value)
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, message: str, **headers) -> None:
        self.close_connection = True  # whatever the body held, the connection starts no new request
        self._json(status, {"error": message}, Connection="close", **headers)

    def _generate(self) -> None:
        app = self.server.app
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            return self._error(400, f"expected a JSON body with a Content-Length header, got Content-Length {length!r}")
        n = int(length)
        if n > app.max_body_bytes:
            if n <= _DRAIN_LIMIT:
                self.rfile.read(n)
            return self._error(413, f"the body has {n} bytes; the limit is {app.max_body_bytes}")
        try:
            payload = json.loads(self.rfile.read(n))
        except ValueError as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            return self._error(400, f"invalid JSON: {e}")
        try:
            settings = check_request(payload, app.tokenizer, app.block_size, app.max_new_tokens_limit)
        except ValueError as e:
            return self._error(400, str(e))
        job = _Job(**settings)
        if not app.worker.submit(job):
            return self._error(503, f"the queue is full ({app.worker.jobs.maxsize} requests wait): try again soon",
                               Retry_After="1")
        (self._stream if job.stream else self._answer)(job)

    def _answer(self, job: _Job) -> None:
        kind, value = job.events.get()
        if kind != "done":
            return self._error(*value)
        text = self.server.app.tokenizer.decode(job.tokens)
        self._json(200, {"text": text, "tokens": len(job.tokens), "seconds": round(time.perf_counter() - job.start, 6)})

    def _stream(self, job: _Job) -> None:
        decode = self.server.app.tokenizer.decode
        self.chunked = self.request_version != "HTTP/1.0"  # HTTP/1.0 knows no chunks: lines, then close
        self.send_response(200)
        self.send_header("Content-Type", "application/x-ndjson")
        if self.chunked:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.send_header("Cache-Control", "no-cache")
        self.end_headers()
        tokens, shown = [], ""
        try:
            while True:
                kind, value = job.events.get()
                if kind == "token":
                    tokens.append(value)
                    text = decode(tokens)
                    whole = text if len(tokens) == job.max_new_tokens else text.rstrip("\ufffd")  # a cut character
                    piece = whole[len(shown):] if whole.startswith(shown) else ""
                    shown += piece
                    self._chunk({"token": piece})
                elif kind == "done":
                    self._chunk({"done": True, "tokens": len(tokens), "text": decode(tokens)})
                    break
                else:
                    self._chunk({"error": value[1]})
                    break
            if self.chunked:
                self.wfile.write(b"0\r\n\r\n")  # the last chunk: the stream ends
        except (BrokenPipeError, ConnectionResetError, TimeoutError):  # the client left: its row stops
            job.cancelled = True
            self.close_connection = True

    def _chunk(self, obj: dict) -> None:
        """One chunk of HTTP/1.1 chunked encoding: its length in hex, CRLF, the bytes, CRLF."""
        data = (json.dumps(obj) + "\n").encode()
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data) if self.chunked else data)
        self.wfile.flush()


class _HTTPServer(ThreadingHTTPServer):
    """A thread per connection (daemon threads). The listen backlog is 128, not socketserver's 5:
    with a backlog of 5 the sixth of many clients connecting at once has its SYN dropped and
    waits a second for the retry."""
    request_queue_size = 128


class Server:
    """A running server: ``url``, ``stats()`` (the worker's counters), ``close()``; as a
    context manager it closes on exit. ``start_server`` makes one."""

    def __init__(self, model, tokenizer, host, port, max_batch, max_wait_ms, max_new_tokens_limit, max_queue,
                 max_body_bytes, log):
        self.block_size = _check_model(model)
        self.model, self.tokenizer = model.eval(), tokenizer
        self.max_batch, self.max_wait_ms, self.max_queue = max_batch, max_wait_ms, max_queue
        self.max_new_tokens_limit, self.max_body_bytes, self.log = max_new_tokens_limit, max_body_bytes, log
        self.worker = _Worker(model, max_batch, max_wait_ms, max_queue)
        self._httpd = _HTTPServer((host, port), _Handler)
        self._httpd.app = self
        host, port = self._httpd.server_address[:2]
        self.url = f"http://{host}:{port}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs=dict(poll_interval=0.05),
                                        name="course_lib.serve http", daemon=True)
        self.worker.start()
        self._thread.start()
        self._closed = False

    def stats(self) -> dict:
        """requests, batches, mean_batch_size (requests per batch), max_batch_size, tokens,
        steps (decoding steps, each one new token for every row still in its batch),
        mean_rows_per_step, rejected (503), errors (failed batches), queued (waiting now)."""
        return self.worker.stats()

    def health(self) -> dict:
        config = getattr(self.model, "config", None)
        model = {"class": type(self.model).__name__, "parameters": sum(p.numel() for p in self.model.parameters()),
                 "block_size": self.block_size, "device": str(_model_device(self.model))}
        if config is not None and hasattr(config, "__dataclass_fields__"):
            model["config"] = asdict(config)
        limits = dict(max_batch=self.max_batch, max_wait_ms=self.max_wait_ms, max_queue=self.max_queue,
                      max_new_tokens=self.max_new_tokens_limit, max_body_bytes=self.max_body_bytes)
        return {"status": "ok", "model": model, "limits": limits, "stats": self.stats()}

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.worker.stopping.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self.worker.join(timeout=10)
        self._thread.join(timeout=10)

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def start_server(model, tokenizer, host: str = "127.0.0.1", port: int = 0, *, max_batch: int = 8,
                 max_wait_ms: float = 10.0, max_new_tokens_limit: int = 256, max_queue: int = 64,
                 max_body_bytes: int = 65_536, log: bool = False) -> Server:
    """Serve ``model`` (a GPT, put in eval mode) and ``tokenizer`` (``encode(str) -> ids``,
    ``decode(ids) -> str``) on ``host:port`` from background threads (port 0: a free one);
    returns the ``Server``.

    ``max_batch`` requests at most are decoded together (1: no batching); the worker waits
    ``max_wait_ms`` at most for them once the first has come. ``max_new_tokens_limit`` caps a
    request's ``max_new_tokens``; ``max_queue`` requests may wait (more get 503);
    ``max_body_bytes`` bounds a request's body (larger: 413). ``log``: one line per request on stderr.
    """
    for name, value in (("max_batch", max_batch), ("max_new_tokens_limit", max_new_tokens_limit),
                        ("max_queue", max_queue), ("max_body_bytes", max_body_bytes)):
        _check_positive_int(name, value)
    if isinstance(max_wait_ms, bool) or not isinstance(max_wait_ms, (int, float)) or not max_wait_ms >= 0:
        raise ValueError(f"max_wait_ms must be a number >= 0, got {max_wait_ms!r}")
    return Server(model, tokenizer, host, port, max_batch, max_wait_ms, max_new_tokens_limit, max_queue,
                  max_body_bytes, log)


# ---------------------------------------------------------------------------- the load test
def percentile(values, q: float) -> float:
    """The nearest-rank percentile: the smallest value with at least q% of the values at or
    below it. ``percentile([4, 1, 3, 2], 50) -> 2``; ``percentile([4, 1, 3, 2], 95) -> 4``."""
    ordered = sorted(values)
    if not ordered:
        return math.nan
    return ordered[max(math.ceil(q / 100 * len(ordered)) - 1, 0)]


@dataclass
class LoadTestReport:
    """What ``load_test`` measured; latencies in milliseconds, from sending a request to its last byte."""
    clients: int  # concurrent HTTP clients
    requests: int  # requests sent
    succeeded: int  # answered 200 with every token asked for
    failed: int  # answered with an error status (4xx, 5xx)
    lost: int  # no whole answer: a broken connection, a timeout, a short answer
    tokens: int  # new tokens in the answers
    seconds: float  # wall-clock time of the whole test
    tokens_per_second: float
    p50_ms: float
    p95_ms: float
    mean_batch_size: float  # requests per batch the server formed during the test
    latencies_ms: list[float] = field(default_factory=list)  # of the requests that succeeded, in order of ending
    errors: list[str] = field(default_factory=list)  # the first few problems, for the reader


def _get_json(url: str, timeout: float) -> dict:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read())


def load_test(url: str, clients: int = 8, requests_per_client: int = 4, prompts=("ROMEO:",),
              max_new_tokens: int = 32, temperature: float = 0.0, stream: bool = False,
              timeout: float = 120.0) -> LoadTestReport:
    """``clients`` threads, each sending ``requests_per_client`` POST /generate one after the
    other (urllib, real HTTP) to the server at ``url``; client i's request j uses prompt
    ``prompts[(i * requests_per_client + j) % len(prompts)]`` and seed ``1000 * i + j``.
    The server's batch sizes come from its ``/health`` counters before and after."""
    for name, value in (("clients", clients), ("requests_per_client", requests_per_client),
                        ("max_new_tokens", max_new_tokens)):
        _check_positive_int(name, value)
    if isinstance(prompts, str) or not prompts:
        raise ValueError(f"prompts must be a non-empty list of strings, got {prompts!r}")
    before = _get_json(url + "/health", timeout)["stats"]
    latencies, tokens, problems = [], [], []
    counts = dict(succeeded=0, failed=0, lost=0)
    lock = threading.Lock()
    barrier = threading.Barrier(clients)

    def one(i: int, j: int) -> None:
        body = dict(prompt=prompts[(i * requests_per_client + j) % len(prompts)], max_new_tokens=max_new_tokens,
                    temperature=temperature, seed=1000 * i + j, stream=stream)
        request = urllib.request.Request(url + "/generate", data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
        t0 = time.perf_counter()
        outcome, n, problem = "lost", 0, None
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                raw = response.read()
            answer = json.loads(raw.splitlines()[-1] if stream else raw)
            n = answer.get("tokens", 0)
            outcome = "succeeded" if n == max_new_tokens else "lost"
            if outcome == "lost":
                problem = f"a short answer: {answer}"
        except urllib.error.HTTPError as e:
            outcome, problem = "failed", f"HTTP {e.code}: {e.read()[:200]!r}"
        except Exception as e:  # noqa: BLE001 - counted and reported
            problem = f"{type(e).__name__}: {e}"
        seconds = time.perf_counter() - t0
        with lock:
            counts[outcome] += 1
            if outcome == "succeeded":
                latencies.append(seconds * 1000)
                tokens.append(n)
            elif len(problems) < 5:
                problems.append(problem)

    def client(i: int) -> None:
        barrier.wait()
        for j in range(requests_per_client):
            one(i, j)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - t0
    after = _get_json(url + "/health", timeout)["stats"]
    batches = after["batches"] - before["batches"]
    return LoadTestReport(
        clients=clients, requests=clients * requests_per_client, tokens=sum(tokens), seconds=seconds,
        tokens_per_second=sum(tokens) / seconds, p50_ms=percentile(latencies, 50), p95_ms=percentile(latencies, 95),
        latencies_ms=latencies, errors=problems,
        mean_batch_size=(after["requests"] - before["requests"]) / batches if batches else 0.0, **counts)


# ---------------------------------------------------------------------------- command line
def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m course_lib.serve", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on (0: a free one)")
    parser.add_argument("--model", help="a folder written by save_pretrained holding a GPT (default: the shipped one)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--max-batch", type=int, default=8, help="requests decoded together at most (1: no batching)")
    parser.add_argument("--max-wait-ms", type=float, default=10.0, help="how long a batch waits for more requests")
    parser.add_argument("--max-new-tokens", type=int, default=256, help="the largest max_new_tokens a request may ask")
    parser.add_argument("--max-queue", type=int, default=64, help="requests that may wait; more get 503")
    parser.add_argument("--quiet", action="store_true", help="no line per request on stderr")
    args = parser.parse_args(argv)
    for name in ("max_batch", "max_new_tokens", "max_queue"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if not 0 <= args.port < 65536:
        parser.error(f"--port must be 0 to 65535, got {args.port}")
    return args


def main(argv=None) -> None:
    from . import bert_cli  # the checkpoint loaders, only when serving from the command line
    from .gpt import GPT

    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.model:
        model, tokenizer = bert_cli.load_pretrained(args.model, args.device)
        if not isinstance(model, GPT):
            raise SystemExit(f"{args.model} holds a {type(model).__name__}; the server generates with a GPT")
    else:
        model, tokenizer = bert_cli.load_shipped(args.device, kind="gpt")
    server = start_server(model, tokenizer, args.host, args.port, max_batch=args.max_batch,
                          max_wait_ms=args.max_wait_ms, max_new_tokens_limit=args.max_new_tokens,
                          max_queue=args.max_queue, log=not args.quiet)
    print(f"serving a GPT of {model.num_parameters():,} parameters (block {model.get_block_size()}) at {server.url}: "
          "POST /generate, GET /health; Ctrl-C stops", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        while not stop.wait(0.2):  # a wait with a timeout, so that Ctrl-C (SIGINT) is seen at once
            pass
    except KeyboardInterrupt:
        pass
    finally:
        server.close()


if __name__ == "__main__":
    main()
