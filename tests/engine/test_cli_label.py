"""``grounded-sam label`` on the command line: the same dataset as the Python API, progress,
summary, error lines, exit codes, refusals and --merge."""

from __future__ import annotations

import json
import shutil

import pytest
from engine_helpers import tree, write_bad_files, write_photos

from grounded_sam.engine import dataset as ds
from grounded_sam.testing.pipeline import error_lines, run_cli


def test_cli_labels_the_folder_like_the_python_api(reference, photos, cli_models, tmp_path, capsys):
    out = tmp_path / "ds"
    argv = [photos, "--classes", photos.parent / "classes.yaml", "--out", out, *cli_models]
    rc, stdout, err = run_cli("label", argv, capsys)
    assert rc == 2  # three unreadable images
    assert (out / ds.ANNOTATIONS).read_bytes() == (reference[0] / ds.ANNOTATIONS).read_bytes()
    lines = stdout.splitlines()
    assert lines[0].startswith("8 images: 5 labelled now (") and lines[0].count("images/s")
    assert ", 0 done before, 3 failed, in " in lines[0]
    assert lines[1].startswith("dataset: 5 images, ") and " 1 empty, 3 failed -> " in lines[1]
    assert lines[2] == f"unreadable images (3) are listed in {out / ds.ERRORS}"
    assert lines[3].startswith("review queue: ") and lines[3].endswith(f"-> {out / ds.REVIEW}")
    assert error_lines(err) == [
        "error: empty.jpg: image file 'empty.jpg' is empty (0 bytes)",
        "error: notes.jpg: 'notes.jpg' is not a readable image (PIL cannot identify it); "
        "expected a JPEG, PNG, TIFF, BMP or WebP file",
        error_lines(err)[2],
    ]
    assert error_lines(err)[2].startswith(
        "error: truncated.jpg: image file 'truncated.jpg' is truncated or corrupt"
    )
    # not a terminal: plain progress lines with rate and ETA, no carriage returns
    progress = [line for line in err.splitlines() if line.startswith("label: ")]
    assert progress and progress[-1].startswith("label: 8/8 images (100%), ")
    assert all("images/s, ETA" in line for line in progress) and "\r" not in err
    # a rerun has nothing left but the bad images, and still says so
    rc, stdout, err = run_cli("label", argv, capsys)
    assert rc == 2 and ", 5 done before, 3 failed" in stdout.splitlines()[0]
    assert len(error_lines(err)) == 3


def test_a_changed_sam_is_refused(reference, photos, cli_models, tmp_path, capsys):
    out = tmp_path / "ds"
    argv = [photos, "--classes", photos.parent / "classes.yaml", "--out", out, *cli_models]
    shutil.copytree(reference[0], out)
    manifest = ds.read_manifest(out)
    # the reference was made from the same weights in memory: adopt the CLI's identity
    manifest["sam"] = {"sam": "tiny_vit_test", "checkpoint_blake2b": "0" * 64, "precision": "fp32"}
    manifest["detector"] = {"name": "content-boxes", "options": {"box_threshold": 0.05}}
    ds.write_manifest(out, {k: v for k, v in manifest.items() if k not in ("format", "version")})
    snapshot = tree(out)
    rc, stdout, err = run_cli("label", argv, capsys)
    assert rc == 2 and stdout == ""
    assert error_lines(err) == [
        f"error: {out} was labelled with a different configuration (sam checkpoint changed); "
        "use --overwrite to relabel it from scratch, or another --out"
    ]
    rc, _, err = run_cli("label", [*argv, "--precision", "int8"], capsys)
    assert rc == 2 and error_lines(err) == [
        f"error: {out} was labelled with a different configuration (sam checkpoint changed, "
        "precision 'fp32' -> 'int8'); use --overwrite to relabel it from scratch, or another "
        "--out"
    ]
    assert tree(out) == snapshot


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            [],
            "error: label needs IMAGES (files or folders) and --classes ONTOLOGY and --out DATASET",
        ),
        (["x", "--classes", "cat"], "error: label needs --out DATASET"),
        (
            ["x", "--merge", "ds"],
            "error: --merge DATASET assembles existing units and takes no IMAGES",
        ),
        (
            ["x", "--classes", "cat", "--out", "o", "--candidate-points", "8"],
            "error: --candidate-points applies with --candidates only",
        ),
        (
            ["x", "--classes", "cat", "--out", "o", "--shard", "2/2"],
            "error: --shard '2/2': I must be in 0..1 (shards are numbered from 0)",
        ),
        (
            ["x", "--classes", "cat,,dog", "--out", "o"],
            "error: --classes 'cat,,dog' has an empty class name between commas; give e.g. "
            "'cat,dog'",
        ),
        (["x", "--classes", "cat", "--out", "o"], "error: image or folder 'x' not found"),
        (
            ["x", "--classes", "cat", "--out", "o", "--shard", "0/2", "--audit", "a.json"],
            "error: --audit needs the whole dataset; run it without --shard (e.g. with --merge)",
        ),
    ],
)
def test_usage_errors(argv, message, cli_models, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc, stdout, err = run_cli("label", [*argv, *cli_models], capsys)
    assert rc == 2 and stdout == ""
    assert err.splitlines() == [message] and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_merge_on_the_command_line(reference, tmp_path, capsys):
    out = tmp_path / "ds"
    shutil.copytree(reference[0], out)
    before = (out / ds.ANNOTATIONS).read_bytes()
    rc, stdout, err = run_cli("label", ["--merge", out], capsys)
    assert rc == 2 and len(error_lines(err)) == 3
    assert stdout.splitlines()[1].startswith("dataset: 5 images, ")
    assert (out / ds.ANNOTATIONS).read_bytes() == before
    rc, _, err = run_cli("label", ["--merge", tmp_path / "nope"], capsys)
    assert rc == 2 and err == f"error: dataset folder {str(tmp_path / 'nope')!r} not found\n"


def test_label_then_export_as_a_user_would(cli_models, tmp_path, capsys):
    photos = tmp_path / "photos"
    write_photos(photos, kinds=("chelsea", "black"))
    out = tmp_path / "ds"
    rc, _, err = run_cli(
        "label", [photos, "--classes", "cat,dog", "--out", out, *cli_models], capsys
    )
    assert rc == 0, err
    manifest = json.loads((out / ds.MANIFEST).read_text())
    assert manifest["sources"] == [{"kind": "folder", "path": str(photos.resolve()), "prefix": ""}]
    yolo = tmp_path / "yolo"
    rc, stdout, err = run_cli("export", [out, "--format", "yolo-seg", "--out", yolo], capsys)
    assert rc == 0, err
    assert (yolo / "images" / "chelsea.png").resolve() == (photos / "chelsea.png").resolve()
    assert (yolo / "labels" / "black.txt").read_text() == ""
    n = len(json.loads((out / ds.ANNOTATIONS).read_text())["annotations"])
    assert len((yolo / "labels" / "chelsea.txt").read_text().splitlines()) == n


def test_overlapping_inputs_label_each_file_once(cli_models, tmp_path, capsys):
    """``a a/b a/black.png a/black.png``: every file once, named as ``a`` alone names it,
    with one note line; the same file given twice is not a name clash."""
    folder = tmp_path / "a"
    write_photos(folder, kinds=("black",))
    write_photos(folder / "b", kinds=("black",))
    out = tmp_path / "ds"
    inputs = [folder, folder / "b", folder / "black.png", folder / "black.png"]
    argv = [*inputs, "--classes", "cat", "--out", out, "--quiet", *cli_models]
    rc, stdout, err = run_cli("label", argv, capsys)
    assert rc == 0, err
    assert err.splitlines() == [
        f"note: {str(folder / 'b')!r} is inside {str(folder)!r}; "
        f"{str(folder / 'black.png')!r} is inside {str(folder)!r}: each image is labelled once"
    ]
    assert stdout.splitlines()[0].startswith("2 images: 2 labelled now (")
    doc = ds.read_annotations(out)
    assert [img["file_name"] for img in doc["images"]] == ["b/black.png", "black.png"]
    assert ds.read_manifest(out)["sources"] == [
        {"kind": "folder", "path": str(folder.resolve()), "prefix": ""}
    ]


def test_input_errors_come_before_any_model_is_loaded(cli_models, tmp_path, capsys, monkeypatch):
    from grounded_sam.engine.labeler import Labeler

    def no_models(cls, config):
        raise AssertionError("a model was loaded before the inputs were checked")

    monkeypatch.setattr(Labeler, "from_config", classmethod(no_models))
    one, two = (
        write_photos(tmp_path / "x", ("black",))[0],
        write_photos(tmp_path / "y", ("black",))[0],
    )
    out = tmp_path / "ds"
    rc, stdout, err = run_cli(
        "label", [one, two, "--classes", "cat", "--out", out, *cli_models], capsys
    )
    assert rc == 2 and stdout == ""
    assert err.splitlines() == [
        f"error: two images would both be named 'black.png' in the dataset ({str(one)!r} and "
        f"{str(two)!r}); give their parent folders instead, or label them separately"
    ]
    assert not out.exists()


def test_a_shard_run_says_why_each_image_failed(cli_models, tmp_path, capsys):
    """The error lines of a ``--shard`` run give each image's reason, as an unsharded run
    (here ``--merge``, which assembles the same units) prints them."""
    photos = tmp_path / "photos"
    write_photos(photos, kinds=("black",))
    write_bad_files(photos)
    out = tmp_path / "ds"
    argv = [photos, "--classes", "cat", "--out", out, "--quiet", *cli_models]
    rc, stdout, err = run_cli("label", [*argv, "--shard", "0/1"], capsys)
    assert rc == 2 and stdout.startswith("shard 0/1: 4 images: 1 labelled now")
    sharded = error_lines(err)
    assert [line.split(": ")[1] for line in sharded] == ["empty.jpg", "notes.jpg", "truncated.jpg"]
    assert "see its unit" not in err
    assert sharded[0] == "error: empty.jpg: image file 'empty.jpg' is empty (0 bytes)"
    rc, _, err = run_cli("label", ["--merge", out], capsys)
    assert rc == 2 and error_lines(err) == sharded


@pytest.mark.parametrize("stage", ["label", "load"])
def test_ctrl_c_says_how_to_finish_even_when_quiet(
    stage, cli_models, tmp_path, capsys, monkeypatch
):
    from grounded_sam.engine.labeler import Labeler
    from grounded_sam.engine.runners import LocalRunner

    def interrupted_run(self, labeler, tasks, commit, *, store=None):
        commit(labeler.label_batch(tasks[:1])[0])
        raise KeyboardInterrupt

    def interrupted_load(cls, config):
        raise KeyboardInterrupt

    if stage == "label":
        monkeypatch.setattr(LocalRunner, "run", interrupted_run)
    else:
        monkeypatch.setattr(Labeler, "from_config", classmethod(interrupted_load))
    photos = tmp_path / "photos"
    write_photos(photos, kinds=("black", "coffee"))
    out = tmp_path / "ds"
    argv = [photos, "--classes", "cat", "--out", out, "--quiet", *cli_models]
    rc, stdout, err = run_cli("label", argv, capsys)
    assert rc == 130 and stdout == ""
    hint = {
        "label": "interrupted after 1 of 2 images; the work done is saved: run the same command "
        "again to finish",
        "load": "interrupted before any image was labelled: run the same command again to "
        "label them",
    }[stage]
    assert err.splitlines() == [hint, "error: interrupted"]
    if stage == "label":  # what was done is assembled
        assert [img["file_name"] for img in ds.read_annotations(out)["images"]] == ["black.png"]
    else:
        assert not out.exists()
