"""Losses that more than one method uses, or that are tested on their own."""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.distributed as dist
import torch.nn.functional as F
from einops import rearrange
from torch import nn


def info_nce(prediction: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """SSAST's discriminative loss over the ``M`` masked patches of each clip:
    ``prediction``, ``target`` ``[B, M, P]`` -> ``(loss, accuracy)``, in float32.

    ``scores[b, i, j] = target_i . prediction_j``, no temperature. The loss is the mean of
    ``-log_softmax(scores, dim=-1)`` on the diagonal: the softmax runs over predictions, as in
    the official code (the paper's Eq. 1 writes it over targets). The accuracy is the official
    code's: the share of predictions ``j`` whose ``argmax`` over targets of the *row-softmaxed*
    scores is ``j``. On collapsed predictions that differs from an argmax of the raw scores,
    which stays at chance, while this one moves, and SSAST's plateau schedule follows it.
    """
    scores = torch.bmm(target.float(), prediction.float().transpose(1, 2))
    loss = -scores.log_softmax(dim=-1).diagonal(dim1=1, dim2=2).mean()
    own = torch.arange(scores.shape[-1], device=scores.device)
    accuracy = (scores.softmax(dim=-1).argmax(dim=1) == own).float().mean()
    return loss, accuracy


def entropy(probs: torch.Tensor) -> torch.Tensor:
    """Mean entropy (nats) of the distributions along the last axis."""
    return -(probs * probs.clamp_min(1e-12).log()).sum(dim=-1).mean()


class CenteredDistillation(nn.Module):
    """DINO's loss between a centered, sharpened teacher and the student, whose center is
    an EMA (``center_momentum``) of the teacher's mean output across all ranks.

    The center is a parameter that is never trained, not a buffer: it is averaged over
    ranks here, and DDP would otherwise also broadcast it from rank 0 before every forward,
    a collective that hangs evaluation when ranks hold different numbers of batches.
    """

    def __init__(self, dim: int, student_temp: float = 0.1, center_momentum: float = 0.9) -> None:
        super().__init__()
        self.student_temp = student_temp
        self.center_momentum = center_momentum
        self.center = nn.Parameter(torch.zeros(dim), requires_grad=False)

    def teacher_probs(self, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
        return ((teacher_logits.float() - self.center) / temperature).softmax(dim=-1)

    def student_log_probs(self, student_logits: torch.Tensor) -> torch.Tensor:
        return (student_logits.float() / self.student_temp).log_softmax(dim=-1)

    def forward(self, student_logits: torch.Tensor, teacher_probs: torch.Tensor) -> torch.Tensor:
        """Mean over all leading positions of ``-sum_k p_teacher[k] log p_student[k]``."""
        return -(teacher_probs * self.student_log_probs(student_logits)).sum(dim=-1).mean()

    @torch.no_grad()
    def teacher_mean(self, teacher_logits: torch.Tensor) -> torch.Tensor:
        """The teacher's mean output over every leading position and every rank."""
        mean = teacher_logits.float().reshape(-1, teacher_logits.shape[-1]).mean(dim=0)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(mean)
            mean /= dist.get_world_size()
        return mean

    @torch.no_grad()
    def move_center(self, teacher_mean: torch.Tensor) -> None:
        self.center.mul_(self.center_momentum).add_(teacher_mean, alpha=1 - self.center_momentum)

    def update_center(self, teacher_logits: torch.Tensor) -> None:
        self.move_center(self.teacher_mean(teacher_logits))


# How data2vec 2.0's make_targets can normalise each teacher layer (see layer_averaged_targets).
TARGET_LAYER_NORMS = ("instance", "layer")


def check_target_layer_norm(name: str, value: str) -> None:
    """Refuse a per-layer target normalisation :func:`layer_averaged_targets` does not know."""
    if value not in TARGET_LAYER_NORMS:
        raise ValueError(f"{name} must be one of {TARGET_LAYER_NORMS}, got {value!r}")


def layer_averaged_targets(
    layer_outputs: list[torch.Tensor], per_layer: Literal["instance", "layer"] = "instance"
) -> torch.Tensor:
    """data2vec 2.0's ``make_targets``: each layer's ``[B, N, D]`` output is normalised, the
    layers are averaged, and the average is layer-normalised (over the ``D`` channels, per
    token; ``layer_norm_targets``). No affine parameters, eps 1e-5, float32; no gradient flows
    (the teacher's outputs are targets).

    ``per_layer`` is how each layer is normalised before the average:

    * ``instance`` (``instance_norm_target_layer``, EAT's setting): over the ``N`` tokens, per
      clip and channel. It removes what every token of a clip shares, such as the voice or
      the instrument of the whole clip;
    * ``layer`` (``layer_norm_target_layer``, data2vec 2.0's other option): over the ``D``
      channels, per token, which keeps it.
    """
    check_target_layer_norm("per_layer", per_layer)
    with torch.no_grad():
        if per_layer == "instance":
            normalised = [rearrange(F.instance_norm(rearrange(y.float(), "b n d -> b d n")), "b d n -> b n d")
                          for y in layer_outputs]
        else:
            normalised = [F.layer_norm(y.float(), y.shape[-1:]) for y in layer_outputs]
        average = sum(normalised) / len(normalised)
        return F.layer_norm(average, average.shape[-1:])


def scaled_squared_error(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``sum((prediction - target) ** 2) / sqrt(D)`` over the last axis ``D``, in float32:
    data2vec 2.0's ``d2v_loss`` (L2, default scale) summed over channels, one value per row."""
    error = (prediction.float() - target.float()).square().sum(dim=-1)
    return error / math.sqrt(prediction.shape[-1])
