"""The base of every training module of ssast, pretraining and finetuning alike.

:class:`EncoderModule` holds what a long run of any encoder needs and no method should
re-implement:

* a batch whose loss is NaN or infinite skips its optimizer step on every rank, and too many
  in a row stop the run naming the checkpoint to go back to;
* state that moves with the weights outside the optimizer (an EMA teacher, running centers)
  moves in :meth:`~EncoderModule.after_optimizer_step`, only when the step was taken;
* the data's health (samples read, skipped and fixed, shards retried) is logged;
* Lightning checkpoints carry what ``ssast.load_checkpoint`` needs to read the encoder (and a
  finetuned classifier) back.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger

from ssast.checkpoints import lightning_metadata
from ssast.encoder import ASTEncoder
from ssast.train.datamodule import AudioDataModule, log_data_counts
from ssast.train.recovery import newest_checkpoint

log = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """Too many consecutive optimizer steps had a NaN or infinite loss."""


def log_picture(module: L.LightningModule, key: str, picture: np.ndarray, caption: str | None = None) -> None:
    """A ``[H, W, 3]`` uint8 picture to the module's W&B or TensorBoard loggers (other loggers
    skip it). A picture that cannot be logged is reported, never fatal."""
    for logger in module.loggers:
        try:
            if isinstance(logger, WandbLogger):
                captions = [caption] if caption else None
                logger.log_image(key=key, images=[picture], caption=captions, step=module.global_step)
            elif isinstance(logger, TensorBoardLogger):
                logger.experiment.add_image(key, picture, module.global_step, dataformats="HWC")
        except Exception as error:  # a dashboard picture must never end a long run
            log.warning("could not log %s to %s: %s", key, type(logger).__name__, error)


def log_bar_chart(module: L.LightningModule, key: str, labels: list[str], values: list[float], title: str) -> None:
    """A bar chart to the module's W&B loggers, as a native W&B chart (other loggers get
    ``key/<label>`` scalars). Like a picture, it is never fatal."""
    for logger in module.loggers:
        try:
            if isinstance(logger, WandbLogger):
                import wandb

                rows = [[label, value] for label, value in zip(labels, values)]
                table = wandb.Table(data=rows, columns=["", "value"])
                logger.experiment.log({key: wandb.plot.bar(table, "", "value", title=title)})
            else:
                logger.log_metrics({f"{key}/{label}": value for label, value in zip(labels, values)},
                                   step=module.global_step)
        except Exception as error:  # a dashboard chart must never end a long run
            log.warning("could not log %s to %s: %s", key, type(logger).__name__, error)


def log_line_chart(module: L.LightningModule, key: str, series: Mapping[str, Sequence[tuple[float, float]]],
                   title: str, x_label: str) -> None:
    """Series of ``(x, y)`` points (``{name: points}``) to the module's W&B loggers as one
    native W&B line chart, each series against its own x values. Other loggers get nothing:
    the values behind such a chart are logged as scalars where they are measured. Like a
    picture, it is never fatal."""
    drawn = {name: points for name, points in series.items() if points}
    if not drawn:
        return
    for logger in module.loggers:
        if not isinstance(logger, WandbLogger):
            continue
        try:
            import wandb

            xs = [[x for x, _ in points] for points in drawn.values()]
            ys = [[y for _, y in points] for points in drawn.values()]
            chart = wandb.plot.line_series(xs, ys, keys=list(drawn), title=title, xname=x_label)
            logger.experiment.log({key: chart})
        except Exception as error:  # a dashboard chart must never end a long run
            log.warning("could not log %s to %s: %s", key, type(logger).__name__, error)


class EncoderModule(L.LightningModule):
    """A LightningModule around an encoder (see the module docstring).

    Subclasses keep the encoder that transfers in the attribute named by :attr:`exported`
    (``encoder`` unless a method exports another, e.g. an EMA teacher).

    Args:
        max_nonfinite_steps: consecutive optimizer steps skipped for a NaN or infinite loss
            that stop the run (1: the first one does).

    Skipped steps are logged as ``train/nonfinite_steps`` (a running count, kept in
    checkpoints) and warned about; a skipped step still counts as a step (``global_step``,
    the schedules), as AMP's are. The decision is reduced over ranks (one scalar all-reduce
    and host sync per step): under DDP one rank's NaN gradients reach every rank through the
    gradient all-reduce, and ranks that disagreed about stepping would drift apart. Losses are
    checked at every backward, so a NaN in any micro-batch of an accumulated step counts.
    """

    exported = "encoder"

    def __init__(self, max_nonfinite_steps: int = 20) -> None:
        super().__init__()
        if max_nonfinite_steps < 1:
            raise ValueError(f"max_nonfinite_steps must be at least 1, got {max_nonfinite_steps}")
        self.max_nonfinite_steps = max_nonfinite_steps
        self.nonfinite_steps = 0  # skipped over the whole run
        self.consecutive_nonfinite = 0
        self._nonfinite_loss: torch.Tensor | None = None  # this rank saw one since the last step

    @property
    def exported_encoder(self) -> ASTEncoder:
        return getattr(self, self.exported)

    def attached_datamodule(self) -> AudioDataModule | None:
        """The trainer's :class:`AudioDataModule`, or ``None`` (no trainer, other data)."""
        try:
            datamodule = self.trainer.datamodule
        except RuntimeError:  # not attached to a trainer (a benchmark, a notebook)
            return None
        return datamodule if isinstance(datamodule, AudioDataModule) else None

    def steps_per_epoch(self) -> int | None:
        """Optimizer steps in one training epoch (Lightning steps at an epoch's end even when
        its batches do not fill the last accumulation); ``None`` when the training data has no
        length."""
        if self.trainer.train_dataloader is None:  # what estimated_stepping_batches does, also for max_steps runs
            self.trainer.fit_loop.setup_data()
        batches = self.trainer.num_training_batches
        return math.ceil(batches / self.trainer.accumulate_grad_batches) if math.isfinite(batches) else None

    def log_picture(self, key: str, picture: np.ndarray, caption: str | None = None) -> None:
        log_picture(self, key, picture, caption)

    # --- data -----------------------------------------------------------------------------

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        # Summed over ranks, so only on logging steps (every rank reaches the same ones).
        if self.global_step % self.trainer.log_every_n_steps == 0:
            log_data_counts(self)

    # --- steps whose loss is not finite ---------------------------------------------------

    def after_optimizer_step(self, skipped: bool) -> None:
        """Called after each optimizer step, taken or ``skipped``: what moves with the
        parameters outside the optimizer moves here, only when the step was taken."""

    def on_before_backward(self, loss: torch.Tensor) -> None:
        bad = ~torch.isfinite(loss.detach()).all()  # stays on the device: one host sync per step, below
        self._nonfinite_loss = bad if self._nonfinite_loss is None else self._nonfinite_loss | bad

    def optimizer_step(
        self, epoch: int, batch_idx: int, optimizer: Any, optimizer_closure: Callable[[], Any] | None = None
    ) -> None:
        if optimizer_closure is None:
            super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
            return
        # The closure (training_step, zero_grad, backward) must run whether or not the step is
        # taken; the optimizer then gets its result instead of running it a second time, and the
        # precision plugin still calls on_before_optimizer_step and clips before the update.
        loss = optimizer_closure()
        skipped = self._skip_step()
        if not skipped:
            optimizer.step(closure=lambda: loss)
        self.after_optimizer_step(skipped)
        self.log("train/nonfinite_steps", float(self.nonfinite_steps), batch_size=1)

    def _skip_step(self) -> bool:
        """Whether any rank saw a non-finite loss since the last step (the same answer on
        every rank); counts, warns, and raises at the limit."""
        flag = self._nonfinite_loss
        self._nonfinite_loss = None
        local = flag.float() if flag is not None else torch.zeros((), device=self.device)
        ranks = int(self.trainer.strategy.reduce(local, reduce_op="sum").item())
        if ranks == 0:
            self.consecutive_nonfinite = 0
            return False
        self.nonfinite_steps += 1
        self.consecutive_nonfinite += 1
        if self.consecutive_nonfinite >= self.max_nonfinite_steps:
            raise NonFiniteLossError(self._stop_message())
        if self.trainer.is_global_zero:
            where = f" on {ranks} of {self.trainer.world_size} ranks" if self.trainer.world_size > 1 else ""
            log.warning(
                "step %d: the loss is NaN or infinite%s; the optimizer step is skipped (%d skipped so far, %d in a "
                "row; %d in a row stop the run)", self.global_step, where, self.nonfinite_steps,
                self.consecutive_nonfinite, self.max_nonfinite_steps,
            )
        return True

    def _stop_message(self) -> str:
        first = self.global_step - self.consecutive_nonfinite + 1
        checkpoint = newest_checkpoint(self.trainer)
        if all(bool(torch.isfinite(p).all()) for p in self.parameters()):
            advice = (f"Skipped steps leave the weights as they were before step {first}, and they are finite, so the "
                      "inputs or the loss computation give the NaN: check the data and the learning rate. ")
            advice += (f"The last good checkpoint is {checkpoint}; resume from it with --ckpt_path." if checkpoint
                       else "No checkpoint has been written yet, so there is none to resume from.")
        else:
            advice = f"The weights themselves hold NaN or Inf: an update before step {first} broke them. "
            advice += (f"The last checkpoint, {checkpoint}, may hold them too; resume from an earlier good one with "
                       "--ckpt_path and a lower learning rate." if checkpoint
                       else "No checkpoint has been written yet, so there is none to resume from.")
        return (f"The loss was NaN or infinite for {self.consecutive_nonfinite} consecutive optimizer steps "
                f"({first} to {self.global_step}; {self.nonfinite_steps} skipped in all), the limit set by "
                f"max_nonfinite_steps, so the run stops instead of skipping steps that would not get better. {advice}")

    # --- checkpoints ----------------------------------------------------------------------

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["nonfinite_steps"] = {"total": self.nonfinite_steps, "consecutive": self.consecutive_nonfinite}
        datamodule = self.attached_datamodule()
        preprocessing = datamodule.preprocessing if datamodule is not None and datamodule.normalize is not None else None
        checkpoint.update(lightning_metadata(self.exported_encoder, self.exported, preprocessing,
                                             **self.exported_classifier()))

    def exported_classifier(self) -> dict[str, Any]:
        """The classifier that checkpoints carry beside the exported encoder, as keyword
        arguments of :func:`~ssast.checkpoints.lightning_metadata` (``head``,
        ``head_attribute``, ``pooling``, ``labels``); a module with a head returns them so that
        ``load_checkpoint`` and ``ssast-export`` read the whole model. None here."""
        return {}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        counts = checkpoint.get("nonfinite_steps", {})
        self.nonfinite_steps = counts.get("total", 0)
        self.consecutive_nonfinite = counts.get("consecutive", 0)
