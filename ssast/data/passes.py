"""Exact training passes of a :class:`~ssast.data.stream.ShardStream` with ``sizes``
(:func:`~ssast.data.shards.shard_sizes`): each epoch is one shuffled pass over the clips, as a
DataLoader with ``shuffle=True, drop_last=True``: every clip once, the same number of
batches on every rank, a reader that loses clips to bad data making up for them with clips
it gave already (counted as ``repeated``).
"""

from __future__ import annotations

import logging
import random
from collections import deque
from collections.abc import Iterable, Iterator
from contextlib import closing
from itertools import islice
from typing import Any

from ssast.data.retries import ShardSamples
from ssast.data.skips import NoReadableShards

log = logging.getLogger(__name__)


# Clips a training reader keeps to repeat when a pass falls short of its planned clips.
_REPEAT_POOL = 16


class ExactPasses:
    """The exact passes of :class:`~ssast.data.stream.ShardStream`, which mixes them in: the plan
    of each reader's share of a pass, and its samples and clips. Reads the stream's ``urls``,
    ``sizes``, ``seed``, ``epoch``, ``rank``, ``world_size``, ``batch_size``, ``skips`` and
    ``options``."""

    def batches_per_pass(self) -> int:
        """Batches each rank gives in one exact training pass: ``N // (world_size * batch_size)``
        for the ``N`` clips that ``sizes`` counts."""
        if self.sizes is None:
            raise ValueError("an exact pass needs the shards' sizes: ShardStream(..., sizes=shard_sizes(urls))")
        total = sum(self.sizes)
        batches = total // (self.world_size * self.batch_size)
        if not batches:
            raise ValueError(
                f"{total} training clips (N) cannot give each of {self.world_size} ranks (world size) one batch of "
                f"{self.batch_size} (batch size): use a smaller batch size, fewer devices or more data"
            )
        return batches

    def _pass_share(self, worker: int, num_workers: int) -> tuple[list[tuple[str, int, int]], int]:
        """This reader's share of the exact pass of this epoch: ``(url, start, stop)`` runs
        of shard samples, and how many batches it gives.

        The plan is computed alike on every rank and worker, from ``seed`` and the epoch
        alone: the shards in a random order, end to end, are one sequence of ``N`` positions,
        read from a random offset and round from the end to the start, so that block edges
        and the clips left out move between epochs. Rank ``r`` takes the ``r``-th block of
        :meth:`batches_per_pass` batches; its loader workers split the block into runs of
        whole batches, so each reads its own ``1 / (world_size * num_workers)`` of the data.
        The fewer than ``world_size * batch_size`` positions past the blocks sit this epoch
        out (``drop_last``)."""
        plan = random.Random(f"pass {self.seed} {self.epoch}")
        order = plan.sample(range(len(self.urls)), len(self.urls))
        total, per_rank = sum(self.sizes), self.batches_per_pass()
        even, extra = divmod(per_rank, num_workers)
        batches = even + (worker < extra)
        first = self.rank * per_rank + worker * even + min(worker, extra)  # batches before this reader's
        start = (plan.randrange(total) + first * self.batch_size) % total
        stop = start + batches * self.batch_size
        spans = [(start, min(stop, total)), (0, stop - total)]  # the second is empty unless it wraps round
        segments, offset = [], 0
        for shard in order:
            size = self.sizes[shard]
            for low, high in spans:
                low, high = max(low, offset), min(high, offset + size)
                if low < high:
                    segments.append((self.urls[shard], low - offset, high - offset))
            offset += size
        return segments, batches

    def _segment_samples(self, segments: Iterable[tuple[str, int, int]]) -> Iterator[dict[str, Any]]:
        """The samples ``start:stop`` of each shard: those before are passed over undecoded,
        and the shard is closed right after ``stop`` (see :func:`~ssast.data.tar.shard_members`)."""
        for url, start, stop in segments:
            with closing(iter(ShardSamples(self, url))) as samples:
                yield from islice(samples, start, stop)

    def _fill(self, clips: Iterator[dict[str, Any]], count: int, rng: random.Random,
              worker: int) -> Iterator[dict[str, Any]]:
        """Exactly ``count`` clips: this reader's share of the pass and, when bad samples or
        failed shards left it short, clips it gave already, again (counted as ``repeated``),
        so that every rank still gives the same number of batches."""
        recent: deque[dict[str, Any]] = deque(maxlen=_REPEAT_POOL)
        given = 0
        for clip in islice(clips, count):
            recent.append(clip)
            given += 1
            yield clip
        if given == count:
            return
        where = f"rank {self.rank}, loader worker {worker}"
        if not recent:
            raise NoReadableShards(
                f"a training reader ({where}) got no usable clip in this pass, so it cannot give its "
                f"{count // self.batch_size} batches: its shards failed or every sample in them was skipped "
                f"({self.skips.summary()}). The warnings above name each shard and sample."
            )
        log.warning("a training reader (%s) got %d of the %d clips planned for this pass; it repeats %d of its "
                    "clips to give every batch", where, given, count, count - given)
        for _ in range(count - given):
            self.skips.add("repeated")
            yield rng.choice(recent)
