"""Reading WebDataset audio shards into batches of fixed-length waveforms.

One :class:`ShardStream` serves pretraining and finetuning alike. It follows the rules
that keep sharded training correct under DDP:

* training with the shards' ``sizes`` (:func:`shard_sizes`) makes each epoch one exact,
  shuffled pass over the clips, as a DataLoader with ``shuffle=True, drop_last=True``: every
  clip once, the same number of batches on every rank, a reader that loses clips to bad
  data making up for them with clips it gave already (counted as ``repeated``);
* training without sizes draws shards at random with replacement, differently on every
  rank, worker and epoch, forever; :class:`EpochLoader` cuts either into epochs, so every
  rank steps the same number of times;
* evaluation hands each shard to exactly one (rank, worker) reader, or, when there are
  fewer shards than readers, each sample to exactly one reader, so every sample is seen
  exactly once; a DDP rank left with no sample gets one placeholder batch instead, so the
  others never wait for it;
* training shuffles the still-encoded samples before decoding them;
* a sample that cannot be used is skipped, logged and counted by reason in a
  :class:`SkipCounter` shared by all loader workers; audio that is merely off the data
  contract (another rate, several channels) is fixed and counted. Past ``max_skip_ratio``
  the stream stops with :class:`TooManySkipped` rather than train on garbage;
* a shard that cannot be opened or read is retried, then skipped with a warning naming it
  and counted; when every shard fails the stream stops with :class:`NoReadableShards`
  instead of waiting forever;
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

import hashlib
import json
import logging
import multiprocessing
import random
import re
import tarfile
import time
from collections import Counter, deque
from collections.abc import Generator, Iterable, Iterator, Sequence
from contextlib import closing
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from tqdm.auto import tqdm
from webdataset.tariterators import group_by_keys

from ssast.audio import SAMPLE_RATE, AudioDecodeError, AudioFile, pad_or_crop, random_start
from ssast.augment import mix_waveforms, roll_and_gain
from ssast.data.writer import SHARD_INDEX, interrupted_output
from ssast.features import Fbank

log = logging.getLogger(__name__)

AUDIO_MEMBERS = ("flac", "wav", "ogg", "mp3")


# What a SkipCounter counts, by name: samples skipped, samples fixed, shard events, and
# clips given twice in a pass to make up for the clips lost to bad data.
SKIP_REASONS = ("undecodable", "empty", "not_finite", "no_audio", "bad_json", "unknown_label", "label_count")
FIX_REASONS = ("resampled", "downmixed")
SHARD_EVENTS = ("shard_retries", "failed_shards")
PASS_EVENTS = ("repeated",)
COUNTS = ("read", *SKIP_REASONS, *FIX_REASONS, *SHARD_EVENTS, *PASS_EVENTS)

# Clips a training reader keeps to repeat when a pass falls short of its planned clips.
_REPEAT_POOL = 16


@dataclass(frozen=True)
class ReaderOptions:
    """How a :class:`ShardStream` shuffles and how it meets bad data; one value for both
    ``ShardStream`` and ``AudioDataModule`` (``reader: {shard_retries: 5}`` under ``data`` in
    a recipe, ``--data.reader.shard_retries 5`` on the command line).

    Args:
        shuffle_buffer: samples each training reader holds for shuffling.
        max_skip_ratio: the share of the samples read that may be skipped; past it the
            stream stops with :class:`TooManySkipped` (``None``: never).
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


def list_shards(source: str | Path | Sequence[str], split: str | None = None) -> list[str]:
    """Shard URLs from a directory (``source/split/*.tar``), a webdataset pattern, or a list
    of either (e.g. the training folds of a cross-validation).

    Patterns are anything webdataset opens: brace expansions, local paths, ``http(s)://``
    URLs and ``pipe:`` commands, separated by ``::`` to join several sets. A folder lists
    its complete shards only: ``ssast-data`` writes each under a temporary name until it
    is complete; a folder whose writing was interrupted is read with a warning.

    A local path that does not exist fails here, at once, naming it: retrying it would not
    make it appear (the readers retry remote and ``pipe:`` sources only when they fail).
    """
    if not isinstance(source, (str, Path)):
        urls = [url for item in source for url in list_shards(item, split)]
    elif Path(source).is_dir():
        folder = Path(source) / split if split else Path(source)
        urls = sorted(str(path) for path in folder.glob("*.tar"))
        if interrupted_output(folder):
            log.warning("%s is being written or its writing was interrupted: reading its %d complete shards",
                        folder, len(urls))
    else:
        urls = wds.shardlists.expand_urls(str(source))
        missing = [url for url in urls if _is_local(url) and not Path(url.removeprefix("file:")).is_file()]
        if missing == urls:
            raise FileNotFoundError(f"no shards at {source}: no such file or folder")
        if missing:
            raise FileNotFoundError(f"{len(missing)} of the {len(urls)} shards of {source} do not exist, "
                                    f"e.g. {missing[0]}")
    if not urls:
        where = f"{source}/{split}" if split else str(source)
        raise FileNotFoundError(f"no shards found at {where}")
    return urls


def _is_local(url: str) -> bool:
    """A path on this machine (``file:`` or no scheme), not a URL or a ``pipe:`` command."""
    return url.startswith("file:") or re.match(r"^[a-zA-Z][\w+.-]*:", url) is None


def find_beside(shards: str | Path, name: str) -> Path | None:
    """The file ``name`` (``classes.txt``, ``stats.json``) in the shards' folder or the folder
    above it (a dataset root holding split folders); ``None`` when neither has it."""
    folder = Path(shards)
    for candidate in (folder / name, folder.parent / name):
        if candidate.is_file():
            return candidate
    return None


def read_classes(path: str | Path) -> list[str]:
    """Class names from a ``classes.txt`` (one per line; the line number is the index)."""
    classes = [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]
    if len(set(classes)) != len(classes):
        raise ValueError(f"{path} lists a class twice")
    return classes


def shard_sizes(urls: Sequence[str], progress: bool = True) -> list[int]:
    """Samples in each shard, what a :class:`ShardStream` plans exact passes with (``sizes``).

    Read from the ``shards.json`` that ``ssast-data`` writes beside the shards it completes;
    a shard no index lists (a URL, a ``pipe:`` command, a folder written by other means) is
    counted by reading it through, once. A shard that fails while being counted counts the
    samples before the fault: the training readers meet the fault too and make up for it.
    """
    indexes: dict[Path, dict[str, int]] = {}
    sizes: list[int | None] = []
    for url in urls:
        if not _is_local(url):
            sizes.append(None)
            continue
        path = Path(url.removeprefix("file:"))
        if path.parent not in indexes:
            indexes[path.parent] = _read_shard_index(path.parent)
        sizes.append(indexes[path.parent].get(path.name))
    uncounted = [index for index, size in enumerate(sizes) if size is None]
    if uncounted:
        log.warning("counting the samples of %d of %d training shards by reading them: no %s lists them (e.g. %s)",
                    len(uncounted), len(urls), SHARD_INDEX, urls[uncounted[0]])
        for index in tqdm(uncounted, unit="shard", desc="counting samples", disable=not progress):
            sizes[index] = _count_samples(urls[index])
    return sizes


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
            with closing(_shard_members(url, extension="json")) as members:
                for sample in group_by_keys(members):
                    read += 1
                    labels = _json_labels(sample)
                    if labels is None or (known is not None and not known.issuperset(labels)):
                        left_out += 1
                    else:
                        label_sets[labels] += 1
        except Exception as error:  # as in _ShardSamples: opening and reading fail in many ways
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


def _json_labels(sample: dict[str, Any]) -> frozenset[str] | None:
    """The labels in a sample's json member; ``None`` when there are none to read."""
    try:
        labels = json.loads(sample["json"])["labels"]
    except (KeyError, TypeError, ValueError):
        return None
    return frozenset(labels) if isinstance(labels, list) and all(isinstance(x, str) for x in labels) else None


def _read_shard_index(folder: Path) -> dict[str, int]:
    """Samples per shard name from ``folder/shards.json``; empty without a usable index."""
    try:
        shards = json.loads((folder / SHARD_INDEX).read_text()).get("shards")
    except (OSError, ValueError, AttributeError):
        return {}
    return {name: int(count) for name, count in shards.items()} if isinstance(shards, dict) else {}


def _count_samples(url: str) -> int:
    count = 0
    try:
        for _ in shard_samples(url):
            count += 1
    except Exception as error:  # as in _ShardSamples: opening and reading fail in many ways
        log.warning("shard %s failed after %d samples while they were counted (%s: %s)",
                    url, count, type(error).__name__, error)
    return count


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
    raw log-mel features. ``options`` (:class:`ReaderOptions`) set the shuffle buffer and
    what bad data may cost (see the module docstring).

    In training, ``sizes`` (samples per shard, :func:`shard_sizes`) makes each pass an
    exact one over the clips (:meth:`batches_per_pass` batches per rank, see
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
        ``padding=True``: what :class:`EvalLoader` gives a DDP rank that has no data. A
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
            for sample in (shard := _ShardSamples(self, url)):
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
            labels = _json_labels(sample)
            try:
                weight = counts.weight(labels) if labels is not None else counts.mean_weight
            except KeyError:  # a label outside classes.txt, or a clip in a shard the count could not read
                weight = counts.mean_weight
            if rng.random() * counts.max_weight < weight:
                yield sample

    def _shard_samples(self, urls: Iterable[str]) -> Iterator[dict[str, Any]]:
        for url in urls:
            yield from _ShardSamples(self, url)

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
        and the shard is closed right after ``stop`` (see :func:`_shard_members`)."""
        for url, start, stop in segments:
            with closing(iter(_ShardSamples(self, url))) as samples:
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

    def _prepare(self, sample: dict[str, Any], rng: random.Random) -> dict[str, Any] | None:
        key, url = sample.get("__key__", "?"), sample.get("__url__", "?")
        self.skips.add("read")
        try:
            member = next((name for name in AUDIO_MEMBERS if name in sample), None)
            if member is None:
                raise SampleError(f"no audio member (looked for {', '.join(AUDIO_MEMBERS)})", "no_audio")
            labels = self._encode_labels(sample) if self.class_index is not None else None
            with AudioFile(sample[member]) as audio:
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


class _ShardSamples:
    """The samples of one shard, read with retries: opening or reading it is retried
    ``stream.options.shard_retries`` times with a doubling delay, and a retry picks up after the
    samples already given, so none is given twice (nor the end of a shard lost to a
    dropped connection). A shard that still fails is skipped with a warning naming it,
    counted, and marked ``failed``. Reading is strict (:func:`shard_samples`): a shard
    cut short fails rather than end early. Closed before its end, it closes the shard."""

    def __init__(self, stream: ShardStream, url: str) -> None:
        self.stream, self.url = stream, url
        self.failed = False

    def __iter__(self) -> Generator[dict[str, Any], None, None]:
        stream, options, given = self.stream, self.stream.options, 0
        for attempt in range(options.shard_retries + 1):
            try:
                with closing(shard_samples(self.url)) as samples:
                    for index, sample in enumerate(samples):
                        if index >= given:
                            given += 1
                            yield sample
                return
            except Exception as error:  # opening and reading fail in many ways: OSError, tarfile, pipes
                reason = f"{type(error).__name__}: {error}"
            if attempt < options.shard_retries:
                delay = options.retry_delay * 2**attempt
                stream.skips.add("shard_retries")
                log.warning("shard %s failed (%s); retry %d of %d in %g s",
                            self.url, reason, attempt + 1, options.shard_retries, delay)
                time.sleep(delay)
        stream.skips.add("failed_shards")
        log.warning("skipped shard %s after %d attempts (%d samples read from it): %s",
                    self.url, options.shard_retries + 1, given, reason)
        self.failed = True


class _CompleteTarInfo(tarfile.TarInfo):
    """Tar headers read strictly. Python's tarfile ends an archive quietly where a header
    is missing, cut short or garbled, so a truncated or corrupt shard would lose its tail
    without a word; here only the end-of-archive marker (a zero block) ends it."""

    @classmethod
    def fromtarfile(cls, archive: tarfile.TarFile) -> tarfile.TarInfo:
        try:
            return super().fromtarfile(archive)
        except tarfile.EOFHeaderError:
            raise
        except tarfile.HeaderError as error:
            raise tarfile.ReadError(f"the tar is cut short or corrupt ({error})") from error


def shard_samples(url: str) -> Generator[dict[str, Any], None, None]:
    """The samples of one shard, ``{"__key__": ..., "flac": bytes, "json": bytes, ...}``, read
    strictly: a truncated or broken shard raises (``tarfile.TarError``, ``OSError``) instead
    of ending early, as webdataset's own reader would (see :func:`_shard_members`). Closing
    the generator before the end closes the shard."""
    members = _shard_members(url)
    try:
        yield from group_by_keys(members)
    finally:
        members.close()


def _shard_members(url: str, extension: str | None = None) -> Iterator[dict[str, Any]]:
    """The files of one shard, as ``webdataset.tariterators.group_by_keys`` takes them; with
    ``extension`` (``"json"``), only the files of that extension are read out, the others
    passed over.

    Opened like webdataset opens shards (``webdataset.gopen``: paths, URLs, ``pipe:``), but
    a shard counts as read only once its end-of-archive marker was read and, for a
    command, the command exited with success: webdataset checks a command's exit status
    only while data flows, and would miss a command that fails at a tar block boundary.
    A reader that stops early (an exact pass ends mid-shard) closes the generator, which
    closes the shard at once rather than leave a file or a command open.
    """
    source = wds.gopen(url)
    try:
        with tarfile.open(fileobj=source, mode="r|*", tarinfo=_CompleteTarInfo) as archive:
            for member in archive:
                if (member.isreg() and not member.name.startswith("__")  # webdataset's metadata files
                        and (extension is None or member.name.endswith(f".{extension}"))):
                    yield {"fname": member.name, "data": archive.extractfile(member).read(), "__url__": url}
                archive.members = []  # a stream keeps every header it has read otherwise
    except tarfile.TarError:
        source.close()  # a failed command explains a broken tar best: its exit status raises here
        raise
    except GeneratorExit:
        _close_early(source)
        raise
    source.close()  # and here, after a tar that looked whole


def _close_early(source: Any) -> None:
    """Close a shard's stream before its end. A ``pipe:`` command (URLs too are read by one,
    ``curl``) still running is stopped first: it might wait on its network rather than
    take the SIGPIPE; the exit status it then reports is no error here."""
    process = getattr(source, "proc", None)
    if process is not None and process.poll() is None:
        process.terminate()
    try:
        source.close()
    except OSError:
        pass


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
