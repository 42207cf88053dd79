import copy

import numpy as np
import pytest
import torch

from asyncvla.builder import build_policy, probe_env
from asyncvla.config import load_config
from asyncvla.runtime.learner import Learner
from tests.runtime.segments import act_segments

TINY = [
    "env.num_envs=4",
    "env.num_managers=1",
    "env.kwargs.family=reach",
    "train.rollout_steps=3",
    "algo.epochs=1",
    "policy.kwargs.image_grid=4",
]
N_ENVS, T = 4, 3


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _setup(overrides, segments=2):
    """A tiny policy and ``segments`` segments of T=3 decisions x 4 envs acted by it (version 0)."""
    cfg = load_config(None, [*TINY, *overrides])
    probe = probe_env(cfg)
    torch.manual_seed(0)
    policy = build_policy(cfg, probe)
    return cfg, policy, act_segments(policy, segments, num_envs=N_ENVS, rollout_steps=T)


def test_streaming_micro_batches_equal_one_full_batch_step():
    cfg, policy, segs = _setup(
        [
            "algo.normalize_advantages=false",
            "algo.off_policy=none",
            "algo.minibatch_size=64",  # >= 24 samples: one optimizer step over the whole batch
        ]
    )
    total = len(segs) * N_ENVS * T
    assert total == 24
    micro = 5  # does not divide 24: micro-batches 5, 5 | 5, 5 | 4 (partial, at stream_finish)
    assert total % micro != 0
    before = {k: v.clone() for k, v in policy.state_dict().items()}
    pol_a, pol_b = copy.deepcopy(policy), copy.deepcopy(policy)
    a = Learner(pol_a, cfg.algo, seed=0)
    b = Learner(pol_b, cfg.algo, seed=0, micro_batch=micro)

    ma = a.train(segs)
    ran = [b.stream_add(seg) for seg in segs]
    assert ran == [2, 2]  # 12 -> 2 full + 2 pending; 14 -> 2 full + 4 pending
    mb = b.stream_finish()

    assert ma["train_samples"] == mb["train_samples"] == total
    assert pol_a.version == pol_b.version == 1
    assert ma["grad_norm"] == pytest.approx(mb["grad_norm"], rel=1e-4)
    changed = False
    for (k, wa), wb in zip(pol_a.state_dict().items(), pol_b.state_dict().values(), strict=True):
        assert torch.allclose(wa, wb, atol=1e-6), k
        changed |= not torch.allclose(wa, before[k], atol=1e-6)
    assert changed, "the update did not move the weights: the comparison would be vacuous"


def test_streaming_without_sample_weighting_would_differ():
    # Negative control: one step per micro-batch (not accumulated) gives different weights, so the
    # equivalence above is a real check.
    cfg, policy, segs = _setup(
        ["algo.normalize_advantages=false", "algo.off_policy=none", "algo.minibatch_size=64"]
    )
    pol_a, pol_c = copy.deepcopy(policy), copy.deepcopy(policy)
    Learner(pol_a, cfg.algo, seed=0).train(segs)
    c = Learner(pol_c, cfg.algo.model_copy(update={"minibatch_size": 5}), seed=0)
    c.train(segs)
    assert any(
        not torch.allclose(wa, wc, atol=1e-6)
        for wa, wc in zip(pol_a.state_dict().values(), pol_c.state_dict().values(), strict=True)
    )


# versions of the first segment [T=3, n=4] at trainer version 5, max_staleness 2:
# gaps [[0,0,1,2],[3,4,0,1],[5,2,2,0]] -> 3 refused (gaps 3, 4, 5), 9 kept: gap 0 x4, 1 x2, 2 x3
STALE_VERSIONS = np.array([[5, 5, 4, 3], [2, 1, 5, 4], [0, 3, 3, 5]], dtype=np.int64)


@pytest.mark.parametrize("mode", ["train", "stream"])
def test_trainer_refuses_and_counts_samples_beyond_max_staleness(mode):
    cfg, policy, segs = _setup(["algo.minibatch_size=8"])
    policy.version = 5
    segs[0].versions = STALE_VERSIONS.copy()
    segs[1].versions = np.full((T, N_ENVS), 5, dtype=np.int64)  # all on-policy
    assert segs[0].valid.all() and segs[1].valid.all()
    trainer = Learner(policy, cfg.algo, seed=0, max_staleness=2, micro_batch=8)
    if mode == "train":
        metrics = trainer.train(segs)
    else:
        for seg in segs:
            trainer.stream_add(seg)
        metrics = trainer.stream_finish()
    assert metrics["rejected_samples"] == 3
    assert metrics["train_samples"] == 24 - 3
    assert metrics["staleness_hist"] == {"0": 4 + 12, "1": 2, "2": 3}
    assert metrics["staleness_mean"] == pytest.approx((1 * 2 + 2 * 3) / 21)
    assert metrics["staleness_max"] == 2
    assert trainer.version == 6


def test_without_a_staleness_bound_every_sample_is_trained_and_histogrammed():
    cfg, policy, segs = _setup(["algo.minibatch_size=8"], segments=1)
    policy.version = 5
    segs[0].versions = STALE_VERSIONS.copy()
    metrics = Learner(policy, cfg.algo, seed=0).train(segs)
    assert metrics["rejected_samples"] == 0
    assert metrics["train_samples"] == 12
    assert metrics["staleness_hist"] == {"0": 4, "1": 2, "2": 3, "3": 1, "4": 1, "5": 1}
    assert metrics["staleness_max"] == 5


def test_streamer_and_epoch_schedules_take_the_documented_number_of_optimizer_steps():
    # N = 24 samples, m = 8, E = 3: epochs take E * ceil(N / m) = 9 steps; the streamer one
    # accumulated step for its first epoch, then (E - 1) * ceil(N / m) = 6.
    cfg, policy, segs = _setup(["algo.minibatch_size=8", "algo.epochs=3"])
    epochs = Learner(copy.deepcopy(policy), cfg.algo, seed=0)
    epochs.train(segs)
    streamer = Learner(copy.deepcopy(policy), cfg.algo, seed=0)
    for seg in segs:
        streamer.stream_add(seg)
    streamer.stream_finish()
    assert (epochs.optimizer_steps, streamer.optimizer_steps) == (9, 1 + 6)
