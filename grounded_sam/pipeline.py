"""The grounded pipeline: text -> detector boxes -> one batched SAM decoder call -> ``Result``.

from grounded_sam import segment, GroundedSAM

result = segment("cat.jpg", "a cat", detector="grounding-dino", sam="mobile_sam")
gs = GroundedSAM(detector="yolo-clip", sam="mobile_sam")
result = gs.segment(image, "a cat. a dog.")        # text prompt
result = gs.segment(image, points=[[120, 80]])      # SAM's own prompts, no detector
result.to_coco(image_id=1); result.save("out/cat"); result.overlay()
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = ["Result"]

TIMING_KEYS = ("detector", "encoder", "decoder", "total")


def _safe_name(label: str, limit: int = 40) -> str:
    """A file-name-safe form of a label: ``"a dog's tail"`` -> ``"a_dog_s_tail"``."""
    name = re.sub(r"[^A-Za-z0-9]+", "_", label).strip("_")[:limit].strip("_")
    return name or "object"


@dataclass
class Result:
    """Instances found in one image.

    Attributes:
        masks: ``(N, H, W)`` bool instance masks at the original image size.
        boxes: ``(N, 4)`` float32 XYXY boxes in original-image pixels (x right, y down),
            clipped to the image. For text prompts: the detector's boxes; for box prompts:
            the (clipped) boxes given; for point prompts: the bounding box of the mask
            (all zeros for an empty mask).
        scores: ``(N,)`` float32 instance confidence. For text prompts the detector's score;
            for point/box prompts (no detector) SAM's predicted IoU, i.e. equal to
            ``mask_scores``.
        mask_scores: ``(N,)`` float32 SAM predicted IoU of each mask. With
            ``refine_with_sam=False`` (detector masks used as they are) no SAM score exists
            and the detector's score is repeated here.
        labels: ``N`` strings: the detector phrase, or ``"point"`` / ``"box"`` for SAM prompts.
        image_size: ``(H, W)`` of the image.
        timings: seconds per stage: ``"detector"``, ``"encoder"`` (0.0 when the image
            embedding came from the cache), ``"decoder"`` and ``"total"`` (wall time of the
            whole ``segment`` call, image loading included). Empty for hand-built results.
        image: the ``(H, W, 3)`` uint8 RGB image the result belongs to, kept by reference
            (not copied, not compared, not saved in ``result.json``) so :meth:`overlay` and
            :meth:`save` can draw without being given the image again. ``None`` is allowed;
            then pass ``image=`` to those methods.
    """

    masks: np.ndarray
    boxes: np.ndarray
    scores: np.ndarray
    mask_scores: np.ndarray
    labels: list[str]
    image_size: tuple[int, int]
    timings: dict[str, float] = field(default_factory=dict)
    image: np.ndarray | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if len(self.image_size) != 2:
            raise ValueError(f"image_size must be (H, W), got {self.image_size!r}")
        h, w = (int(v) for v in self.image_size)
        if h <= 0 or w <= 0:
            raise ValueError(f"image_size must be positive (H, W), got {self.image_size!r}")
        self.image_size = (h, w)
        masks = np.asarray(self.masks)
        if masks.size == 0:
            masks = masks.reshape(0, h, w)
        if masks.ndim != 3 or masks.shape[1:] != (h, w):
            raise ValueError(
                f"Result.masks must have shape (N, {h}, {w}) to match image_size, got {masks.shape}"
            )
        n = masks.shape[0]
        boxes = np.asarray(self.boxes, dtype=np.float32)
        if boxes.size == 0:
            boxes = boxes.reshape(0, 4)
        if boxes.shape != (n, 4):
            raise ValueError(f"Result.boxes must have shape ({n}, 4), got {boxes.shape}")
        scores = np.asarray(self.scores, dtype=np.float32).reshape(-1)
        mask_scores = np.asarray(self.mask_scores, dtype=np.float32).reshape(-1)
        for name, arr in (("scores", scores), ("mask_scores", mask_scores)):
            if arr.shape != (n,):
                raise ValueError(f"Result.{name} must have shape ({n},), got {arr.shape}")
        labels = list(self.labels)
        if len(labels) != n or not all(isinstance(s, str) for s in labels):
            raise ValueError(f"Result.labels must be {n} strings, got {labels!r}")
        if self.image is not None:
            img = np.asarray(self.image)
            if img.shape != (h, w, 3) or img.dtype != np.uint8:
                raise ValueError(
                    f"Result.image must be an ({h}, {w}, 3) uint8 array, got shape {img.shape} "
                    f"dtype {img.dtype}"
                )
            self.image = img
        self.masks = masks.astype(bool, copy=False)
        self.boxes = boxes
        self.scores = scores
        self.mask_scores = mask_scores
        self.labels = labels
        self.timings = {str(k): float(v) for k, v in dict(self.timings).items()}

    def __len__(self) -> int:
        return int(self.masks.shape[0])

    @classmethod
    def empty(
        cls,
        image_size: tuple[int, int],
        *,
        timings: dict[str, float] | None = None,
        image: np.ndarray | None = None,
    ) -> Result:
        """A result with no instances (no detections is not an error)."""
        h, w = (int(v) for v in image_size)
        return cls(
            masks=np.zeros((0, h, w), dtype=bool),
            boxes=np.zeros((0, 4), dtype=np.float32),
            scores=np.zeros(0, dtype=np.float32),
            mask_scores=np.zeros(0, dtype=np.float32),
            labels=[],
            image_size=(h, w),
            timings=dict(timings or {}),
            image=image,
        )

    # ------------------------------------------------------------------ export
    def category_ids(self, category_ids: dict[str, int] | None = None) -> dict[str, int]:
        """Label -> COCO category id. Default: ids 1, 2, ... in order of first appearance.

        Raises:
            ValueError: a label of this result is missing from the given ``category_ids``.
        """
        if category_ids is None:
            return {label: i + 1 for i, label in enumerate(dict.fromkeys(self.labels))}
        missing = sorted(set(self.labels) - set(category_ids))
        if missing:
            raise ValueError(
                f"category_ids has no id for the labels {missing}; "
                f"give one for every label, got keys {sorted(category_ids)}"
            )
        return {str(k): int(v) for k, v in category_ids.items()}

    def to_coco(
        self,
        image_id: int = 1,
        category_ids: dict[str, int] | None = None,
        *,
        first_annotation_id: int = 1,
    ) -> list[dict]:
        """COCO-style annotation dicts (a detection-results list with extra fields).

        Each dict: ``id``, ``image_id``, ``category_id`` (from ``category_ids``, a
        ``{label: id}`` map; default ids 1.. in order of first appearance), ``segmentation``
        (compressed RLE ``{"size": [H, W], "counts": str}``, decodable with
        ``pycocotools.mask.decode``), ``area`` (mask pixels), ``bbox`` ``[x, y, w, h]`` from
        :attr:`boxes`, ``score``, ``mask_score``, ``label`` and ``iscrowd`` (0).
        """
        from pycocotools import mask as mask_utils

        ids = self.category_ids(category_ids)
        out = []
        for i in range(len(self)):
            m = np.asfortranarray(self.masks[i].astype(np.uint8))
            rle = mask_utils.encode(m)
            rle["counts"] = rle["counts"].decode("ascii")
            x0, y0, x1, y1 = (float(v) for v in self.boxes[i])
            out.append(
                {
                    "id": first_annotation_id + i,
                    "image_id": int(image_id),
                    "category_id": ids[self.labels[i]],
                    "segmentation": {
                        "size": [int(v) for v in rle["size"]],
                        "counts": rle["counts"],
                    },
                    "area": int(self.masks[i].sum()),
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "score": float(self.scores[i]),
                    "mask_score": float(self.mask_scores[i]),
                    "label": self.labels[i],
                    "iscrowd": 0,
                }
            )
        return out

    def to_json(self, image_id: int = 1, category_ids: dict[str, int] | None = None) -> dict:
        """What :meth:`save` writes as ``result.json``: image size, categories, annotations
        (:meth:`to_coco`) and timings."""
        ids = self.category_ids(category_ids)
        used = dict.fromkeys(self.labels)
        return {
            "image": {
                "id": int(image_id),
                "height": self.image_size[0],
                "width": self.image_size[1],
            },
            "categories": [{"id": ids[label], "name": label} for label in used],
            "annotations": self.to_coco(image_id=image_id, category_ids=ids),
            "timings": dict(self.timings),
        }

    def overlay(self, image: np.ndarray | None = None, alpha: float = 0.5) -> np.ndarray:
        """The image with coloured masks (a distinct colour per instance), boxes and labels.

        Args:
            image: ``(H, W, 3)`` uint8 RGB (or anything ``load_image`` accepts); default the
                image kept in :attr:`image`.
            alpha: mask opacity in ``[0, 1]``.
        Returns:
            ``(H, W, 3)`` uint8 RGB.
        Raises:
            RuntimeError: no image given and none kept in the result.
        """
        from grounded_sam.visualize import draw_overlay

        img = self._image_for(image)
        return draw_overlay(
            img, self.masks, self.boxes, self.labels, self.scores, alpha=float(alpha)
        )

    def _image_for(self, image) -> np.ndarray:
        if image is None:
            if self.image is None:
                raise RuntimeError(
                    "this Result keeps no image: pass it, e.g. result.overlay(image=...)"
                )
            return self.image
        from grounded_sam.io import load_image

        img = load_image(image)
        if img.shape[:2] != self.image_size:
            raise ValueError(
                f"image has size {img.shape[:2]} but the result is for an image of size "
                f"{self.image_size} (H, W)"
            )
        return img

    def save(
        self,
        out_dir: str | os.PathLike,
        image: np.ndarray | None = None,
        *,
        image_id: int = 1,
        category_ids: dict[str, int] | None = None,
        alpha: float = 0.5,
    ) -> Path:
        """Write ``result.json`` (:meth:`to_json`), ``overlay.png`` and ``masks/NNN_<label>.png``.

        ``masks/`` holds one 8-bit PNG per instance (255 inside, 0 outside), numbered from 000
        in instance order. ``overlay.png`` is written when an image is available (``image``
        or :attr:`image`) and skipped otherwise. ``out_dir`` is created; existing files of
        the same names are overwritten. For an all-or-nothing write use the CLI's
        ``atomic_dir``. Returns ``Path(out_dir)``.
        """
        from PIL import Image

        out = Path(out_dir)
        img = None if image is None and self.image is None else self._image_for(image)
        doc = self.to_json(image_id=image_id, category_ids=category_ids)
        mask_dir = out / "masks"
        mask_dir.mkdir(parents=True, exist_ok=True)
        for i, label in enumerate(self.labels):
            Image.fromarray(self.masks[i].astype(np.uint8) * 255).save(
                mask_dir / f"{i:03d}_{_safe_name(label)}.png"
            )
        if img is not None:
            Image.fromarray(self.overlay(img, alpha=alpha)).save(out / "overlay.png")
        (out / "result.json").write_text(json.dumps(doc, indent=1) + "\n")
        return out
