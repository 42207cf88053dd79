"""Measure one run from its rows (``metrics``), event log and device holds.

Window: from the end of the last warm-up update's training to the end of the last update (the
trainer's ``train`` events). Everything is measured over that one window:

* throughput: the env steps and decisions of the batches trained in the window (the trainer's
  rows of those updates) per second of the window;
* busy fractions: the event intervals of each worker (``env_step``, ``batch_inferred``,
  ``train`` / ``micro_batch``, ``weights_published``) and, for emulated devices, the device holds
  (which exclude time spent waiting for a shared device);
* per-sample stage costs: the busy seconds of each stage in the window divided by the decisions
  the throughput counts (trained in the window); a resource's load is the seconds it was busy
  (its intervals' union: overlaps counted once), per decision, so no resource is busier than the
  window.

Hence ``achieved_over_bound`` (env_steps_per_s / bound_env_steps_per_s, both over the same window
and the same decisions) is the bottleneck resource's busy fraction of the window: at most 1 by
definition, 1 when the bottleneck never idled.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from asyncvla.bench.profiles import bound_from_loads
from asyncvla.config import Config

STAGE_KINDS = {
    "env_step": "env",
    "batch_inferred": "infer",
    "train": "train",
    "micro_batch": "train",
    "weights_published": "sync",
}
HOLD_STAGE = {"act": "infer", "evaluate": "train", "evaluate_nograd": "train", "sync": "sync"}


def _clip(t0: float, t1: float, w0: float, w1: float) -> float:
    return max(0.0, min(t1, w1) - max(t0, w0))


def busy_union(intervals: list[tuple[float, float]], w0: float, w1: float) -> float:
    """Seconds of ``[w0, w1]`` inside at least one of the intervals (overlaps counted once), so
    never more than ``w1 - w0``."""
    total, end = 0.0, w0
    for t0, t1 in sorted((max(a, w0), min(b, w1)) for a, b in intervals):
        if t1 > end:
            total += t1 - max(t0, end)
            end = t1
    return min(total, max(w1 - w0, 0.0))


def window(events: list[dict[str, Any]], warmup: int) -> tuple[float, float]:
    """(start, end) wall times of the measured window (train events are in version order)."""
    trains = sorted((e for e in events if e["kind"] == "train"), key=lambda e: e["version"])
    if not trains:
        raise ValueError("no train events: the run finished no update")
    start_evt = [e for e in events if e["kind"] == "run_start"]
    if warmup <= 0 or len(trains) <= warmup:
        t_start = start_evt[0]["t"] if start_evt else min(e.get("t0", e["t"]) for e in events)
        return t_start, trains[-1]["t1"]
    return trains[warmup - 1]["t1"], trains[-1]["t1"]


def throughput(rows: list[dict[str, Any]], warmup: int) -> dict[str, float]:
    rows = sorted(rows, key=lambda r: r["update"])
    if not rows:
        raise ValueError("no rows")
    first = rows[warmup - 1] if 0 < warmup < len(rows) else {"env_steps": 0, "wall_s": 0.0, "decisions": 0}
    last = rows[-1]
    dt = last["wall_s"] - first["wall_s"]
    steps = last["env_steps"] - first["env_steps"]
    dec = last.get("decisions", 0) - first.get("decisions", 0)
    measured = [r for r in rows if r["update"] > (warmup if 0 < warmup < len(rows) else 0)]
    samples = sum(float(r.get("train_samples", 0.0)) for r in measured)
    st_mean = (
        sum(float(r.get("staleness_mean", 0.0)) * float(r.get("train_samples", 0.0)) for r in measured)
        / samples
        if samples
        else 0.0
    )
    return {
        "env_steps": int(steps),
        "decisions": int(dec),
        "wall_s": float(dt),
        "env_steps_per_s": steps / dt if dt > 0 else 0.0,
        "decisions_per_s": dec / dt if dt > 0 and dec else 0.0,
        "updates_measured": len(measured),
        "staleness_mean": st_mean,
        "staleness_max": int(max((r.get("staleness_max", 0) for r in measured), default=0)),
        "rejected_samples": int(sum(r.get("rejected_samples", 0) for r in measured)),
    }


def analyze_run(
    cfg: Config,
    rows: list[dict[str, Any]],
    events: list[dict[str, Any]],
    holds: list[dict[str, Any]] | None = None,
    warmup: int = 1,
) -> dict[str, Any]:
    """Throughput, busy fractions, measured per-sample stage costs and the pipeline bound."""
    w0, w1 = window(events, warmup)
    span = max(w1 - w0, 1e-9)
    tp = throughput(rows, warmup)
    # the rows count the trained batches; their rates are taken over the event window
    tp.update(
        wall_s=span,
        env_steps_per_s=tp["env_steps"] / span,
        decisions_per_s=tp["decisions"] / span,
    )
    # decisions stepped in the window (reported; the costs are per decision trained)
    stepped = sum(int(e.get("n", 0)) for e in events if e["kind"] == "env_step" and w0 <= e["t1"] <= w1)
    # busy per worker and per stage from the event intervals
    busy_worker: dict[str, dict[str, float]] = {}
    spans: dict[str, dict[str, list[tuple[float, float]]]] = {}
    for e in events:
        stage = STAGE_KINDS.get(e["kind"])
        if stage is None or "t0" not in e:
            continue
        d = _clip(e["t0"], e["t1"], w0, w1)
        busy_worker.setdefault(e["worker"], {}).setdefault(stage, 0.0)
        busy_worker[e["worker"]][stage] += d
        spans.setdefault(e["worker"], {}).setdefault(stage, []).append((e["t0"], e["t1"]))
    env_workers = sorted(w for w in busy_worker if w.startswith("env"))
    rollout_workers = sorted(w for w in busy_worker if w.startswith("rollout"))
    worker_frac = {w: sum(v.values()) / span for w, v in busy_worker.items()}
    stage_busy = {
        "env": float(np.mean([busy_worker[w].get("env", 0.0) for w in env_workers])) / span
        if env_workers
        else 0.0,
        "rollout": sum(busy_worker[w].get("infer", 0.0) for w in rollout_workers) / span,
        "train": busy_worker.get("trainer", {}).get("train", 0.0) / span,
        "sync": busy_worker.get("trainer", {}).get("sync", 0.0) / span,
    }
    # device occupancy (emulated): exact, without waiting time
    device_busy: dict[str, float] = {}
    hold_stage: dict[str, float] = {}
    for h in holds or []:
        d = _clip(h["t0"], h["t1"], w0, w1)
        device_busy[h["device"]] = device_busy.get(h["device"], 0.0) + d / span
        stage = (
            "train" if h.get("role") == "trainer" and h["op"] == "act" else HOLD_STAGE.get(h["op"], h["op"])
        )
        hold_stage[stage] = hold_stage.get(stage, 0.0) + d
    if holds:
        stage_busy["sync"] += hold_stage.get("sync", 0.0) / span
    # the resources and the intervals each was busy: env workers, then the devices
    pol = cfg.policy.kwargs
    if "devices" in pol:
        rdev, tdev = pol["devices"]["rollout"], pol["devices"]["trainer"]
    else:  # a real workload: the placement says whether rollout and trainer share a device
        rdev, tdev = ("shared", "shared") if cfg.runtime.placement == "colocated" else ("rollout", "trainer")
    busy_at: dict[str, list[tuple[float, float]]] = {
        **{w: spans[w].get("env", []) for w in env_workers},
        f"device:{rdev}": [],
        f"device:{tdev}": [],
    }
    trainer = spans.get("trainer", {})
    if holds:
        for h in holds:
            busy_at.setdefault(f"device:{h['device']}", []).append((h["t0"], h["t1"]))
        dev_busy = {k: hold_stage.get(k, 0.0) for k in ("infer", "train", "sync")}
    else:  # inference and weight sync on the rollout side, training on the trainer's
        busy_at[f"device:{rdev}"] += [iv for w in rollout_workers for iv in spans[w].get("infer", [])]
        busy_at[f"device:{rdev}"] += trainer.get("sync", [])
        busy_at[f"device:{tdev}"] += trainer.get("train", [])
        dev_busy = {
            "infer": stage_busy["rollout"] * span,
            "train": stage_busy["train"] * span,
            "sync": stage_busy["sync"] * span,
        }
    busy_s = {r: busy_union(iv, w0, w1) for r, iv in busy_at.items()}
    # measured per-sample stage costs (seconds per decision trained in the window)
    n = max(tp["decisions"] or stepped, 1)
    env_cost = (
        float(np.mean([busy_worker[w].get("env", 0.0) for w in env_workers])) / n if env_workers else 0.0
    )
    costs = {"env": env_cost, **{k: v / n for k, v in dev_busy.items()}}
    bound = bound_from_loads(costs, {r: b / n for r, b in busy_s.items()})
    steps_per_sample = (
        tp["env_steps"] / tp["decisions"] if tp["decisions"] > 0 else float(cfg.policy.chunk_size)
    )
    bound_steps = bound["bound_samples_per_s"] * steps_per_sample
    return {
        **tp,
        "window_s": span,
        "samples_in_window": stepped,
        "busy": stage_busy,
        "worker_busy": worker_frac,
        "device_busy": device_busy,
        "resource_busy": {r: b / span for r, b in busy_s.items()},
        "stage_cost_s": costs,
        "resource_load_s": bound["resource_load_s"],
        "bottleneck": bound["bottleneck"],
        "bound": bound["bound"],
        "bound_env_steps_per_s": bound_steps,
        # = env_steps_per_s / bound_env_steps_per_s, computed without the rounding of that quotient
        "achieved_over_bound": busy_s[bound["bottleneck"]] / span if tp["env_steps"] > 0 else 0.0,
        "env_steps_per_sample": steps_per_sample,
    }
