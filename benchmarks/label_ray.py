"""``grounded-sam label --engine ray`` against the local engine on the same folder.

Makes ``--images`` small JPEGs (``benchmarks/label.py``'s generator: crops and flips of the
bundled photos, every tenth one black), labels them once with the local engine and once per
``--actors`` count with the Ray engine (a local Ray instance with ``--cpus`` CPUs, started
once and timed on its own), every run with the same models (tiny random Grounding DINO and
the 2-block ViT SAM by default) and the same ``--threads`` per process, and reports per run:

- ``total_s``: the whole ``label`` call (models loaded in the driver, or on the actors, and
  the dataset assembled); ``ray_init_s`` (once) is not in it;
- ``first_unit_s``: from the start of the labelling to the first committed image (model
  loading; for Ray also the actors' start and the first block of images);
- ``steady_images_per_s``: images committed after the first second of arrivals, over the time
  they took (Ray returns units a block at a time, so this is measured from the end of the
  first block);
- ``overhead_vs_local``: ``total_s`` over the local engine's, and the same for the steady
  rate (local over Ray: > 1 means Ray is slower);
- ``identical_to_local``: ``annotations.json``, ``errors.json`` and ``review.json`` byte for
  byte the local run's;
- ``per_actor``: images committed per actor process, ``exactly_once`` (every image committed
  once, no unit twice, one unit file per image);
- a last ``driver-commit`` row: units per second one driver can commit on this filesystem
  (the ceiling of the Ray engine whatever the number of actors).

A 2-core machine cannot show scaling: two 1-thread actors compete with the driver and with
whatever else runs; see docs/scale-out.md for the plan on paper.

    .venv/bin/python benchmarks/label_ray.py --images 24
    .venv/bin/python benchmarks/label_ray.py --images 200 --actors 1,2,4 --cpus 8

Importable: ``run(n_images=..., ...)`` returns the result rows.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from label import label_config, make_images  # noqa: E402  (benchmarks/label.py)

OUTPUTS = ("annotations.json", "errors.json", "review.json")


def _timed(runner_cls: type, arrivals: list[float], **kw: Any):
    """``runner_cls(**kw)`` whose ``commit`` notes each unit's arrival (perf_counter)."""

    class Timed(runner_cls):  # type: ignore[misc, valid-type]
        def run(self, labeler, tasks, commit, *, store=None):
            arrivals.append(time.perf_counter())  # [0]: the labelling starts

            def noted(unit):
                commit(unit)
                arrivals.append(time.perf_counter())

            super().run(labeler, tasks, noted, store=store)

    return Timed(**kw)


def _steady(arrivals: list[float]) -> float | None:
    """Images per second after the first second of arrivals (the first block for Ray)."""
    units = arrivals[1:]
    if len(units) < 2:
        return None
    cut = units[0] + 1.0
    later = [t for t in units if t > cut]
    if len(later) < 2:
        return None
    first = max(t for t in units if t <= cut)  # the last arrival of the first wave
    return len(later) / (later[-1] - first)


def driver_commit_rate(dataset: Path, scratch: Path) -> dict[str, Any]:
    """What one driver can commit: the units of ``dataset`` round-tripped through JSON text
    (as they arrive from the actors) and written with ``write_unit`` (temporary file, fsync,
    rename) into ``scratch``, on the same filesystem. The ceiling of the Ray engine's
    throughput whatever the number of actors (the driver commits every unit)."""
    from grounded_sam.engine import dataset as ds

    units = list(ds.iter_units(dataset))
    texts = [json.dumps(u.to_json()) for u in units]
    t0 = time.perf_counter()
    for text in texts:
        ds.write_unit(scratch, ds.ImageUnit.from_json(json.loads(text)))
    seconds = time.perf_counter() - t0
    return {
        "engine": "driver-commit",
        "units": len(units),
        "units_per_s": round(len(units) / seconds, 1) if seconds > 0 else None,
        "mean_unit_kib": round(sum(map(len, texts)) / max(len(texts), 1) / 1024, 1),
    }


def _one(config, images: Path, out: Path, runner, threads: int) -> tuple[Any, float]:
    from grounded_sam.engine.run import label_dataset

    t0 = time.perf_counter()
    summary = label_dataset(config, images, out, progress=False, runner=runner, threads=threads)
    return summary, time.perf_counter() - t0


def run(
    n_images: int = 24,
    *,
    actors: tuple[int, ...] = (1, 2),
    cpus: int = 2,
    threads: int = 1,
    batch_size: int = 1,
    sam: str = "tiny",
    sam_checkpoint: str | None = None,
    detector_model: str | None = None,
    device: str | None = "cpu",
    gpus_per_actor: float | None = None,
    repeats: int = 1,
    workdir: str | Path | None = None,
) -> list[dict[str, Any]]:
    """Label ``n_images`` generated images with the local engine and with the Ray engine for
    each count in ``actors`` (interleaved ``repeats`` times; medians); one row per engine
    setting. The Ray instance is local (``cpus`` CPUs, no dashboard), started once."""
    import ray

    from grounded_sam.engine import dataset as ds
    from grounded_sam.engine.ray_runner import RayRunner
    from grounded_sam.engine.runners import LocalRunner

    tmp = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="gs_ray_bench_"))
    started_here = bool(actors) and not ray.is_initialized()
    try:
        images = tmp / "images"
        make_images(images, n_images)
        config = label_config(sam, sam_checkpoint, detector_model, device, batch_size=batch_size)
        t0 = time.perf_counter()
        if started_here:
            ray.init(
                address="local", num_cpus=cpus, include_dashboard=False, logging_level="WARNING"
            )
        ray_init_s = time.perf_counter() - t0
        settings: list[tuple[str, int | None]] = [("local", None)] + [("ray", a) for a in actors]
        runs: dict[tuple[str, int | None], list[dict[str, Any]]] = {s: [] for s in settings}
        for rep in range(repeats):
            for engine, n_actors in settings:
                arrivals: list[float] = []
                if engine == "local":
                    runner = _timed(LocalRunner, arrivals)
                else:
                    runner = _timed(
                        RayRunner, arrivals, actors=n_actors, gpus_per_actor=gpus_per_actor
                    )
                out = tmp / f"ds_{engine}_{n_actors}_{rep}"
                summary, total = _one(config, images, out, runner, threads)
                rec: dict[str, Any] = {
                    "out": out,
                    "summary": summary,
                    "total_s": total,
                    "first_unit_s": arrivals[1] - arrivals[0] if len(arrivals) > 1 else None,
                    "steady": _steady(arrivals),
                    "units": sum(1 for _ in ds.iter_units(out)),
                }
                if engine == "ray":
                    workers = sorted(runner.workers.values(), key=lambda w: w.pid)
                    rec["per_actor"] = [w.images for w in workers]
                    rec["duplicates"] = runner.duplicates
                    rec["actor_threads"] = sorted({w.threads for w in workers})
                runs[(engine, n_actors)].append(rec)
        local = runs[("local", None)]
        local_total = statistics.median(r["total_s"] for r in local)
        local_steady = statistics.median(r["steady"] or 0.0 for r in local)
        rows = []
        for engine, n_actors in settings:
            recs = runs[(engine, n_actors)]
            total = statistics.median(r["total_s"] for r in recs)
            steady = statistics.median(r["steady"] or 0.0 for r in recs)
            first = statistics.median(r["first_unit_s"] or 0.0 for r in recs)
            s = recs[-1]["summary"]
            row: dict[str, Any] = {
                "engine": engine,
                "actors": n_actors,
                "images": n_images,
                "labelled": s.labelled,
                "failed": s.failed,
                "threads": s.threads,
                "batch_size": batch_size,
                "sam": sam,
                "device": str(device),
                "repeats": repeats,
                "total_s": round(total, 2),
                "images_per_s": round(n_images / total, 3),
                "first_unit_s": round(first, 2),
                "steady_images_per_s": round(steady, 3),
                "encoder_images": s.encoder_images,
            }
            if engine == "ray":
                row["ray_init_s"] = round(ray_init_s, 2) if started_here else None
                row["cluster_cpus"] = cpus if started_here else None
                row["overhead_vs_local"] = round(total / local_total, 3)
                row["steady_overhead_vs_local"] = (
                    round(local_steady / steady, 3) if steady and local_steady else None
                )
                row["identical_to_local"] = all(
                    (r["out"] / name).read_bytes() == (local[0]["out"] / name).read_bytes()
                    for r in recs
                    for name in OUTPUTS
                )
                row["per_actor"] = [r["per_actor"] for r in recs]
                row["exactly_once"] = all(
                    sum(r["per_actor"]) == n_images
                    and r["duplicates"] == 0
                    and r["units"] == n_images
                    for r in recs
                )
                row["actor_threads"] = recs[-1]["actor_threads"]
            rows.append(row)
        rows.append(driver_commit_rate(local[0]["out"], tmp / "commit_scratch"))
        return rows
    finally:
        if started_here and ray.is_initialized():
            ray.shutdown()
        if workdir is None:
            shutil.rmtree(tmp, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=24)
    ap.add_argument(
        "--actors", default="1,2", help="comma-separated actor counts, one Ray run each"
    )
    ap.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray instance")
    ap.add_argument("--threads", type=int, default=1, help="torch threads in every process")
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--sam", default="tiny", help="tiny (2-block ViT), mobile_sam or a variant")
    ap.add_argument("--sam-checkpoint", default=None)
    ap.add_argument("--detector-model", default=None, help="default: tiny random Grounding DINO")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--gpus-per-actor", type=float, default=None)
    ap.add_argument("--repeats", type=int, default=1, help="interleaved runs per setting")
    ap.add_argument("--json", action="store_true", help="print the rows as JSON lines")
    args = ap.parse_args(argv)
    try:
        counts = tuple(int(a) for a in args.actors.split(","))
    except ValueError:
        ap.error(f"--actors must be comma-separated integers, got {args.actors!r}")
    if args.images < 4 or min(counts) < 1 or args.repeats < 1:
        ap.error("--images >= 4, actor counts >= 1 and --repeats >= 1")
    rows = run(
        args.images,
        actors=counts,
        cpus=args.cpus,
        threads=args.threads,
        batch_size=args.batch_size,
        sam=args.sam,
        sam_checkpoint=args.sam_checkpoint,
        detector_model=args.detector_model,
        device=args.device,
        gpus_per_actor=args.gpus_per_actor,
        repeats=args.repeats,
    )
    for row in rows:
        if args.json:
            print(json.dumps(row))
        else:
            print(" ".join(f"{k}={v}" for k, v in row.items()))


if __name__ == "__main__":
    main()
