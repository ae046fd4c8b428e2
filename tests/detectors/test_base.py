"""Detections, phrase normalisation and the detector registry (with a real entry point)."""

from __future__ import annotations

import sys
import textwrap

import numpy as np
import pytest
import torch

from grounded_sam.detectors import (
    Detections,
    Detector,
    build_detector,
    list_detectors,
    normalize_phrases,
    register_detector,
)
from grounded_sam.detectors import base as det_base
from grounded_sam.errors import InputError, MissingDependency
from grounded_sam.phrases import parse_phrases


def _dets(n: int, h: int = 8, w: int = 10, masks: bool = True) -> Detections:
    rng = np.random.default_rng(n)
    return Detections(
        boxes=rng.uniform(0, 8, (n, 4)),
        scores=rng.uniform(0, 1, n),
        labels=[f"p{i}" for i in range(n)],
        masks=rng.uniform(size=(n, h, w)) > 0.5 if masks else None,
    )


def test_detections_coerces_and_validates() -> None:
    d = _dets(3)
    assert len(d) == 3
    assert d.boxes.dtype == np.float32 and d.boxes.shape == (3, 4)
    assert d.scores.dtype == np.float32 and d.scores.shape == (3,)
    assert d.masks is not None and d.masks.dtype == bool and d.masks.shape == (3, 8, 10)
    with pytest.raises(ValueError, match=r"\(N, 4\)"):
        Detections(boxes=np.zeros((2, 3)), scores=np.zeros(2), labels=["a", "b"])
    with pytest.raises(ValueError, match="scores must have shape"):
        Detections(boxes=np.zeros((2, 4)), scores=np.zeros(3), labels=["a", "b"])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        Detections(boxes=np.zeros((1, 4)), scores=[1.5], labels=["a"])
    with pytest.raises(ValueError, match="labels"):
        Detections(boxes=np.zeros((2, 4)), scores=np.zeros(2), labels=["a"])
    with pytest.raises(ValueError, match="masks"):
        Detections(
            boxes=np.zeros((2, 4)), scores=np.zeros(2), labels=["a", "b"], masks=np.zeros((1, 4, 4))
        )


def test_detections_empty_select_concatenate() -> None:
    e = Detections.empty()
    assert len(e) == 0 and e.boxes.shape == (0, 4) and e.scores.shape == (0,) and e.masks is None
    e2 = Detections.empty((5, 7))
    assert e2.masks is not None and e2.masks.shape == (0, 5, 7)
    d = _dets(4)
    s = d.select([2, 0])
    np.testing.assert_array_equal(s.boxes, d.boxes[[2, 0]])
    assert s.labels == ["p2", "p0"]
    np.testing.assert_array_equal(s.masks, d.masks[[2, 0]])
    b = d.select(np.array([True, False, False, True]))
    assert b.labels == ["p0", "p3"]
    c = Detections.concatenate([d, s])
    assert len(c) == 6 and c.labels == d.labels + s.labels and c.masks.shape == (6, 8, 10)
    assert Detections.concatenate([d, _dets(2, masks=False)]).masks is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a cat. a dog.", ["a cat", "a dog"]),
        # case kept as written; a phrase differing only by case is a duplicate
        ("A Cat.  a   DOG . a cat", ["A Cat", "a DOG"]),
        (["A cat", " a dog ", "", "A cat"], ["A cat", "a dog"]),
        (["a cat. a dog", "bird"], ["a cat", "a dog", "bird"]),
        ("single phrase", ["single phrase"]),
    ],
)
def test_parse_phrases(text, expected) -> None:
    assert parse_phrases(text) == expected
    assert parse_phrases(parse_phrases(text)) == expected  # idempotent


def test_normalize_phrases_is_the_old_name_with_optional_lowercase() -> None:
    assert normalize_phrases("A Cat. a DOG") == ["A Cat", "a DOG"]
    assert normalize_phrases("A Cat. a DOG", lowercase=True) == ["a cat", "a dog"]


@pytest.mark.parametrize("text", ["", "  . .. ", [], ["", " . "]])
def test_parse_phrases_empty(text) -> None:
    with pytest.raises(InputError, match="no phrases"):
        parse_phrases(text)


@pytest.mark.parametrize("text", [None, 3, b"a cat", ["a cat", 3], {"a cat"}])
def test_parse_phrases_type(text) -> None:
    with pytest.raises(InputError, match="string"):
        parse_phrases(text)


def test_registry_names_and_unknown() -> None:
    names = list_detectors()
    assert {"grounding-dino", "yolo-clip"} <= set(names)
    with pytest.raises(ValueError, match="unknown detector 'nope'.*grounding-dino.*yolo-clip"):
        build_detector("nope")
    with pytest.raises(InputError, match="string"):
        build_detector(3)  # type: ignore[arg-type]


class _Fixed:
    def __init__(self, box: tuple[float, float, float, float] = (1, 2, 3, 4)) -> None:
        self.box = box

    def detect(self, image, text) -> Detections:
        phrases = normalize_phrases(text)
        return Detections(boxes=[self.box], scores=[0.5], labels=[phrases[0]])


def test_register_detector(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(det_base, "_REGISTERED", {})
    register_detector("fixed")(_Fixed)
    assert "fixed" in list_detectors()
    det = build_detector("fixed", box=(0, 0, 5, 5))
    assert isinstance(det, Detector)
    out = det.detect(np.zeros((4, 4, 3), np.uint8), "x. y")
    assert out.labels == ["x"] and out.boxes.tolist() == [[0, 0, 5, 5]]
    with pytest.raises(ValueError, match="built-in"):
        register_detector("yolo-clip")(_Fixed)


def test_entry_point_plugin(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A third-party package declaring an entry point in ``grounded_sam.detectors`` is found."""
    (tmp_path / "gs_plugin_mod.py").write_text(
        textwrap.dedent(
            """
            import numpy as np
            from grounded_sam.detectors import Detections, normalize_phrases

            class WholeImage:
                def __init__(self, score=0.9):
                    self.score = score

                def detect(self, image, text):
                    phrases = normalize_phrases(text)
                    h, w = np.asarray(image).shape[:2]
                    return Detections(boxes=[[0, 0, w, h]] * len(phrases),
                                      scores=[self.score] * len(phrases), labels=phrases)
            """
        )
    )
    dist = tmp_path / "gs_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: gs-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        "[grounded_sam.detectors]\nwhole-image = gs_plugin_mod:WholeImage\nbroken = gs_plugin_missing:X\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "gs_plugin_mod", raising=False)
    assert {"whole-image", "broken"} <= set(list_detectors())
    det = build_detector("whole-image", score=0.25)
    out = det.detect(np.zeros((6, 9, 3), np.uint8), "a cat. a dog")
    assert out.labels == ["a cat", "a dog"]
    np.testing.assert_array_equal(out.boxes, [[0, 0, 9, 6], [0, 0, 9, 6]])
    np.testing.assert_allclose(out.scores, [0.25, 0.25])
    with pytest.raises(MissingDependency, match="broken.*failed to import"):
        build_detector("broken")


def test_resolve_device() -> None:
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert det_base.resolve_device(None).type == expected
    assert det_base.resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="invalid device"):
        det_base.resolve_device("gpu-please")


def test_import_is_light() -> None:
    """Importing the detectors package (and both modules) pulls in no heavy library."""
    import subprocess

    code = (
        "import sys, grounded_sam.detectors, grounded_sam.detectors.grounding_dino, "
        "grounded_sam.detectors.yolo_clip; "
        "print([m for m in ('torch', 'transformers', 'ultralytics', 'open_clip') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("name", "module", "kwargs", "hint"),
    [
        ("grounding-dino", "transformers", {"model": "org/model"}, "pip install 'transformers"),
        ("yolo-clip", "ultralytics", {"yolo": __file__}, "pip install 'ultralytics"),
    ],
)
def test_missing_library_install_hint(monkeypatch, name, module, kwargs, hint) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` raise ImportError
    with pytest.raises(ImportError, match=hint):
        build_detector(name, device="cpu", **kwargs)


def test_missing_open_clip_install_hint(monkeypatch) -> None:
    from grounded_sam.detectors.yolo_clip import OpenClipEncoder

    monkeypatch.setitem(sys.modules, "open_clip", None)
    with pytest.raises(ImportError, match="pip install 'open_clip_torch"):
        OpenClipEncoder("ViT-B-32", "openai", device=torch.device("cpu"))
