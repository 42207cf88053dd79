"""Start the workers on Ray, run them to the last update, and stop everything cleanly.

A local Ray instance starts by itself (on loopback) unless ``runtime.address`` names a cluster.
Sync and async are the same actors with different settings (``Config.schedule``): ``mode: sync``
is eta = 0, lockstep managers and static batching, which is the barrier schedule.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ray

from asyncvla.config import Config
from asyncvla.policies import Policy
from asyncvla.runtime import actors
from asyncvla.runtime.placement import plan, worker_specs
from asyncvla.runtime.rayenv import prepare_ray_env
from asyncvla.runtime.trainer import TrainerSpec
from asyncvla.runtime.weights import PolicySpec, unpack


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
    trainer and the env workers (``placement.worker_specs`` says who holds what)."""

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
        places = plan(cfg)
        pspec = PolicySpec.of(policy, cfg.policy.name)
        env_specs, rollout_specs = worker_specs(cfg, state["update"])
        self.coordinator = (
            ray.remote(actors.Coordinator)
            .options(num_cpus=0)
            .remote(cfg.global_batch(), policy.version, str(run_path / "events.jsonl") if run_path else None)
        )
        self.rollouts = [
            ray.remote(actors.RolloutWorkerActor)
            .options(**places["rollout"].ray_options(), max_concurrency=1000)
            .remote(cfg=cfg, spec=spec, policy=pspec, coordinator=self.coordinator)
            for spec in rollout_specs
        ]
        tspec = TrainerSpec(
            run_path=str(run_path) if run_path else None,
            start_state=dict(state),
            optimizer_dir=str(optimizer_dir) if optimizer_dir else None,
        )
        self.trainer = (
            ray.remote(actors.TrainerActor)
            .options(
                **places["trainer"].ray_options(),
                max_concurrency=4 + rt.num_env_workers * (rt.queue_segments + 2),
            )
            .remote(cfg=cfg, spec=tspec, policy=pspec, rollouts=self.rollouts, coordinator=self.coordinator)
        )
        self.env_workers = [
            ray.remote(actors.EnvWorkerActor)
            .options(**places["env"].ray_options(), max_concurrency=2)
            .remote(
                cfg=cfg, spec=spec, rollouts=self.rollouts, trainer=self.trainer, coordinator=self.coordinator
            )
            for spec in env_specs
        ]
        self.env_stats: list[dict[str, Any]] = []
        self._env_refs: list[Any] = []
        self._wait_ready(places)

    def _wait_ready(self, places: dict[str, Any]) -> None:
        everyone = [self.coordinator, *self.rollouts, self.trainer, *self.env_workers]
        refs = [a.ping.remote() for a in everyone]
        ready, missing = ray.wait(refs, num_returns=len(refs), timeout=self.cfg.runtime.start_timeout_s)
        try:
            ray.get(ready)
        except ray.exceptions.RayError as e:
            raise _error(e) from None
        if missing:
            wanted = {k: (p.num_cpus, p.num_gpus) for k, p in places.items()}
            raise WorkerError(
                f"{len(missing)} of {len(refs)} workers were not placed within "
                f"{self.cfg.runtime.start_timeout_s:.0f} s; requested (cpus, gpus) per worker {wanted}, "
                f"cluster has {ray.cluster_resources()}"
            )

    def run(self, updates: int, on_rows: Callable[[list[dict[str, Any]]], None]) -> dict[str, Any]:
        self.coordinator.log.remote(
            [
                {
                    "worker": "driver",
                    "wseq": 0,
                    "kind": "run_start",
                    "t": time.time(),
                    "mode": self.cfg.mode,
                    "max_staleness": self.eta,
                }
            ]
        )
        env_refs = self._env_refs = [w.run.remote() for w in self.env_workers]
        trainer_ref = self.trainer.run.remote(updates)
        names = {trainer_ref: "trainer", **{r: f"env{i}" for i, r in enumerate(env_refs)}}
        result = None
        last_progress = time.monotonic()
        while result is None:
            ready, _ = ray.wait([trainer_ref, *env_refs], num_returns=1, timeout=0.25)
            rows = ray.get(self.trainer.pop_rows.remote())
            if rows:
                last_progress = time.monotonic()
                on_rows(rows)
            elif time.monotonic() - last_progress > self.cfg.runtime.stall_timeout_s:
                raise WorkerError(
                    f"no update finished for {self.cfg.runtime.stall_timeout_s:.0f} s (stalled)"
                )
            for ref in ready:
                try:
                    out = ray.get(ref)
                except ray.exceptions.RayError as e:
                    raise _error(e) from None
                if ref is trainer_ref:
                    result = out
                else:
                    raise WorkerError(f"{names[ref]} stopped before the trainer finished")
        on_rows(ray.get(self.trainer.pop_rows.remote()))
        self.coordinator.log.remote(
            [
                {
                    "worker": "driver",
                    "wseq": 1,
                    "kind": "run_end",
                    "t": time.time(),
                    "updates": result["updates"],
                }
            ]
        )
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
        return ray.get(self.trainer.accounting.remote())

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
