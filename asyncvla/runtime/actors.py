"""The three workers (plus a small coordinator) as Ray actors.

They wrap the plain classes (``EnvManager``, ``RolloutWorker``, ``Trainer``) and contain no
model- or env-specific code: envs and policies come from the registries by name.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
import warnings
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import ray
import torch

from asyncvla.runtime.batching import DynamicBatcher, Waiting
from asyncvla.runtime.events import EventBuffer, EventWriter
from asyncvla.runtime.gate import StalenessGate, Ticket, admissible
from asyncvla.runtime.types import ActionReply, ObsRequest, Segment


def _set_threads(n: int) -> None:
    # Arrays that arrive through the object store are read-only; the workers never write to them.
    warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
    if n > 0:
        torch.set_num_threads(n)


def _placed_policy(
    role: str, name: str, kwargs: dict[str, Any], weights: dict[str, Any], version: int
) -> Any:
    """Build the registered policy in this worker, tell it its role, load the published weights."""
    from asyncvla.policies import make_policy
    from asyncvla.runtime.weights import unpack

    policy = make_policy(name, **kwargs)
    policy.on_placed(role)
    policy.load_state_dict(unpack(weights))
    policy.version = version
    return policy


class Coordinator:
    """Hands out staleness tickets and writes ``events.jsonl``. Light: no torch work."""

    def __init__(self, batch_samples: int, start_version: int, events_path: str | None) -> None:
        self.gate = StalenessGate(batch_samples, start_version)
        self.writer = EventWriter(Path(events_path) if events_path else None)

    def ping(self) -> str:
        return "coordinator"

    def acquire(self, samples: list[int]) -> list[Ticket]:
        return [self.gate.acquire(n) for n in samples]

    def log(self, events: list[dict[str, Any]]) -> None:
        self.writer.write(events)

    def close(self) -> None:
        self.writer.close()


class EnvWorkerActor:
    """Steps its managers; each waits only for its own actions (``lockstep=False``)."""

    def __init__(
        self,
        worker_id: int,
        managers: list[dict[str, Any]],
        routes: dict[tuple[int, int], int],
        rollouts: list[Any],
        trainer: Any,
        coordinator: Any,
        lockstep: bool,
        max_inflight_segments: int,
        torch_threads: int,
    ) -> None:
        from asyncvla.runtime.env_worker import EnvManager

        _set_threads(torch_threads)
        self.name = f"env{worker_id}"
        self.managers = {spec["manager_id"]: EnvManager(**spec) for spec in managers}
        self.routes = routes
        self.rollouts = rollouts
        self.trainer = trainer
        self.coordinator = coordinator
        self.lockstep = lockstep
        self.max_inflight = max_inflight_segments
        self.events = EventBuffer(self.name, lambda ev: coordinator.log.remote(ev))
        self._stop = threading.Event()
        self.shipped: list[tuple[int, int, int]] = []
        """(manager, segment id, samples) of every segment sent to the trainer."""

    def ping(self) -> str:
        return self.name

    def _tickets(self, ms: list[Any]) -> None:
        need = [m for m in ms if m.needs_ticket]
        if need:
            tickets = ray.get(self.coordinator.acquire.remote([m.ticket_samples() for m in need]))
            for m, t in zip(need, tickets, strict=True):
                m.set_ticket(t)

    def _issue(self, m: Any, pending: dict[Any, int]) -> None:
        for req in m.request():
            ref = self.rollouts[self.routes[(m.manager_id, req.shard)]].infer.remote(req)
            pending[ref] = m.manager_id

    def _step(self, m: Any, puts: list[Any]) -> None:
        t0 = time.time()
        segs = m.apply([])
        self.events.emit("env_step", t0=t0, t1=time.time(), manager=m.manager_id, n=m.n)
        for seg in segs:
            puts.append(self.trainer.put_segment.remote(seg))
            self.shipped.append((seg.manager_id, seg.segment_id, seg.num_samples))
            self.events.emit(
                "segment_shipped",
                manager=seg.manager_id,
                segment=seg.segment_id,
                ticket=seg.ticket_id,
                target_version=seg.target_version,
                samples=seg.num_samples,
                versions=sorted({int(v) for v in np.unique(seg.versions)}),
            )
        if len(puts) > self.max_inflight:
            # Bounded queue: wait until the trainer has taken enough segments.
            done, rest = ray.wait(puts, num_returns=len(puts) - self.max_inflight)
            ray.get(done)
            puts[:] = rest

    def run(self) -> dict[str, Any]:
        pending: dict[Any, int] = {}
        puts: list[Any] = []
        ms = list(self.managers.values())
        self._tickets(ms)
        for m in ms:
            self._issue(m, pending)
        while not self._stop.is_set():
            if self.lockstep:
                ready, _ = ray.wait(list(pending), num_returns=len(pending), timeout=0.2)
                if len(ready) < len(pending):
                    self.events.tick()
                    continue
            else:
                ready, _ = ray.wait(list(pending), num_returns=1, timeout=0.2)
            if not ready:
                self.events.tick()
                continue
            complete = []
            for ref, reply in zip(ready, ray.get(ready), strict=True):
                m = self.managers[pending.pop(ref)]
                if m.add_reply(reply):
                    complete.append(m)
            for m in complete:
                self._step(m, puts)
            self._tickets(complete)
            for m in complete:
                self._issue(m, pending)
        ray.get(puts)  # every shipped segment has reached the trainer (queue or leftover)
        self.events.flush()
        return self.stats()

    def stop(self) -> None:
        self._stop.set()

    def stats(self) -> dict[str, Any]:
        ms = self.managers.values()
        return {
            "worker": self.name,
            "env_steps": sum(m.env_steps_total for m in ms),
            "samples": sum(m.samples_total for m in ms),
            "shipped": list(self.shipped),
        }


class RolloutServer:
    """Dynamic-batching inference (asyncio actor); adopts the newest weights between batches."""

    def __init__(
        self,
        worker_id: int,
        policy_name: str,
        policy_kwargs: dict[str, Any],
        weights: dict[str, Any],
        version: int,
        max_batch_samples: int,
        batch_timeout_ms: float,
        static_shards: list[tuple[int, int]] | None,
        max_staleness: int,
        coordinator: Any,
        torch_threads: int,
        seed: int,
    ) -> None:
        from asyncvla.runtime.rollout_worker import RolloutWorker

        _set_threads(torch_threads)
        torch.manual_seed(seed)  # action sampling: reproducible wherever the batches are (sync)
        self.name = f"rollout{worker_id}"
        policy = _placed_policy("rollout", policy_name, policy_kwargs, weights, version)
        self.worker = RolloutWorker(policy, worker_id)
        self.batcher = DynamicBatcher(
            max_batch_samples,
            batch_timeout_ms / 1000.0,
            None if static_shards is None else {tuple(s) for s in static_shards},
        )
        self.max_staleness = max_staleness
        self.events = EventBuffer(self.name, lambda ev: coordinator.log.remote(ev))
        self.pool = ThreadPoolExecutor(1)
        self._offered: tuple[int, Any, float] | None = None
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._throttled = False
        self.served = 0
        self.batches = 0
        self.adopted: list[int] = []

    async def ping(self) -> str:
        return self.name

    def _start(self) -> None:
        if self._task is None:
            self._wake = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._loop())

    async def infer(self, req: ObsRequest) -> ActionReply:
        self._start()
        fut = asyncio.get_running_loop().create_future()
        self.batcher.add(Waiting(req, req.num_samples, (req.manager_id, req.shard), time.monotonic(), fut))
        self._wake.set()
        return await fut

    async def offer_weights(self, version: int, ref: list[Any], published_t: float) -> None:
        """Keep only the newest offer; it is adopted before the next batch."""
        self._start()
        if version > self.worker.version and (self._offered is None or version > self._offered[0]):
            self._offered = (version, ref[0], published_t)
            self._wake.set()

    async def _adopt(self) -> None:
        if self._offered is None:
            return
        from asyncvla.runtime.weights import unpack

        version, ref, published_t = self._offered
        self._offered = None
        payload = await ref
        self.worker.set_weights(version, unpack(payload))
        self.adopted.append(version)
        self.events.emit("weights_adopted", version=version, latency_s=time.time() - published_t)

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self._wake.clear()
            await self._adopt()
            v = self.worker.version
            waiting = self.batcher.waiting
            adm = [
                w
                for w in waiting
                if w.request.target_version is None
                or admissible(w.request.target_version, v, self.max_staleness)
            ]
            held = len(waiting) - len(adm)
            if held and not self._throttled:
                self._throttled = True
                self.events.emit("throttle_on", version=v, held=held)
            elif not held and self._throttled:
                self._throttled = False
                self.events.emit("throttle_off", version=v)
            now = time.monotonic()
            ready, reason = self.batcher.ready(now, adm)
            if ready:
                batch = self.batcher.take(adm)
                reqs = [w.request for w in batch]
                n = sum(w.samples for w in batch)
                self.events.emit(
                    "batch_formed",
                    samples=n,
                    requests=len(reqs),
                    reason=reason,
                    version=v,
                    managers=[r.manager_id for r in reqs],
                    wait_ms=1000 * (now - min(w.arrived for w in batch)),
                )
                t0 = time.time()
                try:
                    replies = await loop.run_in_executor(self.pool, self.worker.infer, reqs)
                except Exception as e:  # the requesters see the error
                    for w in batch:
                        w.token.set_exception(e)
                    raise
                self.events.emit("batch_inferred", t0=t0, t1=time.time(), samples=n, version=v)
                for w, r in zip(batch, replies, strict=True):
                    w.token.set_result(r)
                self.served += n
                self.batches += 1
                continue
            self.events.tick()
            deadline = self.batcher.deadline()
            timeout = 1.0 if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                await asyncio.wait_for(self._wake.wait(), timeout)
            except asyncio.TimeoutError:
                pass

    async def stats(self) -> dict[str, Any]:
        self.events.flush()
        return {
            "worker": self.name,
            "version": self.worker.version,
            "served": self.served,
            "batches": self.batches,
            "adopted": list(self.adopted),
        }


class TrainerActor:
    """Consumes segments from a bounded queue, trains global batches in version order, publishes."""

    def __init__(
        self,
        policy_name: str,
        policy_kwargs: dict[str, Any],
        weights: dict[str, Any],
        version: int,
        algo: Any,
        seed: int,
        max_staleness: int,
        streamer: bool,
        micro_batch: int,
        queue_segments: int,
        rollouts: list[Any],
        coordinator: Any,
        run_path: str | None,
        checkpoint_every: int,
        start_state: dict[str, Any],
        optimizer_dir: str | None,
        eval_every: int,
        torch_threads: int,
        total_updates: int,
    ) -> None:
        from asyncvla.runtime.trainer import Trainer

        _set_threads(torch_threads)
        torch.manual_seed(seed)
        self.name = "trainer"
        policy = _placed_policy("trainer", policy_name, policy_kwargs, weights, version)
        self.policy_name = policy_name
        self.trainer = Trainer(policy, algo, seed=seed, max_staleness=max_staleness, micro_batch=micro_batch)
        if optimizer_dir:
            self.trainer.load_optimizer(Path(optimizer_dir))
        self.streamer = streamer
        self.total_updates = total_updates
        self.q: queue.Queue[Segment] = queue.Queue(maxsize=queue_segments)
        self.rollouts = rollouts
        self.events = EventBuffer(self.name, lambda ev: coordinator.log.remote(ev))
        self.run_path = Path(run_path) if run_path else None
        self.checkpoint_every = checkpoint_every
        self.eval_every = eval_every
        self.state = dict(start_state)
        self._anneal()
        self._rows: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._draining = threading.Event()
        self.received: list[tuple[int, int, int]] = []
        self.trained_samples = 0
        self.rejected_samples = 0
        self.leftover: list[Segment] = []
        self.recent_success: deque[float] = deque(maxlen=100)
        self.recent_return: deque[float] = deque(maxlen=100)

    def ping(self) -> str:
        return self.name

    def _anneal(self) -> None:
        if self.trainer.algo.anneal_lr:
            self.trainer.set_lr_fraction(max(0.0, 1.0 - self.state["update"] / self.total_updates))

    def put_segment(self, seg: Segment) -> None:
        """Blocks while the queue is full: backpressure on the env workers. After the run it
        accepts everything (as leftover) so no sender stays blocked."""
        while not self._draining.is_set():
            try:
                self.q.put(seg, timeout=0.2)
                return
            except queue.Full:
                continue
        with self._lock:
            self.received.append((seg.manager_id, seg.segment_id, seg.num_samples))
            self.leftover.append(seg)

    def _publish(self) -> None:
        from asyncvla.runtime.weights import pack

        t = time.time()
        ref = ray.put(pack(self.trainer.policy.sync_state_dict()))
        for r in self.rollouts:
            r.offer_weights.remote(self.trainer.version, [ref], t)
        self.events.emit("weights_published", version=self.trainer.version, t0=t, t1=time.time())
        self._last_ref = ref

    def run(self, updates: int) -> dict[str, Any]:
        from asyncvla.runtime.weights import pack

        buffered: dict[int, list[Segment]] = {}
        got = 0
        expected: int | None = None
        segments: list[Segment] = []
        done = 0
        t_start = time.perf_counter()
        t_batch = time.perf_counter()
        t_busy = 0.0
        while done < updates and not self._stop.is_set():
            try:
                seg = self.q.get(timeout=0.2)
            except queue.Empty:
                self.events.tick()
                continue
            with self._lock:
                self.received.append((seg.manager_id, seg.segment_id, seg.num_samples))
            buffered.setdefault(seg.target_version, []).append(seg)
            u = self.trainer.version
            while buffered.get(u):
                seg = buffered[u].pop(0)
                got += 1
                if seg.closes_batch:
                    expected = seg.batch_tickets
                segments.append(seg)
                if self.streamer:
                    t0 = time.time()
                    ran = self.trainer.stream_add(seg)
                    if ran:
                        self.events.emit("micro_batch", t0=t0, t1=time.time(), count=ran, version=u)
                    t_busy += time.time() - t0
                if expected is not None and got == expected:
                    t0 = time.time()
                    metrics = self.trainer.stream_finish() if self.streamer else self.trainer.train(segments)
                    t1 = time.time()
                    t_busy += t1 - t0
                    self.events.emit("train", t0=t0, t1=t1, version=u, samples=metrics["train_samples"])
                    self.events.emit("optimizer_step", version=self.trainer.version)
                    if metrics["rejected_samples"]:
                        self.events.emit("rejected", version=u, samples=metrics["rejected_samples"])
                    self._publish()
                    self.trained_samples += int(metrics["train_samples"])
                    self.rejected_samples += int(metrics["rejected_samples"])
                    done += 1
                    self._record(
                        metrics, time.perf_counter() - t_batch, t_busy, time.perf_counter() - t_start
                    )
                    self._anneal()
                    t_batch = time.perf_counter()
                    t_busy = 0.0
                    segments, got, expected = [], 0, None
                    u = self.trainer.version
        if self.run_path is not None and done and self.state["update"] % self.checkpoint_every:
            self.save_checkpoint()  # the last update always has a checkpoint
        # What arrived but was not trained (the run stopped first) is accounted for, not lost.
        self._draining.set()
        with self._lock:
            self.leftover.extend([s for v in buffered.values() for s in v] + segments)
        self._drain()
        self.events.flush()
        final = pack(self.trainer.policy.state_dict())
        return {"version": self.trainer.version, "updates": self.state["update"], "weights": final}

    def _record(self, metrics: dict[str, Any], dt: float, busy: float, elapsed: float) -> None:
        st = self.state
        st["update"] += 1
        st["env_steps"] += metrics.pop("batch_env_steps")
        st["decisions"] = st.get("decisions", 0) + int(metrics["train_samples"])
        st["wall_s"] = st.get("wall_s_start", 0.0) + elapsed
        self.recent_success.extend(metrics.pop("episodes_success"))
        self.recent_return.extend(metrics.pop("episodes_return"))
        row = {
            "update": st["update"],
            "policy_version": self.trainer.version,
            "env_steps": st["env_steps"],
            "decisions": st["decisions"],
            "wall_s": st["wall_s"],
            "success_rate": float(np.mean(self.recent_success)) if self.recent_success else 0.0,
            "episode_return": float(np.mean(self.recent_return)) if self.recent_return else 0.0,
            "episodes": len(self.recent_success),
            "time_update_s": dt,
            "time_train_s": busy,
            "trainer_busy_frac": busy / dt if dt > 0 else 0.0,
            "lr": self.trainer.optimizer.param_groups[0]["lr"],
            **metrics,
        }
        if self.eval_every and st["update"] % self.eval_every == 0:
            row["_weights"] = [self._last_ref]
        if self.run_path is not None and (st["update"] % self.checkpoint_every == 0):
            self.save_checkpoint()
        with self._lock:
            self._rows.append(row)

    def save_checkpoint(self) -> str:
        import json

        from asyncvla.policies import save_policy

        d = self.run_path / "checkpoints" / f"update_{self.state['update']:05d}"
        save_policy(self.trainer.policy, d, self.policy_name)
        self.trainer.save_optimizer(d)
        state = {k: v for k, v in self.state.items() if k != "wall_s_start"}
        (d / "state.json").write_text(json.dumps(state, indent=2))
        (self.run_path / "checkpoints" / "latest.json").write_text(json.dumps({"path": d.name}))
        return str(d)

    def pop_rows(self) -> list[dict[str, Any]]:
        with self._lock:
            rows, self._rows = self._rows, []
        return rows

    def stop(self) -> None:
        self._stop.set()

    def _drain(self) -> None:
        """Move whatever is still queued (a put may land just after the run ends) to leftover."""
        with self._lock:
            while True:
                try:
                    seg = self.q.get_nowait()
                except queue.Empty:
                    break
                self.received.append((seg.manager_id, seg.segment_id, seg.num_samples))
                self.leftover.append(seg)

    def accounting(self) -> dict[str, Any]:
        """Call after the env workers have stopped (their puts have all returned)."""
        self._drain()
        with self._lock:
            return {
                "received": list(self.received),
                "trained_samples": self.trained_samples,
                "rejected_samples": self.rejected_samples,
                "leftover_samples": sum(s.num_samples for s in self.leftover),
                "state": dict(self.state),
            }
