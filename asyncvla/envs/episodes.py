"""Episodes in a vectorized env: per-slot bookkeeping and partial resets, shared by every loop
that runs episodes (the env managers of training, evaluation, demo collection).

``EpisodeTracker`` accumulates each slot's return, length and cost and reports the episodes that
end. ``run_episodes`` runs a fixed list of episodes (episode j from init state and seed
``first + j``) over the env's slots: a slot whose episode ends starts the next one at once
(``reset(..., options={"env_indices": ...})``) until none is left.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from asyncvla.envs.base import ObsBatch, VectorEnv


@dataclass(frozen=True)
class Episode:
    success: float
    ret: float
    length: int
    """Env steps (each action of a chunk counted once)."""
    cost: float


class EpisodeTracker:
    def __init__(self, num_envs: int) -> None:
        self.ret = np.zeros(num_envs, dtype=np.float64)
        self.length = np.zeros(num_envs, dtype=np.int64)
        self.cost = np.zeros(num_envs, dtype=np.float64)

    def step(
        self,
        reward: np.ndarray,
        cost: np.ndarray,
        steps: np.ndarray,
        done: np.ndarray,
        success: np.ndarray,
        valid: np.ndarray,
    ) -> list[tuple[int, Episode]]:
        """Account one step of every slot (rewards and costs of ``valid`` slots only); returns
        (slot, episode) for the slots with ``done`` set, whose counters restart at 0."""
        self.ret += np.where(valid, reward, 0.0)
        self.cost += np.where(valid, cost, 0.0)
        self.length += np.asarray(steps)
        ended = [
            (int(i), Episode(float(success[i]), float(self.ret[i]), int(self.length[i]), float(self.cost[i])))
            for i in np.flatnonzero(done)
        ]
        self.drop(done)
        return ended

    def drop(self, slots: np.ndarray) -> None:
        """Restart the counters of ``slots`` (bool [n]) without reporting an episode."""
        self.ret[slots] = 0.0
        self.length[slots] = 0
        self.cost[slots] = 0.0


Act = Callable[[ObsBatch], np.ndarray]
"""Observations [n, ...] -> action chunks [n, K, A]."""
OnDecision = Callable[[ObsBatch, np.ndarray, np.ndarray, np.ndarray], None]
"""(observations, the slots whose episode is running, those episodes' indices, their action chunks)."""


OnEnd = Callable[[int, int], None]
"""(slot, episode index) of an episode that just ended, before its slot starts another."""


def run_episodes(
    env: VectorEnv,
    episodes: int,
    first: int,
    act: Act,
    on_decision: OnDecision | None = None,
    on_end: OnEnd | None = None,
) -> list[Episode]:
    """Run ``episodes`` episodes (episode j from init state and seed ``first + j``) over the env's
    slots (at most ``episodes`` of them); returns them in episode order. ``on_decision`` sees
    every decision of a running episode before it is stepped; ``on_end`` each ended episode while
    its slot still holds it (e.g. to read the env's ground truth of the final state)."""
    n = env.num_envs
    if not 1 <= n <= episodes:
        raise ValueError(f"an env of {n} slots cannot run {episodes} episodes: build it with 1..{episodes}")
    slot_ep = np.arange(n)
    starts = (first + slot_ep).tolist()
    obs, _ = env.reset(seed=starts, options={"init_state": starts})
    active = np.ones(n, dtype=bool)
    next_ep = n
    tracker = EpisodeTracker(n)
    results: dict[int, Episode] = {}
    while active.any():
        actions = act(obs)
        if on_decision is not None:
            idx = np.flatnonzero(active)
            on_decision(obs, idx, slot_ep[idx], actions[idx])
        obs, reward, term, trunc, info = env.step(actions)
        done = (term | trunc) & active
        for i, ep in tracker.step(reward, info["cost"], info["steps"], done, info["success"], active):
            results[int(slot_ep[i])] = ep
            if on_end is not None:
                on_end(i, int(slot_ep[i]))
        if done.any():
            idx = np.flatnonzero(done)
            active[idx] = False
            fresh = idx[: max(0, episodes - next_ep)].tolist()
            if fresh:
                eps = list(range(next_ep, next_ep + len(fresh)))
                next_ep += len(fresh)
                starts = [first + e for e in eps]
                obs, _ = env.reset(seed=starts, options={"init_state": starts, "env_indices": fresh})
                slot_ep[fresh] = eps
                active[fresh] = True
    return [results[e] for e in sorted(results)]
