"""The learning benchmark's pretraining runs: each method's demo recipe, the ``ssast-pretrain
fit`` command line that runs it under a training-time budget with probes, the pilot that
times its steps per minute, the recipe's schedules fitted to the steps a budget allows, and
one run summarized from its probes.

Imported by ``learning.py``, which puts this checkout on ``sys.path`` first."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import math
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from learning_probes import probe_tasks

log = logging.getLogger("benchmarks.learning")
REPO = Path(__file__).resolve().parents[1]

# name -> (its demo recipe, composed on configs/pretrain/demo.yaml; options on top of it)
METHODS: dict[str, tuple[str, list[str]]] = {
    "mspm": ("configs/pretrain/mspm_demo.yaml", ["--model.init_args.passes", "1"]),
    "asit": ("configs/pretrain/asit_demo.yaml", []),
    "eat": ("configs/pretrain/eat_demo.yaml", []),
}
DEMO_FAMILY = "configs/pretrain/demo.yaml"
# Knobs that count the steps of the whole run, scaled with it when a recipe is fitted to a budget.
RUN_LENGTH_KNOBS: dict[str, tuple[str, ...]] = {"eat": ("ema_anneal_end_step",)}


@dataclass(frozen=True)
class Budget:
    """One run's length: its training minutes and, when fitted to them, its steps."""

    minutes: float
    steps: int | None = None  # None: the recipe's own length


def recipe_settings(method: str, args: argparse.Namespace) -> dict[str, Any]:
    """What a method's recipe says about its run's length: ``batch_size`` (clips per step, on
    one device as the demo recipes run, or the batch ``--cli-args`` sets), ``max_epochs``
    (or ``--epochs``), ``batches_per_epoch``, ``steps`` and its :data:`RUN_LENGTH_KNOBS`."""
    recipe = resolved_recipe(method)
    data = recipe["data"]
    batch_size = recipe["global_batch_size"]
    extra = shlex.split(args.cli_args)
    for option in ("--global_batch_size", "--data.batch_size"):
        if option in extra:
            batch_size = int(extra[extra.index(option) + 1])
    epochs = args.epochs or recipe["trainer"]["max_epochs"]
    knobs = {name: recipe["model"]["init_args"][name] for name in RUN_LENGTH_KNOBS.get(method, ())
             if name in recipe["model"]["init_args"]}
    return {"batch_size": batch_size, "max_epochs": epochs, "batches_per_epoch": data["batches_per_epoch"],
            "steps": epochs * data["batches_per_epoch"], "run_length_knobs": knobs}


def config_args(method: str) -> list[str]:
    """The ``--config`` arguments of a method's demo recipe, composed on the demo family."""
    return [arg for recipe in (DEMO_FAMILY, METHODS[method][0]) for arg in ("--config", str(REPO / recipe))]


def resolved_recipe(method: str) -> dict[str, Any]:
    """A method's demo recipe as ``ssast-pretrain`` resolves it (``--print_config``)."""
    from pretrain.cli import build_cli

    output = io.StringIO()
    try:
        with contextlib.redirect_stdout(output):
            build_cli(["fit", *config_args(method), "--print_config"])
    except SystemExit as exited:
        if exited.code not in (0, None):
            raise
    return yaml.safe_load(output.getvalue())


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
    options = METHODS[method][1]
    callbacks: list[dict[str, Any]] = [
        {"class_path": "ssast.train.probe_callbacks.TrainingBudget", "init_args": {"minutes": budget.minutes}}]
    if probes:
        callbacks.insert(0, {"class_path": "ssast.train.probe_callbacks.ProbeMonitor", "init_args": {
            "tasks": probe_tasks(data, args.layers.split(","), args.probe_split), "every_n_steps": args.probe_steps,
            "every_minutes": args.probe_minutes or budget.minutes / 6, "max_clips": args.max_clips,
            "history_file": str(run / "probes.json"),
        }})
    logger = {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": str(run), "name": "csv"}}
    command = [
        "fit", *config_args(method), *options,
        "--data.train", str(data / "unlabeled"),
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
    from ssast.train.probe_callbacks import TrainingBudget

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
