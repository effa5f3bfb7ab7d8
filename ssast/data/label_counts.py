"""Clips per label of a training set (:class:`LabelCounts`, :func:`shard_label_counts`), what
class-balanced sampling weighs clips by, read from the ``json`` members alone.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Iterable, Sequence
from contextlib import closing
from dataclasses import dataclass
from typing import Any

from tqdm.auto import tqdm
from webdataset.tariterators import group_by_keys

from ssast.data.tar import shard_members

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LabelCounts:
    """Clips per label of a training set (:func:`shard_label_counts`), what class-balanced
    sampling weighs clips by: a clip's weight is the sum over its labels of ``1 / count``,
    proportional both to s3prl's ``1 / count(class)`` for single labels and to AST/EAT's
    AudioSet weights (``sum 1000 / (count + 0.01)``), so every class is drawn about equally
    often. A clip without labels weighs nothing.

    Args:
        counts: clips per label.
        clips: clips counted (those with labels and those without).
        max_weight: the largest weight of a clip counted.
    """

    counts: dict[str, int]
    clips: int
    max_weight: float

    def weight(self, labels: Iterable[str]) -> float:
        """The weight of a clip with these labels (each counted once); ``KeyError`` for a
        label not counted."""
        return sum(1 / self.counts[label] for label in set(labels))

    @property
    def mean_weight(self) -> float:
        """The average weight of a clip: each label's clips weigh 1 together."""
        return len(self.counts) / self.clips

    @property
    def acceptance(self) -> float:
        """The share of the streamed clips that balanced sampling keeps (and decodes)."""
        return self.mean_weight / self.max_weight


def shard_label_counts(urls: Sequence[str], classes: Sequence[str] | None = None,
                       progress: bool = True) -> LabelCounts:
    """Counts the clips of each label in ``urls`` (:class:`LabelCounts`), for class-balanced
    sampling, by reading the shards through once. Only the ``json`` members are read out
    (``{"labels": [...]}``); no audio is decoded. A clip whose json cannot be read or, with
    ``classes``, that has a label outside them is left out, as the readers skip it; a shard
    that fails counts the clips before the fault (the readers meet the fault too)."""
    known = set(classes) if classes is not None else None
    label_sets: Counter[frozenset[str]] = Counter()  # clips per set of labels: far fewer sets than clips
    left_out = 0
    for url in tqdm(urls, unit="shard", desc="counting labels", disable=not progress):
        read = 0
        try:
            with closing(shard_members(url, extension="json")) as members:
                for sample in group_by_keys(members):
                    read += 1
                    labels = json_labels(sample)
                    if labels is None or (known is not None and not known.issuperset(labels)):
                        left_out += 1
                    else:
                        label_sets[labels] += 1
        except Exception as error:  # as in ShardSamples: opening and reading fail in many ways
            log.warning("shard %s failed after %d samples while their labels were counted (%s: %s)",
                        url, read, type(error).__name__, error)
    counts: Counter[str] = Counter()
    for labels, clips in label_sets.items():
        counts.update(dict.fromkeys(labels, clips))
    if not counts:
        raise ValueError(f"no clip of the {len(urls)} shards (e.g. {urls[0]}) has a usable label to balance by "
                         f"({left_out} clips left out for unreadable json or labels outside classes.txt)")
    result = LabelCounts(dict(counts), sum(label_sets.values()),
                         max(sum(1 / counts[label] for label in labels) for labels in label_sets))
    # a warning, to be seen: a low share kept means many clips read (not decoded) per clip used
    log.warning("counted the labels of %d clips in %d shards (%d left out): %d labels of %d to %d clips; balanced "
                "sampling keeps %.1f%% of the clips streamed, so it reads %.1f clips for each one it decodes",
                result.clips, len(urls), left_out, len(counts), min(counts.values()), max(counts.values()),
                100 * result.acceptance, 1 / result.acceptance)
    return result


def json_labels(sample: dict[str, Any]) -> frozenset[str] | None:
    """The labels in a sample's json member; ``None`` when there are none to read."""
    try:
        labels = json.loads(sample["json"])["labels"]
    except (KeyError, TypeError, ValueError):
        return None
    return frozenset(labels) if isinstance(labels, list) and all(isinstance(x, str) for x in labels) else None
