"""Building blocks shared by the demo's sound synthesizers (:mod:`ssast.demo.events`,
:mod:`ssast.demo.speech`): random draws from an explicit generator, envelopes, band-passed
noise, resonant modes, and copies of a sound placed along a clip.

Every synthesizer output is a dry, mono, float32 waveform at :data:`SAMPLE_RATE`,
peak-normalized to ``max |x| == 1`` (:func:`peak_normalize`); loudness, background noise
and placement are the caller's job. All randomness comes from the ``torch.Generator``
passed in (never the global RNG), so a generator seeded the same way always yields
bit-identical audio. Everything is vectorized over samples; Python loops only run over a
handful of segments, harmonics or modes.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

SAMPLE_RATE: int = 16000  # same as ssast.audio.SAMPLE_RATE; kept local so this module is plain torch
NYQUIST = SAMPLE_RATE / 2
F64 = torch.float64
N_FFT = 512  # STFT size for time-varying filtering (32 ms frames)


def uniform(gen: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand((), generator=gen, dtype=F64))


def log_uniform(gen: torch.Generator, low: float, high: float) -> float:
    return math.exp(uniform(gen, math.log(low), math.log(high)))


def randint(gen: torch.Generator, low: int, high: int) -> int:
    """Uniform integer in ``[low, high]`` (inclusive)."""
    return int(torch.randint(low, high + 1, (), generator=gen))


def log_uniform_tensor(gen: torch.Generator, low: float, high: float, count: int) -> Tensor:
    return torch.exp(math.log(low) + (math.log(high) - math.log(low)) * rand(gen, count))


def randn(gen: torch.Generator, *shape: int) -> Tensor:
    return torch.randn(shape, generator=gen, dtype=F64)


def rand(gen: torch.Generator, *shape: int) -> Tensor:
    return torch.rand(shape, generator=gen, dtype=F64)


def sample_times(n: int) -> Tensor:
    return torch.arange(n, dtype=F64) / SAMPLE_RATE


def mean(x: Tensor) -> Tensor:
    """Mean of a 1-D tensor, bit-identical for any torch thread count.

    A plain ``.sum()`` over more than ~32k elements is split across threads, and the
    partial sums change the last bits with the number of threads; row sums are not split.
    """
    chunk = 4096
    rows = F.pad(x, (0, -x.numel() % chunk)).view(-1, chunk)
    return rows.sum(1).sum() / x.numel()


def rms(x: Tensor) -> Tensor:
    return mean(x.square()).sqrt().clamp_min(1e-12)


def peak_normalize(x: Tensor) -> Tensor:
    x = x.to(torch.float32)
    peak = x.abs().max()
    if not bool(torch.isfinite(peak)) or float(peak) <= 0.0:
        # Only reachable for a few samples of a sound whose first samples are silent.
        x = torch.hann_window(x.numel() + 2, periodic=False)[1:-1]
        peak = x.max()
    return x / peak


def ar_envelope(n: int, attack: float, release: float) -> Tensor:
    """Raised-sine attack/release envelope (lengths in samples), positive at every sample."""
    attack = min(max(attack, 1.0), n / 3 + 1.0)
    release = min(max(release, 1.0), n / 3 + 1.0)
    i = torch.arange(n, dtype=F64) + 0.5
    rise = torch.sin(0.5 * math.pi * (i / attack).clamp(max=1.0)) ** 2
    fall = torch.sin(0.5 * math.pi * ((n - i) / release).clamp(max=1.0)) ** 2
    return rise * fall


def random_envelope(
    n: int, gen: torch.Generator, max_attack_s: float = 0.15, max_release_s: float = 0.3, decay: bool = True
) -> Tensor:
    """Attack/release envelope with random times and, optionally, an exponential decay."""
    attack = log_uniform(gen, 0.002, max_attack_s) * SAMPLE_RATE
    release = log_uniform(gen, 0.01, max_release_s) * SAMPLE_RATE
    env = ar_envelope(n, attack, release)
    if decay:
        # Up to ~26 dB of decay over the event; some sounds stay flat.
        rate = uniform(gen, 0.0, 3.0)
        env = env * torch.exp(-rate * torch.arange(n, dtype=F64) / n)
    return env


def rfft_freqs(n: int) -> Tensor:
    return torch.fft.rfftfreq(n, d=1.0 / SAMPLE_RATE, dtype=F64)


def band_response(freqs: Tensor, low: float, high: float, order: int = 4) -> Tensor:
    """Butterworth-like band-pass magnitude; ``low <= 0`` / ``high >= Nyquist`` drop that edge."""
    f = freqs.clamp_min(1e-3)
    response = torch.ones_like(f)
    if low > 0:
        response = response * torch.rsqrt(1.0 + (low / f) ** (2 * order))
    if high < NYQUIST:
        response = response * torch.rsqrt(1.0 + (f / high) ** (2 * order))
    return response


def band_noise(n: int, low: float, high: float, gen: torch.Generator, order: int = 4) -> Tensor:
    """White noise band-passed in the frequency domain, scaled to unit RMS.

    Long noise is filtered frame by frame (STFT) rather than with one long FFT: MKL splits
    a long 1-D FFT across threads, which changes the last bits with the thread count.
    """
    noise = randn(gen, n)
    if n <= N_FFT:
        spectrum = torch.fft.rfft(noise) * band_response(rfft_freqs(n), low, high, order)
        filtered = torch.fft.irfft(spectrum, n=n)
    else:
        window = torch.hann_window(N_FFT, dtype=F64)
        frames = torch.stft(noise, N_FFT, N_FFT // 4, window=window, return_complex=True)
        response = band_response(rfft_freqs(N_FFT), low, high, order)
        filtered = torch.istft(frames * response[:, None], N_FFT, N_FFT // 4, window=window, length=n)
    return filtered / rms(filtered)


def place(n: int, positions: Tensor, amps: Tensor, kernel: Tensor) -> Tensor:
    """Copies of ``kernel`` scaled by ``amps`` starting at ``positions``, cut to ``n`` samples.

    A scatter-add rather than an FFT convolution: exact, and independent of thread count.
    """
    index = positions[:, None] + torch.arange(kernel.numel())
    values = amps[:, None] * kernel
    inside = (index >= 0) & (index < n)
    return torch.zeros(n, dtype=F64).index_add_(0, index[inside], values[inside])


def damped_modes(length: int, freqs: Tensor, decays_s: Tensor, amps: Tensor) -> Tensor:
    """Sum of exponentially decaying cosines (resonant modes), one row per mode."""
    t = sample_times(length)
    modes = amps[:, None] * torch.exp(-t / decays_s[:, None]) * torch.cos(2 * math.pi * freqs[:, None] * t)
    return modes.sum(0)
