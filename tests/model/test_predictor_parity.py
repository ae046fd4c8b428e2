"""Parity with Meta's segment_anything on identical (perturbed) weights, on a real photo."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from grounded_sam import SamPredictor, build_sam
from grounded_sam.testing.sam_refs import (
    meta_mobile_sam,
    meta_tiny_vit_sam,
    meta_vit_b,
    ours_tiny_vit_sam,
    rel_diff,
    save_checkpoint,
)

# point / box prompts on chelsea (300x451): the cat's face, its ear, a background corner
PROMPTS = {
    "single_point": dict(point_coords=np.array([[230, 140]]), point_labels=np.array([1])),
    "fg_bg_points": dict(
        point_coords=np.array([[230, 140], [20, 280]]), point_labels=np.array([1, 0])
    ),
    "box": dict(box=np.array([120, 30, 360, 290])),
    "box_point": dict(
        box=np.array([120, 30, 360, 290]),
        point_coords=np.array([[230, 140]]),
        point_labels=np.array([1]),
    ),
    "point_single_mask": dict(
        point_coords=np.array([[230, 140]]), point_labels=np.array([1]), multimask_output=False
    ),
}

MASK_AGREEMENT = 0.999
REL_TOL = 5e-3
IOU_TOL = 2e-3


def _check_pair(ref_out, our_out, case: str):
    (m1, i1, l1), (m2, i2, l2) = ref_out, our_out
    assert m1.shape == m2.shape and m2.dtype == bool, case
    assert i1.shape == i2.shape and l1.shape == l2.shape, case
    assert (m1 == m2).mean() >= MASK_AGREEMENT, case
    assert rel_diff(l1, l2) <= REL_TOL, case
    assert np.abs(i1 - i2).max() <= IOU_TOL, case


def _run_parity(ref_model, our_model, image):
    from segment_anything import SamPredictor as MetaPredictor

    ref, ours = MetaPredictor(ref_model), SamPredictor(our_model)
    ref.set_image(image)
    ours.set_image(image)
    assert ours.get_image_embedding().shape == (1, 256, 64, 64)
    assert rel_diff(ref.get_image_embedding(), ours.get_image_embedding()) <= REL_TOL
    for name, kw in PROMPTS.items():
        r, o = ref.predict(**kw), ours.predict(**kw)
        _check_pair(r, o, name)
        # second call fed the previous low-res logits of the best mask as mask_input
        best = int(np.argmax(r[1]))
        kw2 = dict(kw, mask_input=r[2][best : best + 1], multimask_output=False)
        _check_pair(ref.predict(**kw2), ours.predict(**kw2), f"{name} + mask_input")
    # many boxes at once: ours in one decoder call vs Meta's predict_torch
    boxes = np.array(
        [[120, 30, 360, 290], [0, 0, 200, 150], [300, 100, 450, 299]], dtype=np.float32
    )
    masks, scores = ours.predict_boxes(boxes, multimask_output=False)
    tb = ref.transform.apply_boxes_torch(torch.as_tensor(boxes), ref.original_size)
    rm, ri, _ = ref.predict_torch(None, None, boxes=tb, multimask_output=False)
    assert masks.shape == (3, 1, 300, 451) and scores.shape == (3, 1)
    assert (rm.numpy() == masks).mean() >= MASK_AGREEMENT
    assert np.abs(ri.numpy() - scores).max() <= IOU_TOL


def test_tiny_vit_parity_with_meta(chelsea):
    """A 2-block ViT at SAM's real 1024 input: the whole predictor path, quickly."""
    ref = meta_tiny_vit_sam()
    ours = ours_tiny_vit_sam(ref.state_dict())
    _run_parity(ref, ours, chelsea)


def test_tiny_vit_encoder_exact_in_float64():
    """In float64 the encoder agrees to ~1e-12: the float32 differences are rounding only."""
    ref = meta_tiny_vit_sam().double()
    ours = ours_tiny_vit_sam(ref.state_dict()).double()
    x = torch.randn(
        1, 3, 1024, 1024, dtype=torch.float64, generator=torch.Generator().manual_seed(0)
    )
    with torch.no_grad():
        assert rel_diff(ref.image_encoder(x), ours.image_encoder(x)) < 1e-10


@pytest.mark.slow
def test_vit_b_parity_with_meta(chelsea, tmp_path):
    ref = meta_vit_b()
    ckpt = save_checkpoint(ref, tmp_path / "sam_vit_b_01ec64.pth")
    ours = build_sam("vit_b", checkpoint=ckpt, device="cpu")
    _run_parity(ref, ours, chelsea)


@pytest.mark.slow
def test_mobile_sam_parity_with_meta_and_ultralytics(chelsea, tmp_path):
    ref = meta_mobile_sam()
    ckpt = save_checkpoint(ref, tmp_path / "mobile_sam.pt")
    ours = build_sam("mobile_sam", checkpoint=ckpt, device="cpu")
    _run_parity(ref, ours, chelsea)
