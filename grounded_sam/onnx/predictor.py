"""``OnnxSamPredictor``: :class:`grounded_sam.SamPredictor`'s interface over an exported folder,
with onnxruntime doing the SAM work.

from grounded_sam.onnx import OnnxSamPredictor

p = OnnxSamPredictor("exports/mobile_sam")      # written by `grounded-sam export-onnx`
p.set_image(image)
masks, scores, low_res = p.predict(point_coords=[[320, 240]], point_labels=[1])
masks, scores = p.predict_boxes(boxes)          # (N, 4) XYXY pixels

Embeddings are :class:`grounded_sam.predictor.ImageEmbedding` (CPU tensors over the
onnxruntime outputs, no copy), so they go into the pipeline's cache and can be exchanged with
a PyTorch :class:`~grounded_sam.SamPredictor` of the same weights.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from grounded_sam.errors import InputError
from grounded_sam.io import ImageLike, load_image
from grounded_sam.masks import check_prompt
from grounded_sam.model.transforms import check_input_size
from grounded_sam.onnx import files
from grounded_sam.onnx.runtime import session
from grounded_sam.predictor import (
    ImageEmbedding,
    _check_boxes_arg,
    _check_flag,
)

__all__ = ["OnnxSam", "OnnxSamPredictor"]


class OnnxSam:
    """An exported SAM: onnxruntime sessions of ``encoder.onnx`` / ``decoder.onnx`` and the
    folder's metadata, with the family interface of :class:`grounded_sam.model.sam.SamBase`
    in numpy.

    Args:
        directory: a folder written by :func:`grounded_sam.onnx.export_onnx`.
        providers: onnxruntime execution providers (default ``["CPUExecutionProvider"]``).
        threads: intra-op threads per session (default: onnxruntime's choice).
        spinning: onnxruntime's threads spin-wait after a run (its default); ``False`` when
            the process computes other things between calls (see
            :func:`grounded_sam.onnx.runtime.session`).

    Attributes:
        name, family (``"sam"`` / ``"sam2"``), img_size (1024), mask_input_size (256, 256),
        mask_threshold (0.0), image_format (``"RGB"``), precision (``"fp32"``, or ``"int8"``
        for a ``--quantize`` export), metadata (the ``sam_onnx.json`` dict), device (the CPU:
        where the outputs live, as numpy arrays).
    """

    mask_threshold: float = 0.0
    image_format: str = "RGB"

    def __init__(
        self,
        directory: str | os.PathLike,
        *,
        providers: Sequence[str] | None = None,
        threads: int | None = None,
        spinning: bool = True,
    ) -> None:
        self.directory = Path(directory)
        meta = files.read_metadata(self.directory)
        self._init(
            self.directory / meta["encoder"]["file"],
            self.directory / meta["decoder"]["file"],
            meta,
            providers,
            threads,
            spinning,
        )

    @classmethod
    def from_files(
        cls,
        encoder: str | os.PathLike,
        decoder: str | os.PathLike,
        metadata: dict[str, Any],
        *,
        providers: Sequence[str] | None = None,
        threads: int | None = None,
    ) -> OnnxSam:
        """Sessions of two model files described by ``metadata`` (used while exporting,
        before the folder is complete)."""
        self = cls.__new__(cls)
        self.directory = Path(encoder).parent
        self._init(Path(encoder), Path(decoder), metadata, providers, threads, True)
        return self

    def _init(self, encoder, decoder, meta, providers, threads, spinning) -> None:
        self.metadata = meta
        self.name = meta["model"]
        self.family = meta["family"]
        self.img_size = int(meta["image_size"])
        self.mask_input_size = tuple(meta["mask_input_size"])
        self.precision = "int8" if meta.get("quantized") else "fp32"
        self.num_masks = int(meta["decoder"]["masks"])
        self.device = torch.device("cpu")
        # The encoder's activations are large (vit_b: 3.9 GB peak, the global attention
        # blocks' (12, 4096, 4096) matrices) and needed once per image: without the memory
        # arena they are returned after each run instead of staying reserved (the allocation
        # costs milliseconds of a seconds-long run). The decoder runs often and small.
        self.encoder = _session(encoder, providers, threads, memory_arena=False, spinning=spinning)
        self.decoder = _session(decoder, providers, threads, spinning=spinning)
        self._enc_out = list(meta["encoder"]["outputs"])
        self._dec_in = list(meta["decoder"]["inputs"])
        self._dec_out = list(meta["decoder"]["outputs"])
        got = [i.name for i in self.decoder.get_inputs()]
        if got != self._dec_in:
            raise InputError(
                f"{decoder} has inputs {got}, its metadata lists {self._dec_in}: the folder "
                "mixes files of different exports; export again"
            )

    def __repr__(self) -> str:
        return f"OnnxSam({self.name!r}, family={self.family!r}, precision={self.precision!r})"

    # ------------------------------------------------------------------ image
    def prepare_image(self, image: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
        """(H, W, 3) uint8 RGB -> ((1, 3, S, S) float32 encoder input, (h, w) of the image in
        it); see :func:`grounded_sam.onnx.files.preprocess`."""
        return files.preprocess(image, self.metadata)

    def encode(self, x: np.ndarray) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
        """(1, 3, S, S) encoder input -> ((1, 256, 64, 64) embedding, high-resolution
        features: SAM 2.1's (1, 32, 256, 256) and (1, 64, 128, 128); none for SAM 1)."""
        name = self.encoder.get_inputs()[0].name
        out = dict(zip(self._enc_out, self.encoder.run(self._enc_out, {name: x}), strict=True))
        high_res = tuple(out[k] for k in self._enc_out if k != "image_embeddings")
        return out["image_embeddings"], high_res

    # ------------------------------------------------------------------ prompts
    def transform_coords(
        self, coords: np.ndarray, original_size: tuple[int, int], input_size: tuple[int, int]
    ) -> np.ndarray:
        """(..., 2) xy pixels of the original (H, W) image -> float32 xy in the model frame,
        with the arithmetic of the PyTorch models' ``transform_coords`` (SAM 1: x * w / W in
        float64, as Meta's ``ResizeLongestSide.apply_coords``; SAM 2.1: x / W * 1024 in
        float32)."""
        h, w = original_size
        ih, iw = input_size
        if self.family == "sam2":
            c = np.array(coords, dtype=np.float32, copy=True)
            c[..., 0] = c[..., 0] / np.float32(w)
            c[..., 1] = c[..., 1] / np.float32(h)
            return c * np.array([iw, ih], dtype=np.float32)
        c = np.array(coords, dtype=np.float64, copy=True)
        c[..., 0] = c[..., 0] * (iw / w)
        c[..., 1] = c[..., 1] * (ih / h)
        return c.astype(np.float32)

    def decode(
        self,
        embedding: np.ndarray,
        high_res: tuple[np.ndarray, ...],
        point_coords: np.ndarray,
        point_labels: np.ndarray,
        mask_input: np.ndarray | None,
        original_size: tuple[int, int],
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One decoder call with inputs in the exported layout.

        Args:
            embedding: (1, 256, 64, 64); high_res: SAM 2.1's two feature maps.
            point_coords: (1, N, 2) float32 in the model frame; point_labels: (1, N) float32
                (see :func:`grounded_sam.onnx.files.decoder_prompt`).
            mask_input: (1, 1, 256, 256) logits, or None.
            original_size: (H, W).
        Returns:
            masks (1, C, H, W) logits, iou_predictions (1, C), low_res_masks (1, C, 256, 256);
            C is 4 (single-mask token, then the three multimask outputs) or 1.
        """
        has = mask_input is not None
        feed = {
            "image_embeddings": embedding,
            "point_coords": np.ascontiguousarray(point_coords, dtype=np.float32),
            "point_labels": np.ascontiguousarray(point_labels, dtype=np.float32),
            "mask_input": (
                np.ascontiguousarray(mask_input, dtype=np.float32)
                if has
                else np.zeros((1, 1, *self.mask_input_size), np.float32)
            ),
            "has_mask_input": np.array([1.0 if has else 0.0], np.float32),
            "orig_im_size": np.array(original_size, dtype=np.float32),
        }
        for k, t in zip(("high_res_feats_0", "high_res_feats_1"), high_res, strict=False):
            feed[k] = t
        masks, iou, low_res = self.decoder.run(self._dec_out, {k: feed[k] for k in self._dec_in})
        return masks, iou, low_res


def _session(path: Path, providers, threads, **options):
    """:func:`grounded_sam.onnx.runtime.session`, with onnxruntime's refusal of a truncated
    or corrupt model file (its own exception classes: ``InvalidProtobuf``, ``Fail``, ...)
    turned into an :class:`InputError` naming the file."""
    try:
        return session(path, providers, threads, **options)
    except Exception as e:
        if not type(e).__module__.startswith("onnxruntime"):
            raise
        raise InputError(
            f"{str(path)!r} is not a loadable ONNX model (truncated or corrupt: "
            f"{type(e).__name__}: {str(e).strip()[:300]}); export the folder again with "
            "`grounded-sam export-onnx`"
        ) from e


def _as_numpy(t: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(t, torch.Tensor):
        return t.detach().to("cpu", torch.float32).contiguous().numpy()
    return np.ascontiguousarray(t, dtype=np.float32)


class OnnxSamPredictor:
    """:class:`grounded_sam.SamPredictor`'s interface, run by onnxruntime on an export folder.

    Implements ``set_image``, ``embed``, ``set_embedding`` / ``get_embedding`` /
    ``get_image_embedding`` / ``reset_image``, ``predict`` and ``predict_boxes`` with the same
    arguments, shapes and results (within float rounding of the PyTorch path); coordinates are
    (x, y) pixels of the original image. ``predict_torch``, ``predict_low_res`` /
    ``postprocess`` and ``set_torch_image`` (PyTorch-frame entry points, used by the
    automatic mask generator) are not provided: use :class:`~grounded_sam.SamPredictor`.

    Args:
        model: an export folder (``grounded-sam export-onnx --out DIR``) or an
            :class:`OnnxSam`. The folder must hold the default four-mask decoder (not
            ``--single-mask``), from which ``multimask_output`` picks as PyTorch does.
        providers: onnxruntime execution providers (default ``["CPUExecutionProvider"]``).
        threads: intra-op threads per session (default: onnxruntime's choice).

    Raises:
        InputError: not an export folder, a single-mask export, or a model file onnxruntime
            cannot load (truncated or corrupt: export again).
        MissingDependency: onnxruntime is not installed.
    """

    def __init__(
        self,
        model: str | os.PathLike | OnnxSam,
        *,
        providers: Sequence[str] | None = None,
        threads: int | None = None,
    ) -> None:
        if not isinstance(model, OnnxSam):
            model = OnnxSam(model, providers=providers, threads=threads)
        if model.num_masks != 4:
            raise InputError(
                f"{model.directory} holds a single-mask decoder (exported with --single-mask), "
                "which picks its mask by its own rule; OnnxSamPredictor needs the default "
                "four-mask export to honour multimask_output: export again without --single-mask"
            )
        self.model = model
        self.reset_image()

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def transform(self):
        """SAM 1's resize-longest-side transform (Meta's ``predictor.transform``); ``None``
        for SAM 2.1."""
        if self.model.family == "sam2":
            return None
        from grounded_sam.model.transforms import ResizeLongestSide

        return ResizeLongestSide(self.model.img_size)

    # ------------------------------------------------------------------ images
    def set_image(self, image: ImageLike, image_format: str = "RGB") -> None:
        """Compute the embedding of an image (see :meth:`grounded_sam.SamPredictor.set_image`)."""
        if image_format not in ("RGB", "BGR"):
            raise InputError(f"image_format must be 'RGB' or 'BGR', got {image_format!r}")
        rgb = load_image(image)  # (H, W, 3) first: grayscale/alpha are not colour channels
        if isinstance(image, np.ndarray) and image_format != self.model.image_format:
            rgb = np.ascontiguousarray(rgb[..., ::-1])
        self.set_embedding(self.embed([rgb])[0])

    def embed(self, images: Sequence[np.ndarray], batch_size: int = 4) -> list[ImageEmbedding]:
        """Embeddings of (H, W, 3) uint8 RGB images, one encoder call each (the exported
        encoder takes one image); ``batch_size`` is accepted for ``SamPredictor``
        compatibility. Does not change the current image."""
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise InputError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        for im in images:  # every image, before any encoder call
            size = np.shape(im)[:2]
            if len(size) == 2 and min(size) >= 1:
                input_size = files.preprocessed_size(
                    int(size[0]), int(size[1]), self.model.metadata
                )
                check_input_size(
                    (int(size[0]), int(size[1])), input_size, self.model.img_size, self.model.name
                )
        out = []
        for im in images:
            im = np.asarray(im)
            x, input_size = self.model.prepare_image(im)
            emb, high_res = self.model.encode(x)
            out.append(
                ImageEmbedding(
                    torch.from_numpy(emb),
                    (int(im.shape[0]), int(im.shape[1])),
                    (int(input_size[0]), int(input_size[1])),
                    tuple(torch.from_numpy(t) for t in high_res),
                )
            )
        return out

    def set_embedding(self, embedding: ImageEmbedding) -> None:
        """Make ``embedding`` the current image (no encoder call)."""
        if not isinstance(embedding, ImageEmbedding):
            raise InputError(
                f"set_embedding expects an ImageEmbedding, got {type(embedding).__name__}"
            )
        n_high = 2 if self.model.family == "sam2" else 0
        if len(embedding.high_res) != n_high:
            raise InputError(
                f"this embedding has {len(embedding.high_res)} high-resolution feature maps; "
                f"a {self.model.family!r} model needs {n_high}: it comes from another family"
            )
        self.embedding = embedding
        self.features = embedding.features
        self._emb = _as_numpy(embedding.features)
        self._high_res = tuple(_as_numpy(t) for t in embedding.high_res)
        self.original_size = embedding.original_size
        self.input_size = embedding.input_size
        self.orig_h, self.orig_w = embedding.original_size
        self.input_h, self.input_w = embedding.input_size
        self.is_image_set = True

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
        self.embedding = self.features = None
        self._emb, self._high_res = None, ()
        self.orig_h = self.orig_w = self.input_h = self.input_w = None
        self.original_size = self.input_size = None

    def _require_image(self) -> None:
        if not self.is_image_set:
            raise RuntimeError("no image is set: call set_image() before predicting")

    # -------------------------------------------------------------- prompts
    def _model_frame(self, coords: np.ndarray) -> np.ndarray:
        return self.model.transform_coords(coords, self.original_size, self.input_size)

    def _decode_one(
        self,
        coords: np.ndarray | None,
        labels: np.ndarray | None,
        box: np.ndarray | None,
        mask_input: np.ndarray | None,
        multimask_output: bool,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One prompt -> masks (C, H, W) logits, iou (C,), low_res (C, 256, 256)."""
        pc, pl = files.decoder_prompt(
            self.model.family,
            None if coords is None else self._model_frame(coords),
            labels,
            None if box is None else self._model_frame(box.reshape(2, 2)).reshape(4),
        )
        masks, iou, low_res = self.model.decode(
            self._emb, self._high_res, pc, pl, mask_input, self.original_size
        )
        masks, iou, low_res = masks[0], iou[0], low_res[0]
        if multimask_output:
            return masks[1:], iou[1:], low_res[1:]
        k = self._single_mask_index(low_res, iou)
        return masks[k : k + 1], iou[k : k + 1], low_res[k : k + 1]

    def _single_mask_index(self, low_res: np.ndarray, iou: np.ndarray) -> int:
        """Which of the four masks is the single-mask output: token 0; for SAM 2.1 with its
        stability fallback, the best multimask output when token 0's low-res logits are
        unstable (as ``Sam2MaskDecoder``; the clamp to +-32 does not move the +-delta
        thresholds)."""
        stab = self.model.metadata.get("single_mask_stability")
        if self.model.family != "sam2" or not stab:
            return 0
        flat = low_res[0].reshape(-1)
        inter = float(np.count_nonzero(flat > stab["delta"]))
        union = float(np.count_nonzero(flat > -stab["delta"]))
        stability = np.float32(inter) / np.float32(union) if union > 0 else 1.0
        if stability >= stab["thresh"]:
            return 0
        return int(np.argmax(iou[1:])) + 1

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
        coords, labels, b, m = check_prompt(
            point_coords, point_labels, box, mask_input, tuple(self.model.mask_input_size)
        )
        if b is not None:
            b = b[0]
        if m is not None:
            m = m[None]
        masks, iou, low_res = self._decode_one(coords, labels, b, m, multimask_output)
        if not return_logits:
            masks = masks > self.model.mask_threshold
        return masks, iou.astype(np.float32), low_res.astype(np.float32)

    def predict_boxes(
        self, boxes: np.ndarray, multimask_output: bool = False, return_logits: bool = False
    ) -> tuple[np.ndarray, np.ndarray]:
        """Masks of many box prompts (one decoder call per box: the exported decoder takes one
        prompt).

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
        out = np.empty((b.shape[0], c, h, w), dtype=np.float32 if return_logits else bool)
        scores = np.zeros((b.shape[0], c), dtype=np.float32)
        for i, box in enumerate(b):
            masks, iou, _ = self._decode_one(None, None, box, None, multimask_output)
            out[i] = masks if return_logits else masks > self.model.mask_threshold
            scores[i] = iou
        return out, scores
