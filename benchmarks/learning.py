"""Learning per minute (DESIGN.md §12): probe accuracy against pretraining wall-clock time.

Pretrains each method on a corpus's unlabeled pool for the same training time, one after
the other in this process, through the real ``ssast-pretrain`` program
(``pretrain.cli.main``) with each method's demo recipe:

* ``mspm``: ``configs/pretrain/mspm_demo.yaml`` with ``passes: 1`` (one shared encoder pass);
* ``asit``: ``configs/pretrain/asit_demo.yaml``;
* ``eat``: ``configs/pretrain/eat_demo.yaml``, when ``pretrain.eat`` and its recipe exist.

``--data`` takes one corpus or several (the built-in ``ssast-demo corpus`` and the recorded
``ssast-demo recorded``, comma-separated), ``--minutes`` one budget or several
(``5,15,30``): every method runs once per corpus and budget.

The recipes' schedules are fitted to each budget (``--stretch``, the default): a pilot of
``--pilot-minutes`` measures the method's training steps per minute on this machine (over its
second half: the first loads data and warms caches), and the
run is then given the steps its budget allows, with ``max_epochs`` and every knob that
counts the run's steps (:data:`RUN_LENGTH_KNOBS`, such as EAT's teacher anneal) scaled by
the same factor; warmups keep their length. ``--no-stretch`` keeps the recipes' lengths, so
a budget longer than a recipe ends with the recipe (``"ended": "recipe"``).

``--probe-split val`` scores the probes (and the floor) on each task's validation split
instead of its test split: the corpus that chooses a setting is read on ``val``, the one that
reports its gain on ``test`` (CONTRIBUTING.md).

``--seeds 0,1,2`` runs every method and budget once per seed (each seed its own untrained
encoder, data order and masks) and reports, per task, the mean accuracy at the start and the
end and the gain (end minus start, each seed against its own untrained encoder): its mean,
standard deviation and each seed's. A gain smaller than its spread over seeds is not one.

``--layers last,all`` probes each task twice at every point, on the final output and on the
mean of every block's output (SUPERB's reading), reported as ``<task>`` and ``<task>@all``.

Each run gets a :class:`~ssast.train.probe.ProbeMonitor` on the corpus's keywords, speakers
and events train -> test sets (kNN and linear probe on the frozen exported encoder: at the
start, every ``--probe-minutes`` of training or ``--probe-steps`` steps, and at the end)
and a :class:`~ssast.train.probe.TrainingBudget` that stops it after its budget of
training, the probes' time left out, so every method gets the same budget whatever its
probes cost. What the recipes do besides training is switched off so that it does not eat
into the budget: validation, checkpoints, pictures and the W&B logger (a CSV log is written
instead).

The floor (DESIGN.md §12) is printed beside: a linear probe on the per-bin mean and
standard deviation of each clip's log-mel (``logmel_stats``); the step-0 probes of each
method are its untrained encoder's.

Prints ONE JSON line: per corpus, budget and method the steps done, clips/s, training and
probing minutes, the probe accuracies at the start and the end per task, and the series
``[minutes, knn, linear]`` per task. Writes PNGs into ``--out``: ``learning-<corpus>.png``
per corpus (linear-probe and kNN accuracy against training minutes in the longest budget's
runs, one panel per task, one line per method, the log-mel-statistics floor beside) and,
with several budgets, ``budgets.png``, the closing figure: linear-probe accuracy at the end
of each budget, a row per corpus, the untrained encoder and the floor beside.

    ssast-demo corpus --out demo_data
    python benchmarks/learning.py --data demo_data --minutes 3
    python benchmarks/learning.py --data demo_data,dev_data --minutes 5,15,30 --out runs/learning

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
import math
import statistics
import time
from dataclasses import dataclass
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
# Knobs that count the steps of the whole run, scaled with it when a recipe is fitted to a budget.
RUN_LENGTH_KNOBS: dict[str, tuple[str, ...]] = {"eat": ("ema_anneal_end_step",)}
TASKS = ("keywords", "speakers", "events")
FLOOR = "log-mel stats"
UNTRAINED = "untrained"
COLOURS = {"mspm": "tab:blue", "asit": "tab:orange", "eat": "tab:green", FLOOR: "grey", UNTRAINED: "black"}


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


def probe_tasks(data: Path, layers: list[str] = ("last",), split: str = "test") -> list[dict[str, Any]]:
    """The demo's labeled sets as :class:`~ssast.train.probe.ProbeTask` values, once per
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


@dataclass(frozen=True)
class Budget:
    """One run's length: its training minutes and, when fitted to them, its steps."""

    minutes: float
    steps: int | None = None  # None: the recipe's own length


def recipe_settings(method: str, args: argparse.Namespace) -> dict[str, Any]:
    """What a method's recipe says about its run's length: ``batch_size`` (clips per step, on
    one device as the demo recipes run, or the batch ``--cli-args`` sets), ``max_epochs``
    (or ``--epochs``), ``batches_per_epoch``, ``steps`` and its :data:`RUN_LENGTH_KNOBS`."""
    recipe = yaml.safe_load((REPO / METHODS[method][0]).read_text())
    data = recipe["data"]["init_args"]
    batch_size = recipe["global_batch_size"]
    extra = shlex.split(args.cli_args)
    for option in ("--global_batch_size", "--data.init_args.batch_size"):
        if option in extra:
            batch_size = int(extra[extra.index(option) + 1])
    epochs = args.epochs or recipe["trainer"]["max_epochs"]
    knobs = {name: recipe["model"]["init_args"][name] for name in RUN_LENGTH_KNOBS.get(method, ())
             if name in recipe["model"]["init_args"]}
    return {"batch_size": batch_size, "max_epochs": epochs, "batches_per_epoch": data["batches_per_epoch"],
            "steps": epochs * data["batches_per_epoch"], "run_length_knobs": knobs}


def stretched_options(method: str, steps: int, args: argparse.Namespace) -> list[str]:
    """The options that fit a method's recipe to ``steps``: ``max_steps``, the epochs that hold
    them, and the run-length knobs scaled by the same factor as the run."""
    recipe = recipe_settings(method, args)
    factor = steps / recipe["steps"]
    options = ["--trainer.max_steps", str(steps),
               "--trainer.max_epochs", str(math.ceil(steps / recipe["batches_per_epoch"]))]
    for name, value in recipe["run_length_knobs"].items():
        options += [f"--model.init_args.{name}", str(max(1, round(value * factor)))]
    return options


def pretrain_args(method: str, data: Path, run: Path, args: argparse.Namespace, budget: Budget,
                  probes: bool = True, seed: int | None = None) -> list[str]:
    """The ``ssast-pretrain fit`` command line of one method's run.

    Args:
        method: a key of :data:`METHODS`.
        data: the corpus.
        run: the run's folder.
        args: the benchmark's options.
        budget: the run's training minutes and, when fitted to them, its steps.
        probes: probe the encoder during the run (a pilot does not).
        seed: the run's ``seed_everything`` (``None``: the recipe's).
    """
    recipe, options = METHODS[method]
    callbacks: list[dict[str, Any]] = [
        {"class_path": "ssast.train.probe.TrainingBudget", "init_args": {"minutes": budget.minutes}}]
    if probes:
        callbacks.insert(0, {"class_path": "ssast.train.probe.ProbeMonitor", "init_args": {
            "tasks": probe_tasks(data, args.layers.split(","), args.probe_split), "every_n_steps": args.probe_steps,
            "every_minutes": args.probe_minutes or budget.minutes / 6, "max_clips": args.max_clips,
            "history_file": str(run / "probes.json"),
        }})
    logger = {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": str(run), "name": "csv"}}
    command = [
        "fit", "--config", str(REPO / recipe), *options,
        "--data.init_args.train", str(data / "unlabeled"),
        "--trainer.default_root_dir", str(run),
        "--trainer.logger", json.dumps(logger),
        # The probes and the budget replace the recipe's callbacks (checkpoints), and no
        # pictures are drawn: nothing but training counts against the budget. No validation either.
        "--trainer.callbacks", json.dumps(callbacks), "--pictures.every_n_steps", "0",
        "--trainer.enable_checkpointing", "false",
        "--trainer.limit_val_batches", "0", "--trainer.num_sanity_val_steps", "0",
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
    ]
    if args.epochs:
        command += ["--trainer.max_epochs", str(args.epochs)]
    if budget.steps is not None:
        command += stretched_options(method, budget.steps, args)
    if seed is not None:
        command += ["--seed_everything", str(seed)]
    return command + shlex.split(args.cli_args)


def pilot(method: str, data: Path, out: Path, args: argparse.Namespace) -> float:
    """Training steps per minute of ``method`` on this machine: a run of ``--pilot-minutes``
    without probes, at the recipe's own settings, timed over its second half (the first
    loads data and warms caches)."""
    from pretrain.cli import build_cli
    from ssast.train.cli import run_program
    from ssast.train.probe import TrainingBudget

    fitted: list[Any] = []
    run_program("ssast-pretrain", lambda: fitted.append(build_cli(
        pretrain_args(method, data, out / f"{method}-pilot", args, Budget(args.pilot_minutes), probes=False))))
    budget = next(callback for callback in fitted[0].trainer.callbacks if isinstance(callback, TrainingBudget))
    rate = budget.steps_per_minute()
    if rate is None:
        sys.exit(f"learning.py: error: the {method} pilot took {fitted[0].trainer.global_step} steps in "
                 f"{args.pilot_minutes:g} min, too few to time; give it longer with --pilot-minutes")
    return rate


def run_method(method: str, data: Path, run: Path, args: argparse.Namespace, budget: Budget,
               seed: int | None = None) -> dict[str, Any]:
    """Pretrain one method under ``budget`` (with ``seed``, or the recipe's) and summarize its
    probes (``{"error": ...}`` when the run failed: the other methods still run)."""
    from pretrain.cli import main

    history_path = run / "probes.json"
    history_path.unlink(missing_ok=True)  # never report an earlier run's probes
    started = time.perf_counter()
    try:
        main(pretrain_args(method, data, run, args, budget, seed=seed))
    except (Exception, SystemExit) as error:  # the program reports its users' errors by exiting
        log.exception("%s failed", method)
        return {"error": f"{type(error).__name__}: {error}"}
    if not history_path.is_file():
        return {"error": f"the run left no {history_path}"}
    history = json.loads(history_path.read_text())
    tasks = history["tasks"]
    points = next(iter(tasks.values()))["probes"]
    steps, seconds = points[-1]["step"], points[-1]["seconds"]
    recipe = recipe_settings(method, args)
    planned = budget.steps or recipe["steps"]
    return {
        "recipe": METHODS[method][0],
        "steps": steps,
        "planned_steps": planned,
        "clips_per_s": round(steps * recipe["batch_size"] / max(seconds, 1e-9), 2),
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


def seed_lines(results: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The runs :func:`learning_chart` draws: each method's, or with several seeds each seed's
    as ``<method> seed <n>``."""
    lines = {}
    for method, result in results.items():
        for seed, run in result.get("seeds", {}).items() or [(None, result)]:
            lines[method if seed is None else f"{method} seed {seed}"] = run
    return lines


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
        runs: ``{corpus: {minutes: {method: result}}}``, results as :func:`run_method` gives.
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


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--data", default="demo_data",
                        help="the corpora (ssast-demo corpus, ssast-demo recorded), comma-separated")
    parser.add_argument("--minutes", default="3",
                        help="training minutes per method and run, probes left out; several budgets comma-separated")
    parser.add_argument("--methods", default=None,
                        help=f"comma-separated, of {', '.join(METHODS)} (default: all this checkout has)")
    parser.add_argument("--stretch", action=argparse.BooleanOptionalAction, default=True,
                        help="fit the recipes' schedules to each budget, timed by a pilot run")
    parser.add_argument("--pilot-minutes", type=float, default=1.0, help="length of the pilot that times a method")
    parser.add_argument("--probe-minutes", type=float, default=None,
                        help="probe every this many training minutes (default: a sixth of the budget)")
    parser.add_argument("--probe-steps", type=int, default=0, help="also probe every this many steps (0: off)")
    parser.add_argument("--max-clips", type=int, default=1000, help="clips per probe train and test set at most")
    parser.add_argument("--probe-split", choices=("test", "val"), default="test",
                        help="the labeled split the probes and the floor are scored on: val on the corpus that "
                             "chooses a setting, test on the one that reports it (CONTRIBUTING.md)")
    parser.add_argument("--layers", default="last",
                        help="the layers the probes read, comma-separated (last, all, a block): the first is reported "
                             "as <task>, the others as <task>@<choice>, all probed at the same steps")
    parser.add_argument("--epochs", type=int, default=None,
                        help="override the recipes' max_epochs (before any stretching)")
    parser.add_argument("--seeds", default=None,
                        help="run every method and budget once per seed, comma-separated, and report the mean gain and "
                             "its spread over them (default: once, with the recipes' seed)")
    parser.add_argument("--cli-args", default="", help="more ssast-pretrain options for every method, one string")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--out", type=Path, default=Path("runs/learning"), help="the runs' folders and the PNGs")
    args = parser.parse_args(argv)
    try:
        args.budgets = sorted({float(value) for value in args.minutes.split(",")})
    except ValueError:
        parser.error(f"--minutes takes numbers, comma-separated; got {args.minutes!r}")
    if min(args.budgets) <= 0:
        parser.error(f"--minutes must be positive, got {args.minutes!r}")
    args.corpora = [Path(value) for value in args.data.split(",")]
    try:
        args.seed_list = [int(value) for value in args.seeds.split(",")] if args.seeds else [None]
    except ValueError:
        parser.error(f"--seeds takes integers, comma-separated; got {args.seeds!r}")
    if len(set(args.seed_list)) < len(args.seed_list):
        parser.error(f"--seeds repeats a seed: {args.seeds!r}")
    if args.seeds and "--seed_everything" in shlex.split(args.cli_args):
        parser.error("give the seeds with --seeds, not --seed_everything in --cli-args")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    corpora = {}
    for path in args.corpora:
        if not (path / "unlabeled").is_dir():
            sys.exit(f"learning.py: error: {path} is not a corpus (no unlabeled/); make one with "
                     f"`ssast-demo corpus --out {path}` or `ssast-demo recorded --out {path}`")
        corpora[path.name] = path.resolve()
    if len(corpora) < len(args.corpora):
        sys.exit(f"learning.py: error: two corpora share a folder name in {args.data!r}; rename one")
    methods = args.methods.split(",") if args.methods else available_methods()
    unknown = [name for name in methods if name not in available_methods()]
    if unknown:
        sys.exit(f"learning.py: error: unknown or unavailable methods {unknown}; this checkout has "
                 f"{available_methods()}")
    out = args.out.resolve()
    floors = {name: logmel_floor(data, args.max_clips, args.probe_split) for name, data in corpora.items()}
    runs: dict[str, dict[float, dict[str, dict]]] = {}
    rates: dict[str, dict[str, float]] = {}
    for name, data in corpora.items():
        runs[name] = {minutes: {} for minutes in args.budgets}
        for method in methods:
            if args.stretch:
                print(f"learning.py: timing {method} on {name} ({args.pilot_minutes:g} min pilot)", file=sys.stderr,
                      flush=True)
                rates.setdefault(name, {})[method] = round(pilot(method, data, out / name, args), 2)
            for minutes in args.budgets:
                steps = math.floor(0.95 * rates[name][method] * minutes) if args.stretch else None
                budget = Budget(minutes, max(1, steps) if steps is not None else None)
                print(f"learning.py: pretraining {method} on {name} for {minutes:g} training minutes"
                      + (f" ({budget.steps} steps)" if budget.steps else ""), file=sys.stderr, flush=True)
                results = {}
                for seed in args.seed_list:
                    folder = f"{method}-{minutes:g}min" + (f"-seed{seed}" if len(args.seed_list) > 1 else "")
                    results[seed] = run_method(method, data, out / name / folder, args, budget, seed)
                runs[name][minutes][method] = (combine_seeds(results) if len(args.seed_list) > 1
                                               else results[args.seed_list[0]])
    pictures = {}
    out.mkdir(parents=True, exist_ok=True)
    for name in corpora:
        longest = max(args.budgets)
        pictures[name] = str(out / f"learning-{name}.png")
        learning_chart(seed_lines(runs[name][longest]), floors[name], longest, name).savefig(pictures[name])
    if len(args.budgets) > 1:
        pictures["budgets"] = str(out / "budgets.png")
        budgets_chart(runs, floors).savefig(pictures["budgets"])
    report = {
        "benchmark": "learning",
        "budgets_minutes": args.budgets,
        "stretched": args.stretch,
        "seeds": [seed for seed in args.seed_list if seed is not None],
        "probe_split": args.probe_split,
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "torch_threads": torch.get_num_threads(),
        "corpora": {name: str(data) for name, data in corpora.items()},
        "logmel_stats": floors,
        "steps_per_minute": rates,
        "runs": {name: {f"{minutes:g}": results for minutes, results in budgets.items()}
                 for name, budgets in runs.items()},
        "pictures": pictures,
    }
    print(json.dumps(report), flush=True)
    return report


if __name__ == "__main__":
    main()
