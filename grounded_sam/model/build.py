"""``build_sam(name)`` and ``list_models()``: SAM variants from the registry, with their weights."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from grounded_sam.devices import resolve_device
from grounded_sam.errors import InputError
from grounded_sam.model.precision import check_precision
from grounded_sam.model.registry import (
    ModelConfig,
    check_state_dict,
    get_config,
    list_models,
    load_checkpoint,
)
from grounded_sam.model.sam import SamBase

__all__ = ["build_sam", "list_models", "check_state_dict", "resolve_device"]


def build_sam(
    name: str | ModelConfig,
    checkpoint: str | os.PathLike | None = None,
    *,
    pretrained: bool = True,
    device: str | torch.device | None = None,
    fuse: bool | None = None,
    precision: str = "fp32",
    **options: object,
) -> SamBase:
    """Build a SAM variant, in eval mode.

    Args:
        name: one of :func:`list_models` (``vit_b``, ``vit_l``, ``vit_h``, ``mobile_sam``, and
            the SAM 2.1 variants), or a :class:`~grounded_sam.model.registry.ModelConfig`.
        checkpoint: path to an official-format checkpoint (Meta's ``sam_vit_*.pth``,
            MobileSAM's ``mobile_sam.pt``, Meta's ``sam2.1_hiera_*.pt``), loaded with
            ``weights_only=True`` and a strict key/shape check. ``None`` with
            ``pretrained=True`` fetches the registry weights through
            :func:`grounded_sam.weights.fetch` (cached; offline-aware).
        pretrained: ``False`` gives random initialisation (``checkpoint`` must be ``None``).
        device: torch device; ``None`` picks CUDA when available, else CPU.
        fuse: fold BatchNorm into the preceding convolutions for inference (MobileSAM's
            TinyViT; same outputs up to float rounding, faster). ``None`` (default) fuses when
            weights are loaded and not for ``pretrained=False``. A fused model's
            ``state_dict()`` has no BatchNorm keys: build with ``fuse=False`` to fine-tune or
            to re-save an official-format checkpoint.
        precision: ``"fp32"`` (default, exact), or an opt-in faster, less accurate mode:
            ``"bf16"`` / ``"fp16"`` (autocast of the encoder and decoder, for GPUs) or
            ``"int8"`` (dynamic int8 quantisation of the image encoder's linear layers, CPU
            only; ``device=None`` then means CPU). See :mod:`grounded_sam.model.precision`.
        **options: keyword options of the variant's family (its ``ModelConfig.options``),
            e.g. SAM 2.1's ``dynamic_multimask_via_stability``.

    Raises:
        InputError: unknown name, option or precision, ``"int8"`` on a GPU, a ``checkpoint``
            that is not a path, or a ``device`` this machine does not have (checked before
            any weights are read).
        WeightsError: a checkpoint that is missing, a directory, unreadable or not of this
            variant.
    """
    config = get_config(name)
    if checkpoint is not None and not isinstance(checkpoint, (str, os.PathLike)):
        shown = repr(checkpoint)
        shown = f" ({shown})" if len(shown) <= 60 else ""
        raise InputError(
            f"checkpoint must be the path of a .pt/.pth file (a str or pathlib.Path), got "
            f"{type(checkpoint).__name__}{shown}; or pass checkpoint=None to use the official "
            f"{config.name!r} weights"
        )
    unknown = sorted(set(options) - set(config.options))
    if unknown:
        accepted = ", ".join(config.options) or "none"
        raise InputError(
            f"build_sam({config.name!r}) got unknown option(s) {', '.join(unknown)}; "
            f"options of this variant: {accepted}"
        )
    if checkpoint is not None and not pretrained:
        raise InputError("pass either checkpoint=... or pretrained=False, not both")
    check_precision(precision)
    # int8 kernels are CPU-only: with no device asked for, int8 means CPU even beside a GPU.
    dev = resolve_device("cpu" if device is None and precision == "int8" else device)
    check_precision(precision, dev)  # before reading any weights
    state_dict = None
    if pretrained:
        if checkpoint is None:
            from grounded_sam import weights

            path = weights.fetch(config.weights)
        else:
            path = Path(checkpoint)
        state_dict = load_checkpoint(config.name, path)
    model = config.builder(**options)
    if state_dict is not None:
        model.load_state_dict(state_dict, strict=True)
    model.eval()
    if fuse is None:
        fuse = pretrained
    if fuse and hasattr(model.image_encoder, "fuse"):
        model.image_encoder.fuse()
    return model.to(dev).set_precision(precision)
