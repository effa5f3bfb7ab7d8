"""Heads that sit on the encoder's tokens."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn


def standardization(dim: int) -> nn.BatchNorm1d:
    """Each of ``dim`` features standardized over the batch in training and by running
    statistics in evaluation, with no affine part: MAE's linear-probing ``BatchNorm1d``
    (``affine=False, eps=1e-6``), which makes a trained classifier read its features as a
    linear probe on standardized features does."""
    return nn.BatchNorm1d(dim, eps=1e-6, affine=False)


class ClassificationHead(nn.Module):
    """``LayerNorm(D) -> Linear(D, classes)`` on a pooled clip embedding (AST/SSAST); with
    ``standardize``, the normalized embedding is standardized over the batch
    (:func:`standardization`) before the linear layer, which :meth:`folded` turns back into
    the plain head for evaluation and export."""

    def __init__(self, embed_dim: int, num_classes: int, layer_norm_eps: float = 1e-5,
                 standardize: bool = False) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(embed_dim, eps=layer_norm_eps)
        self.standardize = standardization(embed_dim) if standardize else None
        self.linear = nn.Linear(embed_dim, num_classes)

    @property
    def num_classes(self) -> int:
        return self.linear.out_features

    def forward(self, clip_embedding: torch.Tensor) -> torch.Tensor:
        features = self.norm(clip_embedding)
        if self.standardize is not None:
            features = self.standardize(features)
        return self.linear(features)

    @torch.no_grad()
    def folded(self) -> ClassificationHead:
        """The plain head that computes in evaluation what this one does: the
        standardization's running mean and variance folded into the linear layer's weights
        and bias (``W / s`` and ``b - (W / s) m``), so that files, the Hub and transformers
        see ``LayerNorm -> Linear`` either way. A plain head returns a copy of itself."""
        plain = ClassificationHead(self.norm.normalized_shape[0], self.num_classes, self.norm.eps)
        plain.to(device=self.linear.weight.device, dtype=self.linear.weight.dtype)
        plain.norm.load_state_dict(self.norm.state_dict())
        weight, bias = self.linear.weight, self.linear.bias
        if self.standardize is not None:
            weight = weight * torch.rsqrt(self.standardize.running_var + self.standardize.eps)
            bias = bias - weight @ self.standardize.running_mean
        plain.linear.weight.copy_(weight)
        plain.linear.bias.copy_(bias)
        return plain


class LayerWeights(nn.Module):
    """A learnable weighted sum of the encoder's hidden states, as s3prl's ``Featurizer``
    (``-s hidden_states``, with which SSAST's SUPERB figures were made): softmax weights over
    the layers from zeros (the plain mean at the start), each state optionally layer-normed
    first (s3prl's ``normalize``, off in SSAST's runs)."""

    def __init__(self, num_layers: int, normalize: bool = False) -> None:
        super().__init__()
        self.weights = nn.Parameter(torch.zeros(num_layers))
        self.normalize = normalize

    @property
    def probabilities(self) -> torch.Tensor:
        """The weight of each layer, ``[L]``, summing to one."""
        return self.weights.softmax(dim=-1)

    def forward(self, hidden_states: Sequence[torch.Tensor]) -> torch.Tensor:
        """``L`` tensors ``[B, N, D]`` -> their weighted sum ``[B, N, D]``."""
        if len(hidden_states) != len(self.weights):
            raise ValueError(f"{len(hidden_states)} hidden states for {len(self.weights)} layer weights")
        stacked = torch.stack(list(hidden_states))
        if self.normalize:
            stacked = F.layer_norm(stacked, stacked.shape[-1:])
        return torch.einsum("l,lbnd->bnd", self.probabilities.to(stacked.dtype), stacked)


class UtteranceHead(nn.Module):
    """s3prl's utterance-level downstream as SSAST's SUPERB configs set it (``projector_dim:
    256``, ``UtteranceLevel`` with ``MeanPooling``): ``Linear(D, projector_dim)`` on every
    token, the mean over the valid tokens, ``Linear(projector_dim, classes)``; with
    ``standardize``, the mean is standardized over the batch (:func:`standardization`)
    before the classifier."""

    def __init__(self, embed_dim: int, num_classes: int, projector_dim: int = 256, standardize: bool = False) -> None:
        super().__init__()
        self.projector = nn.Linear(embed_dim, projector_dim)
        self.standardize = standardization(projector_dim) if standardize else None
        self.linear = nn.Linear(projector_dim, num_classes)

    @property
    def num_classes(self) -> int:
        return self.linear.out_features

    def pool(self, tokens: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        """The mean of the projected tokens ``[B, T, D]`` -> ``[B, projector_dim]``, over the
        first ``valid[b]`` tokens of each clip (all of them without ``valid``)."""
        projected = self.projector(tokens)
        if valid is None:
            return projected.mean(dim=1)
        keep = torch.arange(tokens.shape[1], device=tokens.device) < valid[:, None]
        return (projected * keep[..., None]).sum(dim=1) / keep.sum(dim=1, keepdim=True).clamp_min(1)

    def classify(self, pooled: torch.Tensor) -> torch.Tensor:
        """Logits of pooled clips (:meth:`pool`)."""
        if self.standardize is not None:
            pooled = self.standardize(pooled)
        return self.linear(pooled)

    def forward(self, tokens: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        return self.classify(self.pool(tokens, valid))


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
    :class:`NormalizedLinear` to ``cls_prototypes`` logits for the cls token and another to
    ``patch_prototypes`` logits for each patch token."""

    def __init__(
        self, embed_dim: int, cls_prototypes: int = 8192, patch_prototypes: int = 1024,
        hidden_dim: int = 2048, bottleneck_dim: int = 256,
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
        self.cls_layer = NormalizedLinear(bottleneck_dim, cls_prototypes)
        self.patch_layer = NormalizedLinear(bottleneck_dim, patch_prototypes)

    def forward(self, cls: torch.Tensor, patches: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``cls [B, D]``, ``patches [B, N, D]`` -> logits ``[B, cls_prototypes]``, ``[B, N, patch_prototypes]``."""
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


class ConvDecoder(nn.Module):
    """EAT's light CNN decoder (data2vec 2.0's ``Decoder2d``): tokens laid on the
    (frequency, time) patch grid, ``layers`` blocks of ``Conv2d(kernel, padding kernel // 2,
    groups)`` -> LayerNorm over channels (no affine) -> GELU, each block added to its input
    when their widths match, then ``Linear(width, embed_dim)`` on every token.

    On a grid with one row (frame tokens, ``1 x T``) the kernel is 1 tall, and on one column 1
    wide: a square kernel would only ever see the zero padding beyond that axis, so the
    decoder is then a 1-D convolution along time (as data2vec 2.0's ``Decoder1d``) without the
    dead weights.

    Args:
        embed_dim: width of the encoder's tokens, in and out.
        grid: patches along frequency and along time.
        width: channels of the convolutions (``None``: ``embed_dim``; EAT-Base 768).
        layers: convolution blocks (EAT: 6).
        kernel: odd kernel size (EAT: 3).
        groups: convolution groups (EAT: 16); must divide ``embed_dim`` and ``width``.
    """

    def __init__(
        self, embed_dim: int, grid: tuple[int, int], width: int | None = None, layers: int = 6, kernel: int = 3,
        groups: int = 16,
    ) -> None:
        super().__init__()
        width = width or embed_dim
        if kernel % 2 == 0:
            raise ValueError(f"kernel must be odd (the grid keeps its size), got {kernel}")
        if embed_dim % groups or width % groups:
            raise ValueError(f"groups ({groups}) must divide embed_dim ({embed_dim}) and width ({width})")
        self.grid = tuple(grid)
        size = (kernel if grid[0] > 1 else 1, kernel if grid[1] > 1 else 1)
        self.convs = nn.ModuleList(
            nn.Conv2d(embed_dim if i == 0 else width, width, size, padding=(size[0] // 2, size[1] // 2), groups=groups)
            for i in range(layers)
        )
        self.proj = nn.Linear(width, embed_dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """``tokens [B, n_freq * n_time, embed_dim]`` (frequency-major) -> the same shape."""
        x = rearrange(tokens, "b (f t) d -> b d f t", f=self.grid[0], t=self.grid[1])
        for conv in self.convs:
            y = conv(x)
            y = F.gelu(F.layer_norm(y.movedim(1, -1), y.shape[1:2]).movedim(-1, 1))
            x = y + x if y.shape[1] == x.shape[1] else y  # a residual wherever the widths allow
        return self.proj(rearrange(x, "b d f t -> b (f t) d"))
