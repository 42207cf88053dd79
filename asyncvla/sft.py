"""SFT warm start: scripted-expert demos, then behaviour cloning (the usual few-shot VLA recipe)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from asyncvla.augment import drop_obs_words, random_shifts, shift_obs, shift_points
from asyncvla.envs import make_env
from asyncvla.envs.base import ObsBatch
from asyncvla.envs.episodes import run_episodes
from asyncvla.policies import Policy
from asyncvla.runtime.types import concat_obs, take_obs


def collect_demos(
    env_name: str,
    env_kwargs: dict[str, Any],
    episodes: int,
    chunk_size: int,
    seed_offset: int,
    num_envs: int = 16,
    with_points: bool = False,
) -> tuple[ObsBatch, np.ndarray, float]:
    """Roll out the env's scripted expert (``expert_action_chunk``) for ``episodes`` episodes.

    Returns every decision's observation, the expert chunk [N, K, A] (or, ``with_points``, the env's
    pointing labels [N, P, 2] instead) and the expert success rate, episode by episode in time
    order. Episode j starts from init state ``seed_offset + j``.
    """
    env = make_env(env_name, num_envs=min(num_envs, episodes), **env_kwargs)
    if not hasattr(env, "expert_action_chunk"):
        env.close()
        raise ValueError(f"env {env_name!r} has no scripted expert (expert_action_chunk)")
    if with_points and not hasattr(env, "pointing_targets"):
        env.close()
        raise ValueError(f"env {env_name!r} has no pointing labels (pointing_targets)")
    frames: list[list[tuple[ObsBatch, np.ndarray]]] = [[] for _ in range(episodes)]

    def record(obs: ObsBatch, slots: np.ndarray, eps: np.ndarray, chunk: np.ndarray) -> None:
        labels = env.pointing_targets()[slots] if with_points else chunk
        for j, (slot, ep) in enumerate(zip(slots, eps, strict=True)):
            frames[ep].append((take_obs(obs, [slot]), labels[j : j + 1].astype(np.float32)))

    try:
        eps = run_episodes(env, episodes, seed_offset, lambda o: env.expert_action_chunk(chunk_size), record)
    finally:
        env.close()
    successes = [e.success for e in eps]
    ordered = [f for episode in frames for f in episode]  # episode by episode, in time order
    obs_parts = [o for o, _ in ordered]
    act_parts = [a for _, a in ordered]
    return concat_obs(obs_parts), np.concatenate(act_parts), float(np.mean(successes))


def behaviour_clone(
    policy: Policy,
    obs: ObsBatch,
    actions: np.ndarray,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int = 0,
    on_step: Callable[[int, float], None] | None = None,
    augment_shift: int = 0,
    augment_pad: str = "edge",
    augment_word_dropout: float = 0.0,
) -> list[float]:
    """Minimise the negative log-likelihood of the expert chunks, -mean(log pi(a_expert | o)).

    Counted in gradient steps, not epochs: few-shot data sets hold only tens of decisions.
    ``augment_shift`` > 0: every minibatch's images are randomly shifted by up to that many pixels
    (``asyncvla.augment``, per sample), actions unchanged: the expert's move does not depend on
    where the camera is. ``augment_pad``: what the border shows (``asyncvla.augment``).
    ``augment_word_dropout``: each instruction word becomes ``<unk>`` with this probability.
    """
    rng = np.random.default_rng(seed)
    aug_rng = np.random.default_rng([seed, 1])  # its own stream: augment_shift=0 draws nothing
    word_rng = np.random.default_rng([seed, 2])
    image_keys = getattr(policy, "image_keys", ["image"])
    opt = torch.optim.Adam(policy.parameters(), lr=lr)
    n = len(actions)
    losses = []
    policy.train()
    perm, pos = rng.permutation(n), 0
    for step in range(steps):
        if pos >= n:
            perm, pos = rng.permutation(n), 0
        idx = perm[pos : pos + batch_size]
        pos += batch_size
        mb_obs = take_obs(obs, idx)
        if augment_shift:
            shifts = random_shifts(len(idx), augment_shift, aug_rng)
            mb_obs = shift_obs(mb_obs, shifts, image_keys, augment_pad)
        if augment_word_dropout:
            mb_obs = drop_obs_words(mb_obs, augment_word_dropout, word_rng)
        out = policy.evaluate(mb_obs, torch.from_numpy(actions[idx]))
        loss = -out.log_probs.mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
        opt.step()
        losses.append(float(loss.detach()))
        if on_step is not None:
            on_step(step, losses[-1])
    policy.eval()
    return losses


def pretrain_grounding(
    policy: Policy,
    obs: ObsBatch,
    points: np.ndarray,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int = 0,
    on_epoch: Callable[[int, float], None] | None = None,
    augment_shift: int = 0,
    augment_pad: str = "edge",
    augment_word_dropout: float = 0.0,
) -> list[float]:
    """Teach the policy to point: minimise sum_p ||keypoint_p(o) - label_p||^2 over the P labels.

    The stand-in for the vision-language pretraining a real VLA inherits from its backbone; it uses
    labels only (where the named object is, where it goes, where the gripper is), never actions.
    ``augment_shift`` > 0: each minibatch's images move by a random (dx, dy) in
    [-augment_shift, augment_shift]^2 pixels per sample and its labels by (dx, dy) / image_size, so
    the keypoints learn to follow the content rather than fixed image positions (``augment_pad``:
    what the uncovered border shows, ``asyncvla.augment``). ``augment_word_dropout``: each
    instruction word becomes ``<unk>`` with this probability.
    """
    if not hasattr(policy, "point"):
        raise ValueError(f"{type(policy).__name__} has no point() head for grounding pretraining")
    # A policy supervises the leading labels it reads (``pointing_labels``; default: all of them).
    points = points[:, : getattr(policy, "pointing_labels", points.shape[1])]
    with torch.no_grad():
        n_kp = policy.point(take_obs(obs, np.arange(1))).shape[1]
    if n_kp < points.shape[1]:
        raise ValueError(
            f"the policy has {n_kp} keypoints, fewer than the {points.shape[1]} pointing labels per "
            "frame (tiny_vla: policy.kwargs.n_keypoints)"
        )
    # Pretraining is what the encoder is for: train it even when the policy freezes it afterwards.
    frozen = [p for p in policy.parameters() if not p.requires_grad]
    for p in frozen:
        p.requires_grad_(True)
    rng = np.random.default_rng(seed)
    aug_rng = np.random.default_rng([seed, 1])
    word_rng = np.random.default_rng([seed, 2])
    image_keys = getattr(policy, "image_keys", ["image"])
    image_size = np.asarray(obs[image_keys[0]]).shape[2]
    opt = torch.optim.Adam(policy.parameters(), lr=lr)
    n, n_points = len(points), points.shape[1]
    losses = []
    policy.train()
    for epoch in range(epochs):
        perm = rng.permutation(n)
        total = 0.0
        for start in range(0, n, batch_size):
            idx = perm[start : start + batch_size]
            mb_obs, mb_points = take_obs(obs, idx), points[idx]
            if augment_shift:
                shifts = random_shifts(len(idx), augment_shift, aug_rng)
                mb_obs = shift_obs(mb_obs, shifts, image_keys, augment_pad)
                mb_points = shift_points(mb_points, shifts, image_size)
            if augment_word_dropout:
                mb_obs = drop_obs_words(mb_obs, augment_word_dropout, word_rng)
            pred = policy.point(mb_obs)[:, :n_points]
            loss = (pred - torch.from_numpy(mb_points)).pow(2).sum(-1).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        losses.append(total / n)
        if on_epoch is not None:
            on_epoch(epoch, losses[-1])
    for p in frozen:
        p.requires_grad_(False)
    policy.eval()
    return losses
