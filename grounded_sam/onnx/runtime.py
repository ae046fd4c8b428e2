"""Lazy imports of the ONNX libraries and onnxruntime sessions.

``onnx`` and ``onnxruntime`` are optional (``pip install "grounded-sam[onnx]"``): the rest of
grounded-sam works without them, and these helpers raise
:class:`~grounded_sam.errors.MissingDependency` with the install line when they are missing.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from grounded_sam.errors import InputError, require

__all__ = ["INSTALL", "onnx", "onnxruntime", "session"]

INSTALL = 'pip install "grounded-sam[onnx]"'


def onnx():
    """The ``onnx`` module (model files, checks)."""
    return require("onnx", feature="ONNX export", install=INSTALL)


def onnxruntime():
    """The ``onnxruntime`` module."""
    return require("onnxruntime", feature="ONNX inference", install=INSTALL)


def session(
    path: str | os.PathLike,
    providers: Sequence[str] | None = None,
    threads: int | None = None,
    memory_arena: bool = True,
    spinning: bool = True,
):
    """An ``onnxruntime.InferenceSession`` of ``path``.

    Args:
        providers: execution providers in order of preference (default: onnxruntime's
            ``CPUExecutionProvider``); unknown names raise :class:`InputError`.
        threads: intra-op threads (default: onnxruntime's choice, one per physical core).
        memory_arena: keep onnxruntime's CPU memory arena. Off, the activations are freed
            after each run instead of staying reserved for the next one.
        spinning: let the intra-op threads spin-wait after a run (onnxruntime's default:
            lower latency for runs back to back). Off, they sleep at once, leaving the cores
            to other work in the process between runs (a PyTorch detector, or PyTorch
            itself in a benchmark: measured, spinning threads made the next PyTorch decoder
            call on 2 cores about 2x slower).
    """
    ort = onnxruntime()
    if threads is not None and (
        not isinstance(threads, int) or isinstance(threads, bool) or threads < 1
    ):
        raise InputError(f"threads must be an integer >= 1, got {threads!r}")
    available = ort.get_available_providers()
    providers = list(providers) if providers is not None else ["CPUExecutionProvider"]
    unknown = [p for p in providers if p not in available]
    if unknown:
        raise InputError(
            f"onnxruntime execution provider(s) {unknown} are not available here; "
            f"available: {available}"
        )
    options = ort.SessionOptions()
    options.enable_cpu_mem_arena = memory_arena
    if threads is not None:
        options.intra_op_num_threads = threads
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(Path(path)), options, providers=providers)
