"""``grounded-sam label`` throughput and memory on a folder of a few hundred small images.

Makes ``--images`` small JPEGs (crops, flips and shifts of the bundled photos, every tenth one
black so some images are labelled empty), labels them with the small random models (a tiny
random Grounding DINO and the 2-block ViT SAM, or MobileSAM with random weights), and reports:

- images/s over the labelling itself (models loaded; committing each unit included) and the
  whole run (model loading and assembly included);
- the process RSS and its high-water mark at the 10th and at the last image: memory must not
  grow with the number of images (units are streamed to disk, nothing is kept per image);
- instances, encoder passes (one per image with a detection), assembly time.

    .venv/bin/python benchmarks/label.py --images 300
    .venv/bin/python benchmarks/label.py --images 300 --sam mobile_sam --device cuda

Importable: ``run(n_images=..., ...)`` returns the result rows.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10  # KiB on Linux


def make_images(folder: Path, n: int, size: tuple[int, int] = (120, 160)) -> list[Path]:
    """``n`` small JPEGs in ``folder`` (and a subfolder), varied crops of the bundled photos."""
    from PIL import Image
    from skimage import data

    photos = [data.chelsea(), data.astronaut(), data.coffee(), data.rocket()]
    rng = np.random.default_rng(0)
    h, w = size
    out = []
    for i in range(n):
        src = photos[i % len(photos)]
        if i % 10 == 9:
            img = np.zeros((h, w, 3), np.uint8)
        else:
            sh, sw = src.shape[:2]
            ch, cw = int(sh * rng.uniform(0.5, 1.0)), int(sw * rng.uniform(0.5, 1.0))
            y, x = rng.integers(0, sh - ch + 1), rng.integers(0, sw - cw + 1)
            img = np.array(Image.fromarray(src[y : y + ch, x : x + cw]).resize((w, h)))
            if rng.random() < 0.5:
                img = img[:, ::-1]
        path = folder / ("sub" if i % 3 == 0 else "") / f"img_{i:05d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.ascontiguousarray(img)).save(path, quality=90)
        out.append(path)
    return out


def label_config(
    sam: str,
    sam_checkpoint: str | None,
    detector_model: str | None,
    device: str | None,
    **options: Any,
):
    """The ``LabelConfig`` of the labelling benchmarks: classes ``cat,dog``, Grounding DINO
    (the tiny random one unless ``detector_model``), the SAM named ``sam`` (``"tiny"``: the
    2-block test ViT; ``"mobile_sam"`` without a checkpoint: random MobileSAM weights);
    ``options`` are more ``LabelConfig.create`` arguments."""
    from grounded_sam.engine.labeler import LabelConfig
    from grounded_sam.testing.pipeline import gdino_dir, mobile_sam_checkpoint, tiny_sam

    if sam == "tiny":
        sam_obj, ckpt = tiny_sam(), None
    elif sam == "mobile_sam" and sam_checkpoint is None:
        sam_obj, ckpt = "mobile_sam", str(mobile_sam_checkpoint())
    else:
        sam_obj, ckpt = sam, sam_checkpoint
    if detector_model is None:
        # the tiny random Grounding DINO scores every query ~0.8-0.92: keep a few per image
        det_opts = {"model": gdino_dir(), "box_threshold": 0.87}
    else:
        det_opts = {"model": detector_model}
    return LabelConfig.create(
        "cat,dog",
        detector="grounding-dino",
        sam=sam_obj,
        sam_checkpoint=ckpt,
        device=device,
        **det_opts,
        **options,
    )


def run(
    n_images: int = 300,
    *,
    sam: str = "tiny",
    sam_checkpoint: str | None = None,
    detector_model: str | None = None,
    device: str | None = "cpu",
    candidates: bool = False,
    workdir: str | os.PathLike | None = None,
) -> list[dict[str, Any]]:
    """Label ``n_images`` generated images once; one result row."""
    import torch

    from grounded_sam.engine.run import label_dataset
    from grounded_sam.engine.runners import LocalRunner

    tmp = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="gs_label_bench_"))
    try:
        images = tmp / "images"
        make_images(images, n_images)
        samples: dict[int, tuple[float, float, float]] = {}
        marks = {10, n_images // 4, n_images // 2, 3 * n_images // 4, n_images}

        class Sampling(LocalRunner):
            """The local runner, sampling memory after the 10th, a quarter, half, three
            quarters and the last unit."""

            def run(self, labeler, tasks, commit, *, store=None):
                t0 = time.perf_counter()
                seen = [0]

                def sampled(unit):
                    commit(unit)
                    seen[0] += 1
                    if seen[0] in marks or seen[0] == len(tasks):
                        samples[seen[0]] = (_rss_mib(), _peak_mib(), time.perf_counter() - t0)

                super().run(labeler, tasks, sampled, store=store)

        config = label_config(sam, sam_checkpoint, detector_model, device, candidates=candidates)
        t0 = time.perf_counter()
        summary = label_dataset(config, images, tmp / "dataset", progress=False, runner=Sampling())
        total = time.perf_counter() - t0
        last = max(samples)
        (rss10, peak10, t10), (rss_n, peak_n, t_n) = samples[10], samples[last]
        a = summary.assembly
        doc = json.loads((tmp / "dataset" / "annotations.json").read_text())
        per_image: dict[int, int] = {}
        for ann in doc["annotations"]:
            per_image[ann["image_id"]] = per_image.get(ann["image_id"], 0) + 1
        return [
            {
                "images": n_images,
                "sam": sam,
                "device": str(device),
                "threads": torch.get_num_threads(),
                "candidates": candidates,
                "labelled": summary.labelled,
                "empty": a.empty,
                "instances": a.annotations,
                "most_instances_in_an_image": max(per_image.values(), default=0),
                "encoder_images": summary.encoder_images,
                "label_images_per_s": round(summary.labelled / summary.label_seconds, 3),
                "steady_images_per_s": round((last - 10) / (t_n - t10), 3) if last > 10 else None,
                "run_seconds": round(total, 2),
                "rss_mib_at_10": round(rss10, 1),
                "rss_mib_at_last": round(rss_n, 1),
                "peak_rss_mib_at_10": round(peak10, 1),
                "peak_rss_mib_at_last": round(peak_n, 1),
                "growth_mib": round(peak_n - peak10, 1),
                "rss_mib_by_image": {k: round(v[0], 1) for k, v in sorted(samples.items())},
                "peak_rss_mib_by_image": {k: round(v[1], 1) for k, v in sorted(samples.items())},
                "annotations_json_mib": round(
                    (tmp / "dataset" / "annotations.json").stat().st_size / 2**20, 2
                ),
            }
        ]
    finally:
        if workdir is None:
            shutil.rmtree(tmp, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=300)
    ap.add_argument("--sam", default="tiny", help="tiny (2-block ViT), mobile_sam or a variant")
    ap.add_argument("--sam-checkpoint", default=None)
    ap.add_argument("--detector-model", default=None, help="default: tiny random Grounding DINO")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (CPU)")
    ap.add_argument("--candidates", action="store_true")
    ap.add_argument("--json", action="store_true", help="print the row as JSON")
    args = ap.parse_args(argv)
    if args.images < 11:
        ap.error("--images must be > 10 (memory is sampled at the 10th and the last image)")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    rows = run(
        args.images,
        sam=args.sam,
        sam_checkpoint=args.sam_checkpoint,
        detector_model=args.detector_model,
        device=args.device,
        candidates=args.candidates,
    )
    for row in rows:
        if args.json:
            print(json.dumps(row))
        else:
            for k, v in row.items():
                print(f"{k:>24}: {v}")


if __name__ == "__main__":
    main()
