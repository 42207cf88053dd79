"""The action shield: limits every action before it reaches the simulator.

An env describes how its actions move the end effector (``ShieldModel``, from
``VectorEnv.shield_model``); the limits come from ``safety.shield`` in the config. Per env, the
actions of a chunk are checked one after another against the end effector's commanded position
(``p + a[m] * scale``, starting at the observed state and advanced by each *safe* action) and the
previous safe action (the last executed one for the chunk's first action):

* ``workspace``: the commanded position stays inside ``[lo, hi]``;
* ``max_delta``: each motion dimension changes by at most this from the previous action;
* ``close_max_speed``: the gripper may close (open -> closed) only while every motion dimension is
  at most this in magnitude; otherwise the shield either slows the motion down or keeps the
  gripper open, whichever is nearer (L2) to the requested action (a tie keeps it open).

Guarantee: every returned action satisfies all limits (up to float rounding of the position sums),
with one priority rule. Every limit is an interval per motion dimension, so the safe set is a box
and the projection (the nearest safe action in L2) is a clip to it; when the workspace interval
and the delta interval do not intersect (moving fast toward a wall), the workspace wins and the
result is the workspace interval's point nearest the delta interval.

A position outside the workspace (a start the user's workspace excludes) may move toward it, at any
speed the other limits allow, up to its far side, and never away from it: per coordinate, the
distance to the workspace never grows, and once inside it stays inside. A non-finite position
allows no motion.

The action box is not a limit: clipping to it alone is no intervention (the env clips anyway), and
an action no limit changes is returned bit for bit, out-of-box values included. A NaN entry is
replaced (the env would read it as 0) and counts as an intervention. ``max_delta`` and
``close_max_speed`` are taken at float32 precision (the actions'), and every bound is rounded
inward to float32, so the float32 result lies inside the bounds and the projection is idempotent
bit for bit: a projected chunk passes again unchanged.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from asyncvla.envs.base import ObsBatch, ShieldModel, VectorEnv


class ShieldError(ValueError):
    """A shield setting that cannot apply to the env (one line naming the key)."""


def _fmt(v: Any) -> str:
    return "[" + ", ".join(f"{float(x):g}" for x in v) + "]"


_NEG = np.float32(-np.inf)
_POS = np.float32(np.inf)


def _down32(x: np.ndarray | float) -> np.ndarray:
    """The largest float32 <= x (as float64)."""
    x = np.asarray(x, dtype=np.float64)
    f = x.astype(np.float32)
    return np.where(f > x, np.nextafter(f, _NEG), f).astype(np.float64)


def _up32(x: np.ndarray | float) -> np.ndarray:
    """The smallest float32 >= x (as float64)."""
    x = np.asarray(x, dtype=np.float64)
    f = x.astype(np.float32)
    return np.where(f < x, np.nextafter(f, _POS), f).astype(np.float64)


class Shield:
    """Projects action chunks onto the safe set of ``cfg`` (a ``ShieldConfig``) for ``model``."""

    def __init__(self, cfg: Any, model: ShieldModel) -> None:
        self.model = model
        self._check_model(model)
        d = len(model.position_action_dims)
        self.m = np.asarray(model.position_action_dims, dtype=np.int64)
        self.pos = np.asarray(model.position_state_dims, dtype=np.int64)
        self.scale = np.asarray(model.step_scale, dtype=np.float64)
        # The action box, rounded inward to float32 (the env's action dtype).
        self.low = _up32(np.asarray(model.action_low, dtype=np.float64))
        self.high = _down32(np.asarray(model.action_high, dtype=np.float64))
        self._low_m, self._high_m = self.low[self.m], self.high[self.m]
        self.g = model.gripper_action_dim
        self.close_above = float(model.gripper_close_above)
        self._open = float(_down32(self.close_above))
        """The gripper value the shield writes to keep it open (the largest float32 <= close_above)."""

        self.ws_lo: np.ndarray | None = None
        self.ws_hi: np.ndarray | None = None
        if cfg.workspace is not None:
            ws = [float(x) for x in cfg.workspace]
            if len(ws) != 2 * d:
                raise ShieldError(
                    f"safety.shield.workspace: needs 2*d = {2 * d} numbers [lo_1..lo_d, hi_1..hi_d] "
                    f"(d = {d} position coordinates), got {len(ws)}"
                )
            if not all(math.isfinite(x) for x in ws):
                raise ShieldError(f"safety.shield.workspace: {_fmt(ws)} must be finite numbers")
            lo, hi = np.asarray(ws[:d]), np.asarray(ws[d:])
            if not (lo < hi).all():
                raise ShieldError(f"safety.shield.workspace: {_fmt(ws)} needs lo < hi in every coordinate")
            r_lo = np.asarray(model.reachable_low, dtype=np.float64)
            r_hi = np.asarray(model.reachable_high, dtype=np.float64)
            if (lo < r_lo).any() or (hi > r_hi).any():
                raise ShieldError(
                    f"safety.shield.workspace: {_fmt(ws)} lies outside the env's reachable positions "
                    f"{_fmt(r_lo)}..{_fmt(r_hi)}"
                )
            self.ws_lo, self.ws_hi = lo, hi

        self.max_delta: float | None = None
        if cfg.max_delta is not None:
            self.max_delta = float(cfg.max_delta)
            if not self.max_delta > 0.0:
                raise ShieldError(f"safety.shield.max_delta: must be > 0, got {cfg.max_delta}")
            self._delta = float(np.float32(self.max_delta))

        self.close_max_speed: float | None = None
        if cfg.close_max_speed is not None:
            self.close_max_speed = float(cfg.close_max_speed)
            if not self.close_max_speed >= 0.0:
                raise ShieldError(f"safety.shield.close_max_speed: must be >= 0, got {cfg.close_max_speed}")
            if self.g is None:
                raise ShieldError(
                    "safety.shield.close_max_speed: the env's actions have no gripper dimension"
                )
            self._speed = float(np.float32(self.close_max_speed))

    @staticmethod
    def _check_model(model: ShieldModel) -> None:
        d = len(model.position_action_dims)
        a = len(model.action_low)

        def bad(why: str) -> ShieldError:
            return ShieldError(f"safety.shield: the env's shield model is unusable: {why}")

        if d < 1 or len(model.position_state_dims) != d or len(model.step_scale) != d:
            raise bad(
                "position_state_dims, position_action_dims and step_scale need one entry per coordinate"
            )
        if len(model.action_high) != a or len(model.reachable_low) != d or len(model.reachable_high) != d:
            raise bad("action_low/high need one entry per action dim, reachable_low/high one per coordinate")
        if not all(math.isfinite(s) and s > 0 for s in model.step_scale):
            raise bad(f"step_scale {_fmt(model.step_scale)} must be finite and > 0")
        if len(set(model.position_action_dims)) != d or not all(
            0 <= i < a for i in model.position_action_dims
        ):
            raise bad(f"position_action_dims {model.position_action_dims} must be distinct action dims")
        if any(not (model.action_low[i] <= 0.0 <= model.action_high[i]) for i in model.position_action_dims):
            raise bad("the action box must allow no motion (0) on every motion dim")
        g = model.gripper_action_dim
        if g is not None and (not 0 <= g < a or g in model.position_action_dims):
            raise bad(f"gripper_action_dim {g} must be an action dim other than the motion dims")

    # -- the intervals of one action ---------------------------------------------------------------
    def _workspace(self, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Motion intervals [n, d] (float32 values) that keep the commanded position inside the
        workspace; from outside it, motion toward it only (never past its far side)."""
        if self.ws_lo is None:
            return np.broadcast_to(self._low_m, p.shape), np.broadcast_to(self._high_m, p.shape)
        # fmin/fmax: a NaN position gives [0, 0] (no motion).
        w_lo = np.fmin((self.ws_lo - p) / self.scale, 0.0)  # > 0 only below the workspace: clamp to 0
        w_hi = np.fmax((self.ws_hi - p) / self.scale, 0.0)
        return np.maximum(self._low_m, _up32(w_lo)), np.minimum(self._high_m, _down32(w_hi))

    @staticmethod
    def _meet(
        lo: np.ndarray, hi: np.ndarray, lo2: np.ndarray, hi2: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Intersect [lo, hi] with [lo2, hi2]; where they are disjoint, the point of [lo, hi]
        nearest the second interval (the first has priority)."""
        a, b = np.maximum(lo, lo2), np.minimum(hi, hi2)
        empty = a > b
        if empty.any():
            point = np.where(hi < lo2, hi, lo)  # [lo, hi] lies below or above [lo2, hi2]
            a, b = np.where(empty, point, a), np.where(empty, point, b)
        return a, b

    def _box(self, p: np.ndarray, last_m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        lo, hi = self._workspace(p)
        if self.max_delta is not None:
            lo, hi = self._meet(lo, hi, _up32(last_m - self._delta), _down32(last_m + self._delta))
        return lo, hi

    def _check_shapes(self, actions: np.ndarray, state: np.ndarray, prev: np.ndarray) -> None:
        a_dim = len(self.low)
        if actions.ndim != 3 or actions.shape[2] != a_dim:
            raise ValueError(f"shield: actions must have shape [n, K, {a_dim}], got {actions.shape}")
        n = actions.shape[0]
        if state.ndim != 2 or state.shape[0] != n or state.shape[1] <= int(self.pos.max()):
            raise ValueError(
                f"shield: state must have shape [{n}, S > {int(self.pos.max())}], got {state.shape}"
            )
        if prev.shape != (n, a_dim):
            raise ValueError(f"shield: prev must have shape [{n}, {a_dim}], got {prev.shape}")

    # -- the projection ----------------------------------------------------------------------------
    def project(
        self, actions: np.ndarray, state: np.ndarray, prev: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Safe chunks float32 [n, K, A] and which actions the shield changed, bool [n, K].

        ``state`` [n, S]: the observation state before the chunk; ``prev`` [n, A]: each env's last
        executed action (zeros after a reset). See the module doc for the semantics."""
        a = np.asarray(actions, dtype=np.float32)
        state = np.asarray(state)
        prev = np.asarray(prev)
        self._check_shapes(a, state, prev)
        n, k, _ = a.shape
        out = a.copy()
        hit = np.zeros((n, k), dtype=bool)
        m = self.m
        p = state[:, self.pos].astype(np.float64)
        last = np.clip(np.nan_to_num(prev.astype(np.float32)).astype(np.float64), self.low, self.high)
        nan = np.isnan(a).any(axis=2)
        a64 = (
            np.where(np.isnan(a), np.float32(0.0), a).astype(np.float64)
            if nan.any()
            else a.astype(np.float64)
        )
        for j in range(k):
            e = np.minimum(np.maximum(a64[:, j], self.low), self.high)  # what the env executes
            lo, hi = self._box(p, last[:, m])
            safe = e.copy()
            motion = np.minimum(np.maximum(e[:, m], lo), hi)
            safe[:, m] = motion
            if self.close_max_speed is not None:
                g = self.g
                closing = (e[:, g] > self.close_above) & (last[:, g] <= self.close_above)
                if closing.any():
                    v = self._speed
                    s_lo, s_hi = np.maximum(lo, -v), np.minimum(hi, v)
                    slow_ok = (s_lo <= s_hi).all(axis=1)
                    slow = np.minimum(np.maximum(e[:, m], s_lo), s_hi)
                    cost_slow = ((slow - e[:, m]) ** 2).sum(axis=1)
                    cost_open = ((motion - e[:, m]) ** 2).sum(axis=1) + (e[:, g] - self._open) ** 2
                    use_slow = closing & slow_ok & (cost_slow < cost_open)
                    stay_open = closing & ~use_slow
                    safe[:, m] = np.where(use_slow[:, None], slow, motion)
                    safe[:, g] = np.where(stay_open, self._open, e[:, g])
            changed = (safe != e).any(axis=1) | nan[:, j]
            if changed.any():
                hit[:, j] = changed
                out[changed, j] = safe[changed]
            p = p + safe[:, m] * self.scale
            last = safe
        return out, hit

    # -- the checker -------------------------------------------------------------------------------
    def violations(
        self, actions: np.ndarray, state: np.ndarray, prev: np.ndarray, tol: float = 1e-6
    ) -> np.ndarray:
        """bool [n, K]: the actions of each chunk that break a limit, checked one by one in plain
        Python (an oracle for ``project``). ``tol``: slack on every limit (negative: demand that
        margin). Priority rule: where the delta interval does not meet the workspace interval, only
        the workspace point nearest it is safe. A NaN entry is a violation."""
        a = np.asarray(actions, dtype=np.float64)
        n, k, _ = a.shape
        low, high = np.asarray(self.model.action_low, float), np.asarray(self.model.action_high, float)
        bad = np.zeros((n, k), dtype=bool)
        m = [int(i) for i in self.m]
        s = [float(x) for x in self.scale]
        for i in range(n):
            pos = [float(state[i, c]) for c in self.pos]
            last = np.clip(np.nan_to_num(np.asarray(prev[i], dtype=np.float64)), low, high)
            for j in range(k):
                if np.isnan(a[i, j]).any():
                    bad[i, j] = True
                act = np.clip(np.nan_to_num(a[i, j]), low, high)
                for c, dim in enumerate(m):
                    x, move = pos[c], act[dim]
                    target = x + move * s[c]
                    # The workspace interval of this coordinate's motion.
                    w_lo, w_hi = low[dim], high[dim]
                    if self.ws_lo is not None:
                        lo_c, hi_c = self.ws_lo[c], self.ws_hi[c]
                        if x < lo_c - tol:  # below the workspace: toward it, not past its far side
                            if move < -tol or target > hi_c + tol:
                                bad[i, j] = True
                        elif x > hi_c + tol:
                            if move > tol or target < lo_c - tol:
                                bad[i, j] = True
                        elif not lo_c - tol <= target <= hi_c + tol:
                            bad[i, j] = True
                        w_lo = max(w_lo, min((lo_c - x) / s[c], 0.0))
                        w_hi = min(w_hi, max((hi_c - x) / s[c], 0.0))
                    if self.max_delta is not None:
                        d_lo, d_hi = last[dim] - self.max_delta, last[dim] + self.max_delta
                        if max(w_lo, d_lo) <= min(w_hi, d_hi) + max(tol, 0.0):
                            if abs(move - last[dim]) > self.max_delta + tol:
                                bad[i, j] = True
                        else:  # cannot hold inside the workspace: the nearest workspace point only
                            nearest = w_hi if w_hi < d_lo else w_lo
                            if abs(move - nearest) > tol:
                                bad[i, j] = True
                if self.close_max_speed is not None:
                    g = self.g
                    if act[g] > self.close_above and last[g] <= self.close_above:
                        if max(abs(act[dim]) for dim in m) > self.close_max_speed + tol:
                            bad[i, j] = True
                pos = [pos[c] + act[dim] * s[c] for c, dim in enumerate(m)]
                last = act
        return bad


def make_shield(cfg: Any, env: VectorEnv) -> Shield | None:
    """The shield ``safety.shield`` (a ``ShieldConfig``) asks for on ``env``; None when no limit is set."""
    if not cfg.enabled:
        return None
    model = env.shield_model()
    if model is None:
        raise ShieldError(
            f"safety.shield: env {type(env).__name__} has no shield model (VectorEnv.shield_model)"
        )
    return Shield(cfg, model)


def note_executed(
    prev: np.ndarray, actions: np.ndarray, steps: np.ndarray, low: np.ndarray, high: np.ndarray
) -> None:
    """Set ``prev`` [n, A] (in place) to each env's last executed action of the chunk ``actions``
    [n, K, A], clipped to the action box, where the env executed any (``steps`` [n] > 0): the
    shield's context for the next chunk."""
    steps = np.asarray(steps, dtype=np.int64)
    rows = np.flatnonzero(steps > 0)
    if rows.size:
        last = np.nan_to_num(np.asarray(actions, dtype=np.float32)[rows, steps[rows] - 1])
        prev[rows] = np.clip(last, low, high)


class ShieldedEnv(VectorEnv):
    """An env whose every chunk passes the shield first.

    ``step`` adds ``info["shield_interventions"]`` int32 [n] (the chunk's actions up to ``steps``
    that the shield changed) and ``info["executed_actions"]`` (the safe chunk stepped). Each env's
    previous action is its last executed one, zeros after a reset (the gripper open, no motion).
    Other attributes pass through to the wrapped env."""

    def __init__(self, env: VectorEnv, shield: Shield) -> None:
        self.env, self.shield = env, shield
        self.num_envs = env.num_envs
        self.single_observation_space = env.single_observation_space
        self.single_action_space = env.single_action_space
        self.max_episode_steps = env.max_episode_steps
        act = env.single_action_space
        self._low, self._high = act.low.astype(np.float32), act.high.astype(np.float32)
        self._prev = np.zeros((env.num_envs, *act.shape), dtype=np.float32)
        self._state: np.ndarray | None = None

    @property
    def prev_actions(self) -> np.ndarray:
        """float32 [n, A]: each env's last executed action (a copy)."""
        return self._prev.copy()

    def reset(
        self, *, seed: Any = None, options: dict[str, Any] | None = None
    ) -> tuple[ObsBatch, dict[str, Any]]:
        obs, info = self.env.reset(seed=seed, options=options)
        idx = (options or {}).get("env_indices")
        if idx is None:
            self._prev[:] = 0.0
        else:
            self._prev[np.asarray(idx, dtype=np.int64).reshape(-1)] = 0.0
        self._state = np.array(obs["state"], dtype=np.float32)
        return obs, info

    def step(
        self, actions: np.ndarray
    ) -> tuple[ObsBatch, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        if self._state is None:
            raise RuntimeError("ShieldedEnv.step() before reset()")
        a = np.asarray(actions, dtype=np.float32)
        if a.ndim == 2:
            a = a[:, None]
        safe, hit = self.shield.project(a, self._state, self._prev)
        obs, reward, term, trunc, info = self.env.step(safe)
        steps = np.asarray(info["steps"], dtype=np.int64)
        if "failed" in info:
            steps = np.where(np.asarray(info["failed"], dtype=bool), 0, steps)
        executed = np.arange(safe.shape[1])[None, :] < steps[:, None]
        note_executed(self._prev, safe, steps, self._low, self._high)
        self._state = np.array(obs["state"], dtype=np.float32)
        info = {
            **info,
            "shield_interventions": (hit & executed).sum(axis=1).astype(np.int32),
            "executed_actions": safe,
        }
        return obs, reward, term, trunc, info

    def vocabulary(self) -> list[str]:
        return self.env.vocabulary()

    @property
    def num_init_states(self) -> int | None:
        return self.env.num_init_states

    def asset_files(self) -> dict[str, str]:
        return self.env.asset_files()

    def shield_model(self) -> ShieldModel | None:
        return self.env.shield_model()

    def close(self) -> None:
        self.env.close()

    def __getattr__(self, name: str) -> Any:
        # Only reached for names not found normally; "env"/"shield" missing means a half-built
        # object (unpickling): don't recurse.
        if name in ("env", "shield") or name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.env, name)
