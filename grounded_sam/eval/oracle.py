"""The ``gt-boxes`` oracle: a detector that answers with the ground-truth boxes.

Prompting SAM with the ground-truth boxes of the prompted category measures the SAM core
alone (SAM's own box-prompt evaluation protocol): any loss against a perfect score comes from
the masks, not from finding the objects.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from grounded_sam.detectors import Detections, normalize_phrases
from grounded_sam.errors import InputError
from grounded_sam.io import ImageLike

__all__ = ["GT_BOXES", "GtBoxesDetector"]

GT_BOXES = "gt-boxes"


class GtBoxesDetector:
    """Detector whose answer is set by the evaluation runner before each prompt.

    Call :meth:`set_target` with the ``(K, 4)`` float32 XYXY pixel boxes of the prompted
    category in the current image; :meth:`detect` then returns them with score 1.0, labelled
    with the first phrase of the text it is asked for. The target is consumed by one
    ``detect`` call, so a stale target can never answer for another prompt.
    """

    def __init__(self) -> None:
        self._boxes: np.ndarray | None = None

    def set_target(self, boxes: np.ndarray) -> None:
        """Boxes ``(K, 4)`` XYXY in original-image pixels (``K`` may be 0) for the next call."""
        b = np.asarray(boxes, dtype=np.float32)
        if b.size == 0:
            b = b.reshape(0, 4)
        if b.ndim != 2 or b.shape[1] != 4:
            raise InputError(f"gt-boxes target must have shape (K, 4) XYXY, got {b.shape}")
        self._boxes = b

    def detect(self, image: ImageLike, text: str | Sequence[str]) -> Detections:
        if self._boxes is None:
            raise RuntimeError(
                "the gt-boxes oracle has no target: call set_target(boxes) before each prompt "
                "(the evaluation runner does this)"
            )
        boxes, self._boxes = self._boxes, None
        label = normalize_phrases(text)[0]
        n = boxes.shape[0]
        return Detections(boxes=boxes, scores=np.ones(n, np.float32), labels=[label] * n)
