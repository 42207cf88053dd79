"""``asyncvla trainer-speed``: the trainer's time for one update on one fixed global batch, with the
frozen part recomputed in every pass, cached by the trainer, or shipped by the rollout workers.

One global batch (every manager's first segment, acted by the policy, features kept) is trained
from the same weights and seed by a fresh ``Learner`` per path; the paths alternate over
``repeats`` (after one warm-up round), and each path's loss values and resulting weights are
compared with the recompute path's (``identical``).
"""

from __future__ import annotations

import copy
import statistics
import time
from typing import Any

import torch

from asyncvla.config import Config
from asyncvla.policies import Policy
from asyncvla.runtime.env_worker import EnvManager
from asyncvla.runtime.learner import Learner
from asyncvla.runtime.types import ActionReply, Segment

PATHS = ("recompute", "cache", "ship")
LOSS_KEYS = ("loss_policy", "loss_value", "entropy", "approx_kl", "clipfrac", "grad_norm")


def one_batch(cfg: Config, policy: Policy) -> list[Segment]:
    """Every manager's first segment, acted by ``policy`` with its frozen features."""
    segs: list[Segment] = []
    for m in range(cfg.env.num_managers):
        mgr = EnvManager(m, cfg.env.name, cfg.env.num_envs, cfg.env.kwargs, cfg.train.rollout_steps, cfg.seed)
        try:
            out: list[Segment] = []
            while not out:
                (req,) = mgr.request()
                a = policy.act(req.obs, with_features=True)
                out = mgr.apply(
                    ActionReply(
                        m,
                        req.request_id,
                        req.env_ids,
                        a.actions,
                        a.log_probs,
                        a.values,
                        0,
                        features=a.features,
                    )
                )
            segs += out
        finally:
            mgr.shutdown()
    return segs


def _segments_for(path: str, segs: list[Segment]) -> list[Segment]:
    if path == "ship":
        return segs
    plain = [copy.copy(s) for s in segs]
    for s in plain:
        s.features = None
    return plain


def measure(cfg: Config, policy: Policy, repeats: int = 3, threads: int = 0) -> dict[str, Any]:
    if threads:
        torch.set_num_threads(threads)
    segs = one_batch(cfg, policy)
    times: dict[str, list[float]] = {p: [] for p in PATHS}
    results: dict[str, Any] = {}
    for r in range(repeats + 1):
        for path in PATHS:
            pol = copy.deepcopy(policy)
            learner = Learner(
                pol,
                cfg.algo,
                total_updates=cfg.train.updates,
                seed=cfg.seed,
                max_staleness=cfg.schedule()[1],
                cache_features=path != "recompute",
            )
            t0 = time.perf_counter()
            metrics = learner.train(_segments_for(path, segs))
            dt = time.perf_counter() - t0
            if r:  # round 0 warms up
                times[path].append(dt)
            results[path] = (metrics, pol.state_dict())
    base_m, base_w = results["recompute"]
    out: dict[str, Any] = {
        "samples": int(base_m["train_samples"]),
        "threads": torch.get_num_threads(),
        "repeats": repeats,
        "frozen_features": segs[0].features is not None,
    }
    for path in PATHS:
        m, w = results[path]
        out[path] = {
            "median_s": statistics.median(times[path]),
            "times_s": times[path],
            "identical": all(m[k] == base_m[k] for k in LOSS_KEYS if k in base_m)
            and all(torch.equal(w[k], base_w[k]) for k in base_w),
        }
    for path in ("cache", "ship"):
        out[f"recompute_over_{path}"] = out["recompute"]["median_s"] / out[path]["median_s"]
    return out
