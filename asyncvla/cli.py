"""The ``asyncvla`` command line."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import typer
from rich.console import Console

from asyncvla.config import CheckpointError, Config, ConfigError, load_config
from asyncvla.trust.audit import AuditError

app = typer.Typer(
    add_completion=False, no_args_is_help=True, help="Asynchronous RL fine-tuning of VLA policies."
)
console = Console()


def _config(path: Path, overrides: list[str] | None) -> Config:
    try:
        return load_config(path, overrides or [])
    except ConfigError as e:
        _fail(e)


def _interruptible() -> None:
    """Ctrl-C must stop a run even when the shell started us with SIGINT ignored (background jobs
    of a non-interactive shell): KeyboardInterrupt reaches the driver, which stops every worker."""
    import signal

    signal.signal(signal.SIGINT, signal.default_int_handler)


def _seed_list(text: str) -> list[int]:
    """``11,22,33`` -> [11, 22, 33]; anything else fails at start with one line."""
    try:
        seeds = [int(x) for x in text.split(",")]
    except ValueError:
        seeds = []
    if not seeds or min(seeds) < 0 or len(set(seeds)) != len(seeds):
        _fail(ConfigError(f"--seeds: distinct comma-separated integers >= 0, got {text!r}"))
    return seeds


def _fail(e: Exception) -> None:
    # One line, exit code 2: the contract for any bad input at start.
    print(f"error: {e}", file=sys.stderr)
    raise typer.Exit(code=2)


@app.command()
def train(
    config: Path = typer.Argument(..., help="YAML config file."),
    overrides: list[str] | None = typer.Argument(None, help="key=value overrides, e.g. algo.lr=1e-4"),
    run_dir: Path | None = typer.Option(
        None, "--run-dir", help="Run directory (default runs/<name>-<time>)."
    ),
    resume: bool = typer.Option(
        False, "--resume", help="Continue the run in --run-dir from its latest checkpoint."
    ),
    address: str | None = typer.Option(
        None, "--address", help="Join a Ray cluster (auto or HOST:PORT) instead of starting one."
    ),
    no_verify: bool = typer.Option(
        False, "--no-verify", help="Load a checkpoint even if it does not match its run's audit log."
    ),
) -> None:
    """Fine-tune a policy with RL (PPO or GRPO), sync or async (``mode=``)."""
    from asyncvla.runtime.rayenv import prepare_ray_env

    _interruptible()
    prepare_ray_env(address)
    from asyncvla.rundir import default_run_dir
    from asyncvla.runtime.launcher import WorkerError
    from asyncvla.train import train as run_train

    cfg = _config(config, [*(overrides or []), *([f"runtime.address={address}"] if address else [])])
    if resume and run_dir is None:
        _fail(ValueError("--resume needs --run-dir"))
    path = run_dir or default_run_dir(cfg)
    try:
        summary = run_train(cfg, path, resume=resume, console=console, verify=not no_verify)
    except (ConfigError, FileExistsError, FileNotFoundError, CheckpointError, AuditError) as e:
        _fail(e)
    except WorkerError as e:
        print(f"error: a worker failed: {e}", file=sys.stderr)
        raise typer.Exit(code=1) from None
    except KeyboardInterrupt:
        print("interrupted: all workers stopped", file=sys.stderr)
        raise typer.Exit(code=130) from None
    console.print_json(json.dumps(summary))
    console.print(
        f"run directory: [bold]{path}[/bold]  (summary.json, metrics.jsonl, manifest.json, audit.jsonl, "
        "checkpoints/ with model cards)"
    )
    console.print(f"report: [bold]{Path(path) / 'report.html'}[/bold]")


@app.command()
def compare(
    config: Path = typer.Argument(..., help="YAML config file."),
    overrides: list[str] | None = typer.Argument(None, help="key=value overrides for both runs"),
    out: Path | None = typer.Option(
        None, "--out", help="Output directory (default runs/<name>-compare-<time>)."
    ),
    address: str | None = typer.Option(None, "--address", help="Join a Ray cluster (auto or HOST:PORT)."),
    seeds: str | None = typer.Option(
        None,
        "--seeds",
        help="Comma-separated seeds (e.g. 11,22,33): one comparison per seed (everything reseeded), "
        "then mean, min and bootstrap intervals over seeds in seeds.json.",
    ),
) -> None:
    """Run the same config in sync and in async mode from one SFT start and compare them."""
    import time

    seed_list = _seed_list(seeds) if seeds is not None else None

    from asyncvla.runtime.rayenv import prepare_ray_env

    _interruptible()
    prepare_ray_env(address)
    from asyncvla.runtime.launcher import WorkerError
    from asyncvla.train import compare as run_compare
    from asyncvla.train import compare_seeds

    cfg = _config(config, [*(overrides or []), *([f"runtime.address={address}"] if address else [])])
    path = out or Path("runs") / f"{cfg.name}-compare-{time.strftime('%Y%m%d-%H%M%S')}"
    try:
        if seed_list is None:
            run_compare(cfg, path, console=console)
        else:
            compare_seeds(cfg, path, seed_list, console=console)
    except (ConfigError, FileExistsError, FileNotFoundError, CheckpointError) as e:
        _fail(e)
    except WorkerError as e:
        print(f"error: a worker failed: {e}", file=sys.stderr)
        raise typer.Exit(code=1) from None


@app.command("safe-compare")
def safe_compare(
    config: Path = typer.Argument(
        ..., help="A constrained config (algo.name=ppo_lagrangian, algo.cost_limit)."
    ),
    overrides: list[str] | None = typer.Argument(None, help="key=value overrides for both runs"),
    seeds: str = typer.Option("11,22,33", "--seeds", help="Comma-separated seeds."),
    out: Path | None = typer.Option(
        None, "--out", help="Output directory (default runs/<name>-safety-<time>)."
    ),
) -> None:
    """Constrained vs unconstrained RL on the same seeds and SFT starts: success and episode cost."""
    seed_list = _seed_list(seeds)
    from asyncvla.runtime.rayenv import prepare_ray_env

    _interruptible()
    prepare_ray_env(None)
    from asyncvla.runtime.launcher import WorkerError
    from asyncvla.safety.compare import compare_constraint

    cfg = _config(config, overrides)
    path = out or Path("runs") / f"{cfg.name}-safety-{time.strftime('%Y%m%d-%H%M%S')}"
    try:
        compare_constraint(cfg, path, seed_list, console)
    except (ConfigError, FileExistsError, FileNotFoundError, CheckpointError) as e:
        _fail(e)
    except WorkerError as e:
        print(f"error: a worker failed: {e}", file=sys.stderr)
        raise typer.Exit(code=1) from None


@app.command()
def bench(
    workload: str = typer.Option(
        ...,
        "--workload",
        help="Profile in configs/bench (balanced, heavy-tail, vectorized-sim, libero-0p5b, libero-oft7b, "
        "tabletop-tiny, libero) "
        "or a YAML path.",
    ),
    modes: str | None = typer.Option(
        None,
        "--modes",
        help="Comma-separated modes (default: sync-colocated,sync-disaggregated,train-async,"
        "rollout-async,streamer, and auto for emulated profiles: the mode the simulator predicts "
        "fastest; extra: dynamic-batching).",
    ),
    out: Path | None = typer.Option(
        None, "--out", help="Output directory (default runs/bench-<workload>-<time>)."
    ),
    repeats: int = typer.Option(2, "--repeats", help="Runs per mode, alternated A B A B."),
    env_steps: int | None = typer.Option(
        None, "--env-steps", help="Env steps measured per run after warm-up."
    ),
    time_scale: float | None = typer.Option(None, "--time-scale", help="Override the profile's time_scale."),
    address: str | None = typer.Option(None, "--address", help="Join a Ray cluster (auto or HOST:PORT)."),
    tune: bool = typer.Option(
        False,
        "--tune",
        help="Choose the streamer's max_batch_samples / batch_timeout_ms from measured latencies "
        "and add a streamer-tuned row.",
    ),
) -> None:
    """Throughput benchmark: one emulated workload under the RL-VLA^3 ablation modes."""
    import time

    from asyncvla.runtime.rayenv import prepare_ray_env

    prepare_ray_env(address)  # before anything imports ray
    from asyncvla.bench.bench import run_bench
    from asyncvla.bench.profiles import resolve_profile
    from asyncvla.runtime.launcher import WorkerError

    out_console = console if sys.stdout.isatty() else Console(width=170)
    try:
        path = resolve_profile(workload)
        dest = out or Path("runs") / f"bench-{path.stem}-{time.strftime('%Y%m%d-%H%M%S')}"
        run_bench(
            path,
            modes=[m.strip() for m in modes.split(",") if m.strip()] if modes else None,
            out_dir=dest,
            repeats=repeats,
            env_steps_per_mode=env_steps,
            time_scale=time_scale,
            address=address,
            console=out_console,
            tune=tune,
        )
    except (ConfigError, FileExistsError) as e:
        _fail(e)
    except WorkerError as e:
        print(f"error: a worker failed: {e}", file=sys.stderr)
        raise typer.Exit(code=1) from None
    out_console.print(f"written: {dest}/bench.json, bench.csv, throughput.png, timeline.png")


@app.command()
def plan(
    profile: str = typer.Option(
        ..., "--profile", help="Profile in configs/bench (e.g. libero-oft7b) or a YAML path."
    ),
    gpus: str = typer.Option("8,16,32,64,128,256", "--gpus", help="Comma-separated GPU counts."),
    out: Path | None = typer.Option(
        None, "--out", help="Output directory (default runs/plan-<profile>-<time>)."
    ),
    schedules: str = typer.Option("sync,async", "--schedules", help="Schedules to simulate: sync, async."),
    updates: int = typer.Option(10, "--updates", min=2, help="Simulated updates per candidate (2 warm-up)."),
    overhead_ms: float = typer.Option(
        0.0, "--overhead-ms", min=0.0, help="Messaging delay per request round trip (modelled machine's ms)."
    ),
) -> None:
    """Placement planner: simulate the runtime's scheduling on N GPUs and recommend a placement."""
    import time

    from rich.table import Table

    from asyncvla.bench.planner import plan as run_plan
    from asyncvla.bench.planner import table, write_plan
    from asyncvla.bench.profiles import load_profile, resolve_profile

    try:
        path = resolve_profile(profile)
        prof = load_profile(path)
        counts = [int(g) for g in gpus.split(",") if g.strip()]
        kinds = tuple(s.strip() for s in schedules.split(",") if s.strip())
        if not counts or any(k not in ("sync", "async") for k in kinds) or not kinds:
            raise ConfigError("--gpus needs GPU counts and --schedules sync and/or async")
        result = run_plan(
            prof,
            counts,
            schedules=kinds,
            updates=updates,
            warmup=min(2, updates - 1),
            overhead_s=overhead_ms / 1000,
        )
    except (ConfigError, ValueError) as e:
        _fail(e)
    dest = out or Path("runs") / f"plan-{path.stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    js, png = write_plan(result, dest)
    t = Table(title=f"plan: {result['workload']} (predicted, modelled machine's seconds)")
    for col in ("GPUs", "recommended", "env steps/s", "per GPU", "GPU busy", "vs sync colocated"):
        t.add_column(col)
    for row in table(result):
        t.add_row(*row)
    console.print(t)
    console.print(f"written: {js}, {png}")


@app.command()
def sft(
    config: Path = typer.Argument(..., help="YAML config file."),
    overrides: list[str] | None = typer.Argument(None, help="key=value overrides, e.g. sft.demos=20"),
    out: Path | None = typer.Option(
        None, "--out", help="Checkpoint directory (default runs/<name>-sft-<time>)."
    ),
) -> None:
    """Behaviour-clone the env's scripted expert (few-shot SFT warm start)."""
    import time

    import torch

    from asyncvla.builder import build_policy, evaluate, probe_env
    from asyncvla.train import run_sft

    cfg = _config(config, overrides)
    torch.manual_seed(cfg.seed)
    try:
        probe = probe_env(cfg)
        policy = build_policy(cfg, probe)
    except ConfigError as e:
        _fail(e)
    probe.close()
    path = out or Path("runs") / f"{cfg.name}-sft-{time.strftime('%Y%m%d-%H%M%S')}"
    info = run_sft(cfg, policy, path, console)
    info["sft_success_rate"] = evaluate(cfg, policy, cfg.eval.episodes)["success_rate"]
    (path / "sft.json").write_text(json.dumps(info, indent=2))
    console.print_json(json.dumps(info))
    console.print(f"checkpoint: [bold]{path}[/bold]  (use train.init={path})")


def _run_config(checkpoint: Path, config: Path | None, overrides: list[str] | None) -> Config:
    """The config a checkpoint's env comes from: ``config``, else the run's ``config.yaml`` above it."""
    cfg_path = config
    if cfg_path is None:
        for parent in checkpoint.resolve().parents:
            if (parent / "config.yaml").is_file():
                cfg_path = parent / "config.yaml"
                break
    return _config(cfg_path, overrides) if cfg_path else _config(None, overrides)  # type: ignore[arg-type]


def _load_checked(cfg: Config, checkpoint: Path, no_verify: bool):
    """The checkpoint's policy, verified against its run's audit log and checked to fit the env;
    bad input fails with one line."""
    from asyncvla.builder import check_fits, probe_env
    from asyncvla.policies import load_policy
    from asyncvla.trust.audit import verify_checkpoint

    try:
        env = probe_env(cfg)
        try:
            if not no_verify:
                verify_checkpoint(checkpoint)
            policy = load_policy(checkpoint)
            check_fits(policy, env, f"checkpoint {checkpoint}")
        finally:
            env.close()
    except (ConfigError, FileNotFoundError, CheckpointError, AuditError) as e:
        _fail(e)
    return policy


@app.command("eval")
def eval_cmd(
    checkpoint: Path = typer.Argument(..., help="Checkpoint directory (model.safetensors + policy.json)."),
    episodes: int | None = typer.Option(
        None, "--episodes", min=1, help="Episodes (per cell with --suite; default 100, suites 300)."
    ),
    config: Path | None = typer.Option(None, "--config", help="Config for the env (default: the run's)."),
    overrides: list[str] | None = typer.Argument(None, help="key=value overrides of the env config"),
    no_verify: bool = typer.Option(
        False, "--no-verify", help="Load the checkpoint even if it does not match its run's audit log."
    ),
    suite: str | None = typer.Option(
        None, "--suite", help="Evaluation suite: robustness, generalization, groups or language."
    ),
    out: Path | None = typer.Option(
        None, "--out", help="Output directory of a suite (<suite>.json/.csv/.png)."
    ),
    axis: list[str] | None = typer.Option(None, "--axis", help="robustness: only these axes (repeatable)."),
    strengths: str | None = typer.Option(
        None, "--strengths", help="robustness: comma-separated strengths of the one --axis."
    ),
    workers: int = typer.Option(
        0, "--workers", min=0, help="Suite processes (0: one per core, 1: this one)."
    ),
) -> None:
    """Evaluate a checkpoint deterministically on held-out init states; with --suite, run an
    evaluation suite over matched episodes and write its table, JSON and figure to --out."""
    from asyncvla.builder import evaluate

    cfg = _run_config(checkpoint, config, overrides)
    if suite is None:
        if out is not None or axis or strengths is not None:
            _fail(ConfigError("--out, --axis and --strengths need --suite"))
        policy = _load_checked(cfg, checkpoint, no_verify)
        res = evaluate(cfg, policy, episodes or 100)
        res["checkpoint"] = str(checkpoint)
        res["policy_version"] = policy.version
        console.print_json(json.dumps(res))
        return
    _eval_suite(cfg, checkpoint, no_verify, suite, out, episodes or 300, axis, strengths, workers)


def _eval_suite(
    cfg: Config,
    checkpoint: Path,
    no_verify: bool,
    suite: str,
    out: Path | None,
    episodes: int,
    axis: list[str] | None,
    strengths: str | None,
    workers: int,
) -> None:
    import os

    from rich.table import Table

    from asyncvla.envs import ENVS
    from asyncvla.trust.suites import SUITES, run_suite

    if suite not in SUITES:
        _fail(ConfigError(f"--suite {suite!r}: allowed: {', '.join(SUITES.names())}"))
    if out is None:
        _fail(ConfigError("--suite needs --out DIR"))
    values = None
    if strengths is not None:
        try:
            values = [float(x) for x in strengths.split(",")]
        except ValueError:
            _fail(ConfigError(f"--strengths: comma-separated numbers, got {strengths!r}"))
    policy = _load_checked(cfg, checkpoint, no_verify)
    n_workers = workers or min(os.cpu_count() or 1, 8)
    try:
        res = run_suite(
            suite,
            cfg.env.name,
            ENVS.get(cfg.env.name),
            dict(cfg.env.kwargs),
            episodes,
            cfg.eval.seed_offset,
            out,
            policy=policy,
            checkpoint=checkpoint,
            workers=n_workers,
            deterministic=cfg.eval.deterministic,
            shield=cfg.safety.shield if cfg.safety.shield.enabled else None,
            context={
                "axes": axis or None,
                "strengths": values,
                "pretrained": cfg.pretrain.families if cfg.pretrain.enabled else [],
            },
            chunk=cfg.eval.num_envs,
        )
    except (KeyError, ValueError) as e:
        _fail(ConfigError(e.args[0] if e.args else str(e)))
    table = Table(title=f"{suite}: {checkpoint} ({episodes} episodes per cell)")
    columns = [c for c in SUITES.get(suite).columns if any(r.get(c) is not None for r in res["rows"])]
    for c in columns:
        table.add_column(c)
    for row in res["rows"]:
        table.add_row(
            *(
                "" if row.get(c) is None else f"{row[c]:.3f}" if isinstance(row[c], float) else str(row[c])
                for c in columns
            )
        )
    Console(width=max(console.width, 150)).print(table)
    headline = SUITES.get(suite)().headline(res)
    if headline:
        console.print(headline)
    console.print(f"{suite}: {out}/{suite}.json, .csv, .png")


@app.command()
def explain(
    checkpoint: Path = typer.Argument(..., help="Checkpoint directory (model.safetensors + policy.json)."),
    out: Path = typer.Option(..., "--out", help="Output directory: explain.json and overlay_XX.png."),
    frames: int = typer.Option(100, "--frames", help="Frames, one per held-out episode (>= 1)."),
    config: Path | None = typer.Option(None, "--config", help="Config for the env (default: the run's)."),
    overrides: list[str] | None = typer.Argument(None, help="key=value overrides of the env config"),
    seed: int = typer.Option(0, "--seed", help="Seed of the frame draw, random masks and bootstrap."),
    steps: int = typer.Option(32, "--steps", help="Integrated-gradients steps (>= 2)."),
    no_verify: bool = typer.Option(
        False, "--no-verify", help="Load the checkpoint even if it does not match its run's audit log."
    ),
) -> None:
    """Saliency (integrated gradients of the action) on held-out frames, and a deletion test:
    masking the top-10% salient pixels must move the action more than masking a random 10%."""
    from asyncvla.policies import Policy
    from asyncvla.trust.explain import explain_checkpoint

    for name, value, least in (("--frames", frames, 1), ("--steps", steps, 2), ("--seed", seed, 0)):
        if value < least:
            _fail(ConfigError(f"{name} {value}: must be an integer >= {least}"))
    cfg = _run_config(checkpoint, config, overrides)
    policy = _load_checked(cfg, checkpoint, no_verify)
    if type(policy).mean_action is Policy.mean_action:
        _fail(
            ConfigError(f"checkpoint {checkpoint}: {type(policy).__name__} has no differentiable mean_action")
        )
    res = explain_checkpoint(cfg, policy, out, checkpoint, frames=frames, steps=steps, seed=seed)
    d = res["deletion"]
    console.print(
        f"explain: {d['frames']} frames, masking the top 10% salient pixels moves the action by "
        f"{d['mean_change_top']:.4f} vs {d['mean_change_random']:.4f} for a random 10% (paired diff "
        f"{d['mean_diff']:.4f}, 95% CI [{d['ci95_low']:.4f}, {d['ci95_high']:.4f}], top > random in "
        f"{100 * d['frac_top_greater']:.0f}% of frames): faithful={d['faithful']}  -> {out}/explain.json"
    )


@app.command("env-speed")
def env_speed(
    env: str = typer.Option("tabletop", "--env"),
    num_envs: int = typer.Option(16, "--num-envs", min=1),
    chunk_size: int = typer.Option(4, "--chunk-size", min=1),
    steps: int = typer.Option(20000, "--steps", min=1),
    kwargs: list[str] | None = typer.Argument(
        None, help="env kwargs as key=value (YAML values), e.g. wrist_camera=true image_size=64"
    ),
) -> None:
    """Measure env steps/s of one env process without latency emulation."""
    from asyncvla.builder import probe
    from asyncvla.config import parse_overrides
    from asyncvla.envs.speed import benchmark_env

    try:
        env_kwargs = dict(parse_overrides(kwargs or []))
        probe(env, env_kwargs).close()
    except ConfigError as e:
        _fail(e)
    result = benchmark_env(env, num_envs=num_envs, chunk_size=chunk_size, steps=steps, **env_kwargs)
    console.print_json(json.dumps({**result, "env": env, "env_kwargs": env_kwargs}))


@app.command("trainer-speed")
def trainer_speed(
    config: Path = typer.Argument(..., help="YAML config file."),
    overrides: list[str] | None = typer.Argument(None, help="key=value overrides"),
    init: Path | None = typer.Option(None, "--init", help="Policy checkpoint (default: fresh weights)."),
    repeats: int = typer.Option(3, "--repeats", min=1),
    threads: int = typer.Option(0, "--threads", min=0, help="torch threads (0: torch's default)."),
) -> None:
    """Time one update of the trainer on one global batch: frozen part recomputed, cached, shipped."""
    from asyncvla.bench.trainer_speed import measure
    from asyncvla.builder import build_policy, check_fits, probe_env
    from asyncvla.policies import load_policy

    cfg = _config(config, overrides or [])
    try:
        env = probe_env(cfg)
        try:
            if init is not None:
                policy = load_policy(init)
                check_fits(policy, env, f"--init {init}")
            else:
                import torch

                torch.manual_seed(cfg.seed)
                policy = build_policy(cfg, env)
        finally:
            env.close()
    except (ConfigError, FileNotFoundError, CheckpointError) as e:
        _fail(e)
    console.print_json(json.dumps(measure(cfg, policy, repeats=repeats, threads=threads)))


@app.command()
def soak(
    config: Path = typer.Argument(..., help="YAML config file."),
    overrides: list[str] | None = typer.Argument(None, help="key=value overrides"),
    minutes: float = typer.Option(30.0, "--minutes", min=0.0, help="How long the run trains."),
    warmup: float | None = typer.Option(
        None, "--warmup", min=0.0, help="Minutes of warm-up before the reference RSS (default: minutes / 6)."
    ),
    window: float = typer.Option(60.0, "--window", min=1.0, help="Seconds averaged for each RSS reading."),
    max_growth: float = typer.Option(
        0.10, "--max-growth", help="Exit 1 if a process grows more than this fraction after warm-up."
    ),
    run_dir: Path | None = typer.Option(
        None, "--run-dir", help="Run directory (default runs/<name>-soak-<time>)."
    ),
) -> None:
    """Long async run reporting every process's RSS (driver and each actor) after warm-up and at the end."""
    from asyncvla.runtime.launcher import WorkerError
    from asyncvla.runtime.rayenv import prepare_ray_env
    from asyncvla.soak import soak as run_soak

    _interruptible()
    prepare_ray_env(None)
    warm = minutes / 6 if warmup is None else warmup
    if minutes * 60 < warm * 60 + 2 * window:
        _fail(
            ConfigError(
                f"--minutes {minutes:g}: needs more than --warmup {warm:g} min plus two {window:g} s windows"
            )
        )
    # Training stops on time: the update count is only the learning-rate schedule's horizon (a
    # train.updates among the overrides comes later and wins).
    cfg = _config(config, ["train.updates=1000000", *(overrides or [])])
    path = run_dir or Path("runs") / f"{cfg.name}-soak-{time.strftime('%Y%m%d-%H%M%S')}"
    try:
        result = run_soak(cfg, path, minutes, warm, window_s=window, console=console)
    except (ConfigError, FileExistsError, FileNotFoundError, CheckpointError) as e:
        _fail(e)
    except WorkerError as e:
        print(f"error: a worker failed: {e}", file=sys.stderr)
        raise typer.Exit(code=1) from None
    console.print(f"soak.json: [bold]{path / 'soak.json'}[/bold]")
    worst = result["max_growth"]
    if worst is not None and worst > max_growth:
        print(
            f"error: RSS grew {100 * worst:.1f}% after warm-up (--max-growth {100 * max_growth:g}%)",
            file=sys.stderr,
        )
        raise typer.Exit(code=1)


@app.command()
def replay(
    run_dir: Path = typer.Argument(..., help="Run directory of a finished (or stopped) run."),
    until: int | None = typer.Option(None, "--until", min=1, help="Replay updates 1..UNTIL only."),
) -> None:
    """Re-execute a recorded run in one process (no Ray, no timing) and check it bit for bit:
    exit 0 when the metric stream and final weights match, 1 at the first divergence."""
    from asyncvla.trust.replay import ReplayError
    from asyncvla.trust.replay import replay as run_replay

    t0 = time.perf_counter()
    try:
        res = run_replay(
            run_dir, until, on_update=lambda u, n: console.print(f"replayed update {u}/{n}", end="\r")
        )
    except ReplayError as e:
        _fail(e)
    console.print()
    if not res.ok:
        print(f"replay diverged at {res.divergence}", file=sys.stderr)
        raise typer.Exit(code=1)
    weights = (
        f"final weights equal {res.weights_checked}"
        if res.weights_checked
        else "no checkpoint at the last update to compare weights with"
    )
    console.print(
        f"replay matches: {res.updates} updates, metric rows identical (timing aside), {weights} "
        f"({time.perf_counter() - t0:.0f} s)"
    )


audit_app = typer.Typer(no_args_is_help=True, help="The run's hash-chained audit log.")
app.add_typer(audit_app, name="audit")


@audit_app.command("verify")
def audit_verify(
    run_dir: Path = typer.Argument(..., help="Run directory."),
    pubkey: Path | None = typer.Option(None, "--pubkey", help="Also check the signature (ed25519 PEM)."),
) -> None:
    """Exit 0 on an intact chain (and checkpoint hashes, and signature with --pubkey), else 1."""
    from asyncvla.trust.audit import verify_run

    try:
        res = verify_run(run_dir, pubkey)
    except AuditError as e:
        _fail(e)
    if not res.ok:
        print(f"audit: {res.message}", file=sys.stderr)
        raise typer.Exit(code=1)
    console.print(res.message)


@audit_app.command("sign")
def audit_sign(
    run_dir: Path = typer.Argument(..., help="Run directory."),
    key: Path = typer.Option(..., "--key", help="ed25519 private key (PEM), e.g. from `audit keygen`."),
) -> None:
    """Sign the chain head and the checkpoint hashes (writes audit.sig.json)."""
    from asyncvla.trust.audit import sign_run

    try:
        out = sign_run(run_dir, key)
    except AuditError as e:
        _fail(e)
    console.print(f"signed: {out}")


@audit_app.command("keygen")
def audit_keygen(
    out: Path = typer.Argument(..., help="Private key path; the public key goes to OUT.pub."),
) -> None:
    """Write an ed25519 key pair (PEM) for `audit sign` / `audit verify --pubkey`."""
    from asyncvla.trust.audit import generate_key

    pub = out.with_name(out.name + ".pub")
    if out.exists() or pub.exists():
        _fail(FileExistsError(f"{out} or {pub} exists; choose another path"))
    generate_key(out, pub)
    console.print(f"private key: {out}  public key: {pub}")


@app.command()
def report(
    run_dir: Path = typer.Argument(..., help="Run directory."),
) -> None:
    """Write RUN_DIR/report.html (self-contained: curves, throughput, worker timeline, staleness,
    evaluations, lineage) and a model card (README.md) in every checkpoint."""
    from asyncvla.trust.modelcard import write_model_cards
    from asyncvla.trust.report import ReportError, write_report

    try:
        out = write_report(run_dir)
        write_model_cards(run_dir)
    except ReportError as e:
        _fail(e)
    console.print(f"report: {out}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
