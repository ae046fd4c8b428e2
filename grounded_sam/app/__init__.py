"""The annotation app: a web page and JSON API to correct and extend a dataset with live SAM.

- :mod:`~grounded_sam.app.store`: the dataset as edited (atomic, several writers);
- :mod:`~grounded_sam.app.service`: the models (embeddings once per image, prefetch, clicks);
- :mod:`~grounded_sam.app.security`: body limit, host and token checks, safe file names;
- :mod:`~grounded_sam.app.server`: the FastAPI app, :func:`serve`, :class:`BackgroundServer`;
- ``static/``: the page (plain HTML, CSS and JavaScript; no build step).

Run it with ``grounded-sam app DATASET`` (see ``docs/app.md``). Names are resolved lazily, so
importing the package needs neither FastAPI nor uvicorn.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "BackgroundServer": "grounded_sam.app.server",
    "create_app": "grounded_sam.app.server",
    "serve": "grounded_sam.app.server",
    "DatasetStore": "grounded_sam.app.store",
    "Segmenter": "grounded_sam.app.service",
    "ImageRef": "grounded_sam.app.service",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'grounded_sam.app' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
