"""Trainer: the worker that turns arriving segments into published policy versions.

Segments arrive in any order, each naming its global batch (``target_version``, from its staleness
ticket). The trainer buffers them by target version and trains batch u once it holds every one of
its tickets (or has been told, ``void``, that a dead worker's will never come), in (manager,
segment) order (the same inputs give the same update whatever the arrival order);
with the streamer, the segments of the current batch are trained as they come. Each update
publishes version u + 1 (``publish`` hook), appends a metric row, steps the learning-rate schedule
and, every ``train.checkpoint_every`` updates and at the end, writes a checkpoint. The math is in
``learner.Learner``; a Ray actor only feeds ``add`` from its bounded queue (``actors.TrainerActor``).
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from asyncvla.config import Config
from asyncvla.rundir import atomic_dir, atomic_write_text
from asyncvla.runtime.events import EventBuffer
from asyncvla.runtime.gate import Ticket
from asyncvla.runtime.learner import Learner
from asyncvla.runtime.types import Segment
from asyncvla.runtime.weights import PolicySpec


@dataclass
class TrainerSpec:
    """What a trainer needs besides the config: where to write, and where the run stands."""

    run_path: str | None = None
    """Run directory for checkpoints (None: no checkpoints)."""
    start_state: dict[str, Any] = field(default_factory=lambda: {"update": 0, "env_steps": 0, "wall_s": 0.0})
    """Counters at the start (``update``, ``env_steps``, ``wall_s``, ...; a resumed run's state)."""
    optimizer_dir: str | None = None
    """Checkpoint directory whose optimizer and schedule state to load (resume)."""


@dataclass
class Lost:
    """Segments that will never arrive: their env worker died (supervision). Each ticket's batch
    trains without it; ``counts`` (per ticket, possibly empty) say what the segment held when the
    worker last reported: ``env_steps``, ``samples``, ``episodes`` (finished in it)."""

    tickets: list[Ticket]
    counts: list[dict[str, int]]
    restarts: int = 1
    """Worker restarts this loss comes with (counted in ``worker_restarts``)."""
    in_flight: int = 0
    """Episodes the dead worker was running: cut off (counted in ``lost_episodes``)."""


def weights_digest(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 of a state dict's names, dtypes, shapes and bytes (in name order)."""
    h = hashlib.sha256()
    for k in sorted(state):
        t = state[k].detach().cpu().contiguous()
        h.update(f"{k}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())  # hashed in place, no copy
    return h.hexdigest()


LOSS_COUNTERS = ("lost_segments", "lost_samples", "lost_env_steps", "lost_episodes", "worker_restarts")
"""Cumulative supervision counters of the trainer's state (metric rows, checkpoints, summary)."""
GUARD_COUNTERS = ("skipped_batches", "skipped_samples")
"""Cumulative counts of batches (and their samples) whose update was non-finite and rolled back."""


class NonFiniteError(RuntimeError):
    """An update produced a non-finite loss, gradient or weight and the run may not roll back."""


Publish = Callable[[int, dict[str, torch.Tensor]], Any]
"""(version, weights to sync) -> a handle the metric row keeps for evaluation (or None)."""


class Trainer:
    def __init__(
        self,
        cfg: Config,
        spec: TrainerSpec,
        policy: PolicySpec,
        publish: Publish | None = None,
        events: EventBuffer | None = None,
    ) -> None:
        switches, eta = cfg.schedule()
        start = dict(spec.start_state)
        # Seeded before the policy is built: a run's random streams depend only on its config.
        torch.manual_seed(cfg.seed + start["update"])
        self.policy_name = policy.name
        self.learner = Learner(
            policy.build("trainer"),
            cfg.algo,
            total_updates=cfg.train.updates,
            seed=cfg.seed + start["update"],
            max_staleness=eta,
            micro_batch=cfg.algo.minibatch_size,
            cache_features=cfg.train.cache_features,
        )
        if spec.optimizer_dir:
            self.learner.load_optimizer(Path(spec.optimizer_dir))
        self.streamer = switches.streamer
        self.record = cfg.runtime.record_schedule
        self.publish = publish or (lambda version, weights: None)
        self.events = events or EventBuffer("trainer", lambda evs: None)
        self.run_path = Path(spec.run_path) if spec.run_path else None
        self.checkpoint_every = cfg.train.checkpoint_every
        self.eval_every = cfg.train.eval_every
        self.state = start
        self.wall_s_start = float(start.get("wall_s", 0.0))
        self.updates_done = 0
        self._buffered: dict[int, list[Segment | Ticket]] = {}
        self._batch: list[Segment] = []
        self._in_batch = 0  # tickets of the open batch accounted for: segments and lost ones
        self._expected: int | None = None
        self._void_ids: set[int] = set()
        self.discarded_samples = 0
        """Samples of segments that arrived after their ticket was given up (``void``): never trained."""
        for k in (*LOSS_COUNTERS, *GUARD_COUNTERS):
            self.state.setdefault(k, 0)
        mon = cfg.monitor
        self.on_nan = mon.on_nan if mon.enabled else None
        self.max_rollbacks = mon.max_rollbacks
        self._last_checkpoint: Path | None = Path(spec.optimizer_dir) if spec.optimizer_dir else None
        # Before the first checkpoint, a rollback returns to the weights the run started from.
        self._initial = (
            {k: v.detach().clone() for k, v in self.policy.state_dict().items()}
            if self.on_nan == "rollback" and self._last_checkpoint is None
            else None
        )
        self._rows: list[dict[str, Any]] = []
        self._last_handle: Any = None
        self._lock = threading.Lock()
        self.received: list[tuple[int, int, int]] = []
        """(manager, segment id, samples) of every segment that reached the trainer."""
        self.leftover: list[Segment] = []
        self.trained_samples = 0
        self.rejected_samples = 0
        self.recent_success: deque[float] = deque(maxlen=100)
        self.recent_return: deque[float] = deque(maxlen=100)
        self.recent_cost: deque[float] = deque(maxlen=100)
        self.start()

    @property
    def version(self) -> int:
        return self.learner.version

    @property
    def policy(self):
        return self.learner.policy

    def start(self) -> None:
        """Start the clocks of the first update (call when segments begin to flow)."""
        self._t_start = self._t_batch = time.perf_counter()
        self._t_busy = 0.0

    # -- segments in ---------------------------------------------------------------------------
    def add(self, seg: Segment) -> int:
        """Take one segment; train every batch it completes. Returns the number of updates made."""
        with self._lock:
            self.received.append((seg.manager_id, seg.segment_id, seg.num_samples))
            if seg.ticket_id in self._void_ids:  # given up on (``void``) before it arrived
                self.discarded_samples += seg.num_samples
                return 0
        self._buffered.setdefault(seg.target_version, []).append(seg)
        return self._advance()

    def void(self, lost: Lost, settle: bool = True) -> int:
        """Give up the segments of ``lost.tickets`` that have not arrived: their batches train
        without them (an update whose every ticket is lost publishes unchanged weights), so the
        schedule never waits for a dead worker. Counts what they held; returns updates made.
        ``settle=False`` (after the last update) only counts."""
        st = self.state
        st["worker_restarts"] += lost.restarts
        st["lost_episodes"] += lost.in_flight
        # A ticket of a trained batch has arrived (the batch needed it); the others that arrived
        # are buffered or in the open batch.
        arrived = {s.ticket_id for v in self._buffered.values() for s in v if isinstance(s, Segment)}
        arrived |= {s.ticket_id for s in self._batch}
        for t, c in zip(lost.tickets, lost.counts, strict=True):
            settled = t.target_version < self.version or t.ticket_id in arrived
            if settled or t.ticket_id in self._void_ids:
                continue
            with self._lock:
                self._void_ids.add(t.ticket_id)
            st["lost_segments"] += 1
            st["lost_samples"] += int(c.get("samples", 0))
            st["lost_env_steps"] += int(c.get("env_steps", 0))
            st["lost_episodes"] += int(c.get("episodes", 0))
            if settle:
                self._buffered.setdefault(t.target_version, []).append(t)
        return self._advance() if settle else 0

    def _advance(self) -> int:
        made = 0
        u = self.version
        while self._buffered.get(u):
            item = self._buffered[u].pop(0)
            if item.closes_batch:
                self._expected = item.batch_tickets
            self._in_batch += 1
            if isinstance(item, Segment):
                self._batch.append(item)
                if self.streamer:
                    t0 = time.time()
                    ran = self.learner.stream_add(item)
                    if ran:
                        self.events.emit("micro_batch", t0=t0, t1=time.time(), count=ran, version=u)
                    self._t_busy += time.time() - t0
            if self._expected is not None and self._in_batch == self._expected:
                self._train_batch(u)
                made += 1
                u = self.version
        return made

    def keep_leftover(self, seg: Segment) -> None:
        """A segment that arrived after the last update: accounted for, never trained."""
        with self._lock:
            self.received.append((seg.manager_id, seg.segment_id, seg.num_samples))
            self.leftover.append(seg)

    def _train_batch(self, u: int) -> None:
        # Without the streamer the batch trains in (manager, segment) order: the same segments
        # give the same update whichever order they arrived or took their tickets in.
        order = [[s.manager_id, s.segment_id] for s in self._batch]
        segments = sorted(self._batch, key=lambda s: (s.manager_id, s.segment_id))
        t0 = time.time()
        metrics = self.learner.stream_finish() if self.streamer else self.learner.train(segments)
        if self.on_nan is not None and not self.learner.finite(metrics):
            self._recover(u, metrics)
        t1 = time.time()
        self._t_busy += t1 - t0
        # ``segments``: the batch in arrival order, the streamer's micro-batch order (``trust.replay``)
        extra = {"segments": order} if self.record else {}
        self.events.emit("train", t0=t0, t1=t1, version=u, samples=metrics["train_samples"], **extra)
        self.events.emit("optimizer_step", version=self.version)
        if metrics["rejected_samples"]:
            self.events.emit("rejected", version=u, samples=metrics["rejected_samples"])
        t = time.time()
        weights = self.policy.sync_state_dict()
        self._last_handle = self.publish(self.version, weights)
        self.events.emit("weights_published", version=self.version, t0=t, t1=time.time())
        if self.record:
            metrics["weights_sha256"] = weights_digest(weights)
        self.trained_samples += int(metrics["train_samples"])
        self.rejected_samples += int(metrics["rejected_samples"])
        self.updates_done += 1
        now = time.perf_counter()
        self._record(metrics, now - self._t_batch, self._t_busy, now - self._t_start)
        self._t_batch = time.perf_counter()
        self._t_busy = 0.0
        self._batch, self._expected, self._in_batch = [], None, 0

    def _recover(self, u: int, metrics: dict[str, Any]) -> None:
        """Batch u made the weights non-finite: restore the last good checkpoint (or the starting
        weights), skip the batch (counted) and let the schedule continue with version u + 1."""
        st = self.state
        where = f"update {u + 1}: a non-finite loss, gradient or weight"
        if self.on_nan == "stop":
            raise NonFiniteError(f"{where} (monitor.on_nan: stop)")
        if st["skipped_batches"] >= self.max_rollbacks:
            raise NonFiniteError(f"{where}, after {st['skipped_batches']} rollbacks (monitor.max_rollbacks)")
        self.learner.restore(self._last_checkpoint, self._initial)
        st["skipped_batches"] += 1
        st["skipped_samples"] += int(metrics["train_samples"])
        metrics["rolled_back_to"] = (
            0 if self._last_checkpoint is None else int(self._last_checkpoint.name.removeprefix("update_"))
        )
        metrics["train_samples"] = 0.0
        self.events.emit("rollback", version=u, to_update=metrics["rolled_back_to"])

    # -- metric rows and checkpoints -----------------------------------------------------------
    def _record(self, metrics: dict[str, Any], dt: float, busy: float, elapsed: float) -> None:
        st = self.state
        st["update"] += 1
        st["env_steps"] += metrics.pop("batch_env_steps")
        st["decisions"] = st.get("decisions", 0) + int(metrics["train_samples"])
        st["rejected_samples"] = st.get("rejected_samples", 0) + int(metrics["rejected_samples"])
        st["quarantined_samples"] = st.get("quarantined_samples", 0) + int(metrics["quarantined_samples"])
        st["wall_s"] = self.wall_s_start + elapsed
        self.recent_success.extend(metrics.pop("episodes_success"))
        self.recent_return.extend(metrics.pop("episodes_return"))
        self.recent_cost.extend(metrics.pop("episodes_cost"))
        row = {
            "update": st["update"],
            "policy_version": self.version,
            "env_steps": st["env_steps"],
            "decisions": st["decisions"],
            "wall_s": st["wall_s"],
            "success_rate": float(np.mean(self.recent_success)) if self.recent_success else 0.0,
            "episode_return": float(np.mean(self.recent_return)) if self.recent_return else 0.0,
            "episode_cost": float(np.mean(self.recent_cost)) if self.recent_cost else 0.0,
            "episodes": len(self.recent_success),
            "time_update_s": dt,
            "time_train_s": busy,
            "trainer_busy_frac": busy / dt if dt > 0 else 0.0,
            "lr": metrics.pop("lr"),
            **metrics,
            **{k: st[k] for k in (*LOSS_COUNTERS, *GUARD_COUNTERS)},
        }
        if self.eval_every and st["update"] % self.eval_every == 0:
            row["_weights"] = [self._last_handle]
        if self.run_path is not None and st["update"] % self.checkpoint_every == 0:
            self.save_checkpoint()
        with self._lock:
            self._rows.append(row)

    def pop_rows(self) -> list[dict[str, Any]]:
        with self._lock:
            rows, self._rows = self._rows, []
        return rows

    def save_checkpoint(self) -> Path:
        """``checkpoints/update_NNNNN/`` (policy, optimizer + schedule, state.json), then
        ``checkpoints/latest.json`` pointing at it; both written atomically."""
        from asyncvla.policies import save_policy

        assert self.run_path is not None
        final = self.run_path / "checkpoints" / f"update_{self.state['update']:05d}"
        with atomic_dir(final) as d:
            save_policy(self.policy, d, self.policy_name)
            self.learner.save_optimizer(d)
            atomic_write_text(d / "state.json", json.dumps(self.state, indent=2))
        atomic_write_text(self.run_path / "checkpoints" / "latest.json", json.dumps({"path": final.name}))
        self._last_checkpoint = final
        self._initial = None
        return final

    def finish(self) -> None:
        """End of the run: the last update always has a checkpoint; whatever arrived but was not
        trained (the run stopped first) becomes leftover, accounted for, not lost."""
        if self.run_path is not None and self.updates_done and self.state["update"] % self.checkpoint_every:
            self.save_checkpoint()
        with self._lock:
            self.leftover.extend(
                [s for v in self._buffered.values() for s in v if isinstance(s, Segment)] + self._batch
            )
        self._buffered, self._batch = {}, []

    def accounting(self) -> dict[str, Any]:
        with self._lock:
            return {
                "received": list(self.received),
                "trained_samples": self.trained_samples,
                "rejected_samples": self.rejected_samples,
                "leftover_samples": sum(s.num_samples for s in self.leftover),
                "discarded_samples": self.discarded_samples,
                "state": dict(self.state),
            }
