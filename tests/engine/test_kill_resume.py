"""Crash safety: ``grounded-sam label`` killed with SIGKILL at a random moment, then run
again, gives exactly the dataset of an uninterrupted run."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from pathlib import Path

import torch
from engine_helpers import label_command

from grounded_sam.engine import dataset as ds


def _units(out: Path) -> int:
    return len(list((out / ds.UNITS).glob("*/*.json"))) if (out / ds.UNITS).exists() else 0


def test_kill_9_at_a_random_moment_then_resume(reference, photos, tiny_checkpoint, tmp_path):
    out0, _ = reference
    seed = int(os.environ.get("GS_KILL_SEED", time.time_ns() % 10**6))
    rng = random.Random(seed)
    out = tmp_path / "ds"
    cmd = label_command(photos, out, tiny_checkpoint)
    # the reference ran with this process's thread count; CPU kernels may reduce in another
    # order with another count, which changes the last float bits
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    # kill once some units (0..all 8) are committed, plus a random extra delay: any moment
    # from model loading to the final assembly
    target = rng.randint(0, 8)
    delay = rng.uniform(0.0, 1.5)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while proc.poll() is None and _units(out) < target and time.time() < deadline:
        time.sleep(0.02)
    time.sleep(delay)
    killed = proc.poll() is None
    if killed:
        proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    done_at_kill = _units(out)
    # the same command again finishes the job
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    context = (
        f"seed {seed}: killed={killed} after {done_at_kill} units (target {target}, delay "
        f"{delay:.2f} s); rerun stdout:\n{again.stdout}\nstderr:\n{again.stderr}"
    )
    assert again.returncode == 2, context  # the 3 bad images, on the rerun too
    assert (out / ds.ANNOTATIONS).read_bytes() == (out0 / ds.ANNOTATIONS).read_bytes(), context
    assert (out / ds.ERRORS).read_bytes() == (out0 / ds.ERRORS).read_bytes(), context
    assert (out / ds.REVIEW).read_bytes() == (out0 / ds.REVIEW).read_bytes(), context
    # only what was not done at the kill was labelled again
    line = again.stdout.splitlines()[0]
    before = int(line.split(" done before")[0].rsplit(" ", 1)[-1])
    assert before <= min(done_at_kill, 5) if killed else before == 5, context
    assert not [p for p in out.rglob(".tmp-*") if p.stat().st_mtime < time.time() - 600]
