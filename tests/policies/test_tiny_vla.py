"""TinyVLA, its heads and its tokenizer, on fake numpy observation batches (no env needed)."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import numpy as np
import pytest
import torch

from asyncvla.policies import load_policy, make_policy, save_policy
from asyncvla.policies.tiny_vla import TinyVLA
from asyncvla.policies.tokenizer import PAD_ID, UNK_ID, WordTokenizer

VOCAB = "pick up the red green blue cube sphere and place it in basket bowl".split()
HEADS = ["tokens", "gaussian"]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def fake_obs(
    batch: int, seed: int = 0, image_size: int = 32, state_dim: int = 4, wrist: bool = False
) -> dict:
    """Random images / states and instructions of varying lengths (so padding is exercised)."""
    rng = np.random.default_rng(seed)
    obs = {
        "image": rng.integers(0, 256, (batch, image_size, image_size, 3), dtype=np.uint8),
        "state": rng.standard_normal((batch, state_dim)).astype(np.float32),
        "instruction": [" ".join(rng.choice(VOCAB, rng.integers(3, 12))) for _ in range(batch)],
    }
    if wrist:
        obs["wrist_image"] = rng.integers(0, 256, (batch, image_size, image_size, 3), dtype=np.uint8)
    return obs


def small_policy(head: str, **kwargs) -> TinyVLA:
    torch.manual_seed(0)
    return make_policy("tiny_vla", vocabulary=VOCAB, image_size=32, head=head, **kwargs)


def behaviour_clone(
    policy: TinyVLA,
    obs: dict,
    targets: np.ndarray,
    steps: int,
    lr: float = 3e-3,
    done: Callable[[], bool] | None = None,
) -> list[float]:
    """Minimise -log pi(targets | obs) with Adam; return the NLL per step. ``done``, when given, is
    asked every 10 steps and ends the fit as soon as it holds."""
    opt = torch.optim.Adam(policy.parameters(), lr=lr)
    losses = []
    for step in range(1, steps + 1):
        nll = -policy.evaluate(obs, targets).log_probs.mean()
        opt.zero_grad()
        nll.backward()
        opt.step()
        losses.append(nll.item())
        if done is not None and step % 10 == 0 and done():
            break
    return losses


# ----------------------------------------------------------------------------- tokenizer


def test_tokenizer_ids_unknown_words_punctuation_and_padding() -> None:
    tok = WordTokenizer(["pick", "up", "the", "red", "cube", "red"], max_len=6)
    assert tok.vocab_size == 2 + 5  # <pad>, <unk>, then the deduplicated words
    ids = tok.encode_batch(["Pick up the BLUE cube!", "red,cube"])
    assert ids.dtype == torch.long and ids.shape == (2, 6)
    assert ids[0].tolist() == [2, 3, 4, UNK_ID, 6, PAD_ID]
    assert ids[1].tolist() == [5, 6, PAD_ID, PAD_ID, PAD_ID, PAD_ID]
    # Truncation to max_len, and the cached path gives the same answer as the first call.
    long = "the " * 10
    assert tok.encode_batch([long, long]).tolist() == [[4] * 6, [4] * 6]
    assert tok.encode_batch([]).shape == (0, 6)


# ----------------------------------------------------------------------------- act / evaluate


@pytest.mark.parametrize("head", HEADS)
def test_shapes_dtypes_and_version(head: str) -> None:
    policy = small_policy(head, chunk_size=5, action_dim=2)
    policy.version = 3
    obs = fake_obs(6)
    out = policy.act(obs)
    assert out.actions.shape == (6, 5, 2) and out.log_probs.shape == (6, 5, 2) and out.values.shape == (6,)
    assert out.actions.dtype == out.log_probs.dtype == out.values.dtype == np.float32
    assert out.version == 3
    ev = policy.evaluate(obs, out.actions)
    assert ev.log_probs.shape == ev.entropy.shape == (6, 5, 2) and ev.values.shape == (6,)
    assert ev.log_probs.requires_grad and ev.values.requires_grad
    with pytest.raises(ValueError, match="actions"):
        policy.evaluate(obs, out.actions[:, :4])


@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_act_and_evaluate_log_probs_agree(head: str, mode: str) -> None:
    policy = small_policy(head)
    getattr(policy, mode)()
    obs = fake_obs(16, seed=1)
    out = policy.act(obs)
    ev = policy.evaluate(obs, out.actions)
    np.testing.assert_allclose(ev.log_probs.detach().numpy(), out.log_probs, atol=1e-5, rtol=0)
    np.testing.assert_allclose(ev.values.detach().numpy(), out.values, atol=1e-5, rtol=0)
    # Torch inputs are accepted too.
    torch_obs = {**obs, "image": torch.from_numpy(obs["image"]), "state": torch.from_numpy(obs["state"])}
    ev_t = policy.evaluate(torch_obs, torch.from_numpy(out.actions))
    np.testing.assert_allclose(ev_t.log_probs.detach().numpy(), out.log_probs, atol=1e-5, rtol=0)


@pytest.mark.parametrize("head", HEADS)
def test_padding_does_not_change_outputs(head: str) -> None:
    """An observation gives the same outputs alone and batched with a longer instruction."""
    policy = small_policy(head)
    obs = fake_obs(2, seed=2)
    obs["instruction"] = ["pick up the cube", "pick up the red cube and place it in the green basket"]
    actions = policy.act(obs).actions
    both = policy.evaluate(obs, actions)
    alone = policy.evaluate({k: v[:1] for k, v in obs.items()}, actions[:1])
    torch.testing.assert_close(both.log_probs[:1], alone.log_probs, atol=1e-5, rtol=0)
    torch.testing.assert_close(both.values[:1], alone.values, atol=1e-5, rtol=0)


@pytest.mark.parametrize("head", HEADS)
def test_deterministic_act_is_deterministic_and_sampling_is_not(head: str) -> None:
    policy = small_policy(head)
    obs = fake_obs(8, seed=3)
    a, b = policy.act(obs, deterministic=True), policy.act(obs, deterministic=True)
    np.testing.assert_array_equal(a.actions, b.actions)
    np.testing.assert_array_equal(a.log_probs, b.log_probs)
    assert not np.array_equal(policy.act(obs).actions, policy.act(obs).actions)


def test_token_actions_are_bin_centers_inside_bounds() -> None:
    low, high, n_bins = [-1.0, -0.5, 0.0], [1.0, 0.5, 2.0], 8
    policy = small_policy("tokens", action_low=low, action_high=high, n_bins=n_bins)
    actions = policy.act(fake_obs(32, seed=4)).actions
    lo, hi = np.array(low, dtype=np.float32), np.array(high, dtype=np.float32)
    assert (actions >= lo).all() and (actions <= hi).all()
    pos = (actions - lo) / ((hi - lo) / n_bins) - 0.5
    np.testing.assert_allclose(pos, np.round(pos), atol=1e-4)
    # Every bin center maps back to its own bin; out-of-range values go to the end bins.
    ids = torch.arange(n_bins).view(1, n_bins, 1).expand(1, n_bins, 3)
    assert torch.equal(policy.head.to_bins(policy.head.bin_centers(ids)), ids)
    outside = torch.tensor([[[-5.0, -5.0, -5.0], [5.0, 5.0, 5.0]]])
    assert policy.head.to_bins(outside).tolist() == [[[0, 0, 0], [n_bins - 1] * 3]]


def test_initial_distributions_are_broad_and_values_small() -> None:
    tokens, gaussian = small_policy("tokens"), small_policy("gaussian", init_log_std=-1.0)
    obs = fake_obs(8, seed=5)
    ent = tokens.evaluate(obs, tokens.act(obs).actions).entropy
    assert ent.min().item() > 0.9 * np.log(256)  # near-uniform over the 256 bins...
    assert ent.std().item() > 0  # ...but input-dependent
    out = gaussian.act(obs, deterministic=True)
    assert np.abs(out.actions).max() < 0.1 and np.abs(out.values).max() < 0.1
    ent_g = gaussian.evaluate(obs, out.actions).entropy
    torch.testing.assert_close(ent_g, torch.full_like(ent_g, 0.5 + 0.5 * np.log(2 * np.pi) - 1.0))


def test_multiple_cameras_and_image_resizing() -> None:
    policy = small_policy("tokens", image_keys=["image", "wrist_image"])
    obs = fake_obs(4, seed=6, image_size=48, wrist=True)  # resized to 32x32 inside the policy
    out = policy.act(obs, deterministic=True)
    assert out.actions.shape == (4, 4, 3)
    # The wrist camera is used: changing only its pixels changes the outputs.
    obs2 = {**obs, "wrist_image": 255 - obs["wrist_image"]}
    assert not np.allclose(policy.act(obs2, deterministic=True).log_probs, out.log_probs)
    with pytest.raises(KeyError, match="wrist_image"):
        policy.act({k: v for k, v in obs.items() if k != "wrist_image"})


def test_fine_keypoints_map_resolution_and_sub_cell_offsets() -> None:
    policy = make_policy("tiny_vla", vocabulary=VOCAB, image_size=64)
    coarse = make_policy("tiny_vla", vocabulary=VOCAB, image_size=64, fine_keypoints=False)
    assert policy.kp_side == 16 and coarse.kp_side == 8 and coarse.kp_offset is None
    obs = fake_obs(3, seed=2, image_size=64)
    with torch.no_grad():
        centre = policy.point(obs)  # offsets start at zero: the attention-weighted cell centres
        assert centre.shape == (3, 8, 2) and ((centre > 0) & (centre < 1)).all()
        # Saturated offsets move every keypoint by exactly half a cell (0.5 / 16) on both axes.
        policy.kp_offset.bias.fill_(50.0)
        shifted = policy.point(obs)
    torch.testing.assert_close(shifted - centre, torch.full_like(centre, 0.5 / 16))
    assert coarse.point(obs).shape == (3, 8, 2)


def test_ee_xy_dims_add_keypoints_relative_to_the_end_effector() -> None:
    torch.manual_seed(0)
    policy = make_policy("tiny_vla", vocabulary=VOCAB, image_size=32, ee_xy_dims=[2, 0], head="gaussian")
    obs = fake_obs(3, seed=4)
    with torch.no_grad():
        feats, points = policy.features(obs), policy.point(obs)
    w, n_kp = policy.width, policy.n_keypoints
    start = 3 * w + 2 * n_kp  # after [CLS, mean image token, keypoint features, keypoints]
    state = torch.as_tensor(obs["state"])
    ee = torch.stack([state[:, 2], state[:, 0]], dim=-1)  # (x, y) from state entries 2 and 0
    # slope 10 at 0, saturating at +-2: 2 * tanh(10 * d / 2)
    expected = (2.0 * torch.tanh(5.0 * (points - ee[:, None]))).flatten(1)
    rel = feats[:, start : start + 2 * n_kp]
    torch.testing.assert_close(rel, expected)
    assert 1.0 < rel.abs().max() <= 2.0  # some offsets are far: the bound is reached, never passed
    torch.testing.assert_close(feats[:, start + 2 * n_kp :], state)
    assert policy.action_from == 2 * w  # the action head reads every feature from kp_feat on


def test_ee_keypoint_geometry_is_unchanged_when_the_whole_picture_shifts() -> None:
    """With ``ee_keypoint`` the head reads keypoints relative to the gripper keypoint: moving every
    keypoint by the same t (a camera shift seen by a shift-equivariant encoder) changes none of the
    action head's inputs. With ``ee_xy_dims`` (gripper from the state) the same move does."""
    obs = fake_obs(3, seed=6)
    t = torch.tensor([0.0625, -0.03])
    outputs = {}
    for name, kwargs in (("image", {"ee_keypoint": 2}), ("state", {"ee_xy_dims": [0, 1]})):
        policy = small_policy("gaussian", freeze_encoder=True, **kwargs)
        with torch.no_grad():
            cached = policy.frozen_features(obs)
            moved = {**cached, "points": cached["points"] + t}
            feats, points, _ = policy._encode(obs, cached)
            feats_moved = policy._encode(obs, moved)[0]
            outputs[name] = (policy, feats, feats_moved, points)
    policy, feats, feats_moved, points = outputs["image"]
    w, n_kp = policy.width, policy.n_keypoints
    # [CLS, mean image token, keypoint features, relative keypoints, state]: no absolute keypoints.
    assert feats.shape == (3, 3 * w + 2 * n_kp + 4)
    expected = (2.0 * torch.tanh(5.0 * (points - points[:, 2:3]))).flatten(1)
    torch.testing.assert_close(feats[:, 3 * w : 3 * w + 2 * n_kp], expected)
    assert expected.abs().max() > 0.1 and not expected[:, 4:6].any()  # keypoint 2 is the origin
    torch.testing.assert_close(feats_moved[:, policy.action_from :], feats[:, policy.action_from :])
    policy, feats, feats_moved, _ = outputs["state"]
    assert not torch.allclose(feats_moved[:, policy.action_from :], feats[:, policy.action_from :])


def test_ee_keypoint_keeps_the_other_cameras_absolute_keypoints() -> None:
    policy = small_policy("gaussian", image_keys=["image", "wrist_image"], ee_keypoint=0, n_keypoints=3)
    with torch.no_grad():
        feats = policy.features(fake_obs(2, wrist=True))
    # + 3 absolute wrist keypoints + 3 relative main-camera keypoints + state
    assert feats.shape == (2, 3 * policy.width + 2 * 3 + 2 * 3 + 4)


# ----------------------------------------------------------------------------- checkpoints


def test_fusion_grid_pools_only_the_transformer_tokens() -> None:
    obs = fake_obs(3, seed=5, image_size=64)
    base = make_policy("tiny_vla", vocabulary=VOCAB, image_size=64, head="gaussian")
    pooled = make_policy("tiny_vla", vocabulary=VOCAB, image_size=64, head="gaussian", fusion_grid=4)
    assert base.patch_pos.shape[0] == 64 and pooled.patch_pos.shape[0] == 16
    # Same encoder weights -> the same keypoints: the pooling only touches the transformer's input.
    state = {k: v for k, v in base.state_dict().items() if k != "patch_pos"}
    pooled.load_state_dict({**pooled.state_dict(), **state})
    with torch.no_grad():
        torch.testing.assert_close(pooled.point(obs), base.point(obs), rtol=0, atol=0)
        # ... and the image tokens it reads are 2x2 means of the 8x8 CNN map.
        fmap = base._ground(obs)[4]
        means = fmap.unfold(2, 2, 2).unfold(3, 2, 2).mean((-1, -2))
        torch.testing.assert_close(pooled.fusion_pool(fmap), means)
        assert pooled.features(obs).shape == base.features(obs).shape
    # A fusion_grid at or above the map's side changes nothing.
    assert make_policy("tiny_vla", vocabulary=VOCAB, image_size=64, fusion_grid=8).patch_pos.shape[0] == 64


def test_n_keypoints_sets_how_many_points_the_head_reads() -> None:
    policy = small_policy("gaussian", n_keypoints=3, ee_xy_dims=[0, 1])
    obs = fake_obs(2)
    with torch.no_grad():
        assert policy.point(obs).shape == (2, 3, 2)
        # [CLS, mean image token, keypoint features] + 3 absolute + 3 relative keypoints + state
        assert policy.features(obs).shape == (2, 3 * policy.width + 2 * 3 + 2 * 3 + 4)


@pytest.mark.parametrize("head", HEADS)
def test_save_load_round_trip(head: str, tmp_path) -> None:
    policy = small_policy(head, action_low=[-1.0, -2.0, 0.0], action_high=[1.0, 2.0, 1.0])
    # Move the weights off their init so the check covers trained parameters (incl. log_std).
    behaviour_clone(policy, fake_obs(4, seed=7), np.zeros((4, 4, 3), np.float32), steps=3)
    policy.version = 7
    save_policy(policy, tmp_path / "ckpt", "tiny_vla")
    loaded = load_policy(tmp_path / "ckpt")
    assert isinstance(loaded, TinyVLA) and loaded.version == 7
    assert loaded.init_kwargs() == policy.init_kwargs()
    obs = fake_obs(8, seed=8)
    a, b = policy.act(obs, deterministic=True), loaded.act(obs, deterministic=True)
    np.testing.assert_array_equal(a.actions, b.actions)
    np.testing.assert_array_equal(a.values, b.values)
    assert b.version == 7
    torch.testing.assert_close(
        policy.evaluate(obs, a.actions).log_probs, loaded.evaluate(obs, a.actions).log_probs, atol=0, rtol=0
    )


def test_param_count_presets() -> None:
    counts = {}
    for size in ["nano", "tiny", "small", "base"]:
        policy = make_policy("tiny_vla", vocabulary=VOCAB, size=size)
        counts[size] = sum(p.numel() for p in policy.parameters())
    assert counts["nano"] <= 0.5e6
    assert 1e6 <= counts["tiny"] <= 2e6
    assert 8e6 <= counts["small"] <= 12e6
    assert 40e6 <= counts["base"] <= 60e6
    # The preset overrides width: an explicit width is ignored when size is given.
    assert (
        sum(p.numel() for p in make_policy("tiny_vla", vocabulary=VOCAB, size="nano", width=256).parameters())
        == (counts["nano"])
    )


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"head": "beta"}, "head"),
        ({"size": "huge"}, "size"),
        ({"width": 30, "n_heads": 4}, "width"),
        ({"chunk_size": 0}, "chunk_size"),
        ({"n_bins": 1}, "n_bins"),
        ({"action_low": [0.0, 0.0]}, "action_low"),
        ({"action_low": 1.0, "action_high": 1.0}, "action_low"),
        ({"image_keys": []}, "image_keys"),
        ({"vocabulary": "pick up"}, "vocabulary"),
        ({"ee_xy_dims": [0, 4]}, "ee_xy_dims"),
        ({"ee_xy_dims": [0]}, "ee_xy_dims"),
        ({"ee_keypoint": 8}, "ee_keypoint"),
        ({"ee_keypoint": -1}, "ee_keypoint"),
        ({"ee_keypoint": True}, "ee_keypoint"),
        ({"ee_keypoint": 2, "n_keypoints": 2}, r"ee_keypoint .*\[0, 2\)"),
        ({"ee_keypoint": 0, "ee_xy_dims": [0, 1]}, "ee_keypoint and ee_xy_dims are exclusive"),
        ({"n_keypoints": 0}, "n_keypoints"),
        ({"fusion_grid": 0}, "fusion_grid"),
    ],
)
def test_invalid_arguments_name_the_argument(kwargs: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        TinyVLA(**{"vocabulary": VOCAB, **kwargs})


# ----------------------------------------------------------------------------- learning


@pytest.mark.parametrize("head", HEADS)
def test_behaviour_cloning_overfits_eight_pairs(head: str) -> None:
    policy = small_policy(head)
    obs = fake_obs(8, seed=9)
    rng = np.random.default_rng(9)
    targets_ids = rng.integers(0, 256, (8, 4, 3))
    targets = (-1.0 + (targets_ids + 0.5) * (2.0 / 256)).astype(np.float32)  # bin centers
    losses = behaviour_clone(policy, obs, targets, steps=50)  # both heads pass by step 40
    assert losses[-1] < 0.3 * losses[0], losses[::10]
    predicted = policy.act(obs, deterministic=True).actions
    if head == "tokens":
        assert (np.abs(predicted - targets) < 1e-5).mean() > 0.8
    else:
        assert np.abs(predicted - targets).mean() < 0.1


@pytest.mark.parametrize("head", [pytest.param("tokens", marks=pytest.mark.slow), "gaussian"])
def test_instruction_conditioning_is_learned(head: str) -> None:
    """Same image and state, two instructions, opposite targets: fitting both needs the language path.

    The tokens head can stall at the saddle where both instructions get the 50/50 mixture (NLL
    ln 2 per token) before the keypoints separate them, depending on the initialization: the
    path must be learned within 200 steps from at least 3 of 4 initializations (a fit stops once
    it is learned, the loop once 3 are).
    """
    one = fake_obs(1, seed=10)
    obs = {
        "image": np.repeat(one["image"], 2, axis=0),
        "state": np.repeat(one["state"], 2, axis=0),
        "instruction": ["pick up the red cube", "pick up the blue cube"],
    }
    targets = np.stack([np.full((4, 3), 0.5), np.full((4, 3), -0.5)]).astype(np.float32)
    targets = (-1.0 + (np.floor((targets + 1.0) / (2.0 / 256)) + 0.5) * (2.0 / 256)).astype(np.float32)

    def fits(policy: TinyVLA) -> bool:
        return bool(np.abs(policy.act(obs, deterministic=True).actions - targets).max() < 0.05)

    learned = 0
    for seed in range(4):
        torch.manual_seed(seed)
        policy = make_policy("tiny_vla", vocabulary=VOCAB, image_size=32, head=head)
        behaviour_clone(policy, obs, targets, steps=200, done=partial(fits, policy))
        learned += fits(policy)
        if learned == 3:
            break
    assert learned >= 3, learned
