"""The one Policy interface: ``act`` for rollout, ``evaluate`` for training.

Log-probs and entropies are returned per action *token* ([B, K, A]: one per action dimension of
each action of the chunk); the algorithms sum them to token, action or chunk level by config.
"""

from __future__ import annotations

import json
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from asyncvla.config import CheckpointError
from asyncvla.envs.base import ObsBatch


@dataclass
class ActOutput:
    actions: np.ndarray
    """float32 [B, K, A], inside the env's action space."""
    log_probs: np.ndarray
    """float32 [B, K, A], per-token log-probs of ``actions`` under the behaviour policy."""
    values: np.ndarray
    """float32 [B], value estimates of the observations."""
    version: int
    """Policy version (number of optimizer steps of the weights) that produced the actions."""
    features: dict[str, np.ndarray] | None = None
    """``frozen_features`` of the observations (rows as in ``actions``) when ``act`` was asked for
    them and the policy can return them from the forward it ran anyway; else None."""
    cost_values: np.ndarray | None = None
    """float32 [B], the cost critic's estimates (policies built with ``cost_critic=True``)."""


@dataclass
class EvalOutput:
    log_probs: torch.Tensor
    """[B, K, A] per-token log-probs of the given actions (differentiable)."""
    entropy: torch.Tensor
    """[B, K, A] per-token entropy."""
    values: torch.Tensor
    """[B] value estimates."""
    cost_values: torch.Tensor | None = None
    """[B] cost-value estimates (policies built with ``cost_critic=True``), else None."""


class Policy(nn.Module, ABC):
    """Base class: subclasses set ``chunk_size``, ``action_dim`` and implement the three methods."""

    chunk_size: int
    action_dim: int

    def __init__(self) -> None:
        super().__init__()
        self.version = 0

    @abstractmethod
    def act(self, obs: ObsBatch, deterministic: bool = False, with_features: bool = False) -> ActOutput:
        """Sample (or, deterministically, take the mode of) an action chunk per observation.
        ``with_features``: also return ``frozen_features`` where this forward computes them anyway
        (rollout workers ship them to the trainer with the segment)."""

    @abstractmethod
    def evaluate(
        self,
        obs: ObsBatch,
        actions: np.ndarray | torch.Tensor,
        features: dict[str, torch.Tensor] | None = None,
    ) -> EvalOutput:
        """Log-probs, entropy and values of ``actions`` [B, K, A] under the current weights.

        ``features``: this policy's own ``frozen_features`` of the same observations (rows in the
        same order); the frozen part is then read from them instead of being recomputed, with the
        same result."""

    def frozen_features(self, obs: ObsBatch) -> dict[str, torch.Tensor] | None:
        """Outputs of the frozen part of the network (parameters with ``requires_grad=False``), one
        row per observation along dim 0, for ``evaluate(..., features=...)``. The trainer computes
        them once per sample per update and reuses them across epochs, minibatches and the proximal
        recompute; rows may be taken and concatenated freely. None (the default): nothing to reuse.
        """
        return None

    def mean_action(self, obs: ObsBatch, images: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """The action chunk [B, K, A] as a differentiable function of the images: the deterministic
        action, or for a discrete head its smooth counterpart (the expectation over the bins).

        ``images``: float [B, H, W, 3] in [0, 1] per camera key, read instead of the uint8
        ``obs[key]`` (same layout, divided by 255); gradients flow back to them. Used by
        ``asyncvla explain`` (integrated gradients). Optional: policies without it raise."""
        raise NotImplementedError(
            f"{type(self).__name__} has no differentiable mean_action (needed by `asyncvla explain`)"
        )

    def on_placed(self, role: str) -> None:  # noqa: B027 (optional hook, empty by default)
        """Called by the runtime once a worker holds this copy (``"rollout"`` or ``"trainer"``)."""

    @abstractmethod
    def init_kwargs(self) -> dict[str, Any]:
        """JSON-serializable constructor kwargs, enough to rebuild the module for a checkpoint."""

    def sync_state_dict(self) -> dict[str, torch.Tensor]:
        """What the trainer publishes to rollout workers after an update: the state dict without
        frozen parameters (``requires_grad=False``: never updated, so every worker's copy, built from
        the same kwargs and initial weights, already holds them; e.g. a LoRA-tuned VLM sends only the
        adapters and heads). Checkpoints keep the full ``state_dict``."""
        frozen = {n for n, p in self.named_parameters() if not p.requires_grad}
        return {k: v for k, v in self.state_dict().items() if k not in frozen}

    def load_sync_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Load ``sync_state_dict`` output (or a full state dict); only frozen entries may be absent."""
        missing, unexpected = self.load_state_dict(state, strict=False)
        frozen = {n for n, p in self.named_parameters() if not p.requires_grad}
        missing = [k for k in missing if k not in frozen]
        if missing or unexpected:
            raise RuntimeError(
                f"published weights do not fit: missing {missing[:3]}, unexpected {unexpected[:3]}"
            )


def save_policy(policy: Policy, directory: str | Path, name: str) -> Path:
    """Write ``model.safetensors`` + ``policy.json`` (registry name, kwargs, version), each
    atomically (written beside, then renamed)."""
    from asyncvla.rundir import atomic_write_text

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in policy.state_dict().items()}
    tmp = d / ".model.safetensors.tmp"
    save_file(state, str(tmp))
    os.replace(tmp, d / "model.safetensors")
    meta = {"name": name, "kwargs": policy.init_kwargs(), "version": int(policy.version)}
    atomic_write_text(d / "policy.json", json.dumps(meta, indent=2))
    return d


def load_policy(directory: str | Path) -> Policy:
    """Rebuild a policy from ``save_policy`` output (safetensors + JSON, never pickle)."""
    from asyncvla.policies import POLICIES

    d = Path(directory)
    meta_path = d / "policy.json"
    if not meta_path.is_file():
        raise FileNotFoundError(f"{d} is not a policy checkpoint (no policy.json)")
    weights = d / "model.safetensors"
    if not weights.is_file():
        raise FileNotFoundError(f"{d} is not a policy checkpoint (no model.safetensors)")
    try:
        meta = json.loads(meta_path.read_text())
        name, kwargs = meta["name"], meta["kwargs"]
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{meta_path}: not a policy.json (name and kwargs): {e}") from None
    try:
        cls = POLICIES.get(name)
    except KeyError as e:
        raise CheckpointError(f"{meta_path}: {e.args[0]}") from None
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{weights}: unreadable (truncated or not safetensors): {e}") from None
    try:
        policy = cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{meta_path}: kwargs do not build a {name} policy: {e}") from None
    try:
        policy.load_state_dict(state)
    except RuntimeError as e:
        first = next((ln.strip() for ln in str(e).splitlines()[1:] if ln.strip()), str(e))
        raise CheckpointError(
            f"{weights} does not fit the {name} architecture of policy.json: {first}"
        ) from None
    policy.version = int(meta.get("version", 0))
    return policy
