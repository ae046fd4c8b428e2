"""Torch devices: the one place a user's ``device`` argument is interpreted.

Every public entry that takes a ``device`` (``build_sam``, ``GroundedSAM``, ``segment``, the
detectors, ``label``, ``finetune``) goes through :func:`resolve_device` before it reads any
weights, so a device this machine does not have fails at once with a message saying why and
what to pass instead.
"""

from __future__ import annotations

import importlib.util
from typing import Any

from grounded_sam.errors import InputError

__all__ = ["resolve_device"]

_FIX = "pass device='cpu', or device=None to use the best available device"


def _name(device: Any, dev: Any) -> str:
    """``'cuda'`` as the user wrote it; ``0 (cuda:0)`` when the spelling differs."""
    if isinstance(device, str):
        return repr(device)
    return repr(str(dev)) if str(device) == str(dev) else f"{device!r} ({dev})"


def _unavailable(device: Any, dev: Any, why: str) -> InputError:
    return InputError(f"device {_name(device, dev)} is not available here: {why}; {_FIX}")


def _cuda_reason(torch: Any) -> str:
    if getattr(torch.version, "cuda", None) is None and getattr(torch.version, "hip", None) is None:
        return (
            f"this PyTorch build ({torch.__version__}) has no CUDA support (a CPU-only build; "
            "install a CUDA build of PyTorch to use a GPU)"
        )
    if getattr(torch.version, "hip", None) is not None:
        return "no AMD GPU or ROCm driver was found"
    return f"no NVIDIA GPU or driver was found (PyTorch is built for CUDA {torch.version.cuda})"


def _check_available(dev: Any, device: Any) -> None:
    """Raise :class:`InputError` when torch device ``dev`` cannot be used on this machine."""
    import torch

    kind = dev.type
    if kind in ("cpu", "meta"):
        return
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise _unavailable(device, dev, _cuda_reason(torch))
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise InputError(
                f"device {_name(device, dev)} is not available here: this machine has {count} CUDA "
                f"device(s) (cuda:0 to cuda:{count - 1}); pass one of those, or device=None"
            )
        return
    if kind == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_built():
            raise _unavailable(device, dev, "this PyTorch build has no MPS (Apple GPU) support")
        if not mps.is_available():
            raise _unavailable(
                device,
                dev,
                "MPS needs an Apple-silicon Mac with macOS 12.3 or later, not found here",
            )
        return
    if kind == "xla":
        if importlib.util.find_spec("torch_xla") is None:
            raise _unavailable(device, dev, "XLA (TPU) needs the torch_xla package, not installed")
        return
    backend = getattr(torch, kind, None)  # e.g. torch.xpu; others are left to the backend
    is_available = getattr(backend, "is_available", None)
    if callable(is_available) and not is_available():
        raise _unavailable(device, dev, f"PyTorch finds no {kind} device or driver on this machine")


def resolve_device(device: Any = None) -> Any:
    """``None`` -> ``cuda`` when available, else ``cpu``; otherwise ``torch.device(device)``,
    checked to exist on this machine.

    Raises:
        InputError: not a device (e.g. ``"gpu"``), naming the accepted forms; or a device
            this machine does not have (``"cuda"`` without a CUDA build or driver, a CUDA
            index past the last GPU, ``"mps"`` off Apple silicon, ``"xla"`` without
            ``torch_xla``), saying why and suggesting ``device="cpu"`` or ``None``.
    """
    import torch

    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if isinstance(device, bool):
        raise InputError(f"invalid device {device!r}: expected e.g. 'cpu', 'cuda' or 'cuda:0'")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as e:
        raise InputError(
            f"invalid device {device!r}: expected e.g. 'cpu', 'cuda' or 'cuda:0'"
        ) from e
    _check_available(dev, device)
    return dev
