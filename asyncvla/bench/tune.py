"""``asyncvla bench --tune``: the dynamic-batching auto-tune (``asyncvla.runtime.autotune``) on
one mode of a profile, with the discrete-event simulator's prediction of the mode with its default
and with its tuned ``max_batch_samples`` / ``batch_timeout_ms``."""

from __future__ import annotations

import tempfile
from dataclasses import replace
from typing import Any

from asyncvla.bench.profiles import Profile, RealProfile, mode_config
from asyncvla.bench.simulate import simulate, spec_from_config
from asyncvla.builder import build_policy, probe_env
from asyncvla.runtime.autotune import measure, tune_config

TUNED_SUFFIX = "-tuned"


def tune_profile(
    profile: Profile | RealProfile, mode: str = "streamer", time_scale: float | None = None
) -> dict[str, Any]:
    """``bench --tune``: measure one mode's policy and env here, choose B_max / T_max, and predict
    (discrete-event simulation) the mode with its default and with the tuned values."""
    with tempfile.TemporaryDirectory() as lock_dir:
        cfg = mode_config(profile, mode, 1, "tune", lock_dir, hold_log=False, time_scale=time_scale)
        probe = probe_env(cfg)
        policy = build_policy(cfg, probe)
        probe.close()
        policy.on_placed("rollout")
        choice = tune_config(cfg, measure(cfg, policy))
    real = isinstance(profile, RealProfile)
    spec = None if real else spec_from_config(cfg)
    tuned = (
        None
        if real
        else replace(
            spec,
            max_batch_samples=choice["max_batch_samples"],
            batch_timeout_s=choice["batch_timeout_ms"] / 1000.0,
        )
    )
    return {
        "mode": mode,
        "tuned_mode": mode + TUNED_SUFFIX,
        "default": {
            "max_batch_samples": cfg.runtime.max_batch_samples,
            "batch_timeout_ms": cfg.runtime.batch_timeout_ms,
        },
        "tuned": {k: choice[k] for k in ("max_batch_samples", "batch_timeout_ms")},
        "formula_prediction": choice["predicted"],
        "inputs": choice["inputs"],
        "simulated_env_steps_per_s": None
        if real
        else {
            "default": simulate(spec, updates=12, warmup=2)["env_steps_per_s"],
            "tuned": simulate(tuned, updates=12, warmup=2)["env_steps_per_s"],
        },
    }
