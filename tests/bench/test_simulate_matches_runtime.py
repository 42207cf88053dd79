"""The discrete-event model (``bench/simulate.py``) against the runtime it models, in structure.

Timing is the simulator's own business (``test_planner_validation`` measures it); what must not
drift apart silently is *what* is scheduled. For a few small configs the simulated run is held to
the runtime's own objects, built in this process without Ray:

* the config fields: every field of ``AsyncSwitches`` and ``RuntimeConfig`` changes the SimSpec
  (``spec_from_config`` reads it) or is listed in ``simulate.NOT_MODELLED`` with a reason;
* who steps and serves whom: ``placement.worker_specs`` (env worker of each manager, routes),
  ``RolloutWorker`` (its batcher and staleness bound), ``EnvWorker`` (lockstep, queue bound,
  ticket sizes);
* tickets: the segments the simulated trainer takes carry exactly the tickets a
  ``StalenessGate(cfg.global_batch())`` hands out;
* batches: the runtime's ``Trainer``, fed the simulated segments in the simulated arrival order,
  trains the same batches in the same order, with the same samples, staleness histogram and
  trainer passes (forward/backward, proximal recomputation, bootstrap forwards) per update.
"""

import uuid
from pathlib import Path
from typing import Any, get_args

import numpy as np
import pytest
import torch
from pydantic import BaseModel

from asyncvla.bench.emulated import EmulatedPolicy
from asyncvla.bench.profiles import load_profile, mode_config
from asyncvla.bench.simulate import NOT_MODELLED, Seg, run_model, spec_from_config
from asyncvla.config import AsyncSwitches, Config, RuntimeConfig, set_dotted
from asyncvla.runtime.env_worker import EnvWorker
from asyncvla.runtime.events import EventBuffer
from asyncvla.runtime.gate import StalenessGate, admissible
from asyncvla.runtime.placement import shard_plan, worker_specs
from asyncvla.runtime.rollout_worker import RolloutWorker
from asyncvla.runtime.trainer import Trainer, TrainerSpec
from asyncvla.runtime.types import Segment
from asyncvla.runtime.weights import PolicySpec

HERE = Path(__file__).resolve().parent
CHECK = load_profile(HERE / "planner_check.yaml")  # 2 managers of 2 envs, T 2, global batch 8
BALANCED = load_profile(HERE.parents[1] / "configs" / "bench" / "balanced.yaml")  # 4 x 4, T 4
UPDATES = 4

CONFIGS = {
    "sync": (CHECK, "sync-colocated", {}),
    "async-eta1-lockstep-static": (CHECK, "train-async", {}),
    "rollout-async": (CHECK, "rollout-async", {}),
    "streamer": (CHECK, "streamer", {}),
    "streamer-2-rollout-workers": (CHECK, "streamer", {"runtime.num_rollout_workers": 2}),
    # batches of 2 tickets (8 samples >= 6) in micro-batches of 3: leftovers carry over
    "streamer-partial-micro-batches": (
        CHECK,
        "streamer",
        {"runtime.global_batch_samples": 6, "algo.minibatch_size": 3},
    ),
    "async-eta2-recompute-2-epochs": (
        CHECK,
        "rollout-async",
        {"runtime.max_staleness": 2, "algo.proximal": "recompute", "algo.epochs": 2},
    ),
    "balanced-streamer-2-env-workers": (BALANCED, "streamer", {}),
}


def _config(profile, mode: str, overrides: dict[str, Any]) -> Config:
    tree = mode_config(profile, mode, UPDATES).model_dump(by_alias=True)
    for key, value in overrides.items():
        set_dotted(tree, key, value)
    return Config.model_validate(tree)


# -- the config fields ------------------------------------------------------------------------------
def _other_value(name: str, value: Any, annotation: Any) -> Any:
    """A valid value different from ``value`` for a field of that type."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return value * 2 + 1
    if isinstance(value, BaseModel):
        first = next(iter(type(value).model_fields))
        return value.model_copy(update={first: _other_value(first, getattr(value, first), None)})
    if name == "sharding":  # round robin -> an explicit map of the same routes
        return {0: [0], 1: [0], 2: [0], 3: [0]}
    if name == "placement":
        return next(v for v in get_args(annotation) if v != value)
    if value is None or isinstance(value, str):
        return "auto"
    raise AssertionError(f"runtime.{name}: no perturbation for {value!r}; extend _other_value")


def _consumed(base: Config, section: str, name: str) -> bool:
    """Does changing ``section.name`` change the SimSpec (or make spec_from_config refuse it)?"""
    model = getattr(base, section)
    field = type(model).model_fields[name]
    changed = base.model_copy(
        update={
            section: model.model_copy(
                update={name: _other_value(name, getattr(model, name), field.annotation)}
            )
        }
    )
    try:
        return spec_from_config(changed) != spec_from_config(base)
    except ValueError:  # refused: the simulator says it does not model that setting
        return True


def test_every_schedule_switch_and_runtime_field_is_modelled_or_listed():
    # every switch on, eta 1: a setting that matters anywhere matters here
    base = _config(BALANCED, "rollout-async", {"runtime.num_env_workers": 1, "runtime.max_staleness": 1})
    assert base.mode == "async" and base.async_.env and base.async_.rollout and base.async_.train
    fields = [("async_", "async", n) for n in AsyncSwitches.model_fields]
    fields += [("runtime", "runtime", n) for n in RuntimeConfig.model_fields]
    listed = dict(NOT_MODELLED)
    assert len(listed) == len(NOT_MODELLED) and all(reason.strip() for reason in listed.values())
    known = {f"{prefix}.{n}" for _, prefix, n in fields}
    assert set(listed) <= known, f"NOT_MODELLED names fields that do not exist: {set(listed) - known}"
    ignored, contradicted = [], []
    for section, prefix, name in fields:
        key = f"{prefix}.{name}"
        used = _consumed(base, section, name)
        if not used and key not in listed:
            ignored.append(key)
        if used and key in listed:
            contradicted.append(key)
    assert not ignored, f"the simulator ignores {ignored}: model them or list them in NOT_MODELLED"
    assert not contradicted, f"{contradicted} are listed in NOT_MODELLED but change the SimSpec"
    # the mode too: sync is every switch off and eta 0
    sync = spec_from_config(base.model_copy(update={"mode": "sync"}))
    assert (sync.lockstep, sync.static_batching, sync.streamer, sync.eta) == (True, True, False, 0)


def test_the_policy_kwargs_the_simulator_reads_are_the_emulated_policys():
    cfg = _config(CHECK, "streamer", {})
    read: set[str] = set()

    class Recording(dict):
        def __getitem__(self, key):
            read.add(key)
            return super().__getitem__(key)

        def get(self, key, default=None):
            read.add(key)
            return super().get(key, default)

    policy = cfg.policy.model_copy(update={"kwargs": Recording(cfg.policy.kwargs)})
    spec_from_config(cfg.model_copy(update={"policy": policy}))
    accepted = set(EmulatedPolicy(**{**cfg.policy.kwargs, "hold_log": False}).init_kwargs())
    assert read and read <= accepted, f"spec_from_config reads {sorted(read - accepted)}"


# -- the runtime's objects ---------------------------------------------------------------------------
def _free_policy(cfg: Config, lock_dir: Path) -> PolicySpec:
    """The run's emulated policy with every cost 0 (the runtime's objects run it for real here)."""
    kwargs = {
        **cfg.policy.kwargs,
        "infer": {},
        "train": {},
        "sync_s": 0.0,
        "run_id": uuid.uuid4().hex,
        "lock_dir": str(lock_dir),
        "hold_log": False,
    }
    return PolicySpec.of(EmulatedPolicy(chunk_size=cfg.policy.chunk_size, **kwargs), cfg.policy.name)


def _segment(seg: Seg, number: int, n: int, k: int, a: int) -> Segment:
    """A runtime Segment with the simulated segment's manager, ticket and behaviour versions."""
    t = len(seg.versions)
    zeros = np.zeros((t, n), np.float32)
    return Segment(
        manager_id=seg.manager,
        segment_id=number,
        env_ids=np.arange(seg.manager * n, (seg.manager + 1) * n, dtype=np.int64),
        obs={"state": np.zeros((t, n, 6), np.float32)},
        actions=np.zeros((t, n, k, a), np.float32),
        log_probs=np.zeros((t, n, k, a), np.float32),
        values=zeros,
        rewards=zeros.copy(),
        dones=np.zeros((t, n), bool),
        costs=zeros.copy(),
        versions=np.repeat(np.asarray(seg.versions, np.int64)[:, None], n, axis=1),
        valid=np.ones((t, n), bool),
        env_steps=seg.env_steps,
        bootstrap_value=None,
        bootstrap_obs={"state": np.zeros((n, 6), np.float32)},
        target_version=seg.target,
        ticket_id=seg.ticket_id,
        closes_batch=seg.closes,
        batch_tickets=seg.batch_tickets,
    )


class _Counting:
    """Counts the trainer policy's passes between updates, as the simulator counts them."""

    def __init__(self, policy: EmulatedPolicy) -> None:
        self.passes = dict.fromkeys(("grad", "nograd", "bootstrap"), 0)
        act, evaluate = policy.act, policy.evaluate

        def counted_act(*args, **kwargs):
            self.passes["bootstrap"] += 1
            return act(*args, **kwargs)

        def counted_evaluate(*args, **kwargs):
            self.passes["grad" if torch.is_grad_enabled() else "nograd"] += 1
            return evaluate(*args, **kwargs)

        policy.act, policy.evaluate = counted_act, counted_evaluate

    def take(self) -> dict[str, int]:
        out, self.passes = self.passes, dict.fromkeys(self.passes, 0)
        return out


@pytest.mark.parametrize("name", list(CONFIGS))
def test_simulated_run_has_the_runtimes_structure(name, tmp_path):
    cfg = _config(*CONFIGS[name])
    spec = spec_from_config(cfg)
    sw, eta = cfg.schedule()
    model = run_model(spec, UPDATES)
    pspec = _free_policy(cfg, tmp_path)

    # who steps and serves which manager, and how each rollout worker batches
    env_specs, rollout_specs = worker_specs(cfg)
    assert model.env_managers == [s.manager_ids for s in env_specs]
    routes = {k: w for s in env_specs for k, w in s.routes.items()}
    assert routes == {(m, 0): model.route(m) for m in range(cfg.env.num_managers)}
    assert shard_plan(cfg) == {m: [model.route(m)] for m in range(cfg.env.num_managers)}
    for rspec, sim_rollout in zip(rollout_specs, model.rollouts, strict=True):
        worker = RolloutWorker(cfg, rspec, pspec)
        b, sb = worker.batcher, sim_rollout.batcher
        assert (b.max_samples, b.timeout_s, b.static_shards) == (
            sb.max_samples,
            sb.timeout_s,
            sb.static_shards,
        )
        assert worker.max_staleness == spec.eta == eta
    for espec in env_specs:
        env_worker = EnvWorker(cfg, espec, transport=None)
        assert env_worker.lockstep == spec.lockstep == (not sw.env)
        assert env_worker.max_inflight == spec.queue_segments
        for m in env_worker.managers.values():
            assert m.ticket_samples() == spec.num_envs * spec.rollout_steps
            m.env.close()

    # tickets: the gate's, in ticket order, with the runtime's ticket sizes
    segs = sorted(model.arrivals, key=lambda s: s.ticket_id)
    assert [s.ticket_id for s in segs] == list(range(len(segs)))  # none lost, none twice
    gate = StalenessGate(cfg.global_batch())
    for s in segs:
        t = gate.acquire(spec.num_envs * spec.rollout_steps)
        assert (s.ticket_id, s.target, s.closes, s.batch_tickets) == (
            t.ticket_id,
            t.target_version,
            t.closes_batch,
            t.batch_tickets,
        )
    # every simulated decision is one the runtime may serve, and async uses its allowance
    gaps = {g for row in model.log for g in row["staleness_hist"]}
    assert gaps <= {g for g in range(eta + 2) if admissible(0, -g, eta)} == set(range(eta + 1))
    if eta and not spec.lockstep:
        assert max(gaps) >= 1

    # batches: the runtime's trainer, fed the simulated arrivals, trains the same ones
    events: list[dict[str, Any]] = []
    trainer = Trainer(cfg, TrainerSpec(), pspec, events=EventBuffer("trainer", events.extend))
    counting = _Counting(trainer.policy)
    k, a = trainer.policy.chunk_size, trainer.policy.action_dim
    passes = []
    for number, seg in enumerate(model.arrivals):
        for _ in range(trainer.add(_segment(seg, number, spec.num_envs, k, a))):
            passes.append(counting.take())
    trainer.events.flush()
    rows = trainer.pop_rows()
    assert len(rows) == trainer.updates_done == UPDATES == len(model.log)
    trained = [e["version"] for e in events if e["kind"] == "train"]
    assert trained == list(range(UPDATES))  # in version order, each batch once
    for row, sim_row, run_passes in zip(rows, model.log, passes, strict=True):
        assert row["train_samples"] == sim_row["samples"]
        assert row["rejected_samples"] == 0
        assert row["staleness_hist"] == {str(g): c for g, c in sim_row["staleness_hist"].items()}
        assert run_passes == sim_row["passes"], f"trainer passes differ in update {row['update']}"
    assert not [e for e in events if e["kind"] == "rejected"]
