"""Plug-ins for failure tests: tabletop envs that raise, return non-finite values or stop paying, and a PPO whose loss blows up."""

import numpy as np

from asyncvla.algos.ppo import PPO
from asyncvla.envs.tabletop.env import TabletopVecEnv


class FailingEnv(TabletopVecEnv):
    def __init__(self, num_envs: int = 1, fail_after: int = 3, **kwargs):
        super().__init__(num_envs=num_envs, **kwargs)
        self.fail_after = fail_after
        self.calls = 0

    def step(self, actions):
        self.calls += 1
        if self.calls > self.fail_after:
            raise RuntimeError("simulator crashed (injected)")
        return super().step(actions)


class NaNEnv(TabletopVecEnv):
    """Returns a non-finite value at given steps: ``bad`` maps a step call (1-based) to
    ``[env index, "reward" | "state" | "cost"]``."""

    def __init__(self, num_envs: int = 1, bad: dict | None = None, **kwargs):
        super().__init__(num_envs=num_envs, **kwargs)
        self.bad = {int(k): v for k, v in (bad or {}).items()}
        self.calls = 0

    def step(self, actions):
        self.calls += 1
        obs, reward, term, trunc, info = super().step(actions)
        if self.calls in self.bad:
            i, what = self.bad[self.calls]
            if what == "reward":
                reward = reward.copy()
                reward[i] = float("nan")
            elif what == "cost":
                info = {**info, "cost": np.asarray(info["cost"], dtype=np.float64).copy()}
                info["cost"][i] = float("inf")
            else:
                obs = {**obs, "state": obs["state"].copy()}
                obs["state"][i, 0] = float("nan")
        return obs, reward, term, trunc, info


_RAISED: set[tuple[str, int]] = set()
"""(what, call) failures already injected in this process: a rebuilt env does not repeat them."""


class FlakyEnv(TabletopVecEnv):
    """A simulator that fails, each failure once per process: ``fail_env`` maps a step call
    (1-based) to the env index whose simulator fails there (reported in ``info["failed"]``);
    ``raise_at`` lists step calls that raise for the whole batch, ``reset_raise_at`` reset calls
    (after the first) that raise."""

    def __init__(self, num_envs=1, fail_env=None, raise_at=(), reset_raise_at=(), **kwargs):
        super().__init__(num_envs=num_envs, **kwargs)
        self.fail_env = {int(k): int(v) for k, v in (fail_env or {}).items()}
        self.raise_at, self.reset_raise_at = set(raise_at), set(reset_raise_at)
        self.calls = self.resets = 0

    def _once(self, what, call, wanted):
        if call in wanted and (what, call) not in _RAISED:
            _RAISED.add((what, call))
            return True
        return False

    def reset(self, *, seed=None, options=None):
        self.resets += 1
        if self._once("reset", self.resets, self.reset_raise_at):
            raise RuntimeError("simulator reset failed (injected)")
        return super().reset(seed=seed, options=options)

    def step(self, actions):
        self.calls += 1
        if self._once("raise", self.calls, self.raise_at):
            raise RuntimeError("simulator step failed (injected)")
        obs, reward, term, trunc, info = super().step(actions)
        if self._once("fail", self.calls, set(self.fail_env)):
            failed = np.zeros(self.num_envs, dtype=bool)
            failed[self.fail_env[self.calls]] = True
            info = {**info, "failed": failed}
        return obs, reward, term, trunc, info


class NaNLossPPO(PPO):
    """PPO whose loss is NaN in every minibatch of one update (the ``NAN_UPDATE``-th, 1-based):
    what a numerical blow-up looks like to the trainer."""

    NAN_UPDATE = 4

    def __init__(self, cfg):
        super().__init__(cfg)
        self.updates = 0

    def loss(self, log_probs, old_log_probs, entropy, values, batch, is_weights):
        loss, m = super().loss(log_probs, old_log_probs, entropy, values, batch, is_weights)
        if self.updates + 1 == self.NAN_UPDATE:
            loss = loss * float("nan")
            m = {**m, "loss_policy": float("nan")}
        return loss, m

    def end_update(self, episode_costs):
        self.updates += 1
        return super().end_update(episode_costs)


class CollapseEnv(TabletopVecEnv):
    """A task that pays at once and then stops paying: for the first ``collapse_after`` step calls
    every running episode succeeds at its first chunk (reward 1); afterwards none succeeds, and
    every episode runs to its time limit with no reward (an injected reward collapse)."""

    def __init__(self, num_envs: int = 1, collapse_after: int = 100, **kwargs):
        super().__init__(num_envs=num_envs, **kwargs)
        self.collapse_after = collapse_after
        self.calls = 0

    def step(self, actions):
        self.calls += 1
        running = np.array([not slot.episode.done for slot in self._slots])
        obs, reward, term, trunc, info = super().step(actions)
        if self.calls <= self.collapse_after:
            for slot, r in zip(self._slots, running, strict=True):
                slot.episode.done = slot.episode.done or bool(r)
            term, trunc = running.copy(), np.zeros_like(trunc)
            reward = running.astype(np.float32)
        else:
            trunc = trunc | term
            term = np.zeros_like(term)
            reward = np.zeros_like(reward)
        return obs, reward, term, trunc, {**info, "success": term.copy()}
