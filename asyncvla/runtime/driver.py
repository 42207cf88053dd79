"""The driver loop: one run of the schedule, used by ``train``, ``compare`` and ``bench`` alike.

``run_schedule`` starts (or joins) Ray, builds the workers (``launcher.Runtime``), streams the
trainer's metric rows through ``on_row`` (evaluation, progress) into the run directory's
``metrics.jsonl`` (``RunDir.log``, the only writer of that file), collects the accounting and the
workers' statistics, and stops every worker whatever happens.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray

from asyncvla.config import Config
from asyncvla.policies import Policy
from asyncvla.rundir import RunDir
from asyncvla.runtime.launcher import Runtime, init_ray, load_weights


@dataclass
class RunResult:
    final: dict[str, Any]
    """The trainer's result: ``version``, ``updates``, packed final ``weights``."""
    accounting: dict[str, Any]
    """Samples received, trained, rejected and left over; the trainer's counters."""
    env_stats: list[dict[str, Any]]
    rollout_stats: list[dict[str, Any]]
    ray: dict[str, Any]
    """The Ray instance: GCS ``address`` and whether the run ``joined`` a cluster."""
    start_s: float
    """Seconds to place and construct every worker."""
    run_s: float
    """Seconds from the start of the schedule until every worker stopped."""


def run_schedule(
    cfg: Config,
    policy: Policy,
    run: RunDir | None,
    state: dict[str, Any],
    optimizer_dir: Path | None = None,
    on_row: Callable[[dict[str, Any]], None] | None = None,
    stop_after_s: float | None = None,
    on_health: Callable[[dict[str, dict[str, float]]], None] | None = None,
) -> RunResult:
    """Train ``cfg.train.updates - state["update"]`` updates from ``policy``; ``state`` (update,
    env steps, wall time) is kept current row by row and ``policy`` holds the final weights.

    ``on_row`` sees each metric row first; the row's ``_weights`` (the published weights of an
    ``eval_every`` update) can be read with ``load_weights(other, {"weights": ray.get(ref[0]),
    ...})`` inside it. ``stop_after_s``: end the run early, after the update that is training
    this many seconds into the schedule (``asyncvla soak``). ``on_health``: the env workers'
    heartbeat and step latency every few seconds (``Coordinator.health``; the training monitor).
    """
    started = init_ray(cfg.runtime.address)
    runtime = None

    def rows(batch: list[dict[str, Any]]) -> None:
        for row in batch:
            row["env_steps_per_s"] = row["env_steps"] / max(row["wall_s"], 1e-9)
            row["decisions_per_s"] = row["decisions"] / max(row["wall_s"], 1e-9)
            if on_row is not None:
                on_row(row)
            row.pop("_weights", None)
            if run is not None:
                run.log(row)
            state.update(update=row["update"], env_steps=row["env_steps"], wall_s=row["wall_s"])

    try:
        info = {"address": ray.get_runtime_context().gcs_address, "joined": cfg.runtime.address is not None}
        t0 = time.perf_counter()
        runtime = Runtime(cfg, policy, run.path if run is not None else None, state, optimizer_dir)
        t_ready = time.perf_counter()
        final = runtime.run(cfg.train.updates - state["update"], rows, stop_after_s, on_health)
        t_end = time.perf_counter()
        load_weights(policy, final)
        result = RunResult(
            final,
            runtime.accounting(),
            runtime.env_stats,
            runtime.rollout_stats(),
            info,
            start_s=t_ready - t0,
            run_s=t_end - t_ready,
        )
    finally:
        if runtime is not None:
            runtime.shutdown()
        if started:
            ray.shutdown()
    return result
