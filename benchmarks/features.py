"""Feature throughput: our reader + batched Fbank against SSAST's per-clip Kaldi loader.

Both paths read the same FLAC shards of 10.24 s clips with the same number of DataLoader
workers and end with normalized ``[B, 1024, 128]`` features:

* ``reader``: ShardStream decodes and crops in the workers; ``Fbank`` runs on the batch
  in the main process (on ``--device``), as when training on an accelerator;
* ``reader_worker_fbank``: the same, with ``Fbank`` run on each batch in the workers, as
  when training on CPU;
* ``per_clip``: what SSAST's loader does in its workers for every clip: remove the mean,
  ``torchaudio.compliance.kaldi.fbank``, pad/cut to 1024 frames, normalize.

Also times the feature computation alone on waveforms already in memory.

The training input pipeline, per worker core: ``training_reader_{flac,wav}`` read the same
clips from FLAC shards and from WAV shards as a pretraining run does (``training=True``:
random shard draws, the shuffle buffer, a random crop of each clip, then the recipes'
waveform augmentations on each batch: ``--mixup`` and EAT's roll and gain), decoded and
cropped waveforms out of ``--workers`` workers (the fbank then runs on the accelerator).
``--batches`` batches are counted after each worker's first one (start-up excluded);
``*_clips_per_s_per_worker`` divides by the workers, the figure that says how many cores
feed a GPU (the goal: 100 clips/s per core, so that 16 cores feed 1,500). SSAST's per-clip
loader is put the same way beside it. The paths alternate and each keeps its best of
``--repeats`` runs. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import io
import json
import tempfile
import time
from itertools import islice
from pathlib import Path

import soundfile
import torch
import webdataset as wds
from torch.utils.data import DataLoader
from torchaudio.compliance import kaldi

from ssast.audio import decode_audio
from ssast.data.shards import list_shards
from ssast.data.options import ReaderOptions
from ssast.data.stream import ShardStream
from ssast.data.shard_sets import ShardSetWriter
from ssast.data.writer import encode_clip
from ssast.features import Fbank, Normalize, fit_frames

TARGET_LENGTH = 1024
MEAN, STD = -4.2677393, 4.5689974


def make_shards(folder: Path, clips: int, seconds: float) -> list[str]:
    generator = torch.Generator().manual_seed(0)
    t = torch.arange(round(seconds * 16000)) / 16000
    with ShardSetWriter(folder, shard_size=16) as writer:
        for index in range(clips):
            freqs = torch.rand(4, 1, generator=generator) * 4000 + 100
            audio = 0.05 * torch.sin(2 * torch.pi * freqs * t).sum(0) + 0.02 * torch.randn(t.numel(), generator=generator)
            writer.write(encode_clip(f"bench/{index:05d}", audio, {"labels": []}))
    return list_shards(folder)


def make_wav_shards(folder: Path, flac_urls: list[str]) -> list[str]:
    """The same clips as 16-bit WAV, in shards of 16."""
    folder.mkdir()
    with wds.ShardWriter(str(folder / "%06d.tar"), maxcount=16, verbose=0) as writer:
        for sample in wds.WebDataset(flac_urls, shardshuffle=False):
            buffer = io.BytesIO()
            soundfile.write(buffer, decode_audio(sample["flac"])[0].numpy(), 16000, format="WAV", subtype="PCM_16")
            writer.write({"__key__": sample["__key__"], "wav": buffer.getvalue(), "json": sample["json"]})
    return sorted(str(path) for path in folder.glob("*.tar"))


def time_training_reader(urls: list[str], batch_size: int, workers: int, batches: int, mixup: float,
                         roll_gain: bool) -> tuple[float, int]:
    """Seconds and clips of ``batches`` training batches after each worker's first."""
    stream = ShardStream(urls, clip_samples=Fbank().num_samples(TARGET_LENGTH), batch_size=batch_size, training=True,
                         rank=0, world_size=1, options=ReaderOptions(shuffle_buffer=4 * batch_size), mixup=mixup,
                         roll_gain=roll_gain)
    loader = iter(DataLoader(stream, batch_size=None, num_workers=workers))
    for _ in range(max(1, workers)):
        next(loader)
    start, count = time.perf_counter(), 0
    for batch in islice(loader, batches):
        count += len(batch["audio"])
    return time.perf_counter() - start, count


def per_clip_features(sample: dict) -> torch.Tensor:
    waveform, _ = decode_audio(sample["flac"])
    waveform = waveform - waveform.mean()
    fbank = kaldi.fbank(
        waveform[None], htk_compat=True, sample_frequency=16000, use_energy=False,
        window_type="hanning", num_mel_bins=128, dither=0.0, frame_shift=10,
    )
    return (fit_frames(fbank, TARGET_LENGTH) - MEAN) / (2 * STD)


def time_per_clip(urls: list[str], batch_size: int, workers: int) -> tuple[float, int]:
    dataset = wds.WebDataset(urls, shardshuffle=False, nodesplitter=None, workersplitter=wds.split_by_worker)
    loader = DataLoader(dataset.map(per_clip_features), batch_size=batch_size, num_workers=workers)
    start, count = time.perf_counter(), 0
    for features in loader:
        count += len(features)
    return time.perf_counter() - start, count


def time_reader(
    urls: list[str], batch_size: int, workers: int, device: torch.device, in_workers: bool = False
) -> tuple[float, int]:
    fbank, normalize = Fbank().to(device), Normalize(MEAN, STD)
    stream = ShardStream(urls, clip_samples=fbank.num_samples(TARGET_LENGTH), batch_size=batch_size,
                         training=False, rank=0, world_size=1, fbank=Fbank() if in_workers else None)
    loader = DataLoader(stream, batch_size=None, num_workers=workers, pin_memory=device.type == "cuda")
    start, count = time.perf_counter(), 0
    for batch in loader:
        if in_workers:
            logmel = batch["fbank"].to(device, non_blocking=True)
        else:
            logmel = fbank(batch["audio"].to(device, non_blocking=True), batch["lengths"].to(device))
        features = normalize(fit_frames(logmel, TARGET_LENGTH))
        count += len(features)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, count


def time_fbank_only(waveforms: torch.Tensor, device: torch.device, repeats: int) -> tuple[float, float, float]:
    """Best-of-``repeats`` seconds of the batched Fbank and of per-clip Kaldi, and their
    largest difference."""
    fbank = Fbank().to(device)
    on_device = waveforms.to(device)
    fbank(on_device[:2])  # warm-up (FFT plans, CUDA context)

    def batched() -> torch.Tensor:
        features = fbank(on_device)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return features

    def per_clip() -> torch.Tensor:
        return torch.stack([
            kaldi.fbank((clip - clip.mean())[None], htk_compat=True, sample_frequency=16000, use_energy=False,
                        window_type="hanning", num_mel_bins=128, dither=0.0, frame_shift=10)
            for clip in waveforms
        ])

    batched_seconds, per_clip_seconds = [], []
    for _ in range(repeats):
        for run, times in ((batched, batched_seconds), (per_clip, per_clip_seconds)):
            start = time.perf_counter()
            run()
            times.append(time.perf_counter() - start)
    return min(batched_seconds), min(per_clip_seconds), float((batched().cpu() - per_clip()).abs().max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batches", type=int, default=24, help="training batches timed per repeat")
    parser.add_argument("--mixup", type=float, default=0.5, help="the training reader's mixup probability")
    parser.add_argument("--no-roll-gain", dest="roll_gain", action="store_false",
                        help="leave out EAT's waveform roll and gain in the training reader")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--threads", type=int, default=1,
        help="torch threads of the main process (loader workers use 1); more than 1 next to busy workers "
             "mostly measures thread contention",
    )
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    seconds = Fbank().num_samples(TARGET_LENGTH) / 16000

    with tempfile.TemporaryDirectory() as folder:
        urls = make_shards(Path(folder), args.clips, seconds)
        wav_urls = make_wav_shards(Path(folder) / "wav", urls)
        reader, reader_workers, per_clip = [], [], []
        training: dict[str, list[tuple[float, int]]] = {"flac": [], "wav": []}
        for _ in range(args.repeats):
            reader.append(time_reader(urls, args.batch_size, args.workers, device))
            reader_workers.append(time_reader(urls, args.batch_size, args.workers, device, in_workers=True))
            per_clip.append(time_per_clip(urls, args.batch_size, args.workers))
            for kind, shards in (("flac", urls), ("wav", wav_urls)):
                training[kind].append(time_training_reader(shards, args.batch_size, args.workers, args.batches,
                                                           args.mixup, args.roll_gain))
        first_samples = islice(wds.WebDataset(urls, shardshuffle=False), 32)
        waveforms = torch.stack([decode_audio(sample["flac"])[0] for sample in first_samples])
    assert all(count == args.clips for _, count in reader + reader_workers + per_clip), "a path lost clips"
    reader_rate = args.clips / min(elapsed for elapsed, _ in reader)
    reader_workers_rate = args.clips / min(elapsed for elapsed, _ in reader_workers)
    per_clip_rate = args.clips / min(elapsed for elapsed, _ in per_clip)
    training_rates = {kind: max(count / elapsed for elapsed, count in runs) for kind, runs in training.items()}
    workers = max(1, args.workers)
    batched_seconds, kaldi_seconds, max_diff = time_fbank_only(waveforms, device, args.repeats + 1)
    print(json.dumps({
        "benchmark": "features", "device": str(device), "torch_threads": torch.get_num_threads(),
        "clips": args.clips, "clip_seconds": round(seconds, 3), "batch_size": args.batch_size, "workers": args.workers,
        "reader_batched_fbank_clips_per_s": round(reader_rate, 1),
        "reader_worker_fbank_clips_per_s": round(reader_workers_rate, 1),
        "per_clip_kaldi_loader_clips_per_s": round(per_clip_rate, 1),
        "speedup_reader": round(reader_rate / per_clip_rate, 2),
        "speedup_reader_worker_fbank": round(reader_workers_rate / per_clip_rate, 2),
        "training_mixup": args.mixup, "training_roll_gain": args.roll_gain, "training_batches": args.batches,
        **{f"training_reader_{kind}_clips_per_s_per_worker": round(rate / workers, 1)
           for kind, rate in training_rates.items()},
        "per_clip_kaldi_loader_clips_per_s_per_worker": round(per_clip_rate / workers, 1),
        "fbank_only_batched_clips_per_s": round(len(waveforms) / batched_seconds, 1),
        "fbank_only_per_clip_kaldi_clips_per_s": round(len(waveforms) / kaldi_seconds, 1),
        "fbank_only_speedup": round(kaldi_seconds / batched_seconds, 2),
        "fbank_max_abs_diff": max_diff,
    }))


if __name__ == "__main__":
    main()
