"""Evaluation datasets: COCO instances, RefCOCO-style referring expressions, image/mask folders.

Every dataset yields :class:`Sample` objects, one per image, each holding the text prompts
asked of that image and, per prompt, the ground truth: the union mask ``(H, W)`` bool at the
original image size and the instance boxes ``(K, 4)`` float32 XYXY in original-image pixels
(the boxes feed the ``gt-boxes`` oracle).

* :class:`CocoDataset` -- COCO-format instance annotations + an image folder. The prompt is
  each category name present in the image (``all_categories=True``: every category, so false
  positives on absent categories count).
* :class:`RefCocoDataset` -- a refs file (``refs(unc).p`` pickle or JSON) + the matching
  ``instances.json``; each sentence of each ref of the split is one prompt with one target mask.
* :class:`MaskFolderDataset` -- ``images/NAME.jpg`` + ``masks/NAME.png`` pairs, one prompt for all.

Ground truth for COCO mask AP comes from :meth:`EvalDataset.coco_gt` (``None`` where AP is not
defined, i.e. for referring expressions).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import pickle
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from grounded_sam.errors import InputError

__all__ = [
    "CocoDataset",
    "EvalDataset",
    "MaskFolderDataset",
    "Prompt",
    "RefCocoDataset",
    "Sample",
    "build_dataset",
    "load_refs",
]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


@dataclass
class Prompt:
    """One text prompt of one image and its ground truth.

    Attributes:
        text: the prompt given to the pipeline (a category name or a referring sentence).
        category_id: COCO category id the predictions are filed under.
        gt_mask: ``(H, W)`` bool union of the ground-truth instances (all False if none).
        gt_boxes: ``(K, 4)`` float32 XYXY pixels of the non-crowd instances (``K`` may be 0).
        ref_id: id of the referring expression (RefCOCO only), else ``None``.
    """

    text: str
    category_id: int
    gt_mask: np.ndarray
    gt_boxes: np.ndarray
    ref_id: int | None = None


@dataclass
class Sample:
    """One image with its prompts. ``height``/``width`` are the annotated image size."""

    image_id: int
    path: Path
    height: int
    width: int
    prompts: list[Prompt] = field(default_factory=list)


class EvalDataset:
    """Base class: an ordered list of image ids, lazily turned into :class:`Sample` objects.

    Subclasses set ``kind``, ``single_target`` (True when each prompt names exactly one object,
    so only the highest-scoring detection is kept) and implement :meth:`_sample`.
    """

    kind: str = "base"
    single_target: bool = False

    def __init__(self) -> None:
        self._ids: list[int] = []

    def __len__(self) -> int:
        return len(self._ids)

    def image_ids(self) -> list[int]:
        """Image ids in evaluation order (after ``limit``)."""
        return list(self._ids)

    def __iter__(self) -> Iterator[Sample]:
        return self.samples()

    def samples(self, skip: set[int] | frozenset[int] = frozenset()) -> Iterator[Sample]:
        """Yield samples in order, skipping the image ids in ``skip`` without loading them."""
        for image_id in self._ids:
            if image_id not in skip:
                yield self._sample(image_id)

    def _sample(self, image_id: int) -> Sample:  # pragma: no cover - abstract
        raise NotImplementedError

    def coco_gt(self) -> dict | None:
        """COCO-format ground truth dict for mask AP, or ``None`` when AP is not defined."""
        return None

    def describe(self) -> dict[str, Any]:
        """JSON-able description stored in ``metrics.json``."""
        return {"type": self.kind, "n_images": len(self)}


def _check_file(path: str | os.PathLike, what: str) -> Path:
    p = Path(path).expanduser()
    if not p.is_file():
        raise InputError(f"{what} {str(p)!r} does not exist or is not a file")
    return p


def _check_dir(path: str | os.PathLike, what: str) -> Path:
    p = Path(path).expanduser()
    if not p.is_dir():
        raise InputError(f"{what} {str(p)!r} does not exist or is not a folder")
    return p


def _check_limit(limit: int | None) -> int | None:
    if limit is None:
        return None
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise InputError(f"limit must be a positive integer or None, got {limit!r}")
    return limit


def _quiet_coco(source: str | Path | dict):
    """A ``pycocotools.coco.COCO`` built from a file or dict without its stdout chatter."""
    from pycocotools.coco import COCO

    with contextlib.redirect_stdout(io.StringIO()):
        if isinstance(source, dict):
            coco = COCO()
            coco.dataset = source
            coco.createIndex()
        else:
            coco = COCO(str(source))
    return coco


def _load_json(path: Path, what: str) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise InputError(f"{what} {str(path)!r} is not valid JSON: {e}") from e


def _xywh_to_xyxy(bboxes: Sequence[Sequence[float]]) -> np.ndarray:
    b = np.asarray(bboxes, dtype=np.float32).reshape(-1, 4)
    return np.concatenate([b[:, :2], b[:, :2] + b[:, 2:]], axis=1)


def _check_missing_images(paths: Sequence[Path], where: Path) -> None:
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        shown = ", ".join(missing[:5]) + (
            f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        )
        raise InputError(
            f"{len(missing)} annotated image(s) are missing from {str(where)!r}: {shown}; "
            "point --images at the folder holding them (or use --limit)"
        )


class _CocoBacked(EvalDataset):
    """Shared loading of a COCO instances file (used by COCO and RefCOCO datasets)."""

    def __init__(self, annotations: str | os.PathLike, images: str | os.PathLike) -> None:
        super().__init__()
        self.annotations = _check_file(annotations, "annotations file")
        self.images = _check_dir(images, "images folder")
        data = _load_json(self.annotations, "annotations file")
        if not isinstance(data, dict) or not {"images", "annotations", "categories"} <= set(data):
            keys = sorted(data) if isinstance(data, dict) else type(data).__name__
            raise InputError(
                f"annotations file {str(self.annotations)!r} is not COCO instances format: "
                f"expected a JSON object with 'images', 'annotations' and 'categories', got {keys}"
            )
        self.coco = _quiet_coco(data)

    def _mask(self, ann: dict, height: int, width: int) -> np.ndarray:
        from pycocotools import mask as mask_utils

        seg = ann["segmentation"]
        if isinstance(seg, list):  # polygons
            rles = mask_utils.frPyObjects(seg, height, width)
            rle = mask_utils.merge(rles)
        elif isinstance(seg.get("counts"), list):  # uncompressed RLE
            rle = mask_utils.frPyObjects(seg, height, width)
        else:
            rle = seg
        return mask_utils.decode(rle).astype(bool)

    def _image_info(self, image_id: int) -> tuple[Path, int, int]:
        info = self.coco.imgs[image_id]
        return self.images / info["file_name"], int(info["height"]), int(info["width"])


class CocoDataset(_CocoBacked):
    """COCO-format instance annotations + image folder.

    Args:
        annotations: path to an instances JSON (e.g. ``instances_val2017.json``).
        images: folder holding the ``file_name`` of every image.
        all_categories: prompt every category for every image (counts false positives);
            default: only the categories present in the image.
        limit: evaluate only the first ``limit`` images (sorted by id).
    """

    kind = "coco"

    def __init__(
        self,
        annotations: str | os.PathLike,
        images: str | os.PathLike,
        *,
        all_categories: bool = False,
        limit: int | None = None,
    ) -> None:
        super().__init__(annotations, images)
        self.all_categories = bool(all_categories)
        self.limit = _check_limit(limit)
        if not self.coco.cats:
            raise InputError(f"annotations file {str(self.annotations)!r} has no categories")
        ids = sorted(self.coco.imgs)
        self._ids = ids[: self.limit] if self.limit else ids
        _check_missing_images([self._image_info(i)[0] for i in self._ids], self.images)

    def _sample(self, image_id: int) -> Sample:
        path, h, w = self._image_info(image_id)
        anns = self.coco.imgToAnns.get(image_id, [])
        present = sorted({a["category_id"] for a in anns})
        cat_ids = sorted(self.coco.cats) if self.all_categories else present
        prompts = []
        for cid in cat_ids:
            cat_anns = [a for a in anns if a["category_id"] == cid]
            mask = np.zeros((h, w), dtype=bool)
            for a in cat_anns:
                mask |= self._mask(a, h, w)
            boxes = _xywh_to_xyxy([a["bbox"] for a in cat_anns if not a.get("iscrowd", 0)])
            prompts.append(Prompt(self.coco.cats[cid]["name"], cid, mask, boxes))
        return Sample(image_id, path, h, w, prompts)

    def coco_gt(self) -> dict:
        return self.coco.dataset

    def describe(self) -> dict[str, Any]:
        return {
            "type": self.kind,
            "annotations": str(self.annotations),
            "images": str(self.images),
            "all_categories": self.all_categories,
            "limit": self.limit,
            "n_images": len(self),
        }


class _RefsUnpickler(pickle.Unpickler):
    """Unpickler for ``refs(unc).p`` that builds only plain containers and refuses any class."""

    def find_class(self, module: str, name: str):  # noqa: D401 - pickle API
        raise pickle.UnpicklingError(
            f"refs file references {module}.{name}; only plain lists/dicts/strings/numbers are "
            "accepted (convert it to JSON if it was written by other tools)"
        )


def load_refs(path: str | os.PathLike) -> list[dict]:
    """Read a RefCOCO refs file: the official ``refs(unc).p`` pickle or a JSON list.

    The pickle is read with an unpickler that refuses every class, so only plain data loads.
    Each ref needs ``image_id``, ``ann_id``, ``category_id``, ``split`` and ``sentences``
    (a list of ``{"sent": str}`` or of strings).
    """
    p = _check_file(path, "refs file")
    if p.suffix.lower() == ".json":
        refs = _load_json(p, "refs file")
    else:
        try:
            with open(p, "rb") as f:
                refs = _RefsUnpickler(f, encoding="latin1").load()
        except (pickle.UnpicklingError, EOFError, ValueError) as e:
            raise InputError(
                f"cannot read refs file {str(p)!r} as a pickle of plain data: {e}"
            ) from e
    if not isinstance(refs, list):
        raise InputError(
            f"refs file {str(p)!r} must hold a list of refs, got {type(refs).__name__}"
        )
    need = {"image_id", "ann_id", "category_id", "split", "sentences"}
    for i, ref in enumerate(refs):
        if not isinstance(ref, dict) or not need <= set(ref):
            got = sorted(ref) if isinstance(ref, dict) else type(ref).__name__
            raise InputError(
                f"ref #{i} in {str(p)!r} must be a dict with keys {sorted(need)}, got {got}"
            )
    return refs


def _sentence_text(sentence: Any) -> str:
    raw = sentence.get("sent", sentence.get("raw", "")) if isinstance(sentence, dict) else sentence
    if not isinstance(raw, str):
        raise InputError(f"referring sentence must be a string, got {raw!r}")
    # "." separates phrases in our prompts; a referring sentence is one phrase.
    return " ".join(raw.replace(".", " ").split())


class RefCocoDataset(_CocoBacked):
    """RefCOCO / RefCOCO+ / RefCOCOg referring expressions.

    Args:
        refs: ``refs(unc).p`` (or ``refs(umd).p``, or a JSON list with the same fields).
        annotations: the ``instances.json`` shipped with the refs (COCO train2014 masks).
        images: folder with the COCO train2014 images.
        split: which refs to evaluate (``val``, ``testA``, ``testB``, ``test``...).
        limit: evaluate only the first ``limit`` images (sorted by id).

    Each sentence is one prompt whose target is the single referred instance; the runner keeps
    only the highest-scoring detection per prompt (``single_target``).
    """

    kind = "refcoco"
    single_target = True

    def __init__(
        self,
        refs: str | os.PathLike,
        annotations: str | os.PathLike,
        images: str | os.PathLike,
        *,
        split: str = "val",
        limit: int | None = None,
    ) -> None:
        super().__init__(annotations, images)
        self.refs_path = Path(refs).expanduser()
        self.split = split
        self.limit = _check_limit(limit)
        refs_all = load_refs(self.refs_path)
        splits = sorted({str(r["split"]) for r in refs_all})
        self._refs: dict[int, list[dict]] = {}
        for r in refs_all:
            if r["split"] == split:
                self._refs.setdefault(int(r["image_id"]), []).append(r)
        if not self._refs:
            raise InputError(
                f"refs file {str(self.refs_path)!r} has no refs in split {split!r}; "
                f"its splits are {splits}"
            )
        missing = [i for i in self._refs if i not in self.coco.imgs]
        if missing:
            raise InputError(
                f"{len(missing)} referred image id(s) (e.g. {missing[0]}) are not in "
                f"{str(self.annotations)!r}; pass the instances.json that ships with the refs"
            )
        ids = sorted(self._refs)
        self._ids = ids[: self.limit] if self.limit else ids
        _check_missing_images([self._image_info(i)[0] for i in self._ids], self.images)

    def _sample(self, image_id: int) -> Sample:
        path, h, w = self._image_info(image_id)
        prompts = []
        for ref in sorted(self._refs[image_id], key=lambda r: r.get("ref_id", 0)):
            ann = self.coco.anns.get(int(ref["ann_id"]))
            if ann is None:
                raise InputError(
                    f"ref {ref.get('ref_id')} points at unknown annotation {ref['ann_id']}"
                )
            mask = self._mask(ann, h, w)
            box = _xywh_to_xyxy([ann["bbox"]])
            for sentence in ref["sentences"]:
                text = _sentence_text(sentence)
                if text:
                    prompts.append(
                        Prompt(text, int(ref["category_id"]), mask, box, ref_id=ref.get("ref_id"))
                    )
        return Sample(image_id, path, h, w, prompts)

    def describe(self) -> dict[str, Any]:
        return {
            "type": self.kind,
            "refs": str(self.refs_path),
            "annotations": str(self.annotations),
            "images": str(self.images),
            "split": self.split,
            "limit": self.limit,
            "n_images": len(self),
            "n_refs": sum(len(self._refs[i]) for i in self._ids),
        }


class MaskFolderDataset(EvalDataset):
    """A folder of images and a folder of binary masks with the same file stems, one prompt.

    ``masks/NAME.png`` (any image format; non-zero = foreground) is the ground truth of
    ``images/NAME.*`` for the text ``prompt``. Images are taken in sorted name order and
    numbered from 1. Each mask counts as one instance for mask AP.
    """

    kind = "folder"

    def __init__(
        self,
        images: str | os.PathLike,
        masks: str | os.PathLike,
        prompt: str,
        *,
        limit: int | None = None,
    ) -> None:
        super().__init__()
        self.images = _check_dir(images, "images folder")
        self.masks = _check_dir(masks, "masks folder")
        if not isinstance(prompt, str) or not prompt.strip():
            raise InputError(f"prompt must be a non-empty string like 'a cat', got {prompt!r}")
        self.prompt = prompt.strip()
        self.limit = _check_limit(limit)
        image_files = sorted(
            p for p in self.images.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
        )
        if not image_files:
            raise InputError(
                f"images folder {str(self.images)!r} holds no images ({IMAGE_SUFFIXES})"
            )
        mask_files = {
            p.stem: p
            for p in self.masks.iterdir()
            if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
        }
        unmatched = [p.name for p in image_files if p.stem not in mask_files]
        if unmatched:
            raise InputError(
                f"{len(unmatched)} image(s) have no mask with the same stem in "
                f"{str(self.masks)!r}, e.g. {unmatched[0]!r}"
            )
        if self.limit:
            image_files = image_files[: self.limit]
        self._files = {i + 1: (p, mask_files[p.stem]) for i, p in enumerate(image_files)}
        self._ids = list(self._files)
        self._sizes: dict[int, tuple[int, int]] = {}

    def _read_mask(self, image_id: int) -> np.ndarray:
        from PIL import Image

        with Image.open(self._files[image_id][1]) as m:
            arr = np.asarray(m)
        if arr.ndim == 3:
            arr = arr[..., :3].max(axis=2) if arr.shape[2] >= 3 else arr[..., 0]
        return arr > 0

    def _sample(self, image_id: int) -> Sample:
        mask = self._read_mask(image_id)
        h, w = mask.shape
        if mask.any():
            ys, xs = np.nonzero(mask)
            boxes = np.array([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], dtype=np.float32)
        else:
            boxes = np.zeros((0, 4), np.float32)
        return Sample(
            image_id, self._files[image_id][0], h, w, [Prompt(self.prompt, 1, mask, boxes)]
        )

    def coco_gt(self) -> dict:
        from pycocotools import mask as mask_utils

        images, anns = [], []
        for image_id in self._ids:
            mask = self._read_mask(image_id)
            h, w = mask.shape
            images.append(
                {
                    "id": image_id,
                    "file_name": self._files[image_id][0].name,
                    "height": h,
                    "width": w,
                }
            )
            if mask.any():
                rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
                area = float(mask_utils.area(rle))
                bbox = [float(v) for v in mask_utils.toBbox(rle)]
                rle["counts"] = rle["counts"].decode("ascii")
                anns.append(
                    {
                        "id": len(anns) + 1,
                        "image_id": image_id,
                        "category_id": 1,
                        "segmentation": rle,
                        "area": area,
                        "bbox": bbox,
                        "iscrowd": 0,
                    }
                )
        return {
            "images": images,
            "annotations": anns,
            "categories": [{"id": 1, "name": self.prompt}],
        }

    def describe(self) -> dict[str, Any]:
        return {
            "type": self.kind,
            "images": str(self.images),
            "masks": str(self.masks),
            "prompt": self.prompt,
            "limit": self.limit,
            "n_images": len(self),
        }


def build_dataset(spec: dict[str, Any], *, limit: int | None = None) -> EvalDataset:
    """Build a dataset from a config dict: ``{"type": "coco"|"refcoco"|"folder", ...paths}``.

    ``type`` may be omitted: ``refs`` implies ``refcoco``, ``masks`` implies ``folder``,
    otherwise ``coco``. ``limit`` overrides ``spec["limit"]``.
    """
    if not isinstance(spec, dict):
        raise InputError(f"dataset spec must be a mapping, got {type(spec).__name__}")
    spec = dict(spec)
    kind = spec.pop("type", None) or (
        "refcoco" if spec.get("refs") else "folder" if spec.get("masks") else "coco"
    )
    spec.pop("n_images", None)
    spec.pop("n_refs", None)
    lim = limit if limit is not None else spec.pop("limit", None)
    spec.pop("limit", None)
    required = {
        "coco": ("annotations", "images"),
        "refcoco": ("refs", "annotations", "images"),
        "folder": ("images", "masks", "prompt"),
    }
    optional = {"coco": ("all_categories",), "refcoco": ("split",), "folder": ()}
    if kind not in required:
        raise InputError(f"unknown dataset type {kind!r}; expected one of {sorted(required)}")
    missing = [k for k in required[kind] if spec.get(k) in (None, "")]
    if missing:
        raise InputError(f"{kind} dataset needs {', '.join(missing)} (got keys {sorted(spec)})")
    unknown = sorted(set(spec) - set(required[kind]) - set(optional[kind]))
    if unknown:
        raise InputError(
            f"unknown key(s) {unknown} for a {kind} dataset; expected "
            f"{list(required[kind]) + list(optional[kind])}"
        )
    if kind == "coco":
        return CocoDataset(
            spec["annotations"],
            spec["images"],
            all_categories=bool(spec.get("all_categories", False)),
            limit=lim,
        )
    if kind == "refcoco":
        return RefCocoDataset(
            spec["refs"],
            spec["annotations"],
            spec["images"],
            split=str(spec.get("split", "val")),
            limit=lim,
        )
    return MaskFolderDataset(spec["images"], spec["masks"], str(spec["prompt"]), limit=lim)
