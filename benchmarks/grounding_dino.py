"""Grounding DINO detector: our FastGroundingDino against transformers' model, same weights.

    python benchmarks/grounding_dino.py [--threads N] [--device cpu|cuda] [--quick]
        [--repeats N] [--precision MODES] [--no-batch] [--no-detector] [--clock wall|thread]

Model: Grounding-DINO-tiny's shapes (``GroundingDinoConfig()``: Swin-T backbone, BERT-base
text encoder, d_model 256, 6 + 6 layers, 900 queries, 4 levels x 4 points, 256 text tokens;
172M parameters), random initialisation with every float parameter perturbed, no download.
The last text LayerNorm gets a shared direction and the query features no bias, so the token
logits of a query agree in sign and the default box threshold (0.3) keeps part of the queries;
the invalid (border) two-stage proposals are kept from outscoring the real ones, so the 900
queries start from 900 different tokens. Inputs: skimage's chelsea, astronaut and coffee
through ``GroundingDinoProcessor``'s default resize (shortest edge 800: chelsea becomes
800x1202); prompts from a BERT-style vocabulary with bert-base-uncased's ids for ``[CLS]``,
``[SEP]``, ``.`` and ``?``. Threads: 2 unless ``--threads`` says otherwise.

Rows (one markdown table), times are medians of interleaved runs (ours, transformers, ...):

- ``fp32``: one 800x1202 image, ours (text encoded in the call) vs ``model(**inputs)``;
  ratio, the largest differences of the finite logits, boxes and scores, detections kept at
  box 0.3, and peak memory (RSS above the start on CPU).
- ``fp32, text cached``: the same with ``text_features=`` from ``encode_text``.
- ``detector.detect``: the ``grounding-dino`` detector as users call it (preprocessing, our
  forward with the prompt's cached text features, post-processing, phrase labels) against
  processor -> transformers' model -> post-processing; detections compared.
- one row per lower-precision mode (default ``int8`` on CPU, ``bf16,fp16`` on CUDA): its time
  against transformers' fp32, and box recall at IoU 0.9 against our fp32 boxes (one-to-one)
  over the three photos x three prompts, next to the recall of our fp32 with N(0, 0.001)
  noise on the pixels (a control: how much any small perturbation costs on random weights).
- ``batch of 2``: two same-size images (chelsea and its mirror image) in one call against two
  calls, for ours and for transformers, with the largest box difference batch vs single
  (skipped with ``--quick``).

``--quick``: one timed run per row, no warm-up, one prompt in the recall set, no batch row
(about 3-5 minutes on 2 quiet cores).

``--clock thread`` (with ``--threads 1``) times CPU seconds of the calling thread instead of
wall time: the cost of the work itself, stable when other processes share the cores (wall
times on a loaded 2-core machine varied 2-3x between runs).

Import :func:`grounding_dino_rows` to get the rows as dicts (``benchmarks/run.py``).
"""

from __future__ import annotations

import argparse
import inspect
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import interleaved_medians, peak_memory_mib, sync  # noqa: E402

PROMPTS = ("a cat. a dog.", "the person. a red car. green grass. the sky.", "a cup? a table.")
WORDS = (
    "a", "an", "the", "cat", "dog", "person", "car", "tree", "sky", "grass", "red", "green",
    "blue", "cup", "table", "coffee", "rocket", "head", "eye", "ear", "tail", "photo", "of",
)  # fmt: skip
BOX_THRESHOLD, TEXT_THRESHOLD = 0.3, 0.25


# ----------------------------------------------------------------------------- models
def build_processor(tmp: Path):
    """GroundingDinoProcessor (default 800/1333 resize) with a BERT-id-compatible vocabulary."""
    from transformers import BertTokenizerFast, GroundingDinoImageProcessor, GroundingDinoProcessor

    vocab = [f"[unused{i}]" for i in range(30522)]
    for i, tok in ((0, "[PAD]"), (100, "[UNK]"), (101, "[CLS]"), (102, "[SEP]"), (103, "[MASK]")):
        vocab[i] = tok
    vocab[1012], vocab[1029] = ".", "?"
    for i, word in enumerate(WORDS):
        vocab[2000 + 7 * i] = word
    path = tmp / "vocab.txt"
    path.write_text("\n".join(vocab) + "\n")
    if "vocab" in inspect.signature(BertTokenizerFast.__init__).parameters:  # transformers 5
        tokenizer = BertTokenizerFast(vocab=str(path), do_lower_case=True)
    else:  # transformers 4
        tokenizer = BertTokenizerFast(vocab_file=str(path), do_lower_case=True)
    return GroundingDinoProcessor(
        image_processor=GroundingDinoImageProcessor(), tokenizer=tokenizer
    )


def build_model(seed: int = 0, device: torch.device | str = "cpu"):
    """Grounding-DINO-tiny-shaped ``GroundingDinoForObjectDetection``, random, perturbed, eval."""
    from transformers import GroundingDinoConfig, GroundingDinoForObjectDetection

    from grounded_sam.testing.detectors import perturb_

    torch.manual_seed(seed)
    model = GroundingDinoForObjectDetection(GroundingDinoConfig()).eval()
    perturb_(model, seed=seed)
    with torch.no_grad():
        text_norm = model.model.encoder.layers[-1].text_enhancer_layer.layer_norm_after
        text_norm.weight.mul_(0.1)
        gen = torch.Generator().manual_seed(seed + 1)
        text_norm.bias.copy_(0.25 * torch.randn(text_norm.bias.shape, generator=gen))
        model.model.decoder.layer_norm.weight.fill_(1.0)
        model.model.decoder.layer_norm.bias.zero_()
        # Two-stage proposals at the image border are invalid: their query is the constant
        # LayerNorm(enc_output.bias). Point that constant away from the text direction, else
        # it may outscore every real token and all 900 queries become that one border box.
        direction = model.model.enc_output_norm.weight * text_norm.bias
        model.model.enc_output.bias.copy_(-0.5 * direction / direction.norm())
    return model.to(device)


def photos() -> dict[str, np.ndarray]:
    from skimage import data

    return {"chelsea": data.chelsea(), "astronaut": data.astronaut(), "coffee": data.coffee()}


# ----------------------------------------------------------------------------- measures
def detections(processor, out, input_ids, size: tuple[int, int]) -> dict:
    params = inspect.signature(processor.post_process_grounded_object_detection).parameters
    kw = "threshold" if "threshold" in params else "box_threshold"
    return processor.post_process_grounded_object_detection(
        out, input_ids, **{kw: BOX_THRESHOLD}, text_threshold=TEXT_THRESHOLD, target_sizes=[size]
    )[0]


def box_recall(ref: torch.Tensor, boxes: torch.Tensor, iou: float = 0.9) -> tuple[int, int]:
    """(reference boxes matched at IoU >= ``iou``, reference boxes), one-to-one: greedily the
    best remaining pair first, each box matched at most once (dense random-model boxes would
    otherwise let one box match many)."""
    from torchvision.ops import box_iou

    if len(ref) == 0 or len(boxes) == 0:
        return 0, len(ref)
    overlap = box_iou(ref.float(), boxes.float())
    matched = 0
    while True:
        best = overlap.max()
        if best < iou:
            return matched, len(ref)
        i, j = divmod(int(overlap.argmax()), overlap.shape[1])
        overlap[i, :] = -1
        overlap[:, j] = -1
        matched += 1


def match_queries(ours: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Index into ``ours`` (Q, F) giving, for each row of ``ref``, its nearest unused row.

    The two-stage selection sorts the 900 proposals by score; proposals whose scores tie to
    float rounding (flat image regions, random weights) may come out in another order in
    either implementation, which permutes the queries without changing them. Greedy
    one-to-one matching, closest pairs first (the identity when nothing moved).
    """
    if torch.equal(ours, ref) or float((ours - ref).abs().max()) < 1e-3:
        return torch.arange(len(ref))
    dist = torch.cdist(ref.double(), ours.double())
    order = dist.flatten().argsort()
    taken_ref = torch.zeros(len(ref), dtype=torch.bool)
    taken_ours = torch.zeros(len(ours), dtype=torch.bool)
    index = torch.full((len(ref),), -1, dtype=torch.long)
    for flat in order.tolist():
        i, j = divmod(flat, len(ours))
        if not taken_ref[i] and not taken_ours[j]:
            index[i], taken_ref[i], taken_ours[j] = j, True, True
            if bool(taken_ref.all()):
                break
    return index


def output_diffs(ours, ref) -> dict[str, float]:
    """Largest differences of finite logits, boxes and scores between matched queries (see
    :func:`match_queries`), and how many queries changed position."""
    diffs = {"logits": 0.0, "boxes": 0.0, "scores": 0.0, "moved": 0}
    for b in range(ref.logits.shape[0]):
        finite = torch.isfinite(ref.logits[b])
        if not torch.equal(torch.isfinite(ours.logits[b]), finite):
            raise AssertionError("the -inf pattern of the logits differs")
        probs_ref = ref.logits[b].sigmoid()
        probs_ours = ours.logits[b].sigmoid()
        index = match_queries(
            torch.cat((ours.pred_boxes[b], probs_ours), -1),
            torch.cat((ref.pred_boxes[b], probs_ref), -1),
        )
        logits = ours.logits[b][index]
        diffs["logits"] = max(diffs["logits"], float((logits - ref.logits[b])[finite].abs().max()))
        diffs["boxes"] = max(
            diffs["boxes"], float((ours.pred_boxes[b][index] - ref.pred_boxes[b]).abs().max())
        )
        scores = probs_ours[index].max(-1).values - probs_ref.max(-1).values
        diffs["scores"] = max(diffs["scores"], float(scores.abs().max()))
        diffs["moved"] += int((index != torch.arange(len(index))).sum())
    return diffs


@dataclass
class Setup:
    processor: object
    model: torch.nn.Module
    device: torch.device
    repeats: int
    warmup: int
    clock: str = "wall"  # or "thread": CPU time of the calling thread (with one torch thread)

    def medians(self, fns: dict, repeats: int | None = None) -> dict[str, float]:
        """Median seconds per function, runs interleaved (see ``_common.interleaved_medians``)."""
        repeats = self.repeats if repeats is None else repeats
        if self.clock == "wall":
            return interleaved_medians(fns, self.device, repeats, self.warmup)
        for _ in range(self.warmup):
            for fn in fns.values():
                fn()
        times: dict[str, list[float]] = {k: [] for k in fns}
        for _ in range(max(1, repeats)):
            for key, fn in fns.items():
                sync(self.device)
                start = time.thread_time()
                fn()
                times[key].append(time.thread_time() - start)
        return {k: statistics.median(v) for k, v in times.items()}


def _inputs(setup: Setup, image: np.ndarray, prompt: str) -> dict:
    return setup.processor(images=image, text=prompt, return_tensors="pt").to(setup.device)


@torch.inference_mode()
def bench_fp32(setup: Setup, fast) -> list[dict]:
    image = photos()["chelsea"]
    inputs = _inputs(setup, image, PROMPTS[0])
    model = setup.model
    ours, ref = fast(**inputs), model(**inputs)
    diffs = output_diffs(ours, ref)
    kept = [len(detections(setup.processor, o, inputs["input_ids"], image.shape[:2])["scores"])
            for o in (ours, ref)]  # fmt: skip
    text = fast.encode_text(inputs["input_ids"], inputs["attention_mask"], inputs["token_type_ids"])
    pixels = {"pixel_values": inputs["pixel_values"], "pixel_mask": inputs["pixel_mask"]}
    times = setup.medians(
        {
            "ours": lambda: fast(**inputs),
            "cached": lambda: fast(**pixels, text_features=text),
            "ref": lambda: model(**inputs),
        }
    )
    mem_ours = peak_memory_mib(lambda: fast(**inputs), setup.device)
    mem_ref = peak_memory_mib(lambda: model(**inputs), setup.device)
    h, w = inputs["pixel_values"].shape[-2:]
    note = (
        f"max |diff| logits {diffs['logits']:.1e}, boxes {diffs['boxes']:.1e}, "
        f"scores {diffs['scores']:.1e} ({diffs['moved']} of 900 queries in another order); "
        f"kept {kept[0]} vs {kept[1]}"
    )
    return [
        dict(row=f"fp32, 1 image {h}x{w}", ours_s=times["ours"], ref_s=times["ref"],
             mem_ours=mem_ours, mem_ref=mem_ref, note=note),
        dict(row="fp32, text cached", ours_s=times["cached"], ref_s=times["ref"],
             mem_ours=float("nan"), mem_ref=float("nan"), note="text_features= from encode_text"),
    ]  # fmt: skip


def bench_detector(setup: Setup) -> dict:
    """The ``grounding-dino`` detector's ``detect(image, text)`` (FastGroundingDino inside,
    text features cached after the first call, as for every image after the first) against
    what it ran before: processor -> transformers' model -> post-processing."""
    from grounded_sam.detectors.grounding_dino import GroundingDinoDetector

    det = GroundingDinoDetector.from_transformers(
        setup.model, setup.processor, box_threshold=BOX_THRESHOLD, device=setup.device
    )
    image, prompt = photos()["chelsea"], PROMPTS[0]

    @torch.inference_mode()
    def reference() -> dict:
        inputs = _inputs(setup, image, prompt)
        return detections(
            setup.processor, setup.model(**inputs), inputs["input_ids"], image.shape[:2]
        )

    ours, ref = det.detect(image, prompt), reference()
    note = f"kept {len(ours)} vs {len(ref['scores'])}"
    if len(ours) == len(ref["scores"]) and len(ours):
        mine = torch.cat((torch.from_numpy(ours.boxes), torch.from_numpy(ours.scores)[:, None]), 1)
        theirs = torch.cat((ref["boxes"].float(), ref["scores"].float()[:, None]), 1)
        index = match_queries(mine, theirs)  # tied proposals may come out in another order
        box_rel = (mine[index, :4] - theirs[:, :4]).abs() / theirs[:, :4].abs().clamp_min(1.0)
        score = (mine[index, 4] - theirs[:, 4]).abs()
        note += f"; max box diff {float(box_rel.max()):.1e} rel, scores {float(score.max()):.1e}"
    times = setup.medians({"ours": lambda: det.detect(image, prompt), "ref": reference})
    return dict(
        row=f"detector.detect(chelsea, {prompt!r})",
        ours_s=times["ours"],
        ref_s=times["ref"],
        mem_ours=float("nan"),
        mem_ref=float("nan"),
        note=note + "; ours: text cached; both: preprocessing and post-processing included",
    )


@dataclass
class RecallSet:
    """Inputs and our fp32 detections for the recall measurements (photos x prompts)."""

    items: list  # (inputs, image size, fp32 detections)

    @classmethod
    @torch.inference_mode()
    def build(cls, setup: Setup, fast, prompts) -> RecallSet:
        items = []
        for image in photos().values():
            for prompt in prompts:
                inputs = _inputs(setup, image, prompt)
                size = image.shape[:2]
                items.append(
                    (
                        inputs,
                        size,
                        detections(setup.processor, fast(**inputs), inputs["input_ids"], size),
                    )
                )
        return cls(items)

    @torch.inference_mode()
    def recall(self, setup: Setup, run) -> tuple[int, int]:
        """Boxes of ``run(inputs)`` matching our fp32 boxes at IoU >= 0.9 (one-to-one)."""
        matched = total = 0
        for inputs, size, ref in self.items:
            boxes = detections(setup.processor, run(inputs), inputs["input_ids"], size)["boxes"]
            m, t = box_recall(ref["boxes"], boxes)
            matched, total = matched + m, total + t
        return matched, total


@torch.inference_mode()
def noise_control(setup: Setup, fast, recall_set: RecallSet, sigma: float = 1e-3) -> str:
    """Recall of our fp32 model itself when the normalised pixels get N(0, sigma) noise:
    how much of the recall any small perturbation costs on these random weights."""
    gen = torch.Generator().manual_seed(0)

    def noisy(inputs: dict):
        pixels = inputs["pixel_values"]
        noise = torch.randn(pixels.shape, generator=gen).to(pixels.device)
        return fast(**{**inputs, "pixel_values": pixels + sigma * noise})

    matched, total = recall_set.recall(setup, noisy)
    return f"fp32 with {sigma:g} pixel noise (control): {matched / max(total, 1):.3f}"


@torch.inference_mode()
def bench_precision(setup: Setup, mode: str, recall_set: RecallSet, control: str) -> dict:
    from grounded_sam.detectors.gdino_fast import FastGroundingDino

    low = FastGroundingDino.from_hf(setup.model, precision=mode)
    matched, total = recall_set.recall(setup, lambda inputs: low(**inputs))
    inputs = _inputs(setup, photos()["chelsea"], PROMPTS[0])
    times = setup.medians({"mode": lambda: low(**inputs), "ref": lambda: setup.model(**inputs)})
    mem = peak_memory_mib(lambda: low(**inputs), setup.device)
    recall = matched / max(total, 1)
    return dict(
        row=f"{mode}, 1 image",
        ours_s=times["mode"],
        ref_s=times["ref"],
        mem_ours=mem,
        mem_ref=float("nan"),
        note=f"box recall at IoU 0.9 vs our fp32: {recall:.3f} ({matched}/{total} boxes, "
        f"{len(photos())} photos x {len(recall_set.items) // len(photos())} prompts); {control}",
    )


@torch.inference_mode()
def bench_batch(setup: Setup, fast, n: int = 2) -> dict:
    image = photos()["chelsea"]
    images = [image if i % 2 == 0 else np.ascontiguousarray(image[:, ::-1]) for i in range(n)]
    prompt = PROMPTS[0]
    batch = setup.processor(images=images, text=[prompt] * n, return_tensors="pt").to(setup.device)
    singles = [_inputs(setup, im, prompt) for im in images]
    text = fast.encode_text(batch["input_ids"][:1], batch["attention_mask"][:1])
    pixels = {"pixel_values": batch["pixel_values"], "pixel_mask": batch["pixel_mask"]}
    out = fast(**pixels, text_features=text)
    worst = 0.0
    for i, single in enumerate(singles):
        one = fast(single["pixel_values"], pixel_mask=single["pixel_mask"], text_features=text)
        row = type(one)(out.logits[i : i + 1], out.pred_boxes[i : i + 1], one.input_ids)
        worst = max(worst, output_diffs(row, one)["boxes"])
    model = setup.model
    times = setup.medians(
        {
            "ours_batch": lambda: fast(**pixels, text_features=text),
            "ours_single": lambda: [
                fast(s["pixel_values"], pixel_mask=s["pixel_mask"], text_features=text)
                for s in singles
            ],
            "ref_batch": lambda: model(**batch),
            "ref_single": lambda: [model(**s) for s in singles],
        },
        max(1, setup.repeats // 2),
    )
    return dict(
        row=f"batch of {n} (one call vs {n})",
        ours_s=times["ours_batch"],
        ref_s=times["ref_batch"],
        mem_ours=float("nan"),
        mem_ref=float("nan"),
        note=f"one by one: ours {times['ours_single']:.2f} s, transformers "
        f"{times['ref_single']:.2f} s; max |box diff| batch vs single {worst:.1e}",
    )


def grounding_dino_rows(args: argparse.Namespace) -> list[dict]:
    """Benchmark rows as dicts: ``row``, ``ours_s``, ``ref_s`` (seconds), ``mem_ours``,
    ``mem_ref`` (MiB, NaN when not measured), ``note``.

    ``args`` needs ``device`` (str), ``repeats`` (int), ``warmup`` (int) and optionally
    ``precision`` (list of modes), ``detector`` (bool, default True: the detector row),
    ``batch`` (bool, default: not ``quick``), ``quick`` (bool: one prompt for the recall
    set, no batch row) and ``clock`` ("wall",
    default, or "thread": CPU seconds of the calling thread, for one torch thread on CPU);
    the thread count is the caller's.
    """
    from grounded_sam.detectors.gdino_fast import FastGroundingDino

    device = torch.device(args.device)
    modes = getattr(args, "precision", None)
    if modes is None:
        modes = ["int8"] if device.type == "cpu" else ["bf16", "fp16"]
    with tempfile.TemporaryDirectory() as tmp:
        processor = build_processor(Path(tmp))
    clock = getattr(args, "clock", "wall")
    if clock == "thread" and (device.type != "cpu" or torch.get_num_threads() != 1):
        raise ValueError("clock='thread' measures one CPU thread: use device cpu and 1 thread")
    model = build_model(device=device)
    setup = Setup(processor, model, device, args.repeats, args.warmup, clock)
    fast = FastGroundingDino.from_hf(setup.model)
    rows = bench_fp32(setup, fast)
    _progress(rows)
    if getattr(args, "detector", True):
        rows.append(bench_detector(setup))
        _progress(rows[-1:])
    if modes:
        prompts = PROMPTS[:1] if getattr(args, "quick", False) else PROMPTS
        recall_set = RecallSet.build(setup, fast, prompts)
        control = noise_control(setup, fast, recall_set)
    for mode in modes:
        rows.append(bench_precision(setup, mode, recall_set, control))
        _progress(rows[-1:])
    if getattr(args, "batch", not getattr(args, "quick", False)):
        rows.append(bench_batch(setup, fast))
        _progress(rows[-1:])
    return rows


def _progress(rows: list[dict]) -> None:
    for line in format_table(rows).splitlines()[2:]:
        print(line, file=sys.stderr, flush=True)


HEADER = ["row", "ours (s)", "transformers (s)", "ratio", "peak MiB ours / transformers", "notes"]


def format_table(rows: list[dict]) -> str:
    def mib(v: float) -> str:
        return "-" if v != v else ("<1" if v < 1 else f"{v:.0f}")

    lines = ["| " + " | ".join(HEADER) + " |", "|" + "|".join(["---"] * len(HEADER)) + "|"]
    for r in rows:
        cells = [
            r["row"],
            f"{r['ours_s']:.2f}",
            f"{r['ref_s']:.2f}",
            f"{r['ours_s'] / r['ref_s']:.2f}",
            f"{mib(r['mem_ours'])} / {mib(r['mem_ref'])}",
            r["note"],
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _modes(parser: argparse.ArgumentParser, value: str | None, device: torch.device) -> list[str]:
    from grounded_sam.model.precision import PRECISIONS

    if value is None:
        return ["int8"] if device.type == "cpu" else ["bf16", "fp16"]
    if value.strip().lower() == "none":
        return []
    modes = [m.strip() for m in value.split(",") if m.strip()]
    if not modes or any(m not in PRECISIONS or m == "fp32" for m in modes):
        parser.error(f"--precision {value!r}: a comma-separated list of int8, bf16, fp16, or none")
    if "int8" in modes and device.type != "cpu":
        parser.error("--precision int8 runs on CPU only")
    return modes


def main(argv: list[str] | None = None) -> int:
    import run  # lazily: run.py may import this module

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    run.add_common_args(parser)
    parser.add_argument(
        "--repeats", type=int, default=None, help="timed runs per row (default 3; 1 with --quick)"
    )
    parser.add_argument(
        "--precision",
        default=None,
        metavar="MODES",
        help="comma-separated lower-precision modes (default: int8 on CPU, bf16,fp16 on CUDA; "
        "'none' skips them)",
    )
    parser.add_argument(
        "--no-batch",
        dest="batch",
        action="store_false",
        default=None,
        help="skip the batch row (--quick skips it too)",
    )
    parser.add_argument(
        "--no-detector", dest="detector", action="store_false", help="skip the detector row"
    )
    parser.add_argument(
        "--clock",
        choices=("wall", "thread"),
        default="wall",
        help="wall: wall-clock seconds (default); thread: CPU seconds of the one torch thread "
        "(needs --threads 1), stable when other processes load the machine",
    )
    args = parser.parse_args(argv)
    if args.threads is None:
        args.threads = 2
    if args.clock == "thread" and (args.threads != 1 or args.device != "cpu"):
        parser.error("--clock thread needs --threads 1 --device cpu")
    device, args.repeats, args.warmup = run.setup_from_args(
        parser, args, args.repeats or (1 if args.quick else 3)
    )
    args.precision = _modes(parser, args.precision, device)
    if args.batch is None:
        args.batch = not args.quick
    print(run.machine_line(device))
    rows = grounding_dino_rows(args)
    print(format_table(rows))
    print("\n" + run.machine_line(device))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
