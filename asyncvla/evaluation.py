"""Deterministic evaluation on held-out init states."""

from __future__ import annotations

from typing import Any

import numpy as np

from asyncvla.config import ShieldConfig
from asyncvla.envs import make_env
from asyncvla.envs.episodes import run_episodes
from asyncvla.policies import Policy
from asyncvla.safety.shield import ShieldedEnv, make_shield
from asyncvla.stats import wilson_interval


def evaluate_policy(
    policy: Policy,
    env_name: str,
    env_kwargs: dict[str, Any],
    episodes: int = 100,
    num_envs: int = 50,
    seed_offset: int = 1_000_000,
    deterministic: bool = True,
    shield: ShieldConfig | None = None,
) -> dict[str, float]:
    """Run ``episodes`` episodes; episode j starts from init state (and seed) ``seed_offset + j``.

    The result depends only on the weights and these arguments, so two evaluations of the same
    checkpoint agree exactly (with ``deterministic=True``). ``shield``: the action shield the
    policy trained under applies here too (``shield_interventions``: changed chunks per episode).
    """
    env = make_env(env_name, num_envs=min(num_envs, episodes), **env_kwargs)
    if shield is not None:
        env = ShieldedEnv(env, make_shield(shield, env))
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
    low, high = wilson_interval(int(vals[:, 0].sum()), len(vals))
    return {
        "success_rate": float(vals[:, 0].mean()),
        "success_ci95_low": low,
        "success_ci95_high": high,
        "episode_return": float(vals[:, 1].mean()),
        "episode_length": float(vals[:, 2].mean()),
        "episode_cost": float(vals[:, 3].mean()),
        "episodes": float(len(vals)),
    }
