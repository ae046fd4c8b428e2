"""Opt-in lower-precision inference for a built ``Sam`` (off by default: ``"fp32"``).

- ``"bf16"`` / ``"fp16"``: the image encoder and the mask decoder run under
  ``torch.autocast`` with that dtype (weights stay float32; outputs are returned as float32).
  For GPUs, and for CPUs with bf16 matrix units (AMX: see docs/performance.md for the
  measured speed); on CPUs without native bf16/fp16 arithmetic they are slower than fp32.
  (Converting the encoder's weights to bfloat16 instead of autocast measured only ~12%
  faster on sam2.1_hiera_tiny/small, with the small model's box mask agreeing less with
  fp32: IoU 0.973 against 0.990, so autocast stays.)
- ``"int8"``: dynamic int8 quantisation of the image encoder's linear layers (weights stored as
  int8, activations quantised on the fly per call) through PyTorch's
  ``torch.ao.quantization.quantize_dynamic``. CPU only, and applied after the weights are
  loaded; the converted model cannot be moved to a GPU or saved as an official checkpoint.

Each mode trades accuracy for speed; ``benchmarks/run.py --precision`` prints both (time
against our fp32, and mask IoU against our fp32 masks).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator

import torch
from torch import nn

from grounded_sam.errors import InputError, MissingDependency

__all__ = [
    "PRECISIONS",
    "apply_precision",
    "autocast",
    "check_precision",
    "quantize_linears",
    "uses_autocast",
]

PRECISIONS = ("fp32", "bf16", "fp16", "int8")
_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def check_precision(precision: object, device: torch.device | None = None) -> str:
    """Return ``precision`` if it is one of :data:`PRECISIONS` (and, with ``device``, runs
    there: ``"int8"`` is CPU only), else raise ``ValueError``."""
    if not isinstance(precision, str) or precision not in PRECISIONS:
        raise InputError(
            f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)} "
            "(fp32 is exact; bf16/fp16 autocast is for GPUs and CPUs with AMX; int8 "
            "quantises the image encoder's linear layers on CPU)"
        )
    if precision == "int8" and device is not None and device.type != "cpu":
        raise InputError(
            f"precision='int8' (dynamic int8 quantisation) runs on CPU only, not on {device}; "
            "on a GPU use precision='bf16' or 'fp16', or use device='cpu'"
        )
    return precision


def apply_precision(model: nn.Module, precision: str) -> nn.Module:
    """``model.set_precision(precision)``: switch a built model (weights loaded, on its final
    device) to ``precision``, in place; returns ``model``. Kept for code written against
    earlier releases; the model owns its precision (see ``SamBase.set_precision``)."""
    return model.set_precision(precision)


def quantize_linears(module: nn.Module) -> None:
    """Dynamic int8 quantisation of ``module``'s ``nn.Linear`` layers, in place (CPU only)."""
    try:
        from torch.ao.quantization import quantize_dynamic
    except ImportError as e:
        raise MissingDependency(
            f"precision='int8' needs torch.ao.quantization.quantize_dynamic, which PyTorch "
            f"{torch.__version__} does not have; use precision='fp32'"
        ) from e
    with warnings.catch_warnings():
        # PyTorch >= 2.10 marks its quantized-tensor API as deprecated; it still works.
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        quantize_dynamic(module, {nn.Linear}, dtype=torch.qint8, inplace=True)


def uses_autocast(precision: str) -> bool:
    """Whether ``precision`` runs the model under ``torch.autocast`` (bf16, fp16)."""
    return precision in _AUTOCAST_DTYPES


@contextlib.contextmanager
def autocast(precision: str, device: torch.device) -> Iterator[None]:
    """``torch.autocast`` with bf16/fp16 for those modes; nothing for fp32 and int8.

    Callers cast outputs back to float32."""
    dtype = _AUTOCAST_DTYPES.get(precision)
    if dtype is None:
        yield
        return
    with torch.autocast(device_type=device.type, dtype=dtype):
        yield
