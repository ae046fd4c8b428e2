"""``grounded-sam everything``: outputs, exit codes, error lines and atomic per-image folders.

Runs the CLI in-process with a MobileSAM-format checkpoint of perturbed random weights (and,
where masks are made, with a reduced SAM 2.1 in Meta's checkpoint format too). Random weights
keep nothing under SAM's default thresholds, so the runs switch the filters off.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from grounded_sam.testing.pipeline import (
    SAM_FAMILIES,
    error_lines,
    sam_args,
    sam_family,
    small_chelsea,
    write_png,
)
from grounded_sam.testing.pipeline import run_cli as _run_cli

KEEP_ALL = [
    "--points-per-side",
    "2",
    "--pred-iou-thresh",
    "0",
    "--stability-score-thresh",
    "0",
    "--box-nms-thresh",
    "1",
]


def run_cli(argv, capsys) -> tuple[int, str, str]:
    return _run_cli("everything", argv, capsys)


@pytest.mark.parametrize("family", SAM_FAMILIES)
def test_good_and_bad_images_in_one_batch(tmp_path, capsys, family):
    image = small_chelsea()
    good = write_png(image, tmp_path / "in" / "cat.png")
    bad = tmp_path / "in" / "notes.jpg"
    bad.write_text("not an image")
    out = tmp_path / "out"
    with sam_family(family):
        argv = [good, bad, *sam_args(family), *KEEP_ALL, "--out", out]
        rc, stdout, err = run_cli(argv, capsys)
    assert rc == 2
    lines = error_lines(err)
    assert len(lines) == 1 and "notes.jpg" in lines[0]
    assert "Traceback" not in err
    assert not (out / "notes").exists()
    assert sorted(p.name for p in out.iterdir()) == ["cat"]  # no temp folders left

    folder = out / "cat"
    doc = json.loads((folder / "result.json").read_text())
    anns = doc["annotations"]
    assert doc["image"]["height"] == image.shape[0] and doc["image"]["width"] == image.shape[1]
    assert len(anns) == 12  # 4 points x 3 masks, all kept
    assert "12 masks" in stdout
    pngs = sorted((folder / "masks").glob("*.png"))
    assert len(pngs) == len(anns)
    for ann, png in zip(anns, pngs, strict=True):
        assert ann["label"] == "object"
        m = mask_utils.decode(ann["segmentation"]).astype(bool)
        assert np.array_equal(m, np.array(Image.open(png)) > 0)
        assert ann["area"] == int(m.sum())
        ys, xs = np.nonzero(m)
        assert ann["bbox"] == [xs.min(), ys.min(), xs.max() + 1 - xs.min(), ys.max() + 1 - ys.min()]
    overlay = np.array(Image.open(folder / "overlay.png"))
    assert overlay.shape == image.shape and not np.array_equal(overlay, image)


def test_bad_file_alone_and_bad_knob(tmp_path, capsys):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG garbage")
    out = tmp_path / "out"
    rc, _, err = run_cli([bad, *sam_args(), *KEEP_ALL, "--out", out], capsys)
    assert rc == 2 and len(error_lines(err)) == 1 and "broken.png" in err
    assert not (out / "broken").exists()

    good = write_png(small_chelsea(), tmp_path / "cat.png")
    rc, _, err = run_cli([good, *sam_args(), "--points-per-side", "0", "--out", out], capsys)
    assert rc == 2
    assert error_lines(err) == [line for line in err.splitlines() if line]  # one error line only
    assert err == "error: --points-per-side must be >= 1, got 0\n" and not (out / "cat").exists()
    rc, _, err = run_cli([good, *sam_args(), "--min-area", "-3", "--out", out], capsys)
    assert rc == 2 and err == "error: --min-area must be >= 0.0, got -3.0\n"

    rc, _, err = run_cli([good, "--sam-checkpoint", tmp_path / "missing.pt", "--out", out], capsys)
    assert rc == 2 and "missing.pt" in err
