"""EmulatedPolicy (durations on virtual devices, valid PPO outputs) and the device locks."""

import multiprocessing as mp
import threading
import uuid

import numpy as np
import pytest
import torch

from asyncvla.bench import vdevice
from asyncvla.bench.emulated import EmulatedPolicy
from asyncvla.bench.vdevice import Hold, read_holds
from asyncvla.policies import load_policy, save_policy
from tests.bench.holders import hold_and_count


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


@pytest.fixture
def slept(monkeypatch):
    """Holds do not sleep: every ``time.sleep`` the device asks for is recorded instead."""
    calls: list[float] = []
    monkeypatch.setattr(vdevice.time, "sleep", calls.append)
    return calls


def _requested(p):
    return [(h["device"], h["op"], h["samples"], h["requested_s"]) for h in read_holds(p.lock_dir, p.run_id)]


def test_occupy_sleeps_the_rest_of_the_requested_time(monkeypatch):
    clock = [100.0]
    calls: list[float] = []
    monkeypatch.setattr(vdevice.time, "perf_counter", lambda: clock[0])
    monkeypatch.setattr(vdevice.time, "sleep", calls.append)
    h = Hold(t0=0.0)
    clock[0] += 0.02  # real work inside the hold counts towards its cost
    h.occupy(0.06)
    assert calls == [pytest.approx(0.04)] and h.requested_s == 0.06
    h = Hold(t0=0.0)
    clock[0] += 1.0  # the work alone took longer than the cost: no sleep
    h.occupy(0.5)
    h = Hold(t0=0.0)
    h.occupy(-1.0)
    assert calls == [pytest.approx(0.04)] and h.requested_s == 0.0


def test_act_and_evaluate_agree_and_request_the_configured_time(tmp_path, slept):
    p = _policy(tmp_path)
    obs = {"state": np.zeros((5, 6), np.float32)}
    out = p.act(obs)
    assert out.actions.shape == out.log_probs.shape == (5, 3, 2) and out.values.shape == (5,)
    assert out.actions.dtype == out.log_probs.dtype == np.float32 and out.version == 0
    ev = p.evaluate(obs, out.actions)
    np.testing.assert_allclose(ev.log_probs.detach().numpy(), out.log_probs, atol=1e-5)
    assert ev.entropy.shape == (5, 3, 2) and ev.values.shape == (5,)
    (-(ev.log_probs.sum()) + ev.values.pow(2).sum() - ev.entropy.sum()).backward()
    assert all(q.grad is not None for q in p.parameters())
    with torch.no_grad():
        p.evaluate(obs, torch.from_numpy(out.actions))
    det = p.act(obs, deterministic=True)
    np.testing.assert_allclose(det.actions, 0.0)
    assert _requested(p) == [
        ("d0", "act", 5, pytest.approx(0.06)),  # 0.01 + 0.01 x 5
        ("d1", "evaluate", 5, pytest.approx(0.10)),  # 0.02 x 5, gradients on
        ("d1", "evaluate_nograd", 5, pytest.approx(0.05)),  # a forward only: nograd_factor x 0.10
        ("d0", "act", 5, pytest.approx(0.06)),
    ]
    assert len(slept) == 4 and all(0 < s <= r for s, r in zip(slept, (0.06, 0.10, 0.05, 0.06), strict=True))


def test_log_probs_and_entropy_are_the_gaussians_by_hand(tmp_path, slept):
    p = _policy(tmp_path, init_log_std=0.0)
    with torch.no_grad():
        p.mean.fill_(0.5)
    a = np.zeros((2, 3, 2), np.float32)
    ev = p.evaluate({"state": np.zeros((2, 6), np.float32)}, a)
    # N(0.5, 1) at 0: -0.5 x 0.25 - log sqrt(2 pi); entropy 0.5 + log sqrt(2 pi)
    half_log_2pi = 0.5 * np.log(2 * np.pi)
    np.testing.assert_allclose(ev.log_probs.detach().numpy(), -0.125 - half_log_2pi, rtol=1e-6)
    np.testing.assert_allclose(ev.entropy.detach().numpy(), 0.5 + half_log_2pi, rtol=1e-6)


def test_gpus_split_the_batch_and_roles_pick_the_device(tmp_path, slept):
    p = _policy(tmp_path, gpus={"rollout": 2, "trainer": 4})
    assert p.stage_cost_s("act", 10) == pytest.approx(0.01 + 0.01 * 5)
    assert p.stage_cost_s("evaluate", 8) == pytest.approx(0.02 * 2)
    assert p.stage_cost_s("evaluate", 8, grad=False) == pytest.approx(0.02 * 2 * 0.5)
    assert p.stage_cost_s("act", 8, role="trainer") == pytest.approx(0.01 + 0.01 * 2)  # bootstrap
    assert p.stage_cost_s("act", 0) == 0.0  # an empty batch costs nothing
    assert p.stage_cost_s("load", 0, role="rollout") == 0.05
    assert p.stage_cost_s("load", 0, role="trainer") == 0.0
    with pytest.raises(ValueError, match="unknown op"):
        p.stage_cost_s("backward", 4)
    t = _policy(tmp_path, role="trainer", bootstrap_factor=0.0)
    t.act({"state": np.zeros((4, 6), np.float32)})
    assert _requested(t) == [("d1", "act", 4, 0.0)]  # the trainer's bootstrap forward is free here
    assert slept == []


def test_weight_load_takes_sync_time_on_the_rollout_only(tmp_path, slept):
    p = _policy(tmp_path)
    sd = {k: v.clone() + 1 for k, v in p.state_dict().items()}
    p.load_state_dict(sd)
    assert torch.equal(p.mean, sd["mean"])
    assert _requested(p) == [("d0", "sync", 0, pytest.approx(0.05))]
    t = _policy(tmp_path, role="trainer")
    t.load_state_dict(sd)
    assert torch.equal(t.mean, sd["mean"]) and _requested(t) == []  # no hold at all


def test_bad_cost_models_are_refused_in_one_line(tmp_path):
    with pytest.raises(ValueError, match=r"^infer: unknown keys \['c_s'\]"):
        _policy(tmp_path, infer={"c_s": 1.0})
    with pytest.raises(ValueError, match=r"^train\.b_s: "):
        _policy(tmp_path, train={"b_s": -1.0})


def test_checkpoint_round_trip_through_the_plugin_name(tmp_path):
    p = _policy(tmp_path / "locks")
    with torch.no_grad():
        p.mean.add_(0.25)
    save_policy(p, tmp_path / "ckpt", "asyncvla.bench.emulated:EmulatedPolicy")
    q = load_policy(tmp_path / "ckpt")
    assert isinstance(q, EmulatedPolicy) and q.init_kwargs() == p.init_kwargs()
    assert torch.equal(q.mean, p.mean)


def _holders(tmp_path, names, ctx, meet=False, fresh=False):
    """Run one ``hold_and_count`` per name (processes for ``ctx`` a multiprocessing context,
    threads for ``ctx`` None); returns the most holders seen inside a hold at once."""
    run_id = uuid.uuid4().hex
    shared = mp if ctx is None else ctx
    inside, most = shared.Value("i", 0), shared.Value("i", 0)
    make_barrier = threading.Barrier if ctx is None else ctx.Barrier
    ready = make_barrier(len(names))
    together = make_barrier(len(names)) if meet else None
    start = threading.Thread if ctx is None else ctx.Process
    workers = [
        start(
            target=hold_and_count,
            args=(name, run_id, str(tmp_path), ready, inside, most, together),
            kwargs={"fresh": fresh},
        )
        for name in names
    ]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
        assert not w.is_alive()
        if ctx is not None:
            assert w.exitcode == 0
    assert inside.value == 0
    return most.value


@pytest.fixture(scope="module")
def spawn():
    return mp.get_context("spawn")


def test_same_device_name_excludes_two_processes(tmp_path, spawn):
    assert _holders(tmp_path, ["gpu", "gpu"], spawn) == 1


def test_different_device_names_are_held_at_once_by_two_processes(tmp_path, spawn):
    # both must be inside their holds together to pass the second barrier
    assert _holders(tmp_path, ["gpu0", "gpu1"], spawn, meet=True) == 2


@pytest.mark.parametrize("fresh", [False, True], ids=["one-device-object", "two-device-objects"])
def test_same_device_name_excludes_two_threads_of_one_process(tmp_path, fresh):
    assert _holders(tmp_path, ["x", "x"], None, fresh=fresh) == 1


def test_different_device_names_are_held_at_once_by_two_threads(tmp_path):
    assert _holders(tmp_path, ["x", "y"], None, meet=True) == 2


def test_runtime_role_hint_picks_the_device_and_is_not_saved(tmp_path, slept):
    p = _policy(tmp_path)
    p.on_placed("trainer")
    obs = {"state": np.zeros((2, 6), np.float32)}
    p.act(obs)  # the trainer's bootstrap forward: on the trainer's device
    assert [h["device"] for h in read_holds(tmp_path, p.run_id)] == ["d1"]
    assert p.init_kwargs()["role"] is None
