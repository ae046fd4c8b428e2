"""GroundedSAM, segment(), Result and the overlay drawing.

Logic tests use a stub detector and the tiny-ViT SAM; end-to-end tests run both real
detectors (tiny random local models) with a MobileSAM-format checkpoint. Tests that run SAM do
so for each family (``SAM_FAMILIES``): those models, and a reduced SAM 2.1 (random weights,
Meta's checkpoint format, registered by name for the test).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from grounded_sam import GroundedSAM, Result, SamPredictor, segment
from grounded_sam.errors import InputError
from grounded_sam.pipeline import clear_pipelines, get_pipeline
from grounded_sam.testing.pipeline import (
    PHRASES,
    SAM_FAMILIES,
    TEXT,
    CallCounter,
    StubDetector,
    encoder_counter,
    gdino_dir,
    gdino_threshold,
    sam_by_name,
    sam_family,
    sam_model,
    small_astronaut,
    small_chelsea,
    tiny_sam,
    tiny_sam_of,
    yolo_clip_kwargs,
)
from grounded_sam.visualize import draw_overlay, instance_colors

H, W = 150, 226  # small_chelsea()


@pytest.fixture(params=SAM_FAMILIES)
def family(request) -> str:
    """Each SAM family in turn, its test variant usable by name during the test."""
    with sam_family(request.param):
        yield request.param


def _result(n: int = 2, h: int = 20, w: int = 30, with_image: bool = True) -> Result:
    rng = np.random.default_rng(n)
    masks = np.zeros((n, h, w), dtype=bool)
    boxes = np.zeros((n, 4), dtype=np.float32)
    for i in range(n):
        x0, y0 = 2 + 3 * i, 1 + 2 * i
        masks[i, y0 : y0 + 8, x0 : x0 + 10] = True
        masks[i, y0 + 3, x0 + 4] = False  # a hole, so RLE is not a plain rectangle
        boxes[i] = (x0, y0, x0 + 10, y0 + 8)
    labels = ["a cat" if i % 2 == 0 else "a dog" for i in range(n)]
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8) if with_image else None
    return Result(
        masks=masks,
        boxes=boxes,
        scores=np.linspace(0.9, 0.5, n),
        mask_scores=np.linspace(0.8, 0.6, n),
        labels=labels,
        image_size=(h, w),
        timings={"detector": 0.1, "encoder": 0.2, "decoder": 0.3, "total": 0.7},
        image=image,
    )


# --------------------------------------------------------------------------- Result
def test_result_normalises_types_and_len():
    r = _result(3)
    assert len(r) == 3
    assert r.masks.dtype == bool and r.masks.shape == (3, 20, 30)
    assert r.boxes.dtype == np.float32 and r.scores.dtype == np.float32
    assert r.mask_scores.dtype == np.float32 and r.image_size == (20, 30)


@pytest.mark.parametrize(
    "field, value, match",
    [
        ("masks", np.zeros((2, 5, 5), bool), r"masks must have shape \(N, 20, 30\)"),
        ("boxes", np.zeros((3, 4)), r"boxes must have shape \(2, 4\)"),
        ("scores", np.zeros(1), r"scores must have shape \(2,\)"),
        ("mask_scores", np.zeros(3), r"mask_scores must have shape \(2,\)"),
        ("labels", ["a cat"], "labels must be 2 strings"),
        ("image", np.zeros((5, 5, 3), np.uint8), r"image must be an \(20, 30, 3\) uint8"),
    ],
)
def test_result_rejects_inconsistent_fields(field, value, match):
    r = _result(2)
    kwargs = {k: getattr(r, k) for k in ("masks", "boxes", "scores", "mask_scores", "labels")}
    kwargs.update(image_size=r.image_size, image=r.image)
    kwargs[field] = value
    with pytest.raises(ValueError, match=match):
        Result(**kwargs)


def test_empty_result_exports_cleanly(tmp_path):
    r = Result.empty((12, 17))
    assert len(r) == 0 and r.masks.shape == (0, 12, 17) and r.boxes.shape == (0, 4)
    assert r.to_coco() == []
    image = np.full((12, 17, 3), 7, np.uint8)
    np.testing.assert_array_equal(r.overlay(image), image)
    r.save(tmp_path / "e", image=image)
    doc = json.loads((tmp_path / "e" / "result.json").read_text())
    assert doc["annotations"] == [] and doc["categories"] == []
    assert list((tmp_path / "e" / "masks").iterdir()) == []


def test_to_coco_decodes_with_pycocotools():
    from pycocotools import mask as mask_utils

    r = _result(3)
    anns = r.to_coco(image_id=42)
    assert [a["id"] for a in anns] == [1, 2, 3]
    assert {a["image_id"] for a in anns} == {42}
    assert [a["category_id"] for a in anns] == [1, 2, 1]  # first-appearance order
    for i, a in enumerate(anns):
        decoded = mask_utils.decode(a["segmentation"])
        assert decoded.shape == r.image_size
        np.testing.assert_array_equal(decoded.astype(bool), r.masks[i])
        assert a["area"] == int(r.masks[i].sum()) == int(mask_utils.area(a["segmentation"]))
        x0, y0, x1, y1 = r.boxes[i]
        assert a["bbox"] == pytest.approx([x0, y0, x1 - x0, y1 - y0])
        assert a["score"] == pytest.approx(r.scores[i]) and a["label"] == r.labels[i]
        assert a["mask_score"] == pytest.approx(r.mask_scores[i]) and a["iscrowd"] == 0
    json.dumps(anns)  # JSON-serialisable as is


def test_to_coco_category_ids():
    r = _result(2)
    anns = r.to_coco(category_ids={"a cat": 17, "a dog": 18, "a bird": 3})
    assert [a["category_id"] for a in anns] == [17, 18]
    with pytest.raises(ValueError, match=r"no id for the labels \['a dog'\]"):
        r.to_coco(category_ids={"a cat": 1})


def test_save_writes_json_masks_and_overlay(tmp_path):
    r = _result(2)
    out = r.save(tmp_path / "res")
    doc = json.loads((out / "result.json").read_text())
    assert doc["image"] == {"id": 1, "height": 20, "width": 30}
    assert doc["categories"] == [{"id": 1, "name": "a cat"}, {"id": 2, "name": "a dog"}]
    assert doc["timings"] == r.timings and len(doc["annotations"]) == 2
    names = sorted(p.name for p in (out / "masks").iterdir())
    assert names == ["000_a_cat.png", "001_a_dog.png"]
    for i, name in enumerate(names):
        png = np.array(Image.open(out / "masks" / name))
        assert png.dtype == np.uint8 and set(np.unique(png)) <= {0, 255}
        np.testing.assert_array_equal(png == 255, r.masks[i])
    np.testing.assert_array_equal(np.array(Image.open(out / "overlay.png")), r.overlay())


def test_save_again_replaces_the_earlier_result_as_a_whole(tmp_path):
    _result(3).save(tmp_path / "res")
    _result(1, with_image=False).save(tmp_path / "res")
    assert sorted(p.name for p in (tmp_path / "res").iterdir()) == ["masks", "result.json"]
    assert sorted(p.name for p in (tmp_path / "res" / "masks").iterdir()) == ["000_a_cat.png"]
    assert len(json.loads((tmp_path / "res" / "result.json").read_text())["annotations"]) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["res"]  # no temporary folder left


def test_save_refuses_a_folder_with_other_files_and_changes_nothing(tmp_path):
    _result(3).save(tmp_path / "res")
    keep = tmp_path / "res" / "masks" / "notes.txt"
    keep.write_text("not ours")
    before = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    with pytest.raises(InputError, match=r"not from a saved result \(masks/notes.txt\)"):
        _result(1).save(tmp_path / "res")
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == before
    assert keep.read_text() == "not ours"


def test_result_equality_is_identity():
    r = _result(2)
    assert r == r and r != _result(2)  # no elementwise array comparison error


def test_save_without_image_skips_overlay(tmp_path):
    r = _result(1, with_image=False)
    r.save(tmp_path / "res")
    assert not (tmp_path / "res" / "overlay.png").exists()
    assert (tmp_path / "res" / "result.json").is_file()


def test_overlay_needs_an_image_of_the_right_size():
    r = _result(2, with_image=False)
    with pytest.raises(InputError, match="pass it"):
        r.overlay()
    with pytest.raises(InputError, match="size"):
        r.overlay(np.zeros((21, 30, 3), np.uint8))
    assert r.overlay(np.zeros((20, 30, 3), np.uint8)).shape == (20, 30, 3)


# ------------------------------------------------------------------------ visualize
def test_instance_colors_are_distinct():
    c = instance_colors(24).astype(int)
    assert c.shape == (24, 3)
    d = np.abs(c[:, None] - c[None]).sum(-1)
    assert d[~np.eye(24, dtype=bool)].min() >= 20
    np.testing.assert_array_equal(instance_colors(5), instance_colors(24)[:5])  # stable prefix


def test_draw_overlay_colours_masks_only():
    image = np.full((40, 60, 3), 100, np.uint8)
    masks = np.zeros((2, 40, 60), bool)
    masks[0, 5:15, 5:20] = True
    masks[1, 20:35, 30:55] = True
    before = image.copy()
    out = draw_overlay(image, masks, alpha=0.5)
    np.testing.assert_array_equal(image, before)  # input untouched
    colors = instance_colors(2).astype(float)
    np.testing.assert_allclose(out[10, 10], np.round(100 * 0.5 + colors[0] * 0.5), atol=1)
    np.testing.assert_allclose(out[27, 40], np.round(100 * 0.5 + colors[1] * 0.5), atol=1)
    np.testing.assert_array_equal(out[5, 5], colors[0])  # outline in the instance colour
    outside = ~masks.any(0)
    np.testing.assert_array_equal(out[outside], image[outside])
    boxed = draw_overlay(
        image, masks, [[5, 5, 19, 14], [30, 20, 54, 34]], ["cat", "dog"], [0.9, 0.4]
    )
    assert (boxed != out).any()  # boxes and labels drawn
    with pytest.raises(ValueError, match="masks must have shape"):
        draw_overlay(image, masks[:, :10])


# ---------------------------------------------------------------- GroundedSAM (stub)
STUB_BOXES = [[20, 15, 120, 110], [-30, 60, 300, 149]]  # the second one is clipped


@pytest.fixture(scope="module", params=SAM_FAMILIES)
def stub_run(request):
    """One text run on the tiny SAM of each family, with the encoder and decoder calls
    counted."""
    det = StubDetector(STUB_BOXES, [0.9, 0.4], ["a cat", "a dog"])
    sam = tiny_sam_of(request.param)
    gs = GroundedSAM(det, sam)
    dec_counter = CallCounter(sam.mask_decoder, batch_arg="sparse_prompt_embeddings")
    with encoder_counter(sam) as enc, dec_counter as dec:
        result = gs.segment(small_chelsea(), TEXT)
    return gs, det, result, enc, dec


def test_text_prompt_one_encoder_and_one_decoder_call(stub_run):
    gs, det, r, enc, dec = stub_run
    assert det.calls == [((H, W, 3), ["a cat", "a dog"])]  # phrases parsed once, up front
    assert enc.calls == 1 and gs.encoder_calls == 1
    assert dec.calls == 1 and dec.batch_sizes == [2]  # both boxes in one decoder call
    assert len(r) == 2 and r.masks.shape == (2, H, W) and r.image_size == (H, W)
    assert r.labels == ["a cat", "a dog"]
    np.testing.assert_allclose(r.scores, [0.9, 0.4])  # detector scores
    np.testing.assert_allclose(r.boxes, [[20, 15, 120, 110], [0, 60, W, 149]])  # clipped
    assert set(r.timings) == {"detector", "encoder", "decoder", "total"}
    assert r.timings["encoder"] > 0 and r.timings["total"] >= r.timings["decoder"]
    assert r.image is not None and r.image.shape == (H, W, 3)
    assert r.masks.any(axis=(1, 2)).all() and not r.masks.all(axis=(1, 2)).any()


def test_batched_boxes_match_single_box_prediction(stub_run):
    gs, _, r, _, _ = stub_run
    p = SamPredictor(gs.sam)
    p.set_image(small_chelsea())
    masks, iou, _ = p.predict(box=r.boxes[1], multimask_output=False)
    assert np.mean(masks[0] == r.masks[1]) > 0.999
    assert r.mask_scores[1] == pytest.approx(float(iou[0]), abs=1e-4)


def test_embedding_cache_reused_for_other_text(stub_run):
    gs, det, _, _, _ = stub_run
    sam = gs.sam
    saved = det.boxes, det.scores, det.labels
    det.boxes, det.scores, det.labels = np.array([[10, 10, 60, 60]], np.float32), [0.7], ["a dog"]
    try:
        with encoder_counter(sam) as enc:
            r = gs.segment(small_chelsea().copy(), "a dog")  # same content, another array
        assert enc.calls == 0 and gs.encoder_calls == 1
        assert r.timings["encoder"] == 0.0 and r.labels == ["a dog"]
        # points on the same image reuse it too; a background point is accepted
        with encoder_counter(sam) as enc:
            p = gs.segment(small_chelsea(), points=[[60, 60], [200, 20]], point_labels=[1, 0])
        assert enc.calls == 0
        assert p.labels == ["point"] and p.masks.shape == (1, H, W)
        assert p.scores[0] == p.mask_scores[0]
        # the box of a point prompt is the mask's bounding box (this prompt's mask is not empty)
        assert p.masks[0].any()
        ys, xs = np.nonzero(p.masks[0])
        np.testing.assert_allclose(p.boxes[0], [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
    finally:
        det.boxes, det.scores, det.labels = saved


def test_embedding_cache_is_bounded_lru(family):
    sam = tiny_sam_of(family)
    gs = GroundedSAM(StubDetector([], [], []), sam, cache_size=1)
    a, b = small_chelsea(), small_astronaut()
    with encoder_counter(sam) as enc:
        gs.set_image(a)
        gs.set_image(b)  # evicts a
        gs.set_image(b)  # hit
        gs.set_image(a)  # miss again
    assert enc.calls == 3 == gs.encoder_calls and len(gs.cache) == 1


def test_multimask_point_prompt_keeps_best_candidate(stub_run):
    gs = stub_run[0]
    r = gs.segment(small_chelsea(), points=[[100, 70]], multimask_output=True)
    p = SamPredictor(gs.sam)
    p.set_embedding(gs.predictor.get_embedding())
    masks, iou, _ = p.predict(np.array([[100.0, 70.0]]), np.array([1]), multimask_output=True)
    best = int(np.argmax(iou))
    assert r.mask_scores[0] == pytest.approx(float(iou[best]), abs=1e-4)
    assert np.mean(r.masks[0] == masks[best]) > 0.999


def test_box_prompts_are_clipped_and_labelled(stub_run):
    gs = stub_run[0]
    r = gs.segment(small_chelsea(), boxes=[[10, 10, 80, 90], [150, -20, 400, 60]])
    assert r.labels == ["box", "box"]
    np.testing.assert_allclose(r.boxes, [[10, 10, 80, 90], [150, 0, W, 60]])
    np.testing.assert_array_equal(r.scores, r.mask_scores)
    assert r.timings["detector"] == 0.0


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"boxes": [[300, 10, 400, 50]]}, ValueError, "degenerate"),
        ({"boxes": [[10, 10, 10, 50]]}, ValueError, "degenerate"),
        ({"boxes": [[50, 10, 10, 50]]}, ValueError, "not XYXY"),
        ({"boxes": [[1, 2, 3]]}, ValueError, r"shape \(N, 4\)"),
        ({"points": [[500, 10]]}, ValueError, "outside"),
        ({"points": [[5, 5]], "point_labels": [2]}, ValueError, "1 .foreground. or 0"),
        (
            {"points": [[5, 5]], "point_labels": [1, 1]},
            ValueError,
            r"point_labels must have shape \(1,\)",
        ),
        ({"points": [[5, np.nan]]}, ValueError, "NaN"),
        ({"point_labels": [1]}, ValueError, "without points"),
        ({}, ValueError, "nothing to segment"),
        ({"text": "a cat", "boxes": [[1, 2, 30, 40]]}, ValueError, "not both"),
        ({"text": ""}, ValueError, "no phrases"),
        ({"text": " . "}, ValueError, "no phrases"),
        ({"text": 3}, InputError, "text must be"),
        ({"points": [[5, 5]], "boxes": [[1, 1, 9, 9], [2, 2, 8, 8]]}, ValueError, "one box"),
    ],
)
def test_bad_prompts_raise_before_any_model_runs(kwargs, error, match):
    sam = tiny_sam()
    det = StubDetector([[1, 1, 5, 5]], [0.5], ["a cat"])
    gs = GroundedSAM(det, sam)
    kwargs = dict(kwargs)
    text = kwargs.pop("text", None)
    with CallCounter(sam.image_encoder) as enc, pytest.raises(error, match=match):
        gs.segment(small_chelsea(), text, **kwargs)
    assert enc.calls == 0 and det.calls == []


def test_bad_images_raise_clear_errors(tmp_path):
    import ultralytics  # noqa: F401  (patches PIL.Image.open; a text file must still be a ValueError)

    gs = GroundedSAM(StubDetector([], [], []), tiny_sam())
    (tmp_path / "x.jpg").write_text("not an image")
    with pytest.raises(ValueError, match="not a readable image"):
        gs.segment(tmp_path / "x.jpg", "a cat")
    with pytest.raises(ValueError, match="not a readable image"):
        gs.segment_batch([small_chelsea(), tmp_path / "x.jpg"], "a cat")
    with pytest.raises(ValueError, match="not found"):
        gs.segment(tmp_path / "missing.png", "a cat")
    with pytest.raises(InputError, match="unsupported image input"):
        gs.segment(12, "a cat")


def test_no_detections_is_an_empty_result_without_sam():
    sam = tiny_sam()
    det = StubDetector([], [], [])
    gs = GroundedSAM(det, sam)
    with CallCounter(sam.image_encoder) as enc:
        r = gs.segment(small_chelsea(), "a unicorn")
    assert enc.calls == 0 and len(r) == 0 and r.masks.shape == (0, H, W)
    assert r.to_coco() == [] and r.timings["encoder"] == 0.0 and "total" in r.timings


def test_refine_false_returns_detector_masks():
    sam = tiny_sam()
    masks = np.zeros((1, H, W), bool)
    masks[0, 20:40, 30:70] = True
    gs = GroundedSAM(StubDetector([[30, 20, 70, 40]], [0.6], ["a cat"], masks), sam)
    with CallCounter(sam.image_encoder) as enc:
        r = gs.segment(small_chelsea(), "a cat", refine_with_sam=False)
    assert enc.calls == 0
    np.testing.assert_array_equal(r.masks, masks)
    np.testing.assert_allclose(r.mask_scores, [0.6])  # documented: detector score repeated
    gs_boxes_only = GroundedSAM(StubDetector([[1, 1, 9, 9]], [0.5], ["a cat"]), sam)
    with pytest.raises(InputError, match="returned boxes only"):
        gs_boxes_only.segment(small_chelsea(), "a cat", refine_with_sam=False)


def test_constructor_errors():
    with pytest.raises(ValueError, match="unknown detector 'nope'.*grounding-dino"):
        GroundedSAM("nope", tiny_sam())
    with pytest.raises(InputError, match="sam must be"):
        GroundedSAM(StubDetector([], [], []), 3)
    with pytest.raises(InputError, match="only apply when the detector is given by name"):
        GroundedSAM(StubDetector([], [], []), tiny_sam(), box_threshold=0.3)
    with pytest.raises(InputError, match="detector must be"):
        GroundedSAM(object(), tiny_sam())
    with pytest.raises(ValueError, match="cache_size"):
        GroundedSAM(StubDetector([], [], []), tiny_sam(), cache_size=0)
    # point/box prompts never build the named detector
    gs = GroundedSAM("grounding-dino", SamPredictor(tiny_sam()), model="/nonexistent/dir")
    assert gs.sam is tiny_sam()
    assert len(gs.segment(small_chelsea(), boxes=[[10, 10, 80, 90]])) == 1
    with pytest.raises(InputError, match="directory not found"):  # built on the first text
        gs.segment(small_chelsea(), "a cat")


def test_segment_batch_encodes_in_one_pass_and_matches_single(family):
    sam = tiny_sam_of(family)
    det = StubDetector([[20, 20, 100, 120]], [0.8], ["a cat"])
    gs = GroundedSAM(det, sam)
    images = [small_chelsea(), small_astronaut()]
    with encoder_counter(sam) as enc:
        results = gs.segment_batch(images, ["a cat", "a cat. a dog"])
    assert enc.calls == 1 and enc.batch_sizes == [2] and gs.encoder_calls == 2
    assert [r.image_size for r in results] == [(H, W), (160, 160)]
    assert [t for _, t in det.calls] == [["a cat"], ["a cat", "a dog"]]
    assert results[0].timings["encoder"] == pytest.approx(results[1].timings["encoder"])
    for r in results:
        t = r.timings
        assert t["total"] >= t["detector"] + t["encoder"] + t["decoder"]
    single = GroundedSAM(det, sam).segment(small_astronaut(), "a cat")
    assert np.mean(single.masks == results[1].masks) > 0.999
    np.testing.assert_allclose(single.mask_scores, results[1].mask_scores, atol=1e-3)
    with encoder_counter(sam) as enc:
        again = gs.segment_batch(images[1:], "a cat")  # one text for all; cached embedding
    assert enc.calls == 0 and len(again) == 1
    with pytest.raises(InputError, match="one per image"):
        gs.segment_batch(images, ["a cat", "a dog", "a bird"])
    assert gs.segment_batch([], "a cat") == []


def test_module_level_segment_reuses_pipeline_by_configuration(family):
    """segment() keeps the pipeline of a configuration given by value (names, paths,
    numbers); one holding an object is built fresh each call (never keyed by identity)."""
    clear_pipelines()
    kw = dict(
        detector="grounding-dino",
        **sam_by_name(family),
        device="cpu",
        model=gdino_dir(),
        box_threshold=gdino_threshold(2),
    )
    r1 = segment(small_chelsea(), "a cat. a dog.", **kw)
    pipe = get_pipeline(**kw)
    assert pipe is get_pipeline(**kw) and pipe.encoder_calls == 1
    r2 = segment(small_chelsea(), "a cat. a dog.", **kw)
    assert pipe.encoder_calls == 1  # the same pipeline: its embedding cache hit
    np.testing.assert_array_equal(r1.masks, r2.masks)
    assert get_pipeline(**{**kw, "box_threshold": 0.9}) is not pipe
    sam = tiny_sam()
    det = StubDetector([[20, 20, 100, 120]], [0.8], ["a cat"])
    assert get_pipeline(det, sam) is not get_pipeline(det, sam)
    clear_pipelines()


def test_module_level_segment_takes_precision(family):
    clear_pipelines()
    det = StubDetector([[20, 20, 100, 120]], [0.8], ["a cat"])
    kw = dict(detector=det, **sam_by_name(family))
    r = segment(small_chelsea(), "a cat", device="cpu", precision="int8", **kw)
    assert len(r) == 1 and r.masks.shape == (1, *small_chelsea().shape[:2])
    int8 = get_pipeline(device="cpu", precision="int8", **kw)
    assert int8.sam.precision == "int8"
    assert get_pipeline(device="cpu", **kw).sam.precision == "fp32"  # its own pipeline
    clear_pipelines()


# ----------------------------------------------------------- end to end, real models
def test_grounding_dino_end_to_end_with_an_official_format_checkpoint(family):
    from pycocotools import mask as mask_utils

    thr = gdino_threshold(2)
    gs = GroundedSAM(
        "grounding-dino",
        **sam_by_name(family),
        device="cpu",
        model=gdino_dir(),
        box_threshold=thr,
        text_threshold=0.0,
    )
    assert gs.detector.box_threshold == pytest.approx(thr)  # kwargs passed through
    assert gs.device == torch.device("cpu")
    with CallCounter(gs.sam.mask_decoder, batch_arg="sparse_prompt_embeddings") as dec:
        r = gs.segment(small_chelsea(), TEXT)
    assert 1 <= len(r) <= 3 and dec.calls == 1
    assert set(r.labels) <= set(PHRASES)
    assert (r.scores >= thr).all() and r.masks.shape == (len(r), H, W)
    assert ((r.boxes[:, 2:] <= [W, H]) & (r.boxes[:, :2] >= 0)).all()
    for ann, m in zip(r.to_coco(image_id=7), r.masks, strict=True):
        decoded = mask_utils.decode(ann["segmentation"])
        assert decoded.shape == (H, W)
        np.testing.assert_array_equal(decoded.astype(bool), m)


def test_yolo_clip_end_to_end_refined_and_raw(family):
    sam = sam_model(family)
    gs = GroundedSAM("yolo-clip", sam, **yolo_clip_kwargs())
    assert gs.detector.device == sam.device
    with encoder_counter(sam) as enc:
        raw = gs.segment(small_chelsea(), TEXT, refine_with_sam=False)
    assert enc.calls == 0 and 1 <= len(raw) <= 2
    assert set(raw.labels) <= set(PHRASES)
    dets = gs.detector.detect(small_chelsea(), TEXT)
    np.testing.assert_array_equal(raw.masks, dets.masks)  # pure YOLO masks
    with encoder_counter(sam) as enc:
        refined = gs.segment(small_chelsea(), TEXT)
    assert enc.calls == 1
    assert refined.labels == raw.labels
    # Same detections; YOLO's float rounding may differ between calls with the thread count
    # (ultralytics' first predict runs its setup at its own thread setting).
    np.testing.assert_allclose(refined.boxes, raw.boxes, rtol=1e-5)
    assert refined.masks.shape == raw.masks.shape and (refined.masks != raw.masks).any()


# ------------------------------------------------------------------------------ CUDA
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu(tmp_path):
    """device=None puts SAM on CUDA; masks and scores match the CPU run; the cache works."""
    import copy

    cpu_sam = tiny_sam()
    gpu_sam = copy.deepcopy(cpu_sam).cuda()
    det = StubDetector(STUB_BOXES, [0.9, 0.4], ["a cat", "a dog"])
    gpu = GroundedSAM(det, SamPredictor(gpu_sam))
    assert gpu.device.type == "cuda"
    r_gpu = gpu.segment(small_chelsea(), TEXT)
    r_cpu = GroundedSAM(det, cpu_sam).segment(small_chelsea(), TEXT)
    assert r_gpu.masks.dtype == bool and isinstance(r_gpu.masks, np.ndarray)
    assert np.mean(r_gpu.masks == r_cpu.masks) > 0.99
    np.testing.assert_allclose(r_gpu.mask_scores, r_cpu.mask_scores, atol=5e-3)
    again = gpu.segment(small_chelsea(), "a dog")
    assert again.timings["encoder"] == 0.0 and gpu.encoder_calls == 1
    batch = gpu.segment_batch([small_chelsea(), small_astronaut()], "a cat")
    assert gpu.encoder_calls == 2 and [len(r) for r in batch] == [2, 2]
    from grounded_sam import build_sam

    ckpt = tmp_path / "mobile_sam.pt"  # MobileSAM-format file without the ultralytics reference
    torch.save(build_sam("mobile_sam", pretrained=False, device="cpu").state_dict(), ckpt)
    built = GroundedSAM(det, "mobile_sam", sam_checkpoint=ckpt)
    assert built.device.type == "cuda"  # device=None resolves like build_sam
    assert len(built.segment(small_chelsea(), TEXT)) == 2
