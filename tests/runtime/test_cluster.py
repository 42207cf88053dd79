"""Join an existing Ray cluster by address: `ray start --head` on loopback, a few updates, stop."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

# A cluster of its own (`ray start`, then `ray stop`) and whole training runs.
pytestmark = [pytest.mark.slow, pytest.mark.ray]

BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def cluster(tmp_path):
    port = _free_port()
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}
    start = [
        str(BIN / "ray"),
        "start",
        "--head",
        f"--port={port}",
        "--num-cpus=2",
        "--include-dashboard=false",
        "--disable-usage-stats",
    ]
    subprocess.run(start, env=env, check=True, capture_output=True, timeout=120)
    try:
        yield f"127.0.0.1:{port}", env
    finally:
        subprocess.run([str(BIN / "ray"), "stop", "--force"], env=env, capture_output=True, timeout=120)


def _train_cmd(tmp_path, run, *args):
    """``asyncvla train`` of a tiny async reach run; ``args`` add options and overrides."""
    (tmp_path / "tiny.yaml").write_text("name: tiny\n")
    return [
        str(BIN / "asyncvla"),
        "train",
        str(tmp_path / "tiny.yaml"),
        "--run-dir",
        str(run),
        "mode=async",
        "env.num_envs=4",
        "env.kwargs.family=reach",
        "train.rollout_steps=3",
        "algo.minibatch_size=8",
        "eval.episodes=4",
        "eval.num_envs=4",
        "policy.kwargs.size=nano",
        *args,
    ]


def test_train_joins_a_running_cluster_by_address(cluster, tmp_path):
    address, env = cluster
    run = tmp_path / "run"
    cmd = _train_cmd(
        tmp_path,
        run,
        "--address",
        address,
        "env.num_managers=2",
        "train.updates=2",
        "algo.epochs=1",
        "policy.kwargs.image_grid=4",
    )
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["updates"] == 2 and summary["mode"] == "async"
    # the driver joined this cluster (its GCS address), it did not start a local instance
    assert summary["ray"] == {"address": address, "joined": True}


def test_ctrl_c_stops_every_worker_and_reports_once(tmp_path):
    import signal
    import time

    from tests.runtime.test_async import _actor_processes

    run = tmp_path / "run"
    cmd = _train_cmd(tmp_path, run, "train.updates=100000")
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not (
            (run / "metrics.jsonl").is_file() and (run / "metrics.jsonl").read_text().count("\n") >= 2
        ):
            time.sleep(0.5)
        assert proc.poll() is None, proc.stderr.read()
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:  # never leave a run (and its Ray instance) behind
            proc.kill()
            subprocess.run([str(BIN / "ray"), "stop", "--force"], env=env, capture_output=True, timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert err.count("interrupted") == 1
    for _ in range(50):
        if not _actor_processes():
            break
        time.sleep(0.2)
    assert _actor_processes() == []
    # what was written stays valid: every metrics line parses, rows are in order
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["update"] for r in rows] == list(range(1, len(rows) + 1))
