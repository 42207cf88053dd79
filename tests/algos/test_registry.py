"""The algorithm registry: PPO and GRPO behind one interface, plug-ins by name, config checks."""

import numpy as np
import pytest
import torch

from asyncvla.algos import ALGOS, GRPO, PPO, Algorithm, compute_gae, make_algo, ppo_loss
from asyncvla.config import ConfigError, load_config
from asyncvla.runtime.types import Segment


class Constant(Algorithm):
    """A plug-in for the test: advantage 1 everywhere, loss = -mean log-prob."""

    needs_critic = False

    def advantages(self, seg, bootstrap):
        return np.ones_like(seg.rewards), np.zeros_like(seg.rewards)

    def loss(self, log_probs, old_log_probs, entropy, values, batch, is_weights):
        loss = -log_probs.mean()
        return loss, {"loss_policy": float(loss)}


def _segment(rewards, dones, values, group_ids=None):
    t, n = rewards.shape
    z = np.zeros((t, n), np.float32)
    return Segment(
        manager_id=0,
        segment_id=0,
        env_ids=np.arange(n),
        obs={},
        actions=np.zeros((t, n, 1, 1), np.float32),
        log_probs=np.zeros((t, n, 1, 1), np.float32),
        values=values.astype(np.float32),
        rewards=rewards.astype(np.float32),
        dones=dones,
        costs=z,
        versions=np.zeros((t, n), np.int64),
        valid=np.ones((t, n), bool),
        env_steps=t * n,
        bootstrap_value=None,
        group_ids=group_ids,
    )


def test_registry_names_and_config_validation():
    assert {"ppo", "grpo"} <= set(ALGOS.names())
    assert ALGOS.get("ppo") is PPO and ALGOS.get("grpo") is GRPO
    assert PPO.needs_critic and not PPO.episode_mode
    assert not GRPO.needs_critic and GRPO.episode_mode
    with pytest.raises(ConfigError, match=r"^algo.name: unknown algo 'a2c'; registered: grpo, ppo"):
        load_config(None, ["algo.name=a2c"])
    with pytest.raises(ConfigError, match=r"^algo.group_size: must divide env.num_envs=6 for grpo"):
        load_config(None, ["algo.name=grpo", "env.num_envs=6", "algo.group_size=4"])


def test_a_plug_in_algorithm_is_accepted_by_name():
    cfg = load_config(None, ["algo.name=tests.algos.test_registry:Constant"])
    algo = make_algo(cfg.algo)
    assert isinstance(algo, Constant)
    adv, _ = algo.advantages(_segment(np.zeros((2, 3)), np.zeros((2, 3), bool), np.zeros((2, 3))), None)
    assert adv.shape == (2, 3) and (adv == 1).all()


def test_ppo_advantages_are_gae_with_the_bootstrap_value():
    algo = make_algo(load_config(None, ["algo.gamma=0.5", "algo.gae_lambda=1.0"]).algo)
    rewards = np.array([[1.0], [0.0]])
    seg = _segment(rewards, np.zeros((2, 1), bool), np.zeros((2, 1)))
    adv, ret = algo.advantages(seg, np.array([4.0], np.float32))
    # lambda = 1, V = 0: returns are discounted sums; R_1 = 0 + 0.5 * 4 = 2, R_0 = 1 + 0.5 * 2 = 2
    np.testing.assert_allclose(ret[:, 0], [2.0, 2.0])
    np.testing.assert_allclose(adv, ret)
    ref, _ = compute_gae(
        torch.tensor(rewards, dtype=torch.float32),
        torch.zeros(2, 1),
        torch.zeros(2, 1, dtype=torch.bool),
        torch.tensor([4.0]),
        gamma=0.5,
        lam=1.0,
    )
    np.testing.assert_array_equal(adv, ref.numpy())


def test_grpo_advantages_drop_groups_without_signal():
    algo = make_algo(load_config(None, ["algo.name=grpo", "env.num_envs=8", "algo.group_size=2"]).algo)
    # episodes (columns): group 7 = returns 1 and 0 -> +-1; group 9 = returns 1 and 1 -> dropped
    rewards = np.array([[1.0, 0.0, 0.5, 0.5], [0.0, 0.0, 0.5, 0.5]])
    seg = _segment(rewards, np.zeros((2, 4), bool), np.zeros((2, 4)), np.array([7, 7, 9, 9]))
    adv, ret = algo.advantages(seg, np.zeros(4, np.float32))
    np.testing.assert_allclose(adv[:, :2], [[1.0, -1.0], [1.0, -1.0]], atol=1e-5)
    assert np.isnan(adv[:, 2:]).all() and (ret == 0).all()


def test_ppo_loss_normalizes_advantages_per_minibatch_and_grpo_has_no_value_term():
    cfg = load_config(None, []).algo
    b, k, a = 4, 1, 1
    lp = torch.zeros(b, k, a, requires_grad=True)
    batch = {
        "adv": torch.tensor([1.0, 2.0, 3.0, 4.0]),
        "ret": torch.tensor([1.0, 0.0, 0.0, 0.0]),
        "values": torch.zeros(b),
    }
    values = torch.zeros(b)
    loss, m = PPO(cfg).loss(lp, lp.detach(), torch.zeros(b, k, a), values, batch, None)
    adv = batch["adv"]
    norm = (adv - adv.mean()) / (adv.std() + 1e-8)
    ref, _ = ppo_loss(
        lp,
        lp.detach(),
        norm,
        values,
        batch["values"],
        batch["ret"],
        torch.zeros(b, k, a),
        level=cfg.logprob_level,
        clip_low=cfg.clip_low,
        clip_high=cfg.clip_high,
        value_clip=cfg.value_clip,
        vf_coef=cfg.vf_coef,
        ent_coef=cfg.ent_coef,
    )
    assert loss.item() == pytest.approx(ref.item())
    assert m["loss_value"] == pytest.approx(0.5 * 1.0 / 4)  # 0.5 * mean((V - R)^2)
    _, g = GRPO(cfg).loss(lp, lp.detach(), torch.zeros(b, k, a), values, batch, None)
    assert g["loss_value"] == 0.0
    # ratio 1 everywhere: PPO's policy loss is -mean(normalized A) = 0, GRPO's -mean(A) = -2.5
    assert m["loss_policy"] == pytest.approx(0.0, abs=1e-6) and g["loss_policy"] == pytest.approx(-2.5)
