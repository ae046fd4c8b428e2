"""The Ray Data runner: ``grounded-sam label ... --engine ray``.

The images still to do become a Ray Dataset of tasks (``file_name``, ``path``,
``size_bytes``), a few images per block; ``map_batches`` runs them through a pool of actors,
each of which builds the detector and SAM **once** (:meth:`Labeler.from_config` on the
pickled :class:`~grounded_sam.engine.labeler.LabelConfig`), then reads, decodes and labels
``batch_size`` images per call with :meth:`Labeler.label_batch`: the very function the local
engine calls, so a unit (error units of unreadable images included) is the same whichever
engine made it. The driver streams the units back as they are done (Ray Data's streaming
executor, with its back-pressure: a slow driver throttles the actors, nothing piles up) and
commits each one through the run's ``commit`` (the crash-safe unit files of
:mod:`grounded_sam.engine.dataset`); listing, skipping finished images and assembling
``annotations.json`` are the run's, shared with the local engine.

Identical results:

- **Threads.** CPU kernels may sum in another order with another thread count (measured on
  the tiny test SAM: predicted IoUs differ by ~3e-7 between 1, 2, 3 and 5 threads), and Ray
  gives each actor ``OMP_NUM_THREADS`` = its CPU reservation (1 by default). Each actor
  therefore sets ``torch.set_num_threads`` to the driver's count at run time, which
  :func:`~grounded_sam.engine.run.label_dataset` pins to the count recorded in the dataset
  (``label.json`` ``threads``): Ray's choice of threads never reaches the arithmetic.
- **Exactly once.** Ray Data restarts a killed actor and retries the tasks it held; the
  driver commits the first unit that arrives for each image and ignores repeats (counted in
  :attr:`RayRunner.duplicates`), and checks at the end that every task came back. Units are
  keyed by ``file_name`` and written atomically, so the output cannot hold an image twice.

Ray is an optional dependency (``pip install "grounded-sam[ray]"``), imported only here and
only when a :class:`RayRunner` is made.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import socket
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from grounded_sam.engine.dataset import ImageUnit
from grounded_sam.engine.runners import Runner
from grounded_sam.engine.sources import ImageTask
from grounded_sam.errors import GroundedSAMError, InputError, require

__all__ = ["INSTALL", "RayRunner", "WorkerReport", "parse_actors"]

INSTALL = 'pip install "grounded-sam[ray]"'

log = logging.getLogger(__name__)

# A block (one Ray task on an actor) holds 1..16 labelling batches: small enough that the
# driver receives units within seconds (an actor task's output comes back when the task
# ends) and a retried task relabels few images; large enough that 1M images are not 1M Ray
# objects (from_items costs ~1.5 ms per block on a loaded 2-core CPU, see docs/scale-out.md).
_MAX_BATCHES_PER_BLOCK = 16
# ... and at least this many blocks per actor, so small runs still spread over the pool
_BLOCKS_PER_ACTOR = 4

# Ray Data's loggers that report on every execution (progress bars off, "execution
# finished"): quietened for the run; Ray Data's warnings (e.g. resources) stay visible
_CHATTY_LOGGERS = (
    "ray.data._internal.progress",
    "ray.data._internal.execution.streaming_executor",
)


def parse_actors(value: str | int | tuple[int, int] | None) -> tuple[int, int] | None:
    """``"4"`` -> ``(4, 4)`` (a fixed pool); ``"1,4"`` -> ``(1, 4)`` (an autoscaling pool);
    ``None`` stays ``None`` (the runner picks one actor per GPU, or per ``threads`` CPUs).

    Raises:
        InputError: not ``N`` or ``MIN,MAX`` with integers ``1 <= MIN <= MAX``.
    """
    if value is None:
        return None
    if isinstance(value, bool):
        raise InputError(f"--actors must be N or MIN,MAX, got {value!r}")
    if isinstance(value, int):
        lo = hi = value
    elif isinstance(value, tuple):
        if len(value) != 2:
            raise InputError(f"--actors must be N or MIN,MAX, got {value!r}")
        lo, hi = value
    else:
        parts = str(value).replace(" ", "").split(",")
        try:
            if len(parts) not in (1, 2):
                raise ValueError
            lo, hi = int(parts[0]), int(parts[-1])
        except ValueError:
            raise InputError(
                f"--actors must be N or MIN,MAX with integers (e.g. 4, or 1,8 for a pool that "
                f"grows with the cluster), got {value!r}"
            ) from None
    if not (isinstance(lo, int) and isinstance(hi, int)) or isinstance(lo, bool):
        raise InputError(f"--actors must be N or MIN,MAX with integers, got {value!r}")
    if lo < 1 or hi < lo:
        raise InputError(f"--actors needs 1 <= MIN <= MAX, got {value!r}")
    return lo, hi


def _number(value: Any, name: str, *, low: float, high: float | None = None) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise InputError(f"{name} must be a number, got {value!r}")
    if value < low or (high is not None and value > high):
        bound = f">= {low:g}" if high is None else f"in [{low:g}, {high:g}]"
        raise InputError(f"{name} must be {bound}, got {value!r}")
    return float(value)


@dataclass
class WorkerReport:
    """What one actor process did in a run.

    Attributes:
        node: the IP address of its node.
        pid: its process id (a restarted actor is a new process, so a new report).
        threads: ``torch.get_num_threads()`` it computed with (the run's count).
        ray_threads: ``OMP_NUM_THREADS`` as Ray set it for the process (what Ray gave it).
        images: units it produced that were committed.
        encoder_images: images it passed through SAM's image encoder.
    """

    node: str
    pid: int
    threads: int
    ray_threads: str | None
    images: int = 0
    encoder_images: int = 0


class _LabelWorker:
    """The Ray Data callable class: one per actor. Builds the models once, then labels
    batches of tasks (a ``pyarrow.Table`` with ``file_name``, ``path``, ``size_bytes``; -1
    for an unknown size) into a table of unit JSON texts plus who made them."""

    def __init__(self, config: Any, threads: int, store: Any) -> None:
        import ray
        import torch

        from grounded_sam.engine.labeler import Labeler

        # what Ray gave this process, before the run's own count replaces it (this process
        # is the actor's: changing its thread count touches nothing else)
        self.ray_threads = os.environ.get("OMP_NUM_THREADS")
        torch.set_num_threads(threads)
        self.error: tuple[str, str] | None = None
        try:
            self.labeler = Labeler.from_config(config)
        except GroundedSAMError as e:
            # raised here, Ray would report a bare "actor died" with a traceback and retry;
            # the first batch hands it to the driver instead, which re-raises it (one line)
            self.labeler, self.error = None, (type(e).__name__, str(e))
        self.store = store
        self.pid = os.getpid()
        self.node = ray.util.get_node_ip_address()

    def __call__(self, batch: Any) -> Any:
        import pyarrow as pa
        import torch

        tasks = [
            ImageTask(name, path, None if size < 0 else size)
            for name, path, size in zip(
                batch.column("file_name").to_pylist(),
                batch.column("path").to_pylist(),
                batch.column("size_bytes").to_pylist(),
                strict=True,
            )
        ]
        n = len(tasks)
        if self.error is not None:
            texts, encoded, errors = [""] * n, 0, [json.dumps(self.error)] * n
        else:
            before = self.labeler.pipe.encoder_calls
            units = self.labeler.label_batch(tasks, store=self.store)
            encoded = self.labeler.pipe.encoder_calls - before
            texts, errors = [json.dumps(u.to_json()) for u in units], [None] * n
        return pa.table(
            {
                "unit": pa.array(texts, pa.large_string()),
                "error": pa.array(errors, pa.string()),
                # the batch's encoder passes, on its first row (summed by the driver)
                "encoder": pa.array([encoded] + [0] * (n - 1), pa.int64()),
                "node": pa.array([self.node] * n, pa.string()),
                "pid": pa.array([self.pid] * n, pa.int64()),
                "threads": pa.array([torch.get_num_threads()] * n, pa.int64()),
                "ray_threads": pa.array([self.ray_threads] * n, pa.string()),
            }
        )


def _rebuild(error: str) -> GroundedSAMError:
    """The driver-side copy of an actor's error (``[class name, message]``)."""
    import grounded_sam.errors as errors

    name, message = json.loads(error)
    cls = getattr(errors, name, None)
    if not (isinstance(cls, type) and issubclass(cls, GroundedSAMError)):
        cls = InputError
    return cls(message)


def _user_error(error: BaseException) -> GroundedSAMError | None:
    """The first of our own errors in ``error``'s chain (a ``RayTaskError`` carries the
    worker's exception as ``cause``), or ``None``."""
    seen: set[int] = set()
    stack: list[BaseException | None] = [error]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, GroundedSAMError):
            return e
        stack += [getattr(e, "cause", None), e.__cause__, e.__context__]
    return None


def _unreachable(address: str, timeout: float = 5.0) -> str | None:
    """Why nothing answers at ``HOST:PORT`` / ``ray://HOST:PORT`` (a TCP connection attempt),
    or ``None`` when something does or the address is not of that form (``auto``: Ray finds
    the cluster itself)."""
    hostport = address.removeprefix("ray://")
    host, sep, port = hostport.rpartition(":")
    if not sep or not host or not port.isdigit() or "/" in hostport:
        return None
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as e:
        return e.strerror or str(e) or type(e).__name__
    return None


@contextlib.contextmanager
def _quiet_ray_data() -> Iterator[None]:
    saved = {name: logging.getLogger(name).level for name in _CHATTY_LOGGERS}
    for name in _CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        yield
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)


class RayRunner(Runner):
    """Label on a Ray cluster through Ray Data, one model copy per actor.

    Args:
        address: the cluster: ``"auto"`` (the one ``ray start`` runs on this machine),
            ``"ray://HOST:PORT"`` (Ray Client) or a GCS ``HOST:PORT``. ``None``: the cluster in
            ``RAY_ADDRESS`` if set (a driver started by ``ray job submit``), else a local Ray
            instance started for the run (no dashboard) and shut down after it. When this
            process already called ``ray.init`` (e.g. with a ``runtime_env``), that
            connection is used and left open.
        actors: ``N`` (a fixed pool), ``(MIN, MAX)`` or ``"MIN,MAX"`` (Ray Data grows the
            pool while there is work and resources); default: one actor per
            ``gpus_per_actor`` of the cluster's GPUs, or on CPUs one per ``threads`` CPUs.
        gpus_per_actor: GPUs each actor reserves (fractions share a GPU: 0.5 puts two actors,
            two model copies, on one GPU); default 1 when the cluster has GPUs and the
            labeller's device is not ``cpu``, else 0.
        cpus_per_actor: CPUs each actor reserves for Ray's scheduling. Default: 1 for GPU
            actors; for CPU actors the run's thread count (each actor computes with that many
            threads, so Ray places no more actors on a node than its cores can run), lowered
            when a requested pool would not fit the cluster otherwise. The threads an actor
            computes with are the run's (see the module docstring), not this number.
        local_options: extra ``ray.init`` options for the local instance (e.g.
            ``{"num_cpus": 2}``); only when no cluster is given.

    After :meth:`run`: :attr:`workers` (a :class:`WorkerReport` per actor process),
    :attr:`encoder_images`, :attr:`duplicates` (units that arrived twice, e.g. from a task
    retried after its actor died; committed once), :attr:`actors` (the pool's (MIN, MAX)),
    :attr:`gpus` and :attr:`cpus` (reserved per actor).

    Raises:
        MissingDependency: Ray (with Ray Data) is not installed.
        InputError: an invalid pool size or resource amount.
    """

    name = "ray"
    # the models are built on the actors: the run must not build them in the driver (which
    # may have no GPU, or not the memory for another copy)
    builds_models = True

    def __init__(
        self,
        *,
        address: str | None = None,
        actors: str | int | tuple[int, int] | None = None,
        gpus_per_actor: float | None = None,
        cpus_per_actor: float | None = None,
        local_options: Mapping[str, Any] | None = None,
    ) -> None:
        if address is not None and (not isinstance(address, str) or not address.strip()):
            raise InputError(
                f"--ray-address must be 'auto', 'ray://HOST:PORT' or HOST:PORT, got {address!r}"
            )
        self.address = address
        self.requested_actors = parse_actors(actors)
        self.gpus_per_actor = _number(gpus_per_actor, "--gpus-per-actor", low=0)
        self.cpus_per_actor = _number(cpus_per_actor, "--cpus-per-actor", low=0)
        if self.cpus_per_actor == 0 and not self.gpus_per_actor:
            raise InputError(
                "--cpus-per-actor 0 needs --gpus-per-actor > 0 (an actor must use something)"
            )
        self.local_options = dict(local_options or {})
        # after the options: a bad flag is reported whether or not Ray is installed
        require("ray.data", feature="--engine ray", install=INSTALL)
        self.workers: dict[tuple[str, int], WorkerReport] = {}
        self.encoder_images = 0
        self.duplicates = 0
        self.actors: tuple[int, int] | None = None
        self.gpus: float | None = None
        self.cpus: float | None = None

    def __repr__(self) -> str:
        return (
            f"RayRunner(address={self.address!r}, actors={self.requested_actors!r}, "
            f"gpus_per_actor={self.gpus_per_actor!r}, cpus_per_actor={self.cpus_per_actor!r})"
        )

    # ------------------------------------------------------------------ cluster
    @contextlib.contextmanager
    def _cluster(self) -> Iterator[Any]:
        """Ray, connected (or started) for the run; disconnected (or stopped) after it
        unless this process was connected before."""
        import ray

        if ray.is_initialized():
            yield ray
            return
        options: dict[str, Any] = {"logging_level": logging.WARNING}
        address = self.address or os.environ.get("RAY_ADDRESS") or None
        if address is None:
            # "local": a new instance even when `ray start` left one on this machine
            options.update(address="local", include_dashboard=False, **self.local_options)
        else:
            options["address"] = address
            unreachable = _unreachable(address)
            if unreachable is not None:
                # ray.init would retry for minutes, logging GCS timeouts, before giving up
                source = "--ray-address" if self.address else "RAY_ADDRESS"
                raise InputError(
                    f"could not connect to {source} {address!r}: {unreachable}; start the "
                    "cluster (`ray start --head` on its head node), check the host and port, "
                    "or leave --ray-address out to start a local instance"
                )
        try:
            ray.init(**options)
        except (ConnectionError, ValueError, RuntimeError) as e:
            where = f"--ray-address {address!r}" if address else "a local Ray instance"
            hint = (
                "start one with `ray start --head`, check the address, or leave --ray-address "
                "out to start a local instance"
                if address
                else "check the Ray installation"
            )
            if address and address != "auto" and "RAY_AUTH_MODE" not in os.environ:
                # recent Ray clusters use token authentication by default; only "auto"
                # switches the driver to it by itself (measured with Ray 2.60)
                hint += (
                    "; a cluster with token authentication (Ray's default) also needs "
                    "RAY_AUTH_MODE=token and its token (~/.ray/auth_token or RAY_AUTH_TOKEN)"
                )
            raise InputError(f"could not connect to {where}: {str(e).rstrip('. ')}; {hint}") from e
        try:
            yield ray
        finally:
            ray.shutdown()

    def _plan(
        self, ray: Any, config: Any, n: int, threads: int
    ) -> tuple[tuple[int, int], float, float]:
        """The pool's (MIN, MAX), and the GPUs and CPUs each actor reserves, from the request
        and the cluster."""
        resources = ray.cluster_resources()
        cluster_gpus = float(resources.get("GPU", 0.0))
        cluster_cpus = float(resources.get("CPU", 0.0))
        device = str(config.device or "")
        gpus = self.gpus_per_actor
        if gpus is None:
            gpus = 1.0 if cluster_gpus > 0 and not device.startswith("cpu") else 0.0
        if gpus > 0 and device.startswith("cpu"):
            raise InputError(
                f"--gpus-per-actor {gpus:g} with --device {device}: the actors would hold GPUs "
                "they do not use; drop --device cpu, or use --gpus-per-actor 0"
            )
        if gpus == 0 and device.startswith("cuda"):
            raise InputError(
                f"--device {device} needs --gpus-per-actor > 0 (Ray shows an actor only the "
                "GPUs it reserved)"
            )
        cpus = self.cpus_per_actor
        if cpus is None:
            # a CPU actor computes with `threads` threads: reserving as many CPUs keeps Ray
            # from packing more actors on a node than it has cores (oversubscribed threads
            # slow every actor down); a GPU actor mostly waits on its GPU
            cpus = 1.0 if gpus > 0 else float(threads)
        if self.requested_actors is not None:
            lo, hi = self.requested_actors
        else:
            if gpus > 0:
                lo = max(1, int(cluster_gpus // gpus))
            else:
                lo = max(1, int(cluster_cpus // max(cpus, 1)))
            lo = hi = lo
        lo, hi = min(lo, max(n, 1)), min(hi, max(n, 1))  # more actors than images: idle
        if self.cpus_per_actor is None and gpus == 0 and lo * cpus > cluster_cpus > 0:
            # the pool asked for does not fit with a full reservation: share the CPUs (Ray
            # takes fractions to 1e-4) rather than wait for resources that may never come
            cpus = math.floor(cluster_cpus / lo * 1e4) / 1e4
        need_gpus, need_cpus = lo * gpus, lo * cpus
        if need_gpus > cluster_gpus or need_cpus > cluster_cpus:
            log.warning(
                "waiting for resources: %d actor(s) need %g GPU(s) and %g CPU(s), the cluster "
                "has %g and %g now (an autoscaling cluster adds nodes; otherwise lower "
                "--actors, --gpus-per-actor or --cpus-per-actor)",
                lo,
                need_gpus,
                need_cpus,
                cluster_gpus,
                cluster_cpus,
            )
        return (lo, hi), gpus, cpus

    # ------------------------------------------------------------------ run
    def run(
        self,
        labeler: Any,
        tasks: Sequence[ImageTask],
        commit: Callable[[ImageUnit], None],
        *,
        store: Any = None,
    ) -> None:
        """Label ``tasks`` on the cluster and ``commit`` each unit once, in order of arrival.

        ``labeler`` is a :class:`~grounded_sam.engine.labeler.Labeler` (only its ``config``
        travels) or a :class:`~grounded_sam.engine.labeler.LabelConfig`. The actors compute
        with this process's ``torch.get_num_threads()``.

        Raises:
            GroundedSAMError: an actor's models failed to build for a reason the user can fix
                (bad weights or options): the actor's own error, re-raised here.
            RuntimeError: the cluster returned fewer units than tasks (should not happen).
        """
        import torch

        config = getattr(labeler, "config", labeler)
        self.workers, self.encoder_images, self.duplicates = {}, 0, 0
        if not tasks:
            return
        threads = torch.get_num_threads()
        expected = {t.file_name for t in tasks}
        done: set[str] = set()
        with self._cluster() as ray, _quiet_ray_data():
            self.actors, self.gpus, self.cpus = self._plan(ray, config, len(tasks), threads)
            ds = self._dataset(ray, config, tasks, store, threads)
            rows = iter(ds.iter_rows())
            try:
                for row in rows:
                    if row["error"]:
                        raise _rebuild(row["error"])
                    unit = ImageUnit.from_json(json.loads(row["unit"]))
                    assert unit.file_name in expected, f"not a task of this run: {unit.file_name}"
                    if unit.file_name in done:
                        self.duplicates += 1
                        continue
                    done.add(unit.file_name)
                    key = (row["node"], int(row["pid"]))
                    report = self.workers.get(key)
                    if report is None:  # known before its first commit (for callers' commit)
                        report = self.workers[key] = WorkerReport(
                            row["node"], int(row["pid"]), int(row["threads"]), row["ray_threads"]
                        )
                    commit(unit)
                    report.images += 1
                    report.encoder_images += int(row["encoder"])
                    self.encoder_images += int(row["encoder"])
            except GroundedSAMError:
                raise
            except Exception as e:
                user = _user_error(e)
                if user is not None:
                    raise user from None
                raise
            finally:
                close = getattr(rows, "close", None)
                if close is not None:  # stop the pipeline now, not when garbage-collected
                    close()
        if len(done) != len(expected):
            missing = sorted(expected - done)
            raise RuntimeError(
                f"the Ray engine returned {len(done)} of {len(expected)} images (missing e.g. "
                f"{missing[:3]}); rerun the same command to label the rest"
            )

    def _dataset(self, ray: Any, config: Any, tasks: Sequence[ImageTask], store: Any, threads: int):
        """The Ray Dataset of the run: task blocks -> actor pool -> unit rows."""
        import ray.data

        size = config.batch_size
        lo, hi = self.actors
        per_block = min(
            _MAX_BATCHES_PER_BLOCK, max(1, math.ceil(len(tasks) / (size * hi * _BLOCKS_PER_ACTOR)))
        )
        rows = size * per_block
        items = [
            {
                "file_name": t.file_name,
                "path": t.path,
                "size_bytes": -1 if t.size_bytes is None else int(t.size_bytes),
            }
            for t in tasks
        ]
        ds = ray.data.from_items(items, override_num_blocks=math.ceil(len(items) / rows))
        ctx = getattr(ds, "context", None)  # this dataset's own copy of the DataContext
        if ctx is not None:
            ctx.enable_progress_bars = False  # the run shows its own progress
            ctx.print_on_execution_start = False
        compute = ray.data.ActorPoolStrategy(min_size=lo, max_size=hi)
        return ds.map_batches(
            _LabelWorker,
            batch_size=size,
            batch_format="pyarrow",
            compute=compute,
            fn_constructor_kwargs={"config": config, "threads": threads, "store": store},
            num_cpus=self.cpus,
            num_gpus=self.gpus or None,
        )
