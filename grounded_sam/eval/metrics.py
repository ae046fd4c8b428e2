"""Evaluation metrics.

* COCO mask AP / AP50 / AP75 (and by object size) with ``pycocotools.cocoeval.COCOeval`` on
  the predictions as written to ``predictions.json``.
* mIoU over (image, prompt) pairs: IoU of the union of the predicted masks against the union
  of the ground-truth masks. An empty prediction scores 0 against a non-empty ground truth; an
  empty ground truth with an empty prediction scores 1 (with a non-empty prediction, 0).
* cIoU (cumulative IoU, the RefCOCO convention): total intersection / total union over pairs.
* Latency: median / p90 / mean per stage, in milliseconds.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from grounded_sam.errors import InputError

__all__ = [
    "AP_KEYS",
    "coco_mask_ap",
    "ciou",
    "encode_mask",
    "intersection_union",
    "latency_summary",
    "miou",
    "pair_iou",
    "peak_memory",
]

# The mask-AP entries of metrics.json, in pycocotools' summary order.
AP_KEYS = (
    "mask_AP",
    "mask_AP50",
    "mask_AP75",
    "mask_AP_small",
    "mask_AP_medium",
    "mask_AP_large",
)


def intersection_union(pred: np.ndarray, gt: np.ndarray) -> tuple[int, int]:
    """Pixel counts ``(|pred & gt|, |pred | gt|)`` of two ``(H, W)`` bool masks."""
    pred = np.asarray(pred, dtype=bool)
    gt = np.asarray(gt, dtype=bool)
    if pred.shape != gt.shape:
        raise InputError(f"prediction mask shape {pred.shape} differs from ground truth {gt.shape}")
    return int(np.count_nonzero(pred & gt)), int(np.count_nonzero(pred | gt))


def pair_iou(intersection: int, union: int) -> float:
    """IoU of one pair; ``union == 0`` (both masks empty) scores 1.0."""
    return 1.0 if union == 0 else float(intersection) / float(union)


def miou(pairs: Iterable[tuple[int, int]]) -> float | None:
    """Mean of :func:`pair_iou` over ``(intersection, union)`` pairs; ``None`` for no pairs."""
    ious = [pair_iou(i, u) for i, u in pairs]
    return float(np.mean(ious)) if ious else None


def ciou(pairs: Iterable[tuple[int, int]]) -> float | None:
    """Cumulative IoU: sum of intersections / sum of unions; ``None`` for no pairs.

    With every pair empty on both sides the result is 1.0, matching :func:`pair_iou`.
    """
    pairs = list(pairs)
    if not pairs:
        return None
    inter = sum(i for i, _ in pairs)
    union = sum(u for _, u in pairs)
    return pair_iou(inter, union)


def encode_mask(mask: np.ndarray) -> tuple[dict, list[float], float]:
    """COCO RLE of an ``(H, W)`` bool mask: ``(rle with str counts, bbox xywh, area)``."""
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(np.asarray(mask, dtype=np.uint8)))
    bbox = [float(v) for v in mask_utils.toBbox(rle)]
    area = float(mask_utils.area(rle))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle, bbox, area


def coco_mask_ap(
    gt: Mapping[str, Any] | Any,
    predictions: Sequence[Mapping[str, Any]],
    image_ids: Sequence[int],
) -> tuple[dict[str, float | None], str]:
    """COCO mask AP of ``predictions`` (COCO results format, RLE) on ``image_ids``.

    Args:
        gt: COCO instances dict or a ``pycocotools.coco.COCO``.
        predictions: list of ``{"image_id", "category_id", "segmentation", "score"}``.
        image_ids: the images evaluated (those without predictions count as misses).

    Returns:
        ``({"mask_AP": ..., "mask_AP50": ..., "mask_AP75": ..., "mask_AP_small": ...}, summary)``
        with values in ``[0, 1]``, ``None`` where COCOeval reports -1 (no ground truth in that
        bucket), and the text COCOeval prints. With no predictions at all AP is 0.0 wherever
        there is ground truth (pycocotools cannot load an empty result list).
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    if isinstance(gt, COCO):
        coco_gt = gt
    else:
        coco_gt = COCO()
        coco_gt.dataset = dict(gt)
        with contextlib.redirect_stdout(io.StringIO()):
            coco_gt.createIndex()
    image_ids = sorted(int(i) for i in image_ids)
    ids = set(image_ids)
    preds = [dict(p) for p in predictions if int(p["image_id"]) in ids]
    if not image_ids:
        return {k: None for k in AP_KEYS}, "no images evaluated\n"
    if not preds:
        n_gt = len(coco_gt.getAnnIds(imgIds=image_ids, iscrowd=False))
        value = 0.0 if n_gt else None
        return {k: value for k in AP_KEYS}, "no predictions: AP is 0 where there is ground truth\n"
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        coco_dt = coco_gt.loadRes(preds)
        ev = COCOeval(coco_gt, coco_dt, iouType="segm")
        ev.params.imgIds = image_ids
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    stats = [float(s) for s in ev.stats[:6]]
    out = {k: (None if s < 0 else s) for k, s in zip(AP_KEYS, stats, strict=True)}
    summary = "\n".join(line for line in buf.getvalue().splitlines() if "Average" in line) + "\n"
    return out, summary


def latency_summary(samples: Mapping[str, Sequence[float]]) -> dict[str, dict[str, float]]:
    """``{stage: [seconds, ...]}`` -> ``{stage: {"median", "p90", "mean"} in ms, "n"}``."""
    out: dict[str, dict[str, float]] = {}
    for stage, values in samples.items():
        v = np.asarray(list(values), dtype=np.float64) * 1000.0
        if v.size == 0:
            continue
        out[stage] = {
            "median": float(np.median(v)),
            "p90": float(np.percentile(v, 90)),
            "mean": float(v.mean()),
            "n": int(v.size),
        }
    return out


def peak_memory(device: Any) -> dict[str, Any]:
    """Peak memory of this process on ``device``.

    CUDA: ``torch.cuda.max_memory_allocated`` (tensors only; reset at the start of the run).
    CPU: the peak resident set size of the process (``resource.ru_maxrss`` on Unix, else the
    current RSS from psutil), which includes model loading.
    """
    dev = str(device) if device is not None else "cpu"
    if dev.startswith("cuda"):
        import torch

        if torch.cuda.is_available():
            return {
                "device": dev,
                "kind": "torch.cuda.max_memory_allocated",
                "mb": torch.cuda.max_memory_allocated(torch.device(dev)) / 2**20,
            }
    try:
        import resource
        import sys

        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        mb = (
            rss / 2**20 if sys.platform == "darwin" else rss / 2**10
        )  # bytes on macOS, KiB on Linux
        return {"device": dev, "kind": "process peak RSS (ru_maxrss)", "mb": float(mb)}
    except ImportError:  # Windows
        import psutil

        return {
            "device": dev,
            "kind": "process RSS at the end (psutil)",
            "mb": psutil.Process().memory_info().rss / 2**20,
        }
