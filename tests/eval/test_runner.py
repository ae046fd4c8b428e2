"""End-to-end evaluation runs on a small COCO-format set of real photos."""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from grounded_sam.eval import CocoDataset, RunSpec, build_pipeline, evaluate, read_records
from grounded_sam.testing.eval_data import (
    EmptyDetector,
    InterruptAfter,
    NoisyOracle,
    PerfectPredictor,
)
from grounded_sam.testing.pipeline import SAM_FAMILIES, tiny_sam_of

# pycocotools' Cython RLE objects trip a numpy 2 DeprecationWarning on every decode
pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"
)


QUALITY_KEYS = (
    "mask_AP",
    "mask_AP50",
    "mask_AP75",
    "mask_AP_small",
    "mask_AP_medium",
    "mask_AP_large",
    "mIoU",
    "cIoU",
    "precision_at_iou50",
    "n_images",
    "n_prompts",
    "n_detections",
    "n_empty_predictions",
    "n_empty_ground_truth",
)


def _pycocotools_stats(ann_path, pred_path) -> list[float]:
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(ann_path))
        dt = gt.loadRes(str(pred_path))
        ev = COCOeval(gt, dt, iouType="segm")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return [float(s) for s in ev.stats[:6]]


def _run(coco, out, detector=None, *, all_categories=False, pipeline_wrap=None, **kw):
    ds = CocoDataset(coco["annotations"], coco["images"], all_categories=all_categories)
    spec = RunSpec(detector="gt-boxes" if detector is None else "stub", sam="stub", **kw)
    pipe, oracle = build_pipeline(spec, sam=PerfectPredictor(coco), detector=detector)
    if pipeline_wrap is not None:
        pipe = pipeline_wrap(pipe)
    return evaluate(ds, pipe, out, spec=spec, oracle=oracle, show_progress=False)


def test_gt_boxes_with_perfect_masks_scores_ap_1(coco, tmp_path):
    out = tmp_path / "run"
    m = _run(coco, out)
    assert m["complete"] is True
    assert m["mask_AP"] == pytest.approx(1.0)
    assert m["mask_AP50"] == pytest.approx(1.0)
    assert m["mask_AP75"] == pytest.approx(1.0)
    assert m["mIoU"] == pytest.approx(1.0)
    assert m["cIoU"] == pytest.approx(1.0)
    # prompts: cat | person, cup | cup -> 4 (image, prompt) pairs, 5 GT instances
    assert (m["n_images"], m["n_prompts"], m["n_detections"]) == (3, 4, 5)
    for name in ("predictions.json", "metrics.json", "report.md", "run.json", "records.jsonl"):
        assert (out / name).is_file(), name
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk["mask_AP"] == m["mask_AP"]
    assert set(on_disk["latency_ms"]) == {"detector", "encoder", "decoder", "total"}
    assert on_disk["latency_ms"]["total"]["n"] == 3
    assert on_disk["config"]["run"]["detector"] == "gt-boxes"
    assert "torch" in on_disk["versions"] and "pycocotools" in on_disk["versions"]
    assert on_disk["peak_memory"]["kind"] and on_disk["peak_memory"]["mb"] > 0
    report = (out / "report.md").read_text()
    assert "| 1.000 | 1.000 | 1.000 |" in report


def test_all_categories_counts_empty_ground_truth(coco, tmp_path):
    m = _run(coco, tmp_path / "run", all_categories=True)
    # 3 images x 4 categories; absent categories: empty GT + empty prediction -> IoU 1
    assert m["n_prompts"] == 12
    assert m["n_empty_ground_truth"] == 12 - 4
    assert m["mIoU"] == pytest.approx(1.0)
    assert m["mask_AP"] == pytest.approx(1.0)


def test_empty_detector_scores_zero(coco, tmp_path):
    out = tmp_path / "run"
    m = _run(coco, out, detector=EmptyDetector())
    assert m["mask_AP"] == 0.0 and m["mask_AP50"] == 0.0
    assert m["mIoU"] == 0.0 and m["cIoU"] == 0.0
    assert m["n_detections"] == 0 and m["n_empty_predictions"] == 4
    assert json.loads((out / "predictions.json").read_text()) == []


def test_metrics_json_equals_pycocotools_on_predictions(coco, tmp_path):
    out = tmp_path / "run"
    m = _run(coco, out, detector=NoisyOracle())
    stats = _pycocotools_stats(coco["annotations"], out / "predictions.json")
    ours = json.loads((out / "metrics.json").read_text())
    keys = ("mask_AP", "mask_AP50", "mask_AP75", "mask_AP_small", "mask_AP_medium", "mask_AP_large")
    for key, s in zip(keys, stats, strict=True):
        assert ours[key] == (None if s < 0 else pytest.approx(s)), key
    assert 0.0 < m["mask_AP"] < 1.0  # shifted boxes and a false positive: neither 0 nor perfect
    # mIoU recomputed independently from predictions.json and the GT polygons
    preds = json.loads((out / "predictions.json").read_text())
    gt = coco["data"]
    from pycocotools import mask as mu

    ious = []
    for img in gt["images"]:
        h, w = img["height"], img["width"]
        for cid in sorted(
            {a["category_id"] for a in gt["annotations"] if a["image_id"] == img["id"]}
        ):
            g = np.zeros((h, w), bool)
            for a in gt["annotations"]:
                if a["image_id"] == img["id"] and a["category_id"] == cid:
                    g |= mu.decode(mu.merge(mu.frPyObjects(a["segmentation"], h, w))).astype(bool)
            p = np.zeros((h, w), bool)
            for d in preds:
                if d["image_id"] == img["id"] and d["category_id"] == cid:
                    p |= mu.decode(d["segmentation"]).astype(bool)
            ious.append((g & p).sum() / (g | p).sum())
    assert ours["mIoU"] == pytest.approx(float(np.mean(ious)))


def test_resumed_run_matches_uninterrupted(coco, tmp_path):
    full = _run(coco, tmp_path / "full", detector=NoisyOracle())
    out = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        _run(coco, out, detector=NoisyOracle(), pipeline_wrap=lambda p: InterruptAfter(p, 1))
    partial = json.loads((out / "metrics.json").read_text())
    assert partial["complete"] is False and partial["n_images"] == 1
    assert len(read_records(out)) == 1
    assert len(json.loads((out / "predictions.json").read_text())) == partial["n_detections"]
    # simulate a crash while writing the next line: a trailing half line is dropped on restart
    with open(out / "records.jsonl", "a") as f:
        f.write('{"image_id": 2, "pairs": [')
    resumed = _run(coco, out, detector=NoisyOracle())
    assert resumed["complete"] is True
    for key in QUALITY_KEYS:
        assert (
            resumed[key] == pytest.approx(full[key])
            if full[key] is not None
            else resumed[key] is None
        ), key
    assert [r["image_id"] for r in read_records(out)] == [1, 2, 3]
    assert json.loads((out / "predictions.json").read_text()) == json.loads(
        (tmp_path / "full" / "predictions.json").read_text()
    )


def test_restart_with_other_config_is_refused(coco, tmp_path):
    out = tmp_path / "run"
    _run(coco, out)
    with pytest.raises(ValueError, match="different configuration"):
        _run(coco, out, score="mask")


def test_real_tiny_sam_metrics_match_pycocotools(coco, tmp_path, tiny_sam):
    """gt-boxes prompting a real (random-weight) SAM of each family: metrics.json ==
    pycocotools on predictions."""
    ds = CocoDataset(coco["annotations"], coco["images"])
    name, model = tiny_sam
    spec = RunSpec(detector="gt-boxes", sam=name, score="mask")
    pipe, oracle = build_pipeline(spec, sam=model)
    out = tmp_path / "run"
    m = evaluate(ds, pipe, out, spec=spec, oracle=oracle, show_progress=False)
    stats = _pycocotools_stats(coco["annotations"], out / "predictions.json")
    assert m["mask_AP"] == (None if stats[0] < 0 else pytest.approx(stats[0]))
    assert m["mask_AP50"] == (None if stats[1] < 0 else pytest.approx(stats[1]))
    assert m["n_detections"] == 5
    # one warm-up call (cache dropped after it), then one encoder pass per image, cached
    # across the image's prompts; the warm-up is not in the timings
    assert pipe.encoder_calls == 1 + 3
    assert m["latency_ms_per_prompt"]["encoder"]["n"] == 4
    assert m["latency_ms"]["encoder"]["n"] == 3
    assert 0.0 <= m["mIoU"] <= 1.0


@pytest.fixture(scope="module", params=SAM_FAMILIES)
def tiny_sam(request):
    """(run name, model): the 2-block ViT SAM, or the reduced SAM 2.1."""
    name = "sam2.1_hiera_test" if request.param == "sam2" else "tiny_vit_test"
    return name, tiny_sam_of(request.param)


def test_evaluate_without_spec_records_detector_name(coco, tmp_path):
    from grounded_sam.pipeline import GroundedSAM

    ds = CocoDataset(coco["annotations"], coco["images"], limit=1)
    pipe = GroundedSAM(EmptyDetector(), PerfectPredictor(coco))
    m = evaluate(ds, pipe, tmp_path / "run", show_progress=False, warmup=0)
    assert m["config"]["run"]["detector"] == "EmptyDetector"
    assert m["config"]["protocol"] == {"warmup": 0}
    assert m["n_images"] == 1 and m["mIoU"] == 0.0
    with pytest.raises(ValueError, match="warmup"):
        evaluate(ds, pipe, tmp_path / "run2", show_progress=False, warmup=-1)
