"""Masks, boxes and points: the one place their encodings and checks live.

Used by results, exports, evaluation, automatic masks and the data engine.

Conventions:
- masks are ``(H, W)`` or ``(N, H, W)`` bool arrays at the original image size;
- boxes are XYXY float pixels with exclusive right/bottom edges (a mask covering columns
  3..5 has ``x0 = 3, x1 = 6``), except where a function says "inclusive" (Meta's automatic
  generator's convention);
- COCO RLE is compressed RLE with ``counts`` as a ``str`` (JSON-ready), ``size`` ``[H, W]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from grounded_sam.errors import InputError

__all__ = [
    "check_boxes",
    "check_points",
    "clip_boxes",
    "decode_rle",
    "encode_rle",
    "finite_array",
    "mask_to_box",
    "masks_to_boxes",
    "rle_area",
    "rle_to_bbox",
    "uncompressed_rle_to_mask",
]


# --------------------------------------------------------------------------- validation
def finite_array(value: object, name: str, *, dtype=np.float64) -> np.ndarray:
    """``np.asarray(value, dtype)``, refusing non-numeric input and NaN/inf (``InputError``)."""
    try:
        arr = np.asarray(value, dtype=dtype)
    except (TypeError, ValueError) as e:
        raise InputError(f"{name} must be a numeric array, got {type(value).__name__}") from e
    if not np.all(np.isfinite(arr)):
        raise InputError(f"{name} contains NaN or inf: {value!r}")
    return arr


def check_boxes(boxes: object, name: str = "boxes") -> np.ndarray:
    """Validate XYXY boxes: (N, 4) finite with x1 >= x0 and y1 >= y0. Returns float64 (N, 4)."""
    arr = finite_array(boxes, name)
    if arr.ndim == 1 and arr.shape[0] == 4:
        arr = arr[None]
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise InputError(f"{name} must have shape (N, 4) as x0, y0, x1, y1; got shape {arr.shape}")
    bad = np.nonzero((arr[:, 2] < arr[:, 0]) | (arr[:, 3] < arr[:, 1]))[0]
    if bad.size:
        raise InputError(
            f"{name}[{bad[0]}] = {arr[bad[0]].tolist()} is not XYXY: need x1 >= x0 and y1 >= y0"
        )
    return arr


def clip_boxes(
    boxes: object, image_size: tuple[int, int], name: str = "boxes", *, strict: bool = True
) -> np.ndarray:
    """Clip (N, 4) XYXY boxes to an (H, W) image; float32 (N, 4).

    With ``strict`` a box with no area left inside the image is an ``InputError`` (a user's
    prompt that misses the image); without, boxes are only clipped (a detector's output).
    """
    b = check_boxes(boxes, name) if strict else np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    h, w = image_size
    clipped = b.copy()
    clipped[:, [0, 2]] = clipped[:, [0, 2]].clip(0, w)
    clipped[:, [1, 3]] = clipped[:, [1, 3]].clip(0, h)
    if strict:
        bad = np.nonzero((clipped[:, 2] <= clipped[:, 0]) | (clipped[:, 3] <= clipped[:, 1]))[0]
        if bad.size:
            i = int(bad[0])
            raise InputError(
                f"{name}[{i}] = {b[i].tolist()} is degenerate: it has no area inside the "
                f"{w}x{h} (WxH) image after clipping; give x0 < x1 and y0 < y1 overlapping "
                "the image"
            )
    return clipped.astype(np.float32)


def check_points(
    points: object,
    point_labels: object,
    image_size: tuple[int, int] | None = None,
    *,
    names: tuple[str, str] = ("points", "point_labels"),
) -> tuple[np.ndarray, np.ndarray]:
    """Validate (P, 2) xy pixel points and their (P,) labels (1 foreground, 0 background).

    ``point_labels=None`` means all foreground. With ``image_size`` (H, W) every point must
    lie inside the image (a user's prompt); without, any finite point is accepted (Meta's
    predictor takes points outside the image). ``names`` name the arguments in messages.
    Returns (float64 (P, 2), int64 (P,)).
    """
    pname, lname = names
    coords = finite_array(points, pname)
    if coords.ndim == 1 and coords.shape[0] == 2:
        coords = coords[None]
    if coords.ndim != 2 or coords.shape[1] != 2 or coords.shape[0] == 0:
        raise InputError(f"{pname} must have shape (N, 2) as x, y pixels, got {coords.shape}")
    if image_size is not None:
        h, w = image_size
        outside = np.nonzero(
            (coords[:, 0] < 0) | (coords[:, 0] > w) | (coords[:, 1] < 0) | (coords[:, 1] > h)
        )[0]
        if outside.size:
            i = int(outside[0])
            raise InputError(
                f"point {coords[i].tolist()} lies outside the {w}x{h} (WxH) image; "
                f"points are x in [0, {w}], y in [0, {h}] pixels"
            )
    if point_labels is None:
        return coords, np.ones(coords.shape[0], dtype=np.int64)
    labels = finite_array(point_labels, lname)
    if labels.shape != (coords.shape[0],):
        raise InputError(
            f"{lname} must have shape ({coords.shape[0]},) to match {pname}, got {labels.shape}"
        )
    if not np.isin(labels, (0, 1)).all():
        raise InputError(
            f"{lname} must be 1 (foreground) or 0 (background), got {np.unique(labels).tolist()}"
        )
    return coords, labels.astype(np.int64)


# --------------------------------------------------------------------------- boxes
def check_prompt(
    point_coords: object,
    point_labels: object,
    box: object,
    mask_input: object,
    mask_input_size: tuple[int, int],
) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None, np.ndarray | None]:
    """Validate one prompt of ``predict()`` (SamPredictor's and OnnxSamPredictor's).

    Args:
        point_coords, point_labels: (N, 2) xy pixels and (N,) labels in {0, 1}, both or
            neither.
        box: (4,) or (1, 4) XYXY pixels, or None.
        mask_input: (1, h, w) low-resolution logits of a previous call, or None.
        mask_input_size: the model's (h, w) for ``mask_input``.
    Returns:
        coords float64 (N, 2), labels int64 (N,), box float64 (1, 4), mask float32 (1, h, w);
        each None where not given.
    """
    coords = labels = b = m = None
    if point_coords is not None or point_labels is not None:
        if point_coords is None or point_labels is None:
            raise InputError("point_coords and point_labels must be given together")
        coords, labels = check_points(
            point_coords, point_labels, names=("point_coords", "point_labels")
        )
    if box is not None:
        b = check_boxes(box, "box")
        if b.shape[0] != 1:
            raise InputError(
                f"predict() takes one box of shape (4,) or (1, 4), got {b.shape}; "
                "use predict_boxes() for several"
            )
    if mask_input is not None:
        m = finite_array(mask_input, "mask_input", dtype=np.float32)
        expected = (1, *mask_input_size)
        if m.shape != expected:
            raise InputError(
                f"mask_input must have shape {expected} (the low_res_logits of a previous call, "
                f"one mask), got {m.shape}"
            )
    return coords, labels, b, m


def masks_to_boxes(masks: np.ndarray) -> np.ndarray:
    """(N, H, W) bool -> (N, 4) float32 XYXY tight boxes (exclusive right/bottom edges);
    an empty mask gives zeros."""
    masks = np.asarray(masks, dtype=bool)
    out = np.zeros((masks.shape[0], 4), dtype=np.float32)
    for i, m in enumerate(masks):
        rows, cols = np.flatnonzero(m.any(axis=1)), np.flatnonzero(m.any(axis=0))
        if rows.size:
            out[i] = (cols[0], rows[0], cols[-1] + 1, rows[-1] + 1)
    return out


def mask_to_box(mask: np.ndarray) -> np.ndarray:
    """(H, W) bool -> (4,) float32 XYXY tight box (exclusive edges); zeros when empty."""
    return masks_to_boxes(np.asarray(mask)[None])[0]


# --------------------------------------------------------------------------- COCO RLE
def encode_rle(masks: np.ndarray, chunk: int = 64) -> list[dict[str, Any]]:
    """(N, H, W) (or one (H, W)) bool -> COCO compressed RLEs ``{"size": [H, W], "counts": str}``.

    pycocotools encodes in C, ``chunk`` masks per call (bounded memory for the Fortran copy).
    """
    from pycocotools import mask as mask_utils

    masks = np.asarray(masks)
    if masks.ndim == 2:
        masks = masks[None]
    if masks.ndim != 3:
        raise InputError(f"masks must be (N, H, W) or (H, W), got shape {masks.shape}")
    out: list[dict[str, Any]] = []
    for i in range(0, masks.shape[0], chunk):
        block = np.asfortranarray(masks[i : i + chunk].transpose(1, 2, 0).astype(np.uint8))
        for rle in mask_utils.encode(block):
            out.append(
                {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}
            )
    return out


def _to_pycoco(rle: dict[str, Any], height: int | None = None, width: int | None = None):
    """A COCO segmentation (compressed/uncompressed RLE or polygons) -> pycocotools RLE."""
    from pycocotools import mask as mask_utils

    if isinstance(rle, dict):
        if "size" not in rle or "counts" not in rle:
            raise InputError(f"an RLE needs 'size' and 'counts', got keys {sorted(rle)}")
        h, w = (int(v) for v in rle["size"])
        counts = rle["counts"]
        if isinstance(counts, list):  # uncompressed
            return mask_utils.frPyObjects(rle, h, w)
        if isinstance(counts, str):
            counts = counts.encode("ascii")
        return {"size": [h, w], "counts": counts}
    if isinstance(rle, list):  # polygons
        if height is None or width is None:
            raise InputError("polygon segmentations need the image's height and width")
        polys = [p for p in rle if len(p) >= 6]
        if not polys:
            raise InputError("a polygon segmentation needs at least one polygon of 3 points")
        return mask_utils.merge(mask_utils.frPyObjects(polys, height, width))
    raise InputError(f"unsupported segmentation of type {type(rle).__name__}")


def decode_rle(
    segmentation: dict[str, Any] | list, height: int | None = None, width: int | None = None
) -> np.ndarray:
    """A COCO segmentation (compressed or uncompressed RLE, or polygons with ``height`` and
    ``width``) -> (H, W) bool mask."""
    from pycocotools import mask as mask_utils

    return mask_utils.decode(_to_pycoco(segmentation, height, width)).astype(bool)


def rle_area(segmentation: dict[str, Any]) -> int:
    """Pixels inside an RLE, without decoding it."""
    from pycocotools import mask as mask_utils

    return int(mask_utils.area(_to_pycoco(segmentation)))


def rle_to_bbox(segmentation: dict[str, Any]) -> list[float]:
    """COCO ``bbox`` [x, y, w, h] of an RLE (its tight box, exclusive edges)."""
    from pycocotools import mask as mask_utils

    return [float(v) for v in mask_utils.toBbox(_to_pycoco(segmentation))]


def uncompressed_rle_to_mask(rle: dict[str, Sequence[int]]) -> np.ndarray:
    """Uncompressed (column-major) RLE -> (H, W) bool mask."""
    h, w = rle["size"]
    counts = np.asarray(rle["counts"], dtype=np.int64)
    values = np.arange(len(counts)) % 2 == 1
    flat = np.repeat(values, counts)
    if flat.size != h * w:
        raise InputError(f"RLE counts sum to {flat.size}, expected {h * w} for size {[h, w]}")
    return flat.reshape(w, h).T
