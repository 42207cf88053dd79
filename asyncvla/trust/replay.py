"""Replay: re-execute a recorded run in one process, without Ray and without its timing, and check
that it reproduces the run's metric stream and weights bit for bit.

A run's outcome depends on its config, its initial policy and three orders that timing decides.
``events.jsonl`` records those orders:

* ``batch_formed`` (per rollout worker, in the worker's own order ``wseq``): which requests
  ``reqs`` = [manager, request id, shard] formed each inference batch, in batch order, and the
  policy ``version`` that served it. The sampler's seed is the batch's index in that order
  (``RolloutWorker.batch_seed``), so no RNG state needs to be stored.
* ``segment_shipped``: each segment's staleness ticket (global batch, ``closes_batch``,
  ``batch_tickets``).
* ``train``: per update, the ``segments`` [manager, segment id] of its batch in arrival order
  (the streamer's micro-batch order).

Every env's seed and init state follow from the config's seed and the manager id
(``EnvManager``); the learner's permutations from the config's seed. Replay builds the same
``EnvManager``, ``RolloutWorker`` and ``Trainer`` objects the run's actors held, and advances
whichever the record says can go next: a batch once its requests are open and its version is
published, an update once its segments are complete. Each worker computes with the torch thread
count its actor had (``placement.plan`` on the recorded core count) and keeps its own RNG stream.

The comparison: every metric row's keys except wall-clock and timing fields (``TIMING``), then
the final weights against the run's checkpoint of the last replayed update.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from asyncvla.config import Config, ConfigError, load_config
from asyncvla.envs.wrappers import LatencyEmulator
from asyncvla.runtime.batching import Waiting
from asyncvla.runtime.env_worker import EnvManager, build_managers
from asyncvla.runtime.gate import Ticket
from asyncvla.runtime.placement import plan, use_deterministic, worker_specs
from asyncvla.runtime.rollout_worker import RolloutWorker
from asyncvla.runtime.trainer import Trainer, TrainerSpec
from asyncvla.runtime.types import ActionReply, ObsRequest, Segment
from asyncvla.runtime.weights import PolicySpec, pack, unpack

TIMING = frozenset(
    {"wall_s", "time_update_s", "time_train_s", "trainer_busy_frac", "env_steps_per_s", "decisions_per_s"}
)
"""Metric keys that measure time, not the computation: not compared."""


class ReplayError(Exception):
    """The run directory cannot be replayed (missing, truncated or foreign records): one line."""


@dataclass
class Divergence:
    update: int
    key: str
    recorded: Any
    replayed: Any

    def __str__(self) -> str:
        return f"update {self.update}: {self.key} recorded {self.recorded!r}, replayed {self.replayed!r}"


@dataclass
class ReplayResult:
    updates: int
    """Updates replayed."""
    divergence: Divergence | None
    weights_checked: str | None
    """The checkpoint the final weights were compared with (None: the run has none for the last
    replayed update)."""

    @property
    def ok(self) -> bool:
        return self.divergence is None


@dataclass
class Batch:
    version: int
    reqs: list[tuple[int, int, int]]


@dataclass
class Schedule:
    """What ``events.jsonl`` says the run's outcome depends on."""

    batches: dict[int, list[Batch]]
    """rollout worker -> its batches in order."""
    tickets: dict[int, list[Ticket]]
    """manager -> the tickets of its shipped segments, in segment order."""
    updates: list[list[tuple[int, int]]]
    """per update (in order): its segments (manager, segment id) in arrival order."""
    cores: int | None
    extra: dict[str, Any] = field(default_factory=dict)


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    out = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            raise ReplayError(f"{path} line {i}: not JSON (truncated or edited)") from None
        if not isinstance(rec, dict):
            raise ReplayError(f"{path} line {i}: not a JSON object (edited)")
        out.append(rec)
    return out


def _field(path: Path, e: dict[str, Any], key: str) -> Any:
    if key not in e:
        raise ReplayError(
            f"{path}: a {e.get('kind', '?')} event (seq {e.get('seq', '?')}) lacks {key!r}: "
            "edited, or recorded without the schedule"
        )
    return e[key]


def load_schedule(run_dir: Path) -> Schedule:
    path = run_dir / "events.jsonl"
    if not path.is_file():
        raise ReplayError(f"{run_dir}: no events.jsonl (not a run directory, or the run did not start)")
    events = _read_jsonl(path)
    starts = [e for e in events if e.get("kind") == "run_start"]
    if len(starts) != 1:
        raise ReplayError(
            f"{path}: {len(starts)} run_start events; replay re-executes a run started once "
            "(a resumed run is not replayable)"
        )
    failed = [e for e in events if e.get("kind") == "worker_failed"]
    if failed:
        raise ReplayError(
            f"{path}: {failed[0].get('actor', 'a worker')} failed during the run; the segments it "
            "took with it are not replayable"
        )
    by_worker: dict[int, list[dict[str, Any]]] = {}
    tickets: dict[int, list[tuple[int, Ticket]]] = {}
    trains: list[dict[str, Any]] = []
    for e in events:
        kind, worker = e.get("kind"), str(e.get("worker", ""))
        if kind == "batch_formed":
            if not worker.startswith("rollout") or not worker[7:].isdigit():
                raise ReplayError(
                    f"{path}: batch_formed event (seq {e.get('seq', '?')}) of worker {worker!r}"
                )
            by_worker.setdefault(int(worker[7:]), []).append(e)
        elif kind == "segment_shipped":
            m = int(_field(path, e, "manager"))
            t = Ticket(
                int(_field(path, e, "ticket")),
                int(_field(path, e, "target_version")),
                int(_field(path, e, "samples")),
                bool(_field(path, e, "closes_batch")),
                int(_field(path, e, "batch_tickets")),
            )
            tickets.setdefault(m, []).append((int(_field(path, e, "segment")), t))
        elif kind == "train":
            trains.append(e)
    batches = {
        w: [
            Batch(
                int(_field(path, e, "version")), [tuple(int(x) for x in r) for r in _field(path, e, "reqs")]
            )
            for e in sorted(evs, key=lambda e: int(_field(path, e, "wseq")))
        ]
        for w, evs in by_worker.items()
    }
    trains.sort(key=lambda e: int(_field(path, e, "version")))
    updates = [[(int(m), int(s)) for m, s in _field(path, e, "segments")] for e in trains]
    cores = None
    manifest = run_dir / "manifest.json"
    if manifest.is_file():
        try:
            cores = json.loads(manifest.read_text()).get("cpu_count")
        except ValueError:
            raise ReplayError(f"{manifest}: not JSON (truncated or edited)") from None
    return Schedule(
        batches,
        {m: [t for _, t in sorted(ts, key=lambda x: x[0])] for m, ts in tickets.items()},
        updates,
        cores,
    )


def _check_config(run_dir: Path) -> None:
    """config.yaml must be the config the manifest recorded at the start."""
    from asyncvla.trust.manifest import MANIFEST_FILE, sha256_text

    path = run_dir / MANIFEST_FILE
    if not path.is_file():
        return
    try:
        recorded = json.loads(path.read_text()).get("config_sha256")
    except (ValueError, AttributeError):
        raise ReplayError(f"{path}: not a manifest (truncated or edited)") from None
    if recorded != sha256_text((run_dir / "config.yaml").read_text()):
        raise ReplayError(
            f"{run_dir / 'config.yaml'} is not the config this run started with (its sha256 differs "
            f"from {MANIFEST_FILE}'s config_sha256): replay runs a run's own config"
        )


def _initial_policy(cfg: Config, run_dir: Path):
    """The policy the run's schedule started from."""
    from asyncvla.builder import build_policy, probe_env
    from asyncvla.policies import load_policy

    init = cfg.train.init
    if init == "sft":
        src = run_dir / "sft"
    elif init is not None:
        src = Path(init)
    else:
        torch.manual_seed(cfg.seed)
        probe = probe_env(cfg)
        try:
            return build_policy(cfg, probe)
        finally:
            probe.close()
    if not (src / "policy.json").is_file():
        raise ReplayError(
            f"train.init {init}: no checkpoint at {src} (replay needs the run's initial policy)"
        )
    return load_policy(src)


class _Threads:
    """Each worker computes with the torch thread count of its actor."""

    def __init__(self, cfg: Config, cores: int | None) -> None:
        p = plan(cfg, cores)
        self.n = {role: p[role].torch_threads for role in ("env", "rollout", "trainer")}
        self.n["driver"] = cfg.train.torch_threads or torch.get_num_threads()

    def use(self, role: str) -> None:
        if torch.get_num_threads() != self.n[role]:
            torch.set_num_threads(self.n[role])


def _normal(v: Any) -> Any:
    return json.loads(json.dumps(v))


def compare_rows(recorded: dict[str, Any], replayed: dict[str, Any]) -> tuple[str, Any, Any] | None:
    """The first key (in the recorded row's order) whose value differs, timing aside."""
    rep = _normal({k: v for k, v in replayed.items() if not k.startswith("_")})
    for k in list(recorded) + [k for k in rep if k not in recorded]:
        if k in TIMING:
            continue
        a, b = recorded.get(k, "<absent>"), rep.get(k, "<absent>")
        if a != b:
            return k, a, b
    return None


def replay(
    run_dir: str | Path,
    until: int | None = None,
    on_update: Callable[[int, int], None] | None = None,
) -> ReplayResult:
    """Re-execute ``run_dir`` up to update ``until`` (default: its last) and compare."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ReplayError(f"{run_dir}: no such run directory")
    for name in ("config.yaml", "metrics.jsonl"):
        if not (run_dir / name).is_file():
            raise ReplayError(f"{run_dir}: no {name} (not a run directory, or the run wrote no update)")
    try:
        cfg = load_config(run_dir / "config.yaml")
    except ConfigError as e:
        raise ReplayError(f"{run_dir / 'config.yaml'}: {e}") from None
    if not cfg.runtime.record_schedule:
        raise ReplayError(
            f"{run_dir}: recorded with runtime.record_schedule false, so its schedule is unknown"
        )
    _check_config(run_dir)
    recorded = _read_jsonl(run_dir / "metrics.jsonl")
    sched = load_schedule(run_dir)
    total = min(len(recorded), len(sched.updates))
    if not total:
        raise ReplayError(f"{run_dir}: the run recorded no complete update")
    if until is not None:
        if not 1 <= until <= total:
            raise ReplayError(f"--until {until}: the run recorded updates 1..{total}")
        total = until
    for i, row in enumerate(recorded[:total], 1):
        if row.get("update") != i:
            raise ReplayError(
                f"{run_dir / 'metrics.jsonl'}: row {i} is update {row.get('update')!r}, not {i}"
            )

    use_deterministic(cfg.runtime.deterministic)
    LatencyEmulator.sleep = False
    try:
        return _replay(run_dir, cfg, recorded, sched, total, on_update)
    finally:
        LatencyEmulator.sleep = True


def _replay(
    run_dir: Path,
    cfg: Config,
    recorded: list[dict[str, Any]],
    sched: Schedule,
    total: int,
    on_update: Callable[[int, int], None] | None,
) -> ReplayResult:
    from asyncvla.builder import quick_eval
    from asyncvla.runtime.launcher import load_weights

    threads = _Threads(cfg, sched.cores)
    threads.use("driver")
    policy = _initial_policy(cfg, run_dir)
    eval_policy = copy.deepcopy(policy)
    env_specs, rollout_specs = worker_specs(cfg, 0)
    pspec = PolicySpec.of(policy, cfg.policy.name)
    threads.use("rollout")
    rollouts = [RolloutWorker(cfg, spec, pspec) for spec in rollout_specs]
    published: dict[int, dict[str, Any]] = {}

    def publish(version: int, weights: dict[str, torch.Tensor]) -> Any:
        # A copy, as the object store makes: ``pack`` shares memory with the trainer's parameters.
        p = pack(weights)
        published[version] = {**p, "arrays": {k: a.copy() for k, a in p["arrays"].items()}}
        return published[version]

    threads.use("trainer")
    trainer = Trainer(cfg, TrainerSpec(), pspec, publish)
    trainer_rng = torch.get_rng_state()
    threads.use("env")
    managers: dict[int, EnvManager] = {}
    for spec in env_specs:
        managers.update(build_managers(cfg, spec))
    tickets = {m: list(ts) for m, ts in sched.tickets.items()}
    spare = 10**9  # ids for the tickets of segments the run never shipped

    def take_ticket(m: EnvManager) -> None:
        nonlocal spare
        if m.needs_ticket:
            queue = tickets.get(m.manager_id)
            m.set_ticket(queue.pop(0) if queue else Ticket(spare, 10**9, m.ticket_samples(), False, 0))
            spare += 1

    open_reqs: dict[tuple[int, int], ObsRequest] = {}

    def issue(m: EnvManager) -> None:
        take_ticket(m)
        for r in m.request():
            open_reqs[(r.manager_id, r.shard)] = r

    for m in managers.values():
        issue(m)

    shipped: dict[tuple[int, int], Segment] = {}
    pos = {w: 0 for w in sched.batches}
    for w in sched.batches:
        if not 0 <= w < len(rollouts):
            raise ReplayError(
                f"events.jsonl: batches of rollout{w}, but the config has {len(rollouts)} rollout workers"
            )

    def run_batch(w: int) -> bool:
        """Run rollout worker w's next batch if the record says it can go now."""
        if pos[w] >= len(sched.batches[w]):
            return False
        b = sched.batches[w][pos[w]]
        worker = rollouts[w]
        if b.version != worker.version and b.version not in published:
            return False
        reqs = []
        for mid, rid, shard in b.reqs:
            r = open_reqs.get((mid, shard))
            if r is None or r.request_id != rid:
                return False
            reqs.append(r)
        if b.version != worker.version:
            worker.set_weights(b.version, unpack(published[b.version]))
        for r in reqs:
            del open_reqs[(r.manager_id, r.shard)]
        threads.use("rollout")
        replies: list[ActionReply] = worker.run_batch(
            [Waiting(r, r.num_samples, (r.manager_id, r.shard), 0.0) for r in reqs]
        )
        pos[w] += 1
        threads.use("env")
        stepped = []
        for reply in replies:
            m = managers[reply.manager_id]
            if m.add_reply(reply):
                stepped.append(m)
        for m in sorted(stepped, key=lambda m: m.manager_id):
            for seg in m.apply([]):
                shipped[(seg.manager_id, seg.segment_id)] = seg
            issue(m)
        return True

    def train_next(u: int) -> bool:
        """Feed update u's segments, in their arrival order, once all are complete."""
        nonlocal trainer_rng
        want = sched.updates[u]
        if not all(k in shipped for k in want):
            return False
        threads.use("trainer")
        torch.set_rng_state(trainer_rng)
        for k in want:
            trainer.add(shipped.pop(k))
        trainer_rng = torch.get_rng_state()
        if trainer.updates_done != u + 1:
            raise ReplayError(
                f"events.jsonl: update {u + 1}'s recorded segments {want} did not complete its batch"
            )
        return True

    done = 0
    divergence: Divergence | None = None
    while done < total:
        progressed = train_next(done)
        if progressed:
            for row in trainer.pop_rows():
                handle = row.get("_weights")
                if handle is not None:
                    threads.use("driver")
                    load_weights(eval_policy, {"weights": handle[0], "version": row["policy_version"]})
                    row.update(quick_eval(cfg, eval_policy, row["update"]))
                diff = compare_rows(recorded[row["update"] - 1], row)
                if diff is not None and divergence is None:
                    divergence = Divergence(row["update"], *diff)
            done += 1
            if on_update is not None:
                on_update(done, total)
            if divergence is not None:
                break
            needed = min(
                (sched.batches[w][pos[w]].version for w in pos if pos[w] < len(sched.batches[w])),
                default=None,
            )
            for v in [v for v in published if needed is None or v < needed]:
                if v != trainer.version:
                    del published[v]
            continue
        for w in pos:
            while run_batch(w):
                progressed = True
        if not progressed:
            divergence = Divergence(
                done + 1,
                "schedule",
                f"segments {sched.updates[done]}",
                f"cannot be formed from the recorded batches (open segments: {sorted(shipped)[:8]})",
            )
            break
    checked = None
    if divergence is None:
        divergence, checked = _compare_weights(run_dir, trainer, done)
    return ReplayResult(done, divergence, checked)


def _compare_weights(run_dir: Path, trainer: Trainer, update: int) -> tuple[Divergence | None, str | None]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    ckpt = run_dir / "checkpoints" / f"update_{update:05d}" / "model.safetensors"
    if not ckpt.is_file():
        return None, None
    try:
        saved = load_file(str(ckpt))
    except (SafetensorError, OSError) as e:
        raise ReplayError(f"{ckpt}: unreadable (truncated or not safetensors): {e}") from None
    mine = trainer.policy.state_dict()
    for k in sorted(set(saved) | set(mine)):
        a, b = saved.get(k), mine.get(k)
        if a is None or b is None or a.shape != b.shape or not torch.equal(a, b.to(a.dtype)):
            diff = (
                "absent"
                if a is None or b is None
                else f"max |diff| {float((a.double() - b.double()).abs().max()):.3g}"
            )
            return Divergence(update, f"weights[{k}]", str(ckpt.relative_to(run_dir)), diff), None
    return None, str(ckpt.parent.relative_to(run_dir))


def metrics_digest(run_dir: str | Path) -> str:
    """SHA-256 of ``metrics.jsonl`` without its timing fields (equal for bit-identical runs)."""
    import hashlib

    rows = _read_jsonl(Path(run_dir) / "metrics.jsonl")
    h = hashlib.sha256()
    for r in rows:
        h.update(json.dumps({k: v for k, v in r.items() if k not in TIMING}, sort_keys=True).encode())
    return h.hexdigest()
