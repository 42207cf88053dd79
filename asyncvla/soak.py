"""``asyncvla soak``: a long asynchronous run that watches every process's resident memory.

The run is ``train`` of the config for ``minutes`` (``train.updates`` set high so the learning
rate stays near its start value), its processes found through the run's ``worker_start`` events
(each actor's pid) plus the driver. A background thread samples each one's RSS through ``psutil``
every ``every_s`` seconds. Per process it reports the mean RSS over the ``window_s`` seconds after
warm-up (``warmup_minutes`` into the run) and over the last ``window_s`` seconds, and the growth
between them; ``soak.json`` in the run directory holds that and every sample.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil
from rich.console import Console
from rich.table import Table

from asyncvla.config import Config
from asyncvla.rundir import atomic_write_text


class _Pids:
    """The actors' pids from ``events.jsonl``, read incrementally (the file only grows)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.names: dict[int, str] = {os.getpid(): "driver"}

    def update(self) -> dict[int, str]:
        if self.path.is_file():
            with self.path.open() as f:
                f.seek(self.offset)
                for line in f:
                    if not line.endswith("\n"):  # a line still being written: read it next time
                        break
                    self.offset += len(line)
                    if '"worker_start"' in line:
                        e = json.loads(line)
                        self.names[int(e["pid"])] = f"{e['actor']} (pid {e['pid']})"
        return self.names


class RssSampler:
    def __init__(self, events_path: Path, every_s: float = 2.0) -> None:
        self.pids = _Pids(events_path)
        self.every_s = every_s
        self.samples: dict[str, list[tuple[float, float]]] = {}
        """process -> [(seconds since start, RSS MB)]"""
        self._stop = threading.Event()
        self._t0 = time.monotonic()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self._stop.is_set():
            t = time.monotonic() - self._t0
            for pid, name in list(self.pids.update().items()):
                try:
                    rss = psutil.Process(pid).memory_info().rss / 2**20
                except (psutil.NoSuchProcess, psutil.AccessDenied):  # ended (or restarted)
                    continue
                self.samples.setdefault(name, []).append((t, rss))
            self._stop.wait(self.every_s)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()


def growth_table(
    samples: dict[str, list[tuple[float, float]]], warmup_s: float, window_s: float
) -> list[dict[str, Any]]:
    """Per process: mean RSS in [warmup_s, warmup_s + window_s] and in the last window_s seconds
    of the schedule (the actors' last samples; the driver's final evaluation comes after), and
    their ratio - 1. Processes without samples in both windows are skipped."""
    actors = [pts[-1][0] for name, pts in samples.items() if name != "driver" and pts]
    t_end = max(actors) if actors else max((pts[-1][0] for pts in samples.values() if pts), default=0.0)
    rows = []
    for name, pts in samples.items():
        t = np.array([p[0] for p in pts])
        rss = np.array([p[1] for p in pts])
        warm = rss[(t >= warmup_s) & (t <= warmup_s + window_s)]
        end = rss[(t >= t_end - window_s) & (t <= t_end)]
        if not len(warm) or not len(end) or t_end - window_s < warmup_s + window_s:
            continue
        rows.append(
            {
                "process": name,
                "rss_warm_mb": float(warm.mean()),
                "rss_end_mb": float(end.mean()),
                "rss_peak_mb": float(rss.max()),
                "growth": float(end.mean() / warm.mean() - 1.0),
                "samples": len(pts),
            }
        )
    return sorted(rows, key=lambda r: r["process"])


def soak(
    cfg: Config,
    run_path: Path,
    minutes: float,
    warmup_minutes: float,
    window_s: float = 60.0,
    every_s: float = 2.0,
    console: Console | None = None,
) -> dict[str, Any]:
    from asyncvla.train import train

    console = console or Console()
    run_path = Path(run_path)
    with RssSampler(run_path / "events.jsonl", every_s) as sampler:
        summary = train(cfg, run_path, console=console, stop_after_s=minutes * 60.0)
    rows = growth_table(sampler.samples, warmup_minutes * 60.0, window_s)
    result = {
        "minutes": minutes,
        "warmup_minutes": warmup_minutes,
        "window_s": window_s,
        "updates": summary["updates"],
        "env_steps": summary["env_steps"],
        "worker_restarts": summary["worker_restarts"],
        "max_growth": max((r["growth"] for r in rows), default=None),
        "processes": rows,
        "samples": sampler.samples,
    }
    atomic_write_text(run_path / "soak.json", json.dumps(result, indent=1))
    table = Table(
        title=f"soak: {minutes:g} min, {summary['updates']} updates, {summary['env_steps']} env steps"
    )
    for col in ("process", "RSS after warm-up MB", "RSS at the end MB", "peak MB", "growth"):
        table.add_column(col, justify="left" if col == "process" else "right")
    for r in rows:
        table.add_row(
            r["process"],
            f"{r['rss_warm_mb']:.0f}",
            f"{r['rss_end_mb']:.0f}",
            f"{r['rss_peak_mb']:.0f}",
            f"{100 * r['growth']:+.1f}%",
        )
    console.print(table)
    return result
