"""The grounded pipeline: phrases -> detector boxes -> one batched SAM decoder call -> ``Result``.

from grounded_sam import segment, GroundedSAM

result = segment("cat.jpg", "a cat", detector="grounding-dino", sam="mobile_sam")
gs = GroundedSAM(detector="yolo-clip", sam="mobile_sam")
result = gs.segment(image, "a cat. a dog.")        # text prompt
result = gs.segment(image, points=[[120, 80]])      # SAM's own prompts, no detector
result.to_coco(image_id=1); result.save("out/cat"); result.overlay()
"""

from __future__ import annotations

import hashlib
import os
import time
from collections import OrderedDict
from collections.abc import Sequence

import numpy as np

from grounded_sam.detectors.base import Detections, check_detector_options
from grounded_sam.errors import InputError
from grounded_sam.io import load_image
from grounded_sam.masks import check_points, clip_boxes, masks_to_boxes
from grounded_sam.phrases import parse_phrases
from grounded_sam.predictor import ImageEmbedding, SamPredictor
from grounded_sam.result import TIMING_KEYS, Result

__all__ = [
    "EmbeddingCache",
    "GroundedSAM",
    "Result",
    "TIMING_KEYS",
    "clear_pipelines",
    "get_pipeline",
    "segment",
]


class EmbeddingCache:
    """A bounded LRU of image embeddings keyed by image content.

    The key is the BLAKE2b digest of the image's bytes with its shape, so the same pixels hit
    whatever object or path they came from. Embeddings are kept on the model's device.
    """

    def __init__(self, capacity: int = 8) -> None:
        if not isinstance(capacity, int) or isinstance(capacity, bool) or capacity < 1:
            raise InputError(f"cache_size must be an integer >= 1, got {capacity!r}")
        self.capacity = capacity
        self._items: OrderedDict[tuple, ImageEmbedding] = OrderedDict()

    @staticmethod
    def key(image: np.ndarray) -> tuple:
        """The cache key of an (H, W, 3) uint8 image: (shape, BLAKE2b-128 of its bytes)."""
        digest = hashlib.blake2b(np.ascontiguousarray(image).data, digest_size=16).hexdigest()
        return (tuple(image.shape), digest)

    def get(self, key: tuple) -> ImageEmbedding | None:
        emb = self._items.get(key)
        if emb is not None:
            self._items.move_to_end(key)
        return emb

    def put(self, key: tuple, embedding: ImageEmbedding) -> None:
        self._items[key] = embedding
        self._items.move_to_end(key)
        while len(self._items) > self.capacity:
            self._items.popitem(last=False)

    def clear(self) -> None:
        self._items.clear()

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: tuple) -> bool:
        return key in self._items


def _pick_best(masks: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, C, H, W), (N, C) -> the highest-scoring candidate per prompt: (N, H, W), (N,)."""
    best = scores.argmax(axis=1)
    rows = np.arange(masks.shape[0])
    return masks[rows, best], scores[rows, best].astype(np.float32)


def _image_list(images) -> list:
    """``segment_batch``'s images as a list; one image (a path, a PIL image, an (H, W[, C])
    array) or a non-iterable is an :class:`InputError` pointing at ``segment``."""
    fix = "use segment(image, text) for one image, or pass a list: segment_batch([image], text)"
    single = None
    if isinstance(images, (str, bytes, os.PathLike)):
        single = f"a single path ({os.fsdecode(images)!r})"
    elif isinstance(ndim := getattr(images, "ndim", None), int) and ndim <= 3:
        # a numpy array or tensor holding one image
        single = f"a single {ndim}-D array of shape {tuple(images.shape)}"
    elif hasattr(images, "getbands") and hasattr(images, "size"):  # PIL.Image.Image
        single = f"a single {type(images).__name__}"
    if single is not None:
        raise InputError(f"segment_batch takes a list of images, got {single}; {fix}")
    try:
        return list(images)
    except TypeError:
        raise InputError(
            f"segment_batch takes a list of images, got {type(images).__name__}; {fix}"
        ) from None


class GroundedSAM:
    """Text-promptable SAM: a detector's boxes decoded by SAM in one batched call.

    Args:
        detector: a detector name (see :func:`grounded_sam.detectors.list_detectors`) or a
            ready object with ``detect(image, phrases) -> Detections``. Named detectors are
            built on the first text prompt (point/box prompts never need one).
        sam: a SAM variant name (see :func:`grounded_sam.list_models`), a SAM model, a
            ``SamPredictor``, or a :class:`grounded_sam.onnx.OnnxSamPredictor` (onnxruntime
            runs SAM from an ``export-onnx`` folder; ``device`` is then the detector's).
        sam_checkpoint: official-format checkpoint for a named ``sam``; ``None`` fetches the
            registry weights through :func:`grounded_sam.weights.fetch`.
        precision: for a named ``sam``: ``"fp32"`` (default, exact) or an opt-in faster,
            less accurate mode, ``"bf16"``/``"fp16"`` (GPUs) or ``"int8"`` (CPU); see
            :func:`grounded_sam.build_sam`.
        device: torch device for models built here; ``None`` -> CUDA if available, else CPU.
            A given model / ``SamPredictor`` is moved there only when ``device`` is given.
            Detectors that take a device get the SAM's.
        cache_size: how many image embeddings to keep (LRU, keyed on the image content).
        **detector_kwargs: the detector's options (e.g. ``box_threshold=0.35``, ``model=...``,
            ``yolo=...``, ``clip=...``); only with a detector name. They are checked here
            against the options the detector declares (a misspelt name or a bad value is an
            :class:`InputError` at once), though the detector is built on first use.

    Raises:
        InputError: unknown detector, SAM variant or detector option, a bad option value, a
            ``device`` this machine does not have, or arguments that do not go together.

    Attributes:
        predictor: the :class:`SamPredictor` every SAM call goes through.
        cache: the :class:`EmbeddingCache` of image embeddings.
        encoder_calls: number of images run through the image encoder so far (cache misses).
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

        from grounded_sam.detectors.base import detector_capabilities, list_detectors
        from grounded_sam.model.build import build_sam, resolve_device
        from grounded_sam.model.precision import check_precision
        from grounded_sam.onnx.predictor import OnnxSamPredictor

        check_precision(precision)
        self.cache = EmbeddingCache(cache_size)
        # detector (built lazily) ------------------------------------------------
        if isinstance(detector, str):
            if detector not in list_detectors():
                raise InputError(
                    f"unknown detector {detector!r}; known detectors: {', '.join(list_detectors())}"
                )
            check_detector_options(detector, detector_kwargs)  # without building it
            self.detector_name = detector
            self._detector = None
            self._detector_kwargs = dict(detector_kwargs)
            caps = detector_capabilities(detector)
            self._detector_takes_device = caps["accepts_device"]
            self._returns_masks: bool | None = caps["returns_masks"]
        elif callable(getattr(detector, "detect", None)):
            if detector_kwargs:
                raise InputError(
                    f"detector options {sorted(detector_kwargs)} only apply when the detector "
                    "is given by name; configure the detector object instead"
                )
            self.detector_name = type(detector).__name__
            self._detector = detector
            self._detector_kwargs = {}
            self._detector_takes_device = False
            self._returns_masks = getattr(detector, "returns_masks", None)  # None: unknown
        else:
            raise InputError(
                "detector must be a detector name or an object with detect(image, text), got "
                f"{type(detector).__name__}"
            )
        # SAM ------------------------------------------------------------------
        if sam_checkpoint is not None and not isinstance(sam, str):
            raise InputError("sam_checkpoint only applies when sam is a variant name")
        if precision != "fp32" and not isinstance(sam, str):
            raise InputError(
                "precision only applies when sam is a variant name; for a ready model use "
                "build_sam(..., precision=...) or model.set_precision(...)"
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
        elif isinstance(sam, OnnxSamPredictor):  # onnxruntime runs SAM (grounded_sam.onnx)
            predictor = sam
        else:
            raise InputError(
                f"sam must be a variant name, a SAM model, a SamPredictor or an "
                f"OnnxSamPredictor, got {type(sam).__name__}"
            )
        self.predictor = predictor
        self.sam = predictor.model
        self.device = self.sam.device
        if isinstance(sam, OnnxSamPredictor) and device is not None:
            self.device = resolve_device(device)  # onnxruntime picks its own: the detector's
        self.encoder_calls = 0

    # -------------------------------------------------------------- components
    @property
    def detector(self):
        """The detector, built from its name on first use (with the SAM's device when it
        takes one and none was given)."""
        if self._detector is None:
            from grounded_sam.detectors import build_detector

            kwargs = dict(self._detector_kwargs)
            if self._detector_takes_device:
                kwargs.setdefault("device", self.device)
            self._detector = build_detector(self.detector_name, **kwargs)
        return self._detector

    def clear_cache(self) -> None:
        """Forget all cached image embeddings."""
        self.cache.clear()

    def _sync(self) -> None:
        if self.device.type == "cuda":
            import torch

            torch.cuda.synchronize(self.device)

    # -------------------------------------------------------------- steps
    def detect(self, image: np.ndarray, phrases: list[str]) -> tuple[Detections, float]:
        """Run the detector on an (H, W, 3) uint8 image for parsed ``phrases``;
        returns (detections with boxes clipped to the image, seconds)."""
        t = time.perf_counter()
        dets = self.detector.detect(image, phrases)
        self._sync()
        seconds = time.perf_counter() - t
        if len(dets):
            dets.boxes = clip_boxes(dets.boxes, image.shape[:2], strict=False)
        return dets, seconds

    def embed(self, images: Sequence[np.ndarray], batch_size: int = 4) -> list[float]:
        """Make sure every image's embedding is cached, encoding the misses ``batch_size``
        per encoder pass; returns the encoder seconds charged to each image (0.0 for a hit;
        a batch's time split evenly among its images)."""
        keys = [EmbeddingCache.key(im) for im in images]
        seconds = [0.0] * len(images)
        todo: dict[tuple, int] = {}
        for i, k in enumerate(keys):
            if self.cache.get(k) is None and k not in todo:
                todo[k] = i
        order = list(todo.values())
        for s in range(0, len(order), batch_size):
            chunk = order[s : s + batch_size]
            t = time.perf_counter()
            embeddings = self.predictor.embed([images[i] for i in chunk], batch_size=len(chunk))
            self._sync()
            per = (time.perf_counter() - t) / len(chunk)
            self.encoder_calls += len(chunk)
            for i, emb in zip(chunk, embeddings, strict=True):
                self.cache.put(keys[i], emb)
                seconds[i] = per
        return seconds

    def set_image(self, image: np.ndarray) -> float:
        """Make ``image`` the predictor's current image (cached embedding, or one encoder
        pass); returns the encoder seconds (0.0 on a cache hit)."""
        seconds = self.embed([image])[0]
        self.predictor.set_embedding(self.cache.get(EmbeddingCache.key(image)))
        return seconds

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
                decodes all of them in one batched decoder call. One instance per box; labels
                are the phrases as written (see :mod:`grounded_sam.phrases`).
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
            InputError: bad image, empty text, both or neither of text and points/boxes,
                malformed points/boxes, or ``refine_with_sam=False`` with a detector that
                returns no masks.
        """
        t0 = time.perf_counter()
        img = load_image(image)
        if text is None:
            return self._segment_prompts(img, points, point_labels, boxes, multimask_output, t0)
        if points is not None or point_labels is not None or boxes is not None:
            raise InputError(
                "give either text or points/boxes, not both: text prompts get their boxes "
                "from the detector"
            )
        phrases = parse_phrases(text)
        self._check_refine(refine_with_sam)
        dets, t_det = self.detect(img, phrases)
        t_enc = self.set_image(img) if refine_with_sam and len(dets) else 0.0
        return self._decode_detections(
            img, dets, t_det, t_enc, multimask_output, refine_with_sam, t0
        )

    def _check_refine(self, refine_with_sam: bool) -> None:
        if not refine_with_sam and self._returns_masks is False:
            raise InputError(
                "refine_with_sam=False needs a detector that returns masks (e.g. 'yolo-clip'); "
                f"{self.detector_name!r} returns boxes only"
            )

    def _decode_detections(
        self,
        img: np.ndarray,
        dets: Detections,
        t_det: float,
        t_enc: float,
        multimask_output: bool,
        refine_with_sam: bool,
        t0: float,
    ) -> Result:
        """Detections on ``img`` -> Result; the embedding, when needed, is already set."""
        size = (int(img.shape[0]), int(img.shape[1]))
        timings = {"detector": t_det, "encoder": t_enc, "decoder": 0.0}
        if len(dets) == 0:
            timings["total"] = time.perf_counter() - t0
            return Result.empty(size, timings=timings, image=img)
        if not refine_with_sam:
            if dets.masks is None:
                raise InputError(
                    f"refine_with_sam=False needs a detector that returns masks; "
                    f"{self.detector_name!r} returned boxes only"
                )
            if dets.masks.shape[1:] != size:
                raise RuntimeError(
                    f"detector {self.detector_name!r} returned masks of shape "
                    f"{None if dets.masks is None else dets.masks.shape} for an image of size "
                    f"{size}"
                )
            timings["total"] = time.perf_counter() - t0
            return Result(
                masks=dets.masks,
                boxes=dets.boxes,
                scores=dets.scores,
                mask_scores=dets.scores,
                labels=dets.labels,
                image_size=size,
                timings=timings,
                image=img,
            )
        t = time.perf_counter()
        masks, iou = self.predictor.predict_boxes(dets.boxes, multimask_output=multimask_output)
        self._sync()
        masks, mask_scores = _pick_best(masks, iou)
        timings["decoder"] = time.perf_counter() - t
        timings["total"] = time.perf_counter() - t0
        return Result(
            masks=masks,
            boxes=dets.boxes,
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
                raise InputError("point_labels given without points")
            raise InputError(
                "nothing to segment: give text (e.g. 'a cat') or points=[[x, y]] or "
                "boxes=[[x0, y0, x1, y1]]"
            )
        coords = labels = None
        if points is not None:
            coords, labels = check_points(points, point_labels, size)
        elif point_labels is not None:
            raise InputError("point_labels given without points")
        box_arr = None
        if boxes is not None:
            box_arr = clip_boxes(boxes, size, "boxes")
            if coords is not None and box_arr.shape[0] != 1:
                raise InputError(
                    f"points can be combined with one box, got {box_arr.shape[0]} boxes; "
                    "segment the boxes alone, or one box at a time with the points"
                )
        t_enc = self.set_image(img)
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
                out_boxes, out_labels = masks_to_boxes(masks), ["point"]
            else:
                out_boxes, out_labels = box_arr, ["box"]
        self._sync()
        timings = {
            "detector": 0.0,
            "encoder": t_enc,
            "decoder": time.perf_counter() - t,
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
        """Segment several images; the same outputs as :meth:`segment` one by one.

        ``texts`` is one text for every image or a list with one text (a ``str`` or a list of
        phrases) per image. When every image has the same phrases, the detector gets them
        together through its ``detect_batch`` (built-in detectors batch where that is faster);
        images whose embeddings are not cached are encoded ``batch_size`` per encoder pass.
        A batched call's time is split evenly among its images in ``timings``;
        ``timings["total"]`` is the sum of the image's own loading, detector, encoder and
        decoder seconds.

        Args:
            images: a list (or other iterable, or an ``(N, H, W, 3)`` array) of images, each
                anything :meth:`segment` takes; for one image use :meth:`segment`.

        Returns:
            one :class:`Result` per image, in order.

        Raises:
            InputError: one image (a path, PIL image or ``(H, W[, 3])`` array) instead of a
                list, ``texts`` of another length, bad text or ``batch_size``.
        """
        images = _image_list(images)
        if isinstance(texts, str):
            texts = [texts] * len(images)
        elif isinstance(texts, (list, tuple)):
            texts = list(texts)
            if len(texts) != len(images):
                raise InputError(
                    f"texts must be one string for all images or one per image: got "
                    f"{len(texts)} texts for {len(images)} images (join phrases of one "
                    "prompt as 'a cat. a dog.')"
                )
        else:
            raise InputError(
                f"texts must be a string or a list of one text per image, got "
                f"{type(texts).__name__}"
            )
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise InputError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        if not images:
            return []
        phrases = [parse_phrases(t) for t in texts]  # bad text fails before any model runs
        self._check_refine(refine_with_sam)
        load_times, loaded = [], []
        for im in images:
            t = time.perf_counter()
            loaded.append(load_image(im))
            load_times.append(time.perf_counter() - t)
        detector = self.detector
        if all(p == phrases[0] for p in phrases) and callable(
            getattr(detector, "detect_batch", None)
        ):
            t = time.perf_counter()
            all_dets = list(detector.detect_batch(loaded, phrases[0]))
            self._sync()
            per = (time.perf_counter() - t) / len(loaded)
            det_times = [per] * len(loaded)
            for img, d in zip(loaded, all_dets, strict=True):
                if len(d):
                    d.boxes = clip_boxes(d.boxes, img.shape[:2], strict=False)
        else:
            pairs = [self.detect(img, p) for img, p in zip(loaded, phrases, strict=True)]
            all_dets, det_times = [d for d, _ in pairs], [s for _, s in pairs]
        enc_times = [0.0] * len(loaded)
        if refine_with_sam:
            todo = [i for i, d in enumerate(all_dets) if len(d)]
            for i, s in zip(todo, self.embed([loaded[i] for i in todo], batch_size), strict=True):
                enc_times[i] = s
        results = []
        for i, (img, dets) in enumerate(zip(loaded, all_dets, strict=True)):
            if refine_with_sam and len(dets):
                self.predictor.set_embedding(self.cache.get(EmbeddingCache.key(img)))
            # "total" of one image: its own loading, detector, encoder and decoder seconds
            t0 = time.perf_counter() - (load_times[i] + det_times[i] + enc_times[i])
            results.append(
                self._decode_detections(
                    img, dets, det_times[i], enc_times[i], multimask_output, refine_with_sam, t0
                )
            )
        return results


# ----------------------------------------------------------------- module-level API
_PIPELINES: OrderedDict = OrderedDict()
_PIPELINE_CACHE_SIZE = 4


def _config_key(value) -> object:
    """A hashable form of a configuration value, or ``None`` when it is an object (a model, a
    detector): those configurations are not cached, since no value identifies them."""
    if isinstance(value, (str, int, float, bool, type(None))):
        return ("v", value)
    if isinstance(value, os.PathLike):
        return ("path", os.fspath(value))
    if isinstance(value, (list, tuple)):
        parts = [_config_key(v) for v in value]
        return None if any(p is None for p in parts) else tuple(parts)
    return None


def get_pipeline(
    detector="grounding-dino",
    sam="mobile_sam",
    *,
    sam_checkpoint=None,
    device=None,
    precision: str = "fp32",
    **detector_kwargs,
) -> GroundedSAM:
    """The :class:`GroundedSAM` that :func:`segment` uses for this configuration.

    Configurations given by value (names, paths, numbers, strings) are built once and kept:
    at most 4, the least recently used dropped first (:func:`clear_pipelines` frees them).
    A configuration holding an object (a detector or model instance) is built fresh each
    call and not kept; hold a :class:`GroundedSAM` yourself to reuse one.
    """
    config = {
        "detector": detector,
        "sam": sam,
        "sam_checkpoint": sam_checkpoint,
        "device": None if device is None else str(device),
        "precision": precision,
        **{f"option:{k}": v for k, v in detector_kwargs.items()},
    }
    parts = [(k, _config_key(v)) for k, v in sorted(config.items())]
    key = None if any(v is None for _, v in parts) else tuple(parts)
    pipe = _PIPELINES.get(key) if key is not None else None
    if pipe is None:
        pipe = GroundedSAM(
            detector,
            sam,
            sam_checkpoint=sam_checkpoint,
            device=device,
            precision=precision,
            **detector_kwargs,
        )
        if key is None:
            return pipe
        _PIPELINES[key] = pipe
        while len(_PIPELINES) > _PIPELINE_CACHE_SIZE:
            _PIPELINES.popitem(last=False)
    _PIPELINES.move_to_end(key)
    return pipe


def clear_pipelines() -> None:
    """Drop the pipelines kept by :func:`segment` (frees their models)."""
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

    Gets the :class:`GroundedSAM` for ``detector``, ``sam``, ``sam_checkpoint``, ``device``,
    ``precision`` and ``detector_kwargs`` (built on first use and kept, see
    :func:`get_pipeline`) and calls its :meth:`GroundedSAM.segment` with the rest.
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
