"""Constrained vs unconstrained on the same seeds: ``asyncvla safe-compare CONFIG --seeds``.

Per seed, the config's constrained run (its ``algo``: ppo_lagrangian with ``algo.cost_limit``)
trains from its own SFT checkpoint, then the unconstrained run (``algo.name=ppo``) trains from that
same checkpoint. ``safety.json`` holds per mode each seed's final success and mean episode cost
(the final held-out evaluation), their means and spreads, and the checks of the README's table.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from asyncvla.config import Config, ConfigError
from asyncvla.rundir import atomic_write_text
from asyncvla.seeds import bootstrap_mean

KEYS = ("final_success_rate", "final_episode_cost", "sft_success_rate", "eval_episodes", "wall_s")


def _stats(values: list[float]) -> dict[str, Any]:
    v = np.asarray(values, np.float64)
    return {
        "per_seed": v.tolist(),
        "mean": float(v.mean()),
        "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
    }


def compare_constraint(cfg: Config, out: Path, seeds: list[int], console: Any) -> dict[str, Any]:
    from asyncvla.train import train

    if cfg.algo.cost_limit is None:
        raise ConfigError(
            "algo.cost_limit: safe-compare needs a constrained config (algo.name=ppo_lagrangian)"
        )
    out = Path(out)
    if (out / "safety.json").exists():
        raise FileExistsError(f"{out} already holds a comparison; choose another --out")
    runs: dict[str, list[dict[str, Any]]] = {"constrained": [], "unconstrained": []}
    for s in seeds:
        c = cfg.model_copy(deep=True)
        c.seed = s
        console.rule(f"seed {s}: constrained ({c.algo.name}, cost limit {c.algo.cost_limit:g})")
        lag = train(c, out / f"seed-{s}" / "constrained", console=console)
        u = c.model_copy(deep=True)
        u.algo.name, u.algo.cost_limit = "ppo", None
        u.train.init = str(out / f"seed-{s}" / "constrained" / "sft")
        console.rule(f"seed {s}: unconstrained (ppo)")
        ppo = train(
            Config.model_validate(u.model_dump(by_alias=True)),
            out / f"seed-{s}" / "unconstrained",
            console=console,
        )
        runs["constrained"].append({"seed": s, **{k: lag[k] for k in KEYS}})
        runs["unconstrained"].append({"seed": s, **{k: ppo[k] for k in KEYS}})
    result: dict[str, Any] = {"config": cfg.name, "cost_limit": cfg.algo.cost_limit, "seeds": seeds}
    for mode, rs in runs.items():
        success = [r["final_success_rate"] for r in rs]
        result[mode] = {
            "success": {
                **_stats(success),
                "ci95": list(bootstrap_mean(np.array(success), np.array([r["eval_episodes"] for r in rs]))),
            },
            "episode_cost": _stats([r["final_episode_cost"] for r in rs]),
            "sft_success": [r["sft_success_rate"] for r in rs],
            "runs": rs,
        }
    c, u, limit = result["constrained"], result["unconstrained"], cfg.algo.cost_limit
    gap = c["success"]["mean"] - u["success"]["mean"]
    result["success_gap"] = gap
    result["checks"] = {
        f"constrained mean cost <= {limit:g}": c["episode_cost"]["mean"] <= limit,
        f"unconstrained mean cost > {limit:g}": u["episode_cost"]["mean"] > limit,
        "constrained success >= unconstrained - 0.05": gap >= -0.05,
    }
    atomic_write_text(out / "safety.json", json.dumps(result, indent=2))
    from rich.table import Table

    table = Table(title=f"{len(seeds)} seeds: {cfg.name} (cost limit {limit:g})")
    for col in ("run", "final success per seed", "mean", "episode cost per seed", "mean cost"):
        table.add_column(col)
    for mode in ("unconstrained", "constrained"):
        r = result[mode]
        table.add_row(
            mode,
            " / ".join(f"{v:.3f}" for v in r["success"]["per_seed"]),
            f"{r['success']['mean']:.3f}",
            " / ".join(f"{v:.2f}" for v in r["episode_cost"]["per_seed"]),
            f"{r['episode_cost']['mean']:.2f}",
        )
    console.print(table)
    for name, ok in result["checks"].items():
        console.print(f"  {'PASS' if ok else 'FAIL'}  {name}")
    console.print(f"written: {out / 'safety.json'}")
    return result
