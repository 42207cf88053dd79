"""Deterministic evaluation on held-out init states."""

from __future__ import annotations

from typing import Any

import numpy as np

from asyncvla.envs import make_env
from asyncvla.envs.episodes import run_episodes
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
    env = make_env(env_name, num_envs=min(num_envs, episodes), **env_kwargs)
    was_training = policy.training
    policy.eval()
    try:
        eps = run_episodes(
            env, episodes, seed_offset, lambda o: policy.act(o, deterministic=deterministic).actions
        )
    finally:
        env.close()
        policy.train(was_training)
    vals = np.array([(e.success, e.ret, e.length, e.cost) for e in eps], dtype=np.float64)
    return {
        "success_rate": float(vals[:, 0].mean()),
        "episode_return": float(vals[:, 1].mean()),
        "episode_length": float(vals[:, 2].mean()),
        "episode_cost": float(vals[:, 3].mean()),
        "episodes": float(len(vals)),
    }
