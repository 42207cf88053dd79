"""The action shield: limits every action before it reaches the simulator.

An env describes how its actions move the end effector (``ShieldModel``, from
``VectorEnv.shield_model``); the limits come from ``safety.shield`` in the config. Per env, the
actions of a chunk are checked one after another against the end effector's commanded position
and the previous action:

* ``workspace``: the commanded position ``p + a[m] * scale`` stays inside ``[lo, hi]``;
* ``max_delta``: each motion dimension changes by at most this from the previous action;
* ``close_max_speed``: the gripper may close (open -> closed) only while every motion dimension is
  at most this; otherwise the shield either slows the motion down or keeps the gripper open,
  whichever is nearer to the requested action.

Every limit is an interval per motion dimension, so the safe set is a box and the projection
(the nearest safe action in L2) is a clip to it. When the workspace and the delta limit do not
intersect (moving fast toward a wall), the workspace wins: the result is the workspace interval's
point nearest the delta interval. A start position outside the workspace may move toward it at
any speed the other limits allow and never away from it. Clipping to the action box alone is not
an intervention (the env clips anyway): where no limit binds, the action is returned unchanged.
The projection is idempotent: a projected chunk passes again unchanged.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from asyncvla.envs.base import ObsBatch, ShieldModel, VectorEnv


class ShieldError(ValueError):
    """A shield setting that cannot apply to the env (one line naming the key)."""


def _fmt(v: Any) -> str:
    return "[" + ", ".join(f"{float(x):g}" for x in v) + "]"


class Shield:
    def __init__(self, cfg: Any, model: ShieldModel) -> None:
        self.model = model
        d = len(model.position_action_dims)
        self.m = np.asarray(model.position_action_dims, dtype=np.int64)
        self.pos = np.asarray(model.position_state_dims, dtype=np.int64)
        self.scale = np.asarray(model.step_scale, dtype=np.float64)
        self.low = np.asarray(model.action_low, dtype=np.float64)
        self.high = np.asarray(model.action_high, dtype=np.float64)
        self.g = model.gripper_action_dim
        self.close_above = float(model.gripper_close_above)
        self.ws_lo = self.ws_hi = None
        if cfg.workspace is not None:
            ws = list(cfg.workspace)
            if len(ws) != 2 * d:
                raise ShieldError(
                    f"safety.shield.workspace: needs 2*{d} = {2 * d} numbers [lo_1..lo_{d}, hi_1..hi_{d}], got {len(ws)}"
                )
            lo, hi = np.asarray(ws[:d], np.float64), np.asarray(ws[d:], np.float64)
            if not (lo < hi).all():
                raise ShieldError(f"safety.shield.workspace: {ws} needs lo < hi in every coordinate")
            r_lo, r_hi = np.asarray(model.reachable_low), np.asarray(model.reachable_high)
            if (lo < r_lo).any() or (hi > r_hi).any():
                raise ShieldError(
                    f"safety.shield.workspace: {ws} lies outside the env's reachable positions "
                    f"{_fmt(r_lo)}..{_fmt(r_hi)}"
                )
            self.ws_lo, self.ws_hi = lo, hi
        self.max_delta = None if cfg.max_delta is None else float(cfg.max_delta)
        self.close_max_speed = None if cfg.close_max_speed is None else float(cfg.close_max_speed)
        if self.close_max_speed is not None and self.g is None:
            raise ShieldError("safety.shield.close_max_speed: the env's actions have no gripper dimension")

    # -- the intervals of one action ---------------------------------------------------------------
    def _workspace(self, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Motion intervals [n, d] that keep the commanded position inside the workspace; from
        outside it, motion toward it only."""
        lo = np.broadcast_to(self.low[self.m], p.shape).copy()
        hi = np.broadcast_to(self.high[self.m], p.shape).copy()
        if self.ws_lo is None:
            return lo, hi
        w_lo = (self.ws_lo - p) / self.scale
        w_hi = (self.ws_hi - p) / self.scale
        # Outside on the low side (w_lo > 0): no motion further down; on the high side likewise.
        w_lo = np.minimum(w_lo, 0.0)
        w_hi = np.maximum(w_hi, 0.0)
        return np.maximum(lo, w_lo), np.minimum(hi, w_hi)

    @staticmethod
    def _meet(lo: np.ndarray, hi: np.ndarray, lo2: np.ndarray, hi2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Intersect [lo, hi] with [lo2, hi2]; where they are disjoint, the point of [lo, hi]
        nearest the second interval (the first has priority)."""
        a, b = np.maximum(lo, lo2), np.minimum(hi, hi2)
        empty = a > b
        if empty.any():
            point = np.where(hi < lo2, hi, lo)  # [lo, hi] lies below or above [lo2, hi2]
            a, b = np.where(empty, point, a), np.where(empty, point, b)
        return a, b

    def _box(self, p: np.ndarray, prev_m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        lo, hi = self._workspace(p)
        if self.max_delta is not None:
            lo, hi = self._meet(lo, hi, prev_m - self.max_delta, prev_m + self.max_delta)
        return lo, hi

    # -- the projection ----------------------------------------------------------------------------
    def project(self, actions: np.ndarray, state: np.ndarray, prev: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Safe chunks float32 [n, K, A] and which actions changed bool [n, K] (see the module doc)."""
        a = np.asarray(actions, dtype=np.float32)
        n, k, _ = a.shape
        out = a.copy()
        hit = np.zeros((n, k), dtype=bool)
        p = np.asarray(state, dtype=np.float64)[:, self.pos]
        last = np.clip(np.asarray(prev, dtype=np.float64), self.low, self.high)
        for j in range(k):
            e = np.clip(a[:, j].astype(np.float64), self.low, self.high)
            lo, hi = self._box(p, last[:, self.m])
            safe = e.copy()
            safe[:, self.m] = np.clip(e[:, self.m], lo, hi)
            if self.close_max_speed is not None:
                g = self.g
                closing = (e[:, g] > self.close_above) & (last[:, g] <= self.close_above)
                if closing.any():
                    v = self.close_max_speed
                    slow = np.clip(safe[:, self.m], np.maximum(lo, -v), np.minimum(hi, v))
                    slow_ok = (np.maximum(lo, -v) <= np.minimum(hi, v)).all(axis=1)
                    cost_slow = ((slow - e[:, self.m]) ** 2).sum(axis=1)
                    cost_open = ((safe[:, self.m] - e[:, self.m]) ** 2).sum(axis=1) + (e[:, g] - self.close_above) ** 2
                    use_slow = closing & slow_ok & (cost_slow < cost_open)
                    stay_open = closing & ~use_slow
                    safe[:, self.m] = np.where(use_slow[:, None], slow, safe[:, self.m])
                    safe[:, g] = np.where(stay_open, self.close_above, safe[:, g])
            safe32 = safe.astype(np.float32)
            changed = (safe32 != e.astype(np.float32)).any(axis=1)
            hit[:, j] = changed
            out[changed, j] = safe32[changed]
            executed = safe32.astype(np.float64)
            p = p + executed[:, self.m] * self.scale
            last = executed
        return out, hit

    def violations(self, actions: np.ndarray, state: np.ndarray, prev: np.ndarray, tol: float = 1e-6) -> np.ndarray:
        """bool [n, K]: the actions of each chunk that break a limit, with the priority rule: where
        the delta limit cannot hold inside the workspace, only the workspace point nearest it is safe."""
        a = np.clip(np.asarray(actions, dtype=np.float64), self.low, self.high)
        n, k, _ = a.shape
        bad = np.zeros((n, k), dtype=bool)
        p = np.asarray(state, dtype=np.float64)[:, self.pos].copy()
        last = np.clip(np.asarray(prev, dtype=np.float64), self.low, self.high)
        for i in range(n):
            pi, li = p[i].copy(), last[i].copy()
            for j in range(k):
                act = a[i, j]
                mv = act[self.m]
                target = pi + mv * self.scale
                for c in range(len(self.m)):
                    if self.ws_lo is not None:
                        lo_c, hi_c = self.ws_lo[c], self.ws_hi[c]
                        inside = lo_c - tol <= pi[c] <= hi_c + tol
                        if inside and not (lo_c - tol <= target[c] <= hi_c + tol):
                            bad[i, j] = True
                        if pi[c] < lo_c - tol and (mv[c] < -tol or target[c] > hi_c + tol):
                            bad[i, j] = True  # below the workspace: moving away, or past it
                        if pi[c] > hi_c + tol and (mv[c] > tol or target[c] < lo_c - tol):
                            bad[i, j] = True
                    if self.max_delta is not None and abs(mv[c] - li[self.m[c]]) > self.max_delta + tol:
                        # counts only if some workspace-safe motion meets the delta limit
                        w_lo, w_hi = self.low[self.m[c]], self.high[self.m[c]]
                        if self.ws_lo is not None:
                            w_lo = max(w_lo, min((self.ws_lo[c] - pi[c]) / self.scale[c], 0.0))
                            w_hi = min(w_hi, max((self.ws_hi[c] - pi[c]) / self.scale[c], 0.0))
                        d_lo, d_hi = li[self.m[c]] - self.max_delta, li[self.m[c]] + self.max_delta
                        if max(w_lo, d_lo) <= min(w_hi, d_hi) + tol:
                            bad[i, j] = True
                        elif abs(mv[c] - (w_hi if w_hi < d_lo else w_lo)) > tol:
                            bad[i, j] = True  # infeasible: only the workspace point nearest it
                if self.close_max_speed is not None:
                    g = self.g
                    closing = act[g] > self.close_above and li[g] <= self.close_above
                    if closing and np.abs(mv).max() > self.close_max_speed + tol:
                        bad[i, j] = True
                pi = pi + mv * self.scale
                li = act
        return bad


def make_shield(cfg: Any, env: VectorEnv) -> Shield | None:
    """The shield ``safety.shield`` asks for on ``env`` (None when no limit is set)."""
    if not cfg.enabled:
        return None
    model = env.shield_model()
    if model is None:
        raise ShieldError(f"safety.shield: env {type(env).__name__} has no shield model (VectorEnv.shield_model)")
    return Shield(cfg, model)


class ShieldedEnv(VectorEnv):
    """An env whose every chunk passes the shield first; ``info["shield_interventions"]`` int32 [n]
    counts the executed actions it changed, ``info["executed_actions"]`` is the chunk stepped."""

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
        return self._prev.copy()

    def reset(self, *, seed: Any = None, options: dict[str, Any] | None = None) -> tuple[ObsBatch, dict[str, Any]]:
        obs, info = self.env.reset(seed=seed, options=options)
        idx = (options or {}).get("env_indices")
        if idx is None:
            self._prev[:] = 0.0
        else:
            self._prev[np.asarray(idx, dtype=np.int64).reshape(-1)] = 0.0
        self._state = np.asarray(obs["state"])
        return obs, info

    def step(self, actions: np.ndarray) -> tuple[ObsBatch, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        if self._state is None:
            raise RuntimeError("ShieldedEnv.step() before reset()")
        a = np.asarray(actions, dtype=np.float32)
        if a.ndim == 2:
            a = a[:, None]
        safe, hit = self.shield.project(a, self._state, self._prev)
        obs, reward, term, trunc, info = self.env.step(safe)
        steps = np.asarray(info["steps"])
        k = safe.shape[1]
        executed = np.arange(k)[None, :] < steps[:, None]
        rows = np.flatnonzero(steps > 0)
        if rows.size:
            self._prev[rows] = np.clip(safe[rows, steps[rows] - 1], self._low, self._high)
        self._state = np.asarray(obs["state"])
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
        if name in ("env", "shield"):
            raise AttributeError(name)
        return getattr(self.env, name)
