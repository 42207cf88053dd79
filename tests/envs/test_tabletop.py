"""Tests of the built-in tabletop env, its latency emulation and the speed benchmark."""

from __future__ import annotations

import re
import warnings

import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from hypothesis import given, settings
from hypothesis import strategies as st

from asyncvla.envs import SingleEnv, make_env, wrappers
from asyncvla.envs.speed import benchmark_env
from asyncvla.envs.tabletop import (
    DEFAULT_MAX_STEPS,
    FAMILIES,
    HELDOUT_COMBOS,
    INSTRUCTION_CHARSET,
    TEMPLATES,
    TabletopVecEnv,
    tokenize,
    vocabulary,
)
from asyncvla.envs.tabletop.render import KEEP_OUT as KEEP_OUT_COLOUR
from asyncvla.envs.tabletop.tasks import COLOUR_NAMES, SHAPES
from asyncvla.envs.wrappers import LatencyEmulator

HELDOUT_NAMES = {(COLOUR_NAMES[c], SHAPES[s]) for c, s in HELDOUT_COMBOS}
RELATION_RE = re.compile(r"the (\w+) (to the left of|to the right of|above|below) the (\w+) (\w+)")


def _env(family: str = "object", num_envs: int = 1, **kwargs) -> TabletopVecEnv:
    env = make_env("tabletop", num_envs, family=family, **kwargs)
    assert isinstance(env, TabletopVecEnv)
    return env


def _run_expert(env: TabletopVecEnv, episodes: int, chunk_size: int = 1) -> tuple[float, list[float]]:
    """Success rate of the expert over ``episodes`` episodes and each episode's shaping sum."""
    n = env.num_envs
    env.reset(seed=123)
    successes, shaping_sums, finished = 0, [], 0
    acc = np.zeros(n)
    while finished < episodes:
        chunk = env.expert_action_chunk(chunk_size) if chunk_size > 1 else env.expert_actions()
        _, reward, term, trunc, _ = env.step(chunk)
        acc += reward - term
        done = np.flatnonzero(term | trunc)
        for i in done:
            successes += int(term[i])
            shaping_sums.append(float(acc[i]))
            acc[i] = 0.0
        finished += done.size
        if done.size:
            env.reset(options={"env_indices": done})
    return successes / finished, shaping_sums


def _move_to(env: TabletopVecEnv, x: float, y: float, g: float) -> dict:
    """Drive env 0's gripper to (x, y) with gripper command ``g``; return the last step's info."""
    info: dict = {}
    for _ in range(20):
        gx, gy = env.describe(0)["gripper"]
        dx, dy = (x - gx) / env.max_step, (y - gy) / env.max_step
        _, _, _, _, info = env.step(np.array([[np.clip(dx, -1, 1), np.clip(dy, -1, 1), g]], np.float32))
        if abs(x - gx) <= env.max_step and abs(y - gy) <= env.max_step:
            return info
    raise AssertionError("gripper did not arrive")


# -- determinism --------------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_same_init_state_gives_identical_bytes_regardless_of_seed(family: str) -> None:
    a, _ = _env(family, 3, wrist_camera=True).reset(seed=1, options={"init_state": 7})
    b, _ = _env(family, 3, wrist_camera=True, seed=9).reset(seed=50, options={"init_state": 7})
    for key in ("image", "wrist_image", "state"):
        assert a[key].tobytes() == b[key].tobytes()
        assert (a[key][0] == a[key][2]).all()  # a shared init state: identical group members
    assert a["instruction"] == b["instruction"] == [a["instruction"][0]] * 3


def test_wrist_camera_is_centred_on_the_gripper() -> None:
    env = _env("object", 8, wrist_camera=True)
    obs, _ = env.reset(seed=0)
    white = (obs["wrist_image"] == 250).all(axis=-1)
    assert white[:, 24:40, 24:40].any(axis=(1, 2)).all()  # the open gripper ring, zoomed 2x
    assert white.sum() > 3 * (obs["image"] == 250).all(axis=-1).sum()


def test_different_init_states_and_seeds_differ() -> None:
    env = _env("object", 1)
    images = {env.reset(options={"init_state": k})[0]["image"].tobytes() for k in range(10)}
    assert len(images) == 10
    seeded = {env.reset(seed=s)[0]["image"].tobytes() for s in range(10)}
    assert len(seeded) == 10


def test_int_seed_offsets_per_env_and_reseeding_repeats() -> None:
    two, _ = _env("long", 2).reset(seed=5)
    one, _ = _env("long", 1).reset(seed=6)
    assert two["image"][1].tobytes() == one["image"][0].tobytes()
    env = _env("long", 2)
    first = env.reset(seed=5)[0]["image"]
    env.reset()  # unseeded resets continue the per-env seed streams
    assert env.reset(seed=5)[0]["image"].tobytes() == first.tobytes()


def test_env_indices_reset_only_those_envs() -> None:
    env = _env("object", 3)
    before, _ = env.reset(seed=0)
    after, info = env.reset(seed=[11], options={"env_indices": [1], "init_state": [4]})
    assert after["image"][0].tobytes() == before["image"][0].tobytes()
    assert after["image"][2].tobytes() == before["image"][2].tobytes()
    assert after["image"][1].tobytes() != before["image"][1].tobytes()
    assert info["init_state"][1] == 4


# -- chunk semantics ----------------------------------------------------------------------------


@settings(max_examples=15, deadline=None)
@given(chunk=st.integers(1, 6), seed=st.integers(0, 1000))
def test_chunk_equals_consecutive_single_steps(chunk: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    actions = rng.uniform(-1.2, 1.2, (2, chunk, 3)).astype(np.float32)  # out-of-range parts are clipped
    chunked, single = _env("object", 2, max_episode_steps=200), _env("object", 2, max_episode_steps=200)
    chunked.reset(seed=seed)
    single.reset(seed=seed)
    obs_c, rew_c, _, _, info_c = chunked.step(actions)
    rew_s, cost_s = np.zeros(2), np.zeros(2)
    for j in range(chunk):
        obs_s, r, _, _, info = single.step(actions[:, j])
        rew_s += r
        cost_s += info["cost"]
    assert obs_c["image"].tobytes() == obs_s["image"].tobytes()
    assert np.array_equal(obs_c["state"], obs_s["state"])
    np.testing.assert_allclose(rew_c, rew_s, atol=1e-5)
    np.testing.assert_allclose(info_c["cost"], cost_s)
    assert (info_c["steps"] == chunk).all()


def test_chunk_stops_at_termination_and_done_env_gets_zero_steps() -> None:
    env = _env("reach", 2)
    env.reset(seed=0)
    chunk = env.expert_action_chunk(30)
    _, reward, term, trunc, info = env.step(chunk)
    assert term.all() and not trunc.any() and info["success"].all()
    assert (info["steps"] < 30).all() and (info["steps"] >= 1).all()
    assert (reward > 1.0).all()  # success plus positive shaping along the expert path
    obs_done, reward, term, trunc, info = env.step(chunk)
    assert (info["steps"] == 0).all() and (reward == 0).all() and not (term | trunc | info["success"]).any()


def test_truncation_counts_actions_not_chunks() -> None:
    env = _env("object", 1, max_episode_steps=10)
    env.reset(seed=0)
    idle = np.zeros((1, 4, 3), np.float32)
    executed, truncated = [], []
    for _ in range(3):
        _, _, term, trunc, info = env.step(idle)
        executed.append(int(info["steps"][0]))
        truncated.append(bool(trunc[0]))
        assert not term[0]
    assert executed == [4, 4, 2] and truncated == [False, False, True]
    assert env.step(idle)[4]["steps"][0] == 0


# -- gymnasium compliance and the expert ----------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_check_env(family: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # check_env reports soft failures as warnings
        check_env(SingleEnv(_env(family, 1, wrist_camera=True), chunk_size=4), skip_render_check=True)


@pytest.mark.parametrize("family", FAMILIES)
def test_expert_succeeds_and_shaping_is_bounded(family: str) -> None:
    rate, shaping = _run_expert(_env(family, 8, n_objects=(3, 6)), episodes=40)
    assert rate >= 0.95
    assert all(0.0 < s <= 0.5 + 1e-6 for s in shaping)


@pytest.mark.parametrize("family", ["spatial", "long"])
def test_expert_chunks_match_stepwise_expert_and_leave_env_untouched(family: str) -> None:
    env = _env(family, 4, split="heldout")
    env.reset(seed=3)
    before = env.reset(seed=3)[0]["image"].tobytes()
    chunk = env.expert_action_chunk(5)
    assert env.reset(seed=3)[0]["image"].tobytes() == before
    for j in range(5):
        np.testing.assert_array_equal(env.expert_actions(), chunk[:, j])
        env.step(env.expert_actions())
    assert _run_expert(env, episodes=16, chunk_size=8)[0] >= 0.95


def test_random_policy_shaping_is_bounded_and_zero_when_disabled() -> None:
    rng = np.random.default_rng(0)
    for shaping, bound in ((1.0, 0.5 + 1e-6), (0.0, 0.0)):
        env = _env("long", 4, reward_shaping=shaping)
        env.reset(seed=0)
        total = np.zeros(4)
        for _ in range(DEFAULT_MAX_STEPS["long"] // 4):
            _, reward, term, _, _ = env.step(rng.uniform(-1, 1, (4, 4, 3)).astype(np.float32))
            total += reward - term
        assert np.abs(total).max() <= bound
    assert np.abs(total).max() == 0.0


def test_cost_on_wrong_grasp_only() -> None:
    env = _env("object", 1, n_objects=(4, 4))
    env.reset(seed=0, options={"init_state": 2})
    scene = env.describe(0)
    wrong = next(i for i in range(4) if i not in scene["targets"])
    x, y = scene["objects"][wrong]["pos"]
    assert _move_to(env, x, y, -1.0)["cost"][0] == 0.0  # arriving open is fine
    info = env.step(np.array([[0.0, 0.0, 1.0]], np.float32))[4]
    assert info["cost"][0] == 1.0 and env.describe(0)["held"] == wrong
    assert env.step(np.array([[0.0, 0.0, 1.0]], np.float32))[4]["cost"][0] == 0.0  # staying closed
    env.reset(options={"init_state": 2})
    assert _run_expert(env, episodes=1)[0] == 1.0
    env.reset(options={"init_state": 2})
    costs = []
    for _ in range(30):
        _, _, term, _, info = env.step(env.expert_actions())
        costs.append(info["cost"][0])
        if term[0]:
            break
    assert term[0] and sum(costs) == 0.0


KEEP_OUT = [0.4, 0.4, 0.6, 0.6]


def test_keep_out_region_costs_one_per_step_inside_and_is_drawn() -> None:
    env = _env("object", 1, keep_out=KEEP_OUT, wrong_grasp_cost=0.0)
    obs, _ = env.reset(seed=0, options={"init_state": 5})
    # Drawn: the region's centre pixel has the keep-out colour (no object or gripper starts there).
    assert tuple(obs["image"][0, 32, 32]) == KEEP_OUT_COLOUR
    assert _move_to(env, 0.5, 0.5, -1.0)["cost"][0] == 1.0  # the step that ends inside
    inside = env.step(np.array([[0.0, 0.0, -1.0]] * 1, np.float32)[:, None].repeat(3, axis=1))[4]
    assert inside["cost"][0] == 3.0 and inside["steps"][0] == 3  # one per executed action inside
    inside_steps = 0
    for _ in range(4):  # leaving to the right: a cost exactly for the steps that end inside
        info = env.step(np.array([[0.5, 0.0, -1.0]], np.float32))[4]
        x, y = env.describe(0)["gripper"]
        assert info["cost"][0] == float(0.4 <= x <= 0.6 and 0.4 <= y <= 0.6)
        inside_steps += int(info["cost"][0])
    assert 0 < inside_steps < 4 and x > 0.6


def test_keep_out_scenes_leave_the_region_free_and_default_scenes_unchanged() -> None:
    plain = _env("object", 8)
    none = _env("object", 8, keep_out=None)
    a, _ = plain.reset(seed=1, options={"init_state": list(range(8))})
    b, _ = none.reset(seed=1, options={"init_state": list(range(8))})
    assert np.array_equal(a["image"], b["image"])
    env = _env("object", 50, keep_out=KEEP_OUT, n_objects=(3, 3))
    env.reset(seed=0, options={"init_state": list(range(50))})
    for i in range(50):
        d = env.describe(i)
        for p in [d["gripper"], *(o["pos"] for o in d["objects"])]:
            assert not (0.4 - 0.08 <= p[0] <= 0.6 + 0.08 and 0.4 - 0.08 <= p[1] <= 0.6 + 0.08), p


def test_wrong_grasp_cost_is_configurable() -> None:
    env = _env("object", 1, n_objects=(4, 4), wrong_grasp_cost=0.0)
    env.reset(seed=0, options={"init_state": 2})
    scene = env.describe(0)
    wrong = next(i for i in range(4) if i not in scene["targets"])
    _move_to(env, *scene["objects"][wrong]["pos"], -1.0)
    info = env.step(np.array([[0.0, 0.0, 1.0]], np.float32))[4]
    assert env.describe(0)["held"] == wrong and info["cost"][0] == 0.0


@pytest.mark.parametrize(
    ("region", "match"),
    [
        ([0.4, 0.4, 1.2, 0.6], "must lie on the table"),
        ([0.6, 0.4, 0.4, 0.6], "must lie on the table"),
        ([0.0, 0.0, 0.3, 0.3], "overlaps top left corner"),
        ([0.4, 0.05, 0.6, 0.2], "overlaps a basket position"),
        ([0.4, 0.4, 0.6], r"must be \[x_lo, y_lo, x_hi, y_hi\]"),
    ],
)
def test_keep_out_that_cannot_apply_is_refused(region, match) -> None:
    with pytest.raises(ValueError, match=match):
        _env("object", 1, keep_out=region)


def test_long_tasks_respect_order() -> None:
    env = _env("long", 1, n_objects=(2, 2))
    env.reset(options={"init_state": 0})
    scene = env.describe(0)
    first, second = scene["targets"]
    bx, by = (scene["basket"][0] + scene["basket"][2]) / 2, (scene["basket"][1] + scene["basket"][3]) / 2
    close, release = np.array([[0.0, 0.0, 1.0]], np.float32), np.array([[0.0, 0.0, -1.0]], np.float32)
    _move_to(env, *scene["objects"][second]["pos"], -1.0)
    assert env.step(close)[4]["cost"][0] == 1.0  # the second object is not the target yet
    _move_to(env, bx, by, 1.0)
    _, _, term, _, info = env.step(release)  # released in the basket, but too early
    assert not term[0] and info["subgoals_done"][0] == 0 and first != second
    for _ in range(30):  # the expert places the first object
        info = env.step(env.expert_actions())[4]
        if info["subgoals_done"][0] == 1:
            break
    _, _, term, _, info = env.step(release)  # the early-placed object does not count now
    assert not term[0] and info["subgoals_done"][0] == 1
    for _ in range(30):
        _, _, term, trunc, info = env.step(env.expert_actions())
        if term[0] or trunc[0]:
            break
    assert term[0] and info["subgoals_done"][0] == 2


# -- layouts, splits and language -----------------------------------------------------------------


def _target_names(env: TabletopVecEnv) -> set[tuple[str, str]]:
    names = set()
    for i in range(env.num_envs):
        scene = env.describe(i)
        names |= {(scene["objects"][t]["colour"], scene["objects"][t]["shape"]) for t in scene["targets"]}
    return names


KINDS = {"reach": ["touch"], "object": ["basket"], "spatial": ["zone"], "goal": ["touch", "basket", "zone"]}


def _template_regexes(family: str, heldout: bool) -> list[re.Pattern[str]]:
    """Regexes of the family's train or held-out templates, placeholders matching any filler."""
    out = []
    for kind in KINDS.get(family, [family]):
        for template in TEMPLATES[kind][1 if heldout else 0]:
            pattern = re.escape(template)
            for key in ("obj", "zone", "a", "b"):
                pattern = pattern.replace(re.escape("{" + key + "}"), "[a-z ]+")
            out.append(re.compile(pattern))
    return out


@pytest.mark.parametrize("family", FAMILIES)
def test_heldout_split_targets_and_paraphrases_are_disjoint_from_train(family: str) -> None:
    seen: dict[str, set[tuple[str, str]]] = {}
    for split in ("train", "heldout"):
        env = _env(family, 16, split=split)
        seen[split] = set()
        for k in range(6):
            obs, _ = env.reset(seed=100 * k)
            seen[split] |= _target_names(env)
            for text in obs["instruction"]:
                assert any(r.fullmatch(text) for r in _template_regexes(family, split == "heldout")), text
                assert not any(r.fullmatch(text) for r in _template_regexes(family, split != "heldout")), text
    assert seen["heldout"] <= HELDOUT_NAMES and not seen["train"] & HELDOUT_NAMES
    assert len(seen["heldout"]) >= 3


def test_vocabulary_covers_exactly_the_training_instruction_words() -> None:
    vocab = set(vocabulary())
    assert _env().vocabulary() == sorted(vocab)
    words: dict[str, set[str]] = {"train": set(), "heldout": set()}
    for family in FAMILIES:
        for split in ("train", "heldout"):
            env = _env(family, 16, split=split, n_objects=(3, 6))
            for k in range(4):
                for text in env.reset(seed=k * 16)[0]["instruction"]:
                    assert set(text) <= set(INSTRUCTION_CHARSET) and text == text.lower()
                    words[split] |= set(tokenize(text))
    assert words["train"] == vocab
    # Held-out paraphrases bring words of their own (a tokenizer reads them as <unk>); the
    # held-out colour/shape combinations bring none.
    assert {"inside", "carry", "followed"} <= words["heldout"] - vocab


@pytest.mark.parametrize("family", FAMILIES)
def test_objects_do_not_overlap_and_avoid_basket(family: str) -> None:
    env = _env(family, 16, n_objects=(3, 6), perturb={"extra_distractors": 4})
    for k in range(4):
        env.reset(seed=k * 16)
        for i in range(16):
            scene = env.describe(i)
            pos = np.array([o["pos"] for o in scene["objects"]])
            dist = np.hypot(*(pos[:, None] - pos[None]).transpose(2, 0, 1)) + np.eye(len(pos))
            assert dist.min() >= 0.15 - 1e-9
            x0, y0, x1, y1 = scene["basket"]
            inside = (
                (pos[:, 0] > x0 - 0.05)
                & (pos[:, 0] < x1 + 0.05)
                & (pos[:, 1] > y0 - 0.05)
                & (pos[:, 1] < y1 + 0.05)
            )
            assert not inside.any()


def _lies(p: tuple[float, float], ref: tuple[float, float], direction: tuple[int, int]) -> bool:
    """Whether ``p`` lies more along ``direction`` from ``ref`` than across it."""
    vx, vy = p[0] - ref[0], p[1] - ref[1]
    return vx * direction[0] + vy * direction[1] > abs(vx * direction[1] - vy * direction[0])


def test_spatial_reference_identifies_the_target_uniquely() -> None:
    offsets = {"to the left of": (-1, 0), "to the right of": (1, 0), "above": (0, -1), "below": (0, 1)}
    env = _env("spatial", 16, n_objects=(3, 6))
    for k in range(4):
        obs, _ = env.reset(seed=k * 16)
        for i, text in enumerate(obs["instruction"]):
            shape, relation, ref_colour, ref_shape = RELATION_RE.search(text).groups()
            objects = env.describe(i)["objects"]
            (ref,) = [o for o in objects if (o["colour"], o["shape"]) == (ref_colour, ref_shape)]
            direction = offsets[relation]
            matches = [
                j
                for j, o in enumerate(objects)
                if o["shape"] == shape and _lies(o["pos"], ref["pos"], direction)
            ]
            assert matches == env.describe(i)["targets"]


def test_goal_family_shares_scenes_across_goals() -> None:
    env = _env("goal", 8)
    obs, _ = env.reset(options={"init_state": list(range(16, 24))})
    positions = {tuple(o["pos"] for o in env.describe(i)["objects"]) for i in range(8)}
    assert len(positions) == 1
    assert len(set(obs["instruction"])) >= 3


# -- perturbations ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "perturb",
    [{"color_shift": 0.2}, {"lighting": -0.3}, {"camera_shift": 4}, {"zoom": 1.2}, {"pixel_noise": 8.0}],
)
def test_visual_perturbations_change_images_deterministically(perturb: dict) -> None:
    clean, _ = _env("object", 4).reset(seed=0)
    a, _ = _env("object", 4, perturb=perturb).reset(seed=0)
    b, _ = _env("object", 4, perturb=perturb).reset(seed=0)
    assert a["image"].tobytes() == b["image"].tobytes()
    assert (a["image"] != clean["image"]).any(axis=(1, 2, 3)).all()
    assert a["instruction"] == clean["instruction"]


def test_distractor_and_paraphrase_perturbations_keep_the_task() -> None:
    clean = _env("object", 8)
    extra = _env("object", 8, perturb={"extra_distractors": 2})
    worded = _env("object", 8, perturb={"paraphrase": True})
    obs = [env.reset(seed=0)[0] for env in (clean, extra, worded)]
    for i in range(8):
        base, more = clean.describe(i), extra.describe(i)
        assert len(more["objects"]) == len(base["objects"]) + 2
        assert more["objects"][: len(base["objects"])] == base["objects"]
        assert _target_names(worded) == _target_names(clean)
    assert obs[1]["instruction"] == obs[0]["instruction"]
    assert all(a != b for a, b in zip(obs[0]["instruction"], obs[2]["instruction"], strict=True))
    assert any(r.fullmatch(obs[2]["instruction"][0]) for r in _template_regexes("object", heldout=True))


# -- latency, validation and speed ------------------------------------------------------------------


@pytest.mark.parametrize(("scope", "expected_s"), [("env", [0.04, 0.02]), ("batch", [0.01, 0.005])])
def test_latency_sleeps_one_sample_per_executed_action(monkeypatch, scope: str, expected_s: list) -> None:
    """``env``: one 5 ms sample per env and executed action; ``batch``: one per action step that any
    env executes. The step budget of 3 ends every episode inside the second chunk of 2 actions."""
    slept: list[float] = []
    monkeypatch.setattr(wrappers.time, "sleep", slept.append)
    latency = {"kind": "constant", "mean_ms": 5.0, "scope": scope}
    env = _env("object", 4, max_episode_steps=3, latency=latency)
    env.reset(seed=0)
    idle = np.zeros((4, 2, 3), np.float32)
    executed = [env.step(idle)[4]["steps"].tolist() for _ in range(3)]
    assert executed == [[2] * 4, [1] * 4, [0] * 4]
    assert slept == pytest.approx(expected_s, rel=1e-12)  # nothing is slept for a step of done envs
    assert env.latency.total_s == pytest.approx(sum(expected_s), rel=1e-12)
    assert env.latency.delay_s([3, 1, 0]) == pytest.approx(0.02 if scope == "env" else 0.01, rel=1e-12)
    assert LatencyEmulator(None).delay_s([4, 4]) == 0.0


def test_lognormal_latency_has_the_configured_mean() -> None:
    """mu = ln(mean) - sigma^2 / 2 gives the lognormal mean exp(mu + sigma^2 / 2) = mean."""
    calls = []

    class Recorder:
        def lognormal(self, mu: float, sigma: float, size: int) -> np.ndarray:
            calls.append((mu, sigma, size))
            return np.ones(size)

    emulator = LatencyEmulator({"kind": "lognormal", "mean_ms": 10.0, "sigma": 0.5})
    emulator._rng = Recorder()
    assert emulator.sample_ms(7).tolist() == [1.0] * 7
    ((mu, sigma, size),) = calls
    assert (sigma, size) == (0.5, 7)
    assert np.exp(mu + sigma**2 / 2) == pytest.approx(10.0, rel=1e-12)


def test_latency_samples_are_seeded_and_the_tail_multiplies_them() -> None:
    def sample(seed: int = 0, **config) -> np.ndarray:
        config = {"kind": "lognormal", "mean_ms": 10.0, "sigma": 0.1, **config}
        return LatencyEmulator(config, seed=seed).sample_ms(100)

    base = sample()
    np.testing.assert_array_equal(base, sample())
    assert not np.array_equal(base, sample(seed=1))
    # heavy_tail draws the same lognormal first, then multiplies where a uniform draw < tail_prob.
    heavy = {"kind": "heavy_tail", "tail_mult": 5.0}
    np.testing.assert_array_equal(sample(**heavy, tail_prob=1.0), 5.0 * base)
    np.testing.assert_array_equal(sample(**heavy, tail_prob=0.0), base)
    mixed = sample(**heavy, tail_prob=0.5) / base
    assert set(np.round(mixed, 12)) == {1.0, 5.0}


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"family": "kitchen"}, "family"),
        ({"split": "test"}, "split"),
        ({"num_envs": 0}, "num_envs"),
        ({"image_size": 8}, "image_size"),
        ({"n_objects": (5, 3)}, "n_objects"),
        ({"family": "spatial", "n_objects": (2, 3)}, "n_objects"),
        ({"max_episode_steps": 0}, "max_episode_steps"),
        ({"reward_shaping": -1.0}, "reward_shaping"),
        ({"perturb": {"blur": 1.0}}, "blur"),
        ({"perturb": {"zoom": 5.0}}, "zoom"),
        ({"perturb": {"extra_distractors": 1.5}}, "extra_distractors"),
        ({"latency": {"kind": "slow"}}, "kind"),
        ({"latency": {"kind": "constant", "scope": "world"}}, "scope"),
        ({"latency": {"mean_ms": -1.0}}, "mean_ms"),
    ],
)
def test_invalid_arguments_raise_value_errors_naming_them(kwargs: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        make_env("tabletop", kwargs.pop("num_envs", 1), **kwargs)


def test_invalid_step_and_reset_calls_raise() -> None:
    env = _env("object", 2)
    with pytest.raises(ValueError, match="actions"):
        env.step(np.zeros((3, 1, 3), np.float32))
    with pytest.raises(ValueError, match="env_indices"):
        env.reset(options={"env_indices": [5]})
    with pytest.raises(ValueError, match="init_state"):
        env.reset(options={"init_state": [1, 2, 3]})


def test_benchmark_reports_throughput() -> None:
    """What the benchmark counts (how fast is for ``asyncvla env-speed``, not for a test)."""
    result = benchmark_env(num_envs=4, chunk_size=4, steps=200)
    assert (result["num_envs"], result["chunk_size"], result["image_size"]) == (4, 4, 64)
    assert result["env_steps_per_s"] > 0 and result["env_steps_per_cpu_s"] > 0
    # Random actions rarely finish an episode inside a chunk: nearly every decision executes 4 steps.
    assert 3.5 <= result["env_steps_per_s"] / result["decisions_per_s"] <= 4.0
