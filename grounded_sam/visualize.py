"""Overlay drawing: coloured instance masks, their boxes and labels on top of an image.

Pure numpy + PIL; used by :meth:`grounded_sam.Result.overlay` and the CLI's ``overlay.png``.
"""

from __future__ import annotations

import colorsys
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from grounded_sam.errors import InputError

__all__ = ["draw_overlay", "draw_result", "instance_colors", "result_image"]

_GOLDEN = 0.618033988749895


def instance_colors(n: int, seed_hue: float = 0.12) -> np.ndarray:
    """``n`` distinct, saturated RGB colours as an ``(n, 3)`` uint8 array.

    Hues step by the golden ratio, so neighbouring instances get far-apart hues and any
    prefix of the sequence stays well spread; brightness alternates to separate the
    occasional close hue.
    """
    if n < 0:
        raise InputError(f"n must be >= 0, got {n}")
    out = np.zeros((n, 3), dtype=np.uint8)
    for i in range(n):
        hue = (seed_hue + i * _GOLDEN) % 1.0
        value = 1.0 if i % 2 == 0 else 0.8
        r, g, b = colorsys.hsv_to_rgb(hue, 0.85, value)
        out[i] = (round(r * 255), round(g * 255), round(b * 255))
    return out


def _boundary(mask: np.ndarray) -> np.ndarray:
    """Pixels of ``mask`` (H, W) bool with a 4-neighbour outside the mask."""
    inner = mask.copy()
    inner[1:, :] &= mask[:-1, :]
    inner[:-1, :] &= mask[1:, :]
    inner[:, 1:] &= mask[:, :-1]
    inner[:, :-1] &= mask[:, 1:]
    return mask & ~inner


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has no size argument
        return ImageFont.load_default()


def draw_overlay(
    image: np.ndarray,
    masks: np.ndarray,
    boxes: np.ndarray | None = None,
    labels: Sequence[str] | None = None,
    scores: np.ndarray | None = None,
    *,
    alpha: float = 0.5,
    colors: np.ndarray | None = None,
) -> np.ndarray:
    """Draw instances on a copy of ``image``.

    Args:
        image: ``(H, W, 3)`` uint8 RGB.
        masks: ``(N, H, W)`` bool; instance ``i`` is filled with colour ``i`` blended at
            ``alpha`` and outlined in the same colour. Later masks are drawn over earlier ones.
        boxes: optional ``(N, 4)`` XYXY pixel boxes, drawn as rectangles.
        labels: optional ``N`` strings, written at the top-left corner of each box (or of the
            mask's bounding box when ``boxes`` is ``None``), followed by the score if given.
        scores: optional ``(N,)`` floats appended to the labels as ``0.87``.
        alpha: mask opacity in ``[0, 1]``.
        colors: optional ``(N, 3)`` uint8 colours; default :func:`instance_colors`.

    Returns:
        ``(H, W, 3)`` uint8 RGB; ``image`` itself is not modified.
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise InputError(
            f"image must be an (H, W, 3) uint8 RGB array, got shape {image.shape} dtype {image.dtype}"
        )
    h, w = image.shape[:2]
    masks = np.asarray(masks, dtype=bool)
    if masks.ndim != 3 or masks.shape[1:] != (h, w):
        raise InputError(
            f"masks must have shape (N, {h}, {w}) to match the image, got {masks.shape}"
        )
    n = masks.shape[0]
    if not 0.0 <= float(alpha) <= 1.0:
        raise InputError(f"alpha must lie in [0, 1], got {alpha}")
    if boxes is not None:
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        if boxes.shape[0] != n:
            raise InputError(
                f"boxes must have shape ({n}, 4) to match the masks, got {boxes.shape}"
            )
    if labels is not None and len(labels) != n:
        raise InputError(f"labels must have {n} entries to match the masks, got {len(labels)}")
    if scores is not None:
        scores = np.asarray(scores, dtype=np.float64).reshape(-1)
        if scores.shape[0] != n:
            raise InputError(f"scores must have {n} entries to match the masks, got {scores.shape}")
    colors = instance_colors(n) if colors is None else np.asarray(colors, dtype=np.uint8)

    out = image.astype(np.float32)
    for i in range(n):
        m = masks[i]
        if not m.any():
            continue
        c = colors[i].astype(np.float32)
        out[m] = out[m] * (1.0 - alpha) + c * alpha
        out[_boundary(m)] = c
    canvas = Image.fromarray(np.clip(out + 0.5, 0, 255).astype(np.uint8))
    if boxes is None and labels is None:
        return np.asarray(canvas)

    draw = ImageDraw.Draw(canvas)
    line = max(1, round(max(h, w) / 300))
    font = _font(max(10, round(max(h, w) / 45)))
    for i in range(n):
        color = tuple(int(v) for v in colors[i])
        if boxes is not None:
            x0, y0, x1, y1 = boxes[i]
            draw.rectangle([x0, y0, x1, y1], outline=color, width=line)
        else:
            ys, xs = np.nonzero(masks[i])
            if xs.size == 0:
                continue
            x0, y0 = float(xs.min()), float(ys.min())
        if labels is None:
            continue
        text = labels[i] if scores is None else f"{labels[i]} {scores[i]:.2f}"
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        tw, th = right - left, bottom - top
        tx = min(max(0.0, x0), max(0.0, w - tw - 4))
        ty = y0 - th - 4 if y0 - th - 4 >= 0 else y0  # above the box, else inside it
        draw.rectangle([tx, ty, tx + tw + 4, ty + th + 4], fill=color)
        luminance = 0.299 * color[0] + 0.587 * color[1] + 0.114 * color[2]
        ink = (0, 0, 0) if luminance > 140 else (255, 255, 255)
        draw.text((tx + 2 - left, ty + 2 - top), text, fill=ink, font=font)
    return np.asarray(canvas)


def result_image(result, image=None) -> np.ndarray:
    """The image a :class:`~grounded_sam.result.Result` belongs to: ``image`` (anything
    ``load_image`` accepts, checked to have the result's size) or the one the result keeps.

    Raises:
        InputError: no image given and none kept, or an image of another size.
    """
    from grounded_sam.io import load_image

    if image is None:
        if result.image is None:
            raise InputError("this Result keeps no image: pass it, e.g. result.overlay(image=...)")
        return result.image
    img = load_image(image)
    if img.shape[:2] != result.image_size:
        raise InputError(
            f"image has size {img.shape[:2]} but the result is for an image of size "
            f"{result.image_size} (H, W)"
        )
    return img


def draw_result(result, image=None, *, alpha: float = 0.5) -> np.ndarray:
    """:func:`draw_overlay` of a :class:`~grounded_sam.result.Result` (masks, boxes, labels and
    scores) on its image (see :func:`result_image`)."""
    img = result_image(result, image)
    return draw_overlay(
        img, result.masks, result.boxes, result.labels, result.scores, alpha=float(alpha)
    )
