"""``RUN/report.md`` with the loss curve (``RUN/loss.png``) and the before/after table."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from grounded_sam.eval.interactive import CLICKS_REPORTED, NOC_THRESHOLDS

__all__ = ["plot_loss", "read_log", "render_report"]


def _keys(max_clicks: int) -> list[tuple[str, str, bool]]:
    """(metrics key, row label, higher is better) of the before/after table."""
    return [
        ("box_mIoU", "box-prompt mIoU", True),
        *((f"mIoU@{k}", f"mIoU after {k} click{'s' if k > 1 else ''}", True) for k in CLICKS_REPORTED),
        *((f"NoC@{round(t * 100)}", f"NoC@{round(t * 100)} (clicks, max {max_clicks})", False)
          for t in NOC_THRESHOLDS),
    ]  # fmt: skip


def read_log(path: Path) -> list[dict[str, Any]]:
    """The records of a ``train_log.jsonl`` (a trailing partial line is ignored)."""
    out = []
    if not path.exists():
        return out
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            break
    return out


def _smooth(values: list[float], k: int) -> list[float]:
    out, acc = [], []
    for v in values:
        acc.append(v)
        if len(acc) > k:
            acc.pop(0)
        out.append(sum(acc) / len(acc))
    return out


def plot_loss(log: list[dict[str, Any]], path: Path, steps_per_epoch: int) -> Path:
    """Loss per step (and its moving average) with epoch boundaries, as a PNG."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    steps = [r["step"] for r in log]
    loss = [r["loss"] for r in log]
    fig = Figure(figsize=(7, 3.6), dpi=110)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot(steps, loss, color="#9db4d6", linewidth=0.8, label="loss per step")
    k = max(1, len(loss) // 25)
    ax.plot(steps, _smooth(loss, k), color="#1f4e8c", linewidth=1.8, label=f"mean of {k} steps")
    if steps_per_epoch and steps and steps[-1] > steps_per_epoch:
        for e in range(steps_per_epoch, steps[-1], steps_per_epoch):
            ax.axvline(e, color="#dddddd", linewidth=0.6, zorder=0)
    ax.set_xlabel("step")
    ax.set_ylabel("20 focal + dice + IoU MSE (mean over rounds)")
    ax.set_title("training loss")
    ax.legend(loc="upper right", fontsize=8)
    ax.grid(alpha=0.25)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    tmp.replace(path)
    return path


def _fmt(v: Any, higher_better: bool) -> str:
    if v is None:
        return "n/a"
    return f"{v:.3f}" if higher_better else f"{v:.2f}"


def render_report(metrics: dict[str, Any], loss_png: str | None) -> str:
    """Markdown for ``report.md`` from ``metrics.json``'s content."""
    cfg = metrics["config"]
    lines = [
        f"# Fine-tuning report: {metrics['sam']} ({cfg['train']})",
        "",
        f"- starting checkpoint: `{metrics['start_checkpoint']}`",
        f"- fine-tuned checkpoint: `{metrics['checkpoint']}` ({metrics['checkpoint_format']})",
        f"- training set: {metrics['train']['instances']} masks in {metrics['train']['images']} "
        f"images (`{metrics['train']['annotations']}`)",
        f"- steps: {metrics['steps']} ({cfg['epochs']} epochs x {metrics['steps_per_epoch']} "
        f"steps of {cfg['batch_size']} masks), lr {cfg['lr']:g}, seed {cfg['seed']}, "
        f"{1 + cfg['correction_clicks'] + cfg['refine_rounds']} decoder rounds per mask "
        f"({cfg['correction_clicks']} correction clicks, {cfg['refine_rounds']} refinement)",
        f"- device: {metrics['device']}, training time {metrics['seconds']['train']:.0f} s",
        "",
    ]
    before, after = metrics.get("before"), metrics.get("after")
    if before and after:
        val = metrics["val"]
        lines += [
            "## Before / after",
            "",
            f"On {val['instances']} masks in {val['images']} images of {val['source']}. Box "
            "prompts use each mask's tight box; clicks follow the SAM paper's protocol "
            "(see `grounded_sam/eval/interactive.py`).",
            "",
            "| metric | before | after | change |",
            "|---|---:|---:|---:|",
        ]
        for key, label, higher in _keys(metrics.get("max_clicks", 20)):
            b, a = before.get(key), after.get(key)
            delta = (
                "n/a" if a is None or b is None else f"{a - b:+.3f}" if higher else f"{a - b:+.2f}"
            )
            lines.append(f"| {label} | {_fmt(b, higher)} | {_fmt(a, higher)} | {delta} |")
        fill = before.get("fill_box_mIoU")
        lines += [
            "",
            f"Baseline: the filled box itself scores mIoU {_fmt(fill, True)} (a model that "
            "only copies the box).",
            "",
        ]
    else:
        lines += ["(no evaluation: run without --no-eval to get the before/after table)", ""]
    if loss_png:
        lines += ["## Loss", "", f"![training loss]({loss_png})", ""]
    lines += [
        "## Use it",
        "",
        "```python",
        "from grounded_sam import build_sam",
        f"sam = build_sam({metrics['sam']!r}, checkpoint={metrics['checkpoint']!r})",
        "```",
        "",
        f"or `grounded-sam segment ... --sam {metrics['sam']} --sam-checkpoint "
        f"{metrics['checkpoint']}`.",
        "",
    ]
    return "\n".join(lines)
