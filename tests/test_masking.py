"""Masks for masked spectrogram patch modeling: counts, block shape, edges, randomness
(their speed is benchmarks/costs.py's to report)."""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F

from ssast.masking import cluster_mask, inverse_block_kept, inverse_block_mask, random_mask, true_positions

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])  # CUDA cases where there is a GPU


def seeded(seed: int = 0, device: str = "cpu") -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def neighbours_per_row(mask: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Per row, the mean number of masked 4-neighbours of a masked patch."""
    m = mask.view(-1, 1, *grid).float()
    kernel = torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 1.0], [0.0, 1.0, 0.0]]).view(1, 1, 3, 3)
    counts = F.conv2d(m, kernel, padding=1)
    return (counts * m).sum((1, 2, 3)) / m.sum((1, 2, 3))


def neighbours_masked(mask: torch.Tensor, grid: tuple[int, int]) -> float:
    """Mean number of masked 4-neighbours of a masked patch, over all rows (same N per row)."""
    return neighbours_per_row(mask, grid).mean().item()


def in_full_blocks(mask: torch.Tensor, grid: tuple[int, int], size: int) -> torch.Tensor:
    """Per row, how many masked patches lie in an edge-clipped ``size x size`` window (top-left
    at any patch) whose patches are all masked."""
    unmasked = (~mask).view(-1, 1, *grid).float()
    # Off-grid cells count as masked, so a window hanging over the bottom/right edge is clipped.
    any_unmasked = F.max_pool2d(F.pad(unmasked, (0, size - 1, 0, size - 1)), size, stride=1)
    full = 1.0 - any_unmasked
    covered = F.max_pool2d(F.pad(full, (size - 1, 0, size - 1, 0)), size, stride=1) > 0
    return (covered.view(mask.shape) & mask).sum(1)


def reference_cluster(rng: random.Random, grid: tuple[int, int], num_masked: int, sizes) -> set[int]:
    """One clip of the cluster process, straight from its description, block by block."""
    n_freq, n_time = grid
    size = rng.choice(sizes)
    chosen: set[int] = set()
    while True:
        row, col = divmod(rng.randrange(n_freq * n_time), n_time)
        rows, cols = range(row, min(row + size, n_freq)), range(col, min(col + size, n_time))
        block = {f * n_time + t for f in rows for t in cols}
        new = sorted(block - chosen)
        if len(chosen) + len(new) >= num_masked:
            return chosen | set(rng.sample(new, num_masked - len(chosen)))
        chosen.update(new)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("grid,num_masked", [((8, 64), 400), ((4, 6), 10), ((4, 6), 1), ((4, 6), 24), ((1, 512), 300)])
def test_exact_count_shape_dtype_device(grid, num_masked, device):
    num_patches = grid[0] * grid[1]
    for mask in (
        cluster_mask(16, grid, num_masked, device=device, generator=seeded(0, device)),
        random_mask(16, num_patches, num_masked, device=device, generator=seeded(0, device)),
    ):
        assert mask.shape == (16, num_patches)
        assert mask.dtype == torch.bool
        assert mask.device.type == device
        assert (mask.sum(1) == num_masked).all()


def test_without_generator_and_empty_batch():
    assert (cluster_mask(3, (8, 64), 400).sum(1) == 400).all()
    assert (random_mask(3, 512, 400).sum(1) == 400).all()
    assert cluster_mask(0, (4, 6), 5).shape == (0, 24)
    assert random_mask(0, 24, 5).shape == (0, 24)


@pytest.mark.parametrize(
    "grid,num_masked,size",
    [((8, 64), 400, 3), ((8, 64), 30, 3), ((8, 64), 100, 5), ((4, 6), 10, 2), ((3, 4), 8, 2), ((2, 3), 4, 5)],
)
def test_cluster_masks_are_whole_blocks_but_the_last(grid, num_masked, size):
    masks = cluster_mask(64, grid, num_masked, cluster_sizes=(size,), generator=seeded(1))
    assert (in_full_blocks(masks, grid, size) >= num_masked - size * size + 1).all()
    if num_masked - size * size >= 4 and num_masked < 200:  # the check itself is not vacuous: scattered patches fail it
        scattered = random_mask(64, grid[0] * grid[1], num_masked, generator=seeded(1))
        assert (in_full_blocks(scattered, grid, size) < num_masked - size * size + 1).any()


@pytest.mark.parametrize("num_masked", [50, 100, 200])
def test_cluster_masks_are_more_clustered_than_random(num_masked):
    grid = (8, 64)
    clustered = neighbours_masked(cluster_mask(64, grid, num_masked, generator=seeded(2)), grid)
    scattered = neighbours_masked(random_mask(64, 512, num_masked, generator=seeded(2)), grid)
    assert clustered > scattered + 1.0


def test_one_cluster_size_per_clip():
    # Sizes 1 and 5: a clip of 1x1 blocks is scattered (about 0.75 masked neighbours), one of
    # 5x5 blocks tight (about 3). Drawing the size block by block would blend them in every clip.
    per_row = neighbours_per_row(cluster_mask(200, (8, 64), 100, cluster_sizes=(1, 5), generator=seeded(9)), (8, 64))
    scattered, tight = per_row < 1.3, per_row > 2.5
    assert (scattered | tight).all()
    assert scattered.float().mean() > 0.3 and tight.float().mean() > 0.3


def test_blocks_do_not_wrap_across_frequency_rows():
    # Grid  0 1 2 / 3 4 5 with 2x2 blocks. Clipped, no block holds both 2 (end of row 0) and 3
    # (start of row 1), and with 2 masked the only single-patch block is {5}, so {2, 3} can
    # never be the mask. Built as start + n_time * i + j, the block at 2 is {2, 3, 5} and
    # {2, 3} would come up in about one clip in 18.
    masks = cluster_mask(3000, (2, 3), 2, cluster_sizes=(2,), generator=seeded(3))
    assert not (masks[:, 2] & masks[:, 3]).any()
    seen = {tuple(row.nonzero().flatten().tolist()) for row in masks}
    assert {(2, 5), (0, 1), (4, 5), (3, 4)} <= seen  # clipped blocks at the edges do occur
    assert (0, 5) in seen  # a lone {5} completed from the next block


def test_cluster_matches_reference_process():
    """Per-patch masking rates and clustering agree with a block-by-block implementation."""
    grid, num_masked, sizes, clips = (4, 6), 10, (2, 3), 4000
    masks = cluster_mask(clips, grid, num_masked, cluster_sizes=sizes, generator=seeded(4))
    rng = random.Random(4)
    expected = torch.zeros(clips, 24, dtype=torch.bool)
    for row in range(clips):
        expected[row, list(reference_cluster(rng, grid, num_masked, sizes))] = True
    # A rate's standard error is about 0.011 here; 0.05 is over four of them for the difference.
    assert (masks.float().mean(0) - expected.float().mean(0)).abs().max() < 0.05
    assert neighbours_masked(masks, grid) == pytest.approx(neighbours_masked(expected, grid), abs=0.05)


def test_cluster_reaches_every_patch():
    masks = cluster_mask(256, (8, 64), 400, generator=seeded(5))
    grid_masks = masks.view(-1, 8, 64)
    assert grid_masks.any(0).all()  # the corners only one start covers included
    # No edge starves: the last frequency row and time column are masked about as often as the rest.
    assert grid_masks[:, -1].float().mean() > 0.5
    assert grid_masks[:, :, -1].float().mean() > 0.5


def test_random_mask_is_uniform():
    masks = random_mask(4000, 24, 6, generator=seeded(6))
    assert (masks.float().mean(0) - 0.25).abs().max() < 0.03  # standard error 0.007
    # Uniform 6 of 24: a masked patch's neighbours are each masked with chance 5/23, and
    # a 4x6 grid has 38 edges, so 76/24 neighbours on average.
    assert neighbours_masked(masks, (4, 6)) == pytest.approx(76 / 24 * 5 / 23, abs=0.03)


@pytest.mark.parametrize("make", [
    lambda g: cluster_mask(32, (8, 64), 400, generator=g),
    lambda g: random_mask(32, 512, 400, generator=g),
])
def test_reproducible_and_varied(make):
    first, again, other = make(seeded(7)), make(seeded(7)), make(seeded(8))
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    assert len({tuple(row.tolist()) for row in first}) == len(first)  # no two clips alike


@pytest.mark.parametrize("call,message", [
    (lambda: cluster_mask(2, (8, 64), 0), "num_masked"),
    (lambda: cluster_mask(2, (8, 64), 513), "num_masked"),
    (lambda: cluster_mask(2, (0, 64), 1), "grid"),
    (lambda: cluster_mask(2, (8, -1), 1), "grid"),
    (lambda: cluster_mask(2, (8,), 1), "grid"),
    (lambda: cluster_mask(2, (8, 64), 10, cluster_sizes=()), "cluster_sizes"),
    (lambda: cluster_mask(2, (8, 64), 10, cluster_sizes=(3, 0)), "cluster_sizes"),
    (lambda: cluster_mask(2, (8, 64), 10, cluster_sizes=(2.5,)), "cluster_sizes"),
    (lambda: cluster_mask(-1, (8, 64), 10), "batch_size"),
    (lambda: random_mask(2, 24, 25), "num_masked"),
    (lambda: random_mask(2, 24, 0), "num_masked"),
    (lambda: random_mask(2, 0, 1), "num_patches"),
])
def test_bad_arguments(call, message):
    with pytest.raises(ValueError, match=message):
        call()


# --- inverse block masks (EAT / data2vec 2.0) ----------------------------------------------


def official_inverse_block_mask(batch_size: int, grid: tuple[int, int], generator: torch.Generator,
                                mask_prob: float = 0.8, length: int = 5, adjust: float = 0.07) -> torch.Tensor:
    """data2vec 2.0's compute_block_mask_2d (inverse, require_same_masks) written as it is:
    centres scattered, a block marked around each by clamped indices, then clip by clip the
    count fixed by random un-marking or marking."""
    keep = 1 - mask_prob
    num = grid[0] * grid[1]
    mask = torch.zeros(batch_size, *grid)
    centres = torch.randint(0, num, (batch_size, int(num * (keep + adjust) / length**2)), generator=generator)
    mask.view(batch_size, -1).scatter_(1, centres, 1)
    b, r, c = mask.nonzero(as_tuple=True)
    offset = length // 2
    for i in range(length):
        for j in range(length):
            mask[b, (r + i - offset).clamp(0, grid[0] - 1), (c + j - offset).clamp(0, grid[1] - 1)] = 1
    mask = mask.view(batch_size, -1)
    target = int(num * keep)
    for row in mask:
        n = int(row.sum())
        if n > target:
            row[torch.multinomial(row, n - target, generator=generator)] = 0
        elif n < target:
            row[torch.multinomial(1 - row, target - n, generator=generator)] = 1
    return (1 - mask).bool()


@pytest.mark.parametrize("grid,masked", [((8, 64), 410), ((1, 128), 103), ((1, 512), 410), ((12, 101), 970)])
def test_inverse_block_mask_counts(grid, masked):
    mask = inverse_block_mask(16, grid, generator=seeded())
    assert mask.shape == (16, grid[0] * grid[1]) and mask.dtype == torch.bool
    assert (mask.sum(1) == masked).all()  # exactly, every clip: int(P * 0.2) kept
    assert inverse_block_kept(grid[0] * grid[1], 0.8) == grid[0] * grid[1] - masked
    assert abs(masked / (grid[0] * grid[1]) - 0.8) < 0.01


def test_inverse_block_mask_keeps_whole_blocks():
    # One centre per clip (int(400 * 0.0625 / 25) = 1) and exactly a block's area kept: away
    # from the edges the visible patches are one 5 x 5 square.
    mask = inverse_block_mask(200, (20, 20), mask_ratio=0.9375, adjust=0.0, generator=seeded())
    squares = 0
    for row in mask:
        rows, cols = (~row).view(20, 20).nonzero(as_tuple=True)
        assert len(rows) == 25
        squares += int(rows.max() - rows.min() == 4 and cols.max() - cols.min() == 4)
    assert squares > 0.5 * len(mask)  # (16/20)^2 = 64% of centres sit 2 or more from every edge


def test_inverse_block_mask_keeps_spans_on_a_frame_grid():
    # A 1 x T grid keeps 1 x 5 spans, counted as data2vec 2.0's compute_block_mask_1d.
    mask = inverse_block_mask(200, (1, 100), mask_ratio=0.95, adjust=0.0, generator=seeded())
    spans = 0
    for row in mask:
        kept = (~row).nonzero().squeeze(1)
        assert len(kept) == 5
        spans += int(kept.max() - kept.min() == 4)
    assert spans > 0.8 * len(mask)


def test_inverse_block_mask_matches_the_official_algorithm_in_distribution():
    grid = (8, 64)
    ours = inverse_block_mask(1000, grid, generator=seeded(1))
    official = official_inverse_block_mask(1000, grid, seeded(2))
    assert (official.sum(1) == 410).all()
    # How blocky the kept patches are: mean kept 4-neighbours of a kept patch.
    assert neighbours_masked(~ours, grid) == pytest.approx(neighbours_masked(~official, grid), rel=0.02)
    # ... and where they fall: the kept share of each frequency row (edges are kept less often).
    rows_ours = (~ours).view(-1, *grid).float().mean((0, 2))
    rows_official = (~official).view(-1, *grid).float().mean((0, 2))
    assert torch.allclose(rows_ours, rows_official, atol=0.01)


def test_inverse_block_mask_reproducible_and_checked():
    first, again = (inverse_block_mask(8, (8, 64), generator=seeded(5)) for _ in range(2))
    assert torch.equal(first, again) and len({tuple(r.tolist()) for r in first}) == 8
    with pytest.raises(ValueError, match="mask_ratio"):
        inverse_block_mask(2, (8, 64), mask_ratio=1.0)
    with pytest.raises(ValueError, match="grid"):
        inverse_block_mask(2, (0, 64))


def test_true_positions_in_order():
    mask = torch.tensor([[True, False, True, True], [False, True, True, True]])
    assert true_positions(mask, 3).tolist() == [[0, 2, 3], [1, 2, 3]]
    assert true_positions(~mask, 1).tolist() == [[1], [0]]
