"""The optimizer of every run, pretraining and finetuning alike: its parameter groups (which
parameters take weight decay, which learn at a scaled rate) and Adam or AdamW over them.

Two rules, each written once and chosen by a knob, never by the optimizer's name:

* weight decay on every parameter (SSAST's Adam: ``decay_norms_and_biases``), or sparing
  norms, biases and other 1-D parameters (DINO, ASiT, EAT: :func:`takes_weight_decay`);
* layer-wise rates (``layer_decay``, EAT's finetuning): block ``i`` of a depth-``d`` encoder
  learns at ``layer_decay ** (d - i)`` of the rate and everything else at the rate
  (:func:`layer_id`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any, Literal

import torch
from torch import nn

OptimizerName = Literal["adam", "adamw"]
# A parameter's name -> the name of its rate group and its rate's scale.
RateGroup = Callable[[str], tuple[str, float]]


def takes_weight_decay(name: str, parameter: nn.Parameter) -> bool:
    """Whether ``parameter`` decays where norms and biases are spared: not 1-D tensors (norm
    weights, biases, gains) nor anything named ``*.bias``."""
    return parameter.ndim > 1 and not name.endswith(".bias")


def layer_id(name: str, depth: int) -> int:
    """i + 1 for block i of the module's ``encoder``, depth + 1 for everything else: the layers
    of EAT's finetuning (data2vec 2.0's ``MaeImageClassificationModel``), which gives an
    ``lr_scale`` to the blocks alone, so that the patch embedding, the cls token, the norm over
    the embeddings (EAT's ``pre_norm``), a final norm and a head learn at the full rate. (BEiT
    and MAE put the embeddings below the first block instead.)"""
    if match := re.match(r"encoder\.blocks\.(\d+)\.", name):
        return int(match.group(1)) + 1
    return depth + 1


def layer_decay_groups(
    depth: int, layer_decay: float, head: Iterable[str] = (), head_lr_scale: float = 1.0
) -> RateGroup:
    """The rate groups of layer-wise decay over an encoder of ``depth`` blocks (see
    :func:`layer_id`): ``layer{n}`` at ``layer_decay ** (depth + 1 - n)``, and the parameters
    whose names start with a prefix of ``head``, ``head`` at ``head_lr_scale``."""
    head = tuple(head)

    def group(name: str) -> tuple[str, float]:
        if head and name.startswith(head):
            return "head", head_lr_scale
        layer = layer_id(name, depth)
        return f"layer{layer}", layer_decay ** (depth + 1 - layer)

    return group


def parameter_groups(
    module: nn.Module,
    lr: float,
    weight_decay: float,
    decay_norms_and_biases: bool = True,
    rate_group: RateGroup | None = None,
) -> list[dict[str, Any]]:
    """The trainable parameters of ``module`` in optimizer groups, each ``{"params", "lr",
    "weight_decay"}``, by their rate group (``rate_group``; one group at ``lr`` when ``None``)
    and by whether they take weight decay (all, or see :func:`takes_weight_decay`). Groups with
    a rate group are named for it (``layer3``, ``layer3_no_decay``): the learning-rate monitor
    logs each by name. Without one, the groups that decay come first."""
    groups: dict[tuple[str, bool], dict[str, Any]] = {}
    for name, parameter in module.named_parameters():
        if not parameter.requires_grad:
            continue
        decays = decay_norms_and_biases or takes_weight_decay(name, parameter)
        rate, scale = rate_group(name) if rate_group is not None else ("", 1.0)
        group = groups.setdefault((rate, decays), {"params": [], "lr": lr * scale,
                                                   "weight_decay": weight_decay if decays else 0.0})
        if rate:
            group["name"] = rate if decays else f"{rate}_no_decay"
        group["params"].append(parameter)
    ordered = list(groups.values())
    if rate_group is None:  # a weight-decay schedule moves the first group's
        ordered.sort(key=lambda group: group["weight_decay"] == 0.0)
    return ordered


def build_optimizer(name: OptimizerName, groups: list[dict[str, Any]], lr: float,
                    betas: tuple[float, float]) -> torch.optim.Optimizer:
    """Adam (weight decay added to the gradient, as SSAST's and s3prl's ``torch.optim.Adam``)
    or AdamW (decoupled, as fairseq's and DINO's) over ``groups``."""
    if name not in ("adam", "adamw"):
        raise ValueError(f"optimizer must be 'adam' or 'adamw', got {name!r}")
    optimizer_class = torch.optim.Adam if name == "adam" else torch.optim.AdamW
    return optimizer_class(groups, lr=lr, betas=tuple(betas))
