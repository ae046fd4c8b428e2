"""COCO instance loading for fine-tuning: every bad input is one clear InputError."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from grounded_sam.errors import InputError
from grounded_sam.masks import encode_rle
from grounded_sam.train.data import load_instances


def _dataset(tmp_path, anns=None, images=None, categories=None):
    img_dir = tmp_path / "images"
    img_dir.mkdir(exist_ok=True)
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(img_dir / "a.png")
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(img_dir / "b.png")
    m = np.zeros((20, 30), bool)
    m[2:8, 3:12] = True
    rle = encode_rle(m)[0]
    data = {
        "images": images
        if images is not None
        else [
            {"id": 1, "file_name": "a.png", "height": 20, "width": 30},
            {"id": 2, "file_name": "b.png", "height": 20, "width": 30},
        ],
        "annotations": anns
        if anns is not None
        else [
            {"id": 10, "image_id": 1, "category_id": 1, "segmentation": rle, "iscrowd": 0},
            {
                "id": 11,
                "image_id": 2,
                "category_id": 1,
                "segmentation": [[3, 3, 12, 3, 12, 9, 3, 9]],
                "iscrowd": 0,
            },
            {"id": 12, "image_id": 2, "category_id": 1, "segmentation": rle, "iscrowd": 1},
        ],  # fmt: skip
        "categories": categories if categories is not None else [{"id": 1, "name": "thing"}],
    }
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(data))
    return path, img_dir, rle


def test_loads_rle_and_polygons_skips_crowd(tmp_path):
    path, img_dir, _ = _dataset(tmp_path)
    data = load_instances(path, img_dir)
    assert [i.ann_id for i in data.instances] == [10, 11]
    assert data.skipped_crowd == 1
    assert [im.image_id for im in data.images] == [1, 2]
    first = data.instances[0]
    assert first.mask().shape == (20, 30) and first.area == 54
    np.testing.assert_array_equal(first.box, [3, 2, 12, 8])  # tight XYXY, exclusive edges
    assert data.by_image == {0: [0], 1: [1]}
    assert data.describe()["instances"] == 2


def test_missing_image_file(tmp_path):
    path, img_dir, _ = _dataset(tmp_path)
    (img_dir / "b.png").unlink()
    with pytest.raises(InputError, match=r"1 annotated image\(s\) are missing .*b\.png"):
        load_instances(path, img_dir)


def test_annotation_for_unlisted_image(tmp_path):
    _, _, rle = _dataset(tmp_path)
    anns = [{"id": 5, "image_id": 99, "category_id": 1, "segmentation": rle}]
    path, img_dir, _ = _dataset(tmp_path, anns=anns)
    with pytest.raises(InputError, match=r"image ids not listed .*annotation ids 5"):
        load_instances(path, img_dir)


def test_empty_mask(tmp_path):
    empty = encode_rle(np.zeros((20, 30), bool))[0]
    anns = [{"id": 7, "image_id": 1, "category_id": 1, "segmentation": empty}]
    path, img_dir, _ = _dataset(tmp_path, anns=anns)
    with pytest.raises(InputError, match=r"empty mask \(ids 7\)"):
        load_instances(path, img_dir)


def test_category_absent(tmp_path):
    path, img_dir, _ = _dataset(tmp_path, categories=[{"id": 2, "name": "other"}])
    with pytest.raises(InputError, match=r"category id\(s\) 1 .* absent from 'categories'"):
        load_instances(path, img_dir)


def test_boxes_only_and_wrong_size(tmp_path):
    anns = [{"id": 3, "image_id": 1, "category_id": 1, "bbox": [0, 0, 5, 5]}]
    path, img_dir, _ = _dataset(tmp_path, anns=anns)
    with pytest.raises(InputError, match="no 'segmentation'.*not boxes alone"):
        load_instances(path, img_dir)
    images = [{"id": 1, "file_name": "a.png", "height": 21, "width": 30}]
    _, _, rle = _dataset(tmp_path)
    anns = [{"id": 3, "image_id": 1, "category_id": 1, "segmentation": [[1, 1, 5, 1, 5, 5]]}]
    path, img_dir, _ = _dataset(tmp_path, anns=anns, images=images)
    with pytest.raises(InputError, match="differ from their annotated size"):
        load_instances(path, img_dir)


def test_not_coco_and_nothing_to_train(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"images": []}))
    with pytest.raises(InputError, match="not COCO instances format"):
        load_instances(bad, tmp_path)
    bad.write_text("{not json")
    with pytest.raises(InputError, match="not valid JSON"):
        load_instances(bad, tmp_path)
    path, img_dir, rle = _dataset(tmp_path)
    crowd = [{"id": 1, "image_id": 1, "category_id": 1, "segmentation": rle, "iscrowd": 1}]
    path, img_dir, _ = _dataset(tmp_path, anns=crowd)
    with pytest.raises(InputError, match="no instance masks to train on"):
        load_instances(path, img_dir)
