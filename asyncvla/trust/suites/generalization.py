"""``generalization``: seen vs held-out target combinations, seen vs held-out instruction
wording, and task families the policy was not trained on, each against the seen cell.

Cells that keep the seen cell's layouts (held-out wording of the same scenes) compare episode by
episode; held-out combinations and other families are other scenes, compared as independent
samples. Each family cell says how the policy met that family: ``grounding`` (pointing labels in
pretraining only) or ``none``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from asyncvla.trust.suites import SUITES, Suite, bars, per_cell
from asyncvla.trust.suites.cells import Cell


@SUITES.register("generalization")
class Generalization(Suite):
    name = "generalization"
    columns = (
        "cell",
        "axis",
        "episodes",
        "success",
        "ci95_low",
        "ci95_high",
        "diff",
        "diff_ci95_low",
        "diff_ci95_high",
        "paired",
    )

    def summarize(self, cells: list[Cell], records: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
        return {"table": per_cell(cells, records)}

    def rows(self, summary: dict[str, Any]) -> list[dict[str, Any]]:
        return summary["table"]

    def plot(self, summary: dict[str, Any], path: Path) -> None:
        bars(summary["table"], path, "success per cell (Wilson 95%)")
