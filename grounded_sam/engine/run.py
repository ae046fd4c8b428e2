"""A labelling run: list the images, refuse a changed configuration, skip what is done, label
the rest through a runner (one committed unit per image), assemble the dataset.

Crash safety: the manifest (``label.json``) is written before any unit; each unit is written
atomically after its image is labelled; ``annotations.json`` and the other lists are
assembled from the units at the end. A run killed at any moment (``kill -9`` included) loses
at most the images in flight; running the same command again labels only the images without
a unit and assembles exactly what an uninterrupted run would have.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from grounded_sam.engine.assemble import Assembly, assemble
from grounded_sam.engine.dataset import (
    ANNOTATIONS,
    AUDIT_MD,
    CANDIDATES,
    ERRORS,
    MANIFEST,
    OUTPUT_NAMES,
    REVIEW,
    UNITS,
    ImageUnit,
    file_digest,
    read_manifest,
    read_unit,
    remove_stale_temporaries,
    unit_path,
    write_manifest,
    write_unit,
)
from grounded_sam.engine.labeler import LabelConfig, Labeler
from grounded_sam.engine.ontology import Ontology
from grounded_sam.engine.progress import Progress, format_duration
from grounded_sam.engine.runners import LocalRunner, Runner
from grounded_sam.engine.sources import ImageTask, Shard, list_images, parse_shard, select_shard
from grounded_sam.errors import InputError

__all__ = ["ENGINES", "LabelSummary", "label", "label_dataset", "make_runner", "merge"]

_IDENTITY_KEYS = ("ontology", "detector", "sam", "settings")


@dataclass
class LabelSummary:
    """What a run did.

    Attributes:
        dataset: the dataset folder.
        images: images of this run (of this shard with ``--shard``).
        done_before: of those, already labelled by an earlier run (skipped).
        labelled: labelled by this run.
        failed: unreadable images met by this run (listed in ``errors.json``).
        seconds: wall time of the run (model loading and assembly included).
        label_seconds: time spent labelling (from the first image to the last).
        shard: the shard, or ``None``.
        assembly: what was assembled (``None`` for a shard run: units only).
        audit: the audit's overall figures with ``--audit``.
        encoder_images: images this run passed through SAM's image encoder.
        interrupted: stopped by Ctrl-C (the work done is kept).
        failed_files: the ``file_name`` of each unreadable image met by this run.
        errors: ``{"file_name", "reason"}`` of each unreadable image met by this run (by
            :func:`merge`: of every unreadable image in the dataset).
        notes: remarks on the inputs (e.g. a file given twice, labelled once), also written
            to stderr when the run starts.
        threads: CPU threads the models computed with (the dataset's recorded count).
        engine: the runner's name (``local``, ``ray``).
    """

    dataset: Path
    images: int = 0
    done_before: int = 0
    labelled: int = 0
    failed: int = 0
    seconds: float = 0.0
    shard: Shard | None = None
    assembly: Assembly | None = None
    audit: dict[str, Any] | None = None
    encoder_images: int = 0
    label_seconds: float = 0.0
    interrupted: bool = False
    failed_files: list[str] = field(default_factory=list)
    errors: list[dict[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    threads: int | None = None
    engine: str = "local"

    @property
    def exit_code(self) -> int:
        """0 when every image was labelled, 2 when some could not be read (CLI convention)."""
        bad = self.assembly.errors if self.assembly is not None else self.failed_files
        return 2 if bad else 0

    def lines(self) -> list[str]:
        """The final summary, for people."""
        n = self.labelled + self.failed
        rate = n / self.label_seconds if self.label_seconds > 0 else 0.0
        where = f"shard {self.shard}: " if self.shard is not None else ""
        took = format_duration(self.seconds)
        if n:
            out = [
                f"{where}{self.images} image{'s' if self.images != 1 else ''}: {self.labelled} "
                f"labelled now ({rate:.2f} images/s), {self.done_before} done before, "
                f"{self.failed} failed, in {took}"
            ]
        else:
            out = [f"{where}{self.images} images, all labelled before (nothing to do), in {took}"]
        a = self.assembly
        ds = self.dataset
        if a is not None:
            per = ", ".join(f"{k} {v}" for k, v in a.per_class.items())
            out.append(
                f"dataset: {a.images} images, {a.annotations} instances ({per}), {a.empty} empty, "
                f"{len(a.errors)} failed -> {ds / ANNOTATIONS}"
            )
            if a.errors:
                out.append(f"unreadable images ({len(a.errors)}) are listed in {ds / ERRORS}")
            out.append(f"review queue: {a.review} items -> {ds / REVIEW}")
            if (ds / CANDIDATES).exists():
                out.append(f"candidates: {a.candidates} unlabelled regions -> {ds / CANDIDATES}")
            if a.missing:
                out.append(
                    f"{len(a.missing)} images not labelled yet: run the same command again to "
                    "finish"
                )
        else:
            out.append(
                f"units written to {ds / UNITS}; when every shard is done, assemble the dataset "
                f"with: grounded-sam label --merge {ds}"
            )
        if self.audit is not None:
            au = self.audit
            out.append(
                f"audit: {au['matched']} matched, {au['missed']} missed, {au['new']} new, "
                f"{au['low_overlap']} low-overlap pairs -> {ds / AUDIT_MD}"
            )
        return out


# --------------------------------------------------------------------------- manifest checks
def _describe_change(part: str, old: Any, new: Any) -> str:
    if part == "ontology":
        on = [c["name"] for c in old.get("classes", [])]
        nn = [c["name"] for c in new.get("classes", [])]
        if on != nn:
            return f"classes {on} -> {nn}"
        return "the ontology's prompts, thresholds or negatives"
    if isinstance(old, dict) and isinstance(new, dict):
        keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        bits = [
            f"{k.rsplit('_', 1)[0]} changed"  # a weights digest: the value says nothing
            if k.endswith("blake2b")
            else f"{k} {old.get(k)!r} -> {new.get(k)!r}"
            for k in keys
            if k != "options"
        ]
        if "options" in keys:
            o, n = old.get("options") or {}, new.get("options") or {}
            bits += [
                f"{k} changed"  # a local model file or folder: its digest says nothing
                if isinstance(o.get(k), dict) or isinstance(n.get(k), dict)
                else f"{k} {o.get(k)!r} -> {n.get(k)!r}"
                for k in sorted(set(o) | set(n))
                if o.get(k) != n.get(k)
            ]
        return f"{part} " + ", ".join(bits)
    return f"{part} {old!r} -> {new!r}"


def _check_same(out: Path, manifest: dict[str, Any], identity: dict[str, Any]) -> None:
    changed = [k for k in _IDENTITY_KEYS if manifest.get(k) != identity[k]]
    if changed:
        what = "; ".join(_describe_change(k, manifest.get(k), identity[k]) for k in changed)
        raise InputError(
            f"{out} was labelled with a different configuration ({what}); use --overwrite to "
            "relabel it from scratch, or another --out"
        )


def _check_not_edited(out: Path, manifest: dict[str, Any]) -> None:
    path = out / ANNOTATIONS
    if path.exists() and file_digest(path) not in manifest.get("assembled", []):
        raise InputError(
            f"{path} was changed after grounded-sam label wrote it (edited in the app or by "
            "hand); assembling it again would discard those edits: label into another --out, "
            "or use --overwrite to relabel from scratch"
        )


def _clear(out: Path) -> None:
    """Remove what ``label`` writes (never other files of the folder)."""
    shutil.rmtree(out / UNITS, ignore_errors=True)
    for name in OUTPUT_NAMES:
        (out / name).unlink(missing_ok=True)


def _has_work(out: Path) -> bool:
    """Whether ``out`` holds anything a run produced (units or assembled files)."""
    units = out / UNITS
    return (out / ANNOTATIONS).exists() or (units.is_dir() and any(units.iterdir()))


def _check_out(
    out: Path, identity: dict[str, Any], *, overwrite: bool, shard: Shard | None
) -> dict[str, Any] | None:
    """Check ``out`` against this run without changing anything; the manifest to keep
    (``None``: a new one will be written)."""
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {str(out)!r} exists and is not a folder")
    if overwrite and shard is not None:
        raise InputError(
            "--overwrite cannot be combined with --shard (one shard would delete the work of "
            "the others); delete the dataset folder first, or use a new --out"
        )
    if not out.is_dir() or overwrite:
        return None
    try:
        manifest = read_manifest(out)
    except InputError as e:
        raise InputError(f"{e}; use --overwrite to relabel from scratch") from None
    if manifest is None:
        if any(out.iterdir()):
            raise InputError(
                f"--out {str(out)!r} is not empty and is not a grounded-sam dataset (no "
                f"{MANIFEST}); choose a new or empty folder, or use --overwrite to label into it"
            )
        return None
    if shard is None and not _has_work(out):
        return None  # e.g. a first run that failed to load its models: nothing to keep
    _check_same(out, manifest, identity)
    if shard is None:
        _check_not_edited(out, manifest)
    return manifest


def _write_out(
    out: Path,
    identity: dict[str, Any],
    extra: dict[str, Any],
    manifest: dict[str, Any] | None,
    *,
    overwrite: bool,
    shard: Shard | None,
) -> dict[str, Any]:
    """Clear (``overwrite``) and write the manifest; returns the manifest in force."""
    if overwrite and out.is_dir():
        _clear(out)
    if manifest is None:
        out.mkdir(parents=True, exist_ok=True)
        fresh = {**identity, **extra, "assembled": []}
        if shard is None:
            write_manifest(out, fresh)
            return read_manifest(out) or fresh
        if write_manifest(out, fresh, create=True):
            return read_manifest(out) or fresh
        manifest = read_manifest(out)  # another shard created it first
        assert manifest is not None
        _check_same(out, manifest, identity)
    if shard is None and any(manifest.get(k) != v for k, v in extra.items()):
        manifest.update(extra)  # e.g. the images now live elsewhere
        write_manifest(out, {k: v for k, v in manifest.items() if k not in ("format", "version")})
    return manifest


def _record_digest(out: Path, digest: str) -> None:
    """Remember the annotations.json about to be written (the last two are kept: a crash
    between recording and renaming leaves the previous file, which must stay accepted)."""
    m = read_manifest(out) or {}
    m = {k: v for k, v in m.items() if k not in ("format", "version")}
    m["assembled"] = [*[d for d in m.get("assembled", []) if d != digest], digest][-2:]
    write_manifest(out, m)


def _check_threads(out: Path, threads: int | None, manifest: dict[str, Any] | None) -> int:
    """The CPU thread count of this run: the one recorded in the dataset, else ``threads``,
    else PyTorch's default here. Kernels may sum in another order with another count (the
    last float bits of scores and mask logits change), so a dataset keeps one count for
    every run, engine and shard into it."""
    import torch

    if threads is not None and (
        isinstance(threads, bool) or not isinstance(threads, int) or threads < 1
    ):
        raise InputError(f"--threads must be an integer >= 1, got {threads!r}")
    recorded = (manifest or {}).get("threads")
    if recorded is None:
        return threads or torch.get_num_threads()
    if threads is not None and threads != recorded:
        raise InputError(
            f"{out} was labelled with {recorded} CPU threads per process; --threads {threads} "
            "could change the last bits of the results: leave --threads out (the recorded "
            "count is used), or use --overwrite to relabel from scratch"
        )
    return int(recorded)


@contextlib.contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    """PyTorch computes with ``n`` threads in this process for the block (restored after)."""
    import torch

    before = torch.get_num_threads()
    if n != before:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


def _is_done(out: Path, task: ImageTask) -> bool:
    unit = read_unit(unit_path(out, task.file_name))
    return unit is not None and unit.ok and unit.size_bytes == task.size_bytes


def _assemble(out: Path, manifest: dict[str, Any], file_names: Sequence[str] | None) -> Assembly:
    onto = Ontology.from_dict(manifest["ontology"], source=str(out / MANIFEST))
    remove_stale_temporaries(out)
    return assemble(
        out,
        onto.categories(),
        manifest.get("thresholds", [None] * len(onto.classes)),
        file_names=file_names,
        with_candidates=manifest.get("settings", {}).get("candidates") is not None,
        record_digest=lambda d: _record_digest(out, d),
    )


# --------------------------------------------------------------------------- runs
def label_dataset(
    config: LabelConfig | Labeler,
    images: Sequence[str | os.PathLike] | str | os.PathLike,
    out: str | os.PathLike,
    *,
    shard: str | Shard | tuple[int, int] | None = None,
    overwrite: bool = False,
    audit: str | os.PathLike | None = None,
    progress: bool = True,
    runner: Runner | None = None,
    threads: int | None = None,
) -> LabelSummary:
    """Label ``images`` into the dataset ``out`` (see :func:`label`).

    ``config`` is a :class:`LabelConfig` (models are built only if some image needs
    labelling, and by the runner's workers for a runner with ``builds_models``, e.g. Ray) or
    a ready :class:`Labeler`.
    """
    t0 = time.perf_counter()
    out = Path(os.path.expanduser(os.fspath(out)))
    shard = parse_shard(shard)
    if audit is not None and shard is not None:
        raise InputError(
            "--audit needs the whole dataset; run it without --shard (e.g. with --merge)"
        )
    labeler = config if isinstance(config, Labeler) else None
    cfg = labeler.config if labeler is not None else config
    notes: list[str] = []
    tasks, sources = list_images(images, exclude=out, notes=notes)
    for note in notes:  # before any model is loaded: the inputs are settled
        sys.stderr.write(f"note: {note}\n")
    existing = None
    if audit is not None:
        from grounded_sam.engine.audit import load_existing

        existing = load_existing(audit)  # a bad file fails before any work
    identity = labeler.identity() if labeler is not None else cfg.identity()
    extra = {"thresholds": cfg.thresholds(), "sources": sources}
    kept = _check_out(out, identity, overwrite=overwrite, shard=shard)
    extra["threads"] = _check_threads(out, threads, kept)
    runner = runner or LocalRunner()
    # a distributed runner builds the models on its workers (the driver may have no GPU)
    remote = bool(getattr(runner, "builds_models", False))
    mine = select_shard(tasks, shard)
    todo = mine if kept is None else [t for t in mine if not _is_done(out, t)]
    summary = LabelSummary(out, images=len(mine), done_before=len(mine) - len(todo), shard=shard)
    summary.notes = notes
    summary.engine = runner.name or type(runner).__name__
    bar = Progress(0, stream=None)
    stage = "load"  # then "label", "assemble": what a Ctrl-C interrupts

    def commit(unit: ImageUnit) -> None:
        write_unit(out, unit)
        bar.update(unit.ok)
        if unit.ok:
            summary.labelled += 1
        else:
            summary.failed += 1
            summary.failed_files.append(unit.file_name)
            summary.errors.append({"file_name": unit.file_name, "reason": unit.reason or ""})

    try:
        if todo and labeler is None and not remote:
            labeler = Labeler.from_config(cfg)  # a model that fails to load changes nothing
        manifest = _write_out(out, identity, extra, kept, overwrite=overwrite, shard=shard)
        # another shard may have created the manifest first: its count is the dataset's
        summary.threads = n_threads = _check_threads(out, threads, manifest)
        stage = "label"
        if todo:
            from grounded_sam.engine.embeddings import EmbeddingStore

            store = EmbeddingStore(out, identity["sam"])
            before = labeler.pipe.encoder_calls if labeler is not None else 0
            # the bar starts once the models are loaded, so its rate and ETA are labelling's
            bar = Progress(len(todo), stream=sys.stderr if progress else None)
            try:
                with _torch_threads(n_threads):
                    runner.run(labeler if labeler is not None else cfg, todo, commit, store=store)
            finally:
                summary.encoder_images = (
                    labeler.pipe.encoder_calls - before
                    if labeler is not None
                    else getattr(runner, "encoder_images", 0)
                )
                summary.label_seconds = time.perf_counter() - bar.start
        bar.close()
        stage = "assemble"
        if shard is None:
            summary.assembly = _assemble(out, manifest, [t.file_name for t in tasks])
            if existing is not None:
                from grounded_sam.engine.audit import audit_dataset

                summary.audit = audit_dataset(out, existing)
    except KeyboardInterrupt:
        bar.close()
        summary.interrupted = True
        # always (--quiet too): one line saying that nothing is lost and how to finish
        sys.stderr.write(_interrupted_line(stage, summary.labelled + summary.failed, len(todo)))
        if stage == "label" and shard is None:
            _assemble(out, manifest, [t.file_name for t in tasks])
        raise
    finally:
        bar.close()
    summary.seconds = time.perf_counter() - t0
    return summary


def _interrupted_line(stage: str, done: int, todo: int) -> str:
    """The resume hint after Ctrl-C, for the ``stage`` interrupted."""
    if stage == "load":
        return (
            "interrupted before any image was labelled: run the same command again to label them\n"
        )
    if stage == "assemble":
        return (
            "interrupted while assembling the dataset; every image is labelled and saved: run "
            "the same command again to finish\n"
        )
    return (
        f"interrupted after {done} of {todo} images; the work done is saved: run the same "
        "command again to finish\n"
    )


def merge(dataset: str | os.PathLike, *, audit: str | os.PathLike | None = None) -> LabelSummary:
    """Assemble ``annotations.json`` (and the other lists) from every unit in ``dataset``, e.g.
    after ``--shard`` runs on several machines wrote their units there.

    Raises:
        InputError: not a dataset written by ``label``, or ``annotations.json`` edited since
            it was assembled.
    """
    t0 = time.perf_counter()
    out = Path(os.path.expanduser(os.fspath(dataset)))
    if not out.is_dir():
        raise InputError(f"dataset folder {str(out)!r} not found")
    manifest = read_manifest(out)
    if manifest is None:
        raise InputError(
            f"{str(out)!r} is not a dataset written by grounded-sam label (no {MANIFEST})"
        )
    existing = None
    if audit is not None:
        from grounded_sam.engine.audit import load_existing

        existing = load_existing(audit)
    _check_not_edited(out, manifest)
    summary = LabelSummary(out)
    summary.assembly = _assemble(out, manifest, None)
    summary.images = summary.done_before = summary.assembly.images + len(summary.assembly.errors)
    summary.failed_files = [e["file_name"] for e in summary.assembly.errors]
    summary.errors = list(summary.assembly.errors)
    if existing is not None:
        from grounded_sam.engine.audit import audit_dataset

        summary.audit = audit_dataset(out, existing)
    summary.seconds = time.perf_counter() - t0
    return summary


def label(
    images: Sequence[str | os.PathLike] | str | os.PathLike,
    classes: Any,
    out: str | os.PathLike,
    *,
    shard: str | Shard | tuple[int, int] | None = None,
    overwrite: bool = False,
    audit: str | os.PathLike | None = None,
    progress: bool = True,
    runner: Runner | None = None,
    engine: str = "local",
    ray_address: str | None = None,
    actors: str | int | tuple[int, int] | None = None,
    gpus_per_actor: float | None = None,
    cpus_per_actor: float | None = None,
    threads: int | None = None,
    **options: Any,
) -> LabelSummary:
    """Label a folder of images into a COCO dataset, resumably.

    Args:
        images: image files and/or folders (walked recursively).
        classes: the ontology: a YAML file, an inline ``"cat,dog"``, a mapping or an
            :class:`~grounded_sam.engine.ontology.Ontology`.
        out: the dataset folder (created; an earlier run's work in it is reused).
        shard: ``"I/N"``: label only shard I of N (units only; assemble with :func:`merge`).
        overwrite: discard an earlier run in ``out`` (needed when the ontology, detector, SAM
            or settings changed).
        audit: an existing COCO file to compare the labels with (``audit.md``/``audit.json``).
        progress: show a progress bar / lines on stderr.
        runner: how to run the per-image work (default: the ``engine``'s).
        engine: ``"local"`` (this process) or ``"ray"`` (a Ray cluster through Ray Data, with
            the same output; needs ``pip install "grounded-sam[ray]"``; see
            ``docs/scale-out.md``).
        ray_address, actors, gpus_per_actor, cpus_per_actor: the Ray engine's cluster
            (``"auto"``, ``"ray://HOST:PORT"``; default: a local instance), actor pool (``N``
            or ``(MIN, MAX)``) and resources per actor: see
            :class:`~grounded_sam.engine.ray_runner.RayRunner`.
        threads: CPU threads the models compute with in every process (each Ray actor too);
            recorded in the dataset when it is created and used by every later run into it.
            Default: the recorded count, else PyTorch's default here.
        **options: :class:`~grounded_sam.engine.labeler.Labeler` options (``detector``,
            ``sam``, ``sam_checkpoint``, ``device``, ``precision``, ``exclusive``,
            ``candidates``, ``batch_size``, ``save_embeddings``, and detector options such as
            ``box_threshold``).

    Returns:
        :class:`LabelSummary` (``exit_code`` is 2 when some images could not be read).

    Example::

        from grounded_sam import label
        summary = label("photos/", "cat,dog", "dataset/", detector="grounding-dino")
        print("\\n".join(summary.lines()))
    """
    if runner is None:
        runner = make_runner(
            engine,
            ray_address=ray_address,
            actors=actors,
            gpus_per_actor=gpus_per_actor,
            cpus_per_actor=cpus_per_actor,
        )
    elif engine != "local":
        raise InputError(f"give either runner= or engine={engine!r}, not both")
    config = LabelConfig.create(classes, **options)
    return label_dataset(
        config,
        images,
        out,
        shard=shard,
        overwrite=overwrite,
        audit=audit,
        progress=progress,
        runner=runner,
        threads=threads,
    )


ENGINES = ("local", "ray")


def make_runner(
    engine: str = "local",
    *,
    ray_address: str | None = None,
    actors: str | int | tuple[int, int] | None = None,
    gpus_per_actor: float | None = None,
    cpus_per_actor: float | None = None,
) -> Runner:
    """The runner of ``engine`` (``"local"`` or ``"ray"``) with its options.

    Raises:
        InputError: an unknown engine, or Ray options with the local engine.
        MissingDependency: ``"ray"`` without Ray installed.
    """
    if engine == "ray":
        from grounded_sam.engine.ray_runner import RayRunner

        return RayRunner(
            address=ray_address,
            actors=actors,
            gpus_per_actor=gpus_per_actor,
            cpus_per_actor=cpus_per_actor,
        )
    if engine != "local":
        raise InputError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    given = [
        name
        for name, value in (
            ("ray_address", ray_address),
            ("actors", actors),
            ("gpus_per_actor", gpus_per_actor),
            ("cpus_per_actor", cpus_per_actor),
        )
        if value is not None
    ]
    if given:
        verb = "applies" if len(given) == 1 else "apply"
        raise InputError(f"{', '.join(given)} {verb} to engine='ray' only")
    return LocalRunner()
