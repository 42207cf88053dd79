"""The training monitor: checks every metric row and the env workers' health while a run trains,
and raises alerts (console, ``alerts.jsonl``, TensorBoard ``alerts/*``).

Alerts and their defaults (``monitor.thresholds``):

* ``nan`` — a non-finite loss, gradient norm, KL, entropy, success or return in a row; samples
  quarantined because an env returned a non-finite observation, reward or cost; or a batch the
  trainer skipped and rolled back (``skipped_batches`` grew; ``monitor.on_nan``). No threshold.
* ``success_collapse`` — the rolling training success (last 100 episodes) is more than 0.3 below
  its best of the run (the best counts once the window holds 50 episodes).
* ``return_collapse`` — the rolling training return is below (1 - 0.5) x its best of the run
  (only while that best is positive).
* ``kl_spike`` — an update's ``approx_kl`` is above 0.3.
* ``entropy_collapse`` — the mean entropy per action token is more than 2 nats below its value
  at the first update.
* ``staleness_pinned`` — 50 updates in a row trained every sample at the staleness bound
  (``staleness_mean`` = ``runtime.max_staleness`` > 0; never in sync mode) while the trainer
  waited for samples (``trainer_busy_frac`` < 0.9): the bound, not the trainer, limits the
  pipeline. A trainer-bound run (busy >= 0.9) trains at the bound by design and does not count.
* ``latency_drift`` — an env worker's time per env step is more than 3x its reference (the
  median of its first 5 measurements after warm-up).
* ``heartbeat`` — an env worker has sent no progress report for more than 120 s.

The collapse, entropy and drift alerts arm after ``warmup_updates`` (10) updates. Rows that lack
a metric (a GRPO run has no ``approx_kl`` or value loss) skip its checks. ``monitor.disable``
names alerts never to raise.

An alert that fires becomes active (per worker for ``latency_drift`` and ``heartbeat``): it is
announced once, then again (``repeat``, with ``count`` occurrences so far) at most once every
``monitor.repeat_every`` updates while it stays active; once its condition clears, a later
occurrence is new. ``Monitor.counts`` counts every occurrence, announced or not.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from asyncvla.config import ALERTS, MonitorConfig

ROLLING_FULL = 50
"""Episodes the rolling success/return window must hold before the collapse checks use it."""
DRIFT_REFERENCE = 5
"""Step-time measurements after warm-up whose median is a worker's latency reference."""
NAN_KEYS = (
    "loss_policy",
    "loss_value",
    "grad_norm",
    "approx_kl",
    "entropy",
    "success_rate",
    "episode_return",
)
"""Row metrics that must be finite where present."""
WORKER_ALERTS = ("latency_drift", "heartbeat")
SEVERE = ("nan", "heartbeat")
"""Printed red; the others yellow."""


@dataclass(frozen=True)
class Alert:
    name: str
    """One of ``ALERTS``."""
    update: int
    message: str
    """One line: the measured value, the threshold and the update."""
    value: float
    """What was measured (``nan``: how many problems — non-finite metrics, quarantined samples
    and newly skipped batches)."""
    threshold: float
    """The limit it crossed (``nan``: 0)."""
    worker: str | None = None
    """The env worker, for ``latency_drift`` and ``heartbeat``."""
    count: int = 1
    """Occurrences of this condition since it became active (1: new)."""
    repeat: bool = False
    """Announced before and still active (``count`` > 1)."""

    def to_json(self) -> dict[str, Any]:
        """Plain JSON (a non-finite ``value`` / ``threshold`` becomes ``None``)."""
        d = asdict(self)
        for k in ("value", "threshold"):
            if not math.isfinite(d[k]):
                d[k] = None
        return d


def _num(v: Any) -> float | None:
    """The metric as a float (NaN when it is not a number), or None when absent."""
    if v is None:
        return None
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def _finite(v: float | None) -> bool:
    return v is not None and math.isfinite(v)


def _count(v: Any) -> int:
    x = _num(v)
    return int(x) if _finite(x) else 0  # type: ignore[arg-type]


class Monitor:
    """Checks metric rows (``observe``) and worker health (``check_health``); returns the alerts
    to announce now. ``max_staleness``: the schedule's eta (``Config.schedule()[1]``; 0 in sync)."""

    def __init__(self, cfg: MonitorConfig, max_staleness: int) -> None:
        self.cfg = cfg
        self.th = cfg.thresholds
        self.eta = int(max_staleness)
        self.disabled = frozenset(cfg.disable)
        self.counts: dict[str, int] = {a: 0 for a in ALERTS}
        self._active: dict[str, list[int]] = {}
        """key (alert name, or name/worker) -> [update last announced, occurrences while active]"""
        self.best_success: float | None = None
        self.best_return: float | None = None
        self.entropy_ref: float | None = None
        self.pinned = 0
        """Consecutive rows at the staleness bound."""
        self.skipped = 0
        """``skipped_batches`` of the previous row."""
        self.step_samples: dict[str, list[float]] = {}
        """worker -> its first step-time measurements after warm-up (up to ``DRIFT_REFERENCE``)."""

    # -- firing and de-duplication ---------------------------------------------------------------
    def _check(
        self,
        out: list[Alert],
        cond: bool,
        name: str,
        update: int,
        message: str,
        value: float,
        threshold: float,
        worker: str | None = None,
    ) -> None:
        """Record the condition; append the alert to ``out`` when it is to be announced now."""
        key = name if worker is None else f"{name}/{worker}"
        if not cond or name in self.disabled:
            self._active.pop(key, None)
            return
        self.counts[name] = self.counts.get(name, 0) + 1
        st = self._active.get(key)
        if st is None:
            self._active[key] = [update, 1]
            out.append(Alert(name, update, message, float(value), float(threshold), worker))
            return
        st[1] += 1
        # update < last: the run resumed from an earlier checkpoint; announce the active alert again
        if update - st[0] >= self.cfg.repeat_every or update < st[0]:
            st[0] = update
            out.append(Alert(name, update, message, float(value), float(threshold), worker, st[1], True))

    # -- metric rows -----------------------------------------------------------------------------
    def observe(self, row: dict[str, Any]) -> list[Alert]:
        """Check one metric row (in order: nan, success and return collapse, KL, entropy,
        staleness); the alerts to announce now."""
        out: list[Alert] = []
        th = self.th
        u = int(row.get("update", 0))
        armed = u > th.warmup_updates

        # nan: non-finite metrics, quarantined env samples, a skipped batch (rollback)
        bad = [k for k in NAN_KEYS if k in row and not _finite(_num(row[k]))]
        quarantined = _count(row.get("quarantined_samples"))
        skipped = _count(row.get("skipped_batches")) if "skipped_batches" in row else self.skipped
        new_skips = max(0, skipped - self.skipped)
        self.skipped = skipped  # a decrease (resumed from an earlier checkpoint) resets the baseline
        parts = [f"non-finite {', '.join(bad)}"] if bad else []
        if quarantined:
            parts.append(f"{quarantined} samples quarantined (non-finite observation, reward or cost)")
        if new_skips:
            to = row.get("rolled_back_to")
            parts.append(
                f"{new_skips} batch(es) skipped, weights rolled back"
                + (f" to update {to}" if to is not None else "")
                + f" ({skipped} in the run)"
            )
        self._check(
            out,
            bool(parts),
            "nan",
            u,
            f"nan: {'; '.join(parts)} at update {u}",
            len(bad) + quarantined + new_skips,
            0.0,
        )

        # success and return collapse, against the best of the run once the window is full-ish
        full = _count(row.get("episodes")) >= ROLLING_FULL
        sr, ret = _num(row.get("success_rate")), _num(row.get("episode_return"))
        if full and _finite(sr):
            assert sr is not None
            best = self.best_success
            floor = math.nan if best is None else best - th.success_collapse
            self._check(
                out,
                armed and best is not None and sr < floor,
                "success_collapse",
                u,
                f"success_collapse: training success {sr:.2f} < {floor:.2f} "
                f"(best {best if best is not None else math.nan:.2f} - {th.success_collapse:g}) at update {u}",
                sr,
                floor,
            )
            self.best_success = sr if best is None else max(best, sr)
        if full and _finite(ret):
            assert ret is not None
            best = self.best_return
            floor = math.nan if best is None or best <= 0 else (1 - th.return_collapse) * best
            self._check(
                out,
                armed and _finite(floor) and ret < floor,
                "return_collapse",
                u,
                f"return_collapse: training return {ret:.3g} < {floor:.3g} "
                f"({1 - th.return_collapse:g} x best {best if best is not None else math.nan:.3g}) at update {u}",
                ret,
                floor,
            )
            self.best_return = ret if best is None else max(best, ret)

        # KL spike
        kl = _num(row.get("approx_kl"))
        if _finite(kl):
            assert kl is not None
            self._check(
                out,
                kl > th.kl_spike,
                "kl_spike",
                u,
                f"kl_spike: approx_kl {kl:.3g} > {th.kl_spike:g} at update {u}",
                kl,
                th.kl_spike,
            )

        # entropy collapse, against the first row's entropy
        ent = _num(row.get("entropy"))
        if _finite(ent):
            assert ent is not None
            if self.entropy_ref is None:
                self.entropy_ref = ent
            floor = self.entropy_ref - th.entropy_collapse
            self._check(
                out,
                armed and ent < floor,
                "entropy_collapse",
                u,
                f"entropy_collapse: entropy {ent:.3g} < {floor:.3g} "
                f"(first {self.entropy_ref:.3g} - {th.entropy_collapse:g}) at update {u}",
                ent,
                floor,
            )

        # staleness pinned at the bound (async only)
        sm = _num(row.get("staleness_mean"))
        busy = _num(row.get("trainer_busy_frac"))
        # A trainer-bound run trains at the bound by design (the trainer is the bottleneck); the
        # bound costs throughput only while the trainer waits for samples.
        trainer_waits = not _finite(busy) or busy < th.staleness_pinned_busy  # type: ignore[operator]
        pinned_now = self.eta > 0 and _finite(sm) and sm >= self.eta - 1e-9 and trainer_waits  # type: ignore[operator]
        self.pinned = self.pinned + 1 if pinned_now else 0
        self._check(
            out,
            self.pinned >= th.staleness_pinned,
            "staleness_pinned",
            u,
            f"staleness_pinned: {self.pinned} updates in a row (>= {th.staleness_pinned}) trained every "
            f"sample at the staleness bound {self.eta} while the trainer waited (the bound throttles "
            f"the pipeline: raise runtime.max_staleness) at update {u}",
            self.pinned,
            th.staleness_pinned,
        )
        return out

    # -- worker health ---------------------------------------------------------------------------
    def check_health(self, health: dict[str, dict[str, float]], update: int) -> list[Alert]:
        """Check the env workers' heartbeat and step latency (``Coordinator.health``:
        ``{worker: {"since_report_s", "step_ms"}}``); the alerts to announce now. A worker's
        latency reference is the median of its first ``DRIFT_REFERENCE`` finite, positive
        ``step_ms`` after warm-up (``update`` > ``warmup_updates``)."""
        out: list[Alert] = []
        th = self.th
        update = int(update)
        for worker, h in sorted(health.items()):
            since = _num(h.get("since_report_s"))
            if since is not None and not math.isnan(since):
                self._check(
                    out,
                    since > th.heartbeat_s,
                    "heartbeat",
                    update,
                    f"heartbeat: {worker} sent no progress report for {since:.0f} s "
                    f"(> {th.heartbeat_s:g} s) at update {update}",
                    since,
                    th.heartbeat_s,
                    worker,
                )
            ms = _num(h.get("step_ms"))
            if not _finite(ms) or ms <= 0 or update <= th.warmup_updates:  # type: ignore[operator]
                continue
            assert ms is not None
            samples = self.step_samples.setdefault(worker, [])
            if len(samples) < DRIFT_REFERENCE:
                samples.append(ms)
                continue
            ref = statistics.median(samples)
            limit = th.latency_drift * ref
            self._check(
                out,
                ms > limit,
                "latency_drift",
                update,
                f"latency_drift: {worker} {ms:.3g} ms per env step > {limit:.3g} ms "
                f"({th.latency_drift:g}x its reference {ref:.3g} ms) at update {update}",
                ms,
                limit,
                worker,
            )
        return out

    # -- resume ----------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """References, counters and active alerts, as plain JSON."""
        return {
            "counts": dict(self.counts),
            "active": {k: list(v) for k, v in self._active.items()},
            "best_success": self.best_success,
            "best_return": self.best_return,
            "entropy_ref": self.entropy_ref,
            "pinned": self.pinned,
            "skipped": self.skipped,
            "step_samples": {k: list(v) for k, v in self.step_samples.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.counts = {a: 0 for a in ALERTS} | {k: int(v) for k, v in state.get("counts", {}).items()}
        self._active = {
            k: [int(v), 1] if isinstance(v, (int, float)) else [int(v[0]), int(v[1])]
            for k, v in state.get("active", {}).items()
        }
        self.best_success = state.get("best_success")
        self.best_return = state.get("best_return")
        self.entropy_ref = state.get("entropy_ref")
        self.pinned = int(state.get("pinned", 0))
        self.skipped = int(state.get("skipped", 0))
        self.step_samples = {k: [float(x) for x in v] for k, v in state.get("step_samples", {}).items()}


class AlertSink:
    """Where announced alerts go: a JSON line each in ``alerts.jsonl`` (appended and flushed; the
    file is created, empty, when the sink is: a run without alerts leaves it empty), one console
    line each (``alert: ...``; red for ``nan`` and ``heartbeat``, yellow otherwise) and, given a
    TensorBoard ``SummaryWriter``, ``alerts/<name>`` scalars and ``alerts`` text."""

    def __init__(self, path: str | Path, console: Any = None, tensorboard: Any = None) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file: Any = self.path.open("a")
        self.console = console
        self.tb = tensorboard

    def emit(self, alert: Alert) -> None:
        if self._file is not None:
            self._file.write(json.dumps(alert.to_json()) + "\n")
            self._file.flush()
        if self.console is not None:
            again = f" (still active, {alert.count} occurrences)" if alert.repeat else ""
            self.console.print(
                f"alert: {alert.message}{again}",
                style="red" if alert.name in SEVERE else "yellow",
                markup=False,
                highlight=False,
                soft_wrap=True,
            )
        if self.tb is not None:
            self.tb.add_scalar(f"alerts/{alert.name}", alert.value, alert.update)
            self.tb.add_text("alerts", alert.message, alert.update)

    def emit_all(self, alerts: list[Alert]) -> None:
        for a in alerts:
            self.emit(a)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
