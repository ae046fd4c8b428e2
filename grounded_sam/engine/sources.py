"""Which images a labelling run covers: folders walked, relative ``file_name`` s, shards.

``file_name`` is the image's path relative to the folder it was found under, ``/``-separated,
prefixed by that folder's name when several folders are given; a file given directly is its
base name. So two ``img.jpg`` in different folders stay distinct, and the same folder labelled
on another machine (another absolute path) gives the same names.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from grounded_sam.engine.dataset import IMAGE_EXTENSIONS
from grounded_sam.errors import InputError

__all__ = ["ImageTask", "Shard", "list_images", "parse_shard", "select_shard"]


@dataclass(frozen=True)
class ImageTask:
    """One image to label: its dataset ``file_name``, where to read it, its size in bytes."""

    file_name: str
    path: str
    size_bytes: int | None = None


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` of ``count`` (0-based): the images whose file-name hash falls in it."""

    index: int
    count: int

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    def holds(self, file_name: str) -> bool:
        h = int.from_bytes(
            hashlib.blake2b(file_name.encode("utf-8"), digest_size=8).digest(), "big"
        )
        return h % self.count == self.index


def parse_shard(text: str | Shard | tuple[int, int] | None) -> Shard | None:
    """``"0/2"`` (or ``(0, 2)``) -> ``Shard(0, 2)``; ``None`` stays ``None``.

    Raises:
        InputError: not ``I/N`` with integers ``0 <= I < N``.
    """
    if text is None or isinstance(text, Shard):
        return text
    if isinstance(text, tuple):
        index, count = text
    else:
        parts = str(text).split("/")
        try:
            index, count = (int(p) for p in parts)
            if len(parts) != 2:
                raise ValueError
        except ValueError:
            raise InputError(
                f"--shard {text!r} must be I/N with integers, e.g. 0/2 and 1/2 for two shards"
            ) from None
    if not (isinstance(index, int) and isinstance(count, int)) or count < 1:
        raise InputError(f"--shard {text!r}: N must be an integer >= 1")
    if not 0 <= index < count:
        raise InputError(
            f"--shard {text!r}: I must be in 0..{count - 1} (shards are numbered from 0)"
        )
    return Shard(index, count)


def select_shard(tasks: Iterable[ImageTask], shard: Shard | None) -> list[ImageTask]:
    """The tasks of ``shard`` (all of them for ``None``), order kept. The split depends only on
    each ``file_name``, so it is the same on every machine and stable when images are added."""
    tasks = list(tasks)
    if shard is None or shard.count == 1:
        return tasks
    return [t for t in tasks if shard.holds(t.file_name)]


def _is_image(name: str) -> bool:
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _inside(path: Path, folder: Path | None) -> bool:
    if folder is None:
        return False
    try:
        path.relative_to(folder)
        return True
    except ValueError:
        return False


def list_images(
    inputs: Sequence[str | os.PathLike], *, exclude: str | os.PathLike | None = None
) -> tuple[list[ImageTask], list[dict]]:
    """The images of ``inputs`` (files or folders, walked recursively), sorted by
    ``file_name``, and the sources to record in the manifest.

    In folders only files with an image extension (.jpg .jpeg .png .bmp .tif .tiff .webp, any
    case) are taken; hidden files and folders (``.name``) and everything under ``exclude``
    (the dataset folder itself) are skipped. A file given directly is taken whatever its
    extension (reading it decides).

    Raises:
        InputError: an input that does not exist, two images with the same ``file_name``,
            or no image at all.
    """
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    if not inputs:
        raise InputError("no images given: pass image files or folders")
    excluded = Path(exclude).resolve() if exclude is not None else None
    paths = [Path(os.path.expanduser(os.fspath(p))) for p in inputs]
    for p in paths:
        if not p.exists():
            raise InputError(f"image or folder {str(p)!r} not found")
    n_folders = sum(1 for p in paths if p.is_dir())
    seen: dict[str, str] = {}
    tasks: list[ImageTask] = []
    sources: list[dict] = []
    for p in paths:
        if p.is_dir():
            root = p.resolve()
            prefix = root.name if n_folders > 1 else ""
            sources.append({"kind": "folder", "path": str(root), "prefix": prefix})
            found = []
            for dirpath, dirnames, filenames in os.walk(root):
                here = Path(dirpath)
                dirnames[:] = sorted(
                    d for d in dirnames if not d.startswith(".") and not _inside(here / d, excluded)
                )
                for name in filenames:
                    if _is_image(name):
                        found.append(here / name)
            for f in found:
                rel = f.relative_to(root).as_posix()
                tasks.append(_task(f"{prefix}/{rel}" if prefix else rel, f, seen))
        else:
            f = p.resolve()
            sources.append({"kind": "file", "path": str(f), "prefix": ""})
            tasks.append(_task(f.name, f, seen))
    if not tasks:
        where = ", ".join(repr(str(p)) for p in paths)
        raise InputError(
            f"no images found in {where} (looked for {' '.join(IMAGE_EXTENSIONS)}, any case)"
        )
    tasks.sort(key=lambda t: t.file_name)
    return tasks, sources


def _task(file_name: str, path: Path, seen: dict[str, str]) -> ImageTask:
    if file_name in seen:
        raise InputError(
            f"two images would both be named {file_name!r} in the dataset ({seen[file_name]!r} "
            f"and {str(path)!r}); give their parent folders instead, or label them separately"
        )
    seen[file_name] = str(path)
    try:
        size = path.stat().st_size
    except OSError:
        size = None
    return ImageTask(file_name, str(path), size)
