"""``grounded-sam segment``: outputs, exit codes, error lines and atomic per-image folders.

Runs the CLI in-process (``grounded_sam.cli.main``) with tiny random local models and a
MobileSAM-format checkpoint; the tests that run SAM also run with a reduced SAM 2.1 (Meta's
checkpoint format, registered by name for the test). One test goes through
``python -m grounded_sam`` for real.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from grounded_sam.detectors import Detections, register_detector
from grounded_sam.detectors import base as det_base
from grounded_sam.pipeline import GroundedSAM, Result
from grounded_sam.testing.pipeline import (
    PHRASES,
    SAM_FAMILIES,
    TEXT,
    error_lines,
    gdino_dir,
    gdino_threshold,
    sam_args,
    sam_family,
    small_chelsea,
    write_png,
)
from grounded_sam.testing.pipeline import run_cli as _run_cli

H, W = 150, 226  # small_chelsea()


def run_cli(argv, capsys) -> tuple[int, str, str]:
    return _run_cli("segment", argv, capsys)


def entries(path: Path) -> list[str]:
    """Everything in ``path`` (hidden temp folders included), sorted; [] if it is absent."""
    return sorted(p.name for p in path.iterdir()) if path.exists() else []


@pytest.fixture(params=SAM_FAMILIES)
def family(request) -> str:
    """Each SAM family in turn (``--sam`` by name; see ``sam_args``)."""
    with sam_family(request.param):
        yield request.param


@pytest.fixture()
def good_png(tmp_path) -> Path:
    return write_png(small_chelsea(), tmp_path / "in" / "chelsea.png")


def check_output_folder(folder: Path, image_size: tuple[int, int]) -> dict:
    """result.json decodes to the image size, one mask PNG per annotation, an overlay."""
    doc = json.loads((folder / "result.json").read_text())
    assert (doc["image"]["height"], doc["image"]["width"]) == image_size
    anns = doc["annotations"]
    pngs = sorted((folder / "masks").iterdir())
    assert len(pngs) == len(anns)
    for ann, png in zip(anns, pngs, strict=True):
        decoded = mask_utils.decode(ann["segmentation"]).astype(bool)
        assert decoded.shape == image_size
        np.testing.assert_array_equal(np.array(Image.open(png)) == 255, decoded)
        assert png.name.startswith(f"{ann['id'] - 1:03d}_")
    overlay = np.array(Image.open(folder / "overlay.png"))
    assert overlay.shape == (*image_size, 3) and overlay.dtype == np.uint8
    return doc


def test_text_mixed_batch(tmp_path, good_png, capsys, family):
    """Good image done, every bad one reported in one line and leaving no folder, exit 2."""
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "empty.jpg").write_bytes(b"")
    (bad / "notes.jpg").write_text("this is a text file, not a JPEG\n")
    Image.fromarray(small_chelsea()).save(bad / "full.jpg", quality=90)
    data = (bad / "full.jpg").read_bytes()
    (bad / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (bad / "full.jpg").unlink()
    missing = bad / "missing.png"
    out = tmp_path / "out"
    thr = gdino_threshold(1)
    argv = [
        bad / "empty.jpg",
        good_png,
        bad / "notes.jpg",
        bad / "truncated.jpg",
        missing,
        "--text",
        TEXT,
        "--detector-model",
        gdino_dir(),
        "--box-threshold",
        thr,
        "--text-threshold",
        "0",
        *sam_args(family),
        "--out",
        out,
    ]
    rc, stdout, stderr = run_cli(argv, capsys)
    assert rc == 2, stderr
    assert "Traceback" not in stderr
    errors = error_lines(stderr)
    assert len(errors) == 4
    for name, why in [
        ("empty.jpg", "empty"),
        ("notes.jpg", "not a readable image"),  # also with ultralytics imported
        ("truncated.jpg", "truncated"),
        ("missing.png", "not found"),
    ]:
        assert sum(name in e and why in e for e in errors) == 1, (name, errors)
    assert "4 of 5 images failed" in stderr
    assert entries(out) == ["chelsea"]  # nothing else, no temp folders left behind
    doc = check_output_folder(out / "chelsea", (H, W))
    assert 1 <= len(doc["annotations"]) <= 2
    assert {a["label"] for a in doc["annotations"]} <= set(PHRASES)
    assert all(a["score"] >= thr for a in doc["annotations"])
    assert set(doc["timings"]) == {"detector", "encoder", "decoder", "total"}
    # (ultralytics, imported by the MobileSAM test fixture, may print its own notes to stdout)
    lines = [line for line in stdout.splitlines() if " -> " in line]
    assert len(lines) == 1 and lines[0].startswith(f"{good_png}: ")
    assert "instance" in lines[0] and str(out / "chelsea") in lines[0]


def test_zero_detections_is_success(tmp_path, good_png, capsys):
    out = tmp_path / "out"
    argv = [good_png, "--text", "a cat", "--detector-model", gdino_dir(), "--box-threshold", "1"]
    rc, stdout, stderr = run_cli([*argv, *sam_args(), "--out", out], capsys)
    assert rc == 0, stderr
    doc = check_output_folder(out / "chelsea", (H, W))
    assert doc["annotations"] == []
    assert "0 instances" in stdout


def test_points_and_duplicate_stems(tmp_path, good_png, capsys, family):
    twin = write_png(small_chelsea(), tmp_path / "other" / "chelsea.png")
    out = tmp_path / "out"
    argv = [good_png, twin, "--point", "100,70", "--point", "20,20,0", *sam_args(family)]
    argv += ["--out", out]
    rc, stdout, stderr = run_cli(argv, capsys)
    assert rc == 0, stderr
    assert entries(out) == ["chelsea", "chelsea_2"]
    docs = [check_output_folder(out / name, (H, W)) for name in ("chelsea", "chelsea_2")]
    for doc in docs:
        assert [a["label"] for a in doc["annotations"]] == ["point"]
    assert docs[0]["annotations"][0]["segmentation"] == docs[1]["annotations"][0]["segmentation"]
    assert docs[1]["timings"]["encoder"] == 0.0  # same pixels: cached embedding
    assert len([line for line in stdout.splitlines() if " -> " in line]) == 2


def test_boxes_are_clipped(tmp_path, good_png, capsys, family):
    out = tmp_path / "out"
    argv = [good_png, "--box", "-20,10,80,90", "--box", "150,-20,400,60", "--multimask"]
    rc, _, stderr = run_cli([*argv, *sam_args(family), "--out", out], capsys)
    assert rc == 0, stderr
    doc = check_output_folder(out / "chelsea", (H, W))
    assert [a["label"] for a in doc["annotations"]] == ["box", "box"]
    assert doc["annotations"][0]["bbox"] == pytest.approx([0, 10, 80, 80])
    assert doc["annotations"][1]["bbox"] == pytest.approx([150, 0, W - 150, 60])


def test_box_outside_the_image_is_an_error(tmp_path, good_png, capsys):
    out = tmp_path / "out"
    rc, _, stderr = run_cli([good_png, "--box", "300,10,400,50", *sam_args(), "--out", out], capsys)
    assert rc == 2 and "Traceback" not in stderr
    errors = error_lines(stderr)
    assert len(errors) == 1 and "degenerate" in errors[0] and "chelsea.png" in errors[0]
    assert entries(out) == []


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--text", ""], "has no phrases"),
        (["--text", " . "], "has no phrases"),
        (["--box", "1,2,3"], "X0,Y0,X1,Y1"),
        (["--box", "5,5,1,1"], "degenerate"),
        (["--box", "1,2,3,nan"], "finite"),
        (["--point", "abc"], "X,Y or X,Y,LABEL"),
        (["--point", "1,x"], "numbers"),
        (["--point", "1,2,5"], "1 (foreground) or 0 (background)"),
        ([], "nothing to segment"),
        (["--text", "a cat", "--box", "1,1,5,5"], "not both"),
        (["--point", "1,1", "--box", "1,1,5,5", "--box", "2,2,9,9"], "one --box"),
        (["--text", "a cat", "--no-refine"], "--no-refine needs"),
        (["--point", "1,1", "--no-refine"], "--no-refine applies"),
        (["--text", "a cat", "--detector", "nope"], "unknown detector 'nope'"),
        (
            ["--text", "a cat", "--yolo", "x.pt"],
            "--yolo does not apply to --detector grounding-dino",
        ),
        (
            ["--text", "a cat", "--detector", "yolo-clip", "--text-threshold", "0.2"],
            "--text-threshold does not apply to --detector yolo-clip",
        ),
        (["--text", "a cat", "--box-threshold", "2"], "[0, 1]"),
        (["--point", "1,1", "--sam", "vit_q"], "vit_q"),
        (["--point", "1,1", "--sam-checkpoint", "/nonexistent/sam.pt"], "no such file"),
    ],
)
def test_bad_arguments_exit_2_with_one_error_line(tmp_path, good_png, capsys, argv, message):
    out = tmp_path / "out"
    rc, stdout, stderr = run_cli([good_png, *argv, "--out", out], capsys)
    assert rc == 2
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], stderr
    assert stdout == "" and not out.exists()


class _BoomDetector:
    """A registered detector whose detect() has a bug (an internal error)."""

    def __init__(self, **kwargs) -> None:
        self.kwargs = kwargs

    def detect(self, image, text) -> Detections:
        raise RuntimeError("boom: a bug inside the detector")


def test_internal_error_exits_1_traceback_only_with_debug(tmp_path, good_png, capsys, monkeypatch):
    monkeypatch.setattr(det_base, "_REGISTERED", {})  # registered for this test only
    register_detector("pipeline-test-boom")(_BoomDetector)
    out = tmp_path / "out"
    argv = [good_png, "--text", "a cat", "--detector", "pipeline-test-boom", *sam_args()]
    rc, _, stderr = run_cli([*argv, "--out", out], capsys)
    assert rc == 1 and "Traceback" not in stderr
    assert stderr.strip().splitlines() == [
        "error: internal error: RuntimeError: boom: a bug inside the detector "
        "(rerun with --debug for a traceback)"
    ]
    assert entries(out) == []
    rc, _, stderr = run_cli([*argv, "--out", out, "--debug"], capsys)
    assert rc == 1 and "Traceback" in stderr


def test_crash_while_saving_leaves_no_half_output(tmp_path, good_png, capsys, monkeypatch):
    def fake_segment(self, image, text=None, **kwargs):
        return Result.empty((H, W), image=np.asarray(small_chelsea()))

    def crashing_save(self, out_dir, *args, **kwargs):
        (Path(out_dir) / "result.json").write_text("{")  # half written ...
        raise OSError("disk full")  # ... then the crash

    monkeypatch.setattr(GroundedSAM, "segment", fake_segment)
    monkeypatch.setattr(Result, "save", crashing_save)
    out = tmp_path / "out"
    (out / "chelsea").mkdir(parents=True)
    (out / "chelsea" / "old.txt").write_text("previous run")
    rc, _, stderr = run_cli([good_png, "--point", "5,5", *sam_args(), "--out", out], capsys)
    assert rc == 1 and "disk full" in stderr
    assert entries(out) == ["chelsea"]  # no temp folder left, previous output untouched
    assert entries(out / "chelsea") == ["old.txt"]


def test_real_entry_point_bad_input(tmp_path):
    """Through ``python -m grounded_sam``: exit 2, one error line, no traceback, no folder."""
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "grounded_sam", "segment", str(tmp_path / "nope.png")]
    cmd += ["--point", "3,3", *sam_args(), "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    errors = error_lines(proc.stderr)
    assert len(errors) == 1 and "not found" in errors[0] and "nope.png" in errors[0]
    assert not out.exists() or entries(out) == []


@pytest.mark.parametrize(
    ("argv", "hint"),
    [
        (["segment", "x.png", "--foo", "--out", "o"], "grounded-sam segment --help"),
        (
            ["label", "photos", "--classes", "cat", "--out", "o", "--foo"],
            "grounded-sam label --help",
        ),
        (["weights", "list", "--foo"], "grounded-sam weights --help"),
    ],
)
def test_unknown_option_points_to_the_subcommand_help(argv, hint, capsys):
    from grounded_sam.cli import main

    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2
    assert err == f"error: unrecognized arguments: --foo (see `{hint}`)\n"


def test_output_folders_get_the_umask_mode_not_mkdtemp_0700(tmp_path):
    """Per-image output folders are renamed from a ``mkdtemp`` folder (0700); they end with
    the mode ``mkdir`` gives under the process umask, like every other folder."""
    import stat

    from grounded_sam._files import dir_mode
    from grounded_sam.cli._common import atomic_dir

    umask = os.umask(0o022)
    os.umask(umask)
    with atomic_dir(tmp_path / "out" / "cat") as tmp:
        (tmp / "result.json").write_text("{}")
    mode = stat.S_IMODE((tmp_path / "out" / "cat").stat().st_mode)
    assert mode == dir_mode() == 0o777 & ~umask
