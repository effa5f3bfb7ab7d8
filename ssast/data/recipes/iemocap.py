"""The IEMOCAP emotion recipe: five sessions as five folds, in the four classes of SUPERB's
emotion task (:func:`list_iemocap`).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from ssast.data.recipes.common import RecipePlan, require, require_folder
from ssast.data.writer import SourceFile, sanitize_key


# IEMOCAP's categorical labels -> the four classes of SUPERB's emotion task (s3prl
# downstream/emotion, as SSAST reports it): excited is merged into happy, the rest dropped.
IEMOCAP_CLASSES = {"neu": "neu", "hap": "hap", "exc": "hap", "ang": "ang", "sad": "sad"}
IEMOCAP_SESSIONS = 5

_IEMOCAP_UTTERANCE = re.compile(r"^Ses(?P<session>\d\d)[FM]_\S+_(?P<gender>[FM])\d+$")


def _read_emo_evaluation(path: Path) -> Iterable[tuple[int, str, str, list[float]]]:
    """Rows ``(line, utterance, label, [valence, activation, dominance])`` of one of
    IEMOCAP's ``dialog/EmoEvaluation/<dialog>.txt``: the lines that start with ``[``
    (``[6.2901 - 8.2357]<TAB>Ses01F_impro01_F000<TAB>neu<TAB>[2.5000, 2.5000, 2.5000]``);
    the annotators' lines (``C-E1:``, ``A-E3:``, ...) and the ``%`` header are skipped."""
    for line, text in enumerate(path.read_text(errors="replace").splitlines(), start=1):
        if not text.startswith("["):
            continue
        fields = [part.strip() for part in text.split("\t") if part.strip()]
        try:
            vad = [float(value) for value in fields[3].strip("[]").split(",")]
            utterance, label = fields[1], fields[2]
        except (IndexError, ValueError):
            expected = "[start - end]<TAB>utterance<TAB>label<TAB>[V, A, D]"
            raise ValueError(f"{path}:{line}: expected {expected}, got {text!r}") from None
        yield line, utterance, label, vad


def list_iemocap(src: str | Path, *, source: str = "iemocap") -> RecipePlan:
    """IEMOCAP (``IEMOCAP_full_release/``: ``Session1`` ... ``Session5``, each with
    ``dialog/EmoEvaluation/<dialog>.txt`` and ``sentences/wav/<dialog>/<utterance>.wav``).

    Labels: the categorical label of each utterance, in the four classes of SUPERB's
    emotion task (s3prl ``downstream/emotion``, as SSAST reports it): ``neu``, ``hap``
    (``hap`` and ``exc``), ``ang``, ``sad``; utterances with any other label (``fru``,
    ``sur``, ``fea``, ``dis``, ``oth``, ``xxx``) are dropped and counted in the notes.
    Split: ``fold<N>`` = Session N, for leave-one-session-out cross-validation.
    ``session``, ``speaker`` (``Ses01F``: the session and the gender letter of the
    utterance's own speaker, so ``Ses01F_impro01_M000`` is ``Ses01M``), ``dialog``,
    ``emotion`` (the original label) and ``vad`` (valence, activation, dominance) go into
    the json member.
    """
    src = require_folder(Path(src), "iemocap")
    what = "iemocap (the IEMOCAP_full_release folder)"
    items: list[SourceFile] = []
    missing: list[tuple[str, str]] = []
    dropped: Counter = Counter()
    for session in range(1, IEMOCAP_SESSIONS + 1):
        folder = f"Session{session}"
        labels = require(src / folder / "dialog" / "EmoEvaluation", what, folder=True)
        require(src / folder / "sentences" / "wav", what, folder=True)
        evaluations = sorted(
            path for path in labels.iterdir()
            if path.is_file() and path.suffix == ".txt" and not path.name.startswith(".")
        )
        if not evaluations:
            raise FileNotFoundError(f"{what}: no <dialog>.txt label files in {labels}")
        split = f"fold{session}"
        for evaluation in evaluations:
            dialog = evaluation.stem
            for line, utterance, label, vad in _read_emo_evaluation(evaluation):
                match = _IEMOCAP_UTTERANCE.match(utterance)
                if match is None or int(match["session"]) != session:
                    raise ValueError(
                        f"{evaluation}:{line}: {utterance!r} is not an utterance of {folder} "
                        f"(expected Ses{session:02d}<F|M>_<dialog>_<F|M><number>)"
                    )
                if label not in IEMOCAP_CLASSES:
                    dropped[label] += 1
                    continue
                relative = f"{folder}/sentences/wav/{dialog}/{utterance}.wav"
                path = src / relative
                if not path.is_file():
                    missing.append((relative, split))
                    continue
                metadata = {
                    "source": source, "path": relative, "split": split, "fold": session, "session": session,
                    "speaker": f"Ses{session:02d}{match['gender']}", "dialog": dialog, "emotion": label, "vad": vad,
                }
                key = sanitize_key(f"{source}/{utterance}")
                items.append(SourceFile(path, key, (IEMOCAP_CLASSES[label],), split, metadata))
    if not items:
        raise FileNotFoundError(
            f"iemocap: none of the {len(missing)} utterances labeled {'/'.join(IEMOCAP_CLASSES)} in the "
            f"EmoEvaluation files of {src} has its wav under SessionN/sentences/wav/"
        )
    notes = []
    if dropped:
        counts = ", ".join(f"{label} {count}" for label, count in sorted(dropped.items()))
        notes.append(f"{sum(dropped.values())} utterances with other labels dropped ({counts})")
    folds = sorted({item.split for item in items}, key=lambda name: int(name[4:]))
    # As ESC-50: no training split, so the stats cover every session and one stats.json
    # serves all five leave-one-session-out runs.
    return RecipePlan(items, sorted(set(IEMOCAP_CLASSES.values())), folds, missing, notes)
