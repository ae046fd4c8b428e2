"""The starting model, and checkpoints written in the variant's official format.

A fine-tuned checkpoint is the starting file with the trained tensors put in place, nothing
else changed, so every tool that reads the official file reads it:

- SAM ViT-B/L/H (``sam_vit_*.pth``): a plain state dict, Meta's key layout
  (``segment_anything.sam_model_registry[...](checkpoint=...)`` loads it strictly);
- MobileSAM (``mobile_sam.pt``): a plain state dict with TinyViT's BatchNorm layers as
  separate modules (the model is built with ``fuse=False`` so they are never folded);
  ultralytics' ``build_mobile_sam(checkpoint=...)`` loads it;
- SAM 2.1 (``sam2.1_hiera_*.pt``): ``{"model": state_dict}`` with the video modules' tensors
  copied unchanged from the starting file (Meta's ``sam2.build_sam.build_sam2`` loads it).

Tensors keep the starting file's dtypes. Files are written to a temporary name and renamed.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch

from grounded_sam.errors import WeightsError
from grounded_sam.model.registry import ModelConfig, get_config, list_models

__all__ = ["load_model", "resolve_checkpoint", "save_torch", "write_official_checkpoint"]


def resolve_checkpoint(config: ModelConfig, checkpoint: str | os.PathLike | None) -> Path:
    """``checkpoint`` as a path, or the variant's official weights from the cache (fetched
    when missing, offline-aware)."""
    if checkpoint is not None:
        p = Path(checkpoint).expanduser()
        if not p.is_file():
            raise WeightsError(f"SAM checkpoint {str(p)!r} does not exist or is not a file")
        return p
    from grounded_sam import weights

    return Path(weights.fetch(config.weights))


def _source_state(config: ModelConfig, path: Path) -> dict[str, torch.Tensor]:
    """The file's state dict as stored (``{"model": ...}`` unwrapped), read safely."""
    from grounded_sam import hub

    return hub.load_state_dict(path)


def load_model(
    config: ModelConfig,
    path: Path,
    device: torch.device | str,
    *,
    fuse: bool = False,
) -> torch.nn.Module:
    """The variant ``config`` with the weights of ``path`` (strictly checked), eval mode.

    A registered variant goes through :func:`grounded_sam.build_sam` (its key-by-key check
    names a file of another variant); a custom :class:`ModelConfig` (tests, research
    variants) is built and loaded strictly here. ``fuse=False`` keeps MobileSAM's BatchNorm
    layers (needed to train and to save the official layout).
    """
    if config.name in list_models() and get_config(config.name) is config:
        from grounded_sam.model.build import build_sam

        return build_sam(config.name, checkpoint=path, device=device, fuse=fuse)
    state = _source_state(config, path)
    if config.convert_checkpoint is not None:
        state = config.convert_checkpoint(state, f"checkpoint {str(path)!r}")
    model = config.builder()
    missing, unexpected = [], []
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    if missing or unexpected or shapes:
        raise WeightsError(
            f"checkpoint {str(path)!r} does not match SAM variant {config.name!r}: "
            f"{len(missing)} missing keys {missing[:5]}, {len(unexpected)} unexpected keys "
            f"{unexpected[:5]}, {len(shapes)} keys with other shapes {shapes[:5]}"
        )
    model.load_state_dict(state, strict=True)
    if fuse and hasattr(model.image_encoder, "fuse"):
        model.image_encoder.fuse()
    return model.eval().to(device)


def save_torch(obj: object, path: Path) -> None:
    """``torch.save`` to a temporary file beside ``path``, then rename (never half a file)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_official_checkpoint(
    config: ModelConfig,
    state_dict: Mapping[str, torch.Tensor],
    source: Path,
    out: Path,
) -> Path:
    """Write ``state_dict`` (the model's layout, adapters merged) as ``source`` with those
    tensors replaced; see the module docstring for the per-family format. Returns ``out``.

    Raises:
        WeightsError: ``state_dict`` has a key the starting file does not have (it would not
            be the official layout), or a tensor of another shape.
    """
    base = _source_state(config, source)
    foreign = [k for k in state_dict if k not in base]
    reshaped = [k for k in state_dict if k in base and base[k].shape != state_dict[k].shape]
    if foreign or reshaped:
        raise WeightsError(
            f"the trained weights do not fit the layout of {str(source)!r}: keys not in it "
            f"{foreign[:5]}, keys of another shape {reshaped[:5]}"
        )
    out_state = {}
    for key, value in base.items():
        new = state_dict.get(key)
        out_state[key] = value if new is None else new.detach().to("cpu", value.dtype).clone()
    obj: object = {"model": out_state} if config.family == "sam2" else out_state
    save_torch(obj, out)
    return out
