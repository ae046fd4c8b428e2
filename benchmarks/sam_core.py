"""SAM core: vit_b encoder and 16-box decoder times, ours vs Meta's, on the same weights.

    python benchmarks/sam_core.py [--threads N] [--device cpu|cuda] [--quick]

Prints a markdown table (the vit_b and 16-box rows of ``benchmarks/run.py``): wall-clock
medians of interleaved runs, the ratio, the max relative difference of the outputs
(embedding; full-resolution mask logits), and peak memory.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    run.add_common_args(parser)
    args = parser.parse_args(argv)
    device, repeats, warmup = run.setup_from_args(parser, args)
    print(run.machine_line(device))
    with tempfile.TemporaryDirectory() as tmp:
        ours, ref = run.sam_pair("vit_b", device, Path(tmp))
        enc, features = run.bench_encoder("vit_b encoder", ours, ref, device, repeats, warmup)
        dec = run.bench_decoder(ours, ref, features, 16, device, repeats, warmup)
    print(run.format_table([enc, dec]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
