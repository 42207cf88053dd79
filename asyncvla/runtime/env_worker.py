"""EnvWorker: M env managers that step independently; EnvManager: one vectorized env.

A manager is a small state machine, the same in every schedule:
``request()`` -> one ``ObsRequest`` per shard (a manager's envs may be split across rollout
workers); ``apply(replies)`` -> step the chunk once every shard has its reply, record the
decision, reset finished envs, and return the segments that completed.

PPO segments close after T decisions and carry the observation after the last step
(``bootstrap_obs``); the trainer computes the bootstrap value V(bootstrap_obs) with the weights it
trains with, so no segment waits for a further reply. In episode mode (GRPO) all envs of a
manager start together, in groups that share an init state; a group's members that finish early
are masked until the last one ends, and the segment closes when every group is complete.

Each segment holds a staleness ticket (``gate.Ticket``) taken before its first decision.

An ``EnvWorker`` runs its managers' loop: take tickets, send each manager's requests to the rollout
workers its routes name, step a manager as soon as *its* replies are in (or, ``async.env: false``,
all managers together once every reply is in), ship closed segments to the trainer with at most
``runtime.queue_segments`` outstanding. Everything it sends or waits for goes through an
``EnvTransport`` (Ray in ``actors.py``; direct calls in the one-process tests).
"""

from __future__ import annotations

import inspect
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from asyncvla.algos import ALGOS
from asyncvla.config import Config, ShieldConfig
from asyncvla.envs import ENVS, make_env
from asyncvla.envs.base import ObsBatch
from asyncvla.envs.episodes import EpisodeTracker
from asyncvla.runtime.events import EventBuffer
from asyncvla.runtime.gate import Ticket
from asyncvla.runtime.types import ActionReply, ObsRequest, Segment, take_obs
from asyncvla.safety.shield import make_shield, note_executed

log = logging.getLogger(__name__)

HEARTBEAT_S = 5.0
"""An env worker that waits (on inference or the staleness gate) still reports this often."""
TRAIN_INIT_STATES = 1_000_000
"""Training draws init states below this; evaluation and demos use disjoint ranges above it."""


def manager_env_kwargs(env_name: str, env_kwargs: dict[str, Any], manager_id: int) -> dict[str, Any]:
    """Each manager's env gets its own random streams (e.g. the emulated step latency): an env
    that takes a ``seed`` gets the configured one (default 0) plus the manager id, so managers do
    not draw identical latencies in lockstep. Manager 0 keeps the configured seed."""
    if manager_id == 0 or "seed" not in inspect.signature(ENVS.get(env_name)).parameters:
        return dict(env_kwargs)
    return {**env_kwargs, "seed": int(env_kwargs.get("seed", 0)) + manager_id}


def _stack_features(steps: list[dict[str, np.ndarray] | None]) -> dict[str, np.ndarray] | None:
    """Per-decision feature rows -> arrays [T, n, ...]; None unless every decision has them."""
    if not steps or any(f is None for f in steps):
        return None
    return {k: np.stack([f[k] for f in steps]) for k in steps[0]}


def _finite_rows(obs: ObsBatch, *per_env: np.ndarray) -> np.ndarray:
    """bool [n]: every float entry of env i's observation and of ``per_env`` arrays is finite."""
    ok = np.ones(len(per_env[0]), dtype=bool)
    for v in per_env:
        ok &= np.isfinite(np.asarray(v, dtype=np.float64))
    for v in obs.values():
        if isinstance(v, np.ndarray) and v.dtype.kind == "f":
            ok &= np.isfinite(v.reshape(len(v), -1)).all(axis=1)
    return ok


def _sanitize(obs: ObsBatch, rows: np.ndarray) -> ObsBatch:
    """``obs`` with the non-finite float entries of envs ``rows`` set to 0 (they are never
    trained; inference must not see NaN)."""
    out = dict(obs)
    for k, v in obs.items():
        if isinstance(v, np.ndarray) and v.dtype.kind == "f":
            v = v.copy()
            v[rows] = np.nan_to_num(v[rows], nan=0.0, posinf=0.0, neginf=0.0)
            out[k] = v
    return out


def _stack_obs(steps: list[ObsBatch]) -> ObsBatch:
    out: dict[str, Any] = {}
    for k in steps[0]:
        out[k] = [s[k] for s in steps] if k == "instruction" else np.stack([s[k] for s in steps])
    return out


@dataclass
class _Merged:
    """The replies of every shard of one request, in env order."""

    actions: np.ndarray
    log_probs: np.ndarray
    values: np.ndarray
    versions: np.ndarray
    features: dict[str, np.ndarray] | None
    cost_values: np.ndarray | None
    shielded: np.ndarray | None


class EnvManager:
    def __init__(
        self,
        manager_id: int,
        env_name: str,
        num_envs: int,
        env_kwargs: dict[str, Any],
        rollout_steps: int,
        seed: int,
        episode_mode: bool = False,
        group_size: int = 1,
        num_shards: int = 1,
        generation: int = 0,
        max_env_errors: int = 20,
        error_window_s: float = 600.0,
        shield: ShieldConfig | None = None,
    ) -> None:
        if not 1 <= num_shards <= num_envs:
            raise ValueError(f"num_shards must be in 1..{num_envs}; got {num_shards}")
        self.manager_id = manager_id
        self._env_name = env_name
        self._env_kwargs = manager_env_kwargs(env_name, env_kwargs, manager_id)
        self.env = make_env(env_name, num_envs=num_envs, **self._env_kwargs)
        self.n = num_envs
        self.shield = None if shield is None else make_shield(shield, self.env)
        act = self.env.single_action_space
        self._act_low, self._act_high = act.low.astype(np.float32), act.high.astype(np.float32)
        self._prev = np.zeros((num_envs, *act.shape), dtype=np.float32)
        """Each env's last executed action (clipped to the action box); zeros after a reset."""
        self.step_s_total = 0.0
        """Seconds spent inside the simulator's ``step`` (the monitor's env-step latency)."""
        self.shield_interventions = 0
        """Decisions whose chunk the action shield changed (here or in the rollout worker)."""
        self.shield_untrained = 0
        """Of those, decisions changed only here (not trained: their log-probs are of another chunk)."""
        self.env_ids = np.arange(manager_id * num_envs, (manager_id + 1) * num_envs, dtype=np.int64)
        self.rollout_steps = rollout_steps
        self.episode_mode = episode_mode
        self.group_size = group_size
        # A restarted worker's managers (generation g > 0) draw other init states than the worker
        # they replace, and number their segments from g * 10**6 (segment ids stay unique).
        self.rng = np.random.default_rng([seed, manager_id] + ([generation] if generation else []))
        self._request_id = 0
        self._segment_id = generation * 10**6
        self._group_counter = 0
        self.shards = [a.astype(np.int64) for a in np.array_split(np.arange(num_envs), num_shards)]
        self._pending: int | None = None
        self._replies: dict[int, ActionReply] = {}
        self.ticket: Ticket | None = None
        self.env_steps_total = 0
        self.samples_total = 0
        self.segments_total = 0
        self._tracker = EpisodeTracker(self.n)
        self._done = np.zeros(self.n, dtype=bool)
        self._ep_start = np.zeros(self.n, dtype=np.int64)  # buffer index where each episode began
        self.quarantined_samples = 0
        self.quarantined_episodes = 0
        self.env_errors = 0
        """Simulator exceptions handled here (each drops the affected episodes)."""
        self.last_env_error = ""
        self._error_times: list[float] = []
        self.max_env_errors = max_env_errors
        self.error_window_s = error_window_s
        self.progress: dict[str, int] = {}
        """The segment of the last decision (``_note_progress``)."""
        self._group_ids: np.ndarray | None = None
        self._clear_buffer()
        self.obs = self._reset_all()

    # -- resets -----------------------------------------------------------------------------------
    def _draw(self, k: int) -> tuple[list[int], list[int]]:
        inits = self.rng.integers(0, TRAIN_INIT_STATES, size=k).tolist()
        seeds = self.rng.integers(0, 2**31 - 1, size=k).tolist()
        return seeds, inits

    def _reset_all(self) -> ObsBatch:
        if self.episode_mode:
            g = self.n // self.group_size
            seeds, inits = self._draw(g)
            rep = np.repeat(np.arange(g), self.group_size)
            self._group_ids = (self._group_counter + rep).astype(np.int64) + self.manager_id * 10**9
            self._group_counter += g
            seeds, inits = [seeds[i] for i in rep], [inits[i] for i in rep]
        else:
            seeds, inits = self._draw(self.n)
        obs, _ = self.env.reset(seed=seeds, options={"init_state": inits})
        self._done[:] = False
        self._prev[:] = 0.0
        return obs

    def _clear_buffer(self) -> None:
        self._buf: dict[str, list[Any]] = {
            k: []
            for k in (
                "obs",
                "actions",
                "log_probs",
                "values",
                "rewards",
                "dones",
                "costs",
                "versions",
                "valid",
                "features",
                "cost_values",
            )
        }
        self._buf_env_steps = 0
        self._buf_shielded = 0
        self._buf_quarantined = 0
        self._buf_decisions = 0
        self._episodes: dict[str, list[float]] = {"return": [], "length": [], "success": [], "cost": []}
        self._ep_start[:] = 0

    # -- the state machine ------------------------------------------------------------------------
    @property
    def needs_ticket(self) -> bool:
        """True before the first decision of a segment, until ``set_ticket``."""
        return self.ticket is None and self.segment_len == 0

    def ticket_samples(self) -> int:
        return self.n * self.rollout_steps

    def set_ticket(self, ticket: Ticket) -> None:
        self.ticket = ticket

    def request(self) -> list[ObsRequest]:
        """One request per shard for the current observations (all must be answered)."""
        if self._pending is not None:
            raise RuntimeError(f"manager {self.manager_id}: request {self._pending} is still open")
        self._request_id += 1
        self._pending = self._request_id
        self._replies = {}
        target = None if self.ticket is None else self.ticket.target_version
        prev = self._prev.copy() if self.shield is not None else None
        if len(self.shards) == 1:
            return [ObsRequest(self.manager_id, self._request_id, self.env_ids, self.obs, 0, target, prev)]
        return [
            ObsRequest(
                self.manager_id,
                self._request_id,
                self.env_ids[idx],
                take_obs(self.obs, idx),
                j,
                target,
                None if prev is None else prev[idx],
            )
            for j, idx in enumerate(self.shards)
        ]

    def close(self, bootstrap_values: np.ndarray | None = None) -> Segment:
        """Close the open segment; without values the trainer bootstraps from the current obs."""
        b = self._buf
        t = self.ticket
        seg = Segment(
            manager_id=self.manager_id,
            segment_id=self._segment_id,
            env_ids=self.env_ids,
            obs=_stack_obs(b["obs"]),
            actions=np.stack(b["actions"]),
            log_probs=np.stack(b["log_probs"]),
            values=np.stack(b["values"]),
            rewards=np.stack(b["rewards"]),
            dones=np.stack(b["dones"]),
            costs=np.stack(b["costs"]),
            versions=np.stack(b["versions"]),
            valid=np.stack(b["valid"]),
            env_steps=self._buf_env_steps,
            bootstrap_value=None if bootstrap_values is None else np.asarray(bootstrap_values, np.float32),
            bootstrap_obs=None if bootstrap_values is not None else self.obs,
            target_version=0 if t is None else t.target_version,
            ticket_id=-1 if t is None else t.ticket_id,
            closes_batch=False if t is None else t.closes_batch,
            batch_tickets=0 if t is None else t.batch_tickets,
            group_ids=None if self._group_ids is None else self._group_ids.copy(),
            episodes=self._episodes,
            features=_stack_features(b["features"]),
            cost_values=None if any(c is None for c in b["cost_values"]) else np.stack(b["cost_values"]),
            quarantined=self._buf_quarantined,
            shield_interventions=self._buf_shielded,
        )
        self._segment_id += 1
        self.segments_total += 1
        self.samples_total += seg.num_samples
        self.ticket = None
        self._clear_buffer()
        return seg

    @property
    def segment_len(self) -> int:
        return len(self._buf["actions"])

    def add_reply(self, reply: ActionReply) -> bool:
        """Record one shard's reply; True once every shard of the pending request has answered."""
        if reply.manager_id != self.manager_id or reply.request_id != self._pending:
            raise RuntimeError(
                f"manager {self.manager_id} got reply {reply.manager_id}/{reply.request_id}, "
                f"expected request {self._pending}"
            )
        if not 0 <= reply.shard < len(self.shards) or reply.shard in self._replies:
            raise RuntimeError(f"manager {self.manager_id}: unexpected or duplicate shard {reply.shard}")
        if not np.array_equal(reply.env_ids, self.env_ids[self.shards[reply.shard]]):
            raise RuntimeError(f"manager {self.manager_id}: reply env ids do not match the request")
        self._replies[reply.shard] = reply
        return len(self._replies) == len(self.shards)

    def _merged(self) -> _Merged:
        parts = [self._replies[j] for j in range(len(self.shards))]

        def cat(name: str) -> np.ndarray | None:
            cols = [getattr(r, name) for r in parts]
            if any(c is None for c in cols):
                return None
            return cols[0] if len(cols) == 1 else np.concatenate(cols)

        features = None
        if all(r.features is not None for r in parts):
            features = (
                parts[0].features
                if len(parts) == 1
                else {k: np.concatenate([r.features[k] for r in parts]) for k in parts[0].features}
            )
        return _Merged(
            actions=cat("actions"),
            log_probs=cat("log_probs"),
            values=cat("values"),
            versions=np.concatenate([np.full(len(r.env_ids), r.version, dtype=np.int64) for r in parts]),
            features=features,
            cost_values=cat("cost_values"),
            shielded=cat("shielded"),
        )

    def apply(self, replies: ActionReply | list[ActionReply]) -> list[Segment]:
        """Step the env with the replies to the pending request; return finished segments."""
        for r in [replies] if isinstance(replies, ActionReply) else replies:
            self.add_reply(r)
        if len(self._replies) != len(self.shards):
            raise RuntimeError(
                f"manager {self.manager_id}: {len(self._replies)}/{len(self.shards)} shards answered"
            )
        merged = self._merged()
        actions, log_probs, values, versions = (
            merged.actions,
            merged.log_probs,
            merged.values,
            merged.versions,
        )
        self._pending = None
        self._replies = {}
        out: list[Segment] = []

        valid = ~self._done
        untrained = np.zeros(self.n, dtype=bool)
        shielded = np.zeros(self.n, dtype=bool) if merged.shielded is None else merged.shielded & valid
        if self.shield is not None:
            # The guarantee: nothing unsafe reaches the simulator. The rollout workers projected
            # already (and scored the projected chunk); a chunk changed only here has log-probs of
            # another action, so its decision is not trained.
            safe, hit = self.shield.project(actions, self.obs["state"], self._prev)
            changed = hit.any(axis=1) & valid
            if changed.any():
                actions = np.where(changed[:, None, None], safe, actions)
                untrained = changed
                shielded = shielded | changed
        rebuilt = False
        t_step = time.perf_counter()
        try:
            obs, reward, term, trunc, info = self.env.step(actions)
            self.step_s_total += time.perf_counter() - t_step
            failed = np.asarray(info.get("failed", np.zeros(self.n, dtype=bool)), dtype=bool)
        except Exception as e:
            # The simulator raised for the whole batch: every running episode is dropped and the
            # env is rebuilt; its envs restart below like any finished env.
            self._env_error(e, "step")
            self._rebuild()
            rebuilt = True
            obs, failed = self.obs, valid.copy()
            reward, cost = np.zeros(self.n, np.float32), np.zeros(self.n, np.float32)
            term = trunc = np.zeros(self.n, dtype=bool)
            info = {"steps": np.zeros(self.n, np.int32), "cost": cost, "success": term}
        if failed.any() and not rebuilt:  # an env reported that its simulator failed this step
            self._env_error(RuntimeError(f"env(s) {self.env_ids[failed].tolist()} failed"), "step")
        steps = np.where(failed, 0, np.asarray(info["steps"]))
        cost = np.asarray(info["cost"])
        if self.shield is not None:
            note_executed(self._prev, actions, steps, self._act_low, self._act_high)
        n_shielded = int(shielded.sum())
        self._buf_shielded += n_shielded
        self.shield_interventions += n_shielded
        self.shield_untrained += int(untrained.sum())
        # Quarantine: an env that returns a non-finite observation, reward or cost, or whose
        # simulator failed, ends its episode here; that step and the episode's earlier decisions
        # in this segment are never trained (counted), and the episode is not reported.
        bad = valid & (failed | ~_finite_rows(obs, reward, cost))
        if bad.any():
            reward, cost = np.where(bad, 0.0, reward), np.where(bad, 0.0, cost)
            obs = _sanitize(obs, bad)
            self._quarantine(
                bad, "a failed simulator" if failed.any() else "a non-finite observation, reward or cost"
            )
        done = (term | trunc | bad) & valid
        b = self._buf
        b["obs"].append(self.obs)
        b["actions"].append(np.asarray(actions, dtype=np.float32))
        b["log_probs"].append(np.asarray(log_probs, dtype=np.float32))
        b["values"].append(np.asarray(values, dtype=np.float32))
        b["rewards"].append(np.where(valid, reward, 0.0).astype(np.float32))
        b["dones"].append(done | ~valid)
        b["costs"].append(np.where(valid, cost, 0.0).astype(np.float32))
        b["versions"].append(versions)
        b["valid"].append(valid & ~bad & ~untrained)
        b["features"].append(merged.features)
        b["cost_values"].append(merged.cost_values)
        self._buf_decisions += int((valid & ~bad & ~untrained).sum())
        self._buf_env_steps += int(steps.sum())
        self.env_steps_total += int(steps.sum())

        for _, ep in self._tracker.step(reward, cost, steps, done & ~bad, info["success"], valid):
            self._episodes["return"].append(ep.ret)
            self._episodes["length"].append(ep.length)
            self._episodes["success"].append(ep.success)
            self._episodes["cost"].append(ep.cost)
        self._tracker.drop(bad)
        self._ep_start[done] = self.segment_len

        if self.episode_mode:
            self._done |= done
            self.obs = obs
            self._note_progress()
            if self._done.all():
                out.append(self.close(np.zeros(self.n, dtype=np.float32)))
                self.obs = self._reset_all_safely()
            return out
        if done.any():
            obs = self._reset_safely(obs, done)
        self.obs = obs
        self._note_progress()
        if self.segment_len >= self.rollout_steps:
            out.append(self.close())
        return out

    # -- simulator failures -------------------------------------------------------------------------
    def _env_error(self, e: BaseException, where: str) -> None:
        """Count a simulator failure; too many within the window re-raise it (the worker fails)."""
        now = time.monotonic()
        self._error_times = [t for t in self._error_times if now - t < self.error_window_s] + [now]
        self.env_errors += 1
        self.last_env_error = f"{where}: {type(e).__name__}: {e}"
        log.warning("env manager %d: simulator failed in %s", self.manager_id, self.last_env_error)
        if len(self._error_times) > self.max_env_errors:
            raise RuntimeError(
                f"env manager {self.manager_id}: the simulator failed {len(self._error_times)}x "
                f"within {self.error_window_s:.0f} s (runtime.max_env_errors {self.max_env_errors}); "
                f"last: {self.last_env_error}"
            ) from e

    def _rebuild(self) -> None:
        try:
            self.env.close()
        except Exception:  # a crashed simulator may not close cleanly; it is replaced either way
            pass
        self.env = make_env(self._env_name, num_envs=self.n, **self._env_kwargs)

    def _reset_safely(self, obs: ObsBatch, done: np.ndarray) -> ObsBatch:
        """Reset the finished envs; if the simulator raises, rebuild it and restart every env,
        dropping the running episodes of the others (their decisions in this segment)."""
        idx = np.flatnonzero(done)
        seeds, inits = self._draw(len(idx))
        try:
            obs, _ = self.env.reset(seed=seeds, options={"init_state": inits, "env_indices": idx.tolist()})
            self._prev[idx] = 0.0
            return obs
        except Exception as e:
            self._env_error(e, "reset")
        self._drop_running(~done)
        self._rebuild()
        return self._reset_all_safely()

    def _reset_all_safely(self) -> ObsBatch:
        while True:
            try:
                return self._reset_all()
            except Exception as e:
                self._env_error(e, "reset")  # raises once the manager's error budget is spent
                self._rebuild()

    def _drop_running(self, rows: np.ndarray) -> None:
        """Episodes of envs ``rows`` end unreported: their recorded decisions in this segment
        become invalid (counted as quarantined)."""
        if not rows.any() or not self.segment_len:
            return
        self._count_quarantined(rows, self._invalidate(rows), 0)
        self._buf["dones"][-1] = self._buf["dones"][-1] | rows
        self._tracker.drop(rows)
        self._ep_start[rows] = self.segment_len

    def _invalidate(self, rows: np.ndarray) -> int:
        """Mark the recorded decisions of the running episodes of envs ``rows`` (in this segment)
        invalid; returns how many were valid."""
        n = 0
        for i in np.flatnonzero(rows):
            for k in range(int(self._ep_start[i]), self.segment_len):
                n += int(self._buf["valid"][k][i])
                self._buf["valid"][k][i] = False
        return n

    def _count_quarantined(self, rows: np.ndarray, recorded: int, current: int) -> None:
        """Count the episodes of ``rows`` as quarantined: ``recorded`` decisions already in the
        buffer (no longer valid) and ``current`` ones of the step about to be recorded."""
        self.quarantined_episodes += int(rows.sum())
        self.quarantined_samples += recorded + current
        self._buf_quarantined += recorded + current
        self._buf_decisions -= recorded

    def _note_progress(self) -> None:
        """What a crash of this worker would lose (reported to the driver): the open segment's
        env steps, valid decisions and finished episodes, and the episodes still running."""
        self.progress = {
            "ticket": -1 if self.ticket is None else self.ticket.ticket_id,
            "env_steps": self._buf_env_steps,
            "samples": self._buf_decisions,
            "episodes": len(self._episodes["success"]),
            "running": int((~self._done).sum()),
            "env_steps_total": self.env_steps_total,
            "step_s_total": self.step_s_total,
        }

    def _quarantine(self, bad: np.ndarray, why: str = "a non-finite observation, reward or cost") -> None:
        """Invalidate the buffered decisions of the episodes of envs ``bad`` and count them with
        the step about to be recorded."""
        recorded = self._invalidate(bad)
        if not self.quarantined_episodes:
            log.warning(
                "env manager %d: %s in env(s) %s; their episodes are quarantined (counted in "
                "quarantined_samples, never trained)",
                self.manager_id,
                why,
                self.env_ids[bad].tolist(),
            )
        self._count_quarantined(bad, recorded, int(bad.sum()))

    def shutdown(self) -> None:
        self.env.close()


@dataclass
class EnvWorkerSpec:
    worker_id: int
    manager_ids: list[int]
    routes: dict[tuple[int, int], int]
    """(manager, shard) -> rollout worker; a manager has as many shards as its routes name."""
    start_update: int = 0
    generation: int = 0
    """How many times this worker has been restarted (supervision)."""


def build_managers(cfg: Config, spec: EnvWorkerSpec) -> dict[int, EnvManager]:
    """The env managers of one env worker, by manager id."""
    algo = ALGOS.get(cfg.algo.name)
    return {
        m: EnvManager(
            manager_id=m,
            env_name=cfg.env.name,
            num_envs=cfg.env.num_envs,
            env_kwargs=cfg.env.kwargs,
            rollout_steps=cfg.train.rollout_steps,
            seed=cfg.seed * 1000 + spec.start_update,
            episode_mode=algo.episode_mode,
            group_size=cfg.algo.group_size,
            num_shards=sum(1 for mm, _ in spec.routes if mm == m),
            generation=spec.generation,
            max_env_errors=cfg.runtime.max_env_errors,
            error_window_s=cfg.runtime.restart_window_s,
            shield=cfg.safety.shield if cfg.safety.shield.enabled else None,
        )
        for m in spec.manager_ids
    }


class EnvTransport(Protocol):
    """What an env worker needs from the rest of the run; handles are opaque to it."""

    def acquire(self, samples: list[int]) -> list[Ticket]:
        """One staleness ticket per entry (samples reserved), in order."""

    def infer(self, rollout: int, request: ObsRequest) -> Any:
        """Send a request to rollout worker ``rollout``; a handle to its reply."""

    def wait(self, handles: list[Any], num_returns: int, timeout: float) -> list[Any]:
        """Up to ``timeout`` seconds for ``num_returns`` of ``handles``; the ready ones, in order."""

    def get(self, handles: list[Any]) -> list[ActionReply]:
        """The replies of ready handles."""

    def ship(self, seg: Segment) -> Any:
        """Send a segment to the trainer; a handle that is ready once the trainer took it."""

    def settle(self, handles: list[Any], keep: int) -> list[Any]:
        """Wait until at most ``keep`` of the shipped ``handles`` are outstanding; those remain."""

    def report(self, progress: dict[int, dict[str, int]]) -> None:
        """Per manager, what the open (or just shipped) segment holds; fire and forget."""


class EnvWorker:
    def __init__(
        self, cfg: Config, spec: EnvWorkerSpec, transport: EnvTransport, events: EventBuffer | None = None
    ) -> None:
        switches, _ = cfg.schedule()
        self.name = f"env{spec.worker_id}"
        self.transport = transport
        self.routes = dict(spec.routes)
        self.lockstep = not switches.env
        self.max_inflight = cfg.runtime.queue_segments
        self.events = events or EventBuffer(self.name, lambda evs: None)
        self.managers = build_managers(cfg, spec)
        self.shipped: list[tuple[int, int, int]] = []
        """(manager, segment id, samples) of every segment sent to the trainer."""

    def _tickets(self, ms: list[EnvManager]) -> None:
        need = [m for m in ms if m.needs_ticket]
        if need:
            tickets = self.transport.acquire([m.ticket_samples() for m in need])
            for m, t in zip(need, tickets, strict=True):
                m.set_ticket(t)

    def _issue(self, m: EnvManager, pending: dict[Any, int]) -> None:
        for req in m.request():
            pending[self.transport.infer(self.routes[(m.manager_id, req.shard)], req)] = m.manager_id

    def _step(self, m: EnvManager, puts: list[Any]) -> None:
        t0 = time.time()
        errors = m.env_errors
        segs = m.apply([])
        self.events.emit("env_step", t0=t0, t1=time.time(), manager=m.manager_id, n=m.n)
        if m.env_errors != errors:
            self.events.emit("env_error", manager=m.manager_id, count=m.env_errors, cause=m.last_env_error)
        for seg in segs:
            puts.append(self.transport.ship(seg))
            self.shipped.append((seg.manager_id, seg.segment_id, seg.num_samples))
            self.events.emit(
                "segment_shipped",
                manager=seg.manager_id,
                segment=seg.segment_id,
                ticket=seg.ticket_id,
                target_version=seg.target_version,
                closes_batch=seg.closes_batch,
                batch_tickets=seg.batch_tickets,
                samples=seg.num_samples,
                versions=sorted({int(v) for v in np.unique(seg.versions)}),
            )
        if len(puts) > self.max_inflight:
            # Bounded queue: wait until the trainer has taken enough segments.
            puts[:] = self.transport.settle(puts, self.max_inflight)

    def run(self, stop: threading.Event) -> dict[str, Any]:
        """Step until ``stop`` is set; every shipped segment has reached the trainer on return."""
        pending: dict[Any, int] = {}
        puts: list[Any] = []
        ms = list(self.managers.values())
        self._tickets(ms)
        for m in ms:
            self._issue(m, pending)
        last_report = time.monotonic()
        while not stop.is_set():
            need = len(pending) if self.lockstep else 1
            ready = self.transport.wait(list(pending), need, 0.2)
            if len(ready) < need:
                self.events.tick()
                if time.monotonic() - last_report > HEARTBEAT_S:  # waiting (throttled), not dead
                    self.transport.report({})
                    last_report = time.monotonic()
                continue
            last_report = time.monotonic()
            complete = []
            for ref, reply in zip(ready, self.transport.get(ready), strict=True):
                m = self.managers[pending.pop(ref)]
                if m.add_reply(reply):
                    complete.append(m)
            complete.sort(key=lambda m: m.manager_id)  # replies that land together step in one order
            for m in complete:
                self._step(m, puts)
            self.transport.report({m.manager_id: m.progress for m in complete})
            self._tickets(complete)
            for m in complete:
                self._issue(m, pending)
        self.transport.settle(puts, 0)
        self.events.flush()
        return self.stats()

    def stats(self) -> dict[str, Any]:
        ms = self.managers.values()
        return {
            "worker": self.name,
            "env_steps": sum(m.env_steps_total for m in ms),
            "samples": sum(m.samples_total for m in ms),
            "env_errors": sum(m.env_errors for m in ms),
            "shield_interventions": sum(m.shield_interventions for m in ms),
            "shield_untrained": sum(m.shield_untrained for m in ms),
            "shipped": list(self.shipped),
        }

    def close(self) -> None:
        for m in self.managers.values():
            m.shutdown()
