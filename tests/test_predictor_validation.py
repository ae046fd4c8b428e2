"""SamPredictor: bad prompts and wrong-state calls give clear errors, never deep torch errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from grounded_sam import SamPredictor
from grounded_sam.errors import InputError
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


# ---------------------------------------------------------------- image_format, image size
def test_bgr_reorders_channels_after_normalising(chelsea):
    """image_format="BGR" swaps the colour channels of the normalised RGB image: a grayscale
    (H, W) image is not mirrored, a BGRA image's alpha stays out of the colours."""
    model = ours_tiny_vit_sam(meta_tiny_vit_sam().state_dict())
    p = SamPredictor(model)
    gray = np.ascontiguousarray(chelsea[:, :, 0])
    p.set_image(gray)
    want = p.get_image_embedding().clone()
    p.set_image(gray, image_format="BGR")
    assert torch.equal(p.get_image_embedding(), want)
    p.set_image(chelsea)
    want = p.get_image_embedding().clone()
    alpha = np.full(chelsea.shape[:2], 9, np.uint8)
    p.set_image(np.dstack([chelsea[..., ::-1], alpha]), image_format="BGR")  # BGRA
    assert torch.equal(p.get_image_embedding(), want)


@pytest.mark.parametrize("shape", [(1, 3000, 3), (3000, 1), (2, 5000, 3)])
def test_too_elongated_image_for_sam1(shape):
    p = SamPredictor(ours_tiny_vit_sam(meta_tiny_vit_sam().state_dict()))
    image = np.zeros(shape, np.uint8)
    with pytest.raises(InputError, match="too elongated") as e:
        p.set_image(image)
    h, w = shape[:2]
    msg = str(e.value)
    assert f"{w}x{h} (WxH)" in msg and "1024" in msg and "crop" in msg and "pad" in msg
    with pytest.raises(InputError, match="too elongated"):
        p.embed([np.zeros((8, 8, 3), np.uint8), image])
    assert not p.is_image_set
    # the model's own preparation (fine-tuning, ONNX export) refuses it too, not PIL
    with pytest.raises(InputError, match="too elongated"):
        p.model.prepare_image(image)


def test_elongated_image_just_wide_enough_and_sam2_takes_any():
    from grounded_sam.testing.pipeline import tiny_sam2

    p = SamPredictor(ours_tiny_vit_sam(meta_tiny_vit_sam().state_dict()))
    p.set_image(np.zeros((2, 3000, 3), np.uint8))  # short side resizes to 1 pixel: fine
    assert p.input_size == (1, 1024)
    p2 = SamPredictor(tiny_sam2())  # square resize: no short side to lose
    p2.set_image(np.zeros((1, 3000, 3), np.uint8))
    assert p2.predict(box=np.array([0, 0, 100, 1]))[0].shape == (3, 1, 3000)


# ---------------------------------------------------------------- predict variants
def test_every_predict_variant_needs_an_image():
    p = SamPredictor(ours_tiny_vit_sam(meta_tiny_vit_sam().state_dict()))
    calls = [
        lambda: p.predict_low_res(boxes=np.array([[0, 0, 5, 5]])),
        lambda: p.predict_low_res(point_coords=np.ones((1, 1, 2)), point_labels=np.ones((1, 1))),
        lambda: p.predict_torch(torch.ones(1, 1, 2), torch.ones(1, 1)),
        lambda: p.predict_torch(None, None, boxes=torch.zeros(1, 4)),
        lambda: p.postprocess(torch.zeros(1, 1, 256, 256)),
    ]
    for call in calls:
        with pytest.raises(RuntimeError, match="set_image"):
            call()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(boxes=np.array([[50, 50, 10, 10]])), "x1 >= x0"),
        (dict(boxes=np.array([[0, 0, 5, 5, 1]])), r"\(N, 4\)"),
        (dict(boxes=np.zeros((2, 3))), r"\(N, 4\)"),
        (dict(boxes=torch.tensor([[0.0, 0.0, np.inf, 5.0]])), "NaN or inf"),
        (dict(point_coords=np.full((1, 1, 2), np.nan), point_labels=np.ones((1, 1))), "NaN"),
        (dict(point_coords=torch.full((1, 1, 2), np.inf), point_labels=np.ones((1, 1))), "NaN"),
        (dict(point_coords=np.ones((1, 1, 2))), "together"),
        (dict(point_labels=np.ones((1, 1))), "together"),
        (dict(point_coords=np.ones((1, 2)), point_labels=np.ones(1)), r"\(B, N, 2\)"),
        (dict(point_coords=np.ones((2, 1, 2)), point_labels=np.ones((1, 2))), "point_labels"),
        (dict(point_coords=np.ones((1, 1, 2)), point_labels=np.full((1, 1), 2)), "1 \\(fore"),
        (
            dict(
                point_coords=np.ones((2, 1, 2)),
                point_labels=np.ones((2, 1)),
                boxes=np.array([[0, 0, 5, 5]] * 3),
            ),
            "batch sizes differ",
        ),
        (
            dict(
                point_coords=np.ones((1, 1, 2)),
                point_labels=np.ones((1, 1)),
                mask_input=torch.zeros(1, 64, 64),
            ),
            r"mask_input must be \(B, 1, 256, 256\)",
        ),
        (
            dict(boxes=np.array([[0, 0, 5, 5]]), mask_input=np.full((1, 1, 256, 256), np.nan)),
            "NaN",
        ),
        (dict(boxes=np.array([[0, 0, 5, 5]]), multimask_output="no"), "True or False"),
    ],
    ids=[
        "x1<x0",
        "box-5",
        "boxes-N3",
        "box-inf-tensor",
        "nan-point",
        "inf-point-tensor",
        "coords-no-labels",
        "labels-no-coords",
        "coords-unbatched",
        "labels-shape",
        "label-2",
        "batch-mismatch",
        "mask-shape",
        "mask-nan",
        "multimask-str",
    ],
)
def test_predict_low_res_checks_like_predict(predictor, kwargs, match):
    with pytest.raises(InputError, match=match):
        predictor.predict_low_res(**kwargs)


def test_predict_low_res_valid_prompts_match_predict(predictor):
    box = np.array([40, 30, 250, 280])
    _, iou, low = predictor.predict(box=box)
    low_b, iou_b = predictor.predict_low_res(boxes=box[None])
    assert torch.equal(low_b[0], torch.as_tensor(low)) and np.array_equal(iou_b[0].numpy(), iou)
    pts = np.array([[[100.0, 120.0]], [[300.0, 200.0]]])
    low_p, _ = predictor.predict_low_res(
        point_coords=pts,
        point_labels=np.ones((2, 1)),
        mask_input=np.zeros((2, 1, 256, 256), np.float32),
        multimask_output=np.bool_(False),
    )
    assert low_p.shape == (2, 1, 256, 256)


@pytest.mark.parametrize(
    "args, match",
    [
        ((np.zeros((1, 1, 2)), np.ones((1, 1))), "torch tensors"),
        ((None, None, np.zeros((1, 4))), "torch tensors"),
        ((torch.zeros(2, 1, 2), torch.ones(2, 1), torch.zeros(3, 4)), "batch sizes differ"),
        ((None, None, torch.zeros(1, 4, 1)), r"\(B, 4\)"),
        ((None, None, torch.zeros(1, 4), torch.zeros(1, 256, 256)), r"\(B, 1, 256, 256\)"),
        ((None, None, torch.zeros(2, 4), torch.zeros(3, 1, 256, 256)), "3 masks for 2 prompts"),
    ],
    ids=["numpy-points", "numpy-boxes", "batch-mismatch", "boxes-3d", "mask-3d", "mask-batch"],
)
def test_predict_torch_input_errors(predictor, args, match):
    with pytest.raises(InputError, match=match):
        predictor.predict_torch(*args)


# ---------------------------------------------------------------- arguments
def test_predict_boxes_none(predictor):
    with pytest.raises(InputError, match=r"needs boxes: an \(N, 4\) array"):
        predictor.predict_boxes(None)


@pytest.mark.parametrize("value", ["no", 1, None, "False"])
def test_multimask_output_must_be_bool(predictor, value):
    box = np.array([40, 30, 250, 280])
    with pytest.raises(InputError, match="multimask_output must be True or False"):
        predictor.predict(box=box, multimask_output=value)
    with pytest.raises(InputError, match="multimask_output must be True or False"):
        predictor.predict_boxes(box[None], multimask_output=value)
    with pytest.raises(InputError, match="return_logits must be True or False"):
        predictor.predict(box=box, return_logits=value)


def test_numpy_bool_flags_accepted(predictor):
    box = np.array([40, 30, 250, 280])
    masks, _, _ = predictor.predict(box=box, multimask_output=np.bool_(False))
    assert masks.shape[0] == 1
    masks, _, _ = predictor.predict(box=box, multimask_output=np.bool_(True))
    assert masks.shape[0] == 3
