"""ONNX: onnxruntime against our PyTorch path on this CPU, same weights, same inputs.

    python benchmarks/onnx.py [--threads N] [--quick] [--variants vit_b,mobile_sam]
                              [--no-int8]

Prints one markdown table per run: stage, onnxruntime (ms), PyTorch (ms), ratio
(onnxruntime / PyTorch), max relative difference, peak memory. Per variant:

- ``encoder``: the exported ``encoder.onnx`` against ``model.encode`` on the same
  (1, 3, 1024, 1024) input; difference over the image embedding.
- ``encoder int8``: the ``--quantize`` export (dynamic int8 weights) against the PyTorch
  float32 encoder; the note is the mask IoU of the int8 export against the float32 one
  (mean / min over the export's test prompts, from ``sam_onnx.json``).
- ``decoder, 1 box``, ``decoder, 1 click (3 masks)``: ``OnnxSamPredictor.predict`` against
  ``SamPredictor.predict`` on the same embedding, masks at the original size (chelsea,
  300x451); difference over the mask logits.
- ``decoder, 16 boxes``: ``predict_boxes`` (one onnxruntime call per box, the exported
  decoder takes one prompt; PyTorch decodes all 16 in one call).

Both sides use the same number of threads (``--threads``, default torch's). Weights: random
with every tensor perturbed (``grounded_sam.testing``), loaded from official-format files.
Times are medians of interleaved runs in this process.

Importable: ``benchmark(variants, threads=None, repeats=5, warmup=1, int8=True) -> list[Row]``.
This file's name is also the ``onnx`` library's: load it by path (``importlib.util.
spec_from_file_location("onnx_benchmark", "benchmarks/onnx.py")``), not ``import onnx``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

_HERE = Path(__file__).resolve().parent
# Run as a script, this folder is first on sys.path and this file would shadow the onnx
# library: import the real one first, with this folder out of the way.
_saved_path = list(sys.path)
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
import onnx  # noqa: E402,F401 - the library, cached in sys.modules for everything below

sys.path[:] = _saved_path
if str(_HERE) not in sys.path:
    sys.path.insert(0, str(_HERE))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from _common import interleaved_medians, peak_memory_mib  # noqa: E402

VARIANTS = ("vit_b", "mobile_sam", "sam2.1_hiera_tiny")
HEADER = [
    "stage",
    "onnxruntime (ms)",
    "PyTorch (ms)",
    "ratio",
    "max rel diff",
    "peak MiB ort / torch",
]


@dataclass
class Row:
    stage: str
    ort_s: float
    torch_s: float
    diff: float
    mem_ort: float
    mem_torch: float
    note: str = ""

    def cells(self) -> list[str]:
        def mib(v: float) -> str:
            return "<1" if v < 1 else f"{v:.0f}"

        return [
            self.stage,
            f"{self.ort_s * 1000:.0f}",
            f"{self.torch_s * 1000:.0f}",
            f"{self.ort_s / self.torch_s:.2f}",
            f"{self.diff:.1e}" + (f" ({self.note})" if self.note else ""),
            f"{mib(self.mem_ort)} / {mib(self.mem_torch)}",
        ]


def format_table(rows: list[Row]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "|".join(["---"] * len(HEADER)) + "|"]
    lines += ["| " + " | ".join(r.cells()) + " |" for r in rows]
    return "\n".join(lines)


def _row(stage, ort_fn, torch_fn, repeats, warmup, diff, note="") -> Row:
    cpu = torch.device("cpu")
    times = interleaved_medians({"ort": ort_fn, "torch": torch_fn}, cpu, repeats, warmup)
    return Row(
        stage,
        times["ort"],
        times["torch"],
        diff,
        peak_memory_mib(ort_fn, cpu),
        peak_memory_mib(torch_fn, cpu),
        note,
    )


def _model(name: str, tmp: Path):
    """Our model with perturbed random weights (SAM 1 / MobileSAM from an official-format
    checkpoint file)."""
    if name.startswith("sam2"):
        from grounded_sam.testing.sam2_refs import random_sam2

        return random_sam2(name, seed=0)
    from grounded_sam import build_sam
    from grounded_sam.testing import sam_refs

    ref = {"vit_b": sam_refs.meta_vit_b, "mobile_sam": sam_refs.meta_mobile_sam}[name]()
    path = sam_refs.save_checkpoint(ref, tmp / f"{name}.pth")
    return build_sam(name, checkpoint=path, device="cpu")


def _rel(a, b) -> float:
    from grounded_sam.onnx.verify import rel_diff

    return rel_diff(np.asarray(a), np.asarray(b))


def bench_variant(
    name: str, tmp: Path, threads: int, repeats: int, warmup: int, int8: bool
) -> list[Row]:
    """The rows of one variant (see the module docstring)."""
    from skimage.data import chelsea

    from grounded_sam import SamPredictor
    from grounded_sam.onnx import OnnxSam, OnnxSamPredictor, export_onnx

    model = _model(name, tmp)
    fp32 = export_onnx(model, tmp / f"{name}_fp32", verify_outputs=False)
    # interleaved with PyTorch: onnxruntime's spin-waiting threads would take the cores from
    # the PyTorch call that follows (measured: PyTorch's decoder 2x slower beside them)
    onnx_model = OnnxSam(fp32.directory, threads=threads, spinning=False)
    image = chelsea()
    with torch.no_grad():
        x, _ = model.prepare_image(image)
        ref_emb, _ = model.encode(x)
    x_np = np.ascontiguousarray(x.numpy())
    emb, _ = onnx_model.encode(x_np)

    def torch_encode():
        with torch.no_grad():
            model.encode(x)

    rows = [
        _row(
            f"{name} encoder",
            lambda: onnx_model.encode(x_np),
            torch_encode,
            repeats,
            warmup,
            _rel(ref_emb.numpy(), emb),
        )
    ]
    if int8:
        q = export_onnx(model, tmp / f"{name}_int8", quantize=True, verify_outputs=False)
        q_model = OnnxSam(q.directory, threads=threads, spinning=False)
        q_emb, _ = q_model.encode(x_np)
        iou = q.metadata["quantization"]["mask_iou_vs_fp32"]
        rows.append(
            _row(
                f"{name} encoder int8",
                lambda: q_model.encode(x_np),
                torch_encode,
                repeats,
                warmup,
                _rel(ref_emb.numpy(), q_emb),
                f"mask IoU vs fp32 {iou['mean']:.3f} / {iou['min']:.3f}",
            )
        )
    tp, op = SamPredictor(model), OnnxSamPredictor(onnx_model)
    tp.set_image(image)
    op.set_embedding(tp.get_embedding())  # the same embedding on both sides
    h, w = image.shape[:2]
    box = np.array([0.2 * w, 0.15 * h, 0.8 * w, 0.95 * h])
    click = dict(point_coords=np.array([[0.55 * w, 0.5 * h]]), point_labels=np.array([1]))
    rng = np.random.default_rng(0)
    xy = rng.uniform([0, 0], [w * 0.6, h * 0.6], size=(16, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(20, [w * 0.4, h * 0.4], size=(16, 2))], 1)
    cases = [
        ("decoder, 1 box", "predict", dict(box=box, multimask_output=False)),
        ("decoder, 1 click (3 masks)", "predict", dict(**click, multimask_output=True)),
        ("decoder, 16 boxes", "predict_boxes", dict(boxes=boxes)),
    ]
    for stage, method, kw in cases:
        a = getattr(op, method)(**kw, return_logits=True)[0]
        b = getattr(tp, method)(**kw, return_logits=True)[0]
        rows.append(
            _row(
                f"{name} {stage}",
                lambda m=method, k=kw: getattr(op, m)(**k),
                lambda m=method, k=kw: getattr(tp, m)(**k),
                repeats,
                warmup,
                _rel(b, a),
            )
        )
    return rows


def benchmark(
    variants=("vit_b", "mobile_sam"),
    threads: int | None = None,
    repeats: int = 5,
    warmup: int = 1,
    int8: bool = True,
) -> list[Row]:
    """Rows for ``variants`` (see the module docstring); ``threads`` sets both torch's and
    onnxruntime's intra-op threads (default: torch's current count)."""
    if threads is not None:
        torch.set_num_threads(threads)
    threads = torch.get_num_threads()
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in variants:
            rows += bench_variant(name, Path(tmp), threads, repeats, warmup, int8)
    return rows


def main(argv: list[str] | None = None) -> int:
    import run

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    run.add_common_args(parser)
    parser.add_argument(
        "--variants",
        default="vit_b,mobile_sam",
        help=f"comma-separated, from {', '.join(VARIANTS)} (default vit_b,mobile_sam)",
    )
    parser.add_argument("--no-int8", action="store_true", help="skip the int8 export rows")
    args = parser.parse_args(argv)
    device, repeats, warmup = run.setup_from_args(parser, args)
    if device.type != "cpu":
        parser.error("this benchmark runs on the CPU (onnxruntime's CPU provider)")
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from {', '.join(VARIANTS)}")
    import onnxruntime

    print(run.machine_line(device) + f"; onnxruntime {onnxruntime.__version__}")
    rows = benchmark(variants, None, repeats, warmup, not args.no_int8)
    print(format_table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
