"""``grounded-sam export DATASET --format yolo-seg|coco-polygons|masks --out DIR``: convert a
labelled dataset (``annotations.json``, COCO with RLE) for other tools.

The folder is written beside ``DIR`` and renamed into place when complete; an existing
non-empty ``DIR`` is replaced only with ``--overwrite``. A failed export (e.g. yolo-seg
source images not found) leaves nothing behind. See
:mod:`grounded_sam.engine.export_formats` for each format.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from grounded_sam._files import dir_mode
from grounded_sam.cli._common import UsageError, add_debug_arg, atomic_dir

__all__ = ["add_parser", "run"]


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``export`` on ``subparsers``."""
    from grounded_sam.engine.export_formats import FORMATS

    parser = subparsers.add_parser(
        "export",
        help="convert a labelled dataset to YOLO segmentation, COCO polygons or PNG masks",
        description=(
            "Convert DATASET/annotations.json (COCO with RLE masks, as `grounded-sam label` "
            "writes it) to YOLO segmentation labels (DIR/data.yaml, DIR/labels/, DIR/images/), "
            "COCO with polygons (DIR/annotations.json) or one PNG per instance (DIR/masks/)."
        ),
    )
    add_debug_arg(parser)
    parser.add_argument("dataset", metavar="DATASET", help="dataset folder (or a COCO file)")
    parser.add_argument("--format", required=True, choices=FORMATS, help="output format")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder")
    parser.add_argument(
        "--images",
        action="append",
        default=[],
        metavar="DIR",
        help="where the source images are (repeatable); default: the folders recorded by "
        "`label` in DATASET/label.json",
    )
    how = parser.add_mutually_exclusive_group()
    how.add_argument(
        "--copy-images",
        action="store_true",
        help="yolo-seg: copy the images into DIR/images/ (default: symbolic links)",
    )
    how.add_argument(
        "--no-images", action="store_true", help="yolo-seg: write labels and data.yaml only"
    )
    parser.add_argument(
        "--allow-missing-images",
        action="store_true",
        help="yolo-seg: export the images whose source is found and leave the others out "
        "(with a warning); default: refuse when any is missing",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace DIR if it exists and is not empty"
    )
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from grounded_sam.engine.export_formats import export_dataset

    src = Path(args.dataset)
    if not src.exists():
        raise UsageError(f"dataset {args.dataset!r} not found")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {args.out!r} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not args.overwrite:
        raise UsageError(f"--out {args.out!r} is not empty; use --overwrite to replace it")
    if out.resolve() == (src if src.is_dir() else src.parent).resolve():
        raise UsageError("--out must not be the dataset folder itself")
    given = [
        flag
        for flag, value in (
            ("--images", args.images),
            ("--copy-images", args.copy_images),
            ("--no-images", args.no_images),
            ("--allow-missing-images", args.allow_missing_images),
        )
        if value
    ]
    if args.format != "yolo-seg" and given:
        verb = "applies" if len(given) == 1 else "apply"
        raise UsageError(
            f"{', '.join(given)} {verb} to --format yolo-seg only ({args.format} is made from "
            "the annotations alone)"
        )
    if args.no_images and (args.images or args.allow_missing_images):
        other = "--images" if args.images else "--allow-missing-images"
        raise UsageError(f"--no-images exports no image; {other} makes no sense with it")
    for folder in args.images:
        if not Path(folder).is_dir():
            raise UsageError(f"--images {folder!r}: no such folder")
    mode = "copy" if args.copy_images else "none" if args.no_images else "link"
    created = _first_missing(out.parent)
    try:
        with atomic_dir(out) as tmp:
            summary = export_dataset(
                src,
                args.format,
                tmp,
                images=mode,
                image_roots=args.images,
                final_path=out,
                allow_missing_images=args.allow_missing_images,
            )
    except BaseException:
        if created is not None:  # atomic_dir made the parent folders: leave no trace
            _remove_empty(out.parent, created)
        raise
    # the temporary folder was private (0700); give the result the usual permissions
    os.chmod(out, dir_mode())
    summary.out = out
    for line in summary.lines():
        print(line)
    for line in summary.warnings():
        sys.stderr.write(f"warning: {line}\n")
    return 0


def _first_missing(folder: Path) -> Path | None:
    """The outermost of ``folder`` and its parents that does not exist yet (``None``: it
    exists)."""
    missing = None
    for p in (folder, *folder.parents):
        if p.exists():
            break
        missing = p
    return missing


def _remove_empty(folder: Path, up_to: Path) -> None:
    """Remove ``folder`` and its parents up to ``up_to`` (included) while they are empty."""
    for p in (folder, *folder.parents):
        try:
            p.rmdir()
        except OSError:
            return
        if p == up_to:
            return
