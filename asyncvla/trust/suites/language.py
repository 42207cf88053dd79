"""``language``: does success come from following the instruction or from a scene prior?

Cells (same episodes, only the instruction changes): ``true``, ``blank``, ``other_episode`` (the
instruction of another init state) and ``other_object`` (the true wording naming another object
of the scene; the env tracks that object's goal as the counterfactual goal). Reported: success on
the true goal in every cell with its paired drop from ``true``, and under ``other_object`` how often
the policy reaches the counterfactual goal instead (``follows_altered``, over the episodes whose
scene has another object to name).

Language-dependence score, over the n paired episodes with y_c,i = 1 when episode i succeeds in
cell c and the altered cells A = {blank, other_episode, other_object}::

    LDS = mean_i( mean_{c in A} (y_true,i - y_c,i) ) / mean_i(y_true,i)

the share of the true instruction's successes that changing the instruction undoes: 0 for a policy
that ignores the instruction (every cell acts identically), about 1 for one that fails whenever it
is told something else. Its interval resamples episodes (the ratio recomputed per sample).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from asyncvla.stats import BOOTSTRAP_SAMPLES, percentile_interval
from asyncvla.trust.suites import SUITES, Suite, bars, per_cell, rate
from asyncvla.trust.suites.cells import Cell, successes

MODES = ("true", "blank", "other_episode", "other_object")


def language_dependence(y_true: np.ndarray, altered: list[np.ndarray], seed: int = 0) -> dict[str, Any]:
    """LDS (module docstring) with its percentile-bootstrap 95% interval; None when nothing succeeds
    under the true instruction."""
    d = np.mean([y_true - y for y in altered], axis=0)
    if y_true.sum() == 0:
        return {"value": None, "ci95_low": None, "ci95_high": None}
    idx = np.random.default_rng(seed).integers(0, len(d), size=(BOOTSTRAP_SAMPLES, len(d)))
    num, den = d[idx].mean(axis=1), y_true[idx].mean(axis=1)
    ok = den > 0
    lo, hi = percentile_interval(num[ok] / den[ok])
    return {"value": float(d.mean() / y_true.mean()), "ci95_low": lo, "ci95_high": hi}


@SUITES.register("language")
class Language(Suite):
    name = "language"
    columns = (
        "cell",
        "episodes",
        "success",
        "ci95_low",
        "ci95_high",
        "diff",
        "diff_ci95_low",
        "diff_ci95_high",
        "follows_altered",
        "follows_ci95_low",
        "follows_ci95_high",
    )

    def summarize(self, cells: list[Cell], records: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
        names = [c.name for c in cells]
        if names != list(MODES):
            raise ValueError(f"language cells must be {list(MODES)}, got {names}")
        table = per_cell(cells, records)
        alt = [r for r in records["other_object"] if r.get("counterfactual_goal")]
        follows = rate(successes(alt, "counterfactual_success")) if alt else None
        y = {m: successes(records[m]) for m in MODES}
        return {
            "table": table,
            "follows_altered": follows,
            "language_dependence": language_dependence(y["true"], [y[m] for m in MODES[1:]]),
        }

    def rows(self, summary: dict[str, Any]) -> list[dict[str, Any]]:
        f = summary["follows_altered"]
        extra = (
            {}
            if f is None
            else {
                "follows_altered": f["success"],
                "follows_ci95_low": f["ci95_low"],
                "follows_ci95_high": f["ci95_high"],
            }
        )
        return [{**row, **(extra if row["cell"] == "other_object" else {})} for row in summary["table"]]

    def headline(self, summary: dict[str, Any]) -> str | None:
        lds = summary["language_dependence"]
        if lds["value"] is None:
            return None
        return f"language dependence {lds['value']:.3f} [{lds['ci95_low']:.3f}, {lds['ci95_high']:.3f}]"

    def plot(self, summary: dict[str, Any], path: Path) -> None:
        table = [dict(r) for r in summary["table"]]
        f = summary["follows_altered"]
        if f is not None:
            table.append({"cell": "other_object: follows altered", **f})
        lds = summary["language_dependence"]["value"]
        bars(
            table,
            path,
            "success on the true goal" + ("" if lds is None else f"; language dependence {lds:.2f}"),
        )
