"""``SamPredictor``: the one gateway into a SAM model, a drop-in for Meta's ``SamPredictor``.

Everything that runs a SAM model at inference goes through this class (the pipeline, the
automatic mask generator, the labelling engine, the annotation app), so a concern such as
precision or a new model family is handled once, in the model class it calls
(:class:`grounded_sam.model.sam.SamBase`).

Coordinate frames: :meth:`SamPredictor.predict`, :meth:`~SamPredictor.predict_boxes` and
:meth:`~SamPredictor.predict_low_res` take (x, y) pixels of the original image;
:meth:`~SamPredictor.predict_torch` takes coordinates already in the model-input frame
(``predictor.transform.apply_coords_torch`` for SAM 1), as Meta's does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from grounded_sam.errors import InputError
from grounded_sam.io import ImageLike, load_image
from grounded_sam.masks import check_boxes, check_prompt, finite_array
from grounded_sam.model.sam import SamBase
from grounded_sam.model.transforms import ResizeLongestSide, check_input_size

__all__ = ["SamPredictor", "ResizeLongestSide", "ImageEmbedding"]


def _check_flag(value: object, name: str) -> bool:
    """``value`` as a bool; anything but a bool (or numpy bool) is an ``InputError`` (a string
    such as ``"no"`` would otherwise count as true)."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    raise InputError(f"{name} must be True or False, got {value!r}")


def _check_boxes_arg(boxes: object) -> np.ndarray:
    """``predict_boxes``' boxes: float64 (N, 4), N may be 0 (``check_boxes`` otherwise)."""
    if boxes is None:
        raise InputError(
            "predict_boxes needs boxes: an (N, 4) array of x0, y0, x1, y1 pixels (N may be 0), "
            "got None"
        )
    if isinstance(boxes, torch.Tensor):
        boxes = boxes.detach().to("cpu", torch.float64).numpy()
    arr = finite_array(boxes, "boxes")
    if arr.size == 0:
        return np.zeros((0, 4))
    return check_boxes(arr, "boxes")


def _host(value: object, name: str) -> np.ndarray:
    """A prompt argument as a float64 numpy array on the host, for the value checks."""
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", torch.float64).numpy()
    return finite_array(value, name)


@dataclass(frozen=True)
class ImageEmbedding:
    """What ``set_image`` computes; reusable for the same image (:meth:`SamPredictor.set_embedding`).

    Attributes:
        features: (1, 256, 64, 64) float32 image embedding.
        original_size: (H, W) of the image.
        input_size: (h, w) of the image inside the model input (before padding).
        high_res: extra high-resolution features of the family (SAM 2.1: two tensors;
            SAM 1: none).
    """

    features: torch.Tensor
    original_size: tuple[int, int]
    input_size: tuple[int, int]
    high_res: tuple[torch.Tensor, ...] = ()

    def to(self, device: torch.device | str) -> ImageEmbedding:
        """A copy on ``device`` (e.g. ``"cpu"`` for a cache that outlives the GPU copy)."""
        return ImageEmbedding(
            self.features.to(device),
            self.original_size,
            self.input_size,
            tuple(t.to(device) for t in self.high_res),
        )


class SamPredictor:
    """Compute an image embedding once, then predict masks from prompts cheaply.

    Args:
        sam_model: a SAM model from :func:`grounded_sam.build_sam` (any family).
    """

    def __init__(self, sam_model: SamBase) -> None:
        if not isinstance(sam_model, SamBase):
            raise TypeError(
                f"SamPredictor expects a Sam model (from build_sam), got {type(sam_model).__name__}"
            )
        self.model = sam_model
        self.reset_image()

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def transform(self) -> ResizeLongestSide | None:
        """SAM 1's resize-longest-side transform (Meta's ``predictor.transform``); ``None`` for
        families that resize otherwise (SAM 2.1: square resize)."""
        return getattr(self.model, "transform", None)

    # ------------------------------------------------------------------ images
    def set_image(self, image: ImageLike, image_format: str = "RGB") -> None:
        """Compute the embedding of an image.

        Args:
            image: HxWx3 uint8 array in ``image_format`` ("RGB" or "BGR"), a PIL image or a path
                (anything :func:`grounded_sam.load_image` accepts).
        """
        if image_format not in ("RGB", "BGR"):
            raise InputError(f"image_format must be 'RGB' or 'BGR', got {image_format!r}")
        rgb = load_image(image)  # (H, W, 3) first: grayscale/alpha are not colour channels
        if isinstance(image, np.ndarray) and image_format != self.model.image_format:
            rgb = np.ascontiguousarray(rgb[..., ::-1])
        self.set_embedding(self.embed([rgb])[0])

    @torch.no_grad()
    def embed(self, images: Sequence[np.ndarray], batch_size: int = 4) -> list[ImageEmbedding]:
        """Embeddings of several (H, W, 3) uint8 RGB images, ``batch_size`` per encoder pass.

        Does not change the current image. The result of each image equals that of
        :meth:`set_image` on it alone (same model input, per-sample encoder arithmetic).
        """
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise InputError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        for im in images:  # every image, before any encoder pass
            self._check_image_size(np.shape(im)[:2])
        out: list[ImageEmbedding] = []
        for start in range(0, len(images), batch_size):
            chunk = images[start : start + batch_size]
            prepared = [self.model.prepare_image(np.asarray(im)) for im in chunk]
            x = torch.cat([p[0] for p in prepared])
            features, high_res = self.model.encode(x)
            for j, (im, (_, input_size)) in enumerate(zip(chunk, prepared, strict=True)):
                out.append(
                    ImageEmbedding(
                        features[j : j + 1],
                        (int(im.shape[0]), int(im.shape[1])),
                        (int(input_size[0]), int(input_size[1])),
                        tuple(t[j : j + 1] for t in high_res),
                    )
                )
        return out

    def _check_image_size(self, size: tuple[int, ...]) -> None:
        """SAM 1 resizes the long side to ``img_size``: refuse an image whose short side would
        become 0 pixels (SAM 2.1's square resize takes any size)."""
        transform = self.transform
        if transform is None or len(size) != 2:
            return
        h, w = int(size[0]), int(size[1])
        if h < 1 or w < 1:
            return  # empty images are refused where they are read
        input_size = transform.get_preprocess_shape(h, w, transform.target_length)
        check_input_size((h, w), input_size, transform.target_length, self.model.name)

    @torch.no_grad()
    def set_torch_image(
        self, transformed_image: torch.Tensor, original_image_size: tuple[int, ...]
    ) -> None:
        """SAM 1: embed a (1, 3, h, w) image already resized with ``transform`` (long side
        1024), as Meta's ``set_torch_image``."""
        if self.model.family != "sam":
            raise InputError(
                f"set_torch_image takes SAM 1's resized input; {self.model.name!r} is a "
                f"{self.model.family!r} model: use set_image(image)"
            )
        if (
            transformed_image.ndim != 4
            or transformed_image.shape[1] != 3
            or max(*transformed_image.shape[2:]) != self.model.img_size
        ):
            raise InputError(
                "set_torch_image expects a (1, 3, h, w) batch whose long side is "
                f"{self.model.img_size}, got shape {tuple(transformed_image.shape)}"
            )
        self.reset_image()
        original_size = (int(original_image_size[0]), int(original_image_size[1]))
        input_size = (int(transformed_image.shape[-2]), int(transformed_image.shape[-1]))
        x = self.model.preprocess(transformed_image.to(self.device, torch.float32))
        features, high_res = self.model.encode(x)
        self.set_embedding(ImageEmbedding(features, original_size, input_size, high_res))

    def set_embedding(self, embedding: ImageEmbedding) -> None:
        """Make ``embedding`` (from :meth:`get_embedding` or :meth:`embed`) the current image;
        no encoder pass."""
        self.embedding = embedding
        self.features = embedding.features
        self.original_size = embedding.original_size
        self.input_size = embedding.input_size
        self.orig_h, self.orig_w = embedding.original_size
        self.input_h, self.input_w = embedding.input_size
        self.is_image_set = True
        # the image-only part of decoding, now: the first prompt then costs what later ones
        # do (a memo hit, i.e. nothing, when this embedding was set before)
        self.model.prepare_decoder(embedding.features, embedding.high_res)

    def get_embedding(self) -> ImageEmbedding:
        """The current image's embedding and sizes, for caching."""
        self._require_image()
        return self.embedding

    def get_image_embedding(self) -> torch.Tensor:
        """(1, 256, 64, 64) embedding of the current image."""
        self._require_image()
        return self.features

    def reset_image(self) -> None:
        self.is_image_set = False
        self.embedding = None
        self.features = None
        self.orig_h = self.orig_w = self.input_h = self.input_w = None
        self.original_size = self.input_size = None

    def _require_image(self) -> None:
        if not self.is_image_set:
            raise RuntimeError("no image is set: call set_image() before predicting")

    # -------------------------------------------------------------- prompts
    def _to_model_frame(self, coords: np.ndarray | torch.Tensor) -> torch.Tensor:
        """(..., 2) xy pixels -> the model frame, computed in float64 as Meta's numpy
        transform does (callers cast to float32 where Meta does)."""
        t = torch.as_tensor(coords, device=self.device)
        if not t.is_floating_point():
            t = t.to(torch.float64)
        return self.model.transform_coords(t, self.original_size, self.input_size)

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
        multimask_output = _check_flag(multimask_output, "multimask_output")
        return_logits = _check_flag(return_logits, "return_logits")
        coords, labels, box, mask = check_prompt(
            point_coords, point_labels, box, mask_input, tuple(self.model.mask_input_size)
        )
        coords_t = labels_t = box_t = mask_t = None
        if coords is not None:
            coords_t = self._to_model_frame(coords)[None].float()
            labels_t = torch.as_tensor(labels, dtype=torch.int, device=self.device)[None]
        if box is not None:
            box_t = self._to_model_frame(box.reshape(1, 2, 2)).reshape(1, 4).float()
        if mask is not None:
            mask_t = torch.as_tensor(mask, device=self.device)[None]
        masks, iou, low_res = self.predict_torch(
            coords_t,
            labels_t,
            box_t,
            mask_t,
            multimask_output=multimask_output,
            return_logits=return_logits,
        )
        return masks[0].cpu().numpy(), iou[0].cpu().numpy(), low_res[0].cpu().numpy()

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
        """Batched prediction with prompts in the model-input frame.

        Args:
            point_coords: (B, N, 2); point_labels: (B, N); boxes: (B, 4); mask_input:
                (B, 1, 256, 256).
        Returns:
            masks (B, C, H, W) bool (or logits), iou_predictions (B, C), low_res_logits
            (B, C, 256, 256).
        Raises:
            RuntimeError: no image is set.
            InputError: a prompt is not a torch tensor, has the wrong shape, or the prompts'
                batch sizes differ.
        """
        self._require_image()
        multimask_output = _check_flag(multimask_output, "multimask_output")
        return_logits = _check_flag(return_logits, "return_logits")
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
        self._check_decode_inputs(point_coords, point_labels, boxes, mask_input)
        emb = self.embedding
        return self.model.decode(
            emb.features,
            emb.high_res,
            point_coords,
            point_labels,
            boxes,
            mask_input,
            multimask_output,
        )

    @staticmethod
    def _check_point_pair(point_coords: object, point_labels: object) -> None:
        if (point_coords is None) != (point_labels is None):
            raise InputError("point_coords and point_labels must be given together")

    @staticmethod
    def _check_point_shapes(point_coords, point_labels) -> None:
        """(B, N, 2) coordinates and (B, N) labels (numpy arrays or tensors)."""
        if point_coords.ndim != 3 or point_coords.shape[-1] != 2:
            raise InputError(
                f"point_coords must be (B, N, 2): N x, y points for each of B prompts, got "
                f"{tuple(point_coords.shape)}"
            )
        if tuple(point_labels.shape) != tuple(point_coords.shape[:2]):
            raise InputError(
                f"point_labels must be {tuple(point_coords.shape[:2])} to match point_coords, "
                f"got {tuple(point_labels.shape)}"
            )

    def _check_decode_inputs(self, point_coords, point_labels, boxes, mask_input) -> None:
        """Types and shapes of a batch of torch prompts (no device sync: shapes only)."""
        for name, value in (
            ("point_coords", point_coords),
            ("point_labels", point_labels),
            ("boxes", boxes),
            ("mask_input", mask_input),
        ):
            if value is not None and not isinstance(value, torch.Tensor):
                raise InputError(
                    f"predict_torch takes torch tensors in the model-input frame, got {name} as "
                    f"{type(value).__name__}: use predict() (one prompt) or predict_low_res() "
                    "(a batch) for prompts in image pixels, or convert with torch.as_tensor() "
                    "after predictor.transform.apply_coords / apply_boxes"
                )
        self._check_point_pair(point_coords, point_labels)
        batch: dict[str, int] = {}
        if point_coords is not None:
            self._check_point_shapes(point_coords, point_labels)
            batch["point_coords"] = int(point_coords.shape[0])
        if boxes is not None:
            if boxes.ndim != 2 or boxes.shape[-1] != 4:
                raise InputError(
                    f"boxes must be (B, 4) as x0, y0, x1, y1, got {tuple(boxes.shape)}"
                )
            batch["boxes"] = int(boxes.shape[0])
        if len(set(batch.values())) > 1:
            raise InputError(
                "the prompts' batch sizes differ: "
                + ", ".join(f"{k} has {v}" for k, v in batch.items())
                + "; give one row per prompt in each"
            )
        if mask_input is not None:
            expected = (1, *self.model.mask_input_size)
            if mask_input.ndim != 4 or tuple(mask_input.shape[1:]) != expected:
                raise InputError(
                    f"mask_input must be (B, {', '.join(map(str, expected))}) low-res logits "
                    f"(low_res_logits of a previous call), got {tuple(mask_input.shape)}"
                )
            n = next(iter(batch.values()), None)
            if n is not None and int(mask_input.shape[0]) not in (1, n):
                raise InputError(
                    f"mask_input has {int(mask_input.shape[0])} masks for {n} prompts; give "
                    "one mask per prompt (or one for all)"
                )

    @torch.no_grad()
    def predict_low_res(
        self,
        point_coords: np.ndarray | torch.Tensor | None = None,
        point_labels: np.ndarray | torch.Tensor | None = None,
        boxes: np.ndarray | torch.Tensor | None = None,
        mask_input: torch.Tensor | None = None,
        multimask_output: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Decode a batch of prompts given in original-image pixels, without upsampling.

        For callers that filter before paying for full-resolution masks (the automatic mask
        generator) and then upsample the survivors with :meth:`postprocess`.

        Args:
            point_coords: (B, N, 2) xy pixels (float64 coordinates stay float64 into the
                prompt encoder, as in Meta's automatic generator); point_labels: (B, N);
                boxes: (B, 4) XYXY pixels; mask_input: (B, 1, 256, 256) logits.
        Returns:
            low-res logits (B, C, 256, 256) and predicted IoU (B, C), float32 on the device.
        Raises:
            RuntimeError: no image is set.
            InputError: the checks of :meth:`predict` (points and labels together, finite,
                labels 0 or 1; boxes XYXY and finite; mask_input's shape) and matching batch
                sizes.
        """
        self._require_image()
        multimask_output = _check_flag(multimask_output, "multimask_output")
        self._check_point_pair(point_coords, point_labels)
        if point_coords is not None:
            pc, pl = _host(point_coords, "point_coords"), _host(point_labels, "point_labels")
            self._check_point_shapes(pc, pl)
            if pc.size:  # predict()'s checks of the values, on all points at once
                check_prompt(pc.reshape(-1, 2), pl.reshape(-1), None, None, (0, 0))
        if boxes is not None:
            check_boxes(_host(boxes, "boxes"), "boxes")
        if mask_input is not None and not isinstance(mask_input, torch.Tensor):
            mask_input = torch.as_tensor(
                finite_array(mask_input, "mask_input", dtype=np.float32), device=self.device
            )
        coords_t = labels_t = boxes_t = None
        if point_coords is not None:
            coords_t = self._to_model_frame(point_coords)
            labels_t = torch.as_tensor(point_labels, dtype=torch.int, device=self.device)
        if boxes is not None:
            boxes_t = self._to_model_frame(torch.as_tensor(boxes).reshape(-1, 2, 2))
            boxes_t = boxes_t.reshape(-1, 4).float()
        return self._decode(coords_t, labels_t, boxes_t, mask_input, multimask_output)

    def postprocess(self, low_res: torch.Tensor) -> torch.Tensor:
        """(B, C, 256, 256) low-res logits of the current image -> (B, C, H, W) logits."""
        self._require_image()
        return self.model.postprocess_masks(low_res, self.input_size, self.original_size)

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
        multimask_output = _check_flag(multimask_output, "multimask_output")
        return_logits = _check_flag(return_logits, "return_logits")
        b = _check_boxes_arg(boxes)
        c = 3 if multimask_output else 1
        h, w = self.original_size
        if b.shape[0] == 0:
            dtype = np.float32 if return_logits else bool
            return np.zeros((0, c, h, w), dtype=dtype), np.zeros((0, c), dtype=np.float32)
        low_res, iou = self.predict_low_res(boxes=b, multimask_output=multimask_output)
        out = np.empty((b.shape[0], c, h, w), dtype=np.float32 if return_logits else bool)
        chunk = 16  # bound the memory of full-resolution logits
        for i in range(0, b.shape[0], chunk):
            m = self.postprocess(low_res[i : i + chunk])
            out[i : i + chunk] = (
                (m if return_logits else m > self.model.mask_threshold).cpu().numpy()
            )
        return out, iou.cpu().numpy()
