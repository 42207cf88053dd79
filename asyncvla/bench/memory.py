"""Peak memory of a run: resident set size (RSS) of this process and all its descendants (a local
Ray instance's raylet, workers and actors), sampled by a background thread through ``psutil``.

``peak_total_mb``: the largest sum over the tree at one sample (what the machine must hold);
``peak_process_mb``: the largest single process. A cluster joined with ``--address`` runs its
workers outside this tree: only the driver is counted then.
"""

from __future__ import annotations

import os
import threading
from typing import Any

import psutil

MB = 2**20


def _rss_mb(proc: psutil.Process) -> float:
    try:
        return proc.memory_info().rss / MB
    except (psutil.NoSuchProcess, psutil.AccessDenied):  # it ended between listing and reading
        return 0.0


def sample(root: int | None = None) -> tuple[float, float]:
    """(total, largest) RSS in MB of ``root`` (default: this process) and its descendants."""
    proc = psutil.Process(root or os.getpid())
    try:
        tree = [proc, *proc.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0, 0.0
    rss = [_rss_mb(p) for p in tree]
    return sum(rss), max(rss, default=0.0)


class PeakMemory:
    """``with PeakMemory() as m: ...`` then ``m.result()``; samples every ``every_s`` seconds."""

    def __init__(self, every_s: float = 0.25) -> None:
        self.every_s = every_s
        self.total = 0.0
        self.largest = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _poll(self) -> None:
        while True:
            total, largest = sample()
            self.total = max(self.total, total)
            self.largest = max(self.largest, largest)
            if self._stop.wait(self.every_s):
                return

    def __enter__(self) -> PeakMemory:
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def result(self) -> dict[str, float | None]:
        if self.total <= 0:  # no sample could be read
            return {"peak_total_mb": None, "peak_process_mb": None}
        return {"peak_total_mb": round(self.total, 1), "peak_process_mb": round(self.largest, 1)}
