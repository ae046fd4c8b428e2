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
    inputs: Sequence[str | os.PathLike],
    *,
    exclude: str | os.PathLike | None = None,
    notes: list[str] | None = None,
) -> tuple[list[ImageTask], list[dict]]:
    """The images of ``inputs`` (files or folders, walked recursively), sorted by
    ``file_name``, and the sources to record in the manifest.

    In folders only files with an image extension (.jpg .jpeg .png .bmp .tif .tiff .webp, any
    case) are taken; hidden files and folders (``.name``) and everything under ``exclude``
    (the dataset folder itself) are skipped. A file given directly is taken whatever its
    extension (reading it decides).

    Each file is listed once: inputs are compared by their real paths (symbolic links
    resolved); an input given twice, or a folder or file that the walk of another input
    folder already covers, is dropped before the names are chosen (so ``photos photos/sub``
    names the images as ``photos`` alone does); a file reached under several names (links)
    keeps the first of them (inputs in the order given, then by ``file_name``). What was
    dropped is described by one line appended to ``notes`` (when given).

    Raises:
        InputError: an input that does not exist, two different images with the same
            ``file_name``, or no image at all.
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
    dropped: list[str] = []
    paths = _distinct_inputs(paths, excluded, dropped)
    n_folders = sum(1 for p in paths if p.is_dir())
    found: list[tuple[int, bool, str, Path]] = []  # (input, is a link, file_name, path)
    sources: list[dict] = []
    for p in paths:
        if p.is_dir():
            root = p.resolve()
            prefix = root.name if n_folders > 1 else ""
            sources.append({"kind": "folder", "path": str(root), "prefix": prefix})
            for dirpath, dirnames, filenames in os.walk(root):
                here = Path(dirpath)
                dirnames[:] = sorted(
                    d for d in dirnames if not d.startswith(".") and not _inside(here / d, excluded)
                )
                for name in filenames:
                    if _is_image(name):
                        f = here / name
                        rel = f.relative_to(root).as_posix()
                        file_name = f"{prefix}/{rel}" if prefix else rel
                        found.append((len(sources), f.is_symlink(), file_name, f))
        else:
            f = p.resolve()
            sources.append({"kind": "file", "path": str(f), "prefix": ""})
            found.append((len(sources), False, f.name, f))
    # the same file under two names (a symbolic link): label it once, under the name of the
    # first input that has it, the file itself rather than a link to it, the first name
    first: dict[str, str] = {}
    links: list[tuple[str, str]] = []
    unique: list[tuple[str, Path]] = []
    for _, _, name, f in sorted(found):
        real = os.path.realpath(f)
        if real in first:
            links.append((name, first[real]))
            continue
        first[real] = name
        unique.append((name, f))
    if links:
        many = len(links) > 1
        dropped.append(
            f"{len(links)} file{'s' if many else ''} reached under more than one name (e.g. "
            f"{links[0][0]!r} is {links[0][1]!r})"
        )
    if notes is not None and dropped:
        notes.append(f"{'; '.join(dropped)}: each image is labelled once")
    seen: dict[str, str] = {}
    tasks = [_task(name, f, seen) for name, f in unique]
    if not tasks:
        where = ", ".join(repr(str(p)) for p in paths)
        raise InputError(
            f"no images found in {where} (looked for {' '.join(IMAGE_EXTENSIONS)}, any case)"
        )
    tasks.sort(key=lambda t: t.file_name)
    return tasks, sources


def _covered(path: Path, folder: Path, excluded: Path | None, *, is_dir: bool) -> bool:
    """Whether walking ``folder`` (a real path) reaches the real path ``path`` itself: it lies
    inside, through no hidden folder, outside ``excluded``, and (a file) has an image
    extension and no hidden name."""
    if path == folder or not _inside(path, folder):
        return False
    parts = path.relative_to(folder).parts
    if any(part.startswith(".") for part in parts):
        return False
    if _inside(path, excluded):
        return False
    return is_dir or _is_image(path.name)


def _distinct_inputs(paths: list[Path], excluded: Path | None, dropped: list[str]) -> list[Path]:
    """``paths`` without those given twice (same real path) or covered by the walk of another
    input folder; what was dropped, and why, is appended to ``dropped``."""
    real = [p.resolve() for p in paths]
    # outermost first, so a message names the folder that covers the most
    folders = sorted(
        ((r, p) for r, p in zip(real, paths, strict=True) if r.is_dir()),
        key=lambda rp: len(rp[0].parts),
    )
    kept: list[Path] = []
    seen: dict[Path, bool] = {}  # real path -> kept
    reasons: list[str] = []
    for p, r in zip(paths, real, strict=True):
        if r in seen:
            if seen[r]:  # (a dropped one is already explained)
                reasons.append(f"{str(p)!r} was given twice")
            continue
        outer = next(
            (fp for fr, fp in folders if _covered(r, fr, excluded, is_dir=r.is_dir())), None
        )
        seen[r] = outer is None
        if outer is not None:
            reasons.append(f"{str(p)!r} is inside {str(outer)!r}")
            continue
        kept.append(p)
    reasons = list(dict.fromkeys(reasons))
    if len(reasons) > 3:  # one line, whatever a shell glob expanded to
        reasons[2:] = [f"{reasons[2]} (and {len(reasons) - 3} more)"]
    dropped += reasons
    return kept


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
