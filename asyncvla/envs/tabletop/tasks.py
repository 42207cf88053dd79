"""Task families, instruction templates and scene generation of the tabletop env.

Coordinates are normalized table coordinates in [0, 1]^2 with x to the right and y *down* (image
rows), so "above" / "top" mean smaller y. A scene is a pure function of its generation key
(family, split, object counts, init state id), which is what makes init states reproducible.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

FAMILIES = ("reach", "object", "spatial", "goal", "long")
SPLITS = ("train", "heldout")
# Chosen so the scripted expert finishes with a wide margin (it needs <= ~22 steps per pick-place).
DEFAULT_MAX_STEPS = {"reach": 24, "object": 48, "spatial": 48, "goal": 48, "long": 96}
# Fewest objects a family's layout needs (spatial: target, its twin and the reference object).
MIN_OBJECTS = {"reach": 1, "object": 1, "spatial": 3, "goal": 1, "long": 2}
MAX_OBJECTS = 6
MAX_EXTRA_DISTRACTORS = 4

SHAPES = ("cube", "ball", "triangle", "cross")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (225, 35, 35),
    "green": (40, 185, 60),
    "blue": (45, 85, 235),
    "yellow": (240, 220, 35),
    "purple": (155, 60, 205),
    "orange": (250, 140, 25),
    "cyan": (40, 215, 225),
}
COLOUR_NAMES = tuple(COLOURS)
# (colour index, shape index) combinations. The held-out targets form a "diagonal": every colour and
# every shape still occurs in training, only the combinations are new (compositional generalization).
ALL_COMBOS = tuple((c, s) for c in range(len(COLOUR_NAMES)) for s in range(len(SHAPES)))
HELDOUT_COMBOS = tuple((c, (3 * c + 1) % len(SHAPES)) for c in range(len(COLOUR_NAMES)))
TRAIN_COMBOS = tuple(combo for combo in ALL_COMBOS if combo not in HELDOUT_COMBOS)
TARGET_COMBOS = {"train": TRAIN_COMBOS, "heldout": HELDOUT_COMBOS}

# Corner mats (x0, y0, x1, y1), always drawn; basket positions sit between them on the edges.
ZONES: dict[str, tuple[float, float, float, float]] = {
    "top left corner": (0.0, 0.0, 0.2, 0.2),
    "top right corner": (0.8, 0.0, 1.0, 0.2),
    "bottom left corner": (0.0, 0.8, 0.2, 1.0),
    "bottom right corner": (0.8, 0.8, 1.0, 1.0),
}
BASKET_CENTRES = ((0.5, 0.13), (0.5, 0.87), (0.13, 0.5), (0.87, 0.5))
BASKET_HALF = 0.11
RELATIONS: dict[str, tuple[int, int]] = {
    "to the left of": (-1, 0),
    "to the right of": (1, 0),
    "above": (0, -1),
    "below": (0, 1),
}
KEEP_OUT_MARGIN = 0.08
"""Object centres and gripper starts stay this far outside a keep-out region (an object's size)."""
# Pairwise distance between object centres at reset: > 2 x grasp radius, so a grasp is unambiguous.
MIN_OBJECT_DIST = 0.15
SPATIAL_OFFSET = 0.18
GOAL_VARIANTS = 8
"""Consecutive init states ``8 s .. 8 s + 7`` of the goal family share scene ``s``; only the goal differs."""

# Templates per goal kind: (train paraphrases, held-out paraphrases). Placeholders: {obj}, {zone},
# {a}, {b}. Only lowercase letters, spaces and commas are emitted (see ``INSTRUCTION_CHARSET``).
TEMPLATES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "touch": (
        ("touch the {obj}", "reach the {obj}", "move the gripper to the {obj}"),
        ("go to the {obj}", "point at the {obj} with the gripper"),
    ),
    "basket": (
        (
            "pick up the {obj} and place it in the basket",
            "put the {obj} in the basket",
            "grab the {obj} and drop it into the basket",
        ),
        ("move the {obj} into the basket", "place the {obj} inside the basket"),
    ),
    "zone": (
        (
            "pick up the {obj} and place it on the {zone}",
            "put the {obj} on the {zone}",
            "move the {obj} to the {zone}",
        ),
        ("carry the {obj} over to the {zone}", "take the {obj} to the {zone}"),
    ),
    "long": (
        (
            "put the {a} in the basket, then put the {b} in the basket",
            "first place the {a} in the basket, then the {b}",
            "pick up the {a} and put it in the basket, then do the same with the {b}",
        ),
        (
            "put the {a} into the basket followed by the {b}",
            "move the {a} to the basket first and the {b} second",
        ),
    ),
}
INSTRUCTION_CHARSET = "abcdefghijklmnopqrstuvwxyz ,"
FILLERS = ("please", "now", "carefully", "gently")
"""Words no template uses, inserted by the ``filler`` perturbation (a wording the policy never saw)."""
MAX_FILLERS = len(FILLERS)
INSTRUCTION_MODES = ("true", "blank", "other_episode", "other_object")
"""What the ``instruction`` perturbation shows the policy (the goal is always the true one):
the true instruction, an empty one, the instruction of another init state, or the true one with a
different object of the scene named (whose goal the env also tracks, as the counterfactual goal)."""

Rect = tuple[float, float, float, float]


@dataclass(frozen=True)
class Subgoal:
    """One step of a task: ``touch`` the target, or ``place`` it (release it inside ``region``)."""

    kind: str
    target: int
    region: Rect | None
    point: tuple[float, float]
    """Where the scripted expert touches / releases (the object for touch, a spot inside the region)."""


@dataclass
class Scene:
    """Everything an episode starts from; positions are mutable copies owned by the episode."""

    colours: list[int]
    shapes: list[int]
    pos: list[list[float]]
    gripper: tuple[float, float]
    basket: Rect
    subgoals: list[Subgoal]
    instruction: str
    keep_out: Rect | None = None
    template: str = ""
    """The instruction's template, placeholders unfilled (``put the {obj} in the basket``)."""
    alt_subgoals: list[Subgoal] | None = None
    """The goal the instruction names under ``instruction="other_object"`` (None: no such object)."""


def tokenize(text: str) -> list[str]:
    """Lowercase, turn ``,.`` into spaces and split on whitespace (as the policies' word tokenizer does)."""
    return text.lower().replace(",", " ").replace(".", " ").split()


def vocabulary() -> list[str]:
    """Sorted words of every training instruction of every family (one tokenizer fits all tasks).

    Held-out paraphrases are made of words a policy never trains on; a word-level tokenizer built
    from this list reads the words they do not share with training as ``<unk>`` (as it reads the
    ``filler`` perturbation's words), not as embeddings that no gradient ever reached. Every
    colour, shape, zone and relation name is in it, so held-out colour/shape combinations are
    spelled in known words.
    """
    words: set[str] = set()
    for train, _ in TEMPLATES.values():
        for template in train:
            for key in ("{obj}", "{zone}", "{a}", "{b}"):
                template = template.replace(key, " ")
            words.update(tokenize(template))
    for phrase in (*COLOUR_NAMES, *SHAPES, *ZONES, *RELATIONS):
        words.update(tokenize(phrase))
    return sorted(words)


def _rect(centre: tuple[float, float], half: float) -> Rect:
    return (centre[0] - half, centre[1] - half, centre[0] + half, centre[1] + half)


def _inside(p: tuple[float, float] | list[float], rect: Rect, margin: float = 0.0) -> bool:
    return rect[0] - margin <= p[0] <= rect[2] + margin and rect[1] - margin <= p[1] <= rect[3] + margin


def _free(
    p: tuple[float, float],
    placed: list[list[float]],
    basket: Rect,
    min_dist: float,
    keep_out: Rect | None = None,
) -> bool:
    """Whether an object centre at ``p`` is on the table, off the mats, basket and keep-out region
    and clear of ``placed``."""
    if not (0.08 <= p[0] <= 0.92 and 0.08 <= p[1] <= 0.92):
        return False
    if _inside(p, basket, 0.1) or any(_inside(p, z, 0.06) for z in ZONES.values()):
        return False
    if keep_out is not None and _inside(p, keep_out, KEEP_OUT_MARGIN):
        return False
    return all((p[0] - q[0]) ** 2 + (p[1] - q[1]) ** 2 >= min_dist**2 for q in placed)


def _sample_free(
    rng: np.random.Generator,
    placed: list[list[float]],
    basket: Rect,
    min_dist: float = MIN_OBJECT_DIST,
    keep_out: Rect | None = None,
) -> list[float]:
    for _ in range(1000):
        p = (float(rng.uniform(0.08, 0.92)), float(rng.uniform(0.08, 0.92)))
        if _free(p, placed, basket, min_dist, keep_out):
            return [p[0], p[1]]
    raise RuntimeError("no free spot on the table; use fewer objects")


def _distinct_combos(
    rng: np.random.Generator, count: int, exclude: list[tuple[int, int]], shape_ban: int = -1
) -> list[tuple[int, int]]:
    """``count`` colour/shape combos not in ``exclude``, none with shape ``shape_ban``, all distinct."""
    pool = [c for c in ALL_COMBOS if c not in exclude and c[1] != shape_ban]
    picks = rng.choice(len(pool), size=count, replace=False)
    return [pool[int(i)] for i in picks]


def _name(combo: tuple[int, int]) -> str:
    return f"{COLOUR_NAMES[combo[0]]} {SHAPES[combo[1]]}"


def _place_subgoal(target: int, region: Rect, point: tuple[float, float]) -> Subgoal:
    return Subgoal("place", target, region, point)


def _touch_subgoal(target: int, pos: list[list[float]]) -> Subgoal:
    return Subgoal("touch", target, None, (pos[target][0], pos[target][1]))


@dataclass(frozen=True)
class SceneKey:
    """The generation key of a scene; ``heldout_phrases`` only changes the instruction wording."""

    family: str
    split: str
    n_objects: tuple[int, int]
    extra_distractors: int
    heldout_phrases: bool
    init_state: int
    keep_out: Rect | None = None
    """A region no object, gripper start or basket lies in (the tasks never need to enter it)."""
    init_shift: float = 0.0
    """In [0, 1]: objects drawn toward the table centre by up to half their distance to it, the
    gripper start moved toward its nearest table corner (at 1: in it, over a mat)."""
    filler: int = 0
    """Filler words (``FILLERS``) inserted into the instruction at random word boundaries."""
    instruction: str = "true"
    """One of ``INSTRUCTION_MODES``."""

    def rng(self, stream: int, init_state: int | None = None) -> np.random.Generator:
        k = self.init_state if init_state is None else init_state
        ids = (FAMILIES.index(self.family), SPLITS.index(self.split), *self.n_objects, stream)
        return np.random.default_rng([k, *ids, 0x7AB1E])


def make_scene(key: SceneKey) -> Scene:
    """Build the layout, subgoals and instruction of one init state.

    Layout, distractors and wording use separate RNG streams so that the ``extra_distractors`` and
    ``paraphrase`` perturbations leave the rest of the scene unchanged (matched evaluations).
    """
    family = key.family
    layout_state = key.init_state // GOAL_VARIANTS if family == "goal" else key.init_state
    rng = key.rng(0, layout_state)
    lo, hi = key.n_objects
    count = int(rng.integers(lo, hi + 1))
    basket = _rect(BASKET_CENTRES[int(rng.integers(len(BASKET_CENTRES)))], BASKET_HALF)
    basket_centre = ((basket[0] + basket[2]) / 2, (basket[1] + basket[3]) / 2)
    allowed = TARGET_COMBOS[key.split]
    zone_names = list(ZONES)
    pos: list[list[float]] = []
    ref_text = ""
    if family == "spatial":
        target_combo = allowed[int(rng.integers(len(allowed)))]
        ref_combo = _distinct_combos(rng, 1, [target_combo], shape_ban=target_combo[1])[0]
        relation = list(RELATIONS)[int(rng.integers(len(RELATIONS)))]
        d = RELATIONS[relation]
        while True:  # reference in the middle, target on the named side, identical twin opposite
            ref = (float(rng.uniform(0.25, 0.75)), float(rng.uniform(0.25, 0.75)))
            j1, j2 = rng.uniform(-0.03, 0.03, size=2)
            tgt = [ref[0] + SPATIAL_OFFSET * d[0] + j1 * d[1], ref[1] + SPATIAL_OFFSET * d[1] + j1 * d[0]]
            twin = [ref[0] - SPATIAL_OFFSET * d[0] + j2 * d[1], ref[1] - SPATIAL_OFFSET * d[1] + j2 * d[0]]
            if all(_free(p, [], basket, 0, key.keep_out) for p in (ref, tgt, twin)):
                break
        pos = [tgt, twin, [ref[0], ref[1]]]
        others = _distinct_combos(rng, count - 3, [target_combo, ref_combo], shape_ban=target_combo[1])
        combos = [target_combo, target_combo, ref_combo, *others]
        ref_text = f"{SHAPES[target_combo[1]]} {relation} the {_name(ref_combo)}"
    else:
        n_targets = 2 if family == "long" else 1
        picks = rng.choice(len(allowed), size=n_targets, replace=False)
        targets = [allowed[int(i)] for i in picks]
        combos = targets + _distinct_combos(rng, count - n_targets, targets)
    while len(pos) < count:
        pos.append(_sample_free(rng, pos, basket, keep_out=key.keep_out))
    gripper = _sample_free(rng, pos, basket, 0.12, key.keep_out)

    extra_rng = key.rng(1, layout_state)
    extra = _distinct_combos(
        extra_rng, key.extra_distractors, combos, shape_ban=combos[0][1] if ref_text else -1
    )
    for _ in extra:
        pos.append(_sample_free(extra_rng, [*pos, gripper], basket, keep_out=key.keep_out))
    combos = combos + extra
    if key.init_shift:
        pos, gripper = _shift_init(pos, gripper, key.init_shift)

    goal_rng = key.rng(2)
    if family == "goal":
        # The same scene serves GOAL_VARIANTS goals; any split-allowed object can be the target.
        kind = ("basket", "zone", "touch")[int(goal_rng.integers(3))]
        candidates = [i for i, c in enumerate(combos) if c in allowed]
        target = candidates[int(goal_rng.integers(len(candidates)))]
    else:
        kind = {"reach": "touch", "object": "basket", "spatial": "zone", "long": "long"}[family]
        target = 0
    zone = zone_names[int(goal_rng.integers(len(zone_names)))]
    zone_rect = ZONES[zone]
    zone_centre = ((zone_rect[0] + zone_rect[2]) / 2, (zone_rect[1] + zone_rect[3]) / 2)

    if kind == "touch":
        subgoals = [_touch_subgoal(target, pos)]
    elif kind == "basket":
        subgoals = [_place_subgoal(target, basket, basket_centre)]
    elif kind == "zone":
        subgoals = [_place_subgoal(target, zone_rect, zone_centre)]
    else:  # two objects side by side in the basket, in order
        subgoals = [
            _place_subgoal(0, basket, (basket_centre[0] - 0.05, basket_centre[1])),
            _place_subgoal(1, basket, (basket_centre[0] + 0.05, basket_centre[1])),
        ]

    phrases = TEMPLATES[kind][1 if key.heldout_phrases else 0]
    t_index = int(key.rng(3).integers(len(phrases)))
    names = [_name(c) for c in combos]
    words = {
        "obj": ref_text or names[target],
        "zone": zone,
        "a": names[0],
        "b": names[1] if len(names) > 1 else "",
    }
    alt_subgoals = None
    if key.instruction == "other_object":
        alt = _other_object(key, combos, pos, ref_text, subgoals)
        if alt is not None:
            alt_subgoals, alt_words = alt
            words = {**words, **alt_words}
    instruction = phrases[t_index].format(**words)
    if key.instruction == "blank":
        instruction = ""
    elif key.instruction == "other_episode":  # GOAL_VARIANTS apart: another layout in every family
        other = replace(key, init_state=key.init_state + GOAL_VARIANTS, instruction="true", filler=0)
        instruction = make_scene(other).instruction
    if key.filler and instruction:
        instruction = _insert_fillers(instruction, key.filler, key.rng(5))
    return Scene(
        colours=[c for c, _ in combos],
        shapes=[s for _, s in combos],
        pos=pos,
        gripper=(gripper[0], gripper[1]),
        basket=basket,
        subgoals=subgoals,
        instruction=instruction,
        keep_out=key.keep_out,
        template=phrases[t_index],
        alt_subgoals=alt_subgoals,
    )


def _shift_init(
    pos: list[list[float]], gripper: list[float], s: float
) -> tuple[list[list[float]], list[float]]:
    """The ``init_shift`` perturbation: p -> c + (1 - s/2)(p - c) about the table centre c for every
    object (relations between objects are kept; pairwise distances shrink, down to half the
    training minimum at s = 1), and the gripper start g -> g + s (corner - g), toward its nearest
    corner point (0.04 or 0.96 on each axis; training starts are never on a corner mat)."""
    k = 1.0 - 0.5 * s
    pos = [[0.5 + k * (x - 0.5), 0.5 + k * (y - 0.5)] for x, y in pos]
    corner = [0.04 if v < 0.5 else 0.96 for v in gripper]
    return pos, [g + s * (c - g) for g, c in zip(gripper, corner, strict=True)]


def _other_object(
    key: SceneKey,
    combos: list[tuple[int, int]],
    pos: list[list[float]],
    ref_text: str,
    subgoals: list[Subgoal],
) -> tuple[list[Subgoal], dict[str, str]] | None:
    """The ``other_object`` instruction: the same template naming another object of the scene, and
    the subgoals of that instruction. Spatial tasks name the target's twin (the same object on the
    opposite side of the reference); others a random object whose colour/shape differs from every
    target's. None when the scene has no such object."""
    if ref_text:  # spatial: "<shape> <relation> the <reference>"; the twin is object 1
        shape, rest = ref_text.split(" ", 1)
        relation = next(r for r in RELATIONS if rest.startswith(r))
        d = RELATIONS[relation]
        opposite = next(r for r, v in RELATIONS.items() if v == (-d[0], -d[1]))
        first = subgoals[0]
        twin = Subgoal(first.kind, 1, first.region, first.point)
        return [twin], {"obj": f"{shape} {opposite}{rest[len(relation) :]}"}
    targets = {g.target for g in subgoals}
    taken = {combos[t] for t in targets}
    candidates = [i for i, c in enumerate(combos) if i not in targets and c not in taken]
    if not candidates:
        return None
    alt = candidates[int(key.rng(6).integers(len(candidates)))]
    first = subgoals[0]
    if first.kind == "touch":
        replaced = _touch_subgoal(alt, pos)
    else:
        replaced = Subgoal(first.kind, alt, first.region, first.point)
    # long tasks name the first object as {a}; single-object tasks as {obj}
    name = _name(combos[alt])
    return [replaced, *subgoals[1:]], ({"a": name} if len(subgoals) > 1 else {"obj": name})


def _insert_fillers(text: str, count: int, rng: np.random.Generator) -> str:
    """Insert the first ``count`` of ``FILLERS`` at random word boundaries of ``text``."""
    words = text.split(" ")
    for filler in FILLERS[:count]:
        words.insert(int(rng.integers(len(words) + 1)), filler)
    return " ".join(words)
