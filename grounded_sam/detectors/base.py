"""Detector interface: the ``Detections`` result, the ``Detector`` protocol and the registry.

A detector turns ``(image, text)`` into boxes in original-image pixels, one label per box
taken verbatim from the phrases asked for. Built-in detectors (``grounding-dino``,
``yolo-clip``) import their heavy dependencies only when built; third-party detectors are
discovered through the ``grounded_sam.detectors`` entry-point group.
"""

from __future__ import annotations

import importlib
import inspect
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np

from grounded_sam.devices import resolve_device
from grounded_sam.errors import InputError, MissingDependency
from grounded_sam.io import ImageLike, load_image
from grounded_sam.phrases import parse_phrases

__all__ = [
    "ENTRY_POINT_GROUP",
    "BaseDetector",
    "Detections",
    "Detector",
    "Option",
    "detector_capabilities",
    "detector_factory",
    "detector_options",
    "build_detector",
    "check_detector_options",
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

    ``image`` is an ``(H, W, 3)`` uint8 RGB array (built-in detectors also take anything
    ``grounded_sam.load_image`` accepts); ``text`` is ``"a cat. a dog."`` or a list of phrases.
    The pipeline always passes the list :func:`grounded_sam.phrases.parse_phrases` returns,
    and every returned label must be one of those phrases, exactly as given.

    Optional class attributes declare what the detector takes and gives (see
    :class:`BaseDetector`): ``options`` (a tuple of :class:`Option`), ``returns_masks``,
    ``accepts_device``. Without them, options are read from the constructor's signature.
    """

    def detect(self, image: ImageLike, text: str | Sequence[str]) -> Detections: ...


@dataclass(frozen=True)
class Option:
    """A keyword option of a detector, declared once and used by the Python API and the CLI.

    Attributes:
        name: the constructor keyword, e.g. ``"box_threshold"``.
        type: ``float``, ``int``, ``str``, ``bool`` or ``Path``: how a CLI string is parsed.
        default: the constructor's default (shown in ``--help``).
        help: one line for ``--help``.
        flag: the CLI flag; default ``--`` + ``name`` with dashes (``--box-threshold``).
            Detectors may share a flag for the same meaning (``yolo-clip`` maps
            ``--box-threshold`` onto its ``score_threshold``).
        unit: ``True`` for numbers that must lie in [0, 1].
        metavar: the CLI placeholder.
    """

    name: str
    type: type = str
    default: Any = None
    help: str = ""
    flag: str | None = None
    unit: bool = False
    metavar: str | None = None

    @property
    def cli_flag(self) -> str:
        return self.flag or "--" + self.name.replace("_", "-")

    def parse(self, value: Any, where: str = "") -> Any:
        """Convert a CLI string (or a YAML-parsed ``-D`` value) to this option's type.

        Raises:
            InputError: a value of the wrong type or out of range, naming ``where`` it came from.
        """
        where = where or self.cli_flag
        if value is None:
            return None
        try:
            if self.type is bool:
                if isinstance(value, bool):
                    out: Any = value
                elif str(value).strip().lower() in ("1", "true", "yes", "on"):
                    out = True
                elif str(value).strip().lower() in ("0", "false", "no", "off"):
                    out = False
                else:
                    raise ValueError(value)
            elif self.type is int:
                if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                    raise ValueError(value)
                out = int(value)
            elif self.type is float:
                if isinstance(value, bool):
                    raise ValueError(value)
                out = float(value)
            elif self.type is Path:
                out = Path(os.path.expanduser(str(value)))
            else:
                out = (
                    value
                    if not isinstance(value, (int, float)) or self.type is not str
                    else str(value)
                )
        except (TypeError, ValueError):
            raise InputError(
                f"{where} expects {'a number' if self.type in (int, float) else self.type.__name__}"
                f", got {value!r}"
            ) from None
        if self.unit and not (isinstance(out, (int, float)) and 0.0 <= out <= 1.0):
            raise InputError(f"{where} expects a number in [0, 1], got {value!r}")
        return out


class BaseDetector:
    """Base class of the built-in detectors: declared options and capabilities, and text
    parsed by the one phrase parser before :meth:`detect_phrases` sees it.

    Subclasses set ``name``, ``options``, ``returns_masks``, ``accepts_device`` and implement
    :meth:`detect_phrases`. ``detect_batch`` may be overridden where batching is faster; its
    results must equal one-by-one :meth:`detect` calls.
    """

    name: ClassVar[str] = ""
    options: ClassVar[tuple[Option, ...]] = ()
    returns_masks: ClassVar[bool] = False
    accepts_device: ClassVar[bool] = True

    def detect(self, image: ImageLike, text: str | Sequence[str]) -> Detections:
        """Boxes for every phrase of ``text`` in ``image``; labels are the phrases as parsed by
        :func:`grounded_sam.phrases.parse_phrases` (case kept)."""
        return self.detect_phrases(load_image(image), parse_phrases(text))

    def detect_batch(
        self, images: Sequence[np.ndarray], phrases: Sequence[str]
    ) -> list[Detections]:
        """:meth:`detect_phrases` of each image with the same phrases (one by one unless a
        subclass batches)."""
        return [self.detect_phrases(im, list(phrases)) for im in images]

    def detect_phrases(self, image: np.ndarray, phrases: list[str]) -> Detections:
        """``image`` (H, W, 3) uint8 RGB, ``phrases`` already parsed -> :class:`Detections`."""
        raise NotImplementedError


def normalize_phrases(text: str | Sequence[str], *, lowercase: bool = False) -> list[str]:
    """Earlier name of :func:`grounded_sam.phrases.parse_phrases`; ``lowercase=True`` also
    lower-cases the phrases."""
    phrases = parse_phrases(text)
    if lowercase:
        phrases = list(dict.fromkeys(p.lower() for p in phrases))
    return phrases


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
        raise InputError(f"detector name must be a non-empty string, got {name!r}")

    def decorator(factory: Callable[..., Detector]) -> Callable[..., Detector]:
        if name in _BUILTIN:
            raise InputError(f"{name!r} is a built-in detector name; pick another name")
        _REGISTERED[name] = factory
        return factory

    return decorator


def _entry_points() -> dict[str, metadata.EntryPoint]:
    return {ep.name: ep for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)}


def list_detectors() -> list[str]:
    """Names accepted by :func:`build_detector`: built-ins, registered and entry-point ones."""
    return sorted({*_BUILTIN, *_REGISTERED, *_entry_points()})


def _unknown(name: str) -> InputError:
    return InputError(f"unknown detector {name!r}; known detectors: {', '.join(list_detectors())}")


def detector_factory(name: str) -> Callable[..., Detector]:
    """The class (or factory) registered as ``name``, imported on demand.

    Raises:
        InputError: unknown name (the message lists the known ones).
        MissingDependency: the entry point's package fails to import for a missing module.
    """
    if not isinstance(name, str):
        raise InputError(f"detector name must be a string, got {type(name).__name__}")
    if name in _BUILTIN:
        module, attr = _BUILTIN[name].split(":")
        return getattr(importlib.import_module(module), attr)
    if name in _REGISTERED:
        return _REGISTERED[name]
    eps = _entry_points()
    if name in eps:
        try:
            return eps[name].load()
        except ImportError as e:
            raise MissingDependency(
                f"detector {name!r} is declared by the entry point {eps[name].value!r} "
                f"(group {ENTRY_POINT_GROUP!r}) but failed to import: {e}; "
                "reinstall the package that provides it"
            ) from e
    raise _unknown(name)


_SIGNATURE_TYPES = {"float": float, "int": int, "str": str, "bool": bool}


def detector_options(name: str) -> tuple[Option, ...]:
    """The options of detector ``name``: its declared ``options``, or for a detector that
    declares none, one :class:`Option` per keyword parameter of its constructor (type from
    the annotation or the default value; ``device`` excluded)."""
    factory = detector_factory(name)
    declared = getattr(factory, "options", None)
    if declared is not None and not callable(declared):
        return tuple(declared)
    try:
        params = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return ()
    out = []
    for p in params:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) or p.name in ("self", "device"):
            continue
        ann = (
            p.annotation if isinstance(p.annotation, str) else getattr(p.annotation, "__name__", "")
        )
        typ = _SIGNATURE_TYPES.get(str(ann).split("|")[0].strip())
        if typ is None and p.default is not p.empty and p.default is not None:
            typ = type(p.default) if type(p.default) in (float, int, str, bool) else str
        out.append(Option(p.name, typ or str, None if p.default is p.empty else p.default))
    return tuple(out)


def detector_capabilities(name: str) -> dict[str, bool]:
    """``{"returns_masks": ..., "accepts_device": ...}`` of detector ``name``.

    Undeclared: ``returns_masks`` False, ``accepts_device`` True when its constructor has a
    ``device`` parameter.
    """
    factory = detector_factory(name)
    accepts = getattr(factory, "accepts_device", None)
    if accepts is None:
        try:
            accepts = "device" in inspect.signature(factory).parameters
        except (TypeError, ValueError):
            accepts = False
    return {
        "returns_masks": bool(getattr(factory, "returns_masks", False)),
        "accepts_device": bool(accepts),
    }


def check_detector_options(name: str, kwargs: dict[str, Any], *, values: bool = True) -> None:
    """Check ``kwargs`` against the options detector ``name`` declares (or, if it declares
    none, its constructor's keywords; a constructor taking ``**kwargs`` checks its own),
    without building it: no weights are read. ``values``: also parse each value with its
    declared :class:`Option` (type and range).

    Raises:
        InputError: an option it does not take (with a did-you-mean when one is close,
            and the options it takes), or with ``values`` a bad value.
    """
    import difflib

    factory = detector_factory(name)
    declared = getattr(factory, "options", None)
    is_declared = declared is not None and not callable(declared)
    if not is_declared:
        try:
            params = inspect.signature(factory).parameters.values()
        except (TypeError, ValueError):
            return
        if any(p.kind is p.VAR_KEYWORD for p in params):
            return
    known = {o.name: o for o in detector_options(name)}
    takes = set(known) | ({"device"} if detector_capabilities(name)["accepts_device"] else set())
    unknown = sorted(set(kwargs) - takes)
    if unknown:
        close = difflib.get_close_matches(unknown[0], sorted(takes), n=1)
        hint = f" (did you mean {close[0]!r}?)" if len(unknown) == 1 and close else ""
        raise InputError(
            f"detector {name!r} takes no option {', '.join(map(repr, unknown))}{hint}; its "
            f"options: {', '.join(sorted(takes)) or 'none'}"
        )
    if values and is_declared:
        for key, value in kwargs.items():
            if key in known:
                known[key].parse(value, where=f"detector option {key}")


def build_detector(name: str, **kwargs: Any) -> Detector:
    """Build a detector by name; ``kwargs`` go to its constructor.

    Example: ``build_detector("grounding-dino", box_threshold=0.35)``.

    Raises:
        InputError: unknown name (the message lists the known ones), an option the detector
            does not take (the message lists those it takes), or bad option values.
    """
    factory = detector_factory(name)
    check_detector_options(name, kwargs, values=False)  # values: the constructor's to check
    try:
        detector = factory(**kwargs)
    except TypeError as e:
        if "unexpected keyword argument" in str(e) or "got an unexpected" in str(e):
            raise InputError(f"detector {name!r}: {e}") from e
        raise
    if not callable(getattr(detector, "detect", None)):
        raise TypeError(
            f"detector {name!r} built a {type(detector).__name__} without a detect(image, text) method"
        )
    return detector
