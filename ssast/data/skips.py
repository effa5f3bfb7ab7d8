"""What the readers of a stream met, counted: samples read, skipped and fixed by reason,
shard trouble and repeated clips (:class:`SkipCounter`), and the errors that stop a stream.

A sample that cannot be used is skipped, logged and counted by reason in a
:class:`SkipCounter` shared by all loader workers; audio that is merely off the data
contract (another rate, several channels) is fixed and counted. Past ``max_skip_ratio``
the stream stops with :class:`TooManySkipped` rather than train on garbage; when every
shard fails it stops with :class:`NoReadableShards` instead of waiting forever.
"""

from __future__ import annotations

import logging
import multiprocessing
from collections.abc import Sequence

log = logging.getLogger(__name__)


# What a SkipCounter counts, by name: samples skipped, samples fixed, shard events, and
# clips given twice in a pass to make up for the clips lost to bad data.
SKIP_REASONS = (
    "undecodable", "empty", "truncated", "not_finite", "no_audio", "bad_json", "unknown_label", "label_count",
)
FIX_REASONS = ("resampled", "downmixed")
SHARD_EVENTS = ("shard_retries", "failed_shards")
PASS_EVENTS = ("repeated",)
COUNTS = ("read", *SKIP_REASONS, *FIX_REASONS, *SHARD_EVENTS, *PASS_EVENTS)


class SampleError(ValueError):
    """A sample whose audio is fine but whose members or labels cannot be used; ``reason``
    is one of :data:`SKIP_REASONS`."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class TooManySkipped(RuntimeError):
    """More samples were skipped than ``max_skip_ratio`` allows: the data is broken."""


class NoReadableShards(RuntimeError):
    """Every shard failed to open or read, even after retries."""


class SkipCounter:
    """What the readers of a stream met, counted by name (:data:`COUNTS`) in one array
    shared by all DataLoader worker processes: samples ``read``, samples skipped
    (:data:`SKIP_REASONS`), samples fixed (:data:`FIX_REASONS`), shard events
    (:data:`SHARD_EVENTS`) and clips ``repeated`` to fill an exact pass (:data:`PASS_EVENTS`).
    Counts add up over the epochs and passes of a run."""

    def __init__(self) -> None:
        self._counts = multiprocessing.Array("q", len(COUNTS))

    def add(self, name: str, amount: int = 1) -> None:
        index = COUNTS.index(name)
        with self._counts.get_lock():
            self._counts[index] += amount

    def counts(self) -> dict[str, int]:
        with self._counts.get_lock():
            return dict(zip(COUNTS, self._counts[:]))

    @property
    def read(self) -> int:
        return self.counts()["read"]

    @property
    def samples(self) -> int:
        """Samples skipped, for any reason."""
        return _skipped(self.counts())

    @property
    def shards(self) -> int:
        """Shards given up on after their retries."""
        return self.counts()["failed_shards"]

    def skip_sample(self, key: str, url: str, reason: str, detail: str) -> None:
        self.add(reason)
        log.warning("skipped sample %s in %s (%s): %s", key, url, reason, detail)

    def summary(self) -> str:
        """One line: skipped and fixed samples by reason, shard trouble and repeated clips."""
        counts = self.counts()

        def listing(names: Sequence[str]) -> str:
            return ", ".join(f"{counts[name]} {name}" for name in names if counts[name])

        skipped = _skipped(counts)
        text = f"skipped {skipped} of {counts['read']} samples"
        if skipped:
            text += f" ({listing(SKIP_REASONS)})"
        if any(counts[name] for name in FIX_REASONS):
            text += f"; fixed {listing(FIX_REASONS)}"
        if any(counts[name] for name in SHARD_EVENTS):
            text += f"; shards: {listing(SHARD_EVENTS)}"
        if counts["repeated"]:
            text += f"; repeated {counts['repeated']} clips to fill exact passes"
        return text

    def check_ratio(self, max_ratio: float | None, after: int) -> None:
        """Raise :class:`TooManySkipped` when more than ``max_ratio`` of the samples read
        were skipped, once ``after`` samples were read (one early bad file among the
        first few must not stop a run)."""
        counts = self.counts()
        read, skipped = counts["read"], _skipped(counts)
        if max_ratio is None or read < after or skipped <= max_ratio * read:
            return
        raise TooManySkipped(
            f"{self.summary()}: {skipped / read:.1%} of the samples could not be used, more than "
            f"max_skip_ratio={max_ratio:g} allows (checked once {after} samples were read). The "
            "warnings above name each sample. Fix the data, or raise the limit: max_skip_ratio of the data's "
            "reader options (--data.reader.max_skip_ratio 0.5; null turns the check off)."
        )


def _skipped(counts: dict[str, int]) -> int:
    return sum(counts[reason] for reason in SKIP_REASONS)
