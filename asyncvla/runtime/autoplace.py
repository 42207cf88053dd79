"""``mode: auto`` / ``runtime.placement: auto``: resolved once, at start, into a concrete config.

The candidates are the benchmark's (``asyncvla.bench.auto``: the ablation modes and the async
schedules on the colocated and hybrid placements), restricted to what the config fixes (a given
``mode`` keeps its schedule and switches, a given placement its placement); each is simulated with
the stage costs of ``runtime.auto_profile`` and the fastest is applied. The run directory keeps the
resolved config (``config.yaml``) and the choice with every candidate's prediction (``auto.json``).
"""

from __future__ import annotations

from typing import Any

from asyncvla.config import Config, ConfigError, set_dotted

SWITCHES = ("env", "rollout", "streamer")


def _fits(cfg: Config, over: dict[str, Any]) -> bool:
    if cfg.mode != "auto":
        if over["mode"] != cfg.mode:
            return False
        if cfg.mode == "async" and any(
            f"async.{k}" in over and over[f"async.{k}"] != getattr(cfg.async_, k) for k in SWITCHES
        ):
            return False
    return (
        cfg.runtime.placement == "auto" or over.get("runtime.placement", "colocated") == cfg.runtime.placement
    )


def resolve(cfg: Config) -> tuple[Config, dict[str, Any] | None]:
    """The config with ``auto`` replaced by the chosen schedule and placement, and the choice
    (None when nothing is ``auto``)."""
    if cfg.mode != "auto" and cfg.runtime.placement != "auto":
        return cfg, None
    from asyncvla.bench.auto import choose
    from asyncvla.bench.profiles import RealProfile, load_profile, resolve_profile

    try:
        profile = load_profile(resolve_profile(cfg.runtime.auto_profile))
    except (FileNotFoundError, ConfigError) as e:
        raise ConfigError(f"runtime.auto_profile: {e}") from None
    if isinstance(profile, RealProfile):
        raise ConfigError(
            f"runtime.auto_profile: {cfg.runtime.auto_profile} is a real workload without stage costs; "
            "give an emulated profile"
        )
    try:
        report = choose(profile, profile.time_scale, allowed=lambda over: _fits(cfg, over))
    except ValueError as e:
        raise ConfigError(f"mode/placement auto: {e}") from None
    tree = cfg.model_dump(by_alias=True)
    for key, value in report["overrides"].items():
        set_dotted(tree, key, value)
    if tree["runtime"]["placement"] == "auto":
        tree["runtime"]["placement"] = "colocated"
    resolved = Config.model_validate(tree)
    return resolved, {**report, "profile": cfg.runtime.auto_profile}
