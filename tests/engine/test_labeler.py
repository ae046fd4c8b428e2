"""The per-image step: call counts, batching, de-duplication, classes, negatives, thresholds,
candidates, and masks equal to ``GroundedSAM.segment``'s."""

from __future__ import annotations

import numpy as np
import pytest
from engine_helpers import ContentDetector, photo, write_bad_files
from pycocotools import mask as mask_utils

from grounded_sam.engine.labeler import CandidateOptions, Labeler
from grounded_sam.engine.sources import ImageTask
from grounded_sam.errors import InputError
from grounded_sam.masks import decode_rle, encode_rle
from grounded_sam.testing.pipeline import CallCounter, StubDetector, gdino_dir, tiny_sam

ONTOLOGY = {
    "classes": [{"name": "cat", "prompts": ["a cat", "a kitten"]}, {"name": "dog"}],
    "negatives": ["a toy"],
}


def _counters(sam):
    return (
        CallCounter(sam.image_encoder),
        CallCounter(sam.mask_decoder, batch_arg="sparse_prompt_embeddings"),
    )


def test_grounding_dino_one_pass_per_image_for_all_prompts():
    """Per image: one Grounding DINO forward for 4 captions (3 prompts + a negative), one
    encoder pass and one decoder call holding every kept box."""
    sam = tiny_sam()
    lab = Labeler(
        ONTOLOGY,
        detector="grounding-dino",
        sam=sam,
        device="cpu",
        model=gdino_dir(),
        box_threshold=0.86,
    )
    images = [photo("chelsea"), photo("astronaut")]
    dets = [lab._detect([im])[0] for im in images]
    kept = [len(lab._filter(im, d)[0]) for im, d in zip(images, dets, strict=True)]
    assert sum(kept) > 0
    enc, dec = _counters(sam)
    # the module that runs the forward pass: FastGroundingDino (or transformers' model
    # behind the detector's runner), called with pixel_values first
    forward = getattr(lab.pipe.detector, "runner", lab.pipe.detector.model)
    with CallCounter(forward) as det, enc, dec:
        units = [lab.label_image(im, f"{i}.png") for i, im in enumerate(images)]
    assert det.calls == 2
    with_boxes = [k for k in kept if k]
    assert enc.calls == len(with_boxes) and enc.batch_sizes == [1] * len(with_boxes)
    assert dec.calls == len(with_boxes) and dec.batch_sizes == with_boxes
    assert all(u.ok for u in units)
    assert {i["prompt"] for u in units for i in u.instances} <= {"a cat", "a kitten", "dog"}


def test_batches_use_detect_batch_and_give_the_same_units():
    sam = tiny_sam()
    images = [photo(k) for k in ("chelsea", "astronaut", "coffee")]
    tasks = [ImageTask(f"{i}.png", "", None) for i in range(3)]
    one = Labeler(ONTOLOGY, detector=ContentDetector(), sam=sam)
    singles = [one.label_image(im, t.file_name) for im, t in zip(images, tasks, strict=True)]
    det = ContentDetector()
    two = Labeler(ONTOLOGY, detector=det, sam=sam, batch_size=2)
    enc, dec = _counters(sam)
    with enc, dec:
        batched = two._label_loaded(list(zip(tasks[:2], images[:2], strict=True)), None)
        batched += two._label_loaded([(tasks[2], images[2])], None)
    assert det.batch_calls == 1 and det.calls == 1  # 2 images in one detect_batch, then 1
    # one encoder pass per image even in a batch: batched passes differ in the last bits
    assert enc.batch_sizes == [1, 1, 1]
    assert dec.calls == 3
    assert batched == singles


def test_masks_and_scores_are_those_of_segment():
    """The labeller's SAM step is the pipeline's: same boxes -> same masks and IoU scores."""
    from grounded_sam.pipeline import GroundedSAM

    img = photo("chelsea")
    boxes = [[5, 5, 60, 90], [40, 10, 120, 80]]
    det = StubDetector(boxes, [0.9, 0.6], ["a cat", "a cat"])
    unit = Labeler("a cat", detector=det, sam=tiny_sam(), dedup_iou=1.0).label_image(img, "c.png")
    ref = GroundedSAM(det, tiny_sam()).segment(img, "a cat")
    assert len(unit.instances) == 2
    for inst, mask, iou, score in zip(
        sorted(unit.instances, key=lambda d: -d["score"]),
        ref.masks,
        ref.mask_scores,
        ref.scores,
        strict=True,
    ):
        assert inst["segmentation"] == encode_rle(mask)[0]
        assert inst["area"] == int(mask.sum())
        assert inst["mask_score"] == float(iou) and inst["score"] == float(score)
        rle = {
            "size": inst["segmentation"]["size"],
            "counts": inst["segmentation"]["counts"].encode(),
        }
        assert inst["bbox"] == [float(v) for v in mask_utils.toBbox(rle)]
        assert 0.0 <= inst["stability"] <= 1.0 and inst["iscrowd"] == 0


BOX = [10, 10, 70, 80]


def _label(boxes, scores, labels, ontology=ONTOLOGY, **kw):
    det = StubDetector(boxes, scores, labels)
    return Labeler(ontology, detector=det, sam=tiny_sam(), **kw).label_image(
        photo("chelsea"), "c.png"
    )


def test_synonyms_of_one_class_give_one_instance():
    unit = _label([BOX, BOX], [0.8, 0.9], ["a cat", "a kitten"])
    assert len(unit.instances) == 1
    inst = unit.instances[0]
    assert (inst["category_id"], inst["prompt"], inst["score"]) == (
        1,
        "a kitten",
        pytest.approx(0.9),
    )
    assert unit.notes["duplicates_merged"] == 1


def test_overlapping_classes_are_flagged_or_resolved_with_exclusive():
    kept = _label([BOX, BOX], [0.9, 0.7], ["a cat", "dog"])
    assert [i["category_id"] for i in kept.instances] == [1, 2]
    assert kept.instances[0]["flags"] == {"class_overlap": ["dog"]}
    assert kept.instances[1]["flags"] == {"class_overlap": ["cat"]}
    resolved = _label([BOX, BOX], [0.9, 0.7], ["a cat", "dog"], exclusive=True)
    assert [i["category_id"] for i in resolved.instances] == [1]
    assert resolved.instances[0]["flags"] == {"class_overlap": ["dog"]}
    assert resolved.notes["class_suppressed"] == 1


def test_negatives_suppress_overlapping_positives():
    other = [80, 20, 120, 90]
    unit = _label([BOX, other, [12, 8, 70, 82]], [0.9, 0.8, 0.5], ["a cat", "dog", "a toy"])
    assert [i["category_id"] for i in unit.instances] == [2]
    assert unit.notes["negative_suppressed"] == 1


def test_class_thresholds_filter_their_class_only():
    onto = {"classes": [{"name": "cat", "threshold": 0.75}, "dog"]}
    unit = _label([BOX, [80, 20, 120, 90]], [0.7, 0.6], ["cat", "dog"], ontology=onto)
    assert [i["prompt"] for i in unit.instances] == ["dog"]


def test_named_detector_runs_at_the_lowest_threshold(cli_models):
    onto = {"classes": [{"name": "cat", "threshold": 0.2}, "dog"]}
    lab = Labeler(onto, detector="content-boxes", sam=tiny_sam(), box_threshold=0.5)
    assert lab.pipe.detector.box_threshold == 0.2
    assert lab.thresholds == [0.2, 0.5]
    img = np.full((60, 80, 3), 90, np.uint8)  # both strips score 90/255 = 0.35
    unit = lab.label_image(img, "grey.png")
    assert [i["prompt"] for i in unit.instances] == ["cat"]


def test_empty_image_costs_no_sam_pass():
    sam = tiny_sam()
    lab = Labeler(ONTOLOGY, detector=ContentDetector(), sam=sam)
    enc, dec = _counters(sam)
    with enc, dec:
        unit = lab.label_image(photo("black"), "black.png")
    assert unit.ok and unit.instances == [] and (unit.width, unit.height) == (128, 96)
    assert enc.calls == 0 and dec.calls == 0


def test_candidates_reuse_the_embedding_and_skip_covered_regions():
    sam = tiny_sam()
    loose = CandidateOptions(
        points_per_side=3, pred_iou_thresh=0.0, stability_score_thresh=0.0, min_area=0
    )
    img = photo("chelsea")
    det = StubDetector([BOX], [0.9], ["a cat"])
    everything = Labeler(
        "a cat", detector=det, sam=sam, candidates={**loose.__dict__, "max_covered": 1.0}
    )
    all_cands = everything.label_image(img, "c.png").candidates
    lab = Labeler("a cat", detector=det, sam=sam, candidates=loose)
    enc, _ = _counters(sam)
    with enc:
        unit = lab.label_image(img, "c.png")
    assert enc.calls == 1  # the automatic generator ran on the labelling embedding
    assert len(unit.candidates) <= len(all_cands) and all_cands
    inst = decode_rle(unit.instances[0]["segmentation"])
    for c in unit.candidates:
        m = decode_rle(c["segmentation"])
        assert m.shape == img.shape[:2] and c["area"] == int(m.sum())
        assert (m & inst).sum() / m.sum() <= loose.max_covered
    areas = [c["area"] for c in unit.candidates]
    assert areas == sorted(areas, reverse=True)
    # an image with no detection still gets its candidates (one encoder pass for them)
    blank = Labeler("a cat", detector=ContentDetector(0.99), sam=sam, candidates=loose)
    with enc:
        empty = blank.label_image(img, "c.png")
    assert empty.instances == [] and empty.candidates and enc.calls == 2


def test_bad_files_become_error_units(tmp_path):
    names = write_bad_files(tmp_path)
    lab = Labeler(ONTOLOGY, detector=ContentDetector(), sam=tiny_sam())
    good = tmp_path / "good.png"
    from PIL import Image

    Image.fromarray(photo("coffee")).save(good)
    tasks = [ImageTask(n, str(tmp_path / n), (tmp_path / n).stat().st_size) for n in names]
    units = lab.label_batch([*tasks, ImageTask("good.png", str(good), good.stat().st_size)])
    assert [u.status for u in units] == ["error", "error", "error", "ok"]
    assert units[0].reason == "image file 'empty.jpg' is empty (0 bytes)"
    assert units[1].reason.startswith("'notes.jpg' is not a readable image")
    assert units[2].reason.startswith("image file 'truncated.jpg' is truncated or corrupt")
    assert all(str(tmp_path) not in u.reason for u in units[:3])  # no absolute paths


def test_a_detector_label_outside_the_prompts_is_a_bug():
    with pytest.raises(RuntimeError, match="the detector labelled a box 'a bird'"):
        _label([BOX], [0.9], ["a bird"])


def test_options_need_a_named_detector():
    with pytest.raises(InputError) as e:
        Labeler("cat", detector=ContentDetector(), sam=tiny_sam(), box_threshold=0.3)
    assert str(e.value) == (
        "detector options ['box_threshold'] only apply when the detector is given by name; "
        "configure the detector object instead"
    )


def test_detector_identity_ignores_paths_and_explicit_defaults(cli_models, tmp_path):
    """Shards on machines where the model lives elsewhere, or a flag given at its default,
    are the same detector; another model file is not."""
    import shutil

    from grounded_sam.engine.labeler import LabelConfig

    a, b = tmp_path / "a" / "gdino", tmp_path / "b" / "model"
    shutil.copytree(gdino_dir(), a)
    shutil.copytree(gdino_dir(), b)

    def ident(**kw):
        return LabelConfig.create("cat", **kw).detector_identity()

    assert ident(detector="grounding-dino", model=a) == ident(
        detector="grounding-dino", model=str(b)
    )
    (b / "config.json").write_text((b / "config.json").read_text() + " ")
    assert ident(detector="grounding-dino", model=a) != ident(detector="grounding-dino", model=b)
    assert ident(detector="content-boxes") == ident(detector="content-boxes", box_threshold=0.05)
    assert ident(detector="content-boxes") == {
        "name": "content-boxes",
        "options": {"box_threshold": 0.05},
    }
