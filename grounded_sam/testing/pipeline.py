"""Shared, process-cached tiny models and helpers for the pipeline and CLI tests.

Plain functions (no pytest fixtures) cached per process, so both test modules reuse one copy
of each tiny model however pytest schedules them. Files go to one temporary folder removed
at exit.
"""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from grounded_sam.detectors import Detections


@functools.cache
def _root() -> Path:
    """One temporary folder per process for the model files, removed at exit."""
    root = Path(tempfile.mkdtemp(prefix="gs_pipeline_tests_"))
    atexit.register(shutil.rmtree, root, True)
    return root


PHRASES = ("a cat", "a dog")
TEXT = "a cat. a dog."


@functools.cache
def small_chelsea() -> np.ndarray:
    """The chelsea photo at 150x226 (HxW), uint8 RGB (copy it before editing)."""
    from skimage.data import chelsea

    return np.array(Image.fromarray(chelsea()).resize((226, 150), Image.BILINEAR))


@functools.cache
def small_astronaut() -> np.ndarray:
    """skimage's astronaut at 160x160, uint8 RGB (copy it before editing)."""
    from skimage.data import astronaut

    return np.array(Image.fromarray(astronaut()).resize((160, 160), Image.BILINEAR))


@functools.cache
def tiny_sam():
    """Our ``Sam`` with a 2-block ViT encoder (real 1024 input), perturbed weights, CPU, eval."""
    from grounded_sam.testing.sam_refs import meta_tiny_vit_sam, ours_tiny_vit_sam

    return ours_tiny_vit_sam(meta_tiny_vit_sam(seed=3).state_dict())


@functools.cache
def mobile_sam_checkpoint() -> Path:
    """A MobileSAM-format checkpoint (``mobile_sam.pt`` keys) with perturbed random weights."""
    from grounded_sam.testing.sam_refs import meta_mobile_sam, save_checkpoint

    return save_checkpoint(meta_mobile_sam(seed=5), _root() / "mobile_sam.pt")


@functools.cache
def mobile_sam():
    """``build_sam("mobile_sam", checkpoint=mobile_sam_checkpoint(), device="cpu")``."""
    from grounded_sam import build_sam

    return build_sam("mobile_sam", checkpoint=mobile_sam_checkpoint(), device="cpu")


@functools.cache
def gdino_dir() -> Path:
    """Tiny random Grounding DINO folder (save_pretrained format)."""
    from grounded_sam.testing.detectors import make_grounding_dino_dir

    return make_grounding_dino_dir(_root() / "gdino")


@functools.cache
def gdino_threshold(keep: int = 2) -> float:
    """A ``box_threshold`` at which the tiny Grounding DINO keeps about ``keep`` boxes on
    :func:`small_chelsea` for :data:`TEXT` (few boxes keep the SAM decoder cheap)."""
    from grounded_sam.detectors import build_detector

    det = build_detector("grounding-dino", model=gdino_dir(), box_threshold=0.0, device="cpu")
    scores = np.sort(det.detect(small_chelsea(), TEXT).scores)[::-1]
    assert scores.size > keep, f"tiny Grounding DINO gave only {scores.size} boxes"
    return float((scores[keep - 1] + scores[keep]) / 2)


@functools.cache
def yolo_clip_files() -> tuple[Path, str, Path]:
    """``(yolo .pt, open_clip model name, clip state-dict path)`` of tiny random models."""
    from grounded_sam.testing.detectors import (
        make_clip_state_dict,
        make_yolo_seg_pt,
        register_tiny_clip,
    )

    yolo = make_yolo_seg_pt(_root() / "yolo" / "yolov8n-seg-random.pt")
    clip = make_clip_state_dict(_root() / "clip" / "tiny_clip.pt", model="tiny")
    return yolo, register_tiny_clip(), clip


def yolo_clip_kwargs() -> dict:
    """Detector kwargs for a tiny ``yolo-clip`` keeping at most one box per phrase."""
    yolo, clip_name, clip_sd = yolo_clip_files()
    return {
        "yolo": yolo,
        "clip": clip_name,
        "clip_pretrained": clip_sd,
        "score_threshold": 0.0,
        "top_k": 1,
    }


def write_png(image: np.ndarray, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(image)).save(path)
    return path


class StubDetector:
    """A detector returning fixed boxes (and optional masks); records its calls.

    For tests of the pipeline's logic; the real detectors are tested end to end as well.
    """

    def __init__(self, boxes, scores, labels, masks=None) -> None:
        self.boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
        self.scores = np.asarray(scores, dtype=np.float32)
        self.labels = list(labels)
        self.masks = masks
        self.calls: list[tuple[tuple[int, ...], object]] = []

    def detect(self, image, text) -> Detections:
        self.calls.append((np.asarray(image).shape, text))
        return Detections(self.boxes, self.scores, self.labels, self.masks)


class CallCounter:
    """Wrap ``module.forward`` to count calls (e.g. image-encoder passes); use as a context.

    ``batch_sizes`` records the leading dimension of the first positional tensor, or of the
    keyword argument ``batch_arg`` when given (e.g. ``"sparse_prompt_embeddings"`` for the
    mask decoder: one row per prompt).
    """

    def __init__(self, module: torch.nn.Module, batch_arg: str | None = None) -> None:
        self.module = module
        self.batch_arg = batch_arg
        self.calls = 0
        self.batch_sizes: list[int] = []

    def __enter__(self) -> CallCounter:
        original = self.module.forward

        def counted(*args, **kwargs):
            self.calls += 1
            x = kwargs[self.batch_arg] if self.batch_arg else args[0]
            self.batch_sizes.append(int(x.shape[0]))
            return original(*args, **kwargs)

        self.module.forward = counted
        return self

    def __exit__(self, *exc) -> None:
        del self.module.forward  # back to the class method


def run_cli(command: str, argv, capsys) -> tuple[int, str, str]:
    """``grounded-sam COMMAND ARGV`` in-process: (exit code, stdout, stderr)."""
    from grounded_sam.cli import main

    try:
        rc = main([command, *map(str, argv)])
    except SystemExit as e:  # argparse errors
        rc = e.code
    out, err = capsys.readouterr()
    return rc, out, err


def sam_args() -> list[str]:
    """``--sam mobile_sam --sam-checkpoint <random MobileSAM file> --device cpu``."""
    return [
        "--sam",
        "mobile_sam",
        "--sam-checkpoint",
        str(mobile_sam_checkpoint()),
        "--device",
        "cpu",
    ]


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("error:")]
