"""SAM models: :class:`SamBase`, the interface every SAM family implements, and SAM 1's ``Sam``.

The interface is what :class:`grounded_sam.SamPredictor` (the only caller of a model at
inference) needs, so that everything family-specific (preprocessing, coordinate frames, how a
box is given to the prompt encoder, extra high-resolution features, post-processing) lives
in the model class, never in callers:

- :meth:`SamBase.prepare_image`: (H, W, 3) uint8 RGB -> normalised (1, 3, S, S) model input;
- :meth:`SamBase.encode`: model input -> (image embedding, high-resolution features);
- :meth:`SamBase.transform_coords`: original-image pixels -> model-input frame;
- :meth:`SamBase.decode`: embedding + prompts -> low-resolution logits and predicted IoU;
- :meth:`SamBase.postprocess_masks`: low-resolution logits -> logits at the original size.

``encode`` and ``decode`` run in the model's precision mode (:meth:`SamBase.set_precision`)
and always return float32.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from grounded_sam.errors import InputError
from grounded_sam.model.precision import (
    autocast,
    check_precision,
    quantize_linears,
    uses_autocast,
)
from grounded_sam.model.transforms import ResizeLongestSide

__all__ = ["SamBase", "Sam", "PIXEL_MEAN", "PIXEL_STD", "Features"]

PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)

# (image embedding (B, 256, 64, 64), high-resolution features: () for SAM 1)
Features = tuple[torch.Tensor, tuple[torch.Tensor, ...]]


class SamBase(nn.Module):
    """The interface of a SAM family (SAM 1 and MobileSAM: :class:`Sam`; SAM 2.1: ``Sam2``).

    Attributes:
        name: registry name (``"vit_b"``, ``"mobile_sam"``, ...).
        family: ``"sam"`` or ``"sam2"``.
        mask_threshold: logit threshold binarising masks (0.0).
        image_format: channel order the model expects (``"RGB"``).
        precision: ``"fp32"`` unless :meth:`set_precision` switched to an opt-in mode.
    """

    family: str = "sam"
    mask_threshold: float = 0.0
    image_format: str = "RGB"

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name
        self.precision = "fp32"

    # ------------------------------------------------------------------ properties
    @property
    def img_size(self) -> int:
        """Side of the square model input (1024)."""
        return self.prompt_encoder.input_image_size[0]

    @property
    def mask_input_size(self) -> tuple[int, int]:
        """(h, w) of a ``mask_input`` prompt and of the low-resolution logits (256, 256)."""
        return tuple(self.prompt_encoder.mask_input_size)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    # ------------------------------------------------------------------ precision
    def set_precision(self, precision: str) -> SamBase:
        """Switch this model (weights loaded, on its final device) to ``precision``, in place.

        ``"bf16"``/``"fp16"``: :meth:`encode` and :meth:`decode` run under ``torch.autocast``;
        ``"int8"``: the image encoder's linear layers are dynamically quantised (CPU only,
        irreversible). Returns ``self``.

        Raises:
            InputError: unknown mode, ``"int8"`` off the CPU, or a model already switched to
                another lower-precision mode.
        """
        check_precision(precision, self.device)
        if precision == self.precision:
            return self
        if self.precision != "fp32":
            raise InputError(
                f"this model already runs in precision {self.precision!r}; build a fresh one "
                f"(build_sam(..., precision={precision!r})) to use {precision!r}"
            )
        if precision == "int8":
            quantize_linears(self.image_encoder)
        self.precision = precision
        return self

    @torch.no_grad()
    def prepare_decoder(self, embedding: torch.Tensor, high_res: tuple[torch.Tensor, ...]) -> None:
        """Compute the decoder's per-image values for this embedding now (the positional
        encoding, the image tokens with the no-mask embedding, the first layer's projections
        of them, SAM 2.1's reordered high-resolution features), so the first prompt on the
        image costs what later ones do. Nothing in the lower-precision autocast modes, where
        the memos do not apply. See :mod:`grounded_sam.model.memo`."""
        prepare = getattr(self.mask_decoder, "prepare", None)
        no_mask_dense = getattr(self.prompt_encoder, "no_mask_dense", None)
        if uses_autocast(self.precision) or prepare is None or no_mask_dense is None:
            return  # (modules other than ours, e.g. Meta's in a parity test: nothing to keep)
        prepare(embedding, self.prompt_encoder.get_dense_pe(), no_mask_dense(1), tuple(high_res))

    # ------------------------------------------------------------------ interface
    def prepare_image(self, image: np.ndarray) -> tuple[torch.Tensor, tuple[int, int]]:
        """(H, W, 3) uint8 RGB -> ((1, 3, S, S) float32 normalised input on :attr:`device`,
        ``input_size`` (h, w): the part of the input that holds the image before padding)."""
        raise NotImplementedError

    def encode(self, x: torch.Tensor) -> Features:
        """(B, 3, S, S) model input -> (embedding (B, 256, 64, 64), high-res features)."""
        raise NotImplementedError

    def transform_coords(
        self,
        coords: torch.Tensor,
        original_size: tuple[int, int],
        input_size: tuple[int, int],
    ) -> torch.Tensor:
        """(..., 2) xy pixels of the original (H, W) image -> xy in the model frame (float
        inputs keep their dtype)."""
        raise NotImplementedError

    def decode(
        self,
        embedding: torch.Tensor,
        high_res: tuple[torch.Tensor, ...],
        point_coords: torch.Tensor | None,
        point_labels: torch.Tensor | None,
        boxes: torch.Tensor | None,
        mask_input: torch.Tensor | None,
        multimask_output: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompts in the model frame -> (low-res logits (B, C, 256, 256), IoU (B, C)), float32.

        ``embedding`` is (1, 256, 64, 64) (broadcast over the B prompts) or (B, ...);
        ``point_coords`` (B, N, 2), ``point_labels`` (B, N) (1 foreground, 0 background,
        -1 padding); ``boxes`` (B, 4) XYXY; ``mask_input`` (B, 1, 256, 256). C is 3 with
        ``multimask_output`` else 1.
        """
        raise NotImplementedError

    def postprocess_masks(
        self,
        masks: torch.Tensor,
        input_size: tuple[int, ...],
        original_size: tuple[int, ...],
    ) -> torch.Tensor:
        """(B, C, h, w) low-res logits -> (B, C, H, W) float32 logits at the original size."""
        raise NotImplementedError


def _needed(n_out: int, n_in: int, factor: int) -> int:
    """Input rows that a bilinear x``factor`` upsample (align_corners=False) reads to produce
    its first ``n_out`` output rows: output row ``r`` samples ``(r + 0.5) / factor - 0.5``."""
    last = (n_out - 1 + 0.5) / factor - 0.5
    return min(n_in, int(np.floor(last)) + 2)


class Sam(SamBase):
    """SAM 1 (ViT-B/L/H) and MobileSAM: image encoder + prompt encoder + mask decoder.

    Attributes named as the official checkpoints' key prefixes: ``image_encoder``,
    ``prompt_encoder``, ``mask_decoder``. Images are resized so the long side is 1024,
    normalised with SAM's pixel mean/std and zero-padded to 1024x1024 (Meta's letterbox).
    """

    family = "sam"

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
        super().__init__(name)
        self.image_encoder = image_encoder
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder
        self.register_buffer(
            "pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), persistent=False
        )
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), persistent=False)

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    @property
    def transform(self) -> ResizeLongestSide:
        """Meta's resize-longest-side transform for this model's input size."""
        return ResizeLongestSide(self.img_size)

    # ------------------------------------------------------------------ image
    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise a (B, 3, h, w) RGB batch in 0..255 (long side already resized to
        ``img_size``) and zero-pad it to (B, 3, img_size, img_size)."""
        x = (x - self.pixel_mean) / self.pixel_std
        h, w = x.shape[-2:]
        return F.pad(x, (0, self.img_size - w, 0, self.img_size - h))

    def prepare_image(self, image: np.ndarray) -> tuple[torch.Tensor, tuple[int, int]]:
        resized = self.transform.apply_image(image)
        x = torch.as_tensor(resized, device=self.device).permute(2, 0, 1)[None]
        return self.preprocess(x.to(torch.float32)), (int(resized.shape[0]), int(resized.shape[1]))

    def encode(self, x: torch.Tensor) -> Features:
        with autocast(self.precision, x.device):
            features = self.image_encoder(x)
        return features.float(), ()

    # ------------------------------------------------------------------ prompts
    def transform_coords(
        self,
        coords: torch.Tensor,
        original_size: tuple[int, int],
        input_size: tuple[int, int],
    ) -> torch.Tensor:
        # Meta scales x by new_w / old_w and y by new_h / old_h in the coordinates' own dtype
        # (float64 from its numpy transform); callers cast to float32 where Meta does.
        old_h, old_w = original_size
        new_h, new_w = input_size
        coords = coords.clone() if coords.is_floating_point() else coords.to(torch.float)
        coords[..., 0] = coords[..., 0] * (new_w / old_w)
        coords[..., 1] = coords[..., 1] * (new_h / old_h)
        return coords

    def decode(
        self,
        embedding: torch.Tensor,
        high_res: tuple[torch.Tensor, ...],
        point_coords: torch.Tensor | None,
        point_labels: torch.Tensor | None,
        boxes: torch.Tensor | None,
        mask_input: torch.Tensor | None,
        multimask_output: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        points = (point_coords, point_labels) if point_coords is not None else None
        with autocast(self.precision, embedding.device):
            sparse, dense = self.prompt_encoder(points=points, boxes=boxes, masks=mask_input)
            low_res, iou = self.mask_decoder(
                image_embeddings=embedding,
                image_pe=self.prompt_encoder.get_dense_pe(),
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=multimask_output,
            )
        return low_res.float(), iou.float()

    def postprocess_masks(
        self,
        masks: torch.Tensor,
        input_size: tuple[int, ...],
        original_size: tuple[int, ...],
    ) -> torch.Tensor:
        """(B, C, 256, 256) low-res logits -> (B, C, H, W): Meta's upsample to 1024x1024, crop
        of the un-padded (h, w) corner, resize to (H, W).

        The first upsample is computed only for the rows/columns the crop keeps: a bilinear
        upsample by an integer factor of the leading rows gives bit-identical values to the
        same rows of the full upsample (same source coordinates, same weights), and skips
        up to 44% of the work for a 4:3 photo.
        """
        lh, lw = masks.shape[-2:]
        h_in, w_in = int(input_size[0]), int(input_size[1])
        s = self.img_size
        if s % lh == 0 and s % lw == 0:
            fy, fx = s // lh, s // lw
            rh, rw = _needed(h_in, lh, fy), _needed(w_in, lw, fx)
            x = F.interpolate(
                masks[..., :rh, :rw], (rh * fy, rw * fx), mode="bilinear", align_corners=False
            )
        else:  # pragma: no cover - SAM's 256 -> 1024 is always an integer factor
            x = F.interpolate(masks, (s, s), mode="bilinear", align_corners=False)
        x = x[..., :h_in, :w_in]
        return F.interpolate(x, tuple(original_size), mode="bilinear", align_corners=False)

    # ------------------------------------------------------------------ Meta's forward
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
        embeddings, _ = self.encode(images)
        outputs = []
        for record, emb in zip(batched_input, embeddings, strict=True):
            low_res, iou = self.decode(
                emb[None],
                (),
                record.get("point_coords"),
                record.get("point_labels"),
                record.get("boxes"),
                record.get("mask_inputs"),
                multimask_output,
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
