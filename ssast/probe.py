"""Probes: how much a frozen encoder's embeddings say about labels (DESIGN.md §12).

Small pieces, each doing one thing, shared by the pretraining callback
(:class:`ssast.train.probe_callbacks.ProbeMonitor`), the benchmarks and the demo:

* :func:`load_clips` reads a small labeled shard set into memory once, as log-mels;
* :func:`embed` runs a frozen encoder over them in batches (mean of the patch tokens of its
  final output, or with ``layers="all"`` of the mean of every block's output);
* :func:`knn_accuracy` and :func:`linear_probe_accuracy` score embeddings on a train/test
  split; :func:`probe` does both for an encoder;
* :func:`logmel_statistics` are the honest simple features to beat: the per-bin mean and
  standard deviation of the log-mel over time.

Plain PyTorch (no Lightning, no scikit-learn), deterministic, seconds on a CPU for a few
hundred clips:

>>> train = load_clips("demo_data/keywords/train", classes="demo_data/keywords/classes.txt",
...                    stats="demo_data/keywords/stats.json", target_length=98)
>>> test = load_clips("demo_data/keywords/test", classes=train.classes, stats=train.normalize,
...                   target_length=98)
>>> probe(encoder, train, test)                                  # {"knn": 0.62, "linear": 0.71}
>>> linear_probe_accuracy(logmel_statistics(train.fbank, train.frames), train.labels,
...                       logmel_statistics(test.fbank, test.frames), test.labels)
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ssast.checkpoints import adapt_encoder
from ssast.data.shards import list_shards, read_classes
from ssast.data.stats import read_stats
from ssast.data.stream import ShardStream
from ssast.embed import Precision, autocast, check_layers, check_precision
from ssast.encoder import Layers
from ssast.features import PUBLISHED_STATS, Fbank, Normalize, fit_frames, logmel_statistics
from ssast.renamed import refuse_renamed

# The linear probe's L2 penalty on the weights of standardized features, per clip-averaged
# loss: ``cross_entropy + l2 * ||W||^2``. 1e-3 is about scikit-learn's default (C = 1) for a
# few hundred training clips, strong enough to keep separable data (a few hundred clips in
# a few hundred dimensions usually is) from driving the weights to infinity.
DEFAULT_L2 = 1e-3


@dataclass
class LabeledClips:
    """A labeled set held in memory as raw (unnormalized) log-mels.

    Attributes:
        fbank: ``[N, T, F]`` raw log-mels, zero beyond each clip's ``frames`` (as the fbank
            of a padded clip is).
        frames: ``[N]`` frames of audio in each clip.
        labels: ``[N]`` class indices.
        classes: the class names (index = position).
        normalize: the set's normalization, applied by :meth:`features`.
        keys: the sample keys, in order.
    """

    fbank: torch.Tensor
    frames: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    normalize: Normalize
    keys: list[str]

    def __len__(self) -> int:
        return len(self.labels)

    def features(self, target_length: int) -> torch.Tensor:
        """``[N, target_length, F]`` normalized log-mels, padded with zeros (before the
        normalization, as :class:`~ssast.train.datamodule.AudioDataModule` and AST pad) or
        cut at the end to fit an encoder's input."""
        return self.normalize(fit_frames(self.fbank, target_length))


def load_clips(
    shards: str | Path | Sequence[str],
    *,
    classes: str | Path | Sequence[str],
    stats: str | Path | Normalize | None,
    target_length: int,
    max_clips: int | None = None,
    batch_size: int = 32,
    progress: bool = False,
) -> LabeledClips:
    """Read a labeled shard set into memory once, as log-mels of ``target_length`` frames.

    Clips are read in shard order from their start (as evaluation reads them), so the
    same call gives the same clips every time; with ``max_clips`` only the first ones are
    read (``ssast-data`` shuffles clips into shards, so they are a fair sample of the
    classes). Single-label sets only: a clip with no or several labels is skipped and
    counted, as the evaluation readers do.

    Args:
        shards: a folder of ``.tar`` shards, a webdataset pattern, or a list of them.
        classes: a ``classes.txt`` or the class names themselves.
        stats: the normalization: a ``stats.json``, the name of a set with published
            stats (``audioset``, ``esc50``, ``speechcommands``), a :class:`Normalize`, or
            ``None`` for the AudioSet stats.
        target_length: frames kept per clip (longer clips are cut, shorter ones padded).
        max_clips: read at most this many clips (``None``: all).
        batch_size: clips decoded and turned into log-mels at a time.
        progress: show a progress bar.
    """
    class_names = read_classes(classes) if isinstance(classes, (str, Path)) else list(classes)
    normalize = _normalization(stats)
    fbank = Fbank()
    # One process, rank 0 of 1: every clip of the set, whatever the caller's DDP rank is.
    stream = ShardStream(list_shards(shards), clip_samples=fbank.num_samples(target_length), batch_size=batch_size,
                         training=False, classes=class_names, rank=0, world_size=1)
    features, frames, labels, keys = [], [], [], []
    with tqdm(total=max_clips, unit="clip", desc=f"reading {shards}", disable=not progress, leave=False) as bar:
        for batch in stream:
            take = len(batch["labels"]) if max_clips is None else min(len(batch["labels"]), max_clips - len(keys))
            audio, lengths = batch["audio"][:take], batch["lengths"][:take]
            features.append(fit_frames(fbank(audio, lengths), target_length))
            frames.append(fbank.num_frames(lengths).clamp_max(target_length))
            labels.append(batch["labels"][:take])
            keys.extend(batch["key"][:take])
            bar.update(take)
            if max_clips is not None and len(keys) >= max_clips:
                break
    if not keys:
        raise ValueError(f"no usable labeled clip in {shards} ({stream.skips.summary()})")
    return LabeledClips(torch.cat(features), torch.cat(frames), torch.cat(labels), class_names, normalize, keys)


def _normalization(stats: str | Path | Normalize | None) -> Normalize:
    if isinstance(stats, Normalize):
        return stats
    if stats is None:
        return Normalize.published("audioset")
    if str(stats) in PUBLISHED_STATS:
        return Normalize.published(str(stats))
    return Normalize(*read_stats(stats))


@contextlib.contextmanager
def _one_thread():
    """Run small tensor work on one CPU thread: a probe's matrices are too small for
    threads to help, and on a busy machine their synchronization costs up to 20x."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@torch.no_grad()
def embed(
    encoder: nn.Module,
    fbank: torch.Tensor,
    *,
    layers: Layers = "last",
    batch_size: int = 64,
    device: torch.device | str | None = None,
    precision: Precision | None = None,
    progress: bool = False,
    bf16: bool | None = None,
) -> torch.Tensor:
    """Clip embeddings ``[N, D]`` (float32, on the CPU) of normalized log-mels ``[N, T, F]``
    by a frozen :class:`~ssast.encoder.ASTEncoder`: the mean of its patch tokens, as SSAST
    finetunes on, read from ``layers`` (:meth:`~ssast.encoder.ASTEncoder.layer_tokens`).
    ``T`` must be the encoder's ``config.input_tdim`` (see :meth:`LabeledClips.features`).

    The encoder runs in eval mode (no dropout, no drop-path) and is put back in the mode
    it was in.

    Args:
        encoder: the encoder (left where it is; its parameters say the device and dtype).
        fbank: the normalized log-mels, on any device.
        layers: the tokens pooled: ``last``, the final output (after the norm); ``all``, the
            mean of every block's output (SUPERB's ``hidden_states`` with equal weights:
            lower layers keep more of the speaker); ``k``, block ``k``'s output (from 1).
        batch_size: clips per forward pass.
        device: where to run; ``None``: where the encoder's parameters are.
        precision: ``bf16`` (bf16 autocast) or ``fp32``; ``None``: bf16 on CUDA only.
        progress: show a progress bar.
        bf16: the old name of ``precision``: giving it is an error that says so.
    """
    refuse_renamed("ssast.probe.embed", "bf16", "precision", bf16)
    layers = check_layers(layers, encoder.config.depth)
    precision = check_precision(precision)
    parameter = next(encoder.parameters())
    device = torch.device(device) if device is not None else parameter.device
    was_training = encoder.training
    encoder.eval()
    try:
        out = []
        for start in tqdm(range(0, len(fbank), batch_size), desc="embedding", disable=not progress, leave=False):
            batch = fbank[start : start + batch_size].to(device=device, dtype=parameter.dtype, non_blocking=True)
            with autocast(device, precision):
                out.append(encoder.pool(encoder.layer_tokens(batch, layers), "mean").float().cpu())
        return torch.cat(out)
    finally:
        encoder.train(was_training)


def knn_accuracy(
    train: torch.Tensor,
    train_labels: torch.Tensor,
    test: torch.Tensor,
    test_labels: torch.Tensor,
    *,
    k: int = 20,
    temperature: float = 0.07,
) -> float:
    """Accuracy of a weighted k-nearest-neighbour vote, DINO's kNN evaluation (also
    lightly's ``knn_predict``): cosine similarity, the ``k`` most similar training clips
    each vote for their class with weight ``exp(similarity / temperature)``.

    The weighted vote rather than a plain majority: with ``k = 20`` and a few clips per
    class (the demo's sets), a plain majority is decided by far neighbours; the weights
    let the nearest ones count most and break ties.

    Args:
        train: ``[N, D]`` training embeddings.
        train_labels: ``[N]`` their class indices.
        test: ``[M, D]`` test embeddings.
        test_labels: ``[M]`` their class indices.
        k: neighbours that vote (at most ``N``).
        temperature: how much more a near neighbour counts than a far one.
    """
    num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    train = F.normalize(train.double(), dim=1)
    test = F.normalize(test.double(), dim=1)
    k = min(k, len(train))
    correct = 0
    with _one_thread():
        for start in range(0, len(test), 1024):  # bounded memory: [1024, N] similarities at a time
            similarity = test[start : start + 1024] @ train.T
            nearest, index = similarity.topk(k, dim=1)
            votes = torch.zeros(len(similarity), num_classes, dtype=torch.float64)
            votes.scatter_add_(1, train_labels[index], (nearest / temperature).exp())
            correct += int((votes.argmax(dim=1) == test_labels[start : start + 1024]).sum())
    return correct / len(test)


def linear_probe_accuracy(
    train: torch.Tensor,
    train_labels: torch.Tensor,
    test: torch.Tensor,
    test_labels: torch.Tensor,
    *,
    l2: float = DEFAULT_L2,
    max_iter: int = 500,
) -> float:
    """Accuracy of a multinomial logistic regression on standardized features.

    Features are standardized with the training set's mean and standard deviation; the
    regression minimizes ``mean cross-entropy + l2 * ||W||^2`` (the bias is free) with
    L-BFGS in float64 from zero weights: the problem is convex, so the result depends on
    neither a seed nor the machine beyond rounding, and a few hundred clips take well
    under a second.

    Args:
        train: ``[N, D]`` training features.
        train_labels: ``[N]`` their class indices.
        test: ``[M, D]`` test features.
        test_labels: ``[M]`` their class indices.
        l2: the penalty on the weights (see :data:`DEFAULT_L2`).
        max_iter: L-BFGS iterations at most.
    """
    num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    train, test = train.double(), test.double()
    mean, std = train.mean(dim=0), train.std(dim=0, correction=0).clamp_min(1e-8)
    train, test = (train - mean) / std, (test - mean) / std
    weight = torch.zeros(train.shape[1], num_classes, dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(num_classes, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], lr=1, max_iter=max_iter, history_size=20,
                                  tolerance_grad=1e-7, tolerance_change=1e-10, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(train @ weight + bias, train_labels) + l2 * weight.square().sum()
        loss.backward()
        return loss

    with torch.enable_grad(), _one_thread():  # callers may probe under no_grad (a callback, a benchmark)
        optimizer.step(closure)
    with torch.no_grad():
        predictions = (test @ weight + bias).argmax(dim=1)
    return float((predictions == test_labels).double().mean())


def probe(
    encoder: nn.Module,
    train: LabeledClips,
    test: LabeledClips,
    *,
    k: int = 20,
    l2: float = DEFAULT_L2,
    layers: Layers = "last",
    batch_size: int = 64,
    precision: Precision | None = None,
    bf16: bool | None = None,
) -> dict[str, float]:
    """kNN and linear-probe accuracy (``{"knn": ..., "linear": ...}``) of a frozen encoder's
    clip embeddings, trained on ``train`` and scored on ``test``.

    The encoder is moved to the clips' length (its position embedding cropped or
    interpolated, as finetuning does) rather than the clips padded to the encoder's: a
    1 s keyword padded to a 3 s input would be two thirds padding in the mean of the tokens.

    Args:
        encoder: an :class:`~ssast.encoder.ASTEncoder`.
        train: the labeled clips the probes learn from.
        test: the labeled clips they are scored on.
        k: neighbours of the kNN vote.
        l2: the linear probe's penalty.
        layers: the tokens the clip embeddings pool (see :func:`embed`).
        batch_size: clips per forward pass.
        precision: ``bf16`` (bf16 autocast) or ``fp32``; ``None``: bf16 on CUDA only.
        bf16: the old name of ``precision``: giving it is an error that says so.
    """
    refuse_renamed("ssast.probe.probe", "bf16", "precision", bf16)
    layers = check_layers(layers, encoder.config.depth)
    frames = train.fbank.shape[1]
    if encoder.config.input_tdim != frames:
        parameter = next(encoder.parameters())
        encoder = adapt_encoder(encoder, input_tdim=frames).to(parameter.device, parameter.dtype)
    train_x = embed(encoder, train.features(frames), layers=layers, batch_size=batch_size, precision=precision)
    test_x = embed(encoder, test.features(frames), layers=layers, batch_size=batch_size, precision=precision)
    return {
        "knn": knn_accuracy(train_x, train.labels, test_x, test.labels, k=k),
        "linear": linear_probe_accuracy(train_x, train.labels, test_x, test.labels, l2=l2),
    }


def logmel_baseline(train: LabeledClips, test: LabeledClips, *, l2: float = DEFAULT_L2) -> float:
    """Linear-probe accuracy on :func:`logmel_statistics`: the floor of DESIGN.md §12."""
    return linear_probe_accuracy(logmel_statistics(train.fbank, train.frames), train.labels,
                                 logmel_statistics(test.fbank, test.frames), test.labels, l2=l2)
