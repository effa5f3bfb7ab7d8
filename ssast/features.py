"""Kaldi-compatible log-mel filterbank features, batched, on any device.

AST and SSAST compute features clip by clip with ``torchaudio.compliance.kaldi.fbank`` in
the data loader. :class:`Fbank` computes the same numbers for a whole batch at once on
whatever device the batch lives on, so loader workers only decode and crop. The mel
filterbank itself is torchaudio's; only the framing is batched here.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn
from torchaudio.compliance import kaldi

from ssast.audio import SAMPLE_RATE

# (mean, std) of the raw log-mel, as published with AST/SSAST.
PUBLISHED_STATS: dict[str, tuple[float, float]] = {
    "audioset": (-4.2677393, 4.5689974),
    "esc50": (-6.6268077, 5.358466),
    "speechcommands": (-6.845978, 5.5654526),
}

_KALDI_EPSILON = torch.finfo(torch.float32).eps


class Fbank(nn.Module):
    """Log-mel fbank of a batch of waveforms, equal to Kaldi's with the AST settings.

    Defaults: 25 ms Hanning window, 10 ms shift, 128 mel bins from 20 Hz to Nyquist, power
    spectrum, pre-emphasis 0.97, per-frame DC removal, no dither, no energy term, frames
    that fit entirely in the clip (``snip_edges``). ``htk_compat`` only moves the energy
    term, which is off, so it needs no code here. As in AST, each clip's mean (over its
    valid samples) is removed first.

    ``forward(waveforms [B, N] or [N], lengths [B] | None) -> [B, T, num_mel_bins]`` with
    ``T = 1 + (N - window) // shift``. With ``lengths`` (valid samples per clip, the rest
    being padding) the frames that reach into the padding are set to 0, which is what AST
    does when it zero-pads the fbank of a short clip.

    It has no parameters or buffers: it computes on the device of the batch, in float32,
    whatever ``.to()`` its parent module was given.
    """

    def __init__(
        self,
        sample_rate: int = SAMPLE_RATE,
        num_mel_bins: int = 128,
        frame_length_ms: float = 25.0,
        frame_shift_ms: float = 10.0,
        preemphasis: float = 0.97,
        low_freq: float = 20.0,
        high_freq: float = 0.0,
    ) -> None:
        super().__init__()
        self.sample_rate = sample_rate
        self.num_mel_bins = num_mel_bins
        self.window_size = int(sample_rate * frame_length_ms / 1000)
        self.window_shift = int(sample_rate * frame_shift_ms / 1000)
        self.fft_size = 2 ** math.ceil(math.log2(self.window_size))
        self.preemphasis = preemphasis
        self.low_freq = low_freq
        self.high_freq = high_freq
        mel_banks, _ = kaldi.get_mel_banks(
            num_mel_bins, self.fft_size, float(sample_rate), low_freq, high_freq,
            vtln_low=100.0, vtln_high=-500.0, vtln_warp_factor=1.0,
        )
        # Kaldi's banks omit the Nyquist bin; it gets weight 0.
        mel_banks = F.pad(mel_banks, (0, 1)).T.contiguous()
        window = torch.hann_window(self.window_size, periodic=False)
        # Plain float32 tensors, not buffers: a bf16 or half model (``.to(dtype)``) must not
        # round them. They are copied to each device a batch arrives on, once.
        self._tables: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {torch.device("cpu"): (mel_banks, window)}

    def tables(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """The mel filterbank ``[fft_size // 2 + 1, num_mel_bins]`` and the analysis window
        ``[window_size]``, float32, on ``device``."""
        if device not in self._tables:
            self._tables[device] = tuple(table.to(device) for table in self._tables[torch.device("cpu")])
        return self._tables[device]

    def num_frames(self, num_samples: int | torch.Tensor) -> int | torch.Tensor:
        """Frames Kaldi makes from ``num_samples`` samples."""
        if isinstance(num_samples, torch.Tensor):
            return ((num_samples - self.window_size) // self.window_shift + 1).clamp_min(0)
        return max(0, (num_samples - self.window_size) // self.window_shift + 1)

    def num_samples(self, num_frames: int) -> int:
        """The fewest samples that give ``num_frames`` frames."""
        return self.window_size + self.window_shift * (num_frames - 1)

    def forward(self, waveforms: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        single = waveforms.dim() == 1
        if single:
            waveforms = waveforms.unsqueeze(0)
        if waveforms.shape[-1] < self.window_size:
            raise ValueError(
                f"clips of {waveforms.shape[-1]} samples are shorter than one "
                f"{self.window_size}-sample analysis window"
            )
        if lengths is None:
            lengths = torch.full(waveforms.shape[:1], waveforms.shape[-1], device=waveforms.device)
        lengths = lengths.to(waveforms.device)
        # Under bf16/fp16 autocast the log of small mel energies would lose Kaldi parity.
        with torch.autocast(waveforms.device.type, enabled=False):
            waveforms = waveforms.float()
            # On CPU one clip at a time is faster (its frames stay in cache) and rounds
            # exactly like Kaldi; accelerators take the whole batch in one go.
            if waveforms.device.type == "cpu":
                logmel = torch.cat([self._log_mel(*clip) for clip in zip(waveforms.split(1), lengths.split(1))])
            else:
                logmel = self._log_mel(waveforms, lengths)
        is_padding = torch.arange(logmel.shape[1], device=logmel.device) >= self.num_frames(lengths)[:, None]
        logmel = logmel.masked_fill(rearrange(is_padding, "b t -> b t 1"), 0.0)
        return logmel[0] if single else logmel

    def _log_mel(self, waveforms: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        # The operations and their order are Kaldi's: the lowest mel bands of a
        # pre-emphasized frame are small differences of large numbers, and any
        # reordering moves them by up to ~1e-3 in the log.
        mel_banks, window = self.tables(waveforms.device)
        is_audio = torch.arange(waveforms.shape[-1], device=waveforms.device) < lengths[:, None]
        mean = (waveforms * is_audio).sum(dim=-1, keepdim=True) / lengths[:, None].clamp_min(1)
        frames = (waveforms - mean).unfold(-1, self.window_size, self.window_shift)
        frames = frames - frames.mean(dim=-1, keepdim=True)
        # Pre-emphasis and window, written straight into the zero-padded FFT input.
        padded = frames.new_zeros(*frames.shape[:-1], self.fft_size)
        padded[..., 0] = (frames[..., 0] - self.preemphasis * frames[..., 0]) * window[0]
        padded[..., 1 : self.window_size] = (frames[..., 1:] - self.preemphasis * frames[..., :-1]) * window[1:]
        spectrum = torch.fft.rfft(padded)
        power = (spectrum * spectrum.conj()).real
        return (power @ mel_banks).clamp_min_(_KALDI_EPSILON).log_()


def fit_frames(fbank: torch.Tensor, target_length: int) -> torch.Tensor:
    """Zero-pad or cut ``[..., T, F]`` at the end to ``target_length`` frames, as AST does."""
    missing = target_length - fbank.shape[-2]
    if missing > 0:
        return F.pad(fbank, (0, 0, 0, missing))
    return fbank[..., :target_length, :]


class Normalize(nn.Module):
    """``(x - mean) / (2 * std)``: AST's normalization, putting inputs at about std 0.5."""

    def __init__(self, mean: float, std: float) -> None:
        super().__init__()
        if not std > 0:
            raise ValueError(f"std must be positive, got {std}")
        self.mean = float(mean)
        self.std = float(std)

    @classmethod
    def published(cls, dataset: str) -> Normalize:
        """Normalization with the stats published for ``dataset`` (see ``PUBLISHED_STATS``)."""
        if dataset not in PUBLISHED_STATS:
            raise KeyError(f"no published stats for {dataset!r}; known: {sorted(PUBLISHED_STATS)}")
        return cls(*PUBLISHED_STATS[dataset])

    def forward(self, fbank: torch.Tensor) -> torch.Tensor:
        return (fbank - self.mean) / (2 * self.std)

    def extra_repr(self) -> str:
        return f"mean={self.mean}, std={self.std}"


def logmel_statistics(fbank: torch.Tensor, frames: torch.Tensor | None = None) -> torch.Tensor:
    """The per-bin mean and standard deviation of log-mels over time: ``[N, T, F]`` ->
    ``[N, 2F]`` (the ``F`` means, then the ``F`` standard deviations; population standard
    deviation, over the first ``frames[i]`` frames of clip ``i``, or all ``T``).

    The simple baseline a pretrained encoder has to beat (DESIGN.md §12): a linear probe
    on these already separates many sound classes and speakers.
    """
    fbank = fbank.double()
    if frames is None:
        frames = torch.full(fbank.shape[:1], fbank.shape[1], device=fbank.device)
    frames = frames.clamp_min(1).to(fbank.device)
    valid = (torch.arange(fbank.shape[1], device=fbank.device) < frames[:, None]).unsqueeze(-1)
    count = frames[:, None].double()
    mean = (fbank * valid).sum(dim=1) / count
    variance = ((fbank - mean[:, None]).square() * valid).sum(dim=1) / count
    return torch.cat([mean, variance.sqrt()], dim=1).float()
