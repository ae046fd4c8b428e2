"""Torch devices: the one place a user's ``device`` argument is interpreted."""

from __future__ import annotations

from typing import Any

from grounded_sam.errors import InputError

__all__ = ["resolve_device"]


def resolve_device(device: Any = None) -> Any:
    """``None`` -> ``cuda`` when available, else ``cpu``; otherwise ``torch.device(device)``.

    Raises:
        InputError: not a device (e.g. ``"gpu"``), naming the accepted forms.
    """
    import torch

    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise InputError(
            f"invalid device {device!r}: expected e.g. 'cpu', 'cuda' or 'cuda:0'"
        ) from e
