"""Dataset statistics of the raw log-mel, for ``Normalize`` (written as ``stats.json``)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ssast.data.loaders import EvalLoader
from ssast.data.stream import ShardStream
from ssast.data.shard_sets import write_text_atomic
from ssast.features import Fbank


def compute_stats(
    urls: Sequence[str],
    *,
    target_length: int = 1024,
    batch_size: int = 32,
    workers: int = 0,
    max_clips: int | None = None,
    progress: bool = True,
) -> dict[str, float | int]:
    """Mean and standard deviation of every log-mel value in the first ``target_length``
    frames of each clip. Padding frames are left out, so short clips do not pull the
    statistics towards zero."""
    fbank = Fbank()
    stream = ShardStream(
        urls, clip_samples=fbank.num_samples(target_length), batch_size=batch_size, training=False, rank=0, world_size=1
    )
    loader = EvalLoader(stream, batch_size=None, num_workers=workers)
    total = torch.zeros((), dtype=torch.float64)
    total_squares = torch.zeros((), dtype=torch.float64)
    clips = frames = 0
    with tqdm(total=max_clips, unit="clip", desc="stats", disable=not progress) as bar:
        for batch in loader:
            audio, lengths = batch["audio"], batch["lengths"]
            if max_clips is not None:
                audio, lengths = audio[: max_clips - clips], lengths[: max_clips - clips]
            logmel = fbank(audio, lengths).double()
            valid = fbank.num_frames(lengths)
            total += logmel.sum()  # padding frames are zeros and add nothing
            total_squares += logmel.square().sum()
            frames += int(valid.sum())
            clips += len(valid)
            bar.update(len(valid))
            if clips == max_clips:
                break
    if frames == 0:
        raise ValueError(f"no usable audio in {len(urls)} shards ({stream.skips.samples} samples skipped)")
    values = frames * fbank.num_mel_bins
    mean = total / values
    std = (total_squares / values - mean.square()).clamp_min(0).sqrt()
    return {
        "mean": float(mean),
        "std": float(std),
        "count": clips,
        "frames": frames,
        "target_length": target_length,
        "skipped": stream.skips.samples,
    }


def write_stats(path: str | Path, stats: dict[str, float | int]) -> None:
    write_text_atomic(path, json.dumps(stats, indent=2) + "\n")


def read_stats(path: str | Path) -> tuple[float, float]:
    """``(mean, std)`` from a ``stats.json``."""
    stats = json.loads(Path(path).read_text())
    return float(stats["mean"]), float(stats["std"])
