"""Evaluation suites: robustness, generalization, per-group success and language grounding.

``asyncvla eval CHECKPOINT --suite NAME --out DIR`` runs one suite: the env names the cells
(``VectorEnv.suite_cells``: env settings over matched episodes), ``cells.run_cells`` evaluates them
in parallel, and the suite (registered in ``SUITES``, one file each) turns the episode records
into its summary: every rate with a Wilson 95% interval, every difference between cells with a
bootstrap 95% interval (paired over episodes where the cells share their layouts). It writes
``DIR/<suite>.json`` (summary and per-episode successes), ``DIR/<suite>.csv`` (one row per table
line), ``DIR/<suite>.png`` and returns the summary.
"""

from __future__ import annotations

import csv
import json
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from asyncvla.config import ShieldConfig
from asyncvla.policies import Policy
from asyncvla.registry import Registry
from asyncvla.stats import grouped_bootstrap, paired_bootstrap, wilson_interval
from asyncvla.trust.suites.cells import CHUNK, Cell, check_cells, run_cells, successes


class Suite(ABC):
    """An analysis of cell records: a summary, the table of it (CSV and console) and a figure."""

    name = ""
    columns: tuple[str, ...] = ()
    """The table's columns (CSV header and console), keys of ``rows``' dicts."""

    @abstractmethod
    def summarize(self, cells: list[Cell], records: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
        """The suite's results from each cell's episode records (``cells[0]`` is the reference)."""

    @abstractmethod
    def rows(self, summary: dict[str, Any]) -> list[dict[str, Any]]:
        """The table lines of ``summary``."""

    @abstractmethod
    def plot(self, summary: dict[str, Any], path: Path) -> None:
        """Write the suite's PNG figure to ``path``."""

    def headline(self, summary: dict[str, Any]) -> str | None:
        """One line to print under the table (None: nothing beyond the table)."""
        return None


SUITES: Registry[type[Suite]] = Registry("evaluation suite")


def rate(values: np.ndarray) -> dict[str, float]:
    """Mean of 0/1 values with its Wilson 95% interval."""
    low, high = wilson_interval(int(round(values.sum())), len(values))
    return {"episodes": int(len(values)), "success": float(values.mean()), "ci95_low": low, "ci95_high": high}


def difference(reference: np.ndarray, values: np.ndarray, matched: bool, seed: int = 0) -> dict[str, Any]:
    """mean(values) - mean(reference) with a bootstrap 95% interval: paired (resampling episodes,
    which keeps each pair) when the cells share their layouts, otherwise each cell resampled on
    its own."""
    if matched:
        return {**paired_bootstrap(reference, values, seed=seed), "paired": True}
    value, low, high = grouped_bootstrap({"a": reference, "b": values}, lambda m: m["b"] - m["a"], seed=seed)
    return {"diff": value, "ci95_low": low, "ci95_high": high, "paired": False}


def per_cell(cells: list[Cell], records: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Each cell's rate and its difference from the first (reference) cell: ``diff``,
    ``diff_ci95_low``, ``diff_ci95_high`` and whether the interval is ``paired`` (0 for the reference)."""
    ref = successes(records[cells[0].name])
    out = []
    for k, cell in enumerate(cells):
        values = successes(records[cell.name])
        d = {"diff": 0.0, "ci95_low": 0.0, "ci95_high": 0.0, "paired": True}
        if k:
            d = difference(ref, values, cell.matched, seed=k)
        out.append(
            {
                "cell": cell.name,
                "axis": cell.axis,
                "level": cell.level,
                **rate(values),
                "diff": d["diff"],
                "diff_ci95_low": d["ci95_low"],
                "diff_ci95_high": d["ci95_high"],
                "paired": d["paired"],
            }
        )
    return out


def bars(table: list[dict[str, Any]], path: Path, title: str) -> None:
    """Horizontal bars of each row's success with its Wilson interval."""
    from matplotlib.figure import Figure

    names = [r["cell"] for r in table]
    values = np.array([r["success"] for r in table])
    low, high = np.array([r["ci95_low"] for r in table]), np.array([r["ci95_high"] for r in table])
    fig = Figure(figsize=(7.0, 0.35 * len(names) + 1.2))
    ax = fig.add_subplot()
    ax.barh(range(len(names)), values, xerr=[values - low, high - values], color="#4c72b0", capsize=3)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("success rate")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _fmt(value: Any) -> Any:
    return round(value, 4) if isinstance(value, float) else value


def run_suite(
    name: str,
    env_name: str,
    env_cls: Any,
    env_kwargs: dict[str, Any],
    episodes: int,
    seed_offset: int,
    out: Path,
    policy: Policy | None = None,
    checkpoint: Path | None = None,
    workers: int = 1,
    deterministic: bool = True,
    shield: ShieldConfig | None = None,
    context: dict[str, Any] | None = None,
    on_done: Callable[[int], None] | None = None,
    chunk: int = CHUNK,
) -> dict[str, Any]:
    """Run suite ``name`` and write its files under ``out``; returns the summary.

    Bad input (an unknown suite, a suite the env has no cells for, a setting the env refuses)
    raises KeyError or ValueError before any episode runs.
    """
    suite = SUITES.get(name)()
    make_cells = getattr(env_cls, "suite_cells", None)
    cells = make_cells(name, env_kwargs, **(context or {})) if make_cells is not None else None
    if not cells:
        raise ValueError(f"env {env_name!r} defines no cells for suite {name!r}")
    check_cells(env_name, env_kwargs, cells)
    records = run_cells(
        cells,
        env_name,
        env_kwargs,
        episodes,
        seed_offset,
        policy=policy,
        checkpoint=checkpoint,
        workers=workers,
        deterministic=deterministic,
        shield=shield,
        on_done=on_done,
        chunk=chunk,
    )
    summary = {
        "suite": name,
        "env": env_name,
        "episodes_per_cell": episodes,
        "envs_per_chunk": chunk,
        "seed_offset": seed_offset,
        "deterministic": deterministic,
        **suite.summarize(cells, records),
        "cells": [
            {"name": c.name, "axis": c.axis, "level": c.level, "overrides": c.overrides, "matched": c.matched}
            for c in cells
        ],
        "per_episode_success": {c.name: [int(v) for v in successes(records[c.name])] for c in cells},
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(summary, indent=1) + "\n")
    rows = suite.rows(summary)
    with open(out / f"{name}.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(suite.columns))
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _fmt(row.get(k)) for k in suite.columns})
    suite.plot(summary, out / f"{name}.png")
    summary["rows"] = rows
    return summary


from asyncvla.trust.suites import generalization, groups, language, robustness  # noqa: E402,F401

__all__ = ["SUITES", "Cell", "Suite", "bars", "difference", "per_cell", "rate", "run_suite"]
