"""Fine-tuning data: one ground-truth mask per COCO instance, checked before anything runs.

:func:`load_instances` reads COCO instances (``annotations.json`` as ``grounded-sam label``
writes it, or any COCO file with polygon / RLE segmentations) and checks everything that
would otherwise fail half-way through a run, naming each problem and its fix:

- not COCO instances (no ``images`` / ``annotations`` / ``categories``), invalid JSON;
- annotations referring to an image id that the file does not list, or to a
  ``category_id`` absent from ``categories``;
- images missing from the image folder, or whose size differs from the annotated one;
- annotations without a segmentation, with an unreadable one, or with an empty mask;
- no usable annotation at all.

Crowd annotations (``iscrowd: 1``) describe groups, not instances: they are skipped and
counted. Masks are kept as compressed RLE and decoded when used.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from grounded_sam.errors import InputError

__all__ = ["Instance", "InstanceSet", "load_instances"]


@dataclass(frozen=True)
class Instance:
    """One ground-truth object.

    Attributes:
        image: index into :attr:`InstanceSet.images`.
        ann_id: the COCO annotation id.
        category_id: its COCO category id.
        rle: pycocotools compressed RLE (``counts`` as bytes) of the (H, W) mask.
        box: (4,) float32 XYXY tight box of the mask in original-image pixels (exclusive
            right / bottom edges), computed from the mask, not read from ``bbox``.
        area: mask pixels.
    """

    image: int
    ann_id: int
    category_id: int
    rle: dict
    box: np.ndarray
    area: int

    def mask(self) -> np.ndarray:
        """(H, W) bool mask at the original image size."""
        from pycocotools import mask as mask_utils

        return mask_utils.decode(self.rle).astype(bool)


@dataclass(frozen=True)
class ImageInfo:
    """An annotated image: COCO ``id``, file ``path``, annotated ``height`` and ``width``."""

    image_id: int
    path: Path
    height: int
    width: int


@dataclass
class InstanceSet:
    """The images and instances of one COCO file (images without instances left out).

    Attributes:
        annotations: the JSON file read.
        images: :class:`ImageInfo` per image that has at least one instance, in id order.
        instances: :class:`Instance` per usable annotation, in (image, annotation id) order.
        categories: COCO category id -> name.
        skipped_crowd: crowd annotations skipped.
    """

    annotations: Path
    images: list[ImageInfo]
    instances: list[Instance]
    categories: dict[int, str]
    skipped_crowd: int = 0
    by_image: dict[int, list[int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.by_image = {}
        for i, inst in enumerate(self.instances):
            self.by_image.setdefault(inst.image, []).append(i)

    def describe(self) -> dict[str, Any]:
        """JSON-able summary for ``metrics.json`` / the report."""
        return {
            "annotations": str(self.annotations),
            "images": len(self.images),
            "instances": len(self.instances),
            "categories": len({i.category_id for i in self.instances}),
            "skipped_crowd": self.skipped_crowd,
        }


def _first(items: list, n: int = 5) -> str:
    shown = ", ".join(str(x) for x in items[:n])
    return shown + (f" and {len(items) - n} more" if len(items) > n else "")


def _image_size(path: Path) -> tuple[int, int] | None:
    """(H, W) of an image file as :func:`grounded_sam.load_image` will see it (EXIF
    orientation applied), reading only its header; ``None`` when it cannot be read."""
    from PIL import UnidentifiedImageError

    from grounded_sam.io import _pil_open

    try:
        with _pil_open(path) as im:
            orientation = im.getexif().get(0x0112, 1) if hasattr(im, "getexif") else 1
            w, h = im.size
    except (OSError, UnidentifiedImageError, ValueError):
        return None
    return (w, h) if orientation in (5, 6, 7, 8) else (h, w)


def _to_rle(seg: Any, h: int, w: int) -> dict:
    from pycocotools import mask as mask_utils

    if isinstance(seg, list):
        polys = [p for p in seg if isinstance(p, list) and len(p) >= 6]
        if not polys:
            raise ValueError("no polygon with 3 or more points")
        return mask_utils.merge(mask_utils.frPyObjects(polys, h, w))
    if isinstance(seg, dict) and "counts" in seg and "size" in seg:
        if [int(v) for v in seg["size"]] != [h, w]:
            raise ValueError(f"RLE size {list(seg['size'])} differs from the image's {[h, w]}")
        if isinstance(seg["counts"], list):
            return mask_utils.frPyObjects(seg, h, w)
        counts = seg["counts"]
        return {
            "size": [h, w],
            "counts": counts.encode("ascii") if isinstance(counts, str) else counts,
        }
    raise ValueError(f"unsupported segmentation of type {type(seg).__name__}")


def load_instances(
    annotations: str | os.PathLike,
    images: str | os.PathLike,
    *,
    what: str = "--annotations",
    limit: int | None = None,
) -> InstanceSet:
    """Read and check a COCO instances file; see the module docstring for the checks.

    Args:
        annotations: COCO instances JSON.
        images: folder holding every annotated ``file_name``.
        what: how the file is named in error messages (the CLI flag).
        limit: keep only the first ``limit`` images (by id) that have instances.

    Raises:
        InputError: naming the file, the offending ids / files (the first five) and the fix.
    """
    ann_path = Path(annotations).expanduser()
    img_dir = Path(images).expanduser()
    if not ann_path.is_file():
        raise InputError(f"{what} {str(ann_path)!r} does not exist or is not a file")
    if not img_dir.is_dir():
        raise InputError(f"images folder {str(img_dir)!r} does not exist or is not a folder")
    try:
        data = json.loads(ann_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{what} {str(ann_path)!r} is not valid JSON: {e}") from e
    if not isinstance(data, dict) or not {"images", "annotations", "categories"} <= set(data):
        keys = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise InputError(
            f"{what} {str(ann_path)!r} is not COCO instances format: expected a JSON object "
            f"with 'images', 'annotations' and 'categories', got {keys}"
        )
    src = f"{what} {str(ann_path)!r}"
    try:
        infos = {int(im["id"]): im for im in data["images"]}
        categories = {int(c["id"]): str(c.get("name", c["id"])) for c in data["categories"]}
        anns = sorted(data["annotations"], key=lambda a: (int(a["image_id"]), int(a["id"])))
    except (KeyError, TypeError, ValueError) as e:
        raise InputError(
            f"{src}: every image, annotation and category needs an integer 'id' "
            f"(annotations also 'image_id'): {type(e).__name__}: {e}"
        ) from e
    no_image = [a["id"] for a in anns if int(a["image_id"]) not in infos]
    if no_image:
        raise InputError(
            f"{src}: {len(no_image)} annotation(s) refer to image ids not listed in 'images' "
            f"(annotation ids {_first(no_image)}); add those images or drop the annotations"
        )
    no_cat = sorted({int(a.get("category_id", -1)) for a in anns} - set(categories))
    if no_cat:
        bad = [a["id"] for a in anns if int(a.get("category_id", -1)) in no_cat]
        raise InputError(
            f"{src}: category id(s) {_first(no_cat)} used by {len(bad)} annotation(s) "
            f"(ids {_first(bad)}) are absent from 'categories' "
            f"(which has {_first(sorted(categories)) or 'none'}); add them to 'categories'"
        )
    used = sorted({int(a["image_id"]) for a in anns if not a.get("iscrowd", 0)})
    if limit is not None:
        used = used[:limit]
    keep = set(used)
    # images: present, readable, of the annotated size
    image_list: list[ImageInfo] = []
    missing, unreadable, wrong_size = [], [], []
    for image_id in used:
        im = infos[image_id]
        try:
            h, w = int(im["height"]), int(im["width"])
            path = img_dir / str(im["file_name"])
        except (KeyError, TypeError, ValueError) as e:
            raise InputError(
                f"{src}: image {image_id} needs 'file_name', 'height' and 'width' ({e})"
            ) from e
        if not path.is_file():
            missing.append(str(im["file_name"]))
            continue
        size = _image_size(path)
        if size is None:
            unreadable.append(str(im["file_name"]))
        elif size != (h, w):
            wrong_size.append(f"{im['file_name']} is {size[0]}x{size[1]}, annotated {h}x{w}")
        image_list.append(ImageInfo(image_id, path, h, w))
    if missing:
        raise InputError(
            f"{src}: {len(missing)} annotated image(s) are missing from {str(img_dir)!r}: "
            f"{_first(missing)}; point --images at the folder holding them"
        )
    if unreadable:
        raise InputError(
            f"{src}: {len(unreadable)} image(s) in {str(img_dir)!r} cannot be read as images: "
            f"{_first(unreadable)}"
        )
    if wrong_size:
        raise InputError(
            f"{src}: {len(wrong_size)} image(s) differ from their annotated size (H x W): "
            f"{_first(wrong_size, 3)}; the annotations belong to other images"
        )
    index = {info.image_id: i for i, info in enumerate(image_list)}
    # masks
    from pycocotools import mask as mask_utils

    instances: list[Instance] = []
    no_seg, bad_seg, empty = [], [], []
    crowd = 0
    for a in anns:
        image_id = int(a["image_id"])
        if a.get("iscrowd", 0):
            crowd += 1
            continue
        if image_id not in keep:
            continue
        info = image_list[index[image_id]]
        seg = a.get("segmentation")
        if not seg:
            no_seg.append(a["id"])
            continue
        try:
            rle = _to_rle(seg, info.height, info.width)
        except (ValueError, TypeError, KeyError) as e:
            bad_seg.append(f"{a['id']} ({e})")
            continue
        area = int(mask_utils.area(rle))
        if area == 0:
            empty.append(a["id"])
            continue
        x, y, bw, bh = (float(v) for v in mask_utils.toBbox(rle))
        box = np.array([x, y, x + bw, y + bh], dtype=np.float32)
        instances.append(
            Instance(index[image_id], int(a["id"]), int(a["category_id"]), rle, box, area)
        )
    if no_seg:
        raise InputError(
            f"{src}: {len(no_seg)} annotation(s) have no 'segmentation' (ids {_first(no_seg)}); "
            "fine-tuning needs masks (polygons or RLE), not boxes alone"
        )
    if bad_seg:
        raise InputError(
            f"{src}: {len(bad_seg)} segmentation(s) cannot be read: {_first(bad_seg, 3)}"
        )
    if empty:
        raise InputError(
            f"{src}: {len(empty)} annotation(s) have an empty mask (ids {_first(empty)}); "
            "remove them or redraw their masks"
        )
    if not instances:
        raise InputError(
            f"{src} holds no instance masks to train on"
            + (f" ({crowd} crowd annotations are skipped)" if crowd else "")
        )
    return InstanceSet(ann_path, image_list, instances, categories, skipped_crowd=crowd)
