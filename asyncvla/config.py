"""Run configuration: YAML + a validated schema + ``key=value`` overrides.

A wrong key or value fails at start with one line naming the key and what is allowed
(``ConfigError``; the CLI turns it into exit code 2).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class ConfigError(ValueError):
    """A configuration problem, already phrased as one line for the user."""


class CheckpointError(ValueError):
    """A checkpoint directory that cannot be loaded (one line: which file and why)."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class EnvConfig(_Strict):
    name: str = "tabletop"
    """Registered env name (``asyncvla.envs.ENVS``)."""
    num_envs: int = Field(16, ge=1)
    """Envs per env manager (one vectorized batch)."""
    num_managers: int = Field(1, ge=1)
    """Env managers; each steps independently and is routed to a rollout worker."""
    kwargs: dict[str, Any] = Field(default_factory=dict)
    """Passed to the env factory (e.g. ``family``, ``n_objects``, ``latency``)."""


class PolicyConfig(_Strict):
    name: str = "tiny_vla"
    """Registered policy name (``asyncvla.policies.POLICIES``)."""
    chunk_size: int = Field(4, ge=1)
    """K: actions per decision (action chunk)."""
    kwargs: dict[str, Any] = Field(default_factory=dict)
    """Passed to the policy factory (e.g. ``head``, ``size``)."""


class AlgoConfig(_Strict):
    name: str = "ppo"
    """Registered algorithm (``asyncvla.algos.ALGOS``: ppo, grpo) or a plug-in ``package.module:Class``."""
    gamma: float = Field(0.99, ge=0.0, le=1.0)
    """Discount per decision (one action chunk)."""
    gae_lambda: float = Field(0.95, ge=0.0, le=1.0)
    clip_low: float = Field(0.2, gt=0.0, lt=1.0)
    clip_high: float = Field(0.28, gt=0.0)
    value_clip: float | None = Field(0.2, gt=0.0)
    vf_coef: float = Field(0.5, ge=0.0)
    ent_coef: float = Field(0.0, ge=0.0)
    logprob_level: Literal["token", "action", "chunk"] = "action"
    """Where per-token log-probs are summed before the PPO ratio."""
    epochs: int = Field(4, ge=1)
    minibatch_size: int = Field(256, ge=1)
    lr: float = Field(3e-4, gt=0.0)
    anneal_lr: bool = True
    """Decay the learning rate linearly to 0 over ``train.updates`` (CleanRL's PPO default)."""
    max_grad_norm: float = Field(1.0, gt=0.0)
    normalize_advantages: bool = True
    """Normalize advantages per minibatch (CleanRL); GRPO advantages are group-normalized already."""
    off_policy: Literal["none", "decoupled", "tis"] = "decoupled"
    """Correction for stale samples (behaviour version < trainer version): ``none`` treats the
    behaviour policy as PPO's old policy; ``decoupled`` clips against a proximal policy and weights
    by pi_prox / pi_behaviour; ``tis`` is the same with the weight truncated at ``is_cap``."""
    proximal: Literal["recompute", "interpolate"] = "recompute"
    """Proximal log-probs of stale samples: a no-grad forward with the weights the batch starts from,
    or an interpolation between behaviour and current log-probs (no extra forward)."""
    is_cap: float = Field(2.0, gt=0.0)
    """Truncation of the importance weight for ``off_policy: tis``."""
    group_size: int = Field(8, ge=2)
    """GRPO: envs per group sharing one init state (must divide env.num_envs)."""
    cost_limit: float | None = Field(None, ge=0.0)
    """PPO-Lagrangian: the mean episode cost (``info["cost"]`` summed over an episode) to stay at or below."""
    lagrangian: Literal["dual", "pid"] = "dual"
    """How the multiplier follows the constraint violation: dual ascent or PID (Stooke et al., 2020)."""
    lagrangian_lr: float = Field(0.05, gt=0.0)
    """Dual-ascent step per update and unit of violation (the integral gain of ``pid``)."""
    lagrangian_kp: float = Field(0.0, ge=0.0)
    """``pid``: proportional gain."""
    lagrangian_kd: float = Field(0.0, ge=0.0)
    """``pid``: derivative gain (on increases of the episode cost)."""
    lagrange_init: float = Field(0.0, ge=0.0)
    """The multiplier at the start."""


class PretrainConfig(_Strict):
    """Grounding pretraining (pointing at named objects) before SFT; off by default."""

    enabled: bool = False
    families: list[str] = Field(default_factory=lambda: ["reach", "goal"])
    """Env ``family`` values whose scenes provide pointing labels (other tasks than the RL one)."""
    episodes: int = Field(400, ge=1)
    epochs: int = Field(8, ge=1)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(1e-3, gt=0.0)
    seed_offset: int = Field(3_000_000, ge=0)
    augment_shift: int = Field(0, ge=0)
    """DrQ-style random shift (``asyncvla.augment``): each image moves by up to this many pixels per
    axis, its pointing labels with it (0: off; at most image_size // 4)."""
    augment_pad: Literal["edge", "zero"] = "edge"
    """What the shifted image shows where it uncovers the border: the edge pixels repeated (DrQ) or
    black (``zero``: like a camera that sees beyond the scene)."""
    augment_word_dropout: float = Field(0.0, ge=0.0, lt=0.5)
    """Probability that each instruction word is replaced by ``<unk>`` (``asyncvla.augment``), so
    the grounding survives words it never saw (0: off)."""


class SFTConfig(_Strict):
    demos: int = Field(20, ge=1)
    """Scripted-expert episodes to behaviour-clone (few-shot)."""
    steps: int = Field(300, ge=1)
    """Gradient steps of behaviour cloning."""
    batch_size: int = Field(64, ge=1)
    lr: float = Field(1e-3, gt=0.0)
    seed_offset: int = Field(2_000_000, ge=0)
    """Demo init states start here (disjoint from RL training and evaluation)."""
    augment_shift: int = Field(0, ge=0)
    """DrQ-style random shift of the demo images by up to this many pixels per axis, actions
    unchanged (0: off; at most image_size // 4)."""
    augment_pad: Literal["edge", "zero"] = "edge"
    """As ``pretrain.augment_pad``."""
    augment_word_dropout: float = Field(0.0, ge=0.0, lt=0.5)
    """As ``pretrain.augment_word_dropout``, on the demos' instructions."""


class TrainConfig(_Strict):
    updates: int = Field(50, ge=1)
    rollout_steps: int = Field(16, ge=1)
    """T: decisions per env per update (sync) or per segment (async)."""
    init: str | None = None
    """Start weights: None (random), ``sft`` (run the SFT stage first) or a checkpoint dir."""
    eval_every: int = Field(0, ge=0)
    """Updates between quick evaluations (0: only the final one)."""
    checkpoint_every: int = Field(10, ge=1)
    torch_threads: int = Field(0, ge=0)
    """torch intra-op threads of the driver process (0: leave torch's default)."""
    cache_features: bool = True
    """Compute the frozen part's features (``Policy.frozen_features``) once per sample per update
    and reuse them across epochs, minibatches and the proximal recompute (false: recompute them
    in every forward pass; the same values)."""
    ship_features: bool = True
    """With ``cache_features``: rollout workers return those features with the actions (from the
    forward they run anyway, where the policy supports it: TinyVLA) and segments carry them to the
    trainer, which then skips its own pass over the frozen part."""


class EvalConfig(_Strict):
    episodes: int = Field(300, ge=1)
    """Held-out episodes of the evaluations before and after RL (300: a 95% interval of about
    +-0.05 on the success rate; ``summary.json`` reports it)."""
    num_envs: int = Field(50, ge=1)
    seed_offset: int = Field(1_000_000, ge=0)
    """Held-out init states: evaluation uses ``seed_offset + i``; training draws below 1e6."""
    deterministic: bool = True
    quick_episodes: int = Field(50, ge=1)
    """Episodes of the periodic evaluations during training (``train.eval_every``)."""


class AsyncSwitches(_Strict):
    """Which barriers ``mode: async`` removes (each row of the RL-VLA^3 ablation is one setting)."""

    env: bool = True
    """Env managers step independently (False: the managers of an env worker step in lockstep)."""
    rollout: bool = True
    """Dynamic batching (False: a rollout worker waits until every routed shard has asked)."""
    train: bool = True
    """Collection continues while the trainer trains (False: max_staleness is forced to 0)."""
    streamer: bool = False
    """The first epoch runs forward/backward per micro-batch as segments arrive and accumulates
    gradients until the global batch is complete (False: train once the whole batch is in)."""


class Resources(_Strict):
    cpus: float = Field(0.0, ge=0.0)
    """Logical Ray CPUs reserved per worker (scheduling only; 0 fits anywhere, as on a laptop)."""
    gpus: float = Field(0.0, ge=0.0)
    """Ray GPUs per worker (fractions share a device)."""
    torch_threads: int = Field(0, ge=0)
    """Torch intra-op threads per worker (0: from the placement and the machine's cores)."""


class RuntimeConfig(_Strict):
    """How the workers are laid out and scheduled (sync and async share every field)."""

    num_env_workers: int = Field(1, ge=1)
    num_rollout_workers: int = Field(1, ge=1)
    sharding: Literal["round_robin"] | dict[int, list[int]] = "round_robin"
    """Manager -> rollout workers: ``round_robin``, or explicit ``{manager: [worker, ...]}``;
    a manager routed to several workers has its envs split evenly between them."""
    max_staleness: int = Field(1, ge=0)
    """eta: a sample of behaviour version v is trained at trainer version <= v + eta (sync: 0)."""
    global_batch_samples: int = Field(0, ge=0)
    """Samples per optimizer publish (0: one segment of every env, num_managers*num_envs*T)."""
    max_batch_samples: int = Field(64, ge=1)
    """Dynamic batching: a rollout batch closes at this many samples ..."""
    batch_timeout_ms: float = Field(10.0, ge=0.0)
    """... or this long after it opened, whichever comes first."""
    auto_tune: bool = False
    """Choose ``max_batch_samples`` and ``batch_timeout_ms`` at start from measured inference and
    env-step latencies (``asyncvla.runtime.autotune``; docs/performance.md) instead of the values above."""
    queue_segments: int = Field(8, ge=1)
    """Capacity of the bounded segment queue in front of the trainer."""
    placement: Literal["colocated", "disaggregated", "hybrid", "auto"] = "colocated"
    """colocated: rollout and trainer share a device (on CPU: all cores each); disaggregated:
    separate devices (on CPU: the cores are divided); hybrid: env workers share the rollout
    workers' cores, the trainer has its own; auto: the placement the simulator predicts fastest
    for ``auto_profile``'s stage costs, chosen at start (``asyncvla.runtime.autoplace``)."""
    auto_profile: str | None = None
    """The stage costs ``placement: auto`` and ``mode: auto`` simulate: a benchmark profile name
    (``configs/bench``) or YAML path (docs/performance.md, "The auto row")."""
    env: Resources = Field(default_factory=Resources)
    rollout: Resources = Field(default_factory=Resources)
    trainer: Resources = Field(default_factory=Resources)
    passive_threads: bool = False
    """Workers' OpenMP threads sleep when idle (``OMP_WAIT_POLICY=PASSIVE``) instead of spinning
    (off: on a 2-core CPU it slows the quickstart, see docs/performance.md)."""
    start_timeout_s: float = Field(180.0, gt=0.0)
    """Every actor must be placed and constructed within this time, else the run fails naming them."""
    stall_timeout_s: float = Field(900.0, gt=0.0)
    """Watchdog: the run fails (all workers stopped) if no update completes for this long."""
    max_restarts: int = Field(3, ge=0)
    """Supervision: an env or rollout worker that dies is restarted, at most this many times per
    worker within ``restart_window_s``; one more stops the run naming the worker and the last
    cause (0: no restarts, the first failure stops the run)."""
    restart_window_s: float = Field(600.0, gt=0.0)
    """The crash-loop window of ``max_restarts``."""
    max_env_errors: int = Field(20, ge=0)
    """A simulator that raises inside ``step`` or ``reset`` is handled by its env manager (the
    affected episodes dropped, the envs reset or rebuilt) up to this many times per manager within
    ``restart_window_s``; one more fails the env worker (then supervision restarts it)."""
    deterministic: bool = False
    """Deterministic kernels in every worker (``torch.use_deterministic_algorithms``, cuDNN
    autotuning off, ``CUBLAS_WORKSPACE_CONFIG=:4096:8``): what a GPU run needs for bit-identical
    reruns and replays; CPU kernels are deterministic without it."""
    record_schedule: bool = True
    """Record what ``asyncvla replay`` needs in ``events.jsonl`` and the metric rows: each inference
    batch's requests, each segment's ticket, each update's segment order, a digest of every
    published weight version; action sampling is seeded per batch. Off only to measure its cost."""
    address: str | None = None
    """Ray cluster to join (``auto`` or HOST:PORT); None starts a local instance."""


class ShieldConfig(_Strict):
    """The action shield: every action an env worker sends to the simulator is projected onto the
    safe set these limits define (``asyncvla.safety.shield``); off when no limit is set."""

    workspace: list[float] | None = None
    """Bounds of the end effector's commanded position, ``[lo_1, .., lo_d, hi_1, .., hi_d]`` over
    the env's position coordinates (tabletop: ``[x_lo, y_lo, x_hi, y_hi]`` in table units 0..1;
    LIBERO: x, y, z in metres)."""
    max_delta: float | None = Field(None, gt=0.0)
    """Largest change of each motion action dimension from one action to the next (action units)."""
    close_max_speed: float | None = Field(None, ge=0.0)
    """The gripper may close only while every motion action dimension is at most this (action units)."""

    @property
    def enabled(self) -> bool:
        return self.workspace is not None or self.max_delta is not None or self.close_max_speed is not None


class SafetyConfig(_Strict):
    shield: ShieldConfig = Field(default_factory=ShieldConfig)


ALERTS = (
    "nan",
    "success_collapse",
    "return_collapse",
    "kl_spike",
    "entropy_collapse",
    "staleness_pinned",
    "latency_drift",
    "heartbeat",
)
"""Every alert the training monitor raises (``asyncvla.safety.monitor``; README, *Safety*)."""


class AlertThresholds(_Strict):
    """When each alert fires (``monitor.thresholds``); ``nan`` has no threshold."""

    success_collapse: float = Field(0.3, gt=0.0, le=1.0)
    """The rolling training success falls this far below its best of the run."""
    return_collapse: float = Field(0.5, gt=0.0, le=1.0)
    """The rolling training return falls below (1 - this) x its best of the run."""
    kl_spike: float = Field(0.3, gt=0.0)
    """An update's ``approx_kl`` exceeds this."""
    entropy_collapse: float = Field(2.0, gt=0.0)
    """The mean entropy per action token falls this many nats below its value at the first update."""
    staleness_pinned: int = Field(50, ge=1)
    """This many consecutive updates train every sample at the staleness bound (``staleness_mean``
    equal to ``runtime.max_staleness`` > 0) while the trainer is busy less than
    ``staleness_pinned_busy`` of each update: the bound, not the trainer, limits the pipeline."""
    staleness_pinned_busy: float = Field(0.9, gt=0.0, le=1.0)
    """``trainer_busy_frac`` at or above which a run counts as trainer-bound (then training at the
    bound is expected and ``staleness_pinned`` does not count the update)."""
    latency_drift: float = Field(3.0, gt=1.0)
    """An env worker's time per env step grows this many times over its value at the start."""
    heartbeat_s: float = Field(120.0, gt=0.0)
    """An env worker has sent no progress report for this many seconds."""
    warmup_updates: int = Field(10, ge=0)
    """Updates before the collapse, entropy and drift alerts arm (their references settle)."""


class MonitorConfig(_Strict):
    """Live checks of every metric row and of the workers while training (``alerts.jsonl``)."""

    enabled: bool = True
    on_nan: Literal["rollback", "stop"] = "rollback"
    """A non-finite loss, gradient or weight: ``rollback`` restores the last good checkpoint,
    skips the batch (counted in ``skipped_batches``) and continues; ``stop`` ends the run."""
    max_rollbacks: int = Field(3, ge=0)
    """More rollbacks than this in one run stop it (the fault is not transient)."""
    disable: list[str] = Field(default_factory=list)
    """Alert names not to raise (see ``ALERTS``)."""
    thresholds: AlertThresholds = Field(default_factory=AlertThresholds)
    repeat_every: int = Field(25, ge=1)
    """An alert that stays active is repeated on the console at most once per this many updates."""

    @field_validator("disable")
    @classmethod
    def _known(cls, names: list[str]) -> list[str]:
        unknown = [a for a in names if a not in ALERTS]
        if unknown:
            raise ValueError(f"unknown alert {unknown[0]!r}; allowed: {', '.join(ALERTS)}")
        return names


DATA_SEED_STRIDE = 10_000
"""The demo and pretraining scenes of seed s start ``DATA_SEED_STRIDE * s`` after their
``seed_offset`` (the evaluation scenes are the same for every seed)."""


class Config(_Strict):
    name: str = "run"
    seed: int = Field(0, ge=0)
    """Reseeds everything: weights, minibatch order, env sampling and the demo / pretraining scenes
    (``DATA_SEED_STRIDE``); evaluation uses the same held-out scenes for every seed."""
    mode: Literal["sync", "async", "auto"] = "sync"
    """sync: barrier schedule (eta = 0, lockstep envs, static batching); async: see ``async``;
    auto: the schedule and switches the simulator predicts fastest (``runtime.auto_profile``)."""
    env: EnvConfig = Field(default_factory=EnvConfig)
    policy: PolicyConfig = Field(default_factory=PolicyConfig)
    algo: AlgoConfig = Field(default_factory=AlgoConfig)
    pretrain: PretrainConfig = Field(default_factory=PretrainConfig)
    sft: SFTConfig = Field(default_factory=SFTConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    async_: AsyncSwitches = Field(default_factory=AsyncSwitches, alias="async")
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig)
    safety: SafetyConfig = Field(default_factory=SafetyConfig)
    monitor: MonitorConfig = Field(default_factory=MonitorConfig)

    model_config = ConfigDict(extra="forbid", validate_assignment=True, populate_by_name=True)

    @model_validator(mode="after")
    def _cross_checks(self) -> Config:
        from asyncvla.algos import ALGOS

        try:
            algo = ALGOS.get(self.algo.name)
        except KeyError as e:
            raise ValueError(f"algo.name: {e.args[0]}") from None
        algo.check(self)
        if self.algo.cost_limit is not None and not algo.needs_cost_critic:
            raise ValueError(f"algo.cost_limit: {self.algo.name} ignores it; use algo.name=ppo_lagrangian")
        if self.algo.clip_low >= 1.0:
            raise ValueError("algo.clip_low: must be < 1")
        size = int(self.env.kwargs.get("image_size", self.policy.kwargs.get("image_size", 64)))
        for section in ("pretrain", "sft"):
            shift = getattr(self, section).augment_shift
            if shift > size // 4:
                raise ValueError(
                    f"{section}.augment_shift: {shift} exceeds image_size // 4 = {size // 4} "
                    f"(image_size {size}: env.kwargs.image_size, 64 when unset)"
                )
        rt = self.runtime
        if isinstance(rt.sharding, dict):
            for m, workers in rt.sharding.items():
                if not 0 <= m < self.env.num_managers:
                    raise ValueError(
                        f"runtime.sharding: manager {m} does not exist (0..{self.env.num_managers - 1})"
                    )
                if not workers or any(not 0 <= w < rt.num_rollout_workers for w in workers):
                    raise ValueError(
                        f"runtime.sharding: manager {m} -> {workers}; workers are 0..{rt.num_rollout_workers - 1}"
                    )
                if len(workers) > self.env.num_envs:
                    raise ValueError(f"runtime.sharding: manager {m} has fewer envs than workers {workers}")
        if (self.mode == "auto" or rt.placement == "auto") and not rt.auto_profile:
            raise ValueError(
                "runtime.auto_profile: mode or placement auto needs the stage costs to simulate: "
                "a benchmark profile name (configs/bench) or YAML path"
            )
        if self.env.num_managers < rt.num_env_workers:
            raise ValueError(
                f"runtime.num_env_workers: {rt.num_env_workers} workers need >= that many env.num_managers"
            )
        return self

    def schedule(self) -> tuple[AsyncSwitches, int]:
        """The effective switches and staleness bound: ``mode: sync`` turns every switch off."""
        if self.mode == "auto" or self.runtime.placement == "auto":
            raise ValueError("mode/placement auto: resolve the config first (asyncvla.runtime.autoplace)")
        if self.mode == "sync":
            return AsyncSwitches(env=False, rollout=False, train=False, streamer=False), 0
        sw = self.async_
        return sw, (self.runtime.max_staleness if sw.train else 0)

    def global_batch(self) -> int:
        if self.runtime.global_batch_samples:
            return self.runtime.global_batch_samples
        return self.env.num_managers * self.env.num_envs * self.train.rollout_steps


def _describe(err: ValidationError) -> str:
    e = err.errors()[0]
    loc = ".".join(str(p) for p in e["loc"]) or "(root)"
    kind, msg = e["type"], e["msg"]
    if kind == "extra_forbidden":
        parent: type[BaseModel] = Config
        for part in e["loc"][:-1]:
            fields = {f.alias or n: f for n, f in parent.model_fields.items()}
            ann = fields[str(part)].annotation
            parent = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else parent
        allowed = ", ".join(f.alias or n for n, f in parent.model_fields.items())
        return f"{loc}: unknown key; allowed: {allowed}"
    if kind == "value_error":
        # Cross-field checks name their keys themselves; field checks get the location prefix.
        msg = msg.removeprefix("Value error, ")
        return msg if loc == "(root)" else f"{loc}: {msg}"
    return f"{loc}: {msg} (got {e.get('input')!r})"


def set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    """Set ``tree["a"]["b"] = value`` for ``key="a.b"``, creating dicts as needed."""
    parts = key.split(".")
    node = tree
    for p in parts[:-1]:
        nxt = node.setdefault(p, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"{key}: {p} is a value, not a section")
        node = nxt
    node[parts[-1]] = value


def parse_overrides(overrides: list[str]) -> list[tuple[str, Any]]:
    """``["algo.lr=1e-3", "env.kwargs.family=object"]`` -> typed (key, value) pairs (YAML scalars)."""
    pairs = []
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"{item}: overrides look like key=value (e.g. algo.lr=1e-3)")
        key, raw = item.split("=", 1)
        if not key:
            raise ConfigError(f"{item}: empty key")
        pairs.append((key.strip(), yaml.safe_load(raw) if raw else None))
    return pairs


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Read YAML (optional), apply overrides, validate. Raises ConfigError with one line."""
    tree: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {p} does not exist")
        try:
            tree = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            what = getattr(e, "problem", None) or str(e).splitlines()[0]
            raise ConfigError(f"config file {p} is not valid YAML{where}: {what}") from None
        if not isinstance(tree, dict):
            raise ConfigError(f"config file {p} must hold a mapping at top level")
    for key, value in parse_overrides(overrides or []):
        set_dotted(tree, key, value)
    try:
        return Config.model_validate(tree)
    except ValidationError as e:
        raise ConfigError(_describe(e)) from None


def dump_config(cfg: Config) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json", by_alias=True), sort_keys=False)
