"""FastGroundingDino: same logits, boxes, scores and labels as transformers' Grounding DINO.

Tiny random models (every float parameter perturbed), real photos, the processor's inputs.
Two model families:

- ``make_grounding_dino_dir`` (the detector tests' model, saved and reloaded as the detector
  loads it; its toy vocabulary has none of BERT's phrase-closing ids, so every token is its own
  phrase);
- :func:`_bert_like` built here: the toy words placed at BERT's ids for ``[CLS]``, ``[SEP]``,
  ``.`` and ``?``, so the text self-attention sees real phrase blocks; two encoder layers,
  different encoder / decoder heads and points, and config variants (two-stage off, GELU).

Tolerances (the issue's): post-processed boxes within 1e-3 relative (plus 1e-3 px), scores
within 1e-4, labels equal, at the detector's default thresholds (box 0.3, text 0.25).
"""

from __future__ import annotations

import inspect
from pathlib import Path

import numpy as np
import pytest
import torch

from grounded_sam.detectors.gdino_fast import (
    FastGroundingDino,
    HFGroundingDinoRunner,
    UnsupportedGroundingDinoError,
    fast_model,
    phrase_attention_mask,
    unsupported_features,
)
from grounded_sam.testing.detectors import GDINO_WORDS, make_grounding_dino_dir, perturb_
from grounded_sam.testing.pipeline import CallCounter

BOX_THRESHOLD, TEXT_THRESHOLD = 0.3, 0.25


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models: every operator is microseconds of work, and with two threads on a shared
    machine each parallel region waits for the partner thread (measured 0.02 s per detection
    on one thread, 0.3-1.4 s on two under load)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ----------------------------------------------------------------------------- builders
def _tokenizer(words: list[str], path: Path, max_len: int):
    """A BERT WordPiece tokenizer whose specials and '.'/'?' sit at bert-base-uncased's ids."""
    from transformers import BertTokenizerFast

    vocab = [f"[unused{i}]" for i in range(1100)]
    vocab[0], vocab[100], vocab[101], vocab[102], vocab[103] = (
        "[PAD]",
        "[UNK]",
        "[CLS]",
        "[SEP]",
        "[MASK]",
    )
    vocab[1012], vocab[1029] = ".", "?"
    rest = [w for w in words if w not in (".", "?")]
    for i, word in enumerate(rest):
        vocab[200 + i] = word
    vocab_file = path / "vocab.txt"
    vocab_file.write_text("\n".join(vocab) + "\n")
    if "vocab" in inspect.signature(BertTokenizerFast.__init__).parameters:  # transformers 5
        tokenizer = BertTokenizerFast(vocab=str(vocab_file), do_lower_case=True)
    else:  # transformers 4
        tokenizer = BertTokenizerFast(vocab_file=str(vocab_file), do_lower_case=True)
    tokenizer.model_max_length = max_len
    assert tokenizer.convert_tokens_to_ids(".") == 1012
    return tokenizer, len(vocab)


def _bert_like(path: Path, *, seed: int = 0, max_text_len: int = 64, **overrides):
    """(processor, model): tiny random Grounding DINO with BERT's phrase-closing token ids."""
    from transformers import (
        BertConfig,
        GroundingDinoConfig,
        GroundingDinoForObjectDetection,
        GroundingDinoImageProcessor,
        GroundingDinoProcessor,
        SwinConfig,
    )

    path.mkdir(parents=True, exist_ok=True)
    tokenizer, vocab_size = _tokenizer(GDINO_WORDS, path, max_text_len)
    backbone = SwinConfig(
        image_size=64,
        patch_size=4,
        embed_dim=8,
        depths=[1, 1, 2, 1],
        num_heads=[1, 1, 2, 2],
        window_size=4,
        out_features=["stage2", "stage3", "stage4"],
    )
    text = BertConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=37,
        max_position_embeddings=max(max_text_len, 64),
    )
    kw = dict(
        backbone_config=backbone,
        text_config=text,
        d_model=32,
        num_queries=40,
        encoder_layers=2,
        decoder_layers=2,
        encoder_ffn_dim=48,
        decoder_ffn_dim=40,
        encoder_attention_heads=4,
        decoder_attention_heads=2,
        num_feature_levels=4,
        encoder_n_points=2,
        decoder_n_points=3,
        max_text_len=max_text_len,
    )
    kw.update(overrides)
    torch.manual_seed(seed)
    model = GroundingDinoForObjectDetection(GroundingDinoConfig(**kw)).eval()
    perturb_(model, seed=seed)
    with torch.no_grad():
        # Token logits are (normalised query) . (text token). Random text tokens give every
        # query some token above 0.3; a shared text direction (the last text LayerNorm's bias)
        # and bias-free query features make a query's logits agree in sign, so the box
        # threshold keeps 70-85% of the queries.
        text_norm = model.model.encoder.layers[-1].text_enhancer_layer.layer_norm_after
        text_norm.weight.mul_(0.1)
        gen = torch.Generator().manual_seed(seed + 1)
        text_norm.bias.copy_(2 * torch.randn(text_norm.bias.shape, generator=gen))
        model.model.decoder.layer_norm.weight.fill_(1.0)
        model.model.decoder.layer_norm.bias.zero_()
    image_processor = GroundingDinoImageProcessor(size={"shortest_edge": 96, "longest_edge": 160})
    return GroundingDinoProcessor(image_processor=image_processor, tokenizer=tokenizer), model


@pytest.fixture(scope="module")
def photos() -> dict[str, np.ndarray]:
    from skimage import data

    return {"chelsea": data.chelsea(), "astronaut": data.astronaut(), "coffee": data.coffee()}


@pytest.fixture(scope="module")
def saved_tiny(tmp_path_factory):
    """(processor, model) loaded from ``make_grounding_dino_dir``, as the detector loads it."""
    from transformers import AutoModelForZeroShotObjectDetection, AutoProcessor

    path = make_grounding_dino_dir(tmp_path_factory.mktemp("gdino_fast_tiny"))
    return (
        AutoProcessor.from_pretrained(path),
        AutoModelForZeroShotObjectDetection.from_pretrained(path).eval(),
    )


@pytest.fixture(scope="module")
def bert_like(tmp_path_factory):
    return _bert_like(tmp_path_factory.mktemp("gdino_fast_bert"))


# ----------------------------------------------------------------------------- comparisons
def _post(processor, out, input_ids, size):
    params = inspect.signature(processor.post_process_grounded_object_detection).parameters
    kw = "threshold" if "threshold" in params else "box_threshold"
    return processor.post_process_grounded_object_detection(
        out,
        input_ids,
        **{kw: BOX_THRESHOLD},
        text_threshold=TEXT_THRESHOLD,
        target_sizes=[size] * len(input_ids),
    )


def _assert_same_raw(ours, ref) -> None:
    """Logits: -inf at the same places, finite ones close; boxes close."""
    finite = torch.isfinite(ref.logits)
    assert torch.equal(torch.isfinite(ours.logits), finite)
    torch.testing.assert_close(ours.logits[finite], ref.logits[finite], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(ours.pred_boxes, ref.pred_boxes, rtol=1e-4, atol=1e-5)


def _assert_same_detections(processor, ours, ref, input_ids, size) -> int:
    """The issue's tolerances on post-processed detections; returns how many were kept."""
    kept = 0
    for a, b in zip(
        _post(processor, ours, input_ids, size), _post(processor, ref, input_ids, size), strict=True
    ):
        assert a["boxes"].shape == b["boxes"].shape
        torch.testing.assert_close(a["boxes"], b["boxes"], rtol=1e-3, atol=1e-3)
        torch.testing.assert_close(a["scores"], b["scores"], rtol=0, atol=1e-4)
        assert list(a["text_labels"]) == list(b["text_labels"])
        kept += len(b["scores"])
    return kept


def _run_both(processor, model, images, prompt):
    inputs = processor(images=images, text=prompt, return_tensors="pt")
    fast = FastGroundingDino.from_hf(model)
    with torch.inference_mode():
        ref = model(**inputs)
        ours = fast(**inputs)
    return inputs, ours, ref


# ----------------------------------------------------------------------------- parity
@pytest.mark.parametrize("photo", ["chelsea", "astronaut", "coffee"])
@pytest.mark.parametrize(
    "prompt", ["a cat.", "a striped dog. green grass. the sky.", "cat? head. ear? tail. a"]
)
def test_parity_on_photos(bert_like, photos, photo, prompt) -> None:
    processor, model = bert_like
    image = photos[photo]
    inputs, ours, ref = _run_both(processor, model, image, prompt)
    _assert_same_raw(ours, ref)
    kept = _assert_same_detections(processor, ours, ref, inputs["input_ids"], image.shape[:2])
    # The default box threshold bites: some queries kept, some dropped.
    assert 0 < kept < ref.logits.shape[1]


def test_parity_saved_model_as_the_detector_loads_it(saved_tiny, photos) -> None:
    processor, model = saved_tiny
    image = photos["coffee"]
    inputs, ours, ref = _run_both(processor, model, image, "a cat. a striped dog. green grass.")
    _assert_same_raw(ours, ref)
    assert _assert_same_detections(processor, ours, ref, inputs["input_ids"], image.shape[:2])


def test_long_prompt_near_the_token_limit(bert_like, photos) -> None:
    """60 tokens: the fusion reformulation at heads*T far above the short-prompt case."""
    processor, model = bert_like
    words = [w for w in GDINO_WORDS if w.isalpha()]
    prompt = " ".join(f"{a} {b}." for a, b in zip(words[::2], words[1::2], strict=False))[:170]
    inputs, ours, ref = _run_both(processor, model, photos["astronaut"], prompt)
    assert 40 <= inputs["input_ids"].shape[1] <= 64
    _assert_same_raw(ours, ref)
    _assert_same_detections(processor, ours, ref, inputs["input_ids"], (512, 512))


def test_prompt_chunks_of_a_short_text_limit(tmp_path_factory, photos) -> None:
    """A 12-token model: the detector splits long prompts into chunks; each chunk matches."""
    from transformers import AutoModelForZeroShotObjectDetection

    from grounded_sam.detectors.grounding_dino import GroundingDinoDetector

    path = make_grounding_dino_dir(tmp_path_factory.mktemp("gdino_fast_short"), max_text_len=12)
    det = GroundingDinoDetector(path, device="cpu")
    model = AutoModelForZeroShotObjectDetection.from_pretrained(path).eval()
    chunks = det.chunk_phrases(["a cat", "a striped dog", "green grass", "the sky", "a red car"])
    assert len(chunks) > 1
    fast = FastGroundingDino.from_hf(model)
    for chunk in chunks:
        inputs = det.processor(
            images=photos["chelsea"], text=det._prompt(chunk)[0], return_tensors="pt"
        )
        with torch.inference_mode():
            ref, ours = model(**inputs), fast(**inputs)
        _assert_same_raw(ours, ref)
    too_long = torch.ones((1, 13), dtype=torch.long)
    with pytest.raises(ValueError, match="max_text_len=12"):
        fast.encode_text(too_long)


@pytest.mark.parametrize(
    "variant",
    [{"two_stage": False}, {"activation_function": "gelu"}, {"num_feature_levels": 3}],
    ids=["one-stage", "gelu", "3-levels"],
)
def test_config_variants(tmp_path, photos, monkeypatch, variant) -> None:
    if not variant.get("two_stage", True):
        # transformers 5.x's weight init reads a bias the one-stage reference-point embedding
        # (an nn.Embedding) does not have, and stops there. Skipping the init altogether left
        # the weights as uninitialised memory, NaN on some runs (a CI run failed so); so every
        # module is initialised as transformers does, and the one that fails is finished here.
        from transformers.models.grounding_dino import modeling_grounding_dino as mgd

        original = mgd.GroundingDinoPreTrainedModel._init_weights

        def init_weights(self, module) -> None:
            try:
                original(self, module)
            except AttributeError:  # after reference_points.weight: the rest of that branch
                if hasattr(module, "level_embed"):
                    torch.nn.init.normal_(module.level_embed)

        monkeypatch.setattr(mgd.GroundingDinoPreTrainedModel, "_init_weights", init_weights)
    processor, model = _bert_like(tmp_path, seed=3, **variant)
    assert unsupported_features(model) == []
    image = photos["chelsea"]
    inputs, ours, ref = _run_both(processor, model, image, "a cat. green grass.")
    _assert_same_raw(ours, ref)
    _assert_same_detections(processor, ours, ref, inputs["input_ids"], image.shape[:2])


# ----------------------------------------------------------------------------- batches, text reuse
def test_batch_of_differently_sized_images_equals_one_by_one(bert_like, photos) -> None:
    """The processor pads the batch (pixel_mask 0 on padding); each image's row equals a
    batch-1 run on its own padded slice, and transformers' batched run."""
    processor, model = bert_like
    images = [photos["chelsea"], photos["astronaut"], photos["coffee"]]
    prompt = ["a cat. green grass."] * 3
    inputs, ours, ref = _run_both(processor, model, images, prompt)
    assert not bool(inputs["pixel_mask"].all())  # real padding
    _assert_same_raw(ours, ref)
    fast = FastGroundingDino.from_hf(model)
    text = fast.encode_text(inputs["input_ids"][:1], inputs["attention_mask"][:1])
    with torch.inference_mode():
        shared = fast(inputs["pixel_values"], pixel_mask=inputs["pixel_mask"], text_features=text)
        for i in range(3):
            one = fast(
                inputs["pixel_values"][i : i + 1],
                pixel_mask=inputs["pixel_mask"][i : i + 1],
                text_features=text,
            )
            torch.testing.assert_close(ours.logits[i : i + 1], one.logits, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(
                ours.pred_boxes[i : i + 1], one.pred_boxes, rtol=1e-5, atol=1e-6
            )
    torch.testing.assert_close(shared.logits, ours.logits, rtol=1e-5, atol=1e-5)


def test_same_size_batch_equals_unpadded_one_by_one(bert_like, photos) -> None:
    processor, model = bert_like
    fast = FastGroundingDino.from_hf(model)
    frames = [photos["astronaut"], np.ascontiguousarray(photos["astronaut"][::-1])]
    inputs = processor(images=frames, text=["a cat."] * 2, return_tensors="pt")
    assert bool(inputs["pixel_mask"].all())
    with torch.inference_mode():
        both = fast(**inputs)
        for i, frame in enumerate(frames):
            alone = fast(**processor(images=frame, text="a cat.", return_tensors="pt"))
            torch.testing.assert_close(both.logits[i : i + 1], alone.logits, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(both.pred_boxes[i : i + 1], alone.pred_boxes)


def test_reused_text_features_equal_fresh_ones(bert_like, photos) -> None:
    processor, model = bert_like
    fast = FastGroundingDino.from_hf(model)
    tokens = processor.tokenizer("a cat. a striped dog.", return_tensors="pt")
    text = fast.encode_text(tokens["input_ids"], tokens["attention_mask"], tokens["token_type_ids"])
    for name in ("chelsea", "coffee"):
        inputs = processor(images=photos[name], text="a cat. a striped dog.", return_tensors="pt")
        with torch.inference_mode():
            fresh = fast(**inputs)
            cached = fast(**inputs, text_features=text)
            pixels_only = fast(inputs["pixel_values"], text_features=text)
        torch.testing.assert_close(cached.logits, fresh.logits, rtol=0, atol=0)
        torch.testing.assert_close(pixels_only.pred_boxes, fresh.pred_boxes, rtol=0, atol=0)
    other = processor.tokenizer("a dog.", return_tensors="pt")["input_ids"]
    with pytest.raises(ValueError, match="encode_text"):
        fast(inputs["pixel_values"], input_ids=other, text_features=text)


def test_phrase_attention_mask_matches_transformers() -> None:
    from transformers.models.grounding_dino import modeling_grounding_dino as mgd

    special = torch.tensor([101, 102, 1012, 1029])
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(200, 260, (6, 17), generator=gen)
    ids[:, 0] = 101
    ids[torch.rand(ids.shape, generator=gen) < 0.25] = 1012
    ids[1, 5] = 1029
    ids[:, -1] = 102
    ids[2, 9:] = 0  # a padded row: [SEP] early, then [PAD]
    ids[2, 8] = 102
    params = inspect.signature(mgd.generate_masks_with_special_tokens_and_transfer_map).parameters
    args = (ids, special) if len(params) > 1 else (ids,)
    ref_mask, ref_pos = mgd.generate_masks_with_special_tokens_and_transfer_map(*args)
    mask, pos = phrase_attention_mask(ids, special)
    assert torch.equal(mask, ref_mask.reshape(mask.shape))
    assert torch.equal(pos, ref_pos)


# ----------------------------------------------------------------------------- precision modes
def _box_recall(ref_boxes: torch.Tensor, boxes: torch.Tensor, iou: float = 0.9) -> float:
    """Share of reference boxes matched one-to-one (best pair first) at IoU >= ``iou``."""
    from torchvision.ops import box_iou

    if len(ref_boxes) == 0:
        return 1.0
    overlap = box_iou(ref_boxes, boxes) if len(boxes) else torch.zeros((len(ref_boxes), 1))
    matched = 0
    while bool(overlap.max() >= iou):
        i, j = divmod(int(overlap.argmax()), overlap.shape[1])
        overlap[i, :], overlap[:, j] = -1, -1
        matched += 1
    return matched / len(ref_boxes)


@pytest.mark.parametrize("precision", ["int8", "bf16"])
def test_lower_precision_keeps_the_boxes(bert_like, photos, precision) -> None:
    processor, model = bert_like
    fp32 = FastGroundingDino.from_hf(model)
    low = FastGroundingDino.from_hf(model, precision=precision)
    assert low.precision == precision
    recalls, changed = [], False
    for image in photos.values():
        inputs = processor(images=image, text="a cat. green grass.", return_tensors="pt")
        with torch.inference_mode():
            a, b = fp32(**inputs), low(**inputs)
        assert b.logits.dtype == torch.float32
        changed = changed or not torch.equal(a.logits, b.logits)
        ra, rb = (_post(processor, o, inputs["input_ids"], image.shape[:2])[0] for o in (a, b))
        recalls.append(_box_recall(ra["boxes"], rb["boxes"]))
    # Random weights make the two-stage proposal ranking near-tied (flat image regions give
    # near-identical tokens), so any perturbation reshuffles part of the proposals; measured
    # 0.77-0.91 per photo on these tiny models (transformers 4.50 and 5.24 initialise them
    # differently). benchmarks/grounding_dino.py reports the full-size figures next to a
    # pixel-noise control.
    assert np.mean(recalls) >= 0.7, recalls
    assert changed, f"{precision} gave exactly the fp32 logits: the mode did not apply"
    if precision == "int8":  # a quantised copy: the transformers model is left as it was
        assert type(model.model.encoder.layers[0].deformable_layer.fc1) is torch.nn.Linear


def test_precision_errors(bert_like) -> None:
    _, model = bert_like
    with pytest.raises(ValueError, match="unknown precision"):
        FastGroundingDino.from_hf(model, precision="fp8")


# ----------------------------------------------------------------------------- fallback
def test_unsupported_config_raises_or_falls_back(tmp_path, photos) -> None:
    processor, model = _bert_like(tmp_path, seed=5, position_embedding_type="learned")
    assert any("position_embedding_type" in p for p in unsupported_features(model))
    with pytest.raises(UnsupportedGroundingDinoError, match="learned"):
        FastGroundingDino.from_hf(model)
    with pytest.raises(UnsupportedGroundingDinoError):
        fast_model(model, fallback=False)
    runner = fast_model(model)
    assert isinstance(runner, HFGroundingDinoRunner)
    inputs = processor(images=photos["chelsea"], text="a cat.", return_tensors="pt")
    text = runner.encode_text(inputs["input_ids"], inputs["attention_mask"])
    with torch.inference_mode():
        ref = model(**inputs)
        out = runner(inputs["pixel_values"], pixel_mask=inputs["pixel_mask"], text_features=text)
    torch.testing.assert_close(out.logits, ref.logits)
    torch.testing.assert_close(out.pred_boxes, ref.pred_boxes)


def test_supported_model_gets_the_fast_path(bert_like, saved_tiny) -> None:
    for _, model in (bert_like, saved_tiny):
        fast = fast_model(model)
        assert isinstance(fast, FastGroundingDino)
        assert fast.swin is not None  # our Swin forward (transformers 4.x and 5.x layouts)


# ----------------------------------------------------------------------------- the detector
PHRASES = ["a cat", "a striped dog", "green grass"]
LONG = ["a cat", "a striped dog", "green grass", "the sky", "a red car", "the blue tree"]


def _detector(processor, model, **kw):
    from grounded_sam.detectors.grounding_dino import GroundingDinoDetector

    kw.setdefault("box_threshold", BOX_THRESHOLD)
    return GroundingDinoDetector.from_transformers(model, processor, device="cpu", **kw)


def _reference(processor, model, image: np.ndarray, phrases: list[str]):
    """transformers alone: processor -> GroundingDinoForObjectDetection -> post-processing at
    the default thresholds; labels: the phrase whose own tokens score highest (computed here
    from the token positions of each phrase, tokenised piece by piece)."""
    prompt = ". ".join(p.lower() for p in phrases) + "."
    inputs = processor(images=image, text=prompt, return_tensors="pt")
    with torch.inference_mode():
        out = model(**inputs)
    res = _post(processor, out, inputs["input_ids"], image.shape[:2])[0]
    tok = processor.tokenizer
    pos, spans = 1, []
    for p in phrases:
        n = len(tok(p.lower(), add_special_tokens=False)["input_ids"])
        spans.append(list(range(pos, pos + n)))
        pos += n + 1  # "."
    probs = out.logits[0].sigmoid()
    kept = probs[probs.max(-1).values > BOX_THRESHOLD]
    labels = [phrases[int(np.argmax([float(row[s].max()) for s in spans]))] for row in kept]
    return res["boxes"].numpy(), res["scores"].numpy(), labels


def _assert_detections_match(dets, boxes, scores, labels) -> None:
    assert len(dets) == len(boxes)
    np.testing.assert_allclose(dets.boxes, boxes, rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(dets.scores, scores, rtol=0, atol=1e-4)
    assert dets.labels == labels


@pytest.fixture(scope="module")
def saved_short(tmp_path_factory):
    """(processor, model) of ``make_grounding_dino_dir`` with a 12-token text encoder."""
    from transformers import AutoModelForZeroShotObjectDetection, AutoProcessor

    path = make_grounding_dino_dir(tmp_path_factory.mktemp("gdino_fast_short12"), max_text_len=12)
    return (
        AutoProcessor.from_pretrained(path),
        AutoModelForZeroShotObjectDetection.from_pretrained(path).eval(),
    )


@pytest.fixture(scope="module")
def bert_like_short(tmp_path_factory):
    """BERT-like tiny model whose tokenizer takes 12 tokens: long prompts need chunks."""
    return _bert_like(tmp_path_factory.mktemp("gdino_fast_bert12"), seed=2, max_text_len=12)


@pytest.mark.parametrize("family", ["saved_tiny", "bert_like"])
@pytest.mark.parametrize("photo", ["chelsea", "astronaut"])
def test_detector_matches_transformers(request, photos, family, photo) -> None:
    """The detector (FastGroundingDino inside) against transformers' model + processor."""
    processor, model = request.getfixturevalue(family)
    det = _detector(processor, model)
    assert det.fast and isinstance(det.runner, FastGroundingDino)
    dets = det.detect(photos[photo], "A cat. a striped dog. green grass.")
    boxes, scores, labels = _reference(processor, model, photos[photo], PHRASES)
    assert 0 < len(boxes)
    # Labels keep the case as written; the model sees the caption lower-cased.
    _assert_detections_match(dets, boxes, scores, ["A cat" if x == "a cat" else x for x in labels])


@pytest.mark.parametrize("family", ["saved_short", "bert_like_short"])
def test_detector_chunked_prompt_matches_transformers(request, photos, family) -> None:
    """A prompt longer than the 12-token text encoder: the detector's chunks, each checked
    against transformers on that chunk's caption, concatenated in chunk order."""
    processor, model = request.getfixturevalue(family)
    det = _detector(processor, model)
    chunks = det.chunk_phrases(LONG)
    assert len(chunks) >= 2 and [p for c in chunks for p in c] == LONG
    for photo in ("chelsea", "astronaut"):
        dets = det.detect(photos[photo], LONG)
        refs = [_reference(processor, model, photos[photo], chunk) for chunk in chunks]
        _assert_detections_match(
            dets,
            np.concatenate([r[0] for r in refs]),
            np.concatenate([r[1] for r in refs]),
            [lbl for r in refs for lbl in r[2]],
        )
        assert len({lbl for r in refs for lbl in r[2]}) >= 2  # labels from several chunks


def test_text_features_once_per_prompt(bert_like, photos) -> None:
    """BERT runs once per prompt (cache keyed by the phrases' text, not by object); results
    equal those of a detector with nothing cached."""
    processor, model = bert_like
    det = _detector(processor, model)
    images = [photos["chelsea"], photos["astronaut"], photos["coffee"]]
    with CallCounter(det.runner.text_backbone, "input_ids") as bert:
        first = [det.detect(im, "a cat. green grass.") for im in images]
        again = det.detect_batch(images, ["a cat", "green grass"])  # a new, equal list
        assert bert.calls == 1 and det.text_encodings == 1
        det.detect(images[0], "a cat. a striped dog.")
        det.detect(images[1], ["A cat", "a striped dog"])  # same caption once lower-cased
        assert bert.calls == 2
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a.boxes, b.boxes)
        assert a.labels == b.labels
    fresh = _detector(processor, model).detect(images[2], "a cat. green grass.")
    np.testing.assert_array_equal(first[2].boxes, fresh.boxes)
    np.testing.assert_array_equal(first[2].scores, fresh.scores)


def test_detect_batch_equals_one_by_one(bert_like, photos) -> None:
    """Default (CPU: one image per pass) equal bit for bit; same-size images forced into one
    pass (as on GPUs) equal to float rounding; different sizes never share a pass."""
    processor, model = bert_like
    det = _detector(processor, model)
    mirrored = np.ascontiguousarray(photos["chelsea"][:, ::-1])
    images = [photos["chelsea"], photos["astronaut"], mirrored, photos["coffee"]]
    single = [det.detect(im, PHRASES) for im in images]
    assert det.max_batch == 1
    for a, b in zip(det.detect_batch(images, PHRASES), single, strict=True):
        np.testing.assert_array_equal(a.boxes, b.boxes)
        np.testing.assert_array_equal(a.scores, b.scores)
        assert a.labels == b.labels
    det.max_batch = 4
    with CallCounter(det.runner) as passes:
        batched = det.detect_batch(images, PHRASES)
    # The processor resizes chelsea, its mirror image and coffee (all 2:3) to one size.
    assert passes.batch_sizes == [3, 1]
    for a, b in zip(batched, single, strict=True):
        assert len(a) == len(b) > 0
        np.testing.assert_allclose(a.boxes, b.boxes, rtol=1e-5, atol=1e-3)
        np.testing.assert_allclose(a.scores, b.scores, rtol=0, atol=1e-5)
        assert a.labels == b.labels


def test_detector_precision_option(bert_like, photos) -> None:
    import argparse

    from grounded_sam.cli._common import add_detector_args, detector_kwargs
    from grounded_sam.detectors import detector_options

    processor, model = bert_like
    opt = {o.name: o for o in detector_options("grounding-dino")}["detector_precision"]
    assert opt.default == "fp32" and opt.cli_flag == "--detector-precision"
    parser = argparse.ArgumentParser()
    add_detector_args(parser)
    args = parser.parse_args(["--detector-precision", "int8"])
    assert detector_kwargs(args) == {"detector_precision": "int8"}
    args = parser.parse_args(["-D", "detector_precision=int8"])
    assert detector_kwargs(args) == {"detector_precision": "int8"}
    fp32 = _detector(processor, model)
    int8 = _detector(processor, model, precision="int8")
    assert int8.runner.precision == "int8" and "precision='int8'" in repr(int8)
    recalls = []
    for photo in ("chelsea", "astronaut", "coffee"):
        a, b = fp32.detect(photos[photo], PHRASES), int8.detect(photos[photo], PHRASES)
        recalls.append(_box_recall(torch.from_numpy(a.boxes), torch.from_numpy(b.boxes)))
    assert np.mean(recalls) >= 0.7, recalls  # see test_lower_precision_keeps_the_boxes
    assert type(model.model.encoder.layers[0].deformable_layer.fc1) is torch.nn.Linear
    with pytest.raises(ValueError, match="unknown precision 'fp8'"):
        _detector(processor, model, precision="fp8")
    with pytest.raises(ValueError, match="disagree"):
        _detector(processor, model, precision="bf16", detector_precision="int8")
    assert _detector(processor, model, detector_precision="int8").runner.precision == "int8"


def test_segment_batch_runs_the_detector_batch_with_text_once() -> None:
    """GroundedSAM.segment_batch with the grounding-dino detector: one detect_batch call, the
    prompt encoded once for every image, and the same boxes as one-by-one segment()."""
    from grounded_sam import GroundedSAM
    from grounded_sam.testing.pipeline import (
        TEXT,
        gdino_dir,
        gdino_threshold,
        small_astronaut,
        small_chelsea,
        tiny_sam,
    )

    gs = GroundedSAM(
        "grounding-dino", tiny_sam(), model=gdino_dir(), box_threshold=gdino_threshold(2)
    )
    images = [small_chelsea(), small_astronaut(), small_chelsea()[:, ::-1]]
    with CallCounter(gs.detector.runner.text_backbone, "input_ids") as bert:
        results = gs.segment_batch(images, TEXT)
    assert bert.calls == 1 and gs.detector.text_encodings == 1
    assert sum(len(r) for r in results) > 0
    for image, r in zip(images, results, strict=True):
        one = gs.segment(image, TEXT)
        np.testing.assert_array_equal(one.boxes, r.boxes)
        assert one.labels == r.labels
    assert gs.detector.text_encodings == 1


def test_detector_precision_next_to_the_sam_precision(tmp_path, capsys) -> None:
    """--detector-precision travels with --precision (the SAM's) through the CLI and
    GroundedSAM; a bad value is one error line, exit 2."""
    from grounded_sam import GroundedSAM
    from grounded_sam.testing.pipeline import (
        TEXT,
        error_lines,
        gdino_dir,
        gdino_threshold,
        run_cli,
        sam_args,
        small_chelsea,
        tiny_sam,
        write_png,
    )

    gs = GroundedSAM(
        "grounding-dino", tiny_sam(), model=gdino_dir(), detector_precision="int8", device="cpu"
    )
    assert gs.detector.precision == "int8" and gs.detector.runner.precision == "int8"
    image = write_png(small_chelsea(), tmp_path / "cat.png")
    common = ["segment", image, "--text", TEXT, *sam_args(), "--precision", "fp32"]
    common += ["--detector-model", gdino_dir(), "--box-threshold", gdino_threshold(2)]
    rc, _, err = run_cli(common[0], [*common[1:], "--out", tmp_path / "a",
                                     "--detector-precision", "int8"], capsys)  # fmt: skip
    assert rc == 0, err
    rc, _, err = run_cli(common[0], [*common[1:], "--out", tmp_path / "b",
                                     "--detector-precision", "fp8"], capsys)  # fmt: skip
    assert rc == 2 and len(error_lines(err)) == 1 and "fp8" in err, err


def test_detector_falls_back_with_one_line(tmp_path, photos, caplog) -> None:
    """A config the fast path does not implement: transformers' model runs, one warning line
    names the reason, and the results are transformers' own."""
    processor, model = _bert_like(tmp_path, seed=5, position_embedding_type="learned")
    with caplog.at_level("WARNING", logger="grounded_sam.detectors.grounding_dino"):
        det = _detector(processor, model)
    notes = [r.getMessage() for r in caplog.records]
    assert len(notes) == 1 and "\n" not in notes[0]
    assert "position_embedding_type='learned'" in notes[0] and "transformers" in notes[0]
    assert not det.fast and isinstance(det.runner, HFGroundingDinoRunner)
    dets = det.detect(photos["chelsea"], PHRASES)
    boxes, scores, labels = _reference(processor, model, photos["chelsea"], PHRASES)
    np.testing.assert_array_equal(dets.boxes, boxes)
    np.testing.assert_array_equal(dets.scores, scores)
    assert dets.labels == labels


# ----------------------------------------------------------------------------- full size
@pytest.mark.slow
def test_full_size_tiny_shaped_model() -> None:
    """Grounding-DINO-tiny's shapes (Swin-T, BERT-base, 6+6 layers, 900 queries, 256 tokens),
    random perturbed weights, chelsea at 512x770 (the benchmark runs 800x1202); one thread."""
    from PIL import Image
    from skimage.data import chelsea
    from transformers import GroundingDinoConfig, GroundingDinoForObjectDetection

    torch.manual_seed(0)
    model = GroundingDinoForObjectDetection(GroundingDinoConfig()).eval()
    perturb_(model)
    # As benchmarks/grounding_dino.py, part of the queries kept; the border proposals are
    # pushed only slightly below the real ones (the benchmark pushes them further and matches
    # queries whose two-stage scores tie, which may come out in another order).
    with torch.no_grad():
        text_norm = model.model.encoder.layers[-1].text_enhancer_layer.layer_norm_after
        text_norm.weight.mul_(0.1)
        gen = torch.Generator().manual_seed(1)
        text_norm.bias.copy_(0.25 * torch.randn(text_norm.bias.shape, generator=gen))
        model.model.decoder.layer_norm.weight.fill_(1.0)
        model.model.decoder.layer_norm.bias.zero_()
        direction = model.model.enc_output_norm.weight * text_norm.bias
        model.model.enc_output.bias.copy_(-1e-3 * direction / direction.norm())
    image = np.asarray(Image.fromarray(chelsea()).resize((770, 512), Image.BILINEAR))
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    pixels = torch.from_numpy(((image / 255.0 - mean) / std).astype(np.float32))
    pixels = pixels.permute(2, 0, 1)[None].contiguous()
    # "[CLS] cat . dog . [SEP]" in bert-base-uncased ids.
    ids = torch.tensor([[101, 4937, 1012, 3899, 1012, 102]])
    fast = FastGroundingDino.from_hf(model)
    with torch.inference_mode():
        ref = model(pixel_values=pixels, input_ids=ids, attention_mask=torch.ones_like(ids))
        ours = fast(pixels, ids)
    # Two-stage selection ties: proposals whose selection scores (best token logit of each
    # encoder token) lie within float rounding of a neighbour in the top-900 order may come out
    # the other way round, and each then gets the other's learned query embedding (seen on
    # transformers 4.50.3). Only such queries may differ, and only a few.
    selection = ref.enc_outputs_class[0].max(-1).values.topk(fast.num_queries + 1).values
    gap = selection.diff().abs() < 1e-4  # (900,): rank i ties with rank i + 1
    tied = gap.clone()  # with the next rank (for the last: the first one left out)
    tied[1:] |= gap[:-1]  # with the previous rank
    box_diff = (ours.pred_boxes[0] - ref.pred_boxes[0]).abs().max(-1).values
    differs = box_diff > 1e-5 + 1e-4 * ref.pred_boxes[0].abs().max(-1).values
    assert not bool((differs & ~tied).any()), torch.nonzero(differs & ~tied).flatten().tolist()
    # A few tied pairs (4 on transformers 4.50.3 at this size, none on 5.24), never many.
    assert int(differs.sum()) <= fast.num_queries // 50, torch.nonzero(differs).flatten().tolist()
    same = ~tied
    ours_same = type(ours)(ours.logits[:, same], ours.pred_boxes[:, same], ours.input_ids)
    ref_same = type(ours)(ref.logits[:, same], ref.pred_boxes[:, same], ids)
    if not bool(differs.any()):
        _assert_same_raw(ours_same, ref_same)
        tol = 1e-4
    else:
        # The swapped queries reach every other query through the decoder's self-attention
        # (4.50.3: up to 6e-4 in the logits): close, not to rounding.
        tol = 2e-3
        finite = torch.isfinite(ref_same.logits)
        assert torch.equal(torch.isfinite(ours_same.logits), finite)
        torch.testing.assert_close(
            ours_same.logits[finite], ref_same.logits[finite], rtol=0, atol=tol
        )
        torch.testing.assert_close(ours_same.pred_boxes, ref_same.pred_boxes, rtol=0, atol=tol)
    scores_ref = ref_same.logits.sigmoid().max(-1).values
    scores = ours_same.logits.sigmoid().max(-1).values
    torch.testing.assert_close(scores, scores_ref, rtol=0, atol=tol)
    keep = scores_ref > BOX_THRESHOLD
    assert 0 < int(keep.sum()) < keep.numel()
    near = (scores_ref - BOX_THRESHOLD).abs() < tol  # may fall either side
    assert torch.equal((scores > BOX_THRESHOLD) | near, keep | near)
