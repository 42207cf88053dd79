"""Generalized Advantage Estimation (Schulman et al., 2016), per-decision discounting."""

from __future__ import annotations

import torch
from torch import Tensor


@torch.no_grad()
def compute_gae(
    rewards: Tensor,
    values: Tensor,
    dones: Tensor,
    bootstrap_value: Tensor,
    gamma: float,
    lam: float,
) -> tuple[Tensor, Tensor]:
    """GAE(gamma, lambda) advantages and lambda-returns, by the backward recursion.

    With ``V_T := bootstrap_value`` and ``d_t = dones[t]``::

        delta_t = r_t + gamma * V_{t+1} * (1 - d_t) - V_t
        A_t     = delta_t + gamma * lam * (1 - d_t) * A_{t+1},    A_T := 0
        R_t     = A_t + V_t

    ``d_t = 1`` means the episode ended after step t: nothing is bootstrapped or carried across it,
    so ``bootstrap_value`` only matters in the envs where ``dones[T-1] == 0``. One step is one
    decision (one action chunk), discounted by ``gamma`` once.

    Args:
        rewards, values: [T, N] per-step rewards and value estimates ``V(s_t)``.
        dones: [T, N] bool or float, 1 where the episode ended after step t.
        bootstrap_value: [N] ``V(s_T)``, the value of the observation after the last step.

    Returns:
        (advantages, returns), both [T, N], computed without gradient (they are targets).
    """
    if rewards.ndim != 2 or rewards.shape != values.shape or rewards.shape != dones.shape:
        raise ValueError(
            f"rewards, values, dones must all be [T, N]; got {tuple(rewards.shape)}, "
            f"{tuple(values.shape)}, {tuple(dones.shape)}"
        )
    if bootstrap_value.shape != values.shape[1:]:
        raise ValueError(f"bootstrap_value must be [N]={values.shape[1]}; got {tuple(bootstrap_value.shape)}")
    not_done = 1.0 - dones.to(values.dtype)
    next_values = torch.cat([values[1:], bootstrap_value.unsqueeze(0)], dim=0)
    deltas = rewards + gamma * next_values * not_done - values
    advantages = torch.empty_like(values)
    carry = torch.zeros_like(bootstrap_value, dtype=values.dtype)
    for t in reversed(range(values.shape[0])):
        carry = deltas[t] + gamma * lam * not_done[t] * carry
        advantages[t] = carry
    return advantages, advantages + values
