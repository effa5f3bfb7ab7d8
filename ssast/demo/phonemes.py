"""The phoneme inventory and keyword lexicon of the demo's speech synthesizer
(:mod:`ssast.demo.speech`): acoustic targets of each phoneme (:data:`PHONEMES`: formant
targets, bandwidths, source levels, frication bands, stop timing) for a reference adult-male
tract, and Speech-Commands-like keywords spelled in them (:data:`KEYWORDS`).
"""

from __future__ import annotations

from dataclasses import dataclass

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
