"""Off-policy corrections for stale samples (behaviour version v < trainer version u).

Decoupled PPO (Hilton et al., 2022; AReaL) separates the *behaviour* policy mu that acted from
the *proximal* policy pi_prox that PPO's trust region is centred on::

    r    = pi_theta / pi_prox                 (clipped as usual)
    w    = pi_prox / mu                       (importance weight, no gradient)
    L_pg = mean( -w * min(r * A, clip(r) * A) )

``tis`` truncates the weight, ``w = min(pi_prox / mu, cap)`` (truncated importance sampling).
Samples with v == u are on-policy: pi_prox = mu and w = 1 exactly.

pi_prox is the policy the batch starts from (version u). It is either recomputed with a no-grad
forward, or interpolated in log space between mu (d = u - v versions old) and the current policy,
``log pi_prox = log mu + d / (d + 1) * (log pi_theta - log mu)`` (no extra forward; exact for d = 0).
"""

from __future__ import annotations

from torch import Tensor

from asyncvla.algos.ppo import reduce_log_probs


def interpolated_proximal(behaviour: Tensor, current: Tensor, gap: Tensor) -> Tensor:
    """Proximal per-token log-probs [B, K, A] from behaviour and (detached) current log-probs.

    ``gap`` [B] is the version gap d = u - v of each sample.
    """
    alpha = (gap.to(behaviour.dtype) / (gap.to(behaviour.dtype) + 1.0)).reshape(-1, 1, 1)
    return behaviour + alpha * (current.detach() - behaviour)


def importance_weights(proximal: Tensor, behaviour: Tensor, cap: float | None = None) -> Tensor:
    """Per-sample w = pi_prox / mu over the whole chunk ([B]); truncated at ``cap`` if given."""
    log_w = reduce_log_probs(proximal, "chunk") - reduce_log_probs(behaviour, "chunk")
    w = log_w.clamp(max=20.0).exp()
    return w if cap is None else w.clamp(max=cap)


def correction(
    method: str,
    behaviour: Tensor,
    proximal: Tensor,
    cap: float,
) -> tuple[Tensor, Tensor | None]:
    """(old log-probs for the PPO ratio, importance weights or None) for ``algo.off_policy``."""
    if method == "none":
        return behaviour, None
    if method == "decoupled":
        return proximal, importance_weights(proximal, behaviour)
    if method == "tis":
        return proximal, importance_weights(proximal, behaviour, cap)
    raise ValueError(f"unknown off_policy {method!r}; allowed: none, decoupled, tis")


__all__ = ["correction", "importance_weights", "interpolated_proximal"]
