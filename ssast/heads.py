"""Heads that sit on the encoder's tokens."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
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


class NormalizedLinear(nn.Module):
    """A bias-free linear layer whose weight rows are scaled to unit norm: DINO's
    ``weight_norm`` last layer with its norm fixed to 1."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(nn.Linear(in_features, out_features, bias=False).weight.detach())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, F.normalize(self.weight, dim=1))


class DistillationHead(nn.Module):
    """ASiT's projection head, shared by the clip (cls) and patch outputs:
    ``MLP D -> hidden -> hidden -> bottleneck`` (GELU), L2-normalize, then one
    :class:`NormalizedLinear` to ``cls_dim`` logits for the cls token and another to
    ``patch_dim`` logits for each patch token."""

    def __init__(
        self, embed_dim: int, cls_dim: int = 8192, patch_dim: int = 1024, hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
    ) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(embed_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, hidden_dim), nn.GELU(),
            nn.Linear(hidden_dim, bottleneck_dim),
        )
        for layer in self.mlp:
            if isinstance(layer, nn.Linear):
                nn.init.trunc_normal_(layer.weight, std=0.02)
                nn.init.zeros_(layer.bias)
        self.cls_layer = NormalizedLinear(bottleneck_dim, cls_dim)
        self.patch_layer = NormalizedLinear(bottleneck_dim, patch_dim)

    def forward(self, cls: torch.Tensor, patches: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``cls [B, D]``, ``patches [B, N, D]`` -> logits ``[B, cls_dim]``, ``[B, N, patch_dim]``."""
        cls, patches = (F.normalize(self.mlp(x), dim=-1) for x in (cls, patches))
        return self.cls_layer(cls), self.patch_layer(patches)


class SpectrogramReconstructionHead(nn.Module):
    """ASiT's reconstruction head: ``MLP D -> D -> D -> channels`` (GELU) on each patch
    token, then a transposed convolution with the patch as kernel and stride paints the
    tokens back into a log-mel ``[B, T, F]``."""

    def __init__(self, embed_dim: int, fshape: int = 16, tshape: int = 16, channels: int = 128) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(embed_dim, embed_dim), nn.GELU(), nn.Linear(embed_dim, embed_dim), nn.GELU(),
            nn.Linear(embed_dim, channels),
        )
        self.paint = nn.ConvTranspose2d(channels, 1, kernel_size=(fshape, tshape), stride=(fshape, tshape))

    def forward(self, patches: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """``patches [B, n_freq * n_time, D]`` (frequency-major) -> ``[B, T, F]``."""
        image = rearrange(self.mlp(patches), "b (f t) c -> b c f t", f=grid[0], t=grid[1])
        return rearrange(self.paint(image), "b 1 f t -> b t f")
