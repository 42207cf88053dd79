"""Dynamic batching: a rollout batch closes at ``max_samples`` samples or ``timeout_s`` after it
opened, whichever comes first. Static batching (``async.rollout: false``) closes only when every
routed shard has a request waiting (held ones included), like a synchronous rollout.

Pure bookkeeping (no threads): the rollout worker adds requests, asks ``ready(now)`` and ``take()``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Waiting:
    request: Any
    samples: int
    shard: tuple[int, int]
    arrived: float
    token: Any = None
    """Whatever the caller needs to answer the request (e.g. a future)."""


@dataclass
class DynamicBatcher:
    max_samples: int
    timeout_s: float
    static_shards: set[tuple[int, int]] | None = None
    """If set: static batching over exactly these shards."""
    waiting: list[Waiting] = field(default_factory=list)
    opened: float | None = None

    def add(self, item: Waiting) -> None:
        self.waiting.append(item)

    def ready(self, now: float, admissible: list[Waiting]) -> tuple[bool, str]:
        """Should a batch of the ``admissible`` waiting requests close now? (closed?, reason)."""
        if not admissible:
            self.opened = None
            return False, ""
        if self.static_shards is not None:
            present = {w.shard for w in self.waiting}
            return (present >= self.static_shards, "all_shards")
        if self.opened is None:
            self.opened = min(w.arrived for w in admissible)
        if sum(w.samples for w in admissible) >= self.max_samples:
            return True, "full"
        if now - self.opened >= self.timeout_s:
            return True, "timeout"
        return False, ""

    def deadline(self) -> float | None:
        return None if self.opened is None or self.static_shards is not None else self.opened + self.timeout_s

    def take(self, admissible: list[Waiting]) -> list[Waiting]:
        """Remove and return the batch: admissible requests in arrival order, up to ``max_samples``
        (at least one request, even if it alone is larger). A static batch is ordered by shard,
        so its samples line up the same way whatever order the requests arrived in."""
        batch: list[Waiting] = []
        total = 0
        for w in admissible:
            if batch and self.static_shards is None and total + w.samples > self.max_samples:
                break
            batch.append(w)
            total += w.samples
        if self.static_shards is not None:
            batch.sort(key=lambda w: w.shard)
        ids = {id(w) for w in batch}
        self.waiting = [w for w in self.waiting if id(w) not in ids]
        self.opened = None
        return batch
