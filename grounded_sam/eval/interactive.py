"""Interactive evaluation: simulated correction clicks per ground-truth mask (the SAM paper's
point-prompt protocol), beside box-prompt mIoU and the trivial "fill the box" mask.

Protocol (SAM paper, section 7.1 and appendix D.1, following RITM, Sofiiuk et al. 2022):

1. the first click is positive, at the point of the ground-truth mask farthest from its
   boundary (the image border counts as boundary; among equally far points, the one
   nearest their mean position), and is decoded with
   ``multimask_output=True``, keeping the output with the highest predicted IoU (a single
   point is ambiguous);
2. every next click goes to the centre (the point farthest from its boundary) of the
   largest connected error region between the current prediction and the ground truth:
   positive in a false-negative region, negative in a false-positive one; all clicks so far
   are given together with the previous low-resolution logits as the mask prompt, decoded
   with one output;
3. IoU is measured at the original image size after each click.

Reported, as means over ground-truth masks: ``mIoU@1``, ``mIoU@3``, ``mIoU@5`` (IoU after
that many clicks), ``NoC@85`` and ``NoC@90`` (clicks needed to reach that IoU, counted as
``max_clicks`` = 20 when never reached), beside ``box_mIoU`` (one decoder call with the
mask's tight box) and ``fill_box_mIoU`` (the IoU of the filled box itself: what a model that
only copies the box would score). A mask is clicked until both thresholds are reached and at
least five clicks are done, or ``max_clicks``, or the prediction is exact.

Everything runs through :class:`grounded_sam.SamPredictor`; the instances of one image are
clicked in lock-step, one decoder call per click for all of them.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from grounded_sam.errors import InputError, require

__all__ = [
    "CLICKS_REPORTED",
    "NOC_THRESHOLDS",
    "InstanceTrace",
    "evaluate_interactive",
    "first_click",
    "next_click",
    "render_interactive",
    "run_interactive",
    "summarize",
]

CLICKS_REPORTED = (1, 3, 5)
NOC_THRESHOLDS = (0.85, 0.90)
MAX_CLICKS = 20

CONVENTIONS = {
    "clicks": (
        "first click: positive, at the ground-truth pixel farthest from the mask boundary "
        "(image border included), multimask output, highest predicted IoU kept; next clicks: "
        "centre of the largest connected error region (positive if false negative, negative "
        "if false positive), all clicks + previous low-res logits as mask prompt, one output"
    ),
    "mIoU@k": "mean over ground-truth masks of the IoU after k clicks",
    "NoC@t": "mean number of clicks to reach IoU >= t, max_clicks when never reached",
    "box_mIoU": "mean IoU of the single-output mask for the tight ground-truth box",
    "fill_box_mIoU": "mean IoU of the filled tight box itself (no model)",
}


def _cv2():
    return require("cv2", feature="interactive evaluation", install="pip install opencv-python")


def _centre(region: np.ndarray) -> tuple[int, int]:
    """(x, y) of the pixel of ``region`` (bool (H, W), not empty) farthest from its boundary,
    the image border counting as boundary. Ties (a whole ridge of a long shape is equally
    far) go to the tied pixel nearest the ridge's mean position, then to the first in
    row-major order (RITM takes the first in row-major order: an end of the ridge)."""
    cv2 = _cv2()
    padded = np.pad(region, 1).astype(np.uint8)
    dist = cv2.distanceTransform(padded, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)[1:-1, 1:-1]
    ys, xs = np.nonzero(dist >= dist.max() - 1e-4)
    k = int(np.argmin((ys - ys.mean()) ** 2 + (xs - xs.mean()) ** 2))
    return int(xs[k]), int(ys[k])


def first_click(gt: np.ndarray) -> tuple[float, float]:
    """The first click on ``gt`` (bool (H, W), not empty): (x, y) of the mask's pixel
    farthest from its boundary, in SAM's point convention (pixel indices; the prompt encoder
    adds 0.5 to reach the pixel centre)."""
    x, y = _centre(np.asarray(gt, bool))
    return float(x), float(y)


def next_click(pred: np.ndarray, gt: np.ndarray) -> tuple[tuple[float, float], int] | None:
    """The correction click for prediction ``pred`` against ``gt`` (bool (H, W) each):
    ``((x, y) pixel, label)`` at the centre of the largest connected error region,
    label 1 in a false-negative region and 0 in a false-positive one; ``None`` when
    ``pred == gt``. Ties in area go to the false-negative region."""
    cv2 = _cv2()
    best: tuple[int, int, np.ndarray] | None = None  # (area, label, component)
    for label, err in ((1, gt & ~pred), (0, pred & ~gt)):
        if not err.any():
            continue
        n, comp, stats, _ = cv2.connectedComponentsWithStats(err.astype(np.uint8), connectivity=8)
        areas = stats[1:, cv2.CC_STAT_AREA]
        k = int(np.argmax(areas))
        if best is None or int(areas[k]) > best[0]:
            best = (int(areas[k]), label, comp == k + 1)
    if best is None:
        return None
    x, y = _centre(best[2])
    return (float(x), float(y)), best[1]


def _iou(pred: np.ndarray, gt: np.ndarray) -> float:
    union = np.count_nonzero(pred | gt)
    return 1.0 if union == 0 else np.count_nonzero(pred & gt) / union


def _fill_box(box: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    x0, y0, x1, y1 = (int(round(float(v))) for v in box)
    m = np.zeros(shape, bool)
    m[max(0, y0) : max(0, y1), max(0, x0) : max(0, x1)] = True
    return m


@dataclass
class InstanceTrace:
    """One ground-truth mask's results: ``ious[k]`` is the IoU after ``k + 1`` clicks (as
    many as were simulated), ``box_iou`` and ``fill_box_iou``."""

    image_id: int
    ann_id: int
    ious: list[float]
    box_iou: float
    fill_box_iou: float

    def iou_at(self, k: int) -> float:
        """IoU after ``k`` clicks; past the last simulated click (clicking stops only after
        five clicks, or at an exact prediction) the last IoU."""
        return self.ious[min(k, len(self.ious)) - 1]

    def noc(self, threshold: float, max_clicks: int) -> int:
        """Clicks needed to reach ``threshold`` (``max_clicks`` when never reached)."""
        for k, v in enumerate(self.ious[:max_clicks], start=1):
            if v >= threshold:
                return k
        return max_clicks


def _click_image(
    predictor: Any,
    image_id: int,
    ann_ids: Sequence[int],
    gts: Sequence[np.ndarray],
    boxes: np.ndarray,
    max_clicks: int,
) -> list[InstanceTrace]:
    """Box prompts and click simulation for the masks of the image set on ``predictor``."""
    import torch

    n = len(gts)
    box_masks, _ = predictor.predict_boxes(boxes, multimask_output=False)
    traces = [
        InstanceTrace(
            image_id,
            int(ann_ids[i]),
            [],
            _iou(box_masks[i, 0], gts[i]),
            _iou(_fill_box(boxes[i], gts[i].shape), gts[i]),
        )
        for i in range(n)
    ]
    coords = [[first_click(g)] for g in gts]
    labels = [[1] for _ in gts]
    prev: list[torch.Tensor | None] = [None] * n
    active = list(range(n))
    min_clicks, top = max(CLICKS_REPORTED), max(NOC_THRESHOLDS)
    for k in range(1, max_clicks + 1):
        pts = np.array([coords[i] for i in active], dtype=np.float64)  # (B, k, 2)
        lab = np.array([labels[i] for i in active], dtype=np.int64)
        first = k == 1
        mask_in = None if first else torch.stack([prev[i] for i in active])  # (B, 1, 256, 256)
        low_res, iou_pred = predictor.predict_low_res(
            pts, lab, mask_input=mask_in, multimask_output=first
        )
        best = iou_pred.argmax(dim=1)
        rows = torch.arange(len(active), device=low_res.device)
        chosen = low_res[rows, best][:, None]  # (B, 1, 256, 256)
        masks = predictor.postprocess(chosen)[:, 0] > predictor.model.mask_threshold
        masks = masks.cpu().numpy()
        still = []
        for j, i in enumerate(active):
            pred = masks[j]
            traces[i].ious.append(_iou(pred, gts[i]))
            prev[i] = chosen[j]
            done = k >= min_clicks and max(traces[i].ious) >= top
            click = None if done else next_click(pred, gts[i])
            if click is None:
                continue
            coords[i].append(click[0])
            labels[i].append(click[1])
            still.append(i)
        active = still
        if not active:
            break
    return traces


def evaluate_interactive(
    predictor: Any,
    images: Sequence[Any],
    masks: Callable[[int], tuple[list[int], list[np.ndarray], np.ndarray]],
    *,
    set_image: Callable[[int], None] | None = None,
    max_clicks: int = MAX_CLICKS,
    show_progress: bool = False,
    desc: str = "interactive",
) -> list[InstanceTrace]:
    """Per-mask traces for every image.

    Args:
        predictor: a :class:`grounded_sam.SamPredictor`.
        images: the images' infos (anything with ``image_id`` and ``path``).
        masks: ``masks(i) -> (annotation ids, [(H, W) bool masks], (K, 4) XYXY boxes)`` of
            image ``i``.
        set_image: ``set_image(i)`` makes image ``i`` current on ``predictor`` (e.g. from
            cached embeddings); default: ``predictor.set_image(load_image(path))``.
        max_clicks: clicks per mask at most (20 in the SAM paper).
    """
    if isinstance(max_clicks, bool) or not isinstance(max_clicks, int) or max_clicks < 5:
        raise InputError(f"max_clicks must be an integer >= 5, got {max_clicks!r}")
    from grounded_sam.cli._common import progress
    from grounded_sam.io import load_image

    traces: list[InstanceTrace] = []
    order = range(len(images))
    it = progress(order, total=len(images), desc=desc) if show_progress else order
    for i in it:
        ann_ids, gts, boxes = masks(i)
        if not gts:
            continue
        if set_image is None:
            predictor.set_image(load_image(images[i].path))
        else:
            set_image(i)
        if tuple(predictor.original_size) != gts[0].shape:
            raise InputError(
                f"image {images[i].path} is {tuple(predictor.original_size)} (H, W) but its "
                f"masks are {gts[0].shape}"
            )
        traces.extend(_click_image(predictor, images[i].image_id, ann_ids, gts, boxes, max_clicks))
    return traces


def summarize(traces: Sequence[InstanceTrace], max_clicks: int = MAX_CLICKS) -> dict[str, Any]:
    """The interactive metrics of ``traces`` (see the module docstring); ``None`` values for
    no traces."""
    n = len(traces)
    out: dict[str, Any] = {"n_masks": n, "max_clicks": max_clicks}

    def mean(values) -> float | None:
        values = list(values)
        return float(np.mean(values)) if values else None

    out["box_mIoU"] = mean(t.box_iou for t in traces)
    out["fill_box_mIoU"] = mean(t.fill_box_iou for t in traces)
    for k in CLICKS_REPORTED:
        out[f"mIoU@{k}"] = mean(t.iou_at(k) for t in traces)
    for thr in NOC_THRESHOLDS:
        out[f"NoC@{round(thr * 100)}"] = mean(t.noc(thr, max_clicks) for t in traces)
    return out


def render_interactive(metrics: dict[str, Any], title: str = "Interactive evaluation") -> str:
    """A markdown table of :func:`summarize`'s metrics (one column per run when ``metrics``
    maps run names to metric dicts)."""
    runs = metrics if all(isinstance(v, dict) for v in metrics.values()) else {"": metrics}
    keys = ["box_mIoU", "fill_box_mIoU", *(f"mIoU@{k}" for k in CLICKS_REPORTED)]
    keys += [f"NoC@{round(t * 100)}" for t in NOC_THRESHOLDS]
    head = "| metric | " + " | ".join(runs) + " |"
    lines = [f"## {title}", "", head, "|---|" + "---:|" * len(runs)]
    for key in keys:
        cells = []
        for m in runs.values():
            v = m.get(key)
            cells.append(
                "n/a" if v is None else f"{v:.2f}" if key.startswith("NoC") else f"{v:.3f}"
            )
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    first = next(iter(runs.values()))
    lines += [
        "",
        f"{first.get('n_masks')} ground-truth masks, at most {first.get('max_clicks')} clicks "
        "each; NoC counts a mask that never reaches the IoU as the maximum.",
        "",
    ]
    return "\n".join(lines)


def run_interactive(
    annotations: str | os.PathLike,
    images: str | os.PathLike,
    predictor: Any,
    out_dir: str | os.PathLike | None = None,
    *,
    limit: int | None = None,
    max_clicks: int = MAX_CLICKS,
    show_progress: bool = True,
) -> dict[str, Any]:
    """Interactive evaluation of ``predictor`` on a COCO instances file (one trace per
    non-crowd instance); writes ``interactive.json`` (metrics, conventions and per-mask
    IoUs) and ``interactive.md`` into ``out_dir`` when given. Returns the metrics."""
    from grounded_sam.train.data import load_instances

    data = load_instances(annotations, images, what="--annotations", limit=limit)

    def masks(i: int):
        idx = data.by_image.get(i, [])
        insts = [data.instances[j] for j in idx]
        boxes = np.stack([x.box for x in insts]) if insts else np.zeros((0, 4), np.float32)
        return [x.ann_id for x in insts], [x.mask() for x in insts], boxes

    t0 = time.perf_counter()
    traces = evaluate_interactive(
        predictor, data.images, masks, max_clicks=max_clicks, show_progress=show_progress
    )
    metrics = summarize(traces, max_clicks)
    metrics["seconds"] = time.perf_counter() - t0
    metrics["dataset"] = data.describe()
    if out_dir is not None:
        import json

        from grounded_sam.eval.runner import _write_atomic

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        record = {
            **metrics,
            "conventions": CONVENTIONS,
            "per_mask": [
                {
                    "image_id": t.image_id,
                    "ann_id": t.ann_id,
                    "ious": t.ious,
                    "box_iou": t.box_iou,
                    "fill_box_iou": t.fill_box_iou,
                }
                for t in traces
            ],  # fmt: skip
        }
        _write_atomic(out / "interactive.json", json.dumps(record, indent=1) + "\n")
        _write_atomic(out / "interactive.md", render_interactive(metrics))
    return metrics
