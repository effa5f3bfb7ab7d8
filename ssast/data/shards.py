"""Finding a set's shards and what lies beside them: shard URLs from a folder or a pattern
(:func:`list_shards`), ``classes.txt`` (:func:`read_classes`) and the other files beside the
shards (:func:`find_beside`), and the samples in each shard (:func:`shard_sizes`).
"""

from __future__ import annotations

import glob
import json
import logging
import re
from collections.abc import Sequence
from pathlib import Path

import webdataset as wds
from tqdm.auto import tqdm

from ssast.data.tar import shard_samples
from ssast.data.shard_sets import SHARD_INDEX, interrupted_output

log = logging.getLogger(__name__)


def list_shards(source: str | Path | Sequence[str], split: str | None = None) -> list[str]:
    """Shard URLs from a directory (``source/split/*.tar``), a webdataset pattern, or a list
    of either (e.g. the training folds of a cross-validation).

    Patterns are anything webdataset opens: brace expansions, local paths, ``http(s)://``
    URLs and ``pipe:`` commands, separated by ``::`` to join several sets; a local path may
    also be a glob (``/data/pool/*.tar``, quoted so that the program sees it, not the shell). A folder lists
    its complete shards only: ``ssast-data`` writes each under a temporary name until it
    is complete; a folder whose writing was interrupted is read with a warning.

    A local path that does not exist fails here, at once, naming it: retrying it would not
    make it appear (the readers retry remote and ``pipe:`` sources only when they fail).
    """
    if not isinstance(source, (str, Path)):
        urls = [url for item in source for url in list_shards(item, split)]
    elif Path(source).is_dir():
        folder = Path(source) / split if split else Path(source)
        urls = sorted(str(path) for path in folder.glob("*.tar"))
        if interrupted_output(folder):
            log.warning("%s is being written or its writing was interrupted: reading its %d complete shards",
                        folder, len(urls))
    else:
        urls = [path for url in wds.shardlists.expand_urls(str(source)) for path in _matches(url)]
        missing = [url for url in urls if _is_local(url) and not Path(url.removeprefix("file:")).is_file()]
        if missing == urls:
            raise FileNotFoundError(f"no shards at {source}: no such file or folder")
        if missing:
            raise FileNotFoundError(f"{len(missing)} of the {len(urls)} shards of {source} do not exist, "
                                    f"e.g. {missing[0]}")
    if not urls:
        where = f"{source}/{split}" if split else str(source)
        raise FileNotFoundError(f"no shards found at {where}")
    return urls


def _matches(url: str) -> list[str]:
    """The shards a local glob names, sorted (none: an error that says so), or ``[url]``."""
    if not _is_local(url) or not re.search(r"[*?[]", url):
        return [url]
    matches = sorted(glob.glob(url.removeprefix("file:")))
    if not matches:
        raise FileNotFoundError(f"no shards match {url}")
    return matches


def _is_local(url: str) -> bool:
    """A path on this machine (``file:`` or no scheme), not a URL or a ``pipe:`` command."""
    return url.startswith("file:") or re.match(r"^[a-zA-Z][\w+.-]*:", url) is None


def find_beside(shards: str | Path, name: str) -> Path | None:
    """The file ``name`` (``classes.txt``, ``stats.json``) in the shards' folder or the folder
    above it (a dataset root holding split folders); ``None`` when neither has it."""
    folder = Path(shards)
    for candidate in (folder / name, folder.parent / name):
        if candidate.is_file():
            return candidate
    return None


def read_classes(path: str | Path) -> list[str]:
    """Class names from a ``classes.txt`` (one per line; the line number is the index)."""
    classes = [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]
    twice = sorted({name for name in classes if classes.count(name) > 1})
    if twice:
        raise ValueError(f"{path} lists {', '.join(map(repr, twice))} more than once: one line per class, each "
                         "class once")
    return classes


def shard_sizes(urls: Sequence[str], progress: bool = True) -> list[int]:
    """Samples in each shard, what a :class:`~ssast.data.stream.ShardStream` plans exact passes with (``sizes``).

    Read from the ``shards.json`` that ``ssast-data`` writes beside the shards it completes;
    a shard no index lists (a URL, a ``pipe:`` command, a folder written by other means) is
    counted by reading it through, once. A shard that fails while being counted counts the
    samples before the fault: the training readers meet the fault too and make up for it.
    """
    indexes: dict[Path, dict[str, int]] = {}
    sizes: list[int | None] = []
    for url in urls:
        if not _is_local(url):
            sizes.append(None)
            continue
        path = Path(url.removeprefix("file:"))
        if path.parent not in indexes:
            indexes[path.parent] = _read_shard_index(path.parent)
        sizes.append(indexes[path.parent].get(path.name))
    uncounted = [index for index, size in enumerate(sizes) if size is None]
    if uncounted:
        log.warning("counting the samples of %d of %d training shards by reading them: no %s lists them (e.g. %s)",
                    len(uncounted), len(urls), SHARD_INDEX, urls[uncounted[0]])
        for index in tqdm(uncounted, unit="shard", desc="counting samples", disable=not progress):
            sizes[index] = _count_samples(urls[index])
    return sizes


def _read_shard_index(folder: Path) -> dict[str, int]:
    """Samples per shard name from ``folder/shards.json``; empty without a usable index."""
    try:
        shards = json.loads((folder / SHARD_INDEX).read_text()).get("shards")
    except (OSError, ValueError, AttributeError):
        return {}
    return {name: int(count) for name, count in shards.items()} if isinstance(shards, dict) else {}


def _count_samples(url: str) -> int:
    count = 0
    try:
        for _ in shard_samples(url):
            count += 1
    except Exception as error:  # as in ShardSamples: opening and reading fail in many ways
        log.warning("shard %s failed after %d samples while they were counted (%s: %s)",
                    url, count, type(error).__name__, error)
    return count
