"""Rendering of the tabletop: cached sprite masks blitted onto a cached per-episode background.

Visual perturbations are baked into the per-episode ``View`` (palette, pixel transform, background)
at reset, so a frame costs one background copy plus a few small masked writes regardless of them;
only pixel noise is added per frame.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from functools import cache
from typing import Any

import numpy as np

from asyncvla.envs.base import hue_matrix
from asyncvla.envs.tabletop.sim import Episode
from asyncvla.envs.tabletop.tasks import (
    COLOURS,
    INSTRUCTION_MODES,
    MAX_EXTRA_DISTRACTORS,
    MAX_FILLERS,
    SHAPES,
    ZONES,
    Rect,
)

FLOOR = (28, 28, 32)
"""Seen only where zoom-out or a camera shift exposes the area beyond the table."""
TABLE = (120, 108, 95)
MAT = (152, 140, 124)
BASKET = (70, 42, 20)
KEEP_OUT = (45, 45, 60)
"""Slate: darker than the table and mats, unlike every object colour and the gripper."""
GRIPPER = (250, 250, 250)
"""White: no object colour is close to it, so the gripper is never confused with an object."""
OBJECT_SIZE = 0.1


@dataclass(frozen=True)
class Perturb:
    """Evaluation-time perturbations; the defaults are the unperturbed env."""

    color_shift: float = 0.0
    """Hue rotation of the object colours, as a fraction of the colour circle, in [-0.5, 0.5]."""
    lighting: float = 0.0
    """Brightness offset: every colour is scaled by ``1 + lighting``, in [-0.9, 1]."""
    camera_shift: int = 0
    """Image translation in pixels (both axes), at most a quarter of the image size."""
    zoom: float = 1.0
    """Scale about the image centre (1.2: crop-and-resize zoom-in), in [0.5, 2]."""
    pixel_noise: float = 0.0
    """Std of Gaussian pixel noise on the 0..255 scale, drawn from the episode's RNG."""
    extra_distractors: int = 0
    """Additional non-target objects, at most ``MAX_EXTRA_DISTRACTORS``."""
    paraphrase: bool | None = None
    """Word instructions with the held-out paraphrases (True) or the training ones (False); None:
    the split decides (held-out wording on ``split="heldout"``)."""
    filler: int = 0
    """Filler words the templates never use, inserted into the instruction, at most ``MAX_FILLERS``."""
    init_shift: float = 0.0
    """Initial-state shift in [0, 1]: objects crowded toward the centre, the gripper starting toward
    a corner (``tasks.SceneKey.init_shift``)."""
    instruction: str = "true"
    """What the policy is told, one of ``tasks.INSTRUCTION_MODES`` (the goal stays the true one)."""

    @classmethod
    def from_dict(cls, perturb: dict[str, Any] | None, image_size: int) -> Perturb:
        """Validate a user ``perturb`` dict (unknown keys and out-of-range values raise ValueError)."""
        if perturb is None:
            return cls()
        if not isinstance(perturb, dict):
            raise ValueError(f"perturb must be a dict or None, got {type(perturb).__name__}")
        allowed = [f.name for f in fields(cls)]
        for key in perturb:
            if key not in allowed:
                raise ValueError(f"perturb has unknown key {key!r}; allowed: {', '.join(allowed)}")
        ranges: dict[str, tuple[float, float]] = {
            "color_shift": (-0.5, 0.5),
            "lighting": (-0.9, 1.0),
            "camera_shift": (-(image_size // 4), image_size // 4),
            "zoom": (0.5, 2.0),
            "pixel_noise": (0.0, 255.0),
            "extra_distractors": (0, MAX_EXTRA_DISTRACTORS),
            "filler": (0, MAX_FILLERS),
            "init_shift": (0.0, 1.0),
        }
        out: dict[str, Any] = {}
        for key, value in perturb.items():
            if key == "paraphrase":
                if value is not None and not isinstance(value, (bool, np.bool_)):
                    raise ValueError(f"perturb['paraphrase'] must be a bool or null, got {value!r}")
                out[key] = None if value is None else bool(value)
                continue
            if key == "instruction":
                if value not in INSTRUCTION_MODES:
                    raise ValueError(
                        f"perturb['instruction'] must be one of {', '.join(INSTRUCTION_MODES)}, got {value!r}"
                    )
                out[key] = value
                continue
            integral = key in ("camera_shift", "extra_distractors", "filler")
            kinds = (int, np.integer) if integral else (int, float, np.integer, np.floating)
            lo, hi = ranges[key]
            if isinstance(value, (bool, np.bool_)) or not isinstance(value, kinds) or not lo <= value <= hi:
                kind = "an int" if integral else "a number"
                raise ValueError(f"perturb[{key!r}] must be {kind} in [{lo}, {hi}], got {value!r}")
            out[key] = int(value) if integral else float(value)
        return cls(**out)


@cache
def sprite(kind: str, size: int) -> np.ndarray:
    """Boolean mask [size, size] of an object shape or of the gripper (``ring`` open, ``dot`` closed)."""
    c = (np.arange(size) + 0.5) / size * 2.0 - 1.0
    u, v = np.meshgrid(c, c)
    r = np.hypot(u, v)
    masks = {
        "cube": np.ones((size, size), dtype=bool),
        "ball": r <= 1.0,
        "triangle": np.abs(u) <= (v + 1.0) / 2.0,
        "cross": (np.abs(u) <= 0.3) | (np.abs(v) <= 0.3),
        "ring": (r <= 1.0) & (r >= 1.0 - 2.2 / size),
        "dot": r <= 1.0,
    }
    mask = masks[kind]
    mask.flags.writeable = False
    return mask


def _odd(x: float, minimum: int) -> int:
    """Odd sprite sizes keep shapes centred on a pixel."""
    n = max(minimum, int(round(x)))
    return n if n % 2 else n + 1


def _blit(img: np.ndarray, mask: np.ndarray, colour: np.ndarray, cx: int, cy: int) -> None:
    """Paint ``colour`` where ``mask`` is set, centred on pixel (cx, cy), clipped to the image."""
    h, w = mask.shape
    y0, x0 = cy - h // 2, cx - w // 2
    size_y, size_x = img.shape[0], img.shape[1]
    if y0 >= 0 and x0 >= 0 and y0 + h <= size_y and x0 + w <= size_x:
        img[y0 : y0 + h, x0 : x0 + w][mask] = colour
        return
    ya, xa = max(y0, 0), max(x0, 0)
    yb, xb = min(y0 + h, size_y), min(x0 + w, size_x)
    if ya < yb and xa < xb:
        img[ya:yb, xa:xb][mask[ya - y0 : yb - y0, xa - x0 : xb - x0]] = colour


class View:
    """How one episode looks: palette, sprites, pixel transform and static background."""

    def __init__(
        self,
        image_size: int,
        basket: Rect,
        colours: list[int],
        perturb: Perturb,
        keep_out: Rect | None = None,
    ) -> None:
        self.size = image_size
        self.basket = basket
        self.scale = perturb.zoom * image_size
        self.offset = image_size / 2.0 - 0.5 * self.scale + perturb.camera_shift
        self.noise = perturb.pixel_noise
        light = 1.0 + perturb.lighting

        def lit(rgb: tuple[int, int, int] | np.ndarray) -> np.ndarray:
            return np.clip(np.rint(np.asarray(rgb, dtype=np.float64) * light), 0, 255).astype(np.uint8)

        palette = np.array(list(COLOURS.values()), dtype=np.float64)
        if perturb.color_shift:
            palette = palette @ hue_matrix(perturb.color_shift).T
        self.colours = [lit(palette[c]) for c in colours]
        self.gripper_colour = lit(GRIPPER)
        obj = _odd(OBJECT_SIZE * self.scale, 3)
        self.shape_sprites = [sprite(name, obj) for name in SHAPES]
        self.open_sprite = sprite("ring", obj + 2)
        self.closed_sprite = sprite("dot", _odd(obj / 2, 3))

        bg = np.empty((image_size, image_size, 3), dtype=np.uint8)
        bg[:] = lit(FLOOR)
        self._fill(bg, (0.0, 0.0, 1.0, 1.0), lit(TABLE))
        for zone in ZONES.values():
            self._fill(bg, zone, lit(MAT))
        if keep_out is not None:
            self._fill(bg, keep_out, lit(KEEP_OUT))
        t = max(1, round(self.scale / 64)) / self.scale
        x0, y0, x1, y1 = basket
        for edge in ((x0, y0, x1, y0 + t), (x0, y1 - t, x1, y1), (x0, y0, x0 + t, y1), (x1 - t, y0, x1, y1)):
            self._fill(bg, edge, lit(BASKET))
        self.background = bg

    def px(self, v: float) -> int:
        """Pixel index of a table coordinate."""
        return math.floor(v * self.scale + self.offset)

    def _fill(self, img: np.ndarray, rect: Rect, colour: np.ndarray) -> None:
        n = self.size
        xa, ya = min(max(self.px(rect[0]), 0), n), min(max(self.px(rect[1]), 0), n)
        xb, yb = min(max(self.px(rect[2]), 0), n), min(max(self.px(rect[3]), 0), n)
        img[ya:yb, xa:xb] = colour

    def draw(self, out: np.ndarray, ep: Episode, shapes: list[int], rng: np.random.Generator) -> None:
        """Render ``ep`` into ``out`` [H, W, 3]: background, objects (held one on top), gripper, noise."""
        np.copyto(out, self.background)
        held = ep.held
        sprites, colours, px = self.shape_sprites, self.colours, self.px
        for i, (x, y) in enumerate(ep.pos):
            if i != held:
                _blit(out, sprites[shapes[i]], colours[i], px(x), px(y))
        gx, gy = px(ep.gx), px(ep.gy)
        if held >= 0:
            _blit(out, sprites[shapes[held]], colours[held], gx, gy)
        _blit(out, self.closed_sprite if ep.closed else self.open_sprite, self.gripper_colour, gx, gy)
        if self.noise:
            noisy = rng.standard_normal(out.shape, dtype=np.float32) * np.float32(self.noise) + out
            np.copyto(out, np.clip(np.rint(noisy), 0, 255), casting="unsafe")

    def draw_wrist(self, out: np.ndarray, image: np.ndarray, ep: Episode) -> None:
        """A 2x zoomed crop of ``image`` centred on the gripper (black beyond the image border)."""
        n = self.size
        c = (n + 1) // 2
        r0, c0 = self.px(ep.gy) - n // 4, self.px(ep.gx) - n // 4
        crop = np.zeros((c, c, 3), dtype=np.uint8)
        ya, yb, xa, xb = max(r0, 0), min(r0 + c, n), max(c0, 0), min(c0 + c, n)
        if ya < yb and xa < xb:
            crop[ya - r0 : yb - r0, xa - c0 : xb - c0] = image[ya:yb, xa:xb]
        for a in (0, 1):  # nearest-neighbour 2x upsampling by strided writes
            for b in (0, 1):
                dst = out[a::2, b::2]
                dst[:] = crop[: dst.shape[0], : dst.shape[1]]
