"""SAM 2.1 speed: our core against Meta's ``sam2`` on identical (random) weights.

    python benchmarks/sam2_speed.py [--threads N] [--device cpu|cuda] [--quick]
                                    [--variants tiny,small] [--repeats R] [--bf16]

Prints one markdown table (the columns of ``benchmarks/run.py``), two rows per variant:

- ``<variant> set_image``: our ``SamPredictor.set_image`` (square resize, ImageNet
  normalisation, Hiera trunk, FPN neck, ``conv_s0``/``conv_s1``) against Meta's
  ``SAM2ImagePredictor.set_image``; the difference column is the image embedding's.
- ``<variant> predict, 1 box``: one box prompt, single-mask output, masks at the image size,
  on the embedding set above, against Meta's ``SAM2ImagePredictor.predict``; the difference
  is over the full-resolution mask logits. Repeated on one image, as clicks are: our
  decoder's per-image memos (:mod:`grounded_sam.model.memo`) are filled by the first call.
- ``<variant> predict, 1 box, the first after set_image``: each timed call follows an
  untimed ``set_image`` (what the first click on an image costs; ``set_image`` prepares the
  memos, its row includes that).
- with ``--bf16``: ``<variant> set_image, ours bf16 vs Meta fp32 / Meta bf16``: our
  ``precision="bf16"`` against Meta's float32 ``set_image`` and against Meta's under
  ``torch.autocast(dtype=torch.bfloat16)``; the difference is the embedding's against Meta's
  float32 one, the note adds the IoU of the one-box mask with our float32 mask.

With ``--floor`` a second table gives the float32 floor of ``set_image`` on this machine:
the FLOPs of Meta's ``set_image`` (products counted by ``torch.utils.flop_counter``, plus
4·Lq·Lk·d per attention call, which that counter does not count on CPU) divided by the best
float32 matrix-product rate measured here (square and Hiera-shaped ``torch.mm``), and the
products at that rate plus the time Meta's attention calls take in torch's fused attention
kernel (the fastest float32 attention here: an explicit softmax(QK^T)V in chunks of queries
ran at 100-220 GFLOP/s against its 260-280 on the global-attention shapes); both against 0.5x
Meta's median ``set_image`` from the first table. Layer norms, activations, adds and copies
are not counted: no implementation of the same arithmetic in float32 runs faster.

Times are medians of interleaved runs (ours, Meta's, ours, ...) in this process, with one
thread count; the note gives the ratio of the fastest runs too, which is steadier on a busy
machine. Peak memory: RSS above the start on CPU (see ``_common.peak_memory_mib``).

Weights: Meta's models built with ``sam2.build_sam.build_sam2`` and every float tensor
perturbed (:mod:`grounded_sam.testing.sam2_refs`), saved as ``{"model": state_dict}`` like
``sam2.1_hiera_*.pt`` and loaded by ours from that file; no network. Image: chelsea.

This file is not named ``sam2.py``: run as a script, its folder comes first on ``sys.path``
and the name would shadow Meta's ``sam2`` package, which it needs.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import run
import torch
from _common import peak_memory_mib, rel_diff, sync

VARIANTS = {
    "tiny": "sam2.1_hiera_tiny",
    "small": "sam2.1_hiera_small",
    "base_plus": "sam2.1_hiera_base_plus",
    "large": "sam2.1_hiera_large",
}
BOX = np.array([120, 30, 360, 290])  # the cat in chelsea (300 x 451)


def timed_pair(
    ours: Callable[[], object],
    ref: Callable[[], object],
    device: torch.device,
    repeats: int,
    warmup: int,
    setup: tuple[Callable[[], object], Callable[[], object]] | None = None,
) -> tuple[float, float, float, float]:
    """Interleaved runs: (median ours, median ref, min ours, min ref) in seconds; ``setup``
    (ours, ref) runs untimed before each timed call."""

    def call(key: str, fn: Callable[[], object]) -> float:
        if setup is not None:
            setup[0 if key == "ours" else 1]()
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        return time.perf_counter() - start

    for _ in range(warmup):
        call("ours", ours)
        call("ref", ref)
    times: dict[str, list[float]] = {"ours": [], "ref": []}
    for _ in range(max(1, repeats)):
        for key, fn in (("ours", ours), ("ref", ref)):
            times[key].append(call(key, fn))
    med = {k: statistics.median(v) for k, v in times.items()}
    return med["ours"], med["ref"], min(times["ours"]), min(times["ref"])


def _row(stage: str, ours, ref, device, repeats, warmup, diff: float, setup=None) -> run.Row:
    t_ours, t_ref, min_ours, min_ref = timed_pair(ours, ref, device, repeats, warmup, setup)
    mem_ours = peak_memory_mib(ours, device)
    mem_ref = peak_memory_mib(ref, device)
    note = f"fastest runs {min_ours / min_ref:.2f}"
    return run.Row(stage, t_ours, t_ref, diff, mem_ours, mem_ref, note)


def sam2_pair(name: str, device: torch.device, tmp: Path):
    """(our predictor, Meta's SAM2ImagePredictor) on identical perturbed weights; ours is
    loaded from Meta's checkpoint format."""
    from grounded_sam import SamPredictor, build_sam
    from grounded_sam.testing.sam2_refs import (
        meta_image_predictor,
        meta_sam2,
        save_sam2_checkpoint,
    )

    meta = meta_sam2(name)
    path = save_sam2_checkpoint(meta, tmp / f"{name}.pt")
    ours = build_sam(name, checkpoint=path, device=device)
    return SamPredictor(ours), meta_image_predictor(meta.to(device).eval())


@torch.no_grad()
def rows(
    variants: tuple[str, ...] = ("sam2.1_hiera_tiny", "sam2.1_hiera_small"),
    device: torch.device | str = "cpu",
    repeats: int = 5,
    warmup: int = 1,
    precisions: tuple[str, ...] = (),
) -> list[run.Row]:
    """Benchmark rows (``run.Row``) for each variant: set_image, a one-box predict (repeated,
    and the first after set_image), and with
    ``"bf16"`` in ``precisions`` the bf16 rows of :func:`bf16_rows`."""
    from skimage.data import chelsea

    device = torch.device(device)
    image = chelsea()
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in variants:
            ours, ref = sam2_pair(name, device, Path(tmp))
            ours.set_image(image)
            ref.set_image(image)
            diff = rel_diff(ref.get_image_embedding(), ours.get_image_embedding())
            out.append(
                _row(
                    f"{name} set_image",
                    lambda o=ours: o.set_image(image),
                    lambda r=ref: r.set_image(image),
                    device,
                    repeats,
                    warmup,
                    diff,
                )
            )
            ours.set_image(image)
            ref.set_image(image)
            r_logits = ref.predict(box=BOX, multimask_output=False, return_logits=True)[0]
            o_logits = ours.predict(box=BOX, multimask_output=False, return_logits=True)[0]
            diff = rel_diff(torch.as_tensor(r_logits), torch.as_tensor(o_logits))
            out.append(
                _row(
                    f"{name} predict, 1 box",
                    lambda o=ours: o.predict(box=BOX, multimask_output=False),
                    lambda r=ref: r.predict(box=BOX, multimask_output=False),
                    device,
                    max(repeats, 10),
                    warmup,
                    diff,
                )
            )

            out.append(
                _row(
                    f"{name} predict, 1 box, the first after set_image",
                    lambda o=ours: o.predict(box=BOX, multimask_output=False),
                    lambda r=ref: r.predict(box=BOX, multimask_output=False),
                    device,
                    repeats,
                    warmup,
                    diff,
                    setup=(lambda o=ours: o.set_image(image), lambda r=ref: r.set_image(image)),
                )
            )
            if "bf16" in precisions:
                out += bf16_rows(name, ours, ref, image, device, repeats, warmup, Path(tmp))
            del ours, ref
    return out


def bf16_rows(name, ours, ref, image, device, repeats, warmup, tmp: Path) -> list[run.Row]:
    """``build_sam(name, precision="bf16")`` (autocast; on CPUs with AMX the products run on
    its bf16 tiles) against Meta's ``set_image`` in float32 and under ``torch.autocast`` with
    bfloat16. The difference column is the embedding's against Meta's float32 one; the note
    gives the IoU of the one-box masks with our float32 masks."""
    from grounded_sam import SamPredictor, build_sam

    bf16 = SamPredictor(build_sam(name, checkpoint=tmp / f"{name}.pt", device=device))
    bf16.model.set_precision("bf16")
    bf16.set_image(image)
    ref.set_image(image)
    ours.set_image(image)
    diff = rel_diff(ref.get_image_embedding(), bf16.get_image_embedding())
    m16 = bf16.predict(box=BOX, multimask_output=False)[0][0]
    m32 = ours.predict(box=BOX, multimask_output=False)[0][0]
    iou = float((m16 & m32).sum() / max(1, (m16 | m32).sum()))

    def meta_autocast():
        with torch.autocast(device.type, dtype=torch.bfloat16):
            ref.set_image(image)

    rows = []
    for label, ref_fn in (
        ("Meta fp32", lambda: ref.set_image(image)),
        ("Meta bf16", meta_autocast),
    ):
        row = _row(
            f"{name} set_image, ours bf16 vs {label}",
            lambda: bf16.set_image(image),
            ref_fn,
            device,
            repeats,
            warmup,
            diff,
        )
        row.note += f"; box mask IoU with our fp32 {iou:.4f}"
        rows.append(row)
    return rows


# (m, k, n) of the float32 products timed for the machine's peak rate: square ones, and the
# widest of Hiera's (stage-3 tokens x width x MLP width, both ways round).
PEAK_SHAPES = ((4096, 4096, 4096), (2048, 2048, 2048), (4096, 384, 1536), (4096, 1536, 384))


def peak_gflops(shapes=PEAK_SHAPES, repeats: int = 5) -> tuple[float, tuple[int, int, int]]:
    """The best float32 ``torch.mm`` rate (GFLOP/s) over ``shapes`` on the CPU, and its shape."""
    best = (0.0, shapes[0])
    for m, k, n in shapes:
        a, b, c = torch.randn(m, k), torch.randn(k, n), torch.empty(m, n)
        torch.mm(a, b, out=c)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            torch.mm(a, b, out=c)
            times.append(time.perf_counter() - start)
        best = max(best, (2 * m * k * n / min(times) / 1e9, (m, k, n)))
    return best


def set_image_flops(predictor, image: np.ndarray, repeats: int = 3) -> tuple[int, int, float]:
    """(product FLOPs, attention FLOPs, attention seconds) of ``predictor.set_image(image)``:
    convolutions and matrix products from ``torch.utils.flop_counter``; attention as
    4·Lq·Lk·d per ``scaled_dot_product_attention`` call (QK^T and AV); the seconds are the time
    spent inside those calls in the fastest of ``repeats`` uncounted runs."""
    import torch.nn.functional as F
    from torch.utils.flop_counter import FlopCounterMode

    attention = [0, 0.0]
    sdpa = F.scaled_dot_product_attention

    def counting(q, k, v, *args, **kwargs):
        attention[0] += 4 * q.shape[:-2].numel() * q.shape[-2] * k.shape[-2] * q.shape[-1]
        start = time.perf_counter()
        out = sdpa(q, k, v, *args, **kwargs)
        attention[1] += time.perf_counter() - start
        return out

    F.scaled_dot_product_attention = counting
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            predictor.set_image(image)
        flops = attention[0]
        seconds = []
        for _ in range(repeats):
            attention[1] = 0.0
            with torch.no_grad():
                predictor.set_image(image)
            seconds.append(attention[1])
    finally:
        F.scaled_dot_product_attention = sdpa
    return counter.get_total_flops(), flops, min(seconds)


def floor_table(variants: tuple[str, ...], table: list[run.Row]) -> str:
    """Markdown table of the float32 floor of ``set_image`` (see the module docstring), one row
    per variant, beside 0.5x Meta's median from ``table`` (the rows of :func:`rows`)."""
    from skimage.data import chelsea

    from grounded_sam.testing.sam2_refs import meta_image_predictor, meta_sam2

    rate, shape = peak_gflops()
    meta_ms = {r.stage: r.ref_s * 1e3 for r in table}
    lines = [
        f"Best float32 product rate here: {rate:.0f} GFLOP/s ({'x'.join(map(str, shape))}).",
        "",
        "| variant | products (GFLOP) | attention (GFLOP) | all at the product rate (ms) "
        "| products at that rate + attention kernel time (ms) | 0.5x Meta's set_image (ms) |",
        "|---|---|---|---|---|---|",
    ]
    for name in variants:
        products, attention, attention_s = set_image_flops(
            meta_image_predictor(meta_sam2(name).eval()), chelsea()
        )
        at_rate = (products + attention) / (rate * 1e9) * 1e3
        with_kernel = products / (rate * 1e9) * 1e3 + attention_s * 1e3
        ref = meta_ms.get(f"{name} set_image")
        goal = f"{0.5 * ref:.0f}" if ref is not None else "-"
        lines.append(
            f"| {name} | {products / 1e9:.1f} | {attention / 1e9:.1f} | {at_rate:.0f} "
            f"| {with_kernel:.0f} | {goal} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    run.add_common_args(parser)
    parser.add_argument(
        "--variants",
        default="tiny,small",
        help=f"comma-separated, from {', '.join(VARIANTS)} (default: tiny,small)",
    )
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per side")
    parser.add_argument(
        "--bf16",
        action="store_true",
        help="also time set_image with precision='bf16' against Meta's fp32 and bf16 autocast",
    )
    parser.add_argument(
        "--floor",
        action="store_true",
        help="also print the float32 FLOP floor of set_image at this CPU's best product rate",
    )
    args = parser.parse_args(argv)
    device, repeats, warmup = run.setup_from_args(parser, args, args.repeats)
    if args.floor and device.type != "cpu":
        parser.error("--floor measures the CPU's product rate; use it with --device cpu")
    names = []
    for v in args.variants.split(","):
        if v.strip() not in VARIANTS:
            parser.error(f"unknown variant {v!r}; choose from {', '.join(VARIANTS)}")
        names.append(VARIANTS[v.strip()])
    print(run.machine_line(device))
    precisions = ("bf16",) if args.bf16 else ()
    table = rows(tuple(names), device, repeats, warmup, precisions)
    print(run.format_table(table))
    if args.floor:
        print()
        print(floor_table(tuple(names), table))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
