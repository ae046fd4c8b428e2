"""``grounded-sam eval``, ``eval --config`` and ``eval compare`` (SAM/detectors injected)."""

from __future__ import annotations

import json

import pytest
import yaml

import grounded_sam.eval.config as eval_config
import grounded_sam.eval.runner as eval_runner
from grounded_sam.cli import main
from grounded_sam.errors import InputError
from grounded_sam.eval import compare_runs, load_config
from grounded_sam.testing.eval_data import EmptyDetector, PerfectPredictor
from grounded_sam.testing.pipeline import SAM_FAMILIES, sam_by_name, sam_family

# pycocotools' Cython RLE objects trip a numpy 2 DeprecationWarning on every decode
pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"
)


_real_build = eval_runner.build_pipeline


@pytest.fixture
def injected(coco, monkeypatch):
    """build_pipeline with the perfect-mask SAM stand-in; detector 'empty-stub' finds nothing."""
    specs = []

    def build(spec, *, sam=None, detector=None):
        specs.append(spec)
        det = EmptyDetector() if spec.detector == "empty-stub" else detector
        return _real_build(spec, sam=PerfectPredictor(coco), detector=det)

    monkeypatch.setattr(eval_runner, "build_pipeline", build)
    monkeypatch.setattr(eval_config, "build_pipeline", build)
    return specs


def test_eval_command_writes_outputs(coco, tmp_path, injected, capsys):
    out = tmp_path / "run"
    argv = ["eval", "--annotations", str(coco["annotations"]), "--images", str(coco["images"]),
            "--detector", "gt-boxes", "--sam", "mobile_sam", "--out", str(out), "--limit", "2"]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "gt-boxes__mobile_sam: mask_AP 1.000" in printed
    m = json.loads((out / "metrics.json").read_text())
    assert m["n_images"] == 2 and m["n_images_total"] == 2 and m["mask_AP"] == pytest.approx(1.0)
    assert m["config"]["run"]["sam"] == "mobile_sam" and m["config"]["dataset"]["limit"] == 2
    # the same command again resumes: nothing left to do, same metrics
    assert main(argv) == 0
    assert json.loads((out / "metrics.json").read_text())["mask_AP"] == m["mask_AP"]
    # a larger --limit extends the run
    assert main(argv[:-1] + ["3"]) == 0
    assert json.loads((out / "metrics.json").read_text())["n_images"] == 3
    assert injected[0].detector == "gt-boxes" and injected[0].detector_args == {}


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--detector", "gt-boxes"], "give --out"),
        (["--out", "X"], "give --detector"),
        (
            ["--detector", "gt-boxes", "--out", "X", "-D", "box_threshold=0.3"],
            "--detector gt-boxes has no option 'box_threshold'",
        ),
        (["--detector", "gt-boxes", "--out", "X", "--masks", "m"], "cannot be combined"),
    ],
)
def test_eval_usage_errors(coco, tmp_path, capsys, extra, message, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = [
        "eval",
        "--annotations",
        str(coco["annotations"]),
        "--images",
        str(coco["images"]),
        *extra,
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and message in err[0]


def test_bad_detector_arg_syntax(capsys):
    with pytest.raises(SystemExit) as e:
        main(["eval", "-D", "no_equals_sign"])
    assert e.value.code == 2
    assert "expected KEY=VALUE" in capsys.readouterr().err


def _grid_yaml(coco, tmp_path) -> str:
    cfg = {
        "out": str(tmp_path / "grid"),
        "dataset": {"type": "coco", "annotations": str(coco["annotations"]), "images": str(coco["images"])},
        "detectors": [{"name": "oracle", "detector": "gt-boxes"}, {"name": "none", "detector": "empty-stub"}],
        "sams": [{"name": "stub-a", "sam": "mobile_sam"}, {"name": "stub-b", "sam": "vit_b"}],
    }  # fmt: skip
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def test_config_grid_runs_and_compares(coco, tmp_path, injected, capsys):
    cfg = _grid_yaml(coco, tmp_path)
    assert main(["eval", "--config", cfg, "--limit", "2"]) == 0
    grid = tmp_path / "grid"
    names = ["oracle__stub-a", "oracle__stub-b", "none__stub-a", "none__stub-b"]
    assert [s.name for s in injected] == names
    assert [s.sam for s in injected] == ["mobile_sam", "vit_b", "mobile_sam", "vit_b"]
    for name in names:
        m = json.loads((grid / name / "metrics.json").read_text())
        assert m["n_images"] == 2
        assert m["mask_AP"] == (pytest.approx(1.0) if name.startswith("oracle") else 0.0)
    table = (grid / "comparison.md").read_text()
    for name in names:
        assert f"| {name} |" in table
    assert (grid / "comparison.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "comparison:" in capsys.readouterr().out
    assert main(["eval", "--config", cfg, "--detector", "gt-boxes"]) == 2
    assert "drop --detector" in capsys.readouterr().err


def test_compare_command(coco, tmp_path, injected, capsys):
    cfg = _grid_yaml(coco, tmp_path)
    assert main(["eval", "--config", cfg, "--limit", "1"]) == 0
    runs = [str(tmp_path / "grid" / n) for n in ("oracle__stub-a", "none__stub-b")]
    out = tmp_path / "cmp"
    assert main(["eval", "compare", *runs, "--out", str(out)]) == 0
    table = (out / "comparison.md").read_text()
    rows = [
        line
        for line in table.splitlines()
        if line.startswith("| oracle") or line.startswith("| none")
    ]
    assert len(rows) == 2
    assert rows[0].split("|")[7].strip() == "1.000"  # mask AP column
    assert rows[1].split("|")[7].strip() == "0.000"
    assert (out / "comparison.png").stat().st_size > 1000
    assert "wrote" in capsys.readouterr().out
    assert main(["eval", "compare", str(tmp_path / "missing"), "--out", str(out)]) == 2
    with pytest.raises(ValueError, match="at least one"):
        compare_runs([], out)


def test_load_config_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("dataset: {type: coco}\nout: x\ndetectors: []\nsams: [mobile_sam]\n")
    with pytest.raises(ValueError, match="'detectors' must be a non-empty list"):
        load_config(bad)
    bad.write_text("dataset: {}\nout: x\ndetectors: [gt-boxes]\nsams: [mobile_sam]\ntypo: 1\n")
    with pytest.raises(ValueError, match="unknown key"):
        load_config(bad)
    bad.write_text("dataset: {}\ndetectors: [gt-boxes]\nsams: [mobile_sam]\n")
    with pytest.raises(ValueError, match="give 'out'"):
        load_config(bad)
    cfg = load_config(bad, out=tmp_path / "o", limit=3)
    assert [r.name for r in cfg.runs] == ["gt-boxes__mobile_sam"] and cfg.limit == 3
    assert cfg.warmup == 1
    bad.write_text("dataset: {}\nout: x\ndetectors: [gt-boxes]\nsams: [mobile_sam]\nwarmup: -1\n")
    with pytest.raises(ValueError, match="warmup must be an integer >= 0"):
        load_config(bad)
    with pytest.raises(InputError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_config_precision_axis(tmp_path):
    """A SAM entry's ``precision`` reaches the run spec and its default name."""
    cfg_file = tmp_path / "grid.yaml"
    cfg_file.write_text(
        "dataset: {}\nout: x\ndetectors: [gt-boxes]\n"
        "sams: [{sam: mobile_sam}, {sam: mobile_sam, precision: int8}]\n"
    )
    runs = load_config(cfg_file).runs
    assert [(r.name, r.precision) for r in runs] == [
        ("gt-boxes__mobile_sam", "fp32"),
        ("gt-boxes__mobile_sam-int8", "int8"),
    ]
    cfg_file.write_text(
        "dataset: {}\nout: x\ndetectors: [gt-boxes]\nsams: [{sam: vit_b, precision: fp64}]\n"
    )
    with pytest.raises(ValueError, match="unknown precision 'fp64'"):
        load_config(cfg_file)


@pytest.mark.parametrize("name", ["coco_val2017", "refcoco_val"])
def test_shipped_configs_parse(name):
    from pathlib import Path

    cfg = load_config(Path(__file__).parents[2] / "configs" / "eval" / f"{name}.yaml")
    detectors = {r.detector for r in cfg.runs}
    assert {"gt-boxes", "grounding-dino", "yolo-clip"} <= detectors
    assert {r.sam for r in cfg.runs if r.refine_with_sam} == {"mobile_sam", "vit_h"}


@pytest.mark.slow
@pytest.mark.parametrize("family", SAM_FAMILIES)
def test_eval_cli_end_to_end_with_an_official_format_checkpoint(coco, tmp_path, family):
    """No injection: the CLI builds MobileSAM, or a reduced SAM 2.1 registered by name, from
    an official-format checkpoint file."""
    out = tmp_path / "run"
    with sam_family(family):
        by_name = sam_by_name(family)
        ckpt = by_name["sam_checkpoint"]
        argv = ["eval", "--annotations", str(coco["annotations"]), "--images", str(coco["images"]),
                "--detector", "gt-boxes", "--sam", by_name["sam"], "--sam-checkpoint", str(ckpt),
                "--device", "cpu", "--out", str(out)]  # fmt: skip
        assert main(argv) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["complete"] and m["n_images"] == 3 and m["n_detections"] == 5
    assert m["latency_ms"]["encoder"]["n"] == 3 and m["latency_ms"]["encoder"]["median"] > 0
    assert m["peak_memory"]["device"] == "cpu"
    assert m["config"]["run"]["sam_checkpoint"] == str(ckpt)
    assert 0.0 <= m["mIoU"] <= 1.0


def test_ctrl_c_leaves_partial_outputs_and_rerun_finishes(coco, tmp_path, monkeypatch, capsys):
    from grounded_sam.testing.eval_data import InterruptAfter

    interrupt = {"after": 2}

    def build(spec, *, sam=None, detector=None):
        pipe, oracle = _real_build(spec, sam=PerfectPredictor(coco), detector=detector)
        return (InterruptAfter(pipe, interrupt["after"]) if interrupt["after"] else pipe), oracle

    monkeypatch.setattr(eval_runner, "build_pipeline", build)
    out = tmp_path / "run"
    argv = ["eval", "--annotations", str(coco["annotations"]), "--images", str(coco["images"]),
            "--detector", "gt-boxes", "--out", str(out)]  # fmt: skip
    assert main(argv) == 130
    assert "interrupted" in capsys.readouterr().err
    partial = json.loads((out / "metrics.json").read_text())
    assert partial["complete"] is False and partial["n_images"] == 2
    assert "PARTIAL" in (out / "report.md").read_text()
    interrupt["after"] = 0
    assert main(argv) == 0
    done = json.loads((out / "metrics.json").read_text())
    assert done["complete"] is True and done["n_images"] == 3
    assert done["mask_AP"] == pytest.approx(1.0)


def test_compare_warns_about_datasets_only_when_the_data_differ():
    from grounded_sam.eval.compare import comparison_table

    def run(limit, annotations="a.json"):
        ds = {"type": "coco", "annotations": annotations, "images": "img", "limit": limit,
              "n_images": limit}  # fmt: skip
        return {"config": {"dataset": ds, "run": {"name": f"r{limit}"}}, "n_images": limit}

    table = comparison_table([run(2), run(3)])  # one dataset, two --limit values
    assert "different datasets" not in table and "different numbers of images" in table
    assert "different datasets" in comparison_table([run(2), run(2, "b.json")])
