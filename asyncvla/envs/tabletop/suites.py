"""The tabletop's cells for the evaluation suites (``asyncvla.trust.suites``).

Every perturbation below keeps the layout of each init state (its own RNG streams in
``tasks.make_scene``), so robustness and language cells compare episode by episode with the
reference cell; other splits and families are other scenes.
"""

from __future__ import annotations

from typing import Any

from asyncvla.envs.tabletop.tasks import FAMILIES, MAX_FILLERS, MIN_OBJECTS
from asyncvla.trust.suites.cells import Axes, Cell, integer_strength, robustness_cells

AXES: Axes = {
    "camera_shift": ((2, 4, 8), lambda s: {"camera_shift": integer_strength("camera_shift", -16, 16)(s)}),
    "zoom": ((1.1, 1.2, 1.3), lambda s: {"zoom": s}),
    "lighting": ((0.15, 0.3, 0.6), lambda s: {"lighting": s}),
    "colour_shift": ((0.05, 0.1, 0.2), lambda s: {"color_shift": s}),
    "pixel_noise": ((10, 20, 40), lambda s: {"pixel_noise": s}),
    "distractors": ((1, 2, 3), lambda s: {"extra_distractors": integer_strength("distractors", 0, 4)(s)}),
    # 1: the held-out templates; each further level inserts one filler word the templates never use
    "paraphrase": (
        (1, 2, 3),
        lambda s: {"paraphrase": True, "filler": integer_strength("paraphrase", 1, MAX_FILLERS + 1)(s) - 1},
    ),
    "init_state": ((0.33, 0.67, 1.0), lambda s: {"init_shift": s}),
}
"""Robustness axis -> (default strengths, strength -> ``perturb`` entries). Out-of-range strengths
are refused by the env's ``Perturb`` check (or here, for integer strengths)."""

LANGUAGE_MODES = ("true", "blank", "other_episode", "other_object")


def _family_cell(family: str, kwargs: dict[str, Any], how: str) -> Cell:
    lo, hi = kwargs.get("n_objects", (3, 4))
    least = MIN_OBJECTS[family]
    overrides = {
        "family": family,
        "split": "train",
        "n_objects": [max(lo, least), max(hi, least)],
        "max_episode_steps": None,
    }
    return Cell(f"family={family}", overrides, axis=how, matched=False)


def generalization_cells(kwargs: dict[str, Any], pretrained: list[str]) -> list[Cell]:
    family = kwargs.get("family", "object")
    cells = [
        Cell("seen", {"split": "train", "perturb": {"paraphrase": False}}, axis="seen"),
        Cell("heldout_wording", {"split": "train", "perturb": {"paraphrase": True}}, axis="wording"),
        Cell(
            "heldout_combos",
            {"split": "heldout", "perturb": {"paraphrase": False}},
            axis="combination",
            matched=False,
        ),
        Cell(
            "heldout_combos_wording",
            {"split": "heldout", "perturb": {"paraphrase": True}},
            axis="combination+wording",
            matched=False,
        ),
    ]
    for f in FAMILIES:
        if f != family:
            how = "grounding" if f in pretrained else "none"
            cells.append(_family_cell(f, kwargs, f"family ({how})"))
    return cells


def groups_cells(kwargs: dict[str, Any]) -> list[Cell]:
    family = kwargs.get("family", "object")
    first = Cell(f"family={family}", {"split": "train"}, axis=family)
    return [first, *(_family_cell(f, kwargs, f) for f in FAMILIES if f != family)]


def language_cells() -> list[Cell]:
    return [Cell(m, {"perturb": {"instruction": m}}, axis="instruction") for m in LANGUAGE_MODES]


def suite_cells(suite: str, kwargs: dict[str, Any], **context: Any) -> list[Cell] | None:
    """``VectorEnv.suite_cells`` of the tabletop."""
    if suite == "robustness":
        return robustness_cells(AXES, context.get("axes"), context.get("strengths"))
    if context.get("axes") or context.get("strengths"):
        raise ValueError(f"axes and strengths apply to the robustness suite, not {suite!r}")
    if suite == "generalization":
        return generalization_cells(kwargs, context.get("pretrained") or [])
    if suite == "groups":
        return groups_cells(kwargs)
    if suite == "language":
        return language_cells()
    return None
