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

A ``--single-mask`` export (one mask per prompt, chosen inside the graph) is held to the same
figures against PyTorch's single-mask output with the export's semantics
(:func:`compare_single_mask`).

:func:`mask_iou` measures two exports against each other (int8 against float32).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from grounded_sam.onnx.files import decoder_prompt, preprocessed_size
from grounded_sam.onnx.predictor import OnnxSam, OnnxSamPredictor
from grounded_sam.predictor import ImageEmbedding, SamPredictor

__all__ = [
    "Prompt",
    "VERIFY_SIZES",
    "compare",
    "compare_single_mask",
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
    """How far an export is from ``model`` (see the module docstring); a single-mask export
    goes to :func:`compare_single_mask`.

    Returns a dict: ``encoder_rel_diff`` (max over the encoder outputs), ``logits_rel_diff``
    (max over prompts, sizes and ``multimask_output``, of the full- and low-resolution logits),
    ``iou_abs_diff``, ``mask_agreement`` (min fraction of agreeing mask pixels, same
    embedding), ``end_to_end_agreement`` (min, each side its own embedding), and the image
    size, prompts and sizes checked.
    """
    if onnx_model.num_masks == 1:
        return compare_single_mask(model, onnx_model, image, prompts, sizes)
    image = verification_image() if image is None else image
    prompts = default_prompts() if prompts is None else list(prompts)
    size = (int(image.shape[0]), int(image.shape[1]))
    tp, op = SamPredictor(model), OnnxSamPredictor(onnx_model)
    t_emb = tp.embed([image])[0]
    o_emb = op.embed([image])[0]
    enc = _encoder_diff(t_emb, o_emb)
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
    return _report(enc, logits, iou_diff, agree, e2e, size, prompts, sizes)


# A single-mask decoder picks its mask inside the graph; where PyTorch's choice is a near-tie
# (scores this close, SAM 2.1's stability this close to its threshold), float rounding may
# tip the file to the other candidate, which is then as right.
_SCORE_TIE = 1e-4
_STABILITY_TIE = 1e-3


def _np(t) -> np.ndarray:
    if isinstance(t, torch.Tensor):
        return t.detach().to("cpu", torch.float32).contiguous().numpy()
    return np.ascontiguousarray(t, dtype=np.float32)


def _onnx_decode(
    onnx_model: OnnxSam, emb: ImageEmbedding, kw: dict, mask_input: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """One decoder call with ``predict``'s pixel prompt ``kw`` on ``emb``, fed as
    :class:`OnnxSamPredictor` feeds it: masks (C, H, W) logits, iou (C,), low_res
    (C, 256, 256), and N, the number of points the decoder saw (padding and box corners
    included)."""
    orig, inp = tuple(emb.original_size), tuple(emb.input_size)
    coords, box = kw.get("point_coords"), kw.get("box")
    pc, pl = decoder_prompt(
        onnx_model.family,
        None if coords is None else onnx_model.transform_coords(coords, orig, inp),
        kw.get("point_labels"),
        None if box is None else onnx_model.transform_coords(box.reshape(2, 2), orig, inp),
    )
    masks, iou, low = onnx_model.decode(
        _np(emb.features),
        tuple(_np(t) for t in emb.high_res),
        pc,
        pl,
        None if mask_input is None else _np(mask_input).reshape(1, 1, *mask_input.shape[-2:]),
        orig,
    )
    return masks[0], iou[0], low[0], int(pc.shape[1])


def _onnx_embedding(onnx_model: OnnxSam, image: np.ndarray) -> ImageEmbedding:
    """The exported encoder's embedding of ``image``."""
    x, input_size = onnx_model.prepare_image(image)
    emb, high_res = onnx_model.encode(x)
    size = (int(image.shape[0]), int(image.shape[1]))
    return ImageEmbedding(
        torch.from_numpy(emb), size, input_size, tuple(torch.from_numpy(t) for t in high_res)
    )


@contextlib.contextmanager
def _raw_single_token(model: torch.nn.Module) -> Iterator[None]:
    """SAM 2.1: ``multimask_output=False`` gives the single-mask token itself (its stability
    fallback off meanwhile, restored after)."""
    flag = getattr(model, "dynamic_multimask_via_stability", None)
    if not flag:
        yield
        return
    model.dynamic_multimask_via_stability = False
    try:
        yield
    finally:
        model.dynamic_multimask_via_stability = flag


def _stability(low_res: np.ndarray, delta: float) -> float:
    """IoU of a low-res logit map thresholded at +delta and -delta (1 if both are empty), as
    SAM 2's ``dynamic_multimask_via_stability``."""
    inter = np.count_nonzero(low_res > delta)
    union = np.count_nonzero(low_res > -delta)
    return float(np.float32(inter) / np.float32(union)) if union else 1.0


def single_mask_candidates(
    model: torch.nn.Module, tp: SamPredictor, kw: dict, num_points: int
) -> tuple[tuple[np.ndarray, np.ndarray, np.ndarray], list[int]]:
    """PyTorch's four outputs for one prompt and which of them is the single-mask output.

    The rule is the export's (Meta's ``--return-single-mask``): SAM 1 / MobileSAM, Meta's
    ``SamOnnxModel.select_masks``: the single-mask token (0) when the decoder sees more than
    two points (``num_points``, padding and box corners included), else the multimask output
    (1..3) with the highest predicted IoU; SAM 2.1, its model's single-mask output: token 0
    unless its low-res logits are unstable (``dynamic_multimask_via_stability``), then the
    multimask output with the highest predicted IoU.

    Returns:
        ((masks (4, H, W), iou (4,), low_res (4, 256, 256)) in the four-mask file's order,
        the indices of the acceptable choices: the rule's first, then any near-tie).
    """
    with _raw_single_token(model):
        m0, i0, l0 = tp.predict(**kw, multimask_output=False, return_logits=True)
    mm, im, lm = tp.predict(**kw, multimask_output=True, return_logits=True)
    four = (np.concatenate([m0, mm]), np.concatenate([i0, im]), np.concatenate([l0, lm]))
    iou = four[1].astype(np.float64)
    if model.family != "sam2":
        score = iou + (num_points - 2.5) * np.array([1000.0, 0.0, 0.0, 0.0])
        best = int(np.argmax(score))
        tol = _SCORE_TIE * max(1.0, abs(score[best]))
        return four, [best] + [j for j in range(4) if j != best and score[j] >= score[best] - tol]
    dec = model.sam_mask_decoder
    if not getattr(dec, "dynamic_multimask_via_stability", False):
        return four, [0]
    best = 1 + int(np.argmax(iou[1:]))
    stability = _stability(four[2][0], float(dec.dynamic_multimask_stability_delta))
    thresh = float(dec.dynamic_multimask_stability_thresh)
    choice = 0 if stability >= thresh else best
    near = [j for j in range(1, 4) if iou[j] >= iou[best] - _SCORE_TIE]
    if abs(stability - thresh) <= _STABILITY_TIE:
        near.append(0)
    elif choice == 0:
        near = []
    return four, [choice] + [j for j in near if j != choice]


def compare_single_mask(
    model: torch.nn.Module,
    onnx_model: OnnxSam,
    image: np.ndarray | None = None,
    prompts: Sequence[Prompt] | None = None,
    sizes: Sequence[tuple[int, int]] = VERIFY_SIZES,
) -> dict:
    """How far a single-mask export (``--single-mask``) is from ``model``.

    The exported decoder runs in onnxruntime on the same inputs as :func:`compare` feeds
    (every prompt, at the image's size and each of ``sizes``, on the PyTorch embedding; then
    end to end on each side's own embedding); the reference is the PyTorch output the export's
    single-mask rule picks (:func:`single_mask_candidates`).

    Returns:
        the figures of :func:`compare` (``logits_rel_diff`` etc. of the one mask), plus
        ``single_mask: True``.
    """
    image = verification_image() if image is None else image
    prompts = default_prompts() if prompts is None else list(prompts)
    size = (int(image.shape[0]), int(image.shape[1]))
    tp = SamPredictor(model)
    t_emb = tp.embed([image])[0]
    o_emb = _onnx_embedding(onnx_model, image)
    enc = _encoder_diff(t_emb, o_emb)
    logits = iou_diff = 0.0
    agree = e2e = 1.0
    meta = onnx_model.metadata

    def closest(kw, mask, emb_for_onnx):
        om, oi, ol, n = _onnx_decode(onnx_model, emb_for_onnx, kw, mask)
        t_kw = kw if mask is None else dict(kw, mask_input=mask)
        (tm, ti, tl), ok = single_mask_candidates(model, tp, t_kw, n)
        # the acceptable candidate the file's output is nearest to
        k = min(ok, key=lambda j: max(rel_diff(tm[j], om[0]), rel_diff(tl[j], ol[0])))
        return (tm[k], ti[k], tl[k]), (om[0], oi[0], ol[0])

    for s in [size, *sizes]:
        emb = _with_size(t_emb, s, meta)
        tp.set_embedding(emb)
        for prompt in prompts:
            kw = prompt.pixels(s)
            mask = _mask_for(tp, prompt, s) if prompt.with_mask else None
            (tm, ti, tl), (om, oi, ol) = closest(kw, mask, emb)
            logits = max(logits, rel_diff(tm, om), rel_diff(tl, ol))
            iou_diff = max(iou_diff, float(np.abs(np.float64(ti) - np.float64(oi))))
            agree = min(agree, agreement(tm, om))
    tp.set_embedding(t_emb)
    for prompt in prompts:
        kw = prompt.pixels(size)
        mask = _mask_for(tp, prompt, size) if prompt.with_mask else None
        (tm, _, _), (om, _, _) = closest(kw, mask, o_emb)
        e2e = min(e2e, agreement(tm, om))
    return {**_report(enc, logits, iou_diff, agree, e2e, size, prompts, sizes), "single_mask": True}


def _encoder_diff(ours, onnx) -> float:
    """Largest relative difference over the embedding and the high-res features."""
    return max(
        rel_diff(a.cpu().numpy(), b.numpy())
        for a, b in zip(
            (ours.features, *ours.high_res), (onnx.features, *onnx.high_res), strict=True
        )
    )


def _report(enc, logits, iou_diff, agree, e2e, size, prompts, sizes) -> dict:
    """The figures :func:`compare` returns (see its docstring)."""
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
    multimask and one single-mask outputs (a single-mask export: its one mask; the mask
    prompt taken from ``reference``; masks empty in both skipped):
    ``{"mean": ..., "min": ..., "n": ...}``."""
    image = verification_image() if image is None else image
    prompts = default_prompts() if prompts is None else list(prompts)
    size = image.shape[:2]
    if reference.num_masks == 1 or other.num_masks == 1:
        return _single_mask_iou(reference, other, image, prompts)
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
    return _iou_figures(ious)


def _iou_figures(ious: list[float]) -> dict:
    return {
        "mean": float(np.mean(ious)) if ious else 1.0,
        "min": float(np.min(ious)) if ious else 1.0,
        "n": len(ious),
    }


def _single_mask_iou(reference: OnnxSam, other: OnnxSam, image, prompts) -> dict:
    """:func:`mask_iou` of two single-mask exports: one mask per prompt (OnnxSamPredictor
    does not run them: the decoder is called directly, as the predictor would feed it)."""
    if reference.num_masks != other.num_masks:
        raise ValueError("mask_iou compares two exports with the same number of masks")
    ref_emb, oth_emb = _onnx_embedding(reference, image), _onnx_embedding(other, image)
    threshold = reference.mask_threshold
    ious = []
    for prompt in prompts:
        kw = prompt.pixels(image.shape[:2])
        mask = None
        if prompt.with_mask:  # the reference's own answer to the prompt alone
            mask = _onnx_decode(reference, ref_emb, kw, None)[2]
        a = _onnx_decode(reference, ref_emb, kw, mask)[0] > threshold
        b = _onnx_decode(other, oth_emb, kw, mask)[0] > threshold
        for ma, mb in zip(a, b, strict=True):
            union = np.logical_or(ma, mb).sum()
            if union:
                ious.append(float(np.logical_and(ma, mb).sum() / union))
    return _iou_figures(ious)
