"""The AudioSet recipe: its segment CSVs and ontology, matched to the clips downloaded by
YouTube id (:func:`list_audioset`).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable
from pathlib import Path

from ssast.data.recipes.common import RecipePlan, is_audio, require, require_folder
from ssast.data.writer import SourceFile, sanitize_key


AUDIOSET_SPLITS = {  # CSV file -> split name; the first two are required
    "balanced_train_segments.csv": "balanced_train",
    "eval_segments.csv": "eval",
    "unbalanced_train_segments.csv": "unbalanced_train",
}


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
        if not is_audio(path):
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
    src = require_folder(Path(src), "audioset")
    what = "audioset (the folder of AudioSet's CSVs)"
    ontology = _read_ontology(require(src / "ontology.json", what))
    csvs = {name: split for name, split in AUDIOSET_SPLITS.items() if name != "unbalanced_train_segments.csv"}
    for name in csvs:
        require(src / name, what)
    if (src / "unbalanced_train_segments.csv").is_file():
        csvs["unbalanced_train_segments.csv"] = "unbalanced_train"
    clips_folder = Path(clips) if clips is not None else src / "audio"
    require(clips_folder, "audioset clips (--clips)", folder=True)

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
