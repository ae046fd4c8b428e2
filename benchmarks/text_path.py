"""Speed of the text path on identical (random) weights, ours against the reference pipelines.

Rows (each a :class:`run.Row`):

* ``yolo-clip detector``: our ``yolo-clip`` detector against ultralytics' FastSAM text prompt
  (``FastSAMPredictor.prompt(results, texts=...)``: YOLO-seg proposals, masked crops, CLIP) with
  the same YOLOv8s-seg-shaped (FastSAM-s) proposer and the same ViT-B-32 CLIP weights, handed
  to ultralytics as its ``predictor.clip`` (its own loader downloads OpenAI weights, which this
  machine cannot). FastSAM keeps the best mask per text while ours returns every matching
  instance; the work (proposals + one CLIP pass over the crops) is the same.
* ``segment end to end``: ``GroundedSAM.segment(image, "a cat. a dog.")`` with grounding-dino
  + mobile_sam against a LangSAM-style reference (transformers' ``GroundingDinoForObjectDetection``
  with its processor's post-processing, then Meta's ``SamPredictor`` on MobileSAM weights with
  all boxes in one ``predict_torch`` call), on a Grounding-DINO-tiny-shaped random model; the
  reference's boxes are clipped to the image as ours are.

Run: ``python benchmarks/text_path.py --threads 2`` (``--quick`` for one timed run per row).
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
import types
from pathlib import Path

import numpy as np
import torch
from _common import interleaved_medians, peak_memory_mib
from run import Row, add_common_args, format_table, machine_line, setup_from_args

TEXT = "a cat. a dog."


# ------------------------------------------------------------------ yolo-clip vs FastSAM
class _OpenClipForUltralytics:
    """An open_clip model dressed as ``ultralytics.nn.text_model.CLIP`` (what FastSAM's text
    prompt calls): ``image_preprocess``, ``encode_image``, ``encode_text``, ``tokenize``.
    Features are normalised as ultralytics' wrapper does."""

    def __init__(self, model, preprocess, tokenizer, device) -> None:
        self.model, self.image_preprocess, self._tok, self.device = (
            model,
            preprocess,
            tokenizer,
            device,
        )

    def tokenize(self, texts):
        return self._tok(list(texts)).to(self.device)

    @torch.no_grad()
    def encode_image(self, images):
        f = self.model.encode_image(images).float()
        return f / f.norm(dim=-1, keepdim=True)

    @torch.no_grad()
    def encode_text(self, tokens):
        f = self.model.encode_text(tokens).float()
        return f / f.norm(dim=-1, keepdim=True)


def yolo_clip_row(device: torch.device, repeats: int, warmup: int, tmp: Path) -> Row:
    import open_clip
    from skimage.data import chelsea

    from grounded_sam.detectors import build_detector
    from grounded_sam.detectors.yolo_clip import _import_ultralytics
    from grounded_sam.testing.detectors import make_clip_state_dict, make_yolo_seg_pt

    image = chelsea()
    yolo = make_yolo_seg_pt(tmp / "FastSAM-s-random.pt", cfg="yolov8s-seg.yaml")
    clip_sd = make_clip_state_dict(tmp / "clip-vit-b-32.pt", model="ViT-B-32")
    # ultralytics' defaults for FastSAM (max_det 300: the random proposer's most confident
    # boxes have empty masks, which ultralytics drops)
    knobs = dict(conf=0.25, iou=0.7, imgsz=640, max_det=300)
    ours = build_detector(
        "yolo-clip",
        yolo=yolo,
        clip="ViT-B-32",
        clip_pretrained=clip_sd,
        score_threshold=0.0,
        device=device,
        **knobs,
    )

    fastsam = _import_ultralytics().FastSAM(str(yolo))
    net, _, preprocess = open_clip.create_model_and_transforms("ViT-B-32", pretrained=str(clip_sd))
    clip = _OpenClipForUltralytics(
        net.to(device).eval(), preprocess, open_clip.get_tokenizer("ViT-B-32"), device
    )
    bgr = np.ascontiguousarray(image[:, :, ::-1])
    texts = ["a cat", "a dog"]
    # FastSAM's text prompt imports ultralytics.nn.text_model, which imports OpenAI's `clip`
    # package at module level (to download weights we replace anyway); it is not needed here.
    if importlib.util.find_spec("clip") is None:
        sys.modules.setdefault("clip", types.ModuleType("clip"))

    from grounded_sam.detectors.yolo_clip import _keep_torch_threads

    threads = torch.get_num_threads()

    def reference():
        # ultralytics' select_device sets torch's thread count to 1 on a 2-core machine: both
        # sides run CLIP with the same threads
        with _keep_torch_threads():
            results = fastsam(bgr, retina_masks=True, verbose=False, device=device.type, **knobs)
            torch.set_num_threads(threads)
            predictor = fastsam.predictor
            predictor.clip = clip  # FastSAM's CLIP slot, filled with the same weights
            return predictor.prompt(results, texts=texts)

    def run_ours():
        return ours.detect(image, texts)

    times = interleaved_medians({"ours": run_ours, "ref": reference}, device, repeats, warmup)
    n_ours = len(run_ours())
    return Row(
        "yolo-clip detector (vs FastSAM text prompt)",
        times["ours"],
        times["ref"],
        float("nan"),  # outputs differ by design (FastSAM: best mask per text)
        peak_memory_mib(run_ours, device),
        peak_memory_mib(reference, device),
        note=f"same proposer and CLIP weights; ours keeps {n_ours} matching instances",
    )


# ------------------------------------------------------------------ segment end to end
def segment_row(device: torch.device, repeats: int, warmup: int, tmp: Path) -> Row:
    """``GroundedSAM.segment`` (grounding-dino + mobile_sam) against a LangSAM-style pipeline
    (transformers' Grounding DINO + Meta's SamPredictor on the same MobileSAM weights); each
    call does the whole work (our embedding cache is cleared between calls)."""
    from grounding_dino import BOX_THRESHOLD, TEXT_THRESHOLD, build_model, build_processor
    from segment_anything import SamPredictor as MetaPredictor
    from skimage.data import chelsea

    from grounded_sam import GroundedSAM
    from grounded_sam.testing import sam_refs

    image = chelsea()
    gdino_dir = tmp / "gdino-tiny-shaped"
    processor, hf = build_processor(tmp), build_model(device=device)
    hf.save_pretrained(gdino_dir)
    processor.save_pretrained(gdino_dir)
    meta = sam_refs.meta_mobile_sam(seed=5).to(device).eval()
    ckpt = sam_refs.save_checkpoint(meta, tmp / "mobile_sam.pt")
    ours = GroundedSAM(
        "grounding-dino",
        "mobile_sam",
        sam_checkpoint=ckpt,
        device=device,
        model=gdino_dir,
        box_threshold=BOX_THRESHOLD,
        text_threshold=TEXT_THRESHOLD,
    )
    meta_predictor = MetaPredictor(meta)
    box_kw = (
        "threshold"
        if "threshold"
        in __import__("inspect")
        .signature(processor.post_process_grounded_object_detection)
        .parameters
        else "box_threshold"
    )

    def run_ours():
        ours.clear_cache()
        return ours.segment(image, TEXT)

    @torch.no_grad()
    def reference():
        inputs = processor(images=image, text=TEXT, return_tensors="pt").to(device)
        out = hf(**inputs)
        det = processor.post_process_grounded_object_detection(
            out,
            inputs["input_ids"],
            **{box_kw: BOX_THRESHOLD},
            text_threshold=TEXT_THRESHOLD,
            target_sizes=[image.shape[:2]],
        )[0]
        # clipped to the image as our pipeline does before prompting SAM (random weights put
        # many boxes partly outside it)
        h, w = image.shape[:2]
        det["boxes"][:, 0::2] = det["boxes"][:, 0::2].clamp(0, w)
        det["boxes"][:, 1::2] = det["boxes"][:, 1::2].clamp(0, h)
        meta_predictor.set_image(image)
        if len(det["boxes"]) == 0:
            return det, None
        boxes = meta_predictor.transform.apply_boxes_torch(det["boxes"], image.shape[:2])
        masks, iou, _ = meta_predictor.predict_torch(None, None, boxes, multimask_output=False)
        return det, masks

    result = run_ours()
    det, masks = reference()
    n_ref = len(det["boxes"])
    agree = float("nan")
    if len(result) == n_ref and n_ref:
        # pair each reference instance with our nearest box (the two sort tied scores
        # differently), then compare boxes and masks pair by pair
        ref_boxes = det["boxes"].float().cpu().numpy()
        cost = np.abs(ref_boxes[:, None, :] - result.boxes[None, :, :]).sum(-1)
        pair = cost.argmin(1)
        box_diff = float(
            np.abs(result.boxes[pair] - ref_boxes).max() / max(np.abs(ref_boxes).max(), 1)
        )
        agree = float((result.masks[pair] == masks[:, 0].cpu().numpy()).mean())
    times = interleaved_medians({"ours": run_ours, "ref": reference}, device, repeats, warmup)
    return Row(
        "segment(image, 'a cat. a dog.') end to end (vs LangSAM-style)",
        times["ours"],
        times["ref"],
        box_diff if n_ref and len(result) == n_ref else float("nan"),
        peak_memory_mib(run_ours, device),
        peak_memory_mib(reference, device),
        note=f"{len(result)} vs {n_ref} instances, masks agree {100 * agree:.4f}%",
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_args(parser)
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per row")
    args = parser.parse_args(argv)
    device, repeats, warmup = setup_from_args(parser, args, args.repeats)
    print(machine_line(device))
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as tmp:
        for build in (segment_row, yolo_clip_row):
            rows.append(build(device, repeats, warmup, Path(tmp)))
            print(format_table(rows[-1:]).splitlines()[-1], file=sys.stderr, flush=True)
    print(format_table(rows))
    print("\n" + machine_line(device))
    return 0


if __name__ == "__main__":
    sys.exit(main())
