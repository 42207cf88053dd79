"""``TabletopVecEnv``: the built-in pure-numpy pick-and-place env, registered as ``tabletop``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from gymnasium import spaces

from asyncvla.envs import ENVS
from asyncvla.envs.base import ObsBatch, ShieldModel, VectorEnv, check_int, reset_requests
from asyncvla.envs.tabletop.render import Perturb, View
from asyncvla.envs.tabletop.sim import Episode
from asyncvla.envs.tabletop.tasks import (
    BASKET_CENTRES,
    BASKET_HALF,
    COLOUR_NAMES,
    DEFAULT_MAX_STEPS,
    FAMILIES,
    INSTRUCTION_CHARSET,
    MAX_OBJECTS,
    MIN_OBJECTS,
    SHAPES,
    SPLITS,
    ZONES,
    SceneKey,
    make_scene,
    vocabulary,
)
from asyncvla.envs.wrappers import LatencyEmulator

ACTION_DIM = 3
STATE_DIM = 6
STATE_LAYOUT = ("gripper_x", "gripper_y", "closed", "holding", "subgoals_done_frac", "time_frac")
GRASP_RADIUS = 0.07


def check_keep_out(region: Any) -> tuple[float, float, float, float] | None:
    """A ``keep_out`` region as a tuple, or a ValueError saying why it cannot apply."""
    if region is None:
        return None
    if not isinstance(region, (list, tuple)) or len(region) != 4:
        raise ValueError(f"keep_out must be [x_lo, y_lo, x_hi, y_hi], got {region!r}")
    if any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in region):
        raise ValueError(f"keep_out must hold 4 numbers, got {region!r}")
    x0, y0, x1, y1 = (float(v) for v in region)
    if not (0.0 <= x0 < x1 <= 1.0 and 0.0 <= y0 < y1 <= 1.0):
        raise ValueError(
            f"keep_out {list(region)} must lie on the table: 0 <= x_lo < x_hi <= 1 and 0 <= y_lo < y_hi <= 1"
        )
    rect = (x0, y0, x1, y1)
    blocked = [name for name, z in ZONES.items() if _overlap(rect, z)]
    blocked += (
        ["a basket position"]
        if any(
            _overlap(rect, (cx - BASKET_HALF, cy - BASKET_HALF, cx + BASKET_HALF, cy + BASKET_HALF))
            for cx, cy in BASKET_CENTRES
        )
        else []
    )
    if blocked:
        raise ValueError(f"keep_out {list(region)} overlaps {blocked[0]}: tasks would have to enter it")
    return rect


def _overlap(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


@dataclass
class _Slot:
    """One env's episode and how it is drawn."""

    episode: Episode
    view: View
    colours: list[int]
    shapes: list[int]
    instruction: str
    template: str
    noise_rng: np.random.Generator


@ENVS.register("tabletop")
class TabletopVecEnv(VectorEnv):
    """A top-down table with a gripper, coloured objects, a basket and four corner mats.

    Action ``(dx, dy, g)`` in [-1, 1]^3: the gripper moves by ``(dx, dy) * max_step`` (clamped to the
    table), ``g > 0`` closes it (grasping the nearest object within ``grasp_radius``), ``g <= 0``
    opens it (releasing the held object in place). State: see ``STATE_LAYOUT``. Families mirror the
    LIBERO suites (``reach``, ``object``, ``spatial``, ``goal``, ``long``); ``split="heldout"``
    reserves target colour/shape combinations and instruction paraphrases never used in training.

    Reward: 1 on success (which terminates) plus ``reward_shaping`` times the change of a phase
    potential (at most 0.5 over an episode). Cost: ``wrong_grasp_cost`` (1) per grasp of an object
    that is not the current target, plus 1 per step the gripper ends inside the ``keep_out`` region
    ``[x_lo, y_lo, x_hi, y_hi]`` (drawn dark on the table; no object, gripper start, basket or mat
    lies in it, so a policy can always avoid it). Envs never autoreset; an env that is already done executes nothing (``steps`` 0) and
    reports ``terminated``/``truncated``/``success`` False, so each episode end is reported once.
    """

    def __init__(
        self,
        num_envs: int = 1,
        family: str = "object",
        image_size: int = 64,
        n_objects: tuple[int, int] | list[int] = (3, 4),
        max_episode_steps: int | None = None,
        split: str = "train",
        wrist_camera: bool = False,
        reward_shaping: float = 1.0,
        perturb: dict[str, Any] | None = None,
        latency: dict[str, Any] | None = None,
        seed: int = 0,
        max_step: float = 0.1,
        grasp_radius: float = GRASP_RADIUS,
        keep_out: list[float] | tuple[float, float, float, float] | None = None,
        wrong_grasp_cost: float = 1.0,
    ) -> None:
        self.num_envs = check_int("num_envs", num_envs, 1)
        if family not in FAMILIES:
            raise ValueError(f"family must be one of {', '.join(FAMILIES)}; got {family!r}")
        if split not in SPLITS:
            raise ValueError(f"split must be one of {', '.join(SPLITS)}; got {split!r}")
        self.family, self.split = family, split
        self.image_size = check_int("image_size", image_size, 32, 512)
        if not isinstance(n_objects, (tuple, list)) or len(n_objects) != 2:
            raise ValueError(f"n_objects must be a (min, max) pair, got {n_objects!r}")
        lo = check_int("n_objects[0]", n_objects[0], MIN_OBJECTS[family], MAX_OBJECTS)
        hi = check_int("n_objects[1]", n_objects[1], lo, MAX_OBJECTS)
        self.n_objects = (lo, hi)
        default_steps = DEFAULT_MAX_STEPS[family]
        self.max_episode_steps = (
            default_steps
            if max_episode_steps is None
            else check_int("max_episode_steps", max_episode_steps, 1)
        )
        if not isinstance(wrist_camera, (bool, np.bool_)):
            raise ValueError(f"wrist_camera must be a bool, got {wrist_camera!r}")
        self.wrist_camera = bool(wrist_camera)
        numbers = {"reward_shaping": (reward_shaping, 0.0, 10.0), "max_step": (max_step, 1e-3, 0.5)}
        numbers["grasp_radius"] = (grasp_radius, 1e-3, 0.5)
        numbers["wrong_grasp_cost"] = (wrong_grasp_cost, 0.0, 100.0)
        for name, (value, lo, hi) in numbers.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi:
                raise ValueError(f"{name} must be a number in [{lo}, {hi}], got {value!r}")
        self.reward_shaping = float(reward_shaping)
        self.max_step, self.grasp_radius = float(max_step), float(grasp_radius)
        self.wrong_grasp_cost = float(wrong_grasp_cost)
        self.keep_out = check_keep_out(keep_out)
        self.perturb = Perturb.from_dict(perturb, self.image_size)
        seed = check_int("seed", seed, 0)
        self.latency = LatencyEmulator(latency, seed=seed)

        n, size = self.num_envs, self.image_size
        image_space = spaces.Box(0, 255, (size, size, 3), np.uint8)
        obs_spaces: dict[str, spaces.Space] = {
            "image": image_space,
            "state": spaces.Box(0.0, 1.0, (STATE_DIM,), np.float32),
            "instruction": spaces.Text(max_length=256, charset=INSTRUCTION_CHARSET),
        }
        if self.wrist_camera:
            obs_spaces["wrist_image"] = spaces.Box(0, 255, (size, size, 3), np.uint8)
        self.single_observation_space = spaces.Dict(obs_spaces)
        self.single_action_space = spaces.Box(-1.0, 1.0, (ACTION_DIM,), np.float32)

        self._seed_rngs = [np.random.default_rng(seed + i) for i in range(n)]
        self._images = np.zeros((n, size, size, 3), dtype=np.uint8)
        self._wrist = np.zeros((n, size, size, 3), dtype=np.uint8) if self.wrist_camera else None
        self._init_states = np.zeros(n, dtype=np.int64)
        self._slots = [self._new_slot(i, int(self._seed_rngs[i].integers(2**31))) for i in range(n)]
        for i in range(n):
            self._render(i)

    # -- episodes ---------------------------------------------------------------------------------

    def _new_slot(self, i: int, init_state: int) -> _Slot:
        """Begin env ``i``'s episode from ``init_state``: everything observable follows from it."""
        pt = self.perturb
        key = SceneKey(
            self.family,
            self.split,
            self.n_objects,
            pt.extra_distractors,
            self.split == "heldout" if pt.paraphrase is None else pt.paraphrase,
            init_state,
            self.keep_out,
            pt.init_shift,
            pt.filler,
            pt.instruction,
        )
        scene = make_scene(key)
        self._init_states[i] = init_state
        view = View(self.image_size, scene.basket, scene.colours, self.perturb, self.keep_out)
        return _Slot(
            Episode(scene, self.wrong_grasp_cost),
            view,
            scene.colours,
            scene.shapes,
            scene.instruction,
            scene.template,
            key.rng(4),
        )

    def _render(self, i: int) -> None:
        slot = self._slots[i]
        slot.view.draw(self._images[i], slot.episode, slot.shapes, slot.noise_rng)
        if self._wrist is not None:
            slot.view.draw_wrist(self._wrist[i], self._images[i], slot.episode)

    def _obs(self) -> ObsBatch:
        t_max = float(self.max_episode_steps)
        state = np.array(
            [
                (
                    ep.gx,
                    ep.gy,
                    float(ep.closed),
                    float(ep.held >= 0),
                    ep.stage / len(ep.subgoals),
                    min(ep.t / t_max, 1.0),
                )
                for ep in (slot.episode for slot in self._slots)
            ],
            dtype=np.float32,
        )
        obs: ObsBatch = {
            "image": self._images.copy(),
            "state": state,
            "instruction": [slot.instruction for slot in self._slots],
        }
        if self._wrist is not None:
            obs["wrist_image"] = self._wrist.copy()
        return obs

    # -- VectorEnv API ----------------------------------------------------------------------------

    def reset(
        self, *, seed: int | Sequence[int | None] | None = None, options: dict[str, Any] | None = None
    ) -> tuple[ObsBatch, dict[str, Any]]:
        """Reset envs (see ``VectorEnv.reset``); an int seed gives env ``i`` seed ``seed + i``, with ``i``
        the env's index in the batch, so a partial reset reproduces that env's full-reset episode.
        """
        indices, seeds, init_states = reset_requests(self.num_envs, seed, options)
        for i, s, k in zip(indices, seeds, init_states, strict=True):
            if s is not None:
                self._seed_rngs[i] = np.random.default_rng(check_int("seed", s, 0))
            if k is None:
                k = int(self._seed_rngs[i].integers(2**31))
            self._slots[i] = self._new_slot(i, check_int("init_state", k, 0))
            self._render(i)
        return self._obs(), {"init_state": self._init_states.copy()}

    def step(
        self, actions: np.ndarray
    ) -> tuple[ObsBatch, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        a = np.asarray(actions, dtype=np.float32)
        if a.ndim == 2:
            a = a[:, None]
        n = self.num_envs
        if a.ndim != 3 or a.shape[0] != n or a.shape[2] != ACTION_DIM or a.shape[1] < 1:
            raise ValueError(
                f"actions must have shape [{n}, K, {ACTION_DIM}] or [{n}, {ACTION_DIM}], got {a.shape}"
            )
        chunks = np.clip(np.nan_to_num(a), -1.0, 1.0).tolist()
        reward = np.zeros(n, dtype=np.float32)
        cost = np.zeros(n, dtype=np.float32)
        steps = np.zeros(n, dtype=np.int32)
        terminated = np.zeros(n, dtype=bool)
        truncated = np.zeros(n, dtype=bool)
        active = [0] * a.shape[1]
        shaping, max_step, radius, t_max = (
            self.reward_shaping,
            self.max_step,
            self.grasp_radius,
            self.max_episode_steps,
        )
        for i, ep in enumerate(slot.episode for slot in self._slots):
            if ep.done:
                continue
            phi = ep.potential() if shaping else 0.0
            c = 0.0
            executed = 0
            for dx, dy, g in chunks[i]:
                c += ep.advance(dx, dy, g, max_step, radius)
                executed += 1
                if ep.stage >= len(ep.subgoals) or ep.t >= t_max:
                    ep.done = True
                    break
            success = ep.stage >= len(ep.subgoals)
            r = float(success) + (shaping * (ep.potential() - phi) if shaping else 0.0)
            reward[i], cost[i], steps[i] = r, c, executed
            terminated[i] = success
            truncated[i] = ep.done and not success
            for j in range(executed):
                active[j] += 1
            self._render(i)
        self.latency.wait(active)
        subgoals_done = np.array([slot.episode.stage for slot in self._slots], dtype=np.int32)
        info = {"success": terminated.copy(), "cost": cost, "steps": steps, "subgoals_done": subgoals_done}
        return self._obs(), reward, terminated, truncated, info

    def shield_model(self) -> ShieldModel:
        """State[0:2] is the gripper's (x, y); action (dx, dy) moves it by ``max_step`` per unit
        (clamped to the table, [0, 1]^2); g > 0 closes the gripper."""
        return ShieldModel(
            position_state_dims=(0, 1),
            position_action_dims=(0, 1),
            step_scale=(self.max_step, self.max_step),
            action_low=(-1.0, -1.0, -1.0),
            action_high=(1.0, 1.0, 1.0),
            reachable_low=(0.0, 0.0),
            reachable_high=(1.0, 1.0),
            gripper_action_dim=2,
            gripper_close_above=0.0,
        )

    @classmethod
    def suite_cells(cls, suite: str, env_kwargs: dict[str, Any], **context: Any) -> list[Any] | None:
        """Cells of the evaluation suites: ``asyncvla/envs/tabletop/suites.py``."""
        from asyncvla.envs.tabletop.suites import suite_cells

        return suite_cells(suite, env_kwargs, **context)

    def vocabulary(self) -> list[str]:
        """Words of all families and both splits, so one tokenizer serves every tabletop task."""
        return vocabulary()

    # -- scripted expert --------------------------------------------------------------------------

    def expert_actions(self, counterfactual: bool = False) -> np.ndarray:
        """float32 [n, A]: each env's next scripted-expert action (open and still for done envs);
        ``counterfactual``: the expert of the goal an ``other_object`` instruction names."""
        return np.array(
            [slot.episode.expert_action(self.max_step, counterfactual) for slot in self._slots],
            dtype=np.float32,
        )

    def expert_action_chunk(self, chunk_size: int) -> np.ndarray:
        """float32 [n, K, A]: the expert's next K actions, simulated on copies (the env is untouched).

        After a simulated episode end the chunk is padded with the expert's idle action, which the
        env never executes anyway (it stops at termination).
        """
        k = check_int("chunk_size", chunk_size, 1)
        out = np.empty((self.num_envs, k, ACTION_DIM), dtype=np.float32)
        for i, ep in enumerate(slot.episode for slot in self._slots):
            sim = ep.clone()
            for j in range(k):
                out[i, j] = sim.expert_action(self.max_step)
                if not sim.done:  # execute the float32 action, exactly as step() would
                    dx, dy, g = out[i, j].tolist()
                    sim.advance(dx, dy, g, self.max_step, self.grasp_radius)
                    sim.done = sim.success or sim.t >= self.max_episode_steps
        return out

    def pointing_targets(self) -> np.ndarray:
        """float32 [n, 3, 2]: (x, y) in [0, 1] image coordinates (x right, y down) of the current
        subgoal's object, of where it must go (the touch point for touch goals) and of the gripper.

        Labels for grounding pretraining ("point at the object the instruction names", "where is the
        gripper"), the skill a real VLA inherits from its vision-language backbone. A table point v
        is drawn at ``(v * scale + offset) / image_size`` (the view's zoom and camera shift; the
        identity without them), so the labels follow the picture.
        """
        out = np.empty((self.num_envs, 3, 2), dtype=np.float32)
        for i, slot in enumerate(self._slots):
            ep = slot.episode
            goal = ep.subgoals[min(ep.stage, len(ep.subgoals) - 1)]
            out[i, 0] = ep.pos[goal.target]
            out[i, 1] = goal.point
            out[i, 2] = (ep.gx, ep.gy)
            out[i] = (out[i] * slot.view.scale + slot.view.offset) / self.image_size
        return out

    def describe(self, i: int) -> dict[str, Any]:
        """Ground truth of env ``i`` (objects, targets, basket) for evaluation breakdowns and tests."""
        slot = self._slots[check_int("env index", i, 0, self.num_envs - 1)]
        ep = slot.episode
        return {
            "gripper": (ep.gx, ep.gy),
            "closed": ep.closed,
            "held": ep.held,
            "objects": [
                {"colour": COLOUR_NAMES[c], "shape": SHAPES[s], "pos": (p[0], p[1])}
                for c, s, p in zip(slot.colours, slot.shapes, ep.pos, strict=True)
            ],
            "targets": [goal.target for goal in ep.subgoals],
            "subgoals_done": ep.stage,
            "basket": slot.view.basket,
            "t": ep.t,
            "family": self.family,
            "target_colour": COLOUR_NAMES[slot.colours[ep.subgoals[0].target]],
            "target_shape": SHAPES[slot.shapes[ep.subgoals[0].target]],
            "instruction": slot.instruction,
            "template": slot.template,
            "counterfactual_goal": ep.alt_subgoals is not None,
            "counterfactual_targets": None
            if ep.alt_subgoals is None
            else [g.target for g in ep.alt_subgoals],
            "counterfactual_success": ep.counterfactual_success,
        }
