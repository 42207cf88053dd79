"""Weight transport: trainer -> rollout workers, with a version number.

``pack`` turns a state dict into plain numpy arrays plus dtype names; Ray serializes that dict
with pickle protocol 5, whose out-of-band buffers carry the arrays through the object store
without copying them. Nothing a worker unpacks comes from outside the run: every payload was
packed by this run's trainer or driver. A collective (NCCL/gloo broadcast) transport would
implement the same two functions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch


def pack(state_dict: dict[str, torch.Tensor]) -> dict[str, Any]:
    arrays, dtypes = {}, {}
    for k, v in state_dict.items():
        t = v.detach().cpu().contiguous()
        dtypes[k] = str(t.dtype).removeprefix("torch.")
        if t.dtype == torch.bfloat16:
            t = t.view(torch.int16)
        arrays[k] = t.numpy()
    return {"arrays": arrays, "dtypes": dtypes}


def unpack(payload: dict[str, Any]) -> dict[str, torch.Tensor]:
    out = {}
    for k, a in payload["arrays"].items():
        t = torch.from_numpy(np.array(a, copy=True))
        if payload["dtypes"][k] == "bfloat16":
            t = t.view(torch.bfloat16)
        out[k] = t
    return out


@dataclass
class PolicySpec:
    """How a worker rebuilds the run's policy: registry name, constructor kwargs, packed weights."""

    name: str
    kwargs: dict[str, Any]
    weights: dict[str, Any]
    """``pack(policy.state_dict())``."""
    version: int = 0

    @classmethod
    def of(cls, policy: Any, name: str) -> PolicySpec:
        return cls(name, policy.init_kwargs(), pack(policy.state_dict()), int(policy.version))

    def build(self, role: str) -> Any:
        """The registered policy, told its role (``"rollout"`` / ``"trainer"``), with the weights."""
        from asyncvla.policies import make_policy

        policy = make_policy(self.name, **self.kwargs)
        policy.on_placed(role)
        policy.load_state_dict(unpack(self.weights))
        policy.version = self.version
        return policy
