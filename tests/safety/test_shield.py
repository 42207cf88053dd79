"""The action shield never passes an unsafe action, changes only what is unsafe and as little as
needed, is idempotent bit for bit, keeps a shielded tabletop gripper in its workspace, and refuses
settings that cannot apply to the env."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from asyncvla.config import ShieldConfig
from asyncvla.envs import make_env
from asyncvla.envs.base import ShieldModel
from asyncvla.envs.episodes import run_episodes
from asyncvla.safety.shield import Shield, ShieldedEnv, ShieldError, make_shield

TABLETOP = make_env("tabletop", num_envs=1, max_step=0.05).shield_model()  # the env's own model
# Scrambled dims, unequal scales, an uneven box, a free dim (2) and a threshold float32 cannot hold.
OTHER = ShieldModel(
    position_state_dims=(2, 0),
    position_action_dims=(3, 1),
    step_scale=(0.13, 0.05),
    action_low=(-0.5, -1.0, -1.0, -0.8),
    action_high=(2.0, 1.0, 1.0, 0.8),
    reachable_low=(-1.0, -1.0),
    reachable_high=(1.0, 1.0),
    gripper_action_dim=0,
    gripper_close_above=0.1,
)
WS = [0.2, 0.2, 0.8, 0.8]


def _state(pos, model=TABLETOP, size=6):
    """float32 [n, size] with the position coordinates at the model's state dims."""
    pos = np.asarray(pos, np.float64).reshape(-1, len(model.position_state_dims))
    s = np.zeros((len(pos), size), np.float32)
    s[:, list(model.position_state_dims)] = pos
    return s


def _bits(x):
    return np.asarray(x, np.float32).view(np.uint32)


@st.composite
def cases(draw):
    model = draw(st.sampled_from([TABLETOP, OTHER]))
    d, a_dim = len(model.position_action_dims), len(model.action_low)
    r_lo, r_hi = model.reachable_low, model.reachable_high
    ws = None
    if draw(st.booleans()):
        lo = [draw(st.floats(r_lo[c], r_hi[c] - 1e-3)) for c in range(d)]
        hi = [draw(st.floats(lo[c] + 1e-3, r_hi[c])) for c in range(d)]
        ws = lo + hi
    cfg = ShieldConfig(
        workspace=ws,
        max_delta=draw(st.one_of(st.none(), st.floats(1e-3, 2.5), st.sampled_from([0.1, 0.5]))),
        close_max_speed=draw(st.one_of(st.none(), st.floats(0.0, 1.2), st.sampled_from([0.0, 0.2]))),
    )
    n, k = draw(st.integers(1, 4)), draw(st.integers(1, 5))
    raw = st.floats(-2.5, 2.5, width=32)
    actions = np.array(draw(st.lists(raw, min_size=n * k * a_dim, max_size=n * k * a_dim)), np.float32)
    # Positions anywhere the env can reach (inside and outside the workspace), its edges included.
    edges = [] if ws is None else ws
    pos = [
        draw(st.one_of(st.floats(r_lo[c % d], r_hi[c % d], width=32), st.sampled_from(edges or [0.0])))
        for c in range(n * d)
    ]
    prev = np.array(draw(st.lists(st.floats(-1.5, 1.5, width=32), min_size=n * a_dim, max_size=n * a_dim)))
    return (
        Shield(cfg, model),
        actions.reshape(n, k, a_dim),
        _state(pos, model, size=4 if model is OTHER else 6),
        prev.astype(np.float32).reshape(n, a_dim),
    )


def _effective(shield, actions):
    """What the env executes: NaN as 0, clipped to the action box."""
    m = shield.model
    return np.clip(np.nan_to_num(actions, nan=0.0), m.action_low, m.action_high).astype(np.float32)


@settings(max_examples=200, deadline=None)
@given(cases())
def test_projected_chunks_break_no_limit_and_pass_again_unchanged(case):
    shield, actions, state, prev = case
    safe, hit = shield.project(actions, state, prev)
    assert safe.dtype == np.float32 and safe.shape == actions.shape and hit.shape == actions.shape[:2]
    assert not shield.violations(safe, state, prev).any()
    again, hit2 = shield.project(safe, state, prev)
    assert np.array_equal(_bits(again), _bits(safe)) and not hit2.any()


@settings(max_examples=200, deadline=None)
@given(cases())
def test_safe_actions_come_back_bit_for_bit_and_changes_are_minimal(case):
    shield, actions, state, prev = case
    safe, hit = shield.project(actions, state, prev)
    eff = _effective(shield, actions)
    # Intervened exactly where the safe action differs from the executed (clipped) one; elsewhere the
    # request is returned as it came, out-of-box values included.
    assert np.array_equal(hit, (_effective(shield, safe) != eff).any(axis=2))
    assert np.array_equal(_bits(safe[~hit]), _bits(actions[~hit]))
    # An action that keeps every limit (with a margin for float rounding), after earlier actions the
    # shield left alone, is left alone too.
    ok = ~shield.violations(actions, state, prev, tol=-1e-6)
    untouched_before = np.cumsum(hit, axis=1) - hit == 0
    assert not hit[ok & untouched_before].any()
    # Minimal: each clearly moved motion coordinate sits on a limit; nudging it back toward the
    # request breaks one (the nearest safe point of a box is on its boundary).
    m = shield.model
    for i, j in zip(*np.nonzero(hit), strict=True):
        for dim in m.position_action_dims:
            gap = float(eff[i, j, dim]) - float(safe[i, j, dim])
            if abs(gap) > 1e-3:
                nudged = safe[i : i + 1, : j + 1].copy()
                nudged[0, j, dim] += np.sign(gap) * 1e-4
                assert shield.violations(nudged, state[i : i + 1], prev[i : i + 1])[0, j], (i, j, dim)


def test_the_nan_entries_are_replaced_and_flagged():
    shield = Shield(ShieldConfig(workspace=WS), TABLETOP)
    a = np.array([[[np.nan, 0.5, -1.0], [0.5, 0.5, -1.0]]], np.float32)
    safe, hit = shield.project(a, _state([0.5, 0.5]), np.zeros((1, 3), np.float32))
    assert hit.tolist() == [[True, False]] and safe[0, 0].tolist() == [0.0, 0.5, -1.0]
    assert shield.violations(a, _state([0.5, 0.5]), np.zeros((1, 3)))[0].tolist() == [True, False]


def _one(cfg, action, pos=(0.5, 0.5), prev=(0.0, 0.0, -1.0)):
    shield = Shield(ShieldConfig(**cfg), TABLETOP)
    safe, hit = shield.project(np.array([[action]], np.float32), _state(pos), np.array([prev], np.float32))
    return safe[0, 0].astype(np.float64), bool(hit[0, 0])


def test_hand_computed_projections():
    # Workspace edge: from x = 0.78 at most (0.8 - 0.78) / 0.05 = 0.4 to the right; y is free.
    a, hit = _one({"workspace": WS}, (1.0, -0.3, -1.0), pos=(0.78, 0.5))
    assert hit and a == pytest.approx([0.4, -0.3, -1.0], abs=1e-5)
    # Exactly onto the wall (0.75 + 1.0 * 0.05 = 0.8) is allowed; clipping a raw 1.7 to 1.0 alone is
    # no intervention and returns the raw value.
    a, hit = _one({"workspace": WS}, (1.0, 0.0, -1.0), pos=(0.75, 0.5))
    assert not hit and a[0] == 1.0
    a, hit = _one({"workspace": WS}, (1.7, 0.0, -1.0), pos=(0.5, 0.5))
    assert not hit and a[0] == np.float32(1.7)
    # Delta limit: from the previous (0.0, 0.2), at most 0.3 of change per dim.
    a, hit = _one({"max_delta": 0.3}, (1.0, -1.0, -1.0), prev=(0.0, 0.2, -1.0))
    assert hit and a[:2] == pytest.approx([0.3, -0.1])
    a, hit = _one({"max_delta": 0.5}, (0.5, -0.3, -1.0))  # on the limit: unchanged
    assert not hit
    # Gripper, closing from open at speed 1.0 with the limit 0.2: slowing down costs 0.8^2 = 0.64,
    # staying open (g -> 0) costs g^2: g = 1 -> 1 > 0.64, slow down; g = 0.3 -> 0.09, stay open.
    a, hit = _one({"close_max_speed": 0.2}, (1.0, -0.1, 1.0))
    assert hit and a == pytest.approx([0.2, -0.1, 1.0])
    a, hit = _one({"close_max_speed": 0.2}, (1.0, -0.1, 0.3))
    assert hit and a.tolist() == pytest.approx([1.0, -0.1, 0.0])
    # A tie (slowing 1.0 -> 0.5 and opening 0.5 -> 0 both cost 0.25) keeps the gripper open.
    a, _ = _one({"close_max_speed": 0.5}, (1.0, 0.0, 0.5))
    assert a.tolist() == [1.0, 0.0, 0.0]
    # Already closed (previous g > 0): no rule while carrying; slow enough: no rule either.
    assert not _one({"close_max_speed": 0.2}, (1.0, 0.0, 1.0), prev=(1.0, 0.0, 1.0))[1]
    assert not _one({"close_max_speed": 0.2}, (0.2, -0.2, 1.0))[1]
    # Slowing down is out of the delta limit's reach (previous motion 1.0, at most 0.5 change, speed
    # 0.2): the gripper stays open however much closing was asked for.
    a, _ = _one({"close_max_speed": 0.2, "max_delta": 0.5}, (1.0, 0.0, 1.0), prev=(1.0, 0.0, -1.0))
    assert a.tolist() == pytest.approx([1.0, 0.0, 0.0])
    # Workspace over delta: moving right at 1.0 next to the wall, the delta limit (0.2) asks for at
    # least 0.8 but the wall allows 0.2: the wall wins (the workspace point nearest the delta range).
    a, hit = _one(
        {"workspace": WS, "max_delta": 0.2}, (1.0, 0.0, -1.0), pos=(0.79, 0.5), prev=(1.0, 0.0, -1.0)
    )
    assert hit and a[0] == pytest.approx(0.2, abs=1e-5)
    # ... and when both can hold, both do: from 0.5 the wall allows 6, the delta limit 0.3 from 0.
    a, _ = _one({"workspace": WS, "max_delta": 0.3}, (1.0, 0.0, -1.0))
    assert a[0] == pytest.approx(0.3)


def test_outside_the_workspace_only_motion_toward_it_is_allowed():
    # Below the workspace in x (0.1 < 0.2): toward it at full speed is fine; away from it stops.
    a, hit = _one({"workspace": WS}, (1.0, -1.0, -1.0), pos=(0.1, 0.5))
    assert not hit and a[:2].tolist() == [1.0, -1.0]
    a, hit = _one({"workspace": WS}, (-1.0, 0.5, -1.0), pos=(0.1, 0.5))
    assert hit and a[:2].tolist() == [0.0, 0.5]
    # Above a narrow workspace in y (0.83 > 0.82): toward it, but not past its far side (0.8):
    # -1 would reach 0.78, so -(0.83 - 0.8) / 0.05 = -0.6.
    a, hit = _one({"workspace": [0.2, 0.8, 0.8, 0.82]}, (0.0, -1.0, -1.0), pos=(0.5, 0.83))
    assert hit and a[1] == pytest.approx(-0.6, abs=1e-5)
    a, hit = _one({"workspace": [0.2, 0.8, 0.8, 0.82]}, (0.0, -0.5, -1.0), pos=(0.5, 0.83))
    assert not hit
    # A chunk from outside comes in and stays in: x 0.15 -> 0.2 -> 0.25 -> 0.3, then 0.02 of room.
    shield = Shield(ShieldConfig(workspace=[0.2, 0.2, 0.32, 0.8]), TABLETOP)
    chunk = np.tile(np.float32([1.0, 0.0, -1.0]), (1, 4, 1))
    safe, hit = shield.project(chunk, _state([0.15, 0.5]), np.zeros((1, 3), np.float32))
    assert safe[0, :, 0] == pytest.approx([1.0, 1.0, 1.0, 0.4], abs=1e-5) and hit[0].tolist() == [
        False
    ] * 3 + [True]


def test_the_chunk_is_checked_one_action_after_another():
    # Positions advance with the safe actions: from 0.7 the wall at 0.8 allows 1.0, 1.0, then 0.
    shield = Shield(ShieldConfig(workspace=WS, max_delta=0.4), TABLETOP)
    chunk = np.float32([[[1.0, 0, -1], [1.0, 0, -1], [1.0, 0, -1], [-1.0, 0, -1]]])
    safe, hit = shield.project(chunk, _state([0.7, 0.5]), np.float32([[0.0, 0, -1]]))
    # The delta limit counts from the previous *safe* action: 0.4 (x 0.72), 0.8 (x 0.76), 0.8 (the
    # wall leaves 0.8 of room; x 0.8); then -1 is out of the delta range [0.4, 1.2] and the wall
    # allows [-1, 0]: the workspace wins with its point nearest the delta range, 0.
    assert safe[0, :, 0] == pytest.approx([0.4, 0.8, 0.8, 0.0], abs=1e-5)
    assert hit[0].tolist() == [True, True, True, True]
    assert not shield.violations(safe, _state([0.7, 0.5]), np.float32([[0.0, 0, -1]])).any()


def test_settings_that_cannot_apply_are_refused():
    env = make_env("tabletop", num_envs=1)
    with pytest.raises(
        ShieldError,
        match=r"^safety\.shield\.workspace: \[0\.5, 0\.5, 1\.2, 0\.9\] lies outside the env's reachable "
        r"positions \[0, 0\]\.\.\[1, 1\]$",
    ):
        make_shield(ShieldConfig(workspace=[0.5, 0.5, 1.2, 0.9]), env)
    with pytest.raises(ShieldError, match=r"^safety\.shield\.workspace: needs 2\*d = 4 numbers .*got 3$"):
        make_shield(ShieldConfig(workspace=[0.1, 0.2, 0.3]), env)
    with pytest.raises(
        ShieldError, match=r"^safety\.shield\.workspace: \[0\.5, 0\.1, 0\.4, 0\.9\] needs lo < hi"
    ):
        make_shield(ShieldConfig(workspace=[0.5, 0.1, 0.4, 0.9]), env)
    with pytest.raises(ShieldError, match=r"needs lo < hi"):
        make_shield(ShieldConfig(workspace=[0.5, 0.1, 0.5, 0.9]), env)
    no_gripper = ShieldModel((0, 1), (0, 1), (0.1, 0.1), (-1, -1), (1, 1), (0, 0), (1, 1))
    with pytest.raises(ShieldError, match=r"^safety\.shield\.close_max_speed: .* no gripper dimension$"):
        Shield(ShieldConfig(close_max_speed=0.1), no_gripper)
    Shield(ShieldConfig(max_delta=0.1, workspace=WS), no_gripper)  # the other limits need no gripper
    with pytest.raises(ShieldError, match=r"^safety\.shield\.max_delta: must be > 0"):
        Shield(ShieldConfig.model_construct(workspace=None, max_delta=0.0, close_max_speed=None), TABLETOP)
    with pytest.raises(ShieldError, match=r"^safety\.shield\.close_max_speed: must be >= 0"):
        Shield(ShieldConfig.model_construct(workspace=None, max_delta=None, close_max_speed=-1.0), TABLETOP)
    assert make_shield(ShieldConfig(), env) is None
    assert isinstance(make_shield(ShieldConfig(max_delta=0.5), env), Shield)

    class Bare:
        def shield_model(self):
            return None

    with pytest.raises(ShieldError, match=r"^safety\.shield: env Bare has no shield model"):
        make_shield(ShieldConfig(max_delta=0.1), Bare())


def _outside(xy, lo=0.2, hi=0.8):
    """Per-coordinate distance to the workspace [n, 2] (0 inside)."""
    return np.maximum(np.maximum(lo - xy, xy - hi), 0.0)


def test_shielded_tabletop_keeps_the_gripper_in_the_workspace_and_counts():
    # 46 steps: episodes end inside a chunk; finished envs wait a step before their reset (steps 0).
    base = make_env("tabletop", num_envs=8, family="object", max_step=0.05, max_episode_steps=46)
    shield = make_shield(ShieldConfig(workspace=WS, max_delta=0.6, close_max_speed=0.3), base)
    env = ShieldedEnv(base, shield)
    with pytest.raises(RuntimeError, match="before reset"):
        env.step(np.zeros((8, 4, 3), np.float32))
    assert (
        env.single_action_space == base.single_action_space
        and env.max_episode_steps == base.max_episode_steps
    )
    assert env.vocabulary() == base.vocabulary() and env.shield_model() == base.shield_model()
    rng = np.random.default_rng(0)
    obs, _ = env.reset(seed=0)
    entered = (_outside(obs["state"][:, :2]) == 0).all(axis=1)
    assert not entered.all() and entered.any()  # some grippers start outside the workspace
    total = resets = 0
    pending = np.zeros(0, dtype=np.int64)
    partial = idle = False
    for t in range(50):
        state, prev = obs["state"].copy(), env.prev_actions
        raw = rng.uniform(-1.5, 1.5, (8, 4, 3)).astype(np.float32)
        assert env.expert_actions().shape == (8, 3)  # passed through to the tabletop env
        obs, _, term, trunc, info = env.step(raw)
        steps = info["steps"]
        # The executed chunk is the projection of the raw one; its changed actions are counted.
        safe, hit = shield.project(raw, state, prev)
        assert np.array_equal(info["executed_actions"], safe)
        assert not shield.violations(safe, state, prev).any()
        ran = np.arange(4)[None] < steps[:, None]
        assert np.array_equal(info["shield_interventions"], (hit & ran).sum(axis=1))
        assert info["shield_interventions"].dtype == np.int32
        total += int(info["shield_interventions"].sum())
        # The previous action is the last executed one.
        moved = steps > 0
        assert np.array_equal(env.prev_actions[moved], np.clip(safe[moved, steps[moved] - 1], -1, 1))
        assert np.array_equal(env.prev_actions[~moved], prev[~moved])
        # The distance to the workspace never grows; once inside, the gripper stays inside.
        now = _outside(obs["state"][:, :2])
        live = steps > 0
        assert (now[live] <= _outside(state[:, :2])[live] + 1e-6).all()
        assert (now[entered & live] <= 1e-6).all()
        entered |= (now <= 1e-6).all(axis=1)
        done, pending = pending, np.flatnonzero(term | trunc)
        if t == 20:
            done = np.union1d(done, [0, 3])
        if done.size:
            keep = env.prev_actions
            obs, _ = env.reset(options={"env_indices": done.tolist()})
            resets += done.size
            assert not env.prev_actions[done].any()  # a new episode starts open and still
            others = np.setdiff1d(np.arange(8), done)
            assert np.array_equal(env.prev_actions[others], keep[others])
            entered[done] = (_outside(obs["state"][done, :2]) == 0).all(axis=1)
        partial |= bool(((steps > 0) & (steps < 4)).any())
        idle |= bool((steps == 0).any())
    assert total > 0 and resets > 8 and partial and idle


def test_a_delta_limit_the_expert_respects_keeps_its_success():
    # The expert starts from rest and changes each motion dim by at most 1.0 per step.
    base = make_env("tabletop", num_envs=8, family="object", max_step=0.05)
    gentle = ShieldedEnv(base, make_shield(ShieldConfig(max_delta=1.0), base))
    eps = run_episodes(gentle, 8, 1_000_000, lambda o: base.expert_action_chunk(4))
    assert np.mean([e.success for e in eps]) == 1.0
