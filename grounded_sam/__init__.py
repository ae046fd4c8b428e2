"""grounded-sam: text-promptable Segment Anything.

Public API (see README)::

    from grounded_sam import segment, GroundedSAM, Result, build_sam, list_models
    from grounded_sam import SamPredictor, AutomaticMaskGenerator, load_image, weights

Names are resolved lazily (PEP 562) so ``import grounded_sam`` stays cheap and has no
side effects; each name lives in the module listed in ``_EXPORTS``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "segment": "grounded_sam.pipeline",
    "GroundedSAM": "grounded_sam.pipeline",
    "Result": "grounded_sam.pipeline",
    "build_sam": "grounded_sam.model.build",
    "list_models": "grounded_sam.model.build",
    "Sam": "grounded_sam.model.sam",
    "SamPredictor": "grounded_sam.predictor",
    "AutomaticMaskGenerator": "grounded_sam.automatic",
    "load_image": "grounded_sam.io",
}

__all__ = [
    "AutomaticMaskGenerator",
    "GroundedSAM",
    "Result",
    "Sam",
    "SamPredictor",
    "__version__",
    "build_sam",
    "list_models",
    "load_image",
    "segment",
    "weights",
]


def __getattr__(name: str) -> Any:
    if name == "weights":
        return importlib.import_module("grounded_sam.weights")
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'grounded_sam' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


if TYPE_CHECKING:  # pragma: no cover
    from grounded_sam import weights
    from grounded_sam.automatic import AutomaticMaskGenerator
    from grounded_sam.io import load_image
    from grounded_sam.model.build import build_sam, list_models
    from grounded_sam.model.sam import Sam
    from grounded_sam.pipeline import GroundedSAM, Result, segment
    from grounded_sam.predictor import SamPredictor
