"""``label --audit EXISTING.json``: compare the new labels with an existing COCO annotation
set, per image, per class and overall.

Matching is the evaluation module's: ``pycocotools`` ``COCOeval(iouType="segm")`` (what
``grounded-sam eval`` computes mask AP with), with the existing annotations as ground truth and
the new ones as detections, per image and class, greedily by score, at mask IoU >= 0.5 (AP50's
rule). Reported:

- **missed**: existing annotations no new one matches;
- **new**: new annotations matching no existing one;
- **low overlap**: matched pairs with mask IoU < 0.75 (they pass AP50 but not AP75).

Images pair up by ``file_name`` (exactly, or else by a unique path suffix, so ``images/a.jpg``
finds ``a.jpg``); classes by name, ignoring case. Existing annotations of classes outside the
ontology, crowd regions and images that are not in the dataset are counted, not matched.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from grounded_sam.engine.dataset import (
    AUDIT_JSON,
    AUDIT_MD,
    atomic_write,
    read_annotations,
)
from grounded_sam.errors import InputError

__all__ = ["MATCH_IOU", "GOOD_IOU", "audit_dataset", "load_existing"]

MATCH_IOU = 0.5
GOOD_IOU = 0.75


def load_existing(path: str | os.PathLike) -> dict[str, Any]:
    """Read and check an existing COCO instances file (RLE or polygon segmentations).

    Raises:
        InputError: missing, not JSON, not COCO instances, or records without the fields the
            audit needs (naming the first one).
    """
    path = Path(os.path.expanduser(os.fspath(path)))
    doc = read_annotations(path)
    where = f"--audit {str(path)!r}"
    for img in doc["images"]:
        if not isinstance(img.get("file_name"), str) or not all(
            isinstance(img.get(k), int) and img[k] > 0 for k in ("width", "height")
        ):
            raise InputError(
                f"{where}: image {img.get('id')!r} needs 'file_name', 'width' and 'height'"
            )
    for cat in doc["categories"]:
        if not isinstance(cat.get("name"), str):
            raise InputError(f"{where}: category {cat.get('id')!r} has no 'name'")
    image_ids = {img["id"] for img in doc["images"]}
    cat_ids = {c["id"] for c in doc["categories"]}
    for ann in doc["annotations"]:
        if ann.get("image_id") not in image_ids or ann.get("category_id") not in cat_ids:
            raise InputError(
                f"{where}: annotation {ann.get('id')!r} refers to an unknown image_id or "
                "category_id"
            )
        if not isinstance(ann.get("segmentation"), (dict, list)):
            raise InputError(
                f"{where}: annotation {ann.get('id')!r} has no mask 'segmentation' (RLE or "
                "polygons); the audit compares masks"
            )
    doc["_source"] = str(path)
    return doc


def _norm(name: str) -> str:
    name = name.replace("\\", "/")
    while name.startswith("./"):
        name = name[2:]
    return name


def _pair_images(ours: list[dict], theirs: list[dict]) -> dict[Any, dict]:
    """Their image id -> our image record, by exact file_name or a unique path suffix."""
    exact = {_norm(img["file_name"]): img for img in ours}
    out: dict[Any, dict] = {}
    for img in theirs:
        name = _norm(img["file_name"])
        hit = exact.get(name)
        if hit is None:
            cands = [
                o
                for o in ours
                if o["file_name"].endswith("/" + name) or name.endswith("/" + o["file_name"])
            ]
            hit = cands[0] if len(cands) == 1 else None
        if hit is not None:
            out[img["id"]] = hit
    return out


def _rle(segmentation: Any, h: int, w: int) -> dict:
    from pycocotools import mask as mask_utils

    if isinstance(segmentation, list):
        polys = [p for p in segmentation if len(p) >= 6]
        if not polys:
            return mask_utils.encode(np.zeros((h, w, 1), dtype=np.uint8, order="F"))[0]
        return mask_utils.merge(mask_utils.frPyObjects(polys, h, w))
    counts = segmentation["counts"]
    if isinstance(counts, list):
        return mask_utils.frPyObjects(segmentation, h, w)
    return {"size": list(segmentation["size"]), "counts": counts.encode("ascii")}


def audit_dataset(
    dataset: str | os.PathLike,
    existing: dict[str, Any],
    *,
    match_iou: float = MATCH_IOU,
    good_iou: float = GOOD_IOU,
) -> dict[str, Any]:
    """Compare ``DATASET/annotations.json`` with ``existing`` (from :func:`load_existing`);
    write ``audit.json`` and ``audit.md`` into the dataset; return the overall figures."""
    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    root = Path(dataset)
    ours = read_annotations(root)
    our_cats = {c["name"].casefold(): c for c in ours["categories"]}
    their_cats = {c["id"]: c for c in existing["categories"]}
    pairs = _pair_images(ours["images"], existing["images"])
    their_images = {img["id"]: img for img in existing["images"]}
    audited: dict[int, dict] = {}
    other_classes: Counter[str] = Counter()
    crowd = size_mismatch = 0
    gt_anns = []
    for ann in existing["annotations"]:
        ours_img = pairs.get(ann["image_id"])
        if ours_img is None:
            continue
        theirs = their_images[ann["image_id"]]
        if (theirs["height"], theirs["width"]) != (ours_img["height"], ours_img["width"]):
            size_mismatch += 1
            continue
        cat = our_cats.get(their_cats[ann["category_id"]]["name"].casefold())
        if cat is None:
            other_classes[their_cats[ann["category_id"]]["name"]] += 1
            continue
        if ann.get("iscrowd"):
            crowd += 1
            continue
        h, w = ours_img["height"], ours_img["width"]
        rle = _rle(ann["segmentation"], h, w)
        gt_anns.append(
            {
                "id": len(gt_anns) + 1,
                "existing_id": ann["id"],
                "image_id": ours_img["id"],
                "category_id": cat["id"],
                "segmentation": rle,
                "area": float(mask_utils.area(rle)),
                "bbox": [float(v) for v in mask_utils.toBbox(rle)],
                "iscrowd": 0,
            }
        )
    for img in pairs.values():
        audited[img["id"]] = img
    image_ids = sorted(audited)
    dts = [a for a in ours["annotations"] if a["image_id"] in audited]
    matches: list[tuple[int, int]] = []  # (our annotation id, gt index id)
    if gt_anns and dts:
        gt = COCO()
        gt.dataset = {
            "images": [dict(audited[i]) for i in image_ids],
            "annotations": gt_anns,
            "categories": ours["categories"],
        }
        with contextlib.redirect_stdout(io.StringIO()):
            gt.createIndex()
            dt = gt.loadRes(
                [
                    {
                        "id": a["id"],
                        "image_id": a["image_id"],
                        "category_id": a["category_id"],
                        "segmentation": a["segmentation"],
                        "score": a["score"],
                    }
                    for a in dts
                ]
            )
            ev = COCOeval(gt, dt, iouType="segm")
            ev.params.imgIds = image_ids
            ev.params.iouThrs = np.array([match_iou])
            ev.params.areaRng = [[0.0, 1e12]]
            ev.params.areaRngLbl = ["all"]
            ev.params.maxDets = [max(len(dts), 1)]
            ev.evaluate()
        for e in ev.evalImgs:
            if e is None:
                continue
            for dt_id, gt_id in zip(e["dtIds"], e["dtMatches"][0], strict=True):
                if gt_id:
                    matches.append((int(dt_id), int(gt_id)))
    gt_by_id = {g["id"]: g for g in gt_anns}
    dt_by_id = {a["id"]: a for a in dts}
    matched_gt = {g for _, g in matches}
    matched_dt = {d for d, _ in matches}
    names = {c["id"]: c["name"] for c in ours["categories"]}
    per_image: dict[int, dict[str, Any]] = {
        i: {
            "image_id": i,
            "file_name": audited[i]["file_name"],
            "missed": [],
            "new": [],
            "low_overlap": [],
            "matched": 0,
        }
        for i in image_ids
    }
    per_class = {
        n: {"existing": 0, "new_total": 0, "matched": 0, "missed": 0, "new": 0, "low_overlap": 0}
        for n in names.values()
    }
    ious = []
    for d, g in sorted(matches):
        da, ga = dt_by_id[d], gt_by_id[g]
        r = {"size": da["segmentation"]["size"], "counts": da["segmentation"]["counts"].encode()}
        iou = float(mask_utils.iou([r], [ga["segmentation"]], [0])[0][0])
        ious.append(iou)
        rec = per_image[da["image_id"]]
        rec["matched"] += 1
        per_class[names[da["category_id"]]]["matched"] += 1
        if iou < good_iou:
            rec["low_overlap"].append(
                {"annotation_id": d, "existing_id": ga["existing_id"], "iou": round(iou, 4)}
            )
            per_class[names[da["category_id"]]]["low_overlap"] += 1
    for g in gt_anns:
        per_class[names[g["category_id"]]]["existing"] += 1
        if g["id"] not in matched_gt:
            per_image[g["image_id"]]["missed"].append(g["existing_id"])
            per_class[names[g["category_id"]]]["missed"] += 1
    for a in dts:
        per_class[names[a["category_id"]]]["new_total"] += 1
        if a["id"] not in matched_dt:
            per_image[a["image_id"]]["new"].append(a["id"])
            per_class[names[a["category_id"]]]["new"] += 1
    overall = {
        "existing": len(gt_anns),
        "labelled": len(dts),
        "matched": len(matches),
        "missed": len(gt_anns) - len(matched_gt),
        "new": len(dts) - len(matched_dt),
        "low_overlap": sum(len(r["low_overlap"]) for r in per_image.values()),
        "mean_iou_matched": round(float(np.mean(ious)), 4) if ious else None,
        "images_audited": len(image_ids),
        "existing_images_not_in_dataset": len(existing["images"]) - len(pairs),
        "dataset_images_not_in_existing": len(ours["images"]) - len(image_ids),
        "existing_other_classes": dict(sorted(other_classes.items())),
        "existing_crowd_skipped": crowd,
        "existing_size_mismatch_skipped": size_mismatch,
    }
    report = {
        "existing_file": existing.get("_source"),
        "match": f"pycocotools COCOeval segm matching at mask IoU >= {match_iou}",
        "low_overlap_below_iou": good_iou,
        "overall": overall,
        "per_class": per_class,
        "per_image": [per_image[i] for i in image_ids],
    }
    atomic_write(root / AUDIT_JSON, json.dumps(report, indent=1, ensure_ascii=False) + "\n")
    atomic_write(root / AUDIT_MD, _markdown(report))
    return overall


def _markdown(report: dict[str, Any]) -> str:
    o = report["overall"]
    lines = [
        "# Audit: new labels against existing annotations",
        "",
        f"Existing: `{report['existing_file']}`. Matching: {report['match']}; low overlap: "
        f"matched pairs with IoU < {report['low_overlap_below_iou']}.",
        "",
        "| | count |",
        "|---|---:|",
        f"| images compared | {o['images_audited']} |",
        f"| existing annotations | {o['existing']} |",
        f"| new labels | {o['labelled']} |",
        f"| matched | {o['matched']} |",
        f"| **missed** (existing, no new label) | {o['missed']} |",
        f"| **new** (no existing annotation) | {o['new']} |",
        f"| **low overlap** pairs | {o['low_overlap']} |",
        f"| mean IoU of matched pairs | "
        f"{'-' if o['mean_iou_matched'] is None else format(o['mean_iou_matched'], '.3f')} |",
        "",
    ]
    notes = []
    if o["existing_images_not_in_dataset"]:
        notes.append(
            f"{o['existing_images_not_in_dataset']} existing images are not in the dataset"
        )
    if o["dataset_images_not_in_existing"]:
        notes.append(
            f"{o['dataset_images_not_in_existing']} dataset images are not in the existing set"
        )
    if o["existing_other_classes"]:
        other = ", ".join(f"{k} ({v})" for k, v in o["existing_other_classes"].items())
        notes.append(f"existing annotations of classes outside the ontology, not compared: {other}")
    if o["existing_crowd_skipped"]:
        notes.append(f"{o['existing_crowd_skipped']} existing crowd regions not compared")
    if o["existing_size_mismatch_skipped"]:
        notes.append(
            f"{o['existing_size_mismatch_skipped']} existing annotations on images of another "
            "size not compared"
        )
    lines += [f"- {n}" for n in notes] + ([""] if notes else [])
    lines += [
        "## Per class",
        "",
        "| class | existing | new labels | matched | missed | new | low overlap |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, c in report["per_class"].items():
        lines.append(
            f"| {name} | {c['existing']} | {c['new_total']} | {c['matched']} | {c['missed']} | "
            f"{c['new']} | {c['low_overlap']} |"
        )
    issues = [r for r in report["per_image"] if r["missed"] or r["new"] or r["low_overlap"]]
    issues.sort(
        key=lambda r: (-(len(r["missed"]) + len(r["new"]) + len(r["low_overlap"])), r["image_id"])
    )
    lines += ["", f"## Images with differences ({len(issues)} of {len(report['per_image'])})", ""]
    if issues:
        lines += [
            "| image | missed (existing ids) | new (annotation ids) | low overlap (id~existing: IoU) |",
            "|---|---|---|---|",
        ]
        for r in issues:
            low = ", ".join(
                f"{p['annotation_id']}~{p['existing_id']}: {p['iou']:.2f}" for p in r["low_overlap"]
            )
            lines.append(
                f"| {r['file_name']} | {', '.join(map(str, r['missed'])) or '-'} | "
                f"{', '.join(map(str, r['new'])) or '-'} | {low or '-'} |"
            )
    return "\n".join(lines) + "\n"
