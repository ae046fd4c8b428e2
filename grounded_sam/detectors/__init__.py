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

import importlib
from typing import TYPE_CHECKING, Any

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


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'grounded_sam.detectors' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted(__all__)


if TYPE_CHECKING:  # pragma: no cover
    from grounded_sam.detectors.grounding_dino import GroundingDinoDetector
    from grounded_sam.detectors.yolo_clip import YoloClipDetector
