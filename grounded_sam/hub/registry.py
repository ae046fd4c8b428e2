"""The weights registry: one frozen :class:`WeightEntry` per model file or hub model.

Pure data and look-ups: no downloads, no model code. SAM variants name their entry in their
model config (:mod:`grounded_sam.model.zoo`); detectors resolve theirs through
:func:`grounded_sam.hub.fetch`.
"""

from __future__ import annotations

import builtins
import difflib
from dataclasses import dataclass
from typing import Literal

from grounded_sam.errors import InputError, WeightsError

__all__ = [
    "FILE_KINDS",
    "KINDS",
    "WeightEntry",
    "get",
    "hub_entry",
    "list",
    "register",
    "unregister",
]

Kind = Literal["sam", "yolo", "hf", "open_clip"]
KINDS: tuple[str, ...] = ("sam", "yolo", "hf", "open_clip")
FILE_KINDS: tuple[str, ...] = ("sam", "yolo")  # files in our cache; the others: hub models


@dataclass(frozen=True)
class WeightEntry:
    """One model file (or hub model) the framework can use.

    Attributes:
        name: registry name, e.g. ``"vit_b"``, ``"FastSAM-s"``, ``"grounding-dino-tiny"``.
        kind: ``"sam"`` (SAM/MobileSAM state dict), ``"yolo"`` (ultralytics ``.pt`` pickle),
            ``"hf"`` (Hugging Face hub repo, cached by ``huggingface_hub``) or ``"open_clip"``
            (open_clip pretrained tag, cached by open_clip / ``huggingface_hub``).
        url: upstream download URL (file kinds) or the hub page (hub kinds).
        filename: file name in the cache and on mirrors; ``None`` for hub kinds.
        sha256: hex digest published by a first-party source, or ``None`` (then the file is
            verified by structure and trusted on first use).
        size_mb: approximate download size in MB (10**6 bytes), for display only.
        license: licence of the weights.
        source: page that documents the weights.
        hub_id: ``"org/repo"`` for ``"hf"``, ``"MODEL/TAG"`` for ``"open_clip"``, else ``None``.
        notes: free text, e.g. what the hash-like part of a filename is (not a sha256).
    """

    name: str
    kind: Kind
    url: str
    filename: str | None
    sha256: str | None
    size_mb: float | None
    license: str
    source: str
    hub_id: str | None = None
    notes: str = ""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise InputError(f"WeightEntry.kind must be one of {KINDS}, got {self.kind!r}")
        if self.kind in FILE_KINDS and not self.filename:
            raise InputError(f"WeightEntry {self.name!r} of kind {self.kind!r} needs a filename")
        if self.kind in FILE_KINDS and (
            "/" in self.filename or "\\" in self.filename or self.filename.startswith(".")
        ):
            raise InputError(
                f"WeightEntry.filename must be a plain file name, got {self.filename!r}"
            )
        if self.kind not in FILE_KINDS and not self.hub_id:
            raise InputError(f"WeightEntry {self.name!r} of kind {self.kind!r} needs a hub_id")
        if self.sha256 is not None and (
            len(self.sha256) != 64 or any(c not in "0123456789abcdef" for c in self.sha256)
        ):
            raise InputError(
                f"WeightEntry.sha256 must be 64 lowercase hex digits or None, got {self.sha256!r}"
            )


_META_SAM = "https://github.com/facebookresearch/segment-anything#model-checkpoints"
_UL_ASSETS = "https://github.com/ultralytics/assets/releases/download/v8.3.0/"
_UL_NOTE = (
    "ultralytics checkpoint: a pickle of model objects; loaded only from the registry URL, "
    "the mirror, or a path the user names"
)
_HASH_PREFIX_NOTE = (
    "the hex part of the filename is a short hash prefix chosen by Meta, not a published "
    "sha256 of the file; verified by structure instead"
)


def _sam(name: str, filename: str, size_mb: float) -> WeightEntry:
    return WeightEntry(
        name=name,
        kind="sam",
        url=f"https://dl.fbaipublicfiles.com/segment_anything/{filename}",
        filename=filename,
        sha256=None,
        size_mb=size_mb,
        license="Apache-2.0",
        source=_META_SAM,
        notes=_HASH_PREFIX_NOTE,
    )


def _sam2(name: str, size_mb: float) -> WeightEntry:
    """Meta's SAM 2.1 checkpoint ``<name>.pt`` (``{"model": state_dict}``, video modules
    included; the image path keeps its part)."""
    return WeightEntry(
        name=name,
        kind="sam",
        url=f"https://dl.fbaipublicfiles.com/segment_anything_2/092824/{name}.pt",
        filename=f"{name}.pt",
        sha256=None,
        size_mb=size_mb,
        license="Apache-2.0",
        source="https://github.com/facebookresearch/sam2#model-description",
    )


def _yolo(name: str, size_mb: float, source: str) -> WeightEntry:
    return WeightEntry(
        name=name,
        kind="yolo",
        url=f"{_UL_ASSETS}{name}.pt",
        filename=f"{name}.pt",
        sha256=None,
        size_mb=size_mb,
        license="AGPL-3.0",
        source=source,
        notes=_UL_NOTE,
    )


def _gdino(name: str, size_mb: float) -> WeightEntry:
    page = f"https://huggingface.co/IDEA-Research/{name}"
    return WeightEntry(
        name=name,
        kind="hf",
        url=page,
        filename=None,
        sha256=None,
        size_mb=size_mb,
        license="Apache-2.0",
        source=page,
        hub_id=f"IDEA-Research/{name}",
        notes="downloaded and cached by huggingface_hub (HF_HOME); integrity checked by the hub",
    )


def _clip(model: str, timm_name: str, size_mb: float) -> WeightEntry:
    return WeightEntry(
        name=f"clip-{model}-openai",
        kind="open_clip",
        url=f"https://huggingface.co/timm/{timm_name}.openai",
        filename=None,
        sha256=None,
        size_mb=size_mb,
        license="MIT",
        source="https://github.com/openai/CLIP",
        hub_id=f"{model}/openai",
        notes="downloaded and cached by open_clip via huggingface_hub (HF_HOME)",
    )


def hub_entry(kind: str, hub_id: str) -> WeightEntry:
    """The registry entry of a hub model (``kind`` ``"hf"``: ``"org/name"``; ``"open_clip"``:
    ``"MODEL/TAG"``), or an unregistered one made on the fly so every hub model, registered
    or not, resolves through the same cache and offline rules."""
    try:
        entry = get(hub_id)
    except WeightsError:
        if kind == "hf":
            page, licence = f"https://huggingface.co/{hub_id}", "see the model card"
        else:
            page, licence = "https://github.com/mlfoundations/open_clip", "see open_clip"
        return WeightEntry(
            name=hub_id,
            kind=kind,
            url=page,
            filename=None,
            sha256=None,
            size_mb=None,
            license=licence,
            source=page,
            hub_id=hub_id,
        )
    if entry.kind != kind:
        raise InputError(f"{hub_id!r} is a {entry.kind!r} entry, not a {kind!r} model")
    return entry


_FASTSAM_PAGE = "https://docs.ultralytics.com/models/fast-sam/"
_YOLOV8_PAGE = "https://docs.ultralytics.com/models/yolov8/"

_BUILTIN: tuple[WeightEntry, ...] = (
    _sam("vit_b", "sam_vit_b_01ec64.pth", 375.0),
    _sam("vit_l", "sam_vit_l_0b3195.pth", 1250.0),
    _sam("vit_h", "sam_vit_h_4b8939.pth", 2560.0),
    WeightEntry(
        name="mobile_sam",
        kind="sam",
        url="https://github.com/ChaoningZhang/MobileSAM/raw/master/weights/mobile_sam.pt",
        filename="mobile_sam.pt",
        sha256=None,
        size_mb=40.0,
        license="Apache-2.0",
        source="https://github.com/ChaoningZhang/MobileSAM",
    ),
    _sam2("sam2.1_hiera_tiny", 156.0),
    _sam2("sam2.1_hiera_small", 184.0),
    _sam2("sam2.1_hiera_base_plus", 324.0),
    _sam2("sam2.1_hiera_large", 898.0),
    _yolo("FastSAM-s", 24.0, _FASTSAM_PAGE),
    _yolo("FastSAM-x", 145.0, _FASTSAM_PAGE),
    _yolo("yolov8n-seg", 7.0, _YOLOV8_PAGE),
    _yolo("yolov8s-seg", 24.0, _YOLOV8_PAGE),
    _yolo("yolov8m-seg", 55.0, _YOLOV8_PAGE),
    _yolo("yolov8l-seg", 92.0, _YOLOV8_PAGE),
    _yolo("yolov8x-seg", 144.0, _YOLOV8_PAGE),
    _gdino("grounding-dino-tiny", 690.0),
    _gdino("grounding-dino-base", 930.0),
    _clip("ViT-B-32", "vit_base_patch32_clip_224", 605.0),
    _clip("ViT-B-16", "vit_base_patch16_clip_224", 599.0),
    _clip("ViT-L-14", "vit_large_patch14_clip_224", 1710.0),
)

_REGISTRY: dict[str, WeightEntry] = {e.name: e for e in _BUILTIN}


# --------------------------------------------------------------------------- registry


def list(kind: str | None = None) -> builtins.list[WeightEntry]:  # noqa: A001 - public API name
    """All registry entries, in registration order; only those of ``kind`` when given.

    Args:
        kind: ``None`` or one of ``"sam"``, ``"yolo"``, ``"hf"``, ``"open_clip"``.
    """
    if kind is not None and kind not in KINDS:
        raise InputError(f"kind must be one of {KINDS} or None, got {kind!r}")
    return [e for e in _REGISTRY.values() if kind is None or e.kind == kind]


def get(name: str) -> WeightEntry:
    """The registry entry called ``name`` (a hub id such as ``"IDEA-Research/grounding-dino-tiny"``
    or ``"ViT-B-32/openai"`` also works).

    Raises:
        WeightsError: unknown name; the message lists the valid names.
    """
    if not isinstance(name, str):
        raise TypeError(f"weights name must be a str, got {type(name).__name__}")
    entry = _REGISTRY.get(name)
    if entry is not None:
        return entry
    for e in _REGISTRY.values():
        if e.hub_id is not None and e.hub_id == name:
            return e
    names = builtins.list(_REGISTRY)
    close = difflib.get_close_matches(name, names, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise WeightsError(f"unknown weights {name!r}; valid names: {', '.join(names)}.{hint}")


def register(entry: WeightEntry, *, overwrite: bool = False) -> None:
    """Add ``entry`` to the registry (e.g. a fine-tuned SAM checkpoint on an internal server).

    Raises:
        InputError: an entry with the same name exists and ``overwrite`` is False.
    """
    if not isinstance(entry, WeightEntry):
        raise TypeError(f"register() expects a WeightEntry, got {type(entry).__name__}")
    if entry.name in _REGISTRY and not overwrite:
        raise InputError(f"weights {entry.name!r} are already registered; pass overwrite=True")
    _REGISTRY[entry.name] = entry


def unregister(name: str) -> WeightEntry:
    """Remove the entry called ``name`` and return it (e.g. a temporary test entry).

    Raises:
        WeightsError: no such entry.
    """
    entry = get(name)
    del _REGISTRY[entry.name]
    return entry
