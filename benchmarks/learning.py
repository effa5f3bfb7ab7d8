"""Learning per minute (DESIGN.md §12): probe accuracy against pretraining wall-clock time.

Pretrains each method on the demo corpus's unlabeled pool for the same training time, one
after the other in this process, through the real ``ssast-pretrain`` program
(``pretrain.cli.main``) with each method's demo recipe:

* ``mspm``: ``configs/pretrain/mspm_demo.yaml`` with ``passes: 1`` (one shared encoder pass);
* ``asit``: ``configs/pretrain/asit_demo.yaml``;
* ``eat``: ``configs/pretrain/eat_demo.yaml``, when ``pretrain.eat`` and its recipe exist.

``--layers last,all`` probes each task twice at every point, on the final output and on the
mean of every block's output (SUPERB's reading), reported as ``<task>`` and ``<task>@all``.

Each run gets a :class:`~ssast.train.probe.ProbeMonitor` on the demo's keywords, speakers
and events train -> test sets (kNN and linear probe on the frozen exported encoder: at the
start, every ``--probe-minutes`` of training or ``--probe-steps`` steps, and at the end)
and a :class:`~ssast.train.probe.TrainingBudget` that stops it after ``--minutes`` of
training, the probes' time left out, so every method gets the same budget whatever its
probes cost. What the recipes do besides training is switched off so that it does not eat
into the budget: validation, checkpoints, pictures and the W&B logger (a CSV log is written
instead). The recipes' schedules are kept (``--epochs`` overrides their length); a method
whose recipe ends before the budget is reported as ``"ended": "recipe"``.

The floor (DESIGN.md §12) is printed beside: a linear probe on the per-bin mean and
standard deviation of each clip's log-mel (``logmel_stats``); the step-0 probes of each
method are its untrained encoder's.

Prints ONE JSON line: per method the steps done, clips/s, training and probing minutes,
the probe accuracies at the start and the end per task, and the series
``[minutes, knn, linear]`` per task; and writes a PNG (``--picture``): linear-probe (top)
and kNN (bottom) accuracy against training minutes, one panel per task, one line per
method, the log-mel-statistics floor beside.

    ssast-demo corpus --out demo_data
    python benchmarks/learning.py --data demo_data --minutes 3
    python benchmarks/learning.py --data demo_data --minutes 1 --methods mspm,eat --out runs/learning

Timings are only comparable within one run on one machine (a shared CPU slows every
method, not necessarily alike).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import shlex
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import yaml

log = logging.getLogger("benchmarks.learning")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script from anywhere: pretrain/ and ssast/ from this checkout

from ssast.probe import load_clips, logmel_baseline  # noqa: E402
from ssast.visualize import xy_chart  # noqa: E402

if TYPE_CHECKING:
    from matplotlib.figure import Figure

# name -> (recipe, options on top of it)
METHODS: dict[str, tuple[str, list[str]]] = {
    "mspm": ("configs/pretrain/mspm_demo.yaml", ["--model.init_args.passes", "1"]),
    "asit": ("configs/pretrain/asit_demo.yaml", []),
    "eat": ("configs/pretrain/eat_demo.yaml", []),
}
TASKS = ("keywords", "speakers", "events")
FLOOR = "log-mel stats"
COLOURS = {"mspm": "tab:blue", "asit": "tab:orange", "eat": "tab:green", FLOOR: "grey"}


def available_methods() -> list[str]:
    """The methods this checkout can run: EAT once ``pretrain/eat.py`` and its recipe exist."""
    return [name for name, (recipe, _) in METHODS.items()
            if (REPO / recipe).is_file() and (name != "eat" or importlib.util.find_spec("pretrain.eat") is not None)]


def task_lengths(data: Path) -> dict[str, int | None]:
    """Each task's clip length in frames, from the corpus's ``demo.json`` (``None``: the
    encoder's input length)."""
    path = data / "demo.json"
    tasks = json.loads(path.read_text()).get("tasks", {}) if path.is_file() else {}
    return {task: tasks.get(task, {}).get("target_length") for task in TASKS}


def probe_tasks(data: Path, layers: list[str] = ("last",)) -> list[dict[str, Any]]:
    """The demo's labeled sets as :class:`~ssast.train.probe.ProbeTask` values, once per
    choice of ``layers``: ``<task>`` reads the first choice, ``<task>@<choice>`` the others,
    so one run probes them side by side at the same steps."""
    lengths = task_lengths(data)
    return [{"name": task if index == 0 else f"{task}@{choice}", "train": str(data / task / "train"),
             "test": str(data / task / "test"), "target_length": lengths[task], "layers": layer_value(choice)}
            for index, choice in enumerate(layers) for task in TASKS]


def layer_value(choice: str) -> str | int:
    """``last``, ``all`` or a block number, as ``--layers`` writes them."""
    return int(choice) if choice.isdigit() else choice


def pretrain_args(method: str, data: Path, run: Path, args: argparse.Namespace) -> list[str]:
    """The ``ssast-pretrain fit`` command line of one method's run.

    Args:
        method: a key of :data:`METHODS`.
        data: the demo corpus.
        run: the run's folder.
        args: the benchmark's options.
    """
    recipe, options = METHODS[method]
    probe = {"class_path": "ssast.train.probe.ProbeMonitor", "init_args": {
        "tasks": probe_tasks(data, args.layers.split(",")), "every_n_steps": args.probe_steps,
        "every_minutes": args.probe_minutes or args.minutes / 6, "max_clips": args.max_clips,
        "history_file": str(run / "probes.json"),
    }}
    budget = {"class_path": "ssast.train.probe.TrainingBudget", "init_args": {"minutes": args.minutes}}
    logger = {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": str(run), "name": "csv"}}
    command = [
        "fit", "--config", str(REPO / recipe), *options,
        "--data.init_args.train", str(data / "unlabeled"),
        "--trainer.default_root_dir", str(run),
        "--trainer.logger", json.dumps(logger),
        # The probes and the budget replace the recipe's callbacks (checkpoints), and no
        # pictures are drawn: nothing but training counts against the budget. No validation either.
        "--trainer.callbacks", json.dumps([probe, budget]), "--pictures.every_n_steps", "0",
        "--trainer.enable_checkpointing", "false",
        "--trainer.limit_val_batches", "0", "--trainer.num_sanity_val_steps", "0",
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
    ]
    if args.epochs:
        command += ["--trainer.max_epochs", str(args.epochs)]
    return command + shlex.split(args.cli_args)


def recipe_settings(method: str, args: argparse.Namespace) -> tuple[int, int]:
    """``(clips per step, planned_steps)`` of a method's recipe (one device, as the demo
    recipes run; with ``--epochs``, and the batch of ``--cli-args`` when it sets one)."""
    recipe = yaml.safe_load((REPO / METHODS[method][0]).read_text())
    data = recipe["data"]["init_args"]
    batch_size = recipe["global_batch_size"]
    extra = shlex.split(args.cli_args)
    for option in ("--global_batch_size", "--data.init_args.batch_size"):
        if option in extra:
            batch_size = int(extra[extra.index(option) + 1])
    epochs = args.epochs or recipe["trainer"]["max_epochs"]
    return batch_size, epochs * data["batches_per_epoch"]


def run_method(method: str, data: Path, out: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Pretrain one method under the budget and summarize its probes (``{"error": ...}``
    when the run failed: the other methods still run)."""
    from pretrain.cli import main

    run = out / method
    history_path = run / "probes.json"
    history_path.unlink(missing_ok=True)  # never report an earlier run's probes
    started = time.perf_counter()
    try:
        main(pretrain_args(method, data, run, args))
    except (Exception, SystemExit) as error:  # the program reports its users' errors by exiting
        log.exception("%s failed", method)
        return {"error": f"{type(error).__name__}: {error}"}
    if not history_path.is_file():
        return {"error": f"the run left no {history_path}"}
    history = json.loads(history_path.read_text())
    tasks = history["tasks"]
    points = next(iter(tasks.values()))["probes"]
    steps, seconds = points[-1]["step"], points[-1]["seconds"]
    batch_size, planned = recipe_settings(method, args)
    return {
        "recipe": METHODS[method][0],
        "steps": steps,
        "clips_per_s": round(steps * batch_size / max(seconds, 1e-9), 2),
        "train_minutes": round(seconds / 60, 3),
        "probe_minutes": round(history["probe_seconds"] / 60, 3),
        "wall_minutes": round((time.perf_counter() - started) / 60, 3),
        "ended": "recipe" if steps >= planned else "budget",
        "tasks": {
            name: {
                "start": {"knn": round(task["probes"][0]["knn"], 4), "linear": round(task["probes"][0]["linear"], 4)},
                "end": {"knn": round(task["probes"][-1]["knn"], 4), "linear": round(task["probes"][-1]["linear"], 4)},
            }
            for name, task in tasks.items()
        },
        "series": {
            name: [[round(p["seconds"] / 60, 3), round(p["knn"], 4), round(p["linear"], 4)] for p in task["probes"]]
            for name, task in tasks.items()
        },
    }


def logmel_floor(data: Path, max_clips: int) -> dict[str, float]:
    """Linear-probe accuracy on each task's log-mel statistics (DESIGN.md §12's floor)."""
    lengths = task_lengths(data)
    floor = {}
    for task in TASKS:
        options = dict(classes=data / task / "classes.txt", max_clips=max_clips,
                       target_length=lengths[task] or 1024)
        stats = data / task / "stats.json"
        train = load_clips(data / task / "train", stats=stats if stats.is_file() else None, **options)
        test = load_clips(data / task / "test", stats=train.normalize, **options)
        floor[task] = round(logmel_baseline(train, test), 4)
    return floor


def learning_chart(results: dict[str, dict], floor: dict[str, float], minutes: float) -> Figure:
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
    return xy_chart(panels, x_label="pretraining minutes", y_label="test accuracy", colours=COLOURS,
                    baselines=(FLOOR,), columns=len(TASKS),
                    title=f"Probe accuracy against pretraining minutes (probes left out), {minutes:g} min per method")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("demo_data"), help="the demo corpus (ssast-demo corpus)")
    parser.add_argument("--minutes", type=float, default=3.0, help="training minutes per method, probes left out")
    parser.add_argument("--methods", default=None,
                        help=f"comma-separated, of {', '.join(METHODS)} (default: all this checkout has)")
    parser.add_argument("--probe-minutes", type=float, default=None,
                        help="probe every this many training minutes (default: a sixth of --minutes)")
    parser.add_argument("--probe-steps", type=int, default=0, help="also probe every this many steps (0: off)")
    parser.add_argument("--max-clips", type=int, default=1000, help="clips per probe train and test set at most")
    parser.add_argument("--layers", default="last",
                        help="the layers the probes read, comma-separated (last, all, a block): the first is reported "
                             "as <task>, the others as <task>@<choice>, all probed at the same steps")
    parser.add_argument("--epochs", type=int, default=None, help="override the recipes' max_epochs")
    parser.add_argument("--cli-args", default="", help="more ssast-pretrain options for every method, one string")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--out", type=Path, default=Path("runs/learning"), help="the runs' folders")
    parser.add_argument("--picture", type=Path, default=None, help="the PNG (default: OUT/learning.png)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    data = args.data.resolve()
    if not (data / "unlabeled").is_dir():
        sys.exit(f"learning.py: error: {data} is not a demo corpus (no unlabeled/); make one with "
                 f"`ssast-demo corpus --out {args.data}`")
    methods = args.methods.split(",") if args.methods else available_methods()
    unknown = [name for name in methods if name not in available_methods()]
    if unknown:
        sys.exit(f"learning.py: error: unknown or unavailable methods {unknown}; this checkout has "
                 f"{available_methods()}")
    out = args.out.resolve()
    floor = logmel_floor(data, args.max_clips)
    results = {}
    for method in methods:
        print(f"learning.py: pretraining {method} for {args.minutes:g} training minutes", file=sys.stderr, flush=True)
        results[method] = run_method(method, data, out, args)
    picture_path = (args.picture or out / "learning.png").resolve()
    picture_path.parent.mkdir(parents=True, exist_ok=True)
    learning_chart(results, floor, args.minutes).savefig(picture_path)
    report = {
        "benchmark": "learning",
        "minutes": args.minutes,
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "torch_threads": torch.get_num_threads(),
        "data": str(data),
        "logmel_stats": floor,
        "methods": results,
        "picture": str(picture_path),
    }
    print(json.dumps(report), flush=True)
    return report


if __name__ == "__main__":
    main()
