"""Comparative evaluation: detectors x SAM variants on the same data, with standard metrics.

    from grounded_sam.eval import CocoDataset, RunSpec, build_pipeline, evaluate

    ds = CocoDataset("instances_val2017.json", "val2017", limit=100)
    spec = RunSpec(detector="gt-boxes", sam="mobile_sam")
    pipe, oracle = build_pipeline(spec)
    metrics = evaluate(ds, pipe, "runs/gt_mobile", spec=spec, oracle=oracle)

The CLI is ``grounded-sam eval`` (see ``grounded_sam/cli/evaluate.py``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from grounded_sam._lazy import lazy_exports

_EXPORTS = {
    "CocoDataset": "grounded_sam.eval.datasets",
    "RefCocoDataset": "grounded_sam.eval.datasets",
    "MaskFolderDataset": "grounded_sam.eval.datasets",
    "EvalDataset": "grounded_sam.eval.datasets",
    "Sample": "grounded_sam.eval.datasets",
    "Prompt": "grounded_sam.eval.datasets",
    "build_dataset": "grounded_sam.eval.datasets",
    "load_refs": "grounded_sam.eval.datasets",
    "GtBoxesDetector": "grounded_sam.eval.oracle",
    "RunSpec": "grounded_sam.eval.runner",
    "build_pipeline": "grounded_sam.eval.runner",
    "evaluate": "grounded_sam.eval.runner",
    "compute_metrics": "grounded_sam.eval.runner",
    "read_records": "grounded_sam.eval.runner",
    "compare_runs": "grounded_sam.eval.compare",
    "load_config": "grounded_sam.eval.config",
    "run_grid": "grounded_sam.eval.config",
}

__all__ = [
    "CocoDataset",
    "RefCocoDataset",
    "MaskFolderDataset",
    "EvalDataset",
    "Sample",
    "Prompt",
    "build_dataset",
    "load_refs",
    "GtBoxesDetector",
    "RunSpec",
    "build_pipeline",
    "evaluate",
    "compute_metrics",
    "read_records",
    "compare_runs",
    "load_config",
    "run_grid",
]


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())


if TYPE_CHECKING:  # pragma: no cover
    from grounded_sam.eval.compare import compare_runs
    from grounded_sam.eval.config import load_config, run_grid
    from grounded_sam.eval.datasets import (
        CocoDataset,
        EvalDataset,
        MaskFolderDataset,
        Prompt,
        RefCocoDataset,
        Sample,
        build_dataset,
        load_refs,
    )
    from grounded_sam.eval.oracle import GtBoxesDetector
    from grounded_sam.eval.runner import (
        RunSpec,
        build_pipeline,
        compute_metrics,
        evaluate,
        read_records,
    )
