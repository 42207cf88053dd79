"""The LIBERO env's cells for the evaluation suites (``asyncvla.trust.suites``): the robustness suite.

Every perturbation (``libero.Perturb``) keeps each init state's task and start: the camera, light
and colour changes alter only the picture, pixel noise and the object shift draw from RNGs seeded
by the init state, and a paraphrase only rewords the instruction. So every cell runs the reference
cell's episodes and compares with it episode by episode.
"""

from __future__ import annotations

from typing import Any

from asyncvla.trust.suites.cells import Axes, Cell, integer_strength, robustness_cells

AXES: Axes = {
    # metres the agentview camera moves (towards its image's top right)
    "camera_shift": ((0.025, 0.05, 0.1), lambda s: {"camera_shift": s}),
    # light intensities scaled by 1 + s: dimmer scenes
    "lighting": ((-0.25, -0.5, -0.75), lambda s: {"lighting": s}),
    # hue rotation of everything but the robot, in turns of the colour circle
    "colour_shift": ((0.05, 0.1, 0.2), lambda s: {"colour_shift": s}),
    # sensor noise std on 0..255
    "pixel_noise": ((10, 20, 40), lambda s: {"pixel_noise": s}),
    # 1: verbs reworded, 2: also spatial words, 3: also a "please " prefix
    "paraphrase": ((1, 2, 3), lambda s: {"paraphrase": integer_strength("paraphrase", 1, 3)(s)}),
    # metres each movable object (or stack) moves in x/y from its init state
    "init_state": ((0.01, 0.03, 0.05), lambda s: {"init_shift": s}),
}
"""Robustness axis -> (default strengths, strength -> ``perturb`` entries). Out-of-range strengths
are refused by the env's ``Perturb`` check (or here, for integer strengths)."""


def suite_cells(suite: str, kwargs: dict[str, Any], **context: Any) -> list[Cell] | None:
    """``VectorEnv.suite_cells`` of the LIBERO env: the robustness suite's cells (``context``:
    ``axes``, ``strengths``); None for the other suites."""
    if suite == "robustness":
        return robustness_cells(AXES, context.get("axes"), context.get("strengths"))
    return None
