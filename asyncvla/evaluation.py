"""Deterministic evaluation on held-out init states."""

from __future__ import annotations

from typing import Any

import numpy as np

from asyncvla.envs import make_env
from asyncvla.policies import Policy


def evaluate_policy(
    policy: Policy,
    env_name: str,
    env_kwargs: dict[str, Any],
    episodes: int = 100,
    num_envs: int = 50,
    seed_offset: int = 1_000_000,
    deterministic: bool = True,
) -> dict[str, float]:
    """Run ``episodes`` episodes; episode j starts from init state (and seed) ``seed_offset + j``.

    The result depends only on the weights and these arguments, so two evaluations of the same
    checkpoint agree exactly (with ``deterministic=True``).
    """
    n = min(num_envs, episodes)
    env = make_env(env_name, num_envs=n, **env_kwargs)
    ep_of_slot = np.arange(n)
    starts = (seed_offset + ep_of_slot).tolist()
    obs, _ = env.reset(seed=starts, options={"init_state": starts})
    next_ep = n
    active = np.ones(n, dtype=bool)
    ret = np.zeros(n)
    length = np.zeros(n, dtype=np.int64)
    results: dict[int, tuple[float, float, int, float]] = {}
    cost = np.zeros(n)
    was_training = policy.training
    policy.eval()
    try:
        while active.any():
            out = policy.act(obs, deterministic=deterministic)
            obs, r, term, trunc, info = env.step(out.actions)
            ret += np.where(active, r, 0.0)
            cost += np.where(active, info["cost"], 0.0)
            length += np.asarray(info["steps"])
            done = (term | trunc) & active
            for i in np.flatnonzero(done):
                results[int(ep_of_slot[i])] = (float(info["success"][i]), ret[i], int(length[i]), cost[i])
            if done.any():
                idx = np.flatnonzero(done)
                active[idx] = False
                fresh = idx[: max(0, episodes - next_ep)].tolist()
                if fresh:
                    eps = list(range(next_ep, next_ep + len(fresh)))
                    next_ep += len(fresh)
                    starts = [seed_offset + e for e in eps]
                    obs, _ = env.reset(seed=starts, options={"init_state": starts, "env_indices": fresh})
                    for i, e in zip(fresh, eps, strict=True):
                        ep_of_slot[i] = e
                        active[i] = True
                        ret[i] = length[i] = cost[i] = 0
    finally:
        env.close()
        policy.train(was_training)
    vals = np.array([results[e] for e in sorted(results)], dtype=np.float64)
    return {
        "success_rate": float(vals[:, 0].mean()),
        "episode_return": float(vals[:, 1].mean()),
        "episode_length": float(vals[:, 2].mean()),
        "episode_cost": float(vals[:, 3].mean()),
        "episodes": float(len(vals)),
    }
