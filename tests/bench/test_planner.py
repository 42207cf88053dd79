"""The discrete-event model of the runtime (simulate), the planner, and the tune formula."""

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from asyncvla.bench.planner import plan, scaled_spec
from asyncvla.bench.profiles import load_profile, mode_config, nominal_costs
from asyncvla.bench.simulate import _Model, simulate, spec_from_config
from asyncvla.bench.tune import tune_profile
from asyncvla.cli import app
from asyncvla.runtime.autotune import choose, predict

ROOT = Path(__file__).resolve().parents[2]
BALANCED = load_profile(ROOT / "configs" / "bench" / "balanced.yaml")
LIBERO_0P5B = load_profile(ROOT / "configs" / "bench" / "libero-0p5b.yaml")


def test_devices_are_fifo_taken_in_sorted_order_and_busy_counted():
    """``_Model.hold`` on simpy Resources: FIFO per device, several devices taken in sorted order
    (the hybrid trainer: no deadlock with a role that names them the other way round)."""
    model = _Model(spec_from_config(mode_config(BALANCED, "sync-disaggregated", 2)), updates=1)
    sim = model.sim
    assert sorted(model.dev) == ["dev0", "dev1"]
    done: dict[str, float] = {}

    def user(name, start, devices, seconds):
        yield sim.timeout(start)
        yield from model.hold(devices, seconds)
        done[name] = sim.now

    for name, start, devices in (
        ("a", 0.0, ["dev0"]),
        ("b", 0.1, ["dev1", "dev0"]),
        ("c", 0.2, ["dev0", "dev1"]),
        ("d", 0.3, ["dev1"]),
    ):
        sim.process(user(name, start, devices, 1.0))
    sim.run()
    # b waits for dev0 (a) holding nothing, then for dev1 (d); c queues behind b on dev0
    assert done == pytest.approx({"a": 1.0, "d": 1.3, "b": 2.3, "c": 3.3})
    assert model.busy_s == pytest.approx({"dev0": 3.3, "dev1": 3.0})


def test_sync_is_the_sequential_sum_and_streamer_approaches_the_bound():
    # sync colocated, by hand: a round = 2 managers stepped in turn on each worker (2 x 80 ms) +
    # one static batch of 16 (160 ms); 4 rounds + training 64 x 10 ms = 1.92 s per 128 env steps
    sync = simulate(spec_from_config(mode_config(BALANCED, "sync-colocated", 8)), updates=8, warmup=2)
    assert sync["env_steps_per_s"] == pytest.approx(128 / 1.92, rel=1e-6)
    assert sync["staleness_mean"] == 0 and sync["mean_infer_batch"] == 16
    bound = nominal_costs(BALANCED, "streamer")
    bound_steps = bound["bound_samples_per_s"] * bound["env_steps_per_sample"]
    full = simulate(spec_from_config(mode_config(BALANCED, "streamer", 12)), updates=12, warmup=2)
    assert 0.9 * bound_steps <= full["env_steps_per_s"] <= 1.0001 * bound_steps
    assert 0 < full["staleness_mean"] <= 1


def test_staleness_throttle_bounds_the_version_gap():
    spec = spec_from_config(mode_config(BALANCED, "streamer", 8))
    strict = simulate(spec.__class__(**{**spec.__dict__, "eta": 0}), updates=8, warmup=2)
    loose = simulate(spec, updates=8, warmup=2)
    assert strict["staleness_mean"] == 0 and loose["staleness_mean"] > 0
    assert strict["env_steps_per_s"] < loose["env_steps_per_s"]


def test_scaled_spec_and_plan_scale_with_gpus():
    spec = scaled_spec(LIBERO_0P5B, "async", "disaggregated", 8, 4)
    assert spec.num_managers == 16 and spec.num_env_workers == 8 and spec.num_rollout_workers == 4
    assert spec.trainer_gpus == 4 and spec.micro_batch == 64 * 4 and spec.global_batch == 16 * 32 * 4
    colo = scaled_spec(LIBERO_0P5B, "sync", "colocated", 8)
    assert set(colo.rollout_devices) == set(colo.trainer_devices) and colo.trainer_gpus == 8
    hybrid = scaled_spec(LIBERO_0P5B, "async", "hybrid", 8, 2)
    assert set(hybrid.rollout_devices) < set(hybrid.trainer_devices)
    with pytest.raises(ValueError):
        scaled_spec(LIBERO_0P5B, "async", "colocated", 3)
    res = plan(LIBERO_0P5B, [4, 8], updates=4)
    best4, best8 = res["recommended"]["4"], res["recommended"]["8"]
    assert best8["env_steps_per_s"] == pytest.approx(2 * best4["env_steps_per_s"], rel=0.1)
    assert best8["speedup_vs_sync_colocated"] > 1.0
    assert {r["placement"] for r in res["rows"]} == {"colocated", "disaggregated", "hybrid"}


def test_tune_formula():
    # device far from busy: serve every request at once (B = n, no waiting)
    c = choose(n=8, managers=4, t_step=1.0, k=1, infer={"a_s": 0.01, "b_s": 0.001})
    assert c["max_batch_samples"] == 8 and c["batch_timeout_ms"] == 0
    # a large fixed cost per batch: B = n is unstable (rho >= 1); a larger batch keeps up
    infer = {"a_s": 0.2, "b_s": 0.001}
    p1 = predict(8, 8, 8, 0.1, 1, infer)
    assert p1["rho"] > 0.99 and p1["throughput_samples_per_s"] == pytest.approx(8 / 0.208, rel=1e-3)
    c = choose(n=8, managers=8, t_step=0.1, k=1, infer=infer)
    assert c["max_batch_samples"] > 8
    assert c["predicted"]["throughput_samples_per_s"] > 1.5 * p1["throughput_samples_per_s"]
    lam = c["predicted"]["arrival_samples_per_s"]
    assert c["batch_timeout_ms"] == pytest.approx(1000 * (c["max_batch_samples"] - 8) / lam, rel=1e-3)


def test_tune_profile_measures_the_emulated_costs():
    t = tune_profile(BALANCED, "streamer", time_scale=0.5)
    inputs = t["inputs"]
    # balanced at time_scale 0.5: 5 ms per sample of inference, 4 envs x 2 actions x 5 ms per step
    assert inputs["infer"]["b_s"] == pytest.approx(0.005, rel=0.3)
    assert inputs["t_step_s"] == pytest.approx(0.04, rel=0.5)
    assert t["tuned"]["max_batch_samples"] % 4 == 0 and t["tuned"]["batch_timeout_ms"] >= 0
    assert t["simulated_env_steps_per_s"]["tuned"] > 0 and t["default"]["max_batch_samples"] == 64


def test_plan_command_writes_json_and_png(tmp_path):
    check = Path(__file__).with_name("planner_check.yaml")
    res = CliRunner().invoke(
        app, ["plan", "--profile", str(check), "--gpus", "2", "--out", str(tmp_path), "--updates", "4"]
    )
    assert res.exit_code == 0, res.output
    data = json.loads((tmp_path / "plan.json").read_text())
    assert data["workload"] == "planner-check" and set(data["recommended"]) == {"2"}
    assert (tmp_path / "plan.png").read_bytes()[:4] == b"\x89PNG"
    bad = CliRunner().invoke(app, ["plan", "--profile", str(check), "--schedules", "later"])
    assert bad.exit_code == 2
