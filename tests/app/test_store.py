"""The dataset store: creating and reopening datasets, atomic saving that survives ``kill -9``,
several writers (threads, two stores on one folder) losing nothing, last writer per
annotation."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest
from conftest import CHELSEA, make_images, read_doc, rect_mask

from grounded_sam.app.store import Conflict, DatasetStore, NotFound, SaveFailed, check_rle
from grounded_sam.errors import InputError
from grounded_sam.masks import decode_rle, encode_rle


def seg_at(i: int, size=CHELSEA) -> dict:
    """A distinct small mask per ``i``."""
    x, y = (i * 7) % (size[1] - 6), (i * 3) % (size[0] - 6)
    return encode_rle(rect_mask(size, x, y, x + 5, y + 5))[0]


# ----------------------------------------------------------------------------- opening
def test_create_from_images_and_classes_then_reopen(tmp_path):
    images = make_images(tmp_path / "images")
    (images / ".hidden").mkdir()
    (images / ".hidden" / "x.png").write_bytes((images / "chelsea.png").read_bytes())
    root = tmp_path / "new"
    store = DatasetStore.open(root, [images], "cat,dog")
    doc = read_doc(root)
    assert doc == {
        "images": [],
        "annotations": [],
        "categories": [
            {"id": 1, "name": "cat", "prompts": ["cat"]},
            {"id": 2, "name": "dog", "prompts": ["dog"]},
        ],
    }
    rows = store.list_images()
    # as label lists them: sorted, hidden files skipped, non-images ignored
    assert [r["file_name"] for r in rows] == ["astronaut.png", "chelsea.png", "sub/coffee.jpg"]
    assert all(r["status"] == "todo" for r in rows)
    # reopened without arguments: the image folders were remembered in app.json
    again = DatasetStore.open(root)
    assert [r["file_name"] for r in again.list_images()] == [r["file_name"] for r in rows]
    assert json.loads((root / "app.json").read_text())["sources"][0]["kind"] == "folder"


def test_several_image_folders_are_prefixed(tmp_path):
    a = make_images(tmp_path / "a")
    b = make_images(tmp_path / "b")
    store = DatasetStore.open(tmp_path / "ds", [a, b], "cat")
    names = [r["file_name"] for r in store.list_images()]
    assert "a/chelsea.png" in names and "b/sub/coffee.jpg" in names and len(names) == 6
    assert store.ref_by_name("b/chelsea.png").path == (b / "chelsea.png").resolve()


def test_classes_can_only_be_appended(tmp_path):
    images = make_images(tmp_path / "images")
    root = tmp_path / "ds"
    DatasetStore.open(root, [images], "cat,dog")
    store = DatasetStore.open(root, classes="cat,dog,bird")
    assert [c["name"] for c in store.categories] == ["cat", "dog", "bird"]
    assert read_doc(root)["categories"][2] == {"id": 3, "name": "bird", "prompts": ["bird"]}
    with pytest.raises(InputError, match="only be appended"):
        DatasetStore.open(root, classes="dog,cat")


@pytest.mark.parametrize(
    ("setup", "kwargs", "needle"),
    [
        ("empty", {}, "no annotations.json"),
        ("empty", {"classes": "cat"}, "no annotations.json"),
        ("file", {}, "is a file"),
        ("label-run", {}, "label --merge"),
        ("empty", {"images": ["/no/such/folder"], "classes": "cat"}, "no such file"),
        ("empty", {"images": ["IMAGES"], "classes": "cat,cat"}, "duplicate class"),
    ],
)
def test_opening_errors(tmp_path, setup, kwargs, needle):
    from grounded_sam.engine import dataset as fmt

    images = make_images(tmp_path / "images")
    root = tmp_path / "ds"
    if setup == "file":
        root.write_text("x")
    elif setup == "label-run":
        root.mkdir()
        fmt.write_manifest(root, {"sources": []})
    if kwargs.get("images") == ["IMAGES"]:
        kwargs["images"] = [images]
    with pytest.raises(InputError, match=needle):
        DatasetStore.open(root, **kwargs)


# ----------------------------------------------------------------------------- RLE checks
def test_check_rle():
    mask = rect_mask(CHELSEA, 3, 4, 50, 60)
    rle = encode_rle(mask)[0]
    assert check_rle(rle, CHELSEA) == rle
    raw = mask.T.reshape(-1)  # COCO runs go down the columns
    runs, v, n = [], 0, 0
    for px in raw:
        if px != v:
            runs.append(n)
            v, n = px, 0
        n += 1
    runs.append(n)
    converted = check_rle({"size": list(CHELSEA), "counts": runs}, CHELSEA)
    np.testing.assert_array_equal(decode_rle(converted), mask)
    assert converted == rle  # uncompressed runs are stored compressed
    with pytest.raises(InputError):
        check_rle({"size": [150, 226], "counts": rle["counts"][:-1]}, CHELSEA)


# ----------------------------------------------------------------------------- writers
def test_concurrent_writers_lose_nothing(label_dataset):
    root, _ = label_dataset
    store = DatasetStore.open(root)
    acked: list[int] = []
    lock = threading.Lock()
    errors: list[BaseException] = []

    def worker(k: int) -> None:
        try:
            for i in range(15):
                a = store.add_annotation(2, {"segmentation": seg_at(k * 100 + i), "category_id": 1})
                with lock:
                    acked.append(a["id"])
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(acked) == len(set(acked)) == 90
    on_disk = {a["id"] for a in read_doc(root)["annotations"]}
    assert set(acked) <= on_disk and len(on_disk) == 93


def test_two_stores_on_one_folder_merge_per_annotation(label_dataset):
    """Two servers on one dataset: each change applies to the file as it is now."""
    root, _ = label_dataset
    a = DatasetStore.open(root)
    b = DatasetStore.open(root)  # its view goes stale as `a` writes
    a.update_annotation(2, {"category_id": 2})
    new_a = a.add_annotation(2, {"segmentation": seg_at(1), "category": "cat"})
    # b never saw a's changes; its own change keeps them
    b.update_annotation(2, {"reviewed": False})
    new_b = b.add_annotation(2, {"segmentation": seg_at(2), "category": "dog"})
    assert new_b["id"] != new_a["id"]
    doc = {x["id"]: x for x in read_doc(root)["annotations"]}
    assert doc[2]["category_id"] == 2 and doc[2]["reviewed"] is False
    assert new_a["id"] in doc and new_b["id"] in doc
    # last writer wins on one annotation
    a.update_annotation(3, {"category_id": 1})
    b.update_annotation(3, {"category_id": 2})
    assert {x["id"]: x for x in read_doc(root)["annotations"]}[3]["category_id"] == 2
    # a deletion by one is seen by the other
    a.delete_annotation(new_b["id"])
    with pytest.raises(NotFound):
        b.update_annotation(new_b["id"], {"category_id": 1})
    b.refresh()
    assert new_b["id"] not in {x["id"] for x in b.image_detail(2)["annotations"]}


def test_a_refused_change_in_a_batch_leaves_the_others(label_dataset):
    root, _ = label_dataset
    store = DatasetStore.open(root)
    results: dict[str, object] = {}

    def good():
        results["good"] = store.add_annotation(2, {"segmentation": seg_at(5), "category_id": 1})

    def bad():
        try:
            store.add_annotation(2, {"segmentation": seg_at(6), "category_id": 1, "id": 2})
        except Conflict as e:
            results["bad"] = e

    with store._write_lock:  # hold the writer so both changes land in one batch
        threads = [threading.Thread(target=good), threading.Thread(target=bad)]
        for t in threads:
            t.start()
        time.sleep(0.3)
    for t in threads:
        t.join()
    assert isinstance(results["bad"], Conflict)
    assert results["good"]["id"] in {x["id"] for x in read_doc(root)["annotations"]}


def test_external_rewrite_is_picked_up(label_dataset):
    """A ``label --merge`` (or a hand edit) between requests is seen by the next one."""
    from grounded_sam.engine import dataset as fmt

    root, _ = label_dataset
    store = DatasetStore.open(root)
    doc = read_doc(root)
    doc["annotations"] = [x for x in doc["annotations"] if x["id"] != 1]
    time.sleep(0.01)
    fmt.write_annotations(root, doc)
    assert 1 not in {x["id"] for x in store.image_detail(1)["annotations"]}


_WRITER = textwrap.dedent(
    """
    import sys
    from grounded_sam.app.store import DatasetStore
    from grounded_sam.masks import encode_rle
    import numpy as np
    store = DatasetStore.open(sys.argv[1])
    for i in range(100000):
        m = np.zeros((150, 226), bool); m[i % 140: i % 140 + 5, i % 200: i % 200 + 9] = True
        a = store.add_annotation(2, {"segmentation": encode_rle(m)[0], "category_id": 1})
        print(a["id"], flush=True)
    """
)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_killed_writer_leaves_a_whole_file_with_every_acknowledged_change(label_dataset, sig):
    root, _ = label_dataset
    proc = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(root)], stdout=subprocess.PIPE, text=True
    )
    acked = []
    try:
        for line in proc.stdout:
            acked.append(int(line))
            if len(acked) >= 40:
                proc.send_signal(sig)
                break
        rest = proc.stdout.read()  # lines acknowledged before the signal landed
        acked += [int(x) for x in rest.split()]
    finally:
        proc.wait(timeout=60)
    doc = read_doc(root)  # parses: never half a file
    ids = {a["id"] for a in doc["annotations"]}
    assert set(acked) <= ids
    assert {1, 2, 3} <= ids
    leftovers = [p.name for p in root.iterdir() if p.name.startswith(".tmp-")]
    assert len(leftovers) <= 1  # at most the temporary file of the write that was cut short
    # the next open cleans debris older than label's grace period and reads the file
    DatasetStore.open(root).list_images()
    assert os.path.getsize(root / "annotations.json") > 0


def test_a_failed_write_answers_every_waiting_change(label_dataset, monkeypatch):
    """A full disk (or a bug) fails the changes of its batch with the error, leaves the state
    as on disk, and the next change works again."""
    from grounded_sam.engine import dataset as fmt

    root, _ = label_dataset
    store = DatasetStore.open(root)
    before = (root / "annotations.json").read_bytes()

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(fmt, "write_annotations", full)
    with pytest.raises(SaveFailed, match="No space left on device; nothing was changed"):
        store.add_annotation(2, {"segmentation": seg_at(7), "category_id": 1})
    assert (root / "annotations.json").read_bytes() == before
    assert len(store.image_detail(2)["annotations"]) == 2  # the failed change is not shown
    monkeypatch.undo()
    a = store.add_annotation(2, {"segmentation": seg_at(8), "category_id": 1})
    assert a["id"] in {x["id"] for x in read_doc(root)["annotations"]}
