"""The LIBERO env's perturbations (``perturb``) and its robustness-suite cells (needs `make libero`).

One env serves every simulator test: each test resets it to the same init state of libero_spatial
task 0 under one perturbation (set on the env as its constructor would) and compares with the
clean reset, so a test changes only what it is about; the last one uses task 3. A reset costs
seconds on 2 cores.
"""

import hashlib
import importlib.util
from contextlib import contextmanager

import numpy as np
import pytest

if importlib.util.find_spec("libero") is None:
    pytest.skip("LIBERO is not installed: run `make libero`", allow_module_level=True)

from asyncvla.envs import libero as libero_env
from asyncvla.envs import make_env
from asyncvla.envs.libero_suites import AXES
from asyncvla.trust.suites.cells import check_cells

pytestmark = [pytest.mark.libero, pytest.mark.slow]

TASK0 = "pick up the black bowl between the plate and the ramekin and place it on the plate"
KWARGS = {"suite": "libero_spatial", "task_ids": [0], "image_size": 64, "reflections": False}
INIT = 5


@pytest.fixture(scope="module")
def env():
    e = make_env("libero", num_envs=1, wrist_camera=True, **{**KWARGS, "task_ids": [0, 3]})
    yield e
    e.close()


@contextmanager
def perturbed(env, **perturb):
    """``env`` with ``perturb`` (validated as the constructor does), the clean env afterwards."""
    env._perturb = libero_env.Perturb.from_dict(perturb)
    try:
        yield env
    finally:
        env._perturb = libero_env.Perturb()


def _reset(env, init_state=INIT):
    """Observation, flattened simulator state, free-joint positions [n, 3] and the model."""
    obs, _ = env.reset(options={"init_state": [init_state]})
    inner = env._slots[0].sim.env
    model, data = inner.sim.model._model, inner.sim.data._data
    free = [j for j in range(model.njnt) if model.jnt_type[j] == 0]  # mjJNT_FREE
    adr = model.jnt_qposadr[free]
    objects = np.stack([data.qpos[adr + k] for k in range(3)], axis=1).copy()
    return obs, inner.sim.get_state().flatten().copy(), objects, model


def _object_texture(model):
    """The texels [n, 3] of the cookie box's texture."""
    tex = model.mat_texid[model.material("cookies_1_cookies").id]
    tex = int(tex[tex >= 0][0])
    adr, n = model.tex_adr[tex], model.tex_width[tex] * model.tex_height[tex] * model.tex_nchannel[tex]
    return model.tex_data[adr : adr + n].reshape(-1, model.tex_nchannel[tex])[:, :3].copy()


def _model_facts(model):
    cam = model.camera(libero_env.AGENTVIEW).id
    return {
        "cam_pos": model.cam_pos.copy(),
        "agentview_mat0": model.cam_mat0[cam].reshape(3, 3).copy(),
        "light_diffuse": model.light_diffuse.copy(),
        "headlight": np.array(model.vis.headlight.diffuse),
        "geom_rgba": model.geom_rgba.copy(),
        "mat_rgba": model.mat_rgba.copy(),
        "textures": hashlib.sha256(model.tex_data).hexdigest(),
        "object_texture": _object_texture(model),
    }


@pytest.fixture(scope="module")
def clean(env):
    obs, state, objects, model = _reset(env)
    return {"obs": obs, "state": state, "objects": objects, "model": _model_facts(model)}


def _same_sim(obs, state, clean):
    """The simulator state and the robot's observation are the clean reset's, bit for bit."""
    return np.array_equal(state, clean["state"]) and obs["state"].tobytes() == clean["obs"]["state"].tobytes()


def test_camera_shift_moves_the_agentview_camera_only(env, clean):
    with perturbed(env, camera_shift=0.1):
        obs, state, _, model = _reset(env)
        facts = _model_facts(model)
    cam = model.camera(libero_env.AGENTVIEW).id
    moved = facts["cam_pos"] - clean["model"]["cam_pos"]
    expected = 0.1 * clean["model"]["agentview_mat0"] @ libero_env.CAMERA_SHIFT_AXIS
    assert moved[cam] == pytest.approx(expected, abs=1e-6) and np.linalg.norm(moved[cam]) == pytest.approx(
        0.1
    )
    assert not np.delete(moved, cam, axis=0).any()  # the other cameras stay
    assert np.abs(obs["image"].astype(float) - clean["obs"]["image"]).mean() > 5.0
    assert obs["wrist_image"].tobytes() == clean["obs"]["wrist_image"].tobytes()
    assert _same_sim(obs, state, clean) and obs["instruction"] == [TASK0]


def test_lighting_scales_the_lights_and_the_brightness(env, clean):
    means = {}
    for value in (-0.5, 0.5):
        with perturbed(env, lighting=value):
            obs, state, _, model = _reset(env)
        assert model.light_diffuse == pytest.approx((1 + value) * clean["model"]["light_diffuse"])
        assert np.array(model.vis.headlight.diffuse) == pytest.approx(
            (1 + value) * clean["model"]["headlight"]
        )
        assert _same_sim(obs, state, clean)
        means[value] = obs["image"].mean()
    base = clean["obs"]["image"].mean()
    assert means[-0.5] < base - 20 and means[0.5] > base + 10, (means, base)


def test_colour_shift_rotates_the_scenes_hues_but_not_the_robots(env, clean):
    with perturbed(env, colour_shift=0.25):
        obs, state, _, model = _reset(env)
        facts = _model_facts(model)
    inner = env._slots[0].sim.env
    robot = libero_env._robot_geoms(inner)
    ref = clean["model"]
    assert np.array_equal(facts["geom_rgba"][robot], ref["geom_rgba"][robot])
    robot_mats = np.unique(model.geom_matid[robot])
    robot_mats = robot_mats[robot_mats >= 0]
    assert np.array_equal(facts["mat_rgba"][robot_mats], ref["mat_rgba"][robot_mats])
    # An object's texture turns; its texels keep their brightness (up to rounding and clipping).
    before, after = ref["object_texture"].astype(float), facts["object_texture"].astype(float)
    assert np.abs(after - before).mean() > 5.0
    assert np.abs(after.sum(axis=1) - before.sum(axis=1)).mean() < 10.0
    diff = obs["image"].astype(float) - clean["obs"]["image"]
    assert np.abs(diff).mean() > 3.0 and abs(diff.mean()) < 5.0  # new colours, about as bright
    assert _same_sim(obs, state, clean)


def test_pixel_noise_is_reproducible_per_init_state(env, clean):
    with perturbed(env, pixel_noise=20.0):
        first, state, _, _ = _reset(env)
        again, _, _, _ = _reset(env)
    for key in ("image", "wrist_image"):
        assert first[key].tobytes() == again[key].tobytes(), key
        noise = first[key].astype(float) - clean["obs"][key]
        assert 12.0 < noise.std() < 21.0 and abs(noise.mean()) < 2.0, key  # clipped at 0 and 255
    residual = {k: first[k].astype(float) - clean["obs"][k] for k in ("image", "wrist_image")}
    assert not np.array_equal(residual["image"], residual["wrist_image"])  # a draw per image
    assert _same_sim(first, state, clean)


def test_init_shift_moves_each_object_by_the_magnitude_and_repeats(env, clean):
    with perturbed(env, init_shift=0.05):
        first, state, objects, _ = _reset(env)
        again, state2, objects2, _ = _reset(env)
    assert np.array_equal(state, state2) and first["image"].tobytes() == again["image"].tobytes()
    step = np.linalg.norm(objects[:, :2] - clean["objects"][:, :2], axis=1)
    assert (step <= 0.05 + 2e-3).all() and (step > 0.045).sum() >= 3, step  # at most the magnitude
    assert np.abs(objects[:, 2] - clean["objects"][:, 2]).max() < 5e-3  # still standing on the table
    assert not np.array_equal(state, clean["state"])
    # The robot's start stays, up to the drift of the extra settle steps.
    robot, ref = first["state"][0], clean["obs"]["state"][0]
    assert robot[:3] == pytest.approx(ref[:3], abs=2e-3) and robot[6:] == pytest.approx(ref[6:], abs=2e-3)
    assert robot[3:6] == pytest.approx(ref[3:6], abs=1e-2)
    assert np.abs(first["image"].astype(float) - clean["obs"]["image"]).mean() > 0.5
    assert first["wrist_image"].shape == clean["obs"]["wrist_image"].shape


def test_paraphrase_rewords_only_the_instruction(env, clean):
    with perturbed(env, paraphrase=True):
        obs, state, _, _ = _reset(env)
        vocabulary = env.vocabulary()
    said = "please grab the black bowl in between the plate and the ramekin and set it on the plate"
    assert obs["instruction"] == [said] and libero_env.paraphrase(TASK0, 3) == said
    assert {"please", "grab", "set"} <= set(vocabulary) and "pick" not in vocabulary
    assert obs["image"].tobytes() == clean["obs"]["image"].tobytes() and _same_sim(obs, state, clean)
    assert (
        libero_env.paraphrase(TASK0, 1)
        == "grab the black bowl between the plate and the ramekin and set it on the plate"
    )
    assert libero_env.paraphrase("put the bowl on top of the cabinet", 2) == "place the bowl atop the cabinet"
    assert libero_env.paraphrase("turn on the stove", 0) == "turn on the stove"


def test_a_clean_reset_after_perturbed_ones_is_the_first_clean_reset(env, clean):
    """Runs after the perturbation tests: nothing of theirs leaks into the next reset."""
    obs, state, objects, model = _reset(env)
    for key in ("image", "wrist_image", "state"):
        assert obs[key].tobytes() == clean["obs"][key].tobytes(), key
    assert np.array_equal(state, clean["state"]) and np.array_equal(objects, clean["objects"])
    for key, value in _model_facts(model).items():
        assert np.array_equal(value, clean["model"][key]), key


def test_init_shift_moves_a_stack_as_one_and_leaves_what_rests_on_a_fixture(env):
    """Task 3 (the env's init states 50 .. 99): a bowl on the cookie box, the other on the cabinet.
    Runs after the tests of task 0 (switching tasks rebuilds the simulator)."""
    _, _, before, model = _reset(env, 50 + INIT)
    names = [model.joint(j).name for j in range(model.njnt) if model.jnt_type[j] == 0]
    with perturbed(env, init_shift=0.05):
        obs, _, after, _ = _reset(env, 50 + INIT)
    assert obs["instruction"] == ["pick up the black bowl on the cookie box and place it on the plate"]
    step = dict(zip(names, after - before, strict=True))
    bowl, box = step["akita_black_bowl_1_joint0"], step["cookies_1_joint0"]
    assert np.linalg.norm(box[:2]) == pytest.approx(0.05, abs=2e-3)
    assert bowl[:2] == pytest.approx(box[:2], abs=2e-3) and abs(bowl[2]) < 5e-3  # still on the box
    assert np.abs(step["akita_black_bowl_2_joint0"]).max() < 1e-3  # on the cabinet: stays
    for name in ("plate_1_joint0", "glazed_rim_porcelain_ramekin_1_joint0"):
        assert np.linalg.norm(step[name][:2]) == pytest.approx(0.05, abs=2e-3), name


def test_the_constructor_validates_perturb_with_one_clear_line():
    ok = make_env("libero", perturb={"camera_shift": -0.2, "lighting": 1, "paraphrase": 2}, **KWARGS)
    assert ok._perturb == libero_env.Perturb(camera_shift=-0.2, lighting=1.0, paraphrase=2)
    assert "grab" in ok.vocabulary()
    assert make_env("libero", perturb={}, **KWARGS)._perturb == libero_env.Perturb()
    bad = [
        (
            {"zoom": 1.2},
            "perturb has unknown key 'zoom'; allowed: camera_shift, lighting, colour_shift, "
            "pixel_noise, init_shift, paraphrase",
        ),
        ({"camera_shift": 0.3}, r"perturb\['camera_shift'\] must be a number in \[-0.2, 0.2\], got 0.3"),
        ({"lighting": -1.0}, r"perturb\['lighting'\] must be a number in \[-0.9, 1.0\], got -1.0"),
        ({"colour_shift": 0.6}, r"perturb\['colour_shift'\] must be a number in \[-0.5, 0.5\], got 0.6"),
        ({"pixel_noise": "20"}, r"perturb\['pixel_noise'\] must be a number in \[0.0, 255.0\], got '20'"),
        ({"init_shift": 0.2}, r"perturb\['init_shift'\] must be a number in \[0.0, 0.1\], got 0.2"),
        ({"init_shift": True}, r"perturb\['init_shift'\] must be a number"),
        ({"paraphrase": 4}, r"perturb\['paraphrase'\] must be a bool or an int in \[0, 3\], got 4"),
        ("camera_shift=0.1", "perturb must be a dict or None, got str"),
    ]
    for perturb, message in bad:
        with pytest.raises(ValueError, match=message) as err:
            make_env("libero", perturb=perturb, **KWARGS)
        assert "\n" not in str(err.value)


def test_robustness_cells_clean_then_three_strengths_per_axis():
    cls = libero_env.LiberoVecEnv
    cells = cls.suite_cells("robustness", KWARGS)
    assert cells[0].name == "clean" and cells[0].overrides == {} and cells[0].level == 0.0
    assert len(cells) == 1 + 3 * len(AXES) and len({c.name for c in cells}) == len(cells)
    assert set(AXES) == {
        "camera_shift",
        "lighting",
        "colour_shift",
        "pixel_noise",
        "paraphrase",
        "init_state",
    }
    for axis in AXES:
        mine = [c for c in cells if c.axis == axis]
        assert len(mine) == 3 and len({c.level for c in mine}) == 3 and all(c.matched for c in mine)
        assert all(c.name == f"{axis}={c.level:g}" and set(c.overrides) == {"perturb"} for c in mine)
    by_name = {c.name: c for c in cells}
    assert by_name["camera_shift=0.05"].overrides == {"perturb": {"camera_shift": 0.05}}
    assert by_name["init_state=0.03"].overrides == {"perturb": {"init_shift": 0.03}}
    assert by_name["paraphrase=2"].overrides == {"perturb": {"paraphrase": 2}}
    check_cells("libero", KWARGS, cells)  # every cell's env builds (no simulator yet)

    picked = cls.suite_cells("robustness", KWARGS, axes=["pixel_noise"], strengths=[5.0, 50.0])
    assert [c.name for c in picked] == ["clean", "pixel_noise=5", "pixel_noise=50"]
    two = cls.suite_cells("robustness", KWARGS, axes=["lighting", "paraphrase"])
    assert [c.axis for c in two] == ["", *["lighting"] * 3, *["paraphrase"] * 3]
    with pytest.raises(ValueError, match="unknown robustness axis 'zoom'; allowed: camera_shift, lighting"):
        cls.suite_cells("robustness", KWARGS, axes=["zoom"])
    with pytest.raises(ValueError, match="exactly one axis"):
        cls.suite_cells("robustness", KWARGS, axes=["lighting", "paraphrase"], strengths=[0.1])
    with pytest.raises(ValueError, match=r"paraphrase strength must be an integer in \[1, 3\], got 1.5"):
        cls.suite_cells("robustness", KWARGS, axes=["paraphrase"], strengths=[1.5])
    too_far = cls.suite_cells("robustness", KWARGS, axes=["camera_shift"], strengths=[0.5])
    with pytest.raises(ValueError, match=r"cell camera_shift=0.5: perturb\['camera_shift'\] must be"):
        check_cells("libero", KWARGS, too_far)
    assert cls.suite_cells("language", KWARGS) is None and cls.suite_cells("groups", KWARGS) is None
