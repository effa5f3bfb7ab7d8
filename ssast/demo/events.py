"""Sound events for the demo corpus, made from scratch (nothing is ever downloaded).

:func:`synth_event` runs one generative recipe per class in :data:`EVENT_CLASSES` (tones,
sweeps, filtered noise, click trains, damped resonant impacts, bird-like trills, ...),
each with wide random parameters drawn from the generator passed in. The output is what
every demo synthesizer gives (:mod:`ssast.demo.dsp`): dry, mono, float32, peak 1, and
bit-identical for a generator seeded the same way.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from ssast.demo.dsp import (
    F64, NYQUIST, SAMPLE_RATE, band_noise, band_response, damped_modes, log_uniform, log_uniform_tensor,
    peak_normalize, place, rand, randint, randn, random_envelope, rfft_freqs, sample_times, uniform,
)

_TOP_HZ = 7600.0  # highest partial we place, safely below Nyquist


def _event_tone(n: int, gen: torch.Generator) -> Tensor:
    """A pure tone (200 Hz-4 kHz) under a random attack/decay envelope."""
    freq = log_uniform(gen, 200.0, 4000.0)
    phase = uniform(gen, 0.0, 2 * math.pi)
    return torch.sin(2 * math.pi * freq * sample_times(n) + phase) * random_envelope(n, gen)


def _log_sweep(n: int, f_start: float, f_end: float) -> Tensor:
    """Phase of an exponential sweep from ``f_start`` to ``f_end`` over ``n`` samples (closed form)."""
    t = sample_times(n)
    span = max(n / SAMPLE_RATE, 1.0 / SAMPLE_RATE)
    ratio = math.log(f_end / f_start)
    return 2 * math.pi * f_start * span / ratio * (torch.exp(ratio * t / span) - 1.0)


def _chirp(n: int, gen: torch.Generator, upward: bool) -> Tensor:
    """An exponential sweep over 1-3 octaves between 150 Hz and 7 kHz."""
    f_low = log_uniform(gen, 150.0, 1500.0)
    f_high = min(f_low * 2.0 ** uniform(gen, 1.0, 3.0), 7000.0)
    start, end = (f_low, f_high) if upward else (f_high, f_low)
    env = random_envelope(n, gen, max_attack_s=0.03, max_release_s=0.1, decay=False)
    return torch.sin(_log_sweep(n, start, end)) * env


def _event_chirp_up(n: int, gen: torch.Generator) -> Tensor:
    return _chirp(n, gen, upward=True)


def _event_chirp_down(n: int, gen: torch.Generator) -> Tensor:
    return _chirp(n, gen, upward=False)


def _event_noise_burst(n: int, gen: torch.Generator) -> Tensor:
    """Noise band-passed around a random centre with a random width (0.3-2.5 octaves)."""
    centre = log_uniform(gen, 300.0, 6000.0)
    half_width = 0.5 * uniform(gen, 0.3, 2.5)  # octaves
    low, high = centre * 2.0**-half_width, min(centre * 2.0**half_width, 7900.0)
    env = random_envelope(n, gen, max_attack_s=0.05)
    return band_noise(n, low, high, gen) * env


def _event_click_train(n: int, gen: torch.Generator) -> Tensor:
    """Near-periodic clicks (5-40 per second), each ringing a small resonator."""
    rate = uniform(gen, 5.0, 40.0)
    period = 1.0 / rate
    count = int(n / SAMPLE_RATE * rate) + 2
    # Slightly irregular spacing; the first click always lands inside the clip.
    intervals = period * (1.0 + 0.05 * randn(gen, count)).clamp(0.7, 1.3)
    first = uniform(gen, 0.0, min(period, n / SAMPLE_RATE))
    times = first + torch.cumsum(intervals, 0) - intervals[0]
    amps = 0.7 + 0.3 * rand(gen, count)
    # Each click rings a small resonator (like a clicking mechanism or a ticking clock).
    freqs = log_uniform_tensor(gen, 400.0, 5000.0, 1)
    decays = log_uniform_tensor(gen, 0.002, 0.015, 1)
    length = min(n, int(6 * float(decays.max()) * SAMPLE_RATE) + 1)
    kernel = damped_modes(length, freqs, decays, torch.ones(1, dtype=F64))
    return place(n, (times * SAMPLE_RATE).long(), amps, kernel)


def _event_harmonic_stack(n: int, gen: torch.Generator) -> Tensor:
    """5-15 harmonics of a random F0 with a random spectral slope."""
    f0 = log_uniform(gen, 80.0, 600.0)
    count = randint(gen, 5, 15)
    slope_db = uniform(gen, -15.0, -2.0)  # per octave
    phases = 2 * math.pi * rand(gen, count)
    k = torch.arange(1, count + 1, dtype=F64)
    amps = 10.0 ** (slope_db * torch.log2(k) / 20.0) * (k * f0 < _TOP_HZ)
    partials = amps[:, None] * torch.sin(2 * math.pi * f0 * k[:, None] * sample_times(n) + phases[:, None])
    return partials.sum(0) * random_envelope(n, gen)


def _event_tremolo(n: int, gen: torch.Generator) -> Tensor:
    """A tone with 4-12 Hz amplitude modulation."""
    freq = log_uniform(gen, 200.0, 3000.0)
    rate = uniform(gen, 4.0, 12.0)
    depth = uniform(gen, 0.5, 1.0)
    lfo_phase = uniform(gen, 0.0, 2 * math.pi)
    t = sample_times(n)
    gain = 1.0 - depth * 0.5 * (1.0 - torch.cos(2 * math.pi * rate * t + lfo_phase))
    env = random_envelope(n, gen, max_attack_s=0.05, decay=False)
    return torch.sin(2 * math.pi * freq * t) * gain * env


def _event_vibrato(n: int, gen: torch.Generator) -> Tensor:
    """A tone (with 0-2 overtones) with 4-8 Hz frequency modulation of 2-8 %."""
    centre = log_uniform(gen, 250.0, 2500.0)
    rate = uniform(gen, 4.0, 8.0)
    depth = uniform(gen, 0.02, 0.08)  # peak deviation as a fraction of the centre
    lfo_phase = uniform(gen, 0.0, 2 * math.pi)
    count = randint(gen, 1, 3)
    t = sample_times(n)
    phase = 2 * math.pi * centre * t + depth * centre / rate * torch.sin(2 * math.pi * rate * t + lfo_phase)
    k = torch.arange(1, count + 1, dtype=F64)
    amps = 0.5 ** (k - 1) * (k * centre * (1 + depth) < _TOP_HZ)
    partials = (amps[:, None] * torch.sin(k[:, None] * phase)).sum(0)
    return partials * random_envelope(n, gen, max_attack_s=0.08, decay=False)


def _event_siren(n: int, gen: torch.Generator) -> Tensor:
    """A tone sweeping slowly up and down (sine or triangle LFO) over a wide range."""
    f_low = log_uniform(gen, 400.0, 1200.0)
    ratio = uniform(gen, 1.4, 2.5)
    rate = uniform(gen, 0.3, 3.0)
    lfo_phase = uniform(gen, 0.0, 1.0)
    triangle = uniform(gen, 0.0, 1.0) < 0.5
    count = randint(gen, 1, 3)
    cycle = torch.frac(rate * sample_times(n) + lfo_phase)
    sweep = 1.0 - (2.0 * cycle - 1.0).abs() if triangle else 0.5 - 0.5 * torch.cos(2 * math.pi * cycle)
    freq = f_low * ratio**sweep
    phase = 2 * math.pi * torch.cumsum(freq, 0) / SAMPLE_RATE
    k = torch.arange(1, count + 1, dtype=F64)
    amps = 0.6 ** (k - 1) * (k * f_low * ratio < _TOP_HZ)
    partials = (amps[:, None] * torch.sin(k[:, None] * phase)).sum(0)
    return partials * random_envelope(n, gen, max_attack_s=0.1, decay=False)


def _struck(
    n: int, gen: torch.Generator, times: Tensor, amps: Tensor, freqs: Tensor, decays: Tensor,
    ring: float, level_floor: float, contact: float, contact_s: float,
) -> Tensor:
    """Hits at ``times`` (seconds) scaled by ``amps``, each ringing the modes ``freqs``
    (Hz) with ``decays`` (seconds) at random levels from ``level_floor`` to 1, for ``ring``
    times the longest decay. A broadband contact transient (noise at ``contact`` of the
    modes' scale, decaying in ``contact_s`` seconds) starts every hit."""
    length = min(n, int(ring * float(decays.max()) * SAMPLE_RATE) + 1)
    kernel = damped_modes(length, freqs, decays, level_floor + (1.0 - level_floor) * rand(gen, freqs.numel()))
    t = sample_times(length)
    kernel = kernel + contact * randn(gen, length) * torch.exp(-t / contact_s)
    return place(n, (times * SAMPLE_RATE).long(), amps, kernel)


def _event_knock(n: int, gen: torch.Generator) -> Tensor:
    """A few regularly spaced, short, low wooden hits (door knocking)."""
    hits = randint(gen, 2, 6)
    spacing = uniform(gen, 0.08, 0.25)
    start = uniform(gen, 0.0, min(0.15, 0.5 * n / SAMPLE_RATE))
    times = start + spacing * torch.arange(hits, dtype=F64) * (1.0 + 0.08 * randn(gen, hits)).clamp(0.8, 1.2)
    amps = uniform(gen, 0.6, 1.0) ** torch.arange(hits, dtype=F64) * (0.8 + 0.2 * rand(gen, hits))
    modes = randint(gen, 2, 3)
    freqs = log_uniform_tensor(gen, 80.0, 900.0, modes)
    decays = log_uniform_tensor(gen, 0.015, 0.08, modes)
    # A sub-millisecond contact transient in front of the ringing.
    return _struck(n, gen, times, amps, freqs, decays, ring=5, level_floor=0.3, contact=0.3, contact_s=0.0008)


def _event_impact(n: int, gen: torch.Generator) -> Tensor:
    """One metallic strike (maybe with a bounce): inharmonic, long-ringing modes."""
    start = uniform(gen, 0.0, min(0.2, 0.5 * n / SAMPLE_RATE))
    bounce = uniform(gen, 0.0, 1.0) < 0.5
    times = torch.tensor([start, start + uniform(gen, 0.03, 0.15)], dtype=F64)
    amps = torch.tensor([1.0, uniform(gen, 0.2, 0.6) if bounce else 0.0], dtype=F64)
    modes = randint(gen, 3, 6)
    freqs = log_uniform_tensor(gen, 300.0, 6000.0, modes)
    # Higher modes lose energy faster, as in struck plates and bars.
    decays = log_uniform_tensor(gen, 0.1, 1.0, modes)
    decays = decays * (1000.0 / freqs).sqrt().clamp(0.3, 1.5)
    return _struck(n, gen, times, amps, freqs, decays, ring=4, level_floor=0.2, contact=0.5, contact_s=0.002)


def _event_bird_trill(n: int, gen: torch.Generator) -> Tensor:
    """Fast repeated frequency-modulated syllables, high in the spectrum."""
    rate = uniform(gen, 8.0, 25.0)
    duty = uniform(gen, 0.4, 0.8)
    centre = log_uniform(gen, 2000.0, 5000.0)
    sweep_oct = uniform(gen, 0.2, 1.0) * (1.0 if uniform(gen, 0.0, 1.0) < 0.5 else -1.0)
    drift_oct = uniform(gen, -0.3, 0.3)
    offset = uniform(gen, 0.1, 0.9) * duty  # the first sample lies inside a syllable
    t = sample_times(n)
    cycle = torch.frac(rate * t + offset)
    within = (cycle / duty).clamp(max=1.0)
    freq = centre * 2.0 ** (sweep_oct * (0.5 - within) + drift_oct * t / max(t[-1].item(), 1e-3))
    freq = freq.clamp(max=_TOP_HZ)
    phase = 2 * math.pi * torch.cumsum(freq, 0) / SAMPLE_RATE
    syllable_env = torch.where(cycle < duty, torch.sin(math.pi * within) ** 2, torch.zeros_like(t))
    return torch.sin(phase) * syllable_env * random_envelope(n, gen, max_attack_s=0.05, decay=False)


def _event_crackle(n: int, gen: torch.Generator) -> Tensor:
    """Irregular (Poisson) bright crackles of random strength, like fire or static."""
    rate = log_uniform(gen, 50.0, 500.0)
    hits = rand(gen, n) < rate / SAMPLE_RATE
    hits[randint(gen, 0, n - 1)] = True  # never empty
    positions = hits.nonzero().squeeze(1)
    strength = 0.1 + 0.9 * rand(gen, positions.numel())
    # Each crack: a 1-5 ms decaying noise grain, high-passed to sound bright.
    length = randint(gen, 16, 80)
    grain = randn(gen, length) * torch.exp(-torch.arange(length, dtype=F64) / (0.3 * length))
    # Lead-in room so the zero-phase filter's pre-ringing does not wrap around the buffer.
    size, lead = 256, 64
    grain = F.pad(grain, (lead, size - lead - length))
    cutoff = log_uniform(gen, 500.0, 3000.0)
    spectrum = torch.fft.rfft(grain) * band_response(rfft_freqs(size), cutoff, NYQUIST, order=2)
    return place(n, positions - lead, strength, torch.fft.irfft(spectrum, n=size))


_EVENT_RECIPES: dict[str, Callable[[int, torch.Generator], Tensor]] = {
    "tone": _event_tone,
    "chirp_up": _event_chirp_up,
    "chirp_down": _event_chirp_down,
    "noise_burst": _event_noise_burst,
    "click_train": _event_click_train,
    "harmonic_stack": _event_harmonic_stack,
    "tremolo": _event_tremolo,
    "vibrato": _event_vibrato,
    "siren": _event_siren,
    "knock": _event_knock,
    "impact": _event_impact,
    "bird_trill": _event_bird_trill,
    "crackle": _event_crackle,
}

EVENT_CLASSES: tuple[str, ...] = tuple(_EVENT_RECIPES)


def synth_event(name: str, duration_s: float, generator: torch.Generator) -> Tensor:
    """One sound event of class ``name``: ``round(duration_s * SAMPLE_RATE)`` samples, peak 1.

    Class-specific parameters (frequencies, rates, bandwidths, envelopes) are drawn from
    ``generator``. Raises ``ValueError`` for an unknown class or a duration under one sample.
    """
    recipe = _EVENT_RECIPES.get(name)
    if recipe is None:
        raise ValueError(f"unknown event class {name!r}; known classes: {', '.join(EVENT_CLASSES)}")
    if not math.isfinite(duration_s):
        raise ValueError(f"duration_s must be finite, got {duration_s}")
    n = round(duration_s * SAMPLE_RATE)
    if n < 1:
        raise ValueError(f"duration_s={duration_s} is shorter than one sample")
    return peak_normalize(recipe(n, generator))
