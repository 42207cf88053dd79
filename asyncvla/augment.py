"""Training augmentations: DrQ-style random shifts of images, word dropout of instructions.

**Random shifts** (Kostrikov et al. 2020) of uint8 image batches.

Each image is padded by ``s`` pixels on every side and cropped back to its size at a random
offset, so its content moves by an independent integer ``(dx, dy)`` in ``[-s, s]^2`` per sample:

    out[y, x] = img[clip(y - dy, 0, H - 1), clip(x - dx, 0, W - 1)]     (pad="edge", DrQ)
    out[y, x] = img[y - dy, x - dx], 0 outside the image                 (pad="zero")

``zero`` shows what a real camera shift shows at the border: something that is not the scene (the
tabletop draws its dark floor there). Edge replication extends the scene instead, and a keypoint
trained only on it can lock onto an unseen dark border strip (the tabletop's dark basket outline
looks alike; docs/robustness.md).

The same convention as the tabletop's ``camera_shift`` perturbation (content moves by +N pixels).
Points in [0, 1] image coordinates move with the content: ``p + (dx, dy) / (W, H)``.

**Word dropout** replaces each word of an instruction by ``UNK_WORD`` (a word no vocabulary holds,
so a tokenizer maps it to ``<unk>``) with probability ``p``, independently. A policy trained on it
learns to act on the words that matter and to treat ``<unk>`` as noise, which is what a word it was
never trained on (a new paraphrase) becomes at test time.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from asyncvla.envs.base import ObsBatch

PADS = ("edge", "zero")
UNK_WORD = "<unk>"


def random_shifts(batch: int, max_shift: int, rng: np.random.Generator) -> np.ndarray:
    """int64 [B, 2]: per-sample (dx, dy), each uniform in [-max_shift, max_shift]."""
    if max_shift < 0:
        raise ValueError(f"max_shift must be >= 0, got {max_shift}")
    return rng.integers(-max_shift, max_shift + 1, size=(batch, 2))


def shift_images(images: np.ndarray, shifts: np.ndarray, pad: str = "edge") -> np.ndarray:
    """uint8 [B, H, W, C] images, int [B, 2] (dx, dy) -> the shifted images [B, H, W, C] (a new array).

    Pad-and-crop: the pad is ``max |shift|`` (``pad``: ``edge`` replication or ``zero``), the crop of
    sample b starts at ``(pad - dy, pad - dx)``.
    """
    if pad not in PADS:
        raise ValueError(f"pad must be one of {PADS}, got {pad!r}")
    images = np.asarray(images)
    shifts = np.asarray(shifts, dtype=np.int64)
    if images.ndim != 4 or shifts.shape != (images.shape[0], 2):
        raise ValueError(f"images must be [B, H, W, C] and shifts [B, 2], got {images.shape}, {shifts.shape}")
    b, h, w, _ = images.shape
    n = int(np.abs(shifts).max()) if b else 0
    if n == 0:
        return images.copy()
    padded = np.pad(images, ((0, 0), (n, n), (n, n), (0, 0)), mode="edge" if pad == "edge" else "constant")
    out = np.empty_like(images)
    for i, (dx, dy) in enumerate(shifts.tolist()):
        out[i] = padded[i, n - dy : n - dy + h, n - dx : n - dx + w]
    return out


def shift_obs(
    obs: ObsBatch, shifts: np.ndarray, image_keys: Sequence[str] = ("image",), pad: str = "edge"
) -> ObsBatch:
    """A copy of ``obs`` with the ``image_keys`` images shifted by ``shifts`` [B, 2] (state and
    instruction unchanged: a camera shift moves the picture, not the robot)."""
    return {**obs, **{k: shift_images(obs[k], shifts, pad) for k in image_keys if k in obs}}


def shift_points(points: np.ndarray, shifts: np.ndarray, image_size: int) -> np.ndarray:
    """float [B, P, 2] points (x, y) in [0, 1] image coordinates -> the same points after ``shifts``."""
    return (np.asarray(points) + np.asarray(shifts, dtype=np.float32)[:, None] / image_size).astype(
        np.float32
    )


def drop_words(texts: Sequence[str], p: float, rng: np.random.Generator) -> list[str]:
    """Each word of each text replaced by ``UNK_WORD`` with probability ``p`` (words: split on spaces)."""
    if not 0.0 <= p < 1.0:
        raise ValueError(f"word dropout must be in [0, 1), got {p}")
    out = []
    for text in texts:
        words = text.split(" ")
        keep = rng.random(len(words)) >= p
        out.append(" ".join(w if k else UNK_WORD for w, k in zip(words, keep, strict=True)))
    return out


def drop_obs_words(obs: ObsBatch, p: float, rng: np.random.Generator) -> ObsBatch:
    """A copy of ``obs`` with word dropout on its instructions (images and state unchanged)."""
    return {**obs, "instruction": drop_words(list(obs["instruction"]), p, rng)}
