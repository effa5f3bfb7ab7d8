"""Callbacks of pretraining and finetuning runs."""

from __future__ import annotations

from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.trainer.states import TrainerFn

from ssast.checkpoints import save_encoder
from ssast.files import written_atomically


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


class MetricsSummary(L.Callback):
    """Prints where the watched metrics started and ended, once training is over.

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


class RunCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` that, without a ``dirpath``, saves in
    ``<trainer.default_root_dir>/checkpoints`` whatever the logger, so a later
    ``test``/``predict`` or ``--ckpt_path`` finds the files at a path known in advance.

    With ``save_last``, ``last.ckpt`` is rewritten at every checkpointing point. (Lightning
    2.6 rewrites it only when a top-k checkpoint was saved at the same step, so a run whose
    monitored metric stops improving would resume from its best epoch, not its last.)

    ``ckpt_path="last"`` finds ``last.ckpt`` there too. (Lightning looks for it before
    ``setup``, in the logger's folder: with W&B it found nothing, and the "resumed" run
    silently started from scratch.)
    """

    def _use_run_folder(self, trainer: L.Trainer) -> None:
        if self.dirpath is None:
            self.dirpath = str(Path(trainer.default_root_dir) / "checkpoints")

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._use_run_folder(trainer)
        super().setup(trainer, pl_module, stage)
        self._last_written_at: int | None = None

    def _find_last_checkpoints(self, trainer: L.Trainer) -> set[str]:
        self._use_run_folder(trainer)
        return super()._find_last_checkpoints(trainer)

    def _save_last_checkpoint(self, trainer: L.Trainer, monitor_candidates: dict) -> None:
        super()._save_last_checkpoint(trainer, monitor_candidates)
        self._last_written_at = trainer.global_step

    def _refresh_last(self, trainer: L.Trainer) -> None:
        fitting = trainer.state.fn == TrainerFn.FITTING and not trainer.sanity_checking and not trainer.fast_dev_run
        if self.save_last and fitting and trainer.global_step > 0 and self._last_written_at != trainer.global_step:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if not self._should_save_on_train_epoch_end(trainer):
            self._refresh_last(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self._should_save_on_train_epoch_end(trainer):
            self._refresh_last(trainer)


class MetricHistory(L.Callback):
    """Keeps the value of each named metric after every validation (sanity checks aside),
    for reports drawn once the run is over.

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
