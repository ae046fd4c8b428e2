"""SAM image embeddings kept on disk inside a dataset, shared by ``label``, the app and
``finetune``.

Layout::

    DATASET/embeddings/<sam id>/sam.json          the SAM identity (:func:`sam_identity`)
    DATASET/embeddings/<sam id>/ab/<key>.npz      one image: <key> = unit_key(file_name)

``<sam id>`` is 16 hex digits of the BLAKE2b hash of the SAM identity (variant, weights,
precision), so embeddings of different models never mix. Each ``.npz`` (plain numpy, loaded
with ``allow_pickle=False``) holds ``features`` (1, 256, 64, 64) float32, ``high_res_0``,
``high_res_1``... (SAM 2.1's extra features; none for SAM 1), ``original_size`` (H, W),
``input_size`` (h, w) and ``image_digest``: the :meth:`grounded_sam.pipeline.EmbeddingCache.key`
digest of the decoded RGB pixels, checked on load so an image replaced under the same name is
never given a stale embedding. Float32 as computed: masks decoded from a stored embedding are
the masks decoded from a fresh one. About 4 MiB per image for SAM 1 (more for SAM 2.1).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from grounded_sam.engine.dataset import EMBEDDINGS, atomic_write, file_digest, unit_key
from grounded_sam.errors import InputError

__all__ = ["EmbeddingStore", "sam_identity"]


def _model_digest(model: Any) -> str:
    """BLAKE2b-256 over a torch module's parameters and buffers (names, shapes, bytes)."""
    import torch

    h = hashlib.blake2b(digest_size=32)
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(str(t.dtype).encode())
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def sam_identity(
    sam: Any, sam_checkpoint: str | os.PathLike | None = None, precision: str = "fp32"
) -> dict:
    """What identifies a SAM's outputs: variant name and weights, and precision.

    A name with a checkpoint file is identified by the file's BLAKE2b digest (so the same
    weights at another path, e.g. on another machine, are the same SAM); a name alone by the
    registry's weights; a model object (or ``SamPredictor``) by a digest of its tensors.
    The device is not part of it.
    """
    if isinstance(sam, str):
        out: dict[str, Any] = {"sam": sam}
        if sam_checkpoint is not None:
            path = Path(sam_checkpoint)
            if not path.is_file():
                raise InputError(f"SAM checkpoint {str(path)!r} not found")
            out["checkpoint_blake2b"] = file_digest(path)
        else:
            out["weights"] = "registry"
        out["precision"] = precision
        return out
    model = getattr(sam, "model", sam)
    return {
        "sam": getattr(model, "name", type(model).__name__),
        "model_blake2b": _model_digest(model),
        "precision": precision,
    }


class EmbeddingStore:
    """The embeddings of one SAM inside one dataset.

    Args:
        dataset: the dataset folder.
        identity: :func:`sam_identity` of the SAM that computes the embeddings.
    """

    def __init__(self, dataset: str | os.PathLike, identity: Mapping[str, Any]) -> None:
        self.identity = dict(identity)
        text = json.dumps(self.identity, sort_keys=True)
        self.sam_id = hashlib.blake2b(text.encode(), digest_size=8).hexdigest()
        self.root = Path(dataset) / EMBEDDINGS / self.sam_id

    def path(self, file_name: str) -> Path:
        key = unit_key(file_name)
        return self.root / key[:2] / f"{key}.npz"

    def load(self, file_name: str, image: np.ndarray, device: Any = "cpu"):
        """The stored :class:`~grounded_sam.predictor.ImageEmbedding` of ``file_name`` if it was
        computed from exactly these (H, W, 3) uint8 pixels, on ``device``; else ``None``."""
        import torch

        from grounded_sam.pipeline import EmbeddingCache
        from grounded_sam.predictor import ImageEmbedding

        path = self.path(file_name)
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as z:
                if str(z["image_digest"]) != EmbeddingCache.key(image)[1]:
                    return None
                n_high = sum(1 for k in z.files if k.startswith("high_res_"))
                return ImageEmbedding(
                    torch.from_numpy(z["features"]).to(device),
                    tuple(int(v) for v in z["original_size"]),
                    tuple(int(v) for v in z["input_size"]),
                    tuple(torch.from_numpy(z[f"high_res_{i}"]).to(device) for i in range(n_high)),
                )
        except (OSError, ValueError, KeyError):
            return None  # damaged or foreign file: recompute

    def save(self, file_name: str, image: np.ndarray, embedding: Any) -> Path:
        """Store ``embedding`` (computed from ``image``) atomically; returns its path."""
        from grounded_sam.pipeline import EmbeddingCache

        if not (self.root / "sam.json").exists():
            atomic_write(self.root / "sam.json", json.dumps(self.identity, indent=1) + "\n")
        arrays = {
            "features": embedding.features.detach().float().cpu().numpy(),
            "original_size": np.asarray(embedding.original_size, dtype=np.int64),
            "input_size": np.asarray(embedding.input_size, dtype=np.int64),
            "image_digest": np.asarray(EmbeddingCache.key(image)[1]),
        }
        for i, t in enumerate(embedding.high_res):
            arrays[f"high_res_{i}"] = t.detach().float().cpu().numpy()
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        path = self.path(file_name)
        atomic_write(path, buf.getvalue(), fsync=False)
        return path
