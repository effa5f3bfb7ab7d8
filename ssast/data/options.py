"""What a :class:`~ssast.data.stream.ShardStream` is told beyond its shards: how it shuffles
and meets bad data (:class:`ReaderOptions`), and which share of the clips it reads, by their
keys (:class:`KeySplit`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass


@dataclass(frozen=True)
class ReaderOptions:
    """How a :class:`~ssast.data.stream.ShardStream` shuffles and how it meets bad data; one
    value for both ``ShardStream`` and ``AudioDataModule`` (``reader: {shard_retries: 5}`` under
    ``data`` in a recipe, ``--data.reader.shard_retries 5`` on the command line).

    Args:
        shuffle_buffer: samples each training reader holds for shuffling.
        max_skip_ratio: the share of the samples read that may be skipped; past it the
            stream stops with :class:`~ssast.data.skips.TooManySkipped` (``None``: never).
        skip_ratio_after: samples read before ``max_skip_ratio`` is checked (one early bad
            file among the first few must not stop a run).
        shard_retries: how often a shard that fails to open or read is tried again before
            it is skipped.
        retry_delay: seconds before the first retry; each next one waits twice as long.
    """

    shuffle_buffer: int = 1000
    max_skip_ratio: float | None = 0.1
    skip_ratio_after: int = 1000
    shard_retries: int = 3
    retry_delay: float = 1.0


@dataclass(frozen=True)
class KeySplit:
    """A fixed share of a set's clips, chosen by their keys: ``fraction`` of them (by a hash of
    the key, the same on every rank, worker and run) are ``held_out``, the rest are not.
    Training reads the rest and validation the held-out share, as s3prl's ``valid_ratio``
    carves a dev set out of the training data.

    Args:
        fraction: the held-out share, between 0 and 1.
        held_out: whether this stream reads the held-out share (else the rest).
    """

    fraction: float
    held_out: bool = False

    def __post_init__(self) -> None:
        if not 0 < self.fraction < 1:
            raise ValueError(f"a held-out fraction is between 0 and 1, got {self.fraction}")

    def keeps(self, key: str) -> bool:
        position = int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big") / 2**64
        return (position < self.fraction) == self.held_out
