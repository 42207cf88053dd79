"""The built-in ``tabletop`` env: a pure-numpy top-down pick-and-place table with LIBERO-like suites.

``make_env("tabletop", num_envs=8, family="object")``; see ``TabletopVecEnv`` for the mechanics.
"""

from asyncvla.envs.tabletop.env import ACTION_DIM, STATE_DIM, STATE_LAYOUT, TabletopVecEnv
from asyncvla.envs.tabletop.render import Perturb
from asyncvla.envs.tabletop.tasks import (
    DEFAULT_MAX_STEPS,
    FAMILIES,
    HELDOUT_COMBOS,
    INSTRUCTION_CHARSET,
    SPLITS,
    TEMPLATES,
    TRAIN_COMBOS,
    tokenize,
    vocabulary,
)

__all__ = [
    "ACTION_DIM",
    "DEFAULT_MAX_STEPS",
    "FAMILIES",
    "HELDOUT_COMBOS",
    "INSTRUCTION_CHARSET",
    "Perturb",
    "SPLITS",
    "STATE_DIM",
    "STATE_LAYOUT",
    "TEMPLATES",
    "TRAIN_COMBOS",
    "TabletopVecEnv",
    "tokenize",
    "vocabulary",
]
