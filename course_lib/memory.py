"""Memory arithmetic for the course's GPT: what training and generation keep in memory,
computed from the configuration and checked against what PyTorch actually holds.

Training a model with AdamW keeps four things per parameter (weights, gradients and the
optimizer's two moments: 16 bytes in float32) and, per token of the batch, the activations
autograd saves for the backward pass. Generation keeps the weights and the KV cache.

``activation_bytes`` counts the tensors the course's ``GPT`` saves for backward, in float32
on the CPU without dropout (where PyTorch's attention kernel saves a log-sum-exp per query,
not the T x T attention matrix), per block of N = B * T tokens::

    16 N C floats   the input and output of both LayerNorms (4), q, k, v (3), the attention
                    output (1), the MLP's hidden layer before and after GELU (4 + 4)
    4 N + B nh T    the LayerNorms' means and inverse deviations; attention's log-sum-exp

and once: the final LayerNorm (2 N C + 2 N floats), the log-softmax of the logits (N V
floats), the token ids, targets and positions (int64). ``saved_bytes`` measures the same by
hooking autograd's saved tensors, so the formula can be checked exactly.
"""
from __future__ import annotations

import json
import subprocess
import sys

import torch

from .gpt import GPT, GPTConfig, KVCache

__all__ = ["parameter_count", "training_bytes", "activation_bytes", "kv_cache_bytes", "saved_bytes",
           "kv_cache_measured_bytes", "peak_training_rss", "GPT2_SIZES", "MiB", "GiB"]

MiB, GiB = 2 ** 20, 2 ** 30

# GPT-2's four sizes (Radford et al., 2019): n_layer, n_head, n_embd; vocabulary 50,257, context 1,024
GPT2_SIZES = {
    "gpt2": dict(n_layer=12, n_head=12, n_embd=768),
    "gpt2-medium": dict(n_layer=24, n_head=16, n_embd=1024),
    "gpt2-large": dict(n_layer=36, n_head=20, n_embd=1280),
    "gpt2-xl": dict(n_layer=48, n_head=25, n_embd=1600),
}


def _config(config) -> GPTConfig:
    if isinstance(config, GPT):
        return config.config
    if not isinstance(config, GPTConfig):
        raise TypeError(f"expected a GPTConfig or a GPT, got {type(config).__name__}")
    return config


def parameter_count(config) -> int:
    """Parameters of a ``GPT`` with this configuration, by formula: per block 12 C^2 (attention
    4 C^2, MLP 8 C^2) plus 13 C biases and LayerNorm weights; the tied (V, C) embedding and
    (block_size, C) positions once; the final LayerNorm 2 C. Without biases: 12 C^2 + 2 C."""
    c = _config(config)
    C = c.n_embd
    per_block = 12 * C * C + (13 * C if c.bias else 2 * C)
    return c.n_layer * per_block + c.vocab_size * C + c.block_size * C + (2 * C if c.bias else C)


def training_bytes(config, batch_size: int, seq_len: int, bytes_per_number: int = 4) -> dict[str, int]:
    """What one AdamW training step holds: weights, gradients, the two moments (all in
    ``bytes_per_number``), and the activations (``activation_bytes``, float32)."""
    n = parameter_count(config)
    out = dict(weights=n * bytes_per_number, gradients=n * bytes_per_number,
               optimizer=2 * n * bytes_per_number, activations=activation_bytes(config, batch_size, seq_len))
    out["total"] = sum(out.values())
    return out


def activation_bytes(config, batch_size: int, seq_len: int) -> int:
    """Bytes of the tensors a float32 ``GPT`` saves for backward on one (B, T) batch with
    targets, dropout off, on the CPU (see the module's docstring for the count)."""
    c = _config(config)
    B, T = batch_size, seq_len
    if T > c.block_size:
        raise ValueError(f"seq_len={T} exceeds the block size {c.block_size}")
    N, C, V = B * T, c.n_embd, c.vocab_size
    floats = c.n_layer * (16 * N * C + 4 * N + B * c.n_head * T) + 2 * N * C + 2 * N + N * V
    return 4 * floats + 8 * (N + T + N) + 4  # + ids, positions, targets (int64) and the loss


def kv_cache_bytes(config, batch_size: int, seq_len: int, bytes_per_number: int = 4) -> int:
    """A KV cache of ``seq_len`` positions: keys and values, (B, nh, T, hs) each, per layer:
    2 * n_layer * B * T * C numbers."""
    c = _config(config)
    return 2 * c.n_layer * batch_size * seq_len * c.n_embd * bytes_per_number


def saved_bytes(model, idx: torch.Tensor, targets: torch.Tensor) -> int:
    """Measured: the bytes of the distinct storages autograd saves during ``model(idx, targets)``,
    parameters excluded (they are counted as weights)."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t):
        s = t.untyped_storage()
        if s.data_ptr() not in params:
            seen[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(idx, targets)
    return sum(seen.values())


def kv_cache_measured_bytes(model, idx: torch.Tensor) -> int:
    """Measured: the bytes of the keys and values a ``KVCache`` holds after reading ``idx``
    (their elements; right after one pass they are views into the layer's q|k|v output)."""
    cache = KVCache()
    with torch.no_grad():
        model(idx, cache=cache)
    return sum(t.numel() * t.element_size() for t in cache.keys + cache.values)


_PEAK_SCRIPT = """
import json, resource, sys, torch
from course_lib.gpt import GPT, GPTConfig
torch.set_num_threads(int(sys.argv[4]))


def status(key):  # kB, from /proc/self/status
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key + ":"))


kw, B, T = json.loads(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
x = torch.randint(0, kw["vocab_size"], (B, T))
try:  # reset the peak to the present (Linux >= 4.0), so that the imports' own peak does not count
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before, peak = status("VmRSS"), lambda: status("VmHWM")
except OSError:
    before, peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, lambda: resource.getrusage(
        resource.RUSAGE_SELF).ru_maxrss
model = GPT(GPTConfig(**kw))
opt = torch.optim.AdamW(model.parameters(), lr=1e-4, foreach=bool(int(sys.argv[5])))
for _ in range(2):
    _, loss = model(x, x)
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=False)
print(json.dumps(dict(before=before * 1024, after=peak() * 1024)))
"""


def peak_training_rss(config, batch_size: int, seq_len: int, threads: int = 1, foreach: bool = True,
                      timeout: float = 600) -> int:
    """Measured: how far two AdamW steps of a fresh float32 ``GPT`` with this configuration
    raise the peak resident memory of a new Python process above what it held before
    (Linux's VmHWM after resetting it, else ``ru_maxrss``), in bytes. The process is separate
    so that nothing else it held counts; what the formula leaves out
    (temporary buffers, the allocator's slack, the gradient of the logits) shows as the gap."""
    c = _config(config)
    kw = dict(vocab_size=c.vocab_size, block_size=c.block_size, n_layer=c.n_layer, n_head=c.n_head,
              n_embd=c.n_embd, bias=c.bias)
    out = subprocess.run([sys.executable, "-c", _PEAK_SCRIPT, json.dumps(kw), str(batch_size), str(seq_len),
                          str(threads), str(int(foreach))], capture_output=True, text=True, timeout=timeout)
    if out.returncode:
        raise RuntimeError(f"the measuring process failed:\n{out.stderr[-2000:]}")
    r = json.loads(out.stdout.strip().splitlines()[-1])
    return r["after"] - r["before"]
