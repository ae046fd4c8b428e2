"""Shared exports for the ONNX tests: each tiny model is exported once per session.

Models (random weights, every tensor perturbed): ``tiny_vit`` (SAM 1's ViT with two blocks
at the real 1024 input, :func:`grounded_sam.testing.pipeline.tiny_sam`), ``mobile_sam``
(MobileSAM from a checkpoint file) and ``sam2`` (SAM 2.1 with the reduced test Hiera).
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

MODELS = ("tiny_vit", "mobile_sam", "sam2")


@functools.cache
def torch_model(name: str):
    """The PyTorch model of a test name (process-cached)."""
    if name == "tiny_vit":
        from grounded_sam.testing.pipeline import tiny_sam

        return tiny_sam()
    if name == "mobile_sam":
        from grounded_sam.testing.pipeline import mobile_sam

        return mobile_sam()
    if name == "sam2":
        from grounded_sam.testing.sam2_refs import random_sam2

        return random_sam2()
    raise KeyError(name)


@pytest.fixture(scope="session")
def exported(tmp_path_factory):
    """``exported(name, **export_options) -> OnnxExport``, each configuration exported once
    (without the export's own verification: the tests compare the files themselves)."""
    from grounded_sam.onnx import export_onnx

    root = tmp_path_factory.mktemp("onnx_exports")
    cache: dict = {}

    def get(name: str, **options):
        key = (name, tuple(sorted(options.items())))
        if key not in cache:
            out = root / f"{name}_{len(cache)}"
            cache[key] = export_onnx(torch_model(name), out, verify_outputs=False, **options)
        return cache[key]

    return get


def resized(image: np.ndarray, height: int, width: int) -> np.ndarray:
    return np.array(Image.fromarray(image).resize((width, height), Image.BILINEAR))


@functools.cache
def photo(name: str) -> np.ndarray:
    """Real photos at several shapes: ``chelsea`` (300x451 landscape), ``astronaut``
    (512x512), ``coffee_portrait`` (600x400, rotated), ``rocket_tiny`` (21x32)."""
    from skimage import data

    if name == "coffee_portrait":
        return np.ascontiguousarray(np.rot90(data.coffee()))
    if name == "rocket_tiny":
        return resized(data.rocket(), 21, 32)
    return getattr(data, name)()


@pytest.fixture(scope="session")
def model():
    """``model(name)``: the PyTorch model of a test name."""
    return torch_model


@pytest.fixture(scope="session")
def photos():
    """``photos(name)``: a real photo (see :func:`photo`)."""
    return photo
