"""course_lib.serve: ``decode_batch`` against ``GPT.generate`` (greedy, and seeded sampling alone
and in a batch; prompts of different lengths; rows that end at different steps or are ended
by their client); the HTTP server on 127.0.0.1 (health, answers equal to ``GPT.generate``,
a stream's chunked encoding read byte by byte, UTF-8 characters cut between tokens, HTTP/1.0
streams, concurrent requests decoded as one batch, every error status, a server that
outlives bad clients); the load test; the shipped GPT served. The worker is held still by
a gate in its model's forward pass, so the batches the tests build are the batches the
server forms. Nothing leaves loopback."""

import json
import math
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from course_lib import bert_cli
from course_lib.gpt import GPT, GPTConfig
from course_lib.serve import check_request, decode_batch, load_test, parse_args, percentile, start_server

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: torch on one thread (conftest.py)

ALPHABET = "abcdefghijklmnopqrstuvwxyz .,!?'\n"
BLOCK = 24
LIMITS = dict(max_batch=4, max_wait_ms=2, max_new_tokens_limit=16, max_queue=8, max_body_bytes=2048)


class CharTokenizer:
    """One id per character of ALPHABET; any other character is an error."""

    def encode(self, text):
        unknown = sorted(set(text) - set(ALPHABET))
        if unknown:
            raise ValueError(f"characters outside the alphabet: {unknown}")
        return [ALPHABET.index(c) for c in text]

    def decode(self, ids):
        return "".join(ALPHABET[i] for i in ids)


class Gated(nn.Module):
    """A model whose forward pass waits for ``open``: the test holds the worker still while
    requests queue up, then lets it go. ``entered`` is set once the worker is inside."""

    def __init__(self, model):
        super().__init__()
        self.model, self.open, self.entered = model, threading.Event(), threading.Event()

    def get_block_size(self):
        return self.model.get_block_size()

    def forward(self, *args, **kwargs):
        self.entered.set()
        if not self.open.wait(10):
            raise TimeoutError("the test never opened the gate")
        return self.model(*args, **kwargs)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = GPT(GPTConfig(vocab_size=len(ALPHABET), block_size=BLOCK, n_layer=2, n_head=2, n_embd=16)).eval()
    with torch.no_grad():  # weights off their initialisation: the logits spread out, greedy texts differ
        for p in m.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return m


@pytest.fixture(scope="module")
def tok():
    return CharTokenizer()


@pytest.fixture(scope="module")
def server(model, tok):
    with start_server(model, tok, **LIMITS) as s:
        yield s


def alone(model, tok, prompt, n, **kw):
    """The text ``GPT.generate`` continues ``prompt`` with, the prompt alone in its batch."""
    ids = tok.encode(prompt)
    return tok.decode(model.generate(torch.tensor([ids]), n, **kw)[0, len(ids):].tolist())


def seeded(seed):
    return torch.Generator().manual_seed(seed)


def request(url, payload=None, data=None, method="POST", timeout=20):
    """``(status, answer, headers)``; the answer parsed from JSON, a stream as its list of lines."""
    body = data if data is not None else None if payload is None else json.dumps(payload).encode()
    req = urllib.request.Request(url, data=body, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            status, raw, headers = r.status, r.read(), r.headers
    except urllib.error.HTTPError as e:
        status, raw, headers = e.code, e.read(), e.headers
    if headers.get("Content-Type") == "application/x-ndjson":
        return status, [json.loads(line) for line in raw.decode().splitlines()], headers
    return status, json.loads(raw), headers


def in_threads(url, payloads):
    """POST each payload to /generate from its own thread: (threads, results filled in as they end)."""
    results = [None] * len(payloads)

    def go(i):
        results[i] = request(url + "/generate", payloads[i])

    threads = [threading.Thread(target=go, args=(i,)) for i in range(len(payloads))]
    for t in threads:
        t.start()
    return threads, results


def wait_until(condition, timeout=10):
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, "timed out waiting"
        time.sleep(0.001)


def batched(model, tok, payloads, first=None):
    """The answers to ``payloads`` decoded by the server as one batch (after ``first`` alone, which
    holds the worker at the gate until all of them wait in the queue), and the server's stats."""
    gated = Gated(model)
    first = first or dict(prompt="a", max_new_tokens=2, temperature=0)
    with start_server(gated, tok, max_batch=len(payloads), max_wait_ms=0, max_new_tokens_limit=64) as s:
        threads, results = in_threads(s.url, [first])
        assert gated.entered.wait(10)
        more, results2 = in_threads(s.url, payloads)
        wait_until(lambda: s.stats()["queued"] == len(payloads))
        gated.open.set()
        for t in threads + more:
            t.join(20)
        stats = s.stats()
    assert stats["batches"] == 2 and stats["max_batch_size"] == len(payloads), stats
    assert results[0][0] == 200, results[0]
    return results2, stats


# ---------------------------------------------------------------------------- decode_batch against GPT.generate
PROMPTS = ["to be", "a", "the quick brown fox", "what?"]
NEW = [6, 12, 5, 9]


def test_greedy_batch_of_different_lengths_equals_generate(model, tok):
    out = decode_batch(model, [tok.encode(p) for p in PROMPTS], NEW, [0.0] * 4)
    for p, n, tokens in zip(PROMPTS, NEW, out):
        assert len(tokens) == n
        assert tok.decode(tokens) == alone(model, tok, p, n, top_k=1), p


def test_rows_longer_together_than_the_block(model, tok):
    """20 + 2 and 2 + 20 tokens: the batch spans 20 + 19 columns > block 24; once the long prompt's
    row ends, its padding columns leave the cache and the other row goes on exactly."""
    prompts = ["the quick brown fox!", "ab"]
    out = decode_batch(model, [tok.encode(p) for p in prompts], [2, 20], [0.0, 0.0])
    assert [tok.decode(t) for t in out] == [alone(model, tok, "the quick brown fox!", 2, top_k=1),
                                           alone(model, tok, "ab", 20, top_k=1)]


def test_seeded_sampling_is_the_same_alone_and_in_a_batch(model, tok):
    temps, seeds = [0.8, 1.5, 0.0, 1.0], [7, 8, 9, 7]
    together = decode_batch(model, [tok.encode(p) for p in PROMPTS], NEW, temps, [seeded(s) for s in seeds])
    for p, n, t, s, tokens in zip(PROMPTS, NEW, temps, seeds, together):
        by_itself = decode_batch(model, [tok.encode(p)], [n], [t], [seeded(s)])[0]
        assert tokens == by_itself, p
        reference = alone(model, tok, p, n, top_k=1) if t == 0 else alone(model, tok, p, n, temperature=t,
                                                                          generator=seeded(s))
        assert tok.decode(tokens) == reference, p
    assert together[0] != decode_batch(model, [tok.encode(PROMPTS[0])], [NEW[0]], [0.8], [seeded(1)])[0]


def test_rows_end_independently_and_on_request(model, tok):
    """Row 0 wants 2 tokens, row 2's client leaves after 3: neither is called again, row 1 goes on unchanged."""
    calls = []

    def on_token(row, token):
        calls.append(row)
        return not (row == 2 and calls.count(2) == 3)

    prompts = ["to be", "a", "what?"]
    out = decode_batch(model, [tok.encode(p) for p in prompts], [2, 8, 8], [0.0] * 3, on_token=on_token)
    assert [len(t) for t in out] == [2, 8, 3]
    assert calls == [0, 1, 2, 0, 1, 2, 1, 2] + [1] * 5  # step by step: the rows still in the batch
    assert tok.decode(out[1]) == alone(model, tok, "a", 8, top_k=1)


def test_decode_batch_errors(model, tok):
    with pytest.raises(ValueError, match="one max_new_tokens, temperature and generator per prompt"):
        decode_batch(model, [[1], [2]], [3], [0.0, 0.0])
    with pytest.raises(ValueError, match="max_new_tokens must be an integer > 0"):
        decode_batch(model, [[1]], [0], [0.0])
    with pytest.raises(ValueError, match=r"a prompt of 1 to block_size - max_new_tokens = 20 tokens, got 21"):
        decode_batch(model, [[1] * 21], [4], [0.0])
    with pytest.raises(TypeError, match="expected a language model"):
        decode_batch(object(), [[1]], [1], [0.0])


# ---------------------------------------------------------------------------- checking a request
def test_request_defaults(tok):
    assert check_request({"prompt": "ab"}, tok, 64, 256) == dict(ids=[0, 1], max_new_tokens=32, temperature=1.0,
                                                                 seed=None, stream=False)


# each: (the body sent, as JSON or as raw bytes; the status; a regex of the error)
BAD = [
    (b"{not json", 400, "invalid JSON"),
    (b"\xff\xfe", 400, "invalid JSON"),
    (b"", 400, "invalid JSON"),
    (b'{"prompt": "ab", "temperature": NaN}', 400, "temperature must be a finite number >= 0"),
    ([1, 2], 400, "expected a JSON object with fields"),
    ({}, 400, "missing field 'prompt'"),
    ({"prompt": ""}, 400, "prompt is empty"),
    ({"prompt": 5}, 400, "prompt must be a string, got int"),
    ({"prompt": "ABC"}, 400, r"the tokenizer cannot encode the prompt: characters outside the alphabet: \['A'"),
    ({"prompt": "a" * 20, "max_new_tokens": 8}, 400, r"the prompt has 20 tokens and max_new_tokens=8: 20 \+ 8 > "
     r"block_size=24; shorten the prompt to 16 tokens or ask for at most 4 new tokens"),
    ({"prompt": "a" * 24, "max_new_tokens": 1}, 400, "shorten the prompt to 23 tokens"),
    *[({"prompt": "ab", "max_new_tokens": n}, 400, rf"max_new_tokens must be an integer from 1 to 16, got {g}")
      for n, g in [(0, "0"), (-3, "-3"), ("4", "'4'"), (2.5, "2.5"), (True, "True"), (17, "17")]],
    *[({"prompt": "ab", "temperature": t}, 400, rf"temperature must be a finite number >= 0 \(0: greedy\), got {g}")
      for t, g in [(-0.5, "-0.5"), ("hot", "'hot'"), (True, "True"), (None, "None")]],
    *[({"prompt": "ab", "seed": s}, 400, rf"seed must be an integer from 0 to 2\*\*63 - 1, got {g}")
      for s, g in [(-1, "-1"), ("7", "'7'"), (1.5, "1.5"), (2**63, str(2**63))]],
    ({"prompt": "ab", "stream": "yes"}, 400, "stream must be true or false, got 'yes'"),
    ({"prompt": "ab", "top_k": 5, "n": 2}, 400, r"unknown fields \['n', 'top_k'\]; the fields are prompt \(str\)"),
    (b" " * 3000, 413, "the body has 3000 bytes; the limit is 2048"),
]


@pytest.mark.parametrize("body, status, match", BAD, ids=[f"{i}-{s}" for i, (_, s, _) in enumerate(BAD)])
def test_bad_requests_get_a_clear_error_and_the_server_goes_on(server, body, status, match):
    kw = dict(data=body) if isinstance(body, bytes) else dict(payload=body)
    got, answer, headers = request(server.url + "/generate", **kw)
    assert (got, list(answer)) == (status, ["error"]), answer
    assert headers["Content-Type"] == "application/json"
    assert re.search(match, answer["error"]), answer["error"]
    assert request(server.url + "/health", method="GET")[1]["status"] == "ok"


@pytest.mark.parametrize("method, path, status, match", [
    ("GET", "/generate", 405, "/generate takes POST, not GET"),
    ("PUT", "/generate", 405, "/generate takes POST, not PUT"),
    ("POST", "/health", 405, "/health takes GET, not POST"),
    ("DELETE", "/health", 405, "/health takes GET, not DELETE"),
    ("GET", "/nope", 404, "no such path '/nope': GET /health or POST /generate"),
    ("POST", "/v1/completions", 404, "no such path '/v1/completions'"),
])
def test_wrong_paths_and_methods(server, method, path, status, match):
    data = json.dumps({"prompt": "ab"}).encode() if method in ("POST", "PUT") else None
    got, answer, headers = request(server.url + path, data=data, method=method)
    assert got == status and match in answer["error"], answer
    if status == 405:
        assert headers["Allow"] == ("POST" if path == "/generate" else "GET")


def raw_http(server, payload: bytes, read=True):
    """Send bytes as they are to the server; what it answers, up to its closing the connection."""
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(payload)
        chunks = []
        while read:
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks)


def test_missing_content_length_garbage_and_broken_clients(server, model, tok):
    answer = raw_http(server, b"POST /generate HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400") and b"Content-Length header" in answer, answer
    assert raw_http(server, b"GARBAGE\r\n\r\n"), "the library answers nonsense (with an HTTP/0.9 error page)"
    assert raw_http(server, b"\x16\x03\x01 / HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 501")  # a TLS hello
    raw_http(server, b"POST /generate HTTP/1.1\r\nContent-Length: 50\r\n\r\n{\"pro", read=False)  # and gone
    host, port = server.url.removeprefix("http://").split(":")
    body = json.dumps({"prompt": "to be", "max_new_tokens": 16, "temperature": 0, "stream": True}).encode()
    with socket.create_connection((host, int(port)), timeout=10) as sock:  # a stream whose client leaves
        sock.sendall(b"POST /generate HTTP/1.1\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        assert sock.recv(12) == b"HTTP/1.1 200"
    status, answer, _ = request(server.url + "/generate", {"prompt": "to be", "max_new_tokens": 5, "temperature": 0})
    assert status == 200 and answer["text"] == alone(model, tok, "to be", 5, top_k=1)
    assert server.stats()["errors"] == 0


# ---------------------------------------------------------------------------- answers over HTTP
def test_health(server, model):
    status, answer, _ = request(server.url + "/health", method="GET")
    assert status == 200 and answer["status"] == "ok"
    assert answer["model"]["parameters"] == model.num_parameters() and answer["model"]["block_size"] == BLOCK
    assert answer["model"]["config"]["n_layer"] == 2 and answer["model"]["class"] == "GPT"
    assert answer["limits"]["max_batch"] == 4 and answer["limits"]["max_new_tokens"] == 16
    assert {"requests", "batches", "mean_batch_size", "tokens", "queued", "rejected"} <= set(answer["stats"])


def test_greedy_answer_equals_generate(server, model, tok):
    status, answer, _ = request(server.url + "/generate", {"prompt": "what is", "max_new_tokens": 10,
                                                          "temperature": 0})
    assert status == 200 and set(answer) == {"text", "tokens", "seconds"}
    assert answer["tokens"] == 10 and answer["seconds"] > 0
    assert answer["text"] == alone(model, tok, "what is", 10, top_k=1)


def test_stream_is_chunked_one_line_per_token(server, model, tok):
    """The answer read off the socket: HTTP/1.1 chunks (hex length, CRLF, data, CRLF), the 0-chunk last."""
    body = json.dumps({"prompt": "to be", "max_new_tokens": 7, "temperature": 0, "stream": True}).encode()
    raw = raw_http(server, b"POST /generate HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s"
                   % (len(body), body))
    head, _, rest = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert b"Transfer-Encoding: chunked" in head and b"Content-Type: application/x-ndjson" in head, head
    lines = []
    while True:
        size, _, rest = rest.partition(b"\r\n")
        n = int(size, 16)
        if n == 0:
            assert rest == b"\r\n", "the last chunk is empty and ends the body"
            break
        assert rest[n:n + 2] == b"\r\n", "each chunk's data ends with CRLF"
        lines.append(rest[:n])
        rest = rest[n + 2:]
    assert all(line.endswith(b"\n") and line.count(b"\n") == 1 for line in lines), "one JSON line per chunk"
    lines = [json.loads(line) for line in lines]
    expected = alone(model, tok, "to be", 7, top_k=1)
    assert len(lines) == 8 and all(set(line) == {"token"} for line in lines[:7])
    assert "".join(line["token"] for line in lines[:7]) == expected
    assert lines[-1] == {"done": True, "tokens": 7, "text": expected}


def test_a_stream_to_an_http_10_client_is_unframed_lines(server, model, tok):
    body = json.dumps({"prompt": "to be", "max_new_tokens": 4, "temperature": 0, "stream": True}).encode()
    raw = raw_http(server, b"POST /generate HTTP/1.0\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
    head, _, rest = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"chunked" not in head and b"Connection: close" in head, head
    lines = [json.loads(line) for line in rest.decode().splitlines()]
    assert lines[-1] == {"done": True, "tokens": 4, "text": alone(model, tok, "to be", 4, top_k=1)}


class ByteTokenizer:
    """One token per byte, decoded as UTF-8 with U+FFFD for what is cut or invalid (a byte-level BPE's way)."""

    def encode(self, text):
        return list(text.encode())

    def decode(self, ids):
        return bytes(ids).decode("utf-8", errors="replace")


class Scripted(nn.Module):
    """A model that writes the bytes of ``script`` after a one-token prompt, whatever it reads: at
    each step the next byte's logit is 1, every other 0. It counts what a row has read from the mask."""

    def __init__(self, script: bytes):
        super().__init__()
        self.script, self.weight = list(script), nn.Parameter(torch.zeros(1))

    def get_block_size(self):
        return 64

    def forward(self, idx, targets=None, cache=None, attention_mask=None):
        read = attention_mask.sum(dim=1)  # (B,) the tokens each row has read, the prompt's one among them
        logits = torch.zeros(*idx.shape, 256)  # (B, T, V)
        for b in range(idx.shape[0]):
            logits[b, -1, self.script[read[b] - 1]] = 1.0
        return logits, None


def test_a_byte_stream_holds_back_cut_characters():
    """é and ö are 2 bytes in UTF-8, € is 3: their first bytes stream as "", the last one brings the character."""
    text = "hé wörld €!"
    with start_server(Scripted(text.encode()), ByteTokenizer()) as s:
        status, lines, _ = request(s.url + "/generate", dict(prompt="x", max_new_tokens=15, temperature=0,
                                                            stream=True))
    assert status == 200 and lines[-1] == {"done": True, "tokens": 15, "text": text}
    assert [line["token"] for line in lines[:-1]] == ["h", "", "é", " ", "w", "", "ö", "r", "l", "d", " ", "", "",
                                                      "€", "!"]
    with start_server(Scripted(text.encode()), ByteTokenizer()) as s:  # cut off inside the €: shown as it is
        status, lines, _ = request(s.url + "/generate", dict(prompt="x", max_new_tokens=13, temperature=0,
                                                            stream=True))
    assert lines[-2]["token"] == "\ufffd" and lines[-1]["text"] == "hé wörld \ufffd"


def test_concurrent_requests_are_one_batch_and_each_equals_generate(model, tok):
    """Prompts of different lengths, different max_new_tokens, a stream among them that ends first."""
    payloads = [dict(prompt=p, max_new_tokens=n, temperature=0) for p, n in zip(PROMPTS, NEW)]
    payloads.append(dict(prompt="or not", max_new_tokens=3, temperature=0, stream=True))
    results, stats = batched(model, tok, payloads)
    for payload, (status, answer, _) in zip(payloads[:4], results):
        assert status == 200, answer
        assert answer["text"] == alone(model, tok, payload["prompt"], payload["max_new_tokens"], top_k=1)
        assert answer["tokens"] == payload["max_new_tokens"]
    status, lines, _ = results[4]
    assert status == 200 and len(lines) == 4 and lines[-1]["done"] and lines[-1]["tokens"] == 3
    assert lines[-1]["text"] == "".join(line["token"] for line in lines[:3]) == alone(model, tok, "or not", 3, top_k=1)
    assert stats["requests"] == 6 and stats["tokens"] == 2 + sum(NEW) + 3
    assert stats["steps"] == 2 + max(NEW) and stats["mean_batch_size"] == 3.0


def test_a_seed_gives_the_same_text_alone_and_in_a_batch(server, model, tok):
    mine = dict(prompt="to be", max_new_tokens=10, temperature=0.9, seed=7)
    status, by_itself, _ = request(server.url + "/generate", mine)
    assert status == 200
    assert by_itself["text"] == alone(model, tok, "to be", 10, temperature=0.9, generator=seeded(7))
    others = [dict(prompt="the quick brown", max_new_tokens=4, temperature=1.2, seed=7),
              dict(prompt="a", max_new_tokens=12, temperature=0)]
    results, _ = batched(model, tok, [others[0], mine, others[1]])
    assert results[1][1]["text"] == by_itself["text"]
    _, other_seed, _ = request(server.url + "/generate", {**mine, "seed": 8})
    assert other_seed["text"] != by_itself["text"]


def test_a_full_queue_gets_503(model, tok):
    gated = Gated(model)
    with start_server(gated, tok, max_batch=1, max_queue=1) as s:
        first, r1 = in_threads(s.url, [dict(prompt="ab", max_new_tokens=3, temperature=0)])
        assert gated.entered.wait(10)  # the worker holds the first request
        second, r2 = in_threads(s.url, [dict(prompt="cd", max_new_tokens=3, temperature=0)])
        wait_until(lambda: s.stats()["queued"] == 1)  # the second waits in the queue
        status, answer, headers = request(s.url + "/generate", dict(prompt="ef", max_new_tokens=3))
        assert status == 503 and "the queue is full (1 requests wait)" in answer["error"]
        assert headers["Retry-After"] == "1"
        gated.open.set()
        for t in first + second:
            t.join(20)
        assert r1[0][0] == r2[0][0] == 200
        assert s.stats()["rejected"] == 1


def test_a_failing_model_answers_500_and_the_server_goes_on(model, tok):
    gated = Gated(model)
    with start_server(gated, tok) as s:
        gated.open.set()

        def broken(*args, **kwargs):
            raise RuntimeError("out of memory")

        gated.forward = broken
        status, answer, _ = request(s.url + "/generate", dict(prompt="ab", max_new_tokens=3))
        assert status == 500 and answer["error"] == "generation failed: RuntimeError: out of memory"
        del gated.forward
        assert request(s.url + "/generate", dict(prompt="ab", max_new_tokens=3))[0] == 200
        assert s.stats()["errors"] == 1


def test_close_stops_serving(model, tok):
    with start_server(model, tok) as s:
        assert request(s.url + "/health", method="GET")[0] == 200
    s.close()  # a second close does nothing
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(s.url + "/health", timeout=2)


def test_start_server_errors(model, tok):
    with pytest.raises(ValueError, match="max_batch must be an integer > 0"):
        start_server(model, tok, max_batch=0)
    with pytest.raises(ValueError, match="max_wait_ms must be a number >= 0"):
        start_server(model, tok, max_wait_ms=-1)
    with pytest.raises(TypeError, match="expected a language model"):
        start_server(object(), tok)


def test_the_command_line_serves_a_checkpoint_folder(tmp_path):
    """python -m course_lib.serve --port 0 --model FOLDER: it prints its URL, answers, and stops on Ctrl-C."""
    try:
        _, bpe = bert_cli.load_shipped("cpu", kind="gpt")
    except FileNotFoundError as e:
        pytest.skip(str(e))
    torch.manual_seed(0)
    small = GPT(GPTConfig(vocab_size=len(bpe.vocab), block_size=32, n_layer=1, n_head=2, n_embd=16)).eval()
    bert_cli.save_pretrained(tmp_path, small, bpe)
    proc = subprocess.Popen([sys.executable, "-m", "course_lib.serve", "--port", "0", "--model", str(tmp_path),
                             "--threads", "1", "--quiet"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        line = proc.stdout.readline()
        url = re.search(r"at (http://127\.0\.0\.1:\d+):", line)
        assert url, line + proc.stderr.read() if proc.poll() is not None else line
        status, health, _ = request(url[1] + "/health", method="GET")
        assert status == 200 and health["model"]["parameters"] == small.num_parameters()
        status, answer, _ = request(url[1] + "/generate", dict(prompt="ROMEO:", max_new_tokens=5, temperature=0))
        assert status == 200 and answer["text"] == alone(small, bpe, "ROMEO:", 5, top_k=1)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            _, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
            pytest.fail(f"the server did not stop within 60 s of Ctrl-C; stderr:\n{err[-3000:]}")
    assert proc.returncode == 0, err


def test_command_line_flags():
    args = parse_args([])
    assert (args.port, args.max_batch, args.model, args.host) == (8000, 8, None, "127.0.0.1")
    for bad in (["--max-batch", "0"], ["--port", "70000"]):
        with pytest.raises(SystemExit):
            parse_args(bad)


# ---------------------------------------------------------------------------- the load test
def test_percentile_by_hand():
    assert [percentile([4, 1, 3, 2], q) for q in (25, 50, 95, 100)] == [1, 2, 4, 4]
    assert math.isnan(percentile([], 50))


@pytest.mark.parametrize("stream", [False, True])
def test_load_test_counts_every_request(server, stream):
    report = load_test(server.url, clients=4, requests_per_client=3, prompts=["to be", "a"], max_new_tokens=6,
                       stream=stream)
    assert (report.requests, report.succeeded, report.failed, report.lost) == (12, 12, 0, 0), report.errors
    assert report.tokens == 72 and report.tokens_per_second > 0 and report.seconds > 0
    assert 0 < report.p50_ms <= report.p95_ms
    assert 1 <= report.mean_batch_size <= 4 and report.errors == []


def test_many_clients_connecting_at_once_wait_for_no_retry(model, tok):
    """16 connections at the same instant: with socketserver's listen backlog of 5 some SYNs are
    dropped and their clients retry after 1 s; the server's backlog takes them all at once."""
    with start_server(model, tok, max_queue=16) as s:
        report = load_test(s.url, clients=16, requests_per_client=1, prompts=["a"], max_new_tokens=2)
    assert report.succeeded == 16, report.errors
    assert report.seconds < 0.9, f"{report.seconds:.2f} s: a connection waited for its retry"


def test_load_test_reports_failures(server):
    report = load_test(server.url, clients=2, requests_per_client=2, prompts=["a" * 20], max_new_tokens=8)
    assert (report.requests, report.succeeded, report.failed, report.lost, report.tokens) == (4, 0, 4, 0, 0)
    assert report.errors and report.errors[0].startswith("HTTP 400") and math.isnan(report.p50_ms)


# ---------------------------------------------------------------------------- the shipped GPT
def test_the_shipped_gpt_served_batched_equals_generate():
    try:
        model, tok = bert_cli.load_shipped("cpu", kind="gpt")
    except FileNotFoundError as e:
        pytest.skip(str(e))
    prompts = ["ROMEO:", "To be, or not to be, that is", "O"]
    payloads = [dict(prompt=p, max_new_tokens=n, temperature=0) for p, n in zip(prompts, [12, 6, 16])]
    results, _ = batched(model, tok, payloads)
    for payload, (status, answer, _) in zip(payloads, results):
        assert status == 200
        assert answer["text"] == alone(model, tok, payload["prompt"], payload["max_new_tokens"], top_k=1)
