"""Session-scoped tiny models for the detector tests (builders live in ``_models.py``).

Other test packages reuse the builders with ``from grounded_sam.testing.detectors import ...`` (the root
conftest puts ``tests/`` on ``sys.path``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from grounded_sam.testing.detectors import (
    make_clip_state_dict,
    make_grounding_dino_dir,
    make_yolo_seg_pt,
    register_tiny_clip,
)


@pytest.fixture(scope="session")
def small_chelsea() -> np.ndarray:
    """The chelsea photo at 150x226 (HxW), uint8 RGB."""
    from skimage.data import chelsea

    img = Image.fromarray(chelsea())
    return np.array(img.resize((226, 150), Image.BILINEAR))  # writable


@pytest.fixture(scope="session")
def gdino_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny Grounding DINO saved with save_pretrained (256-token text limit)."""
    return make_grounding_dino_dir(tmp_path_factory.mktemp("gdino"))


@pytest.fixture(scope="session")
def gdino_short_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny Grounding DINO whose text encoder takes only 12 tokens (forces prompt chunking)."""
    return make_grounding_dino_dir(tmp_path_factory.mktemp("gdino_short"), max_text_len=12, seed=1)


@pytest.fixture(scope="session")
def yolo_seg_pt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Random yolov8n-seg checkpoint saved like ultralytics saves it."""
    return make_yolo_seg_pt(tmp_path_factory.mktemp("yolo") / "yolov8n-seg-random.pt")


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """``(open_clip model name, state-dict path)`` of a tiny random CLIP."""
    path = make_clip_state_dict(tmp_path_factory.mktemp("clip") / "tiny_clip.pt", model="tiny")
    return register_tiny_clip(), path
