"""Env throughput benchmark: how many actions per second a registered env executes.

``python -m asyncvla.envs.speed`` prints tabletop numbers for chunk sizes 1 and 4 (pin one core with
``taskset -c 0`` to get per-core figures).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from asyncvla.envs import make_env


def benchmark_env(
    name: str = "tabletop",
    num_envs: int = 16,
    chunk_size: int = 4,
    steps: int = 20000,
    seed: int = 0,
    **env_kwargs: Any,
) -> dict[str, Any]:
    """Step ``num_envs`` envs with uniform random chunks until ``steps`` actions were executed.

    Done envs are reset as a rollout worker would, and resets are timed too. ``env_steps_per_s``
    counts executed actions; ``decisions_per_s`` counts executed chunks (policy queries).
    ``env_steps_per_cpu_s`` divides by this process's CPU time instead of wall time.
    """
    if chunk_size < 1 or num_envs < 1 or steps < 1:
        raise ValueError("num_envs, chunk_size and steps must all be >= 1")
    env = make_env(name, num_envs=num_envs, seed=seed, **env_kwargs)
    space = env.single_action_space
    rng = np.random.default_rng(seed)
    env.reset(seed=seed)
    env_steps = decisions = 0
    start, cpu_start = time.perf_counter(), time.process_time()
    while env_steps < steps:
        actions = rng.uniform(space.low, space.high, (num_envs, chunk_size, *space.shape)).astype(np.float32)
        _, _, terminated, truncated, info = env.step(actions)
        env_steps += int(info["steps"].sum())
        decisions += int((info["steps"] > 0).sum())
        done = np.flatnonzero(terminated | truncated)
        if done.size:
            env.reset(options={"env_indices": done.tolist()})
    elapsed = time.perf_counter() - start
    cpu_s = time.process_time() - cpu_start
    env.close()
    image_size = env.single_observation_space["image"].shape[0]
    return {
        "env_steps_per_s": env_steps / elapsed,
        "decisions_per_s": decisions / elapsed,
        # CPU seconds of this process (all its threads): steps per CPU second stay comparable on a
        # machine that other jobs share, where wall-clock rates depend on their load.
        "env_steps_per_cpu_s": env_steps / max(cpu_s, 1e-9),
        "num_envs": num_envs,
        "chunk_size": chunk_size,
        "image_size": image_size,
    }


if __name__ == "__main__":
    for k in (1, 4):
        result = benchmark_env(chunk_size=k)
        print(
            f"tabletop {result['image_size']}x{result['image_size']} num_envs={result['num_envs']} "
            f"chunk_size={k}: {result['env_steps_per_s']:.0f} env steps/s, "
            f"{result['decisions_per_s']:.0f} decisions/s"
        )
