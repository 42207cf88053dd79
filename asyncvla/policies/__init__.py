"""Policies, registered by name: ``make_policy("tiny_vla", vocabulary=..., ...)``."""

from __future__ import annotations

from typing import Any

from asyncvla.policies.base import (
    ActOutput,
    CheckpointError,
    EvalOutput,
    Policy,
    load_policy,
    save_policy,
)
from asyncvla.registry import Registry

POLICIES: Registry[Policy] = Registry("policy")


def make_policy(name: str, **kwargs: Any) -> Policy:
    return POLICIES.get(name)(**kwargs)


from asyncvla.policies import hf_vla as _hf_vla  # noqa: E402,F401 (transformers is imported lazily)
from asyncvla.policies import tiny_vla as _tiny_vla  # noqa: E402,F401

__all__ = [
    "POLICIES",
    "ActOutput",
    "CheckpointError",
    "EvalOutput",
    "Policy",
    "load_policy",
    "make_policy",
    "save_policy",
]
