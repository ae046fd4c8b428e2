"""SAM 2.1 through the package: registry and weights entries, ``build_sam`` options and
checkpoint errors, precision modes, the CLI by built-in name, and automatic masks against Meta's
``SAM2AutomaticMaskGenerator`` on identical random weights."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from grounded_sam import AutomaticMaskGenerator, SamPredictor, build_sam, weights
from grounded_sam.automatic import FAMILY_DEFAULTS
from grounded_sam.errors import InputError, WeightsError
from grounded_sam.model import list_models
from grounded_sam.model.sam2 import TEST_CONFIG, Sam2, build_sam2_model, image_state_dict
from grounded_sam.testing.sam2_refs import random_sam2, random_sam2_checkpoint
from grounded_sam.testing.sam_refs import rel_diff

SAM2_NAMES = [
    "sam2.1_hiera_tiny",
    "sam2.1_hiera_small",
    "sam2.1_hiera_base_plus",
    "sam2.1_hiera_large",
]


# --------------------------------------------------------------------------- registry
def test_registered_with_metas_weights():
    assert set(SAM2_NAMES) <= set(list_models())
    sizes = {}
    for name in SAM2_NAMES:
        entry = weights.get(name)
        assert entry.kind == "sam" and entry.filename == f"{name}.pt"
        assert entry.url == f"https://dl.fbaipublicfiles.com/segment_anything_2/092824/{name}.pt"
        assert entry.license == "Apache-2.0" and entry.sha256 is None
        sizes[name] = entry.size_mb
    assert sizes == {
        "sam2.1_hiera_tiny": 156.0,
        "sam2.1_hiera_small": 184.0,
        "sam2.1_hiera_base_plus": 324.0,
        "sam2.1_hiera_large": 898.0,
    }


@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory):
    """A random sam2.1_hiera_tiny file in Meta's format (video keys included)."""
    return random_sam2_checkpoint(
        "sam2.1_hiera_tiny", tmp_path_factory.mktemp("w") / "sam2.1_hiera_tiny.pt", seed=7
    )


def test_build_sam_loads_metas_format_and_takes_the_stability_option(tiny_file):
    sam = build_sam("sam2.1_hiera_tiny", checkpoint=tiny_file, device="cpu")
    assert isinstance(sam, Sam2) and sam.family == "sam2" and not sam.training
    assert sam.dynamic_multimask_via_stability  # Meta's build_sam2 default
    saved = torch.load(tiny_file, weights_only=True)["model"]
    assert all(torch.equal(v, saved[k]) for k, v in sam.state_dict().items())
    off = build_sam(
        "sam2.1_hiera_tiny",
        checkpoint=tiny_file,
        device="cpu",
        dynamic_multimask_via_stability=False,
    )
    assert not off.dynamic_multimask_via_stability
    with pytest.raises(InputError, match="dynamic_multimask_via_stability"):
        build_sam("vit_b", pretrained=False, dynamic_multimask_via_stability=False)
    with pytest.raises(InputError, match="unknown option"):
        build_sam("sam2.1_hiera_tiny", pretrained=False, stability=False)


def test_build_sam_names_the_file_a_checkpoint_really_is(tiny_file, tmp_path):
    with pytest.raises(WeightsError, match=r"looks like a 'sam2\.1_hiera_tiny' checkpoint"):
        build_sam("sam2.1_hiera_small", checkpoint=tiny_file, device="cpu")
    with pytest.raises(WeightsError, match=r"this file is a 'sam2\.1_hiera_tiny' checkpoint"):
        build_sam("mobile_sam", checkpoint=tiny_file, device="cpu")
    from grounded_sam.testing.sam_refs import meta_tiny_vit_sam, save_checkpoint

    sam1 = save_checkpoint(meta_tiny_vit_sam(), tmp_path / "sam1.pth")
    with pytest.raises(WeightsError, match="SAM 1"):
        build_sam("sam2.1_hiera_tiny", checkpoint=sam1, device="cpu")
    cut = tmp_path / "cut.pt"
    cut.write_bytes(tiny_file.read_bytes()[:1000])
    with pytest.raises(WeightsError, match="cut.pt"):
        build_sam("sam2.1_hiera_tiny", checkpoint=cut, device="cpu")


# --------------------------------------------------------------------------- precision
@pytest.mark.parametrize("precision", ["int8", "bf16"])
def test_precision_modes(precision, chelsea):
    """int8 quantises Hiera's linear layers, bf16 autocasts encode and decode; outputs stay
    float32 and close to fp32."""
    ref, low = random_sam2(seed=2), random_sam2(seed=2).set_precision(precision)
    assert low.precision == precision
    pr, pl = SamPredictor(ref), SamPredictor(low)
    pr.set_image(chelsea)
    pl.set_image(chelsea)
    emb = pl.get_embedding()
    assert emb.features.dtype == torch.float32
    assert all(t.dtype == torch.float32 for t in emb.high_res)
    assert rel_diff(pr.get_embedding().features, emb.features) < 0.2
    box = np.array([120, 30, 360, 290])
    mr, _, _ = pr.predict(box=box, multimask_output=False)
    ml, il, ll = pl.predict(box=box, multimask_output=False)
    assert il.dtype == np.float32 and ll.dtype == np.float32
    assert (mr == ml).mean() > 0.95
    if precision == "bf16":
        assert not torch.equal(pr.get_embedding().features, emb.features)  # autocast ran


# The pipeline, CLI and eval tests (tests/test_pipeline.py, tests/test_cli_*.py, tests/eval/)
# run with a reduced SAM 2.1 as well as with SAM 1 / MobileSAM (grounded_sam.testing.pipeline).


# --------------------------------------------------------------------------- automatic
def test_automatic_defaults_follow_the_model_family():
    assert FAMILY_DEFAULTS["sam2"]["pred_iou_thresh"] == 0.8
    assert AutomaticMaskGenerator(random_sam2()).pred_iou_thresh == 0.8
    from grounded_sam.testing.pipeline import tiny_sam

    assert AutomaticMaskGenerator(tiny_sam()).pred_iou_thresh == 0.88
    assert AutomaticMaskGenerator(random_sam2(), pred_iou_thresh=0.5).pred_iou_thresh == 0.5
    AutomaticMaskGenerator.validate_knobs(use_m2m=True, multimask_output=False)
    with pytest.raises(InputError, match="use_m2m"):
        AutomaticMaskGenerator.validate_knobs(use_m2m="yes")


def _match_records(meta: list[dict], ours: list[dict]) -> None:
    """Same masks, in the same order, with the same boxes, scores, points and crops."""
    assert len(ours) == len(meta) and len(meta) > 0
    for m, o in zip(meta, ours, strict=True):
        agree = (m["segmentation"] == o["segmentation"]).mean()
        assert agree >= 0.999, agree
        assert abs(m["area"] - o["area"]) <= 0.001 * m["segmentation"].size
        assert np.allclose(m["bbox"], o["bbox"], atol=1)
        assert abs(m["predicted_iou"] - o["predicted_iou"]) <= 1e-4
        assert abs(m["stability_score"] - o["stability_score"]) <= 1e-3
        assert np.allclose(m["point_coords"], o["point_coords"], rtol=1e-6)
        assert list(m["crop_box"]) == list(o["crop_box"])


# Random weights give near-zero stability scores, predicted IoUs around 0.5-0.6 and masks
# covering most of the frame: Meta's defaults keep nothing, and NMS keeps one mask. So the
# filters are loosened and NMS is off (every surviving mask compared), except in one case.
KNOBS = dict(
    pred_iou_thresh=0.5,
    stability_score_thresh=0.0,
    box_nms_thresh=1.0,
    crop_nms_thresh=1.0,
    min_mask_region_area=0,
)


@pytest.mark.parametrize(
    "extra",
    [
        dict(points_per_side=4),
        dict(points_per_side=2, use_m2m=True),
        dict(points_per_side=3, multimask_output=False),
        pytest.param(dict(points_per_side=2, crop_n_layers=1), marks=pytest.mark.slow),
        dict(points_per_side=4, box_nms_thresh=0.7, crop_nms_thresh=0.7),
    ],
    ids=["grid", "m2m", "single_mask", "crops", "nms"],
)
def test_automatic_masks_match_metas_sam2_generator(extra, chelsea):
    pytest.importorskip("sam2")
    from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator

    from grounded_sam.testing.sam2_refs import meta_sam2

    ref = meta_sam2(TEST_CONFIG, seed=3)
    ours = build_sam2_model(TEST_CONFIG).eval()
    ours.load_state_dict(image_state_dict(TEST_CONFIG, ref.state_dict()))
    knobs = dict(KNOBS, **extra)
    meta = SAM2AutomaticMaskGenerator(ref, **knobs).generate(chelsea)
    mine = AutomaticMaskGenerator(ours, **knobs).generate(chelsea)
    _match_records(meta, mine)
    if extra.get("box_nms_thresh") is None:
        assert len(mine) >= 3  # enough masks to compare


def test_batched_embeddings_equal_single_ones(chelsea):
    """``SamPredictor.embed`` runs the encoder on a batch: the same embeddings and
    high-resolution features as one image at a time."""
    p = SamPredictor(random_sam2(seed=4))
    flipped = np.ascontiguousarray(chelsea[::-1])
    both = p.embed([chelsea, flipped], batch_size=2)
    for image, batched in zip((chelsea, flipped), both, strict=True):
        p.set_image(image)
        single = p.get_embedding()
        assert rel_diff(single.features, batched.features) < 1e-5
        for a, b in zip(single.high_res, batched.high_res, strict=True):
            assert rel_diff(a, b) < 1e-5


def test_cli_takes_a_built_in_sam2_variant_by_name(tiny_file, tmp_path, capsys):
    """The CLI takes a built-in SAM 2.1 variant by name with Meta's checkpoint format (the CLI
    tests run every command with the reduced, test-registered variant)."""
    from grounded_sam.testing.pipeline import run_cli, small_chelsea, write_png

    png = write_png(small_chelsea(), tmp_path / "in" / "chelsea.png")
    sam = ["--sam", "sam2.1_hiera_tiny", "--sam-checkpoint", str(tiny_file), "--device", "cpu"]
    rc, out, err = run_cli(
        "segment", [png, "--box", "20,10,200,140", *sam, "--out", tmp_path / "seg"], capsys
    )
    assert rc == 0, err
    doc = json.loads((tmp_path / "seg" / "chelsea" / "result.json").read_text())
    assert [a["label"] for a in doc["annotations"]] == ["box"]


def test_test_variant_is_registered_only_inside_its_block(tiny_file):
    """``sam2_test_variant`` (used by the pipeline / CLI / eval tests) registers the reduced
    SAM 2.1 by name and leaves both registries as they were."""
    from grounded_sam import hub
    from grounded_sam.testing.pipeline import (
        SAM2_TEST,
        sam2_test_checkpoint,
        sam2_test_variant,
        tiny_sam2,
    )

    models, entries = list_models(), [e.name for e in hub.list()]
    with sam2_test_variant() as name:
        assert name == SAM2_TEST and SAM2_TEST in list_models()
        with sam2_test_variant():  # nested: the outer block keeps it
            pass
        sam = build_sam(name, checkpoint=sam2_test_checkpoint(), device="cpu")
        assert isinstance(sam, Sam2) and sam.name == SAM2_TEST
        ours = tiny_sam2().state_dict()
        assert all(torch.equal(v, ours[k]) for k, v in sam.state_dict().items())
        with pytest.raises(WeightsError, match=r"looks like a 'sam2\.1_hiera_tiny'"):
            build_sam(name, checkpoint=tiny_file, device="cpu")
    assert list_models() == models and [e.name for e in hub.list()] == entries
    with pytest.raises(InputError, match="unknown SAM variant"):
        build_sam(SAM2_TEST, checkpoint=sam2_test_checkpoint(), device="cpu")
