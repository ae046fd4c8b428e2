"""``grounded-sam eval``: evaluate a detector x SAM pipeline on a dataset, or compare runs.

grounded-sam eval --annotations ANN.json --images DIR --detector NAME [-D KEY=VALUE ...]
                  --sam NAME [--sam-checkpoint PATH] --out DIR [--limit N]
grounded-sam eval --refs refs(unc).p --annotations instances.json --images DIR ...
grounded-sam eval --images DIR --masks DIR --prompt "a cat" ...
grounded-sam eval --config configs/eval/coco_val2017.yaml [--out DIR] [--limit N]
grounded-sam eval --interactive --annotations ANN.json --images DIR --sam NAME --out DIR
grounded-sam eval compare RUN_DIR... [--out DIR]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from grounded_sam.cli._common import (
    UsageError,
    _flag_dest,
    add_debug_arg,
    add_detector_args,
    add_sam_args,
    detector_kwargs,
)

__all__ = ["add_parser"]


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``eval`` (and ``eval compare``) on ``subparsers``."""
    parser = subparsers.add_parser(
        "eval",
        help="evaluate detectors x SAM variants on a dataset; compare runs",
        description=(
            "Evaluate a text-prompted pipeline on COCO-format instances, RefCOCO-style "
            "referring expressions or an image/mask folder. Writes predictions.json (COCO "
            "results, RLE), metrics.json (mask AP via pycocotools, mIoU, cIoU, latency, peak "
            "memory) and report.md into --out. Runs resume where they stopped. "
            "`eval compare RUN_DIR...` tabulates and plots several runs."
        ),
    )
    add_debug_arg(parser)
    data = parser.add_argument_group("dataset (COCO: --annotations + --images)")
    data.add_argument(
        "--annotations", metavar="JSON", help="COCO instances JSON (RefCOCO: its instances.json)"
    )
    data.add_argument("--images", metavar="DIR", help="image folder")
    data.add_argument(
        "--all-categories",
        action="store_true",
        help="COCO: prompt every category in every image (counts false positives)",
    )
    data.add_argument("--refs", metavar="FILE", help="RefCOCO refs file (refs(unc).p or .json)")
    data.add_argument("--split", default="val", help="RefCOCO split (default val)")
    data.add_argument("--masks", metavar="DIR", help="folder of masks named like the images")
    data.add_argument("--prompt", help="with --masks: the text prompt for every image")
    run = parser.add_argument_group("pipeline")
    add_sam_args(run)
    add_detector_args(
        parser, default=None, extra_detectors=("gt-boxes",), group_title="detector (or gt-boxes)"
    )
    run.add_argument(
        "--no-sam-refine",
        action="store_true",
        help="keep the detector's own masks (yolo-clip: FastSAM-style), no SAM",
    )
    run.add_argument(
        "--multimask", action="store_true", help="SAM picks the best of 3 masks per box"
    )
    run.add_argument(
        "--score",
        choices=("detector", "mask", "product"),
        default="detector",
        help="prediction score for AP (default: the detector's)",
    )
    out = parser.add_argument_group("run")
    out.add_argument(
        "--config", metavar="YAML", help="run a detector x SAM grid from a config file"
    )
    out.add_argument(
        "--out", metavar="DIR", help="output folder (with --config: overrides its 'out')"
    )
    out.add_argument("--limit", type=_positive_int, metavar="N", help="only the first N images")
    out.add_argument("--name", help="run name shown in comparisons (default DETECTOR__SAM)")
    out.add_argument(
        "--warmup",
        type=int,
        default=None,
        metavar="N",
        help="untimed warm-up calls on the first image (default 1; --config: its 'warmup')",
    )
    out.add_argument(
        "--overwrite",
        action="store_true",
        help="discard a previous run in --out instead of resuming",
    )
    inter = parser.add_argument_group("interactive (SAM alone, no detector)")
    inter.add_argument(
        "--interactive",
        action="store_true",
        help="COCO --annotations/--images: simulated clicks per ground-truth mask (SAM "
        "paper protocol): mIoU after 1/3/5 clicks, NoC@85/90, box-prompt mIoU; writes "
        "interactive.json and interactive.md",
    )
    inter.add_argument(
        "--max-clicks", type=_positive_int, default=20, metavar="N",
        help="--interactive: clicks per mask at most (default 20)",
    )  # fmt: skip
    parser.set_defaults(func=_cmd_eval)

    sub = parser.add_subparsers(
        dest="eval_command", metavar="[compare RUN... --out DIR]", title="subcommand (optional)"
    )
    sub.required = False
    p_cmp = sub.add_parser(
        "compare",
        help="side-by-side table and quality-vs-latency chart of runs",
        description="Write comparison.md and comparison.png for the given run folders.",
    )
    add_debug_arg(p_cmp)
    p_cmp.add_argument(
        "runs", nargs="+", metavar="RUN_DIR", help="folders written by `grounded-sam eval`"
    )
    p_cmp.add_argument("--out", default=".", metavar="DIR", help="where to write (default: .)")
    p_cmp.set_defaults(func=_cmd_compare)
    return parser


def _dataset_spec(args: argparse.Namespace) -> dict[str, Any]:
    if args.refs:
        if args.masks or args.prompt:
            raise UsageError("--refs (RefCOCO) cannot be combined with --masks/--prompt")
        if not (args.annotations and args.images):
            raise UsageError(
                "RefCOCO needs --refs, --annotations (its instances.json) and --images"
            )
        return {"type": "refcoco", "refs": args.refs, "annotations": args.annotations,
                "images": args.images, "split": args.split}  # fmt: skip
    if args.masks:
        if args.annotations:
            raise UsageError("--masks (image/mask folder) cannot be combined with --annotations")
        if not (args.images and args.prompt):
            raise UsageError("a mask folder needs --images, --masks and --prompt 'a cat'")
        return {"type": "folder", "images": args.images, "masks": args.masks, "prompt": args.prompt}
    if not (args.annotations and args.images):
        raise UsageError(
            "give a dataset: --annotations ANN.json --images DIR (COCO), --refs too (RefCOCO), "
            "--images/--masks/--prompt (mask folder), or --config YAML"
        )
    return {"type": "coco", "annotations": args.annotations, "images": args.images,
            "all_categories": bool(args.all_categories)}  # fmt: skip


def _print_metrics(name: str, out_dir: Path, metrics: dict[str, Any]) -> None:
    from grounded_sam.eval.report import fmt

    total = metrics.get("latency_ms", {}).get("total", {}).get("median")
    print(
        f"{name}: mask_AP {fmt(metrics.get('mask_AP'))}  mIoU {fmt(metrics.get('mIoU'))}  "
        f"cIoU {fmt(metrics.get('cIoU'))}  images {metrics.get('n_images')}  "
        f"median {fmt(total, 1)} ms/image  -> {out_dir}"
    )


def _cmd_eval(args: argparse.Namespace) -> int:
    if args.interactive:
        return _cmd_interactive(args)
    if args.config:
        return _cmd_grid(args)
    from grounded_sam.eval.datasets import build_dataset
    from grounded_sam.eval.runner import RunSpec, build_pipeline, evaluate

    _dataset_spec(args)  # no dataset at all is the first thing to say
    if not args.out:
        raise UsageError("give --out DIR for the predictions, metrics and report")
    if not args.detector:
        raise UsageError("give --detector NAME (e.g. grounding-dino, yolo-clip or gt-boxes)")
    dataset = build_dataset(_dataset_spec(args), limit=args.limit)
    spec = RunSpec(
        detector=args.detector,
        sam=args.sam,
        sam_checkpoint=args.sam_checkpoint,
        precision=args.precision,
        detector_args=detector_kwargs(args, skip=("gt-boxes",)),
        device=args.device,
        refine_with_sam=not args.no_sam_refine,
        multimask_output=args.multimask,
        score=args.score,
        name=args.name,
    )
    pipeline, oracle = build_pipeline(spec)
    out_dir = Path(args.out)
    metrics = evaluate(
        dataset, pipeline, out_dir, spec=spec, oracle=oracle, overwrite=args.overwrite
    )
    _print_metrics(str(spec.name), out_dir, metrics)
    return 0


def _cmd_interactive(args: argparse.Namespace) -> int:
    from grounded_sam.eval.interactive import render_interactive, run_interactive
    from grounded_sam.model.build import build_sam
    from grounded_sam.predictor import SamPredictor

    other = [flag for flag, given in (("--config", args.config), ("--refs", args.refs),
             ("--masks", args.masks), ("--detector", args.detector)) if given]  # fmt: skip
    if other:
        raise UsageError(
            f"--interactive evaluates SAM alone on COCO --annotations/--images; drop "
            f"{', '.join(other)}"
        )
    if not (args.annotations and args.images and args.out):
        raise UsageError("--interactive needs --annotations ANN.json, --images DIR and --out DIR")
    if args.max_clicks < 5:
        raise UsageError(f"--max-clicks must be at least 5 (mIoU@5 needs 5), got {args.max_clicks}")
    sam = build_sam(args.sam, checkpoint=args.sam_checkpoint, device=args.device,
                    precision=args.precision)  # fmt: skip
    metrics = run_interactive(args.annotations, args.images, SamPredictor(sam), args.out,
                              limit=args.limit, max_clicks=args.max_clicks)  # fmt: skip
    sys.stdout.write(render_interactive(metrics, f"Interactive evaluation: {args.sam}"))
    print(
        f"box mIoU {metrics['box_mIoU']:.3f}  mIoU@1 {metrics['mIoU@1']:.3f}  "
        f"NoC@85 {metrics['NoC@85']:.2f}  -> {Path(args.out) / 'interactive.json'}"
    )
    return 0


def _cmd_grid(args: argparse.Namespace) -> int:
    from grounded_sam.eval.config import load_config, run_grid

    given = [
        flag
        for flag, value in (
            ("--annotations", args.annotations),
            ("--refs", args.refs),
            ("--masks", args.masks),
            ("--images", args.images),
            ("--detector", args.detector),
            ("-D", args.detector_option),
            *(
                (flag, getattr(args, _flag_dest(flag)) is not None)
                for flag in getattr(args, "_detector_flags", [])
            ),
            ("--sam-checkpoint", args.sam_checkpoint),
            ("--precision", args.precision != "fp32"),
            ("--name", args.name),
        )
        if value
    ]
    if given:
        raise UsageError(
            f"--config takes the dataset and pipelines from the file; drop {', '.join(given)} "
            "(only --out, --limit, --device, --warmup and --overwrite override it)"
        )
    config = load_config(args.config, out=args.out, limit=args.limit, device=args.device)
    if args.warmup is not None:
        config.warmup = args.warmup
    run_dirs = run_grid(config, overwrite=args.overwrite)
    from grounded_sam.eval.compare import load_run

    for d in run_dirs:
        _print_metrics(d.name, d, load_run(d))
    print(f"comparison: {config.out / 'comparison.md'}, {config.out / 'comparison.png'}")
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from grounded_sam.eval.compare import compare_runs

    md, png = compare_runs(args.runs, args.out)
    sys.stdout.write(md.read_text(encoding="utf-8"))
    print(f"wrote {md} and {png}")
    return 0
