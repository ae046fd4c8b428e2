"""``Sam``: image encoder + prompt encoder + mask decoder, with SAM's pre/post-processing."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from grounded_sam.model.precision import decode_masks, encode_image

__all__ = ["Sam", "PIXEL_MEAN", "PIXEL_STD"]

PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)


class Sam(nn.Module):
    """Segment Anything model.

    Attributes named as the official checkpoints' key prefixes: ``image_encoder``,
    ``prompt_encoder``, ``mask_decoder``. ``mask_threshold`` (0.0) binarises logits.
    ``precision`` is ``"fp32"`` unless :func:`grounded_sam.model.precision.apply_precision`
    (``build_sam(..., precision=...)``) switched the model to a lower-precision mode.
    """

    mask_threshold: float = 0.0
    image_format: str = "RGB"
    precision: str = "fp32"

    def __init__(
        self,
        *,
        image_encoder: nn.Module,
        prompt_encoder: nn.Module,
        mask_decoder: nn.Module,
        pixel_mean: tuple[float, float, float] = PIXEL_MEAN,
        pixel_std: tuple[float, float, float] = PIXEL_STD,
        name: str = "sam",
    ) -> None:
        super().__init__()
        self.image_encoder = image_encoder
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder
        self.name = name
        self.register_buffer(
            "pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), persistent=False
        )
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), persistent=False)

    @property
    def img_size(self) -> int:
        """Side of the square model input (1024)."""
        return self.prompt_encoder.input_image_size[0]

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise a (B, 3, h, w) RGB batch in 0..255 (long side already resized to
        ``img_size``) and zero-pad it to (B, 3, img_size, img_size)."""
        x = (x - self.pixel_mean) / self.pixel_std
        h, w = x.shape[-2:]
        return F.pad(x, (0, self.img_size - w, 0, self.img_size - h))

    def postprocess_masks(
        self,
        masks: torch.Tensor,
        input_size: tuple[int, ...],
        original_size: tuple[int, ...],
    ) -> torch.Tensor:
        """Upscale (B, C, 256, 256) low-res logits to the original image: (B, C, H, W).

        ``input_size`` is the (h, w) of the resized image before padding; ``original_size``
        the (H, W) of the image given to ``set_image``.
        """
        masks = F.interpolate(
            masks, (self.img_size, self.img_size), mode="bilinear", align_corners=False
        )
        masks = masks[..., : input_size[0], : input_size[1]]
        return F.interpolate(masks, tuple(original_size), mode="bilinear", align_corners=False)

    @torch.no_grad()
    def forward(
        self, batched_input: list[dict[str, Any]], multimask_output: bool
    ) -> list[dict[str, torch.Tensor]]:
        """End-to-end prediction, as ``segment_anything.Sam.forward``.

        Each input dict holds ``image`` (3, h, w) already resized so the long side is
        ``img_size``, ``original_size`` (H, W), and optionally ``point_coords`` (B, N, 2),
        ``point_labels`` (B, N), ``boxes`` (B, 4), ``mask_inputs`` (B, 1, 256, 256), all in
        the resized frame. Returns per image ``masks`` (B, C, H, W) bool,
        ``iou_predictions`` (B, C) and ``low_res_logits`` (B, C, 256, 256).
        """
        images = torch.stack([self.preprocess(x["image"]) for x in batched_input], dim=0)
        embeddings = encode_image(self, images)
        outputs = []
        for record, emb in zip(batched_input, embeddings, strict=True):
            points = None
            if "point_coords" in record:
                points = (record["point_coords"], record["point_labels"])
            sparse, dense = self.prompt_encoder(
                points=points, boxes=record.get("boxes"), masks=record.get("mask_inputs")
            )
            low_res, iou = decode_masks(
                self,
                image_embeddings=emb.unsqueeze(0),
                image_pe=self.prompt_encoder.get_dense_pe(),
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=multimask_output,
            )
            masks = self.postprocess_masks(
                low_res, tuple(record["image"].shape[-2:]), tuple(record["original_size"])
            )
            outputs.append(
                {
                    "masks": masks > self.mask_threshold,
                    "iou_predictions": iou,
                    "low_res_logits": low_res,
                }
            )
        return outputs
