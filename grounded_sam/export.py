"""Writers for :class:`~grounded_sam.result.Result`: COCO annotations with RLE masks, the
``result.json`` document and the per-instance PNG masks that ``segment`` saves."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np

from grounded_sam.masks import encode_rle
from grounded_sam.result import Result, check_export_args

__all__ = ["category_ids", "safe_name", "save_result", "to_coco", "to_json"]


def safe_name(label: str, limit: int = 40) -> str:
    """A file-name-safe form of a label: ``"a dog's tail"`` -> ``"a_dog_s_tail"``."""
    name = re.sub(r"[^A-Za-z0-9]+", "_", label).strip("_")[:limit].strip("_")
    return name or "object"


def category_ids(result: Result, ids: dict[str, int] | None = None) -> dict[str, int]:
    """Label -> COCO category id. Default: ids 1, 2, ... in order of first appearance.

    Raises:
        InputError: ``ids`` is not a ``{label: int}`` dict covering every label of the result.
    """
    check_export_args(result.labels, category_ids=ids)
    if ids is None:
        return {label: i + 1 for i, label in enumerate(dict.fromkeys(result.labels))}
    return {str(k): int(v) for k, v in ids.items()}


def to_coco(
    result: Result,
    image_id: int = 1,
    ids: dict[str, int] | None = None,
    *,
    first_annotation_id: int = 1,
) -> list[dict]:
    """COCO-style annotation dicts (a detection-results list with extra fields).

    Each dict: ``id``, ``image_id``, ``category_id`` (from ``ids``, a ``{label: id}`` map;
    default ids 1.. in order of first appearance), ``segmentation`` (compressed RLE
    ``{"size": [H, W], "counts": str}``, decodable with ``pycocotools.mask.decode``),
    ``area`` (mask pixels), ``bbox`` ``[x, y, w, h]`` from ``result.boxes``, ``score``,
    ``mask_score``, ``label`` and ``iscrowd`` (0).

    Raises:
        InputError: ``image_id`` or ``first_annotation_id`` not an integer, or ``ids`` not a
            ``{label: int}`` dict covering every label.
    """
    check_export_args(result.labels, image_id, ids, first_annotation_id)
    cats = category_ids(result, ids)
    rles = encode_rle(result.masks)
    out = []
    for i, rle in enumerate(rles):
        x0, y0, x1, y1 = (float(v) for v in result.boxes[i])
        out.append(
            {
                "id": first_annotation_id + i,
                "image_id": int(image_id),
                "category_id": cats[result.labels[i]],
                "segmentation": rle,
                "area": int(result.masks[i].sum()),
                "bbox": [x0, y0, x1 - x0, y1 - y0],
                "score": float(result.scores[i]),
                "mask_score": float(result.mask_scores[i]),
                "label": result.labels[i],
                "iscrowd": 0,
            }
        )
    return out


def to_json(result: Result, image_id: int = 1, ids: dict[str, int] | None = None) -> dict:
    """The ``result.json`` document: image size, categories, annotations (:func:`to_coco`)
    and timings. Raises :class:`InputError` as :func:`to_coco`."""
    check_export_args(result.labels, image_id, ids)
    cats = category_ids(result, ids)
    return {
        "image": {
            "id": int(image_id),
            "height": result.image_size[0],
            "width": result.image_size[1],
        },
        "categories": [
            {"id": cats[label], "name": label} for label in dict.fromkeys(result.labels)
        ],
        "annotations": to_coco(result, image_id=image_id, ids=cats),
        "timings": dict(result.timings),
    }


def save_result(
    result: Result,
    out_dir: str | os.PathLike,
    image: np.ndarray | None = None,
    *,
    image_id: int = 1,
    category_ids: dict[str, int] | None = None,
    alpha: float = 0.5,
) -> Path:
    """Write ``result.json`` (:func:`to_json`), ``overlay.png`` and ``masks/NNN_<label>.png``.

    ``masks/`` holds one 8-bit PNG per instance (255 inside, 0 outside), numbered from 000 in
    instance order. ``overlay.png`` is written when an image is available (``image`` or
    ``result.image``) and skipped otherwise. ``out_dir`` is created; existing files of the same
    names are overwritten and stale ``masks/NNN_*.png`` of an earlier save are removed. For an
    all-or-nothing write use :func:`grounded_sam.cli._common.atomic_dir`. Returns
    ``Path(out_dir)``.
    """
    from PIL import Image

    from grounded_sam.visualize import draw_result, result_image

    out = Path(out_dir)
    img = None if image is None and result.image is None else result_image(result, image)
    doc = to_json(result, image_id=image_id, ids=category_ids)
    mask_dir = out / "masks"
    mask_dir.mkdir(parents=True, exist_ok=True)
    for old in mask_dir.glob("*.png"):
        if re.fullmatch(r"\d{3,}_.*\.png", old.name):
            old.unlink()
    for i, label in enumerate(result.labels):
        Image.fromarray(result.masks[i].astype(np.uint8) * 255).save(
            mask_dir / f"{i:03d}_{safe_name(label)}.png"
        )
    if img is not None:
        Image.fromarray(draw_result(result, img, alpha=alpha)).save(out / "overlay.png")
    (out / "result.json").write_text(json.dumps(doc, indent=1) + "\n")
    return out
