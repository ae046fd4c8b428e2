"""Parsing of the evaluation datasets: COCO, RefCOCO-style refs, image/mask folders."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
from PIL import Image

from grounded_sam.errors import InputError
from grounded_sam.eval import (
    CocoDataset,
    MaskFolderDataset,
    RefCocoDataset,
    RunSpec,
    build_dataset,
    build_pipeline,
    evaluate,
    load_refs,
)
from grounded_sam.testing.eval_data import PerfectPredictor

# pycocotools' Cython RLE objects trip a numpy 2 DeprecationWarning on every decode
pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"
)


def test_coco_prompts_masks_and_boxes(coco):
    ds = CocoDataset(coco["annotations"], coco["images"])
    samples = list(ds)
    assert [s.image_id for s in samples] == [1, 2, 3]
    assert [[p.text for p in s.prompts] for s in samples] == [["cat"], ["person", "cup"], ["cup"]]
    cup = samples[2].prompts[0]
    assert cup.gt_mask.shape == (48, 72) and cup.gt_mask.dtype == bool
    assert cup.gt_boxes.shape == (2, 4) and cup.gt_boxes.dtype == np.float32
    # the first cup polygon is the rectangle x 10..34, y 8..40: XYXY box, inside the union mask
    np.testing.assert_allclose(cup.gt_boxes[0], [10, 8, 34, 40])
    assert cup.gt_mask[20, 20] and cup.gt_mask[30, 55] and not cup.gt_mask[2, 2]
    assert ds.coco_gt()["categories"][0]["name"] == "cat"
    limited = CocoDataset(coco["annotations"], coco["images"], all_categories=True, limit=2)
    assert limited.image_ids() == [1, 2]
    first = next(iter(limited))
    assert [p.text for p in first.prompts] == ["cat", "person", "cup", "dog"]
    assert not first.prompts[3].gt_mask.any() and first.prompts[3].gt_boxes.shape == (0, 4)
    assert [s.image_id for s in limited.samples(skip={1})] == [2]


def test_coco_errors(coco, tmp_path):
    with pytest.raises(InputError, match="annotations file"):
        CocoDataset(tmp_path / "nope.json", coco["images"])
    (tmp_path / "bad.json").write_text('{"images": []}')
    with pytest.raises(ValueError, match="COCO instances format"):
        CocoDataset(tmp_path / "bad.json", coco["images"])
    empty = tmp_path / "empty_images"
    empty.mkdir()
    with pytest.raises(InputError, match="3 annotated image"):
        CocoDataset(coco["annotations"], empty)
    with pytest.raises(ValueError, match="limit"):
        CocoDataset(coco["annotations"], coco["images"], limit=0)


def _refs(coco):
    anns = coco["data"]["annotations"]
    return [
        {"ref_id": 10, "image_id": 1, "ann_id": anns[0]["id"], "category_id": 1, "split": "val",
         "sentences": [{"sent": "the cat on the sofa."}, {"sent": "st. tabby cat"}]},
        {"ref_id": 11, "image_id": 2, "ann_id": anns[2]["id"], "category_id": 3, "split": "val",
         "sentences": [{"sent": "small cup top left"}]},
        {"ref_id": 12, "image_id": 3, "ann_id": anns[3]["id"], "category_id": 3, "split": "testA",
         "sentences": [{"sent": "left cup"}]},
    ]  # fmt: skip


def test_refcoco_pickle_and_json(coco, tmp_path):
    refs = _refs(coco)
    p_path = tmp_path / "refs(unc).p"
    p_path.write_bytes(pickle.dumps(refs, protocol=2))
    j_path = tmp_path / "refs.json"
    j_path.write_text(json.dumps(refs))
    assert load_refs(p_path) == load_refs(j_path) == refs
    ds = RefCocoDataset(p_path, coco["annotations"], coco["images"], split="val")
    assert ds.image_ids() == [1, 2] and ds.single_target
    s1, s2 = list(ds)
    assert [p.text for p in s1.prompts] == ["the cat on the sofa", "st tabby cat"]
    assert all(p.ref_id == 10 and p.category_id == 1 for p in s1.prompts)
    cup = s2.prompts[0]
    np.testing.assert_allclose(cup.gt_boxes, [[2, 2, 12, 14]])
    assert cup.gt_mask.sum() > 0 and not cup.gt_mask[40, 30]  # the cup only, not the person
    assert ds.coco_gt() is None
    assert RefCocoDataset(
        j_path, coco["annotations"], coco["images"], split="testA"
    ).image_ids() == [3]
    with pytest.raises(ValueError, match="no refs in split 'test'.*testA"):
        RefCocoDataset(j_path, coco["annotations"], coco["images"], split="test")


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_refs_unpickler_refuses_objects(tmp_path):
    path = tmp_path / "refs.p"
    path.write_bytes(pickle.dumps([{"x": _Evil()}]))
    with pytest.raises(ValueError, match="only plain"):
        load_refs(path)
    path.write_bytes(pickle.dumps([{"image_id": 1}]))
    with pytest.raises(ValueError, match="must be a dict with keys"):
        load_refs(path)


def test_refcoco_run_keeps_top_detection(coco, tmp_path):
    refs_path = tmp_path / "refs.json"
    refs_path.write_text(json.dumps(_refs(coco)))
    ds = RefCocoDataset(refs_path, coco["annotations"], coco["images"], split="val")
    spec = RunSpec(detector="gt-boxes", sam="stub")
    pipe, oracle = build_pipeline(spec, sam=PerfectPredictor(coco))
    m = evaluate(ds, pipe, tmp_path / "run", spec=spec, oracle=oracle, show_progress=False)
    assert m["mask_AP"] is None  # not defined for referring expressions
    assert m["n_prompts"] == 3 and m["n_detections"] == 3
    assert m["mIoU"] == pytest.approx(1.0) and m["cIoU"] == pytest.approx(1.0)
    assert "not defined" in (tmp_path / "run" / "report.md").read_text()


def _mask_folder(tmp_path, coco):
    images, masks = tmp_path / "imgs", tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    ds = CocoDataset(coco["annotations"], coco["images"])
    for s in ds:
        Image.open(s.path).save(images / f"{s.path.stem}.jpg", quality=95)
        gt = np.zeros((s.height, s.width), bool)
        for p in s.prompts:
            gt |= p.gt_mask
        Image.fromarray(gt.astype(np.uint8) * 255).save(masks / f"{s.path.stem}.png")
    return images, masks


def test_mask_folder(coco, tmp_path):
    images, masks = _mask_folder(tmp_path, coco)
    ds = MaskFolderDataset(images, masks, "an object")
    assert len(ds) == 3
    samples = list(ds)
    assert [s.path.name for s in samples] == ["astronaut.jpg", "chelsea.jpg", "coffee.jpg"]
    p = samples[0].prompts[0]
    assert p.text == "an object" and p.gt_mask.shape == (64, 64) and p.gt_boxes.shape == (1, 4)
    gt = ds.coco_gt()
    assert len(gt["annotations"]) == 3 and gt["categories"] == [{"id": 1, "name": "an object"}]
    (images / "extra.png").write_bytes((images / "chelsea.jpg").read_bytes())
    with pytest.raises(ValueError, match="no mask with the same stem.*extra.png"):
        MaskFolderDataset(images, masks, "an object")
    with pytest.raises(ValueError, match="prompt"):
        MaskFolderDataset(images, masks, "  ")


def test_build_dataset_infers_type(coco, tmp_path):
    ds = build_dataset({"annotations": coco["annotations"], "images": coco["images"]}, limit=1)
    assert isinstance(ds, CocoDataset) and len(ds) == 1
    with pytest.raises(ValueError, match="needs refs"):
        build_dataset({"type": "refcoco", "annotations": "a", "images": "b"})
    with pytest.raises(ValueError, match="unknown key"):
        build_dataset(
            {"annotations": coco["annotations"], "images": coco["images"], "split": "val"}
        )
    with pytest.raises(ValueError, match="unknown dataset type"):
        build_dataset({"type": "voc"})
