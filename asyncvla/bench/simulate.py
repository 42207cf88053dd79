"""Discrete-event model of the runtime's scheduling policies (the planner's engine).

The same policies as ``asyncvla/runtime``, with every compute replaced by its cost model:

* **env workers** (``EnvWorker.run``): each steps its managers one after another; a manager
  waits only for its own reply (``lockstep=False``) or the worker waits for all of its managers'
  replies (sync / ``async.env: false``). A step of n envs x K actions costs the tabletop latency
  draws (``LatencyEmulator.delay_s``, the very sampler the env uses). A segment (T decisions) takes
  a staleness ticket from the one ``StalenessGate`` before its first decision and is shipped to
  the trainer's bounded queue; a worker keeps at most ``queue_segments`` puts outstanding.
* **rollout workers** (``RolloutWorker.next_batch``): the runtime's own ``DynamicBatcher`` (B_max /
  T_max, or static batching over the routed shards) over the requests that the staleness throttle
  admits (``gate.admissible``: ticket u is served only if u <= v + eta); newest offered weights
  are adopted (``sync_s`` on the rollout device) before a batch; a batch of B costs
  ``infer(B / gpus)`` on the rollout device.
* **trainer** (``Trainer.add`` / ``Learner``): takes segments from a FIFO queue of capacity
  ``queue_segments``, trains global batches in version order: per segment a bootstrap forward
  (``bootstrap_factor * infer(n / gpus)``); non-streaming: proximal recomputation of the stale
  samples (``nograd_factor * train``) then ``epochs`` passes of minibatches; streaming: the first
  epoch's micro-batches as samples arrive, the rest at the end; then a new version is published.
* **devices** are FIFO mutexes (``simpy.Resource(capacity=1)``): colocated roles name the same
  device and take turns (as the emulated policy's flock); a trainer spanning several devices takes
  them all (hybrid), in sorted order so overlapping sets never deadlock.

The kernel is SimPy: each role is a ``simpy`` process; the trainer's queue is a
``simpy.Store(queue_segments)``; the run stops when the trainer has published ``updates`` versions.
Events at the same instant run in scheduling order, so a run is deterministic given its draws.

Not modelled: Ray messaging and Python overheads (``overhead_s`` adds a fixed delay per request
round trip), the env's own compute, episodes ending inside a chunk (K env steps per decision), and
the run settings in ``NOT_MODELLED``. ``tests/bench/test_simulate_matches_runtime.py`` holds the
model to the runtime: every schedule switch and runtime setting is read by ``spec_from_config``
or listed there, and the structure of a run (tickets, routes, batches, passes) is the runtime's.
"""

from __future__ import annotations

import math
from collections.abc import Generator
from dataclasses import dataclass, field, replace
from typing import Any

import simpy
from simpy import Event

from asyncvla.envs.wrappers import LatencyEmulator
from asyncvla.runtime.batching import DynamicBatcher, Waiting
from asyncvla.runtime.costs import CostModel
from asyncvla.runtime.gate import StalenessGate, admissible

Proc = Generator[Event, Any, Any]

NOT_MODELLED: tuple[tuple[str, str], ...] = (
    (
        "runtime.auto_tune",
        "applied before the run: it sets runtime.max_batch_samples and runtime.batch_timeout_ms, "
        "which are modelled",
    ),
    (
        "runtime.placement",
        "the emulated policy's devices and gpus kwargs name the devices each role holds; the "
        "placement only divides the CPU cores among the workers (runtime.placement.plan)",
    ),
    ("runtime.env", "Ray resources and torch threads of the env workers: CPU placement, no schedule"),
    ("runtime.rollout", "Ray resources and torch threads of the rollout workers: CPU placement"),
    ("runtime.trainer", "Ray resources and torch threads of the trainer: CPU placement"),
    ("runtime.passive_threads", "how idle OpenMP threads wait: CPU overhead, no schedule"),
    ("runtime.start_timeout_s", "a start-up watchdog: no schedule"),
    ("runtime.stall_timeout_s", "a stall watchdog: no schedule"),
    ("runtime.max_restarts", "supervision after a worker fails: the simulated workers do not fail"),
    ("runtime.restart_window_s", "supervision after a worker fails: the simulated workers do not fail"),
    ("runtime.max_env_errors", "simulator errors: the simulated envs do not fail"),
    ("runtime.deterministic", "kernel selection on GPUs: no schedule"),
    ("runtime.record_schedule", "a few event fields and a weights digest per update: no schedule"),
    ("runtime.address", "which Ray cluster runs the workers: no schedule"),
    (
        "runtime.auto_profile",
        "read only to resolve placement / mode auto before the run (runtime.autoplace); the "
        "resolved config is what runs and what is simulated",
    ),
)
"""Config fields (``async.*``, ``runtime.*``) that ``spec_from_config`` does not read, each with
the reason the schedule does not depend on it; every other field of ``AsyncSwitches`` and
``RuntimeConfig`` changes the SimSpec (or is refused: ``runtime.sharding`` other than round
robin)."""


@dataclass(frozen=True)
class SimSpec:
    """Everything the schedule depends on (seconds of the machine simulated)."""

    num_managers: int
    num_envs: int
    num_env_workers: int
    rollout_steps: int
    chunk_size: int
    latency: dict[str, Any]
    """Tabletop latency dict as the env gets it (per env and action step, already scaled)."""
    infer: CostModel
    train: CostModel
    rollout_devices: tuple[str, ...]
    """One device name per rollout worker."""
    rollout_gpus: float
    trainer_devices: tuple[str, ...]
    trainer_gpus: float
    lockstep: bool
    static_batching: bool
    eta: int
    streamer: bool
    max_batch_samples: int
    batch_timeout_s: float
    queue_segments: int
    global_batch: int
    micro_batch: int
    epochs: int = 1
    recompute_proximal: bool = False
    nograd_factor: float = 1.0 / 3.0
    bootstrap_factor: float = 1.0
    sync_s: float = 0.0
    overhead_s: float = 0.0
    bootstrap_data_parallel: bool = False
    """False (the runtime): one bootstrap forward per segment, ``infer(n / trainer_gpus)``, in
    turn. True (the planner at scale): each trainer GPU bootstraps its share of the segments,
    ``infer(n) / trainer_gpus`` per segment on average."""
    env_seed: int = 0
    """The env's ``seed`` kwarg: manager m draws latencies as the runtime's env does, from
    ``LatencyEmulator(latency, seed=env_seed + m)`` (``env_worker.manager_env_kwargs``)."""
    seed: int = 0
    """Varies the draws (0: exactly the runtime's latency streams)."""
    meta: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def num_rollout_workers(self) -> int:
        return len(self.rollout_devices)


def spec_from_config(cfg: Any, **extra: Any) -> SimSpec:
    """The SimSpec of a run Config with the emulated policy (``asyncvla.bench.emulated``)."""
    pol = cfg.policy.kwargs
    sw, eta = cfg.schedule()
    rt = cfg.runtime
    if isinstance(rt.sharding, dict):
        raise ValueError("the planner models round-robin sharding only")
    return SimSpec(
        num_managers=cfg.env.num_managers,
        num_envs=cfg.env.num_envs,
        num_env_workers=rt.num_env_workers,
        rollout_steps=cfg.train.rollout_steps,
        chunk_size=cfg.policy.chunk_size,
        latency=dict(cfg.env.kwargs.get("latency") or {}),
        infer=CostModel.from_dict(pol.get("infer"), "policy.kwargs.infer"),
        train=CostModel.from_dict(pol.get("train"), "policy.kwargs.train"),
        rollout_devices=(pol["devices"]["rollout"],) * rt.num_rollout_workers,
        rollout_gpus=float(pol["gpus"]["rollout"]),
        trainer_devices=(pol["devices"]["trainer"],),
        trainer_gpus=float(pol["gpus"]["trainer"]),
        lockstep=not sw.env,
        static_batching=not sw.rollout,
        eta=eta,
        streamer=sw.streamer,
        max_batch_samples=rt.max_batch_samples,
        batch_timeout_s=rt.batch_timeout_ms / 1000.0,
        queue_segments=rt.queue_segments,
        global_batch=cfg.global_batch(),
        micro_batch=cfg.algo.minibatch_size,
        epochs=cfg.algo.epochs,
        recompute_proximal=cfg.algo.off_policy != "none" and cfg.algo.proximal == "recompute",
        nograd_factor=float(pol.get("nograd_factor", 1.0 / 3.0)),
        bootstrap_factor=float(pol.get("bootstrap_factor", 1.0)),
        sync_s=float(pol.get("sync_s", 0.0)),
        env_seed=int(cfg.env.kwargs.get("seed", 0)),
        **extra,
    )


@dataclass
class Seg:
    manager: int
    ticket_id: int
    target: int
    closes: bool
    batch_tickets: int
    versions: list[int]
    """The behaviour version of each of the segment's T decisions."""
    samples: int
    env_steps: int


class _Model:
    def __init__(self, spec: SimSpec, updates: int) -> None:
        self.s = spec
        self.sim = simpy.Environment()
        self.updates = updates
        self.gate = StalenessGate(spec.global_batch)
        names = sorted({*spec.rollout_devices, *spec.trainer_devices})
        self.dev = {n: simpy.Resource(self.sim, capacity=1) for n in names}
        self.busy_s = dict.fromkeys(names, 0.0)
        self.queue = simpy.Store(self.sim, capacity=spec.queue_segments)
        self.rollouts = [_Rollout(self, r) for r in range(spec.num_rollout_workers)]
        self.env_managers = [
            [m for m in range(spec.num_managers) if m % spec.num_env_workers == w]
            for w in range(spec.num_env_workers)
        ]
        """Env worker -> the managers it steps (``placement.worker_specs``: manager m on worker m mod W)."""
        self.log: list[dict[str, Any]] = []
        self.arrivals: list[Seg] = []
        """Every segment the trainer took from its queue, in that order."""
        self.decisions = 0
        self.replied: dict[Event, int] = {}
        """Reply event -> order in which it fired (a worker steps first the manager answered first)."""
        self._replies = 0

    def run(self, until: float) -> None:
        sim = self.sim
        for managers in self.env_managers:
            sim.process(self._env_worker(managers))
        for r in self.rollouts:
            sim.process(r.loop())
        trainer = sim.process(self._trainer())
        sim.run(until=trainer | sim.timeout(until))

    def hold(self, devices: list[str], seconds: float) -> Proc:
        """Take every device (in sorted order: no deadlock), keep them ``seconds``, release them.

        A holder of several devices waits until all are handed over (in release order) before it
        goes on; otherwise its next request would hand its first device over ahead of the rest."""
        taken = []
        for d in sorted(devices):
            req = self.dev[d].request()
            yield req
            taken.append((d, req, self.sim.now))
        yield self.sim.timeout(max(0.0, seconds))
        released = []
        for d, req, since in reversed(taken):
            self.busy_s[d] += self.sim.now - since
            released.append(self.dev[d].release(req))
        if len(released) > 1:
            yield self.sim.all_of(released)

    def route(self, manager: int) -> int:
        """The rollout worker serving ``manager`` (round robin, ``placement.shard_plan``)."""
        return manager % self.s.num_rollout_workers

    # -- env workers ---------------------------------------------------------------------------------
    def _env_worker(self, managers: list[int]) -> Proc:
        s, sim = self.s, self.sim
        lat = {m: LatencyEmulator(s.latency, seed=s.env_seed + m + 100_003 * s.seed) for m in managers}
        active = [s.num_envs] * s.chunk_size
        ticket: dict[int, Any] = {}
        versions: dict[int, list[int]] = {m: [] for m in managers}
        pending: dict[int, Event] = {}
        puts: list[Event] = []

        def issue(m: int) -> None:
            if m not in ticket:
                ticket[m] = self.gate.acquire(s.num_envs * s.rollout_steps)
            pending[m] = self.rollouts[self.route(m)].request(m, s.num_envs, ticket[m].target_version)

        for m in managers:
            issue(m)
        while True:
            if s.lockstep:
                yield sim.all_of(list(pending.values()))
                done = [m for m in managers if m in pending]
            else:
                fired = yield sim.any_of(list(pending.values()))
                first = min(fired, key=lambda e: self.replied[e])
                done = [next(m for m, e in pending.items() if e is first)]
            for m in done:
                reply = pending.pop(m)
                del self.replied[reply]
                versions[m].append(reply.value)
                yield sim.timeout(max(0.0, lat[m].delay_s(active)))
                self.decisions += s.num_envs
                if len(versions[m]) == s.rollout_steps:
                    t = ticket.pop(m)
                    seg = Seg(
                        m,
                        t.ticket_id,
                        t.target_version,
                        t.closes_batch,
                        t.batch_tickets,
                        versions[m],
                        s.num_envs * s.rollout_steps,
                        s.num_envs * s.rollout_steps * s.chunk_size,
                    )
                    versions[m] = []
                    puts.append(self.queue.put(seg))
                    puts = [p for p in puts if not p.triggered]
                    if len(puts) > s.queue_segments:
                        yield sim.all_of(puts[: len(puts) - s.queue_segments])
            for m in done:
                issue(m)

    # -- trainer -------------------------------------------------------------------------------------
    def _t(self, seconds: float) -> Proc:
        return self.hold(list(self.s.trainer_devices), seconds)

    def _train_cost(self, samples: int, grad: bool = True) -> float:
        c = self.s.train(samples / self.s.trainer_gpus)
        return c if grad else c * self.s.nograd_factor

    def _pass(self, samples: int, grad: bool = True) -> Proc:
        """One forward (and backward, ``grad``) over ``samples`` on the trainer's devices."""
        self.passes["grad" if grad else "nograd"] += 1
        yield from self._t(self._train_cost(samples, grad))

    def _minibatches(self, total: int) -> Proc:
        mb = self.s.micro_batch
        for start in range(0, total, mb):
            yield from self._pass(min(mb, total - start))

    def _bootstrap(self, seconds: float) -> Proc:
        self.passes["bootstrap"] += 1
        if seconds:
            yield from self._t(seconds)

    def _trainer(self) -> Proc:
        s, sim = self.s, self.sim
        version, got, expected, done = 0, 0, None, 0
        buffered: dict[int, list[Seg]] = {}
        segs: list[Seg] = []
        pending = 0
        if s.bootstrap_data_parallel:
            boot = s.bootstrap_factor * s.infer(s.num_envs) / s.trainer_gpus
        else:
            boot = s.bootstrap_factor * s.infer(s.num_envs / s.trainer_gpus)
        self.passes = dict.fromkeys(("grad", "nograd", "bootstrap"), 0)
        while done < self.updates:
            seg = yield self.queue.get()
            self.arrivals.append(seg)
            buffered.setdefault(seg.target, []).append(seg)
            while buffered.get(version):
                seg = buffered[version].pop(0)
                got += 1
                if seg.closes:
                    expected = seg.batch_tickets
                segs.append(seg)
                if s.streamer:
                    yield from self._bootstrap(boot)
                    pending += seg.samples
                    while pending >= s.micro_batch:
                        yield from self._pass(s.micro_batch)
                        pending -= s.micro_batch
                if expected is None or got != expected:
                    continue
                total = sum(x.samples for x in segs)
                if s.streamer:
                    if pending:
                        yield from self._pass(pending)
                    for _ in range(s.epochs - 1):
                        yield from self._minibatches(total)
                else:
                    for _ in segs:
                        yield from self._bootstrap(boot)
                    if s.recompute_proximal:
                        stale = sum(s.num_envs for x in segs for v in x.versions if v != version)
                        for start in range(0, stale, s.micro_batch):
                            yield from self._pass(min(s.micro_batch, stale - start), grad=False)
                    for _ in range(s.epochs):
                        yield from self._minibatches(total)
                gaps: dict[int, int] = {}
                for x in segs:
                    for v in x.versions:
                        gaps[version - v] = gaps.get(version - v, 0) + s.num_envs
                version += 1
                done += 1
                self.log.append(
                    {
                        "t": sim.now,
                        "version": version,
                        "samples": total,
                        "env_steps": sum(x.env_steps for x in segs),
                        "staleness": sum(g * c for g, c in gaps.items()) / max(total, 1),
                        "staleness_hist": dict(sorted(gaps.items())),
                        "tickets": [x.ticket_id for x in segs],
                        "passes": dict(self.passes),
                    }
                )
                self.passes = dict.fromkeys(self.passes, 0)
                if done < self.updates:  # after the last one the run stops: nothing to wake
                    for r in self.rollouts:
                        r.offer(version)
                segs, got, expected, pending = [], 0, None, 0


class _Rollout:
    def __init__(self, model: _Model, worker: int) -> None:
        s = model.s
        self.m = model
        self.sim = model.sim
        self.device = s.rollout_devices[worker]
        shards = {(m, 0) for m in range(s.num_managers) if m % s.num_rollout_workers == worker}
        self.batcher = DynamicBatcher(
            s.max_batch_samples, s.batch_timeout_s, shards if s.static_batching else None
        )
        self.version = 0
        self.offered: int | None = None
        self.wake = model.sim.event()
        self.batch_sizes: list[int] = []

    def request(self, manager: int, samples: int, target: int) -> Event:
        reply = self.sim.event()
        half = self.m.s.overhead_s / 2

        def arrive(_: Event) -> None:
            self.batcher.add(Waiting((manager, target), samples, (manager, 0), self.sim.now, reply))
            self._wake()

        self.sim.timeout(half).callbacks.append(arrive)
        return reply

    def _reply(self, token: Event, version: int) -> None:
        self.m.replied[token] = self.m._replies
        self.m._replies += 1
        token.succeed(version)

    def _wake(self) -> None:
        if not self.wake.triggered:
            self.wake.succeed()

    def offer(self, version: int) -> None:
        if version > self.version and (self.offered is None or version > self.offered):
            self.offered = version
            self._wake()

    def loop(self) -> Proc:
        s, sim = self.m.s, self.sim
        while True:
            self.wake = sim.event()
            if self.offered is not None:
                v, self.offered = self.offered, None
                if s.sync_s:
                    yield from self.m.hold([self.device], s.sync_s)
                self.version = v
            v = self.version
            adm = [w for w in self.batcher.waiting if admissible(w.request[1], v, s.eta)]
            ready, _ = self.batcher.ready(sim.now, adm)
            if ready:
                batch = self.batcher.take(adm)
                n = sum(w.samples for w in batch)
                self.batch_sizes.append(n)
                yield from self.m.hold([self.device], s.infer(n / s.rollout_gpus))
                for w in batch:
                    reply = sim.timeout(s.overhead_s / 2, v)
                    reply.callbacks.append(lambda e, token=w.token: self._reply(token, e.value))
                continue
            deadline = self.batcher.deadline()
            waits = [self.wake]
            if deadline is not None:
                waits.append(sim.timeout(max(0.0, deadline - sim.now + 1e-9)))  # float rounding
            yield sim.any_of(waits)


def run_model(spec: SimSpec, updates: int, max_sim_s: float = 1e7) -> _Model:
    """The model after ``updates`` trained batches: its per-update ``log`` (time, samples, ticket
    ids trained, staleness histogram, trainer ``passes``), the segments the trainer took in order
    (``arrivals``), who steps and serves which manager (``env_managers``, ``route``) and each
    rollout worker's batcher (``rollouts[r].batcher``)."""
    model = _Model(spec, updates)
    model.run(max_sim_s)
    if len(model.log) < updates:
        raise RuntimeError(f"simulation stalled after {len(model.log)} of {updates} updates")
    return model


def simulate(spec: SimSpec, updates: int = 8, warmup: int = 2, max_sim_s: float = 1e7) -> dict[str, Any]:
    """Run the model for ``updates`` trained batches; throughput over those after ``warmup``
    (the same window as the bench: from the end of the last warm-up update to the last one)."""
    if updates <= warmup:
        raise ValueError("updates must exceed warmup")
    model = run_model(spec, updates, max_sim_s)
    log = model.log
    first = log[warmup - 1] if warmup > 0 else {"t": 0.0}
    window = log[warmup:]
    dt = log[-1]["t"] - first["t"]
    steps = sum(x["env_steps"] for x in window)
    samples = sum(x["samples"] for x in window)
    dev_busy = {n: busy / model.sim.now for n, busy in model.busy_s.items()}
    sizes = [b for r in model.rollouts for b in r.batch_sizes]
    return {
        "env_steps_per_s": steps / dt if dt > 0 else math.inf,
        "decisions_per_s": samples / dt if dt > 0 else math.inf,
        "update_s": dt / len(window),
        "staleness_mean": sum(x["staleness"] * x["samples"] for x in window) / max(samples, 1),
        "device_busy": dev_busy,
        "mean_infer_batch": sum(sizes) / len(sizes) if sizes else 0.0,
        "sim_s": model.sim.now,
    }


def with_overrides(spec: SimSpec, **kw: Any) -> SimSpec:
    return replace(spec, **kw)
