"""ONNX deployment: export every SAM variant, and run the files with onnxruntime.

from grounded_sam.onnx import export_onnx, OnnxSamPredictor

export_onnx("mobile_sam", "exports/mobile_sam")    # encoder.onnx, decoder.onnx, sam_onnx.json
p = OnnxSamPredictor("exports/mobile_sam")          # SamPredictor's interface, no PyTorch SAM
p.set_image(image); masks, scores, _ = p.predict(box=[10, 20, 200, 180])

The decoder has the inputs and outputs of Meta's exported decoder, so tools that load Meta's
file (its web demo, CVAT's and X-AnyLabeling's SAM loaders) can load ours; see ``docs/onnx.md``.
Needs ``pip install "grounded-sam[onnx]"`` (onnx, onnxruntime); names resolve lazily, so
importing this package needs neither.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from grounded_sam._lazy import lazy_exports

_EXPORTS = {
    "export_onnx": "grounded_sam.onnx.export",
    "OnnxExport": "grounded_sam.onnx.export",
    "check_standard_ops": "grounded_sam.onnx.export",
    "OnnxSam": "grounded_sam.onnx.predictor",
    "OnnxSamPredictor": "grounded_sam.onnx.predictor",
    "read_metadata": "grounded_sam.onnx.files",
    "preprocess": "grounded_sam.onnx.files",
    "decoder_prompt": "grounded_sam.onnx.files",
}

__all__ = [
    "OnnxExport",
    "OnnxSam",
    "OnnxSamPredictor",
    "check_standard_ops",
    "decoder_prompt",
    "export_onnx",
    "preprocess",
    "read_metadata",
]

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())

if TYPE_CHECKING:  # pragma: no cover
    from grounded_sam.onnx.export import OnnxExport, check_standard_ops, export_onnx
    from grounded_sam.onnx.files import decoder_prompt, preprocess, read_metadata
    from grounded_sam.onnx.predictor import OnnxSam, OnnxSamPredictor
