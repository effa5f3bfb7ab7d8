"""Planning the clips of the recorded corpus (:mod:`ssast.demo.recorded`): which recordings
(:class:`Piece`) each clip (:class:`RecordedClip`) is made of, with its label and metadata,
drawn from generators seeded by (seed, task, split, index); the instrument figures are
collected for rendering in fixed batches (:class:`Renders`), each figure a window of a
batch's wav file.
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ssast.demo.corpus import SPLITS, TASKS, UNLABELED_CLIPS, Task
from ssast.demo.instrument_figures import (
    FIGURE_SECONDS, INSTRUMENTS, NOTE_DELAY, PITCHES, UNLABELED_PITCHES, Figure, draw_figure, figure_metadata,
)
from ssast.demo.recorded_sources import LETTERS, Sources

SPEAKER_WORDS = (2, 4)  # words per speakers clip
UNLABELED_ITEMS = {"words": (2, 4), "letters": (2, 5)}
RENDER_TAIL = 2.0  # seconds after a figure's clip before the next figure starts
RENDER_BATCH = 200  # figures per fluidsynth run: fixed, so the audio does not depend on workers


@dataclass(frozen=True)
class Piece:
    """A recording to put in a clip: a whole file, or (``seconds`` set) a window of a
    rendered one; ``name`` is what the clip's metadata calls it."""

    path: str
    name: str
    utterance: bool = True  # keep the stretch around the loudest moment (speech), or all of the sound
    start: float = 0.0
    seconds: float | None = None


@dataclass(frozen=True)
class RecordedClip:
    task: str
    split: str | None
    index: int
    label: str | None
    pieces: tuple[Piece, ...]
    metadata: tuple[tuple[str, Any], ...]
    seed: int

    def generator(self) -> torch.Generator:
        text = f"{self.seed}/{self.task}/{self.split}/{self.index}"
        return torch.Generator().manual_seed(zlib.crc32(text.encode()))


def recorded_tasks(sources: Sources) -> dict[str, Task]:
    """The demo's tasks (names, clip lengths) with this corpus's classes."""
    classes = {
        "events": tuple(sorted(INSTRUMENTS)),
        "keywords": tuple(letter.lower() for letter in LETTERS),
        "speakers": tuple(sorted(Path(voice).name for voice in sources.words)),
        "unlabeled": (),
    }
    return {name: Task(name, classes[name], task.clip_seconds) for name, task in TASKS.items()}


def _file_piece(path: Path, root: Path) -> Piece:
    return Piece(str(path), path.relative_to(root).as_posix())


@dataclass
class Renders:
    """Figures to render, by (kind, font), each given a window of a batch's wav file."""

    folder: Path
    figures: dict[tuple[str, int], list[Figure]] = field(default_factory=dict)

    def spacing(self, kind: str) -> float:
        return TASKS[kind].clip_seconds + RENDER_TAIL

    def add(self, kind: str, font: int, fonts: Sequence[Path], figure: Figure) -> Piece:
        figures = self.figures.setdefault((kind, font), [])
        batch, position = divmod(len(figures), RENDER_BATCH)
        figures.append(figure)
        wav = self.folder / f"{kind}-{fonts[font].stem}-{batch:03d}.wav"
        start = position * self.spacing(kind) + NOTE_DELAY
        return Piece(str(wav), fonts[font].name, utterance=False, start=start, seconds=TASKS[kind].clip_seconds)

    def jobs(self, fonts: Sequence[Path]) -> list[tuple[Path, list[Figure], float, Path]]:
        return [(fonts[font], figures[start : start + RENDER_BATCH], self.spacing(kind),
                 self.folder / f"{kind}-{fonts[font].stem}-{start // RENDER_BATCH:03d}.wav")
                for (kind, font), figures in sorted(self.figures.items())
                for start in range(0, len(figures), RENDER_BATCH)]


def _pick(pool: dict[str, list[Path]], count: tuple[int, int], rng: random.Random) -> tuple[str, list[Path]]:
    """A voice, drawn in proportion to its recordings, and a few of its recordings."""
    voices = sorted(pool)
    voice = rng.choices(voices, weights=[len(pool[v]) for v in voices])[0]
    files = pool[voice]
    return voice, rng.sample(files, min(len(files), rng.randint(*count)))


def plan_clips(sources: Sources, renders: Renders, scale: float = 1.0, seed: int = 0) -> list[RecordedClip]:
    """Every clip of the corpus (classes interleaved so that each shard holds all of them),
    with the recordings each is made of; the instrument figures are added to ``renders``."""
    tasks = recorded_tasks(sources)
    root, fonts, clips = sources.root, sources.fonts, []
    speakers = {Path(voice).name: voice for voice in sources.words}
    for task in tasks.values():
        if not task.classes:
            kinds = ("words", "letters", "instruments")
            for index in range(max(1, round(UNLABELED_CLIPS * scale))):
                rng = random.Random(f"{seed}/unlabeled/{index}")
                kind = kinds[index % len(kinds)]
                metadata: dict[str, Any] = {"labels": [], "source": "recorded-unlabeled", "kind": kind}
                if kind == "instruments":
                    program = rng.randrange(128)
                    figure = draw_figure(rng, program, *PITCHES.get(program, UNLABELED_PITCHES), FIGURE_SECONDS["unlabeled"])
                    font = rng.randrange(len(fonts))
                    pieces = (renders.add("unlabeled", font, fonts, figure),)
                    metadata |= figure_metadata(figure, fonts[font])
                else:
                    voice, files = _pick(sources.pools[kind], UNLABELED_ITEMS[kind], rng)
                    pieces = tuple(_file_piece(path, root) for path in files)
                    metadata["voice"] = voice
                clips.append(RecordedClip(task.name, None, index, None, pieces, tuple(metadata.items()), seed))
            continue
        for split, per_class in SPLITS.items():
            for index in range(max(1, round(per_class * scale)) * len(task.classes)):
                label, turn = task.classes[index % len(task.classes)], index // len(task.classes)
                rng = random.Random(f"{seed}/{task.name}/{split}/{index}")
                metadata = {"labels": [label], "source": f"recorded-{task.name}", "split": split}
                if task.name == "keywords":  # the split's voices take turns (each class starting at another)
                    voices = sources.voice_splits[split]
                    voice = voices[(turn + index % len(task.classes)) % len(voices)]
                    pieces = (_file_piece(sources.letters[voice][label.upper()], root),)
                    metadata["voice"] = voice
                elif task.name == "speakers":
                    groups = sources.words[speakers[label]][split]
                    chosen = rng.sample(groups, min(len(groups), rng.randint(*SPEAKER_WORDS)))
                    pieces = tuple(_file_piece(rng.choice(group), root) for group in chosen)
                    metadata["speaker"] = label
                else:  # events: the fonts take turns within a class (starting apart, for tiny scales)
                    figure = draw_figure(rng, *INSTRUMENTS[label], FIGURE_SECONDS["events"])
                    font = (turn + index % len(task.classes)) % len(fonts)
                    pieces = (renders.add("events", font, fonts, figure),)
                    metadata |= figure_metadata(figure, fonts[font])
                clips.append(RecordedClip(task.name, split, index, label, pieces, tuple(metadata.items()), seed))
    return clips
