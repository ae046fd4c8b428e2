"""Annotation app figures: click-to-mask latency over HTTP, time to the first mask on a new
image with and without prefetch, and a bounded load test.

The server is the real ``grounded-sam app`` in a subprocess (MobileSAM with random weights in
the official ``mobile_sam.pt`` format, so its encoder and decoder cost what the real ones do;
a tiny random Grounding DINO), on loopback; the clients are httpx in this process. Photos are
the bundled ones at full size (451x300 to 640x427).

- ``click_latency``: clicks through ``POST /api/images/{id}/predict`` on an image whose
  embedding is cached, in sessions of 1-4 clicks that pass the previous logits as
  ``mask_input``, as the page does; with the server's own decoder timing and
  ``SamPredictor.predict`` in-process (the decoder alone) for comparison.
- ``browser_clicks``: the same kind of click sessions in the real page (headless Debian
  Chromium through Playwright), timed by the page itself (``groundedSam.clickMs``: request
  sent -> response -> RLE decoded -> mask drawn); Chromium shares the CPU with the server.
- ``first_mask``: a person opens an image, clicks at once, works on it for a few seconds, moves
  to the next; the time from opening an image to its first mask, with and without the
  background prefetch (the disk embedding store off, so only prefetch differs).
- ``load_test``: ``clients`` threads x ``ops`` iterations of a prediction followed by an
  annotation write (a relabel every fifth), on 4 images; throughput, latency percentiles,
  errors (must be 0) and annotations lost (must be 0: every acknowledged annotation is in
  ``annotations.json`` afterwards, with its mask and last class).

    .venv/bin/python benchmarks/app.py                  # all four
    .venv/bin/python benchmarks/app.py --quick          # fewer clicks / images / operations
    .venv/bin/python benchmarks/app.py --screenshot docs/app.png

Importable: ``click_latency()``, ``browser_clicks()``, ``first_mask()``, ``load_test()`` return
result rows (dicts);
``screenshot(path)`` saves the page as a PNG.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- fixtures
def make_photos(folder: Path, n: int = 4) -> list[Path]:
    """``n`` distinct full-size photos (the bundled ones, then mirrored copies)."""
    from PIL import Image
    from skimage import data

    photos = [data.chelsea(), data.astronaut(), data.coffee(), data.rocket()]
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        img = photos[i % len(photos)]
        for _ in range(i // len(photos)):
            img = img[:, ::-1]
        path = folder / f"photo_{i:02d}.jpg"
        Image.fromarray(np.ascontiguousarray(img)).save(path, quality=92)
        out.append(path)
    return out


def _model_args() -> list[str]:
    from grounded_sam.testing.pipeline import gdino_dir, mobile_sam_checkpoint

    return [
        "--sam",
        "mobile_sam",
        "--sam-checkpoint",
        str(mobile_sam_checkpoint()),
        "--device",
        "cpu",
        "--detector-model",
        str(gdino_dir()),
        "--box-threshold",
        "0.3",
    ]


@contextlib.contextmanager
def app_server(
    dataset: Path, images: Path, *extra: str, classes: str | None = "cat,dog,person,cup"
) -> Iterator[str]:
    """``grounded-sam app`` in a subprocess; yields its base URL; Ctrl-C at the end."""
    cmd = [sys.executable, "-m", "grounded_sam", "app", str(dataset), "--images", str(images)]
    if classes:
        cmd += ["--classes", classes]
    cmd += ["--port", "0", *_model_args(), *extra]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = None
    try:
        for line in proc.stdout:
            m = re.search(r"open (http://\S+)", line)
            if m:
                url = m.group(1).rstrip("/")
                break
        if url is None:
            raise RuntimeError(f"the app did not start: {proc.stderr.read()}")
        yield url
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def _ms(values: list[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "p50_ms": round(_pct(values, 50) * 1000, 1),
        "p95_ms": round(_pct(values, 95) * 1000, 1),
        "p99_ms": round(_pct(values, 99) * 1000, 1),
        "mean_ms": round(statistics.fmean(values) * 1000, 1) if values else float("nan"),
    }


def _image_ids(client) -> list[dict]:
    return client.get("/api/images").json()["images"]


def _wait_prefetch_idle(client, timeout: float = 300) -> None:
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        cache = client.get("/api/info").json()["cache"]
        if cache["prefetch_queue"] == 0:
            time.sleep(0.5)
            if client.get("/api/info").json()["cache"]["prefetch_queue"] == 0:
                return
        time.sleep(0.2)


# ----------------------------------------------------------------------------- figures
def click_latency(n_clicks: int = 100, seed: int = 0) -> list[dict[str, Any]]:
    """Click-to-mask latency over HTTP on a cached embedding (see the module docstring)."""
    import httpx

    rng = np.random.default_rng(seed)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        make_photos(tmp / "images", 4)
        with (
            app_server(tmp / "ds", tmp / "images") as url,
            httpx.Client(base_url=url, timeout=300) as c,
        ):
            rows = _image_ids(c)
            im = rows[0]
            c.get(f"/api/images/{im['id']}")  # opening it queues its embedding
            first = c.post(f"/api/images/{im['id']}/predict", json={"points": [[50, 50, 1]]})
            encoder_s = first.json()["timings"]["encoder"]
            _wait_prefetch_idle(c)  # the next images' embeddings are done: a quiet server
            w, h = c.get(f"/api/images/{im['id']}").json()["image"]["width"], None
            h = c.get(f"/api/images/{im['id']}").json()["image"]["height"]
            http, decoder = [], []
            done = 0
            while done < n_clicks:
                points, logits = [], None
                for _ in range(int(rng.integers(1, 5))):
                    points.append([float(rng.uniform(0, w)), float(rng.uniform(0, h)),
                                   int(len(points) == 0 or rng.random() < 0.7)])  # fmt: skip
                    t = time.perf_counter()
                    r = c.post(
                        f"/api/images/{im['id']}/predict",
                        json={"points": points, "mask_input": logits},
                    )
                    http.append(time.perf_counter() - t)
                    r.raise_for_status()
                    body = r.json()
                    logits = body["logits"]
                    decoder.append(body["timings"]["decoder"])
                    done += 1
            image_path = tmp / "images" / im["file_name"]
            inproc = _predictor_only(image_path, n=min(n_clicks, 50), seed=seed)
    return [
        {"what": "click over HTTP (cached embedding)", **_ms(http)},
        {"what": "  of which server decoder (SamPredictor.predict)", **_ms(decoder)},
        {"what": "SamPredictor.predict in-process", **_ms(inproc)},
        {"what": "encoder pass (first click on the image)", **_ms([encoder_s])},
    ]


CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]  # fmt: skip


def browser_clicks(n_clicks: int = 60, seed: int = 0) -> list[dict[str, Any]]:
    """Clicks in the real page (headless Debian Chromium through Playwright) on an image whose
    embedding is cached, in sessions of 1-4 clicks (left: object, right: background; Escape
    ends a session); the page's own timing, ``groundedSam.clickMs``: request sent -> response
    parsed -> RLE decoded -> mask drawn on the canvas."""
    import httpx
    from playwright.sync_api import sync_playwright

    rng = np.random.default_rng(seed)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        make_photos(tmp / "images", 2)
        with app_server(tmp / "ds", tmp / "images") as url, sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 820})
            page.goto(url + "/")
            page.wait_for_function("() => window.groundedSam && window.groundedSam.img !== null")

            def click(fx: float, fy: float, button: str) -> None:
                ox, oy, sc, w, h = page.evaluate(
                    "() => { const S = window.groundedSam; "
                    "return [S.view.ox, S.view.oy, S.view.scale, S.W, S.H]; }"
                )
                box = page.locator("#stage").bounding_box()
                n = page.evaluate("() => window.groundedSam.clickMs.length")
                page.mouse.click(box["x"] + ox + fx * w * sc, box["y"] + oy + fy * h * sc,
                                 button=button)  # fmt: skip
                page.wait_for_function(f"() => window.groundedSam.clickMs.length > {n}")

            click(0.5, 0.5, "left")  # the first click waits for the encoder: not counted
            page.keyboard.press("Escape")
            with httpx.Client(base_url=url, timeout=300) as c:
                _wait_prefetch_idle(c)
            page.evaluate("() => { window.groundedSam.clickMs.length = 0; }")
            done = 0
            while done < n_clicks:
                for k in range(int(rng.integers(1, 5))):
                    button = "left" if k == 0 or rng.random() < 0.7 else "right"
                    click(float(rng.uniform(0.05, 0.95)), float(rng.uniform(0.05, 0.95)), button)
                    done += 1
                page.keyboard.press("Escape")
            times = page.evaluate("() => window.groundedSam.clickMs.slice()")
            browser.close()
    return [{"what": "click in Chromium: request -> mask drawn", **_ms([t / 1000 for t in times])}]


def _predictor_only(image_path: Path, n: int, seed: int) -> list[float]:
    """``SamPredictor.predict`` alone on the same weights and image: the decoder floor.

    Run in a worker thread, as the server runs its model calls: on a busy 2-core machine
    torch's main-thread OpenMP team measured 8x slower than a worker thread's (2.2 s vs
    0.28 s per decoder call), which would compare two different things."""
    out: list[float] = []
    worker = threading.Thread(target=_predictor_loop, args=(image_path, n, seed, out))
    worker.start()
    worker.join()
    return out


def _predictor_loop(image_path: Path, n: int, seed: int, out: list[float]) -> None:
    from grounded_sam import SamPredictor, load_image
    from grounded_sam.testing.pipeline import mobile_sam

    img = load_image(image_path)
    pred = SamPredictor(mobile_sam())
    pred.set_image(img)
    rng = np.random.default_rng(seed)
    h, w = img.shape[:2]
    for i in range(n + 3):
        pts = np.array([[rng.uniform(0, w), rng.uniform(0, h)]])
        t = time.perf_counter()
        pred.predict(pts, np.array([1]), multimask_output=bool(i % 2))
        if i >= 3:
            out.append(time.perf_counter() - t)


def first_mask(n_images: int = 5, think: float | None = None) -> list[dict[str, Any]]:
    """Time to the first mask on a new image, with and without prefetch."""
    import httpx

    out = []
    pause = think
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        make_photos(tmp / "images", n_images)
        for mode, extra in (("prefetch", ()), ("no prefetch", ("--no-prefetch",))):
            shutil.rmtree(tmp / "ds", ignore_errors=True)
            with (
                app_server(tmp / "ds", tmp / "images", "--no-disk-cache", *extra) as url,
                httpx.Client(base_url=url, timeout=300) as c,
            ):
                ids = [r["id"] for r in _image_ids(c)]
                times, encoders = [], []
                for k, iid in enumerate(ids):
                    nxt = ",".join(str(i) for i in ids[k + 1 : k + 3])
                    t = time.perf_counter()
                    d = c.get(f"/api/images/{iid}" + (f"?next={nxt}" if nxt else "")).json()
                    w, h = d["image"]["width"], d["image"]["height"]
                    r = c.post(f"/api/images/{iid}/predict", json={"points": [[w / 2, h / 2, 1]]})
                    r.raise_for_status()
                    elapsed = time.perf_counter() - t
                    if k == 0:
                        if pause is None:
                            # a person works on an image for seconds; the same pause in both
                            # modes, long enough for an encoder pass on this machine
                            pause = max(2.0, 3.0 * r.json()["timings"]["encoder"])
                    else:
                        times.append(elapsed)
                        encoders.append(r.json()["timings"]["encoder"])
                    # "work" on the image: a few clicks spread over the pause
                    for j in range(3):
                        time.sleep(pause / 3)
                        c.post(
                            f"/api/images/{iid}/predict",
                            json={"points": [[w / 3 + j, h / 3, 1]]},
                        )
                out.append(
                    {
                        "what": f"first mask on a new image, {mode}",
                        **_ms(times),
                        "waited_for_encoder_ms": round(statistics.fmean(encoders) * 1000, 1),
                        "think_s": round(pause, 2),
                    }
                )
    return out


def load_test(clients: int = 8, ops: int = 50, seed: int = 0) -> list[dict[str, Any]]:
    """``clients`` x ``ops`` (prediction + annotation write) on loopback; counts errors and
    annotations lost."""
    import httpx

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        make_photos(tmp / "images", 4)
        ds = tmp / "ds"
        with app_server(ds, tmp / "images") as url:
            with httpx.Client(base_url=url, timeout=300) as c:
                images = _image_ids(c)
                for im in images:  # embeddings ready: the test measures clicks and writes
                    d = c.get(f"/api/images/{im['id']}").json()
                    im["width"], im["height"] = d["image"]["width"], d["image"]["height"]
                    c.post(f"/api/images/{im['id']}/predict", json={"points": [[5, 5, 1]]})
                _wait_prefetch_idle(c)
            lock = threading.Lock()
            predict_t: list[float] = []
            write_t: list[float] = []
            errors: list[str] = []
            acked: dict[int, tuple[str, int]] = {}  # id -> (RLE counts, last category)

            def client(k: int) -> None:
                rng = np.random.default_rng(seed + k)
                im = images[k % len(images)]
                w, h = im["width"], im["height"]
                logits = None
                with httpx.Client(base_url=url, timeout=300) as cl:
                    for op in range(ops):
                        try:
                            pts = [[float(rng.uniform(0, w)), float(rng.uniform(0, h)), 1]]
                            t = time.perf_counter()
                            r = cl.post(
                                f"/api/images/{im['id']}/predict",
                                json={"points": pts, "mask_input": logits if op % 3 else None},
                            )
                            dt = time.perf_counter() - t
                            if r.status_code != 200:
                                raise RuntimeError(f"predict {r.status_code}: {r.text}")
                            p = r.json()
                            logits = p["logits"]
                            cat = int(rng.integers(1, 5))
                            t = time.perf_counter()
                            r = cl.post(
                                f"/api/images/{im['id']}/annotations",
                                json={"segmentation": p["segmentation"], "category_id": cat},
                            )
                            dw = time.perf_counter() - t
                            if r.status_code != 201:
                                raise RuntimeError(f"write {r.status_code}: {r.text}")
                            ann = r.json()
                            with lock:
                                predict_t.append(dt)
                                write_t.append(dw)
                                acked[ann["id"]] = (p["segmentation"]["counts"], cat)
                            if op % 5 == 4:  # a relabel of this client's own annotation
                                cat = cat % 4 + 1
                                t = time.perf_counter()
                                r = cl.patch(
                                    f"/api/annotations/{ann['id']}", json={"category_id": cat}
                                )
                                dw = time.perf_counter() - t
                                if r.status_code != 200:
                                    raise RuntimeError(f"patch {r.status_code}: {r.text}")
                                with lock:
                                    write_t.append(dw)
                                    acked[ann["id"]] = (p["segmentation"]["counts"], cat)
                        except Exception as e:  # noqa: BLE001 - counted, reported
                            with lock:
                                errors.append(f"{type(e).__name__}: {e}")

            threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
            t0 = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            wall = time.perf_counter() - t0
        doc = json.loads((ds / "annotations.json").read_text())
    on_disk = {a["id"]: (a["segmentation"]["counts"], a["category_id"]) for a in doc["annotations"]}
    lost = sum(1 for i, v in acked.items() if on_disk.get(i) != v)
    n_req = len(predict_t) + len(write_t)
    return [
        {
            "what": f"load: {clients} clients x {ops} (predict + write)",
            "requests": n_req,
            "wall_s": round(wall, 2),
            "throughput_rps": round(n_req / wall, 1),
            "errors": len(errors),
            "annotations_acked": len(acked),
            "annotations_lost": lost,
            "first_error": errors[0] if errors else "",
        },
        {"what": "  predict latency", **_ms(predict_t)},
        {"what": "  write latency (add / relabel)", **_ms(write_t)},
    ]


# ----------------------------------------------------------------------------- screenshot
def _polygon_mask(size: tuple[int, int], points) -> np.ndarray:
    from PIL import Image, ImageDraw

    img = Image.new("L", (size[1], size[0]), 0)
    ImageDraw.Draw(img).polygon([tuple(p) for p in points], fill=1)
    return np.array(img, dtype=bool)


def _ellipse_mask(size, cx, cy, rx, ry) -> np.ndarray:
    yy, xx = np.mgrid[: size[0], : size[1]]
    return ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1


def screenshot_dataset(tmp: Path) -> tuple[Path, Path]:
    """A small dataset on skimage's chelsea in ``label``'s format: the cat and its left eye
    reviewed, its right eye flagged for review, the nose an unnamed candidate. The masks are
    drawn by hand (polygons and ellipses): no pretrained SAM can be downloaded here, and a
    random one draws noise."""
    from PIL import Image
    from skimage.data import chelsea

    from grounded_sam.engine import dataset as fmt
    from grounded_sam.masks import encode_rle, rle_area, rle_to_bbox

    images = tmp / "images"
    images.mkdir(parents=True)
    Image.fromarray(chelsea()).save(images / "chelsea.png")
    Image.fromarray(chelsea()[:, ::-1]).save(images / "chelsea_mirrored.png")
    root = tmp / "dataset"
    size = (300, 451)
    cat = _polygon_mask(
        size,
        [(22, 0), (75, 18), (175, 0), (345, 0), (395, 18), (372, 70), (366, 120), (360, 170),
         (348, 220), (330, 262), (318, 300), (0, 300), (0, 40)],
    )  # fmt: skip
    eye_l = _ellipse_mask(size, 170, 117, 34, 28)
    eye_r = _ellipse_mask(size, 320, 136, 24, 27)
    nose = _polygon_mask(size, [(232, 229), (291, 231), (276, 250), (262, 262), (249, 249)])
    cats = [
        {"id": 1, "name": "cat", "prompts": ["a cat"]},
        {"id": 2, "name": "eye", "prompts": ["an eye"]},
        {"id": 3, "name": "nose", "prompts": ["a nose"]},
    ]

    def rec(aid, cid, mask, score, reviewed):
        seg = encode_rle(mask)[0]
        r = {
            "id": aid, "image_id": 1, "category_id": cid, "segmentation": seg,
            "area": rle_area(seg), "bbox": rle_to_bbox(seg), "iscrowd": 0, "score": score,
            "mask_score": 0.93, "stability": 0.96, "prompt": cats[cid - 1]["prompts"][0],
        }  # fmt: skip
        if reviewed:
            r["reviewed"] = True
        return r

    fmt.write_manifest(root, {"sources": [{"kind": "folder", "path": str(images), "prefix": ""}]})
    fmt.write_annotations(
        root,
        {
            "images": [{"id": 1, "file_name": "chelsea.png", "width": 451, "height": 300}],
            "annotations": [
                rec(1, 1, cat, 0.91, True),
                rec(2, 2, eye_l, 0.74, True),
                rec(3, 2, eye_r, 0.38, False),
            ],
            "categories": cats,
        },
    )
    fmt.write_json_list(
        root / fmt.REVIEW,
        [
            {"image_id": 1, "annotation_id": 3, "file_name": "chelsea.png", "priority": 0.8,
             "reasons": ["low_score"], "detail": "detector score 0.38 is close to the 0.35"},
            {"image_id": 1, "annotation_id": None, "file_name": "chelsea.png", "priority": 0.3,
             "reasons": ["candidates"], "detail": "1 unlabelled candidate region"},
        ],
    )  # fmt: skip
    seg = encode_rle(nose)[0]
    fmt.write_json_list(
        root / fmt.CANDIDATES,
        [{"id": 1, "image_id": 1, "segmentation": seg, "area": rle_area(seg),
          "bbox": rle_to_bbox(seg), "mask_score": 0.9, "stability": 0.95}],
    )  # fmt: skip
    return root, images


def screenshot(path: str | Path, width: int = 1400, height: int = 820) -> Path:
    """The page on :func:`screenshot_dataset`, the flagged eye selected, saved to ``path``."""
    from playwright.sync_api import sync_playwright

    path = Path(path)
    with tempfile.TemporaryDirectory() as tmp:
        root, images = screenshot_dataset(Path(tmp))
        with app_server(root, images, classes=None) as url, sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": width, "height": height})
            page.goto(url + "/")
            page.wait_for_function("() => window.groundedSam && window.groundedSam.img !== null")
            page.locator("#instance-list li[data-kind=ann][data-id='3']").click()
            page.fill("#text-input", "a cat. an eye. a nose.")
            page.mouse.move(5, 5)
            time.sleep(0.3)
            path.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(path))
            browser.close()
    return path


# ----------------------------------------------------------------------------- main
def _table(rows: list[dict[str, Any]]) -> str:
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for r in rows:
        lines.append("| " + " | ".join(str(r.get(k, "")) for k in keys) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer clicks, images, operations")
    parser.add_argument(
        "--only",
        choices=("clicks", "browser", "first", "load"),
        action="append",
        help="run only these",
    )
    parser.add_argument("--screenshot", metavar="PNG", help="save the page on chelsea and exit")
    args = parser.parse_args(argv)
    if args.screenshot:
        print(screenshot(args.screenshot))
        return
    import torch

    print(f"# grounded-sam app on CPU ({torch.get_num_threads()} torch threads)\n")
    only = set(args.only or ("clicks", "browser", "first", "load"))
    if "clicks" in only:
        print(_table(click_latency(n_clicks=30 if args.quick else 100)) + "\n", flush=True)
    if "browser" in only:
        print(_table(browser_clicks(n_clicks=20 if args.quick else 60)) + "\n", flush=True)
    if "first" in only:
        print(_table(first_mask(n_images=3 if args.quick else 5)) + "\n", flush=True)
    if "load" in only:
        rows = load_test(clients=8, ops=10 if args.quick else 50)
        print(_table(rows) + "\n", flush=True)


if __name__ == "__main__":
    main()
