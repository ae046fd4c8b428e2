"""The data engine: label folders of images into COCO datasets, resumably.

Modules:

- :mod:`~grounded_sam.engine.ontology`: the class list (YAML or inline) -> :class:`Ontology`.
- :mod:`~grounded_sam.engine.dataset`: the on-disk dataset format (annotations.json, units,
  errors, review queue, candidates, manifest): the one place it is read and written.
- :mod:`~grounded_sam.engine.embeddings`: SAM embeddings stored in a dataset.
- :mod:`~grounded_sam.engine.sources`: which images a run covers (file names, shards).
- :mod:`~grounded_sam.engine.labeler`: the pure per-image step (:class:`Labeler`).
- :mod:`~grounded_sam.engine.runners`: how that step is executed (local);
  :mod:`~grounded_sam.engine.ray_runner`: on a Ray cluster (``--engine ray``, optional).
- :mod:`~grounded_sam.engine.assemble`, :mod:`~grounded_sam.engine.review`: units ->
  annotations.json, errors.json, review.json, candidates.json.
- :mod:`~grounded_sam.engine.run`: a whole run (:func:`label`, :func:`merge`).
- :mod:`~grounded_sam.engine.audit`, :mod:`~grounded_sam.engine.export_formats`.

Names are resolved lazily so importing the package stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "label": "grounded_sam.engine.run",
    "merge": "grounded_sam.engine.run",
    "label_dataset": "grounded_sam.engine.run",
    "LabelSummary": "grounded_sam.engine.run",
    "Labeler": "grounded_sam.engine.labeler",
    "LabelConfig": "grounded_sam.engine.labeler",
    "CandidateOptions": "grounded_sam.engine.labeler",
    "LocalRunner": "grounded_sam.engine.runners",
    "Runner": "grounded_sam.engine.runners",
    "RayRunner": "grounded_sam.engine.ray_runner",
    "make_runner": "grounded_sam.engine.run",
    "export_dataset": "grounded_sam.engine.export_formats",
    "Ontology": "grounded_sam.engine.ontology",
    "OntologyClass": "grounded_sam.engine.ontology",
    "load_ontology": "grounded_sam.engine.ontology",
    "ImageUnit": "grounded_sam.engine.dataset",
    "EmbeddingStore": "grounded_sam.engine.embeddings",
    "sam_identity": "grounded_sam.engine.embeddings",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'grounded_sam.engine' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
