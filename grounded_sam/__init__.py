"""grounded-sam: text-promptable Segment Anything.

Public API (see README)::

    from grounded_sam import segment, GroundedSAM, Result, build_sam, list_models
    from grounded_sam import SamPredictor, AutomaticMaskGenerator, load_image, weights
    from grounded_sam import label, merge, Labeler, finetune  # the data engine
    from grounded_sam import export_onnx, OnnxSamPredictor  # deployment

Names are resolved lazily (PEP 562) so ``import grounded_sam`` stays cheap and has no
side effects; each name lives in the module listed in ``_EXPORTS``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from grounded_sam._lazy import lazy_exports

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
    "weights": "grounded_sam.weights",
    "errors": "grounded_sam.errors",
    "InputError": "grounded_sam.errors",
    "WeightsError": "grounded_sam.errors",
    "MissingDependency": "grounded_sam.errors",
    "GroundedSAMError": "grounded_sam.errors",
    # the data engine and deployment (heavy or optional dependencies load on first use)
    "label": "grounded_sam.engine.run",
    "merge": "grounded_sam.engine.run",
    "Labeler": "grounded_sam.engine.labeler",
    "finetune": "grounded_sam.train.run",
    "export_onnx": "grounded_sam.onnx.export",
    "OnnxSamPredictor": "grounded_sam.onnx.predictor",
}

__all__ = [
    "AutomaticMaskGenerator",
    "GroundedSAMError",
    "GroundedSAM",
    "InputError",
    "Labeler",
    "MissingDependency",
    "OnnxSamPredictor",
    "WeightsError",
    "Result",
    "Sam",
    "SamPredictor",
    "__version__",
    "build_sam",
    "list_models",
    "load_image",
    "errors",
    "export_onnx",
    "finetune",
    "label",
    "merge",
    "segment",
    "weights",
]


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())


if TYPE_CHECKING:  # pragma: no cover
    from grounded_sam import errors, weights
    from grounded_sam.automatic import AutomaticMaskGenerator
    from grounded_sam.engine.labeler import Labeler
    from grounded_sam.engine.run import label, merge
    from grounded_sam.errors import GroundedSAMError, InputError, MissingDependency, WeightsError
    from grounded_sam.io import load_image
    from grounded_sam.model.build import build_sam, list_models
    from grounded_sam.model.sam import Sam
    from grounded_sam.onnx.export import export_onnx
    from grounded_sam.onnx.predictor import OnnxSamPredictor
    from grounded_sam.pipeline import GroundedSAM, Result, segment
    from grounded_sam.predictor import SamPredictor
    from grounded_sam.train.run import finetune
