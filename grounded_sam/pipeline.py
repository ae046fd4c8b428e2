"""The grounded pipeline: text -> detector boxes -> one batched SAM decoder call -> ``Result``.

from grounded_sam import segment, GroundedSAM

result = segment("cat.jpg", "a cat", detector="grounding-dino", sam="mobile_sam")
gs = GroundedSAM(detector="yolo-clip", sam="mobile_sam")
result = gs.segment(image, "a cat. a dog.")        # text prompt
result = gs.segment(image, points=[[120, 80]])      # SAM's own prompts, no detector
result.to_coco(image_id=1); result.save("out/cat"); result.overlay()
"""

from __future__ import annotations

import json
import os
import re
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = ["Result", "GroundedSAM", "segment", "get_pipeline", "clear_pipelines"]

TIMING_KEYS = ("detector", "encoder", "decoder", "total")


def _safe_name(label: str, limit: int = 40) -> str:
    """A file-name-safe form of a label: ``"a dog's tail"`` -> ``"a_dog_s_tail"``."""
    name = re.sub(r"[^A-Za-z0-9]+", "_", label).strip("_")[:limit].strip("_")
    return name or "object"


@dataclass(eq=False)
class Result:
    """Instances found in one image.

    Attributes:
        masks: ``(N, H, W)`` bool instance masks at the original image size.
        boxes: ``(N, 4)`` float32 XYXY boxes in original-image pixels (x right, y down),
            clipped to the image. For text prompts: the detector's boxes; for box prompts:
            the (clipped) boxes given; for point prompts: the bounding box of the mask
            (all zeros for an empty mask).
        scores: ``(N,)`` float32 instance confidence. For text prompts the detector's score;
            for point/box prompts (no detector) SAM's predicted IoU, i.e. equal to
            ``mask_scores``.
        mask_scores: ``(N,)`` float32 SAM predicted IoU of each mask. With
            ``refine_with_sam=False`` (detector masks used as they are) no SAM score exists
            and the detector's score is repeated here.
        labels: ``N`` strings: the detector phrase, or ``"point"`` / ``"box"`` for SAM prompts.
        image_size: ``(H, W)`` of the image.
        timings: seconds per stage: ``"detector"``, ``"encoder"`` (0.0 when the image
            embedding came from the cache), ``"decoder"`` and ``"total"`` (wall time of the
            whole ``segment`` call, image loading included). Empty for hand-built results.
        image: the ``(H, W, 3)`` uint8 RGB image the result belongs to, kept by reference
            (not copied, not compared, not saved in ``result.json``) so :meth:`overlay` and
            :meth:`save` can draw without being given the image again. ``None`` is allowed;
            then pass ``image=`` to those methods.
    """

    masks: np.ndarray
    boxes: np.ndarray
    scores: np.ndarray
    mask_scores: np.ndarray
    labels: list[str]
    image_size: tuple[int, int]
    timings: dict[str, float] = field(default_factory=dict)
    image: np.ndarray | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if len(self.image_size) != 2:
            raise ValueError(f"image_size must be (H, W), got {self.image_size!r}")
        h, w = (int(v) for v in self.image_size)
        if h <= 0 or w <= 0:
            raise ValueError(f"image_size must be positive (H, W), got {self.image_size!r}")
        self.image_size = (h, w)
        masks = np.asarray(self.masks)
        if masks.size == 0:
            masks = masks.reshape(0, h, w)
        if masks.ndim != 3 or masks.shape[1:] != (h, w):
            raise ValueError(
                f"Result.masks must have shape (N, {h}, {w}) to match image_size, got {masks.shape}"
            )
        n = masks.shape[0]
        boxes = np.asarray(self.boxes, dtype=np.float32)
        if boxes.size == 0:
            boxes = boxes.reshape(0, 4)
        if boxes.shape != (n, 4):
            raise ValueError(f"Result.boxes must have shape ({n}, 4), got {boxes.shape}")
        scores = np.asarray(self.scores, dtype=np.float32).reshape(-1)
        mask_scores = np.asarray(self.mask_scores, dtype=np.float32).reshape(-1)
        for name, arr in (("scores", scores), ("mask_scores", mask_scores)):
            if arr.shape != (n,):
                raise ValueError(f"Result.{name} must have shape ({n},), got {arr.shape}")
        labels = list(self.labels)
        if len(labels) != n or not all(isinstance(s, str) for s in labels):
            raise ValueError(f"Result.labels must be {n} strings, got {labels!r}")
        if self.image is not None:
            img = np.asarray(self.image)
            if img.shape != (h, w, 3) or img.dtype != np.uint8:
                raise ValueError(
                    f"Result.image must be an ({h}, {w}, 3) uint8 array, got shape {img.shape} "
                    f"dtype {img.dtype}"
                )
            self.image = img
        self.masks = masks.astype(bool, copy=False)
        self.boxes = boxes
        self.scores = scores
        self.mask_scores = mask_scores
        self.labels = labels
        self.timings = {str(k): float(v) for k, v in dict(self.timings).items()}

    def __len__(self) -> int:
        return int(self.masks.shape[0])

    @classmethod
    def empty(
        cls,
        image_size: tuple[int, int],
        *,
        timings: dict[str, float] | None = None,
        image: np.ndarray | None = None,
    ) -> Result:
        """A result with no instances (no detections is not an error)."""
        h, w = (int(v) for v in image_size)
        return cls(
            masks=np.zeros((0, h, w), dtype=bool),
            boxes=np.zeros((0, 4), dtype=np.float32),
            scores=np.zeros(0, dtype=np.float32),
            mask_scores=np.zeros(0, dtype=np.float32),
            labels=[],
            image_size=(h, w),
            timings=dict(timings or {}),
            image=image,
        )

    # ------------------------------------------------------------------ export
    def category_ids(self, category_ids: dict[str, int] | None = None) -> dict[str, int]:
        """Label -> COCO category id. Default: ids 1, 2, ... in order of first appearance.

        Raises:
            ValueError: a label of this result is missing from the given ``category_ids``.
        """
        if category_ids is None:
            return {label: i + 1 for i, label in enumerate(dict.fromkeys(self.labels))}
        missing = sorted(set(self.labels) - set(category_ids))
        if missing:
            raise ValueError(
                f"category_ids has no id for the labels {missing}; "
                f"give one for every label, got keys {sorted(category_ids)}"
            )
        return {str(k): int(v) for k, v in category_ids.items()}

    def to_coco(
        self,
        image_id: int = 1,
        category_ids: dict[str, int] | None = None,
        *,
        first_annotation_id: int = 1,
    ) -> list[dict]:
        """COCO-style annotation dicts (a detection-results list with extra fields).

        Each dict: ``id``, ``image_id``, ``category_id`` (from ``category_ids``, a
        ``{label: id}`` map; default ids 1.. in order of first appearance), ``segmentation``
        (compressed RLE ``{"size": [H, W], "counts": str}``, decodable with
        ``pycocotools.mask.decode``), ``area`` (mask pixels), ``bbox`` ``[x, y, w, h]`` from
        :attr:`boxes`, ``score``, ``mask_score``, ``label`` and ``iscrowd`` (0).
        """
        from pycocotools import mask as mask_utils

        ids = self.category_ids(category_ids)
        out = []
        for i in range(len(self)):
            m = np.asfortranarray(self.masks[i].astype(np.uint8))
            rle = mask_utils.encode(m)
            rle["counts"] = rle["counts"].decode("ascii")
            x0, y0, x1, y1 = (float(v) for v in self.boxes[i])
            out.append(
                {
                    "id": first_annotation_id + i,
                    "image_id": int(image_id),
                    "category_id": ids[self.labels[i]],
                    "segmentation": {
                        "size": [int(v) for v in rle["size"]],
                        "counts": rle["counts"],
                    },
                    "area": int(self.masks[i].sum()),
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "score": float(self.scores[i]),
                    "mask_score": float(self.mask_scores[i]),
                    "label": self.labels[i],
                    "iscrowd": 0,
                }
            )
        return out

    def to_json(self, image_id: int = 1, category_ids: dict[str, int] | None = None) -> dict:
        """What :meth:`save` writes as ``result.json``: image size, categories, annotations
        (:meth:`to_coco`) and timings."""
        ids = self.category_ids(category_ids)
        used = dict.fromkeys(self.labels)
        return {
            "image": {
                "id": int(image_id),
                "height": self.image_size[0],
                "width": self.image_size[1],
            },
            "categories": [{"id": ids[label], "name": label} for label in used],
            "annotations": self.to_coco(image_id=image_id, category_ids=ids),
            "timings": dict(self.timings),
        }

    def overlay(self, image: np.ndarray | None = None, alpha: float = 0.5) -> np.ndarray:
        """The image with coloured masks (a distinct colour per instance), boxes and labels.

        Args:
            image: ``(H, W, 3)`` uint8 RGB (or anything ``load_image`` accepts); default the
                image kept in :attr:`image`.
            alpha: mask opacity in ``[0, 1]``.
        Returns:
            ``(H, W, 3)`` uint8 RGB.
        Raises:
            RuntimeError: no image given and none kept in the result.
        """
        from grounded_sam.visualize import draw_overlay

        img = self._image_for(image)
        return draw_overlay(
            img, self.masks, self.boxes, self.labels, self.scores, alpha=float(alpha)
        )

    def _image_for(self, image) -> np.ndarray:
        if image is None:
            if self.image is None:
                raise RuntimeError(
                    "this Result keeps no image: pass it, e.g. result.overlay(image=...)"
                )
            return self.image
        img = read_image(image)
        if img.shape[:2] != self.image_size:
            raise ValueError(
                f"image has size {img.shape[:2]} but the result is for an image of size "
                f"{self.image_size} (H, W)"
            )
        return img

    def save(
        self,
        out_dir: str | os.PathLike,
        image: np.ndarray | None = None,
        *,
        image_id: int = 1,
        category_ids: dict[str, int] | None = None,
        alpha: float = 0.5,
    ) -> Path:
        """Write ``result.json`` (:meth:`to_json`), ``overlay.png`` and ``masks/NNN_<label>.png``.

        ``masks/`` holds one 8-bit PNG per instance (255 inside, 0 outside), numbered from 000
        in instance order. ``overlay.png`` is written when an image is available (``image``
        or :attr:`image`) and skipped otherwise. ``out_dir`` is created; existing files of
        the same names are overwritten and stale ``masks/NNN_*.png`` of an earlier save are
        removed. For an all-or-nothing write use the CLI's ``atomic_dir``. Returns
        ``Path(out_dir)``.
        """
        from PIL import Image

        out = Path(out_dir)
        img = None if image is None and self.image is None else self._image_for(image)
        doc = self.to_json(image_id=image_id, category_ids=category_ids)
        mask_dir = out / "masks"
        mask_dir.mkdir(parents=True, exist_ok=True)
        for old in mask_dir.glob("*.png"):
            if re.fullmatch(r"\d{3,}_.*\.png", old.name):
                old.unlink()
        for i, label in enumerate(self.labels):
            Image.fromarray(self.masks[i].astype(np.uint8) * 255).save(
                mask_dir / f"{i:03d}_{_safe_name(label)}.png"
            )
        if img is not None:
            Image.fromarray(self.overlay(img, alpha=alpha)).save(out / "overlay.png")
        (out / "result.json").write_text(json.dumps(doc, indent=1) + "\n")
        return out


# ---------------------------------------------------------------------------- pipeline
_BUILTIN_DETECTORS = ("grounding-dino", "yolo-clip")
_DEFERRED_DEVICE = object()  # placeholder: "the SAM device", filled in once SAM is built


def read_image(image) -> np.ndarray:
    """:func:`grounded_sam.load_image`, where an ``ImportError`` while identifying a file means
    the file is not a readable image (``ValueError``).

    Importing ultralytics (``yolo-clip``, MobileSAM references) patches ``PIL.Image.open`` so
    that a file PIL cannot identify triggers an import of the optional ``pi_heif``; without
    this guard a text file named ``.jpg`` would surface as ``ModuleNotFoundError``.
    """
    from grounded_sam.io import load_image

    try:
        return load_image(image)
    except ImportError as e:
        raise ValueError(
            f"{str(image)!r} is not a readable image (PIL cannot identify it; {e}); expected "
            "a JPEG, PNG, TIFF, BMP or WebP file"
        ) from e


def _image_key(image: np.ndarray) -> tuple:
    """Cache key of an image's content: BLAKE2b of its bytes, with its shape."""
    import hashlib

    digest = hashlib.blake2b(np.ascontiguousarray(image).data, digest_size=16).hexdigest()
    return (image.shape, digest)


def _clip_boxes(boxes: np.ndarray, image_size: tuple[int, int], name: str) -> np.ndarray:
    """Clip (N, 4) XYXY boxes to the image; a box with no area left is a ``ValueError``."""
    from grounded_sam.predictor import check_boxes

    b = check_boxes(boxes, name)
    h, w = image_size
    clipped = b.copy()
    clipped[:, [0, 2]] = clipped[:, [0, 2]].clip(0, w)
    clipped[:, [1, 3]] = clipped[:, [1, 3]].clip(0, h)
    bad = np.nonzero((clipped[:, 2] <= clipped[:, 0]) | (clipped[:, 3] <= clipped[:, 1]))[0]
    if bad.size:
        i = int(bad[0])
        raise ValueError(
            f"{name}[{i}] = {b[i].tolist()} is degenerate: it has no area inside the "
            f"{w}x{h} (WxH) image after clipping; give x0 < x1 and y0 < y1 overlapping the image"
        )
    return clipped.astype(np.float32)


def _mask_boxes(masks: np.ndarray) -> np.ndarray:
    """(N, H, W) bool -> (N, 4) float32 XYXY bounding boxes (pixel edges); zeros if empty."""
    out = np.zeros((masks.shape[0], 4), dtype=np.float32)
    for i, m in enumerate(masks):
        rows, cols = np.flatnonzero(m.any(axis=1)), np.flatnonzero(m.any(axis=0))
        if rows.size:
            out[i] = (cols[0], rows[0], cols[-1] + 1, rows[-1] + 1)
    return out


def _pick_best(masks: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, C, H, W), (N, C) -> the highest-scoring candidate per prompt: (N, H, W), (N,)."""
    best = scores.argmax(axis=1)
    rows = np.arange(masks.shape[0])
    return masks[rows, best], scores[rows, best].astype(np.float32)


class GroundedSAM:
    """Text-promptable SAM: a detector's boxes decoded by SAM in one batched call.

    Args:
        detector: a detector name (see :func:`grounded_sam.detectors.list_detectors`) or a
            ready object with ``detect(image, text) -> Detections``. Named detectors are
            built on the first text prompt (point/box prompts never need one).
        sam: a SAM variant name (see :func:`grounded_sam.list_models`), a ``Sam`` or a
            ``SamPredictor``.
        sam_checkpoint: official-format checkpoint for a named ``sam``; ``None`` fetches the
            registry weights through :func:`grounded_sam.weights.fetch`.
        precision: for a named ``sam``: ``"fp32"`` (default, exact) or an opt-in faster,
            less accurate mode, ``"bf16"``/``"fp16"`` (GPUs) or ``"int8"`` (CPU); see
            :func:`grounded_sam.build_sam`.
        device: torch device for models built here; ``None`` -> CUDA if available, else CPU.
            A given ``Sam`` / ``SamPredictor`` is moved there only when ``device`` is given.
        cache_size: how many image embeddings to keep (LRU, keyed on the image content).
        **detector_kwargs: passed to ``build_detector`` (e.g. ``box_threshold=0.35``,
            ``model=...``, ``yolo=...``, ``clip=...``); only valid with a detector name.

    Attributes:
        encoder_calls: number of image-encoder passes run so far (cache misses).
    """

    def __init__(
        self,
        detector="grounding-dino",
        sam="mobile_sam",
        *,
        sam_checkpoint: str | os.PathLike | None = None,
        device=None,
        cache_size: int = 8,
        precision: str = "fp32",
        **detector_kwargs,
    ) -> None:
        import torch

        from grounded_sam.detectors import list_detectors
        from grounded_sam.model.build import build_sam, resolve_device
        from grounded_sam.model.precision import check_precision
        from grounded_sam.predictor import SamPredictor

        check_precision(precision)
        if not isinstance(cache_size, int) or cache_size < 1:
            raise ValueError(f"cache_size must be an integer >= 1, got {cache_size!r}")
        # detector (built lazily) ------------------------------------------------
        if isinstance(detector, str):
            known = list_detectors()
            if detector not in known:
                raise ValueError(
                    f"unknown detector {detector!r}; known detectors: {', '.join(known)}"
                )
            self.detector_name = detector
            self._detector = None
            self._detector_kwargs = dict(detector_kwargs)
            if detector in _BUILTIN_DETECTORS:
                self._detector_kwargs.setdefault("device", _DEFERRED_DEVICE)
            elif device is not None:
                self._detector_kwargs.setdefault("device", device)
        elif callable(getattr(detector, "detect", None)):
            if detector_kwargs:
                raise TypeError(
                    f"detector keyword arguments {sorted(detector_kwargs)} only apply when the "
                    "detector is given by name; configure the detector object instead"
                )
            self.detector_name = type(detector).__name__
            self._detector = detector
            self._detector_kwargs = {}
        else:
            raise TypeError(
                "detector must be a detector name or an object with detect(image, text), got "
                f"{type(detector).__name__}"
            )
        # SAM ------------------------------------------------------------------
        if sam_checkpoint is not None and not isinstance(sam, str):
            raise ValueError("sam_checkpoint only applies when sam is a variant name")
        if precision != "fp32" and not isinstance(sam, str):
            raise ValueError(
                "precision only applies when sam is a variant name; for a ready model use "
                "build_sam(..., precision=...) or grounded_sam.model.precision.apply_precision"
            )
        if isinstance(sam, SamPredictor):
            predictor = sam
            if device is not None:
                predictor.model.to(resolve_device(device))
        elif isinstance(sam, torch.nn.Module):
            if device is not None:
                sam.to(resolve_device(device))
            predictor = SamPredictor(sam)
        elif isinstance(sam, str):
            predictor = SamPredictor(
                build_sam(sam, checkpoint=sam_checkpoint, device=device, precision=precision)
            )
        else:
            raise TypeError(
                f"sam must be a variant name, a Sam or a SamPredictor, got {type(sam).__name__}"
            )
        self.predictor = predictor
        self.sam = predictor.model
        self.device = self.sam.device
        if self._detector_kwargs.get("device") is _DEFERRED_DEVICE:
            self._detector_kwargs["device"] = self.device
        self.cache_size = cache_size
        self._cache: OrderedDict = OrderedDict()
        self.encoder_calls = 0

    # -------------------------------------------------------------- components
    @property
    def detector(self):
        """The detector, built from its name on first use."""
        if self._detector is None:
            from grounded_sam.detectors import build_detector

            self._detector = build_detector(self.detector_name, **self._detector_kwargs)
        return self._detector

    def clear_cache(self) -> None:
        """Forget all cached image embeddings."""
        self._cache.clear()

    def _sync(self) -> None:
        if self.device.type == "cuda":
            import torch

            torch.cuda.synchronize(self.device)

    def _set_image(self, image: np.ndarray) -> float:
        """Make ``image`` the predictor's image; returns the encoder seconds (0.0 on a hit)."""
        key = _image_key(image)
        cached = self._cache.get(key)
        if cached is not None:
            self._cache.move_to_end(key)
            self.predictor.set_embedding(cached)
            return 0.0
        t0 = time.perf_counter()
        self.predictor.set_image(image)
        self._sync()
        seconds = time.perf_counter() - t0
        self.encoder_calls += 1
        self._remember(key, self.predictor.get_embedding())
        return seconds

    def _remember(self, key: tuple, embedding) -> None:
        self._cache[key] = embedding
        self._cache.move_to_end(key)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)

    # ------------------------------------------------------------------ segment
    def segment(
        self,
        image,
        text=None,
        *,
        points=None,
        point_labels=None,
        boxes=None,
        multimask_output: bool = False,
        refine_with_sam: bool = True,
    ) -> Result:
        """Segment the objects named by ``text``, or SAM's point/box prompts, in one image.

        Args:
            image: path, PIL image or array (anything :func:`grounded_sam.load_image` takes).
            text: ``"a cat. a dog."`` or ``["a cat", "a dog"]``: the detector finds boxes, SAM
                decodes all of them in one batched decoder call. One instance per box.
            points: ``(P, 2)`` xy pixels of the original image (no ``text``): one prompt made
                of all points -> one instance labelled ``"point"``. With one box as well,
                one instance from the combined point + box prompt (labelled ``"box"``).
            point_labels: ``(P,)`` 1 foreground (default), 0 background.
            boxes: ``(B, 4)`` XYXY pixels (no ``text``): one instance per box, labelled
                ``"box"``. Boxes are clipped to the image; one with no area inside it is an
                error.
            multimask_output: ask SAM for 3 candidate masks per prompt and keep the one with
                the highest predicted IoU (helps ambiguous single points).
            refine_with_sam: ``False`` returns the detector's own masks (``yolo-clip``: pure
                FastSAM-style output) without running SAM.

        Returns:
            :class:`Result` (empty when nothing is detected). ``result.image`` keeps the
            loaded image for :meth:`Result.overlay`.

        Raises:
            ValueError / TypeError: bad image, empty text, both or neither of text and
                points/boxes, malformed points/boxes, or ``refine_with_sam=False`` with a
                detector that returns no masks.
        """
        t0 = time.perf_counter()
        img = read_image(image)
        if text is None:
            return self._segment_prompts(img, points, point_labels, boxes, multimask_output, t0)
        if points is not None or point_labels is not None or boxes is not None:
            raise ValueError(
                "give either text or points/boxes, not both: text prompts get their boxes "
                "from the detector"
            )
        dets, t_det = self._detect(img, text, refine_with_sam)
        return self._decode_detections(img, dets, t_det, multimask_output, refine_with_sam, t0)

    def _detect(self, img: np.ndarray, text, refine_with_sam: bool):
        from grounded_sam.detectors import normalize_phrases

        normalize_phrases(text)  # empty / non-string text fails before any model runs
        detector = self.detector
        t = time.perf_counter()
        dets = detector.detect(img, text)
        self._sync()
        return dets, time.perf_counter() - t

    def _decode_detections(
        self,
        img: np.ndarray,
        dets,
        t_det: float,
        multimask_output: bool,
        refine_with_sam: bool,
        t0: float,
        encoded: tuple | None = None,
    ) -> Result:
        size = (int(img.shape[0]), int(img.shape[1]))
        if not refine_with_sam and dets.masks is None:
            raise ValueError(
                f"refine_with_sam=False needs a detector that returns masks (e.g. 'yolo-clip'); "
                f"{self.detector_name!r} returns boxes only"
            )
        timings = {"detector": t_det, "encoder": 0.0, "decoder": 0.0}
        if len(dets) == 0:
            timings["total"] = time.perf_counter() - t0
            return Result.empty(size, timings=timings, image=img)
        boxes = dets.boxes.astype(np.float32).copy()
        boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, size[1])
        boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, size[0])
        if not refine_with_sam:
            if dets.masks.shape[1:] != size:
                raise RuntimeError(
                    f"detector {self.detector_name!r} returned masks of size {dets.masks.shape[1:]} "
                    f"for an image of size {size}"
                )
            timings["total"] = time.perf_counter() - t0
            return Result(
                masks=dets.masks,
                boxes=boxes,
                scores=dets.scores,
                mask_scores=dets.scores,
                labels=dets.labels,
                image_size=size,
                timings=timings,
                image=img,
            )
        if encoded is None:
            timings["encoder"] = self._set_image(img)
        else:  # (seconds, ImageEmbedding) from _encode_many
            timings["encoder"] = encoded[0]
            self.predictor.set_embedding(encoded[1])
        t = time.perf_counter()
        masks, iou = self.predictor.predict_boxes(boxes, multimask_output=bool(multimask_output))
        self._sync()
        masks, mask_scores = _pick_best(masks, iou)
        timings["decoder"] = time.perf_counter() - t
        timings["total"] = time.perf_counter() - t0
        return Result(
            masks=masks,
            boxes=boxes,
            scores=dets.scores,
            mask_scores=mask_scores,
            labels=dets.labels,
            image_size=size,
            timings=timings,
            image=img,
        )

    def _segment_prompts(
        self, img: np.ndarray, points, point_labels, boxes, multimask_output: bool, t0: float
    ) -> Result:
        size = (int(img.shape[0]), int(img.shape[1]))
        if points is None and boxes is None:
            if point_labels is not None:
                raise ValueError("point_labels given without points")
            raise ValueError(
                "nothing to segment: give text (e.g. 'a cat') or points=[[x, y]] or "
                "boxes=[[x0, y0, x1, y1]]"
            )
        coords = labels = None
        if points is not None:
            coords, labels = _check_points(points, point_labels, size)
        elif point_labels is not None:
            raise ValueError("point_labels given without points")
        box_arr = None
        if boxes is not None:
            box_arr = _clip_boxes(boxes, size, "boxes")
            if coords is not None and box_arr.shape[0] != 1:
                raise ValueError(
                    f"points can be combined with one box, got {box_arr.shape[0]} boxes; "
                    "segment the boxes alone, or one box at a time with the points"
                )
        t_enc = self._set_image(img)
        t = time.perf_counter()
        if coords is None:
            m, s = self.predictor.predict_boxes(box_arr, multimask_output=bool(multimask_output))
            masks, mask_scores = _pick_best(m, s)
            out_boxes, out_labels = box_arr, ["box"] * len(box_arr)
        else:
            m, s, _ = self.predictor.predict(
                point_coords=coords,
                point_labels=labels,
                box=None if box_arr is None else box_arr[0],
                multimask_output=bool(multimask_output),
            )
            masks, mask_scores = _pick_best(m[None], s[None])
            if box_arr is None:
                out_boxes, out_labels = _mask_boxes(masks), ["point"]
            else:
                out_boxes, out_labels = box_arr, ["box"]
        self._sync()
        t_dec = time.perf_counter() - t
        timings = {
            "detector": 0.0,
            "encoder": t_enc,
            "decoder": t_dec,
            "total": time.perf_counter() - t0,
        }
        return Result(
            masks=masks,
            boxes=out_boxes,
            scores=mask_scores,
            mask_scores=mask_scores,
            labels=out_labels,
            image_size=size,
            timings=timings,
            image=img,
        )

    # -------------------------------------------------------------------- batch
    def segment_batch(
        self,
        images,
        texts,
        *,
        multimask_output: bool = False,
        refine_with_sam: bool = True,
        batch_size: int = 4,
    ) -> list[Result]:
        """Segment several images: ``texts`` is one text for all or one text per image.

        A single ``str`` applies to every image; a list/tuple must have one entry (a ``str``
        or a list of phrases) per image. The detector runs per image (or through its
        ``detect_batch(images, texts)`` when it has one); images whose embeddings are not
        cached are encoded ``batch_size`` at a time in one encoder pass, whose time is split
        evenly among them in ``timings["encoder"]`` (likewise a ``detect_batch`` call's time
        in ``timings["detector"]``); ``timings["total"]`` is the sum of the image's own
        loading, detector, encoder and decoder seconds.

        Returns:
            one :class:`Result` per image, in order.
        """
        images = list(images)
        if isinstance(texts, str):
            texts = [texts] * len(images)
        elif isinstance(texts, (list, tuple)):
            texts = list(texts)
            if len(texts) != len(images):
                raise ValueError(
                    f"texts must be one string for all images or one per image: got "
                    f"{len(texts)} texts for {len(images)} images (join phrases of one "
                    "prompt as 'a cat. a dog.')"
                )
        else:
            raise TypeError(
                f"texts must be a string or a list of one text per image, got {type(texts).__name__}"
            )
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        if not images:
            return []
        from grounded_sam.detectors import normalize_phrases

        for t in texts:
            normalize_phrases(t)
        load_times, loaded = [], []
        for im in images:
            t = time.perf_counter()
            loaded.append(read_image(im))
            load_times.append(time.perf_counter() - t)
        detector = self.detector
        if callable(getattr(detector, "detect_batch", None)):
            t = time.perf_counter()
            all_dets = list(detector.detect_batch(loaded, texts))
            self._sync()
            per = (time.perf_counter() - t) / len(loaded)
            det_times = [per] * len(loaded)
        else:
            all_dets, det_times = [], []
            for img, text in zip(loaded, texts, strict=True):
                dets, seconds = self._detect(img, text, refine_with_sam)
                all_dets.append(dets)
                det_times.append(seconds)
        encoded: list[tuple | None] = [None] * len(loaded)
        if refine_with_sam:
            todo = [i for i, d in enumerate(all_dets) if len(d)]
            for i, enc in zip(
                todo, self._encode_many([loaded[i] for i in todo], batch_size), strict=True
            ):
                encoded[i] = enc
        results = []
        for img, dets, t_load, t_det, enc in zip(
            loaded, all_dets, load_times, det_times, encoded, strict=True
        ):
            # "total" of one image: its own loading, detector, encoder and decoder seconds
            t0 = time.perf_counter() - (t_load + t_det + (enc[0] if enc else 0.0))
            results.append(
                self._decode_detections(
                    img, dets, t_det, multimask_output, refine_with_sam, t0, encoded=enc
                )
            )
        return results

    def _encode_many(self, images: list[np.ndarray], batch_size: int) -> list[tuple]:
        """Embed ``images``: cache hits reused, misses encoded ``batch_size`` per encoder pass
        (and cached).

        Returns ``(encoder seconds charged to the image (0.0 for a hit), ImageEmbedding)`` per
        image.
        """
        import torch

        from grounded_sam.model.precision import encode_image
        from grounded_sam.predictor import ImageEmbedding

        keys = [_image_key(im) for im in images]
        out: list = [None] * len(images)
        fresh: dict = {}  # key -> embedding computed in this call
        todo = []
        for i, k in enumerate(keys):
            if k in self._cache:
                self._cache.move_to_end(k)
                out[i] = (0.0, self._cache[k])
            elif not any(keys[j] == k for j in todo):
                todo.append(i)
        transform = self.predictor.transform
        for s in range(0, len(todo), batch_size):
            chunk = todo[s : s + batch_size]
            t = time.perf_counter()
            resized = [transform.apply_image(images[i]) for i in chunk]
            with torch.no_grad():
                x = torch.cat(
                    [
                        self.sam.preprocess(
                            torch.as_tensor(r, device=self.device)
                            .permute(2, 0, 1)[None]
                            .to(torch.float32)
                        )
                        for r in resized
                    ]
                )
                feats = encode_image(self.sam, x)
            self._sync()
            per = (time.perf_counter() - t) / len(chunk)
            self.encoder_calls += len(chunk)
            for j, i in enumerate(chunk):
                emb = ImageEmbedding(
                    feats[j : j + 1],
                    (int(images[i].shape[0]), int(images[i].shape[1])),
                    (int(resized[j].shape[0]), int(resized[j].shape[1])),
                )
                self._remember(keys[i], emb)
                fresh[keys[i]] = emb
                out[i] = (per, emb)
        for i, k in enumerate(keys):  # repeats of an image encoded above
            if out[i] is None:
                out[i] = (0.0, fresh[k])
        return out


def _check_points(points, point_labels, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Validate (P, 2) xy points inside the (H, W) image and (P,) labels in {0, 1}."""
    try:
        coords = np.asarray(points, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise TypeError(f"points must be a numeric (P, 2) array of x, y pixels: {e}") from e
    if coords.ndim == 1 and coords.shape[0] == 2:
        coords = coords[None]
    if coords.ndim != 2 or coords.shape[1] != 2 or coords.shape[0] == 0:
        raise ValueError(f"points must have shape (P, 2) as x, y pixels, got {coords.shape}")
    if not np.all(np.isfinite(coords)):
        raise ValueError(f"points contain NaN or inf: {coords.tolist()}")
    h, w = size
    outside = np.nonzero(
        (coords[:, 0] < 0) | (coords[:, 0] > w) | (coords[:, 1] < 0) | (coords[:, 1] > h)
    )[0]
    if outside.size:
        i = int(outside[0])
        raise ValueError(
            f"point {coords[i].tolist()} lies outside the {w}x{h} (WxH) image; "
            f"points are x in [0, {w}], y in [0, {h}] pixels"
        )
    if point_labels is None:
        labels = np.ones(coords.shape[0], dtype=np.int64)
    else:
        labels = np.asarray(point_labels).reshape(-1)
        if labels.shape != (coords.shape[0],):
            raise ValueError(
                f"point_labels must have {coords.shape[0]} entries to match points, got "
                f"{labels.shape[0]}"
            )
        if not np.isin(labels, (0, 1)).all():
            raise ValueError(
                f"point_labels must be 1 (foreground) or 0 (background), got {labels.tolist()}"
            )
        labels = labels.astype(np.int64)
    return coords, labels


# ----------------------------------------------------------------- module-level API
_PIPELINES: OrderedDict = OrderedDict()
_PIPELINE_CACHE_SIZE = 4


def _freeze(value):
    """A hashable stand-in for a configuration value (objects by identity)."""
    if isinstance(value, (str, int, float, bool, type(None))):
        return value
    if isinstance(value, os.PathLike):
        return ("path", os.fspath(value))
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, _freeze(v)) for k, v in value.items()))
    return ("id", id(value))


def get_pipeline(
    detector="grounding-dino",
    sam="mobile_sam",
    *,
    sam_checkpoint=None,
    device=None,
    precision: str = "fp32",
    **detector_kwargs,
) -> GroundedSAM:
    """The cached :class:`GroundedSAM` for this configuration, built on first use.

    Up to 4 configurations are kept (least recently used dropped first). Objects (a
    ``Detector``, ``Sam``) are keyed by identity; names, paths and numbers by value.
    """
    key = _freeze(
        {
            "detector": detector,
            "sam": sam,
            "sam_checkpoint": sam_checkpoint,
            "device": None if device is None else str(device),
            "precision": precision,
            **{f"kw:{k}": v for k, v in detector_kwargs.items()},
        }
    )
    pipe = _PIPELINES.get(key)
    if pipe is None:
        pipe = GroundedSAM(
            detector,
            sam,
            sam_checkpoint=sam_checkpoint,
            device=device,
            precision=precision,
            **detector_kwargs,
        )
        _PIPELINES[key] = pipe
        while len(_PIPELINES) > _PIPELINE_CACHE_SIZE:
            _PIPELINES.popitem(last=False)
    _PIPELINES.move_to_end(key)
    return pipe


def clear_pipelines() -> None:
    """Drop the pipelines cached by :func:`segment` (frees their models)."""
    _PIPELINES.clear()


def segment(
    image,
    text=None,
    *,
    detector="grounding-dino",
    sam="mobile_sam",
    sam_checkpoint=None,
    device=None,
    precision: str = "fp32",
    points=None,
    point_labels=None,
    boxes=None,
    multimask_output: bool = False,
    refine_with_sam: bool = True,
    **detector_kwargs,
) -> Result:
    """One-call grounded segmentation: ``segment("dog.jpg", "a dog")``.

    Builds (once per configuration, then reuses: see :func:`get_pipeline`) a
    :class:`GroundedSAM` from ``detector``, ``sam``, ``sam_checkpoint``, ``device``,
    ``precision`` and ``detector_kwargs``, and calls its :meth:`GroundedSAM.segment` with the
    rest.
    """
    pipe = get_pipeline(
        detector,
        sam,
        sam_checkpoint=sam_checkpoint,
        device=device,
        precision=precision,
        **detector_kwargs,
    )
    return pipe.segment(
        image,
        text,
        points=points,
        point_labels=point_labels,
        boxes=boxes,
        multimask_output=multimask_output,
        refine_with_sam=refine_with_sam,
    )
