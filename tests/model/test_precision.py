"""Opt-in lower-precision modes: what they change, how close they stay to fp32, and their errors.

MobileSAM with perturbed random weights on skimage's chelsea; each mode's masks are compared
with the fp32 masks of the same weights (the benchmark prints the same IoU for full models).
"""

from __future__ import annotations

import functools
import json

import numpy as np
import pytest
import torch
from skimage import data
from torch import nn

from grounded_sam import GroundedSAM, SamPredictor, build_sam
from grounded_sam.model.precision import PRECISIONS, apply_precision
from grounded_sam.testing.pipeline import (
    mobile_sam,
    mobile_sam_checkpoint,
    run_cli,
    sam_args,
    small_chelsea,
)
from grounded_sam.testing.pipeline import write_png as _write_png

BOXES = np.array([[120, 30, 360, 290], [0, 0, 200, 200], [200, 100, 450, 300]])


@functools.cache
def _predict(precision: str) -> tuple[np.ndarray, np.ndarray, torch.Tensor]:
    model = build_sam(
        "mobile_sam", checkpoint=mobile_sam_checkpoint(), device="cpu", precision=precision
    )
    predictor = SamPredictor(model)
    predictor.set_image(data.chelsea())
    masks, scores = predictor.predict_boxes(BOXES)
    return masks, scores, predictor.get_image_embedding()


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    inter = (a & b).sum(axis=(-1, -2))
    union = (a | b).sum(axis=(-1, -2))
    return float((inter / np.maximum(union, 1)).mean())


@pytest.mark.parametrize(
    ("precision", "min_iou"),
    # Mean IoU measured on these (random) weights, the same with 1 and 2 threads: int8 0.844,
    # bf16 0.933, fp16 0.995. Random weights give low-contrast logits, so pixels flip easily;
    # the bounds leave a margin and keep the modes' order of accuracy.
    [("int8", 0.8), ("bf16", 0.9), ("fp16", 0.98)],
)
def test_modes_stay_close_to_fp32_and_return_float32(precision, min_iou):
    ref_masks, ref_scores, ref_emb = _predict("fp32")
    masks, scores, emb = _predict(precision)
    assert masks.dtype == bool and masks.shape == ref_masks.shape
    assert scores.dtype == np.float32 and emb.dtype == torch.float32
    assert _iou(masks, ref_masks) >= min_iou
    # ... and the mode really changed the computation (fp32 would be identical)
    assert not torch.equal(emb, ref_emb)


def test_int8_quantizes_only_the_encoder_linears():
    model = build_sam("mobile_sam", checkpoint=mobile_sam_checkpoint(), precision="int8")
    assert model.precision == "int8"
    quantized = torch.ao.nn.quantized.dynamic.Linear
    enc = list(model.image_encoder.modules())
    assert any(isinstance(m, quantized) for m in enc)
    assert not any(type(m) is nn.Linear for m in enc)
    decoder = list(model.mask_decoder.modules())
    assert any(type(m) is nn.Linear for m in decoder)
    assert not any(isinstance(m, quantized) for m in decoder)


def test_unknown_precision_is_refused_before_any_work():
    with pytest.raises(ValueError, match=r"unknown precision 'fp64'.*fp32, bf16, fp16, int8"):
        build_sam("vit_h", checkpoint="/nonexistent.pth", precision="fp64")
    with pytest.raises(ValueError, match="unknown precision"):
        GroundedSAM(sam="mobile_sam", precision="half")


def test_int8_is_cpu_only():
    model = build_sam("mobile_sam", pretrained=False, device="cpu").to("meta")
    with pytest.raises(ValueError, match=r"int8.*CPU only.*bf16"):
        apply_precision(model, "int8")


def test_switching_modes_needs_a_fresh_model():
    model = build_sam("mobile_sam", pretrained=False, device="cpu", precision="bf16")
    assert apply_precision(model, "bf16") is model  # same mode: nothing to do
    with pytest.raises(ValueError, match=r"already runs in precision 'bf16'.*build_sam"):
        apply_precision(model, "int8")


def test_pipeline_precision_only_for_named_sam():
    with pytest.raises(ValueError, match="precision only applies when sam is a variant name"):
        GroundedSAM(sam=mobile_sam(), precision="int8")
    assert PRECISIONS == ("fp32", "bf16", "fp16", "int8")


def test_cli_precision_flag(tmp_path, capsys):
    image = _write_png(small_chelsea(), tmp_path / "cat.png")
    out = tmp_path / "out"
    argv = [image, *sam_args(), "--precision", "int8", "--out", out]
    argv += ["--points-per-side", "2", "--pred-iou-thresh", "0"]
    argv += ["--stability-score-thresh", "0", "--box-nms-thresh", "1"]
    rc, stdout, err = run_cli("everything", argv, capsys)
    assert rc == 0, err
    doc = json.loads((out / "cat" / "result.json").read_text())
    assert len(doc["annotations"]) == 12

    rc, _, err = run_cli("everything", [image, *sam_args(), "--precision", "fp8"], capsys)
    assert rc == 2 and "invalid choice: 'fp8'" in err


@pytest.mark.parametrize("precision", ["bf16", "fp16", "int8"])
def test_vit_encoder_modes_run(precision):
    """The ViT path (windowed + global relative-position attention) under each mode."""
    import copy

    from grounded_sam.testing.pipeline import tiny_sam

    ref = SamPredictor(tiny_sam())
    ref.set_image(small_chelsea())
    ours = SamPredictor(apply_precision(copy.deepcopy(tiny_sam()), precision))
    ours.set_image(small_chelsea())
    emb, ref_emb = ours.get_image_embedding(), ref.get_image_embedding()
    assert emb.dtype == torch.float32 and torch.isfinite(emb).all()
    assert not torch.equal(emb, ref_emb)
    assert float((emb - ref_emb).abs().max() / ref_emb.abs().max()) < 0.1
    masks, scores = ours.predict_boxes(np.array([[20, 20, 120, 140]]))
    ref_masks, _ = ref.predict_boxes(np.array([[20, 20, 120, 140]]))
    assert scores.dtype == np.float32 and _iou(masks, ref_masks) >= 0.9


def test_int8_without_a_device_means_cpu_even_beside_a_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    model = build_sam("mobile_sam", pretrained=False, precision="int8")
    assert model.device == torch.device("cpu") and model.precision == "int8"
