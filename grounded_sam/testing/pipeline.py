"""Shared, process-cached tiny models and helpers for the pipeline and CLI tests.

Plain functions (no pytest fixtures) cached per process, so both test modules reuse one copy
of each tiny model however pytest schedules them. Files go to one temporary folder removed
at exit.

Two SAM families: ``"sam"`` (SAM 1 / MobileSAM: :func:`tiny_sam`, :func:`mobile_sam`,
:func:`mobile_sam_checkpoint`) and ``"sam2"`` (SAM 2.1 with the reduced Hiera of
``grounded_sam.model.sam2.TEST_CONFIG``: :func:`tiny_sam2`, :func:`sam2_test_checkpoint`, and
the registry name :data:`SAM2_TEST` while :func:`sam2_test_variant` is active). Tests that
exercise SAM run once per family in :data:`SAM_FAMILIES`; :func:`tiny_sam_of`,
:func:`sam_model`, :func:`sam_by_name` and :func:`sam_args` pick that family's model.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import shutil
import tempfile
from collections.abc import Iterator
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


SAM_FAMILIES = ("sam", "sam2")  # pytest params for tests that run each SAM family
SAM2_TEST = "sam2.1_hiera_test"  # registry name of the reduced SAM 2.1 (see sam2_test_variant)


def _check_family(family: str) -> None:
    if family not in SAM_FAMILIES:
        raise ValueError(f"unknown SAM family {family!r}; expected one of {SAM_FAMILIES}")


@functools.cache
def tiny_sam2():
    """Our ``Sam2`` with the reduced Hiera (``TEST_CONFIG``: every code path of the real ones,
    real 1024 input and output shapes), perturbed weights, CPU, eval; the weights of
    :func:`sam2_test_checkpoint`. Its encoder costs about what :func:`tiny_sam`'s does."""
    from grounded_sam.testing.sam2_refs import random_sam2

    return random_sam2(seed=11)


@functools.cache
def sam2_test_checkpoint() -> Path:
    """:func:`tiny_sam2`'s weights in the format of Meta's ``sam2.1_hiera_*.pt`` files
    (``{"model": state_dict}``, the video modules' keys included)."""
    from grounded_sam.model.sam2 import TEST_CONFIG
    from grounded_sam.testing.sam2_refs import random_sam2_checkpoint

    return random_sam2_checkpoint(TEST_CONFIG, _root() / f"{SAM2_TEST}.pt", seed=11)


@functools.cache
def _sam2_test_config():
    """(weights entry, model config) of :data:`SAM2_TEST`: built once, so re-registering
    gives the registry the same objects."""
    from grounded_sam.hub import WeightEntry
    from grounded_sam.model.registry import ModelConfig
    from grounded_sam.model.sam2 import TEST_CONFIG, build_sam2_model, image_state_dict

    def build(*, dynamic_multimask_via_stability: bool = True):
        model = build_sam2_model(
            TEST_CONFIG,
            name=SAM2_TEST,
            dynamic_multimask_via_stability=dynamic_multimask_via_stability,
        )
        return model.eval()

    def convert(state_dict: dict, source: str) -> dict:
        return image_state_dict(TEST_CONFIG, state_dict, source)

    entry = WeightEntry(
        name=SAM2_TEST,
        kind="sam",
        url=f"file:///nonexistent/{SAM2_TEST}.pt",  # never downloaded: tests pass a file
        filename=f"{SAM2_TEST}.pt",
        sha256=None,
        size_mb=None,
        license="Apache-2.0",
        source="grounded_sam.testing.pipeline (random test weights)",
    )
    config = ModelConfig(
        SAM2_TEST,
        "sam2",
        build,
        weights=SAM2_TEST,
        description="test-only reduced SAM 2.1 Hiera (grounded_sam.model.sam2.TEST_CONFIG)",
        options={"dynamic_multimask_via_stability": True},
        convert_checkpoint=convert,
    )
    return entry, config


@contextlib.contextmanager
def sam2_test_variant() -> Iterator[str]:
    """Register :data:`SAM2_TEST` (a ``ModelConfig`` and its weights entry) while the block
    runs, so ``build_sam``, ``GroundedSAM`` and the CLI take it by name (with
    ``--sam-checkpoint`` :func:`sam2_test_checkpoint`); removed afterwards, so registry
    listings elsewhere never see it. Nested use keeps the outer registration."""
    from grounded_sam import hub
    from grounded_sam.model import registry

    if SAM2_TEST in registry.list_models():  # an enclosing block owns the registration
        yield SAM2_TEST
        return
    entry, config = _sam2_test_config()
    hub.register(entry)
    try:
        registry.register_model(config)
    except BaseException:
        hub.unregister(SAM2_TEST)
        raise
    try:
        yield SAM2_TEST
    finally:
        # the model registry has no public removal (variants are meant to stay): drop the
        # test entry directly, then its weights entry
        registry._MODELS.pop(SAM2_TEST, None)
        hub.unregister(SAM2_TEST)


@contextlib.contextmanager
def sam_family(family: str) -> Iterator[str]:
    """Make ``family``'s test models usable by name while the block runs (for ``"sam2"``,
    :func:`sam2_test_variant`); yields the family. For a parametrised pytest fixture::

        @pytest.fixture(params=SAM_FAMILIES)
        def family(request):
            with sam_family(request.param):
                yield request.param
    """
    _check_family(family)
    if family == "sam2":
        with sam2_test_variant():
            yield family
    else:
        yield family


def tiny_sam_of(family: str):
    """The cheapest model of ``family``: :func:`tiny_sam` (2-block ViT) or :func:`tiny_sam2`."""
    _check_family(family)
    return tiny_sam2() if family == "sam2" else tiny_sam()


def sam_model(family: str):
    """The model the end-to-end tests use: :func:`mobile_sam` or :func:`tiny_sam2`."""
    _check_family(family)
    return tiny_sam2() if family == "sam2" else mobile_sam()


def sam_by_name(family: str) -> dict:
    """``{"sam": name, "sam_checkpoint": path}`` for ``GroundedSAM`` / ``segment``: MobileSAM
    with :func:`mobile_sam_checkpoint`, or :data:`SAM2_TEST` with
    :func:`sam2_test_checkpoint` (inside :func:`sam_family` / :func:`sam2_test_variant`)."""
    _check_family(family)
    if family == "sam2":
        return {"sam": SAM2_TEST, "sam_checkpoint": sam2_test_checkpoint()}
    return {"sam": "mobile_sam", "sam_checkpoint": mobile_sam_checkpoint()}


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
    """Wrap ``module.forward`` (or another ``method``) to count calls (e.g. image-encoder
    passes); use as a context.

    ``batch_sizes`` records the leading dimension of the first positional tensor, or of the
    keyword argument ``batch_arg`` when given (e.g. ``"sparse_prompt_embeddings"`` for the
    mask decoder: one row per prompt). ``method="encode"`` on a SAM model counts image
    encoder passes for every family (SAM 2.1's ``encode`` runs its trunk without calling
    ``image_encoder.forward``): see :func:`encoder_counter`.
    """

    def __init__(
        self, module: torch.nn.Module, batch_arg: str | None = None, *, method: str = "forward"
    ) -> None:
        self.module = module
        self.batch_arg = batch_arg
        self.method = method
        self.calls = 0
        self.batch_sizes: list[int] = []

    def __enter__(self) -> CallCounter:
        original = getattr(self.module, self.method)

        def counted(*args, **kwargs):
            self.calls += 1
            x = kwargs[self.batch_arg] if self.batch_arg else args[0]
            self.batch_sizes.append(int(x.shape[0]))
            return original(*args, **kwargs)

        setattr(self.module, self.method, counted)
        return self

    def __exit__(self, *exc) -> None:
        delattr(self.module, self.method)  # back to the class method


def encoder_counter(sam: torch.nn.Module) -> CallCounter:
    """Counts image-encoder passes of a SAM model of any family (its ``encode`` calls), with
    the batch size of each."""
    return CallCounter(sam, method="encode")


def run_cli(command: str, argv, capsys) -> tuple[int, str, str]:
    """``grounded-sam COMMAND ARGV`` in-process: (exit code, stdout, stderr)."""
    from grounded_sam.cli import main

    try:
        rc = main([command, *map(str, argv)])
    except SystemExit as e:  # argparse errors
        rc = e.code
    out, err = capsys.readouterr()
    return rc, out, err


def sam_args(family: str = "sam") -> list[str]:
    """``--sam mobile_sam --sam-checkpoint <random MobileSAM file> --device cpu``; for
    ``family="sam2"``, ``--sam sam2.1_hiera_test`` with :func:`sam2_test_checkpoint` (inside
    :func:`sam_family` / :func:`sam2_test_variant`)."""
    by_name = sam_by_name(family)
    sam, checkpoint = by_name["sam"], str(by_name["sam_checkpoint"])
    return ["--sam", sam, "--sam-checkpoint", checkpoint, "--device", "cpu"]


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("error:")]
