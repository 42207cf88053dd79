import json

import numpy as np
import pytest
from typer.testing import CliRunner

from asyncvla.cli import app
from asyncvla.seeds import bootstrap_mean, bootstrap_paired, seed_statistics
from asyncvla.stats import wilson_interval


def test_wilson_interval_matches_hand_computed_values():
    # 8 / 10: centre (0.8 + 1.96^2 / 20) / (1 + 1.96^2 / 10) = 0.71674, half 0.22658
    lo, hi = wilson_interval(8, 10)
    assert lo == pytest.approx(0.49016, abs=1e-4) and hi == pytest.approx(0.94332, abs=1e-4)
    # 0 / 10: the interval does not collapse to a point (the normal approximation gives [0, 0])
    lo, hi = wilson_interval(0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.27753, abs=1e-4)
    # 300 episodes at 0.85: about +-0.04, the resolution the final evaluation is sized for
    lo, hi = wilson_interval(255, 300)
    assert 0.035 < (hi - lo) / 2 < 0.045
    with pytest.raises(ValueError, match="successes"):
        wilson_interval(11, 10)


def test_bootstrap_mean_over_seeds_without_episode_noise():
    # Two seeds, (nearly) exact rates: the mean of two draws with replacement is 0.8, 0.85 or 0.9
    # with probabilities 1/4, 1/2, 1/4, so the 2.5% / 97.5% quantiles are 0.8 and 0.9.
    lo, hi = bootstrap_mean(np.array([0.8, 0.9]), np.array([10**9, 10**9]))
    assert lo == pytest.approx(0.8, abs=1e-3) and hi == pytest.approx(0.9, abs=1e-3)


def test_bootstrap_mean_of_one_seed_is_the_binomial_interval():
    lo, hi = bootstrap_mean(np.array([0.5]), np.array([100]))
    # 1.96 * sqrt(0.25 / 100) = 0.098
    assert lo == pytest.approx(0.40, abs=0.015) and hi == pytest.approx(0.60, abs=0.015)


def test_paired_gap_cancels_the_seed_spread():
    sync = np.array([0.6, 0.75, 0.9])  # a wide spread over seeds...
    rates = {"sync": sync, "async": sync + 0.05}  # ...and async 0.05 better on every seed
    n = np.full(3, 10**9)
    lo, hi = bootstrap_paired(rates, {"sync": n, "async": n}, lambda m: m["async"] - m["sync"])
    assert lo == pytest.approx(0.05, abs=1e-3) and hi == pytest.approx(0.05, abs=1e-3)


def test_seed_statistics_summarises_each_mode_and_the_gap():
    runs = [
        {
            "seed": s,
            "sync": {"final_success_rate": a, "sft_success_rate": 0.4, "eval_episodes": 300},
            "async": {"final_success_rate": b, "sft_success_rate": 0.4, "eval_episodes": 300},
        }
        for s, a, b in [(11, 0.80, 0.82), (22, 0.86, 0.84), (33, 0.83, 0.86)]
    ]
    st = seed_statistics(runs)
    assert st["seeds"] == [11, 22, 33]
    assert st["sync"]["mean"] == pytest.approx(0.83) and st["sync"]["min"] == pytest.approx(0.80)
    assert st["async"]["max"] == pytest.approx(0.86)
    assert st["sync"]["std"] == pytest.approx(np.std([0.80, 0.86, 0.83], ddof=1))
    assert st["sync"]["ci95"][0] < 0.83 < st["sync"]["ci95"][1]
    assert st["gap"]["mean"] == pytest.approx(0.01)
    assert st["gap"]["ci95"][0] < 0.01 < st["gap"]["ci95"][1]
    json.dumps(st)  # plain JSON types throughout


@pytest.mark.parametrize("bad", ["11,11", "a,b", "-1", ""])
def test_compare_rejects_bad_seed_lists_with_one_line(bad, tmp_path):
    r = CliRunner().invoke(
        app, ["compare", "configs/quickstart.yaml", "--seeds", bad, "--out", str(tmp_path / "o")]
    )
    assert r.exit_code == 2
    assert r.output.strip().splitlines() == [
        f"error: --seeds: distinct comma-separated integers >= 0, got {bad!r}"
    ]
    assert not (tmp_path / "o").exists()


def test_compare_seeds_runs_one_comparison_per_seed_and_writes_seeds_json(tmp_path, monkeypatch):
    import asyncvla.train as train_mod
    from asyncvla.config import load_config

    calls = []

    def fake_compare(cfg, out, console=None):
        calls.append((cfg.seed, out.name))
        rate = {11: 0.8, 22: 0.9}[cfg.seed]
        row = {"final_success_rate": rate, "sft_success_rate": 0.4, "eval_episodes": 300}
        return {"sync": row, "async": {**row, "final_success_rate": rate + 0.02}}

    monkeypatch.setattr(train_mod, "compare", fake_compare)
    res = train_mod.compare_seeds(load_config(None, ["name=q"]), tmp_path / "s", [11, 22])
    assert calls == [(11, "seed-11"), (22, "seed-22")]
    saved = json.loads((tmp_path / "s" / "seeds.json").read_text())
    assert saved == json.loads(json.dumps(res))
    assert saved["sync"]["final_success"] == [0.8, 0.9] and saved["async"]["mean"] == pytest.approx(0.87)
    assert (
        saved["gap"]["mean"] == pytest.approx(0.02)
        and saved["checks"]["async mean success >= sync mean - 0.03"]
    )
    with pytest.raises(FileExistsError):
        train_mod.compare_seeds(load_config(None, ["name=q"]), tmp_path / "s", [11, 22])
