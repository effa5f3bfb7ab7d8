"""The Audio Spectrogram Transformer encoder (AST / SSAST ViT).

A log-mel ``[B, T, F]`` is seen as a one-channel image ``[B, 1, F, T]`` and cut into
``fshape x tshape`` patches with strides ``(fstride, tstride)`` by one convolution. Patch
tokens are ordered frequency-major (``index = f_row * n_time + t_col``), one or two leading
tokens (``cls``, and ``dist`` as in AST/SSAST) go in front, a learned absolute position
embedding is added, and pre-norm ViT blocks with a final LayerNorm follow.

The same class holds EAT's layout (data2vec 2.0's image encoder, :data:`LAYOUTS` ``eat``) as a
configuration: post-norm blocks (``x = norm1(x + attn(x)); x = norm2(x + mlp(x))``), a
LayerNorm over the leading token and the patches before the first block, no final norm, and a
fixed 2-D sin-cos position table (a buffer, never trained) instead of a learned one, with no
position on the cls token. Loading EAT's released weights maps its time-major tokens onto this
frequency-major order (:mod:`ssast.checkpoints.eat`).

Patch models pretrain with 16x16 patches at stride 16 and finetune at stride 10; frame
models use 128x2 patches. The patch shape is fixed by the weights; the stride and input
length may change at finetuning, and :func:`ssast.positions.resize_positions` moves the
position embedding to the new grid. Parameter names follow timm's ViT, as the official SSAST and ASiT
checkpoints do, so those load by stripping a prefix.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any, Literal, Union

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import nn

from ssast.positions import fixed_positions

# size -> (embed_dim, depth, num_heads); all with 4x MLPs and 64-dim heads.
SIZES: dict[str, tuple[int, int, int]] = {
    "mini": (192, 4, 3),  # not in the papers: tiny's width at a third of its depth, for CPU demos
    "tiny": (192, 12, 3),
    "small": (384, 12, 6),
    "base": (768, 12, 12),
    "large": (1024, 24, 16),  # EAT-Large
}

Pooling = Literal["mean", "cls"]
BlockNorm = Literal["pre", "post"]
Positions = Literal["learned", "sincos"]
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
    block_norm: BlockNorm = "pre"  # pre-norm blocks (ViT, AST) or post-norm (BERT, data2vec 2.0, EAT)
    embed_norm: bool = False  # a LayerNorm over the embedded tokens before the first block (EAT)
    final_norm: bool = True  # a LayerNorm after the last block (pre-norm ViTs have one; EAT has none)
    positions: Positions = "learned"  # a learned position embedding, or EAT's fixed 2-D sin-cos table

    def __post_init__(self) -> None:
        if self.block_norm not in ("pre", "post"):
            raise ValueError(f"block_norm must be 'pre' or 'post', got {self.block_norm!r}")
        if self.positions not in ("learned", "sincos"):
            raise ValueError(f"positions must be 'learned' or 'sincos', got {self.positions!r}")
        if self.positions == "sincos" and self.embed_dim % 4:
            raise ValueError(f"a 2-D sin-cos table needs embed_dim divisible by 4, got {self.embed_dim}")
        if self.num_lead_tokens not in (1, 2):
            raise ValueError(f"num_lead_tokens must be 1 (cls) or 2 (cls, dist), got {self.num_lead_tokens}")
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        if self.fshape > self.input_fdim or self.tshape > self.input_tdim:
            raise ValueError(
                f"a {self.fshape}x{self.tshape} patch does not fit a {self.input_fdim}x{self.input_tdim} input"
            )

    @classmethod
    def from_size(cls, size: str, layout: str = "ast", **changes: Any) -> EncoderConfig:
        """``tiny``, ``small``, ``base`` (DESIGN.md §5) or ``large``, or ``mini`` (4 blocks of
        tiny, for demos on a CPU), in one of the :data:`LAYOUTS`, with any field changed."""
        if size not in SIZES:
            raise ValueError(f"unknown size {size!r}; known: {', '.join(SIZES)}")
        if layout not in LAYOUTS:
            raise ValueError(f"unknown layout {layout!r}; known: {', '.join(LAYOUTS)}")
        embed_dim, depth, num_heads = SIZES[size]
        return cls(embed_dim=embed_dim, depth=depth, num_heads=num_heads, **{**LAYOUTS[layout], **changes})

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


# The encoder layouts of the weights we read, as the EncoderConfig fields that set them.
LAYOUTS: dict[str, dict[str, Any]] = {
    # AST, SSAST, ASiT (timm's ViT): pre-norm blocks, a final norm, learned positions, cls and dist.
    "ast": {"block_norm": "pre", "embed_norm": False, "final_norm": True, "positions": "learned",
            "num_lead_tokens": 2},
    # EAT (data2vec 2.0's image encoder): post-norm blocks after a norm over the embedded tokens, no final
    # norm, a fixed sin-cos table, and one leading (cls) token that takes no position.
    "eat": {"block_norm": "post", "embed_norm": True, "final_norm": False, "positions": "sincos",
            "num_lead_tokens": 1},
}


def layout_of(config: EncoderConfig) -> str | None:
    """The name of the :data:`LAYOUTS` entry ``config`` is built in (its leading tokens aside,
    which either layout may change), or ``None``."""
    return next((name for name, fields in LAYOUTS.items()
                 if all(getattr(config, field) == value for field, value in fields.items()
                        if field != "num_lead_tokens")), None)


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


class Block(nn.Module):
    """A transformer block, pre-norm (``x + attn(norm1(x))``, ViT's) or post-norm
    (``norm1(x + attn(x))``, data2vec 2.0's and EAT's) as ``config.block_norm`` says."""

    def __init__(self, config: EncoderConfig, drop_path: float) -> None:
        super().__init__()
        dim = config.embed_dim
        self.post_norm = config.block_norm == "post"
        self.norm1 = nn.LayerNorm(dim, eps=config.layer_norm_eps)
        self.attn = Attention(dim, config.num_heads, config.qkv_bias)
        self.norm2 = nn.LayerNorm(dim, eps=config.layer_norm_eps)
        self.mlp = Mlp(dim, int(dim * config.mlp_ratio))
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with_ffn(x)[0]

    def forward_with_ffn(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The block's output and its feed-forward output before the residual addition
        (data2vec 2.0's ``ffn_targets``). :meth:`forward` is this without the second output,
        so there is one code path to compile and the normal forward costs nothing extra."""
        if self.post_norm:
            x = self.norm1(x + self.drop_path(self.attn(x)))
            ffn = self.mlp(x)
            return self.norm2(x + self.drop_path(ffn)), ffn
        x = x + self.drop_path(self.attn(self.norm1(x)))
        ffn = self.mlp(self.norm2(x))
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
    token after the last block (and the final norm, where the layout has one),
    ``[B, num_lead_tokens + N, D]``.

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
        if config.positions == "learned":
            self.pos_embed = nn.Parameter(torch.zeros(1, config.num_lead_tokens + config.num_patches, dim))
        else:  # a buffer: saved with the weights (a file's table is kept as stored), never trained
            self.register_buffer("pos_embed", fixed_positions(config))
        self.mask_embed = nn.Parameter(torch.zeros(1, 1, dim))
        self.embed_norm = nn.LayerNorm(dim, eps=config.layer_norm_eps) if config.embed_norm else nn.Identity()
        drop_rates = torch.linspace(0, config.drop_path, config.depth).tolist()  # deeper blocks drop more
        self.blocks = nn.ModuleList(Block(config, rate) for rate in drop_rates)
        self.norm = nn.LayerNorm(dim, eps=config.layer_norm_eps) if config.final_norm else nn.Identity()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for token in (self.cls_token, self.dist_token, self.pos_embed):
            if isinstance(token, nn.Parameter):
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
        """Leading and patch tokens with the position embedding added (and the embedding norm,
        where the layout has one), as the first block reads them. The norm is per token, so
        :meth:`keep_patches` may drop tokens after it, as EAT drops them before it."""
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
        return self.embed_norm(tokens + self.pos_embed)

    def forward(
        self, fbank: torch.Tensor, mask: torch.Tensor | None = None, visible: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``fbank [B, T, F]`` -> tokens after the last block and the final norm (if any):
        ``[B, lead + N, D]``, or with ``visible [B * c, K]`` only the kept ones,
        ``[B * c, lead + K, D]``."""
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
        """Each block's output, ``[B, lead + N, D]`` per block, first block first, without a
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
        the final norm, if any, as :meth:`forward`); ``all``, the mean of every block's output (a weighted sum
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
