"""``grounded-sam export-onnx``: output, summary and errors."""

from __future__ import annotations

import json

import onnxruntime as ort

from grounded_sam.testing.pipeline import error_lines, mobile_sam_checkpoint, run_cli


def test_export_onnx_writes_the_files(tmp_path, capsys):
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
            "--no-verify",
        ],  # fmt: skip
        capsys,
    )
    assert rc == 0, err
    assert "exporting the image encoder of mobile_sam (opset 17)" in err
    lines = stdout.splitlines()
    assert lines[0].startswith(f"{out / 'encoder.onnx'} (") and lines[0].endswith(", float32)")
    assert lines[1].endswith(", float32, 1 masks)")
    meta = json.loads((out / "sam_onnx.json").read_text())
    assert meta["model"] == "mobile_sam" and meta["checkpoint"] == str(mobile_sam_checkpoint())
    assert meta["decoder"]["single_mask"] is True and "verification" not in meta
    dec = ort.InferenceSession(str(out / "decoder.onnx"), providers=["CPUExecutionProvider"])
    assert [o.shape for o in dec.get_outputs()] == [
        [1, 1, "height", "width"],
        [1, 1],
        [1, 1, 256, 256],
    ]


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
