"""Run a pipeline over a dataset, resumably, and write predictions, metrics and a report.

Outputs in ``out_dir``:

* ``run.json`` -- the run configuration, written first. A restart must use the same one.
* ``records.jsonl`` -- one JSON line per finished image (its COCO predictions, the per-prompt
  intersection/union pixel counts and the per-prompt stage timings), flushed and fsynced after
  every image. This file is the done-list: a restart skips the images it holds and drops a
  trailing half-written line (a crash mid-write).
* ``predictions.json`` (COCO results format, RLE), ``metrics.json`` and ``report.md`` --
  computed from ``records.jsonl`` when the run ends, each written atomically. On Ctrl-C they
  are written for the images done so far with ``"complete": false`` before the interrupt is
  re-raised; rerunning the same command finishes the run.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from grounded_sam.errors import InputError
from grounded_sam.eval.datasets import EvalDataset, Sample
from grounded_sam.eval.metrics import (
    AP_KEYS,
    ciou,
    coco_mask_ap,
    encode_mask,
    latency_summary,
    miou,
    pair_iou,
    peak_memory,
)
from grounded_sam.eval.oracle import GT_BOXES, GtBoxesDetector

__all__ = [
    "RunSpec",
    "build_pipeline",
    "compute_metrics",
    "evaluate",
    "package_versions",
    "read_records",
]

RECORDS = "records.jsonl"
RUN_JSON = "run.json"
STAGES = ("detector", "encoder", "decoder", "total")
SCORE_MODES = ("detector", "mask", "product")
CONVENTIONS = {
    "mIoU": (
        "mean over (image, prompt) pairs of IoU(union of predicted masks, union of ground-truth "
        "masks); an empty prediction scores 0 against a non-empty ground truth; an empty ground "
        "truth scores 1 with an empty prediction and 0 otherwise"
    ),
    "cIoU": "sum of intersections / sum of unions over all (image, prompt) pairs",
    "mask_AP": "pycocotools COCOeval(iouType='segm') on predictions.json, AP@[.5:.95], maxDets 100",
    "latency_ms": "per image: each stage summed over the image's prompts; median/p90/mean in ms",
    "latency_ms_per_prompt": "per segment() call (encoder is 0 when the embedding was cached)",
}


@dataclass
class RunSpec:
    """One detector x SAM configuration.

    Attributes:
        detector: a registered detector name or ``"gt-boxes"`` (the ground-truth-box oracle).
        sam: a SAM variant name (``vit_b`` ... ``mobile_sam``).
        sam_checkpoint: official-format checkpoint; ``None`` uses the cached registry weights.
        precision: SAM precision mode (``"fp32"``, ``"bf16"``, ``"fp16"``, ``"int8"``).
        detector_args: keyword arguments for ``build_detector`` (e.g. ``box_threshold``).
        device: torch device; ``None`` picks CUDA when available.
        refine_with_sam: ``False`` keeps the detector's own masks (FastSAM-style ``yolo-clip``).
        multimask_output: let SAM pick the best of 3 masks per box.
        score: prediction score for AP: the detector's (``"detector"``), SAM's predicted IoU
            (``"mask"``) or their product (``"product"``).
        name: run name (used for the run folder in grids and in comparison tables).
    """

    detector: str
    sam: str = "mobile_sam"
    sam_checkpoint: str | None = None
    precision: str = "fp32"
    detector_args: dict[str, Any] = field(default_factory=dict)
    device: str | None = None
    refine_with_sam: bool = True
    multimask_output: bool = False
    score: str = "detector"
    name: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.detector, str) or not self.detector:
            raise InputError(f"detector must be a detector name, got {self.detector!r}")
        if self.score not in SCORE_MODES:
            raise InputError(f"score must be one of {SCORE_MODES}, got {self.score!r}")
        from grounded_sam.model.precision import check_precision

        check_precision(self.precision)
        if not isinstance(self.detector_args, Mapping):
            raise InputError(
                f"detector_args must be a mapping, got {type(self.detector_args).__name__}"
            )
        self.detector_args = dict(self.detector_args)
        if self.detector == GT_BOXES and self.detector_args:
            raise InputError(
                f"the gt-boxes oracle takes no detector arguments, got {self.detector_args}"
            )
        if self.detector == GT_BOXES and not self.refine_with_sam:
            raise InputError(
                "refine_with_sam=False needs a detector with masks; gt-boxes gives boxes only"
            )
        if self.sam_checkpoint is not None:
            self.sam_checkpoint = str(self.sam_checkpoint)
        if self.device is not None:
            self.device = str(self.device)
        if self.name is None:
            sam = self.sam if self.precision == "fp32" else f"{self.sam}-{self.precision}"
            self.name = f"{self.detector}__{sam if self.refine_with_sam else 'no-sam'}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def build_pipeline(spec: RunSpec, *, sam: Any = None, detector: Any = None):
    """Build the :class:`~grounded_sam.pipeline.GroundedSAM` for ``spec``.

    Args:
        spec: the run configuration.
        sam: optional ready ``Sam`` / ``SamPredictor`` used instead of building ``spec.sam``
            (tests, or models built elsewhere).
        detector: optional ready detector used instead of building ``spec.detector``.

    Returns:
        ``(pipeline, oracle)``: ``oracle`` is the :class:`GtBoxesDetector` when
        ``spec.detector == "gt-boxes"``, else ``None``.
    """
    from grounded_sam.pipeline import GroundedSAM

    oracle = None
    if detector is None and spec.detector == GT_BOXES:
        oracle = detector = GtBoxesDetector()
    elif isinstance(detector, GtBoxesDetector):
        oracle = detector
    kwargs: dict[str, Any] = {"device": spec.device}
    if sam is None:
        kwargs["sam_checkpoint"] = spec.sam_checkpoint
        kwargs["precision"] = spec.precision
        sam = spec.sam
    if detector is None:
        return GroundedSAM(spec.detector, sam, **kwargs, **spec.detector_args), None
    return GroundedSAM(detector, sam, **kwargs), oracle


def package_versions() -> dict[str, str]:
    """Versions of Python, the platform and the packages that shape the numbers."""
    out = {"python": platform.python_version(), "platform": platform.platform()}
    for pkg in (
        "grounded-sam",
        "torch",
        "torchvision",
        "numpy",
        "pycocotools",
        "transformers",
        "ultralytics",
        "open_clip_torch",
    ):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    if out["grounded-sam"] == "not installed":
        from grounded_sam import __version__

        out["grounded-sam"] = f"{__version__} (source tree)"
    try:
        import torch

        if torch.cuda.is_available():
            out["cuda_device"] = torch.cuda.get_device_name()
            out["cuda"] = str(torch.version.cuda)
    except ImportError:  # pragma: no cover - torch is a hard dependency
        pass
    return out


# ---------------------------------------------------------------- records file
def read_records(out_dir: str | os.PathLike, *, repair: bool = False) -> list[dict]:
    """The per-image records of ``out_dir/records.jsonl`` (``[]`` if absent).

    A trailing line that is not valid JSON (a crash while writing it) is ignored, and with
    ``repair=True`` cut from the file. A bad line anywhere else is a ``ValueError``.
    """
    path = Path(out_dir) / RECORDS
    if not path.exists():
        return []
    raw = path.read_bytes()
    lines = raw.split(b"\n")
    records, good_bytes = [], 0
    for i, line in enumerate(lines):
        if not line.strip():
            good_bytes += len(line) + (1 if i < len(lines) - 1 else 0)
            continue
        try:
            rec = json.loads(line)
            if not isinstance(rec, dict) or "image_id" not in rec:
                raise InputError("not a record")
            if i == len(lines) - 1:  # complete JSON but no newline: treat as unfinished
                raise InputError("no trailing newline")
        except ValueError as e:
            if any(x.strip() for x in lines[i + 1 :]):
                raise InputError(
                    f"{path} line {i + 1} is corrupt ({e}); delete the run folder or pass "
                    "--overwrite to start again"
                ) from None
            if repair:
                with open(path, "r+b") as f:
                    f.truncate(good_bytes)
            break
        records.append(rec)
        good_bytes += len(line) + 1
    return records


def _append_record(path: Path, record: dict) -> None:
    line = json.dumps(record, separators=(",", ":")) + "\n"
    with open(path, "a", encoding="utf-8") as f:
        f.write(line)
        f.flush()
        os.fsync(f.fileno())


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _fingerprint(config: Mapping[str, Any]) -> dict[str, Any]:
    """What must not change between a run and its restart (``limit`` may grow)."""
    cfg = json.loads(json.dumps(config, default=str))
    ds = dict(cfg.get("dataset", {}))
    for k in ("limit", "n_images", "n_refs"):
        ds.pop(k, None)
    cfg["dataset"] = ds
    cfg.pop("protocol", None)  # measurement settings (warm-up) may change on a restart
    return cfg


def _prepare_out(out_dir: Path, config: dict, overwrite: bool) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    run_json = out_dir / RUN_JSON
    if overwrite:
        for name in (RECORDS, RUN_JSON, "predictions.json", "metrics.json", "report.md"):
            (out_dir / name).unlink(missing_ok=True)
    if run_json.exists():
        try:
            previous = json.loads(run_json.read_text(encoding="utf-8"))
        except ValueError as e:
            raise InputError(f"{run_json} is not valid JSON ({e}); pass --overwrite") from e
        old, new = _fingerprint(previous), _fingerprint(config)
        if old != new:
            diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
            raise InputError(
                f"{out_dir} holds a run with a different configuration (differs in {diff}); "
                "use another --out, or --overwrite to discard it"
            )
    elif (out_dir / RECORDS).exists():
        raise InputError(f"{out_dir} has {RECORDS} but no {RUN_JSON}; pass --overwrite")
    _write_atomic(run_json, json.dumps(config, indent=1, default=str) + "\n")


# ---------------------------------------------------------------- evaluation
def _pick_score(result, mode: str) -> np.ndarray:
    if mode == "detector":
        return result.scores
    if mode == "mask":
        return result.mask_scores
    return result.scores * result.mask_scores


def _eval_sample(
    sample: Sample,
    pipeline: Any,
    oracle: GtBoxesDetector | None,
    *,
    single_target: bool,
    score: str,
    segment_kwargs: dict[str, Any],
) -> dict:
    from grounded_sam.io import load_image

    image = load_image(sample.path)
    if image.shape[:2] != (sample.height, sample.width):
        raise InputError(
            f"image {sample.path} has size {image.shape[:2]} (H, W) but its annotation says "
            f"{(sample.height, sample.width)}"
        )
    predictions, pairs, timings = [], [], []
    for prompt in sample.prompts:
        if prompt.gt_mask.shape != image.shape[:2]:
            raise InputError(
                f"ground-truth mask for {prompt.text!r} in {sample.path} has shape "
                f"{prompt.gt_mask.shape}, expected the image size {image.shape[:2]}"
            )
        if oracle is not None:
            oracle.set_target(prompt.gt_boxes)
        t0 = time.perf_counter()
        result = pipeline.segment(image, prompt.text, **segment_kwargs)
        wall = time.perf_counter() - t0
        masks, scores = result.masks, _pick_score(result, score)
        if single_target and len(scores) > 1:
            best = int(np.argmax(scores))
            masks, scores = masks[best : best + 1], scores[best : best + 1]
        union = masks.any(axis=0) if len(masks) else np.zeros(image.shape[:2], dtype=bool)
        inter = int(np.count_nonzero(union & prompt.gt_mask))
        uni = int(np.count_nonzero(union | prompt.gt_mask))
        pairs.append(
            {
                "text": prompt.text,
                "category_id": int(prompt.category_id),
                "ref_id": prompt.ref_id,
                "n_det": int(len(masks)),
                "intersection": inter,
                "union": uni,
                "gt_area": int(np.count_nonzero(prompt.gt_mask)),
                "pred_area": int(np.count_nonzero(union)),
            }
        )
        for m, s in zip(masks, scores, strict=True):
            rle, bbox, area = encode_mask(m)
            predictions.append(
                {
                    "image_id": int(sample.image_id),
                    "category_id": int(prompt.category_id),
                    "segmentation": rle,
                    "bbox": bbox,
                    "area": area,
                    "score": float(s),
                }
            )
        t = {k: float(v) for k, v in getattr(result, "timings", {}).items() if k in STAGES}
        t.setdefault("total", wall)
        timings.append(t)
    return {
        "image_id": int(sample.image_id),
        "file_name": sample.path.name,
        "n_prompts": len(sample.prompts),
        "pairs": pairs,
        "predictions": predictions,
        "timings": timings,
    }


def _warm_up(
    pipeline: Any,
    sample: Sample,
    oracle: GtBoxesDetector | None,
    segment_kwargs: dict[str, Any],
    n: int,
) -> int:
    """Run ``n`` untimed calls on ``sample``'s first prompt (CUDA context, kernel selection,
    lazy model builds), then drop the cached embedding so the timed pass encodes again.
    Returns the number of calls made."""
    from grounded_sam.io import load_image

    if n <= 0 or not sample.prompts:
        return 0
    image = load_image(sample.path)
    prompt = sample.prompts[0]
    for _ in range(n):
        if oracle is not None:
            oracle.set_target(prompt.gt_boxes)
        pipeline.segment(image, prompt.text, **segment_kwargs)
    clear = getattr(pipeline, "clear_cache", None)
    if callable(clear):
        clear()
    return n


def compute_metrics(records: list[dict], dataset: EvalDataset) -> tuple[dict[str, Any], str]:
    """Metrics of the finished images: ``(metrics dict, COCOeval summary text)``."""
    pairs = [(p["intersection"], p["union"]) for r in records for p in r["pairs"]]
    predictions = [p for r in records for p in r["predictions"]]
    image_ids = [r["image_id"] for r in records]
    gt = dataset.coco_gt()
    if gt is not None:
        ap, summary = coco_mask_ap(gt, predictions, image_ids)
    else:
        ap = dict.fromkeys(AP_KEYS)
        summary = (
            f"mask AP is not defined for {dataset.kind} data (one referred object per prompt)\n"
        )
    per_image: dict[str, list[float]] = {s: [] for s in STAGES}
    per_prompt: dict[str, list[float]] = {s: [] for s in STAGES}
    for r in records:
        if not r["timings"]:
            continue
        for s in STAGES:
            vals = [t[s] for t in r["timings"] if s in t]
            per_prompt[s].extend(vals)
            if len(vals) == len(r["timings"]):
                per_image[s].append(float(sum(vals)))
    n_pairs = len(pairs)
    metrics: dict[str, Any] = {
        **ap,
        "mIoU": miou(pairs),
        "cIoU": ciou(pairs),
        "n_images": len(records),
        "n_images_with_prompts": sum(1 for r in records if r["n_prompts"]),
        "n_prompts": n_pairs,
        "n_detections": len(predictions),
        "n_empty_predictions": sum(1 for r in records for p in r["pairs"] if p["n_det"] == 0),
        "n_empty_ground_truth": sum(1 for r in records for p in r["pairs"] if p["gt_area"] == 0),
        "precision_at_iou50": (
            sum(1 for i, u in pairs if pair_iou(i, u) >= 0.5) / n_pairs if n_pairs else None
        ),
        "latency_ms": latency_summary(per_image),
        "latency_ms_per_prompt": latency_summary(per_prompt),
    }
    return metrics, summary


def _finalize(
    out_dir: Path,
    dataset: EvalDataset,
    config: dict,
    *,
    complete: bool,
    device: Any,
    started: float,
) -> dict[str, Any]:
    from grounded_sam.eval.report import render_report

    wanted = set(dataset.image_ids())
    records = [r for r in read_records(out_dir) if r["image_id"] in wanted]
    metrics, summary = compute_metrics(records, dataset)
    metrics = {
        "complete": complete,
        "n_images_total": len(dataset),
        **metrics,
        "peak_memory": {**peak_memory(device), "scope": "the latest session of this run"},
        "session_wall_s": time.perf_counter() - started,
        "conventions": CONVENTIONS,
        "config": config,
        "versions": package_versions(),
    }
    predictions = [p for r in records for p in r["predictions"]]
    _write_atomic(out_dir / "predictions.json", json.dumps(predictions) + "\n")
    _write_atomic(out_dir / "metrics.json", json.dumps(metrics, indent=1, default=str) + "\n")
    _write_atomic(out_dir / "report.md", render_report(metrics, summary))
    return metrics


def evaluate(
    dataset: EvalDataset,
    pipeline: Any,
    out_dir: str | os.PathLike,
    *,
    spec: RunSpec | None = None,
    oracle: GtBoxesDetector | None = None,
    overwrite: bool = False,
    show_progress: bool = True,
    warmup: int = 1,
    on_image: Callable[[dict], None] | None = None,
) -> dict[str, Any]:
    """Evaluate ``pipeline`` on ``dataset``; resumable; returns the metrics dict.

    Args:
        dataset: an :class:`~grounded_sam.eval.datasets.EvalDataset`.
        pipeline: anything with ``segment(image, text, **kw) -> Result`` (a ``GroundedSAM``).
        out_dir: run folder (see the module docstring for its files).
        spec: the configuration recorded in ``run.json``/``metrics.json`` and checked on
            restart; its ``refine_with_sam``, ``multimask_output`` and ``score`` are applied.
            ``None``: the pipeline's detector name and ``sam="custom"`` are recorded.
        oracle: the ``gt-boxes`` detector inside ``pipeline``, given its target per prompt.
        overwrite: discard a previous run in ``out_dir`` instead of resuming it.
        show_progress: a progress bar on stderr when it is a terminal.
        warmup: untimed calls on the first image to do before timing (not recorded; the
            image's cached embedding is dropped afterwards so its encoder pass is timed).
        on_image: called with each image's record after it is saved (progress hooks).

    Raises:
        ValueError: ``out_dir`` holds a run with another configuration, or bad data.
        KeyboardInterrupt: re-raised after writing partial outputs (``"complete": false``).
    """
    from grounded_sam.cli._common import progress

    if spec is None:  # describe the pipeline without building a lazily built detector
        det_name = getattr(pipeline, "detector_name", None) or type(pipeline).__name__
        spec = RunSpec(detector=str(det_name), sam="custom")
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise InputError(f"warmup must be an integer >= 0, got {warmup!r}")
    out = Path(out_dir)
    config = {"run": spec.to_dict(), "dataset": dataset.describe(), "protocol": {"warmup": warmup}}
    _prepare_out(out, config, overwrite)
    done = {r["image_id"] for r in read_records(out, repair=True)}
    device = getattr(pipeline, "device", spec.device)
    if device is not None and str(device).startswith("cuda"):
        import torch

        torch.cuda.reset_peak_memory_stats(torch.device(str(device)))
    started = time.perf_counter()
    todo = [i for i in dataset.image_ids() if i not in done]
    segment_kwargs: dict[str, Any] = {}
    if not spec.refine_with_sam:
        segment_kwargs["refine_with_sam"] = False
    if spec.multimask_output:
        segment_kwargs["multimask_output"] = True
    records_path = out / RECORDS
    first = next((s for s in dataset.samples(skip=done) if s.prompts), None) if todo else None
    if first is not None:
        _warm_up(pipeline, first, oracle, segment_kwargs, warmup)
    it = dataset.samples(skip=done)
    if show_progress:
        it = progress(it, total=len(todo), desc=spec.name or "eval")
    try:
        for sample in it:
            record = _eval_sample(
                sample,
                pipeline,
                oracle,
                single_target=dataset.single_target,
                score=spec.score,
                segment_kwargs=segment_kwargs,
            )
            _append_record(records_path, record)
            if on_image is not None:
                on_image(record)
    except KeyboardInterrupt:
        sys.stderr.write(
            f"interrupted: writing partial results for the images done to {out} "
            "(rerun the same command to resume)\n"
        )
        _finalize(out, dataset, config, complete=False, device=device, started=started)
        raise
    return _finalize(out, dataset, config, complete=True, device=device, started=started)
