"""Trainer: segments -> advantages -> minibatch PPO/GRPO updates -> published weights."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from asyncvla.algos import compute_gae, grpo_advantages, ppo_loss
from asyncvla.config import AlgoConfig
from asyncvla.envs.base import ObsBatch
from asyncvla.policies import Policy
from asyncvla.runtime.types import Segment, concat_obs, take_obs


def segment_advantages(seg: Segment, algo: AlgoConfig) -> tuple[np.ndarray, np.ndarray]:
    """Per-decision advantages and value targets [T, n] for one segment.

    PPO: GAE over the segment, bootstrapped with ``seg.bootstrap_value``.
    GRPO: every decision of an episode gets the group-normalized episode return; decisions of
    groups with identical outcomes are marked invalid by the caller via ``keep``.
    """
    if algo.name == "ppo":
        adv, ret = compute_gae(
            torch.from_numpy(seg.rewards),
            torch.from_numpy(seg.values),
            torch.from_numpy(seg.dones),
            torch.from_numpy(seg.bootstrap_value),
            gamma=algo.gamma,
            lam=algo.gae_lambda,
        )
        return adv.numpy(), ret.numpy()
    ep_return = (seg.rewards * seg.valid).sum(axis=0)
    adv, keep = grpo_advantages(torch.from_numpy(ep_return), torch.from_numpy(seg.group_ids))
    adv_tn = np.broadcast_to(adv.numpy()[None, :], seg.rewards.shape).copy()
    adv_tn[:, ~keep.numpy()] = np.nan  # marks dropped groups; filtered in flatten
    return adv_tn, np.zeros_like(adv_tn)


class Batch:
    """Flat training samples: obs [N, ...], actions [N, K, A], behaviour log-probs/values, targets."""

    def __init__(self, segments: list[Segment], algo: AlgoConfig) -> None:
        obs_parts, cols = [], {k: [] for k in ("actions", "log_probs", "values", "adv", "ret", "versions")}
        for seg in segments:
            adv, ret = segment_advantages(seg, algo)
            keep = seg.valid.reshape(-1) & ~np.isnan(adv.reshape(-1))
            idx = np.flatnonzero(keep)
            obs_parts.append(take_obs(seg.flat_obs(), idx))
            cols["actions"].append(seg.actions.reshape(-1, *seg.actions.shape[2:])[idx])
            cols["log_probs"].append(seg.log_probs.reshape(-1, *seg.log_probs.shape[2:])[idx])
            cols["values"].append(seg.values.reshape(-1)[idx])
            cols["adv"].append(adv.reshape(-1)[idx])
            cols["ret"].append(ret.reshape(-1)[idx])
            cols["versions"].append(seg.versions.reshape(-1)[idx])
        self.obs = concat_obs(obs_parts)
        self.data = {k: np.concatenate(v) for k, v in cols.items()}
        self.size = len(self.data["adv"])

    def minibatch(self, idx: np.ndarray) -> tuple[ObsBatch, dict[str, torch.Tensor]]:
        return take_obs(self.obs, idx), {k: torch.from_numpy(v[idx]) for k, v in self.data.items()}


class Trainer:
    def __init__(self, policy: Policy, algo: AlgoConfig, seed: int = 0) -> None:
        self.policy = policy
        self.algo = algo
        self.optimizer = torch.optim.Adam(policy.parameters(), lr=algo.lr, eps=1e-5)
        self.rng = np.random.default_rng(seed)

    @property
    def version(self) -> int:
        return self.policy.version

    def get_weights(self) -> tuple[int, dict[str, torch.Tensor]]:
        return self.policy.version, {k: v.detach().clone() for k, v in self.policy.state_dict().items()}

    def train(self, segments: list[Segment]) -> dict[str, float]:
        """E epochs of minibatch updates over the segments; publishes one new version."""
        algo = self.algo
        batch = Batch(segments, algo)
        self.policy.train()
        sums: dict[str, float] = {}
        n_mb = 0
        if batch.size > 0:
            adv_all = batch.data["adv"]
            if algo.normalize_advantages and algo.name == "ppo" and batch.size > 1:
                batch.data["adv"] = ((adv_all - adv_all.mean()) / (adv_all.std() + 1e-8)).astype(np.float32)
            for _ in range(algo.epochs):
                perm = self.rng.permutation(batch.size)
                for start in range(0, batch.size, algo.minibatch_size):
                    obs, mb = batch.minibatch(perm[start : start + algo.minibatch_size])
                    out = self.policy.evaluate(obs, mb["actions"])
                    loss, m = ppo_loss(
                        out.log_probs,
                        mb["log_probs"],
                        mb["adv"].float(),
                        out.values,
                        mb["values"],
                        mb["ret"].float(),
                        out.entropy,
                        level=algo.logprob_level,
                        clip_low=algo.clip_low,
                        clip_high=algo.clip_high,
                        value_clip=algo.value_clip,
                        vf_coef=algo.vf_coef if algo.name == "ppo" else 0.0,
                        ent_coef=algo.ent_coef,
                    )
                    self.optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    m["grad_norm"] = float(
                        torch.nn.utils.clip_grad_norm_(self.policy.parameters(), algo.max_grad_norm)
                    )
                    self.optimizer.step()
                    for k, v in m.items():
                        sums[k] = sums.get(k, 0.0) + v
                    n_mb += 1
        self.policy.eval()
        self.policy.version += 1
        metrics = {k: v / max(n_mb, 1) for k, v in sums.items()}
        metrics["train_samples"] = float(batch.size)
        return metrics

    # -- checkpoints ------------------------------------------------------------------------------
    def save_optimizer(self, directory: Path) -> None:
        sd = self.optimizer.state_dict()
        tensors = {
            f"{pid}.{name}": t.contiguous()
            for pid, st in sd["state"].items()
            for name, t in st.items()
            if isinstance(t, torch.Tensor)
        }
        save_file(tensors, str(directory / "optimizer.safetensors"))
        (directory / "optimizer.json").write_text(json.dumps({"param_groups": sd["param_groups"]}))

    def load_optimizer(self, directory: Path) -> None:
        tensors = load_file(str(directory / "optimizer.safetensors"))
        state: dict[int, dict[str, Any]] = {}
        for key, t in tensors.items():
            pid, name = key.split(".", 1)
            state.setdefault(int(pid), {})[name] = t
        groups = json.loads((directory / "optimizer.json").read_text())["param_groups"]
        self.optimizer.load_state_dict({"state": state, "param_groups": groups})
