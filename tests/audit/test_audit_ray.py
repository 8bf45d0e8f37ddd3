"""The audit on Ray with two workers on this machine: joining a cluster the test starts (`ray start
--head`, as a user would on a head node), it gives the local run's table; on a cluster the command
starts itself (`--ray local`), a worker killed mid-run costs nothing but time."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from audit_run import environment, rows, run, start

RAY = str(Path(sys.executable).with_name("ray"))


def assert_same_table(got: list[dict], want: list[dict]) -> None:
    """Every column equal (one torch thread in both runs: see audit_run.environment)."""
    assert [(r["caption_index"], r["seed"]) for r in got] == [(r["caption_index"], r["seed"]) for r in want]
    for a, b in zip(got, want):
        assert a == b, {k: (a[k], b[k]) for k in a if a[k] != b[k]}


def worker_pids() -> list[int]:
    """Processes of Ray actors running the audit (Ray titles them ray::AuditWorker...)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "cmdline").read_bytes().startswith(b"ray::AuditWorker"):
                    pids.append(int(entry.name))
            except OSError:
                pass
    return pids


@pytest.fixture
def ray_head(tmp_path):
    """A two-CPU Ray head on this machine, stopped after the test. (`--ray auto` joins it: an
    explicit address would also need the cluster's auth token in the driver's environment.)"""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    started = subprocess.run([RAY, "start", "--head", f"--port={port}", "--num-cpus=2", "--include-dashboard=false",
                              "--disable-usage-stats"], env=environment(), capture_output=True, text=True, timeout=300)
    assert started.returncode == 0, started.stderr[-3000:]
    try:
        yield "auto"
    finally:
        subprocess.run([RAY, "stop", "--force"], capture_output=True, timeout=300)


def test_ray_with_two_workers_gives_the_local_table(local_audit, captions_file, tmp_path, ray_head):
    out = tmp_path / "audit"
    done = run("--captions", captions_file[0], "--out", out, "--seeds", 4, "--ray", ray_head, "--workers", 2)
    assert "Connected to Ray cluster" in done.stdout + done.stderr
    assert "Ray: 2 worker(s)" in done.stdout + done.stderr
    got = rows(out)
    assert len(got) == 200
    assert_same_table(got, local_audit[1])


def test_a_killed_worker_still_completes_every_generation_once(local_audit, captions_file, tmp_path):
    out = tmp_path / "audit"
    proc = start("--captions", captions_file[0], "--out", out, "--seeds", 4, "--ray", "local", "--workers", 2)
    deadline, victim = time.time() + 600, None
    while time.time() < deadline and victim is None:
        assert proc.poll() is None, proc.stdout.read()
        pids = worker_pids()
        if len(pids) >= 2 and len(list((out / "parts").glob("batch-*.parquet"))) >= 1:
            victim = pids[0]
        time.sleep(0.2)
    assert victim is not None, "the workers never got going"
    os.kill(victim, signal.SIGKILL)
    log = proc.communicate(timeout=900)[0]
    assert proc.returncode == 0, log[-5000:]
    assert victim not in worker_pids()
    got = rows(out)
    assert len(got) == 200 and len({(r["caption_index"], r["seed"]) for r in got}) == 200
    assert_same_table(got, local_audit[1])
