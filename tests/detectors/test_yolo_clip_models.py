"""yolo-clip with real (tiny, random) ultralytics YOLOv8-seg and open_clip models, no network."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from grounded_sam.detectors import build_detector

KW = dict(imgsz=160, conf=0.25, max_det=20, device="cpu")


@pytest.fixture(scope="module")
def det(yolo_seg_pt, tiny_clip):
    name, state = tiny_clip
    return build_detector(
        "yolo-clip", yolo=yolo_seg_pt, clip=name, clip_pretrained=state, score_threshold=0.0, **KW
    )


def test_proposals_match_ultralytics(det, yolo_seg_pt, small_chelsea, tmp_path) -> None:
    """Our RGB array path gives the same proposals as ultralytics reading the file itself."""
    from ultralytics import YOLO

    boxes, masks = det.proposer.propose(small_chelsea)
    assert boxes.dtype == np.float32 and boxes.shape[1] == 4 and 0 < len(boxes) <= 20
    assert masks.dtype == bool and masks.shape == (len(boxes), *small_chelsea.shape[:2])
    path = tmp_path / "chelsea.png"
    Image.fromarray(small_chelsea).save(path)
    ref = YOLO(str(yolo_seg_pt)).predict(
        str(path),
        imgsz=160,
        conf=0.25,
        iou=0.7,
        max_det=20,
        retina_masks=True,
        agnostic_nms=True,
        verbose=False,
        device="cpu",
    )[0]
    np.testing.assert_allclose(boxes, ref.boxes.xyxy.numpy(), atol=1e-3)
    np.testing.assert_array_equal(masks, ref.masks.data.numpy() > 0.5)


def test_ultralytics_does_not_change_torch_threads(yolo_seg_pt, tiny_clip, small_chelsea) -> None:
    """ultralytics' select_device sets torch's thread count to min(8, cores - 1); building and
    running the detector must leave the process's setting (and so SAM's speed) alone."""
    name, state = tiny_clip
    before = torch.get_num_threads()
    wanted = 3 if before != 3 else 4
    torch.set_num_threads(wanted)
    try:
        detector = build_detector(
            "yolo-clip", yolo=yolo_seg_pt, clip=name, clip_pretrained=state, **KW
        )
        detector.detect(small_chelsea, "a cat")
        assert torch.get_num_threads() == wanted
    finally:
        torch.set_num_threads(before)


def test_detect_end_to_end(det, small_chelsea, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    original = det.encoder.model.encode_image

    def counting(x, *a, **k):
        calls.append(tuple(x.shape))
        return original(x, *a, **k)

    monkeypatch.setattr(det.encoder.model, "encode_image", counting)
    boxes, masks = det.proposer.propose(small_chelsea)
    keep = masks.any(axis=(1, 2))
    n = int(keep.sum())
    out = det.detect(small_chelsea, "a cat. a dog")
    size = det.encoder.image_size
    assert calls == [(n, 3, size, size)]  # all crops in one CLIP call
    # score_threshold=0: every non-empty proposal is returned once per phrase.
    assert len(out) == 2 * n
    assert sorted(out.labels) == ["a cat"] * n + ["a dog"] * n
    assert out.masks.shape == (2 * n, *small_chelsea.shape[:2]) and out.masks.dtype == bool
    for box, mask in zip(out.boxes, out.masks, strict=True):
        i = next(j for j in range(len(boxes)) if np.array_equal(boxes[j], box))
        np.testing.assert_array_equal(mask, masks[i])
    assert np.all((out.scores > 0) & (out.scores < 1)) and np.all(np.diff(out.scores) <= 0)
    h, w = small_chelsea.shape[:2]
    assert np.all(out.boxes >= -1e-3) and np.all(out.boxes[:, [0, 2]] <= w + 1e-3)
    assert np.all(out.boxes[:, [1, 3]] <= h + 1e-3)
    # Scores of one crop do not depend on the other phrases asked for.
    alone = det.detect(small_chelsea, "a cat")
    both = {
        tuple(b): s
        for b, s, lbl in zip(out.boxes, out.scores, out.labels, strict=True)
        if lbl == "a cat"
    }
    for b, s in zip(alone.boxes, alone.scores, strict=True):
        assert both[tuple(b)] == pytest.approx(s, abs=1e-6)


def test_encoder_matches_open_clip(det) -> None:
    """Our text embedding equals open_clip's own tokenizer + encode_text."""
    import open_clip

    name = "gs-test-tiny-clip"
    tok = open_clip.get_tokenizer(name)
    with torch.no_grad():
        ref = torch.nn.functional.normalize(
            det.encoder.model.encode_text(tok(["a photo of a cat."])), dim=-1
        )
    np.testing.assert_allclose(
        det.encoder.encode_texts(["a photo of a cat."]), ref.numpy(), atol=1e-6
    )
    assert det.encoder.logit_scale == pytest.approx(
        float(det.encoder.model.logit_scale.detach().exp())
    )


def test_registry_name_goes_through_weights_fetch(yolo_seg_pt, tiny_clip, monkeypatch) -> None:
    from grounded_sam import weights

    asked = []

    def fake_fetch(name, *a, **k):
        asked.append(name)
        return yolo_seg_pt

    monkeypatch.setattr(weights, "fetch", fake_fetch, raising=False)
    name, state = tiny_clip
    det = build_detector("yolo-clip", yolo="yolov8n-seg", clip=name, clip_pretrained=state, **KW)
    assert asked == ["yolov8n-seg"]
    assert len(det.proposer.propose(np.zeros((40, 50, 3), np.uint8))[0]) >= 0


def test_clip_loading_errors(yolo_seg_pt, tiny_clip, tmp_path) -> None:
    name, state = tiny_clip
    with pytest.raises(ValueError, match="unknown open_clip model 'NoSuchCLIP'"):
        build_detector("yolo-clip", yolo=yolo_seg_pt, clip="NoSuchCLIP", **KW)
    with pytest.raises(ValueError, match="unknown clip_pretrained tag 'nope'.*openai"):
        build_detector("yolo-clip", yolo=yolo_seg_pt, clip="ViT-B-32", clip_pretrained="nope", **KW)
    with pytest.raises(ValueError, match="not found"):
        build_detector(
            "yolo-clip", yolo=yolo_seg_pt, clip=name, clip_pretrained=tmp_path / "x.pt", **KW
        )
    bad = tmp_path / "bad.pt"
    torch.save({"visual.nonsense": torch.zeros(2)}, bad)
    with pytest.raises(ValueError, match="missing keys.*unexpected keys.*visual.nonsense"):
        build_detector("yolo-clip", yolo=yolo_seg_pt, clip=name, clip_pretrained=bad, **KW)
    pickled = tmp_path / "pickled.pt"
    torch.save({"w": torch.zeros(1), "obj": Image.new("RGB", (2, 2))}, pickled)
    with pytest.raises(
        ValueError,
        match="refusing to load.*pickled objects other than tensors.*nothing in it was run",
    ):
        build_detector("yolo-clip", yolo=yolo_seg_pt, clip=name, clip_pretrained=pickled, **KW)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="could not load the YOLO checkpoint"):
        build_detector("yolo-clip", yolo=junk, clip=name, clip_pretrained=state, **KW)


@pytest.mark.slow
def test_full_size_vit_b_32_state_dict(yolo_seg_pt, small_chelsea, tmp_path) -> None:
    """Default CLIP architecture (ViT-B-32, pretrained=None, state dict saved) loads and runs."""
    from grounded_sam.testing.detectors import make_clip_state_dict

    state = make_clip_state_dict(tmp_path / "vit_b_32.pt", model="ViT-B-32")
    det = build_detector(
        "yolo-clip", yolo=yolo_seg_pt, clip_pretrained=state, score_threshold=0.0, **KW
    )
    assert det.encoder.image_size == 224 and det.fill_color == (123, 117, 104)
    out = det.detect(small_chelsea, "a cat")
    assert len(out) > 0 and set(out.labels) == {"a cat"}
    assert out.masks.shape[1:] == small_chelsea.shape[:2]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu(det, yolo_seg_pt, tiny_clip, small_chelsea) -> None:
    name, state = tiny_clip
    kw = {**KW, "device": None}  # None -> cuda
    gpu = build_detector(
        "yolo-clip", yolo=yolo_seg_pt, clip=name, clip_pretrained=state, score_threshold=0.0, **kw
    )
    assert gpu.device.type == "cuda" and next(gpu.encoder.model.parameters()).is_cuda
    boxes, masks = det.proposer.propose(small_chelsea)
    gpu_boxes, gpu_masks = gpu.proposer.propose(small_chelsea)
    assert len(gpu_boxes) > 0 and gpu_masks.shape == (len(gpu_boxes), *small_chelsea.shape[:2])
    # Random weights put many proposals at the conf/NMS boundaries, where GPU numerics (TF32
    # convolutions) may flip a few; most must agree.
    agree = sum(np.abs(boxes - b).max(axis=1).min() < 1.0 for b in gpu_boxes)
    assert agree >= 0.5 * len(gpu_boxes)

    class Same:  # identical proposals on both devices, to compare the CLIP scoring exactly
        def propose(self, image):
            return boxes, masks

    gpu.proposer = Same()
    a, b = det.detect(small_chelsea, "a cat. a dog"), gpu.detect(small_chelsea, "a cat. a dog")
    assert len(a) == len(b) == 2 * int(masks.any(axis=(1, 2)).sum())
    key_a = {(tuple(x), lbl): s for x, lbl, s in zip(a.boxes, a.labels, a.scores, strict=True)}
    key_b = {(tuple(x), lbl): s for x, lbl, s in zip(b.boxes, b.labels, b.scores, strict=True)}
    assert key_a.keys() == key_b.keys()
    for k, s in key_a.items():
        assert key_b[k] == pytest.approx(s, abs=2e-3)
