"""SamPredictor: bad prompts and wrong-state calls give clear errors, never deep torch errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from grounded_sam import SamPredictor
from grounded_sam.testing.sam_refs import meta_tiny_vit_sam, ours_tiny_vit_sam


@pytest.fixture(scope="module")
def predictor(chelsea):
    p = SamPredictor(ours_tiny_vit_sam(meta_tiny_vit_sam().state_dict()))
    p.set_image(chelsea)
    return p


def test_predict_before_set_image():
    p = SamPredictor(ours_tiny_vit_sam(meta_tiny_vit_sam().state_dict()))
    assert not p.is_image_set
    with pytest.raises(RuntimeError, match="set_image"):
        p.predict(point_coords=np.array([[1, 1]]), point_labels=np.array([1]))
    with pytest.raises(RuntimeError, match="set_image"):
        p.get_image_embedding()
    with pytest.raises(RuntimeError, match="set_image"):
        p.predict_boxes(np.array([[0, 0, 5, 5]]))


def test_not_a_sam():
    with pytest.raises(TypeError, match="Sam model"):
        SamPredictor(object())


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(point_coords=np.array([[1, 2, 3]]), point_labels=np.array([1])), r"\(N, 2\)"),
        (
            dict(point_coords=np.array([[1, 2]]), point_labels=np.array([1, 1])),
            "point_labels must have shape",
        ),
        (
            dict(point_coords=np.array([[1, 2]]), point_labels=np.array([2])),
            "1 \\(foreground\\) or 0",
        ),
        (dict(point_coords=np.array([[np.nan, 2]]), point_labels=np.array([1])), "NaN or inf"),
        (dict(point_coords=np.array([[1, 2]])), "together"),
        (dict(box=np.array([10, 10, 5, 20])), "x1 >= x0"),
        (dict(box=np.array([10, 10, 20])), r"\(N, 4\)"),
        (dict(box=np.array([0, 0, np.inf, 5])), "NaN or inf"),
        (dict(box=np.array([[0, 0, 5, 5], [1, 1, 6, 6]])), "predict_boxes"),
        (
            dict(
                point_coords=np.array([[1, 2]]),
                point_labels=np.array([1]),
                mask_input=np.zeros((1, 64, 64)),
            ),
            r"\(1, 256, 256\)",
        ),
    ],
    ids=[
        "coords-3d",
        "labels-len",
        "label-2",
        "nan",
        "no-labels",
        "x1<x0",
        "box-3",
        "box-inf",
        "two-boxes",
        "mask-size",
    ],
)
def test_bad_prompts(predictor, kwargs, match):
    with pytest.raises(ValueError, match=match):
        predictor.predict(**kwargs)


def test_predict_torch_shape_errors(predictor):
    with pytest.raises(ValueError, match=r"\(B, N, 2\)"):
        predictor.predict_torch(torch.zeros(2, 2), torch.ones(2, 1))
    with pytest.raises(ValueError, match="point_labels must be"):
        predictor.predict_torch(torch.zeros(1, 2, 2), torch.ones(1, 3))


def test_image_format_bgr(chelsea):
    model = ours_tiny_vit_sam(meta_tiny_vit_sam().state_dict())
    a, b = SamPredictor(model), SamPredictor(model)
    a.set_image(chelsea)
    b.set_image(np.ascontiguousarray(chelsea[..., ::-1]), image_format="BGR")
    assert torch.equal(a.get_image_embedding(), b.get_image_embedding())
    with pytest.raises(ValueError, match="image_format"):
        a.set_image(chelsea, image_format="HSV")


def test_predict_boxes_empty_and_shapes(predictor, chelsea):
    masks, scores = predictor.predict_boxes(np.zeros((0, 4)))
    assert masks.shape == (0, 1, *chelsea.shape[:2]) and scores.shape == (0, 1)
    masks, scores = predictor.predict_boxes(
        np.array([[10, 10, 200, 200]] * 20), multimask_output=True
    )
    assert masks.shape == (20, 3, *chelsea.shape[:2]) and masks.dtype == bool
    assert scores.shape == (20, 3)
    # identical boxes decode identically (one batched call, chunked post-processing)
    assert (masks[0] == masks[19]).all()


def test_embedding_reuse(predictor, chelsea):
    emb = predictor.get_embedding()
    p2 = SamPredictor(predictor.model)
    p2.set_embedding(emb)
    kw = dict(point_coords=np.array([[100, 100]]), point_labels=np.array([1]))
    m1, i1, _ = predictor.predict(**kw)
    m2, i2, _ = p2.predict(**kw)
    assert np.array_equal(m1, m2) and np.array_equal(i1, i2)
    p2.reset_image()
    assert not p2.is_image_set
