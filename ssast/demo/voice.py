"""Speakers of the demo's speech synthesizer: a :class:`Voice` holds the glottal source and
vocal-tract settings (mean F0, tract length, jitter, breathiness, speaking rate, ...) that
:mod:`ssast.demo.speech` applies to the phoneme targets, and draws random adult-male,
adult-female and child-like voices.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ssast.demo.dsp import log_uniform, uniform


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
        kind = uniform(generator, 0.0, 1.0)
        if kind < 0.4:  # adult male
            f0, vtl = log_uniform(generator, 80.0, 160.0), uniform(generator, 0.8, 1.02)
        elif kind < 0.8:  # adult female
            f0, vtl = log_uniform(generator, 150.0, 260.0), uniform(generator, 1.0, 1.18)
        else:  # child
            f0, vtl = log_uniform(generator, 210.0, 300.0), uniform(generator, 1.12, 1.25)
        return cls(
            f0_hz=f0,
            vtl_factor=vtl,
            intonation_st=uniform(generator, 0.5, 3.0),
            jitter=uniform(generator, 0.003, 0.02),
            shimmer=uniform(generator, 0.01, 0.08),
            breathiness=uniform(generator, 0.02, 0.35),
            open_quotient=uniform(generator, 0.4, 0.75),
            spectral_tilt_db=uniform(generator, 0.0, 5.0),
            speaking_rate=uniform(generator, 0.8, 1.25),
            bandwidth_scale=uniform(generator, 0.8, 1.4),
        )
