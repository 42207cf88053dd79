"""Ray actors around the three workers (plus a small coordinator).

Each wrapper builds its plain worker (``EnvWorker``, ``RolloutWorker``, ``Trainer``) from the typed
``Config`` and a spec, and only adds what Ray needs: remote handles, the object store for weights,
thread/asyncio plumbing and the event sink. The workers' logic is tested without Ray.
"""

from __future__ import annotations

import asyncio
import os
import queue
import socket
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import ray
import torch

from asyncvla.config import Config
from asyncvla.runtime.env_worker import EnvWorker, EnvWorkerSpec
from asyncvla.runtime.events import EventBuffer, EventWriter
from asyncvla.runtime.gate import StalenessGate, Ticket
from asyncvla.runtime.placement import plan, use_deterministic
from asyncvla.runtime.rollout_worker import RolloutSpec, RolloutWorker
from asyncvla.runtime.trainer import Lost, Trainer, TrainerSpec
from asyncvla.runtime.types import ActionReply, ObsRequest, Segment
from asyncvla.runtime.weights import PolicySpec, pack, unpack


def _set_threads(cfg: Config, role: str) -> None:
    # Arrays that arrive through the object store are read-only; the workers never write to them.
    warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
    n = plan(cfg)[role].torch_threads
    if n > 0:
        torch.set_num_threads(n)
    use_deterministic(cfg.runtime.deterministic)


def _events(name: str, coordinator: Any) -> EventBuffer:
    return EventBuffer(name, lambda ev: coordinator.log.remote(ev))


def whereabouts(name: str) -> dict[str, Any]:
    """Where an actor runs: its name, process id, host and Ray node (``worker_start`` events)."""
    return {
        "actor": name,
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "node": ray.get_runtime_context().get_node_id(),
    }


class Coordinator:
    """Hands out staleness tickets, remembers who holds which (supervision) and writes
    ``events.jsonl``. Light: no torch work."""

    def __init__(self, batch_samples: int, start_version: int, events_path: str | None) -> None:
        self.gate = StalenessGate(batch_samples, start_version)
        self.writer = EventWriter(Path(events_path) if events_path else None)
        self.held: dict[str, dict[int, Ticket]] = {}
        """holder -> its tickets of batches not trained yet"""
        self.progress: dict[int, dict[str, int]] = {}
        """ticket id -> what its segment held at the holder's last report"""
        self.managers: dict[str, dict[int, dict[str, int]]] = {}
        """holder -> manager -> its last report"""
        self.last_report: dict[str, float] = {}
        """holder -> time.monotonic() of its last report"""
        self._seen: dict[str, tuple[float, int, float]] = {}
        """holder -> (step seconds, env steps, step ms) at the last ``health`` call"""

    def ping(self) -> dict[str, Any]:
        return whereabouts("coordinator")

    def acquire(self, samples: list[int], holder: str = "") -> list[Ticket]:
        out = [self.gate.acquire(n) for n in samples]
        self.held.setdefault(holder, {}).update({t.ticket_id: t for t in out})
        return out

    def report(self, holder: str, progress: dict[int, dict[str, int]]) -> None:
        self.last_report[holder] = time.monotonic()
        for m, p in progress.items():
            if p.get("ticket", -1) >= 0:
                self.progress[p["ticket"]] = p
            self.managers.setdefault(holder, {})[m] = p

    def trained(self, version: int) -> None:
        """Batches below ``version`` are trained, so their tickets all arrived: forget them."""
        for tickets in self.held.values():
            for tid in [tid for tid, t in tickets.items() if t.target_version < version]:
                del tickets[tid]
                self.progress.pop(tid, None)

    def health(self) -> dict[str, dict[str, float]]:
        """Per env worker: seconds since its last report and its mean simulator time per env step
        (ms) since the previous call (the monitor's heartbeat and latency-drift checks)."""
        now = time.monotonic()
        out = {}
        for holder, t in self.last_report.items():
            ms = self.managers.get(holder, {}).values()
            step_s = sum(p.get("step_s_total", 0.0) for p in ms)
            steps = sum(p.get("env_steps_total", 0) for p in ms)
            s0, n0, last_ms = self._seen.get(holder, (0.0, 0, float("nan")))
            step_ms = 1000.0 * (step_s - s0) / (steps - n0) if steps > n0 else last_ms
            self._seen[holder] = (step_s, steps, step_ms)
            out[holder] = {"since_report_s": now - t, "step_ms": step_ms}
        return out

    def in_flight(self, holder: str) -> int:
        """Episodes the holder's managers were running at their last report."""
        return sum(p.get("running", 0) for p in self.managers.get(holder, {}).values())

    def release(self, holder: str) -> tuple[list[Ticket], list[dict[str, int]], int]:
        """A holder died: its open tickets, what each segment held, and the env steps it collected."""
        self.last_report.pop(holder, None)
        self._seen.pop(holder, None)
        tickets = sorted(self.held.pop(holder, {}).values(), key=lambda t: t.ticket_id)
        counts = [self.progress.pop(t.ticket_id, {}) for t in tickets]
        return (
            tickets,
            counts,
            sum(p.get("env_steps_total", 0) for p in self.managers.pop(holder, {}).values()),
        )

    def log(self, events: list[dict[str, Any]]) -> None:
        self.writer.write(events)

    def close(self) -> None:
        self.writer.close()


class _RayEnvTransport:
    """``EnvTransport`` over Ray: requests to rollout actors, segments to the trainer actor."""

    def __init__(self, name: str, rollouts: list[Any], trainer: Any, coordinator: Any) -> None:
        self.name = name
        self.rollouts, self.trainer, self.coordinator = rollouts, trainer, coordinator

    def acquire(self, samples: list[int]) -> list[Ticket]:
        return ray.get(self.coordinator.acquire.remote(samples, self.name))

    def report(self, progress: dict[int, dict[str, int]]) -> None:
        self.coordinator.report.remote(self.name, progress)

    def infer(self, rollout: int, request: ObsRequest) -> Any:
        return self.rollouts[rollout].infer.remote(request)

    def wait(self, handles: list[Any], num_returns: int, timeout: float) -> list[Any]:
        return ray.wait(handles, num_returns=num_returns, timeout=timeout)[0]

    def get(self, handles: list[Any]) -> list[ActionReply]:
        return ray.get(handles)

    def ship(self, seg: Segment) -> Any:
        return self.trainer.put_segment.remote(seg)

    def settle(self, handles: list[Any], keep: int) -> list[Any]:
        if len(handles) <= keep:
            return handles
        done, rest = ray.wait(handles, num_returns=len(handles) - keep)
        ray.get(done)
        return rest


class EnvWorkerActor:
    def __init__(
        self, cfg: Config, spec: EnvWorkerSpec, rollouts: list[Any], trainer: Any, coordinator: Any
    ) -> None:
        _set_threads(cfg, "env")
        self.name = f"env{spec.worker_id}"
        transport = _RayEnvTransport(self.name, rollouts, trainer, coordinator)
        self.worker = EnvWorker(cfg, spec, transport, _events(self.name, coordinator))
        self._stop = threading.Event()

    def ping(self) -> dict[str, Any]:
        return whereabouts(self.name)

    def run(self) -> dict[str, Any]:
        return self.worker.run(self._stop)

    def stop(self) -> None:
        self._stop.set()

    def stats(self) -> dict[str, Any]:
        return self.worker.stats()


class RolloutWorkerActor:
    """asyncio actor: requests queue up while a batch runs in a one-thread executor."""

    def __init__(self, cfg: Config, spec: RolloutSpec, policy: PolicySpec, coordinator: Any) -> None:
        _set_threads(cfg, "rollout")
        self.name = f"rollout{spec.worker_id}"
        self.worker = RolloutWorker(cfg, spec, policy, _events(self.name, coordinator))
        self.pool = ThreadPoolExecutor(1)
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None

    async def ping(self) -> dict[str, Any]:
        return whereabouts(self.name)

    def _start(self) -> None:
        if self._task is None:
            self._wake = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._loop())

    async def infer(self, req: ObsRequest) -> ActionReply:
        self._start()
        fut = asyncio.get_running_loop().create_future()
        self.worker.submit(req, fut)
        self._wake.set()
        return await fut

    async def offer_weights(self, version: int, ref: list[Any], published_t: float) -> None:
        self._start()
        if self.worker.offer(version, ref[0], published_t):
            self._wake.set()

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self._wake.clear()
            offer = self.worker.take_offer()
            if offer is not None:
                payload = await offer.handle
                self.worker.set_weights(offer.version, unpack(payload), offer.published_t)
            batch = self.worker.next_batch()
            if batch:
                try:
                    replies = await loop.run_in_executor(self.pool, self.worker.run_batch, batch)
                except Exception as e:  # the requesters see the error
                    for w in batch:
                        w.token.set_exception(e)
                    raise
                for w, r in zip(batch, replies, strict=True):
                    w.token.set_result(r)
                continue
            self.worker.events.tick()
            deadline = self.worker.deadline()
            timeout = 1.0 if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                await asyncio.wait_for(self._wake.wait(), timeout)
            except asyncio.TimeoutError:
                pass

    async def stats(self) -> dict[str, Any]:
        self.worker.events.flush()
        return self.worker.stats()


class TrainerActor:
    """Feeds the trainer from a bounded queue (backpressure on the env workers) and publishes
    weights through the object store."""

    def __init__(
        self, cfg: Config, spec: TrainerSpec, policy: PolicySpec, rollouts: list[Any], coordinator: Any
    ) -> None:
        _set_threads(cfg, "trainer")
        self.name = "trainer"
        self.rollouts = rollouts
        self.trainer = Trainer(cfg, spec, policy, self._publish, _events(self.name, coordinator))
        self.q: queue.Queue[Segment | Lost] = queue.Queue(maxsize=cfg.runtime.queue_segments)
        self._stop = threading.Event()
        self._draining = threading.Event()
        self._latest: tuple[int, Any, float] | None = None

    def ping(self) -> dict[str, Any]:
        return whereabouts(self.name)

    def _publish(self, version: int, weights: dict[str, torch.Tensor]) -> Any:
        t = time.time()
        ref = ray.put(pack(weights))
        self._latest = (version, ref, t)
        for r in self.rollouts:
            r.offer_weights.remote(version, [ref], t)
        return ref

    def replace_rollout(self, i: int, handle: Any) -> None:
        """A restarted rollout worker: publish to it from now on, starting with the latest weights."""
        self.rollouts[i] = handle
        if self._latest is not None:
            version, ref, t = self._latest
            ray.get(handle.offer_weights.remote(version, [ref], t))

    def _enqueue(self, item: Segment | Lost) -> bool:
        """Put ``item`` in the bounded queue, blocking while it is full; False once the run has
        ended (the caller then hands it over as after the run, so no sender stays blocked)."""
        while not self._draining.is_set():
            try:
                self.q.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def _after_run(self, item: Segment | Lost) -> None:
        if isinstance(item, Lost):
            self.trainer.void(item, settle=False)  # only the counters move
        else:
            self.trainer.keep_leftover(item)

    def void(self, lost: Lost) -> None:
        """Queued behind the segments already waiting, so those still count as arrived."""
        if not self._enqueue(lost):
            self._after_run(lost)

    def put_segment(self, seg: Segment) -> None:
        """Blocks while the queue is full: backpressure on the env workers. After the run it
        accepts everything (as leftover)."""
        if not self._enqueue(seg):
            self._after_run(seg)

    def run(self, updates: int) -> dict[str, Any]:
        self.trainer.start()
        while self.trainer.updates_done < updates and not self._stop.is_set():
            try:
                item = self.q.get(timeout=0.2)
            except queue.Empty:
                self.trainer.events.tick()
                continue
            if isinstance(item, Lost):
                self.trainer.void(item)
            else:
                self.trainer.add(item)
        self.trainer.finish()
        self._draining.set()
        self._drain()
        self.trainer.events.flush()
        final = pack(self.trainer.policy.state_dict())
        return {"version": self.trainer.version, "updates": self.trainer.state["update"], "weights": final}

    def pop_rows(self) -> list[dict[str, Any]]:
        return self.trainer.pop_rows()

    def stop(self) -> None:
        self._stop.set()

    def _drain(self) -> None:
        """Move whatever is still queued (a put may land just after the run ends) to leftover."""
        while True:
            try:
                self._after_run(self.q.get_nowait())
            except queue.Empty:
                break

    def accounting(self) -> dict[str, Any]:
        """Call after the env workers have stopped (their puts have all returned)."""
        self._drain()
        return self.trainer.accounting()
