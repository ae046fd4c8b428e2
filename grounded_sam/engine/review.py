"""The review queue: what a person should look at first (SAM's semi-automatic phase).

Each item of ``review.json`` is ``{"image_id", "annotation_id" (null for an image-level
item), "file_name", "priority", "reasons": [codes], "detail": text}``; the list is sorted by
priority (highest first), then image id, then annotation id (image-level first).

Reasons of an annotation (each adds its severity to the priority):

==================== ============================================================ ========
code                 when                                                         severity
==================== ============================================================ ========
low_score            detector score within ``score_margin`` of its class           0.5-1.0
                     threshold (or below ``min_score`` when the threshold is unknown)
low_mask_score       SAM's predicted IoU below ``min_mask_score``                  0.5-1.0
low_stability        SAM's stability score below ``min_stability``                 0.5-1.0
class_overlap        overlaps an instance of another class (mask IoU >= 0.25), or   0.8
                     suppressed one under ``--exclusive``
prompt_disagreement  two prompts of its class disagree about this object's extent   0.6
==================== ============================================================ ========

Image-level reasons: ``negative_suppressed`` (a negative caption removed a detection, 0.5),
``empty_masks`` (SAM gave an empty mask for a detected box, 0.4), ``candidates``
(unlabelled candidate regions, 0.3), ``empty`` (no instance at all: check for missed
objects, 0.2). The graded severities grow linearly from 0.5 at the limit to 1.0 at a
shortfall of one ``scale`` below it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from grounded_sam.engine.dataset import ImageUnit

__all__ = ["ReviewPolicy", "review_items", "sort_review"]


@dataclass(frozen=True)
class ReviewPolicy:
    """The limits below which an annotation goes to the review queue."""

    score_margin: float = 0.1
    min_score: float = 0.4
    min_mask_score: float = 0.8
    min_stability: float = 0.9


def _graded(value: float, limit: float, scale: float) -> float:
    return 0.5 + 0.5 * min(1.0, max(0.0, (limit - value) / max(scale, 1e-9)))


def review_items(
    unit: ImageUnit,
    image_id: int,
    annotation_ids: Sequence[int],
    thresholds: Sequence[float | None],
    category_names: Sequence[str],
    policy: ReviewPolicy | None = None,
) -> list[dict[str, Any]]:
    """The review items of one labelled image.

    Args:
        unit: the image's ``ok`` unit.
        image_id: its id in ``annotations.json``.
        annotation_ids: the ids given to ``unit.instances``, in order.
        thresholds: per category (id - 1): the score its boxes had to exceed, or ``None``.
        category_names: per category (id - 1).
    """
    policy = policy or ReviewPolicy()
    items = []
    for ann_id, inst in zip(annotation_ids, unit.instances, strict=True):
        reasons, details, priority = [], [], 0.0
        cid = inst["category_id"]
        thr = thresholds[cid - 1] if cid - 1 < len(thresholds) else None
        score = inst["score"]
        limit = (thr + policy.score_margin) if thr is not None else policy.min_score
        if score < limit:
            reasons.append("low_score")
            priority += _graded(score, limit, policy.score_margin)
            what = f"class threshold {thr:.2f}" if thr is not None else f"{limit:.2f}"
            details.append(f"detector score {score:.2f} is close to the {what}")
        if inst["mask_score"] < policy.min_mask_score:
            reasons.append("low_mask_score")
            priority += _graded(inst["mask_score"], policy.min_mask_score, 0.3)
            details.append(
                f"SAM predicted IoU {inst['mask_score']:.2f} < {policy.min_mask_score:.2f}"
            )
        if inst["stability"] < policy.min_stability:
            reasons.append("low_stability")
            priority += _graded(inst["stability"], policy.min_stability, 0.3)
            details.append(f"mask stability {inst['stability']:.2f} < {policy.min_stability:.2f}")
        flags = inst.get("flags", {})
        if flags.get("class_overlap"):
            reasons.append("class_overlap")
            priority += 0.8
            details.append(
                f"{category_names[cid - 1]} overlaps {', '.join(flags['class_overlap'])}"
            )
        if flags.get("prompt_disagreement"):
            reasons.append("prompt_disagreement")
            priority += 0.6
            others = ", ".join(repr(p) for p in flags["prompt_disagreement"])
            details.append(f"prompt {inst['prompt']!r} disagrees with {others}")
        if reasons:
            items.append(_item(unit, image_id, ann_id, priority, reasons, details))
    reasons, details, priority = [], [], 0.0
    notes = unit.notes
    if notes.get("negative_suppressed"):
        n = notes["negative_suppressed"]
        reasons.append("negative_suppressed")
        priority += 0.5
        details.append(f"{n} detection{'s' if n != 1 else ''} removed by a negative caption")
    if notes.get("empty_masks"):
        n = notes["empty_masks"]
        reasons.append("empty_masks")
        priority += 0.4
        details.append(f"{n} detected box{'es' if n != 1 else ''} got an empty SAM mask")
    if unit.candidates:
        n = len(unit.candidates)
        reasons.append("candidates")
        priority += 0.3
        details.append(f"{n} unlabelled candidate region{'s' if n != 1 else ''}")
    if not unit.instances:
        reasons.append("empty")
        priority += 0.2
        details.append("no instance found: check for missed objects")
    if reasons:
        items.append(_item(unit, image_id, None, priority, reasons, details))
    return items


def _item(unit, image_id, ann_id, priority, reasons, details) -> dict[str, Any]:
    return {
        "image_id": image_id,
        "annotation_id": ann_id,
        "file_name": unit.file_name,
        "priority": round(priority, 4),
        "reasons": reasons,
        "detail": "; ".join(details),
    }


def sort_review(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Most urgent first; ties by image id, then image-level before annotation items."""
    return sorted(
        items,
        key=lambda d: (
            -d["priority"],
            d["image_id"],
            -1 if d["annotation_id"] is None else d["annotation_id"],
        ),
    )
