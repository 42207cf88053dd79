"""Saliency of a policy's action for its camera image, and a deletion test of its faithfulness.

Integrated gradients (Sundararajan et al. 2017) of a scalar f of the image x (float [H, W, 3] in
[0, 1]) against a baseline x', computed by captum with ``steps`` Gauss-Legendre nodes t_j::

    IG_i(x) = (x_i - x'_i) * int_0^1 df(x' + t (x - x')) / dx_i dt,     sum_i IG_i = f(x) - f(x')

(completeness; captum's convergence delta is the quadrature's error on it).

Target: f(x) = <u, a(x)>, with a(x) the policy's mean action chunk [K * A] (``Policy.mean_action``)
and u = (a(x) - a(x')) / ||a(x) - a(x')|| held fixed per frame. Then f(x) - f(x') = ||a(x) - a(x')||:
the attributions split the distance by which the image moves the action away from the baseline's
action (a plain sum of the actions would let opposite dimensions cancel). Pixel saliency:
s_p = sum_c |IG_{p,c}|.

Baseline: a black image (x' = 0). It removes every pixel's content, so f(x) - f(x') is the whole
effect of the image; a blurred baseline would keep each region's mean colour and give no credit to
the pixels whose information is exactly that colour (a region's brightness, a large object's hue).
Masking to the baseline is then what the path integral is about: "this pixel black".

Deletion (faithfulness): per frame, x_top = x with its top ``fraction`` of pixels by s set to the
baseline and x_rand = x with a random ``fraction`` of pixels (seeded) set to it;
d_top = ||a(x_top) - a(x)||_2 and d_rand = ||a(x_rand) - a(x)||_2 over the deterministic chunk of
``act``. Reported over frames: the mean paired difference d_top - d_rand, its paired bootstrap 95%
interval (``stats.paired_bootstrap``), the fraction of frames with d_top > d_rand, and
``faithful`` = the interval's low end > 0.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch

from asyncvla.config import Config
from asyncvla.envs.base import ObsBatch
from asyncvla.envs.episodes import run_episodes
from asyncvla.policies import Policy
from asyncvla.stats import paired_bootstrap

BASELINE = "black"


def rows(obs: ObsBatch, idx: np.ndarray | slice) -> ObsBatch:
    """The observations ``idx`` of a batch (lists indexed item by item)."""
    if isinstance(idx, slice):
        idx = np.arange(len(obs["instruction"]))[idx]
    return {k: [v[i] for i in idx] if isinstance(v, list) else v[idx] for k, v in obs.items()}


def _device(policy: Policy) -> torch.device:
    return next((p.device for p in policy.parameters()), torch.device("cpu"))


def attribute(
    policy: Policy, obs: ObsBatch, key: str = "image", steps: int = 32, batch: int = 8
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """IG attributions float32 [N, H, W, 3] of ``obs[key]`` (black baseline, target <u, a(x)>),
    captum's convergence deltas [N] and f(x) - f(x') = ||a(x) - a(x')|| [N]."""
    from captum.attr import IntegratedGradients

    device = _device(policy)
    attrs, deltas, spans = [], [], []
    for s in range(0, len(obs["instruction"]), batch):
        part = rows(obs, slice(s, s + batch))
        x = torch.as_tensor(np.asarray(part[key]), device=device).float() / 255.0
        base = torch.zeros_like(x)
        with torch.no_grad():
            diff = (policy.mean_action(part, {key: x}) - policy.mean_action(part, {key: base})).flatten(1)
        span = diff.norm(dim=1)
        u = diff / span.clamp_min(1e-12)[:, None]  # 0 where the image does not move the action
        n = x.shape[0]

        def target(
            images: torch.Tensor, part: ObsBatch = part, u: torch.Tensor = u, n: int = n
        ) -> torch.Tensor:
            # captum stacks the path's points step-major: row r is frame r % n.
            idx = np.arange(images.shape[0]) % n
            return (policy.mean_action(rows(part, idx), {key: images}).flatten(1) * u[idx]).sum(1)

        a, d = IntegratedGradients(target).attribute(x, base, n_steps=steps, return_convergence_delta=True)
        attrs.append(a.detach().cpu().numpy().astype(np.float32))
        deltas.append(d.detach().cpu().numpy())
        spans.append(span.cpu().numpy())
    return np.concatenate(attrs), np.concatenate(deltas), np.concatenate(spans)


def deletion(
    policy: Policy,
    obs: ObsBatch,
    saliency: np.ndarray,
    key: str = "image",
    fraction: float = 0.1,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """d_top, d_rand [N]: how far the deterministic chunk moves when the top ``fraction`` of pixels
    by ``saliency`` [N, H, W] (or a random ``fraction``) are set to the black baseline."""
    x = np.asarray(obs[key])
    n, h, w, _ = x.shape
    k = max(1, round(fraction * h * w))
    top = np.argsort(-saliency.reshape(n, -1), axis=1, kind="stable")[:, :k]
    rng = np.random.default_rng(seed)
    rand = np.stack([rng.choice(h * w, size=k, replace=False) for _ in range(n)])

    def act(images: np.ndarray) -> np.ndarray:
        return policy.act({**obs, key: images}, deterministic=True).actions.reshape(n, -1)

    def masked(ids: np.ndarray) -> np.ndarray:
        m = x.reshape(n, h * w, -1).copy()
        np.put_along_axis(m, ids[..., None], 0, axis=1)
        return m.reshape(x.shape)

    a0 = act(x)
    d_top = np.linalg.norm(act(masked(top)) - a0, axis=1)
    d_rand = np.linalg.norm(act(masked(rand)) - a0, axis=1)
    return d_top, d_rand


def deletion_statistic(d_top: np.ndarray, d_rand: np.ndarray, seed: int = 0) -> dict[str, Any]:
    """Paired difference d_top - d_rand over frames: mean, bootstrap 95% interval, fraction > 0."""
    res = paired_bootstrap(d_rand, d_top, seed=seed)
    return {
        "mean_diff": res["diff"],
        "ci95_low": res["ci95_low"],
        "ci95_high": res["ci95_high"],
        "frac_top_greater": float(np.mean(d_top > d_rand)),
        "mean_change_top": float(np.mean(d_top)),
        "mean_change_random": float(np.mean(d_rand)),
        "frames": int(len(d_top)),
        "faithful": bool(res["ci95_low"] > 0),
    }


def collect_frames(cfg: Config, policy: Policy, frames: int, seed: int = 0) -> ObsBatch:
    """One observation per held-out episode (episode j from init state ``eval.seed_offset + j``,
    the policy acting deterministically), drawn uniformly among the episode's decisions."""
    from asyncvla.envs import make_env
    from asyncvla.safety.shield import ShieldedEnv, make_shield

    env = make_env(cfg.env.name, num_envs=min(cfg.eval.num_envs, frames), **cfg.env.kwargs)
    if cfg.safety.shield.enabled:
        env = ShieldedEnv(env, make_shield(cfg.safety.shield, env))
    rng = np.random.default_rng(seed)
    seen: Counter[int] = Counter()
    kept: dict[int, dict[str, Any]] = {}

    def on_decision(obs: ObsBatch, slots: np.ndarray, eps: np.ndarray, _: np.ndarray) -> None:
        for i, e in zip(slots.tolist(), eps.tolist(), strict=True):
            seen[e] += 1
            if rng.random() < 1.0 / seen[e]:  # reservoir of one: each decision kept w.p. 1 / count
                kept[e] = {k: v[i] if isinstance(v, list) else np.array(v[i]) for k, v in obs.items()}

    policy.eval()
    try:
        run_episodes(
            env,
            frames,
            cfg.eval.seed_offset,
            lambda o: policy.act(o, deterministic=True).actions,
            on_decision,
        )
    finally:
        env.close()
    items = [kept[e] for e in sorted(kept)]
    return {
        k: [it[k] for it in items] if isinstance(items[0][k], str) else np.stack([it[k] for it in items])
        for k in items[0]
    }


def overlay(path: Path, image: np.ndarray, saliency: np.ndarray, title: str) -> None:
    """image | saliency heat map | image with the heat map over it, as one PNG."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.5, 2.9), dpi=100, layout="constrained")
    axes = fig.subplots(1, 3)
    heat = saliency / max(float(saliency.max()), 1e-12)
    axes[0].imshow(image)
    axes[1].imshow(heat, cmap="inferno", vmin=0, vmax=1)
    axes[2].imshow(image)
    axes[2].imshow(heat, cmap="inferno", vmin=0, vmax=1, alpha=0.6)
    for ax, name in zip(axes, ("image", "|IG| per pixel", "overlay"), strict=True):
        ax.set_title(name, fontsize=9)
        ax.axis("off")
    fig.suptitle(title, fontsize=9)
    fig.savefig(path, format="png", metadata={"Software": None})


def explain(
    policy: Policy,
    obs: ObsBatch,
    out_dir: str | Path | None = None,
    key: str = "image",
    steps: int = 32,
    fraction: float = 0.1,
    seed: int = 0,
    overlays: int = 6,
) -> dict[str, Any]:
    """Attributions and the deletion statistic of ``obs``; with ``out_dir``, ``overlays`` PNGs."""
    attr, delta, span = attribute(policy, obs, key, steps)
    saliency = np.abs(attr).sum(-1)
    d_top, d_rand = deletion(policy, obs, saliency, key, fraction, seed)
    res: dict[str, Any] = {
        "deletion": deletion_statistic(d_top, d_rand, seed),
        "image_key": key,
        "ig_steps": steps,
        "baseline": BASELINE,
        "target": "<u, a(x)>, u = (a(x) - a(black)) / ||a(x) - a(black)||, a = mean action chunk",
        "mask_fraction": fraction,
        "seed": seed,
        "mean_action_span": float(span.mean()),
        "convergence_delta_abs_mean": float(np.abs(delta).mean()),
        "convergence_delta_abs_max": float(np.abs(delta).max()),
    }
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        names = []
        for i in range(min(overlays, len(saliency))):
            names.append(f"overlay_{i:02d}.png")
            title = (
                f"{obs['instruction'][i]}\nchunk moved by masking the top {100 * fraction:g}%: "
                f"{d_top[i]:.3f}, a random {100 * fraction:g}%: {d_rand[i]:.3f}"
            )
            overlay(out / names[-1], np.asarray(obs[key][i]), saliency[i], title)
        res["overlays"] = names
    return {**res, "saliency": saliency, "attributions": attr, "d_top": d_top, "d_rand": d_rand}


def explain_checkpoint(
    cfg: Config,
    policy: Policy,
    out_dir: str | Path,
    checkpoint: str | Path,
    frames: int = 100,
    steps: int = 32,
    seed: int = 0,
) -> dict[str, Any]:
    """``asyncvla explain``: frames from held-out episodes, then ``explain``; writes explain.json."""
    obs = collect_frames(cfg, policy, frames, seed)
    res = explain(policy, obs, out_dir, steps=steps, seed=seed)
    summary = {
        "checkpoint": str(checkpoint),
        "policy_version": int(policy.version),
        "env": cfg.env.name,
        "env_kwargs": cfg.env.kwargs,
        "eval_seed_offset": cfg.eval.seed_offset,
        **{k: v for k, v in res.items() if not isinstance(v, np.ndarray)},
    }
    from asyncvla.rundir import atomic_write_text

    atomic_write_text(Path(out_dir) / "explain.json", json.dumps(summary, indent=2, default=str))
    return summary
