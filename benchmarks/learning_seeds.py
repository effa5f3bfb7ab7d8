"""Seed statistics of the learning benchmark: one method's runs under several seeds combined
into one result (each task's mean accuracies and the gain's mean, spread and each seed's,
every seed against its own untrained encoder), and split back into a line per seed for the
learning chart."""

from __future__ import annotations

import statistics
from typing import Any


def combine_seeds(results: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """One method's runs under several seeds as one result: ``seeds`` (each seed's result),
    and per task the mean kNN and linear accuracy at the ``start`` and the ``end`` and the
    linear probe's ``gain``, end minus start, each seed against its own untrained encoder
    (``mean``, ``sd`` over seeds and ``each`` seed's, in order). Failed seeds are left out of
    the means and counted in ``failed``; ``error`` when every seed failed."""
    combined: dict[str, Any] = {"seeds": {str(seed): result for seed, result in results.items()}}
    done = [result for result in results.values() if "tasks" in result]
    combined["failed"] = len(results) - len(done)
    if not done:
        return {**combined, "error": f"all {len(results)} seeds failed"}
    tasks = {}
    for task in done[0]["tasks"]:
        points = {point: {kind: round(statistics.fmean(r["tasks"][task][point][kind] for r in done), 4)
                          for kind in ("knn", "linear")} for point in ("start", "end")}
        gains = [r["tasks"][task]["end"]["linear"] - r["tasks"][task]["start"]["linear"] for r in done]
        spread = statistics.stdev(gains) if len(gains) > 1 else 0.0
        tasks[task] = {**points, "gain": {"mean": round(statistics.fmean(gains), 4), "sd": round(spread, 4),
                                          "each": [round(gain, 4) for gain in gains]}}
    return {**combined, "tasks": tasks}


def seed_lines(results: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The runs :func:`learning_charts.learning_chart` draws: each method's, or with several
    seeds each seed's as ``<method> seed <n>``."""
    lines = {}
    for method, result in results.items():
        for seed, run in result.get("seeds", {}).items() or [(None, result)]:
            lines[method if seed is None else f"{method} seed {seed}"] = run
    return lines
