"""What every pretraining method shares: the encoder, the optimizer and its schedules,
logging, validation and checkpoints.

A method is one file with one subclass of :class:`PretrainModule`. It builds its heads in
its constructor and writes its step as one function you can read top to bottom,

* :meth:`PretrainModule.step`: a normalized log-mel batch in, its losses and the figures to
  watch out (``"loss"`` is what is minimized), and, when the method moves state outside the
  optimizer (an EMA teacher, running centers),
* :meth:`PretrainModule.apply_updates`: called after every optimizer step that was taken.

Both are told where the run is (:class:`~ssast.schedules.Progress`: the step and the
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
from torch import nn
from lightning.pytorch.trainer.states import TrainerFn
from torchmetrics import MeanMetric

from ssast.checkpoints import adapt_encoder, check_fits, load_checkpoint
from ssast.encoder import LAYOUTS, ASTEncoder, EncoderConfig, compile_blocks
from ssast.optim import build_optimizer, parameter_groups
from ssast.train.module import EncoderModule
from ssast.schedules import Progress, WarmupCosine, WarmupPlateau, cosine_ramp
from pretrain.optimization import Optimization

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
        optimization: the optimizer and learning-rate schedule
            (:class:`~pretrain.optimization.Optimization`); each method's default is its
            paper's recipe.
        max_nonfinite_steps: consecutive optimizer steps skipped for a NaN or infinite loss
            that stop the run (1: the first one does).
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
        optimization: Optimization = Optimization(),
        max_nonfinite_steps: int = 20,
        compile: bool = False,
    ) -> None:
        super().__init__(max_nonfinite_steps)
        self.save_hyperparameters()
        for name, value in self.hparams.items():  # checkpoints hold plain values only (weights_only loads)
            if dataclasses.is_dataclass(value):
                self.hparams[name] = dataclasses.asdict(value)
        # A dict when Lightning rebuilds the module from a checkpoint's hyperparameters.
        self.optimization = optimization if isinstance(optimization, Optimization) else Optimization(**optimization)
        # Pretraining cuts non-overlapping patches: the stride is the patch shape.
        config = EncoderConfig.from_size(
            size, layout, fshape=fshape, tshape=tshape, fstride=fshape, tstride=tshape, input_tdim=input_tdim,
            num_lead_tokens=num_lead_tokens, drop_path=drop_path,
        )
        # What a checkpoint to continue from holds beside the encoder, for the method's constructor to
        # take (then emptied: a whole teacher is not kept twice).
        self.init_extra: dict[str, torch.Tensor] = {}
        if init_from is None:
            self.encoder = ASTEncoder(config)
        else:
            self.encoder, self.init_extra = pretrained_encoder(init_from, config)
        self.val_figures = nn.ModuleDict({name: MeanMetric() for name in self.validated})
        # What step() left for apply_updates() since the last optimizer step (e.g. teacher means).
        self.pending_updates: list[Any] = []
        self._last_batch_start: float | None = None
        self._compiled = False
        self._run_steps: int | None = None  # see run_steps()
        self._steps_per_epoch: int | None = None  # see trainer_progress()
        self._checkpoint_progress: Progress | None = None  # where a loaded checkpoint's run was
        # What each training batch's random draws are seeded from (see training_generator).
        self._seed = torch.initial_seed()  # seed_everything's, set before the CLI builds the module
        self._batches_trained = 0

    # --- the method -----------------------------------------------------------------------

    def step(self, fbank: torch.Tensor, progress: Progress,
             generator: torch.Generator | None = None) -> dict[str, torch.Tensor | float]:
        """The method on a batch of normalized log-mels ``[B, T, F]`` at ``progress`` in the
        run: ``"loss"`` (what is minimized) and other figures to watch, all scalars (tensors, or
        floats for schedules). Randomness (masks, views) comes from ``generator`` when one is
        given (validation: the same every time): :meth:`draw`, then :meth:`losses`."""
        return self.losses(fbank, self.draw(fbank, generator), progress)

    def draw(self, fbank: torch.Tensor, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Everything random a step of ``fbank`` uses (masks, views, corruptions, noise), drawn
        before :meth:`losses`: the draws that loop until they are done or pick data-dependent
        counts stay out of the step, which is then one graph without host syncs
        (``torch.compile(fullgraph=True)`` takes it whole)."""
        return {}

    def losses(self, fbank: torch.Tensor, draws: dict[str, torch.Tensor],
               progress: Progress) -> dict[str, torch.Tensor | float]:
        """What :meth:`step` returns, from the batch and its :meth:`draw`."""
        raise NotImplementedError

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
        opt = self.optimization
        if opt.weight_decay_end is not None:  # the first group is the one that decays
            decay = cosine_ramp(opt.weight_decay, opt.weight_decay_end, progress.step, progress.total_steps)
            optimizer.param_groups[0]["weight_decay"] = decay
        if opt.gradient_clip_per_tensor > 0:  # each tensor on its own, as DINO's clip_gradients
            for parameter in self.parameters():
                if parameter.grad is not None:
                    nn.utils.clip_grad_norm_(parameter, opt.gradient_clip_per_tensor)

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
        counts a step once it is over, so this is the step being taken), the run's length
        (:meth:`run_steps`) and its epoch's. Outside a fit (``validate``), where the checkpoint's
        run was; with no checkpoint, a run ending at the current step."""
        try:
            fitting = self.trainer.state.fn == TrainerFn.FITTING
        except RuntimeError:  # not attached to a trainer: the method used on its own, a run ending where it is
            return Progress(self.global_step, 1, 1)
        if fitting:
            if self._steps_per_epoch is None:  # once per fit, as the run's length
                self._steps_per_epoch = self.steps_per_epoch()
            return Progress(self.global_step, self.run_steps(), self._steps_per_epoch)
        return self._checkpoint_progress or Progress(self.global_step, max(1, self.global_step), 1)

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
        self._run_steps = self._steps_per_epoch = None  # each fit sizes its own run (a resume may change it)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        progress = self.trainer_progress()
        checkpoint["run_steps"], checkpoint["steps_per_epoch"] = progress.total_steps, progress.steps_per_epoch
        checkpoint["randomness"] = {"seed": self._seed, "batches_trained": self._batches_trained}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        if "run_steps" in checkpoint:
            self._checkpoint_progress = Progress(checkpoint["global_step"], checkpoint["run_steps"],
                                                 checkpoint.get("steps_per_epoch", 1))
        if "randomness" in checkpoint:
            randomness = checkpoint["randomness"]
            self._seed, self._batches_trained = randomness["seed"], randomness["batches_trained"]

    def configure_model(self) -> None:
        # After the method's constructor has built every encoder; once, however often called.
        if self.hparams.get("compile") and not self._compiled:
            compile_blocks(self)
            self._compiled = True

    def training_generator(self) -> torch.Generator:
        """The random draws of the next training batch (masks, views, noise: the generator
        returned; dropout and drop-path: torch's own generators, seeded alike) as a function of
        the run's seed, the rank and the batches trained so far. A resumed run, whose
        checkpoint holds the count, draws what the uninterrupted run drew, on every rank."""
        seed = hash((self._seed, self.global_rank, self._batches_trained)) % 2**63
        self._batches_trained += 1
        torch.manual_seed(seed)
        return torch.Generator(self.device).manual_seed(seed)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        out = self.step(batch["fbank"], self.trainer_progress(), self.training_generator())
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
        if self.optimization.weight_decay_end is not None:
            self.log("train/weight_decay", optimizer.param_groups[0]["weight_decay"], batch_size=1)

    def after_optimizer_step(self, skipped: bool) -> None:
        self.finish_optimizer_step(self.trainer_progress(), skipped)

    # --- optimization ---------------------------------------------------------------------

    def peak_lr(self) -> float:
        """``optimization.lr``, scaled to the global batch when it is given per
        ``lr_batch_size`` clips."""
        opt = self.optimization
        if opt.lr_batch_size is None:
            return opt.lr
        datamodule = self.attached_datamodule()
        per_device = datamodule.hparams.batch_size if datamodule is not None else opt.lr_batch_size
        global_batch = per_device * self.trainer.world_size * self.trainer.accumulate_grad_batches
        return opt.lr * global_batch / opt.lr_batch_size

    def build_optimizer(self, lr: float | None = None) -> torch.optim.Optimizer:
        """The method's optimizer over its trainable parameters at ``lr`` (default: :meth:`peak_lr`,
        which needs the trainer when the lr scales with the batch)."""
        opt = self.optimization
        lr = self.peak_lr() if lr is None else lr
        return build_optimizer(opt.optimizer, parameter_groups(self, lr, opt.weight_decay, opt.decay_norms_and_biases),
                               lr, opt.betas)

    def configure_optimizers(self) -> dict[str, Any]:
        opt = self.optimization
        optimizer = self.build_optimizer()
        warmup = opt.warmup(self.trainer_progress())
        if opt.schedule == "plateau":
            scheduler = WarmupPlateau(optimizer, warmup, opt.plateau_factor, opt.plateau_patience,
                                      warmup_every=opt.warmup_every)
        else:
            scheduler = WarmupCosine(optimizer, warmup, self.run_steps(), opt.min_lr)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def pretrained_encoder(path: str, wanted: EncoderConfig) -> tuple[ASTEncoder, dict[str, torch.Tensor]]:
    """The encoder of the checkpoint at ``path`` as pretraining reads it (``wanted``'s input
    length, stochastic depth and non-overlapping patches), and what else the file holds
    (:attr:`~ssast.checkpoints.Checkpoint.extra`). An encoder of another shape than ``wanted``
    is refused in one line naming each difference."""
    checkpoint = load_checkpoint(path, input_tdim=wanted.input_tdim, drop_path=wanted.drop_path)
    fields = ("embed_dim", "depth", "num_heads", "mlp_ratio", "fshape", "tshape", "num_lead_tokens", *LAYOUTS["ast"])
    check_fits(checkpoint, {name: getattr(wanted, name) for name in fields},
               "set the recipe's size, layout, fshape, tshape and num_lead_tokens to the checkpoint's")
    config = checkpoint.encoder.config
    return adapt_encoder(checkpoint.encoder, fstride=config.fshape, tstride=config.tshape), checkpoint.extra


def optimization_step(module: PretrainModule, optimizer: torch.optim.Optimizer, fbank: torch.Tensor,
                      autocast: bool = False, *, step: int = 0, total_steps: int = 1,
                      steps_per_epoch: int = 1) -> dict[str, torch.Tensor]:
    """One training step of ``module`` without Lightning, as the Lightning hooks run it:
    :meth:`~PretrainModule.step`, backward, :meth:`~PretrainModule.before_optimizer_step`, the
    optimizer, then :meth:`~PretrainModule.finish_optimizer_step`, all at optimizer step
    ``step`` (from 0) of a run of ``total_steps`` (``steps_per_epoch`` to an epoch), where the
    method's schedules are taken (``autocast``: bf16 mixed precision; with ``compile`` set, the
    blocks are compiled at the first call, as Lightning does). The learning rate is the
    optimizer's as it is."""
    progress = Progress(step, total_steps, steps_per_epoch)
    module.configure_model()
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast(fbank.device.type, dtype=torch.bfloat16, enabled=autocast):
        out = module.step(fbank, progress)
    out["loss"].backward()
    module.before_optimizer_step(optimizer, progress)
    optimizer.step()
    module.finish_optimizer_step(progress)
    return out
