"""Markdown rendering of one run's ``metrics.json`` (``report.md``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from grounded_sam.eval.metrics import AP_KEYS

__all__ = ["fmt", "render_report"]


def fmt(value: Any, digits: int = 3) -> str:
    """A table cell: ``None`` -> ``-``, floats rounded, everything else ``str``."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _latency_table(lat: Mapping[str, Mapping[str, float]]) -> list[str]:
    if not lat:
        return ["(no timings)"]
    rows = ["| stage | median ms | p90 ms | mean ms | n |", "|---|---:|---:|---:|---:|"]
    for stage, v in lat.items():
        rows.append(
            f"| {stage} | {fmt(v['median'], 1)} | {fmt(v['p90'], 1)} | {fmt(v['mean'], 1)} | {v['n']} |"
        )
    return rows


def render_report(metrics: Mapping[str, Any], coco_summary: str = "") -> str:
    """``report.md`` text for a metrics dict as written to ``metrics.json``."""
    run = metrics.get("config", {}).get("run", {})
    ds = metrics.get("config", {}).get("dataset", {})
    status = "complete" if metrics.get("complete") else "PARTIAL (interrupted; rerun to resume)"
    lines = [
        f"# Evaluation: {run.get('name', '?')}",
        "",
        f"- status: {status}",
        f"- detector: `{run.get('detector')}` {run.get('detector_args') or ''}".rstrip(),
        f"- SAM: `{run.get('sam')}`"
        + (f" (checkpoint `{run['sam_checkpoint']}`)" if run.get("sam_checkpoint") else "")
        + (f", precision {run['precision']}" if run.get("precision", "fp32") != "fp32" else "")
        + ("" if run.get("refine_with_sam", True) else " (not used: detector masks)"),
        f"- dataset: {ds.get('type')} "
        + ", ".join(f"{k}=`{v}`" for k, v in ds.items() if k != "type"),
        f"- images {metrics.get('n_images')} / {metrics.get('n_images_total')}, "
        f"prompts {metrics.get('n_prompts')}, detections {metrics.get('n_detections')}, "
        f"empty predictions {metrics.get('n_empty_predictions')}",
        "",
        "## Quality",
        "",
        "| mask AP | AP50 | AP75 | AP small | AP medium | AP large | mIoU | cIoU | P@0.5 |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        "| "
        + " | ".join(fmt(metrics.get(k)) for k in (*AP_KEYS, "mIoU", "cIoU", "precision_at_iou50"))
        + " |",
        "",
        "## Latency per image",
        "",
        *_latency_table(metrics.get("latency_ms", {})),
        "",
        "## Latency per prompt",
        "",
        *_latency_table(metrics.get("latency_ms_per_prompt", {})),
        "",
    ]
    mem = metrics.get("peak_memory")
    if mem:
        lines += [
            f"Peak memory: {fmt(mem.get('mb'), 1)} MiB ({mem.get('kind')}, {mem.get('device')}).",
            "",
        ]
    if coco_summary.strip():
        lines += ["## COCOeval", "", "```", coco_summary.rstrip(), "```", ""]
    conv = metrics.get("conventions", {})
    if conv:
        lines += ["## Conventions", ""] + [f"- **{k}**: {v}" for k, v in conv.items()] + [""]
    versions = metrics.get("versions", {})
    if versions:
        lines += ["## Versions", "", ", ".join(f"{k} {v}" for k, v in versions.items()), ""]
    return "\n".join(lines)
