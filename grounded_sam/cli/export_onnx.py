"""``grounded-sam export-onnx --sam NAME [--sam-checkpoint PATH] --out DIR [--opset N]
[--quantize] [--single-mask] [--encoder-preprocess] [--no-verify]``.

Writes ``DIR/encoder.onnx``, ``DIR/decoder.onnx`` (Meta's decoder inputs and outputs) and
``DIR/sam_onnx.json``, checked in onnxruntime against the PyTorch model before they are kept;
see ``docs/onnx.md``. Steps go to stderr, the summary to stdout. A failed or interrupted
export leaves nothing behind (``DIR`` too is removed when the command created it).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from grounded_sam.cli._common import UsageError, add_debug_arg

__all__ = ["add_parser"]


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``export-onnx`` on ``subparsers``."""
    from grounded_sam.onnx.files import DEFAULT_OPSET, MAX_OPSET, MIN_OPSET

    parser = subparsers.add_parser(
        "export-onnx",
        help="export a SAM variant to ONNX (encoder.onnx + decoder.onnx)",
        description=(
            "Export a SAM variant to DIR/encoder.onnx (normalised, padded 1x3x1024x1024 image "
            "-> image embeddings; SAM 2.1 also its high-resolution features) and "
            "DIR/decoder.onnx (prompts -> masks at the original size, with the inputs and "
            "outputs of Meta's exported decoder), plus DIR/sam_onnx.json. The files are run "
            "in onnxruntime against the PyTorch model before they are kept."
        ),
    )
    add_debug_arg(parser)
    parser.add_argument("--sam", required=True, metavar="NAME", help="SAM variant, e.g. vit_b")
    parser.add_argument(
        "--sam-checkpoint",
        default=None,
        metavar="PATH",
        help="official-format checkpoint; default: the cached/downloaded registry weights",
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder")
    parser.add_argument(
        "--opset",
        type=int,
        default=DEFAULT_OPSET,
        metavar="N",
        help=f"ONNX opset, {MIN_OPSET} to {MAX_OPSET} (default {DEFAULT_OPSET}, as Meta's script)",
    )
    parser.add_argument(
        "--quantize",
        action="store_true",
        help="dynamic int8 weights (onnxruntime's quantiser); the mask IoU against float32 "
        "is measured and reported",
    )
    parser.add_argument(
        "--single-mask",
        action="store_true",
        help="the decoder returns one mask instead of four (Meta's --return-single-mask; for "
        "tools that render one mask, e.g. Meta's web demo; --sam-onnx and OnnxSamPredictor "
        "need the default four-mask export)",
    )
    parser.add_argument(
        "--encoder-preprocess",
        action="store_true",
        help="SAM 1 / MobileSAM: encoder.onnx takes the resized (h, w, 3) float32 RGB image "
        "(0..255, long side <= 1024) and normalises and pads it itself (samexporter's "
        "--use-preprocess layout, what X-AnyLabeling's SAM loader feeds)",
    )
    parser.add_argument(
        "--no-verify",
        action="store_true",
        help="skip the onnxruntime-vs-PyTorch check (faster; the files are not checked)",
    )
    parser.set_defaults(func=run)
    return parser


def _size(path: Path) -> str:
    total = path.stat().st_size
    data = path.with_name(path.name + ".data")
    if data.exists():
        total += data.stat().st_size
    return f"{total / 2**20:.1f} MiB"


def run(args: argparse.Namespace) -> int:
    from grounded_sam.onnx.export import export_onnx

    if args.sam_checkpoint is not None and not Path(args.sam_checkpoint).is_file():
        raise UsageError(f"--sam-checkpoint {args.sam_checkpoint!r}: no such file")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {str(out)!r} exists and is not a folder")

    def log(message: str) -> None:
        sys.stderr.write(message + "\n")
        sys.stderr.flush()

    result = export_onnx(
        args.sam,
        out,
        checkpoint=args.sam_checkpoint,
        opset=args.opset,
        quantize=args.quantize,
        single_mask=args.single_mask,
        encoder_preprocess=args.encoder_preprocess,
        verify_outputs=not args.no_verify,
        log=log,
    )
    meta = result.metadata
    kind = "int8" if meta["quantized"] else "float32"
    print(f"{result.encoder} ({_size(result.encoder)}, {kind})")
    print(f"{result.decoder} ({_size(result.decoder)}, {kind}, {meta['decoder']['masks']} masks)")
    v = meta.get("verification")
    if v and "logits_rel_diff" in v:
        decoder = "single-mask decoder" if v.get("single_mask") else "decoder"
        print(
            f"verified against PyTorch: encoder {v['encoder_rel_diff']:.1e}, {decoder} logits "
            f"{v['logits_rel_diff']:.1e} (relative), masks agree on "
            f"{100 * v['end_to_end_agreement']:.3f}% of pixels"
        )
    q = meta.get("quantization")
    if q:
        iou = q["mask_iou_vs_fp32"]
        print(
            f"int8 masks vs float32: IoU mean {iou['mean']:.4f}, min {iou['min']:.4f} "
            f"({iou['n']} masks, test scene)"
        )
    return 0
