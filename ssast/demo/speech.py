"""Spoken keywords for the demo corpus, made from scratch (nothing is ever downloaded).

:func:`synth_word` and :func:`synth_utterance` run a toy Klatt-style source-filter
synthesizer. A Rosenberg glottal pulse train (with jitter, shimmer and breath noise) plus
aspiration noise is shaped by a time-varying cascade of four formant resonators in the
STFT domain; fricatives and stop bursts add band-shaped noise. Formant targets come from
:data:`~ssast.demo.phonemes.PHONEMES`, timed by :mod:`ssast.demo.speech_plan` and scaled per
:class:`~ssast.demo.voice.Voice`. The output is what every demo synthesizer gives
(:mod:`ssast.demo.dsp`): dry, mono, float32, peak 1, and bit-identical for a generator
seeded the same way.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import Tensor

from ssast.demo.dsp import F64, N_FFT, SAMPLE_RATE, ar_envelope, band_noise, mean, peak_normalize, randn, rms, uniform
from ssast.demo.phonemes import KEYWORDS
from ssast.demo.speech_plan import plan_segments
from ssast.demo.voice import Voice

_HOP = 64  # STFT hop of the time-varying tract filter (4 ms)


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
    points = randn(gen, n // step + 2)
    pos = torch.arange(n, dtype=F64) / step
    i = pos.long()
    w = 0.5 - 0.5 * torch.cos(math.pi * (pos - i))
    return points[i] * (1 - w) + points[i + 1] * w


def _glottal_source(n: int, voice: Voice, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """Differentiated Rosenberg pulse train (unit RMS) and pitch-synchronous breath noise."""
    # Mean-free intonation (random contour + declination) keeps the average F0 at the voice's.
    contour = voice.intonation_st * _cosine_contour(n, int(0.15 * SAMPLE_RATE), gen)
    contour = contour - uniform(gen, 0.0, 3.0) * torch.linspace(0.0, 1.0, n, dtype=F64)
    semitones = contour - mean(contour) + 0.3 * float(randn(gen, 1))  # ~+-0.3 st per call
    f0 = voice.f0_hz * 2.0 ** (semitones / 12.0)

    # Jitter and shimmer are constant within each glottal period, so index them by period.
    periods = int(float(mean(f0)) * n / SAMPLE_RATE * 1.5) + 3
    period_index = (torch.cumsum(f0, 0) / SAMPLE_RATE).long()
    jitter = (1.0 + voice.jitter * randn(gen, periods)).clamp(0.8, 1.2)
    phase = torch.cumsum(f0 * jitter[period_index], 0) / SAMPLE_RATE
    shimmer = (1.0 + voice.shimmer * randn(gen, periods)).clamp(0.5, 1.5)

    # Rosenberg pulse on the phase fraction: raised-cosine opening, quarter-cosine closing.
    frac = torch.frac(phase)
    rise_end = 0.85 * voice.open_quotient  # a brisk closure keeps the upper harmonics
    opening = 0.5 - 0.5 * torch.cos(math.pi * frac / rise_end)
    closing = torch.cos(0.5 * math.pi * (frac - rise_end) / (voice.open_quotient - rise_end))
    flow = torch.where(frac < rise_end, opening, torch.where(frac < voice.open_quotient, closing, 0.0))
    flow = flow * shimmer[phase.long().clamp(max=periods - 1)]
    pulses = torch.diff(flow, prepend=flow[:1])  # lip radiation ~ differentiation
    pulses = pulses / rms(pulses)
    # Turbulence at the glottis is strongest while it is open.
    breath = randn(gen, n) * (0.3 + 0.7 * flow / flow.max().clamp_min(1e-12))
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
    poles = torch.tensor([4500.0, 5500.0, 6500.0], dtype=F64) * vtl_factor
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
    segments = plan_segments(phones, voice, gen)
    counts = torch.tensor([s.n for s in segments])
    starts = torch.cumsum(counts, 0) - counts
    n = int(counts.sum())

    # Sample-level source gains; smoothing gives ~5-10 ms onsets and offsets.
    controls = torch.tensor([[s.voicing, s.aspiration, s.gate, s.nasal_zero] for s in segments], dtype=F64)
    per_sample = torch.repeat_interleave(controls, counts, dim=0).T  # [4, n]
    voicing, aspiration = _smooth(per_sample[:2], int(0.012 * SAMPLE_RATE))
    gate = _smooth(per_sample[2], int(0.006 * SAMPLE_RATE))

    pulses, breath = _glottal_source(n, voice, gen)
    larynx = voicing * (pulses + voice.breathiness * breath) + aspiration * randn(gen, n)

    # Formant tracks: linear between anchor targets, then smoothed (coarticulation).
    times, formants, bandwidths = [], [], []
    for segment, start in zip(segments, starts.tolist(), strict=True):
        for fraction, f, b in segment.anchors:
            times.append(start + fraction * segment.n)
            formants.append(f)
            bandwidths.append(b)
    frames = n // _HOP + 1
    frame_pos = torch.arange(frames, dtype=F64) * _HOP
    targets = torch.cat([torch.tensor(formants, dtype=F64), torch.tensor(bandwidths, dtype=F64)], dim=1)
    tracks = _interp(frame_pos, torch.tensor(times, dtype=F64), targets)
    tracks = _smooth(tracks.T, 5).T  # 5 frames = 20 ms
    freqs = torch.fft.rfftfreq(N_FFT, d=1.0 / SAMPLE_RATE, dtype=F64)
    response = _formant_response(freqs, tracks[:, :4], tracks[:, 4:])

    # Nasals: blend in the antiformant by how nasal each frame is.
    zero_hz = per_sample[3][frame_pos.long().clamp(max=n - 1)]
    nasality = _smooth((zero_hz > 0).to(F64), 3)
    if bool(nasality.any()):
        zero_hz = torch.where(zero_hz > 0, zero_hz, zero_hz.max())
        response = response * _zero_pole_ratio(freqs, zero_hz) ** nasality[:, None]
    response = response * _higher_poles(freqs, voice.vtl_factor)
    response = response * 10.0 ** (-voice.spectral_tilt_db * torch.log2(1.0 + freqs / 1000.0) / 20.0)

    window = torch.hann_window(N_FFT, dtype=F64)
    spectrum = torch.stft(larynx, N_FFT, _HOP, window=window, return_complex=True)
    speech = torch.istft(spectrum * response.T, N_FFT, _HOP, window=window, length=n)
    # Vowels at unit RMS, so the noise levels in PHONEMES are relative to them.
    voiced = voicing > 0.5
    reference = speech[voiced] if bool(voiced.any()) else speech
    speech = speech / rms(reference)

    # Frication and bursts bypass the tract filter: band-shaped noise per segment.
    for segment, start in zip(segments, starts.tolist(), strict=True):
        if segment.frication <= 0:
            continue
        m = segment.n
        noise = band_noise(m, *segment.band, gen)
        if segment.burst:
            # Abrupt release, then a fast decay; the 2.5 puts the burst's RMS near its nominal level.
            decay = torch.exp(-torch.arange(m, dtype=F64) / (0.5 * m))
            env = 2.5 * ar_envelope(m, 0.001 * SAMPLE_RATE, 1.0) * decay
        else:
            ramp = min(0.03 * SAMPLE_RATE, m / 3)
            env = ar_envelope(m, ramp, ramp)
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
    return peak_normalize(_synth_phones(_check_word(word), voice, generator))


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
            pieces.append(torch.zeros(round(uniform(generator, 0.05, 0.3) * SAMPLE_RATE), dtype=F64))
        spoken = replace(voice, f0_hz=voice.f0_hz * 2.0 ** (-0.4 * i / 12.0))
        word_audio = _synth_phones(KEYWORDS[word], spoken, generator)
        pieces.append(word_audio / word_audio.abs().max() * uniform(generator, 0.6, 1.0))
    return peak_normalize(torch.cat(pieces))
