"""Low-rank adapters (LoRA, Hu et al. 2021) on the image encoder's attention projections.

``--train decoder+lora`` wraps every attention ``qkv`` and output ``proj`` linear layer of
the image encoder (ViT blocks, TinyViT blocks, Hiera blocks: the modules that have a
``qkv`` child) in :class:`LoRALinear`: ``y = W x + b + (alpha / r) B A x`` with ``W``, ``b``
frozen, ``A`` (r x in) Kaiming-initialised and ``B`` (out x r) zero, so training starts
from exactly the loaded model. :func:`merged_state_dict` folds ``(alpha / r) B A`` into
``W`` and returns the plain layout of the official checkpoint, which is what is saved.
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["LoRALinear", "add_lora", "lora_parameters", "merged_state_dict"]


class LoRALinear(nn.Module):
    """``base(x) + scale * (x @ A^T) @ B^T`` with ``base`` frozen.

    Attributes:
        base: the wrapped ``nn.Linear`` (its parameters keep ``requires_grad=False``).
        lora_a: (rank, in_features); lora_b: (out_features, rank); scale: alpha / rank.
    """

    def __init__(self, base: nn.Linear, rank: int, alpha: float) -> None:
        super().__init__()
        self.base = base
        base.requires_grad_(False)
        w = base.weight
        self.lora_a = nn.Parameter(torch.empty(rank, base.in_features, device=w.device))
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank, device=w.device))
        # as nn.Linear's own initialisation (and the LoRA paper's: A random, B zero)
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))
        self.scale = float(alpha) / float(rank)

    @property
    def weight(self) -> torch.Tensor:
        return self.base.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base.bias

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + (x @ self.lora_a.t().to(x.dtype)) @ (
            self.lora_b.t().to(x.dtype) * self.scale
        )

    def delta(self) -> torch.Tensor:
        """(out, in) the low-rank update ``scale * B @ A`` (float32)."""
        return (self.lora_b.float() @ self.lora_a.float()) * self.scale


def add_lora(encoder: nn.Module, rank: int = 4, alpha: float | None = None) -> list[str]:
    """Wrap the attention projections of ``encoder`` in :class:`LoRALinear`, in place.

    Every module with an ``nn.Linear`` child named ``qkv`` is an attention module; its
    ``qkv`` and (if an ``nn.Linear``) ``proj`` are wrapped. The torch RNG draws ``A``: seed
    it first for reproducible adapters. Returns the wrapped layers' names (relative to
    ``encoder``); raises ``ValueError`` if there is none (an encoder of another design).
    """
    alpha = float(rank if alpha is None else alpha)
    targets = []
    for name, module in encoder.named_modules():
        if isinstance(getattr(module, "qkv", None), nn.Linear):
            for child in ("qkv", "proj"):
                if isinstance(getattr(module, child, None), nn.Linear):
                    targets.append((module, child, f"{name}.{child}" if name else child))
    if not targets:
        raise ValueError(
            f"{type(encoder).__name__} has no attention module with a 'qkv' linear layer"
        )
    for module, child, _ in targets:
        setattr(module, child, LoRALinear(getattr(module, child), rank, alpha))
    return [n for _, _, n in targets]


def lora_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The ``lora_a`` / ``lora_b`` parameters of every :class:`LoRALinear` in ``model``."""
    return [p for m in model.modules() if isinstance(m, LoRALinear) for p in (m.lora_a, m.lora_b)]


@torch.no_grad()
def merged_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """``model.state_dict()`` with every :class:`LoRALinear` folded into a plain linear layer:
    ``<name>.base.weight`` + ``scale * B @ A`` saved as ``<name>.weight``, ``<name>.base.bias``
    as ``<name>.bias``, the ``lora_*`` tensors dropped. The result has the keys of the model
    without adapters (the official checkpoint layout). The model is not changed."""
    out: dict[str, torch.Tensor] = {}
    lora = {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}
    for key, value in model.state_dict().items():
        owner = next((n for n in lora if key.startswith(n + ".")), None)
        if owner is None:
            out[key] = value
            continue
        rest = key[len(owner) + 1 :]
        if rest == "base.weight":
            m = lora[owner]
            out[f"{owner}.weight"] = (value.float() + m.delta().to(value.device)).to(value.dtype)
        elif rest == "base.bias":
            out[f"{owner}.bias"] = value
        # lora_a / lora_b: folded into the weight above
    return out
