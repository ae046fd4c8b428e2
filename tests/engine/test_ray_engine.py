"""``--engine ray`` on a local Ray instance (2 CPUs, no dashboard), one per module: the same
bytes as the local engine (bad images included), resume across engines, a killed actor, a
driver killed with SIGKILL and rerun, and no Ray process left behind.

The workers of this module's jobs import ``engine_helpers`` (the content detector is pickled
by reference): ``PYTHONPATH`` in the jobs' ``runtime_env``. The CLI runs in subprocesses use
the test models by name (``label_driver.py`` registers them in the driver); their workers
register them through Ray's ``worker_process_setup_hook``, given as a job runtime
environment the way ``ray job submit --runtime-env-json`` gives it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")
pytest.importorskip("ray.data")

from engine_helpers import ContentDetector, label_command  # noqa: E402

from grounded_sam.engine import dataset as ds  # noqa: E402
from grounded_sam.engine.ray_runner import RayRunner  # noqa: E402
from grounded_sam.engine.run import label  # noqa: E402
from grounded_sam.errors import WeightsError  # noqa: E402
from grounded_sam.testing.pipeline import tiny_sam  # noqa: E402

# Ray Data's DataContext warns about its own deprecated fields whenever it is copied
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.data.context")

HERE = Path(__file__).resolve().parent
# every Ray process started for these tests inherits this variable: how the leftover check
# tells ours from other Ray instances on the machine
MARKER = "GROUNDED_SAM_RAY_TEST"
OUTPUTS = (ds.ANNOTATIONS, ds.ERRORS, ds.REVIEW)
BAD = ["empty.jpg", "notes.jpg", "truncated.jpg"]


def register_test_models() -> None:
    """Ray's ``worker_process_setup_hook`` for the CLI runs: the test SAM and detector that
    ``label_driver.py`` registers in the driver, registered in every worker of the job."""
    from engine_helpers import register_tiny_sam

    from grounded_sam.detectors import register_detector

    register_tiny_sam()
    register_detector(ContentDetector.name)(ContentDetector)


def _marked(value: str) -> list[tuple[int, str]]:
    """(pid, command line) of the live processes whose environment holds ``MARKER=value``."""
    needle = f"{MARKER}={value}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                found.append((int(entry.name), cmd.strip()))
        except OSError:  # gone, a zombie, or not ours
            continue
    return found


def _assert_none_left(value: str, what: str, wait: float = 30.0) -> None:
    deadline = time.time() + wait
    while (left := _marked(value)) and time.time() < deadline:
        time.sleep(0.5)
    for pid, _ in left:  # clean up before failing: they are ours (they carry our marker)
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    assert not left, f"{what} left Ray processes behind: {left}"


@pytest.fixture(scope="module")
def cluster():
    """One local Ray instance for the module: its GCS address. Shut down at the end, and no
    process of it may survive."""
    if not Path("/proc/self/environ").exists():
        pytest.skip("the leftover-process check reads /proc (Linux)")
    if ray.is_initialized():
        pytest.skip("Ray is already initialised in this process")
    marker = uuid.uuid4().hex
    auth = os.environ.get("RAY_AUTH_MODE")  # ray.init sets it for token authentication
    os.environ[MARKER] = marker  # inherited by the processes ray.init starts
    try:
        ray.init(
            address="local",
            num_cpus=2,
            include_dashboard=False,
            logging_level="WARNING",
            runtime_env={"env_vars": {"PYTHONPATH": str(HERE)}},
        )
    finally:
        del os.environ[MARKER]
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()
        if auth is None:
            os.environ.pop("RAY_AUTH_MODE", None)
        _assert_none_left(marker, "this module's Ray instance")


def _label_ray(photos, out, runner, **kw):
    return label(
        photos,
        photos.parent / "classes.yaml",
        out,
        detector=ContentDetector(),
        sam=tiny_sam(),
        runner=runner,
        progress=False,
        **kw,
    )


def _same_outputs(out: Path, ref: Path) -> None:
    for name in OUTPUTS:
        assert (out / name).read_bytes() == (ref / name).read_bytes(), name


def _unit_files(out: Path) -> int:
    """Committed unit files (not the ``.tmp-*`` of a write in progress)."""
    return sum(1 for _ in ds.iter_units(out))


def _labelled_units(out: Path) -> int:
    return sum(1 for u in ds.iter_units(out) if u.ok)


def test_same_bytes_as_the_local_engine(cluster, reference, photos, tmp_path):
    ref, local = reference
    threads = ds.read_manifest(ref)["threads"]
    runner = RayRunner(actors=2)
    summary = _label_ray(photos, tmp_path / "ds", runner)
    _same_outputs(tmp_path / "ds", ref)  # annotations, errors and the review queue
    # the bad images are errors as locally (and the exit code says so)
    assert sorted(summary.failed_files) == BAD and summary.exit_code == 2
    errors = json.loads((tmp_path / "ds" / ds.ERRORS).read_text())
    assert [e["file_name"] for e in errors] == BAD
    assert (summary.labelled, summary.failed, summary.engine) == (5, 3, "ray")
    assert summary.encoder_images == local.encoder_images == runner.encoder_images
    # every image once, over the pool
    workers = list(runner.workers.values())
    assert sum(w.images for w in workers) == 8 and runner.duplicates == 0
    assert _unit_files(tmp_path / "ds") == 8 and runner.actors == (2, 2)
    # the actors computed with the dataset's thread count, not the one Ray gave them
    assert {w.threads for w in workers} == {threads} == {summary.threads}
    assert {w.ray_threads for w in workers} == {"1"}  # Ray's OMP_NUM_THREADS for 1 CPU


def test_resume_across_engines(cluster, reference, photos, tmp_path):
    """Half the images labelled by the local engine (one shard), the rest by Ray: the same
    dataset, and Ray labels only what is left."""
    ref, _ = reference
    out = tmp_path / "ds"
    first = _label_ray(photos, out, None, shard="0/2")  # the local engine
    runner = RayRunner(actors=1)
    rest = _label_ray(photos, out, runner)
    assert rest.done_before == first.labelled and rest.labelled == 5 - first.labelled
    assert sum(w.images for w in runner.workers.values()) == 8 - first.labelled
    _same_outputs(out, ref)


class _KillFirstActor(RayRunner):
    """Kills (SIGKILL) the actor process that produced the first unit, right after that unit
    is committed: Ray must restart it and retry what it held."""

    killed: int | None = None

    def run(self, labeler, tasks, commit, *, store=None):
        def commit_then_kill(unit):
            commit(unit)
            if self.killed is None:
                (report,) = self.workers.values()
                self.killed = report.pid
                os.kill(report.pid, signal.SIGKILL)

        super().run(labeler, tasks, commit_then_kill, store=store)


def test_a_killed_actor_is_replaced_and_no_image_is_lost_or_doubled(
    cluster, reference, photos, tmp_path
):
    ref, _ = reference
    runner = _KillFirstActor(actors=1)
    summary = _label_ray(photos, tmp_path / "ds", runner)
    _same_outputs(tmp_path / "ds", ref)
    workers = runner.workers
    assert (summary.labelled, summary.failed) == (5, 3)
    assert sum(w.images for w in workers.values()) == 8 and _unit_files(tmp_path / "ds") == 8
    # the killed process stopped; a new one (the restarted actor) labelled the rest
    after = [w for w in workers.values() if w.pid != runner.killed]
    assert after and sum(w.images for w in after) >= 1, workers


def _env(marker: str) -> dict[str, str]:
    job = {
        "runtime_env": {
            "env_vars": {"PYTHONPATH": str(HERE)},
            "worker_process_setup_hook": "test_ray_engine.register_test_models",
        }
    }
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    return {
        **env,
        "PYTHONPATH": str(HERE),
        # what `ray job submit --runtime-env-json` hands its driver
        "RAY_JOB_CONFIG_JSON_ENV_VAR": json.dumps(job),
        MARKER: marker,
    }


def test_driver_killed_midway_then_rerun(cluster, reference, photos, tiny_checkpoint, tmp_path):
    """A CLI driver on the shared cluster (--ray-address) killed with SIGKILL once a unit is
    committed; the same command without --ray-address (a local Ray instance of its own) then
    labels only the rest, gives the uninterrupted run's bytes, and stops its Ray instance."""
    ref, _ = reference
    threads = ds.read_manifest(ref)["threads"]
    out = tmp_path / "ds"
    cmd = label_command(
        photos, out, tiny_checkpoint, "--threads", threads, "--engine", "ray", "--actors", 1
    )
    proc = subprocess.Popen(
        [*cmd, "--ray-address", cluster],
        env=_env(uuid.uuid4().hex),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    deadline = time.time() + 300
    # killed once an image is labelled (error units are retried anyway)
    while proc.poll() is None and _labelled_units(out) < 1 and time.time() < deadline:
        time.sleep(0.01)
    running = proc.poll() is None
    proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate(timeout=60)
    done = _labelled_units(out)
    assert running and 1 <= done < 5, (done, err.decode()[-3000:])
    marker = uuid.uuid4().hex
    again = subprocess.run(cmd, env=_env(marker), capture_output=True, text=True, timeout=600)
    context = f"killed after {done} units; rerun:\n{again.stdout}\n{again.stderr[-4000:]}"
    assert again.returncode == 2, context  # the 3 bad images
    _same_outputs(out, ref)
    lines = again.stdout.splitlines()
    assert lines[0].startswith(f"8 images: {5 - done} labelled now ("), context
    assert f", {done} done before, 3 failed, " in lines[0], context
    assert lines[-1].startswith("ray: 1 actor process (pool 1, ") and "labelled" in lines[-1]
    assert not any(line.startswith("Traceback") for line in again.stderr.splitlines())
    _assert_none_left(marker, "the CLI's own local Ray instance")
    shutil.rmtree(out)


def test_models_that_fail_to_build_on_the_actors_give_the_users_error(cluster, photos, tmp_path):
    """The actors build the models; a bad checkpoint is their WeightsError, re-raised on the
    driver as itself (one line on the CLI), not a Ray traceback or an endless restart."""
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    out = tmp_path / "ds"
    with pytest.raises(WeightsError, match=r"bad\.pt' is not a readable torch checkpoint"):
        label(
            photos,
            photos.parent / "classes.yaml",
            out,
            detector=ContentDetector(),
            sam="mobile_sam",
            sam_checkpoint=bad,
            device="cpu",
            runner=RayRunner(actors=1),
            progress=False,
        )
    assert _unit_files(out) == 0  # nothing labelled: the next run starts afresh
