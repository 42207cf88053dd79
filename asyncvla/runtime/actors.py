"""Ray actors around the three workers (plus a small coordinator).

Each wrapper builds its plain worker (``EnvWorker``, ``RolloutWorker``, ``Trainer``) from the typed
``Config`` and a spec, and only adds what Ray needs: remote handles, the object store for weights,
thread/asyncio plumbing and the event sink. The workers' logic is tested without Ray.
"""

from __future__ import annotations

import asyncio
import queue
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
from asyncvla.runtime.placement import plan
from asyncvla.runtime.rollout_worker import RolloutSpec, RolloutWorker
from asyncvla.runtime.trainer import Trainer, TrainerSpec
from asyncvla.runtime.types import ActionReply, ObsRequest, Segment
from asyncvla.runtime.weights import PolicySpec, pack, unpack


def _set_threads(cfg: Config, role: str) -> None:
    # Arrays that arrive through the object store are read-only; the workers never write to them.
    warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
    n = plan(cfg)[role].torch_threads
    if n > 0:
        torch.set_num_threads(n)


def _events(name: str, coordinator: Any) -> EventBuffer:
    return EventBuffer(name, lambda ev: coordinator.log.remote(ev))


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


class _RayEnvTransport:
    """``EnvTransport`` over Ray: requests to rollout actors, segments to the trainer actor."""

    def __init__(self, rollouts: list[Any], trainer: Any, coordinator: Any) -> None:
        self.rollouts, self.trainer, self.coordinator = rollouts, trainer, coordinator

    def acquire(self, samples: list[int]) -> list[Ticket]:
        return ray.get(self.coordinator.acquire.remote(samples))

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
        transport = _RayEnvTransport(rollouts, trainer, coordinator)
        self.worker = EnvWorker(cfg, spec, transport, _events(self.name, coordinator))
        self._stop = threading.Event()

    def ping(self) -> str:
        return self.name

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

    async def ping(self) -> str:
        return self.name

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
        self.q: queue.Queue[Segment] = queue.Queue(maxsize=cfg.runtime.queue_segments)
        self._stop = threading.Event()
        self._draining = threading.Event()

    def ping(self) -> str:
        return self.name

    def _publish(self, version: int, weights: dict[str, torch.Tensor]) -> Any:
        t = time.time()
        ref = ray.put(pack(weights))
        for r in self.rollouts:
            r.offer_weights.remote(version, [ref], t)
        return ref

    def put_segment(self, seg: Segment) -> None:
        """Blocks while the queue is full: backpressure on the env workers. After the run it
        accepts everything (as leftover) so no sender stays blocked."""
        while not self._draining.is_set():
            try:
                self.q.put(seg, timeout=0.2)
                return
            except queue.Full:
                continue
        self.trainer.keep_leftover(seg)

    def run(self, updates: int) -> dict[str, Any]:
        self.trainer.start()
        while self.trainer.updates_done < updates and not self._stop.is_set():
            try:
                seg = self.q.get(timeout=0.2)
            except queue.Empty:
                self.trainer.events.tick()
                continue
            self.trainer.add(seg)
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
                self.trainer.keep_leftover(self.q.get_nowait())
            except queue.Empty:
                break

    def accounting(self) -> dict[str, Any]:
        """Call after the env workers have stopped (their puts have all returned)."""
        self._drain()
        return self.trainer.accounting()
