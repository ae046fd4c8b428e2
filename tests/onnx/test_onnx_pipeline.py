"""The pipeline and ``grounded-sam segment --sam-onnx DIR`` with onnxruntime doing the SAM work:
the same instances as with PyTorch."""

from __future__ import annotations

import json

import numpy as np

from grounded_sam import GroundedSAM
from grounded_sam.masks import decode_rle
from grounded_sam.onnx import OnnxSamPredictor
from grounded_sam.testing.pipeline import (
    StubDetector,
    error_lines,
    mobile_sam_checkpoint,
    run_cli,
    small_chelsea,
    write_png,
)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.logical_and(a, b).sum() / max(np.logical_or(a, b).sum(), 1))


def test_grounded_sam_with_onnx_predictor(exported, model):
    image = small_chelsea()
    boxes = [[10, 10, 120, 140], [100, 20, 220, 145]]
    det = StubDetector(boxes, [0.9, 0.8], ["a cat", "a dog"])
    onnx_pipe = GroundedSAM(det, OnnxSamPredictor(exported("mobile_sam").directory))
    torch_pipe = GroundedSAM(det, model("mobile_sam"))
    assert onnx_pipe.device.type == "cpu" and onnx_pipe.sam.family == "sam"
    a = onnx_pipe.segment(image, "a cat. a dog.")
    b = torch_pipe.segment(image, "a cat. a dog.")
    assert a.labels == b.labels and len(a) == 2
    np.testing.assert_allclose(a.mask_scores, b.mask_scores, atol=1e-4)
    for ma, mb in zip(a.masks, b.masks, strict=True):
        assert _iou(ma, mb) >= 0.999
    onnx_pipe.segment(image, "a cat. a dog.")
    assert onnx_pipe.encoder_calls == 1  # the embedding cache works with ONNX embeddings
    p = onnx_pipe.segment(image, points=[[60, 70]])
    q = torch_pipe.segment(image, points=[[60, 70]])
    assert _iou(p.masks[0], q.masks[0]) >= 0.999


def test_segment_cli_sam_onnx(exported, tmp_path, capsys):
    img = write_png(small_chelsea(), tmp_path / "cat.png")
    folder = exported("mobile_sam").directory
    results = {}
    for how, flags in {
        "onnx": ["--sam-onnx", folder],
        "torch": ["--sam", "mobile_sam", "--sam-checkpoint", mobile_sam_checkpoint()],
    }.items():
        out = tmp_path / how
        argv = [img, "--box", "10,10,120,140", "--box", "100,20,220,145", *flags, "--out", out]
        rc, _, err = run_cli("segment", [*argv, "--device", "cpu"], capsys)
        assert rc == 0, err
        results[how] = json.loads((out / "cat" / "result.json").read_text())["annotations"]
    assert len(results["onnx"]) == len(results["torch"]) == 2
    for a, b in zip(results["onnx"], results["torch"], strict=True):
        assert _iou(decode_rle(a["segmentation"]), decode_rle(b["segmentation"])) >= 0.999
    ckpt = mobile_sam_checkpoint()
    argv = [img, "--box", "1,1,50,50", "--sam-onnx", folder, "--sam-checkpoint", ckpt]
    rc, _, err = run_cli("segment", [*argv, "--out", tmp_path / "x"], capsys)
    assert rc == 2 and "--sam-onnx replaces" in err and len(error_lines(err)) == 1
    rc, _, err = run_cli(
        "segment",
        [img, "--box", "1,1,50,50", "--sam-onnx", tmp_path, "--out", tmp_path / "y"],
        capsys,
    )
    assert rc == 2 and "not a folder written by `grounded-sam export-onnx`" in err
