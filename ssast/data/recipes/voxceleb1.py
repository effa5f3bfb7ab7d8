"""The VoxCeleb1 speaker identification recipe: ``iden_split.txt`` and its wavs
(:func:`list_voxceleb1`).
"""

from __future__ import annotations

from pathlib import Path

from ssast.data.recipes.common import RecipePlan, require, require_folder
from ssast.data.writer import SourceFile, sanitize_key


def list_voxceleb1(src: str | Path, *, source: str = "voxceleb1") -> RecipePlan:
    """VoxCeleb1 speaker identification (``iden_split.txt`` and ``wav/<speaker>/<video>/*.wav``).

    Label: the speaker id. Splits from ``iden_split.txt``: 1/2/3 = ``train``/``val``/``test``.
    ``speaker`` and ``video`` go into the json member.
    """
    src = require_folder(Path(src), "voxceleb1")
    what = "voxceleb1 (the VoxCeleb1 folder)"
    split_file = require(src / "iden_split.txt", what)
    wav = require(src / "wav", what, folder=True)
    splits = {"1": "train", "2": "val", "3": "test"}
    items: list[SourceFile] = []
    missing, classes = [], set()
    for line, text in enumerate(split_file.read_text().splitlines(), start=1):
        if not text.strip():
            continue
        fields = text.split()
        parts = fields[-1].replace("\\", "/").split("/") if len(fields) == 2 else []
        if fields[0] not in splits or len(parts) != 3:
            raise ValueError(f"{split_file}:{line}: expected '<1|2|3> <speaker>/<video>/<file>.wav', got {text!r}")
        split, (speaker, video, name) = splits[fields[0]], parts
        classes.add(speaker)
        relative = "/".join(parts)
        path = wav / relative
        if not path.is_file():
            missing.append((f"wav/{relative}", split))
            continue
        metadata = {"source": source, "path": f"wav/{relative}", "split": split, "speaker": speaker, "video": video}
        key = sanitize_key(f"{source}/{speaker}/{video}/{Path(name).stem}")
        items.append(SourceFile(path, key, (speaker,), split, metadata))
    if not items:
        raise FileNotFoundError(f"voxceleb1: none of the {len(missing)} files listed in {split_file} is in {wav}")
    return RecipePlan(items, sorted(classes), ["train"], missing)
