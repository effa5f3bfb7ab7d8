"""``ssast-finetune``: finetuning, evaluation and prediction from a YAML recipe.

    ssast-finetune fit      --config configs/finetune/demo_events.yaml --model.init_from runs/demo-mspm/encoder.safetensors
    ssast-finetune test     --config configs/finetune/demo_events.yaml --ckpt_path runs/.../best.ckpt
    ssast-finetune predict  --config configs/finetune/demo_events.yaml --ckpt_path ... --data.predict SHARDS
    ssast-finetune cv       --config configs/finetune/esc50.yaml       # every fold, then mean ± std

``cv`` trains on all folds but one and tests on that one, for each ``fold*`` folder (of
``data.train`` when it is a folder of folds, else beside its first entry), and prints the
test metric per fold and its mean and standard deviation.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

from lightning.pytorch.callbacks import ModelCheckpoint

from finetune.module import Finetune
from ssast.train.cli import ConciseParser, LogConfig, RunCLI, default_wandb_to_offline, run_program
from ssast.train.datamodule import AudioDataModule


class FinetuneCLI(RunCLI):
    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("data.target_length", "model.input_tdim")
        parser.link_arguments("model.task", "data.multi_label", compute_fn=lambda task: task == "multilabel")
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")
        parser.link_arguments("data.class_names", "model.class_names", apply_on="instantiate")


def build_cli(args: list[str], run: bool = True) -> FinetuneCLI:
    return FinetuneCLI(
        Finetune, AudioDataModule, save_config_callback=LogConfig, save_config_kwargs={"overwrite": True},
        parser_class=ConciseParser, parser_kwargs={"prog": "ssast-finetune"}, args=args, run=run,
    )


def fit_then_test(args: list[str], callbacks: tuple = ()) -> dict[str, float]:
    """Fit from ``args``, then test the best checkpoint (the last weights when there is
    none); returns the test metrics. ``callbacks`` join the recipe's."""
    cli = build_cli(args, run=False)
    cli.trainer.callbacks.extend(callbacks)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    best = next((callback.best_model_path for callback in cli.trainer.checkpoint_callbacks
                 if isinstance(callback, ModelCheckpoint) and callback.best_model_path), None)
    (scores,) = cli.trainer.test(cli.model, datamodule=cli.datamodule, ckpt_path=best)
    return scores


def _fold_folders(folder: Path) -> list[Path]:
    # Folders only: the shards inside a fold folder are named fold*-NNNNNN.tar too.
    return sorted(path for path in folder.glob("fold*") if path.is_dir())


def cross_validate(args: list[str]) -> list[float]:
    """Fit and test once per fold folder of ``data.train``; returns the test metrics."""
    probe = build_cli(args, run=False)
    train = probe.datamodule.hparams.train
    first = Path(train if isinstance(train, str) else train[0])
    root = first if _fold_folders(first) else first.parent
    folds = _fold_folders(root)
    if len(folds) < 2:
        raise SystemExit(f"cv needs data.train to be a folder of fold* folders; {root} has {len(folds)}")
    metric = f"test/{probe.model.metric_name}"
    output = Path(probe.trainer.default_root_dir)
    results = []
    for held_out in folds:
        others = [str(fold) for fold in folds if fold != held_out]
        fold_args = [*args, "--data.train", json.dumps(others), "--data.val", str(held_out),
                     "--data.test", str(held_out), "--trainer.default_root_dir", str(output / held_out.name)]
        results.append(fit_then_test(fold_args)[metric])
        print(f"{held_out.name}: {metric} = {results[-1]:.4f}")
    spread = statistics.stdev(results) if len(results) > 1 else 0.0
    print(f"{len(results)}-fold {metric}: {statistics.mean(results):.4f} ± {spread:.4f}  "
          f"({', '.join(f'{value:.4f}' for value in results)})")
    return results


def main(args: list[str] | None = None) -> None:
    args = sys.argv[1:] if args is None else list(args)
    default_wandb_to_offline()
    if args and args[0] == "cv":
        run_program("ssast-finetune cv", lambda: cross_validate(args[1:]))
        return
    run_program("ssast-finetune", lambda: build_cli(args))


if __name__ == "__main__":
    sys.exit(main())
