"""The dataset as the app edits it: ``DATASET/annotations.json`` read and written through the
dataset format (:mod:`grounded_sam.engine.dataset`), with the review queue, the candidates and
the images not labelled yet.

Saving. Every change is committed before its request is answered: the change is applied to
the latest ``annotations.json`` and the whole file is written to a temporary file, fsynced and
renamed into place (:func:`grounded_sam.engine.dataset.atomic_write`). A crash, ``kill -9`` or
Ctrl-C leaves the previous file or the new one, never half of one, and an answered change is
on disk. Changes that arrive while a write is running are committed together by the next write
(group commit), so many tabs cost one write per burst, not one per change.

Several writers. A change is one operation on one record (add, change or delete annotation
``id``; mark image ``id`` done; accept or reject candidate ``id``), applied under a lock file
(``DATASET/.app.lock``) to the file as it is *now*: when another process (a second app, a
``label --merge``) changed ``annotations.json`` since this one last wrote it, it is read again
first. So two tabs, or two servers, editing the same dataset never undo each other's work:
the last writer wins per annotation and no annotation is lost.

People's state lives in extra COCO fields, ignored by COCO tools: ``"reviewed": true`` on an
annotation a person accepted, drew or changed, and on an image a person marked done. Images
found in the image folders but not in ``images`` are "todo" (not labelled yet, as for
``label``); they get a provisional id and enter ``images`` with their first change. Once the
app changed ``annotations.json``, ``label`` refuses to assemble that dataset again (it would
discard the edits), so the file is the one record of the person's work; ``label``'s per-image
units are left as the model's record.

A dataset the app creates (``--images DIR --classes ONTOLOGY``) is an ``annotations.json``
with the ontology's categories and no images yet, plus ``DATASET/app.json`` recording the
image folders, so ``grounded-sam app DATASET`` reopens it alone.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from grounded_sam.app.service import ImageRef
from grounded_sam.engine import dataset as fmt
from grounded_sam.errors import GroundedSAMError, InputError

__all__ = [
    "APP_FILE",
    "Conflict",
    "DatasetStore",
    "NotFound",
    "SaveFailed",
    "Source",
    "check_rle",
    "scan_sources",
]

APP_FILE = "app.json"
APP_FORMAT = "grounded-sam-app"
LOCK_FILE = ".app.lock"
STATUSES = ("review", "todo", "labelled", "error")


class NotFound(InputError):
    """An image, annotation, candidate or file the dataset does not have (HTTP 404)."""


class Conflict(InputError):
    """An edit that contradicts the dataset as it is now (HTTP 409)."""


class SaveFailed(GroundedSAMError):
    """The dataset could not be written (a full or read-only disk); nothing changed (503)."""


# --------------------------------------------------------------------------- sources
@dataclass(frozen=True)
class Source:
    """Where images come from: a folder (``kind="folder"``) searched recursively, whose files are
    named by their path below it, prefixed by ``prefix + "/"`` when ``prefix`` is set; or one
    file (``kind="file"``) named by its base name. The same rule as ``label``'s
    ``sources`` in ``label.json``."""

    path: Path
    kind: str = "folder"
    prefix: str = ""

    def to_json(self) -> dict[str, str]:
        return {"path": str(self.path), "kind": self.kind, "prefix": self.prefix}

    @classmethod
    def from_json(cls, doc: dict) -> Source:
        return cls(Path(doc["path"]), doc.get("kind", "folder"), doc.get("prefix", ""))

    def locate(self, file_name: str) -> Path | None:
        """The file this source holds under ``file_name``, or ``None``."""
        if self.kind == "file":
            return self.path if self.path.name == file_name and self.path.is_file() else None
        rel = file_name
        if self.prefix:
            if not file_name.startswith(self.prefix + "/"):
                return None
            rel = file_name[len(self.prefix) + 1 :]
        p = self.path.joinpath(*rel.split("/"))
        return p if p.is_file() else None


def sources_from_args(images: Sequence[str | os.PathLike]) -> list[Source]:
    """``--images`` arguments -> sources: one folder is unprefixed, several folders are
    prefixed by their names (as ``label`` names files), a file stands for itself.

    Raises:
        InputError: a path that does not exist, or two folders with the same name.
    """
    out: list[Source] = []
    dirs = [Path(p) for p in images if Path(p).is_dir()]
    names: dict[str, Path] = {}
    for raw in images:
        p = Path(raw).expanduser()
        if not p.exists():
            raise InputError(f"--images {str(raw)!r}: no such file or folder")
        p = p.resolve()
        if p.is_dir():
            prefix = p.name if len(dirs) > 1 else ""
            if prefix in names:
                raise InputError(
                    f"--images {str(names[prefix])!r} and {str(p)!r} have the same folder name "
                    f"{prefix!r}, so their files would get the same names; give one folder "
                    "above them instead"
                )
            names[prefix] = p
            out.append(Source(p, "folder", prefix))
        else:
            if p.suffix.lower() not in fmt.IMAGE_EXTENSIONS:
                raise InputError(
                    f"--images {str(raw)!r} is not an image file (expected one of "
                    f"{', '.join(fmt.IMAGE_EXTENSIONS)})"
                )
            out.append(Source(p, "file", ""))
    return out


def scan_sources(sources: Iterable[Source], skip: Path | None = None) -> dict[str, Path]:
    """``file_name -> path`` of every image under the sources, as ``label`` finds them
    (:func:`grounded_sam.engine.sources.list_images`: extensions .jpg .jpeg .png .bmp .tif
    .tiff .webp in any case, hidden files and folders skipped), sorted by name; ``skip`` (the
    dataset folder, when it lies inside an image folder) is not searched."""
    found: dict[str, Path] = {}
    skip = skip.resolve() if skip is not None else None
    for src in sources:
        if src.kind == "file":
            if src.path.is_file():
                found.setdefault(src.path.name, src.path)
            continue
        if not src.path.is_dir():
            continue
        for dirpath, dirnames, filenames in os.walk(src.path):
            here = Path(dirpath)
            if skip is not None and here.resolve() == skip:
                dirnames[:] = []
                continue
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for f in sorted(filenames):
                if f.startswith(".") or os.path.splitext(f)[1].lower() not in fmt.IMAGE_EXTENSIONS:
                    continue
                rel = (here / f).relative_to(src.path).as_posix()
                name = f"{src.prefix}/{rel}" if src.prefix else rel
                found.setdefault(name, here / f)
    return dict(sorted(found.items()))


# --------------------------------------------------------------------------- RLE checks
def _rle_string_counts(s: str) -> list[int]:
    """Decode a compressed COCO RLE string (pycocotools' ``rleFrString``) in Python, refusing
    what the C decoder would silently read past: characters outside its alphabet and a
    string ending inside a number."""
    counts: list[int] = []
    p, n = 0, len(s)
    while p < n:
        x, k, more = 0, 0, True
        while more:
            if p >= n:
                raise InputError("segmentation.counts ends inside a run length")
            c = ord(s[p]) - 48
            if not 0 <= c < 64:
                raise InputError(f"segmentation.counts has an invalid character {s[p]!r}")
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts


def check_rle(segmentation: object, size: tuple[int, int]) -> dict[str, Any]:
    """A client's mask as a compressed COCO RLE with string counts for an (H, W) image.

    Accepts compressed (string ``counts``) and uncompressed (list ``counts``) RLE; checks
    that ``size`` is the image's and the run lengths are non-negative and cover it exactly.

    Raises:
        InputError: anything else (polygons, a wrong size, broken counts), naming the fix.
    """
    h, w = size
    if not isinstance(segmentation, dict) or set(segmentation) != {"size", "counts"}:
        raise InputError(
            'segmentation must be a COCO RLE {"size": [H, W], "counts": ...} (polygons are not '
            "accepted)"
        )
    if list(segmentation["size"]) != [h, w]:
        raise InputError(
            f"segmentation.size {segmentation['size']!r} is not the image's size [{h}, {w}]"
        )
    counts = segmentation["counts"]
    if isinstance(counts, str):
        runs = _rle_string_counts(counts)
    elif isinstance(counts, list) and all(
        isinstance(c, int) and not isinstance(c, bool) for c in counts
    ):
        runs = list(counts)
    else:
        raise InputError("segmentation.counts must be an RLE string or a list of run lengths")
    if any(r < 0 for r in runs) or sum(runs) != h * w:
        raise InputError(
            f"segmentation.counts covers {sum(runs)} pixels with "
            f"{'negative runs' if any(r < 0 for r in runs) else 'valid runs'}; an RLE of a "
            f"{h}x{w} image must cover {h * w}"
        )
    if isinstance(counts, str):
        return {"size": [h, w], "counts": counts}
    from pycocotools import mask as mask_utils

    rle = mask_utils.frPyObjects({"size": [h, w], "counts": runs}, h, w)
    return {"size": [h, w], "counts": rle["counts"].decode("ascii")}


def _box_area(seg: dict) -> tuple[list[float], int]:
    from grounded_sam.masks import rle_area, rle_to_bbox

    return rle_to_bbox(seg), rle_area(seg)


# --------------------------------------------------------------------------- the store
class DatasetStore:
    """One dataset folder, opened for editing (see the module docstring).

    Build with :meth:`open`. Thread-safe: reads see the last committed state; writes go
    through :meth:`_commit`.
    """

    def __init__(self, root: Path, sources: list[Source], *, lock_timeout: float = 30.0):
        self.root = Path(root)
        self.sources = sources
        self.revision = 0
        self._lock = threading.RLock()  # the in-memory state
        self._write_lock = threading.Lock()  # one committing thread per process
        self._pending: list[tuple[Callable[[], Any], Future]] = []
        self._pending_lock = threading.Lock()
        self._refs: dict[str, ImageRef] = {}
        self._lock_timeout = lock_timeout
        self._doc: dict[str, Any] = {}
        self._sig: tuple | None = None
        self._cand_sig: tuple | None = None
        self.manifest = fmt.read_manifest(self.root)
        self._review = fmt.read_review(self.root)
        self._errors = {e["file_name"]: e.get("reason", "") for e in fmt.read_errors(self.root)}
        self._found = scan_sources(self._all_sources(), skip=self.root)
        self._load()

    # ------------------------------------------------------------------ opening
    @classmethod
    def open(
        cls,
        root: str | os.PathLike,
        images: Sequence[str | os.PathLike] = (),
        classes=None,
    ) -> DatasetStore:
        """Open ``root`` (a dataset ``label`` wrote, or one the app created), or create it
        from ``images`` (folders or files) and ``classes`` (an ontology: YAML path, inline
        ``"cat,dog"``, mapping).

        On an existing dataset, ``images`` adds folders to look for its images in (and is
        remembered), and ``classes`` may append classes to its categories.

        Raises:
            InputError: no dataset and nothing to create it from, a label run not assembled
                yet, classes that contradict the dataset's, missing image folders.
        """
        from grounded_sam.engine.ontology import load_ontology

        root = Path(root).expanduser()
        if root.exists() and not root.is_dir():
            raise InputError(f"dataset {str(root)!r} is a file; give a dataset folder")
        ontology = load_ontology(classes) if classes is not None else None
        new_sources = sources_from_args(images)
        ann_path = root / fmt.ANNOTATIONS
        app_doc = _read_app(root)
        if ann_path.exists():
            doc = fmt.read_annotations(root)
            if ontology is not None:
                cats = _merge_categories(doc["categories"], ontology.categories(), root)
                if cats != doc["categories"]:
                    doc["categories"] = cats
                    fmt.write_annotations(root, doc)
        else:
            if root.is_dir() and (root / fmt.MANIFEST).exists():
                raise InputError(
                    f"{str(root)!r} holds a label run without annotations.json yet; finish it "
                    f"(or run `grounded-sam label --merge {root}`) before opening it in the app"
                )
            if ontology is None or not (new_sources or app_doc.get("sources")):
                raise InputError(
                    f"{str(root)!r} has no annotations.json; to start a new dataset give the "
                    "images and the classes: grounded-sam app DATASET --images DIR "
                    "--classes 'cat,dog' (or a YAML ontology)"
                )
            root.mkdir(parents=True, exist_ok=True)
            fmt.write_annotations(
                root, {"images": [], "annotations": [], "categories": ontology.categories()}
            )
        known = [Source.from_json(s) for s in app_doc.get("sources", [])]
        merged = known + [s for s in new_sources if s not in known]
        if merged != known:
            fmt.atomic_write(
                root / APP_FILE,
                json.dumps(
                    {
                        "format": APP_FORMAT,
                        "version": 1,
                        "sources": [s.to_json() for s in merged],
                    },
                    indent=1,
                )
                + "\n",
            )
        fmt.remove_stale_temporaries(root)
        return cls(root, merged)

    def _all_sources(self) -> list[Source]:
        out = list(self.sources)
        for s in (self.manifest or {}).get("sources", []):
            try:
                src = Source.from_json(s)
            except (KeyError, TypeError):
                continue
            if src not in out:
                out.append(src)
        return out

    # ------------------------------------------------------------------ state
    def _load(self) -> None:
        """(Re)read annotations.json and candidates.json and rebuild the indexes."""
        doc = fmt.read_annotations(self.root)
        sig = _signature(self.root / fmt.ANNOTATIONS)
        cand_path = self.root / fmt.CANDIDATES
        cands = fmt.read_candidates(self.root)
        with self._lock:
            self._doc = doc
            self._sig = sig
            self._cand_sig = _signature(cand_path)
            self._images = {int(im["id"]): im for im in doc["images"]}
            self._anns = {int(a["id"]): a for a in doc["annotations"]}
            self._anns_of: dict[int, list[int]] = {i: [] for i in self._images}
            for a in doc["annotations"]:
                self._anns_of.setdefault(int(a["image_id"]), []).append(int(a["id"]))
            self._cands = {int(c["id"]): c for c in cands}
            self._cands_of: dict[int, list[int]] = {}
            for c in cands:
                self._cands_of.setdefault(int(c["image_id"]), []).append(int(c["id"]))
            self._by_name = {im["file_name"]: int(im["id"]) for im in doc["images"]}
            # provisional ids for images found in the folders but not labelled yet; kept
            # for the session (a page may hold them) unless a writer took the number
            old = getattr(self, "_todo", {})
            taken = set(self._images)
            top = max(taken | set(old.values()), default=0)
            todo: dict[str, int] = {}
            for name in self._found:
                if name in self._by_name:
                    continue
                pid = old.get(name)
                if pid is None or pid in taken:
                    top += 1
                    pid = top
                todo[name] = pid
            self._todo = todo
            self._todo_ids = {v: k for k, v in todo.items()}
            self.categories = [dict(c) for c in doc["categories"]]
            self._cat_ids = {int(c["id"]) for c in self.categories}
            self.revision += 1

    def refresh(self) -> None:
        """Read the files again if another process changed them since."""
        if (
            _signature(self.root / fmt.ANNOTATIONS) != self._sig
            or _signature(self.root / fmt.CANDIDATES) != self._cand_sig
        ):
            with self._write_lock:
                self._load()

    # ------------------------------------------------------------------ reading
    def info(self) -> dict[str, Any]:
        return {
            "name": self.root.name,
            "path": str(self.root),
            "sources": [s.to_json() for s in self._all_sources()],
            "labelled_by": "label" if self.manifest is not None else "app",
            "errors": len(self._errors),
        }

    def _pending_review(self) -> tuple[dict[int, list[dict]], dict[int, list[dict]]]:
        """Review items still open: (image id -> image-level items, annotation id -> items).

        An annotation item is open while its annotation exists and is not reviewed; an image
        item while the image is not marked done. Items are matched by ``file_name`` where
        they carry one (ids may have been renumbered by a later assembly)."""
        by_image: dict[int, list[dict]] = {}
        by_ann: dict[int, list[dict]] = {}
        for item in self._review:
            iid = self._by_name.get(item.get("file_name")) if item.get("file_name") else None
            if iid is None:
                iid = item.get("image_id")
            img = self._images.get(iid)
            if img is None or img.get("reviewed"):
                continue
            aid = item.get("annotation_id")
            if aid is None:
                by_image.setdefault(iid, []).append(item)
                continue
            ann = self._anns.get(aid)
            if ann is not None and ann["image_id"] == iid and not ann.get("reviewed"):
                by_ann.setdefault(aid, []).append(item)
        return by_image, by_ann

    def _status(self, iid: int, open_images: set[int]) -> str:
        if iid in self._todo_ids:
            return "error" if self._todo_ids[iid] in self._errors else "todo"
        return "review" if iid in open_images else "labelled"

    def _ordered(self) -> list[tuple[int, str]]:
        """(image id, status) in the page's order: the review queue (most urgent first),
        then images not labelled yet, then labelled ones, then unreadable ones."""
        by_image, by_ann = self._pending_review()
        open_images: dict[int, None] = {}
        for item in self._review:  # review.json is most urgent first
            iid = self._by_name.get(item.get("file_name")) or item.get("image_id")
            aid = item.get("annotation_id")
            if (aid is None and iid in by_image) or (aid is not None and aid in by_ann):
                open_images.setdefault(iid, None)
        rows = [(i, "review") for i in open_images]
        todo = [(pid, self._status(pid, set())) for pid in self._todo.values()]
        rows += [r for r in todo if r[1] == "todo"]
        rows += [(i, "labelled") for i in sorted(self._images) if i not in open_images]
        rows += [r for r in todo if r[1] == "error"]
        return rows

    def _summary(self, iid: int, status: str, by_ann=None, by_image=None) -> dict[str, Any]:
        if iid in self._todo_ids:
            name = self._todo_ids[iid]
            row = {"id": iid, "file_name": name, "width": None, "height": None}
            if status == "error":
                row["error"] = self._errors.get(name)
        else:
            im = self._images[iid]
            row = {k: im[k] for k in ("id", "file_name", "width", "height")}
            row["reviewed"] = bool(im.get("reviewed"))
        anns = self._anns_of.get(iid, [])
        row["status"] = status
        row["annotations"] = len(anns)
        row["candidates"] = len(self._cands_of.get(iid, []))
        if by_ann is not None:
            items = list((by_image or {}).get(iid, []))
            for a in anns:
                items += by_ann.get(a, [])
            row["open_review"] = len(items)
            row["priority"] = max((float(i.get("priority", 0)) for i in items), default=None)
        return row

    def list_images(self) -> list[dict[str, Any]]:
        """Every image in the page's order (see :meth:`_ordered`) with its status, counts
        of annotations / candidates / open review items and top review priority."""
        self.refresh()
        with self._lock:
            by_image, by_ann = self._pending_review()
            return [self._summary(i, s, by_ann, by_image) for i, s in self._ordered()]

    def counts(self) -> dict[str, int]:
        with self._lock:
            rows = self._ordered()
            out = {s: 0 for s in STATUSES}
            for _, s in rows:
                out[s] += 1
            out["images"] = len(rows)
            out["annotations"] = len(self._anns)
            out["candidates"] = len(self._cands)
            return out

    def following(self, iid: int, k: int) -> list[int]:
        """The ``k`` image ids after ``iid`` in the page's order (for prefetching)."""
        with self._lock:
            ids = [i for i, s in self._ordered() if s != "error"]
        if iid not in ids:
            return ids[:k]
        at = ids.index(iid)
        return ids[at + 1 : at + 1 + k]

    def _check_image(self, iid: int) -> None:
        if iid not in self._images and iid not in self._todo_ids:
            raise NotFound(f"no image with id {iid}")

    def image_detail(self, iid: int) -> dict[str, Any]:
        """An image with its annotations (each with its open review ``reasons``), its
        candidates, its image-level review items and the ids before and after it."""
        self.refresh()
        with self._lock:
            self._check_image(iid)
            by_image, by_ann = self._pending_review()
            order = self._ordered()
            status = dict(order)[iid]
            ids = [i for i, _ in order]
            at = ids.index(iid)
            anns = []
            for aid in self._anns_of.get(iid, []):
                a = dict(self._anns[aid])
                items = by_ann.get(aid, [])
                a["review"] = sorted({r for it in items for r in it.get("reasons", [])})
                a["review_detail"] = "; ".join(
                    str(it["detail"]) for it in items if it.get("detail")
                )
                anns.append(a)
            out = {
                "image": self._summary(iid, status, by_ann, by_image),
                "annotations": anns,
                "candidates": [dict(self._cands[c]) for c in self._cands_of.get(iid, [])],
                "review": by_image.get(iid, []),
                "prev": ids[at - 1] if at > 0 else None,
                "next": ids[at + 1] if at + 1 < len(ids) else None,
                "position": at,
                "total": len(ids),
                "revision": self.revision,
            }
        ref = self.ref(iid)
        if out["image"]["width"] is None and status != "error":
            try:
                h, w = ref.size
                out["image"]["width"], out["image"]["height"] = w, h
            except InputError as e:
                out["image"]["error"] = str(e)
        return out

    def annotation(self, aid: int) -> dict[str, Any]:
        with self._lock:
            if aid not in self._anns:
                raise NotFound(f"no annotation with id {aid}")
            return dict(self._anns[aid])

    def category_for_phrase(self, phrase: str | None) -> int | None:
        """The category whose name or one of whose prompts is ``phrase`` (ignoring case)."""
        if not phrase:
            return None
        key = phrase.casefold()
        for c in self.categories:
            names = [c["name"], *c.get("prompts", [])]
            if any(str(n).casefold() == key for n in names):
                return int(c["id"])
        return None

    # ------------------------------------------------------------------ files
    def _name_of(self, iid: int) -> str:
        with self._lock:
            if iid in self._images:
                return self._images[iid]["file_name"]
            if iid in self._todo_ids:
                return self._todo_ids[iid]
        raise NotFound(f"no image with id {iid}")

    def find_ref(self, iid: int) -> ImageRef | None:
        try:
            return self.ref(iid)
        except NotFound:
            return None

    def ref(self, iid: int) -> ImageRef:
        """The :class:`ImageRef` of image ``iid`` (404 when the id or the file is unknown)."""
        return self.ref_by_name(self._name_of(iid))

    def ref_by_name(self, file_name: str) -> ImageRef:
        """The :class:`ImageRef` of a dataset ``file_name``; names not in the dataset (or its
        image folders) are :class:`NotFound`, whatever exists on disk."""
        with self._lock:
            ref = self._refs.get(file_name)
            if ref is not None:
                return ref
            if file_name not in self._by_name and file_name not in self._todo:
                raise NotFound(f"no image named {file_name!r} in the dataset")
        path = self._found.get(file_name)
        if path is None:
            for src in self._all_sources():
                path = src.locate(file_name)
                if path is not None:
                    break
        if path is None:
            path = fmt.find_image(self.root, file_name, [s.path for s in self.sources])
        if path is None:
            raise NotFound(
                f"image file {file_name!r} is not under the dataset's image folders; give its "
                "folder with --images"
            )
        with self._lock:
            return self._refs.setdefault(file_name, ImageRef(Path(path), file_name))

    # ------------------------------------------------------------------ committing
    def _commit(self, op: Callable[[], Any]) -> Any:
        """Run ``op`` (a mutation of the in-memory state returning the answer) and write the
        dataset before returning its answer; concurrent callers share one write."""
        fut: Future = Future()
        with self._pending_lock:
            self._pending.append((op, fut))
        with self._write_lock:
            if not fut.done():
                with self._pending_lock:
                    batch, self._pending = self._pending, []
                try:
                    self._write_batch(batch)
                except BaseException as e:  # never leave a waiting request without an answer
                    for _, f in batch:
                        if not f.done():
                            f.set_exception(e)
        return fut.result()

    def _write_batch(self, batch: list[tuple[Callable[[], Any], Future]]) -> None:
        """Apply ``batch`` to the dataset as it is on disk now and write it once. A change
        refused with an :class:`InputError` is answered alone; any other failure (a bug, a
        full disk) answers every change of the batch with it and leaves the state as on disk.
        """
        from filelock import FileLock, Timeout

        lock = FileLock(str(self.root / LOCK_FILE), timeout=self._lock_timeout)
        try:
            lock.acquire()
        except Timeout:
            raise Conflict(
                f"the dataset is locked by another writer for over {self._lock_timeout:g} s "
                f"({self.root / LOCK_FILE}); try again"
            ) from None
        try:
            if (
                _signature(self.root / fmt.ANNOTATIONS) != self._sig
                or _signature(self.root / fmt.CANDIDATES) != self._cand_sig
            ):
                self._load()  # another process wrote: apply our changes to its file
            self._cands_changed = False
            results = []
            try:
                for op, fut in batch:
                    try:
                        with self._lock:
                            results.append((fut, op(), None))
                    except InputError as e:  # this change only; the others still commit
                        results.append((fut, None, e))
                if any(e is None for _, _, e in results):
                    try:
                        self._write()
                    except OSError as e:
                        raise SaveFailed(
                            f"could not save {self.root / fmt.ANNOTATIONS}: {e}; nothing was "
                            "changed, try again once the disk has room"
                        ) from e
            except BaseException:
                self._load()  # back to what is on disk
                raise
            for fut, value, err in results:
                if err is None:
                    fut.set_result(value)
                else:
                    fut.set_exception(err)
        finally:
            lock.release()

    def _write(self) -> None:
        with self._lock:
            images = [self._images[i] for i in sorted(self._images)]
            anns = [self._anns[a] for i in sorted(self._images) for a in self._anns_of.get(i, [])]
            doc = dict(self._doc)
            doc.update(images=images, annotations=anns, categories=self.categories)
            self._doc = doc
            cands = None
            if self._cands_changed:
                cands = [self._cands[c] for c in sorted(self._cands)]
        fmt.write_annotations(self.root, doc)
        if cands is not None:
            fmt.write_json_list(self.root / fmt.CANDIDATES, cands)
        with self._lock:
            self._sig = _signature(self.root / fmt.ANNOTATIONS)
            self._cand_sig = _signature(self.root / fmt.CANDIDATES)
            self.revision += 1

    # ------------------------------------------------------------------ mutations
    # (each runs inside _commit with self._lock held; checks come before any change, so a
    # refused change leaves the state as it was)
    def _materialise(self, iid: int) -> int:
        """Make a todo image a labelled one (in ``images``); returns its id."""
        if iid in self._images:
            return iid
        if iid not in self._todo_ids:
            raise NotFound(f"no image with id {iid}")
        name = self._todo_ids[iid]
        if name in self._errors:
            raise Conflict(f"image {name!r} could not be read by label: {self._errors[name]}")
        h, w = self.ref(iid).size
        self._images[iid] = {"id": iid, "file_name": name, "width": w, "height": h}
        self._anns_of.setdefault(iid, [])
        self._by_name[name] = iid
        del self._todo[name]
        del self._todo_ids[iid]
        return iid

    def _size_of(self, iid: int) -> tuple[int, int]:
        if iid in self._images:
            return int(self._images[iid]["height"]), int(self._images[iid]["width"])
        return self.ref(iid).size

    def _category(self, fields: dict, required: bool) -> int | None:
        cid, name = fields.get("category_id"), fields.get("category")
        if cid is not None and name is not None:
            if self.category_for_phrase(name) != cid:
                raise InputError(f"category {name!r} and category_id {cid} disagree; give one")
        if cid is None and name is not None:
            cid = next(
                (int(c["id"]) for c in self.categories if c["name"].casefold() == name.casefold()),
                None,
            )
            if cid is None:
                raise InputError(
                    f"unknown category {name!r}; the dataset's classes: "
                    f"{', '.join(c['name'] for c in self.categories)}"
                )
        if cid is None:
            if required:
                raise InputError("give the instance's class as category_id or category")
            return None
        if cid not in self._cat_ids:
            raise InputError(
                f"unknown category_id {cid}; the dataset's categories: "
                + ", ".join(f"{c['id']} {c['name']}" for c in self.categories)
            )
        return cid

    def add_annotation(self, iid: int, fields: dict[str, Any]) -> dict[str, Any]:
        """Add an instance to image ``iid`` (a todo image becomes labelled).

        ``fields``: ``segmentation`` (RLE of the image's size), the class (``category_id``
        or ``category``), optional ``score``, ``mask_score``, ``prompt``, ``reviewed``
        (default true: a person made it) and ``id`` (to restore a deleted annotation under
        its old id; refused with 409 when another annotation has it).
        """

        def op():
            self._check_image(iid)
            seg = check_rle(fields["segmentation"], self._size_of(iid))
            cid = self._category(fields, required=True)
            want = fields.get("id")
            if want is not None:
                if want < 1:
                    raise InputError(f"id must be a positive integer, got {want}")
                if want in self._anns:
                    raise Conflict(f"annotation id {want} is in use; add it without an id")
            real = self._materialise(iid)
            aid = want if want is not None else max(self._anns, default=0) + 1
            bbox, area = _box_area(seg)
            rec = {
                "id": aid,
                "image_id": real,
                "category_id": cid,
                "segmentation": seg,
                "area": area,
                "bbox": bbox,
                "iscrowd": 0,
                "score": float(fields.get("score", 1.0)),
                "mask_score": _float_or_none(fields.get("mask_score")),
                "stability": _float_or_none(fields.get("stability")),
                "prompt": fields.get("prompt"),
                "reviewed": bool(fields.get("reviewed", True)),
            }
            self._anns[aid] = rec
            self._anns_of[real].append(aid)
            return dict(rec)

        return self._commit(op)

    def update_annotation(self, aid: int, fields: dict[str, Any]) -> dict[str, Any]:
        """Change an annotation's class, mask or reviewed flag; a change by a person marks
        it reviewed unless ``reviewed: false`` is given."""

        def op():
            if aid not in self._anns:
                raise NotFound(f"no annotation with id {aid} (deleted in another tab?)")
            rec = self._anns[aid]
            seg = None
            if "segmentation" in fields:
                seg = check_rle(fields["segmentation"], self._size_of(int(rec["image_id"])))
            cid = self._category(fields, required=False)
            if cid is not None:
                rec["category_id"] = cid
            if seg is not None:
                rec["segmentation"] = seg
                rec["bbox"], rec["area"] = _box_area(seg)
            rec["reviewed"] = bool(fields.get("reviewed", True))
            return dict(rec)

        return self._commit(op)

    def delete_annotation(self, aid: int) -> dict[str, Any]:
        """Delete an annotation; returns it (to undo: add it back with its ``id``)."""

        def op():
            if aid not in self._anns:
                raise NotFound(f"no annotation with id {aid} (deleted in another tab?)")
            rec = self._anns.pop(aid)
            self._anns_of[int(rec["image_id"])].remove(aid)
            return dict(rec)

        return self._commit(op)

    def set_done(self, iid: int, done: bool = True) -> dict[str, Any]:
        """Mark image ``iid`` done (a person checked it: it and all its annotations become
        reviewed, a todo image becomes labelled, possibly empty) or not done."""

        def op():
            self._check_image(iid)
            real = self._materialise(iid)
            im = self._images[real]
            if done:
                im["reviewed"] = True
                for a in self._anns_of.get(real, []):
                    self._anns[a]["reviewed"] = True
            else:
                im.pop("reviewed", None)
            return {"id": real, "file_name": im["file_name"], "reviewed": bool(done)}

        return self._commit(op)

    def _candidate(self, cand: str | int) -> dict:
        try:
            cid = int(cand)
        except (TypeError, ValueError):
            raise NotFound(f"no candidate with id {cand!r}") from None
        if cid not in self._cands:
            raise NotFound(f"no candidate with id {cid} (named or rejected already?)")
        return self._cands[cid]

    def _drop_candidate(self, c: dict) -> None:
        del self._cands[int(c["id"])]
        self._cands_of[int(c["image_id"])].remove(int(c["id"]))
        self._cands_changed = True

    def accept_candidate(self, cand: str | int, fields: dict[str, Any]) -> dict[str, Any]:
        """Name a candidate (``category_id`` or ``category``): it becomes a reviewed
        annotation and leaves ``candidates.json``; returns the annotation."""

        def op():
            c = self._candidate(cand)
            cid = self._category(fields, required=True)
            iid = int(c["image_id"])
            self._check_image(iid)
            seg = check_rle(c["segmentation"], self._size_of(iid))
            real = self._materialise(iid)
            aid = max(self._anns, default=0) + 1
            bbox, area = _box_area(seg)
            rec = {
                "id": aid,
                "image_id": real,
                "category_id": cid,
                "segmentation": seg,
                "area": area,
                "bbox": bbox,
                "iscrowd": 0,
                "score": 1.0,
                "mask_score": _float_or_none(c.get("mask_score")),
                "stability": _float_or_none(c.get("stability")),
                "prompt": None,
                "reviewed": True,
            }
            self._drop_candidate(c)
            self._anns[aid] = rec
            self._anns_of[real].append(aid)
            return dict(rec)

        return self._commit(op)

    def reject_candidate(self, cand: str | int) -> dict[str, Any]:
        """Drop a candidate from ``candidates.json``; returns it."""

        def op():
            c = self._candidate(cand)
            self._drop_candidate(c)
            return dict(c)

        return self._commit(op)


# --------------------------------------------------------------------------- helpers
def _float_or_none(value) -> float | None:
    return None if value is None else float(value)


def _signature(path: Path) -> tuple | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


def _read_app(root: Path) -> dict[str, Any]:
    path = root / APP_FILE
    if not path.exists():
        return {}
    doc = fmt.read_json(path, "app settings")
    if not isinstance(doc, dict) or doc.get("format") != APP_FORMAT:
        raise InputError(f"{str(path)!r} is not a grounded-sam app file")
    return doc


def _merge_categories(existing: list[dict], wanted: list[dict], root: Path) -> list[dict]:
    """The dataset's categories with ``wanted``'s new classes appended; a class that changes
    an existing id is refused (annotations refer to the ids)."""
    have = [c["name"] for c in existing]
    names = [c["name"] for c in wanted]
    if names[: len(have)] != have:
        raise InputError(
            f"--classes gives {names} but the dataset {str(root)!r} has {have}; classes can "
            "only be appended (existing ones keep their ids and order)"
        )
    return [dict(c) for c in existing] + [
        {**c, "id": len(existing) + i + 1} for i, c in enumerate(wanted[len(existing) :])
    ]
