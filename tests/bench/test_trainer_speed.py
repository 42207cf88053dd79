import json

from typer.testing import CliRunner

from asyncvla.cli import app

TINY = [
    "env.num_envs=8",
    "env.num_managers=2",
    "env.kwargs.family=object",
    "train.rollout_steps=2",
    "algo.epochs=2",
    "algo.minibatch_size=8",
    "policy.kwargs.image_grid=4",
    "policy.kwargs.freeze_encoder=true",
]


def test_trainer_speed_reports_every_path_and_that_they_agree(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("name: t\n")
    r = CliRunner().invoke(app, ["trainer-speed", str(cfg), *TINY, "--repeats", "1", "--threads", "1"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert out["samples"] == 2 * 8 * 2 and out["frozen_features"] is True
    for path in ("recompute", "cache", "ship"):
        assert out[path]["identical"] is True, path
        assert len(out[path]["times_s"]) == 1 and out[path]["median_s"] > 0
    assert out["recompute_over_ship"] == out["recompute"]["median_s"] / out["ship"]["median_s"]
