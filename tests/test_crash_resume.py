"""Crashes for real: processes killed with SIGKILL while writing checkpoints, and an
``ssast-pretrain fit`` killed mid-epoch, then resumed with ``--ckpt_path last``: the saved
step, the schedules and the W&B run all continue. Plus what both CLIs install for it."""

from __future__ import annotations

import csv
import json
import os
import random
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
from lightning.pytorch.loggers import WandbLogger

from finetune.cli import build_cli
from pretrain.base import PretrainModule
from pretrain.cli import PretrainCLI
from ssast.train.datamodule import AudioDataModule
from ssast.train.recovery import AtomicCheckpointIO, WandbRunId, resume_wandb_run
from ssast.train.schedules import WarmupCosine, WarmupPlateau, cosine_ramp, linear_warmup
from ssast.files import written_atomically

REPO = Path(__file__).resolve().parents[1]


# --- what the CLIs install -----------------------------------------------------------------


def test_both_clis_write_checkpoints_atomically_and_record_the_wandb_run(tmp_path):
    (tmp_path / "classes.txt").write_text("a\nb\n")
    trainer = ["--trainer.logger", "false", "--trainer.default_root_dir", str(tmp_path)]
    pretrain = PretrainCLI(PretrainModule, AudioDataModule, subclass_mode_model=True, subclass_mode_data=True,
                           run=False, args=["--config", str(REPO / "configs/pretrain/demo.yaml"), *trainer])
    finetune = build_cli(["--config", str(REPO / "configs/finetune/demo_events.yaml"), *trainer,
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


def test_a_resumed_fit_logs_to_the_wandb_run_of_its_checkpoint(tmp_path):
    torch.save({"global_step": 3, WandbRunId.key: "abc123"}, tmp_path / "last.ckpt")
    logger = WandbLogger(project="ssast", save_dir=tmp_path, offline=True)
    trainer = L.Trainer(logger=logger, default_root_dir=tmp_path)
    assert resume_wandb_run(trainer, tmp_path / "last.ckpt") == "abc123"
    assert logger.version == "abc123" and logger._wandb_init["id"] == "abc123"
    assert logger._wandb_init["resume"] == "allow"

    chosen = WandbLogger(project="ssast", save_dir=tmp_path, offline=True, id="mine")  # a recipe's id wins
    resume_wandb_run(L.Trainer(logger=chosen, default_root_dir=tmp_path), tmp_path / "last.ckpt")
    assert chosen.version == "mine"


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
        with pytest.raises(RuntimeError):
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
        sys.executable, "-m", "pretrain.cli", "fit", "--config", str(REPO / "configs/pretrain" / recipe),
        "--data.init_args.train", str(corpus / "unlabeled"), "--data.init_args.val", str(corpus / "events/val"),
        "--data.init_args.batch_size", str(BATCH), "--data.init_args.batches_per_epoch", str(STEPS_PER_EPOCH),
        "--data.init_args.num_workers", "1", 
        "--model.init_args.warmup_steps", "3", "--trainer.max_epochs", str(EPOCHS),
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


def expected_lr(schedule: str, peak: float, step: int) -> float:
    """The learning rate after ``step`` optimizer steps, from the schedule classes themselves."""
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=peak)
    scheduler = (WarmupCosine(optimizer, 3, TOTAL_STEPS, 1e-6) if schedule == "cosine"
                 else WarmupPlateau(optimizer, 3))
    for _ in range(step):
        optimizer.step()
        scheduler.step()
    return optimizer.param_groups[0]["lr"]


RECIPES = {  # recipe: (schedule, peak lr, the first param group's lr as LearningRateMonitor names it)
    "asit_demo.yaml": ("cosine", 8e-3 * BATCH / 256, "lr-AdamW/pg1"),
    "demo.yaml": ("plateau", 5e-4, "lr-Adam"),
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

    schedule, peak, lr_name = RECIPES[recipe]
    names = [lr_name] + (["train/momentum", "train/teacher_temp", "train/weight_decay"] if schedule == "cosine" else [])
    for step in range(STEPS_PER_EPOCH, killed_at):  # the same steps before the kill and after the resume
        for name in names:
            assert after[step][name] == pytest.approx(before[step][name], rel=1e-6), (name, step)
    for step in train_steps:  # and what the schedules say for an uninterrupted run
        assert after[step][lr_name] == pytest.approx(expected_lr(schedule, peak, step), rel=1e-6), step
        if schedule == "cosine":  # asit_demo.yaml's momentum, temperature and weight decay
            assert after[step]["train/momentum"] == pytest.approx(cosine_ramp(0.99, 1.0, step, TOTAL_STEPS))
            assert after[step]["train/teacher_temp"] == pytest.approx(linear_warmup(0.04, 0.07, step, 150))
            assert after[step]["train/weight_decay"] == pytest.approx(cosine_ramp(0.04, 0.4, step, TOTAL_STEPS))

    # One W&B run, continued: both processes wrote offline-run-<time>-<id> folders with the
    # id the checkpoints record.
    runs = sorted((run / "wandb").glob("offline-run-*"))
    assert len(runs) == 2, runs
    run_id = final["wandb_run_id"]
    assert saved["wandb_run_id"] == run_id and all(path.name.endswith(f"-{run_id}") for path in runs)
