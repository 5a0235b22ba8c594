"""Exporting a GPT to ONNX and running it in onnxruntime, without PyTorch's Python (chapter 10).

Chapter 7's ``GPT`` is Python code that calls PyTorch. To serve it from a program in
another language, or on a machine without PyTorch, the computation itself is written down:
an **ONNX** file (Open Neural Network Exchange) holds a graph of standard operators
(``Gather``, ``MatMul``, ``LayerNormalization``, ``Softmax``, ...; opset 20 with torch
2.13) and the weights, in a protobuf, the same bytes for every runtime. Loading one runs no
Python code, unlike a pickled checkpoint. ``onnxruntime`` (C++) executes the graph, fusing
operators and choosing kernels for the machine.

``export_onnx(model, path)`` writes one GPT's full-context forward pass, ids (B, T) int64
-> logits (B, T, V) float32, with B and T left symbolic (1 <= T <= block_size). The
exporter is ``torch.onnx.export(..., dynamo=True)``: ``torch.export`` traces the forward
into a graph of aten operators with symbolic sizes, which onnxscript's function library
translates operator by operator, then folds constants. ``OnnxGPT(path)`` runs the file on
the CPU: ``logits(ids)`` and ``generate(ids, n, ...)``, which reads the last
``block_size`` tokens again at every step, as ``GPT.generate(use_cache=False)`` does.

    >>> import tempfile
    >>> _ = torch.manual_seed(0)
    >>> model = GPT(GPTConfig(vocab_size=10, block_size=8, n_layer=1, n_head=2, n_embd=8))
    >>> folder = tempfile.TemporaryDirectory()
    >>> path = export_onnx(model, Path(folder.name) / "gpt.onnx")
    >>> gpt = OnnxGPT(path, threads=1)
    >>> ids = torch.tensor([[1, 2, 3]])
    >>> gpt.logits(ids).shape, (gpt.logits(ids) - model(ids)[0].detach()).abs().max().item() < 1e-5
    (torch.Size([1, 3, 10]), True)
    >>> folder.cleanup()

Why a wrapper is traced rather than ``GPT.forward`` itself: ``GPT.hidden_states`` checks
that every id lies in 0..V-1 by reading the ids' values (``idx.min() < 0``), a branch on
data that a trace cannot keep (``torch.export`` stops there). ``_FullContextLogits`` calls
the same modules without that check (embeddings, blocks, ``ln_f``, ``lm_head``), and
``OnnxGPT`` checks the ids before they reach the graph. The tests hold its logits to
``GPT.forward``'s within 1e-4.

The legacy TorchScript exporter (``dynamo=False``) also exports this model, but PyTorch
2.9+ deprecates it; the exporter used here needs ``onnx`` and ``onnxscript``, running the
file needs ``onnxruntime`` only.

Scope: float32 logits of the full context, no key-value cache (its growing inputs and
outputs are a graph of their own), no loss, no quantized graph; the weights inside the one
file, so models up to protobuf's 2 GB (GPT-2 small's 124M parameters are 0.5 GB). The
file's metadata records the ``GPTConfig``; node metadata (the exporter's stack traces,
with local paths) is dropped.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import logging
import os
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from .checks import _check_positive_int, _model_device
from .gpt import GPT, GPTConfig
from .sampling import _check_sampling, _sample_next

__all__ = ["export_onnx", "OnnxGPT", "ONNX_INSTALL", "ONNXRUNTIME_INSTALL"]

ONNX_INSTALL = "pip install 'onnx>=1.17' 'onnxscript>=0.6'"  # what export_onnx needs
ONNXRUNTIME_INSTALL = "pip install 'onnxruntime>=1.19'"  # what OnnxGPT needs
META_CONFIG = "course_lib.GPTConfig"  # the file's metadata key for the exported model's config (JSON)
INPUT_NAME, OUTPUT_NAME = "idx", "logits"


class _FullContextLogits(nn.Module):
    """``GPT.forward``'s logits without the loss, the cache or the check of the ids' values:
    idx (B, T) -> logits (B, T, V), T <= block_size. What ``export_onnx`` traces."""

    def __init__(self, gpt: GPT):
        super().__init__()
        self.gpt = gpt

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        g = self.gpt.transformer
        pos = torch.arange(idx.shape[1], device=idx.device)  # (T,) positions 0..T-1
        x = g.drop(g.wte(idx) + g.wpe(pos))  # (B, T, C) + (T, C)
        for block in g.h:
            x = block(x)  # (B, T, C)
        return self.gpt.lm_head(g.ln_f(x))  # (B, T, C) @ (C, V) -> (B, T, V)


def _import(name: str, install: str, purpose: str):
    try:
        return __import__(name)
    except ImportError as e:
        raise ImportError(f"{purpose} needs {name}, which is not installed: {install}") from e


def _check_path(path) -> Path:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"expected path as a str or pathlib.Path, got {type(path).__name__}")
    path = Path(path)
    if path.suffix != ".onnx":
        raise ValueError(f"expected a path ending in .onnx, got {str(path)!r}")
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder; name the file to write, e.g. {path / 'gpt.onnx'}")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"the folder {path.parent} does not exist; create it first "
                                "(Path(...).mkdir(parents=True))")
    return path


@contextlib.contextmanager
def _quiet_exporter():
    """The exporter's notices that are about it, not the model: torchvision's operators it
    skips (not installed), a deprecation inside torch.export, and the count of rewrite rules
    that onnxscript's optimizer prints (0.6.0 does). Errors still raise."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.filterwarnings("ignore", message=r".*LeafSpec.*", category=FutureWarning)
            yield
    finally:
        logger.setLevel(level)


def export_onnx(model: GPT, path, opset_version: int | None = None) -> Path:
    """Write ``model``'s full-context forward to the ONNX file ``path``; returns ``path`` as a Path.

    The graph maps ``idx`` (B, T) int64 to ``logits`` (B, T, V) float32 for any B >= 1 and
    1 <= T <= block_size (the axes are named "B" and "T" in the file); it has no loss and
    no key-value cache. ``opset_version`` None takes the exporter's default (20 in torch
    2.13). The model must have float32 weights; it is traced in eval mode (no dropout) and
    its mode is restored after. The file passes ``onnx.checker`` (checked here) and records the
    ``GPTConfig`` in its metadata, which ``OnnxGPT`` reads.

        export_onnx(model, "gpt.onnx")   # then OnnxGPT("gpt.onnx").logits(ids)
    """
    if not isinstance(model, GPT):
        raise TypeError(f"expected a course_lib.gpt.GPT, got {type(model).__name__}; export_onnx writes a "
                        "GPT's language-model logits (for a GPTForSequenceClassification, export its .gpt)")
    path = _check_path(path)
    dtypes = {p.dtype for p in model.parameters()}
    if dtypes != {torch.float32}:
        raise ValueError(f"export_onnx writes float32 logits, but the model's weights are {sorted(map(str, dtypes))}; "
                         "export model.float()")
    if opset_version is not None:
        _check_positive_int("opset_version", opset_version)
    onnx = _import("onnx", ONNX_INSTALL, "export_onnx")
    _import("onnxscript", ONNX_INSTALL, "torch.onnx.export(dynamo=True)")

    c = model.config
    B, T = 2, min(2, c.block_size)  # the example's sizes; torch.export treats sizes 0 and 1 as constants
    example = torch.zeros(B, T, dtype=torch.long, device=_model_device(model))
    dims = {0: torch.export.Dim("B", min=1)}
    if c.block_size > 1:
        dims[1] = torch.export.Dim("T", min=1, max=c.block_size)
    was_training = model.training
    model.eval()
    try:
        with _quiet_exporter():
            program = torch.onnx.export(_FullContextLogits(model).eval(), (example,), dynamo=True,
                                        input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                                        dynamic_shapes={"idx": dims}, opset_version=opset_version,
                                        optimize=True, verbose=False)
    finally:
        model.train(was_training)

    proto = program.model_proto
    for node in proto.graph.node:
        del node.metadata_props[:]  # stack traces and module names of the exporting process
    for function in proto.functions:
        for node in function.node:
            del node.metadata_props[:]
    proto.graph.doc_string = ("course_lib.gpt.GPT, full-context forward: idx (B, T) int64 -> "
                              "logits (B, T, V) float32, T <= block_size")
    onnx.helper.set_model_props(proto, {META_CONFIG: json.dumps(dataclasses.asdict(c))})
    onnx.checker.check_model(proto)
    onnx.save_model(proto, str(path))
    return path


class OnnxGPT:
    """A GPT exported by ``export_onnx``, run by ``onnxruntime`` on the CPU.

    ``threads``: onnxruntime's intra-op threads (None: ``torch.get_num_threads()``, so
    both sides of a comparison use the same number); operators run one at a time.
    ``logits(idx)`` gives (B, T, V) float32, as a numpy array for a numpy ``idx``, a CPU
    tensor for a tensor. ``generate`` continues each row as ``GPT.generate`` does, without
    a cache: the same tokens for ``top_k=1`` (greedy) and, given the same seeded
    ``torch.Generator``, the same draws from the same logits.

        gpt = OnnxGPT("gpt.onnx", threads=2)
        gpt.generate(np.array([[1, 2, 3]]), 20, top_k=1)   # (1, 23) int64 array
    """

    def __init__(self, path, threads: int | None = None):
        ort = _import("onnxruntime", ONNXRUNTIME_INSTALL, "OnnxGPT")
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"expected path as a str or pathlib.Path, got {type(path).__name__}")
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no ONNX file at {path}; write one with "
                                    "course_lib.export.export_onnx(model, path)")
        self.threads = torch.get_num_threads() if threads is None else _check_positive_int("threads", threads)
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        self.session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
        meta = self.session.get_modelmeta().custom_metadata_map
        if META_CONFIG not in meta:
            raise ValueError(f"{path} has no {META_CONFIG} in its metadata: it was not written by export_onnx, "
                             "so its block size and vocabulary are unknown")
        self.config = GPTConfig(**json.loads(meta[META_CONFIG]))
        self.path = path

    def get_block_size(self) -> int:
        return self.config.block_size

    def _ids(self, idx, whole_context: bool = True) -> np.ndarray:
        """``idx`` as a contiguous (B, T) int64 array; an error unless B >= 1, T >= 1, the ids lie
        in 0..V-1 and, for ``whole_context`` (one forward pass), T <= block_size."""
        c = self.config
        if isinstance(idx, torch.Tensor):
            if idx.dtype.is_floating_point or idx.dtype.is_complex or idx.dtype == torch.bool:
                raise TypeError(f"expected idx to hold integer token ids, got dtype {idx.dtype}")
            idx = idx.detach().cpu().numpy()
        elif isinstance(idx, np.ndarray):
            if idx.dtype == np.bool_ or not np.issubdtype(idx.dtype, np.integer):
                raise TypeError(f"expected idx to hold integer token ids, got dtype {idx.dtype}")
        else:
            raise TypeError(f"expected idx as a numpy array or torch tensor of shape (B, T), got {type(idx).__name__}")
        if idx.ndim != 2 or idx.shape[0] == 0 or idx.shape[1] == 0:
            raise ValueError(f"expected idx of shape (B, T) with B >= 1 and T >= 1, got {tuple(idx.shape)}; "
                             "one sequence is idx[None, :]")
        if whole_context and idx.shape[1] > c.block_size:
            raise ValueError(f"expected idx of shape (B, T) with T <= block_size={c.block_size}, got "
                             f"{tuple(idx.shape)}; keep the last {c.block_size} tokens at most")
        if idx.min() < 0 or idx.max() >= c.vocab_size:
            raise ValueError(f"idx holds ids from {idx.min()} to {idx.max()}; "
                             f"the vocabulary has ids 0..{c.vocab_size - 1}")
        return np.ascontiguousarray(idx, dtype=np.int64)

    def _run(self, ids: np.ndarray) -> np.ndarray:
        return self.session.run([OUTPUT_NAME], {INPUT_NAME: ids})[0]  # (B, T, V) float32

    def logits(self, idx):
        """The logits (B, T, V) float32 of ``idx`` (B, T), 1 <= T <= block_size: numpy in, numpy
        out; a tensor in, a CPU tensor out. ``logits[:, t]`` scores the token after ``idx[:, :t+1]``."""
        out = self._run(self._ids(idx))
        return torch.from_numpy(out) if isinstance(idx, torch.Tensor) else out

    def generate(self, idx, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
                 top_p: float | None = None, generator: torch.Generator | None = None):
        """Continue each row of ``idx`` (B, T) by ``max_new_tokens`` tokens; (B, T + new) int64.

        Every step runs the graph on the last ``block_size`` tokens (no cache) and draws the
        next token from softmax(logits / temperature) at the last position, filtered by
        ``top_k`` then ``top_p`` (``top_k=1`` is greedy), with ``generator``: the sampling
        code of ``GPT.generate``. A numpy prompt gives a numpy array, a tensor a CPU tensor.
        """
        ids = self._ids(idx, whole_context=False)  # a prompt may be longer than the context
        _check_sampling(max_new_tokens, temperature, top_k, top_p)
        for _ in range(max_new_tokens):
            logits = self._run(ids[:, -self.config.block_size:])  # (B, T, V): the context read again
            nxt = _sample_next(torch.from_numpy(logits), temperature, top_k, generator, top_p)  # (B, 1)
            ids = np.concatenate([ids, nxt.numpy()], axis=1)  # (B, T + 1)
        return torch.from_numpy(ids) if isinstance(idx, torch.Tensor) else ids
