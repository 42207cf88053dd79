"""Schedules: the order in which the same workers are driven.

``SyncSchedule`` is the RLinf-style baseline: every manager steps T decisions in lockstep with
batched inference, then the trainer updates, then weights are published. No stage overlaps.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from asyncvla.runtime.env_worker import EnvWorker
from asyncvla.runtime.rollout_worker import RolloutWorker
from asyncvla.runtime.trainer import Trainer
from asyncvla.runtime.types import Segment


@dataclass
class UpdateResult:
    segments: list[Segment]
    metrics: dict[str, float]
    timings: dict[str, float] = field(default_factory=dict)


class SyncSchedule:
    def __init__(
        self,
        env_worker: EnvWorker,
        rollout: RolloutWorker,
        trainer: Trainer,
        manager_ids: list[int],
        rollout_steps: int,
        episode_mode: bool,
    ) -> None:
        self.env_worker = env_worker
        self.rollout = rollout
        self.trainer = trainer
        self.manager_ids = manager_ids
        self.rollout_steps = rollout_steps
        self.episode_mode = episode_mode

    def collect(self, timings: dict[str, float]) -> list[Segment]:
        segments: list[Segment] = []
        pending = set(self.manager_ids)
        steps = 0
        while pending:
            t0 = time.perf_counter()
            requests = [self.env_worker.request(m) for m in sorted(pending)]
            t1 = time.perf_counter()
            replies = self.rollout.infer(requests)
            t2 = time.perf_counter()
            for reply in replies:
                done = self.env_worker.apply(reply)
                if done:
                    segments.extend(done)
                    if self.episode_mode:
                        pending.discard(reply.manager_id)
            t3 = time.perf_counter()
            timings["time_env_s"] += (t1 - t0) + (t3 - t2)
            timings["time_rollout_s"] += t2 - t1
            steps += 1
            if not self.episode_mode and steps == self.rollout_steps:
                # Bootstrap values come from one more forward on the current observations.
                t0 = time.perf_counter()
                requests = [self.env_worker.request(m) for m in self.manager_ids]
                replies = self.rollout.infer(requests)
                timings["time_rollout_s"] += time.perf_counter() - t0
                segments.extend(self.env_worker.close(r.manager_id, r.values) for r in replies)
                pending.clear()
        return segments

    def step(self) -> UpdateResult:
        timings = {"time_env_s": 0.0, "time_rollout_s": 0.0, "time_train_s": 0.0, "time_sync_s": 0.0}
        segments = self.collect(timings)
        t0 = time.perf_counter()
        metrics = self.trainer.train(segments)
        t1 = time.perf_counter()
        version, weights = self.trainer.get_weights()
        self.rollout.set_weights(version, weights)
        t2 = time.perf_counter()
        timings["time_train_s"] = t1 - t0
        timings["time_sync_s"] = t2 - t1
        return UpdateResult(segments, metrics, timings)
