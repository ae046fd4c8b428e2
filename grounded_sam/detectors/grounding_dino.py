"""Grounding DINO text-to-box detector, LangSAM / Grounded-SAM style.

transformers loads the model, tokenises the prompt, preprocesses the image and post-processes
the outputs (``GroundingDinoProcessor.post_process_grounded_object_detection``, same
thresholds: score = max sigmoid token logit of a query). The forward pass runs
:class:`grounded_sam.detectors.gdino_fast.FastGroundingDino` on the same weights (same outputs
to float rounding, about half the time or less on CPU; ``docs/grounding-dino-speed.md``), or
transformers' own model for configs the fast path does not implement (a one-line note says
so). Each prompt's text features are computed once and reused for every image.

Labels are not the decoded token span transformers returns (which can read
``"a cat. a dog. [SEP]"``): each box gets the asked-for phrase whose own tokens score highest
for it.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
import sys
import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from grounded_sam.detectors.base import BaseDetector, Detections, Option, resolve_device
from grounded_sam.errors import InputError, MissingDependency

__all__ = ["GroundingDinoDetector", "DEFAULT_MODEL"]

DEFAULT_MODEL = "IDEA-Research/grounding-dino-tiny"
_INSTALL_HINT = "pip install 'transformers>=4.51,<6'"
_LOG = logging.getLogger(__name__)
# Prompts whose text features are kept per detector (a few KB to a few MB each); a labelling
# run with many captions cycles through them in order, so keep a generous number.
_TEXT_CACHE_SIZE = 64


@dataclass(frozen=True)
class _EncodedPrompt:
    """One chunk of phrases, tokenised and encoded once (see ``_encoded``)."""

    phrases: tuple[str, ...]
    input_ids: Any  # (1, T) int64 tensor on the detector's device
    owners: list[list[int]]  # per phrase, the indices of its tokens
    text: Any  # TextFeatures


@contextlib.contextmanager
def _quiet_loading_bar() -> Iterator[None]:
    """transformers 5 draws a "Loading weights" bar for a local folder, which only fills logs:
    off while loading unless stderr is a terminal (restored afterwards)."""
    from transformers.utils import logging as hf_logging

    if sys.stderr.isatty() or not hf_logging.is_progress_bar_enabled():
        yield
        return
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.enable_progress_bar()


def _import_transformers() -> Any:
    try:
        import transformers
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise MissingDependency(
            f"the 'grounding-dino' detector needs transformers; install it with {_INSTALL_HINT}"
        ) from e
    return transformers


def _looks_like_path(model: str) -> bool:
    """A hub id is ``name`` or ``org/name``; anything else is meant as a local path."""
    return (
        model.startswith((".", "/", "~"))
        or "\\" in model
        or model.count("/") > 1
        or os.path.isabs(model)
    )


def _one_precision(precision: Any, detector_precision: Any) -> Any:
    """``precision`` unless ``detector_precision`` (its declared alias) is given instead."""
    if detector_precision is None:
        return precision
    if precision != "fp32" and precision != detector_precision:
        raise InputError(
            f"precision={precision!r} and detector_precision={detector_precision!r} disagree; "
            "give one of them"
        )
    return detector_precision


def _check_threshold(name: str, value: Any, *, allow_none: bool = False) -> float | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise InputError(f"{name} must be a number in [0, 1], got {value!r}")
    return float(value)


class GroundingDinoDetector(BaseDetector):
    """Open-vocabulary boxes from Grounding DINO.

    Args:
        model: a weights-registry name (``grounding-dino-tiny``, ``grounding-dino-base``), a
            Hugging Face hub id (default ``IDEA-Research/grounding-dino-tiny``), both resolved
            through :func:`grounded_sam.hub.fetch_hf` (cached, offline-aware), or a local
            directory written by ``save_pretrained`` (model + processor).
        box_threshold: keep queries whose score (max sigmoid token logit) is ``> box_threshold``.
        text_threshold: passed to transformers' post-processing, where it only selects tokens
            of the decoded label span; labels here are whole phrases chosen by their token
            scores, so it changes neither boxes, scores nor labels. Kept for API parity with
            LangSAM / Grounded-SAM configs.
        nms_threshold: ``None`` (default) keeps the post-processed boxes as they are; a value in
            ``[0, 1]`` runs class-aware NMS (per label) at that IoU.
        device: ``None`` -> ``cuda`` if available else ``cpu``.
        precision: ``"fp32"`` (default: transformers' outputs to float rounding) or an opt-in
            faster, less exact mode: ``"int8"`` (dynamic int8 linear layers, CPU only),
            ``"bf16"`` / ``"fp16"`` (autocast; for GPUs). Their measured effect on boxes is in
            ``docs/grounding-dino-speed.md``; check it on your data before relying on one.
        detector_precision: the same as ``precision``, under the name the detector declares
            (``--detector-precision``; ``GroundedSAM(..., detector_precision="int8")``, whose
            own ``precision`` is the SAM's). Give one of the two.

    Attributes:
        model: transformers' ``GroundingDinoForObjectDetection`` (fp32, the loaded weights).
        runner: what runs the forward pass: ``FastGroundingDino`` or, for configs it does not
            implement, ``HFGroundingDinoRunner`` (transformers' model behind the same calls).
        fast: whether ``runner`` is the fast implementation.
        max_batch: most same-size images per forward pass in :meth:`detect_batch` (1 on CPU,
            where a batch is no faster; 4 on GPUs).

    Raises:
        InputError: bad thresholds, an unknown precision (or int8 on a GPU), or a missing
            local directory.
        WeightsError: a hub model that is neither cached nor downloadable (offline: at once).
    """

    name = "grounding-dino"
    options = (
        Option(
            "model",
            str,
            DEFAULT_MODEL,
            "Grounding DINO: registry name, hub id or local save_pretrained folder",
            flag="--detector-model",
            metavar="ID|DIR",
        ),
        Option("box_threshold", float, 0.3, "minimum detection score", unit=True, metavar="F"),
        Option("text_threshold", float, 0.25, "minimum phrase-token score", unit=True, metavar="F"),
        Option(
            "nms_threshold",
            float,
            None,
            "class-aware NMS at this IoU (default: none)",
            unit=True,
            metavar="F",
        ),
        # Declared as detector_precision: GroundedSAM(..., precision=) and every CLI's
        # --precision are the SAM's, and detector options travel next to them as kwargs.
        Option(
            "detector_precision",
            str,
            "fp32",
            "fp32 (default, exact) or an opt-in faster mode: int8 (CPU), bf16/fp16 (GPU)",
            flag="--detector-precision",
            metavar="P",
        ),
    )
    returns_masks = False
    accepts_device = True

    def __init__(
        self,
        model: str | os.PathLike = DEFAULT_MODEL,
        *,
        box_threshold: float = 0.3,
        text_threshold: float = 0.25,
        nms_threshold: float | None = None,
        device: Any = None,
        precision: str = "fp32",
        detector_precision: str | None = None,
    ) -> None:
        precision = _one_precision(precision, detector_precision)
        self._check_options(box_threshold, text_threshold, nms_threshold, device, precision)
        if not isinstance(model, (str, os.PathLike)):
            raise InputError(
                f"model must be a hub id or a local directory path, got {type(model).__name__}"
            )
        transformers = _import_transformers()

        source = self._resolve_source(model)
        folder = source if isinstance(source, Path) else self._fetch(source)
        try:
            loaders = (transformers.AutoProcessor, transformers.AutoModelForZeroShotObjectDetection)
            with _quiet_loading_bar():
                self.processor, self.model = (cls.from_pretrained(folder) for cls in loaders)
        except Exception as e:
            raise InputError(
                f"could not load a Grounding DINO model from {str(folder)!r} "
                f"({type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}). "
                "Expected the output of model.save_pretrained(dir) and "
                "processor.save_pretrained(dir)"
            ) from e
        self._setup(str(source))

    @classmethod
    def from_transformers(
        cls,
        model: Any,
        processor: Any,
        *,
        box_threshold: float = 0.3,
        text_threshold: float = 0.25,
        nms_threshold: float | None = None,
        device: Any = None,
        precision: str = "fp32",
        detector_precision: str | None = None,
    ) -> GroundingDinoDetector:
        """The detector around an already loaded transformers ``GroundingDinoForObjectDetection``
        and its ``GroundingDinoProcessor`` (moved to ``device``; fp32/bf16/fp16 share its
        weights, int8 quantises a copy). Options as in the constructor."""
        precision = _one_precision(precision, detector_precision)
        det = cls.__new__(cls)
        det._check_options(box_threshold, text_threshold, nms_threshold, device, precision)
        det.processor, det.model = processor, model
        det._setup(f"<{type(model).__name__} object>")
        return det

    def _check_options(
        self,
        box_threshold: Any,
        text_threshold: Any,
        nms_threshold: Any,
        device: Any,
        precision: Any,
    ) -> None:
        from grounded_sam.model.precision import check_precision

        self.box_threshold = _check_threshold("box_threshold", box_threshold)
        self.text_threshold = _check_threshold("text_threshold", text_threshold)
        self.nms_threshold = _check_threshold("nms_threshold", nms_threshold, allow_none=True)
        self.device = resolve_device(device)
        self.precision = check_precision(precision, self.device)

    def _setup(self, name: str) -> None:
        """Everything after loading: device, fast runner, tokenizer limits, caches."""
        from grounded_sam.detectors.gdino_fast import (
            FastGroundingDino,
            HFGroundingDinoRunner,
            UnsupportedGroundingDinoError,
        )

        self.model.to(self.device).eval()
        self.model_name = name
        try:
            self.runner: Any = FastGroundingDino.from_hf(self.model, self.precision)
        except UnsupportedGroundingDinoError as e:
            # One line, then transformers' own forward (same outputs, its speed).
            _LOG.warning("grounding-dino: %s; running transformers' model instead (slower)", e)
            self.runner = HFGroundingDinoRunner(self.model, self.precision)
        self.fast = isinstance(self.runner, FastGroundingDino)
        self.max_batch = 1 if self.device.type == "cpu" else 4
        self.tokenizer = self.processor.tokenizer
        self.max_text_len = self._text_token_limit()
        params = inspect.signature(self.processor.post_process_grounded_object_detection).parameters
        # transformers renamed box_threshold -> threshold (4.51); support both spellings.
        self._box_kw = "threshold" if "threshold" in params else "box_threshold"
        self._prompts: OrderedDict[tuple[str, ...], _EncodedPrompt] = OrderedDict()
        self._prompts_lock = threading.Lock()  # the app may detect from several threads
        self.text_encodings = 0  # prompts encoded so far (cache misses), for tests and logs

    @staticmethod
    def _fetch(model: str) -> Path:
        """The local snapshot of a registry name or hub id, through the weights hub (cached
        copy first; offline mode fails at once, naming the model and how to fetch it)."""
        from grounded_sam import hub

        return hub.fetch_hf(model)

    @staticmethod
    def _resolve_source(model: str | os.PathLike) -> str | Path:
        path = Path(os.path.expanduser(os.fspath(model)))
        if path.is_dir():
            return path
        if path.exists():
            raise InputError(
                f"model {str(model)!r} is a file; expected a directory written by save_pretrained "
                "or a hub id like 'IDEA-Research/grounding-dino-tiny'"
            )
        if isinstance(model, os.PathLike) or _looks_like_path(str(model)):
            raise InputError(
                f"Grounding DINO model directory not found: {str(model)!r}; expected a directory "
                "written by save_pretrained or a hub id like 'IDEA-Research/grounding-dino-tiny'"
            )
        return str(model)

    def _text_token_limit(self) -> int:
        """Most tokens (specials included) the text encoder sees without truncating."""
        limits = [int(getattr(self.model.config, "max_text_len", 256))]
        text_cfg = getattr(self.model.config, "text_config", None)
        if text_cfg is not None and getattr(text_cfg, "max_position_embeddings", None):
            limits.append(int(text_cfg.max_position_embeddings))
        tok_max = getattr(self.tokenizer, "model_max_length", None)
        if isinstance(tok_max, int) and 0 < tok_max < 1_000_000:
            limits.append(tok_max)
        return min(limits)

    # ----------------------------------------------------------------------------- text
    @staticmethod
    def _prompt(phrases: Sequence[str]) -> tuple[str, list[tuple[int, int]]]:
        """``"a cat. a dog."`` and each phrase's character span in it."""
        text, spans = "", []
        for phrase in phrases:
            if text:
                text += " "
            spans.append((len(text), len(text) + len(phrase)))
            text += phrase + "."
        return text, spans

    def _count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=True)["input_ids"])

    def chunk_phrases(self, phrases: Sequence[str]) -> list[list[str]]:
        """Greedily group whole phrases into prompts that fit the text encoder's token limit.

        Raises:
            InputError: a single phrase is too long to fit on its own.
        """
        chunks: list[list[str]] = []
        current: list[str] = []
        for phrase in phrases:
            if self._count_tokens(self._prompt([phrase])[0]) > self.max_text_len:
                raise InputError(
                    f"phrase {phrase!r} alone is longer than the text encoder's limit of "
                    f"{self.max_text_len} tokens; shorten it"
                )
            if (
                current
                and self._count_tokens(self._prompt([*current, phrase])[0]) > self.max_text_len
            ):
                chunks.append(current)
                current = []
            current.append(phrase)
        chunks.append(current)
        return chunks

    def phrase_token_indices(self, phrases: Sequence[str]) -> tuple[list[int], list[list[int]]]:
        """Token ids of the prompt for ``phrases`` and, per phrase, the indices of its tokens.

        Indices count the leading ``[CLS]``; separators (``"."``) and specials belong to no phrase.
        """
        text, spans = self._prompt(phrases)
        if getattr(self.tokenizer, "is_fast", False):
            enc = self.tokenizer(text, add_special_tokens=True, return_offsets_mapping=True)
            ids = list(enc["input_ids"])
            owners: list[list[int]] = [[] for _ in phrases]
            for t, (s, e) in enumerate(enc["offset_mapping"]):
                if e <= s:
                    continue  # special token
                for k, (ps, pe) in enumerate(spans):
                    if s >= ps and e <= pe:
                        owners[k].append(t)
                        break
        else:  # slow tokenizer: phrases and "." tokenise independently for BERT-style vocabularies
            ids = [self.tokenizer.cls_token_id]
            owners = []
            for phrase in phrases:
                p_ids = self.tokenizer(phrase, add_special_tokens=False)["input_ids"]
                owners.append(list(range(len(ids), len(ids) + len(p_ids))))
                ids += p_ids + self.tokenizer(".", add_special_tokens=False)["input_ids"]
            ids.append(self.tokenizer.sep_token_id)
        for phrase, idx in zip(phrases, owners, strict=True):
            if not idx:
                raise RuntimeError(
                    f"internal error: phrase {phrase!r} maps to no tokens in {text!r}"
                )
        return ids, owners

    # ----------------------------------------------------------------------------- detect
    def detect_phrases(self, image: np.ndarray, phrases: list[str]) -> Detections:
        """Find boxes for every phrase (see :meth:`BaseDetector.detect`).

        The model sees the phrases lower-cased and joined as ``"a cat. a dog."`` (Grounding
        DINO's caption form; its BERT tokenizer is uncased); each box is labelled with the
        phrase as given.

        Returns:
            Detections: boxes ``(N, 4)`` float32 XYXY in original-image pixels, scores ``(N,)``,
            labels (one of the phrases each), ``masks=None``. Boxes of several chunks of a long
            prompt are concatenated in chunk order.
        """
        return self.detect_batch([image], phrases)[0]

    def detect_batch(
        self, images: Sequence[np.ndarray], phrases: Sequence[str]
    ) -> list[Detections]:
        """:meth:`detect_phrases` of each ``(H, W, 3)`` uint8 RGB image with the same phrases.

        The prompt is tokenised and its text features computed once (and kept for later
        calls); each image is preprocessed once for all chunks of a long prompt. Images of
        one preprocessed size run ``max_batch`` per forward pass (on GPUs; on CPU a batch is
        no faster, so one by one). Images of different sizes never share a pass: transformers'
        processor would zero-pad them to one size, and padding changes what the backbone sees
        near the border, so the boxes would differ from one-by-one calls.

        Returns:
            one :class:`Detections` per image, in order, equal to one-by-one calls (a batched
            pass differs from single passes by float rounding only).
        """
        import torch

        phrases = list(phrases)
        lowered = [p.lower() for p in phrases]
        label_of = dict(zip(lowered, phrases, strict=True))
        chunks = [self._encoded(chunk) for chunk in self.chunk_phrases(lowered)]
        pixels = [self._pixels(im) for im in images]
        groups: dict[tuple[int, int], list[int]] = {}
        for i, (values, _) in enumerate(pixels):
            groups.setdefault(tuple(values.shape[-2:]), []).append(i)
        parts: list[list[Detections]] = [[] for _ in images]
        for enc in chunks:
            for members in groups.values():
                for start in range(0, len(members), self.max_batch):
                    batch = members[start : start + self.max_batch]
                    values = torch.cat([pixels[i][0] for i in batch])
                    masks = torch.cat([pixels[i][1] for i in batch])
                    out = self.runner(values, pixel_mask=masks, text_features=enc.text)
                    for row, i in enumerate(batch):
                        parts[i].append(
                            self._postprocess(
                                out.logits[row : row + 1],
                                out.pred_boxes[row : row + 1],
                                enc,
                                images[i].shape[:2],
                            )
                        )
        results = []
        for image_parts in parts:
            dets = Detections.concatenate(image_parts)
            if self.nms_threshold is not None and len(dets):
                dets = self._nms(dets, lowered)
            dets.labels = [label_of[lbl] for lbl in dets.labels]
            results.append(dets)
        return results

    def _pixels(self, image: np.ndarray) -> tuple[Any, Any]:
        """The processor's ``pixel_values`` ``(1, 3, H', W')`` float32 (resized, normalised)
        and ``pixel_mask`` ``(1, H', W')`` (all ones: one image, no padding), on the device."""
        img = image if image.flags.writeable else image.copy()  # the processor wants writable
        inputs = self.processor.image_processor(
            images=img, return_tensors="pt", input_data_format="channels_last"
        )  # inferring the layout fails on images 1-4 pixels high
        mask = inputs.get("pixel_mask")
        values = inputs["pixel_values"].to(self.device)
        if mask is None:
            import torch

            mask = torch.ones(values.shape[:1] + values.shape[2:], dtype=torch.long)
        return values, mask.to(self.device)

    def _encoded(self, phrases: list[str]) -> _EncodedPrompt:
        """The chunk's tokens and text features, from the cache (keyed by the phrases' text)
        or computed once: BERT runs once per prompt, not once per image."""
        key = tuple(phrases)
        with self._prompts_lock:
            enc = self._prompts.get(key)
            if enc is not None:
                self._prompts.move_to_end(key)
                return enc
        prompt, _ = self._prompt(phrases)
        ids, owners = self.phrase_token_indices(phrases)
        # The processor's own text path (its tokenizer settings, e.g. token_type_ids).
        tokens = self.processor(text=prompt, return_tensors="pt")
        input_ids = tokens["input_ids"].to(self.device)
        if input_ids[0].tolist() != ids:
            raise RuntimeError(
                "internal error: the processor tokenised the prompt differently from the tokenizer "
                f"({input_ids[0].tolist()} vs {ids}); please report this with your transformers version"
            )
        mask = tokens.get("attention_mask")
        types = tokens.get("token_type_ids")
        text = self.runner.encode_text(
            input_ids,
            None if mask is None else mask.to(self.device),
            None if types is None else types.to(self.device),
        )
        enc = _EncodedPrompt(key, input_ids, owners, text)
        with self._prompts_lock:
            self._prompts[key] = enc
            self.text_encodings += 1
            while len(self._prompts) > _TEXT_CACHE_SIZE:
                self._prompts.popitem(last=False)
        return enc

    def _postprocess(
        self, logits: Any, pred_boxes: Any, enc: _EncodedPrompt, size: tuple[int, int]
    ) -> Detections:
        """transformers' post-processing of one image's outputs (``logits`` ``(1, Q, L)``,
        ``pred_boxes`` ``(1, Q, 4)``) at the detector's thresholds, labelled by phrase."""
        import torch

        from grounded_sam.detectors.gdino_fast import FastGroundingDinoOutput

        outputs = FastGroundingDinoOutput(logits, pred_boxes, enc.input_ids)
        with torch.inference_mode():
            result = self.processor.post_process_grounded_object_detection(
                outputs,
                enc.input_ids,
                **{self._box_kw: self.box_threshold},
                text_threshold=self.text_threshold,
                target_sizes=[tuple(size)],
            )[0]
            # Same selection as the post-processing, to know which queries were kept.
            probs = torch.sigmoid(logits[0].float())  # (queries, max_text_len)
            keep = probs.max(dim=-1).values > self.box_threshold
            kept = probs[keep]  # (N, max_text_len)
            phrase_scores = torch.stack(
                [kept[:, idx].max(dim=-1).values for idx in enc.owners], dim=-1
            )  # (N, phrases)
            best = phrase_scores.argmax(dim=-1).cpu().numpy()
        boxes = result["boxes"].float().cpu().numpy()
        scores = result["scores"].float().cpu().numpy()
        if boxes.shape[0] != best.shape[0]:
            raise RuntimeError(
                f"internal error: post-processing kept {boxes.shape[0]} boxes but {best.shape[0]} "
                "queries pass box_threshold; please report this with your transformers version"
            )
        return Detections(
            boxes=boxes,
            scores=np.clip(scores, 0.0, 1.0),
            labels=[enc.phrases[i] for i in best],
        )

    def _nms(self, dets: Detections, phrases: list[str]) -> Detections:
        import torch
        from torchvision.ops import batched_nms

        idx = torch.as_tensor([phrases.index(lbl) for lbl in dets.labels])
        keep = batched_nms(
            torch.from_numpy(dets.boxes), torch.from_numpy(dets.scores), idx, self.nms_threshold
        )
        return dets.select(np.sort(keep.numpy()))

    def __repr__(self) -> str:
        return (
            f"GroundingDinoDetector(model={self.model_name!r}, box_threshold={self.box_threshold}, "
            f"text_threshold={self.text_threshold}, nms_threshold={self.nms_threshold}, "
            f"precision={self.precision!r}, device={str(self.device)!r}, "
            f"backend={'fast' if self.fast else 'transformers'!r})"
        )
