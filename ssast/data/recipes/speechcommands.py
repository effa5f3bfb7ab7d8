"""The Speech Commands recipe: v1 or v2, with every word a class or as the 12-class task
(ten commands, ``_unknown_`` and ``_silence_`` cut from the background noise), optionally
tested on the released v0.01 test set (:func:`list_speechcommands`).
"""

from __future__ import annotations

from pathlib import Path

import soundfile

from ssast.data.recipes.common import RecipePlan, is_audio, require, require_folder
from ssast.data.writer import SourceFile, sanitize_key


# The ten command words of the 12-class Speech Commands task (v1 "KS1" and v2 alike).
SPEECH_COMMANDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
UNKNOWN = "_unknown_"
SILENCE = "_silence_"
BACKGROUND_NOISE = "_background_noise_"
SILENCE_SECONDS = 1.0


def _read_list(path: Path) -> list[str]:
    return [line.strip().replace("\\", "/") for line in path.read_text().splitlines() if line.strip()]


def list_speechcommands(
    src: str | Path, *, variant: int = 35, test_set: str | Path | None = None, source: str = "speechcommands"
) -> RecipePlan:
    """Speech Commands v1/v2 (the extracted archive: a folder per word,
    ``validation_list.txt``, ``testing_list.txt`` and ``_background_noise_/``).

    Splits: ``val`` and ``test`` from the lists, ``train`` for every other file.
    ``variant=35``: every word folder is a class (35 in v2, 30 in v1). ``variant=12``: the
    ten command words, ``_unknown_`` for every other word, and ``_silence_``: consecutive
    1 s segments of the background-noise files, split 80/10/10 by segment index.
    Folders whose name starts with ``_`` are never words. ``speaker`` (the file name
    before ``_nohash_``) and ``word`` go into the json member.

    ``test_set`` (``variant=12`` only): the separately released test set of v0.01
    (``speech_commands_test_set_v0.01``, a folder per class, ``_unknown_`` and ``_silence_``
    included), which SUPERB's KS1 tests on, is the ``test`` split; the files of
    ``testing_list.txt`` and the test share of the silence segments are then left out, as
    s3prl leaves them out of training.
    """
    if variant not in (12, 35):
        raise ValueError(f"speechcommands: variant must be 35 (every word) or 12 (10 commands), got {variant}")
    if test_set is not None and variant != 12:
        raise ValueError("speechcommands: --test-set is the 12-class v0.01 test set; use it with --variant 12")
    src = require_folder(Path(src), "speechcommands")
    what = "speechcommands (the extracted Speech Commands folder)"
    val_list = _read_list(require(src / "validation_list.txt", what))
    test_list = _read_list(require(src / "testing_list.txt", what))
    words = sorted(
        path.name for path in src.iterdir()
        if path.is_dir() and not path.name.startswith(("_", ".")) and any(map(is_audio, path.iterdir()))
    )
    if not words:
        raise FileNotFoundError(f"{what}: no word folders with audio in {src}")
    noise_folder = src / BACKGROUND_NOISE
    if variant == 12:
        require(noise_folder, f"{what}; the 12-class variant cuts {SILENCE} from it", folder=True)

    listed = {path: "val" for path in val_list}
    for path in test_list:
        if listed.get(path) == "val":
            raise ValueError(f"speechcommands: {path} is in both validation_list.txt and testing_list.txt")
        listed[path] = "test"

    def label(word: str) -> str:
        return word if variant == 35 or word in SPEECH_COMMANDS else UNKNOWN

    items: list[SourceFile] = []
    found = set()
    for word in words:
        for path in sorted(filter(is_audio, (src / word).iterdir())):
            relative = f"{word}/{path.name}"
            found.add(relative)
            split = listed.get(relative, "train")
            metadata = {
                "source": source, "path": relative, "split": split,
                "speaker": path.stem.split("_nohash_")[0], "word": word,
            }
            key = sanitize_key(f"{source}/{word}/{path.stem}")
            items.append(SourceFile(path, key, (label(word),), split, metadata))
    missing = [(path, split) for path, split in listed.items() if path not in found]
    classes = sorted({label(word) for word in words})
    notes = []
    if variant == 12:
        classes = sorted({*SPEECH_COMMANDS, UNKNOWN, SILENCE})
        segments = _silence_segments(noise_folder, source)
        if not segments:
            raise ValueError(f"speechcommands: no {SILENCE_SECONDS:g} s of audio in {noise_folder} for {SILENCE}")
        items += segments
        notes.append(f"{len(segments)} {SILENCE} segments of {SILENCE_SECONDS:g} s cut from {noise_folder}")
    if test_set is not None:
        left_out = sum(item.split == "test" for item in items)
        items = [item for item in items if item.split != "test"] + _released_test_set(Path(test_set), classes, source)
        missing = [(path, split) for path, split in missing if split != "test"]
        notes.append(f"test split: the released test set {test_set}; {left_out} clips of testing_list.txt and "
                     "test-share silence segments left out")
    return RecipePlan(items, classes, ["train"], missing, notes)


def _released_test_set(folder: Path, classes: list[str], source: str) -> list[SourceFile]:
    """The clips of Speech Commands' released v0.01 test set: a folder per class."""
    what = "speechcommands --test-set (the extracted speech_commands_test_set_v0.01 folder)"
    folder = require_folder(folder, what)
    unknown = sorted(path.name for path in folder.iterdir() if path.is_dir() and path.name not in classes)
    if unknown:
        raise ValueError(f"{what}: {', '.join(unknown)} are not among the 12 classes ({', '.join(classes)})")
    items = []
    for name in classes:
        for path in sorted(filter(is_audio, (folder / name).iterdir())) if (folder / name).is_dir() else []:
            relative = f"{name}/{path.name}"
            metadata = {"source": source, "path": relative, "split": "test", "speaker": path.stem.split("_nohash_")[0],
                        "word": name, "test_set": "v0.01"}
            items.append(SourceFile(path, sanitize_key(f"{source}/test_set/{name}/{path.stem}"), (name,), "test",
                                    metadata))
    if not items:
        raise FileNotFoundError(f"{what}: no audio in the class folders of {folder}")
    return items


def _silence_split(index: int) -> str:
    """A fixed 80/10/10 assignment by segment index."""
    return {8: "val", 9: "test"}.get(index % 10, "train")


def _silence_segments(folder: Path, source: str) -> list[SourceFile]:
    """Consecutive non-overlapping 1 s segments of every background-noise file, numbered
    across the files (in name order) so the split assignment is fixed."""
    segments = []
    for path in sorted(filter(is_audio, folder.iterdir())):
        try:
            seconds = soundfile.info(str(path)).duration
        except (OSError, RuntimeError) as error:  # libsndfile's errors are RuntimeErrors
            raise ValueError(f"speechcommands: cannot read the background noise {path}: {error}") from error
        for offset in range(int(seconds // SILENCE_SECONDS)):
            start = offset * SILENCE_SECONDS
            split = _silence_split(len(segments))
            metadata = {
                "source": source, "path": f"{BACKGROUND_NOISE}/{path.name}", "split": split,
                "start": start, "end": start + SILENCE_SECONDS,
            }
            key = sanitize_key(f"{source}/{SILENCE}/{path.stem}/{offset:04d}")
            segments.append(SourceFile(path, key, (SILENCE,), split, metadata, start, SILENCE_SECONDS))
    return segments
