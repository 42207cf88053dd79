"""Start the workers on Ray, run them to the last update, and stop everything cleanly.

A local Ray instance starts by itself (on loopback) unless ``runtime.address`` names a cluster.
Sync and async are the same actors with different settings (``Config.schedule``): ``mode: sync``
is eta = 0, lockstep managers and static batching, which is the barrier schedule.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import ray

from asyncvla.config import Config
from asyncvla.policies import Policy
from asyncvla.runtime import actors
from asyncvla.runtime.env_worker import EnvWorkerSpec
from asyncvla.runtime.events import EventBuffer
from asyncvla.runtime.placement import plan, worker_specs
from asyncvla.runtime.rayenv import prepare_ray_env
from asyncvla.runtime.rollout_worker import RolloutSpec
from asyncvla.runtime.trainer import Lost, TrainerSpec
from asyncvla.runtime.weights import PolicySpec, unpack

RESUME_HINT = "`asyncvla train --resume --run-dir RUN` continues from its last checkpoint"


class WorkerError(RuntimeError):
    """A worker failed; the message names the worker and the cause, once."""


def init_ray(address: str | None) -> bool:
    """Connect to ``address`` or start a local instance; True if this call started Ray."""
    if ray.is_initialized():
        return False
    prepare_ray_env(address)  # effective here only if ray was not imported yet: the CLI calls it first
    if address:
        ray.init(address=address, logging_level="ERROR", log_to_driver=True)
        return True
    ray.init(
        num_cpus=os.cpu_count() or 1,
        include_dashboard=False,
        logging_level="ERROR",
        log_to_driver=True,
        configure_logging=True,
    )
    return True


def _error(e: BaseException) -> WorkerError:
    cause = getattr(e, "cause", None) or e
    lines = [ln for ln in str(cause).strip().splitlines() if ln.strip()]
    return WorkerError(f"{type(cause).__name__}: {lines[-1] if lines else ''}")


class Runtime:
    """The actors of one run, built from the config: a coordinator, the rollout workers, the
    trainer and the env workers (``placement.worker_specs`` says who holds what).

    Supervision: an env or rollout worker that fails (an exception, its process killed, its actor
    lost) is replaced by a new actor with the same spec; the tickets of the dead env worker's open
    segments are given up at the trainer (``Trainer.void``: counted as lost, never trained, and
    their batches train without them), and a new rollout worker starts from the latest weights.
    More than ``runtime.max_restarts`` restarts of one worker within ``runtime.restart_window_s``
    stop the run with one line naming the worker and its last cause. A failed trainer stops the
    run (``train --resume`` continues from its last checkpoint).
    """

    def __init__(
        self,
        cfg: Config,
        policy: Policy,
        run_path: Path | None,
        state: dict[str, Any],
        optimizer_dir: Path | None,
    ) -> None:
        self.cfg = cfg
        self.switches, self.eta = cfg.schedule()
        rt = cfg.runtime
        self.places = places = plan(cfg)
        self.pspec = pspec = PolicySpec.of(policy, cfg.policy.name)
        self.env_specs, self.rollout_specs = worker_specs(cfg, state["update"])
        self.coordinator = (
            ray.remote(actors.Coordinator)
            .options(num_cpus=0)
            .remote(cfg.global_batch(), policy.version, str(run_path / "events.jsonl") if run_path else None)
        )
        self.events = EventBuffer("driver", lambda ev: self.coordinator.log.remote(ev), flush_every_s=0.0)
        self.generation: dict[str, int] = {}
        self.failures: dict[str, list[float]] = {}
        self.collected_by_dead = 0
        """Env steps collected by env workers that died (their last report)."""
        self.rollouts = [self._new_rollout(spec) for spec in self.rollout_specs]
        tspec = TrainerSpec(
            run_path=str(run_path) if run_path else None,
            start_state=dict(state),
            optimizer_dir=str(optimizer_dir) if optimizer_dir else None,
        )
        self.trainer = (
            ray.remote(actors.TrainerActor)
            .options(
                **places["trainer"].ray_options(),
                max_concurrency=8 + rt.num_env_workers * (rt.queue_segments + 2),
            )
            .remote(cfg=cfg, spec=tspec, policy=pspec, rollouts=self.rollouts, coordinator=self.coordinator)
        )
        self.env_workers = [self._new_env(spec) for spec in self.env_specs]
        self.env_stats: list[dict[str, Any]] = []
        self._env_refs: list[Any] = []
        self._wait_ready(
            {"coordinator": self.coordinator, "trainer": self.trainer}
            | {f"rollout{i}": a for i, a in enumerate(self.rollouts)}
            | {f"env{i}": a for i, a in enumerate(self.env_workers)}
        )

    # -- actors -------------------------------------------------------------------------------------
    def _new_rollout(self, spec: RolloutSpec) -> Any:
        return (
            ray.remote(actors.RolloutWorkerActor)
            .options(**self.places["rollout"].ray_options(), max_concurrency=1000)
            .remote(cfg=self.cfg, spec=spec, policy=self.pspec, coordinator=self.coordinator)
        )

    def _new_env(self, spec: EnvWorkerSpec) -> Any:
        return (
            ray.remote(actors.EnvWorkerActor)
            .options(**self.places["env"].ray_options(), max_concurrency=2)
            .remote(
                cfg=self.cfg,
                spec=spec,
                rollouts=list(self.rollouts),
                trainer=self.trainer,
                coordinator=self.coordinator,
            )
        )

    def _wait_ready(self, actors_by_name: dict[str, Any]) -> None:
        names = list(actors_by_name)
        refs = [actors_by_name[n].ping.remote() for n in names]
        ready, missing = ray.wait(refs, num_returns=len(refs), timeout=self.cfg.runtime.start_timeout_s)
        try:
            where = ray.get(ready)
        except ray.exceptions.RayError as e:
            raise _error(e) from None
        if missing:
            wanted = {k: (p.num_cpus, p.num_gpus) for k, p in self.places.items()}
            raise WorkerError(
                f"{len(missing)} of {len(refs)} workers were not placed within "
                f"{self.cfg.runtime.start_timeout_s:.0f} s; requested (cpus, gpus) per worker {wanted}, "
                f"cluster has {ray.cluster_resources()}"
            )
        for w in where:
            self.events.emit("worker_start", generation=self.generation.get(w["actor"], 0), **w)

    def _alive(self, actor: Any, timeout: float = 10.0) -> bool:
        try:
            ray.get(actor.ping.remote(), timeout=timeout)
            return True
        except (ray.exceptions.RayError, TimeoutError):
            return False

    def _count_failure(self, name: str, cause: str) -> None:
        """Record a failure of ``name``; raise if it is one more than the restart budget allows."""
        rt = self.cfg.runtime
        now = time.monotonic()
        times = [t for t in self.failures.get(name, []) if now - t < rt.restart_window_s] + [now]
        self.failures[name] = times
        restarting = len(times) <= rt.max_restarts
        self.events.emit("worker_failed", actor=name, cause=cause, restarting=restarting)
        if not restarting:
            raise WorkerError(
                f"{name} failed {len(times)}x within {rt.restart_window_s:.0f} s "
                f"(runtime.max_restarts {rt.max_restarts}); last cause: {cause}"
            )

    def _restart_env(self, i: int, cause: str) -> None:
        """Replace env worker ``i`` (and any rollout worker that died with it)."""
        name = f"env{i}"
        self._count_failure(name, cause)
        try:
            ray.kill(self.env_workers[i])  # an actor whose run raised is still alive
        except Exception:
            pass
        restarts = 1
        for j, r in enumerate(self.rollouts):
            if not self._alive(r):
                restarts += 1
                self._count_failure(f"rollout{j}", f"{name} lost its replies ({cause})")
                self.rollouts[j] = self._new_rollout(self.rollout_specs[j])
                self.generation[f"rollout{j}"] = self.generation.get(f"rollout{j}", 0) + 1
                self._wait_ready({f"rollout{j}": self.rollouts[j]})
                ray.get(self.trainer.replace_rollout.remote(j, self.rollouts[j]))
        in_flight = ray.get(self.coordinator.in_flight.remote(name))
        tickets, counts, collected = ray.get(self.coordinator.release.remote(name))
        self.collected_by_dead += collected
        self.trainer.void.remote(Lost(tickets, counts, restarts=restarts, in_flight=in_flight))
        self.generation[name] = self.generation.get(name, 0) + 1
        spec = replace(self.env_specs[i], generation=self.generation[name])
        self.env_workers[i] = self._new_env(spec)
        self._wait_ready({name: self.env_workers[i]})
        self._env_refs[i] = self.env_workers[i].run.remote()

    # -- the schedule -------------------------------------------------------------------------------
    def run(
        self,
        updates: int,
        on_rows: Callable[[list[dict[str, Any]]], None],
        stop_after_s: float | None = None,
        on_health: Callable[[dict[str, dict[str, float]]], None] | None = None,
        health_every_s: float = 5.0,
    ) -> dict[str, Any]:
        """``on_health`` sees ``Coordinator.health`` every ``health_every_s`` seconds."""
        self.events.emit("run_start", mode=self.cfg.mode, max_staleness=self.eta)
        env_refs = self._env_refs = [w.run.remote() for w in self.env_workers]
        trainer_ref = self.trainer.run.remote(updates)
        result = None
        last_progress = t_start = last_health = time.monotonic()
        stopping = False
        while result is None:
            if on_health is not None and time.monotonic() - last_health > health_every_s:
                last_health = time.monotonic()
                on_health(ray.get(self.coordinator.health.remote()))
            if stop_after_s is not None and not stopping and time.monotonic() - t_start > stop_after_s:
                self.trainer.stop.remote()  # the trainer ends after its current update
                stopping = True
            ready, _ = ray.wait([trainer_ref, *env_refs], num_returns=1, timeout=0.25)
            try:
                rows = ray.get(self.trainer.pop_rows.remote())
            except ray.exceptions.RayError as e:
                raise WorkerError(f"trainer: {_error(e)} ({RESUME_HINT})") from None
            if rows:
                last_progress = time.monotonic()
                self.coordinator.trained.remote(rows[-1]["policy_version"])
                on_rows(rows)
            elif time.monotonic() - last_progress > self.cfg.runtime.stall_timeout_s:
                raise WorkerError(
                    f"no update finished for {self.cfg.runtime.stall_timeout_s:.0f} s (stalled)"
                )
            for ref in ready:
                if ref is trainer_ref:
                    try:
                        result = ray.get(ref)
                    except ray.exceptions.RayError as e:
                        raise WorkerError(f"trainer: {_error(e)} ({RESUME_HINT})") from None
                    continue
                i = env_refs.index(ref)
                try:
                    ray.get(ref)
                    cause = "stopped before the trainer finished"
                except ray.exceptions.RayError as e:
                    cause = str(_error(e))
                if not self._alive(self.trainer):  # the env worker failed because the trainer did
                    try:
                        result = ray.get(trainer_ref, timeout=30)
                    except (ray.exceptions.RayError, TimeoutError) as e:
                        raise WorkerError(f"trainer: {_error(e)} ({RESUME_HINT})") from None
                    break
                self._restart_env(i, cause)
                last_progress = time.monotonic()
        on_rows(ray.get(self.trainer.pop_rows.remote()))
        self.events.emit("run_end", updates=result["updates"])
        self.stop_envs()
        return result

    def stop_envs(self, timeout: float = 30.0) -> None:
        for w in self.env_workers:
            w.stop.remote()
        try:
            self.env_stats = ray.get(self._env_refs, timeout=timeout)
        except ray.exceptions.RayError as e:
            raise _error(e) from None

    def accounting(self) -> dict[str, Any]:
        acc = ray.get(self.trainer.accounting.remote())
        acc["collected_by_dead_workers"] = self.collected_by_dead
        return acc

    def rollout_stats(self) -> list[dict[str, Any]]:
        return ray.get([r.stats.remote() for r in self.rollouts])

    def shutdown(self) -> None:
        """Stop every actor: no orphan processes, the event log flushed and closed."""
        for w in self.env_workers:
            try:
                w.stop.remote()
            except Exception:
                pass
        try:
            self.trainer.stop.remote()
            ray.get([r.stats.remote() for r in self.rollouts], timeout=5)
            self.events.flush()
            ray.get(self.coordinator.close.remote(), timeout=5)
        except Exception:
            pass
        for a in [*self.env_workers, *self.rollouts, self.trainer, self.coordinator]:
            try:
                ray.kill(a)
            except Exception:
                pass


def load_weights(policy: Policy, result: dict[str, Any]) -> None:
    policy.load_sync_state_dict(unpack(result["weights"]))  # a publish or the full final weights
    policy.version = int(result["version"])
