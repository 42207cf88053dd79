"""A plug-in env for failure tests: the tabletop env that raises after a number of steps."""

import numpy as np

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
