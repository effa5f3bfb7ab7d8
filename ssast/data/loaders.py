"""DataLoaders over a :class:`~ssast.data.stream.ShardStream` that keep DDP ranks in step:
training in epochs of the same number of batches on every rank (:class:`EpochLoader`),
evaluation that stops when its shards failed and gives a rank with no data one placeholder
batch (:class:`EvalLoader`).
"""

from __future__ import annotations

from collections.abc import Iterator
from itertools import islice
from typing import Any

from torch.utils.data import DataLoader

from ssast.data.skips import NoReadableShards
from ssast.data.stream import ShardStream


class EpochLoader:
    """A DataLoader over a training :class:`ShardStream`, in epochs of the same number of
    batches on every rank, so DDP ranks never wait on each other at an epoch's end.

    With ``batches_per_epoch=None`` an epoch is one exact pass over the clips (the stream
    needs ``sizes``): each clip once, shuffled anew, ``stream.batches_per_pass()`` batches.
    With a number, the stream draws shards with replacement, endlessly, and an epoch is
    that many batches of it, whatever the shard sizes.

    Each pass draws anew: the number of passes begun seeds the next one
    (:meth:`ShardStream.set_epoch`). That number is this loader's state (``state_dict``),
    kept in checkpoints, so that a resumed run draws what a run never stopped would have,
    instead of reading its first epochs again. A pass begins at its first batch, not at
    ``iter()``, which Lightning also calls only to check that a loader iterates.
    """

    def __init__(self, stream: ShardStream, batches_per_epoch: int | None, **loader_kwargs: Any) -> None:
        if batches_per_epoch is None and stream.balanced:
            raise ValueError("a balanced stream draws clips with replacement, it has no exact passes: give "
                             "batches_per_epoch, the batches per epoch to draw")
        if batches_per_epoch is None:
            stream.batches_per_pass()  # fails now, with the reason, if there can be no pass
        elif stream.sizes is not None:
            raise ValueError("a stream with sizes gives exact passes: pass batches_per_epoch=None, or no sizes to "
                             f"draw {batches_per_epoch} batches per epoch with replacement")
        elif batches_per_epoch < 1:
            raise ValueError(f"batches_per_epoch must be at least 1, got {batches_per_epoch}")
        self.stream = stream
        self.batches_per_epoch = batches_per_epoch
        self.loader = DataLoader(stream, batch_size=None, **loader_kwargs)
        self.passes = 0

    def state_dict(self) -> dict[str, int]:
        return {"passes": self.passes}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.passes = state["passes"]

    def __len__(self) -> int:
        return self.batches_per_epoch or self.stream.batches_per_pass()

    def __iter__(self) -> Iterator[dict[str, Any]]:
        self.stream.set_epoch(self.passes)
        self.passes += 1
        yield from islice(self.loader, len(self))


class EvalLoader(DataLoader):
    """A DataLoader over an evaluation :class:`ShardStream` (``batch_size=None``: the
    stream batches) that stops with :class:`NoReadableShards` when a pass gave nothing
    because its shards failed, rather than report metrics over no data. Each process
    (DDP rank) judges its own share of the shards.

    With ``padding``, under DDP, a rank whose share is empty (fewer clips than ranks ×
    workers) yields one :meth:`~ShardStream.padding_batch` instead of none: the modules log
    it without counting it, so this rank joins the collectives that end an evaluation
    (metric syncs) rather than leave the others waiting for it forever. (Prediction, which
    ends with no collective and must not predict silence, goes without.)
    """

    def __init__(self, dataset: ShardStream, *, padding: bool = True, **loader_kwargs: Any) -> None:
        super().__init__(dataset, **{"batch_size": None, **loader_kwargs})
        self.padding = padding

    def __iter__(self) -> Iterator[dict[str, Any]]:
        stream: ShardStream = self.dataset
        failed_before, batches = stream.skips.shards, 0
        for batch in super().__iter__():
            batches += 1
            yield batch
        failed = stream.skips.shards - failed_before
        if not batches and failed:
            raise NoReadableShards(
                f"read nothing: {failed} shard(s) failed, each after {stream.options.shard_retries} retries, and no "
                f"other shard gave a sample; the warnings above name each shard and its error. Check the paths, "
                f"commands or network, e.g. {stream.urls[0]!r}."
            )
        if not batches and self.padding and stream.world_size > 1:
            yield stream.padding_batch()
