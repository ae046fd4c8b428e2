"""The cache: :func:`fetch` returns a verified local path, downloading when needed."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path

from grounded_sam.errors import InputError, WeightsError
from grounded_sam.hub.download import (
    download_fix,
    download_unlocked,
    lock_for,
    read_sidecar,
    sha256_file,
    sidecar,
    why_unusable,
    write_sidecar,
)
from grounded_sam.hub.env import is_local_url, is_offline, path, url_for
from grounded_sam.hub.external import fetch_hub
from grounded_sam.hub.registry import FILE_KINDS, WeightEntry, get, hub_entry
from grounded_sam.hub.safety import check_ultralytics_file, load_state_dict

__all__ = [
    "fetch",
    "fetch_hf",
    "fetch_open_clip",
    "is_cached",
    "local_path",
    "register_verifier",
]


def local_path(name: str) -> Path | None:
    """The local copy of ``name`` if present, else ``None``; never touches the network.

    File kinds: the cache file. Hub kinds: the library's cached snapshot folder / file.
    Presence only; :func:`fetch` also checks the recorded sha256."""
    entry = get(name)
    if entry.kind in FILE_KINDS:
        p = path(name)
        return p if p.is_file() else None
    try:
        return fetch_hub(entry, offline=True)
    except WeightsError:
        return None


def is_cached(name: str) -> bool:
    """True when :func:`local_path` finds a local copy of ``name``."""
    return local_path(name) is not None


# kind -> verify(entry, path, source); SAM's structural check is registered by
# grounded_sam.model (the hub never imports the model)
_VERIFIERS: dict[str, Callable[[WeightEntry, Path, str], None]] = {}


def register_verifier(
    kind: str, verify: Callable[[WeightEntry, Path, str], None] | None
) -> Callable[[WeightEntry, Path, str], None] | None:
    """Use ``verify(entry, path, source)`` (raising :class:`WeightsError`) to check files of
    ``kind`` that have no published sha256; ``None`` removes it. Returns the verifier it
    replaces. :mod:`grounded_sam.model` registers SAM's key and shape check for ``"sam"``;
    ultralytics files get :func:`check_ultralytics_file` unless another is registered."""
    if kind not in FILE_KINDS:
        raise InputError(f"verifiers apply to file kinds {FILE_KINDS}, got {kind!r}")
    previous = _VERIFIERS.pop(kind, None)
    if verify is not None:
        _VERIFIERS[kind] = verify
    return previous


def _verify(entry: WeightEntry, p: Path, source: str) -> None:
    """Structural verification of a downloaded or hand-placed file (raises WeightsError).

    Without a registered verifier a SAM file is still required to load safely as a state
    dict of tensors."""
    verify = _VERIFIERS.get(entry.kind)
    if verify is not None:
        try:
            verify(entry, p, source)
        except WeightsError as e:
            raise WeightsError(f"{source} failed verification for {entry.name!r}: {e}") from e
    elif entry.kind == "yolo":
        check_ultralytics_file(p, source)
    else:
        load_state_dict(p)  # raises WeightsError


# --------------------------------------------------------------------------- fetch


def _changed_error(entry: WeightEntry, p: Path, recorded: str, actual: str) -> WeightsError:
    return WeightsError(
        f"{p} for {entry.name!r} has changed since it was verified (sha256 recorded {recorded}, "
        f"now {actual}). Re-download it with `grounded-sam weights download {entry.name} --force` "
        f"or weights.fetch({entry.name!r}, force=True), or delete {p} and {sidecar(p)}"
    )


def _cache_folder_error(folder: Path, e: OSError) -> WeightsError:
    why = why_unusable(folder, e)
    home = os.environ.get("GROUNDED_SAM_HOME")
    if home:
        return WeightsError(
            f"GROUNDED_SAM_HOME={home!r} cannot be used as the weights cache: {why}. Point "
            "GROUNDED_SAM_HOME at a folder you can write (it is created when missing), or "
            "unset it to use ~/.cache/grounded_sam"
        )
    return WeightsError(
        f"the weights cache folder {str(folder)!r} cannot be used: {why}. Set "
        "GROUNDED_SAM_HOME to a folder you can write"
    )


@contextlib.contextmanager
def _cache_lock(dest: Path) -> Iterator[None]:
    """Create the cache folder of ``dest`` and hold its file lock; a cache folder that
    cannot be created or written raises :class:`WeightsError` naming ``GROUNDED_SAM_HOME``."""
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        lock = lock_for(dest)
        lock.acquire()
    except OSError as e:
        raise _cache_folder_error(dest.parent, e) from e
    try:
        yield
    finally:
        lock.release()


def fetch(name: str, *, force: bool = False) -> Path:
    """Local path of the weights called ``name``, downloading and verifying them when missing.

    File entries (``kind`` ``"sam"``/``"yolo"``) live in :func:`cache_dir` under their registry
    filename. A cached file is checked against the sha256 recorded when it was first verified
    (a changed file raises :class:`WeightsError` saying how to re-download); a file placed
    there by hand is verified on first use. A missing file is downloaded from
    :func:`url_for` (upstream, or ``$GROUNDED_SAM_MIRROR/<filename>``), verified by the
    published sha256 or else by structure, and renamed into place; a file lock makes
    concurrent fetches (threads or processes) download once.

    Hub entries (``kind`` ``"hf"``/``"open_clip"``) are downloaded by the owning library into
    its own cache (``HF_HOME``; ``GROUNDED_SAM_HOME`` and the mirror do not apply). The
    return value is then the local snapshot folder (``"hf"``: pass it to
    ``from_pretrained``) or the checkpoint file (``"open_clip"``: pass it as
    ``pretrained=``). Offline, only the library's existing cache is used.

    Args:
        name: registry name (see :func:`list`) or hub id.
        force: download again even if cached (the old file is replaced only on success).

    Raises:
        ValueError: unknown name.
        WeightsError: offline with nothing cached (names the model, the expected path and the
            URL), download/verification failure (the message says what to check: network,
            proxy, ``GROUNDED_SAM_MIRROR``, or where to put the file by hand), a changed
            cached file, or a ``GROUNDED_SAM_HOME`` that cannot be created or written.
    """
    entry = get(name)
    if entry.kind not in FILE_KINDS:
        return fetch_hub(entry, offline=is_offline())

    dest = path(entry.name)
    with _cache_lock(dest):
        if dest.is_file() and not force:
            actual = sha256_file(dest)
            recorded = read_sidecar(dest)
            expected = entry.sha256 or recorded
            if expected is not None and actual != expected:
                raise _changed_error(entry, dest, expected, actual)
            if recorded is None:  # placed by hand (e.g. copied to an offline machine)
                if entry.sha256 is None:
                    _verify(entry, dest, str(dest))
                write_sidecar(dest, actual)
            return dest

        url = url_for(entry.name)
        if is_offline() and not is_local_url(url):
            raise WeightsError(
                f"weights {entry.name!r} are not in the cache and offline mode "
                "(GROUNDED_SAM_OFFLINE/HF_HUB_OFFLINE) forbids downloading. Expected file: "
                f"{dest}. Fetch it by hand from {entry.url} and put it there, or point "
                "GROUNDED_SAM_MIRROR at a file:// folder that holds it"
            )

        def verify(p: Path) -> None:
            if entry.sha256 is None:
                _verify(entry, p, url)
            # verified: drop the old record just before the rename, so a crash between the
            # rename and the new record leaves a file re-verified on next use, never one
            # compared against a stale digest; a failed download keeps both old files
            with contextlib.suppress(FileNotFoundError):
                sidecar(dest).unlink()

        mirror = os.environ.get("GROUNDED_SAM_MIRROR", "").strip()
        fix = download_fix(
            url,
            dest,
            f"check that GROUNDED_SAM_MIRROR ({mirror}) holds {dest.name}, "
            if mirror
            else f"set GROUNDED_SAM_MIRROR to a server or file:// folder that holds {dest.name}, ",
        )
        try:
            digest = download_unlocked(url, dest, entry.sha256, verify, fix)
        except (PermissionError, FileNotFoundError) as e:  # the cache folder, not the network
            raise _cache_folder_error(dest.parent, e) from e
        write_sidecar(dest, digest)
        return dest


def fetch_hf(model: str) -> Path:
    """Local snapshot folder of a Hugging Face model: a registry name
    (``"grounding-dino-tiny"``) or any hub id (``"org/name"``), offline-aware.

    Offline (``GROUNDED_SAM_OFFLINE``/``HF_HUB_OFFLINE``) only the Hugging Face cache is
    used and a miss raises :class:`WeightsError` at once, naming the model and how to fetch
    it; the network is never touched.
    """
    entry = hub_entry("hf", model)
    return fetch_hub(entry, offline=is_offline())


def fetch_open_clip(model: str, tag: str) -> Path:
    """The weights file of open_clip ``model`` with pretrained ``tag`` (registered or not),
    through open_clip's hub cache, offline-aware like every other model."""
    return fetch_hub(hub_entry("open_clip", f"{model}/{tag}"), offline=is_offline())
