"""Fine-tuned checkpoints are official files: they load strictly in our build_sam and in the
reference implementations (Meta's segment_anything, ultralytics' MobileSAM, Meta's sam2
layout), and give the same masks there."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from grounded_sam import SamPredictor, build_sam
from grounded_sam.errors import WeightsError
from grounded_sam.testing.pipeline import mobile_sam_checkpoint, small_chelsea
from grounded_sam.testing.sam_refs import PIXEL_MEAN, PIXEL_STD
from grounded_sam.train.checkpoint import load_model, write_official_checkpoint
from grounded_sam.train.run import finetune

PROMPTS = [
    dict(box=np.array([40, 20, 180, 140])),
    dict(point_coords=np.array([[110, 75]]), point_labels=np.array([1])),
    dict(point_coords=np.array([[110, 75], [20, 130]]), point_labels=np.array([1, 0]),
         multimask_output=False),
]  # fmt: skip


def _same_masks(ref_predictor, ours: SamPredictor, image) -> None:
    ref_predictor.set_image(image)
    ours.set_image(image)
    for kw in PROMPTS:
        (m1, s1, _), (m2, s2, _) = ref_predictor.predict(**kw), ours.predict(**kw)
        assert m1.shape == m2.shape
        assert (m1 == m2).mean() >= 0.999, kw
        assert np.abs(s1 - s2).max() <= 2e-3, kw


def _changed(before: dict, after: dict, prefix: str) -> bool:
    return any(not torch.equal(before[k], after[k]) for k in before if k.startswith(prefix))


def test_tiny_vit_lora_checkpoint_loads_strictly_in_meta_with_same_masks(
    one_image, tiny, tiny_checkpoint, fast, tmp_path
):
    """decoder+lora: adapters merged into Meta's qkv/proj keys; decoder trained. One image:
    each LoRA step runs the encoder twice and back-propagates through it."""
    from segment_anything import SamPredictor as MetaPredictor

    from grounded_sam.testing.sam_refs import meta_tiny_vit_sam

    res = finetune(one_image.train, one_image.images, tmp_path / "run", sam=tiny,
                   sam_checkpoint=tiny_checkpoint, device="cpu", evaluate=False,
                   show_progress=False, train="decoder+lora", **fast)  # fmt: skip
    start = torch.load(tiny_checkpoint, weights_only=True)
    saved = torch.load(res.checkpoint, weights_only=True)
    assert list(saved) == list(start)  # Meta's layout, key for key, in the file's order
    assert all(saved[k].dtype == start[k].dtype for k in start)
    assert _changed(start, saved, "mask_decoder.")
    assert _changed(start, saved, "image_encoder.blocks.0.attn.qkv.weight")
    assert not _changed(start, saved, "prompt_encoder.")
    assert not _changed(start, saved, "image_encoder.patch_embed.")  # no adapter there
    meta = meta_tiny_vit_sam(seed=3)
    meta.load_state_dict(saved, strict=True)
    ours = load_model(tiny, res.checkpoint, "cpu")
    _same_masks(MetaPredictor(meta.eval()), SamPredictor(ours), small_chelsea())


@pytest.mark.slow  # MobileSAM's full TinyViT encoder, three times
def test_mobile_sam_checkpoint_loads_in_ultralytics_with_same_masks(one_image, fast, tmp_path):
    """MobileSAM's layout, BatchNorms unfused; ultralytics' own loader reads it strictly.
    One training image: MobileSAM's encoder is the costly part here."""
    from segment_anything import SamPredictor as MetaPredictor
    from segment_anything.modeling import Sam as MetaSam
    from ultralytics.models.sam.build import build_mobile_sam

    res = finetune(one_image.train, one_image.images, tmp_path / "run", sam="mobile_sam",
                   sam_checkpoint=mobile_sam_checkpoint(), device="cpu", evaluate=False,
                   show_progress=False, **fast)  # fmt: skip
    start = torch.load(mobile_sam_checkpoint(), weights_only=True)
    saved = torch.load(res.checkpoint, weights_only=True)
    assert list(saved) == list(start)
    assert any(k.endswith("running_var") for k in saved)  # BatchNorm layers kept
    assert _changed(start, saved, "mask_decoder.")
    assert not _changed(start, saved, "image_encoder.")  # decoder mode
    ul = build_mobile_sam(checkpoint=str(res.checkpoint))  # load_state_dict(strict=True)
    ref = MetaSam(
        image_encoder=ul.image_encoder,
        prompt_encoder=ul.prompt_encoder,
        mask_decoder=ul.mask_decoder,
        pixel_mean=PIXEL_MEAN,
        pixel_std=PIXEL_STD,
    ).eval()
    ours = build_sam("mobile_sam", checkpoint=res.checkpoint, device="cpu")
    _same_masks(MetaPredictor(ref), SamPredictor(ours), small_chelsea())


def test_writer_keeps_extra_keys_and_wraps_sam2_files(tmp_path):
    """SAM 2.1's {"model": ...} layout with the video modules' tensors copied unchanged."""
    from grounded_sam.model.registry import ModelConfig
    from grounded_sam.model.sam2 import MEMORY_KEYS, TEST_CONFIG, Sam2, image_state_dict
    from grounded_sam.testing.sam2_refs import random_sam2

    model = random_sam2(TEST_CONFIG)
    state = dict(model.state_dict())
    g = torch.Generator().manual_seed(0)
    full = {**state, **{k: torch.randn(s, generator=g) for k, s in MEMORY_KEYS.items()}}
    source = tmp_path / "sam2.1_test.pt"
    torch.save({"model": full}, source)
    cfg = ModelConfig("sam2_test", "sam2", lambda: random_sam2(TEST_CONFIG), weights="vit_b")
    trained = {k: v + 1 if k.startswith("sam_mask_decoder.") else v for k, v in state.items()}
    out = write_official_checkpoint(cfg, trained, source, tmp_path / "out.pt")
    saved = torch.load(out, weights_only=True)
    assert set(saved) == {"model"} and list(saved["model"]) == list(full)
    for k in MEMORY_KEYS:
        assert torch.equal(saved["model"][k], full[k])
    fresh = Sam2(
        image_encoder=model.image_encoder, prompt_encoder=model.prompt_encoder,
        mask_decoder=model.mask_decoder,
    )  # fmt: skip
    fresh.load_state_dict(image_state_dict(TEST_CONFIG, saved["model"]), strict=True)
    key = next(k for k in trained if k.startswith("sam_mask_decoder."))
    assert torch.equal(fresh.state_dict()[key], trained[key])
    with pytest.raises(WeightsError, match="do not fit the layout"):
        write_official_checkpoint(cfg, {"not.a.key": torch.zeros(1)}, source, tmp_path / "x.pt")


@pytest.mark.slow  # Meta's sam2 (Hydra) reference built, the reduced Hiera run several times
def test_cli_sam2_checkpoint_loads_strictly_in_meta_sam2_with_same_masks(shapes, tmp_path, capsys):
    """The command as a user runs it, on SAM 2.1 (the reduced Hiera registered by name):
    ``{"model": ...}`` with every key of the starting file (video modules included), only the
    mask decoder changed; Meta's ``sam2`` loads it strictly and gives the same masks."""
    import json

    from grounded_sam.testing.pipeline import run_cli, sam2_test_checkpoint, sam2_test_variant
    from grounded_sam.testing.sam2_refs import meta_image_predictor, meta_sam2

    out = tmp_path / "run"
    with sam2_test_variant() as name:
        rc, stdout, err = run_cli(
            "finetune",
            ["--annotations", shapes.train, "--images", shapes.images, "--sam", name,
             "--sam-checkpoint", sam2_test_checkpoint(), "--out", out, "--device", "cpu",
             "--epochs", "1", "--batch-size", "4", "--correction-clicks", "1",
             "--refine-rounds", "0", "--val-annotations", shapes.val, "--max-clicks", "5",
             "--lr", "1e-3"],
            capsys,
        )  # fmt: skip
        assert rc == 0, err
        assert f"checkpoint: {out / 'checkpoint.pt'}" in stdout and "NoC@85" in stdout
        assert "report.md" in stdout
        metrics = json.loads((out / "metrics.json").read_text())
        assert metrics["family"] == "sam2" and metrics["config"]["batch_size"] == 4
        assert metrics["checkpoint_format"].startswith("{'model': state_dict}")
        ours = build_sam(name, checkpoint=out / "checkpoint.pt", device="cpu")
    start = torch.load(sam2_test_checkpoint(), weights_only=True)["model"]
    saved = torch.load(out / "checkpoint.pt", weights_only=True)
    assert list(saved) == ["model"] and list(saved["model"]) == list(start)
    changed = [k for k in start if not torch.equal(start[k], saved["model"][k])]
    assert changed and all(k.startswith("sam_mask_decoder.") for k in changed)
    from grounded_sam.model.sam2 import TEST_CONFIG

    meta = meta_sam2(TEST_CONFIG, seed=0)
    meta.load_state_dict(saved["model"], strict=True)  # what sam2.build_sam._load_checkpoint does
    _same_masks(meta_image_predictor(meta.eval()), SamPredictor(ours), small_chelsea())
