"""``Result``: the instances found in one image (data and validation only).

Export (COCO, JSON, PNG) lives in :mod:`grounded_sam.export` and drawing in
:mod:`grounded_sam.visualize`; the methods here are thin shortcuts to them.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from grounded_sam.errors import InputError

__all__ = ["Result", "TIMING_KEYS", "check_export_args"]

TIMING_KEYS = ("detector", "encoder", "decoder", "total")

# what Result.save writes: a folder holding only these is a previous result it may replace
_SAVED_FILES = ("result.json", "overlay.png")
_SAVED_MASK = re.compile(r"\d{3,}_.*\.png")


def _check_int(name: str, value: object) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise InputError(f"{name} must be an integer, got {type(value).__name__} ({value!r})")
    return int(value)


def check_export_args(
    labels: list[str],
    image_id: object = 1,
    category_ids: object = None,
    first_annotation_id: object = 1,
) -> None:
    """Check the arguments of the COCO / JSON export of a result with ``labels``.

    ``image_id`` and ``first_annotation_id`` must be integers (a numpy integer is fine, a
    string such as ``"img1"`` or ``"1"`` is not: COCO ids are numbers); ``category_ids``
    ``None`` or a ``{label: int id}`` mapping with an id for every label.

    Raises:
        InputError: naming the argument, the value received and what is expected.
    """
    _check_int("image_id", image_id)
    _check_int("first_annotation_id", first_annotation_id)
    if category_ids is None:
        return
    if not isinstance(category_ids, Mapping):
        raise InputError(
            f"category_ids must be a dict {{label: integer id}}, got {type(category_ids).__name__}"
        )
    for label, cid in category_ids.items():
        if not isinstance(label, str):
            raise InputError(f"category_ids keys must be label strings, got {label!r}")
        _check_int(f"category_ids[{label!r}]", cid)
    missing = sorted(set(labels) - set(category_ids))
    if missing:
        raise InputError(
            f"category_ids has no id for the labels {missing}; "
            f"give one for every label, got keys {sorted(category_ids)}"
        )


def _why_unwritable(folder: Path, e: OSError) -> str:
    for p in (folder, *folder.parents):
        if p.exists() or p.is_symlink():
            if not p.is_dir():
                return f"{str(p)!r} is a file, not a folder"
            break
    if isinstance(e, PermissionError):
        return "permission denied"
    return e.strerror or str(e)


def _foreign_files(folder: Path) -> list[str]:
    """Entries of ``folder`` that :meth:`Result.save` did not write (relative names)."""
    foreign = []
    for entry in sorted(folder.iterdir()):
        if entry.name in _SAVED_FILES and entry.is_file() and not entry.is_symlink():
            continue
        if entry.name == "masks" and entry.is_dir() and not entry.is_symlink():
            foreign += [
                f"masks/{m.name}"
                for m in sorted(entry.iterdir())
                if not (m.is_file() and not m.is_symlink() and _SAVED_MASK.fullmatch(m.name))
            ]
            continue
        foreign.append(entry.name + ("/" if entry.is_dir() else ""))
    return foreign


def _sibling(final: Path, tag: str) -> Path:
    return final.with_name(f".{final.name}.{tag}-{uuid.uuid4().hex[:8]}")


@dataclass(eq=False)
class Result:
    """Instances found in one image.

    Attributes:
        masks: ``(N, H, W)`` bool instance masks at the original image size.
        boxes: ``(N, 4)`` float32 XYXY boxes in original-image pixels (x right, y down),
            clipped to the image. For text prompts: the detector's boxes; for box prompts:
            the (clipped) boxes given; for point prompts: the bounding box of the mask
            (all zeros for an empty mask).
        scores: ``(N,)`` float32 instance confidence. For text prompts the detector's score;
            for point/box prompts (no detector) SAM's predicted IoU, i.e. equal to
            ``mask_scores``.
        mask_scores: ``(N,)`` float32 SAM predicted IoU of each mask. With
            ``refine_with_sam=False`` (detector masks used as they are) no SAM score exists
            and the detector's score is repeated here.
        labels: ``N`` strings: the detector phrase, or ``"point"`` / ``"box"`` for SAM prompts.
        image_size: ``(H, W)`` of the image.
        timings: seconds per stage: ``"detector"``, ``"encoder"`` (0.0 when the image
            embedding came from the cache), ``"decoder"`` and ``"total"`` (wall time of the
            whole ``segment`` call, image loading included). Empty for hand-built results.
        image: the ``(H, W, 3)`` uint8 RGB image the result belongs to, kept by reference
            (not copied, not compared, not saved in ``result.json``) so :meth:`overlay` and
            :meth:`save` can draw without being given the image again. ``None`` is allowed;
            then pass ``image=`` to those methods.
    """

    masks: np.ndarray
    boxes: np.ndarray
    scores: np.ndarray
    mask_scores: np.ndarray
    labels: list[str]
    image_size: tuple[int, int]
    timings: dict[str, float] = field(default_factory=dict)
    image: np.ndarray | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if len(self.image_size) != 2:
            raise InputError(f"image_size must be (H, W), got {self.image_size!r}")
        h, w = (int(v) for v in self.image_size)
        if h <= 0 or w <= 0:
            raise InputError(f"image_size must be positive (H, W), got {self.image_size!r}")
        self.image_size = (h, w)
        masks = np.asarray(self.masks)
        if masks.size == 0:
            masks = masks.reshape(0, h, w)
        if masks.ndim != 3 or masks.shape[1:] != (h, w):
            raise InputError(
                f"Result.masks must have shape (N, {h}, {w}) to match image_size, got {masks.shape}"
            )
        n = masks.shape[0]
        boxes = np.asarray(self.boxes, dtype=np.float32)
        if boxes.size == 0:
            boxes = boxes.reshape(0, 4)
        if boxes.shape != (n, 4):
            raise InputError(f"Result.boxes must have shape ({n}, 4), got {boxes.shape}")
        scores = np.asarray(self.scores, dtype=np.float32).reshape(-1)
        mask_scores = np.asarray(self.mask_scores, dtype=np.float32).reshape(-1)
        for name, arr in (("scores", scores), ("mask_scores", mask_scores)):
            if arr.shape != (n,):
                raise InputError(f"Result.{name} must have shape ({n},), got {arr.shape}")
        labels = list(self.labels)
        if len(labels) != n or not all(isinstance(s, str) for s in labels):
            raise InputError(f"Result.labels must be {n} strings, got {labels!r}")
        if self.image is not None:
            img = np.asarray(self.image)
            if img.shape != (h, w, 3) or img.dtype != np.uint8:
                raise InputError(
                    f"Result.image must be an ({h}, {w}, 3) uint8 array, got shape {img.shape} "
                    f"dtype {img.dtype}"
                )
            self.image = img
        self.masks = masks.astype(bool, copy=False)
        self.boxes = boxes
        self.scores = scores
        self.mask_scores = mask_scores
        self.labels = labels
        self.timings = {str(k): float(v) for k, v in dict(self.timings).items()}

    def __len__(self) -> int:
        return int(self.masks.shape[0])

    @classmethod
    def empty(
        cls,
        image_size: tuple[int, int],
        *,
        timings: dict[str, float] | None = None,
        image: np.ndarray | None = None,
    ) -> Result:
        """A result with no instances (no detections is not an error)."""
        h, w = (int(v) for v in image_size)
        return cls(
            masks=np.zeros((0, h, w), dtype=bool),
            boxes=np.zeros((0, 4), dtype=np.float32),
            scores=np.zeros(0, dtype=np.float32),
            mask_scores=np.zeros(0, dtype=np.float32),
            labels=[],
            image_size=(h, w),
            timings=dict(timings or {}),
            image=image,
        )

    # ------------------------------------------------------------------ shortcuts
    def category_ids(self, category_ids: dict[str, int] | None = None) -> dict[str, int]:
        """Label -> COCO category id (see :func:`grounded_sam.export.category_ids`).

        Raises:
            InputError: ``category_ids`` is not a ``{label: int}`` dict covering every label.
        """
        from grounded_sam.export import category_ids as _ids

        return _ids(self, category_ids)

    def to_coco(
        self,
        image_id: int = 1,
        category_ids: dict[str, int] | None = None,
        *,
        first_annotation_id: int = 1,
    ) -> list[dict]:
        """COCO annotation dicts with RLE masks (see :func:`grounded_sam.export.to_coco`).

        Raises:
            InputError: ``image_id`` or ``first_annotation_id`` not an integer, or
                ``category_ids`` not a ``{label: int}`` dict covering every label.
        """
        from grounded_sam.export import to_coco

        return to_coco(self, image_id, category_ids, first_annotation_id=first_annotation_id)

    def to_json(self, image_id: int = 1, category_ids: dict[str, int] | None = None) -> dict:
        """What :meth:`save` writes as ``result.json`` (see :func:`grounded_sam.export.to_json`).

        Raises:
            InputError: as for :meth:`to_coco`.
        """
        from grounded_sam.export import to_json

        return to_json(self, image_id, category_ids)

    def overlay(self, image: np.ndarray | None = None, alpha: float = 0.5) -> np.ndarray:
        """The image with coloured masks, boxes and labels: ``(H, W, 3)`` uint8 RGB.

        Args:
            image: the image (anything ``load_image`` accepts); default the kept :attr:`image`.
            alpha: mask opacity in ``[0, 1]``.
        Raises:
            InputError: no image given and none kept, or an image of another size.
        """
        from grounded_sam.visualize import draw_result

        return draw_result(self, image, alpha=alpha)

    def save(
        self,
        out_dir: str | os.PathLike,
        image: np.ndarray | None = None,
        *,
        image_id: int = 1,
        category_ids: dict[str, int] | None = None,
        alpha: float = 0.5,
    ) -> Path:
        """Write ``result.json``, ``overlay.png`` and ``masks/NNN_<label>.png`` into ``out_dir``
        (see :func:`grounded_sam.export.save_result`). Returns ``Path(out_dir)``.

        All or nothing: every argument is checked first, the output is written into a
        temporary folder beside ``out_dir`` and renamed into place at the end, so a failure
        leaves nothing half-written. ``out_dir`` may be new, empty, or an earlier
        ``save`` output, which is replaced as a whole (no stale masks or ``result.json``
        survive). A folder holding other files is refused, never emptied.

        Raises:
            InputError: a bad argument (``image_id``, ``category_ids``, ``alpha``, an image
                of another size), ``out_dir`` is a file or holds files that are not a saved
                result's, or it cannot be written (the message names the path).
        """
        from grounded_sam.export import save_result
        from grounded_sam.visualize import result_image

        # ---- every argument checked before anything is written
        if not isinstance(out_dir, (str, os.PathLike)):
            raise InputError(
                f"out_dir must be a folder path (str or pathlib.Path), got {type(out_dir).__name__}"
            )
        check_export_args(self.labels, image_id, category_ids)
        if (
            isinstance(alpha, (bool, np.bool_))
            or not isinstance(alpha, (int, float, np.integer, np.floating))
            or not (math.isfinite(alpha) and 0.0 <= alpha <= 1.0)
        ):
            raise InputError(f"alpha (mask opacity) must be a number in [0, 1], got {alpha!r}")
        img = None if image is None and self.image is None else result_image(self, image)
        out = Path(out_dir)
        final = Path(os.path.realpath(out) if out.is_symlink() else os.path.abspath(out))
        if final == final.parent or final == Path.cwd():
            raise InputError(
                f"cannot save the result to {str(out)!r} (the filesystem root or the current "
                "folder); pass a folder path such as 'out/cat'"
            )
        if final.exists():
            if not final.is_dir():
                raise InputError(
                    f"cannot save the result to {str(out)!r}: it exists and is not a folder; "
                    "pass a new folder path"
                )
            try:
                foreign = _foreign_files(final)
            except OSError as e:
                raise InputError(
                    f"cannot save the result to {str(out)!r}: {_why_unwritable(final, e)}"
                ) from e
            if foreign:
                more = f" and {len(foreign) - 5} more" if len(foreign) > 5 else ""
                raise InputError(
                    f"cannot save the result to {str(out)!r}: the folder holds files that are "
                    f"not from a saved result ({', '.join(foreign[:5])}{more}); nothing was "
                    "changed. Save into a new or empty folder, or move those files away"
                )
        # ---- written beside the destination, moved into place as a whole
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
            tmp = _sibling(final, "tmp")
            tmp.mkdir()
        except OSError as e:
            raise InputError(
                f"cannot save the result to {str(out)!r}: "
                f"{_why_unwritable(final.parent, e)}; pass a folder you can write"
            ) from e
        try:
            save_result(self, tmp, img, image_id=image_id, category_ids=category_ids, alpha=alpha)
            if final.exists():
                old = _sibling(final, "old")
                os.replace(final, old)
                try:
                    os.replace(tmp, final)
                except BaseException:
                    os.replace(old, final)
                    raise
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, final)
        except OSError as e:
            shutil.rmtree(tmp, ignore_errors=True)
            raise InputError(
                f"cannot save the result to {str(out)!r}: {_why_unwritable(final.parent, e)}; "
                "nothing was written (an earlier result there is kept)"
            ) from e
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return out
