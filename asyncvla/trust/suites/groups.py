"""``groups``: success per task family, target colour, target shape and instruction template;
the worst group and the max-min gap, each with a bootstrap 95% interval (episodes resampled within
each group). The fairness view of a robot policy: which requests does it serve worse?

Cells: one per family, the run's family first. ``family`` groups all cells; the other groupings
use the run's family only (the task the policy was trained for), so that a colour's success is not
confounded with which families its episodes came from.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from asyncvla.stats import grouped_bootstrap
from asyncvla.trust.suites import SUITES, Suite, rate
from asyncvla.trust.suites.cells import Cell, successes

GROUPINGS = ("family", "target_colour", "target_shape", "template")


def grouping(records: list[dict[str, Any]], key: str, seed: int = 0) -> dict[str, Any]:
    """Per-group rates of ``records`` grouped by their ``key``, the worst group and the gap."""
    labels = sorted({str(r[key]) for r in records})
    values = {g: successes([r for r in records if str(r[key]) == g]) for g in labels}
    out: dict[str, Any] = {"groups": {g: rate(v) for g, v in values.items()}}
    if len(values) < 2:
        return {**out, "worst": None, "gap": None}
    worst = min(values, key=lambda g: (values[g].mean(), g))
    w, w_lo, w_hi = grouped_bootstrap(values, lambda m: min(m.values()), seed=seed)
    gap, g_lo, g_hi = grouped_bootstrap(values, lambda m: max(m.values()) - min(m.values()), seed=seed)
    return {
        **out,
        "worst": {"group": worst, "success": w, "ci95_low": w_lo, "ci95_high": w_hi},
        "gap": {"value": gap, "ci95_low": g_lo, "ci95_high": g_hi},
    }


@SUITES.register("groups")
class Groups(Suite):
    name = "groups"
    columns = (
        "grouping",
        "group",
        "episodes",
        "success",
        "ci95_low",
        "ci95_high",
        "worst",
        "gap",
        "gap_ci95_low",
        "gap_ci95_high",
    )

    def summarize(self, cells: list[Cell], records: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
        every = [r for c in cells for r in records[c.name]]
        own = records[cells[0].name]
        missing = [k for k in GROUPINGS if any(k not in r for r in every)]
        if missing:
            raise ValueError(
                f"the env's episode facts (describe) lack {missing}; groups needs {list(GROUPINGS)}"
            )
        return {
            "groupings": {
                k: grouping(every if k == "family" else own, k, seed=i) for i, k in enumerate(GROUPINGS)
            },
            "family": cells[0].axis,
        }

    def rows(self, summary: dict[str, Any]) -> list[dict[str, Any]]:
        out = []
        for key, g in summary["groupings"].items():
            for label, r in g["groups"].items():
                is_worst = g["worst"] is not None and g["worst"]["group"] == label
                out.append({"grouping": key, "group": label, **r, "worst": is_worst})
            if g["gap"] is not None:
                out.append(
                    {
                        "grouping": key,
                        "group": "(max - min)",
                        "gap": g["gap"]["value"],
                        "gap_ci95_low": g["gap"]["ci95_low"],
                        "gap_ci95_high": g["gap"]["ci95_high"],
                    }
                )
        return out

    def plot(self, summary: dict[str, Any], path: Path) -> None:
        from matplotlib.figure import Figure

        items = list(summary["groupings"].items())
        fig = Figure(figsize=(11.0, 2.2 * len(items) + 0.5))
        for k, (key, g) in enumerate(items):
            ax = fig.add_subplot(len(items), 1, k + 1)
            labels = list(g["groups"])
            v = np.array([g["groups"][x]["success"] for x in labels])
            lo = np.array([g["groups"][x]["ci95_low"] for x in labels])
            hi = np.array([g["groups"][x]["ci95_high"] for x in labels])
            colours = ["#c44e52" if g["worst"] and g["worst"]["group"] == x else "#4c72b0" for x in labels]
            ax.bar(range(len(labels)), v, yerr=[v - lo, hi - v], color=colours, capsize=3)
            short = [x if len(x) <= 28 else x[:26] + ".." for x in labels]
            ax.set_xticks(range(len(labels)), short, fontsize=7, rotation=20 if key == "template" else 0)
            ax.set_ylim(0, 1)
            gap = g["gap"]
            title = (
                key
                if gap is None
                else f"{key}: max-min gap {gap['value']:.2f} [{gap['ci95_low']:.2f}, {gap['ci95_high']:.2f}]"
            )
            ax.set_title(title, fontsize=9)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
