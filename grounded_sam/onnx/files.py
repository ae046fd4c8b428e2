"""What an export folder holds, and how to make the encoder's input without PyTorch.

An export folder (``grounded-sam export-onnx --out DIR``) holds ``encoder.onnx``,
``decoder.onnx`` (each with ``<name>.data`` beside it when its weights pass protobuf's 2 GB
limit) and ``sam_onnx.json``, the metadata :class:`grounded_sam.onnx.OnnxSamPredictor` reads:
variant, family, preprocessing constants, input/output names, opset, quantisation and the
figures measured at export.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from grounded_sam.errors import InputError

__all__ = [
    "ENCODER_FILE",
    "DECODER_FILE",
    "METADATA_FILE",
    "FORMAT",
    "FORMAT_VERSION",
    "MIN_OPSET",
    "MAX_OPSET",
    "DEFAULT_OPSET",
    "read_metadata",
    "preprocess",
    "preprocessed_size",
    "decoder_prompt",
]

ENCODER_FILE = "encoder.onnx"
DECODER_FILE = "decoder.onnx"
METADATA_FILE = "sam_onnx.json"
FORMAT = "grounded-sam-onnx"
FORMAT_VERSION = 1
# Opsets the export writes (PyTorch's TorchScript-based exporter: 14, for attention, to 20);
# 17 by default, as Meta's export script.
MIN_OPSET, MAX_OPSET, DEFAULT_OPSET = 14, 20, 17


def read_metadata(directory: str | Path) -> dict[str, Any]:
    """The checked ``sam_onnx.json`` of an export folder.

    Raises:
        InputError: not a folder, no ``sam_onnx.json`` / model files, or metadata of another
            format or a newer version.
    """
    d = Path(directory)
    if not d.is_dir():
        raise InputError(f"ONNX export folder {str(d)!r} does not exist or is not a folder")
    path = d / METADATA_FILE
    if not path.is_file():
        raise InputError(
            f"{str(d)!r} has no {METADATA_FILE}: it is not a folder written by "
            "`grounded-sam export-onnx` (export one with: grounded-sam export-onnx --sam NAME "
            f"--out {d})"
        )
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise InputError(f"{str(path)!r} is not readable JSON ({e}); export again") from e
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise InputError(f"{str(path)!r} is not grounded-sam ONNX metadata (format {FORMAT!r})")
    version = meta.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise InputError(
            f"{str(path)!r} has format_version {version!r}; this grounded-sam reads up to "
            f"{FORMAT_VERSION}: upgrade grounded-sam or export again"
        )
    for key in ("encoder", "decoder"):
        f = d / meta[key]["file"]
        if not f.is_file():
            raise InputError(f"{str(d)!r} lacks {meta[key]['file']} (listed in {METADATA_FILE})")
    return meta


def preprocessed_size(height: int, width: int, meta: dict[str, Any]) -> tuple[int, int]:
    """(h, w) of the image inside the (S, S) encoder input: the long side resized to S
    (``ResizeLongestSide.get_preprocess_shape``, SAM 1) or (S, S) (SAM 2.1: whole image
    resized to the square)."""
    s = int(meta["image_size"])
    if meta["preprocess"]["resize"] == "square":
        return s, s
    scale = s * 1.0 / max(height, width)
    return int(height * scale + 0.5), int(width * scale + 0.5)


def preprocess(image: np.ndarray, meta: dict[str, Any]) -> tuple[np.ndarray, tuple[int, int]]:
    """(H, W, 3) uint8 RGB -> ((1, 3, S, S) float32 encoder input, (h, w) of the image in it).

    SAM 1 / MobileSAM (``resize: longest_side``): bilinear resize (PIL) so the long side is S,
    ``(x - pixel_mean) / pixel_std`` on 0..255 values, zeros padded bottom and right; the
    same values as ``Sam.prepare_image``.

    SAM 2.1 (``resize: square``): values / 255, bilinear resize of the whole image to S x S
    (antialiased when shrinking, as ``torch.nn.functional.interpolate(..., antialias=True)``
    and PIL do), ImageNet mean/std; equal to ``Sam2.prepare_image`` within float rounding.

    An encoder exported with ``encoder_preprocess`` (``input_layout: hwc``) takes the resized
    (h, w, 3) float32 image in 0..255 instead, and normalises and pads it itself.
    """
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3:
        raise InputError(f"expected an (H, W, 3) uint8 RGB array, got shape {np.shape(image)}")
    if image.dtype != np.uint8:
        raise InputError(f"expected an (H, W, 3) uint8 RGB array, got dtype {image.dtype}")
    p = meta["preprocess"]
    s = int(meta["image_size"])
    mean = np.asarray(p["pixel_mean"], dtype=np.float32)
    std = np.asarray(p["pixel_std"], dtype=np.float32)
    h, w = preprocessed_size(image.shape[0], image.shape[1], meta)
    if p["resize"] == "square":
        scaled = image.astype(np.float32) / np.float32(p["divide_by"])
        resized = np.stack(
            [
                np.asarray(Image.fromarray(scaled[..., c]).resize((w, h), Image.BILINEAR))
                for c in range(3)
            ],
            axis=-1,
        )
    else:
        resized = np.asarray(
            Image.fromarray(image).resize((w, h), Image.BILINEAR), dtype=np.float32
        ) / np.float32(p["divide_by"])
    if meta.get("encoder", {}).get("input_layout") == "hwc":  # the graph normalises, pads
        return np.ascontiguousarray(resized, dtype=np.float32), (h, w)
    x = np.zeros((1, 3, s, s), dtype=np.float32)
    x[0, :, :h, :w] = ((resized - mean) / std).transpose(2, 0, 1)
    return x, (h, w)


def decoder_prompt(
    family: str,
    coords: np.ndarray | None,
    labels: np.ndarray | None,
    box: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray]:
    """Points and one box, already in the model-input frame -> the decoder's ``point_coords``
    (1, N, 2) and ``point_labels`` (1, N) float32, the way each family's prompt encoder sees
    them.

    SAM 1 / MobileSAM (Meta's convention): the points, then the box corners labelled 2 and 3;
    without a box, one padding point (0, 0) labelled -1 after the points. SAM 2.1: the box
    corners first, then the points; no padding point (its decoder appends SAM 2's own). No
    points and no box gives N = 0 (a mask prompt alone).

    Args:
        coords: (P, 2) xy in the model frame, or None; labels: (P,) 1 / 0, or None.
        box: (4,) XYXY in the model frame, or None.
    """
    pts = np.zeros((0, 2), np.float32) if coords is None else np.asarray(coords, np.float32)
    lab = np.zeros((0,), np.float32) if labels is None else np.asarray(labels, np.float32)
    if box is None:
        corners, corner_labels = np.zeros((0, 2), np.float32), np.zeros((0,), np.float32)
    else:
        corners = np.asarray(box, np.float32).reshape(2, 2)
        corner_labels = np.array([2, 3], np.float32)
    if family == "sam2":
        c, lb = np.concatenate([corners, pts]), np.concatenate([corner_labels, lab])
    else:
        pad = box is None and len(pts) > 0
        c = np.concatenate([pts, corners, np.zeros((int(pad), 2), np.float32)])
        lb = np.concatenate([lab, corner_labels, -np.ones(int(pad), np.float32)])
    return c[None].astype(np.float32), lb[None].astype(np.float32)
