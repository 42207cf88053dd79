"""Data that crosses worker boundaries. Small, typed, free of model- or env-specific fields.

Shapes: n = envs in the request/segment, T = decisions in a segment, K = chunk size,
A = action dim.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from asyncvla.envs.base import ObsBatch


@dataclass
class ObsRequest:
    manager_id: int
    request_id: int
    env_ids: np.ndarray
    """int64 [n]: global env ids (routing key: every reply goes back to these envs)."""
    obs: ObsBatch
    shard: int = 0
    """Which part of the manager's envs (a manager may be split across rollout workers)."""
    target_version: int | None = None
    """The trainer version that trains this decision's segment; a rollout worker at version v
    serves it only if ``target_version <= v + max_staleness`` (None: no bound, e.g. evaluation)."""
    prev_actions: np.ndarray | None = None
    """float32 [n, A]: each env's last executed action (with the action shield: its context)."""

    @property
    def num_samples(self) -> int:
        return len(self.env_ids)


@dataclass
class ActionReply:
    manager_id: int
    request_id: int
    env_ids: np.ndarray
    actions: np.ndarray
    """float32 [n, K, A]."""
    log_probs: np.ndarray
    """float32 [n, K, A] behaviour log-probs per token."""
    values: np.ndarray
    """float32 [n]."""
    version: int
    """Behaviour policy version."""
    shard: int = 0
    features: dict[str, np.ndarray] | None = None
    """The policy's ``frozen_features`` rows of the request's observations (``train.ship_features``)."""
    cost_values: np.ndarray | None = None
    """float32 [n]: the cost critic's estimates (policies with a cost critic)."""
    shielded: np.ndarray | None = None
    """bool [n]: the action shield changed the chunk (``actions`` and ``log_probs`` are then those
    of the executed, projected chunk)."""


@dataclass
class Segment:
    """T decisions of n envs of one manager, in time-major layout."""

    manager_id: int
    segment_id: int
    env_ids: np.ndarray
    """int64 [n]."""
    obs: ObsBatch
    """Each array [T, n, ...]; ``instruction`` is a list of T lists of n strings."""
    actions: np.ndarray
    """float32 [T, n, K, A]."""
    log_probs: np.ndarray
    """float32 [T, n, K, A] behaviour log-probs."""
    values: np.ndarray
    """float32 [T, n] behaviour values."""
    rewards: np.ndarray
    """float32 [T, n]: reward summed over the executed actions of each chunk."""
    dones: np.ndarray
    """bool [T, n]: the episode ended after this decision (no bootstrap past it)."""
    costs: np.ndarray
    """float32 [T, n]."""
    versions: np.ndarray
    """int64 [T, n]: behaviour version of each decision."""
    valid: np.ndarray
    """bool [T, n]: False where the env was already done (episode-mode padding)."""
    env_steps: int
    """Actions executed by the simulator in this segment."""
    bootstrap_value: np.ndarray | None
    """float32 [n]: V(obs after the last decision); ignored where ``dones[-1]``. None: the trainer
    computes it from ``bootstrap_obs`` with the weights it trains with."""
    bootstrap_obs: ObsBatch | None = None
    """Observations after the last decision (arrays [n, ...])."""
    target_version: int = 0
    """Ticket: the trainer version (global batch) this segment is trained at."""
    ticket_id: int = 0
    closes_batch: bool = False
    batch_tickets: int = 0
    """If ``closes_batch``: the number of segments in its global batch."""
    group_ids: np.ndarray | None = None
    """int64 [n] (GRPO, episode mode): envs with the same id started from the same init state."""
    features: dict[str, np.ndarray] | None = None
    """Each array [T, n, ...]: the policy's ``frozen_features`` of ``obs``, as the rollout workers
    returned them (None unless every decision's reply carried them)."""
    cost_values: np.ndarray | None = None
    """float32 [T, n]: behaviour cost-value estimates (None unless the policy has a cost critic)."""
    shield_interventions: int = 0
    """Decisions whose chunk the action shield changed."""
    episodes: dict[str, list[float]] = field(
        default_factory=lambda: {"return": [], "length": [], "success": [], "cost": []}
    )
    """Episodes that ended inside this segment."""
    quarantined: int = 0
    """Decisions marked invalid (never trained) because their env returned a non-finite
    observation, reward or cost: the bad step and the earlier decisions of its episode here."""

    @property
    def num_samples(self) -> int:
        return int(self.valid.sum())

    def flat_obs(self) -> ObsBatch:
        """Obs with time and env merged: arrays [T*n, ...], instruction list of T*n."""
        out: dict[str, Any] = {}
        for k, v in self.obs.items():
            if k == "instruction":
                out[k] = [s for row in v for s in row]
            else:
                out[k] = v.reshape(-1, *v.shape[2:])
        return out


def concat_obs(batches: list[ObsBatch]) -> ObsBatch:
    """Concatenate observation batches along the env axis."""
    out: dict[str, Any] = {}
    for k in batches[0]:
        if k == "instruction":
            out[k] = [s for b in batches for s in b[k]]
        else:
            out[k] = np.concatenate([b[k] for b in batches])
    return out


def take_obs(obs: ObsBatch, idx: np.ndarray | list[int]) -> ObsBatch:
    """Select envs ``idx`` of an observation batch (arrays indexed, instruction list gathered)."""
    return {k: ([v[i] for i in idx] if k == "instruction" else v[idx]) for k, v in obs.items()}
