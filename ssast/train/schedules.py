"""Learning-rate schedules stepped once per optimizer step."""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler


class WarmupPlateau(LRScheduler):
    """SSAST's schedule: linear warmup, then the learning rate is multiplied by ``factor``
    whenever the reported metric has not improved for more than ``patience`` reports
    (``ReduceLROnPlateau`` semantics, mode ``max``).

    Unlike chaining a warmup scheduler with ``ReduceLROnPlateau``, the two never overwrite
    each other, and everything (best value, bad reports, reductions) is in
    ``state_dict``, so a resumed run continues the schedule.
    """

    def __init__(self, optimizer: Optimizer, warmup_steps: int, factor: float = 0.5, patience: int = 2) -> None:
        self.warmup_steps = warmup_steps
        self.factor = factor
        self.patience = patience
        self.scale = 1.0
        self.best = -math.inf
        self.bad_reports = 0
        super().__init__(optimizer)

    def get_lr(self) -> list[float]:
        warmup = min(1.0, (self.last_epoch + 1) / self.warmup_steps) if self.warmup_steps > 0 else 1.0
        return [base_lr * warmup * self.scale for base_lr in self.base_lrs]

    def report(self, metric: float) -> None:
        """Tell the schedule the latest validation metric (higher is better)."""
        if metric > self.best:
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


def cosine_ramp(start: float, end: float, step: int, total_steps: int) -> float:
    """``start`` at step 0 to ``end`` at ``total_steps`` along a half cosine (DINO's
    schedules of the teacher momentum and the weight decay)."""
    progress = min(1.0, step / max(1, total_steps))
    return end + (start - end) * 0.5 * (1 + math.cos(math.pi * progress))


def linear_warmup(start: float, end: float, step: int, warmup_steps: int) -> float:
    """``start`` to ``end`` linearly over ``warmup_steps``, then ``end``."""
    if step >= warmup_steps:
        return end
    return start + (end - start) * step / warmup_steps
