"""``AutomaticMaskGenerator``: "segment everything", a drop-in for Meta's
``segment_anything.SamAutomaticMaskGenerator`` (same knobs, semantics and output records),
and for SAM 2.1 models of ``sam2.SAM2AutomaticMaskGenerator`` (its defaults and options).

A regular grid of single-point prompts over the image (and optionally over a pyramid of
overlapping crops) is decoded into 3 candidate masks per point; candidates are filtered
by predicted IoU, stability score and contact with crop edges, then de-duplicated by box
NMS within each crop and across crops (preferring smaller crops).

Where the time goes, and what this implementation does differently (the surviving masks
are the same; only the work is):

* Meta upsamples every candidate to full resolution before filtering. Here the
  predicted-IoU filter runs on the low-res decoder output first, and only its survivors
  are upsampled (and only the rows/columns of SAM's 1024x1024 intermediate that the
  un-padded crop keeps: bit-identical values, see :meth:`grounded_sam.model.sam.Sam.postprocess_masks`).
* Survivors are kept as 256x256 low-res logits, not full-resolution RLEs; the full-res
  masks of the final survivors are rebuilt once, after all NMS.
* Boxes, stability scores and RLEs are computed for whole batches with tensor ops;
  COCO RLE is encoded by pycocotools in C.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from numbers import Integral, Real
from typing import Any

import numpy as np
import torch
from torchvision.ops import batched_nms, box_area

from grounded_sam import _amg
from grounded_sam.errors import InputError
from grounded_sam.io import ImageLike, load_image
from grounded_sam.masks import encode_rle
from grounded_sam.model.sam import SamBase
from grounded_sam.predictor import SamPredictor

__all__ = ["AutomaticMaskGenerator"]

OUTPUT_MODES = ("binary_mask", "uncompressed_rle", "coco_rle")
_UPSCALE_BUDGET = 256 * 1024 * 1024  # bytes of float32 logits upsampled at once
# Meta's defaults where its two generators differ, by model family: SAM 1 / MobileSAM
# (``SamAutomaticMaskGenerator``) and SAM 2.1 (``SAM2AutomaticMaskGenerator``).
FAMILY_DEFAULTS: dict[str, dict[str, float]] = {
    "sam": {"pred_iou_thresh": 0.88},
    "sam2": {"pred_iou_thresh": 0.8},
}


def _check_int(value: object, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise InputError(
            f"{name} must be an int >= {minimum}, got {value!r} ({type(value).__name__})"
        )
    if value < minimum:
        raise InputError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def _check_real(
    value: object,
    name: str,
    lo: float | None = None,
    hi: float | None = None,
    hi_open: bool = False,
) -> float:
    if isinstance(value, bool) or not isinstance(value, Real):
        raise InputError(f"{name} must be a number, got {value!r} ({type(value).__name__})")
    v = float(value)
    if not math.isfinite(v):
        raise InputError(f"{name} must be finite, got {value}")
    too_high = hi is not None and (v >= hi if hi_open else v > hi)
    if (lo is not None and v < lo) or too_high:
        if hi is None:
            raise InputError(f"{name} must be >= {lo}, got {value}")
        rng = f"[{lo}, {hi})" if hi_open else f"[{lo}, {hi}]"
        raise InputError(f"{name} must be in {rng}, got {value}")
    return v


class AutomaticMaskGenerator:
    """Generate masks for everything in an image from a grid of point prompts.

    Args:
        model: a :class:`~grounded_sam.model.sam.Sam` (any variant) or a
            :class:`~grounded_sam.SamPredictor` (whose current image is replaced by
            :meth:`generate`).
        points_per_side: points along each side of the grid (``points_per_side**2`` points
            per crop layer 0); ``None`` when ``point_grids`` is given.
        points_per_batch: points decoded together (memory vs speed; no effect on results).
        pred_iou_thresh: keep masks whose predicted IoU is ``>`` this, in [0, 1] (0 disables);
            ``None``: the model family's default (:data:`FAMILY_DEFAULTS`: 0.88 for SAM 1 and
            MobileSAM, 0.8 for SAM 2.1, as Meta's two generators).
        stability_score_thresh: keep masks whose stability score is ``>=`` this, in [0, 1]
            (0 disables).
        stability_score_offset: the stability score is the IoU of the masks at
            ``mask_threshold +- offset``; >= 0.
        box_nms_thresh: box IoU above which NMS drops duplicates within a crop, in [0, 1].
        crop_n_layers: extra crop layers; layer ``i`` has ``(2**i)**2`` crops.
        crop_nms_thresh: box IoU for NMS across crops, in [0, 1].
        crop_overlap_ratio: crop overlap as a fraction of the short image side (layer 1), in
            [0, 1).
        crop_n_points_downscale_factor: layer ``i`` uses ``points_per_side / factor**i``
            points per side; >= 1.
        point_grids: explicit grids, one ``(N, 2)`` array of xy in [0, 1] per crop layer.
        min_mask_region_area: if > 0, fill holes and drop islands smaller than this many
            pixels (OpenCV), then re-run NMS.
        output_mode: ``"binary_mask"`` ((H, W) bool arrays), ``"uncompressed_rle"`` or
            ``"coco_rle"`` (pycocotools, JSON-ready).
        mask_threshold: logit threshold binarising masks (SAM uses 0.0). Keyword-only.
        multimask_output: decode 3 candidate masks per point (default) or 1. Keyword-only.
        use_m2m: SAM 2's "mask to mask" refinement: each candidate is decoded once more with
            its own low-res logits as ``mask_input`` (single-mask output) before filtering, as
            ``SAM2AutomaticMaskGenerator(use_m2m=True)``. Any family. Keyword-only.
    """

    def __init__(
        self,
        model: Any,
        points_per_side: int | None = 32,
        points_per_batch: int = 64,
        pred_iou_thresh: float | None = None,
        stability_score_thresh: float = 0.95,
        stability_score_offset: float = 1.0,
        box_nms_thresh: float = 0.7,
        crop_n_layers: int = 0,
        crop_nms_thresh: float = 0.7,
        crop_overlap_ratio: float = 512 / 1500,
        crop_n_points_downscale_factor: int = 1,
        point_grids: list[np.ndarray] | None = None,
        min_mask_region_area: float = 0,
        output_mode: str = "binary_mask",
        *,
        mask_threshold: float = 0.0,
        multimask_output: bool = True,
        use_m2m: bool = False,
    ) -> None:
        if isinstance(model, SamPredictor):
            predictor = model
        elif isinstance(model, SamBase):
            predictor = SamPredictor(model)
        else:
            raise TypeError(
                "model must be a Sam (from grounded_sam.build_sam) or a SamPredictor, "
                f"got {type(model).__name__}"
            )
        if pred_iou_thresh is None:
            family = FAMILY_DEFAULTS.get(predictor.model.family, FAMILY_DEFAULTS["sam"])
            pred_iou_thresh = family["pred_iou_thresh"]
        self._set_knobs(
            points_per_side=points_per_side,
            points_per_batch=points_per_batch,
            pred_iou_thresh=pred_iou_thresh,
            stability_score_thresh=stability_score_thresh,
            stability_score_offset=stability_score_offset,
            box_nms_thresh=box_nms_thresh,
            crop_n_layers=crop_n_layers,
            crop_nms_thresh=crop_nms_thresh,
            crop_overlap_ratio=crop_overlap_ratio,
            crop_n_points_downscale_factor=crop_n_points_downscale_factor,
            point_grids=point_grids,
            min_mask_region_area=min_mask_region_area,
            output_mode=output_mode,
            mask_threshold=mask_threshold,
            multimask_output=multimask_output,
            use_m2m=use_m2m,
        )
        self.predictor = predictor

    @classmethod
    def validate_knobs(cls, **knobs: Any) -> None:
        """Check constructor knobs (keyword arguments other than ``model``) without a model:
        raises the same ``InputError`` as the constructor."""
        # The constructor's signature is the one place the defaults live.
        bound = inspect.signature(cls.__init__).bind(None, None, **knobs)
        bound.apply_defaults()
        args = dict(bound.arguments)
        del args["self"], args["model"]
        if args["pred_iou_thresh"] is None:  # the family default: valid for every family
            args["pred_iou_thresh"] = FAMILY_DEFAULTS["sam"]["pred_iou_thresh"]
        cls.__new__(cls)._set_knobs(**args)

    def _set_knobs(
        self,
        *,
        points_per_side: int | None,
        points_per_batch: int,
        pred_iou_thresh: float,
        stability_score_thresh: float,
        stability_score_offset: float,
        box_nms_thresh: float,
        crop_n_layers: int,
        crop_nms_thresh: float,
        crop_overlap_ratio: float,
        crop_n_points_downscale_factor: int,
        point_grids: list[np.ndarray] | None,
        min_mask_region_area: float,
        output_mode: str,
        mask_threshold: float,
        multimask_output: bool,
        use_m2m: bool,
    ) -> None:
        for flag, value in (("multimask_output", multimask_output), ("use_m2m", use_m2m)):
            if not isinstance(value, bool):
                raise InputError(f"{flag} must be True or False, got {value!r}")
        self.multimask_output = multimask_output
        self.use_m2m = use_m2m
        self.points_per_batch = _check_int(points_per_batch, "points_per_batch", 1)
        self.pred_iou_thresh = _check_real(pred_iou_thresh, "pred_iou_thresh", 0.0, 1.0)
        self.stability_score_thresh = _check_real(
            stability_score_thresh, "stability_score_thresh", 0.0, 1.0
        )
        self.stability_score_offset = _check_real(
            stability_score_offset, "stability_score_offset", 0.0
        )
        self.mask_threshold = _check_real(mask_threshold, "mask_threshold")
        self.box_nms_thresh = _check_real(box_nms_thresh, "box_nms_thresh", 0.0, 1.0)
        self.crop_n_layers = _check_int(crop_n_layers, "crop_n_layers", 0)
        self.crop_nms_thresh = _check_real(crop_nms_thresh, "crop_nms_thresh", 0.0, 1.0)
        self.crop_overlap_ratio = _check_real(
            crop_overlap_ratio, "crop_overlap_ratio", 0.0, 1.0, hi_open=True
        )
        self.crop_n_points_downscale_factor = _check_int(
            crop_n_points_downscale_factor, "crop_n_points_downscale_factor", 1
        )
        self.min_mask_region_area = _check_real(min_mask_region_area, "min_mask_region_area", 0.0)
        if output_mode not in OUTPUT_MODES:
            raise InputError(
                f"output_mode must be one of {list(OUTPUT_MODES)}, got {output_mode!r}"
            )
        self.output_mode = output_mode

        if (points_per_side is None) == (point_grids is None):
            raise InputError(
                "give exactly one of points_per_side or point_grids (set points_per_side=None "
                f"to use point_grids); got points_per_side={points_per_side!r} and "
                f"point_grids={'None' if point_grids is None else 'a list'}"
            )
        if points_per_side is not None:
            self.points_per_side: int | None = _check_int(points_per_side, "points_per_side", 1)
            for i in range(self.crop_n_layers + 1):
                if int(points_per_side / self.crop_n_points_downscale_factor**i) < 1:
                    raise InputError(
                        f"crop_n_points_downscale_factor={crop_n_points_downscale_factor} leaves crop "
                        f"layer {i} with no points (points_per_side={points_per_side}); lower it or "
                        "crop_n_layers"
                    )
            self.point_grids = _amg.build_all_layer_point_grids(
                self.points_per_side, self.crop_n_layers, self.crop_n_points_downscale_factor
            )
        else:
            self.points_per_side = None
            self.point_grids = self._check_point_grids(point_grids)
        if self.min_mask_region_area > 0:
            import cv2  # noqa: F401  (fail at construction, not mid-run)
        if output_mode == "coco_rle":
            import pycocotools  # noqa: F401

    def _check_point_grids(self, grids: object) -> list[np.ndarray]:
        if not isinstance(grids, (list, tuple)):
            raise InputError(
                f"point_grids must be a list of (N, 2) arrays, got {type(grids).__name__}"
            )
        if len(grids) < self.crop_n_layers + 1:
            raise InputError(
                f"point_grids needs one grid per crop layer: crop_n_layers={self.crop_n_layers} needs "
                f"{self.crop_n_layers + 1}, got {len(grids)}"
            )
        out = []
        for i, g in enumerate(grids):
            arr = np.asarray(g, dtype=np.float64)
            if arr.ndim != 2 or arr.shape[1] != 2 or arr.shape[0] == 0:
                raise InputError(
                    f"point_grids[{i}] must have shape (N, 2) with N >= 1, got {arr.shape}"
                )
            if not np.all(np.isfinite(arr)) or arr.min() < 0 or arr.max() > 1:
                raise InputError(f"point_grids[{i}] must hold xy normalised to [0, 1]")
            out.append(arr)
        return out

    @property
    def model(self):
        return self.predictor.model

    # ------------------------------------------------------------------ public
    @torch.no_grad()
    def generate(
        self, image: ImageLike, progress: Callable[[int, int], None] | None = None
    ) -> list[dict[str, Any]]:
        """Segment everything in ``image``.

        Args:
            image: HxWx3 uint8 RGB array, PIL image or path (see :func:`grounded_sam.load_image`).
            progress: called as ``progress(done, total)`` after each batch of points is
                decoded (``total`` batches over all crops), e.g. to drive a progress bar.
        Returns:
            One dict per mask, as Meta's generator: ``segmentation`` ((H, W) bool array, or an
            RLE dict by ``output_mode``), ``area`` (int px), ``bbox`` (XYWH, ints, Meta's
            inclusive convention), ``predicted_iou`` (float), ``point_coords`` ([[x, y]] px of
            the prompt), ``stability_score`` (float), ``crop_box`` (XYWH ints of the crop).
        """
        image = load_image(image)
        data = self._generate(image, progress)
        masks = data.pop("masks")
        if self.min_mask_region_area > 0 and len(masks):
            masks, keep = self._clean_small_regions(masks, data)
            data = {k: v[keep] for k, v in data.items()}
        return self._records(masks, data)

    # ------------------------------------------------------------------ pipeline
    def _generate(
        self, image: np.ndarray, progress: Callable[[int, int], None] | None = None
    ) -> dict[str, Any]:
        """All crops -> de-duplicated survivors: ``masks`` (N, H, W) bool tensor (device) and
        CPU tensors ``boxes`` (N, 4) int64 XYXY, ``iou``, ``stability``, ``points`` (N, 2),
        ``crop_boxes`` (N, 4) XYXY, all in the image frame, in Meta's order."""
        h, w = image.shape[:2]
        crop_boxes, layers = _amg.generate_crop_boxes(
            (h, w), self.crop_n_layers, self.crop_overlap_ratio
        )
        ppb = self.points_per_batch
        total = sum(-(-len(self.point_grids[layer]) // ppb) for layer in layers)
        done = [0]

        def batch_done() -> None:
            done[0] += 1
            if progress is not None:
                progress(done[0], total)

        crops = []
        for i, (box, layer) in enumerate(zip(crop_boxes, layers, strict=True)):
            c = self._process_crop(image, box, layer, (h, w), batch_done)
            n = len(c["iou"])
            c["crop_idx"] = torch.full((n,), i, dtype=torch.int64)
            c["local"] = torch.arange(n)
            crops.append(c)
        keys = ("boxes", "iou", "points", "stability", "crop_idx", "local")
        cat = {k: torch.cat([c[k] for c in crops]) for k in keys}
        if len(crop_boxes) > 1 and len(cat["iou"]):
            crop_t = torch.as_tensor(crop_boxes, dtype=torch.int64)
            scores = 1 / box_area(crop_t[cat["crop_idx"]])  # prefer masks from smaller crops
            keep = batched_nms(
                cat["boxes"].float(),
                scores,
                torch.zeros(len(scores), dtype=torch.int64),
                self.crop_nms_thresh,
            )
            cat = {k: v[keep] for k, v in cat.items()}
        masks = self._final_masks(crops, cat["crop_idx"], cat["local"], (h, w))
        cat["crop_boxes"] = torch.as_tensor(crop_boxes, dtype=torch.int64).reshape(-1, 4)[
            cat["crop_idx"]
        ]
        del cat["crop_idx"], cat["local"]
        return {"masks": masks, **cat}

    def _process_crop(
        self,
        image: np.ndarray,
        crop_box: list[int],
        layer: int,
        orig_size: tuple[int, int],
        batch_done: Callable[[], None] = lambda: None,
    ) -> dict[str, Any]:
        """Decode the point grid over one crop, filter and de-duplicate it.

        Returns CPU tensors in the image frame (``boxes`` int64 XYXY, ``iou``, ``stability``,
        ``points`` float64 xy) plus the survivors' ``low_res`` logits (device) and the sizes
        needed to rebuild their full-resolution masks.
        """
        x0, y0, _, _ = crop_box
        crop = np.ascontiguousarray(image[crop_box[1] : crop_box[3], crop_box[0] : crop_box[2]])
        crop_size = (int(crop.shape[0]), int(crop.shape[1]))
        p = self.predictor
        p.set_image(crop)
        dev = p.device
        points = self.point_grids[layer] * np.array(crop_size)[None, ::-1]  # (P, 2) xy, crop px

        # 1. decode every point (3 candidates each); filter on predicted IoU at low res
        low_parts, iou_parts, idx_parts = [], [], []
        for start in range(0, len(points), self.points_per_batch):
            coords = points[start : start + self.points_per_batch, None, :]
            labels = np.ones(coords.shape[:2], dtype=np.int64)
            low, iou = p.predict_low_res(
                point_coords=coords, point_labels=labels, multimask_output=self.multimask_output
            )
            n_out = low.shape[1]
            low, iou = low.flatten(0, 1), iou.flatten(0, 1)
            if self.use_m2m:
                low, iou = self._refine_m2m(np.repeat(coords, n_out, axis=0), low)
            idx = torch.arange(start * n_out, start * n_out + low.shape[0], device=dev)
            if self.pred_iou_thresh > 0:
                keep = iou > self.pred_iou_thresh
                low, iou, idx = low[keep], iou[keep], idx[keep]
            low_parts.append(low)
            iou_parts.append(iou)
            idx_parts.append(idx)
            batch_done()
        low, iou, cand = torch.cat(low_parts), torch.cat(iou_parts), torch.cat(idx_parts)

        # 2. stability score and boxes from full-resolution logits, survivors only
        stab_parts, box_parts = [], []
        for chunk in self._chunks(len(low), crop_size):
            logits = p.postprocess(low[chunk][:, None])[:, 0]
            stab_parts.append(
                _amg.stability_score(logits, self.mask_threshold, self.stability_score_offset)
            )
            box_parts.append(_amg.masks_to_boxes(logits > self.mask_threshold))
            del logits
        stab = torch.cat(stab_parts) if stab_parts else torch.zeros(0, device=dev)
        boxes = (
            torch.cat(box_parts)
            if box_parts
            else torch.zeros((0, 4), dtype=torch.int64, device=dev)
        )
        offset = torch.tensor([x0, y0, x0, y0], device=dev)
        keep = ~_amg.near_crop_edge(boxes + offset, crop_box, [0, 0, orig_size[1], orig_size[0]])
        if self.stability_score_thresh > 0:
            keep &= stab >= self.stability_score_thresh
        low, iou, cand, stab, boxes = low[keep], iou[keep], cand[keep], stab[keep], boxes[keep]

        # 3. NMS within the crop, scored by predicted IoU (Meta's order)
        keep = batched_nms(
            boxes.float(),
            iou,
            torch.zeros(len(iou), dtype=torch.int64, device=dev),
            self.box_nms_thresh,
        )
        low, iou, cand, stab, boxes = low[keep], iou[keep], cand[keep], stab[keep], boxes[keep]
        point_idx = (cand // n_out).cpu().numpy() if len(cand) else np.zeros(0, dtype=np.int64)
        embedding = p.get_embedding()
        p.reset_image()
        return {
            "boxes": (boxes + offset).cpu(),
            "iou": iou.float().cpu(),
            "stability": stab.float().cpu(),
            "points": torch.as_tensor(points[point_idx] + np.array([x0, y0])).reshape(-1, 2),
            "low_res": low,
            "embedding": embedding,  # to upsample the survivors after all NMS
            "crop_size": crop_size,
            "crop_box": crop_box,
        }

    def _refine_m2m(
        self, coords: np.ndarray, low: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Each candidate decoded again from its point with its own low-res logits as
        ``mask_input``, single-mask output (Meta's ``refine_with_m2m``), ``points_per_batch``
        candidates at a time: (N, 1, 2) points, (N, 256, 256) logits -> refined (N, 256, 256)
        logits and (N,) predicted IoU."""
        p = self.predictor
        lows, ious = [], []
        for i in range(0, len(low), self.points_per_batch):
            pts = coords[i : i + self.points_per_batch]
            refined, iou = p.predict_low_res(
                point_coords=pts,
                point_labels=np.ones(pts.shape[:2], dtype=np.int64),
                mask_input=low[i : i + self.points_per_batch, None],
                multimask_output=False,
            )
            lows.append(refined[:, 0])
            ious.append(iou[:, 0])
        if not lows:
            return low, low.new_zeros(0)
        return torch.cat(lows), torch.cat(ious)

    def _final_masks(
        self,
        crops: list[dict[str, Any]],
        crop_idx: torch.Tensor,
        local: torch.Tensor,
        size: tuple[int, int],
    ) -> torch.Tensor:
        """Rebuild the (N, H, W) bool full-image masks of the final survivors (device)."""
        h, w = size
        dev = self.predictor.device
        out = torch.zeros((len(crop_idx), h, w), dtype=torch.bool, device=dev)
        for ci in torch.unique(crop_idx).tolist():
            c = crops[ci]
            rows = torch.nonzero(crop_idx == ci).flatten()
            sel = local[rows].to(c["low_res"].device)
            x0, y0, x1, y1 = c["crop_box"]
            rows = rows.to(dev)
            self.predictor.set_embedding(c["embedding"])
            for chunk in self._chunks(len(sel), c["crop_size"]):
                logits = self.predictor.postprocess(c["low_res"][sel[chunk]][:, None])[:, 0]
                out[rows[chunk], y0:y1, x0:x1] = logits > self.mask_threshold
                del logits
        self.predictor.reset_image()
        return out

    @staticmethod
    def _chunks(n: int, size: tuple[int, int]) -> list[slice]:
        """Slices of at most ~_UPSCALE_BUDGET bytes of float32 logits (1024x1024 intermediate)."""
        per = max(1, _UPSCALE_BUDGET // (4 * max(size[0] * size[1], 1024 * 1024)))
        return [slice(i, min(i + per, n)) for i in range(0, n, per)]

    def _clean_small_regions(
        self, masks: torch.Tensor, data: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Fill small holes / drop small islands, then NMS preferring unchanged masks.

        Updates ``data["boxes"]`` in place; returns (cleaned masks of the kept, keep indices).
        """
        area = self.min_mask_region_area
        np_masks = masks.cpu().numpy()
        changed = np.zeros(len(np_masks), dtype=bool)
        for i, m in enumerate(np_masks):
            m, c1 = _amg.remove_small_regions(m, area, "holes")
            m, c2 = _amg.remove_small_regions(m, area, "islands")
            if c1 or c2:
                np_masks[i] = m
                changed[i] = True
        new = torch.from_numpy(np_masks)
        boxes = _amg.masks_to_boxes(new)
        scores = torch.as_tensor(~changed, dtype=torch.float32)
        keep = batched_nms(
            boxes.float(),
            scores,
            torch.zeros(len(boxes), dtype=torch.int64),
            max(self.box_nms_thresh, self.crop_nms_thresh),
        )
        ch = torch.from_numpy(changed)
        data["boxes"] = torch.where(ch[:, None], boxes, data["boxes"])
        return new[keep], keep

    def _records(self, masks: torch.Tensor, data: dict[str, torch.Tensor]) -> list[dict[str, Any]]:
        n = len(masks)
        if self.output_mode == "binary_mask":
            segs: list[Any] = list(masks.cpu().numpy())
        elif self.output_mode == "uncompressed_rle":
            segs = _amg.masks_to_uncompressed_rle(masks)
        else:
            segs = encode_rle(masks.cpu().numpy())
        areas = masks.sum((1, 2)).cpu().tolist() if n else []
        boxes = data["boxes"].clone()
        boxes[:, 2:] -= boxes[:, :2]
        crops = data["crop_boxes"].clone()
        crops[:, 2:] -= crops[:, :2]
        boxes_l, crops_l = boxes.tolist(), crops.tolist()
        iou_l, stab_l = data["iou"].tolist(), data["stability"].tolist()
        pts_l = data["points"].tolist()
        return [
            {
                "segmentation": segs[i],
                "area": int(areas[i]),
                "bbox": boxes_l[i],
                "predicted_iou": iou_l[i],
                "point_coords": [pts_l[i]],
                "stability_score": stab_l[i],
                "crop_box": crops_l[i],
            }
            for i in range(n)
        ]
