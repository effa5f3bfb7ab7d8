"""Finding the recordings of the recorded corpus (:mod:`ssast.demo.recorded`) in the Debian
packages under a root (``/usr/share``), and splitting them as its tasks use them: the
klettres voices that say every letter of :data:`LETTERS` (split by voice), the ktuberling
voices with :data:`MIN_SPEAKER_WORDS` words or more (split by word), the soundfonts, and
the unlabeled pools that hold no validation or test recording. A missing package is a
:class:`MissingSourceError` naming it.
"""

from __future__ import annotations

import functools
import hashlib
import random
import re
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ssast.audio import AudioDecodeError, AudioFile
from ssast.data.writer import AUDIO_SUFFIXES

KTUBERLING = "ktuberling/sounds"
KLETTRES = "klettres"
SOUNDFONTS = {"FluidR3_GM.sf2": "fluid-soundfont-gm", "TimGM6mb.sf2": "timgm6mb-soundfont"}
SOUNDFONT_FOLDER = "sounds/sf2"

# Letter names that sound alike in most European languages (a/ah, be/bee, de/dee, ef, ka, el,
# em, en, o, es), and that every Latin-alphabet klettres voice has (nl has no C, it no V).
LETTERS = ("A", "B", "D", "F", "K", "L", "M", "N", "O", "S")
VOICE_SPLITS = {"val": 0.2, "test": 0.35}  # of the keyword voices; the rest train
WORD_SPLITS = {"val": 0.2, "test": 0.3}  # of each speaker's words; the rest train
MIN_SPEAKER_WORDS = 60  # the big ktuberling voices have 68-176 words, the others at most 15


class MissingSourceError(FileNotFoundError):
    """A Debian package the recorded corpus is made from is not installed."""


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


def missing_package(what: Path, package: str) -> MissingSourceError:
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
        raise missing_package(folder, "klettres-data")
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
        raise missing_package(folder, "ktuberling-data")
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
            raise missing_package(font, SOUNDFONTS[font.name])
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
