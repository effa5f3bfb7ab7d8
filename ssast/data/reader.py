"""Reading WebDataset audio shards into batches of fixed-length waveforms.

One :class:`ShardStream` serves pretraining and finetuning alike. It follows the rules
that keep sharded training correct under DDP:

* training draws shards at random with replacement, differently on every rank, worker
  and epoch, forever; :class:`EpochLoader` cuts that stream into epochs of a fixed number
  of batches, so every rank steps the same number of times;
* evaluation hands each shard to exactly one (rank, worker) reader, or, when there are
  fewer shards than readers, each sample to exactly one reader, so every sample is seen
  exactly once;
* training shuffles the still-encoded samples before decoding them;
* a sample that cannot be used is skipped, logged and counted in a :class:`SkipCounter`
  shared by all loader workers, never fatal.

Batches are dicts: ``audio`` ``[B, N]`` float32 waveforms (zero-padded), ``lengths``
``[B]`` valid samples, ``key`` list of sample keys, and with ``classes`` given ``labels``:
``[B]`` class indices, or ``[B, C]`` multi-hot with ``multi_label``. Features are best left
to :class:`ssast.features.Fbank` on the accelerator; with no accelerator, pass ``fbank``
and the workers compute a batch's raw log-mel (``fbank`` ``[B, T, F]``, in place of
``audio``) in parallel.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import random
from collections.abc import Iterator, Sequence
from itertools import islice
from pathlib import Path
from typing import Any

import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from ssast.audio import AudioDecodeError, decode_audio, pad_or_crop, random_crop
from ssast.features import Fbank

log = logging.getLogger(__name__)

AUDIO_MEMBERS = ("flac", "wav", "ogg", "mp3")


class SampleError(ValueError):
    """A sample whose audio is fine but whose members or labels cannot be used."""


class SkipCounter:
    """Counts skipped samples and unreadable shards across DataLoader worker processes."""

    def __init__(self) -> None:
        self._samples = multiprocessing.Value("q", 0)
        self._shards = multiprocessing.Value("q", 0)

    @property
    def samples(self) -> int:
        return self._samples.value

    @property
    def shards(self) -> int:
        return self._shards.value

    def skip_sample(self, key: str, url: str, reason: str) -> None:
        with self._samples.get_lock():
            self._samples.value += 1
        log.warning("skipped sample %s in %s: %s", key, url, reason)

    def skip_shard(self, error: Exception) -> bool:
        """A webdataset error handler: count, log and carry on with the next shard."""
        with self._shards.get_lock():
            self._shards.value += 1
        log.warning("skipped the rest of a shard: %s", error)
        return True


def list_shards(source: str | Path | Sequence[str], split: str | None = None) -> list[str]:
    """Shard URLs from a directory (``source/split/*.tar``), a webdataset pattern, or a list
    of either (e.g. the training folds of a cross-validation).

    Patterns are anything webdataset opens: brace expansions, local paths, ``http(s)://``
    URLs and ``pipe:`` commands, separated by ``::`` to join several sets.
    """
    if not isinstance(source, (str, Path)):
        urls = [url for item in source for url in list_shards(item, split)]
    elif Path(source).is_dir():
        folder = Path(source) / split if split else Path(source)
        urls = sorted(str(path) for path in folder.glob("*.tar"))
    else:
        urls = wds.shardlists.expand_urls(str(source))
    if not urls:
        where = f"{source}/{split}" if split else str(source)
        raise FileNotFoundError(f"no shards found at {where}")
    return urls


def read_classes(path: str | Path) -> list[str]:
    """Class names from a ``classes.txt`` (one per line; the line number is the index)."""
    classes = [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]
    if len(set(classes)) != len(classes):
        raise ValueError(f"{path} lists a class twice")
    return classes


def _distributed() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class ShardStream(IterableDataset):
    """Batches of fixed-length clips from WebDataset shards (see the module docstring).

    ``clip_samples`` is the waveform length of a batch row: training takes a random
    window of that length, evaluation the start of the clip; shorter clips are
    zero-padded and ``lengths`` says where their audio ends. ``rank`` and ``world_size``
    default to ``torch.distributed``'s. With ``fbank`` the workers turn the audio into
    raw log-mel features.
    """

    def __init__(
        self,
        urls: Sequence[str],
        *,
        clip_samples: int,
        batch_size: int,
        training: bool,
        classes: Sequence[str] | None = None,
        multi_label: bool = False,
        shuffle_buffer: int = 1000,
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
        skips: SkipCounter | None = None,
        fbank: Fbank | None = None,
    ) -> None:
        super().__init__()
        if rank is None or world_size is None:
            rank, world_size = _distributed()
        self.urls = list(urls)
        self.clip_samples = clip_samples
        self.batch_size = batch_size
        self.training = training
        self.class_index = {name: index for index, name in enumerate(classes)} if classes is not None else None
        self.multi_label = multi_label
        self.shuffle_buffer = shuffle_buffer
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.skips = skips if skips is not None else SkipCounter()
        self.fbank = fbank
        self.epoch = 0
        self._iterations = 0  # advances the seed when persistent workers reuse this copy

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info else (0, 1)
        self._iterations += 1
        rng = random.Random(hash((self.seed, self.rank, worker, self.epoch, self._iterations)))
        if self.training:
            shards = _endless_random_shards(self.urls, rng)
        else:
            reader, readers = self.rank * num_workers + worker, self.world_size * num_workers
            by_shard = len(self.urls) >= readers
            shards = ({"url": url} for url in (self.urls[reader::readers] if by_shard else self.urls))
        samples = wds.tarfile_to_samples(handler=self.skips.skip_shard)(shards)
        if self.training:
            samples = wds.shuffle(self.shuffle_buffer, initial=self.shuffle_buffer // 2, rng=rng)(samples)
        elif not by_shard:  # too few shards to go round: every reader reads all, keeps its share
            samples = islice(samples, reader, None, readers)
        clips = (clip for sample in samples if (clip := self._prepare(sample, rng)) is not None)
        for batch in wds.batched(self.batch_size, collation_fn=_collate, partial=not self.training)(clips):
            if self.fbank is not None:
                batch["fbank"] = self.fbank(batch.pop("audio"), batch["lengths"])
            yield batch

    def _prepare(self, sample: dict[str, Any], rng: random.Random) -> dict[str, Any] | None:
        key, url = sample.get("__key__", "?"), sample.get("__url__", "?")
        try:
            member = next((name for name in AUDIO_MEMBERS if name in sample), None)
            if member is None:
                raise SampleError(f"no audio member (looked for {', '.join(AUDIO_MEMBERS)})")
            waveform, _ = decode_audio(sample[member])
            if self.training:
                audio, length = random_crop(waveform, self.clip_samples, rng)
            else:
                audio, length = pad_or_crop(waveform, self.clip_samples)
            clip = {"key": key, "audio": audio, "length": length}
            if self.class_index is not None:
                clip["labels"] = self._encode_labels(sample)
            return clip
        except (AudioDecodeError, SampleError) as error:
            self.skips.skip_sample(key, url, str(error))
            return None

    def _encode_labels(self, sample: dict[str, Any]) -> torch.Tensor:
        try:
            labels = json.loads(sample["json"])["labels"]
        except (KeyError, TypeError, ValueError) as error:
            raise SampleError(f"no readable labels in the json member ({error!r})") from error
        unknown = [label for label in labels if label not in self.class_index]
        if unknown:
            raise SampleError(f"labels {unknown} are not in classes.txt")
        indices = [self.class_index[label] for label in labels]
        if self.multi_label:
            target = torch.zeros(len(self.class_index))
            target[indices] = 1.0
            return target
        if len(indices) != 1:
            raise SampleError(f"expected exactly one label, got {labels}")
        return torch.tensor(indices[0])


def _endless_random_shards(urls: Sequence[str], rng: random.Random) -> Iterator[dict[str, str]]:
    while True:
        yield {"url": rng.choice(urls)}


def _collate(clips: list[dict[str, Any]]) -> dict[str, Any]:
    batch = {
        "key": [clip["key"] for clip in clips],
        "audio": torch.stack([clip["audio"] for clip in clips]),
        "lengths": torch.tensor([clip["length"] for clip in clips]),
    }
    if "labels" in clips[0]:
        batch["labels"] = torch.stack([clip["labels"] for clip in clips])
    return batch


class EpochLoader:
    """A DataLoader over an endless :class:`ShardStream`, cut into epochs of fixed length.

    Every rank yields exactly ``batches_per_epoch`` batches per epoch, whatever the shard
    sizes, so DDP ranks never wait on each other at an epoch's end.
    """

    def __init__(self, stream: ShardStream, batches_per_epoch: int, **loader_kwargs: Any) -> None:
        if batches_per_epoch < 1:
            raise ValueError(f"batches_per_epoch must be at least 1, got {batches_per_epoch}")
        self.stream = stream
        self.batches_per_epoch = batches_per_epoch
        self.loader = DataLoader(stream, batch_size=None, **loader_kwargs)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    @property
    def sampler(self) -> EpochLoader:
        """Lightning calls ``dataloader.sampler.set_epoch(epoch)`` at every epoch start,
        resumed runs included; this routes it to the stream's seed."""
        return self

    def __len__(self) -> int:
        return self.batches_per_epoch

    def __iter__(self) -> Iterator[dict[str, Any]]:
        self.stream.set_epoch(self.epoch)
        self.epoch += 1
        return islice(iter(self.loader), self.batches_per_epoch)
