"""The soak's RSS bookkeeping: growth between the warm-up window and the schedule's last window,
and pids read from a growing event log."""

import json

import pytest

from asyncvla.soak import _Pids, growth_table


def test_growth_compares_the_window_after_warm_up_with_the_schedules_last_window():
    samples = {
        # the driver keeps sampling through the final evaluation (t > 300): not counted
        "driver": [(t, 100.0 if t <= 300 else 500.0) for t in range(0, 400, 10)],
        "trainer": [(t, 200.0 if t < 100 else 220.0) for t in range(0, 310, 10)],
        "env0 (pid 7)": [(t, 50.0) for t in range(0, 50, 10)],  # died early: no end window
    }
    rows = {r["process"]: r for r in growth_table(samples, warmup_s=60, window_s=30)}
    assert set(rows) == {"driver", "trainer"}
    # trainer: warm window t in [60, 90] = 200, 200, 200, 200; end window t in [270, 300] = 220
    assert rows["trainer"]["rss_warm_mb"] == 200.0 and rows["trainer"]["rss_end_mb"] == 220.0
    assert rows["trainer"]["growth"] == pytest.approx(0.10) and rows["trainer"]["rss_peak_mb"] == 220.0
    assert rows["driver"]["growth"] == 0.0 and rows["driver"]["rss_peak_mb"] == 500.0


def test_windows_that_overlap_give_no_reading():
    assert growth_table({"trainer": [(t, 1.0) for t in range(0, 100, 10)]}, warmup_s=40, window_s=30) == []


def test_pids_come_from_worker_start_events_read_incrementally(tmp_path):
    path = tmp_path / "events.jsonl"
    pids = _Pids(path)
    assert list(pids.update().values()) == ["driver"]
    start = {"kind": "worker_start", "actor": "trainer", "pid": 11}
    path.write_text(
        json.dumps({"kind": "env_step"}) + "\n" + json.dumps(start) + "\n" + '{"kind": "worker_st'
    )
    assert pids.update()[11] == "trainer (pid 11)" and len(pids.names) == 2
    with path.open("a") as f:  # the torn line completes, then a restarted env worker
        f.write('art", "actor": "env0", "pid": 12}\n')
    assert pids.update()[12] == "env0 (pid 12)" and len(pids.names) == 3
