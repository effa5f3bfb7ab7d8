"""Callbacks of pretraining and finetuning runs."""

from __future__ import annotations

import json
import logging
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Checkpoint, ModelCheckpoint
from lightning.pytorch.trainer.states import TrainerFn

from ssast.checkpoints import save_encoder
from ssast.files import written_atomically

log = logging.getLogger(__name__)


class RunRecord(L.Callback):
    """A callback whose state is a record of what the run has done (a history, a summary, a
    clock). A resumed fit restores it from the checkpoint; a checkpoint loaded to validate,
    test or predict (``trainer.test(ckpt_path="best")``) restores the weights only, and the
    record keeps what ran after that checkpoint was written. Subclasses restore their state
    in :meth:`restore`."""

    _resuming_fit = True

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        # Lightning calls this before load_state_dict, on every load of a checkpoint.
        self._resuming_fit = trainer.state.fn == TrainerFn.FITTING

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if self._resuming_fit:
            self.restore(state_dict)

    def restore(self, state_dict: dict[str, Any]) -> None:
        raise NotImplementedError


class ExportEncoder(L.Callback):
    """Writes the encoder that transfers (``exported_encoder``: ASiT's teacher), with its config and input preprocessing, for
    ``ssast.load_encoder`` and finetuning, at the end of training (and at every
    validation with ``every_validation``).

    Args:
        path: the file (``.safetensors`` or ``.pt``); relative paths are under the
            trainer's ``default_root_dir``.
        every_validation: also export after each validation, so a long run always
            leaves a usable encoder behind.
    """

    def __init__(self, path: str = "encoder.safetensors", every_validation: bool = False) -> None:
        self.path = path
        self.every_validation = every_validation

    def target(self, trainer: L.Trainer) -> Path:
        path = Path(self.path)
        return path if path.is_absolute() else Path(trainer.default_root_dir) / path

    def export(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero:
            datamodule = getattr(trainer, "datamodule", None)
            target = self.target(trainer)
            with written_atomically(target, suffix=target.suffix) as temp:  # a kill mid-export keeps the last one
                save_encoder(pl_module.exported_encoder, temp, getattr(datamodule, "preprocessing", None))

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.every_validation and not trainer.sanity_checking:
            self.export(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.export(trainer, pl_module)


class MetricsSummary(RunRecord):
    """Prints where the watched metrics started and ended, once training is over. The values
    are kept in checkpoints, so a resumed run's summary starts where the run started.

    Args:
        names: logged metrics to follow (as in ``trainer.callback_metrics``).
    """

    def __init__(self, names: tuple[str, ...] = ("train/loss", "train/acc", "val/loss", "val/acc")) -> None:
        self.names = names
        self.first: dict[str, float] = {}
        self.last: dict[str, float] = {}

    def _record(self, trainer: L.Trainer) -> None:
        for name in self.names:
            value = trainer.callback_metrics.get(name)
            if value is not None:
                self.first.setdefault(name, float(value))
                self.last[name] = float(value)

    def on_train_batch_end(self, trainer: L.Trainer, *args) -> None:
        self._record(trainer)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._record(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero and self.last:
            lines = [f"  {name}: {self.first[name]:.4f} -> {self.last[name]:.4f}" for name in self.last]
            print(f"after {trainer.global_step} steps:", *lines, sep="\n")

    def state_dict(self) -> dict[str, Any]:
        return {"first": dict(self.first), "last": dict(self.last)}

    def restore(self, state_dict: dict[str, Any]) -> None:
        self.first, self.last = dict(state_dict["first"]), dict(state_dict["last"])


CHECKPOINT_FOLDER = "checkpoints"


def checkpoint_folder(default_root_dir: str | Path, dirpath: str | Path | None = None) -> Path:
    """Where a run's checkpoints go: ``dirpath`` when given, else
    ``<default_root_dir>/checkpoints``."""
    return Path(dirpath) if dirpath is not None else Path(default_root_dir) / CHECKPOINT_FOLDER


class RunCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` that, without a ``dirpath``, saves in
    ``<trainer.default_root_dir>/checkpoints`` whatever the logger, so a later
    ``test``/``predict`` or ``--ckpt_path`` finds the files at a path known in advance.
    (Lightning would pick the logger's folder, which for W&B is named after a run id known
    only once the run starts.) ``last.ckpt`` is :class:`LastCheckpoint`'s to write.
    """

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.dirpath is None:  # filled here, as --trainer.default_root_dir may change it
            self.dirpath = str(checkpoint_folder(trainer.default_root_dir))
        super().setup(trainer, pl_module, stage)


class LastCheckpoint(Checkpoint):
    """Keeps ``<dirpath>/last.ckpt`` at the newest state of a fit, the one ``--ckpt_path last``
    resumes from: rewritten after every validation and at the end of every training epoch,
    whether or not a monitored metric improved, and with ``every_minutes`` also whenever that
    much time has passed since it was last written, so that a killed or preempted run loses
    at most that much work, not an epoch.

    The time is rank 0's, broadcast to the others (one small collective per optimizer step
    when ``every_minutes`` is set), so that every rank takes part in the save. Nothing is
    written during the sanity check, with ``fast_dev_run``, or before the first step. As a
    Lightning ``Checkpoint``, it runs after the other callbacks, so their state at the same
    step is in the file.

    Args:
        dirpath: the folder; ``None``: ``<trainer.default_root_dir>/checkpoints``, beside
            :class:`RunCheckpoint`'s files.
        every_minutes: also write after this many minutes of wall-clock time since the last
            write (``None``: only at validations and epoch ends).
    """

    filename = "last.ckpt"

    def __init__(self, dirpath: str | None = None, every_minutes: float | None = None) -> None:
        if every_minutes is not None and every_minutes <= 0:
            raise ValueError(f"every_minutes must be positive, got {every_minutes}")
        self.dirpath = dirpath
        self.every_minutes = every_minutes
        self.clock: Callable[[], float] = time.monotonic  # seconds; a test may put a fake clock here
        self._written_at = 0.0
        self._step_seen = -1

    @property
    def path(self) -> Path:
        """The file (once the trainer has set this callback up)."""
        assert self.dirpath is not None, "setup() has not run"
        return Path(self.dirpath) / self.filename

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.dirpath = str(checkpoint_folder(trainer.default_root_dir, self.dirpath))

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._written_at = self.clock()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int) -> None:
        if self.every_minutes is None or trainer.global_step == self._step_seen:
            return  # no timer, or a batch that only accumulated gradients
        self._step_seen = trainer.global_step
        due = self.clock() - self._written_at >= 60 * self.every_minutes
        if trainer.strategy.broadcast(due, src=0):
            self.save(trainer)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn != TrainerFn.FITTING or trainer.sanity_checking:
            return
        if trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:
            return  # the validation that ends an epoch: on_train_epoch_end writes next
        self.save(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.save(trainer)

    def save(self, trainer: L.Trainer) -> None:
        """Write ``last.ckpt`` now (on every rank: saving is a collective)."""
        if trainer.sanity_checking or trainer.fast_dev_run or trainer.global_step == 0:
            return
        trainer.save_checkpoint(self.path, weights_only=False)  # all a resume needs: optimizer, callbacks
        self._written_at = self.clock()


class MetricHistory(RunRecord):
    """Keeps the value of each named metric after every validation (sanity checks aside),
    for reports drawn once the run is over; kept in checkpoints, so a resumed run's history
    has them all.

    Args:
        names: logged metrics to keep (as in ``trainer.callback_metrics``).
    """

    def __init__(self, names: tuple[str, ...] = ("val/loss",)) -> None:
        self.names = names
        self.history: dict[str, list[float]] = {name: [] for name in names}

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        for name in self.names:
            value = trainer.callback_metrics.get(name)
            if value is not None:
                self.history[name].append(float(value))

    def state_dict(self) -> dict[str, Any]:
        return {"history": {name: list(values) for name, values in self.history.items()}}

    def restore(self, state_dict: dict[str, Any]) -> None:
        self.history = {name: list(state_dict["history"].get(name, [])) for name in self.names}


class LogPictures(L.Callback):
    """Every ``every_n_steps`` training steps, logs the module's ``picture`` of the batch's
    first clip (e.g. input, mask and reconstruction; see
    :meth:`pretrain.base.PretrainModule.picture`) to W&B or TensorBoard, from the first rank.

    Args:
        every_n_steps: how often (0: never).
        key: the name it is logged under.
    """

    def __init__(self, every_n_steps: int = 500, key: str = "train/reconstruction") -> None:
        self.every_n_steps = every_n_steps
        self.key = key

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int) -> None:
        step = trainer.global_step - 1  # the step just taken
        if not self.every_n_steps or step % self.every_n_steps or not trainer.is_global_zero:
            return
        drawn = getattr(pl_module, "picture", lambda fbank: None)(batch["fbank"][:1])
        if drawn is not None:
            picture, caption = drawn
            pl_module.log_picture(self.key, picture, caption)


class AverageEpochWeights(RunRecord):
    """Weight averaging as the official SSAST/AST finetuning (``validate_wa`` in their
    ``traintest.py``): the arithmetic mean of the module's weights at the end of epochs
    ``first_epoch`` to ``last_epoch`` (from 1, both included) becomes the model once training
    ends, and is saved as ``checkpoints/averaged.ckpt``; the finetuning CLI then validates and
    tests it as the run's reported model (SSAST's AudioSet-20K recipe: epochs 6 to 25).

    Each epoch's own weights are still what validation sees during training, as in the
    official loop (Lightning's ``WeightAveraging`` swaps the average in for validation and
    into every checkpoint, which is not that protocol). The running sum, on the CPU, is kept
    in checkpoints, so a resumed run averages the same epochs. A run that ends before
    ``last_epoch`` averages the epochs it had, with a warning.

    Args:
        first_epoch: the first averaged epoch (``--wa_start``).
        last_epoch: the last averaged epoch (``--wa_end``).
    """

    filename = "averaged.ckpt"

    def __init__(self, first_epoch: int, last_epoch: int) -> None:
        if not 1 <= first_epoch <= last_epoch:
            raise ValueError(f"need 1 <= first_epoch <= last_epoch, got {first_epoch} and {last_epoch}")
        self.first_epoch, self.last_epoch = first_epoch, last_epoch
        self.total: dict[str, torch.Tensor] = {}
        self.epochs: list[int] = []

    @property
    def averaged(self) -> tuple[int, int] | None:
        """The first and last epoch in the average, ``None`` before the first."""
        return (self.epochs[0], self.epochs[-1]) if self.epochs else None

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epoch = trainer.current_epoch + 1
        if not self.first_epoch <= epoch <= self.last_epoch or epoch in self.epochs:
            return
        for name, value in pl_module.state_dict().items():
            if value.is_floating_point():  # the official sum, in the weights' precision
                value = value.detach().to("cpu", copy=True)
                self.total[name] = self.total[name].add_(value) if name in self.total else value
        self.epochs.append(epoch)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.epochs:
            log.warning("weight averaging: training ended before epoch %d, the first to average; the model keeps "
                        "the last epoch's weights", self.first_epoch)
            return
        if self.epochs[-1] < self.last_epoch:
            log.warning("weight averaging: training ended at epoch %d, before epoch %d; averaging epochs %d-%d",
                        self.epochs[-1], self.last_epoch, *self.averaged)
        current = pl_module.state_dict()
        mean = {name: (total / len(self.epochs)).to(current[name].dtype) for name, total in self.total.items()}
        pl_module.load_state_dict({**current, **mean})
        trainer.save_checkpoint(checkpoint_folder(trainer.default_root_dir) / self.filename, weights_only=True)

    def state_dict(self) -> dict[str, Any]:
        return {"total": self.total, "epochs": list(self.epochs)}

    def restore(self, state_dict: dict[str, Any]) -> None:
        self.total, self.epochs = dict(state_dict["total"]), list(state_dict["epochs"])


class DataWait(L.Callback):
    """How long training waits between its steps, for the next batch (reading, decoding, the
    copy to the device) and for the host's work between steps: the time from the end of one
    training step to the start of the next, as a fraction of the time from step to step,
    logged as ``perf/data_wait`` every ``every_n_steps`` steps and written with the run's
    totals to ``data_wait.json`` in the run's folder when training ends (``data_wait.rank<r>.json``
    for the other ranks).

    On a GPU the marks are CUDA events, so they say when the GPU reached them: a gap while the
    GPU is still busy with the previous step costs nothing and is not counted, and they are
    read back only every ``every_n_steps`` steps (no host sync inside a step). With
    ``count_syncs`` (GPU only), every host synchronization inside a training step (between
    its start and end: forward, backward, the optimizer, the method's updates) is counted
    with ``torch.cuda.set_sync_debug_mode``, ``perf/host_syncs`` per step; it is meant for a
    benchmark, as the debug mode slows the step it watches.
    """

    def __init__(self, every_n_steps: int = 50, count_syncs: bool = False) -> None:
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps must be at least 1, got {every_n_steps}")
        self.every_n_steps = every_n_steps
        self.count_syncs = count_syncs
        self._marks: list[tuple[Any, Any]] = []  # (start, end) of each step since the last reading
        self._start: Any = None
        self._watching: Any = None
        self._caught: list[warnings.WarningMessage] = []
        self.steps = 0
        self.syncs: int | None = None  # counted on a GPU with count_syncs only
        self.wait_s = self.total_s = 0.0

    def _mark(self, cuda: bool) -> Any:
        if not cuda:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    @staticmethod
    def _seconds(first: Any, second: Any) -> float:
        return first.elapsed_time(second) / 1000 if isinstance(first, torch.cuda.Event) else second - first

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        cuda = pl_module.device.type == "cuda"
        self._start = self._mark(cuda)
        if cuda and self.count_syncs:
            self._watching = warnings.catch_warnings(record=True)
            self._caught = self._watching.__enter__()
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self._watching is not None:
            torch.cuda.set_sync_debug_mode("default")
            self._watching.__exit__(None, None, None)
            self._watching = None
            self.syncs = (self.syncs or 0) + sum("synchroniz" in str(warning.message) for warning in self._caught)
        self._marks.append((self._start, self._mark(pl_module.device.type == "cuda")))
        self.steps += 1
        if len(self._marks) > self.every_n_steps:
            self._read(pl_module)

    def _read(self, pl_module: L.LightningModule | None) -> None:
        """The waits between the marked steps (all but the newest, which opens the next reading)."""
        marks, self._marks = self._marks, self._marks[-1:]
        last = marks[-1][0]
        if isinstance(last, torch.cuda.Event):
            last.synchronize()
        wait = sum(self._seconds(end, next_start) for (_, end), (next_start, _) in zip(marks, marks[1:]))
        total = self._seconds(marks[0][0], last)
        self.wait_s, self.total_s = self.wait_s + wait, self.total_s + total
        if pl_module is None:  # training has ended: nothing can be logged now
            return
        if total > 0:
            pl_module.log("perf/data_wait", wait / total, on_step=True, on_epoch=False)
        if self.syncs is not None:
            pl_module.log("perf/host_syncs", self.syncs / self.steps, on_step=True, on_epoch=False)

    def summary(self) -> dict[str, Any]:
        """The run's totals: steps, the seconds waited between steps of those read, their share,
        and host syncs per step (``None`` unless counted)."""
        return {"steps": self.steps, "wait_s": round(self.wait_s, 4), "step_to_step_s": round(self.total_s, 4),
                "data_wait": round(self.wait_s / self.total_s, 4) if self.total_s else None,
                "host_syncs_per_step": round(self.syncs / self.steps, 3) if self.syncs is not None else None}

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if len(self._marks) > 1:
            self._read(None)
        # Each rank its own totals: rank 0 in data_wait.json, the others beside it.
        name = "data_wait.json" if trainer.is_global_zero else f"data_wait.rank{trainer.global_rank}.json"
        path = Path(trainer.default_root_dir) / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.summary()) + "\n")
