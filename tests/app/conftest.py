"""Fixtures of the app tests: tiny random models, small datasets in ``label``'s format, and the
server running in a thread on a free loopback port (always stopped after the test)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from grounded_sam.engine import dataset as fmt
from grounded_sam.masks import encode_rle, rle_area, rle_to_bbox
from grounded_sam.testing.pipeline import (
    gdino_dir,
    gdino_threshold,
    mobile_sam_checkpoint,
    small_astronaut,
    small_chelsea,
    write_png,
)

CHELSEA = (150, 226)  # H, W of small_chelsea()
ASTRONAUT = (160, 160)


@pytest.fixture(scope="session")
def base_pipe():
    """One GroundedSAM (random MobileSAM + tiny Grounding DINO) for the whole session."""
    from grounded_sam.pipeline import GroundedSAM

    pipe = GroundedSAM(
        "grounding-dino",
        "mobile_sam",
        sam_checkpoint=mobile_sam_checkpoint(),
        device="cpu",
        model=gdino_dir(),
        box_threshold=gdino_threshold(2),
    )
    pipe.detector  # noqa: B018 - built once
    return pipe


def fresh_pipe(base):
    """A pipeline sharing ``base``'s model weights and detector, with its own predictor state
    and embedding cache (so counts do not depend on other tests)."""
    from grounded_sam.pipeline import GroundedSAM
    from grounded_sam.predictor import SamPredictor

    return GroundedSAM(base.detector, SamPredictor(base.sam), cache_size=8)


def embedding_store(root: Path):
    from grounded_sam.engine.embeddings import EmbeddingStore, sam_identity

    return EmbeddingStore(root, sam_identity("mobile_sam", mobile_sam_checkpoint(), "fp32"))


def rect_mask(size, x0, y0, x1, y1) -> np.ndarray:
    m = np.zeros(size, dtype=bool)
    m[y0:y1, x0:x1] = True
    return m


def ann_record(aid, image_id, cat, mask, score=0.8, **extra) -> dict:
    seg = encode_rle(mask)[0]
    return {
        "id": aid,
        "image_id": image_id,
        "category_id": cat,
        "segmentation": seg,
        "area": rle_area(seg),
        "bbox": rle_to_bbox(seg),
        "iscrowd": 0,
        "score": score,
        "mask_score": 0.9,
        "stability": 0.95,
        "prompt": extra.pop("prompt", "a cat" if cat == 1 else "a dog"),
        **extra,
    }


def make_images(folder: Path) -> Path:
    """chelsea.png, astronaut.png, sub/coffee.jpg and a non-image notes.txt."""
    from PIL import Image
    from skimage.data import coffee

    write_png(small_chelsea(), folder / "chelsea.png")
    write_png(small_astronaut(), folder / "astronaut.png")
    (folder / "sub").mkdir(parents=True, exist_ok=True)
    Image.fromarray(coffee()).resize((120, 80)).save(folder / "sub" / "coffee.jpg", quality=90)
    (folder / "notes.txt").write_text("not an image\n")
    return folder


def make_label_dataset(tmp: Path, *, units: bool = True) -> tuple[Path, Path]:
    """A dataset as ``grounded-sam label`` writes it: chelsea (2 instances, one flagged for
    review, one candidate) and astronaut (1 instance, an image-level review item) labelled;
    sub/coffee.jpg not labelled yet. Returns (dataset, images folder)."""
    images = make_images(tmp / "images")
    root = tmp / "dataset"
    root.mkdir()
    cats = [
        {"id": 1, "name": "cat", "prompts": ["a cat", "a kitten"]},
        {"id": 2, "name": "dog", "prompts": ["a dog"]},
    ]
    imgs = [
        {"id": 1, "file_name": "astronaut.png", "width": 160, "height": 160},
        {"id": 2, "file_name": "chelsea.png", "width": 226, "height": 150},
    ]
    anns = [
        ann_record(1, 1, 1, rect_mask(ASTRONAUT, 40, 30, 120, 150)),
        ann_record(2, 2, 1, rect_mask(CHELSEA, 60, 20, 200, 140), score=0.9),
        ann_record(3, 2, 2, rect_mask(CHELSEA, 5, 5, 40, 50), score=0.31),
    ]
    fmt.write_manifest(
        root,
        {
            "ontology": {"classes": [{"name": c["name"], "prompts": c["prompts"]} for c in cats]},
            "sources": [{"kind": "folder", "path": str(images), "prefix": ""}],
        },
    )
    fmt.write_annotations(root, {"images": imgs, "annotations": anns, "categories": cats})
    fmt.write_json_list(
        root / fmt.REVIEW,
        [
            {
                "image_id": 2,
                "annotation_id": 3,
                "file_name": "chelsea.png",
                "priority": 0.9,
                "reasons": ["low_score"],
                "detail": "detector score 0.31 is close to the 0.35",
            },
            {
                "image_id": 1,
                "annotation_id": None,
                "file_name": "astronaut.png",
                "priority": 0.4,
                "reasons": ["negative_suppressed"],
                "detail": "1 detection removed by a negative caption",
            },
        ],
    )
    cand = encode_rle(rect_mask(CHELSEA, 150, 100, 220, 148))[0]
    fmt.write_json_list(
        root / fmt.CANDIDATES,
        [
            {
                "id": 1,
                "image_id": 2,
                "segmentation": cand,
                "area": rle_area(cand),
                "bbox": rle_to_bbox(cand),
                "mask_score": 0.88,
                "stability": 0.93,
            }
        ],
    )
    if units:
        for im in imgs:
            inst = []
            for a in anns:
                if a["image_id"] == im["id"]:
                    rec = {k: v for k, v in a.items() if k not in ("id", "image_id")}
                    rec["flags"] = {}
                    inst.append(rec)
            path = images / im["file_name"]
            fmt.write_unit(
                root,
                fmt.ImageUnit(
                    im["file_name"],
                    size_bytes=path.stat().st_size,
                    width=im["width"],
                    height=im["height"],
                    instances=inst,
                    notes={"negative_suppressed": 1} if im["id"] == 1 else {},
                ),
            )
    return root, images


def read_doc(root: Path) -> dict:
    return json.loads((root / "annotations.json").read_text())


@pytest.fixture()
def label_dataset(tmp_path) -> tuple[Path, Path]:
    return make_label_dataset(tmp_path)


class Running:
    """A started app: ``url``, an httpx ``client``, the ``store`` and ``segmenter``."""

    def __init__(self, server, client, store, segmenter) -> None:
        self.server = server
        self.url = server.url
        self.client = client
        self.store = store
        self.segmenter = segmenter


@pytest.fixture()
def start_app(base_pipe):
    """``start_app(root, images=(), classes=None, **create_app kwargs)`` -> :class:`Running`;
    every server started is stopped (and its segmenter closed) after the test."""
    import httpx

    from grounded_sam.app.server import BackgroundServer, create_app
    from grounded_sam.app.service import Segmenter
    from grounded_sam.app.store import DatasetStore

    started: list[Running] = []

    def start(root, images=(), classes=None, *, prefetch=True, disk=True, **kwargs):
        store = DatasetStore.open(root, images, classes)
        seg = Segmenter(
            fresh_pipe(base_pipe),
            store=embedding_store(store.root) if disk else None,
            prefetch=prefetch,
        )
        seg.start()
        kwargs.setdefault("allowed_hosts", {"127.0.0.1", "localhost"})
        server = BackgroundServer(create_app(store, seg, **kwargs)).start()
        client = httpx.Client(base_url=server.url, timeout=120)
        run = Running(server, client, store, seg)
        started.append(run)
        return run

    yield start
    for run in started:
        run.client.close()
        run.server.stop()
        run.segmenter.close()
