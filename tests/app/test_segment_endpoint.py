"""``POST /api/segment``: stateless, and the same masks, boxes, scores and labels as
``grounded-sam segment`` for the same image, prompts and models."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import make_images
from test_api import one_line_error

from grounded_sam.masks import decode_rle
from grounded_sam.testing.pipeline import (
    gdino_dir,
    gdino_threshold,
    run_cli,
    sam_args,
)


@pytest.fixture()
def app(tmp_path, start_app):
    images = make_images(tmp_path / "images")
    return start_app(tmp_path / "ds", [images], "cat,dog", prefetch=False)


def cli_segment(tmp_path, capsys, image, prompt_args, multimask=False) -> list[dict]:
    out = tmp_path / "cli"
    argv = [
        image,
        *prompt_args,
        *sam_args(),
        "--detector-model",
        gdino_dir(),
        "--box-threshold",
        gdino_threshold(2),
        "--out",
        out,
    ]
    if multimask:
        argv.append("--multimask")
    rc, _, err = run_cli("segment", argv, capsys)
    assert rc == 0, err
    return json.loads((out / image.stem / "result.json").read_text())["annotations"]


def api_segment(app, image, **form) -> dict:
    with open(image, "rb") as f:
        r = app.client.post("/api/segment", files={"image": (image.name, f)}, data=form)
    assert r.status_code == 200, r.text
    return r.json()


def same(api: dict, cli: list[dict], labels: bool) -> None:
    got = api["annotations"]
    assert len(got) == len(cli) > 0
    for a, c in zip(got, cli, strict=True):
        assert a["segmentation"] == c["segmentation"]  # identical RLE strings
        np.testing.assert_allclose(a["bbox"], c["bbox"], rtol=0, atol=1e-4)
        assert a["score"] == pytest.approx(c["score"], rel=1e-6)
        assert a["mask_score"] == pytest.approx(c["mask_score"], rel=1e-6)
        assert a["label"] == (c["label"] if labels else None)
        assert isinstance(a["segmentation"]["counts"], str)


@pytest.mark.parametrize(
    ("form", "cli_args", "multimask"),
    [
        ({"text": "a cat. a dog."}, ["--text", "a cat. a dog."], False),
        (
            {"points": "[[110, 75, 1], [20, 20, 0]]"},
            ["--point", "110,75,1", "--point", "20,20,0"],
            False,
        ),
        ({"points": "[[110, 75]]", "multimask": "true"}, ["--point", "110,75"], True),
        (
            {"boxes": "[[50, 20, 200, 140], [0, 0, 60, 60]]"},
            ["--box", "50,20,200,140", "--box", "0,0,60,60"],
            False,
        ),
        (
            {"points": "[[100, 70, 1]]", "boxes": "[[50, 20, 200, 140]]"},
            ["--point", "100,70", "--box", "50,20,200,140"],
            False,
        ),
    ],
)
def test_same_as_segment_cli(app, tmp_path, capsys, form, cli_args, multimask):
    image = tmp_path / "images" / "chelsea.png"
    api = api_segment(app, image, **form)
    assert (api["width"], api["height"]) == (226, 150)
    same(api, cli_segment(tmp_path, capsys, image, cli_args, multimask), "text" in form)


def test_jpeg_upload_and_stateless(app, tmp_path):
    """A JPEG (the CLI's reader, EXIF rotation included) and no trace in the dataset."""
    from PIL import Image

    src = tmp_path / "images" / "sub" / "coffee.jpg"
    rotated = tmp_path / "rotated.jpg"
    img = Image.open(src)
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    img.save(rotated, exif=exif.tobytes(), quality=95)
    r = api_segment(app, rotated, boxes="[[0, 0, 40, 40]]")
    assert (r["width"], r["height"]) == (80, 120)  # width and height swapped by the rotation
    assert decode_rle(r["annotations"][0]["segmentation"]).shape == (120, 80)
    before = (app.store.root / "annotations.json").read_text()
    assert json.loads(before)["annotations"] == []


@pytest.mark.parametrize(
    ("files", "data", "status", "needle"),
    [
        (None, {"text": "a cat"}, 422, "image"),
        ({"image": ("x.png", b"not an image")}, {"text": "a cat"}, 422, "not a readable image"),
        ({"image": ("x.png", b"")}, {"text": "a cat"}, 422, "empty"),
        ("chelsea", {}, 422, "nothing to segment"),
        ("chelsea", {"text": "a cat", "points": "[[1, 1]]"}, 422, "not both"),
        ("chelsea", {"text": " . "}, 422, "no phrases"),
        ("chelsea", {"points": "[[1, 1"}, 400, "malformed JSON"),
        ("chelsea", {"points": "[]"}, 422, "non-empty"),
        ("chelsea", {"points": "[[1, 2, 3, 4]]"}, 422, "points[0]"),
        ("chelsea", {"points": "[[1000, 2]]"}, 422, "outside"),
        ("chelsea", {"points": "[[1, 2, 5]]"}, 422, "point_labels"),
        ("chelsea", {"boxes": "[[1, 2, 3]]"}, 422, "boxes"),
        ("chelsea", {"boxes": '{"a": 1}'}, 422, "boxes"),
        ("chelsea", {"boxes": "[[50, 50, 10, 10]]"}, 422, "x1 >= x0"),
        (
            "chelsea",
            {"points": "[[1, 1]]", "boxes": "[[0, 0, 9, 9], [1, 1, 8, 8]]"},
            422,
            "one box",
        ),
        ("chelsea", {"text": "a cat", "multimask": "maybe"}, 422, "multimask"),
        ("chelsea", {"text": "a cat", "colour": "red"}, 422, "unknown form field"),
    ],
)
def test_bad_requests(app, tmp_path, files, data, status, needle):
    if files == "chelsea":
        files = {"image": ("c.png", (tmp_path / "images" / "chelsea.png").read_bytes())}
    r = app.client.post("/api/segment", files=files, data=data)
    msg = one_line_error(r, status)
    assert needle in msg, msg
    assert "/tmp" not in msg  # the upload's temporary file is never named


def test_not_a_form(app):
    r = app.client.post("/api/segment", json={"text": "a cat"})
    assert "multipart" in one_line_error(r, 415)
    r = app.client.post(
        "/api/segment",
        content=b"--x\r\nbroken",
        headers={"content-type": "multipart/form-data; boundary=x"},
    )
    assert 400 <= r.status_code < 500 and "\n" not in r.json()["error"]
