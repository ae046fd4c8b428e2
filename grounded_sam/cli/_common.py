"""Helpers shared by the CLI subcommands."""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "UsageError",
    "add_debug_arg",
    "add_sam_args",
    "atomic_dir",
    "check_output_args",
    "progress",
    "run_per_image",
    "unique_stems",
]


class UsageError(Exception):
    """Bad arguments or input: reported as ``error: ...`` with exit code 2."""


def add_debug_arg(parser: argparse.ArgumentParser) -> None:
    """Let ``--debug`` also be given after the subcommand."""
    parser.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks on errors"
    )


def add_sam_args(parser: argparse.ArgumentParser, default: str = "mobile_sam") -> None:
    """``--sam NAME``, ``--sam-checkpoint PATH``, ``--precision P`` and ``--device D``."""
    parser.add_argument(
        "--sam", default=default, metavar="NAME", help=f"SAM variant (default {default})"
    )
    parser.add_argument(
        "--sam-checkpoint",
        default=None,
        metavar="PATH",
        help="official-format SAM checkpoint; default: the cached/downloaded weights",
    )
    parser.add_argument(
        "--precision",
        default="fp32",
        choices=("fp32", "bf16", "fp16", "int8"),
        help="SAM precision (default fp32, exact); opt-in faster, less accurate modes: "
        "bf16/fp16 autocast (GPUs), int8 dynamic quantisation of the encoder (CPU)",
    )
    parser.add_argument(
        "--device", default=None, metavar="D", help="torch device, e.g. cpu or cuda:0"
    )


@contextlib.contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield a temporary folder beside ``final``; rename it to ``final`` only on success.

    An existing ``final`` is replaced. On any exception the temporary folder is removed,
    so a crash never leaves half an output.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    try:
        yield tmp
        if final.exists():
            old = final.with_name(f".{final.name}.old.{os.getpid()}")
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def progress(iterable, total: int | None = None, desc: str = ""):
    """A tqdm progress bar on stderr when stderr is a terminal; the plain iterable otherwise."""
    if not sys.stderr.isatty():
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, file=sys.stderr, leave=False)


def check_output_args(args: argparse.Namespace) -> Path:
    """Validate ``--sam-checkpoint`` (an existing file) and ``--out`` (a folder or new)."""
    if args.sam_checkpoint is not None and not Path(args.sam_checkpoint).is_file():
        raise UsageError(f"--sam-checkpoint {args.sam_checkpoint!r}: no such file")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {str(out)!r} exists and is not a folder")
    return out


def unique_stems(paths: Sequence[str]) -> list[str]:
    """File stems, made unique with ``_2``, ``_3``... so two inputs never share a folder."""
    seen: dict[str, int] = {}
    out = []
    for p in paths:
        stem = Path(p).stem or "image"
        seen[stem] = seen.get(stem, 0) + 1
        out.append(stem if seen[stem] == 1 else f"{stem}_{seen[stem]}")
    return out


def run_per_image(
    args: argparse.Namespace,
    out: Path,
    process: Callable[[Any], Any],
    summary: Callable[[str, Any, float, Path], str],
    desc: str,
) -> int:
    """Run ``process(image)`` on every ``args.images`` path and save each ``Result``.

    Each image's outputs go to ``<out>/<stem>/`` through :func:`atomic_dir`. A bad image
    (``ValueError``/``TypeError``) gets one ``error: PATH: ...`` line and no folder; the rest
    are still done. Returns 0 when all were done, else 2.
    """
    from grounded_sam.pipeline import read_image

    failed = 0
    stems = unique_stems(args.images)
    pairs = list(zip(args.images, stems, strict=True))
    for path, stem in progress(pairs, total=len(pairs), desc=desc):
        t0 = time.perf_counter()
        try:
            result = process(read_image(path))
        except (ValueError, TypeError) as e:
            failed += 1
            if getattr(args, "debug", False):
                traceback.print_exc()
            sys.stderr.write(f"error: {path}: {e}\n")
            continue
        final = out / stem
        with atomic_dir(final) as tmp:
            result.save(tmp)
        print(summary(path, result, time.perf_counter() - t0, final), flush=True)
    if not failed:
        return 0
    if len(stems) > 1:
        sys.stderr.write(f"{failed} of {len(stems)} images failed, {len(stems) - failed} done\n")
    return 2
