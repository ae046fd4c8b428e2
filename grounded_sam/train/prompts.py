"""Prompt simulation for training, as in SAM's training (SAM paper, appendix A "Training
algorithm"; SAM 2's ``sam2/training/utils/data_utils`` and ``model/sam2.py`` for the numbers).

- The first prompt of each mask is a box or one point, with equal probability
  (``box_prob``). The box is the mask's tight box with each coordinate moved by uniform noise
  of up to ``noise`` (10%) of the box side, at most ``max_px`` (20) pixels, in the original
  image (SAM: "random noise with standard deviation equal to 10% of the box sidelength, to a
  maximum of 20 pixels"; SAM 2's code draws it uniformly in that range, which is what we do).
  The point is drawn uniformly from the mask.
- Each later round adds one correction click drawn uniformly from the error region of the
  previous prediction (a positive click in a false-negative pixel, a negative one in a
  false-positive pixel: SAM's "subsequent points are selected uniformly from the error
  region"), and gives the previous low-resolution logits as the mask prompt.
- Refinement rounds give only the previous logits (no new click), so the model learns to
  improve its own mask: SAM uses two, one last and one at a random place among the clicks.

Frames: boxes and the first points are drawn in original-image pixels and moved to the model
frame by the model's ``transform_coords``; the ground truth and the correction clicks live in
the low-resolution logit frame (``low_res`` x ``low_res``, 4 model pixels per cell), where a
cell ``(i, j)`` is the model point ``(4 j + 1.5, 4 i + 1.5)`` (SAM's point convention: pixel
indices, the prompt encoder adds 0.5).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "jitter_box",
    "lowres_to_model",
    "lowres_target",
    "round_plan",
    "sample_correction",
    "sample_point",
]


def jitter_box(
    box: np.ndarray,
    image_size: tuple[int, int],
    rng: np.random.Generator,
    noise: float = 0.1,
    max_px: float = 20.0,
) -> np.ndarray:
    """(4,) XYXY box with each coordinate moved by ``U(-d, d)``, ``d = min(noise * side,
    max_px)`` (side: width for x, height for y), clipped to the (H, W) image and kept at least
    one pixel wide and high. Returns float64 (4,)."""
    x0, y0, x1, y1 = (float(v) for v in box)
    h, w = image_size
    dx = min(noise * (x1 - x0), max_px)
    dy = min(noise * (y1 - y0), max_px)
    jitter = rng.uniform(-1.0, 1.0, 4) * np.array([dx, dy, dx, dy])
    b = np.array([x0, y0, x1, y1]) + jitter
    b[[0, 2]] = b[[0, 2]].clip(0, w)
    b[[1, 3]] = b[[1, 3]].clip(0, h)
    b[2] = max(b[2], min(b[0] + 1, w))
    b[3] = max(b[3], min(b[1] + 1, h))
    b[0] = min(b[0], b[2] - 1)
    b[1] = min(b[1], b[3] - 1)
    return b


def sample_point(mask: np.ndarray, rng: np.random.Generator) -> tuple[float, float]:
    """(x, y) of a pixel drawn uniformly from ``mask`` (bool (H, W), not empty)."""
    idx = np.flatnonzero(mask)
    k = int(idx[rng.integers(len(idx))])
    return float(k % mask.shape[1]), float(k // mask.shape[1])


def lowres_target(
    mask: np.ndarray, input_size: tuple[int, int], img_size: int, low_res: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ground truth in the low-resolution logit frame, and its pixel weights.

    ``mask`` (H, W) bool is resized to the image's part of the model input (``input_size``,
    bilinear, antialiased when shrinking), placed in the top-left corner of the
    ``img_size`` square as SAM pads it, and averaged over each ``img_size / low_res`` cell:
    the exact inverse of how predictions are brought back (upsample, crop, resize). Returns
    (target (1, L, L) float32 in [0, 1], weight (1, L, L) float32: the fraction of each cell
    inside the image, 0 on padding).
    """
    h, w = input_size
    m = torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))[None, None]
    shrink = h < mask.shape[0] or w < mask.shape[1]
    m = F.interpolate(m, size=(h, w), mode="bilinear", align_corners=False, antialias=shrink)
    pad = (0, img_size - w, 0, img_size - h)
    k = img_size // low_res
    target = F.avg_pool2d(F.pad(m, pad), k)[0]
    weight = F.avg_pool2d(F.pad(torch.ones(1, 1, h, w), pad), k)[0]
    return target.clamp_(0, 1), weight


def sample_correction(
    logits: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor,
    rng: np.random.Generator,
    img_size: int,
) -> tuple[np.ndarray, np.ndarray]:
    """One correction click per prompt, uniform over its error region.

    Args:
        logits: (B, L, L) previous low-resolution logits; target, weight: (B, L, L).
        img_size: side of the model input (the frame of the returned coordinates).
    Returns:
        (coords (B, 2) float32 xy in the model frame, labels (B,) int64: 1 for a click in a
        false-negative cell, 0 in a false-positive one, -1 (padding, ignored by the prompt
        encoder) when the prediction has no error).
    """
    pred = (logits > 0).cpu().numpy()
    gt = (target > 0.5).cpu().numpy()
    valid = (weight > 0.5).cpu().numpy()
    err = (pred != gt) & valid
    b, _, width = err.shape
    coords = np.zeros((b, 2), np.float32)
    labels = np.full(b, -1, np.int64)
    for i in range(b):
        idx = np.flatnonzero(err[i])
        if idx.size == 0:
            continue
        k = int(idx[rng.integers(idx.size)])
        y, x = divmod(k, width)
        labels[i] = int(gt[i, y, x])
        coords[i] = (x, y)
    return lowres_to_model(coords, img_size, width).astype(np.float32), labels


def lowres_to_model(coords: np.ndarray, img_size: int, low_res: int) -> np.ndarray:
    """Low-res cell (x, y) -> the model-frame point at its centre (SAM's point convention)."""
    k = img_size / low_res
    return coords * k + (k / 2 - 0.5)


def round_plan(correction_clicks: int, refine_rounds: int, rng: np.random.Generator) -> list[str]:
    """The decoder rounds of one step: ``"prompt"`` (the box or point), then the correction
    ``"click"`` rounds with the ``"refine"`` rounds (no new click) among them: one last, the
    others at random places after the first click (SAM's placement)."""
    plan = ["click"] * correction_clicks
    if refine_rounds > 0:
        for _ in range(refine_rounds - 1):
            plan.insert(int(rng.integers(1, len(plan) + 1)) if plan else 0, "refine")
        plan.append("refine")
    return ["prompt", *plan]
