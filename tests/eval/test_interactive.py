"""Interactive evaluation: click placement, the click loop's bookkeeping, the metrics, the CLI."""

from __future__ import annotations

import json
import types

import numpy as np
import pytest
import torch

from grounded_sam.eval.interactive import (
    InstanceTrace,
    evaluate_interactive,
    first_click,
    next_click,
    summarize,
)
from grounded_sam.testing.pipeline import run_cli


def test_first_click_is_farthest_from_the_boundary():
    m = np.zeros((40, 60), bool)
    m[10:31, 5:56] = True  # 21 rows x 51 cols: the centre row 20, centre column 30
    assert first_click(m) == (30.0, 20.0)
    # the image border is boundary too: a mask filling the image clicks its centre
    assert first_click(np.ones((9, 9), bool)) == (4.0, 4.0)
    ring = np.zeros((41, 41), bool)
    yy, xx = np.mgrid[:41, :41]
    d = np.hypot(yy - 20, xx - 20)
    ring[(d <= 20) & (d >= 10)] = True
    x, y = first_click(ring)
    assert ring[int(y), int(x)] and 13 <= np.hypot(y - 20, x - 20) <= 17  # inside the band


def test_next_click_centre_of_largest_error_region():
    gt = np.zeros((50, 50), bool)
    gt[5:45, 5:45] = True
    pred = gt.copy()
    pred[5:15, 5:45] = False  # false negative band 10 x 40
    pred[30:34, 0:3] = True  # small false positive
    (x, y), label = next_click(pred, gt)
    assert label == 1 and 8 <= y <= 11 and not pred[int(y), int(x)] and gt[int(y), int(x)]
    pred2 = gt.copy()
    pred2[0:3, :] = True  # false positive strip (3 x 50 = 150 px) beats a 2x2 miss
    pred2[20:22, 20:22] = False
    (x, y), label = next_click(pred2, gt)
    assert label == 0 and y == 1 and pred2[int(y), int(x)] and not gt[int(y), int(x)]
    assert next_click(gt, gt) is None


def test_trace_metrics():
    t = InstanceTrace(1, 1, [0.5, 0.86, 0.8, 0.95, 0.97], box_iou=0.7, fill_box_iou=0.4)
    assert t.iou_at(1) == 0.5 and t.iou_at(3) == 0.8 and t.iou_at(5) == 0.97
    assert t.noc(0.85, 20) == 2 and t.noc(0.90, 20) == 4 and t.noc(0.99, 20) == 20
    exact = InstanceTrace(1, 2, [1.0], box_iou=1.0, fill_box_iou=1.0)
    assert exact.iou_at(5) == 1.0 and exact.noc(0.9, 20) == 1
    m = summarize([t, exact])
    assert m["mIoU@1"] == pytest.approx(0.75) and m["mIoU@5"] == pytest.approx(0.985)
    assert m["NoC@85"] == pytest.approx(1.5) and m["NoC@90"] == pytest.approx(2.5)
    assert m["box_mIoU"] == pytest.approx(0.85) and m["fill_box_mIoU"] == pytest.approx(0.7)
    assert m["n_masks"] == 2


class _GrowingPredictor:
    """A predictor stand-in: its mask is the ground truth's first ``n`` rows, ``n`` growing
    by a fixed step per positive click; low-res logits carry the mask as given."""

    def __init__(self, gt: np.ndarray, step: int) -> None:
        self.gt, self.step = gt, step
        self.model = types.SimpleNamespace(mask_threshold=0.0)
        self.original_size = gt.shape
        self.calls: list[tuple[int, bool, bool]] = []

    def set_image(self, image) -> None:
        pass

    def predict_boxes(self, boxes, multimask_output=False):
        return np.repeat(self.gt[None, None], len(boxes), 0), np.ones((len(boxes), 1))

    def predict_low_res(self, coords, labels, mask_input=None, multimask_output=True):
        n_clicks = coords.shape[1]
        self.calls.append((n_clicks, mask_input is not None, multimask_output))
        rows = np.flatnonzero(self.gt.any(1))
        keep = rows[: self.step * n_clicks]
        m = np.zeros_like(self.gt)
        m[keep] = self.gt[keep]
        logits = torch.tensor(np.where(m, 1.0, -1.0), dtype=torch.float32)[None, None]
        c = 3 if multimask_output else 1
        iou = torch.linspace(0.1, 0.9, c)[None]
        return logits.repeat(len(coords), c, 1, 1), iou.repeat(len(coords), 1)

    def postprocess(self, low_res):
        return low_res


def test_click_loop_feeds_previous_logits_and_counts_clicks():
    gt = np.zeros((20, 10), bool)
    gt[0:20, 2:8] = True
    pred = _GrowingPredictor(gt, step=4)  # 4 more rows (of 20) per click: IoU k/5
    info = types.SimpleNamespace(image_id=7, path="unused")
    box = np.array([[2, 0, 8, 20]], np.float32)
    traces = evaluate_interactive(
        pred, [info], lambda i: ([3], [gt], box), set_image=lambda i: None, max_clicks=20
    )
    (t,) = traces
    assert t.ious == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])
    assert t.noc(0.85, 20) == 5 and t.box_iou == 1.0 and t.fill_box_iou == 1.0
    # first click: multimask, no mask prompt; then one output with the previous logits
    assert pred.calls[0] == (1, False, True)
    assert all(c == (k, True, False) for k, c in enumerate(pred.calls[1:], start=2))
    slow = _GrowingPredictor(gt, step=1)  # never reaches 0.85 within 12 clicks
    (t,) = evaluate_interactive(
        slow, [info], lambda i: ([3], [gt], box), set_image=lambda i: None, max_clicks=12
    )
    assert len(t.ious) == 12 and t.noc(0.85, 12) == 12


def test_real_predictor_and_cli(tmp_path, capsys):
    """End to end with the reduced random SAM 2.1 (by name, through the CLI too): figures in
    range, files written, detector flags refused."""
    from grounded_sam.eval.interactive import run_interactive
    from grounded_sam.predictor import SamPredictor
    from grounded_sam.testing.pipeline import sam2_test_checkpoint, sam2_test_variant, tiny_sam2
    from grounded_sam.train.synthetic import write_shapes_dataset

    ds = write_shapes_dataset(tmp_path / "ds", n_train=1, n_val=2, size=64, seed=2)
    metrics = run_interactive(
        ds.val, ds.images, SamPredictor(tiny_sam2()), tmp_path / "out", max_clicks=6,
        show_progress=False,
    )  # fmt: skip
    n = len(json.loads(ds.val.read_text())["annotations"])
    assert metrics["n_masks"] == n
    for k in ("box_mIoU", "fill_box_mIoU", "mIoU@1", "mIoU@3", "mIoU@5"):
        assert 0.0 <= metrics[k] <= 1.0
    assert 1 <= metrics["NoC@85"] <= metrics["NoC@90"] <= 6
    saved = json.loads((tmp_path / "out" / "interactive.json").read_text())
    assert len(saved["per_mask"]) == n and saved["mIoU@1"] == metrics["mIoU@1"]
    assert all(1 <= len(m["ious"]) <= 6 for m in saved["per_mask"])
    assert "NoC@85" in (tmp_path / "out" / "interactive.md").read_text()
    with sam2_test_variant() as name:
        rc, out, err = run_cli(
            "eval",
            ["--interactive", "--annotations", ds.val, "--images", ds.images, "--sam", name,
             "--sam-checkpoint", sam2_test_checkpoint(), "--device", "cpu",
             "--out", tmp_path / "cli", "--max-clicks", "6"],
            capsys,
        )  # fmt: skip
    assert rc == 0, err
    got = json.loads((tmp_path / "cli" / "interactive.json").read_text())
    assert got["max_clicks"] == 6 and got["n_masks"] == n
    # the same model and data: the CLI reproduces the Python figures
    assert got["mIoU@1"] == pytest.approx(metrics["mIoU@1"], abs=1e-6)
    assert "NoC@85" in out and "box mIoU" in out
    rc, _, err = run_cli(
        "eval",
        ["--interactive", "--annotations", ds.val, "--images", ds.images,
         "--detector", "grounding-dino", "--out", tmp_path / "bad"],
        capsys,
    )  # fmt: skip
    assert rc == 2 and "--interactive" in err and not (tmp_path / "bad").exists()
    rc, _, err = run_cli(
        "eval", ["--interactive", "--annotations", ds.val, "--out", tmp_path / "bad"], capsys
    )
    assert rc == 2 and "--images" in err and not (tmp_path / "bad").exists()
