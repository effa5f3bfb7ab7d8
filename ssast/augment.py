"""Batched time-axis transforms of log-mel batches ``[B, T, F]``, on their device.

Every clip of the batch gets its own offset or shift; one ``gather`` does the whole batch.
"""

from __future__ import annotations

import torch


def _take_frames(fbank: torch.Tensor, frame_index: torch.Tensor) -> torch.Tensor:
    """``out[b, t] = fbank[b, frame_index[b, t]]`` for ``frame_index [B, T']``."""
    return fbank.gather(1, frame_index[..., None].expand(-1, -1, fbank.shape[-1]))


def roll_frames(fbank: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """Each clip rolled along time by its own ``shifts[b]`` frames (``torch.roll`` per clip)."""
    frames = fbank.shape[1]
    source = (torch.arange(frames, device=fbank.device) - shifts[:, None]) % frames
    return _take_frames(fbank, source)


def crop_frames(fbank: torch.Tensor, starts: torch.Tensor, frames: int) -> torch.Tensor:
    """``frames`` consecutive frames of each clip, from its own ``starts[b]``."""
    if frames > fbank.shape[1]:
        raise ValueError(f"cannot cut {frames} frames from clips of {fbank.shape[1]}")
    return _take_frames(fbank, starts[:, None] + torch.arange(frames, device=fbank.device))


def random_crop_frames(fbank: torch.Tensor, frames: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """A random window of ``frames`` frames from each clip, uniformly placed."""
    starts = torch.randint(fbank.shape[1] - frames + 1, (len(fbank),), device=fbank.device, generator=generator)
    return crop_frames(fbank, starts, frames)


def random_roll(
    fbank: torch.Tensor, probability: float = 0.5, generator: torch.Generator | None = None
) -> torch.Tensor:
    """With ``probability`` per clip, roll it along time by a uniform random shift."""
    batch, frames, _ = fbank.shape
    shifts = torch.randint(frames, (batch,), device=fbank.device, generator=generator)
    applies = torch.rand(batch, device=fbank.device, generator=generator) < probability
    return roll_frames(fbank, torch.where(applies, shifts, torch.zeros_like(shifts)))
