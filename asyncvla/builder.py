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
    """One env, built only to read spaces and vocabulary; bad env kwargs and shield settings that
    cannot apply to the env fail here, at start."""
    env = probe(cfg.env.name, cfg.env.kwargs)
    from asyncvla.safety.shield import ShieldError, make_shield

    try:
        make_shield(cfg.safety.shield, env)
    except ShieldError as e:
        env.close()
        raise ConfigError(str(e)) from None
    return env


def probe(name: str, kwargs: dict[str, Any]) -> VectorEnv:
    """One env ``name`` with ``kwargs``; a bad name or kwarg raises ConfigError (one line)."""
    try:
        return make_env(name, num_envs=1, **kwargs)
    except KeyError as e:
        raise ConfigError(f"env.name: {e.args[0]}") from None
    except (TypeError, ValueError) as e:
        raise ConfigError(f"env.kwargs: {e}") from None
    except ImportError as e:  # the env's simulator is not installed (e.g. libero: `make libero`)
        raise ConfigError(f"env.name: {name}: {e}") from None


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
    if needs_cost_critic(cfg):
        kwargs["cost_critic"] = True
    try:
        return make_policy(cfg.policy.name, **kwargs)
    except KeyError as e:
        raise ConfigError(f"policy.name: {e.args[0]}") from None
    except (TypeError, ValueError) as e:
        if "cost_critic" in str(e):
            raise ConfigError(
                f"algo.name: {cfg.algo.name} needs a cost critic; policy {cfg.policy.name} has none"
            ) from None
        raise ConfigError(f"policy.kwargs: {e}") from None


def needs_cost_critic(cfg: Config) -> bool:
    from asyncvla.algos import ALGOS

    return bool(getattr(ALGOS.get(cfg.algo.name), "needs_cost_critic", False))


def with_cost_critic(cfg: Config, policy: Policy) -> Policy:
    """``policy`` itself, or (when the algorithm needs a cost critic the checkpoint lacks) the same
    policy rebuilt with a fresh cost head and every other weight loaded from it."""
    if not needs_cost_critic(cfg) or policy.init_kwargs().get("cost_critic"):
        return policy
    try:
        out = make_policy(cfg.policy.name, **{**policy.init_kwargs(), "cost_critic": True})
    except (TypeError, ValueError) as e:
        raise ConfigError(
            f"algo.name: {cfg.algo.name} needs a cost critic; policy {cfg.policy.name}: {e}"
        ) from None
    missing, unexpected = out.load_state_dict(policy.state_dict(), strict=False)
    if unexpected or any(not k.startswith("cost_head.") for k in missing):
        raise ConfigError(f"train.init: the checkpoint does not fit {cfg.policy.name} with a cost critic")
    out.version = policy.version
    return out


def check_fits(policy: Policy, env: VectorEnv, where: str = "the checkpoint") -> None:
    """Refuse, with one line naming both sides, a policy that cannot run on ``env``: an image size,
    state or action dimension other than the env's, a camera the env lacks, or env instruction
    words outside the policy's vocabulary."""
    have = policy.init_kwargs()
    want = env_spec(env)
    for key in ("image_size", "state_dim", "action_dim"):
        if key in have and have[key] != want[key]:
            raise ConfigError(
                f"{where} does not fit the env: policy {key}={have[key]}, env {key}={want[key]}"
            )
    cams = [k for k in have.get("image_keys") or [] if k not in want["image_keys"]]
    if cams:
        raise ConfigError(
            f"{where} does not fit the env: policy image_keys={have['image_keys']}, env observes {want['image_keys']}"
        )
    if have.get("vocabulary") is not None:
        words = sorted(set(want["vocabulary"]) - set(have["vocabulary"]))
        if words:
            raise ConfigError(
                f"{where} does not fit the env: env words {words[:5]} are not in the policy's vocabulary"
            )


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
        shield=cfg.safety.shield if cfg.safety.shield.enabled else None,
    )


def quick_eval(cfg: Config, policy: Policy, update: int) -> dict[str, float]:
    """The held-out evaluation of a metric row (``eval.quick_episodes``): ``eval_success_rate``
    and ``eval_episode_cost``, on its own seeded random stream so that a replay of the run
    computes the same values."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed * 1000 + update)
        res = evaluate(cfg, policy, cfg.eval.quick_episodes)
    return {"eval_success_rate": res["success_rate"], "eval_episode_cost": res["episode_cost"]}
