"""Making a model small: weight quantization, pruning and distillation's loss.

**Quantization.** Symmetric absmax quantization maps a row (or a group of ``group_size``
numbers of a row) of a weight matrix W (out, in) to integers in [-qmax, qmax],
qmax = 2^(bits-1) - 1, with one float scale per row or group::

    scale = max|w| / qmax        q = round(w / scale)        w ~ q * scale

``quantize`` and ``dequantize`` do that; ``fake_quantize`` is the round trip, for measuring
what a scheme costs without changing how the model runs. ``QuantLinear`` stores the
integers for real (int8 as ``torch.int8``; 4 bits and fewer packed two per byte by
``pack_int4``) with the scales, and dequantizes on the fly in ``forward``;
``quantize_model`` swaps a model's ``nn.Linear`` layers for it. What is saved is memory and
disk; a matmul on dequantized weights is no faster on a CPU (the chapter measures it).

**Pruning.** ``magnitude_prune`` zeroes the smallest weights of each linear layer and
returns the masks (``apply_masks`` keeps them zero while fine-tuning to recover);
``prune_mlp_neurons`` removes whole hidden units of every MLP, so the matrices shrink;
``head_importance`` and ``mask_heads`` score and silence attention heads.

**Distillation.** ``distillation_loss`` mixes the KL divergence from the teacher's
softened distribution with the usual cross-entropy on the text (Hinton et al., 2015).
"""
from __future__ import annotations

import copy
import io
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from .chat import FinetuneHistory
from .train import get_batch, warmup_cosine

__all__ = ["quantize", "dequantize", "fake_quantize", "pack_int4", "unpack_int4", "QuantLinear",
           "quantize_model", "fake_quantize_model", "state_bytes", "magnitude_prune", "apply_masks",
           "sparsity", "prune_mlp_neurons", "head_importance", "mask_heads", "distillation_loss",
           "train_student"]


# ---------------------------------------------------------------------------- quantization
def _check_bits(bits) -> int:
    if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 8:
        raise ValueError(f"bits must be an integer from 2 to 8, got {bits!r}")
    return bits


def _check_weight(w, group_size) -> None:
    if not isinstance(w, torch.Tensor) or w.dim() != 2 or not w.is_floating_point():
        raise ValueError(f"expected a float weight matrix (out, in), got "
                         f"{tuple(w.shape) if isinstance(w, torch.Tensor) else type(w).__name__}")
    if group_size is not None:
        if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
            raise ValueError(f"group_size must be a positive integer or None (one scale per row), got {group_size!r}")
        if w.shape[1] % group_size:
            raise ValueError(f"group_size={group_size} does not divide the {w.shape[1]} inputs of each row")


def quantize(w: torch.Tensor, bits: int = 8, group_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric absmax quantization of ``w`` (out, in) -> (q int8 (out, in), scale (out, groups)).

    One scale per row (``group_size=None``: groups = 1) or per ``group_size`` consecutive
    numbers of a row (groups = in / group_size). q lies in [-qmax, qmax], qmax = 2^(bits-1) - 1,
    so the grid is symmetric about 0 and 0 is exact. A group of zeros gets scale 1.
    """
    bits = _check_bits(bits)
    _check_weight(w, group_size)
    out, n_in = w.shape
    g = n_in if group_size is None else group_size
    qmax = 2 ** (bits - 1) - 1
    wg = w.detach().float().reshape(out, n_in // g, g)  # (out, groups, g)
    scale = wg.abs().amax(dim=2) / qmax  # (out, groups)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = torch.round(wg / scale[:, :, None]).clamp_(-qmax, qmax).to(torch.int8)
    return q.reshape(out, n_in), scale


def dequantize(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """The float matrix (out, in) that ``q`` (out, in) and ``scale`` (out, groups) stand for."""
    out, n_in = q.shape
    groups = scale.shape[1]
    if scale.shape[0] != out or n_in % groups:
        raise ValueError(f"scale {tuple(scale.shape)} does not fit q {tuple(q.shape)}")
    return (q.reshape(out, groups, n_in // groups).float() * scale[:, :, None]).reshape(out, n_in)


def fake_quantize(w: torch.Tensor, bits: int = 8, group_size: int | None = None) -> torch.Tensor:
    """``dequantize(*quantize(w, bits, group_size))`` in ``w``'s dtype: the weights a quantized
    model computes with, kept as floats."""
    return dequantize(*quantize(w, bits, group_size)).to(w.dtype)


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """Two signed 4-bit integers per byte: q (..., n) in [-8, 7], n even -> uint8 (..., n/2).

    Element 2i goes to the low nibble of byte i, element 2i+1 to the high one, each stored
    as q + 8 (0..15)."""
    if q.dtype not in (torch.int8, torch.int16, torch.int32, torch.int64):
        raise ValueError(f"expected integers, got {q.dtype}")
    if q.shape[-1] % 2:
        raise ValueError(f"the last dimension must be even to pack two values per byte, got {q.shape[-1]}")
    if q.numel() and (q.min() < -8 or q.max() > 7):
        raise ValueError(f"4-bit values lie in [-8, 7], got [{int(q.min())}, {int(q.max())}]")
    u = (q.to(torch.int16) + 8).to(torch.uint8)  # (..., n) in 0..15
    return u[..., 0::2] | (u[..., 1::2] << 4)  # (..., n/2)


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """The inverse of ``pack_int4``: uint8 (..., n/2) -> int8 (..., n)."""
    if packed.dtype != torch.uint8:
        raise ValueError(f"expected uint8 bytes, got {packed.dtype}")
    low = (packed & 0x0F).to(torch.int8) - 8
    high = (packed >> 4).to(torch.int8) - 8
    return torch.stack([low, high], dim=-1).reshape(*packed.shape[:-1], 2 * packed.shape[-1])


class QuantLinear(nn.Module):
    """A linear layer whose weight is stored quantized and dequantized in ``forward``.

    ``bits=8``: int8, one byte a weight. ``bits<=4``: packed two a byte (``pack_int4``).
    Scales are float16 (as GPTQ and llama.cpp's formats store them), one per row or per
    ``group_size`` inputs; the bias stays float32. ``weight()`` returns the float matrix.
    """

    def __init__(self, linear: nn.Linear, bits: int = 8, group_size: int | None = None):
        super().__init__()
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"expected an nn.Linear, got {type(linear).__name__}")
        self.bits = _check_bits(bits)
        self.group_size = group_size
        self.in_features, self.out_features = linear.in_features, linear.out_features
        if bits > 4 and bits != 8:
            raise ValueError(f"QuantLinear stores 8 bits, or 4 bits and fewer packed two a byte; got bits={bits}")
        if bits <= 4 and linear.in_features % 2:
            raise ValueError(f"packing needs an even number of inputs, got {linear.in_features}")
        q, scale = quantize(linear.weight, bits, group_size)
        self.register_buffer("qweight", q if bits == 8 else pack_int4(q))  # (out, in) or (out, in/2)
        self.register_buffer("scale", scale.half())  # (out, groups)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone(), requires_grad=False)

    def weight(self) -> torch.Tensor:
        q = self.qweight if self.bits == 8 else unpack_int4(self.qweight)
        return dequantize(q, self.scale.float())  # (out, in)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight().to(x.dtype), None if self.bias is None else self.bias.to(x.dtype))

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bits={self.bits}, "
                f"group_size={self.group_size}")


def _linear_names(model: nn.Module, skip: tuple[str, ...]) -> list[str]:
    return [name for name, m in model.named_modules()
            if isinstance(m, nn.Linear) and not any(name == s or name.endswith("." + s) for s in skip)]


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def quantize_model(model: nn.Module, bits: int = 8, group_size: int | None = None,
                   skip: tuple[str, ...] = ("lm_head",)) -> nn.Module:
    """A copy of ``model`` with every ``nn.Linear`` (except those named in ``skip``) a
    ``QuantLinear``. GPT's ``lm_head`` shares its matrix with the token embedding, which
    stays float, as in most int8 and int4 schemes."""
    qmodel = copy.deepcopy(model).eval()
    names = _linear_names(qmodel, skip)
    if not names:
        raise ValueError("the model has no nn.Linear layer to quantize (outside skip)")
    for name in names:
        _set_module(qmodel, name, QuantLinear(qmodel.get_submodule(name), bits, group_size))
    return qmodel


def fake_quantize_model(model: nn.Module, bits: int = 8, group_size: int | None = None,
                        skip: tuple[str, ...] = ("lm_head",)) -> nn.Module:
    """A copy of ``model`` whose linear weights are replaced by their quantized values, as
    floats: the same numbers as ``quantize_model`` up to the float16 scales, any bits."""
    qmodel = copy.deepcopy(model).eval()
    names = _linear_names(qmodel, skip)
    if not names:
        raise ValueError("the model has no nn.Linear layer to quantize (outside skip)")
    with torch.no_grad():
        for name in names:
            lin = qmodel.get_submodule(name)
            lin.weight.copy_(fake_quantize(lin.weight, bits, group_size))
    return qmodel


def state_bytes(model: nn.Module) -> int:
    """Bytes of the model's state dict as ``torch.save`` writes it (shared tensors once)."""
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.getbuffer().nbytes


# ---------------------------------------------------------------------------- pruning
def _check_fraction(x, name: str) -> float:
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not 0 <= x < 1:
        raise ValueError(f"{name} must be a number in [0, 1), got {x!r}")
    return float(x)


def magnitude_prune(model: nn.Module, amount: float, skip: tuple[str, ...] = ("lm_head",)) -> dict[str, torch.Tensor]:
    """Zero the ``amount`` share of smallest-magnitude weights of each ``nn.Linear`` (in
    place; ties broken by position) and return the masks {layer name: bool (out, in)},
    True where a weight is kept."""
    amount = _check_fraction(amount, "amount")
    masks = {}
    with torch.no_grad():
        for name in _linear_names(model, skip):
            w = model.get_submodule(name).weight
            n_prune = int(round(amount * w.numel()))
            mask = torch.ones_like(w, dtype=torch.bool)
            if n_prune:
                order = w.abs().flatten().argsort(stable=True)
                mask.view(-1)[order[:n_prune]] = False
            w.mul_(mask)
            masks[name] = mask
    return masks


def apply_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    """Zero again the pruned weights (after an optimizer step, during recovery fine-tuning)."""
    with torch.no_grad():
        for name, mask in masks.items():
            model.get_submodule(name).weight.mul_(mask)


def sparsity(model: nn.Module, skip: tuple[str, ...] = ("lm_head",)) -> float:
    """The share of zeros among the weights of the model's linear layers (outside ``skip``)."""
    ws = [model.get_submodule(n).weight for n in _linear_names(model, skip)]
    return sum(int((w == 0).sum()) for w in ws) / sum(w.numel() for w in ws)


def prune_mlp_neurons(model: nn.Module, amount: float) -> nn.Module:
    """A copy of a GPT (chapter 7) whose every MLP keeps only its hidden units with the
    largest ||c_fc row|| * ||c_proj column||, the ``amount`` share removed: the matrices
    shrink from (4C, C) and (C, 4C) to (h, C) and (C, h), so the model is smaller and faster."""
    amount = _check_fraction(amount, "amount")
    pruned = copy.deepcopy(model)
    with torch.no_grad():
        for block in pruned.transformer.h:
            fc, proj = block.mlp.c_fc, block.mlp.c_proj
            score = fc.weight.norm(dim=1) * proj.weight.norm(dim=0)  # (4C,) how much each unit can write
            keep = max(1, fc.out_features - int(round(amount * fc.out_features)))
            idx = score.argsort(descending=True)[:keep].sort().values
            new_fc = nn.Linear(fc.in_features, keep, bias=fc.bias is not None)
            new_proj = nn.Linear(keep, proj.out_features, bias=proj.bias is not None)
            new_fc.weight.copy_(fc.weight[idx])
            if fc.bias is not None:
                new_fc.bias.copy_(fc.bias[idx])
            new_proj.weight.copy_(proj.weight[:, idx])
            if proj.bias is not None:
                new_proj.bias.copy_(proj.bias)
            block.mlp.c_fc, block.mlp.c_proj = new_fc, new_proj
    return pruned


def head_importance(model: nn.Module, batches) -> torch.Tensor:
    """Each attention head's importance (n_layer, n_head): the mean |gradient x output| of a
    gate multiplying the head, the first-order estimate of the loss change if it were removed
    (Michel et al., 2019). ``batches`` yields (x, y) of token ids."""
    c = model.config
    gates = torch.ones(c.n_layer, c.n_head, requires_grad=True)
    handles = [_gate_heads(block.attn, gates, i) for i, block in enumerate(model.transformer.h)]
    was_training = model.training
    model.eval()
    total = torch.zeros(c.n_layer, c.n_head)
    n = 0
    try:
        for x, y in batches:
            _, loss = model(x, y)
            (grad,) = torch.autograd.grad(loss, gates)
            total += grad.abs()
            n += 1
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    if n == 0:
        raise ValueError("head_importance needs at least one batch")
    return total / n


def _gate_heads(attn: nn.Module, gates: torch.Tensor, layer: int):
    """Multiply each head's output by its gate: a pre-hook on ``c_proj``, whose input is the
    heads' outputs side by side (B, T, nh * hs)."""
    nh = gates.shape[1]

    def hook(module, args):
        (y,) = args
        B, T, C = y.shape
        return (y.view(B, T, nh, C // nh) * gates[layer].to(y.dtype)[:, None]).view(B, T, C),

    return attn.c_proj.register_forward_pre_hook(hook)


def mask_heads(model: nn.Module, heads: list[tuple[int, int]]) -> nn.Module:
    """A copy of a GPT with the heads (layer, head) silenced: their columns of ``c_proj``
    set to zero, so they add nothing to the residual stream. The matrices keep their shape
    (the attention code assumes n_head equal heads), so nothing gets faster."""
    pruned = copy.deepcopy(model)
    c = pruned.config
    hs = c.n_embd // c.n_head
    with torch.no_grad():
        for layer, head in heads:
            if not (0 <= layer < c.n_layer and 0 <= head < c.n_head):
                raise ValueError(f"no head {head} in layer {layer}: the model has {c.n_layer} layers of {c.n_head}")
            pruned.transformer.h[layer].attn.c_proj.weight[:, head * hs:(head + 1) * hs] = 0
    return pruned


# ---------------------------------------------------------------------------- distillation
def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor | None = None,
                      temperature: float = 2.0, alpha: float = 0.5) -> torch.Tensor:
    """``alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * CE(student, targets)``.

    Logits (..., V); p_T = softmax(logits / T). The KL is averaged over positions and the
    cross-entropy skips targets equal to -1 (the course's contract). T^2 keeps the soft
    term's gradients the same size as T changes (Hinton et al., 2015). ``alpha=1`` uses the
    teacher alone and needs no targets.
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student logits {tuple(student_logits.shape)} and teacher logits "
                         f"{tuple(teacher_logits.shape)} differ in shape")
    if not (isinstance(temperature, (int, float)) and temperature > 0):
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    if not (isinstance(alpha, (int, float)) and 0 <= alpha <= 1):
        raise ValueError(f"alpha must be in [0, 1], got {alpha!r}")
    if alpha < 1 and targets is None:
        raise ValueError("alpha < 1 mixes in the cross-entropy on the text: pass targets, or set alpha=1")
    V = student_logits.shape[-1]
    s = F.log_softmax(student_logits.float().reshape(-1, V) / temperature, dim=-1)
    t = F.log_softmax(teacher_logits.detach().float().reshape(-1, V) / temperature, dim=-1)
    kl = (t.exp() * (t - s)).sum(dim=-1).mean()  # KL(teacher || student) per position, averaged
    loss = alpha * temperature ** 2 * kl
    if alpha < 1:
        ce = F.cross_entropy(student_logits.float().reshape(-1, V), targets.reshape(-1), ignore_index=-1)
        loss = loss + (1 - alpha) * ce
    return loss


def train_student(student, train_data: torch.Tensor, *, steps: int, teacher=None, temperature: float = 2.0,
                  alpha: float = 0.5, batch_size: int = 32, lr: float = 3e-3, masks: dict | None = None,
                  max_seconds: float | None = None, seed: int = 1337, progress: bool = True,
                  desc: str | None = None) -> FinetuneHistory:
    """Train ``student`` (a GPT) on random windows of ``train_data`` with AdamW, a short
    warm-up and a cosine decay over ``steps``.

    With a ``teacher``: ``distillation_loss`` against its logits on the same windows
    (``alpha``, ``temperature``); without: the cross-entropy on the text (``alpha`` unused).
    ``masks`` (from ``magnitude_prune``) are applied after every step, so pruned weights stay
    zero: a recovery fine-tune. ``max_seconds`` stops early, for comparisons at equal time
    (the time counts the teacher's forward passes too). Windows are seeded by ``seed``.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    if teacher is not None and teacher.config.vocab_size != student.config.vocab_size:
        raise ValueError(f"the teacher's vocabulary ({teacher.config.vocab_size}) differs from the student's "
                         f"({student.config.vocab_size})")
    device = next(student.parameters()).device
    block = student.get_block_size()
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(student.parameters(), lr=lr, weight_decay=0.0, betas=(0.9, 0.95))
    warmup = max(1, steps // 20)
    hist = FinetuneHistory()
    student.train()
    if teacher is not None:
        teacher.eval()
    start = time.perf_counter()
    desc = desc or ("distilling" if teacher is not None else "training")
    bar = tqdm(range(steps), desc=desc, disable=not progress, leave=False)
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = warmup_cosine(step, warmup, steps, lr, lr / 10)
        x, y = get_batch(train_data, block, batch_size, generator=g, device=device)
        logits, ce = student(x, y)
        if teacher is not None:
            with torch.no_grad():
                t_logits, _ = teacher(x)
            loss = distillation_loss(logits, t_logits, y, temperature, alpha)
        else:
            loss = ce
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        opt.step()
        if masks:
            apply_masks(student, masks)
        hist.loss.append(loss.item())
        hist.steps = step + 1
        hist.seconds = time.perf_counter() - start
        if max_seconds is not None and hist.seconds >= max_seconds:
            break
    student.eval()
    return hist
