"""Metric conventions: IoU of empty masks, cIoU, COCO AP edge cases, latency statistics."""

from __future__ import annotations

import numpy as np
import pytest

from grounded_sam.eval.metrics import (
    ciou,
    coco_mask_ap,
    encode_mask,
    intersection_union,
    latency_summary,
    miou,
    pair_iou,
)

# pycocotools' Cython RLE objects trip a numpy 2 DeprecationWarning on every decode
pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"
)


def test_iou_conventions():
    gt = np.zeros((4, 5), bool)
    gt[1:3, 1:4] = True  # 6 px
    empty = np.zeros_like(gt)
    assert pair_iou(*intersection_union(empty, gt)) == 0.0  # empty prediction scores 0
    assert pair_iou(*intersection_union(empty, empty)) == 1.0  # empty GT + empty prediction
    assert pair_iou(*intersection_union(gt, empty)) == 0.0  # prediction on empty GT
    half = np.zeros_like(gt)
    half[1:3, 1:2] = True  # 2 of the 6 px
    assert intersection_union(half, gt) == (2, 6)
    assert miou([(2, 6), (0, 0)]) == pytest.approx((1 / 3 + 1) / 2)
    assert ciou([(2, 6), (3, 4)]) == pytest.approx(5 / 10)
    assert miou([]) is None and ciou([]) is None
    with pytest.raises(ValueError, match="shape"):
        intersection_union(gt, gt[:2])


def _gt():
    m = np.zeros((20, 30), bool)
    m[5:15, 5:20] = True
    rle, bbox, area = encode_mask(m)
    gt = {
        "images": [{"id": 1, "height": 20, "width": 30}, {"id": 2, "height": 20, "width": 30}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "segmentation": rle,
                         "bbox": bbox, "area": area, "iscrowd": 0}],
        "categories": [{"id": 1, "name": "box"}],
    }  # fmt: skip
    return gt, m


def test_coco_mask_ap_edge_cases():
    gt, m = _gt()
    rle, bbox, area = encode_mask(m)
    assert bbox == [5.0, 5.0, 15.0, 10.0] and area == 150.0
    ap, _ = coco_mask_ap(gt, [], [1, 2])
    assert ap["mask_AP"] == 0.0 and ap["mask_AP_large"] == 0.0
    ap, _ = coco_mask_ap(gt, [], [2])  # no GT in the evaluated images
    assert ap["mask_AP"] is None
    pred = {"image_id": 1, "category_id": 1, "segmentation": rle, "score": 0.8}
    ap, summary = coco_mask_ap(gt, [pred], [1, 2])
    assert ap["mask_AP"] == pytest.approx(1.0)
    assert ap["mask_AP_large"] is None  # no large objects: COCOeval's -1 becomes None
    assert "Average Precision" in summary
    # predictions on images outside the evaluated ids are ignored
    ap, _ = coco_mask_ap(gt, [dict(pred, image_id=2)], [1])
    assert ap["mask_AP"] == 0.0


def test_latency_summary_in_ms():
    s = latency_summary({"total": [0.010, 0.020, 0.030, 0.040, 1.0], "encoder": []})
    assert set(s) == {"total"}
    assert s["total"]["median"] == pytest.approx(30.0)
    assert s["total"]["p90"] == pytest.approx(float(np.percentile([10, 20, 30, 40, 1000], 90)))
    assert s["total"]["n"] == 5
