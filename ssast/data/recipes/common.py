"""What every recipe returns (:class:`RecipePlan`: the clips it found and what it could not
find), and the checks of a download layout the recipes share.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from ssast.data.writer import AUDIO_SUFFIXES, SourceFile


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


def require(path: Path, what: str, folder: bool = False) -> Path:
    """``path``, or a FileNotFoundError that says which dataset file is missing."""
    if not (path.is_dir() if folder else path.is_file()):
        kind = "folder" if folder else "file"
        raise FileNotFoundError(f"{what}: expected the {kind} {path}, which does not exist")
    return path


def require_folder(src: Path, dataset: str) -> Path:
    if not src.is_dir():
        raise NotADirectoryError(f"{dataset}: {src} is not a folder")
    return src


def is_audio(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in AUDIO_SUFFIXES and not path.name.startswith(".")
