"""Learner: the trainer's math. Segments -> samples with advantages -> minibatch updates of the
policy with the algorithm's loss and the off-policy correction -> a new version.

Two schedules through a global batch of N samples (E = ``algo.epochs``, m = ``algo.minibatch_size``):

* ``train(segments)`` (the batch is complete): E epochs, each a fresh permutation of the N
  samples cut into minibatches of m, one optimizer step per minibatch: E * ceil(N / m) steps.
* streaming (``stream_add`` per arriving segment, ``stream_finish`` at the end of the batch): the
  first epoch runs forward/backward per micro-batch of m samples in arrival order as soon as one
  is full and accumulates the gradients (each micro-batch's loss weighted by its sample count, the
  partial last one included); it ends in ONE optimizer step over the whole batch. Epochs 2..E then
  run as above: 1 + (E - 1) * ceil(N / m) steps.

The two agree exactly when the minibatch covers the global batch (m >= N) and E = 1; otherwise the
streamer takes fewer, larger first-epoch steps (the price of training while the batch arrives).

Every sample carries its behaviour version v; the learner at version u refuses (and counts) any
with u - v > max_staleness. Stale samples are corrected as ``algo.off_policy`` says
(``algos/offpolicy.py``); the proximal policy is the one the batch starts from (version u).
The learning rate follows ``torch.optim.lr_scheduler.LambdaLR`` (linear decay to 0 over
``total_updates`` with ``algo.anneal_lr``), stepped once per update and checkpointed with the
optimizer.

Frozen features: when the policy has a frozen part (``Policy.frozen_features`` is not None), its
outputs are computed once per sample as the sample arrives (in micro-batches) and every forward
pass of the update reads them: E epochs, the proximal recompute and the streamer's first pass.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from asyncvla.algos import correction, interpolated_proximal, make_algo
from asyncvla.config import AlgoConfig
from asyncvla.envs.base import ObsBatch
from asyncvla.policies import Policy
from asyncvla.rundir import atomic_write_text
from asyncvla.runtime.types import Segment, concat_obs, take_obs

COLUMNS = ("actions", "log_probs", "values", "adv", "ret", "versions")


class Samples:
    """Flat training samples: obs [N, ...] and columns actions [N, K, A], behaviour log-probs,
    values, advantages, returns, versions (and, once computed, proximal log-probs ``prox``);
    ``feats``: the policy's ``frozen_features`` of ``obs`` (None: not cached)."""

    def __init__(
        self,
        obs: ObsBatch | None,
        data: dict[str, np.ndarray],
        feats: dict[str, torch.Tensor] | None = None,
    ) -> None:
        self.obs = obs
        self.data = data
        self.feats = feats
        self.size = len(data["adv"]) if data else 0

    @classmethod
    def empty(cls) -> Samples:
        return cls(None, {})

    @classmethod
    def from_segment(
        cls,
        seg: Segment,
        adv: np.ndarray,
        ret: np.ndarray,
        keep_mask: np.ndarray,
        with_features: bool = False,
        cost: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> Samples:
        """Flatten a segment's valid decisions with finite advantages (and ``keep_mask``);
        ``with_features``: their rows of the segment's shipped features, if it has them;
        ``cost``: cost advantages and targets [T, n] (columns ``cadv``, ``cret``, ``cvalues``)."""
        keep = seg.valid.reshape(-1) & ~np.isnan(adv.reshape(-1)) & keep_mask.reshape(-1)
        idx = np.flatnonzero(keep)
        data = {
            "actions": seg.actions.reshape(-1, *seg.actions.shape[2:])[idx],
            "log_probs": seg.log_probs.reshape(-1, *seg.log_probs.shape[2:])[idx],
            "values": seg.values.reshape(-1)[idx],
            "adv": adv.reshape(-1)[idx].astype(np.float32),
            "ret": ret.reshape(-1)[idx].astype(np.float32),
            "versions": seg.versions.reshape(-1)[idx],
        }
        if cost is not None:
            data["cadv"] = cost[0].reshape(-1)[idx].astype(np.float32)
            data["cret"] = cost[1].reshape(-1)[idx].astype(np.float32)
            data["cvalues"] = seg.cost_values.reshape(-1)[idx].astype(np.float32)
        feats = None
        if with_features and seg.features is not None:  # shipped by the rollout workers
            feats = {
                k: torch.from_numpy(np.ascontiguousarray(v.reshape(-1, *v.shape[2:])[idx]))
                for k, v in seg.features.items()
            }
        return cls(take_obs(seg.flat_obs(), idx), data, feats)

    @staticmethod
    def concat(parts: list[Samples]) -> Samples:
        parts = [p for p in parts if p.size]
        if not parts:
            return Samples.empty()
        if len(parts) == 1:
            return parts[0]
        keys = set.intersection(*(set(p.data) for p in parts))
        feats = None
        if all(p.feats is not None for p in parts):
            feats = {k: torch.cat([p.feats[k] for p in parts]) for k in parts[0].feats}
        return Samples(
            concat_obs([p.obs for p in parts]),
            {k: np.concatenate([p.data[k] for p in parts]) for k in keys},
            feats,
        )

    def take(self, idx: np.ndarray) -> Samples:
        feats = None
        if self.feats is not None:
            rows = torch.from_numpy(np.asarray(idx, dtype=np.int64))
            feats = {k: v[rows] for k, v in self.feats.items()}
        return Samples(take_obs(self.obs, idx), {k: v[idx] for k, v in self.data.items()}, feats)

    def split(self, n: int) -> tuple[Samples, Samples]:
        head, tail = np.arange(min(n, self.size)), np.arange(min(n, self.size), self.size)
        return self.take(head), self.take(tail)

    def tensors(self) -> dict[str, torch.Tensor]:
        return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in self.data.items()}


class Learner:
    def __init__(
        self,
        policy: Policy,
        algo: AlgoConfig,
        *,
        total_updates: int | None = None,
        seed: int = 0,
        max_staleness: int | None = None,
        micro_batch: int | None = None,
        cache_features: bool = True,
    ) -> None:
        """``total_updates``: the horizon of the linear learning-rate decay (None: constant).
        ``cache_features``: compute the policy's ``frozen_features`` once per sample per update and
        reuse them in every forward pass of that update (False: recompute them each time)."""
        self.policy = policy
        self.cache_features = cache_features
        self.algo = algo
        self.method = make_algo(algo)
        self.max_staleness = max_staleness
        self.micro_batch = micro_batch or algo.minibatch_size
        self.optimizer = torch.optim.Adam(policy.parameters(), lr=algo.lr, eps=1e-5)
        anneal = algo.anneal_lr and total_updates is not None
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, (lambda u: max(0.0, 1.0 - u / total_updates)) if anneal else (lambda u: 1.0)
        )
        self.rng = np.random.default_rng(seed)
        self.optimizer_steps = 0
        """Optimizer steps taken (both schedules count here)."""
        self._stream: dict[str, Any] | None = None

    @property
    def version(self) -> int:
        return self.policy.version

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    # -- samples -----------------------------------------------------------------------------------
    @torch.no_grad()
    def bootstrap_values(self, seg: Segment) -> tuple[np.ndarray, np.ndarray | None]:
        """V and (with a cost critic) V_c of the observations after the segment, 0 past an episode end."""
        if seg.bootstrap_value is not None:
            return seg.bootstrap_value, np.zeros_like(seg.bootstrap_value)
        was = self.policy.training
        self.policy.eval()
        out = self.policy.act(seg.bootstrap_obs, deterministic=True)
        self.policy.train(was)
        v = np.where(seg.dones[-1], 0.0, out.values).astype(np.float32)
        cv = (
            None
            if out.cost_values is None
            else np.where(seg.dones[-1], 0.0, out.cost_values).astype(np.float32)
        )
        return v, cv

    def samples(self, seg: Segment, stats: dict[str, Any]) -> Samples:
        """Flatten a segment; refuse decisions beyond the staleness bound (counted, never trained)."""
        gap = self.version - seg.versions
        ok = np.ones_like(seg.valid)
        if self.max_staleness is not None:
            ok = gap <= self.max_staleness
            bad = int((~ok & seg.valid).sum())
            stats["rejected"] = stats.get("rejected", 0) + bad
        hist = stats.setdefault("gaps", {})
        for g, c in zip(*np.unique(gap[seg.valid & ok], return_counts=True), strict=True):
            hist[int(g)] = hist.get(int(g), 0) + int(c)
        stats["env_steps"] = stats.get("env_steps", 0) + seg.env_steps
        stats["quarantined"] = stats.get("quarantined", 0) + seg.quarantined
        stats["shielded"] = stats.get("shielded", 0) + seg.shield_interventions
        for k in ("success", "return", "length", "cost"):
            stats.setdefault("episodes_" + k, []).extend(seg.episodes.get(k, []))
        boot, cost_boot = self.bootstrap_values(seg)
        adv, ret = self.method.advantages(seg, boot)
        cost = None
        if self.method.needs_cost_critic:
            if seg.cost_values is None or cost_boot is None:
                raise RuntimeError(
                    f"algo {self.algo.name} needs a cost critic; the policy has none (build it with cost_critic=True)"
                )
            cost = self.method.cost_advantages(seg, cost_boot)
        s = Samples.from_segment(seg, adv, ret, ok, with_features=self.cache_features, cost=cost)
        if self.cache_features and s.size and s.feats is None:
            s.feats = self._frozen_features(s)
        return s

    def _frozen_features(self, s: Samples) -> dict[str, torch.Tensor] | None:
        """The policy's ``frozen_features`` of every sample, computed in micro-batches."""
        parts = []
        for i in range(0, s.size, self.micro_batch):
            f = self.policy.frozen_features(take_obs(s.obs, np.arange(i, min(i + self.micro_batch, s.size))))
            if f is None:
                return None
            parts.append(f)
        return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}

    @torch.no_grad()
    def _recompute_proximal(self, s: Samples) -> None:
        """``prox`` = log-probs under the weights the batch starts from (behaviour if on-policy)."""
        prox = s.data["log_probs"].copy()
        stale = np.flatnonzero(s.data["versions"] != self.version)
        if self.algo.off_policy != "none" and self.algo.proximal == "recompute":
            was = self.policy.training
            self.policy.eval()
            for i in range(0, len(stale), self.micro_batch):
                idx = stale[i : i + self.micro_batch]
                sub = s.take(idx)
                prox[idx] = self.policy.evaluate(
                    sub.obs, torch.from_numpy(sub.data["actions"]), features=sub.feats
                ).log_probs.numpy()
            self.policy.train(was)
        s.data["prox"] = prox

    # -- the loss ----------------------------------------------------------------------------------
    def _loss(self, mb: Samples, first_pass: bool = False) -> tuple[torch.Tensor, dict[str, float]]:
        """Loss of a minibatch. ``first_pass``: no optimizer step has happened in this batch yet,
        so the current weights *are* the proximal policy and their detached log-probs are stored
        as ``mb.data["prox"]`` (the streamer's free recomputation)."""
        algo = self.algo
        t = mb.tensors()
        out = self.policy.evaluate(mb.obs, t["actions"], features=mb.feats)
        behaviour = t["log_probs"]
        gap = (self.version - t["versions"]).clamp_min(0)
        if algo.proximal == "interpolate":
            prox = interpolated_proximal(behaviour, out.log_probs, gap)
        elif first_pass:
            stale = (gap > 0).reshape(-1, 1, 1)
            prox = torch.where(stale, out.log_probs.detach(), behaviour)
            mb.data["prox"] = prox.numpy().copy()
        else:
            prox = t["prox"]
        old, is_w = correction(algo.off_policy, behaviour, prox, algo.is_cap)
        if out.cost_values is not None:
            t["cost_values_new"] = out.cost_values
        loss, m = self.method.loss(out.log_probs, old, out.entropy, out.values, t, is_w)
        if is_w is not None:
            m["is_weight_mean"] = float(is_w.mean())
        return loss, m

    def _step(self) -> float:
        norm = float(torch.nn.utils.clip_grad_norm_(self.policy.parameters(), self.algo.max_grad_norm))
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.optimizer_steps += 1
        return norm

    def _epochs(self, s: Samples, epochs: int, sums: dict[str, float], counts: dict[str, int]) -> None:
        for _ in range(epochs):
            perm = self.rng.permutation(s.size)
            for start in range(0, s.size, self.algo.minibatch_size):
                loss, m = self._loss(s.take(perm[start : start + self.algo.minibatch_size]))
                loss.backward()
                m["grad_norm"] = self._step()
                _accumulate(sums, counts, m)

    def _finish(
        self, stats: dict[str, Any], size: int, sums: dict[str, float], counts: dict[str, int]
    ) -> dict[str, Any]:
        self.policy.eval()
        self.policy.version += 1
        lr = self.lr  # the rate this update used; the schedule moves on to the next one
        self.scheduler.step()
        metrics: dict[str, Any] = {k: sums[k] / counts[k] for k in sums}
        metrics.update(self.method.end_update(stats.get("episodes_cost", [])))
        gaps = stats.get("gaps", {})
        total = sum(gaps.values())
        metrics.update(
            lr=lr,
            train_samples=float(size),
            rejected_samples=float(stats.get("rejected", 0)),
            quarantined_samples=float(stats.get("quarantined", 0)),
            shield_interventions=int(stats.get("shielded", 0)),
            staleness_mean=sum(g * c for g, c in gaps.items()) / total if total else 0.0,
            staleness_max=float(max(gaps, default=0)),
            staleness_hist={str(g): c for g, c in sorted(gaps.items())},
            batch_env_steps=int(stats.get("env_steps", 0)),
            episodes_success=stats.get("episodes_success", []),
            episodes_return=stats.get("episodes_return", []),
            episodes_cost=stats.get("episodes_cost", []),
        )
        return metrics

    # -- whole batch -------------------------------------------------------------------------------
    def train(self, segments: list[Segment]) -> dict[str, Any]:
        """E epochs of minibatch updates over the segments; publishes one new version."""
        stats: dict[str, Any] = {}
        s = Samples.concat([self.samples(seg, stats) for seg in segments])
        sums: dict[str, float] = {}
        counts: dict[str, int] = {}
        if s.size:
            self._recompute_proximal(s)
            self.policy.train()
            self.optimizer.zero_grad(set_to_none=True)
            self._epochs(s, self.algo.epochs, sums, counts)
        return self._finish(stats, s.size, sums, counts)

    # -- streaming ---------------------------------------------------------------------------------
    def _stream_state(self) -> dict[str, Any]:
        """The global batch being streamed (opened, with zeroed gradients, on first use)."""
        if self._stream is None:
            self._stream = {
                "stats": {},
                "pending": Samples.empty(),
                "done": [],
                "sums": {},
                "counts": {},
                "n": 0,
            }
            self.optimizer.zero_grad(set_to_none=True)
        return self._stream

    def stream_add(self, seg: Segment) -> int:
        """Add an arriving segment; run forward/backward on every full micro-batch. Returns the
        number of micro-batches run."""
        st = self._stream_state()
        st["pending"] = Samples.concat([st["pending"], self.samples(seg, st["stats"])])
        ran = 0
        while st["pending"].size >= self.micro_batch:
            mb, st["pending"] = st["pending"].split(self.micro_batch)
            self._stream_micro(mb)
            ran += 1
        return ran

    def _stream_micro(self, mb: Samples) -> None:
        st = self._stream
        self.policy.train()
        loss, m = self._loss(mb, first_pass=True)
        (loss * mb.size).backward()  # summed over samples; divided by the batch size at the step
        st["done"].append(mb)
        st["n"] += mb.size
        _accumulate(st["sums"], st["counts"], m)

    def stream_finish(self) -> dict[str, Any]:
        """The batch is complete: last (partial) micro-batch, the optimizer step, remaining epochs."""
        st = self._stream_state()
        if st["pending"].size:
            self._stream_micro(st["pending"])
        self._stream = None
        if st["n"]:
            for p in self.policy.parameters():
                if p.grad is not None:
                    p.grad /= st["n"]
            st["sums"]["grad_norm"] = st["sums"].get("grad_norm", 0.0) + self._step()
            st["counts"]["grad_norm"] = st["counts"].get("grad_norm", 0) + 1
            if self.algo.epochs > 1:
                s = Samples.concat(st["done"])
                self._epochs(s, self.algo.epochs - 1, st["sums"], st["counts"])
        return self._finish(st["stats"], st["n"], st["sums"], st["counts"])

    # -- checkpoints ------------------------------------------------------------------------------
    def save_optimizer(self, directory: Path) -> None:
        sd = self.optimizer.state_dict()
        tensors = {
            f"{pid}.{name}": t.contiguous()
            for pid, st in sd["state"].items()
            for name, t in st.items()
            if isinstance(t, torch.Tensor)
        }
        tmp = directory / ".optimizer.safetensors.tmp"
        save_file(tensors, str(tmp))
        os.replace(tmp, directory / "optimizer.safetensors")
        meta = {
            "param_groups": sd["param_groups"],
            "scheduler": self.scheduler.state_dict(),
            "algo": self.method.state_dict(),
        }
        atomic_write_text(directory / "optimizer.json", json.dumps(meta))

    def restore(self, directory: Path | None, weights: dict[str, torch.Tensor] | None = None) -> None:
        """Roll the weights and the optimizer's moments back to checkpoint ``directory`` (or, with
        None, to ``weights`` and a fresh optimizer state). The learning-rate schedule, the
        algorithm's state and the version number keep going: the run continues from here."""
        lrs = [g["lr"] for g in self.optimizer.param_groups]
        if directory is not None:
            self.policy.load_state_dict(load_file(str(directory / "model.safetensors")))
            self._load_moments(directory)
        else:
            assert weights is not None
            self.policy.load_state_dict(weights)
            self.optimizer.state.clear()
        for g, lr in zip(self.optimizer.param_groups, lrs, strict=True):
            g["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        self._stream = None

    def finite(self, metrics: dict[str, Any]) -> bool:
        """Whether an update's losses, gradient norm and the trainable weights are all finite."""
        for k in ("loss_policy", "loss_value", "loss_cost_value", "grad_norm"):
            v = metrics.get(k)
            if v is not None and not np.isfinite(v):
                return False
        with torch.no_grad():
            return all(bool(torch.isfinite(p).all()) for p in self.policy.parameters() if p.requires_grad)

    def _load_moments(self, directory: Path) -> dict[str, Any]:
        tensors = load_file(str(directory / "optimizer.safetensors"))
        state: dict[int, dict[str, Any]] = {}
        for key, t in tensors.items():
            pid, name = key.split(".", 1)
            state.setdefault(int(pid), {})[name] = t
        meta = json.loads((directory / "optimizer.json").read_text())
        self.optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
        return meta

    def load_optimizer(self, directory: Path) -> None:
        meta = self._load_moments(directory)
        self.scheduler.load_state_dict(meta["scheduler"])
        self.method.load_state_dict(meta.get("algo", {}))


def _accumulate(sums: dict[str, float], counts: dict[str, int], m: dict[str, float]) -> None:
    for k, v in m.items():
        sums[k] = sums.get(k, 0.0) + v
        counts[k] = counts.get(k, 0) + 1
