"""What every pretraining method shares: the encoder, the optimizer and its schedules,
logging, validation and checkpoints.

A method is one file with one subclass of :class:`PretrainModule`. It builds its heads in
its constructor and writes its step as one function you can read top to bottom,

* :meth:`PretrainModule.step`: a normalized log-mel batch in, its losses and the figures to
  watch out (``"loss"`` is what is minimized), and, when the method moves state outside the
  optimizer (an EMA teacher, running centers),
* :meth:`PretrainModule.apply_updates`: called after every optimizer step that was taken.

Both are told where the run is (:class:`~ssast.train.schedules.Progress`: the step and the
run's length), which every schedule of a method reads (a teacher's temperature and EMA
decay, the weight decay); a method never reads the trainer in a step. The Lightning hooks
below hand them the trainer's; ``benchmarks/pretrain_step.py`` calls the same functions
through :func:`optimization_step`, the whole step without Lightning at a step it is given,
so the benchmark times the step that trains. Pictures for the dashboard come from
:meth:`PretrainModule.picture`, drawn by the :class:`~ssast.train.callbacks.LogPictures`
callback.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from einops import repeat
from torch import nn
from lightning.pytorch.trainer.states import TrainerFn
from torchmetrics import MeanMetric

from ssast.checkpoints import CheckpointError, adapt_encoder, load_checkpoint
from ssast.encoder import LAYOUTS, ASTEncoder, EncoderConfig, compile_blocks
from ssast.features import logmel_statistics
from ssast.renamed import refuse_renamed
from ssast.train.module import EncoderModule
from ssast.train.schedules import Progress, WarmupCosine, WarmupPlateau, cosine_ramp

ENDLESS_RUN_STEPS = 2**62  # the length a run without max_steps or max_epochs is given


class PretrainModule(EncoderModule):
    """Base of the pretraining methods (see the module docstring).

    Args:
        size: encoder size, ``tiny``, ``small``, ``base`` or ``large`` (or ``mini`` for CPU demos).
        layout: ``ast`` (pre-norm blocks, learned positions: AST, SSAST, ASiT) or ``eat`` (EAT's
            post-norm blocks after a norm over the embeddings, no final norm, a fixed sin-cos
            table; :data:`~ssast.encoder.LAYOUTS`).
        init_from: ``None``: a new encoder; else a checkpoint (any format ``ssast.load_checkpoint``
            reads: EAT's released files, official SSAST, ours) to continue pretraining from. Its
            encoder must be what ``size``, ``layout``, the token shape and ``num_lead_tokens``
            describe (checked); it is cut into non-overlapping patches and read at
            ``input_tdim``. What else the file holds for the method (EAT's teacher and decoder)
            the method takes (:attr:`init_extra`).
        fshape: patch height in mel bins (16 for patch models, 128 for frame models).
        tshape: patch width in frames (16 for patch models, 2 for frame models).
        input_tdim: frames per clip (linked to the data's ``target_length`` by the CLI).
        num_lead_tokens: 2 (``cls`` and ``dist``, as SSAST) or 1.
        drop_path: stochastic depth of the deepest block.
        layer_scale: ``None``: none (AST, SSAST); else every residual branch is multiplied by
            a learned per-channel gain started at this (CaiT's LayerScale).
        optimizer: ``adam`` (L2 penalty in the gradient, as SSAST) or ``adamw`` (decoupled
            weight decay).
        lr: peak learning rate (per ``lr_batch_size`` clips when that is set).
        lr_batch_size: ``None``: ``lr`` as given; else ``lr`` is for a global batch of this many
            clips and scales linearly with the real one (DINO/ASiT: 256).
        betas: Adam's betas.
        weight_decay: weight decay (at the start, when ``weight_decay_end`` is set).
        weight_decay_end: ``None``: constant; else the weight decay follows a cosine from
            ``weight_decay`` to this at the end of training (DINO/ASiT).
        decay_norms_and_biases: whether biases and normalization weights take weight decay
            (SSAST: yes; DINO/ASiT: no).
        gradient_clip_per_tensor: every gradient tensor is scaled to at most this norm (0:
            off; DINO/ASiT's clipping; for a global norm use ``trainer.gradient_clip_val``).
        warmup_steps: linear warmup, in optimizer steps.
        warmup_every: ``plateau`` only: the warmup sets the rate every this many steps, from 0
            (SSAST's loop: stairs of 50; the cosine schedule's warmup rises every step).
        schedule: ``plateau`` (SSAST: halve when the validation figure named by
            :attr:`plateau_figure` stalls) or ``cosine`` (to ``min_lr`` at the end).
        min_lr: the cosine schedule's final learning rate.
        plateau_factor: learning-rate factor of a plateau.
        plateau_patience: validation checks without improvement that are tolerated.
        max_nonfinite_steps: consecutive optimizer steps skipped for a NaN or infinite loss
            that stop the run (1: the first one does).
        clip_stats_weight: weight of the clip-statistics loss (0: off): a linear head on the
            mean of the student's patch outputs regresses each clip's per-bin log-mel mean and
            standard deviation (:func:`~ssast.features.logmel_statistics`, squared error), so
            that the encoder keeps the clip-level spectrum (a speaker's, an instrument's) that
            masked objectives over whitened targets let it drop. Regression onto hand-made
            features as an auxiliary self-supervised task is PASE's (Pascual et al., 2019).
        compile: compile the transformer blocks of every encoder (student, teacher) with
            ``torch.compile`` before training (:meth:`configure_model`); the first steps
            then take the compilation time. Mixed precision is the trainer's
            (``trainer.precision: bf16-mixed``).
    """

    # Step outputs shown in the progress bar, and averaged over each validation.
    progress_bar: tuple[str, ...] = ("loss",)
    validated: tuple[str, ...] = ("loss",)
    # The validation figure the plateau schedule watches, and whether higher is better.
    plateau_figure: tuple[str, Literal["min", "max"]] = ("loss", "min")
    # Knobs refused under their old names, old -> new (see refuse_renamed); never hyperparameters.
    renamed: dict[str, str] = {}

    def __init__(
        self,
        size: str = "base",
        layout: Literal["ast", "eat"] = "ast",
        init_from: str | None = None,
        fshape: int = 16,
        tshape: int = 16,
        input_tdim: int = 1024,
        num_lead_tokens: int = 2,
        drop_path: float = 0.0,
        layer_scale: float | None = None,
        optimizer: Literal["adam", "adamw"] = "adam",
        lr: float = 1e-4,
        lr_batch_size: int | None = None,
        betas: tuple[float, float] = (0.95, 0.999),
        weight_decay: float = 5e-7,
        weight_decay_end: float | None = None,
        decay_norms_and_biases: bool = True,
        gradient_clip_per_tensor: float = 0.0,
        warmup_steps: int = 1000,
        warmup_every: int = 50,
        schedule: Literal["plateau", "cosine"] = "plateau",
        min_lr: float = 1e-6,
        plateau_factor: float = 0.5,
        plateau_patience: int = 2,
        max_nonfinite_steps: int = 20,
        clip_stats_weight: float = 0.0,
        compile: bool = False,
    ) -> None:
        super().__init__(max_nonfinite_steps)
        self.save_hyperparameters(ignore=list(self.renamed))
        for name, value in self.hparams.items():  # checkpoints hold plain values only (weights_only loads)
            if dataclasses.is_dataclass(value):
                self.hparams[name] = dataclasses.asdict(value)
        # Pretraining cuts non-overlapping patches: the stride is the patch shape.
        config = EncoderConfig.from_size(
            size, layout, fshape=fshape, tshape=tshape, fstride=fshape, tstride=tshape, input_tdim=input_tdim,
            num_lead_tokens=num_lead_tokens, drop_path=drop_path, layer_scale=layer_scale,
        )
        # What a checkpoint to continue from holds beside the encoder, for the method's constructor to
        # take (then emptied: a whole teacher is not kept twice).
        self.init_extra: dict[str, torch.Tensor] = {}
        if init_from is None:
            self.encoder = ASTEncoder(config)
        else:
            self.encoder, self.init_extra = pretrained_encoder(init_from, config)
        if clip_stats_weight < 0:
            raise ValueError(f"clip_stats_weight must be at least 0, got {clip_stats_weight}")
        self.clip_stats_head = nn.Linear(config.embed_dim, 2 * config.input_fdim) if clip_stats_weight > 0 else None
        self.val_figures = nn.ModuleDict({name: MeanMetric() for name in self.validated})
        # What step() left for apply_updates() since the last optimizer step (e.g. teacher means).
        self.pending_updates: list[Any] = []
        self._last_batch_start: float | None = None
        self._compiled = False
        self._run_steps: int | None = None  # see run_steps()
        self._checkpoint_progress: Progress | None = None  # where a loaded checkpoint's run was

    @classmethod
    def refuse_renamed(cls, **given: Any) -> None:
        """Refuse the knobs of :attr:`renamed` given under their old names (not ``None``): a
        method takes each old name as a keyword-only argument defaulting to ``None`` and hands
        it here first (:func:`ssast.renamed.refuse_renamed`)."""
        for old, value in given.items():
            refuse_renamed(cls.__name__, old, cls.renamed[old], value)

    # --- the method -----------------------------------------------------------------------

    def step(self, fbank: torch.Tensor, progress: Progress,
             generator: torch.Generator | None = None) -> dict[str, torch.Tensor | float]:
        """The method on a batch of normalized log-mels ``[B, T, F]`` at ``progress`` in the
        run: ``"loss"`` (what is minimized) and other figures to watch, all scalars (tensors, or
        floats for schedules). Randomness (masks, views) comes from ``generator`` when one is
        given (validation: the same every time)."""
        raise NotImplementedError

    def add_clip_stats(self, out: dict[str, Any], patches: torch.Tensor, fbank: torch.Tensor) -> dict[str, Any]:
        """``out`` of :meth:`step` with the clip-statistics loss (``clip_stats_weight``) added to
        its ``"loss"`` and reported as ``"clip_stats"``; unchanged when that loss is off.
        ``patches`` are the student's patch outputs ``[B * k, N, D]`` for ``k`` encodings of
        each clip of ``fbank [B, T, F]`` (masked clones, say; rows ``i * k`` to ``i * k + k - 1``
        are clip ``i``'s); the statistics are the whole clip's."""
        if self.clip_stats_head is None:
            return out
        prediction = self.clip_stats_head(patches.mean(dim=1)).float()
        target = repeat(logmel_statistics(fbank), "b s -> (b k) s", k=len(patches) // len(fbank))
        clip_stats = F.mse_loss(prediction, target)
        return {**out, "loss": out["loss"] + self.hparams.clip_stats_weight * clip_stats, "clip_stats": clip_stats}

    def apply_updates(self, pending: list[Any], progress: Progress) -> None:
        """What moves outside the optimizer after the optimizer step at ``progress`` was taken;
        ``pending`` is what :meth:`step` appended to ``self.pending_updates`` since the last
        step."""

    def picture(self, fbank: torch.Tensor) -> tuple[np.ndarray, str] | None:
        """A ``[H, W, 3]`` picture of what the method does to one clip ``[1, T, F]`` (input,
        mask, reconstruction ...) and its caption, or ``None``."""
        return None

    # --- around the optimizer step (the Lightning hooks and optimization_step call these) --

    def before_optimizer_step(self, optimizer: torch.optim.Optimizer, progress: Progress) -> None:
        """Between backward and the optimizer step at ``progress``: the scheduled weight decay
        (``weight_decay_end``), then per-tensor gradient clipping."""
        hp = self.hparams
        if hp.weight_decay_end is not None:  # the first group is the one that decays
            decay = cosine_ramp(hp.weight_decay, hp.weight_decay_end, progress.step, progress.total_steps)
            optimizer.param_groups[0]["weight_decay"] = decay
        if hp.gradient_clip_per_tensor > 0:  # each tensor on its own, as DINO's clip_gradients
            for parameter in self.parameters():
                if parameter.grad is not None:
                    nn.utils.clip_grad_norm_(parameter, hp.gradient_clip_per_tensor)

    def finish_optimizer_step(self, progress: Progress, skipped: bool = False) -> None:
        """After the optimizer step at ``progress``: :meth:`apply_updates` with what
        :meth:`step` left pending if the step was taken; a ``skipped`` (non-finite) batch
        must leave no trace, here either."""
        pending, self.pending_updates = self.pending_updates, []
        if not skipped:
            self.apply_updates(pending, progress)

    # --- Lightning hooks ------------------------------------------------------------------

    def trainer_progress(self) -> Progress:
        """Where the attached trainer's run is: the step the hooks hand the method (the trainer
        counts a step once it is over, so this is the step being taken) and the run's length
        (:meth:`run_steps`). Outside a fit (``validate``), where the checkpoint's run was; with
        no checkpoint, a run ending at the current step."""
        try:
            fitting = self.trainer.state.fn == TrainerFn.FITTING
        except RuntimeError:  # not attached to a trainer: the method used on its own
            return Progress(self.global_step, 1)
        if fitting:
            return Progress(self.global_step, self.run_steps())
        return self._checkpoint_progress or Progress(self.global_step, max(1, self.global_step))

    def run_steps(self) -> int:
        """The optimizer steps of the run being fitted, worked out once per fit: the trainer
        sizes it from the train loader, which must not be built again at every step."""
        if self._run_steps is None:
            total = self.trainer.estimated_stepping_batches
            # An endless run (no max_steps, max_epochs -1) has no end for a ramp to reach: ramps hold their start.
            self._run_steps = max(1, int(total)) if math.isfinite(total) else ENDLESS_RUN_STEPS
        return self._run_steps

    def setup(self, stage: str) -> None:
        super().setup(stage)
        self._run_steps = None  # each fit sizes its own run (a resumed one may have another max_steps)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["run_steps"] = self.trainer_progress().total_steps

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        if "run_steps" in checkpoint:
            self._checkpoint_progress = Progress(checkpoint["global_step"], checkpoint["run_steps"])

    def configure_model(self) -> None:
        # After the method's constructor has built every encoder; once, however often called.
        if self.hparams.get("compile") and not self._compiled:
            compile_blocks(self)
            self._compiled = True

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        out = self.step(batch["fbank"], self.trainer_progress())
        size = len(batch["fbank"])
        for name, value in out.items():
            self.log(f"train/{name}", value, prog_bar=name in self.progress_bar, batch_size=size)
        return out["loss"]

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        # Randomness seeded by the batch index: every validation sees the same masks and views.
        out = self.step(batch["fbank"], self.trainer_progress(), torch.Generator(self.device).manual_seed(batch_idx))
        size = len(batch["fbank"])
        weight = 0 if batch.get("padding") else size  # a DDP rank's placeholder batch (no data) counts for nothing
        for name, metric in self.val_figures.items():
            metric.update(out[name], weight)
            self.log(f"val/{name}", metric, prog_bar=name in self.progress_bar, batch_size=size)

    def on_validation_epoch_end(self) -> None:
        scheduler = self.lr_schedulers()
        if isinstance(scheduler, WarmupPlateau) and not self.trainer.sanity_checking:
            name, mode = self.plateau_figure
            value = float(self.val_figures[name].compute())
            scheduler.report(value if mode == "max" else -value)

    def on_train_batch_start(self, batch: dict, batch_idx: int) -> None:
        now = time.perf_counter()
        if self._last_batch_start is not None:
            clips = len(batch["fbank"]) * self.trainer.world_size
            self.log("train/clips_per_s", clips / (now - self._last_batch_start), batch_size=len(batch["fbank"]))
        self._last_batch_start = now

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        self.before_optimizer_step(optimizer, self.trainer_progress())
        if self.hparams.weight_decay_end is not None:
            self.log("train/weight_decay", optimizer.param_groups[0]["weight_decay"], batch_size=1)

    def after_optimizer_step(self, skipped: bool) -> None:
        self.finish_optimizer_step(self.trainer_progress(), skipped)

    # --- optimization ---------------------------------------------------------------------

    def param_groups(self) -> list[dict[str, Any]]:
        trained = [(name, p) for name, p in self.named_parameters() if p.requires_grad]
        if self.hparams.decay_norms_and_biases:
            return [{"params": [p for _, p in trained]}]
        decays = {name: p.ndim > 1 and not name.endswith(".bias") for name, p in trained}
        return [
            {"params": [p for name, p in trained if decays[name]]},
            {"params": [p for name, p in trained if not decays[name]], "weight_decay": 0.0},
        ]

    def peak_lr(self) -> float:
        hp = self.hparams
        if hp.lr_batch_size is None:
            return hp.lr
        datamodule = self.attached_datamodule()
        per_device = datamodule.hparams.batch_size if datamodule is not None else hp.lr_batch_size
        global_batch = per_device * self.trainer.world_size * self.trainer.accumulate_grad_batches
        return hp.lr * global_batch / hp.lr_batch_size

    def build_optimizer(self, lr: float | None = None) -> torch.optim.Optimizer:
        """The method's optimizer over :meth:`param_groups` at ``lr`` (default: :meth:`peak_lr`,
        which needs the trainer when the lr scales with the batch)."""
        hp = self.hparams
        optimizer_class = torch.optim.Adam if hp.optimizer == "adam" else torch.optim.AdamW
        return optimizer_class(self.param_groups(), lr=self.peak_lr() if lr is None else lr, betas=tuple(hp.betas),
                               weight_decay=hp.weight_decay)

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        optimizer = self.build_optimizer()
        if hp.schedule == "plateau":
            scheduler = WarmupPlateau(optimizer, hp.warmup_steps, hp.plateau_factor, hp.plateau_patience,
                                      warmup_every=hp.warmup_every)
        else:
            scheduler = WarmupCosine(optimizer, hp.warmup_steps, self.run_steps(), hp.min_lr)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def pretrained_encoder(path: str, wanted: EncoderConfig) -> tuple[ASTEncoder, dict[str, torch.Tensor]]:
    """The encoder of the checkpoint at ``path`` as pretraining reads it (``wanted``'s input
    length, stochastic depth and non-overlapping patches), and what else the file holds
    (:attr:`~ssast.checkpoints.Checkpoint.extra`). An encoder of another shape than ``wanted``
    is refused in one line naming each difference."""
    checkpoint = load_checkpoint(path, input_tdim=wanted.input_tdim, drop_path=wanted.drop_path)
    encoder = checkpoint.encoder
    if (encoder.config.fstride, encoder.config.tstride) != (encoder.config.fshape, encoder.config.tshape):
        encoder = adapt_encoder(encoder, fstride=encoder.config.fshape, tstride=encoder.config.tshape)
    fields = ("embed_dim", "depth", "num_heads", "mlp_ratio", "fshape", "tshape", "num_lead_tokens", "layer_scale",
              *LAYOUTS["ast"])
    differ = [name for name in dict.fromkeys(fields) if getattr(encoder.config, name) != getattr(wanted, name)]
    if differ:
        has = ", ".join(f"{name}={getattr(encoder.config, name)!r}" for name in differ)
        asked = ", ".join(f"{name}={getattr(wanted, name)!r}" for name in differ)
        raise CheckpointError(path, checkpoint.format, f"holds an encoder with {has} but the recipe builds {asked}; "
                                                       "set the recipe's size, layout, fshape, tshape and "
                                                       "num_lead_tokens to the checkpoint's")
    return encoder, checkpoint.extra


def optimization_step(module: PretrainModule, optimizer: torch.optim.Optimizer, fbank: torch.Tensor,
                      autocast: bool = False, *, step: int = 0, total_steps: int = 1) -> dict[str, torch.Tensor]:
    """One training step of ``module`` without Lightning, as the Lightning hooks run it:
    :meth:`~PretrainModule.step`, backward, :meth:`~PretrainModule.before_optimizer_step`, the
    optimizer, then :meth:`~PretrainModule.finish_optimizer_step`, all at optimizer step
    ``step`` (from 0) of a run of ``total_steps``, where the method's schedules are taken
    (``autocast``: bf16 mixed precision; with ``compile`` set, the blocks are compiled at the
    first call, as Lightning does). The learning rate is the optimizer's as it is."""
    progress = Progress(step, total_steps)
    module.configure_model()
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast(fbank.device.type, dtype=torch.bfloat16, enabled=autocast):
        out = module.step(fbank, progress)
    out["loss"].backward()
    module.before_optimizer_step(optimizer, progress)
    optimizer.step()
    module.finish_optimizer_step(progress)
    return out
