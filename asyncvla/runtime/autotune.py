"""Dynamic-batching auto-tune: ``max_batch_samples`` (B_max) and ``batch_timeout_ms`` (T_max) from
measured latencies instead of a manual sweep.

Inputs (measured, ``measure``): the inference cost of a batch of B samples,
``c(B) = max(floor, a + b B)`` (``costs.CostModel``, fitted by ``costs.fit_cost`` to timed
``policy.act`` calls), and the env time of one decision of one manager ``t_step`` (timed
``env.step`` of a chunk).

Model of one rollout worker (``choose``). M managers route their requests of n samples to it; an
env worker steps its k managers one after another. A manager's cycle is its step plus its
request's latency L, unless its env worker is the bottleneck (it steps k managers per cycle):
``cycle = max(k t_step, t_step + L)``, so the closed loop offers

    lambda = M n / max(k t_step, t_step + L(B))                   samples/s.

A batch closing at B samples (B a multiple of n) costs c(B) and keeps the device busy a fraction
``rho = lambda c(B) / B``; it is stable iff rho < 1, i.e. (with c = a + b B)

    B > B_min = lambda a / (1 - lambda b)                                               (1)

The request latency is the batch-fill wait (the first of the B/n requests waits (B - n)/lambda,
the last none: (B - n) / (2 lambda) on average), the M/D/1 queueing of a batch behind the one in
service (rho c(B) / (2 (1 - rho))) and the service c(B):

    L(B) = (B - n) / (2 lambda) + rho c(B) / (2 (1 - rho)) + c(B)                          (2)

(2) is solved for lambda by fixed-point iteration; the predicted throughput is
``X(B) = min(lambda(B), B / c(B))`` (an unstable B is capped by the device's capacity B/c(B)).
B_max = argmax X(B) over B in {n, 2n, ..., M n}, ties within 1% to the smaller L (less staleness
and wait); T_max = (B_max - n) / lambda: the time the batch takes to fill at the predicted rate,
so a batch that the closed loop cannot fill (fewer managers waiting) leaves on time instead of
idling the device.

``auto_tune`` is what ``runtime.auto_tune: true`` runs at the start of ``asyncvla train``;
``asyncvla bench --tune`` runs the same measurement and choice on a profile
(``asyncvla.bench.tune``).
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from asyncvla.builder import build_policy, probe_env
from asyncvla.runtime.costs import CostModel, fit_cost


def predict(
    B: int,
    n: int,
    managers: int,
    t_step: float,
    k: int,
    infer: CostModel | Mapping[str, float],
    iters: int = 200,
) -> dict[str, float]:
    """Formula (2) at batch limit B: arrival rate, latency, utilization, throughput."""
    c = CostModel.from_dict(infer, "infer")(B)
    lam = managers * n / max(k * t_step, t_step + c)
    rho = lat = 0.0
    for _ in range(iters):
        rho = min(lam * c / B, 0.999)
        lat = (B - n) / (2 * lam) + rho * c / (2 * (1 - rho)) + c
        new = managers * n / max(k * t_step, t_step + lat)
        if abs(new - lam) < 1e-9 * lam:
            break
        lam = 0.5 * (lam + new)
    return {
        "B": B,
        "arrival_samples_per_s": lam,
        "latency_s": lat,
        "rho": lam * c / B,
        "throughput_samples_per_s": min(lam, B / c if c > 0 else math.inf),
    }


def choose(
    n: int, managers: int, t_step: float, k: int, infer: CostModel | Mapping[str, float]
) -> dict[str, Any]:
    """B_max and T_max for one rollout worker with ``managers`` routed managers of ``n`` envs whose
    env workers step ``k`` managers each."""
    infer = CostModel.from_dict(infer, "infer")
    cands = [predict(j * n, n, managers, t_step, k, infer) for j in range(1, managers + 1)]
    best_x = max(c["throughput_samples_per_s"] for c in cands)
    good = [c for c in cands if c["throughput_samples_per_s"] >= 0.99 * best_x]
    pick = min(good, key=lambda c: c["latency_s"])
    b = int(pick["B"])
    t_max = (b - n) / pick["arrival_samples_per_s"]
    return {
        "max_batch_samples": b,
        "batch_timeout_ms": round(1000.0 * t_max, 3),
        "predicted": pick,
        "candidates": cands,
    }


def measure(cfg: Any, policy: Any, sizes: list[int] | None = None, repeats: int = 3) -> dict[str, Any]:
    """Time ``policy.act`` at a few batch sizes (fit c(B)) and ``env.step`` of one manager's chunk
    (t_step) on an env of ``env.num_envs`` envs built here."""
    import torch

    from asyncvla.envs import make_env
    from asyncvla.runtime.types import concat_obs, take_obs

    n = cfg.env.num_envs
    total = n * cfg.env.num_managers
    sizes = sizes or sorted({n, *(n * k for k in (2, 4, 8) if n * k <= total), total})
    env = make_env(cfg.env.name, num_envs=n, **cfg.env.kwargs)
    try:
        obs, _ = env.reset(seed=list(range(n)))
        points: dict[int, float] = {}
        was = policy.training
        policy.eval()
        with torch.no_grad():
            for b in sizes:
                batch = take_obs(concat_obs([obs] * math.ceil(b / n)), np.arange(b))
                ts = []
                for _ in range(repeats):
                    t0 = time.perf_counter()
                    policy.act(batch)
                    ts.append(time.perf_counter() - t0)
                points[b] = statistics.median(ts)
            actions = np.asarray(policy.act(obs).actions)
        policy.train(was)
        steps = []
        for _ in range(repeats + 2):
            t0 = time.perf_counter()
            env.step(actions)
            steps.append(time.perf_counter() - t0)
    finally:
        env.close()
    return {
        "infer_points_s": points,
        "infer": fit_cost(points, min_x=min(sizes)).to_dict(),
        "t_step_s": statistics.mean(steps),
    }


def tune_config(cfg: Any, measured: dict[str, Any]) -> dict[str, Any]:
    """The tuned ``runtime.max_batch_samples`` / ``runtime.batch_timeout_ms`` of a run config."""
    rt = cfg.runtime
    managers = math.ceil(cfg.env.num_managers / rt.num_rollout_workers)
    per_worker = math.ceil(cfg.env.num_managers / rt.num_env_workers)
    out = choose(cfg.env.num_envs, managers, measured["t_step_s"], per_worker, measured["infer"])
    out["inputs"] = {
        "n": cfg.env.num_envs,
        "managers_per_rollout_worker": managers,
        "managers_per_env_worker": per_worker,
        **{k: v for k, v in measured.items()},
    }
    return out


def auto_tune(cfg: Any, policy: Any = None) -> tuple[Any, dict[str, Any]]:
    """Measure and choose; returns the config with the tuned ``runtime.max_batch_samples`` and
    ``runtime.batch_timeout_ms`` and what was measured and chosen (``runtime.auto_tune: true``).

    The timings are taken in the calling process (its torch threads, not a rollout worker's)."""
    if policy is None:
        probe = probe_env(cfg)
        policy = build_policy(cfg, probe)
        probe.close()
    measured = measure(cfg, policy)
    choice = tune_config(cfg, measured)
    rt = cfg.runtime.model_copy(
        update={
            "max_batch_samples": int(choice["max_batch_samples"]),
            "batch_timeout_ms": float(choice["batch_timeout_ms"]),
        }
    )
    return cfg.model_copy(update={"runtime": rt}), choice
