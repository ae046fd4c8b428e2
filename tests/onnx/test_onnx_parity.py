"""onnxruntime against our PyTorch path, through the two predictors, on real photos.

Criteria of the issue: mask logits within 1e-4 (max difference relative to the largest
logit), masks agreeing on at least 99.9% of pixels, for point, box, box + point and mask
prompts, at several image shapes (landscape, square, portrait, tiny).
"""

from __future__ import annotations

import numpy as np
import pytest

from grounded_sam import SamPredictor
from grounded_sam.onnx import OnnxSamPredictor
from grounded_sam.onnx.verify import agreement, default_prompts, rel_diff

LOGITS_REL = 1e-4
AGREEMENT = 0.999

CASES = [
    ("tiny_vit", "chelsea"),
    ("tiny_vit", "astronaut"),
    ("tiny_vit", "coffee_portrait"),
    ("tiny_vit", "rocket_tiny"),
    ("mobile_sam", "chelsea"),
    ("mobile_sam", "coffee_portrait"),
    ("sam2", "chelsea"),
    ("sam2", "coffee_portrait"),
    ("sam2", "rocket_tiny"),
]


def _pair(name, image, model, exported):
    tp = SamPredictor(model(name))
    op = OnnxSamPredictor(exported(name).directory)
    tp.set_image(image)
    op.set_image(image)
    return tp, op


@pytest.mark.parametrize(("name", "photo_name"), CASES)
def test_predict_matches_pytorch(name, photo_name, model, exported, photos):
    image = photos(photo_name)
    tp, op = _pair(name, image, model, exported)
    t_emb, o_emb = tp.get_embedding(), op.get_embedding()
    assert o_emb.original_size == t_emb.original_size
    assert o_emb.input_size == t_emb.input_size
    pairs = zip((t_emb.features, *t_emb.high_res), (o_emb.features, *o_emb.high_res), strict=True)
    for a, b in pairs:
        assert a.shape == b.shape
        assert rel_diff(a.numpy(), b.numpy()) < LOGITS_REL
    size = image.shape[:2]
    for prompt in default_prompts():  # point, two points, box, box+point, point+mask
        kw = prompt.pixels(size)
        if prompt.with_mask:
            _, scores, low = tp.predict(**kw)
            kw["mask_input"] = low[int(np.argmax(scores))][None]
        for multi in (True, False):
            tm, ti, tl = tp.predict(**kw, multimask_output=multi, return_logits=True)
            om, oi, ol = op.predict(**kw, multimask_output=multi, return_logits=True)
            what = f"{name} {photo_name} {prompt.name} multimask={multi}"
            assert om.shape == tm.shape == (3 if multi else 1, *size), what
            assert om.dtype == np.float32 and oi.dtype == np.float32 and ol.dtype == np.float32
            assert rel_diff(tm, om) < LOGITS_REL, what
            assert rel_diff(tl, ol) < LOGITS_REL, what
            assert np.abs(ti - oi).max() < 1e-4, what
            assert agreement(tm, om) >= AGREEMENT, what
            bm, _, _ = op.predict(**kw, multimask_output=multi)
            assert bm.dtype == bool and np.array_equal(bm, om > 0)


@pytest.mark.parametrize("name", ["tiny_vit", "sam2"])
def test_predict_boxes_matches_pytorch(name, model, exported, photos):
    image = photos("chelsea")
    tp, op = _pair(name, image, model, exported)
    h, w = image.shape[:2]
    boxes = np.array([[10, 20, 200, 180], [150, 40, 440, 290], [0, 0, w, h]], np.float64)
    for multi in (False, True):
        tm, ts = tp.predict_boxes(boxes, multimask_output=multi, return_logits=True)
        om, os_ = op.predict_boxes(boxes, multimask_output=multi, return_logits=True)
        assert om.shape == tm.shape == (3, 3 if multi else 1, h, w)
        assert rel_diff(tm, om) < LOGITS_REL
        assert np.abs(ts - os_).max() < 1e-4
        assert agreement(tm, om) >= AGREEMENT
    masks, scores = op.predict_boxes(np.zeros((0, 4)))
    assert masks.shape == (0, 1, h, w) and masks.dtype == bool and scores.shape == (0, 1)


@pytest.mark.parametrize("name", ["tiny_vit", "sam2"])
def test_number_of_points_is_dynamic(name, model, exported, photos):
    """N from 0 (a mask prompt alone) to many points, with and without a box."""
    image = photos("chelsea")
    tp, op = _pair(name, image, model, exported)
    h, w = image.shape[:2]
    rng = np.random.default_rng(1)
    _, scores, low = tp.predict(point_coords=[[w / 2, h / 2]], point_labels=[1])
    mask = low[int(np.argmax(scores))][None]
    cases = [dict(mask_input=mask)]
    for n in (1, 3, 12, 40):
        pts = rng.uniform([0, 0], [w, h], size=(n, 2))
        labels = rng.integers(0, 2, size=n)
        cases.append(dict(point_coords=pts, point_labels=labels))
        cases.append(dict(point_coords=pts, point_labels=labels, box=[20, 30, w - 40, h - 20]))
    for kw in cases:
        tm, ti, _ = tp.predict(**kw, return_logits=True)
        om, oi, _ = op.predict(**kw, return_logits=True)
        assert rel_diff(tm, om) < LOGITS_REL, sorted(kw)
        assert agreement(tm, om) >= AGREEMENT


@pytest.mark.parametrize("name", ["tiny_vit", "sam2"])
def test_embeddings_are_interchangeable(name, model, exported, photos):
    """An onnxruntime embedding drives the PyTorch decoder and vice versa (same container)."""
    image = photos("coffee_portrait")
    tp, op = _pair(name, image, model, exported)
    o_emb, t_emb = op.get_embedding(), tp.get_embedding()
    tp.set_embedding(o_emb)
    op.set_embedding(t_emb)
    kw = default_prompts()[3].pixels(image.shape[:2])  # box + point
    tm, _, _ = tp.predict(**kw, return_logits=True)
    om, _, _ = op.predict(**kw, return_logits=True)
    assert rel_diff(tm, om) < 1e-3
    assert agreement(tm, om) >= AGREEMENT
