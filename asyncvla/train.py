"""Training entry points: build workers from a config, run SFT and the RL schedule, write the run."""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import ray
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from asyncvla.builder import build_policy, check_fits, evaluate, probe_env, quick_eval, with_cost_critic
from asyncvla.config import DATA_SEED_STRIDE, Config, ConfigError, dump_config
from asyncvla.policies import Policy, load_policy, save_policy
from asyncvla.rundir import RunDir, atomic_write_text
from asyncvla.runtime.autoplace import resolve as resolve_auto
from asyncvla.runtime.driver import run_schedule
from asyncvla.runtime.launcher import load_weights
from asyncvla.runtime.placement import use_deterministic
from asyncvla.runtime.trainer import GUARD_COUNTERS, LOSS_COUNTERS
from asyncvla.runtime.types import concat_obs
from asyncvla.safety.monitor import AlertSink, Monitor
from asyncvla.sft import behaviour_clone, collect_demos, pretrain_grounding
from asyncvla.trust.audit import AuditError, AuditLog, verify_checkpoint
from asyncvla.trust.manifest import Manifest, array_digest, sha256_text


def run_sft(cfg: Config, policy: Policy, out_dir: Path, console: Console) -> dict[str, float]:
    """Few-shot SFT from scripted-expert demos; saves the checkpoint in ``out_dir``."""
    t0 = time.perf_counter()
    info: dict[str, float] = {}
    if cfg.pretrain.enabled:
        info.update(run_pretrain(cfg, policy, console))
    obs, actions, expert_sr = collect_demos(
        cfg.env.name,
        cfg.env.kwargs,
        cfg.sft.demos,
        cfg.policy.chunk_size,
        cfg.sft.seed_offset + DATA_SEED_STRIDE * cfg.seed,
    )
    console.print(
        f"SFT: {cfg.sft.demos} expert demos ({len(actions)} decisions, expert success {expert_sr:.2f})"
    )
    with _progress(console) as prog:
        task = prog.add_task("SFT", total=cfg.sft.steps, info="")
        losses = behaviour_clone(
            policy,
            obs,
            actions,
            cfg.sft.steps,
            cfg.sft.batch_size,
            cfg.sft.lr,
            seed=cfg.seed,
            on_step=lambda e, loss: prog.update(task, advance=1, info=f"nll {loss:.3f}"),
            augment_shift=cfg.sft.augment_shift,
            augment_pad=cfg.sft.augment_pad,
            augment_word_dropout=cfg.sft.augment_word_dropout,
        )
    save_policy(policy, out_dir, cfg.policy.name)
    info.update(
        sft_demos=cfg.sft.demos,
        sft_data_sha256=array_digest(obs, actions),
        sft_final_nll=losses[-1],
        expert_success_rate=expert_sr,
        sft_wall_s=time.perf_counter() - t0,
    )
    return info


def run_pretrain(cfg: Config, policy: Policy, console: Console) -> dict[str, float]:
    """Grounding pretraining on scenes of ``pretrain.families`` (pointing labels, no actions)."""
    t0 = time.perf_counter()
    parts = []
    for j, family in enumerate(cfg.pretrain.families):
        kwargs = {**cfg.env.kwargs, "family": family}
        obs, points, _ = collect_demos(
            cfg.env.name,
            kwargs,
            cfg.pretrain.episodes,
            cfg.policy.chunk_size,
            cfg.pretrain.seed_offset + j * 100_000 + DATA_SEED_STRIDE * cfg.seed,
            with_points=True,
        )
        parts.append((obs, points))
    obs = concat_obs([p[0] for p in parts])
    points = np.concatenate([p[1] for p in parts])
    with _progress(console) as prog:
        task = prog.add_task("pretrain (grounding)", total=cfg.pretrain.epochs, info="")
        losses = pretrain_grounding(
            policy,
            obs,
            points,
            cfg.pretrain.epochs,
            cfg.pretrain.batch_size,
            cfg.pretrain.lr,
            seed=cfg.seed,
            on_epoch=lambda e, loss: prog.update(task, advance=1, info=f"point mse {loss:.4f}"),
            augment_shift=cfg.pretrain.augment_shift,
            augment_pad=cfg.pretrain.augment_pad,
            augment_word_dropout=cfg.pretrain.augment_word_dropout,
        )
    return {
        "pretrain_samples": len(points),
        "pretrain_data_sha256": array_digest(obs, points),
        "pretrain_final_mse": losses[-1],
        "pretrain_wall_s": time.perf_counter() - t0,
    }


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )


def _latest_checkpoint(run_path: Path) -> Path | None:
    marker = run_path / "checkpoints" / "latest.json"
    if not marker.is_file():
        return None
    return run_path / "checkpoints" / json.loads(marker.read_text())["path"]


def _vouched_checkpoint(latest: Path, console: Console) -> Path:
    """The newest checkpoint of the run that its audit log records and that matches its hashes:
    a run stopped between writing a checkpoint and recording it resumes from the one before."""
    candidates = [latest] + sorted(
        (p for p in latest.parent.glob("update_*") if p.is_dir() and p.name < latest.name), reverse=True
    )
    first: AuditError | None = None
    for c in candidates:
        try:
            verify_checkpoint(c)
        except AuditError as e:
            first = first or e
            continue
        if c != latest:
            console.print(f"resume: {latest.name} is not in the audit log ({first}); using {c.name}")
        return c
    assert first is not None
    raise first


def train(
    cfg: Config,
    run_path: Path,
    resume: bool = False,
    console: Console | None = None,
    stop_after_s: float | None = None,
    verify: bool = True,
) -> dict[str, Any]:
    """One run into ``run_path``. ``verify``: a checkpoint loaded from a run directory with an
    audit log must match its recorded hashes (``trust.audit.verify_checkpoint``)."""
    console = console or Console()
    if cfg.train.torch_threads:
        torch.set_num_threads(cfg.train.torch_threads)
    cfg, auto = resolve_auto(cfg)
    if auto is not None:
        pred = auto["predicted"]
        vs_sync = (
            f", {pred[auto['chosen']] / pred['sync-colocated']:.2f}x sync colocated"
            if "sync-colocated" in pred
            else ""
        )
        console.print(
            f"auto: {auto['chosen']} (mode {cfg.mode}, placement {cfg.runtime.placement}), predicted "
            f"{pred[auto['chosen']]:.1f} env steps/s for {auto['profile']}{vs_sync}"
        )
    use_deterministic(cfg.runtime.deterministic)
    torch.manual_seed(cfg.seed)
    probe = probe_env(cfg)
    policy = build_policy(cfg, probe)
    if cfg.runtime.auto_tune:
        from asyncvla.runtime.autotune import auto_tune

        cfg, _ = auto_tune(cfg, policy)
        console.print(
            f"auto-tune: max_batch_samples {cfg.runtime.max_batch_samples}, "
            f"batch_timeout_ms {cfg.runtime.batch_timeout_ms:g}"
        )
    # Everything that can be refused is checked before the run directory is touched.
    ckpt = _latest_checkpoint(Path(run_path)) if resume else None
    if resume and ckpt is None:
        probe.close()
        raise FileNotFoundError(f"--resume: no checkpoint in {Path(run_path) / 'checkpoints'}")
    if ckpt is not None and verify:
        ckpt = _vouched_checkpoint(ckpt, console)
    # The policy to start from: the checkpoint resumed from, or a train.init checkpoint directory.
    source, label = (ckpt, f"checkpoint {ckpt}") if ckpt is not None else (None, "")
    if ckpt is None and cfg.train.init not in (None, "sft"):
        source, label = Path(cfg.train.init), f"train.init {cfg.train.init}"
    init_policy = None
    try:
        if source is not None:
            if ckpt is None and not (source / "policy.json").is_file():
                raise ConfigError(
                    f"train.init: {cfg.train.init} is not a checkpoint directory; allowed: null, sft, or one"
                )
            if verify:
                verify_checkpoint(source)
            init_policy = with_cost_critic(cfg, load_policy(source))
            check_fits(init_policy, probe, label)
        assets = probe.asset_files()
    finally:
        probe.close()
    resumed = json.loads((ckpt / "state.json").read_text()) if ckpt is not None else None
    run = RunDir(run_path, cfg, resume=resume, resume_from=resumed)
    if auto is not None:
        atomic_write_text(run.path / "auto.json", json.dumps(auto, indent=2))
    config_text = dump_config(cfg)
    manifest = Manifest(run.path)
    audit = AuditLog(run.path)
    audit.append("run_start", manifest_sha256=manifest.start(config_text, cfg.seed, assets, source, resume))
    audit.append("config", sha256=sha256_text(config_text), text=config_text)
    if resumed is not None:
        audit.append("resume", checkpoint=ckpt.relative_to(run.path).as_posix(), update=resumed["update"])
    t_start = time.perf_counter()
    state: dict[str, Any] = {"update": 0, "env_steps": 0, "wall_s": 0.0}
    extra: dict[str, Any] = {}

    if ckpt is None:
        if cfg.train.init == "sft":
            extra.update(run_sft(cfg, policy, run.path / "sft", console))
            audit.checkpoint(run.path / "sft", update=0)
            manifest.set(
                demo_data={
                    k: extra[k]
                    for k in ("sft_data_sha256", "pretrain_data_sha256", "sft_demos")
                    if k in extra
                }
            )
        elif init_policy is not None:
            policy = init_policy
        init_eval = evaluate(cfg, policy, cfg.eval.episodes)
        audit.append(
            "evaluation",
            update=0,
            episodes=cfg.eval.episodes,
            success_rate=init_eval["success_rate"],
            episode_cost=init_eval["episode_cost"],
        )
        state["sft_success_rate"] = init_eval["success_rate"]
        state["sft_episode_cost"] = init_eval["episode_cost"]
        state["sft_success_ci95"] = [init_eval["success_ci95_low"], init_eval["success_ci95_high"]]
        console.print(
            f"initial policy: held-out success {init_eval['success_rate']:.2f} "
            f"over {cfg.eval.episodes} episodes"
        )
    else:
        policy = init_policy
        state.update(resumed)
        console.print(f"resuming from {ckpt} (update {state['update']}, env steps {state['env_steps']})")

    monitor = Monitor(cfg.monitor, cfg.schedule()[1]) if cfg.monitor.enabled else None
    monitor_state = run.path / "monitor.json"
    if monitor is not None and resumed is not None and monitor_state.is_file():
        monitor.load_state_dict(json.loads(monitor_state.read_text()))
    sink = AlertSink(run.path / "alerts.jsonl", console, run.tensorboard)

    def announce(alerts: list[Any]) -> None:
        for a in alerts:
            sink.emit(a)
            audit.append("alert", **a.to_json())

    with _progress(console) as prog:
        task = prog.add_task(f"RL ({cfg.mode})", total=cfg.train.updates, completed=state["update"], info="")
        eval_policy = copy.deepcopy(policy)

        def on_row(row: dict[str, Any]) -> None:
            ref = row.get("_weights")
            if ref is not None:
                load_weights(eval_policy, {"weights": ray.get(ref[0]), "version": row["policy_version"]})
                row.update(quick_eval(cfg, eval_policy, row["update"]))
            if "weights_sha256" in row:
                audit.append("weights", version=row["policy_version"], sha256=row["weights_sha256"])
            if ref is not None:
                audit.append(
                    "evaluation",
                    update=row["update"],
                    episodes=cfg.eval.quick_episodes,
                    success_rate=row["eval_success_rate"],
                    episode_cost=row["eval_episode_cost"],
                )
            ckpt_dir = run.path / "checkpoints" / f"update_{row['update']:05d}"
            checkpointed = row["update"] % cfg.train.checkpoint_every == 0 and ckpt_dir.is_dir()
            if checkpointed:
                audit.checkpoint(ckpt_dir, update=row["update"])
            if monitor is not None:
                announce(monitor.observe(row))
                if checkpointed:  # a resume restarts from a checkpoint: its monitor state with it
                    atomic_write_text(monitor_state, json.dumps(monitor.state_dict()))
            prog.update(
                task,
                completed=row["update"],
                info=f"success {row['success_rate']:.2f} | {row['env_steps_per_s']:.0f} env steps/s"
                f" | staleness {row['staleness_mean']:.2f}",
            )

        def on_health(health: dict[str, dict[str, float]]) -> None:
            if monitor is not None:
                announce(monitor.check_health(health, state["update"]))

        res = run_schedule(cfg, policy, run, state, ckpt, on_row, stop_after_s, on_health)
    sink.close()
    if monitor is not None:  # the run's last checkpoint is written at the end
        atomic_write_text(monitor_state, json.dumps(monitor.state_dict()))
    acc = res.accounting

    final = evaluate(cfg, policy, cfg.eval.episodes)
    summary = {
        "mode": cfg.mode,
        "max_staleness": cfg.schedule()[1],
        "updates": state["update"],
        "policy_version": policy.version,
        "env_steps": state["env_steps"],
        "env_steps_collected": sum(e["env_steps"] for e in res.env_stats) + acc["collected_by_dead_workers"],
        # cumulative over a resumed run (the checkpoint's state); env_steps_collected,
        # samples_collected_untrained and rollout_batches count this process's part
        "samples_trained": int(acc["state"].get("decisions", 0)),
        "samples_rejected": int(acc["state"].get("rejected_samples", 0)),
        "samples_quarantined": int(acc["state"].get("quarantined_samples", 0)),
        "samples_collected_untrained": acc["leftover_samples"] + acc["discarded_samples"],
        # supervision: what dead workers took with them, and how often workers were restarted
        **{k: int(acc["state"].get(k, 0)) for k in (*LOSS_COUNTERS, *GUARD_COUNTERS)},
        "shield_interventions": sum(e.get("shield_interventions", 0) for e in res.env_stats),
        "alerts": {} if monitor is None else {k: v for k, v in monitor.counts.items() if v},
        "env_errors": sum(e.get("env_errors", 0) for e in res.env_stats),
        "rollout_batches": sum(r["batches"] for r in res.rollout_stats),
        "ray": res.ray,
        "wall_s": state["wall_s"],
        "env_steps_per_s": state["env_steps"] / max(state["wall_s"], 1e-9),
        "decisions_per_s": acc["state"].get("decisions", 0) / max(state["wall_s"], 1e-9),
        "sft_success_rate": state.get("sft_success_rate"),
        "sft_success_ci95": state.get("sft_success_ci95"),
        "sft_episode_cost": state.get("sft_episode_cost"),
        "final_success_rate": final["success_rate"],
        "final_success_ci95": [final["success_ci95_low"], final["success_ci95_high"]],
        "final_episode_return": final["episode_return"],
        "final_episode_cost": final["episode_cost"],
        "eval_episodes": cfg.eval.episodes,
        "auto": None if auto is None else auto["chosen"],
        "total_wall_s": time.perf_counter() - t_start,
        "run_dir": str(run.path),
        **extra,
    }
    run.write_summary(summary)
    run.plot_curves()
    last = _latest_checkpoint(run.path)
    if last is not None and state["update"] % cfg.train.checkpoint_every:
        audit.checkpoint(last, update=state["update"])
    audit.append(
        "evaluation",
        update=state["update"],
        episodes=cfg.eval.episodes,
        success_rate=final["success_rate"],
        ci95=summary["final_success_ci95"],
        episode_cost=final["episode_cost"],
    )
    from asyncvla.trust.modelcard import write_model_cards
    from asyncvla.trust.report import write_report

    write_model_cards(run.path)
    audit.append(
        "run_end",
        updates=state["update"],
        manifest_sha256=manifest.finish(),
        summary_sha256=sha256_text((run.path / "summary.json").read_text()),
    )
    audit.close()
    run.close()
    write_report(run.path)
    return summary


def compare(cfg: Config, out: Path, console: Console | None = None) -> dict[str, Any]:
    """Sync vs async on one config: both start from the same SFT checkpoint and run the same
    number of updates (hence the same env steps); prints and writes ``compare.json``."""
    from rich.table import Table

    console = console or Console()
    out = Path(out)
    if (out / "compare.json").exists():
        raise FileExistsError(f"{out} already holds a comparison; choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    base = cfg.model_copy(deep=True)
    if base.train.init == "sft":
        torch.manual_seed(base.seed)
        probe = probe_env(base)
        policy = build_policy(base, probe)
        probe.close()
        sft_dir = out / "sft"
        run_sft(base, policy, sft_dir, console)
        base.train.init = str(sft_dir)
    runs: dict[str, dict[str, Any]] = {}
    for mode in ("sync", "async"):
        c = base.model_copy(deep=True)
        c.mode = mode
        if mode == "sync":
            c.runtime.placement = "colocated"  # the honest baseline: every stage gets every core in turn
        console.rule(f"{mode} run")
        runs[mode] = train(c, out / mode, console=console)
    s, a = runs["sync"], runs["async"]
    result = {
        "config": cfg.name,
        "sync": {k: s[k] for k in _COMPARE_KEYS},
        "async": {k: a[k] for k in _COMPARE_KEYS},
        "async_over_sync_throughput": a["env_steps_per_s"] / s["env_steps_per_s"],
        "async_over_sync_wall": a["wall_s"] / s["wall_s"],
        "success_gap": a["final_success_rate"] - s["final_success_rate"],
        "env_steps_ratio": a["env_steps"] / s["env_steps"],
    }
    result["checks"] = {
        "async success >= sync - 0.03": result["success_gap"] >= -0.03,
        "async env steps <= 1.1 x sync": result["env_steps_ratio"] <= 1.1,
        "async wall time < sync": a["wall_s"] < s["wall_s"],
    }
    (out / "compare.json").write_text(json.dumps(result, indent=2))
    table = Table(title=f"sync vs async: {cfg.name}")
    for col in (
        "mode",
        "final success",
        "sft success",
        "env steps",
        "RL wall s",
        "env steps/s",
        "staleness max",
    ):
        table.add_column(col)
    for mode, r in runs.items():
        table.add_row(
            mode,
            f"{r['final_success_rate']:.2f}",
            f"{r['sft_success_rate']:.2f}",
            str(r["env_steps"]),
            f"{r['wall_s']:.1f}",
            f"{r['env_steps_per_s']:.0f}",
            str(r["max_staleness"]),
        )
    console.print(table)
    console.print(
        f"async/sync throughput {result['async_over_sync_throughput']:.2f}x, "
        f"success gap {result['success_gap']:+.2f}, env steps ratio {result['env_steps_ratio']:.2f}"
    )
    for name, ok in result["checks"].items():
        console.print(f"  {'PASS' if ok else 'FAIL'}  {name}")
    console.print(f"written: {out / 'compare.json'}")
    return result


_COMPARE_KEYS = (
    "final_success_rate",
    "final_success_ci95",
    "eval_episodes",
    "samples_trained",
    "sft_success_rate",
    "env_steps",
    "env_steps_collected",
    "wall_s",
    "env_steps_per_s",
    "max_staleness",
    "samples_rejected",
)


def compare_seeds(cfg: Config, out: Path, seeds: list[int], console: Console | None = None) -> dict[str, Any]:
    """``compare`` once per seed (pretraining, SFT and RL reseeded; sync and async share each
    seed's SFT checkpoint), then the mean, spread and bootstrap intervals over seeds
    (``seeds.py``); writes ``seeds.json``."""
    from rich.table import Table

    from asyncvla.seeds import seed_statistics

    console = console or Console()
    out = Path(out)
    if (out / "seeds.json").exists():
        raise FileExistsError(f"{out} already holds a seed comparison; choose another --out")
    if len(set(seeds)) != len(seeds) or not seeds:
        raise ConfigError(f"--seeds: give distinct seeds, got {seeds}")
    out.mkdir(parents=True, exist_ok=True)
    per_seed = []
    for s in seeds:
        c = cfg.model_copy(deep=True)
        c.seed = s
        console.rule(f"seed {s}")
        per_seed.append({"seed": s, **compare(c, out / f"seed-{s}", console=console)})
    result = {"config": cfg.name, **seed_statistics(per_seed), "runs": per_seed}
    gap = result["gap"]
    result["checks"] = {
        "async mean success >= sync mean - 0.03": gap["mean"] >= -0.03,
        "gap interval contains 0": gap["ci95"][0] <= 0.0 <= gap["ci95"][1],
    }
    atomic_write_text(out / "seeds.json", json.dumps(result, indent=2))
    table = Table(title=f"{len(seeds)} seeds: {cfg.name}")
    for col in ("mode", "final success per seed", "mean", "min", "95% interval", "sft per seed"):
        table.add_column(col)
    for mode in ("sync", "async"):
        r = result[mode]
        table.add_row(
            mode,
            " / ".join(f"{v:.3f}" for v in r["final_success"]),
            f"{r['mean']:.3f}",
            f"{r['min']:.3f}",
            f"[{r['ci95'][0]:.3f}, {r['ci95'][1]:.3f}]",
            " / ".join(f"{v:.2f}" for v in r["sft_success"]),
        )
    console.print(table)
    console.print(
        f"async - sync: {gap['mean']:+.3f}, 95% interval [{gap['ci95'][0]:+.3f}, {gap['ci95'][1]:+.3f}]"
    )
    for name, ok in result["checks"].items():
        console.print(f"  {'PASS' if ok else 'FAIL'}  {name}")
    console.print(f"written: {out / 'seeds.json'}")
    return result
