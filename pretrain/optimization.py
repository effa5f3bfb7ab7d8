"""How a pretraining method trains its weights, as one options object: each method states its
paper's recipe in its own file (``SSAST_RECIPE`` in ``mspm.py``, ``ASIT_RECIPE`` in ``asit.py``,
``EAT_RECIPE`` in ``eat.py``) as the default of its ``optimization`` argument, and a recipe changes any field
(``model.init_args.optimization.lr``). :class:`~pretrain.base.PretrainModule` builds the
optimizer (:mod:`ssast.optim`) and the learning-rate schedule (:mod:`ssast.schedules`) from it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ssast.optim import OptimizerName
from ssast.schedules import Progress

Schedule = Literal["plateau", "warmup_cosine"]


@dataclass(frozen=True)
class Optimization:
    """A method's optimizer and learning-rate schedule.

    Args:
        optimizer: ``adam`` (weight decay added to the gradient, as SSAST) or ``adamw``
            (decoupled weight decay, as DINO, ASiT and fairseq's Adam in EAT).
        lr: peak learning rate (per ``lr_batch_size`` clips when that is set).
        lr_batch_size: ``None``: ``lr`` as given; else ``lr`` is for a global batch of this many
            clips and scales linearly with the real one (DINO/ASiT: 256).
        betas: Adam's betas.
        weight_decay: weight decay (at the start, when ``weight_decay_end`` is set).
        weight_decay_end: ``None``: constant; else the weight decay follows a cosine from
            ``weight_decay`` to this at the end of training (DINO/ASiT).
        decay_norms_and_biases: whether norms, biases and other 1-D parameters take weight
            decay (SSAST: yes; DINO, ASiT, EAT: no).
        gradient_clip_per_tensor: every gradient tensor is scaled to at most this norm (0: off;
            DINO/ASiT's clipping; for a global norm use ``trainer.gradient_clip_val``).
        schedule: ``plateau`` (SSAST: after the warmup, the rate is multiplied by
            ``plateau_factor`` when the method's validation figure stalls) or ``warmup_cosine``
            (linear warmup from 0, then a cosine down to ``min_lr`` at the run's end).
        warmup_steps: linear warmup, in optimizer steps; when above 0 it replaces
            ``warmup_epochs``.
        warmup_epochs: linear warmup, in epochs of the run (where a paper gives epochs: ASiT's
            10).
        warmup_every: ``plateau`` only: the warmup sets the rate every this many steps, from 0
            (SSAST's loop: stairs of 50).
        min_lr: ``warmup_cosine`` only: the final learning rate.
        plateau_factor: ``plateau`` only: the factor of a plateau.
        plateau_patience: ``plateau`` only: validation checks without improvement tolerated.
    """

    optimizer: OptimizerName = "adamw"
    lr: float = 1e-4
    lr_batch_size: int | None = None
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    weight_decay_end: float | None = None
    decay_norms_and_biases: bool = False
    gradient_clip_per_tensor: float = 0.0
    schedule: Schedule = "warmup_cosine"
    warmup_steps: int = 0
    warmup_epochs: float = 0.0
    warmup_every: int = 1
    min_lr: float = 0.0
    plateau_factor: float = 0.5
    plateau_patience: int = 2

    def __post_init__(self) -> None:
        if self.optimizer not in ("adam", "adamw"):
            raise ValueError(f"optimization.optimizer must be 'adam' or 'adamw', got {self.optimizer!r}")
        if self.schedule not in ("plateau", "warmup_cosine"):
            raise ValueError(f"optimization.schedule must be 'plateau' or 'warmup_cosine', got {self.schedule!r}")
        if self.warmup_steps < 0 or self.warmup_epochs < 0:
            raise ValueError(f"optimization: a warmup cannot be negative, got warmup_steps {self.warmup_steps} and "
                             f"warmup_epochs {self.warmup_epochs}")
        if self.lr <= 0:
            raise ValueError(f"optimization.lr must be positive, got {self.lr}")
        if self.lr_batch_size is not None and self.lr_batch_size < 1:
            raise ValueError(f"optimization.lr_batch_size must be at least 1 (or null), got {self.lr_batch_size}")
        if not all(0 <= beta < 1 for beta in self.betas):
            raise ValueError(f"optimization.betas must be in [0, 1), got {self.betas}")
        if self.weight_decay < 0 or (self.weight_decay_end or 0) < 0:
            raise ValueError(f"optimization: weight decay cannot be negative, got {self.weight_decay} and "
                             f"weight_decay_end {self.weight_decay_end}")
        if self.warmup_every < 1:
            raise ValueError(f"optimization.warmup_every must be at least 1, got {self.warmup_every}")

    def warmup(self, progress: Progress) -> int:
        """The warmup in optimizer steps, in the run ``progress`` is in."""
        return self.warmup_steps or progress.steps(self.warmup_epochs)
