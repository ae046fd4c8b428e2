"""``grounded-sam finetune``: fine-tune SAM's mask decoder (+ LoRA) on COCO masks.

grounded-sam finetune --annotations TRAIN.json --images DIR --sam NAME [--sam-checkpoint PATH]
                      --out RUN [--val-annotations VAL.json] [--train decoder|decoder+lora]
                      [--epochs N] [--lr F] [--batch-size K] [--seed S] [--resume]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from grounded_sam.cli._common import UsageError, add_debug_arg

__all__ = ["add_parser"]


def _int(low: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {value}")
        return value

    return parse


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
    return value


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``finetune`` on ``subparsers``."""
    from grounded_sam.train.loop import MODES, FinetuneConfig

    d = FinetuneConfig()
    parser = subparsers.add_parser(
        "finetune",
        help="fine-tune SAM on your own masks (COCO), SAM paper's recipe, official checkpoint",
        description=(
            "Fine-tune a SAM variant on COCO instance masks (e.g. the annotations.json of "
            "`grounded-sam label` after a person corrected it) with the SAM paper's interactive "
            "training recipe: box or point prompts, iterative correction clicks with the "
            "previous mask as prompt, focal + dice (20:1) and IoU-head losses. Writes "
            "RUN/checkpoint.pt in the variant's official format (loads in build_sam, "
            "--sam-checkpoint and Meta's own code), RUN/metrics.json, RUN/train_log.jsonl and "
            "RUN/report.md (loss curve, before/after box mIoU, mIoU after 1/3/5 clicks, NoC@85/90)."
        ),
    )
    add_debug_arg(parser)
    data = parser.add_argument_group("data (COCO instances, polygons or RLE)")
    data.add_argument("--annotations", required=True, metavar="JSON", help="training masks")
    data.add_argument("--images", required=True, metavar="DIR", help="folder of the images")
    data.add_argument(
        "--val-annotations",
        metavar="JSON",
        help="held-out masks for the before/after figures (default: the training masks)",
    )
    data.add_argument(
        "--val-images", metavar="DIR", help="folder of the validation images (default --images)"
    )
    data.add_argument(
        "--val-limit", type=_int(1), metavar="N", help="evaluate on the first N images only"
    )
    model = parser.add_argument_group("model")
    model.add_argument("--sam", default="mobile_sam", metavar="NAME",
                       help="SAM variant (default mobile_sam)")  # fmt: skip
    model.add_argument(
        "--sam-checkpoint",
        metavar="PATH",
        help="official-format starting checkpoint (default: the variant's official weights)",
    )
    model.add_argument("--device", metavar="D", help="torch device, e.g. cpu or cuda:0")
    model.add_argument(
        "--amp", action="store_true", help="mixed precision on CUDA (bf16 where supported)"
    )
    train = parser.add_argument_group("training")
    train.add_argument(
        "--train",
        choices=MODES,
        default=d.train,
        help="decoder (default): image/prompt encoders frozen, embeddings cached on disk; "
        "decoder+lora: also low-rank adapters on the encoder's attention (merged on save)",
    )
    train.add_argument("--epochs", type=_int(1), default=d.epochs, help=f"default {d.epochs}")
    train.add_argument("--lr", type=_positive_float, default=d.lr, help=f"peak learning rate "
                       f"(AdamW, warm-up then cosine; default {d.lr:g})")  # fmt: skip
    train.add_argument(
        "--batch-size",
        type=_int(1),
        default=d.batch_size,
        help=f"masks per step (default {d.batch_size})",
    )
    train.add_argument("--seed", type=_int(0), default=d.seed, help=f"default {d.seed}")
    train.add_argument(
        "--correction-clicks",
        type=_int(0),
        default=d.correction_clicks,
        help=f"correction clicks per mask and step (SAM paper: 8; default {d.correction_clicks}; "
        "each costs one decoder pass: 2 is a good CPU setting)",
    )
    train.add_argument(
        "--refine-rounds",
        type=_int(0),
        default=d.refine_rounds,
        help=f"rounds with only the previous mask as prompt (SAM paper: 2; default {d.refine_rounds})",
    )
    train.add_argument(
        "--lora-rank",
        type=_int(1),
        default=d.lora_rank,
        help=f"decoder+lora: rank (default {d.lora_rank})",
    )
    train.add_argument(
        "--save-every", type=_int(1), default=d.save_every,
        help=f"steps between resumable saves (default {d.save_every}; also every epoch)",
    )  # fmt: skip
    run = parser.add_argument_group("run")
    run.add_argument("--out", required=True, metavar="RUN", help="run folder")
    run.add_argument(
        "--resume", action="store_true", help="continue the run in --out from its last saved step"
    )
    run.add_argument(
        "--no-eval", action="store_true", help="skip the before/after interactive evaluation"
    )
    run.add_argument(
        "--max-clicks",
        type=_int(5),
        default=20,
        help="clicks per mask in the evaluation, at least 5 (20, the SAM paper's)",
    )
    parser.set_defaults(func=_cmd_finetune)
    return parser


def _cmd_finetune(args: argparse.Namespace) -> int:
    from grounded_sam.train.loop import FinetuneConfig
    from grounded_sam.train.run import STATE, finetune

    if args.val_images and not args.val_annotations:
        raise UsageError("--val-images needs --val-annotations")
    if args.sam_checkpoint is not None and not Path(args.sam_checkpoint).is_file():
        raise UsageError(f"--sam-checkpoint {args.sam_checkpoint!r}: no such file")
    config = FinetuneConfig(
        train=args.train,
        epochs=args.epochs,
        lr=args.lr,
        batch_size=args.batch_size,
        seed=args.seed,
        correction_clicks=args.correction_clicks,
        refine_rounds=args.refine_rounds,
        lora_rank=args.lora_rank,
        amp=args.amp,
        save_every=args.save_every,
    )
    try:
        result = finetune(
            args.annotations,
            args.images,
            args.out,
            sam=args.sam,
            sam_checkpoint=args.sam_checkpoint,
            val_annotations=args.val_annotations,
            val_images=args.val_images,
            config=config,
            resume=args.resume,
            device=args.device,
            evaluate=not args.no_eval,
            val_limit=args.val_limit,
            max_clicks=args.max_clicks,
        )
    except KeyboardInterrupt:
        if (Path(args.out) / STATE).exists():
            sys.stderr.write(
                f"interrupted: {args.out} keeps the last saved step; run the same command with "
                "--resume to continue from it\n"
            )
        raise
    m = result.metrics
    print(f"checkpoint: {result.checkpoint}")
    if m.get("before") and m.get("after"):
        b, a = m["before"], m["after"]
        print(
            f"box mIoU {b['box_mIoU']:.3f} -> {a['box_mIoU']:.3f} (fill-the-box "
            f"{b['fill_box_mIoU']:.3f}); mIoU@1 {b['mIoU@1']:.3f} -> {a['mIoU@1']:.3f}; "
            f"NoC@85 {b['NoC@85']:.2f} -> {a['NoC@85']:.2f}; NoC@90 {b['NoC@90']:.2f} -> "
            f"{a['NoC@90']:.2f}"
        )
    print(f"report: {result.out / 'report.md'}")
    return 0
