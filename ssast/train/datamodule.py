"""The LightningDataModule shared by pretraining and finetuning.

Loader workers decode and crop clips from WebDataset shards (``ssast.data.stream``); the
Kaldi fbank and the normalization run on the training device in
``on_after_batch_transfer``. On a CPU-only run the workers compute the fbank instead, in
parallel, and only the normalization is left to the main process.

What the readers skipped, fixed and retried is counted by reason for training and for
evaluation, logged as ``data/...`` by :func:`log_data_counts` and printed when a stage
ends.
"""

from __future__ import annotations

import dataclasses
import logging

import lightning as L
import torch

from ssast.checkpoints import Preprocessing
from ssast.data.label_counts import LabelCounts, shard_label_counts
from ssast.data.loaders import EpochLoader, EvalLoader
from ssast.data.options import KeySplit, ReaderOptions
from ssast.data.shards import find_beside, list_shards, read_classes, shard_sizes
from ssast.data.skips import FIX_REASONS, PASS_EVENTS, SHARD_EVENTS, SKIP_REASONS, SkipCounter
from ssast.data.stats import read_stats
from ssast.data.stream import ShardStream
from ssast.features import PUBLISHED_STATS, Fbank, Normalize, fit_frames

log = logging.getLogger(__name__)


class AudioDataModule(L.LightningDataModule):
    """Shards in, normalized log-mel batches ``batch["fbank"] [B, target_length, 128]`` out.

    Args:
        train: training shards: a folder of ``.tar`` files, a webdataset pattern, or a list
            of them (e.g. the training folds of a cross-validation).
        val: validation shards (optional), read exactly once per validation.
        test: test shards (optional).
        predict: shards to predict on (optional); their labels are not read.
        target_length: frames per clip (AST pads or cuts the fbank to this).
        batch_size: clips per batch on each device; the CLIs derive it from a recipe's
            ``global_batch_size`` when it is not given.
        num_workers: loader processes per device.
        batches_per_epoch: ``None``: an epoch is one exact pass over the training clips, as
            a DataLoader with ``shuffle=True, drop_last=True`` (each clip once, shuffled
            anew, ``N // (devices * batch_size)`` batches per device; the clips per shard
            come from ``shards.json``, or are counted once by reading the shards). A
            number: training batches per epoch and device, drawn with replacement from an
            endless stream (pretraining).
        stats: the normalization: a ``stats.json``; ``"auto"`` looks beside the training
            shards and one folder up, and falls back to the AudioSet stats; or the name of
            a set with published stats (``audioset``, ``esc50``, ``speechcommands``).
        classes: ``classes.txt`` for labeled data; ``"auto"`` finds it like ``stats``;
            ``None`` for unlabeled data.
        multi_label: labels as multi-hot vectors instead of class indices.
        seed: seed of shard order, shuffling and crops.
        fbank_in_workers: compute the fbank in the loader workers; ``None``: when the
            trainer runs on CPU.
        mixup: the probability that a training clip is mixed with another of its batch
            (waveforms, λ ~ Beta(10, 10), as AST/SSAST); training batches then carry
            ``mix_partner`` and ``mix_lambda`` to mix the targets alike
            (:func:`ssast.augment.mix_waveforms`). Evaluation never mixes.
        balanced: draw training clips class-balanced, with replacement (s3prl's and AST/EAT's
            weighted samplers): each clip in proportion to the sum over its labels of ``1 /
            count``, the counts taken once by reading the training shards' json members
            (:func:`~ssast.data.label_counts.shard_label_counts`). Needs ``batches_per_epoch`` and
            ``classes``. Clips are left out before their audio is decoded, but are still
            read: the loaders read about ``1 / acceptance`` clips per clip used (logged).
        roll_gain: roll each training waveform circularly by a random shift and scale it by
            ``0.5 + Beta(10, 10)``, as EAT (:func:`ssast.augment.roll_and_gain`).
        train_crop_samples: read a random window of at most this many samples of each
            training clip (s3prl's ``max_timestep``), zero-padded to ``target_length`` frames
            like a short clip; ``None``: a window as long as the row.
        val_split: carve the validation set out of ``train``: this share of its clips, chosen by
            a hash of their keys (:class:`~ssast.data.options.KeySplit`), is validated on and never
            trained on (s3prl's ``valid_ratio``); ``val`` stays unset, and training draws with
            replacement (``batches_per_epoch``).
        pad_normalized: the frames past a clip's end hold 0 after normalization (SSAST's SUPERB
            upstream normalizes, then pads) rather than a raw 0 normalized (AST pads, then
            normalizes).
        reader: the readers' shuffle buffer and what bad data may cost
            (:class:`~ssast.data.options.ReaderOptions`: ``max_skip_ratio``,
            ``skip_ratio_after``, ``shard_retries``, ``retry_delay``).
    """

    def __init__(
        self,
        train: str | list[str] | None = None,
        val: str | list[str] | None = None,
        test: str | list[str] | None = None,
        predict: str | list[str] | None = None,
        target_length: int = 1024,
        batch_size: int | None = None,
        num_workers: int = 4,
        batches_per_epoch: int | None = None,
        stats: str | None = "auto",
        classes: str | None = None,
        multi_label: bool = False,
        seed: int = 0,
        fbank_in_workers: bool | None = None,
        mixup: float = 0.0,
        balanced: bool = False,
        roll_gain: bool = False,
        train_crop_samples: int | None = None,
        val_split: float | None = None,
        pad_normalized: bool = False,
        reader: ReaderOptions = ReaderOptions(),
    ) -> None:
        super().__init__()
        if train is None:  # optional only so that a stage's base recipe can leave it to the recipe
            raise ValueError("data.train is not set: the training shards (a folder, a pattern or a list)")
        for name, value, least in (("batch_size", batch_size, 1), ("batches_per_epoch", batches_per_epoch, 1),
                                   ("target_length", target_length, 1), ("num_workers", num_workers, 0)):
            if value is not None and value < least:
                raise ValueError(f"data.{name} must be at least {least}, got {value}")
        if val_split is not None and val is not None:
            raise ValueError("data.val_split carves the validation set out of data.train: leave data.val unset")
        if val_split is not None and batches_per_epoch is None:
            raise ValueError("data.val_split leaves clips out of the training shards, which an exact pass counts on: "
                             "set data.batches_per_epoch (batches drawn with replacement)")
        if balanced and batches_per_epoch is None:
            raise ValueError("data.balanced draws training clips with replacement, which exact passes cannot: set "
                             "data.batches_per_epoch, the batches to draw per epoch (EAT draws 200,000 clips)")
        if balanced and classes is None:
            raise ValueError("data.balanced weighs clips by their labels: it needs data.classes (unlabeled data has "
                             "none)")
        self.reader = reader
        self.save_hyperparameters(ignore="reader")
        self.hparams["reader"] = dataclasses.asdict(reader)  # checkpoints hold plain values only (weights_only loads)
        self.fbank = Fbank()
        self.clip_samples = self.fbank.num_samples(target_length)
        if train_crop_samples is not None and not 0 < train_crop_samples <= self.clip_samples:
            raise ValueError(f"data.train_crop_samples must be positive and at most the {self.clip_samples} samples "
                             f"of target_length={target_length} frames; got {train_crop_samples}")
        self.train_skips, self.eval_skips = SkipCounter(), SkipCounter()
        self.normalize: Normalize | None = None
        self._class_names: list[str] | None = None
        self._train_loader: EpochLoader | None = None
        self._train_sizes: list[int] | None = None  # clips per training shard, counted once
        self._train_label_counts: LabelCounts | None = None  # for balanced sampling, counted once
        self._train_state: dict | None = None  # from a checkpoint, for the training loader to come
        self._counted_before: dict[str, int] = {}  # every rank's counts before a resume, held by the first rank

    @property
    def _first_train_source(self) -> str:
        train = self.hparams.train
        return train if isinstance(train, str) else train[0]

    @property
    def class_names(self) -> list[str] | None:
        """The classes of labeled data (``classes.txt``), ``None`` for unlabeled data; read
        on first use."""
        if self._class_names is None and self.hparams.classes is not None:
            path = self.hparams.classes
            if path == "auto":
                path = find_beside(self._first_train_source, "classes.txt")
            if path is None:
                raise FileNotFoundError(f"classes='auto' but there is no classes.txt beside {self._first_train_source}")
            self._class_names = read_classes(path)
        return self._class_names

    @property
    def num_classes(self) -> int:
        return len(self.class_names or ())

    def data_counts(self) -> dict[str, int]:
        """Training and evaluation counts together, by their log names (see
        :func:`log_data_counts`); on the first rank of a resumed run, with what the run had
        counted before (every rank's, from its checkpoint)."""
        train, evaluation = self.train_skips.counts(), self.eval_skips.counts()
        total = {name: train[name] + evaluation[name] + self._counted_before.get(name, 0) for name in train}
        skipped = {f"data/skipped/{reason}": total[reason] for reason in SKIP_REASONS}
        return {
            "data/read": total["read"],
            "data/skipped_samples": sum(skipped.values()),
            **skipped,
            **{f"data/fixed/{reason}": total[reason] for reason in FIX_REASONS},
            **{f"data/{event}": total[event] for event in (*SHARD_EVENTS, *PASS_EVENTS)},
        }

    @property
    def preprocessing(self) -> Preprocessing:
        assert self.normalize is not None, "setup() has not run"
        return Preprocessing(self.normalize.mean, self.normalize.std, self.hparams.target_length)

    def setup(self, stage: str | None = None) -> None:
        if self.normalize is not None:
            return
        hp = self.hparams
        stats_path = find_beside(self._first_train_source, "stats.json") if hp.stats == "auto" else hp.stats
        if stats_path in PUBLISHED_STATS:
            self.normalize = Normalize.published(stats_path)
        elif stats_path is None:
            log.warning("no stats.json beside %s: normalizing with the AudioSet stats", self._first_train_source)
            self.normalize = Normalize.published("audioset")
        else:
            self.normalize = Normalize(*read_stats(stats_path))

    @property
    def _workers_compute_fbank(self) -> bool:
        if self.hparams.fbank_in_workers is not None:
            return self.hparams.fbank_in_workers
        return self.trainer is None or self.trainer.strategy.root_device.type == "cpu"

    def _stream(self, source: str | list[str], training: bool, labeled: bool = True,
                key_split: KeySplit | None = None) -> ShardStream:
        hp = self.hparams
        if hp.batch_size is None:
            raise ValueError("no batch size: set global_batch_size (clips per optimizer step over every device) or "
                             "data.batch_size (clips per device)")
        rank, world_size = (self.trainer.global_rank, self.trainer.world_size) if self.trainer else (0, 1)
        urls = list_shards(source)
        exact = training and hp.batches_per_epoch is None
        if exact and self._train_sizes is None:  # here, in the main process: workers get them with the stream
            self._train_sizes = shard_sizes(urls, progress=rank == 0)
        balanced = training and hp.balanced
        if balanced and self._train_label_counts is None:
            self._train_label_counts = shard_label_counts(urls, self.class_names, progress=rank == 0)
        return ShardStream(
            urls, clip_samples=self.clip_samples, batch_size=hp.batch_size, training=training,
            classes=self.class_names if labeled else None, multi_label=hp.multi_label, seed=hp.seed,
            rank=rank, world_size=world_size, skips=self.train_skips if training else self.eval_skips,
            fbank=Fbank() if self._workers_compute_fbank else None, options=self.reader,
            sizes=self._train_sizes if exact else None, mixup=hp.mixup if training else 0.0,
            balanced=balanced, label_counts=self._train_label_counts if balanced else None,
            roll_gain=training and hp.roll_gain, train_crop_samples=hp.train_crop_samples if training else None,
            key_split=key_split,
        )

    def _loader_options(self) -> dict:
        # Workers are not persistent: every pass re-reads its stream anyway (a new shard draw and
        # shuffle buffer), so keeping them saves only a fork per pass, while idle persistent
        # workers outlive their fit until a garbage collection, which then waits seconds on each
        # (the demo's six finetunes in one process stalled 50 s so).
        return {"num_workers": self.hparams.num_workers, "pin_memory": torch.cuda.is_available()}

    def _held_out(self, held_out: bool) -> KeySplit | None:
        return KeySplit(self.hparams.val_split, held_out) if self.hparams.val_split is not None else None

    def train_dataloader(self) -> EpochLoader:
        stream = self._stream(self.hparams.train, training=True, key_split=self._held_out(False))
        self._train_loader = EpochLoader(stream, self.hparams.batches_per_epoch, **self._loader_options())
        if self._train_state is not None:
            self._train_loader.load_state_dict(self._train_state)
        return self._train_loader

    # The training loader's passes (what seeds its draws, see EpochLoader) go into checkpoints
    # here: Lightning restores a data module before the model's configure_optimizers, which
    # builds the loaders when it asks for trainer.estimated_stepping_batches; it would hand a
    # loader its own state only after that, too late.
    # The counts go in summed over the ranks (every rank saves a checkpoint with Lightning, the
    # first writes it) and come back on the first rank, which log_data_counts sums with the rest.
    def state_dict(self) -> dict:
        state = {"train_loader": self._train_loader.state_dict()} if self._train_loader is not None else {}
        train, evaluation = self.train_skips.counts(), self.eval_skips.counts()
        counts = torch.tensor([train[name] + evaluation[name] + self._counted_before.get(name, 0) for name in train],
                              dtype=torch.float64)
        if self.trainer is not None:
            counts = self.trainer.strategy.reduce(counts.to(self.trainer.strategy.root_device), reduce_op="sum")
        return {**state, "counts": dict(zip(train, counts.long().tolist()))}

    def load_state_dict(self, state: dict) -> None:
        self._train_state = state.get("train_loader")
        if self._train_loader is not None and self._train_state is not None:
            self._train_loader.load_state_dict(self._train_state)
        first_rank = self.trainer is None or self.trainer.global_rank == 0
        self._counted_before = dict(state.get("counts", {})) if first_rank else {}

    def _eval_loader(self, source: str | list[str] | None, predicting: bool = False,
                     key_split: KeySplit | None = None) -> EvalLoader | list:
        if source is None:
            return []
        stream = self._stream(source, training=False, labeled=not predicting, key_split=key_split)
        return EvalLoader(stream, padding=not predicting, **self._loader_options())

    def val_dataloader(self) -> EvalLoader | list:
        if self.hparams.val_split is not None:
            return self._eval_loader(self.hparams.train, key_split=self._held_out(True))
        return self._eval_loader(self.hparams.val)

    def test_dataloader(self) -> EvalLoader | list:
        return self._eval_loader(self.hparams.test)

    def predict_dataloader(self) -> EvalLoader | list:
        return self._eval_loader(self.hparams.predict, predicting=True)

    def teardown(self, stage: str) -> None:
        """A paragraph per kind of data on what its readers skipped, fixed and retried, so
        that the end of a run says what it left out (counts of this process)."""
        rank = f"[rank {self.trainer.global_rank}] " if self.trainer and self.trainer.world_size > 1 else ""
        if stage == "fit":
            print(f"{rank}training data: {self.train_skips.summary()}")
        if self.eval_skips.read or self.eval_skips.shards:
            print(f"{rank}evaluation data: {self.eval_skips.summary()}")

    def on_after_batch_transfer(self, batch: dict, dataloader_idx: int) -> dict:
        if "fbank" not in batch:
            batch["fbank"] = self.fbank(batch.pop("audio"), batch["lengths"])
        batch["fbank"] = self.normalize(fit_frames(batch["fbank"], self.hparams.target_length))
        if self.hparams.pad_normalized:  # the frames past each clip hold 0 after normalizing, not before
            frames = torch.arange(batch["fbank"].shape[1], device=batch["fbank"].device)
            past = frames >= self.fbank.num_frames(batch["lengths"].to(frames.device))[:, None]
            batch["fbank"] = batch["fbank"].masked_fill(past[..., None], 0.0)
        return batch


def log_data_counts(module: L.LightningModule) -> None:
    """Log the data counts of the module's :class:`AudioDataModule`, training and
    evaluation together, summed over ranks in one collective: ``data/read``,
    ``data/skipped_samples``, ``data/skipped/<reason>``, ``data/fixed/<reason>``,
    ``data/shard_retries``, ``data/failed_shards`` and ``data/repeated``. Call it on the
    same steps on every rank; without an AudioDataModule it does nothing."""
    datamodule = getattr(module.trainer, "datamodule", None)
    if not isinstance(datamodule, AudioDataModule):
        return
    counts = datamodule.data_counts()
    values = torch.tensor(list(counts.values()), device=module.device)
    values = module.trainer.strategy.reduce(values, reduce_op="sum")
    module.log_dict(dict(zip(counts, values.float())), batch_size=1)
