"""A generated COCO dataset of shapes that a box alone does not describe, for fine-tuning checks.

Rings, crosses, L-shapes, thin bars and two-part objects on textured backgrounds: the filled
box of each object covers a lot of background (a ring's hole, a cross's corners, the empty
half of an L, most of a diagonal bar's box, the gap between two parts), so "fill the box" and
a model that has never seen such shapes both score poorly, and a model that learned them does
not. Used by the fine-tuning tests and by ``docs/finetune.md`` to show that
``grounded-sam finetune`` learns::

    python -m grounded_sam.train.synthetic data/shapes --train 64 --val 24
    # -> data/shapes/images/*.png, data/shapes/train.json, data/shapes/val.json

Images are (size, size, 3) uint8 RGB PNGs; annotations are COCO instances with compressed
RLE segmentations, one category per shape kind. Everything is drawn from ``seed``: the same
arguments give byte-identical files.
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from grounded_sam.errors import InputError

__all__ = ["SHAPES", "ShapesDataset", "draw_shape", "make_shapes_image", "write_shapes_dataset"]

SHAPES = ("ring", "cross", "l_shape", "bar", "two_part")


@dataclass(frozen=True)
class ShapesDataset:
    """Paths of a written dataset: ``images`` folder, ``train`` and ``val`` COCO JSON files."""

    root: Path
    images: Path
    train: Path
    val: Path


def draw_shape(kind: str, side: int, rng: np.random.Generator) -> np.ndarray:
    """A (side, side) bool mask of one shape of ``kind`` touching its box on all four sides."""
    s = side
    yy, xx = np.mgrid[0:s, 0:s]
    c = (s - 1) / 2
    if kind == "ring":
        r_out = s / 2
        r_in = r_out * rng.uniform(0.45, 0.7)
        d = np.hypot(yy - c, xx - c)
        m = (d <= r_out) & (d >= r_in)
    elif kind == "cross":
        w = max(3, int(round(s * rng.uniform(0.22, 0.34))))
        a = (s - w) // 2
        m = np.zeros((s, s), bool)
        m[a : a + w, :] = True
        m[:, a : a + w] = True
    elif kind == "l_shape":
        w = max(3, int(round(s * rng.uniform(0.25, 0.38))))
        m = np.zeros((s, s), bool)
        m[:, :w] = True
        m[s - w :, :] = True
        m = np.rot90(m, int(rng.integers(4)))
    elif kind == "bar":
        w = max(3, int(round(s * rng.uniform(0.08, 0.14))))
        # a thin diagonal bar: distance to the box diagonal below half its width
        d = np.abs((yy - c) - (xx - c)) / np.sqrt(2)
        m = d <= w / 2
        if rng.integers(2):
            m = m[:, ::-1]
    elif kind == "two_part":
        r = s * rng.uniform(0.2, 0.28)
        d1 = np.hypot(yy - r, xx - r)
        d2 = np.hypot(yy - (s - 1 - r), xx - (s - 1 - r))
        m = (d1 <= r) | (d2 <= r)
        if rng.integers(2):
            m = m[:, ::-1]
    else:
        raise InputError(f"unknown shape {kind!r}; expected one of {SHAPES}")
    return np.ascontiguousarray(m)


def _smooth_noise(rng: np.random.Generator, size: int, cell: int) -> np.ndarray:
    """(size, size) float noise in [0, 1], smooth over ``cell`` pixels (bilinear upsampling)."""
    n = size // cell + 2
    coarse = rng.random((n, n))
    t = np.arange(size) / cell
    i = t.astype(int)
    f = t - i
    rows = coarse[i] * (1 - f)[:, None] + coarse[i + 1] * f[:, None]
    return rows[:, i] * (1 - f)[None, :] + rows[:, i + 1] * f[None, :]


def _texture(rng: np.random.Generator, size: int, base: np.ndarray, spread: float) -> np.ndarray:
    """(size, size, 3) float RGB around ``base`` with smooth and fine noise, and stripes."""
    smooth = _smooth_noise(rng, size, int(rng.integers(6, 20)))[..., None]
    fine = rng.normal(0, 1, (size, size, 1))
    angle = rng.uniform(0, np.pi)
    yy, xx = np.mgrid[0:size, 0:size]
    stripes = np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * rng.uniform(0.3, 0.9))[..., None]
    tint = rng.normal(0, 1, 3)
    return base + spread * (smooth - 0.5) * 80 + 6 * fine + 10 * stripes * tint


def make_shapes_image(
    rng: np.random.Generator, size: int = 128, max_objects: int = 3
) -> tuple[np.ndarray, list[tuple[str, np.ndarray]]]:
    """One image and its objects: ((size, size, 3) uint8 RGB, [(shape kind, (size, size) bool
    mask), ...]) with 1..``max_objects`` non-overlapping objects."""
    # darker textured background, lighter objects: brightness tells them apart, so an
    # encoder with random weights (whose features keep colour but learned nothing) still
    # carries the cue; the shapes are what a box does not describe
    bg_base = rng.uniform(35, 130, 3)
    image = _texture(rng, size, bg_base, 0.8)
    taken = np.zeros((size, size), bool)
    objects: list[tuple[str, np.ndarray]] = []
    want = int(rng.integers(1, max_objects + 1))
    for _ in range(40 * want):
        if len(objects) == want:
            break
        kind = SHAPES[int(rng.integers(len(SHAPES)))]
        side = int(rng.integers(size // 4, size // 2 + 1))
        y0, x0 = (int(v) for v in rng.integers(1, size - side - 1, 2))
        if taken[max(0, y0 - 3) : y0 + side + 3, max(0, x0 - 3) : x0 + side + 3].any():
            continue
        shape = draw_shape(kind, side, rng)
        mask = np.zeros((size, size), bool)
        mask[y0 : y0 + side, x0 : x0 + side] = shape
        colour = rng.uniform(175, 235, 3)
        obj = _texture(rng, size, colour, 0.35)
        image = np.where(mask[..., None], obj, image)
        taken[y0 : y0 + side, x0 : x0 + side] = True
        objects.append((kind, mask))
    return np.clip(image, 0, 255).astype(np.uint8), objects


def _split(
    rng: np.random.Generator, n: int, images: Path, prefix: str, size: int, start_id: int
) -> dict:
    from PIL import Image

    from grounded_sam.masks import encode_rle, rle_area, rle_to_bbox

    cats = [{"id": i + 1, "name": k, "supercategory": "shape"} for i, k in enumerate(SHAPES)]
    out_images, anns = [], []
    for i in range(n):
        image, objects = make_shapes_image(rng, size)
        name = f"{prefix}_{i:04d}.png"
        Image.fromarray(image).save(images / name)
        image_id = start_id + i
        out_images.append({"id": image_id, "file_name": name, "height": size, "width": size})
        for kind, mask in objects:
            rle = encode_rle(mask)[0]
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": image_id,
                    "category_id": SHAPES.index(kind) + 1,
                    "segmentation": rle,
                    "area": rle_area(rle),
                    "bbox": rle_to_bbox(rle),
                    "iscrowd": 0,
                }
            )
    return {"images": out_images, "annotations": anns, "categories": cats}


def write_shapes_dataset(
    root: str | os.PathLike,
    *,
    n_train: int = 64,
    n_val: int = 24,
    size: int = 128,
    seed: int = 0,
) -> ShapesDataset:
    """Write ``root/images/{train,val}_NNNN.png``, ``root/train.json`` and ``root/val.json``.

    Args:
        n_train, n_val: number of images per split (each with 1-3 objects).
        size: image side in pixels.
        seed: the only source of randomness (same arguments, same bytes).
    """
    for name, v in (("n_train", n_train), ("n_val", n_val), ("size", size)):
        if isinstance(v, bool) or not isinstance(v, int) or v < (1 if name != "size" else 48):
            raise InputError(f"{name} must be an integer >= {1 if name != 'size' else 48}, got {v}")
    root = Path(root)
    images = root / "images"
    images.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = {}
    for split, n, start in (("train", n_train, 1), ("val", n_val, 100_000)):
        data = _split(rng, n, images, split, size, start)
        path = root / f"{split}.json"
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, path)
        paths[split] = path
    return ShapesDataset(root, images, paths["train"], paths["val"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m grounded_sam.train.synthetic",
        description="Write a generated COCO dataset of rings, crosses, L-shapes, thin bars and "
        "two-part objects on textured backgrounds (train.json, val.json, images/).",
    )
    parser.add_argument("root", help="output folder")
    parser.add_argument("--train", type=int, default=64, help="training images (default 64)")
    parser.add_argument("--val", type=int, default=24, help="validation images (default 24)")
    parser.add_argument("--size", type=int, default=128, help="image side in px (default 128)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    ds = write_shapes_dataset(
        args.root, n_train=args.train, n_val=args.val, size=args.size, seed=args.seed
    )
    print(f"wrote {ds.train}, {ds.val} and {ds.images}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
