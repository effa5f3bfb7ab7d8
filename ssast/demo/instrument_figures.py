"""The instrument figures of the recorded corpus (:mod:`ssast.demo.recorded`): one note or a
few (:class:`Figure`), drawn at random inside an instrument's range (:data:`INSTRUMENTS`,
ten General MIDI programs of clearly different timbre), written into a MIDI file one
after the other, and rendered by fluidsynth from a soundfont (:func:`render_fluidsynth`,
the default :data:`Renderer`).
"""

from __future__ import annotations

import random
import shutil
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ssast.audio import SAMPLE_RATE
from ssast.demo.recorded_sources import missing_package

FLUIDSYNTH = "fluidsynth"

# General MIDI programs (0-based) and MIDI note ranges: (program, lowest, highest).
INSTRUMENTS = {
    "piano": (0, 36, 96),  # acoustic grand piano
    "marimba": (12, 48, 84),
    "organ": (19, 36, 84),  # church organ
    "guitar": (24, 40, 76),  # acoustic guitar (nylon)
    "bass": (32, 28, 55),  # acoustic bass
    "violin": (40, 55, 93),
    "harp": (46, 36, 91),  # orchestral harp
    "trumpet": (56, 55, 82),
    "saxophone": (65, 49, 80),  # alto sax
    "flute": (73, 60, 96),
}
# Every GM program of both fonts sounds across these notes (measured), but for the contrabass,
# which FluidR3 has only below 58.
UNLABELED_PITCHES = (48, 72)
PITCHES = {43: (28, 55)}
FIGURE_SECONDS = {"events": 1.5, "unlabeled": 2.5}  # the last note ends by then
RENDER_GAIN = 0.5  # float output: no clipping; clips are scaled to their level anyway
NOTE_DELAY = 0.05  # a figure's notes start this long after the reset that precedes them


@dataclass(frozen=True)
class Note:
    onset: float  # seconds from the figure's start
    duration: float
    pitch: int  # MIDI note number
    velocity: int


@dataclass(frozen=True)
class Figure:
    """One note or a few, played by one General MIDI program."""

    program: int
    notes: tuple[Note, ...]


# (soundfont, figures, spacing in seconds, output wav): renders figure i starting at
# i * spacing seconds into a wav file at SAMPLE_RATE (see render_fluidsynth).
Renderer = Callable[[Path, Sequence[Figure], float, Path], None]


def draw_figure(rng: random.Random, program: int, low: int, high: int, seconds: float) -> Figure:
    """One note (half the time) or a short figure of 2-4 (or more when ``seconds`` allows)."""
    if rng.random() < 0.5:
        return Figure(program, (Note(0.0, rng.uniform(0.3, min(1.2, seconds)), rng.randint(low, high),
                                     rng.randint(50, 120)),))
    count = rng.randint(2, 4 if seconds <= 1.5 else 6)
    step_seconds = seconds / count
    pitch, velocity, notes = rng.randint(low, high), rng.randint(50, 120), []
    for position in range(count):
        notes.append(Note(position * step_seconds, rng.uniform(0.5, 1.0) * step_seconds, pitch,
                          max(1, min(127, velocity + rng.randint(-10, 10)))))
        step = rng.choice((-12, -7, -5, -4, -3, -2, 2, 3, 4, 5, 7, 12))
        pitch = pitch + step if low <= pitch + step <= high else pitch - step
        pitch = min(high, max(low, pitch))
    return Figure(program, tuple(notes))


def figure_metadata(figure: Figure, font: Path) -> dict[str, Any]:
    return {"font": font.name, "program": figure.program,
            "notes": [[round(n.onset, 3), round(n.duration, 3), n.pitch, n.velocity] for n in figure.notes]}


def _variable_length(value: int) -> bytes:
    out = [value & 0x7F]
    value >>= 7
    while value:
        out.append(0x80 | (value & 0x7F))
        value >>= 7
    return bytes(reversed(out))


def figures_midi(figures: Sequence[Figure], spacing: float) -> bytes:
    """A format-0 MIDI file on channel 1: figure i at ``i * spacing`` seconds, preceded by
    "all sound off" and "reset controllers" (so no tail of the one before reaches into it)
    and its program change; its notes start :data:`NOTE_DELAY` later."""
    ticks_per_beat, microseconds_per_beat = 480, 500_000  # 120 bpm: 960 ticks a second

    def ticks(seconds: float) -> int:
        return round(seconds * ticks_per_beat * 1_000_000 / microseconds_per_beat)

    events = []  # (tick, order at the same tick, bytes): note offs, controls, program, note ons
    for position, figure in enumerate(figures):
        start = position * spacing
        events += [(ticks(start), 1, bytes([0xB0, 120, 0])), (ticks(start), 1, bytes([0xB0, 121, 0])),
                   (ticks(start), 2, bytes([0xC0, figure.program]))]
        for note in figure.notes:
            onset = start + NOTE_DELAY + note.onset
            events.append((ticks(onset), 3, bytes([0x90, note.pitch, note.velocity])))
            events.append((max(ticks(onset) + 1, ticks(onset + note.duration)), 0, bytes([0x80, note.pitch, 0])))
    events.append((ticks(len(figures) * spacing), 1, bytes([0xB0, 120, 0])))  # the file lasts to the last window's end
    track, last = bytearray(b"\x00\xff\x51\x03" + microseconds_per_beat.to_bytes(3, "big")), 0
    for tick, _, message in sorted(events, key=lambda event: event[:2]):
        track += _variable_length(tick - last) + message
        last = tick
    track += b"\x00\xff\x2f\x00"
    header = b"MThd" + (6).to_bytes(4, "big") + (0).to_bytes(2, "big") + (1).to_bytes(2, "big")
    return header + ticks_per_beat.to_bytes(2, "big") + b"MTrk" + len(track).to_bytes(4, "big") + bytes(track)


def render_fluidsynth(font: Path, figures: Sequence[Figure], spacing: float, out: Path) -> None:
    """The :data:`Renderer` of the corpus: one fluidsynth run (a soundfont loads in about a
    second) renders a MIDI file of all ``figures`` into ``out``."""
    executable = shutil.which(FLUIDSYNTH)
    if executable is None:
        raise missing_package(Path(FLUIDSYNTH), "fluidsynth")
    midi = out.with_suffix(".mid")
    midi.write_bytes(figures_midi(figures, spacing))
    command = [executable, "-n", "-i", "-q", "-F", str(out), "-T", "wav", "-O", "float", "-r", str(SAMPLE_RATE),
               "-g", str(RENDER_GAIN), str(font), str(midi)]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0 or not out.is_file():
        raise RuntimeError(f"fluidsynth failed rendering {midi.name} with {font.name} "
                           f"(exit {result.returncode}): {(result.stderr or result.stdout).strip()[-400:]}")
