"""``--engine ray`` without a cluster: the one-line message when Ray is missing, the engine
flags' errors, and the thread count recorded in a dataset (what makes the local and the Ray
engine compute the same bits)."""

from __future__ import annotations

import sys

import pytest
import torch
from engine_helpers import ContentDetector, tree, write_photos

from grounded_sam.engine import dataset as ds
from grounded_sam.engine.ray_runner import parse_actors
from grounded_sam.engine.run import label, make_runner
from grounded_sam.errors import InputError, MissingDependency
from grounded_sam.testing.pipeline import error_lines, run_cli, tiny_sam

MISSING = 'error: --engine ray needs ray; install it with: pip install "grounded-sam[ray]"'


def _argv(tmp_path, *extra):
    return [tmp_path / "photos", "--classes", "cat", "--out", tmp_path / "ds", *extra]


def test_without_ray_the_ray_engine_says_how_to_install_it(
    tmp_path, capsys, monkeypatch, cli_models
):
    # as if Ray were not installed: importing it fails (also when a test loaded it before)
    monkeypatch.setitem(sys.modules, "ray", None)
    monkeypatch.setitem(sys.modules, "ray.data", None)
    write_photos(tmp_path / "photos", kinds=("coffee",))
    rc, stdout, err = run_cli("label", _argv(tmp_path, "--engine", "ray"), capsys)
    assert (rc, stdout, error_lines(err)) == (2, "", [MISSING])
    assert len(err.strip().splitlines()) == 1  # no traceback
    assert not (tmp_path / "ds").exists()  # failed before anything was written
    with pytest.raises(MissingDependency) as e:
        label(tmp_path / "photos", "cat", tmp_path / "ds", engine="ray", progress=False)
    assert f"error: {e.value}" == MISSING and isinstance(e.value, ImportError)
    assert not (tmp_path / "ds").exists()
    # the local engine does not need Ray
    rc, stdout, _ = run_cli("label", _argv(tmp_path, *cli_models, "--quiet"), capsys)
    assert rc == 0 and stdout.startswith("1 image: 1 labelled now")


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--engine", "ray", "--actors", "0"], "--actors needs 1 <= MIN <= MAX, got '0'"),
        (["--engine", "ray", "--actors", "3,2"], "--actors needs 1 <= MIN <= MAX, got '3,2'"),
        (
            ["--engine", "ray", "--actors", "two"],
            "--actors must be N or MIN,MAX with integers (e.g. 4, or 1,8 for a pool that "
            "grows with the cluster), got 'two'",
        ),
        (
            ["--engine", "ray", "--gpus-per-actor", "-1"],
            "--gpus-per-actor must be >= 0, got -1.0",
        ),
        (
            ["--engine", "ray", "--cpus-per-actor", "0"],
            "--cpus-per-actor 0 needs --gpus-per-actor > 0 (an actor must use something)",
        ),
        (["--ray-address", "auto"], "--ray-address applies with --engine ray only"),
        (
            ["--actors", "2", "--gpus-per-actor", "0.5"],
            "--actors, --gpus-per-actor apply with --engine ray only",
        ),
        (["--threads", "0"], "--threads must be >= 1, got 0"),
    ],
)
def test_engine_flag_errors_are_one_line_each(tmp_path, capsys, flags, message):
    write_photos(tmp_path / "photos", kinds=("coffee",))
    rc, stdout, err = run_cli("label", _argv(tmp_path, *flags), capsys)
    assert (rc, stdout, error_lines(err)) == (2, "", [f"error: {message}"])
    assert not (tmp_path / "ds").exists()


def test_merge_takes_no_engine(tmp_path, capsys):
    rc, _, err = run_cli("label", ["--merge", tmp_path, "--engine", "ray"], capsys)
    assert rc == 2
    assert error_lines(err) == [
        "error: --merge DATASET assembles existing units and takes no --engine"
    ]


def test_parse_actors():
    assert parse_actors(None) is None
    assert parse_actors("4") == parse_actors(4) == (4, 4)
    assert parse_actors("1,8") == parse_actors(" 1, 8") == parse_actors((1, 8)) == (1, 8)
    for bad in ("0", "2,1", "1,2,3", "", "a,b", True, (1,), 0):
        with pytest.raises(InputError, match="--actors"):
            parse_actors(bad)


def test_make_runner_checks_the_engine_and_its_options():
    assert make_runner("local").name == "local"
    with pytest.raises(InputError, match=r"engine must be one of local, ray, got 'spark'"):
        make_runner("spark")
    with pytest.raises(InputError, match=r"actors, gpus_per_actor apply to engine='ray' only"):
        make_runner("local", actors=2, gpus_per_actor=1)
    with pytest.raises(InputError, match=r"give either runner= or engine='ray', not both"):
        label("x", "cat", "y", engine="ray", runner=make_runner("local"))


class _ThreadsSeen(ContentDetector):
    """The content detector, noting the thread count PyTorch computes with at each call."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[int] = set()

    def detect(self, image, phrases):
        self.seen.add(torch.get_num_threads())
        return super().detect(image, phrases)


def test_the_thread_count_is_recorded_and_kept_for_every_later_run(tmp_path):
    photos = tmp_path / "photos"
    write_photos(photos, kinds=("coffee",))
    out = tmp_path / "ds"
    own = torch.get_num_threads()
    pinned = 1 if own != 1 else 2
    det = _ThreadsSeen()
    first = label(photos, "cat", out, detector=det, sam=tiny_sam(), threads=pinned, progress=False)
    assert det.seen == {pinned} and first.threads == pinned
    assert torch.get_num_threads() == own  # restored after the run
    assert ds.read_manifest(out)["threads"] == pinned
    # a later run (here: a new image) computes with the recorded count, not the default
    write_photos(photos, kinds=("chelsea",))
    det = _ThreadsSeen()
    again = label(photos, "cat", out, detector=det, sam=tiny_sam(), progress=False)
    assert (again.labelled, again.done_before) == (1, 1)
    assert det.seen == {pinned} and again.threads == pinned
    # another explicit count is refused and changes nothing
    snapshot = tree(out)
    with pytest.raises(InputError) as e:
        label(photos, "cat", out, detector=_ThreadsSeen(), sam=tiny_sam(), threads=pinned + 2)
    assert str(e.value) == (
        f"{out} was labelled with {pinned} CPU threads per process; --threads {pinned + 2} "
        "could change the last bits of the results: leave --threads out (the recorded count "
        "is used), or use --overwrite to relabel from scratch"
    )
    assert tree(out) == snapshot
    with pytest.raises(InputError, match="--threads must be an integer >= 1, got 0"):
        label(photos, "cat", tmp_path / "other", detector=ContentDetector(), threads=0)


class _FakeRay:
    """Stands in for the ``ray`` module in :meth:`RayRunner._plan`: a cluster's resources."""

    def __init__(self, cpus: float, gpus: float = 0.0) -> None:
        self.resources = {"CPU": cpus, **({"GPU": gpus} if gpus else {})}

    def cluster_resources(self) -> dict[str, float]:
        return dict(self.resources)


class _Config:
    def __init__(self, device: str | None = None) -> None:
        self.device = device


@pytest.mark.parametrize(
    ("kw", "cluster", "device", "threads", "plan"),
    [
        # CPU actors reserve their threads: 16 CPUs / 4 threads -> 4 actors of 4 CPUs
        ({}, (16, 0), None, 4, ((4, 4), 0.0, 4.0)),
        # a requested pool that would not fit with full reservations shares the CPUs
        ({"actors": 2}, (2, 0), "cpu", 2, ((2, 2), 0.0, 1.0)),
        ({"actors": 3}, (2, 0), "cpu", 2, ((3, 3), 0.0, 0.6666)),
        # an explicit reservation is kept (Ray waits for resources, with a warning)
        ({"actors": 2, "cpus_per_actor": 3}, (4, 0), None, 1, ((2, 2), 0.0, 3.0)),
        # GPU actors: one per GPU (or per fraction), 1 CPU each
        ({}, (32, 4), None, 8, ((4, 4), 1.0, 1.0)),
        ({"gpus_per_actor": 0.5}, (32, 4), "cuda", 8, ((8, 8), 0.5, 1.0)),
        ({"actors": "1,6"}, (32, 4), None, 8, ((1, 6), 1.0, 1.0)),
        # --device cpu on a GPU cluster: CPU actors
        ({}, (8, 2), "cpu", 2, ((4, 4), 0.0, 2.0)),
    ],
)
def test_the_pool_and_the_reservations_follow_the_cluster(kw, cluster, device, threads, plan):
    pytest.importorskip("ray.data")
    from grounded_sam.engine.ray_runner import RayRunner

    runner = RayRunner(**kw)
    assert runner._plan(_FakeRay(*cluster), _Config(device), 100, threads) == plan
    # never more actors than images (the others would sit idle, holding a model copy)
    (lo, hi), gpus, cpus = runner._plan(_FakeRay(*cluster), _Config(device), 2, threads)
    assert (lo, hi) == (min(plan[0][0], 2), min(plan[0][1], 2)) and gpus == plan[1]


def test_gpu_reservations_must_match_the_device():
    pytest.importorskip("ray.data")
    from grounded_sam.engine.ray_runner import RayRunner

    with pytest.raises(InputError, match=r"--gpus-per-actor 1 with --device cpu"):
        RayRunner(gpus_per_actor=1)._plan(_FakeRay(8, 1), _Config("cpu"), 5, 1)
    with pytest.raises(InputError, match=r"--device cuda:0 needs --gpus-per-actor > 0"):
        RayRunner(gpus_per_actor=0)._plan(_FakeRay(8, 1), _Config("cuda:0"), 5, 1)


def test_an_unreachable_cluster_is_one_line_at_once(tmp_path, capsys):
    """Nothing listens at the address: a clear error within seconds (ray.init itself would
    retry for minutes), before any image is labelled."""
    pytest.importorskip("ray.data")
    import socket
    import time

    with socket.socket() as s:  # a free port that nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    write_photos(tmp_path / "photos", kinds=("coffee",))
    t0 = time.perf_counter()
    flags = ["--engine", "ray", "--ray-address", f"127.0.0.1:{port}"]
    rc, stdout, err = run_cli("label", _argv(tmp_path, *flags), capsys)
    assert time.perf_counter() - t0 < 30
    (line,) = error_lines(err)
    assert rc == 2 and stdout == ""
    assert line.startswith(f"error: could not connect to --ray-address '127.0.0.1:{port}': ")
    assert line.endswith("or leave --ray-address out to start a local instance")
