"""What the exported graphs hold: standard ONNX operators only, Meta's I/O names and shapes,
a dynamic number of points, a crop right for every image size."""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from grounded_sam.model import _fused
from grounded_sam.model.transforms import ResizeLongestSide
from grounded_sam.onnx import check_standard_ops, read_metadata
from grounded_sam.onnx.export import _python_floordiv
from grounded_sam.onnx.graphs import plain_mode, prepadded_size

STANDARD = ("", "ai.onnx")


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("tiny_vit", {}),
        ("mobile_sam", {}),
        ("sam2", {}),
        ("tiny_vit", {"single_mask": True}),
        ("sam2", {"single_mask": True}),
    ],
)
def test_graphs_hold_standard_onnx_operators_only(name, options, exported):
    """No com.microsoft or other private domain, no fused oneDNN (mkldnn) operator: our SAM
    core uses fused CPU operators at inference (available on this machine), never in an
    export."""
    result = exported(name, **options)
    for path in (result.encoder, result.decoder):
        model = onnx.load(str(path))
        domains = {n.domain for n in model.graph.node} | {o.domain for o in model.opset_import}
        assert domains <= set(STANDARD), (path.name, domains)
        assert not model.functions
        ops = {n.op_type for n in model.graph.node}
        assert not [op for op in ops if "mkldnn" in op.lower() or "pointwise" in op.lower()]
        assert check_standard_ops(path) == {(n.domain, n.op_type) for n in model.graph.node}
        assert [o.version for o in model.opset_import] == [17]
        onnx.checker.check_model(model)


def test_fused_cpu_operators_are_in_use_at_inference_here(model):
    """The check above is meaningful: the PyTorch path does run fused oneDNN operators."""
    if not _fused.fusion_available():
        pytest.skip("no oneDNN fused operators on this PyTorch build")
    from torch.profiler import ProfilerActivity, profile

    with torch.no_grad(), profile(activities=[ProfilerActivity.CPU]) as prof:
        model("tiny_vit").encode(torch.zeros(1, 3, 1024, 1024))
    names = {e.key for e in prof.key_averages()}
    assert any("pointwise" in n for n in names), sorted(names)


@pytest.mark.parametrize("name", ["tiny_vit", "sam2"])
def test_io_names_shapes_and_metadata(name, exported):
    result = exported(name)
    meta = read_metadata(result.directory)
    assert meta == result.metadata
    enc = ort.InferenceSession(str(result.encoder), providers=["CPUExecutionProvider"])
    dec = ort.InferenceSession(str(result.decoder), providers=["CPUExecutionProvider"])
    prompts = ["point_coords", "point_labels", "mask_input", "has_mask_input", "orig_im_size"]
    outputs = ["masks", "iou_predictions", "low_res_masks"]
    shapes = {i.name: i.shape for i in dec.get_inputs()}
    assert [o.name for o in dec.get_outputs()] == outputs
    assert [o.shape for o in dec.get_outputs()] == [
        [1, 4, "height", "width"],
        [1, 4],
        [1, 4, 256, 256],
    ]
    assert shapes["image_embeddings"] == [1, 256, 64, 64]
    assert shapes["point_coords"] == [1, "num_points", 2]
    assert shapes["point_labels"] == [1, "num_points"]
    assert shapes["mask_input"] == [1, 1, 256, 256]
    assert shapes["has_mask_input"] == [1]
    assert shapes["orig_im_size"] == [2]
    assert all(i.type == "tensor(float)" for i in dec.get_inputs())
    assert [i.shape for i in enc.get_inputs()] == [[1, 3, 1024, 1024]]
    if name == "sam2":
        assert [i.name for i in dec.get_inputs()] == [
            "image_embeddings",
            "high_res_feats_0",
            "high_res_feats_1",
            *prompts,
        ]
        assert shapes["high_res_feats_0"] == [1, 32, 256, 256]
        assert shapes["high_res_feats_1"] == [1, 64, 128, 128]
        assert [o.name for o in enc.get_outputs()] == [
            "high_res_feats_0",
            "high_res_feats_1",
            "image_embeddings",
        ]
        assert meta["preprocess"]["resize"] == "square"
        assert meta["single_mask_stability"] == {"delta": 0.05, "thresh": 0.98}
    else:  # exactly Meta's decoder inputs, in Meta's order
        assert [i.name for i in dec.get_inputs()] == ["image_embeddings", *prompts]
        assert [o.name for o in enc.get_outputs()] == ["image_embeddings"]
        assert enc.get_inputs()[0].name == "input_image"
        assert meta["preprocess"]["pixel_mean"] == [123.675, 116.28, 103.53]
    assert meta["decoder"]["masks"] == 4 and meta["opset"] == 17 and not meta["quantized"]


def test_crop_size_is_right_for_every_image_size(tmp_path):
    """The decoder's crop (``prepadded_size``), exported and run in onnxruntime, equals
    ``ResizeLongestSide.get_preprocess_shape`` (Meta's) on a sweep of sizes: all shapes up to
    64x64, then landscapes, portraits and panoramas up to 20k pixels."""

    class Crop(torch.nn.Module):
        def forward(self, orig_im_size):
            return prepadded_size(orig_im_size, 1024)

    path = tmp_path / "crop.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            Crop(), (torch.tensor([1500.0, 2250.0]),), str(path), dynamo=False, opset_version=17
        )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    rng = np.random.default_rng(0)
    sizes = [(h, w) for h in range(1, 65) for w in range(1, 65)]
    sizes += [tuple(s) for s in rng.integers(1, 20000, size=(3000, 2))]
    sizes += [(4503, 6144), (6144, 4503), (1, 20000), (20000, 1)]
    for h, w in sizes:
        got = session.run(None, {name: np.array([h, w], np.float32)})[0]
        assert tuple(got) == ResizeLongestSide.get_preprocess_shape(h, w, 1024), (h, w)


def test_python_floor_division_in_traced_graphs(tmp_path):
    """``-(-n // k)`` (round up, as Hiera pads to whole windows) and ``n // k`` on traced
    sizes follow Python's floor division in the exported graph."""

    class Div(torch.nn.Module):
        def forward(self, x):
            n = x.shape[1]
            return x.new_zeros(-(-n // 7)), x.new_zeros(n // 7), x.new_zeros((-n // 3) + n)

    path = tmp_path / "div.onnx"
    with _python_floordiv(17), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            Div(),
            (torch.zeros(1, 10),),
            str(path),
            dynamo=False,
            opset_version=17,
            input_names=["x"],
            dynamic_axes={"x": {1: "n"}},
        )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for n in range(1, 30):
        a, b, c = session.run(None, {"x": np.zeros((1, n), np.float32)})
        assert (len(a), len(b), len(c)) == (-(-n // 7), n // 7, (-n // 3) + n), n


def test_plain_mode_restores_the_model(model):
    m = model("tiny_vit")
    frozen = next(m.image_encoder.parameters())
    frozen.requires_grad_(False)
    before = [p.requires_grad for p in m.parameters()]
    m.train()
    with plain_mode(m):
        assert torch.is_grad_enabled() and not m.training
        assert not any(p.requires_grad for p in m.parameters())
    assert [p.requires_grad for p in m.parameters()] == before and m.training
    m.eval()
    frozen.requires_grad_(True)
