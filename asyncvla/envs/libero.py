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
"""

from __future__ import annotations

import ctypes.util
import hashlib
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from gymnasium import spaces

from asyncvla.envs import ENVS
from asyncvla.envs.base import ObsBatch, ShieldModel, VectorEnv, check_int, reset_requests

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
    ) -> None:
        self.num_envs = check_int("num_envs", num_envs, 1)
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
        charset = "".join(sorted(set("".join(languages)) | {" "}))
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
        slot.sim.seed(reset_seed(self.suite, task.task_id, init_id))
        slot.grip_geoms = slot.other_geoms = None
        slot.sim.reset()  # a hard reset: a new model
        obs = slot.sim.set_init_state(task.init_states[init_id])
        slot.grip_geoms, slot.other_geoms = _contact_lookups(slot.sim.env)
        noop = np.asarray(NOOP_ACTION)
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

    def _observe(self, i: int, obs: dict[str, np.ndarray]) -> None:
        sim = self._slots[i].sim
        self._images[i] = self._render(sim, AGENTVIEW)
        if self._wrist is not None:
            self._wrist[i] = self._render(sim, WRIST)
        self._state[i, :3] = obs["robot0_eef_pos"]
        self._state[i, 3:6] = quat2axisangle(obs["robot0_eef_quat"])
        self._state[i, 6:8] = obs["robot0_gripper_qpos"]

    def _obs(self) -> ObsBatch:
        out: ObsBatch = {
            "image": self._images.copy(),
            "state": self._state.copy(),
            "instruction": [slot.task.language for slot in self._slots],
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
        """Every word of the instructions of the suite's tasks (one tokenizer serves the whole suite)."""
        return sorted({w for text in self._languages for w in text.lower().split()})

    def close(self) -> None:
        for slot in getattr(self, "_slots", []):
            if slot.sim is not None:
                slot.sim.close()
                slot.sim = None
