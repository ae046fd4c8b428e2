"""Label images: the pure per-image step of the data engine.

``Labeler.label_batch(tasks) -> [ImageUnit]`` reads each image and, per image, runs

1. the detector **once** for every caption of the ontology together (class prompts and
   negatives; a detector chunks internally only where its text limit forces it), several
   images per call through ``detect_batch`` when ``batch_size > 1`` (a detector's
   ``detect_batch`` must give what one-by-one calls give);
2. per-class thresholds, then negative suppression (a positive box overlapping a negative
   match at box IoU >= ``negative_iou`` is dropped);
3. **one** SAM image-encoder pass (or a cached / stored embedding) and **one** batched
   mask-decoder call for all kept boxes, through :class:`~grounded_sam.SamPredictor`;
4. de-duplication within each class across its prompts (mask IoU >= ``dedup_iou``: the
   lower-scored one goes), and with ``exclusive`` across classes too;
5. with candidates: automatic-mode masks (:class:`~grounded_sam.AutomaticMaskGenerator` on
   the same embedding) not covered by the labelled instances.

The result depends only on the image, the models and the configuration: not on the batch it
was in, the order, the engine or the process. Committing and assembling live elsewhere
(:mod:`grounded_sam.engine.run`), so any runner (local, shard, Ray) can call this.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from grounded_sam.detectors.base import Detections
from grounded_sam.engine.dataset import ImageUnit
from grounded_sam.engine.ontology import Ontology, load_ontology
from grounded_sam.engine.sources import ImageTask
from grounded_sam.errors import InputError
from grounded_sam.masks import clip_boxes, encode_rle
from grounded_sam.predictor import SamPredictor

__all__ = ["CandidateOptions", "LabelConfig", "Labeler"]

# bytes of float32 full-resolution logits post-processed at once: bounds memory on big images
# and many boxes (SAM upsamples to 1024x1024 first, with a copy or two on the way, so 64 MB
# of logits peak near 200 MB; 256 MB was measured to add ~110 MB of peak RSS on busy images)
_LOGITS_BUDGET = 64 * 1024 * 1024
# pairs overlapping at least this much (mask IoU) are flagged for review
OVERLAP_IOU = 0.25
# synonyms merged into one instance whose masks agree less than this are flagged
AGREE_IOU = 0.8
NOTE_KEYS = ("negative_suppressed", "empty_masks", "duplicates_merged", "class_suppressed")


@dataclass(frozen=True)
class CandidateOptions:
    """Settings of ``--candidates`` (automatic-mode masks offered for a person to name).

    Attributes:
        points_per_side: the point grid of :class:`~grounded_sam.AutomaticMaskGenerator`
            (16 -> 256 points: a quarter of Meta's default work; enough for object-sized
            regions).
        pred_iou_thresh, stability_score_thresh: the generator's filters; ``None`` for
            ``pred_iou_thresh`` is the model family's default (0.88 SAM 1, 0.8 SAM 2.1, as
            Meta's two generators).
        max_covered: a candidate with more than this fraction of its area inside labelled
            instances is dropped (it is already labelled, or is a part of a labelled object).
        min_area: candidates smaller than this many pixels are dropped.
    """

    points_per_side: int = 16
    pred_iou_thresh: float | None = None
    stability_score_thresh: float = 0.95
    max_covered: float = 0.5
    min_area: int = 100

    def __post_init__(self) -> None:
        if not isinstance(self.points_per_side, int) or self.points_per_side < 1:
            raise InputError(
                f"candidate points_per_side must be an integer >= 1, got {self.points_per_side!r}"
            )
        for name in ("pred_iou_thresh", "stability_score_thresh", "max_covered"):
            v = getattr(self, name)
            if v is None and name == "pred_iou_thresh":
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 1:
                raise InputError(f"candidate {name} must be a number in [0, 1], got {v!r}")
        if not isinstance(self.min_area, int) or self.min_area < 0:
            raise InputError(f"candidate min_area must be an integer >= 0, got {self.min_area!r}")


def _unit_number(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise InputError(f"{name} must be a number in [0, 1], got {value!r}")
    return float(value)


@dataclass(frozen=True)
class LabelConfig:
    """Everything that decides the labels (picklable when models are given by name, so a
    distributed runner can rebuild the :class:`Labeler` on each worker).

    Attributes:
        ontology: the classes and negatives.
        detector: a detector name or a detector object.
        detector_options: the named detector's options (``box_threshold``, ``model``...).
        sam, sam_checkpoint, precision, device: as for :class:`~grounded_sam.GroundedSAM`.
        exclusive: resolve overlaps across classes by score (one class per object).
        dedup_iou: mask IoU at which two instances are the same object.
        negative_iou: box IoU at which a negative match suppresses a positive box.
        candidates: :class:`CandidateOptions`, or ``None`` for no candidates.
        batch_size: images per detector call (``detect_batch``; no effect on the results).
            The encoder always takes one image per pass: batched passes differ from single
            ones in the last float bits.
        save_embeddings: keep each image's SAM embedding in the dataset (for the app).
    """

    ontology: Ontology
    detector: Any = "grounding-dino"
    detector_options: Mapping[str, Any] = field(default_factory=dict)
    sam: Any = "mobile_sam"
    sam_checkpoint: str | None = None
    precision: str = "fp32"
    device: str | None = None
    exclusive: bool = False
    dedup_iou: float = 0.5
    negative_iou: float = 0.5
    candidates: CandidateOptions | None = None
    batch_size: int = 1
    save_embeddings: bool = False

    def __post_init__(self) -> None:
        _unit_number(self.dedup_iou, "dedup_iou")
        _unit_number(self.negative_iou, "negative_iou")
        if (
            not isinstance(self.batch_size, int)
            or isinstance(self.batch_size, bool)
            or self.batch_size < 1
        ):
            raise InputError(f"batch_size must be an integer >= 1, got {self.batch_size!r}")

    def settings(self) -> dict[str, Any]:
        """The labelling settings besides ontology, detector and SAM that change the output."""
        return {
            "exclusive": bool(self.exclusive),
            "dedup_iou": float(self.dedup_iou),
            "negative_iou": float(self.negative_iou),
            "candidates": None if self.candidates is None else asdict(self.candidates),
        }

    def global_threshold(self) -> float | None:
        """The detector's box threshold as configured (``None`` when it has none or is an
        object without a ``box_threshold`` attribute)."""
        return _threshold_option(self.detector, self.detector_options)[1]

    def thresholds(self) -> list[float | None]:
        """Per category (id - 1): the score its boxes must exceed (``None``: whatever the
        detector kept)."""
        g = self.global_threshold()
        return [c.threshold if c.threshold is not None else g for c in self.ontology.classes]

    def identity(self) -> dict[str, Any]:
        """What must not change between runs into one dataset: ontology, detector, SAM and
        settings. Needs no model built (a SAM given as an object is hashed)."""
        from grounded_sam.engine.embeddings import sam_identity

        return {
            "ontology": self.ontology.to_dict(),
            "detector": self.detector_identity(),
            "sam": sam_identity(self.sam, self.sam_checkpoint, self.precision),
            "settings": self.settings(),
        }

    @classmethod
    def create(
        cls,
        classes: Any,
        *,
        detector: Any = "grounding-dino",
        sam: Any = "mobile_sam",
        sam_checkpoint: str | os.PathLike | None = None,
        device: Any = None,
        precision: str = "fp32",
        exclusive: bool = False,
        candidates: bool | CandidateOptions | Mapping[str, Any] | None = False,
        dedup_iou: float = 0.5,
        negative_iou: float = 0.5,
        batch_size: int = 1,
        save_embeddings: bool = False,
        **detector_options: Any,
    ) -> LabelConfig:
        """The configuration from :class:`Labeler`'s arguments (checked; no model built)."""
        if candidates is True:
            cand: CandidateOptions | None = CandidateOptions()
        elif isinstance(candidates, Mapping):
            try:
                cand = CandidateOptions(**candidates)
            except TypeError as e:
                raise InputError(f"candidates: {e}") from None
        elif isinstance(candidates, CandidateOptions):
            cand = candidates
        else:
            cand = None
        if detector_options and not isinstance(detector, str):
            raise InputError(
                f"detector options {sorted(detector_options)} only apply when the detector is "
                "given by name; configure the detector object instead"
            )
        return cls(
            ontology=load_ontology(classes),
            detector=detector,
            detector_options=dict(detector_options),
            sam=sam,
            sam_checkpoint=None if sam_checkpoint is None else os.fspath(sam_checkpoint),
            precision=precision,
            device=None if device is None else str(device),
            exclusive=bool(exclusive),
            dedup_iou=dedup_iou,
            negative_iou=negative_iou,
            candidates=cand,
            batch_size=batch_size,
            save_embeddings=bool(save_embeddings),
        )

    def detector_identity(self) -> dict[str, Any]:
        """What identifies the detector's output: its name and options as given, or for an
        object its class and ``repr``."""
        if isinstance(self.detector, str):
            from grounded_sam.detectors.base import detector_options

            # defaults filled in: an option given at its default value is the same detector
            given = {o.name: o.default for o in detector_options(self.detector)}
            given.update(self.detector_options)
            opts = {k: _plain(v) for k, v in sorted(given.items())}
            return {"name": self.detector, "options": opts}
        cls = type(self.detector)
        out = {"object": f"{cls.__module__}.{cls.__qualname__}"}
        if cls.__repr__ is not object.__repr__:  # the default repr holds a memory address
            out["repr"] = repr(self.detector)
        return out


def _path_digest(path: str) -> str:
    """BLAKE2b-256 of a file, or of a folder's files (relative names, sizes and bytes)."""
    import hashlib
    from pathlib import Path

    from grounded_sam.engine.dataset import file_digest

    root = Path(path)
    if root.is_file():
        return file_digest(root)
    h = hashlib.blake2b(digest_size=32)
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root)
        if p.is_file() and not any(part.startswith(".") for part in rel.parts):
            h.update(f"{rel.as_posix()}\0{p.stat().st_size}\0{file_digest(p)}\0".encode())
    return h.hexdigest()


def _plain(value: Any) -> Any:
    """A JSON form of an option value that identifies it: a local file or folder by a digest
    of its contents (so the same model at another path, e.g. on another machine, is the same
    detector), other values as they are."""
    if isinstance(value, os.PathLike) or (isinstance(value, str) and os.path.exists(value)):
        return {"blake2b": _path_digest(os.fspath(value))}
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return repr(value)


def _threshold_option(detector: Any, options: Mapping[str, Any]) -> tuple[str | None, float | None]:
    """(keyword, value) of the named detector's box threshold (the option behind
    ``--box-threshold``), or (None, None) when it has none or is an object."""
    if not isinstance(detector, str):
        value = getattr(detector, "box_threshold", None)
        return None, float(value) if isinstance(value, (int, float)) else None
    from grounded_sam.detectors.base import detector_options

    for opt in detector_options(detector):
        if opt.cli_flag == "--box-threshold":
            value = options.get(opt.name, opt.default)
            return opt.name, None if value is None else float(value)
    return None, None


class _CachedPredictor(SamPredictor):
    """A predictor on the same model whose ``set_image`` takes the embedding from the
    labeller's cache: the automatic generator over the whole image reuses the labelling
    embedding instead of running the encoder again."""

    def __init__(self, pipe: Any) -> None:
        super().__init__(pipe.sam)
        self._pipe = pipe

    def set_image(self, image: Any, image_format: str = "RGB") -> None:
        from grounded_sam.io import load_image
        from grounded_sam.pipeline import EmbeddingCache

        img = load_image(image)
        self._pipe.embed([img])
        self.set_embedding(self._pipe.cache.get(EmbeddingCache.key(img)))


def _box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N, 4) x (M, 4) XYXY -> (N, M) IoU."""
    x0 = np.maximum(a[:, None, 0], b[None, :, 0])
    y0 = np.maximum(a[:, None, 1], b[None, :, 1])
    x1 = np.minimum(a[:, None, 2], b[None, :, 2])
    y1 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def _pycoco(rles: Sequence[Mapping[str, Any]]) -> list[dict]:
    return [{"size": r["size"], "counts": r["counts"].encode("ascii")} for r in rles]


def _mask_iou(rles: Sequence[Mapping[str, Any]]) -> np.ndarray:
    """(N, N) mask IoU of compressed RLEs (pycocotools, no decoding)."""
    from pycocotools import mask as mask_utils

    n = len(rles)
    if n == 0:
        return np.zeros((0, 0))
    r = _pycoco(rles)
    return np.asarray(mask_utils.iou(r, r, [0] * n), dtype=np.float64).reshape(n, n)


class Labeler:
    """The models and settings that label images; build once, label many.

    Args:
        classes: an ontology: YAML file, inline ``"cat,dog"``, mapping or
            :class:`~grounded_sam.engine.ontology.Ontology`.
        detector: a detector name (``grounding-dino``, ``yolo-clip``, a plugin) or an object
            with ``detect(image, phrases)``. With per-class thresholds a named detector runs
            at the lowest of them and the global ``box_threshold``, and each class is
            filtered at its own (an object detector keeps its own threshold: per-class
            values below it cannot bring boxes back).
        sam, sam_checkpoint, device, precision: as for :class:`~grounded_sam.GroundedSAM`.
        exclusive: one class per object: overlapping instances of different classes (mask
            IoU >= ``dedup_iou``) keep only the higher-scored one.
        candidates: ``True`` (default :class:`CandidateOptions`), a ``CandidateOptions`` or a
            dict of its fields: also offer automatic-mode masks that no labelled instance
            covers.
        dedup_iou, negative_iou, batch_size, save_embeddings: see :class:`LabelConfig`.
        **detector_options: the named detector's options (e.g. ``box_threshold=0.35``).

    Attributes:
        config: the :class:`LabelConfig`.
        pipe: the :class:`~grounded_sam.GroundedSAM` whose detector and predictor do the work
            (``pipe.encoder_calls`` counts encoder images).
    """

    def __init__(
        self,
        classes: Any,
        *,
        detector: Any = "grounding-dino",
        sam: Any = "mobile_sam",
        sam_checkpoint: str | os.PathLike | None = None,
        device: Any = None,
        precision: str = "fp32",
        exclusive: bool = False,
        candidates: bool | CandidateOptions | Mapping[str, Any] | None = False,
        dedup_iou: float = 0.5,
        negative_iou: float = 0.5,
        batch_size: int = 1,
        save_embeddings: bool = False,
        **detector_options: Any,
    ) -> None:
        config = LabelConfig.create(
            classes,
            detector=detector,
            sam=sam,
            sam_checkpoint=sam_checkpoint,
            device=device,
            precision=precision,
            exclusive=exclusive,
            candidates=candidates,
            dedup_iou=dedup_iou,
            negative_iou=negative_iou,
            batch_size=batch_size,
            save_embeddings=save_embeddings,
            **detector_options,
        )
        self._build(config)

    @classmethod
    def from_config(cls, config: LabelConfig) -> Labeler:
        """Build the models of ``config`` (e.g. on a distributed worker)."""
        obj = cls.__new__(cls)
        obj._build(config)
        return obj

    def _build(self, config: LabelConfig) -> None:
        from grounded_sam.pipeline import GroundedSAM

        self.config = config
        onto = config.ontology
        thr_name, global_thr = _threshold_option(config.detector, config.detector_options)
        run_options = dict(config.detector_options)
        class_thr = [c.threshold for c in onto.classes if c.threshold is not None]
        if class_thr and isinstance(config.detector, str):
            if thr_name is None:
                raise InputError(
                    f"the ontology sets per-class thresholds but detector {config.detector!r} "
                    "has no box threshold option to apply them to; remove 'threshold' from "
                    "the classes"
                )
            run_options[thr_name] = min([t for t in (global_thr, *class_thr) if t is not None])
        self.global_threshold = global_thr
        # the score a class's boxes must exceed (None: whatever the detector kept)
        self.thresholds = config.thresholds()
        self.pipe = GroundedSAM(
            config.detector,
            config.sam,
            sam_checkpoint=config.sam_checkpoint,
            device=config.device,
            cache_size=max(2, config.batch_size),
            precision=config.precision,
            **run_options,
        )
        self.pipe.detector  # noqa: B018 - build it now: bad options fail before any image
        self._category = {p: i + 1 for i, c in enumerate(onto.classes) for p in c.prompts}
        self._negatives = set(onto.negatives)
        self._amg = None
        if config.candidates is not None:
            from grounded_sam.automatic import AutomaticMaskGenerator

            c = config.candidates
            self._amg = AutomaticMaskGenerator(
                _CachedPredictor(self.pipe),
                points_per_side=c.points_per_side,
                pred_iou_thresh=c.pred_iou_thresh,
                stability_score_thresh=c.stability_score_thresh,
                output_mode="coco_rle",
            )

    def run(self, images: Any, out: str | os.PathLike, **options: Any):
        """Label ``images`` into the dataset ``out`` with these models: the same as
        :func:`grounded_sam.engine.run.label` (``shard``, ``overwrite``, ``audit``,
        ``progress``, ``runner``), without building the models again."""
        from grounded_sam.engine.run import label_dataset

        return label_dataset(self, images, out, **options)

    # ------------------------------------------------------------------ identity
    def identity(self) -> dict[str, Any]:
        """:meth:`LabelConfig.identity` (computed once)."""
        if not hasattr(self, "_identity"):
            self._identity = self.config.identity()
        return self._identity

    # ------------------------------------------------------------------ labelling
    def label_image(self, image: Any, file_name: str | None = None, *, store: Any = None):
        """Label one image (a path, or an array / PIL image with ``file_name``); returns its
        :class:`~grounded_sam.engine.dataset.ImageUnit`."""
        if isinstance(image, (str, os.PathLike)):
            path = os.fspath(image)
            task = ImageTask(file_name or os.path.basename(path), path, _size(path))
            return self.label_batch([task], store=store)[0]
        return self._label_loaded([(ImageTask(file_name or "image", "", None), image)], store)[0]

    def label_batch(self, tasks: Sequence[ImageTask], *, store: Any = None) -> list[ImageUnit]:
        """Label several images; one unit per task, in order. An unreadable image gives an
        ``error`` unit and the others are still labelled. ``store`` is an optional
        :class:`~grounded_sam.engine.embeddings.EmbeddingStore` to read (and, with
        ``save_embeddings``, write) embeddings."""
        from PIL import Image

        from grounded_sam.io import load_image

        units: list[ImageUnit | None] = [None] * len(tasks)
        loaded: list[tuple[int, ImageTask, np.ndarray]] = []
        for i, task in enumerate(tasks):
            try:
                loaded.append((i, task, load_image(task.path)))
            except (InputError, Image.DecompressionBombError) as e:
                reason = str(e).replace(repr(task.path), repr(task.file_name))
                units[i] = ImageUnit(
                    task.file_name, "error", size_bytes=task.size_bytes, reason=reason
                )
        done = self._label_loaded([(t, img) for _, t, img in loaded], store)
        for (i, _, _), unit in zip(loaded, done, strict=True):
            units[i] = unit
        return units  # type: ignore[return-value]

    def _label_loaded(self, items: Sequence[tuple[ImageTask, Any]], store: Any) -> list[ImageUnit]:
        from grounded_sam.io import load_image

        if not items:
            return []
        images = [load_image(img) for _, img in items]
        all_dets = self._detect(images)
        kept = [self._filter(img, d) for img, d in zip(images, all_dets, strict=True)]
        need = [i for i, (boxes, _, _, _) in enumerate(kept) if len(boxes) or self._amg is not None]
        found = self._embeddings(
            [items[i][0].file_name for i in need], [images[i] for i in need], store
        )
        embedding_of = {i: found[j] for j, i in enumerate(need)}
        units = []
        for i, ((task, _), img) in enumerate(zip(items, images, strict=True)):
            boxes, scores, cats, (prompts, notes) = kept[i]
            units.append(
                self._finish(task, img, boxes, scores, cats, prompts, notes, embedding_of.get(i))
            )
        return units

    def _detect(self, images: Sequence[np.ndarray]) -> list[Detections]:
        """One detector call per image for every caption (or one ``detect_batch`` call for
        the batch); boxes clipped to each image."""
        det = self.pipe.detector
        phrases = self.config.ontology.phrases
        if len(images) > 1 and callable(getattr(det, "detect_batch", None)):
            out = list(det.detect_batch(list(images), phrases))
        else:
            out = [det.detect(img, phrases) for img in images]
        for img, d in zip(images, out, strict=True):
            if len(d):
                d.boxes = clip_boxes(d.boxes, img.shape[:2], strict=False)
        return out

    def _filter(self, img: np.ndarray, dets: Detections):
        """Detections -> kept positive boxes, scores, category ids, prompts and notes, after
        class thresholds and negative suppression."""
        notes = dict.fromkeys(NOTE_KEYS, 0)
        pos, neg = [], []
        for i, (label, score) in enumerate(zip(dets.labels, dets.scores, strict=True)):
            cid = self._category.get(label)
            if cid is None:
                if label not in self._negatives:
                    raise RuntimeError(
                        f"the detector labelled a box {label!r}, which is none of the captions "
                        f"asked for ({self.config.ontology.phrases}); a detector must label "
                        "each box with one of the phrases exactly as given"
                    )
                if self.global_threshold is None or score > self.global_threshold:
                    neg.append(i)
                continue
            thr = self.thresholds[cid - 1]
            if thr is None or score > thr:
                pos.append(i)
        if neg and pos:
            iou = _box_iou(dets.boxes[pos].astype(np.float64), dets.boxes[neg].astype(np.float64))
            suppressed = (iou >= self.config.negative_iou).any(axis=1)
            notes["negative_suppressed"] = int(suppressed.sum())
            pos = [p for p, s in zip(pos, suppressed, strict=True) if not s]
        boxes = dets.boxes[pos].astype(np.float64).reshape(-1, 4)
        scores = dets.scores[pos].astype(np.float32)
        cats = [self._category[dets.labels[i]] for i in pos]
        prompts = [dets.labels[i] for i in pos]
        return boxes, scores, cats, (prompts, notes)

    def _embeddings(self, names: Sequence[str], images: Sequence[np.ndarray], store: Any) -> dict:
        """Position in ``images`` -> its embedding: the labeller's cache, then ``store``,
        then one encoder pass for all the misses together."""
        from grounded_sam.pipeline import EmbeddingCache

        out: dict[int, Any] = {}
        missing = []
        for j, (name, img) in enumerate(zip(names, images, strict=True)):
            key = EmbeddingCache.key(img)
            emb = self.pipe.cache.get(key)
            if emb is None and store is not None:
                emb = store.load(name, img, self.pipe.device)
                if emb is not None:
                    self.pipe.cache.put(key, emb)
            if emb is None:
                missing.append(j)
            else:
                out[j] = emb
        if missing:
            # One image per encoder pass, whatever the batch: a batched pass is not bitwise
            # equal to single ones on CPU (other matmul kernels, ~1e-5), which could flip mask
            # pixels and make a dataset depend on how it was batched or resumed.
            self.pipe.embed([images[j] for j in missing], batch_size=1)
            for j in missing:
                out[j] = self.pipe.cache.get(EmbeddingCache.key(images[j]))
                if store is not None and self.config.save_embeddings:
                    store.save(names[j], images[j], out[j])
        return out

    def _finish(
        self,
        task: ImageTask,
        img: np.ndarray,
        boxes: np.ndarray,
        scores: np.ndarray,
        cats: list[int],
        prompts: list[str],
        notes: dict[str, int],
        embedding: Any,
    ) -> ImageUnit:
        h, w = (int(v) for v in img.shape[:2])
        instances: list[dict[str, Any]] = []
        if len(boxes):
            instances = self._decode(embedding, boxes, scores, cats, prompts, notes)
            instances = self._resolve(instances, notes)
        candidates = []
        if self._amg is not None:
            self.pipe.predictor.set_embedding(embedding)
            candidates = self._candidates(img, instances)
        for inst in instances:
            del inst["_index"]
        return ImageUnit(
            task.file_name,
            "ok",
            size_bytes=task.size_bytes,
            width=w,
            height=h,
            instances=instances,
            candidates=candidates,
            notes=notes,
        )

    def _decode(self, embedding, boxes, scores, cats, prompts, notes) -> list[dict[str, Any]]:
        """All boxes in one mask-decoder call; full-resolution logits post-processed in
        memory-bounded chunks into RLE, area, tight box and stability."""
        from grounded_sam import _amg
        from grounded_sam.masks import rle_to_bbox

        pred = self.pipe.predictor
        pred.set_embedding(embedding)
        low, iou = pred.predict_low_res(boxes=boxes, multimask_output=False)
        iou = iou[:, 0].float().cpu().numpy()
        h, w = pred.original_size
        thr = pred.model.mask_threshold
        step = max(1, _LOGITS_BUDGET // (4 * max(h * w, 1024 * 1024)))
        out = []
        for s in range(0, low.shape[0], step):
            logits = pred.postprocess(low[s : s + step])[:, 0]
            stability = _amg.stability_score(logits, thr, 1.0).float().cpu().numpy()
            masks = (logits > thr).cpu().numpy()
            del logits
            for k, rle in enumerate(encode_rle(masks)):
                i = s + k
                area = int(masks[k].sum())
                if area == 0:
                    notes["empty_masks"] += 1
                    continue
                out.append(
                    {
                        "category_id": cats[i],
                        "segmentation": rle,
                        "area": area,
                        "bbox": rle_to_bbox(rle),
                        "iscrowd": 0,
                        "score": float(scores[i]),
                        "mask_score": float(iou[i]),
                        "stability": float(stability[k]),
                        "prompt": prompts[i],
                        "flags": {},
                        "_index": i,
                    }
                )
        return out

    def _resolve(self, inst: list[dict[str, Any]], notes: dict[str, int]) -> list[dict[str, Any]]:
        """Merge duplicates (same class, mask IoU >= dedup_iou; with ``exclusive`` any class),
        highest score first; flag what a person should check; order by class then score."""
        names = self.config.ontology.names
        iou = _mask_iou([d["segmentation"] for d in inst])
        dedup = self.config.dedup_iou
        order = sorted(range(len(inst)), key=lambda i: (-inst[i]["score"], inst[i]["_index"]))
        kept: list[int] = []

        def flag(i: int, code: str, what: str) -> None:
            values = inst[i]["flags"].setdefault(code, [])
            if what not in values:
                values.append(what)
                values.sort()

        for i in order:
            cat, prompt = inst[i]["category_id"], inst[i]["prompt"]
            same = next(
                (k for k in kept if inst[k]["category_id"] == cat and iou[i, k] >= dedup), None
            )
            if same is not None:
                notes["duplicates_merged"] += 1
                if inst[same]["prompt"] != prompt and iou[i, same] < AGREE_IOU:
                    flag(same, "prompt_disagreement", prompt)
                continue
            if self.config.exclusive:
                other = next(
                    (k for k in kept if inst[k]["category_id"] != cat and iou[i, k] >= dedup), None
                )
                if other is not None:
                    notes["class_suppressed"] += 1
                    flag(other, "class_overlap", names[cat - 1])
                    continue
            kept.append(i)
        for a_pos, a in enumerate(kept):
            for b in kept[a_pos + 1 :]:
                if iou[a, b] < OVERLAP_IOU:
                    continue
                ca, cb = inst[a]["category_id"], inst[b]["category_id"]
                if ca != cb:
                    flag(a, "class_overlap", names[cb - 1])
                    flag(b, "class_overlap", names[ca - 1])
                elif inst[a]["prompt"] != inst[b]["prompt"]:
                    flag(a, "prompt_disagreement", inst[b]["prompt"])
                    flag(b, "prompt_disagreement", inst[a]["prompt"])
        out = [inst[i] for i in kept]
        out.sort(key=lambda d: (d["category_id"], -d["score"], d["_index"]))
        return out

    def _candidates(self, img: np.ndarray, instances: list[dict[str, Any]]) -> list[dict]:
        """Automatic-mode masks on the cached embedding that the labelled instances leave
        uncovered, largest first."""
        from pycocotools import mask as mask_utils

        from grounded_sam.masks import rle_to_bbox

        opts = self.config.candidates
        union = None
        if instances:
            union = mask_utils.merge(_pycoco([d["segmentation"] for d in instances]))
        out = []
        for rec in self._amg.generate(img):
            rle, area = rec["segmentation"], int(rec["area"])
            if area == 0 or area < opts.min_area:
                continue
            if union is not None:
                both = mask_utils.merge([_pycoco([rle])[0], union], intersect=True)
                if float(mask_utils.area(both)) / area > opts.max_covered:
                    continue
            out.append(
                {
                    "segmentation": rle,
                    "area": area,
                    "bbox": rle_to_bbox(rle),
                    "mask_score": float(rec["predicted_iou"]),
                    "stability": float(rec["stability_score"]),
                }
            )
        out.sort(key=lambda d: (-d["area"], d["bbox"]))
        return out


def _size(path: str) -> int | None:
    try:
        return os.stat(path).st_size
    except OSError:
        return None
