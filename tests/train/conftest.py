"""Fixtures for the fine-tuning tests: a generated shapes dataset and tiny SAM checkpoints.

``tiny`` is a ``ModelConfig`` for SAM with a 2-block ViT encoder (``TINY_VIT_CFG``: the real
1024 input and 64x64 embedding, so the decoder and every frame are full-size); its checkpoint
is written from Meta's ``segment_anything`` modules with perturbed weights, i.e. in Meta's
own layout.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from grounded_sam.model.registry import ModelConfig


def _build_tiny():
    from grounded_sam.model.image_encoder import ImageEncoderViT
    from grounded_sam.model.zoo import _sam
    from grounded_sam.testing.sam_refs import TINY_VIT_CFG

    return _sam(ImageEncoderViT(**TINY_VIT_CFG), "tiny_vit_test")


@pytest.fixture(scope="session")
def tiny() -> ModelConfig:
    """The 2-block ViT SAM variant (tests only, not registered)."""
    return ModelConfig("tiny_vit_test", "sam", _build_tiny, weights="vit_b")


@pytest.fixture(scope="session")
def fast() -> dict:
    """A cheap recipe for the fast tests: 2 masks per step, one correction click, no
    refinement round, one epoch."""
    return dict(batch_size=2, correction_clicks=1, refine_rounds=0, lr=1e-3, epochs=1)


@pytest.fixture(scope="session")
def shapes(tmp_path_factory):
    """4 training + 2 validation images of 64x64 px, 1-3 shapes each."""
    from grounded_sam.train.synthetic import write_shapes_dataset

    return write_shapes_dataset(
        tmp_path_factory.mktemp("shapes"), n_train=4, n_val=2, size=64, seed=1
    )


@pytest.fixture(scope="session")
def one_image(tmp_path_factory):
    """1 training + 1 validation image of 64x64 px (for the costlier encoders)."""
    from grounded_sam.train.synthetic import write_shapes_dataset

    return write_shapes_dataset(tmp_path_factory.mktemp("one"), n_train=1, n_val=1, size=64, seed=1)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """Meta's SAM with the 2-block ViT, perturbed weights, saved as a plain state dict."""
    from grounded_sam.testing.sam_refs import meta_tiny_vit_sam, save_checkpoint

    return save_checkpoint(meta_tiny_vit_sam(seed=3), tmp_path_factory.mktemp("ckpt") / "tiny.pth")
