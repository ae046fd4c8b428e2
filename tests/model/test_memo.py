"""Per-image memos of the prompt path (grounded_sam.model.memo): repeated clicks on one image
give bitwise the same masks as a fresh computation, and nothing stale survives a new image,
a changed embedding or changed weights."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from grounded_sam import SamPredictor
from grounded_sam.model.memo import clear_memos, memoized
from grounded_sam.testing.pipeline import SAM_FAMILIES, small_astronaut, small_chelsea, tiny_sam_of

PROMPTS = {
    "point": {"point_coords": np.array([[60.0, 70.0]]), "point_labels": np.array([1])},
    "point, one mask": {
        "point_coords": np.array([[60.0, 70.0]]),
        "point_labels": np.array([1]),
        "multimask_output": False,
    },
    "box": {"box": np.array([20.0, 30.0, 120.0, 140.0]), "multimask_output": False},
    "box + negative point": {
        "box": np.array([20.0, 30.0, 120.0, 140.0]),
        "point_coords": np.array([[50.0, 50.0]]),
        "point_labels": np.array([0]),
    },
}


def _fresh(pred: SamPredictor, **prompt):
    clear_memos(pred.model)
    return pred.predict(return_logits=True, **prompt)


def _equal(a, b) -> None:
    for x, y in zip(a, b, strict=True):
        assert np.array_equal(x, y)


@pytest.fixture(params=SAM_FAMILIES)
def predictor(request) -> SamPredictor:
    pred = SamPredictor(copy.deepcopy(tiny_sam_of(request.param)))
    pred.set_image(small_chelsea())
    return pred


@pytest.mark.parametrize("kind", list(PROMPTS))
def test_repeated_clicks_equal_fresh_computation(predictor, kind):
    prompt = PROMPTS[kind]
    expected = _fresh(predictor, **prompt)
    _equal(predictor.predict(return_logits=True, **prompt), expected)  # memos filled above
    _equal(predictor.predict(return_logits=True, **prompt), expected)


def test_mask_input_and_batches_equal_fresh_computation(predictor):
    _, _, low_res = predictor.predict(**PROMPTS["box"])
    refine = {**PROMPTS["point"], "mask_input": low_res[:1], "multimask_output": False}
    expected = _fresh(predictor, **refine)
    predictor.predict(**PROMPTS["point"])  # the no-mask memos, then a mask prompt
    _equal(predictor.predict(return_logits=True, **refine), expected)
    boxes = np.array([[10, 10, 90, 90], [40, 20, 150, 130], [0, 0, 159, 159]], dtype=float)
    clear_memos(predictor.model)
    expected = predictor.predict_boxes(boxes, return_logits=True)
    for _ in range(2):
        _equal(predictor.predict_boxes(boxes, return_logits=True), expected)


def test_layer0_projections_run_once_per_image(predictor):
    """The first transformer layer's image-side projections run on the first click of an image
    only, again after a new image, and on every call with autograd on."""
    layer = predictor.model.mask_decoder.transformer.layers[0]
    calls = []
    handle = layer.cross_attn_token_to_image.k_proj.register_forward_hook(
        lambda *a: calls.append(1)
    )
    try:
        clear_memos(predictor.model)
        for _ in range(3):
            predictor.predict(**PROMPTS["box"])
        assert len(calls) == 1
        predictor.set_image(small_astronaut())
        predictor.predict(**PROMPTS["box"])
        predictor.predict(**PROMPTS["box"])
        assert len(calls) == 2
        with torch.enable_grad():
            predictor.model.mask_decoder(  # noqa: SLF001 - the decoder itself, with autograd
                **_decoder_inputs(predictor)
            )
            predictor.model.mask_decoder(**_decoder_inputs(predictor))
        assert len(calls) == 4
    finally:
        handle.remove()


def _decoder_inputs(pred: SamPredictor) -> dict:
    model = pred.model
    box = torch.tensor([[20.0, 30.0, 400.0, 500.0]])
    if model.family == "sam2":
        corners = box.reshape(1, 2, 2)
        labels = torch.tensor([[2, 3]], dtype=torch.int32)
        sparse, dense = model.prompt_encoder(points=(corners, labels), boxes=None, masks=None)
        extra = {"high_res_features": tuple(pred.embedding.high_res)}
    else:
        sparse, dense = model.prompt_encoder(points=None, boxes=box, masks=None)
        extra = {}
    return {
        "image_embeddings": pred.features,
        "image_pe": model.prompt_encoder.get_dense_pe(),
        "sparse_prompt_embeddings": sparse,
        "dense_prompt_embeddings": dense,
        "multimask_output": False,
        **extra,
    }


def test_a_new_image_is_never_served_from_the_memo(predictor):
    predictor.predict(**PROMPTS["box"])
    predictor.set_image(small_astronaut())
    got = predictor.predict(return_logits=True, **PROMPTS["box"])
    other = SamPredictor(copy.deepcopy(predictor.model))
    other.set_image(small_astronaut())
    _equal(got, other.predict(return_logits=True, **PROMPTS["box"]))


def test_an_embedding_changed_in_place_misses(predictor):
    before = predictor.predict(return_logits=True, **PROMPTS["box"])
    predictor.features.mul_(0.5)  # in place: same object, new version
    if predictor.embedding.high_res:
        predictor.embedding.high_res[0].mul_(0.5)
    got = predictor.predict(return_logits=True, **PROMPTS["box"])
    assert not np.array_equal(got[0], before[0])
    _equal(got, _fresh(predictor, **PROMPTS["box"]))


@pytest.mark.parametrize(
    "weight",
    [
        "mask_decoder.transformer.layers.0.cross_attn_token_to_image.k_proj.weight",
        "mask_decoder.transformer.layers.0.cross_attn_image_to_token.q_proj.bias",
        "prompt_encoder.no_mask_embed.weight",
        "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix",
        "mask_decoder.output_upscaling.3.bias",
    ],
)
def test_changed_weights_miss(predictor, weight):
    """An optimizer step or load_state_dict changes weights in place: the next click uses them."""
    before = predictor.predict(return_logits=True, **PROMPTS["box"])
    module, _, rest = weight.partition(".")  # SAM 2.1 names them sam_mask_decoder, ...
    owner = getattr(predictor.model, module)
    tensors = dict(owner.named_parameters()) | dict(owner.named_buffers())
    with torch.no_grad():
        tensors[rest].add_(0.25)
    got = predictor.predict(return_logits=True, **PROMPTS["box"])
    assert not np.array_equal(got[0], before[0])
    _equal(got, _fresh(predictor, **PROMPTS["box"]))


def test_swapped_data_misses(predictor):
    before = predictor.predict(return_logits=True, **PROMPTS["box"])
    param = predictor.model.prompt_encoder.no_mask_embed.weight
    param.data = param.data + 0.25  # same object, same version, new storage
    got = predictor.predict(return_logits=True, **PROMPTS["box"])
    assert not np.array_equal(got[0], before[0])
    _equal(got, _fresh(predictor, **PROMPTS["box"]))


def test_memoized_rules():
    owner = torch.nn.Linear(2, 2)
    x = torch.ones(3)
    calls = []

    def compute():
        calls.append(1)
        return x * 2

    with torch.no_grad():
        a = memoized(owner, "v", (x,), compute)
        assert memoized(owner, "v", (x,), compute) is a and len(calls) == 1
        assert memoized(owner, "v", (x[:2],), compute) is not a  # another view: a miss
        memoized(owner, "v", (x.clone(),), compute)  # another tensor, equal values: a miss
        assert len(calls) == 3
        with torch.inference_mode():
            y = torch.ones(3)
        memoized(owner, "w", (y,), compute)
        memoized(owner, "w", (y,), compute)  # inference tensors have no version: never kept
        assert len(calls) == 5
        with torch.autocast("cpu", dtype=torch.bfloat16):
            memoized(owner, "u", (x,), compute)
            memoized(owner, "u", (x,), compute)
        assert len(calls) == 7
    memoized(owner, "v", (x,), compute)  # autograd on: computed
    assert len(calls) == 8


@pytest.mark.parametrize("family", SAM_FAMILIES)
def test_set_image_prepares_the_first_click(family):
    """set_image computes the image-only part of decoding; the first click then runs none of
    it and gives bitwise what a fresh computation gives."""
    pred = SamPredictor(copy.deepcopy(tiny_sam_of(family)))
    layer = pred.model.mask_decoder.transformer.layers[0]
    calls = []
    handle = layer.cross_attn_token_to_image.k_proj.register_forward_hook(
        lambda *a: calls.append(1)
    )
    try:
        pred.set_image(small_chelsea())
        assert len(calls) == 1  # prepared by set_image
        got = pred.predict(return_logits=True, **PROMPTS["box"])
        assert len(calls) == 1  # the first click did not project the image tokens again
        pred.set_embedding(pred.get_embedding())  # the app's per-click call: a memo hit
        assert len(calls) == 1
    finally:
        handle.remove()
    _equal(got, _fresh(pred, **PROMPTS["box"]))


def test_lower_precision_modes_prepare_nothing():
    from grounded_sam.model.precision import apply_precision

    model = apply_precision(copy.deepcopy(tiny_sam_of("sam")), "bf16")
    calls = []
    layer = model.mask_decoder.transformer.layers[0]
    layer.cross_attn_token_to_image.k_proj.register_forward_hook(lambda *a: calls.append(1))
    pred = SamPredictor(model)
    pred.set_image(small_chelsea())
    assert calls == []  # under autocast the memos do not apply: nothing computed for them
    pred.predict(**PROMPTS["box"])
    pred.predict(**PROMPTS["box"])
    assert len(calls) == 2
