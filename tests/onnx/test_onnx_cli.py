"""``grounded-sam export-onnx``: output, summary and errors."""

from __future__ import annotations

import json
import re

import onnxruntime as ort

from grounded_sam.errors import InputError
from grounded_sam.testing.pipeline import error_lines, mobile_sam_checkpoint, run_cli


def test_export_onnx_writes_the_files(tmp_path, capsys):
    """``--single-mask --quantize`` (the web demo's decoder): both files written, the
    single-mask decoder verified against PyTorch, the int8 IoU measured, exit 0."""
    out = tmp_path / "mobile"
    rc, stdout, err = run_cli(
        "export-onnx",
        [
            "--sam",
            "mobile_sam",
            "--sam-checkpoint",
            mobile_sam_checkpoint(),
            "--out",
            out,
            "--single-mask",
            "--quantize",
        ],  # fmt: skip
        capsys,
    )
    assert rc == 0, err
    assert "exporting the image encoder of mobile_sam (opset 17)" in err
    assert "verifying the encoder and the single-mask decoder against PyTorch" in err
    assert ".onnx-export-" not in err + stdout
    lines = stdout.splitlines()
    assert lines[0].startswith(f"{out / 'encoder.onnx'} (") and lines[0].endswith(", int8)")
    assert lines[1].endswith(", int8, 1 masks)")
    assert re.fullmatch(
        r"verified against PyTorch: encoder \S+, single-mask decoder logits \S+ \(relative\), "
        r"masks agree on \S+% of pixels",
        lines[2],
    ), lines[2]
    assert lines[3].startswith("int8 masks vs float32: IoU mean ")
    assert sorted(p.name for p in out.iterdir()) == [
        "decoder.onnx",
        "encoder.onnx",
        "sam_onnx.json",
    ]
    meta = json.loads((out / "sam_onnx.json").read_text())
    assert meta["model"] == "mobile_sam" and meta["checkpoint"] == str(mobile_sam_checkpoint())
    assert meta["decoder"]["single_mask"] is True and meta["quantized"] is True
    v = meta["verification"]
    assert v["single_mask"] is True and v["logits_rel_diff"] < 1e-4
    assert v["end_to_end_agreement"] >= 0.999
    assert meta["quantization"]["mask_iou_vs_fp32"]["n"] >= 3
    dec = ort.InferenceSession(str(out / "decoder.onnx"), providers=["CPUExecutionProvider"])
    assert [o.shape for o in dec.get_outputs()] == [
        [1, 1, "height", "width"],
        [1, 1],
        [1, 1, 256, 256],
    ]


def _fail_export(monkeypatch, error):
    from grounded_sam.onnx import export

    def fail(model, folder, *args, **kwargs):
        (folder / "encoder.onnx").write_bytes(b"half")
        raise error(f"{folder / 'encoder.onnx'} is broken")

    monkeypatch.setattr(export, "_export_files", fail)


def test_export_onnx_failure_leaves_no_folder(tmp_path, capsys, monkeypatch):
    """A failed or interrupted export removes the --out folder it created, keeps one the user
    had (and what it holds), and its error names --out, not the hidden temporary folder."""
    args = ["--sam", "mobile_sam", "--sam-checkpoint", mobile_sam_checkpoint(), "--no-verify"]
    _fail_export(monkeypatch, InputError)
    out = tmp_path / "new"
    rc, _, err = run_cli("export-onnx", [*args, "--out", out], capsys)
    assert rc == 2 and error_lines(err) == [f"error: {out / 'encoder.onnx'} is broken"], err
    assert not out.exists()
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    rc, _, err = run_cli("export-onnx", [*args, "--out", mine], capsys)
    assert rc == 2 and f"error: {mine / 'encoder.onnx'} is broken" in err, err
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]
    _fail_export(monkeypatch, KeyboardInterrupt)
    rc, _, err = run_cli("export-onnx", [*args, "--out", out], capsys)
    assert rc == 130 and "interrupted" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]


def test_export_onnx_errors(tmp_path, capsys):
    ckpt = mobile_sam_checkpoint()
    cases = [
        (["--sam", "mobile_sam", "--sam-checkpoint", tmp_path / "nope.pt", "--out", tmp_path],
         "--sam-checkpoint"),
        (["--sam", "vit_q", "--out", tmp_path / "o"], "unknown SAM variant 'vit_q'"),
        (["--sam", "mobile_sam", "--sam-checkpoint", ckpt, "--out", tmp_path / "o",
          "--opset", "11"], "opset must be an integer from 14 to 20, got 11"),
        (["--sam", "vit_b", "--sam-checkpoint", ckpt, "--out", tmp_path / "o"], "vit_b"),
    ]  # fmt: skip
    (tmp_path / "file").write_text("x")
    cases.append(
        (["--sam", "mobile_sam", "--out", tmp_path / "file"], "exists and is not a folder")
    )
    for argv, message in cases:
        rc, _, err = run_cli("export-onnx", argv, capsys)
        assert rc == 2, (argv, err)
        assert len(error_lines(err)) == 1 and message in err, err
        assert "Traceback" not in err
    rc, _, err = run_cli("export-onnx", ["--out", tmp_path / "o"], capsys)
    assert rc == 2 and "--sam" in err
