"""Files that are never half-written: whenever the writing process dies, a path holds its
previous content or the complete new one."""

from __future__ import annotations

import glob
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def _fsync(path: Path) -> None:
    with open(path, "r+b") as file:
        os.fsync(file.fileno())


def _fsync_folder(folder: Path) -> None:
    """Makes a rename in ``folder`` durable (POSIX); a no-op where folders cannot be opened."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


@contextmanager
def written_atomically(path: str | Path, suffix: str = ".partial") -> Iterator[Path]:
    """A temporary path beside ``path`` to write the new file to. When the block ends, the
    file is flushed to the disk and renamed over ``path`` (``os.replace``: one step within a
    folder), and the rename is flushed too; if the block raises, the temporary file is
    removed and ``path`` is untouched.

    Whenever the process dies, ``path`` holds either its previous content or the complete new
    one. The temporary file is hidden, ``.last.ckpt.1f2e3d4c.partial``, with ``suffix`` (give
    ``path``'s own to a writer that picks the format by it); one left behind by a killed
    writer is removed by the next successful write of the same ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{secrets.token_hex(4)}{suffix}")
    temp.open("xb").close()  # created with the umask's permissions, unlike mkstemp's 0600
    try:
        yield temp
        _fsync(temp)
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)
    for stale in path.parent.glob(f".{glob.escape(path.name)}.*{glob.escape(suffix)}"):
        stale.unlink(missing_ok=True)
