"""``robustness``: success under perturbation axes at graded strengths, against clean.

Cells: ``clean`` plus one per (axis, strength); every cell runs the same init states, so the drop
from clean, ``success(cell) - success(clean)``, is a paired difference. The heat map shows the
drops, axes by strength level.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from asyncvla.trust.suites import SUITES, Suite, per_cell
from asyncvla.trust.suites.cells import Cell


@SUITES.register("robustness")
class Robustness(Suite):
    name = "robustness"
    columns = (
        "cell",
        "axis",
        "level",
        "episodes",
        "success",
        "ci95_low",
        "ci95_high",
        "drop",
        "drop_ci95_low",
        "drop_ci95_high",
    )

    def summarize(self, cells: list[Cell], records: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
        table = per_cell(cells, records)
        matrix: dict[str, dict[str, float]] = {}
        for row in table[1:]:
            matrix.setdefault(row["axis"], {})[str(row["level"])] = row["success"]
        worst = min(table[1:], key=lambda r: r["success"]) if len(table) > 1 else None
        return {
            "clean": {k: table[0][k] for k in ("episodes", "success", "ci95_low", "ci95_high")},
            "table": table,
            "matrix": matrix,
            "worst_cell": None if worst is None else worst["cell"],
        }

    def rows(self, summary: dict[str, Any]) -> list[dict[str, Any]]:
        return [
            {
                **r,
                "drop": -r["diff"],
                "drop_ci95_low": -r["diff_ci95_high"],
                "drop_ci95_high": -r["diff_ci95_low"],
            }
            for r in summary["table"]
        ]

    def plot(self, summary: dict[str, Any], path: Path) -> None:
        import numpy as np
        from matplotlib.figure import Figure

        rows = [r for r in self.rows(summary) if r["axis"]]
        axes = list(dict.fromkeys(r["axis"] for r in rows))
        levels = max((sum(r["axis"] == a for r in rows) for a in axes), default=1)
        drop = np.full((len(axes), levels), np.nan)
        text = [["" for _ in range(levels)] for _ in axes]
        for i, axis in enumerate(axes):
            for j, r in enumerate(r for r in rows if r["axis"] == axis):
                drop[i, j] = r["drop"]
                text[i][j] = f"{r['level']:g}\n{r['success']:.2f}"
        fig = Figure(figsize=(1.6 * levels + 3.0, 0.55 * len(axes) + 1.6))
        ax = fig.add_subplot()
        vmax = max(0.2, float(np.nanmax(drop, initial=0.0)))
        im = ax.imshow(drop, cmap="Reds", vmin=0.0, vmax=vmax, aspect="auto")
        for i in range(len(axes)):
            for j in range(levels):
                if text[i][j]:
                    dark = drop[i, j] > 0.6 * vmax
                    ax.text(
                        j,
                        i,
                        text[i][j],
                        ha="center",
                        va="center",
                        fontsize=7,
                        color="white" if dark else "black",
                    )
        ax.set_yticks(range(len(axes)), axes)
        ax.set_xticks(range(levels), [f"level {j + 1}" for j in range(levels)])
        clean = summary["clean"]
        ax.set_title(f"drop from clean success {clean['success']:.2f} (cells: strength, success)", fontsize=9)
        fig.colorbar(im, ax=ax, label="success drop")
        fig.tight_layout()
        fig.savefig(path, dpi=110)
