"""Inference fast paths: convolutions and linear layers with their GELU or residual add fused in.

On a CPU the memory-bound element-wise passes of MobileSAM's encoder (GELU after a convolution,
a residual add after a linear layer) cost as much as the convolutions themselves: each one
allocates a fresh activation of up to 64 MiB, and the page faults of that allocation dominate.
oneDNN can apply them as post-ops of the convolution or matrix product, on the output while it
is still in cache. PyTorch exposes that through the ``torch.ops.mkldnn._convolution_pointwise``
and ``_linear_pointwise`` operators (the ones its own CPU compiler emits).

Each helper here computes exactly what its name says, with the same parameters, and takes the
fused path only when all of this holds; otherwise it runs the plain PyTorch ops (with the GELU
in place where autograd does not need the input):

- the input and weights are float32 tensors on the CPU;
- autograd is off (``torch.no_grad()`` / ``torch.inference_mode()``, as the predictor runs);
- PyTorch was built with oneDNN, and a one-time self-check of the fused operators on small
  random inputs matched the plain ops (so a PyTorch release that changes these private
  operators falls back instead of failing or computing something else);
- no ``torch.jit.trace``, ``torch.compile`` or ``torch.export`` is tracing the model (exports
  and compiled graphs see standard operators only);
- the environment variable ``GROUNDED_SAM_DISABLE_FUSION`` is unset or ``0``.

The fused results differ from the unfused ones by float rounding only (the bias and the
residual are added in a different order).
"""

from __future__ import annotations

import functools
import logging
import os

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "add_",
    "conv2d_add",
    "conv2d_gelu",
    "fusion_available",
    "gelu_",
    "linear",
    "linear_add",
    "linear_gelu",
]

_LOG = logging.getLogger(__name__)
DISABLE_ENV = "GROUNDED_SAM_DISABLE_FUSION"


def _check_ops() -> None:
    """Run every fused operator once on small inputs; raise if one fails or disagrees."""
    ops = torch.ops.mkldnn
    gen = torch.Generator().manual_seed(0)

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen)

    def close(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
        if a.shape != b.shape or not torch.allclose(a, b, rtol=1e-4, atol=1e-5):
            raise RuntimeError(f"fused {what} disagrees with the unfused ops")

    with torch.no_grad():
        x = rand(1, 8, 6, 6).contiguous(memory_format=torch.channels_last)
        other = rand(1, 8, 6, 6).contiguous(memory_format=torch.channels_last)
        w, dw, b = rand(8, 8, 1, 1), rand(8, 1, 3, 3), rand(8)
        y = ops._convolution_pointwise(x, w, b, [0, 0], [1, 1], [1, 1], 1, "gelu", [None], "none")
        close(y, F.gelu(F.conv2d(x, w, b)), "conv2d + gelu")
        y = ops._convolution_pointwise(x, dw, b, [1, 1], [2, 2], [1, 1], 8, "gelu", [None], "none")
        close(y, F.gelu(F.conv2d(x, dw, b, stride=2, padding=1, groups=8)), "depthwise + gelu")
        y = ops._convolution_pointwise.binary(
            x, other, w, b, [0, 0], [1, 1], [1, 1], 1, "add", None, None, [], None
        )
        close(y, F.conv2d(x, w, b) + other, "conv2d + add")
        t, lw, lb = rand(2, 5, 8), rand(12, 8), rand(12)
        y = ops._linear_pointwise(t, lw, lb, "gelu", [None], "none")
        close(y, F.gelu(F.linear(t, lw, lb)), "linear + gelu")
        res, lw2 = rand(2, 5, 12), rand(12, 12)
        y = ops._linear_pointwise.binary(res, res.clone(), lw2, lb, "add")
        close(y, F.linear(res, lw2, lb) + res, "linear + add")


@functools.cache
def fusion_available() -> bool:
    """Whether the fused CPU operators are usable here (checked once per process)."""
    if os.environ.get(DISABLE_ENV, "").strip() not in ("", "0"):
        return False
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        _check_ops()
    except Exception as exc:  # private operators: any failure means "use the plain ops"
        _LOG.debug("fused CPU operators unavailable (%s: %s); using unfused ops", type(exc), exc)
        return False
    return True


def _tracing() -> bool:
    """Under torch.jit tracing, torch.compile or torch.export: keep to standard ops."""
    compiler = getattr(torch, "compiler", None)
    is_compiling = getattr(compiler, "is_compiling", None)
    return torch.jit.is_tracing() or bool(is_compiling is not None and is_compiling())


def _fast(x: torch.Tensor, weight: torch.Tensor) -> bool:
    return (
        x.device.type == "cpu"
        and x.dtype == torch.float32
        and weight.dtype == torch.float32
        and not torch.is_grad_enabled()
        and not _tracing()
        and fusion_available()
    )


@functools.cache
def _inplace_gelu_available() -> bool:
    """Whether ATen's in-place GELU exists here and equals ``F.gelu`` (checked once).

    In place avoids a fresh activation tensor: 22 ms against 5 ms for a 64 MiB activation
    on this CPU, page faults of the new buffer being the cost, not the arithmetic."""
    try:
        x = torch.randn(4, 7, generator=torch.Generator().manual_seed(0))
        expected = F.gelu(x)
        got = torch.ops.aten.gelu_(x.clone())
        return bool(torch.equal(got, expected))
    except Exception:  # noqa: BLE001 - an operator missing in this release: use F.gelu
        return False


def gelu_(x: torch.Tensor) -> torch.Tensor:
    """Exact (erf) GELU, in place when autograd is off (and the in-place operator passed its
    self-check); returns the result."""
    if torch.is_grad_enabled() or _tracing() or not _inplace_gelu_available():
        return F.gelu(x)
    return torch.ops.aten.gelu_(x)


def add_(fresh: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """``fresh + other``, in place into ``fresh`` when autograd is off (``fresh`` must be a
    tensor the caller just made and owns); returns the result."""
    return fresh + other if torch.is_grad_enabled() else fresh.add_(other)


def _conv_fast(conv: nn.Module, x: torch.Tensor) -> bool:
    return (
        type(conv) is nn.Conv2d
        and conv.padding_mode == "zeros"
        and not isinstance(conv.padding, str)
        and _fast(x, conv.weight)
    )


def _linear_fast(linear: nn.Module, x: torch.Tensor) -> bool:
    # Exactly nn.Linear: quantized or otherwise replaced layers run as themselves.
    return type(linear) is nn.Linear and _fast(x, linear.weight)


def _conv_args(conv: nn.Conv2d) -> tuple[list[int], list[int], list[int], int]:
    return list(conv.padding), list(conv.stride), list(conv.dilation), conv.groups


def conv2d_gelu(conv: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``F.gelu(conv(x))``."""
    if _conv_fast(conv, x):
        return torch.ops.mkldnn._convolution_pointwise(
            x, conv.weight, conv.bias, *_conv_args(conv), "gelu", [None], "none"
        )
    return gelu_(conv(x))


def conv2d_add(conv: nn.Module, x: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """``conv(x) + other`` (``other`` has the convolution's output shape); a new tensor."""
    if _conv_fast(conv, x) and other.dtype == x.dtype:
        return torch.ops.mkldnn._convolution_pointwise.binary(
            x, other, conv.weight, conv.bias, *_conv_args(conv), "add", None, None, [], None
        )
    y = conv(x)
    return add_(y, other)


def linear(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``layer(x)``. On the fast path through oneDNN, which adds the bias inside the product:
    ATen's ``addmm`` first writes the broadcast bias into the whole output, one more pass
    over it (a (4096, 1152) qkv: 24.3 ms through ``F.linear``, 21.9 ms here)."""
    if _linear_fast(layer, x):
        return torch.ops.mkldnn._linear_pointwise(
            x, layer.weight, layer.bias, "none", [None], "none"
        )
    return layer(x)


def linear_gelu(linear: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``F.gelu(linear(x))``."""
    if _linear_fast(linear, x):
        return torch.ops.mkldnn._linear_pointwise(
            x, linear.weight, linear.bias, "gelu", [None], "none"
        )
    return gelu_(linear(x))


def linear_add(linear: nn.Module, x: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """``linear(x) + other`` (``other`` has the output's shape); a new tensor."""
    if _linear_fast(linear, x) and other.dtype == x.dtype and other.shape[:-1] == x.shape[:-1]:
        return torch.ops.mkldnn._linear_pointwise.binary(
            x, other, linear.weight, linear.bias, "add"
        )
    y = linear(x)
    return add_(y, other)
