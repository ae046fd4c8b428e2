"""grounding-dino: parity with a direct transformers call, phrase labels, chunking, errors."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch

from grounded_sam.detectors import Detections, build_detector
from grounded_sam.errors import InputError, WeightsError

PHRASES = ["a cat", "a striped dog", "green grass"]
TEXT = "A cat. a striped dog. green grass."


@pytest.fixture(scope="module")
def det(gdino_dir):
    return build_detector("grounding-dino", model=gdino_dir, box_threshold=0.7, device="cpu")


def _direct(model_dir, image: np.ndarray, prompt: str, box_threshold: float, text_threshold: float):
    """Plain transformers: processor -> model -> post_process_grounded_object_detection."""
    from transformers import AutoModelForZeroShotObjectDetection, AutoProcessor

    processor = AutoProcessor.from_pretrained(model_dir)
    model = AutoModelForZeroShotObjectDetection.from_pretrained(model_dir).eval()
    inputs = processor(images=image, text=prompt, return_tensors="pt")
    with torch.no_grad():
        out = model(**inputs)
    params = inspect.signature(processor.post_process_grounded_object_detection).parameters
    kw = "threshold" if "threshold" in params else "box_threshold"
    res = processor.post_process_grounded_object_detection(
        out,
        inputs["input_ids"],
        **{kw: box_threshold},
        text_threshold=text_threshold,
        target_sizes=[image.shape[:2]],
    )[0]
    return res, out, inputs, processor


def _phrase_token_positions(tokenizer, phrases: list[str]) -> list[list[int]]:
    """Token positions of each phrase in '[CLS] p1 . p2 . ... [SEP]', by tokenising pieces."""
    pos, spans = 1, []
    for p in phrases:
        n = len(tokenizer(p, add_special_tokens=False)["input_ids"])
        spans.append(list(range(pos, pos + n)))
        pos += n + len(tokenizer(".", add_special_tokens=False)["input_ids"])
    return spans


def test_parity_and_phrase_labels(det, gdino_dir, small_chelsea) -> None:
    dets = det.detect(small_chelsea, TEXT)
    res, out, inputs, processor = _direct(
        gdino_dir, small_chelsea, "a cat. a striped dog. green grass.", 0.7, 0.25
    )
    assert isinstance(dets, Detections)
    # The threshold bites: some queries kept, some dropped.
    assert 0 < len(dets) < out.logits.shape[1]
    # The detector runs FastGroundingDino: transformers' outputs to float rounding (the
    # issue's tolerances; tests/detectors/test_gdino_fast.py holds the full parity suite).
    np.testing.assert_allclose(dets.boxes, res["boxes"].numpy(), rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(dets.scores, res["scores"].numpy(), rtol=0, atol=1e-4)
    assert dets.boxes.dtype == np.float32 and dets.masks is None
    # Labels: the phrase whose own tokens score highest, computed here independently.
    probs = torch.sigmoid(out.logits[0])
    kept = probs[probs.max(-1).values > 0.7]
    spans = _phrase_token_positions(processor.tokenizer, PHRASES)
    expected = [PHRASES[int(np.argmax([row[s].max() for s in spans]))] for row in kept]
    # Labels are the phrases as written in TEXT ("A cat"); the model saw them lower-cased.
    assert [lbl.lower() for lbl in dets.labels] == expected
    assert set(dets.labels) <= {"A cat", "a striped dog", "green grass"}
    # transformers' own decoded spans are not reliable labels (merged phrases, [SEP]...).
    decoded = res["text_labels"] if "text_labels" in res else res["labels"]  # transformers < 4.51
    assert any(lbl not in PHRASES for lbl in decoded)


def test_list_text_and_other_inputs_equal(det, small_chelsea, tmp_path) -> None:
    from PIL import Image

    a = det.detect(small_chelsea, TEXT)
    path = tmp_path / "chelsea.png"
    Image.fromarray(small_chelsea).save(path)
    b = det.detect(path, ["a cat", "A striped dog", "green grass", "a cat"])
    np.testing.assert_array_equal(a.boxes, b.boxes)
    # the model sees the same (lower-cased) caption; labels keep the case as written
    assert [x.lower() for x in a.labels] == [x.lower() for x in b.labels]
    assert set(b.labels) <= {"a cat", "A striped dog", "green grass"}


def test_box_threshold_one_gives_empty(gdino_dir, small_chelsea) -> None:
    d = build_detector("grounding-dino", model=gdino_dir, box_threshold=1.0, device="cpu")
    out = d.detect(small_chelsea, "a cat")
    assert len(out) == 0 and out.boxes.shape == (0, 4) and out.labels == []


def test_nms_is_class_aware(gdino_dir, small_chelsea) -> None:
    from torchvision.ops import batched_nms

    plain = build_detector("grounding-dino", model=gdino_dir, box_threshold=0.3, device="cpu")
    nms = build_detector(
        "grounding-dino", model=gdino_dir, box_threshold=0.3, nms_threshold=0.3, device="cpu"
    )
    a = plain.detect(small_chelsea, TEXT)
    b = nms.detect(small_chelsea, TEXT)
    idx = torch.tensor([PHRASES.index(lbl.lower()) for lbl in a.labels])
    keep = np.sort(
        batched_nms(torch.from_numpy(a.boxes), torch.from_numpy(a.scores), idx, 0.3).numpy()
    )
    assert len(b) == len(keep)
    np.testing.assert_array_equal(b.boxes, a.boxes[keep])
    assert b.labels == [a.labels[i] for i in keep]
    # Crafted overlaps: same label suppressed, different labels kept.
    crafted = Detections(
        boxes=[[0, 0, 10, 10], [1, 1, 10, 10], [0, 0, 10, 10], [50, 50, 60, 60]],
        scores=[0.9, 0.8, 0.7, 0.6],
        labels=["a cat", "a cat", "a striped dog", "a cat"],
    )
    out = nms._nms(crafted, PHRASES)
    assert out.labels == ["a cat", "a striped dog", "a cat"]
    np.testing.assert_array_equal(out.scores, np.float32([0.9, 0.7, 0.6]))


def test_long_prompt_is_chunked_not_truncated(gdino_short_dir, small_chelsea) -> None:
    det = build_detector("grounding-dino", model=gdino_short_dir, box_threshold=0.3, device="cpu")
    assert det.max_text_len == 12
    phrases = ["a cat", "a dog", "green grass", "a red car", "the sky"]
    chunks = det.chunk_phrases(phrases)
    assert len(chunks) >= 2
    assert [p for c in chunks for p in c] == phrases  # whole phrases, all kept, in order
    tok = det.tokenizer
    for c in chunks:
        assert len(tok(". ".join(c) + ".")["input_ids"]) <= 12
    out = det.detect(small_chelsea, ". ".join(phrases))
    # Same as running each chunk on its own, concatenated in chunk order.
    parts = [det.detect(small_chelsea, c) for c in chunks]
    np.testing.assert_array_equal(out.boxes, np.concatenate([p.boxes for p in parts]))
    np.testing.assert_array_equal(out.scores, np.concatenate([p.scores for p in parts]))
    assert out.labels == [lbl for p in parts for lbl in p.labels]
    assert set(out.labels) <= set(phrases)
    # Labels come from phrases of more than one chunk: nothing past the limit was dropped.
    owners = {next(i for i, c in enumerate(chunks) if lbl in c) for lbl in out.labels}
    assert len(owners) >= 2
    with pytest.raises(ValueError, match="longer than the text encoder's limit of 12 tokens"):
        det.detect(small_chelsea, "a big red striped fluffy cat sitting on the green grass")


def test_missing_dir_and_bad_args(gdino_dir, tmp_path) -> None:
    with pytest.raises(ValueError, match="directory not found.*nowhere"):
        build_detector("grounding-dino", model=str(tmp_path / "nowhere"))
    with pytest.raises(ValueError, match="directory not found"):
        build_detector("grounding-dino", model=tmp_path / "nowhere")
    f = tmp_path / "file.bin"
    f.write_bytes(b"x")
    with pytest.raises(ValueError, match="is a file"):
        build_detector("grounding-dino", model=f)
    empty = tmp_path / "empty_dir"
    empty.mkdir()
    with pytest.raises(InputError, match="could not load a Grounding DINO model from .*empty_dir"):
        build_detector("grounding-dino", model=empty)
    for kw in ({"box_threshold": 1.5}, {"text_threshold": -0.1}, {"nms_threshold": "0.5"}):
        with pytest.raises(ValueError, match="must be a number in"):
            build_detector("grounding-dino", model=gdino_dir, **kw)
    with pytest.raises(InputError, match="hub id or a local directory"):
        build_detector("grounding-dino", model=3)


@pytest.mark.parametrize("var", ["GROUNDED_SAM_OFFLINE", "HF_HUB_OFFLINE"])
@pytest.mark.parametrize("model", ["grounded-sam-tests/no-such-gdino", "grounding-dino-base"])
def test_uncached_hub_id_offline_fails_at_once_without_network(
    monkeypatch: pytest.MonkeyPatch, tmp_path, var, model
) -> None:
    """Offline, an uncached hub model fails at once through the weights hub, naming the model
    and how to fetch it; no socket is opened and no name is looked up."""
    import socket

    import huggingface_hub.constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv(var, "1")

    def no_network(*args, **kwargs):
        raise AssertionError("the network was touched")

    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    hint = "hf download" if "/" in model else "grounded-sam weights download grounding-dino-base"
    with pytest.raises(WeightsError, match=f"{model}.*offline.*{hint}"):
        build_detector("grounding-dino", model=model)


def test_bad_text(det, small_chelsea) -> None:
    with pytest.raises(InputError, match="no phrases"):
        det.detect(small_chelsea, " . ")
    with pytest.raises(InputError, match="string"):
        det.detect(small_chelsea, 42)
    with pytest.raises(InputError, match="unsupported image"):
        det.detect(object(), "a cat")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu(det, gdino_dir, small_chelsea) -> None:
    gpu = build_detector(
        "grounding-dino", model=gdino_dir, box_threshold=0.7
    )  # device=None -> cuda
    assert gpu.device.type == "cuda" and next(gpu.model.parameters()).is_cuda
    a, b = det.detect(small_chelsea, TEXT), gpu.detect(small_chelsea, TEXT)
    # Scores near the threshold may flip between devices; compare the confident ones.
    sure_a, sure_b = a.select(a.scores > 0.72), b.select(b.scores > 0.72)
    assert len(sure_a) == len(sure_b) > 0
    np.testing.assert_allclose(sure_b.boxes, sure_a.boxes, atol=0.05)
    np.testing.assert_allclose(sure_b.scores, sure_a.scores, atol=1e-3)
    assert sure_b.labels == sure_a.labels


@pytest.mark.parametrize("shape", [(1, 300, 3), (4, 300, 3), (3, 3, 3), (300, 2, 3)])
def test_thin_and_tiny_images(gdino_dir, shape) -> None:
    """Images 1-4 pixels on a side: transformers guesses the channel axis from the shape
    (a (4, 300, 3) array looked channels-first); the layout is passed, so they detect."""
    det = build_detector("grounding-dino", model=gdino_dir, box_threshold=0.0, device="cpu")
    image = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    dets = det.detect(image, "a cat")
    assert len(dets) > 0 and np.isfinite(dets.boxes).all()
    # boxes in pixels of this image (not clipped, as transformers' post-processing): their
    # centres lie within it
    h, w = shape[:2]
    cx, cy = dets.boxes[:, [0, 2]].mean(1), dets.boxes[:, [1, 3]].mean(1)
    assert ((cx >= 0) & (cx <= w) & (cy >= 0) & (cy <= h)).all()


def test_loading_draws_no_progress_bar_into_logs(gdino_dir, capfd) -> None:
    """stderr not a terminal (a log, CI): transformers' "Loading weights" bar stays off, and
    its progress-bar switch is left as it was."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    hf_logging.enable_progress_bar()
    try:
        capfd.readouterr()
        build_detector("grounding-dino", model=gdino_dir, device="cpu")
        assert "Loading weights" not in capfd.readouterr().err
        assert hf_logging.is_progress_bar_enabled()
    finally:
        if not was:
            hf_logging.disable_progress_bar()
