"""Learning results across independent seeds: mean, spread and a bootstrap interval.

A run's final success rate p_s is itself an estimate from n_s held-out episodes, so the interval
of the mean over seeds has two sources of noise, both resampled (a two-level bootstrap): draw S
seeds with replacement, then for each drawn seed a success rate Binomial(n_s, p_s) / n_s (the
same as resampling its episodes); the 2.5% and 97.5% quantiles of the mean over draws give the
95% interval. The sync/async gap is bootstrapped paired: the same drawn seeds for both modes.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def bootstrap_mean(
    rates: np.ndarray, episodes: np.ndarray, draws: int = 20_000, seed: int = 0
) -> tuple[float, float]:
    """95% interval of the mean of ``rates`` [S] (each measured on ``episodes`` [S])."""
    return bootstrap_paired({"x": rates}, {"x": episodes}, lambda m: m["x"], draws, seed)


def bootstrap_paired(
    rates: dict[str, np.ndarray],
    episodes: dict[str, np.ndarray],
    statistic: Any,
    draws: int = 20_000,
    seed: int = 0,
) -> tuple[float, float]:
    """95% interval of ``statistic({name: mean rate over the drawn seeds})``; every name is
    resampled over the same seeds (paired) and each name's rates within its own episodes."""
    rng = np.random.default_rng(seed)
    s = len(next(iter(rates.values())))
    idx = rng.integers(0, s, size=(draws, s))
    means = {}
    for name, p in rates.items():
        p, n = np.asarray(p, np.float64), np.asarray(episodes[name], np.int64)
        means[name] = (rng.binomial(n[idx], p[idx]) / n[idx]).mean(axis=1)
    values = np.asarray(statistic(means))
    return float(np.quantile(values, 0.025)), float(np.quantile(values, 0.975))


def seed_statistics(
    per_seed: list[dict[str, Any]], modes: tuple[str, ...] = ("sync", "async")
) -> dict[str, Any]:
    """``per_seed``: one ``compare`` result per seed (``seed``, and per mode ``final_success_rate``,
    ``sft_success_rate``, ``eval_episodes``). Returns per-mode mean / min / max / std and interval,
    and the async - sync gap with its paired interval."""
    if not per_seed:
        raise ValueError("no seeds")
    out: dict[str, Any] = {"seeds": [r["seed"] for r in per_seed]}
    rates = {m: np.array([r[m]["final_success_rate"] for r in per_seed]) for m in modes}
    eps = {m: np.array([r[m]["eval_episodes"] for r in per_seed]) for m in modes}
    for m in modes:
        p = rates[m]
        out[m] = {
            "final_success": p.tolist(),
            "sft_success": [r[m]["sft_success_rate"] for r in per_seed],
            "mean": float(p.mean()),
            "min": float(p.min()),
            "max": float(p.max()),
            "std": float(p.std(ddof=1)) if len(p) > 1 else 0.0,
            "ci95": list(bootstrap_mean(p, eps[m])),
        }
    if "sync" in modes and "async" in modes:
        gap = rates["async"] - rates["sync"]
        out["gap"] = {
            "per_seed": gap.tolist(),
            "mean": float(gap.mean()),
            "ci95": list(bootstrap_paired(rates, eps, lambda mm: mm["async"] - mm["sync"])),
        }
    return out
