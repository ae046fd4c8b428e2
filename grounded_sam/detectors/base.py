"""Detector interface: the ``Detections`` result, the ``Detector`` protocol and the registry.

A detector turns ``(image, text)`` into boxes in original-image pixels, one label per box
taken verbatim from the phrases asked for. Built-in detectors (``grounding-dino``,
``yolo-clip``) import their heavy dependencies only when built; third-party detectors are
discovered through the ``grounded_sam.detectors`` entry-point group.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, Protocol, runtime_checkable

import numpy as np

from grounded_sam.io import ImageLike

__all__ = [
    "ENTRY_POINT_GROUP",
    "Detections",
    "Detector",
    "build_detector",
    "list_detectors",
    "normalize_phrases",
    "register_detector",
    "resolve_device",
]

ENTRY_POINT_GROUP = "grounded_sam.detectors"


@dataclass
class Detections:
    """Boxes found by a detector in one image.

    Attributes:
        boxes: ``(N, 4)`` float32, XYXY in original-image pixels (x right, y down).
        scores: ``(N,)`` float32 in ``[0, 1]``.
        labels: ``N`` strings, each exactly one of the (normalised) phrases asked for.
        masks: optional ``(N, H, W)`` bool instance masks at the original image size
            (``yolo-clip`` fills it; ``grounding-dino`` leaves it ``None``).
    """

    boxes: np.ndarray
    scores: np.ndarray
    labels: list[str] = field(default_factory=list)
    masks: np.ndarray | None = None

    def __post_init__(self) -> None:
        boxes = np.asarray(self.boxes, dtype=np.float32)
        if boxes.size == 0:
            boxes = boxes.reshape(0, 4)
        if boxes.ndim != 2 or boxes.shape[1] != 4:
            raise ValueError(f"Detections.boxes must have shape (N, 4), got {boxes.shape}")
        scores = np.asarray(self.scores, dtype=np.float32).reshape(-1)
        n = boxes.shape[0]
        if scores.shape != (n,):
            raise ValueError(
                f"Detections.scores must have shape ({n},) to match {n} boxes, got {scores.shape}"
            )
        if n and (not np.all(np.isfinite(scores)) or scores.min() < 0 or scores.max() > 1):
            raise ValueError(
                f"Detections.scores must lie in [0, 1], got [{scores.min()}, {scores.max()}]"
            )
        labels = list(self.labels)
        if len(labels) != n or not all(isinstance(s, str) for s in labels):
            raise ValueError(
                f"Detections.labels must be {n} strings to match the boxes, got {labels!r}"
            )
        masks = self.masks
        if masks is not None:
            masks = np.asarray(masks)
            if masks.ndim != 3 or masks.shape[0] != n:
                raise ValueError(
                    f"Detections.masks must have shape ({n}, H, W) to match {n} boxes, "
                    f"got {masks.shape}"
                )
            masks = masks.astype(bool, copy=False)
        self.boxes = np.ascontiguousarray(boxes)
        self.scores = np.ascontiguousarray(scores)
        self.labels = labels
        self.masks = masks

    def __len__(self) -> int:
        return int(self.boxes.shape[0])

    @classmethod
    def empty(cls, image_size: tuple[int, int] | None = None) -> Detections:
        """No detections. With ``image_size=(H, W)`` ``masks`` is an empty ``(0, H, W)`` array."""
        masks = None
        if image_size is not None:
            h, w = (int(v) for v in image_size)
            masks = np.zeros((0, h, w), dtype=bool)
        return cls(
            boxes=np.zeros((0, 4), np.float32),
            scores=np.zeros(0, np.float32),
            labels=[],
            masks=masks,
        )

    def select(self, index: Sequence[int] | np.ndarray) -> Detections:
        """A new ``Detections`` holding the rows ``index`` (integer indices or a bool mask)."""
        idx = np.asarray(index)
        if idx.dtype == bool:
            if idx.shape != (len(self),):
                raise ValueError(f"bool index must have shape ({len(self)},), got {idx.shape}")
            idx = np.flatnonzero(idx)
        idx = idx.astype(np.int64).reshape(-1)
        return Detections(
            boxes=self.boxes[idx],
            scores=self.scores[idx],
            labels=[self.labels[i] for i in idx],
            masks=None if self.masks is None else self.masks[idx],
        )

    @classmethod
    def concatenate(cls, parts: Sequence[Detections]) -> Detections:
        """Stack several ``Detections`` of the same image; masks survive only if all have them."""
        parts = list(parts)
        if not parts:
            return cls.empty()
        with_masks = all(p.masks is not None for p in parts)
        masks = np.concatenate([p.masks for p in parts], axis=0) if with_masks else None
        return cls(
            boxes=np.concatenate([p.boxes for p in parts], axis=0),
            scores=np.concatenate([p.scores for p in parts], axis=0),
            labels=[s for p in parts for s in p.labels],
            masks=masks,
        )


@runtime_checkable
class Detector(Protocol):
    """Anything with ``detect(image, text) -> Detections``.

    ``image`` is anything ``grounded_sam.load_image`` accepts; ``text`` is ``"a cat. a dog."``
    or ``["a cat", "a dog"]``. Every returned label must be one of the normalised phrases.
    """

    def detect(self, image: ImageLike, text: str | Sequence[str]) -> Detections: ...


def normalize_phrases(text: str | Sequence[str], *, lowercase: bool = False) -> list[str]:
    """Split and clean a text prompt into phrases.

    ``"A cat. a dog."`` and ``["a cat", "a dog"]`` both give ``["a cat", "a dog"]`` (with
    ``lowercase=True``). Each item is split on ``"."``, whitespace is collapsed, empty phrases
    are dropped and duplicates removed (first occurrence kept, order preserved).

    Raises:
        TypeError: ``text`` is not a string or a list/tuple of strings.
        ValueError: no phrase is left.
    """
    if isinstance(text, str):
        items = [text]
    elif isinstance(text, (list, tuple)):
        bad = [t for t in text if not isinstance(t, str)]
        if bad:
            raise TypeError(
                f"text must be a string or a list of strings, got a list containing "
                f"{type(bad[0]).__name__} ({bad[0]!r})"
            )
        items = list(text)
    else:
        raise TypeError(
            f"text must be a string like 'a cat. a dog.' or a list of strings, "
            f"got {type(text).__name__}"
        )
    phrases: list[str] = []
    for item in items:
        for part in item.split("."):
            phrase = " ".join(part.split())
            if lowercase:
                phrase = phrase.lower()
            if phrase and phrase not in phrases:
                phrases.append(phrase)
    if not phrases:
        raise ValueError(
            f"text prompt {text!r} has no phrases; give e.g. 'a cat. a dog.' or ['a cat', 'a dog']"
        )
    return phrases


def resolve_device(device: Any = None) -> Any:
    """``None`` -> ``cuda`` if available else ``cpu``; otherwise ``torch.device(device)``."""
    import torch

    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"invalid device {device!r}; expected e.g. 'cpu', 'cuda', 'cuda:0'") from e


# name -> "module:attr" (lazy) or a callable returning a Detector.
_BUILTIN: dict[str, str] = {
    "grounding-dino": "grounded_sam.detectors.grounding_dino:GroundingDinoDetector",
    "yolo-clip": "grounded_sam.detectors.yolo_clip:YoloClipDetector",
}
_REGISTERED: dict[str, Callable[..., Detector]] = {}


def register_detector(name: str) -> Callable[[Callable[..., Detector]], Callable[..., Detector]]:
    """Decorator registering a detector class or factory under ``name`` in this process.

    For a reusable package, prefer an entry point in the ``grounded_sam.detectors`` group.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"detector name must be a non-empty string, got {name!r}")

    def decorator(factory: Callable[..., Detector]) -> Callable[..., Detector]:
        if name in _BUILTIN:
            raise ValueError(f"{name!r} is a built-in detector name; pick another name")
        _REGISTERED[name] = factory
        return factory

    return decorator


def _entry_points() -> dict[str, metadata.EntryPoint]:
    try:
        eps = metadata.entry_points(group=ENTRY_POINT_GROUP)
    except TypeError:  # Python < 3.10 API
        eps = metadata.entry_points().get(ENTRY_POINT_GROUP, [])  # type: ignore[union-attr]
    return {ep.name: ep for ep in eps}


def list_detectors() -> list[str]:
    """Names accepted by :func:`build_detector`: built-ins, registered and entry-point ones."""
    return sorted({*_BUILTIN, *_REGISTERED, *_entry_points()})


def _load_factory(name: str) -> Callable[..., Detector]:
    if name in _BUILTIN:
        module, attr = _BUILTIN[name].split(":")
        return getattr(importlib.import_module(module), attr)
    if name in _REGISTERED:
        return _REGISTERED[name]
    eps = _entry_points()
    if name in eps:
        try:
            return eps[name].load()
        except Exception as e:
            raise RuntimeError(
                f"detector {name!r} is declared by the entry point {eps[name].value!r} "
                f"(group {ENTRY_POINT_GROUP!r}) but failed to import: {e}; "
                "reinstall the package that provides it"
            ) from e
    raise ValueError(f"unknown detector {name!r}; known detectors: {', '.join(list_detectors())}")


def build_detector(name: str, **kwargs: Any) -> Detector:
    """Build a detector by name; ``kwargs`` go to its constructor.

    Example: ``build_detector("grounding-dino", box_threshold=0.35)``.

    Raises:
        TypeError: ``name`` is not a string.
        ValueError: unknown name (the message lists the known ones) or bad keyword values.
    """
    if not isinstance(name, str):
        raise TypeError(f"detector name must be a string, got {type(name).__name__}")
    factory = _load_factory(name)
    detector = factory(**kwargs)
    if not callable(getattr(detector, "detect", None)):
        raise TypeError(
            f"detector {name!r} built a {type(detector).__name__} without a detect(image, text) method"
        )
    return detector
