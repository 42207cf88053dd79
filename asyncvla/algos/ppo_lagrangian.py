"""PPO-Lagrangian (Ray, Achiam & Amodei, 2019): PPO that keeps the mean episode cost at or below
``algo.cost_limit`` d, with a Lagrange multiplier learned by dual ascent (or PID, Stooke et al., 2020).

The constrained problem  max_pi J_r(pi)  s.t.  J_c(pi) <= d  becomes  min_{lambda >= 0} max_pi
J_r - lambda (J_c - d). Per update, with reward advantages A_r (GAE on rewards and the value head)
and cost advantages A_c (GAE on the env's per-step costs and the cost head)::

    A      = (norm(A_r) - lambda * norm(A_c)) / (1 + lambda)        (norm: per minibatch, zero mean, unit std)
    loss   = L_clip(A) + vf_coef * (L_v(V, R_r) + L_v(V_c, R_c)) - ent_coef * H

(``L_clip``, ``L_v`` as in :func:`asyncvla.algos.ppo.ppo_loss`; both advantages on one scale, so
lambda = 1 weighs cost and reward equally, and dividing by 1 + lambda keeps the step size bounded
when lambda grows). After the update the multiplier moves with the mean cost
J_c of the episodes that finished in the batch (e = J_c - d)::

    dual:  lambda <- max(0, lambda + lagrangian_lr * e)
    pid:   I <- max(0, I + e);  lambda <- max(0, kp * e + lagrangian_lr * I + kd * max(0, J_c - J_c_prev))

A batch in which no episode finished leaves lambda unchanged. lambda, I and J_c_prev are part of the
trainer checkpoint (``state_dict``), so a resumed run continues them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from torch import Tensor

from asyncvla.algos.base import ALGOS
from asyncvla.algos.ppo import PPO, value_errors

if TYPE_CHECKING:
    from asyncvla.config import Config
    from asyncvla.runtime.types import Segment


def update_multiplier(
    lam: float,
    integral: float,
    prev_cost: float | None,
    cost: float,
    limit: float,
    *,
    lr: float,
    kp: float,
    kd: float,
    pid: bool,
) -> tuple[float, float]:
    """One step of the multiplier: returns (lambda, integral) (see the module docstring)."""
    e = cost - limit
    if not pid:
        return max(0.0, lam + lr * e), integral
    integral = max(0.0, integral + e)
    derivative = max(0.0, cost - prev_cost) if prev_cost is not None else 0.0
    return max(0.0, kp * e + lr * integral + kd * derivative), integral


@ALGOS.register("ppo_lagrangian")
class PPOLagrangian(PPO):
    """PPO with a cost critic and a learned Lagrange multiplier (``lagrange_multiplier`` per row)."""

    needs_cost_critic = True

    def __init__(self, cfg: Any) -> None:
        super().__init__(cfg)
        self.multiplier = float(cfg.lagrange_init)
        self.integral = 0.0
        self.prev_cost: float | None = None

    @classmethod
    def check(cls, config: Config) -> None:
        if config.algo.cost_limit is None:
            raise ValueError("algo.cost_limit: ppo_lagrangian needs the mean episode cost to stay below")

    def cost_advantages(self, seg: Segment, bootstrap: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Cost advantages and cost-value targets [T, n]: GAE over the segment's per-step costs."""
        return self.gae(seg.costs, seg.cost_values, seg, bootstrap)

    def loss(
        self,
        log_probs: Tensor,
        old_log_probs: Tensor,
        entropy: Tensor,
        values: Tensor,
        batch: dict[str, Tensor],
        is_weights: Tensor | None,
    ) -> tuple[Tensor, dict[str, float]]:
        lam = self.multiplier
        combined = (self.normalized(batch["adv"]) - lam * self.normalized(batch["cadv"])) / (1.0 + lam)
        loss, m = self.clipped_loss(combined, log_probs, old_log_probs, entropy, values, batch, is_weights)
        c_err = value_errors(
            batch["cost_values_new"], batch["cvalues"], batch["cret"].float(), self.cfg.value_clip
        )
        loss_cost_value = c_err.mean()
        m["loss_cost_value"] = loss_cost_value.item()
        return loss + self.cfg.vf_coef * loss_cost_value, m

    def end_update(self, episode_costs: list[float]) -> dict[str, float]:
        """Move the multiplier with the batch's finished episodes; metrics of this update."""
        c = self.cfg
        out = {"lagrange_multiplier": self.multiplier, "cost_limit": float(c.cost_limit)}
        if episode_costs:
            cost = float(np.mean(episode_costs))
            self.multiplier, self.integral = update_multiplier(
                self.multiplier,
                self.integral,
                self.prev_cost,
                cost,
                float(c.cost_limit),
                lr=c.lagrangian_lr,
                kp=c.lagrangian_kp,
                kd=c.lagrangian_kd,
                pid=c.lagrangian == "pid",
            )
            self.prev_cost = cost
            out["batch_episode_cost"] = cost
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"multiplier": self.multiplier, "integral": self.integral, "prev_cost": self.prev_cost}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not state:  # a checkpoint of another algorithm: start from lagrange_init
            return
        self.multiplier = float(state["multiplier"])
        self.integral = float(state["integral"])
        self.prev_cost = None if state.get("prev_cost") is None else float(state["prev_cost"])
