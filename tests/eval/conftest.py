"""Fixtures for the eval tests (helpers live in ``_eval_data.py``)."""

from __future__ import annotations

import pytest

from grounded_sam.testing.eval_data import make_coco


@pytest.fixture
def coco(tmp_path) -> dict:
    """A 3-image COCO-format set (chelsea, astronaut, coffee) with drawn polygons."""
    return make_coco(tmp_path / "coco")
