"""The vectorized env API every simulator implements.

Observation batch (``ObsBatch``), for ``n`` envs:
  - ``image``: uint8 [n, H, W, 3]
  - ``wrist_image`` (optional): uint8 [n, H, W, 3]
  - ``state``: float32 [n, S] proprioception
  - ``instruction``: list[str] of length n

Actions are chunks: float32 [n, K, A], executed in order; an env stops early inside a chunk
when its episode terminates or truncates. After an env is done it must be reset (see
``reset(options={"env_indices": ...})``) before it is stepped again.

Observation batches returned by ``reset`` and ``step`` belong to the caller: an env must not
write into them later (copy internal buffers out), so workers can keep them without copying.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

ObsBatch = dict[str, Any]


def check_int(name: str, value: Any, lo: int, hi: int | None = None) -> int:
    """``value`` as an int in [lo, hi] (or >= lo), else a ValueError naming ``name``."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an int, got {value!r}")
    if value < lo or (hi is not None and value > hi):
        bound = f"in [{lo}, {hi}]" if hi is not None else f">= {lo}"
        raise ValueError(f"{name} must be {bound}, got {value}")
    return int(value)


def reset_requests(
    num_envs: int, seed: int | Sequence[int | None] | None, options: dict[str, Any] | None
) -> tuple[list[int], list[int | None], list[int | None]]:
    """Parse ``VectorEnv.reset`` arguments into (env indices, one seed each, one init state each).

    An int ``seed`` gives env ``i`` seed ``seed + i`` (``i`` its index in the batch, so a partial
    reset reproduces that env's full-reset episode); an int ``init_state`` is shared; sequences
    align with ``env_indices``. ``None`` entries mean "not given" (the env draws its own).
    """
    options = dict(options or {})
    unknown = set(options) - {"init_state", "env_indices"}
    if unknown:
        raise ValueError(
            f"reset options has unknown keys {sorted(unknown)}; allowed: env_indices, init_state"
        )
    indices = options.get("env_indices")
    if indices is None:
        indices = list(range(num_envs))
    else:
        indices = [
            check_int("env_indices[]", i, 0, num_envs - 1) for i in np.asarray(indices).reshape(-1).tolist()
        ]
        if len(set(indices)) != len(indices):
            raise ValueError(f"env_indices must be distinct, got {indices}")

    def per_env(name: str, value: Any, offset_by_index: bool) -> list[Any]:
        if value is None or isinstance(value, (int, np.integer)):
            return [None if value is None else int(value) + (i if offset_by_index else 0) for i in indices]
        values = list(value)
        if len(values) != len(indices):
            raise ValueError(f"{name} needs one entry per reset env ({len(indices)}), got {len(values)}")
        return values

    return indices, per_env("seed", seed, True), per_env("init_state", options.get("init_state"), False)


def hue_matrix(turns: float) -> np.ndarray:
    """3x3 RGB rotation about the grey axis by ``turns`` of the colour circle: a hue shift that
    keeps the sum of the channels (rows of colours times its transpose; envs' colour perturbations)."""
    a = 2.0 * math.pi * turns
    cos, sin = math.cos(a), math.sin(a)
    k, s = (1.0 - cos) / 3.0, math.sqrt(1.0 / 3.0) * sin
    return np.array([[cos + k, k - s, k + s], [k + s, cos + k, k - s], [k - s, k + s, cos + k]])


@dataclass(frozen=True)
class ShieldModel:
    """How an env's actions move its end effector, as far as the shield needs to know.

    The commanded position after an action is ``p + a[position_action_dims] * step_scale``, with
    ``p = state[position_state_dims]`` before the chunk and then the commanded positions of the
    chunk's earlier actions. The gripper closes when ``a[gripper_action_dim] > gripper_close_above``
    and opens otherwise (so the previous action says whether it is closed).
    """

    position_state_dims: tuple[int, ...]
    position_action_dims: tuple[int, ...]
    step_scale: tuple[float, ...]
    """Position change per unit of action, per position coordinate."""
    action_low: tuple[float, ...]
    action_high: tuple[float, ...]
    reachable_low: tuple[float, ...]
    """The positions the env can reach at all (a workspace must lie inside them)."""
    reachable_high: tuple[float, ...]
    gripper_action_dim: int | None = None
    gripper_close_above: float = 0.0


class VectorEnv(ABC):
    """A batch of ``num_envs`` envs of one task family, stepped with action chunks.

    ``step`` returns ``(obs, reward, terminated, truncated, info)`` where reward is float32 [n]
    (summed over the executed actions of the chunk), terminated/truncated are bool [n] and info
    holds at least ``success`` bool [n], ``cost`` float32 [n] (0 unless a safety constraint is
    violated; summed over the chunk) and ``steps`` int32 [n] (actions actually executed; 0 for an
    env that was already done). Optionally ``failed`` bool [n]: envs whose simulator raised during
    this step (their outputs are meaningless; they count as truncated and must be reset). The env
    managers drop those episodes; a ``step`` or ``reset`` that raises for the whole batch makes
    the manager rebuild the env.
    """

    num_envs: int
    single_observation_space: spaces.Dict
    single_action_space: spaces.Box
    max_episode_steps: int

    @abstractmethod
    def reset(
        self, *, seed: int | Sequence[int | None] | None = None, options: dict[str, Any] | None = None
    ) -> tuple[ObsBatch, dict[str, Any]]:
        """Reset envs and return the observation batch of *all* envs.

        ``seed``: an int (env i gets ``seed + i``) or one seed per reset env.
        ``options``: ``init_state`` (int or one per reset env: a deterministic start state id; same
        seed and init state give identical observation bytes) and ``env_indices`` (reset only
        these envs; ``seed``/``init_state`` sequences then align with ``env_indices``).
        """

    @abstractmethod
    def step(
        self, actions: np.ndarray
    ) -> tuple[ObsBatch, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """Execute one action chunk [n, K, A] per env (a [n, A] array is a chunk of one)."""

    @abstractmethod
    def vocabulary(self) -> list[str]:
        """Every word the instructions of this env can contain (for word tokenizers)."""

    @property
    def num_init_states(self) -> int | None:
        """How many distinct init states ``options["init_state"]`` accepts (None: unbounded)."""
        return None

    def shield_model(self) -> ShieldModel | None:
        """How actions move the end effector, for the action shield (None: the env cannot be shielded)."""
        return None

    @classmethod
    def suite_cells(cls, suite: str, env_kwargs: dict[str, Any], **context: Any) -> list[Any] | None:
        """The cells (``asyncvla.trust.suites.Cell``) of evaluation suite ``suite`` for an env built
        with ``env_kwargs``, the reference cell first (None: the env has none for that suite).
        ``context``: what the suite knows of the run (``axes`` and ``strengths`` of a robustness
        suite, ``pretrained``: the families of grounding pretraining)."""
        return None

    def asset_files(self) -> dict[str, str]:
        """Files the env reads its tasks from (name -> path): hashed into the run's manifest."""
        return {}

    def close(self) -> None:  # noqa: B027 - optional hook; most envs hold nothing to release
        """Release simulator resources."""


class SingleEnv(gym.Env):
    """A gymnasium ``Env`` over a one-env ``VectorEnv``; the action is one chunk [K, A]."""

    metadata = {"render_modes": []}

    def __init__(self, venv: VectorEnv, chunk_size: int = 1) -> None:
        if venv.num_envs != 1:
            raise ValueError(f"SingleEnv needs a VectorEnv with num_envs=1, got {venv.num_envs}")
        self.venv = venv
        self.observation_space = venv.single_observation_space
        a = venv.single_action_space
        self.action_space = spaces.Box(
            low=np.broadcast_to(a.low, (chunk_size, *a.shape)).copy(),
            high=np.broadcast_to(a.high, (chunk_size, *a.shape)).copy(),
            dtype=a.dtype,
        )

    @staticmethod
    def _first(obs: ObsBatch) -> dict[str, Any]:
        return {k: (v[0] if isinstance(v, list) else np.asarray(v)[0]) for k, v in obs.items()}

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        obs, info = self.venv.reset(seed=seed, options=options)
        return self._first(obs), {k: v for k, v in info.items()}

    def step(self, action):
        obs, r, term, trunc, info = self.venv.step(np.asarray(action, dtype=np.float32)[None])
        one = {k: (np.asarray(v)[0].item() if np.ndim(v) else v) for k, v in info.items()}
        return self._first(obs), float(r[0]), bool(term[0]), bool(trunc[0]), one
