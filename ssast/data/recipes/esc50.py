"""The ESC-50 recipe: ``ESC-50-master/`` listed as five folds (:func:`list_esc50`)."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from ssast.data.recipes.common import RecipePlan, require, require_folder
from ssast.data.writer import SourceFile, sanitize_key


def list_esc50(src: str | Path, *, source: str = "esc50") -> RecipePlan:
    """ESC-50 (``ESC-50-master/``: ``meta/esc50.csv`` and ``audio/*.wav``).

    Label: ``category``. Split: ``fold<N>`` from the ``fold`` column, so 5-fold
    cross-validation picks shards by folder. ``fold``, ``esc10``, ``target``,
    ``src_file`` and ``take`` go into the json member.
    """
    src = require_folder(Path(src), "esc50")
    meta = require(src / "meta" / "esc50.csv", "esc50 (the ESC-50-master folder)")
    audio = require(src / "audio", "esc50 (the ESC-50-master folder)", folder=True)
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
