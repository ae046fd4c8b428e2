"""``grounded-sam everything IMAGE... --sam NAME --out DIR``: segment everything (no prompt).

Runs :class:`grounded_sam.AutomaticMaskGenerator` on each image and writes, per image,
``<out>/<stem>/result.json`` (COCO-style annotations with RLE, label ``"object"``, score =
SAM's predicted IoU), ``overlay.png`` (a distinct colour per mask) and ``masks/NNN_object.png``,
into a temporary folder renamed into place on success. A bad image is reported as one
``error:`` line and leaves no folder; the others are still done and the exit code is then 2.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from grounded_sam.cli._common import (
    add_debug_arg,
    add_sam_args,
    check_output_args,
    run_per_image,
)

__all__ = ["add_parser", "records_to_result"]


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
    parser.add_argument(
        "--points-per-side",
        type=int,
        default=32,
        metavar="N",
        help="grid points per side (default 32)",
    )
    parser.add_argument(
        "--points-per-batch",
        type=int,
        default=64,
        metavar="N",
        help="points decoded at once (default 64)",
    )
    parser.add_argument(
        "--crop-n-layers", type=int, default=0, metavar="N", help="extra crop layers (default 0)"
    )
    parser.add_argument(
        "--min-area",
        type=float,
        default=0,
        metavar="A",
        help="fill holes / drop islands under A px (default 0: off)",
    )
    parser.add_argument(
        "--pred-iou-thresh",
        type=float,
        default=0.88,
        metavar="F",
        help="predicted-IoU filter (default 0.88)",
    )
    parser.add_argument(
        "--stability-score-thresh",
        type=float,
        default=0.95,
        metavar="F",
        help="stability filter (default 0.95)",
    )
    parser.add_argument(
        "--box-nms-thresh", type=float, default=0.7, metavar="F", help="NMS box IoU (default 0.7)"
    )
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


def _summary(path: str, result, seconds: float, where: Path) -> str:
    n = len(result)
    return f"{path}: {n} mask{'s' if n != 1 else ''} in {seconds:.2f} s -> {where}"


def run(args: argparse.Namespace) -> int:
    """Segment every image; 0 if all were done, 2 if any was bad (the rest still done)."""
    from grounded_sam.automatic import AutomaticMaskGenerator
    from grounded_sam.model.build import build_sam

    out = check_output_args(args)
    knobs = dict(
        points_per_side=args.points_per_side,
        points_per_batch=args.points_per_batch,
        crop_n_layers=args.crop_n_layers,
        min_mask_region_area=args.min_area,
        pred_iou_thresh=args.pred_iou_thresh,
        stability_score_thresh=args.stability_score_thresh,
        box_nms_thresh=args.box_nms_thresh,
    )
    # validate the knobs before loading any weights (ValueError names the knob -> exit 2)
    AutomaticMaskGenerator.validate_knobs(**knobs)
    sam = build_sam(
        args.sam, checkpoint=args.sam_checkpoint, device=args.device, precision=args.precision
    )
    generator = AutomaticMaskGenerator(sam, **knobs)

    return run_per_image(
        args,
        out,
        lambda image: records_to_result(generator.generate(image), image),
        _summary,
        desc="everything",
    )
