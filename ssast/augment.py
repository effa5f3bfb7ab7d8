"""Batched augmentations, on the batch's device: time-axis transforms of log-mel batches
``[B, T, F]``, mixup of waveform batches ``[B, N]`` as AST and SSAST mix clips (and of their
targets), EAT's roll and gain of waveforms and its mixup of log-mels, AST's noise and roll.

Every clip of the batch gets its own offset, shift or mix; one ``gather`` or one
broadcast does the whole batch.
"""

from __future__ import annotations

import torch

MIX_BETA = 10
"""Mixup weights are drawn from Beta(MIX_BETA, MIX_BETA), as AST and SSAST draw them."""


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


def mix_waveforms(
    audio: torch.Tensor, lengths: torch.Tensor, probability: float, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mixup of waveforms before the fbank, as AST/SSAST's ``_wav2fbank``: with
    ``probability`` per clip, clip ``i`` becomes ``λ c_i + (1 - λ) c_j``, ``c`` being the
    clips with their mean (over their ``lengths``) removed, ``j = partner[i]`` from a random
    permutation of the batch (at times ``i`` itself; the official code draws ``j`` from the
    whole set), cut or zero-padded to clip ``i``'s length, λ ~ Beta(10, 10). The mix's own mean is
    removed by :class:`ssast.features.Fbank`, as the official code removes it.

    Returns ``(mixed [B, N], partner [B], lam [B])``: clips not drawn keep their audio
    untouched and ``lam = 1``; the targets are to be mixed alike, ``lam t + (1 - lam)
    t[partner]``. With ``probability`` 0, ``audio`` itself comes back.
    """
    batch, samples = audio.shape
    if probability <= 0:
        return audio, torch.arange(batch, device=audio.device), torch.ones(batch, device=audio.device)
    device = generator.device if generator is not None else audio.device
    partner = torch.randperm(batch, generator=generator, device=device).to(audio.device)
    applies = (torch.rand(batch, generator=generator, device=device) < probability).to(audio.device)
    lam = torch.where(applies, _beta(MIX_BETA, MIX_BETA, batch, generator, device).to(audio.device), 1.0)
    lengths = lengths.to(audio.device)[:, None]
    is_audio = torch.arange(samples, device=audio.device) < lengths
    centered = (audio - (audio * is_audio).sum(dim=-1, keepdim=True) / lengths.clamp_min(1)) * is_audio
    mixed = (lam[:, None] * centered + (1 - lam[:, None]) * centered[partner]) * is_audio
    return torch.where(applies[:, None], mixed, audio), partner, lam


GAIN_BETA = 10
"""EAT's waveform gains are 0.5 + Beta(GAIN_BETA, GAIN_BETA), within [0.5, 1.5] around 1."""


def roll_and_gain(audio: torch.Tensor, lengths: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """EAT's ``_roll_mag_aug`` (``data/raw_audio_dataset.py``, training only): each clip, its
    mean removed first as EAT removes it, rolled circularly by a uniform random shift in
    ``[0, length)`` and scaled by a gain ``0.5 + Beta(10, 10)``. Each row rolls within its own
    ``lengths[b]`` samples, so the zero padding past them stays zero and out of the roll.

    Returns the new ``[B, N]`` waveforms; ``audio`` is left as it is.
    """
    batch, samples = audio.shape
    device = generator.device if generator is not None else audio.device
    valid = lengths.to(audio.device).clamp_min(1)[:, None]
    shifts = (torch.rand(batch, generator=generator, device=device, dtype=torch.float64).to(audio.device)
              * valid[:, 0]).long()
    gains = 0.5 + _beta(GAIN_BETA, GAIN_BETA, batch, generator, device).to(audio.device, audio.dtype)
    positions = torch.arange(samples, device=audio.device)
    is_audio = positions < lengths.to(audio.device)[:, None]
    centered = audio - (audio * is_audio).sum(dim=-1, keepdim=True) / valid
    rolled = centered.gather(1, (positions - shifts[:, None]) % valid)
    return rolled * gains[:, None] * is_audio


def _beta(a: int, b: int, count: int, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """``count`` draws from Beta(a, b) for whole ``a``, ``b``, from ``generator`` (which
    ``torch.distributions.Beta`` does not take): ``X / (X + Y)`` with ``X ~ Gamma(a)``,
    ``Y ~ Gamma(b)``, each a sum of unit exponentials."""
    exponentials = -torch.log1p(-torch.rand(count, a + b, generator=generator, device=device))
    return exponentials[:, :a].sum(dim=-1) / exponentials.sum(dim=-1)


def mix_targets(targets: torch.Tensor, partner: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """``λ t + (1 - λ) t[partner]``: the targets of clips whose waveforms the data mixed
    (``batch["mix_partner"]``, ``batch["mix_lambda"]``), as the official data loader mixes
    labels."""
    lam = lam.to(targets.dtype)[:, None]
    return lam * targets + (1 - lam) * targets[partner]


def batch_mixup(
    fbank: torch.Tensor, targets: torch.Tensor, alpha: float, probability: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """EAT's mixup (``utils/mixup.py``, timm's ``Mixup`` in ``batch`` mode, no cutmix): with
    ``probability``, one ``λ ~ Beta(alpha, alpha)`` for the whole batch, and every clip and its
    targets mixed with the batch reversed; the log-mels are mixed, not the waveforms. (Its
    target function ignores the label smoothing it is given.)"""
    if alpha <= 0 or torch.rand(()).item() >= probability:
        return fbank, targets
    lam = float(torch.distributions.Beta(alpha, alpha).sample())
    return lam * fbank + (1 - lam) * fbank.flip(0), lam * targets + (1 - lam) * targets.flip(0)


def noise_and_roll(fbank: torch.Tensor, max_shift: int = 10) -> torch.Tensor:
    """AST's ESC-50 augmentation: uniform noise of a random level up to 0.1, then each clip
    rolled in time by up to ``max_shift`` frames."""
    batch = len(fbank)
    level = torch.rand(batch, 1, 1, device=fbank.device) / 10
    noisy = fbank + torch.rand_like(fbank) * level
    return roll_frames(noisy, torch.randint(-max_shift, max_shift, (batch,), device=fbank.device))
