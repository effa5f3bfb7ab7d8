"""Masks for masked spectrogram modeling: which patches SSAST's MSPM masks, the GMML
corruption ASiT's student sees (:func:`gmml_corrupt`), and the inverse block masks of
EAT / data2vec 2.0 (:func:`inverse_block_mask`).

Every clip gets exactly ``num_masked`` masked patches, as a boolean ``[B, n_freq * n_time]``
tensor in the encoder's frequency-major patch order (``index = f_row * n_time + t_col``).
Frame models mask positions uniformly at random (:func:`random_mask`); patch models mask
square clusters of neighbouring patches (:func:`cluster_mask`).

:func:`cluster_mask` follows the SSAST paper's description: one cluster size per clip,
blocks clipped at the edges of the (frequency, time) grid, and exactly N patches kept,
where only the last block is cut. The official SSAST code differs in three ways: it draws
a new cluster size for every block; it builds a block as ``start + 64 * i + j``, so a block
near the end of a frequency row continues at the start of the next row (and the stride 64
is the time width of its pretraining grid only); and it keeps ``list(set(ids))[:N]``, whose
order in CPython follows the integer values, which drops high-index patches first.

Both functions are vectorised over the batch, create the mask on ``device``, and take all
their randomness from ``generator`` (which must live on that device) when one is given.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

# Block index of a position that no block covers (yet).
_UNCOVERED = torch.iinfo(torch.int64).max


def random_mask(
    batch_size: int,
    num_patches: int,
    num_masked: int,
    *,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """``num_masked`` positions uniformly at random per clip (frame models): ``[B, P]`` bool."""
    _check_counts(batch_size, num_patches, num_masked)
    keys = torch.rand(batch_size, num_patches, device=device, generator=generator)
    chosen = keys.topk(num_masked, dim=1).indices
    mask = torch.zeros(batch_size, num_patches, dtype=torch.bool, device=device)
    return mask.scatter_(1, chosen, True)


def cluster_mask(
    batch_size: int,
    grid: tuple[int, int],
    num_masked: int,
    *,
    cluster_sizes: Sequence[int] = (3, 4, 5),
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Clusters of patches (patch models): ``[B, n_freq * n_time]`` bool.

    Each clip draws a cluster size ``C`` from ``cluster_sizes`` (uniformly over the entries),
    then repeatedly a start patch uniformly over the grid, and masks the ``C x C`` block
    below/right of the start, clipped at the grid's edges, until at least ``num_masked``
    distinct patches are covered. All blocks but the last are kept whole; the last one
    contributes a random subset of the patches it newly covered, so exactly ``num_masked``
    patches are masked.
    """
    n_freq, n_time = _check_grid(grid)
    num_patches = n_freq * n_time
    _check_counts(batch_size, num_patches, num_masked)
    sizes = tuple(cluster_sizes)
    if not sizes or any(isinstance(c, bool) or not isinstance(c, int) or c < 1 for c in sizes):
        raise ValueError(f"cluster_sizes must be a non-empty sequence of positive ints, got {cluster_sizes!r}")

    pick = torch.randint(len(sizes), (batch_size,), device=device, generator=generator)
    size = torch.tensor(sizes, device=device)[pick]

    # The whole process depends on blocks only through first[b, p], the index of the first
    # block covering patch p. That is a min over the starts whose block covers p of the
    # index at which each start was first drawn, so only [B, P] state is needed however
    # many starts are drawn.
    num_draws = _initial_draws(grid, num_masked, min(sizes))
    first_draw = torch.full((batch_size, num_patches), _UNCOVERED, dtype=torch.int64, device=device)
    _draw_starts(first_draw, num_draws, 0, generator)
    first = _first_cover(first_draw, size, grid, max(sizes))
    drawn = num_draws
    while True:
        # Rare (and certain only when nearly every patch must be masked): some clips are
        # still short of num_masked, so extend just their sequence of starts.
        short = ((first != _UNCOVERED).sum(1) < num_masked).nonzero().squeeze(1)
        if short.numel() == 0:  # one host sync per round
            break
        num_draws *= 2
        rows = first_draw[short]
        _draw_starts(rows, num_draws, drawn, generator)
        first_draw[short] = rows
        first[short] = _first_cover(rows, size[short], grid, max(sizes))
        drawn += num_draws

    # Coverage after blocks 0..k is #{p : first[p] <= k}, so the block that brings it to
    # num_masked is the num_masked-th smallest first index.
    last_block = first.kthvalue(num_masked, dim=1, keepdim=True).values
    whole = first < last_block
    newly = first == last_block
    missing = num_masked - whole.sum(1, keepdim=True)
    keys = torch.rand(batch_size, num_patches, device=device, generator=generator).masked_fill_(~newly, 2.0)
    return whole | (newly & (_ranks(keys) < missing))


def _check_counts(batch_size: int, num_patches: int, num_masked: int) -> None:
    if batch_size < 0:
        raise ValueError(f"batch_size must be >= 0, got {batch_size}")
    if num_patches < 1:
        raise ValueError(f"num_patches must be positive, got {num_patches}")
    if not 1 <= num_masked <= num_patches:
        raise ValueError(f"num_masked must be between 1 and {num_patches} (the number of patches), got {num_masked}")


def _check_grid(grid: tuple[int, int]) -> tuple[int, int]:
    if len(grid) != 2 or any(n < 1 for n in grid):
        raise ValueError(f"grid must be two positive ints (n_freq, n_time), got {grid!r}")
    return int(grid[0]), int(grid[1])


def _initial_draws(grid: tuple[int, int], num_masked: int, size: int) -> int:
    """How many starts to draw at once so that coverage of ``num_masked`` is very likely.

    With starts uniform over the grid, a patch stays uncovered after ``k`` blocks with
    probability about ``(1 - a / P) ** k``, ``a`` being a block's mean edge-clipped area; the
    estimate is taken twice over, plus a few, for the spread and the edge patches.
    """
    n_freq, n_time = grid
    num_patches = n_freq * n_time
    height = sum(min(size, n_freq - r) for r in range(n_freq)) / n_freq
    width = sum(min(size, n_time - t) for t in range(n_time)) / n_time
    miss_per_block = 1.0 - height * width / num_patches
    if miss_per_block <= 0.0:
        return 1
    # At num_masked == P the exact target needs every patch; aim at all but half a patch.
    target = min(num_masked / num_patches, 1.0 - 0.5 / num_patches)
    return math.ceil(2.0 * math.log(1.0 - target) / math.log(miss_per_block)) + 8


def _draw_starts(first_draw: torch.Tensor, num_draws: int, offset: int, generator: torch.Generator | None) -> None:
    """Draw ``num_draws`` starts per row, numbered from ``offset``, and keep in ``first_draw``
    (in place) the number of each start's first draw."""
    rows, num_patches = first_draw.shape
    starts = torch.randint(num_patches, (rows, num_draws), device=first_draw.device, generator=generator)
    order = torch.arange(offset, offset + num_draws, device=first_draw.device).expand(rows, -1)
    first_draw.scatter_reduce_(1, starts, order, reduce="amin")


def _first_cover(first_draw: torch.Tensor, size: torch.Tensor, grid: tuple[int, int], max_size: int) -> torch.Tensor:
    """``first[b, f, t] = min first_draw[b, r, c]`` over ``f - C_b < r <= f``, ``t - C_b < c <= t``
    (the starts whose edge-clipped block covers ``(f, t)``), flattened to ``[B, P]``."""
    grid_draws = first_draw.view(-1, *grid)
    size = size.view(-1, 1, 1)
    # Separable min over the window, one shift per offset below the largest cluster size;
    # shifting in _UNCOVERED from the low edge means a block never starts off the grid.
    for dim in (1, 2):
        length = grid_draws.shape[dim]
        result = grid_draws
        for shift in range(1, min(max_size, length)):
            pad = grid_draws.new_full((*grid_draws.shape[:dim], shift, *grid_draws.shape[dim + 1 :]), _UNCOVERED)
            shifted = torch.cat([pad, grid_draws.narrow(dim, 0, length - shift)], dim=dim)
            result = torch.where(shift < size, torch.minimum(result, shifted), result)
        grid_draws = result
    return grid_draws.reshape(first_draw.shape)


def _ranks(keys: torch.Tensor) -> torch.Tensor:
    """Rank of each entry within its row (0 = smallest); exact even with tied keys."""
    order = keys.argsort(dim=1)
    positions = torch.arange(keys.shape[1], device=keys.device).expand_as(order)
    return torch.empty_like(order).scatter_(1, order, positions)


GmmlFill = Literal["zeros", "noise", "time", "freq"]


@dataclass(frozen=True)
class GmmlOptions:
    """How :func:`gmml_corrupt` corrupts a log-mel (ASiT's defaults).

    Args:
        coverage: each clip covers a fraction of its bins drawn from ``U[coverage]``.
        max_block: the largest block, as a fraction of the bins and of the frames.
        align: block corners and sizes on multiples of this many bins (16: the patch grid).
        fill: covered bins become ``zeros``, Gaussian ``noise`` (``noise_mean``,
            ``noise_std``: a normalized log-mel's by default), or 0 with every block
            stretched to full height (``time`` stripes) or full width (``freq`` stripes).
        noise_mean: mean of the ``noise`` fill.
        noise_std: standard deviation of the ``noise`` fill.
        replace_probability: chance that a clip is instead corrupted by pasting, at the same
            positions, blocks of the next clip of the batch.
        replace_coverage: the area pasted.
    """

    coverage: tuple[float, float] = (0.5, 0.7)
    max_block: float = 0.3
    align: int = 1
    fill: GmmlFill = "zeros"
    noise_mean: float = 0.0
    noise_std: float = 0.5
    replace_probability: float = 0.5
    replace_coverage: float = 0.3

    def __post_init__(self) -> None:
        low, high = self.coverage
        if not 0.0 < low <= high <= 1.0:
            raise ValueError(f"coverage must be (low, high) with 0 < low <= high <= 1, got {self.coverage!r}")
        if not 0.0 < self.max_block <= 1.0 or self.align < 1:
            raise ValueError(f"max_block must be in (0, 1] and align >= 1, got {self.max_block!r} and {self.align!r}")
        if self.fill not in ("zeros", "noise", "time", "freq"):
            raise ValueError(f"fill must be zeros, noise, time or freq, got {self.fill!r}")


def gmml_corrupt(
    fbank: torch.Tensor, options: GmmlOptions = GmmlOptions(), generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """ASiT's group-masked-model-learning corruption of log-mels ``[B, T, F]`` (see
    :class:`GmmlOptions`).

    Each clip draws a coverage and gets random rectangles, each at most ``max_block`` of the
    frequency bins and of the frames, until that fraction of its bins is covered; or, with
    ``replace_probability``, blocks pasted from the next clip of the batch.

    Returns the corrupted batch and the boolean ``[B, T, F]`` mask of the corrupted bins.
    Loops over blocks, never over clips: a clip that has reached its coverage takes no
    more blocks, so each overshoots its target by less than one block.
    """
    if fbank.dim() != 3:
        raise ValueError(f"expected log-mels [B, T, F], got shape {list(fbank.shape)}")
    low, high = options.coverage
    align, fill = options.align, options.fill
    batch, frames, bins = fbank.shape
    device = fbank.device

    def uniform(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, device=device, generator=generator)

    replaced = uniform(batch) < options.replace_probability
    if batch == 1:  # nothing to paste from
        replaced = torch.zeros_like(replaced)
    target = torch.where(replaced, options.replace_coverage, low + (high - low) * uniform(batch))
    # Blocks live on a grid of align x align cells; the cells at the far edges may be partial.
    cells_t, cells_f = -(-frames // align), -(-bins // align)
    t_index = torch.arange(cells_t, device=device)
    f_index = torch.arange(cells_f, device=device)
    cell_area = ((frames - t_index * align).clamp(max=align)[:, None] * (bins - f_index * align).clamp(max=align)).float()
    longest_t = max(1, int(frames * options.max_block) // align)
    longest_f = max(1, int(bins * options.max_block) // align)
    # Stripes span the whole height (time stripes) or width (freq stripes); pasted blocks do not.
    full_height = (~replaced) & (fill == "time")
    full_width = (~replaced) & (fill == "freq")
    mask = torch.zeros(batch, cells_t, cells_f, dtype=torch.bool, device=device)
    covered = torch.zeros(batch, device=device)
    for drawn in range(1, 100_000):
        active = covered < target * (frames * bins)
        if drawn % 8 == 1 and not bool(active.any()):  # one host sync every 8 blocks
            break
        t0, f0 = (uniform(batch) * cells_t).long(), (uniform(batch) * cells_f).long()
        width = 1 + (uniform(batch) * longest_t).long()
        height = 1 + (uniform(batch) * longest_f).long()
        in_t = (t_index >= t0[:, None]) & (t_index < (t0 + width)[:, None])
        in_f = (f_index >= f0[:, None]) & (f_index < (f0 + height)[:, None])
        in_f |= full_height[:, None]
        in_t |= full_width[:, None]
        block = in_t[:, :, None] & in_f[:, None, :] & active[:, None, None]
        mask |= block
        covered = (mask * cell_area).sum(dim=(1, 2))
    else:
        raise RuntimeError("gmml_corrupt did not reach its coverage; is the coverage near 1 with tiny blocks?")

    mask = mask.repeat_interleave(align, dim=1).repeat_interleave(align, dim=2)[:, :frames, :bins]
    if fill == "noise":
        noise = torch.randn(fbank.shape, device=device, generator=generator, dtype=fbank.dtype)
        filler = options.noise_mean + options.noise_std * noise
    else:
        filler = torch.zeros_like(fbank)
    filler = torch.where(replaced[:, None, None], fbank.roll(1, dims=0), filler)
    return torch.where(mask, filler, fbank), mask


def inverse_block_kept(num_patches: int, mask_ratio: float) -> int:
    """Patches an :func:`inverse_block_mask` leaves visible: ``int(P * (1 - mask_ratio))``,
    rounded down as data2vec 2.0 does (410 of 512 masked at 0.8)."""
    if not 0.0 < mask_ratio < 1.0:
        raise ValueError(f"mask_ratio must be in (0, 1), got {mask_ratio}")
    return int(num_patches * (1 - mask_ratio))


def inverse_block_mask(
    batch_size: int,
    grid: tuple[int, int],
    mask_ratio: float = 0.8,
    block: int = 5,
    adjust: float = 0.07,
    *,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """EAT's inverse block mask (data2vec 2.0's ``compute_block_mask_2d`` with
    ``inverse_mask=True``, ``require_same_masks=True``): ``[B, n_freq * n_time]`` bool,
    ``True`` = masked.

    Blocks mark what stays *visible*. With ``keep = 1 - mask_ratio``, each clip draws
    ``int(P * (keep + adjust) / block**2)`` centres uniformly over the grid (with replacement)
    and keeps the ``block x block`` square around each (offset ``block // 2``, clipped at the
    grid's edges). ``adjust`` makes up for overlaps, so about the right area is covered; then
    exactly :func:`inverse_block_kept` patches are kept: a random subset of the covered ones
    when they are too many, or random uncovered ones added when too few. The rest is masked.

    On a grid with one row (frame tokens, ``1 x T``) a square is a ``1 x block`` span and the
    centres are counted with ``block``, not ``block**2``: data2vec 2.0's
    ``compute_block_mask_1d``, which the 2-D rule reduces to (squares cut to one row would
    cover a fifth of their area, and most of the kept patches would be the random top-up).
    A grid with one column is treated the same way along frequency.
    """
    n_freq, n_time = _check_grid(grid)
    num_patches = n_freq * n_time
    if block < 1:
        raise ValueError(f"block must be a positive int, got {block}")
    kept = inverse_block_kept(num_patches, mask_ratio)
    height = block if n_freq > 1 else 1
    width = block if n_time > 1 else 1
    num_centres = int(num_patches * ((1 - mask_ratio) + adjust) / (height * width))

    centres = torch.zeros(batch_size, num_patches, device=device)
    picks = torch.randint(num_patches, (batch_size, num_centres), device=device, generator=generator)
    centres.scatter_(1, picks, 1.0)
    # A patch is covered when a centre lies within (block - 1 - offset, offset) of it on each
    # axis: a max over that window, with the grid padded by uncovered (zero) cells.
    top, left = height // 2, width // 2
    padded = F.pad(centres.view(batch_size, 1, n_freq, n_time), (width - 1 - left, left, height - 1 - top, top))
    covered = F.max_pool2d(padded, (height, width), stride=1).view(batch_size, num_patches)
    # Covered patches rank above uncovered ones, random within each: the top `kept` are a
    # random subset of the covered, or all of them plus random uncovered ones.
    keys = covered + torch.rand(batch_size, num_patches, device=device, generator=generator)
    keep_index = keys.topk(kept, dim=1).indices
    mask = torch.ones(batch_size, num_patches, dtype=torch.bool, device=device)
    return mask.scatter_(1, keep_index, False)


def true_positions(mask: torch.Tensor, count: int) -> torch.Tensor:
    """The positions where each row of ``mask [B, P]`` is ``True``, in increasing order, as
    ``[B, count]`` (every row holds exactly ``count``); no host sync, unlike ``nonzero``."""
    # A stable sort puts each row's True positions first, in order.
    return mask.to(torch.uint8).argsort(dim=1, descending=True, stable=True)[:, :count]
