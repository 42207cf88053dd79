"""Deterministic evaluation on held-out init states."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from asyncvla.config import ShieldConfig
from asyncvla.envs import make_env
from asyncvla.envs.episodes import Episode, run_episodes
from asyncvla.policies import Policy
from asyncvla.safety.shield import ShieldedEnv, make_shield
from asyncvla.stats import wilson_interval


def policy_episodes(
    policy: Policy,
    env_name: str,
    env_kwargs: dict[str, Any],
    episodes: int,
    num_envs: int,
    first: int,
    deterministic: bool = True,
    shield: ShieldConfig | None = None,
    with_facts: bool = False,
) -> tuple[list[Episode], list[dict[str, Any]]]:
    """Episodes ``first .. first + episodes - 1`` of ``policy`` over ``num_envs`` slots (the run's
    action shield applied), and with ``with_facts`` the env's scalar ground truth of each final
    state (``describe``: family, target, counterfactual goal, ...); else empty dicts."""
    env = base = make_env(env_name, num_envs=min(num_envs, episodes), **env_kwargs)
    if shield is not None:
        env = ShieldedEnv(base, make_shield(shield, base))
    facts: dict[int, dict[str, Any]] = {}
    describe = getattr(base, "describe", None) if with_facts else None

    def on_end(slot: int, episode: int) -> None:
        if describe is not None:
            facts[episode] = {
                k: v for k, v in describe(slot).items() if isinstance(v, (str, bool, int, float))
            }

    try:
        with torch.no_grad():
            eps = run_episodes(
                env,
                episodes,
                first,
                lambda o: policy.act(o, deterministic=deterministic).actions,
                on_end=on_end,
            )
    finally:
        env.close()
    return eps, [facts.get(j, {}) for j in range(len(eps))]


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
    was_training = policy.training
    policy.eval()
    try:
        eps, _ = policy_episodes(
            policy, env_name, env_kwargs, episodes, num_envs, seed_offset, deterministic, shield
        )
    finally:
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
