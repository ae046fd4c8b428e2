"""Eval test helpers: a small COCO-format set built from real photos, SAM/detector stand-ins."""

from __future__ import annotations

import hashlib
import json
import types
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from grounded_sam.detectors import Detections, normalize_phrases
from grounded_sam.eval.oracle import GtBoxesDetector
from grounded_sam.predictor import SamPredictor

CATEGORIES = [
    {"id": 1, "name": "cat"},
    {"id": 2, "name": "person"},
    {"id": 3, "name": "cup"},
    {"id": 4, "name": "dog"},  # in no image: only prompted with all_categories
]

# (skimage photo, (H, W), [(category_id, polygon [x0, y0, x1, y1, ...]), ...])
IMAGES = [
    ("chelsea", (60, 90), [(1, [20, 10, 70, 8, 80, 50, 45, 58, 15, 40])]),
    (
        "astronaut",
        (64, 64),
        [(2, [16, 6, 44, 6, 56, 63, 8, 63]), (3, [2, 2, 12, 2, 12, 14, 2, 14])],
    ),
    (
        "coffee",
        (48, 72),
        [(3, [10, 8, 34, 8, 34, 40, 10, 40]), (3, [44, 20, 66, 14, 62, 44, 46, 42])],
    ),
]


def _photo(name: str, size: tuple[int, int]) -> np.ndarray:
    import skimage.data

    img = Image.fromarray(getattr(skimage.data, name)())
    return np.asarray(img.resize((size[1], size[0]), Image.BILINEAR))


def make_coco(root: Path) -> dict:
    """Write ``root/images/*.png`` and ``root/instances.json``; return paths and GT data."""
    img_dir = root / "images"
    img_dir.mkdir(parents=True, exist_ok=True)
    images, anns = [], []
    for i, (name, (h, w), polys) in enumerate(IMAGES, start=1):
        Image.fromarray(_photo(name, (h, w))).save(img_dir / f"{name}.png")
        images.append({"id": i, "file_name": f"{name}.png", "height": h, "width": w})
        for cid, poly in polys:
            rle = mask_utils.merge(mask_utils.frPyObjects([poly], h, w))
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": i,
                    "category_id": cid,
                    "segmentation": [[float(v) for v in poly]],
                    "area": float(mask_utils.area(rle)),
                    "bbox": [float(v) for v in mask_utils.toBbox(rle)],
                    "iscrowd": 0,
                }
            )
    data = {"images": images, "annotations": anns, "categories": CATEGORIES}
    ann_path = root / "instances.json"
    ann_path.write_text(json.dumps(data))
    return {"annotations": ann_path, "images": img_dir, "data": data}


def _key(image: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(image).tobytes()).hexdigest()


class PerfectPredictor(SamPredictor):
    """A SamPredictor stand-in: a box equal to a GT box gets that instance's GT mask.

    Any other box gets its filled rectangle, so non-oracle boxes give imperfect masks.
    The predicted IoU score is 0.9 for GT boxes and 0.5 otherwise.
    """

    def __init__(self, coco: dict) -> None:  # no Sam: nothing to run
        self.model = types.SimpleNamespace(device=torch.device("cpu"), to=lambda *a, **k: None)
        self._by_image: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
        data = coco["data"]
        for info in data["images"]:
            img = np.asarray(Image.open(coco["images"] / info["file_name"]).convert("RGB"))
            items = []
            for a in data["annotations"]:
                if a["image_id"] == info["id"]:
                    h, w = info["height"], info["width"]
                    m = mask_utils.decode(
                        mask_utils.merge(mask_utils.frPyObjects(a["segmentation"], h, w))
                    )
                    x, y, bw, bh = a["bbox"]
                    items.append((np.array([x, y, x + bw, y + bh], np.float32), m.astype(bool)))
            self._by_image[_key(img)] = items
        self._current: str | None = None
        self.original_size = None
        self.set_image_calls = 0

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def set_image(self, image, image_format: str = "RGB") -> None:
        self._current = _key(np.asarray(image))
        self.original_size = tuple(np.asarray(image).shape[:2])
        self.set_image_calls += 1

    def get_embedding(self):
        return (self._current, self.original_size)

    def embed(self, images, batch_size: int = 4):
        self.set_image_calls += len(images)
        return [(_key(np.asarray(im)), tuple(np.asarray(im).shape[:2])) for im in images]

    def set_embedding(self, embedding) -> None:
        self._current, self.original_size = embedding

    def predict_boxes(self, boxes, multimask_output=False, return_logits=False):
        boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
        h, w = self.original_size
        masks = np.zeros((len(boxes), 1, h, w), bool)
        scores = np.full((len(boxes), 1), 0.5, np.float32)
        for i, b in enumerate(boxes):
            for gt_box, gt_mask in self._by_image[self._current]:
                if np.allclose(b, gt_box, atol=1e-3):
                    masks[i, 0], scores[i, 0] = gt_mask, 0.9
                    break
            else:
                x0, y0, x1, y1 = (int(round(v)) for v in b)
                masks[i, 0, y0:y1, x0:x1] = True
        return masks, scores


class EmptyDetector:
    """Finds nothing."""

    def detect(self, image, text) -> Detections:
        normalize_phrases(text)
        return Detections.empty()


class NoisyOracle(GtBoxesDetector):
    """GT boxes shifted by 3 px plus one false positive, with decreasing scores."""

    def detect(self, image, text) -> Detections:
        gt = super().detect(image, text)
        h, w = np.asarray(image).shape[:2]
        boxes = np.concatenate([gt.boxes + 3.0, [[0, 0, w / 3, h / 3]]]).astype(np.float32)
        boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, w)
        boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, h)
        n = len(boxes)
        scores = np.linspace(0.9, 0.3, n).astype(np.float32)
        return Detections(boxes=boxes, scores=scores, labels=[normalize_phrases(text)[0]] * n)


class InterruptAfter:
    """Wraps a pipeline; raises KeyboardInterrupt on the first segment() of image ``n + 1``."""

    def __init__(self, pipeline, n_images: int) -> None:
        self.pipeline = pipeline
        self.n_images = n_images
        self._seen: list[str] = []

    @property
    def device(self):
        return self.pipeline.device

    def segment(self, image, text, **kw):
        key = _key(np.asarray(image))
        if key not in self._seen:
            self._seen.append(key)
        if len(self._seen) > self.n_images:
            raise KeyboardInterrupt
        return self.pipeline.segment(image, text, **kw)
