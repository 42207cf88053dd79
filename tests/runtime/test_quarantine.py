"""Non-finite env output: the bad step and its episode's decisions in the segment are quarantined
(counted, never trained), the env restarts, inference never sees NaN."""

import numpy as np
import pytest
import torch

from asyncvla.algos import ALGOS
from asyncvla.builder import build_policy
from asyncvla.config import load_config
from asyncvla.runtime.env_worker import EnvManager
from asyncvla.runtime.learner import Learner
from asyncvla.runtime.types import ActionReply

NAN_ENV = "tests.runtime.faulty:NaNEnv"


def _run(m, steps, policy=None, k=2):
    """``steps`` decisions of zero (or ``policy``) actions; returns the segments and every request's obs."""
    segs, seen = [], []
    for _ in range(steps):
        (req,) = m.request()
        seen.append(req.obs)
        n = len(req.env_ids)
        if policy is None:
            acts, lp, v = (
                np.zeros((n, k, 3), np.float32),
                np.zeros((n, k, 3), np.float32),
                np.zeros(n, np.float32),
            )
        else:
            out = policy.act(req.obs)
            acts, lp, v = out.actions, out.log_probs, out.values
        segs += m.apply(ActionReply(m.manager_id, req.request_id, req.env_ids, acts, lp, v, 0))
    return segs, seen


@pytest.mark.parametrize("what", ["reward", "state", "cost"])
def test_a_non_finite_step_quarantines_its_episode_in_the_segment(what):
    # env 1 goes bad at its 3rd step: decisions 0, 1, 2 of its episode are quarantined
    m = EnvManager(0, NAN_ENV, 3, {"family": "reach", "bad": {3: [1, what]}}, rollout_steps=4, seed=0)
    (seg,), seen = _run(m, 4)
    assert seg.valid[:, 1].tolist() == [False, False, False, True]
    assert seg.valid[:, [0, 2]].all()
    assert seg.quarantined == 3 and m.quarantined_samples == 3 and m.quarantined_episodes == 1
    assert seg.dones[2, 1] and np.isfinite(seg.rewards).all() and np.isfinite(seg.costs).all()
    assert seg.episodes["return"] == []  # the quarantined episode is not reported
    for obs in seen:  # the env restarted: inference never got the bad observation
        assert np.isfinite(obs["state"]).all()
    assert np.isfinite(seg.obs["state"]).all()
    m.shutdown()


def test_quarantined_decisions_are_never_trained_and_are_counted():
    cfg = load_config(None, ["env.kwargs.family=reach", "env.kwargs.image_size=32", "policy.kwargs.width=32"])
    torch.manual_seed(0)
    policy = build_policy(cfg)
    m = EnvManager(0, NAN_ENV, 3, {"family": "reach", "image_size": 32, "bad": {2: [0, "reward"]}}, 3, seed=0)
    segs, _ = _run(m, 3, policy=policy, k=cfg.policy.chunk_size)
    m.shutdown()
    learner = Learner(policy, cfg.algo, seed=0)
    s = learner.samples(segs[0], {})
    assert s.size == 9 - 2 and np.isfinite(s.data["adv"]).all() and np.isfinite(s.data["ret"]).all()
    metrics = learner.train(segs)
    assert metrics["quarantined_samples"] == 2 and metrics["train_samples"] == 7


def test_grpo_drops_the_group_of_a_quarantined_episode():
    # two groups of 2 envs; env 3 (group 1) goes bad at its 2nd step
    m = EnvManager(
        0,
        NAN_ENV,
        4,
        {"family": "reach", "max_episode_steps": 6, "bad": {2: [3, "state"]}},
        rollout_steps=3,
        seed=0,
        episode_mode=True,
        group_size=2,
    )
    segs, _ = _run(m, 3)
    m.shutdown()
    (seg,) = segs
    assert not seg.valid[:, 3].any() and seg.quarantined == 2
    cfg = load_config(None, ["algo.name=grpo", "algo.group_size=2", "env.num_envs=4"])
    seg.rewards[:, 0] = 1.0  # give group 0 a signal so that only the quarantine decides
    adv, _ = ALGOS.get("grpo")(cfg.algo).advantages(seg, np.zeros(4, np.float32))
    assert np.isnan(adv[:, 2:]).all() and np.isfinite(adv[:, :2]).all()
