"""Throughput of ``ssast-embed``: clips per second over 10 s files, through the function the
program runs (:func:`ssast.embed_cli.embed_inputs`), with reading and decoding the files (16 kHz,
so no resampling), the fbank, the encoder and writing the outputs.

``--clips`` 10 s clips (a tone with a little noise, 16 kHz 16-bit FLAC) are written to a
temporary folder, and an encoder of each of ``--sizes`` with random weights in SSAST's
pretraining geometry (16x16 patches at stride 16, 1024 frames: 512 patches) is saved with
``save_encoder``. Each 10 s clip is one window. One untimed run of a few clips warms up each
size; then ``embed_inputs`` over all clips is timed once, checkpoint loading included
(``seconds``), and ``clips_per_s`` is the clips over that. Prints one JSON line.

    python benchmarks/embed.py [--sizes tiny,base] [--clips 8] [--device cuda]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import soundfile
import torch

from ssast import save_encoder
from ssast.checkpoints import Preprocessing
from ssast.embed_cli import embed_inputs
from ssast.encoder import ASTEncoder, EncoderConfig

RATE, SECONDS, FRAMES = 16_000, 10.0, 1024


def write_clips(folder: Path, count: int) -> list[str]:
    rng = np.random.default_rng(0)
    t = np.arange(int(SECONDS * RATE)) / RATE
    paths = []
    for index in range(count):
        path = folder / f"clip_{index:05d}.flac"
        audio = 0.3 * np.sin(2 * np.pi * (200 + 10 * index) * t) + 0.01 * rng.standard_normal(len(t))
        soundfile.write(path, audio, RATE, format="FLAC", subtype="PCM_16")
        paths.append(str(path))
    return paths


def bench_size(size: str, folder: Path, clips: list[str], **options: Any) -> dict[str, Any]:
    torch.manual_seed(0)
    encoder = ASTEncoder(EncoderConfig.from_size(size, input_tdim=FRAMES))
    checkpoint = folder / f"{size}.pt"
    save_encoder(encoder, checkpoint, Preprocessing(target_length=FRAMES))
    embed_inputs(checkpoint, clips[:2], folder / "warmup", progress=False, **options)
    start = time.perf_counter()
    summary = embed_inputs(checkpoint, clips, folder / f"out-{size}", progress=False, **options)
    seconds = time.perf_counter() - start
    assert summary.embedded == len(clips) and not summary.skipped, str(summary)
    return {
        "params_m": round(sum(p.numel() for p in encoder.parameters()) / 1e6, 3),
        "seconds": round(seconds, 3),
        "clips_per_s": round(len(clips) / seconds, 3),
        "audio_s_per_s": round(len(clips) * SECONDS / seconds, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="tiny,base", help="comma-separated: mini, tiny, small, base")
    parser.add_argument("--clips", type=int, help="10 s clips; default 256 on CUDA, 8 on CPU")
    parser.add_argument("--batch-size", type=int, help="windows per batch; default 64 on CUDA, 8 on CPU")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", choices=["bf16", "fp32"], help="default bf16 on CUDA, fp32 elsewhere")
    args = parser.parse_args()
    cuda = torch.device(args.device).type == "cuda"
    clips = args.clips or (256 if cuda else 8)
    batch_size = args.batch_size or (64 if cuda else 8)
    precision = args.precision or ("bf16" if cuda else "fp32")
    options = {"batch_size": batch_size, "device": args.device, "precision": precision}
    with tempfile.TemporaryDirectory() as temp:
        folder = Path(temp)
        paths = write_clips(folder, clips)
        results = {size: bench_size(size.strip(), folder, paths, **options)
                   for size in args.sizes.split(",") if size.strip()}
    report = {
        "benchmark": "embed", "device": args.device,
        "device_name": torch.cuda.get_device_name(args.device) if cuda else "cpu", "torch": torch.__version__,
        "threads": torch.get_num_threads(), "clip_seconds": SECONDS, "frames": FRAMES, "geometry": "patch16-stride16",
        "clips": clips, "batch_size": batch_size, "precision": precision,
    }
    print(json.dumps(report | {"results": results}))


if __name__ == "__main__":
    main()
