"""Which images a run covers (file names, shards) and the dataset's on-disk format."""

from __future__ import annotations

import json
import os
import stat

import pytest

from grounded_sam.engine import dataset as ds
from grounded_sam.engine.sources import Shard, list_images, parse_shard, select_shard
from grounded_sam.errors import InputError


def _touch(path, data=b"x"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_list_images_walks_folders_with_relative_names(tmp_path):
    root = tmp_path / "photos"
    for rel in ["a.jpg", "b.PNG", "sub/c.JpEg", "sub/deep/d.webp", "e.tif", "f.TIFF", "g.bmp"]:
        _touch(root / rel)
    for rel in ["notes.txt", "h.gif", ".hidden.jpg", ".cache/i.jpg", "sub/readme.md"]:
        _touch(root / rel)
    tasks, sources = list_images([root])
    names = [t.file_name for t in tasks]
    assert (
        names
        == sorted(names)
        == [
            "a.jpg",
            "b.PNG",
            "e.tif",
            "f.TIFF",
            "g.bmp",
            "sub/c.JpEg",
            "sub/deep/d.webp",
        ]
    )
    assert all(not os.path.isabs(n) for n in names)
    assert tasks[0].path == str((root / "a.jpg").resolve()) and tasks[0].size_bytes == 1
    assert sources == [{"kind": "folder", "path": str(root.resolve()), "prefix": ""}]


def test_several_folders_are_prefixed_and_files_keep_their_base_name(tmp_path):
    _touch(tmp_path / "x" / "img.jpg")
    _touch(tmp_path / "y" / "img.jpg")
    single = _touch(tmp_path / "z" / "solo.weird")  # a file given directly: any extension
    tasks, sources = list_images([tmp_path / "x", tmp_path / "y", single])
    assert [t.file_name for t in tasks] == ["solo.weird", "x/img.jpg", "y/img.jpg"]
    assert [s["prefix"] for s in sources] == ["x", "y", ""]


def test_the_dataset_folder_is_not_labelled(tmp_path):
    _touch(tmp_path / "a.jpg")
    _touch(tmp_path / "dataset" / "exports" / "b.jpg")
    tasks, _ = list_images([tmp_path], exclude=tmp_path / "dataset")
    assert [t.file_name for t in tasks] == ["a.jpg"]


@pytest.mark.parametrize(
    "layout, message",
    [
        (["one/a/img.jpg", "two/a/img.jpg"], "two images would both be named 'a/img.jpg'"),
        ([], "no images found in"),
    ],
)
def test_list_images_errors(tmp_path, layout, message):
    for rel in layout:
        _touch(tmp_path / rel)
    (tmp_path / "one").mkdir(exist_ok=True)
    inputs = [tmp_path / "one/a", tmp_path / "two/a"] if layout else [tmp_path / "one"]
    with pytest.raises(InputError, match=message):
        list_images(inputs)


def test_each_file_is_listed_once_whatever_the_inputs(tmp_path):
    """Overlapping folders, a file inside a given folder, the same path twice, a link: each
    file once, named as if only the covering folder had been given, with one note line."""
    root = tmp_path / "a"
    _touch(root / "c1.png")
    _touch(root / "b" / "c2.png")
    alone, alone_sources = list_images([root])
    notes: list[str] = []
    inputs = [root / "b", root, root / "c1.png", root / "c1.png", tmp_path / "a" / "b" / ".."]
    tasks, sources = list_images(inputs, notes=notes)
    assert (tasks, sources) == (alone, alone_sources)
    assert [t.file_name for t in tasks] == ["b/c2.png", "c1.png"]
    assert notes == [
        f"{str(root / 'b')!r} is inside {str(root)!r}; {str(root / 'c1.png')!r} is inside "
        f"{str(root)!r}; {str(tmp_path / 'a' / 'b' / '..')!r} was given twice: each image is "
        "labelled once"
    ]
    # the same file twice (directly, then through a link): once, no name clash
    os.symlink(root / "c1.png", tmp_path / "link.png")
    notes = []
    tasks, sources = list_images(
        [root / "c1.png", root / "c1.png", tmp_path / "link.png"], notes=notes
    )
    assert [t.file_name for t in tasks] == ["c1.png"] and len(sources) == 1
    assert notes == [
        f"{str(root / 'c1.png')!r} was given twice; {str(tmp_path / 'link.png')!r} was given "
        "twice: each image is labelled once"
    ]
    # a link inside a folder to another of its files: the file itself is kept
    os.symlink(root / "c1.png", root / "b" / "same.png")
    notes = []
    tasks, _ = list_images([root], notes=notes)
    assert [t.file_name for t in tasks] == ["b/c2.png", "c1.png"]
    assert notes == [
        "1 file reached under more than one name (e.g. 'b/same.png' is 'c1.png'): each "
        "image is labelled once"
    ]
    # nothing dropped: no note
    notes = []
    list_images([root / "b"], notes=notes)
    assert notes == []


def test_inputs_the_walk_skips_are_kept(tmp_path):
    """A hidden folder, a non-image file or the dataset folder inside a given folder are not
    walked into, so given directly they are labelled (under their own names)."""
    root = tmp_path / "photos"
    _touch(root / "a.jpg")
    _touch(root / ".hidden" / "h.jpg")
    notes_file = _touch(root / "notes.txt")
    _touch(root / "ds" / "d.jpg")
    notes: list[str] = []
    tasks, sources = list_images(
        [root, root / ".hidden", notes_file, root / "ds"], exclude=root / "ds", notes=notes
    )
    assert [t.file_name for t in tasks] == [
        ".hidden/h.jpg",
        "ds/d.jpg",
        "notes.txt",
        "photos/a.jpg",
    ]
    assert notes == [] and len(sources) == 4


def test_missing_input(tmp_path):
    with pytest.raises(InputError) as e:
        list_images([tmp_path / "nope"])
    assert str(e.value) == f"image or folder {str(tmp_path / 'nope')!r} not found"


def test_shards_partition_the_images_deterministically(tmp_path):
    for i in range(40):
        _touch(tmp_path / f"{i:03d}.jpg")
    tasks, _ = list_images([tmp_path])
    parts = [select_shard(tasks, parse_shard(f"{i}/3")) for i in range(3)]
    names = [t.file_name for p in parts for t in p]
    assert sorted(names) == [t.file_name for t in tasks] and len(set(names)) == 40
    assert all(len(p) > 5 for p in parts)
    # the same split on another listing of the same names (e.g. another machine), and a
    # new image does not move the others
    _touch(tmp_path / "new.jpg")
    more, _ = list_images([tmp_path])
    again = select_shard(more, Shard(1, 3))
    assert [t for t in again if t.file_name != "new.jpg"] == parts[1]
    assert select_shard(tasks, None) == tasks


@pytest.mark.parametrize(
    "text, message",
    [
        ("2", "--shard '2' must be I/N with integers, e.g. 0/2 and 1/2 for two shards"),
        ("a/b", "--shard 'a/b' must be I/N with integers, e.g. 0/2 and 1/2 for two shards"),
        ("2/2", "--shard '2/2': I must be in 0..1 (shards are numbered from 0)"),
        ("0/0", "--shard '0/0': N must be an integer >= 1"),
        ("-1/2", "--shard '-1/2': I must be in 0..1 (shards are numbered from 0)"),
    ],
)
def test_parse_shard_errors(text, message):
    with pytest.raises(InputError) as e:
        parse_shard(text)
    assert str(e.value) == message


# --------------------------------------------------------------------------- format
COCO = {
    "images": [{"id": 1, "file_name": "a.jpg", "width": 4, "height": 3}],
    "annotations": [
        {
            "id": 1,
            "image_id": 1,
            "category_id": 1,
            "segmentation": {"size": [3, 4], "counts": "0=0"},
            "area": 12,
            "bbox": [0.0, 0.0, 4.0, 3.0],
            "iscrowd": 0,
            "score": 0.5,
        }
    ],
    "categories": [{"id": 1, "name": "cät", "prompts": ["a cät"]}],
}


def test_annotations_layout_is_fixed_and_reads_back(tmp_path):
    ds.write_annotations(tmp_path, COCO)
    text = (tmp_path / ds.ANNOTATIONS).read_text(encoding="utf-8")
    assert text.splitlines()[:2] == [
        '{"images":[',
        '{"id":1,"file_name":"a.jpg","width":4,"height":3}',
    ]
    assert '"name":"cät"' in text  # UTF-8, not \\u escapes
    assert json.loads(text) == COCO == ds.read_annotations(tmp_path)
    ds.write_annotations(tmp_path / "again", json.loads(text))
    assert (tmp_path / "again" / ds.ANNOTATIONS).read_text(encoding="utf-8") == text
    mode = stat.S_IMODE((tmp_path / ds.ANNOTATIONS).stat().st_mode)
    assert mode == ds.file_mode() and mode & 0o044  # readable by others, like open() makes


def test_read_annotations_errors(tmp_path):
    with pytest.raises(InputError, match="COCO annotations file .* not found"):
        ds.read_annotations(tmp_path)
    (tmp_path / ds.ANNOTATIONS).write_text('{"images": []}')
    with pytest.raises(InputError, match="is not a COCO instances document: no 'annotations'"):
        ds.read_annotations(tmp_path)
    (tmp_path / ds.ANNOTATIONS).write_text("{not json")
    with pytest.raises(InputError, match="is not valid JSON"):
        ds.read_annotations(tmp_path)


def test_units_round_trip_and_bad_units_are_not_done(tmp_path):
    unit = ds.ImageUnit(
        "sub/a.jpg", size_bytes=10, width=4, height=3, instances=[{"x": 1.5}], notes={"n": 1}
    )
    path = ds.write_unit(tmp_path, unit)
    assert path == ds.unit_path(tmp_path, "sub/a.jpg")
    assert path.parent.name == path.stem[:2] and len(path.stem) == 32
    assert ds.read_unit(path) == unit
    bad = ds.ImageUnit("b.jpg", "error", size_bytes=0, reason="empty")
    assert ds.read_unit(ds.write_unit(tmp_path, bad)) == bad
    assert sorted(u.file_name for u in ds.iter_units(tmp_path)) == ["b.jpg", "sub/a.jpg"]
    path.write_text('{"format": "grounded-sam-unit", "version": 1, "status"')  # foreign damage
    assert ds.read_unit(path) is None
    assert [u.file_name for u in ds.iter_units(tmp_path)] == ["b.jpg"]


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "x.json"
    target.write_text("old")

    def boom():
        yield "partial"
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        ds.write_json_list(target, boom())
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["x.json"]


def test_manifest_is_created_once(tmp_path):
    assert ds.read_manifest(tmp_path) is None
    assert ds.write_manifest(tmp_path, {"a": 1}, create=True)
    assert not ds.write_manifest(tmp_path, {"a": 2}, create=True)  # someone else was first
    assert ds.read_manifest(tmp_path)["a"] == 1
    (tmp_path / ds.MANIFEST).write_text('{"format": "other"}')
    with pytest.raises(InputError, match="is not a grounded-sam dataset manifest"):
        ds.read_manifest(tmp_path)


def test_stale_temporaries_are_removed(tmp_path):
    old = _touch(tmp_path / "units" / "ab" / ".tmp-dead.json")
    young = _touch(tmp_path / "units" / "ab" / ".tmp-alive.json")
    os.utime(old, (0, 0))
    assert ds.remove_stale_temporaries(tmp_path) == 1
    assert not old.exists() and young.exists()


def test_find_image(tmp_path):
    img = _touch(tmp_path / "photos" / "sub" / "a.jpg")
    ds.write_manifest(
        tmp_path / "ds",
        {"sources": [{"kind": "folder", "path": str(tmp_path / "photos"), "prefix": "photos"}]},
    )
    assert ds.find_image(tmp_path / "ds", "photos/sub/a.jpg") == img
    assert ds.find_image(tmp_path / "ds", "sub/a.jpg", [tmp_path / "photos"]) == img
    assert ds.find_image(tmp_path / "ds", "photos/nope.jpg") is None
