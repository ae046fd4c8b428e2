"""Our decoder against Meta's own exported decoder (``segment_anything.utils.onnx.SamOnnxModel``,
exported here as Meta's ``scripts/export_onnx_model.py`` does) from the same weights, on the
same inputs.

segment-anything 1.0 (the PyPI release) freezes the crop to the resized image at the example
input's aspect ratio (its issue #56; the script's example is 1500x2250, a 2:3 landscape): its
``masks`` are right for 2:3 images only. Its ``low_res_masks`` and ``iou_predictions`` are right
for every size; there ours must equal it. For ``masks``, ours must equal Meta's where Meta's
is right and Meta's own PyTorch post-processing (``Sam.postprocess_masks``) everywhere.
"""

from __future__ import annotations

import warnings

import numpy as np
import onnxruntime as ort
import pytest
import torch

from grounded_sam.onnx import OnnxSamPredictor, decoder_prompt
from grounded_sam.onnx.verify import agreement, default_prompts, rel_diff
from grounded_sam.testing.sam_refs import meta_mobile_sam, meta_tiny_vit_sam

# the weights of the conftest models: tiny_sam() is meta_tiny_vit_sam(seed=3), mobile_sam()
# loads a checkpoint of meta_mobile_sam(seed=5)
META = {"tiny_vit": lambda: meta_tiny_vit_sam(seed=3), "mobile_sam": lambda: meta_mobile_sam(5)}

# (H, W): the script's own example ratio (2:3) at two sizes, then sizes where 1.0 is wrong
RIGHT_IN_META = [(300, 450), (20, 30)]
WRONG_IN_META = [(600, 400), (512, 512), (300, 451)]


def export_meta_decoder(meta_sam, path, return_single_mask: bool = False):
    """Meta's decoder file, made as ``scripts/export_onnx_model.py`` makes it (opset 17)."""
    from segment_anything.utils.onnx import SamOnnxModel

    model = SamOnnxModel(meta_sam, return_single_mask=return_single_mask)
    dummy = {
        "image_embeddings": torch.randn(1, 256, 64, 64),
        "point_coords": torch.randint(low=0, high=1024, size=(1, 5, 2), dtype=torch.float),
        "point_labels": torch.randint(low=0, high=4, size=(1, 5), dtype=torch.float),
        "mask_input": torch.randn(1, 1, 256, 256, dtype=torch.float),
        "has_mask_input": torch.tensor([1], dtype=torch.float),
        "orig_im_size": torch.tensor([1500, 2250], dtype=torch.float),
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            tuple(dummy.values()),
            str(path),
            dynamo=False,
            export_params=True,
            opset_version=17,
            do_constant_folding=True,
            input_names=list(dummy),
            output_names=["masks", "iou_predictions", "low_res_masks"],
            dynamic_axes={"point_coords": {1: "num_points"}, "point_labels": {1: "num_points"}},
        )
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def meta(tmp_path_factory):
    root = tmp_path_factory.mktemp("meta_onnx")
    cache = {}

    def get(name, single_mask=False):
        key = (name, single_mask)
        if key not in cache:
            sam = META[name]()
            cache[key] = (
                sam,
                export_meta_decoder(sam, root / f"{name}_{single_mask}.onnx", single_mask),
            )
        return cache[key]

    return get


def _inputs(op: OnnxSamPredictor, emb: np.ndarray, prompt, size):
    """Meta's decoder inputs for ``prompt`` on an image of ``size`` with the embedding ``emb``
    (our own helpers build them as a consumer of Meta's file does: coordinates in the resized
    frame, box corners labelled 2 and 3, a padding point without a box). The decoder's
    arithmetic does not depend on which image the embedding came from."""
    from grounded_sam.onnx.files import preprocessed_size

    input_size = preprocessed_size(*size, op.model.metadata)
    kw = prompt.pixels(size)
    coords = kw.get("point_coords")
    if coords is not None:
        coords = op.model.transform_coords(coords, size, input_size)
    box = kw.get("box")
    if box is not None:
        box = op.model.transform_coords(box.reshape(2, 2), size, input_size).reshape(4)
    pc, pl = decoder_prompt("sam", coords, kw.get("point_labels"), box)
    return {
        "image_embeddings": emb,
        "point_coords": pc,
        "point_labels": pl,
        "mask_input": np.zeros((1, 1, 256, 256), np.float32),
        "has_mask_input": np.zeros(1, np.float32),
        "orig_im_size": np.array(size, np.float32),
    }, input_size


def _embedding(op: OnnxSamPredictor, photos) -> np.ndarray:
    op.set_image(photos("chelsea"))
    return op.get_image_embedding().numpy()


def _run(session, feed):
    names = ["masks", "iou_predictions", "low_res_masks"]
    return dict(zip(names, session.run(names, feed), strict=True))


@pytest.mark.parametrize("name", ["tiny_vit", "mobile_sam"])
def test_same_outputs_as_metas_decoder_where_it_is_right(name, meta, exported, photos):
    meta_sam, meta_session = meta(name)
    ours = OnnxSamPredictor(exported(name).directory)
    emb = _embedding(ours, photos)
    for size in RIGHT_IN_META + WRONG_IN_META:
        for prompt in default_prompts():
            if prompt.with_mask:
                continue
            feed, input_size = _inputs(ours, emb, prompt, size)
            m, o = _run(meta_session, feed), _run(ours.model.decoder, feed)
            what = f"{name} {size} {prompt.name}"
            assert o["masks"].shape == (1, 4, *size), what
            assert rel_diff(m["low_res_masks"], o["low_res_masks"]) < 1e-4, what
            assert np.abs(m["iou_predictions"] - o["iou_predictions"]).max() < 1e-4, what
            # the reference: Meta's PyTorch post-processing of the same low-res logits
            ref = meta_sam.postprocess_masks(
                torch.from_numpy(m["low_res_masks"]), input_size, size
            ).numpy()
            assert rel_diff(ref, o["masks"]) < 1e-4, what
            assert agreement(ref, o["masks"]) >= 0.999, what
            if size in RIGHT_IN_META:
                assert rel_diff(m["masks"], o["masks"]) < 1e-4, what
            else:  # segment-anything 1.0's fixed crop: stretched or cut masks
                assert m["masks"].shape == o["masks"].shape
                assert rel_diff(ref, m["masks"]) > 100 * max(rel_diff(ref, o["masks"]), 1e-6)


def test_metas_crop_bug_is_visible_on_a_portrait(meta, exported, photos):
    """On a portrait, Meta's 1.0 file crops a landscape window: a large share of pixels
    changes side; ours agrees with the PyTorch path."""
    meta_sam, meta_session = meta("tiny_vit")
    ours = OnnxSamPredictor(exported("tiny_vit").directory)
    size = (600, 400)
    feed, input_size = _inputs(ours, _embedding(ours, photos), default_prompts()[3], size)
    m, o = _run(meta_session, feed), _run(ours.model.decoder, feed)
    ref = meta_sam.postprocess_masks(torch.from_numpy(m["low_res_masks"]), input_size, size)
    assert agreement(ref.numpy(), m["masks"]) < 0.99
    assert agreement(ref.numpy(), o["masks"]) >= 0.999


@pytest.mark.parametrize("name", ["tiny_vit"])
def test_single_mask_matches_metas_return_single_mask(name, meta, exported, photos):
    """``--single-mask`` picks as Meta's ``return_single_mask``: the best multimask output for
    one click (two points with the padding one), the single-mask token for more points."""
    _, meta_session = meta(name, single_mask=True)
    ours = exported(name, single_mask=True)
    session = ort.InferenceSession(str(ours.decoder), providers=["CPUExecutionProvider"])
    reference = OnnxSamPredictor(exported(name).directory)
    emb = _embedding(reference, photos)
    size = (300, 450)
    for prompt in default_prompts():
        if prompt.with_mask:
            continue
        feed, _ = _inputs(reference, emb, prompt, size)
        m, o = _run(meta_session, feed), _run(session, feed)
        assert o["masks"].shape == (1, 1, *size)
        assert rel_diff(m["low_res_masks"], o["low_res_masks"]) < 1e-4, prompt.name
        assert rel_diff(m["masks"], o["masks"]) < 1e-4, prompt.name
        assert np.abs(m["iou_predictions"] - o["iou_predictions"]).max() < 1e-4
