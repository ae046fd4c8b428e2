"""Fixtures for the engine tests (helpers live in ``engine_helpers.py``)."""

from __future__ import annotations

import pytest
from engine_helpers import TINY, ContentDetector, save_tiny_checkpoint, tiny_model_config


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """The tiny SAM's weights as an official-format checkpoint file."""
    return save_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "tiny_vit_test.pt")


@pytest.fixture
def cli_models(monkeypatch, tiny_checkpoint):
    """Register the tiny SAM and the content detector for this test only; returns the CLI
    flags that select them."""
    from grounded_sam.detectors import base as det_base
    from grounded_sam.hub import registry as hub_registry
    from grounded_sam.model import registry as model_registry

    entry, config = tiny_model_config()
    model_registry.list_models()  # load the built-in zoo first
    monkeypatch.setitem(hub_registry._REGISTRY, TINY, entry)
    monkeypatch.setitem(model_registry._MODELS, TINY, config)
    monkeypatch.setitem(det_base._REGISTERED, ContentDetector.name, ContentDetector)
    return [
        "--sam",
        TINY,
        "--sam-checkpoint",
        str(tiny_checkpoint),
        "--device",
        "cpu",
        "--detector",
        ContentDetector.name,
    ]


ONTOLOGY_YAML = """\
classes:
  - name: cat
    prompts: [a cat, a kitten]
  - name: dog
    prompts: [a dog]
negatives: [a stuffed toy]
"""


@pytest.fixture(scope="session")
def photos(tmp_path_factory):
    """A folder of 5 small photos (one black: labelled empty, one in a subfolder) and the 3
    bad files of the issue; and the ontology file next to it."""
    from engine_helpers import write_bad_files, write_photos

    root = tmp_path_factory.mktemp("label")
    folder = root / "photos"
    write_photos(folder)
    write_photos(folder / "sub", kinds=("flip",))
    write_bad_files(folder)
    (root / "classes.yaml").write_text(ONTOLOGY_YAML)
    return folder


@pytest.fixture(scope="session")
def reference(photos):
    """The photos labelled once, uninterrupted, through the Python API (tiny SAM, content
    detector): ``(dataset folder, summary)``. Tests must not change it."""
    from grounded_sam.engine.run import label
    from grounded_sam.testing.pipeline import tiny_sam

    out = photos.parent / "reference"
    summary = label(
        photos,
        photos.parent / "classes.yaml",
        out,
        detector=ContentDetector(),
        sam=tiny_sam(),
        progress=False,
    )
    return out, summary
