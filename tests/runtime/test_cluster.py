"""Join an existing Ray cluster by address: `ray start --head` on loopback, a few updates, stop."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

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


def test_train_joins_a_running_cluster_by_address(cluster, tmp_path):
    address, env = cluster
    run = tmp_path / "run"
    (tmp_path / "tiny.yaml").write_text("name: tiny\n")
    cmd = [
        str(BIN / "asyncvla"),
        "train",
        str(tmp_path / "tiny.yaml"),
        "--run-dir",
        str(run),
        "--address",
        address,
        "mode=async",
        "env.num_envs=4",
        "env.num_managers=2",
        "env.kwargs.family=reach",
        "train.rollout_steps=3",
        "train.updates=2",
        "algo.minibatch_size=8",
        "algo.epochs=1",
        "eval.episodes=4",
        "eval.num_envs=4",
        "policy.kwargs.image_grid=4",
        "policy.kwargs.size=nano",
    ]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["updates"] == 2 and summary["mode"] == "async"
    # the driver joined this cluster (its GCS address), it did not start a local instance
    assert summary["ray"] == {"address": address, "joined": True}
