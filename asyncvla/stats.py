"""Intervals for evaluation results: Wilson for a rate, percentile bootstrap for differences.

Every evaluation suite reports a rate with ``wilson_interval`` and a difference between two cells
of matched episodes (the same init states) with ``paired_bootstrap``: resampling episodes, not
cells, keeps the pairing, so the interval is as narrow as the episodes' correlation allows.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

BOOTSTRAP_SAMPLES = 2000


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for a success rate p = k / n (95% for z = 1.96)::

        centre = (p + z^2 / 2n) / (1 + z^2 / n)
        half   = z / (1 + z^2 / n) * sqrt(p (1 - p) / n + z^2 / 4n^2)

    Unlike p +- z sqrt(p (1 - p) / n) it stays inside [0, 1] and does not collapse at p = 0 or 1.
    """
    if n <= 0:
        raise ValueError(f"n must be positive, got {n}")
    if not 0 <= successes <= n:
        raise ValueError(f"successes must be in [0, {n}], got {successes}")
    p = successes / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z / denom * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return float(max(0.0, centre - half)), float(min(1.0, centre + half))


def percentile_interval(samples: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """The central ``level`` interval of bootstrap ``samples`` (percentile method)."""
    tail = 50.0 * (1.0 - level)
    lo, hi = np.percentile(np.asarray(samples, dtype=np.float64), [tail, 100.0 - tail])
    return float(lo), float(hi)


def paired_bootstrap(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    n_boot: int = BOOTSTRAP_SAMPLES,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, float]:
    """Mean difference mean(b - a) of paired per-episode values and its bootstrap interval.

    Episode i of ``a`` and of ``b`` started from the same init state. Each bootstrap sample draws n
    episode indices with replacement and takes mean(b[idx] - a[idx]); the interval is the central
    ``level`` percentile range of those means.
    """
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if x.ndim != 1 or x.shape != y.shape or len(x) == 0:
        raise ValueError(
            f"paired values must be two non-empty 1-D arrays of one length, got {x.shape}, {y.shape}"
        )
    d = y - x
    idx = np.random.default_rng(seed).integers(0, len(d), size=(n_boot, len(d)))
    lo, hi = percentile_interval(d[idx].mean(axis=1), level)
    return {"diff": float(d.mean()), "ci95_low": lo, "ci95_high": hi}


def grouped_bootstrap(
    groups: dict[str, np.ndarray],
    statistic: Callable[[dict[str, float]], float],
    n_boot: int = BOOTSTRAP_SAMPLES,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float, float]:
    """``statistic`` of per-group means (e.g. the worst group's success), and its interval from
    resampling episodes within each group independently. Returns (value, low, high)."""
    if not groups or any(len(v) == 0 for v in groups.values()):
        raise ValueError("grouped_bootstrap needs at least one group, each with episodes")
    rng = np.random.default_rng(seed)
    arrays = {k: np.asarray(v, dtype=np.float64) for k, v in groups.items()}
    value = statistic({k: float(v.mean()) for k, v in arrays.items()})
    means = {k: v[rng.integers(0, len(v), size=(n_boot, len(v)))].mean(axis=1) for k, v in arrays.items()}
    samples = np.array([statistic({k: float(m[i]) for k, m in means.items()}) for i in range(n_boot)])
    lo, hi = percentile_interval(samples, level)
    return float(value), lo, hi
