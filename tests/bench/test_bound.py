"""The pipeline bound (hand-computed), the profiles and modes, and the measurement of one run."""

import math
from pathlib import Path

import pytest

from asyncvla.bench.analysis import analyze_run, busy_union
from asyncvla.bench.profiles import (
    MODES,
    POLICY_NAME,
    RealProfile,
    derive_h200,
    load_profile,
    mode_config,
    nominal_costs,
    pipeline_bound,
    place_stages,
)
from asyncvla.config import load_config

ROOT = Path(__file__).resolve().parents[2]
PROFILES = sorted((ROOT / "configs" / "bench").glob("*.yaml"))
BALANCED = ROOT / "configs" / "bench" / "balanced.yaml"
# A committed copy of ../shared/profiles/h200_vla_backbone_stage_costs.json (the source of the profiles).
H200 = ROOT / "configs" / "bench" / "h200_vla_backbone_stage_costs.json"


def test_bound_by_hand():
    c = {"env": 0.01, "infer": 0.01, "train": 0.01}
    sep = pipeline_bound(c, {"cpu": {"env": 0.01}, "gpu0": {"infer": 0.01}, "gpu1": {"train": 0.01}})
    assert sep["bound"] == pytest.approx(3.0) and sep["bound_samples_per_s"] == pytest.approx(100.0)
    shared = pipeline_bound(c, {"cpu": {"env": 0.01}, "gpu": {"infer": 0.01, "train": 0.01}})
    assert shared["bound"] == pytest.approx(1.5) and shared["bottleneck"] == "gpu"
    c = {"env": 0.02, "infer": 0.01, "train": 0.03}
    assert pipeline_bound(c, place_stages(c, "a", "b"))["bound"] == pytest.approx(6 / 3)
    assert pipeline_bound(c, place_stages(c, "a", "a"))["bound"] == pytest.approx(6 / 4)
    # two env workers in parallel: each carries half of the env stage
    c = {"env": 0.02, "infer": 0.01, "train": 0.01}
    assert pipeline_bound(c, place_stages(c, "a", "b", env_worker_loads=[0.02, 0.02]))[
        "bound"
    ] == pytest.approx(2.0)


def test_balanced_profile_bound_is_3_separate_and_1p5_shared():
    p = load_profile(BALANCED)
    for mode in ("sync-disaggregated", "train-async", "rollout-async", "streamer"):
        n = nominal_costs(p, mode)
        assert n["bound"] == pytest.approx(3.0)
        assert n["stage_cost_s"]["env"] == pytest.approx(0.010)  # 2 actions x 10 ms / 2 workers
        assert n["bound_samples_per_s"] == pytest.approx(100.0)
    n = nominal_costs(p, "sync-colocated")
    assert n["bound"] == pytest.approx(1.5) and n["bottleneck"] == "device:dev0"
    assert nominal_costs(p, "streamer", time_scale=0.5)["bound_samples_per_s"] == pytest.approx(200.0)


def test_modes_are_the_readme_rows():
    p = load_profile(BALANCED)
    cfgs = {m: mode_config(p, m, updates=3) for m in MODES}
    assert cfgs["sync-colocated"].mode == "sync" and cfgs["sync-colocated"].runtime.placement == "colocated"
    assert (
        cfgs["sync-disaggregated"].mode == "sync"
        and cfgs["sync-disaggregated"].runtime.placement == "disaggregated"
    )
    sw = {
        m: (c.mode, c.async_.env, c.async_.rollout, c.async_.train, c.async_.streamer)
        for m, c in cfgs.items()
    }
    assert sw["train-async"] == ("async", False, False, True, False)
    assert sw["rollout-async"] == ("async", True, True, True, False)
    assert sw["streamer"] == ("async", True, True, True, True)
    dev = {m: c.policy.kwargs["devices"] for m, c in cfgs.items()}
    assert dev["sync-colocated"]["rollout"] == dev["sync-colocated"]["trainer"]
    assert all(dev[m]["rollout"] != dev[m]["trainer"] for m in MODES if m != "sync-colocated")
    c = cfgs["streamer"]
    assert c.policy.name == "asyncvla.bench.emulated:EmulatedPolicy"
    assert c.algo.epochs == 1 and c.algo.proximal == "interpolate" and c.train.updates == 3
    assert c.env.kwargs["latency"]["mean_ms"] == pytest.approx(10.0)
    assert mode_config(p, "streamer", 3, time_scale=0.1).env.kwargs["latency"]["mean_ms"] == pytest.approx(
        1.0
    )


@pytest.mark.parametrize("path", PROFILES, ids=[p.stem for p in PROFILES])
def test_every_profile_builds_every_mode(path):
    p = load_profile(path)
    assert p.workload == path.stem
    for mode in p.all_modes():
        cfg = mode_config(p, mode, updates=2)
        assert cfg.global_batch() > 0 and cfg.train.updates == 2
        if isinstance(p, RealProfile):  # its own policy and env; no nominal bound
            assert cfg.policy.name != POLICY_NAME and cfg.train.init is None
            continue
        n = nominal_costs(p, mode)
        assert math.isfinite(n["bound"]) and n["bound"] >= 1.0


def test_real_profile_is_its_config_with_the_mode_switches():
    p = load_profile(ROOT / "configs" / "bench" / "tabletop-tiny.yaml")
    sync = mode_config(p, "sync-colocated", updates=3)
    stream = mode_config(p, "streamer", updates=3)
    hybrid = mode_config(p, "streamer-hybrid", updates=3)
    assert sync.mode == "sync" and sync.runtime.placement == "colocated" and sync.policy.name == "tiny_vla"
    assert stream.mode == "async" and stream.async_.streamer and stream.runtime.placement == "disaggregated"
    assert hybrid.runtime.placement == "hybrid" and not sync.pretrain.enabled
    assert stream.env.num_envs == 32 and stream.global_batch() == 2 * 32 * 12
    # rollout-async-hybrid is the quickstart's own async schedule (what `compare` runs as async)
    own = mode_config(p, "rollout-async-hybrid", updates=3)
    quick = load_config(ROOT / "configs" / "quickstart.yaml")
    assert own.async_ == quick.async_ and own.runtime.placement == quick.runtime.placement
    assert own.schedule() == quick.schedule() and own.algo == quick.algo


@pytest.mark.parametrize(
    "workload,model",
    [("libero-oft7b", "vla_7b"), ("libero-0p5b", "vla_0p5b"), ("vectorized-sim", "vla_0p5b")],
)
def test_libero_profiles_follow_the_h200_measurements(workload, model):
    p = load_profile(ROOT / "configs" / "bench" / f"{workload}.yaml")
    d = derive_h200(H200, model)
    for k in ("a_s", "b_s", "floor_s"):
        assert getattr(p.infer, k) == pytest.approx(d["infer"][k], rel=1e-5, abs=1e-9)
        assert getattr(p.train, k) == pytest.approx(d["train"][k], rel=1e-5, abs=1e-9)
    assert p.sync_s == pytest.approx(d["sync_s"], rel=1e-5)
    assert d["infer_max_rel_error"] < 0.05 and d["train_max_rel_error"] < 0.05


def test_analysis_of_a_hand_made_run():
    """Two env workers, one rollout device, one trainer device; window = after update 1."""
    p = load_profile(BALANCED)
    cfg = mode_config(p, "streamer", updates=3)
    ev = [{"worker": "driver", "kind": "run_start", "t": 0.0}]
    # trains end at t = 1 (warm-up), 3 and 5: the window is [1, 5] (4 s)
    for v, (t0, t1) in enumerate([(0.5, 1.0), (2.0, 3.0), (4.0, 5.0)]):
        ev.append({"worker": "trainer", "kind": "train", "t": t1, "t0": t0, "t1": t1, "version": v})
    # env0 busy 2 s and env1 busy 1 s inside the window, 100 decisions stepped in it
    ev += [
        {"worker": "env0", "kind": "env_step", "t": 2.0, "t0": 1.0, "t1": 2.0, "n": 50},
        {"worker": "env0", "kind": "env_step", "t": 4.0, "t0": 3.0, "t1": 4.0, "n": 25},
        {"worker": "env1", "kind": "env_step", "t": 3.0, "t0": 2.0, "t1": 3.0, "n": 25},
        {"worker": "env1", "kind": "env_step", "t": 0.9, "t0": 0.5, "t1": 0.9, "n": 25},  # before the window
        {"worker": "rollout0", "kind": "batch_inferred", "t": 2.5, "t0": 1.5, "t1": 2.5, "samples": 50},
    ]
    holds = [
        {"device": "dev0", "role": "rollout", "op": "act", "samples": 50, "t0": 1.6, "t1": 2.4},
        {"device": "dev0", "role": "rollout", "op": "sync", "samples": 0, "t0": 3.0, "t1": 3.2},
        {"device": "dev1", "role": "trainer", "op": "evaluate", "samples": 50, "t0": 2.0, "t1": 3.0},
        {"device": "dev1", "role": "trainer", "op": "act", "samples": 5, "t0": 4.0, "t1": 4.5},  # bootstrap
    ]
    rows = [
        {
            "update": 1,
            "env_steps": 100,
            "decisions": 50,
            "wall_s": 1.0,
            "train_samples": 50,
            "staleness_mean": 0.0,
            "staleness_max": 0,
        },
        {
            "update": 2,
            "env_steps": 300,
            "decisions": 150,
            "wall_s": 3.0,
            "train_samples": 100,
            "staleness_mean": 1.0,
            "staleness_max": 1,
        },
        {
            "update": 3,
            "env_steps": 500,
            "decisions": 250,
            "wall_s": 5.0,
            "train_samples": 100,
            "staleness_mean": 0.5,
            "staleness_max": 1,
        },
    ]
    r = analyze_run(cfg, rows, ev, holds, warmup=1)
    assert r["window_s"] == pytest.approx(4.0) and r["samples_in_window"] == 100
    # updates 2 and 3 trained 200 decisions (400 env steps) in the 4 s window
    assert r["decisions"] == 200 and r["env_steps"] == 400
    assert r["env_steps_per_s"] == pytest.approx(100.0) and r["decisions_per_s"] == pytest.approx(50.0)
    assert r["staleness_mean"] == pytest.approx(0.75) and r["staleness_max"] == 1
    assert r["busy"]["env"] == pytest.approx((2.0 / 4 + 1.0 / 4) / 2)
    assert r["busy"]["rollout"] == pytest.approx(1.0 / 4)
    assert r["busy"]["train"] == pytest.approx(2.0 / 4)
    assert r["device_busy"] == {"dev0": pytest.approx(1.0 / 4), "dev1": pytest.approx(1.5 / 4)}
    # per decision trained: env workers 2 s and 1 s / 200; infer 0.8 s and sync 0.2 s (dev0);
    # train 1.0 s + the 0.5 s bootstrap (dev1)
    assert r["stage_cost_s"] == pytest.approx({"env": 0.0075, "infer": 0.004, "train": 0.0075, "sync": 0.001})
    assert r["resource_load_s"] == pytest.approx(
        {"env0": 0.01, "env1": 0.005, "device:dev0": 0.005, "device:dev1": 0.0075}
    )
    assert r["bottleneck"] == "env0"
    assert r["bound"] == pytest.approx(0.020 / 0.01)
    assert r["bound_env_steps_per_s"] == pytest.approx(2 * 100.0)  # 2 env steps per decision
    # env0, the bottleneck, was busy half of the window
    assert r["achieved_over_bound"] == pytest.approx(r["env_steps_per_s"] / r["bound_env_steps_per_s"])
    assert r["achieved_over_bound"] == pytest.approx(0.5) == r["resource_busy"]["env0"]


def test_busy_union_counts_overlaps_once_and_stays_in_the_window():
    assert busy_union([], 0.0, 4.0) == 0.0
    assert busy_union([(1.0, 2.0), (3.0, 3.5)], 0.0, 4.0) == pytest.approx(1.5)
    assert busy_union([(1.0, 3.0), (2.0, 4.0), (2.5, 2.6)], 0.0, 4.0) == pytest.approx(3.0)
    assert busy_union([(-1.0, 1.0), (3.5, 9.0), (5.0, 6.0)], 0.0, 4.0) == pytest.approx(1.5)
    assert busy_union([(-1.0, 9.0), (0.0, 4.0)], 0.0, 4.0) == 4.0


def test_a_shared_device_whose_stages_overlap_is_busy_at_most_the_window():
    """A real workload colocated on CPU: inference and training overlap on the shared 'device'
    (they do not exclude each other), so their busy seconds add up to more than the window; the
    resource's load counts the overlap once and the ratio stays the bottleneck's busy fraction."""
    p = load_profile(ROOT / "configs" / "bench" / "tabletop-tiny.yaml")
    cfg = mode_config(p, "sync-colocated", updates=2)
    ev = [
        {"worker": "trainer", "kind": "train", "t": 1.0, "t0": 0.5, "t1": 1.0, "version": 0},
        {"worker": "trainer", "kind": "train", "t": 5.0, "t0": 2.0, "t1": 5.0, "version": 1},
        {"worker": "env0", "kind": "env_step", "t": 2.0, "t0": 1.0, "t1": 2.0, "n": 10},
        {"worker": "rollout0", "kind": "batch_inferred", "t": 4.0, "t0": 1.0, "t1": 4.0, "samples": 10},
    ]
    rows = [
        {"update": 1, "env_steps": 10, "decisions": 10, "wall_s": 1.0, "train_samples": 10},
        {"update": 2, "env_steps": 50, "decisions": 20, "wall_s": 5.0, "train_samples": 10},
    ]
    r = analyze_run(cfg, rows, ev, None, warmup=1)
    assert r["busy"]["rollout"] + r["busy"]["train"] == pytest.approx(1.5)  # 3 s + 3 s of 4 s
    assert r["resource_busy"]["device:shared"] == pytest.approx(1.0)  # [1, 5]: the whole window
    assert r["bottleneck"] == "device:shared" and r["achieved_over_bound"] == 1.0
    assert r["stage_cost_s"]["infer"] == pytest.approx(3.0 / 10) and r["bound"] == pytest.approx(0.7 / 0.4)
    assert r["env_steps_per_s"] == pytest.approx(40 / 4) and r["bound_env_steps_per_s"] == pytest.approx(
        10 / 4 * 4
    )


def test_extra_and_unknown_modes():
    from asyncvla.config import ConfigError

    p = load_profile(BALANCED)
    c = mode_config(p, "dynamic-batching", updates=2)
    assert (c.mode, c.async_.env, c.async_.rollout, c.async_.streamer) == ("async", False, True, False)
    assert "dynamic-batching" not in p.all_modes()  # runs only when asked for
    with pytest.raises(ConfigError, match="unknown"):
        mode_config(p, "warp-speed", updates=2)
