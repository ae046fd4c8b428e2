"""``finetune()`` / ``grounded-sam finetune`` end to end on tiny models: run files, determinism,
SIGKILL + resume, and bad inputs that leave nothing behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from grounded_sam.errors import InputError, WeightsError
from grounded_sam.masks import encode_rle
from grounded_sam.testing.pipeline import error_lines, mobile_sam_checkpoint, run_cli
from grounded_sam.train.checkpoint import load_model
from grounded_sam.train.run import finetune


def _run(shapes, tiny, ckpt, out, **kw):
    args = dict(sam=tiny, sam_checkpoint=ckpt, device="cpu", show_progress=False)
    args.update(kw)
    return finetune(shapes.train, shapes.images, out, **args)


def _tensors(path: Path) -> dict:
    return torch.load(path, weights_only=True)


def test_run_writes_checkpoint_metrics_log_and_report(
    shapes, tiny, tiny_checkpoint, fast, tmp_path
):
    out = tmp_path / "run"
    res = _run(shapes, tiny, tiny_checkpoint, out, val_annotations=shapes.val, max_clicks=5,
               save_every=2, **fast)  # fmt: skip
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "cache", "eval_before.json", "train_log.jsonl", "state.pt",
            "checkpoint.pt", "metrics.json", "report.md", "loss.png"} <= names  # fmt: skip
    assert not [n for n in names if n.endswith(".tmp")]
    m = json.loads((out / "metrics.json").read_text())
    assert m == json.loads(json.dumps(res.metrics, default=str))
    n_train = len(json.loads(shapes.train.read_text())["annotations"])
    assert m["steps"] == -(-n_train // fast["batch_size"]) and m["complete"]
    assert m["val"]["instances"] == len(json.loads(shapes.val.read_text())["annotations"])
    for key in ("box_mIoU", "fill_box_mIoU", "mIoU@1", "mIoU@3", "mIoU@5", "NoC@85", "NoC@90"):
        assert m["before"][key] is not None and m["after"][key] is not None
    assert m["before"]["fill_box_mIoU"] == m["after"]["fill_box_mIoU"]  # same masks, no model
    log = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, m["steps"] + 1))
    assert all(np.isfinite(r["loss"]) and r["loss"] > 0 for r in log)
    assert {"focal", "dice", "iou_mse", "lr", "iou_first_round", "grad_norm"} <= set(log[0])
    report = (out / "report.md").read_text()
    assert "| box-prompt mIoU |" in report and "loss.png" in report
    assert "| NoC@85 (clicks, max 5) |" in report and "max 20" not in report  # max_clicks=5
    assert Image.open(out / "loss.png").size[0] > 300
    assert len(list((out / "cache" / "embeddings").glob("*.pt"))) == 6  # 4 train + 2 val
    model = load_model(tiny, res.checkpoint, "cpu")  # strict
    assert model.state_dict().keys() == _tensors(tiny_checkpoint).keys()


def test_same_seed_same_weights_other_seed_other_weights(
    one_image, tiny, tiny_checkpoint, fast, tmp_path
):
    a = _run(one_image, tiny, tiny_checkpoint, tmp_path / "a", evaluate=False, **fast)
    b = _run(one_image, tiny, tiny_checkpoint, tmp_path / "b", evaluate=False, **fast)
    c = _run(
        one_image, tiny, tiny_checkpoint, tmp_path / "c", evaluate=False, **{**fast, "seed": 1}
    )
    ta, tb, tc = (_tensors(r.checkpoint) for r in (a, b, c))
    assert all(torch.equal(ta[k], tb[k]) for k in ta)
    assert any(not torch.equal(ta[k], tc[k]) for k in ta)
    la = (tmp_path / "a" / "train_log.jsonl").read_text().splitlines()
    lb = (tmp_path / "b" / "train_log.jsonl").read_text().splitlines()
    assert [json.loads(x)["loss"] for x in la] == [json.loads(x)["loss"] for x in lb]


_DRIVER = r"""
import sys, torch
torch.set_num_threads(1)
from grounded_sam.model.image_encoder import ImageEncoderViT
from grounded_sam.model.registry import ModelConfig
from grounded_sam.model.zoo import _sam
from grounded_sam.testing.sam_refs import TINY_VIT_CFG
from grounded_sam.train.run import finetune
train, images, out, ckpt, resume = sys.argv[1:6]
cfg = ModelConfig("tiny_vit_test", "sam", lambda: _sam(ImageEncoderViT(**TINY_VIT_CFG), "t"),
                  weights="vit_b")
finetune(train, images, out, sam=cfg, sam_checkpoint=ckpt, device="cpu", evaluate=False,
         resume=resume == "1", show_progress=False, batch_size=2, correction_clicks=1,
         refine_rounds=1, lr=1e-3, epochs=2, save_every=1, train="decoder+lora")
"""


def _driver(shapes, ckpt, out, resume: bool):
    cmd = [sys.executable, "-c", _DRIVER, str(shapes.train), str(shapes.images), str(out),
           str(ckpt), "1" if resume else "0"]  # fmt: skip
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _saved_step(out: Path) -> int:
    try:
        return int(torch.load(out / "state.pt", weights_only=True)["step"])
    except Exception:  # noqa: BLE001 - not written yet, or being replaced
        return 0


def test_sigkill_midway_then_resume_gives_bitwise_the_same_weights(
    shapes, tiny_checkpoint, tmp_path
):
    """decoder+lora (adapters, decoder and optimizer state all restored), 2 epochs of 4 steps,
    saved every step; SIGKILL after step 3 is saved, then --resume."""
    full = _driver(shapes, tiny_checkpoint, tmp_path / "full", resume=False)
    killed = _driver(shapes, tiny_checkpoint, tmp_path / "killed", resume=False)
    deadline = time.monotonic() + 900
    while _saved_step(tmp_path / "killed") < 3:
        assert killed.poll() is None, killed.communicate()[1].decode()[-2000:]
        assert time.monotonic() < deadline, "the run never saved step 3"
        time.sleep(0.2)
    os.kill(killed.pid, signal.SIGKILL)
    killed.wait()
    assert killed.returncode == -signal.SIGKILL
    steps = _saved_step(tmp_path / "killed")
    assert 3 <= steps < 8 and not (tmp_path / "killed" / "checkpoint.pt").exists()
    resumed = _driver(shapes, tiny_checkpoint, tmp_path / "killed", resume=True)
    assert resumed.wait(timeout=900) == 0, resumed.communicate()[1].decode()[-2000:]
    assert full.wait(timeout=900) == 0, full.communicate()[1].decode()[-2000:]
    a = _tensors(tmp_path / "full" / "checkpoint.pt")
    b = _tensors(tmp_path / "killed" / "checkpoint.pt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    log = [
        json.loads(x) for x in (tmp_path / "killed" / "train_log.jsonl").read_text().splitlines()
    ]
    full_log = [
        json.loads(x) for x in (tmp_path / "full" / "train_log.jsonl").read_text().splitlines()
    ]
    assert [r["step"] for r in log] == list(range(1, 9))  # no step twice, none missing
    assert [r["loss"] for r in log] == [r["loss"] for r in full_log]


def test_bad_inputs_leave_no_run_folder(shapes, tiny, tiny_checkpoint, fast, tmp_path, capsys):
    data = json.loads(shapes.train.read_text())
    cases = {}
    missing = json.loads(json.dumps(data))
    missing["images"][0]["file_name"] = "nope.png"
    cases["missing image"] = (missing, r"missing from .*nope\.png")
    empty = json.loads(json.dumps(data))
    empty["annotations"][0]["segmentation"] = encode_rle(np.zeros((64, 64), bool))[0]
    cases["empty mask"] = (empty, "empty mask")
    nocat = json.loads(json.dumps(data))
    nocat["categories"] = nocat["categories"][1:]
    nocat["annotations"][0]["category_id"] = 1
    cases["category absent"] = (nocat, "absent from 'categories'")
    for name, (content, message) in cases.items():
        ann = tmp_path / f"{name.replace(' ', '_')}.json"
        ann.write_text(json.dumps(content))
        out = tmp_path / f"out_{name.replace(' ', '_')}"
        with pytest.raises(InputError, match=message):
            # a cheap recipe: a check that let the input through fails fast, not after a run
            finetune(ann, shapes.images, out, sam=tiny, sam_checkpoint=tiny_checkpoint,
                     device="cpu", show_progress=False, evaluate=False, **fast)  # fmt: skip
        assert not out.exists(), name
    # a checkpoint of another variant: WeightsError naming the variant; CLI exit 2, one line
    out = tmp_path / "wrong_variant"
    rc, _, err = run_cli(
        "finetune",
        ["--annotations", shapes.train, "--images", shapes.images, "--sam", "vit_b",
         "--sam-checkpoint", mobile_sam_checkpoint(), "--out", out, "--device", "cpu"],
        capsys,
    )  # fmt: skip
    assert rc == 2 and len(error_lines(err)) == 1 and "'mobile_sam' checkpoint" in err
    assert not out.exists()
    with pytest.raises(WeightsError):
        finetune(shapes.train, shapes.images, out, sam="vit_b",
                 sam_checkpoint=mobile_sam_checkpoint(), device="cpu")  # fmt: skip
    with pytest.raises(InputError, match="CUDA only"):
        finetune(shapes.train, shapes.images, out, sam=tiny, sam_checkpoint=tiny_checkpoint,
                 device="cpu", amp=True)  # fmt: skip
    with pytest.raises(InputError, match="unknown setting"):
        finetune(shapes.train, shapes.images, out, sam=tiny, epoch=3)
    with pytest.raises(InputError, match="lr must be"):
        finetune(shapes.train, shapes.images, out, sam=tiny, lr=-1.0)
    assert not out.exists()
    rc, _, err = run_cli("finetune", ["--annotations", shapes.train, "--images", shapes.images,
                                      "--out", out, "--epochs", "0"], capsys)  # fmt: skip
    assert rc == 2 and "--epochs" in err and not out.exists()


def test_run_folder_rules(one_image, tiny, tiny_checkpoint, fast, tmp_path):
    out = tmp_path / "run"
    _run(one_image, tiny, tiny_checkpoint, out, evaluate=False, **fast)
    before = (out / "checkpoint.pt").stat().st_mtime_ns
    with pytest.raises(InputError, match="already holds a fine-tuning run; pass --resume"):
        _run(one_image, tiny, tiny_checkpoint, out, evaluate=False, **fast)
    with pytest.raises(InputError, match=r"other settings \(differs in settings\)"):
        _run(
            one_image,
            tiny,
            tiny_checkpoint,
            out,
            evaluate=False,
            resume=True,
            **{**fast, "lr": 0.1},
        )
    assert (out / "checkpoint.pt").stat().st_mtime_ns == before  # refused runs change nothing
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="not empty and holds no fine-tuning run"):
        _run(one_image, tiny, tiny_checkpoint, other, evaluate=False, **fast)
    assert sorted(p.name for p in other.iterdir()) == ["notes.txt"]


@pytest.mark.parametrize("saved", [True, False])
def test_ctrl_c_says_how_to_resume(shapes, tmp_path, monkeypatch, capsys, saved):
    """Ctrl-C during ``grounded-sam finetune``: exit 130; when a step was saved, a line on
    stderr says to rerun with --resume (nothing to resume from otherwise)."""
    import grounded_sam.train.run as train_run

    out = tmp_path / "run"

    def interrupted(*args, **kwargs):
        out.mkdir()
        if saved:
            (out / train_run.STATE).write_bytes(b"")
        raise KeyboardInterrupt

    monkeypatch.setattr(train_run, "finetune", interrupted)
    rc, _, err = run_cli("finetune", ["--annotations", shapes.train, "--images", shapes.images,
                                      "--out", out], capsys)  # fmt: skip
    assert rc == 130 and err.endswith("error: interrupted\n")
    assert ("run the same command with --resume" in err) == saved
