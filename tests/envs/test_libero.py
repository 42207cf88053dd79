"""The LIBERO env (needs `make libero`, which `make test` runs: a missing install fails, not skips;
tests/conftest.py marks every test here ``libero``, so ``make test-fast`` leaves them out).

Kept to smoke sizes (one libero_spatial task, small images, a few chunks): a LIBERO reset costs
seconds on 2 cores.
"""

import json
import shutil
from pathlib import Path

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


@pytest.mark.slow
def test_the_shield_model_bounds_the_end_effectors_motion_and_the_shield_holds_it(env):
    from asyncvla.config import ShieldConfig
    from asyncvla.safety.shield import ShieldedEnv, make_shield

    model = env.shield_model()
    assert model.position_state_dims == (0, 1, 2) and model.gripper_action_dim == 6
    obs, _ = env.reset(options={"init_state": [3, 4]})
    x0 = obs["state"][:, 0].copy()
    chunk = np.zeros((2, 4, 7), dtype=np.float32)
    chunk[:, :, 0] = 1.0  # full speed along +x for 4 steps
    obs, *_ = env.step(chunk)
    moved = obs["state"][:, 0] - x0
    assert (moved > 0.005).all() and (moved <= 4 * model.step_scale[0] + 1e-3).all()  # commanded bound
    # A workspace 2 cm beyond the gripper in +x: the shielded env stops it there.
    x = obs["state"][:, 0]
    lo = [float(x.min()) - 0.3, -1.0, 0.5]
    hi = [float(x.max()) + 0.02, 1.0, 2.0]
    shielded = ShieldedEnv(env, make_shield(ShieldConfig(workspace=[*lo, *hi]), env))
    shielded._state = obs["state"]  # continue this episode under the shield
    for _ in range(3):
        obs, _, _, _, info = shielded.step(chunk)
    assert (obs["state"][:, 0] <= hi[0] + 0.01).all() and info["shield_interventions"].sum() > 0


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
