"""Export a labelled dataset (``annotations.json``, COCO with RLE) to other formats, and read
them back (for round-trip checks and for tools that start from them).

- ``yolo-seg``: ``DIR/data.yaml`` (class names), ``DIR/labels/<file_name without extension>.txt``
  with one ``class x1 y1 x2 y2 ...`` line per instance (coordinates normalised by the image
  width and height, ``%g``), and ``DIR/images/<file_name>`` linked (or copied) to the source
  images so ``yolo train data=DIR/data.yaml`` runs as is. Every source image must be found
  (under ``image_roots``, then the folders recorded in ``label.json``), else nothing is
  written and :class:`~grounded_sam.errors.InputError` says which are missing;
  ``allow_missing_images=True`` exports the images found and leaves the others out (their
  labels too), listed in ``ExportSummary.missing_images``. A mask becomes a polygon exactly as
  ultralytics' own ``convert_coco`` does with RLE: its outer contours (OpenCV
  ``RETR_EXTERNAL``, ``CHAIN_APPROX_SIMPLE``: holes dropped), those of 3 points or more,
  several parts joined into one outline by ultralytics' ``merge_multi_segment`` (thin
  bridges at the closest points), a box-shaped outline when no contour is left. An image
  with no instance gets an empty file (YOLO's "background" image).
- ``coco-polygons``: ``DIR/annotations.json``, the same COCO document with each RLE replaced
  by polygons (one per outer contour, points at pixel centres: +0.5, as detectron2 does, so
  pycocotools rasterises them back onto the same pixels; specks of one or two pixels as
  their pixel squares); holes cannot be represented and are dropped; ``area`` and ``bbox``
  stay the mask's.
- ``masks``: ``DIR/masks/<file_name without extension>/<annotation id>_<class>.png``, 8-bit,
  255 inside, 0 outside: lossless. An image with no instance gets an empty folder.

``coco-polygons`` and ``masks`` are made from the annotations alone and need no image.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from grounded_sam.engine.dataset import find_image, read_annotations, read_manifest
from grounded_sam.errors import InputError, require

__all__ = [
    "FORMATS",
    "ExportSummary",
    "export_dataset",
    "mask_to_coco_polygons",
    "mask_to_yolo_polygon",
    "merge_multi_segment",
    "read_masks_dir",
    "read_yolo_labels",
    "yolo_polygon_to_mask",
]

FORMATS = ("yolo-seg", "coco-polygons", "masks")
IMAGE_MODES = ("link", "copy", "none")


def _cv2():
    return require("cv2", feature="polygon export", install="pip install opencv-python-headless")


def _stem(file_name: str) -> str:
    """``"sub/a.jpg"`` -> ``"sub/a"``: the file name without its extension."""
    head, _, tail = file_name.rpartition("/")
    base = os.path.splitext(tail)[0] or tail
    return f"{head}/{base}" if head else base


def _safe_rel(rel: str) -> Path:
    """A dataset-relative ``/`` path as a ``Path``, refusing anything that would leave the
    export folder (absolute, ``..``)."""
    parts = rel.split("/")
    if rel.startswith("/") or any(p in ("", ".", "..") for p in parts) or ":" in parts[0]:
        raise InputError(
            f"file_name {rel!r} is not a relative path inside the dataset; cannot export it"
        )
    return Path(*parts)


# --------------------------------------------------------------------------- polygons
def _min_index(a: np.ndarray, b: np.ndarray) -> tuple[int, int]:
    """Indices of the closest pair of points between (N, 2) ``a`` and (M, 2) ``b``."""
    d = ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)
    i, j = np.unravel_index(np.argmin(d, axis=None), d.shape)
    return int(i), int(j)


def merge_multi_segment(segments: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Join several outlines into one by thin bridges at their closest points.

    The algorithm of ultralytics' ``data.converter.merge_multi_segment`` (used by its
    ``convert_coco`` and ``masks2segments``): consecutive outlines are linked at their closest
    points; a forward pass walks each outline from its entry point, a backward pass returns
    along the rest, so concatenating the pieces traces every outline once with each bridge
    drawn twice (zero width).

    Args:
        segments: outlines as (K_i, 2) arrays of xy.
    Returns:
        pieces to concatenate (in order) into the single outline.
    """
    segs = [np.asarray(s, dtype=np.float64).reshape(-1, 2) for s in segments]
    links: list[list[int]] = [[] for _ in segs]
    for i in range(1, len(segs)):
        a, b = _min_index(segs[i - 1], segs[i])
        links[i - 1].append(a)
        links[i].append(b)
    out: list[np.ndarray] = []
    last = len(links) - 1
    for i, idx in enumerate(links):  # forward
        if len(idx) == 2 and idx[0] > idx[1]:
            idx = [len(segs[i]) - 1 - x for x in idx]
            segs[i] = segs[i][::-1, :]
        segs[i] = np.roll(segs[i], -idx[0], axis=0)
        segs[i] = np.concatenate([segs[i], segs[i][:1]])
        if i in (0, last):
            out.append(segs[i])
        else:
            out.append(segs[i][: idx[1] - idx[0] + 1])
    for i in range(last, -1, -1):  # backward
        if i not in (0, last):
            idx = links[i]
            out.append(segs[i][abs(idx[1] - idx[0]) :])
    return out


def _contours(mask: np.ndarray) -> list[np.ndarray]:
    cv2 = _cv2()
    m = np.ascontiguousarray(mask, dtype=np.uint8)
    found = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)[0]
    return [c.reshape(-1, 2).astype(np.float64) for c in found]


def _box_outline(mask: np.ndarray) -> np.ndarray:
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if not rows.size:
        return np.zeros((0, 2))
    x0, x1, y0, y1 = cols[0], cols[-1] + 1, rows[0], rows[-1] + 1
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], dtype=np.float64)


def mask_to_yolo_polygon(mask: np.ndarray) -> np.ndarray:
    """(H, W) bool mask -> one (K, 2) outline in pixels, as ultralytics' ``convert_coco``
    makes from an RLE (see the module docstring); (0, 2) for an empty mask."""
    polys = [c for c in _contours(mask) if len(c) >= 3]
    if not polys:
        return _box_outline(np.asarray(mask, dtype=bool))
    if len(polys) == 1:
        return polys[0]
    return np.concatenate(merge_multi_segment(polys), axis=0)


def mask_to_coco_polygons(mask: np.ndarray) -> list[list[float]]:
    """(H, W) bool mask -> COCO polygons ``[[x1, y1, x2, y2, ...], ...]``: one per outer
    contour, through pixel centres (+0.5, which pycocotools rasterises back onto the same
    pixels); a contour of one or two pixels becomes the square of pixel edges around them
    (kept, not dropped); holes are dropped; ``[]`` for an empty mask."""
    out = []
    for c in _contours(mask):
        if len(c) >= 3:
            out.append((c + 0.5).ravel().tolist())
        else:
            (x0, y0), (x1, y1) = c.min(0), c.max(0) + 1
            out.append([x0, y0, x1, y0, x1, y1, x0, y1])
    return out


def yolo_polygon_to_mask(xy_normalised: np.ndarray, height: int, width: int) -> np.ndarray:
    """A normalised YOLO outline (K, 2) -> (H, W) bool mask, filled as ultralytics'
    ``polygon2mask`` does (OpenCV ``fillPoly``; coordinates rounded to pixels)."""
    cv2 = _cv2()
    pts = np.asarray(xy_normalised, dtype=np.float64).reshape(-1, 2) * np.array([width, height])
    out = np.zeros((height, width), dtype=np.uint8)
    if len(pts):
        cv2.fillPoly(out, [np.round(pts).astype(np.int32)], 1)
    return out.astype(bool)


def read_yolo_labels(
    path: str | os.PathLike, height: int, width: int
) -> list[tuple[int, np.ndarray]]:
    """A YOLO segmentation label file -> ``[(class index, (H, W) bool mask), ...]``."""
    out = []
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        values = line.split()
        if len(values) < 7 or len(values) % 2 == 0:
            raise InputError(f"{path}:{n}: expected 'class x1 y1 x2 y2 x3 y3 ...', got {line!r}")
        xy = np.asarray([float(v) for v in values[1:]]).reshape(-1, 2)
        out.append((int(values[0]), yolo_polygon_to_mask(xy, height, width)))
    return out


def read_masks_dir(folder: str | os.PathLike) -> dict[int, tuple[str, np.ndarray]]:
    """One image's ``masks/<stem>/`` folder -> ``{annotation id: (class, (H, W) bool)}``."""
    from PIL import Image

    out = {}
    for p in sorted(Path(folder).glob("*.png")):
        m = re.fullmatch(r"(\d+)_(.*)\.png", p.name)
        if m is None:
            continue
        out[int(m.group(1))] = (m.group(2), np.asarray(Image.open(p)) > 127)
    return out


# --------------------------------------------------------------------------- export
@dataclass
class ExportSummary:
    """What :func:`export_dataset` wrote.

    Attributes:
        images: images exported (label files, mask folders or COCO images).
        instances: instances exported.
        linked_images: yolo-seg: images linked or copied into ``images/``.
        missing_images: yolo-seg with ``allow_missing_images``: the ``file_name`` of each
            image left out because its source was not found.
        total_images: images in the dataset.
        image_mode: yolo-seg: ``"link"``, ``"copy"`` or ``"none"`` (labels only).
    """

    format: str
    out: Path
    images: int = 0
    instances: int = 0
    linked_images: int = 0
    missing_images: list[str] = field(default_factory=list)
    total_images: int = 0
    image_mode: str = "link"

    def lines(self) -> list[str]:
        """The summary for people (stdout)."""
        out = [
            f"exported {self.images} images, {self.instances} instances as {self.format} -> {self.out}"
        ]
        if self.format == "yolo-seg":
            data = self.out / "data.yaml"
            if self.image_mode == "none":
                out.append(
                    f"labels only: put the images in {self.out / 'images'} (the dataset's "
                    f"file_names), then train with: yolo segment train data={data}"
                )
            else:
                out.append(f"train with: yolo segment train data={data}")
        return out

    def warnings(self) -> list[str]:
        """What was left out (stderr)."""
        if not self.missing_images:
            return []
        return [
            f"{len(self.missing_images)} of {self.total_images} images were left out: their "
            f"source images were not found ({_some(self.missing_images)}); give their folder "
            "with --images DIR to export them too"
        ]


def _some(names: Sequence[str], shown: int = 3) -> str:
    """``'a.jpg', 'b.jpg', 'c.jpg' and 7 more``."""
    text = ", ".join(repr(n) for n in names[:shown])
    return text + (f" and {len(names) - shown} more" if len(names) > shown else "")


def _decode(ann: dict[str, Any], h: int, w: int) -> np.ndarray:
    from grounded_sam.masks import decode_rle

    return decode_rle(ann["segmentation"], h, w)


def _by_image(coco: dict[str, Any]) -> dict[Any, list[dict]]:
    anns: dict[Any, list[dict]] = {img["id"]: [] for img in coco["images"]}
    for a in coco["annotations"]:
        anns.setdefault(a["image_id"], []).append(a)
    return anns


def export_dataset(
    dataset: str | os.PathLike,
    fmt: str,
    out: str | os.PathLike,
    *,
    images: str = "link",
    image_roots: Sequence[str | os.PathLike] = (),
    final_path: str | os.PathLike | None = None,
    allow_missing_images: bool = False,
) -> ExportSummary:
    """Write ``dataset``'s ``annotations.json`` into ``out`` (an existing folder, best empty)
    in format ``fmt`` (see the module docstring).

    Args:
        dataset: the dataset folder (or a COCO file).
        fmt: ``"yolo-seg"``, ``"coco-polygons"`` or ``"masks"``.
        out: the folder to write into.
        images: yolo-seg only: ``"link"`` (symlinks to the sources), ``"copy"`` or ``"none"``.
        image_roots: folders to find the source images in (before the manifest's sources).
        final_path: where ``out`` will finally live, when it is written in a temporary
            folder first (``data.yaml`` records it); default ``out``.
        allow_missing_images: yolo-seg: export the images whose source is found and leave
            the others out, instead of refusing.

    Raises:
        InputError: yolo-seg (``images`` not ``"none"``): source images not found (checked
            before anything is written), unless ``allow_missing_images`` and at least one
            is found.
    """
    if fmt not in FORMATS:
        raise InputError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if images not in IMAGE_MODES:
        raise InputError(f"images must be one of {', '.join(IMAGE_MODES)}, got {images!r}")
    src = Path(dataset)
    coco = read_annotations(src)
    root = src if src.is_dir() else src.parent
    out = Path(out)
    summary = ExportSummary(fmt, out, total_images=len(coco["images"]), image_mode=images)
    by_image = _by_image(coco)
    cats = sorted(coco["categories"], key=lambda c: c["id"])
    if fmt == "yolo-seg":
        final = Path(final_path) if final_path is not None else out
        sources = (
            {}
            if images == "none"
            else _find_sources(coco, root, image_roots, allow_missing_images, summary)
        )
        _export_yolo(coco, cats, by_image, out, final, images, sources, summary)
    elif fmt == "coco-polygons":
        _export_polygons(coco, by_image, out, summary)
    else:
        _export_masks(coco, cats, by_image, out, summary)
    return summary


def _find_sources(coco, root, image_roots, allow_missing, summary) -> dict[Any, Path]:
    """Image id -> its source file, every one found before anything is written (a training
    set with images missing is refused, not exported half)."""
    found: dict[Any, Path] = {}
    missing: list[str] = []
    for img in coco["images"]:
        _safe_rel(img["file_name"])
        source = find_image(root, img["file_name"], image_roots)
        if source is None:
            missing.append(img["file_name"])
        else:
            found[img["id"]] = source
    if not missing:
        return found
    if found and allow_missing:
        summary.missing_images = missing
        return found
    looked = [str(Path(r)) for r in image_roots] + [
        str(src["path"]) for src in (read_manifest(root) or {}).get("sources", [])
    ]
    where = (
        f"looked in {_some(list(dict.fromkeys(looked)), 4)}"
        if looked
        else "the dataset records no image folder (no label.json sources) and no --images was given"
    )
    total = len(coco["images"])
    fix = "give the folder that holds them with --images DIR (repeatable)"
    if found:
        fix += f", or --allow-missing-images to export the {len(found)} found"
    raise InputError(
        f"{len(missing)} of {total} source images were not found ({_some(missing)}); {where}: "
        f"{fix}, or --no-images to write the labels only"
    )


def _export_yolo(coco, cats, by_image, out, final, images, sources, summary) -> None:
    import yaml

    index = {c["id"]: i for i, c in enumerate(cats)}  # YOLO classes are 0..K-1
    (out / "labels").mkdir(parents=True, exist_ok=True)
    for img in coco["images"]:
        if images != "none" and img["id"] not in sources:
            continue  # left out (allow_missing_images): neither label nor image
        h, w = int(img["height"]), int(img["width"])
        rel = _safe_rel(img["file_name"])
        lines = []
        for ann in by_image.get(img["id"], []):
            if ann.get("iscrowd"):
                continue
            poly = mask_to_yolo_polygon(_decode(ann, h, w))
            if not len(poly):
                continue
            xy = (poly / np.array([w, h])).ravel()
            lines.append(" ".join([f"{index[ann['category_id']]}", *(f"{v:g}" for v in xy)]))
            summary.instances += 1
        label = out / "labels" / _safe_rel(_stem(img["file_name"]) + ".txt")
        label.parent.mkdir(parents=True, exist_ok=True)
        label.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
        summary.images += 1
        if images == "none":
            continue
        source = sources[img["id"]]
        dest = out / "images" / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        if images == "copy":
            shutil.copy2(source, dest)
        else:
            os.symlink(source.resolve(), dest)
        summary.linked_images += 1
    data = {
        "path": str(final.resolve()),
        "train": "images",
        "val": "images",
        "names": {i: c["name"] for i, c in enumerate(cats)},
    }
    (out / "data.yaml").write_text(
        "# written by grounded-sam export; train and val are the same images: split them "
        "before real training\n" + yaml.safe_dump(data, sort_keys=False, allow_unicode=True),
        encoding="utf-8",
    )


def _export_polygons(coco, by_image, out, summary) -> None:
    from grounded_sam.engine.dataset import dump_coco

    sizes = {img["id"]: (int(img["height"]), int(img["width"])) for img in coco["images"]}

    def annotations():
        for img in coco["images"]:
            h, w = sizes[img["id"]]
            for ann in by_image.get(img["id"], []):
                rec = dict(ann)
                if isinstance(ann.get("segmentation"), dict):
                    rec["segmentation"] = mask_to_coco_polygons(_decode(ann, h, w))
                summary.instances += 1
                yield rec

    out.mkdir(parents=True, exist_ok=True)
    with open(out / "annotations.json", "w", encoding="utf-8") as f:
        summary.images, _ = dump_coco(f, coco["images"], annotations(), coco["categories"])


def _export_masks(coco, cats, by_image, out, summary) -> None:
    from PIL import Image

    from grounded_sam.export import safe_name

    names = {c["id"]: safe_name(c["name"]) for c in cats}
    for img in coco["images"]:
        h, w = int(img["height"]), int(img["width"])
        folder = out / "masks" / _safe_rel(_stem(img["file_name"]))
        folder.mkdir(parents=True, exist_ok=True)
        for ann in by_image.get(img["id"], []):
            mask = _decode(ann, h, w)
            Image.fromarray(mask.astype(np.uint8) * 255).save(
                folder / f"{ann['id']}_{names.get(ann['category_id'], 'object')}.png"
            )
            summary.instances += 1
        summary.images += 1
    (out / "categories.json").write_text(
        json.dumps(
            [{"id": c["id"], "name": c["name"], "file_name_part": names[c["id"]]} for c in cats],
            indent=1,
        )
        + "\n",
        encoding="utf-8",
    )
