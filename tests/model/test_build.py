"""build_sam / list_models: registry, strict checkpoint loading, clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from grounded_sam import build_sam, list_models
from grounded_sam.model.build import check_state_dict
from grounded_sam.model.registry import _expected_shapes, get_config
from grounded_sam.testing.sam_refs import meta_tiny_vit_sam


def test_list_models():
    assert list_models() == [
        "mobile_sam",
        "sam2.1_hiera_base_plus",
        "sam2.1_hiera_large",
        "sam2.1_hiera_small",
        "sam2.1_hiera_tiny",
        "vit_b",
        "vit_h",
        "vit_l",
    ]


def test_unknown_variant_lists_valid_names():
    with pytest.raises(ValueError, match="vit_b.*vit_h|mobile_sam"):
        build_sam("vit_x", pretrained=False)


@pytest.mark.parametrize("name", list_models())
def test_variant_structure(name):
    """Every variant builds (on the meta device) with checkpoint-prefixed parameter names."""
    if get_config(name).family != "sam":
        pytest.skip("SAM 1 layout only; other families test their own key tables")
    shapes = _expected_shapes(name)
    prefixes = {k.split(".")[0] for k in shapes}
    assert prefixes == {"image_encoder", "prompt_encoder", "mask_decoder"}
    assert shapes["mask_decoder.mask_tokens.weight"] == (4, 256)
    assert shapes["prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"] == (2, 128)
    if name.startswith("vit"):
        embed = {"vit_b": 768, "vit_l": 1024, "vit_h": 1280}[name]
        assert shapes["image_encoder.pos_embed"] == (1, 64, 64, embed)
        assert shapes["image_encoder.blocks.0.attn.rel_pos_h"] == (
            27,
            64 if name != "vit_h" else 80,
        )


def test_meta_vit_b_keys_match_exactly():
    from segment_anything import sam_model_registry

    with torch.device("meta"):
        ref = sam_model_registry["vit_b"]()
    ref_shapes = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    assert ref_shapes == _expected_shapes("vit_b")


def test_random_init_forward_shape(chelsea):
    """A randomly initialised model runs end to end: embedding, logits and masks of the
    documented shapes, finite values."""
    from grounded_sam import SamPredictor

    sam = build_sam("mobile_sam", pretrained=False, device="cpu")
    assert not sam.training and sam.img_size == 1024
    p = SamPredictor(sam)
    p.set_image(chelsea)
    assert tuple(p.get_image_embedding().shape) == (1, 256, 64, 64)
    masks, iou, low_res = p.predict(box=np.array([50, 40, 300, 250]), multimask_output=True)
    assert masks.shape == (3, *chelsea.shape[:2]) and masks.dtype == bool
    assert iou.shape == (3,) and low_res.shape == (3, 256, 256)
    assert np.isfinite(iou).all() and np.isfinite(low_res).all()


def test_checkpoint_and_pretrained_false_conflict(tmp_path):
    with pytest.raises(ValueError, match="not both"):
        build_sam("vit_b", checkpoint=tmp_path / "x.pth", pretrained=False)


def test_wrong_variant_names_the_right_one(tmp_path):
    sd = {k: torch.zeros(s) for k, s in _expected_shapes("vit_b").items()}
    with pytest.raises(ValueError) as info:
        check_state_dict("vit_l", sd, source="checkpoint 'sam_vit_b_01ec64.pth'")
    msg = str(info.value)
    assert "'vit_l'" in msg and "sam_vit_b_01ec64.pth" in msg
    assert "missing keys" in msg and "other shapes" in msg
    assert (
        "is a 'vit_b' checkpoint: use build_sam('vit_b', checkpoint=...) (CLI: --sam vit_b)" in msg
    )


def test_wrong_file_through_build_sam(tmp_path):
    path = tmp_path / "tiny.pth"
    torch.save(meta_tiny_vit_sam().state_dict(), path)
    with pytest.raises(
        ValueError, match=r"does not match SAM variant 'vit_b'.*tiny.pth|tiny.pth.*'vit_b'"
    ):
        build_sam("vit_b", checkpoint=path, device="cpu")


@pytest.mark.parametrize(
    "content, match",
    [
        (b"", "empty"),
        (b"this is not a checkpoint at all", "not a readable torch checkpoint"),
    ],
    ids=["empty", "garbage"],
)
def test_not_a_checkpoint(tmp_path, content, match):
    path = tmp_path / "sam_vit_b_01ec64.pth"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=match):
        build_sam("vit_b", checkpoint=path, device="cpu")


def test_truncated_checkpoint(tmp_path):
    path = tmp_path / "full.pth"
    torch.save(meta_tiny_vit_sam().state_dict(), path)
    cut = tmp_path / "cut.pth"
    cut.write_bytes(path.read_bytes()[:100_000])
    with pytest.raises(ValueError, match="truncated|not a readable"):
        build_sam("vit_b", checkpoint=cut, device="cpu")


def test_missing_checkpoint_file(tmp_path):
    with pytest.raises(ValueError, match="not found"):
        build_sam("vit_b", checkpoint=tmp_path / "nope.pth", device="cpu")


def test_mobile_sam_fused_at_load_same_outputs(tmp_path):
    """Loading weights folds TinyViT's BatchNorms; fuse=False keeps the official layout."""
    from grounded_sam.testing.sam_refs import meta_mobile_sam, rel_diff, save_checkpoint

    ckpt = save_checkpoint(meta_mobile_sam(), tmp_path / "mobile_sam.pt")
    fused = build_sam("mobile_sam", checkpoint=ckpt, device="cpu")
    plain = build_sam("mobile_sam", checkpoint=ckpt, device="cpu", fuse=False)
    assert not any(".bn." in k for k in fused.state_dict())
    assert plain.state_dict().keys() == _expected_shapes("mobile_sam").keys()
    assert not any(".bn." in k for k in fused.image_encoder.state_dict())
    x = torch.randn(1, 3, 1024, 1024, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert rel_diff(plain.image_encoder(x), fused.image_encoder(x)) < 1e-4
    random = build_sam("mobile_sam", pretrained=False, device="cpu")
    assert random.state_dict().keys() == _expected_shapes("mobile_sam").keys()
