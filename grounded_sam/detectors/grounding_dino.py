"""Grounding DINO text-to-box detector (``transformers`` backend), LangSAM / Grounded-SAM style.

Boxes and scores are exactly those of ``GroundingDinoProcessor.post_process_grounded_object_detection``
with the same thresholds (score = max sigmoid token logit of a query). Labels are not the
decoded token span transformers returns (which can read ``"a cat. a dog. [SEP]"``): each box
gets the asked-for phrase whose own tokens score highest for it.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from grounded_sam.detectors.base import BaseDetector, Detections, Option, resolve_device
from grounded_sam.errors import InputError, MissingDependency

__all__ = ["GroundingDinoDetector", "DEFAULT_MODEL"]

DEFAULT_MODEL = "IDEA-Research/grounding-dino-tiny"
_INSTALL_HINT = "pip install 'transformers>=4.51,<6'"


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

    Raises:
        InputError: bad thresholds or a missing local directory.
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
    ) -> None:
        self.box_threshold = _check_threshold("box_threshold", box_threshold)
        self.text_threshold = _check_threshold("text_threshold", text_threshold)
        self.nms_threshold = _check_threshold("nms_threshold", nms_threshold, allow_none=True)
        if not isinstance(model, (str, os.PathLike)):
            raise TypeError(
                f"model must be a hub id or a local directory path, got {type(model).__name__}"
            )
        self.device = resolve_device(device)
        transformers = _import_transformers()
        import torch  # noqa: F401  (transformers' torch backend)

        source = self._resolve_source(model)
        folder = source if isinstance(source, Path) else self._fetch(source)
        try:
            loaders = (transformers.AutoProcessor, transformers.AutoModelForZeroShotObjectDetection)
            self.processor, self.model = (cls.from_pretrained(folder) for cls in loaders)
        except Exception as e:
            raise InputError(
                f"could not load a Grounding DINO model from {str(folder)!r} "
                f"({type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}). "
                "Expected the output of model.save_pretrained(dir) and "
                "processor.save_pretrained(dir)"
            ) from e
        self.model.to(self.device).eval()
        self.model_name = str(source)
        self.tokenizer = self.processor.tokenizer
        self.max_text_len = self._text_token_limit()
        params = inspect.signature(self.processor.post_process_grounded_object_detection).parameters
        # transformers renamed box_threshold -> threshold (4.51); support both spellings.
        self._box_kw = "threshold" if "threshold" in params else "box_threshold"

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
        img = image if image.flags.writeable else image.copy()  # the processor wants writable
        lowered = [p.lower() for p in phrases]
        label_of = dict(zip(lowered, phrases, strict=True))
        parts = [self._detect_chunk(img, chunk) for chunk in self.chunk_phrases(lowered)]
        dets = Detections.concatenate(parts)
        if self.nms_threshold is not None and len(dets):
            dets = self._nms(dets, lowered)
        dets.labels = [label_of[lbl] for lbl in dets.labels]
        return dets

    def _detect_chunk(self, img: np.ndarray, phrases: list[str]) -> Detections:
        import torch

        prompt, _ = self._prompt(phrases)
        ids, owners = self.phrase_token_indices(phrases)
        inputs = self.processor(images=img, text=prompt, return_tensors="pt").to(self.device)
        input_ids = inputs["input_ids"]
        if input_ids[0].tolist() != ids:
            raise RuntimeError(
                "internal error: the processor tokenised the prompt differently from the tokenizer "
                f"({input_ids[0].tolist()} vs {ids}); please report this with your transformers version"
            )
        with torch.inference_mode():
            outputs = self.model(**inputs)
            h, w = img.shape[:2]
            result = self.processor.post_process_grounded_object_detection(
                outputs,
                input_ids,
                **{self._box_kw: self.box_threshold},
                text_threshold=self.text_threshold,
                target_sizes=[(h, w)],
            )[0]
            # Same selection as the post-processing, to know which queries were kept.
            probs = torch.sigmoid(outputs.logits[0].float())  # (queries, max_text_len)
            keep = probs.max(dim=-1).values > self.box_threshold
            kept = probs[keep]  # (N, max_text_len)
            phrase_scores = torch.stack(
                [kept[:, idx].max(dim=-1).values for idx in owners], dim=-1
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
            labels=[phrases[i] for i in best],
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
            f"device={str(self.device)!r})"
        )
