"""``Result``: the instances found in one image (data and validation only).

Export (COCO, JSON, PNG) lives in :mod:`grounded_sam.export` and drawing in
:mod:`grounded_sam.visualize`; the methods here are thin shortcuts to them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from grounded_sam.errors import InputError

__all__ = ["Result", "TIMING_KEYS"]

TIMING_KEYS = ("detector", "encoder", "decoder", "total")


@dataclass(eq=False)
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
            raise InputError(f"image_size must be (H, W), got {self.image_size!r}")
        h, w = (int(v) for v in self.image_size)
        if h <= 0 or w <= 0:
            raise InputError(f"image_size must be positive (H, W), got {self.image_size!r}")
        self.image_size = (h, w)
        masks = np.asarray(self.masks)
        if masks.size == 0:
            masks = masks.reshape(0, h, w)
        if masks.ndim != 3 or masks.shape[1:] != (h, w):
            raise InputError(
                f"Result.masks must have shape (N, {h}, {w}) to match image_size, got {masks.shape}"
            )
        n = masks.shape[0]
        boxes = np.asarray(self.boxes, dtype=np.float32)
        if boxes.size == 0:
            boxes = boxes.reshape(0, 4)
        if boxes.shape != (n, 4):
            raise InputError(f"Result.boxes must have shape ({n}, 4), got {boxes.shape}")
        scores = np.asarray(self.scores, dtype=np.float32).reshape(-1)
        mask_scores = np.asarray(self.mask_scores, dtype=np.float32).reshape(-1)
        for name, arr in (("scores", scores), ("mask_scores", mask_scores)):
            if arr.shape != (n,):
                raise InputError(f"Result.{name} must have shape ({n},), got {arr.shape}")
        labels = list(self.labels)
        if len(labels) != n or not all(isinstance(s, str) for s in labels):
            raise InputError(f"Result.labels must be {n} strings, got {labels!r}")
        if self.image is not None:
            img = np.asarray(self.image)
            if img.shape != (h, w, 3) or img.dtype != np.uint8:
                raise InputError(
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

    # ------------------------------------------------------------------ shortcuts
    def category_ids(self, category_ids: dict[str, int] | None = None) -> dict[str, int]:
        """Label -> COCO category id (see :func:`grounded_sam.export.category_ids`)."""
        from grounded_sam.export import category_ids as _ids

        return _ids(self, category_ids)

    def to_coco(
        self,
        image_id: int = 1,
        category_ids: dict[str, int] | None = None,
        *,
        first_annotation_id: int = 1,
    ) -> list[dict]:
        """COCO annotation dicts with RLE masks (see :func:`grounded_sam.export.to_coco`)."""
        from grounded_sam.export import to_coco

        return to_coco(self, image_id, category_ids, first_annotation_id=first_annotation_id)

    def to_json(self, image_id: int = 1, category_ids: dict[str, int] | None = None) -> dict:
        """What :meth:`save` writes as ``result.json`` (see :func:`grounded_sam.export.to_json`)."""
        from grounded_sam.export import to_json

        return to_json(self, image_id, category_ids)

    def overlay(self, image: np.ndarray | None = None, alpha: float = 0.5) -> np.ndarray:
        """The image with coloured masks, boxes and labels: ``(H, W, 3)`` uint8 RGB.

        Args:
            image: the image (anything ``load_image`` accepts); default the kept :attr:`image`.
            alpha: mask opacity in ``[0, 1]``.
        Raises:
            InputError: no image given and none kept, or an image of another size.
        """
        from grounded_sam.visualize import draw_result

        return draw_result(self, image, alpha=alpha)

    def save(
        self,
        out_dir: str | os.PathLike,
        image: np.ndarray | None = None,
        *,
        image_id: int = 1,
        category_ids: dict[str, int] | None = None,
        alpha: float = 0.5,
    ) -> Path:
        """Write ``result.json``, ``overlay.png`` and ``masks/NNN_<label>.png`` into ``out_dir``
        (see :func:`grounded_sam.export.save_result`). Returns ``Path(out_dir)``."""
        from grounded_sam.export import save_result

        return save_result(
            self, out_dir, image, image_id=image_id, category_ids=category_ids, alpha=alpha
        )
