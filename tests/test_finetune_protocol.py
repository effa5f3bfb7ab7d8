"""Finetuning as the official SSAST/AST scripts do it: the learning rate of every step against
their loop, the cross-validation figure, weight averaging, history.csv and the model a
``fit`` reports."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from torch.optim.lr_scheduler import MultiStepLR

from finetune.callbacks import History
from finetune.cli import build_cli, main, summarize_folds
from finetune.module import Finetune
from ssast.augment import mix_targets
from ssast.data.cli import main as data_main
from ssast.train.callbacks import AverageEpochWeights
from ssast.train.datamodule import AudioDataModule
from ssast.schedules import WarmupStepDecay
from helpers import resolved_recipe, write_clip

REPO = Path(__file__).resolve().parents[1]
RECIPES = REPO / "configs/finetune"


def official_lrs(base_lrs: list[float], steps_per_epoch: int, epochs: int, start: int, step: int, decay: float,
                 warmup: bool, warmup_steps: int = 1000, warmup_every: int = 50) -> list[list[float]]:
    """The rate of every step of SSAST's ``train()`` (src/traintest.py): the warmup override
    at the top of each step, ``MultiStepLR(range(start, 1000, step))`` stepped after each
    epoch's validation. ``warmup_steps`` and ``warmup_every`` are its 1000 and 50."""
    parameters = [torch.nn.Parameter(torch.zeros(1)) for _ in base_lrs]
    optimizer = torch.optim.Adam([{"params": [p], "lr": lr} for p, lr in zip(parameters, base_lrs)])
    scheduler = MultiStepLR(optimizer, list(range(start, 1000, step)), gamma=decay)
    rates, global_step = [], 0
    for _ in range(epochs):
        for _ in range(steps_per_epoch):
            if global_step <= warmup_steps and global_step % warmup_every == 0 and warmup:
                for group, lr in zip(optimizer.param_groups, base_lrs):
                    group["lr"] = global_step / warmup_steps * lr
            rates.append([group["lr"] for group in optimizer.param_groups])
            optimizer.step()
            global_step += 1
        scheduler.step()
    return rates


def our_lrs(base_lrs: list[float], steps_per_epoch: int, epochs: int, **schedule) -> list[list[float]]:
    parameters = [torch.nn.Parameter(torch.zeros(1)) for _ in base_lrs]
    optimizer = torch.optim.Adam([{"params": [p], "lr": lr} for p, lr in zip(parameters, base_lrs)])
    scheduler = WarmupStepDecay(optimizer, steps_per_epoch, **schedule)
    rates = []
    for _ in range(steps_per_epoch * epochs):
        rates.append([group["lr"] for group in optimizer.param_groups])
        optimizer.step()
        scheduler.step()
    return rates


def assert_same_rates(ours: list[list[float]], official: list[list[float]]) -> None:
    assert len(ours) == len(official)
    for step, (mine, theirs) in enumerate(zip(ours, official)):
        assert mine == pytest.approx(theirs, rel=1e-12, abs=0), f"step {step}: {mine} != {theirs}"


# Clips in a training epoch of each set as the official loaders see them (drop_last) and the
# recipe's batch: ESC-50 1,600 clips a fold, Speech Commands v2 84,843, AudioSet-20K ~20k.
EPOCH_CLIPS = {"esc50": 1600, "speechcommands_v2": 84843, "audioset_20k": 20000}
OFFICIAL = {  # the official scripts' flags (DESIGN.md section 8)
    "esc50": dict(start=6, step=1, decay=0.85, warmup=False),            # run_esc_patch.sh
    "speechcommands_v2": dict(start=5, step=1, decay=0.85, warmup=True),  # run_sc.sh
    "audioset_20k": dict(start=10, step=5, decay=0.5, warmup=False),      # run_as.sh
}


@pytest.mark.parametrize("recipe", sorted(OFFICIAL))
def test_every_step_of_a_recipe_has_the_official_loops_rate(recipe):
    config = resolved_recipe("finetune", recipe)
    model = config["model"]
    steps_per_epoch = EPOCH_CLIPS[recipe] // config["global_batch_size"]
    epochs = config["trainer"]["max_epochs"]
    base_lrs = [model["lr"], model["lr"] * model["head_lr_scale"]]
    official = official_lrs(base_lrs, steps_per_epoch, epochs, **OFFICIAL[recipe])
    assert model["schedule"] == "step"
    ours = our_lrs(base_lrs, steps_per_epoch, epochs, decay_start=model["lr_decay_start"],
                   decay_every=model["lr_decay_every"], decay_factor=model["lr_decay_factor"],
                   warmup_steps=model["warmup_steps"], warmup_every=model["warmup_every"])
    assert_same_rates(ours, official)


@pytest.mark.parametrize("steps_per_epoch", [1, 3, 7, 50, 333])
@pytest.mark.parametrize("start,step,decay", [(0, 1, 0.85), (2, 3, 0.5), (6, 1, 0.85)])
def test_decays_inside_the_warmup_are_overwritten_as_in_the_official_loop(steps_per_epoch, start, step, decay):
    official = official_lrs([1e-4, 5e-4], steps_per_epoch, 12, start, step, decay, warmup=True)
    ours = our_lrs([1e-4, 5e-4], steps_per_epoch, 12, decay_start=start, decay_every=step, decay_factor=decay,
                   warmup_steps=1000, warmup_every=50)
    assert_same_rates(ours, official)


def test_the_esc50_recipe_reads_1e4_for_six_epochs_then_decays():
    rates = our_lrs([1e-4], 1, 9, decay_start=6, decay_every=1, decay_factor=0.85)
    assert [rate for (rate,) in rates] == pytest.approx([1e-4] * 6 + [8.5e-5, 7.225e-5, 6.14125e-5])


# --- the cross-validation figure ------------------------------------------------------------


def test_cv_reports_one_epoch_for_all_folds_not_each_folds_best():
    curves = {"fold1": [0.5, 0.9, 0.6], "fold2": [0.6, 0.6, 0.8], "fold3": [0.7, 0.6, 0.8]}
    summary = summarize_folds(curves, "val/acc")
    # The mean curve is 0.6, 0.7, 0.7333: epoch 3 for every fold; each fold's own best
    # (0.9, 0.8, 0.8: mean 0.8333) would be chosen on its own test fold.
    assert summary["epoch"] == 3
    assert summary["mean"] == pytest.approx(np.mean([0.6, 0.8, 0.8]))
    assert summary["std"] == pytest.approx(np.std([0.6, 0.8, 0.8], ddof=1))
    assert summary["last_epoch_mean"] == pytest.approx(np.mean([0.6, 0.8, 0.8]))
    assert {name: fold["at_epoch"] for name, fold in summary["folds"].items()} == {"fold1": 0.6, "fold2": 0.8,
                                                                                   "fold3": 0.8}
    tied = summarize_folds({"a": [0.5, 0.7, 0.7], "b": [0.5, 0.7, 0.7]}, "val/acc")
    assert tied["epoch"] == 2 and tied["last_epoch_mean"] == pytest.approx(0.7)  # the first of equal maxima
    with pytest.raises(ValueError, match="same number"):
        summarize_folds({"a": [0.5], "b": [0.5, 0.6]}, "val/acc")


def test_mixed_targets_take_the_partners_labels_by_lambda():
    targets = torch.eye(3)
    mixed = mix_targets(targets, torch.tensor([1, 2, 0]), torch.tensor([0.7, 1.0, 0.4]))
    assert torch.allclose(mixed, torch.tensor([[0.7, 0.3, 0.0], [0.0, 1.0, 0.0], [0.6, 0.0, 0.4]]))


# --- a short run: rates, weight averaging, history.csv --------------------------------------


class Snapshots(L.Callback):
    """The module's weights at the end of every training epoch."""

    def __init__(self) -> None:
        self.weights: list[dict[str, torch.Tensor]] = []
        self.rates: list[float] = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self.rates.append(next(g for g in optimizer.param_groups if g["name"] == "head")["lr"])

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.weights.append({name: value.detach().clone() for name, value in pl_module.state_dict().items()})


def short_fit(corpus: Path, root: Path, epochs: int, callbacks: list, **model) -> tuple[L.Trainer, Finetune]:
    torch.manual_seed(0)
    data = AudioDataModule(train=str(corpus / "events/train"), val=str(corpus / "events/val"),
                           test=str(corpus / "events/test"), target_length=32, batch_size=3, num_workers=0,
                           classes="auto", stats="audioset")
    module = Finetune(num_classes=2, size="mini", fshape=128, tshape=2, input_tdim=32, **model)
    trainer = L.Trainer(max_epochs=epochs, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, num_sanity_val_steps=0, default_root_dir=str(root),
                        callbacks=callbacks, enable_model_summary=False)
    trainer.fit(module, datamodule=data)
    return trainer, module


def test_a_short_run_steps_at_the_official_rates_and_writes_its_history(tiny_corpus, tmp_path):
    snapshots, history = Snapshots(), History()
    schedule = dict(lr_decay_start=1, lr_decay_every=2, lr_decay_factor=0.5, warmup_steps=5, warmup_every=2)
    trainer, module = short_fit(tiny_corpus, tmp_path, 6, [snapshots, history], lr=1e-3, head_lr_scale=3.0,
                                **schedule)
    steps_per_epoch = 8 // 3  # 8 training clips at batch 3: one pass, the last 2 clips dropped
    assert trainer.global_step == 6 * steps_per_epoch
    official = official_lrs([3e-3], steps_per_epoch, 6, start=1, step=2, decay=0.5, warmup=True, warmup_steps=5,
                            warmup_every=2)
    assert snapshots.rates == pytest.approx([rate for (rate,) in official], rel=1e-12)

    rows = list(csv.DictReader((tmp_path / "history.csv").open()))
    assert list(rows[0]) == ["epoch", "step", "lr", "train/loss", "val/loss", "val/acc", "test/acc"]
    assert [int(row["epoch"]) for row in rows] == [1, 2, 3, 4, 5, 6]
    assert [int(row["step"]) for row in rows] == [2, 4, 6, 8, 10, 12]
    last_of_each_epoch = [official[epoch * steps_per_epoch - 1][0] for epoch in range(1, 7)]
    assert [float(row["lr"]) for row in rows] == pytest.approx(last_of_each_epoch, rel=1e-12)
    assert all(float(row["train/loss"]) > 0 and 0 <= float(row["val/acc"]) <= 1 for row in rows)
    assert all(row["test/acc"] == "" for row in rows)  # nothing tested yet


def test_weight_averaging_is_the_mean_of_the_epochs_weights(tiny_corpus, tmp_path):
    snapshots, averaging = Snapshots(), AverageEpochWeights(2, 4)
    trainer, module = short_fit(tiny_corpus, tmp_path, 5, [snapshots, averaging], lr=1e-3)
    assert averaging.averaged == (2, 4)
    for name, value in module.state_dict().items():
        epochs = [snapshot[name] for snapshot in snapshots.weights[1:4]]
        expected = (epochs[0] + epochs[1] + epochs[2]) / 3.0  # validate_wa: sum in order, then divide
        assert torch.equal(value, expected), name
    assert not torch.equal(module.state_dict()["head.linear.weight"], snapshots.weights[-1]["head.linear.weight"])
    saved = torch.load(tmp_path / "checkpoints/averaged.ckpt", map_location="cpu", weights_only=True)
    assert all(torch.equal(saved["state_dict"][name], value) for name, value in module.state_dict().items())


def test_weight_averaging_resumes_with_its_sum(tiny_corpus, tmp_path):
    averaging = AverageEpochWeights(1, 3)
    short_fit(tiny_corpus, tmp_path, 2, [averaging], lr=1e-3)
    resumed = AverageEpochWeights(1, 3)
    resumed.load_state_dict(averaging.state_dict())
    assert resumed.epochs == [1, 2] and resumed.total.keys() == averaging.total.keys()
    with pytest.raises(ValueError):
        AverageEpochWeights(3, 2)


# --- what fit reports -------------------------------------------------------------------------


def cli_args(corpus: Path, run: Path, *extra: str) -> list[str]:
    logger = {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": str(run)}}
    return [
        "--config", str(RECIPES / "demo.yaml"), "--config", str(RECIPES / "demo_events.yaml"), "--model.init_from", "null",
        "--data.train", str(corpus / "events/train"), "--data.val", str(corpus / "events/val"),
        "--data.test", str(corpus / "events/test"), "--data.num_workers", "0", "--data.batch_size", "4",
        "--data.target_length", "32", "--trainer.max_epochs", "3", "--trainer.default_root_dir", str(run),
        "--trainer.logger", json.dumps(logger), "--trainer.enable_progress_bar", "false", *extra,
    ]


def test_fit_tests_the_best_validation_epoch_and_says_so(tiny_corpus, tmp_path):
    run = tmp_path / "run"
    cli = build_cli(["fit", *cli_args(tiny_corpus, run)])
    result = json.loads((run / "result.json").read_text())
    assert result == cli.result
    assert result["selected"].startswith(f"epoch {result['epoch']} (step {result['step']}), the best val/acc")
    rows = list(csv.DictReader((run / "history.csv").open()))
    accuracies = [float(row["val/acc"]) for row in rows]
    assert result["epoch"] == 1 + int(np.argmax(accuracies))
    tested = [row for row in rows if row["test/acc"]]
    assert [int(row["epoch"]) for row in tested] == [result["epoch"]]
    assert float(tested[0]["test/acc"]) == pytest.approx(result["test"]["test/acc"])


def test_fit_selects_nothing_on_a_test_set_it_validates_on(tiny_corpus, tmp_path):
    run = tmp_path / "run"
    build_cli(["fit", *cli_args(tiny_corpus, run, "--data.test", str(tiny_corpus / "events/val"))])
    result = json.loads((run / "result.json").read_text())
    assert result["epoch"] == 3 and "nothing is selected" in result["selected"]


def test_fit_reports_the_averaged_weights(tiny_corpus, tmp_path):
    run = tmp_path / "run"
    averaging = {"class_path": "ssast.train.callbacks.AverageEpochWeights",
                 "init_args": {"first_epoch": 2, "last_epoch": 3}}
    build_cli(["fit", *cli_args(tiny_corpus, run, "--trainer.callbacks+", json.dumps(averaging))])
    result = json.loads((run / "result.json").read_text())
    assert result["selected"] == "the weights averaged over epochs 2-3" and result["epoch"] is None
    assert set(result["val"]) >= {"val/acc", "val/loss"} and "test/acc" in result["test"]
    assert (run / "checkpoints/averaged.ckpt").exists()


# --- the ESC-50 recipe end to end -------------------------------------------------------------


def fake_esc50(parent: Path, clips_per_class: int = 4) -> Path:
    """ESC-50's published layout with two classes and ``clips_per_class`` clips of each per fold."""
    root = parent / "ESC-50-master"
    (root / "meta").mkdir(parents=True)
    lines = ["filename,fold,target,category,esc10,src_file,take"]
    for fold in range(1, 6):
        for target, category, freq in ((0, "dog", 300), (19, "thunderstorm", 1500)):
            for take in range(clips_per_class):
                name = f"{fold}-{1000 + take}-A-{target}.wav"
                lines.append(f"{name},{fold},{target},{category},False,{1000 + take},A")
                write_clip(root / "audio" / name, 0.4, rate=16000, freq=freq + 40 * take + 10 * fold)
    (root / "meta/esc50.csv").write_text("\n".join(lines) + "\n")
    return root


@pytest.mark.slow
def test_esc50_cross_validation_as_the_official_scripts(tmp_path):
    source = fake_esc50(tmp_path)
    data = tmp_path / "esc50"
    data_main(["esc50", str(source), str(data), "--workers", "1"])
    run = tmp_path / "cv"
    logger = {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": str(run)}}
    main(["cv", "--config", str(RECIPES / "esc50_folds.yaml"), "--config", str(RECIPES / "esc50.yaml"),
          "--model.init_from", "null", "--model.size", "mini",
          "--data.train", str(data), "--data.target_length", "48", "--model.timem", "12", "--data.batch_size", "8",
          "--data.num_workers", "0", "--trainer.max_epochs", "8", "--trainer.accelerator", "cpu",
          "--trainer.devices", "1", "--trainer.precision", "32-true", "--trainer.default_root_dir", str(run),
          "--trainer.logger", json.dumps(logger), "--trainer.enable_progress_bar", "false"])
    curves = {}
    for fold in range(1, 6):
        rows = list(csv.DictReader((run / f"fold{fold}/history.csv").open()))
        rates = [float(row["lr"]) for row in rows]
        assert rates == pytest.approx([1e-4] * 6 + [8.5e-5, 7.225e-5], rel=1e-12)
        assert [int(row["step"]) for row in rows] == [4 * epoch for epoch in range(1, 9)]  # 32 clips at 8: 4 steps
        curves[f"fold{fold}"] = [float(row["val/acc"]) for row in rows]
    summary = json.loads((run / "cv.json").read_text())
    mean_curve = np.mean(list(curves.values()), axis=0)
    assert summary["epoch"] == 1 + int(np.argmax(mean_curve))
    assert summary["mean"] == pytest.approx(np.mean([curve[summary["epoch"] - 1] for curve in curves.values()]))
    assert summary["last_epoch_mean"] == pytest.approx(mean_curve[-1])
    for name, curve in curves.items():
        assert summary["folds"][name]["curve"] == pytest.approx(curve)
    assert math.isfinite(summary["std"]) and summary["metric"] == "val/acc"
