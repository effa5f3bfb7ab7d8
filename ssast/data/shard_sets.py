"""Sets of shards written so that a reader never takes half a shard for a whole one, and an
interrupted writing goes on where it stopped.

Each shard is written under a temporary name (``NAME.tar.partial``) and renamed once
complete, and a folder's ``shards.json`` says ``"complete": false``, with the shards complete
so far, until the last one is in place. A writing that fails (a full disk, a kill) leaves
those complete shards; the same writing started again (the same inputs, in the same order,
with the same shard size: its ``fingerprint``) keeps them and writes only the clips that are
not in them yet. Any other writing into such a folder clears it and starts again; a complete
folder is only replaced with ``overwrite``.
"""

from __future__ import annotations

import json
import logging
import os
import tarfile
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import webdataset as wds

from ssast.files import written_atomically

log = logging.getLogger(__name__)

PARTIAL = ".partial"  # the suffix of a file still being written
SHARD_INDEX = "shards.json"


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
    labeled: int = 0  # clips with at least one label
    kept: int = 0  # clips in the shards an interrupted writing had completed, gone on from

    def __str__(self) -> str:
        splits = ", ".join(
            f"{split or 'all'}: {self.clips[split]} clips in {self.shards[split]} shards"
            for split in sorted(self.clips, key=str)
        )
        duration = f"{self.seconds / 3600:.1f} h" if self.seconds >= 3600 else f"{self.seconds / 60:.1f} min"
        written = sum(self.clips.values())
        text = f"wrote {written} clips ({duration}) to {self.out} [{splits or 'nothing'}]"
        if 0 < self.labeled < written - self.kept:  # an unlabeled clip among labeled ones is said, not assumed
            text += f"; {written - self.kept - self.labeled} of them unlabeled"
        if self.kept:
            text += f"; {self.kept} of them kept from the interrupted writing"
        return text + left_out(len(self.errors), "failed", self.out / "errors.txt", self.ignored)


def left_out(count: int, verb: str, reasons: Path, ignored: int) -> str:
    """The end of a run's summary line: how many inputs ``verb`` (and where the reasons are
    when any did), and the non-audio files passed over."""
    text = f"; {count} {verb}" + (f" (reasons in {reasons})" if count else "")
    return text + (f"; ignored {ignored} non-audio files" if ignored else "")


def write_classes(out: str | Path, labels: Iterable[str]) -> list[str]:
    """``classes.txt``: the sorted distinct labels; the line number is the class index."""
    classes = sorted(set(labels))
    if classes:
        Path(out).mkdir(parents=True, exist_ok=True)
        write_text_atomic(Path(out) / "classes.txt", "".join(f"{name}\n" for name in classes))
    return classes


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
    complete: each is written as ``NAME.partial``, flushed to disk and renamed, and then
    ``published`` is called. ``written`` maps the names of the complete shards to their
    sample counts (with those of an interrupted writing it goes on from)."""

    def __init__(self, pattern: str, written: dict[str, int], published: Callable[[], None], **kwargs: Any) -> None:
        self.written, self.published = dict(written), published
        super().__init__(pattern + PARTIAL, post=self._publish, start_shard=len(written), **kwargs)

    def _publish(self, partial: str) -> None:
        with open(partial, "rb") as handle:
            os.fsync(handle.fileno())
        final = partial.removesuffix(PARTIAL)
        os.replace(partial, final)
        self.written[Path(final).name] = self.count
        self.published()

    def abort(self) -> None:
        """Close without publishing the shard being written: its file goes (a full disk gets
        its space back), the complete ones stay."""
        if self.tarstream is not None:
            try:
                self.tarstream.close()
            except OSError:  # what made the writing fail may make the close fail too
                pass
            self.tarstream = None
        if self.fname is not None:
            Path(self.fname).unlink(missing_ok=True)


class ShardSetWriter:
    """Shard writers for the splits of one output folder, opened on demand (see the module
    docstring for how an interrupted writing is told from a complete one, and when it is
    gone on with: ``fingerprint``, which names the writing; ``None``: never).

    Used as a context manager, an exception leaves the folders marked incomplete with their
    complete shards, and drops the shards being written; :meth:`close` marks them complete.
    """

    def __init__(self, out: str | Path, shard_size: int = 1000, overwrite: bool = False,
                 fingerprint: str | None = None) -> None:
        if shard_size < 1:
            raise ValueError(f"shard_size must be at least 1, got {shard_size}")
        self.out = Path(out)
        self.shard_size = shard_size
        self.overwrite = overwrite
        self.fingerprint = fingerprint
        self.summary = WriteSummary(self.out)
        self._writers: dict[str | None, _AtomicShardWriter] = {}
        self._kept: dict[str | None, dict[str, int]] = {}  # per split: complete shards kept, and their clips
        self._kept_keys: dict[str | None, set[str]] = {}
        self._keys: set[str] = set()

    def __enter__(self) -> ShardSetWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc_info: object) -> None:
        self.close(complete=exc_type is None)

    def resume(self, split: str | None) -> set[str]:
        """The keys already in complete shards of ``split``'s folder, kept from an interrupted
        writing with this writer's fingerprint (none when there is no such writing)."""
        if split not in self._kept:
            folder = split_folder(self.out, split)
            kept: dict[str, int] = {}
            if self.fingerprint is not None and not self.overwrite and interrupted_output(folder):
                index = _read_index(folder)
                if index.get("fingerprint") == self.fingerprint:
                    kept = {name: count for name, count in index.get("shards", {}).items() if (folder / name).is_file()}
            self._kept[split] = kept
            self._kept_keys[split] = set().union(*(_shard_keys(folder / name) for name in kept))
            self._keys |= self._kept_keys[split]
        return self._kept_keys[split]

    def _writer(self, split: str | None) -> _AtomicShardWriter:
        if split not in self._writers:
            folder = split_folder(self.out, split)
            check_output(folder, self.overwrite)
            self.resume(split)
            kept = self._kept[split]
            if kept:
                log.info("%s: going on from the %d complete shards of an interrupted writing", folder, len(kept))
            elif interrupted_output(folder):
                log.warning("%s holds the leftovers of another, interrupted writing: clearing them and starting "
                            "again", folder)
            for path in [*folder.glob("*.tar"), *folder.glob(f"*.tar{PARTIAL}")]:
                if path.name not in kept:
                    path.unlink()
            folder.mkdir(parents=True, exist_ok=True)
            pattern = str(folder / f"{split or 'shard'}-%06d.tar")
            # A fixed mtime makes the tar bytes a function of the content alone.
            writer = _AtomicShardWriter(pattern, kept, lambda: self._write_index(split, complete=False),
                                        maxcount=self.shard_size, verbose=0, mtime=0.0)
            self._writers[split] = writer
            self._write_index(split, complete=False)
        return self._writers[split]

    def _write_index(self, split: str | None, complete: bool) -> None:
        written = self._writers[split].written
        index = {"complete": complete, "samples": sum(written.values()), "shards": written}
        if not complete and self.fingerprint is not None:
            index["fingerprint"] = self.fingerprint
        write_text_atomic(split_folder(self.out, split) / SHARD_INDEX, json.dumps(index, indent=1) + "\n")

    def write(self, clip: EncodedClip) -> None:
        if clip.key in self._keys:
            raise ValueError(f"duplicate key {clip.key!r}")
        self._keys.add(clip.key)
        sample = {"__key__": clip.key, "flac": clip.flac, "json": json.dumps(clip.metadata).encode()}
        self._writer(clip.split).write(sample)
        self.summary.clips[clip.split] += 1
        self.summary.labeled += bool(clip.metadata.get("labels"))
        self.summary.seconds += clip.metadata["duration"]

    def fail(self, path: str, reason: str) -> None:
        self.summary.errors.append((path, reason))

    def close(self, complete: bool = True) -> None:
        """Finish the last shards; with ``complete``, write each folder's index and
        ``errors.txt`` (without, the shards being written are dropped and the folders stay
        marked as interrupted, with their complete shards)."""
        for split, writer in self._writers.items():
            if not complete:
                writer.abort()
                continue
            writer.close()
            self.summary.shards[split] = len(writer.written)
            self.summary.kept += sum(self._kept[split].values())
            self.summary.clips[split] += sum(self._kept[split].values())
            self._write_index(split, complete=True)
        self._writers.clear()
        if not complete:
            return
        errors = self.out / "errors.txt"
        errors.unlink(missing_ok=True)  # a list from an earlier run would mislead
        if self.summary.errors:
            self.out.mkdir(parents=True, exist_ok=True)
            lines = (f"{path}\t{' '.join(reason.split())}\n" for path, reason in self.summary.errors)
            write_text_atomic(errors, "".join(lines))


def _read_index(folder: Path) -> dict[str, Any]:
    try:
        return json.loads((folder / SHARD_INDEX).read_text())
    except (OSError, ValueError):
        return {}


def _shard_keys(path: Path) -> set[str]:
    """The sample keys of a shard, from its members' names (``KEY.flac``, ``KEY.json``)."""
    with tarfile.open(path) as archive:
        return {member.name.rsplit(".", 1)[0] for member in archive}
