"""The action shield never passes an unsafe action, changes nothing that is safe, is idempotent,
and refuses settings that cannot apply to the env."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from asyncvla.config import ShieldConfig
from asyncvla.envs import make_env
from asyncvla.envs.episodes import run_episodes
from asyncvla.envs.base import ShieldModel
from asyncvla.safety.shield import Shield, ShieldedEnv, ShieldError, make_shield

TABLETOP = ShieldModel(
    position_state_dims=(0, 1),
    position_action_dims=(0, 1),
    step_scale=(0.05, 0.05),
    action_low=(-1.0, -1.0, -1.0),
    action_high=(1.0, 1.0, 1.0),
    reachable_low=(0.0, 0.0),
    reachable_high=(1.0, 1.0),
    gripper_action_dim=2,
)
WS = [0.2, 0.2, 0.8, 0.8]


@st.composite
def cases(draw):
    cfg = ShieldConfig(
        workspace=draw(st.sampled_from([None, WS, [0.1, 0.3, 0.5, 0.9]])),
        max_delta=draw(st.sampled_from([None, 0.1, 0.5, 1.5])),
        close_max_speed=draw(st.sampled_from([None, 0.0, 0.2, 0.6])),
    )
    n, k = draw(st.integers(1, 4)), draw(st.integers(1, 5))
    floats = st.floats(-1.5, 1.5, allow_nan=False, width=32)
    actions = np.array(draw(st.lists(floats, min_size=n * k * 3, max_size=n * k * 3)), np.float32)
    state = np.array(draw(st.lists(st.floats(0.0, 1.0, width=32), min_size=n * 2, max_size=n * 2)), np.float32)
    prev = np.array(draw(st.lists(floats, min_size=n * 3, max_size=n * 3)), np.float32)
    return cfg, actions.reshape(n, k, 3), np.c_[state.reshape(n, 2), np.zeros((n, 4), np.float32)], prev.reshape(n, 3)


@settings(max_examples=300, deadline=None)
@given(cases())
def test_the_shield_never_passes_an_unsafe_action_and_is_idempotent(case):
    cfg, actions, state, prev = case
    if not cfg.enabled:
        return
    shield = Shield(cfg, TABLETOP)
    safe, hit = shield.project(actions, state, prev)
    assert not shield.violations(safe, state, prev).any()
    again, hit2 = shield.project(safe, state, prev)
    assert np.array_equal(again, safe) and not hit2.any()
    # Chunks that were safe already come back bit for bit (raw values outside the box included).
    ok = ~shield.violations(actions, state, prev, tol=0.0).any(axis=1)
    assert np.array_equal(safe[ok], actions[ok]) and not hit[ok].any()
    assert (hit.any(axis=1) == ~np.all(safe == actions, axis=(1, 2))).all()


def _one(cfg, action, pos=(0.5, 0.5), prev=(0.0, 0.0, -1.0)):
    shield = Shield(ShieldConfig(**cfg), TABLETOP)
    state = np.array([[*pos, 0, 0, 0, 0]], np.float32)
    safe, hit = shield.project(np.array([[action]], np.float32), state, np.array([prev], np.float32))
    return safe[0, 0], bool(hit[0, 0])


def test_hand_computed_projections():
    # Workspace edge: from x = 0.75 a step of at most (0.8 - 0.75) / 0.05 = 1.0 ... and from 0.78: 0.4.
    a, hit = _one({"workspace": WS}, (1.0, 0.0, -1.0), pos=(0.78, 0.5))
    assert hit and a[0] == pytest.approx(0.4, abs=1e-5) and a[1] == 0.0
    # Delta limit: from the previous 0.0, at most 0.3 per step.
    a, hit = _one({"max_delta": 0.3}, (1.0, -1.0, -1.0))
    assert hit and a[:2] == pytest.approx([0.3, -0.3])
    # Gripper: closing at speed 1.0 with limit 0.2 -> slowing costs 0.8^2 = 0.64, staying open
    # (g 1 -> 0) costs 1: slow down. With g = 0.3 staying open costs 0.09: stay open.
    a, _ = _one({"close_max_speed": 0.2}, (1.0, 0.0, 1.0))
    assert a == pytest.approx([0.2, 0.0, 1.0])
    a, _ = _one({"close_max_speed": 0.2}, (1.0, 0.0, 0.3))
    assert a == pytest.approx([1.0, 0.0, 0.0])
    # Already closed (previous g > 0): no rule applies while carrying.
    a, hit = _one({"close_max_speed": 0.2}, (1.0, 0.0, 1.0), prev=(1.0, 0.0, 1.0))
    assert not hit
    # Workspace over delta: moving right at 1.0 next to the wall, the delta limit (0.2) asks >= 0.8
    # but the wall allows 0.2: the wall wins.
    a, hit = _one({"workspace": WS, "max_delta": 0.2}, (1.0, 0.0, -1.0), pos=(0.79, 0.5), prev=(1.0, 0.0, -1.0))
    assert hit and a[0] == pytest.approx(0.2, abs=1e-5)
    # Outside the workspace: toward it is allowed, away from it is not.
    a, hit = _one({"workspace": WS}, (1.0, -1.0, -1.0), pos=(0.1, 0.5))
    assert a[0] == 1.0 and a[1] == -1.0 and not hit
    a, hit = _one({"workspace": WS}, (-1.0, 0.0, -1.0), pos=(0.1, 0.5))
    assert hit and a[0] == 0.0


def test_settings_that_cannot_apply_are_refused():
    env = make_env("tabletop", num_envs=1)
    with pytest.raises(ShieldError, match=r"^safety.shield.workspace: \[0.5, 0.5, 1.2, 0.9\] lies outside"):
        make_shield(ShieldConfig(workspace=[0.5, 0.5, 1.2, 0.9]), env)
    with pytest.raises(ShieldError, match=r"needs 2\*2 = 4 numbers"):
        make_shield(ShieldConfig(workspace=[0.1, 0.2, 0.3]), env)
    with pytest.raises(ShieldError, match=r"needs lo < hi"):
        make_shield(ShieldConfig(workspace=[0.5, 0.1, 0.4, 0.9]), env)
    no_gripper = ShieldModel((0, 1), (0, 1), (0.1, 0.1), (-1, -1), (1, 1), (0, 0), (1, 1))
    with pytest.raises(ShieldError, match=r"^safety.shield.close_max_speed: .* no gripper"):
        Shield(ShieldConfig(close_max_speed=0.1), no_gripper)
    assert make_shield(ShieldConfig(), env) is None

    class Bare:
        def shield_model(self):
            return None

    with pytest.raises(ShieldError, match=r"^safety.shield: env Bare has no shield model"):
        make_shield(ShieldConfig(max_delta=0.1), Bare())


def test_shielded_tabletop_keeps_the_gripper_in_the_workspace_and_counts():
    base = make_env("tabletop", num_envs=8, family="object", max_step=0.05)
    env = ShieldedEnv(base, make_shield(ShieldConfig(workspace=WS, max_delta=0.5), base))
    rng = np.random.default_rng(0)
    obs, _ = env.reset(seed=0)
    start = obs["state"][:, :2]
    entered = ((start >= 0.2) & (start <= 0.8)).all(axis=1)
    total = 0
    for _ in range(40):
        obs, _, term, trunc, info = env.step(rng.uniform(-1.5, 1.5, (8, 4, 3)).astype(np.float32))
        total += int(info["shield_interventions"].sum())
        xy = obs["state"][:, :2]
        inside = ((xy >= 0.2 - 1e-6) & (xy <= 0.8 + 1e-6)).all(axis=1)
        assert inside[entered & ~(term | trunc)].all()  # once inside, never out again
        entered |= inside
        done = np.flatnonzero(term | trunc)
        if done.size:
            obs, _ = env.reset(options={"env_indices": done.tolist()})
            assert not env.prev_actions[done].any()  # a new episode starts open and still
            entered[done] = ((obs["state"][done, :2] >= 0.2) & (obs["state"][done, :2] <= 0.8)).all(axis=1)
    assert total > 0
    # A delta limit the expert's moves respect (it starts from rest at most 0.5 faster per step)
    # keeps its success; episodes run through the wrapper like through the env.
    gentle = ShieldedEnv(base, make_shield(ShieldConfig(max_delta=1.0), base))
    eps = run_episodes(gentle, 16, 1_000_000, lambda o: base.expert_action_chunk(4))
    assert np.mean([e.success for e in eps]) == 1.0
