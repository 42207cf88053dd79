"""The benchmark's ``auto`` row: the mode (placement and async switches) the discrete-event
simulator predicts fastest for a profile, chosen before anything runs.

Candidates: every ablation mode (``profiles.MODES``) and the async schedules on the colocated
placement (and on ``hybrid`` where the profile has one). Each is simulated with the profile's own
stage costs at the benchmark's time scale (``simulate``: the runtime's gate and batcher); the
fastest wins, and a candidate within ``TIE`` of the best that comes earlier in the list (sync
colocated first) is preferred, so ``auto`` picks sync colocated unless something is predicted
clearly faster.
"""

from __future__ import annotations

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
) -> dict[str, Any]:
    """{"chosen": name, "overrides": its config overrides, "predicted": {name: env steps/s}};
    ``allowed``: only the candidates whose overrides it accepts."""
    cands = {n: o for n, o in candidates(profile).items() if allowed is None or allowed(o)}
    if not cands:
        raise ValueError("no candidate schedule fits the fixed part of the config")
    saved = dict(profile.modes)
    predicted: dict[str, float] = {}
    try:
        for name, over in cands.items():
            profile.modes[name] = over
            cfg = mode_config(profile, name, updates=updates, time_scale=time_scale)
            predicted[name] = float(
                simulate(spec_from_config(cfg), updates=updates, warmup=warmup)["env_steps_per_s"]
            )
    finally:
        profile.modes.clear()
        profile.modes.update(saved)
    best = max(predicted.values())
    chosen = next(n for n in cands if predicted[n] >= (1.0 - TIE) * best)
    return {"chosen": chosen, "overrides": cands[chosen], "predicted": predicted}
