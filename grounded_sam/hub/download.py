"""Locked, atomic, verified downloads, and the sha256 sidecars that record verified files."""

from __future__ import annotations

import contextlib
import hashlib
import os
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from http.client import HTTPException
from pathlib import Path
from typing import IO

from grounded_sam._files import file_mode
from grounded_sam.errors import InputError, WeightsError
from grounded_sam.hub.env import is_local_url, is_offline

__all__ = ["download", "lock_for", "read_sidecar", "sha256_file", "sidecar", "write_sidecar"]

_CHUNK = 1 << 20
_TIMEOUT_S = 60.0


def sidecar(p: Path) -> Path:
    """``<file>.sha256``: the digest recorded when ``p`` was verified (``sha256sum -c`` format)."""
    return p.with_name(p.name + ".sha256")


def lock_for(p: Path):
    """A file lock (``<dir>/.locks/<name>.lock``) serialising writers of ``p``."""
    from filelock import FileLock

    lock_dir = p.parent / ".locks"
    lock_dir.mkdir(parents=True, exist_ok=True)
    return FileLock(str(lock_dir / (p.name + ".lock")))


def sha256_file(p: Path) -> str:
    h = hashlib.sha256()
    with open(p, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def why_unusable(folder: Path, e: OSError) -> str:
    """Why ``folder`` cannot be created or written, in words."""
    for p in (folder, *folder.parents):
        if p.exists():
            if not p.is_dir():
                return f"{p} is a file, not a folder"
            break
    if isinstance(e, PermissionError):
        return "permission denied"
    return e.strerror or str(e)


def read_sidecar(p: Path) -> str | None:
    side = sidecar(p)
    if not side.is_file():
        return None
    text = side.read_text(encoding="utf-8").split()
    digest = text[0].lower() if text else ""
    if len(digest) != 64:
        return None
    return digest


def write_sidecar(p: Path, digest: str) -> None:
    side = sidecar(p)
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{side.name}.", suffix=".part")
    try:
        os.fchmod(fd, file_mode())
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(f"{digest}  {p.name}\n")
        os.replace(tmp, side)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def _progress(total: int | None, desc: str) -> Iterator[Callable[[int], object]]:
    """Yields an ``update(n_bytes)`` callable: a tqdm bar on stderr only when it is a terminal."""
    if not sys.stderr.isatty():
        yield lambda n: None
        return
    from tqdm import tqdm

    with tqdm(
        total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024, file=sys.stderr
    ) as bar:
        yield bar.update


def _stream(url: str, out: IO[bytes], desc: str, fix: str = "") -> int:
    """Copy ``url`` into ``out``; return the byte count. Raises WeightsError on any failure;
    ``fix`` (what the user can do) ends the message when the URL cannot be opened."""
    fix = f"; {fix}" if fix else ""
    try:
        resp = urllib.request.urlopen(url, timeout=_TIMEOUT_S)  # noqa: S310 - http/https/file only
    except urllib.error.HTTPError as e:
        raise WeightsError(f"download failed: HTTP {e.code} {e.reason} for {url}{fix}") from e
    except (urllib.error.URLError, OSError, ValueError, HTTPException) as e:
        reason = getattr(e, "reason", e)
        raise WeightsError(f"download failed: cannot open {url} ({reason}){fix}") from e
    with resp:
        length = resp.headers.get("Content-Length")
        expected = int(length) if length and length.isdigit() else None
        received = 0
        try:
            with _progress(expected, desc) as update:
                while chunk := resp.read(_CHUNK):
                    out.write(chunk)
                    received += len(chunk)
                    update(len(chunk))
        except (OSError, HTTPException) as e:
            raise WeightsError(
                f"download of {url} was interrupted after {received} bytes"
                + (f" of {expected}" if expected is not None else "")
                + f" ({type(e).__name__}: {e}); nothing was kept, try again"
            ) from e
    if expected is not None and received != expected:
        raise WeightsError(
            f"download of {url} is truncated: got {received} bytes, the server announced "
            f"{expected}; nothing was kept, try again"
        )
    if received == 0:
        raise WeightsError(f"download of {url} returned an empty file; nothing was kept")
    return received


def download_fix(url: str, dest: Path, alternative: str = "") -> str:
    """What to do when ``url`` cannot be downloaded to ``dest`` (ends the error message);
    ``alternative`` (e.g. about a mirror) is offered before downloading by hand."""
    if is_local_url(url):
        return f"{alternative}or copy the file by hand to {dest}"
    return (
        "check the network connection and proxy settings (HTTPS_PROXY/HTTP_PROXY), "
        f"{alternative}or download {url} by hand to {dest}"
    )


def download_unlocked(
    url: str,
    dest: Path,
    sha256: str | None,
    verify: Callable[[Path], None] | None,
    fix: str | None = None,
) -> str:
    """Download to a temp file beside ``dest``, check sha256 and ``verify``, rename into place.

    Returns the sha256 of the file. On any failure the temp file is removed and ``dest`` is
    left untouched. ``fix`` ends the message of a download that cannot start (default:
    :func:`download_fix`).
    """
    if is_offline() and not is_local_url(url):
        raise WeightsError(
            f"offline mode (GROUNDED_SAM_OFFLINE/HF_HUB_OFFLINE) forbids downloading {url} "
            f"to {dest}; fetch it by hand and put it there, or unset the variable"
        )
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        os.fchmod(fd, file_mode())  # mkstemp's 0600 would lock others out of a shared cache
        h = hashlib.sha256()

        class _HashingWriter:
            def __init__(self, f: IO[bytes]) -> None:
                self.f = f

            def write(self, b: bytes) -> int:
                h.update(b)
                return self.f.write(b)

        with os.fdopen(fd, "wb") as f:
            _stream(  # type: ignore[arg-type]
                url, _HashingWriter(f), desc=dest.name, fix=fix or download_fix(url, dest)
            )
            f.flush()
            os.fsync(f.fileno())
        digest = h.hexdigest()
        if sha256 is not None and digest != sha256.lower():
            raise WeightsError(
                f"sha256 mismatch for {url}: expected {sha256.lower()}, got {digest}; the file "
                "is corrupt or was replaced upstream/on the mirror. Nothing was kept"
            )
        if verify is not None:
            verify(tmp)
        os.replace(tmp, dest)
        return digest
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def download(url: str, dest: str | os.PathLike, sha256: str | None = None) -> Path:
    """Download ``url`` to ``dest`` atomically and return ``dest`` as a Path.

    The body streams (tqdm bar on stderr when it is a terminal) into a temporary file beside
    ``dest``; a sha256 mismatch, HTTP error, interruption or truncation (fewer bytes than the
    announced ``Content-Length``) raises :class:`WeightsError` and leaves nothing behind (an
    existing ``dest`` is kept). A file lock (``<dir>/.locks/<name>.lock``) serialises
    concurrent downloads of the same ``dest``. If ``sha256`` is given and ``dest`` already
    has that digest, nothing is downloaded. ``http(s)://`` and ``file://`` URLs work; in
    offline mode only ``file://``.
    """
    dest = Path(dest).expanduser()
    if sha256 is not None and (
        len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256.lower())
    ):
        raise InputError(f"sha256 must be 64 hex digits, got {sha256!r}")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        lock_for(dest)  # creates the lock folder
    except OSError as e:
        raise InputError(
            f"cannot download to {str(dest)!r}: {why_unusable(dest.parent, e)}; pass a "
            "destination in a folder you can write"
        ) from e
    with lock_for(dest):
        if sha256 is not None and dest.is_file() and sha256_file(dest) == sha256.lower():
            return dest
        download_unlocked(url, dest, sha256, verify=None)
    return dest
