"""Shared helpers for the benchmarks: timing, peak memory, reference models, differences.

Timings are wall-clock medians of interleaved runs (ours, reference, ours, ...) in one
process with one thread count, so background load hits both sides alike. Peak memory is
the CUDA allocator's peak above the starting allocation on GPUs, and on CPU the peak
process RSS above the starting RSS, sampled every 2 ms from a background thread.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * _PAGE
    except OSError:  # not Linux: fall back to the (monotone) high-water mark
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


try:
    import os

    _PAGE = os.sysconf("SC_PAGE_SIZE")
except (ValueError, OSError, AttributeError):
    _PAGE = 4096


def peak_memory_mib(fn: Callable[[], Any], device: torch.device) -> float:
    """Run ``fn`` once and return its peak memory above the starting point, in MiB."""
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        sync(device)
        return (torch.cuda.max_memory_allocated(device) - base) / 2**20
    base = _rss_bytes()
    peak = [base]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _rss_bytes())
            time.sleep(0.002)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        fn()
    finally:
        done.set()
        thread.join()
    peak[0] = max(peak[0], _rss_bytes())
    return (peak[0] - base) / 2**20


def interleaved_medians(
    fns: dict[str, Callable[[], Any]], device: torch.device, repeats: int, warmup: int = 1
) -> dict[str, float]:
    """Median wall time (seconds) of each function, run in turn ``repeats`` times."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
            sync(device)
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(max(1, repeats)):
        for key, fn in fns.items():
            sync(device)
            start = time.perf_counter()
            fn()
            sync(device)
            times[key].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in times.items()}


def rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |a| (0 when both are empty)."""
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    if a.numel() == 0:
        return 0.0
    return float((a - b).abs().max() / a.abs().max().clamp_min(1e-12))


def chelsea_input(size: int = 1024) -> tuple[torch.Tensor, tuple[int, int], tuple[int, int]]:
    """skimage's chelsea photo resized so the long side is ``size``.

    Returns the (1, 3, h, w) float tensor in 0..255, the original (H, W) and the resized (h, w).
    """
    import numpy as np
    from PIL import Image
    from skimage import data

    image = data.chelsea()
    h0, w0 = image.shape[:2]
    scale = size / max(h0, w0)
    h, w = int(h0 * scale + 0.5), int(w0 * scale + 0.5)
    resized = np.array(Image.fromarray(image).resize((w, h), Image.BILINEAR))
    tensor = torch.as_tensor(resized).permute(2, 0, 1)[None].float()
    return tensor, (h0, w0), (h, w)
