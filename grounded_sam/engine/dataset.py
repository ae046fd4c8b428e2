"""The on-disk dataset that ``grounded-sam label`` writes and the annotation app edits.

Layout of ``DATASET/`` (all JSON is UTF-8; every file is written to a temporary file in the
same folder and renamed into place, so a reader never sees half a file)::

    label.json         manifest: format version, ontology, detector, SAM, settings, image sources
    units/ab/<key>.json  one committed unit per image (the crash-safe record of the work)
    annotations.json   COCO instances assembled from the units (deterministic bytes)
    errors.json        [{"file_name", "reason"}]: images that could not be read
    review.json        [{"image_id", "annotation_id", "file_name", "priority", "reasons", "detail"}]
    candidates.json    [{"id", "image_id", "segmentation", "area", "bbox", "mask_score", "stability"}]
                       (only with --candidates)
    embeddings/<sam id>/ab/<key>.npz   optional SAM image embeddings (see engine.embeddings)
    audit.md, audit.json               only with --audit

``annotations.json`` (COCO instances, one record per line)::

    {"images": [{"id", "file_name", "width", "height"}, ...],
     "annotations": [{"id", "image_id", "category_id", "segmentation": {"size": [H, W],
                      "counts": str}, "area": int, "bbox": [x, y, w, h], "iscrowd": 0,
                      "score", "mask_score", "stability", "prompt"}, ...],
     "categories": [{"id", "name", "prompts": [...]}, ...]}

- ``file_name`` is the image's path relative to the folder it was found under, with ``/``
  separators (prefixed by that folder's name when several folders were given; a file given
  directly: its base name); never absolute.
- image ids are 1..N over the labelled images sorted by ``file_name``; annotation ids 1..M in
  image-id order, then in each image's unit order; candidate ids likewise. So ids are a
  function of the inputs only, whichever engine or shard did the work.
- an image with no detections is in ``images`` with no annotations (labelled, empty); an
  unreadable image is not in ``images`` but in ``errors.json``.
- ``segmentation`` is compressed COCO RLE with string counts; ``area`` its pixel count,
  ``bbox`` its own tight box (exclusive right/bottom edges, XYWH), ``iscrowd`` always 0 (also
  for multi-part masks), ``score`` the detector's, ``mask_score`` SAM's predicted IoU,
  ``stability`` SAM's stability score, ``prompt`` the caption that matched.

A unit (``units/<first 2 hex>/<32 hex of BLAKE2b(file_name)>.json``)::

    {"format": "grounded-sam-unit", "version": 1, "file_name", "size_bytes", "status": "ok",
     "width", "height", "instances": [<annotation without id/image_id, plus "flags">],
     "candidates": [<candidate without id/image_id>], "notes": {"negative_suppressed": n, ...}}
    {"format": "grounded-sam-unit", "version": 1, "file_name", "size_bytes",
     "status": "error", "reason": "..."}

An image is done when its unit exists with ``status == "ok"`` and the same ``size_bytes`` as
the file now; error units are retried on every run.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from grounded_sam._files import file_mode
from grounded_sam.errors import InputError

__all__ = [
    "ANNOTATIONS",
    "AUDIT_JSON",
    "AUDIT_MD",
    "CANDIDATES",
    "EMBEDDINGS",
    "ERRORS",
    "IMAGE_EXTENSIONS",
    "MANIFEST",
    "REVIEW",
    "UNITS",
    "ImageUnit",
    "atomic_open",
    "atomic_write",
    "dump_coco",
    "file_digest",
    "file_mode",
    "find_image",
    "image_status",
    "read_annotations",
    "read_candidates",
    "read_errors",
    "read_json",
    "read_manifest",
    "read_review",
    "read_unit",
    "iter_units",
    "remove_stale_temporaries",
    "unit_key",
    "unit_path",
    "write_annotations",
    "write_json_list",
    "write_manifest",
    "write_unit",
]

FORMAT = "grounded-sam-dataset"
UNIT_FORMAT = "grounded-sam-unit"
VERSION = 1

MANIFEST = "label.json"
UNITS = "units"
ANNOTATIONS = "annotations.json"
ERRORS = "errors.json"
REVIEW = "review.json"
CANDIDATES = "candidates.json"
EMBEDDINGS = "embeddings"
AUDIT_MD = "audit.md"
AUDIT_JSON = "audit.json"

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")

# names `label --overwrite` may remove (never anything else in the folder)
OUTPUT_NAMES = (MANIFEST, ANNOTATIONS, ERRORS, REVIEW, CANDIDATES, AUDIT_MD, AUDIT_JSON)

_TMP_PREFIX = ".tmp-"
_STALE_SECONDS = 600  # a unit is written in well under a second; older temporaries are debris


# --------------------------------------------------------------------------- files
def _mkstemp(path: Path) -> tuple[int, str]:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=_TMP_PREFIX, suffix=path.suffix, dir=path.parent)
    with contextlib.suppress(OSError):
        os.fchmod(fd, file_mode())
    return fd, tmp


def atomic_write(path: str | os.PathLike, data: str | bytes, *, fsync: bool = True) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and
    ``os.replace``: readers see the old file or the new one, never a mix; a crash leaves at
    most a ``.tmp-*`` file (ignored by readers, removed by :func:`remove_stale_temporaries`)."""
    path = Path(path)
    fd, tmp = _mkstemp(path)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_open(
    path: str | os.PathLike, *, before_replace: Callable[[Path], None] | None = None
) -> Iterator[TextIO]:
    """A text file to stream into; it replaces ``path`` only when the block ends without an
    exception (same guarantees as :func:`atomic_write`). ``before_replace(tmp)`` is called
    with the complete temporary file just before the rename (e.g. to record its digest)."""
    path = Path(path)
    fd, tmp = _mkstemp(path)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        if before_replace is not None:
            before_replace(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _exclusive_write(path: Path, text: str) -> bool:
    """Create ``path`` with ``text`` only if it does not exist (atomic on POSIX: a hard link
    of a complete temporary file); ``False`` if another writer got there first."""
    fd, tmp = _mkstemp(path)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(text.encode("utf-8"))
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        except OSError:  # a file system without hard links: best effort
            if path.exists():
                return False
            os.replace(tmp, path)
        return True
    finally:
        Path(tmp).unlink(missing_ok=True)


def read_json(path: str | os.PathLike, what: str) -> Any:
    """``json.load`` of ``path``; a missing or invalid file is an ``InputError`` naming
    ``what`` it should be."""
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise InputError(f"{what} {str(path)!r} not found") from None
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise InputError(f"{what} {str(path)!r} is not valid JSON ({e})") from None


def file_digest(path: str | os.PathLike) -> str:
    """BLAKE2b-256 hex of a file's bytes (read in 1 MiB blocks)."""
    h = hashlib.blake2b(digest_size=32)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def remove_stale_temporaries(dataset: str | os.PathLike) -> int:
    """Remove ``.tmp-*`` files older than 10 minutes left by killed writers; returns how many.
    Younger ones may belong to a writer still running (another shard) and are left alone."""
    root = Path(dataset)
    now, n = time.time(), 0
    folders = [root, *(root / UNITS).glob("*"), *(root / EMBEDDINGS).glob("*/*")]
    for folder in folders:
        if not folder.is_dir():
            continue
        for p in folder.glob(_TMP_PREFIX + "*"):
            try:
                if now - p.stat().st_mtime > _STALE_SECONDS:
                    p.unlink()
                    n += 1
            except FileNotFoundError:
                pass
    return n


# --------------------------------------------------------------------------- json layout
def _dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


def _write_list(f: TextIO, records: Iterable[Any]) -> int:
    """``[`` one record per line ``]``; returns the number of records."""
    n = 0
    f.write("[")
    for rec in records:
        f.write(",\n" if n else "\n")
        f.write(_dumps(rec))
        n += 1
    f.write("\n]" if n else "]")
    return n


def dump_coco(
    f: TextIO,
    images: Iterable[Mapping[str, Any]],
    annotations: Iterable[Mapping[str, Any]],
    categories: Iterable[Mapping[str, Any]],
) -> tuple[int, int]:
    """Write a COCO instances document to ``f`` in the dataset's layout: the keys ``images``,
    ``annotations``, ``categories`` in that order, one record per line, no spaces, keys in the
    order given. The same records give the same bytes. ``annotations`` may be a generator
    (written as it is consumed). Returns (number of images, number of annotations)."""
    f.write('{"images":')
    n_img = _write_list(f, images)
    f.write(',\n"annotations":')
    n_ann = _write_list(f, annotations)
    f.write(',\n"categories":')
    _write_list(f, categories)
    f.write("}\n")
    return n_img, n_ann


def write_annotations(dataset: str | os.PathLike, coco: Mapping[str, Any]) -> Path:
    """Atomically write ``DATASET/annotations.json`` from a COCO dict (``images``,
    ``annotations``, ``categories``; other top-level keys are kept after them)."""
    import io

    buf = io.StringIO()
    dump_coco(buf, coco["images"], coco["annotations"], coco["categories"])
    extra = {k: v for k, v in coco.items() if k not in ("images", "annotations", "categories")}
    text = buf.getvalue()
    if extra:
        text = (
            text[: text.rindex("}")]
            + "".join(f",\n{_dumps(k)}:{_dumps(v)}" for k, v in extra.items())
            + "}\n"
        )
    path = Path(dataset) / ANNOTATIONS
    atomic_write(path, text)
    return path


def write_json_list(path: str | os.PathLike, records: Iterable[Any]) -> int:
    """Atomically write a JSON list, one record per line (streamed: ``records`` may be a
    generator); returns its length."""
    with atomic_open(path) as f:
        n = _write_list(f, records)
        f.write("\n")
    return n


def read_annotations(dataset: str | os.PathLike) -> dict[str, Any]:
    """``DATASET/annotations.json`` (or a COCO file path) as a dict, checked for the three
    lists and unique ids.

    Raises:
        InputError: missing, not JSON, or not a COCO instances document.
    """
    path = Path(dataset)
    if path.is_dir():
        path = path / ANNOTATIONS
    doc = read_json(path, "COCO annotations file")
    if not isinstance(doc, dict):
        raise InputError(f"{str(path)!r} is not a COCO instances document (top level is not {{}})")
    for key in ("images", "annotations", "categories"):
        if not isinstance(doc.get(key), list):
            raise InputError(f"{str(path)!r} is not a COCO instances document: no {key!r} list")
    for key in ("images", "annotations", "categories"):
        ids = [r.get("id") for r in doc[key] if isinstance(r, dict)]
        if len(ids) != len(doc[key]) or len(set(map(str, ids))) != len(ids):
            raise InputError(f"{str(path)!r}: every {key[:-1]} needs a unique 'id'")
    return doc


def read_errors(dataset: str | os.PathLike) -> list[dict[str, str]]:
    """``DATASET/errors.json`` (``[]`` when absent)."""
    path = Path(dataset) / ERRORS
    return read_json(path, "errors file") if path.exists() else []


def read_review(dataset: str | os.PathLike) -> list[dict[str, Any]]:
    """``DATASET/review.json``, most urgent first (``[]`` when absent)."""
    path = Path(dataset) / REVIEW
    return read_json(path, "review queue") if path.exists() else []


def read_candidates(dataset: str | os.PathLike) -> list[dict[str, Any]]:
    """``DATASET/candidates.json`` (``[]`` when absent)."""
    path = Path(dataset) / CANDIDATES
    return read_json(path, "candidates file") if path.exists() else []


def image_status(
    dataset: str | os.PathLike, file_names: Iterable[str] | None = None
) -> dict[str, str]:
    """Each image's state, as the app lists it: ``"needs_review"`` (in ``review.json``),
    ``"labelled"`` (in ``annotations.json``), ``"error"`` (in ``errors.json``) or
    ``"not_done"``; for ``file_names`` (default: every image the dataset knows)."""
    root = Path(dataset)
    labelled = (
        {img["file_name"] for img in read_annotations(root)["images"]}
        if (root / ANNOTATIONS).exists()
        else set()
    )
    review = {item.get("file_name") for item in read_review(root)}
    errors = {e["file_name"] for e in read_errors(root)}
    names = sorted(labelled | errors) if file_names is None else list(file_names)
    out = {}
    for name in names:
        if name in labelled:
            out[name] = "needs_review" if name in review else "labelled"
        else:
            out[name] = "error" if name in errors else "not_done"
    return out


# --------------------------------------------------------------------------- manifest
def read_manifest(dataset: str | os.PathLike) -> dict[str, Any] | None:
    """``DATASET/label.json``, or ``None`` when the folder has none."""
    path = Path(dataset) / MANIFEST
    if not path.exists():
        return None
    doc = read_json(path, "dataset manifest")
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise InputError(
            f"{str(path)!r} is not a grounded-sam dataset manifest (format {FORMAT!r} expected)"
        )
    if doc.get("version") != VERSION:
        raise InputError(
            f"{str(path)!r} has dataset format version {doc.get('version')!r}; this grounded-sam "
            f"reads version {VERSION}"
        )
    return doc


def write_manifest(
    dataset: str | os.PathLike, manifest: Mapping[str, Any], *, create: bool = False
) -> bool:
    """Write ``DATASET/label.json``. With ``create=True`` only if none exists (returns
    ``False`` when another process created one first; compare it with yours)."""
    doc = {"format": FORMAT, "version": VERSION, **manifest}
    text = json.dumps(doc, indent=1, ensure_ascii=False) + "\n"
    path = Path(dataset) / MANIFEST
    if create:
        return _exclusive_write(path, text)
    atomic_write(path, text)
    return True


def find_image(
    dataset: str | os.PathLike, file_name: str, roots: Sequence[str | os.PathLike] = ()
) -> Path | None:
    """The image file behind a ``file_name``: looked up under ``roots`` (folders given by the
    caller, e.g. the app's ``--images``) first, then under the sources recorded in
    ``label.json``; ``None`` if not found."""
    rel = Path(*file_name.split("/"))
    for root in roots:
        p = Path(root) / rel
        if p.is_file():
            return p
    manifest = read_manifest(dataset) or {}
    for src in manifest.get("sources", []):
        base, prefix = Path(src["path"]), src.get("prefix", "")
        if src.get("kind") == "file":
            if base.name == file_name and base.is_file():
                return base
            continue
        if prefix:
            if not file_name.startswith(prefix + "/"):
                continue
            p = base / Path(*file_name[len(prefix) + 1 :].split("/"))
        else:
            p = base / rel
        if p.is_file():
            return p
    return None


# --------------------------------------------------------------------------- units
def unit_key(file_name: str) -> str:
    """32 hex digits of BLAKE2b(file_name): the unit's (and embedding's) file name."""
    return hashlib.blake2b(file_name.encode("utf-8"), digest_size=16).hexdigest()


def unit_path(dataset: str | os.PathLike, file_name: str) -> Path:
    key = unit_key(file_name)
    return Path(dataset) / UNITS / key[:2] / f"{key}.json"


@dataclass
class ImageUnit:
    """The result of labelling one image: what is committed, and all assembly reads.

    Attributes:
        file_name: relative ``/``-separated path (see the module docstring).
        status: ``"ok"`` or ``"error"``.
        size_bytes: the file's size when it was labelled (a changed file is labelled again).
        width, height: image size in pixels (``ok`` only).
        instances: annotation records without ``id``/``image_id`` (keys as in
            ``annotations.json``) plus ``flags``: review hints found while labelling.
        candidates: unlabelled automatic-mode masks (``--candidates``), without ids.
        notes: per-image counts for the review queue (``negative_suppressed``,
            ``empty_masks``, ``duplicates_merged``, ``class_suppressed``).
        reason: why the image could not be labelled (``error`` only).
    """

    file_name: str
    status: str = "ok"
    size_bytes: int | None = None
    width: int | None = None
    height: int | None = None
    instances: list[dict[str, Any]] = field(default_factory=list)
    candidates: list[dict[str, Any]] = field(default_factory=list)
    notes: dict[str, int] = field(default_factory=dict)
    reason: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "format": UNIT_FORMAT,
            "version": VERSION,
            "file_name": self.file_name,
            "size_bytes": self.size_bytes,
            "status": self.status,
        }
        if self.ok:
            out.update(
                width=self.width,
                height=self.height,
                instances=self.instances,
                candidates=self.candidates,
                notes=self.notes,
            )
        else:
            out["reason"] = self.reason
        return out

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> ImageUnit:
        if doc.get("format") != UNIT_FORMAT or doc.get("version") != VERSION:
            raise ValueError(f"not a version-{VERSION} unit")
        status = doc["status"]
        if status == "ok":
            return cls(
                file_name=doc["file_name"],
                status=status,
                size_bytes=doc.get("size_bytes"),
                width=int(doc["width"]),
                height=int(doc["height"]),
                instances=list(doc["instances"]),
                candidates=list(doc.get("candidates", [])),
                notes=dict(doc.get("notes", {})),
            )
        if status == "error":
            return cls(
                file_name=doc["file_name"],
                status=status,
                size_bytes=doc.get("size_bytes"),
                reason=str(doc["reason"]),
            )
        raise ValueError(f"unknown unit status {status!r}")


def write_unit(dataset: str | os.PathLike, unit: ImageUnit) -> Path:
    """Commit one unit atomically (temporary file, fsync, rename): after this returns the
    image is done even if the process is killed the next instant."""
    path = unit_path(dataset, unit.file_name)
    atomic_write(path, _dumps(unit.to_json()) + "\n")
    return path


def read_unit(path: str | os.PathLike) -> ImageUnit | None:
    """The unit in ``path``; ``None`` when absent or unreadable (then the image is not done
    and is labelled again: units are only ever replaced whole, so this means a foreign or
    damaged file)."""
    try:
        with open(path, encoding="utf-8") as f:
            return ImageUnit.from_json(json.load(f))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def iter_units(dataset: str | os.PathLike) -> Iterator[ImageUnit]:
    """Every readable unit of the dataset, in no particular order."""
    root = Path(dataset) / UNITS
    if not root.is_dir():
        return
    for folder in sorted(root.iterdir()):
        if not folder.is_dir():
            continue
        for p in sorted(folder.glob("*.json")):
            if p.name.startswith("."):
                continue
            unit = read_unit(p)
            if unit is not None:
                yield unit
