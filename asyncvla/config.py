"""Run configuration: YAML + a validated schema + ``key=value`` overrides.

A wrong key or value fails at start with one line naming the key and what is allowed
(``ConfigError``; the CLI turns it into exit code 2).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class ConfigError(ValueError):
    """A configuration problem, already phrased as one line for the user."""


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
    name: Literal["ppo", "grpo"] = "ppo"
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
    max_grad_norm: float = Field(1.0, gt=0.0)
    normalize_advantages: bool = True
    group_size: int = Field(8, ge=2)
    """GRPO: envs per group sharing one init state (must divide env.num_envs)."""


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


class SFTConfig(_Strict):
    demos: int = Field(20, ge=1)
    """Scripted-expert episodes to behaviour-clone (few-shot)."""
    steps: int = Field(300, ge=1)
    """Gradient steps of behaviour cloning."""
    batch_size: int = Field(64, ge=1)
    lr: float = Field(1e-3, gt=0.0)
    seed_offset: int = Field(2_000_000, ge=0)
    """Demo init states start here (disjoint from RL training and evaluation)."""


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


class EvalConfig(_Strict):
    episodes: int = Field(100, ge=1)
    num_envs: int = Field(50, ge=1)
    seed_offset: int = Field(1_000_000, ge=0)
    """Held-out init states: evaluation uses ``seed_offset + i``; training draws below 1e6."""
    deterministic: bool = True
    quick_episodes: int = Field(50, ge=1)
    """Episodes of the periodic evaluations during training (``train.eval_every``)."""


class Config(_Strict):
    name: str = "run"
    seed: int = 0
    mode: Literal["sync"] = "sync"
    env: EnvConfig = Field(default_factory=EnvConfig)
    policy: PolicyConfig = Field(default_factory=PolicyConfig)
    algo: AlgoConfig = Field(default_factory=AlgoConfig)
    pretrain: PretrainConfig = Field(default_factory=PretrainConfig)
    sft: SFTConfig = Field(default_factory=SFTConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)

    @model_validator(mode="after")
    def _cross_checks(self) -> Config:
        if self.algo.name == "grpo" and self.env.num_envs % self.algo.group_size:
            raise ValueError(
                f"algo.group_size: must divide env.num_envs={self.env.num_envs} for grpo "
                f"(got {self.algo.group_size})"
            )
        if self.algo.clip_low >= 1.0:
            raise ValueError("algo.clip_low: must be < 1")
        return self


def _describe(err: ValidationError) -> str:
    e = err.errors()[0]
    loc = ".".join(str(p) for p in e["loc"]) or "(root)"
    kind, msg = e["type"], e["msg"]
    if kind == "extra_forbidden":
        parent: type[BaseModel] = Config
        for part in e["loc"][:-1]:
            ann = parent.model_fields[str(part)].annotation
            parent = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else parent
        allowed = ", ".join(parent.model_fields)
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
            raise ConfigError(f"config file {p} is not valid YAML: {str(e).splitlines()[0]}") from None
        if not isinstance(tree, dict):
            raise ConfigError(f"config file {p} must hold a mapping at top level")
    for key, value in parse_overrides(overrides or []):
        set_dotted(tree, key, value)
    try:
        return Config.model_validate(tree)
    except ValidationError as e:
        raise ConfigError(_describe(e)) from None


def dump_config(cfg: Config) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
