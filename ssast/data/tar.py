"""Reading the samples of one shard strictly: a tar cut short or broken raises instead of
ending early, as webdataset's own reader would (:func:`shard_samples`); only the files of
one extension can be read out (:func:`shard_members`), and a reader that stops early
closes the shard, or stops its ``pipe:`` command, at once. A sample's audio is in one of
the members :data:`AUDIO_MEMBERS`.
"""

from __future__ import annotations

import tarfile
from collections.abc import Generator, Iterator
from typing import Any

import webdataset as wds
from webdataset.tariterators import group_by_keys

AUDIO_MEMBERS = ("flac", "wav", "ogg", "mp3")


class _CompleteTarInfo(tarfile.TarInfo):
    """Tar headers read strictly. Python's tarfile ends an archive quietly where a header
    is missing, cut short or garbled, so a truncated or corrupt shard would lose its tail
    without a word; here only the end-of-archive marker (a zero block) ends it."""

    @classmethod
    def fromtarfile(cls, archive: tarfile.TarFile) -> tarfile.TarInfo:
        try:
            return super().fromtarfile(archive)
        except tarfile.EOFHeaderError:
            raise
        except tarfile.HeaderError as error:
            raise tarfile.ReadError(f"the tar is cut short or corrupt ({error})") from error


def shard_samples(url: str) -> Generator[dict[str, Any], None, None]:
    """The samples of one shard, ``{"__key__": ..., "flac": bytes, "json": bytes, ...}``, read
    strictly: a truncated or broken shard raises (``tarfile.TarError``, ``OSError``) instead
    of ending early, as webdataset's own reader would (see :func:`shard_members`). Closing
    the generator before the end closes the shard."""
    members = shard_members(url)
    try:
        yield from group_by_keys(members)
    finally:
        members.close()


def shard_members(url: str, extension: str | None = None) -> Iterator[dict[str, Any]]:
    """The files of one shard, as ``webdataset.tariterators.group_by_keys`` takes them; with
    ``extension`` (``"json"``), only the files of that extension are read out, the others
    passed over.

    Opened like webdataset opens shards (``webdataset.gopen``: paths, URLs, ``pipe:``), but
    a shard counts as read only once its end-of-archive marker was read and, for a
    command, the command exited with success: webdataset checks a command's exit status
    only while data flows, and would miss a command that fails at a tar block boundary.
    A reader that stops early (an exact pass ends mid-shard) closes the generator, which
    closes the shard at once rather than leave a file or a command open.
    """
    source = wds.gopen(url)
    try:
        with tarfile.open(fileobj=source, mode="r|*", tarinfo=_CompleteTarInfo) as archive:
            for member in archive:
                if (member.isreg() and not member.name.startswith("__")  # webdataset's metadata files
                        and (extension is None or member.name.endswith(f".{extension}"))):
                    yield {"fname": member.name, "data": archive.extractfile(member).read(), "__url__": url}
                archive.members = []  # a stream keeps every header it has read otherwise
    except tarfile.TarError:
        source.close()  # a failed command explains a broken tar best: its exit status raises here
        raise
    except GeneratorExit:
        _close_early(source)
        raise
    source.close()  # and here, after a tar that looked whole


def _close_early(source: Any) -> None:
    """Close a shard's stream before its end. A ``pipe:`` command (URLs too are read by one,
    ``curl``) still running is stopped first: it might wait on its network rather than
    take the SIGPIPE; the exit status it then reports is no error here."""
    process = getattr(source, "proc", None)
    if process is not None and process.poll() is None:
        process.terminate()
    try:
        source.close()
    except OSError:
        pass
