"""Frozen-feature caching: the cached path computes exactly what the uncached one does, and the
frozen part runs once per sample per update instead of once per forward pass.

Exact equality needs every matrix product to see the same kernels in both paths: CPU BLAS and
oneDNN pick kernels by row count (on AVX-512 CPUs 8 and 16 rows already differ), which changes the
last bits of a row whether or not anything is cached. So every micro-batch and minibatch here
holds 8 samples, and features are compared with features of batches of the same size."""

import copy

import numpy as np
import pytest
import torch

from asyncvla.builder import build_policy, probe_env
from asyncvla.config import load_config
from asyncvla.policies.tiny_vla import TinyVLA
from asyncvla.runtime.learner import Learner
from asyncvla.runtime.types import take_obs
from tests.runtime.segments import act_segments

pytestmark = pytest.mark.usefixtures("one_torch_thread")

BASE = [
    "env.kwargs.family=object",  # instructions of 7, 10 and 11 words: minibatches trim differently
    "policy.kwargs.image_grid=4",
    "policy.kwargs.fusion_grid=2",
    "policy.kwargs.freeze_encoder=true",
    "policy.kwargs.ee_xy_dims=[0,1]",
    "policy.kwargs.head=gaussian",
    "algo.epochs=3",
    "algo.minibatch_size=8",  # 3 segments x 4 envs x 4 decisions = 48 samples: 6 minibatches
]
N = 48


def _setup(overrides=()):
    cfg = load_config(None, [*BASE, *overrides])
    torch.manual_seed(0)
    policy = build_policy(cfg, probe_env(cfg))
    segs = act_segments(policy, 3, family="object", num_envs=4, rollout_steps=4)
    return cfg, policy, segs


def _count_ground(monkeypatch):
    calls = []
    real = TinyVLA._ground

    def counted(self, obs):
        calls.append(len(obs["state"]))
        return real(self, obs)

    monkeypatch.setattr(TinyVLA, "_ground", counted)
    return calls


def test_evaluate_from_cached_rows_equals_evaluate_from_observations():
    cfg, policy, segs = _setup()
    obs = segs[0].flat_obs()
    n = len(obs["state"])
    actions = torch.from_numpy(segs[0].actions.reshape(n, *segs[0].actions.shape[2:]))
    feats = policy.frozen_features(obs)
    assert feats is not None and all(v.shape[0] == n for v in feats.values())
    idx = np.random.default_rng(0).permutation(n)  # rows taken out of order (same row count)
    rows = {k: v[torch.from_numpy(idx)] for k, v in feats.items()}
    plain = policy.evaluate(take_obs(obs, idx), actions[idx])
    cached = policy.evaluate(take_obs(obs, idx), actions[idx], features=rows)
    for name in ("log_probs", "entropy", "values"):
        assert torch.equal(getattr(plain, name), getattr(cached, name)), name
    # The cache is read, not ignored: features of other observations change the output.
    other = {k: v.roll(1, dims=0) for k, v in rows.items()}
    shifted = policy.evaluate(take_obs(obs, idx), actions[idx], features=other)
    assert not torch.equal(plain.log_probs, shifted.log_probs)


def test_nothing_is_cached_when_nothing_is_frozen():
    cfg, policy, segs = _setup(["policy.kwargs.freeze_encoder=false"])
    assert policy.frozen_features(segs[0].flat_obs()) is None
    learner = Learner(policy, cfg.algo, seed=0)
    assert learner.samples(segs[0], {}).feats is None


@pytest.mark.parametrize("streamer", [False, True])
def test_cached_training_is_bit_identical_and_runs_the_frozen_part_once(monkeypatch, streamer):
    cfg, policy, segs = _setup(["algo.off_policy=decoupled", "algo.proximal=recompute"])
    for seg in segs[1:]:
        seg.versions[:] = -1  # one version behind the learner: proximal log-probs are recomputed
    before = {k: v.clone() for k, v in policy.state_dict().items()}
    calls = _count_ground(monkeypatch)
    runs = {}
    for cache in (False, True):
        pol = copy.deepcopy(policy)
        learner = Learner(pol, cfg.algo, seed=0, max_staleness=1, cache_features=cache)
        calls.clear()
        if streamer:
            for seg in segs:
                learner.stream_add(seg)
            metrics = learner.stream_finish()
        else:
            metrics = learner.train(segs)
        runs[cache] = (metrics, pol.state_dict(), list(calls))

    (m0, w0, calls0), (m1, w1, calls1) = runs[False], runs[True]
    assert m0["train_samples"] == m1["train_samples"] == N
    for k in ("loss_policy", "loss_value", "entropy", "approx_kl", "clipfrac", "grad_norm"):
        assert m0[k] == m1[k], k
    changed = False
    for k in w0:
        assert torch.equal(w0[k], w1[k]), k
        changed |= not torch.equal(w0[k], before[k])
    assert changed, "the update did not move the weights: the comparison would be vacuous"
    # Cached: the frozen part runs once per sample (each segment's 16 in micro-batches of 8), plus
    # once per segment for the 4 bootstrap observations.
    assert sorted(calls1) == sorted([8, 8, 4] * 3)
    # Uncached: every forward pass runs it again (epochs x samples, plus the recompute if any).
    assert sum(calls0) >= cfg.algo.epochs * N


def test_features_shipped_with_the_segment_replace_the_trainers_frozen_pass(monkeypatch):
    cfg, policy, _ = _setup()
    segs = act_segments(policy, 3, family="object", num_envs=8, rollout_steps=2, with_features=True)
    seg = segs[0]
    assert seg.features is not None and seg.features["tokens_map"].shape[:2] == (2, 8)
    # The shipped rows are the policy's own frozen features of the segment's observations.
    # Compared per decision: the rollout forward saw one decision's 8 envs at a time.
    for t in range(2):
        mine = policy.frozen_features({k: v[t] for k, v in seg.obs.items()})
        for k, v in mine.items():
            assert torch.equal(torch.from_numpy(seg.features[k][t]), v), k
    calls = _count_ground(monkeypatch)
    runs = {}
    for shipped in (False, True):
        data = segs if shipped else [copy.copy(s) for s in segs]
        if not shipped:
            for s in data:
                s.features = None  # the trainer computes them itself
        pol = copy.deepcopy(policy)
        calls.clear()
        metrics = Learner(pol, cfg.algo, seed=0, max_staleness=1).train(data)
        runs[shipped] = (metrics, pol.state_dict(), list(calls))
    (m0, w0, c0), (m1, w1, c1) = runs[False], runs[True]
    assert m0["train_samples"] == m1["train_samples"] == 48
    assert all(m0[k] == m1[k] for k in ("loss_policy", "loss_value", "entropy", "grad_norm"))
    assert all(torch.equal(w0[k], w1[k]) for k in w0)
    assert sorted(c0) == sorted([8, 8, 8] * 3)  # its own frozen pass (16 rows in 2 micro-batches) + bootstrap
    assert c1 == [8, 8, 8]  # only the bootstrap observations remain


def test_rollout_worker_replies_carry_each_requests_own_feature_rows():
    from asyncvla.runtime.rollout_worker import RolloutSpec, RolloutWorker
    from asyncvla.runtime.types import ObsRequest
    from asyncvla.runtime.weights import PolicySpec

    cfg, policy, segs = _setup()
    worker = RolloutWorker(cfg, RolloutSpec(worker_id=0), PolicySpec.of(policy, cfg.policy.name))
    obs = segs[0].flat_obs()
    a, b = np.arange(0, 3), np.arange(3, 8)
    reqs = [ObsRequest(0, 1, a, take_obs(obs, a)), ObsRequest(1, 1, b + 100, take_obs(obs, b))]
    replies = worker.infer(reqs)
    full = policy.frozen_features(take_obs(obs, np.arange(8)))
    for r, idx in zip(replies, (a, b), strict=True):
        assert r.features is not None
        for k, v in full.items():
            np.testing.assert_allclose(r.features[k], v[idx].numpy(), rtol=0, atol=1e-6)
    off = load_config(None, [*BASE, "train.ship_features=false"])
    quiet = RolloutWorker(off, RolloutSpec(worker_id=0), PolicySpec.of(policy, off.policy.name))
    assert all(r.features is None for r in quiet.infer(reqs))
