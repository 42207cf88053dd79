"""The three workers as plain classes, without Ray: EnvWorker, RolloutWorker, Trainer."""

import collections
import json

import numpy as np
import pytest
import torch

from asyncvla.builder import build_policy
from asyncvla.config import load_config
from asyncvla.runtime.env_worker import EnvWorker
from asyncvla.runtime.events import EventBuffer
from asyncvla.runtime.gate import StalenessGate
from asyncvla.runtime.placement import worker_specs
from asyncvla.runtime.rollout_worker import RolloutSpec, RolloutWorker
from asyncvla.runtime.trainer import Trainer, TrainerSpec
from asyncvla.runtime.types import ObsRequest
from asyncvla.runtime.weights import PolicySpec
from tests.runtime.local import LocalTransport
from tests.runtime.segments import act_segments

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = [
    "mode=async",
    "env.num_envs=4",
    "env.num_managers=2",
    "env.kwargs.family=reach",
    "train.rollout_steps=3",
    "train.updates=4",
    "algo.minibatch_size=8",
    "algo.epochs=1",
    "runtime.max_batch_samples=4",
    "policy.kwargs.image_grid=4",
    "policy.kwargs.size=nano",
]


def _setup(overrides=()):
    cfg = load_config(None, [*TINY, *overrides])
    torch.manual_seed(0)
    return cfg, PolicySpec.of(build_policy(cfg), cfg.policy.name)


class Recorder(EventBuffer):
    def __init__(self, name="w"):
        self.got = []
        super().__init__(name, self.got.extend)

    def kinds(self):
        self.flush()
        return [e["kind"] for e in self.got]


def test_env_worker_rollout_worker_and_trainer_run_a_schedule_in_one_process():
    cfg, pspec = _setup()
    updates = 3
    (env_spec,), (rollout_spec,) = worker_specs(cfg)
    assert env_spec.manager_ids == [0, 1] and env_spec.routes == {(0, 0): 0, (1, 0): 0}
    transport = LocalTransport(
        StalenessGate(cfg.global_batch()), RolloutWorker(cfg, rollout_spec, pspec), updates
    )
    transport.trainer = Trainer(cfg, TrainerSpec(), pspec, publish=transport.publish)
    worker = EnvWorker(cfg, env_spec, transport)
    stats = worker.run(transport.stop)
    trainer = transport.trainer
    assert trainer.updates_done == updates
    assert trainer.trained_samples == updates * 2 * 4 * 3
    # every shipped segment reached the trainer exactly once (trained or left over)
    assert collections.Counter(stats["shipped"]) == collections.Counter(trainer.accounting()["received"])
    # tickets: two per global batch (one segment of each manager), versions in order
    targets = [t.target_version for t in transport.tickets]
    assert targets == sorted(targets) and collections.Counter(targets)[0] == 2
    assert [t.closes_batch for t in transport.tickets[:2]] == [False, True]
    assert transport.rollout.adopted == [1, 2, 3]
    rows = trainer.pop_rows()
    assert [r["update"] for r in rows] == [1, 2, 3]
    assert all(r["staleness_max"] <= 1 for r in rows)


def _segments(cfg, pspec, n=4):
    """Four segments of T decisions of one manager, acted at version 0."""
    segs = act_segments(pspec.build("rollout"), n)
    # two global batches of two tickets each: (ticket, target version, closes, batch tickets)
    for seg, (tid, u, closes, k) in zip(
        segs, [(0, 0, False, 0), (1, 0, True, 2), (2, 1, False, 0), (3, 1, True, 2)], strict=True
    ):
        seg.ticket_id, seg.target_version, seg.closes_batch, seg.batch_tickets = tid, u, closes, k
    return segs


def test_trainer_trains_a_batch_once_all_its_tickets_arrived_whatever_the_order():
    cfg, pspec = _setup()
    segs = _segments(cfg, pspec)
    ordered = Trainer(cfg, TrainerSpec(), pspec)
    assert [ordered.add(s) for s in segs] == [0, 1, 0, 1]
    shuffled = Trainer(cfg, TrainerSpec(), pspec)
    # batch 1 arrives first, batch 0 last and backwards: nothing trains until ticket 0 is in
    assert [shuffled.add(segs[i]) for i in (3, 2, 1, 0)] == [0, 0, 0, 2]
    assert shuffled.version == ordered.version == 2
    for (k, a), b in zip(
        ordered.policy.state_dict().items(), shuffled.policy.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), k
    a, b = ordered.pop_rows(), shuffled.pop_rows()
    assert [r["loss_policy"] for r in a] == [r["loss_policy"] for r in b]


def test_trainer_checkpoints_atomically_and_a_resumed_trainer_continues_the_schedule(tmp_path):
    cfg, pspec = _setup(["train.checkpoint_every=1", "algo.lr=1e-3"])
    segs = _segments(cfg, pspec)
    first = Trainer(cfg, TrainerSpec(run_path=str(tmp_path)), pspec)
    for s in segs[:2]:
        first.add(s)
    ckpts = tmp_path / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["latest.json", "update_00001"]  # no temporaries
    assert json.loads((ckpts / "latest.json").read_text()) == {"path": "update_00001"}
    d = ckpts / "update_00001"
    state = json.loads((d / "state.json").read_text())
    assert state["update"] == 1 and state["env_steps"] == segs[0].env_steps + segs[1].env_steps
    assert first.pop_rows()[0]["lr"] == pytest.approx(1e-3)  # update 1 ran at the full rate
    assert first.learner.lr == pytest.approx(1e-3 * (1 - 1 / 4))  # linear decay over 4 updates
    resumed = Trainer(
        cfg, TrainerSpec(str(tmp_path), state, str(d)), PolicySpec.of(_load(d), cfg.policy.name)
    )
    assert resumed.learner.lr == first.learner.lr
    assert resumed.learner.scheduler.last_epoch == 1
    for t in (first, resumed):
        t.learner.rng = np.random.default_rng(3)
        for s in segs[2:]:
            t.add(s)
    assert first.state["update"] == resumed.state["update"] == 2
    for (k, a), b in zip(
        first.policy.state_dict().items(), resumed.policy.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), k


def _load(d):
    from asyncvla.policies import load_policy

    return load_policy(d)


def test_trainer_accounts_for_segments_it_never_trained():
    cfg, pspec = _setup()
    segs = _segments(cfg, pspec)
    t = Trainer(cfg, TrainerSpec(), pspec)
    t.add(segs[0])  # batch 0 incomplete
    t.add(segs[2])  # a later batch, buffered
    t.finish()
    t.keep_leftover(segs[1])  # arrived after the run
    acc = t.accounting()
    assert acc["trained_samples"] == 0 and t.updates_done == 0
    assert acc["leftover_samples"] == 3 * 12
    assert len(acc["received"]) == 3


def _request(manager, target, n=4, shard=0, request_id=1):
    obs = {"image": np.zeros((n, 32, 32, 3), np.uint8), "state": np.zeros((n, 6), np.float32)}
    obs["instruction"] = ["touch the red ball"] * n
    return ObsRequest(manager, request_id, np.arange(n) + 10 * manager, obs, shard, target)


def test_rollout_worker_holds_requests_beyond_the_staleness_bound_until_new_weights():
    cfg, pspec = _setup(["runtime.max_staleness=1", "env.kwargs.image_size=32"])
    events = Recorder()
    w = RolloutWorker(cfg, RolloutSpec(0), pspec, events)
    w.submit(_request(0, target=2), now=0.0)  # u = 2 > v + eta = 0 + 1: held
    assert w.next_batch(now=10.0) is None
    assert events.kinds() == ["throttle_on"]
    sd = w.policy.sync_state_dict()
    w.set_weights(1, sd)
    batch = w.next_batch(now=10.0)  # u = 2 <= 1 + 1, and 4 samples fill the batch
    assert [b.request.target_version for b in batch] == [2]
    (reply,) = w.run_batch(batch)
    assert reply.version == 1 and reply.actions.shape[0] == 4
    assert events.kinds()[1:] == ["throttle_off", "batch_formed", "batch_inferred"]


def test_rollout_worker_keeps_only_the_newest_offer():
    cfg, pspec = _setup()
    w = RolloutWorker(cfg, RolloutSpec(0), pspec)
    assert w.offer(2, "w2", 0.0) and not w.offer(1, "w1", 0.0) and w.offer(3, "w3", 0.0)
    assert not w.offer(3, "again", 0.0)
    assert w.take_offer().handle == "w3" and w.take_offer() is None
    assert not w.offer(0, "old", 0.0)  # not newer than the worker's own version


def test_static_batching_waits_for_every_shard_and_orders_the_batch_by_shard():
    cfg, pspec = _setup(["mode=sync", "env.kwargs.image_size=32", "runtime.max_batch_samples=64"])
    _, (spec,) = worker_specs(cfg)
    assert spec.static_shards == [(0, 0), (1, 0)]
    w = RolloutWorker(cfg, spec, pspec)
    w.submit(_request(1, target=0), now=0.0)
    assert w.next_batch(now=100.0) is None  # manager 0 has not asked yet
    w.submit(_request(0, target=0), now=1.0)
    batch = w.next_batch(now=1.0)
    assert [b.request.manager_id for b in batch] == [0, 1]


def test_env_worker_in_lockstep_steps_all_managers_only_when_every_reply_is_in():
    cfg, pspec = _setup(["mode=sync"])
    (spec,), _ = worker_specs(cfg)

    class Partial(LocalTransport):
        """Answers requests, but holds manager 1's first reply back for a few waits."""

        def __init__(self, *a):
            super().__init__(*a)
            self.waits = 0

        def infer(self, rollout, request):
            return (request.manager_id, super().infer(rollout, request))

        def wait(self, handles, num_returns, timeout):
            self.waits += 1
            ready = [h for h in handles if h[0] == 0 or self.waits > 3]
            if len(ready) < num_returns:
                return ready[:num_returns]
            self.stop.set()  # one step of both managers is enough
            return ready[:num_returns]

        def get(self, handles):
            return [h[1].value for h in handles]

    rollout = RolloutWorker(cfg.model_copy(update={"mode": "async"}), RolloutSpec(0), pspec)
    transport = Partial(StalenessGate(cfg.global_batch()), rollout, 1)
    transport.trainer = Trainer(cfg, TrainerSpec(), pspec, publish=transport.publish)
    worker = EnvWorker(cfg, spec, transport)
    worker.run(transport.stop)
    assert transport.waits == 4  # three waits came back short: no manager stepped
    assert [m.segment_len for m in worker.managers.values()] == [1, 1]


def test_worker_specs_route_every_manager_and_split_shards():
    cfg = load_config(
        None,
        [
            *TINY,
            "env.num_managers=3",
            "runtime.num_env_workers=2",
            "runtime.num_rollout_workers=2",
            "runtime.sharding={0: [0, 1], 1: [1], 2: [0]}",
        ],
    )
    envs, rollouts = worker_specs(cfg, start_update=7)
    assert [e.manager_ids for e in envs] == [[0, 2], [1]]
    assert envs[0].routes == {(0, 0): 0, (0, 1): 1, (2, 0): 0} and envs[1].routes == {(1, 0): 1}
    assert all(s.start_update == 7 for s in [*envs, *rollouts])
    assert [r.static_shards for r in rollouts] == [None, None]  # async: dynamic batching


def test_an_unknown_event_kind_is_refused():
    with pytest.raises(ValueError, match="unknown event kind 'bogus'"):
        Recorder().emit("bogus")
