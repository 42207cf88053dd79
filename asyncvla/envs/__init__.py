"""Envs, registered by name: ``make_env("tabletop", num_envs=8, family="object")``."""

from __future__ import annotations

from typing import Any

from asyncvla.envs.base import ObsBatch, SingleEnv, VectorEnv
from asyncvla.registry import Registry

ENVS: Registry[VectorEnv] = Registry("env")


def make_env(name: str, num_envs: int = 1, **kwargs: Any) -> VectorEnv:
    return ENVS.get(name)(num_envs=num_envs, **kwargs)


# Registration happens on import of each env module (one line per env).
from asyncvla.envs import libero as _libero  # noqa: E402,F401  (imports LIBERO only when built)
from asyncvla.envs import tabletop as _tabletop  # noqa: E402,F401

__all__ = ["ENVS", "ObsBatch", "SingleEnv", "VectorEnv", "make_env"]
