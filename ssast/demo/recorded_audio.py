"""The audio of a recorded clip (:mod:`ssast.demo.recorded`): each of its recordings cut
to its sound (:func:`active_span`), joined with short pauses as far as they fit, placed
at a random onset over silence and scaled to a random loudness (:func:`make_clip`).
"""

from __future__ import annotations

import functools

import torch

from ssast.audio import SAMPLE_RATE, AudioFile
from ssast.demo.corpus import TASKS, draw_uniform
from ssast.demo.recorded_plan import Piece, RecordedClip

PAUSE = (0.05, 0.3)  # seconds between the recordings of one clip
LEVEL_DB = (-36.0, -16.0)  # clip RMS in dBFS, independent of the class

SPAN_DB = 35.0  # a recording's sound: frames within this of its loudest frame ...
FLOOR_DB = 6.0  # ... and above its noise floor (its quietest tenth) by this much
MAX_PAUSE = 0.3  # seconds of quiet bridged inside one utterance
SPAN_MARGIN = 0.03  # seconds kept before and after the sound
FRAME = 160  # 10 ms at 16 kHz
SILENT = 10 ** (-90 / 20)  # clip RMS under -90 dBFS: nothing was recorded


def active_span(waveform: torch.Tensor, utterance: bool) -> torch.Tensor:
    """The sound in a recording: from its first to its last frame within :data:`SPAN_DB`
    of the loudest and :data:`FLOOR_DB` above the noise floor; for an ``utterance``, only
    the stretch around the loudest frame, quiet gaps under :data:`MAX_PAUSE` bridged."""
    frames = waveform.numel() // FRAME
    if frames < 2:
        return waveform
    energy = 10 * waveform[: frames * FRAME].view(frames, FRAME).square().mean(1).clamp_min(1e-12).log10()
    threshold = max(float(energy.max()) - SPAN_DB, float(energy.quantile(0.1)) + FLOOR_DB)
    active = (energy > threshold).nonzero().flatten()
    if active.numel() == 0:  # no quiet part to tell the sound from: all of it is sound
        return waveform
    first, last = int(active[0]), int(active[-1])
    if utterance:
        loudest = int(energy.argmax())
        breaks = active[1:][active.diff() > MAX_PAUSE * SAMPLE_RATE / FRAME]  # first frames after long pauses
        starts = [int(active[0]), *breaks.tolist()]
        first = max(start for start in starts if start <= loudest)
        following = [start for start in breaks.tolist() if start > loudest]
        last = int(active[active < following[0]][-1]) if following else last
    margin = round(SPAN_MARGIN * SAMPLE_RATE / FRAME)
    return waveform[max(0, first - margin) * FRAME : min(frames, last + 1 + margin) * FRAME]


@functools.lru_cache(maxsize=1024)
def _sound(piece: Piece) -> torch.Tensor:
    """A piece's sound at 16 kHz mono, cut to its active span (kept for the clips that
    use the same recording again, in this process)."""
    with AudioFile(piece.path) as audio:
        if piece.seconds is None:
            waveform = audio.read()
        else:
            waveform = audio.read(round(piece.start * SAMPLE_RATE), round(piece.seconds * SAMPLE_RATE))
    return active_span(waveform, piece.utterance)


def make_clip(clip: RecordedClip) -> tuple[torch.Tensor, list[str]]:
    """A clip's waveform (its recordings one after the other, with short pauses, as many as
    fit, at a random onset and loudness) and the names of the recordings used."""
    generator = clip.generator()
    num_samples = round(TASKS[clip.task].clip_seconds * SAMPLE_RATE)
    joined, used = _sound(clip.pieces[0])[:num_samples], [clip.pieces[0].name]
    for piece in clip.pieces[1:]:
        pause = torch.zeros(round(draw_uniform(generator, *PAUSE) * SAMPLE_RATE))
        sound = _sound(piece)
        if joined.numel() + pause.numel() + sound.numel() > num_samples:
            break
        joined, used = torch.cat([joined, pause, sound]), [*used, piece.name]
    onset = int(torch.randint(num_samples - joined.numel() + 1, (), generator=generator))
    placed = torch.zeros(num_samples)
    placed[onset : onset + joined.numel()] = joined
    rms = float(placed.square().mean().sqrt())
    if rms < SILENT:  # scaled to its level, it would be noise (a note outside a font's samples)
        program = dict(clip.metadata).get("program")
        raise ValueError(f"{clip.task}/{clip.split or 'all'}/{clip.index}: {', '.join(used)}"
                         f"{'' if program is None else f' (program {program})'} is silent")
    level_db = draw_uniform(generator, *LEVEL_DB)
    placed = placed / rms * 10 ** (level_db / 20)
    return placed / max(1.0, float(placed.abs().max()) / 0.99), used
