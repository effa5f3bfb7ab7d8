"""What the learning benchmark probes: the corpus's labeled tasks, the probe sets each run's
:class:`~ssast.train.probe_callbacks.ProbeMonitor` reads, and the log-mel-statistics floor beside them.

Imported by ``learning.py``, which puts this checkout on ``sys.path`` first."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ssast.probe import load_clips, logmel_baseline

TASKS = ("keywords", "speakers", "events")


def task_lengths(data: Path) -> dict[str, int | None]:
    """Each task's clip length in frames, from the corpus's ``demo.json`` (``None``: the
    encoder's input length)."""
    path = data / "demo.json"
    tasks = json.loads(path.read_text()).get("tasks", {}) if path.is_file() else {}
    return {task: tasks.get(task, {}).get("target_length") for task in TASKS}


def probe_tasks(data: Path, layers: list[str] = ("last",), split: str = "test") -> list[dict[str, Any]]:
    """The demo's labeled sets as :class:`~ssast.train.probe_callbacks.ProbeTask` values, once per
    choice of ``layers``: ``<task>`` reads the first choice, ``<task>@<choice>`` the others,
    so one run probes them side by side at the same steps. The probes learn on ``train`` and
    are scored on ``split``: ``val`` on the corpus that chooses a setting, ``test`` on the
    one that reports it (CONTRIBUTING.md)."""
    lengths = task_lengths(data)
    return [{"name": task if index == 0 else f"{task}@{choice}", "train": str(data / task / "train"),
             "test": str(data / task / split), "target_length": lengths[task], "layers": layer_value(choice)}
            for index, choice in enumerate(layers) for task in TASKS]


def layer_value(choice: str) -> str | int:
    """``last``, ``all`` or a block number, as ``--layers`` writes them."""
    return int(choice) if choice.isdigit() else choice


def logmel_floor(data: Path, max_clips: int, split: str = "test") -> dict[str, float]:
    """Linear-probe accuracy on each task's log-mel statistics (DESIGN.md §12's floor),
    learned on ``train`` and scored on ``split``."""
    lengths = task_lengths(data)
    floor = {}
    for task in TASKS:
        options = dict(classes=data / task / "classes.txt", max_clips=max_clips,
                       target_length=lengths[task] or 1024)
        stats = data / task / "stats.json"
        train = load_clips(data / task / "train", stats=stats if stats.is_file() else None, **options)
        test = load_clips(data / task / split, stats=train.normalize, **options)
        floor[task] = round(logmel_baseline(train, test), 4)
    return floor
