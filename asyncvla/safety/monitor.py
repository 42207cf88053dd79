"""The training monitor: checks every metric row and the env workers' health while a run trains,
and raises alerts (console, ``alerts.jsonl``, TensorBoard ``alerts/*``).

Alerts and their defaults (``monitor.thresholds``):

* ``nan`` — a non-finite loss, gradient norm, KL, entropy, success or return in a row; samples
  quarantined because an env returned a non-finite observation, reward or cost; or a batch the
  trainer skipped and rolled back (``skipped_batches`` grew; ``monitor.on_nan``).
* ``success_collapse`` — the rolling training success (last 100 episodes) is 0.3 below its best.
* ``return_collapse`` — the rolling training return is below (1 - 0.5) x its best.
* ``kl_spike`` — an update's ``approx_kl`` is above 0.3.
* ``entropy_collapse`` — the mean entropy per action token is 2 nats below its first value.
* ``staleness_pinned`` — 50 updates in a row trained every sample at the staleness bound.
* ``latency_drift`` — an env worker's simulator time per env step is 3x its early median.
* ``heartbeat`` — an env worker sent no progress report for 120 s.

The collapse, entropy and drift alerts arm after ``warmup_updates`` (10) updates. An alert that
stays active is announced once, then at most every ``monitor.repeat_every`` updates; once its
condition clears, a later occurrence is new. ``counts`` counts every occurrence.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from asyncvla.config import MonitorConfig

ROLLING_FULL = 50
"""Episodes the rolling success/return window must hold before its best is recorded."""
DRIFT_REFERENCE = 5
"""Health samples after warm-up whose median is a worker's reference step time."""


@dataclass(frozen=True)
class Alert:
    name: str
    update: int
    message: str
    value: float
    threshold: float
    worker: str | None = None
    repeat: bool = False
    """The same condition was announced before and is still active."""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _finite(v: Any) -> bool:
    return v is None or (isinstance(v, (int, float)) and math.isfinite(v))


class Monitor:
    def __init__(self, cfg: MonitorConfig, max_staleness: int) -> None:
        self.cfg = cfg
        self.th = cfg.thresholds
        self.eta = max_staleness
        self.counts: dict[str, int] = {}
        self._active: dict[str, int] = {}
        """key (alert or alert/worker) -> update it was last announced"""
        self.best_success: float | None = None
        self.best_return: float | None = None
        self.entropy_ref: float | None = None
        self.pinned = 0
        self.skipped = 0
        self.step_refs: dict[str, list[float]] = {}
        self.rows = 0

    # -- de-duplication --------------------------------------------------------------------------
    def _fire(self, out: list[Alert], key: str, alert: Alert) -> None:
        if alert.name in self.cfg.disable:
            return
        self.counts[alert.name] = self.counts.get(alert.name, 0) + 1
        last = self._active.get(key)
        if last is None:
            self._active[key] = alert.update
            out.append(alert)
        elif alert.update - last >= self.cfg.repeat_every:
            self._active[key] = alert.update
            out.append(Alert(**{**alert.to_json(), "repeat": True}))

    def _clear(self, key: str) -> None:
        self._active.pop(key, None)

    # -- metric rows -----------------------------------------------------------------------------
    def observe(self, row: dict[str, Any]) -> list[Alert]:
        """Check one metric row; the alerts to announce now."""
        out: list[Alert] = []
        u = int(row.get("update", 0))
        self.rows += 1
        armed = self.rows > self.th.warmup_updates
        # nan
        bad = [
            k
            for k in ("loss_policy", "loss_value", "grad_norm", "approx_kl", "entropy", "success_rate", "episode_return")
            if not _finite(row.get(k))
        ]
        quarantined = int(row.get("quarantined_samples", 0) or 0)
        skipped = int(row.get("skipped_batches", 0) or 0)
        if bad or quarantined or skipped > self.skipped:
            parts = [f"non-finite {', '.join(bad)}"] if bad else []
            if quarantined:
                parts.append(f"{quarantined} samples quarantined (non-finite observation, reward or cost)")
            if skipped > self.skipped:
                parts.append(f"batch skipped and weights rolled back to update {row.get('rolled_back_to', '?')}")
            self._fire(out, "nan", Alert("nan", u, f"nan: {'; '.join(parts)} at update {u}", float(len(bad) + quarantined), 0.0))
        else:
            self._clear("nan")
        self.skipped = max(self.skipped, skipped)
        # success and return collapse
        episodes = int(row.get("episodes", 0) or 0)
        sr, ret = row.get("success_rate"), row.get("episode_return")
        if episodes >= ROLLING_FULL and _finite(sr) and _finite(ret) and sr is not None and ret is not None:
            if armed and self.best_success is not None and sr < self.best_success - self.th.success_collapse:
                self._fire(
                    out,
                    "success_collapse",
                    Alert(
                        "success_collapse",
                        u,
                        f"success_collapse: training success {sr:.2f}, best {self.best_success:.2f} "
                        f"(drop > {self.th.success_collapse:g}) at update {u}",
                        float(sr),
                        self.best_success - self.th.success_collapse,
                    ),
                )
            else:
                self._clear("success_collapse")
            limit = None if not self.best_return or self.best_return <= 0 else (1 - self.th.return_collapse) * self.best_return
            if armed and limit is not None and ret < limit:
                self._fire(
                    out,
                    "return_collapse",
                    Alert(
                        "return_collapse",
                        u,
                        f"return_collapse: training return {ret:.3f} < {limit:.3f} "
                        f"({1 - self.th.return_collapse:g} x best {self.best_return:.3f}) at update {u}",
                        float(ret),
                        limit,
                    ),
                )
            else:
                self._clear("return_collapse")
            self.best_success = sr if self.best_success is None else max(self.best_success, sr)
            self.best_return = ret if self.best_return is None else max(self.best_return, ret)
        # KL spike
        kl = row.get("approx_kl")
        if kl is not None and _finite(kl) and kl > self.th.kl_spike:
            self._fire(out, "kl_spike", Alert("kl_spike", u, f"kl_spike: approx_kl {kl:.3g} > {self.th.kl_spike:g} at update {u}", float(kl), self.th.kl_spike))
        else:
            self._clear("kl_spike")
        # entropy collapse
        ent = row.get("entropy")
        if ent is not None and _finite(ent):
            if self.entropy_ref is None:
                self.entropy_ref = float(ent)
            floor = self.entropy_ref - self.th.entropy_collapse
            if armed and ent < floor:
                self._fire(
                    out,
                    "entropy_collapse",
                    Alert(
                        "entropy_collapse",
                        u,
                        f"entropy_collapse: entropy {ent:.3f} < {floor:.3f} (first {self.entropy_ref:.3f} - "
                        f"{self.th.entropy_collapse:g}) at update {u}",
                        float(ent),
                        floor,
                    ),
                )
            else:
                self._clear("entropy_collapse")
        # staleness pinned at the bound
        sm = row.get("staleness_mean")
        if self.eta > 0 and sm is not None and _finite(sm) and sm >= self.eta - 1e-9:
            self.pinned += 1
        else:
            self.pinned = 0
        if self.pinned >= self.th.staleness_pinned:
            self._fire(
                out,
                "staleness_pinned",
                Alert(
                    "staleness_pinned",
                    u,
                    f"staleness_pinned: {self.pinned} updates in a row trained every sample at the "
                    f"staleness bound {self.eta} (rollouts throttled; the trainer is the bottleneck) at update {u}",
                    float(self.pinned),
                    float(self.th.staleness_pinned),
                ),
            )
        else:
            self._clear("staleness_pinned")
        return out

    # -- worker health ----------------------------------------------------------------------------
    def check_health(self, health: dict[str, dict[str, float]], update: int) -> list[Alert]:
        """Check the env workers' heartbeat and step latency (``Coordinator.health``)."""
        out: list[Alert] = []
        armed = self.rows > self.th.warmup_updates
        for worker, h in sorted(health.items()):
            since = float(h.get("since_report_s", 0.0))
            key = f"heartbeat/{worker}"
            if since > self.th.heartbeat_s:
                self._fire(
                    out,
                    key,
                    Alert("heartbeat", update, f"heartbeat: {worker} silent for {since:.0f} s (> {self.th.heartbeat_s:g} s) at update {update}", since, self.th.heartbeat_s, worker),
                )
            else:
                self._clear(key)
            ms = h.get("step_ms")
            if ms is None or not math.isfinite(ms) or not armed:
                continue
            refs = self.step_refs.setdefault(worker, [])
            if len(refs) < DRIFT_REFERENCE:
                refs.append(float(ms))
                continue
            ref = sorted(refs)[len(refs) // 2]
            key = f"latency_drift/{worker}"
            if ref > 0 and ms > self.th.latency_drift * ref:
                self._fire(
                    out,
                    key,
                    Alert(
                        "latency_drift",
                        update,
                        f"latency_drift: {worker} {ms:.3g} ms per env step, {ms / ref:.1f}x its early "
                        f"{ref:.3g} ms (> {self.th.latency_drift:g}x) at update {update}",
                        float(ms),
                        self.th.latency_drift * ref,
                        worker,
                    ),
                )
            else:
                self._clear(key)
        return out

    # -- resume ----------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "counts": dict(self.counts),
            "active": dict(self._active),
            "best_success": self.best_success,
            "best_return": self.best_return,
            "entropy_ref": self.entropy_ref,
            "pinned": self.pinned,
            "skipped": self.skipped,
            "step_refs": {k: list(v) for k, v in self.step_refs.items()},
            "rows": self.rows,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.counts = dict(state["counts"])
        self._active = {k: int(v) for k, v in state["active"].items()}
        self.best_success, self.best_return = state["best_success"], state["best_return"]
        self.entropy_ref, self.pinned, self.skipped = state["entropy_ref"], int(state["pinned"]), int(state["skipped"])
        self.step_refs = {k: list(v) for k, v in state["step_refs"].items()}
        self.rows = int(state["rows"])


class AlertSink:
    """Where announced alerts go: one console line each, a JSON line in ``alerts.jsonl`` (the
    file exists, empty, from the start of a run: no lines means no alerts), TensorBoard."""

    def __init__(self, path: str | Path, console: Any = None, tensorboard: Any = None) -> None:
        self.path = Path(path)
        self._file = self.path.open("a")
        self.console = console
        self.tb = tensorboard

    def emit(self, alert: Alert) -> None:
        self._file.write(json.dumps(alert.to_json()) + "\n")
        self._file.flush()
        if self.console is not None:
            style = "red" if alert.name in ("nan", "heartbeat") else "yellow"
            again = " (still active)" if alert.repeat else ""
            self.console.print(f"alert: {alert.message}{again}", style=style, markup=False, highlight=False)
        if self.tb is not None:
            self.tb.add_scalar(f"alerts/{alert.name}", alert.value, alert.update)
            self.tb.add_text("alerts", alert.message, alert.update)

    def close(self) -> None:
        self._file.close()
