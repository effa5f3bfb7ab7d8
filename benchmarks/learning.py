"""Learning per minute (DESIGN.md §12): probe accuracy against pretraining wall-clock time.

Pretrains each method on a corpus's unlabeled pool for the same training time, one after
the other in this process, through the real ``ssast-pretrain`` program
(``pretrain.cli.main``) with each method's demo recipe:

* ``mspm``: ``configs/pretrain/mspm_demo.yaml`` with ``passes: 1`` (one shared encoder pass);
* ``asit``: ``configs/pretrain/asit_demo.yaml``;
* ``eat``: ``configs/pretrain/eat_demo.yaml``.

``--data`` takes one corpus or several (the built-in ``ssast-demo corpus`` and the recorded
``ssast-demo recorded``, comma-separated), ``--minutes`` one budget or several
(``5,15,30``): every method runs once per corpus and budget.

The recipes' schedules are fitted to each budget (``--stretch``, the default): a pilot of
``--pilot-minutes`` measures the method's training steps per minute on this machine (over its
second half: the first loads data and warms caches), and the run is then given the steps its
budget allows, with ``max_epochs`` and every knob that counts the run's steps
(:data:`learning_runs.RUN_LENGTH_KNOBS`, such as EAT's teacher anneal) scaled by the same
factor; warmups keep their length. ``--no-stretch`` keeps the recipes' lengths, so
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

Each run gets a :class:`~ssast.train.probe_callbacks.ProbeMonitor` on the corpus's keywords, speakers
and events train -> test sets (kNN and linear probe on the frozen exported encoder: at the
start, every ``--probe-minutes`` of training or ``--probe-steps`` steps, and at the end)
and a :class:`~ssast.train.probe_callbacks.TrainingBudget` that stops it after its budget of
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

This script holds the command line and the loop over corpora, methods, budgets and seeds;
beside it, ``learning_runs.py`` the recipes, pilots and pretraining runs,
``learning_probes.py`` the probe sets and the floor, ``learning_seeds.py`` the statistics over
seeds and ``learning_charts.py`` the charts.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
from pathlib import Path
from typing import Any

import torch

# Run as a script from anywhere: pretrain/ and ssast/ from this checkout; the modules beside
# this one import by name, benchmarks/ being sys.path[0].
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from learning_charts import budgets_chart, learning_chart  # noqa: E402
from learning_probes import logmel_floor  # noqa: E402
from learning_runs import METHODS, Budget, pilot, run_method  # noqa: E402
from learning_seeds import combine_seeds, seed_lines  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--data", default="demo_data",
                        help="the corpora (ssast-demo corpus, ssast-demo recorded), comma-separated")
    parser.add_argument("--minutes", default="3",
                        help="training minutes per method and run, probes left out; several budgets comma-separated")
    parser.add_argument("--methods", default=None,
                        help=f"comma-separated, of {', '.join(METHODS)} (default: all)")
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
    methods = args.methods.split(",") if args.methods else list(METHODS)
    unknown = [name for name in methods if name not in METHODS]
    if unknown:
        sys.exit(f"learning.py: error: unknown methods {unknown}; the methods are {list(METHODS)}")
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
