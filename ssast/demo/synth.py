"""Deterministic dry-sound synthesizer for the built-in demo corpus.

Two families of sounds, both made from scratch (nothing is ever downloaded):

* **Events** (:func:`synth_event`): one generative recipe per class in
  :data:`EVENT_CLASSES` (tones, sweeps, filtered noise, click trains, damped resonant
  impacts, bird-like trills, ...), each with wide random parameters.
* **Speech** (:func:`synth_word`, :func:`synth_utterance`): a toy Klatt-style
  source-filter synthesizer. A Rosenberg glottal pulse train (with jitter, shimmer and
  breath noise) plus aspiration noise is shaped by a time-varying cascade of four formant
  resonators in the STFT domain; fricatives and stop bursts add band-shaped noise.
  Formant targets come from :data:`PHONEMES` and are scaled per :class:`Voice`.

Every output is a dry, mono, float32 waveform at :data:`SAMPLE_RATE`, peak-normalized to
``max |x| == 1``; loudness, background noise and placement are the caller's job. All
randomness comes from the ``torch.Generator`` passed in (never the global RNG), so a
generator seeded the same way always yields bit-identical audio. Everything is vectorized
over samples; Python loops only run over a handful of segments, harmonics or modes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "EVENT_CLASSES",
    "KEYWORDS",
    "PHONEMES",
    "SAMPLE_RATE",
    "Phoneme",
    "Voice",
    "synth_event",
    "synth_utterance",
    "synth_word",
]

SAMPLE_RATE: int = 16000  # same as ssast.audio.SAMPLE_RATE; kept local so this module is plain torch
_NYQUIST = SAMPLE_RATE / 2
_TOP_HZ = 7600.0  # highest partial we place, safely below Nyquist
_F64 = torch.float64
_N_FFT = 512  # STFT size for time-varying filtering (32 ms frames)
_HOP = 64


# --------------------------------------------------------------------------------------
# Small helpers: random draws from the explicit generator, envelopes, filtering
# --------------------------------------------------------------------------------------


def _uniform(gen: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand((), generator=gen, dtype=_F64))


def _log_uniform(gen: torch.Generator, low: float, high: float) -> float:
    return math.exp(_uniform(gen, math.log(low), math.log(high)))


def _randint(gen: torch.Generator, low: int, high: int) -> int:
    """Uniform integer in ``[low, high]`` (inclusive)."""
    return int(torch.randint(low, high + 1, (), generator=gen))


def _log_uniform_tensor(gen: torch.Generator, low: float, high: float, count: int) -> Tensor:
    return torch.exp(math.log(low) + (math.log(high) - math.log(low)) * _rand(gen, count))


def _randn(gen: torch.Generator, *shape: int) -> Tensor:
    return torch.randn(shape, generator=gen, dtype=_F64)


def _rand(gen: torch.Generator, *shape: int) -> Tensor:
    return torch.rand(shape, generator=gen, dtype=_F64)


def _time(n: int) -> Tensor:
    return torch.arange(n, dtype=_F64) / SAMPLE_RATE


def _mean(x: Tensor) -> Tensor:
    """Mean of a 1-D tensor, bit-identical for any torch thread count.

    A plain ``.sum()`` over more than ~32k elements is split across threads, and the
    partial sums change the last bits with the number of threads; row sums are not split.
    """
    chunk = 4096
    rows = F.pad(x, (0, -x.numel() % chunk)).view(-1, chunk)
    return rows.sum(1).sum() / x.numel()


def _rms(x: Tensor) -> Tensor:
    return _mean(x.square()).sqrt().clamp_min(1e-12)


def _peak_normalize(x: Tensor) -> Tensor:
    x = x.to(torch.float32)
    peak = x.abs().max()
    if not bool(torch.isfinite(peak)) or float(peak) <= 0.0:
        # Only reachable for a few samples of a sound whose first samples are silent.
        x = torch.hann_window(x.numel() + 2, periodic=False)[1:-1]
        peak = x.max()
    return x / peak


def _ar_envelope(n: int, attack: float, release: float) -> Tensor:
    """Raised-sine attack/release envelope (lengths in samples), positive at every sample."""
    attack = min(max(attack, 1.0), n / 3 + 1.0)
    release = min(max(release, 1.0), n / 3 + 1.0)
    i = torch.arange(n, dtype=_F64) + 0.5
    rise = torch.sin(0.5 * math.pi * (i / attack).clamp(max=1.0)) ** 2
    fall = torch.sin(0.5 * math.pi * ((n - i) / release).clamp(max=1.0)) ** 2
    return rise * fall


def _random_envelope(
    n: int, gen: torch.Generator, max_attack_s: float = 0.15, max_release_s: float = 0.3, decay: bool = True
) -> Tensor:
    """Attack/release envelope with random times and, optionally, an exponential decay."""
    attack = _log_uniform(gen, 0.002, max_attack_s) * SAMPLE_RATE
    release = _log_uniform(gen, 0.01, max_release_s) * SAMPLE_RATE
    env = _ar_envelope(n, attack, release)
    if decay:
        # Up to ~26 dB of decay over the event; some sounds stay flat.
        rate = _uniform(gen, 0.0, 3.0)
        env = env * torch.exp(-rate * torch.arange(n, dtype=_F64) / n)
    return env


def _rfft_freqs(n: int) -> Tensor:
    return torch.fft.rfftfreq(n, d=1.0 / SAMPLE_RATE, dtype=_F64)


def _band_response(freqs: Tensor, low: float, high: float, order: int = 4) -> Tensor:
    """Butterworth-like band-pass magnitude; ``low <= 0`` / ``high >= Nyquist`` drop that edge."""
    f = freqs.clamp_min(1e-3)
    response = torch.ones_like(f)
    if low > 0:
        response = response * torch.rsqrt(1.0 + (low / f) ** (2 * order))
    if high < _NYQUIST:
        response = response * torch.rsqrt(1.0 + (f / high) ** (2 * order))
    return response


def _band_noise(n: int, low: float, high: float, gen: torch.Generator, order: int = 4) -> Tensor:
    """White noise band-passed in the frequency domain, scaled to unit RMS.

    Long noise is filtered frame by frame (STFT) rather than with one long FFT: MKL splits
    a long 1-D FFT across threads, which changes the last bits with the thread count.
    """
    noise = _randn(gen, n)
    if n <= _N_FFT:
        spectrum = torch.fft.rfft(noise) * _band_response(_rfft_freqs(n), low, high, order)
        filtered = torch.fft.irfft(spectrum, n=n)
    else:
        window = torch.hann_window(_N_FFT, dtype=_F64)
        frames = torch.stft(noise, _N_FFT, _N_FFT // 4, window=window, return_complex=True)
        response = _band_response(_rfft_freqs(_N_FFT), low, high, order)
        filtered = torch.istft(frames * response[:, None], _N_FFT, _N_FFT // 4, window=window, length=n)
    return filtered / _rms(filtered)


def _place(n: int, positions: Tensor, amps: Tensor, kernel: Tensor) -> Tensor:
    """Copies of ``kernel`` scaled by ``amps`` starting at ``positions``, cut to ``n`` samples.

    A scatter-add rather than an FFT convolution: exact, and independent of thread count.
    """
    index = positions[:, None] + torch.arange(kernel.numel())
    values = amps[:, None] * kernel
    inside = (index >= 0) & (index < n)
    return torch.zeros(n, dtype=_F64).index_add_(0, index[inside], values[inside])


def _damped_modes(length: int, freqs: Tensor, decays_s: Tensor, amps: Tensor) -> Tensor:
    """Sum of exponentially decaying cosines (resonant modes), one row per mode."""
    t = _time(length)
    modes = amps[:, None] * torch.exp(-t / decays_s[:, None]) * torch.cos(2 * math.pi * freqs[:, None] * t)
    return modes.sum(0)


# --------------------------------------------------------------------------------------
# Sound events
# --------------------------------------------------------------------------------------


def _event_tone(n: int, gen: torch.Generator) -> Tensor:
    """A pure tone (200 Hz-4 kHz) under a random attack/decay envelope."""
    freq = _log_uniform(gen, 200.0, 4000.0)
    phase = _uniform(gen, 0.0, 2 * math.pi)
    return torch.sin(2 * math.pi * freq * _time(n) + phase) * _random_envelope(n, gen)


def _log_sweep(n: int, f_start: float, f_end: float) -> Tensor:
    """Phase of an exponential sweep from ``f_start`` to ``f_end`` over ``n`` samples (closed form)."""
    t = _time(n)
    span = max(n / SAMPLE_RATE, 1.0 / SAMPLE_RATE)
    ratio = math.log(f_end / f_start)
    return 2 * math.pi * f_start * span / ratio * (torch.exp(ratio * t / span) - 1.0)


def _chirp(n: int, gen: torch.Generator, upward: bool) -> Tensor:
    """An exponential sweep over 1-3 octaves between 150 Hz and 7 kHz."""
    f_low = _log_uniform(gen, 150.0, 1500.0)
    f_high = min(f_low * 2.0 ** _uniform(gen, 1.0, 3.0), 7000.0)
    start, end = (f_low, f_high) if upward else (f_high, f_low)
    env = _random_envelope(n, gen, max_attack_s=0.03, max_release_s=0.1, decay=False)
    return torch.sin(_log_sweep(n, start, end)) * env


def _event_chirp_up(n: int, gen: torch.Generator) -> Tensor:
    return _chirp(n, gen, upward=True)


def _event_chirp_down(n: int, gen: torch.Generator) -> Tensor:
    return _chirp(n, gen, upward=False)


def _event_noise_burst(n: int, gen: torch.Generator) -> Tensor:
    """Noise band-passed around a random centre with a random width (0.3-2.5 octaves)."""
    centre = _log_uniform(gen, 300.0, 6000.0)
    half_width = 0.5 * _uniform(gen, 0.3, 2.5)  # octaves
    low, high = centre * 2.0**-half_width, min(centre * 2.0**half_width, 7900.0)
    env = _random_envelope(n, gen, max_attack_s=0.05)
    return _band_noise(n, low, high, gen) * env


def _event_click_train(n: int, gen: torch.Generator) -> Tensor:
    """Near-periodic clicks (5-40 per second), each ringing a small resonator."""
    rate = _uniform(gen, 5.0, 40.0)
    period = 1.0 / rate
    count = int(n / SAMPLE_RATE * rate) + 2
    # Slightly irregular spacing; the first click always lands inside the clip.
    intervals = period * (1.0 + 0.05 * _randn(gen, count)).clamp(0.7, 1.3)
    first = _uniform(gen, 0.0, min(period, n / SAMPLE_RATE))
    times = first + torch.cumsum(intervals, 0) - intervals[0]
    amps = 0.7 + 0.3 * _rand(gen, count)
    # Each click rings a small resonator (like a clicking mechanism or a ticking clock).
    freqs = _log_uniform_tensor(gen, 400.0, 5000.0, 1)
    decays = _log_uniform_tensor(gen, 0.002, 0.015, 1)
    length = min(n, int(6 * float(decays.max()) * SAMPLE_RATE) + 1)
    kernel = _damped_modes(length, freqs, decays, torch.ones(1, dtype=_F64))
    return _place(n, (times * SAMPLE_RATE).long(), amps, kernel)


def _event_harmonic_stack(n: int, gen: torch.Generator) -> Tensor:
    """5-15 harmonics of a random F0 with a random spectral slope."""
    f0 = _log_uniform(gen, 80.0, 600.0)
    count = _randint(gen, 5, 15)
    slope_db = _uniform(gen, -15.0, -2.0)  # per octave
    phases = 2 * math.pi * _rand(gen, count)
    k = torch.arange(1, count + 1, dtype=_F64)
    amps = 10.0 ** (slope_db * torch.log2(k) / 20.0) * (k * f0 < _TOP_HZ)
    partials = amps[:, None] * torch.sin(2 * math.pi * f0 * k[:, None] * _time(n) + phases[:, None])
    return partials.sum(0) * _random_envelope(n, gen)


def _event_tremolo(n: int, gen: torch.Generator) -> Tensor:
    """A tone with 4-12 Hz amplitude modulation."""
    freq = _log_uniform(gen, 200.0, 3000.0)
    rate = _uniform(gen, 4.0, 12.0)
    depth = _uniform(gen, 0.5, 1.0)
    lfo_phase = _uniform(gen, 0.0, 2 * math.pi)
    t = _time(n)
    gain = 1.0 - depth * 0.5 * (1.0 - torch.cos(2 * math.pi * rate * t + lfo_phase))
    env = _random_envelope(n, gen, max_attack_s=0.05, decay=False)
    return torch.sin(2 * math.pi * freq * t) * gain * env


def _event_vibrato(n: int, gen: torch.Generator) -> Tensor:
    """A tone (with 0-2 overtones) with 4-8 Hz frequency modulation of 2-8 %."""
    centre = _log_uniform(gen, 250.0, 2500.0)
    rate = _uniform(gen, 4.0, 8.0)
    depth = _uniform(gen, 0.02, 0.08)  # peak deviation as a fraction of the centre
    lfo_phase = _uniform(gen, 0.0, 2 * math.pi)
    count = _randint(gen, 1, 3)
    t = _time(n)
    phase = 2 * math.pi * centre * t + depth * centre / rate * torch.sin(2 * math.pi * rate * t + lfo_phase)
    k = torch.arange(1, count + 1, dtype=_F64)
    amps = 0.5 ** (k - 1) * (k * centre * (1 + depth) < _TOP_HZ)
    partials = (amps[:, None] * torch.sin(k[:, None] * phase)).sum(0)
    return partials * _random_envelope(n, gen, max_attack_s=0.08, decay=False)


def _event_siren(n: int, gen: torch.Generator) -> Tensor:
    """A tone sweeping slowly up and down (sine or triangle LFO) over a wide range."""
    f_low = _log_uniform(gen, 400.0, 1200.0)
    ratio = _uniform(gen, 1.4, 2.5)
    rate = _uniform(gen, 0.3, 3.0)
    lfo_phase = _uniform(gen, 0.0, 1.0)
    triangle = _uniform(gen, 0.0, 1.0) < 0.5
    count = _randint(gen, 1, 3)
    cycle = torch.frac(rate * _time(n) + lfo_phase)
    sweep = 1.0 - (2.0 * cycle - 1.0).abs() if triangle else 0.5 - 0.5 * torch.cos(2 * math.pi * cycle)
    freq = f_low * ratio**sweep
    phase = 2 * math.pi * torch.cumsum(freq, 0) / SAMPLE_RATE
    k = torch.arange(1, count + 1, dtype=_F64)
    amps = 0.6 ** (k - 1) * (k * f_low * ratio < _TOP_HZ)
    partials = (amps[:, None] * torch.sin(k[:, None] * phase)).sum(0)
    return partials * _random_envelope(n, gen, max_attack_s=0.1, decay=False)


def _event_knock(n: int, gen: torch.Generator) -> Tensor:
    """A few regularly spaced, short, low wooden hits (door knocking)."""
    hits = _randint(gen, 2, 6)
    spacing = _uniform(gen, 0.08, 0.25)
    start = _uniform(gen, 0.0, min(0.15, 0.5 * n / SAMPLE_RATE))
    times = start + spacing * torch.arange(hits, dtype=_F64) * (1.0 + 0.08 * _randn(gen, hits)).clamp(0.8, 1.2)
    amps = _uniform(gen, 0.6, 1.0) ** torch.arange(hits, dtype=_F64) * (0.8 + 0.2 * _rand(gen, hits))
    modes = _randint(gen, 2, 3)
    freqs = _log_uniform_tensor(gen, 80.0, 900.0, modes)
    decays = _log_uniform_tensor(gen, 0.015, 0.08, modes)
    length = min(n, int(5 * float(decays.max()) * SAMPLE_RATE) + 1)
    kernel = _damped_modes(length, freqs, decays, 0.3 + 0.7 * _rand(gen, modes))
    # A sub-millisecond broadband contact transient in front of the ringing.
    t = _time(length)
    kernel = kernel + 0.3 * _randn(gen, length) * torch.exp(-t / 0.0008)
    return _place(n, (times * SAMPLE_RATE).long(), amps, kernel)


def _event_impact(n: int, gen: torch.Generator) -> Tensor:
    """One metallic strike (maybe with a bounce): inharmonic, long-ringing modes."""
    start = _uniform(gen, 0.0, min(0.2, 0.5 * n / SAMPLE_RATE))
    bounce = _uniform(gen, 0.0, 1.0) < 0.5
    times = torch.tensor([start, start + _uniform(gen, 0.03, 0.15)], dtype=_F64)
    amps = torch.tensor([1.0, _uniform(gen, 0.2, 0.6) if bounce else 0.0], dtype=_F64)
    modes = _randint(gen, 3, 6)
    freqs = _log_uniform_tensor(gen, 300.0, 6000.0, modes)
    # Higher modes lose energy faster, as in struck plates and bars.
    decays = _log_uniform_tensor(gen, 0.1, 1.0, modes)
    decays = decays * (1000.0 / freqs).sqrt().clamp(0.3, 1.5)
    length = min(n, int(4 * float(decays.max()) * SAMPLE_RATE) + 1)
    kernel = _damped_modes(length, freqs, decays, 0.2 + 0.8 * _rand(gen, modes))
    t = _time(length)
    kernel = kernel + 0.5 * _randn(gen, length) * torch.exp(-t / 0.002)
    return _place(n, (times * SAMPLE_RATE).long(), amps, kernel)


def _event_bird_trill(n: int, gen: torch.Generator) -> Tensor:
    """Fast repeated frequency-modulated syllables, high in the spectrum."""
    rate = _uniform(gen, 8.0, 25.0)
    duty = _uniform(gen, 0.4, 0.8)
    centre = _log_uniform(gen, 2000.0, 5000.0)
    sweep_oct = _uniform(gen, 0.2, 1.0) * (1.0 if _uniform(gen, 0.0, 1.0) < 0.5 else -1.0)
    drift_oct = _uniform(gen, -0.3, 0.3)
    offset = _uniform(gen, 0.1, 0.9) * duty  # the first sample lies inside a syllable
    t = _time(n)
    cycle = torch.frac(rate * t + offset)
    within = (cycle / duty).clamp(max=1.0)
    freq = centre * 2.0 ** (sweep_oct * (0.5 - within) + drift_oct * t / max(t[-1].item(), 1e-3))
    freq = freq.clamp(max=_TOP_HZ)
    phase = 2 * math.pi * torch.cumsum(freq, 0) / SAMPLE_RATE
    syllable_env = torch.where(cycle < duty, torch.sin(math.pi * within) ** 2, torch.zeros_like(t))
    return torch.sin(phase) * syllable_env * _random_envelope(n, gen, max_attack_s=0.05, decay=False)


def _event_crackle(n: int, gen: torch.Generator) -> Tensor:
    """Irregular (Poisson) bright crackles of random strength, like fire or static."""
    rate = _log_uniform(gen, 50.0, 500.0)
    hits = _rand(gen, n) < rate / SAMPLE_RATE
    hits[_randint(gen, 0, n - 1)] = True  # never empty
    positions = hits.nonzero().squeeze(1)
    strength = 0.1 + 0.9 * _rand(gen, positions.numel())
    # Each crack: a 1-5 ms decaying noise grain, high-passed to sound bright.
    length = _randint(gen, 16, 80)
    grain = _randn(gen, length) * torch.exp(-torch.arange(length, dtype=_F64) / (0.3 * length))
    # Lead-in room so the zero-phase filter's pre-ringing does not wrap around the buffer.
    size, lead = 256, 64
    grain = F.pad(grain, (lead, size - lead - length))
    cutoff = _log_uniform(gen, 500.0, 3000.0)
    spectrum = torch.fft.rfft(grain) * _band_response(_rfft_freqs(size), cutoff, _NYQUIST, order=2)
    return _place(n, positions - lead, strength, torch.fft.irfft(spectrum, n=size))


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
    return _peak_normalize(recipe(n, generator))


# --------------------------------------------------------------------------------------
# Speech: phoneme inventory
# --------------------------------------------------------------------------------------

Formants = tuple[float, ...]  # (F1, F2, F3, F4) or their bandwidths, in Hz

_VOWEL_BW: Formants = (80.0, 100.0, 140.0, 220.0)
_GLIDE_BW: Formants = (80.0, 110.0, 150.0, 250.0)
_NASAL_BW: Formants = (100.0, 150.0, 200.0, 250.0)


@dataclass(frozen=True)
class Phoneme:
    """Acoustic targets of one phoneme for a reference (adult male, ``vtl_factor=1``) tract.

    ``formants`` are the F1-F4 targets (Hz) the formant tracks move towards; for consonants
    they are loci that shape the transitions into neighbouring vowels. ``None`` (``hh``)
    means "whatever the neighbours have" (aspiration through the next vowel's tract).
    Stops are closure + burst + voice-onset time; ``duration_s`` is their closure.
    """

    kind: str  # "vowel" | "approximant" | "nasal" | "fricative" | "aspirate" | "stop"
    duration_s: float
    formants: Formants | None
    bandwidths: Formants = _VOWEL_BW
    glide_to: Formants | None = None  # diphthong end target
    voicing: float = 0.0  # glottal source level (voice bar level for voiced stops)
    aspiration: float = 0.0  # noise through the formant filter (h, stop aspiration)
    frication: float = 0.0  # RMS of the band-shaped noise (relative to vowels)
    frication_band: tuple[float, float] = (0.0, 0.0)  # Hz, for fricatives and stop bursts
    nasal_zero_hz: float = 0.0  # antiformant of nasals (0: oral)
    burst_s: float = 0.0
    vot_s: float = 0.0  # voice-onset time after the burst (aspirated for voiceless stops)


def _vowel(f: Formants, dur: float, glide_to: Formants | None = None) -> Phoneme:
    return Phoneme("vowel", dur, f, _VOWEL_BW, glide_to=glide_to, voicing=1.0)


def _approximant(f: Formants, dur: float = 0.07) -> Phoneme:
    return Phoneme("approximant", dur, f, _GLIDE_BW, voicing=0.8)


def _nasal(f2: float, zero: float) -> Phoneme:
    return Phoneme("nasal", 0.08, (270.0, f2, 2500.0, 3400.0), _NASAL_BW, voicing=0.5, nasal_zero_hz=zero)


def _fricative(locus: Formants, band: tuple[float, float], level: float, dur: float, voiced: bool) -> Phoneme:
    # Voiced fricatives have weaker frication (the glottis is partly closed) plus voicing.
    return Phoneme(
        "fricative",
        dur,
        locus,
        _GLIDE_BW,
        voicing=0.45 if voiced else 0.0,
        frication=level * (0.6 if voiced else 1.0),
        frication_band=band,
    )


def _stop(
    locus: Formants, band: tuple[float, float], level: float, closure: float, burst: float, voiced: bool
) -> Phoneme:
    return Phoneme(
        "stop",
        closure,
        locus,
        _GLIDE_BW,
        voicing=0.12 if voiced else 0.0,
        aspiration=0.0 if voiced else 0.7,
        frication=level * (0.7 if voiced else 1.0),
        frication_band=band,
        burst_s=burst,
        vot_s=0.012 if voiced else 0.05,
    )


# Vowel formants (Hz): Peterson & Barney adult-male averages; F4 approximate.
PHONEMES: dict[str, Phoneme] = {
    "iy": _vowel((270.0, 2290.0, 3010.0, 3700.0), 0.20),
    "ih": _vowel((390.0, 1990.0, 2550.0, 3600.0), 0.14),
    "ey": _vowel((480.0, 1900.0, 2500.0, 3600.0), 0.22, glide_to=(330.0, 2200.0, 2800.0, 3700.0)),
    "eh": _vowel((530.0, 1840.0, 2480.0, 3500.0), 0.16),
    "ae": _vowel((660.0, 1720.0, 2410.0, 3500.0), 0.21),
    "ah": _vowel((620.0, 1190.0, 2390.0, 3500.0), 0.15),
    "aa": _vowel((730.0, 1090.0, 2440.0, 3500.0), 0.21),
    "ao": _vowel((570.0, 840.0, 2410.0, 3400.0), 0.21),
    "uh": _vowel((440.0, 1020.0, 2240.0, 3400.0), 0.14),
    "uw": _vowel((300.0, 870.0, 2240.0, 3400.0), 0.20),
    "er": _vowel((490.0, 1350.0, 1690.0, 3300.0), 0.20),
    "ax": _vowel((500.0, 1500.0, 2500.0, 3500.0), 0.08),
    "ay": _vowel((730.0, 1090.0, 2440.0, 3500.0), 0.26, glide_to=(390.0, 1990.0, 2550.0, 3600.0)),
    "aw": _vowel((730.0, 1090.0, 2440.0, 3500.0), 0.26, glide_to=(400.0, 900.0, 2300.0, 3400.0)),
    "ow": _vowel((570.0, 900.0, 2400.0, 3400.0), 0.24, glide_to=(330.0, 800.0, 2250.0, 3400.0)),
    "y": _approximant((260.0, 2200.0, 3050.0, 3700.0)),
    "w": _approximant((300.0, 650.0, 2200.0, 3300.0)),
    "r": _approximant((350.0, 1100.0, 1550.0, 3200.0)),
    "l": _approximant((360.0, 1000.0, 2600.0, 3400.0)),
    "m": _nasal(1100.0, 900.0),
    "n": _nasal(1500.0, 1600.0),
    "ng": _nasal(2000.0, 2600.0),
    "s": _fricative((300.0, 1700.0, 2700.0, 3500.0), (3800.0, 7800.0), 0.35, 0.14, voiced=False),
    "z": _fricative((300.0, 1700.0, 2700.0, 3500.0), (3800.0, 7800.0), 0.35, 0.11, voiced=True),
    "sh": _fricative((300.0, 1900.0, 2500.0, 3500.0), (2200.0, 6000.0), 0.45, 0.14, voiced=False),
    "zh": _fricative((300.0, 1900.0, 2500.0, 3500.0), (2200.0, 6000.0), 0.45, 0.10, voiced=True),
    "f": _fricative((300.0, 1000.0, 2300.0, 3400.0), (900.0, 7800.0), 0.1, 0.12, voiced=False),
    "v": _fricative((300.0, 1000.0, 2300.0, 3400.0), (900.0, 7800.0), 0.1, 0.08, voiced=True),
    "th": _fricative((300.0, 1400.0, 2600.0, 3500.0), (1400.0, 7800.0), 0.08, 0.11, voiced=False),
    "dh": _fricative((300.0, 1400.0, 2600.0, 3500.0), (1400.0, 7800.0), 0.08, 0.06, voiced=True),
    "hh": Phoneme("aspirate", 0.08, None, _VOWEL_BW, aspiration=0.3),
    "p": _stop((220.0, 800.0, 2200.0, 3400.0), (200.0, 2000.0), 0.3, 0.065, 0.008, voiced=False),
    "b": _stop((220.0, 800.0, 2200.0, 3400.0), (200.0, 2000.0), 0.3, 0.05, 0.008, voiced=True),
    "t": _stop((220.0, 1800.0, 2700.0, 3500.0), (3000.0, 7500.0), 0.5, 0.055, 0.012, voiced=False),
    "d": _stop((220.0, 1800.0, 2700.0, 3500.0), (3000.0, 7500.0), 0.5, 0.045, 0.012, voiced=True),
    "k": _stop((220.0, 1900.0, 2400.0, 3400.0), (1500.0, 3500.0), 0.45, 0.06, 0.016, voiced=False),
    "g": _stop((220.0, 1900.0, 2400.0, 3400.0), (1500.0, 3500.0), 0.45, 0.05, 0.016, voiced=True),
}

# Speech-Commands-like keywords in rough ARPAbet-style approximations.
KEYWORDS: dict[str, tuple[str, ...]] = {
    "yes": ("y", "eh", "s"),
    "no": ("n", "ow"),
    "up": ("ah", "p"),
    "down": ("d", "aw", "n"),
    "left": ("l", "eh", "f", "t"),
    "right": ("r", "ay", "t"),
    "on": ("aa", "n"),
    "off": ("ao", "f"),
    "stop": ("s", "t", "aa", "p"),
    "go": ("g", "ow"),
    "zero": ("z", "iy", "r", "ow"),
    "one": ("w", "ah", "n"),
    "two": ("t", "uw"),
    "three": ("th", "r", "iy"),
    "four": ("f", "ao", "r"),
    "five": ("f", "ay", "v"),
    "six": ("s", "ih", "k", "s"),
    "seven": ("s", "eh", "v", "ax", "n"),
    "eight": ("ey", "t"),
    "nine": ("n", "ay", "n"),
    "bed": ("b", "eh", "d"),
    "bird": ("b", "er", "d"),
    "cat": ("k", "ae", "t"),
    "dog": ("d", "ao", "g"),
    "happy": ("hh", "ae", "p", "iy"),
    "house": ("hh", "aw", "s"),
    "tree": ("t", "r", "iy"),
    "wow": ("w", "aw"),
    "sheila": ("sh", "iy", "l", "ax"),
    "marvin": ("m", "aa", "r", "v", "ih", "n"),
    "learn": ("l", "er", "n"),
    "follow": ("f", "aa", "l", "ow"),
    "forward": ("f", "ao", "r", "w", "er", "d"),
    "backward": ("b", "ae", "k", "w", "er", "d"),
    "visual": ("v", "ih", "zh", "uw", "ax", "l"),
}


# --------------------------------------------------------------------------------------
# Speech: voices
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Voice:
    """A speaker: glottal source and vocal-tract settings. Defaults: a neutral adult male."""

    f0_hz: float = 120.0  # mean fundamental frequency
    vtl_factor: float = 1.0  # formant scale ~ reference / speaker tract length (>1: shorter tract)
    intonation_st: float = 1.5  # depth of the slow F0 contour, in semitones
    jitter: float = 0.01  # per-period relative F0 perturbation (std)
    shimmer: float = 0.04  # per-period relative amplitude perturbation (std)
    breathiness: float = 0.1  # aspiration noise mixed into voicing, relative to the pulses
    open_quotient: float = 0.6  # open fraction of each glottal cycle (higher: softer, breathier)
    spectral_tilt_db: float = 2.0  # extra high-frequency roll-off of the source, ~dB per octave
    speaking_rate: float = 1.0  # >1 speaks faster (segment durations are divided by it)
    bandwidth_scale: float = 1.0  # formant bandwidth multiplier (damping of the tract)

    def __post_init__(self) -> None:
        for name in ("f0_hz", "vtl_factor", "speaking_rate", "bandwidth_scale"):
            if not getattr(self, name) > 0:
                raise ValueError(f"Voice.{name} must be positive, got {getattr(self, name)}")
        for name in ("intonation_st", "jitter", "shimmer", "breathiness", "spectral_tilt_db"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"Voice.{name} must be non-negative, got {getattr(self, name)}")
        if not 0.1 <= self.open_quotient <= 0.95:
            raise ValueError(f"Voice.open_quotient must be in [0.1, 0.95], got {self.open_quotient}")

    @classmethod
    def random(cls, generator: torch.Generator) -> Voice:
        """A random adult-male, adult-female or child-like voice (F0 ~80-300 Hz, VTL ~0.8-1.25)."""
        kind = _uniform(generator, 0.0, 1.0)
        if kind < 0.4:  # adult male
            f0, vtl = _log_uniform(generator, 80.0, 160.0), _uniform(generator, 0.8, 1.02)
        elif kind < 0.8:  # adult female
            f0, vtl = _log_uniform(generator, 150.0, 260.0), _uniform(generator, 1.0, 1.18)
        else:  # child
            f0, vtl = _log_uniform(generator, 210.0, 300.0), _uniform(generator, 1.12, 1.25)
        return cls(
            f0_hz=f0,
            vtl_factor=vtl,
            intonation_st=_uniform(generator, 0.5, 3.0),
            jitter=_uniform(generator, 0.003, 0.02),
            shimmer=_uniform(generator, 0.01, 0.08),
            breathiness=_uniform(generator, 0.02, 0.35),
            open_quotient=_uniform(generator, 0.4, 0.75),
            spectral_tilt_db=_uniform(generator, 0.0, 5.0),
            speaking_rate=_uniform(generator, 0.8, 1.25),
            bandwidth_scale=_uniform(generator, 0.8, 1.4),
        )


# --------------------------------------------------------------------------------------
# Speech: synthesis
# --------------------------------------------------------------------------------------

_EDGE_PAD_S = 0.02  # silence around each word so the resonators can ring out


@dataclass(frozen=True)
class _Segment:
    """A stretch with constant source settings; ``anchors`` are (fraction, F1-F4, B1-B4) targets."""

    n: int
    voicing: float = 0.0
    aspiration: float = 0.0
    frication: float = 0.0
    band: tuple[float, float] = (0.0, 0.0)
    burst: bool = False
    gate: float = 1.0  # 0 silences the output (closures, edges) despite filter ringing
    nasal_zero: float = 0.0
    anchors: tuple[tuple[float, Formants, Formants], ...] = ()


def _plan_segments(phones: Sequence[str], voice: Voice, gen: torch.Generator) -> list[_Segment]:
    """Turn phonemes into timed segments with per-call jitter and formant perturbations."""
    count = len(phones)
    timing = 0.8 + 0.4 * _rand(gen, count)  # +-20 % on every phoneme's duration
    formant_jitter = (1.0 + 0.03 * _randn(gen, count, 4)).clamp(0.9, 1.1)
    vtl, bw_scale = voice.vtl_factor, voice.bandwidth_scale

    def samples(seconds: float, i: int) -> int:
        return max(1, round(seconds * float(timing[i]) / voice.speaking_rate * SAMPLE_RATE))

    def scaled(f: Formants | None, i: int) -> Formants:
        assert f is not None, "only /hh/ lacks formant targets, and it borrows its neighbours'"
        return tuple(min(fk * vtl * float(formant_jitter[i, k]), 7000.0) for k, fk in enumerate(f))

    def band(b: tuple[float, float]) -> tuple[float, float]:
        # Smaller tracts have smaller front cavities: frication moves up with them.
        return (b[0] * vtl if b[0] > 0 else 0.0, min(b[1] * vtl, 7900.0))

    pad = round(_EDGE_PAD_S * SAMPLE_RATE)
    segments = [_Segment(pad, gate=0.0)]
    vowels_seen = 0
    for i, name in enumerate(phones):
        ph = PHONEMES[name]
        bws = tuple(b * bw_scale for b in ph.bandwidths)
        if ph.kind == "stop":
            locus = scaled(ph.formants, i)
            anchor = ((0.5, locus, bws),)
            # After /s/ English stops are unaspirated ("stop" vs "top"): short VOT, no noise.
            after_s = i > 0 and phones[i - 1] in ("s", "sh")
            vot = 0.012 if after_s else ph.vot_s
            segments += [
                _Segment(
                    samples(ph.duration_s, i), voicing=ph.voicing, gate=1.0 if ph.voicing else 0.0, anchors=anchor
                ),
                _Segment(
                    samples(ph.burst_s, i),
                    frication=ph.frication,
                    band=band(ph.frication_band),
                    burst=True,
                    anchors=((0.0, locus, bws),),
                ),
                _Segment(samples(vot, i), aspiration=0.0 if after_s else ph.aspiration),
            ]
            continue
        n = samples(ph.duration_s, i)
        if ph.kind == "vowel":
            vowels_seen += 1
            stressed = vowels_seen == 1
            if not stressed:  # later syllables: shorter and softer
                n = max(1, round(n * 0.75))
            target = scaled(ph.formants, i)
            end = scaled(ph.glide_to, i) if ph.glide_to else target
            anchors: tuple[tuple[float, Formants, Formants], ...] = (
                (0.25, target, bws),
                (0.8 if ph.glide_to else 0.7, end, bws),
            )
            segments.append(_Segment(n, voicing=ph.voicing * (1.0 if stressed else 0.7), anchors=anchors))
        elif ph.kind == "aspirate":
            segments.append(_Segment(n, aspiration=ph.aspiration))  # no anchors: takes the next vowel's tract
        else:
            anchors = ((0.5, scaled(ph.formants, i), bws),)
            segments.append(
                _Segment(
                    n,
                    voicing=ph.voicing,
                    frication=ph.frication,
                    band=band(ph.frication_band),
                    nasal_zero=ph.nasal_zero_hz * vtl,
                    anchors=anchors,
                )
            )
    segments.append(_Segment(pad, gate=0.0))
    return segments


def _box(x: Tensor, width: int) -> Tensor:
    """Moving average of ``width`` samples along the last dimension, edges replicated."""
    padded = F.pad(x.reshape(-1, 1, x.shape[-1]), ((width - 1) // 2, width // 2), mode="replicate").squeeze(1)
    sums = F.pad(torch.cumsum(padded, -1), (1, 0))
    return ((sums[:, width:] - sums[:, :-width]) / width).reshape(x.shape)


def _smooth(x: Tensor, width: int) -> Tensor:
    """Triangular moving average (~``width`` samples wide) along the last dimension.

    Two running means via cumulative sums: O(n), unlike a float64 ``conv1d``.
    """
    half = (width + 1) // 2
    if half <= 1:
        return x
    return _box(_box(x, half), half)


def _interp(x: Tensor, xp: Tensor, fp: Tensor) -> Tensor:
    """Piecewise-linear interpolation of rows ``fp[j]`` at ``xp[j]``, held constant outside."""
    if xp.numel() == 1:
        return fp.expand(x.numel(), -1)
    right = torch.searchsorted(xp, x).clamp(1, xp.numel() - 1)
    left = right - 1
    w = ((x - xp[left]) / (xp[right] - xp[left]).clamp_min(1e-9)).clamp(0.0, 1.0)
    return fp[left] + w[:, None] * (fp[right] - fp[left])


def _cosine_contour(n: int, step: int, gen: torch.Generator) -> Tensor:
    """A smooth random curve: standard-normal control points every ``step`` samples, cosine-blended."""
    points = _randn(gen, n // step + 2)
    pos = torch.arange(n, dtype=_F64) / step
    i = pos.long()
    w = 0.5 - 0.5 * torch.cos(math.pi * (pos - i))
    return points[i] * (1 - w) + points[i + 1] * w


def _glottal_source(n: int, voice: Voice, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """Differentiated Rosenberg pulse train (unit RMS) and pitch-synchronous breath noise."""
    # Mean-free intonation (random contour + declination) keeps the average F0 at the voice's.
    contour = voice.intonation_st * _cosine_contour(n, int(0.15 * SAMPLE_RATE), gen)
    contour = contour - _uniform(gen, 0.0, 3.0) * torch.linspace(0.0, 1.0, n, dtype=_F64)
    semitones = contour - _mean(contour) + 0.3 * float(_randn(gen, 1))  # ~+-0.3 st per call
    f0 = voice.f0_hz * 2.0 ** (semitones / 12.0)

    # Jitter and shimmer are constant within each glottal period, so index them by period.
    periods = int(float(_mean(f0)) * n / SAMPLE_RATE * 1.5) + 3
    period_index = (torch.cumsum(f0, 0) / SAMPLE_RATE).long()
    jitter = (1.0 + voice.jitter * _randn(gen, periods)).clamp(0.8, 1.2)
    phase = torch.cumsum(f0 * jitter[period_index], 0) / SAMPLE_RATE
    shimmer = (1.0 + voice.shimmer * _randn(gen, periods)).clamp(0.5, 1.5)

    # Rosenberg pulse on the phase fraction: raised-cosine opening, quarter-cosine closing.
    frac = torch.frac(phase)
    rise_end = 0.85 * voice.open_quotient  # a brisk closure keeps the upper harmonics
    opening = 0.5 - 0.5 * torch.cos(math.pi * frac / rise_end)
    closing = torch.cos(0.5 * math.pi * (frac - rise_end) / (voice.open_quotient - rise_end))
    flow = torch.where(frac < rise_end, opening, torch.where(frac < voice.open_quotient, closing, 0.0))
    flow = flow * shimmer[phase.long().clamp(max=periods - 1)]
    pulses = torch.diff(flow, prepend=flow[:1])  # lip radiation ~ differentiation
    pulses = pulses / _rms(pulses)
    # Turbulence at the glottis is strongest while it is open.
    breath = _randn(gen, n) * (0.3 + 0.7 * flow / flow.max().clamp_min(1e-12))
    return pulses, breath


def _formant_response(freqs: Tensor, formants: Tensor, bandwidths: Tensor) -> Tensor:
    """|H(f)| of cascaded 2nd-order resonators, unit gain at DC: [frames, bins]."""
    f2 = freqs**2
    fk2 = formants[..., None] ** 2  # [frames, 4, 1]
    denominator = torch.sqrt((fk2 - f2) ** 2 + (bandwidths[..., None] * freqs) ** 2)
    return (fk2 / denominator).prod(dim=1)


def _higher_poles(freqs: Tensor, vtl_factor: float) -> Tensor:
    """Fixed resonators standing in for F5-F7, which lift the spectrum between F3 and Nyquist.

    A four-formant cascade alone is too dark above ~2 kHz (Fant's "higher-pole correction").
    """
    poles = torch.tensor([4500.0, 5500.0, 6500.0], dtype=_F64) * vtl_factor
    f2 = freqs**2
    fk2 = poles[:, None] ** 2
    response = fk2 / torch.sqrt((fk2 - f2) ** 2 + (300.0 * freqs) ** 2)
    return response.prod(0)


def _zero_pole_ratio(freqs: Tensor, zero_hz: Tensor, pole_hz: float = 250.0) -> Tensor:
    """Nasal antiformant paired with a low nasal pole: a notch at ``zero_hz`` plus a low-pass tilt."""
    f2 = freqs**2
    z2 = zero_hz[:, None] ** 2
    zero = torch.sqrt((z2 - f2) ** 2 + (150.0 * freqs) ** 2) / z2
    pole = torch.sqrt((pole_hz**2 - f2) ** 2 + (100.0 * freqs) ** 2) / pole_hz**2
    return zero / pole


def _synth_phones(phones: Sequence[str], voice: Voice, gen: torch.Generator) -> Tensor:
    """Source-filter synthesis of a phoneme sequence (unnormalized float64 waveform)."""
    segments = _plan_segments(phones, voice, gen)
    counts = torch.tensor([s.n for s in segments])
    starts = torch.cumsum(counts, 0) - counts
    n = int(counts.sum())

    # Sample-level source gains; smoothing gives ~5-10 ms onsets and offsets.
    controls = torch.tensor([[s.voicing, s.aspiration, s.gate, s.nasal_zero] for s in segments], dtype=_F64)
    per_sample = torch.repeat_interleave(controls, counts, dim=0).T  # [4, n]
    voicing, aspiration = _smooth(per_sample[:2], int(0.012 * SAMPLE_RATE))
    gate = _smooth(per_sample[2], int(0.006 * SAMPLE_RATE))

    pulses, breath = _glottal_source(n, voice, gen)
    larynx = voicing * (pulses + voice.breathiness * breath) + aspiration * _randn(gen, n)

    # Formant tracks: linear between anchor targets, then smoothed (coarticulation).
    times, formants, bandwidths = [], [], []
    for segment, start in zip(segments, starts.tolist(), strict=True):
        for fraction, f, b in segment.anchors:
            times.append(start + fraction * segment.n)
            formants.append(f)
            bandwidths.append(b)
    frames = n // _HOP + 1
    frame_pos = torch.arange(frames, dtype=_F64) * _HOP
    targets = torch.cat([torch.tensor(formants, dtype=_F64), torch.tensor(bandwidths, dtype=_F64)], dim=1)
    tracks = _interp(frame_pos, torch.tensor(times, dtype=_F64), targets)
    tracks = _smooth(tracks.T, 5).T  # 5 frames = 20 ms
    freqs = torch.fft.rfftfreq(_N_FFT, d=1.0 / SAMPLE_RATE, dtype=_F64)
    response = _formant_response(freqs, tracks[:, :4], tracks[:, 4:])

    # Nasals: blend in the antiformant by how nasal each frame is.
    zero_hz = per_sample[3][frame_pos.long().clamp(max=n - 1)]
    nasality = _smooth((zero_hz > 0).to(_F64), 3)
    if bool(nasality.any()):
        zero_hz = torch.where(zero_hz > 0, zero_hz, zero_hz.max())
        response = response * _zero_pole_ratio(freqs, zero_hz) ** nasality[:, None]
    response = response * _higher_poles(freqs, voice.vtl_factor)
    response = response * 10.0 ** (-voice.spectral_tilt_db * torch.log2(1.0 + freqs / 1000.0) / 20.0)

    window = torch.hann_window(_N_FFT, dtype=_F64)
    spectrum = torch.stft(larynx, _N_FFT, _HOP, window=window, return_complex=True)
    speech = torch.istft(spectrum * response.T, _N_FFT, _HOP, window=window, length=n)
    # Vowels at unit RMS, so the noise levels in PHONEMES are relative to them.
    voiced = voicing > 0.5
    reference = speech[voiced] if bool(voiced.any()) else speech
    speech = speech / _rms(reference)

    # Frication and bursts bypass the tract filter: band-shaped noise per segment.
    for segment, start in zip(segments, starts.tolist(), strict=True):
        if segment.frication <= 0:
            continue
        m = segment.n
        noise = _band_noise(m, *segment.band, gen)
        if segment.burst:
            # Abrupt release, then a fast decay; the 2.5 puts the burst's RMS near its nominal level.
            decay = torch.exp(-torch.arange(m, dtype=_F64) / (0.5 * m))
            env = 2.5 * _ar_envelope(m, 0.001 * SAMPLE_RATE, 1.0) * decay
        else:
            ramp = min(0.03 * SAMPLE_RATE, m / 3)
            env = _ar_envelope(m, ramp, ramp)
        speech[start : start + m] += segment.frication * noise * env
    return speech * gate


def _check_word(word: str) -> tuple[str, ...]:
    phones = KEYWORDS.get(word)
    if phones is None:
        raise ValueError(f"unknown word {word!r}; known words: {', '.join(KEYWORDS)}")
    return phones


def synth_word(word: str, voice: Voice, generator: torch.Generator) -> Tensor:
    """One spoken keyword (a key of :data:`KEYWORDS`) in ``voice``, peak-normalized.

    Segment durations are jittered by about +-20 % and formant targets and mean F0 are
    perturbed slightly on every call, so two calls differ. The length varies with the
    timing (roughly 0.3-0.9 s). Raises ``ValueError`` for an unknown word.
    """
    return _peak_normalize(_synth_phones(_check_word(word), voice, generator))


def synth_utterance(words: Sequence[str], voice: Voice, generator: torch.Generator) -> Tensor:
    """Several keywords in ``voice`` with short random pauses between them, peak-normalized.

    Pitch declines slightly from word to word and word levels vary a little, as in read
    speech. Raises ``ValueError`` for an empty sequence or an unknown word.
    """
    if isinstance(words, str):
        raise TypeError("words must be a sequence of words, not a single string")
    if len(words) == 0:
        raise ValueError("synth_utterance needs at least one word")
    for word in words:
        _check_word(word)
    pieces: list[Tensor] = []
    for i, word in enumerate(words):
        if i > 0:
            pieces.append(torch.zeros(round(_uniform(generator, 0.05, 0.3) * SAMPLE_RATE), dtype=_F64))
        spoken = replace(voice, f0_hz=voice.f0_hz * 2.0 ** (-0.4 * i / 12.0))
        word_audio = _synth_phones(KEYWORDS[word], spoken, generator)
        pieces.append(word_audio / word_audio.abs().max() * _uniform(generator, 0.6, 1.0))
    return _peak_normalize(torch.cat(pieces))
