"""``grounded-sam weights list | download NAME... | path NAME``."""

from __future__ import annotations

import argparse
import json
import sys

from grounded_sam.cli._common import UsageError, add_debug_arg
from grounded_sam.errors import GroundedSAMError

__all__ = ["add_parser"]

_KINDS = ("sam", "yolo", "hf", "open_clip")


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``weights`` and its subcommands on ``subparsers``."""
    parser = subparsers.add_parser(
        "weights",
        help="list, download and locate model weights",
        description=(
            "Model weights registry and cache. Cache: $GROUNDED_SAM_HOME (default "
            "~/.cache/grounded_sam); mirror: $GROUNDED_SAM_MIRROR; offline: "
            "GROUNDED_SAM_OFFLINE=1."
        ),
    )
    add_debug_arg(parser)
    sub = parser.add_subparsers(dest="weights_command", metavar="ACTION")
    sub.required = True

    p_list = sub.add_parser("list", help="registry entries, size and cache state")
    add_debug_arg(p_list)
    p_list.add_argument("--kind", choices=_KINDS, default=None, help="only entries of this kind")
    p_list.add_argument("--json", action="store_true", help="one JSON object per line")
    p_list.set_defaults(func=_cmd_list)

    p_dl = sub.add_parser(
        "download",
        help="download (and verify) weights into the cache",
        description="Download and verify weights; prints one local path per name.",
    )
    add_debug_arg(p_dl)
    p_dl.add_argument("names", nargs="*", metavar="NAME", help="registry names")
    p_dl.add_argument("--all", action="store_true", help="every registry entry")
    p_dl.add_argument(
        "--kind", choices=_KINDS, default=None, help="with --all: only entries of this kind"
    )
    p_dl.add_argument(
        "--force", action="store_true", help="download again even if cached (replaced on success)"
    )
    p_dl.set_defaults(func=_cmd_download)

    p_path = sub.add_parser(
        "path",
        help="print the local path of NAME",
        description=(
            "Print where NAME lives locally. For file weights this is the cache path, printed "
            "even when not downloaded yet (a note goes to stderr); for hub weights it is the "
            "library's cached copy, an error if absent."
        ),
    )
    add_debug_arg(p_path)
    p_path.add_argument("name", metavar="NAME")
    p_path.set_defaults(func=_cmd_path)
    return parser


def _fmt_size(size_mb: float | None) -> str:
    if size_mb is None:
        return "?"
    if size_mb >= 1000:
        return f"~{size_mb / 1000:.2f} GB"
    return f"~{size_mb:.0f} MB"


def _cmd_list(args: argparse.Namespace) -> int:
    from grounded_sam import weights

    rows = []
    for e in weights.list(args.kind):
        found = weights.local_path(e.name)
        cached = found is not None
        if e.kind in ("sam", "yolo"):
            local = str(weights.path(e.name))
        else:
            local = str(found) if cached else f"(hub: {e.hub_id})"
        rows.append(
            {
                "name": e.name,
                "kind": e.kind,
                "size_mb": e.size_mb,
                "cached": cached,
                "path": local,
                "license": e.license,
                "url": weights.url_for(e.name),
            }
        )
    if args.json:
        for r in rows:
            print(json.dumps(r))
        return 0
    header = ("NAME", "KIND", "SIZE", "CACHED", "PATH")
    table = [header] + [
        (r["name"], r["kind"], _fmt_size(r["size_mb"]), "yes" if r["cached"] else "no", r["path"])
        for r in rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(header) - 1)]
    for row in table:
        print("  ".join(c.ljust(w) for c, w in zip(row[:-1], widths, strict=True)) + "  " + row[-1])
    return 0


def _cmd_download(args: argparse.Namespace) -> int:
    from grounded_sam import weights

    if args.all and args.names:
        raise UsageError("give NAMEs or --all, not both")
    if args.kind and not args.all:
        raise UsageError("--kind only applies with --all")
    if args.all:
        names = [e.name for e in weights.list(args.kind)]
    elif args.names:
        names = list(dict.fromkeys(args.names))
    else:
        raise UsageError("give at least one NAME (see `grounded-sam weights list`) or --all")
    for name in names:  # unknown names fail before anything is downloaded
        weights.get(name)
    chatty = sys.stderr.isatty()  # the source line goes with the progress bar, on terminals
    failed = []
    for name in names:  # one failure does not stop the others
        entry = weights.get(name)
        try:
            if entry.kind in ("sam", "yolo"):
                if chatty:
                    sys.stderr.write(f"{name}: {weights.url_for(name)}\n")
                local = weights.fetch(name, force=args.force)
            else:
                if chatty:
                    sys.stderr.write(f"{name}: {entry.kind} hub {entry.hub_id}\n")
                local = weights.fetch(name)
        except GroundedSAMError as e:
            sys.stderr.write(f"error: {name}: {e}\n")
            failed.append(name)
            continue
        print(local, flush=True)
    if failed and len(names) > 1:
        sys.stderr.write(
            f"error: {len(failed)} of {len(names)} not downloaded: {', '.join(failed)}\n"
        )
    return 2 if failed else 0


def _cmd_path(args: argparse.Namespace) -> int:
    from grounded_sam import weights

    entry = weights.get(args.name)
    if entry.kind in ("sam", "yolo"):
        local = weights.path(entry.name)
        if not local.is_file():
            sys.stderr.write(
                f"note: {entry.name} is not downloaded yet; run "
                f"`grounded-sam weights download {entry.name}`\n"
            )
        print(local)
        return 0
    found = weights.local_path(entry.name)
    if found is None:
        raise UsageError(
            f"{entry.name} ({entry.hub_id}) is not in the local hub cache; run "
            f"`grounded-sam weights download {entry.name}`"
        )
    print(found)
    return 0
