"""The table of recipes (:data:`RECIPES`: each dataset's lister and target length) and
:func:`build_recipe`, which writes a dataset from its layout: shards, ``classes.txt``,
``missing.txt`` and ``stats.json``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ssast.data.recipes.audioset import list_audioset
from ssast.data.recipes.common import RecipePlan
from ssast.data.recipes.esc50 import list_esc50
from ssast.data.recipes.iemocap import list_iemocap
from ssast.data.recipes.speechcommands import list_speechcommands
from ssast.data.recipes.voxceleb1 import list_voxceleb1
from ssast.data.shards import list_shards
from ssast.data.stats import compute_stats, write_stats
from ssast.data.shard_sets import WriteSummary, write_classes, write_text_atomic
from ssast.data.writer import write_shards


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
