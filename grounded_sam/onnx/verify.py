"""Checks of exported files against the PyTorch model they came from, through the two
predictors' public interfaces (:class:`grounded_sam.SamPredictor` and
:class:`grounded_sam.onnx.OnnxSamPredictor`).

:func:`compare` reports how far apart they are:

- the image embeddings (and SAM 2.1's high-resolution features) of the same image;
- the decoders, both given the PyTorch embedding: full-resolution logits, low-resolution
  logits and IoU predictions of point, two-point, box, box + point and point + mask prompts,
  with ``multimask_output`` on and off at the image's size, and on with the embedding's
  original size set to other shapes (portrait, square, tiny, panorama): the crop and resize
  to the original size must be right for every one;
- end to end (each side its own embedding): the fraction of mask pixels that agree.

:func:`mask_iou` measures two exports against each other (int8 against float32).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from grounded_sam.onnx.files import preprocessed_size
from grounded_sam.onnx.predictor import OnnxSam, OnnxSamPredictor
from grounded_sam.predictor import ImageEmbedding, SamPredictor

__all__ = [
    "Prompt",
    "VERIFY_SIZES",
    "compare",
    "default_prompts",
    "mask_iou",
    "rel_diff",
    "verification_image",
]

# Original sizes (H, W) the decoder is checked at besides the image's own: portrait, square,
# tiny, and a wide panorama with odd sides.
VERIFY_SIZES: tuple[tuple[int, int], ...] = ((640, 427), (500, 500), (23, 17), (301, 1001))


def verification_image(height: int = 360, width: int = 480) -> np.ndarray:
    """A deterministic (H, W, 3) uint8 RGB test scene (gradient background, textured discs
    and boxes): structure for the encoder without shipping a photo."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    img = np.stack(
        [40 + 120 * yy / height, 60 + 100 * xx / width, 90 + 60 * (xx + yy) / (height + width)],
        axis=-1,
    )
    shapes = [
        ("disc", 0.35, 0.30, 0.18, (220, 60, 50)),
        ("disc", 0.70, 0.62, 0.22, (40, 180, 70)),
        ("box", 0.15, 0.65, 0.16, (240, 220, 60)),
        ("box", 0.78, 0.20, 0.12, (60, 80, 230)),
    ]
    for kind, cy, cx, r, color in shapes:
        cy, cx, rr = cy * height, cx * width, r * min(height, width)
        if kind == "disc":
            inside = (yy - cy) ** 2 + (xx - cx) ** 2 <= rr**2
        else:
            inside = (abs(yy - cy) <= rr) & (abs(xx - cx) <= 1.4 * rr)
        img[inside] = color
    img += rng.normal(0, 6, img.shape).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class Prompt:
    """One prompt, in fractions of the image's width and height (so it applies to any size):
    ``points`` (P, 2) with ``labels`` (P,), ``box`` (4,) XYXY, and ``with_mask``: also pass
    the best low-res mask the PyTorch model gives for the prompt alone (an interactive
    refinement step)."""

    name: str
    points: tuple[tuple[float, float], ...] | None = None
    labels: tuple[int, ...] | None = None
    box: tuple[float, float, float, float] | None = None
    with_mask: bool = False

    def pixels(self, size: tuple[int, int]) -> dict:
        """``predict`` keyword arguments for an (H, W) image (without ``mask_input``)."""
        h, w = size
        kw: dict = {}
        if self.points is not None:
            kw["point_coords"] = np.asarray(self.points, np.float64) * [w, h]
            kw["point_labels"] = np.asarray(self.labels)
        if self.box is not None:
            kw["box"] = np.asarray(self.box, np.float64) * [w, h, w, h]
        return kw


def default_prompts() -> list[Prompt]:
    """Point, two-point, box, box + point and point + mask prompts (on the objects of
    :func:`verification_image`; any image works)."""
    fg, bg = (0.62, 0.70), (0.30, 0.35)
    box = (0.40, 0.45, 0.90, 0.95)
    return [
        Prompt("point", (fg,), (1,)),
        Prompt("two points", (fg, bg), (1, 0)),
        Prompt("box", box=box),
        Prompt("box+point", (fg,), (1,), box),
        Prompt("point+mask", (fg, bg), (1, 0), with_mask=True),
    ]


def rel_diff(a, b) -> float:
    """max |a - b| / max |a| (0 for two empty arrays)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.size == 0:
        return 0.0
    return float(np.abs(a - b).max() / max(np.abs(a).max(), 1e-12))


def agreement(a, b) -> float:
    """Fraction of pixels on the same side of the 0 logit threshold."""
    return float(np.mean((np.asarray(a) > 0) == (np.asarray(b) > 0)))


def _with_size(emb: ImageEmbedding, size: tuple[int, int], meta: dict) -> ImageEmbedding:
    """``emb``'s features as if they came from an image of ``size`` (for decoder checks)."""
    return ImageEmbedding(emb.features, size, preprocessed_size(*size, meta), emb.high_res)


def _mask_for(p: SamPredictor, prompt: Prompt, size) -> np.ndarray:
    """The best of the PyTorch model's three low-res masks for ``prompt`` alone."""
    _, scores, low = p.predict(**prompt.pixels(size), multimask_output=True)
    return low[int(np.argmax(scores))][None]


def compare(
    model: torch.nn.Module,
    onnx_model: OnnxSam,
    image: np.ndarray | None = None,
    prompts: Sequence[Prompt] | None = None,
    sizes: Sequence[tuple[int, int]] = VERIFY_SIZES,
) -> dict:
    """How far a four-mask export is from ``model`` (see the module docstring).

    Returns a dict: ``encoder_rel_diff`` (max over the encoder outputs), ``logits_rel_diff``
    (max over prompts, sizes and ``multimask_output``, of the full- and low-resolution logits),
    ``iou_abs_diff``, ``mask_agreement`` (min fraction of agreeing mask pixels, same
    embedding), ``end_to_end_agreement`` (min, each side its own embedding), and the image
    size, prompts and sizes checked.
    """
    image = verification_image() if image is None else image
    prompts = default_prompts() if prompts is None else list(prompts)
    size = (int(image.shape[0]), int(image.shape[1]))
    tp, op = SamPredictor(model), OnnxSamPredictor(onnx_model)
    t_emb = tp.embed([image])[0]
    o_emb = op.embed([image])[0]
    enc = max(
        rel_diff(a.cpu().numpy(), b.numpy())
        for a, b in zip(
            (t_emb.features, *t_emb.high_res), (o_emb.features, *o_emb.high_res), strict=True
        )
    )
    logits = iou_diff = 0.0
    agree = e2e = 1.0
    meta = onnx_model.metadata
    for s in [size, *sizes]:
        emb = _with_size(t_emb, s, meta)
        tp.set_embedding(emb)
        op.set_embedding(emb)
        for prompt in prompts:
            kw = prompt.pixels(s)
            if prompt.with_mask:
                kw["mask_input"] = _mask_for(tp, prompt, s)
            for multi in (True, False) if s == size else (True,):
                tm, ti, tl = tp.predict(**kw, multimask_output=multi, return_logits=True)
                om, oi, ol = op.predict(**kw, multimask_output=multi, return_logits=True)
                logits = max(logits, rel_diff(tm, om), rel_diff(tl, ol))
                iou_diff = max(iou_diff, float(np.abs(ti - oi).max()))
                agree = min(agree, agreement(tm, om))
    tp.set_embedding(t_emb)
    op.set_embedding(o_emb)
    for prompt in prompts:
        kw = prompt.pixels(size)
        if prompt.with_mask:
            kw["mask_input"] = _mask_for(tp, prompt, size)
        for multi in (True, False):
            tm, _, _ = tp.predict(**kw, multimask_output=multi, return_logits=True)
            om, _, _ = op.predict(**kw, multimask_output=multi, return_logits=True)
            e2e = min(e2e, agreement(tm, om))
    return {
        "encoder_rel_diff": enc,
        "logits_rel_diff": logits,
        "iou_abs_diff": iou_diff,
        "mask_agreement": agree,
        "end_to_end_agreement": e2e,
        "image_size": list(size),
        "prompts": [p.name for p in prompts],
        "sizes": [list(s) for s in sizes],
    }


def mask_iou(
    reference: OnnxSam,
    other: OnnxSam,
    image: np.ndarray | None = None,
    prompts: Sequence[Prompt] | None = None,
) -> dict:
    """IoU of ``other``'s masks against ``reference``'s, end to end, for every prompt's three
    multimask and one single-mask outputs (the mask prompt taken from ``reference``; masks
    empty in both skipped): ``{"mean": ..., "min": ..., "n": ...}``."""
    image = verification_image() if image is None else image
    prompts = default_prompts() if prompts is None else list(prompts)
    size = image.shape[:2]
    ref, oth = OnnxSamPredictor(reference), OnnxSamPredictor(other)
    ref.set_image(image)
    oth.set_image(image)
    ious = []
    for prompt in prompts:
        kw = prompt.pixels(size)
        if prompt.with_mask:
            _, scores, low = ref.predict(**kw, multimask_output=True)
            kw["mask_input"] = low[int(np.argmax(scores))][None]
        for multi in (True, False):
            a, _, _ = ref.predict(**kw, multimask_output=multi)
            b, _, _ = oth.predict(**kw, multimask_output=multi)
            for ma, mb in zip(a, b, strict=True):
                union = np.logical_or(ma, mb).sum()
                if union:
                    ious.append(float(np.logical_and(ma, mb).sum() / union))
    return {
        "mean": float(np.mean(ious)) if ious else 1.0,
        "min": float(np.min(ious)) if ious else 1.0,
        "n": len(ious),
    }
