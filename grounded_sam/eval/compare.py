"""Side-by-side comparison of evaluation runs: a markdown table and a quality/latency chart."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from grounded_sam.errors import InputError
from grounded_sam.eval.report import fmt

__all__ = ["compare_runs", "comparison_table", "load_run"]


def load_run(run_dir: str | os.PathLike) -> dict[str, Any]:
    """``metrics.json`` of a run folder, with ``"_dir"`` added."""
    path = Path(run_dir) / "metrics.json"
    if not path.is_file():
        raise InputError(
            f"{str(path)!r} does not exist; give run folders written by `grounded-sam eval`"
        )
    try:
        metrics = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise InputError(f"{str(path)!r} is not valid JSON: {e}") from e
    if not isinstance(metrics, dict) or "config" not in metrics:
        raise InputError(f"{str(path)!r} is not a grounded-sam metrics file (no 'config')")
    metrics["_dir"] = str(run_dir)
    return metrics


def _name(m: dict[str, Any]) -> str:
    return str(m.get("config", {}).get("run", {}).get("name") or Path(m["_dir"]).name)


def _lat(m: dict[str, Any], stage: str, stat: str = "median") -> float | None:
    return m.get("latency_ms", {}).get(stage, {}).get(stat)


def _dataset_key(m: dict[str, Any]) -> str:
    ds = dict(m.get("config", {}).get("dataset", {}))
    for key in ("n_images", "n_refs", "limit"):  # same data, fewer images: warned separately
        ds.pop(key, None)
    return json.dumps(ds, sort_keys=True)


def comparison_table(runs: Sequence[dict[str, Any]]) -> str:
    """Markdown comparison of loaded runs (one row each)."""
    header = (
        "| run | detector | SAM | images | prompts | dets | mask AP | AP50 | AP75 | mIoU | cIoU "
        "| det ms | enc ms | dec ms | total ms | total p90 ms | peak MiB |"
    )
    rows = [header, "|" + "---|" * 3 + "---:|" * 14]
    for m in runs:
        run = m.get("config", {}).get("run", {})
        sam = run.get("sam") if run.get("refine_with_sam", True) else "(none)"
        partial = "" if m.get("complete", True) else " (partial)"
        cells = [
            _name(m) + partial,
            str(run.get("detector")),
            str(sam),
            fmt(m.get("n_images")),
            fmt(m.get("n_prompts")),
            fmt(m.get("n_detections")),
            fmt(m.get("mask_AP")),
            fmt(m.get("mask_AP50")),
            fmt(m.get("mask_AP75")),
            fmt(m.get("mIoU")),
            fmt(m.get("cIoU")),
            fmt(_lat(m, "detector"), 1),
            fmt(_lat(m, "encoder"), 1),
            fmt(_lat(m, "decoder"), 1),
            fmt(_lat(m, "total"), 1),
            fmt(_lat(m, "total", "p90"), 1),
            fmt(m.get("peak_memory", {}).get("mb"), 0),
        ]
        rows.append("| " + " | ".join(cells) + " |")
    notes = [
        "",
        "Latency: median per image (each stage summed over the image's prompts), in ms. "
        "Quality: COCO mask AP from pycocotools; mIoU over (image, prompt) pairs.",
    ]
    if len({_dataset_key(m) for m in runs}) > 1:
        notes.append("**Warning: these runs were evaluated on different datasets.**")
    if len({m.get("n_images") for m in runs}) > 1:
        notes.append("**Warning: these runs cover different numbers of images.**")
    devices = {
        str(m.get("versions", {}).get("cuda_device", m.get("peak_memory", {}).get("device")))
        for m in runs
    }
    if len(devices) > 1:
        notes.append(f"**Warning: timings come from different devices: {sorted(devices)}.**")
    return "\n".join(rows + notes) + "\n"


def _chart(runs: Sequence[dict[str, Any]], path: Path) -> str:
    # A bare Figure (no pyplot): no global backend switch, nothing left open in the host app.
    from matplotlib.figure import Figure

    metric = "mask_AP" if all(m.get("mask_AP") is not None for m in runs) else "mIoU"
    fig = Figure(figsize=(7, 4.5), dpi=100)
    ax = fig.subplots()
    xs = []
    for m in runs:
        x, y = _lat(m, "total"), m.get(metric)
        if x is None or y is None:
            continue
        xs.append(x)
        ax.scatter([x], [y], s=40)
        ax.annotate(_name(m), (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
    if xs and min(xs) > 0 and max(xs) / min(xs) > 20:
        ax.set_xscale("log")
    ax.set_xlabel("median latency per image (ms)")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} vs latency")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, format="png")
    return metric


def compare_runs(
    run_dirs: Sequence[str | os.PathLike], out_dir: str | os.PathLike
) -> tuple[Path, Path]:
    """Write ``comparison.md`` and ``comparison.png`` (quality vs latency) into ``out_dir``.

    The chart plots mask AP against median latency per image when every run has mask AP,
    else mIoU. Returns the two paths.

    Raises:
        ValueError: no run folders given.
        InputError: a folder without ``metrics.json``.
    """
    if not run_dirs:
        raise InputError("give at least one run folder to compare")
    runs = [load_run(d) for d in run_dirs]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    md_path, png_path = out / "comparison.md", out / "comparison.png"
    tmp_png = out / ".comparison.png.tmp"
    try:
        metric = _chart(runs, tmp_png)
        os.replace(tmp_png, png_path)
    except BaseException:
        tmp_png.unlink(missing_ok=True)
        raise
    text = (
        "# Comparison\n\n" + comparison_table(runs) + f"\n![{metric} vs latency](comparison.png)\n"
    )
    tmp_md = out / ".comparison.md.tmp"
    tmp_md.write_text(text, encoding="utf-8")
    os.replace(tmp_md, md_path)
    return md_path, png_path
