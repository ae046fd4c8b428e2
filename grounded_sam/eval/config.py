"""YAML experiment configs: one dataset, a grid of detectors x SAM variants.

```yaml
out: runs/coco_val2017          # run i goes to <out>/<detector name>__<sam name>/
limit: null                     # first N images (null: all)
device: null                    # null: cuda if available
dataset:
  type: coco                    # coco | refcoco | folder
  annotations: /data/coco/annotations/instances_val2017.json
  images: /data/coco/val2017
detectors:
  - name: gdino-tiny            # label used in folder names and tables
    detector: grounding-dino    # a registered detector or gt-boxes
    args: {model: IDEA-Research/grounding-dino-tiny, box_threshold: 0.3}
  - {name: fastsam-s, detector: yolo-clip, args: {yolo: FastSAM-s}, refine_with_sam: false}
sams:
  - {name: mobile_sam, sam: mobile_sam, checkpoint: null}
  - {name: vit_h, sam: vit_h}
```
A detector with ``refine_with_sam: false`` keeps its own masks, so it runs once (with the
first SAM entry, which it does not use) instead of once per SAM.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from grounded_sam.errors import InputError
from grounded_sam.eval.runner import SCORE_MODES, RunSpec, build_pipeline, evaluate

__all__ = ["GridConfig", "load_config", "run_grid"]

_TOP_KEYS = {
    "out",
    "limit",
    "device",
    "dataset",
    "detectors",
    "sams",
    "score",
    "multimask_output",
    "warmup",
}
_DET_KEYS = {"name", "detector", "args", "refine_with_sam"}
_SAM_KEYS = {"name", "sam", "checkpoint", "precision"}


class GridConfig:
    """A parsed config: ``dataset`` spec dict, ``out`` folder, ``limit``, the run specs and
    the number of untimed ``warmup`` calls per run."""

    def __init__(
        self,
        dataset: dict[str, Any],
        out: Path,
        limit: int | None,
        runs: list[RunSpec],
        source: str,
        warmup: int = 1,
    ) -> None:
        self.dataset = dataset
        self.warmup = warmup
        self.out = out
        self.limit = limit
        self.runs = runs
        self.source = source

    def run_dir(self, spec: RunSpec) -> Path:
        return self.out / str(spec.name)


def _entries(cfg: dict, key: str, allowed: set[str], where: str) -> list[dict]:
    items = cfg.get(key)
    if not isinstance(items, list) or not items:
        raise InputError(f"{where}: '{key}' must be a non-empty list, got {items!r}")
    out = []
    for i, item in enumerate(items):
        if isinstance(item, str):
            item = {key[:-1]: item}
        if not isinstance(item, dict):
            raise InputError(f"{where}: {key}[{i}] must be a mapping or a name, got {item!r}")
        unknown = sorted(set(item) - allowed)
        if unknown:
            raise InputError(
                f"{where}: {key}[{i}] has unknown key(s) {unknown}; allowed {sorted(allowed)}"
            )
        if not item.get(key[:-1]):
            raise InputError(f"{where}: {key}[{i}] needs '{key[:-1]}'")
        out.append(item)
    return out


def load_config(
    source: str | os.PathLike | dict,
    *,
    out: str | os.PathLike | None = None,
    limit: int | None = None,
    device: str | None = None,
) -> GridConfig:
    """Parse a YAML file (or an already-loaded dict) into a :class:`GridConfig`.

    ``out``, ``limit`` and ``device`` override the file's values. Relative dataset paths are
    taken relative to the current directory.

    Raises:
        InputError: the file does not exist.
        ValueError: malformed YAML, unknown keys, missing fields.
    """
    if isinstance(source, dict):
        cfg, where = dict(source), "config"
    else:
        import yaml

        path = Path(source)
        if not path.is_file():
            raise InputError(f"config file {str(path)!r} does not exist")
        try:
            cfg = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as e:
            raise InputError(f"config file {str(path)!r} is not valid YAML: {e}") from e
        where = str(path)
    if not isinstance(cfg, dict):
        raise InputError(f"{where}: expected a mapping at the top level, got {type(cfg).__name__}")
    unknown = sorted(set(cfg) - _TOP_KEYS)
    if unknown:
        raise InputError(f"{where}: unknown key(s) {unknown}; allowed {sorted(_TOP_KEYS)}")
    dataset = cfg.get("dataset")
    if not isinstance(dataset, dict):
        raise InputError(
            f"{where}: 'dataset' must be a mapping with the data paths, got {dataset!r}"
        )
    out_dir = out if out is not None else cfg.get("out")
    if not out_dir:
        raise InputError(f"{where}: give 'out' (the folder for the runs) or --out")
    lim = limit if limit is not None else cfg.get("limit")
    dev = device if device is not None else cfg.get("device")
    score = cfg.get("score", "detector")
    if score not in SCORE_MODES:
        raise InputError(f"{where}: score must be one of {SCORE_MODES}, got {score!r}")
    detectors = _entries(cfg, "detectors", _DET_KEYS, where)
    sams = _entries(cfg, "sams", _SAM_KEYS, where)
    runs: list[RunSpec] = []
    for d in detectors:
        d_name = d.get("name") or d["detector"]
        refine = bool(d.get("refine_with_sam", True))
        for s in sams if refine else sams[:1]:
            precision = s.get("precision") or "fp32"
            default_name = s["sam"] if precision == "fp32" else f"{s['sam']}-{precision}"
            s_name = (s.get("name") or default_name) if refine else "no-sam"
            runs.append(
                RunSpec(
                    detector=d["detector"],
                    sam=s["sam"],
                    sam_checkpoint=s.get("checkpoint"),
                    precision=precision if refine else "fp32",
                    detector_args=d.get("args") or {},
                    device=dev,
                    refine_with_sam=refine,
                    multimask_output=bool(cfg.get("multimask_output", False)),
                    score=score,
                    name=f"{d_name}__{s_name}",
                )
            )
    names = [r.name for r in runs]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise InputError(f"{where}: run names {dup} repeat; give distinct 'name's")
    warmup = cfg.get("warmup", 1)
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise InputError(f"{where}: warmup must be an integer >= 0, got {warmup!r}")
    return GridConfig(dict(dataset), Path(out_dir), lim, runs, where, warmup=warmup)


def run_grid(
    config: GridConfig,
    *,
    overwrite: bool = False,
    show_progress: bool = True,
    sam_factory: Callable[[RunSpec], Any] | None = None,
    detector_factory: Callable[[RunSpec], Any] | None = None,
) -> list[Path]:
    """Run every detector x SAM entry of ``config`` in turn, then compare them.

    Each run is resumable on its own (see :func:`~grounded_sam.eval.runner.evaluate`), so a
    grid interrupted anywhere continues where it stopped. ``sam_factory`` /
    ``detector_factory`` may return ready objects for a spec (``None``: build by name).
    Writes ``<out>/comparison.md`` and ``<out>/comparison.png``; returns the run folders.
    """
    import gc

    from grounded_sam.eval.compare import compare_runs
    from grounded_sam.eval.datasets import build_dataset

    dataset = build_dataset(config.dataset, limit=config.limit)
    run_dirs = []
    for spec in config.runs:
        sam = sam_factory(spec) if sam_factory is not None else None
        det = detector_factory(spec) if detector_factory is not None else None
        pipeline, oracle = build_pipeline(spec, sam=sam, detector=det)
        run_dir = config.run_dir(spec)
        evaluate(
            dataset,
            pipeline,
            run_dir,
            spec=spec,
            oracle=oracle,
            overwrite=overwrite,
            show_progress=show_progress,
            warmup=config.warmup,
        )
        run_dirs.append(run_dir)
        del pipeline, oracle, sam, det
        gc.collect()
        _empty_cuda_cache()
    compare_runs(run_dirs, config.out)
    return run_dirs


def _empty_cuda_cache() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
