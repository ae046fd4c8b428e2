"""SAM 1's resize-longest-side transform (Meta's ``ResizeLongestSide``), for images and coordinates.

Used by :class:`grounded_sam.model.sam.Sam` to prepare images and map prompts into the model
frame, and kept as ``SamPredictor.transform`` for code written against Meta's predictor.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from grounded_sam.errors import InputError

__all__ = ["ResizeLongestSide", "check_input_size"]


def check_input_size(
    image_size: tuple[int, int], input_size: tuple[int, int], img_size: int, model: str
) -> None:
    """Refuse an image that the model's resize would shrink to nothing: an (H, W) image whose
    long side resized to ``img_size`` leaves ``input_size`` with a side of 0 pixels."""
    if min(input_size) >= 1:
        return
    h, w = image_size
    need = -(-max(h, w) // (2 * img_size))  # short side >= long / (2 * img_size) rounds to 1
    raise InputError(
        f"the image of {w}x{h} (WxH) pixels is too elongated for {model}: resizing its long "
        f"side to the model input size {img_size} leaves its short side "
        f"{min(input_size)} pixels; crop it into less elongated pieces, or pad its short side "
        f"to at least {need} pixels"
    )


class ResizeLongestSide:
    """Resize images so the long side is ``target_length``, and map coordinates/boxes alike."""

    def __init__(self, target_length: int) -> None:
        self.target_length = target_length

    @staticmethod
    def get_preprocess_shape(oldh: int, oldw: int, long_side_length: int) -> tuple[int, int]:
        """(h, w) after resizing the long side of an (oldh, oldw) image to ``long_side_length``."""
        scale = long_side_length * 1.0 / max(oldh, oldw)
        return int(oldh * scale + 0.5), int(oldw * scale + 0.5)

    def apply_image(self, image: np.ndarray) -> np.ndarray:
        """HxWx3 uint8 -> hxwx3 uint8 (bilinear, as PIL resizes; as Meta's transform does)."""
        h, w = self.get_preprocess_shape(image.shape[0], image.shape[1], self.target_length)
        check_input_size(image.shape[:2], (h, w), self.target_length, "SAM")
        return np.array(Image.fromarray(image).resize((w, h), Image.BILINEAR))

    def apply_coords(self, coords: np.ndarray, original_size: tuple[int, ...]) -> np.ndarray:
        """(..., 2) xy in the original (H, W) image -> float64 xy in the resized frame."""
        old_h, old_w = original_size
        new_h, new_w = self.get_preprocess_shape(old_h, old_w, self.target_length)
        coords = np.array(coords, dtype=float, copy=True)
        coords[..., 0] *= new_w / old_w
        coords[..., 1] *= new_h / old_h
        return coords

    def apply_boxes(self, boxes: np.ndarray, original_size: tuple[int, ...]) -> np.ndarray:
        """(B, 4) XYXY in the original image -> (B, 4) in the resized frame."""
        return self.apply_coords(np.asarray(boxes).reshape(-1, 2, 2), original_size).reshape(-1, 4)

    def apply_image_torch(self, image: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) float -> resized; may differ slightly from :meth:`apply_image`."""
        size = self.get_preprocess_shape(image.shape[2], image.shape[3], self.target_length)
        return F.interpolate(image, size, mode="bilinear", align_corners=False, antialias=True)

    def apply_coords_torch(
        self, coords: torch.Tensor, original_size: tuple[int, ...]
    ) -> torch.Tensor:
        """(..., 2) xy in the original (H, W) image -> float32 xy in the resized frame."""
        old_h, old_w = original_size
        new_h, new_w = self.get_preprocess_shape(old_h, old_w, self.target_length)
        coords = coords.to(torch.float).clone()
        coords[..., 0] = coords[..., 0] * (new_w / old_w)
        coords[..., 1] = coords[..., 1] * (new_h / old_h)
        return coords

    def apply_boxes_torch(
        self, boxes: torch.Tensor, original_size: tuple[int, ...]
    ) -> torch.Tensor:
        """(B, 4) XYXY in the original image -> (B, 4) in the resized frame."""
        return self.apply_coords_torch(boxes.reshape(-1, 2, 2), original_size).reshape(-1, 4)
