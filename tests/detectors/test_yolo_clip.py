"""yolo-clip: selection logic with a stub CLIP, masked crops, batching, real tiny models, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest

from grounded_sam.detectors import Detections, build_detector
from grounded_sam.detectors.yolo_clip import FILL_COLOR, YoloClipDetector, masked_crop
from grounded_sam.errors import InputError

BG = (255, 0, 255)  # magenta background: must never reach CLIP
H, W = 60, 80
SCALE = 10.0
N_NEG = 4  # default negatives, all embedded as NEG by the stub

CAT, DOG, NEG = np.eye(3, dtype=np.float32)
# candidate: (colour, box (fractional on purpose), embedding before normalisation)
CANDIDATES = [
    ((200, 30, 30), (2.4, 3.6, 20.2, 21.9), [1.0, 0.0, 0.2]),  # clearly a cat
    ((30, 200, 30), (22.0, 2.0, 40.0, 20.0), [0.9, 0.1, 0.3]),  # a cat too
    ((30, 30, 200), (42.5, 2.5, 60.5, 20.5), [0.0, 1.0, 0.1]),  # a dog
    ((200, 200, 30), (62.0, 2.0, 79.0, 20.0), [0.1, 0.8, 0.2]),  # another dog
    ((30, 200, 200), (2.0, 30.0, 20.0, 50.0), [0.6, 0.0, 0.8]),  # weak cat: below threshold
    ((120, 60, 10), (22.0, 30.0, 40.0, 50.0), [0.0, 0.1, 1.0]),  # generic object
    ((90, 90, 90), (42.0, 30.0, 60.0, 50.0), [0.7, 0.7, 0.1]),  # matches cat and dog
]
EMPTY_BOX = (62.0, 30.0, 79.0, 50.0)  # a proposal whose mask is empty: dropped


def _scene() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Magenta image with one ellipse per candidate; masks are the ellipses (not the boxes)."""
    img = np.zeros((H, W, 3), np.uint8)
    img[:] = BG
    yy, xx = np.mgrid[0:H, 0:W]
    boxes, masks = [], []
    for colour, box, _ in CANDIDATES:
        x0, y0, x1, y1 = box
        cx, cy, rx, ry = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2, (y1 - y0) / 2
        m = ((xx + 0.5 - cx) / rx) ** 2 + ((yy + 0.5 - cy) / ry) ** 2 <= 1.0
        img[m] = colour
        boxes.append(box)
        masks.append(m)
    boxes.append(EMPTY_BOX)
    masks.append(np.zeros((H, W), bool))
    return img, np.asarray(boxes, np.float32), np.stack(masks)


class StubProposer:
    def __init__(self, boxes: np.ndarray, masks: np.ndarray) -> None:
        self.boxes, self.masks, self.calls = boxes, masks, 0

    def propose(self, image: np.ndarray):
        self.calls += 1
        assert image.shape == (H, W, 3) and image.dtype == np.uint8
        return self.boxes, self.masks


class StubClip:
    """Embeds a crop by looking up its (unique) non-fill colour; texts by keyword."""

    logit_scale = SCALE

    def __init__(self) -> None:
        self.image_calls: list[list[np.ndarray]] = []
        self.text_calls: list[list[str]] = []

    def encode_images(self, crops):
        self.image_calls.append([c.copy() for c in crops])
        out = []
        for c in crops:
            pix = c.reshape(-1, 3)
            pix = pix[(pix != np.asarray(FILL_COLOR, np.uint8)).any(axis=1)]
            colours = {tuple(int(v) for v in p) for p in pix}
            assert len(colours) == 1, f"crop mixes colours {colours}"
            (colour,) = colours
            vec = np.asarray(next(e for col, _, e in CANDIDATES if col == colour), np.float32)
            out.append(vec / np.linalg.norm(vec))
        return np.stack(out)

    def encode_texts(self, texts):
        self.text_calls.append(list(texts))
        return np.stack([CAT if " cat" in t else DOG if " dog" in t else NEG for t in texts])


def _expected_score(vec, phrase_vec) -> float:
    v = np.asarray(vec, np.float64) / np.linalg.norm(vec)
    z = SCALE * v @ phrase_vec - (SCALE * v @ NEG + math.log(N_NEG))
    return 1.0 / (1.0 + math.exp(-z))


@pytest.fixture()
def scene():
    img, boxes, masks = _scene()
    return img, boxes, masks, StubProposer(boxes, masks), StubClip()


def test_selection_with_stub_clip(scene) -> None:
    img, boxes, masks, proposer, clip = scene
    det = build_detector("yolo-clip", yolo=proposer, clip=clip, score_threshold=0.5, device="cpu")
    out = det.detect(img, "cat. dog.")
    expected = {}
    for i, (_, _, vec) in enumerate(CANDIDATES):
        for phrase, pvec in (("cat", CAT), ("dog", DOG)):
            s = _expected_score(vec, pvec)
            if s >= 0.5:
                expected[(i, phrase)] = s
    assert {k[1] for k in expected} == {"cat", "dog"}
    assert sum(k[1] == "cat" for k in expected) >= 2 and sum(k[1] == "dog" for k in expected) >= 2
    got = {}
    for box, score, label, mask in zip(out.boxes, out.scores, out.labels, out.masks, strict=True):
        i = next(j for j in range(len(CANDIDATES)) if np.array_equal(box, boxes[j]))
        np.testing.assert_array_equal(mask, masks[i])  # the YOLO mask travels with its box
        got[(i, label)] = float(score)
    assert got.keys() == expected.keys()  # exactly the passing (candidate, phrase) pairs
    for k, s in expected.items():
        assert got[k] == pytest.approx(s, rel=1e-4)
    assert (6, "cat") in got and (6, "dog") in got  # one proposal, two phrases
    assert np.all(np.diff(out.scores) <= 0)  # sorted by score
    assert out.masks.shape == (len(out), H, W)
    assert np.all((out.scores >= 0) & (out.scores <= 1))


def test_one_batched_clip_call_per_image_and_masked_crops(scene) -> None:
    img, boxes, masks, proposer, clip = scene
    det = YoloClipDetector(yolo=proposer, clip=clip, device="cpu")
    det.detect(img, ["cat", "dog"])
    assert len(clip.image_calls) == 1
    crops = clip.image_calls[0]
    assert len(crops) == len(CANDIDATES)  # the empty-mask proposal is not scored
    for (colour, box, _), crop, m in zip(CANDIDATES, crops, masks, strict=False):
        x0, y0 = math.floor(box[0]), math.floor(box[1])
        x1, y1 = math.ceil(box[2]), math.ceil(box[3])
        assert crop.shape == (y1 - y0, x1 - x0, 3)  # cropped to the box, rounded outwards
        inside = m[y0:y1, x0:x1]
        assert inside.any() and (~inside).any()
        assert np.all(crop[inside] == colour)  # object pixels kept
        assert np.all(crop[~inside] == FILL_COLOR)  # everything else neutral
        assert not np.any(np.all(crop == BG, axis=-1))  # no background leaks in
    det.detect(img, "cat")
    assert len(clip.image_calls) == 2  # one call per image
    n_text_calls = len(clip.text_calls)
    det.detect(img, "dog. cat")
    assert len(clip.text_calls) == n_text_calls  # text embeddings are cached


def test_top_k_and_threshold(scene) -> None:
    img, _, _, proposer, clip = scene
    det = YoloClipDetector(yolo=proposer, clip=clip, top_k=1, device="cpu")
    out = det.detect(img, "cat. dog")
    assert sorted(out.labels) == ["cat", "dog"]
    best_cat = max(_expected_score(v, CAT) for _, _, v in CANDIDATES)
    assert out.scores[out.labels.index("cat")] == pytest.approx(best_cat, rel=1e-4)
    none = YoloClipDetector(yolo=proposer, clip=clip, score_threshold=1.0, device="cpu")
    empty = none.detect(img, "cat")
    assert len(empty) == 0 and empty.masks.shape == (0, H, W)


def test_no_proposals() -> None:
    proposer = StubProposer(np.zeros((0, 4), np.float32), np.zeros((0, H, W), bool))
    clip = StubClip()
    out = YoloClipDetector(yolo=proposer, clip=clip, device="cpu").detect(
        np.zeros((H, W, 3), np.uint8), "cat"
    )
    assert isinstance(out, Detections) and len(out) == 0 and out.masks.shape == (0, H, W)
    assert clip.image_calls == []


def test_masked_crop_clips_to_image() -> None:
    img = np.full((10, 12, 3), 7, np.uint8)
    mask = np.zeros((10, 12), bool)
    mask[8:, 10:] = True
    crop = masked_crop(img, np.array([9.5, 7.2, 30.0, 40.0]), mask, fill=(1, 2, 3))
    assert crop.shape == (3, 3, 3)
    assert np.all(crop[1:, 1:] == 7) and np.all(crop[0] == (1, 2, 3))


def test_bad_arguments(scene, tmp_path) -> None:
    img, _, _, proposer, clip = scene
    with pytest.raises(ValueError, match="YOLO checkpoint not found"):
        build_detector("yolo-clip", yolo=str(tmp_path / "missing.pt"), clip=clip)
    with pytest.raises(TypeError, match="yolo must be"):
        build_detector("yolo-clip", yolo=3, clip=clip)
    with pytest.raises(TypeError, match="clip must be"):
        build_detector("yolo-clip", yolo=proposer, clip=3)
    for kw in ({"score_threshold": 2}, {"conf": -1}, {"iou": "x"}):
        with pytest.raises(ValueError, match=r"in \[0, 1\]"):
            build_detector("yolo-clip", yolo=proposer, clip=clip, **kw)
    for kw in ({"top_k": 0}, {"imgsz": 1.5}, {"max_det": None}):
        with pytest.raises(ValueError, match="positive integer"):
            build_detector("yolo-clip", yolo=proposer, clip=clip, **kw)
    with pytest.raises(ValueError, match="templates"):
        build_detector("yolo-clip", yolo=proposer, clip=clip, templates=["no placeholder"])
    with pytest.raises(ValueError, match="negatives"):
        build_detector("yolo-clip", yolo=proposer, clip=clip, negatives=[])
    det = YoloClipDetector(yolo=proposer, clip=clip)
    with pytest.raises(InputError, match="no phrases"):
        det.detect(img, "")
    with pytest.raises(InputError, match="string"):
        det.detect(img, None)
    bad = StubProposer(np.zeros((1, 4), np.float32), np.zeros((1, 5, 5), bool))
    with pytest.raises(RuntimeError, match="masks of shape"):
        YoloClipDetector(yolo=bad, clip=clip).detect(img, "cat")


_THREADS_SCRIPT = """
import os, subprocess, sys, torch
from grounded_sam.detectors.yolo_clip import _import_ultralytics
_import_ultralytics()
child = subprocess.run([sys.executable, "-c", "import torch; print(torch.get_num_threads())"],
                       capture_output=True, text=True, check=True).stdout.strip()
print(os.environ.get("OMP_NUM_THREADS"), torch.get_num_threads(), child)
"""


@pytest.mark.parametrize("user_value", [None, "2"])
def test_importing_ultralytics_keeps_omp_num_threads(user_value):
    """ultralytics sets OMP_NUM_THREADS=1 at import when unset. Every process started after
    that inherits it and runs torch single-threaded: the app server started by a script
    that had built a YOLO detector decoded clicks 2x slower. Our import removes it again, and
    keeps a value the user set."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    if user_value is not None:
        env["OMP_NUM_THREADS"] = user_value
    out = subprocess.run(
        [sys.executable, "-c", _THREADS_SCRIPT], env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    omp, parent, child = out.stdout.split()
    assert omp == str(user_value)
    assert child == parent  # a process started afterwards computes with as many threads
