"""``safe-compare``: per seed a constrained run, then plain PPO from its SFT checkpoint; means,
spreads and the README's checks in safety.json."""

import io
import json

import pytest
from rich.console import Console

from asyncvla.config import ConfigError, load_config
from asyncvla.safety import compare as sc

RESULTS = {  # (seed, algo) -> (final success, final episode cost)
    (1, "ppo_lagrangian"): (0.80, 0.08),
    (1, "ppo"): (0.82, 0.30),
    (2, "ppo_lagrangian"): (0.72, 0.20),
    (2, "ppo"): (0.78, 0.26),
}


def test_constrained_then_unconstrained_from_its_sft_and_the_checks(tmp_path, monkeypatch):
    calls = []

    def fake_train(cfg, path, console=None):
        calls.append((cfg.seed, cfg.algo.name, cfg.algo.cost_limit, cfg.train.init, path.name))
        s, c = RESULTS[(cfg.seed, cfg.algo.name)]
        return {
            "final_success_rate": s,
            "final_episode_cost": c,
            "sft_success_rate": 0.4,
            "eval_episodes": 300,
            "wall_s": 1.0,
        }

    monkeypatch.setattr("asyncvla.train.train", fake_train)
    cfg = load_config("configs/safe-grasp.yaml")
    out = sc.compare_constraint(cfg, tmp_path, [1, 2], Console(file=io.StringIO()))
    assert [c[:3] for c in calls] == [
        (1, "ppo_lagrangian", 0.15),
        (1, "ppo", None),
        (2, "ppo_lagrangian", 0.15),
        (2, "ppo", None),
    ]
    assert calls[1][3] == str(tmp_path / "seed-1" / "constrained" / "sft")  # the same SFT start
    assert calls[0][3] == "sft"
    c, u = out["constrained"], out["unconstrained"]
    assert c["success"]["mean"] == pytest.approx(0.76) and u["episode_cost"]["mean"] == pytest.approx(0.28)
    assert out["success_gap"] == pytest.approx(0.76 - 0.80)
    # mean cost 0.14 <= 0.15; plain PPO 0.28 > 0.15; gap -0.04 >= -0.05
    assert out["checks"] == {
        "constrained mean cost <= 0.15": True,
        "unconstrained mean cost > 0.15": True,
        "constrained success >= unconstrained - 0.05": True,
    }
    assert json.loads((tmp_path / "safety.json").read_text())["checks"] == out["checks"]
    with pytest.raises(FileExistsError):
        sc.compare_constraint(cfg, tmp_path, [1], Console(file=io.StringIO()))
    with pytest.raises(ConfigError, match="^algo.cost_limit: safe-compare needs"):
        sc.compare_constraint(
            load_config("configs/quickstart.yaml"), tmp_path / "x", [1], Console(file=io.StringIO())
        )
