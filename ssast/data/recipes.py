"""Recipes for published datasets: their download layouts turned into shards.

Each recipe reads one layout, checks that it is what it expects (a clear
``FileNotFoundError``/``ValueError`` naming what is missing when it is not), lists the
clips with their labels, split and metadata, writes them with :func:`write_shards`, and
then writes ``stats.json`` over the training clips with the dataset's target length
(DESIGN.md §4). ``OUT`` ends up as any other dataset folder::

    OUT/<split>/<split>-000000.tar ...   shards, one folder per split
    OUT/classes.txt                      every class of the listing, sorted
    OUT/stats.json                       log-mel mean/std of the training split(s)
    OUT/missing.txt                      listed clips not found on disk: id <TAB> split
    OUT/errors.txt                       clips found but not decodable: path <TAB> reason

========================  ==========================================  ==================
recipe                    splits                                      target length
========================  ==========================================  ==================
``esc50``                 ``fold1`` ... ``fold5``                     512
``speechcommands``        ``train``, ``val``, ``test``                128
``voxceleb1``             ``train``, ``val``, ``test``                1000
``audioset``              ``balanced_train``, ``eval``,               1024
                          ``unbalanced_train``
``iemocap``               ``fold1`` ... ``fold5`` (= Session1 ... 5)  600
========================  ==========================================  ==================
"""

from __future__ import annotations

import csv
import json
import re
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import soundfile

from ssast.data.reader import list_shards
from ssast.data.stats import compute_stats, write_stats
from ssast.data.writer import (
    AUDIO_SUFFIXES, SourceFile, WriteSummary, sanitize_key, write_classes, write_shards, write_text_atomic,
)

# The ten command words of the 12-class Speech Commands task (v1 "KS1" and v2 alike).
SPEECH_COMMANDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
UNKNOWN = "_unknown_"
SILENCE = "_silence_"
BACKGROUND_NOISE = "_background_noise_"
SILENCE_SECONDS = 1.0
AUDIOSET_SPLITS = {  # CSV file -> split name; the first two are required
    "balanced_train_segments.csv": "balanced_train",
    "eval_segments.csv": "eval",
    "unbalanced_train_segments.csv": "unbalanced_train",
}
# IEMOCAP's categorical labels -> the four classes of SUPERB's emotion task (s3prl
# downstream/emotion, as SSAST reports it): excited is merged into happy, the rest dropped.
IEMOCAP_CLASSES = {"neu": "neu", "hap": "hap", "exc": "hap", "ang": "ang", "sad": "sad"}
IEMOCAP_SESSIONS = 5


@dataclass
class RecipePlan:
    """What a recipe found in ``src``: the clips to write and what it could not find."""

    items: list[SourceFile]
    classes: list[str]  # every class of the listing, so indices do not depend on what is on disk
    stats_splits: list[str]  # the splits whose clips the normalization stats are computed over
    missing: list[tuple[str, str]] = field(default_factory=list)  # (id, split) listed but not on disk
    notes: list[str] = field(default_factory=list)  # anything else worth telling

    def counts(self) -> Counter:
        """Clips per split."""
        return Counter(item.split for item in self.items)


@dataclass
class RecipeSummary:
    """What :func:`build_recipe` wrote."""

    name: str
    write: WriteSummary
    classes: int
    missing: int
    stats: dict[str, float | int] | None = None
    stats_splits: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def clips(self) -> Counter:
        return self.write.clips

    def __str__(self) -> str:
        out = self.write.out
        lines = [f"{self.name}: {self.write}", f"  {self.classes} classes in {out / 'classes.txt'}"]
        if self.missing:
            lines.append(f"  {self.missing} listed clips are not on disk (their ids are in {out / 'missing.txt'})")
        lines += [f"  {note}" for note in self.notes]
        if self.stats is not None:
            lines.append(
                f"  stats over {'+'.join(self.stats_splits)} ({self.stats['count']} clips, target length "
                f"{self.stats['target_length']}): mean {self.stats['mean']:.4f}, std {self.stats['std']:.4f}"
                f" -> {out / 'stats.json'}"
            )
        return "\n".join(lines)


# --------------------------------------------------------------------------- helpers


def _require(path: Path, what: str, folder: bool = False) -> Path:
    """``path``, or a FileNotFoundError that says which dataset file is missing."""
    if not (path.is_dir() if folder else path.is_file()):
        kind = "folder" if folder else "file"
        raise FileNotFoundError(f"{what}: expected the {kind} {path}, which does not exist")
    return path


def _require_folder(src: Path, dataset: str) -> Path:
    if not src.is_dir():
        raise NotADirectoryError(f"{dataset}: {src} is not a folder")
    return src


def _is_audio(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in AUDIO_SUFFIXES and not path.name.startswith(".")


# --------------------------------------------------------------------------- ESC-50


def list_esc50(src: str | Path, *, source: str = "esc50") -> RecipePlan:
    """ESC-50 (``ESC-50-master/``: ``meta/esc50.csv`` and ``audio/*.wav``).

    Label: ``category``. Split: ``fold<N>`` from the ``fold`` column, so 5-fold
    cross-validation picks shards by folder. ``fold``, ``esc10``, ``target``,
    ``src_file`` and ``take`` go into the json member.
    """
    src = _require_folder(Path(src), "esc50")
    meta = _require(src / "meta" / "esc50.csv", "esc50 (the ESC-50-master folder)")
    audio = _require(src / "audio", "esc50 (the ESC-50-master folder)", folder=True)
    needed = ("filename", "fold", "target", "category", "esc10")
    items: list[SourceFile] = []
    missing, classes = [], set()
    with meta.open(newline="") as handle:
        reader = csv.DictReader(handle)
        absent = [name for name in needed if name not in (reader.fieldnames or [])]
        if absent:
            raise ValueError(f"{meta} lacks the column(s) {', '.join(absent)}; it has {reader.fieldnames}")
        for line, row in enumerate(reader, start=2):
            try:
                fold, target = int(row["fold"]), int(row["target"])
            except ValueError as error:
                raise ValueError(f"{meta}:{line}: fold and target must be integers ({error})") from None
            filename, category = row["filename"].strip(), row["category"].strip()
            split = f"fold{fold}"
            classes.add(category)
            path = audio / filename
            if not path.is_file():
                missing.append((f"audio/{filename}", split))
                continue
            metadata: dict[str, Any] = {
                "source": source, "path": f"audio/{filename}", "split": split, "fold": fold,
                "esc10": row["esc10"].strip().lower() == "true", "target": target,
            }
            for name in ("src_file", "take"):
                if row.get(name):
                    metadata[name] = row[name].strip()
            key = sanitize_key(f"{source}/{Path(filename).stem}")
            items.append(SourceFile(path, key, (category,), split, metadata))
    if not items:
        raise FileNotFoundError(f"esc50: none of the {len(missing)} files listed in {meta} is in {audio}")
    folds = sorted({item.split for item in items}, key=lambda name: int(name[4:]))
    # ESC-50 has no training split, so the stats cover every fold; a test fold's share
    # only nudges the normalization constants, and one stats.json serves all five runs.
    return RecipePlan(items, sorted(classes), folds, missing)


# --------------------------------------------------------------------------- Speech Commands


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
    src = _require_folder(Path(src), "speechcommands")
    what = "speechcommands (the extracted Speech Commands folder)"
    val_list = _read_list(_require(src / "validation_list.txt", what))
    test_list = _read_list(_require(src / "testing_list.txt", what))
    words = sorted(
        path.name for path in src.iterdir()
        if path.is_dir() and not path.name.startswith(("_", ".")) and any(map(_is_audio, path.iterdir()))
    )
    if not words:
        raise FileNotFoundError(f"{what}: no word folders with audio in {src}")
    noise_folder = src / BACKGROUND_NOISE
    if variant == 12:
        _require(noise_folder, f"{what}; the 12-class variant cuts {SILENCE} from it", folder=True)

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
        for path in sorted(filter(_is_audio, (src / word).iterdir())):
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
    folder = _require_folder(folder, what)
    unknown = sorted(path.name for path in folder.iterdir() if path.is_dir() and path.name not in classes)
    if unknown:
        raise ValueError(f"{what}: {', '.join(unknown)} are not among the 12 classes ({', '.join(classes)})")
    items = []
    for name in classes:
        for path in sorted(filter(_is_audio, (folder / name).iterdir())) if (folder / name).is_dir() else []:
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
    for path in sorted(filter(_is_audio, folder.iterdir())):
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


# --------------------------------------------------------------------------- VoxCeleb1


def list_voxceleb1(src: str | Path, *, source: str = "voxceleb1") -> RecipePlan:
    """VoxCeleb1 speaker identification (``iden_split.txt`` and ``wav/<speaker>/<video>/*.wav``).

    Label: the speaker id. Splits from ``iden_split.txt``: 1/2/3 = ``train``/``val``/``test``.
    ``speaker`` and ``video`` go into the json member.
    """
    src = _require_folder(Path(src), "voxceleb1")
    what = "voxceleb1 (the VoxCeleb1 folder)"
    split_file = _require(src / "iden_split.txt", what)
    wav = _require(src / "wav", what, folder=True)
    splits = {"1": "train", "2": "val", "3": "test"}
    items: list[SourceFile] = []
    missing, classes = [], set()
    for line, text in enumerate(split_file.read_text().splitlines(), start=1):
        if not text.strip():
            continue
        fields = text.split()
        parts = fields[-1].replace("\\", "/").split("/") if len(fields) == 2 else []
        if fields[0] not in splits or len(parts) != 3:
            raise ValueError(f"{split_file}:{line}: expected '<1|2|3> <speaker>/<video>/<file>.wav', got {text!r}")
        split, (speaker, video, name) = splits[fields[0]], parts
        classes.add(speaker)
        relative = "/".join(parts)
        path = wav / relative
        if not path.is_file():
            missing.append((f"wav/{relative}", split))
            continue
        metadata = {"source": source, "path": f"wav/{relative}", "split": split, "speaker": speaker, "video": video}
        key = sanitize_key(f"{source}/{speaker}/{video}/{Path(name).stem}")
        items.append(SourceFile(path, key, (speaker,), split, metadata))
    if not items:
        raise FileNotFoundError(f"voxceleb1: none of the {len(missing)} files listed in {split_file} is in {wav}")
    return RecipePlan(items, sorted(classes), ["train"], missing)


# --------------------------------------------------------------------------- AudioSet


def _read_ontology(path: Path) -> dict[str, str]:
    """mid -> display name."""
    try:
        entries = json.loads(path.read_text())
        return {entry["id"]: entry["name"] for entry in entries}
    except (json.JSONDecodeError, TypeError, KeyError) as error:
        raise ValueError(f"{path} is not AudioSet's ontology (a JSON list of objects with 'id' and 'name')") from error


def _read_segments(path: Path) -> Iterable[tuple[int, str, float, float, list[str]]]:
    """Rows ``(line, ytid, start, end, mids)`` of an AudioSet segments CSV."""
    for line, text in enumerate(path.read_text().splitlines(), start=1):
        if not text.strip() or text.lstrip().startswith("#"):
            continue
        row = next(csv.reader([text], skipinitialspace=True))
        try:
            ytid, start, end, mids = row[0].strip(), float(row[1]), float(row[2]), row[3]
        except (IndexError, ValueError):
            expected = 'YTID, start_seconds, end_seconds, "mid,..."'
            raise ValueError(f"{path}:{line}: expected {expected}, got {text!r}") from None
        yield line, ytid, start, end, [mid.strip() for mid in mids.split(",") if mid.strip()]


def _id_candidates(name: str) -> list[str]:
    """The YouTube ids a clip's file name may stand for, best first: the name without its
    suffix, with and without a leading ``Y``, then every prefix of those that ends just
    before a ``_`` or a ``.`` (``Y{id}_{start}.wav``, ``{id}_{start}_{end}.flac``, ...).
    Ids themselves may hold ``_``, so every such prefix is a candidate."""
    stem = name[: -len(Path(name).suffix)] if Path(name).suffix else name
    bases = [stem] + ([stem[1:]] if stem.startswith("Y") and len(stem) > 1 else [])
    prefixes = [base[:index] for base in bases for index, char in enumerate(base) if char in "_." and index > 0]
    return [*bases, *sorted(prefixes, key=len, reverse=True)]


def _find_clips(folder: Path, ytids: set[str]) -> dict[str, Path]:
    """ytid -> file for those of ``ytids`` that have a clip anywhere under ``folder``."""
    found: dict[str, tuple[int, Path]] = {}
    for path in sorted(folder.rglob("*")):
        if not _is_audio(path):
            continue
        for rank, candidate in enumerate(_id_candidates(path.name)):
            # The best-ranked match wins, so X.wav beats X_30.wav for the id X.
            if candidate in ytids and (candidate not in found or rank < found[candidate][0]):
                found[candidate] = (rank, path)
                break
    return {ytid: path for ytid, (_, path) in found.items()}


def list_audioset(src: str | Path, *, clips: str | Path | None = None, source: str = "audioset") -> RecipePlan:
    """AudioSet (``balanced_train_segments.csv``, ``eval_segments.csv``, optionally
    ``unbalanced_train_segments.csv``, ``ontology.json``, and the downloaded clips in
    ``clips``, by default ``SRC/audio``, searched recursively).

    Labels: the ontology names of a row's mids (multi-label). Split: the CSV's
    (``balanced_train``, ``eval``, ``unbalanced_train``). Clips are matched by YouTube id
    (``{id}.wav``, ``Y{id}.flac``, ``{id}_{start}.wav``, ...); rows without a clip are
    counted in ``missing``, never fatal. ``ytid``, ``start``, ``end`` and ``mids`` go into
    the json member. A YouTube id listed twice keeps its first row.
    """
    src = _require_folder(Path(src), "audioset")
    what = "audioset (the folder of AudioSet's CSVs)"
    ontology = _read_ontology(_require(src / "ontology.json", what))
    csvs = {name: split for name, split in AUDIOSET_SPLITS.items() if name != "unbalanced_train_segments.csv"}
    for name in csvs:
        _require(src / name, what)
    if (src / "unbalanced_train_segments.csv").is_file():
        csvs["unbalanced_train_segments.csv"] = "unbalanced_train"
    clips_folder = Path(clips) if clips is not None else src / "audio"
    _require(clips_folder, "audioset clips (--clips)", folder=True)

    rows: list[tuple[str, str, float, float, list[str]]] = []  # split, ytid, start, end, mids
    seen: set[str] = set()
    repeated = 0
    for name, split in csvs.items():
        for line, ytid, start, end, mids in _read_segments(src / name):
            unknown = [mid for mid in mids if mid not in ontology]
            if unknown:
                raise ValueError(f"{src / name}:{line}: {', '.join(unknown)} not in {src / 'ontology.json'}")
            if ytid in seen:
                repeated += 1
                continue
            seen.add(ytid)
            rows.append((split, ytid, start, end, mids))
    if not rows:
        raise ValueError(f"audioset: the CSVs in {src} list no segments")

    found = _find_clips(clips_folder, seen)
    items: list[SourceFile] = []
    missing = []
    for split, ytid, start, end, mids in rows:
        if ytid not in found:
            missing.append((ytid, split))
            continue
        path = found[ytid]
        metadata = {
            "source": source, "path": path.relative_to(clips_folder).as_posix(), "split": split,
            "ytid": ytid, "start": start, "end": end, "mids": mids,
        }
        labels = tuple(dict.fromkeys(ontology[mid] for mid in mids))
        items.append(SourceFile(path, sanitize_key(f"{source}/{ytid}"), labels, split, metadata))
    classes = sorted({ontology[mid] for *_, mids in rows for mid in mids})
    has = {item.split for item in items}
    stats_splits = ["balanced_train"] if "balanced_train" in has else ["unbalanced_train"]
    notes = [f"{repeated} rows skipped: their YouTube id was listed before"] if repeated else []
    return RecipePlan(items, classes, stats_splits, missing, notes)


# --------------------------------------------------------------------------- IEMOCAP


_IEMOCAP_UTTERANCE = re.compile(r"^Ses(?P<session>\d\d)[FM]_\S+_(?P<gender>[FM])\d+$")


def _read_emo_evaluation(path: Path) -> Iterable[tuple[int, str, str, list[float]]]:
    """Rows ``(line, utterance, label, [valence, activation, dominance])`` of one of
    IEMOCAP's ``dialog/EmoEvaluation/<dialog>.txt``: the lines that start with ``[``
    (``[6.2901 - 8.2357]<TAB>Ses01F_impro01_F000<TAB>neu<TAB>[2.5000, 2.5000, 2.5000]``);
    the annotators' lines (``C-E1:``, ``A-E3:``, ...) and the ``%`` header are skipped."""
    for line, text in enumerate(path.read_text(errors="replace").splitlines(), start=1):
        if not text.startswith("["):
            continue
        fields = [part.strip() for part in text.split("\t") if part.strip()]
        try:
            vad = [float(value) for value in fields[3].strip("[]").split(",")]
            utterance, label = fields[1], fields[2]
        except (IndexError, ValueError):
            expected = "[start - end]<TAB>utterance<TAB>label<TAB>[V, A, D]"
            raise ValueError(f"{path}:{line}: expected {expected}, got {text!r}") from None
        yield line, utterance, label, vad


def list_iemocap(src: str | Path, *, source: str = "iemocap") -> RecipePlan:
    """IEMOCAP (``IEMOCAP_full_release/``: ``Session1`` ... ``Session5``, each with
    ``dialog/EmoEvaluation/<dialog>.txt`` and ``sentences/wav/<dialog>/<utterance>.wav``).

    Labels: the categorical label of each utterance, in the four classes of SUPERB's
    emotion task (s3prl ``downstream/emotion``, as SSAST reports it): ``neu``, ``hap``
    (``hap`` and ``exc``), ``ang``, ``sad``; utterances with any other label (``fru``,
    ``sur``, ``fea``, ``dis``, ``oth``, ``xxx``) are dropped and counted in the notes.
    Split: ``fold<N>`` = Session N, for leave-one-session-out cross-validation.
    ``session``, ``speaker`` (``Ses01F``: the session and the gender letter of the
    utterance's own speaker, so ``Ses01F_impro01_M000`` is ``Ses01M``), ``dialog``,
    ``emotion`` (the original label) and ``vad`` (valence, activation, dominance) go into
    the json member.
    """
    src = _require_folder(Path(src), "iemocap")
    what = "iemocap (the IEMOCAP_full_release folder)"
    items: list[SourceFile] = []
    missing: list[tuple[str, str]] = []
    dropped: Counter = Counter()
    for session in range(1, IEMOCAP_SESSIONS + 1):
        folder = f"Session{session}"
        labels = _require(src / folder / "dialog" / "EmoEvaluation", what, folder=True)
        _require(src / folder / "sentences" / "wav", what, folder=True)
        evaluations = sorted(
            path for path in labels.iterdir()
            if path.is_file() and path.suffix == ".txt" and not path.name.startswith(".")
        )
        if not evaluations:
            raise FileNotFoundError(f"{what}: no <dialog>.txt label files in {labels}")
        split = f"fold{session}"
        for evaluation in evaluations:
            dialog = evaluation.stem
            for line, utterance, label, vad in _read_emo_evaluation(evaluation):
                match = _IEMOCAP_UTTERANCE.match(utterance)
                if match is None or int(match["session"]) != session:
                    raise ValueError(
                        f"{evaluation}:{line}: {utterance!r} is not an utterance of {folder} "
                        f"(expected Ses{session:02d}<F|M>_<dialog>_<F|M><number>)"
                    )
                if label not in IEMOCAP_CLASSES:
                    dropped[label] += 1
                    continue
                relative = f"{folder}/sentences/wav/{dialog}/{utterance}.wav"
                path = src / relative
                if not path.is_file():
                    missing.append((relative, split))
                    continue
                metadata = {
                    "source": source, "path": relative, "split": split, "fold": session, "session": session,
                    "speaker": f"Ses{session:02d}{match['gender']}", "dialog": dialog, "emotion": label, "vad": vad,
                }
                key = sanitize_key(f"{source}/{utterance}")
                items.append(SourceFile(path, key, (IEMOCAP_CLASSES[label],), split, metadata))
    if not items:
        raise FileNotFoundError(
            f"iemocap: none of the {len(missing)} utterances labeled {'/'.join(IEMOCAP_CLASSES)} in the "
            f"EmoEvaluation files of {src} has its wav under SessionN/sentences/wav/"
        )
    notes = []
    if dropped:
        counts = ", ".join(f"{label} {count}" for label, count in sorted(dropped.items()))
        notes.append(f"{sum(dropped.values())} utterances with other labels dropped ({counts})")
    folds = sorted({item.split for item in items}, key=lambda name: int(name[4:]))
    # As ESC-50: no training split, so the stats cover every session and one stats.json
    # serves all five leave-one-session-out runs.
    return RecipePlan(items, sorted(set(IEMOCAP_CLASSES.values())), folds, missing, notes)


# --------------------------------------------------------------------------- writing


@dataclass(frozen=True)
class Recipe:
    name: str
    list_clips: Callable[..., RecipePlan]
    target_length: int  # fbank frames (DESIGN.md §4)
    description: str


RECIPES: dict[str, Recipe] = {
    "esc50": Recipe("esc50", list_esc50, 512, "ESC-50: 50 classes, one split folder per fold"),
    "speechcommands": Recipe("speechcommands", list_speechcommands, 128, "Speech Commands v1/v2 (35 or 12 classes)"),
    "voxceleb1": Recipe("voxceleb1", list_voxceleb1, 1000, "VoxCeleb1 speaker identification (iden_split.txt)"),
    "audioset": Recipe("audioset", list_audioset, 1024, "AudioSet from its segment CSVs and downloaded clips"),
    "iemocap": Recipe(
        "iemocap", list_iemocap, 600, "IEMOCAP emotion (neu/hap+exc/ang/sad), one split folder per session"
    ),
}


def build_recipe(
    name: str,
    src: str | Path,
    out: str | Path,
    *,
    shard_size: int = 1000,
    workers: int = 1,
    seed: int = 0,
    shuffle: bool = True,
    overwrite: bool = False,
    stats: bool = True,
    stats_max_clips: int | None = None,
    source: str | None = None,
    progress: bool = True,
    **options: Any,
) -> RecipeSummary:
    """Write the dataset ``name`` (a key of :data:`RECIPES`) from its layout in ``src``
    into ``out``: shards, ``classes.txt``, ``missing.txt`` and, unless ``stats`` is false,
    ``stats.json``. ``options`` go to the recipe's lister (``variant`` for
    speechcommands, ``clips`` for audioset); ``source`` replaces the recipe name in keys
    and the json ``source`` field; ``stats_max_clips`` bounds the stats pass (the clips
    are shuffled, so the first ones are a fair sample)."""
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; known: {', '.join(RECIPES)}")
    recipe = RECIPES[name]
    plan = recipe.list_clips(src, source=source or name, **options)
    out = Path(out)
    written = write_shards(
        plan.items, out, shard_size=shard_size, workers=workers, shuffle=shuffle, seed=seed,
        overwrite=overwrite, progress=progress,
    )
    # Every listed class, found on disk or not: class indices then do not depend on which
    # clips were downloaded (write_shards wrote those of the clips at hand).
    write_classes(out, plan.classes)
    missing_file = out / "missing.txt"
    missing_file.unlink(missing_ok=True)  # a list from an earlier run would mislead
    if plan.missing:
        write_text_atomic(missing_file, "".join(f"{ident}\t{split}\n" for ident, split in plan.missing))

    summary = RecipeSummary(name, written, len(plan.classes), len(plan.missing), notes=plan.notes)
    splits = [split for split in plan.stats_splits if written.clips[split]]
    if stats and splits:
        urls = [url for split in splits for url in list_shards(out, split)]
        summary.stats = compute_stats(
            urls, target_length=recipe.target_length, workers=min(workers, len(urls)) if workers > 1 else 0,
            max_clips=stats_max_clips, progress=progress,
        )
        summary.stats_splits = splits
        write_stats(out / "stats.json", summary.stats)
    elif stats:
        summary.notes.append(f"no stats: no clips were written to {'/'.join(plan.stats_splits)}")
    return summary
