"""The training monitor: each alert fires on what it names and not on a clean run, within the
stated number of updates; alerts are de-duplicated, resumable and written to alerts.jsonl."""

import io
import json
import math

import numpy as np
import pytest
from rich.console import Console

from asyncvla.config import ALERTS, ConfigError, load_config
from asyncvla.safety.monitor import Alert, AlertSink, Monitor


def _monitor(*overrides, eta=1):
    return Monitor(load_config(None, list(overrides)).monitor, eta)


def _clean_rows(n=150, seed=0):
    """A healthy run: rolling success 0.3 -> 0.8 with noise (20 episodes per update), KL ~0.02,
    entropy falling 0.5 over the run, staleness_mean ~0.6 under eta = 1; numpy scalars mixed in."""
    rng = np.random.default_rng(seed)
    for u in range(1, n + 1):
        sr = min(0.8, 0.3 + 0.005 * u) + rng.normal(0, 0.02)
        yield {
            "update": u,
            "policy_version": u,
            "success_rate": sr,
            "episode_return": 0.5 + sr,
            "episodes": min(100, 20 * u),
            "approx_kl": abs(rng.normal(0.02, 0.01)),
            "entropy": 0.4 - 0.5 * u / n,
            "loss_policy": np.float32(rng.normal()),
            "loss_value": abs(rng.normal()),
            "grad_norm": np.float64(1.5),
            "staleness_mean": 0.6 + rng.normal(0, 0.05),
            "staleness_max": 1,
            "quarantined_samples": 0.0,
            "skipped_batches": 0,
            "rollbacks": 0,
            "env_steps": 1000 * u,
            "time_update_s": 0.5,
        }


def _feed(mon, rows):
    return [(r["update"], a) for r in rows for a in mon.observe(r)]


def _healthy(update, workers=("env0", "env1")):
    return {w: {"since_report_s": 2.0, "step_ms": 0.5 + 0.01 * (update % 3)} for w in workers}


def test_a_clean_stream_raises_nothing(tmp_path):
    mon = _monitor()
    sink = AlertSink(tmp_path / "alerts.jsonl", Console(file=io.StringIO()))
    for row in _clean_rows():
        sink.emit_all(mon.observe(row))
        sink.emit_all(mon.check_health(_healthy(row["update"]), row["update"]))
    sink.close()
    assert (tmp_path / "alerts.jsonl").read_text() == ""
    assert set(mon.counts) == set(ALERTS) and not any(mon.counts.values())
    assert mon.best_success is not None and mon.entropy_ref == pytest.approx(0.4 - 0.5 / 150)


@pytest.mark.parametrize(
    "key, value, text",
    [
        ("loss_policy", math.nan, "non-finite loss_policy"),
        ("grad_norm", np.float32("inf"), "non-finite grad_norm"),
        ("quarantined_samples", 3.0, "3 samples quarantined"),
        ("skipped_batches", 1, "rolled back to update 20"),
    ],
)
def test_nan_loss_quarantine_and_rollback_each_alert_once(key, value, text):
    mon = _monitor()
    rows = list(_clean_rows(30))
    rows[20][key] = value
    if key == "skipped_batches":  # cumulative: stays 1 afterwards, only the increase alerts
        for r in rows[20:]:
            r[key] = 1
        rows[20]["rolled_back_to"] = 20
    fired = _feed(mon, rows)
    assert [(u, a.name) for u, a in fired] == [(21, "nan")], fired
    assert text in fired[0][1].message and fired[0][1].message.endswith("at update 21")
    if key == "quarantined_samples":
        assert fired[0][1].value == 3.0


def test_a_row_without_skipped_batches_or_kl_checks_neither():
    """GRPO rows lack approx_kl and the value keys; absent keys don't check."""
    mon = _monitor()
    rows = list(_clean_rows(30))
    rows[5]["skipped_batches"] = 2
    for r in rows[6:]:
        for k in ("approx_kl", "loss_value", "skipped_batches"):
            r.pop(k)
    rows[10]["skipped_batches"] = 2  # unchanged against the last value seen: no new skip
    assert [(u, a.name) for u, a in _feed(mon, rows)] == [(6, "nan")]


def _collapse_run(mon, collapse_at=60, n=100, per_update=20, seed=1):
    """The driver sees the rolling mean of the last 100 episodes, ~per_update new ones each update."""
    window: list[float] = []
    returns: list[float] = []
    rng = np.random.default_rng(seed)
    fired = []
    for u in range(1, n):
        p = 0.8 if u < collapse_at else 0.1
        succ = list(rng.random(per_update) < p)
        window = (window + succ)[-100:]
        returns = (returns + [2.0 * s + 0.1 for s in succ])[-100:]
        row = next(_clean_rows(1))
        row.update(
            update=u,
            success_rate=float(np.mean(window)),
            episode_return=float(np.mean(returns)),
            episodes=len(window),
        )
        fired += [(u, a.name) for a in mon.observe(row)]
    return fired


def test_an_injected_reward_collapse_alerts_within_five_updates():
    """Success 0.8 -> 0.1 (return 1.7 -> 0.3) from update U = 60: the rolling mean drops ~0.14
    per update and crosses best - 0.3 (and return 0.5 x best) by the third update; the test
    requires both alerts at U <= update <= U + 4, i.e. within 5 updates, and none before U."""
    fired = _collapse_run(_monitor())
    first = {name: u for u, name in reversed(fired)}
    assert set(first) == {"success_collapse", "return_collapse"}, fired
    assert 60 <= first["success_collapse"] <= 64 and 60 <= first["return_collapse"] <= 64
    # a half-full window (episodes < 50) neither records a best nor alerts
    mon = _monitor()
    assert _collapse_run(mon, per_update=2, n=25) == [] and mon.best_success is None


def test_kl_entropy_and_staleness_pinned_after_exactly_threshold_rows():
    mon = _monitor("monitor.thresholds.staleness_pinned=5")
    rows = list(_clean_rows(60))
    rows[30]["approx_kl"] = 0.9
    for r in rows[12:17]:  # updates 13..17: five rows at the bound
        r["staleness_mean"] = 1.0
    for r in rows[40:44]:  # updates 41..44: four rows, one short
        r["staleness_mean"] = 1.0
    rows[35]["entropy"] = rows[0]["entropy"] - 2.5
    rows[5]["entropy"] = rows[0]["entropy"] - 2.5  # update 6: still warming up (10 updates)
    fired = [(u, a.name) for u, a in _feed(mon, rows)]
    assert fired == [(17, "staleness_pinned"), (31, "kl_spike"), (36, "entropy_collapse")]
    kl = next(a for _, a in _feed(_monitor(), rows[:31]) if a.name == "kl_spike")
    assert kl.message == "kl_spike: approx_kl 0.9 > 0.3 at update 31" and (kl.value, kl.threshold) == (
        0.9,
        0.3,
    )
    # a trainer-bound run (busy >= 0.9) trains at the bound by design: no alert; waiting: alert
    bound = list(_clean_rows(20))
    for r in bound:
        r.update(staleness_mean=1.0, trainer_busy_frac=0.99)
    assert _feed(_monitor("monitor.thresholds.staleness_pinned=5"), bound) == []
    for r in bound:
        r["trainer_busy_frac"] = 0.6
    assert [(u, a.name) for u, a in _feed(_monitor("monitor.thresholds.staleness_pinned=5"), bound)][0] == (
        5,
        "staleness_pinned",
    )
    # sync (eta = 0): staleness 0 is always "at the bound" and must never alert
    sync = _monitor("monitor.thresholds.staleness_pinned=5", eta=0)
    rows = list(_clean_rows(40))
    for r in rows:
        r["staleness_mean"] = 0.0
    assert _feed(sync, rows) == []


def test_a_negative_entropy_reference_works():
    mon = _monitor("monitor.thresholds.warmup_updates=0")
    rows = list(_clean_rows(5))
    for r, e in zip(rows, [-1.0, -1.5, -2.9, -3.1, -3.5], strict=True):
        r["entropy"] = e
    fired = _feed(mon, rows)
    assert [(u, a.name) for u, a in fired] == [(4, "entropy_collapse")] and fired[0][1].threshold == -3.0


def test_a_persistent_alert_is_repeated_every_repeat_every_updates_and_counted():
    mon = _monitor("monitor.repeat_every=25")
    rows = list(_clean_rows(150))
    for r in rows[:100]:
        r["approx_kl"] = 1.0
    fired = _feed(mon, rows)
    assert [u for u, _ in fired] == [1, 26, 51, 76]
    assert [(a.repeat, a.count) for _, a in fired] == [(False, 1), (True, 26), (True, 51), (True, 76)]
    assert mon.counts["kl_spike"] == 100
    again = next(_clean_rows(1))
    again.update(update=151, approx_kl=1.0)
    got = mon.observe(again)  # cleared at 101, so a new occurrence
    assert [(a.name, a.repeat, a.count) for a in got] == [("kl_spike", False, 1)] and mon.counts[
        "kl_spike"
    ] == 101


def test_disabled_alerts_do_not_fire_and_unknown_names_are_refused():
    mon = _monitor("monitor.disable=[kl_spike, heartbeat]")
    rows = list(_clean_rows(5))
    rows[2]["approx_kl"] = 5.0
    rows[3]["loss_value"] = math.nan
    assert [(u, a.name) for u, a in _feed(mon, rows)] == [(4, "nan")]
    assert mon.check_health({"env0": {"since_report_s": 1e4, "step_ms": 1.0}}, 5) == []
    assert mon.counts["kl_spike"] == 0 and mon.counts["heartbeat"] == 0
    with pytest.raises(ConfigError, match=r"^monitor.disable: unknown alert 'kl'; allowed: nan, "):
        load_config(None, ["monitor.disable=[kl]"])


def test_heartbeat_and_latency_drift():
    """Reference: the median of a worker's first 5 step times after warm-up (update > 10)."""
    mon = _monitor()
    for u in range(1, 11):  # warm-up: slow start-up steps are not the reference
        assert mon.check_health({"env0": {"since_report_s": 1.0, "step_ms": 5.0}}, u) == []
    for u, ms in zip(
        range(11, 16), [0.6, 0.5, 0.4, 0.5, 9.0], strict=True
    ):  # median 0.5 (first 0.6, mean 2.2)
        assert mon.check_health({"env0": {"since_report_s": 1.0, "step_ms": ms}}, u) == []
    assert mon.check_health({"env0": {"since_report_s": 1.0, "step_ms": 1.5}}, 16) == []  # 3x: not above
    got = mon.check_health(
        {
            "env0": {"since_report_s": 300.0, "step_ms": 2.0},
            "env1": {"since_report_s": 2.0, "step_ms": float("nan")},
        },
        17,
    )
    assert sorted((a.name, a.worker) for a in got) == [("heartbeat", "env0"), ("latency_drift", "env0")]
    drift = next(a for a in got if a.name == "latency_drift")
    assert drift.threshold == pytest.approx(1.5) and "env0" in drift.message and "\n" not in drift.message
    # per worker: env1 going silent is a new alert while env0's stays active (not re-announced)
    got = mon.check_health({"env0": {"since_report_s": 305.0}, "env1": {"since_report_s": 200.0}}, 18)
    assert [(a.name, a.worker) for a in got] == [("heartbeat", "env1")]
    assert mon.counts["heartbeat"] == 3
    # env0 reports again: cleared, a later silence is new
    assert mon.check_health({"env0": {"since_report_s": 1.0}}, 19) == []
    got = mon.check_health({"env0": {"since_report_s": math.inf}}, 20)
    assert [(a.name, a.repeat) for a in got] == [("heartbeat", False)] and got[0].to_json()["value"] is None


def test_state_dict_round_trip_continues_the_references():
    mon = _monitor()
    rows = list(_clean_rows(80))
    rows[38]["approx_kl"] = rows[39]["approx_kl"] = 1.0  # active at the save
    _feed(mon, rows[:40])
    state = json.loads(json.dumps(mon.state_dict(), allow_nan=False))
    other = _monitor()
    other.load_state_dict(state)
    assert other.state_dict() == mon.state_dict()
    # the best success/return and the entropy reference continue: a drop alerts at once
    drop = dict(
        rows[40], success_rate=0.1, episode_return=0.2, entropy=rows[0]["entropy"] - 2.1, approx_kl=1.0
    )
    got = {a.name: a for a in other.observe(drop)}
    assert set(got) == {"success_collapse", "return_collapse", "entropy_collapse"}  # kl: still active
    assert other.counts["kl_spike"] == 3
    fresh = _monitor()  # without the state the same row raises no collapse (no references yet)
    assert {a.name for a in fresh.observe(drop)} == {"kl_spike"}


def test_alert_sink_writes_jsonl_one_console_line_each_and_tensorboard(tmp_path):
    class TB:
        def __init__(self):
            self.calls = []

        def add_scalar(self, *a):
            self.calls.append(("scalar", *a))

        def add_text(self, *a):
            self.calls.append(("text", *a))

    out, tb = io.StringIO(), TB()
    sink = AlertSink(tmp_path / "run" / "alerts.jsonl", Console(file=out, width=60), tb)
    mon = _monitor()
    rows = list(_clean_rows(3))
    rows[1]["loss_value"] = math.inf
    rows[1]["quarantined_samples"] = 7
    rows[2]["approx_kl"] = 2.0
    for r in rows:
        sink.emit_all(mon.observe(r))
    sink.emit(Alert("kl_spike", 30, "kl_spike: approx_kl 2 > 0.3 at update 30", 2.0, 0.3, None, 26, True))
    sink.close()
    lines = [json.loads(x) for x in (tmp_path / "run" / "alerts.jsonl").read_text().splitlines()]
    assert [(x["name"], x["update"]) for x in lines] == [("nan", 2), ("kl_spike", 3), ("kl_spike", 30)]
    assert lines[0]["value"] == 8.0 and lines[1]["threshold"] == 0.3 and lines[2]["repeat"] is True
    printed = out.getvalue().splitlines()  # long messages are not wrapped at the console width
    assert len(printed) == 3 and all(p.startswith("alert: ") for p in printed)
    assert "7 samples quarantined" in printed[0] and printed[2].endswith("(still active, 26 occurrences)")
    assert tb.calls[:2] == [("scalar", "alerts/nan", 8.0, 2), ("text", "alerts", lines[0]["message"], 2)]
    assert len(tb.calls) == 6
