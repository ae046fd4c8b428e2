"""export_onnx: verification, opsets, int8 quantisation, errors, files replaced safely."""

from __future__ import annotations

import json
import sys

import numpy as np
import onnx
import pytest

from grounded_sam.errors import InputError, MissingDependency
from grounded_sam.onnx import OnnxSam, OnnxSamPredictor, export_onnx, verify
from grounded_sam.onnx import export as export_module
from grounded_sam.onnx.verify import agreement, default_prompts, rel_diff


def test_export_verifies_against_pytorch(model, tmp_path):
    """The export's own check (on by default) records figures within the issue's criteria."""
    result = export_onnx(model("tiny_vit"), tmp_path / "tiny")
    v = result.metadata["verification"]
    assert v["encoder_rel_diff"] < 1e-4
    assert v["logits_rel_diff"] < 1e-4
    assert v["iou_abs_diff"] < 1e-4
    assert v["mask_agreement"] >= 0.999 and v["end_to_end_agreement"] >= 0.999
    assert v["prompts"] == ["point", "two points", "box", "box+point", "point+mask"]
    assert [640, 427] in v["sizes"] and [23, 17] in v["sizes"]  # portrait, tiny
    assert json.loads((tmp_path / "tiny" / "sam_onnx.json").read_text()) == result.metadata
    assert sorted(p.name for p in (tmp_path / "tiny").iterdir()) == [
        "decoder.onnx",
        "encoder.onnx",
        "sam_onnx.json",
    ]


def test_export_refuses_files_that_disagree(model, tmp_path, monkeypatch):
    real = export_module.verify.compare

    def off(*args, **kwargs):
        return dict(real(*args, **kwargs), logits_rel_diff=0.5)

    monkeypatch.setattr(export_module.verify, "compare", off)
    with pytest.raises(RuntimeError, match="disagree with the PyTorch model"):
        export_onnx(model("tiny_vit"), tmp_path / "out")
    assert not (tmp_path / "out").exists()  # created by the call: removed, temp folder and all


@pytest.mark.parametrize("opset", [14, 20])
def test_other_opsets(opset, model, exported, photos, tmp_path):
    result = export_onnx(model("tiny_vit"), tmp_path / "o", opset=opset, verify_outputs=False)
    for path in (result.encoder, result.decoder):
        assert [o.version for o in onnx.load(str(path)).opset_import] == [opset]
    image = photos("coffee_portrait")
    a, b = OnnxSamPredictor(result.directory), OnnxSamPredictor(exported("tiny_vit").directory)
    a.set_image(image)
    b.set_image(image)
    kw = default_prompts()[3].pixels(image.shape[:2])
    ma, _, _ = a.predict(**kw, return_logits=True)
    mb, _, _ = b.predict(**kw, return_logits=True)
    assert rel_diff(mb, ma) < 1e-4


def test_quantize(exported, photos):
    """Dynamic int8 weights: integer ops in the graphs, the masks' IoU against float32 stated
    in the metadata, and the predictor runs the files."""
    q = exported("tiny_vit", quantize=True)
    meta = q.metadata
    assert meta["quantized"] is True
    iou = meta["quantization"]["mask_iou_vs_fp32"]
    assert iou["n"] >= 10 and 0.8 <= iou["min"] <= iou["mean"] <= 1.0
    for path in (q.encoder, q.decoder):
        ops = {n.op_type for n in onnx.load(str(path)).graph.node}
        assert {"DynamicQuantizeLinear", "MatMulInteger"} <= ops
    fp32 = exported("tiny_vit")
    assert q.encoder.stat().st_size < 0.7 * fp32.encoder.stat().st_size
    p = OnnxSamPredictor(q.directory)
    assert p.model.precision == "int8"
    image = photos("chelsea")
    p.set_image(image)
    ref = OnnxSamPredictor(fp32.directory)
    ref.set_image(image)
    kw = default_prompts()[2].pixels(image.shape[:2])  # box
    a, _, _ = p.predict(**kw, return_logits=True)
    b, _, _ = ref.predict(**kw, return_logits=True)
    assert agreement(b, a) > 0.9


def test_argument_errors(model, tmp_path):
    with pytest.raises(InputError, match="opset must be an integer from 14 to 20"):
        export_onnx(model("tiny_vit"), tmp_path, opset=11)
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="exists and is not a folder"):
        export_onnx(model("tiny_vit"), tmp_path / "file")
    with pytest.raises(InputError, match="unknown SAM variant"):
        export_onnx("vit_q", tmp_path / "o")
    with pytest.raises(InputError, match="checkpoint only applies"):
        export_onnx(model("tiny_vit"), tmp_path / "o", checkpoint=tmp_path / "file")
    with pytest.raises(InputError, match="variant name or a SAM model"):
        export_onnx(object(), tmp_path / "o")


def test_int8_pytorch_model_is_refused(tmp_path):
    from grounded_sam.testing.sam_refs import meta_tiny_vit_sam, ours_tiny_vit_sam

    m = ours_tiny_vit_sam(meta_tiny_vit_sam(seed=3).state_dict()).set_precision("int8")
    with pytest.raises(InputError, match="--quantize"):
        export_onnx(m, tmp_path / "o")


def test_missing_onnxruntime(model, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(MissingDependency, match=r'pip install "grounded-sam\[onnx\]"'):
        export_onnx(model("tiny_vit"), tmp_path / "o")
    assert not (tmp_path / "o").exists()


def test_re_export_replaces_our_files_only(model, tmp_path):
    """A new export replaces encoder/decoder/metadata, drops a stale ``.data`` of an earlier
    export, and leaves other files alone."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "encoder.onnx.data").write_bytes(b"stale")
    (out / "notes.txt").write_text("mine")
    result = export_onnx(model("tiny_vit"), out, verify_outputs=False)
    names = sorted(p.name for p in out.iterdir())
    assert names == ["decoder.onnx", "encoder.onnx", "notes.txt", "sam_onnx.json"]
    assert (out / "notes.txt").read_text() == "mine"
    onnx.checker.check_model(str(result.encoder))
    assert np.isfinite(result.metadata["export_seconds"])


def test_encoder_preprocess_layout(model, exported, photos, tmp_path):
    """``encoder_preprocess``: encoder.onnx takes the resized (h, w, 3) image in 0..255 of any
    size (what X-AnyLabeling's SAM loader feeds) and gives the default export's embedding."""
    import onnxruntime as ort

    result = export_onnx(model("tiny_vit"), tmp_path / "hwc", encoder_preprocess=True)
    assert result.metadata["encoder"]["input_layout"] == "hwc"
    assert result.metadata["verification"]["end_to_end_agreement"] >= 0.999
    session = ort.InferenceSession(str(result.encoder), providers=["CPUExecutionProvider"])
    (inp,) = session.get_inputs()
    assert inp.name == "input_image" and inp.shape == ["image_height", "image_width", 3]
    default = OnnxSamPredictor(exported("tiny_vit").directory)
    hwc = OnnxSamPredictor(result.directory)
    for name in ("coffee_portrait", "rocket_tiny", "chelsea"):
        a, b = default.embed([photos(name)])[0], hwc.embed([photos(name)])[0]
        assert a.input_size == b.input_size
        assert rel_diff(a.features.numpy(), b.features.numpy()) < 1e-5, name
    with pytest.raises(InputError, match="SAM 1 / MobileSAM"):
        export_onnx(model("sam2"), tmp_path / "x", encoder_preprocess=True)


@pytest.mark.parametrize("name", ["tiny_vit", "sam2"])
def test_single_mask_decoder_is_verified(name, model, exported):
    """A ``single_mask`` decoder is held to the four-mask export's figures against PyTorch's
    output under the same rule (SAM 1: Meta's select_masks; SAM 2.1: its stability rule)."""
    onnx_model = OnnxSam(exported(name, single_mask=True).directory)
    v = verify.compare(model(name), onnx_model)
    assert v["single_mask"] is True
    assert v["encoder_rel_diff"] < 1e-4 and v["logits_rel_diff"] < 1e-4
    assert v["iou_abs_diff"] < 1e-4
    assert v["mask_agreement"] >= 0.999 and v["end_to_end_agreement"] >= 0.999
    assert [23, 17] in v["sizes"] and "point+mask" in v["prompts"]


def test_single_mask_check_catches_another_rule(model, exported, monkeypatch):
    """The check compares the one mask: a reference that picks another mask fails it."""
    onnx_model = OnnxSam(exported("tiny_vit", single_mask=True).directory)
    real = verify.single_mask_candidates

    def other(*args, **kwargs):
        four, ok = real(*args, **kwargs)
        return four, [(ok[0] + 1) % 4]

    monkeypatch.setattr(verify, "single_mask_candidates", other)
    v = verify.compare(model("tiny_vit"), onnx_model)
    assert v["logits_rel_diff"] > 0.1 and v["mask_agreement"] < 0.99
    with pytest.raises(RuntimeError, match="disagree with the PyTorch model"):
        export_module._check_figures(v)


@pytest.mark.parametrize("thresh", [0.98, 0.0])
def test_single_mask_reference_is_the_models_own(thresh, model):
    """SAM 2.1: the reference's pick among the four outputs is the PyTorch model's own
    ``multimask_output=False`` answer, with its stability fallback taken (random weights:
    unstable) or not (threshold 0)."""
    from grounded_sam.predictor import SamPredictor

    sam2 = model("sam2")
    dec = sam2.sam_mask_decoder
    old = dec.dynamic_multimask_stability_thresh
    dec.dynamic_multimask_stability_thresh = thresh
    try:
        tp = SamPredictor(sam2)
        image = verify.verification_image()
        tp.set_image(image)
        picks = set()
        for prompt in default_prompts()[:4]:
            kw = prompt.pixels(image.shape[:2])
            (_, iou, low), ok = verify.single_mask_candidates(sam2, tp, kw, 2)
            _, own_iou, own_low = tp.predict(**kw, multimask_output=False, return_logits=True)
            assert rel_diff(own_low[0], low[ok[0]]) < 1e-5, prompt.name
            assert abs(own_iou[0] - iou[ok[0]]) < 1e-5
            picks.add(ok[0] == 0)
        assert picks == {thresh == 0.0}  # the fallback taken every time, or never
        assert sam2.dynamic_multimask_via_stability is True  # restored after each call
    finally:
        dec.dynamic_multimask_stability_thresh = old


def _failing_export(monkeypatch, error):
    def fail(model, folder, *args, **kwargs):
        (folder / "encoder.onnx").write_bytes(b"half")
        raise error(f"{folder / 'encoder.onnx'} broke")

    monkeypatch.setattr(export_module, "_export_files", fail)


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_failed_export_removes_the_folder_it_created(error, model, tmp_path, monkeypatch):
    """A failed or interrupted export removes the folders it created (parents included) and
    its error names the output folder, not the hidden temporary one."""
    _failing_export(monkeypatch, error)
    out = tmp_path / "new" / "deeper"
    with pytest.raises(error) as info:
        export_onnx(model("tiny_vit"), out, verify_outputs=False)
    assert list(tmp_path.iterdir()) == []
    if error is RuntimeError:
        assert str(info.value) == f"{out / 'encoder.onnx'} broke"


def test_failed_export_keeps_an_existing_folder(model, tmp_path, monkeypatch):
    _failing_export(monkeypatch, RuntimeError)
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(RuntimeError, match="mine/encoder.onnx broke"):
        export_onnx(model("tiny_vit"), out, verify_outputs=False)
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    assert (out / "notes.txt").read_text() == "mine"
