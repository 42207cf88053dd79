"""Safe training through the real workers: the shielded actions are the executed ones and carry
their own log-probs; PPO-Lagrangian trains, moves and checkpoints its multiplier in sync and async
schedules; a non-finite update is rolled back and the run goes on; on Ray, an injected NaN and an
injected reward collapse raise their alerts and a clean run raises none."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from asyncvla.builder import build_policy
from asyncvla.config import load_config
from asyncvla.runtime.env_worker import EnvWorker
from asyncvla.runtime.gate import StalenessGate
from asyncvla.runtime.placement import worker_specs
from asyncvla.runtime.rollout_worker import RolloutWorker
from asyncvla.runtime.trainer import Trainer, TrainerSpec, weights_digest
from asyncvla.runtime.weights import PolicySpec
from asyncvla.train import train
from tests.runtime.local import LocalTransport
from tests.trust.tiny import TINY

pytestmark = pytest.mark.usefixtures("one_torch_thread")

LOCAL = [
    *TINY,
    "mode=async",
    "env.kwargs.family=object",
    "train.updates=4",
    "algo.minibatch_size=8",
    "algo.epochs=1",
    "runtime.max_batch_samples=4",
]
WS = [0.25, 0.25, 0.75, 0.75]
SHIELD = [f"safety.shield.workspace={WS}", "safety.shield.max_delta=0.5", "safety.shield.close_max_speed=0.3"]


def _run_local(overrides, run_path=None, start=None, optimizer_dir=None):
    """EnvWorker -> RolloutWorker -> Trainer in this process; returns (trainer, shipped segments, env stats)."""
    cfg = load_config(None, [*LOCAL, *overrides])
    torch.manual_seed(0)
    pspec = PolicySpec.of(build_policy(cfg), cfg.policy.name)
    (env_spec,), (rollout_spec,) = worker_specs(cfg)
    transport = LocalTransport(
        StalenessGate(cfg.global_batch()), RolloutWorker(cfg, rollout_spec, pspec), cfg.train.updates
    )
    spec = TrainerSpec(run_path=run_path, optimizer_dir=optimizer_dir)
    if start is not None:
        spec.start_state = start
    transport.trainer = Trainer(cfg, spec, pspec, publish=transport.publish)
    shipped = []
    ship = transport.ship
    transport.ship = lambda seg: (shipped.append(seg), ship(seg))[1]
    stats = EnvWorker(cfg, env_spec, transport).run(transport.stop)
    return transport.trainer, shipped, stats, pspec


def test_shielded_segments_hold_the_executed_actions_and_their_own_log_probs():
    trainer, shipped, stats, pspec = _run_local([*SHIELD, "train.updates=1"])
    assert stats["shield_interventions"] > 0 and stats["shield_untrained"] == 0
    behaviour = pspec.build("rollout")  # the weights every version-0 decision was acted with
    checked = 0
    for seg in shipped:
        if not (seg.versions == 0).all():
            continue
        obs, t, n = seg.flat_obs(), *seg.valid.shape
        acts = torch.from_numpy(seg.actions.reshape(t * n, *seg.actions.shape[2:]))
        with torch.no_grad():
            lp = behaviour.evaluate(obs, acts).log_probs.numpy()
        np.testing.assert_allclose(lp, seg.log_probs.reshape(lp.shape), rtol=1e-4, atol=1e-4)
        checked += 1
        # Every executed chunk respects the workspace: commanded positions of envs that start inside stay inside.
        xy = seg.obs["state"][:, :, :2]
        step = 0.1  # the tabletop default max_step
        for i in range(n):
            for j in range(t):
                if not seg.valid[j, i]:
                    continue
                p = xy[j, i].astype(np.float64)
                if not ((p >= 0.25) & (p <= 0.75)).all():
                    continue
                for a in np.clip(seg.actions[j, i], -1, 1):
                    p = p + a[:2] * step
                    assert ((p >= 0.25 - 1e-5) & (p <= 0.75 + 1e-5)).all()
    assert checked
    assert trainer.pop_rows()[0]["shield_interventions"] > 0


@pytest.mark.parametrize("streamer", ["false", "true"])
def test_ppo_lagrangian_trains_moves_its_multiplier_and_resumes_it(tmp_path, streamer):
    over = [
        f"async.streamer={streamer}",
        "algo.name=ppo_lagrangian",
        "algo.cost_limit=0.0",  # any grasp of a wrong object violates it
        "algo.lagrangian_lr=0.5",
        "env.kwargs.wrong_grasp_cost=5.0",
        "train.checkpoint_every=2",
    ]
    trainer, shipped, _, _ = _run_local(over, run_path=str(tmp_path))
    assert all(s.cost_values is not None and s.cost_values.shape == s.rewards.shape for s in shipped)
    rows = trainer.pop_rows()
    lams = [r["lagrange_multiplier"] for r in rows]
    assert all("loss_cost_value" in r and np.isfinite(r["loss_cost_value"]) for r in rows)
    assert all(lam >= 0 for lam in lams) and lams[0] == 0.0
    costs = [r.get("batch_episode_cost") for r in rows]
    # dual ascent: each step is lr * (batch cost - 0) from the value the next update uses
    for k in range(len(rows) - 1):
        if costs[k] is not None:
            assert lams[k + 1] == pytest.approx(lams[k] + 0.5 * costs[k])
    state = trainer.learner.method.state_dict()
    resumed = _run_local(
        [*over, "train.updates=5"],
        start=json.loads((tmp_path / "checkpoints" / "update_00004" / "state.json").read_text()),
        optimizer_dir=str(tmp_path / "checkpoints" / "update_00004"),
    )[0]
    assert resumed.pop_rows()[0]["lagrange_multiplier"] == state["multiplier"]


def test_a_non_finite_update_is_rolled_back_to_the_last_checkpoint_and_training_goes_on(tmp_path):
    over = ["algo.name=tests.runtime.faulty:NaNLossPPO", "train.checkpoint_every=2", "train.updates=6"]
    trainer, _, _, _ = _run_local(over, run_path=str(tmp_path))
    rows = trainer.pop_rows()
    assert [r["update"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert [r["skipped_batches"] for r in rows] == [0, 0, 0, 1, 1, 1]
    assert rows[3]["rolled_back_to"] == 2 and rows[3]["train_samples"] == 0
    good = load_file(str(tmp_path / "checkpoints" / "update_00002" / "model.safetensors"))
    frozen = {n for n, p in trainer.policy.named_parameters() if not p.requires_grad}
    # update 4 published the weights of checkpoint 2 (as version 5)
    assert rows[3]["weights_sha256"] == weights_digest({k: v for k, v in good.items() if k not in frozen})
    assert all(np.isfinite(r["loss_policy"]) for r in rows[4:])
    assert all(bool(torch.isfinite(p).all()) for p in trainer.policy.parameters())


def test_on_nan_stop_ends_the_run_with_one_line(tmp_path):
    from asyncvla.runtime.trainer import NonFiniteError

    with pytest.raises(
        NonFiniteError, match=r"^update 4: a non-finite loss, gradient or weight \(monitor.on_nan: stop\)$"
    ):
        _run_local(
            ["algo.name=tests.runtime.faulty:NaNLossPPO", "monitor.on_nan=stop"], run_path=str(tmp_path)
        )


# -- the whole pipeline on Ray ------------------------------------------------------------------


def _alerts(run):
    return [json.loads(x) for x in (run / "alerts.jsonl").read_text().splitlines()]


@pytest.mark.slow
@pytest.mark.usefixtures("ray_local")
def test_on_ray_an_injected_nan_alerts_rolls_back_and_the_run_finishes(tmp_path):
    cfg = load_config(
        None,
        [
            *LOCAL,
            "mode=async",
            "train.updates=6",
            "train.checkpoint_every=2",
            "algo.name=tests.runtime.faulty:NaNLossPPO",
        ],
    )
    summary = train(cfg, tmp_path)
    assert summary["updates"] == 6 and summary["skipped_batches"] == 1 and summary["alerts"] == {"nan": 1}
    (alert,) = _alerts(tmp_path)
    assert alert["name"] == "nan" and alert["update"] == 4 and "rolled back to update 2" in alert["message"]
    audit = [json.loads(x) for x in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert [a["name"] for a in audit if a["kind"] == "alert"] == ["nan"]


@pytest.mark.slow
@pytest.mark.usefixtures("ray_local")
def test_on_ray_an_injected_reward_collapse_alerts_within_ten_updates_and_a_clean_run_raises_none(tmp_path):
    """The env pays every episode for its first 30 step calls per manager (update 10 in sync: 3
    decisions per manager per update), then none: the rolling training success (100 episodes)
    falls below its best - 0.3 within 10 updates."""
    base = [
        *LOCAL,
        "mode=sync",
        "train.updates=22",
        "monitor.thresholds.warmup_updates=3",
        "env.kwargs.family=reach",
    ]
    collapse = load_config(
        None, [*base, "env.name=tests.runtime.faulty:CollapseEnv", "env.kwargs.collapse_after=30"]
    )
    train(collapse, tmp_path / "collapse")
    first = {}
    for a in _alerts(tmp_path / "collapse"):
        first.setdefault(a["name"], a["update"])
    assert "success_collapse" in first and 10 <= first["success_collapse"] <= 20, first
    # A clean run, here constrained, in sync mode: no alert, the multiplier in every row.
    clean = load_config(None, [*base, "train.updates=12", "algo.name=ppo_lagrangian", "algo.cost_limit=0.5"])
    summary = train(clean, tmp_path / "clean")
    assert _alerts(tmp_path / "clean") == [] and summary["alerts"] == {}
    rows = [json.loads(x) for x in (tmp_path / "clean" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 12 and all(r["lagrange_multiplier"] >= 0 for r in rows)
