"""OnnxSamPredictor: SamPredictor's interface, errors and conveniences."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest
import torch

from grounded_sam.errors import InputError
from grounded_sam.model.transforms import ResizeLongestSide
from grounded_sam.onnx import OnnxSam, OnnxSamPredictor, preprocess
from grounded_sam.onnx.export import _single_file
from grounded_sam.onnx.verify import rel_diff
from grounded_sam.predictor import ImageEmbedding


@pytest.fixture(scope="module")
def tiny(exported, photos):
    p = OnnxSamPredictor(exported("tiny_vit").directory)
    p.set_image(photos("chelsea"))
    return p


def test_attributes_and_embedding(tiny, photos):
    image = photos("chelsea")
    assert tiny.is_image_set and tiny.original_size == (300, 451)
    assert tiny.input_size == (681, 1024) and (tiny.input_h, tiny.input_w) == (681, 1024)
    assert (tiny.orig_h, tiny.orig_w) == (300, 451)
    assert isinstance(tiny.transform, ResizeLongestSide)
    emb = tiny.get_embedding()
    assert isinstance(emb, ImageEmbedding) and emb.high_res == ()
    assert tiny.get_image_embedding().shape == (1, 256, 64, 64)
    assert tiny.device == torch.device("cpu") and tiny.model.precision == "fp32"
    assert tiny.model.family == "sam" and tiny.model.name == "tiny_vit_test"
    (again,) = tiny.embed([image])
    assert torch.equal(again.features, emb.features)
    assert "OnnxSam('tiny_vit_test'" in repr(tiny.model)


def test_preprocess_equals_the_models(model, photos):
    for name in ("tiny_vit", "sam2"):
        m = model(name)
        meta_like = {
            "image_size": 1024,
            "preprocess": {
                "resize": "square" if name == "sam2" else "longest_side",
                "divide_by": 255.0 if name == "sam2" else 1.0,
                "pixel_mean": m.pixel_mean.flatten().tolist(),
                "pixel_std": m.pixel_std.flatten().tolist(),
            },
        }
        for photo_name in ("chelsea", "coffee_portrait", "rocket_tiny"):
            image = photos(photo_name)
            x, size = preprocess(image, meta_like)
            ref, ref_size = m.prepare_image(image)
            assert size == tuple(ref_size) and x.shape == tuple(ref.shape)
            tol = 0.0 if name == "tiny_vit" else 5e-6  # PIL's float resize vs torch's
            assert np.abs(x - ref.numpy()).max() <= tol, (name, photo_name)


def test_transform_coords_equal_the_models(model, exported):
    rng = np.random.default_rng(0)
    coords = rng.uniform(0, 700, size=(9, 2))
    for name in ("tiny_vit", "sam2"):
        m, o = model(name), OnnxSam(exported(name).directory)
        for size, input_size in [((300, 451), (681, 1024)), ((700, 233), (1024, 341))]:
            if name == "sam2":
                input_size = (1024, 1024)
            ref = m.transform_coords(torch.as_tensor(coords), size, input_size).float()
            assert np.array_equal(o.transform_coords(coords, size, input_size), ref.numpy())


def test_bgr_and_paths(tiny, photos, tmp_path):
    from PIL import Image

    image = photos("chelsea")
    box = np.array([50, 40, 300, 280])
    ref, _, _ = tiny.predict(box=box)
    tiny.set_image(np.ascontiguousarray(image[..., ::-1]), image_format="BGR")
    assert np.array_equal(tiny.predict(box=box)[0], ref)
    Image.fromarray(image).save(tmp_path / "cat.png")
    tiny.set_image(tmp_path / "cat.png")
    assert np.array_equal(tiny.predict(box=box)[0], ref)


def test_input_errors(tiny, exported):
    with pytest.raises(InputError, match="image_format"):
        tiny.set_image(np.zeros((8, 8, 3), np.uint8), image_format="HSV")
    with pytest.raises(InputError, match="given together"):
        tiny.predict(point_coords=[[1, 2]])
    with pytest.raises(InputError, match=r"shape \(N, 2\)"):
        tiny.predict(point_coords=[[1, 2, 3]], point_labels=[1])
    with pytest.raises(InputError, match="1 \\(foreground\\) or 0"):
        tiny.predict(point_coords=[[1, 2]], point_labels=[2])
    with pytest.raises(InputError, match="NaN or inf"):
        tiny.predict(point_coords=[[np.nan, 2]], point_labels=[1])
    with pytest.raises(InputError, match="one box"):
        tiny.predict(box=[[0, 0, 5, 5], [1, 1, 6, 6]])
    with pytest.raises(InputError, match="mask_input must have shape"):
        tiny.predict(point_coords=[[1, 2]], point_labels=[1], mask_input=np.zeros((256, 256)))
    with pytest.raises(InputError, match="batch_size"):
        tiny.embed([], batch_size=0)
    sam2_emb = OnnxSamPredictor(exported("sam2").directory)
    with pytest.raises(InputError, match="another family"):
        sam2_emb.set_embedding(tiny.get_embedding())
    with pytest.raises(InputError, match="ImageEmbedding"):
        tiny.set_embedding(tiny.get_image_embedding())
    fresh = OnnxSamPredictor(tiny.model)
    with pytest.raises(RuntimeError, match="set_image"):
        fresh.predict(box=[0, 0, 5, 5])


def test_folder_errors(exported, tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        OnnxSamPredictor(tmp_path / "missing")
    with pytest.raises(InputError, match="not a folder written by"):
        OnnxSamPredictor(tmp_path)
    with pytest.raises(InputError, match="single-mask"):
        OnnxSamPredictor(exported("tiny_vit", single_mask=True).directory)
    src = exported("tiny_vit").directory
    bad = tmp_path / "bad"
    shutil.copytree(src, bad)
    meta = json.loads((bad / "sam_onnx.json").read_text())
    (bad / "sam_onnx.json").write_text(json.dumps(dict(meta, format_version=99)))
    with pytest.raises(InputError, match="format_version 99"):
        OnnxSamPredictor(bad)
    (bad / "sam_onnx.json").write_text(json.dumps(meta))
    shutil.copy(exported("sam2").decoder, bad / "decoder.onnx")  # files of two exports
    with pytest.raises(InputError, match="mixes files"):
        OnnxSamPredictor(bad)
    (bad / "decoder.onnx").unlink()
    with pytest.raises(InputError, match="lacks decoder.onnx"):
        OnnxSamPredictor(bad)
    with pytest.raises(InputError, match="not available"):
        OnnxSamPredictor(src, providers=["NoSuchExecutionProvider"])
    with pytest.raises(InputError, match="threads"):
        OnnxSamPredictor(src, threads=0)


def test_weights_beside_the_graph(exported, photos, tmp_path):
    """Files over protobuf's 2 GB limit keep their weights in ``<name>.data``: the per-tensor
    files the exporter writes are merged into one, which the predictor loads."""
    src = exported("tiny_vit")
    folder = tmp_path / "big"
    shutil.copytree(src.directory, folder)
    model = onnx.load(str(folder / "encoder.onnx"))
    onnx.save_model(model, str(folder / "encoder.onnx"), save_as_external_data=True,
                    all_tensors_to_one_file=False, size_threshold=1024)  # fmt: skip
    staging = tmp_path / "staging"
    staging.mkdir()
    for p in folder.iterdir():
        if p.name not in ("decoder.onnx", "sam_onnx.json"):
            shutil.move(p, staging / p.name)
    assert len(list(staging.iterdir())) > 10  # one file per tensor
    _single_file(staging / "encoder.onnx")
    assert sorted(p.name for p in staging.iterdir()) == ["encoder.onnx", "encoder.onnx.data"]
    for p in staging.iterdir():
        shutil.move(p, folder / p.name)
    big, ref = OnnxSamPredictor(folder), OnnxSamPredictor(src.directory)
    image = photos("rocket_tiny")
    a, b = big.embed([image])[0], ref.embed([image])[0]
    assert rel_diff(b.features.numpy(), a.features.numpy()) == 0.0


def test_missing_onnxruntime(exported, monkeypatch):
    import sys

    from grounded_sam.errors import MissingDependency

    folder = exported("tiny_vit").directory
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(MissingDependency, match=r'pip install "grounded-sam\[onnx\]"'):
        OnnxSamPredictor(folder)


def test_spinning_off_reaches_both_sessions_and_changes_no_result(tiny, exported, photos):
    """``spinning=False`` (what a process doing other CPU work between calls wants, and what
    benchmarks/onnx.py uses) is set on both sessions; the masks are the same."""

    def spinning(session) -> str | None:
        try:
            return session.get_session_options().get_session_config_entry(
                "session.intra_op.allow_spinning"
            )
        except RuntimeError:  # not set: onnxruntime's default (spinning)
            return None

    calm = OnnxSam(exported("tiny_vit").directory, spinning=False)
    assert [spinning(s) for s in (calm.encoder, calm.decoder)] == ["0", "0"]
    assert [spinning(s) for s in (tiny.model.encoder, tiny.model.decoder)] == [None, None]
    pred = OnnxSamPredictor(calm)
    pred.set_image(photos("chelsea"))
    box = np.array([50, 40, 300, 250])
    got = pred.predict(box=box, multimask_output=False, return_logits=True)[0]
    want = tiny.predict(box=box, multimask_output=False, return_logits=True)[0]
    assert np.array_equal(got, want)


def test_bgr_reorders_channels_after_normalising(tiny, photos):
    """As SamPredictor: a grayscale image given as BGR is not mirrored, BGRA keeps its alpha
    out of the colours."""
    image = photos("chelsea")
    gray = np.ascontiguousarray(image[:, :, 0])
    tiny.set_image(gray)
    want = tiny.get_image_embedding().clone()
    tiny.set_image(gray, image_format="BGR")
    assert torch.equal(tiny.get_image_embedding(), want)
    tiny.set_image(image)
    want = tiny.get_image_embedding().clone()
    bgra = np.dstack([image[..., ::-1], np.full(image.shape[:2], 9, np.uint8)])
    tiny.set_image(bgra, image_format="BGR")
    assert torch.equal(tiny.get_image_embedding(), want)
    tiny.set_image(image)  # the module's predictor back on its photo


@pytest.mark.parametrize("shape", [(1, 3000, 3), (3000, 1)])
def test_too_elongated_image(exported, shape):
    p = OnnxSamPredictor(exported("tiny_vit").directory)
    with pytest.raises(InputError, match="too elongated") as e:
        p.set_image(np.zeros(shape, np.uint8))
    h, w = shape[:2]
    assert f"{w}x{h} (WxH)" in str(e.value) and "1024" in str(e.value)
    assert "crop" in str(e.value) and "pad" in str(e.value)
    assert not p.is_image_set


def test_argument_errors(tiny):
    with pytest.raises(InputError, match=r"needs boxes: an \(N, 4\) array"):
        tiny.predict_boxes(None)
    with pytest.raises(InputError, match="multimask_output must be True or False"):
        tiny.predict(box=[0, 0, 5, 5], multimask_output="no")
    with pytest.raises(InputError, match="multimask_output must be True or False"):
        tiny.predict_boxes([[0, 0, 5, 5]], multimask_output=1)
    masks, _, _ = tiny.predict(box=[0, 0, 5, 5], multimask_output=np.bool_(False))
    assert masks.shape[0] == 1


@pytest.mark.parametrize("name", ["decoder.onnx", "encoder.onnx"])
def test_corrupt_model_file(exported, tmp_path, name):
    bad = tmp_path / "bad"
    shutil.copytree(exported("tiny_vit").directory, bad)
    data = (bad / name).read_bytes()
    (bad / name).write_bytes(data[: len(data) // 3])
    with pytest.raises(InputError, match="grounded-sam export-onnx") as e:
        OnnxSamPredictor(bad)
    assert name in str(e.value) and "corrupt" in str(e.value)
