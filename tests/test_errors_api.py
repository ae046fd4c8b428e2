"""User-fixable errors of the Python API: the class, a key phrase of the message, raised before
any weights are read or any file is written (devices, ``Result.save``/``to_coco``, phrases,
``segment_batch``, detector options, ``build_sam`` checkpoints)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from grounded_sam import GroundedSAM, Result, build_sam, segment
from grounded_sam.devices import resolve_device
from grounded_sam.errors import InputError, WeightsError
from grounded_sam.phrases import parse_phrases
from grounded_sam.pipeline import clear_pipelines
from grounded_sam.testing.pipeline import (
    StubDetector,
    mobile_sam_checkpoint,
    small_chelsea,
    tiny_sam,
)

CUDA_FORMS = ["cuda", "cuda:0", 0, torch.device("cuda")]


# ----------------------------------------------------------------------------- devices
@pytest.fixture
def no_cuda_build(monkeypatch):
    """This machine as a CPU-only PyTorch build sees it."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", None)
    monkeypatch.setattr(torch.version, "hip", None)


@pytest.mark.parametrize("device", CUDA_FORMS)
def test_cuda_without_a_cuda_build(no_cuda_build, device):
    with pytest.raises(InputError, match="is not available here") as info:
        resolve_device(device)
    msg = str(info.value)
    assert "no CUDA support" in msg and "device='cpu'" in msg and "device=None" in msg
    assert "cuda" in msg  # names the device


def test_cuda_without_a_driver(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", "12.1")
    monkeypatch.setattr(torch.version, "hip", None)
    with pytest.raises(InputError, match=r"'cuda:0' is not available here: no NVIDIA GPU or dri"):
        resolve_device("cuda:0")
    with pytest.raises(InputError, match=r"device 0 \(cuda:0\) is not available"):
        resolve_device(0)


def test_cuda_index_past_the_last_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(
        InputError, match=r"'cuda:1' is not available here: this machine has 1 CUDA"
    ):
        resolve_device("cuda:1")


def test_mps_off_apple_silicon(monkeypatch):
    monkeypatch.setattr(torch.backends.mps, "is_built", lambda: False)
    with pytest.raises(InputError, match=r"'mps' is not available here: .*no MPS.*device='cpu'"):
        resolve_device("mps")
    monkeypatch.setattr(torch.backends.mps, "is_built", lambda: True)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(InputError, match=r"'mps' is not available here: MPS needs an Apple"):
        resolve_device("mps")


def test_xla_without_torch_xla(monkeypatch):
    import grounded_sam.devices as devices

    monkeypatch.setattr(devices.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(InputError, match=r"'xla' is not available here: .*torch_xla"):
        resolve_device("xla")


def test_cpu_and_none_still_resolve():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    assert resolve_device(None).type in ("cpu", "cuda")


def test_every_entry_checks_the_device_before_reading_weights(no_cuda_build, tmp_path):
    from grounded_sam import finetune, label
    from grounded_sam.detectors import build_detector

    missing = tmp_path / "missing.pt"  # would be a WeightsError if it were read first
    with pytest.raises(InputError, match="'cuda' is not available here"):
        build_sam("mobile_sam", checkpoint=missing, device="cuda")
    with pytest.raises(InputError, match="'cuda' is not available here"):
        GroundedSAM(StubDetector([], [], []), "mobile_sam", sam_checkpoint=missing, device="cuda")
    model = tiny_sam()
    with pytest.raises(InputError, match="'cuda:0' is not available here"):
        GroundedSAM(StubDetector([], [], []), model, device="cuda:0")
    assert model.device.type == "cpu"
    clear_pipelines()
    with pytest.raises(InputError, match="device 0 \\(cuda:0\\) is not available here"):
        segment(small_chelsea(), "a cat", detector="grounding-dino", sam_checkpoint=missing,
                device=0)  # fmt: skip
    with pytest.raises(InputError, match="'cuda' is not available here"):
        build_detector("grounding-dino", model=tmp_path / "no-model", device="cuda")
    ckpt = mobile_sam_checkpoint()  # label and finetune check that it exists first
    image = tmp_path / "cat.png"
    Image.fromarray(small_chelsea()).save(image)
    with pytest.raises(InputError, match="'cuda' is not available here"):
        label([image], "cat", tmp_path / "ds", sam_checkpoint=ckpt, device="cuda",
              detector=StubDetector([], [], []), progress=False)  # fmt: skip
    with pytest.raises(InputError, match="'cuda' is not available here"):
        finetune(tmp_path / "a.json", tmp_path, tmp_path / "run", sam_checkpoint=ckpt,
                 device="cuda", show_progress=False)  # fmt: skip
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cat.png"]  # nothing written


# ------------------------------------------------------------------------ Result.save
def _result(n: int = 2, h: int = 20, w: int = 30) -> Result:
    masks = np.zeros((n, h, w), dtype=bool)
    for i in range(n):
        masks[i, 2 + i : 8 + i, 3:12] = True
    return Result(
        masks=masks,
        boxes=[[3, 2 + i, 12, 8 + i] for i in range(n)],
        scores=np.full(n, 0.9),
        mask_scores=np.full(n, 0.8),
        labels=["a cat" if i % 2 == 0 else "a dog" for i in range(n)],
        image_size=(h, w),
        image=np.full((h, w, 3), 100, np.uint8),
    )


def _tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"alpha": 5}, r"alpha \(mask opacity\) must be a number in \[0, 1\], got 5"),
        ({"alpha": "0.5"}, r"alpha \(mask opacity\) must be a number"),
        ({"alpha": float("nan")}, r"alpha \(mask opacity\) must be a number"),
        ({"image_id": "img1"}, r"image_id must be an integer, got str \('img1'\)"),
        ({"category_ids": {"a cat": 1}}, r"category_ids has no id for the labels \['a dog'\]"),
        ({"category_ids": {"a cat": 1, "a dog": "2"}}, r"category_ids\['a dog'\] must be an int"),
        ({"image": np.zeros((5, 5, 3), np.uint8)}, r"image has size \(5, 5\)"),
    ],
)
def test_save_checks_every_argument_before_writing(tmp_path, kwargs, match):
    with pytest.raises(InputError, match=match):
        _result().save(tmp_path / "out", **kwargs)
    assert _tree(tmp_path) == []


def test_save_onto_a_file_names_the_path(tmp_path):
    f = tmp_path / "out"
    f.write_text("mine")
    with pytest.raises(InputError, match=rf"'{f}': it exists and is not a folder"):
        _result().save(f)
    assert f.read_text() == "mine" and _tree(tmp_path) == ["out"]


def test_save_under_a_file_names_the_path(tmp_path):
    f = tmp_path / "file"
    f.write_text("mine")
    with pytest.raises(InputError, match=rf"cannot save the result to '{f}/out'.*is a file"):
        _result().save(f / "out")
    assert _tree(tmp_path) == ["file"]


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="needs a non-root POSIX user")
def test_save_into_an_unwritable_folder_names_the_path(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(InputError, match=rf"'{ro}/out'.*permission denied"):
            _result().save(ro / "out")
    finally:
        ro.chmod(0o700)
    assert _tree(tmp_path) == ["ro"]


def test_save_into_an_empty_folder_and_its_return_value(tmp_path):
    (tmp_path / "out").mkdir()
    assert _result().save(str(tmp_path / "out")) == Path(tmp_path / "out")
    assert _tree(tmp_path / "out") == [
        "masks",
        "masks/000_a_cat.png",
        "masks/001_a_dog.png",
        "overlay.png",
        "result.json",
    ]
    assert _tree(tmp_path) == ["out", *(f"out/{p}" for p in _tree(tmp_path / "out"))]


@pytest.mark.parametrize("error", [OSError(28, "No space left on device"), RuntimeError("bug")])
def test_a_failing_save_keeps_the_earlier_result_and_leaves_nothing(tmp_path, monkeypatch, error):
    import grounded_sam.export as export

    _result(2).save(tmp_path / "out")
    before = {p: (tmp_path / "out" / p).read_bytes() for p in ["result.json", "overlay.png"]}
    real = export.save_result

    def failing(result, out_dir, *args, **kwargs):
        real(result, out_dir, *args, **kwargs)  # everything written, then the failure
        raise error

    monkeypatch.setattr(export, "save_result", failing)
    expected = InputError if isinstance(error, OSError) else RuntimeError
    with pytest.raises(expected, match="No space left" if expected is InputError else "bug"):
        _result(1).save(tmp_path / "out")
    assert _tree(tmp_path) == [
        "out",
        "out/masks",
        "out/masks/000_a_cat.png",
        "out/masks/001_a_dog.png",
        "out/overlay.png",
        "out/result.json",
    ]
    assert {p: (tmp_path / "out" / p).read_bytes() for p in before} == before
    assert len(json.loads(before["result.json"])["annotations"]) == 2


def test_save_refuses_a_user_folder_with_other_files(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "sub").mkdir()
    with pytest.raises(InputError, match=r"not from a saved result \(notes.txt, sub/\)"):
        _result().save(tmp_path)
    assert _tree(tmp_path) == ["notes.txt", "sub"]


# ---------------------------------------------------------------------- to_coco / json
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"image_id": "img1"}, r"image_id must be an integer, got str \('img1'\)"),
        ({"image_id": "1"}, r"image_id must be an integer"),
        ({"image_id": 1.5}, r"image_id must be an integer, got float"),
        ({"image_id": True}, r"image_id must be an integer, got bool"),
        ({"first_annotation_id": "1"}, r"first_annotation_id must be an integer"),
        ({"category_ids": {"a cat": "x", "a dog": 2}}, r"category_ids\['a cat'\] must be an int"),
        ({"category_ids": {"a cat": 1.0, "a dog": 2}}, r"category_ids\['a cat'\] must be an int"),
        ({"category_ids": [("a cat", 1)]}, r"category_ids must be a dict"),
        ({"category_ids": {1: 1, "a cat": 2, "a dog": 3}}, r"category_ids keys must be label"),
    ],
)
def test_to_coco_rejects_non_integer_ids(kwargs, match):
    with pytest.raises(InputError, match=match):
        _result().to_coco(**kwargs)


def test_to_json_and_category_ids_check_their_arguments():
    with pytest.raises(InputError, match="image_id must be an integer"):
        _result().to_json(image_id="img1")
    with pytest.raises(InputError, match=r"category_ids\['a dog'\] must be an integer"):
        _result().category_ids({"a cat": 1, "a dog": None})


def test_the_export_functions_check_ids_when_called_directly():
    from grounded_sam import export

    with pytest.raises(InputError, match="image_id must be an integer"):
        export.to_coco(_result(), image_id="img1")
    with pytest.raises(InputError, match="first_annotation_id must be an integer"):
        export.to_coco(_result(), first_annotation_id=1.5)
    with pytest.raises(InputError, match="image_id must be an integer"):
        export.to_json(_result(), image_id="1")
    with pytest.raises(InputError, match=r"category_ids\['a dog'\] must be an integer"):
        export.category_ids(_result(), {"a cat": 1, "a dog": "2"})


def test_numpy_integer_ids_are_accepted():
    anns = _result().to_coco(image_id=np.int64(7), category_ids={"a cat": np.int32(3), "a dog": 4})
    assert [(a["image_id"], a["category_id"]) for a in anns] == [(7, 3), (7, 4)]
    json.dumps(anns)


# ----------------------------------------------------------------------------- phrases
@pytest.mark.parametrize("text", [",,,", "...", "-", " , . - . ;", ["-", "?!"]])
def test_punctuation_only_prompt_is_an_empty_prompt(text):
    with pytest.raises(InputError, match="has no phrases"):
        parse_phrases(text)


def test_phrases_without_letters_are_dropped_and_commas_do_not_split():
    assert parse_phrases("a cat. , . - . a dog") == ["a cat", "a dog"]
    assert parse_phrases("a red, shiny car") == ["a red, shiny car"]
    assert parse_phrases(["猫", "#1", "--"]) == ["猫", "#1"]
    doc = parse_phrases.__doc__
    assert '``"."`` separates phrases; commas do not' in doc


def test_segment_never_sends_a_punctuation_phrase_to_the_detector():
    seen = []

    class Recording(StubDetector):
        def detect(self, image, text):
            seen.append(list(text))
            return super().detect(image, text)

    gs = GroundedSAM(Recording([[10, 10, 60, 60]], [0.9], ["a cat"]), tiny_sam())
    with pytest.raises(InputError, match="has no phrases"):
        gs.segment(small_chelsea(), ",,,")
    assert seen == []
    gs.segment(small_chelsea(), "a cat. ...")
    assert seen == [["a cat"]]


# ----------------------------------------------------------------------- segment_batch
@pytest.fixture(scope="module")
def stub_gs() -> GroundedSAM:
    return GroundedSAM(StubDetector([[10, 10, 60, 60]], [0.9], ["a cat"]), tiny_sam())


def _one_image(kind: str, tmp_path: Path):
    img = small_chelsea()
    if kind in ("str", "path"):
        p = tmp_path / "cat.png"
        Image.fromarray(img).save(p)
        return str(p) if kind == "str" else p
    return {"array": img, "gray": img[..., 0], "pil": Image.fromarray(img)}[kind]


@pytest.mark.parametrize("kind", ["str", "path", "array", "gray", "pil"])
def test_segment_batch_refuses_one_image(stub_gs, tmp_path, kind):
    with pytest.raises(InputError, match=r"segment_batch takes a list of images.*segment\("):
        stub_gs.segment_batch(_one_image(kind, tmp_path), "a cat")


def test_segment_batch_refuses_a_non_iterable_and_takes_a_stack(stub_gs):
    with pytest.raises(InputError, match="segment_batch takes a list of images, got int"):
        stub_gs.segment_batch(3, "a cat")
    img = small_chelsea()
    results = stub_gs.segment_batch(np.stack([img, img]), "a cat")
    assert len(results) == 2 and all(r.labels == ["a cat"] for r in results)


# ------------------------------------------------------------------ detector options
def test_misspelt_detector_option_fails_at_construction(tmp_path, monkeypatch):
    from grounded_sam.detectors.grounding_dino import GroundingDinoDetector

    def never(*a, **k):
        raise AssertionError("the detector must not be built to check its options")

    monkeypatch.setattr(GroundingDinoDetector, "__init__", never)
    with pytest.raises(
        InputError,
        match=r"detector 'grounding-dino' takes no option 'box_treshold' \(did you mean "
        r"'box_threshold'\?\); its options: box_threshold, ",
    ):
        GroundedSAM("grounding-dino", tiny_sam(), model=tmp_path, box_treshold=0.3)
    with pytest.raises(InputError, match=r"box_threshold expects a number in \[0, 1\], got 5"):
        GroundedSAM("grounding-dino", tiny_sam(), model=tmp_path, box_threshold=5)
    with pytest.raises(InputError, match=r"takes no option 'box_threshold' \(did you mean 'score_"):
        GroundedSAM("yolo-clip", tiny_sam(), box_threshold=0.3)
    with pytest.raises(InputError, match=r"takes no option 'zzz'; its options"):
        GroundedSAM("grounding-dino", tiny_sam(), zzz=1)
    gs = GroundedSAM("grounding-dino", tiny_sam(), model=tmp_path, box_threshold=0.3,
                     detector_precision="fp32")  # fmt: skip
    assert gs._detector is None  # still built on the first text prompt


def test_build_detector_precision_keyword_is_detector_precision():
    """``precision`` is the SAM's everywhere; the detector's is the declared
    ``detector_precision`` (the message names it)."""
    from grounded_sam.detectors import build_detector

    with pytest.raises(InputError, match=r"takes no option 'precision'.*detector_precision"):
        build_detector("grounding-dino", precision="fp32")


# ------------------------------------------------------------------ build_sam checkpoint
@pytest.mark.parametrize("checkpoint", [123, b"/x.pt", {"a": torch.zeros(1)}])
def test_checkpoint_that_is_not_a_path(checkpoint):
    with pytest.raises(InputError, match=r"checkpoint must be the path of a .pt/.pth file"):
        build_sam("mobile_sam", checkpoint=checkpoint)


def test_checkpoint_that_is_a_directory(tmp_path):
    (tmp_path / "mobile_sam.pt").write_bytes(b"x")
    with pytest.raises(
        WeightsError, match=r"is a directory, expected a .pt/.pth file \(this folder holds mobil"
    ):
        build_sam("mobile_sam", checkpoint=tmp_path, device="cpu")
    with pytest.raises(WeightsError, match="is a directory, expected a .pt/.pth file"):
        GroundedSAM(StubDetector([], [], []), "mobile_sam", sam_checkpoint=tmp_path / ".")
