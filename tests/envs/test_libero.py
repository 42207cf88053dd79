"""The LIBERO env (needs `make libero`, which `make test` runs: a missing install fails, not skips;
tests/conftest.py marks every test here ``libero``, so ``make test-fast`` leaves them out).

Kept to smoke sizes (one libero_spatial task, small images, a few chunks): a LIBERO reset costs
seconds on 2 cores.
"""

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from asyncvla.config import load_config
from asyncvla.envs import ENVS, SingleEnv, libero_setup, make_env
from asyncvla.envs import libero as libero_env
from asyncvla.train import train

TASK0 = "pick up the black bowl between the plate and the ramekin and place it on the plate"


@pytest.fixture(scope="module")
def env():
    e = make_env("libero", num_envs=2, suite="libero_spatial", task_ids=[0], image_size=48, wrist_camera=True)
    yield e
    e.close()


def test_registered_and_set_up():
    assert ENVS.get("libero") is libero_env.LiberoVecEnv
    assert (libero_setup.check_ready() / "config.yaml").is_file()  # `make libero` ran and verified


def test_asset_files_name_each_task_bddl_init_states_and_the_manifest(env):
    files = env.asset_files()  # hashed into a run's manifest.json
    assert set(files) == {"libero_assets.sha256", "task0.bddl", "task0.init"}
    assert files["task0.bddl"].endswith(".bddl") and all(Path(p).is_file() for p in files.values())


TASK0_TARGETS = ("akita_black_bowl_1", "plate_1")  # the BDDL's obj_of_interest
TASK0_OTHERS = ("akita_black_bowl_2", "cookies_1", "glazed_rim_porcelain_ramekin_1")
TASK0_FIXTURES = ("wooden_cabinet_1", "flat_stove_1")
PANDA_CHAIN = [f"robot0_link{k}" for k in range(2, 8)] + [
    "robot0_right_hand",
    "gripper0_right_gripper",
    "gripper0_eef",
]


def test_the_shield_model_without_a_simulator():
    venv = make_env("libero", suite="libero_spatial", task_ids=[0, 1])  # builds no sim
    model = venv.shield_model()
    assert model.position_state_dims == (0, 1, 2) and model.position_action_dims == (0, 1, 2)
    assert model.step_scale == pytest.approx((0.05, 0.05, 0.05))  # robosuite's osc_pose.json
    assert model.action_low == (-1.0,) * 7 and model.action_high == (1.0,) * 7
    assert model.gripper_action_dim == 6 and model.gripper_close_above == 0.0
    # The table (1.0 x 1.2 m, top at z = 0.9) up to the Panda's reach from its shoulder.
    reach = libero_env.PANDA_REACH
    assert reach == pytest.approx(1.0828, abs=1e-4)
    assert model.reachable_low == pytest.approx((-0.5, -0.6, 0.9))
    assert model.reachable_high == pytest.approx((-0.66 + reach, 0.6, 1.245 + reach))
    # libero_10 mixes kitchen, living-room (a low table) and study scenes: the union of their boxes.
    mixed = make_env("libero", suite="libero_10", task_ids=list(range(10))).shield_model()
    assert mixed.reachable_low == pytest.approx((-0.7, -0.8, 0.41))
    assert mixed.reachable_high == pytest.approx((-0.66 + reach, 0.8, 1.245 + reach))


@pytest.mark.slow
def test_the_shield_model_matches_the_scene_and_bounds_the_end_effectors_motion(env):
    from asyncvla.config import ShieldConfig
    from asyncvla.safety.shield import ShieldedEnv, make_shield

    model = env.shield_model()
    obs, _ = env.reset(options={"init_state": [3, 4]})
    lo, hi = np.array(model.reachable_low), np.array(model.reachable_high)
    assert ((obs["state"][:, :3] > lo) & (obs["state"][:, :3] < hi)).all()  # the start pose

    # The numbers behind the model, read off the built scene and controller.
    inner = env._slots[0].sim.env
    m, d = inner.sim.model, inner.sim.data
    ctrl = inner.robots[0].controller
    assert ctrl.action_scale[:3] == pytest.approx(model.step_scale) and not ctrl.action_output_transform.any()
    table = m.geom_name2id("table_collision")
    top = d.geom_xpos[table] + m.geom_size[table]
    assert top == pytest.approx([0.5, 0.6, 0.9]) and d.geom_xpos[table][:2] - m.geom_size[table][
        :2
    ] == pytest.approx(lo[:2])
    assert d.body_xpos[m.body_name2id("robot0_link1")] == pytest.approx(libero_env._TABLE.shoulder, abs=1e-3)
    chain = sum(np.linalg.norm(m.body_pos[m.body_name2id(b)]) for b in PANDA_CHAIN)
    assert chain == pytest.approx(libero_env.PANDA_REACH, abs=1e-4)  # triangle inequality: a reach bound
    assert m.site_bodyid[m.site_name2id("gripper0_grip_site")] == m.body_name2id("gripper0_eef")

    # Full speed along +x, one action per chunk: x grows every step, by at most the commanded step.
    dx = np.zeros((2, 1, 7), dtype=np.float32)
    dx[:, :, 0], dx[:, :, 6] = 1.0, -1.0
    states = [obs["state"][:, :3].copy()]
    for _ in range(5):
        obs, *_ = env.step(dx)
        states.append(obs["state"][:, :3].copy())
    step = np.diff(np.array(states), axis=0)  # [5, 2, 3]
    assert (step[..., 0] > 0).all() and (step[..., 0] <= model.step_scale[0] + 1e-3).all()
    assert step[..., 0].sum(axis=0).min() > 0.02 and np.abs(step[..., 1:]).max() < 0.01

    # A workspace 2 cm beyond the gripper in +x: the shielded env stops it there.
    x = obs["state"][:, 0]
    ws_lo, ws_hi = [-0.45, -0.5, 0.95], [float(x.max()) + 0.02, 0.5, 1.5]
    shielded = ShieldedEnv(env, make_shield(ShieldConfig(workspace=[*ws_lo, *ws_hi]), env))
    shielded._state = obs["state"]  # continue this episode under the shield
    chunk = np.repeat(dx, 4, axis=1)
    for _ in range(3):
        obs, _, _, _, info = shielded.step(chunk)
    assert (obs["state"][:, 0] <= ws_hi[0] + 0.01).all() and info["shield_interventions"].sum() > 0


def test_touching_pairs_either_order_of_a_contact():
    a, b = np.array([True, False, False, False]), np.array([False, False, True, True])
    contacts = SimpleNamespace(geom1=np.array([1, 3, 0]), geom2=np.array([2, 0, 1]))
    assert libero_env._touching(SimpleNamespace(ncon=3, contact=contacts), a, b)  # (3, 0): b, a
    assert not libero_env._touching(SimpleNamespace(ncon=1, contact=contacts), a, b)  # (1, 2) only
    assert not libero_env._touching(SimpleNamespace(ncon=0, contact=contacts), a, b)


def _names_touch(sim) -> bool:
    """The cost's predicate from geom names: a gripper geom in contact with a non-target object's."""
    m, d = sim.model, sim.data
    for k in range(d.ncon):
        names = [m.geom_id2name(g) or "" for g in (d.contact[k].geom1, d.contact[k].geom2)]
        grip = [n.startswith("gripper0_") for n in names]
        other = [any(n.startswith(o + "_") for o in TASK0_OTHERS) for n in names]
        if (grip[0] and other[1]) or (grip[1] and other[0]):
            return True
    return False


def test_cost_counts_the_actions_whose_gripper_touches_a_non_target_object(env, monkeypatch):
    env.reset(options={"init_state": [0, 0]})
    inner = env._slots[0].sim.env
    assert sorted(inner.obj_of_interest) == sorted(TASK0_TARGETS)
    assert set(inner.objects_dict) == {*TASK0_TARGETS, *TASK0_OTHERS} and set(inner.fixtures_dict) == set(
        TASK0_FIXTURES
    )

    # The lookups: robot0's gripper geoms, and the geoms of the movable objects of no interest.
    m = inner.sim.model
    slot = env._slots[0]
    grip = {m.geom_id2name(g) for g in np.flatnonzero(slot.grip_geoms)}
    other = {m.geom_id2name(g) for g in np.flatnonzero(slot.other_geoms)}
    assert grip and other and not grip & other
    assert set(inner.robots[0].gripper.contact_geoms) <= grip and all(n.startswith("gripper0_") for n in grip)
    for name, obj in inner.objects_dict.items():
        mine = {n for n in other if n.startswith(name + "_")}
        assert (mine >= set(obj.contact_geoms)) if name in TASK0_OTHERS else not mine, name
    assert all(any(n.startswith(o + "_") for o in TASK0_OTHERS) for n in other)  # no table, fixture, robot

    # Spy on every physics substep of env 0: the independent predicate, OR-ed per action.
    touched: list[bool] = []
    hook = inner._pre_action

    def spy(action, policy_step=False):
        hook(action, policy_step)
        if policy_step:  # the first substep of an action
            touched.append(False)
        touched[-1] = touched[-1] or _names_touch(inner.sim)

    monkeypatch.setattr(inner, "_pre_action", spy)

    # Scripted: over the cookies box (not an object of interest), then down onto it with the
    # gripper closed (open fingers would straddle the flat box).
    box = inner.sim.data.body_xpos[inner.obj_body_id["cookies_1"]].copy()
    state, above, costs = env._state.copy(), False, []
    for _ in range(20):
        p = state[0, :3]
        above = above or np.abs(p[:2] - box[:2]).max() < 0.015
        goal = box + (0.0, 0.0, -0.05 if above else 0.15)
        chunk = np.zeros((2, 4, 7), dtype=np.float32)
        chunk[0, :, :3] = np.clip((goal - p) / 0.05, -1.0, 1.0)
        chunk[0, :, 6], chunk[1, :, 6] = 1.0, -1.0  # env 0 closed, env 1 open and still
        before = len(touched)
        obs, _, _, _, info = env.step(chunk)
        assert info["cost"].dtype == np.float32 and info["cost"].shape == (2,)
        assert info["steps"].tolist() == [4, 4] and info["cost"][1] == 0.0  # env 1 stays at its start pose
        assert info["cost"][0] == sum(touched[before:]) and len(touched) == before + 4
        costs.append(float(info["cost"][0]))
        state = obs["state"]
        if sum(costs) >= 4:
            break
    assert costs[0] == 0.0 and sum(costs) >= 4, costs  # no contact at the start; then pushing
    monkeypatch.undo()


@pytest.mark.slow
def test_identical_resets_chunk_and_success(env):
    assert env.num_init_states == 50 and env.max_episode_steps == 220
    space = env.single_observation_space
    assert space["image"].shape == (48, 48, 3) and space["wrist_image"].shape == (48, 48, 3)
    assert env.single_action_space.shape == (7,)

    first, info = env.reset(options={"init_state": [7, 8]})
    assert info["init_state"].tolist() == [7, 8]
    assert first["instruction"] == [TASK0, TASK0]
    assert first["image"].dtype == np.uint8 and first["image"].shape == (2, 48, 48, 3)
    assert first["state"].dtype == np.float32 and first["state"].shape == (2, 8)
    assert np.isfinite(first["state"]).all() and first["image"].std() > 10  # a rendered scene
    assert not np.array_equal(first["image"][0], first["image"][1])  # init states 7 and 8 differ
    assert set(env.vocabulary()) >= set(TASK0.split())

    # One chunk of 4 actions moves the arm (env 1 closes the gripper and rises).
    chunk = np.zeros((2, 4, 7), dtype=np.float32)
    chunk[1, :, 2], chunk[1, :, 6] = 1.0, 1.0
    obs, reward, term, trunc, info = env.step(chunk)
    assert info["steps"].tolist() == [4, 4]
    assert info["success"].dtype == bool and info["success"].tolist() == [False, False]
    assert info["cost"].tolist() == [0.0, 0.0] and reward.tolist() == [0.0, 0.0]
    assert not term.any() and not trunc.any()
    assert obs["state"][1, 2] > first["state"][1, 2] + 0.01  # end effector went up
    assert not np.array_equal(obs["image"][1], first["image"][1])

    # Reset env 1 alone to init state 8 again: bit-identical observation bytes.
    again, _ = env.reset(options={"init_state": [8], "env_indices": [1]})
    for key in ("image", "wrist_image", "state"):
        assert again[key][1].tobytes() == first[key][1].tobytes(), key

    # Success comes from LIBERO's own check: when it holds, the chunk stops early and terminates.
    inner = env._slots[0].sim.env
    inner._check_success = lambda: True
    try:
        obs, reward, term, trunc, info = env.step(np.zeros((2, 3, 7), dtype=np.float32))
    finally:
        del inner._check_success
    assert info["steps"].tolist() == [1, 3] and info["success"].tolist() == [True, False]
    assert term.tolist() == [True, False] and reward.tolist() == [1.0, 0.0]
    _, _, _, _, info = env.step(np.zeros((2, 1, 7), dtype=np.float32))  # a done env executes nothing
    assert info["steps"].tolist() == [0, 1]


def test_a_simulator_that_raises_fails_only_its_env(env, monkeypatch):
    env.reset(options={"init_state": [3, 4]})
    sim = env._slots[1].sim

    def crash(action):
        raise ValueError("MuJoCo instability (injected)")

    monkeypatch.setattr(sim, "step", crash)
    obs, reward, term, trunc, info = env.step(np.zeros((2, 2, 7), dtype=np.float32))
    assert info["failed"].tolist() == [False, True] and info["steps"].tolist() == [2, 0]
    assert trunc.tolist() == [False, True] and not term.any()  # any caller resets it
    monkeypatch.undo()
    env.reset(options={"init_state": [4], "env_indices": [1]})
    _, _, _, _, info = env.step(np.zeros((2, 1, 7), dtype=np.float32))
    assert info["steps"].tolist() == [1, 1] and not info["failed"].any()


def test_bad_kwargs_fail_clearly():
    with pytest.raises(ValueError, match="suite must be one of"):
        make_env("libero", suite="libero_100")
    with pytest.raises(ValueError, match="task_ids"):
        make_env("libero", task_ids=[10])


@pytest.mark.slow
def test_single_env_wrapper_passes_check_env_and_truncates_inside_a_chunk():
    venv = make_env(
        "libero", num_envs=1, image_size=32, max_episode_steps=6, settle_steps=1, reflections=False
    )
    try:
        single = SingleEnv(venv, chunk_size=2)
        check_env(single, skip_render_check=True)
        # The step budget ends an episode in the middle of a chunk.
        single.reset(options={"init_state": 0})
        _, _, term, trunc, info = single.step(np.zeros((4, 7), dtype=np.float32))
        assert info["steps"] == 4 and not term and not trunc
        _, _, term, trunc, info = single.step(np.zeros((4, 7), dtype=np.float32))
        assert info["steps"] == 2 and trunc and not term and not info["success"]
    finally:
        venv.close()


def _copy_subset(tmp_path, keys):
    """A temp copy of some installed LIBERO files, laid out as the verifier expects."""
    files = libero_setup.installed_files()
    manifest = libero_setup.read_manifest()
    assets, libero = tmp_path / "assets", tmp_path / "libero"
    for key in keys:
        root = assets if key.startswith(libero_setup.ASSETS_PREFIX) else libero
        rel = key.removeprefix(libero_setup.ASSETS_PREFIX)
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(files[key], root / rel)
    for prefix in libero_setup.LIBERO_PREFIXES:
        (libero / prefix).mkdir(parents=True, exist_ok=True)
    return assets, libero, {k: manifest[k] for k in keys}


@pytest.mark.slow
def test_asset_manifest_verification_catches_changed_missing_and_extra_files(tmp_path):
    # The installed files match the committed manifest exactly (what `make libero` checked).
    manifest = libero_setup.read_manifest()
    assert len(manifest) > 1000 and any(k.startswith("assets/") for k in manifest)
    libero_setup.verify(libero_setup.installed_files(), manifest)

    init_file = min(k for k in manifest if k.startswith("init_files/libero_spatial/"))
    keys = ["assets/wall.xml", "assets/serving_region.xml", init_file]
    assets, libero, sub = _copy_subset(tmp_path, keys)
    libero_setup.verify(libero_setup.installed_files(assets, libero), sub)  # intact copy passes

    target = assets / "wall.xml"
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x01
    target.write_bytes(bytes(data))
    with pytest.raises(libero_setup.LiberoSetupError, match=r"1 changed \(first: assets/wall.xml\)"):
        libero_setup.verify(libero_setup.installed_files(assets, libero), sub)

    target.unlink()
    with pytest.raises(libero_setup.LiberoSetupError, match=r"1 missing \(first: assets/wall.xml\)"):
        libero_setup.verify(libero_setup.installed_files(assets, libero), sub)

    shutil.copyfile(libero_setup.installed_files()["assets/wall.xml"], target)
    (assets / "textures").mkdir()
    (assets / "textures" / "evil.png").write_bytes(b"not a texture")
    with pytest.raises(libero_setup.LiberoSetupError, match="1 unexpected"):
        libero_setup.verify(libero_setup.installed_files(assets, libero), sub)


def test_missing_setup_names_make_libero(tmp_path, monkeypatch):
    monkeypatch.setenv(libero_setup.CONFIG_ENV_VAR, str(tmp_path / "nowhere"))
    with pytest.raises(libero_setup.LiberoSetupError, match="make libero"):
        libero_setup.check_ready()


@pytest.mark.slow
@pytest.mark.usefixtures("ray_local")
def test_async_train_on_one_libero_task_writes_metrics(tmp_path):
    overrides = [
        "env.num_envs=1",
        "env.kwargs.image_size=32",
        "env.kwargs.max_episode_steps=24",
        "env.kwargs.settle_steps=2",
        "policy.chunk_size=4",
        "train.updates=2",
        "train.rollout_steps=3",
        "algo.minibatch_size=6",
        "algo.epochs=1",
        "eval.episodes=1",
        "eval.num_envs=1",
        "runtime.stall_timeout_s=240",
    ]
    cfg = load_config("configs/libero_spatial_tiny.yaml", overrides)
    assert cfg.mode == "async" and cfg.env.name == "libero"
    run = tmp_path / "run"
    summary = train(cfg, run)
    assert summary["mode"] == "async" and summary["updates"] == 2 and summary["policy_version"] == 2
    assert summary["env_steps"] > 0 and summary["samples_rejected"] == 0
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["update"] for r in rows] == [1, 2]
    assert all(r["env_steps"] > 0 and np.isfinite(r["loss_policy"]) for r in rows)
