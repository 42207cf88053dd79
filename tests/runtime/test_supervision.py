"""Supervision without Ray: lost tickets never stall the trainer, simulator failures are handled
by the env manager, the coordinator knows who holds which ticket."""

import numpy as np
import pytest
import torch

from asyncvla.builder import build_policy, probe_env
from asyncvla.config import load_config
from asyncvla.runtime.actors import Coordinator
from asyncvla.runtime.env_worker import EnvManager
from asyncvla.runtime.gate import StalenessGate
from asyncvla.runtime.trainer import Lost, Trainer, TrainerSpec
from asyncvla.runtime.weights import PolicySpec
from tests.runtime import faulty
from tests.runtime.segments import act_segments
from tests.runtime.test_quarantine import _run

FLAKY = "tests.runtime.faulty:FlakyEnv"
TINY = ["env.num_envs=4", "env.kwargs.family=reach", "train.rollout_steps=3", "algo.epochs=1"]
TINY += ["policy.kwargs.image_grid=4", "algo.minibatch_size=8", "train.updates=4"]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(autouse=True)
def _fresh_faults():
    faulty._RAISED.clear()  # each test injects its own failures


def _trainer_and_segments(n):
    cfg = load_config(None, TINY)
    torch.manual_seed(0)
    policy = build_policy(cfg, probe_env(cfg))
    segs = act_segments(policy, n, num_envs=4, rollout_steps=3)
    return Trainer(cfg, TrainerSpec(), PolicySpec.of(policy, cfg.policy.name)), segs


def _ticketed(seg, t):
    seg.ticket_id, seg.target_version = t.ticket_id, t.target_version
    seg.closes_batch, seg.batch_tickets = t.closes_batch, t.batch_tickets
    return seg


def test_lost_tickets_let_their_batches_train_and_are_counted():
    trainer, segs = _trainer_and_segments(3)
    gate = StalenessGate(batch_samples=36)  # 3 segments of 4 envs x 3 decisions per batch
    tickets = [gate.acquire(12) for _ in range(6)]
    assert [t.target_version for t in tickets] == [0, 0, 0, 1, 1, 1] and tickets[2].closes_batch
    # batch 0: tickets 0 and 1 arrive, the batch-closing ticket 2 is lost
    assert trainer.add(_ticketed(segs[0], tickets[0])) == 0
    assert trainer.add(_ticketed(segs[1], tickets[1])) == 0
    counts = {"env_steps": 17, "samples": 8, "episodes": 5}
    assert trainer.void(Lost([tickets[2]], [counts])) == 1
    assert trainer.version == 1 and trainer.trained_samples == 24
    # batch 1 loses every ticket: one update without samples, weights unchanged
    before = {k: v.clone() for k, v in trainer.policy.state_dict().items()}
    lost = Lost(tickets[3:], [{"env_steps": 4, "samples": 4, "episodes": 4}] * 3, restarts=2)
    assert trainer.void(lost) == 1
    assert trainer.version == 2 and trainer.trained_samples == 24
    after = trainer.policy.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    # a lost ticket that still arrives is discarded, not trained; one already here is not lost twice
    assert trainer.add(_ticketed(segs[2], tickets[2])) == 0
    assert trainer.void(Lost([tickets[0], tickets[2]], [{"samples": 99}] * 2, restarts=0)) == 0
    st = trainer.state
    assert (st["lost_segments"], st["lost_samples"], st["lost_env_steps"], st["lost_episodes"]) == (
        4,
        20,
        29,
        17,
    )
    assert st["worker_restarts"] == 3 and st["update"] == 2
    acc = trainer.accounting()
    assert acc["discarded_samples"] == 12 and acc["trained_samples"] == 24
    rows = trainer.pop_rows()
    assert [r["update"] for r in rows] == [1, 2] and [r["train_samples"] for r in rows] == [24, 0]
    assert rows[-1]["lost_segments"] == 4 and rows[-1]["worker_restarts"] == 3


def test_a_failed_env_loses_only_its_episode():
    # env 1's simulator fails at the manager's 3rd step: its decisions 0, 1, 2 are dropped
    m = EnvManager(0, FLAKY, 3, {"family": "reach", "fail_env": {3: 1}}, rollout_steps=4, seed=0)
    (seg,), seen = _run(m, 4)
    assert seg.valid[:, 1].tolist() == [False, False, False, True]
    assert seg.valid[:, [0, 2]].all() and m.env_errors == 1 and seg.quarantined == 3
    assert seg.dones[2, 1] and seg.episodes["return"] == []
    assert not np.array_equal(seen[3]["image"][1], seen[2]["image"][1])  # env 1 restarted
    m.shutdown()


def test_a_simulator_that_raises_is_rebuilt_and_the_running_episodes_dropped():
    m = EnvManager(0, FLAKY, 3, {"family": "reach", "raise_at": [2]}, rollout_steps=4, seed=0)
    first = m.env
    (seg,), _ = _run(m, 4)
    assert m.env is not first and m.env_errors == 1 and "step failed" in m.last_env_error
    assert seg.valid.tolist() == [[False] * 3, [False] * 3, [True] * 3, [True] * 3]
    assert seg.quarantined == 6 and seg.dones[1].all() and int(seg.env_steps) > 0
    m.shutdown()


def test_a_reset_that_raises_rebuilds_the_simulator():
    # episodes of 2 decisions (chunks of 2, 4 steps): the first partial reset raises
    kw = {"family": "reach", "reset_raise_at": [2], "max_episode_steps": 4}
    m = EnvManager(0, FLAKY, 3, kw, rollout_steps=4, seed=1)
    first = m.env
    (seg,), seen = _run(m, 4)
    assert m.env is not first and m.env_errors == 1 and "reset" in m.last_env_error
    assert seg.valid.all() and len(seg.episodes["return"]) == 6
    assert all(np.isfinite(o["state"]).all() for o in seen)
    m.shutdown()


def test_too_many_simulator_failures_fail_the_manager():
    m = EnvManager(
        0,
        "tests.runtime.faulty:FailingEnv",
        2,
        {"family": "reach", "fail_after": 1},
        3,
        seed=0,
        max_env_errors=2,
    )
    _run(m, 4)  # steps 2 and 4 fail and are handled (each rebuilt env fails at its 2nd step)
    assert m.env_errors == 2
    with pytest.raises(RuntimeError, match="failed 3x within 600 s.*simulator crashed"):
        _run(m, 2)
    m.shutdown()


def test_the_coordinator_releases_a_dead_holders_open_tickets_with_their_counts():
    c = Coordinator(batch_samples=8, start_version=0, events_path=None)
    a = c.acquire([4, 4], holder="env0")  # batch 0
    b = c.acquire([4], holder="env1")  # batch 1
    later = c.acquire([4], holder="env0")  # batch 1
    c.report("env0", {0: {"ticket": later[0].ticket_id, "samples": 3, "env_steps_total": 50}})
    c.report("env0", {1: {"ticket": a[1].ticket_id, "samples": 4, "env_steps_total": 20}})
    c.trained(1)  # batch 0 is trained: its tickets arrived
    tickets, counts, collected = c.release("env0")
    assert [t.ticket_id for t in tickets] == [later[0].ticket_id]
    assert counts[0]["samples"] == 3 and collected == 70
    assert c.release("env0") == ([], [], 0)
    assert [t.ticket_id for t in c.release("env1")[0]] == [b[0].ticket_id]
