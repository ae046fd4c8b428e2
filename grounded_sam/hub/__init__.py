"""Model weights: registry, cache, mirror, offline mode, locked verified downloads, safe loading.

One registry (:func:`list`, :func:`get`) describes every model file the framework uses: SAM
checkpoints, YOLO files, Grounding DINO and CLIP hub models. :func:`fetch` returns a verified
local path, downloading into the cache when needed; :func:`download` is the low-level atomic,
locked, optionally sha256-checked downloader. Environment variables (``GROUNDED_SAM_HOME``,
``GROUNDED_SAM_MIRROR``, ``GROUNDED_SAM_OFFLINE``) are described in
:mod:`grounded_sam.hub.env` and apply to every model.

Verification: a sha256 is checked only where a first-party source publishes one (we never
invent checksums). Otherwise a file is verified by structure (SAM: the check that
:mod:`grounded_sam.model` registers with :func:`register_verifier`: loads with
``weights_only=True`` and its keys/shapes match the variant; ultralytics: a torch zip archive
whose pickle references ``ultralytics`` and no dangerous callables, inspected without
unpickling). The sha256 of the verified file is then recorded beside it (``<file>.sha256``)
and checked on every later :func:`fetch` (trust on first use).

This package never imports the model code; ``grounded_sam.weights`` is the public facade that
also registers the model's verifiers.
"""

from grounded_sam.errors import WeightsError
from grounded_sam.hub.cache import (
    fetch,
    fetch_hf,
    fetch_open_clip,
    is_cached,
    local_path,
    register_verifier,
)
from grounded_sam.hub.download import download
from grounded_sam.hub.env import cache_dir, is_offline, path, url_for
from grounded_sam.hub.registry import (
    FILE_KINDS,
    KINDS,
    WeightEntry,
    get,
    hub_entry,
    list,
    register,
    unregister,
)
from grounded_sam.hub.safety import check_ultralytics_file, load_state_dict

__all__ = [
    "FILE_KINDS",
    "KINDS",
    "WeightEntry",
    "WeightsError",
    "cache_dir",
    "check_ultralytics_file",
    "download",
    "fetch",
    "fetch_hf",
    "fetch_open_clip",
    "get",
    "hub_entry",
    "is_cached",
    "is_offline",
    "list",
    "load_state_dict",
    "local_path",
    "path",
    "register",
    "register_verifier",
    "unregister",
    "url_for",
]
