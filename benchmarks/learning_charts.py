"""The learning benchmark's charts: probe accuracy against training minutes in one budget's
runs (``learning-<corpus>.png``) and at the end of each budget (``budgets.png``), each beside
the log-mel-statistics floor.

Imported by ``learning.py``, which puts this checkout on ``sys.path`` first."""

from __future__ import annotations

from typing import TYPE_CHECKING

from learning_probes import TASKS
from ssast.visualize import xy_chart

if TYPE_CHECKING:
    from matplotlib.figure import Figure

FLOOR = "log-mel stats"
UNTRAINED = "untrained"
COLOURS = {"mspm": "tab:blue", "asit": "tab:orange", "eat": "tab:green", FLOOR: "grey", UNTRAINED: "black"}


def learning_chart(results: dict[str, dict], floor: dict[str, float], minutes: float, corpus: str = "") -> Figure:
    """Linear-probe (top row) and kNN (bottom row) accuracy against training minutes, a
    panel per task, a line per method through its probes, the log-mel-statistics floor
    dashed."""
    finished = {name: result for name, result in results.items() if "series" in result}
    panels = {}
    for column, kind in ((2, "linear"), (1, "kNN")):
        for task in TASKS:
            series = {name: [(point[0], point[column]) for point in result["series"][task]]
                      for name, result in finished.items()}
            if kind == "linear" and task in floor:
                series[FLOOR] = [(0.0, floor[task]), (minutes, floor[task])]
            panels[f"{task}: {kind} probe"] = series
    where = f" on {corpus}" if corpus else ""
    return xy_chart(panels, x_label="pretraining minutes", y_label="test accuracy", colours=COLOURS,
                    baselines=(FLOOR, UNTRAINED), columns=len(TASKS),
                    title=f"Probe accuracy against pretraining minutes{where} (probes left out), "
                          f"{minutes:g} min per method")


def budgets_chart(runs: dict[str, dict[float, dict[str, dict]]], floors: dict[str, dict[str, float]]) -> Figure:
    """The closing figure: each method's linear-probe accuracy at the end of each budget, a
    row per corpus and a panel per task, beside the untrained encoder's (the methods' step-0
    probes, averaged) and the log-mel-statistics floor, both dashed.

    Args:
        runs: ``{corpus: {minutes: {method: result}}}``, results as
            :func:`learning_runs.run_method` gives.
        floors: ``{corpus: {task: accuracy}}``.
    """
    panels = {}
    for corpus, budgets in runs.items():
        span = (min(budgets), max(budgets))
        for task in TASKS:
            series: dict[str, list[tuple[float, float]]] = {}
            untrained = []
            for minutes, results in sorted(budgets.items()):
                for method, result in results.items():
                    if task in result.get("tasks", {}):
                        series.setdefault(method, []).append((minutes, result["tasks"][task]["end"]["linear"]))
                        untrained.append(result["tasks"][task]["start"]["linear"])
            if untrained:
                level = sum(untrained) / len(untrained)
                series[UNTRAINED] = [(span[0], level), (span[1], level)]
            if task in floors.get(corpus, {}):
                series[FLOOR] = [(span[0], floors[corpus][task]), (span[1], floors[corpus][task])]
            panels[f"{corpus}: {task}"] = series
    return xy_chart(panels, x_label="pretraining budget (minutes)", y_label="linear-probe test accuracy",
                    colours=COLOURS, baselines=(FLOOR, UNTRAINED), columns=len(TASKS),
                    title="Linear-probe accuracy after each pretraining budget, schedules fitted to it")
