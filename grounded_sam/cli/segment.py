"""``grounded-sam segment IMAGE... --text T | --point X,Y[,L]... | --box X0,Y0,X1,Y1... --out DIR``.

Per image, ``<out>/<stem>/result.json`` (COCO-style annotations with RLE), ``overlay.png`` and
``masks/NNN_<label>.png``, written into a temporary folder renamed into place on success.
A bad image is reported as one ``error:`` line and leaves no folder; the others are still done
and the exit code is then 2.
"""

from __future__ import annotations

import argparse
import math
from collections import Counter
from pathlib import Path

from grounded_sam.cli._common import (
    UsageError,
    add_debug_arg,
    add_detector_args,
    add_sam_args,
    check_output_args,
    detector_kwargs,
    run_per_image,
)

__all__ = ["add_parser", "parse_point", "parse_box"]


def _floats(text: str, what: str, counts: tuple[int, ...], form: str) -> list[float]:
    parts = text.split(",")
    if len(parts) not in counts:
        raise argparse.ArgumentTypeError(
            f"{what} {text!r} must be {form} ({' or '.join(map(str, counts))} comma-separated "
            f"numbers), got {len(parts)}"
        )
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{what} {text!r} must be {form} with numbers, e.g. "
            f"{'120,80' if what == '--point' else '10,20,200,180'}"
        ) from None
    if not all(math.isfinite(v) for v in values):
        raise argparse.ArgumentTypeError(f"{what} {text!r} must be finite numbers")
    return values


def parse_point(text: str) -> tuple[float, float, int]:
    """``"X,Y"`` or ``"X,Y,L"`` -> (x, y, label); label 1 foreground (default), 0 background."""
    values = _floats(text, "--point", (2, 3), "X,Y or X,Y,LABEL")
    label = 1 if len(values) == 2 else values[2]
    if label not in (0, 1):
        raise argparse.ArgumentTypeError(
            f"--point {text!r}: the label must be 1 (foreground) or 0 (background), got {label:g}"
        )
    return values[0], values[1], int(label)


def parse_box(text: str) -> tuple[float, float, float, float]:
    """``"X0,Y0,X1,Y1"`` pixels -> a tuple of 4 floats (clipped to the image later)."""
    x0, y0, x1, y1 = _floats(text, "--box", (4,), "X0,Y0,X1,Y1")
    if x1 <= x0 or y1 <= y0:
        raise argparse.ArgumentTypeError(
            f"--box {text!r} is degenerate: need X0 < X1 and Y0 < Y1 (top-left, bottom-right)"
        )
    return x0, y0, x1, y1


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``segment`` on ``subparsers``."""
    parser = subparsers.add_parser(
        "segment",
        help="segment images from a text prompt, points or boxes",
        description=(
            "Segment the objects named by --text (a detector finds boxes, SAM turns them into "
            "masks), or SAM's own --point/--box prompts. Writes <out>/<stem>/result.json, "
            "overlay.png and masks/ per image."
        ),
    )
    add_debug_arg(parser)
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    parser.add_argument("--text", default=None, metavar="T", help="prompt, e.g. 'a cat. a dog.'")
    parser.add_argument(
        "--point",
        action="append",
        type=parse_point,
        default=None,
        metavar="X,Y[,L]",
        help="point prompt in pixels; L is 1 foreground (default) or 0 background; repeatable",
    )
    parser.add_argument(
        "--box",
        action="append",
        type=parse_box,
        default=None,
        metavar="X0,Y0,X1,Y1",
        help="box prompt in pixels (clipped to the image); repeatable, one instance per box",
    )
    add_sam_args(parser)
    parser.add_argument(
        "--sam-onnx",
        default=None,
        metavar="DIR",
        help="run SAM with onnxruntime from an export folder (grounded-sam export-onnx) "
        "instead of PyTorch; replaces --sam, --sam-checkpoint and --precision",
    )
    add_detector_args(parser)
    parser.add_argument(
        "--multimask",
        action="store_true",
        help="3 SAM candidates per prompt, keep the best-scored one",
    )
    parser.add_argument(
        "--no-refine",
        action="store_true",
        help="keep the detector's own masks (yolo-clip: FastSAM-style), skip SAM",
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder")
    parser.set_defaults(func=run)
    return parser


def _check_args(args: argparse.Namespace) -> None:
    prompts = args.point is not None or args.box is not None
    if args.text is not None:
        from grounded_sam.phrases import parse_phrases

        args.text = parse_phrases(args.text)  # the one parse; an empty prompt fails here
        if prompts:
            raise UsageError("give --text or --point/--box, not both")
    elif not prompts:
        raise UsageError("nothing to segment: give --text T, or --point X,Y / --box X0,Y0,X1,Y1")
    if args.no_refine and args.text is None:
        raise UsageError("--no-refine applies to --text prompts (detector masks) only")
    if args.no_refine and args.text is not None:
        from grounded_sam.detectors.base import detector_capabilities

        if not detector_capabilities(args.detector)["returns_masks"]:
            raise UsageError(
                f"--no-refine needs a detector that returns masks (e.g. --detector yolo-clip); "
                f"{args.detector} gives boxes only"
            )
    if args.point is not None and args.box is not None and len(args.box) > 1:
        raise UsageError(
            f"--point can be combined with one --box, got {len(args.box)} boxes; "
            "segment the boxes alone or one box at a time with the points"
        )


def _summary(name: str, result, seconds: float, where: Path) -> str:
    counts = Counter(result.labels)
    per_label = ", ".join(f"{label}: {n}" for label, n in counts.items())
    n = len(result)
    what = f"{n} instance{'s' if n != 1 else ''}" + (f" ({per_label})" if n else "")
    return f"{name}: {what} in {seconds:.2f} s -> {where}"


def run(args: argparse.Namespace) -> int:
    """Segment every image; 0 if all were done, 2 if any was bad (the rest still done)."""
    from grounded_sam.pipeline import GroundedSAM

    _check_args(args)
    kw = detector_kwargs(args) if args.text is not None else {}
    out = check_output_args(args)
    sam = args.sam
    if args.sam_onnx is not None:
        from grounded_sam.onnx import OnnxSamPredictor

        if args.sam_checkpoint is not None or args.precision != "fp32":
            raise UsageError("--sam-onnx replaces --sam-checkpoint and --precision: drop them")
        sam = OnnxSamPredictor(args.sam_onnx)
    pipe = GroundedSAM(
        args.detector,
        sam,
        sam_checkpoint=args.sam_checkpoint,
        device=args.device,
        precision=args.precision,
        **kw,
    )
    if args.text is not None:
        pipe.detector  # noqa: B018 - build it now: a bad detector option fails once, up front
    points = labels = boxes = None
    if args.point is not None:
        points = [[x, y] for x, y, _ in args.point]
        labels = [lab for _, _, lab in args.point]
    if args.box is not None:
        boxes = [list(b) for b in args.box]

    def process(image):
        return pipe.segment(
            image,
            args.text,
            points=points,
            point_labels=labels,
            boxes=boxes,
            multimask_output=args.multimask,
            refine_with_sam=not args.no_refine,
        )

    return run_per_image(args, out, process, _summary, desc="segment")
