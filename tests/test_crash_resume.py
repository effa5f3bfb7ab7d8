"""Crashes for real: processes killed with SIGKILL while writing checkpoints, an
``ssast-pretrain fit`` killed mid-epoch, then resumed with ``--ckpt_path last`` (the saved
step, the schedules and the W&B run all continue), and one sent SLURM's requeue signal.
Plus what both CLIs install for it, and when ``last.ckpt`` is written: at every validation
and epoch end, whatever the metric, and on wall-clock time."""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import logging
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from lightning.pytorch.loggers import WandbLogger
from torch.utils.data import DataLoader

from finetune.cli import build_cli
from finetune.module import Finetune
from helpers import recipe_args
from pretrain.base import PretrainModule
from pretrain.cli import BASE_RECIPE, PretrainCLI
from pretrain.cli import build_cli as pretrain_cli
from ssast.data.options import ReaderOptions
from ssast.files import written_atomically
from ssast.schedules import WarmupCosine, WarmupPlateau, cosine_ramp, linear_warmup
from ssast.train.cli import RunCLI, run_program, stage_parser_kwargs
from ssast.train.callbacks import LastCheckpoint, MetricHistory, MetricsSummary, RunCheckpoint
from ssast.train.datamodule import AudioDataModule
from ssast.train.recovery import (
    AtomicCheckpointIO, DiskFullError, ResumeError, WandbRunId, check_resumable, checkpoint_bytes, last_checkpoint,
    newest_checkpoint,
)

REPO = Path(__file__).resolve().parents[1]
TESTED_LIGHTNING = re.search(r'"lightning(.*?)"', (REPO / "pyproject.toml").read_text()).group(1)


# --- what the CLIs install -----------------------------------------------------------------


def test_both_clis_write_checkpoints_atomically_and_record_the_wandb_run(tmp_path):
    (tmp_path / "classes.txt").write_text("a\nb\n")
    trainer = ["--trainer.logger", "false", "--trainer.default_root_dir", str(tmp_path)]
    pretrain = pretrain_cli(["--config", str(REPO / "configs/pretrain/demo.yaml"), "--config",
                             str(REPO / "configs/pretrain/mspm_demo.yaml"), *trainer], run=False)
    finetune = build_cli(["--config", str(REPO / "configs/finetune/demo.yaml"), "--config",
                          str(REPO / "configs/finetune/demo_events.yaml"), *trainer,
                          "--model.init_from", "null", "--data.train", str(tmp_path),
                          "--data.classes", str(tmp_path / "classes.txt")], run=False)
    for cli in (pretrain, finetune):
        assert type(cli.trainer.strategy.checkpoint_io) is AtomicCheckpointIO
        assert sum(isinstance(callback, WandbRunId) for callback in cli.trainer.callbacks) == 1


def test_a_failed_write_keeps_the_previous_file(tmp_path):
    path = tmp_path / "last.ckpt"
    path.write_text("previous")
    with pytest.raises(OSError, match="disk full"):
        with written_atomically(path) as temp:
            temp.write_text("half")
            raise OSError("disk full")
    assert path.read_text() == "previous" and [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]
    with written_atomically(path) as temp:
        temp.write_text("new")
    assert path.read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


class FitArguments(PretrainCLI):
    """ssast-pretrain's CLI, stopped where it would fit: what fit would be given, and the trainer."""

    def fit(self, model, **kwargs):
        self.fit_kwargs = kwargs


def resolved(run: Path, *extra: str) -> FitArguments:
    return FitArguments(PretrainModule, AudioDataModule, subclass_mode_model=True,
                        parser_kwargs=stage_parser_kwargs("ssast-pretrain", BASE_RECIPE, subcommands=True), args=[
        "fit", "--config", str(REPO / "configs/pretrain/demo.yaml"), "--config",
        str(REPO / "configs/pretrain/mspm_demo.yaml"), "--trainer.default_root_dir", str(run),
        "--trainer.logger.init_args.save_dir", str(run), *extra])


def test_ckpt_path_last_takes_the_newest_of_last_and_slurms_checkpoints(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    assert last_checkpoint(tmp_path) is None
    for age, name in enumerate(["hpc_ckpt_2.ckpt", "checkpoints/last.ckpt", "hpc_ckpt_1.ckpt"]):
        (tmp_path / name).write_bytes(b"")
        os.utime(tmp_path / name, (1e9 - age, 1e9 - age))  # the first is the newest
    assert last_checkpoint(tmp_path) == str(tmp_path / "hpc_ckpt_2.ckpt")
    os.utime(tmp_path / "checkpoints/last.ckpt", (2e9, 2e9))
    assert last_checkpoint(tmp_path) == str(tmp_path / "checkpoints/last.ckpt")
    assert last_checkpoint(tmp_path, dirpath=tmp_path / "elsewhere") == str(tmp_path / "hpc_ckpt_2.ckpt")


def test_a_resumed_fit_takes_the_last_checkpoint_and_continues_its_wandb_run(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    run = tmp_path / "run"
    fresh = resolved(run, "--ckpt_path", "last")  # nothing to resume yet: a fresh start, a new W&B run
    assert fresh.fit_kwargs["ckpt_path"] is None and fresh.trainer.logger.version is None

    (run / "checkpoints").mkdir(parents=True)
    torch.save({"state_dict": {}, "global_step": 3, WandbRunId.key: "abc123"}, run / "checkpoints/last.ckpt")
    resumed = resolved(run, "--ckpt_path", "last")
    assert resumed.fit_kwargs["ckpt_path"] == str(run / "checkpoints/last.ckpt")
    logger = resumed.trainer.logger
    assert isinstance(logger, WandbLogger) and logger.version == "abc123"  # W&B continues it (resume="allow")
    assert resumed.config.fit.trainer.logger.init_args.id == "abc123"  # as config.yaml will record it

    # A recipe's own id wins; a LastCheckpoint with its own dirpath is looked into.
    (tmp_path / "mine").mkdir()
    torch.save({"state_dict": {}, WandbRunId.key: "other"}, tmp_path / "mine/last.ckpt")
    last = json.dumps({"class_path": "ssast.train.callbacks.LastCheckpoint", "init_args": {"dirpath": str(tmp_path / "mine")}})
    chosen = resolved(run, "--ckpt_path", "last", "--trainer.logger.init_args.id", "mine", "--trainer.callbacks+", last)
    assert chosen.fit_kwargs["ckpt_path"] == str(tmp_path / "mine/last.ckpt") and chosen.trainer.logger.version == "mine"


# --- last.ckpt: at every checkpointing point, and on wall-clock time ------------------------


FRAMES = 16


def clips(count: int, seed: int = 0) -> DataLoader:
    """Batches of normalized log-mels and labels, as the data module hands them over."""
    generator = torch.Generator().manual_seed(seed)
    return DataLoader([{"fbank": torch.randn(2, FRAMES, 128, generator=generator),
                        "labels": torch.randint(0, 2, (2,), generator=generator)} for _ in range(count)],
                      batch_size=None)


def frozen_finetune() -> Finetune:
    """A model whose validation figures never change (lr 0): its metric never improves. (Its
    encoder is frozen too, only to make the steps cheap.)"""
    return Finetune(num_classes=2, size="mini", fshape=128, tshape=2, input_tdim=FRAMES, lr=0.0, min_lr=0.0,
                    warmup_steps=1, freeze_encoder=True)


class Saves(L.Callback):
    """The global step of every checkpoint written."""

    def __init__(self) -> None:
        self.steps: list[int] = []

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        self.steps.append(trainer.global_step)


def quiet_trainer(tmp_path: Path, callbacks: list[L.Callback], **options) -> L.Trainer:
    settings = dict(accelerator="cpu", devices=1, max_epochs=3, logger=False, enable_progress_bar=False,
                    enable_model_summary=False, default_root_dir=tmp_path, num_sanity_val_steps=1)
    return L.Trainer(**{**settings, **options}, callbacks=callbacks)


def test_last_ckpt_follows_every_validation_even_when_the_metric_stalls(tmp_path):
    best, last, saves = RunCheckpoint(monitor="val/acc", mode="max", filename="best"), LastCheckpoint(), Saves()
    trainer = quiet_trainer(tmp_path, [best, last, saves], max_epochs=2, val_check_interval=2)
    trainer.fit(frozen_finetune(), train_dataloaders=clips(4), val_dataloaders=clips(1, seed=1))
    # Validations at steps 2 and 4 of each 4-step epoch: the one that ends an epoch is saved once,
    # at the epoch's end; none during the sanity check. The best file stays at the first.
    assert saves.steps == [2, 2, 4, 6, 8]  # step 2: best.ckpt, then last.ckpt
    assert torch.load(tmp_path / "checkpoints/last.ckpt", weights_only=True)["global_step"] == 8
    assert torch.load(tmp_path / "checkpoints/best.ckpt", weights_only=True)["global_step"] == 2
    assert newest_checkpoint(trainer) == str(tmp_path / "checkpoints/last.ckpt")


class Clock(L.Callback):
    """A fake clock for LastCheckpoint: every training batch takes ``minutes``."""

    def __init__(self, minutes: float) -> None:
        self.minutes, self.now = minutes, 0.0

    def __call__(self) -> float:
        return self.now

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.now += 60 * self.minutes


def test_last_ckpt_is_also_written_on_wall_clock_time(tmp_path):
    last, clock, saves = LastCheckpoint(every_minutes=25), Clock(minutes=10), Saves()
    last.clock = clock
    trainer = quiet_trainer(tmp_path, [clock, last, saves], max_epochs=1, limit_val_batches=0)
    trainer.fit(frozen_finetune(), train_dataloaders=clips(8))
    assert saves.steps == [3, 6, 8]  # 30 and 60 minutes in (25 had passed), then the epoch's end
    assert torch.load(tmp_path / "checkpoints/last.ckpt", weights_only=True)["global_step"] == 8

    with pytest.raises(ValueError, match="every_minutes must be positive"):
        LastCheckpoint(every_minutes=0)
    # Nothing is written by a fast_dev_run, whatever the time.
    quick, saves = LastCheckpoint(every_minutes=1e-9), Saves()
    quiet_trainer(tmp_path / "quick", [quick, saves], fast_dev_run=2).fit(frozen_finetune(), train_dataloaders=clips(4))
    assert saves.steps == [] and not (tmp_path / "quick/checkpoints").exists()


def test_a_full_disk_is_named_with_the_space_a_checkpoint_needs_and_the_last_one_kept(tmp_path, monkeypatch):
    """Issue 37, finding 3: a checkpoint that did not fit failed with torch's "unexpected pos".
    (A real 3 MB tmpfs gave the same two messages; mounting one needs root, so here the disk's
    free space is what shutil reports and the write fails as torch's does.)"""
    last = LastCheckpoint()
    trainer = quiet_trainer(tmp_path, [last], max_epochs=1, limit_val_batches=0, plugins=[AtomicCheckpointIO()])
    trainer.fit(frozen_finetune(), train_dataloaders=clips(2))
    written = (tmp_path / "checkpoints/last.ckpt").read_bytes()
    needed = checkpoint_bytes(torch.load(tmp_path / "checkpoints/last.ckpt", weights_only=True))

    real_usage = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda path: real_usage(path)._replace(free=needed // 2))
    with pytest.raises(DiskFullError) as full:
        last.save(trainer)
    assert str(full.value) == (
        f"no space left on device at {tmp_path / 'checkpoints'}: a checkpoint needs ~{needed / 2**20:.1f} MB, "
        f"{needed // 2 / 2**20:.1f} MB free before writing. The previous checkpoint is intact: free some space (or "
        "set trainer.default_root_dir elsewhere) and resume with --ckpt_path last")
    monkeypatch.setattr(shutil, "disk_usage", real_usage)

    def short_write(checkpoint, path):  # what torch's zip writer raises when the disk fills mid-write
        Path(path).write_bytes(b"PK" + bytes(100))
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 768 vs 662")

    monkeypatch.setattr(torch, "save", short_write)
    with pytest.raises(DiskFullError, match="no space left on device at .*: a checkpoint needs"):
        last.save(trainer)
    assert (tmp_path / "checkpoints/last.ckpt").read_bytes() == written  # intact
    assert [path.name for path in (tmp_path / "checkpoints").iterdir()] == ["last.ckpt"]  # no partial left

    def fit() -> None:  # the error as a program meets it, passed on by Lightning
        raise RuntimeError("the fit failed") from full.value

    with pytest.raises(SystemExit) as exited:
        run_program("ssast-pretrain", fit)
    assert exited.value.code == f"ssast-pretrain: error: {full.value}"


def test_checkpoints_are_written_and_read_with_weights_only_said(tmp_path, caplog):
    """Lightning says "`weights_only` was not set" on every save that does not say it (five
    times in `make demo`, issue 37): last.ckpt says it, and the CLIs read with weights_only."""
    with caplog.at_level(logging.INFO):
        quiet_trainer(tmp_path, [LastCheckpoint()], max_epochs=2, limit_val_batches=0).fit(
            frozen_finetune(), train_dataloaders=clips(2))
    assert (tmp_path / "checkpoints/last.ckpt").is_file()
    assert not [record for record in caplog.records if "weights_only" in record.getMessage()]
    assert RunCLI._checked(frozen_finetune(), {"ckpt_path": None})["weights_only"] is True
    assert RunCLI._checked(frozen_finetune(), {"weights_only": False})["weights_only"] is False  # as the user said


def test_what_the_metric_callbacks_kept_survives_a_resume(tmp_path):
    def fit(epochs: int, ckpt_path: Path | None = None) -> tuple[MetricHistory, MetricsSummary]:
        history, summary = MetricHistory(("val/loss",)), MetricsSummary(("train/loss", "val/loss"))
        torch.manual_seed(0)
        learning = Finetune(num_classes=2, size="mini", fshape=128, tshape=2, input_tdim=FRAMES, lr=0.1,
                            warmup_steps=1, freeze_encoder=True)  # its losses move from epoch to epoch
        trainer = quiet_trainer(tmp_path, [history, summary, LastCheckpoint()], max_epochs=epochs)
        trainer.fit(learning, train_dataloaders=clips(2), val_dataloaders=clips(1, seed=1), ckpt_path=ckpt_path)
        return history, summary

    history, summary = fit(epochs=1)
    resumed_history, resumed_summary = fit(epochs=2, ckpt_path=tmp_path / "checkpoints/last.ckpt")
    losses = resumed_history.history["val/loss"]
    assert len(losses) == 2 and losses[0] == history.history["val/loss"][0] and losses[1] != losses[0]
    assert resumed_summary.first == summary.first  # where the run started, not where it resumed
    assert resumed_summary.last["val/loss"] == losses[1]


def test_a_resumed_run_draws_what_the_uninterrupted_run_would_have(tiny_corpus, tmp_path):
    """The endless training stream is seeded by the pass, and the pass is kept in checkpoints
    (EpochLoader's state_dict): a resumed run neither reads its first epoch again nor
    draws differently from a run that was never stopped."""

    class Keys(L.Callback):
        def __init__(self) -> None:
            self.epochs: dict[int, list] = {}

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            self.epochs.setdefault(trainer.current_epoch, []).append(batch["key"])

    def fit(root: Path, epochs: int, ckpt_path: Path | None = None) -> dict[int, list]:
        model = Finetune(num_classes=2, size="mini", fshape=128, tshape=2, input_tdim=FRAMES, freeze_encoder=True)
        data = AudioDataModule(train=str(tiny_corpus / "events/train"), target_length=FRAMES, batch_size=2,
                               num_workers=1, batches_per_epoch=3, stats="audioset", classes="auto",  # in a worker
                               reader=ReaderOptions(shuffle_buffer=4))
        keys = Keys()
        quiet_trainer(root, [keys, LastCheckpoint()], max_epochs=epochs, limit_val_batches=0).fit(
            model, datamodule=data, ckpt_path=ckpt_path)
        return keys.epochs

    uninterrupted = fit(tmp_path / "a", 2)
    assert uninterrupted[0] != uninterrupted[1]
    assert fit(tmp_path / "b", 1) == {0: uninterrupted[0]}
    assert fit(tmp_path / "b", 2, tmp_path / "b/checkpoints/last.ckpt") == {1: uninterrupted[1]}


def test_a_resumed_fit_refuses_changed_settings_and_applies_where_the_data_lies(tiny_corpus, tmp_path, caplog):
    """Issue 37, finding 1: a resume took the checkpoint's lr and size and said nothing."""
    def model(**changes) -> Finetune:
        return Finetune(**{"num_classes": 2, "size": "mini", "fshape": 128, "tshape": 2, "input_tdim": FRAMES,
                           "freeze_encoder": True, "lr": 1e-3, **changes})

    def data(**changes) -> AudioDataModule:
        return AudioDataModule(**{"train": str(tiny_corpus / "events/train"), "target_length": FRAMES,
                                  "batch_size": 2, "num_workers": 0, "batches_per_epoch": 2, "stats": "audioset",
                                  "classes": "auto", **changes})

    quiet_trainer(tmp_path, [LastCheckpoint()], max_epochs=1, limit_val_batches=0).fit(model(), datamodule=data())
    last = tmp_path / "checkpoints/last.ckpt"
    check_resumable(model(), last, data(), resuming=True)  # the same settings
    with pytest.raises(ResumeError) as refused:
        check_resumable(model(lr=0.01, drop_path=0.1), last, data(batch_size=4), resuming=True)
    assert str(refused.value) == (
        f"--ckpt_path {last}: a resumed run keeps the settings it was written with, and these differ: "
        "model.drop_path 0.0 -> 0.1; model.lr 0.001 -> 0.01; data.batch_size 2 -> 4 (saved -> given). Resume "
        f"without changing them, or start a new run from its weights (--model.init_from {last})")
    check_resumable(model(lr=0.01), last, data(), resuming=False)  # testing the checkpoint: any settings
    # Where the data lies and how it is read are the command's, said in the log.
    moved = tmp_path / "moved"
    shutil.copytree(tiny_corpus / "events", moved)
    with caplog.at_level(logging.INFO):
        check_resumable(model(), last, data(train=str(moved / "train"), num_workers=1), resuming=True)
    said = [record.getMessage() for record in caplog.records]
    assert f"resuming with data.train '{tiny_corpus / 'events/train'}' -> '{moved / 'train'}' (saved -> given)" in said
    assert "resuming with data.num_workers 0 -> 1 (saved -> given)" in said


@pytest.mark.slow
def test_the_reported_resume_with_another_lr_and_size_is_one_line(tiny_corpus, tmp_path):
    """The finding's command: ``--ckpt_path last --model.init_args.lr 0.01 --model.init_args.size tiny``
    trained the checkpoint's mini model at its own lr and exited 0."""
    from pretrain.cli import main

    run = tmp_path / "run"
    args = ["fit", *recipe_args("pretrain", "mspm_demo"), "--data.train", str(tiny_corpus / "unlabeled"),
            "--data.val", "null", "--data.batch_size", "2", "--data.num_workers", "0", "--data.stats", "audioset",
            "--trainer.max_steps", "2", "--trainer.default_root_dir", str(run), "--trainer.logger", "false",
            "--trainer.enable_progress_bar", "false"]
    main(args)
    with pytest.raises(SystemExit) as exited:
        main([*args, "--ckpt_path", "last", "--model.init_args.optimization.lr", "0.01",
              "--model.init_args.size", "tiny"])
    message = str(exited.value.code)
    assert message.startswith(f"ssast-pretrain: error: --ckpt_path {run / 'checkpoints/last.ckpt'}: a resumed run "
                              "keeps the settings it was written with") and "\n" not in message
    assert "model.optimization.lr 0.0005 -> 0.01" in message and "model.size 'mini' -> 'tiny'" in message


@pytest.mark.parametrize("stopped", ["at_an_epoch_end", "mid_epoch"])
def test_a_resumed_pretraining_run_logs_what_the_uninterrupted_one_logged(stopped, tiny_corpus, tmp_path):
    """Issue 37, finding 5: the masks' generator was not restored (a resumed run drew other masks
    and its losses diverged), and the data/* counters started again at 0. Dropout and
    drop-path draw from torch's generator, here with drop_path 0.2."""
    from lightning.pytorch.loggers import CSVLogger

    from pretrain.mspm import MSPM, SSAST_RECIPE

    class Killed(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            if trainer.global_step == 4:  # after this step's checkpoint
                raise ProcessLookupError("killed")

    def fit(root: Path, callbacks: list[L.Callback], ckpt_path: Path | None = None, **limits) -> list[dict]:
        L.seed_everything(0)
        model = MSPM(size="mini", fshape=128, tshape=2, input_tdim=FRAMES, mask_patches=4, passes=2, drop_path=0.2,
                     optimization=dataclasses.replace(SSAST_RECIPE, lr=1e-3, warmup_steps=0))
        data = AudioDataModule(train=str(tiny_corpus / "unlabeled"), target_length=FRAMES, batch_size=2,
                               num_workers=0, batches_per_epoch=3, stats="audioset")
        logger = CSVLogger(root, name="csv", version=0, flush_logs_every_n_steps=1)
        trainer = quiet_trainer(root, callbacks or [LastCheckpoint()], logger=logger, limit_val_batches=0,
                                log_every_n_steps=1, **limits)
        try:
            trainer.fit(model, datamodule=data, ckpt_path=ckpt_path)
        except ProcessLookupError:
            pass
        return [row for row in csv.DictReader((root / "csv/version_0/metrics.csv").open()) if row["train/loss"]]

    uninterrupted = fit(tmp_path / "a", [], max_epochs=2)
    if stopped == "at_an_epoch_end":
        first = fit(tmp_path / "b", [], max_epochs=1)
    else:  # killed after step 4 of 6: the last checkpoint is the one written on time after that step
        clock = Clock(minutes=10)
        timed = LastCheckpoint(every_minutes=5)
        timed.clock = clock
        first = fit(tmp_path / "b", [clock, timed, Killed()], max_epochs=2)  # Lightning ends an interrupted fit
    resumed = fit(tmp_path / "b", [], tmp_path / "b/checkpoints/last.ckpt", max_epochs=2)
    steps = [(row["step"], row["train/loss"]) for row in first + resumed]
    assert steps == [(row["step"], row["train/loss"]) for row in uninterrupted]  # every step, every value
    assert resumed[-1]["data/read"] == uninterrupted[-1]["data/read"]  # counted from the start of the run


def test_the_lightning_internals_we_rely_on_are_there():
    """What this project reads of Lightning beyond its documented API, checked in one place
    so that a Lightning release that moves them fails here, by name, not in a resumed run."""
    from lightning.pytorch.trainer.connectors.checkpoint_connector import _CheckpointConnector

    where = f"lightning {L.__version__} (tested: {TESTED_LIGHTNING})"
    trainer = L.Trainer(logger=False, enable_progress_bar=False)
    assert hasattr(trainer.fit_loop.epoch_loop.batch_progress, "is_last_batch"), \
        f"{where}: LastCheckpoint reads trainer.fit_loop.epoch_loop.batch_progress.is_last_batch"
    assert Path(_CheckpointConnector.hpc_save_path("/run")).name == "hpc_ckpt_1.ckpt", \
        f"{where}: last_checkpoint() looks for SLURM's requeue checkpoints as hpc_ckpt_<n>.ckpt"
    assert WandbLogger(offline=True, id="x")._wandb_init["resume"] == "allow", \
        f"{where}: a resumed fit relies on WandbLogger's resume='allow' default"


# --- checkpoints killed while being written ----------------------------------------------

WRITER = """
import itertools, sys
from pathlib import Path

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from ssast.train.recovery import AtomicCheckpointIO

folder, kind, start = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
io = AtomicCheckpointIO() if kind == "atomic" else TorchCheckpointIO()
weights = torch.ones(16 * 2**20)  # 64 MB
for step in itertools.count(start):
    for name in ("last.ckpt", f"epoch={step % 2}.ckpt"):  # last.ckpt and rotating top-k files
        print("saving", step, name, flush=True)
        io.save_checkpoint({"step": step, "weights": weights, "tail": torch.full((1000,), step)}, folder / name)
        print("saved", step, name, flush=True)
"""

CHECKPOINT_BYTES = 64 * 2**20


class Writer:
    """A process saving checkpoints into ``folder`` in a loop, and what it printed."""

    def __init__(self, folder: Path, kind: str, start: int, env: dict[str, str] | None = None) -> None:
        self.lines: list[str] = []
        self.process = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(folder), kind, str(start)], stdout=subprocess.PIPE, text=True,
            env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
        )
        self.reader = threading.Thread(target=lambda: self.lines.extend(line.strip() for line in self.process.stdout))
        self.reader.start()

    def saved(self, name: str) -> list[int]:
        return [int(line.split()[1]) for line in self.lines if line.startswith("saved") and line.endswith(f" {name}")]

    def wait_for(self, condition: Callable[[], bool], timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            assert self.process.poll() is None, f"the writer died: {self.lines[-3:]}"
            assert time.monotonic() < deadline, f"timed out; the writer printed {self.lines[-3:]}"
            time.sleep(0.0005)

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()
        self.reader.join()
        assert self.process.returncode == -signal.SIGKILL


@pytest.mark.slow
def test_a_kill_while_saving_never_leaves_a_broken_checkpoint(tmp_path):
    rng = random.Random(0)
    folder, last_step = tmp_path / "checkpoints", 0
    for trial in range(3):
        writer = Writer(folder, "atomic", start=last_step + 1)
        # Every file written once more by this process, then a random moment, then the next
        # moment a checkpoint is half-written (its temporary file is growing): kill -9.
        writer.wait_for(lambda: len(writer.saved("last.ckpt")) >= 2)
        time.sleep(rng.uniform(0, 0.5))
        writer.wait_for(lambda: any(p.stat().st_size > 0 for p in folder.glob(".*.partial")))
        writer.kill()
        begun = [int(line.split()[1]) for line in writer.lines if line.startswith("saving")]
        last_step = begun[-1]

        found = sorted(folder.glob("*.ckpt"))
        assert {p.name for p in found} == {"last.ckpt", "epoch=0.ckpt", "epoch=1.ckpt"}
        for path in found:  # every checkpoint loads, whole
            state = torch.load(path, weights_only=True)
            assert torch.equal(state["tail"], torch.full((1000,), state["step"])) and state["weights"].sum() == 2**24
        # The kill interrupted a save: last.ckpt holds the last save that finished, or the new
        # one if its rename had happened; nothing in between.
        last = torch.load(folder / "last.ckpt", weights_only=True)["step"]
        assert writer.saved("last.ckpt")[-1] <= last <= last_step
        partials = list(folder.glob(".*.partial"))
        assert len(partials) <= 1, partials  # the one being written; earlier ones were swept


@pytest.mark.slow
def test_lightnings_own_save_can_leave_a_truncated_checkpoint(tmp_path):
    """Why AtomicCheckpointIO exists: Lightning 2.6 writes in the system's temporary folder,
    then moves the file over the checkpoint; across file systems the move is a copy into the
    checkpoint itself, and a kill during it truncates the last good checkpoint."""
    scratch = Path("/dev/shm")
    if not scratch.is_dir() or scratch.stat().st_dev == tmp_path.stat().st_dev:
        pytest.skip("needs a temporary folder on another file system than the checkpoints")
    temp = scratch / f"ssast-test-{os.getpid()}"
    temp.mkdir()
    try:
        last = tmp_path / "checkpoints/last.ckpt"
        for attempt in range(5):  # a loaded machine may let the copy finish between the look and the kill
            writer = Writer(last.parent, "lightning", start=10 * attempt, env={"TMPDIR": str(temp)})
            writer.wait_for(lambda: len(writer.saved("last.ckpt")) >= 1)
            writer.wait_for(lambda: 0 < last.stat().st_size < CHECKPOINT_BYTES)  # the copy is under way: kill -9
            writer.kill()
            if last.stat().st_size < CHECKPOINT_BYTES:
                break
        # torch refuses a cut zip with a RuntimeError, or (seen on CI) with an OSError, EINVAL,
        # from its zip reader
        with pytest.raises((RuntimeError, OSError)):
            torch.load(last, weights_only=True)
        assert any(path.is_file() for path in temp.iterdir())  # and the new one is left behind there
    finally:
        shutil.rmtree(temp)


# --- a pretraining run killed mid-epoch, then resumed ------------------------------------

HANG = """
import time
from pathlib import Path

import lightning as L


class Hang(L.Callback):
    \"\"\"At global step ``at``, says so in ``flag`` and waits to be killed.\"\"\"

    def __init__(self, at: int, flag: str) -> None:
        self.at, self.flag = at, flag

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.at:
            Path(self.flag).write_text(str(trainer.global_step))
            time.sleep(600)
"""

STEPS_PER_EPOCH, EPOCHS, BATCH = 4, 3, 4
TOTAL_STEPS = STEPS_PER_EPOCH * EPOCHS


def fit_command(corpus: Path, run: Path, recipe: str, *extra: str) -> list[str]:
    loggers = [
        {"class_path": "lightning.pytorch.loggers.WandbLogger",
         "init_args": {"project": "ssast", "name": "crash", "save_dir": str(run)}},
        {"class_path": "lightning.pytorch.loggers.CSVLogger",
         "init_args": {"save_dir": str(run), "name": "csv", "flush_logs_every_n_steps": 1}},
    ]
    return [
        sys.executable, "-m", "pretrain.cli", "fit", "--config", str(REPO / "configs/pretrain/demo.yaml"),
        "--config", str(REPO / "configs/pretrain" / recipe),
        "--data.train", str(corpus / "unlabeled"), "--data.val", str(corpus / "events/val"),
        "--data.batch_size", str(BATCH), "--data.batches_per_epoch", str(STEPS_PER_EPOCH),
        "--data.num_workers", "1", 
        "--model.init_args.optimization.warmup_steps", "3", "--trainer.max_epochs", str(EPOCHS),
        "--trainer.limit_val_batches", "2", "--trainer.log_every_n_steps", "1",
        "--trainer.default_root_dir", str(run), "--trainer.logger", json.dumps(loggers),
        "--trainer.enable_progress_bar", "false", *extra,
    ]


def logged_by_step(metrics_csv: Path) -> dict[int, dict[str, float]]:
    steps: dict[int, dict[str, float]] = {}
    for row in csv.DictReader(metrics_csv.open()):
        values = {name: float(value) for name, value in row.items() if value and name not in ("step", "epoch")}
        steps.setdefault(int(row["step"]), {}).update(values)
    return steps


def expected_lr(model: dict, step: int) -> float:
    """The learning rate after ``step`` optimizer steps of a run of the ``model`` settings (as
    its config.yaml records them), from the schedule classes themselves."""
    optimization = model["optimization"]
    peak = optimization["lr"] * BATCH / (optimization["lr_batch_size"] or BATCH)
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=peak)
    warmup = optimization["warmup_steps"]
    scheduler = (WarmupCosine(optimizer, warmup, TOTAL_STEPS, optimization["min_lr"])
                 if optimization["schedule"] == "warmup_cosine" else WarmupPlateau(optimizer, warmup))
    for _ in range(step):
        optimizer.step()
        scheduler.step()
    return optimizer.param_groups[0]["lr"]


RECIPES = {  # recipe: the first param group's lr, as LearningRateMonitor names it
    "asit_demo.yaml": "lr-AdamW/pg1",
    "mspm_demo.yaml": "lr-Adam",
}


@pytest.mark.slow
@pytest.mark.parametrize("recipe", list(RECIPES))
def test_a_run_killed_mid_epoch_resumes_with_its_step_schedules_and_wandb_run(recipe, small_demo_corpus, tmp_path):
    run, flag = tmp_path / "run", tmp_path / "hanging"
    (tmp_path / "hang.py").write_text(HANG)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO)]), "WANDB_MODE": "offline"}
    killed_at = STEPS_PER_EPOCH + 2  # mid-epoch 2, after the checkpoint at the end of epoch 1
    hang = {"class_path": "hang.Hang", "init_args": {"at": killed_at, "flag": str(flag)}}
    output = tmp_path / "first.log"
    with output.open("w") as sink:
        first = subprocess.Popen(fit_command(small_demo_corpus, run, recipe, "--trainer.callbacks+", json.dumps(hang)),
                                 env=env, cwd=tmp_path, stdout=sink, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 300
        while not flag.exists():
            assert first.poll() is None, output.read_text()[-3000:]
            assert time.monotonic() < deadline, "the run never reached the step to kill it at"
            time.sleep(0.2)
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    assert first.returncode == -signal.SIGKILL
    last = run / "checkpoints/last.ckpt"
    saved = torch.load(last, weights_only=True)
    assert saved["global_step"] == STEPS_PER_EPOCH

    resumed = subprocess.run(fit_command(small_demo_corpus, run, recipe, "--ckpt_path", "last"), env=env,
                             cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    final = torch.load(last, weights_only=True)
    assert final["global_step"] == TOTAL_STEPS and final["lr_schedulers"][0]["last_epoch"] == TOTAL_STEPS
    before, after = (logged_by_step(run / f"csv/version_{n}/metrics.csv") for n in (0, 1))
    train_steps = sorted(step for step, values in after.items() if "train/loss" in values)
    assert train_steps == list(range(STEPS_PER_EPOCH, TOTAL_STEPS))  # from the saved step on, none twice

    lr_name, model = RECIPES[recipe], yaml.safe_load((run / "config.yaml").read_text())["model"]["init_args"]
    distill = "teacher_temp" in model  # asit_demo.yaml: its EMA decay, temperature and weight decay too
    names = [lr_name] + (["train/ema_decay", "train/teacher_temp", "train/weight_decay"] if distill else [])
    for step in range(STEPS_PER_EPOCH, killed_at):  # the same steps before the kill and after the resume
        for name in names:
            assert after[step][name] == pytest.approx(before[step][name], rel=1e-6), (name, step)
    for step in train_steps:  # and what the schedules say for an uninterrupted run
        assert after[step][lr_name] == pytest.approx(expected_lr(model, step), rel=1e-6), step
        if distill:
            ema_decay = cosine_ramp(model["ema_decay"], model["ema_end_decay"], step, TOTAL_STEPS)
            temperature = linear_warmup(model["warmup_teacher_temp"], model["teacher_temp"], step,
                                        round(model["teacher_temp_warmup_epochs"] * STEPS_PER_EPOCH))
            optimization = model["optimization"]
            decay = cosine_ramp(optimization["weight_decay"], optimization["weight_decay_end"], step, TOTAL_STEPS)
            assert after[step]["train/ema_decay"] == pytest.approx(ema_decay)
            assert after[step]["train/teacher_temp"] == pytest.approx(temperature)
            assert after[step]["train/weight_decay"] == pytest.approx(decay)

    # One W&B run, continued: both processes wrote offline-run-<time>-<id> folders with the
    # id the checkpoints record.
    runs = sorted((run / "wandb").glob("offline-run-*"))
    assert len(runs) == 2, runs
    run_id = final["wandb_run_id"]
    assert saved["wandb_run_id"] == run_id and all(path.name.endswith(f"-{run_id}") for path in runs)


# --- SLURM: the requeue signal saves and requeues; --ckpt_path last resumes from it --------

WAIT_FOR_SIGTERM = """
import time
from pathlib import Path

import lightning as L


class WaitForSigterm(L.Callback):
    \"\"\"At global step ``at``, says so in ``flag`` and waits for SIGTERM.\"\"\"

    def __init__(self, at: int, flag: str) -> None:
        self.at, self.flag = at, flag

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.at:
            Path(self.flag).write_text(str(trainer.global_step))
            while not trainer.received_sigterm:
                time.sleep(0.05)
"""

# What srun sets for a one-task job (Lightning's SLURMEnvironment reads them).
SLURM_JOB = {"SLURM_JOB_ID": "4242", "SLURM_JOB_NAME": "ssast-test", "SLURM_NTASKS": "1", "SLURM_NTASKS_PER_NODE": "1",
             "SLURM_NNODES": "1", "SLURM_NODELIST": "localhost", "SLURM_PROCID": "0", "SLURM_LOCALID": "0",
             "SLURM_NODEID": "0"}


@pytest.mark.slow
def test_under_slurm_the_requeue_signal_saves_and_requeues_and_last_resumes_from_it(tiny_corpus, tmp_path):
    run, flag, requeued = tmp_path / "run", tmp_path / "waiting", tmp_path / "scontrol.log"
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin/scontrol").write_text(f'#!/bin/sh\necho "$@" >> {requeued}\n')  # stands in for SLURM's
    (tmp_path / "bin/scontrol").chmod(0o755)
    (tmp_path / "wait_for_sigterm.py").write_text(WAIT_FOR_SIGTERM)
    env = {**{name: value for name, value in os.environ.items() if not name.startswith("SLURM_")}, **SLURM_JOB,
           "PATH": os.pathsep.join([str(tmp_path / "bin"), os.environ["PATH"]]), "WANDB_MODE": "offline",
           "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO)])}

    def command(*extra: str) -> list[str]:
        callbacks = [{"class_path": "ssast.train.callbacks.LastCheckpoint"}]
        return [sys.executable, "-m", "pretrain.cli", "fit", "--config", str(REPO / "configs/pretrain/demo.yaml"),
                "--config", str(REPO / "configs/pretrain/mspm_demo.yaml"),
                "--model.init_args.size", "mini", "--data.train", str(tiny_corpus / "unlabeled"),
                "--data.val", "null", "--data.batch_size", "2",
                "--data.batches_per_epoch", "4", "--data.num_workers", "0",
                "--trainer.max_epochs", "2", "--trainer.default_root_dir", str(run), "--trainer.logger", "false",
                "--trainer.enable_progress_bar", "false", "--trainer.callbacks", json.dumps(callbacks), *extra]

    wait = {"class_path": "wait_for_sigterm.WaitForSigterm", "init_args": {"at": 6, "flag": str(flag)}}
    output = tmp_path / "first.log"
    with output.open("w") as sink:
        first = subprocess.Popen(command("--trainer.callbacks+", json.dumps(wait)), env=env, cwd=tmp_path,
                                 stdout=sink, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 300
        while not flag.exists():  # step 6: mid-epoch 2, after last.ckpt was written at the end of epoch 1
            assert first.poll() is None, output.read_text()[-3000:]
            assert time.monotonic() < deadline, "the run never reached the step to signal it at"
            time.sleep(0.2)
        first.send_signal(signal.SIGUSR1)  # what #SBATCH --signal=SIGUSR1@90 sends before the time limit
        while not requeued.exists():
            assert first.poll() is None and time.monotonic() < deadline, output.read_text()[-3000:]
            time.sleep(0.2)
        first.send_signal(signal.SIGTERM)  # what SLURM then sends to end the job
        assert first.wait(timeout=120) == 0, output.read_text()[-3000:]
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert requeued.read_text() == "requeue 4242\n"
    assert torch.load(run / "hpc_ckpt_1.ckpt", weights_only=True)["global_step"] == 6
    assert torch.load(run / "checkpoints/last.ckpt", weights_only=True)["global_step"] == 4

    resumed = subprocess.run(command("--ckpt_path", "last"), env=env, cwd=tmp_path, capture_output=True, text=True,
                             timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"Restoring states from the checkpoint path at {run / 'hpc_ckpt_1.ckpt'}" in resumed.stderr + resumed.stdout
    assert torch.load(run / "checkpoints/last.ckpt", weights_only=True)["global_step"] == 8

