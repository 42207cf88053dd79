"""PPO clipped surrogate loss (Schulman et al., 2017) over action-chunk policies.

Policies report per-token log-probs [B, K, A] (K actions per chunk, A dims per action); ``level``
picks the unit the importance ratio is taken over: one token, one action, or the whole chunk.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from asyncvla.algos.base import ALGOS, Algorithm
from asyncvla.algos.gae import compute_gae

if TYPE_CHECKING:
    from asyncvla.runtime.types import Segment

LEVELS = ("token", "action", "chunk")


def reduce_log_probs(lp: Tensor, level: str) -> Tensor:
    """Sum per-token log-probs [B, K, A] up to ``level`` (log of a product of token probabilities).

    - ``"token"``:  ``lp``                      -> [B, K, A]
    - ``"action"``: ``sum_a lp[b, k, a]``       -> [B, K]
    - ``"chunk"``:  ``sum_{k,a} lp[b, k, a]``   -> [B]
    """
    if lp.ndim != 3:
        raise ValueError(f"log-probs must be [B, K, A]; got shape {tuple(lp.shape)}")
    if level == "token":
        return lp
    if level == "action":
        return lp.sum(dim=2)
    if level == "chunk":
        return lp.sum(dim=(1, 2))
    raise ValueError(f"unknown level {level!r}; allowed: {', '.join(LEVELS)}")


def _per_sample(x: Tensor, like: Tensor) -> Tensor:
    """View a per-sample tensor [B] as [B, 1, ...] so it broadcasts against ``like`` [B, ...]."""
    return x.reshape(x.shape + (1,) * (like.ndim - 1))


def _weighted_mean(x: Tensor, weights: Tensor | None) -> Tensor:
    """``sum(w * x) / sum(w)`` over all elements of x [B, ...], with per-sample ``w`` [B] broadcast.

    ``weights=None`` is the plain mean. An all-zero ``w`` gives 0 (the denominator is clamped),
    so a micro-batch with nothing to learn from contributes no gradient instead of NaN.
    """
    if weights is None:
        return x.mean()
    w = _per_sample(weights.to(x.dtype), x).expand_as(x)
    return (w * x).sum() / w.sum().clamp_min(torch.finfo(x.dtype).tiny)


def value_errors(new_values: Tensor, old_values: Tensor, returns: Tensor, value_clip: float | None) -> Tensor:
    """Per-sample ``0.5 * max((V - R)^2, (V_old + clip(V - V_old, -c, c) - R)^2)`` (``c =
    value_clip``; ``0.5 * (V - R)^2`` without clipping): the value loss of :func:`ppo_loss`."""
    err = (new_values - returns) ** 2
    if value_clip is not None:
        clipped = old_values + (new_values - old_values).clamp(-value_clip, value_clip)
        err = torch.max(err, (clipped - returns) ** 2)
    return 0.5 * err


def ppo_loss(
    new_log_probs: Tensor,
    old_log_probs: Tensor,
    advantages: Tensor,
    new_values: Tensor,
    old_values: Tensor,
    returns: Tensor,
    entropy: Tensor,
    *,
    level: str = "chunk",
    clip_low: float = 0.2,
    clip_high: float = 0.28,
    value_clip: float | None = 0.2,
    vf_coef: float = 0.5,
    ent_coef: float = 0.0,
    weights: Tensor | None = None,
    is_weights: Tensor | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """PPO loss with asymmetric ("clip-higher") ratio clipping and optional value clipping.

    With log-probs reduced to ``level`` (see :func:`reduce_log_probs`) and ``A`` the advantage of
    the sample broadcast over the remaining dims::

        r    = exp(logp_new - logp_old)
        L_pg = mean_w( -rho * min(r * A, clip(r, 1 - clip_low, 1 + clip_high) * A) )
        L_v  = mean_w( 0.5 * max((V - R)^2, (V_old + clip(V - V_old, -c, c) - R)^2) )   (c = value_clip)
             = mean_w( 0.5 * (V - R)^2 )                                                 (value_clip=None)
        H    = mean_w( entropy per token )
        loss = L_pg + vf_coef * L_v - ent_coef * H

    ``mean_w`` is the weighted mean ``sum(w * x) / sum(w)`` with per-sample ``weights`` (plain mean
    if None), e.g. 0 for padding rows of a partial micro-batch. ``rho`` = ``is_weights`` (detached,
    1 if None) are off-policy importance weights multiplying each sample's policy loss.

    Args:
        new_log_probs, old_log_probs, entropy: [B, K, A] per-token.
        advantages, new_values, old_values, returns: [B].
        weights, is_weights: optional [B].

    Returns:
        (loss, metrics) with python-float metrics ``loss_policy``, ``loss_value``, ``entropy``,
        ``approx_kl`` (k3 estimator ``mean_w((r - 1) - log r)``), ``clipfrac`` (fraction of ratios
        outside ``[1 - clip_low, 1 + clip_high]``) and ``ratio_mean``, all at ``level``.
    """
    if not (new_log_probs.shape == old_log_probs.shape == entropy.shape) or new_log_probs.ndim != 3:
        raise ValueError(
            f"new_log_probs, old_log_probs, entropy must all be [B, K, A]; got {tuple(new_log_probs.shape)}, "
            f"{tuple(old_log_probs.shape)}, {tuple(entropy.shape)}"
        )
    per_sample = {
        "advantages": advantages,
        "new_values": new_values,
        "old_values": old_values,
        "returns": returns,
        "weights": weights,
        "is_weights": is_weights,
    }
    for name, x in per_sample.items():
        if x is not None and x.shape != new_log_probs.shape[:1]:
            raise ValueError(f"{name} must be [B]={new_log_probs.shape[0]}; got {tuple(x.shape)}")

    log_ratio = reduce_log_probs(new_log_probs, level) - reduce_log_probs(old_log_probs, level)
    ratio = log_ratio.exp()
    adv = _per_sample(advantages, ratio)
    surrogate = torch.min(ratio * adv, ratio.clamp(1.0 - clip_low, 1.0 + clip_high) * adv)
    pg_per = -surrogate
    if is_weights is not None:
        pg_per = pg_per * _per_sample(is_weights.detach(), pg_per)
    loss_policy = _weighted_mean(pg_per, weights)

    loss_value = _weighted_mean(value_errors(new_values, old_values, returns, value_clip), weights)

    mean_entropy = _weighted_mean(entropy, weights)
    loss = loss_policy + vf_coef * loss_value - ent_coef * mean_entropy

    with torch.no_grad():
        approx_kl = _weighted_mean(torch.expm1(log_ratio) - log_ratio, weights)  # (r - 1) - log r
        clipped = ((ratio < 1.0 - clip_low) | (ratio > 1.0 + clip_high)).to(ratio.dtype)
        metrics = {
            "loss_policy": loss_policy.item(),
            "loss_value": loss_value.item(),
            "entropy": mean_entropy.item(),
            "approx_kl": approx_kl.item(),
            "clipfrac": _weighted_mean(clipped, weights).item(),
            "ratio_mean": _weighted_mean(ratio, weights).item(),
        }
    return loss, metrics


@ALGOS.register("ppo")
class PPO(Algorithm):
    """PPO with a critic: GAE advantages over each segment, bootstrapped with V(obs after it);
    advantages normalized per minibatch (``algo.normalize_advantages``); :func:`ppo_loss`."""

    def advantages(self, seg: Segment, bootstrap: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.gae(seg.rewards, seg.values, seg, bootstrap)

    def gae(
        self, rewards: np.ndarray, values: np.ndarray, seg: Segment, bootstrap: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """GAE of per-step ``rewards`` [T, n] with ``values`` over the segment's episode ends."""
        adv, ret = compute_gae(
            torch.from_numpy(rewards),
            torch.from_numpy(values),
            torch.from_numpy(seg.dones),
            torch.from_numpy(np.asarray(bootstrap, dtype=np.float32)),
            gamma=self.cfg.gamma,
            lam=self.cfg.gae_lambda,
        )
        return adv.numpy(), ret.numpy()

    def loss(
        self,
        log_probs: Tensor,
        old_log_probs: Tensor,
        entropy: Tensor,
        values: Tensor,
        batch: dict[str, Tensor],
        is_weights: Tensor | None,
    ) -> tuple[Tensor, dict[str, float]]:
        return self.clipped_loss(
            self.normalized(batch["adv"]), log_probs, old_log_probs, entropy, values, batch, is_weights
        )

    def normalized(self, adv: Tensor) -> Tensor:
        """Per-minibatch zero mean, unit std (``algo.normalize_advantages``)."""
        adv = adv.float()
        if self.cfg.normalize_advantages and adv.numel() > 1:
            adv = (adv - adv.mean()) / (adv.std() + 1e-8)
        return adv

    def clipped_loss(
        self,
        adv: Tensor,
        log_probs: Tensor,
        old_log_probs: Tensor,
        entropy: Tensor,
        values: Tensor,
        batch: dict[str, Tensor],
        is_weights: Tensor | None,
    ) -> tuple[Tensor, dict[str, float]]:
        """:func:`ppo_loss` with advantages ``adv`` and the config's clipping and coefficients."""
        c = self.cfg
        return ppo_loss(
            log_probs,
            old_log_probs,
            adv,
            values,
            batch["values"],
            batch["ret"].float(),
            entropy,
            level=c.logprob_level,
            clip_low=c.clip_low,
            clip_high=c.clip_high,
            value_clip=c.value_clip,
            vf_coef=c.vf_coef,
            ent_coef=c.ent_coef,
            is_weights=is_weights,
        )
