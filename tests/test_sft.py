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
    assert points.shape == (len(actions), 2, 2) and ((points >= 0) & (points <= 1)).all()


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
    assert points.shape[1] == 2
    before = {k: v.clone() for k, v in policy.state_dict().items()}
    with pytest.raises(ValueError, match=r"1 keypoints, fewer than the 2 pointing labels.*n_keypoints"):
        pretrain_grounding(policy, obs, points, epochs=1, batch_size=16, lr=1e-3)
    assert all(torch.equal(before[k], v) for k, v in policy.state_dict().items())  # nothing trained
    assert not any(p.requires_grad for p in policy.cnn.parameters())  # still frozen
