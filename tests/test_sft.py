import types

import numpy as np
import pytest
import torch

from asyncvla.builder import build_policy, probe_env
from asyncvla.config import load_config
from asyncvla.sft import behaviour_clone, collect_demos, pretrain_grounding

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _policy(*overrides):
    cfg = load_config(None, ["env.kwargs.family=reach", "policy.kwargs.image_grid=4", *overrides])
    torch.manual_seed(0)
    return cfg, build_policy(cfg, probe_env(cfg))


def test_collect_demos_pairs_each_observation_with_the_expert_chunk():
    obs, actions, success = collect_demos("tabletop", {"family": "object"}, 6, 4, seed_offset=123)
    assert success == 1.0
    assert actions.shape[1:] == (4, 3) and len(obs["instruction"]) == len(actions) == len(obs["image"])
    again, actions2, _ = collect_demos("tabletop", {"family": "object"}, 6, 4, seed_offset=123)
    assert np.array_equal(obs["image"], again["image"]) and np.array_equal(actions, actions2)
    _, points, _ = collect_demos("tabletop", {"family": "object"}, 6, 4, seed_offset=123, with_points=True)
    assert points.shape == (len(actions), 3, 2) and ((points >= 0) & (points <= 1)).all()
    # The third label is the gripper, at the state's (x, y) (image = table coordinates unperturbed).
    np.testing.assert_array_equal(points[:, 2], obs["state"][:, :2])


@pytest.mark.slow
def test_behaviour_cloning_lowers_the_expert_nll():
    _, policy = _policy()
    obs, actions, _ = collect_demos("tabletop", {"family": "reach"}, 8, 4, seed_offset=0)
    losses = behaviour_clone(policy, obs, actions, steps=60, batch_size=32, lr=1e-3)
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5])


@pytest.mark.slow
def test_grounding_pretraining_fits_the_pointing_labels():
    _, policy = _policy()
    obs, points, _ = collect_demos("tabletop", {"family": "reach"}, 60, 4, seed_offset=0, with_points=True)
    losses = pretrain_grounding(policy, obs, points, epochs=25, batch_size=32, lr=1e-3)
    # Chance level is the spread of the labels; fitting them needs the image and the instruction.
    assert losses[-1] < 0.7 * losses[0], losses


def test_freeze_encoder_keeps_grounding_weights_fixed_during_cloning():
    _, policy = _policy("policy.kwargs.freeze_encoder=true")
    before = {k: v.clone() for k, v in policy.state_dict().items()}
    obs, actions, _ = collect_demos("tabletop", {"family": "reach"}, 4, 4, seed_offset=0)
    behaviour_clone(policy, obs, actions, steps=5, batch_size=16, lr=1e-3)
    after = policy.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(
        k.startswith(
            (
                "head.",
                "keypoint_mlp",
                "blocks",
                "value_head",
                "cls",
                "state_proj",
                "patch",
                "camera",
                "word_pos",
                "final_norm",
            )
        )
        for k in changed
    )
    assert not any(k.startswith(("cnn.", "word_emb", "keypoint_query", "kp_offset")) for k in changed)


def test_pretraining_trains_a_frozen_encoder_and_leaves_it_frozen():
    _, policy = _policy("policy.kwargs.freeze_encoder=true")
    obs, points, _ = collect_demos("tabletop", {"family": "reach"}, 4, 4, seed_offset=0, with_points=True)
    before = policy.cnn.convs[0].weight.detach().clone()
    pretrain_grounding(policy, obs, points, epochs=1, batch_size=16, lr=1e-3)
    assert not torch.equal(before, policy.cnn.convs[0].weight)
    assert not any(p.requires_grad for p in policy.cnn.parameters())


def test_pretraining_needs_a_keypoint_per_label():
    _, policy = _policy("policy.kwargs.n_keypoints=1", "policy.kwargs.freeze_encoder=true")
    obs, points, _ = collect_demos("tabletop", {"family": "object"}, 2, 4, seed_offset=0, with_points=True)
    assert points.shape[1] == 3
    before = {k: v.clone() for k, v in policy.state_dict().items()}
    # Without ee_keypoint the policy reads the object and goal labels only (pointing_labels 2).
    assert policy.pointing_labels == 2
    with pytest.raises(ValueError, match=r"1 keypoints, fewer than the 2 pointing labels.*n_keypoints"):
        pretrain_grounding(policy, obs, points, epochs=1, batch_size=16, lr=1e-3)
    assert all(torch.equal(before[k], v) for k, v in policy.state_dict().items())  # nothing trained
    assert not any(p.requires_grad for p in policy.cnn.parameters())  # still frozen


def test_pretraining_supervises_the_gripper_label_only_for_a_gripper_keypoint():
    obs, points, _ = collect_demos("tabletop", {"family": "object"}, 2, 4, seed_offset=0, with_points=True)
    for extra, labels in ((("policy.kwargs.n_keypoints=3",), 2), (("policy.kwargs.ee_keypoint=2",), 3)):
        _, policy = _policy("policy.kwargs.n_keypoints=3", *extra)
        assert policy.pointing_labels == labels
        # lr 0 and one minibatch: the epoch's loss is the loss of the untouched policy, a sum of
        # squared errors over the supervised labels only.
        loss = pretrain_grounding(policy, obs, points, epochs=1, batch_size=len(points), lr=0.0)[0]
        with torch.no_grad():
            pred = policy.point(obs)
        for k, sums in ((labels, True), (5 - labels, False)):
            expected = float((pred[:, :k] - torch.from_numpy(points[:, :k])).pow(2).sum(-1).mean())
            assert (loss == pytest.approx(expected, rel=1e-5)) is sums


class _BrightestPixel(torch.nn.Module):
    """Points at the brightest pixel of each image (centre of that pixel, in [0, 1]); a dummy weight
    keeps the optimisers happy. It records every image batch it sees."""

    image_keys = ["image"]

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))
        self.seen: list[np.ndarray] = []

    def point(self, obs):
        img = np.asarray(obs["image"]).max(-1)
        self.seen.append(np.asarray(obs["image"]))
        b, h, w = img.shape
        flat = img.reshape(b, -1).argmax(1)
        xy = np.stack([(flat % w + 0.5) / w, (flat // w + 0.5) / h], -1).astype(np.float32)
        return torch.from_numpy(xy)[:, None] + 0.0 * self.w

    def evaluate(self, obs, actions):
        self.seen.append(np.asarray(obs["image"]))
        self.actions = actions
        return types.SimpleNamespace(log_probs=-((self.w - 1.0) ** 2) * torch.ones(actions.shape))


def _one_bright_pixel(n: int = 16, size: int = 32):
    rng = np.random.default_rng(3)
    images = np.zeros((n, size, size, 3), dtype=np.uint8)
    yx = rng.integers(8, size - 8, (n, 2))
    images[np.arange(n), yx[:, 0], yx[:, 1]] = 255
    points = ((yx[:, ::-1] + 0.5) / size).astype(np.float32)[:, None]
    obs = {"image": images, "state": np.zeros((n, 2), np.float32), "instruction": ["x"] * n}
    return obs, points


def test_pretraining_shifts_the_labels_with_the_images():
    obs, points = _one_bright_pixel()
    policy = _BrightestPixel()
    losses = pretrain_grounding(policy, obs, points, epochs=3, batch_size=8, lr=1e-3, augment_shift=4)
    assert max(losses) < 1e-10, losses  # every shifted label sits on its shifted pixel
    seen = np.concatenate(policy.seen[1:])  # (the first call only counts keypoints)
    moved = (seen != np.concatenate([obs["image"]] * 3)).any((1, 2, 3))
    assert moved.mean() > 0.5  # ... and the images did move (in epoch order, so compare as sets)
    assert pretrain_grounding(_BrightestPixel(), obs, points, epochs=1, batch_size=8, lr=1e-3)[0] < 1e-10


def test_behaviour_cloning_shifts_images_and_keeps_actions():
    obs, _ = _one_bright_pixel()
    actions = np.random.default_rng(0).standard_normal((16, 4, 3)).astype(np.float32)
    policy = _BrightestPixel()
    behaviour_clone(policy, obs, actions, steps=2, batch_size=16, lr=1e-3, augment_shift=3)
    moves = []
    for img, act in zip(policy.seen[-1], policy.actions.numpy(), strict=True):
        j = int(np.flatnonzero((actions == act).all((1, 2)))[0])  # the demo this row's action is from
        moves.append(np.argwhere(img.max(-1) == 255)[0] - np.argwhere(obs["image"][j].max(-1) == 255)[0])
    moves = np.array(moves)
    assert np.abs(moves).max() <= 3 and (moves != 0).any(1).mean() > 0.5  # image moved, action kept
    plain = _BrightestPixel()
    behaviour_clone(plain, obs, actions, steps=1, batch_size=16, lr=1e-3)
    assert sorted(map(bytes, plain.seen[0])) == sorted(map(bytes, obs["image"]))  # 0: no shift
