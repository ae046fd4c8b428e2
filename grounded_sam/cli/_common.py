"""Helpers shared by the CLI subcommands."""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = ["UsageError", "add_sam_args", "atomic_dir", "add_debug_arg", "progress"]


class UsageError(Exception):
    """Bad arguments or input: reported as ``error: ...`` with exit code 2."""


def add_debug_arg(parser: argparse.ArgumentParser) -> None:
    """Let ``--debug`` also be given after the subcommand."""
    parser.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks on errors"
    )


def add_sam_args(parser: argparse.ArgumentParser, default: str = "mobile_sam") -> None:
    """``--sam NAME``, ``--sam-checkpoint PATH`` and ``--device D``."""
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
