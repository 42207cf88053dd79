"""PPO-Lagrangian: the multiplier's dual ascent / PID steps, the combined advantage and the cost
critic's loss, against hand-computed values; its config checks and checkpointed state."""

import numpy as np
import pytest
import torch

from asyncvla.algos import ALGOS, PPOLagrangian, update_multiplier
from asyncvla.config import ConfigError, load_config
from tests.algos.test_registry import _segment


def _algo(*overrides):
    return PPOLagrangian(
        load_config(None, ["algo.name=ppo_lagrangian", "algo.cost_limit=1.0", *overrides]).algo
    )


def test_dual_ascent_moves_the_multiplier_with_the_violation_and_never_below_zero():
    # lambda + lr * (J_c - d): 0 + 0.1 * (3 - 1) = 0.2; then 0.2 + 0.1 * (0 - 1) = 0.1; then 0 (clamped)
    lam, i = update_multiplier(0.0, 0.0, None, 3.0, 1.0, lr=0.1, kp=0.0, kd=0.0, pid=False)
    assert lam == pytest.approx(0.2) and i == 0.0
    lam, _ = update_multiplier(lam, 0.0, 3.0, 0.0, 1.0, lr=0.1, kp=0.0, kd=0.0, pid=False)
    assert lam == pytest.approx(0.1)
    lam, _ = update_multiplier(lam, 0.0, 0.0, 0.0, 1.0, lr=0.1, kp=0.0, kd=0.0, pid=False)
    assert lam == 0.0


def test_pid_lagrangian_hand_computed():
    # e = 2: I = 2, lambda = kp e + ki I + kd max(0, 3 - 1) = 0.5*2 + 0.1*2 + 0.2*2 = 1.6
    lam, i = update_multiplier(0.0, 0.0, 1.0, 3.0, 1.0, lr=0.1, kp=0.5, kd=0.2, pid=True)
    assert (lam, i) == (pytest.approx(1.6), pytest.approx(2.0))
    # cost 0, e = -1: I = 2 - 1 = 1; the cost fell (no derivative term): max(0, -0.5 + 0.1) = 0
    lam, i = update_multiplier(lam, i, 3.0, 0.0, 1.0, lr=0.1, kp=0.5, kd=0.2, pid=True)
    assert (lam, i) == (0.0, pytest.approx(1.0))


def test_end_update_uses_the_batch_episode_costs_and_skips_batches_without_episodes():
    algo = _algo("algo.lagrangian_lr=0.5")
    m = algo.end_update([2.0, 4.0])  # mean 3 -> 0 + 0.5 * (3 - 1) = 1
    assert m["lagrange_multiplier"] == 0.0 and m["batch_episode_cost"] == 3.0  # the value this update used
    assert algo.multiplier == pytest.approx(1.0)
    assert algo.end_update([]) == {"lagrange_multiplier": 1.0, "cost_limit": 1.0}
    assert algo.multiplier == pytest.approx(1.0)
    other = _algo()
    other.load_state_dict(algo.state_dict())
    assert other.state_dict() == algo.state_dict()


def test_cost_advantages_are_gae_over_the_costs_with_the_cost_critic():
    algo = _algo("algo.gamma=0.5", "algo.gae_lambda=1.0")
    seg = _segment(np.zeros((2, 1)), np.array([[False], [False]]), np.zeros((2, 1)))
    seg.costs = np.array([[1.0], [2.0]], np.float32)
    seg.cost_values = np.array([[0.5], [0.25]], np.float32)
    adv, ret = algo.cost_advantages(seg, np.array([4.0], np.float32))
    # returns: R_1 = 2 + 0.5 * 4 = 4, R_0 = 1 + 0.5 * 4 = 3; A = R - V_c
    np.testing.assert_allclose(ret[:, 0], [3.0, 4.0])
    np.testing.assert_allclose(adv[:, 0], [2.5, 3.75])


def test_loss_combines_advantages_and_adds_the_cost_value_loss():
    algo = _algo("algo.value_clip=null", "algo.vf_coef=1.0")
    algo.multiplier = 1.0
    b = 4
    lp = torch.zeros(b, 1, 1, requires_grad=True)
    batch = {
        "adv": torch.tensor([1.0, 2.0, 3.0, 4.0]),
        "ret": torch.zeros(b),
        "values": torch.zeros(b),
        "cadv": torch.tensor([0.0, 0.0, 0.0, 4.0]),
        "cret": torch.tensor([2.0, 0.0, 0.0, 0.0]),
        "cvalues": torch.zeros(b),
        "cost_values_new": torch.zeros(b),
    }
    loss, m = algo.loss(lp, lp.detach(), torch.zeros(b, 1, 1), torch.zeros(b), batch, None)
    assert m["loss_cost_value"] == pytest.approx(0.5 * 4.0 / 4)  # 0.5 * mean((V_c - R_c)^2)
    loss.backward()

    # d loss / d logp_i = -A_i / b at ratio 1 (no clipping active), A = (norm(A_r) - norm(A_c)) / 2
    def norm(x):
        return (x - x.mean()) / (x.std() + 1e-8)

    combined = (norm(batch["adv"]) - norm(batch["cadv"])) / 2.0
    np.testing.assert_allclose(lp.grad.reshape(-1).numpy(), (-combined / b).numpy(), rtol=1e-5, atol=1e-6)


def test_config_checks():
    assert ALGOS.get("ppo_lagrangian") is PPOLagrangian and PPOLagrangian.needs_cost_critic
    with pytest.raises(ConfigError, match=r"^algo.cost_limit: ppo_lagrangian needs"):
        load_config(None, ["algo.name=ppo_lagrangian"])
    with pytest.raises(ConfigError, match=r"^algo.cost_limit: ppo ignores it"):
        load_config(None, ["algo.cost_limit=1"])
    with pytest.raises(ConfigError, match=r"^algo.lagrangian: "):
        load_config(None, ["algo.name=ppo_lagrangian", "algo.cost_limit=1", "algo.lagrangian=p"])
    with pytest.raises(ConfigError, match=r"^algo.cost_limit: "):
        load_config(None, ["algo.name=ppo_lagrangian", "algo.cost_limit=-1"])
