"""An in-process ``EnvTransport``: the three workers in one process, without Ray.

Requests are answered at once by a ``RolloutWorker`` (which must admit them under the staleness
bound: a request it would hold is an error here, since nothing else could release it), segments
go straight into a ``Trainer``, and every update's weights are handed to the rollout worker before
the next request. ``stop`` is set once the trainer has made ``updates`` updates.
"""

from __future__ import annotations

import threading
from typing import Any

from asyncvla.runtime.gate import StalenessGate, Ticket
from asyncvla.runtime.rollout_worker import RolloutWorker
from asyncvla.runtime.trainer import Trainer
from asyncvla.runtime.types import ActionReply, ObsRequest, Segment


class Done:
    """A handle that is ready at once."""

    def __init__(self, value: Any) -> None:
        self.value = value


class LocalTransport:
    def __init__(self, gate: StalenessGate, rollout: RolloutWorker, updates: int) -> None:
        self.gate = gate
        self.rollout = rollout
        self.trainer: Trainer | None = None
        self.updates = updates
        self.stop = threading.Event()
        self.tickets: list[Ticket] = []

    def publish(self, version: int, weights: dict) -> None:
        self.rollout.set_weights(version, weights)

    def acquire(self, samples: list[int]) -> list[Ticket]:
        out = [self.gate.acquire(n) for n in samples]
        self.tickets += out
        return out

    def infer(self, rollout: int, request: ObsRequest) -> Done:
        assert rollout == 0
        self.rollout.submit(request)
        batch = self.rollout.next_batch()
        assert batch is not None and [w.request for w in batch] == [request], "request held or batched"
        return Done(self.rollout.run_batch(batch)[0])

    def wait(self, handles: list[Done], num_returns: int, timeout: float) -> list[Done]:
        return handles[:num_returns]

    def get(self, handles: list[Done]) -> list[ActionReply]:
        return [h.value for h in handles]

    def ship(self, seg: Segment) -> Done:
        assert self.trainer is not None
        if self.trainer.updates_done < self.updates:
            self.trainer.add(seg)
        else:
            self.trainer.keep_leftover(seg)
        if self.trainer.updates_done >= self.updates:
            self.stop.set()
        return Done(None)

    def settle(self, handles: list[Done], keep: int) -> list[Done]:
        return []

    def report(self, progress: dict[int, dict[str, int]]) -> None:
        self.progress = {**getattr(self, "progress", {}), **progress}
