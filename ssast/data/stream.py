"""Reading WebDataset audio shards into batches of fixed-length waveforms.

One :class:`ShardStream` serves pretraining and finetuning alike. It follows the rules
that keep sharded training correct under DDP:

* training with the shards' ``sizes`` (:func:`~ssast.data.shards.shard_sizes`) makes each
  epoch one exact, shuffled pass over the clips (:mod:`ssast.data.passes`);
* training without sizes draws shards at random with replacement, differently on every
  rank, worker and epoch, forever; :class:`~ssast.data.loaders.EpochLoader` cuts either into
  epochs, so every rank steps the same number of times;
* evaluation hands each shard to exactly one (rank, worker) reader, or, when there are
  fewer shards than readers, each sample to exactly one reader, so every sample is seen
  exactly once (a DDP rank left with no sample gets :meth:`~ShardStream.padding_batch` from
  :class:`~ssast.data.loaders.EvalLoader`);
* training shuffles the still-encoded samples before decoding them;
* bad data is skipped and counted (:mod:`ssast.data.skips`), a failing shard retried
  (:mod:`ssast.data.retries`), within the limits of :class:`~ssast.data.options.ReaderOptions`;
* only the window a batch row needs is decoded (:class:`ssast.audio.AudioFile`), so an
  hour-long clip costs what a short one does.

Batches are dicts: ``audio`` ``[B, N]`` float32 waveforms (zero-padded), ``lengths``
``[B]`` valid samples, ``key`` list of sample keys, and with ``classes`` given ``labels``:
``[B]`` class indices, or ``[B, C]`` multi-hot with ``multi_label``. Training batches of a
stream with ``mixup`` hold mixed waveforms (:func:`ssast.augment.mix_waveforms`) and
``mix_partner`` ``[B]``, ``mix_lambda`` ``[B]``: targets are to be mixed as ``λ t + (1 - λ)
t[partner]``. Training may also draw clips class-balanced (``balanced``, with
:func:`shard_label_counts`), roll and scale waveforms as EAT does (``roll_gain``,
:func:`ssast.augment.roll_and_gain`) and read shorter windows than a row holds
(``train_crop_samples``); evaluation never changes. The placeholder batch has ``padding:
True``: modules must not count it.
Features are best left to :class:`ssast.features.Fbank` on the accelerator; with no
accelerator, pass ``fbank`` and the workers compute a batch's raw log-mel (``fbank``
``[B, T, F]``, in place of ``audio``) in parallel.
"""

from __future__ import annotations

import json
import multiprocessing
import random
from collections.abc import Iterable, Iterator, Sequence
from itertools import islice
from typing import Any

import torch
import webdataset as wds
from torch.utils.data import IterableDataset, get_worker_info

from ssast.audio import SAMPLE_RATE, AudioDecodeError, AudioFile, pad_or_crop, random_start
from ssast.augment import mix_waveforms, roll_and_gain
from ssast.data.label_counts import LabelCounts, json_labels, shard_label_counts
from ssast.data.options import KeySplit, ReaderOptions
from ssast.data.passes import ExactPasses
from ssast.data.retries import ShardSamples
from ssast.data.skips import NoReadableShards, SampleError, SkipCounter
from ssast.data.tar import AUDIO_MEMBERS
from ssast.features import Fbank


def _distributed() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class ShardStream(ExactPasses, IterableDataset):
    """Batches of fixed-length clips from WebDataset shards (see the module docstring).

    ``clip_samples`` is the waveform length of a batch row: training takes a random
    window of that length, evaluation the start of the clip; shorter clips are
    zero-padded and ``lengths`` says where their audio ends. ``rank`` and ``world_size``
    default to ``torch.distributed``'s. With ``fbank`` the workers turn the audio into
    raw log-mel features. ``options`` (:class:`ReaderOptions`) set the shuffle buffer and
    what bad data may cost (see the module docstring).

    In training, ``sizes`` (samples per shard, :func:`~ssast.data.shards.shard_sizes`) makes
    each pass an exact one over the clips (:meth:`batches_per_pass` batches per rank, see
    :meth:`_pass_share`); without them the stream draws shards with replacement, endlessly.
    ``mixup`` is the probability that a training clip is mixed with another clip of its
    batch (:func:`ssast.augment.mix_waveforms`); evaluation never mixes.

    Three more options change training only (an evaluation stream ignores them):

    * ``balanced`` draws clips class-balanced, with replacement, as s3prl's and AST/EAT's
      weighted samplers do: a clip is drawn in proportion to its weight in ``label_counts``
      (:class:`LabelCounts`; ``None``: :func:`shard_label_counts` counts them now, reading the
      shards through). The stream keeps each clip it reads with probability ``weight /
      max_weight``, which turns the uniform draws of the stream without ``sizes`` into the
      weighted ones; it needs that stream (not exact passes) and labels. A clip is judged
      by its json member, before its audio is decoded: the clips left out cost their
      reading only, and count as neither read nor skipped;
    * ``roll_gain`` rolls and scales each waveform as EAT does (before mixup and the fbank,
      :func:`ssast.augment.roll_and_gain`);
    * ``train_crop_samples`` reads a random window of at most that many samples (s3prl's
      ``max_timestep``), zero-padded to ``clip_samples`` like any short clip.

    ``key_split`` (:class:`KeySplit`) reads only the held-out share of the clips, or only the
    rest, training and evaluation alike: a validation set carved out of the training shards.
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
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
        skips: SkipCounter | None = None,
        fbank: Fbank | None = None,
        options: ReaderOptions = ReaderOptions(),
        sizes: Sequence[int] | None = None,
        mixup: float = 0.0,
        balanced: bool = False,
        label_counts: LabelCounts | None = None,
        roll_gain: bool = False,
        train_crop_samples: int | None = None,
        key_split: KeySplit | None = None,
    ) -> None:
        super().__init__()
        if rank is None or world_size is None:
            rank, world_size = _distributed()
        if sizes is not None and len(sizes) != len(urls):
            raise ValueError(f"sizes gives {len(sizes)} shard sizes for {len(urls)} shards")
        if not 0.0 <= mixup <= 1.0:
            raise ValueError(f"mixup is a probability, between 0 and 1; got {mixup}")
        if train_crop_samples is not None and not 0 < train_crop_samples <= clip_samples:
            raise ValueError(f"train_crop_samples must be positive and at most the {clip_samples} samples of a "
                             f"batch row (clip_samples); got {train_crop_samples}")
        if balanced and training:
            if sizes is not None:
                raise ValueError("balanced sampling draws clips with replacement, which exact passes (sizes) cannot: "
                                 "pass no sizes and cut the stream into epochs with EpochLoader's batches_per_epoch")
            if classes is None:
                raise ValueError("balanced sampling weighs clips by their labels: it needs classes, and an unlabeled "
                                 "stream has none")
            if label_counts is None:
                label_counts = shard_label_counts(urls, classes, progress=rank == 0)
        self.urls = list(urls)
        self.sizes = list(sizes) if sizes is not None else None
        self.mixup = mixup
        self.balanced = balanced and training
        self.label_counts = label_counts if self.balanced else None
        self.roll_gain = roll_gain
        self.train_crop_samples = train_crop_samples
        if key_split is not None and training and sizes is not None:
            raise ValueError("a key split leaves out clips that an exact pass counts on: draw training batches with "
                             "replacement (batches_per_epoch) with it")
        self.key_split = key_split
        self.clip_samples = clip_samples
        self.batch_size = batch_size
        self.training = training
        self.class_index = {name: index for index, name in enumerate(classes)} if classes is not None else None
        self.multi_label = multi_label
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.skips = skips if skips is not None else SkipCounter()
        self.fbank = fbank
        self.options = options
        # In shared memory: loader workers, persistent ones included, read the epoch their
        # process set last, not the one their copy of this stream was made with.
        self._epoch = multiprocessing.RawValue("q", 0)

    @property
    def epoch(self) -> int:
        return self._epoch.value

    def set_epoch(self, epoch: int) -> None:
        """Seeds the next passes' shard draws, shuffling and crops (with ``seed``, the rank and
        the worker); training passes of the same epoch draw alike."""
        self._epoch.value = epoch

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info else (0, 1)
        rng = random.Random(hash((self.seed, self.rank, worker, self.epoch)))
        exact = self.training and self.sizes is not None
        if exact:
            segments, batches = self._pass_share(worker, num_workers)
            if not batches:
                return
            samples = self._segment_samples(segments)
        elif self.training:
            samples = self._random_shard_samples(rng)
            if self.balanced:
                samples = self._balance(samples, rng)
        else:
            reader, readers = self.rank * num_workers + worker, self.world_size * num_workers
            by_shard = len(self.urls) >= readers
            samples = self._shard_samples(self.urls[reader::readers] if by_shard else self.urls)
            if not by_shard:  # too few shards to go round: every reader reads all, keeps its share
                samples = islice(samples, reader, None, readers)
        if self.key_split is not None:
            samples = (sample for sample in samples if self.key_split.keeps(sample.get("__key__", "")))
        if self.training:
            buffer = self.options.shuffle_buffer
            samples = wds.shuffle(buffer, initial=buffer // 2, rng=rng)(samples)
        clips = (clip for sample in samples if (clip := self._prepare(sample, rng)) is not None)
        if exact:
            clips = self._fill(clips, batches * self.batch_size, rng, worker)
        mixing = torch.Generator().manual_seed(rng.getrandbits(63)) if self.training and self.mixup else None
        rolling = torch.Generator().manual_seed(rng.getrandbits(63)) if self.training and self.roll_gain else None
        for batch in wds.batched(self.batch_size, collation_fn=_collate, partial=not self.training)(clips):
            if rolling is not None:
                batch["audio"] = roll_and_gain(batch["audio"], batch["lengths"], rolling)
            if mixing is not None:
                batch["audio"], batch["mix_partner"], batch["mix_lambda"] = mix_waveforms(
                    batch["audio"], batch["lengths"], self.mixup, mixing)
            if self.fbank is not None:
                batch["fbank"] = self.fbank(batch.pop("audio"), batch["lengths"])
            yield batch

    def padding_batch(self) -> dict[str, Any]:
        """A batch of one silent clip, shaped like this stream's batches and marked
        ``padding=True``: what :class:`~ssast.data.loaders.EvalLoader` gives a DDP rank that has no data. A
        module evaluates it like any batch but counts nothing from it."""
        clip: dict[str, Any] = {"key": "", "audio": torch.zeros(self.clip_samples), "length": self.clip_samples}
        if self.class_index is not None:
            clip["labels"] = torch.zeros(len(self.class_index)) if self.multi_label else torch.tensor(0)
        batch = _collate([clip])
        if self.fbank is not None:
            batch["fbank"] = self.fbank(batch.pop("audio"), batch["lengths"])
        batch["padding"] = True
        return batch

    def _random_shard_samples(self, rng: random.Random) -> Iterator[dict[str, Any]]:
        """Samples of shards drawn at random with replacement, forever. A shard that fails
        is left out of the draws for the rest of this pass (the next epoch tries it
        again); when none is left, the stream stops rather than spin."""
        usable = list(self.urls)
        read = 0
        while usable:
            url = rng.choice(usable)
            for sample in (shard := ShardSamples(self, url)):
                read += 1
                yield sample
            if shard.failed:
                usable = [other for other in usable if other != url]
        raise NoReadableShards(
            f"every one of the {len(set(self.urls))} training shards failed, each after {self.options.shard_retries} "
            f"retries ({read} samples were read from them in this pass first); the warnings above name each "
            f"shard and its error. Check the paths, commands or network, e.g. {self.urls[0]!r}."
        )

    def _balance(self, samples: Iterable[dict[str, Any]], rng: random.Random) -> Iterator[dict[str, Any]]:
        """The samples kept with probability ``weight / max_weight`` (rejection sampling: of a
        uniform stream, the weighted draws), judged by their json member before any audio is
        decoded. A sample whose labels cannot be weighed is kept at the average rate, so that
        ``_prepare`` skips and counts it with its true share of the data (``max_skip_ratio``
        judges the data, not the sampling)."""
        counts = self.label_counts
        assert counts is not None
        for sample in samples:
            labels = json_labels(sample)
            try:
                weight = counts.weight(labels) if labels is not None else counts.mean_weight
            except KeyError:  # a label outside classes.txt, or a clip in a shard the count could not read
                weight = counts.mean_weight
            if rng.random() * counts.max_weight < weight:
                yield sample

    def _shard_samples(self, urls: Iterable[str]) -> Iterator[dict[str, Any]]:
        for url in urls:
            yield from ShardSamples(self, url)

    def _prepare(self, sample: dict[str, Any], rng: random.Random) -> dict[str, Any] | None:
        key, url = sample.get("__key__", "?"), sample.get("__url__", "?")
        self.skips.add("read")
        try:
            member = next((name for name in AUDIO_MEMBERS if name in sample), None)
            if member is None:
                raise SampleError(f"no audio member (looked for {', '.join(AUDIO_MEMBERS)})", "no_audio")
            labels = self._encode_labels(sample) if self.class_index is not None else None
            with AudioFile(sample[member]) as audio:
                audio.check_finite()  # the whole clip, not only the window: a bad clip is bad wherever it is cut
                window = (self.train_crop_samples or self.clip_samples) if self.training else self.clip_samples
                start = random_start(audio.num_samples, window, rng) if self.training else 0
                waveform, length = pad_or_crop(audio.read(start, window), self.clip_samples)
        except (AudioDecodeError, SampleError) as error:
            self.skips.skip_sample(key, url, error.reason, str(error))
            self.skips.check_ratio(self.options.max_skip_ratio, self.options.skip_ratio_after)
            return None
        if audio.rate != SAMPLE_RATE:
            self.skips.add("resampled")
        if audio.channels > 1:
            self.skips.add("downmixed")
        clip = {"key": key, "audio": waveform, "length": length}
        if labels is not None:
            clip["labels"] = labels
        return clip

    def _encode_labels(self, sample: dict[str, Any]) -> torch.Tensor:
        try:
            labels = json.loads(sample["json"])["labels"]
        except (KeyError, TypeError, ValueError) as error:
            raise SampleError(f"no readable labels in the json member ({error!r})", "bad_json") from error
        unknown = [label for label in labels if label not in self.class_index]
        if unknown:
            raise SampleError(f"labels {unknown} are not in classes.txt", "unknown_label")
        indices = [self.class_index[label] for label in labels]
        if self.multi_label:
            target = torch.zeros(len(self.class_index))
            target[indices] = 1.0
            return target
        if len(indices) != 1:
            raise SampleError(f"expected exactly one label, got {labels}", "label_count")
        return torch.tensor(indices[0])


def _collate(clips: list[dict[str, Any]]) -> dict[str, Any]:
    batch = {
        "key": [clip["key"] for clip in clips],
        "audio": torch.stack([clip["audio"] for clip in clips]),
        "lengths": torch.tensor([clip["length"] for clip in clips]),
    }
    if "labels" in clips[0]:
        batch["labels"] = torch.stack([clip["labels"] for clip in clips])
    return batch
