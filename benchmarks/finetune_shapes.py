"""Does ``finetune`` learn? Before/after figures on the generated shapes dataset, on CPU.

The starting model is SAM with a 2-block ViT encoder (``testing.sam_refs.TINY_VIT_CFG``: real
1024 input, full-size prompt encoder and mask decoder) and random weights written in Meta's
checkpoint layout: a stand-in for a pretrained model that has never seen rings, crosses,
L-shapes, thin bars or two-part objects. It is fine-tuned on generated images and measured on
held-out generated images: box-prompt mIoU, the filled-box baseline, mIoU after 1/3/5 clicks
and NoC@85/90 (see ``docs/finetune.md``)::

    python benchmarks/finetune_shapes.py --out runs/shapes            # the docs' figures
    python benchmarks/finetune_shapes.py --out runs/s --train 12 --epochs 10   # quicker

``benchmark(...)`` returns the rows (one per metric: before, after) for other scripts.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

METRICS = ("box_mIoU", "fill_box_mIoU", "mIoU@1", "mIoU@3", "mIoU@5", "NoC@85", "NoC@90")


def tiny_vit_config():
    """The ``ModelConfig`` of the 2-block ViT SAM (not registered: tests and benchmarks)."""
    from grounded_sam.model.image_encoder import ImageEncoderViT
    from grounded_sam.model.registry import ModelConfig
    from grounded_sam.model.zoo import _sam
    from grounded_sam.testing.sam_refs import TINY_VIT_CFG

    def build():
        return _sam(ImageEncoderViT(**TINY_VIT_CFG), "tiny_vit_test")

    return ModelConfig("tiny_vit_test", "sam", build, weights="vit_b")


def benchmark(
    out: str | Path,
    *,
    n_train: int = 24,
    n_val: int = 8,
    size: int = 128,
    epochs: int = 30,
    batch_size: int = 4,
    correction_clicks: int = 1,
    refine_rounds: int = 0,
    lr: float = 1e-3,
    max_clicks: int = 10,
    train: str = "decoder",
    seed: int = 0,
    show_progress: bool = True,
) -> list[dict]:
    """Write the dataset and the random starting checkpoint under ``out``, fine-tune, and return
    ``[{"metric", "before", "after"}, ...]`` (``out/run/metrics.json`` has everything)."""
    from grounded_sam.testing.sam_refs import meta_tiny_vit_sam, save_checkpoint
    from grounded_sam.train.run import finetune
    from grounded_sam.train.synthetic import write_shapes_dataset

    out = Path(out)
    if (out / "run").exists():
        shutil.rmtree(out / "run")
    ds = write_shapes_dataset(out / "data", n_train=n_train, n_val=n_val, size=size, seed=seed)
    ckpt = save_checkpoint(meta_tiny_vit_sam(seed=3), out / "tiny_vit_random.pth")
    t0 = time.perf_counter()
    res = finetune(
        ds.train, ds.images, out / "run", sam=tiny_vit_config(), sam_checkpoint=ckpt,
        val_annotations=ds.val, device="cpu", max_clicks=max_clicks, show_progress=show_progress,
        epochs=epochs, batch_size=batch_size, correction_clicks=correction_clicks,
        refine_rounds=refine_rounds, lr=lr, train=train, seed=seed,
    )  # fmt: skip
    wall = time.perf_counter() - t0
    m = res.metrics
    rows = [{"metric": k, "before": m["before"][k], "after": m["after"][k]} for k in METRICS]
    rows.append({"metric": "wall seconds", "before": None, "after": round(wall, 1)})
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--train", type=int, default=24, help="training images (default 24)")
    p.add_argument("--val", type=int, default=8, help="validation images (default 8)")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--correction-clicks", type=int, default=1)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--max-clicks", type=int, default=10)
    p.add_argument("--mode", default="decoder", choices=("decoder", "decoder+lora"))
    a = p.parse_args(argv)
    rows = benchmark(
        a.out, n_train=a.train, n_val=a.val, epochs=a.epochs, batch_size=a.batch_size,
        correction_clicks=a.correction_clicks, lr=a.lr, max_clicks=a.max_clicks, train=a.mode,
    )  # fmt: skip
    print("| metric | before | after |\n|---|---:|---:|")
    for r in rows:
        b = "" if r["before"] is None else f"{r['before']:.3f}"
        print(f"| {r['metric']} | {b} | {r['after']:.3f} |")
    Path(a.out, "rows.json").write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
