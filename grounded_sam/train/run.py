"""``grounded_sam.finetune(...)``: one fine-tuning run, from COCO masks to an official-format
checkpoint with before/after figures. ``grounded-sam finetune`` is its command line.

Run folder (``out``):

- ``config.json``: the run's settings and inputs, written first; ``resume=True`` refuses a
  folder whose run had other settings;
- ``cache/embeddings/<image_id>.pt``: image embeddings of the starting encoder (training
  images in ``decoder`` mode, validation images in both modes);
- ``eval_before.json``: the starting model's figures on the validation masks;
- ``train_log.jsonl``: one JSON line per step (loss and its terms, IoU of the first and last
  round, learning rate, gradient norm, seconds);
- ``state.pt``: resumable state (trainable weights, optimizer), every ``save_every`` steps
  and at each epoch's end;
- ``checkpoint.pt``: the fine-tuned model in the variant's official format (written at the
  end; see :mod:`grounded_sam.train.checkpoint`);
- ``metrics.json``, ``report.md``, ``loss.png``: before/after figures, loss curve.

Everything is checked before the folder is touched (annotations, images, masks, categories,
the checkpoint's variant, the settings), and every file is written atomically, so a bad
input or a crash never leaves an invalid file behind.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from grounded_sam.errors import InputError
from grounded_sam.model.registry import ModelConfig, get_config
from grounded_sam.train.checkpoint import (
    load_model,
    resolve_checkpoint,
    save_torch,
    write_official_checkpoint,
)
from grounded_sam.train.data import InstanceSet, load_instances
from grounded_sam.train.loop import FinetuneConfig, Trainer

__all__ = ["FinetuneResult", "finetune"]

CONFIG = "config.json"
STATE = "state.pt"
LOG = "train_log.jsonl"
BEFORE = "eval_before.json"
CHECKPOINT = "checkpoint.pt"
FORMATS = {
    "sam": "plain state dict, the layout of Meta's sam_vit_*.pth / mobile_sam.pt",
    "sam2": "{'model': state_dict}, the layout of Meta's sam2.1_hiera_*.pt",
}


@dataclass(frozen=True)
class FinetuneResult:
    """What :func:`finetune` produced: the run folder, ``checkpoint.pt`` and the metrics
    (``metrics.json``'s content)."""

    out: Path
    checkpoint: Path
    metrics: dict[str, Any]


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(obj, indent=1, default=str) + "\n", encoding="utf-8")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _file_id(path: Path) -> dict[str, Any]:
    st = path.stat()
    return {"path": str(path.resolve()), "bytes": st.st_size, "mtime_ns": st.st_mtime_ns}


class _Progress:
    """tqdm with the loss on a terminal; otherwise a plain line every ~5% of the steps."""

    def __init__(self, total: int, start: int, enabled: bool) -> None:
        self.total, self.enabled = total, enabled
        self.bar = None
        self.every = max(1, total // 20)
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=start, desc="finetune", file=sys.stderr)

    def update(self, rec: dict[str, Any]) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{rec['loss']:.4f}", iou=f"{rec['iou_last_round']:.3f}")
        elif rec["step"] % self.every == 0 or rec["step"] == self.total:
            print(
                f"step {rec['step']}/{self.total} epoch {rec['epoch']} loss {rec['loss']:.4f} "
                f"(focal {rec['focal']:.4f} dice {rec['dice']:.4f} iou {rec['iou_mse']:.4f}) "
                f"mask IoU {rec['iou_first_round']:.3f} -> {rec['iou_last_round']:.3f} "
                f"lr {rec['lr']:.2e} {rec['seconds']:.2f} s/step",
                file=sys.stderr,
                flush=True,
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _say(enabled: bool, text: str) -> None:
    if enabled:
        print(text, file=sys.stderr, flush=True)


def _prepare_out(out: Path, fingerprint: dict[str, Any], resume: bool) -> bool:
    """Check the run folder; returns whether a previous run is continued. Writes nothing."""
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {str(out)!r} exists and is not a folder")
    cfg = out / CONFIG
    if not cfg.exists():
        if out.exists() and any(out.iterdir()):
            raise InputError(
                f"--out {str(out)!r} is not empty and holds no fine-tuning run ({CONFIG} "
                "missing); choose a new or empty folder"
            )
        return False
    if not resume:
        raise InputError(
            f"--out {str(out)!r} already holds a fine-tuning run; pass --resume to continue "
            "it, or choose another folder"
        )
    try:
        previous = json.loads(cfg.read_text(encoding="utf-8"))["fingerprint"]
    except (ValueError, KeyError, TypeError) as e:
        raise InputError(f"{cfg} is not a readable run configuration ({e})") from e
    if previous != fingerprint:
        diff = sorted(k for k in set(previous) | set(fingerprint)
                      if previous.get(k) != fingerprint.get(k))  # fmt: skip
        raise InputError(
            f"--resume: the run in {str(out)!r} was started with other settings (differs in "
            f"{', '.join(diff)}); rerun with the same settings, or choose another --out"
        )
    return True


def _evaluate(
    model: torch.nn.Module,
    data: InstanceSet,
    embedding,
    max_clicks: int,
    show_progress: bool,
    desc: str,
) -> dict[str, Any]:
    from grounded_sam.eval.interactive import evaluate_interactive, summarize
    from grounded_sam.predictor import SamPredictor

    predictor = SamPredictor(model)

    def masks(i: int):
        insts = [data.instances[j] for j in data.by_image.get(i, [])]
        return (
            [x.ann_id for x in insts],
            [x.mask() for x in insts],
            np.stack([x.box for x in insts]),
        )

    set_image = (
        None
        if embedding is None
        else (lambda i: predictor.set_embedding(embedding(i).to(model.device)))
    )
    t0 = time.perf_counter()
    traces = evaluate_interactive(
        predictor, data.images, masks, set_image=set_image, max_clicks=max_clicks,
        show_progress=show_progress, desc=desc,
    )  # fmt: skip
    out = summarize(traces, max_clicks)
    out["seconds"] = round(time.perf_counter() - t0, 2)
    return out


def finetune(
    annotations: str | os.PathLike,
    images: str | os.PathLike,
    out: str | os.PathLike,
    *,
    sam: str | ModelConfig = "mobile_sam",
    sam_checkpoint: str | os.PathLike | None = None,
    val_annotations: str | os.PathLike | None = None,
    val_images: str | os.PathLike | None = None,
    config: FinetuneConfig | None = None,
    resume: bool = False,
    device: str | torch.device | None = None,
    evaluate: bool = True,
    val_limit: int | None = None,
    max_clicks: int = 20,
    show_progress: bool = True,
    **settings: Any,
) -> FinetuneResult:
    """Fine-tune a SAM variant on COCO instance masks; see the module docstring for ``out``.

    Args:
        annotations: COCO instances JSON of the training masks (polygons or RLE), e.g. the
            ``annotations.json`` written by ``grounded-sam label``.
        images: folder holding the annotated images.
        out: run folder (new or empty, or a run to continue with ``resume=True``).
        sam: variant name (:func:`grounded_sam.list_models`) or a ``ModelConfig``.
        sam_checkpoint: official-format starting checkpoint; ``None``: the variant's
            official weights (cached / downloaded).
        val_annotations, val_images: held-out masks for the before/after figures
            (``val_images`` defaults to ``images``); ``None``: the figures are measured on the
            training masks and labelled so.
        config: training settings (:class:`FinetuneConfig`); keyword ``settings`` override
            its fields, e.g. ``epochs=3, lr=3e-4, train="decoder+lora"``.
        resume: continue the run in ``out`` from its last saved step (a folder without a run
            starts one).
        device: torch device (``None``: CUDA when available).
        evaluate: measure the before/after figures (box mIoU, clicks, NoC).
        val_limit: evaluate on the first ``val_limit`` validation images only.
        max_clicks: clicks per mask in the interactive evaluation (the SAM paper's 20).
        show_progress: progress bar (terminal) or lines on stderr.

    Returns:
        :class:`FinetuneResult` (``checkpoint`` is ``out/checkpoint.pt``).

    Raises:
        InputError: bad settings, annotations, images or run folder (before anything is
            written); WeightsError: a checkpoint that is not of the variant ``sam``.
    """
    from grounded_sam.model.build import resolve_device

    unknown = sorted(set(settings) - set(FinetuneConfig.field_names()))
    if unknown:
        raise InputError(
            f"finetune() got unknown setting(s) {', '.join(unknown)}; settings: "
            f"{', '.join(FinetuneConfig.field_names())}"
        )
    cfg = replace(config or FinetuneConfig(), **settings)
    if isinstance(max_clicks, bool) or not isinstance(max_clicks, int) or max_clicks < 5:
        raise InputError(f"max_clicks must be an integer >= 5, got {max_clicks!r}")
    model_cfg = get_config(sam)
    dev = resolve_device(device)
    if cfg.amp and dev.type != "cuda":
        raise InputError(f"mixed precision (--amp) runs on CUDA only, not on {dev}; drop --amp")
    out = Path(out).expanduser()
    # ---- every input checked before the run folder is touched
    train_data = load_instances(annotations, images, what="--annotations")
    if val_annotations is not None:
        val_data = load_instances(
            val_annotations, val_images if val_images is not None else images,
            what="--val-annotations", limit=val_limit,
        )  # fmt: skip
        val_source = f"the validation set (`{val_data.annotations}`)"
    else:
        if val_images is not None:
            raise InputError("--val-images needs --val-annotations")
        val_data = (
            train_data
            if val_limit is None
            else load_instances(annotations, images, what="--annotations", limit=val_limit)
        )
        val_source = "the training set (no --val-annotations given: not held out)"
    start = resolve_checkpoint(model_cfg, sam_checkpoint)
    model = load_model(model_cfg, start, dev, fuse=False)  # WeightsError for another variant
    fingerprint = {
        "sam": model_cfg.name,
        "start_checkpoint": _file_id(start),
        "annotations": _file_id(train_data.annotations),
        "images": str(Path(images).expanduser().resolve()),
        "val_annotations": None if val_annotations is None else _file_id(val_data.annotations),
        "val_limit": val_limit,
        "max_clicks": max_clicks,
        "evaluate": bool(evaluate),
        "settings": cfg.to_dict(),
    }
    continuing = _prepare_out(out, fingerprint, resume)
    # ---- the run
    if resume and not continuing:
        _say(show_progress, f"no run in {out} yet: starting one")
    out.mkdir(parents=True, exist_ok=True)
    if not continuing:
        _write_json(out / CONFIG, {"fingerprint": fingerprint, "created": time.time()})
    from grounded_sam.io import load_image
    from grounded_sam.predictor import SamPredictor
    from grounded_sam.train.embeddings import EmbeddingStore
    from grounded_sam.train.report import plot_loss, read_log, render_report

    seconds: dict[str, float] = {}
    store = EmbeddingStore(
        out / "cache" / "embeddings",
        json.dumps([model_cfg.name, fingerprint["start_checkpoint"]], sort_keys=True),
    )
    predictor = SamPredictor(model)
    need = list(val_data.images) if evaluate else []
    if cfg.train == "decoder":
        need = list(train_data.images) + [i for i in need if i not in train_data.images]
    t0 = time.perf_counter()
    total = len(need)

    def embed_progress(done: int, todo: int) -> None:
        _say(show_progress, f"image embeddings: {done}/{todo} computed")

    computed = store.ensure(predictor, need, on_progress=embed_progress if show_progress else None)
    seconds["embeddings"] = round(time.perf_counter() - t0, 2)
    _say(show_progress, f"image embeddings: {computed} computed, {total - computed} cached")

    def train_embedding(i: int):
        return store.get(train_data.images[i])

    def val_embedding(i: int):
        return store.get(val_data.images[i])

    before = None
    if evaluate:
        before_path = out / BEFORE
        if before_path.exists():
            before = json.loads(before_path.read_text(encoding="utf-8"))
        else:
            before = _evaluate(model, val_data, val_embedding, max_clicks, show_progress, "before")
            _write_json(before_path, before)
        _say(show_progress, "before: " + _summary(before))
    trainer = Trainer(
        model, cfg, train_data, train_embedding, lambda i: load_image(train_data.images[i].path)
    )
    step = 0
    if continuing and (out / STATE).exists():
        state = torch.load(out / STATE, map_location="cpu", weights_only=True)
        step = trainer.load_state_dict(state)
        _say(show_progress, f"resuming at step {step}/{trainer.total_steps}")
    log_path = out / LOG
    log = [r for r in read_log(log_path) if r["step"] <= step]
    _rewrite_log(log_path, log)
    bar = _Progress(trainer.total_steps, step, show_progress)
    t0 = time.perf_counter()
    try:
        with open(log_path, "a", encoding="utf-8") as f:
            while step < trainer.total_steps:
                rec = trainer.step(step)
                step += 1
                f.write(json.dumps(rec) + "\n")
                f.flush()
                log.append(rec)
                bar.update(rec)
                if step % cfg.save_every == 0 or step % trainer.steps_per_epoch == 0:
                    save_torch(trainer.state_dict(step), out / STATE)
    finally:
        bar.close()
    seconds["train"] = round(time.perf_counter() - t0, 2)
    if not (out / STATE).exists() or step % cfg.save_every:
        save_torch(trainer.state_dict(step), out / STATE)
    # ---- the official checkpoint, read back the way users will read it
    ckpt = write_official_checkpoint(
        model_cfg, trainer.trained_state_dict(), start, out / CHECKPOINT
    )
    del trainer, model, predictor
    after = None
    if evaluate:
        # decoder mode: the encoder is the starting one, its stored embeddings stand (built
        # unfused so they are exactly those); LoRA changed the encoder: embed again
        lora = cfg.train == "decoder+lora"
        tuned = load_model(model_cfg, ckpt, dev, fuse=lora)
        emb = None if lora else val_embedding
        after = _evaluate(tuned, val_data, emb, max_clicks, show_progress, "after")
        _say(show_progress, "after:  " + _summary(after))
    metrics = {
        "complete": True,
        "sam": model_cfg.name,
        "family": model_cfg.family,
        "start_checkpoint": str(start),
        "checkpoint": str(ckpt),
        "checkpoint_format": FORMATS.get(model_cfg.family, model_cfg.family),
        "device": str(dev),
        "train": train_data.describe(),
        "val": {**val_data.describe(), "source": val_source},
        "steps": step,
        "steps_per_epoch": math_ceil(len(train_data.instances), cfg.batch_size),
        "final_loss": _tail_mean([r["loss"] for r in log]),
        "before": before,
        "after": after,
        "seconds": {**seconds, "train_total_logged": round(sum(r["seconds"] for r in log), 2)},
        "config": cfg.to_dict(),
        "max_clicks": max_clicks,
        "versions": _versions(),
    }
    png = plot_loss(log, out / "loss.png", metrics["steps_per_epoch"]) if log else None
    _write_json(out / "metrics.json", metrics)
    text = render_report(metrics, png.name if png else None)
    tmp = out / f".report.md.{os.getpid()}.tmp"
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, out / "report.md")
    return FinetuneResult(out, ckpt, metrics)


def math_ceil(a: int, b: int) -> int:
    return -(-a // b)


def _tail_mean(values: list[float]) -> float | None:
    if not values:
        return None
    k = max(1, len(values) // 10)
    return float(np.mean(values[-k:]))


def _summary(m: dict[str, Any]) -> str:
    return (
        f"box mIoU {m['box_mIoU']:.3f} (fill-the-box {m['fill_box_mIoU']:.3f}), "
        f"mIoU@1/3/5 {m['mIoU@1']:.3f}/{m['mIoU@3']:.3f}/{m['mIoU@5']:.3f}, "
        f"NoC@85 {m['NoC@85']:.2f}, NoC@90 {m['NoC@90']:.2f} ({m['n_masks']} masks)"
    )


def _rewrite_log(path: Path, records: list[dict[str, Any]]) -> None:
    """The log without the steps after the last saved state (they are redone)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    os.replace(tmp, path)


def _versions() -> dict[str, str]:
    from grounded_sam.eval.runner import package_versions

    return package_versions()
