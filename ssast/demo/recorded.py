"""A development corpus of real recordings, laid out exactly like the demo corpus.

    apt-get install ktuberling-data klettres-data fluidsynth fluid-soundfont-gm timgm6mb-soundfont
    ssast-demo recorded --out dev_data

The synthetic demo corpus (:mod:`ssast.demo.corpus`) is where settings get chosen; this one,
made of recordings from Debian packages, is where their gains get measured, or the other
way round (CONTRIBUTING.md: never both on one corpus). Same folders, tasks, clip lengths,
clips per class and split (:data:`~ssast.demo.corpus.SPLITS`), and the same writer, so
``ssast-demo --corpus dev_data`` and ``benchmarks/learning.py --data dev_data`` read it
unchanged; ``demo.json`` adds ``"source": "recorded"``, the folders and fonts used, and per
task how its recordings were split.

* ``keywords`` (1 s): ten letters whose names sound alike across languages (:data:`LETTERS`),
  spoken by the klettres voices whose alphabet has all ten (14 Latin-alphabet voices in
  klettres-data). Split by voice: about 20 % of the voices for validation, 35 % for test,
  the rest for training, so the test measures speakers never heard in training.
* ``speakers`` (3 s): the ktuberling voices with at least :data:`MIN_SPEAKER_WORDS`
  distinct words (13 in ktuberling-data: ca da de el en fr gl lt nn ru sl uk wa). Split by
  word: each voice's words are divided 50 / 20 / 30 % into train / val / test. A clip is
  two to four words of one voice from its split, with pauses of 50-300 ms.
* ``events`` (2 s): ten General MIDI instruments of clearly different timbre
  (:data:`INSTRUMENTS`), rendered by fluidsynth from FluidR3_GM and TimGM6mb (taking turns
  within each class, so each has both fonts alike in every split): one note (half the clips) or a figure of
  two to four notes, at random pitches inside the instrument's range and a random velocity.
* ``unlabeled`` (3 s): a third each of words (ktuberling), letters and syllables
  (klettres) and instrument figures of any of the 128 GM programs (rendered apart from the
  events), never from a validation or test recording of any task: the word groups of the
  speakers' val and test splits and every recording of the keywords' val and test voices
  are left out, and so is any file whose bytes equal one of those.

Choices the sources forced:

* A ktuberling folder holds recordings of different sessions (sample rates, channels);
  only its most common format is used, so that a voice is one recording set rather than a
  channel. Identical files (one recording under two names) count once, and word names
  that differ only by their theme (``tv_ball``, ``xmas_ball``, ``ball``) form one word, so
  that a word never lands in two splits.
* A recording is cut to its speech (or, for instruments, its sound): frames within 35 dB
  of its loudest, for speech only the stretch around the loudest moment (pauses under
  0.3 s bridged), which drops clicks and breaths recorded seconds apart. A sound longer
  than its clip is cut at the clip's end.
* No synthetic noise is added: each clip is its recording(s) at a random onset over
  silence, scaled to a random loudness (RMS -36 to -16 dBFS) so that level does not give a
  class away. Keyword recordings are few (one per letter and voice), so each is used
  several times at different onsets and levels to fill the counts.

Every random choice comes from generators seeded by (seed, task, split, index), and the
instruments are rendered in fixed batches, so the corpus is a function of the seed, the
scale and the installed packages, whatever the number of workers.
"""

from __future__ import annotations

import functools
import hashlib
import random
import re
import shutil
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
import zlib
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from ssast.audio import SAMPLE_RATE, AudioDecodeError, AudioFile
from ssast.data.writer import AUDIO_SUFFIXES, EncodedClip, encode_clip, parallel_map
from ssast.demo.corpus import (
    CORPUS_VERSION, SPLITS, TASKS, UNLABELED_CLIPS, DemoSummary, Task, corpus_parser, draw_uniform, keep_or_clear,
    write_corpus,
)

# Raised whenever what a seed, scale and the packages produce changes (besides CORPUS_VERSION).
RECORDED_VERSION = 1

KTUBERLING = "ktuberling/sounds"
KLETTRES = "klettres"
SOUNDFONTS = {"FluidR3_GM.sf2": "fluid-soundfont-gm", "TimGM6mb.sf2": "timgm6mb-soundfont"}
SOUNDFONT_FOLDER = "sounds/sf2"
FLUIDSYNTH = "fluidsynth"

# Letter names that sound alike in most European languages (a/ah, be/bee, de/dee, ef, ka, el,
# em, en, o, es), and that every Latin-alphabet klettres voice has (nl has no C, it no V).
LETTERS = ("A", "B", "D", "F", "K", "L", "M", "N", "O", "S")
VOICE_SPLITS = {"val": 0.2, "test": 0.35}  # of the keyword voices; the rest train
WORD_SPLITS = {"val": 0.2, "test": 0.3}  # of each speaker's words; the rest train
MIN_SPEAKER_WORDS = 60  # the big ktuberling voices have 68-176 words, the others at most 15
SPEAKER_WORDS = (2, 4)  # words per speakers clip
UNLABELED_ITEMS = {"words": (2, 4), "letters": (2, 5)}
PAUSE = (0.05, 0.3)  # seconds between the recordings of one clip
LEVEL_DB = (-36.0, -16.0)  # clip RMS in dBFS, independent of the class

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
RENDER_TAIL = 2.0  # seconds after a figure's clip before the next figure starts
RENDER_BATCH = 200  # figures per fluidsynth run: fixed, so the audio does not depend on workers
RENDER_GAIN = 0.5  # float output: no clipping; clips are scaled to their level anyway
NOTE_DELAY = 0.05  # a figure's notes start this long after the reset that precedes them

SPAN_DB = 35.0  # a recording's sound: frames within this of its loudest frame ...
FLOOR_DB = 6.0  # ... and above its noise floor (its quietest tenth) by this much
MAX_PAUSE = 0.3  # seconds of quiet bridged inside one utterance
SPAN_MARGIN = 0.03  # seconds kept before and after the sound
FRAME = 160  # 10 ms at 16 kHz
SILENT = 10 ** (-90 / 20)  # clip RMS under -90 dBFS: nothing was recorded


class MissingSourceError(FileNotFoundError):
    """A Debian package the recorded corpus is made from is not installed."""


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


@dataclass
class Sources:
    """What was found under the root, split as the tasks use it."""

    root: Path
    letters: dict[str, dict[str, Path]]  # keyword voice -> letter -> file (voices: folders relative to root)
    voice_splits: dict[str, list[str]]  # split -> keyword voices
    words: dict[str, dict[str, list[list[Path]]]]  # speaker -> split -> word groups (files)
    pools: dict[str, dict[str, list[Path]]]  # unlabeled kind -> voice -> files
    fonts: list[Path]
    folders: list[str]  # relative to root, for demo.json


# ---------------------------------------------------------------- finding the sources


def _missing(what: Path, package: str) -> MissingSourceError:
    return MissingSourceError(f"{what} not found: the recorded corpus needs the Debian package {package} "
                              f"(apt-get install {package})")


@functools.lru_cache(maxsize=None)
def _digest(path: Path) -> str:
    return hashlib.sha1(path.read_bytes()).hexdigest()


def _alphabet(sounds_xml: Path) -> dict[str, str]:
    """Letter name -> file (relative to the klettres folder) from a voice's sounds.xml."""
    alphabet = ET.parse(sounds_xml).getroot().find(".//alphabet")
    return {} if alphabet is None else {s.get("name", ""): s.get("file", "") for s in alphabet.iter("sound")}


def _klettres(root: Path) -> tuple[dict[str, dict[str, Path]], dict[str, list[Path]]]:
    """The voices that have every letter of :data:`LETTERS` (voice -> letter -> file), and
    every voice's letters and syllables (voice -> files)."""
    folder = root / KLETTRES
    if not folder.is_dir():
        raise _missing(folder, "klettres-data")
    letters, recordings = {}, {}
    for voice in sorted(path for path in folder.iterdir() if path.is_dir()):
        files = sorted(path for sub in ("alpha", "syllab") for path in (voice / sub).glob("*")
                       if path.suffix.lower() in AUDIO_SUFFIXES)
        if not files:
            continue
        name = f"{KLETTRES}/{voice.name}"
        recordings[name] = files
        if (voice / "sounds.xml").is_file():
            alphabet = _alphabet(voice / "sounds.xml")
            found = {letter: folder / alphabet[letter] for letter in LETTERS if letter in alphabet}
            if len(found) == len(LETTERS) and all(path.is_file() for path in found.values()):
                letters[name] = found
    if len(letters) < 3:
        raise MissingSourceError(f"{folder} has {len(letters)} voices with the letters {' '.join(LETTERS)} "
                                 "(in their sounds.xml); the keywords need 3 or more, one a split "
                                 "(apt-get install klettres-data)")
    return letters, recordings


def _word_keys(stems: Sequence[str]) -> dict[str, str]:
    """The word each file name says: without its theme prefixes (a first token that five or
    more names share: ``tv_``, ``xmas_``, ``robot_workshop_``), so that ``tv_ball`` and
    ``ball`` are one word."""
    tokens = {stem: [t for t in re.split(r"[-_ ]+", stem.lower()) if t] or [stem] for stem in stems}
    prefixes: set[str] = set()

    def strip(words: list[str]) -> list[str]:
        while len(words) > 1 and words[0] in prefixes:
            words = words[1:]
        return words

    while True:
        firsts = Counter(strip(words)[0] for words in tokens.values() if len(strip(words)) > 1)
        new = {token for token, count in firsts.items() if count >= 5} - prefixes
        if not new:
            return {stem: "-".join(strip(words)) for stem, words in tokens.items()}
        prefixes |= new


def _format(path: Path) -> tuple[int, int] | None:
    try:
        with AudioFile(path, None) as audio:
            return audio.rate, audio.channels
    except AudioDecodeError:
        return None


def _ktuberling(root: Path) -> dict[str, list[list[Path]]]:
    """Every ktuberling voice's words (voice -> groups of files that say one word): files of
    the folder's most common format, one of each set of identical files."""
    folder = root / KTUBERLING
    if not folder.is_dir():
        raise _missing(folder, "ktuberling-data")
    voices, seen = {}, set()
    for voice in sorted(path for path in folder.iterdir() if path.is_dir()):
        files = [path for path in sorted(voice.iterdir()) if path.suffix.lower() in AUDIO_SUFFIXES]
        formats = {path: _format(path) for path in files}
        counts = Counter(value for value in formats.values() if value is not None)
        if not counts:
            continue
        common = counts.most_common(1)[0][0]
        unique = []
        for path in files:
            digest = _digest(path)
            if formats[path] == common and digest not in seen:  # a copy in another folder counts once too
                seen.add(digest)
                unique.append(path)
        keys = _word_keys([path.stem for path in unique])
        groups: dict[str, list[Path]] = {}
        for path in unique:
            groups.setdefault(keys[path.stem], []).append(path)
        if groups:
            voices[f"{KTUBERLING}/{voice.name}"] = [groups[key] for key in sorted(groups)]
    return voices


def _split(items: Sequence[Any], fractions: dict[str, float], rng: random.Random) -> dict[str, list[Any]]:
    """``items`` shuffled and divided: at least one each for val and test, the rest train."""
    items = list(items)
    rng.shuffle(items)
    val = max(1, round(fractions["val"] * len(items)))
    test = max(1, round(fractions["test"] * len(items)))
    return {"train": items[val + test :], "val": items[:val], "test": items[val : val + test]}


def find_sources(root: str | Path, seed: int) -> Sources:
    """The recordings under ``root`` (``/usr/share`` of a Debian system), split for the
    tasks; a missing package is a :class:`MissingSourceError` naming it."""
    root = Path(root)
    letters, klettres = _klettres(root)
    ktuberling = _ktuberling(root)
    fonts = [root / SOUNDFONT_FOLDER / name for name in SOUNDFONTS]
    for font in fonts:
        if not font.is_file():
            raise _missing(font, SOUNDFONTS[font.name])
    speakers = {voice: groups for voice, groups in ktuberling.items() if len(groups) >= MIN_SPEAKER_WORDS}
    if len(speakers) < 2:
        raise MissingSourceError(f"{root / KTUBERLING} has {len(speakers)} voices with {MIN_SPEAKER_WORDS} or more "
                                 "words; the speakers task needs 2 or more (apt-get install ktuberling-data)")

    voice_splits = _split(sorted(letters), VOICE_SPLITS, random.Random(f"{seed}/keywords/voices"))
    if not voice_splits["train"]:
        raise MissingSourceError(f"{root / KLETTRES}: {len(letters)} voices with the letters are too few to "
                                 "split into train, val and test (apt-get install klettres-data)")
    words = {voice: _split(groups, WORD_SPLITS, random.Random(f"{seed}/speakers/{voice}"))
             for voice, groups in speakers.items()}

    # Held out: the val and test recordings of both tasks, by file and by content.
    held_out = {path for split in ("val", "test") for voice in voice_splits[split] for path in klettres[voice]}
    held_out |= {path for split in ("val", "test") for voice in voice_splits[split] for path in letters[voice].values()}
    held_out |= {path for splits in words.values() for split in ("val", "test")
                 for group in splits[split] for path in group}
    held_digests = {_digest(path) for path in held_out}

    def allowed(files: Sequence[Path]) -> list[Path]:
        return [path for path in files if path not in held_out and _digest(path) not in held_digests]

    spoken = {voice: allowed([path for group in (words[voice]["train"] if voice in words else groups)
                              for path in group]) for voice, groups in ktuberling.items()}
    lettered = {voice: allowed(files) for voice, files in klettres.items()}
    pools = {"words": {v: files for v, files in spoken.items() if files},
             "letters": {v: files for v, files in lettered.items() if files}}
    folders = sorted({*letters, *speakers, *pools["words"], *pools["letters"]})
    folders += [f"{SOUNDFONT_FOLDER}/{font.name}" for font in fonts]
    return Sources(root, letters, voice_splits, words, pools, fonts, folders)


def recorded_tasks(sources: Sources) -> dict[str, Task]:
    """The demo's tasks (names, clip lengths) with this corpus's classes."""
    classes = {
        "events": tuple(sorted(INSTRUMENTS)),
        "keywords": tuple(letter.lower() for letter in LETTERS),
        "speakers": tuple(sorted(Path(voice).name for voice in sources.words)),
        "unlabeled": (),
    }
    return {name: Task(name, classes[name], task.clip_seconds) for name, task in TASKS.items()}


# ---------------------------------------------------------------- planning the clips


def _figure(rng: random.Random, program: int, low: int, high: int, seconds: float) -> Figure:
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


def _file_piece(path: Path, root: Path) -> Piece:
    return Piece(str(path), path.relative_to(root).as_posix())


@dataclass
class _Renders:
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


def _figure_metadata(figure: Figure, font: Path) -> dict[str, Any]:
    return {"font": font.name, "program": figure.program,
            "notes": [[round(n.onset, 3), round(n.duration, 3), n.pitch, n.velocity] for n in figure.notes]}


def _pick(pool: dict[str, list[Path]], count: tuple[int, int], rng: random.Random) -> tuple[str, list[Path]]:
    """A voice, drawn in proportion to its recordings, and a few of its recordings."""
    voices = sorted(pool)
    voice = rng.choices(voices, weights=[len(pool[v]) for v in voices])[0]
    files = pool[voice]
    return voice, rng.sample(files, min(len(files), rng.randint(*count)))


def plan_clips(sources: Sources, renders: _Renders, scale: float = 1.0, seed: int = 0) -> list[RecordedClip]:
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
                    figure = _figure(rng, program, *PITCHES.get(program, UNLABELED_PITCHES), FIGURE_SECONDS["unlabeled"])
                    font = rng.randrange(len(fonts))
                    pieces = (renders.add("unlabeled", font, fonts, figure),)
                    metadata |= _figure_metadata(figure, fonts[font])
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
                    figure = _figure(rng, *INSTRUMENTS[label], FIGURE_SECONDS["events"])
                    font = (turn + index % len(task.classes)) % len(fonts)
                    pieces = (renders.add("events", font, fonts, figure),)
                    metadata |= _figure_metadata(figure, fonts[font])
                clips.append(RecordedClip(task.name, split, index, label, pieces, tuple(metadata.items()), seed))
    return clips


# ---------------------------------------------------------------- rendering instruments


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
        raise _missing(Path(FLUIDSYNTH), "fluidsynth")
    midi = out.with_suffix(".mid")
    midi.write_bytes(figures_midi(figures, spacing))
    command = [executable, "-n", "-i", "-q", "-F", str(out), "-T", "wav", "-O", "float", "-r", str(SAMPLE_RATE),
               "-g", str(RENDER_GAIN), str(font), str(midi)]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0 or not out.is_file():
        raise RuntimeError(f"fluidsynth failed rendering {midi.name} with {font.name} "
                           f"(exit {result.returncode}): {(result.stderr or result.stdout).strip()[-400:]}")


# ---------------------------------------------------------------- making a clip


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


def _encode(clip: RecordedClip) -> EncodedClip:
    waveform, used = make_clip(clip)
    metadata = dict(clip.metadata)
    if clip.task != "events" and metadata.get("kind") != "instruments":
        metadata["recordings"] = used
    return encode_clip(f"recorded-{clip.task}/{clip.split or 'all'}/{clip.index:06d}", waveform, metadata, clip.split)


# ---------------------------------------------------------------- building


def _task_info(sources: Sources, clips: Sequence[RecordedClip]) -> dict[str, dict[str, Any]]:
    kinds = Counter(dict(clip.metadata)["kind"] for clip in clips if clip.task == "unlabeled")
    return {
        "events": {"instruments": {name: program for name, (program, _, _) in INSTRUMENTS.items()},
                   "fonts": [font.name for font in sources.fonts]},
        "keywords": {"voices": sources.voice_splits},
        "speakers": {"words": {Path(voice).name: {split: len(groups) for split, groups in splits.items()}
                               for voice, splits in sorted(sources.words.items())}},
        "unlabeled": {"kinds": dict(sorted(kinds.items()))},
    }


def build_recorded(
    out: str | Path, *, root: str | Path = "/usr/share", scale: float = 1.0, seed: int = 0, workers: int = 1,
    overwrite: bool = False, progress: bool = True, renderer: Renderer = render_fluidsynth,
) -> DemoSummary:
    """Make the corpus of recordings (see the module docstring) in ``out`` from the Debian
    packages under ``root``. A complete corpus already there, made by this version with the
    same ``scale``, ``seed`` and sources, is kept as it is; any other is an error unless
    ``overwrite``. ``renderer`` renders the instrument figures (fluidsynth by default)."""
    if scale <= 0:
        raise ValueError(f"scale must be positive, got {scale}")
    out = Path(out)
    sources = find_sources(root, seed)
    if renderer is render_fluidsynth and shutil.which(FLUIDSYNTH) is None:
        raise _missing(Path(FLUIDSYNTH), "fluidsynth")
    identity = {"version": CORPUS_VERSION, "seed": seed, "scale": scale, "source": "recorded",
                "recorded_version": RECORDED_VERSION, "sources": sources.folders}
    if keep_or_clear(out, identity, overwrite):
        return DemoSummary(out, ["  already there (same version, seed, scale and sources); kept"], "recorded corpus")
    with tempfile.TemporaryDirectory(prefix="ssast-recorded-") as folder:
        renders = _Renders(Path(folder))
        clips = plan_clips(sources, renders, scale, seed)
        jobs = renders.jobs(sources.fonts)
        with ThreadPoolExecutor(max(1, workers)) as pool:  # each job is a fluidsynth process
            done = pool.map(lambda job: renderer(*job), jobs)
            list(tqdm(done, total=len(jobs), unit="batch", desc="rendering", disable=not progress))
        encoded = zip((clip.task for clip in clips), parallel_map(_encode, clips, workers))
        summary = write_corpus(out, encoded, len(clips), identity, tasks=recorded_tasks(sources),
                               task_info=_task_info(sources, clips), title="recorded corpus",
                               desc="recording", progress=progress)
    splits = sources.voice_splits
    summary.lines += [
        "  keywords: letters " + " ".join(LETTERS) + " by klettres voices: "
        + "; ".join(f"{split} {', '.join(Path(v).name for v in splits[split])}" for split in SPLITS),
        f"  speakers: {len(sources.words)} ktuberling voices, their words split "
        + " / ".join(f"{split} {sum(len(s[split]) for s in sources.words.values())}" for split in SPLITS),
        f"  events: {len(INSTRUMENTS)} GM instruments from {', '.join(font.name for font in sources.fonts)}",
    ]
    return summary


def main(argv: list[str] | None = None) -> None:
    parser = corpus_parser(
        "ssast-demo recorded", Path("dev_data"),
        "make a corpus of real recordings (Debian packages: apt-get install ktuberling-data klettres-data fluidsynth "
        "fluid-soundfont-gm timgm6mb-soundfont) laid out like the demo corpus",
    )
    parser.add_argument("--root", type=Path, default=Path("/usr/share"), help="where the packages are (default: /usr/share)")
    args = parser.parse_args(argv)
    try:
        print(build_recorded(args.out, root=args.root, scale=args.scale, seed=args.seed, workers=args.workers,
                             overwrite=args.overwrite))
    except (FileExistsError, FileNotFoundError, ValueError, RuntimeError) as error:
        sys.exit(f"ssast-demo recorded: error: {error}")


if __name__ == "__main__":
    main()
