import json

import numpy as np
import pytest
import torch

from asyncvla.builder import build_policy, probe_env
from asyncvla.config import load_config
from asyncvla.policies import load_policy
from asyncvla.runtime.env_worker import EnvManager
from asyncvla.runtime.learner import Learner
from asyncvla.runtime.types import ActionReply
from asyncvla.train import train

pytestmark = pytest.mark.usefixtures("ray_local")

TINY = [
    "env.num_envs=4",
    "env.num_managers=2",
    "env.kwargs.family=reach",
    "train.rollout_steps=3",
    "train.updates=2",
    "train.checkpoint_every=1",
    "algo.minibatch_size=8",
    "algo.epochs=1",
    "eval.episodes=4",
    "eval.num_envs=4",
    "policy.kwargs.image_grid=4",
]

METRIC_KEYS = {
    "update",
    "policy_version",
    "env_steps",
    "wall_s",
    "success_rate",
    "episode_return",
    "env_steps_per_s",
    "approx_kl",
    "loss_policy",
    "loss_value",
    "time_update_s",
    "time_train_s",
    "staleness_mean",
    "staleness_hist",
}


def _reply(req, k=2, version=0, value=0.5):
    n = len(req.env_ids)
    return ActionReply(
        req.manager_id,
        req.request_id,
        req.env_ids,
        actions=np.zeros((n, k, 3), np.float32),
        log_probs=np.zeros((n, k, 3), np.float32),
        values=np.full(n, value, np.float32),
        version=version,
        shard=req.shard,
    )


def test_manager_closes_segment_after_t_decisions_with_bootstrap_obs():
    m = EnvManager(0, "tabletop", 3, {"family": "reach"}, rollout_steps=2, seed=0)
    segs = []
    for t in range(2):
        segs += m.apply(_reply(m.request()[0], version=t, value=float(t)))
    assert len(segs) == 1
    seg = segs[0]
    assert seg.actions.shape == (2, 3, 2, 3) and seg.obs["image"].shape[:2] == (2, 3)
    # the trainer bootstraps from the observation after the last step (no further reply needed)
    assert seg.bootstrap_value is None and np.array_equal(seg.bootstrap_obs["image"], m.obs["image"])
    assert seg.versions[:, 0].tolist() == [0, 1]
    assert seg.env_steps == 2 * 3 * 2  # no env finishes in 2 idle chunks of 2 actions


def test_split_manager_steps_once_every_shard_answered():
    m = EnvManager(0, "tabletop", 5, {"family": "reach"}, rollout_steps=1, seed=0, num_shards=2)
    reqs = m.request()
    assert [r.env_ids.tolist() for r in reqs] == [[0, 1, 2], [3, 4]]
    assert np.array_equal(reqs[1].obs["image"], m.obs["image"][3:])
    assert m.add_reply(_reply(reqs[1], version=4)) is False
    with pytest.raises(RuntimeError, match="duplicate"):
        m.add_reply(_reply(reqs[1], version=4))
    assert m.add_reply(_reply(reqs[0], version=3)) is True
    (seg,) = m.apply([])
    assert seg.versions[0].tolist() == [3, 3, 3, 4, 4]


def test_manager_rejects_reply_for_another_request():
    m = EnvManager(0, "tabletop", 2, {"family": "reach"}, rollout_steps=2, seed=0)
    (req,) = m.request()
    bad = _reply(req)
    bad.request_id += 1
    with pytest.raises(RuntimeError, match="expected request"):
        m.apply(bad)


def test_episode_mode_groups_share_init_state_and_close_when_all_done():
    m = EnvManager(
        0,
        "tabletop",
        4,
        {"family": "reach", "max_episode_steps": 6},
        99,
        seed=1,
        episode_mode=True,
        group_size=2,
    )
    img = m.obs["image"]
    assert np.array_equal(img[0], img[1]) and np.array_equal(img[2], img[3])
    assert not np.array_equal(img[0], img[2])
    segs = []
    while not segs:
        segs = m.apply(_reply(m.request()[0]))
    seg = segs[0]
    assert seg.group_ids.tolist()[0] == seg.group_ids.tolist()[1] != seg.group_ids.tolist()[2]
    assert seg.dones[-1].all() and len(seg.episodes["return"]) == 4
    # idle actions never touch the object: every env truncates after 6 actions = 3 chunks of 2
    assert seg.env_steps == 4 * 6 and int(seg.valid.sum()) == 4 * 3


def test_sync_run_writes_the_run_directory(tmp_path):
    cfg = load_config(None, TINY)
    summary = train(cfg, tmp_path / "run")
    run = tmp_path / "run"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["update"] for r in rows] == [1, 2]
    assert METRIC_KEYS <= set(rows[0])
    assert rows[-1]["env_steps"] == summary["env_steps"] > 0
    for key in ("mode", "env_steps", "wall_s", "env_steps_per_s", "sft_success_rate", "final_success_rate"):
        assert key in summary
    saved = json.loads((run / "summary.json").read_text())
    assert saved["samples_trained"] == sum(r["train_samples"] for r in rows) == 2 * 2 * 4 * 3
    assert (run / "config.yaml").is_file() and (run / "curves.png").stat().st_size > 1000
    assert any((run / "tensorboard").iterdir())
    ckpt = run / "checkpoints" / "update_00002"
    assert (ckpt / "model.safetensors").is_file() and json.loads((ckpt / "state.json").read_text())[
        "update"
    ] == 2
    assert load_policy(ckpt).version == 2


def test_resume_continues_the_run(tmp_path):
    run = tmp_path / "run"
    train(load_config(None, TINY), run)
    with pytest.raises(FileExistsError):
        train(load_config(None, TINY), run)
    summary = train(load_config(None, [*TINY, "train.updates=3"]), run, resume=True)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["update"] for r in rows] == [1, 2, 3]
    assert summary["policy_version"] == 3 and rows[2]["env_steps"] > rows[1]["env_steps"]


def test_trainer_checkpoint_round_trip_gives_identical_updates(tmp_path):
    cfg = load_config(None, TINY)
    probe = probe_env(cfg)
    torch.manual_seed(0)
    m = EnvManager(0, "tabletop", 4, {"family": "reach"}, rollout_steps=3, seed=0)
    policy = build_policy(cfg, probe)
    trainer = Learner(policy, cfg.algo, seed=0)
    segs = []
    while not segs:
        (req,) = m.request()
        out = policy.act(req.obs)
        segs = m.apply(ActionReply(0, req.request_id, req.env_ids, out.actions, out.log_probs, out.values, 0))
    trainer.train(segs)
    from asyncvla.policies import save_policy

    save_policy(policy, tmp_path, "tiny_vla")
    trainer.save_optimizer(tmp_path)
    clone = Learner(load_policy(tmp_path), cfg.algo, seed=1)
    clone.load_optimizer(tmp_path)
    trainer.rng = np.random.default_rng(7)
    clone.rng = np.random.default_rng(7)
    trainer.train(segs)
    clone.train(segs)
    for (k, a), b in zip(
        trainer.policy.state_dict().items(), clone.policy.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), k


def test_grpo_run_trains_on_complete_episode_groups(tmp_path):
    cfg = load_config(
        None,
        [*TINY, "algo.name=grpo", "algo.group_size=2", "env.kwargs.max_episode_steps=8", "train.updates=1"],
    )
    summary = train(cfg, tmp_path / "run")
    row = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    # every env ran exactly one episode of at most 8 actions (2 decisions of 4): 16 decisions at
    # most; shaped returns differ within a group, so no group is dropped and every decision of
    # every episode is trained (at least one decision per 4 env steps)
    assert 0 < summary["env_steps"] <= 2 * 4 * 8
    assert row["policy_version"] == 1
    assert summary["env_steps"] / 4 <= row["train_samples"] <= 2 * 4 * 2


def test_bad_init_or_resume_is_refused_before_the_run_directory_exists(tmp_path):
    from asyncvla.config import ConfigError

    with pytest.raises(ConfigError, match="train.init"):
        train(load_config(None, [*TINY, f"train.init={tmp_path / 'nope'}"]), tmp_path / "a")
    with pytest.raises(FileNotFoundError, match="--resume"):
        train(load_config(None, TINY), tmp_path / "b", resume=True)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_env_observations_belong_to_the_caller():
    # EnvManager keeps observations without copying them; the env API promises they stay unchanged.
    from asyncvla.envs import make_env

    env = make_env("tabletop", 2, family="reach")
    first, _ = env.reset(seed=0)
    kept = first["image"].copy()
    moved, *_ = env.step(np.ones((2, 3, 3), np.float32))
    assert not np.array_equal(moved["image"], kept)
    assert np.array_equal(first["image"], kept)
