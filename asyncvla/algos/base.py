"""The algorithm interface and its registry (``ALGOS``, like ``ENVS`` and ``POLICIES``).

An algorithm tells the trainer these things, so the runtime never branches on its name:

* ``advantages(segment, bootstrap)``: per-decision advantages and value targets [T, n]
  (NaN where a decision carries no learning signal; the trainer drops those);
* ``needs_critic``: whether value estimates are used (bootstrap values, value loss);
* ``episode_mode``: whether env managers run whole episode groups that share an init state
  (``group_size`` envs per group) instead of fixed-length segments;
* ``loss(...)``: the minibatch loss from the policy's outputs and the stored sample columns;
* optionally ``needs_cost_critic`` with ``cost_advantages(segment, cost_bootstrap)`` (the policy is
  built with a cost head; samples gain ``cadv``, ``cret``, ``cvalues`` and, in ``loss``,
  ``cost_values_new``), ``end_update(episode_costs)`` (per-update state such as a Lagrange
  multiplier, returned as metrics) and ``state_dict`` / ``load_state_dict`` (checkpointed).

Adding one is one file with a subclass plus ``@ALGOS.register("name")`` and one import line in
``asyncvla/algos/__init__.py`` (or no line at all: ``algo.name: package.module:Class``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any

import numpy as np
from torch import Tensor

from asyncvla.registry import Registry

if TYPE_CHECKING:
    from asyncvla.config import AlgoConfig, Config
    from asyncvla.runtime.types import Segment


class Algorithm(ABC):
    """One instance per trainer, built from ``AlgoConfig`` (``ALGOS.get(name)(algo_cfg)``)."""

    needs_critic: bool = True
    episode_mode: bool = False
    needs_cost_critic: bool = False

    def __init__(self, cfg: AlgoConfig) -> None:
        self.cfg = cfg

    @classmethod  # noqa: B027 (an optional hook, empty by default)
    def check(cls, config: Config) -> None:
        """Refuse a config this algorithm cannot run: raise ``ValueError("key: why")``."""

    @abstractmethod
    def advantages(self, seg: Segment, bootstrap: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Advantages and value targets [T, n] for one segment (``bootstrap`` = V(obs after it))."""

    @abstractmethod
    def loss(
        self,
        log_probs: Tensor,
        old_log_probs: Tensor,
        entropy: Tensor,
        values: Tensor,
        batch: dict[str, Tensor],
        is_weights: Tensor | None,
    ) -> tuple[Tensor, dict[str, float]]:
        """Minibatch loss and python-float metrics.

        ``log_probs`` / ``entropy`` [B, K, A] and ``values`` [B] come from ``policy.evaluate``;
        ``old_log_probs`` are PPO's ratio denominators after the off-policy correction; ``batch``
        holds the sample columns (``adv``, ``ret``, ``values`` of the behaviour policy, ...).
        """

    def cost_advantages(self, seg: Segment, bootstrap: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Cost advantages and cost-value targets [T, n] (algorithms with ``needs_cost_critic``)."""
        raise NotImplementedError(f"{type(self).__name__} has no cost critic")

    def end_update(self, episode_costs: list[float]) -> dict[str, float]:
        """Called once per update with the costs of the episodes that finished in its batch."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        """JSON-able state that lives across updates (saved with the trainer checkpoint)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:  # noqa: B027 (optional hook)
        """Restore ``state_dict`` output (a resumed run)."""


ALGOS: Registry[type[Algorithm]] = Registry("algo")


def make_algo(cfg: AlgoConfig) -> Algorithm:
    return ALGOS.get(cfg.name)(cfg)
