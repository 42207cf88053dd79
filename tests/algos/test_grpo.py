"""GRPO group normalization against hand-computed numbers."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from asyncvla.algos import grpo_advantages, grpo_loss, ppo_loss

EPS = 1e-6


def test_hand_computed_groups() -> None:
    returns = torch.tensor([1.0, 2.0, 3.0, 5.0, 5.0, 7.0, 0.0, 4.0], dtype=torch.float64)
    groups = torch.tensor([0, 0, 0, 1, 1, 2, 3, 3])
    adv, keep = grpo_advantages(returns, groups, eps=EPS)
    # group 0: mean 2, population std sqrt((1 + 0 + 1) / 3); group 3: mean 2, std 2;
    # group 1 is constant and group 2 a singleton: both dropped with advantage 0.
    s0 = math.sqrt(2 / 3)
    expected = [-1 / (s0 + EPS), 0.0, 1 / (s0 + EPS), 0.0, 0.0, 0.0, -2 / (2 + EPS), 2 / (2 + EPS)]
    torch.testing.assert_close(adv, torch.tensor(expected, dtype=torch.float64))
    assert keep.tolist() == [True, True, True, False, False, False, True, True]


def test_non_contiguous_interleaved_group_ids() -> None:
    adv, keep = grpo_advantages(torch.tensor([1.0, 10.0, 3.0, 30.0]), torch.tensor([7, -3, 7, -3]))
    # group 7: mean 2, std 1; group -3: mean 20, std 10
    torch.testing.assert_close(
        adv, torch.tensor([-1 / (1 + EPS), -10 / (10 + EPS), 1 / (1 + EPS), 10 / (10 + EPS)])
    )
    assert keep.all()


def test_constant_float32_group_is_dropped_despite_rounding() -> None:
    # float32 mean of equal non-representable values can be off by an ulp; must still drop.
    adv, keep = grpo_advantages(
        torch.full((7,), 100.1, dtype=torch.float32), torch.zeros(7, dtype=torch.long)
    )
    assert not keep.any()
    assert (adv == 0).all()


def test_bad_shapes_raise() -> None:
    with pytest.raises(ValueError, match=r"\[N\]"):
        grpo_advantages(torch.zeros(4), torch.zeros(3, dtype=torch.long))


def test_grpo_loss_is_ppo_policy_loss_without_value_terms() -> None:
    gen = torch.Generator().manual_seed(0)
    new, old, ent = (torch.randn(4, 2, 3, generator=gen) for _ in range(3))
    adv = torch.randn(4, generator=gen)
    loss, metrics = grpo_loss(new, old, adv, ent, ent_coef=0.1, level="action")
    assert metrics["loss_value"] == 0.0
    assert loss.item() == pytest.approx(metrics["loss_policy"] - 0.1 * metrics["entropy"])
    # Same policy loss as ppo_loss whatever (nonzero) values it is given.
    _, ppo_metrics = ppo_loss(
        new, old, adv, torch.ones(4), torch.ones(4), torch.zeros(4), ent, level="action"
    )
    assert metrics["loss_policy"] == pytest.approx(ppo_metrics["loss_policy"])


@settings(max_examples=100, deadline=None)
@given(
    groups=st.lists(st.lists(st.integers(0, 10), min_size=1, max_size=8), min_size=1, max_size=6),
)
def test_kept_groups_are_standardized_and_dropped_groups_are_constant(groups: list[list[int]]) -> None:
    returns = torch.tensor([r for g in groups for r in g], dtype=torch.float64)
    ids = torch.tensor([i for i, g in enumerate(groups) for _ in g])
    adv, keep = grpo_advantages(returns, ids)
    for i, g in enumerate(groups):
        a, k = adv[ids == i], keep[ids == i]
        assert k.all() == (len(set(g)) > 1) and k.any() == k.all()
        if len(set(g)) > 1:
            # integer returns that differ have population std >= 1/3, so eps shifts std by < 3e-6
            assert a.mean().item() == pytest.approx(0.0, abs=1e-9)
            assert a.std(unbiased=False).item() == pytest.approx(1.0, abs=1e-5)
        else:
            assert (a == 0).all()
