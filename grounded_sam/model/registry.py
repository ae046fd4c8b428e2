"""The SAM model registry: one :class:`ModelConfig` per variant (timm's ``register_model`` +
``PretrainedCfg`` in one record), joining the architecture to its official weights.

A config names its builder (random initialisation, no weights), its family, the weights
registry entry of its official checkpoint (:mod:`grounded_sam.hub`), and how a checkpoint
file's state dict maps onto the module (SAM 2.1 files carry video modules the image path
drops). Registering a config also checks that its weights entry exists and is a SAM file.

This module registers SAM's structural checkpoint check with the hub, so every verified
download of a SAM file is checked key by key against the variant it belongs to.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from grounded_sam import hub
from grounded_sam.errors import InputError, WeightsError

__all__ = [
    "ModelConfig",
    "check_state_dict",
    "get_config",
    "list_models",
    "load_checkpoint",
    "register_model",
]


@dataclass(frozen=True)
class ModelConfig:
    """A SAM variant.

    Attributes:
        name: registry name, e.g. ``"vit_b"`` (what :func:`grounded_sam.build_sam` takes).
        family: ``"sam"`` (SAM 1 and MobileSAM) or ``"sam2"`` (SAM 2.1).
        builder: ``builder(**options) -> model`` with random weights, in eval mode.
        weights: name of the official checkpoint in the weights registry
            (:func:`grounded_sam.hub.get`).
        description: one line for listings (parameters, source).
        options: keyword options the builder accepts (e.g. SAM 2.1's
            ``dynamic_multimask_via_stability``), with their defaults.
        convert_checkpoint: ``convert(state_dict, source) -> state_dict`` from the official
            file's layout to the module's (raises :class:`WeightsError` for a wrong file);
            ``None`` when they are the same.
    """

    name: str
    family: str
    builder: Callable[..., torch.nn.Module]
    weights: str
    description: str = ""
    options: Mapping[str, object] = field(default_factory=dict)
    convert_checkpoint: Callable[[dict, str], dict] | None = None


_MODELS: dict[str, ModelConfig] = {}


def register_model(config: ModelConfig) -> ModelConfig:
    """Add ``config`` to the registry; its ``weights`` must name a ``"sam"`` weights entry."""
    if config.name in _MODELS:
        raise InputError(f"SAM variant {config.name!r} is already registered")
    entry = hub.get(config.weights)
    if entry.kind != "sam":
        raise InputError(
            f"SAM variant {config.name!r} names weights {config.weights!r} of kind "
            f"{entry.kind!r}; expected a 'sam' checkpoint entry"
        )
    _MODELS[config.name] = config
    return config


def _load_zoo() -> None:
    """Import the modules that register the built-in variants (once)."""
    import grounded_sam.model.zoo  # noqa: F401


def list_models() -> list[str]:
    """Names accepted by :func:`grounded_sam.build_sam`, e.g. ``['mobile_sam', 'vit_b', ...]``."""
    _load_zoo()
    return sorted(_MODELS)


def get_config(name: object) -> ModelConfig:
    """The :class:`ModelConfig` of ``name``; ``InputError`` listing the valid names otherwise."""
    _load_zoo()
    if isinstance(name, ModelConfig):
        return name
    if not isinstance(name, str) or name not in _MODELS:
        raise InputError(f"unknown SAM variant {name!r}; valid names: {', '.join(sorted(_MODELS))}")
    return _MODELS[name]


@functools.cache
def _expected_shapes(name: str) -> dict[str, tuple[int, ...]]:
    """Key -> shape of a variant's state dict, built on the meta device (no memory, no init)."""
    with torch.device("meta"):
        model = get_config(name).builder()
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _matching_variant(state_dict: Mapping[str, torch.Tensor]) -> str | None:
    got = {k: tuple(v.shape) for k, v in state_dict.items()}
    for name in list_models():
        config = _MODELS[name]
        if config.convert_checkpoint is not None:
            try:
                converted = config.convert_checkpoint(dict(state_dict), "checkpoint")
            except WeightsError:
                continue
            shapes = {k: tuple(v.shape) for k, v in converted.items()}
        else:
            shapes = got
        if _expected_shapes(name) == shapes:
            return name
    return None


def _first(items: list[str]) -> str:
    more = f" ... (+{len(items) - 5} more)" if len(items) > 5 else ""
    return ", ".join(items[:5]) + more


def check_state_dict(
    name: str, state_dict: Mapping[str, torch.Tensor], source: str = "checkpoint"
) -> None:
    """Raise :class:`WeightsError` unless ``state_dict`` (module layout) has exactly the keys
    and shapes of variant ``name``.

    The message names the variant, the source, the first missing / unexpected / mis-shaped
    keys and, when the file matches another variant, that variant.
    """
    expected = _expected_shapes(get_config(name).name)
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    mis_shaped = [
        f"{k} {tuple(state_dict[k].shape)} != {expected[k]}"
        for k in expected
        if k in state_dict and tuple(state_dict[k].shape) != expected[k]
    ]
    if not (missing or unexpected or mis_shaped):
        return
    parts = [f"{source} does not match SAM variant {name!r}"]
    if missing:
        parts.append(f"{len(missing)} missing keys: {_first(missing)}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys: {_first(unexpected)}")
    if mis_shaped:
        parts.append(f"{len(mis_shaped)} keys with other shapes: {_first(mis_shaped)}")
    other = _matching_variant(state_dict)
    if other is not None and other != name:
        parts.append(
            f"this file is a {other!r} checkpoint: use build_sam({other!r}, checkpoint=...) (CLI: --sam {other})"
        )
    else:
        parts.append(f"expected an official checkpoint for {name!r}")
    raise WeightsError("; ".join(parts))


def load_checkpoint(name: str, path: str | Path) -> dict[str, torch.Tensor]:
    """The official checkpoint at ``path`` as variant ``name``'s module state dict: loaded
    with ``weights_only=True``, converted from the file's layout and checked key by key.

    Raises:
        WeightsError: unreadable file, unsafe pickle, or a checkpoint of another variant.
    """
    config = get_config(name)
    source = f"checkpoint {str(path)!r}"
    state_dict = hub.load_state_dict(path)
    if config.convert_checkpoint is not None:
        state_dict = config.convert_checkpoint(state_dict, source)
    check_state_dict(config.name, state_dict, source)
    return state_dict


def _verify_download(entry: hub.WeightEntry, path: Path, source: str) -> None:
    """Hub verifier for ``"sam"`` files: the checkpoint of the variant that names ``entry``."""
    _load_zoo()
    names = [c.name for c in _MODELS.values() if c.weights == entry.name]
    if not names:  # a user-registered SAM file no variant names: it must load safely
        hub.load_state_dict(path)
        return
    load_checkpoint(names[0], path)


hub.register_verifier("sam", _verify_download)
