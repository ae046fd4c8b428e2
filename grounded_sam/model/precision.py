"""Opt-in lower-precision inference for a built ``Sam`` (off by default: ``"fp32"``).

- ``"bf16"`` / ``"fp16"``: the image encoder and the mask decoder run under
  ``torch.autocast`` with that dtype (weights stay float32; outputs are returned as float32).
  Meant for GPUs; on CPUs without native bf16/fp16 arithmetic they are slower than fp32.
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

__all__ = [
    "PRECISIONS",
    "apply_precision",
    "autocast",
    "check_precision",
    "decode_masks",
    "encode_image",
]

PRECISIONS = ("fp32", "bf16", "fp16", "int8")
_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def check_precision(precision: object, device: torch.device | None = None) -> str:
    """Return ``precision`` if it is one of :data:`PRECISIONS` (and, with ``device``, runs
    there: ``"int8"`` is CPU only), else raise ``ValueError``."""
    if not isinstance(precision, str) or precision not in PRECISIONS:
        raise ValueError(
            f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)} "
            "(fp32 is exact; bf16/fp16 autocast is for GPUs; int8 quantises the image "
            "encoder's linear layers on CPU)"
        )
    if precision == "int8" and device is not None and device.type != "cpu":
        raise ValueError(
            f"precision='int8' (dynamic int8 quantisation) runs on CPU only, not on {device}; "
            "on a GPU use precision='bf16' or 'fp16', or use device='cpu'"
        )
    return precision


def apply_precision(model: nn.Module, precision: str) -> nn.Module:
    """Switch a built ``Sam`` (weights loaded, on its final device) to ``precision``, in place.

    Returns ``model``. Raises ``ValueError`` for an unknown mode, for ``"int8"`` on a
    non-CPU model, or when the model already runs in another lower-precision mode.
    """
    check_precision(precision, next(model.parameters()).device)
    current = getattr(model, "precision", "fp32")
    if precision == current:
        return model
    if current != "fp32":
        raise ValueError(
            f"this model already runs in precision {current!r}; build a fresh one "
            f"(build_sam(..., precision={precision!r})) to use {precision!r}"
        )
    if precision == "int8":
        _quantize_linears(model.image_encoder)
    model.precision = precision
    return model


def _quantize_linears(module: nn.Module) -> None:
    try:
        from torch.ao.quantization import quantize_dynamic
    except ImportError as e:
        raise RuntimeError(
            f"precision='int8' needs torch.ao.quantization.quantize_dynamic, which PyTorch "
            f"{torch.__version__} does not have; use precision='fp32'"
        ) from e
    with warnings.catch_warnings():
        # PyTorch >= 2.10 marks its quantized-tensor API as deprecated; it still works.
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        quantize_dynamic(module, {nn.Linear}, dtype=torch.qint8, inplace=True)


@contextlib.contextmanager
def autocast(model: nn.Module, device: torch.device) -> Iterator[None]:
    """Context for running ``model``'s encoder or decoder in its precision mode.

    ``torch.autocast`` with bf16/fp16 for those modes; nothing for fp32 and int8. Callers cast
    the outputs back to float32.
    """
    dtype = _AUTOCAST_DTYPES.get(getattr(model, "precision", "fp32"))
    if dtype is None:
        yield
        return
    with torch.autocast(device_type=device.type, dtype=dtype):
        yield


def encode_image(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``model.image_encoder(x)`` in the model's precision mode, as float32."""
    with autocast(model, x.device):
        features = model.image_encoder(x)
    return features.float()


def decode_masks(model: nn.Module, **kwargs: object) -> tuple[torch.Tensor, torch.Tensor]:
    """``model.mask_decoder(**kwargs)`` in the model's precision mode: float32 (logits, IoU)."""
    embeddings = kwargs["image_embeddings"]
    assert isinstance(embeddings, torch.Tensor)
    with autocast(model, embeddings.device):
        low_res, iou = model.mask_decoder(**kwargs)
    return low_res.float(), iou.float()
