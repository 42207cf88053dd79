"""EmulatedPolicy (durations on virtual devices, valid PPO outputs) and the device locks."""

import json
import multiprocessing as mp
import threading
import time
import uuid

import numpy as np
import pytest
import torch

from asyncvla.bench.emulated import EmulatedPolicy, cost_s
from asyncvla.bench.vdevice import device, hold_for, read_holds
from asyncvla.policies import load_policy, save_policy

SLACK = 0.15  # seconds a loaded 2-core machine may add to a sleep


def _policy(tmp_path, **kw):
    args = dict(
        chunk_size=3,
        action_dim=2,
        infer={"a_s": 0.01, "b_s": 0.01},
        train={"b_s": 0.02},
        nograd_factor=0.5,
        sync_s=0.05,
        devices={"rollout": "d0", "trainer": "d1"},
        run_id=uuid.uuid4().hex,
        lock_dir=str(tmp_path),
        hold_log=True,
    )
    args.update(kw)
    return EmulatedPolicy(**args)


def _timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def test_cost_model():
    assert cost_s({"a_s": 1.0, "b_s": 0.5, "floor_s": 0.0}, 4) == 3.0
    assert cost_s({"a_s": 0.0, "b_s": 0.1, "floor_s": 2.0}, 4) == 2.0  # small batches hit the floor
    assert cost_s({"a_s": 1.0}, 0) == 0.0 and cost_s(None, 5) == 0.0


def test_act_and_evaluate_agree_and_take_the_configured_time(tmp_path):
    p = _policy(tmp_path)
    obs = {"state": np.zeros((5, 6), np.float32)}
    out, dt = _timed(lambda: p.act(obs))
    assert 0.06 <= dt < 0.06 + SLACK  # 0.01 + 0.01 x 5
    assert out.actions.shape == out.log_probs.shape == (5, 3, 2) and out.values.shape == (5,)
    assert out.actions.dtype == out.log_probs.dtype == np.float32 and out.version == 0
    ev, dt = _timed(lambda: p.evaluate(obs, out.actions))
    assert 0.10 <= dt < 0.10 + SLACK  # 0.02 x 5, gradients on
    np.testing.assert_allclose(ev.log_probs.detach().numpy(), out.log_probs, atol=1e-5)
    assert ev.entropy.shape == (5, 3, 2) and ev.values.shape == (5,)
    (-(ev.log_probs.sum()) + ev.values.pow(2).sum() - ev.entropy.sum()).backward()
    assert all(q.grad is not None for q in p.parameters())
    with torch.no_grad():
        _, dt = _timed(lambda: p.evaluate(obs, torch.from_numpy(out.actions)))
    assert 0.05 <= dt < 0.05 + SLACK  # a forward only: nograd_factor x 0.10
    det = p.act(obs, deterministic=True)
    np.testing.assert_allclose(det.actions, 0.0)
    holds = read_holds(tmp_path, p.run_id)
    assert [(h["device"], h["op"], h["samples"]) for h in holds] == [
        ("d0", "act", 5),
        ("d1", "evaluate", 5),
        ("d1", "evaluate_nograd", 5),
        ("d0", "act", 5),
    ]
    assert all(0.05 <= h["t1"] - h["t0"] < 0.1 + SLACK for h in holds)


def test_gpus_split_the_batch_and_roles_pick_the_device(tmp_path):
    p = _policy(tmp_path, gpus={"rollout": 2, "trainer": 4})
    assert p.stage_cost_s("act", 10) == pytest.approx(0.01 + 0.01 * 5)
    assert p.stage_cost_s("evaluate", 8) == pytest.approx(0.02 * 2)
    assert p.stage_cost_s("evaluate", 8, grad=False) == pytest.approx(0.02 * 2 * 0.5)
    assert p.stage_cost_s("act", 8, role="trainer") == pytest.approx(0.01 + 0.01 * 2)  # bootstrap
    assert p.stage_cost_s("load", 0, role="rollout") == 0.05
    assert p.stage_cost_s("load", 0, role="trainer") == 0.0
    t = _policy(tmp_path, role="trainer", bootstrap_factor=0.0)
    obs = {"state": np.zeros((4, 6), np.float32)}
    _, dt = _timed(lambda: t.act(obs))
    assert dt < SLACK  # the trainer's bootstrap forward is free here


def test_weight_load_takes_sync_time_on_the_rollout_only(tmp_path):
    p = _policy(tmp_path)
    sd = {k: v.clone() + 1 for k, v in p.state_dict().items()}
    _, dt = _timed(lambda: p.load_state_dict(sd))
    assert 0.05 <= dt < 0.05 + SLACK
    assert torch.equal(p.mean, sd["mean"])
    t = _policy(tmp_path, role="trainer")
    _, dt = _timed(lambda: t.load_state_dict(sd))
    assert dt < SLACK


def test_checkpoint_round_trip_through_the_plugin_name(tmp_path):
    p = _policy(tmp_path / "locks")
    with torch.no_grad():
        p.mean.add_(0.25)
    save_policy(p, tmp_path / "ckpt", "asyncvla.bench.emulated:EmulatedPolicy")
    q = load_policy(tmp_path / "ckpt")
    assert isinstance(q, EmulatedPolicy) and q.init_kwargs() == p.init_kwargs()
    assert torch.equal(q.mean, p.mean)


def _intervals(tmp_path, names):
    ctx = mp.get_context("spawn")
    run_id = uuid.uuid4().hex
    start_at = time.time() + 2.0  # both processes are up by then
    procs = []
    for i, name in enumerate(names):
        out = tmp_path / f"hold{i}.json"
        procs.append(
            (ctx.Process(target=hold_for, args=(name, 0.4, start_at, run_id, str(tmp_path), str(out))), out)
        )
    for pr, _ in procs:
        pr.start()
    for pr, _ in procs:
        pr.join(20)
        assert pr.exitcode == 0
    return sorted((json.loads(out.read_text()) for _, out in procs), key=lambda r: r["t0"])


def test_same_device_name_serializes_two_processes(tmp_path):
    a, b = _intervals(tmp_path, ["gpu", "gpu"])
    assert b["t0"] >= a["t1"] - 1e-3  # the second waited for the first
    assert a["t1"] - a["t0"] >= 0.4 and b["t1"] - b["t0"] >= 0.4


def test_different_device_names_run_concurrently(tmp_path):
    a, b = _intervals(tmp_path, ["gpu0", "gpu1"])
    assert b["t0"] < a["t1"] - 0.2  # they overlapped


def test_threads_of_one_process_share_a_device(tmp_path):
    run_id = uuid.uuid4().hex
    spans = []

    def work():
        with device("x", run_id, tmp_path).hold() as h:
            h.occupy(0.15)
            spans.append((h.t0, time.time()))

    threads = [threading.Thread(target=work) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    (a0, a1), (b0, b1) = sorted(spans)
    assert b0 >= a1 - 1e-3


def test_runtime_role_hint_picks_the_device_and_is_not_saved(tmp_path):
    p = _policy(tmp_path)
    p.on_placed("trainer")
    obs = {"state": np.zeros((2, 6), np.float32)}
    p.act(obs)  # the trainer's bootstrap forward: on the trainer's device
    assert [h["device"] for h in read_holds(tmp_path, p.run_id)] == ["d1"]
    assert p.init_kwargs()["role"] is None
