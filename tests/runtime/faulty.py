"""A plug-in env for failure tests: the tabletop env that raises after a number of steps."""

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
