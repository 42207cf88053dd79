"""One tiny benchmark on the real runtime (two modes of the balanced profile, one repeat), and the
``asyncvla bench`` command's refusals."""

import csv
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from asyncvla.bench.bench import run_bench
from asyncvla.cli import app

BALANCED = Path(__file__).resolve().parents[2] / "configs" / "bench" / "balanced.yaml"


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.usefixtures("ray_local")
def test_run_bench_balanced_writes_a_valid_bench_json(tmp_path):
    out = tmp_path / "bench"
    res = run_bench(
        BALANCED,
        modes=["sync-colocated", "streamer"],
        out_dir=out,
        repeats=1,
        env_steps_per_mode=256,  # 2 measured updates of 64 decisions x 2 env steps
        time_scale=0.3,
    )
    data = json.loads((out / "bench.json").read_text())
    assert data == json.loads(json.dumps(res))
    assert data["workload"] == "balanced" and [m["name"] for m in data["modes"]] == [
        "sync-colocated",
        "streamer",
    ]
    for m in data["modes"]:
        tp = m["env_steps_per_s"]
        assert 0 < tp["min"] <= tp["median"] <= tp["max"]
        for key in ("speedup_vs_sync", "bound", "achieved_over_bound", "staleness_max"):
            assert key in m
        # the bottleneck's busy fraction of the measured window: <= 1 by definition (analysis)
        assert 0 < m["achieved_over_bound"] <= 1.0
        for r in m["runs"]:
            assert 0 < r["achieved_over_bound"] <= 1.0
            assert r["achieved_over_bound"] == pytest.approx(
                r["env_steps_per_s"] / r["bound_env_steps_per_s"]
            )
        assert set(m["busy"]) == {"env", "rollout", "train", "sync"}
        assert m["runs"][0]["updates_measured"] == 2
        assert m["peak_total_mb"] >= m["peak_process_mb"] > 50  # driver + Ray workers, sampled
        assert m["runtime"]["max_batch_samples"] == 64
    sync, stream = data["modes"]
    assert sync["speedup_vs_sync"] == pytest.approx(1.0)
    # measured per-sample costs give the placement's bound: shared device 1.5, separate ones 3
    assert 1.25 <= sync["bound"] <= 1.75 and sync["bottleneck"] == "device:dev0"
    assert 2.2 <= stream["bound"] <= 3.4  # nominal 3; measured busy times dip under machine load
    assert sync["staleness_max"] == 0 and stream["staleness_max"] <= 1
    rows = list(csv.DictReader((out / "bench.csv").open()))
    assert [r["name"] for r in rows] == ["sync-colocated", "streamer"]
    for png in ("throughput.png", "timeline.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    run = Path(stream["runs"][0]["run_dir"])
    assert (run / "events.jsonl").stat().st_size > 0 and (run / "holds.jsonl").stat().st_size > 0


def test_bench_command_refuses_bad_input_in_one_line(tmp_path):
    runner = CliRunner()
    res = runner.invoke(app, ["bench", "--workload", "no-such-profile"])
    assert res.exit_code == 2 and res.output.startswith("error: workload 'no-such-profile': no such profile")
    res = runner.invoke(app, ["bench", "--workload", "balanced", "--modes", "warp-speed"])
    assert res.exit_code == 2 and res.output.startswith("error: mode 'warp-speed': unknown")
    (tmp_path / "bench.json").write_text("{}")
    res = runner.invoke(app, ["bench", "--workload", str(BALANCED), "--out", str(tmp_path)])
    assert res.exit_code == 2 and "already holds a benchmark" in res.output
    assert len(res.output.strip().splitlines()) == 1
