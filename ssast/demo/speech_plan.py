"""Timing of the demo's speech synthesizer: a phoneme sequence becomes timed segments
(:class:`Segment`), each with constant source settings and the formant targets the tracks
move towards, with every phoneme's duration and formants jittered per call and scaled for
the :class:`~ssast.demo.voice.Voice`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ssast.demo.dsp import SAMPLE_RATE, rand, randn
from ssast.demo.phonemes import PHONEMES, Formants
from ssast.demo.voice import Voice

_EDGE_PAD_S = 0.02  # silence around each word so the resonators can ring out


@dataclass(frozen=True)
class Segment:
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


def plan_segments(phones: Sequence[str], voice: Voice, gen: torch.Generator) -> list[Segment]:
    """Turn phonemes into timed segments with per-call jitter and formant perturbations."""
    count = len(phones)
    timing = 0.8 + 0.4 * rand(gen, count)  # +-20 % on every phoneme's duration
    formant_jitter = (1.0 + 0.03 * randn(gen, count, 4)).clamp(0.9, 1.1)
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
    segments = [Segment(pad, gate=0.0)]
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
                Segment(
                    samples(ph.duration_s, i), voicing=ph.voicing, gate=1.0 if ph.voicing else 0.0, anchors=anchor
                ),
                Segment(
                    samples(ph.burst_s, i),
                    frication=ph.frication,
                    band=band(ph.frication_band),
                    burst=True,
                    anchors=((0.0, locus, bws),),
                ),
                Segment(samples(vot, i), aspiration=0.0 if after_s else ph.aspiration),
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
            segments.append(Segment(n, voicing=ph.voicing * (1.0 if stressed else 0.7), anchors=anchors))
        elif ph.kind == "aspirate":
            segments.append(Segment(n, aspiration=ph.aspiration))  # no anchors: takes the next vowel's tract
        else:
            anchors = ((0.5, scaled(ph.formants, i), bws),)
            segments.append(
                Segment(
                    n,
                    voicing=ph.voicing,
                    frication=ph.frication,
                    band=band(ph.frication_band),
                    nasal_zero=ph.nasal_zero_hz * vtl,
                    anchors=anchors,
                )
            )
    segments.append(Segment(pad, gate=0.0))
    return segments
