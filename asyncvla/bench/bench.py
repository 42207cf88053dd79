"""The throughput benchmark: one workload under the RL-VLA^3 ablation modes, on the real runtime.

``run_bench`` builds each mode's Config from a profile (``profiles.mode_config``), drives the same
``Runtime`` that ``asyncvla train`` uses, alternates the modes (A B A B ...) over the repeats so a
noisy machine affects all alike, and writes ``bench.json``, ``bench.csv``, ``throughput.png`` and
``timeline.png`` (plus one run directory per mode and repeat with ``events.jsonl``,
``metrics.jsonl``, ``holds.jsonl``, ``config.yaml``).
"""

from __future__ import annotations

import csv
import json
import math
import statistics
import uuid
from pathlib import Path
from typing import Any

from asyncvla.bench.analysis import analyze_run
from asyncvla.bench.memory import PeakMemory
from asyncvla.bench.profiles import (
    BASELINE,
    LABELS,
    Profile,
    RealProfile,
    load_profile,
    mode_config,
    nominal_costs,
)
from asyncvla.bench.simulate import simulate, spec_from_config
from asyncvla.bench.vdevice import read_holds
from asyncvla.config import ConfigError


def updates_for(profile: Profile, env_steps: int | None, measure_updates: int = 4) -> int:
    """Measured updates for about ``env_steps`` env steps per mode (None: ``measure_updates``)."""
    if env_steps is None:
        return measure_updates
    if isinstance(profile, RealProfile):
        cfg = mode_config(profile, BASELINE, 1)
        per_update = cfg.global_batch() * cfg.policy.chunk_size
    else:
        e = profile.env
        per_update = e.num_managers * e.num_envs * profile.rollout_steps * profile.chunk_size
    return max(1, math.ceil(env_steps / per_update))


def run_mode(
    profile: Profile,
    mode: str,
    updates: int,
    run_dir: Path,
    time_scale: float | None = None,
) -> dict[str, Any]:
    """One run of one mode through the driver loop ``train`` uses (``run_schedule``); returns its
    analysis (``analysis.analyze_run``). The run directory holds ``config.yaml``, ``metrics.jsonl``,
    ``events.jsonl`` and ``holds.jsonl``."""
    from asyncvla.builder import build_policy
    from asyncvla.rundir import RunDir
    from asyncvla.runtime.driver import run_schedule
    from asyncvla.runtime.events import read_events

    run_dir.mkdir(parents=True, exist_ok=True)
    run_id = f"{mode}-{uuid.uuid4().hex[:8]}"
    lock_dir = run_dir / "vdev"
    cfg = mode_config(profile, mode, updates, run_id, str(lock_dir), True, time_scale)
    policy = build_policy(cfg)
    state: dict[str, Any] = {"update": 0, "env_steps": 0, "wall_s": 0.0}
    run = RunDir(run_dir, cfg, tensorboard=False)
    with PeakMemory() as mem:
        try:
            res = run_schedule(cfg, policy, run, state)
        finally:
            run.close()
    rows = run.read_metrics()
    events = read_events(run_dir / "events.jsonl")
    holds = read_holds(lock_dir, run_id) if lock_dir.is_dir() else []
    with (run_dir / "holds.jsonl").open("w") as f:
        for h in holds:
            f.write(json.dumps(h) + "\n")
    if lock_dir.is_dir():
        for p in lock_dir.glob("*"):
            p.unlink()
        lock_dir.rmdir()
    out = analyze_run(cfg, rows, events, holds, warmup=profile.warmup_updates)
    out.update(
        mode=mode,
        run_dir=str(run_dir),
        max_batch_samples=cfg.runtime.max_batch_samples,
        batch_timeout_ms=cfg.runtime.batch_timeout_ms,
        updates=updates,
        start_s=res.start_s,
        run_s=res.run_s,
        **mem.result(),
    )
    return out


def _max_or_none(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return max(vals) if vals else None


def _stats(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def summarize(profile: Profile, runs: dict[str, list[dict[str, Any]]], time_scale: float) -> dict[str, Any]:
    base = runs.get(BASELINE)
    base_median = statistics.median([r["env_steps_per_s"] for r in base]) if base else None
    modes = []
    for name, rs in runs.items():
        tps = [r["env_steps_per_s"] for r in rs]
        med = statistics.median(tps)
        bound_steps = statistics.median([r["bound_env_steps_per_s"] for r in rs])
        bound = statistics.median([r["bound"] for r in rs])
        speedup = med / base_median if base_median else None
        nominal_steps = predicted = None
        nominal: dict[str, Any] = {"bound": None, "bottleneck": None}
        if not isinstance(profile, RealProfile):
            nominal = nominal_costs(profile, name, time_scale)
            nominal_steps = nominal["bound_samples_per_s"] * nominal["env_steps_per_sample"]
            spec = spec_from_config(mode_config(profile, name, 12, time_scale=time_scale))
            predicted = simulate(spec, updates=12, warmup=2)["env_steps_per_s"]
        modes.append(
            {
                "name": name,
                "label": LABELS.get(name, name),
                "env_steps_per_s": _stats(tps),
                "decisions_per_s": statistics.median([r["decisions_per_s"] for r in rs]),
                "speedup_vs_sync": speedup,
                "bound": bound,
                "bound_env_steps_per_s": bound_steps,
                "achieved_over_bound": statistics.median([r["achieved_over_bound"] for r in rs]),
                "speedup_over_bound": (speedup / bound) if speedup is not None and bound > 0 else None,
                "bottleneck": rs[-1]["bottleneck"],
                "nominal_bound": nominal["bound"],
                "nominal_bound_env_steps_per_s": nominal_steps,
                "nominal_bottleneck": nominal["bottleneck"],
                "predicted_env_steps_per_s": predicted,
                "measured_over_predicted": med / predicted if predicted else None,
                "busy": {k: statistics.median([r["busy"][k] for r in rs]) for k in rs[0]["busy"]},
                "device_busy": {
                    k: statistics.median([r["device_busy"].get(k, 0.0) for r in rs])
                    for k in rs[0]["device_busy"]
                },
                "stage_cost_s": {
                    k: statistics.median([r["stage_cost_s"][k] for r in rs]) for k in rs[0]["stage_cost_s"]
                },
                "staleness_mean": statistics.mean([r["staleness_mean"] for r in rs]),
                "staleness_max": int(max(r["staleness_max"] for r in rs)),
                "rejected_samples": int(sum(r["rejected_samples"] for r in rs)),
                "peak_total_mb": _max_or_none([r.get("peak_total_mb") for r in rs]),
                "peak_process_mb": _max_or_none([r.get("peak_process_mb") for r in rs]),
                "runtime": {
                    "max_batch_samples": rs[0].get("max_batch_samples"),
                    "batch_timeout_ms": rs[0].get("batch_timeout_ms"),
                },
                "runs": [
                    {
                        k: r[k]
                        for k in (
                            "run_dir",
                            "env_steps_per_s",
                            "env_steps",
                            "wall_s",
                            "updates",
                            "updates_measured",
                            "bound_env_steps_per_s",
                            "achieved_over_bound",
                            "start_s",
                            "run_s",
                        )
                    }
                    for r in rs
                ],
            }
        )
    return {
        "workload": profile.workload,
        "description": profile.description,
        "time_scale": time_scale,
        "units": "env steps/s: simulator steps per wall-clock second (each action of a chunk once); "
        "bound: sum of measured per-sample stage costs / largest per-resource load; "
        "achieved_over_bound: env_steps_per_s / bound_env_steps_per_s of each run (the bottleneck's "
        "busy fraction of the measured window, <= 1), median over the runs; "
        "speedup_over_bound: speedup_vs_sync / bound; "
        "predicted_env_steps_per_s: the planner's discrete-event simulation of the same mode",
        "baseline": BASELINE,
        "modes": modes,
    }


def write_csv(result: dict[str, Any], path: Path) -> None:
    cols = [
        "name",
        "median",
        "min",
        "max",
        "speedup_vs_sync",
        "bound",
        "bound_env_steps_per_s",
        "achieved_over_bound",
        "bottleneck",
        "predicted_env_steps_per_s",
        "busy_env",
        "busy_rollout",
        "busy_train",
        "busy_sync",
        "staleness_mean",
        "staleness_max",
        "peak_total_mb",
        "peak_process_mb",
    ]
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["workload", *cols])
        for m in result["modes"]:
            tp = m["env_steps_per_s"]
            w.writerow(
                [
                    result["workload"],
                    m["name"],
                    f"{tp['median']:.3f}",
                    f"{tp['min']:.3f}",
                    f"{tp['max']:.3f}",
                    "" if m["speedup_vs_sync"] is None else f"{m['speedup_vs_sync']:.4f}",
                    f"{m['bound']:.4f}",
                    f"{m['bound_env_steps_per_s']:.3f}",
                    f"{m['achieved_over_bound']:.4f}",
                    m["bottleneck"],
                    "" if m["predicted_env_steps_per_s"] is None else f"{m['predicted_env_steps_per_s']:.3f}",
                    *(f"{m['busy'].get(k, 0.0):.4f}" for k in ("env", "rollout", "train", "sync")),
                    f"{m['staleness_mean']:.4f}",
                    m["staleness_max"],
                    "" if m.get("peak_total_mb") is None else f"{m['peak_total_mb']:.0f}",
                    "" if m.get("peak_process_mb") is None else f"{m['peak_process_mb']:.0f}",
                ]
            )


def plot_throughput(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = result["modes"]
    x = list(range(len(modes)))
    med = [m["env_steps_per_s"]["median"] for m in modes]
    lo = [m["env_steps_per_s"]["median"] - m["env_steps_per_s"]["min"] for m in modes]
    hi = [m["env_steps_per_s"]["max"] - m["env_steps_per_s"]["median"] for m in modes]
    fig, ax = plt.subplots(figsize=(1.6 * len(modes) + 2, 4))
    ax.bar(x, med, yerr=[lo, hi], capsize=4, color="#4C72B0", label="measured (median, min-max)")
    for i, m in enumerate(modes):
        b = m["bound_env_steps_per_s"]
        ax.hlines(
            b, i - 0.4, i + 0.4, colors="#C44E52", linewidth=2, label="pipeline bound" if i == 0 else None
        )
        pred = m.get("predicted_env_steps_per_s")
        if pred is not None:
            ax.plot(
                [i], [pred], "x", color="black", markersize=8, label="predicted (DES)" if i == 0 else None
            )
        nb = m["nominal_bound_env_steps_per_s"]
        if nb is None:
            continue
        ax.hlines(
            nb,
            i - 0.4,
            i + 0.4,
            colors="#8172B2",
            linestyles="dotted",
            linewidth=1.5,
            label="nominal bound (profile)" if i == 0 else None,
        )
        if m["speedup_vs_sync"] is not None:
            ax.text(i, med[i] * 0.5, f"{m['speedup_vs_sync']:.2f}x", ha="center", color="white", fontsize=9)
    ax.set_xticks(x, [m["label"] for m in modes], rotation=20, ha="right")
    top = max(
        [m["env_steps_per_s"]["max"] for m in modes]
        + [m["bound_env_steps_per_s"] for m in modes]
        + [m["nominal_bound_env_steps_per_s"] or 0.0 for m in modes]
    )
    ax.set_ylim(0, 1.35 * top)
    ax.set_ylabel("env steps/s")
    ax.set_title(f"{result['workload']} (time_scale {result['time_scale']})")
    ax.legend(fontsize=8, loc="upper left", ncol=3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


COLORS = {
    "env_step": "#55A868",
    "batch_inferred": "#4C72B0",
    "train": "#8C1D18",
    "micro_batch": "#DD8452",
    "weights_published": "#8172B2",
    "act": "#4C72B0",
    "evaluate": "#C44E52",
    "evaluate_nograd": "#E39C9E",
    "sync": "#8172B2",
}


def plot_timeline(run_dir: Path, path: Path, title: str = "") -> None:
    """Per-worker utilization timeline from a run's ``events.jsonl`` (+ device holds if any)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    from asyncvla.runtime.events import read_events

    events = read_events(run_dir / "events.jsonl")
    holds_path = run_dir / "holds.jsonl"
    holds = (
        [json.loads(x) for x in holds_path.read_text().splitlines() if x.strip()]
        if holds_path.exists()
        else []
    )
    t_start = min(
        [e["t"] for e in events if e["kind"] == "run_start"] or [min(e.get("t0", e["t"]) for e in events)]
    )
    lanes: dict[str, list[tuple[float, float, str]]] = {}
    for e in events:
        if e["kind"] in COLORS and "t0" in e:
            lanes.setdefault(e["worker"], []).append((e["t0"] - t_start, e["t1"] - e["t0"], e["kind"]))
    for h in holds:
        op = "evaluate" if h.get("role") == "trainer" and h["op"] == "act" else h["op"]
        lanes.setdefault(f"device {h['device']}", []).append((h["t0"] - t_start, h["t1"] - h["t0"], op))
    order = sorted(
        lanes,
        key=lambda w: (
            0 if w.startswith("env") else 1 if w.startswith("rollout") else 2 if w == "trainer" else 3,
            w,
        ),
    )
    fig, ax = plt.subplots(figsize=(11, 0.55 * len(order) + 1.5))
    for i, lane in enumerate(order):
        by_kind: dict[str, list[tuple[float, float]]] = {}
        for t0, d, k in lanes[lane]:
            by_kind.setdefault(k, []).append((t0, max(d, 1e-4)))
        for k, spans in by_kind.items():
            ax.broken_barh(spans, (i - 0.4, 0.8), facecolors=COLORS.get(k, "grey"))
    pub = [e["t1"] - t_start for e in events if e["kind"] == "weights_published"]
    for t in pub:
        ax.axvline(t, color="#8172B2", alpha=0.25, linewidth=0.8)
    ax.set_yticks(range(len(order)), order)
    ax.set_xlabel("seconds since run start (vertical lines: weights published)")
    ax.set_title(title or f"utilization: {run_dir.name}")
    kinds = sorted({k for v in lanes.values() for _, _, k in v})
    ax.legend(
        handles=[Patch(color=COLORS.get(k, "grey"), label=k) for k in kinds],
        fontsize=7,
        loc="upper center",
        bbox_to_anchor=(0.5, -0.5 / max(1, len(order)) - 0.12),
        ncol=len(kinds),
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def print_table(result: dict[str, Any], console: Any) -> None:
    from rich.table import Table

    table = Table(title=f"bench: {result['workload']} (time_scale {result['time_scale']})")
    for col in (
        "mode",
        "env steps/s median (min-max)",
        "speedup",
        "bound",
        "achieved/bound",
        "bottleneck",
        "predicted (DES)",
        "busy env/roll/train/sync",
        "staleness mean/max",
        "peak MB total/process",
    ):
        table.add_column(col)
    for m in result["modes"]:
        tp = m["env_steps_per_s"]
        b = m["busy"]
        table.add_row(
            m["label"],
            f"{tp['median']:.1f} ({tp['min']:.1f}-{tp['max']:.1f})",
            "-" if m["speedup_vs_sync"] is None else f"{m['speedup_vs_sync']:.2f}x",
            f"{m['bound']:.2f} ({m['bound_env_steps_per_s']:.0f}/s)",
            f"{m['achieved_over_bound']:.2f}",
            m["bottleneck"],
            "-" if m["predicted_env_steps_per_s"] is None else f"{m['predicted_env_steps_per_s']:.0f}",
            "/".join(f"{b.get(k, 0.0):.2f}" for k in ("env", "rollout", "train", "sync")),
            f"{m['staleness_mean']:.2f}/{m['staleness_max']}",
            "-" if m.get("peak_total_mb") is None else f"{m['peak_total_mb']:.0f}/{m['peak_process_mb']:.0f}",
        )
    console.print(table)


def run_bench(
    profile_path: str | Path,
    modes: list[str] | None = None,
    out_dir: str | Path = "runs/bench",
    repeats: int = 2,
    env_steps_per_mode: int | None = None,
    time_scale: float | None = None,
    address: str | None = None,
    timeline_mode: str | None = None,
    plots: bool = True,
    console: Any = None,
    tune: bool = False,
) -> dict[str, Any]:
    """Run every mode ``repeats`` times, alternating (A B A B ...), and write the results.

    ``env_steps_per_mode``: env steps measured per run after the warm-up updates (None: 4 updates).
    ``time_scale`` overrides the profile's. ``tune``: choose the streamer's dynamic batching from
    measured latencies (``tune.tune_profile``) and add a ``streamer-tuned`` row next to the
    ``streamer`` row. Returns what ``bench.json`` holds.
    """
    import ray

    from asyncvla.runtime.launcher import init_ray

    profile = load_profile(profile_path)
    out = Path(out_dir)
    if (out / "bench.json").exists():
        raise FileExistsError(f"{out} already holds a benchmark; choose another out_dir")
    emulated = not isinstance(profile, RealProfile)
    modes = list(modes or [*profile.all_modes(), *(["auto"] if emulated else [])])
    if repeats < 1:
        raise ConfigError("repeats: must be >= 1")
    scale = profile.time_scale if time_scale is None else float(time_scale)
    auto = None
    if "auto" in modes:
        if not emulated:
            raise ConfigError("mode 'auto': needs the stage costs of an emulated profile")
        from asyncvla.bench.auto import choose

        auto = choose(profile, scale, batching=True)
        profile.modes["auto"] = auto["overrides"]
        if console is not None:
            console.print(
                f"  auto: {auto['chosen']} (predicted {auto['predicted'][auto['chosen']]:.1f} env steps/s)"
            )
    for m in modes:
        profile.mode_overrides(m)  # unknown modes fail before anything runs
    tuning = None
    if tune:
        from asyncvla.bench.tune import tune_profile

        tuning = tune_profile(profile, "streamer", scale)
        profile.modes[tuning["tuned_mode"]] = {
            **profile.mode_overrides("streamer"),
            "runtime.max_batch_samples": tuning["tuned"]["max_batch_samples"],
            "runtime.batch_timeout_ms": tuning["tuned"]["batch_timeout_ms"],
        }
        modes = [m for m in modes if m != tuning["tuned_mode"]]
        modes = [*modes, *(["streamer"] if "streamer" not in modes else []), tuning["tuned_mode"]]
        if console is not None:
            console.print(
                f"  tune: max_batch_samples {tuning['tuned']['max_batch_samples']}, batch_timeout_ms "
                f"{tuning['tuned']['batch_timeout_ms']:g} (default {tuning['default']['max_batch_samples']}, "
                f"{tuning['default']['batch_timeout_ms']:g})"
            )
    out.mkdir(parents=True, exist_ok=True)
    measured = updates_for(profile, env_steps_per_mode)
    updates = profile.warmup_updates + measured
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in modes}
    started = init_ray(address)
    try:
        for r in range(repeats):
            for m in modes:
                res = run_mode(profile, m, updates, out / "runs" / f"{m}-r{r}", scale)
                runs[m].append(res)
                if console is not None:
                    console.print(
                        f"  {m} (repeat {r + 1}/{repeats}): {res['env_steps_per_s']:.1f} env steps/s, "
                        f"bound {res['bound_env_steps_per_s']:.1f}, bottleneck {res['bottleneck']}"
                    )
    finally:
        if started:
            ray.shutdown()
    result = summarize(profile, runs, scale)
    for row in result["modes"]:
        if auto is not None and row["name"] == "auto":
            row["label"] = f"auto: {auto['chosen']}"
    result.update(
        repeats=repeats,
        updates_per_run=updates,
        warmup_updates=profile.warmup_updates,
        profile=str(profile_path),
        tune=tuning,
        auto=auto,
    )
    (out / "bench.json").write_text(json.dumps(result, indent=2))
    write_csv(result, out / "bench.csv")
    if plots:
        plot_throughput(result, out / "throughput.png")
        tl = timeline_mode or modes[-1]
        plot_timeline(
            Path(runs[tl][-1]["run_dir"]),
            out / "timeline.png",
            title=f"{profile.workload}: {LABELS.get(tl, tl)} (last repeat)",
        )
    if console is not None:
        print_table(result, console)
    return result
