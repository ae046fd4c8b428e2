"""SAM 2.1 core: parity with Meta's ``sam2`` on identical random weights, and checkpoint checks.

Reference: Meta's ``SAM2ImagePredictor`` around ``build_sam2(...)`` models whose every float
tensor is perturbed (:mod:`grounded_sam.testing.sam2_refs`); ours through ``SamPredictor``,
the same predictor as for SAM 1.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from grounded_sam import SamPredictor
from grounded_sam.errors import InputError, WeightsError
from grounded_sam.model.sam2 import (
    MEMORY_KEYS,
    SAM2_CONFIGS,
    TEST_CONFIG,
    Sam2,
    build_sam2,
    build_sam2_model,
    expected_image_shapes,
    image_state_dict,
    list_sam2_models,
)
from grounded_sam.testing.sam2_refs import meta_image_predictor, meta_sam2, save_sam2_checkpoint
from grounded_sam.testing.sam_refs import rel_diff

pytest.importorskip("sam2")

FEATURE_TOL = 1e-5  # image embedding and high-resolution features, relative
LOGIT_TOL = 1e-4  # low-res and full-res mask logits, relative
IOU_TOL = 1e-4
MASK_AGREEMENT = 0.999

# chelsea (300x451): the cat's face, its ear, a background corner
POINT = dict(point_coords=np.array([[230, 140]]), point_labels=np.array([1]))
BOX = np.array([120, 30, 360, 290])
PROMPTS = {
    "point_multimask": dict(POINT, multimask_output=True),
    "point_single": dict(POINT, multimask_output=False),
    "fg_bg_points": dict(
        point_coords=np.array([[230, 140], [20, 280]]),
        point_labels=np.array([1, 0]),
        multimask_output=False,
    ),
    "box": dict(box=BOX, multimask_output=False),
    "box_neg_point": dict(
        box=BOX,
        point_coords=np.array([[30, 30]]),
        point_labels=np.array([0]),
        multimask_output=False,
    ),
    "boxes": dict(
        box=np.array([[120, 30, 360, 290], [0, 0, 200, 150], [300, 100, 450, 299]]),
        multimask_output=False,
    ),
    "boxes_multimask": dict(
        box=np.array([[120, 30, 360, 290], [0, 0, 200, 150]]), multimask_output=True
    ),
}


def _pair(config, seed: int = 0, dynamic: bool = True):
    ref = meta_sam2(config, seed=seed, dynamic_multimask_via_stability=dynamic)
    ours = build_sam2_model(config, dynamic_multimask_via_stability=dynamic)
    ours.load_state_dict(image_state_dict(config, ref.state_dict()), strict=True)
    return ref, ours.eval()


def _check(ref_out, our_out, case: str) -> None:
    (m1, i1, l1), (m2, i2, l2) = ref_out, our_out
    assert m1.shape == m2.shape and m2.dtype == bool, case
    assert i1.shape == i2.shape and l1.shape == l2.shape, case
    agree = (m1 == m2).mean()
    assert agree >= MASK_AGREEMENT, f"{case}: masks agree on {agree:.5f}"
    assert rel_diff(l1, l2) <= LOGIT_TOL, f"{case}: logits {rel_diff(l1, l2):.2e}"
    assert np.abs(i1 - i2).max() <= IOU_TOL, f"{case}: iou {np.abs(i1 - i2).max():.2e}"


def _run_parity(ref_model, ours: Sam2, image: np.ndarray) -> dict[str, float]:
    """Every prompt kind through Meta's SAM2ImagePredictor and our SamPredictor; returns the
    worst differences seen (for the report)."""
    ref, mine = meta_image_predictor(ref_model), SamPredictor(ours)
    ref.set_image(image)
    mine.set_image(image)
    emb = mine.get_embedding()
    assert emb.features.shape == (1, 256, 64, 64)
    assert [tuple(f.shape) for f in emb.high_res] == [(1, 32, 256, 256), (1, 64, 128, 128)]
    seen = {"embedding": rel_diff(ref._features["image_embed"], emb.features)}
    for i, (r, o) in enumerate(zip(ref._features["high_res_feats"], emb.high_res, strict=True)):
        seen[f"feat_s{i}"] = rel_diff(r, o)
    for key, value in seen.items():
        assert value <= FEATURE_TOL, f"{key}: {value:.2e}"
    worst = {"logits": 0.0, "iou": 0.0, "mask_disagreement": 0.0}

    def record(r, o) -> None:
        worst["logits"] = max(worst["logits"], rel_diff(r[2], o[2]))
        worst["iou"] = max(worst["iou"], float(np.abs(r[1] - o[1]).max()))
        worst["mask_disagreement"] = max(worst["mask_disagreement"], float((r[0] != o[0]).mean()))

    for name, kw in PROMPTS.items():
        r = ref.predict(**kw)
        if np.asarray(kw.get("box", np.zeros(4))).ndim == 2:
            # several boxes in one call: predict_boxes (full-res) and predict_low_res
            masks, scores = mine.predict_boxes(kw["box"], multimask_output=kw["multimask_output"])
            low, iou = mine.predict_low_res(
                boxes=kw["box"], multimask_output=kw["multimask_output"]
            )
            assert torch.allclose(iou.cpu(), torch.as_tensor(scores))
            o = (masks, scores, low.cpu().numpy())
            _check(r, o, name)
            logits, _ = mine.predict_boxes(kw["box"], kw["multimask_output"], return_logits=True)
            r_logits = ref.predict(**kw, return_logits=True)[0]
            assert rel_diff(r_logits, logits) <= LOGIT_TOL, name
            record(r, o)
            continue
        o = mine.predict(**kw)
        _check(r, o, name)
        record(r, o)
        # mask_input: the best low-res mask of the previous call fed back
        best = int(np.argmax(r[1]))
        kw2 = dict(kw, mask_input=r[2][best : best + 1], multimask_output=False)
        _check(ref.predict(**kw2), mine.predict(**kw2), f"{name} + mask_input")
    # full-resolution logits, the un-thresholded output
    r = ref.predict(**PROMPTS["box"], return_logits=True)[0]
    o = mine.predict(**PROMPTS["box"], return_logits=True)[0]
    assert rel_diff(r, o) <= LOGIT_TOL
    return {**seen, **worst}


# --------------------------------------------------------------------------- parity
def test_tiny_parity_with_meta_image_predictor(chelsea):
    """SAM 2.1 Hiera-T on a real photo, every prompt kind, dynamic multimask on (Meta's
    build_sam2 default)."""
    ref, ours = _pair("sam2.1_hiera_tiny")
    _run_parity(ref, ours, chelsea)


def test_reduced_config_parity_without_dynamic_multimask(chelsea):
    """A reduced Hiera (all code paths) with the stability fallback off, as LangSAM builds."""
    ref, ours = _pair(TEST_CONFIG, seed=3, dynamic=False)
    _run_parity(ref, ours, chelsea)


def test_logits_clamped_as_meta(chelsea):
    """Scaled-up hypernetworks push logits past +-32: the low-res logits are clamped to
    (-32, 32) as Meta's predictor returns them, and the masks still agree."""
    ref, ours = _pair(TEST_CONFIG, seed=4)
    with torch.no_grad():
        for model in (ref, ours):
            for mlp in model.sam_mask_decoder.output_hypernetworks_mlps:
                mlp.layers[2].weight.mul_(20)
    rp, op = meta_image_predictor(ref), SamPredictor(ours)
    rp.set_image(chelsea)
    op.set_image(chelsea)
    for kw in (PROMPTS["box"], PROMPTS["point_multimask"]):
        r, o = rp.predict(**kw), op.predict(**kw)
        assert np.abs(r[2]).max() == 32.0 and np.abs(o[2]).max() == 32.0
        _check(r, o, "clamped")


@pytest.mark.slow
def test_small_parity_with_meta_image_predictor(chelsea, tmp_path):
    ref = meta_sam2("sam2.1_hiera_small", seed=1)
    ckpt = save_sam2_checkpoint(ref, tmp_path / "sam2.1_hiera_small.pt")
    ours = build_sam2("sam2.1_hiera_small", checkpoint=ckpt)
    _run_parity(ref, ours, chelsea)


def test_trunk_and_neck_match_meta_in_float64():
    """In float64 the encoder agrees to ~1e-12: the float32 differences are rounding only."""
    ref, ours = _pair(TEST_CONFIG, seed=5)
    ref, ours = ref.double(), ours.double()
    x = torch.randn(
        1, 3, 1024, 1024, dtype=torch.float64, generator=torch.Generator().manual_seed(0)
    )
    with torch.no_grad():
        for a, b in zip(ref.image_encoder.trunk(x), ours.image_encoder.trunk(x), strict=True):
            assert rel_diff(a, b.permute(0, 3, 1, 2)) < 1e-10
        backbone = ref.forward_image(x)["backbone_fpn"]
        emb, s0, s1 = (t.permute(0, 3, 1, 2) for t in ours._encode(x))
        ref_emb = backbone[2] + ref.no_mem_embed.view(1, -1, 1, 1)
    assert rel_diff(backbone[0], s0) < 1e-10 and rel_diff(backbone[1], s1) < 1e-10
    # Meta's neck runs its top-down upsampling in float32 even for a float64 model
    assert rel_diff(ref_emb, emb) < 1e-6


@pytest.mark.parametrize("step_tokens", [2048, 64 * 7, 1 << 30], ids=["default", "odd", "whole"])
def test_unrolled_trunk_equals_spatial_trunk(step_tokens, monkeypatch):
    """The unrolled fast path computes what the block-by-block spatial path does, whatever
    number of windows it runs per step (a partial last step included)."""
    from grounded_sam.model.hiera import HieraBlock

    monkeypatch.setattr(HieraBlock, "_UNROLLED_STEP_TOKENS", step_tokens)
    model = build_sam2_model(TEST_CONFIG).eval()
    trunk = model.image_encoder.trunk
    assert trunk._unrolled_plan((256, 256)) == (4, 2)
    x = torch.randn(1, 3, 1024, 1024, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        fast = trunk(x)
        trunk.unroll = False
        slow = trunk(x)
    for a, b in zip(fast, slow, strict=True):
        assert rel_diff(b, a) < 1e-6


def test_position_embedding_cache_follows_the_weights():
    model = build_sam2_model(TEST_CONFIG).eval()
    trunk = model.image_encoder.trunk
    x = torch.randn(1, 3, 1024, 1024, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        before = trunk(x)[0]
        trunk.pos_embed.data.add_(1.0)  # bypasses the version counter
        after = trunk(x)[0]
        trunk.pos_embed_window.data.sub_(1.0)
        again = trunk(x)[0]
    assert not torch.equal(before, after) and not torch.equal(after, again)
    assert torch.equal(trunk._pos_embed_for((256, 256)), trunk.pos_embed_grid((256, 256)))


def test_dynamic_multimask_fallback_picks_best_multimask_when_unstable():
    torch.manual_seed(0)
    model = build_sam2_model(TEST_CONFIG).eval()
    emb = torch.randn(1, 256, 64, 64)
    high = (torch.randn(1, 32, 256, 256), torch.randn(1, 64, 128, 128))
    coords = torch.rand(5, 1, 2) * 1024
    labels = torch.ones(5, 1, dtype=torch.int32)
    with torch.no_grad():
        multi, multi_iou = model.decode(emb, high, coords, labels, None, None, True)
        model.dynamic_multimask_via_stability = False
        single, single_iou = model.decode(emb, high, coords, labels, None, None, False)
        model.dynamic_multimask_via_stability = True
        dyn, dyn_iou = model.decode(emb, high, coords, labels, None, None, False)
    assert dyn.shape == single.shape == (5, 1, 256, 256) and multi.shape == (5, 3, 256, 256)
    stable = model.mask_decoder._stability(single) >= 0.98
    best = multi_iou.argmax(-1)
    for i in range(5):
        want, want_iou = (
            (single[i, 0], single_iou[i, 0])
            if stable[i]
            else (multi[i, best[i]], multi_iou[i, best[i]])
        )
        assert torch.allclose(dyn[i, 0], want, rtol=1e-5, atol=1e-5)
        assert torch.allclose(dyn_iou[i], want_iou)
    assert not stable.all()  # random weights: the fallback is exercised
    assert dyn.abs().max() <= 32 and multi.abs().max() <= 32  # Meta's clamp


def test_gradients_flow_through_encode_and_decode():
    """With autograd on (fine-tuning), every fast path falls back to differentiable ops and
    gives the same values."""
    model = build_sam2_model(TEST_CONFIG).eval()
    x = torch.randn(1, 3, 1024, 1024, generator=torch.Generator().manual_seed(3))
    boxes = torch.tensor([[100.0, 120, 700, 900], [0, 0, 500, 400]])
    with torch.no_grad():
        emb0, high0 = model.encode(x)
        low0, iou0 = model.decode(emb0, high0, None, None, boxes, None, False)
    emb, high = model.encode(x)
    low, iou = model.decode(emb, high, None, None, boxes, None, False)
    assert rel_diff(emb0, emb.detach()) < 1e-5 and rel_diff(low0, low.detach()) < 1e-4
    assert torch.allclose(iou0, iou.detach(), atol=1e-5)
    (low.sigmoid().mean() + iou.sum()).backward()
    trunk = model.image_encoder.trunk
    for p in (trunk.pos_embed, trunk.blocks[0].attn.qkv.weight, model.mask_decoder.conv_s0.weight):
        assert p.grad is not None and p.grad.abs().sum() > 0


def test_decode_broadcasts_one_embedding_and_handles_empty_prompts():
    model = build_sam2_model(TEST_CONFIG).eval()
    emb = torch.randn(1, 256, 64, 64)
    high = (torch.randn(1, 32, 256, 256), torch.randn(1, 64, 128, 128))
    boxes = torch.tensor([[10.0, 20, 300, 400], [500, 500, 900, 1000]])
    with torch.no_grad():
        low, iou = model.decode(emb, high, None, None, boxes, None, False)
        one, one_iou = model.decode(emb, high, None, None, boxes[1:], None, False)
        none, none_iou = model.decode(emb, high, None, None, None, None, True)
    assert low.shape == (2, 1, 256, 256) and iou.shape == (2, 1)
    assert torch.allclose(low[1:], one, rtol=1e-4, atol=1e-4) and torch.allclose(iou[1:], one_iou)
    assert none.shape == (1, 3, 256, 256) and none_iou.shape == (1, 3)
    with pytest.raises(InputError):
        model.decode(emb, high, torch.zeros(1, 1, 2), None, None, None, True)


@pytest.mark.parametrize("size", [(300, 451), (1100, 1500), (1024, 700), (500, 1024), (1024, 1024)])
def test_prepare_image_is_a_square_resize_with_imagenet_normalisation(size, chelsea, monkeypatch):
    """Meta's SAM2Transforms up to float rounding (the 1/255 comes after the resize here),
    for up- and downscaling, either side already 1024, and a partial last row step."""
    from PIL import Image
    from sam2.utils.transforms import SAM2Transforms

    monkeypatch.setattr(Sam2, "_RESIZE_STEP_ROWS", 96)
    image = chelsea
    if size != chelsea.shape[:2]:
        image = np.asarray(Image.fromarray(chelsea).resize(size[::-1], Image.BICUBIC))
    model = build_sam2_model(TEST_CONFIG)
    x, input_size = model.prepare_image(image)
    assert x.shape == (1, 3, 1024, 1024) and x.dtype == torch.float32 and input_size == (1024, 1024)
    assert x.is_contiguous()
    ref = SAM2Transforms(resolution=1024, mask_threshold=0.0)(image)[None]
    assert rel_diff(ref, x) < 1e-6
    with torch.enable_grad():  # the plain (whole-image) path
        assert rel_diff(ref, model.prepare_image(image)[0]) < 1e-6
    h, w = size
    coords = model.transform_coords(torch.tensor([[w, h]]), (h, w), input_size)
    assert torch.allclose(coords, torch.tensor([[1024.0, 1024.0]]))
    with pytest.raises(InputError):
        model.prepare_image(chelsea.astype(np.float32))


# --------------------------------------------------------------------------- checkpoints
def _meta_state_dict(name: str) -> dict[str, torch.Tensor]:
    from sam2.build_sam import build_sam2 as meta_build

    from grounded_sam.testing.sam2_refs import META_CONFIG_FILES

    return meta_build(META_CONFIG_FILES[name], None, device="cpu").state_dict()


@pytest.mark.parametrize("name", sorted(SAM2_CONFIGS))
def test_key_and_shape_tables_equal_metas(name):
    """Our image-path keys and shapes are exactly Meta's minus its video modules, whose keys
    and shapes are exactly :data:`MEMORY_KEYS`."""
    meta = {k: tuple(v.shape) for k, v in _meta_state_dict(name).items()}
    ours = expected_image_shapes(name)
    assert {k: meta[k] for k in ours if k in meta} == ours
    assert {k: v for k, v in meta.items() if k not in ours} == MEMORY_KEYS


def test_list_and_configs():
    assert list_sam2_models() == [
        "sam2.1_hiera_base_plus",
        "sam2.1_hiera_large",
        "sam2.1_hiera_small",
        "sam2.1_hiera_tiny",
    ]


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """Meta's tiny model (not perturbed: only the keys matter here) saved as Meta does."""
    ref = meta_sam2("sam2.1_hiera_tiny", scale=0.0)
    path = tmp_path_factory.mktemp("sam2") / "sam2.1_hiera_tiny.pt"
    return save_sam2_checkpoint(ref, path), ref.state_dict()


def test_build_from_meta_checkpoint_keeps_image_path_only(tiny_checkpoint):
    path, sd = tiny_checkpoint
    model = build_sam2("sam2.1_hiera_tiny", checkpoint=path)
    ours = model.state_dict()
    assert set(ours) == set(sd) - set(MEMORY_KEYS)
    assert all(torch.equal(ours[k], sd[k]) for k in ours)
    assert model.name == "sam2.1_hiera_tiny" and model.family == "sam2"
    assert model.dynamic_multimask_via_stability
    off = build_sam2("sam2.1_hiera_tiny", checkpoint=path, dynamic_multimask_via_stability=False)
    assert not off.dynamic_multimask_via_stability
    # an image-path-only state dict (our own state_dict()) loads too
    build_sam2("sam2.1_hiera_tiny", checkpoint=ours)


def test_random_checkpoint_helper_writes_metas_format(tmp_path):
    from grounded_sam.testing.sam2_refs import random_sam2, random_sam2_checkpoint

    path = random_sam2_checkpoint("sam2.1_hiera_tiny", tmp_path / "t.pt", seed=2)
    sd = torch.load(path, weights_only=True)["model"]
    assert set(MEMORY_KEYS) <= set(sd)
    model = build_sam2("sam2.1_hiera_tiny", checkpoint=path)
    assert torch.equal(model.no_mem_embed, sd["no_mem_embed"])
    assert random_sam2().name == "sam2.1_hiera_test"


def test_checkpoint_errors(tiny_checkpoint, tmp_path):
    path, sd = tiny_checkpoint
    # another variant's file
    with pytest.raises(
        WeightsError, match=r"sam2\.1_hiera_small.*looks like a 'sam2\.1_hiera_tiny'"
    ):
        build_sam2("sam2.1_hiera_small", checkpoint=path)
    # SAM 2.0: same image-path keys, no SAM 2.1-only video keys
    sam20 = {
        k: v
        for k, v in sd.items()
        if k not in ("no_obj_embed_spatial", "obj_ptr_tpos_proj.weight", "obj_ptr_tpos_proj.bias")
    }
    torch.save({"model": sam20}, tmp_path / "sam2_hiera_tiny.pt")
    with pytest.raises(WeightsError, match="SAM 2.0"):
        build_sam2("sam2.1_hiera_tiny", checkpoint=tmp_path / "sam2_hiera_tiny.pt")
    # something dropped that is not a video module / a missing image key
    extra = dict(sd, **{"sam_mask_decoder.extra.weight": torch.zeros(1)})
    with pytest.raises(WeightsError, match=r"unexpected keys: sam_mask_decoder\.extra\.weight"):
        image_state_dict("sam2.1_hiera_tiny", extra, "test file")
    partial = {k: v for k, v in sd.items() if not k.startswith("memory_attention.layers.3")}
    with pytest.raises(WeightsError, match="missing video-module keys"):
        image_state_dict("sam2.1_hiera_tiny", partial, "test file")
    no_trunk = {k: v for k, v in sd.items() if "trunk.blocks.11." not in k}
    with pytest.raises(WeightsError, match=r"missing keys: image_encoder\.trunk\.blocks\.11"):
        image_state_dict("sam2.1_hiera_tiny", no_trunk, "test file")
    # truncated and non-checkpoint files name the file
    data = path.read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match="cut.pt.*truncated"):
        build_sam2("sam2.1_hiera_tiny", checkpoint=tmp_path / "cut.pt")
    (tmp_path / "text.pt").write_text("hello")
    with pytest.raises(WeightsError, match="text.pt"):
        build_sam2("sam2.1_hiera_tiny", checkpoint=tmp_path / "text.pt")
    with pytest.raises(WeightsError, match="not found"):
        build_sam2("sam2.1_hiera_tiny", checkpoint=tmp_path / "absent.pt")
    with pytest.raises(InputError, match="unknown SAM 2 variant"):
        build_sam2("sam2.1_hiera_huge")
