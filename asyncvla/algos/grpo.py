"""GRPO (Shao et al., 2024): critic-free advantages from group-normalized episode returns.

Episodes rolled out from the same initial state form a group; each episode's advantage is its
return standardized within the group. The policy loss is *not* a separate implementation: it is
:func:`asyncvla.algos.ppo.ppo_loss` with the value terms off (``vf_coef=0``, zero value tensors),
which :func:`grpo_loss` spells out. Pass ``weights=keep.float()`` to drop the signal-free groups.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from asyncvla.algos.base import ALGOS, Algorithm
from asyncvla.algos.ppo import ppo_loss

if TYPE_CHECKING:
    from asyncvla.config import Config
    from asyncvla.runtime.types import Segment

CONSTANT_GROUP_STD = 1e-8


def grpo_advantages(episode_returns: Tensor, group_ids: Tensor, eps: float = 1e-6) -> tuple[Tensor, Tensor]:
    """Group-normalized advantages ``A_i = (R_i - mean_g) / (std_g + eps)`` for i in group g.

    ``std_g`` is the *population* std ``sqrt(mean_g((R - mean_g)^2))`` (``unbiased=False``): it
    needs no n-1 correction, is defined for every group size, and makes a kept group's advantages
    have population std ~1. Groups whose returns are all equal (exactly, or ``std_g < 1e-8``) carry
    no learning signal -- this includes singleton groups -- so they get ``keep=False`` and ``A=0``.

    Args:
        episode_returns: [N] float returns.
        group_ids: [N] long group labels (any integers, not necessarily contiguous).

    Returns:
        (advantages [N], keep [N] bool).
    """
    if episode_returns.ndim != 1 or group_ids.shape != episode_returns.shape:
        raise ValueError(
            f"episode_returns and group_ids must both be [N]; got {tuple(episode_returns.shape)}, "
            f"{tuple(group_ids.shape)}"
        )
    _, group = torch.unique(group_ids, return_inverse=True)
    n_groups = int(group.max()) + 1 if group.numel() else 0
    zeros = episode_returns.new_zeros(n_groups)
    counts = zeros.index_add(0, group, torch.ones_like(episode_returns))
    mean = (zeros.index_add(0, group, episode_returns) / counts)[group]
    std = (zeros.index_add(0, group, (episode_returns - mean) ** 2) / counts).sqrt()[group]
    g_max = zeros.scatter_reduce(0, group, episode_returns, "amax", include_self=False)[group]
    g_min = zeros.scatter_reduce(0, group, episode_returns, "amin", include_self=False)[group]
    keep = (g_max > g_min) & (std >= CONSTANT_GROUP_STD)
    advantages = torch.where(keep, (episode_returns - mean) / (std + eps), torch.zeros_like(episode_returns))
    return advantages, keep


def grpo_loss(
    new_log_probs: Tensor, old_log_probs: Tensor, advantages: Tensor, entropy: Tensor, **kwargs: Any
) -> tuple[Tensor, dict[str, float]]:
    """``ppo_loss`` with no critic: ``loss = L_pg - ent_coef * H`` (``vf_coef=0``, ``loss_value=0``).

    ``kwargs`` are forwarded to :func:`ppo_loss` (``level``, clip ranges, ``ent_coef``, ``weights``,
    ``is_weights``); the value arguments are fixed.
    """
    zeros = torch.zeros_like(advantages)
    return ppo_loss(
        new_log_probs,
        old_log_probs,
        advantages,
        zeros,
        zeros,
        zeros,
        entropy,
        value_clip=None,
        vf_coef=0.0,
        **kwargs,
    )


@ALGOS.register("grpo")
class GRPO(Algorithm):
    """Critic-free: env managers run groups of ``group_size`` episodes from one init state; every
    decision of an episode gets its group-normalized return (NaN, which the trainer drops, for
    signal-free groups and for groups with a quarantined episode); :func:`grpo_loss` (advantages
    used as they are, no value terms)."""

    needs_critic = False
    episode_mode = True

    @classmethod
    def check(cls, config: Config) -> None:
        if config.env.num_envs % config.algo.group_size:
            raise ValueError(
                f"algo.group_size: must divide env.num_envs={config.env.num_envs} for grpo "
                f"(got {config.algo.group_size})"
            )

    def advantages(self, seg: Segment, bootstrap: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        ep_return = (seg.rewards * seg.valid).sum(axis=0)
        adv, keep = grpo_advantages(torch.from_numpy(ep_return), torch.from_numpy(seg.group_ids))
        keep = keep.numpy()
        # An episode whose first decision is invalid was quarantined: its group has no baseline.
        lost = np.isin(seg.group_ids, seg.group_ids[~seg.valid[0]])
        adv_tn = np.broadcast_to(adv.numpy()[None, :], seg.rewards.shape).copy()
        adv_tn[:, ~keep | lost] = np.nan
        return adv_tn, np.zeros_like(adv_tn)

    def loss(
        self,
        log_probs: Tensor,
        old_log_probs: Tensor,
        entropy: Tensor,
        values: Tensor,
        batch: dict[str, Tensor],
        is_weights: Tensor | None,
    ) -> tuple[Tensor, dict[str, float]]:
        c = self.cfg
        return grpo_loss(
            log_probs,
            old_log_probs,
            batch["adv"].float(),
            entropy,
            level=c.logprob_level,
            clip_low=c.clip_low,
            clip_high=c.clip_high,
            ent_coef=c.ent_coef,
            is_weights=is_weights,
        )
