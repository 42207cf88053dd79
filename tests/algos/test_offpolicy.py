import math

import pytest
import torch

from asyncvla.algos import correction, importance_weights, interpolated_proximal, ppo_loss


def test_interpolated_proximal_hand_computed_for_gaps_0_1_3():
    # B=3 samples with gaps 0, 1, 3 -> alpha = 0, 1/2, 3/4; one [K=1, A=2] chunk each
    behaviour = torch.tensor([[[-1.0, -2.0]], [[-1.0, -2.0]], [[-1.0, -2.0]]])
    current = torch.tensor([[[-3.0, 2.0]], [[-3.0, 2.0]], [[-3.0, 2.0]]])
    gap = torch.tensor([0, 1, 3])
    prox = interpolated_proximal(behaviour, current, gap)
    expected = torch.tensor(
        [
            [[-1.0, -2.0]],  # d=0: behaviour exactly
            [[-2.0, 0.0]],  # d=1: -1 + 0.5*(-2) = -2; -2 + 0.5*4 = 0
            [[-2.5, 1.0]],  # d=3: -1 + 0.75*(-2) = -2.5; -2 + 0.75*4 = 1
        ]
    )
    assert prox.shape == (3, 1, 2)
    assert torch.allclose(prox, expected, atol=1e-7)


def test_interpolated_proximal_is_detached_from_current():
    behaviour = torch.zeros(2, 2, 1)
    current = torch.ones(2, 2, 1, requires_grad=True)
    prox = interpolated_proximal(behaviour, current, torch.tensor([1, 2]))
    assert not prox.requires_grad
    assert torch.allclose(prox[:, :, 0], torch.tensor([[0.5, 0.5], [2 / 3, 2 / 3]]))


def test_importance_weights_are_exp_of_chunk_log_ratio():
    # [B=2, K=2, A=2]
    behaviour = torch.tensor([[[-1.0, -1.0], [-1.0, -1.0]], [[-0.5, -0.5], [-0.5, -0.5]]])
    proximal = torch.tensor([[[-0.9, -1.0], [-1.0, -0.8]], [[-0.5, -0.7], [-0.6, -0.5]]])
    # sample 0: sum(prox - mu) = 0.1 + 0 + 0 + 0.2 = 0.3; sample 1: 0 - 0.2 - 0.1 + 0 = -0.3
    w = importance_weights(proximal, behaviour)
    assert w.shape == (2,)
    assert torch.allclose(w, torch.tensor([math.exp(0.3), math.exp(-0.3)]), atol=1e-6)


def test_importance_weights_truncate_at_cap():
    behaviour = torch.zeros(3, 1, 1)
    proximal = torch.tensor([[[math.log(3.0)]], [[math.log(1.5)]], [[math.log(0.25)]]])
    w = importance_weights(proximal, behaviour, cap=2.0)
    assert torch.allclose(w, torch.tensor([2.0, 1.5, 0.25]), atol=1e-6)
    uncapped = importance_weights(proximal, behaviour)
    assert torch.allclose(uncapped, torch.tensor([3.0, 1.5, 0.25]), atol=1e-6)


def test_on_policy_weights_are_exactly_one():
    lp = torch.randn(4, 3, 2)
    assert torch.equal(importance_weights(lp, lp.clone()), torch.ones(4))


def _pair():
    behaviour = torch.tensor([[[-1.0]], [[-1.0]]])
    proximal = torch.tensor([[[-1.0 + math.log(4.0)]], [[-1.0 + math.log(0.5)]]])
    return behaviour, proximal


def test_correction_none_returns_behaviour_and_no_weights():
    behaviour, proximal = _pair()
    old, w = correction("none", behaviour, proximal, cap=2.0)
    assert old is behaviour
    assert w is None


def test_correction_decoupled_returns_proximal_and_uncapped_weights():
    behaviour, proximal = _pair()
    old, w = correction("decoupled", behaviour, proximal, cap=2.0)
    assert old is proximal
    assert torch.allclose(w, torch.tensor([4.0, 0.5]), atol=1e-6)


def test_correction_tis_returns_proximal_and_capped_weights():
    behaviour, proximal = _pair()
    old, w = correction("tis", behaviour, proximal, cap=2.0)
    assert old is proximal
    assert torch.allclose(w, torch.tensor([2.0, 0.5]), atol=1e-6)


def test_correction_unknown_method_raises():
    behaviour, proximal = _pair()
    with pytest.raises(ValueError, match="unknown off_policy"):
        correction("vtrace", behaviour, proximal, cap=2.0)


@pytest.mark.parametrize("level", ["token", "action", "chunk"])
def test_decoupled_loss_equals_plain_ppo_on_policy(level):
    g = torch.Generator().manual_seed(0)
    B, K, A = 6, 3, 2
    behaviour = torch.randn(B, K, A, generator=g) - 1.0
    new = (behaviour + 0.3 * torch.randn(B, K, A, generator=g)).requires_grad_(True)
    adv = torch.randn(B, generator=g)
    new_v, old_v, ret = torch.randn(B, generator=g), torch.randn(B, generator=g), torch.randn(B, generator=g)
    ent = torch.rand(B, K, A, generator=g)
    prox = behaviour.clone()  # on-policy: pi_prox == mu

    old, w = correction("decoupled", behaviour, prox, cap=2.0)
    assert torch.equal(w, torch.ones(B))
    loss_d, m_d = ppo_loss(new, old, adv, new_v, old_v, ret, ent, level=level, is_weights=w)
    loss_p, m_p = ppo_loss(new, behaviour, adv, new_v, old_v, ret, ent, level=level)
    assert torch.allclose(loss_d, loss_p, atol=1e-7)
    assert m_d["loss_policy"] == pytest.approx(m_p["loss_policy"], abs=1e-7)
    (grad_d,) = torch.autograd.grad(loss_d, new)
    (grad_p,) = torch.autograd.grad(loss_p, new)
    assert torch.allclose(grad_d, grad_p, atol=1e-7)
    # and a non-trivial weight does change it (the check above can fail)
    loss_w, _ = ppo_loss(new, old, adv, new_v, old_v, ret, ent, level=level, is_weights=2 * w)
    assert not torch.allclose(loss_w, loss_p)
