"""Registry of SAM variants: ``build_sam(name)`` and ``list_models()``.

Variants are small builder functions registered by name (timm's ``@register_model`` style);
they share one private ``_build()`` with SAM's prompt encoder and mask decoder.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from torch import nn

from grounded_sam.model.image_encoder import ImageEncoderViT
from grounded_sam.model.mask_decoder import build_mask_decoder
from grounded_sam.model.precision import apply_precision, check_precision
from grounded_sam.model.prompt_encoder import PromptEncoder
from grounded_sam.model.sam import Sam

__all__ = ["build_sam", "list_models", "register_model", "check_state_dict", "resolve_device"]

PROMPT_EMBED_DIM = 256
IMAGE_SIZE = 1024
EMBED_GRID = IMAGE_SIZE // 16  # 64

_REGISTRY: dict[str, Callable[[], Sam]] = {}


def register_model(name: str) -> Callable[[Callable[[], Sam]], Callable[[], Sam]]:
    """Decorator: register a zero-argument builder returning a randomly initialised ``Sam``."""

    def deco(fn: Callable[[], Sam]) -> Callable[[], Sam]:
        if name in _REGISTRY:
            raise ValueError(f"SAM variant {name!r} is already registered")
        _REGISTRY[name] = fn
        return fn

    return deco


def list_models() -> list[str]:
    """Names accepted by :func:`build_sam`, e.g. ``['mobile_sam', 'vit_b', 'vit_h', 'vit_l']``."""
    return sorted(_REGISTRY)


def _build(image_encoder: nn.Module, name: str) -> Sam:
    return Sam(
        image_encoder=image_encoder,
        prompt_encoder=PromptEncoder(
            embed_dim=PROMPT_EMBED_DIM,
            image_embedding_size=(EMBED_GRID, EMBED_GRID),
            input_image_size=(IMAGE_SIZE, IMAGE_SIZE),
            mask_in_chans=16,
        ),
        mask_decoder=build_mask_decoder(PROMPT_EMBED_DIM),
        name=name,
    )


def _vit(
    embed_dim: int, depth: int, num_heads: int, global_attn_indexes: tuple[int, ...]
) -> nn.Module:
    return ImageEncoderViT(
        img_size=IMAGE_SIZE,
        patch_size=16,
        embed_dim=embed_dim,
        depth=depth,
        num_heads=num_heads,
        mlp_ratio=4.0,
        out_chans=PROMPT_EMBED_DIM,
        qkv_bias=True,
        use_rel_pos=True,
        window_size=14,
        global_attn_indexes=global_attn_indexes,
    )


@register_model("vit_b")
def sam_vit_b() -> Sam:
    """SAM ViT-B (91M encoder parameters); Meta's ``sam_vit_b_01ec64.pth``."""
    return _build(_vit(768, 12, 12, (2, 5, 8, 11)), "vit_b")


@register_model("vit_l")
def sam_vit_l() -> Sam:
    """SAM ViT-L (308M); Meta's ``sam_vit_l_0b3195.pth``."""
    return _build(_vit(1024, 24, 16, (5, 11, 17, 23)), "vit_l")


@register_model("vit_h")
def sam_vit_h() -> Sam:
    """SAM ViT-H (636M); Meta's ``sam_vit_h_4b8939.pth``."""
    return _build(_vit(1280, 32, 16, (7, 15, 23, 31)), "vit_h")


@register_model("mobile_sam")
def mobile_sam() -> Sam:
    """MobileSAM: TinyViT-5M encoder + SAM's prompt encoder/decoder; ``mobile_sam.pt``."""
    from grounded_sam.model.tiny_vit import tiny_vit_5m

    return _build(tiny_vit_5m(img_size=IMAGE_SIZE), "mobile_sam")


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None`` -> ``cuda`` when available, else ``cpu``."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(
            f"invalid device {device!r}: expected e.g. 'cpu', 'cuda' or 'cuda:0'"
        ) from e


def _unknown(name: object) -> ValueError:
    return ValueError(f"unknown SAM variant {name!r}; valid names: {', '.join(list_models())}")


_SHAPES_CACHE: dict[str, dict[str, tuple[int, ...]]] = {}


def _expected_shapes(name: str) -> dict[str, tuple[int, ...]]:
    """Key -> shape of a variant's state dict, built on the meta device (no memory, no init)."""
    if name not in _SHAPES_CACHE:
        with torch.device("meta"):
            model = _REGISTRY[name]()
        _SHAPES_CACHE[name] = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    return _SHAPES_CACHE[name]


def _matching_variant(state_dict: Mapping[str, torch.Tensor]) -> str | None:
    got = {k: tuple(v.shape) for k, v in state_dict.items()}
    for name in list_models():
        if _expected_shapes(name) == got:
            return name
    return None


def check_state_dict(
    name: str, state_dict: Mapping[str, torch.Tensor], source: str = "checkpoint"
) -> None:
    """Raise ``ValueError`` unless ``state_dict`` has exactly the keys and shapes of ``name``.

    The message names the variant, the source, the first missing / unexpected / mis-shaped
    keys and, when the shapes match another variant, that variant.
    """
    if name not in _REGISTRY:
        raise _unknown(name)
    expected = _expected_shapes(name)
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    mis_shaped = [
        f"{k} {tuple(state_dict[k].shape)} != {expected[k]}"
        for k in expected
        if k in state_dict and tuple(state_dict[k].shape) != expected[k]
    ]
    if not (missing or unexpected or mis_shaped):
        return

    def first(items: list[str]) -> str:
        more = f" ... (+{len(items) - 5} more)" if len(items) > 5 else ""
        return ", ".join(items[:5]) + more

    parts = [f"{source} does not match SAM variant {name!r}"]
    if missing:
        parts.append(f"{len(missing)} missing keys: {first(missing)}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys: {first(unexpected)}")
    if mis_shaped:
        parts.append(f"{len(mis_shaped)} keys with other shapes: {first(mis_shaped)}")
    other = _matching_variant(state_dict)
    if other is not None:
        parts.append(
            f"this file is a {other!r} checkpoint: use build_sam({other!r}, checkpoint=...)"
        )
    else:
        parts.append(f"expected an official checkpoint for {name!r}")
    raise ValueError("; ".join(parts))


def build_sam(
    name: str,
    checkpoint: str | os.PathLike | None = None,
    *,
    pretrained: bool = True,
    device: str | torch.device | None = None,
    fuse: bool | None = None,
    precision: str = "fp32",
) -> Sam:
    """Build a SAM variant, in eval mode.

    Args:
        name: one of :func:`list_models` (``vit_b``, ``vit_l``, ``vit_h``, ``mobile_sam``).
        checkpoint: path to an official-format checkpoint (Meta's ``sam_vit_*.pth``,
            MobileSAM's ``mobile_sam.pt``), loaded with ``weights_only=True`` and a strict
            key/shape check. ``None`` with ``pretrained=True`` fetches the registry weights
            through :func:`grounded_sam.weights.fetch` (cached; offline-aware).
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

    Raises:
        ValueError: unknown name or precision, ``"int8"`` on a GPU, or a checkpoint that is
            not a matching SAM checkpoint.
    """
    if not isinstance(name, str) or name not in _REGISTRY:
        raise _unknown(name)
    if checkpoint is not None and not pretrained:
        raise ValueError("pass either checkpoint=... or pretrained=False, not both")
    check_precision(precision)
    # int8 kernels are CPU-only: with no device asked for, int8 means CPU even beside a GPU.
    dev = resolve_device("cpu" if device is None and precision == "int8" else device)
    check_precision(precision, dev)  # before reading any weights
    state_dict = None
    if pretrained:
        from grounded_sam import weights

        path = Path(checkpoint) if checkpoint is not None else weights.fetch(name)
        state_dict = weights.load_state_dict(path)
        check_state_dict(name, state_dict, source=f"checkpoint {str(path)!r}")
    model = _REGISTRY[name]()
    if state_dict is not None:
        model.load_state_dict(state_dict, strict=True)
    model.eval()
    if fuse is None:
        fuse = pretrained
    if fuse and hasattr(model.image_encoder, "fuse"):
        model.image_encoder.fuse()
    return apply_precision(model.to(dev), precision)
