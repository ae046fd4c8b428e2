"""Checkpoint registry, cache, verified download and safe loading.

One registry (:func:`list`, :func:`get`) describes every model file the framework uses.
:func:`fetch` returns a verified local path, downloading into the cache when needed;
:func:`download` is the low-level atomic, locked, optionally sha256-checked downloader.

Environment variables (read at call time, never at import):

``GROUNDED_SAM_HOME``
    cache folder (default ``~/.cache/grounded_sam``). Files keep their registry filename,
    so the folder itself can be served as a mirror.
``GROUNDED_SAM_MIRROR``
    base URL; every registry *file* is fetched as ``<base>/<filename>`` instead of its
    upstream URL (``http://``, ``https://`` or ``file://``).
``GROUNDED_SAM_OFFLINE=1`` (or ``HF_HUB_OFFLINE=1``)
    never touch the network (``file://`` mirrors still work); a missing file raises
    :class:`WeightsError` naming the model, the path expected and the URL to fetch by hand.

Verification: a sha256 is checked only where a first-party source publishes one (none of
the current file entries has one; we never invent checksums). Otherwise the downloaded file
is verified by structure (SAM: loads with ``weights_only=True`` and its keys/shapes match
the variant; ultralytics: a torch zip archive whose pickle references ``ultralytics`` and
no obviously dangerous callables). The sha256 of the verified file is then recorded beside
it (``<file>.sha256``, ``sha256sum -c`` format) and checked on every later :func:`fetch`
(trust on first use).
"""

from __future__ import annotations

import builtins
import contextlib
import difflib
import hashlib
import os
import pickle
import pickletools
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.client import HTTPException
from pathlib import Path
from typing import IO, Literal

import torch

__all__ = [
    "WeightEntry",
    "WeightsError",
    "list",
    "get",
    "register",
    "fetch",
    "download",
    "cache_dir",
    "path",
    "is_cached",
    "local_path",
    "is_offline",
    "url_for",
    "load_state_dict",
]

Kind = Literal["sam", "yolo", "hf", "open_clip"]
_FILE_KINDS = ("sam", "yolo")
_CHUNK = 1 << 20
_TIMEOUT_S = 60.0


class WeightsError(ValueError):
    """A weights problem the user can fix: unknown name, offline miss, failed, truncated or
    corrupt download, or a cached file that changed since it was verified.

    Subclasses ``ValueError`` so the CLI reports it as bad input (exit code 2).
    """


@dataclass(frozen=True)
class WeightEntry:
    """One model file (or hub model) the framework can use.

    Attributes:
        name: registry name, e.g. ``"vit_b"``, ``"FastSAM-s"``, ``"grounding-dino-tiny"``.
        kind: ``"sam"`` (SAM/MobileSAM state dict), ``"yolo"`` (ultralytics ``.pt`` pickle),
            ``"hf"`` (Hugging Face hub repo, cached by ``huggingface_hub``) or ``"open_clip"``
            (open_clip pretrained tag, cached by open_clip / ``huggingface_hub``).
        url: upstream download URL (file kinds) or the hub page (hub kinds).
        filename: file name in the cache and on mirrors; ``None`` for hub kinds.
        sha256: hex digest published by a first-party source, or ``None`` (then the file is
            verified by structure and trusted on first use).
        size_mb: approximate download size in MB (10**6 bytes), for display only.
        license: licence of the weights.
        source: page that documents the weights.
        hub_id: ``"org/repo"`` for ``"hf"``, ``"MODEL/TAG"`` for ``"open_clip"``, else ``None``.
        notes: free text, e.g. what the hash-like part of a filename is (not a sha256).
    """

    name: str
    kind: Kind
    url: str
    filename: str | None
    sha256: str | None
    size_mb: float | None
    license: str
    source: str
    hub_id: str | None = None
    notes: str = ""

    def __post_init__(self) -> None:
        if self.kind not in ("sam", "yolo", "hf", "open_clip"):
            raise ValueError(
                f"WeightEntry.kind must be one of 'sam', 'yolo', 'hf', 'open_clip', got {self.kind!r}"
            )
        if self.kind in _FILE_KINDS and not self.filename:
            raise ValueError(f"WeightEntry {self.name!r} of kind {self.kind!r} needs a filename")
        if self.kind in _FILE_KINDS and (
            "/" in self.filename or "\\" in self.filename or self.filename.startswith(".")
        ):
            raise ValueError(
                f"WeightEntry.filename must be a plain file name, got {self.filename!r}"
            )
        if self.kind not in _FILE_KINDS and not self.hub_id:
            raise ValueError(f"WeightEntry {self.name!r} of kind {self.kind!r} needs a hub_id")
        if self.sha256 is not None and (
            len(self.sha256) != 64 or any(c not in "0123456789abcdef" for c in self.sha256)
        ):
            raise ValueError(
                f"WeightEntry.sha256 must be 64 lowercase hex digits or None, got {self.sha256!r}"
            )


_META_SAM = "https://github.com/facebookresearch/segment-anything#model-checkpoints"
_UL_ASSETS = "https://github.com/ultralytics/assets/releases/download/v8.3.0/"
_UL_NOTE = (
    "ultralytics checkpoint: a pickle of model objects; loaded only from the registry URL, "
    "the mirror, or a path the user names"
)
_HASH_PREFIX_NOTE = (
    "the hex part of the filename is a short hash prefix chosen by Meta, not a published "
    "sha256 of the file; verified by structure instead"
)


def _sam(name: str, filename: str, size_mb: float) -> WeightEntry:
    return WeightEntry(
        name=name,
        kind="sam",
        url=f"https://dl.fbaipublicfiles.com/segment_anything/{filename}",
        filename=filename,
        sha256=None,
        size_mb=size_mb,
        license="Apache-2.0",
        source=_META_SAM,
        notes=_HASH_PREFIX_NOTE,
    )


def _yolo(name: str, size_mb: float, source: str) -> WeightEntry:
    return WeightEntry(
        name=name,
        kind="yolo",
        url=f"{_UL_ASSETS}{name}.pt",
        filename=f"{name}.pt",
        sha256=None,
        size_mb=size_mb,
        license="AGPL-3.0",
        source=source,
        notes=_UL_NOTE,
    )


_FASTSAM_PAGE = "https://docs.ultralytics.com/models/fast-sam/"
_YOLOV8_PAGE = "https://docs.ultralytics.com/models/yolov8/"

_BUILTIN: tuple[WeightEntry, ...] = (
    _sam("vit_b", "sam_vit_b_01ec64.pth", 375.0),
    _sam("vit_l", "sam_vit_l_0b3195.pth", 1250.0),
    _sam("vit_h", "sam_vit_h_4b8939.pth", 2560.0),
    WeightEntry(
        name="mobile_sam",
        kind="sam",
        url="https://github.com/ChaoningZhang/MobileSAM/raw/master/weights/mobile_sam.pt",
        filename="mobile_sam.pt",
        sha256=None,
        size_mb=40.0,
        license="Apache-2.0",
        source="https://github.com/ChaoningZhang/MobileSAM",
    ),
    _yolo("FastSAM-s", 24.0, _FASTSAM_PAGE),
    _yolo("FastSAM-x", 145.0, _FASTSAM_PAGE),
    _yolo("yolov8n-seg", 7.0, _YOLOV8_PAGE),
    _yolo("yolov8s-seg", 24.0, _YOLOV8_PAGE),
    _yolo("yolov8m-seg", 55.0, _YOLOV8_PAGE),
    _yolo("yolov8l-seg", 92.0, _YOLOV8_PAGE),
    _yolo("yolov8x-seg", 144.0, _YOLOV8_PAGE),
    WeightEntry(
        name="grounding-dino-tiny",
        kind="hf",
        url="https://huggingface.co/IDEA-Research/grounding-dino-tiny",
        filename=None,
        sha256=None,
        size_mb=690.0,
        license="Apache-2.0",
        source="https://huggingface.co/IDEA-Research/grounding-dino-tiny",
        hub_id="IDEA-Research/grounding-dino-tiny",
        notes="downloaded and cached by huggingface_hub (HF_HOME); integrity checked by the hub",
    ),
    WeightEntry(
        name="grounding-dino-base",
        kind="hf",
        url="https://huggingface.co/IDEA-Research/grounding-dino-base",
        filename=None,
        sha256=None,
        size_mb=930.0,
        license="Apache-2.0",
        source="https://huggingface.co/IDEA-Research/grounding-dino-base",
        hub_id="IDEA-Research/grounding-dino-base",
        notes="downloaded and cached by huggingface_hub (HF_HOME); integrity checked by the hub",
    ),
    WeightEntry(
        name="clip-ViT-B-32-openai",
        kind="open_clip",
        url="https://huggingface.co/timm/vit_base_patch32_clip_224.openai",
        filename=None,
        sha256=None,
        size_mb=605.0,
        license="MIT",
        source="https://github.com/openai/CLIP",
        hub_id="ViT-B-32/openai",
        notes="downloaded and cached by open_clip via huggingface_hub (HF_HOME)",
    ),
    WeightEntry(
        name="clip-ViT-B-16-openai",
        kind="open_clip",
        url="https://huggingface.co/timm/vit_base_patch16_clip_224.openai",
        filename=None,
        sha256=None,
        size_mb=599.0,
        license="MIT",
        source="https://github.com/openai/CLIP",
        hub_id="ViT-B-16/openai",
        notes="downloaded and cached by open_clip via huggingface_hub (HF_HOME)",
    ),
    WeightEntry(
        name="clip-ViT-L-14-openai",
        kind="open_clip",
        url="https://huggingface.co/timm/vit_large_patch14_clip_224.openai",
        filename=None,
        sha256=None,
        size_mb=1710.0,
        license="MIT",
        source="https://github.com/openai/CLIP",
        hub_id="ViT-L-14/openai",
        notes="downloaded and cached by open_clip via huggingface_hub (HF_HOME)",
    ),
)

_REGISTRY: dict[str, WeightEntry] = {e.name: e for e in _BUILTIN}


# --------------------------------------------------------------------------- registry


def list(kind: str | None = None) -> builtins.list[WeightEntry]:  # noqa: A001 - public API name
    """All registry entries, in registration order; only those of ``kind`` when given.

    Args:
        kind: ``None`` or one of ``"sam"``, ``"yolo"``, ``"hf"``, ``"open_clip"``.
    """
    if kind is not None and kind not in ("sam", "yolo", "hf", "open_clip"):
        raise ValueError(
            f"kind must be one of 'sam', 'yolo', 'hf', 'open_clip' or None, got {kind!r}"
        )
    return [e for e in _REGISTRY.values() if kind is None or e.kind == kind]


def get(name: str) -> WeightEntry:
    """The registry entry called ``name`` (a hub id such as ``"IDEA-Research/grounding-dino-tiny"``
    or ``"ViT-B-32/openai"`` also works).

    Raises:
        ValueError: unknown name; the message lists the valid names.
    """
    if not isinstance(name, str):
        raise TypeError(f"weights name must be a str, got {type(name).__name__}")
    entry = _REGISTRY.get(name)
    if entry is not None:
        return entry
    for e in _REGISTRY.values():
        if e.hub_id is not None and e.hub_id == name:
            return e
    names = builtins.list(_REGISTRY)
    close = difflib.get_close_matches(name, names, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise ValueError(f"unknown weights {name!r}; valid names: {', '.join(names)}.{hint}")


def register(entry: WeightEntry, *, overwrite: bool = False) -> None:
    """Add ``entry`` to the registry (e.g. a fine-tuned SAM checkpoint on an internal server).

    Raises:
        ValueError: an entry with the same name exists and ``overwrite`` is False.
    """
    if not isinstance(entry, WeightEntry):
        raise TypeError(f"register() expects a WeightEntry, got {type(entry).__name__}")
    if entry.name in _REGISTRY and not overwrite:
        raise ValueError(f"weights {entry.name!r} are already registered; pass overwrite=True")
    _REGISTRY[entry.name] = entry


# --------------------------------------------------------------------------- environment


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
    if mirror and entry.kind in _FILE_KINDS:
        return f"{mirror.rstrip('/')}/{urllib.parse.quote(entry.filename)}"
    return entry.url


def path(name: str) -> Path:
    """Where the file for ``name`` lives in the cache (it may not exist yet).

    Raises:
        ValueError: ``name`` is a hub entry (its files live in the library's own cache; use
            :func:`fetch`, which returns that location).
    """
    entry = get(name)
    if entry.kind not in _FILE_KINDS:
        raise ValueError(
            f"{name!r} is a {entry.kind} hub entry ({entry.hub_id}); its files live in the "
            "Hugging Face / open_clip cache, not in GROUNDED_SAM_HOME. Use weights.fetch(name)"
        )
    return cache_dir() / entry.filename


def _sidecar(p: Path) -> Path:
    return p.with_name(p.name + ".sha256")


def _lock_for(p: Path):
    from filelock import FileLock

    lock_dir = p.parent / ".locks"
    lock_dir.mkdir(parents=True, exist_ok=True)
    return FileLock(str(lock_dir / (p.name + ".lock")))


def local_path(name: str) -> Path | None:
    """The local copy of ``name`` if present, else ``None``; never touches the network.

    File kinds: the cache file. Hub kinds: the library's cached snapshot folder / file.
    Presence only; :func:`fetch` also checks the recorded sha256."""
    entry = get(name)
    if entry.kind in _FILE_KINDS:
        p = path(name)
        return p if p.is_file() else None
    try:
        return _fetch_hub(entry, offline=True)
    except WeightsError:
        return None


def is_cached(name: str) -> bool:
    """True when :func:`local_path` finds a local copy of ``name``."""
    return local_path(name) is not None


# --------------------------------------------------------------------------- hashing / download


def _sha256_file(p: Path) -> str:
    h = hashlib.sha256()
    with open(p, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _read_sidecar(p: Path) -> str | None:
    side = _sidecar(p)
    if not side.is_file():
        return None
    text = side.read_text(encoding="utf-8").split()
    digest = text[0].lower() if text else ""
    if len(digest) != 64:
        return None
    return digest


def _write_sidecar(p: Path, digest: str) -> None:
    side = _sidecar(p)
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{side.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(f"{digest}  {p.name}\n")
        os.replace(tmp, side)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _is_local_url(url: str) -> bool:
    return urllib.parse.urlsplit(url).scheme == "file"


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


def _stream(url: str, out: IO[bytes], desc: str) -> int:
    """Copy ``url`` into ``out``; return the byte count. Raises WeightsError on any failure."""
    try:
        resp = urllib.request.urlopen(url, timeout=_TIMEOUT_S)  # noqa: S310 - http/https/file only
    except urllib.error.HTTPError as e:
        raise WeightsError(f"download failed: HTTP {e.code} {e.reason} for {url}") from e
    except (urllib.error.URLError, OSError, ValueError, HTTPException) as e:
        reason = getattr(e, "reason", e)
        raise WeightsError(f"download failed: cannot open {url} ({reason})") from e
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


def _download_unlocked(
    url: str,
    dest: Path,
    sha256: str | None,
    verify: Callable[[Path], None] | None,
) -> str:
    """Download to a temp file beside ``dest``, check sha256 and ``verify``, rename into place.

    Returns the sha256 of the file. On any failure the temp file is removed and ``dest`` is
    left untouched.
    """
    if is_offline() and not _is_local_url(url):
        raise WeightsError(
            f"offline mode (GROUNDED_SAM_OFFLINE/HF_HUB_OFFLINE) forbids downloading {url} "
            f"to {dest}; fetch it by hand and put it there, or unset the variable"
        )
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        h = hashlib.sha256()

        class _HashingWriter:
            def __init__(self, f: IO[bytes]) -> None:
                self.f = f

            def write(self, b: bytes) -> int:
                h.update(b)
                return self.f.write(b)

        with os.fdopen(fd, "wb") as f:
            _stream(url, _HashingWriter(f), desc=dest.name)  # type: ignore[arg-type]
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
        raise ValueError(f"sha256 must be 64 hex digits, got {sha256!r}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    with _lock_for(dest):
        if sha256 is not None and dest.is_file() and _sha256_file(dest) == sha256.lower():
            return dest
        _download_unlocked(url, dest, sha256, verify=None)
    return dest


# --------------------------------------------------------------------------- verification


def _check_sam_state_dict(name: str, state_dict: dict[str, torch.Tensor], source: str) -> None:
    """Keys/shapes of ``state_dict`` match SAM variant ``name`` (raises ValueError otherwise)."""
    from grounded_sam.model.build import check_state_dict

    check_state_dict(name, state_dict, source)


# Callables an ultralytics checkpoint never needs; their presence means tampering. This is a
# sanity check, not a security boundary: provenance (registry URL / mirror) is.
_DANGEROUS_MODULES = frozenset(
    {
        "os", "posix", "nt", "subprocess", "sys", "shutil", "socket", "importlib", "runpy",
        "pty", "ctypes", "code", "codeop", "pdb", "webbrowser", "multiprocessing", "asyncio",
        "signal", "tempfile", "urllib", "http", "requests", "pickle", "_pickle", "marshal",
        "dill", "cloudpickle", "platform", "threading", "io", "_io", "glob", "commands",
        "popen2", "operator", "inspect", "sysconfig",
    }
)  # fmt: skip
_DANGEROUS_BUILTINS = frozenset(
    {
        "eval", "exec", "compile", "open", "__import__", "getattr", "setattr", "delattr",
        "globals", "locals", "vars", "input", "breakpoint", "exit", "quit", "help",
        "memoryview", "classmethod", "staticmethod", "property", "super", "type", "object",
    }
)  # fmt: skip


_TORCH_BAD = ("torch.hub", "torch.utils.cpp_extension", "torch.jit", "torch.serialization")


def _pickle_globals(data: bytes) -> builtins.list[tuple[str, str]]:
    """(module, name) of every global a pickle references, without unpickling it."""
    found: builtins.list[tuple[str, str]] = []
    memo: dict[int, object] = {}
    recent: builtins.list[object] = []  # last pushed values, enough to resolve STACK_GLOBAL
    string_ops = {
        "SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "SHORT_BINSTRING",
        "BINSTRING", "STRING",
    }  # fmt: skip
    for op, arg, _pos in pickletools.genops(data):
        if op.name == "GLOBAL":
            module, _, name = str(arg).partition(" ")
            found.append((module, name))
            recent.append(None)
        elif op.name == "STACK_GLOBAL":
            if len(recent) < 2 or not all(isinstance(v, str) for v in recent[-2:]):
                raise ValueError("a global whose name cannot be resolved statically")
            found.append((str(recent[-2]), str(recent[-1])))
            recent.append(None)
        elif op.name in string_ops:
            recent.append(str(arg))
        elif op.name == "MEMOIZE":
            memo[len(memo)] = recent[-1] if recent else None
        elif op.name in ("PUT", "BINPUT", "LONG_BINPUT"):
            memo[int(arg)] = recent[-1] if recent else None
        elif op.name in ("GET", "BINGET", "LONG_BINGET"):
            recent.append(memo.get(int(arg)))
        else:
            recent.append(None)
        if len(recent) > 8:
            del recent[:-8]
    return found


def _check_ultralytics_file(p: Path, source: str) -> None:
    """A torch zip archive whose pickle references ``ultralytics`` and nothing dangerous.

    Nothing is unpickled. Raises WeightsError otherwise.
    """
    try:
        with zipfile.ZipFile(p) as zf:
            pkls = [n for n in zf.namelist() if n == "data.pkl" or n.endswith("/data.pkl")]
            if len(pkls) != 1:
                raise WeightsError(
                    f"{source} is not a torch checkpoint archive (expected one data.pkl, "
                    f"found {len(pkls)})"
                )
            bad = zf.testzip()
            if bad is not None:
                raise WeightsError(f"{source} is corrupt (bad CRC in member {bad!r})")
            data = zf.read(pkls[0])
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise WeightsError(
            f"{source} is not a readable torch checkpoint (truncated or wrong format: {e})"
        ) from e
    try:
        refs = _pickle_globals(data)
    except Exception as e:  # noqa: BLE001 - any parse failure means a malformed pickle
        raise WeightsError(f"{source} holds a malformed pickle ({e})") from e
    for module, name in refs:
        root = module.split(".")[0]
        parts = name.split(".")
        if (
            root in _DANGEROUS_MODULES
            or len(parts) > 1  # attribute traversal (protocol 4), e.g. "Path.write_text"
            or (root in ("builtins", "__builtin__") and name in _DANGEROUS_BUILTINS)
            or (root == "types" and name != "SimpleNamespace")
            or (root == "torch" and (name in ("load", "save") or module.startswith(_TORCH_BAD)))
        ):
            raise WeightsError(
                f"refusing {source}: its pickle references {module}.{name}, which no "
                "ultralytics checkpoint needs (the file may be tampered with); nothing was run"
            )
    if not any(m.split(".")[0] == "ultralytics" for m, _ in refs):
        raise WeightsError(
            f"{source} is a torch pickle but not an ultralytics checkpoint (no ultralytics classes)"
        )


def _verify(entry: WeightEntry, p: Path, source: str) -> None:
    """Structural verification of a downloaded or hand-placed file (raises WeightsError)."""
    if entry.kind == "sam":
        try:
            sd = load_state_dict(p)
            _check_sam_state_dict(entry.name, sd, source)
        except WeightsError:
            raise
        except ValueError as e:
            raise WeightsError(f"{source} failed verification for {entry.name!r}: {e}") from e
    elif entry.kind == "yolo":
        _check_ultralytics_file(p, source)


# --------------------------------------------------------------------------- fetch


def _changed_error(entry: WeightEntry, p: Path, recorded: str, actual: str) -> WeightsError:
    return WeightsError(
        f"{p} for {entry.name!r} has changed since it was verified (sha256 recorded {recorded}, "
        f"now {actual}). Re-download it with `grounded-sam weights download {entry.name} --force` "
        f"or weights.fetch({entry.name!r}, force=True), or delete {p} and {_sidecar(p)}"
    )


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
            URL), download/verification failure, or a changed cached file.
    """
    entry = get(name)
    if entry.kind not in _FILE_KINDS:
        return _fetch_hub(entry, offline=is_offline())

    dest = path(entry.name)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with _lock_for(dest):
        if dest.is_file() and not force:
            actual = _sha256_file(dest)
            recorded = _read_sidecar(dest)
            expected = entry.sha256 or recorded
            if expected is not None and actual != expected:
                raise _changed_error(entry, dest, expected, actual)
            if recorded is None:  # placed by hand (e.g. copied to an offline machine)
                if entry.sha256 is None:
                    _verify(entry, dest, str(dest))
                _write_sidecar(dest, actual)
            return dest

        url = url_for(entry.name)
        if is_offline() and not _is_local_url(url):
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
                _sidecar(dest).unlink()

        digest = _download_unlocked(url, dest, entry.sha256, verify)
        _write_sidecar(dest, digest)
        return dest


def _fetch_hub(entry: WeightEntry, *, offline: bool) -> Path:
    """Resolve a hub entry through its library's cache (download unless ``offline``)."""
    hint = (
        f"run `grounded-sam weights download {entry.name}` on a machine with internet and "
        "copy its HF_HOME cache, or unset GROUNDED_SAM_OFFLINE/HF_HUB_OFFLINE"
    )
    if entry.kind == "hf":
        try:
            from huggingface_hub import snapshot_download
        except ImportError as e:  # pragma: no cover - a dependency of transformers
            raise WeightsError("huggingface_hub is required: pip install huggingface_hub") from e
        try:
            local = snapshot_download(entry.hub_id, local_files_only=offline)
        except Exception as e:  # noqa: BLE001 - hub raises many types; report one clearly
            if offline:
                raise WeightsError(
                    f"weights {entry.name!r} ({entry.hub_id}) are not in the Hugging Face cache "
                    f"and offline mode forbids downloading from {entry.url}; {hint}"
                ) from e
            raise WeightsError(
                f"could not download {entry.hub_id} from the Hugging Face hub ({e})"
            ) from e
        return Path(local)

    # open_clip
    model, _, tag = entry.hub_id.partition("/")
    try:
        from open_clip import pretrained as oc_pretrained
    except ImportError as e:
        raise WeightsError("open_clip is required: pip install open_clip_torch") from e
    cfg = oc_pretrained.get_pretrained_cfg(model, tag)
    if not cfg:
        raise WeightsError(f"open_clip has no pretrained tag {tag!r} for model {model!r}")
    hf_hub = cfg.get("hf_hub", "")
    if hf_hub:
        from huggingface_hub import try_to_load_from_cache

        repo_id, filename = os.path.split(hf_hub)
        filename = filename or "open_clip_pytorch_model.bin"
        candidates = [filename]
        if filename.endswith((".bin", ".pth")):
            candidates.insert(
                0,
                "open_clip_model.safetensors"
                if filename == "open_clip_pytorch_model.bin"
                else filename[:-4] + ".safetensors",
            )
        for fn in candidates:
            hit = try_to_load_from_cache(repo_id, fn)
            if isinstance(hit, str):
                return Path(hit)
    if offline:
        raise WeightsError(
            f"weights {entry.name!r} (open_clip {model} {tag}) are not in the local cache and "
            f"offline mode forbids downloading from {entry.url}; {hint}"
        )
    try:
        target = oc_pretrained.download_pretrained(cfg)
    except Exception as e:  # noqa: BLE001
        raise WeightsError(f"could not download open_clip {model} {tag} ({e})") from e
    if not target:
        raise WeightsError(f"open_clip returned no file for {model} {tag}")
    return Path(target)


# --------------------------------------------------------------------------- safe loading


def load_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Load a checkpoint file safely (``weights_only=True``) on the CPU.

    Accepts a plain state dict or a dict wrapping one under ``"model"`` or ``"state_dict"``.
    Pickled objects other than tensors/containers are refused by torch's restricted
    unpickler before any of their code runs.

    Returns:
        ``{key: tensor}`` with CPU tensors as stored (dtype unchanged).

    Raises:
        ValueError: the file is missing, empty, truncated, not a torch checkpoint, or holds
            pickled objects other than tensors (their code is never run).
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"checkpoint not found: {str(path)!r}")
    if path.stat().st_size == 0:
        raise ValueError(
            f"checkpoint {str(path)!r} is empty (0 bytes); delete it and download it again"
        )
    with open(path, "rb") as f:
        head = f.read(2)
    # torch.save writes a zip archive (or, before torch 1.6, a pickle starting with PROTO 2)
    if not zipfile.is_zipfile(path) and head != b"\x80\x02":
        raise ValueError(
            f"{str(path)!r} is not a readable torch checkpoint (truncated or wrong format: "
            f"not a zip archive, starts with {head!r}); delete it and download it again"
        )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        text = str(e)
        if "Weights only load failed" not in text:
            raise ValueError(
                f"{str(path)!r} is not a readable torch checkpoint (corrupt pickle: "
                f"{text.splitlines()[0][:200]}); delete it and download it again"
            ) from e
        detail = next(
            (
                ln.split("error:", 1)[1].strip()
                for ln in text.splitlines()
                if "Unpickler error:" in ln
            ),
            "",
        )
        detail = detail.split(". ")[0][:200]
        raise ValueError(
            f"refusing to load {str(path)!r}: it contains pickled objects other than tensors, "
            f"which could run arbitrary code ({detail or 'weights_only=True refused it'}); "
            "nothing in it was run. Use an official checkpoint, or re-save the state dict with "
            "torch.save(model.state_dict(), path)"
        ) from e
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as e:
        raise ValueError(
            f"{str(path)!r} is not a readable torch checkpoint (truncated or wrong format: "
            f"{str(e).splitlines()[0][:200]}); delete it and download it again"
        ) from e
    if isinstance(obj, dict):
        for key in ("model", "state_dict"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(
            f"{str(path)!r} does not hold a state dict of tensors (got {type(obj).__name__}); "
            "expected an official SAM/MobileSAM checkpoint"
        )
    return obj
