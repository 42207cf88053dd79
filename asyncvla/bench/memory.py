"""Peak memory of a run: resident set size (RSS) of this process and all its descendants (a local
Ray instance's raylet, workers and actors), sampled by a background thread from ``/proc``.

``peak_total_mb``: the largest sum over the tree at one sample (what the machine must hold);
``peak_process_mb``: the largest single process. Linux only (elsewhere both are None). A cluster
joined with ``--address`` runs its workers outside this tree: only the driver is counted then.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

PAGE_MB = os.sysconf("SC_PAGE_SIZE") / 2**20 if hasattr(os, "sysconf") else 4096 / 2**20


def _tree(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            stat = (p / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(p.name))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def _rss_mb(pid: int) -> float:
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE_MB
    except (OSError, IndexError, ValueError):
        return 0.0


def sample(root: int | None = None) -> tuple[float, float]:
    """(total, largest) RSS in MB of ``root`` (default: this process) and its descendants."""
    rss = [_rss_mb(p) for p in _tree(root or os.getpid())]
    return sum(rss), max(rss, default=0.0)


class PeakMemory:
    """``with PeakMemory() as m: ...`` then ``m.result()``; samples every ``every_s`` seconds."""

    def __init__(self, every_s: float = 0.25) -> None:
        self.every_s = every_s
        self.total = 0.0
        self.largest = 0.0
        self.ok = Path("/proc/self/statm").exists()
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
        if self.ok:
            self._thread = threading.Thread(target=self._poll, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def result(self) -> dict[str, float | None]:
        if not self.ok:
            return {"peak_total_mb": None, "peak_process_mb": None}
        return {"peak_total_mb": round(self.total, 1), "peak_process_mb": round(self.largest, 1)}
