"""The seams the package is built on: one-way imports, one error hierarchy, one phrase
parser and label policy, detector flags generated from declarations."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from grounded_sam.cli import attach_negative_values, build_parser, main
from grounded_sam.detectors import Detections, Option, register_detector
from grounded_sam.errors import GroundedSAMError, InputError, MissingDependency, WeightsError
from grounded_sam.testing.pipeline import (
    error_lines,
    gdino_dir,
    run_cli,
    sam_args,
    small_chelsea,
    write_png,
    yolo_clip_kwargs,
)


def _modules_after(statement: str) -> set[str]:
    code = f"import sys; {statement}; print('\\n'.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def test_hub_never_imports_the_model():
    mods = _modules_after("import grounded_sam.hub")
    assert not any(m.startswith("grounded_sam.model") for m in mods), sorted(mods)
    assert not any(m.startswith(("transformers", "ultralytics", "open_clip")) for m in mods)


@pytest.mark.parametrize(
    "module",
    [
        "grounded_sam",
        "grounded_sam.errors",
        "grounded_sam.hub",
        "grounded_sam.weights",
        "grounded_sam.model",
        "grounded_sam.predictor",
        "grounded_sam.pipeline",
        "grounded_sam.detectors",
        "grounded_sam.cli",
    ],
)
def test_every_module_imports_alone(module):
    """No import circle: each module imports first in a fresh interpreter."""
    assert module in _modules_after(f"import {module}")


def test_public_names_resolve_lazily():
    """Every name in grounded_sam.__all__ resolves, and importing the package loads none of
    the heavy libraries (torch, onnxruntime, ray, transformers) until a name is used."""
    mods = _modules_after("import grounded_sam")
    assert not any(m.split(".")[0] in {"torch", "onnxruntime", "ray", "transformers"} for m in mods)
    import grounded_sam

    for name in grounded_sam.__all__:
        assert getattr(grounded_sam, name) is not None, name
    assert set(grounded_sam.__all__) >= {"segment", "label", "merge", "export_onnx"}


def test_error_hierarchy():
    assert issubclass(InputError, ValueError) and issubclass(InputError, GroundedSAMError)
    assert issubclass(WeightsError, ValueError) and issubclass(WeightsError, GroundedSAMError)
    assert issubclass(MissingDependency, ImportError)
    from grounded_sam import weights

    assert weights.WeightsError is WeightsError


def test_internal_error_exits_1_and_bad_input_exits_2(monkeypatch, capsys, tmp_path):
    from grounded_sam import pipeline

    img = write_png(small_chelsea(), tmp_path / "cat.png")

    def bug(*args, **kwargs):
        raise ValueError("an internal bug, not the user's input")

    monkeypatch.setattr(pipeline.GroundedSAM, "segment", bug)
    rc, _, err = run_cli(
        "segment", [img, "--box", "1,1,50,50", *sam_args(), "--out", tmp_path / "o"], capsys
    )
    assert rc == 1
    assert "internal error: ValueError: an internal bug" in err and "--debug" in err
    monkeypatch.undo()
    rc, _, err = run_cli(
        "segment", [img, "--box", "1,1,50,50", "--sam", "nope", "--out", tmp_path / "o"], capsys
    )
    assert rc == 2 and error_lines(err) == [
        line for line in err.splitlines() if line.startswith("error:")
    ]
    assert "unknown SAM variant 'nope'" in err and "Traceback" not in err


def test_negative_coordinates_without_private_argparse_hooks():
    assert attach_negative_values(["segment", "--box", "-30,10,100,90", "--point", "-5,3"]) == [
        "segment",
        "--box=-30,10,100,90",
        "--point=-5,3",
    ]
    args = build_parser().parse_args(
        attach_negative_values(["segment", "x.png", "--box", "-30,10,100,90", "--out", "o"])
    )
    assert args.box == [(-30.0, 10.0, 100.0, 90.0)]


@pytest.mark.parametrize("command", ["segment", "everything", "eval"])
def test_every_subcommand_takes_the_same_detector_flags(command):
    from grounded_sam.cli._common import detector_kwargs

    argv = [command]
    if command in ("segment", "everything"):
        argv += ["x.png", "--out", "o"]
    argv += [
        "--detector",
        "grounding-dino",
        "--detector-model",
        "some/dir",
        "--box-threshold",
        "0.35",
        "-D",
        "nms_threshold=0.5",
    ]
    args = build_parser().parse_args(argv)
    assert detector_kwargs(args) == {
        "model": "some/dir",
        "box_threshold": 0.35,
        "nms_threshold": 0.5,
    }
    args = build_parser().parse_args(
        [*argv[:-6], "--detector", "yolo-clip", "--box-threshold", "0.2"]
    )
    assert detector_kwargs(args) == {"score_threshold": 0.2}  # yolo-clip's own name for it


def test_a_flag_and_d_setting_the_same_option_is_refused():
    from grounded_sam.cli._common import UsageError, detector_kwargs

    argv = ["segment", "x.png", "--out", "o", "--box-threshold", "0.5"]
    args = build_parser().parse_args([*argv, "-D", "box_threshold=0.95"])
    with pytest.raises(UsageError, match=r"-D box_threshold=0.95 and --box-threshold both set"):
        detector_kwargs(args)
    args = build_parser().parse_args([*argv, "--detector", "yolo-clip", "-D", "score_threshold=1"])
    with pytest.raises(UsageError, match="and --box-threshold both set score_threshold"):
        detector_kwargs(args)


def test_plugin_detector_gets_flags_from_its_declared_options(capsys, tmp_path):
    calls = []

    @register_detector("gs-test-plugin")
    class Plugin:
        options = (Option("min_side", int, 10, "smallest box side", metavar="PX"),)
        returns_masks = False
        accepts_device = False

        def __init__(self, min_side: int = 10) -> None:
            calls.append(min_side)

        def detect(self, image, phrases):
            return Detections(boxes=[[5, 5, 60, 40]], scores=[0.9], labels=[phrases[0]])

    img = write_png(small_chelsea(), tmp_path / "cat.png")
    out = tmp_path / "out"
    rc, stdout, err = run_cli(
        "segment",
        [
            img,
            "--text",
            "A Cat",
            "--detector",
            "gs-test-plugin",
            "--min-side",
            "7",
            *sam_args(),
            "--out",
            out,
        ],
        capsys,
    )
    assert rc == 0, err
    assert calls == [7]
    import json

    doc = json.loads((out / "cat" / "result.json").read_text())
    assert [a["label"] for a in doc["annotations"]] == ["A Cat"]
    rc, _, err = run_cli(
        "segment",
        [
            img,
            "--text",
            "a cat",
            "--detector",
            "gs-test-plugin",
            "--min-side",
            "seven",
            *sam_args(),
            "--out",
            out,
        ],
        capsys,
    )
    assert rc == 2 and "--min-side expects a number, got 'seven'" in err


def test_same_prompt_same_labels_from_every_detector():
    """Labels are the phrases as written, whitespace-normalised, whichever detector runs."""
    from grounded_sam.detectors import build_detector

    text = "A  Cat.  a DOG."
    expected = {"A Cat", "a DOG"}
    gd = build_detector("grounding-dino", model=gdino_dir(), box_threshold=0.0, device="cpu")
    yc = build_detector("yolo-clip", **yolo_clip_kwargs(), device="cpu")
    for det in (gd, yc):
        labels = det.detect(small_chelsea(), text).labels
        assert labels and set(labels) <= expected, (type(det).__name__, labels)
        assert set(det.detect(small_chelsea(), " a   DOG ").labels) == {"a DOG"}


def test_detection_boxes_clipped_once_in_the_pipeline():
    from grounded_sam.pipeline import GroundedSAM
    from grounded_sam.testing.pipeline import StubDetector, tiny_sam

    det = StubDetector([[-10, -10, 500, 80]], [0.5], ["a cat"])
    dets, _ = GroundedSAM(det, tiny_sam()).detect(small_chelsea(), ["a cat"])
    np.testing.assert_allclose(dets.boxes, [[0, 0, 226, 80]])


def test_main_reads_sys_argv(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["grounded-sam", "weights", "list"])
    assert main() == 0
    assert "vit_b" in capsys.readouterr().out


def test_test_file_names_are_unique():
    """pytest imports test files by basename (the test folders are not packages): two files of
    one name in different folders stop the collection of the whole suite."""
    from collections import Counter
    from pathlib import Path

    names = Counter(p.name for p in Path(__file__).parent.rglob("test_*.py"))
    assert [n for n, c in names.items() if c > 1] == []
