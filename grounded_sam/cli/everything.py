"""``grounded-sam everything IMAGE... --sam NAME --out DIR [--text T]``: segment everything.

Runs :class:`grounded_sam.AutomaticMaskGenerator` on each image and writes, per image,
``<out>/<stem>/result.json`` (COCO-style annotations with RLE, label ``"object"``, score =
SAM's predicted IoU), ``overlay.png`` (a distinct colour per mask) and ``masks/NNN_object.png``,
into a temporary folder renamed into place on success. A bad image is reported as one
``error:`` line and leaves no folder; the others are still done and the exit code is then 2.

With ``--text`` (and the detector flags every subcommand shares) the masks are named: each
takes the phrase of the detector box it overlaps best (box IoU >= ``--name-iou``), with that
detection's score; the others stay ``"object"``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from grounded_sam.cli._common import (
    UsageError,
    add_debug_arg,
    add_detector_args,
    add_sam_args,
    check_output_args,
    detector_kwargs,
    run_per_image,
    step_progress,
)
from grounded_sam.errors import InputError

__all__ = ["add_parser", "name_masks", "records_to_result"]

_KNOBS = (
    # flag, knob, type, help
    ("--points-per-side", "points_per_side", int, "grid points per side (default 32)"),
    ("--points-per-batch", "points_per_batch", int, "points decoded at once (default 64)"),
    ("--crop-n-layers", "crop_n_layers", int, "extra crop layers (default 0)"),
    ("--min-area", "min_mask_region_area", float, "fill holes / drop islands under A px"),
    ("--pred-iou-thresh", "pred_iou_thresh", float, "predicted-IoU filter"),
    ("--stability-score-thresh", "stability_score_thresh", float, "stability filter"),
    ("--box-nms-thresh", "box_nms_thresh", float, "NMS box IoU (default 0.7)"),
)


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``everything`` on ``subparsers``."""
    parser = subparsers.add_parser(
        "everything",
        help="segment everything in images (SAM's automatic mask generator)",
        description=(
            "Prompt SAM with a regular grid of points (and optionally crops), keep the good "
            "masks, drop duplicates. Writes <out>/<stem>/result.json, overlay.png and masks/."
        ),
    )
    add_debug_arg(parser)
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    add_sam_args(parser)
    knobs = parser.add_argument_group(
        "automatic mask generator (defaults: the model family's, as Meta's generators)"
    )
    for flag, knob, typ, text in _KNOBS:
        knobs.add_argument(flag, dest=knob, type=typ, default=None, metavar="N", help=text)
    parser.add_argument(
        "--text",
        default=None,
        metavar="T",
        help="name the masks with a detector: each takes the phrase of the box it overlaps best",
    )
    parser.add_argument(
        "--name-iou",
        type=float,
        default=0.5,
        metavar="F",
        help="with --text: least box IoU between a mask and a detection (default 0.5)",
    )
    add_detector_args(parser)
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder")
    parser.set_defaults(func=run)
    return parser


def records_to_result(records: list[dict], image: np.ndarray):
    """Generator records (``output_mode="binary_mask"``) -> a :class:`grounded_sam.Result`.

    Boxes become XYXY pixel edges (Meta's inclusive ``bbox`` + 1 on the far side); labels are
    ``"object"``; ``scores`` and ``mask_scores`` are the predicted IoUs.
    """
    from grounded_sam.pipeline import Result

    h, w = image.shape[:2]
    n = len(records)
    masks = np.stack([r["segmentation"] for r in records]) if n else np.zeros((0, h, w), bool)
    boxes = np.zeros((n, 4), np.float32)
    for i, r in enumerate(records):
        if r["area"] > 0:
            x, y, bw, bh = r["bbox"]
            boxes[i] = (x, y, x + bw + 1, y + bh + 1)
    iou = np.array([r["predicted_iou"] for r in records], np.float32)
    return Result(
        masks=masks,
        boxes=boxes,
        scores=iou,
        mask_scores=iou,
        labels=["object"] * n,
        image_size=(h, w),
        image=image,
    )


def name_masks(result, detections, min_iou: float = 0.5):
    """Label the masks of an automatic ``result`` with ``detections`` (same image): each mask
    takes the label and score of the detection whose box overlaps its box best, when that box
    IoU is at least ``min_iou``; the others keep their label. Returns a new Result."""
    import torch
    from torchvision.ops import box_iou

    from grounded_sam.result import Result

    labels, scores = list(result.labels), result.scores.copy()
    if len(result) and len(detections):
        iou = box_iou(torch.from_numpy(result.boxes), torch.from_numpy(detections.boxes)).numpy()
        best = iou.argmax(axis=1)
        for i, j in enumerate(best):
            if iou[i, j] >= min_iou:
                labels[i], scores[i] = detections.labels[j], detections.scores[j]
    return Result(
        masks=result.masks,
        boxes=result.boxes,
        scores=scores,
        mask_scores=result.mask_scores,
        labels=labels,
        image_size=result.image_size,
        timings=result.timings,
        image=result.image,
    )


def _summary(path: str, result, seconds: float, where: Path) -> str:
    n = len(result)
    return f"{path}: {n} mask{'s' if n != 1 else ''} in {seconds:.2f} s -> {where}"


def run(args: argparse.Namespace) -> int:
    """Segment every image; 0 if all were done, 2 if any was bad (the rest still done)."""
    from grounded_sam.automatic import AutomaticMaskGenerator
    from grounded_sam.model.build import build_sam

    out = check_output_args(args)
    knobs = {k: getattr(args, k) for _, k, _, _ in _KNOBS if getattr(args, k) is not None}
    # validate the knobs before loading any weights (InputError names the knob -> exit 2)
    try:
        AutomaticMaskGenerator.validate_knobs(**knobs)
    except InputError as e:  # name the flag, not the Python keyword
        message = str(e)
        for flag, knob, _, _ in _KNOBS:
            if message.startswith(f"{knob} "):
                message = flag + message[len(knob) :]
        raise UsageError(message) from None
    phrases = None
    if args.text is not None:
        from grounded_sam.phrases import parse_phrases

        phrases = parse_phrases(args.text)
        if not 0.0 <= args.name_iou <= 1.0:
            raise UsageError(f"--name-iou expects a number in [0, 1], got {args.name_iou}")
    kw = detector_kwargs(args) if phrases is not None else {}
    sam = build_sam(
        args.sam, checkpoint=args.sam_checkpoint, device=args.device, precision=args.precision
    )
    generator = AutomaticMaskGenerator(sam, **knobs)
    pipe = None
    if phrases is not None:
        from grounded_sam.pipeline import GroundedSAM

        pipe = GroundedSAM(args.detector, generator.predictor, **kw)
        pipe.detector  # noqa: B018 - a bad detector option fails once, up front

    def process(image):
        points = step_progress("point batches")
        result = records_to_result(generator.generate(image, progress=points), image)
        if pipe is not None:
            result = name_masks(result, pipe.detect(image, phrases)[0], args.name_iou)
        return result

    return run_per_image(args, out, process, _summary, desc="everything")
