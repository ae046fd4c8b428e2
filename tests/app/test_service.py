"""Embeddings computed once per image (memory, then the dataset's disk store shared with
``label``), prefetched in the background, and clicks that run only the decoder."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from conftest import embedding_store, fresh_pipe, make_images

from grounded_sam.app.service import Segmenter
from grounded_sam.app.store import DatasetStore
from grounded_sam.masks import decode_rle
from grounded_sam.testing.pipeline import (
    CallCounter,
    gdino_dir,
    gdino_threshold,
    run_cli,
    sam_args,
)


@pytest.fixture()
def store(tmp_path):
    images = make_images(tmp_path / "images")
    return DatasetStore.open(tmp_path / "ds", [images], "cat,dog")


def wait_for(cond, timeout=60.0):
    t0 = time.perf_counter()
    while not cond():
        if time.perf_counter() - t0 > timeout:
            raise AssertionError("timed out")
        time.sleep(0.05)


def test_one_encoder_pass_per_image_then_decoder_only(base_pipe, store):
    seg = Segmenter(fresh_pipe(base_pipe), store=None, prefetch=False)
    ref = store.ref_by_name("chelsea.png")
    enc = CallCounter(base_pipe.sam.image_encoder)
    dec = CallCounter(base_pipe.sam.mask_decoder, batch_arg="sparse_prompt_embeddings")
    with enc, dec:
        first = seg.predict(ref, [[100, 70, 1]])
        for i in range(4):
            seg.predict(ref, [[100, 70, 1], [10 + i, 10, 0]], mask_input=first["logits"])
    assert enc.calls == 1 and dec.calls == 5
    assert first["timings"]["encoder"] > 0
    seg.close()


def test_disk_store_is_shared_between_servers(base_pipe, store):
    ref = store.ref_by_name("chelsea.png")
    one = Segmenter(fresh_pipe(base_pipe), store=embedding_store(store.root), prefetch=False)
    a = one.predict(ref, [[100, 70, 1]])
    one.close()  # finishes writing the embedding
    two = Segmenter(fresh_pipe(base_pipe), store=embedding_store(store.root), prefetch=False)
    with CallCounter(base_pipe.sam.image_encoder) as enc:
        b = two.predict(ref, [[100, 70, 1]])
    assert enc.calls == 0 and two.disk_hits == 1
    assert a["segmentation"] == b["segmentation"]  # float32 on disk: the same masks
    two.close()


def test_embeddings_written_by_label_are_used(base_pipe, tmp_path, capsys):
    images = make_images(tmp_path / "images")
    out = tmp_path / "labelled"
    argv = [
        images,
        "--classes",
        "cat,dog",
        "--out",
        out,
        "--save-embeddings",
        *sam_args(),
        "--detector-model",
        gdino_dir(),
        "--box-threshold",
        gdino_threshold(2),
    ]
    rc, _, err = run_cli("label", argv, capsys)
    assert rc == 0, err
    store = DatasetStore.open(out)
    assert {r["status"] for r in store.list_images()} <= {"review", "labelled"}
    seg = Segmenter(fresh_pipe(base_pipe), store=embedding_store(out), prefetch=False)
    with CallCounter(base_pipe.sam.image_encoder) as enc:
        seg.predict(store.ref_by_name("chelsea.png"), [[100, 70, 1]])
    assert enc.calls == 0 and seg.disk_hits == 1
    seg.close()


def test_prefetch_makes_the_next_images_ready(base_pipe, store):
    seg = Segmenter(fresh_pipe(base_pipe), store=None, prefetch=True, prefetch_idle=0.0)
    seg.start()
    refs = [store.ref_by_name(n) for n in ("astronaut.png", "chelsea.png", "sub/coffee.jpg")]
    seg.prefetch(refs)
    wait_for(lambda: all(seg.cached(r) for r in refs))
    assert seg.prefetched == 3 and seg.encoder_calls == 3
    with CallCounter(base_pipe.sam.image_encoder) as enc:
        r = seg.predict(refs[2], [[50, 40, 1]])
    assert enc.calls == 0 and r["timings"]["encoder"] == 0.0
    seg.close()


def test_a_click_during_prefetch_waits_for_that_pass(base_pipe, store):
    """No second encoder pass when a click arrives while its image is being prefetched."""
    seg = Segmenter(fresh_pipe(base_pipe), store=None, prefetch=True, prefetch_idle=0.0)
    seg.start()
    ref = store.ref_by_name("chelsea.png")
    seg.prefetch([ref])
    wait_for(lambda: seg._inflight or seg.cached(ref))
    seg.predict(ref, [[100, 70, 1]])
    assert seg.encoder_calls == 1
    seg.close()


def test_concurrent_clicks_on_two_images_do_not_mix(base_pipe, store):
    seg = Segmenter(fresh_pipe(base_pipe), store=None, prefetch=False)
    a, b = store.ref_by_name("chelsea.png"), store.ref_by_name("astronaut.png")
    ref_a = seg.predict(a, [[100, 70, 1]])["segmentation"]
    ref_b = seg.predict(b, [[80, 80, 1]])["segmentation"]
    jobs = [(a, [[100, 70, 1]], ref_a), (b, [[80, 80, 1]], ref_b)] * 8
    with ThreadPoolExecutor(4) as pool:
        outs = list(pool.map(lambda j: seg.predict(j[0], j[1])["segmentation"], jobs))
    assert all(o == j[2] for o, j in zip(outs, jobs, strict=True))
    assert seg.encoder_calls == 2
    seg.close()


def test_memory_cache_is_bounded_and_logits_expire(base_pipe, store):
    pipe = fresh_pipe(base_pipe)
    pipe.cache.capacity = 2
    seg = Segmenter(pipe, store=None, prefetch=False, logits_capacity=3)
    refs = [store.ref_by_name(n) for n in ("astronaut.png", "chelsea.png", "sub/coffee.jpg")]
    first = seg.predict(refs[0], [[5, 5, 1]])
    for r in refs:
        seg.predict(r, [[5, 5, 1]])
    assert len(pipe.cache) == 2 and not seg.cached(refs[0])
    again = seg.predict(refs[0], [[5, 5, 1], [9, 9, 0]], mask_input=first["logits"])
    assert again["used_mask_input"] is False  # its logits were pushed out of the bounded store
    assert seg.encoder_calls == 4
    seg.close()


def test_changed_file_is_encoded_again(base_pipe, store):
    from grounded_sam.testing.pipeline import small_astronaut, write_png

    seg = Segmenter(fresh_pipe(base_pipe), store=embedding_store(store.root), prefetch=False)
    ref = store.ref_by_name("chelsea.png")
    before = decode_rle(seg.predict(ref, [[100, 70, 1]])["segmentation"])
    time.sleep(0.01)
    write_png(np.ascontiguousarray(small_astronaut()[:150, :150]), ref.path)
    after = seg.predict(ref, [[100, 70, 1]])
    assert after["segmentation"]["size"] == [150, 150] and before.shape == (150, 226)
    assert seg.encoder_calls == 2
    seg.close()
