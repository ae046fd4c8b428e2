"""Labelling runs through the Python API: the COCO output, bad images, resume, refusals,
shards and merge, review queue, candidates, stored embeddings and the audit."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from engine_helpers import ContentDetector, photo, tree, write_photos
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from grounded_sam.engine import dataset as ds
from grounded_sam.engine.labeler import CandidateOptions
from grounded_sam.engine.run import label, merge
from grounded_sam.errors import GroundedSAMError, InputError
from grounded_sam.testing.pipeline import CallCounter, tiny_sam

BAD = ["empty.jpg", "notes.jpg", "truncated.jpg"]
GOOD = ["astronaut.png", "black.png", "chelsea.png", "coffee.png", "sub/flip.png"]


def _label(images, classes, out, **kw):
    kw.setdefault("detector", ContentDetector())
    kw.setdefault("sam", tiny_sam())
    return label(images, classes, out, progress=False, **kw)


def test_coco_output(reference, photos):
    out, summary = reference
    assert summary.exit_code == 2 and summary.failed == 3 and summary.labelled == 5
    assert sorted(summary.failed_files) == BAD
    coco = COCO(str(out / ds.ANNOTATIONS))  # pycocotools loads it
    doc = json.loads((out / ds.ANNOTATIONS).read_text())
    assert list(doc) == ["images", "annotations", "categories"]
    assert [img["file_name"] for img in doc["images"]] == GOOD
    assert [img["id"] for img in doc["images"]] == [1, 2, 3, 4, 5]
    assert doc["categories"] == [
        {"id": 1, "name": "cat", "prompts": ["a cat", "a kitten"]},
        {"id": 2, "name": "dog", "prompts": ["a dog"]},
    ]
    anns = doc["annotations"]
    assert anns and [a["id"] for a in anns] == list(range(1, len(anns) + 1))
    assert [a["image_id"] for a in anns] == sorted(a["image_id"] for a in anns)
    black = next(img["id"] for img in doc["images"] if img["file_name"] == "black.png")
    assert not coco.getAnnIds(imgIds=[black])  # labelled, empty
    for a in anns:
        assert list(a) == [
            "id",
            "image_id",
            "category_id",
            "segmentation",
            "area",
            "bbox",
            "iscrowd",
            "score",
            "mask_score",
            "stability",
            "prompt",
        ]
        img = coco.imgs[a["image_id"]]
        mask = coco.annToMask(a)  # decodes every mask at its image's size
        assert mask.shape == (img["height"], img["width"])
        assert a["area"] == int(mask.sum()) > 0 and a["iscrowd"] == 0
        assert isinstance(a["segmentation"]["counts"], str)
        rle = {"size": a["segmentation"]["size"], "counts": a["segmentation"]["counts"].encode()}
        assert a["bbox"] == [float(v) for v in mask_utils.toBbox(rle)]
        assert a["prompt"] in {"a cat", "a kitten", "a dog"}
        assert 0 < a["score"] <= 1 and 0 <= a["stability"] <= 1
    errors = json.loads((out / ds.ERRORS).read_text())
    assert [e["file_name"] for e in errors] == BAD
    assert errors[0]["reason"] == "image file 'empty.jpg' is empty (0 bytes)"
    assert "mtime" not in (out / ds.ANNOTATIONS).read_text()


def test_review_queue(reference):
    out, summary = reference
    review = json.loads((out / ds.REVIEW).read_text())
    doc = json.loads((out / ds.ANNOTATIONS).read_text())
    assert summary.assembly.review == len(review) > 0
    keys = [(-r["priority"], r["image_id"], r["annotation_id"] or -1) for r in review]
    assert keys == sorted(keys)  # most urgent first
    ann_ids = {a["id"]: a["image_id"] for a in doc["annotations"]}
    names = {img["id"]: img["file_name"] for img in doc["images"]}
    for r in review:
        assert set(r) == {"image_id", "annotation_id", "file_name", "priority", "reasons", "detail"}
        assert r["file_name"] == names[r["image_id"]] and r["reasons"] and r["detail"]
        if r["annotation_id"] is not None:
            assert ann_ids[r["annotation_id"]] == r["image_id"]
    black = next(r for r in review if r["file_name"] == "black.png")
    assert black["annotation_id"] is None and black["reasons"] == ["empty"]


def test_image_status_for_the_app(reference):
    out, _ = reference
    status = ds.image_status(out, [*GOOD, *BAD, "new.jpg"])
    assert status["black.png"] == "needs_review"  # empty: in the review queue
    assert {status[n] for n in BAD} == {"error"} and status["new.jpg"] == "not_done"
    assert set(ds.image_status(out)) == {*GOOD, *BAD}


def test_rerun_labels_nothing_again_and_retries_bad_images(reference, tmp_path):
    out0, _ = reference
    out = tmp_path / "ds"
    shutil.copytree(out0, out)
    before = (out / ds.ANNOTATIONS).read_bytes()
    photos = json.loads((out / ds.MANIFEST).read_text())["sources"][0]["path"]
    enc = CallCounter(tiny_sam().image_encoder)
    with enc:
        again = _label(photos, out0.parent / "classes.yaml", out)
    assert enc.calls == 0
    assert (again.done_before, again.labelled, again.failed) == (5, 0, 3)
    assert again.exit_code == 2  # the bad images were tried again
    assert (out / ds.ANNOTATIONS).read_bytes() == before


def test_shards_then_merge_give_the_same_bytes(reference, photos, tmp_path):
    """Two shards (as two machines would) into one folder, then --merge: byte-identical to
    the uninterrupted run; so is a run that finds every shard's work done."""
    out0, _ = reference
    out = tmp_path / "sharded"
    classes = photos.parent / "classes.yaml"
    s0 = _label(photos, classes, out, shard="0/2", batch_size=2)
    s1 = _label(photos, classes, out, shard="1/2")
    assert s0.assembly is None and s1.assembly is None
    assert not (out / ds.ANNOTATIONS).exists()
    assert s0.images + s1.images == 8 and s0.images and s1.images
    assert s0.failed + s1.failed == 3 and s0.exit_code + s1.exit_code >= 2
    merged = merge(out)
    assert merged.exit_code == 2
    assert (out / ds.ANNOTATIONS).read_bytes() == (out0 / ds.ANNOTATIONS).read_bytes()
    assert (out / ds.REVIEW).read_bytes() == (out0 / ds.REVIEW).read_bytes()
    assert (out / ds.ERRORS).read_bytes() == (out0 / ds.ERRORS).read_bytes()


def _changed(out, photos, message, **kw):
    snapshot = tree(out)
    with pytest.raises(InputError) as e:
        _label(photos, kw.pop("classes", photos.parent / "classes.yaml"), out, **kw)
    assert str(e.value) == message.format(out=out)
    assert tree(out) == snapshot  # nothing in the folder changed


def test_a_changed_configuration_is_refused(reference, photos, tmp_path):
    out = tmp_path / "ds"
    shutil.copytree(reference[0], out)
    tail = "; use --overwrite to relabel it from scratch, or another --out"
    _changed(
        out,
        photos,
        "{out} was labelled with a different configuration (classes ['cat', 'dog'] -> "
        "['cat', 'bird'])" + tail,
        classes="cat,bird",
    )
    _changed(
        out,
        photos,
        "{out} was labelled with a different configuration (detector repr "
        "'ContentDetector(box_threshold=0.05)' -> 'ContentDetector(box_threshold=0.2)')" + tail,
        detector=ContentDetector(0.2),
    )
    _changed(
        out,
        photos,
        "{out} was labelled with a different configuration (settings exclusive False -> "
        "True)" + tail,
        exclusive=True,
    )
    _changed(
        out,
        photos,
        "--overwrite cannot be combined with --shard (one shard would delete the work of the "
        "others); delete the dataset folder first, or use a new --out",
        overwrite=True,
        shard="0/2",
    )


def test_overwrite_relabels_and_an_edited_dataset_is_protected(tmp_path):
    photos = tmp_path / "photos"
    write_photos(photos, kinds=("coffee",))
    out = tmp_path / "ds"
    _label(photos, "cat", out)
    edited = json.loads((out / ds.ANNOTATIONS).read_text())
    edited["annotations"] = edited["annotations"][:-1]  # a person deleted an instance
    ds.write_annotations(out, edited)
    _changed(
        out,
        photos,
        f"{out / ds.ANNOTATIONS} was changed after grounded-sam label wrote it (edited in the "
        "app or by hand); assembling it again would discard those edits: label into another "
        "--out, or use --overwrite to relabel from scratch",
        classes="cat",
    )
    with pytest.raises(InputError, match="was changed after grounded-sam label wrote it"):
        merge(out)
    again = _label(photos, "dog", out, overwrite=True)
    assert again.labelled == 1 and again.assembly.per_class.keys() == {"dog"}
    assert ds.read_manifest(out)["ontology"] == {"classes": [{"name": "dog", "prompts": ["dog"]}]}


def test_other_folders_are_not_taken_over(tmp_path):
    photos = tmp_path / "photos"
    write_photos(photos, kinds=("coffee",))
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    _changed(
        out,
        photos,
        f"--out {str(out)!r} is not empty and is not a grounded-sam dataset (no label.json); "
        "choose a new or empty folder, or use --overwrite to label into it",
        classes="cat",
    )
    with pytest.raises(InputError) as e:
        merge(out)
    assert (
        str(e.value)
        == f"{str(out)!r} is not a dataset written by grounded-sam label (no label.json)"
    )


def test_candidates_and_stored_embeddings(tmp_path):
    photos = tmp_path / "photos"
    write_photos(photos, kinds=("chelsea",))
    out = tmp_path / "ds"
    loose = CandidateOptions(
        points_per_side=2, pred_iou_thresh=0.0, stability_score_thresh=0.0, min_area=0
    )
    first = _label(photos, "cat", out, candidates=loose, save_embeddings=True)
    cands = json.loads((out / ds.CANDIDATES).read_text())
    assert first.assembly.candidates == len(cands) > 0
    assert [c["id"] for c in cands] == list(range(1, len(cands) + 1))
    assert all(c["image_id"] == 1 and set(c) >= {"segmentation", "area", "bbox"} for c in cands)
    stored = list((out / ds.EMBEDDINGS).rglob("*.npz"))
    assert len(stored) == 1 and (stored[0].parent.parent / "sam.json").exists()
    # a relabel from scratch reads the stored embedding instead of encoding again
    before = (out / ds.ANNOTATIONS).read_bytes()
    enc = CallCounter(tiny_sam().image_encoder)
    with enc:
        again = _label(photos, "cat", out, candidates=loose, overwrite=True)
    assert enc.calls == 0 and again.labelled == 1
    assert (out / ds.ANNOTATIONS).read_bytes() == before
    # an image changed under the same name does not get the old embedding
    from PIL import Image

    Image.fromarray(photo("coffee")).save(photos / "chelsea.png")
    with enc:
        _label(photos, "cat", out, candidates=loose, overwrite=True)
    assert enc.calls == 1


def test_audit(reference, tmp_path):
    out0, _ = reference
    out = tmp_path / "ds"
    shutil.copytree(out0, out)
    doc = json.loads((out / ds.ANNOTATIONS).read_text())
    assert len(doc["annotations"]) >= 3
    existing = json.loads(json.dumps(doc))
    existing["images"] = [
        dict(img, file_name="images/" + img["file_name"]) for img in doc["images"]
    ]
    anns = existing["annotations"]
    dropped = anns.pop()  # the new labels have one the existing set lacks
    w = doc["images"][0]["width"]
    anns.append(  # an object the new labels miss, as polygons
        {
            "id": 999,
            "image_id": 1,
            "category_id": 1,
            "segmentation": [[1, 1, 20, 1, 20, 20, 1, 20]],
            "area": 361,
            "bbox": [1, 1, 19, 19],
            "iscrowd": 0,
        }
    )
    first = anns[0]  # a matched pair with low overlap: grow the existing mask by ~40%
    m = mask_utils.decode(
        {"size": first["segmentation"]["size"], "counts": first["segmentation"]["counts"].encode()}
    )
    grown = m.copy()
    ys, xs = np.nonzero(m)
    grown[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1] = 1
    if grown.sum() < 1.4 * m.sum():
        grown[:, : max(1, w // 3)] = 1
    rle = mask_utils.encode(np.asfortranarray(grown.astype(np.uint8)))
    first["segmentation"] = {"size": rle["size"], "counts": rle["counts"].decode()}
    existing["categories"].append({"id": 7, "name": "tree"})
    anns.append({"id": 1000, "image_id": 1, "category_id": 7, "segmentation": [[1, 1, 9, 1, 9, 9]]})
    path = tmp_path / "existing.json"
    path.write_text(json.dumps(existing))
    iou = float(
        mask_utils.iou(
            [rle],
            [
                {
                    "size": rle["size"],
                    "counts": doc["annotations"][0]["segmentation"]["counts"].encode(),
                }
            ],
            [0],
        )[0][0]
    )
    summary = merge(out, audit=path)
    report = json.loads((out / ds.AUDIT_JSON).read_text())
    o = report["overall"]
    assert summary.audit == o
    assert o["existing"] == len(doc["annotations"]) and o["labelled"] == len(doc["annotations"])
    assert (o["missed"], o["new"]) == (1, 1)
    assert o["low_overlap"] == (1 if 0.5 <= iou < 0.75 else 0)
    assert o["existing_other_classes"] == {"tree": 1}
    per_image = {r["file_name"]: r for r in report["per_image"]}
    assert per_image[doc["images"][0]["file_name"]]["missed"] == [999]
    assert (
        dropped["id"]
        in per_image[next(i["file_name"] for i in doc["images"] if i["id"] == dropped["image_id"])][
            "new"
        ]
    )
    md = (out / ds.AUDIT_MD).read_text()
    assert md.startswith("# Audit") and "| **missed** (existing, no new label) | 1 |" in md
    with pytest.raises(InputError, match="refers to an unknown image_id or category_id"):
        bad = dict(
            existing, annotations=[{"id": 1, "image_id": 42, "category_id": 1, "segmentation": []}]
        )
        path.write_text(json.dumps(bad))
        merge(out, audit=path)


def test_a_model_that_fails_to_load_leaves_nothing(tmp_path):
    photos = tmp_path / "photos"
    write_photos(photos, kinds=("coffee",))
    bad = tmp_path / "mobile_sam.pt"
    bad.write_bytes(b"not a checkpoint")
    out = tmp_path / "ds"
    with pytest.raises(GroundedSAMError, match="mobile_sam.pt"):
        label(photos, "cat", out, detector=ContentDetector(), sam="mobile_sam", sam_checkpoint=bad)
    assert not out.exists()
    # a folder whose first run failed before any image keeps no configuration to refuse
    out.mkdir()
    ds.write_manifest(out, {"ontology": {"classes": [{"name": "x", "prompts": ["x"]}]}})
    done = _label(photos, "cat", out)
    assert done.labelled == 1 and ds.read_manifest(out)["ontology"]["classes"][0]["name"] == "cat"


def test_ctrl_c_keeps_the_work_and_assembles_it(tmp_path, capsys):
    from grounded_sam.engine.runners import LocalRunner

    photos = tmp_path / "photos"
    write_photos(photos, kinds=("coffee", "black", "chelsea"))

    class Interrupted(LocalRunner):
        def run(self, labeler, tasks, commit, *, store=None):
            commit(labeler.label_batch(tasks[:1])[0])
            raise KeyboardInterrupt

    out = tmp_path / "ds"
    with pytest.raises(KeyboardInterrupt):
        label(photos, "cat", out, detector=ContentDetector(), sam=tiny_sam(), runner=Interrupted())
    assert "interrupted after 1 of 3 images; the work done is saved" in capsys.readouterr().err
    doc = json.loads((out / ds.ANNOTATIONS).read_text())
    assert [img["file_name"] for img in doc["images"]] == ["black.png"]  # what was done
    done = _label(photos, "cat", out)
    assert (done.done_before, done.labelled) == (1, 2)
    assert [img["file_name"] for img in ds.read_annotations(out)["images"]] == [
        "black.png",
        "chelsea.png",
        "coffee.png",
    ]
