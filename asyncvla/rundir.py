"""The run directory: resolved config, metrics.jsonl, TensorBoard events, summary, curves.

Every file a resume reads is written atomically (``atomic_write_text``, ``atomic_dir``): a crash
leaves the old version or the new one, never half of one.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from asyncvla.config import Config, dump_config


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to a temporary file next to ``path``, then rename it over ``path``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


@contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Fill a temporary directory next to ``path``; on success it replaces ``path`` as a whole."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if path.exists():
        shutil.rmtree(path)
    os.replace(tmp, path)


def _update_of(line: str) -> int:
    """The ``update`` of one metrics.jsonl line; a torn last line (a crash mid-write) counts as
    after every checkpoint, so it is dropped."""
    try:
        return int(json.loads(line)["update"])
    except (ValueError, KeyError, TypeError):
        return 1 << 62


def default_run_dir(cfg: Config) -> Path:
    return Path("runs") / f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}"


class RunDir:
    """``resume_from``: the state of the checkpoint a resumed run continues from (its ``update``
    and ``env_steps``). The metric rows after it are dropped from ``metrics.jsonl`` (rewritten
    atomically) and hidden from TensorBoard (``purge_step``), so the resumed rows continue the
    stream without duplicated update numbers."""

    def __init__(
        self,
        path: str | Path,
        cfg: Config,
        resume: bool = False,
        tensorboard: bool = True,
        resume_from: dict[str, Any] | None = None,
    ) -> None:
        self.path = Path(path)
        metrics = self.path / "metrics.jsonl"
        if not resume and metrics.exists():
            raise FileExistsError(
                f"{self.path} already holds a run; pass --resume or choose another --run-dir"
            )
        self.path.mkdir(parents=True, exist_ok=True)
        (self.path / "checkpoints").mkdir(exist_ok=True)
        atomic_write_text(self.path / "config.yaml", dump_config(cfg))
        purge_step = None
        if resume_from is not None:
            purge_step = int(resume_from.get("env_steps", 0)) + 1
            if metrics.exists():
                last = int(resume_from["update"])
                kept = [
                    ln for ln in metrics.read_text().splitlines() if ln.strip() and _update_of(ln) <= last
                ]
                atomic_write_text(metrics, "".join(ln + "\n" for ln in kept))
        self._metrics = metrics.open("a")
        self._tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(self.path / "tensorboard"), purge_step=purge_step)

    def log(self, row: dict[str, Any]) -> None:
        self._metrics.write(json.dumps(row) + "\n")
        self._metrics.flush()
        if self._tb is None:
            return
        step = int(row.get("env_steps", row.get("update", 0)))
        for k, v in row.items():
            if isinstance(v, (int, float)) and k not in ("update", "env_steps"):
                self._tb.add_scalar(k, v, step)

    @property
    def tensorboard(self) -> Any:
        """The run's TensorBoard ``SummaryWriter`` (None without TensorBoard)."""
        return self._tb

    def read_metrics(self) -> list[dict[str, Any]]:
        path = self.path / "metrics.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def write_summary(self, summary: dict[str, Any]) -> None:
        atomic_write_text(self.path / "summary.json", json.dumps(summary, indent=2))

    def plot_curves(self) -> Path:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        rows = self.read_metrics()
        out = self.path / "curves.png"
        fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
        xs = [r["env_steps"] for r in rows]
        a.plot(xs, [r["success_rate"] for r in rows], label="training episodes")
        ev = [(r["env_steps"], r["eval_success_rate"]) for r in rows if "eval_success_rate" in r]
        if ev:
            a.plot([e[0] for e in ev], [e[1] for e in ev], "o-", label="held-out eval")
        a.set_xlabel("env steps")
        a.set_ylabel("success rate")
        a.set_ylim(-0.02, 1.02)
        a.legend()
        b.plot(xs, [r["env_steps_per_s"] for r in rows])
        b.set_xlabel("env steps")
        b.set_ylabel("env steps/s")
        fig.tight_layout()
        fig.savefig(out, dpi=100)
        plt.close(fig)
        return out

    def close(self) -> None:
        self._metrics.close()
        if self._tb is not None:
            self._tb.close()
