"""GAE against hand-computed recursions."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from asyncvla.algos import compute_gae


def col(*xs: float) -> torch.Tensor:
    """A [T, 1] float64 column."""
    return torch.tensor(xs, dtype=torch.float64).unsqueeze(1)


def test_done_in_the_middle_hand_computed() -> None:
    # gamma=0.9, lam=0.8, done after t=1, bootstrap V_3 = 2.0
    # t=2: delta = 3 + 0.9*2.0 - 1.5 = 3.3                  A2 = 3.3
    # t=1: delta = 2 - 1.0 = 1.0 (done: no V_2, no carry)   A1 = 1.0
    # t=0: delta = 1 + 0.9*1.0 - 0.5 = 1.4                  A0 = 1.4 + 0.72*1.0 = 2.12
    adv, ret = compute_gae(
        col(1, 2, 3), col(0.5, 1.0, 1.5), col(0, 1, 0), torch.tensor([2.0], dtype=torch.float64), 0.9, 0.8
    )
    torch.testing.assert_close(adv, col(2.12, 1.0, 3.3))
    torch.testing.assert_close(ret, col(2.62, 2.0, 4.8))


def test_gamma_lam_one_is_monte_carlo_return_minus_value() -> None:
    values = col(0.5, -1.0, 2.0)
    adv, ret = compute_gae(
        col(1, 2, 3), values, col(0, 0, 1), torch.tensor([99.0], dtype=torch.float64), 1, 1
    )
    torch.testing.assert_close(ret, col(6, 5, 3))
    torch.testing.assert_close(adv, col(5.5, 6, 1))


def test_bootstrap_used_only_when_last_step_not_done() -> None:
    # Two envs, T=1: env 0 is done (bootstrap ignored), env 1 is not (r + gamma * V_boot - V).
    rewards = torch.tensor([[1.0, 1.0]])
    values = torch.tensor([[0.25, 0.25]])
    dones = torch.tensor([[True, False]])
    adv, _ = compute_gae(rewards, values, dones, torch.tensor([10.0, 10.0]), 0.5, 0.95)
    torch.testing.assert_close(adv, torch.tensor([[0.75, 1.0 + 0.5 * 10.0 - 0.25]]))
    adv_other, _ = compute_gae(rewards, values, dones, torch.tensor([-7.0, 10.0]), 0.5, 0.95)
    torch.testing.assert_close(adv_other, adv)


def test_lam_zero_is_one_step_td_error() -> None:
    # A_t = r_t + gamma V_{t+1} (1-d_t) - V_t: (1 + .5*2 - 1), (0 + .5*3 - 2), (2 + .5*4 - 3)
    adv, _ = compute_gae(
        col(1, 0, 2), col(1, 2, 3), col(0, 0, 0), torch.tensor([4.0], dtype=torch.float64), 0.5, 0
    )
    torch.testing.assert_close(adv, col(1.0, -0.5, 1.0))


def test_shape_mismatch_raises() -> None:
    with pytest.raises(ValueError, match="bootstrap_value"):
        compute_gae(torch.zeros(3, 2), torch.zeros(3, 2), torch.zeros(3, 2), torch.zeros(3), 0.9, 0.9)
    with pytest.raises(ValueError, match=r"\[T, N\]"):
        compute_gae(torch.zeros(3, 2), torch.zeros(3, 1), torch.zeros(3, 2), torch.zeros(2), 0.9, 0.9)


def test_no_gradient_flows_into_targets() -> None:
    values = torch.ones(2, 1, requires_grad=True)
    adv, ret = compute_gae(torch.ones(2, 1), values, torch.zeros(2, 1), torch.ones(1), 0.9, 0.9)
    assert not adv.requires_grad and not ret.requires_grad


@settings(max_examples=50, deadline=None)
@given(
    data=st.lists(
        st.tuples(st.floats(-5, 5), st.floats(-5, 5), st.booleans()),
        min_size=1,
        max_size=12,
    ),
    bootstrap=st.floats(-5, 5),
    gamma=st.floats(0, 1),
)
def test_lam_one_matches_discounted_return_loop(data, bootstrap: float, gamma: float) -> None:
    """With lam=1, R_t = sum of discounted rewards to episode end (+ discounted bootstrap if cut off)."""
    rewards = [r for r, _, _ in data]
    values = [v for _, v, _ in data]
    dones = [d for _, _, d in data]
    expected = []
    for t in range(len(data)):
        g, disc = 0.0, 1.0
        for s in range(t, len(data)):
            g += disc * rewards[s]
            disc *= gamma
            if dones[s]:
                break
        else:
            g += disc * bootstrap
        expected.append(g)
    _, ret = compute_gae(
        col(*rewards), col(*values), col(*dones), torch.tensor([bootstrap], dtype=torch.float64), gamma, 1
    )
    torch.testing.assert_close(ret, col(*expected))
