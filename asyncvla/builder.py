"""Build what a run needs from its config: a probe env, the policy kwargs every policy accepts,
the policy, and a held-out evaluation. ``train``, ``sft``, ``eval``, ``bench`` and the runtime's
auto-tuning all build through here, so none of them imports another entry point."""

from __future__ import annotations

from typing import Any

from asyncvla.config import Config, ConfigError
from asyncvla.envs import make_env
from asyncvla.envs.base import VectorEnv
from asyncvla.policies import Policy, make_policy


def probe_env(cfg: Config) -> VectorEnv:
    """One env, built only to read spaces and vocabulary; bad env kwargs fail here, at start."""
    try:
        return make_env(cfg.env.name, num_envs=1, **cfg.env.kwargs)
    except KeyError as e:
        raise ConfigError(f"env.name: {e.args[0]}") from None
    except (TypeError, ValueError) as e:
        raise ConfigError(f"env.kwargs: {e}") from None
    except ImportError as e:  # the env's simulator is not installed (e.g. libero: `make libero`)
        raise ConfigError(f"env.name: {cfg.env.name}: {e}") from None


def env_spec(env: VectorEnv) -> dict[str, Any]:
    """The generic constructor kwargs every registered policy accepts (see policies/base.py)."""
    space = env.single_observation_space
    act = env.single_action_space
    return {
        "vocabulary": env.vocabulary(),
        "image_size": int(space["image"].shape[0]),
        "image_keys": [k for k in ("image", "wrist_image") if k in space.spaces],
        "state_dim": int(space["state"].shape[0]),
        "action_dim": int(act.shape[0]),
        "action_low": act.low.astype(float).tolist(),
        "action_high": act.high.astype(float).tolist(),
    }


def build_policy(cfg: Config, env: VectorEnv | None = None) -> Policy:
    """The configured policy for ``env``'s spaces (a probe env is built and closed if none is given)."""
    probe = env if env is not None else probe_env(cfg)
    try:
        kwargs = {**env_spec(probe), "chunk_size": cfg.policy.chunk_size, **cfg.policy.kwargs}
    finally:
        if env is None:
            probe.close()
    try:
        return make_policy(cfg.policy.name, **kwargs)
    except KeyError as e:
        raise ConfigError(f"policy.name: {e.args[0]}") from None
    except (TypeError, ValueError) as e:
        raise ConfigError(f"policy.kwargs: {e}") from None


def evaluate(cfg: Config, policy: Policy, episodes: int) -> dict[str, float]:
    """Held-out evaluation as ``cfg.eval`` says (init states ``eval.seed_offset + j``)."""
    from asyncvla.evaluation import evaluate_policy

    return evaluate_policy(
        policy,
        cfg.env.name,
        cfg.env.kwargs,
        episodes=episodes,
        num_envs=cfg.eval.num_envs,
        seed_offset=cfg.eval.seed_offset,
        deterministic=cfg.eval.deterministic,
    )
