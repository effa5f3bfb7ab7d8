"""Writing audio into WebDataset shards: 16 kHz mono FLAC plus a ``json`` member.

Layout of an output folder (DESIGN.md §3)::

    OUT/classes.txt            one label per line, when any file has labels
    OUT/errors.txt             one line per file that failed: path <TAB> reason (only if any did)
    OUT/<split>/<split>-000000.tar ...   or   OUT/shard-000000.tar ... without splits
    OUT/<split>/shards.json    the index of the folder's shards, written last

Files are decoded, mixed to mono, resampled and encoded in worker processes; a file that
fails is listed in ``errors.txt`` and the rest still get written. The shards are written by
:class:`~ssast.data.shard_sets.ShardSetWriter`: never half a shard that looks whole, and a
writing that was interrupted (a kill, a full disk) goes on from its complete shards when the
same command runs again.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import multiprocessing
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch
from tqdm.auto import tqdm

from ssast.audio import SAMPLE_RATE, AudioDecodeError, decode_audio, encode_flac, read_audio_window
from ssast.data.shard_sets import (
    EncodedClip, ShardSetWriter, WriteSummary, check_output, split_folder, write_classes,
)

log = logging.getLogger(__name__)

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
    absolute), optional ``labels`` (separated by ``;``; none: an unlabeled clip), ``split``
    and ``key``; any other column is copied into the ``json`` member (numbers as numbers)."""
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


def without_split_gaps(files: list[SourceFile]) -> tuple[list[SourceFile], list[tuple[str, str]]]:
    """Where some files name a split, every file must: those without are left out,
    ``(where, why)``, rather than written beside the split folders as a set of their own."""
    if not any(file.split for file in files):
        return files, []
    left_out = [(file.describe(), "no split, though other rows of the manifest name one")
                for file in files if file.split is None]
    return [file for file in files if file.split is not None], left_out


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
    left_out: Sequence[tuple[str, str]] = (),
) -> WriteSummary:
    """Re-encode ``files`` into shards under ``out``, one folder per split.

    The order is shuffled (with ``seed``) so that every shard holds a mix of classes.
    ``classes.txt`` covers the labels of every listed file, written or not, so class
    indices do not depend on which files happened to fail. A split folder that holds
    complete shards is refused, before anything is written, unless ``overwrite``; one
    whose writing was interrupted goes on from its complete shards when it was writing the
    same ``files`` in the same order at the same ``shard_size`` (see :func:`fingerprint`),
    and is written again from the start otherwise. ``left_out``: inputs the
    caller passed over, ``(where, why)``, listed in ``errors.txt`` with the files that failed
    and counted alike.
    """
    files = list(files)
    splits = sorted({file.split for file in files}, key=str)
    for split in splits:
        check_output(split_folder(out, split), overwrite)
    if shuffle:
        random.Random(seed).shuffle(files)
    write_classes(out, (label for file in files for label in file.labels))
    with ShardSetWriter(out, shard_size, overwrite, fingerprint(files, shard_size)) as writer:
        done = set().union(*(writer.resume(split) for split in splits))
        todo = [file for file in files if file.key not in done]
        if done:
            log.info("going on from an interrupted writing: %d clips already in complete shards, %d to write",
                     len(done), len(todo))
        for where, why in left_out:
            writer.fail(where, why)
        encoded = parallel_map(_encode_file, todo, workers)
        for result in tqdm(encoded, total=len(todo), unit="clip", desc="encoding", disable=not progress):
            if isinstance(result, EncodedClip):
                try:
                    writer.write(result)
                except ValueError as error:
                    writer.fail(result.metadata.get("path", result.key), str(error))
            else:
                file, reason = result
                writer.fail(file.describe(), reason)
    return writer.summary


def fingerprint(files: Sequence[SourceFile], shard_size: int) -> str:
    """What names a writing of ``files`` (in their order) into shards of ``shard_size``: an
    interrupted writing is gone on with only by the same one."""
    listing = [[file.key, file.split, str(file.path), file.start, file.seconds] for file in files]
    return hashlib.sha256(json.dumps([shard_size, listing]).encode()).hexdigest()[:16]
