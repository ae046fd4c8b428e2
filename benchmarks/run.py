"""Speed of our SAM core against the references on identical (random) weights.

    python benchmarks/run.py [--threads N] [--device cpu|cuda] [--quick] [--precision MODES]

Prints one markdown table: stage, ours (ms), reference (ms), ratio, max relative
difference, peak memory (ours / reference). Rows:

- ``vit_b encoder``: our ``ImageEncoderViT`` vs Meta's ``segment_anything`` one.
- ``mobile_sam encoder``: our TinyViT vs ultralytics' TinyViT (when
  ``grounded_sam.model.tiny_vit`` builds).
- ``decoder, N boxes``: our ``SamPredictor.predict_boxes`` vs Meta's
  ``SamPredictor.predict_torch`` on the same image embedding, masks upscaled to the
  original image in both; the difference is over the full-resolution logits.
- ``automatic, 32x32 points``: our ``AutomaticMaskGenerator`` vs Meta's
  ``SamAutomaticMaskGenerator`` on the mobile_sam pair (encoder included), with the
  "many" preset of ``benchmarks/automatic.py`` (random weights keep nothing at Meta's
  defaults); one timed run each. The difference column is the share of Meta's masks
  without a distinct partner at mask IoU >= 0.98 in ours.

- ``grounding-dino detector``, ``segment end to end``, ``yolo-clip detector`` (the text path,
  ``--no-text-path`` skips them): the grounding-dino detector's ``detect`` against
  transformers' processor -> ``GroundingDinoForObjectDetection`` -> post-processing on a
  Grounding-DINO-tiny-shaped random model (``benchmarks/grounding_dino.py``);
  ``segment(image, "a cat. a dog.")`` (grounding-dino + mobile_sam) against a LangSAM-style
  pipeline and the yolo-clip detector against ultralytics' FastSAM text prompt
  (``benchmarks/text_path.py``).

A second table covers the opt-in lower-precision modes (``build_sam(..., precision=...)``;
default: ``int8`` on CPU, ``bf16,fp16`` on CUDA; ``--precision none`` skips it): for each SAM
variant and mode, our encoder time in that mode against our fp32 encoder (same weights), the
mean and worst mask IoU of 16 box prompts against the fp32 masks, and the embedding's max
relative difference.

Weights: Meta's / ultralytics' models with every parameter perturbed (:mod:`grounded_sam.testing.sam_refs`),
saved as official-format checkpoints and loaded with ``build_sam``; no network. Image:
skimage's chelsea. Times are medians of interleaved runs in this process.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from _common import (
    chelsea_input,
    interleaved_medians,
    peak_memory_mib,
    rel_diff,
)


@dataclass
class Row:
    stage: str
    ours_s: float
    ref_s: float
    diff: float
    mem_ours: float
    mem_ref: float
    note: str = ""

    def cells(self) -> list[str]:
        return [
            self.stage,
            f"{self.ours_s * 1000:.0f}",
            f"{self.ref_s * 1000:.0f}",
            f"{self.ours_s / self.ref_s:.2f}",
            f"{self.diff:.1e}" + (f" ({self.note})" if self.note else ""),
            f"{_mib(self.mem_ours)} / {_mib(self.mem_ref)}",
        ]


def _mib(value: float) -> str:
    if value != value:  # not measured
        return "-"
    return "<1" if value < 1 else f"{value:.0f}"


HEADER = ["stage", "ours (ms)", "reference (ms)", "ratio", "max rel diff", "peak MiB ours / ref"]


def format_table(rows: list[Row]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "|".join(["---"] * len(HEADER)) + "|"]
    lines += ["| " + " | ".join(r.cells()) + " |" for r in rows]
    return "\n".join(lines)


def compare(
    stage: str,
    ours: Callable[[], object],
    ref: Callable[[], object],
    device: torch.device,
    repeats: int,
    warmup: int,
    diff: float,
    note: str = "",
) -> Row:
    times = interleaved_medians({"ours": ours, "ref": ref}, device, repeats, warmup)
    mem_ours = peak_memory_mib(ours, device)
    mem_ref = peak_memory_mib(ref, device)
    return Row(stage, times["ours"], times["ref"], diff, mem_ours, mem_ref, note)


# ---------------------------------------------------------------- model pairs
# Reference builder in tests/sam_refs.py and official checkpoint file name, per variant.
REFERENCES = {
    "vit_b": ("meta_vit_b", "sam_vit_b.pth"),
    "mobile_sam": ("meta_mobile_sam", "mobile_sam.pt"),
}


def checkpoint_path(name: str, tmp: Path) -> Path:
    """Where :func:`sam_pair` saves ``name``'s checkpoint (reused by :func:`bench_precision`)."""
    return tmp / REFERENCES[name][1]


def sam_pair(name: str, device: torch.device, tmp: Path):
    """(ours, reference) ``Sam`` pair with identical perturbed weights, eval, on ``device``.

    The reference is Meta's ``Sam`` (for mobile_sam around ultralytics' TinyViT); its weights
    are saved as an official checkpoint at :func:`checkpoint_path`, which ours loads.
    """
    from grounded_sam import build_sam
    from grounded_sam.testing import sam_refs as refs

    meta = getattr(refs, REFERENCES[name][0])()
    path = refs.save_checkpoint(meta, checkpoint_path(name, tmp))
    ours = build_sam(name, checkpoint=path, device=device)
    return ours, meta.to(device).eval()


# ---------------------------------------------------------------- benchmarks
@torch.no_grad()
def bench_automatic(ours, ref, device: torch.device) -> Row:
    """Automatic mask generation at 32x32 points on chelsea, one timed run each."""
    from automatic import PRESETS
    from segment_anything import SamAutomaticMaskGenerator
    from skimage.data import chelsea

    from grounded_sam import AutomaticMaskGenerator
    from grounded_sam._amg import match_masks

    image = chelsea()
    kw = dict(points_per_side=32, **PRESETS["many"])
    gen_ours, gen_ref = AutomaticMaskGenerator(ours, **kw), SamAutomaticMaskGenerator(ref, **kw)
    out_ours, out_ref = gen_ours.generate(image), gen_ref.generate(image)

    def stack(records):
        if not records:
            return torch.zeros((0, *image.shape[:2]), dtype=torch.bool)
        return torch.as_tensor(np.stack([r["segmentation"] for r in records]))

    matched, _ = match_masks(stack(out_ref), stack(out_ours), 0.98)
    unmatched = 1.0 - matched / max(len(out_ref), 1)
    return compare(
        "automatic, 32x32 points",
        lambda: gen_ours.generate(image),
        lambda: gen_ref.generate(image),
        device,
        repeats=1,
        warmup=0,
        diff=unmatched,
        note=f"{len(out_ours)} vs {len(out_ref)} masks, {matched} of Meta's matched",
    )


@torch.no_grad()
def bench_encoder(
    stage: str, ours, ref, device: torch.device, repeats: int, warmup: int
) -> tuple[Row, torch.Tensor]:
    """Encoder of one preprocessed 1024x1024 photo. Returns the row and our embedding."""
    image, _, _ = chelsea_input(ref.image_encoder.img_size)
    x = ref.preprocess(image.to(device))
    out_ours = ours.image_encoder(x)
    diff = rel_diff(ref.image_encoder(x), out_ours)
    row = compare(
        stage,
        lambda: ours.image_encoder(x),
        lambda: ref.image_encoder(x),
        device,
        repeats,
        warmup,
        diff,
    )
    return row, out_ours


def random_boxes(n: int, size: tuple[int, int], seed: int = 0) -> np.ndarray:
    """``n`` XYXY boxes inside an (H, W) image, at least 8 px wide and high."""
    rng = np.random.default_rng(seed)
    h, w = size
    x0 = rng.uniform(0, w - 8, n)
    y0 = rng.uniform(0, h - 8, n)
    x1 = np.minimum(w, x0 + rng.uniform(8, w / 2, n))
    y1 = np.minimum(h, y0 + rng.uniform(8, h / 2, n))
    return np.stack([x0, y0, x1, y1], axis=1)


@torch.no_grad()
def bench_decoder(
    ours, ref, features: torch.Tensor, n_boxes: int, device: torch.device, repeats: int, warmup: int
) -> Row:
    """``n_boxes`` box prompts in one call: our ``predict_boxes`` vs Meta's ``predict_torch``."""
    from segment_anything import SamPredictor as MetaPredictor

    from grounded_sam import SamPredictor
    from grounded_sam.predictor import ImageEmbedding

    _, original_size, input_size = chelsea_input(ref.image_encoder.img_size)
    p_ours = SamPredictor(ours)
    p_ours.set_embedding(ImageEmbedding(features, original_size, input_size))
    p_ref = MetaPredictor(ref)
    p_ref.features = features
    p_ref.original_size, p_ref.input_size = original_size, input_size
    p_ref.is_image_set = True

    boxes = random_boxes(n_boxes, original_size)
    boxes_t = p_ref.transform.apply_boxes_torch(
        torch.as_tensor(boxes, dtype=torch.float, device=device), original_size
    )

    def run_ref(return_logits: bool = False):
        return p_ref.predict_torch(
            None, None, boxes_t, multimask_output=False, return_logits=return_logits
        )

    logits_ours, _ = p_ours.predict_boxes(boxes, return_logits=True)
    logits_ref = run_ref(return_logits=True)[0]
    diff = rel_diff(logits_ref, torch.from_numpy(logits_ours))
    agree = float(((logits_ref > 0).cpu() == torch.from_numpy(logits_ours > 0)).float().mean())
    return compare(
        f"decoder, {n_boxes} box{'es' if n_boxes > 1 else ''}",
        lambda: p_ours.predict_boxes(boxes),
        run_ref,
        device,
        repeats,
        warmup,
        diff,
        note=f"masks agree {agree:.4%}",
    )


@dataclass
class PrecisionRow:
    model: str
    precision: str
    mode_s: float
    fp32_s: float
    mean_iou: float
    min_iou: float
    diff: float

    def cells(self) -> list[str]:
        return [
            self.model,
            self.precision,
            f"{self.mode_s * 1000:.0f}",
            f"{self.fp32_s * 1000:.0f}",
            f"{self.mode_s / self.fp32_s:.2f}",
            f"{self.mean_iou:.4f} / {self.min_iou:.4f}",
            f"{self.diff:.1e}",
        ]


PRECISION_HEADER = [
    "model",
    "precision",
    "encoder (ms)",
    "fp32 encoder (ms)",
    "ratio",
    "mask IoU vs fp32, mean / min (16 boxes)",
    "embedding max rel diff",
]


def format_precision_table(rows: list[PrecisionRow]) -> str:
    head = PRECISION_HEADER
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(head)) + "|"]
    lines += ["| " + " | ".join(r.cells()) + " |" for r in rows]
    return "\n".join(lines)


@torch.no_grad()
def bench_precision(
    name: str, checkpoint: Path, mode: str, device: torch.device, repeats: int, warmup: int
) -> PrecisionRow:
    """Our ``name`` model in ``mode`` against our fp32 model, same checkpoint and image."""
    from skimage.data import chelsea

    from grounded_sam import SamPredictor, build_sam

    fp32 = build_sam(name, checkpoint=checkpoint, device=device)
    low = build_sam(name, checkpoint=checkpoint, device=device, precision=mode)
    image, original_size, _ = chelsea_input(fp32.img_size)
    x = fp32.preprocess(image.to(device))
    times = interleaved_medians(
        {"mode": lambda: low.encode(x)[0], "fp32": lambda: fp32.encode(x)[0]},
        device,
        repeats,
        warmup,
    )
    boxes = random_boxes(16, original_size)
    outputs = []
    for model in (fp32, low):
        predictor = SamPredictor(model)
        predictor.set_image(chelsea())
        masks, _ = predictor.predict_boxes(boxes)
        outputs.append((torch.from_numpy(masks[:, 0]), predictor.get_image_embedding()))
    (m_fp32, e_fp32), (m_low, e_low) = outputs
    inter = (m_fp32 & m_low).flatten(1).sum(1)
    union = (m_fp32 | m_low).flatten(1).sum(1).clamp_min(1)
    ious = inter / union
    return PrecisionRow(
        name,
        mode,
        times["mode"],
        times["fp32"],
        float(ious.mean()),
        float(ious.min()),
        rel_diff(e_fp32, e_low),
    )


def text_path_rows(device: torch.device, repeats: int, warmup: int, tmp: Path) -> list[Row]:
    """The text path's rows (see the module docstring)."""
    import grounding_dino as gd
    import text_path

    with tempfile.TemporaryDirectory() as ptmp:
        processor = gd.build_processor(Path(ptmp))
    setup = gd.Setup(processor, gd.build_model(device=device), device, repeats, warmup)
    det = gd.bench_detector(setup)
    del setup
    rows = [
        Row(
            "grounding-dino detector, chelsea 800x1202 (vs transformers)",
            det["ours_s"],
            det["ref_s"],
            float("nan"),
            float("nan"),
            float("nan"),
            note=det["note"],
        )
    ]
    print(format_table(rows[-1:]).splitlines()[-1], file=sys.stderr, flush=True)
    for build in (text_path.segment_row, text_path.yolo_clip_row):
        rows.append(build(device, repeats, warmup, tmp))
        print(format_table(rows[-1:]).splitlines()[-1], file=sys.stderr, flush=True)
    return rows


def machine_line(device: torch.device) -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    parts = [
        f"cpu: {cpu} ({os.cpu_count()} logical cores)",
        f"torch {torch.__version__}",
        f"threads {torch.get_num_threads()}",
        f"device {device}",
    ]
    if device.type == "cuda":
        parts.append(torch.cuda.get_device_name(device))
    if hasattr(os, "getloadavg"):
        parts.append("load average {:.1f} {:.1f} {:.1f}".format(*os.getloadavg()))
    return "; ".join(parts)


def add_common_args(parser: argparse.ArgumentParser) -> None:
    """``--threads``, ``--device`` and ``--quick``, shared with ``benchmarks/sam_core.py``."""
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: torch's)"
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    parser.add_argument(
        "--quick", action="store_true", help="one timed run per row, no warm-up (a smoke test)"
    )


def setup_from_args(
    parser: argparse.ArgumentParser, args: argparse.Namespace, repeats: int | None = None
) -> tuple[torch.device, int, int]:
    """Apply ``--threads``, check ``--device``; returns (device, repeats, warmup)."""
    if args.threads is not None:
        if args.threads < 1:
            parser.error(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    if args.device not in ("cpu", "cuda") and not args.device.startswith("cuda:"):
        parser.error(f"--device must be cpu or cuda, got {args.device!r}")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    return device, repeats or (1 if args.quick else 5), 0 if args.quick else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_args(parser)
    parser.add_argument(
        "--repeats", type=int, default=None, help="timed runs per row (default 5; 1 with --quick)"
    )
    parser.add_argument(
        "--precision",
        default=None,
        metavar="MODES",
        help="comma-separated lower-precision modes to compare with fp32 (default: int8 on "
        "CPU, bf16,fp16 on CUDA; 'none' skips the precision table)",
    )
    parser.add_argument(
        "--no-automatic",
        dest="automatic",
        action="store_false",
        help="skip the automatic mask generation row (about 3 minutes on 2 cores)",
    )
    parser.add_argument(
        "--no-text-path",
        dest="text_path",
        action="store_false",
        help="skip the grounding-dino, end-to-end segment and yolo-clip rows",
    )
    args = parser.parse_args(argv)
    device, repeats, warmup = setup_from_args(parser, args, args.repeats)
    modes = _precision_modes(parser, args.precision, device)

    print(machine_line(device))
    rows: list[Row] = []
    notes: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        ours, ref = sam_pair("vit_b", device, Path(tmp))
        row, features = bench_encoder("vit_b encoder", ours, ref, device, repeats, warmup)
        rows.append(row)
        print(format_table(rows[-1:]).splitlines()[-1], file=sys.stderr, flush=True)
        try:
            m_ours, m_ref = sam_pair("mobile_sam", device, Path(tmp))
        except (ImportError, AttributeError, ValueError, RuntimeError, NotImplementedError) as e:
            notes.append(f"mobile_sam encoder: not measured ({type(e).__name__}: {e})")
        else:
            rows.append(
                bench_encoder("mobile_sam encoder", m_ours, m_ref, device, repeats, warmup)[0]
            )
            if args.quick or not args.automatic:
                notes.append("automatic mask generation: skipped (--quick / --no-automatic)")
            else:
                rows.append(bench_automatic(m_ours, m_ref, device))
            del m_ours, m_ref
        for n in (1, 16):
            rows.append(bench_decoder(ours, ref, features, n, device, repeats, warmup))
        del ours, ref, features
        if args.text_path:
            rows += text_path_rows(device, repeats, warmup, Path(tmp))
        precision_rows = [
            bench_precision(name, checkpoint_path(name, Path(tmp)), mode, device, repeats, warmup)
            for name in REFERENCES
            if checkpoint_path(name, Path(tmp)).exists()
            for mode in modes
        ]
    print(format_table(rows))
    if precision_rows:
        print("\nOpt-in precision modes, against our fp32 on the same weights:\n")
        print(format_precision_table(precision_rows))
    for note in notes:
        print(f"\n{note}")
    print("\n" + machine_line(device))
    return 0


def _precision_modes(
    parser: argparse.ArgumentParser, value: str | None, device: torch.device
) -> list[str]:
    from grounded_sam.model.precision import PRECISIONS

    if value is None:
        return ["int8"] if device.type == "cpu" else ["bf16", "fp16"]
    if value.strip().lower() == "none":
        return []
    modes = [m.strip() for m in value.split(",") if m.strip()]
    bad = [m for m in modes if m not in PRECISIONS or m == "fp32"]
    if bad or not modes:
        parser.error(
            f"--precision {value!r}: give a comma-separated list of "
            f"{', '.join(p for p in PRECISIONS if p != 'fp32')}, or 'none'"
        )
    if "int8" in modes and device.type != "cpu":
        parser.error("--precision int8 runs on CPU only; drop it with --device cuda")
    return modes


if __name__ == "__main__":
    raise SystemExit(main())
