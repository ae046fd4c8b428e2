"""Automatic mask generation: ours vs Meta's ``SamAutomaticMaskGenerator`` on identical weights.

Both generators get the same randomly initialised (perturbed) model — MobileSAM (Meta's
``Sam`` around ultralytics' TinyViT, saved as a mobile_sam checkpoint and loaded with
``build_sam``) or a 2-block ViT ("tiny") — and the same photo. Prints wall times (median
of ``--repeat`` runs after a warm-up), the ratio ours/Meta, how many of Meta's masks have a
distinct partner in ours at mask IoU >= 0.98, and peak memory (CUDA allocator peak, or
process RSS on CPU).

    .venv/bin/python benchmarks/automatic.py --model mobile_sam --device cuda
    .venv/bin/python benchmarks/automatic.py --model tiny --points-per-side 8 --device cpu

Random weights give near-full-frame masks with stability scores below 0.05, so Meta's
default thresholds keep no masks; the "many" preset (predicted IoU > 0.5, stability and
NMS off) keeps hundreds and is the figure that exercises the post-processing.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

PRESETS = {
    # Meta's defaults: random weights keep (almost) nothing, so this times grid decoding alone
    "meta-default": {},
    # hundreds of masks on random MobileSAM weights (boxes are near full-frame, so NMS is off)
    "many": dict(
        pred_iou_thresh=0.5, stability_score_thresh=0.0, box_nms_thresh=1.0, crop_nms_thresh=1.0
    ),
    # every candidate kept (the tiny ViT's predicted IoUs are all below 0.7)
    "all": dict(
        pred_iou_thresh=0.0, stability_score_thresh=0.0, box_nms_thresh=1.0, crop_nms_thresh=1.0
    ),
    # NMS active (near-full-frame boxes: few survive)
    "filtered": dict(
        pred_iou_thresh=0.5, stability_score_thresh=0.0, box_nms_thresh=0.95, crop_nms_thresh=0.95
    ),
}


class PeakMemory:
    """Peak CUDA allocation (device) or peak RSS sampled every 2 ms (CPU), in MiB."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    def __enter__(self):
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            import psutil

            proc = psutil.Process()
            self.base = proc.memory_info().rss
            self.peak = self.base
            self._stop = False

            def sample():
                while not self._stop:
                    self.peak = max(self.peak, proc.memory_info().rss)
                    time.sleep(0.002)

            self._t = threading.Thread(target=sample, daemon=True)
            self._t.start()
        return self

    def __exit__(self, *exc):
        if self.cuda:
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated()
        else:
            self._stop = True
            self._t.join()
        self.mib = (self.peak - self.base) / 2**20


def build_models(name: str, device: torch.device):
    from grounded_sam import build_sam
    from grounded_sam.testing.sam_refs import (
        meta_mobile_sam,
        meta_tiny_vit_sam,
        ours_tiny_vit_sam,
        save_checkpoint,
    )

    if name == "mobile_sam":
        meta = meta_mobile_sam()
        with tempfile.TemporaryDirectory() as d:
            ours = build_sam(
                "mobile_sam",
                checkpoint=save_checkpoint(meta, Path(d) / "mobile_sam.pt"),
                device=device,
            )
    else:
        meta = meta_tiny_vit_sam()
        ours = ours_tiny_vit_sam(meta.state_dict())
    return meta.to(device).eval(), ours.to(device).eval()


def timed(fn, device: torch.device, repeat: int):
    times, out, mem = [], None, 0.0
    for _ in range(repeat):
        with PeakMemory(device) as pm:
            t0 = time.perf_counter()
            out = fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        mem = max(mem, pm.mib)
    return out, times, mem


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=["mobile_sam", "tiny"], default="mobile_sam")
    ap.add_argument("--image", default="chelsea", help="skimage.data photo name or an image path")
    ap.add_argument("--points-per-side", type=int, default=32)
    ap.add_argument("--crop-n-layers", type=int, default=0)
    ap.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        action="append",
        help="default: many, filtered, meta-default",
    )
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--device", default=None)
    ap.add_argument("--seed", type=int, default=0, help="weights' random init seed")
    args = ap.parse_args(argv)

    from segment_anything import SamAutomaticMaskGenerator

    from grounded_sam import AutomaticMaskGenerator, load_image
    from grounded_sam._amg import match_masks
    from grounded_sam.devices import resolve_device

    device = resolve_device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(max(1, min(torch.get_num_threads(), 16)))
    if Path(args.image).exists():
        image = load_image(args.image)
    else:
        import skimage.data

        image = getattr(skimage.data, args.image)()
    torch.manual_seed(args.seed)  # the reference builders' base init draws from the global RNG
    meta_model, our_model = build_models(args.model, device)
    dev_name = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"cpu x{torch.get_num_threads()} threads"
    )
    print(
        f"model={args.model} seed={args.seed} image={args.image} {image.shape[1]}x{image.shape[0]} "
        f"points_per_side={args.points_per_side} crop_n_layers={args.crop_n_layers} device={dev_name}"
    )
    everything = AutomaticMaskGenerator(
        our_model, points_per_side=args.points_per_side, **PRESETS["all"]
    ).generate(image)
    q = [0, 10, 50, 90, 100]
    print(
        "  candidates (crop 0, no filter): predicted IoU percentiles "
        f"{np.percentile([r['predicted_iou'] for r in everything], q).round(3).tolist()}, "
        f"stability {np.nanpercentile([r['stability_score'] for r in everything], q).round(3).tolist()}"
    )

    def stack(records):
        if not records:
            return torch.zeros((0, *image.shape[:2]), dtype=torch.bool, device=device)
        return torch.as_tensor(np.stack([r["segmentation"] for r in records]), device=device)

    for preset in args.preset or ["many", "filtered", "meta-default"]:
        kw = dict(
            points_per_side=args.points_per_side,
            crop_n_layers=args.crop_n_layers,
            **PRESETS[preset],
        )
        runs = {
            "meta": SamAutomaticMaskGenerator(meta_model, **kw),
            "ours": AutomaticMaskGenerator(our_model, **kw),
            # our generator driving Meta's model: the generator's share, whatever our model does
            "ours-gen/meta-model": AutomaticMaskGenerator(meta_model, **kw),
        }
        print(f"[{preset}] {kw}")
        results = {}
        for name, gen in runs.items():
            try:
                with torch.no_grad():
                    gen.generate(image)  # warm-up (cuDNN, allocator), not timed
                results[name] = timed(lambda g=gen: g.generate(image), device, args.repeat)
            except Exception as e:  # noqa: BLE001 - Meta's generator fails on some inputs
                print(f"  {name}: failed: {type(e).__name__}: {e}")
        if "meta" not in results:
            continue
        ref, t_meta, _ = results["meta"]
        tm = statistics.median(t_meta)
        for name, (out, times, mem) in results.items():
            t = statistics.median(times)
            line = (
                f"  {name}: {t:.3f} s (runs {', '.join(f'{x:.3f}' for x in times)}), "
                f"peak {mem:.0f} MiB, {len(out)} masks"
            )
            if name != "meta":
                matched, _ = match_masks(stack(ref), stack(out), 0.98)
                frac = matched / len(ref) if ref else 1.0
                line += (
                    f", time ratio to meta {t / tm:.3f}, Meta's masks matched at IoU>=0.98: "
                    f"{matched}/{len(ref)} ({100 * frac:.1f}%)"
                )
            print(line)


if __name__ == "__main__":
    main()
