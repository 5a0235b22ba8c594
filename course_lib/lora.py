"""LoRA: fine-tuning a few low-rank matrices instead of every weight (chapter 9).

Hu et al. (2021) freeze a pretrained linear layer ``W`` (out x in) and learn an update of
rank ``r``, ``ΔW = B A`` with ``A`` (r x in) and ``B`` (out x r)::

    y = x W^T + b + (alpha / r) * x A^T B^T

``A`` starts random (Kaiming-uniform, as ``nn.Linear``), ``B`` at zero, so at the start the
layer computes exactly what the pretrained one did. Only ``A`` and ``B`` train: for a
128 x 384 layer and r = 8 that is 8 * (128 + 384) = 4,096 numbers instead of 49,152 (plus
the bias), and the optimizer keeps its two moments for those alone. ``merge`` folds
``(alpha / r) B A`` into ``W``: the merged model is an ordinary model, as fast as the
original, so LoRA saves training memory, not inference cost.

    >>> layer = LoRALinear(torch.nn.Linear(4, 3), r=2, alpha=4)
    >>> x = torch.randn(5, 4)
    >>> bool(torch.equal(layer(x), layer.base(x)))   # B = 0: the pretrained layer, exactly
    True

The parameter names and the initialization follow the ``peft`` library (``lora_A``,
``lora_B``, ``scaling = alpha / r``); the tests check forward and merge against it.

Scope: ``nn.Linear`` layers only, one adapter per layer, no dropout on the LoRA path.
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["LoRALinear", "apply_lora", "merge", "lora_parameters", "count_trainable", "train_token_rows"]


class LoRALinear(nn.Module):
    """``base`` (an ``nn.Linear``, frozen) plus a trainable rank-``r`` update scaled by ``alpha / r``."""

    def __init__(self, base: nn.Linear, r: int = 8, alpha: float = 16.0):
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise TypeError(f"LoRA wraps an nn.Linear, got {type(base).__name__}")
        if isinstance(r, bool) or not isinstance(r, int) or r < 1:
            raise ValueError(f"r must be an integer >= 1, got {r!r}")
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not alpha > 0:
            raise ValueError(f"alpha must be a number > 0, got {alpha!r}")
        self.base = base
        for p in base.parameters():
            p.requires_grad_(False)
        self.r, self.alpha, self.scaling = r, float(alpha), alpha / r
        w = base.weight
        self.lora_A = nn.Parameter(torch.empty(r, base.in_features, device=w.device, dtype=w.dtype))  # (r, in)
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, r, device=w.device, dtype=w.dtype))  # (out, r)
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # nn.Linear's rule: U(-1/sqrt(in), 1/sqrt(in))
        self.merged = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)  # (..., out) the frozen layer
        if self.merged:
            return y
        return y + (x @ self.lora_A.T @ self.lora_B.T) * self.scaling  # (..., in) -> (..., r) -> (..., out)

    def delta_weight(self) -> torch.Tensor:
        """The update ``(alpha / r) B A`` (out, in) that ``merge`` adds to the base weight."""
        return (self.lora_B @ self.lora_A) * self.scaling

    def extra_repr(self) -> str:
        return f"r={self.r}, alpha={self.alpha:g}, merged={self.merged}"


def _check_model(model) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"expected an nn.Module, got {type(model).__name__}")


def apply_lora(model: nn.Module, targets=("c_attn", "c_proj", "c_fc"), r: int = 8, alpha: float = 16.0) -> list[str]:
    """Replace, in place, every ``nn.Linear`` of ``model`` whose name ends with one of
    ``targets`` by a ``LoRALinear`` around it, and freeze every other parameter: afterwards
    only the LoRA matrices train. Returns the names of the wrapped layers (an error if none)."""
    _check_model(model)
    if isinstance(targets, str):
        targets = (targets,)
    for p in model.parameters():
        p.requires_grad_(False)
    wrapped = []
    for name, module in list(model.named_modules()):
        if isinstance(module, nn.Linear) and name.split(".")[-1] in targets:
            parent = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
            setattr(parent, name.split(".")[-1], LoRALinear(module, r=r, alpha=alpha))
            wrapped.append(name)
    if not wrapped:
        names = sorted({n.split(".")[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear)})
        raise ValueError(f"no nn.Linear named {list(targets)} in the model; its linear layers are named {names}")
    return wrapped


def merge(model: nn.Module) -> nn.Module:
    """Fold every ``LoRALinear``'s update into its base weight and put the plain ``nn.Linear``
    back, in place; the model then computes the same function with no LoRA overhead."""
    _check_model(model)
    for name, module in list(model.named_modules()):
        if isinstance(module, LoRALinear):
            with torch.no_grad():
                module.base.weight += module.delta_weight()
            for p in module.base.parameters():
                p.requires_grad_(True)
            parent = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
            setattr(parent, name.split(".")[-1], module.base)
    return model


def train_token_rows(embedding: nn.Embedding, rows) -> int:
    """Let the rows ``rows`` of a frozen ``embedding`` train beside LoRA; returns how many
    numbers that adds (``len(rows) * embedding_dim``).

    Tokens added for fine-tuning (a chat template's ``<|end|>``) start untrained; with the
    embedding frozen, as ``apply_lora`` leaves it, the model could learn to write them only
    by bending every other weight. ``peft`` offers the same (``trainable_token_indices``).
    Here the embedding matrix gets ``requires_grad`` and a gradient hook that zeroes every
    other row: an optimizer without weight decay (as ``chat.finetune``'s) then changes
    those rows alone, though it keeps its moments for the whole matrix. In a model whose
    output layer shares the matrix (chapter 7's GPT), the output rows of those tokens train too.
    """
    if not isinstance(embedding, nn.Embedding):
        raise TypeError(f"expected an nn.Embedding (e.g. model.transformer.wte), got {type(embedding).__name__}")
    rows = sorted({int(i) for i in rows})
    if not rows:
        raise ValueError("rows is empty: name the token ids whose embeddings should train")
    if rows[0] < 0 or rows[-1] >= embedding.num_embeddings:
        raise ValueError(f"rows must be token ids in [0, {embedding.num_embeddings}), got {rows[0]}..{rows[-1]}")
    weight = embedding.weight
    keep = torch.zeros(weight.shape[0], 1, device=weight.device, dtype=weight.dtype)  # (V, 1)
    keep[rows] = 1.0
    weight.requires_grad_(True)
    weight.register_hook(lambda grad: grad * keep)
    return len(rows) * embedding.embedding_dim


def lora_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The LoRA matrices of ``model`` (what the optimizer should see)."""
    _check_model(model)
    return [p for m in model.modules() if isinstance(m, LoRALinear) for p in (m.lora_A, m.lora_B)]


def count_trainable(model: nn.Module) -> tuple[int, int]:
    """``(trainable, total)`` parameters of ``model`` (a shared Parameter counted once)."""
    _check_model(model)
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)
