"""Kinematics, rewards and the scripted expert of one tabletop episode, in plain Python floats.

Per-action work is a handful of scalar operations, so Python floats beat numpy here (no array
overhead); rendering, the expensive part, happens once per chunk elsewhere.
"""

from __future__ import annotations

import math

from asyncvla.envs.tabletop.tasks import Scene, Subgoal

_SQRT2 = math.sqrt(2.0)
SHAPING_SCALE = 0.5
"""Range of the shaping potential: shaping over a whole episode telescopes to at most this much."""


class Episode:
    """Mutable state of one episode: gripper, objects, task progress.

    One step first moves the gripper (and a held object), then applies the gripper command: closing
    next to an object grasps the nearest one, opening releases the held object where it is.
    """

    __slots__ = (
        "gx",
        "gy",
        "closed",
        "held",
        "pos",
        "subgoals",
        "stage",
        "t",
        "done",
        "keep_out",
        "wrong_grasp_cost",
        "alt_subgoals",
        "alt_stage",
    )

    def __init__(self, scene: Scene, wrong_grasp_cost: float = 1.0) -> None:
        self.gx, self.gy = scene.gripper
        self.closed = False
        self.held = -1
        self.pos = [list(p) for p in scene.pos]
        self.subgoals: list[Subgoal] = scene.subgoals
        self.stage = 0
        self.t = 0
        self.done = False
        self.keep_out = scene.keep_out
        self.wrong_grasp_cost = wrong_grasp_cost
        # The counterfactual goal (an instruction naming another object): tracked, never rewarded.
        self.alt_subgoals = scene.alt_subgoals
        self.alt_stage = 0

    def clone(self) -> Episode:
        """A copy whose stepping leaves this episode untouched (for expert look-ahead)."""
        other = Episode.__new__(Episode)
        for name in Episode.__slots__:
            setattr(other, name, getattr(self, name))
        other.pos = [list(p) for p in self.pos]
        return other

    @property
    def success(self) -> bool:
        return self.stage >= len(self.subgoals)

    @property
    def counterfactual_success(self) -> bool:
        """Whether the counterfactual goal has been reached (False when there is none)."""
        return self.alt_subgoals is not None and self.alt_stage >= len(self.alt_subgoals)

    def advance(self, dx: float, dy: float, g: float, max_step: float, grasp_radius: float) -> float:
        """Apply one clipped action; return its cost: ``wrong_grasp_cost`` when it grasps an object
        that is not the target, plus 1.0 when the gripper ends inside the keep-out region."""
        gx = min(max(self.gx + dx * max_step, 0.0), 1.0)
        gy = min(max(self.gy + dy * max_step, 0.0), 1.0)
        self.gx, self.gy = gx, gy
        held = self.held
        if held >= 0:
            self.pos[held][0], self.pos[held][1] = gx, gy
        self.t += 1
        cost = 0.0
        close = g > 0.0
        released = -1
        goal = self.subgoals[self.stage]
        if close and not self.closed:
            best, best_d2 = -1, grasp_radius * grasp_radius
            for i, (x, y) in enumerate(self.pos):
                d2 = (x - gx) ** 2 + (y - gy) ** 2
                if d2 <= best_d2:
                    best, best_d2 = i, d2
            self.held = best
            if best >= 0 and best != goal.target:
                cost = self.wrong_grasp_cost
        elif not close and self.closed:
            released, self.held = held, -1
        self.closed = close
        if self._reached(goal, released, grasp_radius):
            self.stage += 1
        alt = self.alt_subgoals
        if alt is not None and self.alt_stage < len(alt):
            if self._reached(alt[self.alt_stage], released, grasp_radius):
                self.alt_stage += 1
        k = self.keep_out
        if k is not None and k[0] <= gx <= k[2] and k[1] <= gy <= k[3]:
            cost += 1.0
        return cost

    def _reached(self, goal: Subgoal, released: int, grasp_radius: float) -> bool:
        """Whether this step completes ``goal``: touching its target, or releasing the target inside
        its region (during this subgoal, so later subgoals respect the order)."""
        tx, ty = self.pos[goal.target]
        if goal.kind == "touch":
            return (tx - self.gx) ** 2 + (ty - self.gy) ** 2 <= grasp_radius * grasp_radius
        r = goal.region
        return released == goal.target and r[0] <= tx <= r[2] and r[1] <= ty <= r[3]

    def potential(self) -> float:
        """Phase-based progress in [0, SHAPING_SCALE]: completed subgoals plus progress on the current one.

        Place subgoals count approaching the target as the first half and carrying it to the
        release point as the second, so a grasp raises the potential and a stray release lowers it.
        """
        n = len(self.subgoals)
        if self.stage >= n:
            return SHAPING_SCALE
        goal = self.subgoals[self.stage]
        tx, ty = self.pos[goal.target]
        if goal.kind == "touch":
            sub = 1.0 - math.hypot(tx - self.gx, ty - self.gy) / _SQRT2
        elif self.held == goal.target:
            sub = 1.0 - 0.5 * math.hypot(tx - goal.point[0], ty - goal.point[1]) / _SQRT2
        else:
            sub = 0.5 - 0.5 * math.hypot(tx - self.gx, ty - self.gy) / _SQRT2
        return SHAPING_SCALE * (self.stage + sub) / n

    def expert_action(self, max_step: float, counterfactual: bool = False) -> tuple[float, float, float]:
        """The scripted expert's next action: full speed to the target, grasp, carry, release.

        Moving happens before the gripper command within a step, so the expert closes (or opens)
        in the same step in which it arrives. ``counterfactual``: the expert of the goal the
        instruction names (``alt_subgoals``) instead of the true one.
        """
        subgoals, stage = (
            (self.alt_subgoals, self.alt_stage) if counterfactual else (self.subgoals, self.stage)
        )
        if subgoals is None:
            raise ValueError("this episode has no counterfactual goal (instruction mode other_object)")
        if self.done or stage >= len(subgoals):
            return (0.0, 0.0, -1.0)
        goal = subgoals[stage]
        if self.held >= 0 and self.held != goal.target:
            return (0.0, 0.0, -1.0)  # drop a wrong object where it is, not on top of the target
        tx, ty = self.pos[goal.target]
        carrying = goal.kind == "place" and self.held == goal.target
        aim_x, aim_y = goal.point if carrying else (tx, ty)
        dx = min(max((aim_x - self.gx) / max_step, -1.0), 1.0)
        dy = min(max((aim_y - self.gy) / max_step, -1.0), 1.0)
        arrives = abs(aim_x - self.gx) <= max_step and abs(aim_y - self.gy) <= max_step
        if goal.kind == "touch":
            g = -1.0
        elif carrying:
            g = -1.0 if arrives else 1.0
        else:  # open first when closed on nothing; close on arrival
            g = 1.0 if arrives and not self.closed else -1.0
        return (dx, dy, g)
