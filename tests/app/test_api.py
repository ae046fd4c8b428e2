"""The JSON API, endpoint by endpoint, with its bad inputs: every refusal is a 4xx with one line
of JSON (never a traceback, never the page), and every accepted change is in
``annotations.json`` when the answer arrives."""

from __future__ import annotations

import http.client
import json

import numpy as np
import pytest
from conftest import CHELSEA, read_doc, rect_mask

from grounded_sam.masks import decode_rle, encode_rle


def raw_get(url: str, path: str, headers: dict | None = None) -> tuple[int, str, str]:
    """GET ``path`` exactly as written (http.client does not normalise ``..``)."""
    host, port = url.split("//")[1].rstrip("/").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.request("GET", path, headers=headers or {})
        r = conn.getresponse()
        return r.status, r.getheader("content-type") or "", r.read().decode("utf-8", "replace")
    finally:
        conn.close()


def one_line_error(r, status: int) -> str:
    """The response is ``status`` with ``{"error": one line}`` and no traceback."""
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert set(body) == {"error"}
    msg = body["error"]
    assert msg and "\n" not in msg and "Traceback" not in msg
    return msg


@pytest.fixture()
def app(label_dataset, start_app):
    root, images = label_dataset
    return start_app(root, prefetch=False)


# ----------------------------------------------------------------------------- reading
def test_info_and_image_list_puts_the_review_queue_first(app):
    info = app.client.get("/api/info").json()
    assert [c["name"] for c in info["categories"]] == ["cat", "dog"]
    assert info["model"]["sam"] == "mobile_sam" and info["model"]["text_prompts"] is True
    assert info["dataset"]["labelled_by"] == "label"
    r = app.client.get("/api/images").json()
    rows = r["images"]
    # review.json order: chelsea (priority 0.9) before astronaut (0.4); then the todo image
    assert [(x["file_name"], x["status"]) for x in rows] == [
        ("chelsea.png", "review"),
        ("astronaut.png", "review"),
        ("sub/coffee.jpg", "todo"),
    ]
    assert rows[0]["open_review"] == 1 and rows[0]["annotations"] == 2
    assert rows[0]["candidates"] == 1
    assert r["counts"] == {
        "review": 2,
        "todo": 1,
        "labelled": 0,
        "error": 0,
        "images": 3,
        "annotations": 3,
        "candidates": 1,
    }
    only = app.client.get("/api/images", params={"status": "todo"}).json()["images"]
    assert [x["file_name"] for x in only] == ["sub/coffee.jpg"]
    one_line_error(app.client.get("/api/images", params={"status": "nope"}), 422)


def test_image_detail_files_and_review_reasons(app):
    d = app.client.get("/api/images/2").json()
    assert d["image"]["file_name"] == "chelsea.png" and d["image"]["status"] == "review"
    by_id = {a["id"]: a for a in d["annotations"]}
    assert by_id[3]["review"] == ["low_score"] and by_id[2]["review"] == []
    assert [c["id"] for c in d["candidates"]] == [1]
    assert d["prev"] is None and d["next"] == 1
    astro = app.client.get("/api/images/1").json()
    assert [it["reasons"] for it in astro["review"]] == [["negative_suppressed"]]
    # a todo image has a provisional id and its size once opened
    todo = app.client.get("/api/images").json()["images"][2]
    t = app.client.get(f"/api/images/{todo['id']}").json()
    assert (t["image"]["width"], t["image"]["height"]) == (120, 80)
    # files by id and by name are the dataset's bytes
    png = app.client.get("/api/images/2/file")
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    assert png.content == (app.store.ref(2).path).read_bytes()
    jpg = app.client.get("/api/files/sub/coffee.jpg")
    assert jpg.status_code == 200 and jpg.headers["content-type"] == "image/jpeg"
    for path in ("/api/images/99", "/api/images/99/file", "/api/images/x", "/api/annotations/77"):
        one_line_error(app.client.get(path), 404)


@pytest.mark.parametrize(
    "path",
    [
        "/api/files/../../../../etc/passwd",
        "/api/files/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
        "/api/files/..%2f..%2f..%2fetc%2fpasswd",
        "/api/files/sub/../../dataset/annotations.json",
        "/api/files//etc/passwd",
        "/api/files/%2Fetc%2Fpasswd",
        "/api/files/C:%5Cwindows%5Cwin.ini",
        "/api/files/sub%5C..%5C..%5Csecret.png",
        "/api/files/chelsea.png%00.txt",
        "/api/files/./chelsea.png",
    ],
)
def test_path_traversal_is_refused(app, path):
    status, ctype, body = raw_get(app.url, path)
    assert 400 <= status < 500, (status, body)
    assert ctype.startswith("application/json") and "root:" not in body
    assert "Traceback" not in body and "<html" not in body.lower()


@pytest.mark.parametrize(
    "path",
    [
        "/api/files/notes.txt",  # exists in the image folder, not an image of the dataset
        "/api/files/missing.png",
        "/api/nope",
        "/nope",
        "/index.php",
        "/static/nope.js",
        "/static/../grounded_sam/app/server.py",
        "/api/images/2/file/extra",
    ],
)
def test_unknown_paths_are_404_json_never_the_page(app, path):
    status, ctype, body = raw_get(app.url, path)
    assert status == 404, (status, body)
    assert ctype.startswith("application/json") and "<html" not in body.lower()
    assert json.loads(body)["error"]


def test_page_and_static_files_are_served(app):
    page = app.client.get("/")
    assert page.status_code == 200 and '<canvas id="stage"' in page.text
    assert "static/app.js" in page.text
    js = app.client.get("/static/app.js")
    assert js.status_code == 200 and "javascript" in js.headers["content-type"]
    assert app.client.get("/static/app.css").status_code == 200
    schema = app.client.get("/api/openapi.json").json()
    assert "/api/segment" in schema["paths"] and "/api/images/{image_id}/predict" in schema["paths"]


def test_wrong_method_is_405(app):
    one_line_error(app.client.delete("/api/images"), 405)
    one_line_error(app.client.put("/api/images/2/predict", json={}), 405)


# ----------------------------------------------------------------------------- clicks
def test_predict_points_box_and_previous_logits(app):
    c = app.client
    first = c.post("/api/images/2/predict", json={"points": [[110, 75, 1]]})
    assert first.status_code == 200, first.text
    p1 = first.json()
    m1 = decode_rle(p1["segmentation"])
    assert m1.shape == CHELSEA and p1["used_mask_input"] is False
    assert p1["area"] == int(m1.sum()) and isinstance(p1["logits"], str)
    # a negative click, refined with the previous logits, gives another mask
    p2 = c.post(
        "/api/images/2/predict",
        json={"points": [[110, 75, 1], [30, 30, 0]], "mask_input": p1["logits"]},
    ).json()
    assert p2["used_mask_input"] is True
    assert not np.array_equal(decode_rle(p2["segmentation"]), m1)
    # the same request without the logits is another prediction (they are really used)
    p2b = c.post("/api/images/2/predict", json={"points": [[110, 75, 1], [30, 30, 0]]}).json()
    assert p2b["segmentation"] != p2["segmentation"]
    # the embedding was computed once: later clicks ran the decoder only
    assert p2["timings"]["encoder"] == 0.0
    assert app.segmenter.encoder_calls == 1
    # box and box + point
    pb = c.post("/api/images/2/predict", json={"box": [50, 20, 200, 140]}).json()
    assert decode_rle(pb["segmentation"]).shape == CHELSEA
    pbp = c.post(
        "/api/images/2/predict", json={"box": [50, 20, 200, 140], "points": [[60, 60, 0]]}
    ).json()
    assert pbp["segmentation"]["size"] == [150, 226]
    # an expired / unknown logits id: predicted without it, and said so
    p3 = c.post(
        "/api/images/2/predict", json={"points": [[110, 75, 1]], "mask_input": "gone"}
    ).json()
    assert p3["used_mask_input"] is False


def test_predict_matches_the_predictor(app, base_pipe):
    """What a click returns is SamPredictor.predict on the image, best of 3 for a lone point."""
    from grounded_sam.io import load_image
    from grounded_sam.predictor import SamPredictor

    r = app.client.post("/api/images/2/predict", json={"points": [[100, 60, 1]]}).json()
    pred = SamPredictor(base_pipe.sam)
    pred.set_image(load_image(app.store.ref(2).path))
    masks, scores, _ = pred.predict(np.array([[100.0, 60.0]]), np.array([1]))
    best = int(np.argmax(scores))
    np.testing.assert_array_equal(decode_rle(r["segmentation"]), masks[best])
    assert r["mask_score"] == pytest.approx(float(scores[best]), rel=1e-6)


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        ({"points": [[1000, 10, 1]]}, 422, "outside"),
        ({"points": [[10, 10, 2]]}, 422, "point_labels"),
        ({"points": [[10]]}, 422, "points[0]"),
        ({"points": [[10, 10, 1, 4]]}, 422, "points[0]"),
        ({"points": "10,10"}, 422, "points"),
        ({"points": [["a", 10, 1]]}, 422, "points"),
        ({"box": [10, 10, 5]}, 422, "box"),
        ({"box": [50, 50, 10, 10]}, 422, "box"),
        ({"box": [-50, -50, -10, -10]}, 422, "no area"),
        ({}, 422, "at least one point"),
        ({"points": []}, 422, "at least one point"),
        ({"pointz": [[1, 1, 1]]}, 422, "unknown field"),
        ({"points": [[10, 10, 1]], "multimask": "yes"}, 422, "multimask"),
    ],
)
def test_predict_bad_prompts(app, body, status, needle):
    msg = one_line_error(app.client.post("/api/images/2/predict", json=body), status)
    assert needle in msg


def test_predict_bad_bodies(app):
    c = app.client
    bad = c.post(
        "/api/images/2/predict", content=b"{nope", headers={"content-type": "application/json"}
    )
    assert "malformed JSON" in one_line_error(bad, 400)
    nan = c.post(
        "/api/images/2/predict",
        content=b'{"points": [[NaN, 1, 1]]}',
        headers={"content-type": "application/json"},
    )
    assert 400 <= nan.status_code < 500 and "\n" not in nan.json()["error"]
    arr = c.post("/api/images/2/predict", json=[[1, 2, 1]])
    assert "JSON object" in one_line_error(arr, 400)
    form = c.post("/api/images/2/predict", data={"points": "[[1, 2, 1]]"})
    assert "Content-Type" in one_line_error(form, 415)
    empty = c.post(
        "/api/images/2/predict", content=b"", headers={"content-type": "application/json"}
    )
    one_line_error(empty, 400)
    one_line_error(c.post("/api/images/99/predict", json={"points": [[1, 1, 1]]}), 404)


def test_logits_of_another_image_are_refused(app):
    c = app.client
    p = c.post("/api/images/2/predict", json={"points": [[20, 20, 1]]}).json()
    r = c.post("/api/images/1/predict", json={"points": [[20, 20, 1]], "mask_input": p["logits"]})
    assert "another image" in one_line_error(r, 422)


# ----------------------------------------------------------------------------- text
def test_text_prompt_gives_what_segment_gives(app, base_pipe):
    from grounded_sam.io import load_image

    r = app.client.post("/api/images/2/text", json={"text": "a cat. a dog."})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["phrases"] == ["a cat", "a dog"]
    expected = base_pipe.segment(load_image(app.store.ref(2).path), "a cat. a dog.")
    got = body["instances"]
    assert len(got) == len(expected) > 0
    for inst, mask, label in zip(got, expected.masks, expected.labels, strict=True):
        np.testing.assert_array_equal(decode_rle(inst["segmentation"]), mask)
        assert inst["label"] == label == inst["prompt"]
        # phrases map to the ontology's classes through their prompts
        assert inst["category_id"] == {"a cat": 1, "a dog": 2}[label]


def test_text_prompt_errors(app):
    c = app.client
    assert "no phrases" in one_line_error(c.post("/api/images/2/text", json={"text": " . "}), 422)
    one_line_error(c.post("/api/images/2/text", json={"text": 3}), 422)
    one_line_error(c.post("/api/images/2/text", json={}), 422)
    one_line_error(c.post("/api/images/9/text", json={"text": "a cat"}), 404)
    app.segmenter._detector_error = "weights not found offline"
    msg = one_line_error(c.post("/api/images/2/text", json={"text": "a cat"}), 503)
    assert "weights not found offline" in msg
    assert c.get("/api/info").json()["model"]["text_prompts"] is False


# ----------------------------------------------------------------------------- editing
def test_add_change_delete_and_restore_annotations(app):
    c, root = app.client, app.store.root
    mask = rect_mask(CHELSEA, 10, 60, 80, 120)
    seg = encode_rle(mask)[0]
    r = c.post(
        "/api/images/2/annotations",
        json={"segmentation": seg, "category": "dog", "mask_score": 0.7},
    )
    assert r.status_code == 201, r.text
    ann = r.json()
    assert ann["id"] == 4 and ann["category_id"] == 2 and ann["reviewed"] is True
    assert ann["area"] == int(mask.sum()) and ann["bbox"] == [10.0, 60.0, 70.0, 60.0]
    on_disk = {a["id"]: a for a in read_doc(root)["annotations"]}
    assert on_disk[4]["segmentation"] == seg and on_disk[4]["mask_score"] == 0.7
    # relabel (last writer wins), mark reviewed
    ch = c.patch("/api/annotations/4", json={"category_id": 1}).json()
    assert ch["category_id"] == 1
    assert {a["id"]: a for a in read_doc(root)["annotations"]}[4]["category_id"] == 1
    c.patch("/api/annotations/3", json={"reviewed": True})
    assert {a["id"]: a for a in read_doc(root)["annotations"]}[3]["reviewed"] is True
    # a new mask recomputes area and box
    seg2 = encode_rle(rect_mask(CHELSEA, 0, 0, 5, 4))[0]
    ch2 = c.patch("/api/annotations/4", json={"segmentation": seg2}).json()
    assert ch2["area"] == 20 and ch2["bbox"] == [0.0, 0.0, 5.0, 4.0]
    # delete returns the record; adding it back with its id restores it (undo)
    gone = c.delete("/api/annotations/4").json()
    assert 4 not in {a["id"] for a in read_doc(root)["annotations"]}
    one_line_error(c.delete("/api/annotations/4"), 404)
    one_line_error(c.patch("/api/annotations/4", json={"category_id": 2}), 404)
    fields = {k: gone[k] for k in ("segmentation", "category_id", "score", "mask_score", "id")}
    back = c.post("/api/images/2/annotations", json=fields)
    assert back.status_code == 201 and back.json()["id"] == 4
    assert "in use" in one_line_error(c.post("/api/images/2/annotations", json=fields), 409)


def test_a_todo_image_becomes_labelled_with_its_first_annotation(app):
    c, root = app.client, app.store.root
    todo = c.get("/api/images", params={"status": "todo"}).json()["images"][0]
    seg = encode_rle(rect_mask((80, 120), 5, 5, 30, 30))[0]
    ann = c.post(
        f"/api/images/{todo['id']}/annotations", json={"segmentation": seg, "category_id": 1}
    )
    assert ann.status_code == 201, ann.text
    doc = read_doc(root)
    im = next(i for i in doc["images"] if i["file_name"] == "sub/coffee.jpg")
    assert (im["width"], im["height"]) == (120, 80) and im["id"] == todo["id"]
    assert ann.json()["image_id"] == im["id"]
    assert c.get(f"/api/images/{im['id']}").json()["image"]["status"] == "labelled"


@pytest.mark.parametrize(
    ("fields", "needle"),
    [
        ({"segmentation": {"size": [10, 10], "counts": "0"}, "category_id": 1}, "size"),
        ({"segmentation": {"size": [150, 226], "counts": "05"}, "category_id": 1}, "pixels"),
        ({"segmentation": {"size": [150, 226], "counts": "~~"}, "category_id": 1}, "invalid"),
        ({"segmentation": {"size": [150, 226], "counts": "P"}, "category_id": 1}, "ends inside"),
        ({"segmentation": {"size": [150, 226], "counts": [5, 6]}, "category_id": 1}, "pixels"),
        (
            {"segmentation": {"size": [150, 226], "counts": [-5, 33905]}, "category_id": 1},
            "negative",
        ),
        ({"segmentation": [[1, 2, 3, 4, 5, 6]], "category_id": 1}, "segmentation"),
        (
            {"segmentation": {"size": [150, 226], "counts": [33900]}, "category_id": 9},
            "category_id 9",
        ),
        ({"segmentation": {"size": [150, 226], "counts": [33900]}, "category": "bird"}, "bird"),
        ({"segmentation": {"size": [150, 226], "counts": [33900]}}, "class"),
        (
            {"segmentation": {"size": [150, 226], "counts": [33900]}, "category_id": "1"},
            "category_id",
        ),
        (
            {
                "segmentation": {"size": [150, 226], "counts": [33900]},
                "category_id": 1,
                "colour": 1,
            },
            "unknown field",
        ),
    ],
)
def test_bad_annotations_are_refused_and_nothing_changes(app, fields, needle):
    before = (app.store.root / "annotations.json").read_bytes()
    msg = one_line_error(app.client.post("/api/images/2/annotations", json=fields), 422)
    assert needle in msg
    assert (app.store.root / "annotations.json").read_bytes() == before


def test_done_and_the_review_queue(app):
    c = app.client
    # accepting chelsea's flagged instance closes its review item
    c.patch("/api/annotations/3", json={"reviewed": True})
    rows = {r["file_name"]: r for r in c.get("/api/images").json()["images"]}
    assert rows["chelsea.png"]["status"] == "labelled"
    # astronaut's image-level item closes when the image is marked done
    r = c.post("/api/images/1/done", json={"done": True}).json()
    assert r == {"id": 1, "file_name": "astronaut.png", "reviewed": True}
    doc = read_doc(app.store.root)
    assert next(i for i in doc["images"] if i["id"] == 1)["reviewed"] is True
    assert next(a for a in doc["annotations"] if a["id"] == 1)["reviewed"] is True
    counts = c.get("/api/images").json()["counts"]
    assert (counts["review"], counts["labelled"], counts["todo"]) == (0, 2, 1)
    # marking a todo image done labels it, empty
    todo = c.get("/api/images", params={"status": "todo"}).json()["images"][0]
    c.post(f"/api/images/{todo['id']}/done", json={})
    assert any(i["file_name"] == "sub/coffee.jpg" for i in read_doc(app.store.root)["images"])
    one_line_error(c.post("/api/images/1/done", json={"done": "yes"}), 422)
    one_line_error(c.post("/api/images/42/done", json={"done": True}), 404)


def test_candidates_are_named_or_rejected(app):
    c, root = app.client, app.store.root
    one_line_error(c.post("/api/candidates/1/accept", json={}), 422)
    ann = c.post("/api/candidates/1/accept", json={"category": "dog"})
    assert ann.status_code == 201, ann.text
    a = ann.json()
    assert a["category_id"] == 2 and a["image_id"] == 2 and a["mask_score"] == 0.88
    assert json.loads((root / "candidates.json").read_text()) == []
    assert a["id"] in {x["id"] for x in read_doc(root)["annotations"]}
    one_line_error(c.post("/api/candidates/1/accept", json={"category_id": 1}), 404)
    one_line_error(c.post("/api/candidates/1/reject"), 404)
    one_line_error(c.post("/api/candidates/abc/reject"), 404)


def test_reject_candidate(app):
    r = app.client.post("/api/candidates/1/reject")
    assert r.status_code == 200 and r.json()["id"] == 1
    assert json.loads((app.store.root / "candidates.json").read_text()) == []
    assert app.client.get("/api/images/2").json()["candidates"] == []


# ----------------------------------------------------------------------------- prefetch
def test_prefetch_endpoint(app):
    r = app.client.post("/api/prefetch", json={"ids": [1, 2]})
    assert r.json() == {"queued": ["astronaut.png", "chelsea.png"]}
    one_line_error(app.client.post("/api/prefetch", json={"ids": [77]}), 404)
    one_line_error(app.client.post("/api/prefetch", json={"ids": "1"}), 422)


def test_internal_errors_are_one_line_500(app, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("a bug\nwith lines")

    monkeypatch.setattr(app.segmenter, "predict", broken)
    r = app.client.post("/api/images/2/predict", json={"points": [[1, 1, 1]]})
    msg = one_line_error(r, 500)
    assert "RuntimeError" in msg and "a bug" not in msg
