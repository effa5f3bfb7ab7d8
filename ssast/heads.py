"""Heads that sit on the encoder's tokens."""

from __future__ import annotations

import torch
from torch import nn


class ClassificationHead(nn.Module):
    """``LayerNorm(D) -> Linear(D, classes)`` on a pooled clip embedding (AST/SSAST)."""

    def __init__(self, embed_dim: int, num_classes: int, layer_norm_eps: float = 1e-5) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(embed_dim, eps=layer_norm_eps)
        self.linear = nn.Linear(embed_dim, num_classes)

    @property
    def num_classes(self) -> int:
        return self.linear.out_features

    def forward(self, clip_embedding: torch.Tensor) -> torch.Tensor:
        return self.linear(self.norm(clip_embedding))


class PatchPredictionHead(nn.Sequential):
    """``Linear(D, D) -> ReLU -> Linear(D, patch_dim)``: SSAST's discriminative and generative
    heads (``cpredlayer`` / ``gpredlayer``; the same parameter names, so the official
    pretrained heads load into it)."""

    def __init__(self, embed_dim: int, patch_dim: int) -> None:
        super().__init__(nn.Linear(embed_dim, embed_dim), nn.ReLU(), nn.Linear(embed_dim, patch_dim))
