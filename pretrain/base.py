"""What every pretraining method shares: the encoder, the optimizer and its schedule,
throughput and data-health logging, checkpoint metadata and dashboard pictures.

A method subclasses :class:`PretrainModule`, builds its heads and implements
``training_step`` / ``validation_step``; its configuration names only its own knobs and
passes the rest through ``**kwargs``.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Literal

import lightning as L
import numpy as np
import torch
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger

from ssast.encoder import ASTEncoder, EncoderConfig
from pretrain.datamodule import log_data_counts
from pretrain.recovery import SkipNonFiniteSteps
from pretrain.schedules import WarmupCosine, WarmupPlateau

log = logging.getLogger(__name__)


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


def add_encoder_metadata(module: L.LightningModule, checkpoint: dict[str, Any], name: str = "encoder") -> None:
    """What ``ssast.load_encoder`` needs to read the encoder ``module.<name>`` out of a
    Lightning checkpoint: its name, its config, and the input preprocessing when the data
    knows it."""
    checkpoint["encoder_prefix"] = f"{name}."
    checkpoint["encoder_config"] = getattr(module, name).config.to_dict()
    datamodule = getattr(module.trainer, "datamodule", None)
    if datamodule is not None and getattr(datamodule, "normalize", None) is not None:
        checkpoint["preprocessing"] = dict(datamodule.preprocessing.__dict__)


class PretrainModule(SkipNonFiniteSteps):
    """Base of the pretraining methods. A batch whose loss is NaN or infinite skips its
    optimizer step (:class:`~pretrain.recovery.SkipNonFiniteSteps`).

    Args:
        size: encoder size, ``tiny``, ``small`` or ``base`` (or ``mini`` for CPU demos).
        fshape: patch height in mel bins (16 for patch models, 128 for frame models).
        tshape: patch width in frames (16 for patch models, 2 for frame models).
        input_tdim: frames per clip (linked to the data's ``target_length`` by the CLI); the
            encoder's input, unless the method cuts views (:meth:`encoder_input_frames`).
        num_lead_tokens: 2 (``cls`` and ``dist``, as SSAST) or 1.
        drop_path: stochastic depth of the deepest block.
        optimizer: ``adam`` (SSAST) or ``adamw``.
        lr: peak learning rate.
        betas: Adam's betas.
        weight_decay: weight decay.
        warmup_steps: linear warmup, in optimizer steps.
        schedule: ``plateau`` (SSAST: halve when the validation metric stalls) or
            ``cosine`` (to ``min_lr`` at the end of training).
        min_lr: the cosine schedule's final learning rate.
        plateau_factor: learning-rate factor of a plateau.
        plateau_patience: validation checks without improvement that are tolerated.
        image_every_n_steps: how often to log a picture (0: never).
        max_nonfinite_steps: consecutive optimizer steps skipped for a NaN or infinite loss
            that stop the run (1: the first one does).
    """

    # The encoder that transfers: exported, and read from Lightning checkpoints.
    exported = "encoder"

    def __init__(
        self,
        size: str = "base",
        fshape: int = 16,
        tshape: int = 16,
        input_tdim: int = 1024,
        num_lead_tokens: int = 2,
        drop_path: float = 0.0,
        optimizer: Literal["adam", "adamw"] = "adam",
        lr: float = 1e-4,
        betas: tuple[float, float] = (0.95, 0.999),
        weight_decay: float = 5e-7,
        warmup_steps: int = 1000,
        schedule: Literal["plateau", "cosine"] = "plateau",
        min_lr: float = 1e-6,
        plateau_factor: float = 0.5,
        plateau_patience: int = 2,
        image_every_n_steps: int = 500,
        max_nonfinite_steps: int = 20,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.max_nonfinite_steps = max_nonfinite_steps
        # Pretraining cuts non-overlapping patches: the stride is the patch shape.
        config = EncoderConfig.from_size(
            size, fshape=fshape, tshape=tshape, fstride=fshape, tstride=tshape,
            input_tdim=self.encoder_input_frames(input_tdim), num_lead_tokens=num_lead_tokens, drop_path=drop_path,
        )
        self.encoder = ASTEncoder(config)
        self._last_batch_start: float | None = None

    def encoder_input_frames(self, clip_frames: int) -> int:
        """Frames the encoder sees when the data gives clips of ``clip_frames``."""
        return clip_frames

    @property
    def exported_encoder(self) -> ASTEncoder:
        return getattr(self, self.exported)

    # --- optimization ---------------------------------------------------------------

    def param_groups(self) -> list[dict[str, Any]]:
        """What the optimizer trains, in groups (a method may exempt some from weight decay)."""
        return [{"params": [p for p in self.parameters() if p.requires_grad]}]

    def peak_lr(self) -> float:
        """The learning rate after warmup."""
        return self.hparams.lr

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        optimizer_class = torch.optim.Adam if hp.optimizer == "adam" else torch.optim.AdamW
        optimizer = optimizer_class(self.param_groups(), lr=self.peak_lr(), betas=tuple(hp.betas),
                                    weight_decay=hp.weight_decay)
        if hp.schedule == "plateau":
            scheduler = WarmupPlateau(optimizer, hp.warmup_steps, hp.plateau_factor, hp.plateau_patience)
        else:
            scheduler = WarmupCosine(optimizer, hp.warmup_steps, int(self.trainer.estimated_stepping_batches), hp.min_lr)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def plateau_metric(self) -> float:
        """The validation figure the plateau schedule watches (higher is better)."""
        raise NotImplementedError

    def on_validation_epoch_end(self) -> None:
        scheduler = self.lr_schedulers()
        if isinstance(scheduler, WarmupPlateau) and not self.trainer.sanity_checking:
            scheduler.report(self.plateau_metric())

    # --- logging ----------------------------------------------------------------------

    def on_train_batch_start(self, batch: dict, batch_idx: int) -> None:
        now = time.perf_counter()
        if self._last_batch_start is not None:
            clips = len(batch["fbank"]) * self.trainer.world_size
            self.log("train/clips_per_s", clips / (now - self._last_batch_start), batch_size=len(batch["fbank"]))
        self._last_batch_start = now

    def on_train_batch_end(self, outputs: Any, batch: dict, batch_idx: int) -> None:
        # Summed over ranks, so only on logging steps (every rank reaches the same ones).
        if self.global_step % self.trainer.log_every_n_steps == 0:
            log_data_counts(self)

    def should_draw(self) -> bool:
        """Whether this training step logs a picture (on the first rank only)."""
        every = self.hparams.image_every_n_steps
        return every > 0 and self.global_step % every == 0 and self.trainer.is_global_zero

    def log_picture(self, key: str, picture: np.ndarray, caption: str | None = None) -> None:
        log_picture(self, key, picture, caption)

    # --- checkpoints ------------------------------------------------------------------

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        add_encoder_metadata(self, checkpoint, self.exported)
