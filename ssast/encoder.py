"""The Audio Spectrogram Transformer encoder (AST / SSAST ViT).

A log-mel ``[B, T, F]`` is seen as a one-channel image ``[B, 1, F, T]`` and cut into
``fshape x tshape`` patches with strides ``(fstride, tstride)`` by one convolution. Patch
tokens are ordered frequency-major (``index = f_row * n_time + t_col``), one or two leading
tokens (``cls``, and ``dist`` as in AST/SSAST) go in front, a learned absolute position
embedding is added, and pre-norm ViT blocks with a final LayerNorm follow.

Patch models pretrain with 16x16 patches at stride 16 and finetune at stride 10; frame
models use 128x2 patches. The patch shape is fixed by the weights; the stride and input
length may change at finetuning, and :func:`adapt_pos_embed` moves the position embedding
to the new grid. Parameter names follow timm's ViT, as the official SSAST and ASiT
checkpoints do, so those load by stripping a prefix.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any, Literal, Union

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import nn

# size -> (embed_dim, depth, num_heads); all with 4x MLPs and 64-dim heads.
SIZES: dict[str, tuple[int, int, int]] = {
    "mini": (192, 4, 3),  # not in the papers: tiny's width at a third of its depth, for CPU demos
    "tiny": (192, 12, 3),
    "small": (384, 12, 6),
    "base": (768, 12, 12),
}

Pooling = Literal["mean", "cls"]
# Which tokens an embedding is read from: the final (normed) output, the mean of every block's
# output, or one block's output (from 1).
Layers = Union[Literal["last", "all"], int]


@dataclass(frozen=True)
class EncoderConfig:
    """Everything that decides the encoder's shape. ``input_tdim`` x ``input_fdim`` is the
    log-mel size it expects, which with the patch shape and strides fixes the grid."""

    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    fshape: int = 16
    tshape: int = 16
    fstride: int = 16
    tstride: int = 16
    input_fdim: int = 128
    input_tdim: int = 1024
    num_lead_tokens: int = 2
    drop_path: float = 0.0
    layer_norm_eps: float = 1e-6
    qkv_bias: bool = True
    layer_scale: float | None = None

    def __post_init__(self) -> None:
        if self.layer_scale is not None and self.layer_scale <= 0:
            raise ValueError(f"layer_scale must be positive (or None: no gains), got {self.layer_scale}")
        if self.num_lead_tokens not in (1, 2):
            raise ValueError(f"num_lead_tokens must be 1 (cls) or 2 (cls, dist), got {self.num_lead_tokens}")
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        if self.fshape > self.input_fdim or self.tshape > self.input_tdim:
            raise ValueError(
                f"a {self.fshape}x{self.tshape} patch does not fit a {self.input_fdim}x{self.input_tdim} input"
            )

    @classmethod
    def from_size(cls, size: str, **changes: Any) -> EncoderConfig:
        """``tiny``, ``small`` or ``base`` (DESIGN.md §5), or ``mini`` (4 blocks of tiny, for
        demos on a CPU), with any field changed."""
        if size not in SIZES:
            raise ValueError(f"unknown size {size!r}; known: {', '.join(SIZES)}")
        embed_dim, depth, num_heads = SIZES[size]
        return cls(embed_dim=embed_dim, depth=depth, num_heads=num_heads, **changes)

    @property
    def grid(self) -> tuple[int, int]:
        """Patches along frequency and along time."""
        return (
            (self.input_fdim - self.fshape) // self.fstride + 1,
            (self.input_tdim - self.tshape) // self.tstride + 1,
        )

    @property
    def num_patches(self) -> int:
        n_freq, n_time = self.grid
        return n_freq * n_time

    def replace(self, **changes: Any) -> EncoderConfig:
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class DropPath(nn.Module):
    """Stochastic depth: drops a sample's whole residual branch with probability ``p``."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = x.new_empty(x.shape[0], *([1] * (x.dim() - 1))).bernoulli_(1 - self.p)
        return x * keep / (1 - self.p)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = rearrange(self.qkv(x), "b n (three h d) -> three b h n d", three=3, h=self.num_heads)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(rearrange(x, "b h n d -> b n (h d)"))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class LayerScale(nn.Module):
    """CaiT's per-channel gain on a residual branch, started at ``init`` so that each block
    begins close to the identity and the tokens keep their patch embedding."""

    def __init__(self, dim: int, init: float) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), init))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class Block(nn.Module):
    """Pre-norm transformer block."""

    def __init__(self, config: EncoderConfig, drop_path: float) -> None:
        super().__init__()
        dim = config.embed_dim
        self.norm1 = nn.LayerNorm(dim, eps=config.layer_norm_eps)
        self.attn = Attention(dim, config.num_heads, config.qkv_bias)
        self.norm2 = nn.LayerNorm(dim, eps=config.layer_norm_eps)
        self.mlp = Mlp(dim, int(dim * config.mlp_ratio))
        self.drop_path = DropPath(drop_path)
        scale = config.layer_scale
        self.ls1 = nn.Identity() if scale is None else LayerScale(dim, scale)
        self.ls2 = nn.Identity() if scale is None else LayerScale(dim, scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with_ffn(x)[0]

    def forward_with_ffn(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The block's output and its feed-forward output before the residual addition
        (data2vec 2.0's ``ffn_targets``). :meth:`forward` is this without the second output,
        so there is one code path to compile and the normal forward costs nothing extra."""
        x = x + self.drop_path(self.ls1(self.attn(self.norm1(x))))
        ffn = self.ls2(self.mlp(self.norm2(x)))
        return x + self.drop_path(ffn), ffn


class PatchEmbed(nn.Module):
    """``[B, T, F]`` log-mel -> ``[B, N, D]`` patch embeddings, frequency-major."""

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        self.proj = nn.Conv2d(
            1, config.embed_dim, kernel_size=(config.fshape, config.tshape), stride=(config.fstride, config.tstride)
        )

    def forward(self, fbank: torch.Tensor) -> torch.Tensor:
        patches = self.proj(rearrange(fbank, "b t f -> b 1 f t"))
        return rearrange(patches, "b d f t -> b (f t) d")


class ASTEncoder(nn.Module):
    """The AST ViT encoder. ``forward(fbank [B, T, F], mask [B, N] | None)`` returns every
    token after the final norm, ``[B, num_lead_tokens + N, D]``.

    With ``mask``, the embeddings of the patches marked ``True`` are replaced by the learned
    ``mask_embed`` before the position embedding is added, as in SSAST's MSPM.

    With ``visible`` (token dropping, as MAE and EAT), only the leading tokens and the listed
    patch tokens run through the blocks, their position embedding added first; see
    :meth:`keep_patches`.
    """

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        self.config = config
        dim = config.embed_dim
        self.patch_embed = PatchEmbed(config)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.dist_token = nn.Parameter(torch.zeros(1, 1, dim)) if config.num_lead_tokens == 2 else None
        self.pos_embed = nn.Parameter(torch.zeros(1, config.num_lead_tokens + config.num_patches, dim))
        self.mask_embed = nn.Parameter(torch.zeros(1, 1, dim))
        drop_rates = torch.linspace(0, config.drop_path, config.depth).tolist()  # deeper blocks drop more
        self.blocks = nn.ModuleList(Block(config, rate) for rate in drop_rates)
        self.norm = nn.LayerNorm(dim, eps=config.layer_norm_eps)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for token in (self.cls_token, self.dist_token, self.pos_embed):
            if token is not None:
                nn.init.trunc_normal_(token, std=0.02)
        nn.init.xavier_normal_(self.mask_embed)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    @property
    def grid(self) -> tuple[int, int]:
        """Patches along frequency and along time."""
        return self.config.grid

    @property
    def num_lead_tokens(self) -> int:
        return self.config.num_lead_tokens

    @property
    def embed_dim(self) -> int:
        return self.config.embed_dim

    def lead_tokens(self, batch_size: int) -> torch.Tensor:
        tokens = self.cls_token if self.dist_token is None else torch.cat([self.cls_token, self.dist_token], dim=1)
        return tokens.expand(batch_size, -1, -1)

    def embed(self, fbank: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Leading and patch tokens with the position embedding added, before the blocks."""
        expected = (self.config.input_tdim, self.config.input_fdim)
        if tuple(fbank.shape[1:]) != expected:
            raise ValueError(
                f"expected log-mel of shape [B, {expected[0]}, {expected[1]}], got {list(fbank.shape)}; "
                "pad or cut it with ssast.features.fit_frames, or load the encoder with another input_tdim"
            )
        patches = self.patch_embed(fbank)
        if mask is not None:
            patches = torch.where(rearrange(mask, "b n -> b n 1"), self.mask_embed.to(patches.dtype), patches)
        tokens = torch.cat([self.lead_tokens(len(fbank)).to(patches.dtype), patches], dim=1)
        return tokens + self.pos_embed

    def forward(
        self, fbank: torch.Tensor, mask: torch.Tensor | None = None, visible: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``fbank [B, T, F]`` -> tokens after the final norm: ``[B, lead + N, D]``, or with
        ``visible [B * c, K]`` only the kept ones, ``[B * c, lead + K, D]``."""
        x = self.embed(fbank, mask)
        if visible is not None:
            x = self.keep_patches(x, visible)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def keep_patches(self, tokens: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
        """The leading tokens and the patch tokens at ``visible`` of embedded ``tokens
        [B, lead + N, D]``: ``[B * c, lead + K, D]``.

        ``visible [B * c, K]`` holds patch indices in ``0 .. N-1`` (frequency-major). It may have
        ``c`` rows per clip (EAT's masked clones): rows ``i * c .. i * c + c - 1`` belong to clip
        ``i``, so the patches are embedded once per clip however many clones read them.
        """
        batch, lead = tokens.shape[0], self.num_lead_tokens
        if visible.dim() != 2 or visible.shape[0] % batch:
            raise ValueError(f"visible must be [B * clones, K] for a batch of {batch}, got {list(visible.shape)}")
        clones = visible.shape[0] // batch
        clip = torch.arange(batch, device=visible.device).repeat_interleave(clones)
        patches = tokens[:, lead:][clip[:, None], visible]
        return torch.cat([repeat(tokens[:, :lead], "b l d -> (b c) l d", c=clones), patches], dim=1)

    def hidden_states(self, fbank: torch.Tensor, depth: int | None = None) -> list[torch.Tensor]:
        """Each block's output, ``[B, lead + N, D]`` per block, first block first, without the
        final norm: what SSAST's SUPERB upstream hands s3prl as ``hidden_states``
        (``src/finetune/superb/upstream/ast/ast_models.py``). ``depth``: only the first blocks."""
        x = self.embed(fbank)
        states = []
        for block in self.blocks[:depth]:
            x = block(x)
            states.append(x)
        return states

    def layer_tokens(self, fbank: torch.Tensor, layers: Layers = "last") -> torch.Tensor:
        """Tokens ``[B, lead + N, D]`` from the chosen layers: ``last``, the final output (after
        the norm, as :meth:`forward`); ``all``, the mean of every block's output (a weighted sum
        of layers with uniform weights); ``k``, block ``k``'s output (1 is the first)."""
        if layers == "last":
            return self.forward(fbank)
        if layers == "all":
            return torch.stack(self.hidden_states(fbank)).mean(dim=0)
        if not isinstance(layers, int) or not 1 <= layers <= self.config.depth:
            raise ValueError(f"layers must be 'last', 'all' or a block from 1 to {self.config.depth}, got {layers!r}")
        return self.hidden_states(fbank, depth=layers)[-1]

    def block_ffn_outputs(self, fbank: torch.Tensor) -> list[torch.Tensor]:
        """Each block's feed-forward output before its residual addition, ``[B, lead + N, D]``
        per block, first block first: the features data2vec 2.0 and EAT regress to
        (``ffn_targets``). The final norm is not applied (nothing here passes through it)."""
        x = self.embed(fbank)
        outputs = []
        for block in self.blocks:
            x, ffn = block.forward_with_ffn(x)
            outputs.append(ffn)
        return outputs

    def patch_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """The patch part of ``forward``'s output, ``[B, N, D]``."""
        return tokens[:, self.num_lead_tokens :]

    def pool(self, tokens: torch.Tensor, pooling: Pooling = "mean") -> torch.Tensor:
        """A clip embedding from ``forward``'s output: the mean of the patch tokens
        (SSAST's default), or the mean of the leading tokens (``cls``; AST averages
        ``cls`` and ``dist``)."""
        if pooling == "mean":
            return self.patch_tokens(tokens).mean(dim=1)
        if pooling == "cls":
            return tokens[:, : self.num_lead_tokens].mean(dim=1)
        raise ValueError(f"pooling must be 'mean' or 'cls', got {pooling!r}")


def without_layer_scale(encoder: ASTEncoder) -> ASTEncoder:
    """A copy of ``encoder`` with its LayerScale gains multiplied into the layers before them
    (``attn.proj``, ``mlp.fc2``): the same function as a plain AST encoder, which is what
    AST's other homes (transformers, the official code) can hold. Returns ``encoder`` itself
    when it has no gains."""
    if encoder.config.layer_scale is None:
        return encoder
    plain = ASTEncoder(encoder.config.replace(layer_scale=None)).to(encoder.pos_embed.device)
    state = {name: tensor for name, tensor in encoder.state_dict().items() if ".ls1." not in name and ".ls2." not in name}
    with torch.no_grad():
        for index, block in enumerate(encoder.blocks):
            for branch, gain in (("attn.proj", block.ls1.gamma), ("mlp.fc2", block.ls2.gamma)):
                for kind in ("weight", "bias"):
                    name = f"blocks.{index}.{branch}.{kind}"
                    state[name] = state[name] * (gain[:, None] if kind == "weight" else gain)
    plain.load_state_dict(state)
    return plain


def _fit_axis(grid: torch.Tensor, size: int, dim: int) -> torch.Tensor:
    """Center-crop or linearly stretch ``grid [1, D, F, T]`` along ``dim`` to ``size``."""
    old = grid.shape[dim]
    if size < old:
        return grid.narrow(dim, old // 2 - size // 2, size)
    if size > old:
        target = list(grid.shape[-2:])
        target[dim] = size
        return F.interpolate(grid, size=tuple(target), mode="bilinear", align_corners=False)
    return grid


def adapt_pos_embed(
    pos_embed: torch.Tensor, num_lead_tokens: int, old_grid: tuple[int, int], new_grid: tuple[int, int]
) -> torch.Tensor:
    """Move a position embedding ``[1, lead + F*T, D]`` from one patch grid to another.

    Each axis is handled on its own: center-cropped when the new grid is smaller, bilinearly
    interpolated when larger (time first, then frequency, as SSAST does; the two commute).
    The leading tokens' embeddings are kept.
    """
    if tuple(old_grid) == tuple(new_grid):
        return pos_embed
    lead, patches = pos_embed[:, :num_lead_tokens], pos_embed[:, num_lead_tokens:]
    if patches.shape[1] != old_grid[0] * old_grid[1]:
        raise ValueError(f"{patches.shape[1]} patch embeddings do not form a {old_grid[0]}x{old_grid[1]} grid")
    grid = rearrange(patches, "1 (f t) d -> 1 d f t", f=old_grid[0])
    grid = _fit_axis(grid, new_grid[1], dim=-1)
    grid = _fit_axis(grid, new_grid[0], dim=-2)
    return torch.cat([lead, rearrange(grid, "1 d f t -> 1 (f t) d")], dim=1)


def compile_blocks(module: nn.Module, **options: Any) -> int:
    """Compile, in place, every transformer :class:`Block` inside ``module`` (every encoder it
    holds: a student, an EMA teacher) with ``torch.compile(**options)``; returns how many.

    The blocks are where the time goes, their shapes stay fixed within a run, and compiling
    them rather than a whole training step keeps masking, random draws and losses eager
    (free to sync with the host). Parameters and ``state_dict`` keys are untouched, so
    checkpoints and EMA updates are the same as eager.
    """
    blocks = [block for block in module.modules() if isinstance(block, Block)]
    for block in blocks:
        # forward() calls forward_with_ffn(), so one compiled function serves both paths.
        block.forward_with_ffn = torch.compile(block.forward_with_ffn, **options)
    return len(blocks)
