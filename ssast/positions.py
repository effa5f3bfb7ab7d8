"""Position embeddings of the encoder's patch grid: moving a learned one to another grid
(AST's crop-or-interpolate, :func:`adapt_pos_embed`), and EAT's fixed 2-D sin-cos table
(:func:`sincos_positions`), which is indexed by a patch's place, never interpolated
(:func:`resize_positions` picks the rule by the encoder's ``positions``).

A table is ``[1, lead + n_freq * n_time, D]``: the leading tokens' rows, then the patches'
in the encoder's frequency-major order (``f_row * n_time + t_col``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from einops import rearrange

if TYPE_CHECKING:
    from ssast.encoder import EncoderConfig


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


def sincos_positions(embed_dim: int, grid: tuple[int, int]) -> torch.Tensor:
    """The fixed 2-D sin-cos table of MAE, as EAT builds it (``get_2d_sincos_pos_embed_flexible``),
    for a ``(n_freq, n_time)`` patch grid in our frequency-major token order: ``[n_freq * n_time,
    embed_dim]``. For the patch at ``(f, t)`` the first half of the channels encode ``f`` and the
    second half ``t``, each as ``[sin(i * w), cos(i * w)]`` over the frequencies
    ``w_k = 10000 ** (-k / (embed_dim / 4))``."""
    quarter = embed_dim // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float32) / quarter)

    def encode(index: torch.Tensor) -> torch.Tensor:
        angles = index.float()[:, None] * omega
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    freq, time = torch.meshgrid(torch.arange(grid[0]), torch.arange(grid[1]), indexing="ij")
    return torch.cat([encode(freq.flatten()), encode(time.flatten())], dim=1)


def fixed_positions(config: EncoderConfig) -> torch.Tensor:
    """The position buffer ``[1, lead + N, D]`` of a ``sincos`` encoder: zeros for the leading
    tokens (EAT adds positions to the patches only), the 2-D sin-cos table for the patches."""
    lead = torch.zeros(config.num_lead_tokens, config.embed_dim)
    return torch.cat([lead, sincos_positions(config.embed_dim, config.grid)])[None]


def resize_positions(pos_embed: torch.Tensor, old: EncoderConfig, new: EncoderConfig) -> torch.Tensor:
    """``pos_embed`` of an encoder of config ``old`` for one of config ``new`` (another stride
    or input length). Learned embeddings are cropped or interpolated (:func:`adapt_pos_embed`);
    a fixed sin-cos table is indexed by the patch's place on the grid, never interpolated, as
    EAT takes the first rows of its table: the patches both grids share keep their values (a
    file's table, as stored), and new ones get the table's formula."""
    if old.positions == "learned":
        return adapt_pos_embed(pos_embed, old.num_lead_tokens, old.grid, new.grid)
    if old.grid == new.grid:
        return pos_embed
    lead = old.num_lead_tokens
    stored = rearrange(pos_embed[0, lead:], "(f t) d -> f t d", f=old.grid[0])
    table = rearrange(sincos_positions(new.embed_dim, new.grid), "(f t) d -> f t d", f=new.grid[0])
    table = table.to(pos_embed)
    shared_f, shared_t = min(old.grid[0], new.grid[0]), min(old.grid[1], new.grid[1])
    table[:shared_f, :shared_t] = stored[:shared_f, :shared_t]
    return torch.cat([pos_embed[0, :lead], rearrange(table, "f t d -> (f t) d")])[None]
