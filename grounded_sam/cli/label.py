"""``grounded-sam label IMAGES... --classes ONTOLOGY --out DATASET``: label a folder of images
into a COCO dataset (crash-safe, resumable, shardable), with a review queue.

``grounded-sam label --merge DATASET`` assembles a dataset from the units that ``--shard I/N``
runs wrote. ``--engine ray`` runs the same labelling on a Ray cluster with the same output.
See ``docs/labelling.md`` and ``docs/scale-out.md``.
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
    group.add_argument(
        "--threads",
        type=int,
        default=None,
        metavar="N",
        help="CPU threads the models compute with, in this process and in each Ray actor; "
        "recorded in DATASET when it is created and used by every later run (another count "
        "can change the last bits of scores); default: PyTorch's default here",
    )
    engine = parser.add_argument_group("engine (see docs/scale-out.md)")
    engine.add_argument(
        "--engine",
        choices=("local", "ray"),
        default="local",
        help="local: this process (default); ray: a Ray cluster through Ray Data, one model "
        'copy per actor, the same output (pip install "grounded-sam[ray]")',
    )
    engine.add_argument(
        "--ray-address",
        metavar="ADDRESS",
        help="the cluster: auto (started with `ray start` on this machine), ray://HOST:PORT "
        "or HOST:PORT; default: $RAY_ADDRESS, else a local Ray instance for the run",
    )
    engine.add_argument(
        "--actors",
        metavar="N|MIN,MAX",
        help="actors (model copies): N, or MIN,MAX for a pool that grows with the cluster; "
        "default: one per GPU (per --gpus-per-actor), on CPUs one per --threads CPUs",
    )
    engine.add_argument(
        "--gpus-per-actor",
        type=float,
        default=None,
        metavar="F",
        help="GPUs each actor reserves; 0.5 puts two actors on one GPU (default: 1 when the "
        "cluster has GPUs and --device is not cpu, else 0)",
    )
    engine.add_argument(
        "--cpus-per-actor",
        type=float,
        default=None,
        metavar="F",
        help="CPUs each actor reserves for Ray's scheduling (default: 1 for GPU actors, else "
        "--threads, so a node runs no more actors than it has cores)",
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
                ("--engine", args.engine != "local"),
                ("--threads", args.threads is not None),
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
    if args.threads is not None and args.threads < 1:
        raise UsageError(f"--threads must be >= 1, got {args.threads}")
    if args.engine != "ray":
        ray_only = [
            flag
            for flag, value in (
                ("--ray-address", args.ray_address),
                ("--actors", args.actors),
                ("--gpus-per-actor", args.gpus_per_actor),
                ("--cpus-per-actor", args.cpus_per_actor),
            )
            if value is not None
        ]
        if ray_only:
            verb = "applies" if len(ray_only) == 1 else "apply"
            raise UsageError(f"{', '.join(ray_only)} {verb} with --engine ray only")
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
    if summary.assembly is not None:
        errors, where = summary.assembly.errors, summary.dataset / "errors.json"
    else:  # a shard run assembles nothing: the reasons are those of the units it wrote
        errors = sorted(summary.errors, key=lambda e: e["file_name"])
        where = f"{summary.dataset / 'errors.json'} after --merge"
    for e in errors[:_MAX_ERROR_LINES]:
        sys.stderr.write(f"error: {e['file_name']}: {e['reason']}\n")
    if len(errors) > _MAX_ERROR_LINES:
        sys.stderr.write(
            f"error: ... and {len(errors) - _MAX_ERROR_LINES} more unreadable images "
            f"(all in {where})\n"
        )
    return summary.exit_code


def _ray_lines(runner) -> list[str]:
    """Who labelled what on the cluster (after the summary)."""
    workers = sorted(runner.workers.values(), key=lambda w: (w.node, w.pid))
    if not workers:
        return []
    lo, hi = runner.actors
    pool = f"{lo}" if lo == hi else f"{lo}-{hi}"
    split = ", ".join(f"{w.images}" for w in workers)
    gpus = f", {runner.gpus:g} GPU each" if runner.gpus else ""
    out = [
        f"ray: {len(workers)} actor process{'es' if len(workers) != 1 else ''} (pool "
        f"{pool}{gpus}, {workers[0].threads} thread{'s' if workers[0].threads != 1 else ''} "
        f"each) labelled {split} images"
    ]
    if runner.duplicates:
        out.append(
            f"ray: {runner.duplicates} units of retried tasks arrived twice; each image was "
            "committed once"
        )
    return out


def run(args: argparse.Namespace) -> int:
    """Label (or merge); 0 when every image was labelled, 2 when some could not be read."""
    from grounded_sam.engine.labeler import CandidateOptions, LabelConfig
    from grounded_sam.engine.run import label_dataset, make_runner, merge

    _check_args(args)
    if args.merge is not None:
        return _report(merge(args.merge, audit=args.audit), args.quiet)
    # first: a missing Ray or a bad pool size fails before anything is loaded
    runner = make_runner(
        args.engine,
        ray_address=args.ray_address,
        actors=args.actors,
        gpus_per_actor=args.gpus_per_actor,
        cpus_per_actor=args.cpus_per_actor,
    )
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
        runner=runner,
        threads=args.threads,
    )
    code = _report(summary, args.quiet)
    if args.engine == "ray":
        for line in _ray_lines(runner):
            print(line, flush=True)
    return code
