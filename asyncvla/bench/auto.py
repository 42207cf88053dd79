"""The benchmark's ``auto`` row: the mode (placement and async switches) the discrete-event
simulator predicts fastest for a profile, chosen before anything runs.

Candidates: every ablation mode (``profiles.MODES``) and the async schedules on the colocated
placement (and on ``hybrid`` where the profile has one). Each is simulated with the profile's own
stage costs at the benchmark's time scale (``simulate``: the runtime's gate and batcher); the
fastest wins, and a candidate within ``TIE`` of the best that comes earlier in the list (sync
colocated first) is preferred, so ``auto`` picks sync colocated unless something is predicted
clearly faster.

With ``batching`` (the bench's ``auto`` row) every candidate with dynamic batching is also
simulated with each batch limit a rollout worker can fill, B_max = j·n for j = 1 .. its managers
(n envs each), served at once (T_max = 0); a limit that beats the configured batching by more
than ``TIE`` becomes part of the choice. A training run's ``mode: auto`` leaves batching to its
config (or ``runtime.auto_tune``), since its envs are not the profile's.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from asyncvla.bench.profiles import MODES, Profile, mode_config
from asyncvla.bench.simulate import simulate, spec_from_config

TIE = 0.02
"""Relative margin under which an earlier (simpler) candidate is kept."""

ASYNC = {"mode": "async", "async.env": True, "async.rollout": True}


def candidates(profile: Profile) -> dict[str, dict[str, Any]]:
    out = dict(MODES)
    for placement in ("colocated", "hybrid"):
        if placement in profile.placements:
            out[f"rollout-async-{placement}"] = {
                **ASYNC,
                "async.streamer": False,
                "runtime.placement": placement,
            }
            out[f"streamer-{placement}"] = {**ASYNC, "async.streamer": True, "runtime.placement": placement}
    return out


def choose(
    profile: Profile,
    time_scale: float,
    updates: int = 8,
    warmup: int = 2,
    allowed: Callable[[dict[str, Any]], bool] | None = None,
    batching: bool = False,
) -> dict[str, Any]:
    """{"chosen": name, "overrides": its config overrides, "predicted": {name: env steps/s},
    "batching": {name: the batch limit chosen for it}}; ``allowed``: only the candidates whose
    overrides it accepts; ``batching``: also choose each candidate's batch limit (module doc)."""
    cands = {n: o for n, o in candidates(profile).items() if allowed is None or allowed(o)}
    if not cands:
        raise ValueError("no candidate schedule fits the fixed part of the config")
    saved = dict(profile.modes)
    predicted: dict[str, float] = {}
    limits: dict[str, dict[str, Any]] = {}

    def run(name: str, over: dict[str, Any]) -> tuple[float, Any]:
        profile.modes[name] = over
        cfg = mode_config(profile, name, updates=updates, time_scale=time_scale)
        return float(simulate(spec_from_config(cfg), updates=updates, warmup=warmup)["env_steps_per_s"]), cfg

    try:
        for name, over in cands.items():
            predicted[name], cfg = run(name, over)
            if not (batching and over.get("async.rollout")):
                continue
            n = cfg.env.num_envs
            managers = math.ceil(cfg.env.num_managers / cfg.runtime.num_rollout_workers)
            for j in range(1, managers + 1):
                limit = {"runtime.max_batch_samples": j * n, "runtime.batch_timeout_ms": 0.0}
                x, _ = run(name, {**over, **limit})
                if x > (1.0 + TIE) * predicted[name]:
                    predicted[name], limits[name] = x, limit
            cands[name] = {**over, **limits.get(name, {})}
    finally:
        profile.modes.clear()
        profile.modes.update(saved)
    best = max(predicted.values())
    chosen = next(n for n in cands if predicted[n] >= (1.0 - TIE) * best)
    return {"chosen": chosen, "overrides": cands[chosen], "predicted": predicted, "batching": limits}
