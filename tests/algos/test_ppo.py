"""PPO loss against hand-computed numbers."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from asyncvla.algos import ppo_loss, reduce_log_probs


def chunk_lp(*log_ratios: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(new, old) per-token log-probs [B, 1, 1] with new - old = the given log-ratios."""
    new = torch.tensor(log_ratios, dtype=torch.float64).reshape(-1, 1, 1)
    return new, torch.zeros_like(new)


def policy_only(
    new: torch.Tensor, old: torch.Tensor, adv: torch.Tensor, **kwargs
) -> tuple[torch.Tensor, dict]:
    """ppo_loss with values equal to returns (zero value loss) and zero entropy."""
    zeros = torch.zeros(new.shape[0], dtype=new.dtype)
    return ppo_loss(new, old, adv, zeros, zeros, zeros, torch.zeros_like(new), **kwargs)


def test_reduce_levels_shapes_and_sums() -> None:
    lp = torch.arange(24, dtype=torch.float64).reshape(2, 3, 4)
    assert reduce_log_probs(lp, "token") is lp
    torch.testing.assert_close(
        reduce_log_probs(lp, "action"), torch.tensor([[6, 22, 38], [54, 70, 86]], dtype=torch.float64)
    )
    # sum_{k,a} of 0..11 = 66 and of 12..23 = 210
    torch.testing.assert_close(reduce_log_probs(lp, "chunk"), torch.tensor([66, 210], dtype=torch.float64))
    with pytest.raises(ValueError, match="token, action, chunk"):
        reduce_log_probs(lp, "episode")
    with pytest.raises(ValueError, match=r"\[B, K, A\]"):
        reduce_log_probs(lp[0], "chunk")


def test_ratio_one_gives_minus_mean_advantage() -> None:
    new = torch.randn(3, 2, 4, dtype=torch.float64)
    adv = torch.tensor([1.0, -2.0, 3.0], dtype=torch.float64)
    for level in ("token", "action", "chunk"):
        loss, m = policy_only(new, new.clone(), adv, level=level)
        assert loss.item() == pytest.approx(-2 / 3)
        assert m["approx_kl"] == 0.0
        assert m["clipfrac"] == 0.0
        assert m["ratio_mean"] == pytest.approx(1.0)


def test_clipped_case_hand_computed() -> None:
    # clip range [0.8, 1.28]; per-sample loss -min(r A, clip(r) A):
    #   r=1.5, A=+1 -> -min(1.5, 1.28)   = -1.28  (clipped)
    #   r=1.5, A=-1 -> -min(-1.5, -1.28) =  1.5   (not clipped: pessimistic side)
    #   r=0.5, A=+1 -> -min(0.5, 0.8)    = -0.5   (not clipped)
    #   r=0.5, A=-1 -> -min(-0.5, -0.8)  =  0.8   (clipped)
    #   r=1.1, A=+2 -> -2.2                       (inside the range)
    new, old = chunk_lp(*(math.log(r) for r in (1.5, 1.5, 0.5, 0.5, 1.1)))
    new.requires_grad_(True)
    adv = torch.tensor([1.0, -1.0, 1.0, -1.0, 2.0], dtype=torch.float64)
    loss, m = policy_only(new, old, adv, clip_low=0.2, clip_high=0.28)
    assert loss.item() == pytest.approx((-1.28 + 1.5 - 0.5 + 0.8 - 2.2) / 5)
    assert m["clipfrac"] == pytest.approx(4 / 5)
    assert m["ratio_mean"] == pytest.approx((1.5 + 1.5 + 0.5 + 0.5 + 1.1) / 5)
    kl = [(r - 1) - math.log(r) for r in (1.5, 1.5, 0.5, 0.5, 1.1)]
    assert m["approx_kl"] == pytest.approx(sum(kl) / 5)
    # d loss / d logp_new = -r A / B where unclipped, 0 where the clip binds
    loss.backward()
    expected_grad = [0.0, 1.5 / 5, -0.5 / 5, 0.0, -2.2 / 5]
    torch.testing.assert_close(new.grad.flatten(), torch.tensor(expected_grad, dtype=torch.float64))


def test_clip_higher_is_asymmetric() -> None:
    # r=1.25, A=+1: inside 1+clip_high=1.28 -> -1.25; a symmetric 0.2 clip would give -1.2.
    # r=0.75, A=-1: below 1-clip_low=0.8 -> -min(-0.75, -0.8) = 0.8 (lower bound still 0.2).
    new, old = chunk_lp(math.log(1.25), math.log(0.75))
    adv = torch.tensor([1.0, -1.0], dtype=torch.float64)
    loss, m = policy_only(new, old, adv, clip_low=0.2, clip_high=0.28)
    assert loss.item() == pytest.approx((-1.25 + 0.8) / 2)
    assert m["clipfrac"] == pytest.approx(0.5)
    symmetric, _ = policy_only(new, old, adv, clip_low=0.2, clip_high=0.2)
    assert symmetric.item() == pytest.approx((-1.2 + 0.8) / 2)


def test_token_level_clips_per_token() -> None:
    # One chunk of two tokens with ratios 1.5 and 1/1.5: the chunk ratio is 1 (no clipping) but
    # token-level clips the first token: -(1.28 + min(2/3, 0.8)) / 2 with A=+1.
    new = torch.tensor([[[math.log(1.5), -math.log(1.5)]]], dtype=torch.float64)
    adv = torch.tensor([1.0], dtype=torch.float64)
    chunk, _ = policy_only(new, torch.zeros_like(new), adv, level="chunk")
    token, m = policy_only(new, torch.zeros_like(new), adv, level="token")
    assert chunk.item() == pytest.approx(-1.0)
    assert token.item() == pytest.approx(-(1.28 + 2 / 3) / 2)
    # both token ratios lie outside [0.8, 1.28] (only the first one binds with A > 0)
    assert m["clipfrac"] == pytest.approx(1.0)


def test_value_clipping_hand_computed() -> None:
    # V_old=1, V=1.5, c=0.2 -> clipped V = 1.2.
    #   R=2: max((1.5-2)^2, (1.2-2)^2) = max(0.25, 0.64) = 0.64 -> 0.32
    #   R=1: max((1.5-1)^2, (1.2-1)^2) = max(0.25, 0.04) = 0.25 -> 0.125
    lp = torch.zeros(2, 1, 1, dtype=torch.float64)
    adv = torch.zeros(2, dtype=torch.float64)
    v_new = torch.tensor([1.5, 1.5], dtype=torch.float64)
    v_old = torch.tensor([1.0, 1.0], dtype=torch.float64)
    ret = torch.tensor([2.0, 1.0], dtype=torch.float64)
    loss, m = ppo_loss(lp, lp, adv, v_new, v_old, ret, lp, value_clip=0.2, vf_coef=0.5)
    assert m["loss_value"] == pytest.approx((0.32 + 0.125) / 2)
    assert loss.item() == pytest.approx(0.5 * (0.32 + 0.125) / 2)
    _, m_unclipped = ppo_loss(lp, lp, adv, v_new, v_old, ret, lp, value_clip=None)
    assert m_unclipped["loss_value"] == pytest.approx(0.5 * (0.25 + 0.25) / 2)


def test_total_loss_combines_terms() -> None:
    # ratio 1, A = [2, 4] -> pg = -3; V=R+1 -> v = 0.5; entropy tokens [1, 3] -> H = 2.
    lp = torch.zeros(2, 1, 1, dtype=torch.float64)
    ent = torch.tensor([1.0, 3.0], dtype=torch.float64).reshape(2, 1, 1)
    adv = torch.tensor([2.0, 4.0], dtype=torch.float64)
    ret = torch.zeros(2, dtype=torch.float64)
    loss, m = ppo_loss(lp, lp, adv, ret + 1, ret + 1, ret, ent, vf_coef=0.5, ent_coef=0.1)
    assert (m["loss_policy"], m["loss_value"], m["entropy"]) == pytest.approx((-3.0, 0.5, 2.0))
    assert loss.item() == pytest.approx(-3.0 + 0.5 * 0.5 - 0.1 * 2.0)


@pytest.mark.parametrize("level", ["token", "action", "chunk"])
def test_weights_equal_repeating_samples(level: str) -> None:
    gen = torch.Generator().manual_seed(1)
    b = 3
    new, old, ent = (0.3 * torch.randn(b, 2, 3, generator=gen, dtype=torch.float64) for _ in range(3))
    adv, v_new, v_old, ret = (torch.randn(b, generator=gen, dtype=torch.float64) for _ in range(4))
    weights = torch.tensor([3.0, 1.0, 0.0], dtype=torch.float64)  # sum(w) != B: a mean of w*x would differ
    rep = torch.tensor([0, 0, 0, 1])
    loss_w, m_w = ppo_loss(new, old, adv, v_new, v_old, ret, ent, level=level, ent_coef=0.01, weights=weights)
    loss_r, m_r = ppo_loss(
        new[rep], old[rep], adv[rep], v_new[rep], v_old[rep], ret[rep], ent[rep], level=level, ent_coef=0.01
    )
    assert loss_w.item() == pytest.approx(loss_r.item())
    assert m_w == pytest.approx(m_r)
    assert loss_w.item() != pytest.approx(
        ppo_loss(new, old, adv, v_new, v_old, ret, ent, level=level)[0].item()
    )


def test_all_zero_weights_give_zero_not_nan() -> None:
    # float32 weights on float64 data: the clamp must happen in the data's dtype
    lp = torch.randn(2, 1, 1, dtype=torch.float64)
    loss, _ = policy_only(
        lp, torch.zeros_like(lp), torch.ones(2, dtype=torch.float64), weights=torch.zeros(2)
    )
    assert loss.item() == 0.0


def test_is_weights_scale_policy_loss_and_are_detached() -> None:
    # ratio 1, A = [1, 1], rho = [2, 0.5] -> pg = -(2 + 0.5) / 2
    new, old = chunk_lp(0.0, 0.0)
    rho = torch.tensor([2.0, 0.5], dtype=torch.float64, requires_grad=True)
    loss, _ = policy_only(new, old, torch.ones(2, dtype=torch.float64), is_weights=rho)
    assert loss.item() == pytest.approx(-1.25)
    assert not loss.requires_grad  # nothing differentiable reached the loss: rho was detached


def test_mismatched_shapes_raise() -> None:
    lp = torch.zeros(3, 2, 2)
    with pytest.raises(ValueError, match="advantages"):
        ppo_loss(lp, lp, torch.zeros(2), torch.zeros(3), torch.zeros(3), torch.zeros(3), lp)
    with pytest.raises(ValueError, match=r"\[B, K, A\]"):
        ppo_loss(lp, lp[:, :1], torch.zeros(3), torch.zeros(3), torch.zeros(3), torch.zeros(3), lp)


@settings(max_examples=100, deadline=None)
@given(
    log_ratio=st.floats(-3, 3),
    adv=st.floats(-5, 5),
    clip_low=st.floats(0.01, 0.5),
    clip_high=st.floats(0.01, 0.5),
)
def test_policy_loss_is_pessimistic_bound(
    log_ratio: float, adv: float, clip_low: float, clip_high: float
) -> None:
    """The clipped loss is never below the unclipped -r*A, and equals it inside the clip range."""
    new, old = chunk_lp(log_ratio)
    loss, m = policy_only(
        new, old, torch.tensor([adv], dtype=torch.float64), clip_low=clip_low, clip_high=clip_high
    )
    r = math.exp(log_ratio)
    assert loss.item() >= -r * adv - 1e-12
    if 1 - clip_low <= r <= 1 + clip_high:
        assert loss.item() == pytest.approx(-r * adv)
        assert m["clipfrac"] == 0.0
    assert m["approx_kl"] >= 0.0
