"""The models behind the app: one :class:`~grounded_sam.pipeline.GroundedSAM`, each image
encoded once, clicks that run only the prompt encoder and mask decoder.

Embeddings are looked up in three places, cheapest first: the pipeline's bounded in-memory
LRU (``pipeline.cache``), the dataset's embedding store on disk (shared with ``label`` and
``finetune``: :class:`grounded_sam.engine.embeddings.EmbeddingStore`), then one encoder
pass. A background thread prefetches the images the person is likely to open next, so the
first click on a new image usually costs a decoder call only.

Concurrency (the server answers requests from a thread pool):

- ``_predict_lock`` guards the predictor's current image and the in-memory cache: a click
  sets its image's embedding and decodes under it, so two tabs never decode against each
  other's image;
- ``_encode_lock`` runs one encoder pass at a time (prefetch and requests alike); a request
  for an image that is being encoded waits for that pass instead of starting a second one;
- lock order is always encode, then predict.
"""

from __future__ import annotations

import logging
import os
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from grounded_sam.errors import GroundedSAMError, InputError
from grounded_sam.io import load_image
from grounded_sam.masks import check_points, clip_boxes, encode_rle, mask_to_box
from grounded_sam.predictor import ImageEmbedding

__all__ = ["ImageRef", "Segmenter", "Unavailable"]

log = logging.getLogger("grounded_sam.app")


class Unavailable(GroundedSAMError):
    """A feature the server cannot serve right now (e.g. the detector failed to load)."""


@dataclass(eq=False)
class ImageRef:
    """An image file the app may open; its pixel digest is computed once (and again only
    when the file changes on disk).

    Attributes:
        path: the file.
        name: how the API names it (the dataset's ``file_name``).
    """

    path: Path
    name: str
    _key: tuple | None = field(default=None, repr=False)
    _stat: tuple | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def _signature(self) -> tuple:
        st = os.stat(self.path)
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def load(self) -> np.ndarray:
        """(H, W, 3) uint8 RGB, EXIF-rotated (:func:`grounded_sam.load_image`); also records
        the digest. Raises ``InputError`` for an unreadable file."""
        sig = self._signature() if self.path.exists() else None
        image = load_image(self.path)
        from grounded_sam.pipeline import EmbeddingCache

        with self._lock:
            self._key = EmbeddingCache.key(image)
            self._stat = sig
        return image

    def known(self) -> bool:
        """Whether :meth:`key` is known without decoding the file."""
        with self._lock:
            key, stat = self._key, self._stat
        try:
            return key is not None and stat == self._signature()
        except OSError:
            return False

    def key(self) -> tuple:
        """``(shape, digest)``: the :class:`~grounded_sam.pipeline.EmbeddingCache` key."""
        with self._lock:
            key, stat = self._key, self._stat
        try:
            current = self._signature()
        except OSError:
            current = None
        if key is None or stat != current:
            self.load()
            with self._lock:
                key = self._key
        return key

    @property
    def size(self) -> tuple[int, int]:
        """(H, W) of the decoded image."""
        shape = self.key()[0]
        return int(shape[0]), int(shape[1])


class Segmenter:
    """Live SAM for the app.

    Args:
        pipeline: the :class:`~grounded_sam.pipeline.GroundedSAM` whose predictor, in-memory
            embedding cache (its ``cache``) and detector are used.
        store: the dataset's :class:`~grounded_sam.engine.embeddings.EmbeddingStore` for this
            SAM, or ``None`` for no disk cache.
        prefetch: run the background prefetch thread.
        prefetch_idle: seconds without a click before a background prefetch starts its
            encoder pass (a pass takes the CPU from clicks for its whole duration).
        logits_capacity: how many previous low-resolution logits (for ``mask_input``) to keep.

    Attributes:
        encoder_calls: encoder passes run (memory and disk hits excluded).
        prefetched: embeddings made ready by the prefetch thread.
    """

    def __init__(
        self,
        pipeline,
        *,
        store=None,
        prefetch: bool = True,
        prefetch_idle: float = 0.25,
        logits_capacity: int = 128,
    ) -> None:
        self.pipe = pipeline
        self.predictor = pipeline.predictor
        self.device = pipeline.device
        self.disk = store
        self.disk_hits = 0
        self.disk_writes = 0
        self._predict_lock = threading.Lock()
        self._encode_lock = threading.Lock()
        self._detector_lock = threading.Lock()
        self._state = threading.Lock()
        self._inflight: dict[tuple, Future] = {}
        self._logits: OrderedDict[str, tuple[tuple, np.ndarray]] = OrderedDict()
        self._logits_capacity = logits_capacity
        self._detector_error: str | None = None
        self._detector_ready = False
        self.encoder_calls = 0
        self.prefetched = 0
        self._last_click = 0.0
        self.prefetch_idle = prefetch_idle
        self._prefetch_enabled = prefetch
        self._queue: list[ImageRef] = []
        self._wake = threading.Condition(self._state)
        self._closed = False
        self._thread: threading.Thread | None = None
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="grounded-sam-embedding-writer")

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Start the prefetch thread (no-op without prefetch or when started)."""
        if self._prefetch_enabled and self._thread is None:
            self._thread = threading.Thread(
                target=self._prefetch_loop, name="grounded-sam-prefetch", daemon=True
            )
            self._thread.start()

    def close(self) -> None:
        """Stop the prefetch thread (its current encoder pass finishes first) and finish
        writing embeddings to the disk store."""
        with self._state:
            self._closed = True
            self._queue.clear()
            self._wake.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=60)
            self._thread = None
        self._writer.shutdown(wait=True)

    # ------------------------------------------------------------------ detector
    def load_detector(self) -> None:
        """Build the detector now (once); a failure is remembered and reported on text
        prompts as :class:`Unavailable`, instead of stopping the app."""
        try:
            self._ensure_detector()
        except Unavailable as e:
            log.error("%s", e)

    def _ensure_detector(self) -> None:
        # one build, whether the loader thread or a text prompt gets here first
        with self._detector_lock:
            if self._detector_error is not None:
                raise Unavailable(f"text prompts are unavailable: {self._detector_error}")
            if self._detector_ready:
                return
            try:
                self.pipe.detector  # noqa: B018 - builds it
            except Exception as e:  # noqa: BLE001 - reported to the client as 503
                self._detector_error = (
                    str(e) if isinstance(e, GroundedSAMError) else f"{type(e).__name__}: {e}"
                )
                raise Unavailable(f"text prompts are unavailable: {self._detector_error}") from None
            self._detector_ready = True

    @property
    def detector_error(self) -> str | None:
        """Why text prompts are off (the detector failed to load), or ``None``."""
        return self._detector_error

    @property
    def detector_ready(self) -> bool:
        """Whether the detector is built (text prompts then cost no loading time)."""
        return self._detector_ready

    # ------------------------------------------------------------------ embeddings
    def cached(self, ref: ImageRef) -> bool:
        """Whether ``ref``'s embedding is in memory (a click on it costs the decoder only)."""
        key = ref.key()
        with self._predict_lock:
            return key in self.pipe.cache

    def embedding(
        self, ref: ImageRef, image: np.ndarray | None = None
    ) -> tuple[ImageEmbedding, float]:
        """``ref``'s embedding from memory, disk or one encoder pass; returns it with the
        encoder seconds this call waited for (0.0 on a hit)."""
        key = _key_of(image) if image is not None else None
        if image is None and not ref.known():
            image = ref.load()  # decoded once here, for the digest and the encoder
        if key is None:
            key = ref.key()
        with self._predict_lock:
            emb = self.pipe.cache.get(key)
        if emb is not None:
            return emb, 0.0
        t0 = time.perf_counter()
        with self._state:
            fut = self._inflight.get(key)
            owner = fut is None
            if owner:
                fut = self._inflight[key] = Future()
        if not owner:
            return fut.result(), time.perf_counter() - t0
        try:
            if image is None:
                image = ref.load()
            emb = None
            if self.disk is not None:
                emb = self.disk.load(ref.name, image, self.device)
            from_disk = emb is not None
            if emb is None:
                with self._encode_lock:
                    emb = self.predictor.embed([image], batch_size=1)[0]
            with self._state:
                if from_disk:
                    self.disk_hits += 1
                else:
                    self.encoder_calls += 1
            with self._predict_lock:
                self.pipe.cache.put(key, emb)
            fut.set_result(emb)
        except BaseException as e:
            fut.set_exception(e)
            raise
        finally:
            with self._state:
                self._inflight.pop(key, None)
        if self.disk is not None and not from_disk:
            # written off the request path (about 4 MB: tens of milliseconds)
            self._writer.submit(self._save, ref.name, image, emb)
        return emb, time.perf_counter() - t0

    def _save(self, name: str, image: np.ndarray, emb: ImageEmbedding) -> None:
        try:
            self.disk.save(name, image, emb)
            with self._state:
                self.disk_writes += 1
        except OSError as e:  # a full or read-only disk costs speed, not correctness
            log.warning("could not write the embedding store: %s", e)

    def prefetch(self, refs: Sequence[ImageRef]) -> None:
        """Queue images for background embedding, most wanted first; replaces the previous
        queue (the person moved on, so older guesses are dropped)."""
        if not self._prefetch_enabled:
            return
        with self._state:
            self._queue = list(refs)
            self._wake.notify_all()

    def _prefetch_loop(self) -> None:
        while True:
            with self._state:
                while not self._queue and not self._closed:
                    self._wake.wait()
                if self._closed:
                    return
                ref = self._queue.pop(0)
            # let a burst of clicks finish before taking the CPU for a whole encoder pass
            while True:
                idle = time.perf_counter() - self._last_click
                if idle >= self.prefetch_idle or self._closed:
                    break
                time.sleep(self.prefetch_idle - idle)
            try:
                if not self.cached(ref):
                    self.embedding(ref)
                    with self._state:
                        self.prefetched += 1
            except GroundedSAMError as e:  # a bad image is reported when it is opened
                log.info("prefetch skipped %s: %s", ref.name, e)
            except OSError as e:
                log.info("prefetch skipped %s: %s", ref.name, e)
            except Exception:  # noqa: BLE001 - never let the thread die
                log.exception("prefetch failed for %s", ref.name)

    # ------------------------------------------------------------------ clicks
    def predict(
        self,
        ref: ImageRef,
        points: Sequence[Sequence[float]] | None = None,
        box: Sequence[float] | None = None,
        mask_input: str | None = None,
        multimask: bool | None = None,
    ) -> dict:
        """One interactive prediction: points ``[[x, y, label], ...]`` (label 1 foreground,
        0 background; pixels of the original image) and/or one XYXY ``box``, refined with the
        low-resolution logits of an earlier prediction on the same image (``mask_input``, the
        ``logits`` id that call returned).

        ``multimask`` ``None`` picks SAM's own rule: three candidates for a lone point (the
        ambiguous case), one mask otherwise; the best-scored candidate is returned.

        Returns:
            ``{"segmentation": COCO RLE, "bbox": XYWH, "area", "mask_score", "logits": id,
            "used_mask_input": bool, "timings": {"encoder", "decoder"}}``.
        """
        self._last_click = time.perf_counter()
        key = ref.key()
        size = (int(key[0][0]), int(key[0][1]))
        coords = labels = None
        if points:
            arr = _point_rows(points)
            coords, labels = check_points(arr[:, :2], arr[:, 2], size)
        box_arr = None
        if box is not None:
            box_arr = clip_boxes([box], size, "box")[0]
        if coords is None and box_arr is None:
            raise InputError("give at least one point [x, y, label] or a box [x0, y0, x1, y1]")
        prev = None
        if mask_input is not None:
            with self._state:
                item = self._logits.get(mask_input)
            if item is not None:
                if item[0] != key:
                    raise InputError(
                        "mask_input belongs to another image; send the logits id of a "
                        "prediction on this image, or none"
                    )
                prev = item[1]
        if multimask is None:
            multimask = prev is None and box_arr is None and coords is not None and len(coords) == 1
        emb, t_enc = self.embedding(ref)
        t = time.perf_counter()
        with self._predict_lock:
            self.predictor.set_embedding(emb)
            masks, scores, low_res = self.predictor.predict(
                point_coords=coords,
                point_labels=labels,
                box=box_arr,
                mask_input=prev,
                multimask_output=bool(multimask),
            )
        best = int(np.argmax(scores))
        mask = masks[best]
        t_dec = time.perf_counter() - t
        logits_id = secrets.token_urlsafe(9)
        with self._state:
            self._logits[logits_id] = (key, low_res[best : best + 1].copy())
            while len(self._logits) > self._logits_capacity:
                self._logits.popitem(last=False)
        self._last_click = time.perf_counter()
        return {
            **mask_fields(mask),
            "mask_score": float(scores[best]),
            "logits": logits_id,
            "used_mask_input": prev is not None,
            "timings": {"encoder": t_enc, "decoder": t_dec},
        }

    # ------------------------------------------------------------------ pipeline
    def segment_ref(self, ref: ImageRef, text) -> object:
        """``pipeline.segment(image, text)`` on a dataset image, using (and filling) the
        embedding caches; returns the :class:`~grounded_sam.result.Result`."""
        self._ensure_detector()
        image = ref.load()
        emb, _ = self.embedding(ref, image)
        with self._encode_lock, self._predict_lock:
            # put it back in case other images pushed it out of the LRU meanwhile, so
            # segment() finds it instead of running the encoder again
            self.pipe.cache.put(_key_of(image), emb)
            return self.pipe.segment(image, text)

    def segment(
        self,
        image: np.ndarray,
        text=None,
        *,
        points=None,
        point_labels=None,
        boxes=None,
        multimask_output: bool = False,
    ):
        """Exactly :meth:`GroundedSAM.segment` (what ``grounded-sam segment`` runs), serialised
        with the app's other model calls."""
        if text is not None:
            self._ensure_detector()
        with self._encode_lock, self._predict_lock:
            return self.pipe.segment(
                image,
                text,
                points=points,
                point_labels=point_labels,
                boxes=boxes,
                multimask_output=multimask_output,
            )

    def stats(self) -> dict:
        with self._state:
            queue = len(self._queue)
        with self._predict_lock:
            in_memory = len(self.pipe.cache)
        return {
            "encoder_calls": self.encoder_calls,
            "prefetched": self.prefetched,
            "prefetch_queue": queue,
            "memory_cache": {"size": in_memory, "capacity": self.pipe.cache.capacity},
            "disk_cache": None
            if self.disk is None
            else {"dir": str(self.disk.root), "hits": self.disk_hits, "writes": self.disk_writes},
        }


def _key_of(image: np.ndarray) -> tuple:
    from grounded_sam.pipeline import EmbeddingCache

    return EmbeddingCache.key(image)


def _point_rows(points) -> np.ndarray:
    """``[[x, y], [x, y, label], ...]`` -> (P, 3) float64 with label 1 where omitted."""
    rows = []
    for i, p in enumerate(points):
        if not isinstance(p, (list, tuple)) or len(p) not in (2, 3):
            raise InputError(f"points[{i}] must be [x, y] or [x, y, label], got {p!r}")
        rows.append([*p, 1] if len(p) == 2 else list(p))
    from grounded_sam.masks import finite_array

    return finite_array(rows, "points").reshape(-1, 3)


def mask_fields(mask: np.ndarray) -> dict:
    """The COCO fields of one (H, W) bool mask: ``segmentation`` (RLE, string counts),
    ``bbox`` (the mask's tight XYWH box) and ``area`` (its pixel count)."""
    x0, y0, x1, y1 = (float(v) for v in mask_to_box(mask))
    return {
        "segmentation": encode_rle(mask)[0],
        "bbox": [x0, y0, x1 - x0, y1 - y0],
        "area": int(mask.sum()),
    }


def result_annotations(result) -> list[dict]:
    """A :class:`~grounded_sam.result.Result` as the API's annotation dicts: the fields
    ``grounded-sam segment`` writes in ``result.json`` (``segmentation``, ``bbox`` from
    ``result.boxes``, ``score``, ``mask_score``, ``label``, ``area``)."""
    out = []
    for i, rle in enumerate(encode_rle(result.masks)):
        x0, y0, x1, y1 = (float(v) for v in result.boxes[i])
        out.append(
            {
                "segmentation": rle,
                "bbox": [x0, y0, x1 - x0, y1 - y0],
                "area": int(result.masks[i].sum()),
                "score": float(result.scores[i]),
                "mask_score": float(result.mask_scores[i]),
                "label": result.labels[i],
            }
        )
    return out
