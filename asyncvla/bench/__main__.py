"""``python -m asyncvla.bench --workload NAME [--modes a,b] [--out DIR] [--repeats N] [--tune]``
(the same as ``asyncvla bench``)."""

from __future__ import annotations

import argparse
import sys
import time


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m asyncvla.bench", description=__doc__)
    ap.add_argument("--workload", required=True, help="profile name in configs/bench or a YAML path")
    ap.add_argument("--modes", default=None, help="comma-separated modes (default: all of the profile)")
    ap.add_argument("--out", default=None, help="output directory (default runs/bench-<workload>-<time>)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument(
        "--env-steps", type=int, default=None, help="env steps measured per run (default 4 updates)"
    )
    ap.add_argument("--time-scale", type=float, default=None, help="override the profile's time_scale")
    ap.add_argument("--address", default=None, help="Ray cluster to join (default: start a local one)")
    ap.add_argument(
        "--tune",
        action="store_true",
        help="choose the streamer's max_batch_samples / batch_timeout_ms from measured latencies "
        "and add a streamer-tuned row",
    )
    args = ap.parse_args(argv)

    from asyncvla.runtime.rayenv import prepare_ray_env

    prepare_ray_env(args.address)
    from rich.console import Console

    from asyncvla.bench.bench import run_bench
    from asyncvla.bench.profiles import resolve_profile
    from asyncvla.config import ConfigError
    from asyncvla.runtime.launcher import WorkerError

    console = Console() if sys.stdout.isatty() else Console(width=170)
    try:
        path = resolve_profile(args.workload)
        out = args.out or f"runs/bench-{path.stem}-{time.strftime('%Y%m%d-%H%M%S')}"
        run_bench(
            path,
            modes=[m.strip() for m in args.modes.split(",") if m.strip()] if args.modes else None,
            out_dir=out,
            repeats=args.repeats,
            env_steps_per_mode=args.env_steps,
            time_scale=args.time_scale,
            address=args.address,
            console=console,
            tune=args.tune,
        )
    except (ConfigError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except WorkerError as e:
        print(f"error: a worker failed: {e}", file=sys.stderr)
        return 1
    console.print(f"written: {out}/bench.json, bench.csv, throughput.png, timeline.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
