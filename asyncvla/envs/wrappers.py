"""Simulator latency emulation, so a fast built-in env can stand in for a slow physics simulator.

An env calls ``LatencyEmulator.wait`` once per ``step`` with the number of envs that executed each
action of the chunk; the emulator sleeps as long as a real simulator would have taken.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

LATENCY_KINDS = ("none", "constant", "lognormal", "heavy_tail")
LATENCY_SCOPES = ("env", "batch")


@dataclass(frozen=True)
class LatencyConfig:
    """How long one simulated action step takes."""

    kind: str = "none"
    """``constant``: always ``mean_ms``; ``lognormal``: mean ``mean_ms``, log-space std ``sigma``;
    ``heavy_tail``: the lognormal, multiplied by ``tail_mult`` with probability ``tail_prob``."""
    mean_ms: float = 0.0
    sigma: float = 0.5
    tail_prob: float = 0.01
    tail_mult: float = 10.0
    scope: str = "env"
    """``env``: envs are simulated one after another (like LIBERO), so a step of m active envs costs
    m samples; ``batch``: one sample per step for the whole batch (a GPU-vectorized simulator)."""

    @classmethod
    def from_dict(cls, config: dict[str, Any] | None) -> LatencyConfig:
        """Validate a user ``latency`` dict; unknown keys and bad values raise ValueError."""
        if config is None:
            return cls()
        if not isinstance(config, dict):
            raise ValueError(f"latency must be a dict or None, got {type(config).__name__}")
        allowed = [f.name for f in fields(cls)]
        for key in config:
            if key not in allowed:
                raise ValueError(f"latency has unknown key {key!r}; allowed: {', '.join(allowed)}")
        out = cls(**config)
        if out.kind not in LATENCY_KINDS:
            raise ValueError(f"latency['kind'] must be one of {', '.join(LATENCY_KINDS)}; got {out.kind!r}")
        if out.scope not in LATENCY_SCOPES:
            raise ValueError(
                f"latency['scope'] must be one of {', '.join(LATENCY_SCOPES)}; got {out.scope!r}"
            )
        limits = {
            "mean_ms": (0.0, 1e5),
            "sigma": (0.0, 5.0),
            "tail_prob": (0.0, 1.0),
            "tail_mult": (1.0, 1e4),
        }
        for key, (lo, hi) in limits.items():
            value = getattr(out, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi:
                raise ValueError(f"latency[{key!r}] must be a number in [{lo}, {hi}], got {value!r}")
        return out


class LatencyEmulator:
    """Samples and sleeps per-action-step simulator latency, from its own RNG (reproducible delays).
    ``sleep = False`` (class-wide) draws the delays without sleeping: ``asyncvla replay`` re-executes
    a run's computation, not its timing."""

    sleep = True

    def __init__(self, config: dict[str, Any] | LatencyConfig | None, seed: int = 0) -> None:
        self.config = config if isinstance(config, LatencyConfig) else LatencyConfig.from_dict(config)
        self._rng = np.random.default_rng([seed, 0x1A7E])
        self.total_s = 0.0
        """Seconds slept so far (for reporting how much of a run was emulated latency)."""

    @property
    def enabled(self) -> bool:
        return self.config.kind != "none" and self.config.mean_ms > 0

    def sample_ms(self, count: int) -> np.ndarray:
        """``count`` independent per-step latencies in milliseconds."""
        cfg = self.config
        if not self.enabled or count == 0:
            return np.zeros(count)
        if cfg.kind == "constant":
            return np.full(count, float(cfg.mean_ms))
        # mu chosen so that the lognormal's mean is mean_ms.
        mu = math.log(cfg.mean_ms) - 0.5 * cfg.sigma**2
        ms = self._rng.lognormal(mu, cfg.sigma, count)
        if cfg.kind == "heavy_tail":
            ms = np.where(self._rng.random(count) < cfg.tail_prob, ms * cfg.tail_mult, ms)
        return ms

    def delay_s(self, active_per_step: Sequence[int]) -> float:
        """Sampled latency in seconds of one chunk step; ``active_per_step[j]``: envs executing action j."""
        if not self.enabled:
            return 0.0
        if self.config.scope == "env":
            count = int(sum(active_per_step))
        else:
            count = sum(1 for m in active_per_step if m > 0)
        return float(self.sample_ms(count).sum()) / 1000.0

    def wait(self, active_per_step: Sequence[int]) -> float:
        """Sleep for ``delay_s(active_per_step)`` and return the seconds slept."""
        seconds = self.delay_s(active_per_step)
        if seconds > 0 and self.sleep:
            time.sleep(seconds)
            self.total_s += seconds
        return seconds
