"""Cells of an evaluation suite and the runner that evaluates them over matched episodes.

A cell is one env setting (overrides of the run's env kwargs). Every cell runs the same episodes:
episode j starts from init state (and seed) ``seed_offset + j``, so two cells whose settings keep
the layout (a perturbation of the picture or of the instruction) differ only by that setting and
compare episode by episode. Episodes run in fixed chunks (``chunk`` envs each, ``eval.num_envs``
from the CLI) over a pool of processes; the chunking, and with it every policy batch, does not
depend on the number of processes, so the results do not either.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from asyncvla.config import ShieldConfig
from asyncvla.envs import make_env
from asyncvla.policies import Policy

CHUNK = 50
"""Default episodes per task of the pool (and envs per task): one policy batch holds at most this
many. Heavy simulators want fewer (each LIBERO env holds its own MuJoCo model and textures)."""


@dataclass(frozen=True)
class Cell:
    """One env setting of a suite."""

    name: str
    """Unique within the suite (``camera_shift=4``, ``clean``)."""
    overrides: dict[str, Any] = field(default_factory=dict)
    """Env kwargs replacing the run's; a ``perturb`` dict is merged key by key into the run's."""
    axis: str = ""
    """What the cell varies (a robustness axis, a generalization kind, a language mode)."""
    level: float = 0.0
    """How strongly (a robustness strength; 0 for the reference cell)."""
    matched: bool = True
    """Whether its episodes share the reference cell's layouts (paired differences apply)."""


Axes = dict[str, tuple[tuple[float, ...], Callable[[float], dict[str, Any]]]]
"""Robustness axis -> (default strengths, strength -> ``perturb`` entries), as an env declares them."""


def integer_strength(axis: str, lo: int, hi: int) -> Callable[[float], int]:
    """A strength -> int check for axes whose strengths count something (pixels, words, objects)."""

    def value(s: float) -> int:
        if float(s) != int(s) or not lo <= int(s) <= hi:
            raise ValueError(f"{axis} strength must be an integer in [{lo}, {hi}], got {s:g}")
        return int(s)

    return value


def robustness_cells(
    table: Axes, axes: list[str] | None = None, strengths: list[float] | None = None
) -> list[Cell]:
    """``clean`` and one cell per (axis, strength) of ``table``: every axis at its default
    strengths, or the named ``axes``; ``strengths`` replace the defaults of exactly one axis."""
    names = list(table) if not axes else axes
    unknown = [a for a in names if a not in table]
    if unknown:
        raise ValueError(f"unknown robustness axis {unknown[0]!r}; allowed: {', '.join(table)}")
    if strengths is not None and len(names) != 1:
        raise ValueError("strengths apply to one axis: name exactly one axis with them")
    cells = [Cell("clean")]
    for axis in names:
        default, perturb = table[axis]
        for s in strengths or default:
            cells.append(Cell(f"{axis}={s:g}", {"perturb": perturb(s)}, axis=axis, level=float(s)))
    return cells


def cell_kwargs(base: dict[str, Any], cell: Cell) -> dict[str, Any]:
    """The env kwargs of ``cell``: the run's (without emulated latency, which only costs time)
    with the cell's overrides."""
    out = {k: v for k, v in base.items() if k != "latency"}
    for key, value in cell.overrides.items():
        if key == "perturb" and isinstance(value, dict):
            out["perturb"] = {**(out.get("perturb") or {}), **value}
        else:
            out[key] = value
    return out


def check_cells(env_name: str, base: dict[str, Any], cells: list[Cell]) -> None:
    """Build each cell's env once (one slot): a setting the env refuses raises ValueError naming the
    cell, before any episode runs."""
    for cell in cells:
        try:
            make_env(env_name, num_envs=1, **cell_kwargs(base, cell)).close()
        except (TypeError, ValueError) as e:
            raise ValueError(f"cell {cell.name}: {e}") from None


_POLICY: Policy | None = None


def _load_worker(checkpoint: str) -> None:
    from asyncvla.policies import load_policy

    global _POLICY
    torch.set_num_threads(1)
    _POLICY = load_policy(Path(checkpoint))
    _POLICY.eval()


def _chunk(
    policy: Policy,
    env_name: str,
    kwargs: dict[str, Any],
    first: int,
    count: int,
    deterministic: bool,
    shield: ShieldConfig | None,
) -> list[dict[str, Any]]:
    """Episodes ``first .. first + count - 1`` of one cell: success, return, length, cost and the
    env's scalar ground truth of the final state (``describe``), one dict per episode."""
    from asyncvla.evaluation import policy_episodes

    eps, facts = policy_episodes(
        policy, env_name, kwargs, count, count, first, deterministic, shield, with_facts=True
    )
    return [
        {"success": e.success, "return": e.ret, "length": e.length, "cost": e.cost, **f}
        for e, f in zip(eps, facts, strict=True)
    ]


def _pooled_chunk(*args: Any) -> list[dict[str, Any]]:
    assert _POLICY is not None
    return _chunk(_POLICY, *args)


def run_cells(
    cells: list[Cell],
    env_name: str,
    base_kwargs: dict[str, Any],
    episodes: int,
    seed_offset: int,
    policy: Policy | None = None,
    checkpoint: Path | None = None,
    workers: int = 1,
    deterministic: bool = True,
    shield: ShieldConfig | None = None,
    on_done: Callable[[int], None] | None = None,
    chunk: int = CHUNK,
) -> dict[str, list[dict[str, Any]]]:
    """Per cell name, its ``episodes`` episode records in episode order.

    ``workers`` 1 runs in this process with ``policy``; more run a spawned process pool, each
    process loading ``checkpoint`` once. Both use one torch thread per process (the same kernels,
    hence the same actions). ``on_done(n)`` after every finished chunk of n episodes.
    """
    if episodes < 1 or chunk < 1:
        raise ValueError(f"episodes and chunk must be >= 1, got {episodes}, {chunk}")
    tasks = [
        (ci, (env_name, cell_kwargs(base_kwargs, cell), seed_offset + s, min(chunk, episodes - s)))
        for ci, cell in enumerate(cells)
        for s in range(0, episodes, chunk)
    ]
    results: list[list[dict[str, Any]]] = [[] for _ in tasks]
    if workers <= 1:
        if policy is None:
            raise ValueError("run_cells in one process needs the policy")
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        was_training = policy.training
        policy.eval()
        try:
            for k, (_, args) in enumerate(tasks):
                results[k] = _chunk(policy, *args, deterministic, shield)
                if on_done is not None:
                    on_done(args[3])
        finally:
            torch.set_num_threads(threads)
            policy.train(was_training)
    else:
        if checkpoint is None:
            raise ValueError("run_cells with several workers needs the checkpoint path")
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(
            workers, mp_context=ctx, initializer=_load_worker, initargs=(str(checkpoint),)
        ) as pool:
            futures = [pool.submit(_pooled_chunk, *args, deterministic, shield) for _, args in tasks]
            for k, fut in enumerate(futures):
                results[k] = fut.result()
                if on_done is not None:
                    on_done(tasks[k][1][3])
    out: dict[str, list[dict[str, Any]]] = {cell.name: [] for cell in cells}
    for (ci, _), chunk in zip(tasks, results, strict=True):
        out[cells[ci].name].extend(chunk)
    return out


def successes(records: list[dict[str, Any]], key: str = "success") -> np.ndarray:
    """float64 [n]: ``key`` of each episode record (1.0 / 0.0 for a success flag)."""
    return np.array([float(r[key]) for r in records], dtype=np.float64)
