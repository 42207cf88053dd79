"""``LiberoVecEnv``: the LIBERO benchmark (MuJoCo / robosuite), registered as ``libero``.

``make_env("libero", num_envs=2, suite="libero_spatial", task_ids=[0])``. Needs ``make libero``
(pinned packages, verified assets, a pre-written LIBERO config); ``libero`` is imported only when an
env is built, so ``import asyncvla.envs`` works without it.

Rendering: ``MUJOCO_GL`` defaults to ``egl`` (falls back to ``osmesa`` when no EGL library is
found); it is set before MuJoCo is first imported in the process, and each env owns its offscreen
render context, so every env worker process renders on its own. Cameras are rendered once per chunk
(and after a reset), not at every physics step, into an offscreen buffer of the image's size,
with shadows off and without multisampling unless ``antialias=True`` (robosuite's default of 4x
MSAA costs ~2.5x per frame on software OpenGL; LIBERO's scene lights cast no shadows already).
``reflections=False`` halves the frame cost again (LIBERO's scenes have ~700k mesh vertices and
reflective surfaces; the frame cost hardly depends on the image size).

Cost: ``info["cost"]`` counts the actions during which robot0's gripper touches a movable object
that is not one of the task's objects of interest (``_contact_lookups``, ``_touching``). Shield
model: ``LiberoVecEnv.shield_model`` (OSC_POSE's position scale, the reachable part of the work
surface, ``_ARENAS``).

Perturbations (``perturb``, ``Perturb``; the robustness suite's cells, ``libero_suites``): camera,
lighting and colour changes are made to every newly compiled model (each hard reset builds one
from the XML, so they never carry over); sensor noise and the object shift draw from RNGs seeded
by the init state, so two resets to the same init state are identical under every perturbation.
"""

from __future__ import annotations

import ctypes.util
import hashlib
import logging
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, fields
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from gymnasium import spaces

from asyncvla.envs import ENVS
from asyncvla.envs.base import ObsBatch, ShieldModel, VectorEnv, check_int, hue_matrix, reset_requests

log = logging.getLogger(__name__)

ACTION_DIM = 7
"""Delta end-effector position (3) and axis-angle rotation (3), gripper (1: -1 open, +1 close)."""
STATE_DIM = 8
STATE_LAYOUT = ("eef_x", "eef_y", "eef_z", "eef_ax", "eef_ay", "eef_az", "gripper_q0", "gripper_q1")
STATE_BOUND = 10.0
"""Box bound of every state entry: metres from the world origin, axis-angle norm <= 2 pi."""
SUITE_MAX_STEPS = {
    "libero_spatial": 220,
    "libero_object": 280,
    "libero_goal": 300,
    "libero_10": 520,
    "libero_90": 400,
}
"""Episode budgets per suite (those of OpenVLA's LIBERO evaluation: longest demo plus a margin)."""
NOOP_ACTION = (0.0, 0.0, 0.0, 0.0, 0.0, 0.0, -1.0)
"""Settle steps after a reset: stand still with the gripper open while objects come to rest."""
AGENTVIEW, WRIST = "agentview", "robot0_eye_in_hand"

PANDA_REACH = 0.316 + 0.0825 + float(np.hypot(0.0825, 0.384)) + 0.088 + 0.1065 + 0.097
"""An upper bound (1.083 m) on the distance from robot0's shoulder (link1's origin, 0.333 m above
its base) to the end-effector site: the sum of the body offsets along the chain link2 .. link7,
right_hand (robosuite 1.4 ``robots/panda/robot.xml``) and the gripper's ``eef`` body
(``grippers/panda_gripper.xml``); the tests check it against the built model."""


CAMERA_SHIFT_AXIS = np.array([1.0, 1.0, 0.0]) / math.sqrt(2.0)
"""The direction ``camera_shift`` moves the agentview camera in, in the camera's own frame (x to
the image's right, y to its top): towards the image's top right, so the scene moves down-left."""
NOISE_STREAM, SHIFT_STREAM = 1, 2
"""RNG streams under an init state's ``reset_seed``: pixel noise, object shift directions."""
SHIFT_TRIES = 32
"""Direction draws of ``init_shift`` before the one with the fewest new contacts is taken."""
TOUCH = 0.005
"""Metres within which ``init_shift`` counts two geoms as touching (``_shift_objects``)."""
PARAPHRASES: tuple[dict[str, str], ...] = (
    {
        "pick up": "grab",
        "put": "place",
        "place": "set",
        "turn on": "switch on",
        "turn off": "switch off",
        "open": "pull open",
        "close": "shut",
        "push": "slide",
        "stack": "pile",
    },
    {
        "next to": "beside",
        "on top of": "atop",
        "between": "in between",
        "under": "beneath",
        "inside": "into it",
    },
)
"""Word substitutions of paraphrase levels 1 (verbs) and 2 (adds the spatial words); level 3 adds
a "please " prefix. Each level includes the ones below; a level's words are replaced in one pass
(whole words, longest phrase first), so "put" becomes "place", never "set"."""


@lru_cache(maxsize=1024)
def paraphrase(text: str, level: int) -> str:
    """``text`` reworded at ``level`` 0 (unchanged) .. 3 (``PARAPHRASES``)."""
    table = {k: v for tier in PARAPHRASES[:level] for k, v in tier.items()}
    if table:
        words = "|".join(re.escape(k) for k in sorted(table, key=len, reverse=True))
        text = re.sub(rf"\b({words})\b", lambda m: table[m.group(1)], text)
    return "please " + text if level >= 3 else text


PERTURB_RANGES: dict[str, tuple[float, float]] = {
    "camera_shift": (-0.2, 0.2),
    "lighting": (-0.9, 1.0),
    "colour_shift": (-0.5, 0.5),
    "pixel_noise": (0.0, 255.0),
    "init_shift": (0.0, 0.1),
    "paraphrase": (0, 3),
}
"""The allowed values of each ``perturb`` key (``Perturb``)."""


@dataclass(frozen=True)
class Perturb:
    """Evaluation-time perturbations of the LIBERO env; the defaults are the unperturbed env."""

    camera_shift: float = 0.0
    """Metres the agentview camera moves along ``CAMERA_SHIFT_AXIS`` (its orientation kept), in
    [-0.2, 0.2]."""
    lighting: float = 0.0
    """Every light's diffuse, ambient and specular intensity (and the headlight's) scaled by
    ``1 + lighting``, in [-0.9, 1]."""
    colour_shift: float = 0.0
    """Hue rotation (about the grey axis, as a fraction of the colour circle) of the RGB of every
    geom, material and material texture that is not robot0's: objects, fixtures, table, floor and
    walls; in [-0.5, 0.5]."""
    pixel_noise: float = 0.0
    """Std of Gaussian noise on the 0..255 scale added to every camera image, drawn from an RNG
    seeded by the init state, in [0, 255]."""
    init_shift: float = 0.0
    """Metres every movable (free-joint) object is moved in x/y, in a direction drawn from an RNG
    seeded by the init state, in [0, 0.1]: the settle steps run, the resting objects move (objects
    stacked on each other as one; objects on or in a fixture stay, ``_shift_objects``), and the
    settle steps run again. Without settle steps the objects move from where the init state holds
    them (above their supports), each on its own."""
    paraphrase: int = 0
    """Rewording of the instruction, 0 .. 3 (``paraphrase``); true is 3, false 0."""

    @classmethod
    def from_dict(cls, perturb: dict[str, Any] | None) -> Perturb:
        """Validate a user ``perturb`` dict (unknown keys and out-of-range values raise ValueError)."""
        if perturb is None:
            return cls()
        if not isinstance(perturb, dict):
            raise ValueError(f"perturb must be a dict or None, got {type(perturb).__name__}")
        allowed = [f.name for f in fields(cls)]
        out: dict[str, Any] = {}
        for key, value in perturb.items():
            if key not in allowed:
                raise ValueError(f"perturb has unknown key {key!r}; allowed: {', '.join(allowed)}")
            lo, hi = PERTURB_RANGES[key]
            if key == "paraphrase":
                if isinstance(value, (bool, np.bool_)):
                    value = hi if value else lo
                if not isinstance(value, (int, np.integer)) or not lo <= value <= hi:
                    raise ValueError(
                        f"perturb['paraphrase'] must be a bool or an int in [{lo}, {hi}], got {value!r}"
                    )
                out[key] = int(value)
                continue
            number = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(
                value, (bool, np.bool_)
            )
            if not number or not lo <= value <= hi:
                raise ValueError(f"perturb[{key!r}] must be a number in [{lo}, {hi}], got {value!r}")
            out[key] = float(value)
        return cls(**out)

    def changes_model(self) -> bool:
        """Whether the compiled model changes (camera, lights, colours)."""
        return bool(self.camera_shift or self.lighting or self.colour_shift)


@dataclass(frozen=True)
class _Arena:
    """The work surface of a LIBERO scene and where robot0's shoulder stands (world frame, metres).

    ``surface_low``/``surface_high``: the surface's (x, y) extent (``inf`` where the scene has no
    edge); ``surface_z``: its top. From libero 0.1.1's problem classes (``envs/problems``: table
    size and ``workspace_offset``, whose z is the top) and robots (``MountedPanda`` /
    ``OnTheGroundPanda.base_xpos_offset``); the shoulders were read off the built models (the
    tests check the tabletop one)."""

    surface_low: tuple[float, float]
    surface_high: tuple[float, float]
    surface_z: float
    shoulder: tuple[float, float, float]

    def reachable(self) -> tuple[np.ndarray, np.ndarray]:
        """The box of surface positions robot0 can reach, from the surface top up to the reach:
        the surface's extent intersected with the shoulder's ``PANDA_REACH`` box."""
        sh = np.asarray(self.shoulder)
        lo = np.append(np.maximum(self.surface_low, sh[:2] - PANDA_REACH), self.surface_z)
        hi = np.append(np.minimum(self.surface_high, sh[:2] + PANDA_REACH), sh[2] + PANDA_REACH)
        return lo, hi


_TABLE = _Arena((-0.5, -0.6), (0.5, 0.6), 0.90, (-0.66, 0.0, 1.245))  # table (1.0, 1.2) at (0, 0, 0.90)
_ARENAS = {
    "libero_tabletop_manipulation": _TABLE,  # libero_spatial, libero_goal
    "libero_kitchen_tabletop_manipulation": _TABLE,  # the same table and robot placement
    # Table (1.0, 1.2) at (-0.2, 0, 0.867); the robot 0.25 m behind its edge.
    "libero_study_tabletop_manipulation": _Arena((-0.7, -0.6), (0.3, 0.6), 0.867, (-0.75, 0.0, 1.245)),
    # Table (0.70, 1.6) at (0, 0, 0.41); the robot on the ground, its base raised to 0.42.
    "libero_living_room_tabletop_manipulation": _Arena((-0.35, -0.8), (0.35, 0.8), 0.41, (-0.51, 0.0, 0.753)),
    # libero_object: the floor plane (z = 0) in front of the robot's base at x = -0.6.
    "libero_floor_manipulation": _Arena((-0.6, -np.inf), (np.inf, np.inf), 0.0, (-0.6, 0.0, 0.333)),
}
"""Per BDDL problem, lower case (every problem of the five suites; not the unused coffee-table scene)."""


def _select_gl() -> None:
    """``MUJOCO_GL=egl`` unless the user chose; osmesa when no EGL library exists (before mujoco import)."""
    if "MUJOCO_GL" not in os.environ:
        egl = ctypes.util.find_library("EGL") is not None
        os.environ["MUJOCO_GL"] = "egl" if egl or ctypes.util.find_library("OSMesa") is None else "osmesa"
    if os.environ["MUJOCO_GL"] in ("egl", "osmesa"):
        os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])


@lru_cache(maxsize=1)
def _libero() -> Any:
    """Import LIBERO (once per process) after pointing it at the config ``make libero`` wrote."""
    # Imported here, not at the top: `python -m asyncvla.envs.libero_setup` runs it as __main__.
    from asyncvla.envs.libero_setup import CONFIG_ENV_VAR, LiberoSetupError, check_ready

    try:
        cfg_dir = check_ready()
    except LiberoSetupError as e:
        raise ImportError(str(e)) from None
    os.environ.setdefault(CONFIG_ENV_VAR, str(cfg_dir))
    _select_gl()
    import logging

    logging.getLogger("robosuite_logs").setLevel(logging.ERROR)  # "no private macro file" warnings
    try:
        from libero.libero import benchmark, get_libero_path
        from libero.libero.envs import OffScreenRenderEnv
    except ImportError as e:
        raise ImportError(f"LIBERO cannot be imported ({e}): run `make libero`") from None
    return benchmark, get_libero_path, OffScreenRenderEnv


_OSC_LIMITS = ("output_max", "output_min", "input_max", "input_min")


@lru_cache(maxsize=1)
def _osc_position_scale() -> tuple[float, float, float]:
    """Metres of end-effector goal offset per unit of position action: robosuite's action scale
    ``|output_max - output_min| / |input_max - input_min|`` of the OSC_POSE controller config that
    LIBERO loads (``load_controller_config(default_controller="OSC_POSE")``, i.e. robosuite's
    ``controllers/config/osc_pose.json``: 0.05)."""
    _libero()  # sets MUJOCO_GL before robosuite imports mujoco
    from robosuite import load_controller_config

    cfg = load_controller_config(default_controller="OSC_POSE")
    if cfg["type"] != "OSC_POSE" or not cfg["control_delta"]:
        raise ValueError(f"robosuite's OSC_POSE config is not a delta OSC_POSE controller: {cfg}")
    lim = {k: np.broadcast_to(np.asarray(cfg[k], dtype=np.float64), (6,))[:3] for k in _OSC_LIMITS}
    if np.any(lim["output_max"] + lim["output_min"]) or np.any(lim["input_max"] + lim["input_min"]):
        raise ValueError(f"robosuite's OSC_POSE position range is not symmetric about 0: {cfg}")
    scale = np.abs(lim["output_max"] - lim["output_min"]) / np.abs(lim["input_max"] - lim["input_min"])
    return tuple(float(x) for x in scale)  # type: ignore[return-value]


def _subtree_geoms(model: Any, roots: Sequence[int]) -> np.ndarray:
    """bool [ngeom]: the geoms of the bodies in the subtrees of ``roots`` (body ids)."""
    inside = np.zeros(model.nbody, dtype=bool)
    inside[list(roots)] = True
    parent = np.asarray(model.body_parentid)
    for b in range(1, model.nbody):  # MuJoCo orders bodies depth-first: parents come first
        inside[b] |= inside[parent[b]]
    return inside[np.asarray(model.geom_bodyid)]


def _is_target(name: str, of_interest: Sequence[str]) -> bool:
    """Whether object ``name`` is one of the task's objects of interest (or one of its regions is)."""
    return any(e == name or e.startswith(name + "_") for e in of_interest)


def _contact_lookups(inner: Any) -> tuple[np.ndarray, np.ndarray]:
    """bool [ngeom] each: robot0's gripper geoms (hand, fingers, pads), and the geoms of the
    task's movable objects (``objects_dict``, not ``fixtures_dict``: no table, wall, floor,
    cabinet) that are not in the BDDL's ``obj_of_interest``. Recompute after every (hard) reset."""
    model = inner.sim.model
    grip = _subtree_geoms(model, [model.body_name2id(inner.robots[0].gripper.root_body)])
    others = [
        model.body_name2id(obj.root_body)
        for name, obj in inner.objects_dict.items()
        if not _is_target(name, inner.obj_of_interest)
    ]
    return grip, _subtree_geoms(model, others) & ~grip


def _touching(data: Any, a: np.ndarray, b: np.ndarray) -> bool:
    """Whether any of the simulator's current contacts pairs a geom of ``a`` with one of ``b``
    (bool lookups by geom id)."""
    ncon = int(data.ncon)
    if ncon == 0:
        return False
    con = data.contact
    g1, g2 = np.asarray(con.geom1)[:ncon], np.asarray(con.geom2)[:ncon]
    return bool(((a[g1] & b[g2]) | (a[g2] & b[g1])).any())


def _rotate_texture(data: np.ndarray, channels: int, hue: np.ndarray) -> np.ndarray:
    """uint8 texture bytes (``channels`` per texel, RGB first) with ``hue`` applied to the RGB."""
    texels = data.reshape(-1, channels)
    out = texels.copy()
    m = hue.astype(np.float32)
    step = 1 << 18  # texels per block: its float32 channels stay in cache
    for s in range(0, len(texels), step):
        rgb = texels[s : s + step, :3].astype(np.float32)
        for c in range(3):
            v = rgb[:, 0] * m[c, 0]
            v += rgb[:, 1] * m[c, 1]
            v += rgb[:, 2] * m[c, 2]
            out[s : s + step, c] = np.rint(np.clip(v, 0.0, 255.0, out=v))
    return out.reshape(-1)


_ROTATED: dict[tuple[str, float], dict[int, np.ndarray]] = {}
"""Hue-rotated textures (texture id -> bytes) per (BDDL file, colour shift), shared by the envs of
the process: LIBERO's textures (~190 MB per scene) are rotated once, then copied into every newly
compiled model. At most ``_ROTATED_KEEP`` entries."""
_ROTATED_KEEP = 2


def _robot_geoms(inner: Any) -> np.ndarray:
    """bool [ngeom]: the geoms of the robots' subtrees (arm, mount, gripper)."""
    model = inner.sim.model
    return _subtree_geoms(model, [model.body_name2id(r.robot_model.root_body) for r in inner.robots])


def _perturb_model(inner: Any, p: Perturb, scene: str) -> None:
    """Apply ``p``'s camera, lighting and colour changes to ``inner``'s freshly compiled model (before
    its render context uploads the textures). ``scene``: the BDDL file, the texture cache's key."""
    import mujoco

    model = inner.sim.model._model
    if p.camera_shift:
        cam = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, AGENTVIEW)
        model.cam_pos[cam] += p.camera_shift * model.cam_mat0[cam].reshape(3, 3) @ CAMERA_SHIFT_AXIS
    if p.lighting:
        scale = 1.0 + p.lighting
        for arr in (model.light_diffuse, model.light_ambient, model.light_specular):
            arr *= scale
        head = model.vis.headlight
        head.diffuse, head.ambient, head.specular = (
            np.asarray(head.diffuse) * scale,
            np.asarray(head.ambient) * scale,
            np.asarray(head.specular) * scale,
        )
    if p.colour_shift:
        hue = hue_matrix(p.colour_shift)
        robot = _robot_geoms(inner)
        model.geom_rgba[~robot, :3] = np.clip(model.geom_rgba[~robot, :3] @ hue.T, 0.0, 1.0)
        matid = np.asarray(model.geom_matid)
        mats = sorted(set(matid[~robot].tolist()) - set(matid[robot].tolist()) - {-1})
        model.mat_rgba[mats, :3] = np.clip(model.mat_rgba[mats, :3] @ hue.T, 0.0, 1.0)
        roles = [mujoco.mjtTextureRole.mjTEXROLE_RGB, mujoco.mjtTextureRole.mjTEXROLE_RGBA]
        texids = np.asarray(model.mat_texid)[mats][:, [int(r) for r in roles]]
        key = (scene, p.colour_shift)
        cached = _ROTATED.pop(key, {})
        for t in sorted({int(t) for t in texids.ravel() if t >= 0}):
            adr, channels = int(model.tex_adr[t]), int(model.tex_nchannel[t])
            if channels < 3:  # no colour to turn
                continue
            size = int(model.tex_width[t]) * int(model.tex_height[t]) * channels
            if t not in cached or cached[t].size != size:
                cached[t] = _rotate_texture(model.tex_data[adr : adr + size], channels, hue)
            model.tex_data[adr : adr + size] = cached[t]
        _ROTATED[key] = cached  # most recently used last
        while len(_ROTATED) > _ROTATED_KEEP:
            del _ROTATED[next(iter(_ROTATED))]


def _shift_objects(inner: Any, magnitude: float, rng: np.random.Generator) -> None:
    """Move the free-joint objects of ``inner``'s current state by ``magnitude`` metres in x/y.

    Call it once the objects rest (LIBERO's init states hold them above their supports; the
    settle steps drop them): geoms within ``TOUCH`` of each other then say what stands on what.
    Objects touching each other (a bowl on a box) form a group that moves as one; a group that
    touches a fixture or the robot (a bowl in a drawer, on the stove or on the cabinet) stays
    where it is, since moving it would take it off its support or push it into it. Each other
    group gets a direction drawn from ``rng``; a draw that brings a moved object within ``TOUCH``
    of anything but the scenery (table, floor, walls) and its own group is redrawn, up to
    ``SHIFT_TRIES`` draws, after which the draw with the fewest such contacts is used. Heights,
    orientations and velocities are kept."""
    import mujoco

    model, data = inner.sim.model._model, inner.sim.data._data
    free = [j for j in range(model.njnt) if model.jnt_type[j] == mujoco.mjtJoint.mjJNT_FREE]
    if not free:
        return
    # The owner of each geom: object k >= 0, or a fixture / the robot (-1), or scenery (-2).
    owner = np.full(model.ngeom, -2, dtype=np.int64)
    fixtures = [inner.sim.model.body_name2id(f.root_body) for f in inner.fixtures_dict.values()]
    owner[_subtree_geoms(model, fixtures) | _robot_geoms(inner)] = -1
    for k, j in enumerate(free):
        owner[_subtree_geoms(model, [int(model.jnt_bodyid[j])])] = k

    def contacts() -> tuple[np.ndarray, np.ndarray]:
        """Owners of the two geoms of every contact (pair within the raised margins) of the state."""
        inner.sim.forward()
        n = int(data.ncon)
        return owner[np.asarray(data.contact.geom1)[:n]], owner[np.asarray(data.contact.geom2)[:n]]

    margin = model.geom_margin.copy()
    model.geom_margin[:] = np.maximum(margin, TOUCH)  # contacts then list the pairs within TOUCH
    try:
        a, b = contacts()
        pairs = list(zip(a.tolist(), b.tolist(), strict=True))
        pairs += [(y, x) for x, y in pairs]
        group = list(range(len(free)))  # union-find over the objects touching each other

        def root(k: int) -> int:
            while group[k] != k:
                k = group[k]
            return k

        for x, y in pairs:
            if x >= 0 and y >= 0:
                group[root(x)] = root(y)
        comp = np.array([root(k) for k in range(len(free))])
        held = {int(comp[x]) for x, y in pairs if x >= 0 and y == -1}
        moving = [g for g in sorted(set(comp.tolist())) if g not in held]
        if not moving:
            return
        adr = np.asarray(model.jnt_qposadr)[free]
        start = np.stack([data.qpos[adr], data.qpos[adr + 1]], axis=1)
        moved = np.isin(comp, moving)

        def place(offsets: np.ndarray) -> int:
            """Put the moving groups at their offsets; how many contacts they make that count."""
            shift = np.zeros((len(free), 2))
            for g, off in zip(moving, offsets, strict=True):
                shift[comp == g] = off
            data.qpos[adr], data.qpos[adr + 1] = start[:, 0] + shift[:, 0], start[:, 1] + shift[:, 1]
            a, b = contacts()
            ia, ib = np.maximum(a, 0), np.maximum(b, 0)  # object indices where a, b >= 0
            mine = ((a >= 0) & moved[ia]) | ((b >= 0) & moved[ib])
            same = (a >= 0) & (b >= 0) & (comp[ia] == comp[ib])
            return int((mine & (a != -2) & (b != -2) & ~same).sum())

        best: tuple[int, np.ndarray] | None = None
        for _ in range(SHIFT_TRIES):
            angle = rng.uniform(0.0, 2.0 * math.pi, len(moving))
            offsets = magnitude * np.stack([np.cos(angle), np.sin(angle)], axis=1)
            clashes = place(offsets)
            if best is None or clashes < best[0]:
                best = (clashes, offsets)
            if clashes == 0:
                return
        assert best is not None
        log.warning("init_shift: every draw of %d made contacts; using one with %d", SHIFT_TRIES, best[0])
        place(best[1])
    finally:
        model.geom_margin[:] = margin
        inner.sim.forward()


def _load_init_states(path: str) -> np.ndarray:
    """A task's init states (float64 [50, D]) via torch's restricted unpickler, not plain pickle."""
    import torch

    core = getattr(np, "_core", None) or np.core  # numpy 2 / numpy 1.26
    allowed = [
        (core.multiarray._reconstruct, "numpy.core.multiarray._reconstruct"),
        np.ndarray,
        np.dtype,
        np.dtypes.Float64DType,
    ]
    with torch.serialization.safe_globals(allowed):
        states = torch.load(path, weights_only=True)
    states = np.asarray(states, dtype=np.float64)
    if states.ndim != 2 or len(states) == 0:
        raise ValueError(f"{path}: expected a [N, D] array of init states, got shape {states.shape}")
    return states


@dataclass(frozen=True)
class _Task:
    task_id: int
    language: str
    bddl_file: str
    init_states: np.ndarray
    init_file: str
    problem: str
    """The BDDL's problem (scene) class, lower case as LIBERO keys it: ``libero_tabletop_manipulation``."""


@lru_cache(maxsize=8)
def _suite_tasks(suite: str) -> tuple[list[str], Any]:
    """(languages of all tasks, benchmark object) of a suite."""
    benchmark = _libero()[0]
    bench = benchmark.get_benchmark_dict()[suite]()
    return [bench.get_task(i).language for i in range(bench.n_tasks)], bench


def _load_task(suite: str, task_id: int) -> _Task:
    get_libero_path = _libero()[1]
    bench = _suite_tasks(suite)[1]
    task = bench.get_task(task_id)
    init_path = os.path.join(get_libero_path("init_states"), task.problem_folder, task.init_states_file)
    from libero.libero.envs.bddl_utils import get_problem_info

    bddl = bench.get_task_bddl_file_path(task_id)
    return _Task(
        task_id,
        task.language,
        bddl,
        _load_init_states(init_path),
        init_path,
        get_problem_info(bddl)["problem_name"],
    )


def reset_seed(suite: str, task_id: int, init_id: int) -> int:
    """The simulator seed of a start state: fixtures are placed by a sampler at every reset, so
    equal (suite, task, init state) must seed equally for identical resets (GRPO groups)."""
    digest = hashlib.sha256(f"libero/{suite}/{task_id}/{init_id}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def quat2axisangle(quat: np.ndarray) -> np.ndarray:
    """(x, y, z, w) unit quaternion -> axis * angle (robosuite's convention)."""
    w = float(np.clip(quat[3], -1.0, 1.0))
    den = np.sqrt(1.0 - w * w)
    if den < 1e-8:
        return np.zeros(3)
    return np.asarray(quat[:3]) * 2.0 * np.arccos(w) / den


class _Slot:
    """One env: a LIBERO ``OffScreenRenderEnv`` of one task (rebuilt when a reset picks another)."""

    def __init__(self) -> None:
        self.sim: Any = None
        self.task: _Task | None = None
        self.t = 0
        self.done = False
        self.init_state = 0
        # Contact cost: bool lookups by geom id (set at every reset) and whether the action being
        # executed has touched (set at its physics substeps).
        self.grip_geoms: np.ndarray | None = None
        self.other_geoms: np.ndarray | None = None
        self.touched = False
        # Pixel noise of the current episode (seeded at every reset; None without pixel_noise).
        self.noise: np.random.Generator | None = None


@ENVS.register("libero")
class LiberoVecEnv(VectorEnv):
    """``num_envs`` LIBERO envs of one suite, stepped one after another in this process.

    Init state ``k`` (reset option ``init_state``, any int >= 0) is task ``task_ids[(k // N) % T]``
    at the benchmark's init state ``k % N`` (N = 50 per task, T = len(task_ids)), so
    ``num_init_states = N * T`` and ``k`` fixes everything observable: the simulator is seeded from
    (suite, task, init state) before every reset (``reset_seed``), then ``settle_steps`` no-op steps
    run (not counted as episode steps). Without an ``init_state`` a reset draws one from the env's
    RNG (seeded by ``seed``); the ``seed`` of a reset seeds only that draw.

    Observation: ``image`` (agentview), ``wrist_image`` (with ``wrist_camera``), both flipped
    upright, uint8 [S, S, 3]; ``state`` float32 [8] (``STATE_LAYOUT``: end-effector position,
    axis-angle orientation, gripper joint positions); ``instruction`` (the task's language).
    Action: 7-D in [-1, 1] (OSC_POSE deltas and gripper), executed as chunks that stop at success
    or at ``max_episode_steps``. Reward 1 on success (which terminates).

    Cost: ``info["cost"]`` (float32 [n], summed over the chunk's executed actions) is the number of
    actions during which robot0's gripper touched a movable object of the task that is not in the
    BDDL's ``obj_of_interest`` (fixtures such as the table, walls or a cabinet never count): 1 per
    action with such a contact at any of its physics substeps. ``shield_model``: state[0:3] moves
    by action[0:3] times OSC_POSE's position scale (0.05 m per unit of action: the commanded goal;
    the arm moves less), inside the reachable part of the scene's work surface; action[6] > 0
    closes the gripper (< 0 opens it; exactly 0 keeps it as it is).

    ``perturb``: evaluation-time perturbations (``Perturb``; None or ``{}``: none), each the same
    for every reset to a given init state.
    """

    def __init__(
        self,
        num_envs: int = 1,
        suite: str = "libero_spatial",
        task_ids: int | Sequence[int] = 0,
        image_size: int = 128,
        wrist_camera: bool = False,
        settle_steps: int = 10,
        max_episode_steps: int | None = None,
        antialias: bool = False,
        reflections: bool = True,
        seed: int = 0,
        perturb: dict[str, Any] | None = None,
    ) -> None:
        self.num_envs = check_int("num_envs", num_envs, 1)
        self._perturb = Perturb.from_dict(perturb)
        if suite not in SUITE_MAX_STEPS:
            raise ValueError(f"suite must be one of {', '.join(SUITE_MAX_STEPS)}; got {suite!r}")
        self.suite = suite
        self.image_size = check_int("image_size", image_size, 16, 1024)
        flags = {"wrist_camera": wrist_camera, "antialias": antialias, "reflections": reflections}
        for name, flag in flags.items():
            if not isinstance(flag, (bool, np.bool_)):
                raise ValueError(f"{name} must be a bool, got {flag!r}")
        self.wrist_camera, self.antialias = bool(wrist_camera), bool(antialias)
        self.reflections = bool(reflections)
        self.settle_steps = check_int("settle_steps", settle_steps, 0, 1000)
        self.max_episode_steps = (
            SUITE_MAX_STEPS[suite]
            if max_episode_steps is None
            else check_int("max_episode_steps", max_episode_steps, 1)
        )
        seed = check_int("seed", seed, 0)

        languages, _ = _suite_tasks(suite)  # imports LIBERO: a missing install fails here
        ids = [task_ids] if isinstance(task_ids, (int, np.integer)) else list(task_ids)
        if not ids:
            raise ValueError("task_ids must name at least one task")
        self.task_ids = [check_int("task_ids[]", t, 0, len(languages) - 1) for t in ids]
        if len(set(self.task_ids)) != len(self.task_ids):
            raise ValueError(f"task_ids must be distinct, got {self.task_ids}")
        self._tasks = {t: _load_task(suite, t) for t in self.task_ids}
        self._per_task = min(len(task.init_states) for task in self._tasks.values())
        self._languages = languages

        size = self.image_size
        said = [paraphrase(text, self._perturb.paraphrase) for text in languages]
        charset = "".join(sorted(set("".join(languages) + "".join(said)) | {" "}))
        obs_spaces: dict[str, spaces.Space] = {
            "image": spaces.Box(0, 255, (size, size, 3), np.uint8),
            "state": spaces.Box(-STATE_BOUND, STATE_BOUND, (STATE_DIM,), np.float32),
            "instruction": spaces.Text(max_length=512, charset=charset),
        }
        if self.wrist_camera:
            obs_spaces["wrist_image"] = spaces.Box(0, 255, (size, size, 3), np.uint8)
        self.single_observation_space = spaces.Dict(obs_spaces)
        self.single_action_space = spaces.Box(-1.0, 1.0, (ACTION_DIM,), np.float32)

        n = self.num_envs
        self._rngs = [np.random.default_rng([seed, i]) for i in range(n)]
        self._slots = [_Slot() for _ in range(n)]
        self._images = np.zeros((n, size, size, 3), dtype=np.uint8)
        self._wrist = np.zeros((n, size, size, 3), dtype=np.uint8) if self.wrist_camera else None
        self._state = np.zeros((n, STATE_DIM), dtype=np.float32)
        # Simulators are built at the first reset: an env made only to read spaces costs no sim.
        self._started = False

    def asset_files(self) -> dict[str, str]:
        """Each task's BDDL and init-state file, and the asset manifest they were verified against."""
        out = {"libero_assets.sha256": str(Path(__file__).with_name("libero_assets.sha256"))}
        for t, task in sorted(self._tasks.items()):
            out[f"task{t}.bddl"] = task.bddl_file
            out[f"task{t}.init"] = task.init_file
        return out

    @property
    def num_init_states(self) -> int:
        return self._per_task * len(self.task_ids)

    # -- one env ----------------------------------------------------------------------------------

    def _build(self, task: _Task, slot: _Slot) -> Any:
        off_screen_env = _libero()[2]
        cams = [AGENTVIEW, WRIST] if self.wrist_camera else [AGENTVIEW]
        env = off_screen_env(
            bddl_file_name=task.bddl_file,
            camera_names=cams,
            camera_heights=self.image_size,
            camera_widths=self.image_size,
            use_camera_obs=False,  # rendered once per chunk by _observe, not at every physics step
            ignore_done=True,  # episode ends are decided here (success, max_episode_steps)
        )
        # Every (hard) reset rebuilds the MuJoCo model and then its render context: size the
        # offscreen buffer to the image and set multisampling on each new model before that.
        inner = env.env
        initialize_sim = inner._initialize_sim
        size, samples = self.image_size, 4 if self.antialias else 0

        def _initialize_sim(xml_string: str | None = None) -> None:
            initialize_sim(xml_string)
            vis = inner.sim.model._model.vis
            vis.global_.offwidth = vis.global_.offheight = size
            vis.quality.offsamples = samples
            if self._perturb.changes_model():
                _perturb_model(inner, self._perturb, task.bddl_file)

        inner._initialize_sim = _initialize_sim

        # robosuite runs sim.forward() (which finds the contacts) right before _pre_action at each
        # physics substep of an action: check the gripper's contacts there, until one is found.
        pre_action = inner._pre_action

        def _pre_action(action: np.ndarray, policy_step: bool = False) -> None:
            pre_action(action, policy_step)
            if not slot.touched and slot.grip_geoms is not None:
                slot.touched = _touching(inner.sim.data, slot.grip_geoms, slot.other_geoms)

        inner._pre_action = _pre_action
        return env

    def _reset_one(self, i: int, k: int) -> None:
        slot = self._slots[i]
        task = self._tasks[self.task_ids[(k // self._per_task) % len(self.task_ids)]]
        init_id = k % self._per_task
        if slot.task is not task:
            if slot.sim is not None:
                slot.sim.close()
                slot.sim = None
            slot.sim, slot.task = self._build(task, slot), task
        seed = reset_seed(self.suite, task.task_id, init_id)
        slot.sim.seed(seed)
        slot.grip_geoms = slot.other_geoms = None
        slot.sim.reset()  # a hard reset: a new model (with the perturbation's model changes)
        obs = slot.sim.set_init_state(task.init_states[init_id])
        slot.grip_geoms, slot.other_geoms = _contact_lookups(slot.sim.env)
        noop = np.asarray(NOOP_ACTION)
        p = self._perturb
        if p.init_shift:  # settle, shift the resting objects, settle again
            for _ in range(self.settle_steps):
                slot.sim.step(noop)
            _shift_objects(slot.sim.env, p.init_shift, np.random.default_rng([seed, SHIFT_STREAM]))
        slot.noise = np.random.default_rng([seed, NOISE_STREAM]) if p.pixel_noise else None
        for _ in range(self.settle_steps):
            obs, _, _, _ = slot.sim.step(noop)
        slot.t, slot.done, slot.init_state = 0, False, k
        self._observe(i, obs)

    def _render(self, sim: Any, camera: str) -> np.ndarray:
        import mujoco

        flags = sim.sim._render_context_offscreen.scn.flags
        # LIBERO's lights cast no shadows already; this keeps shadows off for any scene.
        flags[mujoco.mjtRndFlag.mjRND_SHADOW] = 0
        # Reflective table tops render the scene twice: ~2x per frame on software OpenGL.
        flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = int(self.reflections)
        # OpenGL rows run bottom-up: flip vertically to get the upright camera image.
        return sim.sim.render(camera_name=camera, width=self.image_size, height=self.image_size)[::-1]

    def _sense(self, slot: _Slot, camera: str) -> np.ndarray:
        """A camera image with the slot's pixel noise (if any) added."""
        image = self._render(slot.sim, camera)
        if slot.noise is None:
            return image
        noise = slot.noise.normal(0.0, self._perturb.pixel_noise, image.shape)
        return np.clip(np.rint(image + noise), 0, 255).astype(np.uint8)

    def _observe(self, i: int, obs: dict[str, np.ndarray]) -> None:
        slot = self._slots[i]
        self._images[i] = self._sense(slot, AGENTVIEW)
        if self._wrist is not None:
            self._wrist[i] = self._sense(slot, WRIST)
        self._state[i, :3] = obs["robot0_eef_pos"]
        self._state[i, 3:6] = quat2axisangle(obs["robot0_eef_quat"])
        self._state[i, 6:8] = obs["robot0_gripper_qpos"]

    def _obs(self) -> ObsBatch:
        out: ObsBatch = {
            "image": self._images.copy(),
            "state": self._state.copy(),
            "instruction": [paraphrase(slot.task.language, self._perturb.paraphrase) for slot in self._slots],
        }
        if self._wrist is not None:
            out["wrist_image"] = self._wrist.copy()
        return out

    # -- VectorEnv API ----------------------------------------------------------------------------

    def reset(
        self, *, seed: int | Sequence[int | None] | None = None, options: dict[str, Any] | None = None
    ) -> tuple[ObsBatch, dict[str, Any]]:
        """Reset envs (see ``VectorEnv.reset``): ``init_state`` k picks the start (class docstring);
        an int ``seed`` gives env ``i`` seed ``seed + i`` for drawing k when none is given."""
        indices, seeds, inits = reset_requests(self.num_envs, seed, options)
        if not self._started:  # a first, partial reset starts the other envs from drawn states
            rest = [i for i in range(self.num_envs) if i not in indices]
            indices, seeds, inits = rest + indices, [None] * len(rest) + seeds, [None] * len(rest) + inits
            self._started = True
        for i, s, k in zip(indices, seeds, inits, strict=True):
            if s is not None:
                self._rngs[i] = np.random.default_rng(check_int("seed", s, 0))
            if k is None:
                k = int(self._rngs[i].integers(self.num_init_states))
            self._reset_one(i, check_int("init_state", k, 0))
        init_state = np.array([slot.init_state for slot in self._slots], dtype=np.int64)
        return self._obs(), {"init_state": init_state}

    def step(
        self, actions: np.ndarray
    ) -> tuple[ObsBatch, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        if not self._started:
            raise RuntimeError("LiberoVecEnv.step() before reset(): reset the envs first")
        a = np.asarray(actions, dtype=np.float32)
        if a.ndim == 2:
            a = a[:, None]
        n = self.num_envs
        if a.ndim != 3 or a.shape[0] != n or a.shape[2] != ACTION_DIM or a.shape[1] < 1:
            raise ValueError(
                f"actions must have shape [{n}, K, {ACTION_DIM}] or [{n}, {ACTION_DIM}], got {a.shape}"
            )
        chunks = np.clip(np.nan_to_num(a), -1.0, 1.0).astype(np.float64)
        reward = np.zeros(n, dtype=np.float32)
        cost = np.zeros(n, dtype=np.float32)
        steps = np.zeros(n, dtype=np.int32)
        terminated = np.zeros(n, dtype=bool)
        truncated = np.zeros(n, dtype=bool)
        failed = np.zeros(n, dtype=bool)
        for i, slot in enumerate(self._slots):
            if slot.done:
                continue
            success = False
            obs: dict[str, np.ndarray] = {}
            try:
                for action in chunks[i]:
                    slot.touched = False
                    obs, r, success, _ = slot.sim.step(action)
                    slot.t += 1
                    steps[i] += 1
                    reward[i] += float(r)
                    cost[i] += slot.touched
                    if success or slot.t >= self.max_episode_steps:
                        break
            except Exception as e:  # e.g. a MuJoCo instability: this env's episode is over
                log.warning("libero env %d: the simulator raised in step: %s: %s", i, type(e).__name__, e)
                failed[i] = truncated[i] = slot.done = True  # any caller resets it
                continue
            slot.done = bool(success) or slot.t >= self.max_episode_steps
            terminated[i] = bool(success)
            truncated[i] = slot.done and not success
            self._observe(i, obs)
        info = {
            "success": terminated.copy(),
            "cost": cost,
            "steps": steps,
            "failed": failed,
        }
        return self._obs(), reward, terminated, truncated, info

    def shield_model(self) -> ShieldModel | None:
        """Position dims 0..2 of state and action, scaled by robosuite's OSC_POSE config
        (``_osc_position_scale``); reachable: the union over the env's tasks of the reachable part
        of their scene's work surface (``_ARENAS``). None for a scene without an entry there."""
        arenas = [_ARENAS.get(task.problem.lower()) for task in self._tasks.values()]
        if any(a is None for a in arenas):
            return None
        boxes = [a.reachable() for a in arenas if a is not None]
        low = np.min([lo for lo, _ in boxes], axis=0)
        high = np.max([hi for _, hi in boxes], axis=0)
        return ShieldModel(
            position_state_dims=(0, 1, 2),
            position_action_dims=(0, 1, 2),
            step_scale=_osc_position_scale(),
            action_low=(-1.0,) * ACTION_DIM,
            action_high=(1.0,) * ACTION_DIM,
            reachable_low=tuple(float(x) for x in low),
            reachable_high=tuple(float(x) for x in high),
            gripper_action_dim=6,
            gripper_close_above=0.0,
        )

    def vocabulary(self) -> list[str]:
        """Every word of the instructions of the suite's tasks (one tokenizer serves the whole suite),
        as this env words them (``perturb["paraphrase"]``)."""
        level = self._perturb.paraphrase
        return sorted({w for text in self._languages for w in paraphrase(text, level).lower().split()})

    @classmethod
    def suite_cells(cls, suite: str, env_kwargs: dict[str, Any], **context: Any) -> list[Any] | None:
        """The robustness suite's cells (``libero_suites``); None for other suites."""
        from asyncvla.envs.libero_suites import suite_cells

        return suite_cells(suite, env_kwargs, **context)

    def close(self) -> None:
        for slot in getattr(self, "_slots", []):
            if slot.sim is not None:
                slot.sim.close()
                slot.sim = None
