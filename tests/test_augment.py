"""Batched time-axis transforms agree with their per-clip definitions."""

from __future__ import annotations

import pytest
import torch

from ssast.augment import crop_frames, random_crop_frames, random_roll, roll_frames


def test_roll_frames_is_torch_roll_per_clip():
    fbank = torch.randn(3, 10, 4)
    shifts = torch.tensor([0, 3, -12])
    rolled = roll_frames(fbank, shifts)
    for clip, shift, out in zip(fbank, shifts.tolist(), rolled):
        torch.testing.assert_close(out, torch.roll(clip, shift, dims=0))


def test_crop_frames_cuts_each_clip_at_its_start():
    fbank = torch.randn(2, 10, 4)
    crops = crop_frames(fbank, torch.tensor([0, 6]), 4)
    torch.testing.assert_close(crops[0], fbank[0, :4])
    torch.testing.assert_close(crops[1], fbank[1, 6:])
    with pytest.raises(ValueError, match="cannot cut 11 frames"):
        crop_frames(fbank, torch.tensor([0, 0]), 11)


def test_random_crops_and_rolls_keep_frames_intact():
    frames = torch.arange(20.0).repeat(64, 1)[..., None]  # each frame holds its own index
    crops = random_crop_frames(frames, 5, torch.Generator().manual_seed(0))
    assert torch.equal(crops.diff(dim=1), torch.ones(64, 4, 1))  # consecutive frames
    assert len(set(crops[:, 0, 0].tolist())) > 5  # at different offsets
    rolled = random_roll(frames, 0.5, torch.Generator().manual_seed(0))
    unchanged = (rolled == frames).all(dim=(1, 2))
    assert 10 < int(unchanged.sum()) < 54  # about half the clips rolled
    assert torch.equal(rolled.sort(dim=1).values, frames)  # a roll only reorders frames
