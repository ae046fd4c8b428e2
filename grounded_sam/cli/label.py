"""``grounded-sam label IMAGES... --classes ONTOLOGY --out DATASET``: label a folder of images
into a COCO dataset (crash-safe, resumable, shardable), with a review queue.

``grounded-sam label --merge DATASET`` assembles a dataset from the units that ``--shard I/N``
runs wrote. See ``docs/labelling.md``.
"""

from __future__ import annotations

import argparse
import sys

from grounded_sam.cli._common import (
    UsageError,
    add_debug_arg,
    add_detector_args,
    add_sam_args,
    detector_kwargs,
)

__all__ = ["add_parser", "run"]

_MAX_ERROR_LINES = 10


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``label`` on ``subparsers``."""
    parser = subparsers.add_parser(
        "label",
        help="label folders of images into a COCO dataset (resumable, with a review queue)",
        description=(
            "Label every image of IMAGES (files or folders, recursive) with the classes of "
            "--classes: one detector pass for all prompts, one SAM encoder pass and one "
            "batched decoder call per image. Writes DATASET/annotations.json (COCO, RLE), "
            "errors.json and review.json; each image is committed as it is done, so rerunning "
            "the same command after a crash labels only what is left."
        ),
    )
    add_debug_arg(parser)
    parser.add_argument(
        "images", nargs="*", metavar="IMAGES", help="image files and/or folders (recursive)"
    )
    parser.add_argument(
        "--classes",
        metavar="ONTOLOGY",
        help="ontology YAML file (classes, prompts, thresholds, negatives) or inline 'cat,dog'",
    )
    parser.add_argument("--out", metavar="DATASET", help="dataset folder (created or resumed)")
    add_sam_args(parser)
    add_detector_args(parser)
    group = parser.add_argument_group("labelling")
    group.add_argument(
        "--exclusive",
        action="store_true",
        help="one class per object: overlapping instances of different classes keep the "
        "higher-scored one",
    )
    group.add_argument(
        "--candidates",
        action="store_true",
        help="also offer automatic-mode masks no labelled instance covers "
        "(DATASET/candidates.json), for a person to name or reject",
    )
    group.add_argument(
        "--candidate-points",
        type=int,
        default=None,
        metavar="N",
        help="automatic-mode grid points per side for --candidates (default 16)",
    )
    group.add_argument(
        "--audit",
        metavar="EXISTING.json",
        help="compare with an existing COCO annotation file: DATASET/audit.md and audit.json",
    )
    group.add_argument(
        "--shard",
        metavar="I/N",
        help="label only shard I of N (0-based); N processes or machines can share DATASET; "
        "assemble with --merge",
    )
    group.add_argument(
        "--merge",
        metavar="DATASET",
        help="assemble DATASET/annotations.json from the units written by --shard runs",
    )
    group.add_argument(
        "--overwrite",
        action="store_true",
        help="discard an earlier run in DATASET (needed when classes, detector or SAM changed)",
    )
    group.add_argument(
        "--batch-size",
        type=int,
        default=1,
        metavar="K",
        help="images per detector call (default 1; same results; helps a batching detector on GPUs)",
    )
    group.add_argument(
        "--save-embeddings",
        action="store_true",
        help="keep each image's SAM embedding in DATASET/embeddings/ for the annotation app "
        "(about 4 MB per image)",
    )
    group.add_argument(
        "--quiet", action="store_true", help="no progress bar or lines (the summary is printed)"
    )
    parser.set_defaults(func=run)
    return parser


def _check_args(args: argparse.Namespace) -> None:
    if args.merge is not None:
        given = [
            flag
            for flag, value in (
                ("IMAGES", args.images),
                ("--classes", args.classes),
                ("--out", args.out),
                ("--shard", args.shard),
                ("--overwrite", args.overwrite),
            )
            if value
        ]
        if given:
            raise UsageError(
                f"--merge DATASET assembles existing units and takes no {', '.join(given)}"
            )
        return
    missing = [
        what
        for what, value in (
            ("IMAGES (files or folders)", args.images),
            ("--classes ONTOLOGY", args.classes),
            ("--out DATASET", args.out),
        )
        if not value
    ]
    if missing:
        raise UsageError(f"label needs {' and '.join(missing)}")
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.candidate_points is not None:
        if not args.candidates:
            raise UsageError("--candidate-points applies with --candidates only")
        if args.candidate_points < 1:
            raise UsageError(f"--candidate-points must be >= 1, got {args.candidate_points}")
    if args.sam_checkpoint is not None:
        from pathlib import Path

        if not Path(args.sam_checkpoint).is_file():
            raise UsageError(f"--sam-checkpoint {args.sam_checkpoint!r}: no such file")


def _report(summary, quiet: bool) -> int:
    for line in summary.lines():
        print(line, flush=True)
    errors = (
        summary.assembly.errors
        if summary.assembly is not None
        else [{"file_name": f, "reason": "see its unit"} for f in summary.failed_files]
    )
    for e in errors[:_MAX_ERROR_LINES]:
        sys.stderr.write(f"error: {e['file_name']}: {e['reason']}\n")
    if len(errors) > _MAX_ERROR_LINES:
        sys.stderr.write(
            f"error: ... and {len(errors) - _MAX_ERROR_LINES} more unreadable images "
            f"(all in {summary.dataset / 'errors.json'})\n"
        )
    return summary.exit_code


def run(args: argparse.Namespace) -> int:
    """Label (or merge); 0 when every image was labelled, 2 when some could not be read."""
    from grounded_sam.engine.labeler import CandidateOptions, LabelConfig
    from grounded_sam.engine.run import label_dataset, merge

    _check_args(args)
    if args.merge is not None:
        return _report(merge(args.merge, audit=args.audit), args.quiet)
    config = LabelConfig.create(
        args.classes,
        detector=args.detector,
        sam=args.sam,
        sam_checkpoint=args.sam_checkpoint,
        device=args.device,
        precision=args.precision,
        exclusive=args.exclusive,
        candidates=CandidateOptions(points_per_side=args.candidate_points or 16)
        if args.candidates
        else None,
        batch_size=args.batch_size,
        save_embeddings=args.save_embeddings,
        **detector_kwargs(args),
    )
    summary = label_dataset(
        config,
        args.images,
        args.out,
        shard=args.shard,
        overwrite=args.overwrite,
        audit=args.audit,
        progress=not args.quiet,
    )
    return _report(summary, args.quiet)
