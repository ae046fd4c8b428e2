"""Per-image memos for the prompt path: values the decoder derives from the image's features
and the weights alone, kept between calls on the same image.

An interactive session decodes the same embedding again and again (a click, another click,
a box): the positional encoding of the grid, the image tokens plus the no-mask embedding, the
first transformer layer's projections of those tokens and SAM 2.1's reordered high-resolution
features do not depend on the prompt, yet cost a quarter of a decode on a CPU. They are
computed by the same code as before and kept, so a repeated call returns bitwise the same
masks.

A memo is valid while each input is the *same tensor object* (weak reference; a view counts
as its base plus its shape, strides and offset) with an unchanged version counter and
storage: an in-place change (an optimizer step, ``load_state_dict``, ``copy_``), a swapped
``.data`` or a new embedding misses.
Memos are off under autograd, autocast, tracing, ``torch.compile`` and for inference-mode
tensors (which have no version counter): those calls compute everything as before.

One value per (module, name) is kept: the last image's. With SAM's decoder that is about
26 MiB (float32) held until the next call or until the model is freed.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import torch
from torch import nn

__all__ = ["memoized", "clear_memos"]

T = TypeVar("T")

# module -> {name: (key, value)}; weak on the module, so nothing outlives the model and no
# memo is pickled or deep-copied with it
_MEMOS: weakref.WeakKeyDictionary[nn.Module, dict[str, tuple[list, Any]]] = (
    weakref.WeakKeyDictionary()
)


def _autocast_on() -> bool:
    for device_type in ("cpu", "cuda"):
        try:
            if torch.is_autocast_enabled(device_type):
                return True
        except TypeError:  # torch < 2.4: no device argument
            if torch.is_autocast_enabled() or torch.is_autocast_cpu_enabled():
                return True
    return False


def _enabled() -> bool:
    if torch.is_grad_enabled() or torch.jit.is_tracing() or torch.jit.is_scripting():
        return False
    compiler = getattr(torch, "compiler", None)
    for check in ("is_compiling", "is_exporting"):
        fn = getattr(compiler, check, None)
        if fn is not None and fn():
            return False
    return not _autocast_on()


def _describe(t: torch.Tensor) -> tuple:
    root = t._base if t._base is not None else t
    # raises RuntimeError for inference-mode tensors (no version counter)
    return (
        weakref.ref(root),
        root._version,
        root.data_ptr(),  # a swapped ``.data`` keeps the object and its version
        tuple(t.shape),
        # a size-1 dimension's stride does not change the values: x.expand(4, ...)[:1] and
        # x.expand(1, ...) are the same memo
        tuple(0 if n == 1 else st for n, st in zip(t.shape, t.stride(), strict=True)),
        t.storage_offset(),
        t.dtype,
        t.device,
    )


def _same(old: list[tuple], new: list[tuple]) -> bool:
    if len(old) != len(new):
        return False
    for a, b in zip(old, new, strict=True):
        root = a[0]()
        if root is None or root is not b[0]() or a[1:] != b[1:]:
            return False
    return True


def memoized(
    owner: nn.Module, name: str, inputs: Sequence[torch.Tensor], compute: Callable[[], T]
) -> T:
    """``compute()``, or the value it returned for the same ``inputs`` last time.

    Args:
        owner: the module the memo belongs to (one value per ``(owner, name)``).
        name: which value of ``owner``.
        inputs: every tensor ``compute`` reads (image tensors and weights).
        compute: the computation; its result must not be changed in place by callers.
    """
    if not _enabled():
        return compute()
    try:
        key = [_describe(t) for t in inputs]
    except RuntimeError:  # an inference-mode tensor
        return compute()
    memos = _MEMOS.get(owner)
    if memos is None:
        memos = _MEMOS[owner] = {}
    hit = memos.get(name)
    if hit is not None and _same(hit[0], key):
        return hit[1]
    memos.pop(name, None)  # the old value is freed before the new one is computed
    value = compute()
    memos[name] = (key, value)
    return value


def clear_memos(module: nn.Module) -> None:
    """Drop the memos of ``module`` and its submodules (frees their memory at once)."""
    for m in module.modules():
        _MEMOS.pop(m, None)
