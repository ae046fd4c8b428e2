"""Text-to-box detectors behind one interface.

    from grounded_sam.detectors import build_detector, list_detectors, Detections, Detector

    det = build_detector("grounding-dino")          # or "yolo-clip", or an entry-point name
    dets = det.detect(image, "a cat. a dog.")       # Detections(boxes, scores, labels, masks)

Every detector receives the phrases of :func:`grounded_sam.phrases.parse_phrases` and labels
each box with one of them as written. Detectors declare their options (:class:`Option`) and
capabilities; the CLI builds the same flags from them for every subcommand.

The detector classes import transformers / ultralytics / open_clip only when built.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from grounded_sam._lazy import lazy_exports
from grounded_sam.detectors.base import (
    ENTRY_POINT_GROUP,
    BaseDetector,
    Detections,
    Detector,
    Option,
    build_detector,
    detector_capabilities,
    detector_options,
    list_detectors,
    normalize_phrases,
    register_detector,
)

_LAZY = {
    "GroundingDinoDetector": "grounded_sam.detectors.grounding_dino",
    "YoloClipDetector": "grounded_sam.detectors.yolo_clip",
}

__all__ = [
    "ENTRY_POINT_GROUP",
    "BaseDetector",
    "Detections",
    "Detector",
    "Option",
    "build_detector",
    "detector_capabilities",
    "detector_options",
    "list_detectors",
    "normalize_phrases",
    "register_detector",
    "GroundingDinoDetector",
    "YoloClipDetector",
]


__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals())


if TYPE_CHECKING:  # pragma: no cover
    from grounded_sam.detectors.grounding_dino import GroundingDinoDetector
    from grounded_sam.detectors.yolo_clip import YoloClipDetector
