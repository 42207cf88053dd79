"""EmulatedPolicy: a policy whose compute is a *sampled duration on a named virtual device*.

It stands in for a large VLA on an accelerator so the real runtime (the same actors, batching,
staleness gate and trainer) can be benchmarked on any machine:

* ``act`` (rollout): holds the rollout device for ``infer(B / gpus)`` seconds;
* ``evaluate`` (trainer, one call per micro-batch): holds the trainer device for
  ``train(B / gpus)`` seconds with gradients on, ``nograd_factor`` times that without (the
  proximal-policy recomputation is a forward only);
* ``load_state_dict`` on the rollout side (adopting published weights): holds the rollout device
  for ``sync_s`` seconds;
* ``act`` called by the trainer (the bootstrap value of a segment) holds the trainer device for
  ``bootstrap_factor * infer(B / gpus)`` seconds.

Each cost model is ``asyncvla.runtime.costs.CostModel``, ``max(floor_s, a_s + b_s * x)`` for a
per-GPU batch of ``x`` samples: data parallelism over ``gpus`` devices splits the batch. ``colocated`` is the same device name for the
rollout and the trainer (they exclude each other); ``disaggregated`` is two names.

The outputs are a valid Gaussian policy for PPO: a real (tiny) mean, log-std and value parameter,
per-token log-probs [B, K, A] and entropy [B, K, A] of ``torch.distributions.Normal``, values [B];
``act`` and ``evaluate`` agree.

Which role a copy plays comes from ``role`` if given, else from the runtime's ``on_placed`` hint
(the worker that built it: rollout or trainer), else from the method (act: rollout, evaluate:
trainer). Use it as the plug-in ``policy.name: asyncvla.bench.emulated:EmulatedPolicy``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.distributions import Normal

from asyncvla.bench.vdevice import device
from asyncvla.envs.base import ObsBatch
from asyncvla.policies.base import ActOutput, EvalOutput, Policy
from asyncvla.runtime.costs import CostModel

ROLES = ("rollout", "trainer")


class EmulatedPolicy(Policy):
    def __init__(
        self,
        vocabulary: list[str] | None = None,
        image_size: int = 64,
        image_keys: list[str] | None = None,
        state_dim: int = 6,
        action_dim: int = 3,
        action_low: list[float] | None = None,
        action_high: list[float] | None = None,
        chunk_size: int = 4,
        *,
        infer: Mapping[str, float] | None = None,
        train: Mapping[str, float] | None = None,
        nograd_factor: float = 1.0 / 3.0,
        bootstrap_factor: float = 1.0,
        sync_s: float = 0.0,
        devices: Mapping[str, str] | None = None,
        gpus: Mapping[str, float] | None = None,
        role: str | None = None,
        run_id: str = "default",
        lock_dir: str | None = None,
        hold_log: bool = False,
        init_log_std: float = -0.5,
    ) -> None:
        super().__init__()
        del vocabulary, image_keys  # accepted (the generic policy kwargs), not needed
        self.image_size = int(image_size)
        self.state_dim = int(state_dim)
        self.chunk_size = int(chunk_size)
        self.action_dim = int(action_dim)
        if self.chunk_size < 1 or self.action_dim < 1:
            raise ValueError("chunk_size and action_dim must be >= 1")
        self.action_low = [float(v) for v in (action_low or [-1.0] * self.action_dim)]
        self.action_high = [float(v) for v in (action_high or [1.0] * self.action_dim)]
        self.infer_cost = CostModel.from_dict(infer, "infer")
        self.train_cost = CostModel.from_dict(train, "train")
        for name, v in (
            ("nograd_factor", nograd_factor),
            ("bootstrap_factor", bootstrap_factor),
            ("sync_s", sync_s),
        ):
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
        self.nograd_factor = float(nograd_factor)
        self.bootstrap_factor = float(bootstrap_factor)
        self.sync_s = float(sync_s)
        devices = dict(devices or {"rollout": "dev0", "trainer": "dev0"})
        gpus = dict(gpus or {})
        for mapping, what in ((devices, "devices"), (gpus, "gpus")):
            if set(mapping) - set(ROLES):
                raise ValueError(f"{what} keys must be among {ROLES}, got {sorted(mapping)}")
        self.devices = {r: str(devices.get(r, "dev0")) for r in ROLES}
        self.gpus = {r: float(gpus.get(r, 1.0)) for r in ROLES}
        if any(g <= 0 for g in self.gpus.values()):
            raise ValueError(f"gpus must be > 0, got {self.gpus}")
        if role is not None and role not in ROLES:
            raise ValueError(f"role must be one of {ROLES} or None, got {role!r}")
        self.role = role
        self.run_id = str(run_id)
        self.lock_dir = None if lock_dir is None else str(lock_dir)
        self.hold_log = bool(hold_log)
        self.init_log_std = float(init_log_std)
        k, a = self.chunk_size, self.action_dim
        self.mean = nn.Parameter(torch.zeros(k, a))
        self.log_std = nn.Parameter(torch.full((k, a), self.init_log_std))
        self.value = nn.Parameter(torch.zeros(1))
        self._placed: str | None = None

    # -- roles and devices -------------------------------------------------------------------------
    def on_placed(self, role: str) -> None:
        """The runtime's hint of this copy's role ('rollout' or 'trainer'); wins over detection."""
        if role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}, got {role!r}")
        self._placed = role  # not in init_kwargs: a checkpoint does not remember where it ran

    def _role(self, default: str) -> str:
        if self.role is not None:
            return self.role
        return self._placed or default

    def _device(self, role: str):
        return device(self.devices[role], self.run_id, self.lock_dir, self.hold_log)

    def stage_cost_s(self, op: str, samples: int, role: str | None = None, grad: bool = True) -> float:
        """The seconds ``op`` (act / evaluate / load) holds its device for ``samples`` samples."""
        if op == "load":
            return self.sync_s if (role or "rollout") == "rollout" else 0.0
        role = role or ("rollout" if op == "act" else "trainer")
        x = samples / self.gpus[role]
        if op == "act":
            c = self.infer_cost(x)
            return c * self.bootstrap_factor if role == "trainer" else c
        if op == "evaluate":
            c = self.train_cost(x)
            return c if grad else c * self.nograd_factor
        raise ValueError(f"unknown op {op!r}")

    # -- the distribution --------------------------------------------------------------------------
    def _dist(self, b: int) -> Normal:
        """The per-token Gaussian of a batch of ``b``: mean and std [b, K, A]."""
        mean = self.mean.unsqueeze(0).expand(b, -1, -1)
        std = self.log_std.clamp(-5.0, 2.0).exp().unsqueeze(0).expand(b, -1, -1)
        return Normal(mean, std)

    # -- the Policy interface ----------------------------------------------------------------------
    def act(self, obs: ObsBatch, deterministic: bool = False, with_features: bool = False) -> ActOutput:
        b = int(len(obs["state"]))
        role = self._role("rollout")
        seconds = self.stage_cost_s("act", b, role)
        with self._device(role).hold(op="act", role=role, samples=b) as h:
            with torch.no_grad():
                dist = self._dist(b)
                actions = dist.mean if deterministic else dist.sample()
                lp = dist.log_prob(actions)
                values = self.value.expand(b)
            out = ActOutput(
                actions=actions.detach().numpy().astype(np.float32),
                log_probs=lp.detach().numpy().astype(np.float32),
                values=values.detach().numpy().astype(np.float32).copy(),
                version=int(self.version),
            )
            h.occupy(seconds)
        return out

    def evaluate(
        self,
        obs: ObsBatch,
        actions: np.ndarray | torch.Tensor,
        features: dict[str, torch.Tensor] | None = None,
    ) -> EvalOutput:
        a = torch.as_tensor(np.asarray(actions) if not isinstance(actions, torch.Tensor) else actions)
        a = a.float()
        b = int(a.shape[0])
        role = self._role("trainer")
        grad = torch.is_grad_enabled()
        seconds = self.stage_cost_s("evaluate", b, role, grad=grad)
        with self._device(role).hold(op="evaluate" if grad else "evaluate_nograd", role=role, samples=b) as h:
            dist = self._dist(b)
            lp = dist.log_prob(a)
            entropy = dist.entropy()
            values = self.value.expand(b)
            h.occupy(seconds)
        return EvalOutput(log_probs=lp, entropy=entropy, values=values)

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False):
        role = self._role("rollout")
        seconds = self.stage_cost_s("load", 0, role)
        if seconds <= 0:
            return super().load_state_dict(state_dict, strict=strict, assign=assign)
        with self._device(role).hold(op="sync", role=role) as h:
            result = super().load_state_dict(state_dict, strict=strict, assign=assign)
            h.occupy(seconds)
        return result

    def init_kwargs(self) -> dict[str, Any]:
        return {
            "image_size": self.image_size,
            "state_dim": self.state_dim,
            "action_dim": self.action_dim,
            "action_low": list(self.action_low),
            "action_high": list(self.action_high),
            "chunk_size": self.chunk_size,
            "infer": self.infer_cost.to_dict(),
            "train": self.train_cost.to_dict(),
            "nograd_factor": self.nograd_factor,
            "bootstrap_factor": self.bootstrap_factor,
            "sync_s": self.sync_s,
            "devices": dict(self.devices),
            "gpus": dict(self.gpus),
            "role": self.role,
            "run_id": self.run_id,
            "lock_dir": self.lock_dir,
            "hold_log": self.hold_log,
            "init_log_std": self.init_log_std,
        }
