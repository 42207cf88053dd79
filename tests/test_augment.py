"""Training augmentations: DrQ-style random shifts (images and points) and word dropout."""

import numpy as np
import pytest

from asyncvla.augment import random_shifts, shift_images, shift_obs, shift_points
from asyncvla.envs import make_env


def test_shift_moves_content_by_dx_dy_with_edge_replication():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, 10, 12, 3), dtype=np.uint8)
    shifts = np.array([[2, -1], [0, 0], [-3, 3]])
    out = shift_images(images, shifts)
    assert out.shape == images.shape and out.dtype == np.uint8
    for img, res, (dx, dy) in zip(images, out, shifts, strict=True):
        ys = np.clip(np.arange(10) - dy, 0, 9)
        xs = np.clip(np.arange(12) - dx, 0, 11)
        np.testing.assert_array_equal(res, img[ys][:, xs])
    # The interior is a plain translation: pixel (y, x) lands on (y + dy, x + dx).
    np.testing.assert_array_equal(out[0, :9, 2:], images[0, 1:, :10])
    np.testing.assert_array_equal(out[1], images[1])  # a zero shift is the identity
    assert not np.shares_memory(out, images)


def test_random_shifts_are_per_sample_and_bounded():
    shifts = random_shifts(500, 4, np.random.default_rng(1))
    assert shifts.shape == (500, 2) and shifts.min() == -4 and shifts.max() == 4
    assert len({tuple(s) for s in shifts}) > 40  # dx and dy drawn independently per sample
    assert not random_shifts(10, 0, np.random.default_rng(1)).any()
    with pytest.raises(ValueError, match="max_shift"):
        random_shifts(1, -1, np.random.default_rng(1))


def test_shifted_labels_match_the_env_rendered_with_a_camera_shift():
    """An image shifted by (4, 4) away from the borders equals the env drawn with camera_shift=4, and
    the shifted pointing labels equal that env's labels."""
    plain = make_env("tabletop", num_envs=2, family="reach")
    moved = make_env("tabletop", num_envs=2, family="reach", perturb={"camera_shift": 4})
    obs, _ = plain.reset(options={"init_state": [5, 6]})
    obs_m, _ = moved.reset(options={"init_state": [5, 6]})
    shifts = np.full((2, 2), 4)
    aug = shift_obs(obs, shifts)
    # Inside the image (the env shows the floor where the augmentation replicates the edge).
    np.testing.assert_array_equal(aug["image"][:, 4:, 4:], obs_m["image"][:, 4:, 4:])
    np.testing.assert_array_equal(aug["state"], obs["state"])
    assert aug["instruction"] == obs["instruction"]
    np.testing.assert_allclose(
        shift_points(plain.pointing_targets(), shifts, 64), moved.pointing_targets(), atol=1e-6
    )
    assert shift_points(plain.pointing_targets(), shifts, 64).dtype == np.float32


def test_zero_padding_shows_black_beyond_the_border():
    images = np.full((2, 6, 6, 3), 200, dtype=np.uint8)
    out = shift_images(images, np.array([[2, 1], [-1, 0]]), pad="zero")
    assert (out[0, :1] == 0).all() and (out[0, :, :2] == 0).all() and (out[0, 1:, 2:] == 200).all()
    assert (out[1, :, 5:] == 0).all() and (out[1, :, :5] == 200).all()
    with pytest.raises(ValueError, match="pad must be one of"):
        shift_images(images, np.zeros((2, 2), int), pad="wrap")


def test_word_dropout_replaces_words_by_unk_at_its_rate_and_keeps_the_rest():
    from asyncvla.augment import UNK_WORD, drop_words
    from asyncvla.envs.tabletop.tasks import vocabulary
    from asyncvla.policies.tokenizer import UNK_ID, WordTokenizer

    texts = ["put the red cube in the basket"] * 2000
    assert drop_words(texts[:3], 0.0, np.random.default_rng(0)) == texts[:3]
    out = drop_words(texts, 0.25, np.random.default_rng(0))
    assert out == drop_words(texts, 0.25, np.random.default_rng(0))  # reproducible per RNG
    words = [w for t in out for w in t.split(" ")]
    originals = [w for t in texts for w in t.split(" ")]
    dropped = np.array([w == UNK_WORD for w in words])
    assert len(words) == len(originals) and abs(dropped.mean() - 0.25) < 0.02
    assert all(w == o for w, o, d in zip(words, originals, dropped, strict=True) if not d)
    tok = WordTokenizer(vocabulary(), 16)
    assert tok.encode(f"put the {UNK_WORD} cube")[:4] == (
        *tok.encode("put the")[:2],
        UNK_ID,
        tok.encode("cube")[0],
    )
    with pytest.raises(ValueError, match="word dropout"):
        drop_words(texts, 1.0, np.random.default_rng(0))
