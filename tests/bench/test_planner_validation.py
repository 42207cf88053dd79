"""The planner's prediction against a measured run of the same placement and sizes (within 10%).

``planner_check.yaml`` costs hundreds of ms per stage, so Ray messaging (tens of ms on a loaded
2-core machine) stays small next to it; sync colocated (every latency in series) and the
streamer (rollout-bound) are measured through ``run_mode``, the bench's own path.
"""

from pathlib import Path

import pytest

from asyncvla.bench.bench import run_mode
from asyncvla.bench.profiles import load_profile, mode_config
from asyncvla.bench.simulate import simulate, spec_from_config

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.usefixtures("ray_local")]

PROFILE = load_profile(Path(__file__).with_name("planner_check.yaml"))


@pytest.mark.parametrize(("mode", "updates"), [("sync-colocated", 3), ("streamer", 5)])
def test_prediction_within_10_percent_of_measurement(tmp_path, mode, updates):
    measured = run_mode(PROFILE, mode, updates, tmp_path / mode)
    cfg = mode_config(PROFILE, mode, updates)
    predicted = simulate(spec_from_config(cfg), updates=40, warmup=PROFILE.warmup_updates)
    err = predicted["env_steps_per_s"] / measured["env_steps_per_s"] - 1.0
    print(f"{mode}: measured {measured['env_steps_per_s']:.3f}, predicted {predicted['env_steps_per_s']:.3f}")
    assert abs(err) < 0.10, f"{mode}: predicted {err:+.1%} off the measurement"
    assert measured["updates_measured"] == updates - PROFILE.warmup_updates
    assert measured["peak_total_mb"] > measured["peak_process_mb"] > 50
