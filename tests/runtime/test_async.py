"""The fully asynchronous runtime on a local Ray instance: staleness bound, routing, accounting,
event log, failure handling."""

import collections
import json
import time

import numpy as np
import psutil
import pytest

from asyncvla.builder import build_policy, probe_env
from asyncvla.config import load_config
from asyncvla.runtime.events import KINDS, read_events
from asyncvla.runtime.launcher import Runtime, WorkerError
from asyncvla.train import train

pytestmark = pytest.mark.usefixtures("ray_local")

BASE = [
    "mode=async",
    "env.num_envs=4",
    "env.num_managers=3",
    "env.kwargs.family=reach",
    "train.rollout_steps=3",
    "algo.minibatch_size=16",
    "algo.epochs=1",
    "eval.episodes=4",
    "eval.num_envs=4",
    "policy.kwargs.image_grid=4",
    "policy.kwargs.size=nano",
    "runtime.stall_timeout_s=120",
]
# Randomized simulator step times: lognormal with a heavy tail, one draw per env and action.
LATENCY = ["env.kwargs.latency={kind: heavy_tail, mean_ms: 0.3, sigma: 1.0, tail_prob: 0.05, tail_mult: 20}"]


def _run(overrides, updates):
    """Drive a Runtime directly so the test can read the exact sample accounting."""
    cfg = load_config(None, [*BASE, *overrides])
    probe = probe_env(cfg)
    policy = build_policy(cfg, probe)
    state = {"update": 0, "env_steps": 0, "wall_s": 0.0}
    rows = []
    rt = Runtime(cfg, policy, None, state, None)
    try:
        rt.run(updates, rows.extend)
        assert len(_actor_processes()) == 3 + len(rt.rollouts)  # what the failure test checks is real
        acc = rt.accounting()
        env_stats = rt.env_stats
    finally:
        rt.shutdown()
    return cfg, rows, acc, env_stats


@pytest.mark.parametrize("eta", [0, 1, 2, 4])
def test_staleness_bound_routing_and_exact_accounting_under_random_latency(eta):
    sharding = "runtime.sharding={0: [0, 1], 1: [1], 2: [0]}"  # manager 0 is split over two workers
    cfg, rows, acc, env_stats = _run(
        [
            *LATENCY,
            f"runtime.max_staleness={eta}",
            "runtime.num_rollout_workers=2",
            sharding,
            "runtime.max_batch_samples=3",
            "runtime.batch_timeout_ms=2",
            "runtime.queue_segments=2",
        ],
        updates=5,
    )
    # The bound holds for every trained decision, and the trainer never had to refuse one.
    assert [r["update"] for r in rows] == [1, 2, 3, 4, 5]
    assert all(r["staleness_max"] <= eta for r in rows)
    assert all(int(g) <= eta for r in rows for g in r["staleness_hist"])
    assert acc["rejected_samples"] == 0
    if eta > 0:
        assert any(r["staleness_max"] > 0 for r in rows)  # the async run really overlapped
    # No segment lost or duplicated between the env workers and the trainer.
    shipped = collections.Counter(tuple(s) for e in env_stats for s in e["shipped"])
    received = collections.Counter(tuple(s) for s in acc["received"])
    assert shipped == received and max(received.values()) == 1
    total = sum(s[2] for s in acc["received"])
    assert total == acc["trained_samples"] + acc["leftover_samples"] + acc["rejected_samples"]
    assert acc["trained_samples"] == sum(r["train_samples"] for r in rows)
    # Routing: every manager validated each reply's env ids against its own request (it raises
    # otherwise), and the samples of each segment belong to the envs of its manager.
    assert {s[0] for s in acc["received"]} == {0, 1, 2}


def test_async_train_writes_events_and_metrics(tmp_path):
    run = tmp_path / "run"
    summary = train(load_config(None, [*BASE, *LATENCY, "train.updates=3", "train.eval_every=2"]), run)
    assert summary["mode"] == "async" and summary["updates"] == 3 and summary["policy_version"] == 3
    assert summary["samples_rejected"] == 0 and summary["env_steps_collected"] >= summary["env_steps"] > 0
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["update"] for r in rows] == [1, 2, 3] and "eval_success_rate" in rows[1]
    # linear annealing: update k trains with lr * (1 - (k - 1) / updates)
    lr = load_config(None, BASE).algo.lr
    assert [r["lr"] for r in rows] == pytest.approx([lr, lr * 2 / 3, lr / 3])
    events = read_events(run / "events.jsonl")
    kinds = {e["kind"] for e in events}
    assert kinds <= set(KINDS)
    assert [e["updates"] for e in events if e["kind"] == "run_end"] == [3]
    for kind in (
        "run_start",
        "env_step",
        "segment_shipped",
        "batch_formed",
        "batch_inferred",
        "train",
        "optimizer_step",
        "weights_published",
        "weights_adopted",
    ):
        assert kind in kinds, kind
    assert [e["seq"] for e in events] == list(range(len(events)))
    for worker in {e["worker"] for e in events}:
        wseq = [e["wseq"] for e in events if e["worker"] == worker]
        assert wseq == sorted(wseq)
    published = [e["version"] for e in events if e["kind"] == "weights_published"]
    assert published == [1, 2, 3]
    adopted = [e for e in events if e["kind"] == "weights_adopted"]
    assert all(e["latency_s"] >= 0 for e in adopted)
    # Dynamic batching: no batch is larger than max_batch_samples unless one request is.
    cfg = load_config(None, BASE)
    assert all(
        e["samples"] <= max(cfg.runtime.max_batch_samples, cfg.env.num_envs)
        for e in events
        if e["kind"] == "batch_formed"
    )


def test_sync_mode_is_on_policy_with_static_batches(tmp_path):
    run = tmp_path / "run"
    summary = train(load_config(None, [*BASE, "mode=sync", "train.updates=2"]), run)
    assert summary["max_staleness"] == 0
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert all(r["staleness_hist"] == {"0": r["train_samples"]} for r in rows)
    formed = [e for e in read_events(run / "events.jsonl") if e["kind"] == "batch_formed"]
    # every batch waits for all three managers (the barrier), never for a timeout
    assert formed and all(e["reason"] == "all_shards" and e["samples"] == 12 for e in formed)


def test_streamer_run_trains_micro_batches(tmp_path):
    run = tmp_path / "run"
    train(load_config(None, [*BASE, "async.streamer=true", "train.updates=2", "algo.minibatch_size=5"]), run)
    micro = [e for e in read_events(run / "events.jsonl") if e["kind"] == "micro_batch"]
    assert micro and sum(e["count"] for e in micro) >= 2 * (36 // 5)


def _actor_processes():
    """This test's Ray actor processes (Ray titles them ``ray::<Class>...``): descendants of this
    process, so another Ray instance on the machine does not count."""
    names = ("ray::EnvWorkerActor", "ray::RolloutWorkerActor", "ray::TrainerActor", "ray::Coordinator")
    found = []
    for p in psutil.Process().children(recursive=True):
        try:
            text = " ".join(p.cmdline())
        except psutil.Error:
            continue
        if text.startswith(names):
            found.append(text[:60])
    return found


def test_a_failing_worker_stops_the_run_with_one_clear_error(tmp_path):
    cfg = load_config(
        None,
        [
            *BASE,
            "env.name=tests.runtime.faulty:FailingEnv",
            "env.kwargs.fail_after=40",
            "env.kwargs.max_episode_steps=40",
            "train.updates=30",
            "runtime.max_env_errors=0",  # the first simulator error fails the worker ...
            "runtime.max_restarts=0",  # ... and the run
        ],
    )
    with pytest.raises(WorkerError, match="simulator crashed"):
        train(cfg, tmp_path / "run")
    # every actor process of the run is gone (Ray titles them ray::<Class>...)
    for _ in range(50):
        alive = _actor_processes()
        if not alive:
            break
        time.sleep(0.2)
    assert alive == []
    assert (tmp_path / "run" / "config.yaml").is_file()


def test_rollout_batches_answer_each_request_with_its_own_observations():
    from asyncvla.runtime.env_worker import EnvManager
    from asyncvla.runtime.rollout_worker import RolloutSpec, RolloutWorker
    from asyncvla.runtime.weights import PolicySpec

    cfg = load_config(None, BASE)
    policy = build_policy(cfg, probe_env(cfg))
    managers = [EnvManager(m, "tabletop", 3, {"family": "reach"}, 2, seed=m) for m in range(3)]
    requests = [r for m in managers for r in m.request()]
    worker = RolloutWorker(cfg, RolloutSpec(0), PolicySpec.of(policy, cfg.policy.name))
    batched = worker.infer(requests)
    for req, rep in zip(requests, batched, strict=True):
        alone = worker.infer([req])[0]
        assert rep.manager_id == req.manager_id and np.array_equal(rep.env_ids, req.env_ids)
        np.testing.assert_allclose(rep.values, alone.values, atol=1e-5)


def test_compare_runs_sync_and_async_from_one_start(tmp_path):
    from asyncvla.train import compare

    result = compare(load_config(None, [*BASE, "train.updates=2"]), tmp_path / "cmp")
    saved = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert saved["sync"]["max_staleness"] == 0 and saved["async"]["max_staleness"] == 1
    # same updates of the same global batch: the same decisions (env steps differ only where
    # episodes end inside a chunk)
    assert saved["sync"]["samples_trained"] == saved["async"]["samples_trained"] == 2 * 36
    assert 0.8 < saved["env_steps_ratio"] < 1.25
    s, a = saved["sync"], saved["async"]
    assert saved["checks"]["async env steps <= 1.1 x sync"] == (a["env_steps"] <= 1.1 * s["env_steps"])
    assert (
        saved["checks"]["async wall time < sync"]
        == (a["wall_s"] < s["wall_s"])
        == result["checks"]["async wall time < sync"]
    )
    assert (tmp_path / "cmp" / "sync" / "summary.json").is_file()
    assert (tmp_path / "cmp" / "async" / "events.jsonl").is_file()
