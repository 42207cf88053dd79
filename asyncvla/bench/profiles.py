"""Emulated workload profiles (``configs/bench/*.yaml``) and the benchmark's modes.

A profile names every stage cost of one workload, in seconds of the machine it models, and one
global ``time_scale`` that multiplies all of them (so a mode runs in seconds here while the
*ratios* stay those of the modelled machine):

* ``env``: tabletop ``latency`` per action step (constant / lognormal / heavy_tail; scope ``env``:
  envs simulated one after another, ``batch``: one cost per step for the whole batch), envs per
  manager, managers, env workers, and ``processes_per_manager`` (a manager stands for that many CPU
  processes stepping its envs in parallel: the per-env latency is divided by it);
* ``infer`` / ``train``: ``asyncvla.runtime.costs.CostModel``, ``max(floor_s, a_s + b_s * x)``
  for a per-GPU batch of x samples (inference batch, training micro-batch); ``sync_s``: loading published weights on the rollout
  side;
* ``placements``: which virtual device and how many GPUs the rollout and the trainer get when
  ``colocated`` (one device, both use all its GPUs, in turns) and ``disaggregated``.

Modes (README "Schedules", the RL-VLA^3 ablation rows; each row adds to the one above, so the
async rows keep the disaggregated placement): see ``MODES``.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from asyncvla.config import Config, ConfigError, set_dotted
from asyncvla.envs.wrappers import LatencyConfig
from asyncvla.runtime.costs import CostModel, fit_cost, fit_error

POLICY_NAME = "asyncvla.bench.emulated:EmulatedPolicy"

MODES: dict[str, dict[str, Any]] = {
    "sync-colocated": {"mode": "sync", "runtime.placement": "colocated"},
    "sync-disaggregated": {"mode": "sync", "runtime.placement": "disaggregated"},
    "train-async": {
        "mode": "async",
        "async.env": False,
        "async.rollout": False,
        "async.streamer": False,
        "runtime.placement": "disaggregated",
    },
    "rollout-async": {
        "mode": "async",
        "async.env": True,
        "async.rollout": True,
        "async.streamer": False,
        "runtime.placement": "disaggregated",
    },
    "streamer": {
        "mode": "async",
        "async.env": True,
        "async.rollout": True,
        "async.streamer": True,
        "runtime.placement": "disaggregated",
    },
}
"""Mode name -> config overrides. README: sync colocated (``mode=sync``), sync disaggregated
(``mode=sync runtime.placement=disaggregated``), + train async (``mode=async async.env=false
async.rollout=false``), + rollout async (``async.streamer=false``: RL-VLA^3's fine-grained
asynchronous env-inference interaction, i.e. managers that wait only for their own replies, with
dynamic batching), + streamer (``async.streamer=true``)."""

EXTRA_MODES: dict[str, dict[str, Any]] = {
    "dynamic-batching": {
        "mode": "async",
        "async.env": False,
        "async.rollout": True,
        "async.streamer": False,
        "runtime.placement": "disaggregated",
    },
}
"""Modes that run only when asked for (``--modes``): ``dynamic-batching`` is the rollout-async row
with lockstep managers (``async.env=false``), which separates dynamic batching from env-level
asynchrony."""

LABELS = {
    "sync-colocated": "sync colocated",
    "sync-disaggregated": "sync disaggregated",
    "train-async": "+ train async",
    "rollout-async": "+ rollout async",
    "streamer": "+ streamer",
    "dynamic-batching": "+ dynamic batching only",
    "streamer-tuned": "+ streamer, tuned batching",
}
BASELINE = "sync-colocated"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DeviceSpec(_Strict):
    device: str
    gpus: float = Field(1.0, gt=0.0)


class PlacementSpec(_Strict):
    rollout: DeviceSpec
    trainer: DeviceSpec


class EnvSpec(_Strict):
    num_envs: int = Field(ge=1)
    num_managers: int = Field(ge=1)
    num_env_workers: int = Field(1, ge=1)
    processes_per_manager: int = Field(1, ge=1)
    latency: dict[str, Any]
    """A tabletop ``latency`` dict with ``mean_ms`` in milliseconds of the modelled machine."""
    kwargs: dict[str, Any] = Field(default_factory=lambda: {"family": "reach", "image_size": 32})

    @field_validator("latency")
    @classmethod
    def _latency(cls, v: dict[str, Any]) -> dict[str, Any]:
        LatencyConfig.from_dict(v)
        return v


class Profile(_Strict):
    workload: str
    description: str = ""
    source: str = ""
    time_scale: float = Field(1.0, gt=0.0)
    env: EnvSpec
    chunk_size: int = Field(ge=1)
    rollout_steps: int = Field(ge=1)
    infer: CostModel
    train: CostModel
    micro_batch_per_gpu: int = Field(ge=1)
    """Training micro-batch per GPU: ``algo.minibatch_size`` = this x the trainer's GPUs."""
    nograd_factor: float = Field(1.0 / 3.0, ge=0.0)
    bootstrap_factor: float = Field(1.0, ge=0.0)
    sync_s: float = Field(0.0, ge=0.0)
    placements: dict[Literal["colocated", "disaggregated"], PlacementSpec]
    config: dict[str, Any] = Field(default_factory=dict)
    """Dotted config overrides common to every mode (e.g. ``runtime.max_staleness``)."""
    modes: dict[str, dict[str, Any]] = Field(default_factory=dict)
    """Per-mode dotted overrides on top of ``MODES`` (a new name adds an extra mode)."""
    warmup_updates: int = Field(1, ge=0)

    def mode_overrides(self, name: str) -> dict[str, Any]:
        known = {**MODES, **EXTRA_MODES}
        if name not in known and name not in self.modes:
            raise ConfigError(f"mode {name!r}: unknown; known: {', '.join([*known, *self.modes])}")
        return {**known.get(name, {}), **self.modes.get(name, {})}

    def all_modes(self) -> list[str]:
        return [*MODES, *(m for m in self.modes if m not in MODES)]


class RealProfile(_Strict):
    """A real workload: a training config run as it is (its own env and policy, e.g. tabletop +
    TinyVLA on this machine's CPU), with dotted ``overrides`` and the same modes. No emulated
    devices: no nominal bound and no planner prediction; the measured bound comes from the event
    log (``analysis``)."""

    workload: str
    kind: Literal["real"]
    description: str = ""
    config: str
    """Training config YAML, relative to the repository root (or absolute)."""
    overrides: dict[str, Any] = Field(default_factory=dict)
    modes: dict[str, dict[str, Any]] = Field(default_factory=dict)
    warmup_updates: int = Field(1, ge=0)
    time_scale: float = 1.0

    mode_overrides = Profile.mode_overrides
    all_modes = Profile.all_modes

    def config_tree(self) -> dict[str, Any]:
        path = Path(self.config)
        if not path.is_absolute():
            path = Path(__file__).resolve().parents[2] / path
        if not path.is_file():
            raise ConfigError(f"profile {self.workload}: config {path} does not exist")
        return yaml.safe_load(path.read_text()) or {}


def load_profile(path: str | Path) -> Profile | RealProfile:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"profile {p} does not exist")
    try:
        tree = yaml.safe_load(p.read_text()) or {}
        if isinstance(tree, dict) and tree.get("kind") == "real":
            return RealProfile.model_validate(tree)
        return Profile.model_validate(tree)
    except yaml.YAMLError as e:
        raise ConfigError(f"profile {p} is not valid YAML: {str(e).splitlines()[0]}") from None
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(x) for x in err["loc"])
        raise ConfigError(f"profile {p}: {loc}: {err['msg']}") from None


def resolve_profile(name_or_path: str | Path) -> Path:
    """A profile path, or a name under ``configs/bench`` (``balanced`` -> configs/bench/balanced.yaml)."""
    p = Path(name_or_path)
    if p.is_file():
        return p
    root = Path(__file__).resolve().parents[2] / "configs" / "bench"
    cand = root / f"{name_or_path}.yaml"
    if cand.is_file():
        return cand
    known = ", ".join(sorted(q.stem for q in root.glob("*.yaml"))) if root.is_dir() else "(none)"
    raise ConfigError(f"workload {name_or_path!r}: no such profile; known: {known}")


def _placement_name(over: dict[str, Any], common: dict[str, Any]) -> str:
    return str(over.get("runtime.placement", common.get("runtime.placement", "colocated")))


def mode_config(
    profile: Profile,
    mode: str,
    updates: int,
    run_id: str = "bench",
    lock_dir: str | None = None,
    hold_log: bool = True,
    time_scale: float | None = None,
) -> Config:
    """The full run Config of one mode of a profile (emulated policy, tabletop env with latency;
    a real profile: its training config with its overrides)."""
    if isinstance(profile, RealProfile):
        return _real_config(profile, mode, updates)
    s = profile.time_scale if time_scale is None else time_scale
    over = profile.mode_overrides(mode)
    placement = _placement_name(over, profile.config)
    if placement not in profile.placements:
        raise ConfigError(f"mode {mode!r}: placement {placement!r} is not in the profile's placements")
    pl = profile.placements[placement]
    env = profile.env
    latency = dict(env.latency)
    latency["mean_ms"] = float(latency.get("mean_ms", 0.0)) * s / env.processes_per_manager
    tree: dict[str, Any] = {
        "name": f"bench-{profile.workload}-{mode}",
        "env": {
            "name": "tabletop",
            "num_envs": env.num_envs,
            "num_managers": env.num_managers,
            "kwargs": {**env.kwargs, "latency": latency},
        },
        "policy": {
            "name": POLICY_NAME,
            "chunk_size": profile.chunk_size,
            "kwargs": {
                "infer": profile.infer.scaled(s).to_dict(),
                "train": profile.train.scaled(s).to_dict(),
                "nograd_factor": profile.nograd_factor,
                "bootstrap_factor": profile.bootstrap_factor,
                "sync_s": profile.sync_s * s,
                "devices": {"rollout": pl.rollout.device, "trainer": pl.trainer.device},
                "gpus": {"rollout": pl.rollout.gpus, "trainer": pl.trainer.gpus},
                "run_id": run_id,
                "lock_dir": lock_dir,
                "hold_log": hold_log,
            },
        },
        "algo": {
            "epochs": 1,
            "minibatch_size": max(1, int(round(profile.micro_batch_per_gpu * pl.trainer.gpus))),
        },
        "train": {
            "updates": updates,
            "rollout_steps": profile.rollout_steps,
            "checkpoint_every": updates + 1,
        },
        "runtime": {"num_env_workers": env.num_env_workers, "num_rollout_workers": 1},
    }
    return _validated(tree, {**profile.config, **over}, mode)


def _real_config(profile: RealProfile, mode: str, updates: int) -> Config:
    tree = profile.config_tree()
    over = {
        **profile.overrides,
        **profile.mode_overrides(mode),
        "name": f"bench-{profile.workload}-{mode}",
        "train.updates": updates,
        "train.checkpoint_every": updates + 1,
        "train.eval_every": 0,
    }
    return _validated(tree, over, mode)


def _validated(tree: dict[str, Any], overrides: dict[str, Any], mode: str) -> Config:
    """``tree`` with the dotted ``overrides`` applied, as a validated Config (one line naming the
    mode and the key on error)."""
    for key, value in overrides.items():
        set_dotted(tree, key, copy.deepcopy(value))
    try:
        return Config.model_validate(tree)
    except ValidationError as e:
        err = e.errors()[0]
        raise ConfigError(f"mode {mode!r}: {'.'.join(str(x) for x in err['loc'])}: {err['msg']}") from None


# -- nominal stage costs and the pipeline bound ------------------------------------------------------
def pipeline_bound(costs: dict[str, float], resources: dict[str, dict[str, float]]) -> dict[str, Any]:
    """Pipeline bound of stages with per-sample ``costs`` (seconds of the stage per sample, as the
    sequential loop sees it) on ``resources`` (resource -> {stage: its per-sample load there}).

    Stages sharing a resource add up; the throughput limit is 1 / the largest per-resource load
    and the speedup bound over the sequential loop is sum(costs) / that load.
    """
    return bound_from_loads(costs, {r: sum(v.values()) for r, v in resources.items()})


def bound_from_loads(costs: dict[str, float], loads: dict[str, float]) -> dict[str, Any]:
    """``pipeline_bound`` given each resource's per-sample load directly (a measured run: the
    seconds the resource was busy, overlaps counted once, per sample)."""
    if not loads:
        raise ValueError("no resources")
    bottleneck = max(loads, key=lambda r: loads[r])
    max_load = loads[bottleneck]
    total = sum(costs.values())
    return {
        "stage_cost_s": dict(costs),
        "resource_load_s": loads,
        "bottleneck": bottleneck,
        "sequential_s": total,
        "bound": total / max_load if max_load > 0 else math.inf,
        "bound_samples_per_s": 1.0 / max_load if max_load > 0 else math.inf,
    }


def place_stages(
    costs: dict[str, float],
    rollout_device: str,
    trainer_device: str,
    env_workers: int = 1,
    env_worker_loads: list[float] | None = None,
) -> dict[str, dict[str, float]]:
    """Resources of a placement: each env worker its own CPU resource; inference and weight sync
    on the rollout device, training on the trainer device (the same device when colocated).
    ``costs["env"]`` is the env stage per sample with the workers in parallel (load per worker)."""
    res: dict[str, dict[str, float]] = {}
    loads = env_worker_loads or [costs.get("env", 0.0)] * env_workers
    for w, load in enumerate(loads):
        res[f"env{w}"] = {"env": load}
    res.setdefault(f"device:{rollout_device}", {})
    res[f"device:{rollout_device}"]["infer"] = costs.get("infer", 0.0)
    res[f"device:{rollout_device}"]["sync"] = costs.get("sync", 0.0)
    res.setdefault(f"device:{trainer_device}", {})
    res[f"device:{trainer_device}"]["train"] = res[f"device:{trainer_device}"].get("train", 0.0) + costs.get(
        "train", 0.0
    )
    return res


def latency_mean_ms(lat: dict[str, Any]) -> float:
    """Expected per-draw latency in ms of a tabletop latency dict (lognormal mean is mean_ms)."""
    cfg = LatencyConfig.from_dict(lat)
    if cfg.kind == "none" or cfg.mean_ms <= 0:
        return 0.0
    m = float(cfg.mean_ms)
    if cfg.kind == "heavy_tail":
        m *= 1.0 - cfg.tail_prob + cfg.tail_prob * cfg.tail_mult
    return m


def nominal_costs(profile: Profile, mode: str, time_scale: float | None = None) -> dict[str, Any]:
    """Per-sample stage costs of a mode from the profile alone (no run), and its bound.

    Inference batch: static batching serves every manager at once (sync, ``async.rollout:
    false``); dynamic batching closes at ``runtime.max_batch_samples``. The trainer's bootstrap
    forward (one per segment) and the proximal recomputation are runtime work not counted here;
    the measured bound (``analysis``) includes them.
    """
    s = profile.time_scale if time_scale is None else time_scale
    cfg = mode_config(profile, mode, updates=1, time_scale=s, hold_log=False)
    env = profile.env
    k = profile.chunk_size
    lat = dict(env.latency)
    mean_s = latency_mean_ms(lat) * s / 1000.0 / env.processes_per_manager
    scope = lat.get("scope", "env")
    per_sample_env = k * mean_s if scope == "env" else k * mean_s / env.num_envs  # one env worker
    workers = cfg.runtime.num_env_workers
    managers_per_worker = env.num_managers / workers
    sw, _ = cfg.schedule()
    if sw.rollout:
        batch = min(cfg.runtime.max_batch_samples, env.num_managers * env.num_envs)
        batch = max(batch, env.num_envs)  # one request is never split
    else:
        batch = env.num_managers * env.num_envs
    pol = cfg.policy.kwargs
    g_r, g_t = pol["gpus"]["rollout"], pol["gpus"]["trainer"]
    infer = CostModel.from_dict(pol["infer"], "infer")
    train = CostModel.from_dict(pol["train"], "train")
    mb = cfg.algo.minibatch_size
    gb = cfg.global_batch()
    costs = {
        "env": per_sample_env / workers,
        "infer": infer(batch / g_r) / batch,
        "train": train(mb / g_t) / mb,
        "sync": pol["sync_s"] / gb,
    }
    worker_load = per_sample_env * managers_per_worker / env.num_managers
    res = place_stages(
        costs, pol["devices"]["rollout"], pol["devices"]["trainer"], env_worker_loads=[worker_load] * workers
    )
    out = pipeline_bound(costs, res)
    out["infer_batch"] = batch
    out["env_steps_per_sample"] = k
    return out


# -- profiles built from the H200 stage-cost measurements ------------------------------------------
def best_fit(points: dict[str | int, float], candidates: tuple[int, ...] = (8, 16, 32)) -> CostModel:
    """``fit_cost`` with the ``min_x`` (among ``candidates``) of the smallest largest relative error;
    a fixed rule, so the profile numbers follow from the measurements alone."""
    fits = [fit_cost(points, m) for m in candidates]
    return min(fits, key=lambda f: fit_error(points, f))


def derive_h200(path: str | Path, model: str) -> dict[str, Any]:
    """Inference and training cost models and the sync cost of ``model`` (``vla_7b``/``vla_0p5b``)
    from ``configs/bench/h200_vla_backbone_stage_costs.json``."""
    data = json.loads(Path(path).read_text())[model]
    infer, train = best_fit(data["infer_s"]), best_fit(data["train_s"])
    return {
        "infer": infer.to_dict(),
        "train": train.to_dict(),
        "infer_max_rel_error": fit_error(data["infer_s"], infer),
        "train_max_rel_error": fit_error(data["train_s"], train),
        "sync_s": float(data["d2h_full_weights_s"]),
    }
