"""Vectorised helpers for :mod:`grounded_sam.automatic` (point grids, crops, boxes, RLE).

Conventions shared with ``segment_anything.utils.amg`` so outputs are interchangeable:

* boxes are XYXY **inclusive** pixel indices ``[left, top, right, bottom]`` (an empty mask
  gives ``[0, 0, 0, 0]``); ``bbox`` in output records is ``[x, y, right - x, bottom - y]``;
* uncompressed RLE is ``{"size": [H, W], "counts": [...]}`` over the mask in column-major
  (Fortran) order, starting with a run of zeros (``0`` when the first pixel is set).
"""

from __future__ import annotations

import math
from itertools import product
from typing import Any

import numpy as np
import torch

__all__ = [
    "build_point_grid",
    "build_all_layer_point_grids",
    "generate_crop_boxes",
    "stability_score",
    "masks_to_boxes",
    "near_crop_edge",
    "masks_to_uncompressed_rle",
    "remove_small_regions",
]


# --------------------------------------------------------------------------- grids / crops
def build_point_grid(n_per_side: int) -> np.ndarray:
    """(n*n, 2) float64 xy points, evenly spaced cell centres of the unit square, row-major."""
    offset = 1.0 / (2 * n_per_side)
    side = np.linspace(offset, 1 - offset, n_per_side)
    xs = np.tile(side[None, :], (n_per_side, 1))
    ys = np.tile(side[:, None], (1, n_per_side))
    return np.stack([xs, ys], axis=-1).reshape(-1, 2)


def build_all_layer_point_grids(
    n_per_side: int, n_layers: int, scale_per_layer: int
) -> list[np.ndarray]:
    """One grid per crop layer; layer ``i`` has ``int(n_per_side / scale_per_layer**i)`` per side."""
    return [build_point_grid(int(n_per_side / (scale_per_layer**i))) for i in range(n_layers + 1)]


def generate_crop_boxes(
    im_size: tuple[int, int], n_layers: int, overlap_ratio: float
) -> tuple[list[list[int]], list[int]]:
    """SAM's crop pyramid: the whole image, then ``(2**i)**2`` overlapping crops in layer ``i``.

    Returns XYXY integer crop boxes in the image frame and the layer of each.
    """
    im_h, im_w = im_size
    short_side = min(im_h, im_w)
    boxes: list[list[int]] = [[0, 0, im_w, im_h]]
    layers = [0]
    for i_layer in range(n_layers):
        n = 2 ** (i_layer + 1)
        overlap = int(overlap_ratio * short_side * (2 / n))
        crop_w = int(math.ceil((overlap * (n - 1) + im_w) / n))
        crop_h = int(math.ceil((overlap * (n - 1) + im_h) / n))
        x0s = [int((crop_w - overlap) * i) for i in range(n)]
        y0s = [int((crop_h - overlap) * i) for i in range(n)]
        for x0, y0 in product(x0s, y0s):
            boxes.append([x0, y0, min(x0 + crop_w, im_w), min(y0 + crop_h, im_h)])
            layers.append(i_layer + 1)
    return boxes, layers


# --------------------------------------------------------------------------- logits -> masks
def stability_score(logits: torch.Tensor, threshold: float, offset: float) -> torch.Tensor:
    """(N, H, W) logits -> (N,) float32 IoU of the masks at ``threshold +- offset``.

    The high-threshold mask lies inside the low one, so the IoU is a ratio of areas.
    An all-below mask gives NaN (0 / 0), which fails any threshold, as in SAM.
    """
    inter = (logits > (threshold + offset)).sum((-1, -2), dtype=torch.int32)
    union = (logits > (threshold - offset)).sum((-1, -2), dtype=torch.int32)
    return inter / union


def masks_to_boxes(masks: torch.Tensor) -> torch.Tensor:
    """(N, H, W) bool -> (N, 4) int64 XYXY inclusive pixel indices; empty masks -> zeros."""
    n, h, w = masks.shape
    if n == 0:
        return torch.zeros((0, 4), dtype=torch.int64, device=masks.device)
    rows = masks.any(dim=2)  # (N, H)
    cols = masks.any(dim=1)  # (N, W)
    ar_h = torch.arange(h, device=masks.device)
    ar_w = torch.arange(w, device=masks.device)
    top = torch.where(rows, ar_h, h).amin(dim=1)
    bottom = torch.where(rows, ar_h, -1).amax(dim=1)
    left = torch.where(cols, ar_w, w).amin(dim=1)
    right = torch.where(cols, ar_w, -1).amax(dim=1)
    boxes = torch.stack([left, top, right, bottom], dim=1)
    empty = ~rows.any(dim=1)
    return boxes.masked_fill(empty[:, None], 0)


def near_crop_edge(
    boxes: torch.Tensor, crop_box: list[int], orig_box: list[int], atol: float = 20.0
) -> torch.Tensor:
    """(N,) bool: the box (image frame) lies within ``atol`` px of a crop edge that is not
    also an image edge, i.e. the mask was probably cut by the crop."""
    crop = torch.as_tensor(crop_box, dtype=torch.float, device=boxes.device)
    orig = torch.as_tensor(orig_box, dtype=torch.float, device=boxes.device)
    b = boxes.float()
    at_crop = torch.isclose(b, crop[None], atol=atol, rtol=0)
    at_image = torch.isclose(b, orig[None], atol=atol, rtol=0)
    return (at_crop & ~at_image).any(dim=1)


# --------------------------------------------------------------------------- encodings
def masks_to_uncompressed_rle(masks: torch.Tensor) -> list[dict[str, Any]]:
    """(N, H, W) bool -> N uncompressed RLEs (column-major), computed for all masks at once."""
    n, h, w = masks.shape
    if n == 0:
        return []
    flat = masks.transpose(1, 2).reshape(n, h * w)
    change = (flat[:, 1:] != flat[:, :-1]).nonzero()  # (K, 2) sorted by mask, then position
    first = flat[:, 0].cpu().numpy()
    change = change.cpu().numpy()
    per_mask = np.bincount(change[:, 0], minlength=n)
    splits = np.split(change[:, 1] + 1, np.cumsum(per_mask)[:-1])
    out = []
    for i in range(n):
        edges = np.concatenate(([0], splits[i], [h * w]))
        counts = np.diff(edges).tolist()
        if first[i]:
            counts = [0, *counts]
        out.append({"size": [h, w], "counts": counts})
    return out


def remove_small_regions(
    mask: np.ndarray, area_thresh: float, mode: str
) -> tuple[np.ndarray, bool]:
    """Fill holes (``mode="holes"``) or drop islands (``"islands"``) smaller than
    ``area_thresh`` px (8-connectivity). Returns the (H, W) bool mask and whether it changed.
    If every island is small, the largest is kept."""
    import cv2

    if mode not in ("holes", "islands"):
        raise ValueError(f"mode must be 'holes' or 'islands', got {mode!r}")
    holes = mode == "holes"
    working = (mask ^ holes).astype(np.uint8)
    n_labels, regions, stats, _ = cv2.connectedComponentsWithStats(working, connectivity=8)
    sizes = stats[1:, cv2.CC_STAT_AREA]
    small = np.nonzero(sizes < area_thresh)[0] + 1
    if small.size == 0:
        return mask, False
    if holes:
        fill = np.concatenate(([0], small))  # background of the inverted mask + small holes
    else:
        fill = np.setdiff1d(np.arange(1, n_labels), small)
        if fill.size == 0:
            fill = np.array([int(np.argmax(sizes)) + 1])
    return np.isin(regions, fill), True


def match_masks(
    ref: torch.Tensor, ours: torch.Tensor, iou_thresh: float
) -> tuple[int, torch.Tensor]:
    """How many masks of ``ref`` have a *distinct* partner in ``ours`` with mask IoU >= ``iou_thresh``.

    Args:
        ref: (N, H, W) bool; ours: (M, H, W) bool, same H, W.
    Returns:
        (number of matched pairs in a maximum one-to-one matching, (N, M) float64 IoU matrix).
    """
    from scipy.optimize import linear_sum_assignment

    n, m = len(ref), len(ours)
    if n == 0 or m == 0:
        return 0, torch.zeros((n, m), dtype=torch.float64)
    a = ref.flatten(1).to(torch.float32)
    b = ours.flatten(1).to(torch.float32).to(a.device)
    inter = (a @ b.T).double()  # exact: 0/1 products, counts < 2**24 for images < 16 MP
    union = a.sum(1).double()[:, None] + b.sum(1).double()[None, :] - inter
    iou = (inter / union.clamp_min(1)).cpu()
    ok = (iou >= iou_thresh).numpy()
    rows, cols = linear_sum_assignment(-ok.astype(np.float64))
    return int(ok[rows, cols].sum()), iou
