"""Supervision on a local Ray instance: a killed env or rollout worker is restarted and the run
finishes; a simulator error is handled inside its worker; a crash loop stops the run with one
line; a killed trainer's run resumes without gaps or duplicated updates."""

import json
import os
import signal
import threading
import time

import pytest

from asyncvla.config import load_config
from asyncvla.runtime.events import read_events
from asyncvla.runtime.launcher import WorkerError
from asyncvla.train import train
from tests.runtime.test_async import BASE, LATENCY

pytestmark = [pytest.mark.usefixtures("ray_local"), pytest.mark.slow]


def _rows(run):
    path = run / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def _starts(run, actor):
    path = run / "events.jsonl"
    events = read_events(path) if path.is_file() else []
    return [e for e in events if e["kind"] == "worker_start" and e["actor"] == actor]


def _kill_when(run, actor, after_update, done):
    """In the background: once metrics.jsonl has ``after_update``, SIGKILL ``actor``'s process
    (its pid from the run's ``worker_start`` event)."""

    def go():
        while not done.is_set():
            rows = _rows(run)
            if rows and rows[-1]["update"] >= after_update and _starts(run, actor):
                os.kill(_starts(run, actor)[-1]["pid"], signal.SIGKILL)
                return
            time.sleep(0.05)

    t = threading.Thread(target=go, daemon=True)
    t.start()
    return t


def _check_stream(run, updates, eta=1):
    rows = _rows(run)
    assert [r["update"] for r in rows] == list(range(1, updates + 1))
    assert [r["policy_version"] for r in rows] == list(range(1, updates + 1))
    steps = [r["env_steps"] for r in rows]
    assert steps == sorted(steps)  # (an update whose every segment was lost adds none)
    assert all(r["staleness_max"] <= eta for r in rows)
    return rows


@pytest.mark.parametrize("actor", ["env0", "rollout0"])
def test_a_killed_worker_is_restarted_and_the_run_finishes(tmp_path, actor):
    run = tmp_path / "run"
    cfg = load_config(None, [*BASE, *LATENCY, "train.rollout_steps=6", "train.updates=10"])
    done = threading.Event()
    killer = _kill_when(run, actor, 2, done)
    try:
        summary = train(cfg, run)
    finally:
        done.set()
        killer.join()
    assert summary["updates"] == 10 and summary["samples_rejected"] == 0
    rows = _check_stream(run, 10)
    starts = _starts(run, actor)
    assert [s["generation"] for s in starts] == [0, 1] and starts[0]["pid"] != starts[1]["pid"]
    assert all(s["node"] and s["host"] for s in starts)
    # env0 holds every manager: its open segments (possibly still empty, held by the staleness
    # throttle) were lost and counted, never trained, and its 3 x 4 running episodes cut off
    assert summary["lost_segments"] >= 1 and summary["lost_episodes"] >= 12
    assert summary["env_steps_collected"] >= summary["env_steps"] + summary["lost_env_steps"]
    # a dead rollout worker takes the env worker waiting for its replies with it: two restarts
    assert summary["worker_restarts"] == (1 if actor == "env0" else 2)
    assert rows[-1]["worker_restarts"] == summary["worker_restarts"]
    assert rows[-1]["lost_episodes"] == summary["lost_episodes"]
    failed = [e for e in read_events(run / "events.jsonl") if e["kind"] == "worker_failed"]
    assert failed and failed[0]["actor"] == "env0" and all(e["restarting"] for e in failed)


def test_a_simulator_error_is_handled_inside_the_worker(tmp_path):
    run = tmp_path / "run"
    flaky = [
        "env.name=tests.runtime.faulty:FlakyEnv",
        "env.kwargs.fail_env={5: 1}",
        "env.kwargs.raise_at=[9]",
    ]
    summary = train(load_config(None, [*BASE, *flaky, "train.updates=6"]), run)
    assert summary["updates"] == 6 and summary["worker_restarts"] == 0
    assert summary["env_errors"] == 2 and summary["samples_quarantined"] >= 1 + 4
    errors = [e for e in read_events(run / "events.jsonl") if e["kind"] == "env_error"]
    assert [e["count"] for e in errors] in ([1, 2], [1, 1])  # one or two managers
    assert "failed" in errors[0]["cause"] and "step failed (injected)" in errors[-1]["cause"]
    _check_stream(run, 6)


def test_a_crash_loop_stops_the_run_with_one_line(tmp_path):
    cfg = load_config(
        None,
        [
            *BASE,
            "env.name=tests.runtime.faulty:FailingEnv",
            "env.kwargs.fail_after=40",  # after the driver's initial evaluation
            "env.kwargs.max_episode_steps=40",
            "runtime.max_env_errors=0",
            "runtime.max_restarts=1",
            "train.updates=30",
        ],
    )
    with pytest.raises(WorkerError) as err:
        train(cfg, tmp_path / "run")
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("env0 failed 2x within 600 s (runtime.max_restarts 1)")
    assert "simulator crashed (injected)" in msg
    assert len(_starts(tmp_path / "run", "env0")) == 2


def test_a_killed_trainer_resumes_without_gaps_or_duplicates(tmp_path):
    run = tmp_path / "run"
    cfg = load_config(None, [*BASE, "train.updates=12", "train.checkpoint_every=3"])
    done = threading.Event()
    killer = _kill_when(run, "trainer", 4, done)
    try:
        with pytest.raises(WorkerError, match=r"^trainer: .*--resume"):
            train(cfg, run)
    finally:
        done.set()
        killer.join()
    killed_at = _rows(run)[-1]["update"]
    assert 4 <= killed_at < 12
    summary = train(cfg, run, resume=True)
    assert summary["updates"] == summary["policy_version"] == 12
    rows = _check_stream(run, 12)
    assert summary["env_steps"] == rows[-1]["env_steps"] and summary["samples_rejected"] == 0
    assert summary["samples_trained"] == sum(r["train_samples"] for r in rows)
    # the second run started from the last checkpoint (a multiple of 3) with its version
    second = _starts(run, "trainer")[-1]
    assert len(_starts(run, "trainer")) == 2 and second["generation"] == 0
    start = [e for e in read_events(run / "events.jsonl") if e["kind"] == "run_start"]
    assert len(start) == 2
