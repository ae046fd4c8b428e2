"""Where weights live and whether the network may be used; read at call time, never at import.

``GROUNDED_SAM_HOME``
    cache folder (default ``~/.cache/grounded_sam``). Files keep their registry filename,
    so the folder itself can be served as a mirror.
``GROUNDED_SAM_MIRROR``
    base URL; every registry *file* is fetched as ``<base>/<filename>`` instead of its
    upstream URL (``http://``, ``https://`` or ``file://``).
``GROUNDED_SAM_OFFLINE=1`` (or ``HF_HUB_OFFLINE=1``)
    never touch the network (``file://`` mirrors still work), for every model: SAM files,
    YOLO files, Grounding DINO and CLIP.
"""

from __future__ import annotations

import os
import urllib.parse
from pathlib import Path

from grounded_sam.errors import InputError
from grounded_sam.hub.registry import FILE_KINDS, get

__all__ = ["cache_dir", "is_local_url", "is_offline", "path", "url_for"]


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def is_offline() -> bool:
    """True when ``GROUNDED_SAM_OFFLINE`` or ``HF_HUB_OFFLINE`` is set to 1/true/yes/on."""
    return _truthy(os.environ.get("GROUNDED_SAM_OFFLINE")) or _truthy(
        os.environ.get("HF_HUB_OFFLINE")
    )


def cache_dir() -> Path:
    """The cache folder: ``$GROUNDED_SAM_HOME`` or ``~/.cache/grounded_sam`` (not created)."""
    home = os.environ.get("GROUNDED_SAM_HOME")
    if home:
        return Path(home).expanduser()
    return Path("~/.cache/grounded_sam").expanduser()


def url_for(name: str) -> str:
    """Where :func:`fetch` downloads ``name`` from: ``$GROUNDED_SAM_MIRROR/<filename>`` when the
    mirror is set, else the upstream URL. For hub entries, the hub page."""
    entry = get(name)
    mirror = os.environ.get("GROUNDED_SAM_MIRROR", "").strip()
    if mirror and entry.kind in FILE_KINDS:
        return f"{mirror.rstrip('/')}/{urllib.parse.quote(entry.filename)}"
    return entry.url


def path(name: str) -> Path:
    """Where the file for ``name`` lives in the cache (it may not exist yet).

    Raises:
        InputError: ``name`` is a hub entry (its files live in the library's own cache; use
            :func:`fetch`, which returns that location).
    """
    entry = get(name)
    if entry.kind not in FILE_KINDS:
        raise InputError(
            f"{name!r} is a {entry.kind} hub entry ({entry.hub_id}); its files live in the "
            "Hugging Face / open_clip cache, not in GROUNDED_SAM_HOME. Use weights.fetch(name)"
        )
    return cache_dir() / entry.filename


def is_local_url(url: str) -> bool:
    """True for ``file://`` URLs (allowed offline)."""
    return urllib.parse.urlsplit(url).scheme == "file"
