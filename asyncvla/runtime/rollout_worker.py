"""RolloutWorker: batched inference for env managers, under the staleness bound.

Requests wait in a ``DynamicBatcher``. ``next_batch`` admits only requests whose ticket may be
served at the worker's version (``gate.admissible``: target u <= v + eta; the others are held and
a ``throttle_on`` / ``throttle_off`` event marks the change), closes a batch when the batcher says
so (``max_batch_samples`` samples or ``batch_timeout_ms``; static batching when ``async.rollout``
is off) and ``run_batch`` answers each request with its own slice of one ``policy.act``.
Published weights are offered at any time (only the newest offer is kept) and adopted between
batches, never during one. A Ray actor (``actors.RolloutWorkerActor``) only moves requests,
replies and weight payloads.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from asyncvla.config import Config
from asyncvla.runtime.batching import DynamicBatcher, Waiting
from asyncvla.runtime.events import EventBuffer
from asyncvla.runtime.gate import admissible
from asyncvla.runtime.types import ActionReply, ObsRequest, concat_obs, take_obs
from asyncvla.runtime.weights import PolicySpec


@dataclass
class RolloutSpec:
    worker_id: int
    static_shards: list[tuple[int, int]] | None = None
    """Static batching over exactly these (manager, shard) pairs; None: dynamic batching."""
    start_update: int = 0


@dataclass
class Offer:
    version: int
    handle: Any
    """The weights, or a handle the caller resolves to them (an object-store reference)."""
    published_t: float


class RolloutWorker:
    def __init__(
        self, cfg: Config, spec: RolloutSpec, policy: PolicySpec, events: EventBuffer | None = None
    ) -> None:
        _, eta = cfg.schedule()
        rt = cfg.runtime
        self.worker_id = spec.worker_id
        # Action sampling depends only on the batch: each batch seeds the sampler from (seed,
        # start update, worker, batch index), so a recorded schedule replays it (``trust.replay``).
        self.seed_base = ((cfg.seed * 1000 + spec.start_update) * 100 + spec.worker_id) * 10**7
        self.record = rt.record_schedule
        torch.manual_seed(self.seed_base)
        self.policy = policy.build("rollout")
        self.policy.eval()
        self.batcher = DynamicBatcher(
            rt.max_batch_samples,
            rt.batch_timeout_ms / 1000.0,
            None if spec.static_shards is None else {tuple(s) for s in spec.static_shards},
        )
        self.max_staleness = eta
        self.ship_features = cfg.train.cache_features and cfg.train.ship_features
        self.shield = None
        if cfg.safety.shield.enabled:
            from asyncvla.builder import probe_env
            from asyncvla.safety.shield import make_shield

            probe = probe_env(cfg)
            try:
                self.shield = make_shield(cfg.safety.shield, probe)
            finally:
                probe.close()
        self.events = events or EventBuffer(f"rollout{spec.worker_id}", lambda evs: None)
        self.offer_pending: Offer | None = None
        self._throttled = False
        self.served = 0
        self.batches = 0
        self.adopted: list[int] = []

    @property
    def version(self) -> int:
        return self.policy.version

    # -- weights -------------------------------------------------------------------------------
    def offer(self, version: int, handle: Any, published_t: float) -> bool:
        """Keep only the newest offer; True if this one is kept (adopt it before the next batch)."""
        if version > self.version and (self.offer_pending is None or version > self.offer_pending.version):
            self.offer_pending = Offer(version, handle, published_t)
            return True
        return False

    def take_offer(self) -> Offer | None:
        offer, self.offer_pending = self.offer_pending, None
        return offer

    def set_weights(
        self, version: int, state_dict: dict[str, torch.Tensor], published_t: float | None = None
    ) -> None:
        """Adopt published weights; called between batches only, never during one."""
        self.policy.load_sync_state_dict(state_dict)
        self.policy.version = version
        self.adopted.append(version)
        if published_t is not None:
            self.events.emit("weights_adopted", version=version, latency_s=time.time() - published_t)

    # -- requests and batches ------------------------------------------------------------------
    def submit(self, req: ObsRequest, token: Any = None, now: float | None = None) -> None:
        """Queue a request; ``token`` is whatever answers it (e.g. a future)."""
        now = time.monotonic() if now is None else now
        self.batcher.add(Waiting(req, req.num_samples, (req.manager_id, req.shard), now, token))

    def next_batch(self, now: float | None = None) -> list[Waiting] | None:
        """The batch to run now (admitted requests only), or None: wait until ``deadline()``,
        a new request or new weights."""
        now = time.monotonic() if now is None else now
        v = self.version
        waiting = self.batcher.waiting
        adm = [
            w
            for w in waiting
            if w.request.target_version is None or admissible(w.request.target_version, v, self.max_staleness)
        ]
        held = len(waiting) - len(adm)
        if held and not self._throttled:
            self._throttled = True
            self.events.emit("throttle_on", version=v, held=held)
        elif not held and self._throttled:
            self._throttled = False
            self.events.emit("throttle_off", version=v)
        ready, reason = self.batcher.ready(now, adm)
        if not ready:
            return None
        batch = self.batcher.take(adm)
        extra = {}
        if self.record:  # (manager, request id, shard) in batch order: what ``trust.replay`` re-forms
            extra["reqs"] = [[w.request.manager_id, w.request.request_id, w.request.shard] for w in batch]
        self.events.emit(
            "batch_formed",
            samples=sum(w.samples for w in batch),
            requests=len(batch),
            reason=reason,
            version=v,
            managers=[w.request.manager_id for w in batch],
            wait_ms=1000 * (now - min(w.arrived for w in batch)),
            **extra,
        )
        return batch

    def deadline(self) -> float | None:
        """When an open dynamic batch times out (``time.monotonic`` seconds), if one is open."""
        return self.batcher.deadline()

    def run_batch(self, batch: list[Waiting]) -> list[ActionReply]:
        """One forward over the batch; the replies in the batch's order."""
        n = sum(w.samples for w in batch)
        t0 = time.time()
        if self.record:
            torch.manual_seed(self.batch_seed(self.batches))
        replies = self.infer([w.request for w in batch])
        self.events.emit("batch_inferred", t0=t0, t1=time.time(), samples=n, version=self.version)
        self.served += n
        self.batches += 1
        return replies

    def batch_seed(self, index: int) -> int:
        """The sampler's seed for this worker's batch ``index`` (0, 1, ...)."""
        return self.seed_base + index

    def infer(self, requests: list[ObsRequest], deterministic: bool = False) -> list[ActionReply]:
        """One forward over all requests' samples; each reply goes back to its own envs."""
        obs = concat_obs([r.obs for r in requests])
        out = self.policy.act(
            obs, deterministic=deterministic, with_features=self.ship_features and not deterministic
        )
        shielded = self._shield(out, obs, requests)
        replies, start = [], 0
        for r in requests:
            sl = slice(start, start + len(r.env_ids))
            replies.append(
                ActionReply(
                    manager_id=r.manager_id,
                    request_id=r.request_id,
                    env_ids=r.env_ids,
                    actions=out.actions[sl],
                    log_probs=out.log_probs[sl],
                    values=out.values[sl],
                    version=out.version,
                    shard=r.shard,
                    features=None if out.features is None else {k: v[sl] for k, v in out.features.items()},
                    cost_values=None if out.cost_values is None else out.cost_values[sl],
                    shielded=None if shielded is None else shielded[sl],
                )
            )
            start += len(r.env_ids)
        return replies

    def _shield(self, out: Any, obs: Any, requests: list[ObsRequest]) -> np.ndarray | None:
        """Project the sampled chunks onto the shield's safe set, in place, and score the projected
        chunks under the same weights: the segment then holds the executed action and its log-prob.
        Returns which rows changed (None without a shield)."""
        if self.shield is None:
            return None
        prev = np.concatenate(
            [
                r.prev_actions
                if r.prev_actions is not None
                else np.zeros((r.num_samples, out.actions.shape[2]), np.float32)
                for r in requests
            ]
        )
        safe, hit = self.shield.project(out.actions, obs["state"], prev)
        rows = np.flatnonzero(hit.any(axis=1))
        if rows.size:
            with torch.no_grad():
                lp = self.policy.evaluate(take_obs(obs, rows), torch.from_numpy(safe[rows])).log_probs
            out.actions = out.actions.copy()
            out.log_probs = out.log_probs.copy()
            out.actions[rows] = safe[rows]
            out.log_probs[rows] = lp.float().cpu().numpy()
        return hit.any(axis=1)

    def stats(self) -> dict[str, Any]:
        return {
            "worker": f"rollout{self.worker_id}",
            "version": self.version,
            "served": self.served,
            "batches": self.batches,
            "adopted": list(self.adopted),
        }
