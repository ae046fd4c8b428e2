"""Image embeddings computed once and kept on disk, so decoder-only epochs skip the encoder.

One file per image file, ``<folder>/<stem>-<hash of its path>.pt``, holding the
:class:`~grounded_sam.predictor.ImageEmbedding` fields (float32 CPU tensors: 4 MiB per image
for SAM 1 / MobileSAM, 16 MiB with SAM 2.1's high-resolution features) and a key naming the
starting weights and the image file, so a file made for other weights or another image is
recomputed, never used. Files are written atomically: a run killed while embedding keeps the
finished ones. A small in-memory copy (``memory_bytes``) saves re-reading the disk.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from grounded_sam.predictor import ImageEmbedding, SamPredictor
from grounded_sam.train.checkpoint import save_torch
from grounded_sam.train.data import ImageInfo

__all__ = ["EmbeddingStore"]


def _file_key(path: Path) -> str:
    st = path.stat()
    return f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}"


class EmbeddingStore:
    """Disk cache of image embeddings under ``folder`` for the weights named by ``weights_key``.

    Args:
        folder: where the files go (created on first write).
        weights_key: identifies the encoder weights (e.g. the starting checkpoint's path, size
            and modification time, and the variant name).
        memory_bytes: embeddings also kept in memory, oldest dropped first.
    """

    def __init__(self, folder: Path, weights_key: str, memory_bytes: int = 2 << 30) -> None:
        self.folder = Path(folder)
        self.weights_key = weights_key
        self.memory_bytes = memory_bytes
        self._memory: OrderedDict[Path, ImageEmbedding] = OrderedDict()
        self._held = 0

    def _key(self, info: ImageInfo) -> str:
        raw = f"{self.weights_key}|{_file_key(info.path)}"
        return hashlib.sha1(raw.encode()).hexdigest()

    def _path(self, info: ImageInfo) -> Path:
        # named by the image file, not its COCO id: training and validation files may
        # reuse ids for different images
        name = hashlib.sha1(str(info.path.resolve()).encode()).hexdigest()[:16]
        return self.folder / f"{info.path.stem[:40]}-{name}.pt"

    def _remember(self, key: Path, emb: ImageEmbedding) -> None:
        size = sum(t.numel() * t.element_size() for t in (emb.features, *emb.high_res))
        if size > self.memory_bytes:
            return
        self._memory[key] = emb
        self._held += size
        while self._held > self.memory_bytes:
            _, old = self._memory.popitem(last=False)
            self._held -= sum(t.numel() * t.element_size() for t in (old.features, *old.high_res))

    def get(self, info: ImageInfo) -> ImageEmbedding | None:
        """The stored embedding of ``info`` (CPU), or ``None`` when absent or stale."""
        if info.path in self._memory:
            return self._memory[info.path]
        p = self._path(info)
        if not p.is_file():
            return None
        try:
            d = torch.load(p, map_location="cpu", weights_only=True)
        except Exception:  # noqa: BLE001 - a damaged cache file is recomputed
            return None
        if not isinstance(d, dict) or d.get("key") != self._key(info):
            return None
        emb = ImageEmbedding(
            d["features"],
            tuple(int(v) for v in d["original_size"]),
            tuple(int(v) for v in d["input_size"]),
            tuple(d["high_res"]),
        )
        self._remember(info.path, emb)
        return emb

    def put(self, info: ImageInfo, emb: ImageEmbedding) -> ImageEmbedding:
        """Store ``emb`` (moved to the CPU) for ``info``; returns the CPU copy."""
        emb = emb.to("cpu")
        self.folder.mkdir(parents=True, exist_ok=True)
        save_torch(
            {
                "key": self._key(info),
                # clones: a slice of a batch would save the whole batch's storage
                "features": emb.features.clone(),
                "high_res": [t.clone() for t in emb.high_res],
                "original_size": list(emb.original_size),
                "input_size": list(emb.input_size),
            },
            self._path(info),
        )
        self._remember(info.path, emb)
        return emb

    def ensure(
        self,
        predictor: SamPredictor,
        images: Sequence[ImageInfo],
        *,
        batch_size: int = 4,
        on_progress: Callable[[int, int], None] | None = None,
    ) -> int:
        """Compute (through ``predictor.embed``) and store every missing embedding of
        ``images``; returns how many were computed. ``on_progress(done, total)`` after each
        batch."""
        from grounded_sam.errors import InputError
        from grounded_sam.io import load_image

        todo = [info for info in images if self.get(info) is None]
        for start in range(0, len(todo), batch_size):
            chunk = todo[start : start + batch_size]
            arrays = []
            for info in chunk:
                image = load_image(info.path)
                if image.shape[:2] != (info.height, info.width):
                    raise InputError(
                        f"image {str(info.path)!r} is {image.shape[0]}x{image.shape[1]} but "
                        f"annotated {info.height}x{info.width}"
                    )
                arrays.append(image)
            for info, emb in zip(chunk, predictor.embed(arrays, batch_size), strict=True):
                self.put(info, emb)
            if on_progress is not None:
                on_progress(min(start + batch_size, len(todo)), len(todo))
        return len(todo)
