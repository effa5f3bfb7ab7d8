"""The EMA teacher of the self-distillation methods (ASiT, EAT): frozen copies of student
modules that follow them by an exponential moving average, whose decay rises on a schedule.

Plain PyTorch: a method builds the teacher modules (the student's architecture, without its
stochastic depth), keeps them as its own submodules, and hands the pairs to
:class:`EMATeacher`, which copies the weights, freezes the teachers and moves them after
every optimizer step taken.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn

from ssast.schedules import Progress, cosine_ramp, linear_warmup


class EMATeacher:
    """Teacher modules that follow their students: after each optimizer step taken,
    ``teacher = decay * teacher + (1 - decay) * student``, parameter by parameter.

    Each teacher starts with its student's weights and is frozen (no gradient, so no
    optimizer sees it). The teachers stay submodules of the method that built them, so they
    move to its device, are saved under its attribute names and switch between train and
    eval mode with it; this class holds references to them, not copies.

    The decay rises from ``decay`` to ``end_decay``, in one of two published shapes:

    * ``cosine`` (DINO, ASiT): along a half cosine over the whole run, at the position of
      the step just taken (``progress.step``, 0 at the first);
    * ``linear`` (data2vec 2.0, EAT): linearly over the first ``anneal_steps`` updates, then
      ``end_decay``; updates are counted from 1, as fairseq's ``num_updates`` once the step
      is taken.

    Args:
        pairs: ``(student, teacher)`` modules of the same architecture.
        decay: the decay at the first update.
        end_decay: the decay at the end of the schedule.
        schedule: ``cosine`` or ``linear`` (see above).
        anneal_steps: the updates of the ``linear`` schedule (``None`` for ``cosine``, which
            spans the run).
    """

    def __init__(
        self,
        pairs: Sequence[tuple[nn.Module, nn.Module]],
        decay: float,
        end_decay: float,
        schedule: Literal["cosine", "linear"] = "cosine",
        anneal_steps: int | None = None,
    ) -> None:
        if schedule not in ("cosine", "linear"):
            raise ValueError(f"schedule must be 'cosine' or 'linear', got {schedule!r}")
        if schedule == "linear" and (anneal_steps is None or anneal_steps < 1):
            raise ValueError(f"the linear schedule needs anneal_steps >= 1, got {anneal_steps}")
        if schedule == "cosine" and anneal_steps is not None:
            raise ValueError(f"the cosine schedule spans the whole run: it takes no anneal_steps, got {anneal_steps}")
        self.pairs = list(pairs)
        self.start_decay, self.end_decay = decay, end_decay
        self.schedule, self.anneal_steps = schedule, anneal_steps
        for student, teacher in self.pairs:
            teacher.load_state_dict(student.state_dict())
            teacher.requires_grad_(False)

    def decay(self, progress: Progress) -> float:
        """The decay of the update that follows the step at ``progress``."""
        if self.schedule == "cosine":
            return cosine_ramp(self.start_decay, self.end_decay, progress.step, progress.total_steps)
        return linear_warmup(self.start_decay, self.end_decay, progress.step + 1, self.anneal_steps)

    @torch.no_grad()
    def update(self, progress: Progress) -> None:
        """Move every teacher towards its student, after the step at ``progress`` was taken
        (multiply, then add: the official loops' order of rounding)."""
        decay = self.decay(progress)
        # Listed at every update, not once: a strategy that shards or wraps the modules (FSDP)
        # replaces their parameters with new tensors.
        for student_module, teacher_module in self.pairs:
            for teacher, student in zip(teacher_module.parameters(), student_module.parameters(), strict=True):
                teacher.mul_(decay).add_(student.detach(), alpha=1 - decay)
