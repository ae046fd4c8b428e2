"""Helpers shared by the engine tests and ``label_driver.py`` (the CLI in a subprocess).

- a tiny SAM (2-block ViT, SAM's real 1024 input and decoder, perturbed weights) that the
  CLI can load by name (``--sam tiny_vit_test --sam-checkpoint FILE``) once registered;
- ``ContentDetector``: a deterministic detector whose boxes and scores follow the image's
  content (so different images get different labels, and a black image gets none);
- small test photos and bad files.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image

from grounded_sam.detectors import Detections, Option

TINY = "tiny_vit_test"


def tiny_model_config():
    """The registry records that let ``build_sam(TINY, checkpoint=...)`` build the tiny SAM."""
    from grounded_sam.hub.registry import WeightEntry
    from grounded_sam.model.registry import ModelConfig

    def build():
        from grounded_sam.model.image_encoder import ImageEncoderViT
        from grounded_sam.model.zoo import _sam
        from grounded_sam.testing.sam_refs import TINY_VIT_CFG

        return _sam(ImageEncoderViT(**TINY_VIT_CFG), TINY)

    entry = WeightEntry(
        name=TINY,
        kind="sam",
        url="https://example.invalid/tiny_vit_test.pt",
        filename="tiny_vit_test.pt",
        sha256=None,
        size_mb=None,
        license="test",
        source="tests/engine",
    )
    return entry, ModelConfig(name=TINY, family="sam", builder=build, weights=TINY)


def register_tiny_sam() -> None:
    """Register the tiny SAM in this process (for the subprocess driver)."""
    from grounded_sam import hub
    from grounded_sam.model.registry import register_model

    entry, config = tiny_model_config()
    hub.register(entry, overwrite=True)
    register_model(config)


def save_tiny_checkpoint(path: Path) -> Path:
    """The tiny SAM's weights (those of ``grounded_sam.testing.pipeline.tiny_sam()``) in the
    official state-dict format."""
    import torch

    from grounded_sam.testing.pipeline import tiny_sam

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(tiny_sam().state_dict(), path)
    return path


class ContentDetector:
    """Boxes that follow the image: phrase k of n owns the k-th vertical strip; its box is the
    strip inset by 10%, its score the strip's mean brightness (0..1). Boxes scoring at or
    below ``box_threshold`` are dropped (a black image gets none)."""

    name = "content-boxes"
    options = (Option("box_threshold", float, 0.05, "minimum score", unit=True, metavar="F"),)
    returns_masks = False
    accepts_device = False

    def __init__(self, box_threshold: float = 0.05) -> None:
        self.box_threshold = float(box_threshold)
        self.calls = 0
        self.batch_calls = 0

    def __repr__(self) -> str:
        return f"ContentDetector(box_threshold={self.box_threshold})"

    def detect(self, image, phrases) -> Detections:
        self.calls += 1
        img = np.asarray(image)
        h, w = img.shape[:2]
        n = len(phrases)
        boxes, scores, labels = [], [], []
        for k, phrase in enumerate(phrases):
            x0, x1 = k * w / n, (k + 1) * w / n
            score = float(img[:, int(x0) : max(int(x1), int(x0) + 1)].mean() / 255.0)
            if score <= self.box_threshold:
                continue
            dx, dy = 0.1 * (x1 - x0), 0.1 * h
            boxes.append([x0 + dx, dy, x1 - dx, h - dy])
            scores.append(score)
            labels.append(phrase)
        return Detections(np.asarray(boxes, np.float32).reshape(-1, 4), scores, labels)

    def detect_batch(self, images, phrases) -> list[Detections]:
        self.batch_calls += 1
        out = [self.detect(im, phrases) for im in images]
        self.calls -= len(images)
        return out


LABEL_DRIVER = Path(__file__).with_name("label_driver.py")


def label_command(photos: Path, out: Path, checkpoint: Path, *extra) -> list[str]:
    """``grounded-sam label`` through ``label_driver.py`` (which registers the tiny SAM and
    the content detector) on ``photos`` with their ``classes.yaml``, for a subprocess."""
    return [
        sys.executable,
        str(LABEL_DRIVER),
        "label",
        str(photos),
        "--classes",
        str(photos.parent / "classes.yaml"),
        "--out",
        str(out),
        "--sam",
        TINY,
        "--sam-checkpoint",
        str(checkpoint),
        "--device",
        "cpu",
        "--detector",
        ContentDetector.name,
        "--quiet",
        *map(str, extra),
    ]


def photo(kind: str, size: tuple[int, int] = (96, 128)) -> np.ndarray:
    """A small RGB test image: ``chelsea``, ``astronaut``, ``coffee``, ``rocket`` (skimage
    photos resized to ``size`` = (H, W)), ``black`` or ``flip`` (chelsea mirrored)."""
    from skimage import data

    h, w = size
    if kind == "black":
        return np.zeros((h, w, 3), np.uint8)
    src = {"flip": data.chelsea}.get(kind) or getattr(data, kind)
    img = np.array(Image.fromarray(src()).resize((w, h), Image.BILINEAR))
    return img[:, ::-1].copy() if kind == "flip" else img


def write_photos(folder: Path, kinds=("chelsea", "astronaut", "coffee", "black")) -> list[Path]:
    """``folder/<kind>.png`` per kind (``black`` has no detections)."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for kind in kinds:
        p = folder / f"{kind}.png"
        Image.fromarray(photo(kind)).save(p)
        out.append(p)
    return out


def write_bad_files(folder: Path) -> list[str]:
    """A truncated JPEG, a text file named ``.jpg`` and a zero-byte ``.jpg``; their names."""
    folder.mkdir(parents=True, exist_ok=True)
    full = folder / "full.jpg"
    Image.fromarray(photo("chelsea")).save(full, quality=90)
    data = full.read_bytes()
    full.unlink()
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (folder / "notes.jpg").write_text("this is a text file, not a JPEG\n")
    (folder / "empty.jpg").write_bytes(b"")
    return ["empty.jpg", "notes.jpg", "truncated.jpg"]


def tree(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (hidden ones too) -> its bytes: a snapshot to compare."""
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }
