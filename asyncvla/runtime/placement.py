"""Placement: which resources each worker kind asks Ray for, and how many torch threads it uses.

On a CPU machine the threads are what matters: ``colocated`` lets rollout and trainer each use
every core (they share the device, and in sync mode they take turns); ``disaggregated`` divides
the cores (rollout workers one thread each, the trainer the rest); ``hybrid`` gives rollout
workers one thread each and the trainer every core (the trainer spreads over the cores the
rollout leaves idle). Explicit ``torch_threads`` win. With ``passive_threads`` idle OpenMP threads sleep instead of
spinning on cores another stage needs. GPUs are Ray ``num_gpus``
(fractions share a device; colocated rollout + trainer on one GPU is e.g. 0.5 + 0.5).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from asyncvla.config import Config, Resources
from asyncvla.runtime.env_worker import EnvWorkerSpec
from asyncvla.runtime.rollout_worker import RolloutSpec


@dataclass(frozen=True)
class WorkerPlacement:
    num_cpus: float
    num_gpus: float
    torch_threads: int

    passive: bool = False
    deterministic: bool = False

    def ray_options(self) -> dict[str, Any]:
        opts: dict[str, Any] = {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus}
        env = {}
        if self.passive:
            env["OMP_WAIT_POLICY"] = "PASSIVE"
        if self.deterministic:
            env.update(DETERMINISTIC_ENV)
        if env:
            opts["runtime_env"] = {"env_vars": env}
        return opts


DETERMINISTIC_ENV = {"CUBLAS_WORKSPACE_CONFIG": ":4096:8"}
"""cuBLAS needs a fixed workspace for deterministic GEMMs; set before CUDA initialises."""


def use_deterministic(on: bool) -> None:
    """Deterministic kernels in this process (``runtime.deterministic``)."""
    if not on:
        return
    import torch

    for k, v in DETERMINISTIC_ENV.items():
        os.environ.setdefault(k, v)
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False


def plan(cfg: Config, cores: int | None = None) -> dict[str, WorkerPlacement]:
    cores = max(1, cores or os.cpu_count() or 1)
    rt = cfg.runtime
    if rt.placement == "colocated":
        auto = {"env": 1, "rollout": cores, "trainer": cores}
    elif rt.placement == "hybrid":
        auto = {"env": 1, "rollout": 1, "trainer": cores}
    else:
        auto = {"env": 1, "rollout": 1, "trainer": max(1, cores - rt.num_rollout_workers)}

    def one(kind: str, res: Resources) -> WorkerPlacement:
        return WorkerPlacement(
            res.cpus, res.gpus, res.torch_threads or auto[kind], rt.passive_threads, rt.deterministic
        )

    return {
        "env": one("env", rt.env),
        "rollout": one("rollout", rt.rollout),
        "trainer": one("trainer", rt.trainer),
    }


def shard_plan(cfg: Config) -> dict[int, list[int]]:
    """Manager id -> the rollout workers serving its envs (split evenly if several)."""
    rt = cfg.runtime
    if isinstance(rt.sharding, dict):
        return {
            m: list(rt.sharding.get(m, [m % rt.num_rollout_workers])) for m in range(cfg.env.num_managers)
        }
    return {m: [m % rt.num_rollout_workers] for m in range(cfg.env.num_managers)}


def worker_specs(cfg: Config, start_update: int = 0) -> tuple[list[EnvWorkerSpec], list[RolloutSpec]]:
    """Who steps which managers and who serves which shard: manager m lives on env worker
    m mod W; its shards go to the rollout workers ``shard_plan`` names. With static batching
    (``async.rollout`` off) a rollout worker's batch waits for exactly the shards routed to it."""
    switches, _ = cfg.schedule()
    rt = cfg.runtime
    routes = {(m, j): w for m, workers in shard_plan(cfg).items() for j, w in enumerate(workers)}
    env_specs = [
        EnvWorkerSpec(
            worker_id=i,
            manager_ids=[m for m in range(cfg.env.num_managers) if m % rt.num_env_workers == i],
            routes={k: w for k, w in routes.items() if k[0] % rt.num_env_workers == i},
            start_update=start_update,
        )
        for i in range(rt.num_env_workers)
    ]
    rollout_specs = [
        RolloutSpec(
            worker_id=r,
            static_shards=None if switches.rollout else [k for k, w in routes.items() if w == r],
            start_update=start_update,
        )
        for r in range(rt.num_rollout_workers)
    ]
    return env_specs, rollout_specs
