"""EnvWorker: owns env managers; each manager is one vectorized env that steps on its own.

A manager is a small state machine, the same in every schedule:
``request()`` -> an ``ObsRequest`` for its envs; ``apply(reply)`` -> step the chunk, record the
decision, reset finished envs, and return the segments that completed. A segment of T decisions
closes when the *next* reply arrives, whose values are the bootstrap V(obs after the last step);
a sync schedule closes it explicitly with ``close(values)`` before training.

In episode mode (GRPO) all envs of a manager start together, in groups that share an init state,
and the segment closes when every env has finished its episode.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from asyncvla.envs import make_env
from asyncvla.envs.base import ObsBatch
from asyncvla.runtime.types import ActionReply, ObsRequest, Segment

TRAIN_INIT_STATES = 1_000_000
"""Training draws init states below this; evaluation and demos use disjoint ranges above it."""


def _stack_obs(steps: list[ObsBatch]) -> ObsBatch:
    out: dict[str, Any] = {}
    for k in steps[0]:
        out[k] = [s[k] for s in steps] if k == "instruction" else np.stack([s[k] for s in steps])
    return out


class EnvManager:
    def __init__(
        self,
        manager_id: int,
        env_name: str,
        num_envs: int,
        env_kwargs: dict[str, Any],
        rollout_steps: int,
        seed: int,
        episode_mode: bool = False,
        group_size: int = 1,
    ) -> None:
        self.manager_id = manager_id
        self.env = make_env(env_name, num_envs=num_envs, **env_kwargs)
        self.n = num_envs
        self.env_ids = np.arange(manager_id * num_envs, (manager_id + 1) * num_envs, dtype=np.int64)
        self.rollout_steps = rollout_steps
        self.episode_mode = episode_mode
        self.group_size = group_size
        self.rng = np.random.default_rng([seed, manager_id])
        self._request_id = 0
        self._segment_id = 0
        self._group_counter = 0
        self._pending: int | None = None
        self._ep_return = np.zeros(self.n, dtype=np.float64)
        self._ep_len = np.zeros(self.n, dtype=np.int64)
        self._done = np.zeros(self.n, dtype=bool)
        self._group_ids: np.ndarray | None = None
        self._clear_buffer()
        self.obs = self._reset_all()

    # -- resets -----------------------------------------------------------------------------------
    def _draw(self, k: int) -> tuple[list[int], list[int]]:
        inits = self.rng.integers(0, TRAIN_INIT_STATES, size=k).tolist()
        seeds = self.rng.integers(0, 2**31 - 1, size=k).tolist()
        return seeds, inits

    def _reset_all(self) -> ObsBatch:
        if self.episode_mode:
            g = self.n // self.group_size
            seeds, inits = self._draw(g)
            rep = np.repeat(np.arange(g), self.group_size)
            self._group_ids = (self._group_counter + rep).astype(np.int64) + self.manager_id * 10**9
            self._group_counter += g
            seeds, inits = [seeds[i] for i in rep], [inits[i] for i in rep]
        else:
            seeds, inits = self._draw(self.n)
        obs, _ = self.env.reset(seed=seeds, options={"init_state": inits})
        self._done[:] = False
        return obs

    def _clear_buffer(self) -> None:
        self._buf: dict[str, list[Any]] = {
            k: []
            for k in (
                "obs",
                "actions",
                "log_probs",
                "values",
                "rewards",
                "dones",
                "costs",
                "versions",
                "valid",
            )
        }
        self._buf_env_steps = 0
        self._episodes: dict[str, list[float]] = {"return": [], "length": [], "success": []}

    # -- the state machine ------------------------------------------------------------------------
    def request(self) -> ObsRequest:
        self._request_id += 1
        self._pending = self._request_id
        return ObsRequest(self.manager_id, self._request_id, self.env_ids, self.obs)

    def close(self, bootstrap_values: np.ndarray) -> Segment:
        """Close the open segment with V(current obs) as its bootstrap value."""
        b = self._buf
        seg = Segment(
            manager_id=self.manager_id,
            segment_id=self._segment_id,
            env_ids=self.env_ids,
            obs=_stack_obs(b["obs"]),
            actions=np.stack(b["actions"]),
            log_probs=np.stack(b["log_probs"]),
            values=np.stack(b["values"]),
            rewards=np.stack(b["rewards"]),
            dones=np.stack(b["dones"]),
            costs=np.stack(b["costs"]),
            versions=np.stack(b["versions"]),
            valid=np.stack(b["valid"]),
            env_steps=self._buf_env_steps,
            bootstrap_value=np.asarray(bootstrap_values, dtype=np.float32),
            group_ids=None if self._group_ids is None else self._group_ids.copy(),
            episodes=self._episodes,
        )
        self._segment_id += 1
        self._clear_buffer()
        return seg

    @property
    def segment_len(self) -> int:
        return len(self._buf["actions"])

    def apply(self, reply: ActionReply) -> list[Segment]:
        """Step the env with a reply to this manager's pending request; return finished segments."""
        if reply.manager_id != self.manager_id or reply.request_id != self._pending:
            raise RuntimeError(
                f"manager {self.manager_id} got reply {reply.manager_id}/{reply.request_id}, "
                f"expected request {self._pending}"
            )
        if not np.array_equal(reply.env_ids, self.env_ids):
            raise RuntimeError(f"manager {self.manager_id}: reply env ids do not match the request")
        self._pending = None
        out: list[Segment] = []
        if not self.episode_mode and self.segment_len >= self.rollout_steps:
            out.append(self.close(reply.values))

        valid = ~self._done
        obs, reward, term, trunc, info = self.env.step(reply.actions)
        steps = np.asarray(info["steps"])
        done = (term | trunc) & valid
        b = self._buf
        b["obs"].append(self.obs)
        b["actions"].append(np.asarray(reply.actions, dtype=np.float32))
        b["log_probs"].append(np.asarray(reply.log_probs, dtype=np.float32))
        b["values"].append(np.asarray(reply.values, dtype=np.float32))
        b["rewards"].append(np.where(valid, reward, 0.0).astype(np.float32))
        b["dones"].append(done | ~valid)
        b["costs"].append(np.where(valid, info["cost"], 0.0).astype(np.float32))
        b["versions"].append(np.full(self.n, reply.version, dtype=np.int64))
        b["valid"].append(valid)
        self._buf_env_steps += int(steps.sum())

        self._ep_return += np.where(valid, reward, 0.0)
        self._ep_len += steps
        success = np.asarray(info["success"])
        for i in np.flatnonzero(done):
            self._episodes["return"].append(float(self._ep_return[i]))
            self._episodes["length"].append(int(self._ep_len[i]))
            self._episodes["success"].append(float(success[i]))
        self._ep_return[done] = 0.0
        self._ep_len[done] = 0

        if self.episode_mode:
            self._done |= done
            self.obs = obs
            if self._done.all():
                out.append(self.close(np.zeros(self.n, dtype=np.float32)))
                self.obs = self._reset_all()
        elif done.any():
            idx = np.flatnonzero(done)
            seeds, inits = self._draw(len(idx))
            obs, _ = self.env.reset(seed=seeds, options={"init_state": inits, "env_indices": idx.tolist()})
            self.obs = obs
        else:
            self.obs = obs
        return out

    def shutdown(self) -> None:
        self.env.close()


class EnvWorker:
    """Holds M env managers; methods address a manager by index so one actor can serve many."""

    def __init__(self, managers: list[EnvManager]) -> None:
        self.managers = {m.manager_id: m for m in managers}

    def request(self, manager_id: int) -> ObsRequest:
        return self.managers[manager_id].request()

    def apply(self, reply: ActionReply) -> list[Segment]:
        return self.managers[reply.manager_id].apply(reply)

    def close(self, manager_id: int, bootstrap_values: np.ndarray) -> Segment:
        return self.managers[manager_id].close(bootstrap_values)

    def segment_len(self, manager_id: int) -> int:
        return self.managers[manager_id].segment_len

    def shutdown(self) -> None:
        for m in self.managers.values():
            m.shutdown()
