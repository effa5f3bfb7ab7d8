"""Schedules: where a run is (:class:`Progress`), the ramps that move with it (a teacher's EMA
decay and temperature, the weight decay), and the learning-rate schedules stepped once per
optimizer step. Plain PyTorch: the methods, their teachers and the Lightning layer all read
them."""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler


class WarmupPlateau(LRScheduler):
    """SSAST's pretraining schedule (``src/traintest_mask.py``): a warmup that, while the step
    is at most ``warmup_steps``, sets the rate to ``base_lr * step / warmup_steps`` every
    ``warmup_every`` steps (SSAST: 1,000 in stairs of 50, from 0), then ``ReduceLROnPlateau``
    (mode ``max``, relative ``threshold``): the rate is multiplied by ``factor`` whenever the
    reported metric has not beaten the best by more than ``threshold`` for more than
    ``patience`` reports.

    Unlike chaining a warmup scheduler with ``ReduceLROnPlateau``, the two never overwrite
    each other, and everything (best value, bad reports, reductions) is in
    ``state_dict``, so a resumed run continues the schedule.
    """

    def __init__(self, optimizer: Optimizer, warmup_steps: int, factor: float = 0.5, patience: int = 2,
                 warmup_every: int = 1, threshold: float = 1e-4) -> None:
        self.warmup_steps = warmup_steps
        self.warmup_every = warmup_every
        self.factor = factor
        self.patience = patience
        self.threshold = threshold
        self.scale = 1.0
        self.best = -math.inf
        self.bad_reports = 0
        super().__init__(optimizer)

    def get_lr(self) -> list[float]:
        warmup = 1.0
        if self.last_epoch < self.warmup_steps:  # the stair a step is on; whole from warmup_steps on
            warmup = self.last_epoch // self.warmup_every * self.warmup_every / self.warmup_steps
        return [base_lr * warmup * self.scale for base_lr in self.base_lrs]

    def report(self, metric: float) -> None:
        """Tell the schedule the latest validation metric (higher is better)."""
        if metric > self.best * (1 + self.threshold):  # ReduceLROnPlateau's test in mode max, relative
            self.best, self.bad_reports = metric, 0
            return
        self.bad_reports += 1
        if self.bad_reports > self.patience:
            self.scale *= self.factor
            self.bad_reports = 0
            for group, lr in zip(self.optimizer.param_groups, self.get_lr()):
                group["lr"] = lr


class WarmupCosine(LRScheduler):
    """Linear warmup to the base learning rate, then cosine decay to ``min_lr`` at
    ``total_steps``."""

    def __init__(self, optimizer: Optimizer, warmup_steps: int, total_steps: int, min_lr: float = 0.0) -> None:
        self.warmup_steps = warmup_steps
        self.total_steps = max(total_steps, warmup_steps + 1)
        self.min_lr = min_lr
        super().__init__(optimizer)

    def get_lr(self) -> list[float]:
        step = self.last_epoch + 1
        if step <= self.warmup_steps:
            return [base_lr * step / self.warmup_steps for base_lr in self.base_lrs]
        progress = min(1.0, (step - self.warmup_steps) / (self.total_steps - self.warmup_steps))
        cosine = 0.5 * (1 + math.cos(math.pi * progress))
        return [self.min_lr + (base_lr - self.min_lr) * cosine for base_lr in self.base_lrs]


class WarmupStepDecay(LRScheduler):
    """The finetuning schedule of the official SSAST and AST loops (``src/traintest.py`` of
    YuanGongND/ssast and YuanGongND/ast), stepped once per optimizer step.

    Warmup: while ``step <= warmup_steps``, every ``warmup_every`` steps the learning rate is
    set to ``base_lr * step / warmup_steps`` (SSAST: 1,000 steps in stairs of 50, so steps 0 to
    49 run at 0); 0 turns warmup off. Decay: ``MultiStepLR(range(decay_start, 1000,
    decay_every), gamma=decay_factor)`` stepped after each epoch, so epochs 1 to
    ``decay_start`` keep the rate and the first decayed epoch is ``decay_start + 1``.

    Like the official loop, the two act on the optimizer's current rate: a decay that falls
    inside the warmup is overwritten by the next warmup setting. The rate of a step is
    computed from the step alone, so a resumed run continues the schedule exactly.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        steps_per_epoch: int,
        decay_start: int,
        decay_every: int = 1,
        decay_factor: float = 0.85,
        warmup_steps: int = 0,
        warmup_every: int = 1,
    ) -> None:
        if steps_per_epoch < 1 or decay_every < 1 or warmup_every < 1:
            raise ValueError(f"steps_per_epoch ({steps_per_epoch}), decay_every ({decay_every}) and warmup_every "
                             f"({warmup_every}) must be at least 1")
        self.steps_per_epoch = steps_per_epoch
        self.decay_start = decay_start
        self.decay_every = decay_every
        self.decay_factor = decay_factor
        self.warmup_steps = warmup_steps
        self.warmup_every = warmup_every
        super().__init__(optimizer)

    def scale(self, step: int) -> float:
        """The factor on the base learning rates at optimizer step ``step`` (from 0)."""
        if self.warmup_steps > 0:  # the last warmup setting at or before this step
            anchor = min(step, self.warmup_steps) // self.warmup_every * self.warmup_every
            value = anchor / self.warmup_steps
        else:
            anchor, value = 0, 1.0
        # Epoch e's decay lands between steps e*spe - 1 and e*spe; those after the anchor count.
        first = max(anchor // self.steps_per_epoch + 1, self.decay_start)
        last = min(step // self.steps_per_epoch, 999)  # MultiStepLR's milestones stop below 1000
        if last < first:
            return value
        offset = (first - self.decay_start) % self.decay_every
        first += (self.decay_every - offset) % self.decay_every  # the first milestone >= first
        decays = 0 if last < first else (last - first) // self.decay_every + 1
        return value * self.decay_factor**decays

    def get_lr(self) -> list[float]:
        scale = self.scale(self.last_epoch)
        return [base_lr * scale for base_lr in self.base_lrs]


class FairseqCosine(LRScheduler):
    """fairseq's ``cosine`` schedule as data2vec 2.0 and EAT finetune with it
    (``fairseq/optim/lr_scheduler/cosine_lr_scheduler.py``, one period, no restarts): over
    the first ``warmup_steps`` updates the rate rises linearly from ``min_lr`` to the peak,
    ``min_lr + n * (peak - min_lr) / warmup_steps`` at update ``n``; then ``min_lr + (peak -
    min_lr) * (1 + cos(pi * t)) / 2`` with ``t`` going from 0 to 1 at ``total_steps``. fairseq
    scales the whole rate, ``min_lr`` included, by each group's ``lr_scale`` (layer decay):
    here a group's base rate is ``peak_lr`` (default: the largest base rate) times its scale,
    and so is its floor.
    """

    def __init__(self, optimizer: Optimizer, warmup_steps: int, total_steps: int, min_lr: float = 0.0,
                 peak_lr: float | None = None) -> None:
        self.warmup_steps = warmup_steps
        self.total_steps = max(total_steps, warmup_steps + 1)
        self.min_lr = min_lr
        self.peak_lr = peak_lr
        super().__init__(optimizer)

    def get_lr(self) -> list[float]:
        step = self.last_epoch
        # The floor as a share of the peak: fairseq's lr_scale scales it with the rate.
        floor = self.min_lr / (self.peak_lr or max(self.base_lrs))
        if step < self.warmup_steps:
            share = floor + step * (1 - floor) / self.warmup_steps
        else:
            progress = min(1.0, (step - self.warmup_steps) / (self.total_steps - self.warmup_steps))
            share = floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
        return [base_lr * share for base_lr in self.base_lrs]


@dataclass(frozen=True)
class Progress:
    """Where a run is, for the schedules that move with it (a teacher's EMA decay and
    temperature, the weight decay): ``step`` optimizer steps were taken before the current
    one (0 at the first), of ``total_steps`` in the whole run, ``steps_per_epoch`` to an
    epoch. The Lightning hooks read it from the trainer; a loop of its own says it."""

    step: int
    total_steps: int
    steps_per_epoch: int | None = None  # for schedules a paper gives in epochs; None: the run has no epochs

    def __post_init__(self) -> None:
        if self.step < 0 or self.total_steps < 1 or (self.steps_per_epoch is not None and self.steps_per_epoch < 1):
            raise ValueError(f"need step >= 0, total_steps >= 1 and steps_per_epoch >= 1, got {self.step}, "
                             f"{self.total_steps} and {self.steps_per_epoch}")

    def steps(self, epochs: float) -> int:
        """``epochs`` of this run in optimizer steps."""
        if not epochs:
            return 0
        if self.steps_per_epoch is None:
            raise ValueError(f"a schedule of {epochs} epochs needs the run's epoch length: give the training data a "
                             "length (batches_per_epoch)")
        return round(epochs * self.steps_per_epoch)


def cosine_ramp(start: float, end: float, step: int, total_steps: int) -> float:
    """``start`` at step 0 to ``end`` at ``total_steps`` along a half cosine (DINO's
    schedules of the teacher's EMA decay and the weight decay)."""
    progress = min(1.0, step / max(1, total_steps))
    return end + (start - end) * 0.5 * (1 + math.cos(math.pi * progress))


def linear_warmup(start: float, end: float, step: int, warmup_steps: int) -> float:
    """``start`` to ``end`` linearly over ``warmup_steps``, then ``end``."""
    if step >= warmup_steps:
        return end
    return start + (end - start) * step / warmup_steps
