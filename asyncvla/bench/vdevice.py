"""Virtual devices: named, cross-process mutual exclusion standing in for an accelerator.

A device is a lock file ``<lock_dir>/<run_id>.<name>.lock``; holding it is holding a
``filelock.FileLock`` on it, which excludes every other holder on the machine: other processes,
and other threads of this one (its lock state is per thread, ``thread_local=True``; each thread's
acquisition is an ``flock`` on its own descriptor). Two workers that name the same device take
turns (``colocated``); different names run concurrently (``disaggregated``).

Every hold can be appended to a per-process log ``<lock_dir>/<run_id>.holds.<pid>.jsonl`` (device,
role, op, samples, seconds requested, t0, t1 in ``time.time()`` seconds): the exact occupancy of
each device, without the time spent waiting for it. No torch import, so a test can spawn holders
cheaply.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from filelock import FileLock

_SAFE = re.compile(r"[^A-Za-z0-9_.-]")
POLL_S = 0.001
"""How often a waiting holder retries the lock (filelock polls a non-blocking ``flock``): the most a
hand-over can add to a device's idle time, small next to the stage costs emulated."""


def default_lock_dir() -> Path:
    return Path(tempfile.gettempdir()) / "asyncvla-vdev"


def _safe(name: str) -> str:
    return _SAFE.sub("_", str(name)) or "_"


class Hold:
    """What the body of a hold may do: wait out the rest of the hold's cost."""

    def __init__(self, t0: float) -> None:
        self.t0 = t0
        self._p0 = time.perf_counter()
        self.requested_s = 0.0
        """The seconds the body asked to hold the device for (``occupy``)."""

    def occupy(self, seconds: float) -> None:
        """Sleep until ``seconds`` have passed since the hold began (real work inside counts)."""
        self.requested_s = max(0.0, float(seconds))
        remaining = self._p0 + self.requested_s - time.perf_counter()
        if remaining > 0:
            time.sleep(remaining)


class VirtualDevice:
    """One named device as seen from one process (cache them: see ``device``)."""

    def __init__(
        self, name: str, run_id: str = "default", lock_dir: str | Path | None = None, log: bool = False
    ) -> None:
        self.name = str(name)
        self.run_id = str(run_id)
        self.dir = Path(lock_dir) if lock_dir else default_lock_dir()
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / f"{_safe(self.run_id)}.{_safe(self.name)}.lock"
        self.log = log
        self._lock = FileLock(self.path)

    @contextmanager
    def hold(self, op: str = "", role: str = "", samples: int = 0) -> Iterator[Hold]:
        """Exclusive use of the device for the body of the ``with`` (waits for other holders)."""
        with self._lock.acquire(poll_interval=POLL_S):
            h = Hold(time.time())
            yield h
            t1 = time.time()
        if self.log:
            self._write(
                {
                    "device": self.name,
                    "role": role,
                    "op": op,
                    "samples": int(samples),
                    "requested_s": h.requested_s,
                    "t0": h.t0,
                    "t1": t1,
                    "pid": os.getpid(),
                }
            )

    def _write(self, record: dict[str, Any]) -> None:
        path = self.dir / f"{_safe(self.run_id)}.holds.{os.getpid()}.jsonl"
        with path.open("a") as f:
            f.write(json.dumps(record) + "\n")


_DEVICES: dict[tuple[int, str, str, str, bool], VirtualDevice] = {}
_DEVICES_LOCK = threading.Lock()


def device(
    name: str, run_id: str = "default", lock_dir: str | Path | None = None, log: bool = False
) -> VirtualDevice:
    """The process-wide instance of a device (one lock object per name, run and lock directory).

    Keyed by process id too: a forked child builds its own (filelock refuses a lock object
    inherited across a fork)."""
    key = (os.getpid(), str(name), str(run_id), str(lock_dir or default_lock_dir()), bool(log))
    with _DEVICES_LOCK:
        if key not in _DEVICES:
            _DEVICES[key] = VirtualDevice(name, run_id, lock_dir, log)
        return _DEVICES[key]


def read_holds(lock_dir: str | Path, run_id: str) -> list[dict[str, Any]]:
    """Every logged hold of a run (all processes), sorted by start time."""
    out: list[dict[str, Any]] = []
    for p in sorted(Path(lock_dir).glob(f"{_safe(run_id)}.holds.*.jsonl")):
        for line in p.read_text().splitlines():
            if line.strip():
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:  # a process killed mid-write leaves a partial last line
                    continue
    return sorted(out, key=lambda r: r["t0"])
