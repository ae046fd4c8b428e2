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

from grounded_sam._files import dir_mode
from grounded_sam.errors import GroundedSAMError, InputError

__all__ = [
    "UsageError",
    "add_debug_arg",
    "add_detector_args",
    "add_sam_args",
    "detector_kwargs",
    "atomic_dir",
    "check_output_args",
    "progress",
    "step_progress",
    "run_per_image",
    "unique_stems",
]


class UsageError(InputError):
    """Bad command-line arguments: reported as ``error: ...`` with exit code 2."""


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
        tmp.chmod(dir_mode())  # mkdtemp's 0700 would outlive the rename
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


def step_progress(desc: str) -> Callable[[int, int], None] | None:
    """A ``progress(done, total)`` callback drawing a tqdm bar on stderr for the steps of one
    long call (closed when ``done == total``), or ``None`` when stderr is not a terminal."""
    if not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    bar = None

    def update(done: int, total: int) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=total, desc=desc, file=sys.stderr, leave=False)
        bar.update(done - bar.n)
        if done >= total:
            bar.close()
            bar = None

    return update


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

    Each image's outputs go to ``<out>/<stem>/`` through :func:`atomic_dir`; the rest
    are still done after a bad image. Returns 0 when all were done, else 2.

    A bad image (any :class:`~grounded_sam.errors.GroundedSAMError`) gets one
    ``error: PATH: ...`` line and no folder; any other exception is a bug and stops the run.
    """
    from grounded_sam.io import load_image

    failed = 0
    stems = unique_stems(args.images)
    pairs = list(zip(args.images, stems, strict=True))
    for path, stem in progress(pairs, total=len(pairs), desc=desc):
        t0 = time.perf_counter()
        try:
            result = process(load_image(path))
        except GroundedSAMError as e:
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


# --------------------------------------------------------------------------- detectors
GENERIC_DETECTOR_OPTION = ("-D", "--detector-option", "--detector-arg")


def _key_value(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` -> (key with dashes as underscores, YAML-parsed value)."""
    import yaml

    key, sep, raw = text.partition("=")
    key = key.strip().replace("-", "_")
    if not sep or not key.isidentifier():
        raise argparse.ArgumentTypeError(
            "expected KEY=VALUE (e.g. box_threshold=0.35 or "
            f"model=IDEA-Research/grounding-dino-base), got {text!r}"
        )
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key, value


def _declared_options(extra: Sequence[str] = ()) -> dict[str, tuple]:
    """Detector name -> its declared options, for every detector that can be loaded.

    A plugin that fails to import is left out here (it fails with its own message when
    chosen with --detector)."""
    from grounded_sam.detectors.base import detector_options, list_detectors

    out: dict[str, tuple] = {}
    for name in list_detectors():
        try:
            out[name] = detector_options(name)
        except GroundedSAMError:
            continue
    for name in extra:
        out.setdefault(name, ())
    return out


def add_detector_args(
    parser: argparse.ArgumentParser,
    *,
    default: str | None = "grounding-dino",
    extra_detectors: Sequence[str] = (),
    group_title: str = "detector",
) -> None:
    """The detector flags every subcommand shares, generated from the detectors' declared
    options (:class:`grounded_sam.detectors.Option`): ``--detector NAME``, one flag per
    option (``--detector-model``, ``--box-threshold``, ``--yolo``...; a plugin's options
    too), and the generic ``-D KEY=VALUE``. :func:`detector_kwargs` turns them into the
    chosen detector's keyword arguments."""
    group = parser.add_argument_group(group_title)
    options = _declared_options(extra_detectors)
    names = ", ".join(options)
    group.add_argument(
        "--detector",
        default=default,
        metavar="NAME",
        help=f"text-to-box detector: {names}" + (f" (default {default})" if default else ""),
    )
    by_flag: dict[str, list[tuple[str, Any]]] = {}
    for det, opts in options.items():
        for opt in opts:
            by_flag.setdefault(opt.cli_flag, []).append((det, opt))
    for flag, users in by_flag.items():
        first = users[0][1]
        helps = "; ".join(f"{det}: {opt.help or opt.name}" for det, opt in users)
        group.add_argument(
            flag,
            dest=_flag_dest(flag),
            default=None,
            metavar=first.metavar or first.type.__name__.upper(),
            help=helps,
        )
    group.add_argument(
        *GENERIC_DETECTOR_OPTION,
        dest="detector_option",
        action="append",
        type=_key_value,
        default=[],
        metavar="KEY=VALUE",
        help="any detector option by its Python name, repeatable "
        "(e.g. -D box_threshold=0.35 -D top_k=3)",
    )
    parser.set_defaults(_detector_flags=sorted(by_flag))


def _flag_dest(flag: str) -> str:
    return "detopt_" + flag.lstrip("-").replace("-", "_")


def detector_kwargs(args: argparse.Namespace, *, skip: Sequence[str] = ()) -> dict[str, Any]:
    """The chosen ``--detector``'s keyword arguments from its flags and ``-D KEY=VALUE``.

    Raises:
        UsageError: a flag the chosen detector does not take (naming the ones it takes), a
            value of the wrong type, or an unknown ``-D`` key of a detector that declares
            its options.
    """
    from grounded_sam.detectors.base import detector_factory, detector_options

    name = args.detector
    given = {
        flag: getattr(args, _flag_dest(flag))
        for flag in getattr(args, "_detector_flags", [])
        if getattr(args, _flag_dest(flag), None) is not None
    }
    if name in skip:
        opts: tuple = ()
        declared = True
    else:
        opts = detector_options(name)
        declared = getattr(detector_factory(name), "options", None) is not None
    by_flag = {o.cli_flag: o for o in opts}
    by_name = {o.name: o for o in opts}
    wrong = sorted(set(given) - set(by_flag))
    if wrong:
        takes = ", ".join(sorted(by_flag)) or "none"
        raise UsageError(
            f"{', '.join(wrong)} {'does' if len(wrong) == 1 else 'do'} not apply to "
            f"--detector {name} (its options: {takes})"
        )
    kwargs: dict[str, Any] = {}
    for flag, raw in given.items():
        opt = by_flag[flag]
        kwargs[opt.name] = opt.parse(raw, flag)
    from_flags = set(kwargs)
    for key, value in args.detector_option:
        if key in from_flags:
            raise UsageError(
                f"-D {key}={value} and {by_name[key].cli_flag} both set {key}; give one of them"
            )
        if key in by_name:
            kwargs[key] = by_name[key].parse(value, f"-D {key}")
        elif declared:
            takes = ", ".join(sorted(by_name)) or "none"
            raise UsageError(
                f"-D {key}: --detector {name} has no option {key!r} (its options: {takes})"
            )
        else:
            kwargs[key] = value
    return kwargs
