"""``grounded-sam`` command line: ``segment | everything | eval | weights | label | export |
finetune | app | export-onnx``.

Each subcommand lives in its own module of this package and exposes
``add_parser(subparsers)``, which registers its arguments and sets ``func``.

Exit codes: 0 ok; 2 bad input or arguments: exactly the errors of
:mod:`grounded_sam.errors` (one ``error: ...`` line on stderr, no traceback unless
``--debug``); 1 internal error (anything else: a bug, reported with a short message and the
``--debug`` hint); 130 interrupted.
"""

from __future__ import annotations

import argparse
import importlib
import re
import sys
import traceback
from collections.abc import Sequence

from grounded_sam.errors import GroundedSAMError

__all__ = ["main", "build_parser"]

# subcommand name -> module in this package
_COMMANDS = {
    "segment": "grounded_sam.cli.segment",
    "everything": "grounded_sam.cli.everything",
    "eval": "grounded_sam.cli.evaluate",
    "weights": "grounded_sam.cli.weights",
    "label": "grounded_sam.cli.label",
    "export": "grounded_sam.cli.export",
    "finetune": "grounded_sam.cli.finetune",
    "app": "grounded_sam.cli.app",
    "export-onnx": "grounded_sam.cli.export_onnx",
}

# "-30,10,100,90" or "-5": a negative number (list) meant as an option's value
_NEGATIVE_VALUE = re.compile(r"^-(\d|\.\d)[\d.,eE+-]*$")


class _Parser(argparse.ArgumentParser):
    """ArgumentParser whose errors are one ``error: ...`` line and exit code 2."""

    def error(self, message: str):  # type: ignore[override]
        sys.stderr.write(f"error: {message} (see `{self.prog} --help`)\n")
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="grounded-sam",
        description="Text-promptable Segment Anything.",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    from grounded_sam import __version__

    parser.add_argument("--version", action="version", version=f"grounded-sam {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for module in _COMMANDS.values():
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as e:  # a subcommand not built yet
            if e.name != module:
                raise
            continue
        mod.add_parser(sub)
    parser.commands = sub.choices  # name -> subcommand parser, for the errors of main()
    return parser


def attach_negative_values(argv: Sequence[str]) -> list[str]:
    """``["--box", "-30,10,100,90"]`` -> ``["--box=-30,10,100,90"]``.

    argparse reads a token starting with ``-`` as an option unless it is a plain negative
    number, so a negative coordinate list after a flag would fail to parse; joining it to its
    flag with ``=`` is argparse's own way to pass such a value.
    """
    out: list[str] = []
    for token in argv:
        prev = out[-1] if out else ""
        if (
            _NEGATIVE_VALUE.match(token)
            and prev.startswith("--")
            and "=" not in prev
            and len(prev) > 2
        ):
            out[-1] = f"{prev}={token}"
        else:
            out.append(token)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(
        attach_negative_values(sys.argv[1:] if argv is None else argv)
    )
    if extra:  # reported by the subcommand's parser, whose --help lists its options
        command = parser.commands.get(getattr(args, "command", None), parser)
        command.error(f"unrecognized arguments: {' '.join(extra)}")
    debug = bool(getattr(args, "debug", False))
    try:
        code = args.func(args)
        return int(code or 0)
    except GroundedSAMError as e:
        if debug:
            traceback.print_exc()
        sys.stderr.write(f"error: {e}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("error: interrupted\n")
        return 130
    except Exception as e:  # noqa: BLE001 - last-resort handler for the CLI
        if debug:
            traceback.print_exc()
        sys.stderr.write(
            f"error: internal error: {type(e).__name__}: {e} (rerun with --debug for a traceback)\n"
        )
        return 1
