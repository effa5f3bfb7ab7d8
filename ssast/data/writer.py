"""Writing audio into WebDataset shards: 16 kHz mono FLAC plus a ``json`` member.

Layout of an output folder (DESIGN.md §3)::

    OUT/classes.txt            one label per line, when any file has labels
    OUT/errors.txt             one line per file that failed: path <TAB> reason (only if any did)
    OUT/<split>/<split>-000000.tar ...   or   OUT/shard-000000.tar ... without splits
    OUT/<split>/shards.json    the index of the folder's shards, written last

Files are decoded, mixed to mono, resampled and encoded in worker processes; a file that
fails is listed in ``errors.txt`` and the rest still get written.

A crash or a kill must never leave half a shard that looks whole: each shard is written
under a temporary name (``NAME.tar.partial``) and renamed once complete, and a folder's
``shards.json`` says ``"complete": false`` from the first shard on until the last one is
in place. Writing into a folder whose writing was interrupted clears its leftovers and
starts again; a complete folder is only replaced with ``overwrite``.
"""

from __future__ import annotations

import csv
import json
import logging
import multiprocessing
import os
import random
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch
import webdataset as wds
from tqdm.auto import tqdm

from ssast.audio import SAMPLE_RATE, AudioDecodeError, decode_audio, encode_flac, read_audio_window
from ssast.files import written_atomically

log = logging.getLogger(__name__)

PARTIAL = ".partial"  # the suffix of a file still being written
SHARD_INDEX = "shards.json"

AUDIO_SUFFIXES = frozenset({".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff", ".au", ".w64", ".caf"})

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class SourceFile:
    """An audio file to put into shards, with what the ``json`` member will say about it.
    With ``seconds`` set, only that window from ``start`` (seconds) is taken (e.g. one
    second of a long noise recording), read by seeking, with no temporary files."""

    path: Path
    key: str
    labels: tuple[str, ...] = ()
    split: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    start: float = 0.0
    seconds: float | None = None

    def describe(self) -> str:
        """The file, and the window when there is one (for errors.txt)."""
        return str(self.path) if self.seconds is None else f"{self.path}@{self.start:g}s+{self.seconds:g}s"


@dataclass(frozen=True)
class EncodedClip:
    key: str
    flac: bytes
    metadata: dict[str, Any]
    split: str | None = None


@dataclass
class WriteSummary:
    out: Path
    clips: Counter = field(default_factory=Counter)  # per split
    shards: Counter = field(default_factory=Counter)  # per split
    seconds: float = 0.0
    errors: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    ignored: int = 0  # files that are not audio, by their suffix

    def __str__(self) -> str:
        splits = ", ".join(
            f"{split or 'all'}: {self.clips[split]} clips in {self.shards[split]} shards"
            for split in sorted(self.clips, key=str)
        )
        duration = f"{self.seconds / 3600:.1f} h" if self.seconds >= 3600 else f"{self.seconds / 60:.1f} min"
        text = f"wrote {sum(self.clips.values())} clips ({duration}) to {self.out} [{splits or 'nothing'}]"
        return text + left_out(len(self.errors), "failed", self.out / "errors.txt", self.ignored)


def left_out(count: int, verb: str, reasons: Path, ignored: int) -> str:
    """The end of a run's summary line: how many inputs ``verb`` (and where the reasons are
    when any did), and the non-audio files passed over."""
    text = f"; {count} {verb}" + (f" (reasons in {reasons})" if count else "")
    return text + (f"; ignored {ignored} non-audio files" if ignored else "")


def sanitize_key(text: str) -> str:
    """A WebDataset key: dots would split a member name, so they become underscores."""
    return text.replace("\\", "/").replace(".", "_").strip("/")


def scan_folder(
    root: str | Path, source: str | None = None, split: str | None = None
) -> tuple[list[SourceFile], int]:
    """Audio files under ``root``: those in a sub-folder are labeled with its name, those
    directly in ``root`` are unlabeled; all go to ``split`` when given. Returns the files
    and how many non-audio files were ignored."""
    root = Path(root)
    if not root.is_dir():
        raise NotADirectoryError(f"{root} is not a folder")
    source = source or root.resolve().name
    files, ignored = [], 0
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root)
        if not path.is_file() or any(part.startswith(".") for part in relative.parts):
            continue
        if path.suffix.lower() not in AUDIO_SUFFIXES:
            ignored += 1
            continue
        labels = (relative.parts[0],) if len(relative.parts) > 1 else ()
        key = sanitize_key(f"{source}/{relative.with_suffix('')}")
        metadata = {"source": source, "path": str(relative)} | ({"split": split} if split else {})
        files.append(SourceFile(path, key, labels, split, metadata))
    return files, ignored


def read_manifest(manifest: str | Path, source: str | None = None) -> list[SourceFile]:
    """Files listed in a CSV with a ``path`` column (relative to the CSV's folder or
    absolute), optional ``labels`` (separated by ``;``), ``split`` and ``key``; any other
    column is copied into the ``json`` member (numbers as numbers)."""
    manifest = Path(manifest)
    source = source or manifest.stem
    with manifest.open(newline="") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames is None or "path" not in reader.fieldnames:
            raise ValueError(f"{manifest} needs a 'path' column; it has {reader.fieldnames}")
        files = []
        for line, row in enumerate(reader, start=2):
            relative = (row.pop("path") or "").strip()
            if not relative:
                raise ValueError(f"{manifest}:{line}: empty path")
            labels = tuple(label.strip() for label in (row.pop("labels", "") or "").split(";") if label.strip())
            split = (row.pop("split", "") or "").strip() or None
            key = (row.pop("key", "") or "").strip() or f"{source}/{Path(relative).with_suffix('')}"
            metadata = {"source": source, "path": relative}
            metadata.update({name: _parse_value(value) for name, value in row.items() if name and value not in (None, "")})
            if split:
                metadata["split"] = split
            files.append(SourceFile(manifest.parent / relative, sanitize_key(key), labels, split, metadata))
    return files


def _parse_value(text: str) -> int | float | str:
    for parse in (int, float):
        try:
            return parse(text)
        except ValueError:
            pass
    return text


def encode_clip(key: str, waveform: torch.Tensor, metadata: dict[str, Any], split: str | None = None) -> EncodedClip:
    """A 16 kHz mono waveform as FLAC, with ``sr`` and ``duration`` added to its metadata."""
    metadata = {**metadata, "sr": SAMPLE_RATE, "duration": round(waveform.shape[-1] / SAMPLE_RATE, 4)}
    return EncodedClip(key, encode_flac(waveform), metadata, split)


def _encode_file(file: SourceFile) -> EncodedClip | tuple[SourceFile, str]:
    try:
        if file.seconds is None:
            waveform, _ = decode_audio(file.path.read_bytes())
        else:
            waveform, _ = read_audio_window(file.path, file.start, file.seconds)
    except (AudioDecodeError, OSError) as error:
        return file, str(error)
    metadata = {"labels": list(file.labels), **file.metadata}
    return encode_clip(file.key, waveform, metadata, file.split)


def split_folder(out: str | Path, split: str | None) -> Path:
    """Where the shards of ``split`` go in an output folder (``out`` itself without splits)."""
    return Path(out) / split if split else Path(out)


def write_text_atomic(path: str | Path, text: str) -> None:
    """A small text file (an index, a list, stats) that a reader, or a rerun after a crash,
    finds old or new, never half-written (:func:`ssast.files.written_atomically`)."""
    with written_atomically(path) as partial:
        partial.write_text(text)


def interrupted_output(folder: str | Path) -> bool:
    """Whether the writing of the shards in ``folder`` started and did not finish: its
    ``shards.json`` is not marked complete, or a shard still has its temporary name."""
    folder = Path(folder)
    index = folder / SHARD_INDEX
    if index.is_file():
        try:
            if not json.loads(index.read_text()).get("complete"):
                return True
        except ValueError:
            return True
    return any(folder.glob(f"*.tar{PARTIAL}"))


def check_output(folder: str | Path, overwrite: bool) -> None:
    """Refuse to write into ``folder`` when it holds shards that were written completely
    (or by something else), unless ``overwrite``. Leftovers of an interrupted writing are
    no reason to refuse: they are cleared when writing starts."""
    folder = Path(folder)
    if overwrite or interrupted_output(folder):
        return
    existing = sorted(folder.glob("*.tar"))
    if existing:
        raise FileExistsError(f"{folder} already holds shards ({existing[0].name}, ...); pass overwrite to replace them")


class _AtomicShardWriter(wds.ShardWriter):
    """A ``webdataset.ShardWriter`` whose shards appear under their names only once
    complete: each is written as ``NAME.partial``, flushed to disk and renamed.
    ``written`` maps the names of the complete shards to their sample counts."""

    def __init__(self, pattern: str, **kwargs: Any) -> None:
        self.written: dict[str, int] = {}
        super().__init__(pattern + PARTIAL, post=self._publish, **kwargs)

    def _publish(self, partial: str) -> None:
        with open(partial, "rb") as handle:
            os.fsync(handle.fileno())
        final = partial.removesuffix(PARTIAL)
        os.replace(partial, final)
        self.written[Path(final).name] = self.count


class ShardSetWriter:
    """Shard writers for the splits of one output folder, opened on demand (see the module
    docstring for how an interrupted writing is told from a complete one).

    Used as a context manager, an exception leaves the folders marked incomplete, so that
    the next run starts them again; :meth:`close` marks them complete.
    """

    def __init__(self, out: str | Path, shard_size: int = 1000, overwrite: bool = False) -> None:
        if shard_size < 1:
            raise ValueError(f"shard_size must be at least 1, got {shard_size}")
        self.out = Path(out)
        self.shard_size = shard_size
        self.overwrite = overwrite
        self.summary = WriteSummary(self.out)
        self._writers: dict[str | None, _AtomicShardWriter] = {}
        self._keys: set[str] = set()

    def __enter__(self) -> ShardSetWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc_info: object) -> None:
        self.close(complete=exc_type is None)

    def _writer(self, split: str | None) -> _AtomicShardWriter:
        if split not in self._writers:
            folder = split_folder(self.out, split)
            check_output(folder, self.overwrite)
            if interrupted_output(folder):
                log.warning("%s holds the leftovers of an interrupted writing: clearing them and starting again", folder)
            for path in [*folder.glob("*.tar"), *folder.glob(f"*.tar{PARTIAL}")]:
                path.unlink()
            folder.mkdir(parents=True, exist_ok=True)
            write_text_atomic(folder / SHARD_INDEX, json.dumps({"complete": False}) + "\n")
            pattern = str(folder / f"{split or 'shard'}-%06d.tar")
            # A fixed mtime makes the tar bytes a function of the content alone.
            self._writers[split] = _AtomicShardWriter(pattern, maxcount=self.shard_size, verbose=0, mtime=0.0)
        return self._writers[split]

    def write(self, clip: EncodedClip) -> None:
        if clip.key in self._keys:
            raise ValueError(f"duplicate key {clip.key!r}")
        self._keys.add(clip.key)
        sample = {"__key__": clip.key, "flac": clip.flac, "json": json.dumps(clip.metadata).encode()}
        self._writer(clip.split).write(sample)
        self.summary.clips[clip.split] += 1
        self.summary.seconds += clip.metadata["duration"]

    def fail(self, path: str, reason: str) -> None:
        self.summary.errors.append((path, reason))

    def close(self, complete: bool = True) -> None:
        """Finish the last shards; with ``complete``, write each folder's index and
        ``errors.txt`` (without, the folders stay marked as interrupted)."""
        for split, writer in self._writers.items():
            self.summary.shards[split] = writer.shard  # opened on the first write, so none is empty
            writer.close()
            if complete:
                index = {"complete": True, "samples": sum(writer.written.values()), "shards": writer.written}
                write_text_atomic(split_folder(self.out, split) / SHARD_INDEX, json.dumps(index, indent=1) + "\n")
        self._writers.clear()
        if not complete:
            return
        errors = self.out / "errors.txt"
        errors.unlink(missing_ok=True)  # a list from an earlier run would mislead
        if self.summary.errors:
            self.out.mkdir(parents=True, exist_ok=True)
            lines = (f"{path}\t{' '.join(reason.split())}\n" for path, reason in self.summary.errors)
            write_text_atomic(errors, "".join(lines))


def write_classes(out: str | Path, labels: Iterable[str]) -> list[str]:
    """``classes.txt``: the sorted distinct labels; the line number is the class index."""
    classes = sorted(set(labels))
    if classes:
        Path(out).mkdir(parents=True, exist_ok=True)
        write_text_atomic(Path(out) / "classes.txt", "".join(f"{name}\n" for name in classes))
    return classes


def parallel_map(function: Callable[[T], R], items: Sequence[T], workers: int) -> Iterator[R]:
    """``map`` over worker processes, in order; ``workers <= 1`` stays in this process.

    Each item is computed with one torch thread either way: results of some kernels depend
    on the thread count, and the output must not depend on ``workers``.
    """
    if workers <= 1:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            yield from map(function, items)
        finally:
            torch.set_num_threads(threads)
        return
    with multiprocessing.get_context().Pool(workers, initializer=torch.set_num_threads, initargs=(1,)) as pool:
        yield from pool.imap(function, items, chunksize=4)


def write_shards(
    files: Sequence[SourceFile],
    out: str | Path,
    *,
    shard_size: int = 1000,
    workers: int = 1,
    shuffle: bool = True,
    seed: int = 0,
    overwrite: bool = False,
    progress: bool = True,
) -> WriteSummary:
    """Re-encode ``files`` into shards under ``out``, one folder per split.

    The order is shuffled (with ``seed``) so that every shard holds a mix of classes.
    ``classes.txt`` covers the labels of every listed file, written or not, so class
    indices do not depend on which files happened to fail. A split folder that holds
    complete shards is refused, before anything is written, unless ``overwrite``; one
    whose writing was interrupted is written again from the start.
    """
    files = list(files)
    for split in sorted({file.split for file in files}, key=str):
        check_output(split_folder(out, split), overwrite)
    if shuffle:
        random.Random(seed).shuffle(files)
    write_classes(out, (label for file in files for label in file.labels))
    with ShardSetWriter(out, shard_size, overwrite) as writer:
        encoded = parallel_map(_encode_file, files, workers)
        for result in tqdm(encoded, total=len(files), unit="clip", desc="encoding", disable=not progress):
            if isinstance(result, EncodedClip):
                try:
                    writer.write(result)
                except ValueError as error:
                    writer.fail(result.metadata.get("path", result.key), str(error))
            else:
                file, reason = result
                writer.fail(file.describe(), reason)
    return writer.summary
