"""``ssast-finetune``: finetuning, evaluation and prediction from a YAML recipe.

    ssast-finetune fit      --config configs/finetune/speechcommands_v2.yaml --model.init_from SSAST-Base-Patch-400.pth
    ssast-finetune test     --config configs/finetune/demo_events.yaml --ckpt_path runs/.../best.ckpt
    ssast-finetune predict  --config configs/finetune/demo_events.yaml --ckpt_path ... --data.predict SHARDS
    ssast-finetune cv       --config configs/finetune/esc50.yaml       # every fold, the papers' figure

``fit`` ends by reporting the model its protocol reports (:func:`report_fit`): the weight
average where the recipe averages, else the epoch that did best on the validation set, else
(the validation set is the test set) the last epoch; it validates and tests that model and
writes ``result.json`` beside ``history.csv`` in the run folder.

``cv`` trains on all folds but one and validates on that one every epoch, for each
``fold*`` folder (of ``data.train`` when it is a folder of folds, else beside its first
entry). It reports as the official ``get_esc_result.py``: ONE epoch for all folds, the
argmax of the mean of the held-out folds' curves, and every fold at that epoch (a best
epoch per fold would be chosen on each fold's own test data); beside it the last epoch's
mean, which selects nothing. With ``data.val_split`` (SUPERB's emotion recognition) each
fold chooses on a dev set carved from its training folds and tests on the held-out fold;
the report is the mean of those tests. All of it goes to ``cv.json`` in the run folder.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
from lightning.pytorch.callbacks import ModelCheckpoint

from finetune.callbacks import History
from finetune.module import Finetune
from ssast.files import written_atomically
from ssast.train.callbacks import AverageEpochWeights
from ssast.train.cli import (
    ConciseParser, LogConfig, RunCLI, default_wandb_to_offline, run_program, stage_parser_kwargs,
)
from ssast.train.datamodule import AudioDataModule
from ssast.train.recovery import read_resumable

RESULT_FILE = "result.json"
CV_FILE = "cv.json"


BASE_RECIPE = Path(__file__).resolve().parents[1] / "configs/finetune/base.yaml"


class FinetuneCLI(RunCLI):
    def add_arguments_to_parser(self, parser) -> None:
        super().add_arguments_to_parser(parser)
        parser.link_arguments("data.target_length", "model.input_tdim")
        parser.link_arguments("model.task", "data.multi_label", compute_fn=lambda task: task == "multilabel")
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")
        parser.link_arguments("data.class_names", "model.class_names", apply_on="instantiate")

    def before_fit(self) -> None:
        history(self.trainer)

    def after_fit(self) -> None:
        self.result = report_fit(self.trainer, self.model, self.datamodule)

    def fit_and_report(self) -> dict[str, Any]:
        """``fit`` as the command line runs it, for a CLI built with ``run=False``."""
        self.before_fit()
        self.fit(self.model, datamodule=self.datamodule)
        self.after_fit()
        return self.result


def build_cli(args: list[str], run: bool = True, base: Path | None = BASE_RECIPE) -> FinetuneCLI:
    """The CLI; recipes compose on ``base`` (``configs/finetune/base.yaml``)."""
    return FinetuneCLI(
        Finetune, AudioDataModule, save_config_callback=LogConfig, save_config_kwargs={"overwrite": True},
        parser_class=ConciseParser, parser_kwargs=stage_parser_kwargs("ssast-finetune", base, run), args=args, run=run,
    )


def history(trainer: L.Trainer) -> History:
    """The trainer's :class:`History` callback, added when the recipe has none."""
    found = next((callback for callback in trainer.callbacks if isinstance(callback, History)), None)
    if found is None:
        found = History()
        trainer.callbacks.append(found)
    return found


def _best_checkpoint(trainer: L.Trainer) -> ModelCheckpoint | None:
    return next((callback for callback in trainer.checkpoint_callbacks
                 if isinstance(callback, ModelCheckpoint) and callback.monitor and callback.best_model_path), None)


def report_fit(trainer: L.Trainer, model: Finetune, datamodule: AudioDataModule) -> dict[str, Any]:
    """Validate and test the model the run's protocol reports, and say which it is:

    * with :class:`~ssast.train.callbacks.AverageEpochWeights`, the averaged weights (SSAST's
      AudioSet-20K), validated and tested;
    * else, when a checkpoint callback monitors a validation metric and the validation set is
      not the test set, the epoch it chose (SSAST's Speech Commands: test at the best
      validation epoch);
    * else the last epoch: nothing is chosen on a test set (ESC-50's held-out fold is both;
      its figure is ``cv``'s).

    Writes ``result.json`` in the run folder (``selected``, ``epoch``, ``step``, ``val``,
    ``test``, and a ``layers`` pooling's ``layer_weights``) and the test metric on its row of
    ``history.csv``; returns the same dict.
    """
    if trainer.interrupted:
        return {}
    rows = history(trainer).rows
    metric = model.metric_name
    data = datamodule.hparams
    val_is_test = data.val is not None and data.val == data.test
    averaging = next((callback for callback in trainer.callbacks if isinstance(callback, AverageEpochWeights)), None)
    best = _best_checkpoint(trainer)
    checkpoint, row, val = None, rows[-1] if rows else None, {}
    if averaging is not None and averaging.averaged:
        row = None
        selected = "the weights averaged over epochs {}-{}".format(*averaging.averaged)
        val = trainer.validate(model, datamodule=datamodule, verbose=False)[0] if data.val is not None else {}
    elif best is not None and not val_is_test:
        checkpoint = best.best_model_path
        step = read_resumable(checkpoint)["global_step"]
        row = next(row for row in rows if row["step"] == step)
        selected = f"epoch {row['epoch']} (step {step}), the best {best.monitor} on the validation set"
    else:
        why = "; the validation set is the test set, so nothing is selected on it" if val_is_test else ""
        selected = f"the last epoch ({row['epoch'] if row else None}){why}"
    if row is not None:
        val = {name: value for name, value in row.items() if name.startswith("val/") and value is not None}
    test = {}
    if data.test is not None:
        test = trainer.test(model, datamodule=datamodule, ckpt_path=checkpoint, verbose=False, weights_only=True)[0]
        if row is not None:
            history(trainer).record_test(trainer, metric, test[f"test/{metric}"], row["step"])
    result = {"selected": selected, "epoch": row["epoch"] if row else None, "step": row["step"] if row else None,
              "val": val, "test": test}
    if getattr(model, "layer_weights", None) is not None:
        result["layer_weights"] = model.layer_weights.probabilities.tolist()
    if trainer.is_global_zero:
        _write_json(Path(trainer.default_root_dir) / RESULT_FILE, result)
        figures = ", ".join(f"{name} {value:.4f}" for name, value in {**val, **test}.items() if name.endswith(metric))
        print(f"{trainer.default_root_dir}: {selected}: {figures}")
    return result


def fit_then_test(args: list[str], callbacks: tuple = ()) -> dict[str, float]:
    """Fit from ``args`` and report as ``fit`` does (:func:`report_fit`); returns the test
    metrics. ``callbacks`` join the recipe's."""
    cli = build_cli(args, run=False)
    cli.trainer.callbacks.extend(callbacks)
    return cli.fit_and_report()["test"]


def summarize_folds(curves: dict[str, list[float]], metric: str) -> dict[str, Any]:
    """The papers' cross-validation figure from each held-out fold's validation curve (one
    value per epoch): the epoch that maximizes the mean over folds, one for all folds, and
    every fold at it (mean ± sample standard deviation); and the mean at the last epoch."""
    lengths = {len(curve) for curve in curves.values()}
    if len(lengths) != 1 or 0 in lengths:
        raise ValueError(f"every fold needs the same number of validated epochs; got {lengths}")
    table = np.asarray(list(curves.values()), dtype=float)
    if np.isnan(table).any():
        raise ValueError(f"a fold has an epoch without {metric}: validate every epoch")
    mean_curve = table.mean(axis=0)
    best = int(np.argmax(mean_curve))  # the first of equal maxima, as get_esc_result.py's np.argmax
    at_epoch = table[:, best]
    return {
        "metric": metric,
        "epoch": best + 1,
        "mean": float(at_epoch.mean()),
        "std": float(at_epoch.std(ddof=1)) if len(at_epoch) > 1 else 0.0,
        "last_epoch_mean": float(table[:, -1].mean()),
        "mean_curve": mean_curve.tolist(),
        "folds": {name: {"curve": list(curve), "at_epoch": float(curve[best])} for name, curve in curves.items()},
    }


def _fold_folders(folder: Path) -> list[Path]:
    # Folders only: the shards inside a fold folder are named fold*-NNNNNN.tar too.
    return sorted(path for path in folder.glob("fold*") if path.is_dir())


def cross_validate(args: list[str]) -> dict[str, Any]:
    """Fit once per fold folder of ``data.train`` and report over the folds (also ``cv.json``).

    Without ``data.val_split`` the held-out fold is validated on every epoch and the folds are
    reported as :func:`summarize_folds` says (ESC-50). With it, each fold chooses its model on
    its own dev set (that share of the training folds) and tests it on the held-out fold, and
    the report is the mean of those tests (SUPERB's leave-one-session-out emotion recognition).
    """
    probe = build_cli(args, run=False)
    train = probe.datamodule.hparams.train
    first = Path(train if isinstance(train, str) else train[0])
    root = first if _fold_folders(first) else first.parent
    folds = _fold_folders(root)
    if len(folds) < 2:
        raise SystemExit(f"cv needs data.train to be a folder of fold* folders; {root} has {len(folds)}")
    dev_split = probe.datamodule.hparams.val_split is not None
    metric = f"{'test' if dev_split else 'val'}/{probe.model.metric_name}"
    output = Path(probe.trainer.default_root_dir)
    curves, results = {}, {}
    for held_out in folds:
        others = [str(fold) for fold in folds if fold != held_out]
        if dev_split:  # chosen on the dev share of the other folds, tested on this one
            evaluation = ["--data.test", str(held_out)]
        else:  # validated on this fold every epoch; the epoch is chosen over all folds
            evaluation = ["--data.val", str(held_out), "--data.test", "null"]
        fold_args = [*args, "--data.train", json.dumps(others), *evaluation,
                     "--trainer.default_root_dir", str(output / held_out.name)]
        cli = build_cli(fold_args, run=False)
        results[held_out.name] = cli.fit_and_report()
        curves[held_out.name] = history(cli.trainer).curve(metric)
    summary = summarize_tests(results, metric) if dev_split else summarize_folds(curves, metric)
    _write_json(output / CV_FILE, summary)
    if dev_split:
        tests = ", ".join(f"{name} {fold[metric]:.4f}" for name, fold in summary["folds"].items())
        print(f"{len(folds)}-fold {metric} of each fold's best dev step: {summary['mean']:.4f} ± {summary['std']:.4f}"
              f"  ({tests}); written to {output / CV_FILE}")
        return summary
    at_epoch = ", ".join(f"{name} {fold['at_epoch']:.4f}" for name, fold in summary["folds"].items())
    print(f"{len(folds)}-fold {metric} at epoch {summary['epoch']} (the best of the folds' mean curve, one epoch "
          f"for all folds): {summary['mean']:.4f} ± {summary['std']:.4f}  ({at_epoch})")
    print(f"at the last epoch ({len(summary['mean_curve'])}, nothing selected): {summary['last_epoch_mean']:.4f}; "
          f"written to {output / CV_FILE}")
    return summary


def summarize_tests(results: dict[str, dict[str, Any]], metric: str) -> dict[str, Any]:
    """Folds that each chose their model on a dev set of their own and tested it on the
    held-out fold (``result.json`` of each): the mean ± sample standard deviation of the
    tests."""
    tests = np.asarray([result["test"][metric] for result in results.values()], dtype=float)
    return {
        "metric": metric,
        "selection": "each fold: the best step on its dev set (data.val_split of the training folds)",
        "mean": float(tests.mean()),
        "std": float(tests.std(ddof=1)) if len(tests) > 1 else 0.0,
        "folds": {name: {metric: result["test"][metric], "epoch": result["epoch"], "step": result["step"]}
                  for name, result in results.items()},
    }


def _write_json(path: Path, content: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with written_atomically(path) as partial:
        partial.write_text(json.dumps(content, indent=1) + "\n")


def main(args: list[str] | None = None) -> None:
    args = sys.argv[1:] if args is None else list(args)
    default_wandb_to_offline()
    if args and args[0] == "cv":
        run_program("ssast-finetune cv", lambda: cross_validate(args[1:]))
        return
    run_program("ssast-finetune", lambda: build_cli(args))


if __name__ == "__main__":
    sys.exit(main())
