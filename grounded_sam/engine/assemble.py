"""Assemble the committed per-image units into ``annotations.json``, ``errors.json``,
``review.json`` and ``candidates.json``.

Deterministic: image ids are 1..N over the labelled images sorted by ``file_name``,
annotation (and candidate) ids 1..M in image-id order, then unit order; records are written
in that order with a fixed layout. So the same units give the same bytes, whichever engine,
shard or process wrote them and in whatever order. Memory holds one unit at a time plus a
few numbers per image (units are read again for the annotations and the candidates, which are
streamed to disk).
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from grounded_sam.engine.dataset import (
    ANNOTATIONS,
    CANDIDATES,
    ERRORS,
    REVIEW,
    ImageUnit,
    atomic_open,
    dump_coco,
    file_digest,
    iter_units,
    read_unit,
    unit_path,
    write_json_list,
)
from grounded_sam.engine.review import ReviewPolicy, review_items, sort_review

__all__ = ["Assembly", "assemble", "annotation_record"]

# the keys of an annotation in annotations.json, in order (units carry them plus "flags")
ANNOTATION_KEYS = (
    "category_id",
    "segmentation",
    "area",
    "bbox",
    "iscrowd",
    "score",
    "mask_score",
    "stability",
    "prompt",
)
CANDIDATE_KEYS = ("segmentation", "area", "bbox", "mask_score", "stability")


@dataclass
class Assembly:
    """What was assembled.

    Attributes:
        images: labelled images in ``annotations.json`` (empty ones included).
        annotations: instances written.
        empty: labelled images without instances.
        per_class: class name -> instances.
        errors: ``errors.json`` records (unreadable images).
        review: items in ``review.json``.
        candidates: records in ``candidates.json``.
        missing: listed images with no unit yet (not done; not in any output).
        digest: BLAKE2b-256 of the ``annotations.json`` written.
    """

    images: int = 0
    annotations: int = 0
    empty: int = 0
    per_class: dict[str, int] = field(default_factory=dict)
    errors: list[dict[str, str]] = field(default_factory=list)
    review: int = 0
    candidates: int = 0
    missing: list[str] = field(default_factory=list)
    digest: str = ""


def annotation_record(inst: dict[str, Any], ann_id: int, image_id: int) -> dict[str, Any]:
    """A unit instance -> its ``annotations.json`` record (fixed key order, no flags)."""
    return {"id": ann_id, "image_id": image_id, **{k: inst[k] for k in ANNOTATION_KEYS}}


def _unit_names(dataset: Path) -> list[str]:
    return sorted({u.file_name for u in iter_units(dataset)})


def _units(dataset: Path, names: Sequence[str]) -> Iterator[tuple[str, ImageUnit | None]]:
    for name in names:
        yield name, read_unit(unit_path(dataset, name))


def assemble(
    dataset: str | os.PathLike,
    categories: Sequence[dict[str, Any]],
    thresholds: Sequence[float | None],
    *,
    file_names: Sequence[str] | None = None,
    with_candidates: bool = False,
    policy: ReviewPolicy | None = None,
    record_digest: Callable[[str], None] | None = None,
) -> Assembly:
    """Write the dataset's assembled files from its units.

    Args:
        dataset: the dataset folder.
        categories: COCO categories (``{"id", "name", "prompts"}``, ids 1..K).
        thresholds: per category, the score its boxes had to exceed (for the review queue).
        file_names: the images of this run; ``None``: every unit in the folder (``--merge``).
        with_candidates: write ``candidates.json`` (also when empty).
        policy: the review queue's limits.
        record_digest: called with the new ``annotations.json`` digest just before the file
            is renamed into place (the run records it, to tell later edits from its own).
    """
    root = Path(dataset)
    names = sorted(set(file_names)) if file_names is not None else _unit_names(root)
    names_by_id = [c["name"] for c in sorted(categories, key=lambda c: c["id"])]
    out = Assembly()
    images: list[dict[str, Any]] = []
    review: list[dict[str, Any]] = []
    per_class: Counter[int] = Counter()
    next_ann = 1
    # pass 1: images, ids, errors, review queue, counts
    for name, unit in _units(root, names):
        if unit is None:
            out.missing.append(name)
            continue
        if not unit.ok:
            out.errors.append({"file_name": name, "reason": unit.reason or ""})
            continue
        image_id = len(images) + 1
        images.append(
            {"id": image_id, "file_name": name, "width": unit.width, "height": unit.height}
        )
        ids = list(range(next_ann, next_ann + len(unit.instances)))
        next_ann += len(unit.instances)
        review += review_items(
            unit, image_id, ids, thresholds, names_by_id, policy or ReviewPolicy()
        )
        per_class.update(inst["category_id"] for inst in unit.instances)
        out.empty += not unit.instances
        out.candidates += len(unit.candidates)
    labelled = [img["file_name"] for img in images]

    # pass 2: annotations, streamed
    def annotations() -> Iterator[dict[str, Any]]:
        ann_id = 1
        for image_id, (_, unit) in enumerate(_units(root, labelled), start=1):
            assert unit is not None and unit.ok, "a unit vanished during assembly"
            for inst in unit.instances:
                yield annotation_record(inst, ann_id, image_id)
                ann_id += 1

    def before_replace(tmp: Path) -> None:
        out.digest = file_digest(tmp)
        if record_digest is not None:
            record_digest(out.digest)

    with atomic_open(root / ANNOTATIONS, before_replace=before_replace) as f:
        out.images, out.annotations = dump_coco(f, images, annotations(), categories)
    write_json_list(root / ERRORS, out.errors)
    out.review = write_json_list(root / REVIEW, sort_review(review))

    # pass 3: candidates
    if with_candidates or out.candidates:

        def candidates() -> Iterator[dict[str, Any]]:
            cand_id = 1
            for image_id, (_, unit) in enumerate(_units(root, labelled), start=1):
                for c in unit.candidates:
                    yield {"id": cand_id, "image_id": image_id, **{k: c[k] for k in CANDIDATE_KEYS}}
                    cand_id += 1

        write_json_list(root / CANDIDATES, candidates())
    out.per_class = {
        names_by_id[cid - 1]: per_class.get(cid, 0) for cid in range(1, len(names_by_id) + 1)
    }
    return out
