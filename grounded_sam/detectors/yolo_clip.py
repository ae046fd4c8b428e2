"""FastSAM-style detector: YOLOv8-seg proposes instances, CLIP keeps those matching the text.

Unlike FastSAM's text prompt (which returns the single best mask), every proposal whose CLIP
score for a phrase passes ``score_threshold`` is returned, with that phrase as its label.

Score of proposal ``i`` for phrase ``k`` (comparable across images and prompts)::

    s_ik = exp(t * <v_i, e_k>) / (exp(t * <v_i, e_k>) + sum_j exp(t * <v_i, n_j>))

with ``v_i`` the unit CLIP embedding of the masked crop, ``e_k`` the unit (template-averaged)
embedding of the phrase, ``n_j`` those of fixed generic negative prompts ("an object", ...)
and ``t`` CLIP's learned logit scale (100 for OpenAI weights). It depends only on the crop
and the phrase: not on the other proposals, the other phrases or the image.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import math
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from grounded_sam.detectors.base import BaseDetector, Detections, Option, resolve_device
from grounded_sam.errors import InputError, MissingDependency

__all__ = [
    "ClipEncoder",
    "DEFAULT_NEGATIVES",
    "DEFAULT_TEMPLATES",
    "FILL_COLOR",
    "OpenClipEncoder",
    "Proposer",
    "UltralyticsProposer",
    "YoloClipDetector",
    "masked_crop",
]

# CLIP's normalisation mean as uint8: after normalisation the fill is exactly 0 (neutral).
FILL_COLOR = (123, 117, 104)
DEFAULT_TEMPLATES = ("a photo of {}.", "a photo of the {}.", "a cropped photo of {}.")
DEFAULT_NEGATIVES = ("an object", "something", "the background", "a texture")


@runtime_checkable
class Proposer(Protocol):
    """Class-agnostic instance proposals for one image."""

    def propose(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``image`` HxWx3 uint8 RGB -> boxes ``(N, 4)`` float32 XYXY px, masks ``(N, H, W)`` bool."""
        ...


@runtime_checkable
class ClipEncoder(Protocol):
    """Joint image/text embedding model (CLIP-like)."""

    logit_scale: float

    def encode_images(self, crops: Sequence[np.ndarray]) -> Any:
        """``crops``: list of hxwx3 uint8 RGB (sizes differ) -> ``(N, D)`` unit vectors, one call."""
        ...

    def encode_texts(self, texts: Sequence[str]) -> Any:
        """``texts`` -> ``(M, D)`` unit vectors."""
        ...


def _device_arg_for_ultralytics(device: Any) -> str:
    if device.type == "cuda":
        return str(device.index if device.index is not None else 0)
    return device.type


class UltralyticsProposer:
    """YOLOv8-seg / FastSAM proposals through ``ultralytics`` (class-agnostic NMS).

    Args:
        checkpoint: path to an ultralytics ``.pt`` checkpoint. It is a pickle: load only files
            you trust (registry names are downloaded and checksum-verified by ``weights.fetch``).
        conf, iou, imgsz, max_det: ultralytics ``predict`` arguments.
        device: a ``torch.device``.
    """

    def __init__(
        self,
        checkpoint: Path,
        *,
        conf: float,
        iou: float,
        imgsz: int,
        max_det: int,
        device: Any,
    ) -> None:
        YOLO = _import_ultralytics().YOLO
        try:
            with _keep_torch_threads():
                self.model = YOLO(str(checkpoint), task="segment")
        except Exception as e:
            raise InputError(
                f"could not load the YOLO checkpoint {str(checkpoint)!r}: {e}; expected an "
                "ultralytics segmentation checkpoint (yolov8*-seg.pt or FastSAM-*.pt)"
            ) from e
        if getattr(self.model, "task", "segment") != "segment":
            raise InputError(
                f"{str(checkpoint)!r} is a {self.model.task!r} model; expected a segmentation "
                "model (yolov8*-seg or FastSAM) whose masks the crops need"
            )
        self.kwargs = dict(
            conf=conf,
            iou=iou,
            imgsz=imgsz,
            max_det=max_det,
            device=_device_arg_for_ultralytics(device),
            retina_masks=True,  # masks at the original image resolution
            agnostic_nms=True,  # proposals, not classes
            verbose=False,
            save=False,
        )

    def propose(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``image`` HxWx3 uint8 RGB -> boxes ``(N, 4)`` float32 XYXY px, masks ``(N, H, W)`` bool."""
        h, w = image.shape[:2]
        bgr = np.ascontiguousarray(image[:, :, ::-1])  # ultralytics reads arrays as BGR
        with _keep_torch_threads():
            result = self.model.predict(source=bgr, **self.kwargs)[0]
        if result.masks is None or len(result.boxes) == 0:
            return np.zeros((0, 4), np.float32), np.zeros((0, h, w), bool)
        boxes = result.boxes.xyxy.float().cpu().numpy().astype(np.float32)
        masks = result.masks.data
        if tuple(masks.shape[-2:]) != (h, w):  # older releases: masks at inference size
            import torch.nn.functional as F

            masks = F.interpolate(masks[None].float(), size=(h, w), mode="bilinear")[0]
        masks = (masks > 0.5).cpu().numpy()
        return boxes, masks


class OpenClipEncoder:
    """``open_clip`` model scoring crops against text.

    Args:
        model: open_clip architecture name, e.g. ``ViT-B-32``.
        pretrained: an open_clip pretrained tag (``openai``, ``laion2b_s34b_b79k``...) or a local
            state-dict file (``.pt``/``.pth``/``.bin`` via ``torch.load(weights_only=True)``, or
            ``.safetensors``), loaded strictly.
        device: a ``torch.device``.
    """

    def __init__(self, model: str, pretrained: str | os.PathLike, *, device: Any) -> None:
        try:
            import open_clip
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise MissingDependency(
                "the 'yolo-clip' detector needs open_clip; install it with "
                "pip install 'open_clip_torch>=2.24'"
            ) from e
        import torch

        if not isinstance(model, str) or model not in open_clip.list_models():
            raise InputError(
                f"unknown open_clip model {model!r}; known models include "
                f"{', '.join(m for m in open_clip.list_models() if m.startswith('ViT-B'))}, ... "
                "(see open_clip.list_models())"
            )
        self.device = device
        path = Path(os.path.expanduser(os.fspath(pretrained)))
        is_path = (
            isinstance(pretrained, os.PathLike)
            or path.exists()
            or any(s in str(pretrained) for s in ("/", "\\", ".pt", ".bin", ".safetensors"))
        )
        if is_path:
            with _quiet_random_init_warning():  # weights are loaded right below
                net = open_clip.create_model(model, pretrained=None, device="cpu")
            state = self._load_state_dict(path)
            missing, unexpected = self._check_keys(net, state)
            if missing or unexpected:
                raise InputError(
                    f"state dict {str(path)!r} does not match open_clip {model!r}: "
                    f"missing keys {missing[:10]}{'...' if len(missing) > 10 else ''}, "
                    f"unexpected keys {unexpected[:10]}{'...' if len(unexpected) > 10 else ''}"
                )
            try:
                net.load_state_dict(state, strict=True)
            except RuntimeError as e:
                raise InputError(
                    f"state dict {str(path)!r} does not fit open_clip {model!r}: {e}"
                ) from e
        else:
            tags = open_clip.list_pretrained_tags_by_model(model)
            if pretrained not in tags:
                raise InputError(
                    f"unknown clip_pretrained tag {pretrained!r} for {model!r}; known tags: "
                    f"{', '.join(tags) or '(none)'}, or pass a local state-dict path"
                )
            from grounded_sam import hub

            weights_file = hub.fetch_open_clip(model, str(pretrained))
            try:
                extra = {}
                if "require_pretrained" in inspect.signature(open_clip.create_model).parameters:
                    extra["require_pretrained"] = True  # fail loudly instead of random weights
                net = open_clip.create_model(
                    model, pretrained=str(weights_file), device="cpu", **extra
                )
            except Exception as e:
                raise InputError(
                    f"could not load open_clip {model!r} weights {pretrained!r} from "
                    f"{str(weights_file)!r} ({type(e).__name__}: "
                    f"{str(e).splitlines()[0][:300] if str(e) else ''}); delete the file to "
                    "download it again, or pass clip_pretrained=<local state-dict file>"
                ) from e
        self.model = net.to(device).eval()
        self.tokenizer = open_clip.get_tokenizer(model)
        cfg = open_clip.get_model_preprocess_cfg(self.model)
        size = cfg.get("size", 224)
        self.image_size = int(size if isinstance(size, int) else size[0])
        self.mean = torch.tensor(cfg.get("mean", (0.48145466, 0.4578275, 0.40821073)))
        self.std = torch.tensor(cfg.get("std", (0.26862954, 0.26130258, 0.27577711)))
        self.fill_color = tuple(int(round(float(m) * 255)) for m in self.mean)
        self.logit_scale = float(self.model.logit_scale.detach().exp().item())

    @staticmethod
    def _load_state_dict(path: Path) -> dict[str, Any]:
        """A CLIP state dict from a file, loaded safely by the weights hub (``.pt``/``.bin``
        with ``weights_only=True``, or ``.safetensors``); a DDP ``module.`` prefix is
        dropped."""
        from grounded_sam import hub

        if not path.is_file():
            raise InputError(f"CLIP state-dict file not found: {str(path)!r}")
        state = hub.load_state_dict(path)
        if state and all(k.startswith("module.") for k in state):  # saved from DDP
            state = {k[len("module.") :]: v for k, v in state.items()}
        return state

    @staticmethod
    def _check_keys(net: Any, state: dict[str, Any]) -> tuple[list[str], list[str]]:
        expected = set(net.state_dict())
        return sorted(expected - set(state)), sorted(set(state) - expected)

    def _square(self, crop: np.ndarray) -> np.ndarray:
        """hxwx3 uint8 crop -> (S, S, 3) uint8: padded to a square with ``fill_color``, then
        resized (bicubic, PIL) to the model's input size ``S``."""
        from PIL import Image

        h, w = crop.shape[:2]
        side = max(h, w)
        square = np.empty((side, side, 3), np.uint8)
        square[:] = self.fill_color
        y0, x0 = (side - h) // 2, (side - w) // 2
        square[y0 : y0 + h, x0 : x0 + w] = crop
        pil = Image.fromarray(square).resize((self.image_size, self.image_size), Image.BICUBIC)
        return np.asarray(pil)

    def encode_images(self, crops: Sequence[np.ndarray]) -> Any:
        """Crops (hxwx3 uint8 RGB) -> ``(N, D)`` float32 unit embeddings, in one forward pass.

        Each crop is padded to a square with ``fill_color`` (no aspect distortion, no centre
        crop cutting the object) and resized to the model's input size.
        """
        import torch
        import torch.nn.functional as F

        # resized in uint8 one crop at a time, normalised once for the whole batch: a float
        # tensor per crop cost ~15 ms each in small-op overhead (2 s for 119 crops)
        stack = torch.from_numpy(np.stack([self._square(c) for c in crops]))
        batch = stack.to(self.device).permute(0, 3, 1, 2).float().div_(255.0)
        mean = self.mean.to(batch.device)[None, :, None, None]
        std = self.std.to(batch.device)[None, :, None, None]
        batch = batch.sub_(mean).div_(std)
        with torch.inference_mode():
            emb = self.model.encode_image(batch)
        return F.normalize(emb.float(), dim=-1).cpu()

    def encode_texts(self, texts: Sequence[str]) -> Any:
        """Strings -> ``(M, D)`` float32 unit embeddings."""
        import torch
        import torch.nn.functional as F

        tokens = self.tokenizer(list(texts)).to(self.device)
        with torch.inference_mode():
            emb = self.model.encode_text(tokens)
        return F.normalize(emb.float(), dim=-1).cpu()


class _DropRandomInitWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "No pretrained weights loaded" not in record.getMessage()


@contextlib.contextmanager
def _quiet_random_init_warning() -> Iterator[None]:
    """Hide open_clip's 'initialized randomly' warning while we build a model to load into."""
    root = logging.getLogger()
    flt = _DropRandomInitWarning()
    root.addFilter(flt)
    try:
        yield
    finally:
        root.removeFilter(flt)


def masked_crop(
    image: np.ndarray, box: np.ndarray, mask: np.ndarray, fill: Sequence[int] = FILL_COLOR
) -> np.ndarray:
    """Crop ``image`` to ``box`` with every pixel outside ``mask`` set to ``fill``.

    Args:
        image: HxWx3 uint8 RGB.
        box: (4,) XYXY in pixels; rounded outwards and clipped to the image (at least 1 px).
        mask: HxW bool instance mask in the same frame as ``image``.

    Returns:
        hxwx3 uint8 crop (a copy).
    """
    h, w = image.shape[:2]
    x0 = int(np.clip(math.floor(float(box[0])), 0, w - 1))
    y0 = int(np.clip(math.floor(float(box[1])), 0, h - 1))
    x1 = int(np.clip(math.ceil(float(box[2])), x0 + 1, w))
    y1 = int(np.clip(math.ceil(float(box[3])), y0 + 1, h))
    crop = image[y0:y1, x0:x1].copy()
    crop[~mask[y0:y1, x0:x1]] = np.asarray(fill, dtype=np.uint8)
    return crop


@contextlib.contextmanager
def _scoped_env(name: str, value: str) -> Iterator[None]:
    """Set an environment variable for the duration of a block, unless the user set it."""
    if name in os.environ:
        yield
        return
    os.environ[name] = value
    try:
        yield
    finally:
        os.environ.pop(name, None)


def _import_ultralytics() -> Any:
    """``import ultralytics`` without letting it touch the network.

    ultralytics decides at import time whether it is online (a DNS probe that drives update
    checks and telemetry) from ``YOLO_OFFLINE``; it is set only while the import runs, so the
    process environment is left as it was (a user's own ``YOLO_OFFLINE`` wins).

    Its import also sets ``OMP_NUM_THREADS=1`` when unset; PyTorch reads that variable for
    every thread it has not computed on yet, so every later worker thread (the app's request
    threads, the labelling engine's) ran single-threaded, about 2x slower on 2 cores. The
    variable is removed again unless the user had set it.
    """
    omp = os.environ.get("OMP_NUM_THREADS")
    try:
        with _scoped_env("YOLO_OFFLINE", "1"):
            import ultralytics
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise MissingDependency(
            "the 'yolo-clip' detector needs ultralytics; install it with "
            "pip install 'ultralytics>=8.1'"
        ) from e
    finally:
        if omp is None:
            os.environ.pop("OMP_NUM_THREADS", None)
    return ultralytics


def _check_unit(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise InputError(f"{name} must be a number in [0, 1], got {value!r}")
    return float(value)


def _check_positive_int(name: str, value: Any, *, allow_none: bool = False) -> int | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InputError(
            f"{name} must be a positive integer{' or None' if allow_none else ''}, got {value!r}"
        )
    return value


@contextlib.contextmanager
def _keep_torch_threads() -> Iterator[None]:
    """Undo ultralytics' ``torch.set_num_threads``: on CPU its ``select_device`` sets the
    process-wide thread count to ``min(8, cpu_count - 1)`` (1 on a 2-core machine), which
    would slow every later SAM and CLIP pass in the process."""
    import torch

    threads = torch.get_num_threads()
    try:
        yield
    finally:
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)


def _resolve_yolo(yolo: str | os.PathLike) -> Path:
    path = Path(os.path.expanduser(os.fspath(yolo)))
    if path.is_file():
        return path
    text = os.fspath(yolo)
    looks_like_path = isinstance(yolo, os.PathLike) or any(
        s in text for s in ("/", "\\", ".pt", ".pth")
    )
    if looks_like_path:
        raise InputError(
            f"YOLO checkpoint not found: {text!r}; pass an existing .pt file or a registry name "
            "such as 'FastSAM-s', 'FastSAM-x', 'yolov8n-seg' ... 'yolov8x-seg'"
        )
    from grounded_sam import weights  # lazy: registry, cache and verified download

    return Path(weights.fetch(text))


class YoloClipDetector(BaseDetector):
    """Boxes (and masks) from YOLOv8-seg / FastSAM proposals re-ranked by CLIP.

    Args:
        yolo: a weights-registry name (``FastSAM-s``, ``FastSAM-x``, ``yolov8n-seg`` ...
            ``yolov8x-seg``, fetched with ``grounded_sam.weights.fetch``), a path to an ultralytics
            ``.pt`` segmentation checkpoint, or any object with ``propose(image) -> (boxes, masks)``.
        clip: open_clip model name (default ``ViT-B-32``) or any object with ``encode_images``,
            ``encode_texts`` and ``logit_scale`` (see :class:`ClipEncoder`).
        clip_pretrained: open_clip pretrained tag (default ``openai``) or a local state-dict file.
        conf, iou, imgsz, max_det: YOLO proposal confidence, NMS IoU (class-agnostic), inference
            size and maximum number of proposals.
        score_threshold: keep (proposal, phrase) pairs whose CLIP score (module docstring) is
            ``>= score_threshold``.
        top_k: keep at most this many detections per phrase (highest scores); ``None`` = all.
        templates: prompt templates averaged per phrase (``"{}"`` is replaced by the phrase).
        negatives: generic prompts each phrase competes with in the score's softmax.
        device: ``None`` -> ``cuda`` if available else ``cpu``.
    """

    name = "yolo-clip"
    options = (
        Option(
            "yolo", str, "FastSAM-s", "YOLO-seg: registry name or .pt file", metavar="NAME|PATH"
        ),
        Option("clip", str, "ViT-B-32", "open_clip model name", metavar="NAME"),
        Option(
            "clip_pretrained",
            str,
            "openai",
            "open_clip pretrained tag or state-dict file",
            metavar="TAG|PATH",
        ),
        Option(
            "score_threshold",
            float,
            0.5,
            "minimum detection score (CLIP score against generic prompts)",
            flag="--box-threshold",
            unit=True,
            metavar="F",
        ),
        Option("conf", float, 0.25, "YOLO proposal confidence", unit=True, metavar="F"),
        Option("iou", float, 0.7, "YOLO NMS IoU (class-agnostic)", unit=True, metavar="F"),
        Option("imgsz", int, 640, "YOLO inference size", metavar="N"),
        Option("max_det", int, 100, "most YOLO proposals", metavar="N"),
        Option("top_k", int, None, "keep at most K detections per phrase", metavar="K"),
    )
    returns_masks = True
    accepts_device = True

    def __init__(
        self,
        yolo: Any = "FastSAM-s",
        *,
        clip: Any = "ViT-B-32",
        clip_pretrained: str | os.PathLike = "openai",
        conf: float = 0.25,
        iou: float = 0.7,
        imgsz: int = 640,
        max_det: int = 100,
        score_threshold: float = 0.5,
        top_k: int | None = None,
        templates: Sequence[str] = DEFAULT_TEMPLATES,
        negatives: Sequence[str] = DEFAULT_NEGATIVES,
        device: Any = None,
    ) -> None:
        conf = _check_unit("conf", conf)
        iou = _check_unit("iou", iou)
        imgsz = _check_positive_int("imgsz", imgsz)
        max_det = _check_positive_int("max_det", max_det)
        self.score_threshold = _check_unit("score_threshold", score_threshold)
        self.top_k = _check_positive_int("top_k", top_k, allow_none=True)
        if (
            isinstance(templates, str)
            or not templates
            or not all(isinstance(t, str) and t.count("{}") == 1 for t in templates)
        ):
            raise InputError(
                f"templates must be a non-empty list of strings each containing one '{{}}', got {templates!r}"
            )
        if (
            isinstance(negatives, str)
            or not negatives
            or not all(isinstance(n, str) and n.strip() for n in negatives)
        ):
            raise InputError(
                f"negatives must be a non-empty list of non-empty strings, got {negatives!r}"
            )
        self.templates = tuple(templates)
        self.negatives = tuple(negatives)
        self.device = resolve_device(device)

        if isinstance(yolo, (str, os.PathLike)):
            self.proposer: Proposer = UltralyticsProposer(
                _resolve_yolo(yolo),
                conf=conf,
                iou=iou,
                imgsz=imgsz,
                max_det=max_det,
                device=self.device,
            )
        elif callable(getattr(yolo, "propose", None)):
            self.proposer = yolo
        else:
            raise TypeError(
                "yolo must be a registry name, a .pt path or an object with propose(image), "
                f"got {type(yolo).__name__}"
            )
        if isinstance(clip, str):
            if not isinstance(clip_pretrained, (str, os.PathLike)):
                raise TypeError(
                    "clip_pretrained must be an open_clip tag or a state-dict path, got "
                    f"{type(clip_pretrained).__name__}"
                )
            self.encoder: ClipEncoder = OpenClipEncoder(clip, clip_pretrained, device=self.device)
        elif all(callable(getattr(clip, m, None)) for m in ("encode_images", "encode_texts")):
            self.encoder = clip
        else:
            raise TypeError(
                "clip must be an open_clip model name or an object with encode_images/encode_texts, "
                f"got {type(clip).__name__}"
            )
        self.fill_color = tuple(getattr(self.encoder, "fill_color", FILL_COLOR))
        self._text_cache: dict[str, np.ndarray] = {}

    def _text_embeddings(self, prompts: Sequence[str]) -> np.ndarray:
        """``(len(prompts), D)`` unit embeddings, each the renormalised mean over templates."""
        todo = [p for p in dict.fromkeys(prompts) if p not in self._text_cache]
        if todo:
            texts = [t.format(p) for p in todo for t in self.templates]
            emb = np.asarray(self.encoder.encode_texts(texts), dtype=np.float32)
            emb = emb.reshape(len(todo), len(self.templates), -1).mean(axis=1)
            emb /= np.linalg.norm(emb, axis=-1, keepdims=True).clip(min=1e-12)
            for p, e in zip(todo, emb, strict=True):
                self._text_cache[p] = e
        return np.stack([self._text_cache[p] for p in prompts])

    def score(self, image_emb: np.ndarray, phrases: Sequence[str]) -> np.ndarray:
        """CLIP scores ``(N, K)`` in [0, 1] of ``N`` unit crop embeddings against ``K`` phrases.

        ``s_ik = sigmoid(t <v_i, e_k> - logsumexp_j t <v_i, n_j>)``: the softmax probability of
        phrase ``k`` against the negative prompts alone (see the module docstring).
        """
        scale = float(getattr(self.encoder, "logit_scale", 100.0))
        pos = scale * image_emb @ self._text_embeddings(phrases).T  # (N, K)
        neg = scale * image_emb @ self._text_embeddings(self.negatives).T  # (N, M)
        m = neg.max(axis=1, keepdims=True)
        lse = m + np.log(np.exp(neg - m).sum(axis=1, keepdims=True))  # (N, 1)
        z = np.clip(pos - lse, -80.0, 80.0)
        return (1.0 / (1.0 + np.exp(-z))).astype(np.float32)

    def detect_phrases(self, image: np.ndarray, phrases: list[str]) -> Detections:
        """All proposals matching any of the phrases (see :meth:`BaseDetector.detect`).

        Returns:
            Detections with boxes ``(N, 4)`` float32 XYXY px, CLIP scores ``(N,)`` in [0, 1],
            labels (one phrase each; a proposal matching two phrases appears twice) and the
            YOLO masks ``(N, H, W)`` bool at the original resolution; sorted by score, descending.
        """
        img = image
        h, w = img.shape[:2]
        boxes, masks = self.proposer.propose(img)
        boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
        masks = np.asarray(masks, dtype=bool)
        if masks.shape != (boxes.shape[0], h, w):
            raise RuntimeError(
                f"proposer returned masks of shape {masks.shape} for {boxes.shape[0]} boxes on a "
                f"{h}x{w} image; expected ({boxes.shape[0]}, {h}, {w})"
            )
        nonempty = masks.any(axis=(1, 2))  # empty masks would give blank crops
        boxes, masks = boxes[nonempty], masks[nonempty]
        if boxes.shape[0] == 0:
            return Detections.empty((h, w))
        crops = [masked_crop(img, b, m, self.fill_color) for b, m in zip(boxes, masks, strict=True)]
        image_emb = np.asarray(self.encoder.encode_images(crops), dtype=np.float32)
        scores = self.score(image_emb, phrases)  # (N, K)
        rows, cols, vals = [], [], []
        for k in range(len(phrases)):
            idx = np.flatnonzero(scores[:, k] >= self.score_threshold)
            idx = idx[np.argsort(-scores[idx, k], kind="stable")]
            if self.top_k is not None:
                idx = idx[: self.top_k]
            rows += idx.tolist()
            cols += [k] * len(idx)
            vals += scores[idx, k].tolist()
        if not rows:
            return Detections.empty((h, w))
        order = np.argsort(-np.asarray(vals), kind="stable")
        rows_a, cols_a = np.asarray(rows)[order], np.asarray(cols)[order]
        return Detections(
            boxes=boxes[rows_a],
            scores=np.clip(np.asarray(vals, dtype=np.float32)[order], 0.0, 1.0),
            labels=[phrases[k] for k in cols_a],
            masks=masks[rows_a],
        )

    def __repr__(self) -> str:
        return (
            f"YoloClipDetector(score_threshold={self.score_threshold}, top_k={self.top_k}, "
            f"device={str(self.device)!r})"
        )
