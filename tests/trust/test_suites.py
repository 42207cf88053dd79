"""Evaluation suites on policies whose answers are known: scripted image pointers that read or
ignore the instruction, a constant-action policy, the scripted expert of the counterfactual goal."""

import csv
import json

import numpy as np
import pytest
import torch

from asyncvla.config import load_config
from asyncvla.envs import ENVS, make_env
from asyncvla.envs.episodes import run_episodes
from asyncvla.envs.tabletop.tasks import COLOURS
from asyncvla.policies import Policy, save_policy
from asyncvla.policies.base import ActOutput
from asyncvla.trust.suites import run_suite
from asyncvla.trust.suites.cells import Cell, run_cells
from asyncvla.trust.suites.language import language_dependence

TABLETOP = ENVS.get("tabletop")
REACH = {"family": "reach", "n_objects": [3, 3], "max_step": 0.05}
EPISODES = 60


class Pointer(Policy):
    """Reach from the image: move the gripper (its position from the state) to the nearest pixel of
    an object of the colour the instruction names (``reads_instruction``), or of any object colour
    (a scene prior that ignores the instruction). Pixels are read as table coordinates, so a camera
    shift misleads it."""

    chunk_size, action_dim = 1, 3

    def __init__(self, reads_instruction: bool, max_step: float = 0.05) -> None:
        super().__init__()
        self.reads_instruction, self.max_step = reads_instruction, max_step

    def act(self, obs, deterministic=False, with_features=False):
        images, state = np.asarray(obs["image"]).astype(np.int64), np.asarray(obs["state"])
        n, size = len(images), images.shape[1]
        out = np.zeros((n, 1, 3), np.float32)
        out[..., 2] = -1.0
        for i in range(n):
            words = obs["instruction"][i].split()
            names = [w for w in words if w in COLOURS] if self.reads_instruction else list(COLOURS)
            mask = np.zeros(images.shape[1:3], bool)
            for name in names:
                mask |= np.abs(images[i] - np.array(COLOURS[name])).sum(-1) < 40
            ys, xs = np.nonzero(mask)
            if len(xs) == 0:
                continue
            pts = np.stack([xs + 0.5, ys + 0.5], 1) / size
            target = pts[np.argmin(((pts - state[i, :2]) ** 2).sum(1))]
            out[i, 0, :2] = np.clip((target - state[i, :2]) / self.max_step, -1.0, 1.0)
        return ActOutput(out, np.zeros_like(out), np.zeros(n, np.float32), 0)

    def evaluate(self, obs, actions, features=None):
        raise NotImplementedError

    def init_kwargs(self):
        return {"reads_instruction": self.reads_instruction}


class Constant(Pointer):
    """Always the same action: right and a little down, gripper open."""

    def act(self, obs, deterministic=False, with_features=False):
        n = len(obs["image"])
        out = np.tile(np.array([[[1.0, 0.3, -1.0]]], np.float32), (n, 1, 1))
        return ActOutput(out, np.zeros_like(out), np.zeros(n, np.float32), 0)


def _suite(name, policy, tmp_path, kwargs=REACH, **context):
    return run_suite(
        name,
        "tabletop",
        TABLETOP,
        kwargs,
        EPISODES,
        1_000_000,
        tmp_path / name,
        policy=policy,
        context=context,
    )


def test_camera_shift_hurts_an_image_policy_and_not_a_constant_one(tmp_path):
    axes = {"axes": ["camera_shift", "pixel_noise"]}
    seeing = _suite("robustness", Pointer(reads_instruction=True), tmp_path / "a", **axes)
    table = {r["cell"]: r for r in seeing["table"]}
    assert table["clean"]["success"] > 0.5
    strongest = table["camera_shift=8"]
    assert strongest["success"] < table["clean"]["success"]
    assert strongest["paired"] and strongest["diff_ci95_high"] < 0  # a paired drop
    blind = _suite("robustness", Constant(False), tmp_path / "b", **axes)
    per_episode = blind["per_episode_success"]
    assert sum(per_episode["clean"]) > 0  # it does succeed sometimes (its path crosses the target)
    assert all(v == per_episode["clean"] for v in per_episode.values())
    assert blind["matrix"]["camera_shift"]["8.0"] == blind["clean"]["success"]


def test_suite_files_hold_the_table_the_summary_and_a_figure(tmp_path):
    res = _suite("robustness", Constant(False), tmp_path, axes=["zoom"], strengths=[1.1, 1.3])
    out = tmp_path / "robustness"
    data = json.loads((out / "robustness.json").read_text())
    assert [c["name"] for c in data["cells"]] == ["clean", "zoom=1.1", "zoom=1.3"]
    rows = list(csv.DictReader(open(out / "robustness.csv")))
    assert [r["cell"] for r in rows] == ["clean", "zoom=1.1", "zoom=1.3"]
    k = int(round(res["clean"]["success"] * EPISODES))
    assert float(rows[0]["ci95_low"]) < k / EPISODES < float(rows[0]["ci95_high"]) or k in (0, EPISODES)
    assert (out / "robustness.png").read_bytes()[:4] == b"\x89PNG"


def test_language_dependence_is_zero_when_the_instruction_is_ignored(tmp_path):
    res = _suite("language", Pointer(reads_instruction=False), tmp_path)
    per_episode = res["per_episode_success"]
    assert sum(per_episode["true"]) > 0
    assert all(v == per_episode["true"] for v in per_episode.values())  # it never looks at the words
    assert res["language_dependence"]["value"] == 0.0


def test_a_policy_that_reads_the_instruction_follows_the_altered_one(tmp_path):
    res = _suite("language", Pointer(reads_instruction=True), tmp_path)
    table = {r["cell"]: r for r in res["table"]}
    assert table["true"]["success"] > 0.6
    assert table["blank"]["success"] < 0.2  # no colour named: it stays where it is
    assert res["follows_altered"]["success"] > 0.6  # it touches the object the altered words name
    assert res["language_dependence"]["ci95_low"] > 0.5


def test_the_counterfactual_expert_reaches_the_altered_goal_and_not_the_true_one():
    """The scripted expert of the goal an other_object instruction names, on pick-and-place: the
    env counts its episodes as counterfactual successes and never as true ones."""
    env = make_env(
        "tabletop", num_envs=10, family="object", n_objects=[3, 3], perturb={"instruction": "other_object"}
    )
    facts = {}
    eps = run_episodes(
        env,
        20,
        1_000_000,
        lambda o: env.expert_actions(counterfactual=True)[:, None],
        on_end=lambda slot, j: facts.__setitem__(j, env.describe(slot)),
    )
    assert all(f["counterfactual_goal"] for f in facts.values())
    assert all(f["counterfactual_success"] for f in facts.values())
    assert not any(e.success for e in eps)
    # ...and the true-goal expert succeeds on the same episodes without reaching the altered goal.
    facts.clear()
    eps = run_episodes(
        env,
        20,
        1_000_000,
        lambda o: env.expert_actions()[:, None],
        on_end=lambda s, j: facts.__setitem__(j, env.describe(s)),
    )
    assert all(e.success for e in eps) and not any(f["counterfactual_success"] for f in facts.values())


def test_other_object_names_an_object_of_the_scene_and_keeps_the_layout():
    true = make_env("tabletop", num_envs=8, family="goal", n_objects=[3, 4])
    alt = make_env(
        "tabletop", num_envs=8, family="goal", n_objects=[3, 4], perturb={"instruction": "other_object"}
    )
    seeds = list(range(8))
    o1, _ = true.reset(seed=seeds, options={"init_state": seeds})
    o2, _ = alt.reset(seed=seeds, options={"init_state": seeds})
    assert np.array_equal(o1["image"], o2["image"])
    for i in range(8):
        d1, d2 = true.describe(i), alt.describe(i)
        assert d1["objects"] == d2["objects"] and d1["targets"] == d2["targets"]
        (k,) = d2["counterfactual_targets"]
        other = d2["objects"][k]
        assert k not in d2["targets"] and f"{other['colour']} {other['shape']}" in o2["instruction"][i]
        assert o2["instruction"][i] != o1["instruction"][i]


def test_groups_report_every_grouping_with_a_worst_group_and_a_gap(tmp_path):
    res = _suite("groups", Pointer(reads_instruction=True), tmp_path)
    g = res["groupings"]
    assert set(g) == {"family", "target_colour", "target_shape", "template"}
    assert set(g["family"]["groups"]) == {"reach", "object", "spatial", "goal", "long"}
    assert sum(r["episodes"] for r in g["target_colour"]["groups"].values()) == EPISODES
    fam = g["family"]
    worst = min(fam["groups"], key=lambda k: fam["groups"][k]["success"])
    assert fam["worst"]["group"] == worst
    rates = [r["success"] for r in fam["groups"].values()]
    assert fam["gap"]["value"] == pytest.approx(max(rates) - min(rates))
    assert fam["gap"]["ci95_low"] <= fam["gap"]["value"] <= fam["gap"]["ci95_high"]


def test_generalization_cells_separate_wording_combinations_and_families(tmp_path):
    res = run_suite(
        "generalization",
        "tabletop",
        TABLETOP,
        REACH,
        20,
        1_000_000,
        tmp_path,
        policy=Constant(False),
        context={"pretrained": ["goal"]},
    )
    table = {r["cell"]: r for r in res["table"]}
    assert list(table)[:4] == ["seen", "heldout_wording", "heldout_combos", "heldout_combos_wording"]
    assert table["heldout_wording"]["paired"] and not table["heldout_combos"]["paired"]
    assert (
        table["family=goal"]["axis"] == "family (grounding)"
        and table["family=long"]["axis"] == "family (none)"
    )
    assert "family=reach" not in table


def test_language_dependence_against_a_hand_computed_case():
    y_true = np.array([1, 1, 1, 1, 0], float)
    altered = [
        np.array([0, 1, 1, 1, 0], float),
        np.array([0, 0, 1, 1, 0], float),
        np.array([1, 1, 1, 1, 0], float),
    ]
    # per-episode mean drops: (2/3, 1/3, 0, 0, 0) -> mean 0.2; mean(y_true) 0.8 -> 0.25
    res = language_dependence(y_true, altered)
    assert res["value"] == pytest.approx(0.25)
    assert res["ci95_low"] <= 0.25 <= res["ci95_high"]
    assert language_dependence(np.zeros(5), altered)["value"] is None


@pytest.mark.parametrize(
    "context, message",
    [
        ({"axes": ["sideways"]}, "unknown robustness axis 'sideways'; allowed: camera_shift"),
        (
            {"axes": ["camera_shift"], "strengths": [40]},
            r"camera_shift strength must be an integer in \[-16, 16\], got 40",
        ),
        (
            {"axes": ["zoom"], "strengths": [9.0]},
            r"cell zoom=9: perturb\['zoom'\] must be a number in \[0.5, 2.0\]",
        ),
        ({"axes": ["zoom", "lighting"], "strengths": [1.1]}, "strengths apply to one axis"),
    ],
)
def test_bad_axes_and_strengths_fail_before_any_episode(tmp_path, context, message):
    with pytest.raises(ValueError, match=message):
        _suite("robustness", Constant(False), tmp_path, **context)
    assert not (tmp_path / "robustness").exists()


def test_unknown_suite_names_the_registered_ones(tmp_path):
    with pytest.raises(
        KeyError, match="unknown evaluation suite 'fairness'; registered: generalization, groups"
    ):
        _suite("fairness", Constant(False), tmp_path)


@pytest.mark.slow
def test_results_do_not_depend_on_the_number_of_processes(tmp_path):
    from asyncvla.builder import build_policy, probe_env

    cfg = load_config(
        None, ["env.kwargs.family=reach", "policy.kwargs.image_grid=4", "policy.kwargs.size=nano"]
    )
    torch.manual_seed(0)
    policy = build_policy(cfg, probe_env(cfg))
    save_policy(policy, tmp_path / "ckpt", "tiny_vla")
    cells = [Cell("clean"), Cell("shift", {"perturb": {"camera_shift": 4}}, axis="camera_shift", level=4)]
    args = (cells, "tabletop", REACH, 70, 1_000_000)
    one = run_cells(*args, policy=policy)
    two = run_cells(*args, checkpoint=tmp_path / "ckpt", workers=2)
    assert one == two and len(one["shift"]) == 70


def test_init_shift_crowds_objects_and_moves_the_gripper_to_a_corner_and_fillers_add_words():
    from asyncvla.envs.tabletop.tasks import FILLERS, tokenize

    seeds = list(range(6))
    clean = make_env("tabletop", num_envs=6, family="object", n_objects=[3, 3])
    shifted = make_env(
        "tabletop", num_envs=6, family="object", n_objects=[3, 3], perturb={"init_shift": 1.0, "filler": 2}
    )
    o1, _ = clean.reset(seed=seeds, options={"init_state": seeds})
    o2, _ = shifted.reset(seed=seeds, options={"init_state": seeds})
    for i in range(6):
        a, b = clean.describe(i), shifted.describe(i)
        for p, q in zip(a["objects"], b["objects"], strict=True):
            assert (p["colour"], p["shape"]) == (q["colour"], q["shape"])
            assert q["pos"] == pytest.approx(
                (0.5 + 0.5 * (p["pos"][0] - 0.5), 0.5 + 0.5 * (p["pos"][1] - 0.5))
            )
        assert all(min(abs(v - 0.04), abs(v - 0.96)) < 1e-9 for v in b["gripper"])
        words = tokenize(o2["instruction"][i])
        assert [w for w in words if w not in FILLERS[:2]] == tokenize(o1["instruction"][i])
        assert sorted(w for w in words if w in FILLERS) == sorted(FILLERS[:2])
