"""``grounded-sam export``: YOLO segmentation, COCO polygons and PNG masks, round-tripped."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from PIL import Image
from skimage.draw import disk, ellipse, polygon

from grounded_sam.engine import dataset as ds
from grounded_sam.engine.export_formats import (
    export_dataset,
    mask_to_yolo_polygon,
    merge_multi_segment,
    read_masks_dir,
    read_yolo_labels,
)
from grounded_sam.errors import InputError
from grounded_sam.masks import decode_rle, encode_rle
from grounded_sam.testing.pipeline import run_cli

H, W = 120, 160


def _shapes() -> dict[str, np.ndarray]:
    out = {}
    m = np.zeros((H, W), bool)
    m[ellipse(60, 70, 25, 40, shape=(H, W), rotation=0.4)] = True
    out["ellipse"] = m
    m = np.zeros((H, W), bool)
    m[polygon([10, 40, 70, 30], [100, 150, 130, 90], shape=(H, W))] = True
    out["quad"] = m
    m = np.zeros((H, W), bool)
    m[disk((30, 30), 18, shape=(H, W))] = True
    m[disk((90, 120), 20, shape=(H, W))] = True
    out["two_parts"] = m
    m = np.zeros((H, W), bool)
    m[disk((60, 80), 30, shape=(H, W))] = True
    m[disk((60, 80), 12, shape=(H, W))] = False
    out["ring"] = m  # a hole: polygons cannot hold it
    m = np.zeros((H, W), bool)
    m[5, 7] = True
    out["dot"] = m  # too small for a contour of 3 points
    return out


@pytest.fixture
def synthetic(tmp_path):
    """A dataset with known shapes on 'a.png', an empty 'sub/b.png', and the images."""
    shapes = _shapes()
    images = tmp_path / "images"
    (images / "sub").mkdir(parents=True)
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(images / "a.png")
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(images / "sub" / "b.png")
    anns = []
    for i, (name, m) in enumerate(shapes.items(), start=1):
        rle = encode_rle(m)[0]
        anns.append(
            {
                "id": i,
                "image_id": 1,
                "category_id": 1 + i % 2,
                "segmentation": rle,
                "area": int(m.sum()),
                "bbox": [0.0, 0.0, 1.0, 1.0],
                "iscrowd": 0,
                "score": 0.9,
                "shape": name,
            }
        )
    coco = {
        "images": [
            {"id": 1, "file_name": "a.png", "width": W, "height": H},
            {"id": 2, "file_name": "sub/b.png", "width": W, "height": H},
        ],
        "annotations": anns,
        "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "big dog"}],
    }
    folder = tmp_path / "ds"
    ds.write_annotations(folder, coco)
    return folder, images, shapes


def _iou(a, b):
    return (a & b).sum() / (a | b).sum()


def test_masks_round_trip_exactly(synthetic, tmp_path):
    folder, _, shapes = synthetic
    out = tmp_path / "masks"
    summary = export_dataset(folder, "masks", out)
    assert (summary.images, summary.instances) == (2, 5)
    back = read_masks_dir(out / "masks" / "a")
    assert sorted(back) == [1, 2, 3, 4, 5]
    for i, m in enumerate(shapes.values(), start=1):
        cls, mask = back[i]
        assert cls == ("big_dog" if i % 2 else "cat")
        np.testing.assert_array_equal(mask, m)
    assert (out / "masks" / "sub" / "b").is_dir() and not any(
        (out / "masks" / "sub" / "b").iterdir()
    )
    assert json.loads((out / "categories.json").read_text())[1]["file_name_part"] == "big_dog"


def test_coco_polygons_round_trip(synthetic, tmp_path):
    folder, _, shapes = synthetic
    out = tmp_path / "poly"
    export_dataset(folder, "coco-polygons", out)
    doc = ds.read_annotations(out)
    by_shape = {a["shape"]: a for a in doc["annotations"]}
    for name in ("ellipse", "quad", "two_parts"):
        seg = by_shape[name]["segmentation"]
        assert isinstance(seg, list) and all(len(p) >= 6 for p in seg)
        back = decode_rle(seg, H, W)  # pycocotools rasterises the polygons
        assert shapes[name].sum() >= 1000 and _iou(back, shapes[name]) >= 0.9, name
    assert len(by_shape["two_parts"]["segmentation"]) == 2  # one polygon per part
    ring = decode_rle(by_shape["ring"]["segmentation"], H, W)
    assert ring[60, 80] and not shapes["ring"][60, 80]  # the hole is dropped, as documented
    assert decode_rle(by_shape["dot"]["segmentation"], H, W)[5, 7]
    assert by_shape["ellipse"]["area"] == int(shapes["ellipse"].sum())  # the mask's area kept
    assert [img["file_name"] for img in doc["images"]] == ["a.png", "sub/b.png"]


def test_yolo_seg_round_trip_and_layout(synthetic, tmp_path):
    folder, images, shapes = synthetic
    out = tmp_path / "yolo"
    summary = export_dataset(folder, "yolo-seg", out, image_roots=[images])
    assert summary.linked_images == 2 and not summary.missing_images
    data = yaml.safe_load((out / "data.yaml").read_text())
    assert data == {
        "path": str(out.resolve()),
        "train": "images",
        "val": "images",
        "names": {0: "cat", 1: "big dog"},
    }
    assert (out / "images" / "sub" / "b.png").resolve() == (images / "sub" / "b.png").resolve()
    assert (out / "labels" / "sub" / "b.txt").read_text() == ""  # empty image, empty file
    labels = read_yolo_labels(out / "labels" / "a.txt", H, W)
    assert [c for c, _ in labels] == [1, 0, 1, 0, 1]  # category ids 1, 2 -> classes 0, 1
    for (_, back), (name, m) in zip(labels, shapes.items(), strict=True):
        if name in ("ellipse", "quad", "two_parts"):
            assert _iou(back, m) >= 0.9, name
    line = (out / "labels" / "a.txt").read_text().splitlines()[0].split()
    assert all(0.0 <= float(v) <= 1.0 for v in line[1:]) and len(line) % 2 == 1


def test_ultralytics_accepts_the_yolo_export(synthetic, tmp_path):
    """ultralytics' own dataset check reads every image/label pair as a valid segment set."""
    from ultralytics.data.utils import verify_image_label

    folder, images, _ = synthetic
    out = tmp_path / "yolo"
    export_dataset(folder, "yolo-seg", out, image_roots=[images])
    for rel in ("a", "sub/b"):
        im, lb = out / "images" / f"{rel}.png", out / "labels" / f"{rel}.txt"
        result = verify_image_label((str(im), str(lb), "", False, 2, 0, 0, False))
        im_file, labels, shape, segments, _, missing, found, empty, corrupt, msg = result
        assert (missing, found, corrupt) == (0, 1, 0), msg
        assert tuple(shape) == (H, W)
        assert len(labels) == (5 if rel == "a" else 0) and empty == (rel != "a")
        assert len(segments) == len(labels)


def test_multi_part_outlines_match_ultralytics():
    """Joined outlines are exactly those of ultralytics' own converter."""
    from ultralytics.data.converter import merge_multi_segment as ul_merge

    rng = np.random.default_rng(0)
    for _ in range(5):
        m = np.zeros((H, W), bool)
        for _ in range(rng.integers(2, 5)):
            cy, cx = rng.integers(10, H - 10), rng.integers(10, W - 10)
            m[disk((cy, cx), rng.integers(3, 9), shape=(H, W))] = True
        import cv2

        found = cv2.findContours(m.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)[0]
        polys = [c.reshape(-1, 2) for c in found if len(c) >= 3]
        if len(polys) < 2:
            continue
        ours = np.concatenate(merge_multi_segment(polys))
        theirs = np.concatenate(ul_merge([p.ravel().tolist() for p in polys]))
        np.testing.assert_array_equal(ours, theirs)
        np.testing.assert_array_equal(mask_to_yolo_polygon(m), theirs)


def test_export_cli(synthetic, tmp_path, capsys):
    folder, images, _ = synthetic
    out = tmp_path / "yolo"
    rc, stdout, err = run_cli(
        "export", [folder, "--format", "yolo-seg", "--out", out, "--images", images], capsys
    )
    assert rc == 0, err
    assert stdout.splitlines() == [
        f"exported 2 images, 5 instances as yolo-seg -> {out}",
        f"train with: yolo segment train data={out / 'data.yaml'}",
    ]
    assert yaml.safe_load((out / "data.yaml").read_text())["path"] == str(out.resolve())
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".yolo.")]  # no temp left
    rc, _, err = run_cli("export", [folder, "--format", "masks", "--out", out], capsys)
    assert (
        rc == 2
        and err == f"error: --out {str(out)!r} is not empty; use --overwrite to replace it\n"
    )
    rc, _, err = run_cli(
        "export", [folder, "--format", "masks", "--out", out, "--overwrite"], capsys
    )
    assert rc == 0 and (out / "masks" / "a").is_dir() and not (out / "labels").exists()
    rc, _, err = run_cli("export", [tmp_path / "nope", "--format", "masks", "--out", out], capsys)
    assert rc == 2 and err == f"error: dataset {str(tmp_path / 'nope')!r} not found\n"
    rc, _, err = run_cli(
        "export", [folder, "--format", "masks", "--out", tmp_path / "m", "--copy-images"], capsys
    )
    assert rc == 2 and err == (
        "error: --copy-images applies to --format yolo-seg only (masks is made from the "
        "annotations alone)\n"
    )
    rc, _, err = run_cli(
        "export",
        [folder, "--format", "coco-polygons", "--out", tmp_path / "p", "--images", images],
        capsys,
    )
    assert rc == 2 and err.startswith("error: --images applies to --format yolo-seg only")
    assert not (tmp_path / "m").exists() and not (tmp_path / "p").exists()


def _no_trace(parent, name):
    return not [p for p in parent.iterdir() if p.name == name or p.name.startswith(f".{name}.")]


def test_yolo_export_refuses_missing_images(synthetic, tmp_path, capsys):
    """Source images not found: one error saying how many, which and the fix, exit 2, and
    no output folder (nor its new parent folders, nor a temporary one)."""
    folder, images, _ = synthetic
    out = tmp_path / "new" / "yolo"
    rc, stdout, err = run_cli("export", [folder, "--format", "yolo-seg", "--out", out], capsys)
    assert rc == 2 and stdout == ""
    assert err.splitlines() == [
        "error: 2 of 2 source images were not found ('a.png', 'sub/b.png'); the dataset "
        "records no image folder (no label.json sources) and no --images was given: give the "
        "folder that holds them with --images DIR (repeatable), or --no-images to write the "
        "labels only"
    ]
    assert _no_trace(tmp_path, "new")
    # some found: still refused by default, the way out named
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "a.png").symlink_to(images / "a.png")
    out = tmp_path / "yolo"
    argv = [folder, "--format", "yolo-seg", "--out", out, "--images", partial]
    rc, stdout, err = run_cli("export", argv, capsys)
    assert rc == 2 and stdout == ""
    assert err.splitlines() == [
        f"error: 1 of 2 source images were not found ('sub/b.png'); looked in {str(partial)!r}: "
        "give the folder that holds them with --images DIR (repeatable), or "
        "--allow-missing-images to export the 1 found, or --no-images to write the labels only"
    ]
    assert _no_trace(tmp_path, "yolo")
    with pytest.raises(InputError, match="1 of 2 source images were not found"):
        export_dataset(folder, "yolo-seg", tmp_path / "api", image_roots=[partial])
    # the explicit opt-in exports what exists, with a warning on stderr
    rc, stdout, err = run_cli("export", [*argv, "--allow-missing-images"], capsys)
    assert rc == 0
    assert stdout.splitlines() == [
        f"exported 1 images, 5 instances as yolo-seg -> {out}",
        f"train with: yolo segment train data={out / 'data.yaml'}",
    ]
    assert err.splitlines() == [
        "warning: 1 of 2 images were left out: their source images were not found "
        "('sub/b.png'); give their folder with --images DIR to export them too"
    ]
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if not p.is_dir()) == [
        "data.yaml",
        "images/a.png",
        "labels/a.txt",
    ]
    # none found is refused even so; labels alone need no image
    rc, _, err = run_cli(
        "export",
        [folder, "--format", "yolo-seg", "--out", tmp_path / "none", "--images", tmp_path / "new2"],
        capsys,
    )
    assert rc == 2 and err == f"error: --images {str(tmp_path / 'new2')!r}: no such folder\n"
    (tmp_path / "empty").mkdir()
    rc, _, err = run_cli(
        "export",
        [folder, "--format", "yolo-seg", "--out", tmp_path / "none", "--images", tmp_path / "empty"]
        + ["--allow-missing-images"],
        capsys,
    )
    assert rc == 2 and err.startswith("error: 2 of 2 source images were not found")
    assert _no_trace(tmp_path, "none")
    rc, stdout, err = run_cli(
        "export", [folder, "--format", "yolo-seg", "--out", tmp_path / "lab", "--no-images"], capsys
    )
    assert rc == 0 and err == "" and not (tmp_path / "lab" / "images").exists()
    assert stdout.splitlines()[1].startswith(
        f"labels only: put the images in {tmp_path / 'lab' / 'images'} (the dataset's "
        "file_names), then train with: yolo segment train data="
    )
    # the formats made from the annotations alone need no image
    rc, _, err = run_cli("export", [folder, "--format", "masks", "--out", tmp_path / "m"], capsys)
    assert rc == 0 and err == ""
