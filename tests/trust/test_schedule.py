"""Replay's pure parts (no Ray): the row comparison, reading the recorded schedule, its refusals;
and the deterministic-kernels switch."""

import json

import pytest
import torch

from asyncvla.config import load_config
from asyncvla.runtime.placement import plan, use_deterministic
from asyncvla.trust.replay import ReplayError, compare_rows, load_schedule, metrics_digest


def test_compare_rows_ignores_timing_and_names_the_first_difference():
    row = {"update": 3, "wall_s": 1.0, "loss_policy": 0.25, "staleness_hist": {"0": 4}, "time_train_s": 2.0}
    assert compare_rows(row, {**row, "wall_s": 9.0, "time_train_s": 0.1}) is None
    assert compare_rows(row, {**row, "loss_policy": 0.2500000001}) == ("loss_policy", 0.25, 0.2500000001)
    # dict keys become strings as in metrics.jsonl; a missing or extra key is a difference
    assert compare_rows(row, {**row, "staleness_hist": {0: 4}}) is None
    assert compare_rows(row, {k: v for k, v in row.items() if k != "loss_policy"})[0] == "loss_policy"
    assert compare_rows(row, {**row, "extra": 1}) == ("extra", "<absent>", 1)
    # private keys of the live row (the weights handle) are not part of the stream
    assert compare_rows(row, {**row, "_weights": [object()]}) is None


def _events(path, events):
    path.mkdir(parents=True, exist_ok=True)
    (path / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))


START = {"kind": "run_start", "worker": "driver", "wseq": 0}


def test_load_schedule_orders_batches_tickets_and_updates(tmp_path):
    ev = [
        START,
        {"kind": "batch_formed", "worker": "rollout1", "wseq": 5, "version": 1, "reqs": [[1, 2, 0]]},
        {
            "kind": "batch_formed",
            "worker": "rollout1",
            "wseq": 2,
            "version": 0,
            "reqs": [[0, 1, 0], [1, 1, 0]],
        },
        {
            "kind": "segment_shipped",
            "worker": "env0",
            "manager": 0,
            "segment": 1,
            "ticket": 3,
            "target_version": 1,
            "samples": 8,
            "closes_batch": True,
            "batch_tickets": 2,
        },
        {
            "kind": "segment_shipped",
            "worker": "env0",
            "manager": 0,
            "segment": 0,
            "ticket": 0,
            "target_version": 0,
            "samples": 8,
            "closes_batch": False,
            "batch_tickets": 0,
        },
        {"kind": "train", "worker": "trainer", "version": 1, "segments": [[1, 1], [0, 1]]},
        {"kind": "train", "worker": "trainer", "version": 0, "segments": [[0, 0], [1, 0]]},
    ]
    _events(tmp_path, ev)
    s = load_schedule(tmp_path)
    assert [b.version for b in s.batches[1]] == [0, 1]  # the worker's own order (wseq)
    assert s.batches[1][0].reqs == [(0, 1, 0), (1, 1, 0)]
    assert [t.ticket_id for t in s.tickets[0]] == [0, 3] and s.tickets[0][1].closes_batch
    assert s.updates == [[(0, 0), (1, 0)], [(1, 1), (0, 1)]]  # arrival order kept
    assert s.cores is None


@pytest.mark.parametrize(
    "events, message",
    [
        ([START, START], "2 run_start events"),
        (
            [START, {"kind": "worker_failed", "worker": "driver", "actor": "env0"}],
            "env0 failed during the run",
        ),
        ([START, {"kind": "batch_formed", "worker": "rollout0", "wseq": 1, "version": 0}], "lacks 'reqs'"),
        ([], "0 run_start events"),
    ],
    ids=["resumed", "restarted-worker", "unrecorded", "empty"],
)
def test_load_schedule_refuses_what_it_cannot_replay(tmp_path, events, message):
    _events(tmp_path, events)
    with pytest.raises(ReplayError, match=message):
        load_schedule(tmp_path)


def test_metrics_digest_ignores_timing_only(tmp_path):
    rows = [{"update": 1, "wall_s": 1.0, "loss": 0.5}, {"update": 2, "wall_s": 2.0, "loss": 0.4}]
    a, b = tmp_path / "a", tmp_path / "b"
    for d, wall in ((a, 0.0), (b, 7.0)):
        d.mkdir()
        (d / "metrics.jsonl").write_text(
            "".join(json.dumps({**r, "wall_s": r["wall_s"] + wall}) + "\n" for r in rows)
        )
    assert metrics_digest(a) == metrics_digest(b)
    (b / "metrics.jsonl").write_text((b / "metrics.jsonl").read_text().replace("0.4", "0.41"))
    assert metrics_digest(a) != metrics_digest(b)


def test_the_deterministic_switch_reaches_every_worker_and_the_process():
    cfg = load_config(None, ["runtime.deterministic=true", "runtime.passive_threads=true"])
    for role, p in plan(cfg).items():
        env = p.ray_options()["runtime_env"]["env_vars"]
        assert env == {"OMP_WAIT_POLICY": "PASSIVE", "CUBLAS_WORKSPACE_CONFIG": ":4096:8"}, role
    assert "runtime_env" not in plan(load_config(None, []))["trainer"].ray_options()
    was = torch.are_deterministic_algorithms_enabled()
    try:
        use_deterministic(True)
        assert torch.are_deterministic_algorithms_enabled() and not torch.backends.cudnn.benchmark
    finally:
        torch.use_deterministic_algorithms(was)
