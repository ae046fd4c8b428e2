"""``SamPredictor``: a drop-in for ``segment_anything.SamPredictor``, plus batched box prompts.

Coordinate frames: ``predict`` and ``predict_boxes`` take (x, y) pixels of the original
image; ``predict_torch`` takes coordinates already transformed to the resized model-input
frame (``predictor.transform.apply_coords_torch``), as Meta's does.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from grounded_sam.io import ImageLike, load_image
from grounded_sam.model.precision import decode_masks, encode_image
from grounded_sam.model.sam import Sam

__all__ = ["SamPredictor", "ResizeLongestSide", "ImageEmbedding"]


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
        """HxWx3 uint8 -> hxwx3 uint8 (bilinear, as PIL resizes)."""
        h, w = self.get_preprocess_shape(image.shape[0], image.shape[1], self.target_length)
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
        return torch.nn.functional.interpolate(
            image, size, mode="bilinear", align_corners=False, antialias=True
        )

    def apply_coords_torch(
        self, coords: torch.Tensor, original_size: tuple[int, ...]
    ) -> torch.Tensor:
        old_h, old_w = original_size
        new_h, new_w = self.get_preprocess_shape(old_h, old_w, self.target_length)
        coords = coords.to(torch.float).clone()
        coords[..., 0] = coords[..., 0] * (new_w / old_w)
        coords[..., 1] = coords[..., 1] * (new_h / old_h)
        return coords

    def apply_boxes_torch(
        self, boxes: torch.Tensor, original_size: tuple[int, ...]
    ) -> torch.Tensor:
        return self.apply_coords_torch(boxes.reshape(-1, 2, 2), original_size).reshape(-1, 4)


@dataclass(frozen=True)
class ImageEmbedding:
    """What ``set_image`` computes: reusable for the same image (see ``SamPredictor.set_embedding``).

    ``features`` (1, 256, 64, 64); ``original_size`` (H, W); ``input_size`` (h, w) resized.
    """

    features: torch.Tensor
    original_size: tuple[int, int]
    input_size: tuple[int, int]


def _finite_array(value: object, name: str, *, dtype=np.float64) -> np.ndarray:
    try:
        arr = np.asarray(value, dtype=dtype)
    except (TypeError, ValueError) as e:
        raise TypeError(f"{name} must be a numeric array, got {type(value).__name__}") from e
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or inf: {value!r}")
    return arr


def check_boxes(boxes: object, name: str = "boxes") -> np.ndarray:
    """Validate XYXY boxes: (N, 4) finite with x1 >= x0 and y1 >= y0. Returns float64 (N, 4)."""
    arr = _finite_array(boxes, name)
    if arr.ndim == 1 and arr.shape[0] == 4:
        arr = arr[None]
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise ValueError(f"{name} must have shape (N, 4) as x0, y0, x1, y1; got shape {arr.shape}")
    bad = np.nonzero((arr[:, 2] < arr[:, 0]) | (arr[:, 3] < arr[:, 1]))[0]
    if bad.size:
        raise ValueError(
            f"{name}[{bad[0]}] = {arr[bad[0]].tolist()} is not XYXY: need x1 >= x0 and y1 >= y0"
        )
    return arr


class SamPredictor:
    """Compute an image embedding once, then predict masks from prompts cheaply.

    Args:
        sam_model: a :class:`~grounded_sam.model.sam.Sam` from :func:`grounded_sam.build_sam`.
    """

    def __init__(self, sam_model: Sam) -> None:
        if not isinstance(sam_model, torch.nn.Module) or not hasattr(sam_model, "image_encoder"):
            raise TypeError(
                f"SamPredictor expects a Sam model (from build_sam), got {type(sam_model).__name__}"
            )
        self.model = sam_model
        self.transform = ResizeLongestSide(sam_model.image_encoder.img_size)
        self.reset_image()

    @property
    def device(self) -> torch.device:
        return self.model.device

    # ------------------------------------------------------------------ image
    def set_image(self, image: ImageLike, image_format: str = "RGB") -> None:
        """Compute the embedding of an image.

        Args:
            image: HxWx3 uint8 array in ``image_format`` ("RGB" or "BGR"), a PIL image or a path
                (anything :func:`grounded_sam.load_image` accepts).
        """
        if image_format not in ("RGB", "BGR"):
            raise ValueError(f"image_format must be 'RGB' or 'BGR', got {image_format!r}")
        if isinstance(image, np.ndarray) and image_format != self.model.image_format:
            image = image[..., ::-1]
        image = load_image(image)
        input_image = self.transform.apply_image(image)
        tensor = torch.as_tensor(input_image, device=self.device).permute(2, 0, 1)[None]
        self.set_torch_image(tensor, image.shape[:2])

    @torch.no_grad()
    def set_torch_image(
        self, transformed_image: torch.Tensor, original_image_size: tuple[int, ...]
    ) -> None:
        """Embed a (1, 3, h, w) image already resized with ``transform`` (long side 1024)."""
        if (
            transformed_image.ndim != 4
            or transformed_image.shape[1] != 3
            or max(*transformed_image.shape[2:]) != self.model.image_encoder.img_size
        ):
            raise ValueError(
                "set_torch_image expects a (1, 3, h, w) batch whose long side is "
                f"{self.model.image_encoder.img_size}, got shape {tuple(transformed_image.shape)}"
            )
        self.reset_image()
        original_size = (int(original_image_size[0]), int(original_image_size[1]))
        input_size = (int(transformed_image.shape[-2]), int(transformed_image.shape[-1]))
        x = self.model.preprocess(transformed_image.to(self.device, torch.float32))
        features = encode_image(self.model, x)
        self.set_embedding(ImageEmbedding(features, original_size, input_size))

    def set_embedding(self, embedding: ImageEmbedding) -> None:
        """Reuse an embedding from :meth:`get_embedding` (no encoder pass)."""
        self.features = embedding.features
        self.original_size = embedding.original_size
        self.input_size = embedding.input_size
        self.orig_h, self.orig_w = embedding.original_size
        self.input_h, self.input_w = embedding.input_size
        self.is_image_set = True

    def get_embedding(self) -> ImageEmbedding:
        """The current image's embedding and sizes, for caching."""
        self._require_image()
        return ImageEmbedding(self.features, self.original_size, self.input_size)

    def get_image_embedding(self) -> torch.Tensor:
        """(1, 256, 64, 64) embedding of the current image."""
        self._require_image()
        return self.features

    def reset_image(self) -> None:
        self.is_image_set = False
        self.features = None
        self.orig_h = self.orig_w = self.input_h = self.input_w = None
        self.original_size = self.input_size = None

    def _require_image(self) -> None:
        if not self.is_image_set:
            raise RuntimeError("no image is set: call set_image() before predicting")

    # -------------------------------------------------------------- prompts
    def predict(
        self,
        point_coords: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        box: np.ndarray | None = None,
        mask_input: np.ndarray | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Predict masks for one set of prompts on the current image.

        Args:
            point_coords: (N, 2) xy pixels in the original image.
            point_labels: (N,) 1 foreground, 0 background.
            box: (4,) or (1, 4) XYXY pixels in the original image.
            mask_input: (1, 256, 256) low-res logits from a previous call.
            multimask_output: 3 masks (pick by score) instead of 1.
            return_logits: return logits instead of booleans.
        Returns:
            masks (C, H, W) bool (float32 logits with ``return_logits``), iou_predictions (C,)
            float32, low_res_logits (C, 256, 256) float32; C is 3 or 1.
        """
        self._require_image()
        coords_t = labels_t = box_t = mask_t = None
        if point_coords is not None or point_labels is not None:
            if point_coords is None or point_labels is None:
                raise ValueError("point_coords and point_labels must be given together")
            coords = _finite_array(point_coords, "point_coords")
            labels = _finite_array(point_labels, "point_labels")
            if coords.ndim != 2 or coords.shape[1] != 2:
                raise ValueError(f"point_coords must have shape (N, 2), got {coords.shape}")
            if labels.shape != (coords.shape[0],):
                raise ValueError(
                    f"point_labels must have shape ({coords.shape[0]},) to match point_coords, "
                    f"got {labels.shape}"
                )
            if not np.isin(labels, (0, 1)).all():
                raise ValueError(
                    f"point_labels must be 1 (foreground) or 0 (background), got {np.unique(labels).tolist()}"
                )
            coords = self.transform.apply_coords(coords, self.original_size)
            coords_t = torch.as_tensor(coords, dtype=torch.float, device=self.device)[None]
            labels_t = torch.as_tensor(labels, dtype=torch.int, device=self.device)[None]
        if box is not None:
            b = check_boxes(box, "box")
            if b.shape[0] != 1:
                raise ValueError(
                    f"predict() takes one box of shape (4,) or (1, 4), got {b.shape}; "
                    "use predict_boxes() for several"
                )
            box_t = torch.as_tensor(
                self.transform.apply_boxes(b, self.original_size),
                dtype=torch.float,
                device=self.device,
            )[None]
        if mask_input is not None:
            m = _finite_array(mask_input, "mask_input", dtype=np.float32)
            expected = (1, *self.model.prompt_encoder.mask_input_size)
            if m.shape != expected:
                raise ValueError(
                    f"mask_input must have shape {expected} (the low_res_logits of a previous call, "
                    f"one mask), got {m.shape}"
                )
            mask_t = torch.as_tensor(m, device=self.device)[None]
        masks, iou, low_res = self.predict_torch(
            coords_t,
            labels_t,
            box_t,
            mask_t,
            multimask_output=multimask_output,
            return_logits=return_logits,
        )
        return (
            masks[0].cpu().numpy(),
            iou[0].float().cpu().numpy(),
            low_res[0].float().cpu().numpy(),
        )

    @torch.no_grad()
    def predict_torch(
        self,
        point_coords: torch.Tensor | None,
        point_labels: torch.Tensor | None,
        boxes: torch.Tensor | None = None,
        mask_input: torch.Tensor | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Batched prediction in the resized frame (coordinates from ``transform.apply_*_torch``).

        Args:
            point_coords: (B, N, 2); point_labels: (B, N); boxes: (B, 4); mask_input:
                (B, 1, 256, 256).
        Returns:
            masks (B, C, H, W) bool (or logits), iou_predictions (B, C), low_res_logits
            (B, C, 256, 256).
        """
        low_res, iou = self._decode(point_coords, point_labels, boxes, mask_input, multimask_output)
        masks = self.model.postprocess_masks(low_res, self.input_size, self.original_size)
        if not return_logits:
            masks = masks > self.model.mask_threshold
        return masks, iou, low_res

    def _decode(
        self,
        point_coords: torch.Tensor | None,
        point_labels: torch.Tensor | None,
        boxes: torch.Tensor | None,
        mask_input: torch.Tensor | None,
        multimask_output: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One prompt-encoder + mask-decoder call: (low_res (B, C, 256, 256), iou (B, C))."""
        self._require_image()
        if (point_coords is None) != (point_labels is None):
            raise ValueError("point_coords and point_labels must be given together")
        if point_coords is not None:
            if point_coords.ndim != 3 or point_coords.shape[-1] != 2:
                raise ValueError(f"point_coords must be (B, N, 2), got {tuple(point_coords.shape)}")
            if tuple(point_labels.shape) != tuple(point_coords.shape[:2]):
                raise ValueError(
                    f"point_labels must be {tuple(point_coords.shape[:2])}, got {tuple(point_labels.shape)}"
                )
        if boxes is not None and boxes.shape[-1] != 4:
            raise ValueError(f"boxes must be (B, 4), got {tuple(boxes.shape)}")
        points = (point_coords, point_labels) if point_coords is not None else None
        sparse, dense = self.model.prompt_encoder(points=points, boxes=boxes, masks=mask_input)
        return decode_masks(
            self.model,
            image_embeddings=self.features,
            image_pe=self.model.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=multimask_output,
        )

    @torch.no_grad()
    def predict_boxes(
        self, boxes: np.ndarray, multimask_output: bool = False, return_logits: bool = False
    ) -> tuple[np.ndarray, np.ndarray]:
        """Decode many box prompts in one mask-decoder call.

        Args:
            boxes: (N, 4) XYXY pixels in the original image.
        Returns:
            masks (N, C, H, W) bool (float32 logits with ``return_logits``) and scores (N, C)
            float32 predicted IoU; C is 3 with ``multimask_output`` else 1. N may be 0.
        """
        self._require_image()
        b = check_boxes(boxes, "boxes") if len(np.asarray(boxes).reshape(-1)) else np.zeros((0, 4))
        c = 3 if multimask_output else 1
        h, w = self.original_size
        if b.shape[0] == 0:
            dtype = np.float32 if return_logits else bool
            return np.zeros((0, c, h, w), dtype=dtype), np.zeros((0, c), dtype=np.float32)
        boxes_t = torch.as_tensor(
            self.transform.apply_boxes(b, self.original_size), dtype=torch.float, device=self.device
        )
        low_res, iou = self._decode(None, None, boxes_t, None, multimask_output)
        out = np.empty((b.shape[0], c, h, w), dtype=np.float32 if return_logits else bool)
        chunk = 16  # bound the memory of full-resolution logits
        for i in range(0, b.shape[0], chunk):
            m = self.model.postprocess_masks(
                low_res[i : i + chunk], self.input_size, self.original_size
            )
            out[i : i + chunk] = (
                (m if return_logits else m > self.model.mask_threshold).cpu().numpy()
            )
        return out, iou.float().cpu().numpy()
