"""The event log: every scheduling event of every worker, one JSON line each, in ``events.jsonl``.

Workers buffer events locally (``EventBuffer``) and ship them in small batches to the coordinator,
which numbers them (``seq``, global, in arrival order) and appends them to the file. Each event
carries ``worker``, ``wseq`` (the worker's own order), ``kind``, ``t`` (wall-clock seconds,
``time.time()``) and, for intervals, ``t0``/``t1``, plus ids (request, segment, ticket, version).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

KINDS = (
    "env_step",  # a manager stepped one chunk (t0/t1)
    "segment_shipped",  # a segment left its env worker for the trainer queue
    "batch_formed",  # a rollout worker closed a batch (samples, requests, reason)
    "batch_inferred",  # the batch's forward finished (t0/t1)
    "throttle_on",  # a rollout worker held a request whose ticket is too far ahead
    "throttle_off",
    "micro_batch",  # the streamer ran forward/backward on a micro-batch (t0/t1)
    "train",  # the trainer trained a global batch (t0/t1)
    "optimizer_step",
    "weights_published",
    "weights_adopted",  # includes sync latency from publication
    "rejected",  # the trainer refused samples beyond the staleness bound
    "run_start",  # the driver started the schedule (mode, max_staleness)
    "run_end",  # the trainer made its last update (updates)
    "worker_start",  # an actor is up: its name, pid, host, Ray node and generation (restarts)
    "worker_failed",  # supervision saw an actor fail (cause) and restarts it or stops the run
    "env_error",  # an env manager handled a simulator exception (episodes dropped, envs reset)
    "rollback",  # the trainer restored the last good checkpoint after a non-finite update
)


class EventBuffer:
    def __init__(self, worker: str, sink: Callable[[list[dict[str, Any]]], None], flush_every_s: float = 0.5):
        self.worker = worker
        self.sink = sink
        self.flush_every_s = flush_every_s
        self._buf: list[dict[str, Any]] = []
        self._wseq = 0
        self._last = time.monotonic()

    def emit(self, kind: str, **fields: Any) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown event kind {kind!r}; known: {', '.join(KINDS)}")
        self._buf.append(
            {"worker": self.worker, "wseq": self._wseq, "kind": kind, "t": time.time(), **fields}
        )
        self._wseq += 1
        if len(self._buf) >= 512 or time.monotonic() - self._last > self.flush_every_s:
            self.flush()

    def tick(self) -> None:
        """Flush if the oldest buffered event is older than ``flush_every_s`` (call when idle)."""
        if self._buf and time.monotonic() - self._last > self.flush_every_s:
            self.flush()

    def flush(self) -> None:
        if self._buf:
            batch, self._buf = self._buf, []
            self.sink(batch)
        self._last = time.monotonic()


class EventWriter:
    """Appends events to ``events.jsonl`` with a global sequence number."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._f = path.open("a") if path is not None else None
        self.seq = 0

    def write(self, events: list[dict[str, Any]]) -> None:
        for e in events:
            if self._f is not None:
                self._f.write(json.dumps({"seq": self.seq, **e}) + "\n")
            self.seq += 1
        if self._f is not None:
            self._f.flush()

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None


def read_events(path: str | Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
