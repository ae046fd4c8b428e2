"""SAM core: vit_b encoder and 16-box decoder times, ours vs Meta's, on the same weights.

    python benchmarks/sam_core.py [--threads N] [--device cpu|cuda] [--quick]

Prints a markdown table (the vit_b and 16-box rows of ``benchmarks/run.py``): wall-clock
medians of interleaved runs, the ratio, the max relative difference of the outputs
(embedding; full-resolution mask logits), and peak memory.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--quick", action="store_true", help="one timed run, no warm-up")
    args = parser.parse_args(argv)
    if args.threads is not None:
        if args.threads < 1:
            parser.error(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    repeats, warmup = (1, 0) if args.quick else (5, 1)
    print(run.machine_line(device))
    with tempfile.TemporaryDirectory() as tmp:
        ours, ref = run.vit_b_pair(device, Path(tmp))
        enc, features = run.bench_encoder("vit_b encoder", ours, ref, device, repeats, warmup)
        dec = run.bench_decoder(ours, ref, features, 16, device, repeats, warmup)
    print(run.format_table([enc, dec]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
